/*
 * net_path.c - the per-frame data path of one vhost-pci-net queue pair (net.h,
 * net_priv.h; virtio 1.0 5.1.6): its transmitq drained into the endpoint, frames
 * written into its receiveq, used entries published, doorbells rung as the driver
 * VM asked.
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
 *    queue. The remembered region is forgotten in memory_del, and the memory table
 *    changes only while every worker is parked (net_pause).
 *  - Frame bytes are copied, never interpreted; the transmit header is skipped
 *    unread (no offloads are offered), the receive header is written from a local.
 *    Source and destination may overlap (a receive buffer posted over a transmit
 *    buffer, memory shared between driver VMs): copies are memmove.
 *  - A violation breaks only that queue (gd_queue.broken, one log line); nothing
 *    aborts, other queues, pairs, ports and devices carry on.
 * Threads: everything here runs on the pair's worker, except deliveries into a
 * receiveq marked shared_rx, which other threads make under its rx_lock.
 * libc (and pthreads) only.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "log.h"
#include "net_priv.h"
#include "vp_wire.h"

/* Counters the status thread reads while the data path writes them: one writer at a
 * time, so a plain read-add-store, stored atomically (no torn values, no lock). */
static inline void stat_add(uint64_t *c, uint64_t v)
{
    __atomic_store_n(c, *c + v, __ATOMIC_RELAXED);
}

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
        __atomic_store_n(&vq->q->broken, true, __ATOMIC_RELAXED);
        gd_warn("%s: virtqueue %u (%s) broken: %s; the queue stops, the device carries on",
                vq->pair->port->name, vq->q->index, vq->what, vq->vr.why);
    }
}

/* The position a resuming device must start at: chains taken but not used are given
 * back (they are the most recently taken ones). */
static uint16_t vq_resume_idx(const struct net_vq *vq)
{
    return (uint16_t)(vq->vr.last_avail_idx - (vq->nstash - vq->next));
}

/* Add the frames counted since the last call to the queue's counters. */
static void vq_publish_counts(struct net_vq *vq)
{
    if (!vq->pend_packets)
        return;
    stat_add(&vq->q->packets, vq->pend_packets);
    stat_add(&vq->q->bytes, vq->pend_bytes);
    vq->pend_packets = vq->pend_bytes = 0;
}

/* Publish the counters and the pushed used entries; interrupt the driver VM when it
 * asked for it. */
static void vq_flush(struct net_vq *vq)
{
    vq_publish_counts(vq);
    if (!vq->dirty || !vq->active)
        return;
    vq->dirty = false;
    vp_vring_dev_flush(&vq->vr);
    if (!vp_vring_dev_need_notify(&vq->vr) || vq->q->call_vector == VP_NO_VECTOR)
        return;
    int r = gd_device_notify_peer(vq->pair->port->dev, vq->q->call_vector);
    if (r < 0 && !vq->signal_failed) {
        vq->signal_failed = true;
        gd_warn("%s: virtqueue %u: doorbell on call vector %u failed: %s", vq->pair->port->name,
                vq->q->index, vq->q->call_vector, strerror(-r));
    }
}

static void vq_set_notify(struct net_vq *vq, bool on)
{
    if (!vq->active || vq->notify_on == on)
        return;
    vq->notify_on = on;
    if (vp_vring_dev_set_notify(&vq->vr, on) && on) {
        struct net_worker *w = net_current_worker();
        if (w)
            w->retry = true;
    }
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
        h->host = gd_device_region(vq->pair->port->dev, addr, &h->start, &h->size);
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

/* Move the pending receive chains (stash[next ..]) and their segments to the front. */
static void rx_compact(struct net_vq *vq)
{
    if (vq->next == 0)
        return;
    if (vq->next == vq->nstash) {
        vq->nstash = vq->pool_used = vq->next = 0;
        return;
    }
    unsigned shift = vq->stash[vq->next].seg0;
    memmove(vq->segs, vq->segs + shift, (vq->pool_used - shift) * sizeof(vq->segs[0]));
    memmove(vq->stash, vq->stash + vq->next, (vq->nstash - vq->next) * sizeof(vq->stash[0]));
    vq->nstash -= vq->next;
    vq->pool_used -= shift;
    vq->next = 0;
    for (unsigned i = 0; i < vq->nstash; i++)
        vq->stash[i].seg0 -= shift;
}

/* Take one more receive chain into the stash (after its pending ones), and prefetch
 * the first lines of its first buffer for writing (the address is the validated
 * translation, not a value read from the ring). Returns 1, 0 (ring empty) or -EIO. */
static int rx_take(struct net_vq *vq)
{
    const struct gd_net_port *p = vq->pair->port;
    rx_compact(vq);
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
            uint8_t *host = vq_xlate(vq, addr, len, &got);
            if (!host) {
                vq_fail(vq, "chain from head %u: buffer 0x%llx+%u reaches 0x%llx, outside the "
                            "driver VM's memory", head, (unsigned long long)s[k].addr,
                        s[k].len, (unsigned long long)addr);
                return -EIO;
            }
            if (k == 0 && addr == s[0].addr) {
                __builtin_prefetch(host, 1);
                if (got > 64)
                    __builtin_prefetch(host + 64, 1);
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

/* The next @k pending chains were used. */
static void rx_consume(struct net_vq *vq, unsigned k)
{
    vq->next += k;
    if (vq->next == vq->nstash)
        vq->nstash = vq->pool_used = vq->next = 0;
}

/* Top the pending chains up to RX_AHEAD (as many as the ring has). Returns how many
 * are pending (0: ring empty), or -EIO (broken: a bad chain, even one taken ahead,
 * breaks the queue now rather than when its turn comes). */
static int rx_refill(struct net_vq *vq)
{
    while (vq->nstash - vq->next < RX_AHEAD) {
        int r = rx_take(vq);
        if (r < 0)
            return r;
        if (r == 0)
            break;
    }
    return (int)(vq->nstash - vq->next);
}

/* Write @src (header + frame, @total bytes) into stashed chains 0..k-1 (the pending
 * ones: the stash is compacted) and push them. */
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
 * The common case of a receive: the next pending chain, when its first buffer holds
 * header and frame inside one region: write them there and use the chain. With at
 * most one chain pending, the pending ones are topped up to RX_AHEAD first (so that
 * the buffers of the next frames are always being prefetched, not only from the
 * second frame of a refill on; moving the one pending chain to the front is cheap).
 * Returns 1 when delivered; 0 when the general path must do it (the chain stays
 * pending); -EAGAIN (ring empty) or -EIO (broken).
 */
static int rx_fast(struct net_vq *vq, const struct iovec *iov, unsigned niov, size_t len,
                   uint64_t need)
{
    if (vq->nstash - vq->next <= 1) {
        int r = rx_refill(vq);
        if (r <= 0)
            return r == 0 ? -EAGAIN : -EIO;
    }
    const struct chain *ch = &vq->stash[vq->next];
    const struct vp_vring_seg *seg = &vq->segs[ch->seg0];
    uint64_t got = 0;
    uint8_t *dst = seg->len >= need ? vq_xlate(vq, seg->addr, need, &got) : NULL;
    if (!dst || got < need)
        return 0;
    const struct gd_net_port *p = vq->pair->port;
    /* No flags, GSO_NONE, num_buffers 1 (fixed-size copies: no libc call). */
    static const uint8_t hdr[NET_HDR_MAX] = { [NET_HDR_OFF_NUM_BUFFERS] = 1 };
    if (p->hdr_len == NET_HDR_MAX)
        memcpy(dst, hdr, NET_HDR_MAX);
    else
        memcpy(dst, hdr, 10);
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
    rx_consume(vq, 1);
    return 1;
}

/* gd_net_port_rx() on @pair (its rx_lock held when it is shared). */
static int pair_rx(struct net_pair *pair, const struct iovec *iov, unsigned niov, size_t len)
{
    const struct gd_net_port *p = pair->port;
    struct net_vq *vq = &pair->rx;
    if (!vq->active || vq->q->broken) {
        stat_add(&pair->drops, 1);
        return vq->q->broken ? -EIO : -ENODEV;
    }
    if (len > GD_NET_MAX_FRAME || niov > GD_NET_MAX_IOV) {
        stat_add(&pair->drops, 1);
        return -EMSGSIZE;
    }
    uint64_t need = (uint64_t)p->hdr_len + len;

    int fast = rx_fast(vq, iov, niov, len, need);
    if (fast == 1)
        goto done;
    if (fast == -EAGAIN) {
        /* Wait for buffers; ask the driver VM to kick when it adds some. */
        vq_set_notify(vq, true);
        return -EAGAIN;
    }
    if (fast < 0) {
        stat_add(&pair->drops, 1);
        return -EIO;
    }

    /* Chains covering the frame: the pending ones first, then more from the ring. */
    rx_compact(vq);
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
            stat_add(&pair->drops, 1);
            return -EMSGSIZE;
        }
        if (vq->nstash >= vq->q->num) {
            stat_add(&pair->drops, 1); /* all buffers together cannot hold it */
            return -EMSGSIZE;
        }
        int r = rx_take(vq);
        if (r < 0) {
            stat_add(&pair->drops, 1);
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
        stat_add(&pair->drops, 1);
        return -EIO;
    }
    rx_consume(vq, k);
done:
    vq->dirty = true;
    vq->pend_packets++;
    vq->pend_bytes += len;
    /* The driver VM may take these frames while the batch goes on (whole frames
     * only; the interrupt is decided once, at vq_flush). */
    if (vp_vring_dev_unpublished(&vq->vr) >= NET_RX_PUBLISH_EVERY)
        vp_vring_dev_flush(&vq->vr);
    vq_set_notify(vq, false);
    return 0;
}

/* The pair of @p a frame from this thread goes to: the one being drained when it is
 * @p's (loopback, hairpin), else the one the current worker polls (pair w for worker
 * w; a port with fewer pairs than workers: pair w mod npairs, shared). */
static struct net_pair *rx_pair(struct gd_net_port *p)
{
    struct net_pair *t = net_current_tx_pair();
    if (t && t->port == p)
        return t;
    struct net_worker *w = net_current_worker();
    unsigned wi = w ? w->index : 0;
    return &p->pairs[wi < p->npairs ? wi : wi % p->npairs];
}

int gd_net_port_rx(struct gd_net_port *p, const struct iovec *iov, unsigned niov, size_t len)
{
    struct net_pair *pair = rx_pair(p);
    if (!pair->shared_rx)
        return pair_rx(pair, iov, niov, len);
    pthread_mutex_lock(&pair->rx_lock);
    int r = pair_rx(pair, iov, niov, len);
    if (pair->w != net_current_worker())
        vq_flush(&pair->rx); /* its worker may be asleep: publish now */
    pthread_mutex_unlock(&pair->rx_lock);
    return r;
}

/* ------------------------------- transmitq ------------------------------- */

/* Gather the frame of transmit chain @c (after the header) into @iov. Returns 0
 * with *@niov, *@len set, or -EIO (queue broken), -E2BIG (too many pieces: drop). */
static int tx_gather(struct net_vq *vq, const struct chain *c, struct iovec *iov,
                     unsigned *niov, uint64_t *len)
{
    unsigned n = 0;
    uint64_t total = 0;
    uint64_t skip = vq->pair->port->hdr_len; /* no offloads offered: nothing in it to honour */
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
    vq->nstash = vq->pool_used = vq->next = 0;
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
    if (total < vq->pair->port->hdr_len) {
        vq_fail(vq, "chain from head %u: %llu bytes, shorter than the %u-byte virtio-net "
                    "header", c->head, (unsigned long long)total, vq->pair->port->hdr_len);
        return -EIO;
    }
    return 0;
}

int net_pair_tx(struct net_pair *pair)
{
    struct net_vq *vq = &pair->tx;
    if (!vq->active || vq->q->broken)
        return 0;
    struct gd_net_port *p = pair->port;
    struct gd_endpoint *ep = p->net->ep;
    int work = 0;
    net_set_current_tx_pair(pair);
    while (work < GD_NET_BUDGET) {
        if (vq->next == vq->nstash) {
            unsigned max = GD_NET_BUDGET - work < TX_BATCH ? GD_NET_BUDGET - work : TX_BATCH;
            if (!tx_take(vq, max))
                break;
        }
        const struct chain *c = &vq->stash[vq->next];
        if (tx_check(vq, c) < 0)
            break;
        struct iovec iov[GD_NET_MAX_IOV];
        unsigned niov = 0;
        uint64_t len = 0;
        int r = tx_gather(vq, c, iov, &niov, &len);
        if (r == -EIO)
            break;
        if (r == 0 && len > 0 && len <= GD_NET_MAX_FRAME) {
            r = ep->ops->tx(ep, p, iov, niov, (size_t)len);
            if (r == -EAGAIN)
                break; /* the endpoint is full: offer the same frame again later */
            vq->pend_packets++;
            vq->pend_bytes += len;
        } else {
            stat_add(&pair->drops, 1); /* empty, too large or too scattered: used, not sent */
        }
        vq->next++;
        if (vp_vring_dev_push(&vq->vr, c->head, 0) < 0) {
            vq_fail(vq, NULL);
            break;
        }
        vq->dirty = true;
        work++;
    }
    net_set_current_tx_pair(NULL);
    return work;
}

/* Keep the resume position in gd_queue current; stored only when it moved (the
 * line is shared with a neighbouring queue another worker may poll). */
static void vq_store_resume(struct net_vq *vq)
{
    if (!vq->active)
        return;
    uint16_t r = vq_resume_idx(vq);
    if (__atomic_load_n(&vq->q->last_avail_idx, __ATOMIC_RELAXED) != r)
        __atomic_store_n(&vq->q->last_avail_idx, r, __ATOMIC_RELAXED);
}

void net_pair_flush(struct net_pair *pair)
{
    if (pair->shared_rx)
        pthread_mutex_lock(&pair->rx_lock);
    vq_flush(&pair->rx);
    vq_store_resume(&pair->rx);
    if (pair->shared_rx)
        pthread_mutex_unlock(&pair->rx_lock);
    vq_flush(&pair->tx);
    vq_store_resume(&pair->tx);
}

void net_pair_tx_notify(struct net_pair *pair, bool on) { vq_set_notify(&pair->tx, on); }

/* ------------------------------ attach, detach ------------------------------ */

/* The rings are all inside the memory table: device.c checked them at ADD. */
int net_vq_attach(struct net_vq *vq, vp_error *err)
{
    const struct gd_net_port *p = vq->pair->port;
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
    vq->nstash = vq->pool_used = vq->next = 0;
    vq_set_notify(vq, false);
    return 0;
}

void net_vq_detach(struct net_vq *vq)
{
    if (!vq->active)
        return;
    vq_flush(vq);
    __atomic_store_n(&vq->q->last_avail_idx, vq_resume_idx(vq), __ATOMIC_RELAXED);
    vq->active = false;
    vq->nstash = vq->pool_used = vq->next = 0;
}
