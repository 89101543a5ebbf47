/*
 * controlplane.h - the control plane of vhost-pci-guestd (DESIGN section 6): one
 * gd_device per plugged control function, fed by a bus (bus.h), scheduled on the
 * loop (loop.h), with an optional data path (datapath.h).
 *
 * Scheduling: a device whose bus offers an interrupt fd (local) is serviced when it
 * becomes readable, after gd_bus_sync() so that window plugs sent before the
 * interrupt are seen first; other devices (pci) are serviced by a loop poller that
 * sleeps at most GD_CP_POLL_NS when idle. A controlq message that needs a window
 * which is listed but not plugged yet is retried every GD_CP_RETRY_NS (with a bus
 * sync) until window_wait_ns has passed, then failed with a reason.
 *
 * Everything runs on the loop thread. libc only.
 */
#ifndef GD_CONTROLPLANE_H
#define GD_CONTROLPLANE_H

#include <stdbool.h>
#include <stdint.h>

#include "bus.h"
#include "datapath.h"
#include "loop.h"
#include "vp_localbus.h"

#define GD_CP_POLL_NS (2 * 1000 * 1000ULL)        /* controlq polling bound, no interrupts */
#define GD_CP_RETRY_NS (20 * 1000 * 1000ULL)      /* retry of a message waiting for a window */
#define GD_CP_WINDOW_WAIT_NS (10 * 1000 * 1000 * 1000ULL) /* default window_wait_ns */
#define GD_CP_MAX_SLOTS VP_LB_MAX_SLOTS

struct gd_device;
struct gd_cp;

struct gd_cp_config {
    const char *tap;              /* --tap NAME for the data path, or NULL */
    uint64_t window_wait_ns;      /* 0: GD_CP_WINDOW_WAIT_NS */
    uint64_t refuse_features;     /* remote feature bits never accepted, even when offered
                                     and supported (--features / --refuse-features: lets
                                     a test drive the renegotiation round, spec 1.5.1.1) */
    /** Called when the bus is lost for good (e.g. to quit the loop). */
    void (*bus_lost)(void *opaque, const char *why);
    void *opaque;
};

/* Per-slot handle given to loop callbacks (stable while the cp lives). */
struct gd_cp_slot {
    struct gd_cp *cp;
    unsigned slot;
};

struct gd_cp {
    struct gd_loop *loop;
    struct gd_bus *bus;
    struct gd_cp_config cfg;
    char tap[64];
    const struct gd_datapath_ops *dp;
    void *dp_opaque;
    struct gd_device *dev[GD_CP_MAX_SLOTS];
    struct gd_cp_slot slots[GD_CP_MAX_SLOTS];
    int poller;                   /* loop poller id, 0 when none */
    unsigned npolled;             /* devices without an interrupt fd */
    bool bus_lost;
};

/** The bus events a gd_cp handles; pass with the cp as opaque to a bus constructor. */
extern const struct gd_bus_events gd_cp_bus_events;

/** A control plane on @loop. @cfg is copied. NULL on ENOMEM. */
struct gd_cp *gd_cp_new(struct gd_loop *loop, const struct gd_cp_config *cfg);

/** Attach the bus (created with gd_cp_bus_events and this cp as opaque). The cp does
 *  not own it. */
void gd_cp_set_bus(struct gd_cp *cp, struct gd_bus *bus);

/** Register the data path (before the bus starts). @ops must outlive the cp. */
void gd_cp_set_datapath(struct gd_cp *cp, const struct gd_datapath_ops *ops, void *opaque);

/** Tear down every device (frontends stopped, memory released, windows unmapped),
 *  without telling the bus. Used at shutdown, before gd_bus_destroy(). */
void gd_cp_shutdown(struct gd_cp *cp);

/** gd_cp_shutdown() then free. NULL is a no-op. */
void gd_cp_free(struct gd_cp *cp);

/** The device in @slot, or NULL. */
struct gd_device *gd_cp_device(struct gd_cp *cp, unsigned slot);

/** Service every device now (tests, or after external events). Returns the number of
 *  controlq messages handled. */
int gd_cp_service_all(struct gd_cp *cp);

/* Used by device.c. */
/** Arm (once) the retry timer of @slot to fire after @delay_ns. */
void gd_cp_schedule_retry(struct gd_cp *cp, unsigned slot, uint64_t delay_ns);

#endif
