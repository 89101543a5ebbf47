/*
 * vp_memtable.h - the memory table of a driver VM, one module for every component
 * (DESIGN sections 3-6, spec 1.5 memory info): a set of regions of guest-physical
 * memory, none overlapping another, each mapped to a target address the table's
 * owner uses, plus the range and ring-layout checks built on it.
 *
 * Who uses it for what:
 *   server     regions of a MEMORY_INFO per device; target = offset in the logical BAR,
 *              file_offset = mmap_offset, slot = the memory window (server/windows.c)
 *   guestd     regions of a controlq MEMORY_INFO; target = offset in the logical BAR;
 *              guest-physical addresses of descriptors translate through it
 *   client     the vhost-user memory table; target = the frontend's user address
 *              (vp_mt_translate_target turns a ring's user address into guest-physical)
 *   validation vp_validate_memory_info's overlap checks, vp_validate_device_info's
 *              ring layout (vp_ring_check); vp_bar's window overlap (vp_ranges_overlap)
 *
 * Security model: every value may come from a hostile peer. Sizes of zero and ranges
 * that wrap past 2^64 are refused before anything is compared; overlap tests and
 * translations are overflow-proof (STYLE habit 5); a translation returns the length
 * available inside one region, clamped to what was asked (habit 6), so a caller never
 * reads past a region. Nothing here allocates, maps or owns an fd.
 *
 * libc only (the guest driver links it). Not thread-safe: one owner per table.
 */
#ifndef VP_MEMTABLE_H
#define VP_MEMTABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "vp_common.h"
#include "vp_wire.h"

/** Do [a, a+alen) and [b, b+blen) share a byte? Overflow-proof (a range that would
 *  wrap is taken to end at 2^64); an empty range overlaps nothing. */
static inline bool vp_ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    if (alen == 0 || blen == 0)
        return false;
    return a <= b ? b - a < alen : a - b < blen;
}

/** Is [base, base+size) a nonempty range whose end fits in 64 bits? */
static inline bool vp_span_ok(uint64_t base, uint64_t size)
{
    return size != 0 && base <= UINT64_MAX - size;
}

/** One region of a driver VM's memory. */
struct vp_mt_region {
    uint64_t gpa;          /* guest-physical address of the first byte (the table's key) */
    uint64_t size;         /* bytes, > 0 */
    uint64_t target;       /* where the owner finds the first byte (see above) */
    uint64_t file_offset;  /* offset of the first byte in its backing file (mmap_offset) */
    uint32_t slot;         /* the owner's backing index (window, fd slot); not checked */
};

/** A table: regions in insertion order, no two overlapping in guest-physical space. */
struct vp_memtable {
    unsigned n;
    unsigned max;          /* regions it may hold (<= VP_MAX_REGIONS) */
    struct vp_mt_region r[VP_MAX_REGIONS];
};

/** Flags of vp_mt_check_add / vp_mt_add. */
enum {
    /** A new region equal to a table entry in gpa, size, target and file_offset is
     *  not an overlap but a repeat: skipped (the same MEMORY_INFO seen twice). */
    VP_MT_SKIP_SAME = 1u << 0,
    /** Target ranges must not overlap either (the owner maps targets too, e.g. user
     *  addresses of a vhost-user frontend). */
    VP_MT_DISJOINT_TARGETS = 1u << 1,
};

/** Empty table holding at most @max regions (clamped to VP_MAX_REGIONS). */
void vp_mt_init(struct vp_memtable *t, unsigned max);

/**
 * Check adding @add[0..n) to @t, all or nothing: n <= VP_MAX_REGIONS, each nonempty
 * and not wrapping (gpa and target), no two new ones overlapping, none overlapping a
 * table entry (unless a repeat, with VP_MT_SKIP_SAME), room for the new ones. *@fresh
 * (may be NULL) gets the number that are not repeats. Returns 0, or -EINVAL / -ENOSPC
 * with a reason naming the regions by index and range, e.g. "region 1 [0xfffff,
 * +0x200000) overlaps region 0 [0x0, +0x100000) in guest-physical space" (an existing
 * entry is "existing region K").
 */
int vp_mt_check_add(const struct vp_memtable *t, const struct vp_mt_region *add, unsigned n,
                    unsigned flags, unsigned *fresh, vp_error *err);

/** The checks of vp_mt_check_add() on plain arrays, without the room check: @add
 *  against each other and against @table[0..ntable) (entries of any shape, compared
 *  overflow-proof). 0, or -EINVAL with the same reasons. */
int vp_mt_check_regions(const struct vp_mt_region *table, unsigned ntable,
                        const struct vp_mt_region *add, unsigned n, unsigned flags,
                        unsigned *fresh, vp_error *err);

/** vp_mt_check_add(), then append the new regions in order (repeats skipped). *@added
 *  (may be NULL) gets how many were appended: they are t->r[t->n - added ..]. */
int vp_mt_add(struct vp_memtable *t, const struct vp_mt_region *add, unsigned n,
              unsigned flags, unsigned *added, vp_error *err);

/** Index of the region that starts at @gpa, or -1. */
int vp_mt_find(const struct vp_memtable *t, uint64_t gpa);
/** Index of the region that holds the byte at @gpa, or -1. */
int vp_mt_lookup(const struct vp_memtable *t, uint64_t gpa);
/** Remove region @i (order of the others kept; ignored when out of range). */
void vp_mt_remove_at(struct vp_memtable *t, unsigned i);

/** Check removing @del[0..n): each names a table entry by gpa and size, none twice.
 *  Returns 0, or -ENOENT / -EINVAL with a reason. Does not change @t. */
int vp_mt_check_del(const struct vp_memtable *t, const struct vp_mt_region *del, unsigned n,
                    vp_error *err);
/** Remove the entries @del[0..n) names (by gpa and size; unknown ones are ignored). */
void vp_mt_del(struct vp_memtable *t, const struct vp_mt_region *del, unsigned n);

/**
 * Translate guest-physical [gpa, gpa+len): returns the bytes available from @gpa
 * inside the one region holding it, clamped to @len, with *@target set to where
 * @gpa is; 0 when @gpa is in no region or @len is 0 (*@target untouched). Callers
 * loop over the rest or fail.
 */
uint64_t vp_mt_translate(const struct vp_memtable *t, uint64_t gpa, uint64_t len,
                         uint64_t *target);
/** The same from the target side: [target, target+len) back to guest-physical. */
uint64_t vp_mt_translate_target(const struct vp_memtable *t, uint64_t target, uint64_t len,
                                uint64_t *gpa);
/** Does [gpa, gpa+len) lie inside one region? (len 0: is gpa in a region.) */
bool vp_mt_contains(const struct vp_memtable *t, uint64_t gpa, uint64_t len);

/* ---- split virtqueue layout (virtio 1.0 2.6; sizes from vp_vring.h) ---- */

/** The guest-physical layout of one split virtqueue. */
struct vp_ring_layout {
    uint32_t index;        /* the queue's index, for reasons */
    uint32_t num;          /* entries */
    uint64_t desc, avail, used;   /* guest-physical addresses */
};

/** Check a ring on its own: num a power of two in 1..VP_MAX_VRING_NUM, each part's
 *  address nonzero, aligned (desc 16, avail 2, used 4) and not wrapping with its size.
 *  Returns 0 or -EINVAL with a reason ("virtqueue 1: used address is zero"). */
int vp_ring_check(const struct vp_ring_layout *q, vp_error *err);

/** Check that each part of the ring lies inside one region of @t. Returns 0 or
 *  -EFAULT with a reason ("virtqueue 0: avail ring at gpa 0x... (518 bytes) is not
 *  inside one memory region"). */
int vp_mt_check_ring(const struct vp_memtable *t, const struct vp_ring_layout *q,
                     vp_error *err);

/** Does any part of the ring overlap [gpa, gpa+size)? (A region being removed.) */
bool vp_ring_overlaps(const struct vp_ring_layout *q, uint64_t gpa, uint64_t size);

#endif
