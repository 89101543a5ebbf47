/*
 * device_priv.h - what device.c (life cycle, status, controlq service), device_windows.c
 * (the logical BAR's windows) and device_msgs.c (the controlq messages' handlers)
 * share of one vhost-pci device (device.h). Not for other parts of guestd.
 * Single-threaded (the loop thread). libc only.
 */
#ifndef GD_DEVICE_PRIV_H
#define GD_DEVICE_PRIV_H

#include "device.h"

/** What a handler did with a controlq message. */
enum gd_handled {
    GD_H_ACK,      /* *ack is filled: send it and re-post the buffer */
    GD_H_RETRY,    /* waiting for a window: keep the message, try again later */
    GD_H_BROKEN,   /* the device broke while handling it */
};

typedef enum gd_handled (*gd_handler)(struct gd_device *dev, const struct vp_cq_msg *m,
                                      struct vp_cq_msg *ack, bool last_try);


/** The handler of request @type (device_msgs.c), NULL for none. Which types the
 *  server may send at all is vp_proto's to say. */
gd_handler gd_dev_handler(unsigned type);

/** The bus of @dev's control plane. */
struct gd_bus *gd_dev_bus(const struct gd_device *dev);
/** Have the control plane service @dev again in @delay_ns (0: at its next iteration):
 *  gd_cp_schedule_retry for @dev's slot, so that device_windows.c needs only its parent. */
void gd_dev_schedule_retry(struct gd_device *dev, uint64_t delay_ns);

/* The data path's hooks (datapath.h), each a no-op without a data path. */
void gd_dev_frontend_stop(struct gd_device *dev, struct gd_frontend *fe);
int gd_dev_frontend_start(struct gd_device *dev, struct gd_frontend *fe, vp_error *err);
void gd_dev_memory_del(struct gd_device *dev, const struct vp_mt_region *regs, unsigned n);
void gd_dev_memory_add(struct gd_device *dev, const struct vp_mt_region *regs, unsigned n);
/** The data path's threads parked (nested): every change of the memory table, the
 *  windows or the support list happens between these two. */
void gd_dev_pause(struct gd_device *dev);
void gd_dev_resume(struct gd_device *dev);
/** Stop the data path of every frontend of @dev. */
void gd_dev_stop_frontends(struct gd_device *dev);

/** Remove every region inside [off, +size) of the BAR, after the data path let go of
 *  them. Returns how many. */
unsigned gd_dev_drop_regions_in(struct gd_device *dev, uint64_t off, uint64_t size);

/** The control function was unplugged under us (pci, before the rescan): true when
 *  @dev just stopped quietly for it (nothing written, the unplug frees it). */
bool gd_dev_check_gone(struct gd_device *dev);

/* device_windows.c */
/** Apply the window table if its generation changed (or @force). 0, or -1 when the
 *  device broke. A table caught mid-update is applied on a later call. */
int gd_dev_refresh_windows(struct gd_device *dev, bool force);
/** Is [bar_offset, +size) inside one mapped window? 0; -EAGAIN when inside a window
 *  listed but not mapped yet (a message may wait for it); else -ENOENT / -EINVAL. */
int gd_dev_window_check(struct gd_device *dev, uint64_t bar_offset, uint64_t size,
                        vp_error *err);

#endif
