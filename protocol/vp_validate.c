/*
 * vp_validate.c - semantic validation of decoded MEMORY_INFO and DEVICE_INFO
 * payloads (DESIGN section 4 limits).
 *
 * Security model: the structs come from vp_decode_*(), i.e. from a peer that may be
 * hostile; only their counts are already known to be within the array sizes (and even
 * that is re-checked here). Every value is checked before anything maps memory or
 * rings from it:
 *   - sizes are nonzero and ranges cannot wrap: the end of each range is only ever
 *     computed after checking `start <= UINT64_MAX - size` (vp_span_ok);
 *   - guest-physical ranges do not overlap (the memory table's check, vp_memtable.h;
 *     n <= 64, so the O(n^2) pair check is fine); ring layouts are vp_ring_check's;
 *   - each region lies inside its file as fstat() sees it now, and the file cannot
 *     shrink later (memfd with F_SEAL_SHRINK): a shrink under a live mapping would
 *     SIGBUS whoever maps it (the device VM's QEMU). Plain files have no seals, so
 *     they are accepted only with VP_VALIDATE_ALLOW_UNSEALED;
 *   - fds that are not regular files (sockets, pipes, devices, directories) are
 *     rejected: mmap of them means something else entirely; kick and call fds must
 *     be eventfds (vp_validate_device_fds): whoever signals them writes into them.
 * Nothing here takes ownership of an fd or changes the structs.
 */
#include "vp_msg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vp_memtable.h"

static const char *fd_kind(mode_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFSOCK: return "a socket";
    case S_IFIFO: return "a pipe";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFDIR: return "a directory";
    case S_IFLNK: return "a symlink";
    default: return "not a regular file";
    }
}

/* The region's backing file: regular file or memfd, region inside it, sealed
 * against shrinking unless allowed. */
static int check_region_file(const struct vp_region *rg, unsigned i, unsigned flags,
                             vp_error *err)
{
    struct stat st;
    if (rg->fd < 0)
        return vp_fail(err, -EINVAL, "region %u: ADD without an fd", i);
    if (fstat(rg->fd, &st) < 0)
        return vp_fail(err, -EINVAL, "region %u: fstat of its fd failed: %s", i,
                       strerror(errno));
    if (!S_ISREG(st.st_mode))
        return vp_fail(err, -EINVAL, "region %u: fd is %s, not a regular file or memfd",
                       i, fd_kind(st.st_mode));
    uint64_t fsize = st.st_size > 0 ? (uint64_t)st.st_size : 0;
    if (!vp_range_ok(rg->mmap_offset, rg->size, fsize))
        return vp_fail(err, -EINVAL,
                       "region %u: mmap_offset 0x%llx + size 0x%llx past the end of "
                       "its file (0x%llx bytes)", i,
                       (unsigned long long)rg->mmap_offset, (unsigned long long)rg->size,
                       (unsigned long long)fsize);

    if (flags & VP_VALIDATE_ALLOW_UNSEALED)
        return 0;
    int seals = fcntl(rg->fd, F_GET_SEALS);
    if (seals < 0) {
        /* EINVAL: a file system without seals (a plain file): it can be truncated. */
        return vp_fail(err, -EINVAL,
                       "region %u: file cannot be sealed against shrinking (%s); "
                       "use a memfd with F_SEAL_SHRINK", i,
                       errno == EINVAL ? "not a memfd" : strerror(errno));
    }
    if (!(seals & F_SEAL_SHRINK))
        return vp_fail(err, -EINVAL,
                       "region %u: file not sealed against shrinking (F_SEAL_SHRINK)", i);
    return 0;
}

int vp_validate_memory_info(const struct vp_memory_info *mi, unsigned flags, vp_error *err)
{
    if (mi->op != VP_OP_ADD && mi->op != VP_OP_DEL)
        return vp_fail(err, -EINVAL, "memory info: unknown op %u", mi->op);
    const char *opn = mi->op == VP_OP_ADD ? "ADD" : "DEL";
    if (mi->nregions == 0 || mi->nregions > VP_MAX_REGIONS)
        return vp_fail(err, -EINVAL, "memory info %s: %u regions, need 1..%u", opn,
                       mi->nregions, VP_MAX_REGIONS);

    for (unsigned i = 0; i < mi->nregions; i++) {
        const struct vp_region *rg = &mi->regions[i];
        if (rg->size == 0)
            return vp_fail(err, -EINVAL, "region %u: zero size", i);
        if (!vp_span_ok(rg->gpa, rg->size))
            return vp_fail(err, -EINVAL,
                           "region %u: guest-physical address 0x%llx + size 0x%llx "
                           "overflows", i, (unsigned long long)rg->gpa,
                           (unsigned long long)rg->size);
        if (!vp_span_ok(rg->mmap_offset, rg->size))
            return vp_fail(err, -EINVAL,
                           "region %u: mmap_offset 0x%llx + size 0x%llx overflows", i,
                           (unsigned long long)rg->mmap_offset,
                           (unsigned long long)rg->size);
        if (mi->op == VP_OP_DEL && rg->fd >= 0)
            return vp_fail(err, -EINVAL, "region %u: DEL carries an fd", i);
    }
    if (mi->op == VP_OP_DEL)
        return 0;

    /* No two regions overlap in guest-physical space (the memory table's check). */
    struct vp_memtable empty;
    struct vp_mt_region add[VP_MAX_REGIONS];
    vp_mt_init(&empty, VP_MAX_REGIONS);
    for (unsigned i = 0; i < mi->nregions; i++)
        add[i] = (struct vp_mt_region){ .gpa = mi->regions[i].gpa, .size = mi->regions[i].size };
    int ret = vp_mt_check_add(&empty, add, mi->nregions, 0, NULL, err);
    if (ret < 0)
        return ret;
    for (unsigned i = 0; i < mi->nregions; i++) {
        ret = check_region_file(&mi->regions[i], i, flags, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

int vp_validate_no_overlap(const struct vp_region *a, unsigned na,
                           const struct vp_region *b, unsigned nb, vp_error *err)
{
    struct vp_mt_region ta[VP_MAX_REGIONS], tb[VP_MAX_REGIONS];
    if (na > VP_MAX_REGIONS || nb > VP_MAX_REGIONS)
        return vp_fail(err, -EINVAL, "more than %u regions", VP_MAX_REGIONS);
    for (unsigned i = 0; i < na; i++)
        ta[i] = (struct vp_mt_region){ .gpa = a[i].gpa, .size = a[i].size };
    for (unsigned i = 0; i < nb; i++)
        tb[i] = (struct vp_mt_region){ .gpa = b[i].gpa, .size = b[i].size };
    return vp_mt_check_regions(ta, na, tb, nb, 0, NULL, err);
}

/* What fd @fd is, for a reason: "an eventfd" when it is one (returns true). */
static bool fd_is_eventfd(int fd, char *what, size_t size)
{
    char path[64], link[128];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof(link) - 1);
    if (n < 0) {
        snprintf(what, size, "not an open fd (%s)", strerror(errno));
        return false;
    }
    link[n] = 0;
    if (strcmp(link, "anon_inode:[eventfd]") == 0) {
        snprintf(what, size, "an eventfd");
        return true;
    }
    struct stat st;
    if (strncmp(link, "anon_inode:", 11) == 0)
        snprintf(what, size, "%s", link + 11);  /* "[timerfd]", "[eventpoll]" ... */
    else if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode))
        snprintf(what, size, "%s", fd_kind(st.st_mode));
    else
        snprintf(what, size, "a file");
    return false;
}

int vp_validate_device_fds(const struct vp_device_info *di, vp_error *err)
{
    for (unsigned i = 0; i < di->nvirtqs && i < VP_MAX_VIRTQS; i++) {
        const int fds[2] = { di->virtqs[i].kick_fd, di->virtqs[i].call_fd };
        for (int k = 0; k < 2; k++) {
            char what[160];
            if (fds[k] >= 0 && !fd_is_eventfd(fds[k], what, sizeof(what)))
                return vp_fail(err, -EINVAL, "virtqueue %u: %s fd is %s, not an eventfd",
                               di->virtqs[i].index, k ? "call" : "kick", what);
        }
    }
    return 0;
}

int vp_validate_device_info(const struct vp_device_info *di, vp_error *err)
{
    if (!vp_device_type_valid(di->device_type))
        return vp_fail(err, -EINVAL, "device info: unknown device type %u",
                       di->device_type);
    if (di->op == VP_OP_DEL) {
        if (di->nvirtqs != 0)
            return vp_fail(err, -EINVAL, "device info DEL: %u virtqueues, expected none",
                           di->nvirtqs);
        return 0;
    }
    if (di->op != VP_OP_ADD)
        return vp_fail(err, -EINVAL, "device info: unknown op %u", di->op);
    if (di->nvirtqs == 0 || di->nvirtqs > VP_MAX_VIRTQS)
        return vp_fail(err, -EINVAL, "device info ADD: %u virtqueues, need 1..%u",
                       di->nvirtqs, VP_MAX_VIRTQS);

    for (unsigned i = 0; i < di->nvirtqs; i++) {
        const struct vp_virtq *q = &di->virtqs[i];
        for (unsigned j = 0; j < i; j++) {
            if (di->virtqs[j].index == q->index)
                return vp_fail(err, -EINVAL,
                               "virtqueue %u: index %u already used by virtqueue %u", i,
                               q->index, j);
        }
        const struct vp_ring_layout rl = { i, q->num, q->desc, q->avail, q->used };
        int ret = vp_ring_check(&rl, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}
