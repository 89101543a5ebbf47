/*
 * devfn.h - PCI function numbers of the device VM (DESIGN section 3, devhost.h):
 * allocation from the device host's range and fire-and-forget unplugs that keep a
 * devfn busy until the host has completed them.
 *
 * State lives in struct vp_server (devfn_busy[], unplugs_outstanding). Main thread.
 */
#ifndef VP_SERVER_DEVFN_H
#define VP_SERVER_DEVFN_H

#include <stdbool.h>
#include <stdint.h>

struct vp_server;

/** Allocate a devfn from the host's range [devfn_first, devfn_last] (step
 *  devfn_step), skipping those the host reports as still held in the device VM
 *  (vp_devhost_ops.devfn_held: zombies). Returns it (0..255), or -ENOSPC when every
 *  one is in use, still being unplugged or held. */
int srv_devfn_alloc(struct vp_server *srv);

/** Return @devfn (ignored when >= 256). */
void srv_devfn_free(struct vp_server *srv, uint32_t devfn);

/** Unplug a function and forget it: @control selects the control function
 *  @ctrl_devfn (then @devfn == @ctrl_devfn) or window @devfn of it. The devfn stays
 *  busy, and srv->unplugs_outstanding counts it, until the host completes (a
 *  failure is logged). */
void srv_unplug(struct vp_server *srv, bool control, uint32_t ctrl_devfn, uint32_t devfn);

#endif
