/*
 * vp_outq_glib.c - GLib adapter of the output queue (vp_outq_glib.h).
 */
#include "vp_outq_glib.h"

#include <glib-unix.h>

static gboolean on_writable(gint fd, GIOCondition cond, gpointer data)
{
    struct vp_outq_glib *g = data;
    (void)fd;
    (void)cond;
    int r = vp_outq_flush(&g->q);  /* drops the watch itself when done or failed */
    if (r < 0 && g->on_error)
        g->on_error(g->opaque, r);  /* may free @g: nothing after this */
    else if (r == 0 && vp_outq_idle(&g->q) && g->on_drained)
        g->on_drained(g->opaque);   /* likewise */
    return G_SOURCE_CONTINUE;  /* destroyed by want_writable(false) when finished */
}

static void want_writable(void *opaque, bool on)
{
    struct vp_outq_glib *g = opaque;
    if (on && !g->src) {
        g->src = g_unix_fd_source_new(g->q.fd, G_IO_OUT | G_IO_ERR | G_IO_HUP);
        g_source_set_callback(g->src, G_SOURCE_FUNC(on_writable), g, NULL);
        g_source_attach(g->src, g->ctx);
    } else if (!on && g->src) {
        g_source_destroy(g->src);
        g_source_unref(g->src);
        g->src = NULL;
    }
}

static void sent(void *opaque, uint64_t tag)
{
    struct vp_outq_glib *g = opaque;
    if (g->on_sent)
        g->on_sent(g->opaque, tag);
}

static const struct vp_outq_ops glib_ops = {
    .want_writable = want_writable,
    .sent = sent,
};

void vp_outq_glib_init(struct vp_outq_glib *g, GMainContext *ctx, int fd, size_t max_bytes,
                       void (*on_sent)(void *opaque, uint64_t tag),
                       void (*on_error)(void *opaque, int err), void *opaque)
{
    g->ctx = ctx ? g_main_context_ref(ctx) : g_main_context_ref_thread_default();
    g->src = NULL;
    g->on_error = on_error;
    g->on_sent = on_sent;
    g->on_drained = NULL;
    g->opaque = opaque;
    vp_outq_init(&g->q, fd, max_bytes, &glib_ops, g);
}

void vp_outq_glib_destroy(struct vp_outq_glib *g)
{
    if (!g->ctx)
        return;
    vp_outq_clear(&g->q);  /* drops the watch */
    g_main_context_unref(g->ctx);
    g->ctx = NULL;
}
