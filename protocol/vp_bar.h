/*
 * vp_bar.h - logical BAR arithmetic (DESIGN section 3, spec 1.5.1.2 / 1.6.1.2).
 *
 * The logical BAR is an address space of bar_size bytes (a power of two, at least
 * 2 MiB, at least twice the peer memory) in which every memory window (one per peer
 * memory file, a power-of-two size) sits at an offset aligned to its own size.
 * libc only.
 */
#ifndef VP_BAR_H
#define VP_BAR_H

#include <stdbool.h>
#include <stdint.h>

#define VP_BAR_MIN_SIZE (2ULL << 20)
#define VP_MAX_WINDOWS 32   /* window slots in the control area */

/** True when @x is a nonzero power of two. */
static inline bool vp_is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

/** Smallest power of two >= @x; 1 for 0; 0 when it does not fit in 64 bits. */
uint64_t vp_pow2ceil(uint64_t x);

/** bar_size for @total bytes of peer memory: pow2ceil(2 x total), at least
 *  VP_BAR_MIN_SIZE. Returns 0 on overflow (total > 2^62). */
uint64_t vp_bar_size_for(uint64_t total);

/** A placed window: [offset, offset + size) inside the logical BAR. */
struct vp_bar_window {
    uint64_t offset;      /* bytes from the BAR's start, a multiple of size */
    uint64_t size;        /* bytes, a power of two */
};

/**
 * Find the lowest offset, aligned to @size, where a window of @size bytes fits in
 * a BAR of @bar_size bytes without overlapping any of @used[0..n).
 * Returns 0 with *offset set, -EINVAL when @size is not a power of two, or -ENOSPC
 * when it does not fit (the server then clones the device, spec 1.6.1.2).
 */
int vp_bar_place(const struct vp_bar_window *used, unsigned n, uint64_t bar_size,
                 uint64_t size, uint64_t *offset);

/** True when a window of @size bytes fits somewhere in the BAR (vp_bar_place() == 0). */
bool vp_bar_fits(const struct vp_bar_window *used, unsigned n, uint64_t bar_size,
                 uint64_t size);

#endif
