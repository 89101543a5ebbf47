/*
 * device.h - one vhost-pci device in the device VM (DESIGN section 3): its control
 * function (control area, notification eventfds, controlq), its memory windows and
 * regions, its frontends and their doorbell vectors, and the feature bits settled
 * with the guest driver. One per driver VM (client_uuid), owned by its tenant
 * (tenant.h); a clone is a second device of the same uuid until it replaces the
 * first (clone.h).
 *
 * Parts, each in its own file: the control area (ctrlarea.h), the controlq device
 * side (cq_dev.h), the memory table (windows.h), frontends and vectors
 * (frontends.h), the state messages and the driver-reset replay (cqmsg.h), devfns
 * (devfn.h). This file keeps the life cycle and plugging through the device host.
 *
 * Lifetime: reference counted (srv_device_ref/unref); srv_device_destroy() marks it
 * dead, fails its controlq messages, unplugs its functions and closes its fds; the
 * memory goes with the last reference. Main thread only.
 */
#ifndef VP_SERVER_DEVICE_H
#define VP_SERVER_DEVICE_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "cq_dev.h"
#include "ctrlarea.h"
#include "frontends.h"
#include "layout.h"
#include "windows.h"

struct vp_server;
struct srv_device;

/** Completion of a plug: @ret 0 or -errno with @reason (valid during the call). */
typedef void (*srv_plug_done_fn)(struct srv_device *dev, void *opaque, int ret,
                                 const char *reason);

enum srv_feat_state { FEAT_NONE, FEAT_SETTLED, FEAT_RENEGOTIATING };

/** One vhost-pci device. */
struct srv_device {
    struct vp_server *srv;
    int refs;
    bool dead;                           /* destroyed; freed at the last unref */
    uint8_t uuid[VP_UUID_LEN];
    char uuid_str[37];

    /* control function */
    uint32_t devfn;                      /* 0xffffffff: none */
    bool control_plugging, control_plugged;
    struct srv_ctrlarea ca;
    int rx_kick_fd, tx_kick_fd, irq_fd;
    guint rx_kick_src, tx_kick_src;
    struct srv_cq cq;

    struct srv_memory mem;               /* logical BAR, windows, regions */
    GPtrArray *frontends;                /* struct srv_frontend* */
    struct srv_vectors vectors;

    /* features */
    uint64_t features_offered, features_accepted;
    enum srv_feat_state feat_state;

    /** Called once at the next DRIVER_OK (cloning waits for it); cleared before. */
    void (*on_driver_ok)(struct srv_device *dev, void *opaque);
    void *on_driver_ok_opaque;

    uint64_t clones;                     /* times this uuid's device was cloned */
};

/** Create a device for @uuid with an empty memory table (control area ready, not
 *  plugged): allocates the control function's devfn. NULL with a reason on error. */
struct srv_device *srv_device_new(struct vp_server *srv, const uint8_t *uuid, vp_error *err);
struct srv_device *srv_device_ref(struct srv_device *dev);
void srv_device_unref(struct srv_device *dev);

/** First step of a destroy: mark dead and fail every controlq message with @why
 *  (completions run now). Idempotent; srv_device_destroy() does it too. */
void srv_device_stop(struct srv_device *dev, const char *why);
/** Destroy: stop, unplug windows and the control function, close everything. The
 *  caller still drops its own reference. */
void srv_device_destroy(struct srv_device *dev, const char *why);

/** Plug the control function (async; @done gets 0 or a reason). */
void srv_device_plug_control(struct srv_device *dev, srv_plug_done_fn done, void *opaque);
/** Add a window for @file (takes @fd) at @bar_offset and plug it (async): one
 *  function per piece (srv_file_pieces(): one unless the size is not a power of two),
 *  piece k at @bar_offset + its file offset; @done runs once, after the last piece,
 *  with the first failure (the pieces that did plug are then unplugged). Returns the
 *  window index or -errno with a reason (no free slot / devfns; @fd closed then). */
int srv_device_add_window(struct srv_device *dev, const struct srv_file_id *file, int fd,
                          uint64_t bar_offset, srv_plug_done_fn done, void *opaque,
                          vp_error *err);
/** Drop windows no region uses: remove from the table, unplug (fire and forget). */
void srv_device_drop_unused_windows(struct srv_device *dev);
/** Write the BAR size and window table into the control area, bump the generation,
 *  interrupt the guest driver. */
void srv_device_write_windows(struct srv_device *dev);
/** Set the logical BAR size (bytes) and write it into the control area at once (the
 *  guest driver reads it with the header when the control function appears). */
void srv_device_set_bar_size(struct srv_device *dev, uint64_t bar_size);
/** Announce the id 2 vector list (the frontends' call fds) to the device host
 *  (nothing before the control function is plugged). 0 or -errno with a reason. */
int srv_device_announce_vectors(struct srv_device *dev, vp_error *err);
/** Frontend by id, or NULL (index in *@idx). */
struct srv_frontend *srv_device_find_frontend(struct srv_device *dev, uint64_t device_id,
                                              guint *idx);

#endif
