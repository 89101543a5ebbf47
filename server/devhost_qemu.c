/*
 * devhost_qemu.c - the `qemu` device host (devhost.h, DESIGN sections 3 and 7): the
 * server hot-plugs vhost-pci functions into the device VM's QEMU over QMP (qmp.h)
 * and serves each control function's ivshmem chardev itself (ivshmem_endpoint.h).
 *
 * Per control function (ivshmem-doorbell):
 *   endpoint listening on <rundir>/ctl-<devfn>-<gen>.sock (before QEMU hears of it),
 *     with peer 0 = [rx kick, tx kick], peer 1 (the device VM itself) = no eventfd
 *     (see "own vectors" below); peer 2 via set_peer_vectors
 *   chardev-add {"id": CHR, "backend": {"type": "socket", "data": {"addr": {"type":
 *     "unix", "data": {"path": P}}, "server": false}}}      (client, no reconnect)
 *   device_add {"driver": "ivshmem-doorbell", "id": ID, "chardev": CHR,
 *     "vectors": N, "addr": "0xSLOT"}
 * Per memory window (ivshmem-plain):
 *   add-fd (fd by SCM_RIGHTS) -> QEMU's fd number Q and fd set S
 *   object-add {"qom-type": "memory-backend-file", "id": MEM,
 *     "mem-path": "/proc/self/fd/Q", "size": SIZE, "share": true[, "offset": OFF]}
 *   ("offset", QEMU >= 8.1 only: a piece of a file whose size is not a power of two;
 *   the version comes from query-version once QMP is ready)
 *   device_add {"driver": "ivshmem-plain", "id": ID, "memdev": MEM, "addr": "0xSLOT"}
 * Removal: device_del + DEVICE_DELETED (bounded by the config timeout; the guest must
 * eject), then object-del MEM + remove-fd {S, Q} / chardev-remove CHR + endpoint.
 * A failed plug takes back what it had added, in reverse. QMP errors complete the
 * operation with QEMU's own text (the server's ADD_FAIL / DEL_FAIL reason).
 *
 * Rules QEMU 7.2 imposes (checked on these machines, DESIGN "QEMU facts"):
 *   - every BAR a power of two, else QEMU aborts: window sizes and the control area
 *     size are checked here again before anything is sent;
 *   - one slot per function (ACPI hot-plug on pci.0): devfn_step 8, function 0;
 *   - a peer's vectors are append-only (the ivshmem "peer gone" message corrupts
 *     QEMU's heap): set_peer_vectors refuses to change a vector QEMU holds (-ENOTSUP);
 *     the server must give new call fds fresh vector numbers;
 *   - device_del completes only when the guest ejects: on timeout the function stays
 *     a "zombie" whose back end is removed when DEVICE_DELETED finally arrives;
 *   - own vectors: QEMU is never given an eventfd for the device VM's own id (peer
 *     1). Without KVM irqfd (always under TCG) ivshmem watches each such eventfd with
 *     qemu_set_fd_handler(fd, ivshmem_vector_notify, &s->msi_vectors[v]), and its
 *     unplug (ivshmem_exit -> close_peer_eventfds) closes the fd without removing
 *     that handler (7.2 and 10.0 alike). The main loop keeps polling the fd number
 *     with a pointer into the freed device; the next fd QEMU opens under that number
 *     (a memfd of add-fd or object-add, a socket, an eventfd) polls readable and QEMU
 *     runs ivshmem_vector_notify on freed memory: SIGSEGV, the whole device VM gone.
 *     Every destroy, clone or restart of a client unplugs a control function, so the
 *     interrupt into the device VM is given up instead: guestd polls the controlq
 *     (a userspace driver cannot enable MSI-X anyway), and the server's writes to its
 *     irq eventfd reach no one. The local host still passes it (no QEMU there).
 * The device VM must keep its own PCI devices below slot 8 (we use slots 8..31).
 *
 * Security model: QEMU is the peer; everything it answers goes through qmp.c's checks
 * (types of every member used). Nothing here parses guest input.
 */
#define G_LOG_DOMAIN "vp-server"
#include <glib.h>
#include <glib/gstdio.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devhost.h"
#include "devhost_qemu_sweep.h"
#include "ivshmem_endpoint.h"
#include "qmp.h"
#include "vp_ctrlarea.h"

#define QH_SLOT_FIRST 8
#define QH_SLOT_LAST 31

enum qh_state { QH_PLUGGING, QH_PLUGGED, QH_UNPLUGGING, QH_ZOMBIE };

/* One PCI function this host plugged (or is plugging). */
struct qh_fn {
    bool control;
    uint32_t devfn, ctrl_devfn;
    enum qh_state state;
    char dev_id[40];            /* QEMU device id */
    char backend_id[40];        /* chardev (control) or memory-backend (window) id */
    bool device_added, backend_added;
    bool orphan;                /* no server devfn owns it any more: a zombie, then the
                                   teardown its late DEVICE_DELETED starts (devfn_held) */
    int64_t qemu_fd, fdset_id;  /* window: add-fd result, -1 when none */
    ivshmem_endpoint *ep;       /* control */
};

struct qemu_host;

/* One asynchronous operation: a chain of QMP commands. */
struct qh_op {
    struct qemu_host *h;
    struct qh_fn *fn;
    const char *what;           /* for reasons: "control function" / "memory window" */
    vp_devhost_done_fn done;
    void *opaque;
    int fd;                     /* window: our duplicate of the file, until add-fd */
    uint64_t offset;            /* window: bytes into the file */
    uint64_t size;
    uint32_t nvectors;
    int ret;                    /* outcome so far */
    char reason[256];
    bool unplug;
    guint idle;                 /* deferred completion */
};

struct qemu_host {
    qmp_client *qmp;
    char *qmp_path;
    char *rundir;               /* private directory for the endpoint sockets */
    unsigned timeout_ms;
    unsigned gen;               /* makes QEMU ids unique across re-plugs */
    GPtrArray *fns;             /* struct qh_fn* */
    GList *ops;                 /* struct qh_op* pending */
    bool destroying;
    int64_t qemu_major, qemu_minor;  /* from query-version; -1 until known */
};

static void fn_free(struct qh_fn *fn)
{
    ivshmem_endpoint_free(fn->ep);
    g_free(fn);
}

static struct qh_fn *find_fn(struct qemu_host *h, bool control, uint32_t devfn)
{
    for (guint i = 0; i < h->fns->len; i++) {
        struct qh_fn *fn = g_ptr_array_index(h->fns, i);
        if (fn->control == control && fn->devfn == devfn && fn->state != QH_ZOMBIE)
            return fn;
    }
    return NULL;
}

static void fn_forget(struct qemu_host *h, struct qh_fn *fn)
{
    g_ptr_array_remove(h->fns, fn);     /* frees it */
}

/* "0x10" for slot 16 function 0, "0x10.3" otherwise. */
static void pci_addr(uint32_t devfn, char out[16])
{
    if (devfn & 7)
        g_snprintf(out, 16, "0x%x.%x", devfn >> 3, devfn & 7);
    else
        g_snprintf(out, 16, "0x%x", devfn >> 3);
}

static bool is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* ---- operations ------------------------------------------------------------- */

static struct qh_op *op_new(struct qemu_host *h, const char *what, vp_devhost_done_fn done,
                            void *opaque)
{
    struct qh_op *op = g_new0(struct qh_op, 1);
    op->h = h;
    op->what = what;
    op->done = done;
    op->opaque = opaque;
    op->fd = -1;
    h->ops = g_list_prepend(h->ops, op);
    return op;
}

static void op_free(struct qh_op *op)
{
    op->h->ops = g_list_remove(op->h->ops, op);
    if (op->idle)
        g_source_remove(op->idle);
    vp_close_fd(&op->fd);
    g_free(op);
}

/* Record the first failure of an operation. */
static void op_fail(struct qh_op *op, int ret, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void op_fail(struct qh_op *op, int ret, const char *fmt, ...)
{
    va_list ap;

    if (op->ret)
        return;
    op->ret = ret < 0 ? ret : -EIO;
    va_start(ap, fmt);
    g_vsnprintf(op->reason, sizeof(op->reason), fmt, ap);
    va_end(ap);
}

/* Call the server's completion (from the main loop) and free the operation. */
static void op_finish(struct qh_op *op)
{
    vp_devhost_done_fn done = op->done;
    void *opaque = op->opaque;
    int ret = op->ret;
    char reason[256];

    g_strlcpy(reason, ret ? op->reason : "", sizeof(reason));
    op_free(op);
    if (ret)
        g_info("qemu host: %s", reason);
    if (done)
        done(opaque, ret, reason);
}

static gboolean op_finish_idle(gpointer data)
{
    struct qh_op *op = data;
    op->idle = 0;
    op_finish(op);
    return G_SOURCE_REMOVE;
}

/* Complete without touching QEMU, never before the caller returned (devhost.h). */
static void op_finish_later(struct qh_op *op)
{
    op->idle = g_idle_add_full(G_PRIORITY_DEFAULT, op_finish_idle, op, NULL);
}

/* A QMP callback of an operation whose host is being destroyed: drop it silently. */
static bool op_dropped(struct qh_op *op)
{
    if (!op->h->destroying)
        return false;
    op_free(op);
    return true;
}

static JsonObject *args_new(void)
{
    return json_object_new();
}

/* ---- taking things back (failed plug, unplug, zombie) ------------------------ */

static void teardown_step(struct qh_op *op);

static void teardown_answer(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct qh_op *op = opaque;
    (void)c;
    if (op_dropped(op))
        return;
    if (r->ret < 0) {
        /* The function is gone from the guest; a back end QEMU keeps is logged and
         * reported, but the teardown goes on. */
        g_warning("qemu host: %s %s: %s failed: %s", op->what, op->fn->dev_id, r->command,
                  r->err.msg);
        if (op->unplug)
            op_fail(op, r->ret, "%s %s removed from the guest, but QMP %s failed: %s",
                    op->what, op->fn->dev_id, r->command, r->err.msg);
    }
    teardown_step(op);
}

/* Remove, in reverse order, what a function still has in QEMU; then finish. */
static void teardown_step(struct qh_op *op)
{
    struct qh_fn *fn = op->fn;
    struct qemu_host *h = op->h;
    JsonObject *a;

    if (fn->backend_added) {
        fn->backend_added = false;
        a = args_new();
        json_object_set_string_member(a, "id", fn->backend_id);
        qmp_client_execute(h->qmp, fn->control ? "chardev-remove" : "object-del", a,
                           teardown_answer, op);
        return;
    }
    if (fn->qemu_fd >= 0) {
        a = args_new();
        json_object_set_int_member(a, "fdset-id", fn->fdset_id);
        json_object_set_int_member(a, "fd", fn->qemu_fd);
        fn->qemu_fd = -1;
        qmp_client_execute(h->qmp, "remove-fd", a, teardown_answer, op);
        return;
    }
    /* Nothing left in QEMU: the endpoint (QEMU closed its end with chardev-remove)
     * and the record go. */
    fn_forget(h, fn);
    op->fn = NULL;
    op_finish(op);
}

/* A zombie's DEVICE_DELETED finally arrived: remove its back end, report nothing. */
static void on_qmp_event(qmp_client *c, const char *name, JsonObject *data, void *opaque)
{
    struct qemu_host *h = opaque;
    const char *dev;
    (void)c;

    if (strcmp(name, "DEVICE_DELETED") != 0 || !(dev = qmp_get_str(data, "device")))
        return;
    for (guint i = 0; i < h->fns->len; i++) {
        struct qh_fn *fn = g_ptr_array_index(h->fns, i);
        if (fn->state == QH_ZOMBIE && strcmp(fn->dev_id, dev) == 0) {
            struct qh_op *op = op_new(h, fn->control ? "control function" : "memory window",
                                      NULL, NULL);
            g_info("qemu host: late DEVICE_DELETED for %s: removing its back end", dev);
            fn->state = QH_UNPLUGGING;
            op->fn = fn;
            op->unplug = true;
            teardown_step(op);
            return;
        }
    }
}

/* ---- plugging --------------------------------------------------------------- */

/* Record a function about to be plugged as op->fn; @gen makes its QEMU ids unique
 * across re-plugs. */
static struct qh_fn *fn_new(struct qh_op *op, bool control, uint32_t devfn,
                            uint32_t ctrl_devfn, unsigned gen)
{
    struct qh_fn *fn = g_new0(struct qh_fn, 1);

    fn->control = control;
    fn->devfn = devfn;
    fn->ctrl_devfn = ctrl_devfn;
    fn->state = QH_PLUGGING;
    fn->qemu_fd = fn->fdset_id = -1;
    g_snprintf(fn->dev_id, sizeof(fn->dev_id), "vpci-%s%u-%02x", control ? "ctl" : "win",
               gen, devfn);
    g_snprintf(fn->backend_id, sizeof(fn->backend_id), "vpci-%s%u-%02x",
               control ? "chr" : "mem", gen, devfn);
    g_ptr_array_add(op->h->fns, fn);
    op->fn = fn;
    return fn;
}

/* The head of every answer in a plug chain: true when the chain stops here, either
 * because the host is being destroyed (the operation was dropped) or because QEMU
 * refused (the failure is recorded and what was added is taken back). */
static bool plug_step_failed(struct qh_op *op, const qmp_reply *r)
{
    if (op_dropped(op))
        return true;
    if (r->ret < 0) {
        op_fail(op, r->ret, "%s", r->err.msg);
        teardown_step(op);
        return true;
    }
    return false;
}

/* Shared by both plug chains: the device_add answer. */
static void plug_device_added(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct qh_op *op = opaque;
    (void)c;
    if (plug_step_failed(op, r))
        return;
    op->fn->device_added = true;
    op->fn->state = QH_PLUGGED;
    g_info("qemu host: %s %s plugged at devfn 0x%x", op->what, op->fn->dev_id, op->fn->devfn);
    op->fn = NULL;
    op_finish(op);
}

/* Shared by both plug chains: the back end is in (chardev-add of a control function,
 * object-add of a memory window); device_add the function on it. For a control
 * function QEMU connected to the endpoint during chardev-add; it reads the set-up
 * (sent by the endpoint as soon as it accepts) inside this device_add. */
static void plug_backend_added(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct qh_op *op = opaque;
    struct qh_fn *fn = op->fn;
    JsonObject *a;
    char addr[16];
    (void)c;

    if (plug_step_failed(op, r))
        return;
    fn->backend_added = true;
    pci_addr(fn->devfn, addr);
    a = args_new();
    json_object_set_string_member(a, "driver",
                                  fn->control ? "ivshmem-doorbell" : "ivshmem-plain");
    json_object_set_string_member(a, "id", fn->dev_id);
    json_object_set_string_member(a, fn->control ? "chardev" : "memdev", fn->backend_id);
    if (fn->control)
        json_object_set_int_member(a, "vectors", op->nvectors);
    json_object_set_string_member(a, "addr", addr);
    qmp_client_execute(op->h->qmp, "device_add", a, plug_device_added, op);
}

static void qemu_plug_control(struct vp_devhost *hh, const struct vp_devhost_control *ctl,
                              vp_devhost_done_fn done, void *opaque)
{
    struct qemu_host *h = (struct qemu_host *)hh;
    struct qh_op *op = op_new(h, "control function", done, opaque);
    struct qh_fn *fn;
    g_autofree char *path = NULL;
    JsonObject *a, *backend, *data, *addr, *uaddr;
    vp_error err = { "" };
    int kicks[2] = { ctl->rx_kick_fd, ctl->tx_kick_fd };
    unsigned gen;

    if (find_fn(h, true, ctl->devfn)) {
        op_fail(op, -EEXIST, "control function devfn 0x%x already plugged", ctl->devfn);
        op_finish_later(op);
        return;
    }
    if (!is_pow2(ctl->ctrl_size)) {
        op_fail(op, -EINVAL, "control area size %" PRIu64 " is not a power of two",
                ctl->ctrl_size);
        op_finish_later(op);
        return;
    }
    op->nvectors = ctl->nvectors ? MIN(ctl->nvectors, VP_MAX_VECTORS) : VP_MAX_VECTORS;
    op->nvectors = MAX(op->nvectors, 2u);   /* peer 0 has two */

    gen = ++h->gen;
    fn = fn_new(op, true, ctl->devfn, ctl->devfn, gen);

    /* The endpoint serves before QEMU is told about it (DESIGN: QEMU spins on an
     * endpoint that is not serving). */
    path = g_strdup_printf("%s/ctl-%02x-%u.sock", h->rundir, ctl->devfn, gen);
    /* No eventfd for VP_ID_DEVICE_VM (ctl->irq_fd stays ours): QEMU would leave a
     * dangling fd handler for it behind when this function is unplugged (top of file). */
    fn->ep = ivshmem_endpoint_new(NULL, path, ctl->ctrl_fd, VP_ID_DEVICE_VM, &err);
    if (!fn->ep || ivshmem_endpoint_set_peer(fn->ep, VP_ID_SERVER, kicks, 2, &err) < 0) {
        op_fail(op, -EINVAL, "control function devfn 0x%x: %s", ctl->devfn, err.msg);
        fn_forget(h, fn);
        op->fn = NULL;
        op_finish_later(op);
        return;
    }

    uaddr = args_new();
    json_object_set_string_member(uaddr, "path", path);
    addr = args_new();
    json_object_set_string_member(addr, "type", "unix");
    json_object_set_object_member(addr, "data", uaddr);
    data = args_new();
    json_object_set_object_member(data, "addr", addr);
    json_object_set_boolean_member(data, "server", FALSE);  /* QMP's default is true */
    backend = args_new();
    json_object_set_string_member(backend, "type", "socket");
    json_object_set_object_member(backend, "data", data);
    a = args_new();
    json_object_set_string_member(a, "id", fn->backend_id);
    json_object_set_object_member(a, "backend", backend);
    g_info("qemu host: plugging control function %s at devfn 0x%x (endpoint %s)", fn->dev_id,
           fn->devfn, path);
    qmp_client_execute(h->qmp, "chardev-add", a, plug_backend_added, op);
}

static void plug_window_fd(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct qh_op *op = opaque;
    struct qh_fn *fn = op->fn;
    g_autofree char *mem_path = NULL;
    JsonObject *a;
    (void)c;

    vp_close_fd(&op->fd);   /* QEMU has its own copy now (or never will) */
    if (plug_step_failed(op, r))
        return;
    fn->qemu_fd = r->fd;
    fn->fdset_id = r->fdset_id;
    /* /proc/self/fd/N: memory-backend-file open(2)s mem-path, so /dev/fdset/ does not
     * work in 7.2; there is no offset property before 8.1: a window is a whole file. */
    mem_path = g_strdup_printf("/proc/self/fd/%" PRId64, r->fd);
    a = args_new();
    json_object_set_string_member(a, "qom-type", "memory-backend-file");
    json_object_set_string_member(a, "id", fn->backend_id);
    json_object_set_string_member(a, "mem-path", mem_path);
    json_object_set_int_member(a, "size", (gint64)op->size);
    json_object_set_boolean_member(a, "share", TRUE);
    if (op->offset)  /* QEMU >= 8.1, checked by qemu_plug_window */
        json_object_set_int_member(a, "offset", (gint64)op->offset);
    qmp_client_execute(op->h->qmp, "object-add", a, plug_backend_added, op);
}

/* memory-backend-file has "offset" since QEMU 8.1. */
static bool qemu_windows_at_offsets(struct vp_devhost *hh)
{
    struct qemu_host *h = (struct qemu_host *)hh;
    return h->qemu_major > 8 || (h->qemu_major == 8 && h->qemu_minor >= 1);
}

static void qemu_plug_window(struct vp_devhost *hh, uint32_t ctrl_devfn, uint32_t devfn,
                             int fd, uint64_t offset, uint64_t size, vp_devhost_done_fn done,
                             void *opaque)
{
    struct qemu_host *h = (struct qemu_host *)hh;
    struct qh_op *op = op_new(h, "memory window", done, opaque);
    struct qh_fn *fn;
    struct stat st;
    unsigned gen;

    if (find_fn(h, false, devfn)) {
        op_fail(op, -EEXIST, "memory window devfn 0x%x already plugged", devfn);
        op_finish_later(op);
        return;
    }
    /* Never hand QEMU a BAR that is not a power of two: it aborts the whole VM. */
    if (!is_pow2(size)) {
        op_fail(op, -EINVAL, "memory window of %" PRIu64 " bytes: not a power of two", size);
        op_finish_later(op);
        return;
    }
    if (offset && !qemu_windows_at_offsets(hh)) {
        op_fail(op, -ENOTSUP, "memory window at file offset %" PRIu64 ": QEMU %" PRId64 ".%"
                PRId64 " has no memory-backend-file offset (8.1 and later)", offset,
                h->qemu_major, h->qemu_minor);
        op_finish_later(op);
        return;
    }
    if (fstat(fd, &st) < 0 || st.st_size < 0 || offset + size < offset ||
        (uint64_t)st.st_size < offset + size) {
        op_fail(op, -EINVAL, "memory window file is smaller than %" PRIu64 " + %" PRIu64
                " bytes", offset, size);
        op_finish_later(op);
        return;
    }
    op->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (op->fd < 0) {
        op_fail(op, -errno, "memory window: dup: %s", g_strerror(errno));
        op_finish_later(op);
        return;
    }
    op->size = size;
    op->offset = offset;
    gen = ++h->gen;
    fn = fn_new(op, false, devfn, ctrl_devfn, gen);
    g_info("qemu host: plugging memory window %s (%" PRIu64 " bytes from file offset %"
           PRIu64 ") at devfn 0x%x", fn->dev_id, size, offset, devfn);
    {
        g_autofree char *label = g_strdup_printf("vhost-pci %s", fn->dev_id);
        qmp_client_add_fd(h->qmp, op->fd, -1, label, plug_window_fd, op);
    }
}

/* ---- unplugging ------------------------------------------------------------- */

static void unplug_deleted(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct qh_op *op = opaque;
    struct qh_fn *fn = op->fn;
    (void)c;

    if (op_dropped(op))
        return;
    if (r->ret == -ETIMEDOUT) {
        /* Still in the guest: keep the back end until DEVICE_DELETED arrives. */
        fn->state = QH_ZOMBIE;
        fn->orphan = true;
        op->fn = NULL;
        op_fail(op, -ETIMEDOUT, "the device VM did not release %s %s within %u ms "
                "(device_del needs the guest to eject it)", op->what, fn->dev_id,
                op->h->timeout_ms);
        op_finish(op);
        return;
    }
    if (r->ret < 0 && !(r->err_class && strcmp(r->err_class, "DeviceNotFound") == 0)) {
        fn->state = QH_PLUGGED;     /* still there */
        op->fn = NULL;
        op_fail(op, r->ret, "%s", r->err.msg);
        op_finish(op);
        return;
    }
    fn->device_added = false;
    g_info("qemu host: %s %s unplugged", op->what, fn->dev_id);
    teardown_step(op);
}

static void start_unplug(struct qemu_host *h, bool control, uint32_t devfn,
                         vp_devhost_done_fn done, void *opaque)
{
    struct qh_op *op = op_new(h, control ? "control function" : "memory window", done, opaque);
    struct qh_fn *fn = find_fn(h, control, devfn);

    op->unplug = true;
    if (!fn) {
        op_finish_later(op);    /* nothing plugged there: nothing to do */
        return;
    }
    if (fn->state != QH_PLUGGED) {
        op_fail(op, -EBUSY, "%s devfn 0x%x is still being %s", op->what, devfn,
                fn->state == QH_PLUGGING ? "plugged" : "unplugged");
        op_finish_later(op);
        return;
    }
    fn->state = QH_UNPLUGGING;
    op->fn = fn;
    qmp_client_device_del(h->qmp, fn->dev_id, h->timeout_ms, unplug_deleted, op);
}

static void qemu_unplug_window(struct vp_devhost *hh, uint32_t ctrl_devfn, uint32_t devfn,
                               vp_devhost_done_fn done, void *opaque)
{
    (void)ctrl_devfn;
    start_unplug((struct qemu_host *)hh, false, devfn, done, opaque);
}

static void qemu_unplug_control(struct vp_devhost *hh, uint32_t ctrl_devfn,
                                vp_devhost_done_fn done, void *opaque)
{
    start_unplug((struct qemu_host *)hh, true, ctrl_devfn, done, opaque);
}

static int qemu_set_peer_vectors(struct vp_devhost *hh, uint32_t ctrl_devfn, uint32_t peer_id,
                                 const int *fds, unsigned n, vp_error *err)
{
    struct qemu_host *h = (struct qemu_host *)hh;
    struct qh_fn *fn = find_fn(h, true, ctrl_devfn);

    if (!fn || !fn->ep)
        return vp_fail(err, -ENOENT, "no control function at devfn 0x%x", ctrl_devfn);
    return ivshmem_endpoint_set_peer(fn->ep, peer_id, fds, n, err);
}

/* ---- life cycle ------------------------------------------------------------- */

/* query-version's answer: {"qemu": {"major", "minor", "micro"}, "package"}. */
static void on_version(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct qemu_host *h = opaque;
    JsonObject *v, *q;
    (void)c;
    if (r->ret == -ECANCELED)
        return;  /* the host is being destroyed */
    if (r->ret < 0 || !JSON_NODE_HOLDS_OBJECT(r->value) ||
        !(v = json_node_get_object(r->value)) || !json_object_has_member(v, "qemu") ||
        !JSON_NODE_HOLDS_OBJECT(json_object_get_member(v, "qemu")) ||
        !(q = json_object_get_object_member(v, "qemu")) ||
        !json_object_has_member(q, "major") || !json_object_has_member(q, "minor") ||
        json_node_get_value_type(json_object_get_member(q, "major")) != G_TYPE_INT64 ||
        json_node_get_value_type(json_object_get_member(q, "minor")) != G_TYPE_INT64) {
        g_warning("qemu host: query-version: %s; memory files that are not a power of two "
                  "are refused", r->ret < 0 ? r->err.msg : "unexpected answer");
        return;
    }
    h->qemu_major = json_object_get_int_member(q, "major");
    h->qemu_minor = json_object_get_int_member(q, "minor");
    g_info("qemu host: QEMU %" PRId64 ".%" PRId64 ": windows at file offsets %s", h->qemu_major,
           h->qemu_minor, qemu_windows_at_offsets((struct vp_devhost *)h) ? "yes" : "no");
}

static void on_qmp_state(qmp_client *c, int ret, const vp_error *err, void *opaque)
{
    struct qemu_host *h = opaque;
    (void)c;
    if (ret == 0) {
        g_info("qemu host: QMP %s ready", h->qmp_path);
        qmp_client_execute(h->qmp, "query-version", NULL, on_version, h);
    } else
        g_warning("qemu host: QMP %s: %s (every later hot-plug fails)", h->qmp_path,
                  err ? err->msg : "closed");
}

/* A restarted server: remove what the one before it left in the device VM (it was
 * killed, so its functions, back ends and fds are still in QEMU), before anything is
 * plugged (devhost_qemu_sweep.h). Runs before the server's main loop: no client is
 * served until the device VM is clean. Functions the guest does not eject in time
 * become zombies of this host (their back ends go when DEVICE_DELETED arrives), and
 * the ids this host makes start above every generation found. */
static void sweep_leftovers(struct qemu_host *h)
{
    struct qh_sweep sw;
    vp_error err = { "" };

    if (qh_sweep_leftovers(h->qmp, h->timeout_ms, &sw, &err) < 0)
        g_warning("qemu host: cannot look for functions an earlier server left in the "
                  "device VM: %s", err.msg);
    h->gen = sw.max_gen;
    for (guint i = 0; i < sw.zombies->len; i++) {
        const struct qh_leftover *l = &g_array_index(sw.zombies, struct qh_leftover, i);
        struct qh_fn *fn = g_new0(struct qh_fn, 1);

        fn->control = l->control;
        fn->devfn = fn->ctrl_devfn = l->devfn;
        fn->state = QH_ZOMBIE;
        fn->orphan = true;
        g_strlcpy(fn->dev_id, l->dev_id, sizeof(fn->dev_id));
        g_strlcpy(fn->backend_id, l->backend_id, sizeof(fn->backend_id));
        fn->device_added = true;
        fn->backend_added = l->backend;
        fn->qemu_fd = l->qemu_fd;
        fn->fdset_id = l->fdset_id;
        g_ptr_array_add(h->fns, fn);
    }
    g_array_unref(sw.zombies);
}

static struct vp_devhost *qemu_create(const struct vp_devhost_config *cfg, vp_error *err)
{
    struct qemu_host *h;
    g_autoptr(GError) gerr = NULL;
    int ret;

    if (!cfg->qmp) {
        vp_fail(err, -EINVAL, "the qemu device host needs --qmp PATH");
        return NULL;
    }
    h = g_new0(struct qemu_host, 1);
    h->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 30000;
    h->qemu_major = h->qemu_minor = -1;
    h->qmp_path = g_strdup(cfg->qmp);
    h->fns = g_ptr_array_new_with_free_func((GDestroyNotify)fn_free);
    h->rundir = g_dir_make_tmp("vhost-pci-qemu-XXXXXX", &gerr);
    if (!h->rundir) {
        vp_fail(err, -EIO, "cannot create a directory for ivshmem endpoints: %s",
                gerr->message);
        goto fail;
    }
    h->qmp = qmp_client_new(NULL);
    qmp_client_set_state_handler(h->qmp, on_qmp_state, h);
    qmp_client_set_event_handler(h->qmp, on_qmp_event, h);
    /* QMP commands time out with the host's bound too (TCG guests are slow). */
    qmp_client_set_command_timeout(h->qmp, MAX(h->timeout_ms, 10000u));
    ret = qmp_client_connect(h->qmp, cfg->qmp, MAX(h->timeout_ms, 10000u), err);
    if (ret < 0)
        goto fail;
    sweep_leftovers(h);
    return (struct vp_devhost *)h;

fail:
    qmp_client_free(h->qmp);
    if (h->rundir)
        g_rmdir(h->rundir);
    g_free(h->rundir);
    g_free(h->qmp_path);
    g_ptr_array_free(h->fns, TRUE);
    g_free(h);
    return NULL;
}

/* A zombie (ours or an earlier server's) still occupies @devfn: its slot until its
 * DEVICE_DELETED (on_qmp_event), then its record (a plug there would be -EEXIST)
 * until the teardown that event starts has removed its back end. */
static bool qemu_devfn_held(struct vp_devhost *hh, uint32_t devfn)
{
    struct qemu_host *h = (struct qemu_host *)hh;

    for (guint i = 0; i < h->fns->len; i++) {
        const struct qh_fn *fn = g_ptr_array_index(h->fns, i);
        if (fn->orphan && fn->devfn == devfn)
            return true;
    }
    return false;
}

static void qemu_destroy(struct vp_devhost *hh)
{
    struct qemu_host *h = (struct qemu_host *)hh;

    if (!h)
        return;
    /* Pending completions are dropped, not called (devhost.h). */
    h->destroying = true;
    for (GList *l = h->ops, *next; l; l = next) {
        struct qh_op *op = l->data;
        next = l->next;
        if (op->idle)
            op_free(op);
    }
    qmp_client_free(h->qmp);    /* the remaining ops get -ECANCELED and are dropped */
    while (h->ops)
        op_free(h->ops->data);
    /* What is still plugged stays in the device VM; our endpoints close (QEMU sees
     * EOF on those chardevs, which ivshmem ignores). */
    g_ptr_array_free(h->fns, TRUE);
    g_rmdir(h->rundir);
    g_free(h->rundir);
    g_free(h->qmp_path);
    g_free(h);
}

const struct vp_devhost_ops vp_devhost_qemu_ops = {
    .name = "qemu",
    .devfn_first = QH_SLOT_FIRST << 3,
    .devfn_last = QH_SLOT_LAST << 3,
    .devfn_step = 8,
    .devfn_held = qemu_devfn_held,
    .create = qemu_create,
    .destroy = qemu_destroy,
    .plug_control = qemu_plug_control,
    .plug_window = qemu_plug_window,
    .windows_at_offsets = qemu_windows_at_offsets,
    .unplug_window = qemu_unplug_window,
    .set_peer_vectors = qemu_set_peer_vectors,
    .unplug_control = qemu_unplug_control,
};
