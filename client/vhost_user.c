/*
 * vhost_user.c - vhost-user backend core for virtio-net (see vhost_user.h).
 *
 * Security model
 * --------------
 * The socket peer is the driver VM's QEMU, one step removed from a guest that may be
 * hostile; a bug in it can send anything too. Nothing it sends is trusted:
 *  - the header is checked (version, no REPLY flag, size <= VU_MAX_PAYLOAD) before a
 *    payload byte is read; a read never goes past the current message;
 *  - each request declares in vu_handlers[] its payload size range, fd count range,
 *    required protocol feature and where its queue index is; all of these are
 *    checked in vu_dispatch() before any handler runs, and the index is checked
 *    against the configured number of queues in a wide type;
 *  - regions: no zero size, no overflow of gpa+size, user address+size or
 *    mmap_offset+size, inside their file, no overlap, at most max_mem_slots;
 *  - vring addresses are user addresses: each ring must lie inside one region, is
 *    translated to guest-physical through it, and must be aligned;
 *  - every fd received with a request that is rejected is closed; an fd the core
 *    keeps has one owner (the region or vring slot, or the memory change waiting for
 *    the user's verdict) and is closed on replacement, removal, refusal and
 *    disconnect.
 * The core never maps guest memory.
 */
#include "vhost_user.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vp_memtable.h"
#include "vp_outq.h"
#include "vp_vring.h"

/** Bytes of replies the core queues for a frontend that does not read them (a reply
 *  is at most 76 bytes): beyond that the frontend is dropped. */
#define VU_OUTQ_MAX (64 * 1024)

/* ---- Request names ---- */

static const char *const vu_request_names[VU_REQUEST_MAX] = {
    [VU_NONE] = "NONE",
    [VU_GET_FEATURES] = "GET_FEATURES",
    [VU_SET_FEATURES] = "SET_FEATURES",
    [VU_SET_OWNER] = "SET_OWNER",
    [VU_RESET_OWNER] = "RESET_OWNER",
    [VU_SET_MEM_TABLE] = "SET_MEM_TABLE",
    [VU_SET_LOG_BASE] = "SET_LOG_BASE",
    [VU_SET_LOG_FD] = "SET_LOG_FD",
    [VU_SET_VRING_NUM] = "SET_VRING_NUM",
    [VU_SET_VRING_ADDR] = "SET_VRING_ADDR",
    [VU_SET_VRING_BASE] = "SET_VRING_BASE",
    [VU_GET_VRING_BASE] = "GET_VRING_BASE",
    [VU_SET_VRING_KICK] = "SET_VRING_KICK",
    [VU_SET_VRING_CALL] = "SET_VRING_CALL",
    [VU_SET_VRING_ERR] = "SET_VRING_ERR",
    [VU_GET_PROTOCOL_FEATURES] = "GET_PROTOCOL_FEATURES",
    [VU_SET_PROTOCOL_FEATURES] = "SET_PROTOCOL_FEATURES",
    [VU_GET_QUEUE_NUM] = "GET_QUEUE_NUM",
    [VU_SET_VRING_ENABLE] = "SET_VRING_ENABLE",
    [VU_SEND_RARP] = "SEND_RARP",
    [VU_NET_SET_MTU] = "NET_SET_MTU",
    [VU_SET_SLAVE_REQ_FD] = "SET_SLAVE_REQ_FD",
    [VU_IOTLB_MSG] = "IOTLB_MSG",
    [VU_SET_VRING_ENDIAN] = "SET_VRING_ENDIAN",
    [VU_GET_CONFIG] = "GET_CONFIG",
    [VU_SET_CONFIG] = "SET_CONFIG",
    [VU_CREATE_CRYPTO_SESSION] = "CREATE_CRYPTO_SESSION",
    [VU_CLOSE_CRYPTO_SESSION] = "CLOSE_CRYPTO_SESSION",
    [VU_POSTCOPY_ADVISE] = "POSTCOPY_ADVISE",
    [VU_POSTCOPY_LISTEN] = "POSTCOPY_LISTEN",
    [VU_POSTCOPY_END] = "POSTCOPY_END",
    [VU_GET_INFLIGHT_FD] = "GET_INFLIGHT_FD",
    [VU_SET_INFLIGHT_FD] = "SET_INFLIGHT_FD",
    [VU_GPU_SET_SOCKET] = "GPU_SET_SOCKET",
    [VU_RESET_DEVICE] = "RESET_DEVICE",
    [VU_VRING_KICK] = "VRING_KICK",
    [VU_GET_MAX_MEM_SLOTS] = "GET_MAX_MEM_SLOTS",
    [VU_ADD_MEM_REG] = "ADD_MEM_REG",
    [VU_REM_MEM_REG] = "REM_MEM_REG",
    [VU_SET_STATUS] = "SET_STATUS",
    [VU_GET_STATUS] = "GET_STATUS",
};

const char *vu_request_name(uint32_t request)
{
    if (request < VU_REQUEST_MAX && vu_request_names[request])
        return vu_request_names[request];
    return "UNKNOWN";
}

/* ---- State ---- */

/** One memory region as the frontend described it, plus its fd and file identity. */
struct vu_region {
    uint64_t gpa, size, uaddr, mmap_offset;
    int fd;                   /* owned */
    dev_t st_dev;
    ino_t st_ino;
};

struct vu_mem {
    unsigned n;
    struct vu_region r[VP_MAX_REGIONS];
};

struct vu_vring {
    uint32_t num;
    uint64_t desc_user, avail_user, used_user;
    uint16_t base;
    int kick_fd, call_fd, err_fd; /* owned; -1 none */
    bool have_num, have_addr, have_base, have_kick, have_call;
    bool call_fresh;          /* a SET_VRING_CALL came after the last SET_VRING_KICK */
    bool enabled;             /* SET_VRING_ENABLE */
    bool running;             /* complete and started (ops->vring_started), until
                                 GET_VRING_BASE */
};

/**
 * A memory change in progress (ADD_MEM_REG, REM_MEM_REG, SET_MEM_TABLE): the regions
 * it removes, then the ones it adds, applied one at a time in that order. Each one
 * waits for the user's verdict (ops->mem_added /
 * mem_removed, possibly deferred to vu_dev_reply_mem); the request is answered once
 * every change has one.
 */
struct vu_mem_job {
    uint32_t request;          /* VU_NONE: no job */
    bool need_reply;           /* the frontend waits for a REPLY_ACK */
    bool refused;              /* a change was refused: failure reply */
    bool in_callback;          /* the user's callback for the current change runs */
    bool answered;             /* vu_dev_reply_mem() came from inside the callback */
    int result;                /* ... with this verdict */
    unsigned nrem, nadd, next; /* changes: rem_gpa[0..nrem), add[0..nadd); next: current */
    uint64_t rem_gpa[VP_MAX_REGIONS];         /* regions of dev->mem, by guest address */
    struct vu_region add[VU_MEM_TABLE_MAX];   /* fds owned by the job until committed */
};

/** A request being received. */
struct vu_msg {
    uint32_t request, flags, size;
    uint8_t payload[VU_MAX_PAYLOAD];
    int fds[VU_MAX_FDS];
    unsigned nfds;
};

struct vu_dev {
    int sock;
    struct vu_dev_config cfg;
    struct vu_dev_ops ops;
    void *opaque;

    void (*watch)(struct vu_dev *, bool, void *);
    void *watch_data;
    void (*owatch)(struct vu_dev *, bool, void *);
    void *owatch_data;
    struct vp_outq outq;      /* replies not written yet (protocol/vp_outq.h) */
    void (*log)(struct vu_dev *, enum vu_log_level, const char *, void *);
    void *log_data;

    /* receiver */
    uint8_t hdr[VU_HDR_SIZE];
    size_t got;               /* bytes of the current message received */
    struct vu_msg msg;

    /* negotiation */
    uint64_t offered;         /* last GET_FEATURES answer */
    uint64_t features;        /* SET_FEATURES */
    bool features_set;
    uint64_t pf_offered;
    uint64_t protocol_features;
    bool owner;
    unsigned excess;          /* highest virtqueue index + 1 named beyond nqueues */

    struct vu_mem mem;
    struct vu_mem scratch;    /* candidate table while a change is validated */
    struct vu_vring vq[VU_MAX_QUEUES];

    /* deferred reply */
    uint32_t pending;         /* VU_NONE, VU_GET_FEATURES, VU_GET_VRING_BASE, or the
                                 request of job while it waits for vu_dev_reply_mem */
    uint32_t pending_index;
    struct vu_mem_job job;

    /* life cycle */
    bool broken;              /* sticky: no further request is handled */
    bool closed;              /* socket closed, disconnected() called */
    int broken_errno;
    unsigned depth;           /* nesting of public entry points */
    bool free_pending;
    bool want_input;          /* last state told to the watch hook */
    vp_error err;

    struct vu_vring_info info; /* scratch for ops->vring_started / vring_changed */
};

/* ---- Small helpers ---- */

static void vu_log(struct vu_dev *dev, enum vu_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void vu_log(struct vu_dev *dev, enum vu_log_level level, const char *fmt, ...)
{
    if (!dev->log)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    dev->log(dev, level, buf, dev->log_data);
}

/** Record an error reason; returns -EINVAL for `return vu_err(...)`. */
static int vu_err(struct vu_dev *dev, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int vu_err(struct vu_dev *dev, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dev->err.msg, sizeof(dev->err.msg), fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/** Make the device broken (sticky) with @reason already in dev->err. */
static void vu_break(struct vu_dev *dev, int errnum)
{
    if (dev->broken)
        return;
    dev->broken = true;
    dev->broken_errno = errnum;
    vu_log(dev, errnum == ECONNRESET ? VU_LOG_INFO : VU_LOG_WARNING, "vhost-user: %s",
           dev->err.msg);
}

static void vu_set_want_input(struct vu_dev *dev, bool want)
{
    if (dev->want_input == want)
        return;
    dev->want_input = want;
    if (dev->watch)
        dev->watch(dev, want, dev->watch_data);
}

static bool vu_is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

static bool vu_has_pf(const struct vu_dev *dev, unsigned bit)
{
    return dev->protocol_features & (1ULL << bit);
}

static void vu_msg_close_fds(struct vu_msg *m)
{
    vp_close_fds(m->fds, m->nfds);
    m->nfds = 0;
}

/* ---- Memory table ---- */

static void vu_region_to_vp(const struct vu_region *r, struct vp_region *out)
{
    out->gpa = r->gpa;
    out->size = r->size;
    out->mmap_offset = r->mmap_offset;
    out->fd = r->fd;
}

/** @mem as the shared memory table (protocol/vp_memtable.h: target = the frontend's
 *  user address, file_offset = mmap_offset, slot = index in @mem), without entry @skip
 *  (UINT32_MAX: none). Overlap checks and translations are vp_mt_*'s on it. */
static void vu_mem_view(const struct vu_mem *mem, unsigned skip, struct vp_memtable *t)
{
    vp_mt_init(t, VP_MAX_REGIONS);
    for (unsigned i = 0; i < mem->n; i++)
        if (i != skip)
            t->r[t->n++] = (struct vp_mt_region){ mem->r[i].gpa, mem->r[i].size,
                                                  mem->r[i].uaddr, mem->r[i].mmap_offset, i };
}

/** Decode one 32-byte wire region and check it on its own (no fd, no table). */
static int vu_region_decode(struct vu_dev *dev, const char *what, const uint8_t *p,
                            struct vu_region *r)
{
    r->gpa = vp_get_le64(p);
    r->size = vp_get_le64(p + 8);
    r->uaddr = vp_get_le64(p + 16);
    r->mmap_offset = vp_get_le64(p + 24);
    r->fd = -1;
    if (r->size == 0)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 " has zero size", what, r->gpa);
    if (!vp_span_ok(r->gpa, r->size))
        return vu_err(dev, "%s: region guest address range 0x%" PRIx64 "+0x%" PRIx64
                      " overflows", what, r->gpa, r->size);
    if (!vp_span_ok(r->uaddr, r->size))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": user address range 0x%" PRIx64
                      "+0x%" PRIx64 " overflows", what, r->gpa, r->uaddr, r->size);
    if (!vp_span_ok(r->mmap_offset, r->size))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": mmap offset range 0x%" PRIx64
                      "+0x%" PRIx64 " overflows", what, r->gpa, r->mmap_offset, r->size);
    return 0;
}

/** Check @r's fd (a regular file or memfd that holds the region) and record its
 *  identity. Does not take the fd. */
static int vu_region_check_fd(struct vu_dev *dev, const char *what, struct vu_region *r,
                              int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": fstat: %s", what, r->gpa,
                      strerror(errno));
    if (!S_ISREG(st.st_mode))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": fd is not a regular file or memfd",
                      what, r->gpa);
    if (!vp_range_ok(r->mmap_offset, r->size, (uint64_t)st.st_size))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": mmap offset 0x%" PRIx64 "+0x%" PRIx64
                      " extends beyond its file (%lld bytes)", what, r->gpa, r->mmap_offset,
                      r->size, (long long)st.st_size);
    r->st_dev = st.st_dev;
    r->st_ino = st.st_ino;
    return 0;
}

/** Same region: every field the frontend gave and the same file. */
static bool vu_region_same(const struct vu_region *a, const struct vu_region *b)
{
    return a->gpa == b->gpa && a->size == b->size && a->uaddr == b->uaddr &&
           a->mmap_offset == b->mmap_offset && a->st_dev == b->st_dev &&
           a->st_ino == b->st_ino;
}

/** Check that @r overlaps no region of @mem other than index @skip (guest-physical
 *  and user ranges: vp_mt_check_regions with disjoint targets). */
static int vu_mem_check_overlap(struct vu_dev *dev, const char *what, const struct vu_mem *mem,
                                const struct vu_region *r, unsigned skip)
{
    struct vp_memtable t;
    vu_mem_view(mem, skip, &t);
    struct vp_mt_region c = { r->gpa, r->size, r->uaddr, r->mmap_offset, 0 };
    vp_error e = { "" };
    if (vp_mt_check_regions(t.r, t.n, &c, 1, VP_MT_DISJOINT_TARGETS, NULL, &e) < 0)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 " (user address 0x%" PRIx64 "; targets "
                      "are user addresses): %s", what, r->gpa, r->uaddr, e.msg);
    return 0;
}

static int vu_mem_find_gpa(const struct vu_mem *mem, uint64_t gpa)
{
    struct vp_memtable t;
    vu_mem_view(mem, UINT32_MAX, &t);
    return vp_mt_find(&t, gpa);
}

static unsigned vu_mem_limit(const struct vu_dev *dev)
{
    return dev->cfg.max_mem_slots;
}

/**
 * Translate the user range [uaddr, uaddr+len) to guest-physical through @mem; the
 * range must lie inside one region (STYLE habit 6: a ring never spans regions).
 */
static int vu_translate(struct vu_dev *dev, const struct vp_memtable *t, uint32_t index,
                        const char *ring, uint64_t uaddr, uint64_t len, uint64_t align,
                        uint64_t *gpa)
{
    uint64_t g = 0;
    uint64_t got = vp_mt_translate_target(t, uaddr, len, &g);
    if (got == 0)
        return vu_err(dev, "vring %u: %s ring user address 0x%" PRIx64
                      " is outside every memory region", index, ring, uaddr);
    if (got < len) {
        int k = vp_mt_lookup(t, g);
        return vu_err(dev, "vring %u: %s ring at user address 0x%" PRIx64 " (%" PRIu64
                      " bytes) crosses the end of region gpa 0x%" PRIx64, index, ring,
                      uaddr, len, k >= 0 ? t->r[k].gpa : g);
    }
    if (g & (align - 1))
        return vu_err(dev, "vring %u: %s ring guest-physical address 0x%" PRIx64
                      " is not %" PRIu64 "-byte aligned", index, ring, g, align);
    *gpa = g;
    return 0;
}

static int vu_vring_translate(struct vu_dev *dev, const struct vu_mem *mem, uint32_t index,
                              const struct vu_vring *q, uint32_t num, struct vp_virtq *out)
{
    /* Split-ring sizes (vp_vring.h); num 0: unknown yet, only the first byte counts. */
    uint64_t ld = num ? vp_vring_desc_size(num) : 1, la = num ? vp_vring_avail_size(num) : 1,
             lu = num ? vp_vring_used_size(num) : 1;
    struct vp_memtable t;
    vu_mem_view(mem, UINT32_MAX, &t);
    int ret = vu_translate(dev, &t, index, "descriptor", q->desc_user, ld, 16, &out->desc);
    if (!ret)
        ret = vu_translate(dev, &t, index, "avail", q->avail_user, la, 2, &out->avail);
    if (!ret)
        ret = vu_translate(dev, &t, index, "used", q->used_user, lu, 4, &out->used);
    return ret;
}

/** After a memory change: every running vring must still translate to the same
 *  guest-physical addresses through @mem. */
static int vu_mem_check_running(struct vu_dev *dev, const char *what, const struct vu_mem *mem)
{
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++) {
        const struct vu_vring *q = &dev->vq[i];
        if (!q->running)
            continue;
        struct vp_virtq before, after;
        if (vu_vring_translate(dev, &dev->mem, i, q, q->num, &before) < 0 ||
            vu_vring_translate(dev, mem, i, q, q->num, &after) < 0 ||
            before.desc != after.desc || before.avail != after.avail ||
            before.used != after.used)
            return vu_err(dev, "%s: the change would remove the memory of running vring %u",
                          what, i);
    }
    return 0;
}

static void vu_mem_clear(struct vu_mem *mem)
{
    for (unsigned i = 0; i < mem->n; i++)
        vp_close_fd(&mem->r[i].fd);
    mem->n = 0;
}

/** Drop a memory change in progress, closing the fds of regions not added yet. */
static void vu_job_clear(struct vu_mem_job *j)
{
    for (unsigned i = 0; i < j->nadd; i++)
        vp_close_fd(&j->add[i].fd);
    memset(j, 0, sizeof(*j));
    j->request = VU_NONE;
}

/* ---- Vrings ---- */

static void vu_vring_init(struct vu_vring *q)
{
    memset(q, 0, sizeof(*q));
    q->kick_fd = q->call_fd = q->err_fd = -1;
}

static void vu_vring_close(struct vu_vring *q)
{
    vp_close_fd(&q->kick_fd);
    vp_close_fd(&q->call_fd);
    vp_close_fd(&q->err_fd);
}

static void vu_vring_describe(const struct vu_dev *dev, uint32_t index, struct vp_virtq *out)
{
    const struct vu_vring *q = &dev->vq[index];
    memset(out, 0, sizeof(*out));
    out->index = index;
    out->num = q->num;
    out->last_avail_idx = q->base;
    out->kick_fd = q->kick_fd;
    out->call_fd = q->call_fd;
}

static bool vu_any_running(const struct vu_dev *dev)
{
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++)
        if (dev->vq[i].running)
            return true;
    return false;
}

/** The frontend stopped vring @index (GET_VRING_BASE): it re-sends num, base,
 *  addresses and kick at the next start; call and enable stay. */
static void vu_vring_stop(struct vu_dev *dev, uint32_t index)
{
    struct vu_vring *q = &dev->vq[index];
    bool was_running = q->running;
    q->running = false;
    q->have_num = q->have_addr = q->have_base = q->have_kick = false;
    vp_close_fd(&q->kick_fd);
    if (was_running && !vu_any_running(dev))
        vu_log(dev, VU_LOG_INFO, "vhost-user: device stopped (no virtqueue runs)");
}

/** Is vring @q enabled? With VHOST_USER_F_PROTOCOL_FEATURES it is what
 *  SET_VRING_ENABLE said; without it every ring is enabled (vhost-user.rst). */
static bool vu_vring_enabled(const struct vu_dev *dev, const struct vu_vring *q)
{
    if (dev->features & (1ULL << VU_F_PROTOCOL_FEATURES))
        return q->enabled;
    return true;
}

static bool vu_vring_complete(const struct vu_vring *q)
{
    return q->have_num && q->have_addr && q->have_base && q->have_kick;
}

/** Fill dev->info for vring @index (translated when running). */
static int vu_vring_info_fill(struct vu_dev *dev, uint32_t index)
{
    const struct vu_vring *q = &dev->vq[index];
    struct vu_vring_info *info = &dev->info;
    memset(info, 0, sizeof(*info));
    vu_vring_describe(dev, index, &info->vq);
    info->running = q->running;
    info->enabled = vu_vring_enabled(dev, q);
    info->call_fresh = q->call_fresh;
    if (!q->running)
        return 0;
    return vu_vring_translate(dev, &dev->mem, index, q, q->num, &info->vq);
}

/**
 * Start every vring that has become complete (see ops->vring_started): features set,
 * a memory table, num, addresses, base and kick. The call fd is not required: QEMU 7.2
 * sends its real one right after the kick (info.call_fresh tells), a polling frontend
 * none. Returns -EINVAL (reason in dev->err) when a ring no longer translates.
 */
static int vu_check_rings(struct vu_dev *dev)
{
    if (!dev->features_set || dev->mem.n == 0)
        return 0;
    for (uint32_t i = 0; i < dev->cfg.nqueues && !dev->broken; i++) {
        struct vu_vring *q = &dev->vq[i];
        if (q->running || !vu_vring_complete(q))
            continue;
        q->running = true;
        int ret = vu_vring_info_fill(dev, i);
        if (ret < 0) {
            q->running = false;
            return ret;
        }
        vu_log(dev, VU_LOG_INFO, "vhost-user: vring %u runs: num %u base %u%s", i, q->num,
               q->base, vu_vring_enabled(dev, q) ? "" : " (disabled)");
        if (dev->ops.vring_started)
            dev->ops.vring_started(dev, &dev->info, dev->opaque);
    }
    return 0;
}

/* ---- Sending ---- */

/** Send one reply (flags: version | REPLY) through the output queue: what the socket
 *  does not take now goes out when it is writable (never a blocking wait). A queue
 *  over VU_OUTQ_MAX or a send error breaks the device. */
static int vu_send_reply(struct vu_dev *dev, uint32_t request, const void *payload, uint32_t size)
{
    uint8_t buf[VU_HDR_SIZE + 64];
    if (size > sizeof(buf) - VU_HDR_SIZE)
        return -EINVAL;
    vp_put_le32(buf, request);
    vp_put_le32(buf + 4, VU_FLAG_VERSION | VU_FLAG_REPLY);
    vp_put_le32(buf + 8, size);
    if (size)
        memcpy(buf + VU_HDR_SIZE, payload, size);
    int r = vp_outq_push(&dev->outq, buf, VU_HDR_SIZE + size, NULL, 0, request);
    if (r == -ENOBUFS) {
        vu_err(dev, "reply to %s: the frontend does not read its socket (%zu bytes of "
               "replies queued)", vu_request_name(request), dev->outq.bytes);
        vu_break(dev, EIO);
        return -EIO;
    }
    if (r < 0) {
        vu_err(dev, "reply to %s: send: %s", vu_request_name(request), strerror(-r));
        vu_break(dev, EIO);
        return r;
    }
    return 0;
}

static int vu_reply_u64(struct vu_dev *dev, uint32_t request, uint64_t v)
{
    uint8_t p[8];
    vp_put_le64(p, v);
    return vu_send_reply(dev, request, p, sizeof(p));
}

static int vu_reply_state(struct vu_dev *dev, uint32_t request, uint32_t index, uint32_t num)
{
    uint8_t p[8];
    vp_put_le32(p, index);
    vp_put_le32(p + 4, num);
    return vu_send_reply(dev, request, p, sizeof(p));
}

/* ---- Memory changes (ops->mem_added / mem_removed, vu_dev_reply_mem) ---- */

static bool vu_need_reply(const struct vu_dev *dev, const struct vu_msg *m)
{
    return (m->flags & VU_FLAG_NEED_REPLY) && vu_has_pf(dev, VU_PF_REPLY_ACK);
}

/** Start a job for @m's request; changes are added with vu_job_rem/vu_job_add. */
static void vu_job_begin(struct vu_dev *dev, const struct vu_msg *m)
{
    vu_job_clear(&dev->job);
    dev->job.request = m->request;
    dev->job.need_reply = vu_need_reply(dev, m);
}

static void vu_job_rem(struct vu_dev *dev, uint64_t gpa)
{
    dev->job.rem_gpa[dev->job.nrem++] = gpa;
}

/** Queue @r for adding; the job takes @m's fd @fdi. */
static void vu_job_add(struct vu_dev *dev, const struct vu_region *r, struct vu_msg *m,
                       unsigned fdi)
{
    struct vu_region *a = &dev->job.add[dev->job.nadd++];
    *a = *r;
    a->fd = m->fds[fdi];
    m->fds[fdi] = -1;
}

/** Refuse the current change of the job (with need_reply): reason in dev->err. */
static void vu_job_refuse(struct vu_dev *dev)
{
    dev->job.refused = true;
    vu_log(dev, VU_LOG_WARNING, "vhost-user: %s: failure reply", dev->err.msg);
}

/** Apply the current change with the verdict @result (0 accepts, -errno refuses;
 *  anything else nonzero refuses too). */
static void vu_job_apply(struct vu_dev *dev, struct vu_region *r, bool add, int result)
{
    struct vu_mem_job *j = &dev->job;
    const char *what = vu_request_name(j->request);
    if (result != 0) {
        if (result > 0)
            result = -EINVAL; /* not an errno: refused all the same */
        vu_err(dev, "%s: region gpa 0x%" PRIx64 " size 0x%" PRIx64 ": %s refused by the "
               "backend user (%s)", what, r->gpa, r->size, add ? "adding" : "removal",
               strerror(-result));
        if (j->need_reply) {
            vu_job_refuse(dev);
            if (add)
                vp_close_fd(&r->fd);
            return;
        }
        /* No REPLY_ACK: the frontend cannot be told and goes on as if it worked. */
        vu_log(dev, VU_LOG_WARNING, "vhost-user: %s; the frontend asked for no reply "
               "(REPLY_ACK), so it cannot be told: the change is applied as it believes",
               dev->err.msg);
    }
    if (add) {
        dev->mem.r[dev->mem.n++] = *r;
        r->fd = -1;
        return;
    }
    int i = vu_mem_find_gpa(&dev->mem, r->gpa);
    if (i < 0)
        return;
    struct vu_region old = dev->mem.r[i];
    dev->mem.r[i] = dev->mem.r[--dev->mem.n];
    vp_close_fd(&old.fd);
}

/** vu_job_run(): the job ended with a refusal, already logged; the failure reply is
 *  the caller's. */
#define VU_REFUSED 2

/**
 * Run the job from its current change on. Returns VU_DEFERRED while the user's verdict
 * on a change is outstanding (the table and the user's view stay consistent: nothing
 * else is read meanwhile), 0 when every change has one, VU_REFUSED when one was
 * refused (only with need_reply), -EPROTO when the device broke.
 */
static int vu_job_run(struct vu_dev *dev)
{
    struct vu_mem_job *j = &dev->job;
    const char *what = vu_request_name(j->request);
    while (j->next < j->nrem + j->nadd && !dev->broken) {
        bool add = j->next >= j->nrem;
        struct vu_region *r;
        if (add) {
            r = &j->add[j->next - j->nrem];
            /* Checked with the whole request; only an earlier refusal in the same
             * SET_MEM_TABLE (a region that stayed) can make these fail now. */
            int ret = vu_mem_check_overlap(dev, what, &dev->mem, r, UINT32_MAX);
            if (!ret && dev->mem.n >= vu_mem_limit(dev))
                ret = vu_err(dev, "%s: region gpa 0x%" PRIx64 ": too many regions (limit %u)",
                             what, r->gpa, vu_mem_limit(dev));
            if (ret < 0) {
                vu_job_refuse(dev);
                vp_close_fd(&r->fd);
                j->next++;
                continue;
            }
        } else {
            int i = vu_mem_find_gpa(&dev->mem, j->rem_gpa[j->next]);
            if (i < 0) {
                j->next++;
                continue;
            }
            r = &dev->mem.r[i];
        }
        int verdict = 0;
        int (*cb)(struct vu_dev *, const struct vp_region *, void *) =
            add ? dev->ops.mem_added : dev->ops.mem_removed;
        if (cb) {
            struct vp_region vr;
            vu_region_to_vp(r, &vr);
            j->in_callback = true;
            j->answered = false;
            dev->pending = j->request;
            int ret = cb(dev, &vr, dev->opaque);
            j->in_callback = false;
            if (dev->broken)
                break;
            if (ret == VU_DEFERRED && !j->answered)
                return VU_DEFERRED;
            dev->pending = VU_NONE;
            verdict = ret == VU_DEFERRED ? j->result : ret;
        }
        vu_job_apply(dev, r, add, verdict);
        j->next++;
    }
    bool refused = j->refused;
    vu_job_clear(j);
    dev->pending = VU_NONE;
    if (dev->broken)
        return -EPROTO;
    /* A refused addition that was to replace a removed region may leave a running
     * vring without memory (SET_MEM_TABLE only): nothing sane is left to serve. */
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++) {
        const struct vu_vring *q = &dev->vq[i];
        struct vp_virtq v;
        if (q->running && vu_vring_translate(dev, &dev->mem, i, q, q->num, &v) < 0) {
            vu_err(dev, "%s: after the refused change running vring %u has no memory", what, i);
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
    }
    return refused ? VU_REFUSED : 0;
}

/* ---- Handlers: one per request (vu_<request>_exec) ----
 * Each runs after vu_dispatch() checked payload size, fd count, protocol feature and
 * queue index. It returns 0, VU_DEFERRED, VU_REFUSED (a memory change the user
 * refused: failure reply), or -EINVAL with a reason in dev->err. It
 * takes an fd it keeps by setting msg->fds[i] to -1; the dispatcher closes the rest. */

static uint64_t vu_payload_u64(const struct vu_msg *m) { return vp_get_le64(m->payload); }
static uint32_t vu_state_index(const struct vu_msg *m) { return vp_get_le32(m->payload); }
static uint32_t vu_state_num(const struct vu_msg *m) { return vp_get_le32(m->payload + 4); }

/** Features the core can never carry: dirty logging, IOTLB, packed rings. */
#define VU_UNSUPPORTED_FEATURES \
    ((1ULL << VU_F_LOG_ALL) | (1ULL << VU_F_IOMMU_PLATFORM) | (1ULL << VU_F_RING_PACKED))

static int vu_finish_get_features(struct vu_dev *dev, uint64_t features)
{
    dev->offered = (features & ~VU_UNSUPPORTED_FEATURES) | (1ULL << VU_F_PROTOCOL_FEATURES);
    dev->pending = VU_NONE;
    return vu_reply_u64(dev, VU_GET_FEATURES, dev->offered);
}

static int vu_get_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    uint64_t f = dev->cfg.features;
    if (dev->ops.get_features) {
        dev->pending = VU_GET_FEATURES;
        int r = dev->ops.get_features(dev, &f, dev->opaque);
        if (r == VU_DEFERRED)
            return dev->pending == VU_GET_FEATURES ? VU_DEFERRED : 0;
        if (r < 0) {
            dev->pending = VU_NONE;
            return vu_err(dev, "GET_FEATURES: the backend user failed: %s", strerror(-r));
        }
        if (dev->pending != VU_GET_FEATURES) /* answered from inside the callback */
            return 0;
    }
    return vu_finish_get_features(dev, f);
}

static int vu_set_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint64_t f = vu_payload_u64(m);
    if (f & ~dev->offered)
        return vu_err(dev, "SET_FEATURES 0x%" PRIx64 " has bits 0x%" PRIx64
                      " that were not offered (0x%" PRIx64 ")", f, f & ~dev->offered,
                      dev->offered);
    if (vu_any_running(dev) && f != dev->features)
        return vu_err(dev, "SET_FEATURES 0x%" PRIx64 " changes the features (0x%" PRIx64
                      ") of a running device", f, dev->features);
    dev->features = f;
    dev->features_set = true;
    if (dev->ops.features_set)
        dev->ops.features_set(dev, f, dev->opaque);
    return 0;
}

static uint64_t vu_pf_supported(const struct vu_dev *dev)
{
    uint64_t pf = (1ULL << VU_PF_REPLY_ACK) | (1ULL << VU_PF_CONFIGURE_MEM_SLOTS);
    /* QEMU refuses queues=N>1 unless the backend offers MQ and GET_QUEUE_NUM. */
    if (dev->cfg.nqueues > 2)
        pf |= 1ULL << VU_PF_MQ;
    return pf;
}

static int vu_get_protocol_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    dev->pf_offered = vu_pf_supported(dev);
    return vu_reply_u64(dev, VU_GET_PROTOCOL_FEATURES, dev->pf_offered);
}

static int vu_set_protocol_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint64_t pf = vu_payload_u64(m);
    uint64_t ok = vu_pf_supported(dev);
    if (pf & ~ok)
        return vu_err(dev, "SET_PROTOCOL_FEATURES 0x%" PRIx64 ": unsupported protocol "
                      "features 0x%" PRIx64, pf, pf & ~ok);
    dev->protocol_features = pf;
    return 0;
}

static int vu_get_max_mem_slots_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    return vu_reply_u64(dev, VU_GET_MAX_MEM_SLOTS, vu_mem_limit(dev));
}

static int vu_get_queue_num_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    /* For virtio-net QEMU compares this with its queue *pairs* (net/vhost-user.c). */
    return vu_reply_u64(dev, VU_GET_QUEUE_NUM, dev->cfg.nqueues / 2);
}

static int vu_set_owner_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    /* QEMU sends it once per vhost_dev, i.e. once per queue pair: repeats are fine. */
    dev->owner = true;
    return 0;
}

static int vu_reset_owner_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    /* Deprecated (vhost-user.rst): "ignore, or disable all rings". We reset the ring
     * set-up, which is only sound while no ring runs. */
    if (vu_any_running(dev))
        return vu_err(dev, "RESET_OWNER while virtqueues are running");
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++) {
        vu_vring_close(&dev->vq[i]);
        vu_vring_init(&dev->vq[i]);
    }
    dev->owner = false;
    return 0;
}

/** A frontend set up for more queue pairs than configured is refused at its memory
 *  table (SET_MEM_TABLE, ADD_MEM_REG): the first request of its start that a frontend
 *  waits for (REPLY_ACK), so it reports a failed start in its own words. */
static int vu_check_excess(struct vu_dev *dev, const char *what)
{
    if (!dev->excess)
        return 0;
    return vu_err(dev, "%s: the frontend set up virtqueue %u, but this backend offers %u "
                  "queue pair(s): start it with at most %u (DPDK: queues=%u; QEMU: "
                  "-netdev vhost-user,queues=%u), or the backend with more", what,
                  dev->excess - 1, dev->cfg.nqueues / 2, dev->cfg.nqueues / 2,
                  dev->cfg.nqueues / 2, dev->cfg.nqueues / 2);
}

/** SET_MEM_TABLE: the whole table; applied as a difference to the current one. */
static int vu_set_mem_table_exec(struct vu_dev *dev, struct vu_msg *m)
{
    static const char what[] = "SET_MEM_TABLE";
    if (vu_check_excess(dev, what) < 0)
        return -EINVAL;
    uint32_t n = vp_get_le32(m->payload);
    if (n == 0 || n > VU_MEM_TABLE_MAX)
        return vu_err(dev, "%s: %u regions (1..%u)", what, n, VU_MEM_TABLE_MAX);
    if (n > vu_mem_limit(dev))
        return vu_err(dev, "%s: %u regions, too many regions (limit %u)", what, n,
                      vu_mem_limit(dev));
    if (m->size != 8 + n * VU_REGION_SIZE)
        return vu_err(dev, "%s: payload size %u does not match %u regions (%u bytes)", what,
                      m->size, n, 8 + n * VU_REGION_SIZE);
    if (m->nfds != n)
        return vu_err(dev, "%s: wrong fd count: %u fds for %u regions", what, m->nfds, n);

    /* Build and check the candidate table; nothing is changed until it is valid. */
    struct vu_mem *cand = &dev->scratch;
    cand->n = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct vu_region r;
        int ret = vu_region_decode(dev, what, m->payload + 8 + i * VU_REGION_SIZE, &r);
        if (!ret)
            ret = vu_region_check_fd(dev, what, &r, m->fds[i]);
        if (!ret)
            ret = vu_mem_check_overlap(dev, what, cand, &r, UINT32_MAX);
        if (ret < 0)
            return ret;
        r.fd = -1; /* taken below, once everything is valid */
        cand->r[cand->n++] = r;
    }
    int ret = vu_mem_check_running(dev, what, cand);
    if (ret < 0)
        return ret;

    /* The regions not in the new table go, the new ones come (identical ones stay;
     * the fd of a region already present is closed by the dispatcher). */
    vu_job_begin(dev, m);
    for (unsigned i = 0; i < dev->mem.n; i++) {
        bool keep = false;
        for (unsigned j = 0; j < cand->n && !keep; j++)
            keep = vu_region_same(&dev->mem.r[i], &cand->r[j]);
        if (!keep)
            vu_job_rem(dev, dev->mem.r[i].gpa);
    }
    for (unsigned j = 0; j < cand->n; j++) {
        bool present = false;
        for (unsigned i = 0; i < dev->mem.n && !present; i++)
            present = vu_region_same(&dev->mem.r[i], &cand->r[j]);
        if (!present)
            vu_job_add(dev, &cand->r[j], m, j);
    }
    return vu_job_run(dev);
}

static int vu_add_mem_reg_exec(struct vu_dev *dev, struct vu_msg *m)
{
    static const char what[] = "ADD_MEM_REG";
    if (vu_check_excess(dev, what) < 0)
        return -EINVAL;
    struct vu_region r;
    /* payload: u64 padding, then one region */
    int ret = vu_region_decode(dev, what, m->payload + 8, &r);
    if (!ret)
        ret = vu_region_check_fd(dev, what, &r, m->fds[0]);
    if (ret < 0)
        return ret;
    int i = vu_mem_find_gpa(&dev->mem, r.gpa);
    if (i >= 0 && vu_region_same(&dev->mem.r[i], &r)) {
        /* QEMU 7.2 with queues=N sends every ADD_MEM_REG N times (DESIGN section 8). */
        vu_log(dev, VU_LOG_DEBUG, "vhost-user: %s gpa 0x%" PRIx64 " again: already present",
               what, r.gpa);
        return 0; /* the dispatcher closes the duplicate fd */
    }
    ret = vu_mem_check_overlap(dev, what, &dev->mem, &r, UINT32_MAX);
    if (ret < 0)
        return ret;
    if (dev->mem.n >= vu_mem_limit(dev))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": too many regions (limit %u)", what,
                      r.gpa, vu_mem_limit(dev));
    vu_job_begin(dev, m);
    vu_job_add(dev, &r, m, 0);
    return vu_job_run(dev);
}

static int vu_rem_mem_reg_exec(struct vu_dev *dev, struct vu_msg *m)
{
    static const char what[] = "REM_MEM_REG";
    /* vhost-user.rst: identified by guest address, user address and size; the mmap
     * offset is ignored; an fd, if any, is closed unused (QEMU < 7.1 sent one). */
    struct vu_region r;
    int ret = vu_region_decode(dev, what, m->payload + 8, &r);
    if (ret < 0)
        return ret;
    int i = vu_mem_find_gpa(&dev->mem, r.gpa);
    if (i < 0) {
        /* Idempotent: QEMU 7.2 multi-queue repeats it once per queue pair. */
        vu_log(dev, VU_LOG_DEBUG, "vhost-user: %s gpa 0x%" PRIx64 ": no such region (repeat?)",
               what, r.gpa);
        return 0;
    }
    struct vu_region *cur = &dev->mem.r[i];
    if (cur->size != r.size || cur->uaddr != r.uaddr)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 " is 0x%" PRIx64 " bytes at user 0x%"
                      PRIx64 ", not 0x%" PRIx64 " at 0x%" PRIx64, what, r.gpa, cur->size,
                      cur->uaddr, r.size, r.uaddr);
    struct vu_mem *cand = &dev->scratch;
    *cand = dev->mem;
    cand->r[i] = cand->r[--cand->n];
    ret = vu_mem_check_running(dev, what, cand);
    if (ret < 0)
        return ret;
    vu_job_begin(dev, m);
    vu_job_rem(dev, r.gpa);
    return vu_job_run(dev);
}

static int vu_vring_not_running(struct vu_dev *dev, const char *what, uint32_t index)
{
    if (dev->vq[index].running)
        return vu_err(dev, "%s: vring %u is running (stop it with GET_VRING_BASE first)",
                      what, index);
    return 0;
}

static int vu_set_vring_num_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m), num = vu_state_num(m);
    int ret = vu_vring_not_running(dev, "SET_VRING_NUM", index);
    if (ret < 0)
        return ret;
    if (!vu_is_pow2(num) || num > VP_MAX_VRING_NUM)
        return vu_err(dev, "SET_VRING_NUM: vring %u: num %u is not a power of two in 1..%u",
                      index, num, VP_MAX_VRING_NUM);
    dev->vq[index].num = num;
    dev->vq[index].have_num = true;
    return 0;
}

static int vu_set_vring_addr_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vp_get_le32(m->payload);
    uint32_t flags = vp_get_le32(m->payload + 4);
    struct vu_vring *q = &dev->vq[index];
    int ret = vu_vring_not_running(dev, "SET_VRING_ADDR", index);
    if (ret < 0)
        return ret;
    if (flags & VU_VRING_F_LOG)
        return vu_err(dev, "SET_VRING_ADDR: vring %u: dirty logging (VHOST_VRING_F_LOG) is "
                      "not supported", index);
    if (flags)
        return vu_err(dev, "SET_VRING_ADDR: vring %u: unknown flags 0x%x", index, flags);
    struct vu_vring t = *q;
    t.desc_user = vp_get_le64(m->payload + 8);
    t.used_user = vp_get_le64(m->payload + 16);  /* wire order: desc, used, avail, log */
    t.avail_user = vp_get_le64(m->payload + 24);
    struct vp_virtq v;
    ret = vu_vring_translate(dev, &dev->mem, index, &t, t.have_num ? t.num : 0, &v);
    if (ret < 0)
        return ret;
    q->desc_user = t.desc_user;
    q->used_user = t.used_user;
    q->avail_user = t.avail_user;
    q->have_addr = true;
    return 0;
}

static int vu_set_vring_base_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m), num = vu_state_num(m);
    int ret = vu_vring_not_running(dev, "SET_VRING_BASE", index);
    if (ret < 0)
        return ret;
    if (num > UINT16_MAX)
        return vu_err(dev, "SET_VRING_BASE: vring %u: base %u over 65535 (split rings only)",
                      index, num);
    dev->vq[index].base = (uint16_t)num;
    dev->vq[index].have_base = true;
    return 0;
}

static int vu_finish_get_vring_base(struct vu_dev *dev, uint32_t index, uint16_t v)
{
    dev->pending = VU_NONE;
    vu_vring_stop(dev, index);
    vu_log(dev, VU_LOG_DEBUG, "vhost-user: vring %u stopped at %u", index, v);
    return vu_reply_state(dev, VU_GET_VRING_BASE, index, v);
}

static int vu_get_vring_base_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m);
    struct vu_vring *q = &dev->vq[index];
    uint16_t v = q->have_base ? q->base : 0;
    if (q->running && dev->ops.get_vring_base) {
        dev->pending = VU_GET_VRING_BASE;
        dev->pending_index = index;
        int r = dev->ops.get_vring_base(dev, index, &v, dev->opaque);
        if (r == VU_DEFERRED)
            return dev->pending == VU_GET_VRING_BASE ? VU_DEFERRED : 0;
        if (r < 0) {
            dev->pending = VU_NONE;
            return vu_err(dev, "GET_VRING_BASE: vring %u: the backend user failed: %s", index,
                          strerror(-r));
        }
        if (dev->pending != VU_GET_VRING_BASE)
            return 0;
    }
    return vu_finish_get_vring_base(dev, index, v);
}

/** SET_VRING_KICK/CALL/ERR: u64 index | NOFD flag, 0 or 1 fd accordingly. */
static int vu_vring_fd_exec(struct vu_dev *dev, struct vu_msg *m, int **slot_out,
                            uint32_t *index_out)
{
    const char *what = vu_request_name(m->request);
    uint64_t v = vu_payload_u64(m);
    uint32_t index = (uint32_t)(v & VU_VRING_IDX_MASK);
    bool nofd = v & VU_VRING_NOFD;
    if (v & ~(uint64_t)(VU_VRING_IDX_MASK | VU_VRING_NOFD))
        return vu_err(dev, "%s: unknown bits 0x%" PRIx64 " in the payload", what,
                      v & ~(uint64_t)(VU_VRING_IDX_MASK | VU_VRING_NOFD));
    if (m->nfds != (nofd ? 0u : 1u))
        return vu_err(dev, "%s: vring %u: wrong fd count: %u fds %s the invalid-fd flag", what,
                      index, m->nfds, nofd ? "with" : "without");
    struct vu_vring *q = &dev->vq[index];
    int *slot = m->request == VU_SET_VRING_KICK ? &q->kick_fd
              : m->request == VU_SET_VRING_CALL ? &q->call_fd : &q->err_fd;
    vp_close_fd(slot);
    if (!nofd) {
        *slot = m->fds[0];
        m->fds[0] = -1;
    }
    *slot_out = slot;
    *index_out = index;
    return 0;
}

/** Tell the user about vring @index: new fds of a running ring (@enable_change
 *  false), or a change of its enabled state (any ring). */
static void vu_notify_vring(struct vu_dev *dev, uint32_t index, bool enable_change)
{
    if ((!dev->vq[index].running && !enable_change) || !dev->ops.vring_changed ||
        index >= dev->cfg.nqueues) /* a queue beyond the configured ones never runs */
        return;
    if (vu_vring_info_fill(dev, index) < 0)
        return; /* cannot happen: checked at start and on every memory change */
    dev->ops.vring_changed(dev, &dev->info, dev->opaque);
}

static int vu_set_vring_kick_exec(struct vu_dev *dev, struct vu_msg *m)
{
    int *slot;
    uint32_t index;
    int ret = vu_vring_fd_exec(dev, m, &slot, &index);
    if (ret < 0)
        return ret;
    dev->vq[index].have_kick = true;
    dev->vq[index].call_fresh = false;
    vu_notify_vring(dev, index, false);
    return 0;
}

static int vu_set_vring_call_exec(struct vu_dev *dev, struct vu_msg *m)
{
    int *slot;
    uint32_t index;
    int ret = vu_vring_fd_exec(dev, m, &slot, &index);
    if (ret < 0)
        return ret;
    dev->vq[index].have_call = true;
    dev->vq[index].call_fresh = true;
    vu_notify_vring(dev, index, false);
    return 0;
}

static int vu_set_vring_err_exec(struct vu_dev *dev, struct vu_msg *m)
{
    int *slot;
    uint32_t index;
    return vu_vring_fd_exec(dev, m, &slot, &index);
}

static int vu_set_vring_enable_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m), num = vu_state_num(m);
    if (num > 1)
        return vu_err(dev, "SET_VRING_ENABLE: vring %u: value %u is not 0 or 1", index, num);
    bool was = vu_vring_enabled(dev, &dev->vq[index]);
    dev->vq[index].enabled = num == 1;
    if (vu_vring_enabled(dev, &dev->vq[index]) != was)
        vu_notify_vring(dev, index, true);
    return 0;
}

/* ---- Dispatch table ---- */

enum vu_reply_kind {
    VU_R_ACK,      /* no reply of its own: REPLY_ACK applies */
    VU_R_OWN,      /* answers with its own payload; need_reply is ignored */
};

enum vu_qidx_kind {
    VU_Q_NONE,
    VU_Q_U32,      /* le32 index at payload offset 0 (vring state and address) */
    VU_Q_U64,      /* bits 0-7 of the le64 payload (vring fd messages) */
};

struct vu_handler {
    int (*exec)(struct vu_dev *dev, struct vu_msg *m);
    uint16_t min_size, max_size;   /* payload bytes */
    uint8_t min_fds, max_fds;
    uint8_t reply;                 /* vu_reply_kind */
    uint8_t qidx;                  /* vu_qidx_kind */
    int8_t pfeature;               /* protocol feature bit required, -1 none */
};

#define VU_U64 8
#define VU_STATE 8
#define VU_ADDR 40
#define VU_MEMREG 40

static const struct vu_handler vu_handlers[VU_REQUEST_MAX] = {
    [VU_GET_FEATURES] = {vu_get_features_exec, 0, 0, 0, 0, VU_R_OWN, VU_Q_NONE, -1},
    [VU_SET_FEATURES] = {vu_set_features_exec, VU_U64, VU_U64, 0, 0, VU_R_ACK, VU_Q_NONE, -1},
    [VU_SET_OWNER] = {vu_set_owner_exec, 0, 0, 0, 0, VU_R_ACK, VU_Q_NONE, -1},
    [VU_RESET_OWNER] = {vu_reset_owner_exec, 0, 0, 0, 0, VU_R_ACK, VU_Q_NONE, -1},
    [VU_SET_MEM_TABLE] = {vu_set_mem_table_exec, 8, 8 + VU_MEM_TABLE_MAX * VU_REGION_SIZE,
                          0, VU_MEM_TABLE_MAX, VU_R_ACK, VU_Q_NONE, -1},
    [VU_SET_VRING_NUM] = {vu_set_vring_num_exec, VU_STATE, VU_STATE, 0, 0, VU_R_ACK, VU_Q_U32, -1},
    [VU_SET_VRING_ADDR] = {vu_set_vring_addr_exec, VU_ADDR, VU_ADDR, 0, 0, VU_R_ACK, VU_Q_U32, -1},
    [VU_SET_VRING_BASE] = {vu_set_vring_base_exec, VU_STATE, VU_STATE, 0, 0, VU_R_ACK, VU_Q_U32, -1},
    [VU_GET_VRING_BASE] = {vu_get_vring_base_exec, VU_STATE, VU_STATE, 0, 0, VU_R_OWN, VU_Q_U32, -1},
    [VU_SET_VRING_KICK] = {vu_set_vring_kick_exec, VU_U64, VU_U64, 0, 1, VU_R_ACK, VU_Q_U64, -1},
    [VU_SET_VRING_CALL] = {vu_set_vring_call_exec, VU_U64, VU_U64, 0, 1, VU_R_ACK, VU_Q_U64, -1},
    [VU_SET_VRING_ERR] = {vu_set_vring_err_exec, VU_U64, VU_U64, 0, 1, VU_R_ACK, VU_Q_U64, -1},
    [VU_GET_PROTOCOL_FEATURES] = {vu_get_protocol_features_exec, 0, 0, 0, 0, VU_R_OWN,
                                  VU_Q_NONE, -1},
    [VU_SET_PROTOCOL_FEATURES] = {vu_set_protocol_features_exec, VU_U64, VU_U64, 0, 0,
                                  VU_R_ACK, VU_Q_NONE, -1},
    [VU_GET_QUEUE_NUM] = {vu_get_queue_num_exec, 0, 0, 0, 0, VU_R_OWN, VU_Q_NONE, -1},
    [VU_SET_VRING_ENABLE] = {vu_set_vring_enable_exec, VU_STATE, VU_STATE, 0, 0, VU_R_ACK,
                             VU_Q_U32, -1},
    [VU_GET_MAX_MEM_SLOTS] = {vu_get_max_mem_slots_exec, 0, 0, 0, 0, VU_R_OWN, VU_Q_NONE,
                              VU_PF_CONFIGURE_MEM_SLOTS},
    [VU_ADD_MEM_REG] = {vu_add_mem_reg_exec, VU_MEMREG, VU_MEMREG, 1, 1, VU_R_ACK, VU_Q_NONE,
                        VU_PF_CONFIGURE_MEM_SLOTS},
    [VU_REM_MEM_REG] = {vu_rem_mem_reg_exec, VU_MEMREG, VU_MEMREG, 0, 1, VU_R_ACK, VU_Q_NONE,
                        VU_PF_CONFIGURE_MEM_SLOTS},
};

/** The central checks: known request, payload size, fd count, protocol feature,
 *  queue index. Returns the handler, or NULL with a reason in dev->err. */
static const struct vu_handler *vu_check_request(struct vu_dev *dev, const struct vu_msg *m)
{
    const char *name = vu_request_name(m->request);
    if (m->request >= VU_REQUEST_MAX) {
        vu_err(dev, "unknown request %u", m->request);
        return NULL;
    }
    const struct vu_handler *h = &vu_handlers[m->request];
    if (!h->exec) {
        vu_err(dev, "unsupported request %s (%u)", name, m->request);
        return NULL;
    }
    if (m->size < h->min_size || m->size > h->max_size) {
        if (h->min_size == h->max_size)
            vu_err(dev, "%s: payload size %u, expected %u", name, m->size, h->min_size);
        else
            vu_err(dev, "%s: payload size %u not in %u..%u", name, m->size, h->min_size,
                   h->max_size);
        return NULL;
    }
    if (m->nfds < h->min_fds || m->nfds > h->max_fds) {
        if (h->min_fds == h->max_fds)
            vu_err(dev, "%s: wrong fd count: %u fds, expected %u", name, m->nfds, h->min_fds);
        else
            vu_err(dev, "%s: wrong fd count: %u fds, expected %u..%u", name, m->nfds,
                   h->min_fds, h->max_fds);
        return NULL;
    }
    if (h->pfeature >= 0 && !vu_has_pf(dev, (unsigned)h->pfeature)) {
        vu_err(dev, "%s: protocol feature %d was not negotiated", name, h->pfeature);
        return NULL;
    }
    uint64_t index = 0;
    bool has_index = true;
    if (h->qidx == VU_Q_U32)
        index = vp_get_le32(m->payload);
    else if (h->qidx == VU_Q_U64)
        index = vp_get_le64(m->payload) & VU_VRING_IDX_MASK;
    else
        has_index = false;
    if (has_index && index >= VU_MAX_QUEUES) {
        vu_err(dev, "%s: vring index %" PRIu64 " out of range (%u queues, at most %u)", name,
               index, dev->cfg.nqueues, VU_MAX_QUEUES);
        return NULL;
    }
    if (has_index && index >= dev->cfg.nqueues && index + 1 > dev->excess) {
        /* Kept, never started: the frontend is told at its memory table. */
        if (!dev->excess)
            vu_log(dev, VU_LOG_WARNING, "vhost-user: %s names virtqueue %" PRIu64 ": the "
                   "frontend is set up for more queue pairs than the %u this backend offers",
                   name, index, dev->cfg.nqueues / 2);
        dev->excess = (unsigned)index + 1;
    }
    return h;
}

/** Handle the complete request in dev->msg. */
static void vu_dispatch(struct vu_dev *dev)
{
    struct vu_msg *m = &dev->msg;
    const char *name = vu_request_name(m->request);
    bool need_reply = vu_need_reply(dev, m);
    vu_log(dev, VU_LOG_DEBUG, "vhost-user: %s (%u) size %u fds %u%s", name, m->request,
           m->size, m->nfds, need_reply ? " need_reply" : "");

    const struct vu_handler *h = vu_check_request(dev, m);
    int ret = h ? h->exec(dev, m) : -EINVAL;
    vu_msg_close_fds(m);
    if (dev->broken)
        return;
    /* Does the request answer with its own payload? (Known even if rejected.) */
    bool acked = !(m->request < VU_REQUEST_MAX && vu_handlers[m->request].exec &&
                   vu_handlers[m->request].reply == VU_R_OWN);
    if (ret == VU_REFUSED) {
        /* A memory change the user refused (logged): only with need_reply. */
        if ((!need_reply || vu_reply_u64(dev, m->request, 1) == 0) &&
            vu_check_rings(dev) < 0)
            vu_break(dev, EPROTO);
        return;
    }
    if (ret == 0 && need_reply && acked)
        ret = vu_reply_u64(dev, m->request, 0) < 0 ? -EIO : 0;
    if (ret == 0 || ret == VU_DEFERRED) {
        if (ret == VU_DEFERRED)
            vu_set_want_input(dev, false);
        else if (vu_check_rings(dev) < 0)
            vu_break(dev, EPROTO);
        return;
    }
    if (dev->broken)
        return;
    if (need_reply && acked) {
        /* The frontend asked for a verdict: give it, keep the connection. */
        vu_log(dev, VU_LOG_WARNING, "vhost-user: rejected: %s", dev->err.msg);
        vu_reply_u64(dev, m->request, 1);
        return;
    }
    vu_break(dev, EPROTO);
}

/* ---- Receiving ---- */

/** One recvmsg into the current message, never past its end. Returns 1 when bytes
 *  arrived, 0 when the socket would block, -errno on error/EOF (with a reason; the
 *  device is broken). */
static int vu_recv_some(struct vu_dev *dev)
{
    struct vu_msg *m = &dev->msg;
    uint8_t *dst;
    size_t want;
    if (dev->got < VU_HDR_SIZE) {
        dst = dev->hdr + dev->got;
        want = VU_HDR_SIZE - dev->got;
    } else {
        dst = m->payload + (dev->got - VU_HDR_SIZE);
        want = VU_HDR_SIZE + m->size - dev->got;
    }

    union {
        char buf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {.iov_base = dst, .iov_len = want};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
                        .msg_controllen = sizeof(cbuf.buf)};
    ssize_t n;
    do {
        n = recvmsg(dev->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        int e = errno;
        vu_err(dev, "recvmsg: %s", strerror(e));
        vu_break(dev, EIO);
        return -EIO;
    }

    bool too_many = (mh.msg_flags & MSG_CTRUNC) != 0;
    if (vp_take_scm_fds(&mh, m->fds, VU_MAX_FDS, &m->nfds, NULL))
        too_many = true;
    if (too_many) {
        vu_err(dev, "wrong fd count: more than %u fds with one message", VU_MAX_FDS);
        vu_break(dev, EPROTO);
        return -EPROTO;
    }
    if (n == 0) {
        if (dev->got == 0 && m->nfds == 0) {
            vu_err(dev, "the frontend closed the connection");
            vu_break(dev, ECONNRESET);
            return -ECONNRESET;
        }
        if (dev->got < VU_HDR_SIZE)
            vu_err(dev, "truncated header: the frontend closed after %zu of %u bytes",
                   dev->got, VU_HDR_SIZE);
        else
            vu_err(dev, "truncated payload: the frontend closed after %zu of %u bytes of %s",
                   dev->got - VU_HDR_SIZE, m->size, vu_request_name(m->request));
        vu_break(dev, EPROTO);
        return -EPROTO;
    }

    dev->got += (size_t)n;
    if (dev->got == VU_HDR_SIZE) {
        m->request = vp_get_le32(dev->hdr);
        m->flags = vp_get_le32(dev->hdr + 4);
        m->size = vp_get_le32(dev->hdr + 8);
        if ((m->flags & VU_FLAG_VERSION_MASK) != VU_FLAG_VERSION) {
            vu_err(dev, "bad header: flags 0x%x: version %u, expected %u", m->flags,
                   m->flags & VU_FLAG_VERSION_MASK, VU_FLAG_VERSION);
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
        if (m->flags & VU_FLAG_REPLY) {
            vu_err(dev, "bad header: %s has the REPLY flag set", vu_request_name(m->request));
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
        if (m->size > VU_MAX_PAYLOAD) {
            vu_err(dev, "bad header: %s payload size %u over the limit %u",
                   vu_request_name(m->request), m->size, VU_MAX_PAYLOAD);
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
    }
    return 1;
}

/** Receive until the current message is complete (1), the socket would block (0)
 *  or the connection fails (-errno). */
static int vu_recv_step(struct vu_dev *dev)
{
    for (;;) {
        int r = vu_recv_some(dev);
        if (r <= 0)
            return r;
        if (dev->got >= VU_HDR_SIZE && dev->got == VU_HDR_SIZE + dev->msg.size)
            return 1;
    }
}

/* ---- Life cycle ---- */

static void vu_release(struct vu_dev *dev)
{
    vp_outq_clear(&dev->outq);
    vu_msg_close_fds(&dev->msg);
    vu_job_clear(&dev->job);
    dev->got = 0;
    vu_mem_clear(&dev->mem);
    for (uint32_t i = 0; i < VU_MAX_QUEUES; i++) {
        vu_vring_close(&dev->vq[i]);
        dev->vq[i].running = false;
    }
    vp_close_fd(&dev->sock);
}

/** Close the connection and tell the user (once). */
static void vu_disconnect(struct vu_dev *dev)
{
    if (dev->closed)
        return;
    dev->closed = true;
    dev->pending = VU_NONE;
    vu_set_want_input(dev, false);
    vu_release(dev);
    if (dev->ops.disconnected)
        dev->ops.disconnected(dev, dev->err.msg, dev->opaque);
}

static void vu_destroy(struct vu_dev *dev)
{
    dev->watch = NULL;
    dev->owatch = NULL;
    vu_release(dev);
    free(dev);
}

static void vu_enter(struct vu_dev *dev)
{
    dev->depth++;
}

/** Leave a public entry point: at the outermost level a broken device is
 *  disconnected and a deferred free happens. @dev must not be used afterwards. */
static void vu_leave(struct vu_dev *dev)
{
    if (dev->depth == 1 && dev->broken && !dev->closed)
        vu_disconnect(dev);
    if (--dev->depth == 0 && dev->free_pending)
        vu_destroy(dev);
}

static void vu_outq_want_writable(void *opaque, bool on)
{
    struct vu_dev *dev = opaque;
    if (dev->owatch)
        dev->owatch(dev, on, dev->owatch_data);
}

static const struct vp_outq_ops vu_outq_ops = {
    .want_writable = vu_outq_want_writable,
};

struct vu_dev *vu_dev_new(int sock, const struct vu_dev_config *cfg,
                          const struct vu_dev_ops *ops, void *opaque, vp_error *err)
{
    struct vu_dev_config c = {0};
    if (cfg)
        c = *cfg;
    if (!c.nqueues)
        c.nqueues = 2;
    if (!c.max_mem_slots)
        c.max_mem_slots = VP_MAX_REGIONS;
    if (!c.features)
        c.features = VP_NET_FEATURES;
    if (c.nqueues < 2 || c.nqueues > VU_MAX_QUEUES || (c.nqueues & 1)) {
        vp_close_fd(&sock);
        vp_fail(err, -EINVAL, "nqueues %u: must be an even number (receiveq/transmitq "
                "pairs) in 2..%u", c.nqueues, VU_MAX_QUEUES);
        return NULL;
    }
    if (c.max_mem_slots > VP_MAX_REGIONS) {
        vp_close_fd(&sock);
        vp_fail(err, -EINVAL, "max_mem_slots %u over %u", c.max_mem_slots, VP_MAX_REGIONS);
        return NULL;
    }
    int fl = sock >= 0 ? fcntl(sock, F_GETFL) : -1;
    if (fl < 0 || fcntl(sock, F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = sock >= 0 ? errno : EBADF;
        vp_close_fd(&sock);
        vp_fail(err, -e, "socket: %s", strerror(e));
        return NULL;
    }
    struct vu_dev *dev = calloc(1, sizeof(*dev));
    if (!dev) {
        vp_close_fd(&sock);
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    dev->sock = sock;
    vp_outq_init(&dev->outq, sock, VU_OUTQ_MAX, &vu_outq_ops, dev);
    dev->cfg = c;
    if (ops)
        dev->ops = *ops;
    dev->opaque = opaque;
    dev->want_input = true;
    for (unsigned i = 0; i < VU_MAX_FDS; i++)
        dev->msg.fds[i] = -1;
    for (uint32_t i = 0; i < VU_MAX_QUEUES; i++)
        vu_vring_init(&dev->vq[i]);
    return dev;
}

void vu_dev_free(struct vu_dev *dev)
{
    if (!dev)
        return;
    dev->watch = NULL;
    dev->owatch = NULL;
    dev->ops.disconnected = NULL;
    if (dev->depth > 0) {
        dev->free_pending = true;
        /* Stop handling requests; the outermost entry point frees. */
        dev->broken = true;
        return;
    }
    vu_destroy(dev);
}

void vu_dev_set_watch(struct vu_dev *dev,
                      void (*watch)(struct vu_dev *dev, bool want_input, void *data),
                      void *data)
{
    dev->watch = watch;
    dev->watch_data = data;
}

void vu_dev_set_output_watch(struct vu_dev *dev,
                             void (*watch)(struct vu_dev *dev, bool want_output, void *data),
                             void *data)
{
    dev->owatch = watch;
    dev->owatch_data = data;
}

int vu_dev_flush_output(struct vu_dev *dev)
{
    vu_enter(dev);
    int r = dev->broken ? -EPIPE : vp_outq_flush(&dev->outq);
    if (r < 0 && !dev->broken) {
        vu_err(dev, "writing replies: %s", strerror(-r));
        vu_break(dev, EIO);
    }
    vu_leave(dev);
    return r;
}

void vu_dev_set_log(struct vu_dev *dev,
                    void (*log)(struct vu_dev *dev, enum vu_log_level level,
                                const char *msg, void *data),
                    void *data)
{
    dev->log = log;
    dev->log_data = data;
}

int vu_dev_fd(const struct vu_dev *dev)
{
    return dev->sock;
}

bool vu_dev_wants_input(const struct vu_dev *dev)
{
    return !dev->broken && dev->pending == VU_NONE;
}

/** Requests handled per vu_dev_handle_input() call at most, so a flooding frontend
 *  cannot starve the rest of an event loop (a level-triggered watch calls again). */
#define VU_BUDGET 64

int vu_dev_handle_input(struct vu_dev *dev)
{
    vu_enter(dev);
    for (unsigned budget = VU_BUDGET; budget && !dev->broken && dev->pending == VU_NONE;
         budget--) {
        int r = vu_recv_step(dev);
        if (r == 0) {
            if (vu_check_rings(dev) < 0)
                vu_break(dev, EPROTO);
            else if (dev->ops.drained)
                dev->ops.drained(dev, dev->opaque);
        }
        if (r <= 0)
            break;
        vu_dispatch(dev);
        dev->got = 0;
        dev->msg.nfds = 0;
    }
    int ret = dev->broken ? -(dev->broken_errno ? dev->broken_errno : EPROTO) : 0;
    if (ret == -EINVAL)
        ret = -EPROTO;
    vu_leave(dev);
    return ret;
}

static int vu_reply_done(struct vu_dev *dev, int ret)
{
    if (ret == 0 && !dev->broken) {
        vu_set_want_input(dev, true);
        if (vu_check_rings(dev) < 0)
            vu_break(dev, EPROTO);
    }
    if (ret == 0 && dev->broken)
        ret = -EPIPE;
    vu_leave(dev);
    return ret;
}

int vu_dev_reply_features(struct vu_dev *dev, uint64_t features)
{
    vu_enter(dev);
    if (dev->broken || dev->pending != VU_GET_FEATURES) {
        vu_leave(dev);
        return -EINVAL;
    }
    return vu_reply_done(dev, vu_finish_get_features(dev, features));
}

int vu_dev_reply_vring_base(struct vu_dev *dev, uint32_t index, uint16_t last_avail_idx)
{
    vu_enter(dev);
    if (dev->broken || dev->pending != VU_GET_VRING_BASE || dev->pending_index != index) {
        vu_leave(dev);
        return -EINVAL;
    }
    return vu_reply_done(dev, vu_finish_get_vring_base(dev, index, last_avail_idx));
}

int vu_dev_reply_mem(struct vu_dev *dev, int result)
{
    vu_enter(dev);
    struct vu_mem_job *j = &dev->job;
    if (dev->broken || j->request == VU_NONE || dev->pending != j->request) {
        vu_leave(dev);
        return -EINVAL;
    }
    if (j->in_callback) {
        /* From inside mem_added/mem_removed: vu_job_run() goes on when it returns. */
        if (j->answered) {
            vu_leave(dev);
            return -EINVAL;
        }
        j->answered = true;
        j->result = result;
        vu_leave(dev);
        return 0;
    }
    uint32_t request = j->request;
    bool need_reply = j->need_reply;
    bool add = j->next >= j->nrem;
    struct vu_region *r = NULL;
    if (add) {
        r = &j->add[j->next - j->nrem];
    } else {
        int i = vu_mem_find_gpa(&dev->mem, j->rem_gpa[j->next]);
        r = i >= 0 ? &dev->mem.r[i] : NULL;
    }
    dev->pending = VU_NONE;
    if (r)
        vu_job_apply(dev, r, add, result);
    j->next++;
    int ret = vu_job_run(dev);
    if (ret == VU_DEFERRED) {
        vu_leave(dev);
        return 0;
    }
    if (ret >= 0 && need_reply)
        ret = vu_reply_u64(dev, request, ret == VU_REFUSED ? 1 : 0);
    return vu_reply_done(dev, ret < 0 ? ret : 0);
}

void vu_dev_fail(struct vu_dev *dev, const char *fmt, ...)
{
    vu_enter(dev);
    if (!dev->broken) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(dev->err.msg, sizeof(dev->err.msg), fmt, ap);
        va_end(ap);
        vu_break(dev, ECONNABORTED);
    }
    vu_leave(dev);
}

bool vu_dev_is_broken(const struct vu_dev *dev)
{
    return dev->broken;
}

const char *vu_dev_error(const struct vu_dev *dev)
{
    return dev->err.msg;
}

bool vu_dev_is_started(const struct vu_dev *dev)
{
    return vu_any_running(dev);
}

unsigned vu_dev_excess_queues(const struct vu_dev *dev)
{
    return dev->excess;
}

uint64_t vu_dev_features(const struct vu_dev *dev)
{
    return dev->features;
}

uint64_t vu_dev_protocol_features(const struct vu_dev *dev)
{
    return dev->protocol_features;
}

unsigned vu_dev_get_regions(const struct vu_dev *dev, struct vp_region *out, unsigned max)
{
    for (unsigned i = 0; i < dev->mem.n && i < max; i++)
        vu_region_to_vp(&dev->mem.r[i], &out[i]);
    return dev->mem.n;
}
