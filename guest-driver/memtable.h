/*
 * memtable.h - the memory table of one vhost-pci device: the driver VM's regions as
 * MEMORY_INFO announced them (spec 1.5 struct exotic_memory_region; DESIGN section 5)
 * and translation of the driver VM's guest-physical addresses into the logical BAR.
 *
 * Pure bookkeeping: no mapping, no bus. The caller supplies a window check so that
 * every region lies inside one mapped window (device.c). libc only.
 */
#ifndef GD_MEMTABLE_H
#define GD_MEMTABLE_H

#include <stdint.h>

#include "vp_common.h"
#include "vp_controlq.h"

struct gd_memtable {
    unsigned n;
    struct vp_cq_region r[VP_MAX_REGIONS];   /* xgpa, size, bar_offset; no xgpa overlap */
};

/**
 * Where a region of the logical BAR is backed. Returns 0 when
 * [bar_offset, +size) lies inside one mapped window, -EAGAIN when it lies inside a
 * window the control area lists but that is not mapped yet (the caller may retry
 * later), or -ENOENT/-EINVAL with a reason in @err.
 */
typedef int (*gd_mt_window_check)(void *opaque, uint64_t bar_offset, uint64_t size,
                                  vp_error *err);

/**
 * Add @n regions, all or nothing. Checks each: size > 0, [xgpa, +size) and
 * [bar_offset, +size) do not wrap, @check accepts it (first -EAGAIN wins only when no
 * region fails for good), no xgpa overlap with another new region or with a table
 * entry, unless identical to a table entry (xgpa, size and bar_offset equal: then it
 * is skipped, so repeated ADDs are idempotent), at most VP_MAX_REGIONS in the table.
 * On success *@added (may be NULL) is the number of new entries, appended at
 * t->r[t->n - added ..]. Returns 0, -EINVAL / -ENOENT / -ENOSPC with a reason, or
 * -EAGAIN (see gd_mt_window_check).
 */
int gd_mt_add(struct gd_memtable *t, const struct vp_cq_region *regs, unsigned n,
              gd_mt_window_check check, void *opaque, unsigned *added, vp_error *err);

/**
 * Check that each of @regs names a table entry (xgpa and size equal) and that none
 * is named twice. Does not change the table. Returns 0 or -ENOENT/-EINVAL with a
 * reason in @err.
 */
int gd_mt_check_del(const struct gd_memtable *t, const struct vp_cq_region *regs,
                    unsigned n, vp_error *err);

/** Remove the entries named by @regs (after gd_mt_check_del). */
void gd_mt_del(struct gd_memtable *t, const struct vp_cq_region *regs, unsigned n);

/** Remove entry @i. */
void gd_mt_remove_at(struct gd_memtable *t, unsigned i);

/** The entry holding guest-physical @xgpa, or NULL. */
const struct vp_cq_region *gd_mt_find(const struct gd_memtable *t, uint64_t xgpa);

/**
 * Translate [xgpa, +len) into a logical BAR offset. Returns the number of bytes
 * available contiguously from xgpa inside one region, clamped to @len (callers loop
 * or fail for the rest; STYLE habit 6), with *@bar_offset set; 0 when xgpa is in no
 * region or @len is 0.
 */
uint64_t gd_mt_translate(const struct gd_memtable *t, uint64_t xgpa, uint64_t len,
                         uint64_t *bar_offset);

#endif
