/*
 * ctrlarea.h - the server's side of a control area (DESIGN section 3,
 * protocol/vp_ctrlarea.h): the sealed memfd, its mapping, the header the server
 * writes (identity, logical BAR, window table, queue layout) and the fixed offsets of
 * the two controlq rings and of the buffer pool inside it.
 *
 * Security model: the area is shared with the device VM's guest driver, which may
 * rewrite any byte at any time. This file only writes the server's fields and hands
 * out ring memory; the controlq device side (cq_dev.c) reads the driver's fields once
 * and checks every descriptor against the pool with srv_ca_in_pool().
 *
 * libc + GLib-free; main thread.
 */
#ifndef VP_SERVER_CTRLAREA_H
#define VP_SERVER_CTRLAREA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vp_common.h"
#include "vp_ctrlarea.h"
#include "vp_vring.h"
#include "vp_wire.h"

/** A control area owned by the server. */
struct srv_ctrlarea {
    int fd;               /* memfd, VP_CA_SIZE bytes, sealed (shrink, grow, seal); -1 */
    uint8_t *map;         /* shared mapping, NULL when closed */
    size_t size;          /* bytes */
    uint32_t generation;  /* last generation written (bumped per window table) */
};

/** One row of the window table as the guest driver reads it. */
struct srv_ca_window {
    uint32_t devfn;       /* the window's function */
    uint64_t bar_offset;  /* bytes from the logical BAR's start */
    uint64_t size;        /* bytes (the window piece: the whole file, or one power-of-two part) */
};

/**
 * Create the memfd, map it, seal it and write the header for peer @uuid with an
 * empty window table and bar_size 0. Returns 0, or -errno with a reason in @err
 * (*@ca then holds nothing: srv_ca_close() is still safe).
 */
int srv_ca_create(struct srv_ctrlarea *ca, const uint8_t uuid[VP_UUID_LEN], vp_error *err);

/** Unmap and close (idempotent; a never-created area has fd -1, map NULL). */
void srv_ca_close(struct srv_ctrlarea *ca);

/** Write the logical BAR size (bytes) into the header (no-op when closed). */
void srv_ca_set_bar_size(struct srv_ctrlarea *ca, uint64_t bar_size);

/** Write @bar_size and the window table @w[0..n) (n <= VP_MAX_WINDOWS), then bump the
 *  generation the driver polls (after a release fence). No-op when closed. */
void srv_ca_write_windows(struct srv_ctrlarea *ca, uint64_t bar_size,
                          const struct srv_ca_window *w, unsigned n);

/** The ring memory of controlq queue @q (VP_CQ_RECEIVEQ or VP_CQ_TRANSMITQ). */
void srv_ca_ring(const struct srv_ctrlarea *ca, unsigned q, struct vp_vring_mem *m);

/** Does [addr, addr+len) (control-area offsets) lie inside the buffer pool?
 *  Overflow-proof. */
bool srv_ca_in_pool(uint64_t addr, uint64_t len);

#endif
