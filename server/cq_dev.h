/*
 * cq_dev.h - the device side of a vhost-pci device's controlq (DESIGN sections 3 and
 * 5, spec 1.2/1.5): queue 0 is the control receiveq (the guest driver's ACKs), queue
 * 1 the control transmitq (the server's messages), both split virtqueues inside the
 * control area. The engine follows device_status and the driver-reset handshake,
 * sends queued messages when the driver has posted buffers, and matches the
 * driver's ACKs to outstanding messages by msg_seq.
 *
 * It knows nothing about what the messages mean: each message carries a completion
 * (srv_cq_done_fn) that gets the driver's ACK or a failure, exactly once. Its owner
 * (device.c) gives it the control area and the interrupt eventfd, services it when a
 * kick arrives, and learns through hooks when the driver reaches DRIVER_OK.
 *
 * Security model: the guest driver may be hostile and may rewrite any byte of the
 * control area at any time. device_status and reset_req are read once per service
 * into locals; the rings go through vp_vring_dev (each shared field read once, the
 * queue broken on any inconsistency); every descriptor address must lie inside the
 * buffer pool (srv_ca_in_pool, overflow-proof) before a byte is copied; a message is
 * copied once into a private buffer and only then decoded (vp_cq_decode checks every
 * count). A malformed message or a broken ring makes this device NEEDS_RESET
 * (srv_cq_break) and fails its outstanding messages; other devices carry on. ACKs
 * that match no outstanding message, or do not answer it, are counted and ignored.
 *
 * Main thread only.
 */
#ifndef VP_SERVER_CQ_DEV_H
#define VP_SERVER_CQ_DEV_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "ctrlarea.h"
#include "vp_controlq.h"
#include "vp_vring.h"

/** Completion of a controlq message: @ack is the guest driver's ACK (already matched
 *  to the message: type, seq, result fits the op, same device), or NULL with @fail
 *  set (device broken, destroyed, superseded). Called exactly once. */
typedef void (*srv_cq_done_fn)(void *opaque, const struct vp_cq_msg *ack, const char *fail);

/** The owner's hooks. */
struct srv_cq_hooks {
    /** The driver set DRIVER_OK and the rings are attached. @replay: this follows a
     *  driver reset, and the owner must queue the device state now (messages
     *  submitted during this call are marked replay messages and go ahead of the
     *  ones held back from the old driver). */
    void (*driver_ok)(void *opaque, bool replay);
    /** A message was queued: call srv_cq_service() soon, from the main loop, keeping
     *  the engine's memory alive meanwhile. */
    void (*schedule)(void *opaque);
};

/** One controlq device side. Fields are read by mgmt; written only here. */
struct srv_cq {
    const char *name;                    /* for logs: the device's uuid text */
    struct srv_ctrlarea *ca;             /* the control area (the owner's) */
    int irq_fd;                          /* id 1 vector 0: interrupt into the device VM */
    const struct srv_cq_hooks *hooks;
    void *opaque;
    uint64_t *bad_messages;              /* the server's counter (may be NULL) */
    bool closed;                         /* srv_cq_close(): nothing is serviced */

    uint32_t status;                     /* device_status last read */
    bool driver_ok;
    bool broken;                         /* NEEDS_RESET (sticky until a driver reset) */
    char broken_reason[256];
    struct vp_vring_dev rxq, txq;
    uint64_t next_seq;
    GQueue out;                          /* struct srv_cq_op* waiting for a buffer */
    GHashTable *pending;                 /* guint64* seq -> struct srv_cq_op* (sent) */
    uint32_t reset_seen;                 /* last reset_req answered (reset_done) */
    bool replay_due;                     /* driver reset: replay the state at DRIVER_OK */
    bool replaying;                      /* srv_cq_submit marks ops as replay ops */
    struct {
        uint64_t tx, rx, acks_ok, acks_fail, bad_acks;
        uint64_t resets;                 /* guest driver resets taken back */
    } counters;
};

/** Initialise @cq over @ca (which must stay mapped until srv_cq_close()). @name is
 *  borrowed. */
void srv_cq_init(struct srv_cq *cq, const char *name, struct srv_ctrlarea *ca, int irq_fd,
                 const struct srv_cq_hooks *hooks, void *opaque, uint64_t *bad_messages);

/** Fail every message (queued or sent) with @why, then stop for good: later
 *  services do nothing, later submits fail at once. Idempotent. */
void srv_cq_close(struct srv_cq *cq, const char *why);

/** Free what srv_cq_init() allocated (after srv_cq_close()). */
void srv_cq_destroy(struct srv_cq *cq);

/** Read the status, take the driver's ACKs, send queued messages. Completions run
 *  from here; the caller keeps the engine alive across the call. */
void srv_cq_service(struct srv_cq *cq);

/**
 * Queue message @m (its seq and version are assigned here). Sent once the driver is
 * DRIVER_OK and has a transmitq buffer. Returns the seq; @done is called exactly once
 * (from a later service, or from srv_cq_break()/srv_cq_close()).
 */
uint64_t srv_cq_submit(struct srv_cq *cq, struct vp_cq_msg *m, srv_cq_done_fn done,
                       void *opaque);

/** Mark the device NEEDS_RESET: log, write the status bit, interrupt, fail every
 *  outstanding message with the reason. No-op when already broken or closed. */
void srv_cq_break(struct srv_cq *cq, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/** Interrupt the device VM (id 1 vector 0): messages, or a window table change. */
void srv_cq_irq(struct srv_cq *cq);

/** The guest driver's reason in @ack, or @dflt when it gave none. */
static inline const char *srv_cq_ack_reason(const struct vp_cq_msg *ack, const char *dflt)
{
    return ack->u.ack.reason[0] ? ack->u.ack.reason : dflt;
}

#endif
