/*
 * vp_vring.c - virtio 1.0 split virtqueue, driver side and device side, over memory
 * the caller has mapped (vp_vring.h, DESIGN sections 3 and 6).
 *
 * Security model: the rings are shared with the other side, which may be hostile
 * and may rewrite any byte at any moment (including while we read it).
 *  - Every shared field is read exactly once (relaxed __atomic loads, so the compiler
 *    cannot re-read it) into a local, and only the local is validated and used.
 *  - Indexes read from shared memory (avail ring heads, desc next, used ids) are
 *    checked against num before they index anything; 16-bit ring indexes may only
 *    move forward by at most num.
 *  - A descriptor chain is walked at most num steps (a longer chain is a loop) and
 *    never past the caller's segment array.
 *  - The driver side keeps private shadows (free list next[], chain_len[], token[],
 *    avail_idx, last_used_idx) and never reads back what it wrote into the shared
 *    rings: the device could have rewritten it.
 *  - Any violation marks the queue broken with a reason (vq->why); broken is sticky
 *    and every later call fails with -EIO or does nothing. Nothing here aborts.
 *  - One exception to "read once": the device side reads avail ring entries a few
 *    places ahead of the one it pops, only to prefetch their head descriptors. Such a
 *    value is masked into the descriptor table and used for nothing but a prefetch
 *    (a wrong one costs one cache line); the entry is read again, once, when popped.
 *
 * Memory ordering follows Linux drivers/virtio/virtio_ring.c (driver) and
 * drivers/vhost/vhost.c (device); every barrier says what it orders. Shared 16-bit
 * indexes are accessed with __atomic_load_n/__atomic_store_n and converted from/to
 * little endian at the boundary.
 *
 * Split ring layout (virtio 1.0 2.6):
 *   desc[num]  { le64 addr; le32 len; le16 flags; le16 next; }        16 bytes each
 *   avail      { le16 flags; le16 idx; le16 ring[num]; le16 used_event; }
 *   used       { le16 flags; le16 idx; { le32 id; le32 len; } ring[num];
 *                le16 avail_event; }
 *
 * libc only.
 */
#include "vp_vring.h"

#include "vp_common.h"

#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------- shared accessors ---------------------------- */

/* Each reads or writes one naturally aligned field exactly once. Relaxed: ordering
 * is given by the explicit fences at the call sites. */
static inline uint16_t sh_ld16(const void *p)
{
    return le16toh(__atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED));
}
static inline uint32_t sh_ld32(const void *p)
{
    return le32toh(__atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED));
}
static inline uint64_t sh_ld64(const void *p)
{
    return le64toh(__atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED));
}
static inline void sh_st16(void *p, uint16_t v)
{
    __atomic_store_n((uint16_t *)p, htole16(v), __ATOMIC_RELAXED);
}
static inline void sh_st32(void *p, uint32_t v)
{
    __atomic_store_n((uint32_t *)p, htole32(v), __ATOMIC_RELAXED);
}
static inline void sh_st64(void *p, uint64_t v)
{
    __atomic_store_n((uint64_t *)p, htole64(v), __ATOMIC_RELAXED);
}

/* Field addresses. */
static inline unsigned char *desc_at(const struct vp_vring_mem *m, uint32_t i)
{
    return (unsigned char *)m->desc + 16u * i;
}
#define DESC_ADDR 0
#define DESC_LEN 8
#define DESC_FLAGS 12
#define DESC_NEXT 14

static inline void *avail_flags(const struct vp_vring_mem *m) { return m->avail; }
static inline void *avail_idx(const struct vp_vring_mem *m) { return (unsigned char *)m->avail + 2; }
static inline void *avail_ring(const struct vp_vring_mem *m, uint32_t i)
{
    return (unsigned char *)m->avail + 4 + 2u * i;
}
static inline void *used_event(const struct vp_vring_mem *m)
{
    return (unsigned char *)m->avail + 4 + 2u * m->num;
}
static inline void *used_flags(const struct vp_vring_mem *m) { return m->used; }
static inline void *used_idx(const struct vp_vring_mem *m) { return (unsigned char *)m->used + 2; }
static inline void *used_elem(const struct vp_vring_mem *m, uint32_t i)
{
    return (unsigned char *)m->used + 4 + 8u * i;
}
static inline void *avail_event(const struct vp_vring_mem *m)
{
    return (unsigned char *)m->used + 4 + 8u * m->num;
}

/* num a power of two in 1..VP_MAX_VRING_NUM, pointers present and aligned
 * (desc 16, avail 2, used 4: virtio 1.0 2.6 table). */
static int check_mem(const struct vp_vring_mem *m)
{
    if (!m || !m->desc || !m->avail || !m->used)
        return -EINVAL;
    if (m->num == 0 || m->num > 32768 || (m->num & (m->num - 1)))
        return -EINVAL;
    if (((uintptr_t)m->desc & 15) || ((uintptr_t)m->avail & 1) || ((uintptr_t)m->used & 3))
        return -EINVAL;
    return 0;
}

/* Entries the other side published past @last: its 16-bit index at @idx_p is read
 * once into *idx. Returns the count, or -1 when the index moved by more than @num
 * (the caller breaks its ring with its own reason). */
static int peer_pending(const void *idx_p, uint16_t last, uint32_t num, uint16_t *idx)
{
    uint16_t i = sh_ld16(idx_p);
    uint16_t pending = (uint16_t)(i - last);
    *idx = i;
    return pending > num ? -1 : (int)pending;
}

/* ------------------------------ device side ------------------------------ */

/* The device side prefetches the head descriptor of the avail entry this many
 * places ahead of the one it pops (the driver's descriptors are cache misses: it
 * wrote them on another core). */
#define DEV_PREFETCH_AHEAD 4

/* Prefetch the head descriptor of avail entry @idx, which the driver has published
 * (see the security model: the entry is a hint here, masked, never validated). */
static inline void dev_prefetch_head(const struct vp_vring_dev *vq, uint16_t idx)
{
    const struct vp_vring_mem *m = &vq->mem;
    uint16_t h = sh_ld16(avail_ring(m, idx & (m->num - 1)));
    __builtin_prefetch(desc_at(m, h & (m->num - 1)));
}

void vp_vring_dev_break(struct vp_vring_dev *vq, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vp_vbreak(&vq->broken, vq->why, sizeof(vq->why), fmt, ap);
    va_end(ap);
}

int vp_vring_dev_init(struct vp_vring_dev *vq, const struct vp_vring_mem *mem,
                      bool event_idx, uint16_t last_avail_idx)
{
    int r = check_mem(mem);
    if (r < 0)
        return r;
    memset(vq, 0, sizeof(*vq));
    vq->mem = *mem;
    vq->event_idx = event_idx;
    vq->last_avail_idx = last_avail_idx;
    vq->avail_shadow = last_avail_idx;
    /* Resume from the shared used index, read once (vhost_vq_init_access). */
    vq->used_idx = sh_ld16(used_idx(&vq->mem));
    vq->used_published = vq->used_idx;
    vq->signalled_used_valid = false;
    return 0;
}

int vp_vring_dev_pop(struct vp_vring_dev *vq, struct vp_vring_seg *segs,
                     unsigned max_segs, unsigned *nsegs, uint16_t *head)
{
    if (vq->broken)
        return -EIO;
    const struct vp_vring_mem *m = &vq->mem;
    const uint32_t num = m->num;

    if (vq->avail_shadow == vq->last_avail_idx) {
        /* Everything seen so far is taken: read avail->idx again (once per batch of
         * entries, not per entry: it is the cache line the driver keeps writing). */
        uint16_t aidx;
        int pending = peer_pending(avail_idx(m), vq->last_avail_idx, num, &aidx);
        if (pending == 0)
            return 0;
        if (pending < 0) {
            vp_vring_dev_break(vq, "avail index moved from %u to %u (more than num %u)",
                               vq->last_avail_idx, aidx, num);
            return -EIO;
        }
        /* Read avail->idx before the ring entries and the descriptors it makes
         * visible (pairs with the driver's release fence before its avail->idx
         * store; vhost_get_vq_desc's smp_rmb). Entries up to the shadow were all
         * published before that store, so they need no fence of their own. */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        vq->avail_shadow = aidx;
        /* Start the misses on the next heads of the batch (this one is read now);
         * each later pop prefetches the one DEV_PREFETCH_AHEAD places ahead. */
        for (unsigned k = 1; k <= DEV_PREFETCH_AHEAD && k < (unsigned)pending; k++)
            dev_prefetch_head(vq, (uint16_t)(vq->last_avail_idx + k));
    } else if ((uint16_t)(vq->avail_shadow - vq->last_avail_idx) > DEV_PREFETCH_AHEAD) {
        dev_prefetch_head(vq, (uint16_t)(vq->last_avail_idx + DEV_PREFETCH_AHEAD));
    }

    uint16_t h = sh_ld16(avail_ring(m, vq->last_avail_idx & (num - 1)));
    if (h >= num) {
        vp_vring_dev_break(vq, "avail ring entry %u: head %u >= num %u",
                           vq->last_avail_idx, h, num);
        return -EIO;
    }

    uint32_t i = h;
    unsigned count = 0;
    uint64_t total = 0;
    bool seen_write = false;
    for (;;) {
        if (count >= num) {
            vp_vring_dev_break(vq, "descriptor chain from head %u longer than num %u (loop)",
                               h, num);
            return -EIO;
        }
        if (count >= max_segs) {
            vp_vring_dev_break(vq, "descriptor chain from head %u longer than max_segs %u",
                               h, max_segs);
            return -EIO;
        }
        /* Each descriptor field read once into a local. */
        const unsigned char *d = desc_at(m, i);
        uint64_t addr = sh_ld64(d + DESC_ADDR);
        uint32_t len = sh_ld32(d + DESC_LEN);
        uint16_t flags = sh_ld16(d + DESC_FLAGS);
        uint16_t next = sh_ld16(d + DESC_NEXT);

        if (flags & VP_VRING_DESC_F_INDIRECT) {
            vp_vring_dev_break(vq, "descriptor %u: INDIRECT flag not negotiated", i);
            return -EIO;
        }
        bool write = flags & VP_VRING_DESC_F_WRITE;
        if (!write && seen_write) {
            vp_vring_dev_break(vq, "descriptor %u: readable after writable in chain from head %u",
                               i, h);
            return -EIO;
        }
        seen_write |= write;
        total += len;
        if (total > UINT32_MAX) {
            vp_vring_dev_break(vq, "descriptor chain from head %u: total length over 4 GiB", h);
            return -EIO;
        }
        segs[count].addr = addr;
        segs[count].len = len;
        segs[count].write = write;
        count++;
        if (!(flags & VP_VRING_DESC_F_NEXT))
            break;
        if (next >= num) {
            vp_vring_dev_break(vq, "descriptor %u: next %u >= num %u", i, next, num);
            return -EIO;
        }
        i = next;
    }
    vq->last_avail_idx++;
    *nsegs = count;
    *head = h;
    return 1;
}

int vp_vring_dev_push(struct vp_vring_dev *vq, uint16_t head, uint32_t len)
{
    if (vq->broken)
        return -EIO;
    if (head >= vq->mem.num) {
        vp_vring_dev_break(vq, "push of head %u >= num %u", head, vq->mem.num);
        return -EIO;
    }
    void *e = used_elem(&vq->mem, vq->used_idx & (vq->mem.num - 1));
    sh_st32(e, head);
    sh_st32((unsigned char *)e + 4, len);
    vq->used_idx++;
    return 0;
}

void vp_vring_dev_flush(struct vp_vring_dev *vq)
{
    if (vq->broken)
        return;
    /* Used ring entries (and the buffers they describe) before used->idx (pairs with
     * the driver's acquire fence after reading used->idx; vhost_add_used_n's
     * smp_wmb). */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    sh_st16(used_idx(&vq->mem), vq->used_idx);
    vq->used_published = vq->used_idx;
}

bool vp_vring_dev_need_notify(struct vp_vring_dev *vq)
{
    if (vq->broken)
        return false;
    /* Used idx store before reading used_event / avail flags: a full barrier, else
     * the driver may re-enable interrupts (write used_event, then read the old
     * used->idx) while we read the old used_event, and nobody wakes it
     * (vhost_notify's smp_mb, pairs with the one in vp_vring_drv_set_notify). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);

    if (!vq->event_idx) {
        uint16_t flags = sh_ld16(avail_flags(&vq->mem));
        return !(flags & VP_VRING_AVAIL_F_NO_INTERRUPT);
    }
    uint16_t old = vq->signalled_used;
    bool valid = vq->signalled_used_valid;
    uint16_t new_idx = vq->used_idx;
    vq->signalled_used = new_idx;
    vq->signalled_used_valid = true;
    if (!valid)
        return true;
    uint16_t event = sh_ld16(used_event(&vq->mem));
    return vp_vring_need_event(event, new_idx, old);
}

/* Turn on or off the notifications one side wants from its peer; the device and
 * driver sides are mirror images of each other:
 *   device: our flags = used->flags (NO_NOTIFY), our event = avail_event, peer
 *           index = avail->idx, last = last_avail_idx;
 *   driver: our flags = avail->flags (NO_INTERRUPT), our event = used_event, peer
 *           index = used->idx, last = last_used_idx.
 * Returns true when, on enabling, the peer already moved its index past @last. */
static bool set_notify(bool event_idx, bool enable, void *flags, uint16_t off_flag,
                       void *event, const void *peer_idx, uint16_t last)
{
    if (!enable) {
        /* With EVENT_IDX flags must stay 0 (virtio 1.0 2.4.7.1 driver, 2.4.8.2
         * device); a stale event index lets through at most one more notification,
         * as in vhost and virtio_ring. */
        if (!event_idx)
            sh_st16(flags, off_flag);
        return false;
    }
    if (event_idx)
        sh_st16(event, last);
    else
        sh_st16(flags, 0);
    /* Event index / flags store before re-reading the peer's index: a full barrier,
     * else an entry the peer publishes right now could be missed by both sides.
     * Device: vhost_enable_notify's smp_mb, pairs with the one in kick_prepare.
     * Driver: virtqueue_enable_cb's virtio_mb, pairs with vp_vring_dev_need_notify. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t idx = sh_ld16(peer_idx);
    return idx != last;
}

bool vp_vring_dev_set_notify(struct vp_vring_dev *vq, bool enable)
{
    if (vq->broken)
        return false;
    const struct vp_vring_mem *m = &vq->mem;
    return set_notify(vq->event_idx, enable, used_flags(m), VP_VRING_USED_F_NO_NOTIFY,
                      avail_event(m), avail_idx(m), vq->last_avail_idx);
}

bool vp_vring_dev_has_avail(struct vp_vring_dev *vq)
{
    if (vq->broken)
        return false;
    uint16_t aidx = sh_ld16(avail_idx(&vq->mem));
    return aidx != vq->last_avail_idx;
}

/* ------------------------------ driver side ------------------------------ */

static void drv_break(struct vp_vring_drv *vq, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void drv_break(struct vp_vring_drv *vq, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vp_vbreak(&vq->broken, vq->why, sizeof(vq->why), fmt, ap);
    va_end(ap);
}

int vp_vring_drv_init(struct vp_vring_drv *vq, const struct vp_vring_mem *mem, bool event_idx)
{
    int r = check_mem(mem);
    if (r < 0)
        return r;
    memset(vq, 0, sizeof(*vq));
    const uint32_t num = mem->num;
    vq->next = calloc(num, sizeof(*vq->next));
    vq->chain_len = calloc(num, sizeof(*vq->chain_len));
    vq->token = calloc(num, sizeof(*vq->token));
    if (!vq->next || !vq->chain_len || !vq->token) {
        vp_vring_drv_destroy(vq);
        return -ENOMEM;
    }
    vq->mem = *mem;
    vq->event_idx = event_idx;
    memset(mem->desc, 0, vp_vring_desc_size(num));
    memset(mem->avail, 0, vp_vring_avail_size(num));
    memset(mem->used, 0, vp_vring_used_size(num));
    for (uint32_t i = 0; i < num; i++)
        vq->next[i] = (uint16_t)(i + 1); /* the last one is never followed */
    vq->free_head = 0;
    vq->num_free = (uint16_t)num;
    return 0;
}

void vp_vring_drv_destroy(struct vp_vring_drv *vq)
{
    free(vq->next);
    free(vq->chain_len);
    free(vq->token);
    vq->next = NULL;
    vq->chain_len = NULL;
    vq->token = NULL;
    vq->num_free = 0;
}

int vp_vring_drv_add(struct vp_vring_drv *vq, const struct vp_vring_seg *segs,
                     unsigned nout, unsigned nin, void *token)
{
    if (vq->broken)
        return -EIO;
    const struct vp_vring_mem *m = &vq->mem;
    const uint32_t num = m->num;
    if (nout > num || nin > num)
        return -ENOSPC;
    unsigned total = nout + nin;
    if (total == 0)
        return -EINVAL;
    if (total > vq->num_free)
        return -ENOSPC;

    /* Descriptors come from the private free list; desc[].next is written from the
     * private next[] shadow and never read back. */
    uint16_t head = vq->free_head;
    uint16_t i = head;
    for (unsigned k = 0; k < total; k++) {
        unsigned char *d = desc_at(m, i);
        bool last = k + 1 == total;
        uint16_t flags = (uint16_t)((k >= nout ? VP_VRING_DESC_F_WRITE : 0) |
                                    (last ? 0 : VP_VRING_DESC_F_NEXT));
        sh_st64(d + DESC_ADDR, segs[k].addr);
        sh_st32(d + DESC_LEN, segs[k].len);
        sh_st16(d + DESC_FLAGS, flags);
        sh_st16(d + DESC_NEXT, last ? 0 : vq->next[i]);
        i = vq->next[i];
    }
    vq->free_head = i;
    vq->num_free = (uint16_t)(vq->num_free - total);
    vq->chain_len[head] = (uint16_t)total;
    vq->token[head] = token;

    sh_st16(avail_ring(m, vq->avail_idx & (num - 1)), head);
    vq->avail_idx++;
    return 0;
}

bool vp_vring_drv_kick_prepare(struct vp_vring_drv *vq)
{
    if (vq->broken)
        return false;
    const struct vp_vring_mem *m = &vq->mem;
    /* Descriptor and avail ring writes before avail->idx (pairs with the device's
     * acquire fence after reading avail->idx; virtqueue_add_split's virtio_wmb). */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    sh_st16(avail_idx(m), vq->avail_idx);
    /* avail->idx store before reading avail_event / used flags: a full barrier, so
     * that either we see the device's new avail_event or it sees our new index
     * (virtqueue_kick_prepare_split's virtio_mb, pairs with vhost_enable_notify). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);

    uint16_t old = vq->kicked_avail;
    uint16_t new_idx = vq->avail_idx;
    vq->kicked_avail = new_idx;
    if (old == new_idx)
        return false; /* nothing new since the last decision */
    if (vq->event_idx) {
        uint16_t event = sh_ld16(avail_event(m));
        return vp_vring_need_event(event, new_idx, old);
    }
    uint16_t flags = sh_ld16(used_flags(m));
    return !(flags & VP_VRING_USED_F_NO_NOTIFY);
}

/* Unlike Linux virtqueue_get_buf(), this does not move used_event: interrupts are
 * re-armed only by vp_vring_drv_set_notify(true) (the disable_cb / enable_cb pattern:
 * disable, drain, enable, and drain again when enable returns true). */
int vp_vring_drv_get_used(struct vp_vring_drv *vq, void **token, uint32_t *len)
{
    if (vq->broken)
        return -EIO;
    const struct vp_vring_mem *m = &vq->mem;
    const uint32_t num = m->num;

    uint16_t uidx;
    int pending = peer_pending(used_idx(m), vq->last_used_idx, num, &uidx);
    if (pending == 0)
        return 0;
    if (pending < 0) {
        drv_break(vq, "used index moved from %u to %u (more than num %u)",
                  vq->last_used_idx, uidx, num);
        return -EIO;
    }
    /* Read used->idx before the used ring entry (pairs with the device's release
     * fence before its used->idx store; virtqueue_get_buf_split's virtio_rmb). */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);

    const void *e = used_elem(m, vq->last_used_idx & (num - 1));
    uint32_t id = sh_ld32(e);
    uint32_t ulen = sh_ld32((const unsigned char *)e + 4);
    if (id >= num) {
        drv_break(vq, "used id %u out of range (num %u)", id, num);
        return -EIO;
    }
    uint16_t n = vq->chain_len[id];
    if (n == 0) {
        drv_break(vq, "used id %u is not a head in flight", id);
        return -EIO;
    }

    /* Give the chain back to the free list, walking the private next[] shadow. */
    uint16_t tail = (uint16_t)id;
    for (uint16_t k = 1; k < n; k++)
        tail = vq->next[tail];
    vq->next[tail] = vq->free_head;
    vq->free_head = (uint16_t)id;
    vq->num_free = (uint16_t)(vq->num_free + n);
    vq->chain_len[id] = 0;

    *token = vq->token[id];
    vq->token[id] = NULL;
    *len = ulen;
    vq->last_used_idx++;
    return 1;
}

bool vp_vring_drv_set_notify(struct vp_vring_drv *vq, bool enable)
{
    if (vq->broken)
        return false;
    const struct vp_vring_mem *m = &vq->mem;
    return set_notify(vq->event_idx, enable, avail_flags(m), VP_VRING_AVAIL_F_NO_INTERRUPT,
                      used_event(m), used_idx(m), vq->last_used_idx);
}
