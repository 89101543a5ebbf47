/*
 * test-validate.c - semantic validation of MEMORY_INFO / DEVICE_INFO
 * (protocol/vp_validate.c): sizes, overflow, overlap, file bounds, seals, fd kinds,
 * ring layout. Every rejection asserts -EINVAL, the reason text and no fd leak.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../testutil.h"
#include "vp_msg.h"

#define MiB (1024ULL * 1024)

static void assert_err(int ret, const vp_error *err, const char *substr)
{
    g_assert_cmpint(ret, ==, -EINVAL);
    if (!strstr(err->msg, substr))
        g_error("reason \"%s\" does not contain \"%s\"", err->msg, substr);
}

/* Validate @mi with @flags and expect -EINVAL with @substr, no fd opened or closed. */
static void expect_mem_error(const struct vp_memory_info *mi, unsigned flags,
                             const char *substr)
{
    int before = vp_count_open_fds();
    vp_error err = { "" };
    assert_err(vp_validate_memory_info(mi, flags, &err), &err, substr);
    vp_assert_fds(before);
}

static void expect_mem_ok(const struct vp_memory_info *mi, unsigned flags)
{
    int before = vp_count_open_fds();
    vp_error err = { "" };
    int r = vp_validate_memory_info(mi, flags, &err);
    if (r != 0)
        g_error("vp_validate_memory_info: %d %s", r, err.msg);
    vp_assert_fds(before);
}

/* Two regions in one sealed 4 MiB memfd: [0, 1 MiB) at gpa 0 and [1 MiB, 3 MiB) at
 * gpa 4 GiB. */
static void good_mem(struct vp_memory_info *mi)
{
    vp_memory_info_init(mi);
    mi->op = VP_OP_ADD;
    mi->nregions = 2;
    int fd = vp_test_memfd("guest-ram", 4 * MiB, TRUE);
    mi->regions[0] = (struct vp_region){ .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = fd };
    mi->regions[1] = (struct vp_region){ .gpa = 4096 * MiB, .size = 2 * MiB,
                                         .mmap_offset = MiB, .fd = dup(fd) };
}

static void test_mem_good(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    good_mem(&mi);
    expect_mem_ok(&mi, 0);
    expect_mem_ok(&mi, VP_VALIDATE_ALLOW_UNSEALED);
    /* A region ending exactly at the end of its file. */
    mi.regions[1].size = 3 * MiB;
    expect_mem_ok(&mi, 0);
    vp_memory_info_close_fds(&mi);
    vp_assert_fds(before);
}

static void test_mem_counts_and_op(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    good_mem(&mi);
    mi.nregions = 0;
    expect_mem_error(&mi, 0, "memory info ADD: 0 regions, need 1..64");
    mi.nregions = VP_MAX_REGIONS + 1;
    expect_mem_error(&mi, 0, "65 regions");
    mi.nregions = 2;
    mi.op = 7;
    expect_mem_error(&mi, 0, "unknown op 7");
    mi.op = VP_OP_ADD;
    vp_memory_info_close_fds(&mi);
    vp_assert_fds(before);
}

static void test_mem_sizes_and_overflow(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    good_mem(&mi);

    mi.regions[1].size = 0;
    expect_mem_error(&mi, 0, "region 1: zero size");
    mi.regions[1].size = 2 * MiB;

    /* gpa + size wraps past 2^64. */
    mi.regions[1].gpa = UINT64_MAX - MiB + 1;
    expect_mem_error(&mi, 0, "region 1: guest-physical address 0xfffffffffff00000 + size "
                             "0x200000 overflows");
    /* Ending exactly at 2^64 is not representable either. */
    mi.regions[1].gpa = 0ULL - 2 * MiB;
    expect_mem_error(&mi, 0, "region 1: guest-physical address");
    /* The last range that fits is accepted by the overflow check (the file check
     * then passes too). */
    mi.regions[1].gpa = UINT64_MAX - 2 * MiB;
    expect_mem_ok(&mi, 0);
    mi.regions[1].gpa = 4096 * MiB;

    /* mmap_offset + size wraps. */
    mi.regions[0].mmap_offset = UINT64_MAX - 4095;
    expect_mem_error(&mi, 0, "region 0: mmap_offset 0xfffffffffffff000 + size 0x100000 overflows");
    /* A huge offset that does not wrap is past the end of the file. */
    mi.regions[0].mmap_offset = 1ULL << 62;
    expect_mem_error(&mi, 0, "region 0: mmap_offset 0x4000000000000000 + size 0x100000 past "
                             "the end of its file (0x400000 bytes)");
    mi.regions[0].mmap_offset = 0;

    vp_memory_info_close_fds(&mi);
    vp_assert_fds(before);
}

static void test_mem_overlap(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    good_mem(&mi);

    /* Adjacent: [0, 1 MiB) and [1 MiB, 3 MiB). */
    mi.regions[1].gpa = MiB;
    expect_mem_ok(&mi, 0);
    /* One byte of overlap, both orders. */
    mi.regions[1].gpa = MiB - 1;
    expect_mem_error(&mi, 0, "region 1 [0xfffff, +0x200000) overlaps region 0 [0x0, +0x100000)");
    mi.regions[0].gpa = 3 * MiB - 1;
    mi.regions[1].gpa = MiB;
    expect_mem_error(&mi, 0, "region 1 [0x100000, +0x200000) overlaps region 0");
    /* Containment and identity. */
    mi.regions[0].gpa = 2 * MiB;
    mi.regions[1].gpa = MiB;
    expect_mem_error(&mi, 0, "overlaps region 0");
    mi.regions[0].gpa = MiB;
    expect_mem_error(&mi, 0, "overlaps region 0");

    /* Overlap found among many regions (the last with the first). */
    vp_memory_info_close_fds(&mi);
    int fd = vp_test_memfd("many", MiB, TRUE);
    vp_memory_info_init(&mi);
    mi.nregions = VP_MAX_REGIONS;
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
        mi.regions[i] = (struct vp_region){ .gpa = 16 * MiB * i, .size = 4096,
                                            .mmap_offset = 4096ULL * i, .fd = fd };
    expect_mem_ok(&mi, 0);
    mi.regions[63].gpa = 4095;
    expect_mem_error(&mi, 0, "region 63 [0xfff, +0x1000) overlaps region 0");
    close(fd);
    vp_assert_fds(before);
}

static void test_mem_file_bounds(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    good_mem(&mi);
    /* One byte past the end of the 4 MiB file. */
    mi.regions[1].size = 3 * MiB + 1;
    expect_mem_error(&mi, 0, "region 1: mmap_offset 0x100000 + size 0x300001 past the end "
                             "of its file (0x400000 bytes)");
    mi.regions[1].size = 2 * MiB;
    mi.regions[1].mmap_offset = 4 * MiB;
    expect_mem_error(&mi, 0, "past the end of its file");
    /* Past the end is rejected even when unsealed files are allowed. */
    expect_mem_error(&mi, VP_VALIDATE_ALLOW_UNSEALED, "past the end of its file");
    mi.regions[1].mmap_offset = MiB;
    /* An empty file. */
    int empty = vp_test_memfd("empty", 0, TRUE);
    int keep = mi.regions[0].fd;
    mi.regions[0].fd = empty;
    expect_mem_error(&mi, 0, "region 0: mmap_offset 0x0 + size 0x100000 past the end of its "
                             "file (0x0 bytes)");
    mi.regions[0].fd = keep;
    close(empty);
    vp_memory_info_close_fds(&mi);
    vp_assert_fds(before);
}

static void test_mem_seals(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    good_mem(&mi);

    /* An unsealed memfd. */
    int unsealed = vp_test_memfd("unsealed", 4 * MiB, FALSE);
    int keep = mi.regions[1].fd;
    mi.regions[1].fd = unsealed;
    expect_mem_error(&mi, 0, "region 1: file not sealed against shrinking (F_SEAL_SHRINK)");
    expect_mem_ok(&mi, VP_VALIDATE_ALLOW_UNSEALED);
    /* Sealed against growing only: still unsealed for our purpose. */
    g_assert_cmpint(fcntl(unsealed, F_ADD_SEALS, F_SEAL_GROW), ==, 0);
    expect_mem_error(&mi, 0, "not sealed against shrinking");
    /* F_SEAL_SHRINK alone is enough. */
    g_assert_cmpint(fcntl(unsealed, F_ADD_SEALS, F_SEAL_SHRINK), ==, 0);
    expect_mem_ok(&mi, 0);
    close(unsealed);

    /* A plain file (no seals at all: F_GET_SEALS fails with EINVAL). */
    char path[] = "/tmp/vp-test-validate-XXXXXX";
    int plain = mkstemp(path);
    g_assert_cmpint(plain, >=, 0);
    unlink(path);
    g_assert_cmpint(ftruncate(plain, 4 * MiB), ==, 0);
    mi.regions[1].fd = plain;
    if (fcntl(plain, F_GET_SEALS) < 0) {
        expect_mem_error(&mi, 0, "region 1: file cannot be sealed against shrinking "
                                 "(not a memfd)");
    } else {
        /* /tmp on tmpfs: shmem files report F_SEAL_SEAL only. */
        expect_mem_error(&mi, 0, "region 1: file not sealed against shrinking");
    }
    expect_mem_ok(&mi, VP_VALIDATE_ALLOW_UNSEALED);
    close(plain);

    mi.regions[1].fd = keep;
    vp_memory_info_close_fds(&mi);
    vp_assert_fds(before);
}

static void test_mem_fd_kinds(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    good_mem(&mi);
    int keep = mi.regions[0].fd;

    int p[2];
    g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
    mi.regions[0].fd = p[0];
    expect_mem_error(&mi, VP_VALIDATE_ALLOW_UNSEALED,
                     "region 0: fd is a pipe, not a regular file or memfd");
    close(p[0]);
    close(p[1]);

    int sv[2];
    vp_test_socketpair(sv);
    mi.regions[0].fd = sv[0];
    expect_mem_error(&mi, VP_VALIDATE_ALLOW_UNSEALED, "region 0: fd is a socket");
    close(sv[0]);
    close(sv[1]);

    int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    g_assert_cmpint(dir, >=, 0);
    mi.regions[0].fd = dir;
    expect_mem_error(&mi, VP_VALIDATE_ALLOW_UNSEALED, "region 0: fd is a directory");
    close(dir);

    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    g_assert_cmpint(null, >=, 0);
    mi.regions[0].fd = null;
    expect_mem_error(&mi, VP_VALIDATE_ALLOW_UNSEALED, "region 0: fd is a character device");
    close(null);

    /* ADD without an fd; an fd number that is not open. */
    mi.regions[0].fd = -1;
    expect_mem_error(&mi, 0, "region 0: ADD without an fd");
    mi.regions[0].fd = 1000;
    g_assert_cmpint(fcntl(1000, F_GETFD), ==, -1);
    expect_mem_error(&mi, 0, "region 0: fstat of its fd failed");

    mi.regions[0].fd = keep;
    vp_memory_info_close_fds(&mi);
    vp_assert_fds(before);
}

static void test_mem_del(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    mi.op = VP_OP_DEL;
    mi.nregions = 2;
    mi.regions[0] = (struct vp_region){ .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = -1 };
    mi.regions[1] = (struct vp_region){ .gpa = 8 * MiB, .size = MiB, .mmap_offset = 0,
                                        .fd = -1 };
    /* No fds needed, no file checks. */
    expect_mem_ok(&mi, 0);

    mi.regions[1].size = 0;
    expect_mem_error(&mi, 0, "region 1: zero size");
    mi.regions[1].size = MiB;
    mi.regions[1].gpa = UINT64_MAX;
    expect_mem_error(&mi, 0, "region 1: guest-physical address 0xffffffffffffffff");
    mi.regions[1].gpa = 8 * MiB;
    mi.regions[1].mmap_offset = UINT64_MAX - 1;
    expect_mem_error(&mi, 0, "region 1: mmap_offset");
    mi.regions[1].mmap_offset = 0;
    mi.nregions = 0;
    expect_mem_error(&mi, 0, "memory info DEL: 0 regions");
    mi.nregions = 2;

    int fd = vp_test_memfd("del", MiB, TRUE);
    mi.regions[0].fd = fd;
    expect_mem_error(&mi, 0, "region 0: DEL carries an fd");
    close(fd);
    vp_assert_fds(before);
}

/* ---- vp_validate_no_overlap ---- */

static void expect_no_overlap(const struct vp_region *a, unsigned na,
                              const struct vp_region *b, unsigned nb, const char *substr)
{
    vp_error err = { "" };
    int r = vp_validate_no_overlap(a, na, b, nb, &err);
    if (!substr) {
        if (r != 0)
            g_error("vp_validate_no_overlap: %d %s", r, err.msg);
    } else {
        assert_err(r, &err, substr);
    }
}

static void test_no_overlap(void)
{
    struct vp_region a[3] = {
        { .gpa = 0, .size = 0x1000, .fd = -1 },
        { .gpa = 0x10000, .size = 0x10000, .fd = -1 },
        { .gpa = 0x100000000ULL, .size = 0x40000000, .fd = -1 },
    };
    struct vp_region b[2] = {
        { .gpa = 0x1000, .size = 0xf000, .fd = -1 },       /* exactly between a0 and a1 */
        { .gpa = 0x20000, .size = 0x1000, .fd = -1 },      /* right after a1 */
    };
    expect_no_overlap(a, 3, b, 2, NULL);
    expect_no_overlap(NULL, 0, a, 3, NULL);
    expect_no_overlap(a, 3, NULL, 0, NULL);

    /* b overlaps an existing region. */
    b[1].gpa = 0x1ffff;
    expect_no_overlap(a, 3, b, 2, "region 1 [0x1ffff, +0x1000) overlaps existing region 1 "
                                  "[0x10000, +0x10000)");
    b[1].gpa = 0x13fffffffULL;
    expect_no_overlap(a, 3, b, 2, "overlaps existing region 2");
    /* b's regions overlap each other. */
    b[1].gpa = 0x2000;
    expect_no_overlap(a, 3, b, 2, "region 1 [0x2000, +0x1000) overlaps region 0 "
                                  "[0x1000, +0xf000)");
    /* b covering all of a. */
    struct vp_region big = { .gpa = 0, .size = UINT64_MAX, .fd = -1 };
    expect_no_overlap(a, 3, &big, 1, "overlaps existing region 0");
    /* An existing region that would wrap must not fool the check; a new one that
     * would is refused as such (the memory table's contract). */
    struct vp_region wrap = { .gpa = UINT64_MAX - 0xfff, .size = 0x2000, .fd = -1 };
    struct vp_region top = { .gpa = UINT64_MAX - 0x7ff, .size = 0x10, .fd = -1 };
    expect_no_overlap(&wrap, 1, &top, 1, "overlaps existing region 0");
    expect_no_overlap(&top, 1, &wrap, 1, "region 0: guest-physical address "
                                         "0xfffffffffffff000 + size 0x2000 overflows");
    /* An existing zero-size region overlaps nothing; a new one is refused. */
    struct vp_region zero = { .gpa = 0x800, .size = 0, .fd = -1 }; /* inside a[0] */
    expect_no_overlap(&zero, 1, a, 3, NULL);
    expect_no_overlap(a, 1, &zero, 1, "region 0: zero size");
}

/* ---- device info ---- */

static void good_dev(struct vp_device_info *di)
{
    vp_device_info_init(di);
    di->op = VP_OP_ADD;
    di->device_type = VP_DEV_NET;
    di->device_id = 1;
    di->nvirtqs = 2;
    for (unsigned i = 0; i < 2; i++) {
        struct vp_virtq *q = &di->virtqs[i];
        q->index = i;
        q->num = 256;
        q->desc = 0x100000 + 0x10000 * i;
        q->avail = q->desc + 0x1000;
        q->used = q->desc + 0x2000;
    }
}

static void expect_dev_error(const struct vp_device_info *di, const char *substr)
{
    vp_error err = { "" };
    assert_err(vp_validate_device_info(di, &err), &err, substr);
}

static void expect_dev_ok(const struct vp_device_info *di)
{
    vp_error err = { "" };
    int r = vp_validate_device_info(di, &err);
    if (r != 0)
        g_error("vp_validate_device_info: %d %s", r, err.msg);
}

static void test_dev_good(void)
{
    struct vp_device_info di;
    good_dev(&di);
    expect_dev_ok(&di);
    static const uint32_t types[] = { VP_DEV_NET, VP_DEV_BLK, VP_DEV_CONSOLE,
                                      VP_DEV_ENTROPY, VP_DEV_BALLOON, VP_DEV_SCSI };
    for (unsigned i = 0; i < G_N_ELEMENTS(types); i++) {
        di.device_type = types[i];
        expect_dev_ok(&di);
    }
    /* Extremes of num: 1 and 32768 (rings of 512 KiB fit before the next queue). */
    di.virtqs[0].num = 1;
    di.virtqs[1].num = VP_MAX_VRING_NUM;
    expect_dev_ok(&di);
    /* Minimal alignment. */
    di.virtqs[0].desc = 0x10;
    di.virtqs[0].avail = 0x2;
    di.virtqs[0].used = 0x4;
    expect_dev_ok(&di);
    /* 64 virtqueues. */
    good_dev(&di);
    di.nvirtqs = VP_MAX_VIRTQS;
    for (unsigned i = 0; i < VP_MAX_VIRTQS; i++)
        di.virtqs[i] = (struct vp_virtq){ .index = 63 - i, .num = 64, .desc = 0x1000,
                                          .avail = 0x2000, .used = 0x3000,
                                          .kick_fd = -1, .call_fd = -1 };
    expect_dev_ok(&di);
}

static void test_dev_type_op_count(void)
{
    struct vp_device_info di;
    good_dev(&di);
    static const uint32_t bad_types[] = { 0, 6, 7, 9, 0xffffffffu };
    for (unsigned i = 0; i < G_N_ELEMENTS(bad_types); i++) {
        di.device_type = bad_types[i];
        char want[64];
        snprintf(want, sizeof(want), "unknown device type %u", bad_types[i]);
        expect_dev_error(&di, want);
    }
    di.device_type = VP_DEV_NET;
    di.op = 2;
    expect_dev_error(&di, "device info: unknown op 2");
    di.op = VP_OP_ADD;
    di.nvirtqs = 0;
    expect_dev_error(&di, "device info ADD: 0 virtqueues, need 1..64");
    di.nvirtqs = VP_MAX_VIRTQS + 1;
    expect_dev_error(&di, "65 virtqueues");
}

static void test_dev_del(void)
{
    struct vp_device_info di;
    vp_device_info_init(&di);
    di.op = VP_OP_DEL;
    di.device_type = VP_DEV_NET;
    di.device_id = 5;
    expect_dev_ok(&di);
    di.nvirtqs = 1;
    expect_dev_error(&di, "device info DEL: 1 virtqueues, expected none");
    di.nvirtqs = 0;
    di.device_type = 0;
    expect_dev_error(&di, "unknown device type 0");
}

static void test_dev_queues(void)
{
    struct vp_device_info di;

    good_dev(&di);
    di.virtqs[1].index = 0;
    expect_dev_error(&di, "virtqueue 1: index 0 already used by virtqueue 0");

    static const uint32_t bad_nums[] = { 0, 3, 255, 257, 65536, 0x80000000u, 0xffffffffu };
    for (unsigned i = 0; i < G_N_ELEMENTS(bad_nums); i++) {
        good_dev(&di);
        di.virtqs[1].num = bad_nums[i];
        char want[80];
        snprintf(want, sizeof(want), "virtqueue 1: num %u is not a power of two in 1..32768",
                 bad_nums[i]);
        expect_dev_error(&di, want);
    }

    /* Zero addresses. */
    good_dev(&di);
    di.virtqs[0].desc = 0;
    expect_dev_error(&di, "virtqueue 0: desc address is zero");
    good_dev(&di);
    di.virtqs[1].avail = 0;
    expect_dev_error(&di, "virtqueue 1: avail address is zero");
    good_dev(&di);
    di.virtqs[1].used = 0;
    expect_dev_error(&di, "virtqueue 1: used address is zero");

    /* Misalignment: desc 16, avail 2, used 4. */
    good_dev(&di);
    di.virtqs[0].desc = 0x100008;
    expect_dev_error(&di, "virtqueue 0: desc address 0x100008 not aligned to 16 bytes");
    good_dev(&di);
    di.virtqs[0].avail = 0x101001;
    expect_dev_error(&di, "virtqueue 0: avail address 0x101001 not aligned to 2 bytes");
    good_dev(&di);
    di.virtqs[0].used = 0x102002;
    expect_dev_error(&di, "virtqueue 0: used address 0x102002 not aligned to 4 bytes");

    /* Rings running off the top of the address space. */
    good_dev(&di);
    di.virtqs[0].desc = 0xfffffffffffff000ULL; /* 256 * 16 = 4 KiB: ends at 2^64 */
    expect_dev_error(&di, "virtqueue 0: desc ring at 0xfffffffffffff000 + 0x1000 bytes overflows");
    di.virtqs[0].desc = 0xffffffffffffe000ULL; /* fits */
    expect_dev_ok(&di);
    good_dev(&di);
    di.virtqs[1].avail = 0xfffffffffffffe00ULL; /* 6 + 2 * 256 = 518 bytes > 512 */
    expect_dev_error(&di, "virtqueue 1: avail ring at 0xfffffffffffffe00 + 0x206 bytes overflows");
    good_dev(&di);
    di.virtqs[1].num = VP_MAX_VRING_NUM;
    di.virtqs[1].used = 0xfffffffffffc0000ULL; /* 6 + 8 * 32768 > 256 KiB */
    expect_dev_error(&di, "virtqueue 1: used ring at 0xfffffffffffc0000 + 0x40006 bytes overflows");
    di.virtqs[1].used = 0xfffffffffffb0000ULL;
    expect_dev_ok(&di);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/validate/mem/good", test_mem_good);
    g_test_add_func("/validate/mem/counts-op", test_mem_counts_and_op);
    g_test_add_func("/validate/mem/sizes-overflow", test_mem_sizes_and_overflow);
    g_test_add_func("/validate/mem/overlap", test_mem_overlap);
    g_test_add_func("/validate/mem/file-bounds", test_mem_file_bounds);
    g_test_add_func("/validate/mem/seals", test_mem_seals);
    g_test_add_func("/validate/mem/fd-kinds", test_mem_fd_kinds);
    g_test_add_func("/validate/mem/del", test_mem_del);
    g_test_add_func("/validate/no-overlap", test_no_overlap);
    g_test_add_func("/validate/dev/good", test_dev_good);
    g_test_add_func("/validate/dev/type-op-count", test_dev_type_op_count);
    g_test_add_func("/validate/dev/del", test_dev_del);
    g_test_add_func("/validate/dev/queues", test_dev_queues);
    return g_test_run();
}
