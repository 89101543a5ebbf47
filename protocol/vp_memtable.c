/*
 * vp_memtable.c - the memory table (vp_memtable.h; security model there). libc only.
 */
#include "vp_memtable.h"

#include <errno.h>
#include <string.h>

#include "vp_vring.h"

#define ULL(x) ((unsigned long long)(x))

void vp_mt_init(struct vp_memtable *t, unsigned max)
{
    memset(t, 0, sizeof(*t));
    t->max = max < VP_MAX_REGIONS ? max : VP_MAX_REGIONS;
}

static bool same(const struct vp_mt_region *a, const struct vp_mt_region *b)
{
    return a->gpa == b->gpa && a->size == b->size && a->target == b->target &&
           a->file_offset == b->file_offset;
}

static int overlap_fail(vp_error *err, unsigned i, const struct vp_mt_region *x,
                        const char *what, unsigned j, const struct vp_mt_region *y)
{
    return vp_fail(err, -EINVAL,
                   "region %u [0x%llx, +0x%llx) overlaps %s %u [0x%llx, +0x%llx) in "
                   "guest-physical space", i, ULL(x->gpa), ULL(x->size), what, j,
                   ULL(y->gpa), ULL(y->size));
}

static int target_overlap_fail(vp_error *err, unsigned i, const struct vp_mt_region *x,
                               const char *what, unsigned j)
{
    return vp_fail(err, -EINVAL, "region %u: target range [0x%llx, +0x%llx) overlaps %s %u",
                   i, ULL(x->target), ULL(x->size), what, j);
}

/* Region @i of a new set on its own: nonempty, no wrap. */
static int check_one(unsigned i, const struct vp_mt_region *r, vp_error *err)
{
    if (r->size == 0)
        return vp_fail(err, -EINVAL, "region %u: zero size", i);
    if (!vp_span_ok(r->gpa, r->size))
        return vp_fail(err, -EINVAL, "region %u: guest-physical address 0x%llx + size 0x%llx "
                       "overflows", i, ULL(r->gpa), ULL(r->size));
    if (!vp_span_ok(r->target, r->size))
        return vp_fail(err, -EINVAL, "region %u: target 0x%llx + size 0x%llx overflows", i,
                       ULL(r->target), ULL(r->size));
    return 0;
}

/* New region @i against the table: -1 no conflict, else the outcome (0: a repeat,
 * <0: an overlap with its reason). */
static int against_table(const struct vp_mt_region *table, unsigned ntable, unsigned i,
                         const struct vp_mt_region *r, unsigned flags, vp_error *err)
{
    for (unsigned k = 0; k < ntable; k++) {
        const struct vp_mt_region *o = &table[k];
        if ((flags & VP_MT_SKIP_SAME) && same(r, o))
            return 0;
        if (vp_ranges_overlap(r->gpa, r->size, o->gpa, o->size))
            return overlap_fail(err, i, r, "existing region", k, o);
        if ((flags & VP_MT_DISJOINT_TARGETS) &&
            vp_ranges_overlap(r->target, r->size, o->target, o->size))
            return target_overlap_fail(err, i, r, "existing region", k);
    }
    return -1;
}

int vp_mt_check_regions(const struct vp_mt_region *table, unsigned ntable,
                        const struct vp_mt_region *add, unsigned n, unsigned flags,
                        unsigned *fresh, vp_error *err)
{
    unsigned nfresh = 0;
    if (n > VP_MAX_REGIONS)
        return vp_fail(err, -EINVAL, "%u regions, at most %u", n, VP_MAX_REGIONS);
    for (unsigned i = 0; i < n; i++) {
        const struct vp_mt_region *r = &add[i];
        int ret = check_one(i, r, err);
        if (ret < 0)
            return ret;
        for (unsigned j = 0; j < i; j++) {
            if (vp_ranges_overlap(r->gpa, r->size, add[j].gpa, add[j].size))
                return overlap_fail(err, i, r, "region", j, &add[j]);
            if ((flags & VP_MT_DISJOINT_TARGETS) &&
                vp_ranges_overlap(r->target, r->size, add[j].target, add[j].size))
                return target_overlap_fail(err, i, r, "region", j);
        }
        ret = against_table(table, ntable, i, r, flags, err);
        if (ret < -1)
            return ret;
        if (ret == -1)
            nfresh++;
    }
    if (fresh)
        *fresh = nfresh;
    return 0;
}

int vp_mt_check_add(const struct vp_memtable *t, const struct vp_mt_region *add, unsigned n,
                    unsigned flags, unsigned *fresh, vp_error *err)
{
    unsigned nfresh = 0;
    int ret = vp_mt_check_regions(t->r, t->n, add, n, flags, &nfresh, err);
    if (ret < 0)
        return ret;
    if (nfresh > t->max - (t->n < t->max ? t->n : t->max))
        return vp_fail(err, -ENOSPC, "%u new regions would exceed the limit of %u (%u in "
                       "the table)", nfresh, t->max, t->n);
    if (fresh)
        *fresh = nfresh;
    return 0;
}

int vp_mt_add(struct vp_memtable *t, const struct vp_mt_region *add, unsigned n,
              unsigned flags, unsigned *added, vp_error *err)
{
    unsigned before = t->n;
    int ret = vp_mt_check_add(t, add, n, flags, NULL, err);
    if (ret < 0)
        return ret;
    for (unsigned i = 0; i < n; i++) {
        bool repeat = false;
        for (unsigned k = 0; k < before && (flags & VP_MT_SKIP_SAME); k++)
            repeat |= same(&add[i], &t->r[k]);
        if (!repeat)
            t->r[t->n++] = add[i];
    }
    if (added)
        *added = t->n - before;
    return 0;
}

int vp_mt_find(const struct vp_memtable *t, uint64_t gpa)
{
    for (unsigned k = 0; k < t->n; k++)
        if (t->r[k].gpa == gpa)
            return (int)k;
    return -1;
}

int vp_mt_lookup(const struct vp_memtable *t, uint64_t gpa)
{
    for (unsigned k = 0; k < t->n; k++)
        if (gpa >= t->r[k].gpa && gpa - t->r[k].gpa < t->r[k].size)
            return (int)k;
    return -1;
}

void vp_mt_remove_at(struct vp_memtable *t, unsigned i)
{
    if (i >= t->n)
        return;
    memmove(&t->r[i], &t->r[i + 1], (t->n - i - 1) * sizeof(t->r[0]));
    t->n--;
}

static int find_exact(const struct vp_memtable *t, const struct vp_mt_region *r)
{
    int k = vp_mt_find(t, r->gpa);
    return k >= 0 && t->r[k].size == r->size ? k : -1;
}

int vp_mt_check_del(const struct vp_memtable *t, const struct vp_mt_region *del, unsigned n,
                    vp_error *err)
{
    for (unsigned i = 0; i < n; i++) {
        if (find_exact(t, &del[i]) < 0)
            return vp_fail(err, -ENOENT, "region gpa 0x%llx size 0x%llx is not in the memory "
                           "table", ULL(del[i].gpa), ULL(del[i].size));
        for (unsigned j = 0; j < i; j++)
            if (del[j].gpa == del[i].gpa)
                return vp_fail(err, -EINVAL, "region gpa 0x%llx is listed twice",
                               ULL(del[i].gpa));
    }
    return 0;
}

void vp_mt_del(struct vp_memtable *t, const struct vp_mt_region *del, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        int k = find_exact(t, &del[i]);
        if (k >= 0)
            vp_mt_remove_at(t, (unsigned)k);
    }
}

uint64_t vp_mt_translate(const struct vp_memtable *t, uint64_t gpa, uint64_t len,
                         uint64_t *target)
{
    int k = len ? vp_mt_lookup(t, gpa) : -1;
    if (k < 0)
        return 0;
    const struct vp_mt_region *r = &t->r[k];
    uint64_t off = gpa - r->gpa, avail = r->size - off;
    *target = r->target + off;
    return avail < len ? avail : len;
}

uint64_t vp_mt_translate_target(const struct vp_memtable *t, uint64_t target, uint64_t len,
                                uint64_t *gpa)
{
    if (len == 0)
        return 0;
    for (unsigned k = 0; k < t->n; k++) {
        const struct vp_mt_region *r = &t->r[k];
        if (target < r->target || target - r->target >= r->size)
            continue;
        uint64_t off = target - r->target, avail = r->size - off;
        *gpa = r->gpa + off;
        return avail < len ? avail : len;
    }
    return 0;
}

bool vp_mt_contains(const struct vp_memtable *t, uint64_t gpa, uint64_t len)
{
    int k = vp_mt_lookup(t, gpa);
    return k >= 0 && vp_range_ok(gpa - t->r[k].gpa, len, t->r[k].size);
}

/* ---- split virtqueue layout ---- */

struct ring_part {
    const char *name, *long_name;
    uint64_t addr, size, align;
};

static void ring_parts(const struct vp_ring_layout *q, struct ring_part p[3])
{
    p[0] = (struct ring_part){ "desc", "descriptor table", q->desc, vp_vring_desc_size(q->num), 16 };
    p[1] = (struct ring_part){ "avail", "avail ring", q->avail, vp_vring_avail_size(q->num), 2 };
    p[2] = (struct ring_part){ "used", "used ring", q->used, vp_vring_used_size(q->num), 4 };
}

int vp_ring_check(const struct vp_ring_layout *q, vp_error *err)
{
    if (q->num == 0 || q->num > VP_MAX_VRING_NUM || (q->num & (q->num - 1)))
        return vp_fail(err, -EINVAL, "virtqueue %u: num %u is not a power of two in 1..%u",
                       q->index, q->num, VP_MAX_VRING_NUM);
    struct ring_part p[3];
    ring_parts(q, p);
    for (int k = 0; k < 3; k++) {
        if (p[k].addr == 0)
            return vp_fail(err, -EINVAL, "virtqueue %u: %s address is zero", q->index,
                           p[k].name);
        if (p[k].addr & (p[k].align - 1))
            return vp_fail(err, -EINVAL, "virtqueue %u: %s address 0x%llx not aligned to %llu "
                           "bytes", q->index, p[k].name, ULL(p[k].addr), ULL(p[k].align));
        if (!vp_span_ok(p[k].addr, p[k].size))
            return vp_fail(err, -EINVAL, "virtqueue %u: %s ring at 0x%llx + 0x%llx bytes "
                           "overflows", q->index, p[k].name, ULL(p[k].addr), ULL(p[k].size));
    }
    return 0;
}

int vp_mt_check_ring(const struct vp_memtable *t, const struct vp_ring_layout *q,
                     vp_error *err)
{
    struct ring_part p[3];
    ring_parts(q, p);
    for (int k = 0; k < 3; k++)
        if (!vp_mt_contains(t, p[k].addr, p[k].size))
            return vp_fail(err, -EFAULT, "virtqueue %u: %s at gpa 0x%llx (%llu bytes) is not "
                           "inside one memory region", q->index, p[k].long_name,
                           ULL(p[k].addr), ULL(p[k].size));
    return 0;
}

bool vp_ring_overlaps(const struct vp_ring_layout *q, uint64_t gpa, uint64_t size)
{
    struct ring_part p[3];
    ring_parts(q, p);
    for (int k = 0; k < 3; k++)
        if (vp_ranges_overlap(p[k].addr, p[k].size, gpa, size))
            return true;
    return false;
}
