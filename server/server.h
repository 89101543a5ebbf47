/*
 * server.h - vhost-pci-server as a whole (main.c): its options and the one struct
 * every part hangs off. Not a public API.
 *
 * Where each concern lives (a header per file, each says what it owns):
 *   main.c        options, main loop, signals, shutdown           (server.h)
 *   session.c     one client connection: framing, table-driven dispatch, replies
 *   jobs.c        requests, their answers, the per-tenant job queue and timeouts
 *   req_memory.c  MEMORY_INFO(ADD/DEL) jobs      req_device.c  DEVICE_INFO(ADD/DEL) jobs
 *   req_features.c FEATURE_BITS, FEATURE_BITS_ACK and the renegotiation round
 *   closing.c     a connection closed: implicit DELs, destroy after the last one
 *   tenant.c      one driver VM (client_uuid): its connections, device and queue
 *   clone.c       moving a device to a fresh one (spec 1.6.1.2)
 *   device.c      one vhost-pci device: life cycle, plugging (device.h)
 *     ctrlarea.c  the control area     cq_dev.c  the controlq device side
 *     windows.c   windows and regions  frontends.c  frontends and doorbell vectors
 *     cqmsg.c     state messages and the driver-reset replay     devfn.c  devfns
 *   layout.c      pure window placement / clone decision / vector numbers
 *   devhost*.c    device hosts (devhost.h): local, qemu (+ qmp*.c, ivshmem_endpoint.c)
 *   mgmt.c        the --mgmt status socket (JSON)
 * Calls go one way, down this list; a part tells its owner about events through
 * hooks (srv_cq_hooks, on_driver_ok, vp_server.reply), never by calling up.
 *
 * Threading: everything runs in the main thread's default GMainContext.
 */
#ifndef VP_SERVER_H
#define VP_SERVER_H

#ifndef G_LOG_DOMAIN
#define G_LOG_DOMAIN "vp-server"
#endif

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "devhost.h"
#include "ratelimit.h"

struct srv_limits;
#include "refusals.h"
#include "vp_msg.h"

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
    char *socket_group;                  /* --socket-group: opens the sockets to a group */
    char *socket_mode;                   /* --socket-mode: octal (0600, 0660 with a group) */
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
    GHashTable *sessions;                /* guint64* id -> struct srv_session* (session.c) */
    GHashTable *tenants;                 /* uuid text -> struct srv_tenant* (tenant.c) */
    uint64_t next_session_id;
    uint8_t devfn_busy[256];             /* devfn allocator (devfn.c): 1 = in use / unplugging */
    unsigned unplugs_outstanding;        /* host unplugs not yet completed */
    bool shutting_down;
    struct {
        uint64_t messages, bad_messages, disconnects;
    } counters;
    struct srv_mgmt *mgmt;
    struct srv_ratelimit conn_log;       /* connection events (accept, close, framing) */
    struct srv_limits *limits;           /* the resource model (resources.h) */
    GHashTable *uids;                    /* uid -> struct srv_uid_usage* (resources.c) */
    struct srv_refusals refusals;        /* what was refused lately (refusals.h) */
    /** Hook: send a socket ACK of @type answering @seq on session @session_id (set by
     *  session.c; a session that has gone gets nothing). */
    void (*reply)(struct vp_server *srv, uint64_t session_id, uint16_t type, uint64_t seq,
                  const struct vp_ack *ack);
};

#endif
