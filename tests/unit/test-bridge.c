/*
 * test-bridge.c - the vhost-user -> vhost-pci bridge state machine (client/bridge.c)
 * behind the real vhost-user core (client/vhost_user.c), with a scripted vhost-pci
 * server in the test. No event loop: the test decides when the core reads its socket,
 * so every point where the frontend's socket runs dry ("drained") is chosen here.
 *
 * The message orders of three frontends, each replayed in every interleaving of
 * socket drains (and, in a second pass, with the settle timer firing at each drain):
 *  - QEMU 7.2 (vectors=0): ADD_MEM_REG per region (need_reply), per ring NUM, BASE,
 *    ADDR, KICK, CALL (the real call fd after the kick); GET_VRING_BASE at stop;
 *  - QEMU 10.0 (MSI-X): the call fds before SET_FEATURES, ADD_MEM_REG, per ring NUM,
 *    BASE, ADDR, KICK, then SET_VRING_ENABLE 1 per ring with need_reply, later the
 *    unmasked call fds; at stop SET_VRING_ENABLE 0 (need_reply), GET_VRING_BASE;
 *  - DPDK 22.11 virtio-user: SET_VRING_CALL before SET_FEATURES, SET_MEM_TABLE
 *    (need_reply) instead of ADD_MEM_REG, per ring NUM, BASE, ADDR, KICK, then
 *    SET_VRING_ENABLE ring by ring; at quit SET_VRING_ENABLE 0, GET_VRING_BASE.
 * What reaches the server is checked as it arrives (a registration is never sent
 * before both rings were enabled, always carries exactly virtqueues 0 and 1, and a
 * device is never registered twice without a DEVICE_INFO(DEL) between) and at the end
 * (one registration in effect, with the frontend's current kick/call eventfds, ring
 * addresses and positions; GET_VRING_BASE answered with the positions the device VM
 * handed back; no fd left open).
 *
 * Other cases drive the bridge with single events: a refused memory file (the error
 * line names cause and fix), the renegotiation round (after the start, and before it
 * with --features-from-device's placeholder region), a server restart (registration
 * again, resuming from the used index), a frontend that goes away (DEL, MEMORY DEL),
 * shutdown, and answers that come too late.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>

#include "bridge.h"
#include "bridge_priv.h"
#include "testutil.h"
#include "vhost_user.h"
#include "vu_frontend.h"

#define MiB (1024ULL * 1024)
#define F_PROTO (1ULL << VU_F_PROTOCOL_FEATURES)
#define F_GUEST ((1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF))
#define RAM_SIZE (256 * 1024ULL)
#define RAM_GPA 0x100000000ULL   /* one region: RAM 0 at this guest-physical address */
#define MOVED 5                  /* buffers the scripted device VM uses per registration */

static const struct vu_fe_vring vrings[4] = {
    {256, 0x10000, 0x11000, 0x12000, 3},
    {256, 0x20000, 0x21000, 0x22000, 9},
    {128, 0x30000, 0x31000, 0x32000, 0},
    {128, 0x38000, 0x39000, 0x3a000, 0},
};

/* ------------------------------ the scripted server ------------------------------ */

/** A request the bridge sent, kept until the server answers it. */
struct req {
    struct br_action a;
    struct vp_device_info dev;      /* SEND_HANDSHAKE: copy, fds dup'ed */
    unsigned nregions;
    struct vp_region regions[VP_MAX_REGIONS];
};

typedef enum { FRONTEND_QEMU72, FRONTEND_QEMU10, FRONTEND_DPDK } Frontend;

typedef struct {
    int sv[2];
    struct vu_dev *vu;
    struct br *br;
    struct vu_fe *fe;
    Frontend kind;
    int fds_before;

    /* the server */
    bool defer;                     /* answer at drain points, not at once */
    GPtrArray *pending;             /* struct req * */
    enum br_status mem_answer;      /* verdict on MEMORY_INFO(ADD) */
    const char *mem_reason;
    bool registered;                /* a DEVICE_INFO(ADD) is in effect */
    struct vp_device_info reg;      /* ... its copy (fds dup'ed) */
    uint16_t pos[4];                /* where the "device VM" has moved the rings */
    unsigned nadd, ndel, nmem_add, nmem_del, nfeatures, nconfirm;
    uint64_t features_sent;         /* FEATURE_BITS of the last handshake */
    uint64_t accept;                /* FEATURE_BITS_ACK: accepted bits (0: all) */
    uint64_t feat_accept;           /* ... of a connect-time FEATURE_BITS (0: all) */
    uint64_t confirmed;             /* the last FEATURE_BITS_ACK the bridge sent */
    uint64_t expect_offer;          /* what GET_FEATURES offers (0: VP_NET_FEATURES) */
    unsigned nph_add, nph_del;      /* MEMORY_INFO of the placeholder region */
    unsigned nmem_add_at_ph_del;    /* MEMORY_INFO(ADD)s sent before its DEL */
    unsigned nregions_held;

    /* the frontend side as the test sent it */
    unsigned npairs;                /* queue pairs of the daemon and the frontend */
    bool sent_enable[4];
    bool check_enable;              /* DPDK/QEMU 10: ADD only after both enables */

    /* the bridge's actions */
    bool settle_armed, features_armed;
    bool quit;
    uint64_t features_reply;        /* the last REPLY_FEATURES */
    unsigned ndrop;
    char drop_reason[512];
    GString *log;
} H;

static void req_free(gpointer p)
{
    struct req *r = p;
    vp_device_info_close_fds(&r->dev);
    for (unsigned i = 0; i < r->nregions; i++)
        vp_close_fd(&r->regions[i].fd);
    g_free(r);
}

static int dupfd(int fd)
{
    return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

/* Write the used index of ring @q into the frontend's RAM (what a device does). */
static void set_used_idx(H *h, unsigned q, uint16_t idx)
{
    if (!h->fe)
        return; /* the frontend and its memory are gone */
    uint8_t b[2];
    vp_put_le16(b, idx);
    g_assert_cmpint(pwrite(vu_fe_ram_fd(h->fe, 0), b, 2, (off_t)(vrings[q].used_off + 2)),
                    ==, 2);
}

/* Is @fd the other end of the frontend's eventfd @fe_fd (same counter)? */
static bool same_eventfd(int fd, int fe_fd)
{
    uint64_t one = 1, v = 0;
    if (fd < 0 || fe_fd < 0)
        return fd == fe_fd;
    if (write(fd, &one, 8) != 8)
        return false;
    int fl = fcntl(fe_fd, F_GETFL);
    fcntl(fe_fd, F_SETFL, fl | O_NONBLOCK);
    bool ok = read(fe_fd, &v, 8) == 8 && v == 1;
    fcntl(fe_fd, F_SETFL, fl);
    return ok;
}

static void server_answer(H *h, struct req *r)
{
    const struct br_action *a = &r->a;
    switch (a->type) {
    case BR_ACT_SEND_FEATURES:
        br_post(h->br, &(struct br_event){ .type = BR_EV_FEATURES_ACK, .token = a->token,
                                           .status = BR_OK, .features = h->feat_accept ?
                                           h->feat_accept & a->features : a->features });
        break;
    case BR_ACT_SEND_MEMORY: {
        bool add = a->op == VP_OP_ADD;
        enum br_status st = add ? h->mem_answer : BR_OK;
        if (st == BR_OK)
            h->nregions_held = add ? h->nregions_held + r->nregions
                                   : h->nregions_held - MIN(h->nregions_held, r->nregions);
        br_post(h->br, &(struct br_event){ .type = BR_EV_MEM_ACK, .token = a->token,
                                           .status = st, .reason = h->mem_reason });
        break;
    }
    case BR_ACT_SEND_HANDSHAKE: {
        uint64_t acc = h->accept ? h->accept : a->features;
        if (acc != a->features)
            br_post(h->br, &(struct br_event){ .type = BR_EV_RENEGOTIATE, .token = a->token,
                                               .offered = a->features, .features = acc });
        br_post(h->br, &(struct br_event){ .type = BR_EV_HANDSHAKE_DONE, .token = a->token,
                                           .status = BR_OK, .mem_status = BR_OK,
                                           .features = acc, .renegotiated = acc != a->features });
        break;
    }
    case BR_ACT_SEND_DEVICE_DEL: {
        struct br_event ev = { .type = BR_EV_DEL_ACK, .token = a->token, .status = BR_OK };
        if (h->registered) {
            /* The device VM used MOVED buffers of each ring: positions and used index. */
            ev.npositions = h->reg.nvirtqs;
            for (unsigned q = 0; q < h->reg.nvirtqs; q++) {
                h->pos[q] = (uint16_t)(h->reg.virtqs[q].last_avail_idx + MOVED);
                set_used_idx(h, q, h->pos[q]);
                ev.positions[q] = (struct vp_virtq_pos){ q, h->pos[q] };
            }
            vp_device_info_close_fds(&h->reg);
            h->registered = false;
        }
        br_post(h->br, &ev);
        break;
    }
    default:
        break;
    }
}

/* The server receives @a: check it, then answer now or keep it for later. */
static void server_receive(H *h, const struct br_action *a)
{
    struct req *r = g_new0(struct req, 1);
    r->a = *a;
    vp_device_info_init(&r->dev);
    if (a->type == BR_ACT_SEND_MEMORY || a->type == BR_ACT_SEND_HANDSHAKE) {
        r->nregions = a->nregions;
        for (unsigned i = 0; i < a->nregions; i++) {
            r->regions[i] = a->regions[i];
            r->regions[i].fd = dupfd(a->regions[i].fd);
        }
        r->a.regions = NULL;
    }
    if (a->type == BR_ACT_SEND_MEMORY)
        a->op == VP_OP_ADD ? h->nmem_add++ : h->nmem_del++;
    if (a->type == BR_ACT_SEND_MEMORY && a->regions[0].gpa >= BR_PH_GPA) {
        /* The placeholder: one region of its own, sealed (the server requires it), far
         * from the frontend's memory. */
        g_assert_cmpuint(a->nregions, ==, 1);
        g_assert_cmphex(a->regions[0].gpa, ==, BR_PH_GPA + 1 * BR_PH_SIZE); /* device_id 1 */
        g_assert_cmphex(a->regions[0].size, ==, BR_PH_SIZE);
        if (a->op == VP_OP_ADD) {
            h->nph_add++;
            int seals = fcntl(a->regions[0].fd, F_GET_SEALS);
            g_assert_cmpint(seals & (F_SEAL_SHRINK | F_SEAL_GROW), ==,
                            F_SEAL_SHRINK | F_SEAL_GROW);
        } else {
            h->nph_del++;
            h->nmem_add_at_ph_del = h->nmem_add;
        }
    }
    if (a->type == BR_ACT_SEND_FEATURES)
        h->nfeatures++;
    if (a->type == BR_ACT_SEND_HANDSHAKE) {
        const struct vp_device_info *d = a->dev;
        /* What reaches the server: never a ring the frontend has not enabled, always
         * the NET frontend's receiveq and transmitq, never a second ADD. */
        if (h->check_enable && !(h->sent_enable[0] && h->sent_enable[1]))
            g_error("DEVICE_INFO(ADD) before the frontend enabled both rings");
        if (h->registered)
            g_error("DEVICE_INFO(ADD) while registered (no DEVICE_INFO(DEL) before)");
        g_assert_cmpuint(d->nvirtqs, >=, 2);
        g_assert_cmpuint(d->nvirtqs, <=, 2 * h->npairs);
        g_assert_cmpuint(d->nvirtqs % 2, ==, 0);
        g_assert_cmpuint(a->nregions, >=, 1);
        for (unsigned q = 0; q < d->nvirtqs; q++) {
            if (h->check_enable && !h->sent_enable[q])
                g_error("DEVICE_INFO(ADD) carries virtqueue %u, which is not enabled", q);
            g_assert_cmpuint(d->virtqs[q].index, ==, q);
            g_assert_cmpuint(d->virtqs[q].num, ==, vrings[q].num);
            g_assert_cmphex(d->virtqs[q].desc, ==, RAM_GPA + vrings[q].desc_off);
            g_assert_cmphex(d->virtqs[q].avail, ==, RAM_GPA + vrings[q].avail_off);
            g_assert_cmphex(d->virtqs[q].used, ==, RAM_GPA + vrings[q].used_off);
        }
        h->features_sent = a->features;
        h->nregions_held = MAX(h->nregions_held, a->nregions); /* its MEMORY_INFO */
        r->dev = *d;
        for (unsigned q = 0; q < d->nvirtqs; q++) {
            r->dev.virtqs[q].kick_fd = dupfd(d->virtqs[q].kick_fd);
            r->dev.virtqs[q].call_fd = dupfd(d->virtqs[q].call_fd);
        }
        r->a.dev = NULL;
        h->reg = r->dev;
        for (unsigned q = 0; q < d->nvirtqs; q++) {
            h->reg.virtqs[q].kick_fd = dupfd(d->virtqs[q].kick_fd);
            h->reg.virtqs[q].call_fd = dupfd(d->virtqs[q].call_fd);
        }
        h->registered = true;
        h->nadd++;
    }
    if (a->type == BR_ACT_SEND_DEVICE_DEL)
        h->ndel++;
    if (h->defer) {
        g_ptr_array_add(h->pending, r);
        return;
    }
    server_answer(h, r);
    req_free(r);
}

static void server_answer_all(H *h)
{
    while (h->pending->len) {
        struct req *r = g_ptr_array_steal_index(h->pending, 0);
        server_answer(h, r);
        req_free(r);
    }
}

/* ------------------------------ the bridge's actions ------------------------------ */

static void act(struct br *br, const struct br_action *a, void *opaque)
{
    H *h = opaque;
    (void)br;
    switch (a->type) {
    case BR_ACT_SEND_FEATURES:
    case BR_ACT_SEND_MEMORY:
    case BR_ACT_SEND_HANDSHAKE:
    case BR_ACT_SEND_DEVICE_DEL:
        server_receive(h, a);
        break;
    case BR_ACT_CONFIRM_FEATURES:
        h->nconfirm++;
        h->confirmed = a->features;
        break;
    case BR_ACT_REPLY_FEATURES:
        h->features_reply = a->features;
        if (h->vu && !vu_dev_is_broken(h->vu))
            g_assert_cmpint(vu_dev_reply_features(h->vu, a->features), ==, 0);
        break;
    case BR_ACT_REPLY_MEM:
        g_assert_cmpint(vu_dev_reply_mem(h->vu, a->result), ==, 0);
        break;
    case BR_ACT_REPLY_VRING_BASE:
        g_assert_cmpint(vu_dev_reply_vring_base(h->vu, a->index, a->base), ==, 0);
        break;
    case BR_ACT_DROP_FRONTEND:
        h->ndrop++;
        g_strlcpy(h->drop_reason, a->reason, sizeof(h->drop_reason));
        vu_dev_fail(h->vu, "%s", a->reason);
        break;
    case BR_ACT_TIMER_START:
    case BR_ACT_TIMER_STOP:
        if (a->timer == BR_TIMER_SETTLE)
            h->settle_armed = a->type == BR_ACT_TIMER_START;
        else
            h->features_armed = a->type == BR_ACT_TIMER_START;
        break;
    case BR_ACT_QUIT:
        h->quit = true;
        break;
    }
}

static void log_cb(enum br_log_level level, const char *msg, void *opaque)
{
    H *h = opaque;
    static const char *const names[] = { "debug", "info", "message", "warning", "error" };
    g_string_append_printf(h->log, "%s: %s\n", names[level], msg);
    if (g_getenv("VP_TEST_SHOW_LOGS"))
        g_printerr("%s: %s\n", names[level], msg);
}

static bool log_has(H *h, const char *s)
{
    return strstr(h->log->str, s) != NULL;
}

/* ------------------------------ the vhost-user core's callbacks ------------------------------ */

static int cb_get_features(struct vu_dev *v, uint64_t *f, void *o)
{
    (void)v;
    (void)f;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_GET_FEATURES });
    return VU_DEFERRED;
}

static void cb_features_set(struct vu_dev *v, uint64_t f, void *o)
{
    (void)v;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_FEATURES_SET, .features = f });
}

static void cb_vring_started(struct vu_dev *v, const struct vu_vring_info *i, void *o)
{
    (void)v;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_RING_STARTED, .ring = *i });
}

static void cb_vring_changed(struct vu_dev *v, const struct vu_vring_info *i, void *o)
{
    (void)v;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_RING_CHANGED, .ring = *i });
}

static int cb_mem_added(struct vu_dev *v, const struct vp_region *r, void *o)
{
    (void)v;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_MEM_ADD, .region = *r });
    return VU_DEFERRED;
}

static int cb_mem_removed(struct vu_dev *v, const struct vp_region *r, void *o)
{
    (void)v;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_MEM_DEL, .region = *r });
    return VU_DEFERRED;
}

static int cb_get_vring_base(struct vu_dev *v, uint32_t index, uint16_t *b, void *o)
{
    (void)v;
    (void)b;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_RING_STOP, .index = index });
    return VU_DEFERRED;
}

static void cb_drained(struct vu_dev *v, void *o)
{
    (void)v;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_DRAINED });
}

static void cb_disconnected(struct vu_dev *v, const char *reason, void *o)
{
    (void)v;
    br_post(((H *)o)->br, &(struct br_event){ .type = BR_EV_FE_GONE, .reason = reason });
}

static const struct vu_dev_ops ops = {
    .get_features = cb_get_features, .features_set = cb_features_set,
    .vring_started = cb_vring_started, .vring_changed = cb_vring_changed,
    .mem_added = cb_mem_added, .mem_removed = cb_mem_removed,
    .get_vring_base = cb_get_vring_base, .drained = cb_drained,
    .disconnected = cb_disconnected,
};

/* ------------------------------ the harness ------------------------------ */

/* The backend reads everything the frontend sent (the socket drains); with a deferred
 * server, the server then answers what it got. */
static void drain(H *h)
{
    if (h->vu && !vu_dev_is_broken(h->vu)) {
        vu_dev_flush_output(h->vu); /* replies the socket did not take at once */
        vu_dev_handle_input(h->vu);
    }
    if (h->defer) {
        server_answer_all(h);
        if (h->vu && !vu_dev_is_broken(h->vu))
            vu_dev_handle_input(h->vu);
    }
}

/* The frontend waits for a reply: the backend (and the server) run meanwhile. */
static void pump(void *opaque)
{
    drain(opaque);
}

static void fire_settle(H *h)
{
    if (h->settle_armed) {
        h->settle_armed = false;
        br_post(h->br, &(struct br_event){ .type = BR_EV_SETTLE_TIMER });
    }
}

/** Variations of the set-up. */
typedef struct {
    bool unsealed;                  /* the frontend's RAM is not sealed (DPDK) */
    uint64_t ram_size;              /* 0: RAM_SIZE */
    bool log_refusals_only;         /* --memory-refusal log */
    unsigned pairs;                 /* queue pairs (0: 1) */
    bool features_from_device;      /* --features-from-device */
    uint64_t feat_accept;           /* H.feat_accept, set before the server is up */
    enum br_status ph_answer;       /* verdict on the placeholder's MEMORY_INFO(ADD) */
} HOpts;

static void h_setup_opts(H *h, Frontend kind, bool defer, const HOpts *o)
{
    memset(h, 0, sizeof(*h));
    h->kind = kind;
    h->defer = defer;
    h->log = g_string_new(NULL);
    h->fds_before = vp_count_open_fds();
    h->pending = g_ptr_array_new_with_free_func(req_free);
    h->mem_answer = BR_OK;
    h->check_enable = kind != FRONTEND_QEMU72;
    vp_device_info_init(&h->reg);
    vp_test_socketpair(h->sv);
    h->npairs = o->pairs ? o->pairs : 1;
    struct br_config cfg = { .device_id = 1, .nqueues = 2 * h->npairs,
                             .log_refusals_only = o->log_refusals_only,
                             .features_from_device = o->features_from_device };
    h->feat_accept = o->feat_accept;
    h->br = br_new(&cfg, act, log_cb, h);
    g_assert_nonnull(h->br);
    vp_error err = { "" };
    struct vu_dev_config vc = { .nqueues = 2 * h->npairs };
    h->vu = vu_dev_new(h->sv[0], &vc, &ops, h, &err);
    g_assert_nonnull(h->vu);
    h->fe = vu_fe_new(h->sv[1], 2 * h->npairs, pump, h);
    vu_fe_set_timeout(h->fe, 2000);
    uint64_t size = o->ram_size ? o->ram_size : RAM_SIZE;
    vu_fe_set_ram_sealed(h->fe, !o->unsealed);
    g_assert_cmpint(vu_fe_ram_new(h->fe, size), ==, 0);
    g_assert_cmpint(vu_fe_region_new(h->fe, 0, 0, RAM_GPA, size), ==, 0);
    for (unsigned q = 0; q < 2 * h->npairs; q++) {
        g_assert_cmpint(vu_fe_ring_at(h->fe, &vrings[q]), ==, 0);
        h->pos[q] = vrings[q].base;
    }
    /* The server is there before the frontend. */
    h->mem_answer = o->ph_answer;
    br_post(h->br, &(struct br_event){ .type = BR_EV_SRV_UP });
    drain(h);
    h->mem_answer = BR_OK;
    br_post(h->br, &(struct br_event){ .type = BR_EV_FE_CONNECTED });
}

static void h_setup(H *h, Frontend kind, bool defer)
{
    h_setup_opts(h, kind, defer, &(HOpts){ 0 });
}

static void h_teardown(H *h)
{
    vu_fe_free(h->fe);
    h->fe = NULL;
    if (h->vu) {
        drain(h); /* EOF: the frontend went away */
        vu_dev_free(h->vu);
    }
    server_answer_all(h);
    if (log_has(h, "which the table does not allow"))
        g_error("a transition outside the table:\n%s", h->log->str);
    br_free(h->br);
    vp_device_info_close_fds(&h->reg);
    g_ptr_array_free(h->pending, TRUE);
    g_string_free(h->log, TRUE);
    vp_assert_fds(h->fds_before);
}

#define FE_OK(call)                                                             \
    do {                                                                        \
        int r_ = (call);                                                        \
        if (r_ != 0)                                                            \
            g_error("%s: %d: %s\nbridge log:\n%s", #call, r_, vu_fe_error(h->fe), \
                    h->log->str);                                               \
    } while (0)

/* The frontend's negotiation before its start (replies awaited, not interleaved). */
static void fe_init(H *h)
{
    if (h->kind == FRONTEND_DPDK)
        FE_OK(vu_fe_dpdk_init(h->fe));
    else if (h->kind == FRONTEND_QEMU10)
        FE_OK(vu_fe_qemu10_init(h->fe));
    else
        FE_OK(vu_fe_qemu72_init(h->fe));
    g_assert_cmphex(vu_fe_offered_features(h->fe), ==,
                    (h->expect_offer ? h->expect_offer : VP_NET_FEATURES) | F_PROTO);
    drain(h);
}

/* One step of a start or stop sequence. */
typedef enum {
    S_FEATURES, S_MEM, S_NUM, S_BASE, S_ADDR, S_KICK, S_CALL, S_ENABLE, S_DISABLE,
    S_ENABLE_R, S_DISABLE_R, S_GET_BASE, S_END
} StepKind;

typedef struct {
    StepKind kind;
    uint32_t q;
} Step;

/* Does the frontend wait for a reply after this step (a drain point it forces)? */
static bool step_waits(H *h, const Step *s)
{
    (void)h;
    return s->kind == S_MEM || s->kind == S_ENABLE_R || s->kind == S_DISABLE_R ||
           s->kind == S_GET_BASE;
}

static uint32_t got_base[2];

static void step_run(H *h, const Step *s)
{
    uint32_t q = s->q;
    switch (s->kind) {
    case S_FEATURES:
        FE_OK(vu_fe_set_u64(h->fe, VU_SET_FEATURES,
                            (F_GUEST & vu_fe_offered_features(h->fe)) | F_PROTO, false));
        break;
    case S_MEM:
        if (h->kind == FRONTEND_DPDK)
            FE_OK(vu_fe_set_mem_table(h->fe));
        else
            FE_OK(vu_fe_add_mem_reg(h->fe, 0));
        break;
    case S_NUM:
        FE_OK(vu_fe_set_state(h->fe, VU_SET_VRING_NUM, q, vrings[q].num, false));
        break;
    case S_BASE:
        FE_OK(vu_fe_set_state(h->fe, VU_SET_VRING_BASE, q, h->pos[q], false));
        break;
    case S_ADDR:
        FE_OK(vu_fe_set_vring_addr(h->fe, q, vu_fe_uaddr(h->fe, 0, vrings[q].desc_off),
                                   vu_fe_uaddr(h->fe, 0, vrings[q].avail_off),
                                   vu_fe_uaddr(h->fe, 0, vrings[q].used_off), 0));
        break;
    case S_KICK:
        FE_OK(vu_fe_set_vring_fd(h->fe, VU_SET_VRING_KICK, q, false));
        break;
    case S_CALL:
        FE_OK(vu_fe_set_vring_fd(h->fe, VU_SET_VRING_CALL, q, false));
        break;
    case S_ENABLE:
    case S_ENABLE_R:
    case S_DISABLE:
    case S_DISABLE_R: {
        bool on = s->kind == S_ENABLE || s->kind == S_ENABLE_R;
        h->sent_enable[q] = on;
        FE_OK(vu_fe_set_state(h->fe, VU_SET_VRING_ENABLE, q, on,
                              s->kind == S_ENABLE_R || s->kind == S_DISABLE_R));
        break;
    }
    case S_GET_BASE:
        FE_OK(vu_fe_get_vring_base(h->fe, q, &got_base[q]));
        break;
    case S_END:
        break;
    }
}

#define R(k, q) { k, q }
#define RING(q) R(S_NUM, q), R(S_BASE, q), R(S_ADDR, q), R(S_KICK, q)

static const Step qemu72_start[] = {
    R(S_FEATURES, 0), R(S_MEM, 0), RING(0), R(S_CALL, 0), RING(1), R(S_CALL, 1), R(S_END, 0)
};
static const Step qemu72_stop[] = { R(S_GET_BASE, 0), R(S_GET_BASE, 1), R(S_END, 0) };
static const Step qemu10_start[] = {
    R(S_CALL, 0), R(S_CALL, 1), R(S_FEATURES, 0), R(S_MEM, 0), RING(0), RING(1),
    R(S_ENABLE_R, 0), R(S_ENABLE_R, 1), R(S_CALL, 0), R(S_CALL, 1), R(S_END, 0)
};
static const Step qemu10_stop[] = {
    R(S_DISABLE_R, 0), R(S_DISABLE_R, 1), R(S_GET_BASE, 0), R(S_GET_BASE, 1), R(S_END, 0)
};
static const Step dpdk_start[] = {
    R(S_CALL, 0), R(S_CALL, 1), R(S_FEATURES, 0), R(S_MEM, 0), RING(0), RING(1),
    R(S_ENABLE, 0), R(S_ENABLE, 1), R(S_END, 0)
};
static const Step dpdk_stop[] = {
    R(S_DISABLE, 0), R(S_DISABLE, 1), R(S_GET_BASE, 0), R(S_GET_BASE, 1), R(S_END, 0)
};

/* Gaps of @seq where the test chooses whether the socket drains (after steps that do
 * not wait for a reply, except the last, after which it always drains). */
static unsigned free_gaps(H *h, const Step *seq, unsigned *idx)
{
    unsigned n = 0;
    for (unsigned i = 0; seq[i].kind != S_END; i++)
        if (!step_waits(h, &seq[i]) && seq[i + 1].kind != S_END)
            idx[n++] = i;
    return n;
}

/* Play @seq draining at the gaps set in @mask (bit k: free gap k); with @timer the
 * settle timer fires at every drain where it is armed. */
static void play(H *h, const Step *seq, uint64_t mask, bool timer)
{
    unsigned idx[32], n = free_gaps(h, seq, idx), k = 0;
    for (unsigned i = 0; seq[i].kind != S_END; i++) {
        step_run(h, &seq[i]);
        bool d = step_waits(h, &seq[i]) || seq[i + 1].kind == S_END;
        if (k < n && idx[k] == i)
            d = (mask >> k++) & 1;
        if (d) {
            drain(h);
            if (timer)
                fire_settle(h);
        }
    }
    drain(h);
}

/* The final state of a started device: one registration in effect with the
 * frontend's current fds and ring positions; memory and features on the server. */
static void check_registered(H *h)
{
    fire_settle(h);      /* the settle timer, if still armed, fires at last */
    drain(h);
    if (!h->registered || br_state(h->br) != BR_SERVED)
        g_error("not registered at the end (state %s)\nbridge log:\n%s",
                br_state_name(br_state(h->br)), h->log->str);
    g_assert_cmphex(br_served_mask(h->br), ==, 3);
    g_assert_cmphex(h->features_sent, ==, F_GUEST & vu_fe_offered_features(h->fe));
    g_assert_cmpuint(h->nregions_held, >=, 1);
    for (unsigned q = 0; q < 2; q++) {
        const struct vp_virtq *v = &h->reg.virtqs[q];
        g_assert_cmpuint(v->last_avail_idx, ==, h->pos[q]);
        g_assert_cmpint(v->kick_fd, >=, 0);
        /* kick: the frontend writes, the device VM's copy reads */
        uint64_t one = 1, val = 0;
        int fe_kick = vu_fe_vring_fd(h->fe, VU_SET_VRING_KICK, q);
        if (write(fe_kick, &one, 8) != 8)
            g_error("virtqueue %u: kick fd %d: %s", q, fe_kick, g_strerror(errno));
        g_assert_cmpint(read(v->kick_fd, &val, 8), ==, 8);
        /* call: the device VM's copy writes, the frontend's current eventfd reads */
        if (!same_eventfd(v->call_fd, vu_fe_vring_fd(h->fe, VU_SET_VRING_CALL, q)))
            g_error("virtqueue %u: the device VM has a stale call fd\nbridge log:\n%s", q,
                    h->log->str);
    }
}

/* Stop: the positions the device VM handed back answer GET_VRING_BASE. */
static void check_stopped(H *h)
{
    g_assert_false(h->registered);
    for (unsigned q = 0; q < 2; q++)
        g_assert_cmpuint(got_base[q], ==, h->pos[q]);
    g_assert_cmpuint(h->ndrop, ==, 0);
}

static void run_orders(Frontend kind, const Step *start, const Step *stop)
{
    unsigned idx[32];
    H probe;
    h_setup(&probe, kind, false);
    unsigned n = free_gaps(&probe, start, idx);
    unsigned ns = free_gaps(&probe, stop, idx);
    h_teardown(&probe);
    unsigned runs = 0, max_adds = 0;
    /* Two passes: the settle timer only at the end with a server that answers at
     * once, and the timer at every drain with a server that answers at drains. */
    for (int pass = 0; pass < 2; pass++) {
        bool timer = pass, defer = pass;
        for (uint64_t mask = 0; mask < (1ULL << n); mask++) {
            H h;
            h_setup(&h, kind, defer);
            fe_init(&h);
            play(&h, start, mask, timer);
            check_registered(&h);
            max_adds = MAX(max_adds, h.nadd);
            play(&h, stop, mask & ((1ULL << ns) - 1), timer);
            check_stopped(&h);
            /* restart on the same connection: registered again from the positions */
            play(&h, start, ~mask, timer);
            check_registered(&h);
            h_teardown(&h);
            runs++;
        }
    }
    g_test_message("%u runs (%u interleavings x 2 passes), at most %u "
                   "registrations per run", runs, 1u << n, max_adds);
}

static void test_orders_qemu72(void)
{
    run_orders(FRONTEND_QEMU72, qemu72_start, qemu72_stop);
}

static void test_orders_qemu10(void)
{
    run_orders(FRONTEND_QEMU10, qemu10_start, qemu10_stop);
}

static void test_orders_dpdk(void)
{
    run_orders(FRONTEND_DPDK, dpdk_start, dpdk_stop);
}

/* ------------------------------ single cases ------------------------------ */

/* The device VM refuses the frontend's first memory: DPDK's SET_MEM_TABLE gets a
 * failure reply (DPDK: "Failed to start device"), one error line says what was
 * refused, why, and what fixes it; nothing is registered. */
static void test_refused_memory(void)
{
    struct {
        HOpts o;
        const char *fix;
        int expect;
    } cases[] = {
        { { .unsealed = true }, "start vhost-pci-server with --allow-unsealed", -EIO },
        { { .ram_size = 3 * 65536 }, "not a power of two", -EIO },
        { { .unsealed = true, .log_refusals_only = true }, "--allow-unsealed", 0 },
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        H hh, *h = &hh;
        h_setup_opts(h, FRONTEND_DPDK, false, &cases[i].o);
        h->mem_answer = BR_REJECTED;
        h->mem_reason = "MEMORY_INFO_ACK(ADD_FAIL): scripted refusal";
        fe_init(h);
        play(h, (const Step[]){ R(S_CALL, 0), R(S_CALL, 1), R(S_FEATURES, 0), R(S_END, 0) },
             0, false);
        vu_fe_clear_ack(h->fe);
        g_assert_cmpint(vu_fe_set_mem_table(h->fe), ==, cases[i].expect);
        g_assert_cmpuint(vu_fe_last_ack(h->fe), ==, cases[i].expect ? 1 : 0);
        g_assert_cmpuint(h->nmem_add, ==, 1);
        if (!log_has(h, cases[i].fix) || !log_has(h, "scripted refusal"))
            g_error("case %u: no cause/fix in the log:\n%s", i, h->log->str);
        if (cases[i].expect) {
            g_assert_true(log_has(h, "error: add of region gpa 0x100000000"));
            g_assert_true(log_has(h, "the frontend gets a failure reply"));
            struct vp_region r[4];
            g_assert_cmpuint(vu_dev_get_regions(h->vu, r, 4), ==, 0);
        } else {
            g_assert_true(log_has(h, "--memory-refusal log: the frontend gets success"));
        }
        g_assert_cmpuint(h->nadd, ==, 0);
        h_teardown(h);
    }
}

/* Spec 1.5.1.1 with QEMU: the device VM accepts less; the bridge confirms the accepted
 * bits (FEATURE_BITS_ACK), drops the connection so that QEMU reconnects, tells the
 * device VM the frontend is gone, and offers only the accepted bits from then on. */
static void test_renegotiation(void)
{
    H hh, *h = &hh;
    h_setup(h, FRONTEND_QEMU72, false);
    h->accept = F_GUEST & ~(1ULL << VP_VIRTIO_NET_F_MRG_RXBUF);
    fe_init(h);
    play(h, qemu72_start, 0, true);
    fire_settle(h);
    g_assert_cmpuint(h->nconfirm, ==, 1);
    g_assert_cmpuint(h->ndrop, ==, 1);
    g_assert_nonnull(strstr(h->drop_reason, "feature renegotiation"));
    /* QEMU cannot renegotiate after its start: the log names the fix. */
    g_assert_nonnull(strstr(h->drop_reason, "run vhost-pci-client with --features-from-device"));
    g_assert_cmpuint(strlen(h->drop_reason), <, sizeof(((vp_error *)0)->msg)); /* logged whole */
    g_assert_true(log_has(h, "a QEMU frontend cannot: run vhost-pci-client with "
                          "--features-from-device"));
    g_assert_cmpint(vu_fe_wait_closed(h->fe), ==, 0);
    drain(h);
    g_assert_cmpint(br_state(h->br), ==, BR_IDLE);
    g_assert_cmpuint(h->ndel, ==, 1);     /* the frontend is gone for the device VM */
    g_assert_cmpuint(h->nmem_del, ==, 1);
    br_post(h->br, &(struct br_event){ .type = BR_EV_FE_CONNECTED });
    br_post(h->br, &(struct br_event){ .type = BR_EV_GET_FEATURES });
    g_assert_cmphex(h->features_reply, ==, VP_NET_FEATURES & ~(1ULL << VP_VIRTIO_NET_F_MRG_RXBUF));
    h_teardown(h);
}

#define F_NO_MRG (VP_NET_FEATURES & ~(1ULL << VP_VIRTIO_NET_F_MRG_RXBUF))

/* --features-from-device with QEMU 7.2's order, the device VM's driver refusing
 * MRG_RXBUF: on connecting to the server the placeholder region creates the device,
 * FEATURE_BITS goes to the driver, its smaller answer is confirmed (FEATURE_BITS_ACK of
 * the accepted set) and is what GET_FEATURES offers; the frontend starts with it, is
 * served with no renegotiation round and no drop, and the placeholder leaves the device
 * VM once the frontend's memory is there. With @defer the server answers only when the
 * frontend waits (GET_FEATURES waits for the device VM's answer, not the timer). */
static void features_from_device_reduced(bool defer)
{
    H hh, *h = &hh;
    h_setup_opts(h, FRONTEND_QEMU72, defer,
                 &(HOpts){ .features_from_device = true, .feat_accept = F_NO_MRG });
    if (!defer) {
        g_assert_cmpuint(h->nph_add, ==, 1);
        g_assert_cmpuint(h->nfeatures, ==, 1);
        g_assert_cmpuint(h->nconfirm, ==, 1);
    }
    h->expect_offer = F_NO_MRG;
    fe_init(h);
    g_assert_cmpuint(h->nph_add, ==, 1);
    g_assert_cmpuint(h->nfeatures, ==, 1);
    g_assert_cmpuint(h->nconfirm, ==, 1);
    g_assert_cmphex(h->confirmed, ==, F_NO_MRG);
    g_assert_cmphex(h->features_reply, ==, F_NO_MRG);
    g_assert_false(h->features_armed);   /* answered by the device VM, not the timer */
    char *round = g_strdup_printf("message: feature renegotiation (spec 1.5.1.1): "
                                  "FEATURE_BITS_ACK 0x%" G_GINT64_MODIFIER "x has fewer bits "
                                  "than the offered 0x%" G_GINT64_MODIFIER "x (refused 0x8000)",
                                  (guint64)F_NO_MRG, (guint64)VP_NET_FEATURES);
    g_assert_true(log_has(h, round));
    g_free(round);
    g_assert_false(log_has(h, "provisional"));
    g_assert_cmpuint(h->nph_del, ==, 0);  /* no memory of the frontend yet */
    play(h, qemu72_start, 0, true);
    fire_settle(h);
    check_registered(h);
    g_assert_cmphex(h->features_sent, ==, F_GUEST & F_NO_MRG);
    g_assert_cmpuint(h->ndrop, ==, 0);
    g_assert_false(log_has(h, "warning: feature renegotiation"));
    g_assert_cmpuint(h->nph_del, ==, 1);
    g_assert_cmpuint(h->nmem_add_at_ph_del, ==, 2);  /* after the frontend's region */
    g_assert_cmpuint(h->nregions_held, ==, 1);       /* the frontend's only */
    /* A reconnecting frontend gets the accepted set at once; no second placeholder. */
    shutdown(vu_fe_sock(h->fe), SHUT_RDWR);
    drain(h);
    br_post(h->br, &(struct br_event){ .type = BR_EV_FE_CONNECTED });
    br_post(h->br, &(struct br_event){ .type = BR_EV_GET_FEATURES });
    g_assert_cmphex(h->features_reply, ==, F_NO_MRG);
    g_assert_cmpuint(h->nph_add, ==, 1);
    h_teardown(h);
}

static void test_features_from_device_reduced(void)
{
    features_from_device_reduced(false);
}

static void test_features_from_device_deferred(void)
{
    features_from_device_reduced(true);
}

/* --features-from-device, the driver accepts everything: no FEATURE_BITS_ACK, the
 * full set is offered, the placeholder still goes once the frontend's memory is there. */
static void test_features_from_device_all(void)
{
    H hh, *h = &hh;
    h_setup_opts(h, FRONTEND_QEMU10, false, &(HOpts){ .features_from_device = true });
    fe_init(h);
    g_assert_cmpuint(h->nph_add, ==, 1);
    g_assert_cmpuint(h->nconfirm, ==, 0);
    g_assert_cmphex(h->features_reply, ==, VP_NET_FEATURES);
    play(h, qemu10_start, 0, true);
    fire_settle(h);
    check_registered(h);
    g_assert_cmpuint(h->nph_del, ==, 1);
    g_assert_cmpuint(h->nregions_held, ==, 1);
    h_teardown(h);
}

/* --features-from-device, the placeholder is not taken (@answer): the offer goes
 * without it (answered by the server, not the driver: nothing to confirm), with the
 * warning @warning, after @ndel MEMORY_INFO(DEL) of the placeholder; the frontend's
 * registration then goes as without the option. */
static void check_placeholder_not_taken(enum br_status answer, const char *warning,
                                        unsigned ndel)
{
    H hh, *h = &hh;
    h_setup_opts(h, FRONTEND_QEMU72, false,
                 &(HOpts){ .features_from_device = true, .ph_answer = answer,
                           .feat_accept = F_NO_MRG });
    g_assert_cmpuint(h->nph_add, ==, 1);
    g_assert_cmpuint(h->nph_del, ==, ndel);
    g_assert_cmpuint(h->nfeatures, ==, 1);
    g_assert_cmpuint(h->nconfirm, ==, 0);
    g_assert_true(log_has(h, warning));
    h->expect_offer = F_NO_MRG;
    fe_init(h);
    play(h, qemu72_start, 0, true);
    fire_settle(h);
    check_registered(h);
    g_assert_cmpuint(h->nph_del, ==, ndel);
    h_teardown(h);
}

/* The server refuses the placeholder: a warning, no DEL. */
static void test_features_from_device_refused(void)
{
    check_placeholder_not_taken(BR_REJECTED, "warning: --features-from-device: the "
                                "placeholder region was not taken", 0);
}

/* The placeholder's MEMORY_INFO(ADD) gets no answer in time: the device VM's driver
 * may still take it late (a timed-out job finishes silently on the server), so the
 * client sends its DEL at once; it queues behind the ADD on the server. Without it
 * the region stayed in the device VM until the connection ended. */
static void test_features_from_device_no_answer(void)
{
    check_placeholder_not_taken(BR_NO_ANSWER, "in case the device VM takes it late", 1);
}

/* --features-from-device, the server goes away before it answered the placeholder:
 * its late answer is not taken for the placeholder's, and the next connection
 * starts over with a new placeholder. */
static void test_features_from_device_server_lost(void)
{
    H hh, *h = &hh;
    h_setup_opts(h, FRONTEND_QEMU72, false, &(HOpts){ .features_from_device = true });
    g_assert_cmpuint(h->nph_add, ==, 1);
    g_assert_cmpuint(h->nfeatures, ==, 1);
    br_post(h->br, &(struct br_event){ .type = BR_EV_SRV_DOWN, .reason = "scripted" });
    h->defer = true;
    br_post(h->br, &(struct br_event){ .type = BR_EV_SRV_UP });
    g_assert_cmpuint(h->nph_add, ==, 2);
    g_assert_cmpuint(h->pending->len, ==, 1);   /* its MEMORY_INFO(ADD), unanswered */
    br_post(h->br, &(struct br_event){ .type = BR_EV_SRV_DOWN, .reason = "scripted" });
    server_answer_all(h);                       /* the lost server's answer, late */
    g_assert_cmpuint(h->nfeatures, ==, 1);      /* not taken for the placeholder's */
    h->defer = false;
    h->feat_accept = F_NO_MRG;
    br_post(h->br, &(struct br_event){ .type = BR_EV_SRV_UP });
    g_assert_cmpuint(h->nph_add, ==, 3);
    g_assert_cmpuint(h->nfeatures, ==, 2);
    g_assert_cmpuint(h->nconfirm, ==, 1);
    h->expect_offer = F_NO_MRG;
    fe_init(h);
    g_assert_cmphex(h->features_reply, ==, F_NO_MRG);
    h_teardown(h);
}

/* The server restarts while the device VM moved the rings: the bridge registers the
 * device again when the server is back, resuming from the rings' used indexes (not
 * from the stale bases of the start), and says so. */
static void test_server_restart_resumes(void)
{
    H hh, *h = &hh;
    h_setup(h, FRONTEND_QEMU72, false);
    fe_init(h);
    play(h, qemu72_start, 0, false);
    check_registered(h);
    h->pos[0] = 4000;
    h->pos[1] = 65530;
    set_used_idx(h, 0, h->pos[0]);
    set_used_idx(h, 1, h->pos[1]);
    /* The server forgets everything of ours. */
    vp_device_info_close_fds(&h->reg);
    h->registered = false;
    h->nregions_held = 0;
    br_post(h->br, &(struct br_event){ .type = BR_EV_SRV_DOWN, .reason = "scripted" });
    g_assert_cmpint(br_state(h->br), ==, BR_READY);
    br_post(h->br, &(struct br_event){ .type = BR_EV_SRV_UP });
    check_registered(h);
    g_assert_true(log_has(h, "virtqueue 0: the frontend set base 3 but the ring's used index "
                          "is 4000: resuming from the used index"));
    g_assert_cmpuint(h->nadd, ==, 2);
    h_teardown(h);
}

/* A frontend that quits right after its start, before the server answered: the
 * DEVICE_INFO(DEL) follows the ADD, the late handshake answer changes nothing, and
 * GET_VRING_BASE gets the positions the DEL handed back. */
static void test_quit_while_registering(void)
{
    H hh, *h = &hh;
    h_setup(h, FRONTEND_DPDK, true);
    fe_init(h);
    play(h, dpdk_start, 0, false);
    fire_settle(h);
    g_assert_cmpint(br_state(h->br), ==, BR_REGISTERING);
    g_assert_cmpuint(h->pending->len, ==, 1);  /* the handshake, unanswered */
    h->defer = false;                           /* from now on the server answers ... */
    struct req *r = g_ptr_array_steal_index(h->pending, 0);
    h->defer = true;
    FE_OK(vu_fe_set_state(h->fe, VU_SET_VRING_ENABLE, 0, 0, false));
    FE_OK(vu_fe_set_state(h->fe, VU_SET_VRING_ENABLE, 1, 0, false));
    vu_dev_handle_input(h->vu);                 /* ... but not yet */
    g_assert_cmpint(br_state(h->br), ==, BR_STOPPING);
    server_answer(h, r);                        /* the ADD's answer, late */
    req_free(r);
    g_assert_cmpint(br_state(h->br), ==, BR_STOPPING);
    FE_OK(vu_fe_get_vring_base(h->fe, 0, &got_base[0]));
    FE_OK(vu_fe_get_vring_base(h->fe, 1, &got_base[1]));
    check_stopped(h);
    g_assert_cmpuint(h->nadd, ==, 1);
    g_assert_cmpuint(h->ndel, ==, 1);
    g_assert_cmpint(br_state(h->br), ==, BR_CONFIGURING);
    h_teardown(h);
}

/* The frontend goes away: the device VM forgets its frontend and its memory. */
static void test_frontend_gone(void)
{
    H hh, *h = &hh;
    h_setup(h, FRONTEND_QEMU10, false);
    fe_init(h);
    play(h, qemu10_start, 0, false);
    check_registered(h);
    shutdown(vu_fe_sock(h->fe), SHUT_RDWR);
    drain(h);
    g_assert_cmpint(br_state(h->br), ==, BR_IDLE);
    g_assert_false(h->registered);
    g_assert_cmpuint(h->nmem_del, ==, 1);
    g_assert_cmpuint(h->nregions_held, ==, 0);
    h_teardown(h);
}

/* Shutdown waits for DEVICE_INFO(DEL)'s answer; without a device it quits at once. */
static void test_shutdown(void)
{
    H hh, *h = &hh;
    h_setup(h, FRONTEND_QEMU72, true);
    fe_init(h);
    br_post(h->br, &(struct br_event){ .type = BR_EV_SHUTDOWN });
    g_assert_true(h->quit);
    h_teardown(h);

    h_setup(h, FRONTEND_QEMU72, true);
    fe_init(h);
    play(h, qemu72_start, 0, false);
    check_registered(h);
    br_post(h->br, &(struct br_event){ .type = BR_EV_SHUTDOWN });
    g_assert_false(h->quit);
    g_assert_cmpuint(h->pending->len, ==, 1);
    server_answer_all(h);
    g_assert_true(h->quit);
    g_assert_true(log_has(h, "shutdown: done"));
    h_teardown(h);
}

/* Two queue pairs, DPDK's order: the device is registered with pair 0 once its rings
 * are enabled, then pair 1's enables make it DEVICE_INFO(DEL) + ADD with 4 virtqueues
 * from the positions; disabling pair 1 goes back to 2; pair 0's positions survive. */
static void test_two_pairs(void)
{
    H hh, *h = &hh;
    h_setup_opts(h, FRONTEND_DPDK, false, &(HOpts){ .pairs = 2 });
    fe_init(h);
    static const Step start[] = {
        R(S_CALL, 0), R(S_CALL, 1), R(S_CALL, 2), R(S_CALL, 3), R(S_FEATURES, 0), R(S_MEM, 0),
        RING(0), RING(1), RING(2), RING(3), R(S_ENABLE, 0), R(S_ENABLE, 1), R(S_END, 0)
    };
    play(h, start, 0, false);
    fire_settle(h);
    drain(h);
    g_assert_true(h->registered);
    g_assert_cmpuint(h->reg.nvirtqs, ==, 2);
    play(h, (const Step[]){ R(S_ENABLE, 2), R(S_ENABLE, 3), R(S_END, 0) }, 0, false);
    fire_settle(h);
    drain(h);
    g_assert_true(h->registered);
    g_assert_cmpuint(h->reg.nvirtqs, ==, 4);
    g_assert_cmphex(br_served_mask(h->br), ==, 0xf);
    g_assert_cmpuint(h->reg.virtqs[0].last_avail_idx, ==, vrings[0].base + MOVED);
    g_assert_cmpuint(h->reg.virtqs[3].last_avail_idx, ==, vrings[3].base);
    play(h, (const Step[]){ R(S_DISABLE, 2), R(S_DISABLE, 3), R(S_END, 0) }, 0, false);
    fire_settle(h);
    drain(h);
    g_assert_cmpuint(h->reg.nvirtqs, ==, 2);
    g_assert_cmpuint(h->reg.virtqs[0].last_avail_idx, ==, vrings[0].base + 2 * MOVED);
    g_assert_cmpuint(h->nadd, ==, 3);
    g_assert_cmpuint(h->ndel, ==, 2);
    h_teardown(h);
}

/* The table: a few transitions that must and must not exist. */
static void test_table(void)
{
    g_assert_true(br_transition_allowed(BR_IDLE, BR_CONFIGURING));
    g_assert_true(br_transition_allowed(BR_READY, BR_REGISTERING));
    g_assert_true(br_transition_allowed(BR_SERVED, BR_STOPPING));
    g_assert_true(br_transition_allowed(BR_STOPPING, BR_READY));
    g_assert_false(br_transition_allowed(BR_CONFIGURING, BR_SERVED));
    g_assert_false(br_transition_allowed(BR_SHUTDOWN, BR_SERVED));
    for (int s = 0; s < BR_NSTATES; s++)
        g_assert_cmpstr(br_state_name((enum br_state)s), !=, "?");
}

/* The cause and fix named for a memory file the device VM refused: a size that is not
 * a page multiple (no host can map it), not a power of two (QEMU before 8.1 cannot
 * split it), or a file not sealed against shrinking. */
static void test_refusal_fix(void)
{
    int before = vp_count_open_fds();
    char fix[512];
    struct { uint64_t size; gboolean seal; const char *want; } cases[] = {
        { (3 << 20) + 512, TRUE, "not a multiple of 4 KiB pages" },
        { 384 << 20, TRUE, "QEMU 8.1 or later" },
        { 384 << 20, TRUE, "-m 512, not -m 500" },
        { 256 << 20, FALSE, "--allow-unsealed" },
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        int fd = vp_test_memfd("refused", cases[i].size, cases[i].seal);
        br_refusal_fix(fd, fix, sizeof(fix));
        g_assert_nonnull(strstr(fix, cases[i].want));
        vp_close_fd(&fd);
    }
    int fd = vp_test_memfd("taken", 256 << 20, TRUE);
    br_refusal_fix(fd, fix, sizeof(fix));
    g_assert_cmpstr(fix, ==, ""); /* nothing we know of explains a refusal */
    vp_close_fd(&fd);
    br_refusal_fix(-1, fix, sizeof(fix));
    g_assert_cmpstr(fix, ==, "");
    vp_assert_fds(before);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/bridge/orders/qemu72", test_orders_qemu72);
    g_test_add_func("/bridge/orders/qemu10", test_orders_qemu10);
    g_test_add_func("/bridge/orders/dpdk", test_orders_dpdk);
    g_test_add_func("/bridge/refused-memory", test_refused_memory);
    g_test_add_func("/bridge/renegotiation", test_renegotiation);
    g_test_add_func("/bridge/features-from-device/reduced", test_features_from_device_reduced);
    g_test_add_func("/bridge/features-from-device/deferred", test_features_from_device_deferred);
    g_test_add_func("/bridge/features-from-device/all", test_features_from_device_all);
    g_test_add_func("/bridge/features-from-device/refused", test_features_from_device_refused);
    g_test_add_func("/bridge/features-from-device/no-answer",
                    test_features_from_device_no_answer);
    g_test_add_func("/bridge/features-from-device/server-lost",
                    test_features_from_device_server_lost);
    g_test_add_func("/bridge/server-restart-resumes", test_server_restart_resumes);
    g_test_add_func("/bridge/quit-while-registering", test_quit_while_registering);
    g_test_add_func("/bridge/frontend-gone", test_frontend_gone);
    g_test_add_func("/bridge/shutdown", test_shutdown);
    g_test_add_func("/bridge/table", test_table);
    g_test_add_func("/bridge/two-pairs", test_two_pairs);
    g_test_add_func("/bridge/refusal-fix", test_refusal_fix);
    return g_test_run();
}
