/*
 * bus.h - how vhost-pci-guestd finds and reaches vhost-pci devices (DESIGN section 6).
 *
 * A vhost-pci device is a control function (ivshmem-doorbell: BAR0 registers, BAR2
 * = the control area) plus memory window functions (ivshmem-plain: BAR2 = one peer
 * memory file). A bus discovers these functions, maps them and rings doorbells.
 * Everything above the bus (control plane, data path) is the same code for both
 * implementations:
 *
 *  - `local` (bus_local.c): host-only. Connects to the server's --local-bus socket
 *    (protocol/vp_localbus.h) and receives the control area, eventfds and window
 *    files over it. Doorbells are eventfd writes; controlq interrupts arrive on the
 *    id 1 vector 0 eventfd.
 *  - `pci` (bus_pci.c): inside the device VM. Scans sysfs for 1af4:1110 functions
 *    whose BAR2 starts with "VHOSTPCI", mmaps resource0 (registers) and resource2
 *    (control area); a doorbell is a 32-bit write of (peer << 16) | vector at
 *    BAR0 + 12; windows are the PCI functions at the domain/bus/devfn the control
 *    area lists (their resource2). No interrupts reach userspace: the control plane
 *    polls the controlq. Hot-plug is found by rescanning.
 *
 * Slots name control functions: 0..255 (the local bus's slot; the PCI devfn of the
 * control function on the pci bus). A window is named by its gd_win_id, as listed in
 * the control area; the local bus matches devfn within the control function's slot,
 * the pci bus the whole PCI address.
 *
 * Threading and re-entrancy: everything runs on the loop thread. Events are
 * delivered from the bus's own loop sources and from gd_bus_sync(); an event
 * callback must not call gd_bus_sync() or gd_bus_destroy().
 *
 * Ownership: the bus owns every fd and mapping it creates (control areas, eventfds,
 * window fds, register BARs). gd_bus_map_window() places a window mapping into
 * address space the caller reserved; the caller owns and removes that mapping.
 */
#ifndef GD_BUS_H
#define GD_BUS_H

#include <stdbool.h>
#include <stdint.h>

#include "vp_common.h"

struct gd_loop;
struct gd_bus;

/** Slot value for window events that are not tied to a control function (pci). */
#define GD_BUS_ANY_SLOT 0xffffffffu

/** A memory window function as the control area names it (VP_CA_WIN_*). */
struct gd_win_id {
    uint16_t domain;
    uint8_t bus;
    uint8_t devfn;
};


/**
 * What a bus tells its user (the control plane). All run on the loop thread.
 * The *_unplug callbacks are synchronous: when they return, the user no longer
 * uses the function (for a window: it has replaced its mapping); the bus then
 * unmaps, closes and reports the ejection (local: EJECTED).
 */
struct gd_bus_events {
    /** A control function appeared; gd_bus_control_area() maps it. */
    void (*control_plugged)(void *opaque, unsigned slot);
    /** The control function of @slot goes away: stop using it and its windows. */
    void (*control_unplug)(void *opaque, unsigned slot);
    /** A window function appeared (@slot: its control function, or GD_BUS_ANY_SLOT). */
    void (*window_plugged)(void *opaque, unsigned slot, struct gd_win_id id);
    /** A window function goes away: unmap it (@slot as for window_plugged). */
    void (*window_unplug)(void *opaque, unsigned slot, struct gd_win_id id);
    /** The bus is gone for good (local: the server closed the socket). @why says why.
     *  Every control function has already been unplugged. */
    void (*bus_lost)(void *opaque, const char *why);
};

struct gd_bus_ops {
    const char *name;                     /* "local" or "pci" */
    bool windows_by_devfn;                /* windows are named by devfn alone, within
                                             their slot (local); else by the whole id */
    /** Connect / scan; plug events for what exists follow from the loop. */
    int (*start)(struct gd_bus *bus, vp_error *err);
    /** Handle pending bus input now, without blocking (local: drain the socket;
     *  pci: rescan sysfs). */
    void (*sync)(struct gd_bus *bus);
    int (*control_area)(struct gd_bus *bus, unsigned slot, void **base, uint64_t *size);
    bool (*control_present)(struct gd_bus *bus, unsigned slot);   /* may be NULL */
    int (*irq_fd)(struct gd_bus *bus, unsigned slot);
    void (*irq_ack)(struct gd_bus *bus, unsigned slot);
    int (*doorbell)(struct gd_bus *bus, unsigned slot, uint16_t peer, uint16_t vector);
    int (*peer_vectors)(struct gd_bus *bus, unsigned slot, uint16_t peer);
    int (*window_query)(struct gd_bus *bus, unsigned slot, struct gd_win_id id,
                        uint64_t *size);
    int (*window_map)(struct gd_bus *bus, unsigned slot, struct gd_win_id id, void *addr,
                      uint64_t size, vp_error *err);
    void (*destroy)(struct gd_bus *bus);
};

/** Common head of every bus implementation (embedded first). */
struct gd_bus {
    const struct gd_bus_ops *ops;
    struct gd_loop *loop;
    const struct gd_bus_events *ev;
    void *ev_opaque;
};

/**
 * The `local` bus: connects to the server's UNIX socket @path (retrying for up to
 * @connect_timeout_ms while it does not exist yet or refuses), sends HELLO.
 * Returns NULL with a reason in @err. Nothing is plugged until start().
 */
struct gd_bus *gd_bus_local_new(struct gd_loop *loop, const char *path,
                                unsigned connect_timeout_ms,
                                const struct gd_bus_events *ev, void *opaque, vp_error *err);

/**
 * Set how many fds the `local` bus @bus may hold for its control functions
 * (eventfds, driver VM vectors, window files); a message that would take it over is
 * refused on its own. Default: RLIMIT_NOFILE at creation minus a reserve of 64 for
 * everything else (status clients, endpoints). For tests and tuning.
 */
void gd_bus_local_set_fd_budget(struct gd_bus *bus, unsigned max);

/**
 * The `pci` bus over the sysfs tree at @sysfs_root (normally "/sys"; tests pass a
 * fake tree of regular files). Rescans every @rescan_ms (0: only on gd_bus_sync()).
 * Returns NULL with a reason in @err.
 */
struct gd_bus *gd_bus_pci_new(struct gd_loop *loop, const char *sysfs_root,
                              unsigned rescan_ms, const struct gd_bus_events *ev,
                              void *opaque, vp_error *err);

/** True when @a and @b name the same window function on @bus. */
static inline bool gd_bus_win_id_eq(const struct gd_bus *bus, struct gd_win_id a,
                                    struct gd_win_id b)
{
    return a.devfn == b.devfn &&
           (bus->ops->windows_by_devfn || (a.domain == b.domain && a.bus == b.bus));
}

/** Start: returns 0 or -errno with a reason. */
static inline int gd_bus_start(struct gd_bus *bus, vp_error *err)
{
    return bus->ops->start(bus, err);
}

/** Process pending bus input now (see gd_bus_ops.sync). */
static inline void gd_bus_sync(struct gd_bus *bus) { bus->ops->sync(bus); }

/** The mapped control area of @slot (read-write, shared). 0 or -ENOENT. The
 *  mapping stays valid until control_unplug for @slot has returned. */
static inline int gd_bus_control_area(struct gd_bus *bus, unsigned slot, void **base,
                                      uint64_t *size)
{
    return bus->ops->control_area(bus, slot, base, size);
}

/**
 * Whether the control function of @slot is still there right now. The pci bus learns
 * of a hot-unplug only when it rescans; meanwhile the BARs read as whatever the
 * platform returns for unassigned addresses. The control plane asks this before
 * treating odd contents (a window table gone to zero, a broken ring) as the peer's
 * fault. True when the bus cannot tell.
 */
static inline bool gd_bus_control_present(struct gd_bus *bus, unsigned slot)
{
    return !bus->ops->control_present || bus->ops->control_present(bus, slot);
}

/** An fd that becomes readable (POLLIN) on a controlq interrupt for @slot, or -1
 *  when there is none and the controlq has to be polled. Owned by the bus. */
static inline int gd_bus_irq_fd(struct gd_bus *bus, unsigned slot)
{
    return bus->ops->irq_fd(bus, slot);
}

/** Consume a pending interrupt on gd_bus_irq_fd() (no-op without one). */
static inline void gd_bus_irq_ack(struct gd_bus *bus, unsigned slot)
{
    bus->ops->irq_ack(bus, slot);
}

/** Notify @peer (VP_ID_*) on @vector through @slot's doorbell. Returns 0,
 *  -ENOENT (no such slot), -ERANGE (vector not announced for that peer) or -errno. */
static inline int gd_bus_doorbell(struct gd_bus *bus, unsigned slot, uint16_t peer,
                                  uint16_t vector)
{
    return bus->ops->doorbell(bus, slot, peer, vector);
}

/** How many vectors @peer has on @slot (local: PEER_VECTORS count), or -1 when
 *  the bus cannot know (pci). */
static inline int gd_bus_peer_vectors(struct gd_bus *bus, unsigned slot, uint16_t peer)
{
    return bus->ops->peer_vectors(bus, slot, peer);
}

/** Whether window @id of @slot is present; 0 with *@size (its bytes), or -ENOENT. */
static inline int gd_bus_window_query(struct gd_bus *bus, unsigned slot,
                                      struct gd_win_id id, uint64_t *size)
{
    return bus->ops->window_query(bus, slot, id, size);
}

/**
 * Map the first @size bytes of window @id read-write, shared, at @addr with
 * MAP_FIXED (over address space the caller reserved). @size must not exceed the
 * window's. Returns 0, -ENOENT (not present), -EINVAL (size) or -errno from mmap,
 * with a reason in @err.
 */
static inline int gd_bus_map_window(struct gd_bus *bus, unsigned slot, struct gd_win_id id,
                                    void *addr, uint64_t size, vp_error *err)
{
    return bus->ops->window_map(bus, slot, id, addr, size, err);
}

/** Close everything the bus owns (no events are delivered). NULL is a no-op. */
static inline void gd_bus_destroy(struct gd_bus *bus)
{
    if (bus)
        bus->ops->destroy(bus);
}

#endif
