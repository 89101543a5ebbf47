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
 * Pieces (issue 13 item 3): a file whose size is not a power of two becomes several
 * power-of-two windows ("pieces", largest first: 384 MiB = 256 + 128) when the device
 * host can map part of a file (QEMU >= 8.1's memory-backend-file `offset`, the local
 * host's mmap offset). The pieces of one file sit back to back in the logical BAR from
 * an offset aligned to pow2ceil(file size), so each piece is naturally aligned and a
 * region's offset_in_bar_area stays the file's bar_offset + mmap_offset even when the
 * region spans pieces. Placement reserves that aligned pow2ceil block for the file.
 *
 * Security model: sizes come from fstat() of files a peer sent; every sum below is
 * checked for 64-bit overflow before use, and a size that is not a power of two is
 * rejected with a reason naming it when the host cannot split (QEMU 7.2 aborts on
 * such a BAR), or when it is not a multiple of SRV_PIECE_ALIGN or needs more pieces
 * than the control area has window slots.
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
    uint64_t size;        /* st_size, bytes: the window size (a window is a whole file,
                             served as srv_file_pieces() pieces) */
};

/** Granularity of a file that is split into pieces (bytes): a page, the unit QEMU's
 *  memory-backend-file offset and mmap(2) offsets work in. */
#define SRV_PIECE_ALIGN 4096ULL

/** One piece of a window: [file_offset, +size) of the file, at window bar_offset +
 *  file_offset in the logical BAR. */
struct srv_piece {
    uint64_t file_offset; /* bytes into the file */
    uint64_t size;        /* bytes, a power of two */
};

/**
 * Split a file of @size bytes into power-of-two pieces, largest first and back to
 * back (384 MiB -> 256 MiB at 0, 128 MiB at 256 MiB); a power of two is one piece.
 * Fills @out[0..n) when @out is not NULL (room for 64). Returns n (0 for size 0).
 */
unsigned srv_file_pieces(uint64_t size, struct srv_piece *out);

/** Bytes of logical BAR a window of @size reserves: pow2ceil(size) (its pieces start
 *  at an offset aligned to it). 0 when that does not fit in 64 bits. */
uint64_t srv_window_span(uint64_t size);

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
 * windows placed with vp_bar_place() (largest first, each reserving
 * srv_window_span() bytes). When they do not fit, the plan says clone, with
 * bar_size = vp_bar_size_for(all spans) and every window placed afresh.
 * @split: the device host can serve a file as several pieces (srv_check_window_size).
 * Returns 0, or a negative errno with a reason in @err:
 *   -EINVAL  a file size the host cannot serve (names region and size),
 *   -ENOSPC  more than VP_MAX_WINDOWS windows or pieces in all,
 *   -EOVERFLOW  total memory too large for a 64-bit BAR.
 */
int srv_plan_add(const struct srv_win_pos *old, unsigned nold, uint64_t bar_size,
                 const struct srv_file_id *files, unsigned nfiles, bool split,
                 struct srv_add_plan *plan, vp_error *err);

/**
 * Place windows of @sizes[0..n) (powers of two) into a fresh BAR: bar_size starts at
 * vp_bar_size_for(sum) and doubles until all fit (largest first). Fills @offsets and
 * *@bar_size. Returns 0, -EINVAL (a size not a power of two) or -EOVERFLOW.
 */
int srv_place_all(const uint64_t *sizes, unsigned n, uint64_t *bar_size, uint64_t *offsets);

/** Check that a memory file size can become a window: a nonzero power of two, or,
 *  with @split (the host maps parts of files: QEMU >= 8.1, local), a nonzero multiple
 *  of SRV_PIECE_ALIGN of at most VP_MAX_WINDOWS pieces. Returns 0 or -EINVAL with a
 *  reason naming region @index, the size and (without @split) why it cannot be split. */
int srv_check_window_size(unsigned index, uint64_t size, bool split, vp_error *err);

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
