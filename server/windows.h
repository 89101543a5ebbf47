/*
 * windows.h - a vhost-pci device's memory (DESIGN section 3): its memory windows
 * (one ivshmem-plain function per peer memory file, placed in the logical BAR) and
 * the driver VM's regions (guest-physical ranges, each inside one window's file).
 *
 * Table operations only: no plugging, no controlq (device.c does those). Every fd a
 * window holds is owned by the table and closed when the window is dropped.
 *
 * Security model: regions and files come from a client that may be hostile; they
 * were validated (vp_validate_memory_info, srv_check_window_size) before they reach
 * the table, and every range test here is overflow-proof (vp_range_ok).
 * GLib-free; main thread.
 */
#ifndef VP_SERVER_WINDOWS_H
#define VP_SERVER_WINDOWS_H

#include <stdbool.h>
#include <stdint.h>

#include "ctrlarea.h"
#include "layout.h"
#include "vp_memtable.h"
#include "vp_msg.h"

enum srv_win_state { WIN_PLUGGING, WIN_PLUGGED };

/** State of one piece's function. */
enum srv_piece_state { PIECE_NONE, PIECE_PLUGGING, PIECE_PLUGGED };

/** One piece of a window: one ivshmem-plain function mapping part of the file. */
struct srv_win_piece {
    struct srv_piece at;                 /* file offset and size (layout.h) */
    uint32_t devfn;
    enum srv_piece_state state;
};

/** One memory window: one peer memory file, one ivshmem-plain function per piece
 *  (one piece when its size is a power of two; srv_file_pieces()). The window is
 *  WIN_PLUGGED once every piece is. */
struct srv_window {
    bool used;                           /* slot in use */
    enum srv_win_state state;
    struct srv_file_id file;
    uint64_t bar_offset;                 /* of the file's start (its first piece) in the
                                            logical BAR, aligned to srv_window_span() */
    unsigned npieces;
    struct srv_win_piece piece[VP_MAX_WINDOWS];
    int fd;                              /* the memory file (owned) */
    unsigned refs;                       /* regions using it */
};

/** A device's memory: logical BAR, windows, regions. A region of the table is a
 *  vp_mt_region with target = its logical-BAR offset, file_offset = mmap_offset,
 *  slot = the index of its window in wins[]. */
struct srv_memory {
    uint64_t bar_size;                   /* bytes; 0 until the first memory is placed */
    struct srv_window wins[VP_MAX_WINDOWS];
    struct vp_memtable table;            /* the driver VM's regions (protocol/vp_memtable.h) */
};

/** Empty table (every window fd -1). */
void srv_mem_init(struct srv_memory *m);
/** Close every window fd (the table is left empty of fds). */
void srv_mem_close_fds(struct srv_memory *m);

/** Remove the region starting at @gpa (if any), dropping its window reference. */
void srv_mem_remove_region(struct srv_memory *m, uint64_t gpa);
/** Enter region [gpa, +size) at @mmap_offset of window @win (its target computed from
 *  the window's bar_offset), taking a window reference. The caller checked room and
 *  overlap. */
void srv_mem_insert(struct srv_memory *m, uint64_t gpa, uint64_t size, uint64_t mmap_offset,
                    unsigned win);
/** Read the le16 at guest-physical @gpa from the window file behind it (pread).
 *  False when @gpa is not inside a region or the read fails. */
bool srv_mem_read_le16(const struct srv_memory *m, uint64_t gpa, uint16_t *out);

/** Index of the window of @file (same st_dev/st_ino), or -1. */
int srv_mem_find_window(const struct srv_memory *m, const struct srv_file_id *file);
/** A free window slot, or -1. */
int srv_mem_free_slot(const struct srv_memory *m);
/** Whether any window slot is in use. */
bool srv_mem_any_window(const struct srv_memory *m);
/** The plugged windows as the control area lists them, one entry per piece (at
 *  bar_offset + its file offset); returns how many (<= 32). */
unsigned srv_mem_plugged(const struct srv_memory *m, struct srv_ca_window *out);
/** The used windows as srv_plan_add() wants them: @old[k] and their slots @map[k].
 *  Returns how many. */
unsigned srv_mem_used_windows(const struct srv_memory *m, struct srv_win_pos *old, int *map);

/** The fd of the plan's new window @n: taken from the first kept region placed in it
 *  that still has one (the caller's window owns it from now on); -1 when none.
 *  @keep[0..nkeep) are the indexes in @mi of the regions the plan placed. */
int srv_mem_take_new_fd(struct vp_memory_info *mi, const struct srv_add_plan *plan,
                        const unsigned *keep, unsigned nkeep, unsigned n);

/** Enter the kept regions of @mi into @m: a region the plan puts in old window i goes
 *  into slot @oldidx[i], one in new window n into slot @newidx[n]. With @added, each
 *  region's gpa is appended there (*@nadded counts them) for a rollback. */
void srv_mem_add_kept(struct srv_memory *m, const struct vp_memory_info *mi,
                      const struct srv_add_plan *plan, const unsigned *keep, unsigned nkeep,
                      const int *oldidx, const int *newidx, uint64_t *added, unsigned *nadded);

#endif
