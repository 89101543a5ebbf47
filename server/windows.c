/*
 * windows.c - memory windows and the region table of one device (windows.h).
 */
#include "windows.h"

#include <string.h>
#include <sys/types.h>
#include <unistd.h>

void srv_mem_init(struct srv_memory *m)
{
    memset(m, 0, sizeof(*m));
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        m->wins[i].fd = -1;
    vp_mt_init(&m->table, VP_MAX_REGIONS);
}

void srv_mem_close_fds(struct srv_memory *m)
{
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        vp_close_fd(&m->wins[i].fd);
}

void srv_mem_remove_region(struct srv_memory *m, uint64_t gpa)
{
    int i = vp_mt_find(&m->table, gpa);
    if (i < 0)
        return;
    struct srv_window *w = &m->wins[m->table.r[i].slot];
    if (w->refs)
        w->refs--;
    vp_mt_remove_at(&m->table, (unsigned)i);
}

void srv_mem_insert(struct srv_memory *m, uint64_t gpa, uint64_t size, uint64_t mmap_offset,
                    unsigned win)
{
    m->table.r[m->table.n++] = (struct vp_mt_region){
        .gpa = gpa, .size = size, .target = m->wins[win].bar_offset + mmap_offset,
        .file_offset = mmap_offset, .slot = win };
    m->wins[win].refs++;
}

bool srv_mem_read_le16(const struct srv_memory *m, uint64_t gpa, uint16_t *out)
{
    uint64_t bar_offset;
    if (vp_mt_translate(&m->table, gpa, 2, &bar_offset) != 2)
        return false;
    const struct vp_mt_region *r = &m->table.r[vp_mt_lookup(&m->table, gpa)];
    int fd = m->wins[r->slot].fd;
    uint64_t off = r->file_offset + (gpa - r->gpa);
    uint8_t b[2];
    if (fd < 0 || off > (uint64_t)INT64_MAX || pread(fd, b, 2, (off_t)off) != 2)
        return false;
    *out = vp_get_le16(b);
    return true;
}

int srv_mem_find_window(const struct srv_memory *m, const struct srv_file_id *file)
{
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        const struct srv_window *w = &m->wins[i];
        if (w->used && w->file.dev == file->dev && w->file.ino == file->ino)
            return i;
    }
    return -1;
}

int srv_mem_free_slot(const struct srv_memory *m)
{
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        if (!m->wins[i].used)
            return i;
    return -1;
}

bool srv_mem_any_window(const struct srv_memory *m)
{
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        if (m->wins[i].used)
            return true;
    return false;
}

unsigned srv_mem_plugged(const struct srv_memory *m, struct srv_ca_window *out)
{
    unsigned n = 0;
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        const struct srv_window *w = &m->wins[i];
        if (!w->used || w->state != WIN_PLUGGED)
            continue;
        for (unsigned k = 0; k < w->npieces && n < VP_MAX_WINDOWS; k++)
            out[n++] = (struct srv_ca_window){ w->piece[k].devfn,
                                               w->bar_offset + w->piece[k].at.file_offset,
                                               w->piece[k].at.size };
    }
    return n;
}

unsigned srv_mem_used_windows(const struct srv_memory *m, struct srv_win_pos *old, int *map)
{
    unsigned n = 0;
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        if (!m->wins[i].used)
            continue;
        old[n] = (struct srv_win_pos){ m->wins[i].file, m->wins[i].bar_offset };
        map[n++] = i;
    }
    return n;
}

int srv_mem_take_new_fd(struct vp_memory_info *mi, const struct srv_add_plan *plan,
                        const unsigned *keep, unsigned nkeep, unsigned n)
{
    int fd = -1;
    for (unsigned k = 0; k < nkeep && fd < 0; k++) {
        if (plan->region_win[k] == -1 - (int)n) {
            fd = mi->regions[keep[k]].fd;
            mi->regions[keep[k]].fd = -1;  /* handed to the window */
        }
    }
    return fd;
}

void srv_mem_add_kept(struct srv_memory *m, const struct vp_memory_info *mi,
                      const struct srv_add_plan *plan, const unsigned *keep, unsigned nkeep,
                      const int *oldidx, const int *newidx, uint64_t *added, unsigned *nadded)
{
    for (unsigned k = 0; k < nkeep; k++) {
        const struct vp_region *r = &mi->regions[keep[k]];
        int w = plan->region_win[k] >= 0 ? oldidx[plan->region_win[k]]
                                         : newidx[-1 - plan->region_win[k]];
        srv_mem_insert(m, r->gpa, r->size, r->mmap_offset, (unsigned)w);
        if (added)
            added[(*nadded)++] = r->gpa;
    }
}
