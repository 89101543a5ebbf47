/*
 * test-vhost-user.c - the vhost-user backend core (client/vhost_user.c) through its
 * GLib adapter, driven by the scripted QEMU 7.2 frontend (tests/integration/
 * vu_frontend.c) in the same thread: the frontend pumps the default main context
 * while it waits for replies.
 *
 * The core reports rings one by one (vring_started, vring_changed) and when the
 * socket is drained; the fixture plays a user that considers "the device" started
 * once every ring runs and is enabled and the socket is drained (what the daemon's
 * bridge does for one queue pair), and collects that start in t->info. Memory
 * changes before that start are accepted at once (t->mem_added_early counts them)
 * unless t->verdict_early makes them go through the fixture's verdict modes.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>

#include "testutil.h"
#include "vhost_user.h"
#include "vhost_user_glib.h"
#include "vu_frontend.h"

#define MiB (1024ULL * 1024)
#define PF_DEFAULT ((1ULL << VU_PF_REPLY_ACK) | (1ULL << VU_PF_CONFIGURE_MEM_SLOTS))
#define F_PROTO (1ULL << VU_F_PROTOCOL_FEATURES)

/* Guest layout, like a pc machine: RAM 0 (4 MiB memfd) is split into low memory at
 * guest-physical 0 and "above 4G" memory at 0x100000000 (mmap offset 0x80000). */
#define LOW_SIZE 0x80000ULL
#define HIGH_GPA 0x100000000ULL
#define HIGH_OFF LOW_SIZE
#define HIGH_SIZE (4 * MiB - LOW_SIZE)
#define RAM0_GPA(off) (HIGH_GPA + (off) - HIGH_OFF) /* for offsets in the high part */

static const struct vu_fe_vring vrings[4] = {
    {256, 0x200000, 0x201000, 0x202000, 0},
    {256, 0x210000, 0x211000, 0x212000, 5},
    {128, 0x220000, 0x221000, 0x222000, 0},
    {128, 0x230000, 0x231000, 0x232000, 9},
};

/** What the fixture's "device" was started with (see the top of the file). */
struct tinfo {
    uint64_t features;
    unsigned nregions;
    struct vp_region regions[VP_MAX_REGIONS];
    unsigned nvirtqs;
    struct vp_virtq virtqs[VU_MAX_QUEUES];
};

struct t {
    int fds_before;
    struct vu_glib *g;
    struct vu_dev *dev;
    struct vu_fe *fe;
    unsigned nqueues;
    int low, high;                 /* frontend region ids */

    /* what the callbacks saw */
    int started;
    bool dev_started;              /* every ring runs and is enabled, socket drained */
    struct tinfo info;             /* the start (fds dup'ed, owned by the test) */
    struct vu_vring_info ring[VU_MAX_QUEUES]; /* as last reported (fds dup'ed) */
    int vring_started;             /* vring_started calls */
    uint64_t features;             /* features_set */
    int features_set;
    int mem_added_early;           /* memory changes before the start */
    bool verdict_early;            /* ... answered by mem_mode too */
    int mem_added, mem_removed, vring_changed;
    struct vp_region added, removed;
    struct vp_virtq changed;       /* last vring_changed (fds not kept) */
    bool changed_enabled;
    bool changed_call_matches;     /* its call fd is the frontend's current one */
    ino_t added_ino;
    int disconnected;
    char reason[256];
    bool wants_input_in_cb;

    /* behaviour */
    bool defer_features;
    uint64_t features_answer;
    bool fail_in_started;          /* vu_dev_fail() from inside started() */
    bool free_in_disconnected;     /* vu_glib_free() from inside disconnected() */
    enum { MEM_ACCEPT, MEM_REFUSE_NOW, MEM_ANSWER_INSIDE, MEM_DEFER } mem_mode;
    int mem_verdict;               /* answer to mem_added/mem_removed unless MEM_ACCEPT */
    uint64_t refuse_gpa;           /* if set: refuse only this region, accept others */
    bool refuse_adds_only;         /* ... and only its adding */
    int pending_verdict;           /* the answer reply_mem_later() gives */
    int mem_replies;               /* deferred vu_dev_reply_mem() calls made */
    int mem_reply_ret;             /* ... what the last one returned */
    int mem_region_fd;             /* fd of the region of the last deferred change */
    bool mem_verdict_fd_ok;        /* ... still open when the verdict was given */
    bool defer_vring_base;
    int vring_base_calls;
    uint32_t vring_base_index;
    uint16_t vring_base_answer[VU_MAX_QUEUES];
};

/* ---- main-loop helpers ---- */

static void pump(void *opaque)
{
    (void)opaque;
    while (g_main_context_iteration(NULL, FALSE))
        ;
}

/* Iterate the main context until @cond holds, failing after 5 s. */
#define WAIT_FOR(cond)                                                         \
    do {                                                                       \
        VP_SPIN_UNTIL(cond, 5000);                                             \
        if (!(cond))                                                           \
            g_error("timed out waiting for %s", #cond);                        \
    } while (0)

/* ---- callbacks ---- */

static int cb_get_features(struct vu_dev *dev, uint64_t *features, void *opaque);
static void cb_features_set(struct vu_dev *dev, uint64_t features, void *opaque);
static void cb_vring_started(struct vu_dev *dev, const struct vu_vring_info *info,
                             void *opaque);
static int cb_mem_added(struct vu_dev *dev, const struct vp_region *r, void *opaque);
static int cb_mem_removed(struct vu_dev *dev, const struct vp_region *r, void *opaque);
static void cb_vring_changed(struct vu_dev *dev, const struct vu_vring_info *info,
                             void *opaque);
static int cb_get_vring_base(struct vu_dev *dev, uint32_t index, uint16_t *v, void *opaque);
static void cb_drained(struct vu_dev *dev, void *opaque);
static void cb_disconnected(struct vu_dev *dev, const char *reason, void *opaque);

static const struct vu_dev_ops test_ops = {
    .get_features = cb_get_features,
    .features_set = cb_features_set,
    .vring_started = cb_vring_started,
    .mem_added = cb_mem_added,
    .mem_removed = cb_mem_removed,
    .vring_changed = cb_vring_changed,
    .get_vring_base = cb_get_vring_base,
    .drained = cb_drained,
    .disconnected = cb_disconnected,
};

static gboolean reply_features_later(gpointer p)
{
    struct t *t = p;
    g_assert_cmpint(vu_dev_reply_features(t->dev, t->features_answer), ==, 0);
    return G_SOURCE_REMOVE;
}

static int cb_get_features(struct vu_dev *dev, uint64_t *features, void *opaque)
{
    struct t *t = opaque;
    g_assert_true(dev == t->dev);
    if (t->defer_features) {
        g_timeout_add(20, reply_features_later, t);
        return VU_DEFERRED;
    }
    *features = t->features_answer;
    return 0;
}

static void info_close_fds(struct tinfo *info)
{
    for (unsigned i = 0; i < info->nregions; i++)
        vp_close_fd(&info->regions[i].fd);
    for (unsigned i = 0; i < info->nvirtqs; i++) {
        vp_close_fd(&info->virtqs[i].kick_fd);
        vp_close_fd(&info->virtqs[i].call_fd);
    }
}

static int dup_fd(int fd)
{
    if (fd < 0)
        return -1;
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    g_assert_cmpint(d, >=, 0);
    return d;
}

static void ring_close(struct vu_vring_info *r)
{
    vp_close_fd(&r->vq.kick_fd);
    vp_close_fd(&r->vq.call_fd);
}

static void ring_take(struct t *t, const struct vu_vring_info *info)
{
    struct vu_vring_info *r = &t->ring[info->vq.index];
    ring_close(r);
    *r = *info;
    r->vq.kick_fd = dup_fd(info->vq.kick_fd);
    r->vq.call_fd = dup_fd(info->vq.call_fd);
}

static void cb_features_set(struct vu_dev *dev, uint64_t features, void *opaque)
{
    (void)dev;
    struct t *t = opaque;
    t->features = features;
    t->features_set++;
}

static void cb_vring_started(struct vu_dev *dev, const struct vu_vring_info *info,
                             void *opaque)
{
    struct t *t = opaque;
    g_assert_true(vu_dev_is_started(dev));
    g_assert_true(info->running);
    g_assert_cmpuint(info->vq.index, <, t->nqueues);
    ring_take(t, info);
    t->vring_started++;
}

/* The socket is drained: the fixture's device starts when every ring runs. */
static void cb_drained(struct vu_dev *dev, void *opaque)
{
    struct t *t = opaque;
    if (t->dev_started)
        return;
    for (unsigned i = 0; i < t->nqueues; i++)
        if (!t->ring[i].running || !t->ring[i].enabled)
            return;
    info_close_fds(&t->info);
    memset(&t->info, 0, sizeof(t->info));
    t->info.features = t->features;
    struct vp_region regs[VP_MAX_REGIONS];
    t->info.nregions = vu_dev_get_regions(dev, regs, VP_MAX_REGIONS);
    for (unsigned i = 0; i < t->info.nregions; i++) {
        t->info.regions[i] = regs[i];
        t->info.regions[i].fd = dup_fd(regs[i].fd);
    }
    t->info.nvirtqs = t->nqueues;
    for (unsigned i = 0; i < t->nqueues; i++) {
        t->info.virtqs[i] = t->ring[i].vq;
        t->info.virtqs[i].kick_fd = dup_fd(t->ring[i].vq.kick_fd);
        t->info.virtqs[i].call_fd = dup_fd(t->ring[i].vq.call_fd);
    }
    t->dev_started = true;
    t->started++;
    if (t->fail_in_started)
        vu_dev_fail(dev, "server refused: %s", "test");
}

static ino_t fd_ino(int fd)
{
    struct stat st;
    g_assert_cmpint(fstat(fd, &st), ==, 0);
    return st.st_ino;
}

/* A deferred memory verdict, given from the main loop (as the daemon does from the
 * server's MEMORY_INFO_ACK). */
static gboolean reply_mem_later(gpointer p)
{
    struct t *t = p;
    /* The region's fd is still the core's while the verdict is outstanding. */
    t->mem_verdict_fd_ok = t->mem_region_fd >= 0 && fcntl(t->mem_region_fd, F_GETFD) >= 0;
    /* Other deferred replies are refused meanwhile. */
    g_assert_cmpint(vu_dev_reply_features(t->dev, 0), ==, -EINVAL);
    t->mem_reply_ret = vu_dev_reply_mem(t->dev, t->pending_verdict);
    t->mem_replies++;
    return G_SOURCE_REMOVE;
}

/* Answer a memory change as the fixture says: accept at once, refuse at once, answer
 * from inside the callback, or answer later from the main loop. With refuse_gpa only
 * the region at that address is refused (only its adding with refuse_adds_only). */
static int mem_verdict(struct t *t, struct vu_dev *dev, const struct vp_region *r, bool add)
{
    int v = t->mem_verdict;
    if (t->refuse_gpa)
        v = r->gpa == t->refuse_gpa && (add || !t->refuse_adds_only) ? -EIO : 0;
    t->pending_verdict = v;
    switch (t->mem_mode) {
    case MEM_ACCEPT:
        return 0;
    case MEM_REFUSE_NOW:
        return v;
    case MEM_ANSWER_INSIDE:
        g_assert_cmpint(vu_dev_reply_mem(dev, v), ==, 0);
        g_assert_cmpint(vu_dev_reply_mem(dev, 0), ==, -EINVAL); /* one answer only */
        return VU_DEFERRED;
    default:
        t->wants_input_in_cb = vu_dev_wants_input(dev);
        t->mem_region_fd = r->fd;
        g_timeout_add(20, reply_mem_later, t);
        return VU_DEFERRED;
    }
}

static int cb_mem_added(struct vu_dev *dev, const struct vp_region *r, void *opaque)
{
    struct t *t = opaque;
    if (!t->dev_started && !t->verdict_early) {
        t->mem_added_early++;
        return 0;
    }
    t->added = *r;
    t->added_ino = fd_ino(r->fd);
    t->mem_added++;
    return mem_verdict(t, dev, r, true);
}

static int cb_mem_removed(struct vu_dev *dev, const struct vp_region *r, void *opaque)
{
    struct t *t = opaque;
    if (!t->dev_started && !t->verdict_early) {
        t->mem_added_early--;
        return 0;
    }
    t->removed = *r;
    t->mem_removed++;
    return mem_verdict(t, dev, r, false);
}

/* Changes are counted once the fixture's device has started (those of the start
 * itself, such as QEMU 7.2's call fd right after the kick, are only recorded). */
static void cb_vring_changed(struct vu_dev *dev, const struct vu_vring_info *info,
                             void *opaque)
{
    (void)dev;
    struct t *t = opaque;
    const struct vp_virtq *vq = &info->vq;
    bool enable_change = t->ring[vq->index].enabled != info->enabled;
    if (info->running && !enable_change)
        ring_take(t, info);
    t->ring[vq->index].enabled = info->enabled;
    if (!t->dev_started)
        return;
    t->changed = *vq;
    t->changed_enabled = info->enabled;
    /* the call fd handed over is the frontend's current call eventfd */
    uint64_t one = 1, v = 0;
    int fe_call = vu_fe_vring_fd(t->fe, VU_SET_VRING_CALL, vq->index);
    t->changed_call_matches = vq->call_fd >= 0 && fe_call >= 0 &&
                              write(vq->call_fd, &one, 8) == 8 &&
                              read(fe_call, &v, 8) == 8 && v == 1;
    t->vring_changed++;
}

static gboolean reply_vring_base_later(gpointer p)
{
    struct t *t = p;
    /* A reply for another queue is refused while this one is pending. */
    g_assert_cmpint(vu_dev_reply_vring_base(t->dev, t->vring_base_index + 1, 1), ==, -EINVAL);
    g_assert_cmpint(vu_dev_reply_vring_base(t->dev, t->vring_base_index,
                                            t->vring_base_answer[t->vring_base_index]), ==, 0);
    return G_SOURCE_REMOVE;
}

static int cb_get_vring_base(struct vu_dev *dev, uint32_t index, uint16_t *v, void *opaque)
{
    struct t *t = opaque;
    ring_close(&t->ring[index]);
    t->ring[index].running = false;
    t->dev_started = false;
    t->vring_base_calls++;
    t->vring_base_index = index;
    if (t->defer_vring_base) {
        t->wants_input_in_cb = vu_dev_wants_input(dev);
        g_timeout_add(20, reply_vring_base_later, t);
        return VU_DEFERRED;
    }
    *v = t->vring_base_answer[index];
    return 0;
}

static void cb_disconnected(struct vu_dev *dev, const char *reason, void *opaque)
{
    struct t *t = opaque;
    g_assert_true(vu_dev_is_broken(dev));
    g_assert_cmpint(vu_dev_fd(dev), ==, -1);
    g_strlcpy(t->reason, reason, sizeof(t->reason));
    t->disconnected++;
    if (t->free_in_disconnected) {
        vu_glib_free(t->g);
        t->g = NULL;
    }
}

/* ---- fixture ---- */

static void t_setup_cfg(struct t *t, const struct vu_dev_config *cfg, uint64_t accepted_pf)
{
    memset(t, 0, sizeof(*t));
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++) {
        t->info.regions[i % VP_MAX_REGIONS].fd = -1;
        t->info.virtqs[i].kick_fd = t->info.virtqs[i].call_fd = -1;
        t->ring[i].vq.kick_fd = t->ring[i].vq.call_fd = -1;
        t->vring_base_answer[i] = (uint16_t)(100 + i);
    }
    t->mem_region_fd = -1;
    t->nqueues = cfg && cfg->nqueues ? cfg->nqueues : 2;
    t->features_answer = VP_NET_FEATURES;
    t->fds_before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    vp_error err = {{0}};
    t->g = vu_glib_new(sv[0], cfg, &test_ops, t, NULL, &err);
    g_assert_nonnull(t->g);
    t->dev = vu_glib_dev(t->g);
    t->fe = vu_fe_new(sv[1], t->nqueues, pump, NULL);
    vu_fe_set_accepted_pf(t->fe, accepted_pf);
    g_assert_cmpint(vu_fe_ram_new(t->fe, 4 * MiB), ==, 0);
    t->low = vu_fe_region_new(t->fe, 0, 0, 0, LOW_SIZE);
    t->high = vu_fe_region_new(t->fe, 0, HIGH_OFF, HIGH_GPA, HIGH_SIZE);
    g_assert_cmpint(t->low, >=, 0);
    g_assert_cmpint(t->high, >=, 0);
}

static void t_setup(struct t *t)
{
    t_setup_cfg(t, NULL, VU_FE_QEMU72_PF);
}

static void t_teardown(struct t *t)
{
    info_close_fds(&t->info);
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++)
        ring_close(&t->ring[i]);
    vu_fe_free(t->fe);
    pump(NULL);
    vu_glib_free(t->g);
    pump(NULL);
    vp_assert_fds(t->fds_before);
}

#define FE_OK(call)                                                            \
    do {                                                                       \
        int r_ = (call);                                                       \
        if (r_ != 0)                                                           \
            g_error("%s: %d: %s (backend: %s)", #call, r_, vu_fe_error(t->fe), \
                    vu_dev_error(t->dev));                                     \
    } while (0)

static void assert_reason(const char *have, const char *want)
{
    if (!strstr(have, want))
        g_error("reason \"%s\" does not contain \"%s\"", have, want);
}

/* Send one request with need_reply and expect a failure ack naming @want; the
 * connection must live on. */
static void expect_rejected(struct t *t, uint32_t req, const void *payload, uint32_t size,
                            const int *fds, unsigned nfds, const char *want)
{
    FE_OK(vu_fe_send(t->fe, req, VU_FLAG_NEED_REPLY, payload, size, fds, nfds));
    g_assert_cmpint(vu_fe_recv_ack(t->fe, req), ==, -EIO);
    assert_reason(vu_dev_error(t->dev), want);
    g_assert_false(vu_dev_is_broken(t->dev));
    g_assert_cmpint(t->disconnected, ==, 0);
}

/* Send raw bytes and expect the backend to drop the connection with @want. */
static void expect_disconnect(struct t *t, const char *want)
{
    FE_OK(vu_fe_wait_closed(t->fe));
    WAIT_FOR(t->disconnected == 1);
    assert_reason(t->reason, want);
    assert_reason(vu_dev_error(t->dev), want);
    g_assert_true(vu_dev_is_broken(t->dev));
}

static void t_init_start(struct t *t)
{
    FE_OK(vu_fe_qemu72_init(t->fe));
    g_assert_cmpint(t->started, ==, 0);
    FE_OK(vu_fe_qemu72_start(t->fe, VP_NET_FEATURES, vrings));
    WAIT_FOR(t->started == 1);
}

static void region_payload(uint8_t p[40], uint64_t gpa, uint64_t size, uint64_t uaddr,
                           uint64_t off)
{
    memset(p, 0, 40);
    vp_put_le64(p + 8, gpa);
    vp_put_le64(p + 16, size);
    vp_put_le64(p + 24, uaddr);
    vp_put_le64(p + 32, off);
}

static void u64_payload(uint8_t p[8], uint64_t v)
{
    vp_put_le64(p, v);
}

static void state_payload(uint8_t p[8], uint32_t index, uint32_t num)
{
    vp_put_le32(p, index);
    vp_put_le32(p + 4, num);
}

/* ---- the QEMU 7.2 sequence ---- */

static void check_started_info(struct t *t, unsigned nqueues)
{
    const struct tinfo *in = &t->info;
    g_assert_cmphex(in->features, ==, VP_NET_FEATURES | F_PROTO);
    g_assert_cmpuint(in->nregions, ==, 2);
    ino_t ram0 = fd_ino(vu_fe_ram_fd(t->fe, 0));
    bool seen_low = false, seen_high = false;
    for (unsigned i = 0; i < in->nregions; i++) {
        const struct vp_region *r = &in->regions[i];
        g_assert_cmpuint(fd_ino(r->fd), ==, ram0);  /* both regions share one memfd */
        if (r->gpa == 0) {
            g_assert_cmphex(r->size, ==, LOW_SIZE);
            g_assert_cmphex(r->mmap_offset, ==, 0);
            seen_low = true;
        } else {
            g_assert_cmphex(r->gpa, ==, HIGH_GPA);
            g_assert_cmphex(r->size, ==, HIGH_SIZE);
            g_assert_cmphex(r->mmap_offset, ==, HIGH_OFF);
            seen_high = true;
        }
    }
    g_assert_true(seen_low && seen_high);
    g_assert_cmpuint(in->nvirtqs, ==, nqueues);
    for (unsigned i = 0; i < nqueues; i++) {
        const struct vp_virtq *q = &in->virtqs[i];
        g_assert_cmpuint(q->index, ==, i);
        g_assert_cmpuint(q->num, ==, vrings[i].num);
        /* user addresses of the frontend translated to guest-physical */
        g_assert_cmphex(q->desc, ==, RAM0_GPA(vrings[i].desc_off));
        g_assert_cmphex(q->avail, ==, RAM0_GPA(vrings[i].avail_off));
        g_assert_cmphex(q->used, ==, RAM0_GPA(vrings[i].used_off));
        g_assert_cmpuint(q->last_avail_idx, ==, vrings[i].base);
        /* kick: frontend -> backend's fd; call: backend's fd -> frontend */
        uint64_t one = 1, v = 0;
        g_assert_cmpint(write(vu_fe_vring_fd(t->fe, VU_SET_VRING_KICK, i), &one, 8), ==, 8);
        g_assert_cmpint(read(q->kick_fd, &v, 8), ==, 8);
        g_assert_cmpuint(v, ==, 1);
        g_assert_cmpint(write(q->call_fd, &one, 8), ==, 8);
        g_assert_cmpint(read(vu_fe_vring_fd(t->fe, VU_SET_VRING_CALL, i), &v, 8), ==, 8);
        g_assert_cmpuint(v, ==, 1);
    }
}

static void test_qemu72_sequence(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    /* The backend strips what it cannot carry (LOG_ALL) and adds PROTOCOL_FEATURES. */
    t->features_answer = VP_NET_FEATURES | (1ULL << VU_F_LOG_ALL);
    FE_OK(vu_fe_qemu72_init(t->fe));
    g_assert_cmphex(vu_fe_offered_features(t->fe), ==, VP_NET_FEATURES | F_PROTO);
    g_assert_cmphex(vu_fe_protocol_features(t->fe), ==, PF_DEFAULT);
    WAIT_FOR(vu_dev_protocol_features(t->dev) == PF_DEFAULT);
    g_assert_cmpint(t->started, ==, 0);

    FE_OK(vu_fe_qemu72_start(t->fe, VP_NET_FEATURES, vrings));
    WAIT_FOR(t->started == 1);
    check_started_info(t, 2);
    g_assert_cmphex(vu_dev_features(t->dev), ==, VP_NET_FEATURES | F_PROTO);

    /* shutdown: GET_VRING_BASE per queue, answered by the user */
    uint32_t bases[2];
    FE_OK(vu_fe_qemu72_stop(t->fe, bases));
    g_assert_cmpuint(bases[0], ==, 100);
    g_assert_cmpuint(bases[1], ==, 101);
    g_assert_cmpint(t->vring_base_calls, ==, 2);
    g_assert_false(vu_dev_is_started(t->dev));

    /* the guest restarts the device: same sequence again (the ADD_MEM_REGs are
     * duplicates now and change nothing) */
    FE_OK(vu_fe_qemu72_start(t->fe, VP_NET_FEATURES, vrings));
    WAIT_FOR(t->started == 2);
    check_started_info(t, 2);
    g_assert_cmpint(t->mem_added, ==, 0);

    /* QEMU goes away */
    vu_fe_free(t->fe);
    t->fe = NULL;
    WAIT_FOR(t->disconnected == 1);
    assert_reason(t->reason, "closed the connection");
    t_teardown(t);
}

static void test_get_features_deferred(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    t->defer_features = true;
    t->features_answer = (1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_NET_F_MAC);
    FE_OK(vu_fe_qemu72_init(t->fe));
    g_assert_cmphex(vu_fe_offered_features(t->fe), ==, t->features_answer | F_PROTO);
    /* a reply nobody waits for is refused */
    g_assert_cmpint(vu_dev_reply_features(t->dev, 1), ==, -EINVAL);
    FE_OK(vu_fe_qemu72_start(t->fe, t->features_answer, vrings));
    WAIT_FOR(t->started == 1);
    g_assert_cmphex(t->info.features, ==, t->features_answer | F_PROTO);
    t_teardown(t);
}

static void test_get_vring_base_deferred(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    t_init_start(t);
    t->defer_vring_base = true;
    t->vring_base_answer[0] = 77;
    t->vring_base_answer[1] = 99;
    uint32_t bases[2];
    FE_OK(vu_fe_qemu72_stop(t->fe, bases));
    g_assert_cmpuint(bases[0], ==, 77);
    g_assert_cmpuint(bases[1], ==, 99);
    g_assert_cmpint(t->vring_base_calls, ==, 2);
    g_assert_false(t->wants_input_in_cb);       /* the core waited for the user */
    g_assert_true(vu_dev_wants_input(t->dev));
    g_assert_false(vu_dev_is_started(t->dev));
    /* a vring that never ran is answered by the core itself */
    uint32_t b = 0;
    FE_OK(vu_fe_get_vring_base(t->fe, 1, &b));
    g_assert_cmpint(t->vring_base_calls, ==, 2);
    t_teardown(t);
}

/* ---- memory hot-plug ---- */

static void test_hot_add_remove(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    t_init_start(t);

    /* pc-dimm hot-plug: ADD_MEM_REG with a new memfd */
    int ram1 = vu_fe_ram_new(t->fe, 2 * MiB);
    g_assert_cmpint(ram1, ==, 1);
    int dimm = vu_fe_region_new(t->fe, 1, 0, 0x200000000ULL, 2 * MiB);
    FE_OK(vu_fe_add_mem_reg(t->fe, dimm));
    g_assert_cmpint(t->mem_added, ==, 1);
    g_assert_cmphex(t->added.gpa, ==, 0x200000000ULL);
    g_assert_cmphex(t->added.size, ==, 2 * MiB);
    g_assert_cmphex(t->added.mmap_offset, ==, 0);
    g_assert_cmpuint(t->added_ino, ==, fd_ino(vu_fe_ram_fd(t->fe, 1)));
    struct vp_region regs[8];
    g_assert_cmpuint(vu_dev_get_regions(t->dev, regs, 8), ==, 3);

    /* device_del: REM_MEM_REG (no fd, mmap offset 0, as QEMU 7.2) */
    FE_OK(vu_fe_rem_mem_reg(t->fe, dimm, false));
    g_assert_cmpint(t->mem_removed, ==, 1);
    g_assert_cmphex(t->removed.gpa, ==, 0x200000000ULL);
    g_assert_cmpuint(vu_dev_get_regions(t->dev, regs, 8), ==, 2);

    /* again, with an fd as QEMU < 7.1 did: idempotent, the fd is closed */
    uint8_t p[40];
    region_payload(p, 0x200000000ULL, 2 * MiB, vu_fe_uaddr(t->fe, 1, 0), 0);
    int fd1 = vu_fe_ram_fd(t->fe, 1);
    FE_OK(vu_fe_send(t->fe, VU_REM_MEM_REG, VU_FLAG_NEED_REPLY, p, 40, &fd1, 1));
    FE_OK(vu_fe_recv_ack(t->fe, VU_REM_MEM_REG));
    g_assert_cmpint(t->mem_removed, ==, 1);

    /* the memory of a running vring cannot go */
    region_payload(p, HIGH_GPA, HIGH_SIZE, vu_fe_uaddr(t->fe, 0, HIGH_OFF), 0);
    expect_rejected(t, VU_REM_MEM_REG, p, 40, NULL, 0, "running vring 0");
    g_assert_cmpint(t->mem_removed, ==, 1);
    t_teardown(t);
}

static void test_multiqueue_duplicate_add(void)
{
    struct t tt, *t = &tt;
    struct vu_dev_config cfg = {.nqueues = 4};
    t_setup_cfg(t, &cfg, VU_FE_QEMU72_PF);
    /* QEMU 7.2 with queues=2 sends every ADD_MEM_REG / REM_MEM_REG twice */
    vu_fe_set_mem_repeat(t->fe, 2);
    FE_OK(vu_fe_qemu72_init(t->fe));
    g_assert_cmphex(vu_fe_protocol_features(t->fe), ==, PF_DEFAULT | (1ULL << VU_PF_MQ));
    uint64_t pairs = 0;
    FE_OK(vu_fe_get_u64(t->fe, VU_GET_QUEUE_NUM, &pairs));
    g_assert_cmpuint(pairs, ==, 2);
    FE_OK(vu_fe_qemu72_start(t->fe, VP_NET_FEATURES, vrings));
    WAIT_FOR(t->started == 1);
    g_assert_cmpuint(t->info.nregions, ==, 2);
    g_assert_cmpuint(t->info.nvirtqs, ==, 4);
    g_assert_cmphex(t->info.virtqs[3].desc, ==, RAM0_GPA(vrings[3].desc_off));
    g_assert_cmpuint(t->info.virtqs[3].last_avail_idx, ==, 9);

    int fds_running = vp_count_open_fds();
    int ram1 = vu_fe_ram_new(t->fe, 2 * MiB);
    int dimm = vu_fe_region_new(t->fe, (unsigned)ram1, 0, 0x200000000ULL, 2 * MiB);
    FE_OK(vu_fe_add_mem_reg(t->fe, dimm));
    g_assert_cmpint(t->mem_added, ==, 1);
    /* the frontend's memfd + exactly one kept by the backend: the duplicate's fd was
     * closed */
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 2);
    FE_OK(vu_fe_rem_mem_reg(t->fe, dimm, false));
    g_assert_cmpint(t->mem_removed, ==, 1);
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 1);

    /* same guest address, different layout: not a duplicate but an overlap */
    uint8_t p[40];
    region_payload(p, HIGH_GPA, MiB, vu_fe_uaddr(t->fe, 0, 0), 0);
    int fd0 = vu_fe_ram_fd(t->fe, 0);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "overlaps");
    t_teardown(t);
}

static void test_set_mem_table(void)
{
    struct t tt, *t = &tt;
    /* a frontend that does not take CONFIGURE_MEM_SLOTS sends whole tables */
    t_setup_cfg(t, NULL, 1ULL << VU_PF_REPLY_ACK);
    t_init_start(t);
    check_started_info(t, 2);

    int ram1 = vu_fe_ram_new(t->fe, 2 * MiB);
    int dimm = vu_fe_region_new(t->fe, (unsigned)ram1, 0, 0x200000000ULL, 2 * MiB);
    FE_OK(vu_fe_set_mem_table(t->fe));
    g_assert_cmpint(t->mem_added, ==, 1);
    g_assert_cmpint(t->mem_removed, ==, 0);
    g_assert_cmphex(t->added.gpa, ==, 0x200000000ULL);

    FE_OK(vu_fe_region_drop(t->fe, dimm));
    FE_OK(vu_fe_set_mem_table(t->fe));
    g_assert_cmpint(t->mem_added, ==, 1);
    g_assert_cmpint(t->mem_removed, ==, 1);
    g_assert_cmphex(t->removed.gpa, ==, 0x200000000ULL);

    /* ADD_MEM_REG needs CONFIGURE_MEM_SLOTS */
    uint8_t p[40];
    region_payload(p, 0x300000000ULL, MiB, vu_fe_uaddr(t->fe, 1, 0), 0);
    int fd1 = vu_fe_ram_fd(t->fe, 1);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd1, 1, "not negotiated");

    /* a table whose fd count does not match */
    uint8_t mt[8 + 2 * VU_REGION_SIZE] = {0};
    vp_put_le32(mt, 2);
    region_payload(p, 0, LOW_SIZE, vu_fe_uaddr(t->fe, 0, 0), 0);
    memcpy(mt + 8, p + 8, 32);
    region_payload(p, HIGH_GPA, HIGH_SIZE, vu_fe_uaddr(t->fe, 0, HIGH_OFF), HIGH_OFF);
    memcpy(mt + 40, p + 8, 32);
    int fd0 = vu_fe_ram_fd(t->fe, 0);
    expect_rejected(t, VU_SET_MEM_TABLE, mt, sizeof(mt), &fd0, 1, "wrong fd count");
    /* and one whose size does not match its count */
    int two[2] = {fd0, fd0};
    expect_rejected(t, VU_SET_MEM_TABLE, mt, sizeof(mt) - 8, two, 2, "does not match");
    t_teardown(t);
}

/* Is there a region at @gpa in the core's table? */
static bool has_region(struct t *t, uint64_t gpa)
{
    struct vp_region regs[VP_MAX_REGIONS];
    unsigned n = vu_dev_get_regions(t->dev, regs, VP_MAX_REGIONS);
    for (unsigned i = 0; i < n && i < VP_MAX_REGIONS; i++)
        if (regs[i].gpa == gpa)
            return true;
    return false;
}

#define DIMM_GPA 0x200000000ULL
#define DIMM2_GPA 0x300000000ULL

/* A barrier: a request with an ack; the backend handled everything before it. */
static void barrier(struct t *t)
{
    FE_OK(vu_fe_send(t->fe, VU_SET_OWNER, VU_FLAG_NEED_REPLY, NULL, 0, NULL, 0));
    FE_OK(vu_fe_recv_ack(t->fe, VU_SET_OWNER));
}

/* The user answers hot-add / hot-remove later (the daemon: after the server's
 * MEMORY_INFO_ACK). A refusal becomes a failure REPLY_ACK; the refused region is not
 * in the table and its fd is closed; an accepted one is. */
static void test_mem_deferred(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    t_init_start(t);
    int fds_running = vp_count_open_fds();
    int ram1 = vu_fe_ram_new(t->fe, 2 * MiB);
    int dimm = vu_fe_region_new(t->fe, (unsigned)ram1, 0, DIMM_GPA, 2 * MiB);
    g_assert_cmpint(dimm, >=, 0);

    /* refused: nonzero REPLY_ACK, not in the table, the core's fd closed */
    t->mem_mode = MEM_DEFER;
    t->mem_verdict = -EIO;
    g_assert_cmpint(vu_fe_add_mem_reg(t->fe, dimm), ==, -EIO);
    g_assert_cmpuint(vu_fe_last_ack(t->fe), ==, 1);
    g_assert_cmpint(t->mem_added, ==, 1);
    g_assert_cmpint(t->mem_replies, ==, 1);
    g_assert_cmpint(t->mem_reply_ret, ==, 0);
    g_assert_cmphex(t->added.gpa, ==, DIMM_GPA);
    g_assert_false(t->wants_input_in_cb);     /* the core waited for the verdict */
    g_assert_true(t->mem_verdict_fd_ok);      /* the region's fd lived until then */
    assert_reason(vu_dev_error(t->dev), "ADD_MEM_REG: region gpa 0x200000000 size 0x200000: "
                  "adding refused by the backend user (Input/output error)");
    g_assert_false(has_region(t, DIMM_GPA));
    struct vp_region regs[8];
    g_assert_cmpuint(vu_dev_get_regions(t->dev, regs, 8), ==, 2);
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 1); /* the frontend's memfd */
    g_assert_false(vu_dev_is_broken(t->dev));
    g_assert_true(vu_dev_wants_input(t->dev));
    g_assert_true(vu_dev_is_started(t->dev));
    barrier(t);

    /* accepted later: zero REPLY_ACK, in the table, one fd kept */
    t->mem_verdict = 0;
    vu_fe_clear_ack(t->fe);
    FE_OK(vu_fe_add_mem_reg(t->fe, dimm));
    g_assert_cmpuint(vu_fe_last_ack(t->fe), ==, 0);
    g_assert_cmpint(t->mem_added, ==, 2);
    g_assert_cmpint(t->mem_replies, ==, 2);
    g_assert_cmpint(t->mem_reply_ret, ==, 0);
    g_assert_true(has_region(t, DIMM_GPA));
    g_assert_cmpuint(vu_dev_get_regions(t->dev, regs, 8), ==, 3);
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 2);

    /* QEMU 7.2 with queues=2 repeats it: a duplicate needs no verdict */
    vu_fe_set_mem_repeat(t->fe, 2);
    FE_OK(vu_fe_add_mem_reg(t->fe, dimm));
    g_assert_cmpint(t->mem_added, ==, 2);
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 2);
    vu_fe_set_mem_repeat(t->fe, 1);

    /* removal refused: failure, the region and its fd stay */
    t->mem_verdict = -EBUSY;
    g_assert_cmpint(vu_fe_rem_mem_reg(t->fe, dimm, false), ==, -EIO);
    g_assert_cmpuint(vu_fe_last_ack(t->fe), ==, 1);
    g_assert_cmpint(t->mem_removed, ==, 1);
    g_assert_true(t->mem_verdict_fd_ok);
    assert_reason(vu_dev_error(t->dev), "REM_MEM_REG: region gpa 0x200000000 size 0x200000: "
                  "removal refused by the backend user (Device or resource busy)");
    g_assert_true(has_region(t, DIMM_GPA));
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 2);

    /* removal accepted later: gone, fd closed; a repeat needs no verdict */
    t->mem_verdict = 0;
    vu_fe_set_mem_repeat(t->fe, 2);
    FE_OK(vu_fe_rem_mem_reg(t->fe, dimm, false));
    g_assert_cmpint(t->mem_removed, ==, 2);
    g_assert_false(has_region(t, DIMM_GPA));
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 1);
    vu_fe_set_mem_repeat(t->fe, 1);

    /* refused at once (the callback returns -errno) and answered from inside */
    dimm = vu_fe_region_new(t->fe, (unsigned)ram1, 0, DIMM_GPA, 2 * MiB);
    t->mem_mode = MEM_REFUSE_NOW;
    t->mem_verdict = -ENOSPC;
    g_assert_cmpint(vu_fe_add_mem_reg(t->fe, dimm), ==, -EIO);
    assert_reason(vu_dev_error(t->dev), "adding refused by the backend user (No space left");
    g_assert_false(has_region(t, DIMM_GPA));
    t->mem_mode = MEM_ANSWER_INSIDE;
    t->mem_verdict = -EIO;
    g_assert_cmpint(vu_fe_add_mem_reg(t->fe, dimm), ==, -EIO);
    g_assert_false(has_region(t, DIMM_GPA));
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 1);
    t->mem_verdict = 0;
    FE_OK(vu_fe_add_mem_reg(t->fe, dimm));
    g_assert_true(has_region(t, DIMM_GPA));
    g_assert_cmpint(t->mem_added, ==, 5);
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 2);

    /* no memory change waits: a verdict is refused */
    g_assert_cmpint(vu_dev_reply_mem(t->dev, 0), ==, -EINVAL);
    g_assert_cmpint(t->disconnected, ==, 0);
    t_teardown(t);
}

/* Without REPLY_ACK the protocol cannot carry a refusal: it is logged and the region
 * is added as the frontend believes. Requests sent behind it wait for the verdict. */
static void test_mem_deferred_no_reply_ack(void)
{
    struct t tt, *t = &tt;
    t_setup_cfg(t, NULL, 1ULL << VU_PF_CONFIGURE_MEM_SLOTS);
    t_init_start(t);
    int ram1 = vu_fe_ram_new(t->fe, 2 * MiB);
    int dimm = vu_fe_region_new(t->fe, (unsigned)ram1, 0, DIMM_GPA, 2 * MiB);
    t->mem_mode = MEM_DEFER;
    t->mem_verdict = -EIO;
    FE_OK(vu_fe_add_mem_reg(t->fe, dimm)); /* no reply asked for */
    uint64_t f = 0;
    FE_OK(vu_fe_get_u64(t->fe, VU_GET_FEATURES, &f)); /* answered after the verdict */
    g_assert_cmpint(t->mem_replies, ==, 1);
    g_assert_false(t->wants_input_in_cb);
    g_assert_cmpuint(vu_fe_last_ack(t->fe), ==, VU_FE_NO_ACK);
    assert_reason(vu_dev_error(t->dev), "adding refused by the backend user");
    g_assert_true(has_region(t, DIMM_GPA));
    FE_OK(vu_fe_rem_mem_reg(t->fe, dimm, false));
    FE_OK(vu_fe_get_u64(t->fe, VU_GET_FEATURES, &f));
    g_assert_cmpint(t->mem_replies, ==, 2);
    g_assert_false(has_region(t, DIMM_GPA)); /* removed as the frontend believes */
    g_assert_false(vu_dev_is_broken(t->dev));
    t_teardown(t);
}

/* SET_MEM_TABLE carries several changes; each gets its own verdict and the reply
 * says whether all were accepted. */
static void test_mem_deferred_set_mem_table(void)
{
    struct t tt, *t = &tt;
    t_setup_cfg(t, NULL, 1ULL << VU_PF_REPLY_ACK);
    t_init_start(t);
    int fds_running = vp_count_open_fds();
    int ram1 = vu_fe_ram_new(t->fe, 2 * MiB), ram2 = vu_fe_ram_new(t->fe, 2 * MiB);
    int a = vu_fe_region_new(t->fe, (unsigned)ram1, 0, DIMM_GPA, 2 * MiB);
    int b = vu_fe_region_new(t->fe, (unsigned)ram2, 0, DIMM2_GPA, 2 * MiB);
    g_assert_cmpint(b, >=, 0);
    t->mem_mode = MEM_DEFER;
    t->refuse_gpa = DIMM2_GPA;
    g_assert_cmpint(vu_fe_set_mem_table(t->fe), ==, -EIO);
    g_assert_cmpint(t->mem_added, ==, 2);
    g_assert_cmpint(t->mem_replies, ==, 2);
    g_assert_cmpint(t->mem_reply_ret, ==, 0);
    g_assert_true(has_region(t, DIMM_GPA));
    g_assert_false(has_region(t, DIMM2_GPA));
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 3);

    /* the frontend sends the whole table again: only the missing region is new */
    t->refuse_gpa = 0;
    t->mem_verdict = 0;
    FE_OK(vu_fe_set_mem_table(t->fe));
    g_assert_cmpint(t->mem_added, ==, 3);
    g_assert_cmphex(t->added.gpa, ==, DIMM2_GPA);
    g_assert_true(has_region(t, DIMM2_GPA));
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 4);

    /* both go; the removal of the first is refused: it stays */
    t->refuse_gpa = DIMM_GPA;
    FE_OK(vu_fe_region_drop(t->fe, a));
    FE_OK(vu_fe_region_drop(t->fe, b));
    g_assert_cmpint(vu_fe_set_mem_table(t->fe), ==, -EIO);
    g_assert_cmpint(t->mem_removed, ==, 2);
    g_assert_true(has_region(t, DIMM_GPA));
    g_assert_false(has_region(t, DIMM2_GPA));
    g_assert_cmpint(vp_count_open_fds(), ==, fds_running + 3);
    g_assert_false(vu_dev_is_broken(t->dev));

    /* the running vrings' region replaced by a smaller one (same mapping) whose adding
     * is refused: the rings would have no memory, the connection cannot go on */
    t->refuse_gpa = HIGH_GPA;
    t->refuse_adds_only = true;
    FE_OK(vu_fe_region_drop(t->fe, t->high));
    g_assert_cmpint(vu_fe_region_new(t->fe, 0, HIGH_OFF, HIGH_GPA, HIGH_SIZE - 0x10000), >=, 0);
    g_assert_cmpint(vu_fe_set_mem_table(t->fe), ==, -ECONNRESET);
    WAIT_FOR(t->disconnected == 1);
    g_assert_cmpint(t->mem_reply_ret, ==, -EPROTO); /* the verdict broke the device */
    assert_reason(t->reason, "SET_MEM_TABLE: after the refused change running vring 0 has "
                  "no memory");
    t_teardown(t);
}

/* ---- bad input ---- */

static void test_bad_truncated_header(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    uint8_t hdr[5] = {1, 0, 0, 0, 1};
    FE_OK(vu_fe_send_raw(t->fe, hdr, sizeof(hdr), NULL, 0));
    g_assert_cmpint(shutdown(vu_fe_sock(t->fe), SHUT_WR), ==, 0);
    expect_disconnect(t, "truncated header");
    assert_reason(t->reason, "5 of 12");
    t_teardown(t);
}

static void test_bad_size_over_limit(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    uint8_t hdr[VU_HDR_SIZE];
    vp_put_le32(hdr, VU_SET_FEATURES);
    vp_put_le32(hdr + 4, VU_FLAG_VERSION | VU_FLAG_NEED_REPLY);
    vp_put_le32(hdr + 8, 100000);
    int fd = vu_fe_ram_fd(t->fe, 0);
    FE_OK(vu_fe_send_raw(t->fe, hdr, sizeof(hdr), &fd, 1));
    expect_disconnect(t, "payload size 100000 over the limit");
    t_teardown(t);
}

static void test_bad_header_version(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    uint8_t hdr[VU_HDR_SIZE];
    vp_put_le32(hdr, VU_GET_FEATURES);
    vp_put_le32(hdr + 4, 0x2);
    vp_put_le32(hdr + 8, 0);
    FE_OK(vu_fe_send_raw(t->fe, hdr, sizeof(hdr), NULL, 0));
    expect_disconnect(t, "version 2, expected 1");
    t_teardown(t);
}

static void test_bad_payload_size(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    uint8_t p[8];
    state_payload(p, 0, 256);
    expect_rejected(t, VU_SET_VRING_NUM, p, 4, NULL, 0, "SET_VRING_NUM: payload size 4, expected 8");
    /* without need_reply the same error drops the connection */
    FE_OK(vu_fe_send(t->fe, VU_SET_VRING_NUM, 0, p, 4, NULL, 0));
    expect_disconnect(t, "payload size 4, expected 8");
    t_teardown(t);
}

static void test_bad_queue_index(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    uint8_t p[8];
    state_payload(p, VU_MAX_QUEUES, 1);
    expect_rejected(t, VU_SET_VRING_ENABLE, p, 8, NULL, 0, "vring index 64 out of range (2 queues, "
                    "at most 64)");
    state_payload(p, 0xffffffffu, 0);
    expect_rejected(t, VU_SET_VRING_BASE, p, 8, NULL, 0, "vring index 4294967295 out of range");
    /* an fd sent with an out-of-range kick is closed */
    u64_payload(p, 200);
    int fd = vu_fe_vring_fd(t->fe, VU_SET_VRING_CALL, 0);
    expect_rejected(t, VU_SET_VRING_KICK, p, 8, &fd, 1, "vring index 200 out of range");
    /* the connection is still usable */
    FE_OK(vu_fe_set_state(t->fe, VU_SET_VRING_NUM, 1, 256, true));
    /* GET_VRING_BASE has its own reply: a bad index drops the connection */
    state_payload(p, 70, 0);
    FE_OK(vu_fe_send(t->fe, VU_GET_VRING_BASE, VU_FLAG_NEED_REPLY, p, 8, NULL, 0));
    expect_disconnect(t, "GET_VRING_BASE: vring index 70 out of range");
    t_teardown(t);
}

static void test_bad_fd_count(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    int fd0 = vu_fe_ram_fd(t->fe, 0);
    int two[2] = {fd0, fd0};
    uint8_t p[40];
    region_payload(p, 0, LOW_SIZE, vu_fe_uaddr(t->fe, 0, 0), 0);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, NULL, 0, "ADD_MEM_REG: wrong fd count: 0 fds, expected 1");
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, two, 2, "ADD_MEM_REG: wrong fd count: 2 fds");
    expect_rejected(t, VU_SET_OWNER, NULL, 0, two, 2, "SET_OWNER: wrong fd count");
    uint8_t u[8];
    u64_payload(u, 0);
    expect_rejected(t, VU_SET_VRING_CALL, u, 8, two, 2, "wrong fd count");
    u64_payload(u, 1 | VU_VRING_NOFD);
    expect_rejected(t, VU_SET_VRING_KICK, u, 8, &fd0, 1, "1 fds with the invalid-fd flag");
    u64_payload(u, 1);
    expect_rejected(t, VU_SET_VRING_KICK, u, 8, NULL, 0, "0 fds without the invalid-fd flag");
    /* more fds than any message may carry: the stream cannot be trusted any more */
    int many[10];
    for (int i = 0; i < 10; i++)
        many[i] = fd0;
    FE_OK(vu_fe_send(t->fe, VU_SET_OWNER, 0, NULL, 0, many, 10));
    expect_disconnect(t, "more than 8 fds");
    t_teardown(t);
}

static void test_bad_regions(void)
{
    struct t tt, *t = &tt;
    struct vu_dev_config cfg = {.max_mem_slots = 3};
    t_setup_cfg(t, &cfg, VU_FE_QEMU72_PF);
    FE_OK(vu_fe_qemu72_init(t->fe));
    int fd0 = vu_fe_ram_fd(t->fe, 0);
    uint64_t ua = vu_fe_uaddr(t->fe, 0, 0);
    uint8_t p[40];

    region_payload(p, 0xffffffffffff0000ULL, 0x20000, ua, 0);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "guest address range");
    assert_reason(vu_dev_error(t->dev), "overflows");
    region_payload(p, 0, 0x20000, 0xffffffffffff0000ULL, 0);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "user address range");
    region_payload(p, 0, 0x20000, ua, 0xffffffffffff0000ULL);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "mmap offset range");
    region_payload(p, 0, 0, ua, 0);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "zero size");
    region_payload(p, 0, 8 * MiB, ua, 0);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "beyond its file");
    int sv[2];
    vp_test_socketpair(sv);
    region_payload(p, 0, MiB, ua, 0);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &sv[0], 1, "not a regular file");
    vp_close_fds(sv, 2);

    /* three regions fit (max_mem_slots 3), a fourth does not; overlaps are refused */
    for (unsigned i = 0; i < 3; i++) {
        region_payload(p, i * MiB, MiB, ua + i * MiB, i * MiB);
        FE_OK(vu_fe_send(t->fe, VU_ADD_MEM_REG, VU_FLAG_NEED_REPLY, p, 40, &fd0, 1));
        FE_OK(vu_fe_recv_ack(t->fe, VU_ADD_MEM_REG));
    }
    region_payload(p, 0x10000, MiB, ua + 3 * MiB, 3 * MiB);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "overlaps existing region 0 [0x0,");
    region_payload(p, 8 * MiB, MiB, ua + MiB / 2, 3 * MiB);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "target range");
    region_payload(p, 8 * MiB, MiB, ua + 3 * MiB, 3 * MiB);
    expect_rejected(t, VU_ADD_MEM_REG, p, 40, &fd0, 1, "too many regions (limit 3)");
    /* removing with another size is an error, not a no-op */
    region_payload(p, MiB, 2 * MiB, ua + MiB, 0);
    expect_rejected(t, VU_REM_MEM_REG, p, 40, NULL, 0, "REM_MEM_REG: region gpa 0x100000 is");
    struct vp_region regs[4];
    g_assert_cmpuint(vu_dev_get_regions(t->dev, regs, 4), ==, 3);

    /* without need_reply a bad region drops the connection */
    region_payload(p, 0, 0, ua, 0);
    FE_OK(vu_fe_send(t->fe, VU_ADD_MEM_REG, 0, p, 40, &fd0, 1));
    expect_disconnect(t, "zero size");
    t_teardown(t);
}

static void test_bad_vrings(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    FE_OK(vu_fe_set_u64(t->fe, VU_SET_FEATURES, VP_NET_FEATURES | F_PROTO, true));
    FE_OK(vu_fe_add_mem_reg(t->fe, t->low));
    FE_OK(vu_fe_add_mem_reg(t->fe, t->high));
    uint8_t p[40];
    state_payload(p, 0, 100);
    expect_rejected(t, VU_SET_VRING_NUM, p, 8, NULL, 0, "num 100 is not a power of two");
    state_payload(p, 0, 65536);
    expect_rejected(t, VU_SET_VRING_NUM, p, 8, NULL, 0, "num 65536 is not a power of two in 1..32768");
    state_payload(p, 0, 0);
    expect_rejected(t, VU_SET_VRING_NUM, p, 8, NULL, 0, "num 0");
    state_payload(p, 0, 70000);
    expect_rejected(t, VU_SET_VRING_BASE, p, 8, NULL, 0, "base 70000 over 65535");
    state_payload(p, 0, 2);
    expect_rejected(t, VU_SET_VRING_ENABLE, p, 8, NULL, 0, "value 2 is not 0 or 1");
    FE_OK(vu_fe_set_state(t->fe, VU_SET_VRING_NUM, 0, 256, true));

    /* addresses: outside every region, crossing a region's end, misaligned, log */
    uint64_t ok = vu_fe_uaddr(t->fe, 0, 0x200000);
    struct {
        uint64_t desc, avail, used;
        uint32_t flags;
        const char *want;
    } cases[] = {
        {vu_fe_uaddr(t->fe, 5, 0), ok + 0x1000, ok + 0x2000, 0,
         "descriptor ring user address 0x7f6200000000 is outside every memory region"},
        {ok, ok + 0x1000, vu_fe_uaddr(t->fe, 0, 4 * MiB - 16), 0, "used ring at user address"},
        {ok, ok + 0x1000, vu_fe_uaddr(t->fe, 0, LOW_SIZE - 16), 0, "crosses the end of region gpa 0x0"},
        {ok + 8, ok + 0x1000, ok + 0x2000, 0, "not 16-byte aligned"},
        {ok, ok + 0x1001, ok + 0x2000, 0, "avail ring guest-physical address 0x100181001 is not 2-byte"},
        {ok, ok + 0x1000, ok + 0x2002, 0, "not 4-byte aligned"},
        {ok, ok + 0x1000, ok + 0x2000, VU_VRING_F_LOG, "VHOST_VRING_F_LOG"},
        {ok, ok + 0x1000, ok + 0x2000, 0x10, "unknown flags 0x10"},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        vp_put_le32(p, 0);
        vp_put_le32(p + 4, cases[i].flags);
        vp_put_le64(p + 8, cases[i].desc);
        vp_put_le64(p + 16, cases[i].used);
        vp_put_le64(p + 24, cases[i].avail);
        vp_put_le64(p + 32, 0);
        expect_rejected(t, VU_SET_VRING_ADDR, p, 40, NULL, 0, cases[i].want);
    }
    /* unknown bits in a vring fd message */
    uint8_t u[8];
    u64_payload(u, 0x10000 | VU_VRING_NOFD);
    expect_rejected(t, VU_SET_VRING_CALL, u, 8, NULL, 0, "unknown bits 0x10000");
    g_assert_cmpint(t->started, ==, 0);

    /* SET_FEATURES with bits never offered */
    u64_payload(u, VP_NET_FEATURES | (1ULL << VU_F_LOG_ALL));
    expect_rejected(t, VU_SET_FEATURES, u, 8, NULL, 0, "not offered");
    u64_payload(u, 1ULL << VU_PF_MQ);
    expect_rejected(t, VU_SET_PROTOCOL_FEATURES, u, 8, NULL, 0, "unsupported protocol features 0x1");
    t_teardown(t);
}

static void test_bad_unknown_request(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    int fd0 = vu_fe_ram_fd(t->fe, 0);
    uint8_t u[8];
    u64_payload(u, 0);
    expect_rejected(t, 99, u, 8, &fd0, 1, "unknown request 99");
    expect_rejected(t, VU_SET_LOG_BASE, u, 8, &fd0, 1, "unsupported request SET_LOG_BASE (6)");
    expect_rejected(t, VU_SET_STATUS, u, 8, NULL, 0, "unsupported request SET_STATUS");
    /* without need_reply: log and disconnect */
    FE_OK(vu_fe_send(t->fe, VU_SET_SLAVE_REQ_FD, 0, NULL, 0, &fd0, 1));
    expect_disconnect(t, "unsupported request SET_SLAVE_REQ_FD (21)");
    t_teardown(t);
}

static void test_fail_and_free_in_callback(void)
{
    /* The user drops the connection from inside started() (e.g. the vhost-pci server
     * refused the device), then frees the core from inside disconnected(). */
    struct t tt, *t = &tt;
    t_setup(t);
    t->fail_in_started = true;
    t->free_in_disconnected = true;
    FE_OK(vu_fe_qemu72_init(t->fe));
    FE_OK(vu_fe_qemu72_start(t->fe, VP_NET_FEATURES, vrings));
    FE_OK(vu_fe_wait_closed(t->fe));
    WAIT_FOR(t->disconnected == 1);
    g_assert_cmpint(t->started, ==, 1);
    assert_reason(t->reason, "server refused: test");
    g_assert_null(t->g);
    t_teardown(t);
}

static void test_fail_from_outside(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    vu_dev_fail(t->dev, "daemon shutting down");
    g_assert_cmpint(t->disconnected, ==, 1);    /* at once, outside any callback */
    FE_OK(vu_fe_wait_closed(t->fe));
    assert_reason(t->reason, "daemon shutting down");
    g_assert_cmpint(vu_dev_reply_features(t->dev, 0), ==, -EINVAL);
    t_teardown(t);
}

static void test_call_before_kick(void)
{
    /* A frontend that sets the call fd before the kick (QEMU with MSI-X unmasks the
     * vector first) sends no SET_VRING_CALL after the kick: the device starts once the
     * socket is drained, with the call fds it has. */
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    FE_OK(vu_fe_set_u64(t->fe, VU_SET_FEATURES, VP_NET_FEATURES | F_PROTO, false));
    FE_OK(vu_fe_add_mem_reg(t->fe, t->low));
    FE_OK(vu_fe_add_mem_reg(t->fe, t->high));
    for (uint32_t i = 0; i < 2; i++) {
        FE_OK(vu_fe_set_vring_fd(t->fe, VU_SET_VRING_CALL, i, false));
        FE_OK(vu_fe_set_state(t->fe, VU_SET_VRING_NUM, i, vrings[i].num, false));
        FE_OK(vu_fe_set_state(t->fe, VU_SET_VRING_BASE, i, vrings[i].base, false));
        FE_OK(vu_fe_set_vring_addr(t->fe, i, vu_fe_uaddr(t->fe, 0, vrings[i].desc_off),
                                   vu_fe_uaddr(t->fe, 0, vrings[i].avail_off),
                                   vu_fe_uaddr(t->fe, 0, vrings[i].used_off), 0));
        FE_OK(vu_fe_set_vring_fd(t->fe, VU_SET_VRING_KICK, i, false));
    }
    WAIT_FOR(t->started == 1);
    check_started_info(t, 2);
    t_teardown(t);
}

static void test_running_vring_changes(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    t_init_start(t);
    g_assert_cmpint(t->vring_changed, ==, 0);

    /* a new call fd for a running vring (e.g. the guest masked its interrupt) */
    FE_OK(vu_fe_set_vring_fd(t->fe, VU_SET_VRING_CALL, 1, false));
    /* a request with an ack as a barrier: the backend handled everything before it */
    FE_OK(vu_fe_send(t->fe, VU_SET_OWNER, VU_FLAG_NEED_REPLY, NULL, 0, NULL, 0));
    FE_OK(vu_fe_recv_ack(t->fe, VU_SET_OWNER));
    g_assert_cmpint(t->vring_changed, ==, 1);
    g_assert_cmpuint(t->changed.index, ==, 1);
    g_assert_cmphex(t->changed.desc, ==, RAM0_GPA(vrings[1].desc_off));
    g_assert_true(t->changed_enabled);
    g_assert_true(t->changed_call_matches);

    /* polling instead of a call fd */
    FE_OK(vu_fe_set_vring_fd(t->fe, VU_SET_VRING_CALL, 1, true));
    FE_OK(vu_fe_set_state(t->fe, VU_SET_VRING_ENABLE, 1, 0, true));
    g_assert_cmpint(t->vring_changed, ==, 3);
    g_assert_cmpint(t->changed.call_fd, ==, -1);
    g_assert_false(t->changed_enabled);
    t_teardown(t);
}

static void test_running_vring_locked(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    t_init_start(t);
    uint8_t p[40];
    state_payload(p, 0, 128);
    expect_rejected(t, VU_SET_VRING_NUM, p, 8, NULL, 0, "SET_VRING_NUM: vring 0 is running");
    state_payload(p, 1, 3);
    expect_rejected(t, VU_SET_VRING_BASE, p, 8, NULL, 0, "SET_VRING_BASE: vring 1 is running");
    expect_rejected(t, VU_RESET_OWNER, NULL, 0, NULL, 0, "RESET_OWNER while virtqueues are running");
    uint8_t u[8];
    u64_payload(u, VP_NET_FEATURES);
    expect_rejected(t, VU_SET_FEATURES, u, 8, NULL, 0, "changes the features");
    /* after the stop the ring set-up may change and RESET_OWNER is accepted */
    FE_OK(vu_fe_qemu72_stop(t->fe, NULL));
    FE_OK(vu_fe_set_state(t->fe, VU_SET_VRING_NUM, 0, 128, true));
    FE_OK(vu_fe_send(t->fe, VU_RESET_OWNER, VU_FLAG_NEED_REPLY, NULL, 0, NULL, 0));
    FE_OK(vu_fe_recv_ack(t->fe, VU_RESET_OWNER));
    t_teardown(t);
}

static void test_reconnect_replay(void)
{
    /* The backend restarts; QEMU (reconnect=N) replays handshake and start on a new
     * connection with the same guest memory. */
    struct t tt, *t = &tt;
    t_setup(t);
    t_init_start(t);
    vu_glib_free(t->g);
    pump(NULL);
    FE_OK(vu_fe_wait_closed(t->fe));
    g_assert_cmpint(t->disconnected, ==, 0); /* freed, not disconnected */
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++) { /* what the user knew goes with it */
        ring_close(&t->ring[i]);
        t->ring[i].running = t->ring[i].enabled = false;
    }
    t->dev_started = false;

    int sv[2];
    vp_test_socketpair(sv);
    vp_error err = {{0}};
    t->g = vu_glib_new(sv[0], NULL, &test_ops, t, NULL, &err);
    g_assert_nonnull(t->g);
    t->dev = vu_glib_dev(t->g);
    vu_fe_reconnect(t->fe, sv[1]);
    FE_OK(vu_fe_qemu72_init(t->fe));
    FE_OK(vu_fe_qemu72_start(t->fe, VP_NET_FEATURES, vrings));
    WAIT_FOR(t->started == 2);
    check_started_info(t, 2);
    t_teardown(t);
}

static void test_bad_truncated_payload(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    uint8_t m[VU_HDR_SIZE + 3];
    vp_put_le32(m, VU_SET_FEATURES);
    vp_put_le32(m + 4, VU_FLAG_VERSION);
    vp_put_le32(m + 8, 8);
    memset(m + VU_HDR_SIZE, 0, 3);
    int fd = vu_fe_ram_fd(t->fe, 0);
    FE_OK(vu_fe_send_raw(t->fe, m, sizeof(m), &fd, 1));
    g_assert_cmpint(shutdown(vu_fe_sock(t->fe), SHUT_WR), ==, 0);
    expect_disconnect(t, "truncated payload: the frontend closed after 3 of 8 bytes of SET_FEATURES");
    t_teardown(t);
}

static void test_bad_flood_budget(void)
{
    /* 150 requests in one burst (more than the per-call budget of 64) are handled in
     * slices; all of them are answered. */
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    for (unsigned i = 0; i < 150; i++)
        FE_OK(vu_fe_send(t->fe, VU_SET_OWNER, VU_FLAG_NEED_REPLY, NULL, 0, NULL, 0));
    for (unsigned i = 0; i < 150; i++)
        FE_OK(vu_fe_recv_ack(t->fe, VU_SET_OWNER));
    t_teardown(t);
}

/* Replies the socket does not take at once queue (the core never blocks on a full
 * socket): a frontend that reads them late gets all of them in order; one that lets
 * more than 64 KiB of them pile up is dropped with a reason. */
static void test_reply_queue(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    int small = 4096;
    g_assert_cmpint(setsockopt(vu_dev_fd(t->dev), SOL_SOCKET, SO_SNDBUF, &small,
                               sizeof(small)), ==, 0);
    g_assert_cmpint(setsockopt(vu_fe_sock(t->fe), SOL_SOCKET, SO_RCVBUF, &small,
                               sizeof(small)), ==, 0);
    /* 14 KB of replies: more than the socket holds; 48 KB as the output queue counts
     * them (each message's bookkeeping too), under its 64 KiB bound */
    const unsigned n = 700;
    for (unsigned i = 0; i < n; i++)
        FE_OK(vu_fe_send(t->fe, VU_SET_OWNER, VU_FLAG_NEED_REPLY, NULL, 0, NULL, 0));
    pump(NULL);
    g_assert_false(vu_dev_is_broken(t->dev));
    for (unsigned i = 0; i < n; i++)
        FE_OK(vu_fe_recv_ack(t->fe, VU_SET_OWNER));
    /* Now it stops reading for good. */
    for (unsigned i = 0; i < 8000 && !vu_dev_is_broken(t->dev); i++) {
        if (vu_fe_send(t->fe, VU_SET_OWNER, VU_FLAG_NEED_REPLY, NULL, 0, NULL, 0) < 0)
            break;
        pump(NULL);
    }
    WAIT_FOR(t->disconnected == 1);
    assert_reason(t->reason, "the frontend does not read its socket");
    t_teardown(t);
}

/* A frontend set up for more queue pairs than configured (DPDK's virtio-user sends
 * the call fds of all its rings before it negotiates): its call fds are taken, its
 * start is refused at the memory table with a reason, the connection lives on; other
 * requests naming such a queue are still errors. */
static void test_excess_queues(void)
{
    struct t tt, *t = &tt;
    t_setup(t);
    FE_OK(vu_fe_qemu72_init(t->fe));
    FE_OK(vu_fe_set_vring_fd(t->fe, VU_SET_VRING_CALL, 2, false));
    FE_OK(vu_fe_set_vring_fd(t->fe, VU_SET_VRING_CALL, 3, false));
    FE_OK(vu_fe_set_u64(t->fe, VU_SET_FEATURES, VP_NET_FEATURES | F_PROTO, false));
    g_assert_cmpint(vu_fe_add_mem_reg(t->fe, t->low), ==, -EIO);
    assert_reason(vu_dev_error(t->dev), "ADD_MEM_REG: the frontend set up virtqueue 3, but "
                  "this backend offers 1 queue pair(s): start it with at most 1");
    g_assert_cmpuint(vu_dev_excess_queues(t->dev), ==, 4);
    g_assert_false(vu_dev_is_broken(t->dev));
    /* Its other requests on those queues are taken too (DPDK enables its pairs
     * whatever happened), and the queues never run. */
    FE_OK(vu_fe_set_state(t->fe, VU_SET_VRING_ENABLE, 2, 1, true));
    g_assert_false(vu_dev_is_broken(t->dev));
    uint8_t p[8];
    state_payload(p, VU_MAX_QUEUES, 256);
    expect_rejected(t, VU_SET_VRING_NUM, p, 8, NULL, 0, "vring index 64 out of range");
    t_teardown(t);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_default(); /* create its wakeup fd before any fd count */
    g_test_add_func("/vhost-user/qemu72-sequence", test_qemu72_sequence);
    g_test_add_func("/vhost-user/get-features-deferred", test_get_features_deferred);
    g_test_add_func("/vhost-user/get-vring-base-deferred", test_get_vring_base_deferred);
    g_test_add_func("/vhost-user/hot-add-remove", test_hot_add_remove);
    g_test_add_func("/vhost-user/multiqueue-duplicate-add", test_multiqueue_duplicate_add);
    g_test_add_func("/vhost-user/set-mem-table", test_set_mem_table);
    g_test_add_func("/vhost-user/mem-deferred", test_mem_deferred);
    g_test_add_func("/vhost-user/mem-deferred-no-reply-ack", test_mem_deferred_no_reply_ack);
    g_test_add_func("/vhost-user/mem-deferred-set-mem-table", test_mem_deferred_set_mem_table);
    g_test_add_func("/vhost-user/call-before-kick", test_call_before_kick);
    g_test_add_func("/vhost-user/running-vring-changes", test_running_vring_changes);
    g_test_add_func("/vhost-user/running-vring-locked", test_running_vring_locked);
    g_test_add_func("/vhost-user/reconnect-replay", test_reconnect_replay);
    g_test_add_func("/vhost-user/excess-queues", test_excess_queues);
    g_test_add_func("/vhost-user/reply-queue", test_reply_queue);
    g_test_add_func("/vhost-user/fail-and-free-in-callback", test_fail_and_free_in_callback);
    g_test_add_func("/vhost-user/fail-from-outside", test_fail_from_outside);
    g_test_add_func("/vhost-user/bad/truncated-header", test_bad_truncated_header);
    g_test_add_func("/vhost-user/bad/truncated-payload", test_bad_truncated_payload);
    g_test_add_func("/vhost-user/bad/flood-budget", test_bad_flood_budget);
    g_test_add_func("/vhost-user/bad/size-over-limit", test_bad_size_over_limit);
    g_test_add_func("/vhost-user/bad/header-version", test_bad_header_version);
    g_test_add_func("/vhost-user/bad/payload-size", test_bad_payload_size);
    g_test_add_func("/vhost-user/bad/queue-index", test_bad_queue_index);
    g_test_add_func("/vhost-user/bad/fd-count", test_bad_fd_count);
    g_test_add_func("/vhost-user/bad/regions", test_bad_regions);
    g_test_add_func("/vhost-user/bad/vrings", test_bad_vrings);
    g_test_add_func("/vhost-user/bad/unknown-request", test_bad_unknown_request);
    return g_test_run();
}
