/*
 * bridge.c - the vhost-user -> vhost-pci bridge state machine (see bridge.h).
 *
 * Security model: events come from the vhost-user core, which has validated what the
 * frontend sent (sizes, fds, queue indexes, regions, ring addresses inside regions),
 * and from libvhostpci-client, which matched every ACK to its request. What the
 * bridge takes from the server is trusted only as far as: ACK results and reasons
 * (logged), accepted feature bits (masked with the offer), queue positions (applied
 * only to rings the frontend has). From the frontend's memory it reads one 2-byte
 * field, a ring's used index (pread on the region's file at an offset inside the
 * region); any value is safe: it only chooses where the device VM's driver resumes,
 * and that driver checks the ring itself. Every fd it keeps is a dup it owns, closed
 * on replacement, when the frontend goes and in br_free().
 */
#include "bridge.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vp_memtable.h"
#include "vp_wire.h"

/* ---- State ---- */

/** One virtqueue as the bridge knows it. */
struct br_ring {
    bool running;              /* vu core: complete, until GET_VRING_BASE */
    bool enabled;              /* SET_VRING_ENABLE (or implicit) */
    bool call_fresh;           /* its call fd came after its kick */
    struct vp_virtq vq;        /* num, guest-physical addresses; kick_fd/call_fd: dups,
                                  owned (-1: none) */
    uint16_t pos;              /* where the device VM resumes it: SET_VRING_BASE, or the
                                  position DEVICE_INFO_ACK(DEL_DONE) handed back */
    bool pos_from_device;      /* ... the latter */
};

/** A region's backing file: fd (a dup the bridge owns; -1 where only the identity
 *  matters) and identity, the server's idea of "the same file". */
struct br_file {
    int fd;
    dev_t st_dev;
    ino_t st_ino;
};

/** A set of regions keyed by guest-physical address: the shared memory table
 *  (protocol/vp_memtable.h; file_offset = mmap_offset) and each region's file. */
struct br_regions {
    struct vp_memtable t;
    struct br_file f[VP_MAX_REGIONS];   /* f[i] is t.r[i]'s */
};

/** Which request of the frontend waits for an answer (the vhost-user core reads
 *  nothing more until it comes, so at most one). */
enum br_wait { BR_WAIT_NONE, BR_WAIT_FEATURES, BR_WAIT_VRING_BASE, BR_WAIT_MEM };

/** What the bridge knows of the device VM's features. */
enum br_feat {
    BR_FEAT_UNKNOWN,       /* no answer yet */
    BR_FEAT_PROVISIONAL,   /* no answer in time: the protocol's set was offered */
    BR_FEAT_KNOWN,         /* the server's answer (or the renegotiated set) */
};

/** The memory change waiting for the server's verdict. */
struct br_memop {
    uint64_t token;            /* 0: none */
    uint32_t op;               /* VP_OP_ADD / VP_OP_DEL */
    bool may_refuse;           /* a refusal fails the frontend's request */
    bool running;              /* a ring ran when it came (a hot-plug) */
    struct vp_region reg;      /* the region (reg.fd: -1, see file) */
    struct br_file file;       /* ADD: fd owned */
};

#define BR_EVQ 16

struct br_qent {
    struct br_event ev;
    char reason[VP_MAX_REASON + 128];
};

struct br {
    struct br_config cfg;
    br_action_fn act;
    br_log_fn log;
    void *opaque;

    enum br_state state;
    bool link_up;              /* connected to the vhost-pci server */
    enum br_feat feat;
    uint64_t srv_accepted;     /* features the device VM accepts (& offer) */
    uint64_t fe_features;      /* SET_FEATURES */

    enum br_wait wait;
    uint32_t wait_index;       /* BR_WAIT_VRING_BASE */

    struct br_ring ring[VU_MAX_QUEUES];
    struct br_regions mem;     /* the frontend's table as the device VM may get it */
    struct br_regions mirror;  /* what the server holds of ours (identities only) */
    struct br_memop memop;

    uint64_t next_token;
    uint64_t reg_token;        /* the registration (handshake) in flight or served */
    uint64_t del_token;        /* the DEVICE_INFO(DEL) in flight */
    uint64_t feat_token;       /* the connect-time FEATURE_BITS in flight */
    unsigned reg_nnew;         /* regions the handshake added to the mirror */
    uint64_t reg_new_gpa[VP_MAX_REGIONS];
    uint64_t served_mask;      /* virtqueues of the registered device */
    bool timer_armed[BR_NTIMERS];

    /* scratch for actions */
    struct vp_device_info dev;
    struct vp_region regions[VP_MAX_REGIONS];

    /* run to completion */
    bool dispatching;
    struct br_qent q[BR_EVQ];
    unsigned qhead, qlen;
};

/* ---- Names ---- */

static const char *const state_names[BR_NSTATES] = {
    [BR_IDLE] = "idle", [BR_CONFIGURING] = "configuring", [BR_READY] = "ready",
    [BR_REGISTERING] = "registering", [BR_SERVED] = "served", [BR_REFUSED] = "refused",
    [BR_STOPPING] = "stopping", [BR_RENEGOTIATING] = "renegotiating",
    [BR_SHUTDOWN] = "shutdown",
};

static const char *const event_names[BR_NEVENTS] = {
    [BR_EV_FE_CONNECTED] = "FE_CONNECTED", [BR_EV_FE_GONE] = "FE_GONE",
    [BR_EV_GET_FEATURES] = "GET_FEATURES", [BR_EV_FEATURES_SET] = "FEATURES_SET",
    [BR_EV_MEM_ADD] = "MEM_ADD", [BR_EV_MEM_DEL] = "MEM_DEL",
    [BR_EV_RING_STARTED] = "RING_STARTED", [BR_EV_RING_CHANGED] = "RING_CHANGED",
    [BR_EV_RING_STOP] = "RING_STOP", [BR_EV_DRAINED] = "DRAINED",
    [BR_EV_SETTLE_TIMER] = "SETTLE_TIMER", [BR_EV_FEATURES_TIMER] = "FEATURES_TIMER",
    [BR_EV_SRV_UP] = "SRV_UP", [BR_EV_SRV_DOWN] = "SRV_DOWN",
    [BR_EV_FEATURES_ACK] = "FEATURES_ACK", [BR_EV_HANDSHAKE_DONE] = "HANDSHAKE_DONE",
    [BR_EV_RENEGOTIATE] = "RENEGOTIATE", [BR_EV_DEL_ACK] = "DEL_ACK",
    [BR_EV_MEM_ACK] = "MEM_ACK", [BR_EV_SHUTDOWN] = "SHUTDOWN",
};

const char *br_state_name(enum br_state s)
{
    return (unsigned)s < BR_NSTATES ? state_names[s] : "?";
}

const char *br_event_name(enum br_event_type t)
{
    return (unsigned)t < BR_NEVENTS ? event_names[t] : "?";
}

enum br_event_type br_timer_event(enum br_timer t)
{
    return t == BR_TIMER_SETTLE ? BR_EV_SETTLE_TIMER : BR_EV_FEATURES_TIMER;
}

/* ---- Small helpers ---- */

static void br_log(struct br *br, enum br_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void br_log(struct br *br, enum br_log_level level, const char *fmt, ...)
{
    if (!br->log)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    br->log(level, buf, br->opaque);
}

static void emit(struct br *br, const struct br_action *a)
{
    br->act(br, a, br->opaque);
}

static uint64_t new_token(struct br *br)
{
    return ++br->next_token;
}

static int dup_fd(int fd)
{
    return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

static void timer_start(struct br *br, enum br_timer t, int ms)
{
    br->timer_armed[t] = true;
    emit(br, &(struct br_action){ .type = BR_ACT_TIMER_START, .timer = t, .ms = ms });
}

static void timer_stop(struct br *br, enum br_timer t)
{
    if (!br->timer_armed[t])
        return;
    br->timer_armed[t] = false;
    emit(br, &(struct br_action){ .type = BR_ACT_TIMER_STOP, .timer = t });
}

static const char *why(const struct br_event *ev)
{
    return ev->reason ? ev->reason : "";
}

static uint64_t dev_id(const struct br *br)
{
    return br->cfg.device_id;
}

/* ---- Frontend answers ---- */

static void reply_features(struct br *br, uint64_t f, const char *how)
{
    timer_stop(br, BR_TIMER_FEATURES);
    if (br->wait != BR_WAIT_FEATURES)
        return;
    br->wait = BR_WAIT_NONE;
    f |= br->cfg.frontend_features;
    br_log(br, BR_LOG_INFO, "GET_FEATURES: offering the frontend 0x%" PRIx64 " (%s)", f, how);
    emit(br, &(struct br_action){ .type = BR_ACT_REPLY_FEATURES, .features = f });
}

static void reply_mem(struct br *br, int result)
{
    br->wait = BR_WAIT_NONE;
    emit(br, &(struct br_action){ .type = BR_ACT_REPLY_MEM, .result = result });
}

static void ring_close(struct br_ring *r)
{
    vp_close_fd(&r->vq.kick_fd);
    vp_close_fd(&r->vq.call_fd);
}

/** GET_VRING_BASE of ring @i answered with its position: the ring stops. */
static void reply_vring_base(struct br *br, uint32_t i, const char *from)
{
    struct br_ring *r = &br->ring[i];
    br->wait = BR_WAIT_NONE;
    r->running = false;
    ring_close(r);
    br_log(br, BR_LOG_INFO, "GET_VRING_BASE %u: %u (%s)", i, r->pos, from);
    emit(br, &(struct br_action){ .type = BR_ACT_REPLY_VRING_BASE, .index = i,
                                  .base = r->pos });
}

static void drop_frontend(struct br *br, const char *reason)
{
    emit(br, &(struct br_action){ .type = BR_ACT_DROP_FRONTEND, .reason = reason });
}

/* ---- Memory: the frontend's table and the server's mirror ---- */

static int file_identity(int fd, dev_t *dev, ino_t *ino, uint64_t *size)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return -1;
    *dev = st.st_dev;
    *ino = st.st_ino;
    if (size)
        *size = (uint64_t)st.st_size;
    return 0;
}

static struct br_file no_file(void)
{
    return (struct br_file){ -1, 0, 0 };
}

static void rs_init(struct br_regions *s)
{
    vp_mt_init(&s->t, VP_MAX_REGIONS);
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
        s->f[i] = no_file();
}

static int rs_find(const struct br_regions *s, uint64_t gpa)
{
    return vp_mt_find(&s->t, gpa);
}

static void rs_remove_at(struct br_regions *s, unsigned i)
{
    vp_close_fd(&s->f[i].fd);
    vp_mt_remove_at(&s->t, i);
    memmove(&s->f[i], &s->f[i + 1], (s->t.n - i) * sizeof(s->f[0]));
    s->f[s->t.n] = no_file();
}

static void rs_remove(struct br_regions *s, uint64_t gpa)
{
    int i = rs_find(s, gpa);
    if (i >= 0)
        rs_remove_at(s, (unsigned)i);
}

static void rs_clear(struct br_regions *s)
{
    while (s->t.n)
        rs_remove_at(s, s->t.n - 1);
}

/** Put region @r with its file @f (f->fd is taken, set to -1) into @s, replacing one
 *  at the same gpa. A region that does not fit the table (overlap, full) is logged
 *  and dropped: the vhost-user core checked the frontend's table already. */
static void rs_put(struct br *br, struct br_regions *s, const struct vp_region *r,
                   struct br_file *f)
{
    rs_remove(s, r->gpa);
    struct vp_mt_region m = { r->gpa, r->size, r->gpa, r->mmap_offset, 0 };
    vp_error err = { "" };
    if (vp_mt_add(&s->t, &m, 1, 0, NULL, &err) < 0) {
        br_log(br, BR_LOG_WARNING, "region gpa 0x%" PRIx64 ": %s", r->gpa, err.msg);
        vp_close_fd(&f->fd);
        return;
    }
    s->f[s->t.n - 1] = *f;
    f->fd = -1;
}

/** Entry @i of @s as a region (its fd, -1 in the mirror). */
static struct vp_region rs_region(const struct br_regions *s, unsigned i)
{
    const struct vp_mt_region *m = &s->t.r[i];
    return (struct vp_region){ m->gpa, m->size, m->file_offset, s->f[i].fd };
}

/** Does @s hold exactly @r (same gpa, size, offset, file)? */
static bool rs_same(const struct br_regions *s, const struct vp_region *r,
                    const struct br_file *f)
{
    int i = rs_find(s, r->gpa);
    if (i < 0)
        return false;
    const struct vp_mt_region *m = &s->t.r[i];
    return m->size == r->size && m->file_offset == r->mmap_offset &&
           s->f[i].st_dev == f->st_dev && s->f[i].st_ino == f->st_ino;
}

/** The server holds region @r of the frontend's table too (identity only). */
static void mirror_put(struct br *br, const struct vp_region *r, const struct br_file *f)
{
    struct br_file id = { -1, f->st_dev, f->st_ino };
    rs_put(br, &br->mirror, r, &id);
}

/** MEMORY_INFO(DEL) of every region the server holds that the frontend's table does
 *  not (all of them with @all). Fire and forget: the ACK is only logged. */
static void mirror_del_stale(struct br *br, bool all)
{
    unsigned n = 0;
    for (unsigned i = 0; i < br->mirror.t.n;) {
        struct vp_region m = rs_region(&br->mirror, i);
        if (!all && rs_same(&br->mem, &m, &br->mirror.f[i])) {
            i++;
            continue;
        }
        br->regions[n++] = m;
        rs_remove_at(&br->mirror, i);
    }
    if (n == 0 || !br->link_up)
        return;
    br_log(br, BR_LOG_INFO, "MEMORY_INFO(DEL) of %u region(s)", n);
    emit(br, &(struct br_action){ .type = BR_ACT_SEND_MEMORY, .token = new_token(br),
                                  .op = VP_OP_DEL, .nregions = n, .regions = br->regions });
}

/**
 * The 2-byte used index of the ring whose used ring is at guest-physical @used, read
 * from the memory file of the region holding it. Returns 0, or -1 when no region of
 * the frontend's table holds it or the read fails.
 */
static int read_used_idx(const struct br *br, uint64_t used, uint16_t *idx)
{
    uint64_t target;
    int i = vp_mt_lookup(&br->mem.t, used);
    if (i < 0 || vp_mt_translate(&br->mem.t, used, 4, &target) < 4)
        return -1;
    uint64_t off = br->mem.t.r[i].file_offset + (used - br->mem.t.r[i].gpa) + 2;
    uint8_t b[2];
    ssize_t n;
    do {
        n = pread(br->mem.f[i].fd, b, 2, (off_t)off);
    } while (n < 0 && errno == EINTR);
    if (n != 2)
        return -1;
    *idx = vp_get_le16(b);
    return 0;
}

/* ---- Rings ---- */

static bool ring_servable(const struct br *br, unsigned i)
{
    return i < br->cfg.nqueues && br->ring[i].running && br->ring[i].enabled;
}

/** Virtqueues a registration carries: every queue pair whose two rings can be served,
 *  provided pair 0's can (a NET frontend needs its receiveq and transmitq); 0 when
 *  the device cannot be served. */
static uint64_t servable_mask(const struct br *br)
{
    if (!ring_servable(br, 0) || !ring_servable(br, 1))
        return 0;
    uint64_t m = 0;
    for (unsigned p = 0; 2 * p + 1 < br->cfg.nqueues; p++)
        if (ring_servable(br, 2 * p) && ring_servable(br, 2 * p + 1))
            m |= 3ULL << (2 * p);
    return m;
}

static bool calls_fresh(const struct br *br, uint64_t mask)
{
    for (unsigned i = 0; i < br->cfg.nqueues; i++)
        if ((mask & (1ULL << i)) && !br->ring[i].call_fresh)
            return false;
    return true;
}

/** What a ring event changed. */
enum br_ring_change {
    BR_RC_NONE,        /* nothing that matters (an unknown index) */
    BR_RC_STARTED,     /* the ring (re)started */
    BR_RC_FDS,         /* a running ring got a new kick or call fd */
    BR_RC_ENABLE,      /* enabled or disabled */
};

/** Record what a RING_STARTED / RING_CHANGED event says. */
static enum br_ring_change ring_record(struct br *br, const struct br_event *ev)
{
    const struct vu_vring_info *in = &ev->ring;
    uint32_t i = in->vq.index;
    if (i >= br->cfg.nqueues) {
        br_log(br, BR_LOG_WARNING, "virtqueue %u: out of range (%u): ignored", i,
               br->cfg.nqueues);
        return BR_RC_NONE;
    }
    struct br_ring *r = &br->ring[i];
    bool was_enabled = r->enabled;
    r->enabled = in->enabled;
    r->call_fresh = in->call_fresh;
    enum br_ring_change c;
    if (ev->type == BR_EV_RING_STARTED) {
        ring_close(r);
        r->vq = in->vq;
        r->vq.kick_fd = dup_fd(in->vq.kick_fd);
        r->vq.call_fd = dup_fd(in->vq.call_fd);
        r->pos = in->vq.last_avail_idx;
        r->pos_from_device = false;
        r->running = true;
        c = BR_RC_STARTED;
    } else if (in->running && r->running && was_enabled == in->enabled) {
        ring_close(r);
        r->vq.kick_fd = dup_fd(in->vq.kick_fd);
        r->vq.call_fd = dup_fd(in->vq.call_fd);
        c = BR_RC_FDS;
    } else {
        c = BR_RC_ENABLE;
    }
    br_log(br, BR_LOG_INFO, "virtqueue %u %s (%s, %s, kick fd %s, call fd %s%s)", i,
           c == BR_RC_STARTED ? "runs" : c == BR_RC_FDS ? "has new fds" : "changed",
           r->running ? "running" : "not running", r->enabled ? "enabled" : "disabled",
           r->vq.kick_fd >= 0 ? "set" : "none", r->vq.call_fd >= 0 ? "set" : "none",
           r->call_fresh ? ", fresh" : "");
    return c;
}

static void rings_reset(struct br *br)
{
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++) {
        ring_close(&br->ring[i]);
        memset(&br->ring[i], 0, sizeof(br->ring[i]));
        br->ring[i].vq.kick_fd = br->ring[i].vq.call_fd = -1;
    }
}

/** Where the device VM resumes ring @i: its position, unless the ring's used index
 *  says otherwise (a frontend that reconnected and set a base that disagrees with its
 *  ring): then, as DPDK's vhost library does, from the used index. */
static uint16_t ring_resume_pos(struct br *br, unsigned i)
{
    struct br_ring *r = &br->ring[i];
    uint16_t used;
    if (read_used_idx(br, r->vq.used, &used) == 0 && used != r->pos) {
        br_log(br, BR_LOG_WARNING, "virtqueue %u: the frontend set base %u but the ring's "
               "used index is %u: resuming from the used index (as DPDK's vhost library "
               "does after a reconnect)", i, r->pos, used);
        r->pos = used;
    }
    return r->pos;
}

/* ---- Requests to the server ---- */

static bool any_running(const struct br *br)
{
    for (unsigned i = 0; i < br->cfg.nqueues; i++)
        if (br->ring[i].running)
            return true;
    return false;
}

/** DEVICE_INFO(DEL) of our frontend. */
static void send_del(struct br *br, const char *what)
{
    br->del_token = new_token(br);
    br->served_mask = 0;
    br_log(br, BR_LOG_INFO, "%s: DEVICE_INFO(DEL) of net %" PRIu64, what, dev_id(br));
    emit(br, &(struct br_action){ .type = BR_ACT_SEND_DEVICE_DEL, .token = br->del_token });
}

/** The three-message handshake of spec 1.5.1.1 for the servable rings. Returns the
 *  next state: REGISTERING, or READY while there is no server connection. */
static enum br_state do_register(struct br *br)
{
    timer_stop(br, BR_TIMER_SETTLE);
    uint64_t mask = servable_mask(br);
    if (!br->link_up) {
        br_log(br, BR_LOG_MESSAGE, "not connected to the vhost-pci server: the device is "
               "registered once the connection is back");
        return BR_READY;
    }
    if (br->mem.t.n == 0 || mask == 0)
        return BR_READY; /* cannot happen: servable rings lie in memory */
    mirror_del_stale(br, false);
    struct vp_device_info *d = &br->dev;
    vp_device_info_init(d); /* unused virtqueues: fds -1 */
    d->op = VP_OP_ADD;
    d->device_type = VP_DEV_NET;
    d->device_id = dev_id(br);
    for (unsigned i = 0; i < br->cfg.nqueues; i++) {
        if (!(mask & (1ULL << i)))
            continue;
        struct vp_virtq *q = &d->virtqs[d->nvirtqs++];
        *q = br->ring[i].vq; /* fds: the ring's, lent to the action */
        q->index = i;
        q->last_avail_idx = ring_resume_pos(br, i);
    }
    br->reg_nnew = 0;
    unsigned nmem = br->mem.t.n;
    for (unsigned i = 0; i < nmem; i++) {
        br->regions[i] = rs_region(&br->mem, i);
        if (!rs_same(&br->mirror, &br->regions[i], &br->mem.f[i]))
            br->reg_new_gpa[br->reg_nnew++] = br->regions[i].gpa;
    }
    uint64_t features = br->fe_features & ~(1ULL << VU_F_PROTOCOL_FEATURES) &
                        ~br->cfg.frontend_features;
    br->reg_token = new_token(br);
    br->served_mask = mask;
    br_log(br, BR_LOG_INFO, "handshake: MEMORY_INFO(ADD) of %u region(s), FEATURE_BITS 0x%"
           PRIx64 ", DEVICE_INFO(ADD) of net %" PRIu64 " with %u virtqueue(s)", nmem,
           features, dev_id(br), d->nvirtqs);
    for (unsigned i = 0; i < nmem; i++)
        br_log(br, BR_LOG_INFO, "  region gpa 0x%" PRIx64 " size 0x%" PRIx64 " mmap_offset 0x%"
               PRIx64, br->regions[i].gpa, br->regions[i].size, br->regions[i].mmap_offset);
    for (unsigned i = 0; i < d->nvirtqs; i++) {
        const struct vp_virtq *q = &d->virtqs[i];
        br_log(br, BR_LOG_INFO, "  virtqueue %u: num %u desc 0x%" PRIx64 " avail 0x%" PRIx64
               " used 0x%" PRIx64 " last_avail_idx %u", q->index, q->num, q->desc, q->avail,
               q->used, q->last_avail_idx);
    }
    /* The server runs its jobs in order: later requests come after these. */
    for (unsigned i = 0; i < nmem; i++)
        mirror_put(br, &br->regions[i], &br->mem.f[i]);
    emit(br, &(struct br_action){ .type = BR_ACT_SEND_HANDSHAKE, .token = br->reg_token,
                                  .features = features, .nregions = nmem,
                                  .regions = br->regions, .dev = d });
    return BR_REGISTERING;
}

/* ---- Diagnosis of a refused memory file (cause and fix) ---- */

/** One sentence naming what to change so that the device VM takes the region's file
 *  (@fd: the frontend's memory file), or "" when nothing we know of explains it. */
static void refusal_fix(int fd, char *out, size_t len)
{
    struct stat st;
    out[0] = '\0';
    if (fd < 0 || fstat(fd, &st) < 0)
        return;
    uint64_t size = (uint64_t)st.st_size;
    int seals = fcntl(fd, F_GET_SEALS);
    if (size & (size - 1))
        snprintf(out, len, "; fix: its memory file is %" PRIu64 " bytes, not a power of two, "
                 "and a device VM BAR must be one: give the frontend memory of a power-of-two "
                 "size (DPDK: -m 512, not -m 500; QEMU: size=512M)", size);
    else if (seals < 0 || !(seals & F_SEAL_SHRINK))
        snprintf(out, len, "; fix: its memory file is not sealed against shrinking (DPDK "
                 "and hugetlbfs memory never is): start vhost-pci-server with "
                 "--allow-unsealed");
}

/* ---- Handlers ----
 * Each returns the next state, which must be among its table row's allowed ones. */

typedef enum br_state (*br_handler)(struct br *br, const struct br_event *ev);

static enum br_state h_fe_connected(struct br *br, const struct br_event *ev)
{
    (void)ev;
    rings_reset(br);
    rs_clear(&br->mem);
    br->fe_features = 0;
    br->wait = BR_WAIT_NONE;
    return BR_CONFIGURING;
}

/** The frontend is gone: the device VM forgets its frontend and memory. */
static enum br_state h_fe_gone(struct br *br, const struct br_event *ev)
{
    (void)ev;
    timer_stop(br, BR_TIMER_SETTLE);
    timer_stop(br, BR_TIMER_FEATURES);
    if (br->link_up && (br->state == BR_REGISTERING || br->state == BR_SERVED ||
                        br->state == BR_RENEGOTIATING))
        send_del(br, "the frontend disconnected");
    br->reg_token = 0;
    br->served_mask = 0;
    br->wait = BR_WAIT_NONE;
    vp_close_fd(&br->memop.file.fd);
    br->memop.token = 0;
    rings_reset(br);
    rs_clear(&br->mem);
    mirror_del_stale(br, true);
    return br->state == BR_SHUTDOWN ? BR_SHUTDOWN : BR_IDLE;
}

static enum br_state h_get_features(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->wait = BR_WAIT_FEATURES;
    if (br->feat != BR_FEAT_UNKNOWN) {
        reply_features(br, br->srv_accepted, br->feat == BR_FEAT_KNOWN ?
                       "accepted by the device VM" : "the protocol's set, provisional");
        return br->state;
    }
    br_log(br, BR_LOG_INFO, "GET_FEATURES: waiting for the vhost-pci server's feature answer "
           "(at most %d ms)", br->cfg.features_wait_ms);
    if (!br->timer_armed[BR_TIMER_FEATURES])
        timer_start(br, BR_TIMER_FEATURES, br->cfg.features_wait_ms);
    return br->state;
}

static enum br_state h_features_timer(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->timer_armed[BR_TIMER_FEATURES] = false;
    if (br->feat != BR_FEAT_UNKNOWN)
        return br->state;
    br->feat = BR_FEAT_PROVISIONAL;
    br->srv_accepted = br->cfg.offer & VP_NET_FEATURES;
    br_log(br, BR_LOG_WARNING, "no feature answer from the vhost-pci server within %d ms: "
           "offering the frontend 0x%" PRIx64 " (the handshake's FEATURE_BITS round settles "
           "the final set)", br->cfg.features_wait_ms, br->srv_accepted);
    reply_features(br, br->srv_accepted, "server not answering");
    return br->state;
}

static enum br_state h_features_ack(struct br *br, const struct br_event *ev)
{
    if (ev->token != br->feat_token)
        return br->state;
    br->feat_token = 0;
    if (ev->status != BR_OK) {
        br_log(br, BR_LOG_WARNING, "feature negotiation with the vhost-pci server failed: %s",
               why(ev));
        return br->state;
    }
    uint64_t acc = ev->features & br->cfg.offer;
    if (br->feat != BR_FEAT_KNOWN || acc != br->srv_accepted)
        br_log(br, BR_LOG_MESSAGE, "device VM accepts virtio features 0x%" PRIx64 " of the "
               "offered 0x%" PRIx64, acc, br->cfg.offer);
    br->feat = BR_FEAT_KNOWN;
    br->srv_accepted = acc;
    reply_features(br, acc, "accepted by the device VM");
    return br->state;
}

static enum br_state h_features_set(struct br *br, const struct br_event *ev)
{
    br->fe_features = ev->features;
    return br->state;
}

/** What the frontend is told of a refusal, for the log. */
static const char *refusal_effect(const struct br *br, const struct br_memop *m)
{
    if (m->may_refuse)
        return "the frontend gets a failure reply";
    if (br->cfg.log_refusals_only)
        return "--memory-refusal log: the frontend gets success";
    return "the frontend is (re)starting its device, which a failure reply would stop: it "
           "gets success";
}

/** A memory change of the frontend (BR_EV_MEM_ADD / _DEL).
 *  Memory goes to the server at once when the server holds memory of ours, or holds
 *  none yet (the frontend sets up its memory: DPDK's SET_MEM_TABLE, QEMU's ADD_MEM_REG
 *  at start). The server's verdict is the frontend's answer when a refusal may fail
 *  the request: with --memory-refusal reply, while a ring runs (a hot-plug: QEMU only
 *  logs the failure and keeps the region out) or when it is the first memory (without
 *  it nothing can be served: DPDK then reports a failed start, QEMU a failed vhost
 *  start, each in its own words). While a frontend restarts its device with memory the
 *  server already has, a failure would stop the frontend's networking altogether
 *  (QEMU: "falling back on userspace virtio"), so it gets success and the device is
 *  served with the memory the device VM could take. */
static enum br_state h_mem_change(struct br *br, const struct br_event *ev)
{
    bool add = ev->type == BR_EV_MEM_ADD;
    struct vp_region reg = ev->region;
    struct br_file file = no_file();
    int have_id = file_identity(reg.fd, &file.st_dev, &file.st_ino, NULL);
    reg.fd = -1;
    br->wait = BR_WAIT_MEM;
    if (add && (!br->link_up || (have_id == 0 && rs_same(&br->mirror, &reg, &file)))) {
        file.fd = dup_fd(ev->region.fd);
        br_log(br, BR_LOG_INFO, "region gpa 0x%" PRIx64 " size 0x%" PRIx64 " added%s",
               reg.gpa, reg.size, br->link_up ? " (the server has it)" :
               "; the device VM gets it with the next handshake");
        rs_put(br, &br->mem, &reg, &file);
        reply_mem(br, 0);
        return br->state;
    }
    if (!add && (!br->link_up || rs_find(&br->mirror, reg.gpa) < 0)) {
        br_log(br, BR_LOG_INFO, "region gpa 0x%" PRIx64 " size 0x%" PRIx64 " removed (not on "
               "the server)", reg.gpa, reg.size);
        rs_remove(&br->mem, reg.gpa);
        reply_mem(br, 0);
        return br->state;
    }
    struct br_memop *m = &br->memop;
    vp_close_fd(&m->file.fd);
    m->token = new_token(br);
    m->op = add ? VP_OP_ADD : VP_OP_DEL;
    m->running = any_running(br);
    m->may_refuse = !br->cfg.log_refusals_only &&
                    (m->running || (add && br->mirror.t.n == 0));
    m->reg = reg;
    m->file = file;
    m->file.fd = add ? dup_fd(ev->region.fd) : -1;
    br->regions[0] = reg;
    br->regions[0].fd = m->file.fd;
    br_log(br, BR_LOG_INFO, "%s: MEMORY_INFO(%s) of gpa 0x%" PRIx64 " size 0x%" PRIx64,
           m->running ? (add ? "hot-add" : "hot-remove") : "memory", add ? "ADD" : "DEL",
           reg.gpa, reg.size);
    emit(br, &(struct br_action){ .type = BR_ACT_SEND_MEMORY, .token = m->token, .op = m->op,
                                  .nregions = 1, .regions = br->regions });
    return br->state;
}

static enum br_state h_mem_ack(struct br *br, const struct br_event *ev)
{
    struct br_memop *m = &br->memop;
    if (ev->token == 0 || ev->token != m->token) {
        /* A fire-and-forget MEMORY_INFO(DEL) (stale regions, a frontend that left). */
        if (ev->status == BR_OK)
            br_log(br, BR_LOG_INFO, "MEMORY_INFO_ACK(DEL_DONE)");
        else
            br_log(br, BR_LOG_WARNING, "MEMORY_INFO(DEL) failed: %s", why(ev));
        return br->state;
    }
    m->token = 0;
    const struct vp_region *reg = &m->reg;
    bool add = m->op == VP_OP_ADD;
    const char *what = m->running ? (add ? "hot-add" : "hot-remove") : (add ? "add" : "removal");
    if (ev->status == BR_OK) {
        if (add) {
            mirror_put(br, reg, &m->file);
            rs_put(br, &br->mem, reg, &m->file);
        } else {
            rs_remove(&br->mirror, reg->gpa);
            rs_remove(&br->mem, reg->gpa);
        }
        if (m->running)
            br_log(br, BR_LOG_MESSAGE, "hot-%s region gpa 0x%" PRIx64 " size 0x%" PRIx64
                   ": MEMORY_INFO_ACK(%s)", add ? "added" : "removed", reg->gpa,
                   reg->size, add ? "ADD_DONE" : "DEL_DONE");
        else
            br_log(br, BR_LOG_INFO, "memory: region gpa 0x%" PRIx64 " size 0x%" PRIx64
                   " %s the device VM", reg->gpa, reg->size,
                   add ? "taken by" : "removed from");
        reply_mem(br, 0);
        return br->state;
    }
    char fix[512] = "";
    if (add)
        refusal_fix(m->file.fd, fix, sizeof(fix));
    bool first = add && br->mirror.t.n == 0 && !m->running;
    br_log(br, first && m->may_refuse ? BR_LOG_ERROR : BR_LOG_WARNING,
           "%s of region gpa 0x%" PRIx64 " size 0x%" PRIx64 " failed: %s (%s%s)%s", what,
           reg->gpa, reg->size, why(ev), refusal_effect(br, m),
           add ? "; the device VM cannot reach buffers placed there" : "", fix);
    if (m->may_refuse) {
        vp_close_fd(&m->file.fd);
        reply_mem(br, -EIO);
    } else if (add) {
        rs_put(br, &br->mem, reg, &m->file); /* the frontend has it: offered again */
        reply_mem(br, 0);
    } else {
        rs_remove(&br->mem, reg->gpa);
        reply_mem(br, 0);
    }
    return br->state;
}

/* Rings, before registration: CONFIGURING <-> READY (and a refused device retried). */
static enum br_state h_rings_unregistered(struct br *br, const struct br_event *ev)
{
    ring_record(br, ev);
    if (servable_mask(br)) {
        if (br->state != BR_READY)
            timer_start(br, BR_TIMER_SETTLE, br->cfg.settle_ms);
        return BR_READY;
    }
    timer_stop(br, BR_TIMER_SETTLE);
    return BR_CONFIGURING;
}

/* Rings of a registered device: a change of what is served reconfigures it
 * (DEVICE_INFO(DEL) for the positions, then ADD again). */
static enum br_state h_rings_registered(struct br *br, const struct br_event *ev)
{
    enum br_ring_change c = ring_record(br, ev);
    uint32_t i = ev->ring.vq.index;
    bool in_set = i < 64 && (br->served_mask & (1ULL << i));
    if (c == BR_RC_NONE || (servable_mask(br) == br->served_mask &&
                            !(c != BR_RC_ENABLE && in_set)))
        return br->state;
    send_del(br, c == BR_RC_FDS ? "new kick/call fds" :
             br->ring[i].enabled ? "a queue pair changed" : "a virtqueue was disabled");
    return BR_STOPPING;
}

static enum br_state h_rings_record(struct br *br, const struct br_event *ev)
{
    ring_record(br, ev);
    return br->state;
}

static enum br_state h_drained(struct br *br, const struct br_event *ev)
{
    (void)ev;
    if (!br->link_up || !calls_fresh(br, servable_mask(br)))
        return BR_READY;
    return do_register(br);
}

static enum br_state h_settled(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->timer_armed[BR_TIMER_SETTLE] = false;
    return do_register(br);
}

/* GET_VRING_BASE of a ring the device VM does not serve: its position is current. */
static enum br_state h_stop_unserved(struct br *br, const struct br_event *ev)
{
    uint32_t i = ev->index % br->cfg.nqueues; /* the vhost-user core checked it */
    if (br->ring[i].running)
        ring_resume_pos(br, i);
    reply_vring_base(br, i, br->ring[i].pos_from_device ? "from DEVICE_INFO_ACK(DEL_DONE)" :
                     "the device VM does not serve the queue");
    if (br->state == BR_RENEGOTIATING || br->state == BR_SHUTDOWN)
        return br->state;
    timer_stop(br, BR_TIMER_SETTLE);
    return servable_mask(br) ? BR_READY : BR_CONFIGURING;
}

/* GET_VRING_BASE of a registered device: DEVICE_INFO(DEL) hands back the positions. */
static enum br_state h_stop_registered(struct br *br, const struct br_event *ev)
{
    br->wait = BR_WAIT_VRING_BASE;
    br->wait_index = ev->index % br->cfg.nqueues; /* checked by the vhost-user core */
    send_del(br, "the frontend stops the device");
    return BR_STOPPING;
}

static enum br_state h_stop_wait(struct br *br, const struct br_event *ev)
{
    br->wait = BR_WAIT_VRING_BASE;
    br->wait_index = ev->index % br->cfg.nqueues; /* checked by the vhost-user core */
    return BR_STOPPING;
}

/* DEVICE_INFO(DEL) answered while stopping. */
static enum br_state h_stopped(struct br *br, const struct br_event *ev)
{
    if (ev->token != br->del_token) {
        br_log(br, BR_LOG_INFO, "DEVICE_INFO(DEL) of an earlier start: %s",
               ev->status == BR_OK ? "done" : why(ev));
        return BR_STOPPING;
    }
    br->del_token = 0;
    bool waiting = br->wait == BR_WAIT_VRING_BASE;
    if (ev->status == BR_REJECTED) {
        /* The device VM does not have the frontend (its registration failed meanwhile):
         * the queues did not move. */
        br_log(br, BR_LOG_WARNING, "DEVICE_INFO(DEL) of net %" PRIu64 " refused: %s (the "
               "device VM does not serve it)", dev_id(br), why(ev));
    } else if (ev->status != BR_OK) {
        br_log(br, BR_LOG_WARNING, "DEVICE_INFO(DEL) of net %" PRIu64 " failed: %s",
               dev_id(br), why(ev));
        /* The device VM may have moved the queues and we do not know where to: without
         * the backend the frontend restores them from the used index (QEMU:
         * hw/virtio/vhost.c; DPDK's vhost library the same). GET_VRING_BASE has no
         * error reply. */
        char reason[VP_MAX_REASON + 128];
        if (waiting)
            snprintf(reason, sizeof(reason), "GET_VRING_BASE %u: the device VM did not hand "
                     "back the queue positions (%s)", br->wait_index, why(ev));
        else
            snprintf(reason, sizeof(reason), "the device VM did not stop serving the "
                     "virtqueues (%s)", why(ev));
        br->wait = BR_WAIT_NONE;
        drop_frontend(br, reason);
        return BR_CONFIGURING;
    }
    unsigned n = 0;
    for (unsigned k = 0; ev->status == BR_OK && k < ev->npositions; k++) {
        const struct vp_virtq_pos *p = &ev->positions[k];
        if (p->index >= br->cfg.nqueues) {
            br_log(br, BR_LOG_WARNING, "DEVICE_INFO_ACK(DEL_DONE) names virtqueue %u: "
                   "ignored (the frontend has %u)", p->index, br->cfg.nqueues);
            continue;
        }
        br->ring[p->index].pos = p->last_avail_idx;
        br->ring[p->index].pos_from_device = true;
        n++;
    }
    if (ev->status == BR_OK)
        br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(DEL_DONE) for net %" PRIu64 ": %u "
               "virtqueue position(s)", dev_id(br), n);
    if (waiting)
        reply_vring_base(br, br->wait_index, ev->status == BR_OK ?
                         "from DEVICE_INFO_ACK(DEL_DONE)" : "the device VM does not serve "
                         "the queue");
    if (servable_mask(br)) {
        timer_start(br, BR_TIMER_SETTLE, br->cfg.settle_ms);
        return BR_READY;
    }
    return BR_CONFIGURING;
}

static enum br_state h_del_ack_other(struct br *br, const struct br_event *ev)
{
    if (ev->token == br->del_token)
        br->del_token = 0;
    if (ev->status == BR_OK)
        br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(DEL_DONE) for net %" PRIu64, dev_id(br));
    else
        br_log(br, BR_LOG_WARNING, "DEVICE_INFO(DEL) of net %" PRIu64 " failed: %s",
               dev_id(br), why(ev));
    return br->state;
}

/* The memory part of a handshake's outcome, whichever start it was for: regions a
 * refused MEMORY_INFO did not add leave the mirror (those the server had stay). */
static void handshake_memory(struct br *br, const struct br_event *ev)
{
    if (ev->token == br->reg_token && ev->mem_status != BR_OK) {
        for (unsigned i = 0; i < br->reg_nnew; i++)
            rs_remove(&br->mirror, br->reg_new_gpa[i]);
        br->reg_nnew = 0;
    }
}

static enum br_state h_registered(struct br *br, const struct br_event *ev)
{
    handshake_memory(br, ev);
    if (ev->token != br->reg_token) {
        br_log(br, BR_LOG_INFO, "handshake of an earlier start ended: %s",
               ev->status == BR_OK ? "done" : why(ev));
        return BR_REGISTERING;
    }
    if (ev->status == BR_LOST) {
        br->served_mask = 0;
        br_log(br, BR_LOG_WARNING, "the handshake did not complete (%s): the device is "
               "registered once the server is back", why(ev));
        return servable_mask(br) ? BR_READY : BR_CONFIGURING;
    }
    if (ev->status != BR_OK) {
        br->served_mask = 0;
        br_log(br, BR_LOG_WARNING, "the device VM did not take the frontend (net %" PRIu64
               "): %s", dev_id(br), why(ev));
        return BR_REFUSED;
    }
    if (ev->mem_status != BR_OK)
        br_log(br, BR_LOG_WARNING, "the device VM serves net %" PRIu64 " but not all of this "
               "start: %s (it cannot reach buffers in memory it refused)", dev_id(br),
               why(ev));
    unsigned nq = 0;
    for (unsigned i = 0; i < 64; i++)
        nq += (br->served_mask >> i) & 1;
    br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(ADD_DONE): net %" PRIu64 " with %u virtqueues "
           "is served by the device VM (features 0x%" PRIx64 "%s)", dev_id(br), nq,
           ev->features, ev->renegotiated ? ", renegotiated" : "");
    return BR_SERVED;
}

static enum br_state h_handshake_other(struct br *br, const struct br_event *ev)
{
    handshake_memory(br, ev);
    br_log(br, BR_LOG_INFO, "handshake of an earlier start ended: %s",
           ev->status == BR_OK ? "done" : why(ev));
    return br->state;
}

/* Spec 1.5.1.1: the device VM accepted fewer features than the frontend negotiated. */
static enum br_state h_renegotiate(struct br *br, const struct br_event *ev)
{
    bool current = ev->token == br->reg_token && br->state == BR_REGISTERING;
    br_log(br, BR_LOG_WARNING, "feature renegotiation (spec 1.5.1.1): the device VM's driver "
           "accepted 0x%" PRIx64 " of the negotiated 0x%" PRIx64 "; the frontend must "
           "renegotiate the smaller set", ev->features, ev->offered);
    /* Drop the refused bits from what the frontend is offered (bits the device VM
     * accepted earlier and the frontend did not negotiate stay). */
    br->srv_accepted &= ~(ev->offered & ~ev->features);
    br->feat = BR_FEAT_KNOWN;
    /* The frontend is restricted to the accepted bits from now on (the next
     * GET_FEATURES offers only them): confirm them as the final set. */
    emit(br, &(struct br_action){ .type = BR_ACT_CONFIRM_FEATURES, .token = ev->token,
                                  .features = ev->features });
    if (!current)
        return br->state;
    char reason[512];
    snprintf(reason, sizeof(reason), "feature renegotiation: the device VM accepts only 0x%"
             PRIx64 "; the frontend renegotiates when it connects again (DPDK virtio-user: "
             "server=1 with --vhost-server-path, or a restart; QEMU refuses a backend that "
             "offers less than its guest acked, \"vhost lacks feature mask\": a restart "
             "of QEMU)", br->srv_accepted);
    drop_frontend(br, reason);
    return BR_RENEGOTIATING;
}

static enum br_state h_srv_up(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->link_up = true;
    rs_clear(&br->mirror);
    br->feat_token = new_token(br);
    emit(br, &(struct br_action){ .type = BR_ACT_SEND_FEATURES, .token = br->feat_token,
                                  .features = br->cfg.offer });
    if ((br->state == BR_READY && !br->timer_armed[BR_TIMER_SETTLE]) ||
        (br->state == BR_REFUSED && servable_mask(br))) {
        br_log(br, BR_LOG_MESSAGE, "the frontend's device is running: registering it with "
               "the device VM again");
        return do_register(br);
    }
    return br->state;
}

static enum br_state h_srv_down(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->link_up = false;
    rs_clear(&br->mirror);
    br->feat_token = 0;
    br->del_token = 0;
    if (br->state == BR_REGISTERING || br->state == BR_SERVED || br->state == BR_STOPPING) {
        br->served_mask = 0;
        br->reg_token = 0;
        if (br->wait == BR_WAIT_VRING_BASE) {
            /* Its DEL never came back (normally answered as lost before this). */
            br->wait = BR_WAIT_NONE;
            drop_frontend(br, "the vhost-pci server went away while the device stopped");
            return BR_CONFIGURING;
        }
        return servable_mask(br) ? BR_READY : BR_CONFIGURING;
    }
    if (br->state == BR_SHUTDOWN) {
        emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
        return BR_SHUTDOWN;
    }
    return br->state;
}

static enum br_state h_shutdown_del(struct br *br, const struct br_event *ev)
{
    (void)ev;
    timer_stop(br, BR_TIMER_SETTLE);
    timer_stop(br, BR_TIMER_FEATURES);
    if (br->state == BR_STOPPING || br->del_token) {
        br_log(br, BR_LOG_INFO, "shutdown: waiting for the DEVICE_INFO(DEL) sent before");
        return BR_SHUTDOWN;
    }
    if ((br->state == BR_REGISTERING || br->state == BR_SERVED ||
         br->state == BR_RENEGOTIATING) && br->link_up) {
        send_del(br, "shutdown");
        return BR_SHUTDOWN;
    }
    emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
    return BR_SHUTDOWN;
}

static enum br_state h_shutdown_again(struct br *br, const struct br_event *ev)
{
    (void)ev;
    emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
    return BR_SHUTDOWN;
}

static enum br_state h_shutdown_del_ack(struct br *br, const struct br_event *ev)
{
    if (ev->token != br->del_token)
        return BR_SHUTDOWN;
    br->del_token = 0;
    if (ev->status == BR_OK)
        br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(DEL_DONE) for net %" PRIu64, dev_id(br));
    br_log(br, BR_LOG_MESSAGE, "shutdown: %s", ev->status == BR_OK ? "done" :
           "DEVICE_INFO(DEL) did not complete");
    emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
    return BR_SHUTDOWN;
}

/* ---- The transition table ---- */

#define S(x) (1u << (x))
#define ANY_STATE ((1u << BR_NSTATES) - 1)
#define WITH_FE (ANY_STATE & ~S(BR_IDLE))
#define STAY 0u /* the handler keeps the state it was called in */
#define REGISTERED (S(BR_REGISTERING) | S(BR_SERVED))
#define UNREGISTERED (S(BR_CONFIGURING) | S(BR_READY) | S(BR_REFUSED))

/**
 * One row: in any state of @from, @event runs @handler, whose result must be one of
 * @to (STAY: the state it was called in). The first matching row wins; an event no
 * row takes is logged and ignored.
 */
struct br_transition {
    uint32_t from;
    enum br_event_type event;
    br_handler handler;
    uint32_t to;
};

static const struct br_transition transitions[] = {
    /* the frontend connection */
    { S(BR_IDLE), BR_EV_FE_CONNECTED, h_fe_connected, S(BR_CONFIGURING) },
    { S(BR_SHUTDOWN), BR_EV_FE_GONE, h_fe_gone, S(BR_SHUTDOWN) },
    { WITH_FE, BR_EV_FE_GONE, h_fe_gone, S(BR_IDLE) },

    /* the frontend's requests that wait for an answer; features and memory */
    { WITH_FE, BR_EV_GET_FEATURES, h_get_features, STAY },
    { ANY_STATE, BR_EV_FEATURES_TIMER, h_features_timer, STAY },
    { ANY_STATE, BR_EV_FEATURES_ACK, h_features_ack, STAY },
    { WITH_FE, BR_EV_FEATURES_SET, h_features_set, STAY },
    { WITH_FE, BR_EV_MEM_ADD, h_mem_change, STAY },
    { WITH_FE, BR_EV_MEM_DEL, h_mem_change, STAY },
    { ANY_STATE, BR_EV_MEM_ACK, h_mem_ack, STAY },

    /* rings */
    { UNREGISTERED, BR_EV_RING_STARTED, h_rings_unregistered,
      S(BR_CONFIGURING) | S(BR_READY) },
    { UNREGISTERED, BR_EV_RING_CHANGED, h_rings_unregistered,
      S(BR_CONFIGURING) | S(BR_READY) },
    { REGISTERED, BR_EV_RING_STARTED, h_rings_registered, REGISTERED | S(BR_STOPPING) },
    { REGISTERED, BR_EV_RING_CHANGED, h_rings_registered, REGISTERED | S(BR_STOPPING) },
    { S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN), BR_EV_RING_STARTED,
      h_rings_record, S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN) },
    { S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN), BR_EV_RING_CHANGED,
      h_rings_record, S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN) },

    { UNREGISTERED | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN), BR_EV_RING_STOP,
      h_stop_unserved, S(BR_CONFIGURING) | S(BR_READY) | S(BR_RENEGOTIATING) |
      S(BR_SHUTDOWN) },
    { REGISTERED, BR_EV_RING_STOP, h_stop_registered, S(BR_STOPPING) },
    { S(BR_STOPPING), BR_EV_RING_STOP, h_stop_wait, S(BR_STOPPING) },

    /* registration */
    { S(BR_READY), BR_EV_DRAINED, h_drained, S(BR_READY) | S(BR_REGISTERING) },
    { S(BR_READY), BR_EV_SETTLE_TIMER, h_settled, S(BR_READY) | S(BR_REGISTERING) },
    { S(BR_REGISTERING), BR_EV_HANDSHAKE_DONE, h_registered,
      S(BR_REGISTERING) | S(BR_SERVED) | S(BR_REFUSED) | S(BR_READY) | S(BR_CONFIGURING) },
    { ANY_STATE, BR_EV_HANDSHAKE_DONE, h_handshake_other, STAY },
    { S(BR_REGISTERING), BR_EV_RENEGOTIATE, h_renegotiate,
      S(BR_REGISTERING) | S(BR_RENEGOTIATING) },
    { ANY_STATE, BR_EV_RENEGOTIATE, h_renegotiate, STAY },

    /* stopping */
    { S(BR_STOPPING), BR_EV_DEL_ACK, h_stopped,
      S(BR_STOPPING) | S(BR_CONFIGURING) | S(BR_READY) },
    { S(BR_SHUTDOWN), BR_EV_DEL_ACK, h_shutdown_del_ack, S(BR_SHUTDOWN) },
    { ANY_STATE, BR_EV_DEL_ACK, h_del_ack_other, STAY },

    /* the server connection */
    { S(BR_READY) | S(BR_REFUSED), BR_EV_SRV_UP, h_srv_up,
      S(BR_READY) | S(BR_REFUSED) | S(BR_REGISTERING) },
    { ANY_STATE, BR_EV_SRV_UP, h_srv_up, STAY },
    { REGISTERED | S(BR_STOPPING), BR_EV_SRV_DOWN, h_srv_down,
      S(BR_READY) | S(BR_CONFIGURING) },
    { ANY_STATE, BR_EV_SRV_DOWN, h_srv_down, STAY },

    /* shutdown */
    { S(BR_SHUTDOWN), BR_EV_SHUTDOWN, h_shutdown_again, S(BR_SHUTDOWN) },
    { ANY_STATE, BR_EV_SHUTDOWN, h_shutdown_del, S(BR_SHUTDOWN) },
};

bool br_transition_allowed(enum br_state from, enum br_state to)
{
    for (size_t k = 0; k < sizeof(transitions) / sizeof(transitions[0]); k++) {
        const struct br_transition *t = &transitions[k];
        if ((t->from & S(from)) && (t->to == STAY ? from == to : (t->to & S(to)) != 0))
            return true;
    }
    return false;
}

static void dispatch(struct br *br, const struct br_event *ev)
{
    enum br_state from = br->state;
    for (size_t k = 0; k < sizeof(transitions) / sizeof(transitions[0]); k++) {
        const struct br_transition *t = &transitions[k];
        if (t->event != ev->type || !(t->from & S(from)))
            continue;
        enum br_state to = t->handler(br, ev);
        if (t->to == STAY ? to != from : !(t->to & S(to))) {
            /* A handler outside its row: a bug here, not the peer's. Stay put. */
            br_log(br, BR_LOG_ERROR, "bridge: %s in state %s led to %s, which the table "
                   "does not allow: staying in %s", br_event_name(ev->type),
                   br_state_name(from), br_state_name(to), br_state_name(from));
            return;
        }
        if (to != from)
            br_log(br, BR_LOG_DEBUG, "bridge: %s: %s -> %s", br_event_name(ev->type),
                   br_state_name(from), br_state_name(to));
        br->state = to;
        return;
    }
    br_log(br, BR_LOG_DEBUG, "bridge: %s ignored in state %s", br_event_name(ev->type),
           br_state_name(from));
}

/* ---- Public ---- */

struct br *br_new(const struct br_config *cfg, br_action_fn act, br_log_fn log, void *opaque)
{
    struct br *br = calloc(1, sizeof(*br));
    if (!br)
        return NULL;
    if (cfg)
        br->cfg = *cfg;
    if (!br->cfg.offer)
        br->cfg.offer = VP_NET_FEATURES;
    if (br->cfg.nqueues < 2 || br->cfg.nqueues > VU_MAX_QUEUES || (br->cfg.nqueues & 1))
        br->cfg.nqueues = 2;
    if (br->cfg.settle_ms <= 0)
        br->cfg.settle_ms = 20;
    if (br->cfg.features_wait_ms <= 0)
        br->cfg.features_wait_ms = 3000;
    br->act = act;
    br->log = log;
    br->opaque = opaque;
    br->state = BR_IDLE;
    br->memop.file = no_file();
    rs_init(&br->mem);
    rs_init(&br->mirror);
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++)
        br->ring[i].vq.kick_fd = br->ring[i].vq.call_fd = -1;
    return br;
}

void br_free(struct br *br)
{
    if (!br)
        return;
    rings_reset(br);
    rs_clear(&br->mem);
    vp_close_fd(&br->memop.file.fd);
    free(br);
}

void br_post(struct br *br, const struct br_event *ev)
{
    if (br->dispatching) {
        if (br->qlen == BR_EVQ) {
            br_log(br, BR_LOG_ERROR, "bridge: event queue full: %s dropped",
                   br_event_name(ev->type));
            return;
        }
        struct br_qent *e = &br->q[(br->qhead + br->qlen++) % BR_EVQ];
        e->ev = *ev;
        if (ev->reason) {
            snprintf(e->reason, sizeof(e->reason), "%s", ev->reason);
            e->ev.reason = e->reason;
        }
        return;
    }
    br->dispatching = true;
    dispatch(br, ev);
    while (br->qlen) {
        struct br_qent *e = &br->q[br->qhead];
        br->qhead = (br->qhead + 1) % BR_EVQ;
        br->qlen--;
        struct br_qent copy = *e; /* the slot may be reused by a nested post */
        if (copy.ev.reason == e->reason)
            copy.ev.reason = copy.reason;
        dispatch(br, &copy.ev);
    }
    br->dispatching = false;
}

enum br_state br_state(const struct br *br)
{
    return br->state;
}

uint64_t br_served_mask(const struct br *br)
{
    return br->state == BR_SERVED ? br->served_mask : 0;
}
