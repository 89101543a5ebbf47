/*
 * bridge.c - the vhost-user -> vhost-pci bridge state machine (see bridge.h): names,
 * helpers, the dispatcher that runs the transition table, and the public API; the
 * table, the requests, the rings and the region sets live in its children
 * (bridge_priv.h lists them).
 *
 * Security model: events come from the vhost-user core, which has validated what the
 * frontend sent (sizes, fds, queue indexes, regions, ring addresses inside regions),
 * and from libvhostpci-client, which matched every ACK to its request. What the
 * bridge takes from the server is trusted only as far as: ACK results and reasons
 * (logged), accepted feature bits (masked with the offer), queue positions (applied
 * only to rings the frontend has). From the frontend's memory it reads one 2-byte
 * field, a ring's used index (pread on the region's file at an offset inside the
 * region); any value is safe: it only chooses where the device VM's driver resumes,
 * and that driver checks the ring itself. Every fd it keeps is a dup it owns, closed
 * on replacement, when the frontend goes and in br_free().
 */
#include "bridge_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* ---- Names ---- */

static const char *const state_names[BR_NSTATES] = {
    [BR_IDLE] = "idle", [BR_CONFIGURING] = "configuring", [BR_READY] = "ready",
    [BR_REGISTERING] = "registering", [BR_SERVED] = "served", [BR_REFUSED] = "refused",
    [BR_STOPPING] = "stopping", [BR_RENEGOTIATING] = "renegotiating",
    [BR_SHUTDOWN] = "shutdown",
};

static const char *const event_names[BR_NEVENTS] = {
    [BR_EV_FE_CONNECTED] = "FE_CONNECTED", [BR_EV_FE_GONE] = "FE_GONE",
    [BR_EV_GET_FEATURES] = "GET_FEATURES", [BR_EV_FEATURES_SET] = "FEATURES_SET",
    [BR_EV_MEM_ADD] = "MEM_ADD", [BR_EV_MEM_DEL] = "MEM_DEL",
    [BR_EV_RING_STARTED] = "RING_STARTED", [BR_EV_RING_CHANGED] = "RING_CHANGED",
    [BR_EV_RING_STOP] = "RING_STOP", [BR_EV_DRAINED] = "DRAINED",
    [BR_EV_SETTLE_TIMER] = "SETTLE_TIMER", [BR_EV_FEATURES_TIMER] = "FEATURES_TIMER",
    [BR_EV_SRV_UP] = "SRV_UP", [BR_EV_SRV_DOWN] = "SRV_DOWN",
    [BR_EV_FEATURES_ACK] = "FEATURES_ACK", [BR_EV_HANDSHAKE_DONE] = "HANDSHAKE_DONE",
    [BR_EV_RENEGOTIATE] = "RENEGOTIATE", [BR_EV_DEL_ACK] = "DEL_ACK",
    [BR_EV_MEM_ACK] = "MEM_ACK", [BR_EV_SHUTDOWN] = "SHUTDOWN",
};

const char *br_state_name(enum br_state s)
{
    return (unsigned)s < BR_NSTATES ? state_names[s] : "?";
}

const char *br_event_name(enum br_event_type t)
{
    return (unsigned)t < BR_NEVENTS ? event_names[t] : "?";
}

enum br_event_type br_timer_event(enum br_timer t)
{
    return t == BR_TIMER_SETTLE ? BR_EV_SETTLE_TIMER : BR_EV_FEATURES_TIMER;
}

/* ---- Small helpers ---- */

void br_log(struct br *br, enum br_log_level level, const char *fmt, ...)
{
    if (!br->log)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    br->log(level, buf, br->opaque);
}

void br_emit(struct br *br, const struct br_action *a)
{
    br->act(br, a, br->opaque);
}

uint64_t br_new_token(struct br *br)
{
    return ++br->next_token;
}

int br_dup_fd(int fd)
{
    return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

void br_timer_start(struct br *br, enum br_timer t, int ms)
{
    br->timer_armed[t] = true;
    br_emit(br, &(struct br_action){ .type = BR_ACT_TIMER_START, .timer = t, .ms = ms });
}

void br_timer_stop(struct br *br, enum br_timer t)
{
    if (!br->timer_armed[t])
        return;
    br->timer_armed[t] = false;
    br_emit(br, &(struct br_action){ .type = BR_ACT_TIMER_STOP, .timer = t });
}

const char *br_why(const struct br_event *ev)
{
    return ev->reason ? ev->reason : "";
}

uint64_t br_dev_id(const struct br *br)
{
    return br->cfg.device_id;
}

/* ---- Frontend answers ---- */

void br_reply_features(struct br *br, uint64_t f, const char *how)
{
    br_timer_stop(br, BR_TIMER_FEATURES);
    if (br->wait != BR_WAIT_FEATURES)
        return;
    br->wait = BR_WAIT_NONE;
    f |= br->cfg.frontend_features;
    br_log(br, BR_LOG_INFO, "GET_FEATURES: offering the frontend 0x%" PRIx64 " (%s)", f, how);
    br_emit(br, &(struct br_action){ .type = BR_ACT_REPLY_FEATURES, .features = f });
}

void br_reply_mem(struct br *br, int result)
{
    br->wait = BR_WAIT_NONE;
    br_emit(br, &(struct br_action){ .type = BR_ACT_REPLY_MEM, .result = result });
}

/** GET_VRING_BASE of ring @i answered with its position: the ring stops. */
void br_reply_vring_base(struct br *br, uint32_t i, const char *from)
{
    struct br_ring *r = &br->ring[i];
    br->wait = BR_WAIT_NONE;
    r->running = false;
    br_ring_close(r);
    br_log(br, BR_LOG_INFO, "GET_VRING_BASE %u: %u (%s)", i, r->pos, from);
    br_emit(br, &(struct br_action){ .type = BR_ACT_REPLY_VRING_BASE, .index = i,
                                     .base = r->pos });
}

void br_drop_frontend(struct br *br, const char *reason)
{
    br_emit(br, &(struct br_action){ .type = BR_ACT_DROP_FRONTEND, .reason = reason });
}

void br_send_offer(struct br *br, bool via_device)
{
    br->feat_token = br_new_token(br);
    br->feat_via_device = via_device;
    br_emit(br, &(struct br_action){ .type = BR_ACT_SEND_FEATURES, .token = br->feat_token,
                                     .features = br->cfg.offer });
}

/* ---- Dispatch (the table is bridge_transitions.c) ---- */

bool br_transition_allowed(enum br_state from, enum br_state to)
{
    for (size_t k = 0; k < br_ntransitions; k++) {
        const struct br_transition *t = &br_transitions[k];
        if ((t->from & S(from)) && (t->to == STAY ? from == to : (t->to & S(to)) != 0))
            return true;
    }
    return false;
}

static void dispatch(struct br *br, const struct br_event *ev)
{
    enum br_state from = br->state;
    for (size_t k = 0; k < br_ntransitions; k++) {
        const struct br_transition *t = &br_transitions[k];
        if (t->event != ev->type || !(t->from & S(from)))
            continue;
        enum br_state to = t->handler(br, ev);
        if (t->to == STAY ? to != from : !(t->to & S(to))) {
            /* A handler outside its row: a bug here, not the peer's. Stay put. */
            br_log(br, BR_LOG_ERROR, "bridge: %s in state %s led to %s, which the table "
                   "does not allow: staying in %s", br_event_name(ev->type),
                   br_state_name(from), br_state_name(to), br_state_name(from));
            return;
        }
        if (to != from)
            br_log(br, BR_LOG_DEBUG, "bridge: %s: %s -> %s", br_event_name(ev->type),
                   br_state_name(from), br_state_name(to));
        br->state = to;
        return;
    }
    br_log(br, BR_LOG_DEBUG, "bridge: %s ignored in state %s", br_event_name(ev->type),
           br_state_name(from));
}

/* ---- Public ---- */

struct br *br_new(const struct br_config *cfg, br_action_fn act, br_log_fn log, void *opaque)
{
    struct br *br = calloc(1, sizeof(*br));
    if (!br)
        return NULL;
    if (cfg)
        br->cfg = *cfg;
    if (!br->cfg.offer)
        br->cfg.offer = VP_NET_FEATURES;
    if (br->cfg.nqueues < 2 || br->cfg.nqueues > VU_MAX_QUEUES || (br->cfg.nqueues & 1))
        br->cfg.nqueues = 2;
    if (br->cfg.settle_ms <= 0)
        br->cfg.settle_ms = 20;
    if (br->cfg.features_wait_ms <= 0)
        br->cfg.features_wait_ms = 3000;
    br->act = act;
    br->log = log;
    br->opaque = opaque;
    br->state = BR_IDLE;
    br->memop.file = br_no_file();
    br_rs_init(&br->mem);
    br_rs_init(&br->mirror);
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++)
        br->ring[i].vq.kick_fd = br->ring[i].vq.call_fd = -1;
    br_ph_init(br);
    return br;
}

void br_free(struct br *br)
{
    if (!br)
        return;
    br_rings_reset(br);
    br_rs_clear(&br->mem);
    vp_close_fd(&br->memop.file.fd);
    br_ph_close(br);
    free(br);
}

void br_post(struct br *br, const struct br_event *ev)
{
    if (br->dispatching) {
        if (br->qlen == BR_EVQ) {
            br_log(br, BR_LOG_ERROR, "bridge: event queue full: %s dropped",
                   br_event_name(ev->type));
            return;
        }
        struct br_qent *e = &br->q[(br->qhead + br->qlen++) % BR_EVQ];
        e->ev = *ev;
        if (ev->reason) {
            snprintf(e->reason, sizeof(e->reason), "%s", ev->reason);
            e->ev.reason = e->reason;
        }
        return;
    }
    br->dispatching = true;
    dispatch(br, ev);
    while (br->qlen) {
        struct br_qent *e = &br->q[br->qhead];
        br->qhead = (br->qhead + 1) % BR_EVQ;
        br->qlen--;
        struct br_qent copy = *e; /* the slot may be reused by a nested post */
        if (copy.ev.reason == e->reason)
            copy.ev.reason = copy.reason;
        dispatch(br, &copy.ev);
    }
    br->dispatching = false;
}

enum br_state br_state(const struct br *br)
{
    return br->state;
}

uint64_t br_served_mask(const struct br *br)
{
    return br->state == BR_SERVED ? br->served_mask : 0;
}
