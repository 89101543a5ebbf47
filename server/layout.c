/*
 * layout.c - windows, placement, clone decision, doorbell vectors (layout.h).
 *
 * Security model: see layout.h; sizes are peer-controlled (fstat of sent files) and
 * every arithmetic step is overflow-checked. libc only.
 */
#include "layout.h"

#include <errno.h>
#include <inttypes.h>

unsigned srv_file_pieces(uint64_t size, struct srv_piece *out)
{
    unsigned n = 0;
    uint64_t off = 0;
    for (int bit = 63; bit >= 0; bit--) {
        uint64_t piece = 1ULL << bit;
        if (!(size & piece))
            continue;
        if (out)
            out[n] = (struct srv_piece){ off, piece };
        n++;
        off += piece;
    }
    return n;
}

uint64_t srv_window_span(uint64_t size)
{
    return vp_pow2ceil(size);
}

int srv_check_window_size(unsigned index, uint64_t size, bool split, vp_error *err)
{
    if (vp_is_pow2(size))
        return 0;
    if (size == 0 || !split)
        return vp_fail(err, -EINVAL,
                       "memory file of region %u is %" PRIu64 " bytes, not a power of two "
                       "(a window becomes a PCI BAR; the device host cannot map part of a "
                       "file: QEMU before 8.1 has no memory-backend-file offset)", index, size);
    if (size % SRV_PIECE_ALIGN)
        return vp_fail(err, -EINVAL,
                       "memory file of region %u is %" PRIu64 " bytes: not a power of two, and "
                       "not a multiple of %llu either (only such files are served as several "
                       "power-of-two windows)", index, size, SRV_PIECE_ALIGN);
    unsigned n = srv_file_pieces(size, NULL);
    if (n > VP_MAX_WINDOWS)
        return vp_fail(err, -EINVAL,
                       "memory file of region %u is %" PRIu64 " bytes: %u power-of-two windows, "
                       "a device has at most %d", index, size, n, VP_MAX_WINDOWS);
    return 0;
}

/* Indexes of @sizes sorted by decreasing size (stable). */
static void order_by_size(const uint64_t *sizes, unsigned n, unsigned *order)
{
    for (unsigned i = 0; i < n; i++)
        order[i] = i;
    for (unsigned i = 1; i < n; i++) {
        unsigned k = order[i], j = i;
        while (j > 0 && sizes[order[j - 1]] < sizes[k]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
}

int srv_place_all(const uint64_t *sizes, unsigned n, uint64_t *bar_size, uint64_t *offsets)
{
    uint64_t total = 0;
    unsigned order[VP_MAX_WINDOWS];
    if (n > VP_MAX_WINDOWS)
        return -EINVAL;
    for (unsigned i = 0; i < n; i++) {
        if (!vp_is_pow2(sizes[i]))
            return -EINVAL;
        if (total + sizes[i] < total)
            return -EOVERFLOW;
        total += sizes[i];
    }
    uint64_t bar = vp_bar_size_for(total);
    if (!bar)
        return -EOVERFLOW;
    order_by_size(sizes, n, order);
    for (;;) {
        struct vp_bar_window used[VP_MAX_WINDOWS];
        unsigned nused = 0;
        bool ok = true;
        for (unsigned k = 0; k < n && ok; k++) {
            unsigned i = order[k];
            if (vp_bar_place(used, nused, bar, sizes[i], &offsets[i]) != 0)
                ok = false;
            else
                used[nused++] = (struct vp_bar_window){ offsets[i], sizes[i] };
        }
        if (ok) {
            *bar_size = bar;
            return 0;
        }
        if (bar > (1ULL << 62))
            return -EOVERFLOW;
        bar <<= 1;  /* cannot happen with largest-first buddy placement; be safe */
    }
}

static bool same_file(const struct srv_file_id *a, const struct srv_file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino;
}

int srv_plan_add(const struct srv_win_pos *old, unsigned nold, uint64_t bar_size,
                 const struct srv_file_id *files, unsigned nfiles, bool split,
                 struct srv_add_plan *plan, vp_error *err)
{
    memset(plan, 0, sizeof(*plan));
    if (nfiles > VP_MAX_REGIONS || nold > VP_MAX_WINDOWS)
        return vp_fail(err, -EINVAL, "too many regions (%u)", nfiles);

    unsigned npieces = 0;
    for (unsigned k = 0; k < nold; k++)
        npieces += srv_file_pieces(old[k].file.size, NULL);
    for (unsigned i = 0; i < nfiles; i++) {
        int r = srv_check_window_size(i, files[i].size, split, err);
        if (r)
            return r;
        int w = -1;
        for (unsigned k = 0; k < nold && w < 0; k++)
            if (same_file(&old[k].file, &files[i]))
                w = (int)k;
        if (w >= 0) {
            plan->region_win[i] = w;
            continue;
        }
        for (unsigned k = 0; k < plan->nnew && w < 0; k++)
            if (same_file(&plan->newwin[k], &files[i]))
                w = (int)k;
        if (w < 0) {
            if (nold + plan->nnew >= VP_MAX_WINDOWS)
                return vp_fail(err, -ENOSPC,
                               "too many memory files: a device has at most %d windows",
                               VP_MAX_WINDOWS);
            npieces += srv_file_pieces(files[i].size, NULL);
            if (npieces > VP_MAX_WINDOWS)
                return vp_fail(err, -ENOSPC,
                               "memory file of region %u would be window %u: a device has at "
                               "most %d windows (a file that is not a power of two takes one "
                               "per power of two in its size)", i, npieces, VP_MAX_WINDOWS);
            w = (int)plan->nnew;
            plan->newwin[plan->nnew++] = files[i];
        }
        plan->region_win[i] = -1 - w;
    }

    if (bar_size == 0) {  /* first memory of a new device: size the BAR */
        uint64_t sizes[VP_MAX_WINDOWS];
        for (unsigned k = 0; k < plan->nnew; k++)
            sizes[k] = srv_window_span(plan->newwin[k].size);
        if (nold)
            return vp_fail(err, -EINVAL, "windows without a BAR");
        if (srv_place_all(sizes, plan->nnew, &plan->bar_size, plan->new_offset))
            return vp_fail(err, -EOVERFLOW, "peer memory too large for a 64-bit BAR");
        return 0;
    }

    /* Hot-add: place the new windows (largest first) next to the existing ones. */
    struct vp_bar_window used[VP_MAX_WINDOWS];
    unsigned nused = 0;
    for (unsigned k = 0; k < nold; k++)
        used[nused++] = (struct vp_bar_window){ old[k].bar_offset, old[k].file.size };
    uint64_t sizes[VP_MAX_WINDOWS];
    unsigned order[VP_MAX_WINDOWS];
    for (unsigned k = 0; k < plan->nnew; k++)
        sizes[k] = srv_window_span(plan->newwin[k].size);
    order_by_size(sizes, plan->nnew, order);
    bool fits = true;
    for (unsigned j = 0; j < plan->nnew && fits; j++) {
        unsigned k = order[j];
        if (vp_bar_place(used, nused, bar_size, sizes[k], &plan->new_offset[k]) != 0)
            fits = false;
        else
            used[nused++] = (struct vp_bar_window){ plan->new_offset[k], sizes[k] };
    }
    if (fits) {
        plan->bar_size = bar_size;
        return 0;
    }

    /* Does not fit: clone with a BAR for the new total (spec 1.6.1.2). */
    uint64_t all[VP_MAX_WINDOWS];
    unsigned n = 0;
    for (unsigned k = 0; k < nold; k++)
        all[n++] = srv_window_span(old[k].file.size);
    for (unsigned k = 0; k < plan->nnew; k++)
        all[n++] = srv_window_span(plan->newwin[k].size);
    if (srv_place_all(all, n, &plan->bar_size, plan->clone_offset))
        return vp_fail(err, -EOVERFLOW, "peer memory too large for a 64-bit BAR");
    plan->clone = true;
    return 0;
}

int srv_vector_find(const struct srv_vectors *t, uint64_t device_id, uint32_t index)
{
    for (int v = 0; v < VP_MAX_VECTORS; v++)
        if (t->v[v].used && t->v[v].device_id == device_id && t->v[v].index == index)
            return v;
    return -1;
}

static unsigned vectors_max(const struct srv_vectors *t)
{
    return t->max && t->max < VP_MAX_VECTORS ? t->max : VP_MAX_VECTORS;
}

int srv_vector_alloc(struct srv_vectors *t, uint64_t device_id, uint32_t index)
{
    if (t->next >= vectors_max(t))
        return -ENOSPC;
    int v = (int)t->next++;
    t->v[v] = (struct srv_vector){ true, device_id, index };
    return v;
}

void srv_vector_free(struct srv_vectors *t, int vec)
{
    if (vec >= 0 && vec < VP_MAX_VECTORS)
        t->v[vec].used = false;
}

void srv_vector_free_device(struct srv_vectors *t, uint64_t device_id)
{
    for (int v = 0; v < VP_MAX_VECTORS; v++)
        if (t->v[v].used && t->v[v].device_id == device_id)
            t->v[v].used = false;
}

unsigned srv_vectors_used(const struct srv_vectors *t)
{
    unsigned n = 0;
    for (unsigned v = 0; v < VP_MAX_VECTORS; v++)
        n += t->v[v].used;
    return n;
}

bool srv_vectors_exhausted(const struct srv_vectors *t)
{
    return t->next >= vectors_max(t);
}

void srv_vectors_compact(const struct srv_vectors *from, struct srv_vectors *to,
                         uint16_t map[VP_MAX_VECTORS])
{
    memset(to, 0, sizeof(*to));
    to->max = from->max;
    for (unsigned v = 0; v < VP_MAX_VECTORS; v++) {
        map[v] = 0xffff;
        if (!from->v[v].used)
            continue;
        map[v] = (uint16_t)to->next;
        to->v[to->next++] = from->v[v];
    }
}

unsigned srv_vectors_count(const struct srv_vectors *t)
{
    unsigned n = 0;
    for (unsigned v = 0; v < VP_MAX_VECTORS; v++)
        if (t->v[v].used)
            n = v + 1;
    return n;
}
