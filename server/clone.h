/*
 * clone.h - cloning a vhost-pci device (spec 1.6.1.2, DESIGN section 3): a new device
 * with its own control function is initialised like a new device (memory info,
 * features and every frontend replayed over its controlq, no socket traffic), the
 * old device's frontends are stopped first so that every queue resumes on the clone
 * exactly where it stopped, and the caller then swaps the clone in and destroys the
 * old device. Used when hot-added memory does not fit the logical BAR, and when a
 * device has handed out all 256 doorbell vector numbers of its control function
 * (QEMU's ivshmem cannot take a vector back: the device moves to a fresh one).
 *
 * The clone's memory table is the old one (windows re-plugged at their offsets in
 * the clone's BAR) plus, optionally, the regions of a MEMORY_INFO(ADD) that did not
 * fit. Main thread only.
 */
#ifndef VP_SERVER_CLONE_H
#define VP_SERVER_CLONE_H

#include "device.h"
#include "layout.h"
#include "vp_msg.h"

struct srv_clone;

/** Completion of a clone: @nd is the clone, ready (the callee takes over its
 *  reference), or NULL with @fail (the old device's frontends were restarted where
 *  they stopped; the clone is gone). Called exactly once; the handle is invalid
 *  from the start of this call. */
typedef void (*srv_clone_done_fn)(void *opaque, struct srv_device *nd, const char *fail);

/** Memory a clone adds on top of the old device's: a MEMORY_INFO(ADD) whose plan
 *  says clone (plan->bar_size, plan->clone_offset for old windows in slot order,
 *  then new ones). */
struct srv_clone_mem {
    const struct srv_add_plan *plan;
    struct vp_memory_info *mi;           /* new windows take their fds from here */
    const unsigned *keep;                /* indexes in @mi of the regions the plan placed */
    unsigned nkeep;
};

/**
 * Start cloning @dev (it must stay alive until the completion or a cancel), adding
 * @add (NULL: same BAR, same windows). With @renumber the clone's doorbell vectors
 * are numbered afresh (the used ones 0, 1, ...: a new control function has all 256
 * numbers again; issue 9 item 5), else they keep their numbers. @why says why, for the
 * log. *@out is set before anything can complete (the completion may come before
 * this function returns). Returns 0, or -errno with a reason in @err when not even
 * the clone could be created (nothing happened then, *@out is NULL and @done is not
 * called).
 */
int srv_clone_start(struct srv_clone **out, struct srv_device *dev, struct srv_clone_mem *add,
                    bool renumber, const char *why, srv_clone_done_fn done, void *opaque,
                    vp_error *err);

/** Abandon a clone in progress: the clone is destroyed, the completion is never
 *  called. */
void srv_clone_cancel(struct srv_clone *c);

#endif
