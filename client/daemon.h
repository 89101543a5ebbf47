/*
 * daemon.h - internals of the vhost-pci-client daemon shared by its files (not a
 * library API). The daemon is one parent and its children:
 *
 *   main.c             parent: the_daemon, start-up, the main loop, shutdown on
 *                      SIGINT/SIGTERM, exit
 *   daemon_options.c   the command line: options, defaults, checks
 *   daemon_bridge.c    the bridge glue: events into the bridge (daemon_post), its
 *                      actions carried out (VpClient requests and their ACKs as
 *                      events, vhost-user replies, timers), its log
 *   daemon_conn.c      the connections: the vhost-user socket (listening,
 *                      connecting, --fd) and its callbacks, the server connection,
 *                      reconnection with bounded backoff
 *
 * Calls between children go one way: conn -> bridge; every child may use the
 * parent's the_daemon. Threading: one thread, one GLib main loop (the global default
 * context).
 */
#ifndef VPC_DAEMON_H
#define VPC_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "bridge.h"
#include "vhost_user.h"
#include "vhost_user_glib.h"
#include "vpclient.h"

/* Most queue pairs --queues takes (a DEVICE_INFO carries at most VP_MAX_VIRTQS). */
#define MAX_PAIRS (VU_MAX_QUEUES / 2)
/* Reconnection backoff (server, and the frontend with --vhost-server-path): first
 * retry, ceiling, and how often a still failing reconnection is reported above debug
 * level. */
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000
/* ... ceiling for a listening frontend (--vhost-server-path): a restarted one is taken
 * within a second, as QEMU's reconnect=1 does the other way round. */
#define FE_RECONNECT_MAX_MS 1000
#define RECONNECT_REPORT_US (30 * G_USEC_PER_SEC)
/* Bits of GET_FEATURES that belong to vhost-user itself and are never forwarded. */
#define VU_LEVEL_FEATURES (1ULL << VU_F_PROTOCOL_FEATURES)

/** A connection that is retried with bounded exponential backoff. */
struct retry {
    unsigned max_ms;              /* ceiling of the delay */
    guint timer;
    unsigned delay_ms;
    unsigned failures;
    gint64 reported;
};

/** The daemon's state: its options, the bridge, the vhost-user side, the server side
 *  and the shutdown. One instance (the_daemon), used on the main loop's thread only.
 *  Fds: listen_fd is owned (closed at exit); the frontend's socket is owned by d->vu,
 *  the server's by d->vpc. */
struct daemon {
    /* options */
    char *socket_path;
    char *vhost_server_path;
    int opt_fd;
    char *server_path;
    char *uuid_opt;
    gint64 device_id;
    char *log_level;
    char *features_opt;
    char *memory_refusal_opt;
    double ack_timeout_s;
    gboolean print_caps;
    gint queue_pairs;

    uint64_t offer;               /* virtio features asked of the server */
    bool log_refusals_only;       /* --memory-refusal log */
    gboolean features_from_device; /* --features-from-device (br_config's) */
    int timeout_ms;               /* per server request */
    guint8 uuid[16];
    char uuid_str[37];
    GMainLoop *loop;
    int exit_code;

    struct br *br;
    guint br_timer[BR_NTIMERS];

    /* vhost-user side */
    int listen_fd;                /* -1: none */
    bool own_socket_path;         /* we bound --socket-path: unlink at exit */
    guint listen_src;
    bool fd_connected;            /* --fd was a connected socket: exit when it ends */
    struct vu_glib *vu;           /* the frontend connection, at most one */
    unsigned vu_conn;             /* connection number, for logs */
    struct retry fe_retry;        /* --vhost-server-path */

    /* server side */
    VpClient *vpc;                /* NULL while not connected */
    struct retry srv_retry;
    bool ever_connected;

    /* shutdown */
    bool shutting_down;
    guint shutdown_timer;
};

/** The one daemon (main.c). */
extern struct daemon the_daemon;

/** The frontend connection's vhost-user device, NULL while there is none. */
static inline struct vu_dev *vu_dev_of(struct daemon *d)
{
    return d->vu ? vu_glib_dev(d->vu) : NULL;
}

/* ---- daemon_options.c ---- */

/**
 * Parse the command line into @d (options, then defaults and derived values:
 * offer, timeout_ms, uuid). Messages go to stderr. Returns -1 to go on, 0 to exit
 * successfully (--print-capabilities: the caller prints them), 2 on a usage error.
 * The option strings in @d are g_malloc'ed, freed by main() at exit.
 */
int daemon_parse_options(struct daemon *d, int argc, char **argv);

/* ---- daemon_bridge.c ---- */

/** Post event @ev to the bridge (br_post: run to completion; what @ev points to is
 *  the caller's and copied if needed). */
void daemon_post(struct daemon *d, const struct br_event *ev);

/** Post an event of @type without arguments. */
void daemon_post_simple(struct daemon *d, enum br_event_type type);

/** The bridge's action callback (br_action_fn; @opaque: the daemon): sends requests
 *  to the server, replies to the frontend, starts and stops timers, quits. A request
 *  that cannot be sent comes back as its ACK event with BR_LOST. */
void daemon_act(struct br *br, const struct br_action *a, void *opaque);

/** The bridge's log callback (br_log_fn): @msg at @level to GLib's log. */
void daemon_br_log(enum br_log_level level, const char *msg, void *opaque);

/* ---- daemon_conn.c ---- */

/** Reset the backoff of @r to its first delay (RECONNECT_MIN_MS) and no failures. */
void daemon_retry_reset(struct retry *r);

/** Connect to the vhost-pci server (--server); on failure a retry is scheduled with
 *  backoff. On success BR_EV_SRV_UP is posted; the connection's end posts
 *  BR_EV_SRV_DOWN and reconnects. */
void daemon_srv_connect(struct daemon *d);

/** --vhost-server-path: connect to the frontend's listening socket and serve it;
 *  on failure a retry is scheduled with backoff. Nothing while one is served or
 *  while shutting down. */
void daemon_fe_connect(struct daemon *d);

/** GLib fd watch on the listening vhost-user socket (@data: the daemon): accepts
 *  and serves connections (a second one is refused). */
gboolean daemon_on_accept(gint fd, GIOCondition cond, gpointer data);

/** Listen on @path (a stale socket file from an earlier run is replaced; a live one
 *  is an error). Returns the fd (non-blocking, close-on-exec, the caller's) or -1
 *  with a message in @err. */
int daemon_listen_unix(const char *path, vp_error *err);

/** --fd: a listening socket @fd is served like --socket-path (d->listen_fd); a
 *  connected one is the single vhost-user connection. @fd is taken. Returns 0, or
 *  -1 with a message in @err (empty when the connection could not be served). */
int daemon_adopt_fd(struct daemon *d, int fd, vp_error *err);

#endif /* VPC_DAEMON_H */
