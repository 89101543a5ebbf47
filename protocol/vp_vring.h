/*
 * vp_vring.h - a virtio 1.0 split virtqueue, driver side and device side, over
 * memory the caller has already mapped (DESIGN sections 3 and 6).
 *
 * Descriptor addresses are opaque u64 here: offsets inside the control area for the
 * controlq, driver VM guest-physical addresses for the data path. The caller
 * translates them (and bounds-checks the translation).
 *
 * Security model: the rings live in memory shared with the other side, which may be
 * hostile and may rewrite any field at any time. Each shared field is read once into
 * a local and validated there; indexes from shared memory are checked against num
 * before use; a descriptor chain longer than num is a loop. Any violation marks the
 * queue broken (sticky): every later call fails with -EIO, and the caller logs it and
 * resets the queue. Nothing here aborts. The driver side keeps private shadows of
 * what it wrote (free list, chain heads) and never trusts the device's copy.
 *
 * Threading: one thread per side per queue. The two sides may run concurrently in
 * different processes; the barriers below make that safe.
 *
 * libc only.
 */
#ifndef VP_VRING_H
#define VP_VRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VP_VRING_DESC_F_NEXT 1
#define VP_VRING_DESC_F_WRITE 2
#define VP_VRING_DESC_F_INDIRECT 4   /* not offered; rejected as malformed */
#define VP_VRING_USED_F_NO_NOTIFY 1
#define VP_VRING_AVAIL_F_NO_INTERRUPT 1

/** Bytes of each part of a split ring of @num entries (virtio 1.0 2.6), including
 *  the event index fields. Alignment: desc 16, avail 2, used 4. */
static inline uint64_t vp_vring_desc_size(uint32_t num) { return 16ULL * num; }
static inline uint64_t vp_vring_avail_size(uint32_t num) { return 6 + 2ULL * num; }
static inline uint64_t vp_vring_used_size(uint32_t num) { return 6 + 8ULL * num; }

/** virtio's vring_need_event(): true when moving the index from @old to @new_idx
 *  crossed @event_idx (all 16-bit, wrap-around safe). */
static inline bool vp_vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

/** One buffer of a descriptor chain, as the device sees it. */
struct vp_vring_seg {
    uint64_t addr;        /* opaque address (see above) */
    uint32_t len;         /* bytes */
    bool write;           /* device-writable */
};

/** The ring memory, already mapped. Pointers must be suitably aligned. */
struct vp_vring_mem {
    void *desc;           /* vp_vring_desc_size(num) bytes */
    void *avail;          /* vp_vring_avail_size(num) bytes */
    void *used;           /* vp_vring_used_size(num) bytes */
    uint32_t num;         /* power of two, 1..32768 */
};

/* ------------------------------ device side ------------------------------ */

/** Device side of one split virtqueue. Fields are private; read via accessors. */
struct vp_vring_dev {
    struct vp_vring_mem mem;
    bool event_idx;       /* VIRTIO_F_RING_EVENT_IDX negotiated */
    bool broken;
    uint16_t last_avail_idx;   /* next avail entry to consume */
    uint16_t avail_shadow;     /* avail->idx as last read (validated): entries up to it
                                  are popped without reading avail->idx again */
    uint16_t used_idx;         /* private shadow of used->idx */
    uint16_t used_published;   /* used->idx as last stored by a flush */
    uint16_t signalled_used;   /* used idx at the last notification */
    bool signalled_used_valid;
    char why[128];             /* why it broke */
};

/**
 * Attach to rings the driver initialised. @last_avail_idx is where to resume (0 for
 * a new queue); the used index is resumed from the shared used->idx, read once, as
 * vhost does (a queue handed over from a previous device keeps its position).
 * Returns 0 or -EINVAL (num not a power of two in range, misaligned pointers).
 */
int vp_vring_dev_init(struct vp_vring_dev *vq, const struct vp_vring_mem *mem,
                      bool event_idx, uint16_t last_avail_idx);

/**
 * Take the next available chain. Fills @segs (capacity @max_segs) and *@nsegs,
 * *@head (the id to give back to vp_vring_dev_push()). Device-readable segments
 * always precede device-writable ones, as virtio requires.
 * Returns 1 when a chain was taken, 0 when the ring is empty, -EIO when the queue is
 * (or now becomes) broken: avail index moved by more than num, head or next index
 * >= num, chain longer than num (loop) or than @max_segs, INDIRECT flag, a readable
 * segment after a writable one, total length over 4 GiB.
 */
int vp_vring_dev_pop(struct vp_vring_dev *vq, struct vp_vring_seg *segs,
                     unsigned max_segs, unsigned *nsegs, uint16_t *head);

/** Put chain @head back as used with @len bytes written. Not visible to the driver
 *  until vp_vring_dev_flush(). -EIO if broken or @head >= num. */
int vp_vring_dev_push(struct vp_vring_dev *vq, uint16_t head, uint32_t len);

/** Publish the used entries pushed so far (release barrier, then used->idx). A
 *  device may publish in the middle of a long batch (e.g. every few frames, never
 *  inside one frame's chains), so that the driver takes the first entries while the
 *  rest are being filled, and decide the interrupt once after the batch's last
 *  flush: vp_vring_dev_need_notify() covers every entry published since the last
 *  notification (virtio 1.0 2.4.7.2). */
void vp_vring_dev_flush(struct vp_vring_dev *vq);

/** Used entries pushed and not yet published by vp_vring_dev_flush(). */
static inline unsigned vp_vring_dev_unpublished(const struct vp_vring_dev *vq)
{
    return (uint16_t)(vq->used_idx - vq->used_published);
}

/** After a flush: true when the driver wants an interrupt (used_event /
 *  VRING_AVAIL_F_NO_INTERRUPT, vp_vring_need_event). Updates the signalled mark. */
bool vp_vring_dev_need_notify(struct vp_vring_dev *vq);

/** Ask the driver for kicks (true) or not (false): writes avail_event =
 *  last_avail_idx with EVENT_IDX, VRING_USED_F_NO_NOTIFY otherwise. When enabling,
 *  returns true if buffers arrived meanwhile (re-check before sleeping). */
bool vp_vring_dev_set_notify(struct vp_vring_dev *vq, bool enable);

/** True when the driver has made buffers available that are not yet popped. */
bool vp_vring_dev_has_avail(struct vp_vring_dev *vq);

/** Mark broken with a reason (printf format); later calls fail with -EIO. */
void vp_vring_dev_break(struct vp_vring_dev *vq, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ------------------------------ driver side ------------------------------ */

/** Driver side of one split virtqueue. Owns private shadows (malloc). */
struct vp_vring_drv {
    struct vp_vring_mem mem;
    bool event_idx;
    bool broken;
    uint16_t avail_idx;        /* private shadow of avail->idx */
    uint16_t last_used_idx;    /* next used entry to read */
    uint16_t free_head;        /* private free list */
    uint16_t num_free;
    uint16_t kicked_avail;     /* avail idx at the last kick decision */
    uint16_t *next;            /* private shadow of desc[i].next for the free list */
    uint16_t *chain_len;       /* descriptors held by each head, 0 when free */
    void **token;              /* caller's pointer per head */
    char why[128];
};

/**
 * Initialise the rings in @mem (zeroes them, builds the free list) and the private
 * state. Returns 0, -EINVAL (bad num or alignment) or -ENOMEM.
 */
int vp_vring_drv_init(struct vp_vring_drv *vq, const struct vp_vring_mem *mem, bool event_idx);
/** Free the private shadows (the ring memory is the caller's). */
void vp_vring_drv_destroy(struct vp_vring_drv *vq);

/**
 * Add one chain: @nout device-readable segments then @nin device-writable ones
 * (segs[i].write is ignored; position decides). @token is returned by get_used.
 * Not visible to the device until vp_vring_drv_kick_prepare().
 * Returns 0, -ENOSPC (not enough free descriptors), -EINVAL (no segments) or -EIO.
 */
int vp_vring_drv_add(struct vp_vring_drv *vq, const struct vp_vring_seg *segs,
                     unsigned nout, unsigned nin, void *token);

/** Publish added chains (release barrier, then avail->idx) and return true when the
 *  device wants a kick (avail_event / VRING_USED_F_NO_NOTIFY). */
bool vp_vring_drv_kick_prepare(struct vp_vring_drv *vq);

/**
 * Take the next used entry: returns 1 with *@token and *@len set, 0 when none,
 * -EIO when broken (used id >= num or not a head in flight, used idx moved by more
 * than num, len larger than the chain's writable bytes is NOT checked here: the
 * caller clamps to its own buffer size).
 */
int vp_vring_drv_get_used(struct vp_vring_drv *vq, void **token, uint32_t *len);

/** Ask the device for interrupts (true) or not: used_event = last_used_idx with
 *  EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT otherwise. When enabling, returns true if
 *  used entries arrived meanwhile. */
bool vp_vring_drv_set_notify(struct vp_vring_drv *vq, bool enable);

/** Free descriptors left. */
static inline unsigned vp_vring_drv_num_free(const struct vp_vring_drv *vq) { return vq->num_free; }

#endif
