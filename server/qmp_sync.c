/*
 * qmp_sync.c - blocking conveniences of the QMP client for tools and tests (qmp.h):
 * they iterate the client's own context until the answer, bounded by the client's
 * own timers.
 */
#define G_LOG_DOMAIN "vp-server"
#include "qmp_private.h"

#include <errno.h>

/* ---- blocking conveniences -------------------------------------------------- */

static gboolean qmp_on_flag_timeout(gpointer data)
{
    *(gboolean *)data = TRUE;
    return G_SOURCE_REMOVE;
}

/* Iterate until *done, with no bound of its own: only for waits whose outcome is
 * bounded by a timer of the client (command, waiter, connect deadline). */
static gboolean qmp_iterate_bounded_elsewhere(qmp_client *c, const gboolean *done)
{
    if (!g_main_context_acquire(c->ctx)) {
        g_warning("qmp: cannot acquire the client's main context for a blocking wait");
        return FALSE;
    }
    while (!*done)
        g_main_context_iteration(c->ctx, TRUE);
    g_main_context_release(c->ctx);
    return TRUE;
}

/* The blocking helpers must not run inside a callback of the client (a nested
 * dispatch would read the socket while the outer one is parsing it). */
static int qmp_sync_check(qmp_client *c, const char *what, vp_error *err)
{
    if (c->freeing)
        return vp_fail(err, -ECANCELED, "%s: QMP client is being freed", what);
    if (c->depth > 0)
        return vp_fail(err, -EDEADLK, "%s: blocking QMP call from inside a QMP callback", what);
    if (!g_main_context_acquire(c->ctx))
        return vp_fail(err, -EBUSY, "%s: the QMP client's main context is owned elsewhere", what);
    g_main_context_release(c->ctx);
    return 0;
}

gboolean qmp_client_iterate_until(qmp_client *c, const gboolean *done, guint timeout_ms)
{
    gboolean expired = FALSE;
    GSource *t;

    if (*done)
        return TRUE;
    if (!g_main_context_acquire(c->ctx)) {
        g_warning("qmp: cannot acquire the client's main context for a blocking wait");
        return FALSE;
    }
    t = g_timeout_source_new(timeout_ms);
    g_source_set_callback(t, qmp_on_flag_timeout, &expired, NULL);
    g_source_attach(t, c->ctx);
    while (!*done && !expired)
        g_main_context_iteration(c->ctx, TRUE);
    g_source_destroy(t);
    g_source_unref(t);
    g_main_context_release(c->ctx);
    return *done;
}

typedef struct qmp_sync {
    gboolean done;
    int ret;
    vp_error err;
    JsonNode *value;
    int64_t fd;
} qmp_sync;

static void qmp_sync_state(qmp_client *c, int ret, const vp_error *err, void *opaque)
{
    qmp_sync *s = opaque;
    (void)c;
    if (s->done)
        return;
    s->done = TRUE;
    s->ret = ret;
    if (err)
        s->err = *err;
}

int qmp_client_connect_sync(qmp_client *c, const char *path, guint timeout_ms, vp_error *err)
{
    qmp_sync s = { 0 };
    qmp_state_fn old_fn = c->state_fn;
    void *old_opaque = c->state_opaque;
    int ret;

    ret = qmp_sync_check(c, "QMP connect", err);
    if (ret < 0)
        return ret;
    c->state_fn = qmp_sync_state;
    c->state_opaque = &s;
    ret = qmp_client_connect(c, path, timeout_ms, err);
    if (ret == 0) {
        /* Bounded by the connect deadline timer. */
        qmp_iterate_bounded_elsewhere(c, &s.done);
        ret = s.ret;
        if (ret < 0)
            vp_fail(err, ret, "%s", s.err.msg);
    }
    c->state_fn = old_fn;
    c->state_opaque = old_opaque;
    /* The sync caller saw the outcome: do not report "ready" again later. */
    return ret;
}

static void qmp_sync_reply(qmp_client *c, const qmp_reply *r, void *opaque)
{
    qmp_sync *s = opaque;
    (void)c;
    s->done = TRUE;
    s->ret = r->ret;
    s->err = r->err;
    s->fd = r->fd;
    if (r->value)
        s->value = json_node_copy(r->value);
}

int qmp_client_execute_sync(qmp_client *c, const char *cmd, JsonObject *args, int fd,
                            guint timeout_ms, JsonNode **ret_out, int64_t *qemu_fd,
                            vp_error *err)
{
    qmp_sync s = { .fd = -1 };
    int ret = qmp_sync_check(c, cmd, err);

    if (ret < 0) {
        if (args)
            json_object_unref(args);
        return ret;
    }
    qmp_client_execute_full(c, cmd, args, fd, timeout_ms, qmp_sync_reply, &s);
    qmp_iterate_bounded_elsewhere(c, &s.done);     /* bounded by the command's timer */
    if (qemu_fd)
        *qemu_fd = s.fd;
    if (s.ret < 0) {
        if (s.value)
            json_node_unref(s.value);
        if (err)
            *err = s.err;
        return s.ret;
    }
    if (ret_out)
        *ret_out = s.value;
    else if (s.value)
        json_node_unref(s.value);
    return 0;
}

int qmp_client_device_del_sync(qmp_client *c, const char *id, guint timeout_ms,
                               vp_error *err)
{
    qmp_sync s = { .fd = -1 };
    int ret = qmp_sync_check(c, "device_del", err);

    if (ret < 0)
        return ret;
    qmp_client_device_del(c, id, timeout_ms, qmp_sync_reply, &s);
    qmp_iterate_bounded_elsewhere(c, &s.done);     /* bounded by the waiter's timer */
    if (s.value)
        json_node_unref(s.value);
    if (s.ret < 0 && err)
        *err = s.err;
    return s.ret;
}
