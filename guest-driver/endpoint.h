/*
 * endpoint.h - where vhost-pci-net's packets go on the device VM side (DESIGN
 * section 6; issue "Data path"). The data path (net.c) serves the driver VMs'
 * virtqueues; an endpoint is the other end of the wire:
 *
 *  - tap:NAME   (endpoint_tap.c) a TAP interface of the device VM, so that the
 *               kernel's network stack, ping, iperf3 and any socket program work
 *               across. A hub: every port's frames go to the TAP, every frame read
 *               from the TAP goes to every port. NAME may contain %d.
 *  - loopback   (endpoint_loopback.c) every frame a driver VM transmits comes back
 *               on its own receive queue, unchanged: one copy, from its TX buffers
 *               into its RX buffers. Used by tests and the benchmark.
 *  - switch     (endpoint_switch.c) a learning Ethernet switch between every port:
 *               each frame is copied once, from the sending driver VM's transmit
 *               buffers straight into the receive buffers of its destination(s)
 *               (unknown and group destinations flooded). VM-to-VM traffic.
 *  - unix:PATH  (endpoint_unix.c) a SOCK_SEQPACKET socket at PATH that guestd
 *               listens on; one connection at a time (a new one replaces the old).
 *               Each packet is a 24-byte port header {u8 client_uuid[16]; le64
 *               device_id} followed by the frame, in both directions. Lets a test
 *               process inject and check frames on the device VM side.
 *
 * A *port* is one started NET frontend (net.h); it is named by its driver VM's
 * client_uuid and its device_id, which stay the same when a device is cloned.
 *
 * Frames are Ethernet frames without any virtio-net header, at most
 * GD_NET_MAX_FRAME bytes.
 *
 * Back-pressure: tx() may answer -EAGAIN (the endpoint cannot take the frame now;
 * the data path keeps it and offers the same frame again later). An endpoint that
 * gets -EAGAIN from gd_net_port_rx() (no receive buffers) keeps its frame and retries
 * from poll(); fd-driven endpoints stop watching their fd meanwhile.
 *
 * Threads (net.h): tx() and poll() run on the data path worker of the pair concerned
 * (gd_net_worker_index()), several at once when there are several workers;
 * port_added/port_removed/status/free on the control thread while the workers are
 * parked; fd callbacks on the loop that watches the fd. Counters like drops are
 * updated atomically. libc (and pthreads) only.
 */
#ifndef GD_ENDPOINT_H
#define GD_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vp_common.h"

struct gd_json;
struct gd_loop;
struct gd_net;
struct gd_net_port;
struct gd_endpoint;

/** Bytes of the port header of the unix endpoint (client_uuid + le64 device_id). */
#define GD_EP_UNIX_HDR 24

struct gd_endpoint_ops {
    const char *name;             /* "tap", "loopback", "switch", "unix" */
    /** Frames go back to the port they came from, on the same pair (loopback): no
     *  receive queue is ever written by another thread. */
    bool pair_local;
    /** gd_net_port_rx() is called from the control loop (the endpoint's own fds). */
    bool rx_from_loop;
    /** Data path worker @index started with its @loop (inline mode: index 0 with the
     *  control loop, when the endpoint is given to gd_net_new), before it runs:
     *  per-worker fds are watched on that loop. May be NULL. */
    void (*worker_started)(struct gd_endpoint *ep, unsigned index, struct gd_loop *loop);
    /** Data path worker @index stopped (no pair needs it any more): unwatch and let go
     *  of what was kept for it. Its loop is freed after. May be NULL. */
    void (*worker_stopped)(struct gd_endpoint *ep, unsigned index);
    /** A port started (all optional). */
    void (*port_added)(struct gd_endpoint *ep, struct gd_net_port *port);
    /** A port stops: forget every reference to it before returning. */
    void (*port_removed)(struct gd_endpoint *ep, struct gd_net_port *port);
    /**
     * A frame the driver VM of @port transmitted: @len bytes in @iov[0..@niov)
     * (pointers into peer memory, readable during the call only). Returns 0 when the
     * frame was taken or dropped (the endpoint counts drops), -EAGAIN to be offered
     * the same frame again later.
     */
    int (*tx)(struct gd_endpoint *ep, struct gd_net_port *port, const struct iovec *iov,
              unsigned niov, size_t len);
    /** Called on every data path poll: retry frames held back for want of receive
     *  buffers, read what is ready. Returns > 0 when it did work. */
    int (*poll)(struct gd_endpoint *ep);
    /** Add the endpoint's own counters to the status object being written (may be
     *  NULL). */
    void (*status)(struct gd_endpoint *ep, struct gd_json *j);
    /** Close everything (ports are gone already). */
    void (*free)(struct gd_endpoint *ep);
};

/** Common head of every endpoint (embedded first). */
struct gd_endpoint {
    const struct gd_endpoint_ops *ops;
    struct gd_loop *loop;
    struct gd_net *net;           /* set by gd_net_new() */
    uint64_t drops;               /* frames dropped by the endpoint */
};

/**
 * Create an endpoint from @spec: "tap:NAME", "loopback", "switch" or "unix:PATH".
 * Returns NULL with a reason in @err (unknown kind, TAP or socket errors).
 */
struct gd_endpoint *gd_endpoint_new(struct gd_loop *loop, const char *spec, vp_error *err);

/** The TAP endpoint: opens /dev/net/tun, creates TAP @name (IFF_TAP|IFF_NO_PI),
 *  non-blocking, watched on @loop. NULL with a reason in @err. */
struct gd_endpoint *gd_endpoint_tap_new(struct gd_loop *loop, const char *name, vp_error *err);

/** The loopback endpoint (never fails but for ENOMEM: NULL with a reason). */
struct gd_endpoint *gd_endpoint_loopback_new(struct gd_loop *loop, vp_error *err);

/** The switch endpoint (never fails but for ENOMEM: NULL with a reason). */
struct gd_endpoint *gd_endpoint_switch_new(struct gd_loop *loop, vp_error *err);

/** The unix endpoint listening on @path (a stale socket file is replaced).
 *  NULL with a reason in @err. */
struct gd_endpoint *gd_endpoint_unix_new(struct gd_loop *loop, const char *path, vp_error *err);

/** Free @ep (NULL is a no-op). */
static inline void gd_endpoint_free(struct gd_endpoint *ep)
{
    if (ep)
        ep->ops->free(ep);
}

#endif
