/*
 * device_windows.c - the logical BAR of one vhost-pci device (device.h, DESIGN section
 * 3): the window table of the control area applied (read once into a private copy and
 * validated by ctrlarea.c), windows mapped into the reserved BAR as their functions
 * are plugged, and released (regions inside dropped, data path first, then an
 * inaccessible reservation put back) when they leave the table or are unplugged.
 *
 * Security model: the window table is the server's and may change at any time; it
 * is only used through the validated copy, a window is mapped only at the size the
 * function really has, and a region enters the memory table only inside mapped
 * windows that are back to back (gd_dev_window_check), so a translation never
 * reaches outside a mapping; releasing a window drops every region overlapping it.
 * libc only.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "controlplane.h"
#include "device_priv.h"
#include "log.h"

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
    gd_dev_pause(dev);
    unsigned n = gd_dev_drop_regions_in(dev, w->ca.bar_offset, w->ca.size);
    if (n)
        gd_info("slot %u: window devfn 0x%x %s while %u region(s) used it: regions dropped",
                dev->slot, w->ca.devfn, why, n);
    unmap_window(dev, w);
    gd_dev_resume(dev);
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
    if (gd_bus_window_query(gd_dev_bus(dev), dev->slot, win_id(&w->ca), &size) < 0)
        return; /* not plugged yet */
    if (size < w->ca.size) {
        snprintf(w->error, sizeof(w->error),
                 "function holds %llu bytes, the window table says %llu",
                 (unsigned long long)size, (unsigned long long)w->ca.size);
        gd_warn("slot %u: window devfn 0x%x: %s", dev->slot, w->ca.devfn, w->error);
        return;
    }
    vp_error err = { { 0 } };
    int r = gd_bus_map_window(gd_dev_bus(dev), dev->slot, win_id(&w->ca),
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
int gd_dev_refresh_windows(struct gd_device *dev, bool force)
{
    if (dev->broken)
        return -1;
    uint32_t gen = gd_ca_generation(dev->ca);
    if (!force && dev->windows_read && gen == dev->generation)
        return 0;
    if (gd_dev_check_gone(dev))
        return -1;
    struct gd_ca_windows t;
    vp_error err = { { 0 } };
    int r = gd_ca_read_windows(dev->ca, dev->bar_size, &t, &err);
    if (r == -EAGAIN) {
        gd_dev_schedule_retry(dev, GD_CP_RETRY_NS);
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

/* Is [bar_offset, +size) inside mapped windows? A range may run on from one window
 * into the next one that starts right where it ends: the pieces of a peer memory file
 * whose size is not a power of two are windows back to back in the BAR (issue 13
 * item 3), and the BAR reservation makes them one contiguous mapping. 0; -EAGAIN when
 * a window it needs is listed but not mapped yet (the message may wait for it); else
 * -ENOENT / -EINVAL. */
int gd_dev_window_check(struct gd_device *dev, uint64_t bar_offset, uint64_t size, vp_error *err)
{
    uint64_t off = bar_offset, left = size;
    const struct gd_window *prev = NULL;
    for (;;) {
        const struct gd_window *w = NULL;
        for (unsigned i = 0; i < dev->nwin && !w; i++) {
            const struct gd_window *c = &dev->win[i];
            if (off >= c->ca.bar_offset && off - c->ca.bar_offset < c->ca.size)
                w = c;
        }
        if (!w && prev)
            return vp_fail(err, -EINVAL,
                           "crosses the end of window devfn 0x%x [0x%llx, +0x%llx)", prev->ca.devfn,
                           (unsigned long long)prev->ca.bar_offset,
                           (unsigned long long)prev->ca.size);
        if (!w)
            return vp_fail(err, -ENOENT, "not inside any window of the 0x%llx-byte BAR",
                           (unsigned long long)dev->bar_size);
        if (!w->mapped) {
            if (w->error[0])
                return vp_fail(err, -EINVAL, "window devfn 0x%x is unusable: %s", w->ca.devfn,
                               w->error);
            return vp_fail(err, -EAGAIN, "window devfn 0x%x is listed but not plugged yet",
                           w->ca.devfn);
        }
        uint64_t room = w->ca.size - (off - w->ca.bar_offset);
        if (left <= room)
            return 0;
        off += room;      /* w ends inside the BAR (validated table): no wrap */
        left -= room;
        prev = w;
    }
}

void gd_device_window_plugged(struct gd_device *dev, struct gd_win_id id)
{
    if (dev->broken || gd_dev_refresh_windows(dev, false) < 0)
        return;
    for (unsigned i = 0; i < dev->nwin; i++) {
        struct gd_window *w = &dev->win[i];
        if (!gd_bus_win_id_eq(gd_dev_bus(dev), win_id(&w->ca), id))
            continue;
        try_map(dev, w);
        if (w->mapped && dev->stalled)
            gd_dev_schedule_retry(dev, 0);
    }
}

void gd_device_window_unplug(struct gd_device *dev, struct gd_win_id id)
{
    /* Even a broken device must let go of the memory. */
    for (unsigned i = 0; i < dev->nwin; i++) {
        struct gd_window *w = &dev->win[i];
        if (gd_bus_win_id_eq(gd_dev_bus(dev), win_id(&w->ca), id)) {
            release_window(dev, w, "was unplugged");
            w->error[0] = 0;
        }
    }
}
