/*
 * server.h - internals of vhost-pci-server shared by its files (not a public API).
 *
 *   main.c       options, main loop, signals, shutdown
 *   session.c    one client connection: framing, table-driven dispatch
 *   requests.c   socket requests as per-device jobs (MEMORY_INFO, FEATURE_BITS,
 *                DEVICE_INFO, cloning, destroy), ACK relaying, timeouts
 *   device.c     one vhost-pci device: control area, windows, regions, frontends,
 *                vectors, controlq device side, pending-ACK table
 *   layout.c     pure window placement / clone decision / vector numbers
 *   devhost*.c   device hosts (devhost.h)
 *   mgmt.c       the --mgmt status socket (JSON)
 *
 * Object lifetimes: the server owns sessions (by id) and devices (by client_uuid).
 * Anything that outlives a callback refers to a session by its id (looked up again
 * when a reply is due: a closed session just gets no reply) and to a device by a
 * reference (srv_device_ref/unref); a destroyed device is marked dead and freed when
 * its last reference goes.
 *
 * Threading: everything runs in the main thread's default GMainContext.
 */
#ifndef VP_SERVER_H
#define VP_SERVER_H

#define G_LOG_DOMAIN "vp-server"

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "devhost.h"
#include "layout.h"
#include "vp_controlq.h"
#include "vp_ctrlarea.h"
#include "vp_msg.h"
#include "vp_vring.h"

struct srv_device;
struct srv_job;

/** Command-line options. */
struct srv_options {
    char *listen_path;
    char *device_host;
    char *local_bus;
    char *qmp;
    char *mgmt_path;
    char *log_level;
    gboolean allow_unsealed;
    double ack_timeout_s;
};

/** The server. One per process. */
struct vp_server {
    struct srv_options opt;
    unsigned timeout_ms;                 /* --ack-timeout in ms */
    unsigned validate_flags;             /* VP_VALIDATE_* */
    GMainLoop *loop;
    const struct vp_devhost_ops *host_ops;
    struct vp_devhost *host;
    int listen_fd;
    guint listen_src;
    GHashTable *sessions;                /* guint64* id -> struct srv_session* */
    GHashTable *devices;                 /* uuid text -> struct srv_device* (a ref) */
    uint64_t next_session_id;
    uint8_t devfn_busy[256];             /* devfn allocator: 1 = in use / unplugging */
    unsigned unplugs_outstanding;        /* host unplugs not yet completed */
    bool shutting_down;
    struct {
        uint64_t messages, bad_messages, disconnects;
    } counters;
    struct srv_mgmt *mgmt;
};

/* ------------------------------ sessions ------------------------------ */

/** One client connection. */
struct srv_session {
    struct vp_server *srv;
    uint64_t id;
    int fd;
    guint src;
    struct vp_msg_reader reader;
    GQueue outq;                         /* replies waiting for POLLOUT (struct srv_reply*) */
    guint out_src;
    bool bound;                          /* uuid set by the first message */
    uint8_t uuid[VP_UUID_LEN];
    char uuid_str[37];
};

/** Accept a new client on @fd (takes ownership). */
void srv_session_new(struct vp_server *srv, int fd);
/** Close a session: implicit DEL of its frontends, device destroy when it was the last
 *  connection of its uuid. */
void srv_session_close(struct srv_session *s, const char *why);
/** Free a session (value destroy function of srv->sessions; use srv_session_close). */
void srv_session_free(gpointer s);
/** Session by id, or NULL when it has gone. */
struct srv_session *srv_session_lookup(struct vp_server *srv, uint64_t id);
/** Number of open sessions bound to @uuid. */
unsigned srv_sessions_of_uuid(struct vp_server *srv, const uint8_t *uuid);

/** Send a socket ACK of @type answering @seq on session @session_id (no-op when the
 *  session has gone or @session_id is 0). A send error closes the session. */
void srv_reply(struct vp_server *srv, uint64_t session_id, uint16_t type, uint64_t seq,
               const struct vp_ack *ack);

/** Fill @ack: @result, @reason (may be NULL: none; truncated to fit) and, with @di,
 *  its device_type and device_id; every other field 0. */
void srv_ack_fill(struct vp_ack *ack, uint64_t result, const char *reason,
                  const struct vp_device_info *di);

/** Decode the DEVICE_INFO in @msg into a new struct *@out, which then owns the fds
 *  it names (release with vp_device_info_close_fds() and g_free()). Returns 0, or
 *  vp_decode_device_info()'s error with a reason in @err when the payload is
 *  malformed (a framing error; *@out is NULL and @msg keeps its fds). */
int srv_decode_device_info(struct vp_msg *msg, struct vp_device_info **out, vp_error *err);

/** Answer a request of session @s at once with an ACK of @type (result, reason, @di
 *  as for srv_ack_fill), logging the reason when there is one. */
void srv_reply_now(struct srv_session *s, uint16_t type, uint64_t seq, uint64_t result,
                   const char *reason, const struct vp_device_info *di);

/* ------------------------------ devices ------------------------------ */

enum srv_win_state { WIN_PLUGGING, WIN_PLUGGED };

/** One memory window: one peer memory file, one ivshmem-plain function. */
struct srv_window {
    bool used;                           /* slot in use */
    enum srv_win_state state;
    struct srv_file_id file;
    uint64_t bar_offset;                 /* in the logical BAR */
    uint32_t devfn;
    int fd;                              /* the memory file (owned) */
    unsigned refs;                       /* regions using it */
};

/** One region of the driver VM's memory table. */
struct srv_region {
    uint64_t gpa, size, mmap_offset;     /* guest-physical, bytes, offset in the file */
    unsigned win;                        /* index into srv_device.wins */
};

/** One frontend device (a virtio device of the driver VM). */
struct srv_frontend {
    uint32_t device_type;
    uint64_t device_id;
    uint64_t owner_session;              /* session that added it last (0: none) */
    uint32_t nvirtqs;
    struct vp_virtq virtqs[VP_MAX_VIRTQS];  /* owns kick/call fds */
    uint16_t call_vector[VP_MAX_VIRTQS];    /* VP_NO_VECTOR when no call fd */
};

/** Completion of a controlq message: @ack is the guest driver's ACK, or NULL with
 *  @fail set (device broken, destroyed). Called exactly once. */
typedef void (*srv_cq_done_fn)(struct srv_device *dev, void *opaque,
                               const struct vp_cq_msg *ack, const char *fail);

/** One outgoing controlq message and its completion (device.c). */
struct srv_cq_op {
    uint64_t seq;
    uint16_t type, op;                   /* request type and op (ACK matching) */
    uint32_t device_type;
    uint64_t device_id;
    uint8_t buf[VP_CQ_MAX_MSG];
    size_t len;
    srv_cq_done_fn done;
    void *opaque;
    bool replay;                         /* part of a state replay after a driver reset */
};

enum srv_feat_state { FEAT_NONE, FEAT_SETTLED, FEAT_RENEGOTIATING };

/** One vhost-pci device (one per client_uuid). */
struct srv_device {
    struct vp_server *srv;
    int refs;
    bool dead;                           /* destroyed; freed at the last unref */
    bool in_table;                       /* srv->devices maps uuid to it */
    uint8_t uuid[VP_UUID_LEN];
    char uuid_str[37];

    /* control function */
    uint32_t devfn;
    bool control_plugging, control_plugged;
    int ctrl_fd;
    uint8_t *ca;                         /* mapping of the control area */
    size_t ca_size;
    int rx_kick_fd, tx_kick_fd, irq_fd;
    guint rx_kick_src, tx_kick_src;

    /* memory */
    uint64_t bar_size;
    uint32_t generation;
    struct srv_window wins[VP_MAX_WINDOWS];
    struct srv_region regions[VP_MAX_REGIONS];
    unsigned nregions;

    /* frontends and vectors */
    GPtrArray *frontends;                /* struct srv_frontend* */
    struct srv_vectors vectors;

    /* features */
    uint64_t features_offered, features_accepted;
    enum srv_feat_state feat_state;

    /* controlq */
    uint32_t status;                     /* device_status last read */
    bool driver_ok;
    bool broken;
    char broken_reason[256];
    struct vp_vring_dev rxq, txq;
    uint64_t next_cq_seq;
    GQueue cq_out;                       /* struct srv_cq_op* waiting for a buffer */
    GHashTable *cq_pending;              /* guint64* seq -> struct srv_cq_op* */
    uint32_t reset_seen;                 /* last reset_req answered (reset_done) */
    bool replay_due;                     /* driver reset: replay the state at DRIVER_OK */
    bool replaying;                      /* srv_cq_submit marks ops as replay ops */
    void (*on_driver_ok)(struct srv_device *dev, void *opaque);  /* clone hook */
    void *on_driver_ok_opaque;

    /* jobs (requests.c) */
    GQueue jobs;                         /* struct srv_job*, head runs */
    guint job_idle;
    bool closing;                        /* last connection gone: DEL + destroy queued */
    guint closing_timer;
    struct srv_device *clone_of;         /* set while this device is a clone in progress */

    struct {
        uint64_t controlq_tx, controlq_rx, acks_ok, acks_fail, clones, bad_acks;
        uint64_t resets;                 /* guest driver resets taken back (mgmt "resets") */
    } counters;
};

/** Create a device for @uuid with an empty memory table (control area ready, not
 *  plugged). Returns NULL with a reason on error. Not entered into srv->devices. */
struct srv_device *srv_device_new(struct vp_server *srv, const uint8_t *uuid, vp_error *err);
struct srv_device *srv_device_ref(struct srv_device *dev);
void srv_device_unref(struct srv_device *dev);
/** Device of @uuid in the table, or NULL. */
struct srv_device *srv_device_lookup(struct vp_server *srv, const uint8_t *uuid);
/** Put @dev into the table under its uuid (replacing nothing: the caller removed any
 *  previous one). */
void srv_device_publish(struct srv_device *dev);
/** Destroy: fail every job and controlq op with @why, unplug windows and the control
 *  function, close everything, drop the table's reference. */
void srv_device_destroy(struct srv_device *dev, const char *why);
/** Mark the device NEEDS_RESET (broken): log, write the status bit, fail everything
 *  pending with the reason. Other devices are unaffected. */
void srv_device_break(struct srv_device *dev, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/** Plug the control function (async; @done gets 0 or a reason). */
void srv_device_plug_control(struct srv_device *dev,
                             void (*done)(struct srv_device *, void *, int, const char *),
                             void *opaque);
/** Add a window for @file (takes @fd) at @bar_offset and plug it (async). Returns the
 *  window index or -errno with a reason (no free devfn / slot). */
int srv_device_add_window(struct srv_device *dev, const struct srv_file_id *file, int fd,
                          uint64_t bar_offset,
                          void (*done)(struct srv_device *, void *, int, const char *),
                          void *opaque, vp_error *err);
/** Drop windows no region uses: remove from the table, unplug (fire and forget). */
void srv_device_drop_unused_windows(struct srv_device *dev);
/** Write the BAR size and window table into the control area, bump generation. */
void srv_device_write_windows(struct srv_device *dev);
/** Set the logical BAR size and write it into the control area at once (the guest
 *  driver reads it with the header when the control function appears). */
void srv_device_set_bar_size(struct srv_device *dev, uint64_t bar_size);
/** Index of the window of @file, or -1. */
int srv_device_find_window(struct srv_device *dev, const struct srv_file_id *file);
/** Logical-BAR offset of region @r (window bar_offset + mmap_offset). */
uint64_t srv_region_bar_offset(const struct srv_device *dev, const struct srv_region *r);
/** Announce the id 2 vector list (call fds) to the device host. */
int srv_device_announce_vectors(struct srv_device *dev, vp_error *err);
/** Frontend by id, or NULL (index in *@idx). */
struct srv_frontend *srv_device_find_frontend(struct srv_device *dev, uint64_t device_id,
                                              guint *idx);
void srv_frontend_free(struct srv_frontend *fe);

/** Queue a controlq message (seq is assigned here; @m->seq ignored). Sent once the
 *  driver is DRIVER_OK and has a transmitq buffer. Returns the seq; @done is called
 *  exactly once (possibly synchronously with a failure when the device is broken). */
uint64_t srv_cq_submit(struct srv_device *dev, struct vp_cq_msg *m, srv_cq_done_fn done,
                       void *opaque);

/** Allocate / free a devfn from the host's range. -ENOSPC when none is free. */
int srv_devfn_alloc(struct vp_server *srv);
void srv_devfn_free(struct vp_server *srv, uint32_t devfn);

/* ------------------------------ requests ------------------------------ */

/** Handlers called by session.c's dispatch table after framing. They decode @msg
 *  (moving the fds they keep out of it; the caller vp_msg_clear()s it afterwards),
 *  validate, and queue a job or answer at once (validation errors: *_ACK with
 *  ADD_FAIL/DEL_FAIL and a reason). Return 0, or a negative errno with a reason in
 *  @err for a decode (framing) error: the caller disconnects that client. */
int srv_req_memory_info(struct srv_session *s, struct vp_msg *msg, vp_error *err);
int srv_req_device_info(struct srv_session *s, struct vp_msg *msg, vp_error *err);
int srv_req_feature_bits(struct srv_session *s, struct vp_msg *msg, vp_error *err);
int srv_req_feature_bits_ack(struct srv_session *s, struct vp_msg *msg, vp_error *err);
/** Session @session_id of @uuid has closed (already removed from the table): queue an
 *  implicit DEVICE_INFO(DEL) for its frontends, and destroy the device when no
 *  connection of @uuid remains. */
void srv_req_session_closed(struct vp_server *srv, uint64_t session_id, const uint8_t *uuid);
/** Fail every queued job of @dev with @why (device broken or destroyed). */
void srv_jobs_fail_all(struct srv_device *dev, const char *why);
/** Whether the head job waits for a FEATURE_BITS_ACK (renegotiation). */
bool srv_jobs_waiting_reneg(struct srv_device *dev);

/** The guest driver of @dev reset the device and reached DRIVER_OK again: queue on
 *  its controlq what a fresh driver must learn, as cloning does (MEMORY_INFO(ADD) of
 *  every region, FEATURE_BITS of the settled bits, DEVICE_INFO(ADD) per frontend at
 *  the best known queue positions). No socket traffic. */
void srv_req_replay(struct srv_device *dev);

/* ------------------------------ mgmt ------------------------------ */

struct srv_mgmt *srv_mgmt_new(struct vp_server *srv, const char *path, vp_error *err);
void srv_mgmt_free(struct srv_mgmt *m);
/** The status document (also used by tests). Caller frees. */
char *srv_mgmt_status_json(struct vp_server *srv);

/* ------------------------------ misc ------------------------------ */

void srv_uuid_str(const uint8_t *uuid, char out[37]);

#endif
