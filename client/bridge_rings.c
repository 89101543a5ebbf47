/*
 * bridge_rings.c - the rings as the bridge knows them (bridge_priv.h): which can be
 * served, what a ring event changed, where the device VM resumes each one.
 *
 * Security model: ring events come from the vhost-user core (indexes and addresses
 * checked); an index beyond the configured queues is ignored. Each ring's kick and
 * call fds are dups owned by the ring.
 */
#include "bridge_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- Rings ---- */

void br_ring_close(struct br_ring *r)
{
    vp_close_fd(&r->vq.kick_fd);
    vp_close_fd(&r->vq.call_fd);
}

static bool br_ring_servable(const struct br *br, unsigned i)
{
    return i < br->cfg.nqueues && br->ring[i].running && br->ring[i].enabled;
}

/** Virtqueues a registration carries: every queue pair whose two rings can be served,
 *  provided pair 0's can (a NET frontend needs its receiveq and transmitq); 0 when
 *  the device cannot be served. */
uint64_t br_servable_mask(const struct br *br)
{
    if (!br_ring_servable(br, 0) || !br_ring_servable(br, 1))
        return 0;
    uint64_t m = 0;
    for (unsigned p = 0; 2 * p + 1 < br->cfg.nqueues; p++)
        if (br_ring_servable(br, 2 * p) && br_ring_servable(br, 2 * p + 1))
            m |= 3ULL << (2 * p);
    return m;
}

bool br_calls_fresh(const struct br *br, uint64_t mask)
{
    for (unsigned i = 0; i < br->cfg.nqueues; i++)
        if ((mask & (1ULL << i)) && !br->ring[i].call_fresh)
            return false;
    return true;
}

/** Record what a RING_STARTED / RING_CHANGED event says. */
enum br_ring_change br_ring_record(struct br *br, const struct br_event *ev)
{
    const struct vu_vring_info *in = &ev->ring;
    uint32_t i = in->vq.index;
    if (i >= br->cfg.nqueues) {
        br_log(br, BR_LOG_WARNING, "virtqueue %u: out of range (%u): ignored", i,
               br->cfg.nqueues);
        return BR_RC_NONE;
    }
    struct br_ring *r = &br->ring[i];
    bool was_enabled = r->enabled;
    r->enabled = in->enabled;
    r->call_fresh = in->call_fresh;
    enum br_ring_change c;
    if (ev->type == BR_EV_RING_STARTED) {
        br_ring_close(r);
        r->vq = in->vq;
        r->vq.kick_fd = br_dup_fd(in->vq.kick_fd);
        r->vq.call_fd = br_dup_fd(in->vq.call_fd);
        r->pos = in->vq.last_avail_idx;
        r->pos_from_device = false;
        r->running = true;
        c = BR_RC_STARTED;
    } else if (in->running && r->running && was_enabled == in->enabled) {
        br_ring_close(r);
        r->vq.kick_fd = br_dup_fd(in->vq.kick_fd);
        r->vq.call_fd = br_dup_fd(in->vq.call_fd);
        c = BR_RC_FDS;
    } else {
        c = BR_RC_ENABLE;
    }
    br_log(br, BR_LOG_INFO, "virtqueue %u %s (%s, %s, kick fd %s, call fd %s%s)", i,
           c == BR_RC_STARTED ? "runs" : c == BR_RC_FDS ? "has new fds" : "changed",
           r->running ? "running" : "not running", r->enabled ? "enabled" : "disabled",
           r->vq.kick_fd >= 0 ? "set" : "none", r->vq.call_fd >= 0 ? "set" : "none",
           r->call_fresh ? ", fresh" : "");
    return c;
}

void br_rings_reset(struct br *br)
{
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++) {
        br_ring_close(&br->ring[i]);
        memset(&br->ring[i], 0, sizeof(br->ring[i]));
        br->ring[i].vq.kick_fd = br->ring[i].vq.call_fd = -1;
    }
}

/** Where the device VM resumes ring @i: its position, unless the ring's used index
 *  says otherwise (a frontend that reconnected and set a base that disagrees with its
 *  ring): then, as DPDK's vhost library does, from the used index. */
uint16_t br_ring_resume_pos(struct br *br, unsigned i)
{
    struct br_ring *r = &br->ring[i];
    uint16_t used;
    if (br_read_used_idx(br, r->vq.used, &used) == 0 && used != r->pos) {
        br_log(br, BR_LOG_WARNING, "virtqueue %u: the frontend set base %u but the ring's "
               "used index is %u: resuming from the used index (as DPDK's vhost library "
               "does after a reconnect)", i, r->pos, used);
        r->pos = used;
    }
    return r->pos;
}

bool br_any_running(const struct br *br)
{
    for (unsigned i = 0; i < br->cfg.nqueues; i++)
        if (br->ring[i].running)
            return true;
    return false;
}
