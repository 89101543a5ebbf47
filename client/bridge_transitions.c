/*
 * bridge_transitions.c - the bridge's transition table and its handlers
 * (bridge_priv.h): what each event does in each state. bridge.c runs the table.
 *
 * Security model: as bridge.c's. Events carry what the vhost-user core validated
 * and what libvhostpci-client matched; server answers are trusted only as far as
 * bridge.c says (results and reasons logged, features masked with the offer,
 * positions applied only to rings the frontend has).
 */
#include "bridge_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- Handlers ----
 * Each returns the next state, which must be among its table row's allowed ones. */

static enum br_state h_fe_connected(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br_rings_reset(br);
    br_rs_clear(&br->mem);
    br->fe_features = 0;
    br->wait = BR_WAIT_NONE;
    return BR_CONFIGURING;
}

/** The frontend is gone: the device VM forgets its frontend and memory. */
static enum br_state h_fe_gone(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br_timer_stop(br, BR_TIMER_SETTLE);
    br_timer_stop(br, BR_TIMER_FEATURES);
    if (br->link_up && (br->state == BR_REGISTERING || br->state == BR_SERVED ||
                        br->state == BR_RENEGOTIATING))
        br_send_del(br, "the frontend disconnected");
    br->reg_token = 0;
    br->served_mask = 0;
    br->wait = BR_WAIT_NONE;
    vp_close_fd(&br->memop.file.fd);
    br->memop.token = 0;
    br_rings_reset(br);
    br_rs_clear(&br->mem);
    br_mirror_del_stale(br, true);
    return br->state == BR_SHUTDOWN ? BR_SHUTDOWN : BR_IDLE;
}

static enum br_state h_get_features(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->wait = BR_WAIT_FEATURES;
    if (br->feat != BR_FEAT_UNKNOWN) {
        br_reply_features(br, br->srv_accepted, br->feat == BR_FEAT_KNOWN ?
                          "accepted by the device VM" : "the protocol's set, provisional");
        return br->state;
    }
    br_log(br, BR_LOG_INFO, "GET_FEATURES: waiting for the vhost-pci server's feature answer "
           "(at most %d ms)", br->cfg.features_wait_ms);
    if (!br->timer_armed[BR_TIMER_FEATURES])
        br_timer_start(br, BR_TIMER_FEATURES, br->cfg.features_wait_ms);
    return br->state;
}

static enum br_state h_features_timer(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->timer_armed[BR_TIMER_FEATURES] = false;
    if (br->feat != BR_FEAT_UNKNOWN)
        return br->state;
    br->feat = BR_FEAT_PROVISIONAL;
    br->srv_accepted = br->cfg.offer & VP_NET_FEATURES;
    br_log(br, BR_LOG_WARNING, "no feature answer from the vhost-pci server within %d ms: "
           "offering the frontend 0x%" PRIx64 " (the handshake's FEATURE_BITS round settles "
           "the final set)", br->cfg.features_wait_ms, br->srv_accepted);
    br_reply_features(br, br->srv_accepted, "server not answering");
    return br->state;
}

static enum br_state h_features_ack(struct br *br, const struct br_event *ev)
{
    if (ev->token != br->feat_token)
        return br->state;
    br->feat_token = 0;
    bool via_device = br->feat_via_device;
    br->feat_via_device = false;
    if (ev->status != BR_OK) {
        br_log(br, BR_LOG_WARNING, "feature negotiation with the vhost-pci server failed: %s",
               br_why(ev));
        return br->state;
    }
    uint64_t acc = ev->features & br->cfg.offer;
    if (br->feat != BR_FEAT_KNOWN || acc != br->srv_accepted)
        br_log(br, BR_LOG_MESSAGE, "device VM accepts virtio features 0x%" PRIx64 " of the "
               "offered 0x%" PRIx64 "%s", acc, br->cfg.offer,
               via_device ? " (its driver's FEATURE_BITS_ACK)" : "");
    if (via_device && acc != br->cfg.offer) {
        /* Spec 1.5.1.1 before the frontend negotiated: re-negotiating with our driver is
         * offering it only the accepted bits; the server waits for the confirmation. */
        br_log(br, BR_LOG_MESSAGE, "feature renegotiation (spec 1.5.1.1): FEATURE_BITS_ACK "
               "0x%" PRIx64 " has fewer bits than the offered 0x%" PRIx64 " (refused 0x%" PRIx64
               "): the frontend is offered only the accepted bits; confirming them with "
               "FEATURE_BITS_ACK", acc, br->cfg.offer, br->cfg.offer & ~acc);
        br_emit(br, &(struct br_action){ .type = BR_ACT_CONFIRM_FEATURES, .token = ev->token,
                                         .features = acc });
    }
    br->feat = BR_FEAT_KNOWN;
    br->srv_accepted = acc;
    br_reply_features(br, acc, "accepted by the device VM");
    return br->state;
}

static enum br_state h_features_set(struct br *br, const struct br_event *ev)
{
    br->fe_features = ev->features;
    return br->state;
}

/** What the frontend is told of a refusal, for the log. */
static const char *refusal_effect(const struct br *br, const struct br_memop *m)
{
    if (m->may_refuse)
        return "the frontend gets a failure reply";
    if (br->cfg.log_refusals_only)
        return "--memory-refusal log: the frontend gets success";
    return "the frontend is (re)starting its device, which a failure reply would stop: it "
           "gets success";
}

/** A memory change of the frontend (BR_EV_MEM_ADD / _DEL).
 *  Memory goes to the server at once when the server holds memory of ours, or holds
 *  none yet (the frontend sets up its memory: DPDK's SET_MEM_TABLE, QEMU's ADD_MEM_REG
 *  at start). The server's verdict is the frontend's answer when a refusal may fail
 *  the request: with --memory-refusal reply, while a ring runs (a hot-plug: QEMU only
 *  logs the failure and keeps the region out) or when it is the first memory (without
 *  it nothing can be served: DPDK then reports a failed start, QEMU a failed vhost
 *  start, each in its own words). While a frontend restarts its device with memory the
 *  server already has, a failure would stop the frontend's networking altogether
 *  (QEMU: "falling back on userspace virtio"), so it gets success and the device is
 *  served with the memory the device VM could take. */
static enum br_state h_mem_change(struct br *br, const struct br_event *ev)
{
    bool add = ev->type == BR_EV_MEM_ADD;
    struct vp_region reg = ev->region;
    struct br_file file = br_no_file();
    int have_id = br_file_identity(reg.fd, &file.st_dev, &file.st_ino, NULL);
    reg.fd = -1;
    br->wait = BR_WAIT_MEM;
    if (add && (!br->link_up || (have_id == 0 && br_rs_same(&br->mirror, &reg, &file)))) {
        file.fd = br_dup_fd(ev->region.fd);
        br_log(br, BR_LOG_INFO, "region gpa 0x%" PRIx64 " size 0x%" PRIx64 " added%s",
               reg.gpa, reg.size, br->link_up ? " (the server has it)" :
               "; the device VM gets it with the next handshake");
        br_rs_put(br, &br->mem, &reg, &file);
        br_reply_mem(br, 0);
        return br->state;
    }
    if (!add && (!br->link_up || br_rs_find(&br->mirror, reg.gpa) < 0)) {
        br_log(br, BR_LOG_INFO, "region gpa 0x%" PRIx64 " size 0x%" PRIx64 " removed (not on "
               "the server)", reg.gpa, reg.size);
        br_rs_remove(&br->mem, reg.gpa);
        br_reply_mem(br, 0);
        return br->state;
    }
    struct br_memop *m = &br->memop;
    vp_close_fd(&m->file.fd);
    m->token = br_new_token(br);
    m->op = add ? VP_OP_ADD : VP_OP_DEL;
    m->running = br_any_running(br);
    m->may_refuse = !br->cfg.log_refusals_only &&
                    (m->running || (add && br->mirror.t.n == 0));
    m->reg = reg;
    m->file = file;
    m->file.fd = add ? br_dup_fd(ev->region.fd) : -1;
    br->regions[0] = reg;
    br->regions[0].fd = m->file.fd;
    br_log(br, BR_LOG_INFO, "%s: MEMORY_INFO(%s) of gpa 0x%" PRIx64 " size 0x%" PRIx64,
           m->running ? (add ? "hot-add" : "hot-remove") : "memory", add ? "ADD" : "DEL",
           reg.gpa, reg.size);
    br_emit(br, &(struct br_action){ .type = BR_ACT_SEND_MEMORY, .token = m->token, .op = m->op,
                                     .nregions = 1, .regions = br->regions });
    return br->state;
}

static enum br_state h_mem_ack(struct br *br, const struct br_event *ev)
{
    struct br_memop *m = &br->memop;
    if (br_ph_mem_ack(br, ev))
        return br->state;
    if (ev->token == 0 || ev->token != m->token) {
        /* A fire-and-forget MEMORY_INFO(DEL) (stale regions, a frontend that left). */
        if (ev->status == BR_OK)
            br_log(br, BR_LOG_INFO, "MEMORY_INFO_ACK(DEL_DONE)");
        else
            br_log(br, BR_LOG_WARNING, "MEMORY_INFO(DEL) failed: %s", br_why(ev));
        return br->state;
    }
    m->token = 0;
    const struct vp_region *reg = &m->reg;
    bool add = m->op == VP_OP_ADD;
    const char *what = m->running ? (add ? "hot-add" : "hot-remove") : (add ? "add" : "removal");
    if (ev->status == BR_OK) {
        if (add) {
            br_mirror_put(br, reg, &m->file);
            br_rs_put(br, &br->mem, reg, &m->file);
            br_ph_retire(br);
        } else {
            br_rs_remove(&br->mirror, reg->gpa);
            br_rs_remove(&br->mem, reg->gpa);
        }
        if (m->running)
            br_log(br, BR_LOG_MESSAGE, "hot-%s region gpa 0x%" PRIx64 " size 0x%" PRIx64
                   ": MEMORY_INFO_ACK(%s)", add ? "added" : "removed", reg->gpa,
                   reg->size, add ? "ADD_DONE" : "DEL_DONE");
        else
            br_log(br, BR_LOG_INFO, "memory: region gpa 0x%" PRIx64 " size 0x%" PRIx64
                   " %s the device VM", reg->gpa, reg->size,
                   add ? "taken by" : "removed from");
        br_reply_mem(br, 0);
        return br->state;
    }
    char fix[512] = "";
    if (add)
        br_refusal_fix(m->file.fd, fix, sizeof(fix));
    bool first = add && br->mirror.t.n == 0 && !m->running;
    br_log(br, first && m->may_refuse ? BR_LOG_ERROR : BR_LOG_WARNING,
           "%s of region gpa 0x%" PRIx64 " size 0x%" PRIx64 " failed: %s (%s%s)%s", what,
           reg->gpa, reg->size, br_why(ev), refusal_effect(br, m),
           add ? "; the device VM cannot reach buffers placed there" : "", fix);
    if (m->may_refuse) {
        vp_close_fd(&m->file.fd);
        br_reply_mem(br, -EIO);
    } else if (add) {
        br_rs_put(br, &br->mem, reg, &m->file); /* the frontend has it: offered again */
        br_reply_mem(br, 0);
    } else {
        br_rs_remove(&br->mem, reg->gpa);
        br_reply_mem(br, 0);
    }
    return br->state;
}

/* Rings, before registration: CONFIGURING <-> READY (and a refused device retried). */
static enum br_state h_rings_unregistered(struct br *br, const struct br_event *ev)
{
    br_ring_record(br, ev);
    if (br_servable_mask(br)) {
        if (br->state != BR_READY)
            br_timer_start(br, BR_TIMER_SETTLE, br->cfg.settle_ms);
        return BR_READY;
    }
    br_timer_stop(br, BR_TIMER_SETTLE);
    return BR_CONFIGURING;
}

/* Rings of a registered device: a change of what is served reconfigures it
 * (DEVICE_INFO(DEL) for the positions, then ADD again). */
static enum br_state h_rings_registered(struct br *br, const struct br_event *ev)
{
    enum br_ring_change c = br_ring_record(br, ev);
    uint32_t i = ev->ring.vq.index;
    bool in_set = i < 64 && (br->served_mask & (1ULL << i));
    if (c == BR_RC_NONE || (br_servable_mask(br) == br->served_mask &&
                               !(c != BR_RC_ENABLE && in_set)))
        return br->state;
    br_send_del(br, c == BR_RC_FDS ? "new kick/call fds" :
                br->ring[i].enabled ? "a queue pair changed" : "a virtqueue was disabled");
    return BR_STOPPING;
}

static enum br_state h_rings_record(struct br *br, const struct br_event *ev)
{
    br_ring_record(br, ev);
    return br->state;
}

static enum br_state h_drained(struct br *br, const struct br_event *ev)
{
    (void)ev;
    if (!br->link_up || !br_calls_fresh(br, br_servable_mask(br)))
        return BR_READY;
    return br_do_register(br);
}

static enum br_state h_settled(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->timer_armed[BR_TIMER_SETTLE] = false;
    return br_do_register(br);
}

/* GET_VRING_BASE of a ring the device VM does not serve: its position is current. */
static enum br_state h_stop_unserved(struct br *br, const struct br_event *ev)
{
    uint32_t i = ev->index % br->cfg.nqueues; /* the vhost-user core checked it */
    if (br->ring[i].running)
        br_ring_resume_pos(br, i);
    br_reply_vring_base(br, i, br->ring[i].pos_from_device ? "from DEVICE_INFO_ACK(DEL_DONE)" :
                        "the device VM does not serve the queue");
    if (br->state == BR_RENEGOTIATING || br->state == BR_SHUTDOWN)
        return br->state;
    br_timer_stop(br, BR_TIMER_SETTLE);
    return br_servable_mask(br) ? BR_READY : BR_CONFIGURING;
}

/* GET_VRING_BASE of a registered device: DEVICE_INFO(DEL) hands back the positions. */
static enum br_state h_stop_registered(struct br *br, const struct br_event *ev)
{
    br->wait = BR_WAIT_VRING_BASE;
    br->wait_index = ev->index % br->cfg.nqueues; /* checked by the vhost-user core */
    br_send_del(br, "the frontend stops the device");
    return BR_STOPPING;
}

static enum br_state h_stop_wait(struct br *br, const struct br_event *ev)
{
    br->wait = BR_WAIT_VRING_BASE;
    br->wait_index = ev->index % br->cfg.nqueues; /* checked by the vhost-user core */
    return BR_STOPPING;
}

/* DEVICE_INFO(DEL) answered while stopping. */
static enum br_state h_stopped(struct br *br, const struct br_event *ev)
{
    if (ev->token != br->del_token) {
        br_log(br, BR_LOG_INFO, "DEVICE_INFO(DEL) of an earlier start: %s",
               ev->status == BR_OK ? "done" : br_why(ev));
        return BR_STOPPING;
    }
    br->del_token = 0;
    bool waiting = br->wait == BR_WAIT_VRING_BASE;
    if (ev->status == BR_REJECTED) {
        /* The device VM does not have the frontend (its registration failed meanwhile):
         * the queues did not move. */
        br_log(br, BR_LOG_WARNING, "DEVICE_INFO(DEL) of net %" PRIu64 " refused: %s (the "
               "device VM does not serve it)", br_dev_id(br), br_why(ev));
    } else if (ev->status != BR_OK) {
        br_log(br, BR_LOG_WARNING, "DEVICE_INFO(DEL) of net %" PRIu64 " failed: %s",
               br_dev_id(br), br_why(ev));
        /* The device VM may have moved the queues and we do not know where to: without
         * the backend the frontend restores them from the used index (QEMU:
         * hw/virtio/vhost.c; DPDK's vhost library the same). GET_VRING_BASE has no
         * error reply. */
        char reason[VP_MAX_REASON + 128];
        if (waiting)
            snprintf(reason, sizeof(reason), "GET_VRING_BASE %u: the device VM did not hand "
                     "back the queue positions (%s)", br->wait_index, br_why(ev));
        else
            snprintf(reason, sizeof(reason), "the device VM did not stop serving the "
                     "virtqueues (%s)", br_why(ev));
        br->wait = BR_WAIT_NONE;
        br_drop_frontend(br, reason);
        return BR_CONFIGURING;
    }
    unsigned n = 0;
    for (unsigned k = 0; ev->status == BR_OK && k < ev->npositions; k++) {
        const struct vp_virtq_pos *p = &ev->positions[k];
        if (p->index >= br->cfg.nqueues) {
            br_log(br, BR_LOG_WARNING, "DEVICE_INFO_ACK(DEL_DONE) names virtqueue %u: "
                   "ignored (the frontend has %u)", p->index, br->cfg.nqueues);
            continue;
        }
        br->ring[p->index].pos = p->last_avail_idx;
        br->ring[p->index].pos_from_device = true;
        n++;
    }
    if (ev->status == BR_OK)
        br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(DEL_DONE) for net %" PRIu64 ": %u "
               "virtqueue position(s)", br_dev_id(br), n);
    if (waiting)
        br_reply_vring_base(br, br->wait_index, ev->status == BR_OK ?
                            "from DEVICE_INFO_ACK(DEL_DONE)" : "the device VM does not serve "
                            "the queue");
    if (br_servable_mask(br)) {
        br_timer_start(br, BR_TIMER_SETTLE, br->cfg.settle_ms);
        return BR_READY;
    }
    return BR_CONFIGURING;
}

static enum br_state h_del_ack_other(struct br *br, const struct br_event *ev)
{
    if (ev->token == br->del_token)
        br->del_token = 0;
    if (ev->status == BR_OK)
        br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(DEL_DONE) for net %" PRIu64, br_dev_id(br));
    else
        br_log(br, BR_LOG_WARNING, "DEVICE_INFO(DEL) of net %" PRIu64 " failed: %s",
               br_dev_id(br), br_why(ev));
    return br->state;
}

/* The memory part of a handshake's outcome, whichever start it was for: regions a
 * refused MEMORY_INFO did not add leave the mirror (those the server had stay). */
static void handshake_memory(struct br *br, const struct br_event *ev)
{
    if (ev->token == br->reg_token && ev->mem_status != BR_OK) {
        for (unsigned i = 0; i < br->reg_nnew; i++)
            br_rs_remove(&br->mirror, br->reg_new_gpa[i]);
        br->reg_nnew = 0;
    }
}

static enum br_state h_registered(struct br *br, const struct br_event *ev)
{
    handshake_memory(br, ev);
    if (ev->token != br->reg_token) {
        br_log(br, BR_LOG_INFO, "handshake of an earlier start ended: %s",
               ev->status == BR_OK ? "done" : br_why(ev));
        return BR_REGISTERING;
    }
    if (ev->status == BR_LOST) {
        br->served_mask = 0;
        br_log(br, BR_LOG_WARNING, "the handshake did not complete (%s): the device is "
               "registered once the server is back", br_why(ev));
        return br_servable_mask(br) ? BR_READY : BR_CONFIGURING;
    }
    if (ev->status != BR_OK) {
        br->served_mask = 0;
        br_log(br, BR_LOG_WARNING, "the device VM did not take the frontend (net %" PRIu64
               "): %s", br_dev_id(br), br_why(ev));
        return BR_REFUSED;
    }
    if (ev->mem_status != BR_OK)
        br_log(br, BR_LOG_WARNING, "the device VM serves net %" PRIu64 " but not all of this "
               "start: %s (it cannot reach buffers in memory it refused)", br_dev_id(br),
               br_why(ev));
    else
        br_ph_retire(br);
    unsigned nq = 0;
    for (unsigned i = 0; i < 64; i++)
        nq += (br->served_mask >> i) & 1;
    br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(ADD_DONE): net %" PRIu64 " with %u virtqueues "
           "is served by the device VM (features 0x%" PRIx64 "%s)", br_dev_id(br), nq,
           ev->features, ev->renegotiated ? ", renegotiated" : "");
    return BR_SERVED;
}

static enum br_state h_handshake_other(struct br *br, const struct br_event *ev)
{
    handshake_memory(br, ev);
    br_log(br, BR_LOG_INFO, "handshake of an earlier start ended: %s",
           ev->status == BR_OK ? "done" : br_why(ev));
    return br->state;
}

/* Spec 1.5.1.1: the device VM accepted fewer features than the frontend negotiated. */
static enum br_state h_renegotiate(struct br *br, const struct br_event *ev)
{
    bool current = ev->token == br->reg_token && br->state == BR_REGISTERING;
    br_log(br, BR_LOG_WARNING, "feature renegotiation (spec 1.5.1.1): the device VM's driver "
           "accepted 0x%" PRIx64 " of the negotiated 0x%" PRIx64 "; the frontend must "
           "renegotiate the smaller set%s", ev->features, ev->offered,
           br->cfg.features_from_device ? "" : " (a QEMU frontend cannot: run "
           "vhost-pci-client with --features-from-device)");
    /* Drop the refused bits from what the frontend is offered (bits the device VM
     * accepted earlier and the frontend did not negotiate stay). */
    br->srv_accepted &= ~(ev->offered & ~ev->features);
    br->feat = BR_FEAT_KNOWN;
    /* The frontend is restricted to the accepted bits from now on (the next
     * GET_FEATURES offers only them): confirm them as the final set. */
    br_emit(br, &(struct br_action){ .type = BR_ACT_CONFIRM_FEATURES, .token = ev->token,
                                     .features = ev->features });
    if (!current)
        return br->state;
    /* At most 255 bytes: the vhost-user core's error line keeps no more. */
    char reason[256];
    snprintf(reason, sizeof(reason), "feature renegotiation: the device VM accepts only 0x%"
             PRIx64 "; DPDK renegotiates when it connects again; QEMU cannot (\"vhost lacks "
             "feature mask\"): %s", br->srv_accepted, br->cfg.features_from_device ?
             "--features-from-device got no answer in time (see above); restart QEMU" :
             "run vhost-pci-client with --features-from-device, restart QEMU");
    br_drop_frontend(br, reason);
    return BR_RENEGOTIATING;
}

static enum br_state h_srv_up(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->link_up = true;
    br_rs_clear(&br->mirror);
    if (!br_ph_start(br))
        br_send_offer(br, false);
    if ((br->state == BR_READY && !br->timer_armed[BR_TIMER_SETTLE]) ||
        (br->state == BR_REFUSED && br_servable_mask(br))) {
        br_log(br, BR_LOG_MESSAGE, "the frontend's device is running: registering it with "
               "the device VM again");
        return br_do_register(br);
    }
    return br->state;
}

static enum br_state h_srv_down(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br->link_up = false;
    br_rs_clear(&br->mirror);
    br_ph_forget(br);
    br->feat_token = 0;
    br->feat_via_device = false;
    br->del_token = 0;
    if (br->state == BR_REGISTERING || br->state == BR_SERVED || br->state == BR_STOPPING) {
        br->served_mask = 0;
        br->reg_token = 0;
        if (br->wait == BR_WAIT_VRING_BASE) {
            /* Its DEL never came back (normally answered as lost before this). */
            br->wait = BR_WAIT_NONE;
            br_drop_frontend(br, "the vhost-pci server went away while the device stopped");
            return BR_CONFIGURING;
        }
        return br_servable_mask(br) ? BR_READY : BR_CONFIGURING;
    }
    if (br->state == BR_SHUTDOWN) {
        br_emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
        return BR_SHUTDOWN;
    }
    return br->state;
}

static enum br_state h_shutdown_del(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br_timer_stop(br, BR_TIMER_SETTLE);
    br_timer_stop(br, BR_TIMER_FEATURES);
    if (br->state == BR_STOPPING || br->del_token) {
        br_log(br, BR_LOG_INFO, "shutdown: waiting for the DEVICE_INFO(DEL) sent before");
        return BR_SHUTDOWN;
    }
    if ((br->state == BR_REGISTERING || br->state == BR_SERVED ||
         br->state == BR_RENEGOTIATING) && br->link_up) {
        br_send_del(br, "shutdown");
        return BR_SHUTDOWN;
    }
    br_emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
    return BR_SHUTDOWN;
}

static enum br_state h_shutdown_again(struct br *br, const struct br_event *ev)
{
    (void)ev;
    br_emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
    return BR_SHUTDOWN;
}

static enum br_state h_shutdown_del_ack(struct br *br, const struct br_event *ev)
{
    if (ev->token != br->del_token)
        return BR_SHUTDOWN;
    br->del_token = 0;
    if (ev->status == BR_OK)
        br_log(br, BR_LOG_MESSAGE, "DEVICE_INFO_ACK(DEL_DONE) for net %" PRIu64, br_dev_id(br));
    br_log(br, BR_LOG_MESSAGE, "shutdown: %s", ev->status == BR_OK ? "done" :
           "DEVICE_INFO(DEL) did not complete");
    br_emit(br, &(struct br_action){ .type = BR_ACT_QUIT });
    return BR_SHUTDOWN;
}

/* ---- The transition table ---- */

#define ANY_STATE ((1u << BR_NSTATES) - 1)
#define WITH_FE (ANY_STATE & ~S(BR_IDLE))
#define REGISTERED (S(BR_REGISTERING) | S(BR_SERVED))
#define UNREGISTERED (S(BR_CONFIGURING) | S(BR_READY) | S(BR_REFUSED))

const struct br_transition br_transitions[] = {
    /* the frontend connection */
    { S(BR_IDLE), BR_EV_FE_CONNECTED, h_fe_connected, S(BR_CONFIGURING) },
    { S(BR_SHUTDOWN), BR_EV_FE_GONE, h_fe_gone, S(BR_SHUTDOWN) },
    { WITH_FE, BR_EV_FE_GONE, h_fe_gone, S(BR_IDLE) },

    /* the frontend's requests that wait for an answer; features and memory */
    { WITH_FE, BR_EV_GET_FEATURES, h_get_features, STAY },
    { ANY_STATE, BR_EV_FEATURES_TIMER, h_features_timer, STAY },
    { ANY_STATE, BR_EV_FEATURES_ACK, h_features_ack, STAY },
    { WITH_FE, BR_EV_FEATURES_SET, h_features_set, STAY },
    { WITH_FE, BR_EV_MEM_ADD, h_mem_change, STAY },
    { WITH_FE, BR_EV_MEM_DEL, h_mem_change, STAY },
    { ANY_STATE, BR_EV_MEM_ACK, h_mem_ack, STAY },

    /* rings */
    { UNREGISTERED, BR_EV_RING_STARTED, h_rings_unregistered,
      S(BR_CONFIGURING) | S(BR_READY) },
    { UNREGISTERED, BR_EV_RING_CHANGED, h_rings_unregistered,
      S(BR_CONFIGURING) | S(BR_READY) },
    { REGISTERED, BR_EV_RING_STARTED, h_rings_registered, REGISTERED | S(BR_STOPPING) },
    { REGISTERED, BR_EV_RING_CHANGED, h_rings_registered, REGISTERED | S(BR_STOPPING) },
    { S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN), BR_EV_RING_STARTED,
      h_rings_record, S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN) },
    { S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN), BR_EV_RING_CHANGED,
      h_rings_record, S(BR_STOPPING) | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN) },

    { UNREGISTERED | S(BR_RENEGOTIATING) | S(BR_SHUTDOWN), BR_EV_RING_STOP,
      h_stop_unserved, S(BR_CONFIGURING) | S(BR_READY) | S(BR_RENEGOTIATING) |
      S(BR_SHUTDOWN) },
    { REGISTERED, BR_EV_RING_STOP, h_stop_registered, S(BR_STOPPING) },
    { S(BR_STOPPING), BR_EV_RING_STOP, h_stop_wait, S(BR_STOPPING) },

    /* registration */
    { S(BR_READY), BR_EV_DRAINED, h_drained, S(BR_READY) | S(BR_REGISTERING) },
    { S(BR_READY), BR_EV_SETTLE_TIMER, h_settled, S(BR_READY) | S(BR_REGISTERING) },
    { S(BR_REGISTERING), BR_EV_HANDSHAKE_DONE, h_registered,
      S(BR_REGISTERING) | S(BR_SERVED) | S(BR_REFUSED) | S(BR_READY) | S(BR_CONFIGURING) },
    { ANY_STATE, BR_EV_HANDSHAKE_DONE, h_handshake_other, STAY },
    { S(BR_REGISTERING), BR_EV_RENEGOTIATE, h_renegotiate,
      S(BR_REGISTERING) | S(BR_RENEGOTIATING) },
    { ANY_STATE, BR_EV_RENEGOTIATE, h_renegotiate, STAY },

    /* stopping */
    { S(BR_STOPPING), BR_EV_DEL_ACK, h_stopped,
      S(BR_STOPPING) | S(BR_CONFIGURING) | S(BR_READY) },
    { S(BR_SHUTDOWN), BR_EV_DEL_ACK, h_shutdown_del_ack, S(BR_SHUTDOWN) },
    { ANY_STATE, BR_EV_DEL_ACK, h_del_ack_other, STAY },

    /* the server connection */
    { S(BR_READY) | S(BR_REFUSED), BR_EV_SRV_UP, h_srv_up,
      S(BR_READY) | S(BR_REFUSED) | S(BR_REGISTERING) },
    { ANY_STATE, BR_EV_SRV_UP, h_srv_up, STAY },
    { REGISTERED | S(BR_STOPPING), BR_EV_SRV_DOWN, h_srv_down,
      S(BR_READY) | S(BR_CONFIGURING) },
    { ANY_STATE, BR_EV_SRV_DOWN, h_srv_down, STAY },

    /* shutdown */
    { S(BR_SHUTDOWN), BR_EV_SHUTDOWN, h_shutdown_again, S(BR_SHUTDOWN) },
    { ANY_STATE, BR_EV_SHUTDOWN, h_shutdown_del, S(BR_SHUTDOWN) },
};

const size_t br_ntransitions = sizeof(br_transitions) / sizeof(br_transitions[0]);
