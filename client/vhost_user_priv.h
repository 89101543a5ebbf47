/*
 * vhost_user_priv.h - internals shared by the files of the vhost-user backend core
 * (the public API is vhost_user.h). The core is one parent and its children:
 *
 *   vhost_user.c           parent: request names, the dispatch table and its central
 *                          checks (vu_check_request), dispatch, life cycle, public API
 *   vhost_user_io.c        the socket: receiving one request (framing, fds), sending
 *                          replies through the output queue
 *   vhost_user_mem.c       the memory table: region checks, translation of ring
 *                          addresses, memory changes (SET_MEM_TABLE, ADD/REM_MEM_REG)
 *                          and the user's verdicts on them (vu_dev_reply_mem)
 *   vhost_user_vring.c     the virtqueues: SET/GET_VRING_*, starting complete rings
 *   vhost_user_features.c  features, protocol features, owner, queue and slot counts
 *
 * Calls between children go one way: features -> vring -> mem -> io; every child
 * may call the parent's helpers below; the parent reaches the children through the
 * handler table and the functions declared here.
 *
 * Threading and ownership: as in vhost_user.h (one thread at a time per device).
 * Every fd in these structs has one owner, named at the field.
 */
#ifndef VHOST_USER_PRIV_H
#define VHOST_USER_PRIV_H

#include <sys/types.h>

#include "vhost_user.h"
#include "vp_outq.h"

/** Bytes of replies the core queues for a frontend that does not read them (a reply
 *  is at most 76 bytes): beyond that the frontend is dropped. */
#define VU_OUTQ_MAX (64 * 1024)

/** A handler's or vu_job_run()'s result: a memory change the user refused (already
 *  logged); the failure reply is the dispatcher's (only with need_reply). */
#define VU_REFUSED 2

/** One memory region as the frontend described it, plus its fd and file identity. */
struct vu_region {
    uint64_t gpa, size, uaddr, mmap_offset;
    int fd;                   /* owned */
    dev_t st_dev;
    ino_t st_ino;
};

/** The memory table as the frontend set it up: n regions, in no particular order
 *  (each owns its fd). At most VP_MAX_REGIONS (the limit is cfg.max_mem_slots). */
struct vu_mem {
    unsigned n;
    struct vu_region r[VP_MAX_REGIONS];
};

/** One virtqueue as the frontend set it up (addresses are the frontend's user
 *  addresses; num in descriptors; base is the next avail index). */
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

/** One frontend connection (the opaque handle of vhost_user.h). Owns the socket, the
 *  region and vring fds, the fds of a request being received and of a memory change
 *  in progress; vu_release() (vhost_user.c) closes them all. */
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

/* ---- vhost_user.c (parent): helpers every child uses ---- */

/** Log @fmt at @level through the user's log hook (vu_dev_set_log); nothing if none.
 *  Lines longer than 511 bytes are cut. */
void vu_log(struct vu_dev *dev, enum vu_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Record an error reason in dev->err (what vu_dev_error() shows); returns -EINVAL
 *  for `return vu_err(...)`. Does not break the device. */
int vu_err(struct vu_dev *dev, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Make the device broken (sticky) with the reason already in dev->err; @errnum is
 *  what vu_dev_handle_input() returns negated (ECONNRESET: the frontend closed, logged
 *  at info level; anything else at warning level). The socket is closed and
 *  ops->disconnected called when the outermost entry point returns (vu_leave). */
void vu_break(struct vu_dev *dev, int errnum);

/** Tell the input watch (vu_dev_set_watch) whether the core reads requests now; only
 *  a change is told. */
void vu_set_want_input(struct vu_dev *dev, bool want);

/** Was protocol feature @bit (VU_PF_*) negotiated by SET_PROTOCOL_FEATURES? */
bool vu_has_pf(const struct vu_dev *dev, unsigned bit);

/** Does request @m want a REPLY_ACK (need_reply flag with VU_PF_REPLY_ACK negotiated)? */
bool vu_need_reply(const struct vu_dev *dev, const struct vu_msg *m);

/** Enter a public entry point (nesting count, for deferred disconnect and free). */
void vu_enter(struct vu_dev *dev);

/** Leave a public entry point: at the outermost level a broken device is
 *  disconnected and a deferred free happens. @dev must not be used afterwards. */
void vu_leave(struct vu_dev *dev);

/** End of a vu_dev_reply_*() call whose deferred reply was sent with result @ret
 *  (0 or -errno): reading resumes and complete rings start; leaves the entry point
 *  (vu_leave). Returns @ret, or -EPIPE when the device broke meanwhile. */
int vu_reply_done(struct vu_dev *dev, int ret);

/* ---- Request handlers (vu_<request>_exec) ----
 * Each runs after vu_dispatch() checked payload size, fd count, protocol feature and
 * queue index against vu_handlers[] (vhost_user.c). It returns 0, VU_DEFERRED,
 * VU_REFUSED (a memory change the user refused: failure reply), or -EINVAL with a
 * reason in dev->err. It takes an fd it keeps by setting msg->fds[i] to -1; the
 * dispatcher closes the rest. Wire formats: QEMU docs/interop/vhost-user.rst. */

/** The le64 payload of a u64 request (features, vring fd index | NOFD flag). */
static inline uint64_t vu_payload_u64(const struct vu_msg *m) { return vp_get_le64(m->payload); }
/** Vring state payload: the le32 queue index (checked by the dispatcher). */
static inline uint32_t vu_state_index(const struct vu_msg *m) { return vp_get_le32(m->payload); }
/** Vring state payload: the le32 value after the index (num, base, enable). */
static inline uint32_t vu_state_num(const struct vu_msg *m) { return vp_get_le32(m->payload + 4); }

/* vhost_user_features.c: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES,
 * GET_MAX_MEM_SLOTS, GET_QUEUE_NUM, SET_OWNER, RESET_OWNER. */
int vu_get_features_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_features_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_get_protocol_features_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_protocol_features_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_get_max_mem_slots_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_get_queue_num_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_owner_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_reset_owner_exec(struct vu_dev *dev, struct vu_msg *m);

/* vhost_user_mem.c: SET_MEM_TABLE (the whole table, applied as a difference),
 * ADD_MEM_REG, REM_MEM_REG (CONFIGURE_MEM_SLOTS). Each takes the fds of the regions
 * it adds (into the memory change, dev->job). */
int vu_set_mem_table_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_add_mem_reg_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_rem_mem_reg_exec(struct vu_dev *dev, struct vu_msg *m);

/* vhost_user_vring.c: SET_VRING_NUM/ADDR/BASE/ENABLE, GET_VRING_BASE, and
 * SET_VRING_KICK/CALL/ERR (which take their eventfd into the vring). */
int vu_set_vring_num_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_vring_addr_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_vring_base_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_get_vring_base_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_vring_kick_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_vring_call_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_vring_err_exec(struct vu_dev *dev, struct vu_msg *m);
int vu_set_vring_enable_exec(struct vu_dev *dev, struct vu_msg *m);

/* ---- vhost_user_io.c: the socket ---- */

/** Receive until the current request (dev->hdr, dev->msg) is complete (1), the socket
 *  would block (0) or the connection fails (-errno; the reason in dev->err, the
 *  device broken). Header checks (version, no REPLY flag, size <= VU_MAX_PAYLOAD)
 *  happen before a payload byte is read; received fds go to dev->msg.fds (owned by
 *  the message until a handler takes them). */
int vu_recv_step(struct vu_dev *dev);

/** Reply to @request with the le64 @v (flags: version | REPLY) through the output
 *  queue, never blocking. Returns 0, or -errno with the device broken (a queue over
 *  VU_OUTQ_MAX bytes, a send error). */
int vu_reply_u64(struct vu_dev *dev, uint32_t request, uint64_t v);

/** Reply to @request with a vring state (le32 @index, le32 @num); as vu_reply_u64. */
int vu_reply_state(struct vu_dev *dev, uint32_t request, uint32_t index, uint32_t num);

/* ---- vhost_user_mem.c: the memory table ---- */

/** The number of regions the frontend may set up (GET_MAX_MEM_SLOTS). */
unsigned vu_mem_limit(const struct vu_dev *dev);

/**
 * Translate vring @q's three user addresses (ring @index, @num descriptors; 0:
 * unknown yet, only the first byte of each ring counts) to guest-physical through
 * @mem into out->desc/avail/used. Each ring must lie inside one region and be
 * aligned (16, 2, 4 bytes: virtio 1.x 2.7). Returns 0, or -EINVAL with a reason in
 * dev->err.
 */
int vu_vring_translate(struct vu_dev *dev, const struct vu_mem *mem, uint32_t index,
                       const struct vu_vring *q, uint32_t num, struct vp_virtq *out);

/** Close every region fd of @mem and empty it. */
void vu_mem_clear(struct vu_mem *mem);

/** Drop a memory change in progress, closing the fds of regions not added yet. */
void vu_job_clear(struct vu_mem_job *j);

/* ---- vhost_user_vring.c: the virtqueues ---- */

/** Reset vring @q to "nothing set up" (all fds -1). Does not close fds. */
void vu_vring_init(struct vu_vring *q);

/** Close the kick, call and err eventfds of @q (set to -1). */
void vu_vring_close(struct vu_vring *q);

/** Does any configured vring run (started, not stopped by GET_VRING_BASE)? */
bool vu_any_running(const struct vu_dev *dev);

/**
 * Start every vring that has become complete (see ops->vring_started): features set,
 * a memory table, num, addresses, base and kick. Returns 0, or -EINVAL (reason in
 * dev->err) when a ring no longer translates.
 */
int vu_check_rings(struct vu_dev *dev);

#endif /* VHOST_USER_PRIV_H */
