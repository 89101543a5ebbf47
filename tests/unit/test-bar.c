/*
 * test-bar.c - logical BAR arithmetic (protocol/vp_bar.c): pow2ceil, bar_size_for,
 * window placement (alignment, lowest offset, holes, fill-up, errors).
 */
#include <errno.h>

#include <glib.h>

#include "testutil.h"
#include "vp_bar.h"

static void test_pow2ceil(void)
{
    static const struct { uint64_t in, out; } t[] = {
        { 0, 1 },
        { 1, 1 },
        { 2, 2 },
        { 3, 4 },
        { 4, 4 },
        { 5, 8 },
        { 4095, 4096 },
        { 4096, 4096 },
        { 4097, 8192 },
        { (1ULL << 32) - 1, 1ULL << 32 },
        { (1ULL << 32) + 1, 1ULL << 33 },
        { (1ULL << 62) + 1, 1ULL << 63 },
        { 1ULL << 63, 1ULL << 63 },
        { (1ULL << 63) + 1, 0 },
        { UINT64_MAX, 0 },
    };
    for (unsigned i = 0; i < VP_ARRAY_SIZE(t); i++) {
        uint64_t got = vp_pow2ceil(t[i].in);
        if (got != t[i].out)
            g_error("pow2ceil(%#llx) = %#llx, want %#llx", (unsigned long long)t[i].in,
                    (unsigned long long)got, (unsigned long long)t[i].out);
    }
    for (unsigned b = 0; b < 64; b++) {
        g_assert_true(vp_is_pow2(1ULL << b));
        g_assert_cmpuint(vp_pow2ceil(1ULL << b), ==, 1ULL << b);
        if (b >= 2)
            g_assert_false(vp_is_pow2((1ULL << b) - 1));
    }
    g_assert_false(vp_is_pow2(0));
}

static void test_bar_size_for(void)
{
    const uint64_t M = 1ULL << 20, G = 1ULL << 30;
    g_assert_cmpuint(vp_bar_size_for(0), ==, VP_BAR_MIN_SIZE);
    g_assert_cmpuint(vp_bar_size_for(1), ==, VP_BAR_MIN_SIZE);
    g_assert_cmpuint(vp_bar_size_for(M), ==, 2 * M);          /* 2 x 1 MiB = the floor */
    g_assert_cmpuint(vp_bar_size_for(M + 1), ==, 4 * M);
    g_assert_cmpuint(vp_bar_size_for(512 * M), ==, G);
    g_assert_cmpuint(vp_bar_size_for(G), ==, 2 * G);
    g_assert_cmpuint(vp_bar_size_for(G + 4096), ==, 4 * G);
    g_assert_cmpuint(vp_bar_size_for(3 * G), ==, 8 * G);
    g_assert_cmpuint(vp_bar_size_for(1ULL << 62), ==, 1ULL << 63); /* the largest */
    g_assert_cmpuint(vp_bar_size_for((1ULL << 62) + 1), ==, 0);    /* overflow */
    g_assert_cmpuint(vp_bar_size_for(1ULL << 63), ==, 0);
    g_assert_cmpuint(vp_bar_size_for(UINT64_MAX), ==, 0);
}

static void test_place_basic(void)
{
    const uint64_t M = 1ULL << 20;
    uint64_t off = 12345;
    /* Empty BAR: offset 0. */
    g_assert_cmpint(vp_bar_place(NULL, 0, 8 * M, 4 * M, &off), ==, 0);
    g_assert_cmpuint(off, ==, 0);
    /* The whole BAR. */
    g_assert_cmpint(vp_bar_place(NULL, 0, 8 * M, 8 * M, &off), ==, 0);
    g_assert_cmpuint(off, ==, 0);
    /* Larger than the BAR. */
    off = 12345;
    g_assert_cmpint(vp_bar_place(NULL, 0, 8 * M, 16 * M, &off), ==, -ENOSPC);
    g_assert_cmpuint(off, ==, 12345);
    g_assert_false(vp_bar_fits(NULL, 0, 8 * M, 16 * M));

    /* Alignment: after a 1 MiB window at 0, a 4 MiB one goes to 4 MiB, not 1 MiB. */
    struct vp_bar_window w[4] = { { 0, M } };
    g_assert_cmpint(vp_bar_place(w, 1, 8 * M, 4 * M, &off), ==, 0);
    g_assert_cmpuint(off, ==, 4 * M);
    g_assert_cmpuint(off % (4 * M), ==, 0);
    /* A 1 MiB one fills the lowest hole. */
    g_assert_cmpint(vp_bar_place(w, 1, 8 * M, M, &off), ==, 0);
    g_assert_cmpuint(off, ==, M);
    /* A hole in the middle is found: windows at 0 and 2 MiB, free 1 MiB at 1 MiB. */
    w[1] = (struct vp_bar_window){ 2 * M, 2 * M };
    g_assert_cmpint(vp_bar_place(w, 2, 8 * M, M, &off), ==, 0);
    g_assert_cmpuint(off, ==, M);
    g_assert_cmpint(vp_bar_place(w, 2, 8 * M, 2 * M, &off), ==, 0);
    g_assert_cmpuint(off, ==, 4 * M);
    /* 4 MiB no longer fits in the upper half? It does: [4M, 8M) is free. */
    g_assert_cmpint(vp_bar_place(w, 2, 8 * M, 4 * M, &off), ==, 0);
    g_assert_cmpuint(off, ==, 4 * M);
    /* A window straddling the middle blocks both aligned 4 MiB slots. */
    w[2] = (struct vp_bar_window){ 5 * M, M };
    g_assert_cmpint(vp_bar_place(w, 3, 8 * M, 4 * M, &off), ==, -ENOSPC);
    g_assert_false(vp_bar_fits(w, 3, 8 * M, 4 * M));
    g_assert_true(vp_bar_fits(w, 3, 8 * M, M));
    /* Windows given in any order. */
    struct vp_bar_window rev[3] = { w[2], w[1], w[0] };
    g_assert_cmpint(vp_bar_place(rev, 3, 8 * M, M, &off), ==, 0);
    g_assert_cmpuint(off, ==, M);
    g_assert_cmpint(vp_bar_place(rev, 3, 8 * M, 2 * M, &off), ==, 0);
    g_assert_cmpuint(off, ==, 6 * M);
}

static void test_place_errors(void)
{
    const uint64_t M = 1ULL << 20;
    uint64_t off = 777;
    static const uint64_t bad[] = { 0, 3, 3 * M, M + 1, UINT64_MAX };
    for (unsigned i = 0; i < VP_ARRAY_SIZE(bad); i++) {
        g_assert_cmpint(vp_bar_place(NULL, 0, 8 * M, bad[i], &off), ==, -EINVAL);
        g_assert_false(vp_bar_fits(NULL, 0, 8 * M, bad[i]));
    }
    g_assert_cmpuint(off, ==, 777);
    /* Windows with absurd values (overflowing ends) do not wrap the arithmetic. */
    struct vp_bar_window w[2] = { { UINT64_MAX - M + 1, 4 * M }, { 0, M } };
    g_assert_cmpint(vp_bar_place(w, 2, 1ULL << 63, M, &off), ==, 0);
    g_assert_cmpuint(off, ==, M);
    struct vp_bar_window huge = { 0, UINT64_MAX };
    g_assert_cmpint(vp_bar_place(&huge, 1, 1ULL << 63, M, &off), ==, -ENOSPC);
    /* A zero-size entry overlaps nothing. */
    struct vp_bar_window z = { 0, 0 };
    g_assert_cmpint(vp_bar_place(&z, 1, 8 * M, M, &off), ==, 0);
    g_assert_cmpuint(off, ==, 0);
    /* The largest BAR and window. */
    g_assert_cmpint(vp_bar_place(NULL, 0, 1ULL << 63, 1ULL << 63, &off), ==, 0);
    g_assert_cmpuint(off, ==, 0);
    struct vp_bar_window half = { 0, 1ULL << 62 };
    g_assert_cmpint(vp_bar_place(&half, 1, 1ULL << 63, 1ULL << 62, &off), ==, 0);
    g_assert_cmpuint(off, ==, 1ULL << 62);
}

/* Fill a BAR with windows of mixed sizes until nothing fits: every placement is
 * aligned, inside the BAR and disjoint from the others; then -ENOSPC. */
static void test_fill_up(void)
{
    const uint64_t M = 1ULL << 20;
    const uint64_t bar = 64 * M;
    struct vp_bar_window w[VP_MAX_WINDOWS];
    unsigned n = 0;
    static const uint64_t sizes[] = { 4, 1, 8, 2, 1, 16, 2, 4, 1, 1, 8, 4, 2, 1 };
    uint64_t used = 0;
    for (unsigned k = 0; k < VP_ARRAY_SIZE(sizes); k++) {
        uint64_t sz = sizes[k] * M, off;
        g_assert_cmpint(vp_bar_place(w, n, bar, sz, &off), ==, 0);
        g_assert_cmpuint(off % sz, ==, 0);
        g_assert_true(vp_range_ok(off, sz, bar));
        for (unsigned j = 0; j < n; j++)
            g_assert_true(off + sz <= w[j].offset || w[j].offset + w[j].size <= off);
        w[n++] = (struct vp_bar_window){ off, sz };
        used += sz;
    }
    g_assert_cmpuint(used, ==, 55 * M);
    /* 9 MiB left in 1 MiB units; fill it with 1 MiB windows. */
    while (used < bar) {
        uint64_t off;
        g_assert_cmpint(vp_bar_place(w, n, bar, M, &off), ==, 0);
        for (unsigned j = 0; j < n; j++)
            g_assert_true(off + M <= w[j].offset || w[j].offset + w[j].size <= off);
        w[n++] = (struct vp_bar_window){ off, M };
        used += M;
        g_assert_cmpuint(n, <=, VP_MAX_WINDOWS);
    }
    uint64_t off = 999;
    g_assert_cmpint(vp_bar_place(w, n, bar, M, &off), ==, -ENOSPC);
    g_assert_cmpint(vp_bar_place(w, n, bar, 4096, &off), ==, -ENOSPC);
    g_assert_cmpuint(off, ==, 999);
    g_assert_false(vp_bar_fits(w, n, bar, 2 * M));
    /* Smaller windows still fit in a 2 MiB BAR with one 1 MiB window. */
    struct vp_bar_window one = { M, M };
    g_assert_cmpint(vp_bar_place(&one, 1, VP_BAR_MIN_SIZE, 4096, &off), ==, 0);
    g_assert_cmpuint(off, ==, 0);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/bar/pow2ceil", test_pow2ceil);
    g_test_add_func("/bar/size_for", test_bar_size_for);
    g_test_add_func("/bar/place_basic", test_place_basic);
    g_test_add_func("/bar/place_errors", test_place_errors);
    g_test_add_func("/bar/fill_up", test_fill_up);
    return g_test_run();
}
