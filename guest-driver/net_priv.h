/*
 * net_priv.h - the parts of vhost-pci-net (net.h) that its three files share:
 * net.c (ports: start, stop, memory changes, status), net_path.c (the per-frame data
 * path of one queue pair) and net_worker.c (worker threads, pausing, which worker
 * polls which pair). Not for endpoints or the control plane.
 *
 * Threads (net.h "Threading"): a queue pair is polled by one worker; the control
 * thread changes ports, pairs and the memory table only while every worker is
 * parked (net_pause/net_resume). A pair's receive queue may also be written by other
 * threads (another worker's switch or TAP delivery, the control loop's unix
 * endpoint): such a pair has shared_rx set and everyone takes its rx_lock around it.
 * libc (and pthreads) only.
 */
#ifndef GD_NET_PRIV_H
#define GD_NET_PRIV_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "datapath.h"
#include "net.h"
#include "vp_vring.h"

/* virtio-net header (virtio 1.0 5.1.6): flags, gso_type, hdr_len, gso_size,
 * csum_start, csum_offset (10 bytes), num_buffers (2 more, with VERSION_1 or
 * MRG_RXBUF). Little-endian. */
#define NET_HDR_MAX 12
#define NET_HDR_OFF_NUM_BUFFERS 10
#define NET_GSO_NONE 0

/* Transmit chains taken from the ring at once (their buffers are prefetched while
 * the earlier ones are handled). */
#define TX_BATCH 32
/* Used receive entries are published once this many are pending, at the end of a
 * frame, not only at the end of a batch. */
#define NET_RX_PUBLISH_EVERY 8
/* Receive chains taken at once when none is pending: the first lines of their buffers
 * are prefetched for writing while the earlier ones are filled (the driver VM's core
 * touched them last, so the first store into each is otherwise a miss). */
#define RX_AHEAD 8

/* Bytes of a cache line (x86-64, arm64): what per-worker data is aligned to. */
#define NET_CACHE_LINE 64

struct net_worker;

/* A chain taken from the ring and not used yet. */
struct chain {
    uint16_t head;
    unsigned seg0, nsegs;         /* its segments: segs[seg0 .. seg0 + nsegs) */
    uint64_t cap;                 /* receiveq: writable bytes */
};

/* The region of the memory table a queue's last translation hit: tried first. */
struct xlate_hint {
    uint64_t start, size;         /* guest-physical; size 0: none */
    uint8_t *host;                /* where start is mapped */
};

struct net_vq {
    struct net_pair *pair;
    struct xlate_hint hint;       /* forgotten by memory_del (net_memory_del) */
    struct gd_queue *q;           /* the control plane's record (addresses, stats) */
    const char *what;             /* "receiveq" / "transmitq" */
    struct vp_vring_dev vr;
    bool active;                  /* rings mapped, vr initialised */
    bool parked;                  /* stopped because its rings left the memory table */
    bool notify_on;               /* kicks currently asked for */
    bool dirty;                   /* used entries pushed, not yet published */
    bool signal_failed;           /* a doorbell failed (logged once) */
    struct vp_vring_seg *segs;    /* num entries: segments of the taken chains */
    /* Chains taken, in ring order: stash[0 .. nstash), their segments segs[0 ..
     * pool_used). Those before next are used, stash[next .. nstash) are pending: the
     * transmitq hands them to the endpoint, the receiveq fills them (both in order). */
    struct chain *stash;          /* num entries */
    unsigned nstash, pool_used, next;
    /* Frames and bytes counted since the last vq_flush, which adds them to q's
     * packets and bytes: one store to the shared gd_queue per batch, not two per
     * frame (its cache line is shared with the neighbouring queue's, which another
     * worker may be writing). */
    uint64_t pend_packets, pend_bytes;
};

/* Queue pair @index of a port: virtqueues 2 * index (receiveq) and 2 * index + 1
 * (transmitq) of the frontend (virtio 1.0 5.1.2). Cache-line aligned (the array is
 * allocated so, net.c): pairs polled by different workers share no line. */
struct net_pair {
    _Alignas(NET_CACHE_LINE) struct gd_net_port *port;
    unsigned index;
    struct net_vq rx, tx;
    struct net_worker *w;         /* who polls it */
    bool shared_rx;               /* other threads may write rx: rx_lock around it */
    pthread_mutex_t rx_lock;
    uint64_t drops;               /* frames dropped on this pair (written under the
                                     pair's own discipline, read by the status) */
};

struct gd_net_port {
    struct gd_net *net;
    struct gd_device *dev;
    struct gd_frontend *fe;
    uint8_t uuid[16];
    uint64_t device_id;
    unsigned hdr_len;             /* 10 or 12 */
    bool mrg;                     /* VIRTIO_NET_F_MRG_RXBUF */
    bool event_idx;               /* VIRTIO_F_RING_EVENT_IDX */
    unsigned npairs;
    struct net_pair *pairs;       /* npairs */
    char name[48];
};

/* A poller of pairs: a thread with its own loop, or (inline mode) the control
 * loop's poller. */
struct net_worker {
    struct gd_net *net;
    unsigned index;
    struct gd_loop *loop;         /* its own (thread) or the control loop (inline) */
    int poller;
    struct net_pair **pairs;      /* the pairs it polls */
    unsigned npairs, cap;
    bool idle;                    /* idle long enough: transmitq kicks on */
    unsigned idle_polls;          /* polls without work since the last work */
    bool retry;                   /* buffers arrived while kicks were being enabled */
    /* thread workers only */
    bool thread;
    pthread_t th;
    int wake_fd, wake_watch;      /* eventfd: wakes its loop for a pause or the end */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pause_req;                /* set by the control thread (atomic loads) */
    bool paused, quit;            /* under mu */
};

struct gd_net {
    struct gd_loop *loop;         /* the control loop */
    struct gd_endpoint *ep;
    struct gd_net_port **ports;
    unsigned nports, cap;
    unsigned max_workers;         /* 0: inline mode (no threads) */
    struct net_worker inl;        /* inline mode's worker */
    struct net_worker *workers[GD_NET_MAX_WORKERS];
    unsigned nworkers;
    unsigned pause_depth;         /* nested net_pause() calls */
    bool inl_started;             /* inline mode: endpoint told of worker 0 */
};

/* ---- net_path.c: one pair's data path (called by its worker) ---- */

/** Drain up to GD_NET_BUDGET transmit chains of @pair into the endpoint. Returns how
 *  many were handled. */
int net_pair_tx(struct net_pair *pair);
/** Publish used entries of both queues (doorbells as the driver asked), keep the
 *  resume positions in gd_queue current. */
void net_pair_flush(struct net_pair *pair);
/** Ask for transmitq kicks (idle) or not (busy). */
void net_pair_tx_notify(struct net_pair *pair, bool on);
/** Map @vq's rings and attach the device side at q->last_avail_idx. */
int net_vq_attach(struct net_vq *vq, vp_error *err);
/** Publish what was used and drop the ring pointers; last_avail_idx stays current. */
void net_vq_detach(struct net_vq *vq);

/* ---- net.c: the calling thread's roles (thread-local) ---- */

/** The worker polling on this thread, or NULL (the control thread in worker mode). */
struct net_worker *net_current_worker(void);
/** Set by net_worker.c: for good on a worker thread, around one poll for the inline
 *  worker on the control thread (@w NULL: none). */
void net_set_current_worker(struct net_worker *w);
/** The pair whose transmitq the current thread is draining, or NULL. */
struct net_pair *net_current_tx_pair(void);
/** Set by net_pair_tx around its endpoint calls. */
void net_set_current_tx_pair(struct net_pair *pair);

/* ---- net_worker.c: threads ---- */

/** One poll of every pair of @w (and the endpoint). > 0 when there was work. */
int net_worker_poll(struct net_worker *w);
/** Park every worker (nested: only the outermost call waits). Control thread. */
void net_pause(struct gd_net *net);
/** Undo one net_pause(); the outermost lets the workers run again. */
void net_resume(struct gd_net *net);
/** With every worker parked: start (or stop) workers to what the ports' pairs need, give
 *  every pair its worker (pair q: worker q mod nworkers) and mark the receive queues
 *  that other threads may write. 0 or -ENOMEM (then some pairs have no worker). */
int net_assign(struct gd_net *net);
/** Stop, join and free every worker (ports must be gone; the endpoint is told of
 *  each, before it is freed itself). */
void net_workers_free(struct gd_net *net);

#endif
