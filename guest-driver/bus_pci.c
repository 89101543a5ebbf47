/*
 * bus_pci.c - the `pci` bus of vhost-pci-guestd: vhost-pci devices as the device VM's
 * kernel shows them in sysfs (DESIGN sections 3 and 6).
 *
 *  - A control function is an ivshmem-doorbell: vendor 0x1af4, device 0x1110, with
 *    an MSI-X BAR (resource1) and a BAR2 (resource2) starting with "VHOSTPCI". Its
 *    slot is its devfn. resource0 (registers) and resource2 (the control area) are
 *    mmapped; a doorbell is a 32-bit write of (peer << 16) | vector at BAR0 + 12.
 *  - A window is an ivshmem-plain (1af4:1110 without resource1), named by its PCI
 *    address; it is mapped (resource2) only where a control area lists it.
 *  - Hot-plug is ACPI: the kernel adds and removes functions by itself. This bus
 *    rescans sysfs every rescan_ms (and on gd_bus_sync(), which also asks the kernel
 *    to rescan the PCI bus, at most once a second) and reports what appeared or
 *    vanished. A function that vanished is already gone from the guest: its BAR
 *    mappings no longer reach the device, so users must just stop using them.
 *    A function unplugged and plugged again at the same address between two scans
 *    (a restarted server re-plugs a slot within a second of removing what the old
 *    one left) is told apart by its sysfs directory's inode (the kernel makes a new
 *    one per function): the old one is reported vanished, then the new one plugged.
 *  - There is no interrupt path to userspace (no VFIO no-IOMMU in Debian's kernel):
 *    irq_fd is -1 and the control plane polls the controlq.
 *
 * @sysfs_root lets tests run this over a fake tree of regular files
 * (<root>/bus/pci/devices/<addr>/{vendor,device,resource0,resource1,resource2}).
 *
 * Security model: sysfs is the kernel's and trusted; BAR contents are not. The magic
 * alone does not make a control function (a window's first bytes are the driver VM's
 * memory, which its guest controls): it must also have the MSI-X BAR that only
 * ivshmem-doorbell has. Sizes come from the resource files' sizes, never from BAR
 * contents. libc only.
 */
#include "bus.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "vp_ctrlarea.h"

#define PCI_VENDOR_REDHAT_QUMRANET 0x1af4
#define PCI_DEVICE_IVSHMEM 0x1110
#define PCI_MAX_WINDOWS 256
#define PCI_KERNEL_RESCAN_NS 1000000000ULL

struct pci_ctl {
    char addr[32];                /* "dddd:bb:dd.f" */
    uint8_t *regs_map;            /* the mapping of resource0 (page-aligned) */
    uint8_t *regs;                /* BAR0's first byte inside it */
    uint64_t regs_size;
    uint8_t *ca;
    uint64_t ca_size;
    uint64_t ino;                 /* its sysfs directory's inode (fn_ino) */
    bool seen;                    /* found in the current scan */
};

struct pci_win {
    bool used;
    bool seen;
    struct gd_win_id id;
    uint64_t ino;                 /* its sysfs directory's inode (fn_ino) */
};

struct gd_bus_pci {
    struct gd_bus base;           /* first */
    char root[PATH_MAX / 2];
    unsigned rescan_ms;
    int timer;
    bool scanning;
    bool replaced;                /* this scan found a function plugged anew at a known
                                     address: scan again once the old one is gone */
    uint64_t last_kernel_rescan;
    struct pci_ctl *ctl[256];
    struct pci_win win[PCI_MAX_WINDOWS];
};

static struct gd_bus_pci *to_pb(struct gd_bus *bus) { return (struct gd_bus_pci *)bus; }

static void addr_of(struct gd_win_id id, char out[32])
{
    snprintf(out, 32, "%04x:%02x:%02x.%x", id.domain, id.bus, id.devfn >> 3, id.devfn & 7);
}

static int parse_addr(const char *s, struct gd_win_id *id)
{
    unsigned d, b, dev, fn;
    char tail;
    if (sscanf(s, "%4x:%2x:%2x.%1x%c", &d, &b, &dev, &fn, &tail) != 4 || dev > 31 || fn > 7)
        return -1;
    *id = (struct gd_win_id){ .domain = (uint16_t)d, .bus = (uint8_t)b,
                              .devfn = (uint8_t)(dev << 3 | fn) };
    return 0;
}

/* <root>/bus/pci/devices/<addr>/<file> */
static int path_of(const struct gd_bus_pci *pb, const char *addr, const char *file, char *out,
                   size_t outlen)
{
    int n = snprintf(out, outlen, "%s/bus/pci/devices/%s%s%s", pb->root, addr,
                     file ? "/" : "", file ? file : "");
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

static long read_hex_file(const struct gd_bus_pci *pb, const char *addr, const char *file)
{
    char p[PATH_MAX], buf[32];
    if (path_of(pb, addr, file, p, sizeof(p)) < 0)
        return -1;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *end;
    long v = strtol(buf, &end, 16);
    return end == buf ? -1 : v;
}

/* The inode of <addr>'s sysfs directory (a new one for every function the kernel
 * adds, also at an address used before), or 0 when it cannot be read. */
static uint64_t fn_ino(const struct gd_bus_pci *pb, const char *addr)
{
    char p[PATH_MAX];
    struct stat st;
    if (path_of(pb, addr, NULL, p, sizeof(p)) < 0 || stat(p, &st) < 0)
        return 0;
    return (uint64_t)st.st_ino;
}

/* Whether the function at @addr is another one than the one recorded with inode
 * @known (0: unknown, never "another"); then it is left unseen, so that this scan
 * reports the old one vanished, and the next one plugs it. */
static bool replaced(struct gd_bus_pci *pb, const char *addr, uint64_t known)
{
    uint64_t ino = fn_ino(pb, addr);
    if (!known || !ino || ino == known)
        return false;
    gd_info("pci bus: %s was unplugged and plugged again since the last scan", addr);
    pb->replaced = true;
    return true;
}

/* Size of resource file @file, or 0 when it does not exist. */
static uint64_t resource_size(const struct gd_bus_pci *pb, const char *addr, const char *file)
{
    char p[PATH_MAX];
    struct stat st;
    if (path_of(pb, addr, file, p, sizeof(p)) < 0 || stat(p, &st) < 0 || st.st_size <= 0)
        return 0;
    return (uint64_t)st.st_size;
}

static bool is_ivshmem(const struct gd_bus_pci *pb, const char *addr)
{
    return read_hex_file(pb, addr, "vendor") == PCI_VENDOR_REDHAT_QUMRANET &&
           read_hex_file(pb, addr, "device") == PCI_DEVICE_IVSHMEM;
}

/* Start address of BAR @bar from the "resource" file (one "start end flags" line per
 * BAR), or 0 when it cannot be read (e.g. a test tree without it). */
static uint64_t bar_start(const struct gd_bus_pci *pb, const char *addr, unsigned bar)
{
    char p[PATH_MAX], buf[1024];
    if (path_of(pb, addr, "resource", p, sizeof(p)) < 0)
        return 0;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *line = buf;
    for (unsigned i = 0; i < bar && line; i++) {
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (!line)
        return 0;
    unsigned long long start = 0;
    return sscanf(line, "%llx", &start) == 1 ? start : 0;
}

/* Best effort: make the kernel turn memory decoding on (no driver is bound). */
static void enable_function(const struct gd_bus_pci *pb, const char *addr)
{
    char p[PATH_MAX];
    if (path_of(pb, addr, "enable", p, sizeof(p)) < 0)
        return;
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (write(fd, "1", 1) < 0)
        gd_debug("pci bus: enabling %s: %s", addr, strerror(errno));
    close(fd);
}

static void *map_resource(const struct gd_bus_pci *pb, const char *addr, const char *file,
                          uint64_t size, void *fixed, vp_error *err)
{
    char p[PATH_MAX];
    if (path_of(pb, addr, file, p, sizeof(p)) < 0) {
        vp_fail(err, -ENAMETOOLONG, "path too long");
        return NULL;
    }
    int fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        vp_fail(err, -errno, "open %s: %s", p, strerror(errno));
        return NULL;
    }
    void *m = mmap(fixed, size, PROT_READ | PROT_WRITE, MAP_SHARED | (fixed ? MAP_FIXED : 0),
                   fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) {
        vp_fail(err, -e, "mmap %s: %s", p, strerror(e));
        return NULL;
    }
    return m;
}

/* Is @addr a control function? Needs the MSI-X BAR and the magic in BAR2. */
static bool is_control(const struct gd_bus_pci *pb, const char *addr, uint64_t ca_size)
{
    if (!resource_size(pb, addr, "resource1") || ca_size < VP_CA_HEADER_END)
        return false;
    vp_error err = { { 0 } };
    uint8_t *p = map_resource(pb, addr, "resource2", 4096 < ca_size ? 4096 : ca_size, NULL,
                              &err);
    if (!p) {
        gd_debug("pci bus: %s: %s", addr, err.msg);
        return false;
    }
    bool magic = memcmp(p + VP_CA_OFF_MAGIC, VP_CA_MAGIC, 8) == 0;
    munmap(p, 4096 < ca_size ? 4096 : ca_size);
    return magic;
}

static void free_ctl(struct pci_ctl *c)
{
    if (!c)
        return;
    if (c->regs_map)
        munmap(c->regs_map, c->regs_size);
    if (c->ca)
        munmap(c->ca, c->ca_size);
    free(c);
}

static void plug_control(struct gd_bus_pci *pb, const char *addr, struct gd_win_id id,
                         uint64_t ca_size)
{
    vp_error err = { { 0 } };
    unsigned slot = id.devfn;
    if (pb->ctl[slot]) {
        char canon[32];
        addr_of(id, canon);
        if (strcmp(pb->ctl[slot]->addr, canon) == 0)
            pb->ctl[slot]->seen = !replaced(pb, addr, pb->ctl[slot]->ino);
        else
            gd_warn("pci bus: control function %s has the devfn of %s: ignored", addr,
                    pb->ctl[slot]->addr);
        return;
    }
    struct pci_ctl *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    addr_of(id, c->addr); /* canonical form of the name we parsed */
    c->ino = fn_ino(pb, addr);
    enable_function(pb, addr);
    c->regs_size = resource_size(pb, addr, "resource0");
    if (c->regs_size < VP_IVSHMEM_DOORBELL_REG + 4) {
        gd_warn("pci bus: %s: BAR0 of %llu bytes has no Doorbell register", addr,
                (unsigned long long)c->regs_size);
        goto fail;
    }
    /* The kernel maps whole pages starting at the page that holds the BAR: a BAR
     * smaller than a page need not start on one, so add its offset in the page. */
    uint64_t in_page = bar_start(pb, addr, 0) & ((uint64_t)sysconf(_SC_PAGESIZE) - 1);
    if (in_page + c->regs_size > (uint64_t)sysconf(_SC_PAGESIZE))
        in_page = 0; /* cannot be (BARs are aligned to their size): ignore */
    c->regs_size += in_page;
    c->regs_map = map_resource(pb, addr, "resource0", c->regs_size, NULL, &err);
    if (!c->regs_map)
        goto fail_err;
    c->regs = c->regs_map + in_page;
    c->ca_size = ca_size;
    c->ca = map_resource(pb, addr, "resource2", ca_size, NULL, &err);
    if (!c->ca)
        goto fail_err;
    c->seen = true;
    pb->ctl[slot] = c;
    gd_info("pci bus: control function %s plugged (slot %u, control area %llu bytes)", addr,
            slot, (unsigned long long)ca_size);
    if (pb->base.ev->control_plugged)
        pb->base.ev->control_plugged(pb->base.ev_opaque, slot);
    return;
fail_err:
    gd_warn("pci bus: %s: %s", addr, err.msg);
fail:
    free_ctl(c);
}

static struct pci_win *find_win(struct gd_bus_pci *pb, struct gd_win_id id)
{
    for (unsigned i = 0; i < PCI_MAX_WINDOWS; i++) {
        struct pci_win *w = &pb->win[i];
        if (w->used && w->id.domain == id.domain && w->id.bus == id.bus &&
            w->id.devfn == id.devfn)
            return w;
    }
    return NULL;
}

static void see_window(struct gd_bus_pci *pb, const char *addr, struct gd_win_id id)
{
    struct pci_win *w = find_win(pb, id);
    if (w) {
        w->seen = !replaced(pb, addr, w->ino);
        return;
    }
    for (unsigned i = 0; i < PCI_MAX_WINDOWS && !w; i++) {
        if (!pb->win[i].used)
            w = &pb->win[i];
    }
    if (!w) {
        gd_warn("pci bus: too many ivshmem functions, %s ignored", addr);
        return;
    }
    *w = (struct pci_win){ .used = true, .seen = true, .id = id, .ino = fn_ino(pb, addr) };
    enable_function(pb, addr);
    gd_debug("pci bus: ivshmem function %s (a window candidate) appeared", addr);
    if (pb->base.ev->window_plugged)
        pb->base.ev->window_plugged(pb->base.ev_opaque, GD_BUS_ANY_SLOT, id);
}

static void scan_once(struct gd_bus_pci *pb)
{
    pb->replaced = false;
    for (unsigned s = 0; s < 256; s++) {
        if (pb->ctl[s])
            pb->ctl[s]->seen = false;
    }
    for (unsigned i = 0; i < PCI_MAX_WINDOWS; i++)
        pb->win[i].seen = false;

    char dir[PATH_MAX];
    DIR *d = NULL;
    if (path_of(pb, "", NULL, dir, sizeof(dir)) == 0)
        d = opendir(dir);
    if (!d) {
        gd_debug("pci bus: cannot list %s: %s", dir, strerror(errno));
    } else {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            struct gd_win_id id;
            if (parse_addr(e->d_name, &id) < 0 || !is_ivshmem(pb, e->d_name))
                continue;
            uint64_t size2 = resource_size(pb, e->d_name, "resource2");
            if (!size2)
                continue;
            if (is_control(pb, e->d_name, size2))
                plug_control(pb, e->d_name, id, size2);
            else if (!resource_size(pb, e->d_name, "resource1"))
                see_window(pb, e->d_name, id);
        }
        closedir(d);
    }

    /* What vanished: windows first (their users release them), then controls. */
    for (unsigned i = 0; i < PCI_MAX_WINDOWS; i++) {
        struct pci_win *w = &pb->win[i];
        if (w->used && !w->seen) {
            struct gd_win_id id = w->id;
            w->used = false;
            char a[32];
            addr_of(id, a);
            gd_info("pci bus: window function %s vanished", a);
            if (pb->base.ev->window_unplug)
                pb->base.ev->window_unplug(pb->base.ev_opaque, GD_BUS_ANY_SLOT, id);
        }
    }
    for (unsigned s = 0; s < 256; s++) {
        struct pci_ctl *c = pb->ctl[s];
        if (c && !c->seen) {
            gd_info("pci bus: control function %s (slot %u) vanished", c->addr, s);
            if (pb->base.ev->control_unplug)
                pb->base.ev->control_unplug(pb->base.ev_opaque, s);
            pb->ctl[s] = NULL;
            free_ctl(c);
        }
    }
}

static void scan(struct gd_bus_pci *pb)
{
    if (pb->scanning)
        return;
    pb->scanning = true;
    scan_once(pb);
    /* The old ones of functions plugged anew are gone now: plug the new ones (once:
     * one replaced again meanwhile waits for the next scan). */
    if (pb->replaced)
        scan_once(pb);
    pb->scanning = false;
}

static void on_rescan(void *opaque)
{
    struct gd_bus_pci *pb = opaque;
    pb->timer = 0;
    scan(pb);
    if (pb->rescan_ms) {
        int id = gd_loop_add_timer(pb->base.loop, (uint64_t)pb->rescan_ms * 1000000ULL,
                                   on_rescan, pb);
        pb->timer = id > 0 ? id : 0;
    }
}

static int pb_start(struct gd_bus *bus, vp_error *err)
{
    struct gd_bus_pci *pb = to_pb(bus);
    char dir[PATH_MAX];
    struct stat st;
    if (path_of(pb, "", NULL, dir, sizeof(dir)) < 0 || stat(dir, &st) < 0)
        return vp_fail(err, -ENOENT, "pci bus: no %s", dir);
    /* The first scan runs from the loop, like every later one. */
    int id = gd_loop_add_timer(bus->loop, 0, on_rescan, pb);
    if (id < 0)
        return vp_fail(err, id, "pci bus: out of memory");
    pb->timer = id;
    return 0;
}

static void pb_sync(struct gd_bus *bus)
{
    struct gd_bus_pci *pb = to_pb(bus);
    uint64_t now = gd_now_ns();
    if (now - pb->last_kernel_rescan >= PCI_KERNEL_RESCAN_NS) {
        pb->last_kernel_rescan = now;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/bus/pci/rescan", pb->root);
        int fd = open(p, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (write(fd, "1", 1) < 0)
                gd_debug("pci bus: %s: %s", p, strerror(errno));
            close(fd);
        }
    }
    scan(pb);
}

static int pb_control_area(struct gd_bus *bus, unsigned slot, void **base, uint64_t *size)
{
    struct pci_ctl *c = slot < 256 ? to_pb(bus)->ctl[slot] : NULL;
    if (!c)
        return -ENOENT;
    *base = c->ca;
    *size = c->ca_size;
    return 0;
}

static bool pb_control_present(struct gd_bus *bus, unsigned slot)
{
    struct gd_bus_pci *pb = to_pb(bus);
    struct pci_ctl *c = slot < 256 ? pb->ctl[slot] : NULL;
    return c && resource_size(pb, c->addr, "resource2") != 0;
}

static int pb_irq_fd(struct gd_bus *bus, unsigned slot)
{
    (void)bus;
    (void)slot;
    return -1;
}

static void pb_irq_ack(struct gd_bus *bus, unsigned slot)
{
    (void)bus;
    (void)slot;
}

static int pb_doorbell(struct gd_bus *bus, unsigned slot, uint16_t peer, uint16_t vector)
{
    struct pci_ctl *c = slot < 256 ? to_pb(bus)->ctl[slot] : NULL;
    if (!c)
        return -ENOENT;
    if (vector >= VP_MAX_VECTORS)
        return -ERANGE; /* the Doorbell decodes 8 bits of vector */
    volatile uint32_t *reg = (volatile uint32_t *)(c->regs + VP_IVSHMEM_DOORBELL_REG);
    /* Earlier ring and buffer stores before the MMIO write that notifies. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *reg = htole32((uint32_t)peer << 16 | vector);
    return 0;
}

static int pb_peer_vectors(struct gd_bus *bus, unsigned slot, uint16_t peer)
{
    (void)bus;
    (void)slot;
    (void)peer;
    return -1;
}

static int pb_window_query(struct gd_bus *bus, unsigned slot, struct gd_win_id id,
                           uint64_t *size)
{
    struct gd_bus_pci *pb = to_pb(bus);
    (void)slot;
    if (!find_win(pb, id))
        return -ENOENT;
    char a[32];
    addr_of(id, a);
    uint64_t s = resource_size(pb, a, "resource2");
    if (!s)
        return -ENOENT;
    *size = s;
    return 0;
}

static int pb_window_map(struct gd_bus *bus, unsigned slot, struct gd_win_id id, void *addr,
                         uint64_t size, vp_error *err)
{
    uint64_t have = 0;
    char a[32];
    addr_of(id, a);
    if (pb_window_query(bus, slot, id, &have) < 0)
        return vp_fail(err, -ENOENT, "window function %s not present", a);
    if (size == 0 || size > have)
        return vp_fail(err, -EINVAL, "window function %s holds %llu bytes, %llu wanted", a,
                       (unsigned long long)have, (unsigned long long)size);
    if (!map_resource(to_pb(bus), a, "resource2", size, addr, err))
        return -EIO;
    return 0;
}

static void pb_destroy(struct gd_bus *bus)
{
    struct gd_bus_pci *pb = to_pb(bus);
    gd_loop_del_timer(bus->loop, pb->timer);
    for (unsigned s = 0; s < 256; s++)
        free_ctl(pb->ctl[s]);
    free(pb);
}

static const struct gd_bus_ops pci_ops = {
    .name = "pci",
    .windows_by_devfn = false,
    .start = pb_start,
    .sync = pb_sync,
    .control_area = pb_control_area,
    .control_present = pb_control_present,
    .irq_fd = pb_irq_fd,
    .irq_ack = pb_irq_ack,
    .doorbell = pb_doorbell,
    .peer_vectors = pb_peer_vectors,
    .window_query = pb_window_query,
    .window_map = pb_window_map,
    .destroy = pb_destroy,
};

struct gd_bus *gd_bus_pci_new(struct gd_loop *loop, const char *sysfs_root,
                              unsigned rescan_ms, const struct gd_bus_events *ev,
                              void *opaque, vp_error *err)
{
    if (!sysfs_root || strlen(sysfs_root) >= sizeof(((struct gd_bus_pci *)0)->root)) {
        vp_fail(err, -EINVAL, "sysfs root %s", sysfs_root ? "too long" : "missing");
        return NULL;
    }
    struct gd_bus_pci *pb = calloc(1, sizeof(*pb));
    if (!pb) {
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    pb->base = (struct gd_bus){ .ops = &pci_ops, .loop = loop, .ev = ev, .ev_opaque = opaque };
    snprintf(pb->root, sizeof(pb->root), "%s", sysfs_root);
    pb->rescan_ms = rescan_ms;
    return &pb->base;
}
