/*
 * layout.h - pure logic of a vhost-pci device's memory layout and doorbell vectors
 * (DESIGN section 3): which memory window each region uses (one window per peer
 * memory file, deduplicated by st_dev/st_ino), where new windows go in the logical
 * BAR, when a hot-add no longer fits (cloning, spec 1.6.1.2), and the per
 * (device_id, queue) vector numbers of notification id 2.
 *
 * No GLib, no fds, no I/O: the callers (device.c, requests.c) own the resources and
 * the unit test tests/unit/test-server-layout.c drives these functions directly.
 *
 * Security model: sizes come from fstat() of files a peer sent; every sum below is
 * checked for 64-bit overflow before use, and a size that is not a power of two is
 * rejected with a reason naming it (QEMU 7.2 aborts on such a BAR).
 */
#ifndef VP_SERVER_LAYOUT_H
#define VP_SERVER_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "vp_bar.h"
#include "vp_common.h"
#include "vp_ctrlarea.h"
#include "vp_wire.h"

/** Identity and size of one peer memory file (from fstat). */
struct srv_file_id {
    uint64_t dev, ino;    /* st_dev, st_ino: two fds of one file compare equal */
    uint64_t size;        /* st_size, bytes: the window size (a window is a whole file) */
};

/** A window already in a device's logical BAR (input to srv_plan_add). */
struct srv_win_pos {
    struct srv_file_id file;
    uint64_t bar_offset;  /* bytes from the logical BAR's start, multiple of size */
};

/** Result of planning a memory hot-add (srv_plan_add). */
struct srv_add_plan {
    /* For each new region i: >= 0 the index of the existing window it uses;
     * < 0: it uses new window -(1 + region_win[i]). */
    int region_win[VP_MAX_REGIONS];
    unsigned nnew;                          /* new windows (distinct new files) */
    struct srv_file_id newwin[VP_MAX_WINDOWS];
    /* Not cloning: bar_offset of each new window in the current BAR (or in the new
     * BAR of bar_size when the device had no BAR yet). */
    uint64_t new_offset[VP_MAX_WINDOWS];
    bool clone;                             /* the new windows do not fit: clone */
    /* bar_size the device has after the add: unchanged, the first BAR size, or the
     * clone's size (vp_bar_size_for(total window bytes)). */
    uint64_t bar_size;
    /* Cloning: offsets of existing windows [0, nold) then new ones [nold, nold+nnew)
     * in the clone's BAR. */
    uint64_t clone_offset[VP_MAX_WINDOWS];
};

/**
 * Plan adding regions backed by @files[0..@nfiles) to a device whose BAR is
 * @bar_size bytes (0: no BAR yet, the first MEMORY_INFO) holding @old[0..@nold).
 * Regions whose file is already a window share it; distinct new files become new
 * windows placed with vp_bar_place() (largest first). When they do not fit, the plan
 * says clone, with bar_size = vp_bar_size_for(all window bytes) and every window
 * placed afresh.
 * Returns 0, or a negative errno with a reason in @err:
 *   -EINVAL  a file size that is zero or not a power of two (names region and size),
 *   -ENOSPC  more than VP_MAX_WINDOWS windows,
 *   -EOVERFLOW  total memory too large for a 64-bit BAR.
 */
int srv_plan_add(const struct srv_win_pos *old, unsigned nold, uint64_t bar_size,
                 const struct srv_file_id *files, unsigned nfiles,
                 struct srv_add_plan *plan, vp_error *err);

/**
 * Place windows of @sizes[0..n) (powers of two) into a fresh BAR: bar_size starts at
 * vp_bar_size_for(sum) and doubles until all fit (largest first). Fills @offsets and
 * *@bar_size. Returns 0, -EINVAL (a size not a power of two) or -EOVERFLOW.
 */
int srv_place_all(const uint64_t *sizes, unsigned n, uint64_t *bar_size, uint64_t *offsets);

/** Check that a memory file size can become a window: nonzero power of two.
 *  Returns 0 or -EINVAL with a reason naming region @index and the size. */
int srv_check_window_size(unsigned index, uint64_t size, vp_error *err);

/* ---- doorbell vectors of notification id 2 (the driver VM's call fds) ---- */

/** One vector of peer id 2: which frontend virtqueue's call fd it carries. */
struct srv_vector {
    bool used;
    uint64_t device_id;
    uint32_t index;       /* frontend virtqueue index */
};

/** The vector table of one device (vector number = array index, < VP_MAX_VECTORS).
 *  Numbers are handed out once and never reused: QEMU 7.2's ivshmem cannot replace
 *  an eventfd it holds (h7's endpoint is append-only), so a new call fd always gets
 *  a fresh number; a freed number stays a hole. */
struct srv_vectors {
    struct srv_vector v[VP_MAX_VECTORS];
    unsigned next;        /* next number never handed out */
    unsigned max;         /* numbers the device host can announce (0: VP_MAX_VECTORS) */
};

/** Vector of (device_id, index), or -1. */
int srv_vector_find(const struct srv_vectors *t, uint64_t device_id, uint32_t index);
/** A fresh vector for (device_id, index), marked used. -ENOSPC when all the numbers
 *  of this device (t->max, at most VP_MAX_VECTORS) have been handed out. */
int srv_vector_alloc(struct srv_vectors *t, uint64_t device_id, uint32_t index);
/** Release vector @vec (ignored when out of range). */
void srv_vector_free(struct srv_vectors *t, int vec);
/** Release every vector of @device_id. */
void srv_vector_free_device(struct srv_vectors *t, uint64_t device_id);
/** Number of vectors to announce: highest used vector + 1 (0 when none). */
unsigned srv_vectors_count(const struct srv_vectors *t);
/** Vectors in use. */
unsigned srv_vectors_used(const struct srv_vectors *t);
/** Every number has been handed out (a new call fd needs a fresh control function). */
bool srv_vectors_exhausted(const struct srv_vectors *t);
/** Renumber @from's used vectors 0, 1, ... in order into @to (a fresh table with the
 *  same max, as for a new control function); @map[v] gets the new number of old vector
 *  v (VP_NO_VECTOR for unused ones). */
void srv_vectors_compact(const struct srv_vectors *from, struct srv_vectors *to,
                         uint16_t map[VP_MAX_VECTORS]);

#endif
