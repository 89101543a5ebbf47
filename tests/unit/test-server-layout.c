/*
 * test-server-layout.c - the server's pure layout logic (server/layout.c): window
 * deduplication by file, BAR sizing and placement, the clone decision, window-size
 * checks, and doorbell vector assignment; files that are not a power of two served
 * as several windows ("pieces", issue 13 item 3) and their listing (server/windows.c).
 */
#include <errno.h>
#include <glib.h>
#include <string.h>

#include "../../server/layout.h"
#include "../../server/windows.h"
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
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, f, 3, false, &p, &err), ==, 0);
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
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, &f, 1, false, &p, NULL), ==, 0);
    g_assert_cmphex(p.bar_size, ==, 2 * MiB);
}

/* Hot-add: a region of an existing file reuses its window; a new file that fits
 * gets the lowest free aligned offset. */
static void test_hot_add_fits(void)
{
    struct srv_win_pos old[1] = { { file(1, 1 * GiB), 0 } };
    struct srv_file_id f[2] = { file(1, 1 * GiB), file(9, 256 * MiB) };
    struct srv_add_plan p;
    g_assert_cmpint(srv_plan_add(old, 1, 4 * GiB, f, 2, false, &p, NULL), ==, 0);
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
    g_assert_cmpint(srv_plan_add(old, 2, 2 * MiB, &f, 1, false, &p, NULL), ==, 0);
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
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, f, 2, false, &p, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "region 1"));
    g_assert_nonnull(strstr(err.msg, "3145728 bytes"));
    g_assert_nonnull(strstr(err.msg, "not a power of two"));
    memset(&err, 0, sizeof(err));
    g_assert_cmpint(srv_check_window_size(4, 0, false, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "region 4 is 0 bytes"));
    g_assert_cmpint(srv_check_window_size(0, 1ULL << 40, false, NULL), ==, 0);
}

static void test_too_many_windows(void)
{
    struct srv_win_pos old[VP_MAX_WINDOWS];
    for (unsigned i = 0; i < VP_MAX_WINDOWS; i++)
        old[i] = (struct srv_win_pos){ file(100 + i, 1 * MiB), i * MiB };
    struct srv_file_id f = file(1, 1 * MiB);
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(old, VP_MAX_WINDOWS, 64 * MiB, &f, 1, false, &p, &err), ==, -ENOSPC);
    g_assert_nonnull(strstr(err.msg, "at most 32 windows"));
    /* A region of a file that already has a window is still fine. */
    f = file(100, 1 * MiB);
    g_assert_cmpint(srv_plan_add(old, VP_MAX_WINDOWS, 64 * MiB, &f, 1, false, &p, &err), ==, 0);
    g_assert_cmpint(p.region_win[0], ==, 0);
}

static void test_overflow(void)
{
    struct srv_file_id f[2] = { file(1, 1ULL << 62), file(2, 1ULL << 62) };
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, f, 2, false, &p, &err), ==, -EOVERFLOW);
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


/* ---- pieces: files whose size is not a power of two (issue 13 item 3) ---- */

static void assert_pieces(uint64_t size, const uint64_t *want, unsigned n)
{
    struct srv_piece p[64];
    g_assert_cmpuint(srv_file_pieces(size, p), ==, n);
    uint64_t off = 0;
    for (unsigned k = 0; k < n; k++) {
        g_assert_cmphex(p[k].size, ==, want[k]);
        g_assert_cmphex(p[k].file_offset, ==, off);  /* back to back, largest first */
        off += want[k];
    }
}

static void test_pieces(void)
{
    assert_pieces(384 * MiB, (const uint64_t[]){ 256 * MiB, 128 * MiB }, 2);
    assert_pieces(500 * MiB, (const uint64_t[]){ 256 * MiB, 128 * MiB, 64 * MiB, 32 * MiB,
                                                 16 * MiB, 4 * MiB }, 6);
    assert_pieces(1 * GiB, (const uint64_t[]){ 1 * GiB }, 1);
    g_assert_cmpuint(srv_file_pieces(0, NULL), ==, 0);
    g_assert_cmphex(srv_window_span(384 * MiB), ==, 512 * MiB);
    g_assert_cmphex(srv_window_span(1 * GiB), ==, 1 * GiB);
}

/* The window size check with and without a host that maps parts of files. */
static void test_split_size_check(void)
{
    vp_error err = { "" };
    /* QEMU 7.2: refused, with the reason. */
    g_assert_cmpint(srv_check_window_size(2, 384 * MiB, false, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "region 2"));
    g_assert_nonnull(strstr(err.msg, "402653184 bytes, not a power of two"));
    g_assert_nonnull(strstr(err.msg, "before 8.1"));
    /* QEMU >= 8.1 / local: accepted. */
    g_assert_cmpint(srv_check_window_size(2, 384 * MiB, true, NULL), ==, 0);
    g_assert_cmpint(srv_check_window_size(0, 500 * MiB, true, NULL), ==, 0);
    /* Not a page multiple, zero, too many pieces: refused even then. */
    memset(&err, 0, sizeof(err));
    g_assert_cmpint(srv_check_window_size(1, 1 * MiB + 512, true, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "not a multiple of 4096"));
    g_assert_cmpint(srv_check_window_size(1, 0, true, NULL), ==, -EINVAL);
    memset(&err, 0, sizeof(err));
    uint64_t many = (1ULL << 45) - 4096;  /* 33 pieces: 2^12 .. 2^44 */
    g_assert_cmpint(srv_check_window_size(1, many, true, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "33 power-of-two windows"));
}

/* First memory of 384 MiB: one window (file) of two pieces; its span (512 MiB) sizes
 * and aligns it; on a host that cannot split, ADD_FAIL's reason. */
static void test_split_first_memory(void)
{
    struct srv_file_id f = file(1, 384 * MiB);
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, &f, 1, false, &p, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "not a power of two"));
    g_assert_cmpint(srv_plan_add(NULL, 0, 0, &f, 1, true, &p, &err), ==, 0);
    g_assert_false(p.clone);
    g_assert_cmpuint(p.nnew, ==, 1);
    g_assert_cmphex(p.bar_size, ==, 1 * GiB);
    g_assert_cmphex(p.new_offset[0], ==, 0);
}

/* Hot-add of a 384 MiB DIMM next to 1 GiB of main memory in a 2 GiB BAR: placed at
 * 1 GiB, so its pieces are at 1 GiB (256 MiB, aligned) and 1.25 GiB (128 MiB,
 * aligned); a 500 MiB file's six pieces all land naturally aligned too. */
static void test_split_hot_add(void)
{
    struct srv_win_pos old[1] = { { file(1, 1 * GiB), 0 } };
    struct srv_file_id f = file(2, 384 * MiB);
    struct srv_add_plan p;
    g_assert_cmpint(srv_plan_add(old, 1, 2 * GiB, &f, 1, true, &p, NULL), ==, 0);
    g_assert_false(p.clone);
    g_assert_cmphex(p.new_offset[0], ==, 1 * GiB);

    struct srv_win_pos old2[2] = { { file(1, 1 * GiB), 0 }, { file(2, 384 * MiB), 1 * GiB } };
    f = file(3, 500 * MiB);
    g_assert_cmpint(srv_plan_add(old2, 2, 4 * GiB, &f, 1, true, &p, NULL), ==, 0);
    g_assert_false(p.clone);
    g_assert_cmphex(p.new_offset[0], ==, 1536 * MiB);  /* 512 MiB span, aligned, after 1.375 GiB */
    struct srv_piece pc[64];
    unsigned n = srv_file_pieces(500 * MiB, pc);
    for (unsigned k = 0; k < n; k++)
        g_assert_cmphex((p.new_offset[0] + pc[k].file_offset) % pc[k].size, ==, 0);
}

/* A split file that does not fit clones (spec 1.6.1.2): every window placed afresh
 * by its span, the split file's pieces carried (same file, same offsets rule). */
static void test_split_clone(void)
{
    struct srv_win_pos old[1] = { { file(1, 128 * MiB), 0 } };
    struct srv_file_id f = file(2, 384 * MiB);
    struct srv_add_plan p;
    g_assert_cmpint(srv_plan_add(old, 1, 256 * MiB, &f, 1, true, &p, NULL), ==, 0);
    g_assert_true(p.clone);
    g_assert_cmphex(p.bar_size, ==, 2 * GiB);        /* pow2ceil(2 x (128 + 512) MiB) */
    g_assert_cmphex(p.clone_offset[1], ==, 0);       /* the 512 MiB span first */
    g_assert_cmphex(p.clone_offset[0], ==, 512 * MiB);
}

/* Pieces count against the control area's 32 window slots. */
static void test_split_too_many_pieces(void)
{
    struct srv_win_pos old[28];
    for (unsigned i = 0; i < 28; i++)
        old[i] = (struct srv_win_pos){ file(100 + i, 1 * MiB), i * MiB };
    struct srv_file_id f = file(1, 500 * MiB);  /* 6 pieces: 34 > 32 */
    struct srv_add_plan p;
    vp_error err = { "" };
    g_assert_cmpint(srv_plan_add(old, 28, 4 * GiB, &f, 1, true, &p, &err), ==, -ENOSPC);
    g_assert_nonnull(strstr(err.msg, "would be window 34"));
    f = file(1, 384 * MiB);  /* 2 pieces: 30 */
    g_assert_cmpint(srv_plan_add(old, 28, 4 * GiB, &f, 1, true, &p, &err), ==, 0);
}

/* The control area lists every piece at its own offset; a region spanning both
 * pieces keeps target = window bar_offset + mmap_offset; removing the regions drops
 * the window's references (device.c then unplugs every piece). */
static void test_split_listing_and_regions(void)
{
    static struct srv_memory m;
    srv_mem_init(&m);
    m.bar_size = 2 * GiB;
    struct srv_window *w = &m.wins[3];
    *w = (struct srv_window){ .used = true, .state = WIN_PLUGGED, .file = file(9, 384 * MiB),
                              .bar_offset = 1 * GiB, .fd = -1 };
    struct srv_piece pc[64];
    w->npieces = srv_file_pieces(384 * MiB, pc);
    for (unsigned k = 0; k < w->npieces; k++)
        w->piece[k] = (struct srv_win_piece){ pc[k], 0x40 + 8 * k, PIECE_PLUGGED };
    struct srv_ca_window ca[VP_MAX_WINDOWS];
    g_assert_cmpuint(srv_mem_plugged(&m, ca), ==, 2);
    g_assert_cmpuint(ca[0].devfn, ==, 0x40);
    g_assert_cmphex(ca[0].bar_offset, ==, 1 * GiB);
    g_assert_cmphex(ca[0].size, ==, 256 * MiB);
    g_assert_cmpuint(ca[1].devfn, ==, 0x48);
    g_assert_cmphex(ca[1].bar_offset, ==, 1 * GiB + 256 * MiB);
    g_assert_cmphex(ca[1].size, ==, 128 * MiB);

    /* One region over the whole file (spans both pieces), one in the second piece. */
    srv_mem_insert(&m, 0x100000000ULL, 300 * MiB, 0, 3);
    srv_mem_insert(&m, 0x200000000ULL, 64 * MiB, 300 * MiB, 3);
    g_assert_cmphex(m.table.r[0].target, ==, 1 * GiB);
    g_assert_cmphex(m.table.r[1].target, ==, 1 * GiB + 300 * MiB);
    g_assert_cmpuint(w->refs, ==, 2);
    struct srv_win_pos old[VP_MAX_WINDOWS];
    int map[VP_MAX_WINDOWS];
    g_assert_cmpuint(srv_mem_used_windows(&m, old, map), ==, 1);
    g_assert_cmphex(old[0].file.size, ==, 384 * MiB);  /* a clone re-plugs the file */
    g_assert_cmphex(old[0].bar_offset, ==, 1 * GiB);
    srv_mem_remove_region(&m, 0x100000000ULL);
    srv_mem_remove_region(&m, 0x200000000ULL);
    g_assert_cmpuint(w->refs, ==, 0);
    g_assert_cmpuint(m.table.n, ==, 0);
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
    g_test_add_func("/server-layout/pieces", test_pieces);
    g_test_add_func("/server-layout/split-size-check", test_split_size_check);
    g_test_add_func("/server-layout/split-first-memory", test_split_first_memory);
    g_test_add_func("/server-layout/split-hot-add", test_split_hot_add);
    g_test_add_func("/server-layout/split-clone", test_split_clone);
    g_test_add_func("/server-layout/split-too-many-pieces", test_split_too_many_pieces);
    g_test_add_func("/server-layout/split-listing-and-regions", test_split_listing_and_regions);
    return g_test_run();
}
