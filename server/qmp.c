/*
 * qmp.c - asynchronous QMP client (see qmp.h).
 *
 * Security model: the peer is the device VM's QEMU. It is trusted to execute what we
 * ask, but nothing it sends is trusted to be well formed: every line is parsed as
 * JSON with json-glib, must be an object, and each member we use is type-checked
 * before use (a missing or mistyped "id", "desc", "fd" is handled, never assumed).
 * A line longer than QMP_MAX_LINE or that is not JSON closes the connection
 * (-EPROTO); answers to unknown ids are logged and dropped. We never read fds from
 * QEMU (read(2) discards any SCM_RIGHTS).
 *

 * Files: qmp.c (this: connection, writing, commands, life cycle), qmp_recv.c
 * (reading, answers, events, waiters), qmp_sync.c (blocking conveniences);
 * qmp_private.h holds what they share.
 *
 * Shape: one command in flight at a time (see qmp.h for why); a FIFO of unsent
 * commands; a list of event waiters; every main-loop entry point (socket, timers,
 * idle pump) holds a dispatch depth so that callbacks may free the client.
 */
#define G_LOG_DOMAIN "vp-server"
#include "qmp_private.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void qmp_destroy(qmp_client *c);

/* ---- small helpers ---------------------------------------------------------- */

void qmp_reply_init(qmp_reply *r, const char *command)
{
    memset(r, 0, sizeof(*r));
    r->command = command;
    r->fd = -1;
    r->fdset_id = -1;
}

/* The string member @name of @o, or NULL when absent or not a string. */
const char *qmp_get_str(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;

    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
        return NULL;
    return json_node_get_string(n);
}

/* The integer member @name of @o into *@v (qmp.h). */
bool qmp_get_int(JsonObject *o, const char *name, int64_t *v)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;

    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
        return false;
    *v = json_node_get_int(n);
    return true;
}

void qmp_enter(qmp_client *c)
{
    c->depth++;
}

static void qmp_destroy(qmp_client *c);

/* Leave a main-loop entry point; the last one out performs a deferred free. */
void qmp_leave(qmp_client *c)
{
    if (--c->depth == 0 && c->freeing)
        qmp_destroy(c);
}

GSource *qmp_timer_new(qmp_client *c, guint ms, GSourceFunc fn, gpointer data)
{
    GSource *s = g_timeout_source_new(ms);
    g_source_set_callback(s, fn, data, NULL);
    g_source_attach(s, c->ctx);
    return s;
}

void qmp_source_drop(GSource **s)
{
    if (*s) {
        g_source_destroy(*s);
        g_source_unref(*s);
        *s = NULL;
    }
}

void qmp_cmd_free(qmp_cmd *cmd)
{
    qmp_source_drop(&cmd->timer);
    vp_close_fd(&cmd->fd);
    g_free(cmd->name);
    g_free(cmd->line);
    g_free(cmd);
}

void qmp_waiter_free(qmp_waiter *w)
{
    qmp_source_drop(&w->timer);
    g_free(w->event);
    g_free(w->device);
    g_free(w);
}

/* Call a command's callback once (with a failure) and forget it. */
static void qmp_cmd_fail(qmp_cmd *cmd, int ret, const char *reason)
{
    qmp_reply_fn fn = cmd->fn;
    qmp_reply r;

    cmd->fn = NULL;
    qmp_source_drop(&cmd->timer);
    if (!fn)
        return;
    qmp_reply_init(&r, cmd->name);
    r.ret = ret;
    vp_fail(&r.err, ret, "%s", reason);
    fn(cmd->c, &r, cmd->opaque);
}

void qmp_waiter_fail(qmp_waiter *w, int ret, const char *reason)
{
    qmp_reply r;

    qmp_reply_init(&r, w->event);
    r.ret = ret;
    vp_fail(&r.err, ret, "%s", reason);
    if (w->fn)
        w->fn(w->c, &r, w->opaque);
}

/* ---- closing ---------------------------------------------------------------- */

/* Fail every queued command and every device_del waiter with @ret / @reason. */
static void qmp_fail_pending(qmp_client *c, int ret, const char *reason)
{
    while (!g_queue_is_empty(&c->queue)) {
        qmp_cmd *cmd = g_queue_pop_head(&c->queue);
        qmp_cmd_fail(cmd, ret, reason);
        qmp_cmd_free(cmd);
    }
    while (c->waiters) {
        qmp_waiter *w = c->waiters->data;
        c->waiters = g_list_delete_link(c->waiters, c->waiters);
        qmp_source_drop(&w->timer);
        qmp_waiter_fail(w, ret, reason);
        qmp_waiter_free(w);
    }
}

/* Close the connection (idempotent): fail everything pending with @ret, report. */
void qmp_close(qmp_client *c, int ret, const char *fmt, ...)
{
    char reason[256];
    va_list ap;

    if (c->state == QMP_ST_CLOSED)
        return;
    va_start(ap, fmt);
    g_vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (!c->freeing)
        g_info("qmp %s: closed: %s", c->path, reason);
    c->state = QMP_ST_CLOSED;
    qmp_source_drop(&c->in_src);
    vp_outq_glib_destroy(&c->out);
    qmp_source_drop(&c->conn_timer);
    qmp_source_drop(&c->deadline_timer);
    vp_close_fd(&c->fd);

    qmp_enter(c);
    if (c->inflight) {
        qmp_cmd *cmd = c->inflight;
        c->inflight = NULL;
        qmp_cmd_fail(cmd, ret, reason);
        qmp_cmd_free(cmd);
    }
    qmp_fail_pending(c, ret, reason);
    if (!c->closed_reported && c->state_fn) {
        vp_error err;
        c->closed_reported = TRUE;
        vp_fail(&err, ret, "%s", reason);
        c->state_fn(c, ret, &err, c->state_opaque);
    }
    qmp_leave(c);
}

/* ---- writing ---------------------------------------------------------------- */

/* The in-flight command's bytes could not be written from the writable watch. */
static void qmp_on_send_error(void *opaque, int err)
{
    qmp_client *c = opaque;
    qmp_enter(c);
    qmp_close(c, -ECONNRESET, "write to QMP socket: %s", g_strerror(-err));
    qmp_leave(c);
}

/* Send the next queued command when nothing is in flight. */
void qmp_send_next(qmp_client *c)
{
    qmp_cmd *cmd;

    if (c->inflight || c->state == QMP_ST_CLOSED || c->freeing)
        return;
    cmd = g_queue_peek_head(&c->queue);
    while (cmd && cmd->dup_errno) {
        /* Never send such a command without its fd. */
        char reason[160];
        g_queue_pop_head(&c->queue);
        g_snprintf(reason, sizeof(reason), "QMP %s: cannot duplicate the fd: %s", cmd->name,
                   g_strerror(cmd->dup_errno));
        qmp_cmd_fail(cmd, -cmd->dup_errno, reason);
        qmp_cmd_free(cmd);
        if (c->freeing || c->state == QMP_ST_CLOSED || c->inflight)
            return;
        cmd = g_queue_peek_head(&c->queue);
    }
    if (!cmd)
        return;
    if (c->state != QMP_ST_READY && !cmd->internal)
        return;
    g_queue_pop_head(&c->queue);
    c->inflight = cmd;
    g_debug("qmp %s: -> %.*s", c->path, (int)strlen(cmd->line) - 1, cmd->line);
    /* Through the output queue (it owns a copy of the fd until the first byte went). */
    int r = vp_outq_push(&c->out.q, cmd->line, strlen(cmd->line), cmd->fd >= 0 ? &cmd->fd : NULL,
                         cmd->fd >= 0 ? 1 : 0, cmd->id);
    vp_close_fd(&cmd->fd);
    g_clear_pointer(&cmd->line, g_free);
    if (r < 0)
        qmp_close(c, -ECONNRESET, "write to QMP socket: %s", g_strerror(-r));
}

static gboolean qmp_on_pump(gpointer data)
{
    qmp_client *c = data;

    qmp_enter(c);
    qmp_source_drop(&c->pump_src);
    if (c->state == QMP_ST_CLOSED) {
        qmp_fail_pending(c, -ECONNRESET, "QMP connection is closed");
    } else {
        qmp_send_next(c);
    }
    qmp_leave(c);
    return G_SOURCE_REMOVE;
}

void qmp_schedule_pump(qmp_client *c)
{
    if (c->pump_src || c->freeing)
        return;
    c->pump_src = g_idle_source_new();
    g_source_set_priority(c->pump_src, G_PRIORITY_DEFAULT);
    g_source_set_callback(c->pump_src, qmp_on_pump, c, NULL);
    g_source_attach(c->pump_src, c->ctx);
}

/* ---- connecting ------------------------------------------------------------- */

static gboolean qmp_on_deadline(gpointer data)
{
    qmp_client *c = data;

    qmp_enter(c);
    qmp_source_drop(&c->deadline_timer);
    if (c->state != QMP_ST_READY)
        qmp_close(c, -ETIMEDOUT, "no QMP greeting/capabilities within %u ms",
                  c->conn_timeout_ms);
    qmp_leave(c);
    return G_SOURCE_REMOVE;
}

static void qmp_start_session(qmp_client *c)
{
    c->state = QMP_ST_GREETING;
    vp_outq_glib_init(&c->out, c->ctx, c->fd, 0, NULL, qmp_on_send_error, c);
    c->in_src = g_unix_fd_source_new(c->fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(c->in_src, G_SOURCE_FUNC(qmp_on_readable), c, NULL);
    g_source_attach(c->in_src, c->ctx);
}

static int qmp_try_connect(qmp_client *c, vp_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    memcpy(sa.sun_path, c->path, sizeof(sa.sun_path));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return 0;
    if (errno == EAGAIN || errno == EINTR)
        return -EAGAIN;
    return vp_fail(err, -errno, "connect to QMP socket %s: %s", c->path, g_strerror(errno));
}

static gboolean qmp_on_connect_retry(gpointer data)
{
    qmp_client *c = data;
    vp_error err;
    int ret;

    qmp_enter(c);
    ret = qmp_try_connect(c, &err);
    if (ret == 0) {
        qmp_source_drop(&c->conn_timer);
        qmp_start_session(c);
    } else if (ret != -EAGAIN) {
        qmp_close(c, ret, "%s", err.msg);
    } else if (g_get_monotonic_time() >= c->conn_deadline_us) {
        qmp_close(c, -ETIMEDOUT, "connect to QMP socket %s: backlog full for %u ms",
                  c->path, c->conn_timeout_ms);
    }
    qmp_leave(c);
    return G_SOURCE_CONTINUE;
}

static void qmp_arm_deadline(qmp_client *c, guint timeout_ms)
{
    c->conn_timeout_ms = timeout_ms;
    c->conn_deadline_us = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    c->deadline_timer = qmp_timer_new(c, timeout_ms, qmp_on_deadline, c);
}

int qmp_client_connect(qmp_client *c, const char *path, guint timeout_ms, vp_error *err)
{
    int ret;

    if (c->state != QMP_ST_IDLE)
        return vp_fail(err, -EINVAL, "QMP client already connected");
    if (strlen(path) >= sizeof(c->path))
        return vp_fail(err, -EINVAL, "QMP socket path too long: %s", path);
    g_strlcpy(c->path, path, sizeof(c->path));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return vp_fail(err, -errno, "socket: %s", g_strerror(errno));
    ret = qmp_try_connect(c, err);
    if (ret < 0 && ret != -EAGAIN) {
        vp_close_fd(&c->fd);
        return ret;
    }
    qmp_arm_deadline(c, timeout_ms);
    if (ret == -EAGAIN) {
        c->state = QMP_ST_CONNECTING;
        c->conn_timer = qmp_timer_new(c, QMP_CONNECT_RETRY_MS, qmp_on_connect_retry, c);
    } else {
        qmp_start_session(c);
    }
    return 0;
}

int qmp_client_attach_fd(qmp_client *c, int fd, guint timeout_ms, vp_error *err)
{
    int fl;

    if (c->state != QMP_ST_IDLE) {
        vp_close_fd(&fd);
        return vp_fail(err, -EINVAL, "QMP client already connected");
    }
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        int e = errno;
        vp_close_fd(&fd);
        return vp_fail(err, -e, "fcntl: %s", g_strerror(e));
    }
    g_strlcpy(c->path, "(fd)", sizeof(c->path));
    c->fd = fd;
    qmp_arm_deadline(c, timeout_ms);
    qmp_start_session(c);
    return 0;
}

/* ---- lifetime --------------------------------------------------------------- */

qmp_client *qmp_client_new(GMainContext *ctx)
{
    qmp_client *c = g_new0(qmp_client, 1);

    c->ctx = ctx ? g_main_context_ref(ctx) : g_main_context_ref_thread_default();
    c->fd = -1;
    c->rbuf = g_byte_array_new();
    c->cmd_timeout_ms = QMP_DEFAULT_TIMEOUT_MS;
    g_queue_init(&c->queue);
    g_strlcpy(c->path, "(unconnected)", sizeof(c->path));
    return c;
}

static void qmp_destroy(qmp_client *c)
{
    qmp_source_drop(&c->pump_src);
    g_byte_array_unref(c->rbuf);
    g_main_context_unref(c->ctx);
    g_free(c);
}

void qmp_client_free(qmp_client *c)
{
    if (!c || c->freeing)
        return;
    c->freeing = TRUE;
    c->state_fn = NULL;         /* "closed" is not reported to an owner who is freeing */
    c->event_fn = NULL;
    qmp_source_drop(&c->pump_src);
    qmp_enter(c);
    if (c->state != QMP_ST_CLOSED)
        qmp_close(c, -ECANCELED, "QMP client freed");
    /* Commands queued after a close (pump not yet run). */
    qmp_fail_pending(c, -ECANCELED, "QMP client freed");
    qmp_leave(c);               /* destroys now unless inside another entry point */
}

void qmp_client_set_state_handler(qmp_client *c, qmp_state_fn fn, void *opaque)
{
    c->state_fn = fn;
    c->state_opaque = opaque;
}

void qmp_client_set_event_handler(qmp_client *c, qmp_event_fn fn, void *opaque)
{
    c->event_fn = fn;
    c->event_opaque = opaque;
}

gboolean qmp_client_is_ready(const qmp_client *c)
{
    return c->state == QMP_ST_READY;
}

gboolean qmp_client_is_closed(const qmp_client *c)
{
    return c->state == QMP_ST_CLOSED;
}

void qmp_client_set_command_timeout(qmp_client *c, guint timeout_ms)
{
    c->cmd_timeout_ms = timeout_ms ? timeout_ms : QMP_DEFAULT_TIMEOUT_MS;
}

GMainContext *qmp_client_context(const qmp_client *c)
{
    return c->ctx;
}

/* ---- commands --------------------------------------------------------------- */

static gboolean qmp_on_cmd_timeout(gpointer data)
{
    qmp_cmd *cmd = data;
    qmp_client *c = cmd->c;
    char reason[160];

    qmp_enter(c);
    qmp_source_drop(&cmd->timer);
    g_snprintf(reason, sizeof(reason), "QMP command %s: no answer from QEMU within %u ms",
               cmd->name, cmd->timeout_ms);
    if (c->inflight == cmd) {
        /* Keep it in flight: QEMU still executes it; its late answer is dropped. */
        qmp_cmd_fail(cmd, -ETIMEDOUT, reason);
    } else {
        g_queue_remove(&c->queue, cmd);
        qmp_cmd_fail(cmd, -ETIMEDOUT, reason);
        qmp_cmd_free(cmd);
    }
    qmp_leave(c);
    return G_SOURCE_REMOVE;
}

guint64 qmp_client_execute_full(qmp_client *c, const char *cmd_name, JsonObject *args, int fd,
                                guint timeout_ms, qmp_reply_fn fn, void *opaque)
{
    g_autoptr(JsonObject) obj = NULL;
    g_autoptr(JsonNode) node = NULL;
    g_autofree char *json = NULL;
    qmp_cmd *cmd;

    if (c->freeing) {
        if (args)
            json_object_unref(args);
        return 0;
    }
    cmd = g_new0(qmp_cmd, 1);
    cmd->c = c;
    cmd->id = ++c->next_id;
    cmd->name = g_strdup(cmd_name);
    cmd->fn = fn;
    cmd->opaque = opaque;
    cmd->fd = -1;
    if (fd >= 0) {
        cmd->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (cmd->fd < 0)
            cmd->dup_errno = errno ? errno : EBADF;  /* failed by the pump, in order */
    }
    obj = json_object_new();
    json_object_set_string_member(obj, "execute", cmd_name);
    if (args)
        json_object_set_object_member(obj, "arguments", args);   /* takes args */
    json_object_set_int_member(obj, "id", (gint64)cmd->id);
    node = json_node_init_object(json_node_alloc(), obj);
    json = json_to_string(node, FALSE);
    cmd->line = g_strconcat(json, "\n", NULL);

    cmd->timeout_ms = timeout_ms ? timeout_ms : c->cmd_timeout_ms;
    cmd->timer = qmp_timer_new(c, cmd->timeout_ms, qmp_on_cmd_timeout, cmd);
    g_queue_push_tail(&c->queue, cmd);
    qmp_schedule_pump(c);
    return cmd->id;
}

guint64 qmp_client_execute(qmp_client *c, const char *cmd, JsonObject *args,
                           qmp_reply_fn fn, void *opaque)
{
    return qmp_client_execute_full(c, cmd, args, -1, 0, fn, opaque);
}

guint64 qmp_client_add_fd(qmp_client *c, int fd, int64_t fdset_id, const char *opaque_text,
                          qmp_reply_fn fn, void *opaque)
{
    JsonObject *args = json_object_new();

    if (fdset_id >= 0)
        json_object_set_int_member(args, "fdset-id", fdset_id);
    if (opaque_text)
        json_object_set_string_member(args, "opaque", opaque_text);
    return qmp_client_execute_full(c, "add-fd", args, fd, 0, fn, opaque);
}

guint64 qmp_client_getfd(qmp_client *c, int fd, const char *name, qmp_reply_fn fn,
                         void *opaque)
{
    JsonObject *args = json_object_new();

    json_object_set_string_member(args, "fdname", name);
    return qmp_client_execute_full(c, "getfd", args, fd, 0, fn, opaque);
}
