/*
 * vhost_user.h - vhost-user backend core for virtio-net (the driver VM side of the
 * vhost-pci-client daemon, DESIGN sections 2 and 8 "Facts about stock QEMU 7.2").
 *
 * Shape (STYLE "The models"): like QEMU's libvhost-user, a self-contained core that
 * takes the connected socket and knows no event loop; client/vhost_user_glib.c is the
 * thin GLib adapter on top. Unlike libvhost-user the core never maps guest memory: it
 * keeps the region fds and hands them (with the virtqueue set-up translated to
 * guest-physical addresses) to its user, which forwards them to a vhost-pci server.
 *
 * Messages implemented: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES (offered:
 * REPLY_ACK, CONFIGURE_MEM_SLOTS, and MQ only when more than one queue pair is
 * configured), GET_MAX_MEM_SLOTS, SET_OWNER, RESET_OWNER, GET_QUEUE_NUM,
 * SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG, SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/ENABLE,
 * GET_VRING_BASE. REPLY_ACK's need_reply flag is honoured. Anything else is an error.
 *
 * Errors: a malformed or unsupported request is answered with a failure reply when
 * the frontend asked for one (need_reply with REPLY_ACK negotiated) and the
 * connection carries on; otherwise, and for every framing error (header, size over
 * the limit, too many fds, EOF mid-message), the device becomes broken (sticky): the
 * socket and every fd it holds are closed and ops->disconnected is called once with
 * the reason. vu_dev_error() always holds the last reason. A memory change the user
 * refuses (ops->mem_added / mem_removed, e.g. the vhost-pci server could not take a
 * hot-added region) is answered the same way: a failure reply when one was asked
 * for, else logged and applied (the protocol has no other way to say no).
 *
 * Threading: a struct vu_dev is used by one thread at a time. Callbacks run on the
 * thread that called into the core (vu_dev_handle_input, vu_dev_reply_*, vu_dev_fail).
 * vu_dev_free() may be called from inside a callback: it is deferred until the core
 * returns from the outermost call.
 */
#ifndef VHOST_USER_H
#define VHOST_USER_H

#include <stdbool.h>
#include <stdint.h>

#include "vp_common.h"
#include "vp_msg.h"
#include "vp_wire.h"

/* ---- Wire constants (QEMU docs/interop/vhost-user.rst) ---- */

/** Front-end request numbers. */
enum vu_request {
    VU_NONE = 0,
    VU_GET_FEATURES = 1,
    VU_SET_FEATURES = 2,
    VU_SET_OWNER = 3,
    VU_RESET_OWNER = 4,
    VU_SET_MEM_TABLE = 5,
    VU_SET_LOG_BASE = 6,
    VU_SET_LOG_FD = 7,
    VU_SET_VRING_NUM = 8,
    VU_SET_VRING_ADDR = 9,
    VU_SET_VRING_BASE = 10,
    VU_GET_VRING_BASE = 11,
    VU_SET_VRING_KICK = 12,
    VU_SET_VRING_CALL = 13,
    VU_SET_VRING_ERR = 14,
    VU_GET_PROTOCOL_FEATURES = 15,
    VU_SET_PROTOCOL_FEATURES = 16,
    VU_GET_QUEUE_NUM = 17,
    VU_SET_VRING_ENABLE = 18,
    VU_SEND_RARP = 19,
    VU_NET_SET_MTU = 20,
    VU_SET_SLAVE_REQ_FD = 21,
    VU_IOTLB_MSG = 22,
    VU_SET_VRING_ENDIAN = 23,
    VU_GET_CONFIG = 24,
    VU_SET_CONFIG = 25,
    VU_CREATE_CRYPTO_SESSION = 26,
    VU_CLOSE_CRYPTO_SESSION = 27,
    VU_POSTCOPY_ADVISE = 28,
    VU_POSTCOPY_LISTEN = 29,
    VU_POSTCOPY_END = 30,
    VU_GET_INFLIGHT_FD = 31,
    VU_SET_INFLIGHT_FD = 32,
    VU_GPU_SET_SOCKET = 33,
    VU_RESET_DEVICE = 34,
    VU_VRING_KICK = 35,
    VU_GET_MAX_MEM_SLOTS = 36,
    VU_ADD_MEM_REG = 37,
    VU_REM_MEM_REG = 38,
    VU_SET_STATUS = 39,
    VU_GET_STATUS = 40,
    VU_REQUEST_MAX = 41,
};

/** Header: le32 request, le32 flags, le32 size (native order = little-endian on x86). */
#define VU_HDR_SIZE 12
#define VU_FLAG_VERSION_MASK 0x3u
#define VU_FLAG_VERSION 0x1u
#define VU_FLAG_REPLY (1u << 2)
#define VU_FLAG_NEED_REPLY (1u << 3)

/** Largest payload the core reads; a header announcing more breaks the connection.
 *  (The largest message QEMU 7.2 sends is 268 bytes.) */
#define VU_MAX_PAYLOAD 4096
/** Most fds one message may carry (SET_MEM_TABLE: one per region). */
#define VU_MAX_FDS 8
/** Regions one SET_MEM_TABLE carries at most (VHOST_MEMORY_BASELINE_NREGIONS). */
#define VU_MEM_TABLE_MAX 8
/** Size of one region description on the wire: gpa, size, user address, mmap offset. */
#define VU_REGION_SIZE 32
/** Most virtqueues a device may be configured with (the vring fd messages carry the
 *  index in 8 bits; vhost-pci carries at most VP_MAX_VIRTQS). */
#define VU_MAX_QUEUES VP_MAX_VIRTQS

/* Virtio feature bits the core itself cares about. */
#define VU_F_LOG_ALL 26               /* VHOST_F_LOG_ALL: dirty logging, not supported */
#define VU_F_PROTOCOL_FEATURES 30     /* VHOST_USER_F_PROTOCOL_FEATURES, always offered */
#define VU_F_IOMMU_PLATFORM 33        /* needs IOTLB messages, not supported */
#define VU_F_RING_PACKED 34           /* vhost-pci carries split rings only */
#define VU_F_NET_MQ 22                /* VIRTIO_NET_F_MQ: several queue pairs, their
                                         control queue stays with the frontend's VMM */

/* Protocol feature bits. */
#define VU_PF_MQ 0
#define VU_PF_REPLY_ACK 3
#define VU_PF_CONFIGURE_MEM_SLOTS 15

/* SET_VRING_KICK/CALL/ERR payload: bits 0-7 index, bit 8 "no fd" (polling). */
#define VU_VRING_IDX_MASK 0xffu
#define VU_VRING_NOFD (1u << 8)

/* SET_VRING_ADDR flags: bit 0 VHOST_VRING_F_LOG (not supported). */
#define VU_VRING_F_LOG 0x1u

/** Name of a request for logs ("SET_VRING_ADDR"), "UNKNOWN" when out of range. */
const char *vu_request_name(uint32_t request);

/* ---- The core ---- */

struct vu_dev;

/** Returned by a callback that answers later (vu_dev_reply_features,
 *  vu_dev_reply_vring_base, vu_dev_reply_mem). */
#define VU_DEFERRED 1

/** Log levels of the log hook (the GLib adapter maps them to g_debug ... g_warning). */
enum vu_log_level {
    VU_LOG_DEBUG,
    VU_LOG_INFO,
    VU_LOG_WARNING,
};

/** Configuration, copied by vu_dev_new(). Zero fields take the default. */
struct vu_dev_config {
    /** Virtqueues (not pairs): an even number in 2..VU_MAX_QUEUES, default 2 (one
     *  receiveq/transmitq pair). A request naming a queue in nqueues..VU_MAX_QUEUES-1
     *  is taken but that queue never runs: a frontend set up for more queue pairs than
     *  offered (DPDK's virtio-user sends the call fds of all its rings before it
     *  negotiates anything, and enables its pairs whatever happened) is refused at its
     *  memory table, with a reason, where it can print the failure (see
     *  vu_dev_excess_queues). An index from VU_MAX_QUEUES on is an error. */
    unsigned nqueues;
    /** Answer to GET_MAX_MEM_SLOTS and limit of the memory table: 1..VP_MAX_REGIONS,
     *  default VP_MAX_REGIONS. */
    unsigned max_mem_slots;
    /** Virtio features offered when ops->get_features is NULL; default
     *  VP_NET_FEATURES. */
    uint64_t features;
};

/**
 * One virtqueue as the frontend set it up, handed to ops->vring_started and
 * ops->vring_changed. Addresses are guest-physical (translated from the frontend's
 * user addresses through the memory table). The fds are BORROWED: valid until the
 * core next reads from the socket (vu_dev_handle_input); dup() what you keep.
 */
struct vu_vring_info {
    struct vp_virtq vq;       /* index, num, desc/avail/used guest-physical,
                                 last_avail_idx (SET_VRING_BASE), kick_fd, call_fd (-1:
                                 none: the frontend polls / is not notified). Only
                                 vq.index is meaningful while !running. */
    bool running;             /* complete (num, addresses, base, kick) with features and
                                 memory present, until GET_VRING_BASE stops it */
    bool enabled;             /* SET_VRING_ENABLE 1, or implicitly when
                                 VHOST_USER_F_PROTOCOL_FEATURES was not negotiated
                                 (vhost-user.rst "Ring states") */
    bool call_fresh;          /* a SET_VRING_CALL came after the last SET_VRING_KICK
                                 (QEMU 7.2 sends the real call fd right after the kick) */
};

/**
 * Callbacks to the user (the client daemon). All optional. @opaque is the pointer
 * given to vu_dev_new(). fds in arguments are borrowed (valid during the call).
 */
struct vu_dev_ops {
    /** GET_FEATURES: the virtio features to offer. Return 0 with *features set, or
     *  VU_DEFERRED and call vu_dev_reply_features() later (the core reads no further
     *  request until then), or -errno to drop the connection. The core removes bits it
     *  cannot support (LOG_ALL, IOMMU_PLATFORM, RING_PACKED) and adds
     *  VHOST_USER_F_PROTOCOL_FEATURES. NULL: config.features. */
    int (*get_features)(struct vu_dev *dev, uint64_t *features, void *opaque);
    /** SET_FEATURES: the virtio features the frontend accepted (a subset of the
     *  GET_FEATURES answer, VHOST_USER_F_PROTOCOL_FEATURES included when set). */
    void (*features_set)(struct vu_dev *dev, uint64_t features, void *opaque);
    /** A virtqueue starts running: it has num, addresses, base and kick, SET_FEATURES
     *  was received and the memory table holds its rings (vhost-user.rst: a ring
     *  starts on its kick). Whether it may be served also depends on info->enabled
     *  (SET_VRING_ENABLE, reported by vring_changed). */
    void (*vring_started)(struct vu_dev *dev, const struct vu_vring_info *info, void *opaque);
    /** A region is being added (ADD_MEM_REG, SET_MEM_TABLE) after the first start.
     *  Return 0 to accept it, a negative errno to refuse it, or VU_DEFERRED and call
     *  vu_dev_reply_mem() later (the core reads no further request until then; the
     *  answer may also come from inside the callback). region->fd is borrowed: valid
     *  until the change is answered. The region enters the table (vu_dev_get_regions)
     *  only once accepted; a refused one is dropped and its fd closed, and the frontend
     *  gets a failure REPLY_ACK. Without need_reply (REPLY_ACK not negotiated) the
     *  protocol has no way to say "refused": the refusal is logged and the region is
     *  added anyway, as the frontend believes it is. Every change is announced, also
     *  those before any ring runs (the memory a frontend sets up at start). A region
     *  identical to one in the table (QEMU 7.2 multi-queue repeats) is accepted
     *  without a call. */
    int (*mem_added)(struct vu_dev *dev, const struct vp_region *region, void *opaque);
    /** A region is being removed (REM_MEM_REG, SET_MEM_TABLE) after the first start.
     *  Answered like mem_added; the region stays in the table until accepted, so
     *  region->fd stays valid until then and is closed by the core afterwards. A refused
     *  removal (with need_reply) leaves the region in the table; without need_reply it
     *  is removed anyway. Removing a region not in the table is accepted without a
     *  call. */
    int (*mem_removed)(struct vu_dev *dev, const struct vp_region *region, void *opaque);
    /** A running virtqueue got a new kick or call fd, or any virtqueue (running or
     *  not) was enabled or disabled (SET_VRING_ENABLE that changes the state). */
    void (*vring_changed)(struct vu_dev *dev, const struct vu_vring_info *info,
                          void *opaque);
    /** GET_VRING_BASE of a running virtqueue (the frontend stops it): answer its
     *  last_avail_idx. Return 0 with *last_avail_idx set, or VU_DEFERRED and call
     *  vu_dev_reply_vring_base() later (typically after DEVICE_INFO(DEL) is
     *  acknowledged), or -errno to drop the connection. NULL: the SET_VRING_BASE value.
     *  For a virtqueue that never ran the core answers itself. */
    int (*get_vring_base)(struct vu_dev *dev, uint32_t index, uint16_t *last_avail_idx,
                          void *opaque);
    /** Every complete request available on the socket has been handled (the read would
     *  block) and no reply is outstanding: the frontend has sent all it had to say for
     *  now (a frontend waiting for a reply, or one that is done with a sequence). */
    void (*drained)(struct vu_dev *dev, void *opaque);
    /** The connection is over (EOF, protocol error, vu_dev_fail); called once.
     *  @reason says why. Every fd the core held is closed already. */
    void (*disconnected)(struct vu_dev *dev, const char *reason, void *opaque);
};

/**
 * Create a backend on the connected AF_UNIX stream socket @sock, which it takes over
 * (made non-blocking, closed by the core; also on error). @cfg may be NULL (defaults).
 * Returns NULL with a reason in @err when @cfg is out of range.
 */
struct vu_dev *vu_dev_new(int sock, const struct vu_dev_config *cfg,
                          const struct vu_dev_ops *ops, void *opaque, vp_error *err);

/** Close everything and free. Safe from inside a callback (then deferred until the
 *  core returns). Does not call ops->disconnected. NULL is ignored. */
void vu_dev_free(struct vu_dev *dev);

/** Event-loop hook (for adapters): called with want_input false when the core stops
 *  reading the socket (a deferred reply is pending, or the connection is over) and
 *  true when it wants to read again. The core starts wanting input. */
void vu_dev_set_watch(struct vu_dev *dev,
                      void (*watch)(struct vu_dev *dev, bool want_input, void *data),
                      void *data);

/** Output hook (for adapters): called with want_output true when replies wait for
 *  the socket to become writable, false when they are out; then call
 *  vu_dev_flush_output(). The core never blocks on a full socket (replies queue in a
 *  protocol/vp_outq; a frontend that lets more than 64 KiB of them pile up is dropped). */
void vu_dev_set_output_watch(struct vu_dev *dev,
                             void (*watch)(struct vu_dev *dev, bool want_output, void *data),
                             void *data);
/** The socket is writable: write the queued replies. Returns 0 or a negative errno
 *  (the device is then broken; ops->disconnected follows). */
int vu_dev_flush_output(struct vu_dev *dev);

/** Log hook; without one the core logs nothing. @msg is one line without newline. */
void vu_dev_set_log(struct vu_dev *dev,
                    void (*log)(struct vu_dev *dev, enum vu_log_level level,
                                const char *msg, void *data),
                    void *data);

/** The socket, for an event loop to watch for input (-1 once disconnected). */
int vu_dev_fd(const struct vu_dev *dev);
/** True while the core wants to read the socket (not broken, no reply pending). */
bool vu_dev_wants_input(const struct vu_dev *dev);

/**
 * Read and handle the complete requests available on the (non-blocking) socket,
 * until it would block, a reply is deferred, the connection ends, or 64 requests
 * were handled (call again while the socket is readable). Returns 0 while
 * the connection lives, or a negative errno once it is over (ops->disconnected has
 * then been called): -ECONNRESET (EOF), -EPROTO (protocol error), -EIO (socket error).
 */
int vu_dev_handle_input(struct vu_dev *dev);

/** Complete a deferred GET_FEATURES. Returns 0, -EINVAL when none is pending, or a
 *  negative errno when the reply could not be sent (the device is then broken). */
int vu_dev_reply_features(struct vu_dev *dev, uint64_t features);
/** Complete a deferred GET_VRING_BASE of virtqueue @index: the virtqueue is stopped.
 *  Returns 0, -EINVAL when no GET_VRING_BASE of @index is pending, or a negative
 *  errno when the reply could not be sent. */
int vu_dev_reply_vring_base(struct vu_dev *dev, uint32_t index, uint16_t last_avail_idx);

/**
 * Answer a deferred mem_added / mem_removed: @result 0 accepts the change, a negative
 * errno refuses it (e.g. the vhost-pci server answered ADD_FAIL; the frontend then
 * gets a failure REPLY_ACK when it asked for one, see ops->mem_added). When the
 * request (a SET_MEM_TABLE) has further changes, the next callback follows from
 * inside this call; the reply goes out once every change is answered. Returns 0,
 * -EINVAL when no memory change is pending, or a negative errno when the reply could
 * not be sent (the device is then broken).
 */
int vu_dev_reply_mem(struct vu_dev *dev, int result);

/** Drop the connection with a reason (e.g. the vhost-pci server refused the device).
 *  ops->disconnected follows (at once, or when the current callback returns). */
void vu_dev_fail(struct vu_dev *dev, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** True once the connection is broken or over (sticky). */
bool vu_dev_is_broken(const struct vu_dev *dev);
/** The last error reason ("" if none): also set for errors answered with a failure
 *  reply, after which the connection carries on. */
const char *vu_dev_error(const struct vu_dev *dev);
/** True while at least one virtqueue runs (ops->vring_started until its
 *  GET_VRING_BASE). */
bool vu_dev_is_started(const struct vu_dev *dev);
/** Highest virtqueue index + 1 the frontend named beyond the configured ones (0:
 *  none): it is set up for more queue pairs than this backend has. */
unsigned vu_dev_excess_queues(const struct vu_dev *dev);
/** Negotiated virtio features (SET_FEATURES) and protocol features. */
uint64_t vu_dev_features(const struct vu_dev *dev);
uint64_t vu_dev_protocol_features(const struct vu_dev *dev);
/** Copy at most @max regions of the current memory table into @out (fds borrowed:
 *  valid until the table changes). Returns the number of regions in the table. */
unsigned vu_dev_get_regions(const struct vu_dev *dev, struct vp_region *out, unsigned max);

#endif
