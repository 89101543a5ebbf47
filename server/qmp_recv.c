/*
 * qmp_recv.c - the receiving half of the QMP client (qmp.h): QEMU's lines parsed as
 * JSON, the greeting and capabilities, answers matched to the command in flight,
 * events handed to the handler and to the bounded waiters (qmp_client_wait_event,
 * qmp_client_device_del).
 *
 * Security model: see qmp.c; every line is parsed with json-glib, must be an object,
 * and each member used is type-checked first; a line over QMP_MAX_LINE or not JSON
 * closes the connection.
 */
#define G_LOG_DOMAIN "vp-server"
#include "qmp_private.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

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

/* json-glib's parser recurses once per nesting level, without a limit: a line of a
 * hundred thousand '[' overflows the stack. QEMU's own JSON parser refuses more than
 * this many levels (MAX_NESTING in qobject/json-streamer.c), so no real answer nests
 * deeper. */
#define QMP_MAX_NESTING 1024

/* What json-glib must not be given, checked before it parses @line: nesting deeper
 * than QMP_MAX_NESTING, and anything but one object. json-glib 1.6 accepts several
 * top-level values in one buffer, keeps the last as the root and leaks the others
 * (600-840 bytes a line: a QEMU repeating `{}{"a":1}` grew the server without bound);
 * QEMU writes one object per line. Counts brackets outside strings. Returns NULL
 * when the line may be parsed, else what is wrong with it. */
static const char *qmp_line_shape(const char *line, gsize len)
{
    unsigned depth = 0;
    gboolean in_str = FALSE, esc = FALSE, started = FALSE;

    for (gsize i = 0; i < len; i++) {
        char ch = line[i];
        if (in_str) {
            if (esc)
                esc = FALSE;
            else if (ch == '\\')
                esc = TRUE;
            else if (ch == '"')
                in_str = FALSE;
        } else if (g_ascii_isspace(ch)) {
            continue;
        } else if (depth == 0 && started) {
            return "more than one JSON value on a line";
        } else if (depth == 0 && ch != '{') {
            return "JSON that is not an object";
        } else if (ch == '"') {
            in_str = TRUE;
        } else if (ch == '[' || ch == '{') {
            started = TRUE;
            if (++depth > QMP_MAX_NESTING)
                return "JSON nested deeper than " G_STRINGIFY(QMP_MAX_NESTING) " levels";
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return NULL;
}

/* One complete line from QEMU. Returns 0, or -1 after closing the connection. */
static int qmp_handle_line(qmp_client *c, const char *line, gsize len)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) gerr = NULL;
    JsonNode *root;
    JsonObject *msg;

    const char *bad = qmp_line_shape(line, len);
    if (bad) {
        qmp_close(c, -EPROTO, "QEMU sent %s", bad);
        return -1;
    }
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

gboolean qmp_on_readable(gint fd, GIOCondition cond, gpointer data)
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
