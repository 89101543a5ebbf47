/*
 * test-server-layout.c - the server's pure layout logic (server/layout.c): window
 * deduplication by file, BAR sizing and placement, the clone decision, window-size
 * checks, and doorbell vector assignment.
 */
#include <errno.h>
#include <glib.h>
#include <string.h>

#include "../../server/layout.h"
#include "testutil.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)

static struct srv_file_id file(uint64_t ino, uint64_t size)
{
    return (struct srv_file_id){ .dev = 7, .ino = ino, .size = size };
}

/* First memory of a device: regions of one file share a window; the BAR is
 * pow2ceil(2 x total windows), at least 2 MiB. */
static void test_first_memory_dedup(void)
{
    struct srv_file_id f[3] = { file(1, 1 * GiB), file(1, 1 * GiB), file(2, 512 * MiB) };
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, f, 3, &p, &err), ==, 0);
    g_assert_false(p.clone);
    g_assert_cmpuint(p.nnew, ==, 2);
    g_assert_cmpint(p.region_win[0], ==, -1);
    g_assert_cmpint(p.region_win[1], ==, -1);  /* same file: same window */
    g_assert_cmpint(p.region_win[2], ==, -2);
    g_assert_cmphex(p.bar_size, ==, 4 * GiB);  /* pow2ceil(2 x 1.5 GiB) */
    g_assert_cmphex(p.new_offset[0], ==, 0);
    g_assert_cmphex(p.new_offset[1], ==, 1 * GiB);  /* aligned to its size, after 1 GiB */
}

static void test_small_memory_min_bar(void)
{
    struct srv_file_id f = file(1, 4096);
    struct srv_add_plan p;
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, &f, 1, &p, NULL), ==, 0);
    g_assert_cmphex(p.bar_size, ==, 2 * MiB);
}

/* Hot-add: a region of an existing file reuses its window; a new file that fits
 * gets the lowest free aligned offset. */
static void test_hot_add_fits(void)
{
    struct srv_win_pos old[1] = { { file(1, 1 * GiB), 0 } };
    struct srv_file_id f[2] = { file(1, 1 * GiB), file(9, 256 * MiB) };
    struct srv_add_plan p;
    g_assert_cmpint(srv_plan_add(old, 1, 4 * GiB, f, 2, &p, NULL), ==, 0);
    g_assert_false(p.clone);
    g_assert_cmpint(p.region_win[0], ==, 0);  /* existing window 0 */
    g_assert_cmpint(p.region_win[1], ==, -1); /* new window 0 */
    g_assert_cmpuint(p.nnew, ==, 1);
    g_assert_cmphex(p.new_offset[0], ==, 1 * GiB);
    g_assert_cmphex(p.bar_size, ==, 4 * GiB);
}

/* Hot-add that does not fit: clone, BAR for the new total, every window placed
 * afresh, largest first. */
static void test_hot_add_clone(void)
{
    struct srv_win_pos old[2] = { { file(1, 1 * MiB), 0 }, { file(2, 1 * MiB), 1 * MiB } };
    struct srv_file_id f = file(3, 2 * MiB);
    struct srv_add_plan p;
    g_assert_cmpint(srv_plan_add(old, 2, 2 * MiB, &f, 1, &p, NULL), ==, 0);
    g_assert_true(p.clone);
    g_assert_cmphex(p.bar_size, ==, 8 * MiB);  /* pow2ceil(2 x 4 MiB) */
    g_assert_cmphex(p.clone_offset[2], ==, 0);  /* the 2 MiB window first */
    g_assert_cmphex(p.clone_offset[0], ==, 2 * MiB);
    g_assert_cmphex(p.clone_offset[1], ==, 3 * MiB);
}

static void test_non_pow2_rejected(void)
{
    struct srv_file_id f[2] = { file(1, 1 * MiB), file(2, 3 * MiB) };
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, f, 2, &p, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "region 1"));
    g_assert_nonnull(strstr(err.msg, "3145728 bytes"));
    g_assert_nonnull(strstr(err.msg, "not a power of two"));
    memset(&err, 0, sizeof(err));
    g_assert_cmpint(srv_check_window_size(4, 0, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "region 4 is 0 bytes"));
    g_assert_cmpint(srv_check_window_size(0, 1ULL << 40, NULL), ==, 0);
}

static void test_too_many_windows(void)
{
    struct srv_win_pos old[VP_MAX_WINDOWS];
    for (unsigned i = 0; i < VP_MAX_WINDOWS; i++)
        old[i] = (struct srv_win_pos){ file(100 + i, 1 * MiB), i * MiB };
    struct srv_file_id f = file(1, 1 * MiB);
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(old, VP_MAX_WINDOWS, 64 * MiB, &f, 1, &p, &err), ==, -ENOSPC);
    g_assert_nonnull(strstr(err.msg, "at most 32 windows"));
    /* A region of a file that already has a window is still fine. */
    f = file(100, 1 * MiB);
    g_assert_cmpint(srv_plan_add(old, VP_MAX_WINDOWS, 64 * MiB, &f, 1, &p, &err), ==, 0);
    g_assert_cmpint(p.region_win[0], ==, 0);
}

static void test_overflow(void)
{
    struct srv_file_id f[2] = { file(1, 1ULL << 62), file(2, 1ULL << 62) };
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, f, 2, &p, &err), ==, -EOVERFLOW);
    g_assert_nonnull(strstr(err.msg, "too large"));
    uint64_t sizes[2] = { 1ULL << 63, 1ULL << 63 }, off[2], bar;
    g_assert_cmpint(srv_place_all(sizes, 2, &bar, off), ==, -EOVERFLOW);
}

static void test_place_all_packs(void)
{
    uint64_t sizes[4] = { 1 * MiB, 4 * MiB, 2 * MiB, 1 * MiB }, off[4], bar = 0;
    g_assert_cmpint(srv_place_all(sizes, 4, &bar, off), ==, 0);
    g_assert_cmphex(bar, ==, 16 * MiB);
    g_assert_cmphex(off[1], ==, 0);
    g_assert_cmphex(off[2], ==, 4 * MiB);
    g_assert_cmphex(off[0], ==, 6 * MiB);
    g_assert_cmphex(off[3], ==, 7 * MiB);
}

/* Vectors: fresh numbers in order, never reused (QEMU 7.2 cannot replace an eventfd
 * it holds), count = highest used + 1, 256 per device at most. */
static void test_vectors(void)
{
    struct srv_vectors t;
    memset(&t, 0, sizeof(t));
    g_assert_cmpint(srv_vector_alloc(&t, 1, 0), ==, 0);
    g_assert_cmpint(srv_vector_alloc(&t, 1, 1), ==, 1);
    g_assert_cmpint(srv_vector_alloc(&t, 2, 0), ==, 2);
    g_assert_cmpint(srv_vector_find(&t, 2, 0), ==, 2);
    g_assert_cmpint(srv_vector_find(&t, 1, 1), ==, 1);
    g_assert_cmpint(srv_vector_find(&t, 2, 1), ==, -1);
    g_assert_cmpuint(srv_vectors_count(&t), ==, 3);
    srv_vector_free_device(&t, 1);
    g_assert_cmpint(srv_vector_find(&t, 1, 0), ==, -1);
    g_assert_cmpuint(srv_vectors_count(&t), ==, 3);  /* vector 2 still used: holes stay */
    g_assert_cmpint(srv_vector_alloc(&t, 3, 5), ==, 3);  /* 0 and 1 are not reused */
    srv_vector_free(&t, 3);
    srv_vector_free(&t, 999);  /* ignored */
    srv_vector_free(&t, -1);   /* ignored */
    g_assert_cmpuint(srv_vectors_count(&t), ==, 3);
    srv_vector_free(&t, 2);
    g_assert_cmpuint(srv_vectors_count(&t), ==, 0);
    memset(&t, 0, sizeof(t));
    for (int i = 0; i < VP_MAX_VECTORS; i++)
        g_assert_cmpint(srv_vector_alloc(&t, 7, (uint32_t)i), ==, i);
    g_assert_cmpint(srv_vector_alloc(&t, 8, 0), ==, -ENOSPC);
    g_assert_cmpuint(srv_vectors_count(&t), ==, VP_MAX_VECTORS);
    srv_vector_free_device(&t, 7);
    g_assert_cmpint(srv_vector_alloc(&t, 8, 0), ==, -ENOSPC);  /* numbers are used up */
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/server-layout/first-memory-dedup", test_first_memory_dedup);
    g_test_add_func("/server-layout/small-memory-min-bar", test_small_memory_min_bar);
    g_test_add_func("/server-layout/hot-add-fits", test_hot_add_fits);
    g_test_add_func("/server-layout/hot-add-clone", test_hot_add_clone);
    g_test_add_func("/server-layout/non-pow2-rejected", test_non_pow2_rejected);
    g_test_add_func("/server-layout/too-many-windows", test_too_many_windows);
    g_test_add_func("/server-layout/overflow", test_overflow);
    g_test_add_func("/server-layout/place-all-packs", test_place_all_packs);
    g_test_add_func("/server-layout/vectors", test_vectors);
    return g_test_run();
}
