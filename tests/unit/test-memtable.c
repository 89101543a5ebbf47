/*
 * test-memtable.c - the memory table (protocol/vp_memtable.c): overlap checks that
 * cannot be fooled by wrapping input, repeats, room, find/lookup/remove/delete,
 * translation clamped to one region in both directions, and the ring-layout checks.
 */
#include <errno.h>
#include <string.h>

#include "../testutil.h"
#include "vp_memtable.h"

static void expect_add(struct vp_memtable *t, const struct vp_mt_region *add, unsigned n,
                       unsigned flags, int want, const char *substr)
{
    vp_error err = { "" };
    unsigned before = t->n, added = 99;
    int r = vp_mt_add(t, add, n, flags, &added, &err);
    if (r != want)
        g_error("vp_mt_add: %d (%s), expected %d", r, err.msg, want);
    if (want < 0) {
        g_assert_cmpuint(t->n, ==, before);  /* all or nothing */
        if (!strstr(err.msg, substr))
            g_error("reason \"%s\" does not contain \"%s\"", err.msg, substr);
    } else {
        g_assert_cmpuint(t->n, ==, before + added);
    }
}

#define R(g, s) ((struct vp_mt_region){ .gpa = (g), .size = (s) })

static void test_overlap(void)
{
    struct vp_memtable t;
    vp_mt_init(&t, VP_MAX_REGIONS);
    const struct vp_mt_region a[3] = { R(0, 0x1000), R(0x10000, 0x10000),
                                       R(0x100000000ULL, 0x40000000) };
    expect_add(&t, a, 3, 0, 0, NULL);
    /* Exactly between two, right after one: fine (checked, not added). */
    struct vp_mt_region b[2] = { R(0x1000, 0xf000), R(0x20000, 0x1000) };
    vp_error err = { "" };
    g_assert_cmpint(vp_mt_check_add(&t, b, 2, 0, NULL, &err), ==, 0);
    /* One byte into an existing region, both ends. */
    b[1].gpa = 0x1ffff;
    expect_add(&t, b, 2, 0, -EINVAL, "region 1 [0x1ffff, +0x1000) overlaps existing region 1 "
                                     "[0x10000, +0x10000) in guest-physical space");
    b[1].gpa = 0x13fffffffULL;
    expect_add(&t, b, 2, 0, -EINVAL, "overlaps existing region 2");
    /* New ones overlapping each other. */
    b[1].gpa = 0x2000;
    expect_add(&t, b, 2, 0, -EINVAL, "region 1 [0x2000, +0x1000) overlaps region 0 "
                                     "[0x1000, +0xf000)");
    /* Covering everything. */
    struct vp_mt_region big = R(0, UINT64_MAX);
    expect_add(&t, &big, 1, 0, -EINVAL, "overlaps existing region 0");
    /* A new region must not wrap or be empty. */
    struct vp_mt_region wrap = R(UINT64_MAX - 0xfff, 0x2000);
    expect_add(&t, &wrap, 1, 0, -EINVAL, "region 0: guest-physical address 0xfffffffffffff000 "
                                         "+ size 0x2000 overflows");
    struct vp_mt_region zero = R(0x800, 0);
    expect_add(&t, &zero, 1, 0, -EINVAL, "region 0: zero size");
    /* A table entry reaching the top does not fool the check from either side. */
    struct vp_memtable top;
    vp_mt_init(&top, VP_MAX_REGIONS);
    struct vp_mt_region last = R(UINT64_MAX - 0x1fff, 0x1000);  /* ends where a range may */
    expect_add(&top, &last, 1, 0, 0, NULL);
    struct vp_mt_region near = R(UINT64_MAX - 0x17ff, 0x10);
    expect_add(&top, &near, 1, 0, -EINVAL, "overlaps existing region 0");
    g_assert_true(vp_ranges_overlap(UINT64_MAX - 0xfff, 0x2000, UINT64_MAX - 0x7ff, 0x10));
    g_assert_true(vp_ranges_overlap(UINT64_MAX - 0x7ff, 0x10, UINT64_MAX - 0xfff, 0x2000));
    g_assert_false(vp_ranges_overlap(0x10, 0, 0, 0x1000));  /* empty overlaps nothing */
    g_assert_false(vp_ranges_overlap(0, 0x1000, 0x800, 0));
}

static void test_repeats_room_targets(void)
{
    struct vp_memtable t;
    vp_mt_init(&t, 3);
    struct vp_mt_region a = { .gpa = 0x100000, .size = 0x100000, .target = 0x200000 };
    expect_add(&t, &a, 1, VP_MT_SKIP_SAME, 0, NULL);
    /* The same region again: a repeat with SKIP_SAME, an overlap without. */
    unsigned fresh = 9;
    vp_error err = { "" };
    g_assert_cmpint(vp_mt_check_add(&t, &a, 1, VP_MT_SKIP_SAME, &fresh, &err), ==, 0);
    g_assert_cmpuint(fresh, ==, 0);
    expect_add(&t, &a, 1, VP_MT_SKIP_SAME, 0, NULL);
    g_assert_cmpuint(t.n, ==, 1);
    expect_add(&t, &a, 1, 0, -EINVAL, "overlaps existing region 0");
    /* Same address, other target: an overlap even with SKIP_SAME. */
    struct vp_mt_region moved = a;
    moved.target = 0x400000;
    expect_add(&t, &moved, 1, VP_MT_SKIP_SAME, -EINVAL, "overlaps existing region 0");
    /* Disjoint targets when asked. */
    struct vp_mt_region alias = { .gpa = 0x800000, .size = 0x1000, .target = 0x200800 };
    expect_add(&t, &alias, 1, VP_MT_DISJOINT_TARGETS, -EINVAL,
               "region 0: target range [0x200800, +0x1000) overlaps existing region 0");
    expect_add(&t, &alias, 1, 0, 0, NULL);
    /* Room: max 3. */
    struct vp_mt_region two[2] = { R(0x10000000, 0x1000), R(0x20000000, 0x1000) };
    expect_add(&t, two, 2, 0, -ENOSPC, "2 new regions would exceed the limit of 3");
    expect_add(&t, two, 1, 0, 0, NULL);
    g_assert_cmpuint(t.n, ==, 3);
}

static void test_find_translate_del(void)
{
    struct vp_memtable t;
    vp_mt_init(&t, VP_MAX_REGIONS);
    const struct vp_mt_region a[2] = {
        { .gpa = 0, .size = 0x10000, .target = 0x400000, .file_offset = 0, .slot = 1 },
        { .gpa = 0x100000, .size = 0x1000, .target = 0x800000, .file_offset = 0x100000, .slot = 2 },
    };
    expect_add(&t, a, 2, 0, 0, NULL);
    g_assert_cmpint(vp_mt_find(&t, 0x100000), ==, 1);
    g_assert_cmpint(vp_mt_find(&t, 0x100001), ==, -1);
    g_assert_cmpint(vp_mt_lookup(&t, 0x100fff), ==, 1);
    g_assert_cmpint(vp_mt_lookup(&t, 0x101000), ==, -1);
    uint64_t tg = 0;
    /* Clamped to the region's end; nothing outside; nothing for len 0. */
    g_assert_cmpuint(vp_mt_translate(&t, 0xfff0, 0x100, &tg), ==, 0x10);
    g_assert_cmpuint(tg, ==, 0x40fff0);
    g_assert_cmpuint(vp_mt_translate(&t, 0x8, 4, &tg), ==, 4);
    g_assert_cmpuint(tg, ==, 0x400008);
    tg = 7;
    g_assert_cmpuint(vp_mt_translate(&t, 0x10000, 1, &tg), ==, 0);
    g_assert_cmpuint(vp_mt_translate(&t, 0x8, 0, &tg), ==, 0);
    g_assert_cmpuint(tg, ==, 7);
    g_assert_cmpuint(vp_mt_translate(&t, 0x100800, UINT64_MAX, &tg), ==, 0x800);
    uint64_t g = 0;
    g_assert_cmpuint(vp_mt_translate_target(&t, 0x800ff0, 0x100, &g), ==, 0x10);
    g_assert_cmpuint(g, ==, 0x100ff0);
    g_assert_cmpuint(vp_mt_translate_target(&t, 0x3fffff, 2, &g), ==, 0);
    g_assert_true(vp_mt_contains(&t, 0, 0x10000));
    g_assert_false(vp_mt_contains(&t, 1, 0x10000));
    g_assert_false(vp_mt_contains(&t, 0xffff, UINT64_MAX));

    /* Delete: by gpa and size, none twice, unknown refused. */
    vp_error err = { "" };
    struct vp_mt_region del[2] = { R(0x100000, 0x1000), R(0x100000, 0x1000) };
    g_assert_cmpint(vp_mt_check_del(&t, del, 2, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "listed twice"));
    del[1] = R(0, 0x2000);
    g_assert_cmpint(vp_mt_check_del(&t, del, 2, &err), ==, -ENOENT);
    g_assert_nonnull(strstr(err.msg, "region gpa 0x0 size 0x2000 is not in the memory table"));
    g_assert_cmpint(vp_mt_check_del(&t, del, 1, &err), ==, 0);
    vp_mt_del(&t, del, 1);
    g_assert_cmpuint(t.n, ==, 1);
    g_assert_cmpint(vp_mt_lookup(&t, 0x100000), ==, -1);
    vp_mt_remove_at(&t, 5);  /* out of range: ignored */
    vp_mt_remove_at(&t, 0);
    g_assert_cmpuint(t.n, ==, 0);
}

static void test_rings(void)
{
    vp_error err = { "" };
    struct vp_ring_layout q = { .index = 3, .num = 256, .desc = 0x1000, .avail = 0x2000,
                                .used = 0x3000 };
    g_assert_cmpint(vp_ring_check(&q, &err), ==, 0);
    q.num = 3;
    g_assert_cmpint(vp_ring_check(&q, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "virtqueue 3: num 3 is not a power of two in 1..32768"));
    q.num = 256;
    q.used = 0x3002;
    g_assert_cmpint(vp_ring_check(&q, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "virtqueue 3: used address 0x3002 not aligned to 4 bytes"));
    q.used = 0;
    g_assert_cmpint(vp_ring_check(&q, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "virtqueue 3: used address is zero"));
    q.used = 0x3000;
    q.desc = UINT64_MAX - 0xf;
    g_assert_cmpint(vp_ring_check(&q, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "desc ring at 0xfffffffffffffff0 + 0x1000 bytes overflows"));
    q.desc = 0x1000;

    struct vp_memtable t;
    vp_mt_init(&t, VP_MAX_REGIONS);
    struct vp_mt_region r[2] = { R(0, 0x2000), R(0x2000, 0x1000) };
    expect_add(&t, r, 2, 0, 0, NULL);
    /* The used ring (6 + 8 * 256 bytes) does not fit in [0x2000, 0x3000) + nothing. */
    g_assert_cmpint(vp_mt_check_ring(&t, &q, &err), ==, -EFAULT);
    g_assert_nonnull(strstr(err.msg, "virtqueue 3: used ring at gpa 0x3000 (2054 bytes) is not "
                                     "inside one memory region"));
    q.used = 0x2800;  /* crosses into nothing: 0x2800 + 2054 > 0x3000 */
    g_assert_cmpint(vp_mt_check_ring(&t, &q, &err), ==, -EFAULT);
    q.used = 0x100;
    q.avail = 0x1ffe;  /* 518 bytes across the boundary of two regions */
    g_assert_cmpint(vp_mt_check_ring(&t, &q, &err), ==, -EFAULT);
    g_assert_nonnull(strstr(err.msg, "avail ring at gpa 0x1ffe (518 bytes)"));
    q.avail = 0x2000;
    q.desc = 0x1000;
    q.used = 0x2400;  /* in the second region */
    g_assert_cmpint(vp_mt_check_ring(&t, &q, &err), ==, 0);
    g_assert_true(vp_ring_overlaps(&q, 0x2000, 1));
    g_assert_true(vp_ring_overlaps(&q, 0x1fff, 1));   /* last byte of the descriptor table */
    g_assert_false(vp_ring_overlaps(&q, 0x0, 0x1000));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/memtable/overlap", test_overlap);
    g_test_add_func("/memtable/repeats-room-targets", test_repeats_room_targets);
    g_test_add_func("/memtable/find-translate-del", test_find_translate_del);
    g_test_add_func("/memtable/rings", test_rings);
    return g_test_run();
}
