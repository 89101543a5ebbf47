/*
 * cqmsg.h - the controlq messages that describe a device's state (DESIGN section 5,
 * spec 1.5/1.6): MEMORY_INFO from the region table, DEVICE_INFO from a frontend,
 * FEATURE_BITS; and the state replay a fresh guest driver needs (after a driver
 * reset, and to initialise a clone: spec 1.6.1.2 "initialised like a new device").
 *
 * Builders only: what a message means to a request is its submitter's business.
 * Main thread.
 */
#ifndef VP_SERVER_CQMSG_H
#define VP_SERVER_CQMSG_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "cq_dev.h"
#include "frontends.h"
#include "windows.h"

/** A MEMORY_INFO(@op) message with no regions yet. */
void srv_cqmsg_mem(struct vp_cq_msg *m, uint16_t op);
/** Append region @r (target: its logical-BAR offset) to MEMORY_INFO @m. */
void srv_cqmsg_add_region(struct vp_cq_msg *m, const struct vp_mt_region *r);
/** Submit MEMORY_INFO(ADD) of every region of @mem on @cq (nothing when none). */
void srv_cqmsg_submit_all_memory(struct srv_cq *cq, const struct srv_memory *mem,
                                 srv_cq_done_fn done, void *opaque);
/** Submit DEVICE_INFO(@op) of @fe on @cq (ADD carries every virtqueue: addresses,
 *  last_avail_idx, call vector; kicks stay with the server). */
void srv_cqmsg_submit_device(struct srv_cq *cq, const struct srv_frontend *fe, uint16_t op,
                             srv_cq_done_fn done, void *opaque);
/** Submit FEATURE_BITS(@bits) on @cq. */
void srv_cqmsg_submit_features(struct srv_cq *cq, uint64_t bits, srv_cq_done_fn done,
                               void *opaque);

/**
 * After a guest driver reset: queue on @cq what a fresh driver must learn, as
 * cloning does: MEMORY_INFO(ADD) of every region, FEATURE_BITS of @features when
 * @have_features, DEVICE_INFO(ADD) per frontend of @frontends, each queue resumed at
 * the used index the old driver published in the driver VM's ring (read through the
 * window files of @mem; the stored position when it cannot be read). No socket
 * traffic; refusals are logged under @name.
 */
void srv_cqmsg_replay(struct srv_cq *cq, const char *name, const struct srv_memory *mem,
                      bool have_features, uint64_t features, GPtrArray *frontends);

#endif
