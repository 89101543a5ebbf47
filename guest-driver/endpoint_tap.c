/*
 * endpoint_tap.c - the TAP endpoint (endpoint.h): vhost-pci-net frames to and from a
 * TAP interface of the device VM (IFF_TAP | IFF_NO_PI: plain Ethernet frames), so
 * that the kernel's network stack and every ordinary tool work across the link.
 *
 * A hub: frames transmitted by any port are written to the TAP; a frame read from
 * the TAP goes to every started port. A port without receive buffers holds the frame
 * for at most TAP_HOLD_NS (reading stops meanwhile), then misses it (it is counted
 * as dropped, as a full NIC queue would drop it).
 *
 * Multi-queue (issue 10): the interface is IFF_MULTI_QUEUE with one queue (fd) per
 * data path worker, opened and watched on the worker's loop when it starts; a worker
 * writes what its pairs transmit into its queue and delivers what it reads from it
 * to each port's pair it polls (net.h), so the device VM's kernel and the driver
 * VMs' queue pairs work in parallel, queue by queue.
 *
 * Security model: frames from either side are copied, never parsed. The TAP fd is
 * this endpoint's; the kernel enforces frame sizes. libc only.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "endpoint.h"
#include "log.h"
#include "loop.h"
#include "net.h"

#define TAP_BUDGET 64
#define TAP_HOLD_NS (100 * 1000 * 1000ULL)

struct tap_ep;

/* One queue of the TAP (IFF_MULTI_QUEUE), served by data path worker of its index. */
struct tap_q {
    struct tap_ep *t;
    unsigned index;
    int fd, watch;
    struct gd_loop *loop;         /* the worker's loop, which watches fd */
    /* The frame being delivered: ports that still owe it a receive buffer. */
    struct gd_net_port **owed;
    unsigned nowed, capowed;
    uint64_t deadline_ns;
    size_t len;
    uint8_t buf[GD_NET_MAX_FRAME];
};

struct tap_ep {
    struct gd_endpoint base;
    char name[IFNAMSIZ];
    bool write_failed;            /* a write error was logged */
    struct tap_q *q[GD_NET_MAX_WORKERS];
};

static struct tap_ep *tap_of(struct gd_endpoint *ep) { return (struct tap_ep *)ep; }

static void tap_drop(struct tap_ep *t, uint64_t n)
{
    __atomic_fetch_add(&t->base.drops, n, __ATOMIC_RELAXED);
}

/* Offer the held frame to every owed port; returns true when none is left. */
static bool tap_deliver_owed(struct tap_q *q)
{
    struct iovec iov = { .iov_base = q->buf, .iov_len = q->len };
    unsigned keep = 0;
    for (unsigned i = 0; i < q->nowed; i++) {
        int r = gd_net_port_rx(q->owed[i], &iov, 1, q->len);
        if (r == -EAGAIN)
            q->owed[keep++] = q->owed[i];
        else if (r < 0)
            tap_drop(q->t, 1);
    }
    q->nowed = keep;
    return keep == 0;
}

/* Read frames and hand them to every port, until the queue is empty, a port must wait
 * for buffers, or the budget is spent. Returns frames read. */
static int tap_read(struct tap_q *q)
{
    struct tap_ep *t = q->t;
    int n = 0;
    while (!q->nowed && n < TAP_BUDGET) {
        ssize_t r = read(q->fd, q->buf, sizeof(q->buf));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                gd_warn("tap %s: queue %u: read: %s", t->name, q->index, strerror(errno));
            break;
        }
        n++;
        if (r == 0)
            continue;
        unsigned np = gd_net_nports(t->base.net);
        if (!np) {
            tap_drop(t, 1);
            continue;
        }
        if (np > q->capowed) {
            struct gd_net_port **o = realloc(q->owed, np * sizeof(*o));
            if (!o) {
                tap_drop(t, 1);
                continue;
            }
            q->owed = o;
            q->capowed = np;
        }
        for (unsigned i = 0; i < np; i++)
            q->owed[i] = gd_net_port_at(t->base.net, i);
        q->nowed = np;
        q->len = (size_t)r;
        if (!tap_deliver_owed(q)) {
            q->deadline_ns = gd_now_ns() + TAP_HOLD_NS;
            gd_loop_mod_fd(q->loop, q->watch, 0); /* wait for receive buffers */
        }
    }
    return n;
}

static void tap_on_fd(void *opaque, int fd, short revents)
{
    (void)fd;
    (void)revents;
    tap_read(opaque);
}

/* The queue of the calling worker (opened when the worker started). */
static struct tap_q *my_queue(struct tap_ep *t)
{
    unsigned i = gd_net_worker_index();
    return i < GD_NET_MAX_WORKERS && t->q[i] ? t->q[i] : t->q[0];
}

static int tap_poll(struct gd_endpoint *ep)
{
    struct tap_q *q = my_queue(tap_of(ep));
    if (!q->nowed || !q->watch)
        return 0;
    unsigned before = q->nowed;
    if (!tap_deliver_owed(q) && gd_now_ns() < q->deadline_ns)
        return q->nowed < before;
    tap_drop(q->t, q->nowed);
    q->nowed = 0;
    gd_loop_mod_fd(q->loop, q->watch, POLLIN);
    return 1 + tap_read(q);
}

static void tap_port_removed(struct gd_endpoint *ep, struct gd_net_port *port)
{
    struct tap_ep *t = tap_of(ep);
    for (unsigned k = 0; k < GD_NET_MAX_WORKERS; k++) {
        struct tap_q *q = t->q[k];
        unsigned keep = 0;
        for (unsigned i = 0; q && i < q->nowed; i++) {
            if (q->owed[i] != port)
                q->owed[keep++] = q->owed[i];
        }
        if (q)
            q->nowed = keep;
    }
}

static int tap_tx(struct gd_endpoint *ep, struct gd_net_port *port, const struct iovec *iov,
                  unsigned niov, size_t len)
{
    struct tap_ep *t = tap_of(ep);
    struct tap_q *q = my_queue(t);
    (void)port;
    (void)len;
    for (;;) {
        ssize_t r = writev(q->fd, iov, (int)niov);
        if (r >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        /* EIO while the interface is down, EINVAL for a frame the kernel refuses. */
        if (!__atomic_exchange_n(&t->write_failed, true, __ATOMIC_RELAXED))
            gd_warn("tap %s: write: %s (frames are dropped while this lasts)", t->name,
                    strerror(errno));
        tap_drop(t, 1);
        return 0;
    }
}

/* Open queue @index of the TAP (one more fd of the multi-queue interface). */
static int tap_open_queue(struct tap_ep *t, unsigned index, vp_error *err)
{
    struct tap_q *q = calloc(1, sizeof(*q));
    if (!q)
        return vp_fail(err, -ENOMEM, "out of memory");
    q->t = t;
    q->index = index;
    q->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (q->fd < 0) {
        int e = errno;
        free(q);
        return vp_fail(err, -e, "TAP %s: /dev/net/tun: %s", t->name, strerror(e));
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE;
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", t->name);
    if (ioctl(q->fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        vp_close_fd(&q->fd);
        free(q);
        return vp_fail(err, -e, "TAP %s: queue %u: TUNSETIFF: %s", t->name, index, strerror(e));
    }
    if (index == 0)
        snprintf(t->name, sizeof(t->name), "%s", ifr.ifr_name);
    t->q[index] = q;
    return 0;
}

static void tap_worker_started(struct gd_endpoint *ep, unsigned index, struct gd_loop *loop)
{
    struct tap_ep *t = tap_of(ep);
    vp_error err = { { 0 } };
    if (index >= GD_NET_MAX_WORKERS)
        return;
    if (!t->q[index] && tap_open_queue(t, index, &err) < 0) {
        /* The worker's pairs still transmit, through queue 0. */
        gd_warn("%s: worker %u sends through queue 0", err.msg, index);
        return;
    }
    struct tap_q *q = t->q[index];
    q->loop = loop;
    if (q->watch)
        return;
    int id = gd_loop_add_fd(loop, q->fd, POLLIN, tap_on_fd, q);
    if (id < 0) {
        gd_warn("tap %s: queue %u: out of memory: not read", t->name, index);
        return;
    }
    q->watch = id;
    gd_info("tap %s: queue %u served by worker %u", t->name, index, index);
}

static void tap_worker_stopped(struct gd_endpoint *ep, unsigned index)
{
    struct tap_ep *t = tap_of(ep);
    struct tap_q *q = index < GD_NET_MAX_WORKERS ? t->q[index] : NULL;
    if (!q)
        return;
    if (q->watch)
        gd_loop_del_fd(q->loop, q->watch);
    q->watch = 0;
    q->loop = NULL;
    tap_drop(t, q->nowed);
    q->nowed = 0;
    if (index == 0)
        return; /* queue 0 lives as long as the interface (created with it) */
    vp_close_fd(&q->fd);
    free(q->owed);
    free(q);
    t->q[index] = NULL;
}

static void tap_free(struct gd_endpoint *ep)
{
    struct tap_ep *t = tap_of(ep);
    for (unsigned k = 0; k < GD_NET_MAX_WORKERS; k++) {
        struct tap_q *q = t->q[k];
        if (!q)
            continue;
        if (q->watch)
            gd_loop_del_fd(q->loop, q->watch);
        vp_close_fd(&q->fd);
        free(q->owed);
        free(q);
    }
    free(t);
}

static const struct gd_endpoint_ops tap_ops = {
    .name = "tap",
    .worker_started = tap_worker_started,
    .worker_stopped = tap_worker_stopped,
    .port_removed = tap_port_removed,
    .tx = tap_tx,
    .poll = tap_poll,
    .free = tap_free,
};

/* Bring the interface up (best effort: the device VM's scripts may do it too). */
static void tap_set_up(const char *name)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
            gd_debug("tap %s: cannot bring it up: %s", name, strerror(errno));
    }
    close(s);
}

struct gd_endpoint *gd_endpoint_tap_new(struct gd_loop *loop, const char *name, vp_error *err)
{
    struct ifreq ifr;
    if (!name[0] || strlen(name) >= sizeof(ifr.ifr_name)) {
        vp_fail(err, -EINVAL, "TAP name '%s' is empty or longer than %zu bytes", name,
                sizeof(ifr.ifr_name) - 1);
        return NULL;
    }
    struct tap_ep *t = calloc(1, sizeof(*t));
    if (!t) {
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    t->base.ops = &tap_ops;
    t->base.loop = loop;
    snprintf(t->name, sizeof(t->name), "%s", name);
    if (tap_open_queue(t, 0, err) < 0) {
        free(t);
        return NULL;
    }
    tap_set_up(t->name);
    gd_info("tap %s: ready", t->name);
    return &t->base;
}
