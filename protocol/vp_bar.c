/*
 * vp_bar.c - logical BAR arithmetic (vp_bar.h, DESIGN section 3).
 *
 * Inputs are sizes the server computed from peer memory files (fstat), so every
 * sum and alignment below is checked for 64-bit overflow; an overflow is treated as
 * "does not fit", never wrapped. libc only.
 */
#include "vp_bar.h"
#include "vp_common.h"
#include "vp_memtable.h"

#include <errno.h>

uint64_t vp_pow2ceil(uint64_t x)
{
    if (x <= 1)
        return 1;
    if (x > (1ULL << 63))
        return 0;
    return 1ULL << (64 - __builtin_clzll(x - 1));
}

uint64_t vp_bar_size_for(uint64_t total)
{
    if (total > (1ULL << 62))
        return 0;
    uint64_t s = vp_pow2ceil(2 * total);
    return s < VP_BAR_MIN_SIZE ? VP_BAR_MIN_SIZE : s;
}

int vp_bar_place(const struct vp_bar_window *used, unsigned n, uint64_t bar_size,
                 uint64_t size, uint64_t *offset)
{
    if (!vp_is_pow2(size))
        return -EINVAL;
    uint64_t off = 0;
    /* Each step moves off past the end of one window it overlapped, which that
     * window can then never overlap again: at most n steps. */
    for (;;) {
        if (!vp_range_ok(off, size, bar_size))
            return -ENOSPC;
        const struct vp_bar_window *hit = NULL;
        for (unsigned i = 0; i < n; i++) {
            if (vp_ranges_overlap(off, size, used[i].offset, used[i].size)) {
                hit = &used[i];
                break;
            }
        }
        if (!hit) {
            *offset = off;
            return 0;
        }
        /* Next candidate: the window's end rounded up to our alignment. */
        uint64_t end = hit->offset + hit->size;
        if (end < hit->offset)
            return -ENOSPC;
        uint64_t next = (end + (size - 1)) & ~(size - 1);
        if (next < end)
            return -ENOSPC;
        off = next;
    }
}

bool vp_bar_fits(const struct vp_bar_window *used, unsigned n, uint64_t bar_size,
                 uint64_t size)
{
    uint64_t off;
    return vp_bar_place(used, n, bar_size, size, &off) == 0;
}
