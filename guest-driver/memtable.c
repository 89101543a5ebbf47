/*
 * memtable.c - the memory table of one vhost-pci device (memtable.h).
 *
 * Security model: regions come from controlq MEMORY_INFO messages, already decoded
 * into private memory (vp_cq_decode), but their values are the peer's: every sum is
 * checked for wrap-around before use, sizes of zero are rejected, and a region must
 * lie inside one mapped window (the caller's check) before it can ever be used for
 * translation. libc only.
 */
#include "memtable.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* [a, a+alen) and [b, b+blen) overlap; both known not to wrap. */
static int overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* Size nonzero and [base, +size) representable (base + size <= 2^64 - 1 is enough
 * for our sums; the last byte address must not wrap). */
static int span_ok(uint64_t base, uint64_t size)
{
    return size != 0 && size - 1 <= UINT64_MAX - base && base + size != 0;
}

static int same(const struct vp_cq_region *a, const struct vp_cq_region *b)
{
    return a->xgpa == b->xgpa && a->size == b->size && a->bar_offset == b->bar_offset;
}

int gd_mt_add(struct gd_memtable *t, const struct vp_cq_region *regs, unsigned n,
              gd_mt_window_check check, void *opaque, unsigned *added, vp_error *err)
{
    unsigned fresh = 0;
    int again = 0;
    vp_error again_err = { { 0 } };
    if (added)
        *added = 0;
    if (n > VP_MAX_REGIONS)
        return vp_fail(err, -EINVAL, "%u regions exceed the limit of %u", n, VP_MAX_REGIONS);
    for (unsigned i = 0; i < n; i++) {
        const struct vp_cq_region *r = &regs[i];
        if (!span_ok(r->xgpa, r->size))
            return vp_fail(err, -EINVAL, "region %u: xgpa 0x%llx size 0x%llx is empty or wraps",
                           i, (unsigned long long)r->xgpa, (unsigned long long)r->size);
        if (!span_ok(r->bar_offset, r->size))
            return vp_fail(err, -EINVAL, "region %u: bar offset 0x%llx size 0x%llx wraps", i,
                           (unsigned long long)r->bar_offset, (unsigned long long)r->size);
        for (unsigned j = 0; j < i; j++) {
            if (overlaps(r->xgpa, r->size, regs[j].xgpa, regs[j].size))
                return vp_fail(err, -EINVAL, "regions %u and %u overlap (xgpa 0x%llx, 0x%llx)",
                               j, i, (unsigned long long)regs[j].xgpa,
                               (unsigned long long)r->xgpa);
        }
        int dup = 0;
        for (unsigned k = 0; k < t->n; k++) {
            if (same(r, &t->r[k])) {
                dup = 1;
                break;
            }
            if (overlaps(r->xgpa, r->size, t->r[k].xgpa, t->r[k].size))
                return vp_fail(err, -EINVAL,
                               "region %u (xgpa 0x%llx size 0x%llx) overlaps the known region "
                               "xgpa 0x%llx size 0x%llx",
                               i, (unsigned long long)r->xgpa, (unsigned long long)r->size,
                               (unsigned long long)t->r[k].xgpa,
                               (unsigned long long)t->r[k].size);
        }
        vp_error werr = { { 0 } };
        int c = check ? check(opaque, r->bar_offset, r->size, &werr) : 0;
        if (c == -EAGAIN) {
            if (!again) {
                again = 1;
                snprintf(again_err.msg, sizeof(again_err.msg), "region %u: %s", i, werr.msg);
            }
        } else if (c < 0) {
            return vp_fail(err, c, "region %u (xgpa 0x%llx size 0x%llx bar offset 0x%llx): %s",
                           i, (unsigned long long)r->xgpa, (unsigned long long)r->size,
                           (unsigned long long)r->bar_offset, werr.msg);
        }
        if (!dup)
            fresh++;
    }
    if (again)
        return vp_fail(err, -EAGAIN, "%s", again_err.msg);
    if (fresh > VP_MAX_REGIONS - t->n)
        return vp_fail(err, -ENOSPC, "%u new regions would exceed the limit of %u (%u known)",
                       fresh, VP_MAX_REGIONS, t->n);
    for (unsigned i = 0; i < n; i++) {
        int dup = 0;
        for (unsigned k = 0; k < t->n; k++)
            dup |= same(&regs[i], &t->r[k]);
        if (!dup)
            t->r[t->n++] = regs[i];
    }
    if (added)
        *added = fresh;
    return 0;
}

static int find(const struct gd_memtable *t, const struct vp_cq_region *r)
{
    for (unsigned k = 0; k < t->n; k++) {
        if (t->r[k].xgpa == r->xgpa && t->r[k].size == r->size)
            return (int)k;
    }
    return -1;
}

int gd_mt_check_del(const struct gd_memtable *t, const struct vp_cq_region *regs,
                    unsigned n, vp_error *err)
{
    for (unsigned i = 0; i < n; i++) {
        if (find(t, &regs[i]) < 0)
            return vp_fail(err, -ENOENT, "no region xgpa 0x%llx size 0x%llx to delete",
                           (unsigned long long)regs[i].xgpa, (unsigned long long)regs[i].size);
        for (unsigned j = 0; j < i; j++) {
            if (regs[j].xgpa == regs[i].xgpa && regs[j].size == regs[i].size)
                return vp_fail(err, -EINVAL, "region xgpa 0x%llx named twice",
                               (unsigned long long)regs[i].xgpa);
        }
    }
    return 0;
}

void gd_mt_remove_at(struct gd_memtable *t, unsigned i)
{
    if (i >= t->n)
        return;
    memmove(&t->r[i], &t->r[i + 1], (t->n - i - 1) * sizeof(t->r[0]));
    t->n--;
}

void gd_mt_del(struct gd_memtable *t, const struct vp_cq_region *regs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        int k = find(t, &regs[i]);
        if (k >= 0)
            gd_mt_remove_at(t, (unsigned)k);
    }
}

const struct vp_cq_region *gd_mt_find(const struct gd_memtable *t, uint64_t xgpa)
{
    for (unsigned k = 0; k < t->n; k++) {
        const struct vp_cq_region *r = &t->r[k];
        if (xgpa >= r->xgpa && xgpa - r->xgpa < r->size)
            return r;
    }
    return NULL;
}

uint64_t gd_mt_translate(const struct gd_memtable *t, uint64_t xgpa, uint64_t len,
                         uint64_t *bar_offset)
{
    const struct vp_cq_region *r = len ? gd_mt_find(t, xgpa) : NULL;
    if (!r)
        return 0;
    uint64_t off = xgpa - r->xgpa;
    uint64_t avail = r->size - off;
    *bar_offset = r->bar_offset + off;
    return avail < len ? avail : len;
}
