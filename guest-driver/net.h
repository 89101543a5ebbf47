/*
 * net.h - vhost-pci-net: the virtio-net device for the driver VMs' queues, inside
 * the device VM (DESIGN section 6; spec 1.2; issue "Data path").
 *
 * For every NET frontend of the support list that the control plane starts
 * (datapath.h), a *port* serves two virtqueues of the driver VM:
 *  - queue 0, the driver VM's receiveq: frames from the endpoint are written into
 *    its device-writable buffers (virtio-net header first; with
 *    VIRTIO_NET_F_MRG_RXBUF a frame may span several chains, num_buffers says how
 *    many);
 *  - queue 1, the driver VM's transmitq: its device-readable buffers are drained,
 *    the virtio-net header skipped, the frame handed to the endpoint (endpoint.h).
 * The virtio-net header is 12 bytes with VIRTIO_F_VERSION_1 or MRG_RXBUF, else 10;
 * event indexes are used when VIRTIO_F_RING_EVENT_IDX was negotiated. A multi-queue
 * frontend (VIRTIO_NET_F_MQ, issue 10) is served every queue pair it lists: pair q =
 * receiveq 2q + transmitq 2q + 1; the control queue stays with its VMM (vhost-user
 * does the same) and is not served.
 *
 * Every descriptor address is a driver VM guest-physical address, translated
 * through the device's memory table (gd_device_translate) each time it is used.
 * A queue that the driver VM corrupts (descriptor outside its memory, looping chain,
 * index out of range, avail index jumping, TX chain with writable buffers or shorter
 * than the header, RX buffer smaller than the header) becomes broken: one log line,
 * gd_queue.broken, no more service; other queues, ports and devices carry on.
 *
 * Threading (issue 10): with gd_net_set_workers(N > 0) every queue pair is polled by
 * one of up to N worker threads (pair q of every port by worker q mod workers), each
 * with its own loop; the control plane keeps the loop it was given. Every hook of
 * the control plane (start, stop, memory changes) runs with every worker parked at a
 * point where it holds nothing (the pause), and device.c brackets its changes of the
 * memory table with the pause hooks (datapath.h), so memory and frontends are gone
 * for every CPU before their DEL is acknowledged (spec 1.6.2). A broken queue stops
 * its pair only. Without workers (N = 0, the default of gd_net_new) one poller of the
 * given loop polls every pair, as in a single-threaded program (tests, fuzzing).
 *
 * Scheduling: each worker polls adaptively (busy while there is work, then sleeping
 * in growing steps up to GD_NET_MAX_SLEEP_NS). Kicks stay with the server (DESIGN 3),
 * so the port asks the driver VM not to kick while it is busy, and asks for kicks
 * (event index / NO_NOTIFY) only when idle: on the transmitq after
 * GD_NET_IDLE_POLLS polls without work, on the receiveq only while a frame waits
 * for buffers. The driver VM is
 * interrupted (doorbell to its call vector) only when vring_need_event says so.
 *
 * Stopping: frontend_stop and memory_del publish what was used and leave each
 * queue's last_avail_idx in gd_queue; chains that were taken but not used (a frame
 * the endpoint held back, receive buffers set aside) are not counted as consumed, so
 * a device that resumes at that index sees them again.
 *
 * Endpoints are called on the worker of the pair concerned (gd_net_worker_index()
 * tells which) and from the control loop for their own fds; gd_net_port_rx() may be
 * called from either (see endpoint.h). libc (and pthreads) only.
 */
#ifndef GD_NET_H
#define GD_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "datapath.h"
#include "endpoint.h"

/** Largest frame (without virtio-net header) carried either way, bytes. */
#define GD_NET_MAX_FRAME (64 * 1024 + 64)
/** Pieces a frame may be split into in peer memory (descriptors x regions). */
#define GD_NET_MAX_IOV 256
/** Longest sleep of the data path poller when idle. */
#define GD_NET_MAX_SLEEP_NS (1000 * 1000ULL)
/** Chains handled per queue per poll before other queues get a turn. */
#define GD_NET_BUDGET 64
/** Polls without work after which a worker asks for transmitq kicks (roughly the
 *  loop's spin window: it is about to sleep). */
#define GD_NET_IDLE_POLLS 256
/** Most worker threads (and queue pairs served in parallel). */
#define GD_NET_MAX_WORKERS 32

struct gd_loop;
struct gd_net;
struct gd_net_port;

/** The data path hooks; pass with a gd_net as opaque to gd_cp_set_datapath(). */
extern const struct gd_datapath_ops gd_net_ops;

/**
 * A data path on @loop sending frames to @ep, which it takes over (freed by
 * gd_net_free). Returns NULL on ENOMEM (then @ep is freed too).
 */
struct gd_net *gd_net_new(struct gd_loop *loop, struct gd_endpoint *ep);

/**
 * Serve queue pairs on up to @max worker threads (clamped to GD_NET_MAX_WORKERS),
 * started as the frontends' pairs need them; 0 (the default): no threads, a poller
 * of the loop polls every pair. Call before any frontend starts. Returns 0 or
 * -EBUSY (too late).
 */
int gd_net_set_workers(struct gd_net *net, unsigned max);

/** Worker threads running now (0 in the inline mode). */
unsigned gd_net_nworkers(const struct gd_net *net);

/** The index of the worker this thread is (0 on any other thread): endpoints keep
 *  per-worker state (TAP queue) by it. */
unsigned gd_net_worker_index(void);

/** Free the data path and its endpoint. Every frontend must be stopped already
 *  (gd_cp_shutdown). NULL is a no-op. */
void gd_net_free(struct gd_net *net);

/**
 * Deliver a frame of @len bytes (@iov[0..@niov), read once) to a receive queue of
 * @port: the pair being drained when it is @port's own (loopback), else the pair the
 * calling worker polls (pair w of worker w; w mod npairs when the port has fewer),
 * under that queue's lock when other threads may write it too. Returns 0 when
 * delivered; -EAGAIN when there are
 * not enough receive buffers yet (try again later; the port asks for a kick);
 * -EMSGSIZE (larger than GD_NET_MAX_FRAME, or than any buffer the driver VM can
 * offer), -ENODEV (queue not running) or -EIO (queue broken): the frame is dropped
 * and counted.
 */
int gd_net_port_rx(struct gd_net_port *port, const struct iovec *iov, unsigned niov,
                   size_t len);

/** The client_uuid of @port's driver VM (16 bytes). */
const uint8_t *gd_net_port_uuid(const struct gd_net_port *port);
/** The device_id of @port's frontend. */
uint64_t gd_net_port_device_id(const struct gd_net_port *port);
/** "slot S net ID" for logs. */
const char *gd_net_port_name(const struct gd_net_port *port);

/** Number of started ports and the @i-th of them (for hub endpoints). */
unsigned gd_net_nports(const struct gd_net *net);
struct gd_net_port *gd_net_port_at(const struct gd_net *net, unsigned i);
/** The started port of (@uuid, @device_id), or NULL. */
struct gd_net_port *gd_net_find_port(const struct gd_net *net, const uint8_t uuid[16],
                                     uint64_t device_id);

/** Run one poll now (tests, inline mode only): drain transmit queues, poll the
 *  endpoint, publish used entries. Returns > 0 when there was work. */
int gd_net_poll(struct gd_net *net);

#endif
