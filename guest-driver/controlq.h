/*
 * controlq.h - the guest driver's side of the two control queues in the control area
 * (DESIGN sections 3 and 5, spec 1.2): guestd is the DRIVER of both.
 *
 *  - transmitq (queue 1, device -> driver): guestd posts ntx device-writable buffers
 *    of VP_CA_BUF_SLOT bytes from the buffer pool; the server writes a message into
 *    one and returns it used with the message length.
 *  - receiveq (queue 0, driver -> device): guestd writes each ACK into a free buffer
 *    of the pool and adds it device-readable; the server returns it used.
 *
 * Buffer pool: slot i is at buf_off + i * VP_CA_BUF_SLOT; slots [0, ntx) belong to
 * the transmitq, [ntx, ntx + nack) to the receiveq. Descriptor addresses are
 * control-area offsets.
 *
 * Ownership: the rings and pool are in the caller's control area mapping; the
 * struct owns only the private vring shadows. Single-threaded.
 */
#ifndef GD_CONTROLQ_H
#define GD_CONTROLQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctrlarea.h"
#include "vp_common.h"
#include "vp_controlq.h"
#include "vp_vring.h"

/* Doorbells gd_cq_publish() asks for (bit per server vector). */
#define GD_CQ_KICK_RECEIVEQ (1u << VP_VEC_RECEIVEQ_KICK)
#define GD_CQ_KICK_TRANSMITQ (1u << VP_VEC_TRANSMITQ_KICK)

struct gd_cq {
    uint8_t *ca;
    uint64_t ca_size;
    uint64_t buf_off;
    unsigned ntx, nack;
    struct vp_vring_drv rxq;      /* control receiveq: our ACKs */
    struct vp_vring_drv txq;      /* control transmitq: the server's messages */
    bool rings_ready;
    unsigned nack_free;
    uint16_t ack_free[VP_MAX_VRING_NUM]; /* stack of free ACK slot numbers */
};

/**
 * Initialise both rings at the offsets of @l (validated by gd_ca_read_layout) inside
 * @ca (@l->ca_size bytes), with event indexes, and add the ntx transmitq buffers
 * (not yet published: gd_cq_publish). Returns 0 or -errno with a reason.
 */
int gd_cq_init(struct gd_cq *cq, void *ca, const struct gd_ca_layout *l, vp_error *err);

/** Free the private shadows. */
void gd_cq_destroy(struct gd_cq *cq);

/**
 * Take the next message from the transmitq: copies it out of shared memory once
 * into @buf (@buflen >= VP_CA_BUF_SLOT), clamped to the used length and the slot.
 * Returns 1 with *@len and *@slot (give it back with gd_cq_repost), 0 when none,
 * -EIO when the ring is broken (reason in @err).
 */
int gd_cq_take(struct gd_cq *cq, void *buf, size_t buflen, size_t *len, unsigned *slot,
               vp_error *err);

/** Post transmitq slot @slot again (device-writable). 0 or -EIO/-ENOSPC with a reason. */
int gd_cq_repost(struct gd_cq *cq, unsigned slot, vp_error *err);

/** Take back the ACK buffers the device has consumed. Returns how many, or -EIO. */
int gd_cq_reclaim(struct gd_cq *cq, vp_error *err);

/** True when an ACK can be sent now (a free ACK slot and descriptor). */
bool gd_cq_can_ack(const struct gd_cq *cq);

/**
 * Encode @ack into a free ACK slot and add it to the receiveq (published by
 * gd_cq_publish). Returns 0, -ENOSPC (no free slot: reclaim first), -EINVAL (encode
 * failed) or -EIO, with a reason in @err.
 */
int gd_cq_send_ack(struct gd_cq *cq, const struct vp_cq_msg *ack, vp_error *err);

/** Publish what was added to both rings; returns GD_CQ_KICK_* bits for the queues
 *  whose device side asked to be kicked. */
unsigned gd_cq_publish(struct gd_cq *cq);

/* What gd_cq_arm() found pending after re-enabling notifications. */
#define GD_CQ_MORE_TX 1u   /* transmitq messages are waiting */
#define GD_CQ_MORE_RX 2u   /* consumed ACK buffers are waiting (only with need_ack_space) */

/**
 * Ask the server for a controlq interrupt on the next transmitq message and, when
 * @need_ack_space, on the next consumed ACK buffer. Returns GD_CQ_MORE_* bits for
 * what arrived meanwhile (service again before sleeping), 0 when it is safe to sleep.
 */
unsigned gd_cq_arm(struct gd_cq *cq, bool need_ack_space);

/** Whether a ring is broken, and why (NULL when neither). */
const char *gd_cq_broken(const struct gd_cq *cq);

#endif
