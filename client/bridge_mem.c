/*
 * bridge_mem.c - the bridge's region sets (bridge_priv.h): the frontend's memory
 * table as the device VM may get it, the mirror of what the server holds, the used
 * index read from the frontend's memory, and the diagnosis of a refused memory file.
 *
 * Security model: regions come from the vhost-user core, which checked them; a
 * region that does not fit the table is dropped with a log line. From the
 * frontend's memory one 2-byte field is read (pread at an offset inside the region,
 * bounds from the table); any value is safe (see bridge.c). Each region's fd is a
 * dup owned by its set, closed on removal.
 */
#include "bridge_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vp_wire.h"

/* ---- Memory: the frontend's table and the server's mirror ---- */

int br_file_identity(int fd, dev_t *dev, ino_t *ino, uint64_t *size)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return -1;
    *dev = st.st_dev;
    *ino = st.st_ino;
    if (size)
        *size = (uint64_t)st.st_size;
    return 0;
}

struct br_file br_no_file(void)
{
    return (struct br_file){ -1, 0, 0 };
}

void br_rs_init(struct br_regions *s)
{
    vp_mt_init(&s->t, VP_MAX_REGIONS);
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
        s->f[i] = br_no_file();
}

int br_rs_find(const struct br_regions *s, uint64_t gpa)
{
    return vp_mt_find(&s->t, gpa);
}

static void br_rs_remove_at(struct br_regions *s, unsigned i)
{
    vp_close_fd(&s->f[i].fd);
    vp_mt_remove_at(&s->t, i);
    memmove(&s->f[i], &s->f[i + 1], (s->t.n - i) * sizeof(s->f[0]));
    s->f[s->t.n] = br_no_file();
}

void br_rs_remove(struct br_regions *s, uint64_t gpa)
{
    int i = br_rs_find(s, gpa);
    if (i >= 0)
        br_rs_remove_at(s, (unsigned)i);
}

void br_rs_clear(struct br_regions *s)
{
    while (s->t.n)
        br_rs_remove_at(s, s->t.n - 1);
}

/** Put region @r with its file @f (f->fd is taken, set to -1) into @s, replacing one
 *  at the same gpa. A region that does not fit the table (overlap, full) is logged
 *  and dropped: the vhost-user core checked the frontend's table already. */
void br_rs_put(struct br *br, struct br_regions *s, const struct vp_region *r,
                      struct br_file *f)
{
    br_rs_remove(s, r->gpa);
    struct vp_mt_region m = { r->gpa, r->size, r->gpa, r->mmap_offset, 0 };
    vp_error err = { "" };
    if (vp_mt_add(&s->t, &m, 1, 0, NULL, &err) < 0) {
        br_log(br, BR_LOG_WARNING, "region gpa 0x%" PRIx64 ": %s", r->gpa, err.msg);
        vp_close_fd(&f->fd);
        return;
    }
    s->f[s->t.n - 1] = *f;
    f->fd = -1;
}

/** Entry @i of @s as a region (its fd, -1 in the mirror). */
struct vp_region br_rs_region(const struct br_regions *s, unsigned i)
{
    const struct vp_mt_region *m = &s->t.r[i];
    return (struct vp_region){ m->gpa, m->size, m->file_offset, s->f[i].fd };
}

/** Does @s hold exactly @r (same gpa, size, offset, file)? */
bool br_rs_same(const struct br_regions *s, const struct vp_region *r,
                       const struct br_file *f)
{
    int i = br_rs_find(s, r->gpa);
    if (i < 0)
        return false;
    const struct vp_mt_region *m = &s->t.r[i];
    return m->size == r->size && m->file_offset == r->mmap_offset &&
           s->f[i].st_dev == f->st_dev && s->f[i].st_ino == f->st_ino;
}

/** The server holds region @r of the frontend's table too (identity only). */
void br_mirror_put(struct br *br, const struct vp_region *r, const struct br_file *f)
{
    struct br_file id = { -1, f->st_dev, f->st_ino };
    br_rs_put(br, &br->mirror, r, &id);
}

/** MEMORY_INFO(DEL) of every region the server holds that the frontend's table does
 *  not (all of them with @all). Fire and forget: the ACK is only logged. */
void br_mirror_del_stale(struct br *br, bool all)
{
    unsigned n = 0;
    for (unsigned i = 0; i < br->mirror.t.n;) {
        struct vp_region m = br_rs_region(&br->mirror, i);
        if (!all && br_rs_same(&br->mem, &m, &br->mirror.f[i])) {
            i++;
            continue;
        }
        br->regions[n++] = m;
        br_rs_remove_at(&br->mirror, i);
    }
    if (n == 0 || !br->link_up)
        return;
    br_log(br, BR_LOG_INFO, "MEMORY_INFO(DEL) of %u region(s)", n);
    br_emit(br, &(struct br_action){ .type = BR_ACT_SEND_MEMORY, .token = br_new_token(br),
                                        .op = VP_OP_DEL, .nregions = n, .regions = br->regions });
}

/**
 * The 2-byte used index of the ring whose used ring is at guest-physical @used, read
 * from the memory file of the region holding it. Returns 0, or -1 when no region of
 * the frontend's table holds it or the read fails.
 */
int br_read_used_idx(const struct br *br, uint64_t used, uint16_t *idx)
{
    uint64_t target;
    int i = vp_mt_lookup(&br->mem.t, used);
    if (i < 0 || vp_mt_translate(&br->mem.t, used, 4, &target) < 4)
        return -1;
    uint64_t off = br->mem.t.r[i].file_offset + (used - br->mem.t.r[i].gpa) + 2;
    uint8_t b[2];
    ssize_t n;
    do {
        n = pread(br->mem.f[i].fd, b, 2, (off_t)off);
    } while (n < 0 && errno == EINTR);
    if (n != 2)
        return -1;
    *idx = vp_get_le16(b);
    return 0;
}

/* ---- Diagnosis of a refused memory file (cause and fix) ---- */

/** One sentence naming what to change so that the device VM takes the region's file
 *  (@fd: the frontend's memory file), or "" when nothing we know of explains it. */
void br_refusal_fix(int fd, char *out, size_t len)
{
    struct stat st;
    out[0] = '\0';
    if (fd < 0 || fstat(fd, &st) < 0)
        return;
    uint64_t size = (uint64_t)st.st_size;
    int seals = fcntl(fd, F_GET_SEALS);
    if (size % 4096)
        snprintf(out, len, "; fix: its memory file is %" PRIu64 " bytes, not a multiple of "
                 "4 KiB pages, so no part of it can become a BAR: give the frontend memory of "
                 "a power-of-two size (DPDK: -m 512; QEMU: size=512M)", size);
    else if (size & (size - 1))
        snprintf(out, len, "; fix: its memory file is %" PRIu64 " bytes, not a power of two, "
                 "and a device VM on QEMU before 8.1 maps only whole files as BARs: run the "
                 "device VM on QEMU 8.1 or later (the file is then split into power-of-two "
                 "windows), or give the frontend memory of a power-of-two size (DPDK: -m 512, "
                 "not -m 500; QEMU: size=512M)", size);
    else if (seals < 0 || !(seals & F_SEAL_SHRINK))
        snprintf(out, len, "; fix: its memory file is not sealed against shrinking (DPDK "
                 "and hugetlbfs memory never is): start vhost-pci-server with "
                 "--allow-unsealed");
}
