/*
 * daemon_conn.c - the vhost-pci-client daemon's connections (daemon.h): the
 * vhost-user socket (listening with --socket-path, connecting with
 * --vhost-server-path, or inherited with --fd) and the vhost-user core's callbacks,
 * which become bridge events; the vhost-pci server connection; reconnection with
 * bounded exponential backoff.
 *
 * Security model: the frontend's requests are framed and validated by the vhost-user
 * core (client/vhost_user.c); this file parses nothing itself. One frontend at a
 * time: a second connection is closed at once. Every fd has one owner: an accepted
 * or connected socket goes to the vhost-user core (which closes it on error), the
 * listening socket to the daemon.
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib-unix.h>

/* ------------------------------ vhost-user callbacks ------------------------------ */

static int cb_get_features(struct vu_dev *v, uint64_t *features, void *opaque)
{
    (void)v;
    (void)features;
    daemon_post_simple(opaque, BR_EV_GET_FEATURES);
    return VU_DEFERRED; /* the core knows when the answer came from inside */
}

static void cb_features_set(struct vu_dev *v, uint64_t features, void *opaque)
{
    (void)v;
    daemon_post(opaque, &(struct br_event){ .type = BR_EV_FEATURES_SET, .features = features });
}

static void cb_vring_started(struct vu_dev *v, const struct vu_vring_info *info, void *opaque)
{
    (void)v;
    daemon_post(opaque, &(struct br_event){ .type = BR_EV_RING_STARTED, .ring = *info });
}

static void cb_vring_changed(struct vu_dev *v, const struct vu_vring_info *info, void *opaque)
{
    (void)v;
    daemon_post(opaque, &(struct br_event){ .type = BR_EV_RING_CHANGED, .ring = *info });
}

static int cb_mem_added(struct vu_dev *v, const struct vp_region *r, void *opaque)
{
    (void)v;
    daemon_post(opaque, &(struct br_event){ .type = BR_EV_MEM_ADD, .region = *r });
    return VU_DEFERRED;
}

static int cb_mem_removed(struct vu_dev *v, const struct vp_region *r, void *opaque)
{
    (void)v;
    daemon_post(opaque, &(struct br_event){ .type = BR_EV_MEM_DEL, .region = *r });
    return VU_DEFERRED;
}

static int cb_get_vring_base(struct vu_dev *v, uint32_t index, uint16_t *last_avail_idx,
                             void *opaque)
{
    (void)v;
    (void)last_avail_idx;
    daemon_post(opaque, &(struct br_event){ .type = BR_EV_RING_STOP, .index = index });
    return VU_DEFERRED;
}

static void cb_drained(struct vu_dev *v, void *opaque)
{
    (void)v;
    daemon_post_simple(opaque, BR_EV_DRAINED);
}

static gboolean fe_retry_cb(gpointer data)
{
    struct daemon *d = data;
    d->fe_retry.timer = 0;
    daemon_fe_connect(d);
    return G_SOURCE_REMOVE;
}

static void retry_schedule(struct daemon *d, struct retry *r, GSourceFunc fn)
{
    if (d->shutting_down || r->timer)
        return;
    r->timer = g_timeout_add(r->delay_ms, fn, d);
    r->delay_ms = MIN(r->delay_ms * 2, r->max_ms);
}

void daemon_retry_reset(struct retry *r)
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
    daemon_post(d, &(struct br_event){ .type = BR_EV_FE_GONE, .reason = reason });
    if (d->shutting_down)
        return;
    if (d->vhost_server_path) {
        daemon_retry_reset(&d->fe_retry);
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

static gboolean srv_retry_cb(gpointer data)
{
    struct daemon *d = data;
    d->srv_retry.timer = 0;
    daemon_srv_connect(d);
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
    daemon_post(d, &(struct br_event){ .type = BR_EV_SRV_DOWN,
                                       .reason = error ? error->message : NULL });
    daemon_retry_reset(&d->srv_retry);
    retry_schedule(d, &d->srv_retry, srv_retry_cb);
}

void daemon_srv_connect(struct daemon *d)
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
    daemon_retry_reset(&d->srv_retry);
    daemon_post_simple(d, BR_EV_SRV_UP);
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
    daemon_post_simple(d, BR_EV_FE_CONNECTED);
}

/** --vhost-server-path: connect to the frontend's listening socket. */
void daemon_fe_connect(struct daemon *d)
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
    daemon_retry_reset(&d->fe_retry);
    serve_connection(d, fd);
}

static gboolean resume_accept(gpointer data)
{
    struct daemon *d = data;
    if (d->listen_fd >= 0 && !d->shutting_down && !d->listen_src)
        d->listen_src = g_unix_fd_add(d->listen_fd, G_IO_IN, daemon_on_accept, d);
    return G_SOURCE_REMOVE;
}

gboolean daemon_on_accept(gint fd, GIOCondition cond, gpointer data)
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
int daemon_listen_unix(const char *path, vp_error *err)
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
int daemon_adopt_fd(struct daemon *d, int fd, vp_error *err)
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
