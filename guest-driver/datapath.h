/*
 * datapath.h - the hooks between the control plane and a data path (vhost-pci-net,
 * DESIGN section 6; issue "Data path").
 *
 * The control plane keeps the support list of frontend devices (spec 1.5.2) and the
 * memory table; a data path serves the frontends' virtqueues through the logical BAR
 * (gd_device_translate) on the same single-threaded loop (gd_device_loop: add a
 * poller for adaptive polling, fd watches for a TAP device). It is registered once
 * with gd_cp_set_datapath(); without one, frontends are only recorded and a DEL
 * reports the positions they were added with.
 *
 * Ordering guarantees the data path relies on (spec 1.6.2, "every CPU stops using
 * the memory before DEL is acknowledged"; with one thread "stopped" means "returned
 * from the hook and never touches it again"):
 *  - DEVICE_INFO(DEL) of a frontend: frontend_stop() runs, then the ACK is sent with
 *    each queue's last_avail_idx as the hook left it in gd_queue.
 *  - DEVICE_INFO(ADD) of a frontend already in the list (its info changed, spec
 *    1.6.1.1): frontend_stop() on the old one, then frontend_start() on the new one.
 *  - MEMORY_INFO(DEL), a window unplug or generation change that drops a window, a
 *    device unplug: memory_del() runs with the regions still in the table and still
 *    mapped; after it returns they are removed and may be unmapped, then the ACK is
 *    sent. A queue whose rings or buffers were there must be stopped by the hook.
 *  - A broken device (NEEDS_RESET) or a device going away: frontend_stop() for each
 *    frontend first, then memory_del() for all regions.
 *
 * All hooks are optional (NULL: nothing to do) and run on the loop thread. A data path
 * with threads of its own reads the memory table from them (gd_device_region): the
 * control plane changes the table only between pause() and resume().
 */
#ifndef GD_DATAPATH_H
#define GD_DATAPATH_H

#include <stdbool.h>
#include <stdint.h>

#include "vp_common.h"
#include "vp_controlq.h"
#include "vp_memtable.h"

struct gd_device;
struct gd_json;
struct gd_loop;

/** One virtqueue of a frontend device, as DEVICE_INFO announced it. */
struct gd_queue {
    uint32_t index;               /* virtqueue index in the frontend (net: 0 RX, 1 TX) */
    uint32_t num;                 /* ring entries, a power of two */
    uint16_t last_avail_idx;      /* at ADD: where to resume; the data path keeps it
                                     current, at the latest when frontend_stop returns */
    uint16_t kick_vector;         /* VP_NO_VECTOR: kicks stay with the server */
    uint16_t call_vector;         /* doorbell vector of peer VP_ID_DRIVER_VM, or VP_NO_VECTOR */
    uint64_t desc, avail, used;   /* driver VM guest-physical addresses */
    /* Maintained by the data path (its threads store them atomically), shown by the
     * status socket: */
    bool broken;
    uint64_t packets, bytes;
    uint32_t worker;              /* the data path worker polling it */
    void *dp;                     /* data path's per-queue state */
};

/** One frontend device of the support list. */
struct gd_frontend {
    uint32_t device_type;         /* vp_device_type (only VP_DEV_NET is accepted) */
    uint64_t device_id;
    uint32_t nqueues;
    struct gd_queue queues[VP_MAX_VIRTQS];
    bool started;                 /* frontend_start succeeded, frontend_stop not yet run */
    void *dp;                     /* data path's per-frontend state */
};

struct gd_datapath_ops {
    /** Start serving @fe. Rings and buffers are reached with gd_device_translate();
     *  the driver VM is interrupted with gd_device_notify_peer(call_vector).
     *  Returns 0, or -errno with a reason in @err (the ACK is ADD_FAIL with it). */
    int (*frontend_start)(void *opaque, struct gd_device *dev, struct gd_frontend *fe,
                          vp_error *err);
    /** Stop serving @fe now and leave each queue's last_avail_idx in fe->queues[]. */
    void (*frontend_stop)(void *opaque, struct gd_device *dev, struct gd_frontend *fe);
    /** @regs[0..n) leave the memory table: stop every use of them before returning. */
    void (*memory_del)(void *opaque, struct gd_device *dev, const struct vp_mt_region *regs,
                       unsigned n);
    /** @regs[0..n) joined the memory table (a stopped queue may resume). */
    void (*memory_add)(void *opaque, struct gd_device *dev, const struct vp_mt_region *regs,
                       unsigned n);
    /** The accepted feature bits changed (FEATURE_BITS). */
    void (*features)(void *opaque, struct gd_device *dev, uint64_t features);
    /** Write the data path's own members into the status object being written. */
    void (*status)(void *opaque, struct gd_json *j);
    /** Park the data path's threads (nested calls allowed): the control plane calls
     *  it before it changes the memory table, windows or the support list, and
     *  resume() after; the other hooks pause by themselves. */
    void (*pause)(void *opaque);
    void (*resume)(void *opaque);
};

/* Services of the control plane for the data path (device.c). */

/**
 * Translate [xgpa, +len) of the driver VM into this process: returns a pointer into
 * the mapped logical BAR and sets *@avail to the bytes usable contiguously from it,
 * clamped to @len (loop for the rest); NULL (and *@avail 0) when xgpa is in no region
 * of the memory table. Valid until the next memory_del() hook.
 */
void *gd_device_translate(struct gd_device *dev, uint64_t xgpa, uint64_t len, uint64_t *avail);

/**
 * The region of the memory table that holds guest-physical @xgpa: sets *@start (its
 * first guest-physical address) and *@size (bytes, > 0) and returns where @start is
 * mapped in this process; NULL when @xgpa is in no region. For a data path's cache
 * of the last region it used (every address in [start, +size) maps to the returned
 * pointer plus its offset); valid until the next memory_del() hook.
 */
void *gd_device_region(struct gd_device *dev, uint64_t xgpa, uint64_t *start, uint64_t *size);

/** Interrupt the driver VM on @vector (a queue's call_vector): doorbell to peer
 *  VP_ID_DRIVER_VM. Returns 0 or -errno (-ERANGE: vector not announced). */
int gd_device_notify_peer(struct gd_device *dev, uint16_t vector);

/** The feature bits accepted in the last FEATURE_BITS (0 before any). */
uint64_t gd_device_features(const struct gd_device *dev);

/** The control function slot of @dev (for logs). */
unsigned gd_device_slot(const struct gd_device *dev);

/** The loop everything runs on. */
struct gd_loop *gd_device_loop(const struct gd_device *dev);

/** The data path's configuration (e.g. --tap NAME), NULL if none given. */
const char *gd_device_tap_name(const struct gd_device *dev);

#endif
