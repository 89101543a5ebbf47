/*
 * controlq.c - guest driver side of the control receiveq and transmitq (controlq.h).
 *
 * Security model: the server may rewrite the rings and the buffer pool at any time.
 * vp_vring_drv keeps private shadows and marks a ring broken on any inconsistency
 * (used id not in flight, index jumps); a message is copied out of its buffer once,
 * clamped to the used length and to the slot, before anything looks at it; the
 * decoder (vp_cq_decode, caller) then validates the private copy. The slot of a used
 * buffer comes from our own token, never from shared memory. libc only.
 */
#include "controlq.h"

#include <errno.h>
#include <string.h>

static uint64_t slot_off(const struct gd_cq *cq, unsigned slot)
{
    return cq->buf_off + (uint64_t)slot * VP_CA_BUF_SLOT;
}

/* Tokens are slot + 1 so that no token is NULL. */
static void *slot_token(unsigned slot) { return (void *)(uintptr_t)(slot + 1); }
static unsigned token_slot(void *t) { return (unsigned)((uintptr_t)t - 1); }

static int ring_mem(uint8_t *ca, const struct gd_ca_queue *q, struct vp_vring_mem *m)
{
    *m = (struct vp_vring_mem){ .desc = ca + q->desc_off, .avail = ca + q->avail_off,
                                .used = ca + q->used_off, .num = q->size };
    return 0;
}

int gd_cq_init(struct gd_cq *cq, void *ca, const struct gd_ca_layout *l, vp_error *err)
{
    memset(cq, 0, sizeof(*cq));
    cq->ca = ca;
    cq->ca_size = l->ca_size;
    cq->buf_off = l->buf_off;
    cq->ntx = l->ntx;
    cq->nack = l->nack;
    struct vp_vring_mem rm, tm;
    ring_mem(ca, &l->q[VP_CQ_RECEIVEQ], &rm);
    ring_mem(ca, &l->q[VP_CQ_TRANSMITQ], &tm);
    int r = vp_vring_drv_init(&cq->rxq, &rm, true);
    if (r < 0)
        return vp_fail(err, r, "initialising the control receiveq: %s", strerror(-r));
    r = vp_vring_drv_init(&cq->txq, &tm, true);
    if (r < 0) {
        vp_vring_drv_destroy(&cq->rxq);
        return vp_fail(err, r, "initialising the control transmitq: %s", strerror(-r));
    }
    cq->rings_ready = true;
    for (unsigned i = 0; i < cq->nack; i++)
        cq->ack_free[cq->nack_free++] = (uint16_t)(cq->ntx + cq->nack - 1 - i);
    for (unsigned s = 0; s < cq->ntx; s++) {
        r = gd_cq_repost(cq, s, err);
        if (r < 0) {
            gd_cq_destroy(cq);
            return r;
        }
    }
    return 0;
}

void gd_cq_destroy(struct gd_cq *cq)
{
    if (!cq->rings_ready)
        return;
    vp_vring_drv_destroy(&cq->rxq);
    vp_vring_drv_destroy(&cq->txq);
    cq->rings_ready = false;
}

int gd_cq_take(struct gd_cq *cq, void *buf, size_t buflen, size_t *len, unsigned *slot,
               vp_error *err)
{
    void *token = NULL;
    uint32_t used_len = 0;
    int r = vp_vring_drv_get_used(&cq->txq, &token, &used_len);
    if (r < 0)
        return vp_fail(err, -EIO, "control transmitq broken: %s", cq->txq.why);
    if (r == 0)
        return 0;
    unsigned s = token_slot(token);
    if (s >= cq->ntx) /* cannot happen: tokens are ours */
        return vp_fail(err, -EIO, "control transmitq returned an unknown buffer");
    size_t n = used_len;
    if (n > VP_CA_BUF_SLOT)
        n = VP_CA_BUF_SLOT;
    if (n > buflen)
        n = buflen;
    /* The one read of the message from shared memory. */
    memcpy(buf, cq->ca + slot_off(cq, s), n);
    *len = n;
    *slot = s;
    return 1;
}

int gd_cq_repost(struct gd_cq *cq, unsigned slot, vp_error *err)
{
    struct vp_vring_seg seg = { .addr = slot_off(cq, slot), .len = VP_CA_BUF_SLOT,
                                .write = true };
    int r = vp_vring_drv_add(&cq->txq, &seg, 0, 1, slot_token(slot));
    if (r == -EIO)
        return vp_fail(err, r, "control transmitq broken: %s", cq->txq.why);
    if (r < 0)
        return vp_fail(err, r, "posting transmitq buffer %u: %s", slot, strerror(-r));
    return 0;
}

int gd_cq_reclaim(struct gd_cq *cq, vp_error *err)
{
    int n = 0;
    for (;;) {
        void *token = NULL;
        uint32_t len = 0;
        int r = vp_vring_drv_get_used(&cq->rxq, &token, &len);
        if (r < 0)
            return vp_fail(err, -EIO, "control receiveq broken: %s", cq->rxq.why);
        if (r == 0)
            return n;
        unsigned s = token_slot(token);
        if (s < cq->ntx || s >= cq->ntx + cq->nack || cq->nack_free >= cq->nack)
            return vp_fail(err, -EIO, "control receiveq returned an unknown buffer");
        cq->ack_free[cq->nack_free++] = (uint16_t)s;
        n++;
    }
}

bool gd_cq_can_ack(const struct gd_cq *cq)
{
    return cq->nack_free > 0 && vp_vring_drv_num_free(&cq->rxq) > 0;
}

int gd_cq_send_ack(struct gd_cq *cq, const struct vp_cq_msg *ack, vp_error *err)
{
    if (!gd_cq_can_ack(cq))
        return vp_fail(err, -ENOSPC, "no free ACK buffer");
    unsigned s = cq->ack_free[cq->nack_free - 1];
    int len = vp_cq_encode(ack, cq->ca + slot_off(cq, s), VP_CA_BUF_SLOT);
    if (len < 0)
        return vp_fail(err, -EINVAL, "encoding the ACK failed: %s", strerror(-len));
    struct vp_vring_seg seg = { .addr = slot_off(cq, s), .len = (uint32_t)len };
    int r = vp_vring_drv_add(&cq->rxq, &seg, 1, 0, slot_token(s));
    if (r == -EIO)
        return vp_fail(err, r, "control receiveq broken: %s", cq->rxq.why);
    if (r < 0)
        return vp_fail(err, r, "adding an ACK: %s", strerror(-r));
    cq->nack_free--;
    return 0;
}

unsigned gd_cq_publish(struct gd_cq *cq)
{
    unsigned kicks = 0;
    if (vp_vring_drv_kick_prepare(&cq->rxq))
        kicks |= GD_CQ_KICK_RECEIVEQ;
    if (vp_vring_drv_kick_prepare(&cq->txq))
        kicks |= GD_CQ_KICK_TRANSMITQ;
    return kicks;
}

unsigned gd_cq_arm(struct gd_cq *cq, bool need_ack_space)
{
    unsigned more = 0;
    if (vp_vring_drv_set_notify(&cq->txq, true))
        more |= GD_CQ_MORE_TX;
    if (need_ack_space) {
        if (vp_vring_drv_set_notify(&cq->rxq, true))
            more |= GD_CQ_MORE_RX;
    } else {
        vp_vring_drv_set_notify(&cq->rxq, false);
    }
    return more;
}

const char *gd_cq_broken(const struct gd_cq *cq)
{
    if (cq->txq.broken)
        return cq->txq.why;
    if (cq->rxq.broken)
        return cq->rxq.why;
    return NULL;
}
