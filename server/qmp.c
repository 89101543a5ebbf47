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
 * Shape: one command in flight at a time (see qmp.h for why); a FIFO of unsent
 * commands; a list of event waiters; every main-loop entry point (socket, timers,
 * idle pump) holds a dispatch depth so that callbacks may free the client.
 */
#define G_LOG_DOMAIN "vp-server"
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define QMP_MAX_LINE (8u << 20)         /* query-qmp-schema is ~200 KiB; be generous */
#define QMP_READ_CHUNK 65536
#define QMP_CONNECT_RETRY_MS 20
#define QMP_DEFAULT_TIMEOUT_MS 30000

typedef enum {
    QMP_ST_IDLE,        /* not connected yet */
    QMP_ST_CONNECTING,  /* connect(2) got EAGAIN (backlog full): retrying */
    QMP_ST_GREETING,    /* connected, waiting for {"QMP": ...} */
    QMP_ST_CAPS,        /* qmp_capabilities sent */
    QMP_ST_READY,
    QMP_ST_CLOSED,
} qmp_state;

typedef struct qmp_cmd {
    qmp_client *c;
    guint64 id;
    char *name;
    char *line;             /* serialized command + '\n' */
    int fd;                 /* our duplicate to pass with SCM_RIGHTS, or -1 */
    gboolean internal;      /* qmp_capabilities: may be sent before READY */
    int dup_errno;          /* != 0: the caller's fd could not be duplicated */
    guint timeout_ms;
    GSource *timer;
    qmp_reply_fn fn;        /* NULL once called (timed out while in flight) */
    void *opaque;
} qmp_cmd;

typedef struct qmp_waiter {
    qmp_client *c;
    guint64 id;
    char *event;
    char *device;           /* NULL = any */
    guint timeout_ms;
    GSource *timer;
    qmp_reply_fn fn;
    void *opaque;
} qmp_waiter;

struct qmp_client {
    GMainContext *ctx;
    qmp_state state;
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];

    GSource *in_src;
    GSource *out_src;
    GSource *conn_timer;        /* connect retry */
    GSource *deadline_timer;    /* greeting + capabilities bound */
    GSource *pump_src;          /* idle: send next / fail after close */
    gint64 conn_deadline_us;
    guint conn_timeout_ms;

    GByteArray *rbuf;
    char *wbuf;                 /* unsent tail of the in-flight command's line */
    gsize wlen, woff;
    int wfd;                    /* fd still to attach (nothing of wbuf sent yet) */

    GQueue queue;               /* qmp_cmd *, unsent */
    qmp_cmd *inflight;
    GList *waiters;             /* qmp_waiter * */
    guint64 next_id;
    guint cmd_timeout_ms;

    qmp_state_fn state_fn;
    void *state_opaque;
    qmp_event_fn event_fn;
    void *event_opaque;

    int depth;                  /* > 0 while inside a main-loop entry point */
    gboolean freeing;
    gboolean ready_reported, closed_reported;
};

static void qmp_close(qmp_client *c, int ret, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void qmp_schedule_pump(qmp_client *c);
static void qmp_send_next(qmp_client *c);

/* ---- small helpers ---------------------------------------------------------- */

static void qmp_reply_init(qmp_reply *r, const char *command)
{
    memset(r, 0, sizeof(*r));
    r->command = command;
    r->fd = -1;
    r->fdset_id = -1;
}

/* The string member @name of @o, or NULL when absent or not a string. */
static const char *qmp_get_str(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;

    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
        return NULL;
    return json_node_get_string(n);
}

static void qmp_enter(qmp_client *c)
{
    c->depth++;
}

static void qmp_destroy(qmp_client *c);

/* Leave a main-loop entry point; the last one out performs a deferred free. */
static void qmp_leave(qmp_client *c)
{
    if (--c->depth == 0 && c->freeing)
        qmp_destroy(c);
}

static GSource *qmp_timer_new(qmp_client *c, guint ms, GSourceFunc fn, gpointer data)
{
    GSource *s = g_timeout_source_new(ms);
    g_source_set_callback(s, fn, data, NULL);
    g_source_attach(s, c->ctx);
    return s;
}

static void qmp_source_drop(GSource **s)
{
    if (*s) {
        g_source_destroy(*s);
        g_source_unref(*s);
        *s = NULL;
    }
}

static void qmp_cmd_free(qmp_cmd *cmd)
{
    qmp_source_drop(&cmd->timer);
    vp_close_fd(&cmd->fd);
    g_free(cmd->name);
    g_free(cmd->line);
    g_free(cmd);
}

static void qmp_waiter_free(qmp_waiter *w)
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

static void qmp_waiter_fail(qmp_waiter *w, int ret, const char *reason)
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
static void qmp_close(qmp_client *c, int ret, const char *fmt, ...)
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
    qmp_source_drop(&c->out_src);
    qmp_source_drop(&c->conn_timer);
    qmp_source_drop(&c->deadline_timer);
    vp_close_fd(&c->fd);
    vp_close_fd(&c->wfd);
    g_clear_pointer(&c->wbuf, g_free);
    c->wlen = c->woff = 0;

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

static gboolean qmp_on_writable(gint fd, GIOCondition cond, gpointer data);

/* Push wbuf (with wfd on its first byte) to the socket. Returns 0, or -1 after
 * closing the connection. */
static int qmp_flush(qmp_client *c)
{
    while (c->woff < c->wlen) {
        struct iovec iov = { c->wbuf + c->woff, c->wlen - c->woff };
        ssize_t n = vp_sendmsg_fds(c->fd, &iov, 1, &c->wfd, c->wfd >= 0 ? 1 : 0,
                                   MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n < 0) {
            if (n == -EINTR)
                continue;
            if (n == -EAGAIN || n == -EWOULDBLOCK) {
                if (!c->out_src) {
                    c->out_src = g_unix_fd_source_new(c->fd, G_IO_OUT);
                    g_source_set_callback(c->out_src, G_SOURCE_FUNC(qmp_on_writable), c, NULL);
                    g_source_attach(c->out_src, c->ctx);
                }
                return 0;
            }
            qmp_close(c, -ECONNRESET, "write to QMP socket: %s", g_strerror((int)-n));
            return -1;
        }
        /* The fd went with the first byte that was sent. */
        vp_close_fd(&c->wfd);
        c->woff += (gsize)n;
    }
    qmp_source_drop(&c->out_src);
    g_clear_pointer(&c->wbuf, g_free);
    c->wlen = c->woff = 0;
    return 0;
}

static gboolean qmp_on_writable(gint fd, GIOCondition cond, gpointer data)
{
    qmp_client *c = data;
    (void)fd;
    (void)cond;
    qmp_enter(c);
    qmp_flush(c);       /* drops out_src itself once everything is written */
    qmp_leave(c);
    return G_SOURCE_CONTINUE;
}

/* Send the next queued command when nothing is in flight. */
static void qmp_send_next(qmp_client *c)
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
    c->wbuf = cmd->line;
    cmd->line = NULL;
    c->wlen = strlen(c->wbuf);
    c->woff = 0;
    c->wfd = cmd->fd;
    cmd->fd = -1;
    qmp_flush(c);
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

static void qmp_schedule_pump(qmp_client *c)
{
    if (c->pump_src || c->freeing)
        return;
    c->pump_src = g_idle_source_new();
    g_source_set_callback(c->pump_src, qmp_on_pump, c, NULL);
    g_source_attach(c->pump_src, c->ctx);
}

/* ---- reading and dispatch --------------------------------------------------- */

static void qmp_fire_ready(qmp_client *c)
{
    c->state = QMP_ST_READY;
    qmp_source_drop(&c->deadline_timer);
    if (!c->ready_reported && c->state_fn) {
        c->ready_reported = TRUE;
        c->state_fn(c, 0, NULL, c->state_opaque);
    }
}

static void qmp_caps_done(qmp_client *c, const qmp_reply *r, void *opaque)
{
    (void)opaque;
    if (r->ret == 0)
        qmp_fire_ready(c);
    else if (r->ret != -ECANCELED)
        qmp_close(c, r->ret == -EIO ? -EPROTO : r->ret, "qmp_capabilities failed: %s",
                  r->err.msg);
}

static void qmp_handle_event(qmp_client *c, JsonObject *msg)
{
    JsonNode *ev = json_object_get_member(msg, "event");
    JsonNode *data = json_object_get_member(msg, "data");
    JsonObject *dobj = NULL;
    const char *name, *device = NULL;
    GList *hits = NULL, *l;

    if (!ev || !JSON_NODE_HOLDS_VALUE(ev) || json_node_get_value_type(ev) != G_TYPE_STRING) {
        g_warning("qmp %s: event without a name, ignored", c->path);
        return;
    }
    name = json_node_get_string(ev);
    if (data && JSON_NODE_HOLDS_OBJECT(data)) {
        dobj = json_node_get_object(data);
        device = qmp_get_str(dobj, "device");
    } else {
        data = NULL;
    }
    g_debug("qmp %s: event %s%s%s", c->path, name, device ? " device " : "",
            device ? device : "");

    if (c->event_fn)
        c->event_fn(c, name, dobj, c->event_opaque);
    if (c->freeing)
        return;

    for (l = c->waiters; l; ) {
        qmp_waiter *w = l->data;
        GList *next = l->next;
        if (strcmp(w->event, name) == 0 &&
            (!w->device || (device && strcmp(w->device, device) == 0))) {
            c->waiters = g_list_remove_link(c->waiters, l);
            hits = g_list_concat(hits, l);
        }
        l = next;
    }
    for (l = hits; l; l = l->next) {
        qmp_waiter *w = l->data;
        qmp_reply r;
        qmp_source_drop(&w->timer);
        qmp_reply_init(&r, w->event);
        r.value = data;
        if (w->fn)
            w->fn(c, &r, w->opaque);
        qmp_waiter_free(w);
    }
    g_list_free(hits);
}

static void qmp_handle_answer(qmp_client *c, JsonObject *msg)
{
    JsonNode *idn = json_object_get_member(msg, "id");
    JsonNode *retn = json_object_get_member(msg, "return");
    JsonNode *errn = json_object_get_member(msg, "error");
    qmp_cmd *cmd = c->inflight;
    qmp_reply_fn fn;
    qmp_reply r;

    if (!cmd) {
        g_warning("qmp %s: answer with nothing in flight, dropped", c->path);
        return;
    }
    if (idn) {
        if (!JSON_NODE_HOLDS_VALUE(idn) || json_node_get_value_type(idn) != G_TYPE_INT64 ||
            (guint64)json_node_get_int(idn) != cmd->id) {
            g_warning("qmp %s: answer for an unknown id, dropped", c->path);
            return;
        }
    } else if (!errn) {
        g_warning("qmp %s: answer without id, dropped", c->path);
        return;
    }
    /* An error without id: QEMU could not parse our command; it answers in order and
     * only one command is in flight, so it is this one's. */

    c->inflight = NULL;
    fn = cmd->fn;
    cmd->fn = NULL;
    qmp_source_drop(&cmd->timer);
    qmp_reply_init(&r, cmd->name);
    if (errn) {
        JsonObject *eo = JSON_NODE_HOLDS_OBJECT(errn) ? json_node_get_object(errn) : NULL;
        const char *desc = qmp_get_str(eo, "desc");
        r.ret = -EIO;
        r.err_class = qmp_get_str(eo, "class");
        vp_fail(&r.err, -EIO, "%s", desc ? desc : "QEMU reported an error without text");
    } else if (retn) {
        r.value = retn;
        if (strcmp(cmd->name, "add-fd") == 0) {
            JsonObject *ro = JSON_NODE_HOLDS_OBJECT(retn) ? json_node_get_object(retn) : NULL;
            JsonNode *fdn = ro ? json_object_get_member(ro, "fd") : NULL;
            JsonNode *setn = ro ? json_object_get_member(ro, "fdset-id") : NULL;
            if (fdn && setn && JSON_NODE_HOLDS_VALUE(fdn) && JSON_NODE_HOLDS_VALUE(setn) &&
                json_node_get_value_type(fdn) == G_TYPE_INT64 &&
                json_node_get_value_type(setn) == G_TYPE_INT64 &&
                json_node_get_int(fdn) >= 0 && json_node_get_int(setn) >= 0) {
                r.fd = json_node_get_int(fdn);
                r.fdset_id = json_node_get_int(setn);
            } else {
                r.ret = -EPROTO;
                r.value = NULL;
                vp_fail(&r.err, -EPROTO, "add-fd answer without fd / fdset-id");
            }
        }
    } else {
        r.ret = -EPROTO;
        vp_fail(&r.err, -EPROTO, "QMP answer with neither return nor error");
    }
    if (fn)
        fn(c, &r, cmd->opaque);
    qmp_cmd_free(cmd);
    qmp_send_next(c);
}

/* One complete line from QEMU. Returns 0, or -1 after closing the connection. */
static int qmp_handle_line(qmp_client *c, const char *line, gsize len)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) gerr = NULL;
    JsonNode *root;
    JsonObject *msg;

    if (!json_parser_load_from_data(parser, line, (gssize)len, &gerr)) {
        qmp_close(c, -EPROTO, "QEMU sent a line that is not JSON: %s", gerr->message);
        return -1;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        qmp_close(c, -EPROTO, "QEMU sent JSON that is not an object");
        return -1;
    }
    msg = json_node_get_object(root);
    g_debug("qmp %s: <- %.*s", c->path, (int)MIN(len, 400), line);

    if (c->state == QMP_ST_GREETING) {
        qmp_cmd *cmd;
        if (!json_object_has_member(msg, "QMP")) {
            qmp_close(c, -EPROTO, "QMP greeting expected");
            return -1;
        }
        c->state = QMP_ST_CAPS;
        cmd = g_new0(qmp_cmd, 1);
        cmd->c = c;
        cmd->id = ++c->next_id;
        cmd->name = g_strdup("qmp_capabilities");
        cmd->line = g_strdup_printf("{\"execute\": \"qmp_capabilities\", \"id\": %" G_GUINT64_FORMAT "}\n",
                                    cmd->id);
        cmd->fd = -1;
        cmd->internal = TRUE;
        cmd->fn = qmp_caps_done;
        g_queue_push_head(&c->queue, cmd);
        qmp_send_next(c);
        return c->state == QMP_ST_CLOSED ? -1 : 0;
    }
    if (json_object_has_member(msg, "event"))
        qmp_handle_event(c, msg);
    else if (json_object_has_member(msg, "return") || json_object_has_member(msg, "error"))
        qmp_handle_answer(c, msg);
    else
        g_warning("qmp %s: unrecognised message, ignored", c->path);
    return (c->state == QMP_ST_CLOSED || c->freeing) ? -1 : 0;
}

static gboolean qmp_on_readable(gint fd, GIOCondition cond, gpointer data)
{
    qmp_client *c = data;
    guint8 buf[QMP_READ_CHUNK];
    ssize_t n;
    gsize start = 0, i;

    (void)fd;
    (void)cond;
    qmp_enter(c);
    n = read(c->fd, buf, sizeof(buf));
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            qmp_close(c, -ECONNRESET, "read from QMP socket: %s", g_strerror(errno));
        goto out;
    }
    if (n == 0) {
        qmp_close(c, -ECONNRESET, "QMP connection closed by QEMU (EOF)");
        goto out;
    }
    g_byte_array_append(c->rbuf, buf, (guint)n);
    for (i = 0; i < c->rbuf->len; i++) {
        if (c->rbuf->data[i] != '\n')
            continue;
        {
            gsize end = i;
            if (end > start && c->rbuf->data[end - 1] == '\r')
                end--;
            if (end > start &&
                qmp_handle_line(c, (const char *)c->rbuf->data + start, end - start) < 0)
                goto out;       /* closed or freed: rbuf may be gone */
        }
        start = i + 1;
    }
    g_byte_array_remove_range(c->rbuf, 0, (guint)start);
    if (c->rbuf->len > QMP_MAX_LINE)
        qmp_close(c, -EPROTO, "QMP line longer than %u bytes", QMP_MAX_LINE);
out:
    qmp_leave(c);
    return G_SOURCE_CONTINUE;   /* qmp_close destroys the source when closing */
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
    c->wfd = -1;
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

/* ---- event waiters ---------------------------------------------------------- */

static gboolean qmp_on_waiter_timeout(gpointer data)
{
    qmp_waiter *w = data;
    qmp_client *c = w->c;
    char reason[200];

    qmp_enter(c);
    qmp_source_drop(&w->timer);
    c->waiters = g_list_remove(c->waiters, w);
    g_snprintf(reason, sizeof(reason), "no %s event%s%s within %u ms", w->event,
               w->device ? " for " : "", w->device ? w->device : "", w->timeout_ms);
    qmp_waiter_fail(w, -ETIMEDOUT, reason);
    qmp_waiter_free(w);
    qmp_leave(c);
    return G_SOURCE_REMOVE;
}

guint64 qmp_client_wait_event(qmp_client *c, const char *event, const char *device,
                              guint timeout_ms, qmp_reply_fn fn, void *opaque)
{
    qmp_waiter *w;

    if (c->freeing)
        return 0;
    w = g_new0(qmp_waiter, 1);
    w->c = c;
    w->id = ++c->next_id;
    w->event = g_strdup(event);
    w->device = g_strdup(device);
    w->fn = fn;
    w->opaque = opaque;
    w->timeout_ms = timeout_ms;
    w->timer = qmp_timer_new(c, timeout_ms, qmp_on_waiter_timeout, w);
    c->waiters = g_list_append(c->waiters, w);
    if (c->state == QMP_ST_CLOSED)
        qmp_schedule_pump(c);   /* fails it with -ECONNRESET, asynchronously */
    return w->id;
}

/* device_del: one user callback, fed by whichever of (device_del error, event,
 * waiter timeout) comes first. Two references: the command and the waiter. */
typedef struct qmp_devdel {
    int refs;
    gboolean done;
    guint64 waiter_id;
    qmp_reply_fn fn;
    void *opaque;
} qmp_devdel;

static void qmp_devdel_unref(qmp_devdel *d)
{
    if (--d->refs == 0)
        g_free(d);
}

static void qmp_devdel_finish(qmp_client *c, qmp_devdel *d, const qmp_reply *r)
{
    if (d->done)
        return;
    d->done = TRUE;
    if (d->fn)
        d->fn(c, r, d->opaque);
}

static void qmp_devdel_event(qmp_client *c, const qmp_reply *r, void *opaque)
{
    qmp_devdel *d = opaque;
    d->waiter_id = 0;
    qmp_devdel_finish(c, d, r);
    qmp_devdel_unref(d);
}

static void qmp_devdel_answer(qmp_client *c, const qmp_reply *r, void *opaque)
{
    qmp_devdel *d = opaque;

    if (r->ret != 0 && !d->done) {
        /* device_del refused (or the connection died): drop the waiter. */
        GList *l;
        for (l = c->waiters; l; l = l->next) {
            qmp_waiter *w = l->data;
            if (w->id == d->waiter_id) {
                c->waiters = g_list_delete_link(c->waiters, l);
                qmp_waiter_free(w);
                d->waiter_id = 0;
                qmp_devdel_unref(d);    /* the waiter's reference */
                break;
            }
        }
        qmp_devdel_finish(c, d, r);
    }
    qmp_devdel_unref(d);
}

void qmp_client_device_del(qmp_client *c, const char *id, guint timeout_ms,
                           qmp_reply_fn fn, void *opaque)
{
    qmp_devdel *d;
    JsonObject *args;

    if (c->freeing)
        return;
    d = g_new0(qmp_devdel, 1);
    d->refs = 2;
    d->fn = fn;
    d->opaque = opaque;
    d->waiter_id = qmp_client_wait_event(c, "DEVICE_DELETED", id, timeout_ms,
                                         qmp_devdel_event, d);
    args = json_object_new();
    json_object_set_string_member(args, "id", id);
    qmp_client_execute_full(c, "device_del", args, -1, timeout_ms, qmp_devdel_answer, d);
}

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
