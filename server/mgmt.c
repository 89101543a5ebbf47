/*
 * mgmt.c - the management socket (--mgmt PATH): a client connects, writes one line
 * `status\n`, the server answers one JSON document (schema in the briefing,
 * "Server management socket") and closes.
 *
 * Security model: anyone who can connect may ask; nothing a client does may stall
 * the main loop or hold resources for long. The request is one short line read
 * non-blocking into a bounded buffer (MGMT_LINE_MAX bytes; a longer line is answered
 * as an unknown command); nothing else is parsed. Unknown commands get
 * {"error": "..."}, the command quoted after invalid UTF-8 was replaced (the answer
 * must stay one valid JSON document). The answer is rendered once into a buffer and
 * written non-blocking from a G_IO_OUT watch, so a client that does not read costs
 * the loop nothing. Each client has MGMT_DEADLINE_MS for the whole exchange (request
 * and reading the answer), then it is closed; at most MGMT_MAX_CLIENTS are open at
 * once, a further one is closed at accept (logged, rate-limited).
 */
#include "mgmt.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <glib-unix.h>
#include <json-glib/json-glib.h>

#include "server.h"
#include "tenant.h"
#include "unix_listen.h"
#include "vp_outq_glib.h"

struct srv_mgmt {
    struct vp_server *srv;
    char *path;
    int fd;
    guint src;
    GList *conns;
    guint nconns;
    gint64 refused_log_us;      /* monotonic time of the last "refused" log line */
    guint refused_quiet;        /* refusals since then that were not logged */
};

struct mgmt_conn {
    struct srv_mgmt *m;
    int fd;
    guint src, timer;
    char buf[MGMT_LINE_MAX];
    size_t len;
    bool answering;             /* the answer is in @out */
    size_t outlen;              /* its bytes */
    struct vp_outq_glib out;    /* the answer being written */
};

/* The document built in @b as text (caller frees); @b is consumed. */
static char *render(JsonBuilder *b, gboolean pretty)
{
    JsonGenerator *g = json_generator_new();
    JsonNode *root = json_builder_get_root(b);
    json_generator_set_root(g, root);
    json_generator_set_pretty(g, pretty);
    char *s = json_generator_to_data(g, NULL);
    json_node_unref(root);
    g_object_unref(g);
    g_object_unref(b);
    return s;
}

static void add_int(JsonBuilder *b, const char *name, gint64 v)
{
    json_builder_set_member_name(b, name);
    json_builder_add_int_value(b, v);
}

static void device_json(JsonBuilder *b, struct srv_tenant *t)
{
    struct srv_device *dev = t->dev;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "uuid");
    json_builder_add_string_value(b, dev->uuid_str);
    add_int(b, "slot", dev->devfn < 256 ? (gint64)dev->devfn : -1);
    add_int(b, "status", dev->cq.status | (dev->cq.broken ? VP_STATUS_NEEDS_RESET : 0));
    json_builder_set_member_name(b, "driver_ok");
    json_builder_add_boolean_value(b, dev->cq.driver_ok);
    json_builder_set_member_name(b, "needs_reset");
    json_builder_add_boolean_value(b, dev->cq.broken);
    json_builder_set_member_name(b, "reason");
    json_builder_add_string_value(b, dev->cq.broken ? dev->cq.broken_reason : "");
    add_int(b, "bar_size", (gint64)dev->mem.bar_size);
    add_int(b, "generation", dev->ca.generation);
    json_builder_set_member_name(b, "features");
    json_builder_begin_object(b);
    add_int(b, "offered", (gint64)dev->features_offered);
    add_int(b, "accepted", (gint64)dev->features_accepted);
    json_builder_end_object(b);
    add_int(b, "connections", t->nconns);
    add_int(b, "owner_uid", t->owner_uid);

    json_builder_set_member_name(b, "windows");
    json_builder_begin_array(b);
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        const struct srv_window *w = &dev->mem.wins[i];
        if (!w->used)
            continue;
        for (unsigned k = 0; k < w->npieces; k++) {  /* one entry per function */
            json_builder_begin_object(b);
            add_int(b, "devfn", w->piece[k].devfn);
            add_int(b, "bar_offset", (gint64)(w->bar_offset + w->piece[k].at.file_offset));
            add_int(b, "size", (gint64)w->piece[k].at.size);
            add_int(b, "file_offset", (gint64)w->piece[k].at.file_offset);
            add_int(b, "file_size", (gint64)w->file.size);
            json_builder_end_object(b);
        }
    }
    json_builder_end_array(b);

    json_builder_set_member_name(b, "regions");
    json_builder_begin_array(b);
    for (unsigned i = 0; i < dev->mem.table.n; i++) {
        const struct vp_mt_region *r = &dev->mem.table.r[i];
        json_builder_begin_object(b);
        add_int(b, "gpa", (gint64)r->gpa);
        add_int(b, "size", (gint64)r->size);
        add_int(b, "mmap_offset", (gint64)r->file_offset);
        add_int(b, "bar_offset", (gint64)r->target);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);

    json_builder_set_member_name(b, "frontends");
    json_builder_begin_array(b);
    for (guint i = 0; i < dev->frontends->len; i++) {
        const struct srv_frontend *fe = g_ptr_array_index(dev->frontends, i);
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "device_type");
        json_builder_add_string_value(b, vp_device_type_name(fe->device_type));
        add_int(b, "device_id", (gint64)fe->device_id);
        add_int(b, "nvirtqs", fe->nvirtqs);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);

    json_builder_set_member_name(b, "counters");
    json_builder_begin_object(b);
    add_int(b, "controlq_tx", (gint64)dev->cq.counters.tx);
    add_int(b, "controlq_rx", (gint64)dev->cq.counters.rx);
    add_int(b, "acks_ok", (gint64)dev->cq.counters.acks_ok);
    add_int(b, "acks_fail", (gint64)dev->cq.counters.acks_fail);
    add_int(b, "clones", (gint64)dev->clones);
    add_int(b, "resets", (gint64)dev->cq.counters.resets);
    add_int(b, "bad_acks", (gint64)dev->cq.counters.bad_acks);
    json_builder_end_object(b);
    json_builder_end_object(b);
}

/* "refusals_total" and "refusals": the last refusals, oldest first, each with its fix. */
static void refusals_json(JsonBuilder *b, const struct srv_refusals *rs)
{
    add_int(b, "refusals_total", (gint64)rs->total);
    json_builder_set_member_name(b, "refusals");
    json_builder_begin_array(b);
    gint64 now = g_get_monotonic_time();
    const struct srv_refusal *r;
    for (unsigned i = 0; (r = srv_refusal_get(rs, i)) != NULL; i++) {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "client");
        json_builder_add_string_value(b, r->client);
        json_builder_set_member_name(b, "request");
        json_builder_add_string_value(b, r->request);
        add_int(b, "seq", (gint64)r->seq);
        json_builder_set_member_name(b, "result");
        json_builder_add_string_value(b, vp_ack_result_name(r->result));
        json_builder_set_member_name(b, "reason");
        g_autofree char *reason = g_utf8_make_valid(r->reason, -1);
        json_builder_add_string_value(b, reason);
        json_builder_set_member_name(b, "fix");
        json_builder_add_string_value(b, r->fix);
        add_int(b, "age_ms", (now - r->when_us) / 1000);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
}

char *srv_mgmt_status_json(struct vp_server *srv)
{
    JsonBuilder *b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "device_host");
    json_builder_add_string_value(b, srv->host_ops ? srv->host_ops->name : "");
    add_int(b, "connections", g_hash_table_size(srv->sessions));
    json_builder_set_member_name(b, "counters");
    json_builder_begin_object(b);
    add_int(b, "messages", (gint64)srv->counters.messages);
    add_int(b, "bad_messages", (gint64)srv->counters.bad_messages);
    add_int(b, "disconnects", (gint64)srv->counters.disconnects);
    json_builder_end_object(b);
    refusals_json(b, &srv->refusals);
    json_builder_set_member_name(b, "devices");
    json_builder_begin_array(b);
    GList *ts = srv_tenants_sorted(srv);
    for (GList *l = ts; l; l = l->next)
        if (((struct srv_tenant *)l->data)->dev)
            device_json(b, l->data);
    g_list_free(ts);
    json_builder_end_array(b);
    json_builder_end_object(b);
    return render(b, TRUE);
}

static void conn_free(struct mgmt_conn *c)
{
    c->m->conns = g_list_remove(c->m->conns, c);
    c->m->nconns--;
    if (c->src)
        g_source_remove(c->src);
    if (c->timer)
        g_source_remove(c->timer);
    vp_outq_glib_destroy(&c->out);
    vp_close_fd(&c->fd);
    g_free(c);
}

static char *error_json(const char *line)
{
    JsonBuilder *b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "error");
    g_autofree char *valid = g_utf8_make_valid(line, -1);
    char *e = g_strdup_printf("unknown command '%s' (known: status)", valid);
    json_builder_add_string_value(b, e);
    g_free(e);
    json_builder_end_object(b);
    return render(b, FALSE);
}

/* The answer could not be written (the client went away). */
static void conn_send_error(void *opaque, int err)
{
    struct mgmt_conn *c = opaque;
    g_debug("mgmt: client went away after %zu of %zu bytes: %s", c->outlen - c->out.q.bytes,
            c->outlen, g_strerror(-err));
    conn_free(c);
}

/* The whole answer went out: done. */
static void conn_drained(void *opaque)
{
    conn_free(opaque);
}

/* Render the answer to the request line c->buf[0..len) and start sending it through
 * the output queue (the rest goes from its writable watch). */
static void answer(struct mgmt_conn *c)
{
    char *line = c->buf;
    line[c->len] = 0;
    g_strstrip(line);
    char *doc = strcmp(line, "status") == 0 ? srv_mgmt_status_json(c->m->srv)
                                            : error_json(line);
    char *out = g_strconcat(doc, "\n", NULL);
    g_free(doc);
    c->answering = true;
    c->outlen = strlen(out);
    int r = vp_outq_push(&c->out.q, out, c->outlen, NULL, 0, 0);
    g_free(out);
    if (r < 0)
        conn_send_error(c, r);
    else if (vp_outq_idle(&c->out.q))
        conn_free(c);
}

static gboolean conn_readable(gint fd, GIOCondition cond, gpointer data)
{
    struct mgmt_conn *c = data;
    (void)cond;
    ssize_t n = recv(fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return G_SOURCE_CONTINUE;
    if (n > 0)
        c->len += (size_t)n;
    char *nl = memchr(c->buf, '\n', c->len);
    if (n > 0 && !nl && c->len < sizeof(c->buf) - 1)
        return G_SOURCE_CONTINUE;
    /* A whole line, a full buffer, EOF or an error: answer what there is. */
    if (nl)
        c->len = (size_t)(nl - c->buf);
    c->src = 0;
    if (c->len && n >= 0)
        answer(c);
    else
        conn_free(c);
    return G_SOURCE_REMOVE;
}

static gboolean conn_timeout(gpointer data)
{
    struct mgmt_conn *c = data;
    c->timer = 0;
    if (c->answering)
        g_message("mgmt: client did not read its answer within %d ms (%zu of %zu bytes "
                  "sent), closing it", MGMT_DEADLINE_MS, c->outlen - c->out.q.bytes,
                  c->outlen);
    else
        g_debug("mgmt: client sent no request line within %d ms, closing it",
                MGMT_DEADLINE_MS);
    conn_free(c);
    return G_SOURCE_REMOVE;
}

/* A client beyond MGMT_MAX_CLIENTS: close it; one log line per second at most. */
/* Log first, then close: whoever sees the close may look for the line at once. */
static void refuse(struct srv_mgmt *m, int cfd)
{
    gint64 now = g_get_monotonic_time();
    if (m->refused_log_us && now - m->refused_log_us < G_USEC_PER_SEC) {
        m->refused_quiet++;
    } else {
        g_message("mgmt: %u clients open (the most allowed), refusing a new one "
                  "(%u more refused since the last such line)", m->nconns, m->refused_quiet);
        m->refused_log_us = now;
        m->refused_quiet = 0;
    }
    vp_close_fd(&cfd);
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    struct srv_mgmt *m = data;
    (void)cond;
    int cfd = srv_unix_accept(fd);
    if (cfd < 0)
        return G_SOURCE_CONTINUE;
    if (m->nconns >= MGMT_MAX_CLIENTS) {
        refuse(m, cfd);
        return G_SOURCE_CONTINUE;
    }
    struct mgmt_conn *c = g_new0(struct mgmt_conn, 1);
    c->m = m;
    c->fd = cfd;
    vp_outq_glib_init(&c->out, NULL, cfd, 0, NULL, conn_send_error, c);
    c->out.on_drained = conn_drained;
    c->src = g_unix_fd_add(cfd, G_IO_IN | G_IO_HUP | G_IO_ERR, conn_readable, c);
    c->timer = g_timeout_add(MGMT_DEADLINE_MS, conn_timeout, c);
    m->conns = g_list_prepend(m->conns, c);
    m->nconns++;
    return G_SOURCE_CONTINUE;
}

struct srv_mgmt *srv_mgmt_new(struct vp_server *srv, const char *path, vp_error *err)
{
    int fd = srv_unix_listen(path, err);
    if (fd < 0)
        return NULL;
    struct srv_mgmt *m = g_new0(struct srv_mgmt, 1);
    m->srv = srv;
    m->path = g_strdup(path);
    m->fd = fd;
    m->src = g_unix_fd_add(fd, G_IO_IN, on_accept, m);
    return m;
}

void srv_mgmt_free(struct srv_mgmt *m)
{
    if (!m)
        return;
    while (m->conns)
        conn_free(m->conns->data);
    if (m->src)
        g_source_remove(m->src);
    vp_close_fd(&m->fd);
    unlink(m->path);
    g_free(m->path);
    g_free(m);
}
