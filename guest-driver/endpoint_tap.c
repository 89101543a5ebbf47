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

struct tap_ep {
    struct gd_endpoint base;
    char name[IFNAMSIZ];
    int fd, watch;
    bool write_failed;            /* a write error was logged */
    /* The frame being delivered: ports that still owe it a receive buffer. */
    struct gd_net_port **owed;
    unsigned nowed, capowed;
    uint64_t deadline_ns;
    size_t len;
    uint8_t buf[GD_NET_MAX_FRAME];
};

static struct tap_ep *tap_of(struct gd_endpoint *ep) { return (struct tap_ep *)ep; }

/* Offer the held frame to every owed port; returns true when none is left. */
static bool tap_deliver_owed(struct tap_ep *t)
{
    struct iovec iov = { .iov_base = t->buf, .iov_len = t->len };
    unsigned keep = 0;
    for (unsigned i = 0; i < t->nowed; i++) {
        int r = gd_net_port_rx(t->owed[i], &iov, 1, t->len);
        if (r == -EAGAIN)
            t->owed[keep++] = t->owed[i];
        else if (r < 0)
            t->base.drops++;
    }
    t->nowed = keep;
    return keep == 0;
}

/* Read frames and hand them to every port, until the TAP is empty, a port must wait
 * for buffers, or the budget is spent. Returns frames read. */
static int tap_read(struct tap_ep *t)
{
    int n = 0;
    while (!t->nowed && n < TAP_BUDGET) {
        ssize_t r = read(t->fd, t->buf, sizeof(t->buf));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                gd_warn("tap %s: read: %s", t->name, strerror(errno));
            break;
        }
        n++;
        if (r == 0)
            continue;
        unsigned np = gd_net_nports(t->base.net);
        if (!np) {
            t->base.drops++;
            continue;
        }
        if (np > t->capowed) {
            struct gd_net_port **o = realloc(t->owed, np * sizeof(*o));
            if (!o) {
                t->base.drops++;
                continue;
            }
            t->owed = o;
            t->capowed = np;
        }
        for (unsigned i = 0; i < np; i++)
            t->owed[i] = gd_net_port_at(t->base.net, i);
        t->nowed = np;
        t->len = (size_t)r;
        if (!tap_deliver_owed(t)) {
            t->deadline_ns = gd_now_ns() + TAP_HOLD_NS;
            gd_loop_mod_fd(t->base.loop, t->watch, 0); /* wait for receive buffers */
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

static int tap_poll(struct gd_endpoint *ep)
{
    struct tap_ep *t = tap_of(ep);
    if (!t->nowed)
        return 0;
    unsigned before = t->nowed;
    if (!tap_deliver_owed(t) && gd_now_ns() < t->deadline_ns)
        return t->nowed < before;
    ep->drops += t->nowed;
    t->nowed = 0;
    gd_loop_mod_fd(ep->loop, t->watch, POLLIN);
    return 1 + tap_read(t);
}

static void tap_port_removed(struct gd_endpoint *ep, struct gd_net_port *port)
{
    struct tap_ep *t = tap_of(ep);
    unsigned keep = 0;
    for (unsigned i = 0; i < t->nowed; i++) {
        if (t->owed[i] != port)
            t->owed[keep++] = t->owed[i];
    }
    t->nowed = keep;
}

static int tap_tx(struct gd_endpoint *ep, struct gd_net_port *port, const struct iovec *iov,
                  unsigned niov, size_t len)
{
    struct tap_ep *t = tap_of(ep);
    (void)port;
    (void)len;
    for (;;) {
        ssize_t r = writev(t->fd, iov, (int)niov);
        if (r >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        /* EIO while the interface is down, EINVAL for a frame the kernel refuses. */
        if (!t->write_failed) {
            t->write_failed = true;
            gd_warn("tap %s: write: %s (frames are dropped while this lasts)", t->name,
                    strerror(errno));
        }
        ep->drops++;
        return 0;
    }
}

static void tap_free(struct gd_endpoint *ep)
{
    struct tap_ep *t = tap_of(ep);
    gd_loop_del_fd(ep->loop, t->watch);
    vp_close_fd(&t->fd);
    free(t->owed);
    free(t);
}

static const struct gd_endpoint_ops tap_ops = {
    .name = "tap",
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
    t->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (t->fd < 0) {
        vp_fail(err, -errno, "TAP %s: /dev/net/tun: %s", name, strerror(errno));
        free(t);
        return NULL;
    }
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    if (ioctl(t->fd, TUNSETIFF, &ifr) < 0) {
        vp_fail(err, -errno, "TAP %s: TUNSETIFF: %s", name, strerror(errno));
        vp_close_fd(&t->fd);
        free(t);
        return NULL;
    }
    snprintf(t->name, sizeof(t->name), "%s", ifr.ifr_name);
    t->watch = gd_loop_add_fd(loop, t->fd, POLLIN, tap_on_fd, t);
    if (t->watch < 0) {
        vp_fail(err, -ENOMEM, "out of memory");
        vp_close_fd(&t->fd);
        free(t);
        return NULL;
    }
    tap_set_up(t->name);
    gd_info("tap %s: ready", t->name);
    return &t->base;
}
