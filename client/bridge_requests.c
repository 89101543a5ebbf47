/*
 * bridge_requests.c - the vhost-pci requests the bridge builds (bridge_priv.h): the
 * registration handshake of spec 1.5.1.1 and DEVICE_INFO(DEL) of spec 1.6. They go
 * out as actions (bridge.h); the answers come back as events to
 * bridge_transitions.c.
 */
#include "bridge_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- Requests to the server ---- */

/** DEVICE_INFO(DEL) of our frontend. */
void br_send_del(struct br *br, const char *what)
{
    br->del_token = br_new_token(br);
    br->served_mask = 0;
    br_log(br, BR_LOG_INFO, "%s: DEVICE_INFO(DEL) of net %" PRIu64, what, br_dev_id(br));
    br_emit(br, &(struct br_action){ .type = BR_ACT_SEND_DEVICE_DEL, .token = br->del_token });
}

/** The three-message handshake of spec 1.5.1.1 for the servable rings. Returns the
 *  next state: REGISTERING, or READY while there is no server connection. */
enum br_state br_do_register(struct br *br)
{
    br_timer_stop(br, BR_TIMER_SETTLE);
    uint64_t mask = br_servable_mask(br);
    if (!br->link_up) {
        br_log(br, BR_LOG_MESSAGE, "not connected to the vhost-pci server: the device is "
               "registered once the connection is back");
        return BR_READY;
    }
    if (br->mem.t.n == 0 || mask == 0)
        return BR_READY; /* cannot happen: servable rings lie in memory */
    br_mirror_del_stale(br, false);
    struct vp_device_info *d = &br->dev;
    vp_device_info_init(d); /* unused virtqueues: fds -1 */
    d->op = VP_OP_ADD;
    d->device_type = VP_DEV_NET;
    d->device_id = br_dev_id(br);
    for (unsigned i = 0; i < br->cfg.nqueues; i++) {
        if (!(mask & (1ULL << i)))
            continue;
        struct vp_virtq *q = &d->virtqs[d->nvirtqs++];
        *q = br->ring[i].vq; /* fds: the ring's, lent to the action */
        q->index = i;
        q->last_avail_idx = br_ring_resume_pos(br, i);
    }
    br->reg_nnew = 0;
    unsigned nmem = br->mem.t.n;
    for (unsigned i = 0; i < nmem; i++) {
        br->regions[i] = br_rs_region(&br->mem, i);
        if (!br_rs_same(&br->mirror, &br->regions[i], &br->mem.f[i]))
            br->reg_new_gpa[br->reg_nnew++] = br->regions[i].gpa;
    }
    uint64_t features = br->fe_features & ~(1ULL << VU_F_PROTOCOL_FEATURES) &
                        ~br->cfg.frontend_features;
    br->reg_token = br_new_token(br);
    br->served_mask = mask;
    br_log(br, BR_LOG_INFO, "handshake: MEMORY_INFO(ADD) of %u region(s), FEATURE_BITS 0x%"
           PRIx64 ", DEVICE_INFO(ADD) of net %" PRIu64 " with %u virtqueue(s)", nmem,
           features, br_dev_id(br), d->nvirtqs);
    for (unsigned i = 0; i < nmem; i++)
        br_log(br, BR_LOG_INFO, "  region gpa 0x%" PRIx64 " size 0x%" PRIx64 " mmap_offset 0x%"
               PRIx64, br->regions[i].gpa, br->regions[i].size, br->regions[i].mmap_offset);
    for (unsigned i = 0; i < d->nvirtqs; i++) {
        const struct vp_virtq *q = &d->virtqs[i];
        br_log(br, BR_LOG_INFO, "  virtqueue %u: num %u desc 0x%" PRIx64 " avail 0x%" PRIx64
               " used 0x%" PRIx64 " last_avail_idx %u", q->index, q->num, q->desc, q->avail,
               q->used, q->last_avail_idx);
    }
    /* The server runs its jobs in order: later requests come after these. */
    for (unsigned i = 0; i < nmem; i++)
        br_mirror_put(br, &br->regions[i], &br->mem.f[i]);
    br_emit(br, &(struct br_action){ .type = BR_ACT_SEND_HANDSHAKE, .token = br->reg_token,
                                     .features = features, .nregions = nmem,
                                     .regions = br->regions, .dev = d });
    return BR_REGISTERING;
}
