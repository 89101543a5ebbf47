/*
 * vpclient_glib.c - the GLib adapter of libvhostpci-client: a g_unix_fd source on
 * the socket, one timer source armed at the earliest request deadline (the core's
 * vpc_loop hooks keep them current), the public constructors that attach them, and
 * the blocking wrappers, which move both sources to a private GMainContext and
 * iterate it until their request has completed. The core never calls into this file.
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include "vpclient_private.h"

#include <glib-unix.h>

/* ------------------------------ sources ------------------------------ */

/** The adapter's state of one client (its vpc_loop data). */
typedef struct {
    GMainContext *context;        /* ref held */
    GSource *watch;               /* socket readable */
    GSource *timer;               /* earliest deadline */
} VpcGlib;

static VpcGlib *glib_of(VpClient *c)
{
    return c->loop_data;
}

static gboolean watch_cb(gint fd, GIOCondition cond, gpointer data)
{
    (void)fd;
    (void)cond;
    /* Readable, hung up or error: vp_reader_read() tells which. */
    vpc_on_readable(data);
    return G_SOURCE_CONTINUE;
}

typedef struct {
    GSource source;
    VpClient *client;
} TimerSource;

static gboolean timer_dispatch(GSource *s, GSourceFunc cb, gpointer data)
{
    (void)cb;
    (void)data;
    VpClient *c = ((TimerSource *)s)->client;
    g_source_set_ready_time(s, -1);
    vpc_expire(c, g_get_monotonic_time());
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs timer_funcs = {
    .dispatch = timer_dispatch,
};

static void timer_update(VpClient *c, void *data)
{
    VpcGlib *g = data;
    if (g->timer)
        g_source_set_ready_time(g->timer, vpc_next_deadline(c));
}

static void sources_attach(VpClient *c)
{
    VpcGlib *g = glib_of(c);
    if (c->fd < 0)
        return;
    g->watch = g_unix_fd_source_new(c->fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(g->watch, G_SOURCE_FUNC(watch_cb), c, NULL);
    g_source_set_name(g->watch, "vhost-pci-client socket");
    g_source_attach(g->watch, g->context);

    g->timer = g_source_new(&timer_funcs, sizeof(TimerSource));
    ((TimerSource *)g->timer)->client = c;
    g_source_set_name(g->timer, "vhost-pci-client timeouts");
    g_source_attach(g->timer, g->context);
    timer_update(c, g);
}

static void sources_detach(VpClient *c, void *data)
{
    (void)c;
    VpcGlib *g = data;
    if (g->watch) {
        g_source_destroy(g->watch);
        g_source_unref(g->watch);
        g->watch = NULL;
    }
    if (g->timer) {
        g_source_destroy(g->timer);
        g_source_unref(g->timer);
        g->timer = NULL;
    }
}

static void glib_destroy(VpClient *c, void *data)
{
    VpcGlib *g = data;
    sources_detach(c, g);
    g_main_context_unref(g->context);
    g_free(g);
}

static const struct vpc_loop glib_loop = {
    .deadlines = timer_update,
    .closed = sources_detach,
    .destroy = glib_destroy,
};

VpClient *vp_client_new_from_fd(int fd, const guint8 *uuid)
{
    g_return_val_if_fail(fd >= 0, NULL);
    VpcGlib *g = g_new0(VpcGlib, 1);
    g->context = g_main_context_ref_thread_default();
    VpClient *c = vpc_new(fd, uuid, &glib_loop, g);
    sources_attach(c);
    return c;
}

VpClient *vp_client_connect(const char *path, const guint8 *uuid, GError **error)
{
    int fd = vpc_connect_fd(path, error);
    return fd < 0 ? NULL : vp_client_new_from_fd(fd, uuid);
}

void vp_client_attach(VpClient *c, GMainContext *context)
{
    VpcGlib *g = glib_of(c);
    if (!context)
        context = g_main_context_default();
    if (context == g->context)
        return;
    sources_detach(c, g);
    g_main_context_unref(g->context);
    g->context = g_main_context_ref(context);
    sources_attach(c);
}

/* --------------------------- blocking wrappers --------------------------- */

typedef struct {
    gboolean done;
    VpClientReply *reply;   /* caller's, may be NULL */
    GError *error;
    /* handshake */
    VpClientHandshake *result;
    VpClientRenegotiateSyncFunc renegotiate;
    gpointer user_data;
} SyncWait;

typedef struct {
    GMainContext *ctx;
    GMainContext *old;
} SyncScope;

static void sync_enter(VpClient *c, SyncScope *s)
{
    s->ctx = g_main_context_new();
    s->old = g_main_context_ref(glib_of(c)->context);
    g_main_context_push_thread_default(s->ctx);
    vp_client_attach(c, s->ctx);
}

static void sync_wait(SyncScope *s, SyncWait *w)
{
    /* Ends: every request has a deadline or fails when the connection ends. */
    while (!w->done)
        g_main_context_iteration(s->ctx, TRUE);
}

static void sync_leave(VpClient *c, SyncScope *s)
{
    vp_client_attach(c, s->old);
    g_main_context_pop_thread_default(s->ctx);
    g_main_context_unref(s->old);
    g_main_context_unref(s->ctx);
}

static void sync_ack_cb(VpClient *c, const VpClientReply *reply, const GError *error,
                        gpointer data)
{
    (void)c;
    SyncWait *w = data;
    if (reply && w->reply)
        *w->reply = *reply;
    if (error)
        w->error = g_error_copy(error);
    w->done = TRUE;
}

static gboolean sync_finish(SyncWait *w, guint64 seq, GError **error)
{
    if (seq == 0)
        return FALSE; /* @error set by the request function */
    if (w->error) {
        g_propagate_error(error, w->error);
        return FALSE;
    }
    return TRUE;
}

#define SYNC_RUN(c, w, reply, CALL)                                  \
    do {                                                             \
        if (reply)                                                   \
            memset(reply, 0, sizeof(*reply));                        \
        SyncScope s_;                                                \
        sync_enter(c, &s_);                                          \
        guint64 seq_ = (CALL);                                       \
        if (seq_)                                                    \
            sync_wait(&s_, &w);                                      \
        sync_leave(c, &s_);                                          \
        return sync_finish(&w, seq_, error);                         \
    } while (0)

gboolean vp_client_send_features_sync(VpClient *c, guint64 features, int timeout_ms,
                                      VpClientReply *reply, GError **error)
{
    SyncWait w = { .reply = reply };
    SYNC_RUN(c, w, reply,
             vp_client_send_features(c, features, timeout_ms, sync_ack_cb, &w, error));
}

gboolean vp_client_memory_add_sync(VpClient *c, const struct vp_region *regions, guint n,
                                   int timeout_ms, VpClientReply *reply, GError **error)
{
    SyncWait w = { .reply = reply };
    SYNC_RUN(c, w, reply,
             vp_client_memory_add(c, regions, n, timeout_ms, sync_ack_cb, &w, error));
}

gboolean vp_client_memory_del_sync(VpClient *c, const struct vp_region *regions, guint n,
                                   int timeout_ms, VpClientReply *reply, GError **error)
{
    SyncWait w = { .reply = reply };
    SYNC_RUN(c, w, reply,
             vp_client_memory_del(c, regions, n, timeout_ms, sync_ack_cb, &w, error));
}

gboolean vp_client_device_add_sync(VpClient *c, const struct vp_device_info *dev,
                                   int timeout_ms, VpClientReply *reply, GError **error)
{
    SyncWait w = { .reply = reply };
    SYNC_RUN(c, w, reply,
             vp_client_device_add(c, dev, timeout_ms, sync_ack_cb, &w, error));
}

gboolean vp_client_device_del_sync(VpClient *c, guint32 device_type, guint64 device_id,
                                   int timeout_ms, VpClientReply *reply, GError **error)
{
    SyncWait w = { .reply = reply };
    SYNC_RUN(c, w, reply,
             vp_client_device_del(c, device_type, device_id, timeout_ms, sync_ack_cb, &w,
                                  error));
}

static void sync_reneg_cb(VpClient *c, guint64 offered, guint64 accepted, gpointer data)
{
    SyncWait *w = data;
    guint64 final = w->renegotiate ? w->renegotiate(offered, accepted, w->user_data)
                                   : accepted;
    if (final & ~accepted) {
        g_warning("renegotiation callback returned bits 0x%" G_GINT64_MODIFIER "x outside "
                  "the accepted 0x%" G_GINT64_MODIFIER "x: dropping them", final, accepted);
        final &= accepted;
    }
    GError *e = NULL;
    if (!vp_client_confirm_features(c, final, &e)) {
        /* A send failure closed the connection, which ends the handshake. */
        g_warning("confirming the renegotiated features: %s", e->message);
        g_error_free(e);
    }
}

static void sync_handshake_cb(VpClient *c, const VpClientHandshake *result,
                              const GError *error, gpointer data)
{
    (void)c;
    SyncWait *w = data;
    if (w->result)
        *w->result = *result;
    if (error)
        w->error = g_error_copy(error);
    w->done = TRUE;
}

gboolean vp_client_handshake_sync(VpClient *c, const struct vp_region *regions, guint n,
                                  guint64 features, const struct vp_device_info *dev,
                                  int timeout_ms, VpClientRenegotiateSyncFunc renegotiate,
                                  gpointer user_data, VpClientHandshake *result,
                                  GError **error)
{
    SyncWait w = { .result = result, .renegotiate = renegotiate, .user_data = user_data };
    SYNC_RUN(c, w, result,
             vp_client_handshake(c, regions, n, features, dev, timeout_ms, sync_reneg_cb,
                                 sync_handshake_cb, &w, error));
}
