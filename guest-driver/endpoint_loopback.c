/*
 * endpoint_loopback.c - the loopback endpoint (endpoint.h): every frame a driver VM
 * transmits comes back, unchanged, on its own receive queue. The copy goes straight
 * from its transmit buffers into its receive buffers (one copy per frame, as
 * vhost-pci promises). When the receive queue has no room the frame stays in the
 * transmit queue (-EAGAIN), so nothing is lost and the driver VM is slowed down
 * instead. Used by the host-only tests and the benchmark.
 *
 * Threads: stateless; each frame is handled on the worker of its pair.
 *
 * Security model: frames are copied, never parsed. libc only.
 */
#include <errno.h>
#include <stdlib.h>

#include "endpoint.h"
#include "net.h"

static int lo_tx(struct gd_endpoint *ep, struct gd_net_port *port, const struct iovec *iov,
                 unsigned niov, size_t len)
{
    int r = gd_net_port_rx(port, iov, niov, len);
    if (r == -EAGAIN)
        return -EAGAIN;
    if (r < 0)
        __atomic_fetch_add(&ep->drops, 1, __ATOMIC_RELAXED);
    return 0;
}

static void lo_free(struct gd_endpoint *ep) { free(ep); }

static const struct gd_endpoint_ops lo_ops = {
    .name = "loopback",
    .pair_local = true, /* each frame goes back on the pair it came from */
    .tx = lo_tx,
    .free = lo_free,
};

struct gd_endpoint *gd_endpoint_loopback_new(struct gd_loop *loop, vp_error *err)
{
    struct gd_endpoint *ep = calloc(1, sizeof(*ep));
    if (!ep) {
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    ep->ops = &lo_ops;
    ep->loop = loop;
    return ep;
}
