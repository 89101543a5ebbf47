/*
 * vp_outq_glib.h - the GLib adapter of vp_outq (vp_outq.h): the writable watch is a
 * GSource on the owner's GMainContext that flushes the queue; a send error found
 * there is reported through one callback.
 *
 * Main-loop thread of @ctx only.
 */
#ifndef VP_OUTQ_GLIB_H
#define VP_OUTQ_GLIB_H

#include <glib.h>

#include "vp_outq.h"

/** A queue with its GLib watch. */
struct vp_outq_glib {
    struct vp_outq q;                    /* push with vp_outq_push(&g->q, ...) */
    GMainContext *ctx;                   /* referenced */
    GSource *src;                        /* the writable watch, NULL when off */
    /** A send failed while flushing from the watch (@err: -errno); the queue is
     *  stuck with it. May free the owner (and this adapter). May be NULL. */
    void (*on_error)(void *opaque, int err);
    /** Message @tag went out (may be NULL). Must not free the owner: it runs
     *  inside the queue's own loop. */
    void (*on_sent)(void *opaque, uint64_t tag);
    /** The watch wrote the last queued byte. May free the owner. May be NULL. */
    void (*on_drained)(void *opaque);
    void *opaque;
};

/** Set up @g for socket @fd (borrowed) on @ctx (NULL: the thread default);
 *  on_drained is NULL (set it afterwards when wanted). */
void vp_outq_glib_init(struct vp_outq_glib *g, GMainContext *ctx, int fd, size_t max_bytes,
                       void (*on_sent)(void *opaque, uint64_t tag),
                       void (*on_error)(void *opaque, int err), void *opaque);

/** Drop the queued messages and the watch, release the context. */
void vp_outq_glib_destroy(struct vp_outq_glib *g);

#endif
