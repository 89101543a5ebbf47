/*
 * fuzz_guestd.h - a vhost-pci-guestd in one process for the fuzz targets (static
 * functions, included by fuzz-controlq.c and fuzz-vring.c): the real control plane,
 * devices and data path (guest-driver/) on a fake bus whose control area is plain
 * memory and whose windows are parts of one memfd, with the server's side of the
 * control queues played through tests/unit/guestd-fake.h. Everything runs when the
 * target calls fg_service() / gd_net_poll(): no threads, no timers fire by
 * themselves, so a run depends on the input only.
 *
 * The window table of the control area is chosen by the input (fg_setup): up to
 * FG_MAX_WIN windows naming devfns the bus has plugged (or not), at input-chosen BAR
 * offsets and sizes, so MEMORY_INFO regions may lie in mapped, unmapped, missing or
 * mismatched windows.
 */
#ifndef VP_FUZZ_GUESTD_H
#define VP_FUZZ_GUESTD_H

#include <glib.h>
#include <string.h>
#include <sys/mman.h>

#include "controlplane.h"
#include "device.h"
#include "endpoint.h"
#include "fuzz.h"
#include "guestd-fake.h"
#include "log.h"
#include "loop.h"
#include "net.h"
#include "vp_ctrlarea.h"

#define FG_MAX_WIN 3
#define FG_WIN_SIZE (64 * 1024)   /* every plugged window holds this much of the memfd */
#define FG_DEVFN0 0x10            /* plugged windows: devfns FG_DEVFN0 .. + FG_MAX_WIN - 1 */

struct fg_bus {
    struct gd_bus base;
    uint8_t *ca;                  /* control area, VP_CA_SIZE bytes */
    int memfd;                    /* FG_MAX_WIN * FG_WIN_SIZE bytes: window i at i * size */
    uint8_t plugged;              /* bit i: window devfn FG_DEVFN0 + i is plugged */
    unsigned bells;               /* doorbells rung (any peer) */
};

static struct fg_bus *fg_of(struct gd_bus *b) { return (struct fg_bus *)b; }

static inline int fg_start(struct gd_bus *b, vp_error *err) { (void)b; (void)err; return 0; }
static inline void fg_sync(struct gd_bus *b) { (void)b; }
static inline int fg_control_area(struct gd_bus *b, unsigned slot, void **base, uint64_t *size)
{
    if (slot != 0)
        return -ENOENT;
    *base = fg_of(b)->ca;
    *size = VP_CA_SIZE;
    return 0;
}
static inline int fg_irq_fd(struct gd_bus *b, unsigned slot) { (void)b; (void)slot; return -1; }
static inline void fg_irq_ack(struct gd_bus *b, unsigned slot) { (void)b; (void)slot; }
static inline int fg_doorbell(struct gd_bus *b, unsigned slot, uint16_t peer, uint16_t vector)
{
    (void)slot; (void)peer; (void)vector;
    fg_of(b)->bells++;
    return 0;
}
static inline int fg_peer_vectors(struct gd_bus *b, unsigned slot, uint16_t peer)
{
    (void)b; (void)slot; (void)peer;
    return -1;                    /* unknown: every vector allowed */
}

static inline int fg_window(struct fg_bus *fb, struct gd_win_id id)
{
    unsigned i = (unsigned)id.devfn - FG_DEVFN0;
    return id.devfn >= FG_DEVFN0 && i < FG_MAX_WIN && (fb->plugged & (1u << i)) ? (int)i : -1;
}

static inline int fg_window_query(struct gd_bus *b, unsigned slot, struct gd_win_id id, uint64_t *size)
{
    (void)slot;
    if (fg_window(fg_of(b), id) < 0)
        return -ENOENT;
    *size = FG_WIN_SIZE;
    return 0;
}

static inline int fg_window_map(struct gd_bus *b, unsigned slot, struct gd_win_id id, void *addr,
                         uint64_t size, vp_error *err)
{
    (void)slot;
    int i = fg_window(fg_of(b), id);
    if (i < 0)
        return vp_fail(err, -ENOENT, "window devfn 0x%x not plugged", id.devfn);
    if (size == 0 || size > FG_WIN_SIZE)
        return vp_fail(err, -EINVAL, "window holds %u bytes, %llu wanted", FG_WIN_SIZE,
                       (unsigned long long)size);
    void *p = mmap(addr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                   fg_of(b)->memfd, (off_t)i * FG_WIN_SIZE);
    return p == MAP_FAILED ? vp_fail(err, -errno, "mmap: %s", strerror(errno)) : 0;
}

static inline void fg_destroy(struct gd_bus *b) { (void)b; }

static const struct gd_bus_ops fg_ops = {
    .name = "fuzz", .windows_by_devfn = true, .start = fg_start, .sync = fg_sync,
    .control_area = fg_control_area, .irq_fd = fg_irq_fd, .irq_ack = fg_irq_ack,
    .doorbell = fg_doorbell, .peer_vectors = fg_peer_vectors,
    .window_query = fg_window_query, .window_map = fg_window_map, .destroy = fg_destroy,
};

/* The window memory and the control area outlive the inputs (made once; cleared). */
static int fg_memfd = -1;
static uint8_t *fg_mem;           /* the test's view of all windows */
static uint8_t *fg_ca;

struct fg {
    struct gd_loop *loop;
    struct gd_cp *cp;
    struct gd_net *net;           /* NULL without a data path */
    struct fg_bus bus;
    struct fk_dev cq;             /* the server's side of the control queues */
    struct gd_device *dev;
    bool attached;                /* cq attached (the driver reached DRIVER_OK) */
};

static inline void fg_once(void)
{
    if (fg_mem)
        return;
    fz_pool_init();
    /* guestd's warnings are formatted (peer text goes through them) but
     * stdio's stderr goes nowhere unless FUZZ_VERBOSE is set; sanitizer reports and
     * FZ_CHECK write to fd 2 themselves. */
    gd_log_set_level(getenv("FUZZ_VERBOSE") ? GD_LOG_DEBUG : GD_LOG_WARN);
    if (!getenv("FUZZ_VERBOSE")) {
        FILE *null = fopen("/dev/null", "we");
        if (null)
            stderr = null;
    }
    /* guestd holds a handful of fds here (no irq fds, no sockets): 256 is plenty and
     * makes the fd check exact (fuzz.h). */
    fz_fds_limit(256);
    fg_memfd = fz_memfd((uint64_t)FG_MAX_WIN * FG_WIN_SIZE, 0);
    FZ_CHECK(fg_memfd >= 0);
    fg_mem = mmap(NULL, (size_t)FG_MAX_WIN * FG_WIN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                  fg_memfd, 0);
    fg_ca = mmap(NULL, VP_CA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    FZ_CHECK(fg_mem != MAP_FAILED && fg_ca != MAP_FAILED);
}

/**
 * Build a guestd with the window table read from the input (@f, about 40 bytes) and
 * run its handshake. @ep (taken; may be NULL: no data path) is the data path's
 * endpoint. fg->dev is NULL or broken when the header made the driver give up.
 */
static inline void fg_setup(struct fg *g, struct fz *f, struct gd_endpoint *ep)
{
    fg_once();
    memset(g, 0, sizeof(*g));
    memset(fg_ca, 0, 0x20000);    /* header, rings and the buffers guestd uses */
    memset(fg_mem, 0, (size_t)FG_MAX_WIN * FG_WIN_SIZE);
    g->loop = gd_loop_new();
    FZ_CHECK(g->loop != NULL);
    g->cp = gd_cp_new(g->loop, &(struct gd_cp_config){ .window_wait_ns = 1 });
    g->bus.base = (struct gd_bus){ .ops = &fg_ops, .loop = g->loop, .ev = &gd_cp_bus_events,
                                   .ev_opaque = g->cp };
    g->bus.ca = fg_ca;
    g->bus.memfd = fg_memfd;
    gd_cp_set_bus(g->cp, &g->bus.base);
    if (ep) {
        g->net = gd_net_new(g->loop, ep);
        FZ_CHECK(g->net != NULL);
        gd_cp_set_datapath(g->cp, &gd_net_ops, g->net);
    }

    /* Window table: by default one plugged 64 KiB window at BAR offset 0. */
    uint8_t wcfg = fz_u8(f);
    g->bus.plugged = (uint8_t)(1u | (wcfg & 6));
    uint64_t bar_size = FK_BAR_SIZE;
    fk_write_header(fg_ca, bar_size);
    unsigned nwin = 1;
    fk_set_window(fg_ca, 0, FG_DEVFN0, 0, FG_WIN_SIZE);
    if (wcfg & 0x80) {
        /* Input-chosen entries: devfn, BAR offset (64 KiB units, sometimes raw), size. */
        nwin = 1 + (wcfg >> 3) % FG_MAX_WIN;
        for (unsigned i = 0; i < nwin; i++) {
            uint8_t devfn = (uint8_t)(FG_DEVFN0 + fz_u8(f) % (FG_MAX_WIN + 1));
            uint32_t off = fz_u32(f);
            uint64_t bar_off = (off & 1) ? off : (uint64_t)(off >> 1) % 128 * FG_WIN_SIZE;
            uint8_t sz = fz_u8(f);
            uint64_t size = (sz & 0x80) ? fz_u64(f) : (uint64_t)FG_WIN_SIZE >> (sz & 3);
            fk_set_window(fg_ca, i, devfn, bar_off, size);
        }
    }
    fk_publish_windows(fg_ca, nwin);
    g->cq.ca = fg_ca;
    g->cq.size = VP_CA_SIZE;

    gd_cp_bus_events.control_plugged(g->cp, 0);
    g->dev = gd_cp_device(g->cp, 0);
    if (g->dev && !g->dev->broken && (fk_status(fg_ca) & VP_STATUS_DRIVER_OK)) {
        fk_attach(&g->cq);
        g->attached = true;
    }
}

static inline bool fg_alive(const struct fg *g)
{
    return g->attached && g->dev && !g->dev->broken;
}

/** Let guestd handle what is on its transmitq: the device of slot 0, the only one the
 *  fuzz bus plugs (gd_cp_service_all would look at every slot of the local bus). */
static inline void fg_service(struct fg *g)
{
    if (fg_alive(g))
        gd_device_service(g->dev);
}

/** The last service pass of an input, through the control plane's own walk over
 *  every slot (gd_cp_service_all), so that walk stays covered too. */
static inline void fg_service_all(struct fg *g)
{
    if (fg_alive(g))
        gd_cp_service_all(g->cp);
}

/**
 * Put @len bytes into the next transmitq buffer the driver posted, claiming @used_len
 * bytes written. Returns false when the driver posted none (it is out of ACK space or
 * broken) or the device is gone.
 */
static inline bool fg_send_raw(struct fg *g, const void *bytes, size_t len, uint32_t used_len)
{
    if (!fg_alive(g) || !vp_vring_dev_has_avail(&g->cq.tx))
        return false;
    fk_send_raw_len(&g->cq, bytes, len, used_len);
    return true;
}

/** Encode and send @m (seq assigned); false as fg_send_raw. */
static inline bool fg_send(struct fg *g, struct vp_cq_msg *m)
{
    uint8_t buf[VP_CA_BUF_SLOT];
    m->version = VP_MSG_VERSION;
    m->seq = ++g->cq.seq;
    int len = vp_cq_encode(m, buf, sizeof(buf));
    FZ_CHECK(len > 0);
    return fg_send_raw(g, buf, (size_t)len, (uint32_t)len);
}

/** Take every ACK guestd put on the receiveq (each must decode: guestd's own ACKs are
 *  well-formed whatever it was sent). Returns the last one's result, or -1 if none. */
static inline int64_t fg_drain_acks(struct fg *g, struct vp_cq_msg *last)
{
    int64_t res = -1;
    struct vp_cq_msg ack;
    while (g->attached && vp_vring_dev_has_avail(&g->cq.rx) && fk_recv_ack(&g->cq, &ack) == 1) {
        res = (int64_t)ack.u.ack.result;
        if (last)
            *last = ack;
    }
    return res;
}

/** Send @m, let guestd handle it, and return its ACK's result (-1: no ACK). */
static inline int64_t fg_roundtrip(struct fg *g, struct vp_cq_msg *m, struct vp_cq_msg *ack)
{
    if (!fg_send(g, m))
        return -1;
    fg_service(g);
    return fg_drain_acks(g, ack);
}

/** Tear the guestd down (frontends stopped, memory released, windows unmapped). */
static inline void fg_teardown(struct fg *g)
{
    gd_cp_free(g->cp);
    gd_net_free(g->net);
    gd_loop_free(g->loop);
}

#endif
