/*
 * device.c - one vhost-pci device on the guest driver's side: status handshake,
 * logical BAR and its windows, controlq service with one handler per message type,
 * memory table, support list of frontends (DESIGN sections 3, 5, 6; spec 1.5.2,
 * 1.6.2).
 *
 * Security model: the control area, its rings and its buffer pool are shared with the
 * server, which may be hostile or buggy and may rewrite anything at any time.
 *  - The header and window table are read once into private copies and validated
 *    (ctrlarea.c); a message is copied out of its buffer once (controlq.c) and then
 *    decoded and validated (vp_cq_decode) before any handler sees it.
 *  - Dispatch is table-driven: a message type the server must not send (the *_ACK
 *    types) or any malformed message makes the device broken (NEEDS_RESET), with a
 *    reason, and it is not served any more. Other devices carry on.
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
#include "device.h"

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
#include "vp_wire.h"

/* Local (vhost-pci) feature bits this driver accepts: none are defined (spec 1.3.1). */
#define GD_LOCAL_FEATURES 0ULL

/* Messages handled per service call before yielding to other sources. */
#define GD_SERVICE_BATCH 256

enum gd_handled {
    GD_H_ACK,      /* *ack is filled: send it and re-post the buffer */
    GD_H_RETRY,    /* waiting for a window: keep the message, try again later */
    GD_H_BROKEN,   /* the device broke while handling it */
};

typedef enum gd_handled (*gd_handler)(struct gd_device *dev, const struct vp_cq_msg *m,
                                      struct vp_cq_msg *ack, bool last_try);

static struct gd_bus *bus_of(const struct gd_device *dev) { return dev->cp->bus; }

/* ------------------------------- data path hooks ------------------------------- */

static void dp_frontend_stop(struct gd_device *dev, struct gd_frontend *fe)
{
    if (!fe->started)
        return;
    fe->started = false;
    if (dev->cp->dp && dev->cp->dp->frontend_stop)
        dev->cp->dp->frontend_stop(dev->cp->dp_opaque, dev, fe);
}

static int dp_frontend_start(struct gd_device *dev, struct gd_frontend *fe, vp_error *err)
{
    if (dev->cp->dp && dev->cp->dp->frontend_start) {
        int r = dev->cp->dp->frontend_start(dev->cp->dp_opaque, dev, fe, err);
        if (r < 0)
            return r;
    }
    fe->started = true;
    return 0;
}

static void dp_memory_del(struct gd_device *dev, const struct vp_mt_region *regs, unsigned n)
{
    if (n && dev->cp->dp && dev->cp->dp->memory_del)
        dev->cp->dp->memory_del(dev->cp->dp_opaque, dev, regs, n);
}

static void dp_memory_add(struct gd_device *dev, const struct vp_mt_region *regs, unsigned n)
{
    if (n && dev->cp->dp && dev->cp->dp->memory_add)
        dev->cp->dp->memory_add(dev->cp->dp_opaque, dev, regs, n);
}

/* The data path's threads read the memory table and the support list: every change
 * of them happens between these two (datapath.h). */
static void dp_pause(struct gd_device *dev)
{
    if (dev->cp->dp && dev->cp->dp->pause)
        dev->cp->dp->pause(dev->cp->dp_opaque);
}

static void dp_resume(struct gd_device *dev)
{
    if (dev->cp->dp && dev->cp->dp->resume)
        dev->cp->dp->resume(dev->cp->dp_opaque);
}

static void stop_all_frontends(struct gd_device *dev)
{
    for (unsigned i = 0; i < dev->nfe; i++)
        dp_frontend_stop(dev, dev->fe[i]);
}

/* Remove every region inside [off, +size) of the BAR, after the data path let go of
 * them. Returns how many. */
static unsigned drop_regions_in(struct gd_device *dev, uint64_t off, uint64_t size)
{
    struct vp_mt_region gone[VP_MAX_REGIONS];
    unsigned n = 0;
    for (unsigned k = 0; k < dev->mt.n; k++) {
        const struct vp_mt_region *r = &dev->mt.r[k];
        /* Regions are inside one window and windows do not overlap: overlap is
         * containment; compare without sums that could wrap. */
        if (r->target >= off && r->target - off < size)
            gone[n++] = *r;
    }
    if (!n)
        return 0;
    dp_memory_del(dev, gone, n);
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
    dp_memory_del(dev, gone, n);
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
    int r = gd_bus_doorbell(bus_of(dev), dev->slot, VP_ID_SERVER, vector);
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
static bool check_gone(struct gd_device *dev)
{
    if (dev->broken || gd_bus_control_present(bus_of(dev), dev->slot))
        return false;
    dev->broken = true;
    snprintf(dev->reason, sizeof(dev->reason), "control function removed");
    gd_info("slot %u: control function removed: service stopped", dev->slot);
    stop_all_frontends(dev);
    stop_service(dev);
    return true;
}

void gd_device_break(struct gd_device *dev, const char *fmt, ...)
{
    if (dev->broken || check_gone(dev))
        return; /* keep the first reason */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dev->reason, sizeof(dev->reason), fmt, ap);
    va_end(ap);
    dev->broken = true;
    gd_error("slot %u: NEEDS_RESET: %s", dev->slot, dev->reason);
    stop_all_frontends(dev);
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
    vsnprintf(dev->reason, sizeof(dev->reason), fmt, ap);
    va_end(ap);
    dev->broken = true;
    gd_error("slot %u: FAILED: %s", dev->slot, dev->reason);
    set_status(dev, VP_STATUS_FAILED);
    kick_server(dev, VP_VEC_RECEIVEQ_KICK);
}

/* ---------------------------------- windows ---------------------------------- */

static void unmap_window(struct gd_device *dev, struct gd_window *w)
{
    if (!w->mapped)
        return;
    /* Put the inaccessible reservation back over the window's range (MAP_FIXED
     * replaces the shared mapping atomically). */
    void *p = mmap(dev->bar + w->ca.bar_offset, w->ca.size, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED)
        gd_warn("slot %u: re-reserving window devfn 0x%x: %s", dev->slot, w->ca.devfn,
                strerror(errno));
    w->mapped = false;
}

/* Stop using a window: regions inside it leave the table (data path first), then
 * it is unmapped. */
static void release_window(struct gd_device *dev, struct gd_window *w, const char *why)
{
    dp_pause(dev);
    unsigned n = drop_regions_in(dev, w->ca.bar_offset, w->ca.size);
    if (n)
        gd_info("slot %u: window devfn 0x%x %s while %u region(s) used it: regions dropped",
                dev->slot, w->ca.devfn, why, n);
    unmap_window(dev, w);
    dp_resume(dev);
}

static struct gd_win_id win_id(const struct gd_ca_window *w)
{
    return (struct gd_win_id){ .domain = w->domain, .bus = w->bus, .devfn = w->devfn };
}

static void try_map(struct gd_device *dev, struct gd_window *w)
{
    if (w->mapped || !dev->bar)
        return;
    uint64_t size = 0;
    w->error[0] = 0;
    if (gd_bus_window_query(bus_of(dev), dev->slot, win_id(&w->ca), &size) < 0)
        return; /* not plugged yet */
    if (size < w->ca.size) {
        snprintf(w->error, sizeof(w->error),
                 "function holds %llu bytes, the window table says %llu",
                 (unsigned long long)size, (unsigned long long)w->ca.size);
        gd_warn("slot %u: window devfn 0x%x: %s", dev->slot, w->ca.devfn, w->error);
        return;
    }
    vp_error err = { { 0 } };
    int r = gd_bus_map_window(bus_of(dev), dev->slot, win_id(&w->ca),
                              dev->bar + w->ca.bar_offset, w->ca.size, &err);
    if (r < 0) {
        snprintf(w->error, sizeof(w->error), "%s", err.msg);
        gd_warn("slot %u: window devfn 0x%x: %s", dev->slot, w->ca.devfn, w->error);
        return;
    }
    w->mapped = true;
    gd_info("slot %u: window devfn 0x%x mapped at BAR offset 0x%llx (%llu bytes)", dev->slot,
            w->ca.devfn, (unsigned long long)w->ca.bar_offset, (unsigned long long)w->ca.size);
}

static bool same_window(const struct gd_ca_window *a, const struct gd_ca_window *b)
{
    return a->domain == b->domain && a->bus == b->bus && a->devfn == b->devfn &&
           a->bar_offset == b->bar_offset && a->size == b->size;
}

/* Apply the window table if its generation changed (or @force). Returns 0, or -1
 * when the device broke. A table caught mid-update is applied on a later call. */
static int refresh_windows(struct gd_device *dev, bool force)
{
    if (dev->broken)
        return -1;
    uint32_t gen = gd_ca_generation(dev->ca);
    if (!force && dev->windows_read && gen == dev->generation)
        return 0;
    if (check_gone(dev))
        return -1;
    struct gd_ca_windows t;
    vp_error err = { { 0 } };
    int r = gd_ca_read_windows(dev->ca, dev->bar_size, &t, &err);
    if (r == -EAGAIN) {
        gd_cp_schedule_retry(dev->cp, dev->slot, GD_CP_RETRY_NS);
        return 0;
    }
    if (r < 0) {
        gd_device_break(dev, "bad window table (generation %u): %s", gen, err.msg);
        return -1;
    }
    /* Windows gone from the table (or changed) are released first. */
    for (unsigned i = 0; i < dev->nwin; i++) {
        bool keep = false;
        for (unsigned j = 0; j < t.n && !keep; j++)
            keep = same_window(&dev->win[i].ca, &t.w[j]);
        if (!keep)
            release_window(dev, &dev->win[i], "left the window table");
    }
    struct gd_window next[VP_MAX_WINDOWS];
    for (unsigned j = 0; j < t.n; j++) {
        next[j] = (struct gd_window){ .ca = t.w[j] };
        for (unsigned i = 0; i < dev->nwin; i++) {
            if (same_window(&dev->win[i].ca, &t.w[j])) {
                next[j] = dev->win[i];
                break;
            }
        }
    }
    memcpy(dev->win, next, t.n * sizeof(next[0]));
    dev->nwin = t.n;
    dev->generation = t.generation;
    dev->windows_read = true;
    for (unsigned j = 0; j < dev->nwin; j++)
        try_map(dev, &dev->win[j]);
    gd_debug("slot %u: window table generation %u: %u window(s)", dev->slot, dev->generation,
             dev->nwin);
    return 0;
}

/* Is [bar_offset, +size) inside one mapped window? 0; -EAGAIN when inside a window
 * listed but not mapped yet (the message may wait for it); else -ENOENT / -EINVAL. */
static int window_check(struct gd_device *dev, uint64_t bar_offset, uint64_t size, vp_error *err)
{
    for (unsigned i = 0; i < dev->nwin; i++) {
        const struct gd_window *w = &dev->win[i];
        if (bar_offset < w->ca.bar_offset || bar_offset - w->ca.bar_offset >= w->ca.size)
            continue;
        if (!vp_range_ok(bar_offset - w->ca.bar_offset, size, w->ca.size))
            return vp_fail(err, -EINVAL,
                           "crosses the end of window devfn 0x%x [0x%llx, +0x%llx)", w->ca.devfn,
                           (unsigned long long)w->ca.bar_offset, (unsigned long long)w->ca.size);
        if (w->mapped)
            return 0;
        if (w->error[0])
            return vp_fail(err, -EINVAL, "window devfn 0x%x is unusable: %s", w->ca.devfn,
                           w->error);
        return vp_fail(err, -EAGAIN, "window devfn 0x%x is listed but not plugged yet",
                       w->ca.devfn);
    }
    return vp_fail(err, -ENOENT, "not inside any window of the 0x%llx-byte BAR",
                   (unsigned long long)dev->bar_size);
}

void gd_device_window_plugged(struct gd_device *dev, struct gd_win_id id)
{
    if (dev->broken || refresh_windows(dev, false) < 0)
        return;
    for (unsigned i = 0; i < dev->nwin; i++) {
        struct gd_window *w = &dev->win[i];
        if (!gd_bus_win_id_eq(bus_of(dev), win_id(&w->ca), id))
            continue;
        try_map(dev, w);
        if (w->mapped && dev->stalled)
            gd_cp_schedule_retry(dev->cp, dev->slot, 0);
    }
}

void gd_device_window_unplug(struct gd_device *dev, struct gd_win_id id)
{
    /* Even a broken device must let go of the memory. */
    for (unsigned i = 0; i < dev->nwin; i++) {
        struct gd_window *w = &dev->win[i];
        if (gd_bus_win_id_eq(bus_of(dev), win_id(&w->ca), id)) {
            release_window(dev, w, "was unplugged");
            w->error[0] = 0;
        }
    }
}

/* ---------------------------------- handlers ---------------------------------- */

/* Every region of a MEMORY_INFO(ADD) inside one mapped window: 0, -EAGAIN when one is
 * only waiting for its window (and none is refused for good), else the first refusal. */
static int windows_check(struct gd_device *dev, const struct vp_mt_region *r, unsigned n,
                         vp_error *err)
{
    bool again = false;
    vp_error again_err = { { 0 } };
    for (unsigned i = 0; i < n; i++) {
        vp_error werr = { { 0 } };
        int c = window_check(dev, r[i].target, r[i].size, &werr);
        if (c == -EAGAIN && !again) {
            again = true;
            snprintf(again_err.msg, sizeof(again_err.msg), "region %u: %s", i, werr.msg);
        } else if (c < 0 && c != -EAGAIN) {
            return vp_fail(err, c, "region %u (xgpa 0x%llx size 0x%llx bar offset 0x%llx): %s",
                           i, (unsigned long long)r[i].gpa, (unsigned long long)r[i].size,
                           (unsigned long long)r[i].target, werr.msg);
        }
    }
    return again ? vp_fail(err, -EAGAIN, "%s", again_err.msg) : 0;
}

/* The regions of a controlq MEMORY_INFO as memory table regions (target: the offset
 * in the logical BAR). */
static void to_mt(const struct vp_cq_region *c, unsigned n, struct vp_mt_region *out)
{
    for (unsigned i = 0; i < n; i++)
        out[i] = (struct vp_mt_region){ .gpa = c[i].xgpa, .size = c[i].size,
                                        .target = c[i].bar_offset };
}

static enum gd_handled memory_info(struct gd_device *dev, const struct vp_cq_msg *m,
                                   struct vp_cq_msg *ack, bool last_try)
{
    vp_error err = { { 0 } };
    if (refresh_windows(dev, false) < 0)
        return GD_H_BROKEN;
    unsigned n = m->u.mem.nregions;
    struct vp_mt_region regs[VP_MAX_REGIONS];
    to_mt(m->u.mem.regions, n, regs);
    if (m->u.mem.op == VP_OP_ADD) {
        /* The same MEMORY_INFO again (a replay) is no overlap: its regions are skipped. */
        unsigned added = 0;
        int r = vp_mt_check_add(&dev->mt, regs, n, VP_MT_SKIP_SAME, NULL, &err);
        if (!r)
            r = windows_check(dev, regs, n, &err);
        if (r == -EAGAIN && !last_try)
            return GD_H_RETRY;
        if (!r)
            r = vp_mt_add(&dev->mt, regs, n, VP_MT_SKIP_SAME, &added, &err);
        if (r < 0) {
            char why[VP_MAX_REASON + 1];
            snprintf(why, sizeof(why), "%s%s", r == -EAGAIN ? "timed out: " : "", err.msg);
            gd_warn("slot %u: MEMORY_INFO(ADD) seq %llu refused: %s", dev->slot,
                    (unsigned long long)m->seq, why);
            vp_cq_make_ack(ack, m, VP_ACK_ADD_FAIL, why);
            return GD_H_ACK;
        }
        dp_memory_add(dev, &dev->mt.r[dev->mt.n - added], added);
        gd_info("slot %u: memory table: %u region(s) added (%u known)", dev->slot, added,
                dev->mt.n);
        vp_cq_make_ack(ack, m, VP_ACK_ADD_DONE, NULL);
        return GD_H_ACK;
    }
    /* DEL: all named regions must be known; the data path stops using them first
     * (spec 1.6.2), then they leave the table, then the ACK goes out. */
    if (vp_mt_check_del(&dev->mt, regs, n, &err) < 0) {
        gd_warn("slot %u: MEMORY_INFO(DEL) seq %llu refused: %s", dev->slot,
                (unsigned long long)m->seq, err.msg);
        vp_cq_make_ack(ack, m, VP_ACK_DEL_FAIL, err.msg);
        return GD_H_ACK;
    }
    struct vp_mt_region gone[VP_MAX_REGIONS];
    for (unsigned i = 0; i < n; i++)
        gone[i] = dev->mt.r[vp_mt_find(&dev->mt, regs[i].gpa)]; /* checked: present */
    dp_memory_del(dev, gone, n);
    vp_mt_del(&dev->mt, gone, n);
    gd_info("slot %u: memory table: %u region(s) deleted (%u left)", dev->slot, n, dev->mt.n);
    vp_cq_make_ack(ack, m, VP_ACK_DEL_DONE, NULL);
    return GD_H_ACK;
}

static enum gd_handled handle_memory_info(struct gd_device *dev, const struct vp_cq_msg *m,
                                          struct vp_cq_msg *ack, bool last_try)
{
    dp_pause(dev);
    enum gd_handled h = memory_info(dev, m, ack, last_try);
    dp_resume(dev);
    return h;
}

static int validate_virtqs(struct gd_device *dev, const struct vp_cq_msg *m, vp_error *err)
{
    uint32_t n = m->u.dev.nvirtqs;
    if (n == 0)
        return vp_fail(err, -EINVAL, "no virtqueues");
    for (uint32_t i = 0; i < n; i++) {
        const struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        if (q->index >= VP_MAX_VIRTQS)
            return vp_fail(err, -EINVAL, "virtq index %u exceeds %u", q->index,
                           VP_MAX_VIRTQS - 1);
        for (uint32_t j = 0; j < i; j++) {
            if (m->u.dev.virtqs[j].index == q->index)
                return vp_fail(err, -EINVAL, "virtq index %u listed twice", q->index);
        }
        if (q->call_vector != VP_NO_VECTOR && q->call_vector >= VP_MAX_VECTORS)
            return vp_fail(err, -EINVAL, "virtq %u: call vector %u exceeds %u", q->index,
                           q->call_vector, VP_MAX_VECTORS - 1);
        /* Size, alignment, no wrap; each part inside one region of the table. */
        struct vp_ring_layout l = { .index = q->index, .num = q->num, .desc = q->desc,
                                    .avail = q->avail, .used = q->used };
        int r = vp_ring_check(&l, err);
        if (!r)
            r = vp_mt_check_ring(&dev->mt, &l, err);
        if (r)
            return r;
    }
    return 0;
}

struct gd_frontend *gd_device_frontend(struct gd_device *dev, uint32_t type, uint64_t id)
{
    for (unsigned i = 0; i < dev->nfe; i++) {
        if (dev->fe[i]->device_type == type && dev->fe[i]->device_id == id)
            return dev->fe[i];
    }
    return NULL;
}

static void remove_frontend(struct gd_device *dev, struct gd_frontend *fe)
{
    for (unsigned i = 0; i < dev->nfe; i++) {
        if (dev->fe[i] == fe) {
            memmove(&dev->fe[i], &dev->fe[i + 1], (dev->nfe - i - 1) * sizeof(dev->fe[0]));
            dev->nfe--;
            break;
        }
    }
    free(fe);
}

static void fill_frontend(struct gd_frontend *fe, const struct vp_cq_msg *m)
{
    fe->device_type = m->device_type;
    fe->device_id = m->device_id;
    fe->nqueues = m->u.dev.nvirtqs;
    for (uint32_t i = 0; i < fe->nqueues; i++) {
        const struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        fe->queues[i] = (struct gd_queue){
            .index = q->index, .num = q->num, .last_avail_idx = q->last_avail_idx,
            .kick_vector = q->kick_vector, .call_vector = q->call_vector,
            .desc = q->desc, .avail = q->avail, .used = q->used,
        };
    }
}

static enum gd_handled device_add(struct gd_device *dev, const struct vp_cq_msg *m,
                                  struct vp_cq_msg *ack)
{
    vp_error err = { { 0 } };
    const char *tname = vp_device_type_name(m->device_type);
    char why[VP_MAX_REASON + 1];
    if (m->device_type != VP_DEV_NET) {
        snprintf(why, sizeof(why), "device type %s not supported by vhost-pci-guestd", tname);
        goto fail;
    }
    if (validate_virtqs(dev, m, &err) < 0) {
        snprintf(why, sizeof(why), "%s device_id %llu: %s", tname,
                 (unsigned long long)m->device_id, err.msg);
        goto fail;
    }
    struct gd_frontend *old = gd_device_frontend(dev, m->device_type, m->device_id);
    if (!old && dev->nfe >= GD_MAX_FRONTENDS) {
        snprintf(why, sizeof(why), "support list full (%u frontends)", GD_MAX_FRONTENDS);
        goto fail;
    }
    struct gd_frontend *fe = old;
    if (old) {
        /* Its info changed (spec 1.6.1.1): stop the old queues, serve the new ones. */
        dp_frontend_stop(dev, old);
    } else {
        fe = calloc(1, sizeof(*fe));
        if (!fe) {
            snprintf(why, sizeof(why), "out of memory");
            goto fail;
        }
        dev->fe[dev->nfe++] = fe;
    }
    fill_frontend(fe, m);
    if (dp_frontend_start(dev, fe, &err) < 0) {
        snprintf(why, sizeof(why), "%s device_id %llu: %s", tname,
                 (unsigned long long)m->device_id, err.msg);
        remove_frontend(dev, fe);
        goto fail;
    }
    gd_info("slot %u: %s frontend device_id %llu %s (%u virtqueues)", dev->slot, tname,
            (unsigned long long)m->device_id, old ? "updated" : "added", fe->nqueues);
    vp_cq_make_ack(ack, m, VP_ACK_ADD_DONE, NULL);
    return GD_H_ACK;
fail:
    gd_warn("slot %u: DEVICE_INFO(ADD) seq %llu refused: %s", dev->slot,
            (unsigned long long)m->seq, why);
    vp_cq_make_ack(ack, m, VP_ACK_ADD_FAIL, why);
    return GD_H_ACK;
}

static enum gd_handled device_del(struct gd_device *dev, const struct vp_cq_msg *m,
                                  struct vp_cq_msg *ack)
{
    struct gd_frontend *fe = gd_device_frontend(dev, m->device_type, m->device_id);
    if (!fe) {
        char why[VP_MAX_REASON + 1];
        snprintf(why, sizeof(why), "no %s frontend with device_id %llu in the support list",
                 vp_device_type_name(m->device_type), (unsigned long long)m->device_id);
        gd_warn("slot %u: DEVICE_INFO(DEL) seq %llu refused: %s", dev->slot,
                (unsigned long long)m->seq, why);
        vp_cq_make_ack(ack, m, VP_ACK_DEL_FAIL, why);
        return GD_H_ACK;
    }
    /* Stop first (spec 1.6.2): the positions below are final once the hook returned. */
    dp_frontend_stop(dev, fe);
    vp_cq_make_ack(ack, m, VP_ACK_DEL_DONE, NULL);
    ack->u.ack.npos = fe->nqueues;
    for (uint32_t i = 0; i < fe->nqueues; i++) {
        ack->u.ack.pos[i].index = fe->queues[i].index;
        ack->u.ack.pos[i].last_avail_idx = fe->queues[i].last_avail_idx;
    }
    gd_info("slot %u: %s frontend device_id %llu deleted", dev->slot,
            vp_device_type_name(fe->device_type), (unsigned long long)fe->device_id);
    remove_frontend(dev, fe);
    return GD_H_ACK;
}

static enum gd_handled handle_device_info(struct gd_device *dev, const struct vp_cq_msg *m,
                                          struct vp_cq_msg *ack, bool last_try)
{
    (void)last_try;
    dp_pause(dev);
    enum gd_handled h = m->u.dev.op == VP_OP_ADD ? device_add(dev, m, ack)
                                                 : device_del(dev, m, ack);
    dp_resume(dev);
    return h;
}

static enum gd_handled handle_feature_bits(struct gd_device *dev, const struct vp_cq_msg *m,
                                           struct vp_cq_msg *ack, bool last_try)
{
    (void)last_try;
    /* Never accept a bit that was not offered (spec 1.5.2), nor one the
     * configuration refuses. */
    uint64_t accepted = m->u.features & VP_NET_FEATURES & ~dev->cp->cfg.refuse_features;
    dev->features = accepted;
    if (dev->cp->dp && dev->cp->dp->features)
        dev->cp->dp->features(dev->cp->dp_opaque, dev, accepted);
    gd_info("slot %u: features offered 0x%llx, accepted 0x%llx", dev->slot,
            (unsigned long long)m->u.features, (unsigned long long)accepted);
    vp_cq_make_ack(ack, m, VP_ACK_ADD_DONE, NULL);
    ack->u.ack.features = accepted;
    return GD_H_ACK;
}

/* What the server may send on the control transmitq. NULL: a protocol violation. */
static const gd_handler handlers[VP_MSG_TYPE_COUNT] = {
    [VP_MSG_MEMORY_INFO] = handle_memory_info,
    [VP_MSG_DEVICE_INFO] = handle_device_info,
    [VP_MSG_FEATURE_BITS] = handle_feature_bits,
};

/* ---------------------------------- service ---------------------------------- */

/* Handle one decoded message taken from transmitq buffer @slot. */
static enum gd_handled process(struct gd_device *dev, const struct vp_cq_msg *m, unsigned slot,
                               bool last_try)
{
    vp_error err = { { 0 } };
    if (m->type >= VP_MSG_TYPE_COUNT || !handlers[m->type]) {
        gd_device_break(dev, "unexpected %s (seq %llu) on the control transmitq",
                        vp_msg_type_name(m->type), (unsigned long long)m->seq);
        return GD_H_BROKEN;
    }
    gd_debug("slot %u: %s seq %llu", dev->slot, vp_msg_type_name(m->type),
             (unsigned long long)m->seq);
    memset(&dev->ack, 0, sizeof(dev->ack));
    enum gd_handled h = handlers[m->type](dev, m, &dev->ack, last_try);
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
        if (refresh_windows(dev, false) < 0)
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
        dev->broken = true;
        snprintf(dev->reason, sizeof(dev->reason), "control area not mapped by the bus");
        gd_error("slot %u: %s", slot, dev->reason);
        return dev;
    }
    if (!gd_ca_has_magic(ca, ca_size) || ca_size < VP_CA_HEADER_END) {
        /* Not a vhost-pci control area: do not write into it. */
        dev->broken = true;
        snprintf(dev->reason, sizeof(dev->reason), "no \"%s\" magic in the control area",
                 VP_CA_MAGIC);
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
    if (refresh_windows(dev, true) < 0)
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
    dp_pause(dev);
    stop_all_frontends(dev);
    drop_all_regions(dev);
    dp_resume(dev);
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
    return gd_bus_doorbell(bus_of(dev), dev->slot, VP_ID_DRIVER_VM, vector);
}

uint64_t gd_device_features(const struct gd_device *dev) { return dev->features; }
unsigned gd_device_slot(const struct gd_device *dev) { return dev->slot; }
struct gd_loop *gd_device_loop(const struct gd_device *dev) { return dev->cp->loop; }
const char *gd_device_tap_name(const struct gd_device *dev)
{
    return dev->cp->tap[0] ? dev->cp->tap : NULL;
}
