/*
 * main.c - vhost-pci-client: the driver VM's vhost-user backend (DESIGN sections 2, 4
 * and 8). A vhost-user frontend (QEMU's virtio-net with -netdev vhost-user, DPDK's
 * virtio-user) sets up its memory and virtqueues; the daemon turns that into
 * vhost-pci messages to the device VM's vhost-pci-server, so that the device VM's
 * driver serves the frontend's virtqueues directly.
 *
 * What happens when is the bridge's business (client/bridge.h: an explicit state
 * machine, loop-free); this file keeps the options, the sockets and the reconnection,
 * feeds the bridge its events and carries out its actions:
 *
 *   vhost-user core (vhost_user.h)  --events-->  bridge  --actions-->  VpClient requests
 *   VpClient ACKs, timers           --events-->          --actions-->  vhost-user replies
 *
 * Connection directions (vhost-user.rst "Backend program conventions"; OVS's
 * dpdkvhostuser / dpdkvhostuserclient ports, DPDK's RTE_VHOST_USER_CLIENT):
 *   --socket-path PATH          the daemon listens, the frontend connects (QEMU
 *                               -chardev socket,path=PATH; DPDK virtio-user path=PATH)
 *   --vhost-server-path PATH    the frontend listens (QEMU -chardev socket,server=on;
 *                               DPDK virtio-user path=PATH,server=1) and the daemon
 *                               connects, reconnecting with bounded backoff whenever
 *                               the connection ends
 *   --fd N                      an inherited socket, listening or connected
 *
 * One frontend connection at a time (a second is refused), one NET frontend
 * (--device-id) with --queues receiveq/transmitq pairs (virtqueues 2k and 2k+1; the
 * frontend's VMM keeps the virtio-net control queue and enables pairs with
 * SET_VRING_ENABLE, which the bridge turns into DEVICE_INFO updates).
 *
 * Security model: the daemon parses no peer input itself. The frontend's requests are
 * framed and validated by the vhost-user core (client/vhost_user.c), the server's
 * messages by libvhostpci-client (framing, ACK matching), and the bridge trusts the
 * server's answers only as far as client/bridge.c says. Every fd the daemon itself
 * keeps (listening socket) has one owner here and is closed at exit.
 *
 * Threading: one thread, one GLib main loop (the global default context).
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib.h>
#include <glib-unix.h>
#include <uuid/uuid.h>

#include "bridge.h"
#include "vhost_user.h"
#include "vhost_user_glib.h"
#include "vp_log_glib.h"
#include "vp_wire.h"
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

static struct daemon the_daemon;

static struct vu_dev *vu_dev_of(struct daemon *d)
{
    return d->vu ? vu_glib_dev(d->vu) : NULL;
}

/* ------------------------------ bridge glue ------------------------------ */

static void post(struct daemon *d, const struct br_event *ev)
{
    br_post(d->br, ev);
}

static void post_simple(struct daemon *d, enum br_event_type type)
{
    post(d, &(struct br_event){ .type = type });
}

/** What a request of the bridge is waiting for (the callbacks' user data). */
struct req {
    struct daemon *d;
    uint64_t token;
};

static struct req *req_new(struct daemon *d, uint64_t token)
{
    struct req *r = g_new0(struct req, 1);
    r->d = d;
    r->token = token;
    return r;
}

static enum br_status status_of(const GError *error)
{
    if (!error)
        return BR_OK;
    if (g_error_matches(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_REJECTED))
        return BR_REJECTED;
    if (g_error_matches(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_TIMEOUT))
        return BR_NO_ANSWER;
    return BR_LOST;
}

static void on_features_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                            gpointer data)
{
    struct req *r = data;
    (void)c;
    post(r->d, &(struct br_event){ .type = BR_EV_FEATURES_ACK, .token = r->token,
                                   .status = status_of(error),
                                   .reason = error ? error->message : NULL,
                                   .features = reply ? reply->ack.feature_bits : 0 });
    g_free(r);
}

static void on_mem_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                       gpointer data)
{
    struct req *r = data;
    (void)c;
    (void)reply;
    post(r->d, &(struct br_event){ .type = BR_EV_MEM_ACK, .token = r->token,
                                   .status = status_of(error),
                                   .reason = error ? error->message : NULL });
    g_free(r);
}

static void on_del_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                       gpointer data)
{
    struct req *r = data;
    (void)c;
    struct br_event ev = { .type = BR_EV_DEL_ACK, .token = r->token,
                           .status = status_of(error),
                           .reason = error ? error->message : NULL };
    if (reply && !error) {
        ev.npositions = MIN(reply->ack.npositions, (uint32_t)VP_MAX_VIRTQS);
        memcpy(ev.positions, reply->ack.positions, ev.npositions * sizeof(ev.positions[0]));
    }
    post(r->d, &ev);
    g_free(r);
}

static void on_renegotiate(VpClient *c, guint64 offered, guint64 accepted, gpointer data)
{
    struct req *r = data; /* freed by on_handshake */
    (void)c;
    post(r->d, &(struct br_event){ .type = BR_EV_RENEGOTIATE, .token = r->token,
                                   .offered = offered, .features = accepted });
}

static void on_handshake(VpClient *c, const VpClientHandshake *res, const GError *error,
                         gpointer data)
{
    struct req *r = data;
    (void)c;
    struct br_event ev = { .type = BR_EV_HANDSHAKE_DONE, .token = r->token,
                           .reason = error ? error->message : NULL,
                           .features = res->final_features,
                           .renegotiated = res->renegotiated };
    /* The device's verdict, and the memory's (the error is the first failure in the
     * order memory, features, device). */
    if (res->have_device)
        ev.status = res->device.ack.result == VP_ACK_ADD_DONE ? BR_OK : BR_REJECTED;
    else
        ev.status = error ? status_of(error) : BR_LOST;
    if (res->have_memory)
        ev.mem_status = res->memory.ack.result == VP_ACK_ADD_DONE ? BR_OK : BR_REJECTED;
    else
        ev.mem_status = error ? status_of(error) : BR_LOST;
    if (ev.status == BR_OK && res->have_features && error &&
        !(res->have_memory && ev.mem_status != BR_OK))
        ev.status = status_of(error); /* the feature round failed */
    post(r->d, &ev);
    g_free(r);
}

static gboolean br_timer_cb(gpointer data);

/** Timer user data: the daemon and which timer (pointer arithmetic on the array). */
static gboolean br_timer_cb(gpointer data)
{
    guint *slot = data;
    struct daemon *d = &the_daemon;
    enum br_timer t = (enum br_timer)(slot - d->br_timer);
    d->br_timer[t] = 0;
    post_simple(d, br_timer_event(t));
    return G_SOURCE_REMOVE;
}

static void send_failed(struct daemon *d, const struct br_action *a, const char *why)
{
    g_warning("cannot send a request to the vhost-pci server: %s", why);
    enum br_event_type t = a->type == BR_ACT_SEND_FEATURES ? BR_EV_FEATURES_ACK
                         : a->type == BR_ACT_SEND_MEMORY ? BR_EV_MEM_ACK
                         : a->type == BR_ACT_SEND_HANDSHAKE ? BR_EV_HANDSHAKE_DONE
                         : BR_EV_DEL_ACK;
    post(d, &(struct br_event){ .type = t, .token = a->token, .status = BR_LOST,
                                .mem_status = BR_LOST, .reason = why });
}

/** Carry out one action of the bridge. */
static void act(struct br *br, const struct br_action *a, void *opaque)
{
    struct daemon *d = opaque;
    (void)br;
    struct vu_dev *v = vu_dev_of(d);
    GError *e = NULL;
    guint64 seq = 1;
    switch (a->type) {
    case BR_ACT_SEND_FEATURES:
    case BR_ACT_SEND_MEMORY:
    case BR_ACT_SEND_HANDSHAKE:
    case BR_ACT_SEND_DEVICE_DEL: {
        if (!d->vpc) {
            send_failed(d, a, "not connected");
            break;
        }
        struct req *r = req_new(d, a->token);
        if (a->type == BR_ACT_SEND_FEATURES)
            seq = vp_client_send_features(d->vpc, a->features, d->timeout_ms,
                                          on_features_ack, r, &e);
        else if (a->type == BR_ACT_SEND_MEMORY && a->op == VP_OP_ADD)
            seq = vp_client_memory_add(d->vpc, a->regions, a->nregions, d->timeout_ms,
                                       on_mem_ack, r, &e);
        else if (a->type == BR_ACT_SEND_MEMORY)
            seq = vp_client_memory_del(d->vpc, a->regions, a->nregions, d->timeout_ms,
                                       on_mem_ack, r, &e);
        else if (a->type == BR_ACT_SEND_HANDSHAKE)
            seq = vp_client_handshake(d->vpc, a->regions, a->nregions, a->features, a->dev,
                                      d->timeout_ms, on_renegotiate, on_handshake, r, &e);
        else
            seq = vp_client_device_del(d->vpc, VP_DEV_NET, (uint64_t)d->device_id,
                                       d->timeout_ms, on_del_ack, r, &e);
        if (!seq) {
            g_free(r);
            send_failed(d, a, e->message);
            g_error_free(e);
        }
        break;
    }
    case BR_ACT_CONFIRM_FEATURES:
        if (!d->vpc || !vp_client_confirm_features(d->vpc, a->features, &e)) {
            g_warning("FEATURE_BITS_ACK: %s", e ? e->message : "not connected");
            g_clear_error(&e);
        } else {
            g_message("FEATURE_BITS_ACK(0x%" PRIx64 ") sent", a->features);
        }
        break;
    case BR_ACT_REPLY_FEATURES:
        if (v && vu_dev_reply_features(v, a->features) < 0)
            g_warning("GET_FEATURES: the reply could not be sent");
        break;
    case BR_ACT_REPLY_MEM:
        if (v && vu_dev_reply_mem(v, a->result) < 0)
            g_warning("memory change: the reply could not be sent");
        break;
    case BR_ACT_REPLY_VRING_BASE:
        if (v && vu_dev_reply_vring_base(v, a->index, a->base) < 0)
            g_warning("GET_VRING_BASE %u: the reply could not be sent", a->index);
        break;
    case BR_ACT_DROP_FRONTEND:
        if (v && !vu_dev_is_broken(v))
            vu_dev_fail(v, "%s", a->reason);
        break;
    case BR_ACT_TIMER_START:
        if (d->br_timer[a->timer])
            g_source_remove(d->br_timer[a->timer]);
        d->br_timer[a->timer] = g_timeout_add((guint)a->ms, br_timer_cb,
                                              &d->br_timer[a->timer]);
        break;
    case BR_ACT_TIMER_STOP:
        if (d->br_timer[a->timer])
            g_source_remove(d->br_timer[a->timer]);
        d->br_timer[a->timer] = 0;
        break;
    case BR_ACT_QUIT:
        g_main_loop_quit(d->loop);
        break;
    }
}

static void br_log_glib(enum br_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    switch (level) {
    case BR_LOG_DEBUG:
        g_debug("%s", msg);
        break;
    case BR_LOG_INFO:
        g_info("%s", msg);
        break;
    case BR_LOG_MESSAGE:
        g_message("%s", msg);
        break;
    case BR_LOG_WARNING:
        g_warning("%s", msg);
        break;
    case BR_LOG_ERROR:
        g_critical("%s", msg);
        break;
    }
}

/* ------------------------------ vhost-user callbacks ------------------------------ */

static int cb_get_features(struct vu_dev *v, uint64_t *features, void *opaque)
{
    (void)v;
    (void)features;
    post_simple(opaque, BR_EV_GET_FEATURES);
    return VU_DEFERRED; /* the core knows when the answer came from inside */
}

static void cb_features_set(struct vu_dev *v, uint64_t features, void *opaque)
{
    (void)v;
    post(opaque, &(struct br_event){ .type = BR_EV_FEATURES_SET, .features = features });
}

static void cb_vring_started(struct vu_dev *v, const struct vu_vring_info *info, void *opaque)
{
    (void)v;
    post(opaque, &(struct br_event){ .type = BR_EV_RING_STARTED, .ring = *info });
}

static void cb_vring_changed(struct vu_dev *v, const struct vu_vring_info *info, void *opaque)
{
    (void)v;
    post(opaque, &(struct br_event){ .type = BR_EV_RING_CHANGED, .ring = *info });
}

static int cb_mem_added(struct vu_dev *v, const struct vp_region *r, void *opaque)
{
    (void)v;
    post(opaque, &(struct br_event){ .type = BR_EV_MEM_ADD, .region = *r });
    return VU_DEFERRED;
}

static int cb_mem_removed(struct vu_dev *v, const struct vp_region *r, void *opaque)
{
    (void)v;
    post(opaque, &(struct br_event){ .type = BR_EV_MEM_DEL, .region = *r });
    return VU_DEFERRED;
}

static int cb_get_vring_base(struct vu_dev *v, uint32_t index, uint16_t *last_avail_idx,
                             void *opaque)
{
    (void)v;
    (void)last_avail_idx;
    post(opaque, &(struct br_event){ .type = BR_EV_RING_STOP, .index = index });
    return VU_DEFERRED;
}

static void cb_drained(struct vu_dev *v, void *opaque)
{
    (void)v;
    post_simple(opaque, BR_EV_DRAINED);
}

static void fe_connect(struct daemon *d);

static gboolean fe_retry_cb(gpointer data)
{
    struct daemon *d = data;
    d->fe_retry.timer = 0;
    fe_connect(d);
    return G_SOURCE_REMOVE;
}

static void retry_schedule(struct daemon *d, struct retry *r, GSourceFunc fn)
{
    if (d->shutting_down || r->timer)
        return;
    r->timer = g_timeout_add(r->delay_ms, fn, d);
    r->delay_ms = MIN(r->delay_ms * 2, r->max_ms);
}

static void retry_reset(struct retry *r)
{
    r->delay_ms = RECONNECT_MIN_MS;
    r->failures = 0;
    r->reported = g_get_monotonic_time();
}

/** A failed connection attempt: the first loudly, then a summary now and then. */
static void retry_failed(struct retry *r, const char *what, const char *why)
{
    r->failures++;
    gint64 now = g_get_monotonic_time();
    if (r->failures == 1)
        g_warning("cannot connect to %s: %s; retrying with backoff (up to %u ms)", what, why,
                  r->max_ms);
    else if (now - r->reported >= RECONNECT_REPORT_US)
        g_message("still cannot connect to %s (%u attempts): %s", what, r->failures, why);
    else
        g_debug("connect attempt %u to %s: %s", r->failures, what, why);
    if (r->failures == 1 || now - r->reported >= RECONNECT_REPORT_US)
        r->reported = now;
}

static void cb_disconnected(struct vu_dev *v, const char *reason, void *opaque)
{
    struct daemon *d = opaque;
    if (v != vu_dev_of(d))
        return;
    g_message("frontend disconnected: %s", reason);
    vu_glib_free(d->vu); /* deferred by the core when called from its callback */
    d->vu = NULL;
    post(d, &(struct br_event){ .type = BR_EV_FE_GONE, .reason = reason });
    if (d->shutting_down)
        return;
    if (d->vhost_server_path) {
        retry_reset(&d->fe_retry);
        retry_schedule(d, &d->fe_retry, fe_retry_cb);
    } else if (d->fd_connected) {
        g_message("the vhost-user socket (--fd) is closed: nothing more to serve");
        raise(SIGTERM);
    }
}

static const struct vu_dev_ops vu_ops = {
    .get_features = cb_get_features,
    .features_set = cb_features_set,
    .vring_started = cb_vring_started,
    .mem_added = cb_mem_added,
    .mem_removed = cb_mem_removed,
    .vring_changed = cb_vring_changed,
    .get_vring_base = cb_get_vring_base,
    .drained = cb_drained,
    .disconnected = cb_disconnected,
};

/* ------------------------------ server connection ------------------------------ */

static void srv_connect(struct daemon *d);

static gboolean srv_retry_cb(gpointer data)
{
    struct daemon *d = data;
    d->srv_retry.timer = 0;
    srv_connect(d);
    return G_SOURCE_REMOVE;
}

static gboolean unref_client_idle(gpointer data)
{
    vp_client_unref(data);
    return G_SOURCE_REMOVE;
}

static void on_srv_closed(VpClient *c, const GError *error, gpointer data)
{
    struct daemon *d = data;
    if (c != d->vpc)
        return;
    d->vpc = NULL;
    /* Freed from the main loop: callers up the stack may still hold the pointer. */
    g_idle_add(unref_client_idle, c);
    if (!d->shutting_down)
        g_warning("lost the connection to the vhost-pci server %s: %s; reconnecting",
                  d->server_path, error ? error->message : "");
    else
        g_message("shutdown: the server connection closed (%s)", error ? error->message : "");
    post(d, &(struct br_event){ .type = BR_EV_SRV_DOWN,
                                .reason = error ? error->message : NULL });
    retry_reset(&d->srv_retry);
    retry_schedule(d, &d->srv_retry, srv_retry_cb);
}

static void srv_connect(struct daemon *d)
{
    GError *e = NULL;
    VpClient *c = vp_client_connect(d->server_path, d->uuid, &e);
    if (!c) {
        char what[300];
        g_snprintf(what, sizeof(what), "the vhost-pci server %s", d->server_path);
        retry_failed(&d->srv_retry, what, e->message);
        g_error_free(e);
        retry_schedule(d, &d->srv_retry, srv_retry_cb);
        return;
    }
    d->vpc = c;
    vp_client_set_closed_func(c, on_srv_closed, d);
    if (d->srv_retry.failures)
        g_message("connected to the vhost-pci server %s after %u failed attempt(s)",
                  d->server_path, d->srv_retry.failures);
    else
        g_message("connected to the vhost-pci server %s%s", d->server_path,
                  d->ever_connected ? " again" : "");
    d->ever_connected = true;
    retry_reset(&d->srv_retry);
    post_simple(d, BR_EV_SRV_UP);
}

/* ------------------------------ vhost-user socket ------------------------------ */

/** Serve the connected vhost-user socket @sock (taken over). */
static void serve_connection(struct daemon *d, int sock)
{
    struct vu_dev *old = vu_dev_of(d);
    if (old && vu_dev_fd(old) >= 0) {
        /* A frontend reconnecting (QEMU reconnect=N) may be accepted before the main
         * loop has seen the old connection's end: look at it now. */
        struct pollfd p = { .fd = vu_dev_fd(old), .events = POLLRDHUP };
        if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            vu_dev_fail(old, "the frontend closed the connection (a new one replaces it)");
    }
    if (d->vu) {
        g_warning("a second vhost-user connection: refused (one frontend per daemon)");
        close(sock);
        return;
    }
    struct vu_dev_config cfg = { .nqueues = 2 * (unsigned)d->queue_pairs };
    vp_error err = { "" };
    d->vu_conn++;
    d->vu = vu_glib_new(sock, &cfg, &vu_ops, d, NULL, &err);
    if (!d->vu) {
        g_warning("cannot serve the vhost-user connection: %s", err.msg);
        return;
    }
    g_message("frontend connected (vhost-user connection %u)", d->vu_conn);
    post_simple(d, BR_EV_FE_CONNECTED);
}

/** --vhost-server-path: connect to the frontend's listening socket. */
static void fe_connect(struct daemon *d)
{
    if (d->shutting_down || d->vu)
        return;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, d->vhost_server_path, sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        char what[300];
        g_snprintf(what, sizeof(what), "the frontend's vhost-user socket %s",
                   d->vhost_server_path);
        retry_failed(&d->fe_retry, what, g_strerror(errno));
        if (fd >= 0)
            close(fd);
        retry_schedule(d, &d->fe_retry, fe_retry_cb);
        return;
    }
    if (d->fe_retry.failures)
        g_message("connected to the frontend's vhost-user socket %s after %u failed "
                  "attempt(s)", d->vhost_server_path, d->fe_retry.failures);
    retry_reset(&d->fe_retry);
    serve_connection(d, fd);
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data);

static gboolean resume_accept(gpointer data)
{
    struct daemon *d = data;
    if (d->listen_fd >= 0 && !d->shutting_down && !d->listen_src)
        d->listen_src = g_unix_fd_add(d->listen_fd, G_IO_IN, on_accept, d);
    return G_SOURCE_REMOVE;
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    struct daemon *d = data;
    (void)cond;
    for (;;) {
        int s = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                /* The pending connection stays: pause instead of spinning on it. */
                g_warning("accept on the vhost-user socket: %s: pausing for 200 ms",
                          g_strerror(e));
                d->listen_src = 0;
                g_timeout_add(200, resume_accept, d);
                return G_SOURCE_REMOVE;
            }
            if (e != EAGAIN && e != EWOULDBLOCK)
                g_warning("accept on the vhost-user socket: %s", g_strerror(e));
            break;
        }
        serve_connection(d, s);
    }
    return G_SOURCE_CONTINUE;
}

/** Listen on @path (a stale socket file from an earlier run is replaced; a live one
 *  is an error). Returns the fd or -1 with a message. */
static int listen_unix(const char *path, vp_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        vp_fail(err, -1, "--socket-path %s: longer than %zu bytes", path, sizeof(sa.sun_path) - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            vp_fail(err, -1, "--socket-path %s exists and is not a socket", path);
            return -1;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            vp_fail(err, -1, "--socket-path %s: another process is listening there", path);
            return -1;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        vp_fail(err, -1, "--socket-path %s: %s", path, g_strerror(e));
        return -1;
    }
    return fd;
}

/** --fd: a listening socket is served like --socket-path; a connected one is the
 *  single vhost-user connection. Returns 0, or -1 with a message. */
static int adopt_fd(struct daemon *d, int fd, vp_error *err)
{
    int type = 0, acc = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
        vp_fail(err, -1, "--fd %d is not a stream socket", fd);
        return -1;
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    len = sizeof(acc);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
            vp_fail(err, -1, "--fd %d: %s", fd, g_strerror(errno));
            return -1;
        }
        d->listen_fd = fd;
        return 0;
    }
    d->fd_connected = true;
    serve_connection(d, fd);
    return d->vu ? 0 : -1;
}

/* ------------------------------ shutdown ------------------------------ */

static gboolean shutdown_deadline(gpointer data)
{
    struct daemon *d = data;
    d->shutdown_timer = 0;
    g_warning("shutdown: no DEVICE_INFO_ACK(DEL) within %d ms: exiting anyway",
              d->timeout_ms + 1000);
    g_main_loop_quit(d->loop);
    return G_SOURCE_REMOVE;
}

static gboolean on_signal(gpointer data)
{
    struct daemon *d = data;
    if (d->shutting_down) {
        g_message("second signal: exiting without waiting");
        g_main_loop_quit(d->loop);
        return G_SOURCE_CONTINUE;
    }
    d->shutting_down = true;
    g_message("shutting down");
    if (d->listen_src) {
        g_source_remove(d->listen_src);
        d->listen_src = 0;
    }
    struct retry *rs[] = { &d->srv_retry, &d->fe_retry };
    for (unsigned i = 0; i < G_N_ELEMENTS(rs); i++)
        if (rs[i]->timer) {
            g_source_remove(rs[i]->timer);
            rs[i]->timer = 0;
        }
    d->shutdown_timer = g_timeout_add(d->timeout_ms + 1000, shutdown_deadline, d);
    post_simple(d, BR_EV_SHUTDOWN);
    return G_SOURCE_CONTINUE;
}

/* ------------------------------ options, main ------------------------------ */

static int parse_options(struct daemon *d, int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &d->socket_path,
          "vhost-user UNIX socket to listen on; the frontend connects (QEMU: -chardev "
          "socket,path=PATH -netdev vhost-user; DPDK: --vdev net_virtio_user0,path=PATH)",
          "PATH" },
        { "vhost-server-path", 0, 0, G_OPTION_ARG_FILENAME, &d->vhost_server_path,
          "The frontend's listening vhost-user socket: the daemon connects and reconnects "
          "with backoff whenever the connection ends (QEMU: -chardev socket,path=PATH,"
          "server=on; DPDK: --vdev net_virtio_user0,path=PATH,server=1; like OVS's "
          "dpdkvhostuserclient ports)", "PATH" },
        { "fd", 0, 0, G_OPTION_ARG_INT, &d->opt_fd,
          "Use this inherited vhost-user socket (listening, or connected to the frontend)",
          "FDNUM" },
        { "print-capabilities", 0, 0, G_OPTION_ARG_NONE, &d->print_caps,
          "Print the backend capabilities (JSON, vhost-user.json) and exit", NULL },
        { "server", 'S', 0, G_OPTION_ARG_FILENAME, &d->server_path,
          "The device VM's vhost-pci-server socket (its --listen PATH; required)", "PATH" },
        { "uuid", 'u', 0, G_OPTION_ARG_STRING, &d->uuid_opt,
          "client_uuid naming this driver VM (default: a new random one, printed at start)",
          "UUID" },
        { "device-id", 'i', 0, G_OPTION_ARG_INT64, &d->device_id,
          "device_id of this frontend in the driver VM (default 1)", "N" },
        { "features", 0, 0, G_OPTION_ARG_STRING, &d->features_opt,
          "virtio-net feature bits offered to the device VM (default: the vhost-pci-net "
          "set, VP_NET_FEATURES)", "MASK" },
        { "memory-refusal", 0, 0, G_OPTION_ARG_STRING, &d->memory_refusal_opt,
          "When the device VM refuses the frontend's memory: 'reply' (default) answers "
          "the frontend's SET_MEM_TABLE/ADD_MEM_REG/REM_MEM_REG with a failure when it "
          "survives one: for memory hot-plugged while its device runs (QEMU logs it and "
          "keeps the region out) and for its first memory (nothing could be served: DPDK "
          "reports a failed start, QEMU a failed vhost start); 'log' only logs it and "
          "answers success. A frontend restarting its device with memory the device VM "
          "has always gets success", "reply|log" },
        { "queues", 'q', 0, G_OPTION_ARG_INT, &d->queue_pairs,
          "Queue pairs offered to the frontend (default 1; with more: VIRTIO_NET_F_MQ and "
          "VHOST_USER_PROTOCOL_F_MQ; QEMU: -netdev vhost-user,queues=N; DPDK: "
          "queues=N,cq=1). A frontend set up for more is refused at its start with a "
          "reason", "N" },
        { "ack-timeout", 't', 0, G_OPTION_ARG_DOUBLE, &d->ack_timeout_s,
          "Seconds to wait for each server ACK (default 15)", "SECONDS" },
        { "log-level", 0, 0, G_OPTION_ARG_STRING, &d->log_level,
          "Least severe messages to print: error, warning, info (default) or debug", "LEVEL" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GOptionContext *ctx = g_option_context_new("- vhost-user backend of a driver VM for vhost-pci");
    g_option_context_set_summary(ctx,
        "The vhost-user backend of a driver VM's virtio-net (QEMU) or of a DPDK\n"
        "virtio-user port: relays the frontend's memory, features and virtqueues to the\n"
        "device VM's vhost-pci-server (DESIGN.md 4), whose guest driver then serves the\n"
        "queues through shared memory.");
    g_option_context_set_description(ctx,
        "Examples:\n"
        "  vhost-pci-client --socket-path /run/vu.sock --server /run/vp.sock --device-id 1\n"
        "  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem0,size=512M,share=on \\\n"
        "      -numa node,memdev=mem0 -chardev socket,id=vu,path=/run/vu.sock,reconnect=1 \\\n"
        "      -netdev vhost-user,id=n0,chardev=vu -device virtio-net-pci,netdev=n0,vectors=0\n"
        "  dpdk-testpmd --no-pci --vdev net_virtio_user0,path=/run/vu.sock -- ...\n"
        "The frontend listening (reconnects survive a daemon restart):\n"
        "  dpdk-testpmd --no-pci --vdev net_virtio_user0,path=/run/vu.sock,server=1 -- ...\n"
        "  vhost-pci-client --vhost-server-path /run/vu.sock --server /run/vp.sock\n"
        "DPDK's and hugetlbfs memory is never sealed: the server needs --allow-unsealed.\n"
        "SIGINT/SIGTERM: DEVICE_INFO(DEL) of the frontend, wait for DEL_DONE (bounded by\n"
        "--ack-timeout), exit.\n");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *e = NULL;
    bool ok = g_option_context_parse(ctx, &argc, &argv, &e);
    g_option_context_free(ctx);
    if (!ok) {
        fprintf(stderr, "vhost-pci-client: %s (see --help)\n", e->message);
        g_error_free(e);
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "vhost-pci-client: unexpected argument '%s' (see --help)\n", argv[1]);
        return 2;
    }
    if (d->print_caps)
        return 0;
    /* Defaults after parsing: GOption does not free a preset string it replaces. */
    if (!d->log_level)
        d->log_level = g_strdup("info");
    if (vp_log_set_level(d->log_level) < 0) {
        fprintf(stderr, "vhost-pci-client: --log-level must be error, warning, info or debug\n");
        return 2;
    }
    if (!!d->socket_path + (d->opt_fd >= 0) + !!d->vhost_server_path != 1) {
        fprintf(stderr, "vhost-pci-client: give exactly one of --socket-path PATH, "
                "--vhost-server-path PATH and --fd FDNUM\n");
        return 2;
    }
    if (d->vhost_server_path) {
        struct sockaddr_un sa;
        if (strlen(d->vhost_server_path) >= sizeof(sa.sun_path)) {
            fprintf(stderr, "vhost-pci-client: --vhost-server-path %s: longer than %zu "
                    "bytes\n", d->vhost_server_path, sizeof(sa.sun_path) - 1);
            return 2;
        }
    }
    if (!d->server_path) {
        fprintf(stderr, "vhost-pci-client: --server PATH is required (see --help)\n");
        return 2;
    }
    if (d->queue_pairs < 1 || d->queue_pairs > MAX_PAIRS) {
        fprintf(stderr, "vhost-pci-client: --queues must be in 1..%d\n", MAX_PAIRS);
        return 2;
    }
    if (d->device_id < 0) {
        fprintf(stderr, "vhost-pci-client: --device-id must be >= 0\n");
        return 2;
    }
    if (!(d->ack_timeout_s > 0 && d->ack_timeout_s <= 3600)) {
        fprintf(stderr, "vhost-pci-client: --ack-timeout must be in (0, 3600] seconds\n");
        return 2;
    }
    if (!d->memory_refusal_opt || strcmp(d->memory_refusal_opt, "reply") == 0) {
        d->log_refusals_only = false;
    } else if (strcmp(d->memory_refusal_opt, "log") == 0) {
        d->log_refusals_only = true;
    } else {
        fprintf(stderr, "vhost-pci-client: --memory-refusal must be reply or log\n");
        return 2;
    }
    d->timeout_ms = (int)(d->ack_timeout_s * 1000.0 + 0.5);
    if (d->timeout_ms <= 0)
        d->timeout_ms = 1;
    d->offer = VP_NET_FEATURES;
    if (d->features_opt) {
        char *end = NULL;
        errno = 0;
        guint64 v = g_ascii_strtoull(d->features_opt, &end, 0);
        if (errno || !end || *end || end == d->features_opt) {
            fprintf(stderr, "vhost-pci-client: --features '%s' is not a number\n",
                    d->features_opt);
            return 2;
        }
        if (v & VU_LEVEL_FEATURES) {
            fprintf(stderr, "vhost-pci-client: --features: bit %d is vhost-user's own "
                    "(VHOST_USER_F_PROTOCOL_FEATURES), not a virtio-net feature\n",
                    VU_F_PROTOCOL_FEATURES);
            return 2;
        }
        d->offer = v;
    }
    uuid_t u;
    if (d->uuid_opt) {
        if (uuid_parse(d->uuid_opt, u) < 0) {
            fprintf(stderr, "vhost-pci-client: --uuid '%s' is not a UUID "
                    "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)\n", d->uuid_opt);
            return 2;
        }
    } else {
        uuid_generate_random(u);
    }
    memcpy(d->uuid, u, 16);
    uuid_unparse_lower(d->uuid, d->uuid_str);
    return -1;
}

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    struct daemon *d = &the_daemon;
    d->opt_fd = -1;
    d->device_id = 1;
    d->ack_timeout_s = 15.0;
    d->queue_pairs = 1;
    d->listen_fd = -1;
    retry_reset(&d->srv_retry);
    retry_reset(&d->fe_retry);
    d->srv_retry.max_ms = RECONNECT_MAX_MS;
    d->fe_retry.max_ms = FE_RECONNECT_MAX_MS;

    int rc = parse_options(d, argc, argv);
    if (rc >= 0) {
        if (rc == 0 && d->print_caps) {
            /* vhost-user.json VHostUserBackendCapabilities: a net backend has no
             * type-specific features. */
            printf("{\n  \"type\": \"net\"\n}\n");
            fflush(stdout);
        }
        return rc;
    }
    vp_log_install();
    signal(SIGPIPE, SIG_IGN);

    struct br_config bc = { .device_id = (uint64_t)d->device_id, .offer = d->offer,
                            .nqueues = 2 * (unsigned)d->queue_pairs,
                            .frontend_features = d->queue_pairs > 1 ? 1ULL << VU_F_NET_MQ : 0,
                            .log_refusals_only = d->log_refusals_only };
    d->br = br_new(&bc, act, br_log_glib, d);
    if (!d->br) {
        fprintf(stderr, "vhost-pci-client: out of memory\n");
        return 1;
    }
    d->loop = g_main_loop_new(NULL, FALSE);
    vp_error err = { "" };
    if (d->socket_path) {
        d->listen_fd = listen_unix(d->socket_path, &err);
        if (d->listen_fd < 0) {
            fprintf(stderr, "vhost-pci-client: %s\n", err.msg);
            return 1;
        }
        d->own_socket_path = true;
    } else if (d->opt_fd >= 0 && adopt_fd(d, d->opt_fd, &err) < 0) {
        fprintf(stderr, "vhost-pci-client: %s\n", err.msg[0] ? err.msg : "cannot use --fd");
        return 1;
    }
    if (d->listen_fd >= 0)
        d->listen_src = g_unix_fd_add(d->listen_fd, G_IO_IN, on_accept, d);
    g_unix_signal_add(SIGINT, on_signal, d);
    g_unix_signal_add(SIGTERM, on_signal, d);

    char *where = d->socket_path ? g_strdup_printf("listening on %s", d->socket_path)
                : d->vhost_server_path ? g_strdup_printf("connecting to %s", d->vhost_server_path)
                : g_strdup_printf("fd %d", d->opt_fd);
    g_message("client_uuid %s, device_id %" G_GINT64_FORMAT ", vhost-user socket %s, "
              "server %s, offering features 0x%" PRIx64 ", %d queue pair(s)", d->uuid_str,
              d->device_id, where, d->server_path, d->offer, d->queue_pairs);
    g_free(where);
    srv_connect(d);
    if (d->vhost_server_path)
        fe_connect(d);

    g_main_loop_run(d->loop);

    /* Exit: the frontend connection, the server connection, the socket. */
    if (d->vu) {
        vu_glib_free(d->vu);
        d->vu = NULL;
    }
    if (d->vpc) {
        VpClient *c = d->vpc;
        d->vpc = NULL;
        vp_client_set_closed_func(c, NULL, NULL);
        vp_client_close(c);
        vp_client_unref(c);
    }
    if (d->listen_src)
        g_source_remove(d->listen_src);
    vp_close_fd(&d->listen_fd);
    if (d->own_socket_path)
        unlink(d->socket_path);
    /* Sources (idle unrefs, timers) still pending are dropped with the context; the
     * bridge goes after the last callback that could post to it. */
    while (g_main_context_iteration(NULL, FALSE))
        ;
    for (unsigned t = 0; t < BR_NTIMERS; t++)
        if (d->br_timer[t])
            g_source_remove(d->br_timer[t]);
    br_free(d->br);
    g_main_loop_unref(d->loop);
    g_message("stopped");
    g_free(d->socket_path);
    g_free(d->vhost_server_path);
    g_free(d->server_path);
    g_free(d->uuid_opt);
    g_free(d->log_level);
    g_free(d->features_opt);
    g_free(d->memory_refusal_opt);
    return d->exit_code;
}
