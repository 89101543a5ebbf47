/*
 * vhost_user.c - vhost-user backend core for virtio-net (see vhost_user.h): request
 * names, the handler table and its central checks, dispatch, life cycle and the public
 * API. The handlers, the socket and the memory table live in its children
 * (vhost_user_priv.h lists them).
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
#include "vhost_user_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vp_outq.h"

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

/* ---- Small helpers ---- */

void vu_log(struct vu_dev *dev, enum vu_log_level level, const char *fmt, ...)
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

int vu_err(struct vu_dev *dev, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dev->err.msg, sizeof(dev->err.msg), fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/** Make the device broken (sticky) with @reason already in dev->err. */
void vu_break(struct vu_dev *dev, int errnum)
{
    if (dev->broken)
        return;
    dev->broken = true;
    dev->broken_errno = errnum;
    vu_log(dev, errnum == ECONNRESET ? VU_LOG_INFO : VU_LOG_WARNING, "vhost-user: %s",
           dev->err.msg);
}

void vu_set_want_input(struct vu_dev *dev, bool want)
{
    if (dev->want_input == want)
        return;
    dev->want_input = want;
    if (dev->watch)
        dev->watch(dev, want, dev->watch_data);
}

bool vu_has_pf(const struct vu_dev *dev, unsigned bit)
{
    return dev->protocol_features & (1ULL << bit);
}

static void vu_msg_close_fds(struct vu_msg *m)
{
    vp_close_fds(m->fds, m->nfds);
    m->nfds = 0;
}

bool vu_need_reply(const struct vu_dev *dev, const struct vu_msg *m)
{
    return (m->flags & VU_FLAG_NEED_REPLY) && vu_has_pf(dev, VU_PF_REPLY_ACK);
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

void vu_enter(struct vu_dev *dev)
{
    dev->depth++;
}

void vu_leave(struct vu_dev *dev)
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

int vu_reply_done(struct vu_dev *dev, int ret)
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
