/*
 * test-guestd-controlplane.c - the guest driver's control plane (guest-driver/) against
 * a fake device side: a control area in memory, vp_vring_dev on both control queues,
 * memfd windows, and a fake bus that records doorbells.
 *
 * Covers: header validation, the status handshake, every controlq message type and
 * its ACK, the memory table checks, the support list, data path hook ordering,
 * window mapping and window table changes, ACK back-pressure, malformed input ->
 * NEEDS_RESET with a reason (other devices carry on), the status JSON.
 */
#include <errno.h>
#include <poll.h>
#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "controlplane.h"
#include "ctrlarea.h"
#include "device.h"
#include "guestd-fake.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "status.h"
#include "testutil.h"

/* ------------------------------- fake bus ------------------------------- */

#define FB_MAX_WIN 8
#define FB_MAX_BELLS 512

struct fb_win {
    bool plugged;
    uint8_t devfn;
    int fd;
    uint64_t size;
};

struct fake_bus {
    struct gd_bus base;
    uint8_t *ca[4];               /* per slot */
    struct fb_win win[FB_MAX_WIN];
    unsigned nbells;
    struct fb_bell { unsigned slot; uint16_t peer, vector; } bells[FB_MAX_BELLS];
    unsigned syncs;
};

static struct fake_bus *fb_of(struct gd_bus *b) { return (struct fake_bus *)b; }

static int fb_start(struct gd_bus *b, vp_error *err) { (void)b; (void)err; return 0; }
static void fb_sync(struct gd_bus *b) { fb_of(b)->syncs++; }
static int fb_control_area(struct gd_bus *b, unsigned slot, void **base, uint64_t *size)
{
    if (slot >= 4 || !fb_of(b)->ca[slot])
        return -ENOENT;
    *base = fb_of(b)->ca[slot];
    *size = VP_CA_SIZE;
    return 0;
}
static int fb_irq_fd(struct gd_bus *b, unsigned slot) { (void)b; (void)slot; return -1; }
static void fb_irq_ack(struct gd_bus *b, unsigned slot) { (void)b; (void)slot; }
static int fb_doorbell(struct gd_bus *b, unsigned slot, uint16_t peer, uint16_t vector)
{
    struct fake_bus *fb = fb_of(b);
    if (fb->nbells < FB_MAX_BELLS)
        fb->bells[fb->nbells++] = (struct fb_bell){ slot, peer, vector };
    return 0;
}
static int fb_peer_vectors(struct gd_bus *b, unsigned slot, uint16_t peer)
{
    (void)b; (void)slot; (void)peer;
    return -1;
}
static struct fb_win *fb_find(struct fake_bus *fb, uint8_t devfn)
{
    for (unsigned i = 0; i < FB_MAX_WIN; i++) {
        if (fb->win[i].plugged && fb->win[i].devfn == devfn)
            return &fb->win[i];
    }
    return NULL;
}
static int fb_window_query(struct gd_bus *b, unsigned slot, struct gd_win_id id, uint64_t *size)
{
    (void)slot;
    struct fb_win *w = fb_find(fb_of(b), id.devfn);
    if (!w)
        return -ENOENT;
    *size = w->size;
    return 0;
}
static int fb_window_map(struct gd_bus *b, unsigned slot, struct gd_win_id id, void *addr,
                         uint64_t size, vp_error *err)
{
    (void)slot;
    struct fb_win *w = fb_find(fb_of(b), id.devfn);
    if (!w)
        return vp_fail(err, -ENOENT, "not plugged");
    void *p = mmap(addr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, w->fd, 0);
    return p == MAP_FAILED ? vp_fail(err, -errno, "mmap failed") : 0;
}
static void fb_destroy(struct gd_bus *b) { (void)b; }

static const struct gd_bus_ops fake_ops = {
    .name = "local", .windows_by_devfn = true, .start = fb_start, .sync = fb_sync,
    .control_area = fb_control_area, .irq_fd = fb_irq_fd, .irq_ack = fb_irq_ack,
    .doorbell = fb_doorbell, .peer_vectors = fb_peer_vectors,
    .window_query = fb_window_query, .window_map = fb_window_map, .destroy = fb_destroy,
};

/* ------------------------------- fake data path ------------------------------- */

struct fake_dp {
    GString *log;                 /* "start:ID stop:ID mdel:N madd:N feat:X " */
    int fail_start;
    uint16_t stop_sets_idx;       /* when nonzero, stop writes this into every queue */
};

static int fdp_start(void *o, struct gd_device *dev, struct gd_frontend *fe, vp_error *err)
{
    struct fake_dp *dp = o;
    (void)dev;
    g_string_append_printf(dp->log, "start:%llu ", (unsigned long long)fe->device_id);
    if (dp->fail_start)
        return vp_fail(err, -EIO, "tap device missing");
    return 0;
}
static void fdp_stop(void *o, struct gd_device *dev, struct gd_frontend *fe)
{
    struct fake_dp *dp = o;
    (void)dev;
    g_string_append_printf(dp->log, "stop:%llu ", (unsigned long long)fe->device_id);
    if (dp->stop_sets_idx) {
        for (unsigned i = 0; i < fe->nqueues; i++)
            fe->queues[i].last_avail_idx = (uint16_t)(dp->stop_sets_idx + i);
    }
}
static void fdp_mdel(void *o, struct gd_device *dev, const struct vp_mt_region *r, unsigned n)
{
    struct fake_dp *dp = o;
    /* The regions must still be translatable while the hook runs. */
    uint64_t avail = 0;
    g_assert_nonnull(gd_device_translate(dev, r[0].gpa, 1, &avail));
    g_string_append_printf(dp->log, "mdel:%u ", n);
}
static void fdp_madd(void *o, struct gd_device *dev, const struct vp_mt_region *r, unsigned n)
{
    struct fake_dp *dp = o;
    (void)dev;
    (void)r;
    g_string_append_printf(dp->log, "madd:%u ", n);
}
static void fdp_feat(void *o, struct gd_device *dev, uint64_t f)
{
    struct fake_dp *dp = o;
    (void)dev;
    g_string_append_printf(dp->log, "feat:%llx ", (unsigned long long)f);
}

static const struct gd_datapath_ops fake_dp_ops = {
    .frontend_start = fdp_start, .frontend_stop = fdp_stop, .memory_del = fdp_mdel,
    .memory_add = fdp_madd, .features = fdp_feat,
};

/* ---------------------------------- fixture ---------------------------------- */

#define WIN_SIZE (2ULL << 20)

struct fx {
    int fds_before;
    struct gd_loop *loop;
    struct gd_cp *cp;
    struct fake_bus bus;
    struct fk_dev dev[2];
    struct fake_dp dp;
    uint8_t *winmap[FB_MAX_WIN];  /* the test's own view of each window */
};

static void fx_plug_window(struct fx *f, unsigned i, uint8_t devfn, uint64_t size)
{
    struct fb_win *w = &f->bus.win[i];
    w->fd = vp_test_memfd("win", size, TRUE);
    w->devfn = devfn;
    w->size = size;
    w->plugged = true;
    f->winmap[i] = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, w->fd, 0);
    g_assert_true(f->winmap[i] != MAP_FAILED);
}

static void fx_unplug_window(struct fx *f, unsigned i)
{
    struct fb_win *w = &f->bus.win[i];
    if (!w->plugged)
        return;
    w->plugged = false;
    munmap(f->winmap[i], w->size);
    f->winmap[i] = NULL;
    vp_close_fd(&w->fd);
}

static uint8_t *fx_area(void)
{
    void *p = mmap(NULL, VP_CA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    g_assert_true(p != MAP_FAILED);
    return p;
}

/* A fixture with slot 0's control area prepared (one 2 MiB window, devfn 0x10, at
 * BAR offset 0, plugged), not yet plugged into the control plane. */
static void fx_init(struct fx *f, bool with_dp)
{
    memset(f, 0, sizeof(*f));
    gd_log_set_level(g_test_verbose() ? GD_LOG_DEBUG : GD_LOG_ERROR);
    f->fds_before = vp_count_open_fds();
    f->loop = gd_loop_new();
    struct gd_cp_config cfg = { .window_wait_ns = 200 * 1000 * 1000ULL };
    f->cp = gd_cp_new(f->loop, &cfg);
    f->bus.base = (struct gd_bus){ .ops = &fake_ops, .loop = f->loop, .ev = &gd_cp_bus_events,
                                   .ev_opaque = f->cp };
    gd_cp_set_bus(f->cp, &f->bus.base);
    f->dp.log = g_string_new("");
    if (with_dp)
        gd_cp_set_datapath(f->cp, &fake_dp_ops, &f->dp);
    for (unsigned s = 0; s < 2; s++) {
        f->dev[s].ca = f->bus.ca[s] = fx_area();
        f->dev[s].size = VP_CA_SIZE;
        fk_write_header(f->dev[s].ca, FK_BAR_SIZE);
        fk_set_window(f->dev[s].ca, 0, 0x10, 0, WIN_SIZE);
        fk_publish_windows(f->dev[s].ca, 1);
    }
    fx_plug_window(f, 0, 0x10, WIN_SIZE);
}

static struct gd_device *fx_plug(struct fx *f, unsigned slot)
{
    gd_cp_bus_events.control_plugged(f->cp, slot);
    struct gd_device *d = gd_cp_device(f->cp, slot);
    g_assert_nonnull(d);
    if (!d->broken)
        fk_attach(&f->dev[slot]);
    return d;
}

static void fx_fini(struct fx *f)
{
    gd_cp_free(f->cp);
    for (unsigned i = 0; i < FB_MAX_WIN; i++)
        fx_unplug_window(f, i);
    for (unsigned s = 0; s < 2; s++)
        munmap(f->dev[s].ca, VP_CA_SIZE);
    gd_loop_free(f->loop);
    g_string_free(f->dp.log, TRUE);
    vp_assert_fds(f->fds_before);
}

/* Send @m to slot @s, service, and return its ACK (asserting the seq and type). */
static void fx_roundtrip(struct fx *f, unsigned s, struct vp_cq_msg *m, struct vp_cq_msg *ack)
{
    uint64_t seq = fk_send(&f->dev[s], m);
    gd_device_service(gd_cp_device(f->cp, s));
    g_assert_cmpint(fk_recv_ack(&f->dev[s], ack), ==, 1);
    g_assert_cmpuint(ack->seq, ==, seq);
    g_assert_cmpuint(ack->type, ==, m->type + 1u);
}

static bool fx_rang(struct fx *f, unsigned slot, uint16_t peer, uint16_t vector)
{
    for (unsigned i = 0; i < f->bus.nbells; i++) {
        if (f->bus.bells[i].slot == slot && f->bus.bells[i].peer == peer &&
            f->bus.bells[i].vector == vector)
            return true;
    }
    return false;
}

/* ----------------------------------- tests ----------------------------------- */

static void test_handshake(void)
{
    struct fx f;
    fx_init(&f, false);
    struct gd_device *d = fx_plug(&f, 0);
    g_assert_false(d->broken);
    g_assert_cmpuint(fk_status(f.dev[0].ca), ==,
                     VP_STATUS_ACKNOWLEDGE | VP_STATUS_DRIVER | VP_STATUS_FEATURES_OK |
                         VP_STATUS_DRIVER_OK);
    g_assert_cmpuint(vp_get_le64(f.dev[0].ca + VP_CA_OFF_DRIVER_FEATURES), ==, 0);
    /* Doorbell id 0 vector 0 after DRIVER_OK. */
    g_assert_true(fx_rang(&f, 0, VP_ID_SERVER, VP_VEC_RECEIVEQ_KICK));
    /* VP_CA_QUEUE_NUM writable buffers on the transmitq, nothing on the receiveq. */
    g_assert_cmpuint(vp_get_le16(f.dev[0].ca + FK_TX_AVAIL + 2), ==, VP_CA_QUEUE_NUM);
    g_assert_cmpuint(vp_get_le16(f.dev[0].ca + FK_RX_AVAIL + 2), ==, 0);
    /* Distinct buffers, each inside the pool. */
    uint64_t seen[VP_CA_QUEUE_NUM];
    for (unsigned i = 0; i < VP_CA_QUEUE_NUM; i++) {
        struct vp_vring_seg seg[2];
        unsigned n;
        uint16_t head;
        g_assert_cmpint(vp_vring_dev_pop(&f.dev[0].tx, seg, 2, &n, &head), ==, 1);
        g_assert_true(seg[0].write);
        seen[i] = seg[0].addr;
        for (unsigned j = 0; j < i; j++)
            g_assert_cmpuint(seen[j], !=, seg[0].addr);
    }
    /* The window is mapped at its BAR offset: bytes written by the peer show. */
    g_assert_cmpuint(d->nwin, ==, 1);
    g_assert_true(d->win[0].mapped);
    memcpy(f.winmap[0] + 4096, "peer bytes", 10);
    g_assert_cmpmem(d->bar + 4096, 10, "peer bytes", 10);
    fx_fini(&f);
}

static void test_features(void)
{
    struct fx f;
    fx_init(&f, true);
    fx_plug(&f, 0);
    struct vp_cq_msg m, ack;
    fk_feature_msg(&m, ~0ULL);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(ack.u.ack.features, ==, VP_NET_FEATURES);
    /* Never more than offered. */
    fk_feature_msg(&m, 1ULL << VP_VIRTIO_F_VERSION_1 | 1ULL << 3);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.features, ==, 1ULL << VP_VIRTIO_F_VERSION_1);
    g_assert_cmpuint(gd_device_features(gd_cp_device(f.cp, 0)), ==, 1ULL << VP_VIRTIO_F_VERSION_1);
    g_assert_nonnull(strstr(f.dp.log->str, "feat:100000000 "));
    fx_fini(&f);
}

static void test_memory(void)
{
    struct fx f;
    fx_init(&f, true);
    struct gd_device *d = fx_plug(&f, 0);
    struct vp_cq_msg m, ack;

    /* A region inside the mapped window. */
    fk_mem_msg(&m, VP_OP_ADD, 0x100000, 1 << 20, 0x80000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(d->mt.n, ==, 1);
    memcpy(f.winmap[0] + 0x80000 + 0x10, "xgpa", 4);
    uint64_t avail = 0;
    uint8_t *p = gd_device_translate(d, 0x100010, 1 << 20, &avail);
    g_assert_nonnull(p);
    g_assert_cmpmem(p, 4, "xgpa", 4);
    g_assert_cmpuint(avail, ==, (1 << 20) - 0x10); /* clamped to the region */
    g_assert_null(gd_device_translate(d, 0x100000 + (1 << 20), 1, &avail));
    g_assert_cmpuint(avail, ==, 0);

    /* The same region again: idempotent. */
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(d->mt.n, ==, 1);

    /* Outside every window. */
    fk_mem_msg(&m, VP_OP_ADD, 0x10000000, 4096, 4ULL << 20);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "not inside any window"));

    /* Crossing the window's end. */
    fk_mem_msg(&m, VP_OP_ADD, 0x10000000, 2 << 20, 1 << 20);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "crosses the end of window devfn 0x10"));

    /* Overlapping a known region. */
    fk_mem_msg(&m, VP_OP_ADD, 0x180000, 4096, 0x1000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "region 0 [0x180000, +0x1000) overlaps existing "
                                              "region 0 [0x100000, +0x100000)"));

    /* Wrapping / empty. */
    fk_mem_msg(&m, VP_OP_ADD, UINT64_MAX - 10, 4096, 0);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "region 0: guest-physical address "
                                              "0xfffffffffffffff5 + size 0x1000 overflows"));

    /* DEL of an unknown region. */
    fk_mem_msg(&m, VP_OP_DEL, 0x900000, 4096, 0);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "region gpa 0x900000 size 0x1000 is not in the "
                                              "memory table"));
    g_assert_cmpuint(d->mt.n, ==, 1);

    /* DEL of the known one: the data path hears first, then it is gone. */
    fk_mem_msg(&m, VP_OP_DEL, 0x100000, 1 << 20, 0x80000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_DONE);
    g_assert_cmpuint(d->mt.n, ==, 0);
    g_assert_null(gd_device_translate(d, 0x100010, 1, &avail));
    g_assert_cmpstr(f.dp.log->str, ==, "madd:1 mdel:1 ");
    g_assert_false(d->broken);
    g_assert_cmpuint(d->acks_sent, ==, 8);
    fx_fini(&f);
}

static void add_memory(struct fx *f, unsigned s)
{
    struct vp_cq_msg m, ack;
    fk_mem_msg(&m, VP_OP_ADD, 0x100000, 1 << 20, 0);
    fx_roundtrip(f, s, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
}

static void test_frontends(void)
{
    struct fx f;
    fx_init(&f, false);
    struct gd_device *d = fx_plug(&f, 0);
    add_memory(&f, 0);
    struct vp_cq_msg m, ack;

    /* Only NET is supported. */
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_BLK, 7, 1, 0x100000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_cmpstr(ack.u.ack.reason, ==, "device type blk not supported by vhost-pci-guestd");
    g_assert_cmpuint(ack.device_type, ==, VP_DEV_BLK);
    g_assert_cmpuint(ack.device_id, ==, 7);

    /* Rings outside the memory table. */
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_NET, 1, 2, 0x1fc000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "virtqueue 1: descriptor table at gpa 0x200000 "
                                              "(4096 bytes) is not inside one memory region"));

    /* Misaligned ring. */
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_NET, 1, 1, 0x100000);
    m.u.dev.virtqs[0].used += 2;
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "virtqueue 0: used address 0x102002 not aligned "
                                              "to 4 bytes"));

    /* A good NET frontend with two queues. */
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_NET, 1, 2, 0x100000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(d->nfe, ==, 1);
    struct gd_frontend *fe = gd_device_frontend(d, VP_DEV_NET, 1);
    g_assert_nonnull(fe);
    g_assert_cmpuint(fe->nqueues, ==, 2);
    g_assert_cmpuint(fe->queues[1].last_avail_idx, ==, 6);
    g_assert_cmpuint(fe->queues[1].call_vector, ==, 1);

    /* DEL of an unknown frontend. */
    fk_dev_msg(&m, VP_OP_DEL, VP_DEV_NET, 99, 0, 0);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "no net frontend with device_id 99"));

    /* DEL of the known one: last_avail_idx as added (no data path). */
    fk_dev_msg(&m, VP_OP_DEL, VP_DEV_NET, 1, 0, 0);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_DONE);
    g_assert_cmpuint(ack.u.ack.npos, ==, 2);
    g_assert_cmpuint(ack.u.ack.pos[0].index, ==, 0);
    g_assert_cmpuint(ack.u.ack.pos[0].last_avail_idx, ==, 5);
    g_assert_cmpuint(ack.u.ack.pos[1].index, ==, 1);
    g_assert_cmpuint(ack.u.ack.pos[1].last_avail_idx, ==, 6);
    g_assert_cmpuint(d->nfe, ==, 0);
    g_assert_false(d->broken);
    fx_fini(&f);
}

static void test_datapath_hooks(void)
{
    struct fx f;
    fx_init(&f, true);
    struct gd_device *d = fx_plug(&f, 0);
    add_memory(&f, 0);
    struct vp_cq_msg m, ack;

    /* A data path that refuses: ADD_FAIL with its reason, nothing listed. */
    f.dp.fail_start = 1;
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_NET, 3, 2, 0x100000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "tap device missing"));
    g_assert_cmpuint(d->nfe, ==, 0);
    f.dp.fail_start = 0;

    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    /* Re-ADD (info changed, spec 1.6.1.1): stop, then start. */
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(d->nfe, ==, 1);

    /* DEL: the data path stops the queues and reports where they are. */
    f.dp.stop_sets_idx = 1000;
    fk_dev_msg(&m, VP_OP_DEL, VP_DEV_NET, 3, 0, 0);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_DONE);
    g_assert_cmpuint(ack.u.ack.npos, ==, 2);
    g_assert_cmpuint(ack.u.ack.pos[0].last_avail_idx, ==, 1000);
    g_assert_cmpuint(ack.u.ack.pos[1].last_avail_idx, ==, 1001);
    g_assert_cmpstr(f.dp.log->str, ==, "madd:1 start:3 start:3 stop:3 start:3 stop:3 ");

    /* Teardown: frontends stop before memory goes. */
    fx_roundtrip(&f, 0, &m, &ack); /* (DEL again: DEL_FAIL, no hook) */
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_FAIL);
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_NET, 4, 1, 0x100000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_string_truncate(f.dp.log, 0);
    gd_cp_bus_events.control_unplug(f.cp, 0);
    g_assert_null(gd_cp_device(f.cp, 0));
    g_assert_cmpstr(f.dp.log->str, ==, "stop:4 mdel:1 ");
    fx_fini(&f);
}

static void test_malformed(void)
{
    struct fx f;
    fx_init(&f, true);
    struct gd_device *d0 = fx_plug(&f, 0);
    struct gd_device *d1 = fx_plug(&f, 1);
    add_memory(&f, 0);
    struct vp_cq_msg m, ack;
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_NET, 1, 1, 0x100000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_string_truncate(f.dp.log, 0);

    /* msg_len that does not match the bytes. */
    uint8_t buf[64];
    fk_feature_msg(&m, 1);
    m.version = VP_MSG_VERSION;
    m.seq = 77;
    int len = vp_cq_encode(&m, buf, sizeof(buf));
    g_assert_cmpint(len, >, 0);
    vp_put_le32(buf + 4, 9);
    unsigned bells = f.bus.nbells;
    fk_send_raw(&f.dev[0], buf, (size_t)len);
    gd_device_service(d0);
    g_assert_true(d0->broken);
    g_assert_nonnull(strstr(d0->reason, "malformed controlq message"));
    g_assert_nonnull(strstr(d0->reason, "msg_len"));
    g_assert_true(fk_status(f.dev[0].ca) & VP_STATUS_NEEDS_RESET);
    g_assert_cmpint(fk_recv_ack(&f.dev[0], &ack), ==, 0);   /* no ACK */
    g_assert_cmpuint(f.bus.nbells, >, bells);                /* server told to look */
    g_assert_cmpstr(f.dp.log->str, ==, "stop:1 ");            /* its frontend stopped */
    /* Not served any more. */
    fk_feature_msg(&m, 1);
    fk_send(&f.dev[0], &m);
    gd_device_service(d0);
    g_assert_cmpint(fk_recv_ack(&f.dev[0], &ack), ==, 0);

    /* The other device carries on. */
    fk_feature_msg(&m, ~0ULL);
    fx_roundtrip(&f, 1, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_false(d1->broken);
    fx_fini(&f);
}

static void test_unexpected_ack_type(void)
{
    struct fx f;
    fx_init(&f, false);
    struct gd_device *d = fx_plug(&f, 0);
    struct vp_cq_msg req, m;
    fk_feature_msg(&req, 1);
    vp_cq_make_ack(&m, &req, VP_ACK_ADD_DONE, "hello");
    m.type = VP_MSG_MEMORY_INFO_ACK;
    fk_send(&f.dev[0], &m);
    gd_device_service(d);
    g_assert_true(d->broken);
    g_assert_nonnull(strstr(d->reason, "unexpected MEMORY_INFO_ACK"));
    g_assert_true(fk_status(f.dev[0].ca) & VP_STATUS_NEEDS_RESET);
    fx_fini(&f);
}

static void test_broken_ring(void)
{
    struct fx f;
    fx_init(&f, false);
    struct gd_device *d = fx_plug(&f, 0);
    /* The device publishes a used index 1000 entries ahead. */
    vp_put_le16(f.dev[0].ca + FK_TX_USED + 2, 1000);
    gd_device_service(d);
    g_assert_true(d->broken);
    g_assert_nonnull(strstr(d->reason, "control transmitq broken"));
    g_assert_true(fk_status(f.dev[0].ca) & VP_STATUS_NEEDS_RESET);
    fx_fini(&f);

    /* A used length over the slot is clamped, then fails to decode. */
    fx_init(&f, false);
    d = fx_plug(&f, 0);
    struct vp_cq_msg m;
    uint8_t buf[VP_CA_BUF_SLOT];
    fk_feature_msg(&m, 1);
    m.version = VP_MSG_VERSION;
    int len = vp_cq_encode(&m, buf, sizeof(buf));
    fk_send_raw_len(&f.dev[0], buf, (size_t)len, 1u << 30);
    gd_device_service(d);
    g_assert_true(d->broken);
    g_assert_nonnull(strstr(d->reason, "malformed controlq message (4096 bytes)"));
    fx_fini(&f);
}

static void test_bad_header(void)
{
    struct fx f;
    fx_init(&f, false);
    /* Transmitq used ring over the header. */
    fk_set_queue(f.dev[0].ca, VP_CQ_TRANSMITQ, FK_QNUM, FK_TX_DESC, FK_TX_AVAIL, 0x100);
    struct gd_device *d = fx_plug(&f, 0);
    g_assert_true(d->broken);
    g_assert_nonnull(strstr(d->reason, "control transmitq used ring overlaps the header"));
    g_assert_true(fk_status(f.dev[0].ca) & VP_STATUS_FAILED);
    g_assert_false(fk_status(f.dev[0].ca) & VP_STATUS_DRIVER_OK);
    /* No magic: not touched at all. */
    memset(f.dev[1].ca, 0, 8);
    d = fx_plug(&f, 1);
    g_assert_true(d->broken);
    g_assert_nonnull(strstr(d->reason, "magic"));
    g_assert_cmpuint(fk_status(f.dev[1].ca), ==, 0);
    fx_fini(&f);
}

/* gd_ca_read_layout / gd_ca_read_windows on their own. */
static void test_layout_checks(void)
{
    uint8_t *ca = fx_area();
    struct gd_ca_layout l;
    vp_error err = { { 0 } };

#define BAD_LAYOUT(stmt, text)                                                     \
    do {                                                                           \
        fk_write_header(ca, FK_BAR_SIZE);                                          \
        stmt;                                                                      \
        memset(&err, 0, sizeof(err));                                              \
        g_assert_cmpint(gd_ca_read_layout(ca, VP_CA_SIZE, &l, &err), ==, -EPROTO); \
        if (!strstr(err.msg, text))                                                \
            g_error("reason \"%s\" lacks \"%s\"", err.msg, text);                  \
    } while (0)

    fk_write_header(ca, FK_BAR_SIZE);
    g_assert_cmpint(gd_ca_read_layout(ca, VP_CA_SIZE, &l, &err), ==, 0);
    g_assert_cmpuint(l.ntx, ==, VP_CA_QUEUE_NUM);
    g_assert_cmpuint(l.nack, ==, FK_QNUM);
    g_assert_cmpuint(l.bar_size, ==, FK_BAR_SIZE);

    BAD_LAYOUT(ca[3] = 'X', "magic");
    BAD_LAYOUT(vp_put_le32(ca + VP_CA_OFF_VERSION, 2), "version 2");
    BAD_LAYOUT(vp_put_le64(ca + VP_CA_OFF_BAR_SIZE, 3 << 20), "bar_size");
    BAD_LAYOUT(vp_put_le64(ca + VP_CA_OFF_BAR_SIZE, 1 << 20), "bar_size");
    BAD_LAYOUT(vp_put_le32(ca + VP_CA_OFF_NWINDOWS, 33), "nwindows 33");
    BAD_LAYOUT(fk_set_queue(ca, 0, 48, FK_RX_DESC, FK_RX_AVAIL, FK_RX_USED), "power of two");
    BAD_LAYOUT(fk_set_queue(ca, 0, 0, FK_RX_DESC, FK_RX_AVAIL, FK_RX_USED), "power of two");
    BAD_LAYOUT(fk_set_queue(ca, 0, 64, FK_RX_DESC + 8, FK_RX_AVAIL, FK_RX_USED), "misaligned");
    BAD_LAYOUT(fk_set_queue(ca, 1, 64, FK_TX_DESC, FK_TX_AVAIL, FK_TX_USED + 2), "misaligned");
    BAD_LAYOUT(fk_set_queue(ca, 1, 64, VP_CA_SIZE - 16, FK_TX_AVAIL, FK_TX_USED), "outside");
    BAD_LAYOUT(fk_set_queue(ca, 1, 64, UINT64_MAX - 15, FK_TX_AVAIL, FK_TX_USED), "outside");
    BAD_LAYOUT(fk_set_queue(ca, 1, 64, FK_RX_DESC, FK_TX_AVAIL, FK_TX_USED),
               "transmitq descriptor table overlaps the receiveq descriptor table");
    BAD_LAYOUT(vp_put_le64(ca + VP_CA_OFF_BUF_OFF, 0x2000), "buffer pool overlaps");
    BAD_LAYOUT(vp_put_le64(ca + VP_CA_OFF_BUF_SIZE, VP_CA_SIZE), "buffer pool");
    BAD_LAYOUT(vp_put_le64(ca + VP_CA_OFF_BUF_SIZE, 64 * 4096), "holds 64 slots");
    memset(&err, 0, sizeof(err));
    g_assert_cmpint(gd_ca_read_layout(ca, 512, &l, &err), ==, -EPROTO);
    g_assert_nonnull(strstr(err.msg, "smaller than its header"));

    /* Window table. */
    struct gd_ca_windows t;
#define BAD_WINDOWS(stmt, text)                                                    \
    do {                                                                           \
        fk_write_header(ca, FK_BAR_SIZE);                                          \
        fk_set_window(ca, 0, 0x10, 0, 2 << 20);                                    \
        fk_set_window(ca, 1, 0x18, 4 << 20, 4 << 20);                              \
        stmt;                                                                      \
        fk_publish_windows(ca, 2);                                                 \
        memset(&err, 0, sizeof(err));                                              \
        g_assert_cmpint(gd_ca_read_windows(ca, FK_BAR_SIZE, &t, &err), ==, -EPROTO); \
        if (!strstr(err.msg, text))                                                \
            g_error("reason \"%s\" lacks \"%s\"", err.msg, text);                  \
    } while (0)
    fk_write_header(ca, FK_BAR_SIZE);
    fk_set_window(ca, 0, 0x10, 0, 2 << 20);
    fk_set_window(ca, 1, 0x18, 4 << 20, 4 << 20);
    fk_publish_windows(ca, 2);
    g_assert_cmpint(gd_ca_read_windows(ca, FK_BAR_SIZE, &t, &err), ==, 0);
    g_assert_cmpuint(t.n, ==, 2);
    g_assert_cmpuint(t.generation, ==, 2);
    g_assert_cmpuint(t.w[1].bar_offset, ==, 4 << 20);
    BAD_WINDOWS(fk_set_window(ca, 1, 0x18, 4 << 20, 3 << 20), "not a power of two");
    BAD_WINDOWS(fk_set_window(ca, 1, 0x18, 2 << 20, 4 << 20), "not a multiple of its size");
    BAD_WINDOWS(fk_set_window(ca, 1, 0x18, 8 << 20, 8 << 20), "outside");
    BAD_WINDOWS(fk_set_window(ca, 1, 0x10, 4 << 20, 4 << 20), "name the same function");
    BAD_WINDOWS(fk_set_window(ca, 1, 0x18, 0, 4 << 20), "overlap");
    BAD_WINDOWS(fk_set_window(ca, 1, 0x18, 0, 1024), "not a power of two >= 4096");
    munmap(ca, VP_CA_SIZE);
}

/* guestd's use of the memory table (protocol/vp_memtable) through MEMORY_INFO: a
 * message whose regions overlap each other, or one that would take the table past
 * VP_MAX_REGIONS, is refused whole with the table unchanged; a DEL naming a region
 * twice is refused; several regions in one message are added and deleted together,
 * each translating to its own window offset. */
static void test_memtable(void)
{
    struct fx f;
    fx_init(&f, true);
    struct gd_device *d = fx_plug(&f, 0);
    struct vp_cq_msg m, ack;
    fk_mem_msg(&m, VP_OP_ADD, 0x10000, 0x1000, 0);
    m.u.mem.nregions = 2;
    m.u.mem.regions[1] = (struct vp_cq_region){ 0x10800, 0x1000, 0x1000 };
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "region 1 [0x10800, +0x1000) overlaps region 0"));
    g_assert_cmpuint(d->mt.n, ==, 0);
    /* Two good ones at once. */
    m.u.mem.regions[1] = (struct vp_cq_region){ 0x30000, 0x1000, 0x1000 };
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(d->mt.n, ==, 2);
    uint64_t avail = 0;
    g_assert_true(gd_device_translate(d, 0x30800, 0x2000, &avail) == d->bar + 0x1800);
    g_assert_cmpuint(avail, ==, 0x800); /* clamped to the region */
    g_assert_null(gd_device_translate(d, 0x20000, 1, &avail));
    /* A DEL naming a region twice: refused, nothing removed. */
    struct vp_cq_msg del = m;
    del.u.mem.op = VP_OP_DEL;
    del.u.mem.regions[1] = del.u.mem.regions[0];
    fx_roundtrip(&f, 0, &del, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "region gpa 0x10000 is listed twice"));
    g_assert_cmpuint(d->mt.n, ==, 2);
    /* Fill the table to its limit, then one more is refused. */
    for (unsigned i = 2; i < VP_MAX_REGIONS; i++) {
        fk_mem_msg(&m, VP_OP_ADD, 0x100000ULL * i, 0x1000, 0x1000ULL * i);
        fx_roundtrip(&f, 0, &m, &ack);
        g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    }
    fk_mem_msg(&m, VP_OP_ADD, 0x100000ULL * 100, 0x1000, 0x2000);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "would exceed the limit of 64"));
    g_assert_cmpuint(d->mt.n, ==, VP_MAX_REGIONS);
    /* Both first ones deleted together. */
    del.u.mem.regions[1] = (struct vp_cq_region){ 0x30000, 0x1000, 0x1000 };
    fx_roundtrip(&f, 0, &del, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_DEL_DONE);
    g_assert_cmpuint(d->mt.n, ==, VP_MAX_REGIONS - 2);
    g_assert_null(gd_device_translate(d, 0x30800, 1, &avail));
    fx_fini(&f);
}

/* Issue 13 item 3: the pieces of a file whose size is not a power of two are windows
 * back to back in the BAR; a region may span them (one contiguous mapping), but not
 * run into a gap; unplugging either piece drops the region. */
static void test_region_spans_windows(void)
{
    struct fx f;
    fx_init(&f, true);
    struct gd_device *d = fx_plug(&f, 0);
    struct vp_cq_msg m, ack;

    /* Window 0: 2 MiB at 0 (the fixture's); window 1: 1 MiB at 2 MiB, right after it. */
    fx_plug_window(&f, 1, 0x18, 1 << 20);
    fk_set_window(f.dev[0].ca, 1, 0x18, 2 << 20, 1 << 20);
    fk_publish_windows(f.dev[0].ca, 2);
    /* A region of 3 MiB at BAR offset 0: 2 MiB in window 0, 1 MiB in window 1. */
    fk_mem_msg(&m, VP_OP_ADD, 0x40000000, 3 << 20, 0);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(d->mt.n, ==, 1);
    memcpy(f.winmap[0] + (2 << 20) - 2, "ab", 2);
    memcpy(f.winmap[1], "cd", 2);
    uint64_t avail = 0;
    uint8_t *p = gd_device_translate(d, 0x40000000 + (2 << 20) - 2, 4, &avail);
    g_assert_nonnull(p);
    g_assert_cmpuint(avail, ==, 4);
    g_assert_cmpmem(p, 4, "abcd", 4);  /* across the boundary of the two pieces */

    /* Running on past window 1's end into nothing: refused. */
    fk_mem_msg(&m, VP_OP_ADD, 0x50000000, 2 << 20, 2 << 20);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "crosses the end of window devfn 0x18"));

    /* Unplugging the second piece drops the region that starts in the first. */
    g_string_truncate(f.dp.log, 0);
    gd_cp_bus_events.window_unplug(f.cp, 0, (struct gd_win_id){ .devfn = 0x18 });
    g_assert_cmpuint(d->mt.n, ==, 0);
    g_assert_cmpstr(f.dp.log->str, ==, "mdel:1 ");
    g_assert_null(gd_device_translate(d, 0x40000000, 1, &avail));
    fx_unplug_window(&f, 1);
    fx_fini(&f);
}

static void test_window_changes(void)
{
    struct fx f;
    fx_init(&f, true);
    struct gd_device *d = fx_plug(&f, 0);
    struct vp_cq_msg m, ack;

    /* A second window, listed and plugged: mapped after the generation bump. */
    fx_plug_window(&f, 1, 0x18, 4 << 20);
    fk_set_window(f.dev[0].ca, 1, 0x18, 4 << 20, 4 << 20);
    fk_publish_windows(f.dev[0].ca, 2);
    fk_mem_msg(&m, VP_OP_ADD, 0x40000000, 4 << 20, 4 << 20);
    fx_roundtrip(&f, 0, &m, &ack);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpuint(d->nwin, ==, 2);
    g_assert_true(d->win[1].mapped);
    memcpy(f.winmap[1] + 100, "w2", 2);
    uint64_t avail;
    uint8_t *p = gd_device_translate(d, 0x40000000 + 100, 2, &avail);
    g_assert_nonnull(p);
    g_assert_cmpmem(p, 2, "w2", 2);

    /* The window leaves the table: its region is dropped (data path first), unmapped. */
    g_string_truncate(f.dp.log, 0);
    fk_publish_windows(f.dev[0].ca, 1);
    gd_device_service(d);
    g_assert_cmpuint(d->nwin, ==, 1);
    g_assert_cmpuint(d->mt.n, ==, 0);
    g_assert_cmpstr(f.dp.log->str, ==, "mdel:1 ");

    /* Listed but not plugged: the message waits, then succeeds once plugged. */
    fk_set_window(f.dev[0].ca, 1, 0x20, 4 << 20, 2 << 20);
    fk_publish_windows(f.dev[0].ca, 2);
    fk_mem_msg(&m, VP_OP_ADD, 0x50000000, 2 << 20, 4 << 20);
    uint64_t seq = fk_send(&f.dev[0], &m);
    gd_device_service(d);
    g_assert_true(d->stalled);
    g_assert_cmpint(fk_recv_ack(&f.dev[0], &ack), ==, 0);
    fx_plug_window(&f, 2, 0x20, 2 << 20);
    gd_cp_bus_events.window_plugged(f.cp, 0, (struct gd_win_id){ .devfn = 0x20 });
    g_assert_true(d->win[1].mapped);
    /* The retry runs from the loop (timer scheduled by the plug). */
    uint64_t deadline = gd_now_ns() + 2000000000ULL;
    while (fk_recv_ack(&f.dev[0], &ack) == 0) {
        g_assert_cmpuint(gd_now_ns(), <, deadline);
        gd_loop_iterate(f.loop, 10 * 1000 * 1000);
    }
    g_assert_cmpuint(ack.seq, ==, seq);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_false(d->stalled);

    /* Window unplug (bus event): region dropped, window unmapped. */
    g_string_truncate(f.dp.log, 0);
    gd_cp_bus_events.window_unplug(f.cp, 0, (struct gd_win_id){ .devfn = 0x20 });
    g_assert_false(d->win[1].mapped);
    g_assert_cmpuint(d->mt.n, ==, 0);
    g_assert_cmpstr(f.dp.log->str, ==, "mdel:1 ");
    fx_unplug_window(&f, 2);

    /* Listed, never plugged: fails with a reason after window_wait (200 ms here). */
    fk_mem_msg(&m, VP_OP_ADD, 0x60000000, 2 << 20, 4 << 20);
    seq = fk_send(&f.dev[0], &m);
    gd_device_service(d);
    deadline = gd_now_ns() + 3000000000ULL;
    while (fk_recv_ack(&f.dev[0], &ack) == 0) {
        g_assert_cmpuint(gd_now_ns(), <, deadline);
        gd_loop_iterate(f.loop, 10 * 1000 * 1000);
    }
    g_assert_cmpuint(ack.seq, ==, seq);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(ack.u.ack.reason, "timed out"));
    g_assert_nonnull(strstr(ack.u.ack.reason, "window devfn 0x20 is listed but not plugged yet"));
    g_assert_cmpuint(f.bus.syncs, >, 0); /* retries asked the bus */

    /* A bad window table breaks the device. */
    fk_set_window(f.dev[0].ca, 1, 0x20, 3 << 20, 2 << 20);
    fk_publish_windows(f.dev[0].ca, 2);
    gd_device_service(d);
    g_assert_true(d->broken);
    g_assert_nonnull(strstr(d->reason, "bad window table"));
    fx_fini(&f);
}

static void test_ack_backpressure(void)
{
    struct fx f;
    fx_init(&f, false);
    struct gd_device *d = fx_plug(&f, 0);
    struct vp_cq_msg m, ack;
    /* 64 messages, no ACK consumed: all 64 ACK buffers used. */
    for (unsigned i = 0; i < 64; i++) {
        fk_feature_msg(&m, i);
        fk_send(&f.dev[0], &m);
    }
    gd_device_service(d);
    g_assert_cmpuint(d->acks_sent, ==, 64);
    /* 6 more: they wait for ACK space (nothing lost, nothing broken). */
    for (unsigned i = 0; i < 6; i++) {
        fk_feature_msg(&m, i);
        fk_send(&f.dev[0], &m);
    }
    gd_device_service(d);
    g_assert_cmpuint(d->acks_sent, ==, 64);
    g_assert_false(d->broken);
    unsigned n = 0;
    while (fk_recv_ack(&f.dev[0], &ack))
        g_assert_cmpuint(ack.seq, ==, ++n);
    g_assert_cmpuint(n, ==, 64);
    gd_device_service(d);
    while (fk_recv_ack(&f.dev[0], &ack))
        g_assert_cmpuint(ack.seq, ==, ++n);
    g_assert_cmpuint(n, ==, 70);
    fx_fini(&f);
}

/* ------------------------------- status JSON ------------------------------- */

static JsonNode *parse_json(const char *text)
{
    JsonParser *p = json_parser_new();
    GError *e = NULL;
    if (!json_parser_load_from_data(p, text, -1, &e))
        g_error("bad JSON (%s): %s", e->message, text);
    JsonNode *root = json_node_copy(json_parser_get_root(p));
    g_object_unref(p);
    return root;
}

static void test_status_json(void)
{
    struct fx f;
    fx_init(&f, false);
    struct gd_device *d = fx_plug(&f, 0);
    add_memory(&f, 0);
    struct vp_cq_msg m, ack;
    fk_dev_msg(&m, VP_OP_ADD, VP_DEV_NET, 9, 2, 0x100000);
    fx_roundtrip(&f, 0, &m, &ack);
    fx_plug(&f, 1);
    gd_device_break(gd_cp_device(f.cp, 1), "odd \"reason\"\n\\ with\x01 bytes\xff");

    struct gd_json j;
    gd_json_init(&j);
    gd_status_render(f.cp, &j);
    g_assert_false(j.oom);
    JsonNode *root = parse_json(j.buf);
    JsonObject *o = json_node_get_object(root);
    g_assert_cmpstr(json_object_get_string_member(o, "bus"), ==, "local");
    JsonArray *devs = json_object_get_array_member(o, "devices");
    g_assert_cmpuint(json_array_get_length(devs), ==, 2);
    JsonObject *d0 = json_array_get_object_element(devs, 0);
    g_assert_cmpint(json_object_get_int_member(d0, "slot"), ==, 0);
    g_assert_cmpint(json_object_get_int_member(d0, "status"), ==, 15);
    g_assert_cmpint(json_object_get_int_member(d0, "bar_size"), ==, (gint64)FK_BAR_SIZE);
    g_assert_cmpint(json_object_get_int_member(d0, "generation"), ==, 2);
    g_assert_false(json_object_get_boolean_member(d0, "broken"));
    g_assert_cmpstr(json_object_get_string_member(d0, "reason"), ==, "");
    g_assert_cmpint(json_object_get_int_member(d0, "acks_sent"), ==, 2);
    g_assert_cmpint(json_object_get_int_member(d0, "messages"), ==, 2);
    JsonObject *w = json_array_get_object_element(json_object_get_array_member(d0, "windows"), 0);
    g_assert_cmpint(json_object_get_int_member(w, "devfn"), ==, 0x10);
    g_assert_true(json_object_get_boolean_member(w, "mapped"));
    JsonObject *r = json_array_get_object_element(json_object_get_array_member(d0, "regions"), 0);
    g_assert_cmpint(json_object_get_int_member(r, "xgpa"), ==, 0x100000);
    JsonObject *fe = json_array_get_object_element(json_object_get_array_member(d0, "frontends"), 0);
    g_assert_cmpint(json_object_get_int_member(fe, "device_type"), ==, VP_DEV_NET);
    g_assert_cmpint(json_object_get_int_member(fe, "device_id"), ==, 9);
    g_assert_cmpint(json_object_get_int_member(fe, "nvirtqs"), ==, 2);
    JsonObject *q1 = json_array_get_object_element(json_object_get_array_member(fe, "queues"), 1);
    g_assert_cmpint(json_object_get_int_member(q1, "index"), ==, 1);
    g_assert_cmpint(json_object_get_int_member(q1, "num"), ==, 256);
    g_assert_cmpint(json_object_get_int_member(q1, "last_avail_idx"), ==, 6);
    g_assert_false(json_object_get_boolean_member(q1, "broken"));
    g_assert_cmpint(json_object_get_int_member(q1, "packets"), ==, 0);
    JsonObject *d1 = json_array_get_object_element(devs, 1);
    g_assert_true(json_object_get_boolean_member(d1, "broken"));
    g_assert_cmpstr(json_object_get_string_member(d1, "reason"), ==,
                    "odd \"reason\"\n\\ with\x01 bytes\xc3\xbf");
    g_assert_true(json_object_get_int_member(d1, "status") & VP_STATUS_NEEDS_RESET);
    json_node_unref(root);
    gd_json_free(&j);
    (void)d;
    fx_fini(&f);
}

static void test_status_socket(void)
{
    struct fx f;
    fx_init(&f, false);
    fx_plug(&f, 0);
    char *dir = g_dir_make_tmp("guestd-XXXXXX", NULL);
    char *path = g_build_filename(dir, "status.sock", NULL);
    vp_error err = { { 0 } };
    struct gd_status *st = gd_status_new(f.loop, f.cp, path, &err);
    g_assert_nonnull(st);

    for (int round = 0; round < 2; round++) {
        int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
        g_assert_cmpint(connect(c, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
        const char *req = round == 0 ? "status\n" : "bogus\n";
        g_assert_cmpint(write(c, req, strlen(req)), ==, (ssize_t)strlen(req));
        GString *out = g_string_new("");
        uint64_t deadline = gd_now_ns() + 3000000000ULL;
        for (;;) {
            g_assert_cmpuint(gd_now_ns(), <, deadline);
            gd_loop_iterate(f.loop, 5 * 1000 * 1000);
            char buf[4096];
            ssize_t n = recv(c, buf, sizeof(buf), MSG_DONTWAIT);
            if (n > 0)
                g_string_append_len(out, buf, n);
            else if (n == 0)
                break;
        }
        close(c);
        JsonNode *root = parse_json(out->str);
        JsonObject *o = json_node_get_object(root);
        if (round == 0)
            g_assert_cmpuint(json_array_get_length(json_object_get_array_member(o, "devices")), ==, 1);
        else
            g_assert_nonnull(strstr(json_object_get_string_member(o, "error"), "unknown request"));
        json_node_unref(root);
        g_string_free(out, TRUE);
    }
    gd_status_free(st);
    g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
    rmdir(dir);
    g_free(path);
    g_free(dir);
    fx_fini(&f);
}

/* ---------------------------------- loop ---------------------------------- */

static int poll_count;
static int poll_work_left;
static int fired;
static int test_poller(void *o)
{
    (void)o;
    poll_count++;
    return poll_work_left > 0 ? poll_work_left-- : 0;
}
static void test_timer_cb(void *o) { (*(int *)o)++; fired++; }
static void test_fd_cb(void *o, int fd, short revents)
{
    char c;
    g_assert_true(revents & POLLIN);
    g_assert_cmpint(read(fd, &c, 1), ==, 1);
    (*(int *)o)++;
}

static void test_loop(void)
{
    struct gd_loop *loop = gd_loop_new();
    int a = 0, b = 0;
    int t1 = gd_loop_add_timer(loop, 1000000, test_timer_cb, &a);
    int t2 = gd_loop_add_timer(loop, 1000000, test_timer_cb, &b);
    gd_loop_del_timer(loop, t2);
    g_assert_cmpint(t1, >, 0);
    uint64_t deadline = gd_now_ns() + 2000000000ULL;
    while (!a) {
        g_assert_cmpuint(gd_now_ns(), <, deadline);
        gd_loop_iterate(loop, -1);
    }
    g_assert_cmpint(b, ==, 0);
    /* A busy poller keeps the loop from sleeping; an idle one lets it back off. */
    poll_work_left = 100;
    int p = gd_loop_add_poller(loop, test_poller, NULL, 1000000);
    uint64_t t0 = gd_now_ns();
    while (poll_work_left > 0)
        gd_loop_iterate(loop, -1);
    g_assert_cmpuint(gd_now_ns() - t0, <, 100000000ULL); /* 100 spins, no sleeping */
    poll_count = 0;
    t0 = gd_now_ns();
    while (gd_now_ns() - t0 < 50000000ULL)
        gd_loop_iterate(loop, -1);
    /* Idle for 50 ms with a 1 ms bound: far fewer calls than spinning, but not zero. */
    g_assert_cmpint(poll_count, >, 10);
    g_assert_cmpint(poll_count, <, 5000);
    gd_loop_del_poller(loop, p);
    /* fd watch: fires on input, never after removal. */
    int sv[2];
    vp_test_socketpair(sv);
    int hits = 0;
    int w = gd_loop_add_fd(loop, sv[0], POLLIN, test_fd_cb, &hits);
    g_assert_cmpint(write(sv[1], "x", 1), ==, 1);
    deadline = gd_now_ns() + 2000000000ULL;
    while (!hits) {
        g_assert_cmpuint(gd_now_ns(), <, deadline);
        gd_loop_iterate(loop, 100 * 1000 * 1000);
    }
    gd_loop_del_fd(loop, w);
    g_assert_cmpint(write(sv[1], "y", 1), ==, 1);
    gd_loop_iterate(loop, 10 * 1000 * 1000);
    g_assert_cmpint(hits, ==, 1);
    gd_loop_free(loop);
    close(sv[0]);
    close(sv[1]);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/guestd/loop", test_loop);
    g_test_add_func("/guestd/memtable", test_memtable);
    g_test_add_func("/guestd/layout-checks", test_layout_checks);
    g_test_add_func("/guestd/handshake", test_handshake);
    g_test_add_func("/guestd/bad-header", test_bad_header);
    g_test_add_func("/guestd/features", test_features);
    g_test_add_func("/guestd/memory", test_memory);
    g_test_add_func("/guestd/frontends", test_frontends);
    g_test_add_func("/guestd/datapath-hooks", test_datapath_hooks);
    g_test_add_func("/guestd/malformed", test_malformed);
    g_test_add_func("/guestd/unexpected-ack-type", test_unexpected_ack_type);
    g_test_add_func("/guestd/broken-ring", test_broken_ring);
    g_test_add_func("/guestd/window-changes", test_window_changes);
    g_test_add_func("/guestd/region-spans-windows", test_region_spans_windows);
    g_test_add_func("/guestd/ack-backpressure", test_ack_backpressure);
    g_test_add_func("/guestd/status-json", test_status_json);
    g_test_add_func("/guestd/status-socket", test_status_socket);
    return g_test_run();
}
