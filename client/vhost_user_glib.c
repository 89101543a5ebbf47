/*
 * vhost_user_glib.c - GLib adapter for the vhost-user backend core: a unix fd source
 * on the core's socket while it wants input, another while replies wait for the socket
 * to be writable, and g_log for its messages. Parses no peer input itself (the core
 * does, see vhost_user.c).
 */
#include "vhost_user_glib.h"

#include <glib-unix.h>

struct vu_glib {
    struct vu_dev *dev;
    GMainContext *ctx;
    GSource *source;      /* set while the core wants input */
    GSource *osource;     /* set while replies wait for a writable socket */
};

static gboolean vu_glib_ready(gint fd, GIOCondition cond, gpointer data)
{
    (void)fd;
    (void)cond;
    struct vu_glib *g = data;
    /* The core removes this source through the watch hook when it stops wanting
     * input, and may free g from inside a callback: do not touch g afterwards. */
    vu_dev_handle_input(g->dev);
    return G_SOURCE_CONTINUE;
}

static gboolean vu_glib_writable(gint fd, GIOCondition cond, gpointer data)
{
    (void)fd;
    (void)cond;
    struct vu_glib *g = data;
    /* The core turns this source off through the output hook once all is written,
     * and may free g when the write fails: do not touch g afterwards. */
    vu_dev_flush_output(g->dev);
    return G_SOURCE_CONTINUE;
}

static void vu_glib_output_watch(struct vu_dev *dev, bool want_output, void *data)
{
    struct vu_glib *g = data;
    if (!want_output) {
        if (g->osource) {
            g_source_destroy(g->osource);
            g_source_unref(g->osource);
            g->osource = NULL;
        }
        return;
    }
    if (g->osource || vu_dev_fd(dev) < 0)
        return;
    g->osource = g_unix_fd_source_new(vu_dev_fd(dev), G_IO_OUT | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(g->osource, G_SOURCE_FUNC(vu_glib_writable), g, NULL);
    g_source_attach(g->osource, g->ctx);
}

static void vu_glib_unwatch(struct vu_glib *g)
{
    vu_glib_output_watch(g->dev, false, g);
    if (g->source) {
        g_source_destroy(g->source);
        g_source_unref(g->source);
        g->source = NULL;
    }
}

static void vu_glib_watch(struct vu_dev *dev, bool want_input, void *data)
{
    struct vu_glib *g = data;
    if (!want_input) {
        vu_glib_unwatch(g);
        return;
    }
    if (g->source || vu_dev_fd(dev) < 0)
        return;
    g->source = g_unix_fd_source_new(vu_dev_fd(dev), G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(g->source, G_SOURCE_FUNC(vu_glib_ready), g, NULL);
    g_source_attach(g->source, g->ctx);
}

static void vu_glib_log(struct vu_dev *dev, enum vu_log_level level, const char *msg,
                        void *data)
{
    (void)dev;
    (void)data;
    switch (level) {
    case VU_LOG_DEBUG:
        g_log("vhost-user", G_LOG_LEVEL_DEBUG, "%s", msg);
        break;
    case VU_LOG_INFO:
        g_log("vhost-user", G_LOG_LEVEL_INFO, "%s", msg);
        break;
    default:
        /* Peer errors are not programming errors: message level, never fatal. */
        g_log("vhost-user", G_LOG_LEVEL_MESSAGE, "%s", msg);
        break;
    }
}

struct vu_glib *vu_glib_new(int sock, const struct vu_dev_config *cfg,
                            const struct vu_dev_ops *ops, void *opaque,
                            GMainContext *ctx, vp_error *err)
{
    struct vu_dev *dev = vu_dev_new(sock, cfg, ops, opaque, err);
    if (!dev)
        return NULL;
    struct vu_glib *g = g_new0(struct vu_glib, 1);
    g->dev = dev;
    g->ctx = ctx ? g_main_context_ref(ctx) : NULL;
    vu_dev_set_log(dev, vu_glib_log, g);
    vu_dev_set_watch(dev, vu_glib_watch, g);
    vu_dev_set_output_watch(dev, vu_glib_output_watch, g);
    vu_glib_watch(dev, vu_dev_wants_input(dev), g);
    return g;
}

struct vu_dev *vu_glib_dev(struct vu_glib *g)
{
    return g->dev;
}

void vu_glib_free(struct vu_glib *g)
{
    if (!g)
        return;
    vu_dev_set_watch(g->dev, NULL, NULL);
    vu_dev_set_output_watch(g->dev, NULL, NULL);
    vu_glib_unwatch(g);
    vu_dev_free(g->dev);  /* deferred by the core when inside one of its callbacks */
    if (g->ctx)
        g_main_context_unref(g->ctx);
    g_free(g);
}
