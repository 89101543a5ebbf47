/*
 * net.c - vhost-pci-net: the virtio-net device side of the driver VMs' queues
 * (net.h, DESIGN section 6, virtio 1.0 5.1.6).
 *
 * Security model: the rings and buffers are the driver VM's memory, which it may
 * rewrite at any time, and the driver VM may be hostile.
 *  - Ring fields are read once and validated by vp_vring (indexes against num,
 *    chains at most num long, avail index moving by at most num, lengths summed
 *    in 64 bits and at most 4 GiB per chain).
 *  - Every descriptor (address, length) is translated through the memory table of
 *    its device every time it is used (vq_xlate: the region the queue's last
 *    translation hit is tried first, else gd_device_region; the length is clamped
 *    to one region: we loop over regions); an address outside the table breaks the
 *    queue. The remembered region is forgotten in memory_del.
 *    The data path never holds a buffer pointer across polls; ring pointers are
 *    dropped before their region leaves the table (memory_del).
 *  - Frame bytes are copied, never interpreted; the transmit header is skipped
 *    unread (no offloads are offered), the receive header is written from a local.
 *    Source and destination may overlap (a receive buffer posted over a transmit
 *    buffer, memory shared between driver VMs): copies are memmove.
 *  - A violation breaks only that queue (gd_queue.broken, one log line); nothing
 *    aborts, other queues, ports and devices carry on.
 * libc only.
 */
#include "net.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "vp_ctrlarea.h"
#include "vp_vring.h"
#include "vp_wire.h"

#define RXQ 0                     /* the driver VM's receiveq */
#define TXQ 1                     /* the driver VM's transmitq */

/* virtio-net header (virtio 1.0 5.1.6): flags, gso_type, hdr_len, gso_size,
 * csum_start, csum_offset (10 bytes), num_buffers (2 more, with VERSION_1 or
 * MRG_RXBUF). Little-endian. */
#define NET_HDR_MAX 12
#define NET_HDR_OFF_NUM_BUFFERS 10
#define NET_GSO_NONE 0

/* A chain taken from the ring and not used yet. */
struct chain {
    uint16_t head;
    unsigned seg0, nsegs;         /* its segments: segs[seg0 .. seg0 + nsegs) */
    uint64_t cap;                 /* receiveq: writable bytes */
};

/* Transmit chains taken from the ring at once (their buffers are prefetched while
 * the earlier ones are handled). */
#define TX_BATCH 32

/* The region of the memory table a queue's last translation hit: tried first. */
struct xlate_hint {
    uint64_t start, size;         /* guest-physical; size 0: none */
    uint8_t *host;                /* where start is mapped */
};

struct net_vq {
    struct gd_net_port *port;
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
    /* Chains taken, in ring order, not used yet: stash[0 .. nstash), their segments
     * segs[0 .. pool_used). The transmitq hands them to the endpoint from tx_next on
     * (those before it are used); the receiveq fills them from 0. */
    struct chain *stash;          /* num entries */
    unsigned nstash, pool_used, tx_next;
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
    struct net_vq rx, tx;
    uint64_t drops;
    char name[48];
};

struct gd_net {
    struct gd_loop *loop;
    struct gd_endpoint *ep;
    struct gd_net_port **ports;
    unsigned nports, cap;
    int poller;
    bool idle;                    /* last poll found no work (transmitq kicks on) */
    bool retry;                   /* buffers arrived while kicks were being enabled */
};

/* ------------------------------- helpers ------------------------------- */

static void vq_fail(struct net_vq *vq, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Mark @vq broken (fmt NULL: vp_vring already did, with its reason) and log once. */
static void vq_fail(struct net_vq *vq, const char *fmt, ...)
{
    if (fmt) {
        /* Give back what was used before the bad chain (nothing after it will be). */
        if (vq->dirty && vq->active) {
            vp_vring_dev_flush(&vq->vr);
            vq->dirty = false;
        }
        char why[sizeof(vq->vr.why)];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        vp_vring_dev_break(&vq->vr, "%s", why);
    }
    if (!vq->q->broken) {
        vq->q->broken = true;
        gd_warn("%s: virtqueue %u (%s) broken: %s; the queue stops, the device carries on",
                vq->port->name, vq->q->index, vq->what, vq->vr.why);
    }
}

/* The position a resuming device must start at: chains taken but not used are given
 * back (they are the most recently taken ones). */
static uint16_t vq_resume_idx(const struct net_vq *vq)
{
    return (uint16_t)(vq->vr.last_avail_idx - (vq->nstash - vq->tx_next));
}

/* Publish pushed used entries and interrupt the driver VM when it asked for it. */
static void vq_flush(struct net_vq *vq)
{
    if (!vq->dirty || !vq->active)
        return;
    vq->dirty = false;
    vp_vring_dev_flush(&vq->vr);
    if (!vp_vring_dev_need_notify(&vq->vr) || vq->q->call_vector == VP_NO_VECTOR)
        return;
    int r = gd_device_notify_peer(vq->port->dev, vq->q->call_vector);
    if (r < 0 && !vq->signal_failed) {
        vq->signal_failed = true;
        gd_warn("%s: virtqueue %u: doorbell on call vector %u failed: %s", vq->port->name,
                vq->q->index, vq->q->call_vector, strerror(-r));
    }
}

static void vq_set_notify(struct net_vq *vq, bool on)
{
    if (!vq->active || vq->notify_on == on)
        return;
    vq->notify_on = on;
    if (vp_vring_dev_set_notify(&vq->vr, on) && on)
        vq->port->net->retry = true;
}

/*
 * Translate [addr, +len) (len > 0) of @vq's device: returns where addr is mapped and
 * sets *@got to the bytes usable from there, clamped to @len and to one region
 * (callers loop for the rest; [addr, +got) lies inside one region, so addr + got
 * wraps only when it ends the address space exactly, and then the rest is 0).
 * NULL when addr is in no region. The region of the last hit is tried first.
 */
static inline uint8_t *vq_xlate(struct net_vq *vq, uint64_t addr, uint64_t len, uint64_t *got)
{
    struct xlate_hint *h = &vq->hint;
    uint64_t off = addr - h->start;
    if (__builtin_expect(off >= h->size, 0)) {
        h->host = gd_device_region(vq->port->dev, addr, &h->start, &h->size);
        if (!h->host) {
            h->size = 0;
            *got = 0;
            return NULL;
        }
        off = addr - h->start;
    }
    uint64_t avail = h->size - off;
    *got = avail < len ? avail : len;
    return h->host + off;
}

/* Copy up to @len bytes from the cursor (*@i, *@off) over @src into @dst. The two may
 * overlap: a driver VM can post a receive buffer over the transmit buffer being
 * looped back to it, or two driver VMs can share memory (issue 12.7), so memmove. */
static size_t iov_pull(const struct iovec *src, unsigned nsrc, unsigned *i, size_t *off,
                       uint8_t *dst, size_t len)
{
    size_t done = 0;
    while (done < len && *i < nsrc) {
        size_t avail = src[*i].iov_len - *off;
        size_t n = avail < len - done ? avail : len - done;
        memmove(dst + done, (const uint8_t *)src[*i].iov_base + *off, n);
        done += n;
        *off += n;
        if (*off == src[*i].iov_len) {
            (*i)++;
            *off = 0;
        }
    }
    return done;
}

/* ------------------------------- receiveq ------------------------------- */

/* Take one more receive chain into the stash. Returns 1, 0 (ring empty) or -EIO. */
static int rx_take(struct net_vq *vq)
{
    struct gd_net_port *p = vq->port;
    unsigned room = vq->q->num - vq->pool_used;
    unsigned nsegs = 0;
    uint16_t head = 0;
    int r = vp_vring_dev_pop(&vq->vr, vq->segs + vq->pool_used, room, &nsegs, &head);
    if (r <= 0) {
        if (r < 0)
            vq_fail(vq, NULL);
        return r;
    }
    const struct vp_vring_seg *s = vq->segs + vq->pool_used;
    uint64_t cap = 0;
    for (unsigned k = 0; k < nsegs; k++) {
        if (!s[k].write) {
            vq_fail(vq, "chain from head %u: device-readable descriptor (addr 0x%llx, len %u) "
                        "in a receive buffer", head, (unsigned long long)s[k].addr, s[k].len);
            return -EIO;
        }
        /* Bounds-check the whole buffer now, so a bad one is found when it is taken. */
        uint64_t addr = s[k].addr, len = s[k].len;
        while (len) {
            uint64_t got = 0;
            if (!vq_xlate(vq, addr, len, &got)) {
                vq_fail(vq, "chain from head %u: buffer 0x%llx+%u reaches 0x%llx, outside the "
                            "driver VM's memory", head, (unsigned long long)s[k].addr,
                        s[k].len, (unsigned long long)addr);
                return -EIO;
            }
            addr += got;
            len -= got;
        }
        cap += s[k].len;
    }
    if (p->mrg && cap < p->hdr_len) {
        vq_fail(vq, "chain from head %u: mergeable receive buffer of %llu bytes is smaller "
                    "than the %u-byte header", head, (unsigned long long)cap, p->hdr_len);
        return -EIO;
    }
    vq->stash[vq->nstash++] = (struct chain){ .head = head, .seg0 = vq->pool_used,
                                                 .nsegs = nsegs, .cap = cap };
    vq->pool_used += nsegs;
    return 1;
}

/* Forget the first @k stashed chains (they were used). */
static void rx_consume(struct net_vq *vq, unsigned k)
{
    if (k == vq->nstash) {
        vq->nstash = 0;
        vq->pool_used = 0;
        return;
    }
    unsigned shift = vq->stash[k].seg0;
    memmove(vq->segs, vq->segs + shift, (vq->pool_used - shift) * sizeof(vq->segs[0]));
    memmove(vq->stash, vq->stash + k, (vq->nstash - k) * sizeof(vq->stash[0]));
    vq->nstash -= k;
    vq->pool_used -= shift;
    for (unsigned i = 0; i < vq->nstash; i++)
        vq->stash[i].seg0 -= shift;
}

/* Write @src (header + frame, @total bytes) into stashed chains 0..k-1 and push them. */
static int rx_write(struct net_vq *vq, const struct iovec *src, unsigned nsrc, uint64_t total,
                    unsigned k)
{
    unsigned si = 0;
    size_t soff = 0;
    uint64_t left = total;
    for (unsigned c = 0; c < k; c++) {
        const struct chain *ch = &vq->stash[c];
        uint64_t written = 0;
        for (unsigned s = 0; s < ch->nsegs && left; s++) {
            const struct vp_vring_seg *seg = &vq->segs[ch->seg0 + s];
            uint64_t addr = seg->addr;
            uint64_t want = seg->len < left ? seg->len : left;
            while (want) {
                uint64_t got = 0;
                uint8_t *dst = vq_xlate(vq, addr, want, &got);
                if (!dst) {
                    vq_fail(vq, "chain from head %u: buffer at 0x%llx is outside the driver "
                                "VM's memory", ch->head, (unsigned long long)addr);
                    return -EIO;
                }
                iov_pull(src, nsrc, &si, &soff, dst, got);
                addr += got;
                want -= got;
                left -= got;
                written += got;
            }
        }
        if (vp_vring_dev_push(&vq->vr, ch->head, (uint32_t)written) < 0) {
            vq_fail(vq, NULL);
            return -EIO;
        }
    }
    return 0;
}

/*
 * The common case of a receive, with nothing set aside: take the next chain, and
 * when its first buffer holds header and frame inside one region, write them there
 * and use the chain. Returns 1 when delivered; 0 when the general path must do it
 * (the chain taken stays in the stash); -EAGAIN (ring empty) or -EIO (broken).
 */
static int rx_fast(struct net_vq *vq, const struct iovec *iov, unsigned niov, size_t len,
                   uint64_t need)
{
    int r = rx_take(vq);
    if (r <= 0)
        return r == 0 ? -EAGAIN : -EIO;
    const struct chain *ch = &vq->stash[0];
    const struct vp_vring_seg *seg = &vq->segs[ch->seg0];
    uint64_t got = 0;
    uint8_t *dst = seg->len >= need ? vq_xlate(vq, seg->addr, need, &got) : NULL;
    if (!dst || got < need)
        return 0;
    const struct gd_net_port *p = vq->port;
    memset(dst, 0, p->hdr_len); /* no flags, GSO_NONE */
    if (p->hdr_len >= NET_HDR_MAX)
        vp_put_le16(dst + NET_HDR_OFF_NUM_BUFFERS, 1);
    dst += p->hdr_len;
    size_t left = len;
    for (unsigned i = 0; i < niov && left; i++) {
        size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;
        memmove(dst, iov[i].iov_base, n); /* may overlap: see iov_pull */
        dst += n;
        left -= n;
    }
    if (vp_vring_dev_push(&vq->vr, ch->head, (uint32_t)need) < 0) {
        vq_fail(vq, NULL);
        return -EIO;
    }
    vq->nstash = vq->pool_used = 0;
    return 1;
}

int gd_net_port_rx(struct gd_net_port *p, const struct iovec *iov, unsigned niov, size_t len)
{
    struct net_vq *vq = &p->rx;
    if (!vq->active || vq->q->broken) {
        p->drops++;
        return vq->q->broken ? -EIO : -ENODEV;
    }
    if (len > GD_NET_MAX_FRAME || niov > GD_NET_MAX_IOV) {
        p->drops++;
        return -EMSGSIZE;
    }
    uint64_t need = (uint64_t)p->hdr_len + len;

    if (vq->nstash == 0) {
        int r = rx_fast(vq, iov, niov, len, need);
        if (r == 1)
            goto done;
        if (r == -EAGAIN) {
            /* Wait for buffers; ask the driver VM to kick when it adds some. */
            vq_set_notify(vq, true);
            return -EAGAIN;
        }
        if (r < 0) {
            p->drops++;
            return -EIO;
        }
    }

    /* Chains covering the frame: the stash first, then more from the ring. */
    unsigned k = 0;
    uint64_t room = 0;
    for (;;) {
        while (k < vq->nstash && room < need && (p->mrg || k == 0)) {
            room += vq->stash[k].cap;
            k++;
        }
        if (room >= need)
            break;
        if (!p->mrg && k == 1) {
            /* One chain per frame and this one is too small: drop the frame, keep the
             * chain for the next one (virtio 1.0 5.1.6.3.1: buffers should hold a
             * full frame). */
            p->drops++;
            return -EMSGSIZE;
        }
        if (vq->nstash >= vq->q->num) {
            p->drops++; /* all buffers together cannot hold it */
            return -EMSGSIZE;
        }
        int r = rx_take(vq);
        if (r < 0) {
            p->drops++;
            return -EIO;
        }
        if (r == 0) {
            /* Wait for buffers; ask the driver VM to kick when it adds some. */
            vq_set_notify(vq, true);
            return -EAGAIN;
        }
    }

    uint8_t hdr[NET_HDR_MAX] = { 0 };
    hdr[1] = NET_GSO_NONE;
    if (p->hdr_len >= NET_HDR_MAX)
        vp_put_le16(hdr + NET_HDR_OFF_NUM_BUFFERS, (uint16_t)(p->mrg ? k : 1));
    struct iovec src[GD_NET_MAX_IOV + 1];
    src[0] = (struct iovec){ .iov_base = hdr, .iov_len = p->hdr_len };
    memcpy(src + 1, iov, niov * sizeof(*iov));
    if (rx_write(vq, src, niov + 1, need, k) < 0) {
        p->drops++;
        return -EIO;
    }
    rx_consume(vq, k);
done:
    vq->dirty = true;
    vq->q->packets++;
    vq->q->bytes += len;
    vq_set_notify(vq, false);
    return 0;
}

/* ------------------------------- transmitq ------------------------------- */

/* Gather the frame of transmit chain @c (after the header) into @iov. Returns 0
 * with *@niov, *@len set, or -EIO (queue broken), -E2BIG (too many pieces: drop). */
static int tx_gather(struct net_vq *vq, const struct chain *c, struct iovec *iov,
                     unsigned *niov, uint64_t *len)
{
    unsigned n = 0;
    uint64_t total = 0;
    uint64_t skip = vq->port->hdr_len; /* no offloads offered: nothing in it to honour */
    for (unsigned k = 0; k < c->nsegs; k++) {
        const struct vp_vring_seg *s = &vq->segs[c->seg0 + k];
        uint64_t addr = s->addr, left = s->len;
        while (left) {
            uint64_t got = 0;
            uint8_t *ptr = vq_xlate(vq, addr, left, &got);
            if (!ptr) {
                vq_fail(vq, "chain from head %u: buffer 0x%llx+%u reaches 0x%llx, outside "
                            "the driver VM's memory", c->head,
                        (unsigned long long)s->addr, s->len, (unsigned long long)addr);
                return -EIO;
            }
            addr += got;
            left -= got;
            if (skip >= got) {
                skip -= got;
                continue;
            }
            ptr += skip;
            got -= skip;
            skip = 0;
            if (n >= GD_NET_MAX_IOV)
                return -E2BIG;
            iov[n++] = (struct iovec){ .iov_base = ptr, .iov_len = got };
            total += got;
        }
    }
    *niov = n;
    *len = total;
    return 0;
}

/* Take up to @max more transmit chains (all handled before: start afresh), and
 * prefetch the start of each one's first buffer. Returns how many; a ring the
 * driver VM broke is failed here. */
static unsigned tx_take(struct net_vq *vq, unsigned max)
{
    vq->nstash = vq->pool_used = vq->tx_next = 0;
    while (vq->nstash < max) {
        unsigned nsegs = 0;
        uint16_t head = 0;
        int r = vp_vring_dev_pop(&vq->vr, vq->segs + vq->pool_used, vq->q->num - vq->pool_used,
                                 &nsegs, &head);
        if (r <= 0) {
            if (r < 0)
                vq_fail(vq, NULL);
            break;
        }
        const struct vp_vring_seg *s = &vq->segs[vq->pool_used];
        uint64_t got = 0;
        const uint8_t *buf = s->len ? vq_xlate(vq, s->addr, s->len, &got) : NULL;
        if (buf) {
            __builtin_prefetch(buf);
            if (got > 64)
                __builtin_prefetch(buf + 64);
        }
        vq->stash[vq->nstash++] = (struct chain){ .head = head, .seg0 = vq->pool_used,
                                                  .nsegs = nsegs };
        vq->pool_used += nsegs;
    }
    return vq->nstash;
}

/* Check transmit chain @c (readable only, at least a header). 0, or -EIO (broken). */
static int tx_check(struct net_vq *vq, const struct chain *c)
{
    uint64_t total = 0;
    for (unsigned k = 0; k < c->nsegs; k++) {
        const struct vp_vring_seg *s = &vq->segs[c->seg0 + k];
        if (s->write) {
            vq_fail(vq, "chain from head %u: device-writable descriptor (addr 0x%llx, len %u) "
                        "in a transmit buffer", c->head, (unsigned long long)s->addr, s->len);
            return -EIO;
        }
        total += s->len;
    }
    if (total < vq->port->hdr_len) {
        vq_fail(vq, "chain from head %u: %llu bytes, shorter than the %u-byte virtio-net "
                    "header", c->head, (unsigned long long)total, vq->port->hdr_len);
        return -EIO;
    }
    return 0;
}

/* Drain up to GD_NET_BUDGET chains of @p's transmitq into the endpoint. */
static int port_tx(struct gd_net_port *p)
{
    struct net_vq *vq = &p->tx;
    if (!vq->active || vq->q->broken)
        return 0;
    struct gd_endpoint *ep = p->net->ep;
    int work = 0;
    while (work < GD_NET_BUDGET) {
        if (vq->tx_next == vq->nstash) {
            unsigned max = GD_NET_BUDGET - work < TX_BATCH ? GD_NET_BUDGET - work : TX_BATCH;
            if (!tx_take(vq, max))
                break;
        }
        const struct chain *c = &vq->stash[vq->tx_next];
        if (tx_check(vq, c) < 0)
            return work;
        struct iovec iov[GD_NET_MAX_IOV];
        unsigned niov = 0;
        uint64_t len = 0;
        int r = tx_gather(vq, c, iov, &niov, &len);
        if (r == -EIO)
            return work;
        if (r == 0 && len > 0 && len <= GD_NET_MAX_FRAME) {
            r = ep->ops->tx(ep, p, iov, niov, (size_t)len);
            if (r == -EAGAIN)
                break; /* the endpoint is full: offer the same frame again later */
            vq->q->packets++;
            vq->q->bytes += len;
        } else {
            p->drops++; /* empty, too large or too scattered: used, not sent */
        }
        vq->tx_next++;
        if (vp_vring_dev_push(&vq->vr, c->head, 0) < 0) {
            vq_fail(vq, NULL);
            break;
        }
        vq->dirty = true;
        work++;
    }
    return work;
}

/* --------------------------------- polling --------------------------------- */

static void port_sync_status(struct gd_net_port *p)
{
    if (p->rx.active)
        p->rx.q->last_avail_idx = vq_resume_idx(&p->rx);
    if (p->tx.active)
        p->tx.q->last_avail_idx = vq_resume_idx(&p->tx);
}

int gd_net_poll(struct gd_net *net)
{
    int work = 0;
    net->retry = false;
    for (unsigned i = 0; i < net->nports; i++)
        work += port_tx(net->ports[i]);
    if (net->ep->ops->poll)
        work += net->ep->ops->poll(net->ep);
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        vq_flush(&p->rx);
        vq_flush(&p->tx);
        port_sync_status(p);
    }
    if (work) {
        /* Busy: the driver VM need not kick, we are polling anyway. */
        if (net->idle) {
            net->idle = false;
            for (unsigned i = 0; i < net->nports; i++)
                vq_set_notify(&net->ports[i]->tx, false);
        }
    } else if (!net->idle) {
        /* Going idle: ask for transmitq kicks, then re-check (virtio's
         * disable / drain / enable / re-check). */
        net->idle = true;
        for (unsigned i = 0; i < net->nports; i++)
            vq_set_notify(&net->ports[i]->tx, true);
    }
    if (net->retry)
        work++;
    return work;
}

static int net_poller(void *opaque) { return gd_net_poll(opaque); }

/* ------------------------------ life cycle ------------------------------ */

static const char *queue_name(unsigned which) { return which == RXQ ? "receiveq" : "transmitq"; }

/* Map @vq's rings (all inside the memory table: device.c checked it at ADD) and
 * attach the device side at q->last_avail_idx. */
static int vq_attach(struct net_vq *vq, vp_error *err)
{
    struct gd_net_port *p = vq->port;
    const struct gd_queue *q = vq->q;
    uint64_t dsz = vp_vring_desc_size(q->num), asz = vp_vring_avail_size(q->num),
             usz = vp_vring_used_size(q->num);
    uint64_t g1 = 0, g2 = 0, g3 = 0;
    void *d = gd_device_translate(p->dev, q->desc, dsz, &g1);
    void *a = gd_device_translate(p->dev, q->avail, asz, &g2);
    void *u = gd_device_translate(p->dev, q->used, usz, &g3);
    if (!d || !a || !u || g1 != dsz || g2 != asz || g3 != usz)
        return vp_fail(err, -EFAULT, "virtqueue %u: rings not inside one region each of the "
                       "memory table", q->index);
    struct vp_vring_mem mem = { .desc = d, .avail = a, .used = u, .num = q->num };
    int r = vp_vring_dev_init(&vq->vr, &mem, p->event_idx, q->last_avail_idx);
    if (r < 0)
        return vp_fail(err, r, "virtqueue %u: rings rejected (size %u; misaligned in the "
                       "BAR?)", q->index, q->num);
    vq->active = true;
    vq->parked = false;
    vq->notify_on = true; /* forces the first vq_set_notify(false) to write */
    vq->dirty = false;
    vq->nstash = vq->pool_used = vq->tx_next = 0;
    vq_set_notify(vq, false);
    return 0;
}

/* Publish what was used and drop the ring pointers; last_avail_idx stays current. */
static void vq_detach(struct net_vq *vq)
{
    if (!vq->active)
        return;
    vq_flush(vq);
    vq->q->last_avail_idx = vq_resume_idx(vq);
    vq->active = false;
    vq->nstash = vq->pool_used = vq->tx_next = 0;
}

static int vq_setup(struct gd_net_port *p, struct net_vq *vq, struct gd_queue *q, unsigned which,
                    vp_error *err)
{
    vq->port = p;
    vq->q = q;
    vq->what = queue_name(which);
    vq->segs = calloc(q->num, sizeof(*vq->segs));
    vq->stash = calloc(q->num, sizeof(*vq->stash));
    if (!vq->segs || !vq->stash)
        return vp_fail(err, -ENOMEM, "out of memory");
    q->dp = vq;
    return vq_attach(vq, err);
}

static void port_free(struct gd_net_port *p)
{
    if (!p)
        return;
    free(p->rx.segs);
    free(p->rx.stash);
    free(p->tx.segs);
    free(p->tx.stash);
    free(p);
}

static struct gd_queue *find_queue(struct gd_frontend *fe, uint32_t index)
{
    for (uint32_t i = 0; i < fe->nqueues; i++) {
        if (fe->queues[i].index == index)
            return &fe->queues[i];
    }
    return NULL;
}

static int net_frontend_start(void *opaque, struct gd_device *dev, struct gd_frontend *fe,
                              vp_error *err)
{
    struct gd_net *net = opaque;
    if (fe->device_type != VP_DEV_NET)
        return vp_fail(err, -EOPNOTSUPP, "vhost-pci-net serves NET frontends only");
    struct gd_queue *rq = find_queue(fe, RXQ), *tq = find_queue(fe, TXQ);
    if (!rq || !tq)
        return vp_fail(err, -EINVAL, "a NET frontend needs virtqueues 0 (receiveq) and 1 "
                       "(transmitq)");
    if (net->nports == net->cap) {
        unsigned ncap = net->cap ? net->cap * 2 : 8;
        struct gd_net_port **np = realloc(net->ports, ncap * sizeof(*np));
        if (!np)
            return vp_fail(err, -ENOMEM, "out of memory");
        net->ports = np;
        net->cap = ncap;
    }
    struct gd_net_port *p = calloc(1, sizeof(*p));
    if (!p)
        return vp_fail(err, -ENOMEM, "out of memory");
    p->net = net;
    p->dev = dev;
    p->fe = fe;
    memcpy(p->uuid, dev->layout.peer_uuid, sizeof(p->uuid));
    p->device_id = fe->device_id;
    uint64_t f = gd_device_features(dev);
    p->mrg = f & (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF);
    p->event_idx = f & (1ULL << VP_VIRTIO_F_RING_EVENT_IDX);
    p->hdr_len = (p->mrg || (f & (1ULL << VP_VIRTIO_F_VERSION_1))) ? 12 : 10;
    snprintf(p->name, sizeof(p->name), "slot %u net %llu", gd_device_slot(dev),
             (unsigned long long)fe->device_id);
    int r = vq_setup(p, &p->rx, rq, RXQ, err);
    if (!r)
        r = vq_setup(p, &p->tx, tq, TXQ, err);
    if (r < 0) {
        rq->dp = tq->dp = NULL;
        port_free(p);
        return r;
    }
    if (!net->poller) {
        int id = gd_loop_add_poller(net->loop, net_poller, net, GD_NET_MAX_SLEEP_NS);
        if (id < 0) {
            rq->dp = tq->dp = NULL;
            port_free(p);
            return vp_fail(err, -ENOMEM, "out of memory");
        }
        net->poller = id;
    }
    fe->dp = p;
    net->ports[net->nports++] = p;
    net->idle = false;
    if (net->ep->ops->port_added)
        net->ep->ops->port_added(net->ep, p);
    gd_info("%s: started: features 0x%llx, %u-byte header, mergeable %s, event index %s, "
            "receiveq %u entries from %u, transmitq %u entries from %u, endpoint %s",
            p->name, (unsigned long long)f, p->hdr_len, p->mrg ? "yes" : "no",
            p->event_idx ? "yes" : "no", rq->num, rq->last_avail_idx, tq->num,
            tq->last_avail_idx, net->ep->ops->name);
    return 0;
}

static void net_frontend_stop(void *opaque, struct gd_device *dev, struct gd_frontend *fe)
{
    struct gd_net *net = opaque;
    (void)dev;
    struct gd_net_port *p = fe->dp;
    if (!p)
        return;
    if (net->ep->ops->port_removed)
        net->ep->ops->port_removed(net->ep, p);
    vq_detach(&p->rx);
    vq_detach(&p->tx);
    for (unsigned i = 0; i < net->nports; i++) {
        if (net->ports[i] == p) {
            memmove(&net->ports[i], &net->ports[i + 1],
                    (net->nports - i - 1) * sizeof(net->ports[0]));
            net->nports--;
            break;
        }
    }
    gd_info("%s: stopped: receiveq at %u (%llu frames), transmitq at %u (%llu frames), "
            "%llu dropped", p->name, p->rx.q->last_avail_idx,
            (unsigned long long)p->rx.q->packets, p->tx.q->last_avail_idx,
            (unsigned long long)p->tx.q->packets, (unsigned long long)p->drops);
    p->rx.q->dp = p->tx.q->dp = NULL;
    fe->dp = NULL;
    port_free(p);
    if (!net->nports && net->poller) {
        gd_loop_del_poller(net->loop, net->poller);
        net->poller = 0;
    }
}

/* Does [a, +alen) overlap [b, +blen)? (Neither wraps.) */
static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return (a >= b && a - b < blen) || (b >= a && b - a < alen);
}

static bool vq_uses(const struct net_vq *vq, const struct vp_cq_region *regs, unsigned n)
{
    const struct gd_queue *q = vq->q;
    for (unsigned i = 0; i < n; i++) {
        if (overlaps(q->desc, vp_vring_desc_size(q->num), regs[i].xgpa, regs[i].size) ||
            overlaps(q->avail, vp_vring_avail_size(q->num), regs[i].xgpa, regs[i].size) ||
            overlaps(q->used, vp_vring_used_size(q->num), regs[i].xgpa, regs[i].size))
            return true;
    }
    return false;
}

static void net_memory_del(void *opaque, struct gd_device *dev, const struct vp_cq_region *regs,
                           unsigned n)
{
    struct gd_net *net = opaque;
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        if (p->dev != dev)
            continue;
        struct net_vq *vqs[2] = { &p->rx, &p->tx };
        for (unsigned k = 0; k < 2; k++) {
            struct net_vq *vq = vqs[k];
            vq->hint.size = 0; /* its region may be going */
            if (!vq->active || !vq_uses(vq, regs, n))
                continue;
            vq_detach(vq);
            vq->parked = true;
            gd_info("%s: virtqueue %u parked at %u: its rings left the memory table", p->name,
                    vq->q->index, vq->q->last_avail_idx);
        }
    }
}

static void net_memory_add(void *opaque, struct gd_device *dev, const struct vp_cq_region *regs,
                           unsigned n)
{
    struct gd_net *net = opaque;
    (void)regs;
    (void)n;
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        if (p->dev != dev)
            continue;
        struct net_vq *vqs[2] = { &p->rx, &p->tx };
        for (unsigned k = 0; k < 2; k++) {
            struct net_vq *vq = vqs[k];
            if (!vq->parked || vq->q->broken)
                continue;
            vp_error err = { { 0 } };
            if (vq_attach(vq, &err) == 0)
                gd_info("%s: virtqueue %u resumed at %u", p->name, vq->q->index,
                        vq->q->last_avail_idx);
        }
    }
}

static void net_features(void *opaque, struct gd_device *dev, uint64_t features)
{
    (void)opaque;
    /* Ports keep the features they started with; a change comes with new
     * DEVICE_INFO(ADD)s (spec 1.5.1.1). */
    gd_debug("slot %u: features now 0x%llx (applies to frontends started from now on)",
             gd_device_slot(dev), (unsigned long long)features);
}

static void net_status(void *opaque, struct gd_json *j)
{
    struct gd_net *net = opaque;
    gd_json_string(j, "endpoint", net->ep->ops->name);
    gd_json_uint(j, "ports", net->nports);
    uint64_t port_drops = 0;
    for (unsigned i = 0; i < net->nports; i++)
        port_drops += net->ports[i]->drops;
    gd_json_uint(j, "port_drops", port_drops);
    gd_json_uint(j, "endpoint_drops", net->ep->drops);
    if (net->ep->ops->status) {
        gd_json_begin_object(j, net->ep->ops->name);
        net->ep->ops->status(net->ep, j);
        gd_json_end_object(j);
    }
}

const struct gd_datapath_ops gd_net_ops = {
    .frontend_start = net_frontend_start,
    .frontend_stop = net_frontend_stop,
    .memory_del = net_memory_del,
    .memory_add = net_memory_add,
    .features = net_features,
    .status = net_status,
};

struct gd_net *gd_net_new(struct gd_loop *loop, struct gd_endpoint *ep)
{
    struct gd_net *net = calloc(1, sizeof(*net));
    if (!net) {
        gd_endpoint_free(ep);
        return NULL;
    }
    net->loop = loop;
    net->ep = ep;
    ep->net = net;
    return net;
}

void gd_net_free(struct gd_net *net)
{
    if (!net)
        return;
    if (net->nports)
        gd_warn("vhost-pci-net freed with %u port(s) still started", net->nports);
    if (net->poller)
        gd_loop_del_poller(net->loop, net->poller);
    gd_endpoint_free(net->ep);
    free(net->ports);
    free(net);
}

/* ------------------------------ accessors ------------------------------ */

const uint8_t *gd_net_port_uuid(const struct gd_net_port *p) { return p->uuid; }
uint64_t gd_net_port_device_id(const struct gd_net_port *p) { return p->device_id; }
const char *gd_net_port_name(const struct gd_net_port *p) { return p->name; }
unsigned gd_net_nports(const struct gd_net *net) { return net->nports; }
struct gd_net_port *gd_net_port_at(const struct gd_net *net, unsigned i)
{
    return i < net->nports ? net->ports[i] : NULL;
}

struct gd_net_port *gd_net_find_port(const struct gd_net *net, const uint8_t uuid[16],
                                     uint64_t device_id)
{
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        if (p->device_id == device_id && !memcmp(p->uuid, uuid, 16))
            return p;
    }
    return NULL;
}
