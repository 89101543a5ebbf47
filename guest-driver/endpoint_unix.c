/*
 * endpoint_unix.c - the unix endpoint (endpoint.h): vhost-pci-net frames to and from
 * a local process over a SOCK_SEQPACKET socket, one frame per packet, each prefixed
 * by the 24-byte port header {u8 client_uuid[16]; le64 device_id}. guestd listens
 * on PATH; the latest connection is the one served. Tests use it to check what a
 * driver VM transmitted and to inject frames into its receive queue without a TAP.
 *
 * Back-pressure: a full socket makes tx() answer -EAGAIN (the frame stays in the
 * driver VM's transmit queue); a frame for a port without receive buffers is held
 * (reading stops) and retried from poll(), for at most UX_HOLD_NS (so a driver VM
 * that never posts buffers cannot stall the others). A frame for no started port, a packet
 * shorter than the header or longer than the largest frame is dropped and counted.
 *
 * Threads: the listening socket and the connection are watched on the control loop,
 * which reads, delivers (gd_net_port_rx from the control thread: rx_from_loop) and
 * retries a held frame from a poller of its own while one is held. Workers only send
 * (tx), under the mutex that guards the connection fd against being replaced or
 * closed meanwhile; a send error leaves closing to the control loop.
 *
 * Security model: the connected process is trusted no more than a driver VM: its
 * packets are length-checked (MSG_TRUNC), the header only selects a port, frame
 * bytes are copied, never parsed. libc only.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "endpoint.h"
#include "log.h"
#include "loop.h"
#include "net.h"

#define UX_BUDGET 64
#define UX_HOLD_NS (1000 * 1000 * 1000ULL) /* a port without buffers for this long
                                               misses the frame (others go on) */

struct ux_ep {
    struct gd_endpoint base;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    pthread_mutex_t mu;           /* cfd against tx() on the workers */
    int lfd, lwatch;
    int cfd, cwatch;
    int poller;                   /* retries the held frame (0: none) */
    bool held;                    /* buf holds a frame waiting for receive buffers */
    size_t held_len;              /* bytes in buf, header included */
    uint64_t held_deadline_ns;    /* drop it then */
    uint8_t buf[GD_EP_UNIX_HDR + GD_NET_MAX_FRAME];
};

static struct ux_ep *ux_of(struct gd_endpoint *ep) { return (struct ux_ep *)ep; }

static void drop(struct ux_ep *u) { __atomic_fetch_add(&u->base.drops, 1, __ATOMIC_RELAXED); }

static int ux_poll_held(void *opaque);

static void ux_close_conn(struct ux_ep *u, const char *why)
{
    if (u->cfd < 0)
        return;
    gd_info("unix endpoint %s: connection closed (%s)", u->path, why);
    gd_loop_del_fd(u->base.loop, u->cwatch);
    u->cwatch = 0;
    pthread_mutex_lock(&u->mu);
    vp_close_fd(&u->cfd);
    pthread_mutex_unlock(&u->mu);
    if (u->held)
        drop(u);
    u->held = false;
}

/* Try to deliver the held frame. Returns 1 delivered or dropped, 0 still held. */
static int ux_deliver(struct ux_ep *u)
{
    struct gd_net_port *p = gd_net_find_port(u->base.net, u->buf, vp_get_le64(u->buf + 16));
    if (!p) {
        drop(u);
        u->held = false;
        return 1;
    }
    struct iovec iov = { .iov_base = u->buf + GD_EP_UNIX_HDR,
                         .iov_len = u->held_len - GD_EP_UNIX_HDR };
    int r = gd_net_port_rx(p, &iov, 1, iov.iov_len);
    if (r == -EAGAIN)
        return 0;
    if (r < 0)
        drop(u);
    u->held = false;
    return 1;
}

/* Read and deliver frames until the socket is empty, a frame must wait, or the
 * budget is spent. Returns frames handled. */
static int ux_read(struct ux_ep *u)
{
    int n = 0;
    while (u->cfd >= 0 && !u->held && n < UX_BUDGET) {
        ssize_t r = recv(u->cfd, u->buf, sizeof(u->buf), MSG_DONTWAIT | MSG_TRUNC);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            ux_close_conn(u, strerror(errno));
            break;
        }
        if (r == 0) {
            ux_close_conn(u, "peer closed");
            break;
        }
        n++;
        if ((size_t)r < GD_EP_UNIX_HDR || (size_t)r > sizeof(u->buf)) {
            drop(u);
            gd_debug("unix endpoint %s: dropped a %zd-byte packet", u->path, r);
            continue;
        }
        u->held = true;
        u->held_len = (size_t)r;
        u->held_deadline_ns = gd_now_ns() + UX_HOLD_NS;
        ux_deliver(u);
    }
    if (u->held && u->cwatch) {
        gd_loop_mod_fd(u->base.loop, u->cwatch, 0); /* wait for receive buffers */
        if (!u->poller) {
            int id = gd_loop_add_poller(u->base.loop, ux_poll_held, u, GD_NET_MAX_SLEEP_NS);
            u->poller = id > 0 ? id : 0;
        }
    }
    return n;
}

static void ux_on_conn(void *opaque, int fd, short revents)
{
    struct ux_ep *u = opaque;
    (void)fd;
    if (revents & POLLIN)
        ux_read(u);
    else if (revents & (POLLHUP | POLLERR | POLLNVAL))
        ux_close_conn(u, "hang-up");
}

static void ux_on_listen(void *opaque, int fd, short revents)
{
    struct ux_ep *u = opaque;
    (void)revents;
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
        if (errno != EAGAIN && errno != EINTR)
            gd_warn("unix endpoint %s: accept: %s", u->path, strerror(errno));
        return;
    }
    ux_close_conn(u, "replaced by a new connection");
    int id = gd_loop_add_fd(u->base.loop, c, POLLIN, ux_on_conn, u);
    if (id < 0) {
        gd_warn("unix endpoint %s: out of memory", u->path);
        close(c);
        return;
    }
    pthread_mutex_lock(&u->mu);
    u->cfd = c;
    pthread_mutex_unlock(&u->mu);
    u->cwatch = id;
    gd_info("unix endpoint %s: connected", u->path);
}

static int ux_tx(struct gd_endpoint *ep, struct gd_net_port *port, const struct iovec *iov,
                 unsigned niov, size_t len)
{
    struct ux_ep *u = ux_of(ep);
    (void)len;
    uint8_t hdr[GD_EP_UNIX_HDR];
    memcpy(hdr, gd_net_port_uuid(port), 16);
    vp_put_le64(hdr + 16, gd_net_port_device_id(port));
    struct iovec v[GD_NET_MAX_IOV + 1];
    v[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
    memcpy(v + 1, iov, niov * sizeof(*iov));
    struct msghdr mh = { .msg_iov = v, .msg_iovlen = niov + 1 };
    int ret = 0;
    pthread_mutex_lock(&u->mu);
    if (u->cfd < 0) {
        drop(u);
        goto out;
    }
    for (;;) {
        ssize_t r = sendmsg(u->cfd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
            ret = -EAGAIN;
        else
            drop(u); /* too large, or the connection failed (the loop closes it) */
        break;
    }
out:
    pthread_mutex_unlock(&u->mu);
    return ret;
}

/* The control loop's poller while a frame is held: retry it, drop it at its deadline,
 * then go back to reading. */
static int ux_poll_held(void *opaque)
{
    struct ux_ep *u = opaque;
    if (u->held && !ux_deliver(u)) {
        if (gd_now_ns() < u->held_deadline_ns)
            return 0;
        gd_debug("unix endpoint %s: no receive buffers for a held frame: dropped", u->path);
        drop(u);
        u->held = false;
    }
    gd_loop_del_poller(u->base.loop, u->poller);
    u->poller = 0;
    if (u->cwatch)
        gd_loop_mod_fd(u->base.loop, u->cwatch, POLLIN);
    return 1 + ux_read(u);
}

static void ux_free(struct gd_endpoint *ep)
{
    struct ux_ep *u = ux_of(ep);
    ux_close_conn(u, "shutting down");
    gd_loop_del_poller(ep->loop, u->poller);
    gd_loop_del_fd(ep->loop, u->lwatch);
    if (u->lfd >= 0) {
        vp_close_fd(&u->lfd);
        unlink(u->path);
    }
    pthread_mutex_destroy(&u->mu);
    free(u);
}

static const struct gd_endpoint_ops ux_ops = {
    .name = "unix",
    .rx_from_loop = true,
    .tx = ux_tx,
    .free = ux_free,
};

struct gd_endpoint *gd_endpoint_unix_new(struct gd_loop *loop, const char *path, vp_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (!path[0] || strlen(path) >= sizeof(sa.sun_path)) {
        vp_fail(err, -EINVAL, "unix endpoint path is empty or too long (%zu bytes, at most %zu): "
                "%.64s", strlen(path), sizeof(sa.sun_path) - 1, path);
        return NULL;
    }
    struct ux_ep *u = calloc(1, sizeof(*u));
    if (!u) {
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    u->base.ops = &ux_ops;
    u->base.loop = loop;
    u->cfd = -1;
    pthread_mutex_init(&u->mu, NULL);
    snprintf(u->path, sizeof(u->path), "%s", path);
    memcpy(sa.sun_path, path, strlen(path));
    u->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->lfd < 0) {
        vp_fail(err, -errno, "unix endpoint: socket: %s", strerror(errno));
        pthread_mutex_destroy(&u->mu);
        free(u);
        return NULL;
    }
    unlink(path); /* a stale socket of a previous run */
    if (bind(u->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(u->lfd, 4) < 0) {
        vp_fail(err, -errno, "unix endpoint %s: %s", path, strerror(errno));
        vp_close_fd(&u->lfd);
        pthread_mutex_destroy(&u->mu);
        free(u);
        return NULL;
    }
    u->lwatch = gd_loop_add_fd(loop, u->lfd, POLLIN, ux_on_listen, u);
    if (u->lwatch < 0) {
        vp_fail(err, -ENOMEM, "out of memory");
        vp_close_fd(&u->lfd);
        unlink(path);
        pthread_mutex_destroy(&u->mu);
        free(u);
        return NULL;
    }
    return &u->base;
}
