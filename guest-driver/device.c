/*
 * device.c - one vhost-pci device on the guest driver's side: status handshake and
 * reset, controlq service (each message to its handler in device_msgs.c), breaking
 * with a reason, the data path's hooks and services (DESIGN sections 3, 5, 6; spec
 * 1.5.2, 1.6.2). The logical BAR's windows are device_windows.c's.
 *
 * Security model: the control area, its rings and its buffer pool are shared with the
 * server, which may be hostile or buggy and may rewrite anything at any time.
 *  - The header and window table are read once into private copies and validated
 *    (ctrlarea.c); a message is copied out of its buffer once (controlq.c) and then
 *    decoded and validated (vp_cq_decode) before any handler sees it.
 *  - Dispatch is table-driven: a message type the server must not send on the
 *    controlq (protocol/vp_proto: the *_ACK types) or any malformed message makes the
 *    device broken (NEEDS_RESET), with a reason (vp_break: the first one kept), and
 *    it is not served any more. Other devices carry on.
 *  - Semantic refusals (unknown device, region outside every window, unsupported
 *    device type) are answered with *_FAIL and a reason; the device stays healthy.
 *  - Every region must lie inside one mapped window before it enters the memory
 *    table, and every virtqueue ring inside one region, so a data path can never be
 *    handed an address outside the logical BAR mapping.
 *  - Memory leaves the table only after the data path's hooks said it stopped using
 *    it (spec 1.6.2), and is unmapped (replaced by an inaccessible reservation) only
 *    after that.
 * libc only.
 */
#include "device_priv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "controlplane.h"
#include "log.h"
#include "loop.h"
#include "vp_ctrlarea.h"
#include "vp_proto.h"
#include "vp_wire.h"

/* Local (vhost-pci) feature bits this driver accepts: none are defined (spec 1.3.1). */
#define GD_LOCAL_FEATURES 0ULL

/* Messages handled per service call before yielding to other sources. */
#define GD_SERVICE_BATCH 256

struct gd_bus *gd_dev_bus(const struct gd_device *dev) { return dev->cp->bus; }

void gd_dev_schedule_retry(struct gd_device *dev, uint64_t delay_ns)
{
    gd_cp_schedule_retry(dev->cp, dev->slot, delay_ns);
}

/* ------------------------------- data path hooks ------------------------------- */

void gd_dev_frontend_stop(struct gd_device *dev, struct gd_frontend *fe)
{
    if (!fe->started)
        return;
    fe->started = false;
    if (dev->cp->dp && dev->cp->dp->frontend_stop)
        dev->cp->dp->frontend_stop(dev->cp->dp_opaque, dev, fe);
}

int gd_dev_frontend_start(struct gd_device *dev, struct gd_frontend *fe, vp_error *err)
{
    if (dev->cp->dp && dev->cp->dp->frontend_start) {
        int r = dev->cp->dp->frontend_start(dev->cp->dp_opaque, dev, fe, err);
        if (r < 0)
            return r;
    }
    fe->started = true;
    return 0;
}

void gd_dev_memory_del(struct gd_device *dev, const struct vp_mt_region *regs, unsigned n)
{
    if (n && dev->cp->dp && dev->cp->dp->memory_del)
        dev->cp->dp->memory_del(dev->cp->dp_opaque, dev, regs, n);
}

void gd_dev_memory_add(struct gd_device *dev, const struct vp_mt_region *regs, unsigned n)
{
    if (n && dev->cp->dp && dev->cp->dp->memory_add)
        dev->cp->dp->memory_add(dev->cp->dp_opaque, dev, regs, n);
}

/* The data path's threads read the memory table and the support list: every change
 * of them happens between these two (datapath.h). */
void gd_dev_pause(struct gd_device *dev)
{
    if (dev->cp->dp && dev->cp->dp->pause)
        dev->cp->dp->pause(dev->cp->dp_opaque);
}

void gd_dev_resume(struct gd_device *dev)
{
    if (dev->cp->dp && dev->cp->dp->resume)
        dev->cp->dp->resume(dev->cp->dp_opaque);
}

void gd_dev_stop_frontends(struct gd_device *dev)
{
    for (unsigned i = 0; i < dev->nfe; i++)
        gd_dev_frontend_stop(dev, dev->fe[i]);
}

/* Remove every region inside [off, +size) of the BAR, after the data path let go of
 * them. Returns how many. */
unsigned gd_dev_drop_regions_in(struct gd_device *dev, uint64_t off, uint64_t size)
{
    struct vp_mt_region gone[VP_MAX_REGIONS];
    unsigned n = 0;
    for (unsigned k = 0; k < dev->mt.n; k++) {
        const struct vp_mt_region *r = &dev->mt.r[k];
        /* A region may span windows that are back to back (the pieces of one file):
         * every region overlapping the range goes (vp_ranges_overlap cannot wrap). */
        if (vp_ranges_overlap(r->target, r->size, off, size))
            gone[n++] = *r;
    }
    if (!n)
        return 0;
    gd_dev_memory_del(dev, gone, n);
    vp_mt_del(&dev->mt, gone, n);
    return n;
}

static void drop_all_regions(struct gd_device *dev)
{
    if (!dev->mt.n)
        return;
    struct vp_mt_region gone[VP_MAX_REGIONS];
    unsigned n = dev->mt.n;
    memcpy(gone, dev->mt.r, n * sizeof(gone[0]));
    gd_dev_memory_del(dev, gone, n);
    dev->mt.n = 0;
}

/* ----------------------------------- status ----------------------------------- */

static void set_status(struct gd_device *dev, uint32_t bits)
{
    dev->status |= bits;
    gd_ca_set_status(dev->ca, dev->status);
}

static void kick_server(struct gd_device *dev, uint16_t vector)
{
    int r = gd_bus_doorbell(gd_dev_bus(dev), dev->slot, VP_ID_SERVER, vector);
    if (r < 0)
        gd_warn("slot %u: doorbell (id %u, vector %u): %s", dev->slot, VP_ID_SERVER, vector,
                strerror(-r));
}

static void stop_service(struct gd_device *dev)
{
    gd_loop_del_fd(dev->cp->loop, dev->irq_watch);
    dev->irq_watch = 0;
    gd_loop_del_timer(dev->cp->loop, dev->retry_timer);
    dev->retry_timer = 0;
}

/* The control function was hot-unplugged under us (pci: the bus has not rescanned
 * yet): stop quietly, write nothing; the bus's unplug event will free the device. */
bool gd_dev_check_gone(struct gd_device *dev)
{
    if (dev->broken || gd_bus_control_present(gd_dev_bus(dev), dev->slot))
        return false;
    vp_break(&dev->broken, dev->reason, sizeof(dev->reason), "control function removed");
    gd_info("slot %u: control function removed: service stopped", dev->slot);
    gd_dev_stop_frontends(dev);
    stop_service(dev);
    return true;
}

void gd_device_break(struct gd_device *dev, const char *fmt, ...)
{
    if (dev->broken || gd_dev_check_gone(dev))
        return; /* keep the first reason */
    va_list ap;
    va_start(ap, fmt);
    vp_vbreak(&dev->broken, dev->reason, sizeof(dev->reason), fmt, ap);
    va_end(ap);
    gd_error("slot %u: NEEDS_RESET: %s", dev->slot, dev->reason);
    gd_dev_stop_frontends(dev);
    stop_service(dev);
    if (dev->ca) {
        set_status(dev, VP_STATUS_NEEDS_RESET);
        /* The server reads device_status when the receiveq is kicked. */
        kick_server(dev, VP_VEC_RECEIVEQ_KICK);
    }
}

/* The header is unusable: the driver gives up on the device (FAILED). */
static void fail_device(struct gd_device *dev, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail_device(struct gd_device *dev, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool now = vp_vbreak(&dev->broken, dev->reason, sizeof(dev->reason), fmt, ap);
    va_end(ap);
    if (!now)
        return; /* keep the first reason */
    gd_error("slot %u: FAILED: %s", dev->slot, dev->reason);
    set_status(dev, VP_STATUS_FAILED);
    kick_server(dev, VP_VEC_RECEIVEQ_KICK);
}

/* ---------------------------------- service ---------------------------------- */

/* Handle one decoded message taken from transmitq buffer @slot. */
static enum gd_handled process(struct gd_device *dev, const struct vp_cq_msg *m, unsigned slot,
                               bool last_try)
{
    vp_error err = { { 0 } };
    gd_handler handler = gd_dev_handler(m->type);
    if (!vp_proto_sender(m->type, VP_LEG_CONTROLQ, VP_FROM_SERVER) || !handler) {
        gd_device_break(dev, "unexpected %s (seq %llu) on the control transmitq",
                        vp_msg_type_name(m->type), (unsigned long long)m->seq);
        return GD_H_BROKEN;
    }
    gd_debug("slot %u: %s seq %llu", dev->slot, vp_msg_type_name(m->type),
             (unsigned long long)m->seq);
    memset(&dev->ack, 0, sizeof(dev->ack));
    enum gd_handled h = handler(dev, m, &dev->ack, last_try);
    if (h == GD_H_RETRY) {
        if (!dev->stalled) {
            if (m != &dev->stall_msg)
                dev->stall_msg = *m;
            dev->stall_slot = slot;
            dev->stall_deadline_ns = gd_now_ns() + dev->cp->cfg.window_wait_ns;
            dev->stalled = true;
            gd_debug("slot %u: %s seq %llu waits for a window", dev->slot,
                     vp_msg_type_name(m->type), (unsigned long long)m->seq);
        }
        gd_cp_schedule_retry(dev->cp, dev->slot, GD_CP_RETRY_NS);
        return h;
    }
    if (h == GD_H_BROKEN || dev->broken)
        return GD_H_BROKEN;
    dev->stalled = false;
    if (gd_cq_send_ack(&dev->cq, &dev->ack, &err) < 0) {
        gd_device_break(dev, "sending the ACK of %s seq %llu: %s", vp_msg_type_name(m->type),
                        (unsigned long long)m->seq, err.msg);
        return GD_H_BROKEN;
    }
    dev->acks_sent++;
    if (gd_cq_repost(&dev->cq, slot, &err) < 0) {
        gd_device_break(dev, "%s", err.msg);
        return GD_H_BROKEN;
    }
    return GD_H_ACK;
}

static void ring_kicks(struct gd_device *dev)
{
    unsigned kicks = gd_cq_publish(&dev->cq);
    if (kicks & GD_CQ_KICK_RECEIVEQ)
        kick_server(dev, VP_VEC_RECEIVEQ_KICK);
    if (kicks & GD_CQ_KICK_TRANSMITQ)
        kick_server(dev, VP_VEC_TRANSMITQ_KICK);
}

int gd_device_service(struct gd_device *dev)
{
    int handled = 0;
    vp_error err = { { 0 } };
    if (dev->broken || !dev->cq_ready)
        return 0;
    for (;;) {
        bool need_ack_space = false;
        bool stop = false;
        if (gd_dev_refresh_windows(dev, false) < 0)
            return handled;
        while (!stop) {
            if (handled >= GD_SERVICE_BATCH) {
                /* Let other sources run; come back at once. */
                ring_kicks(dev);
                gd_cp_schedule_retry(dev->cp, dev->slot, 0);
                return handled;
            }
            if (!gd_cq_can_ack(&dev->cq)) {
                if (gd_cq_reclaim(&dev->cq, &err) < 0) {
                    gd_device_break(dev, "%s", err.msg);
                    return handled;
                }
                if (!gd_cq_can_ack(&dev->cq)) {
                    need_ack_space = true;
                    break;
                }
            }
            enum gd_handled h;
            if (dev->stalled) {
                bool last = gd_now_ns() >= dev->stall_deadline_ns;
                h = process(dev, &dev->stall_msg, dev->stall_slot, last);
            } else {
                size_t len = 0;
                unsigned slot = 0;
                int r = gd_cq_take(&dev->cq, dev->msgbuf, sizeof(dev->msgbuf), &len, &slot, &err);
                if (r < 0) {
                    gd_device_break(dev, "%s", err.msg);
                    return handled;
                }
                if (r == 0)
                    break;
                dev->messages++;
                if (vp_cq_decode(dev->msgbuf, len, &dev->msg, &err) < 0) {
                    gd_device_break(dev, "malformed controlq message (%zu bytes): %s", len,
                                    err.msg);
                    return handled;
                }
                h = process(dev, &dev->msg, slot, false);
            }
            switch (h) {
            case GD_H_ACK:
                handled++;
                break;
            case GD_H_RETRY:
                stop = true;
                break;
            case GD_H_BROKEN:
                return handled;
            }
        }
        if (gd_cq_reclaim(&dev->cq, &err) < 0) {
            gd_device_break(dev, "%s", err.msg);
            return handled;
        }
        ring_kicks(dev);
        if (dev->stalled)
            return handled; /* the retry timer brings us back */
        /* Sleep unless what we wait for arrived meanwhile: ACK space when out of it
         * (messages alone cannot be handled then), else messages. */
        unsigned more = gd_cq_arm(&dev->cq, need_ack_space);
        if (gd_cq_broken(&dev->cq)) {
            gd_device_break(dev, "%s", gd_cq_broken(&dev->cq));
            return handled;
        }
        if (!(more & (need_ack_space ? GD_CQ_MORE_RX : GD_CQ_MORE_TX)))
            return handled;
    }
}

/* ------------------------------ life cycle ------------------------------ */

void gd_uuid_format(const uint8_t u[16], char out[37])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (unsigned i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[u[i] >> 4];
        *p++ = hex[u[i] & 15];
    }
    *p = 0;
}

/* How long a reset waits for the server to let go of the old rings. */
#define GD_RESET_WAIT_NS (2ULL * 1000 * 1000 * 1000)

/* A control area a previous driver used (it crashed or was restarted: device_status
 * is not 0, or its reset was never answered) is reset before anything else
 * (protocol/vp_ctrlarea.h, reset handshake): status 0, reset_req bumped, doorbell,
 * then a bounded wait until the server answers in reset_done, so the server no
 * longer writes into the rings we are about to initialise. A server that does not
 * answer in time is logged and the handshake goes on (it re-attaches at DRIVER_OK). */
static void reset_if_used(struct gd_device *dev)
{
    uint8_t *ca = dev->ca;
    uint32_t st = gd_ca_get_status(ca);
    uint32_t req = vp_get_le32(ca + VP_CA_OFF_RESET_REQ);
    uint32_t done = vp_get_le32(ca + VP_CA_OFF_RESET_DONE);
    if (st == 0 && req == done)
        return; /* a fresh area */
    uint32_t want = done + 1;
    gd_info("slot %u: control area left with status 0x%x by a previous driver: resetting it",
            dev->slot, st);
    gd_ca_set_status(ca, 0);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* status 0 before the request */
    vp_put_le32(ca + VP_CA_OFF_RESET_REQ, want);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    kick_server(dev, VP_VEC_RECEIVEQ_KICK);
    uint64_t deadline = gd_now_ns() + GD_RESET_WAIT_NS;
    for (;;) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (vp_get_le32(ca + VP_CA_OFF_RESET_DONE) == want)
            break;
        if (gd_now_ns() >= deadline) {
            gd_warn("slot %u: the server did not confirm the reset within %llu ms; going on",
                    dev->slot, (unsigned long long)(GD_RESET_WAIT_NS / 1000000));
            break;
        }
        struct timespec ts = { 0, 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
}

struct gd_device *gd_device_new(struct gd_cp *cp, unsigned slot)
{
    struct gd_device *dev = calloc(1, sizeof(*dev));
    if (!dev)
        return NULL;
    dev->cp = cp;
    dev->slot = slot;
    vp_mt_init(&dev->mt, VP_MAX_REGIONS);
    vp_error err = { { 0 } };
    void *ca = NULL;
    uint64_t ca_size = 0;

    if (gd_bus_control_area(cp->bus, slot, &ca, &ca_size) < 0) {
        vp_break(&dev->broken, dev->reason, sizeof(dev->reason),
                 "control area not mapped by the bus");
        gd_error("slot %u: %s", slot, dev->reason);
        return dev;
    }
    if (!gd_ca_has_magic(ca, ca_size) || ca_size < VP_CA_HEADER_END) {
        /* Not a vhost-pci control area: do not write into it. */
        vp_break(&dev->broken, dev->reason, sizeof(dev->reason),
                 "no \"%s\" magic in the control area", VP_CA_MAGIC);
        gd_error("slot %u: %s", slot, dev->reason);
        return dev;
    }
    dev->ca = ca;
    dev->ca_size = ca_size;
    reset_if_used(dev);

    /* Status handshake (virtio 1.0 3.1.1): ACKNOWLEDGE, DRIVER, features, FEATURES_OK. */
    dev->status = 0;
    set_status(dev, VP_STATUS_ACKNOWLEDGE);
    set_status(dev, VP_STATUS_DRIVER);
    if (gd_ca_read_layout(ca, ca_size, &dev->layout, &err) < 0) {
        fail_device(dev, "bad control area header: %s", err.msg);
        return dev;
    }
    gd_ca_set_driver_features(ca, dev->layout.device_features & GD_LOCAL_FEATURES);
    set_status(dev, VP_STATUS_FEATURES_OK);

    /* The logical BAR: reserve bar_size of address space, map windows into it. */
    dev->bar_size = dev->layout.bar_size;
    void *bar = mmap(NULL, dev->bar_size, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (bar == MAP_FAILED) {
        fail_device(dev, "cannot reserve %llu bytes of address space for the BAR: %s",
                    (unsigned long long)dev->bar_size, strerror(errno));
        return dev;
    }
    dev->bar = bar;

    if (gd_cq_init(&dev->cq, ca, &dev->layout, &err) < 0) {
        fail_device(dev, "%s", err.msg);
        return dev;
    }
    dev->cq_ready = true;
    if (gd_dev_refresh_windows(dev, true) < 0)
        return dev;

    /* Publish the transmitq buffers and ask for interrupts, then DRIVER_OK (the
     * release store in gd_ca_set_status orders all ring writes before it). */
    gd_cq_publish(&dev->cq);
    gd_cq_arm(&dev->cq, false);
    set_status(dev, VP_STATUS_DRIVER_OK);
    kick_server(dev, VP_VEC_RECEIVEQ_KICK);

    char uuid[37];
    gd_uuid_format(dev->layout.peer_uuid, uuid);
    gd_info("slot %u: vhost-pci device ready: peer %s, BAR %llu bytes, %u window(s), "
            "controlq %u/%u entries, %u/%u buffers",
            slot, uuid, (unsigned long long)dev->bar_size, dev->nwin,
            dev->layout.q[VP_CQ_RECEIVEQ].size, dev->layout.q[VP_CQ_TRANSMITQ].size,
            dev->layout.nack, dev->layout.ntx);
    return dev;
}

void gd_device_free(struct gd_device *dev)
{
    if (!dev)
        return;
    stop_service(dev);
    gd_dev_pause(dev);
    gd_dev_stop_frontends(dev);
    drop_all_regions(dev);
    gd_dev_resume(dev);
    for (unsigned i = 0; i < dev->nfe; i++)
        free(dev->fe[i]);
    dev->nfe = 0;
    if (dev->bar)
        munmap(dev->bar, dev->bar_size);
    if (dev->cq_ready)
        gd_cq_destroy(&dev->cq);
    free(dev);
}

/* ------------------------- services for the data path ------------------------- */

void *gd_device_translate(struct gd_device *dev, uint64_t xgpa, uint64_t len, uint64_t *avail)
{
    uint64_t off = 0;
    uint64_t n = vp_mt_translate(&dev->mt, xgpa, len, &off);
    *avail = n;
    if (!n || !dev->bar)
        return NULL;
    return dev->bar + off;
}

void *gd_device_region(struct gd_device *dev, uint64_t xgpa, uint64_t *start, uint64_t *size)
{
    int i = dev->bar ? vp_mt_lookup(&dev->mt, xgpa) : -1;
    if (i < 0)
        return NULL;
    const struct vp_mt_region *r = &dev->mt.r[i];
    *start = r->gpa;
    *size = r->size;
    return dev->bar + r->target;
}

int gd_device_notify_peer(struct gd_device *dev, uint16_t vector)
{
    if (vector == VP_NO_VECTOR)
        return -ERANGE;
    return gd_bus_doorbell(gd_dev_bus(dev), dev->slot, VP_ID_DRIVER_VM, vector);
}

uint64_t gd_device_features(const struct gd_device *dev) { return dev->features; }
unsigned gd_device_slot(const struct gd_device *dev) { return dev->slot; }
struct gd_loop *gd_device_loop(const struct gd_device *dev) { return dev->cp->loop; }
const char *gd_device_tap_name(const struct gd_device *dev)
{
    return dev->cp->tap[0] ? dev->cp->tap : NULL;
}
