/*
 * controlplane.c - devices by slot, bus events, and when each device is serviced
 * (controlplane.h). The per-device protocol work is in device.c.
 *
 * Loop callbacks carry a per-slot handle, never a device pointer: a bus sync inside
 * a callback may unplug (free) the device, so the device is looked up again after
 * every sync. libc only.
 */
#include "controlplane.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "log.h"

struct gd_device *gd_cp_device(struct gd_cp *cp, unsigned slot)
{
    return slot < GD_CP_MAX_SLOTS ? cp->dev[slot] : NULL;
}

/* ----------------------------- scheduling ----------------------------- */

static void on_irq(void *opaque, int fd, short revents)
{
    (void)fd;
    (void)revents;
    struct gd_cp_slot *s = opaque;
    struct gd_cp *cp = s->cp;
    gd_bus_irq_ack(cp->bus, s->slot);
    /* Bus messages sent before the interrupt (window plugs) are handled first. */
    gd_bus_sync(cp->bus);
    struct gd_device *dev = gd_cp_device(cp, s->slot);
    if (dev)
        gd_device_service(dev);
}

static void on_retry(void *opaque)
{
    struct gd_cp_slot *s = opaque;
    struct gd_cp *cp = s->cp;
    struct gd_device *dev = gd_cp_device(cp, s->slot);
    if (!dev)
        return;
    dev->retry_timer = 0;
    gd_bus_sync(cp->bus);
    dev = gd_cp_device(cp, s->slot);
    if (dev)
        gd_device_service(dev);
}

void gd_cp_schedule_retry(struct gd_cp *cp, unsigned slot, uint64_t delay_ns)
{
    struct gd_device *dev = gd_cp_device(cp, slot);
    if (!dev || dev->broken)
        return;
    if (dev->retry_timer) {
        if (delay_ns) /* an earlier, longer one is already armed: keep it */
            return;
        gd_loop_del_timer(cp->loop, dev->retry_timer);
    }
    int id = gd_loop_add_timer(cp->loop, delay_ns, on_retry, &cp->slots[slot]);
    dev->retry_timer = id > 0 ? id : 0;
}

/* Poller for devices without an interrupt fd (pci). */
static int poll_devices(void *opaque)
{
    struct gd_cp *cp = opaque;
    int work = 0;
    for (unsigned s = 0; s < GD_CP_MAX_SLOTS; s++) {
        struct gd_device *dev = cp->dev[s];
        if (dev && dev->polled && !dev->broken)
            work += gd_device_service(dev);
    }
    return work;
}

static void update_poller(struct gd_cp *cp)
{
    if (cp->npolled && !cp->poller) {
        int id = gd_loop_add_poller(cp->loop, poll_devices, cp, GD_CP_POLL_NS);
        cp->poller = id > 0 ? id : 0;
    } else if (!cp->npolled && cp->poller) {
        gd_loop_del_poller(cp->loop, cp->poller);
        cp->poller = 0;
    }
}

/* ----------------------------- bus events ----------------------------- */

static void remove_device(struct gd_cp *cp, unsigned slot)
{
    struct gd_device *dev = cp->dev[slot];
    if (!dev)
        return;
    if (dev->polled)
        cp->npolled--;
    cp->dev[slot] = NULL;
    gd_device_free(dev);
    update_poller(cp);
}

static void ev_control_plugged(void *opaque, unsigned slot)
{
    struct gd_cp *cp = opaque;
    if (slot >= GD_CP_MAX_SLOTS)
        return;
    if (cp->dev[slot]) {
        gd_warn("slot %u plugged again: dropping the old device", slot);
        remove_device(cp, slot);
    }
    struct gd_device *dev = gd_device_new(cp, slot);
    if (!dev) {
        gd_error("slot %u: out of memory", slot);
        return;
    }
    cp->dev[slot] = dev;
    if (dev->broken)
        return;
    int fd = gd_bus_irq_fd(cp->bus, slot);
    if (fd >= 0) {
        int id = gd_loop_add_fd(cp->loop, fd, POLLIN, on_irq, &cp->slots[slot]);
        dev->irq_watch = id > 0 ? id : 0;
    }
    if (!dev->irq_watch) {
        dev->polled = true;
        cp->npolled++;
        update_poller(cp);
    }
    /* Messages may already be waiting (e.g. a device replayed after cloning). */
    gd_device_service(dev);
}

static void ev_control_unplug(void *opaque, unsigned slot)
{
    struct gd_cp *cp = opaque;
    if (slot < GD_CP_MAX_SLOTS && cp->dev[slot]) {
        gd_info("slot %u: control function unplugged", slot);
        remove_device(cp, slot);
    }
}

static void ev_window_plugged(void *opaque, unsigned slot, struct gd_win_id id)
{
    struct gd_cp *cp = opaque;
    for (unsigned s = 0; s < GD_CP_MAX_SLOTS; s++) {
        if (cp->dev[s] && (slot == GD_BUS_ANY_SLOT || slot == s))
            gd_device_window_plugged(cp->dev[s], id);
    }
}

static void ev_window_unplug(void *opaque, unsigned slot, struct gd_win_id id)
{
    struct gd_cp *cp = opaque;
    for (unsigned s = 0; s < GD_CP_MAX_SLOTS; s++) {
        if (cp->dev[s] && (slot == GD_BUS_ANY_SLOT || slot == s))
            gd_device_window_unplug(cp->dev[s], id);
    }
}

static void ev_bus_lost(void *opaque, const char *why)
{
    struct gd_cp *cp = opaque;
    cp->bus_lost = true;
    if (cp->cfg.bus_lost)
        cp->cfg.bus_lost(cp->cfg.opaque, why);
}

const struct gd_bus_events gd_cp_bus_events = {
    .control_plugged = ev_control_plugged,
    .control_unplug = ev_control_unplug,
    .window_plugged = ev_window_plugged,
    .window_unplug = ev_window_unplug,
    .bus_lost = ev_bus_lost,
};

/* ----------------------------- life cycle ----------------------------- */

struct gd_cp *gd_cp_new(struct gd_loop *loop, const struct gd_cp_config *cfg)
{
    struct gd_cp *cp = calloc(1, sizeof(*cp));
    if (!cp)
        return NULL;
    cp->loop = loop;
    if (cfg)
        cp->cfg = *cfg;
    if (!cp->cfg.window_wait_ns)
        cp->cfg.window_wait_ns = GD_CP_WINDOW_WAIT_NS;
    if (cp->cfg.tap)
        snprintf(cp->tap, sizeof(cp->tap), "%s", cp->cfg.tap);
    cp->cfg.tap = NULL; /* copied into cp->tap */
    for (unsigned s = 0; s < GD_CP_MAX_SLOTS; s++)
        cp->slots[s] = (struct gd_cp_slot){ .cp = cp, .slot = s };
    return cp;
}

void gd_cp_set_bus(struct gd_cp *cp, struct gd_bus *bus) { cp->bus = bus; }

void gd_cp_set_datapath(struct gd_cp *cp, const struct gd_datapath_ops *ops, void *opaque)
{
    cp->dp = ops;
    cp->dp_opaque = opaque;
}

void gd_cp_shutdown(struct gd_cp *cp)
{
    for (unsigned s = 0; s < GD_CP_MAX_SLOTS; s++)
        remove_device(cp, s);
    update_poller(cp);
}

void gd_cp_free(struct gd_cp *cp)
{
    if (!cp)
        return;
    gd_cp_shutdown(cp);
    free(cp);
}

int gd_cp_service_all(struct gd_cp *cp)
{
    int n = 0;
    for (unsigned s = 0; s < GD_CP_MAX_SLOTS; s++) {
        if (cp->dev[s])
            n += gd_device_service(cp->dev[s]);
    }
    return n;
}
