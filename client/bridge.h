/*
 * bridge.h - the vhost-user -> vhost-pci bridge of the vhost-pci-client daemon, as an
 * explicit state machine (DESIGN section 4, spec 1.5.1.1 and 1.6.1.1).
 *
 * Shape (STYLE "The models", libvfio-user's transitions[]): a core with no event loop
 * and no GLib. Events come in (br_post: what the vhost-user frontend did, what the
 * vhost-pci server answered, a timer that fired); actions come out through one
 * callback (vhost-pci requests to send, answers to the frontend's pending request,
 * timers to arm). The states of the frontend device and the transitions between them
 * are one table in bridge.c; the daemon (client/main.c) keeps options, sockets,
 * reconnection and executes the actions.
 *
 * What the bridge guarantees (and the unit test tests/unit/test-bridge.c drives with
 * the message orders of QEMU 7.2, QEMU 10.0 and DPDK 22.11, in every interleaving of
 * socket drains):
 *  - a virtqueue is served by the device VM if and only if it runs (complete: num,
 *    addresses, base, kick) and is enabled, and a NET frontend is registered
 *    (DEVICE_INFO(ADD)) only once both rings of its first queue pair can be served,
 *    with every queue pair whose rings can be served;
 *  - any change of what is served (a ring disabled or stopped, new kick/call fds, a
 *    pair enabled) goes to the device VM as DEVICE_INFO(DEL), whose ACK hands back the
 *    queue positions, then DEVICE_INFO(ADD) of the new set from those positions
 *    (an ADD alone would restart running queues at stale positions);
 *  - every registration resumes each ring from its used index when the frontend's
 *    base disagrees with it (a frontend or backend that reconnected), as DPDK's vhost
 *    library does, and logs it;
 *  - memory reaches the server when the frontend sets it up (SET_MEM_TABLE,
 *    ADD_MEM_REG), so a refusal can fail the frontend's request where the frontend
 *    survives it (see BR_EV_MEM_ADD), with one error line naming cause and fix;
 *  - an answer that arrives for an earlier request (an earlier start, an earlier
 *    connection) is recognised by its token and never applied to the current one;
 *  - with cfg.features_from_device, the frontend's first GET_FEATURES is answered with
 *    what the device VM's driver accepted, asked through a placeholder region before
 *    the frontend has memory, a smaller answer confirmed with FEATURE_BITS_ACK (spec
 *    1.5.1.1); the placeholder leaves the server once the frontend's memory is there.
 *
 * Memory and fds: the bridge keeps its own copies (dup) of the kick/call eventfds of
 * running rings and of the memory files of the frontend's regions; it closes them when
 * they are replaced, on BR_EV_FE_GONE and in br_free(). Actions borrow them (valid
 * during the action callback only). Events lend their fds for the duration of br_post.
 *
 * Threading: one thread. br_post() may be called from inside the action callback;
 * the event is then queued and handled after the current one (run to completion).
 */
#ifndef BRIDGE_H
#define BRIDGE_H

#include <stdbool.h>
#include <stdint.h>

#include "vhost_user.h"
#include "vp_msg.h"

/** States of the frontend device (bridge.c has the transition table). */
enum br_state {
    BR_IDLE,           /* no frontend connection */
    BR_CONFIGURING,    /* connected; the rings of queue pair 0 cannot all be served */
    BR_READY,          /* they can: registration waits for the settle timer, a drained
                          socket with fresh call fds, or the server connection */
    BR_REGISTERING,    /* MEMORY_INFO, FEATURE_BITS, DEVICE_INFO(ADD) sent */
    BR_SERVED,         /* DEVICE_INFO_ACK(ADD_DONE): the device VM serves the rings */
    BR_REFUSED,        /* the device VM refused (or never answered) this registration;
                          the frontend's next ring change tries again */
    BR_STOPPING,       /* DEVICE_INFO(DEL) sent, waiting for the positions */
    BR_RENEGOTIATING,  /* the device VM accepted fewer features: the frontend was
                          dropped to renegotiate (spec 1.5.1.1), waiting for it to go */
    BR_SHUTDOWN,       /* the daemon stops: waiting for DEVICE_INFO(DEL)'s ACK */
    BR_NSTATES
};

/** Timers the bridge asks for (BR_ACT_TIMER_START / _STOP, BR_EV_TIMER). */
enum br_timer {
    BR_TIMER_SETTLE,   /* after the rings became servable: register (late call fds) */
    BR_TIMER_FEATURES, /* GET_FEATURES waited long enough for the server's answer */
    BR_NTIMERS
};

/** How a request to the server ended. */
enum br_status {
    BR_OK,             /* ADD_DONE / DEL_DONE / features answered */
    BR_REJECTED,       /* ADD_FAIL / DEL_FAIL: the reason is the server's */
    BR_NO_ANSWER,      /* no ACK within the request timeout */
    BR_LOST,           /* not sent, or the connection ended before the ACK */
};

enum br_event_type {
    BR_EV_FE_CONNECTED,  /* a vhost-user connection begins */
    BR_EV_FE_GONE,       /* it ended: .reason */
    BR_EV_GET_FEATURES,  /* GET_FEATURES waits for BR_ACT_REPLY_FEATURES */
    BR_EV_FEATURES_SET,  /* SET_FEATURES: .features */
    BR_EV_MEM_ADD,       /* .region added: waits for BR_ACT_REPLY_MEM */
    BR_EV_MEM_DEL,       /* .region removed: waits for BR_ACT_REPLY_MEM */
    BR_EV_RING_STARTED,  /* .ring runs (vu_dev_ops.vring_started) */
    BR_EV_RING_CHANGED,  /* .ring: new fds, or enabled/disabled */
    BR_EV_RING_STOP,     /* GET_VRING_BASE .index: waits for BR_ACT_REPLY_VRING_BASE */
    BR_EV_DRAINED,       /* the frontend has nothing more to say for now */
    BR_EV_SETTLE_TIMER,  /* BR_TIMER_SETTLE fired */
    BR_EV_FEATURES_TIMER,/* BR_TIMER_FEATURES fired */
    BR_EV_SRV_UP,        /* connected to the vhost-pci server */
    BR_EV_SRV_DOWN,      /* the server connection ended (.reason) */
    BR_EV_FEATURES_ACK,  /* FEATURE_BITS(.token) answered: .status, .features accepted */
    BR_EV_HANDSHAKE_DONE,/* handshake .token ended: .status (device), .mem_status,
                            .reason (first failure), .features (final), .renegotiated */
    BR_EV_RENEGOTIATE,   /* handshake .token: .offered, .features accepted (fewer) */
    BR_EV_DEL_ACK,       /* DEVICE_INFO(DEL) .token: .status, .positions */
    BR_EV_MEM_ACK,       /* MEMORY_INFO .token: .status, .reason */
    BR_EV_SHUTDOWN,      /* the daemon is asked to stop */
    BR_NEVENTS
};

/** One event. Pointers and fds are lent for the duration of br_post(). */
struct br_event {
    enum br_event_type type;
    uint64_t token;                  /* answers: the token of the request */
    enum br_status status;           /* answers */
    enum br_status mem_status;       /* BR_EV_HANDSHAKE_DONE: its MEMORY_INFO */
    const char *reason;              /* failure reason, FE_GONE / SRV_DOWN reason */
    uint64_t features;               /* FEATURES_SET, FEATURES_ACK, HANDSHAKE_DONE,
                                        RENEGOTIATE (accepted) */
    uint64_t offered;                /* RENEGOTIATE */
    bool renegotiated;               /* HANDSHAKE_DONE */
    struct vp_region region;         /* MEM_ADD / MEM_DEL (fd lent) */
    struct vu_vring_info ring;       /* RING_STARTED / RING_CHANGED (fds lent) */
    uint32_t index;                  /* RING_STOP */
    unsigned npositions;             /* DEL_ACK */
    struct vp_virtq_pos positions[VP_MAX_VIRTQS];
};

enum br_action_type {
    BR_ACT_SEND_FEATURES,   /* FEATURE_BITS(.features) on connecting -> FEATURES_ACK */
    BR_ACT_SEND_MEMORY,     /* MEMORY_INFO(.op) of .regions[.nregions] -> MEM_ACK */
    BR_ACT_SEND_HANDSHAKE,  /* spec 1.5.1.1: .regions, .features, .dev ->
                               RENEGOTIATE?, HANDSHAKE_DONE */
    BR_ACT_SEND_DEVICE_DEL, /* DEVICE_INFO(DEL) -> DEL_ACK */
    BR_ACT_CONFIRM_FEATURES,/* FEATURE_BITS_ACK(.features): no answer */
    BR_ACT_REPLY_FEATURES,  /* answer GET_FEATURES with .features */
    BR_ACT_REPLY_MEM,       /* answer the memory change: .result 0 or -errno */
    BR_ACT_REPLY_VRING_BASE,/* answer GET_VRING_BASE .index with .base */
    BR_ACT_DROP_FRONTEND,   /* close the frontend connection (.reason) */
    BR_ACT_TIMER_START,     /* arm .timer for .ms (replacing an armed one) */
    BR_ACT_TIMER_STOP,      /* disarm .timer */
    BR_ACT_QUIT,            /* shutdown complete: the daemon may exit */
};

/** One action. Everything it points to is the bridge's, valid during the callback.
 *  A SEND_* action that cannot be sent must be answered with its event (status
 *  BR_LOST), which the action callback may post at once. */
struct br_action {
    enum br_action_type type;
    uint64_t token;                  /* SEND_*: quote it in the answer's event */
    uint32_t op;                     /* SEND_MEMORY: VP_OP_ADD / VP_OP_DEL */
    uint64_t features;
    int result;                      /* REPLY_MEM */
    uint32_t index;                  /* REPLY_VRING_BASE */
    uint16_t base;
    const char *reason;              /* DROP_FRONTEND */
    enum br_timer timer;
    int ms;
    unsigned nregions;               /* SEND_MEMORY, SEND_HANDSHAKE */
    const struct vp_region *regions; /* fds: the bridge's (none for DEL) */
    const struct vp_device_info *dev;/* SEND_HANDSHAKE (fds: the bridge's) */
};

/** Configuration, copied by br_new(). Zero fields take the default. */
struct br_config {
    uint64_t device_id;      /* of the NET frontend on the server (default 0) */
    uint64_t offer;          /* virtio features offered to the device VM (default
                                VP_NET_FEATURES) */
    unsigned nqueues;        /* virtqueues of the frontend, even, 2..VU_MAX_QUEUES
                                (default 2) */
    uint64_t frontend_features; /* virtio bits offered to the frontend on top of what
                                   the device VM accepts and never forwarded to it
                                   (VIRTIO_NET_F_MQ with several queue pairs: the
                                   device VM sees them as virtqueues) */
    bool log_refusals_only;  /* --memory-refusal log: never fail a memory request */
    bool features_from_device; /* --features-from-device: on connecting to the server,
                                  before answering the frontend's first GET_FEATURES,
                                  create the device with a placeholder region of the
                                  bridge's own (MEMORY_INFO(ADD)) so that FEATURE_BITS
                                  reaches the device VM's driver and its answer, with
                                  the renegotiation round of spec 1.5.1.1 when it
                                  accepts less, is what the frontend is offered; the
                                  placeholder is removed once the frontend's memory is
                                  on the device VM (bridge_placeholder.c) */
    int settle_ms;           /* default 20 */
    int features_wait_ms;    /* default 3000 */
};

/** Log levels of the log hook. */
enum br_log_level { BR_LOG_DEBUG, BR_LOG_INFO, BR_LOG_MESSAGE, BR_LOG_WARNING,
                    BR_LOG_ERROR };

struct br;

typedef void (*br_action_fn)(struct br *br, const struct br_action *act, void *opaque);
typedef void (*br_log_fn)(enum br_log_level level, const char *msg, void *opaque);

/** Create a bridge in BR_IDLE with the server link down. @log may be NULL. Returns
 *  NULL when out of memory. */
struct br *br_new(const struct br_config *cfg, br_action_fn act, br_log_fn log,
                  void *opaque);
/** Close every fd the bridge holds and free it. Not from inside the callback. */
void br_free(struct br *br);

/** Handle @ev (copied; see "Threading" above). */
void br_post(struct br *br, const struct br_event *ev);

/** Current state, and its name for logs ("served"). */
enum br_state br_state(const struct br *br);
const char *br_state_name(enum br_state s);
const char *br_event_name(enum br_event_type t);

/** The event a fired timer is posted as (BR_EV_SETTLE_TIMER, BR_EV_FEATURES_TIMER). */
enum br_event_type br_timer_event(enum br_timer t);

/** Is the transition @from -> @to in the table (for any event)? For tests. */
bool br_transition_allowed(enum br_state from, enum br_state to);

/** What the bridge's device info holds right now (for status and tests): the virtqueue
 *  indexes the device VM serves (bit i = virtqueue i), 0 unless BR_SERVED. */
uint64_t br_served_mask(const struct br *br);

#endif
