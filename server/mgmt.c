/*
 * mgmt.c - the management socket (--mgmt PATH): a client connects, writes one line
 * `status\n`, the server answers one JSON document (schema in the briefing,
 * "Server management socket") and closes.
 *
 * Security model: anyone who can connect may ask; the request is one short line read
 * into a bounded buffer (64 bytes) with a deadline (2 s), nothing else is parsed.
 * Unknown commands get {"error": "..."}, the command quoted after invalid UTF-8 was
 * replaced (the answer must stay one valid JSON document).
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <glib-unix.h>
#include <json-glib/json-glib.h>

#include "unix_listen.h"

struct srv_mgmt {
    struct vp_server *srv;
    char *path;
    int fd;
    guint src;
    GList *conns;
};

struct mgmt_conn {
    struct srv_mgmt *m;
    int fd;
    guint src, timer;
    char buf[64];
    size_t len;
};

static void add_int(JsonBuilder *b, const char *name, gint64 v)
{
    json_builder_set_member_name(b, name);
    json_builder_add_int_value(b, v);
}

static void device_json(JsonBuilder *b, struct srv_device *dev)
{
    struct vp_server *srv = dev->srv;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "uuid");
    json_builder_add_string_value(b, dev->uuid_str);
    add_int(b, "slot", dev->devfn < 256 ? (gint64)dev->devfn : -1);
    add_int(b, "status", dev->status | (dev->broken ? VP_STATUS_NEEDS_RESET : 0));
    json_builder_set_member_name(b, "driver_ok");
    json_builder_add_boolean_value(b, dev->driver_ok);
    json_builder_set_member_name(b, "needs_reset");
    json_builder_add_boolean_value(b, dev->broken);
    json_builder_set_member_name(b, "reason");
    json_builder_add_string_value(b, dev->broken ? dev->broken_reason : "");
    add_int(b, "bar_size", (gint64)dev->bar_size);
    add_int(b, "generation", dev->generation);
    json_builder_set_member_name(b, "features");
    json_builder_begin_object(b);
    add_int(b, "offered", (gint64)dev->features_offered);
    add_int(b, "accepted", (gint64)dev->features_accepted);
    json_builder_end_object(b);
    add_int(b, "connections", srv_sessions_of_uuid(srv, dev->uuid));

    json_builder_set_member_name(b, "windows");
    json_builder_begin_array(b);
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        const struct srv_window *w = &dev->wins[i];
        if (!w->used)
            continue;
        json_builder_begin_object(b);
        add_int(b, "devfn", w->devfn);
        add_int(b, "bar_offset", (gint64)w->bar_offset);
        add_int(b, "size", (gint64)w->file.size);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);

    json_builder_set_member_name(b, "regions");
    json_builder_begin_array(b);
    for (unsigned i = 0; i < dev->nregions; i++) {
        const struct srv_region *r = &dev->regions[i];
        json_builder_begin_object(b);
        add_int(b, "gpa", (gint64)r->gpa);
        add_int(b, "size", (gint64)r->size);
        add_int(b, "mmap_offset", (gint64)r->mmap_offset);
        add_int(b, "bar_offset", (gint64)srv_region_bar_offset(dev, r));
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
    add_int(b, "controlq_tx", (gint64)dev->counters.controlq_tx);
    add_int(b, "controlq_rx", (gint64)dev->counters.controlq_rx);
    add_int(b, "acks_ok", (gint64)dev->counters.acks_ok);
    add_int(b, "acks_fail", (gint64)dev->counters.acks_fail);
    add_int(b, "clones", (gint64)dev->counters.clones);
    add_int(b, "bad_acks", (gint64)dev->counters.bad_acks);
    json_builder_end_object(b);
    json_builder_end_object(b);
}

static gint cmp_dev(gconstpointer a, gconstpointer b)
{
    const struct srv_device *x = a, *y = b;
    return strcmp(x->uuid_str, y->uuid_str);
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
    json_builder_set_member_name(b, "devices");
    json_builder_begin_array(b);
    GList *devs = g_list_sort(g_hash_table_get_values(srv->devices), cmp_dev);
    for (GList *l = devs; l; l = l->next)
        device_json(b, l->data);
    g_list_free(devs);
    json_builder_end_array(b);
    json_builder_end_object(b);

    JsonGenerator *g = json_generator_new();
    JsonNode *root = json_builder_get_root(b);
    json_generator_set_root(g, root);
    json_generator_set_pretty(g, TRUE);
    char *s = json_generator_to_data(g, NULL);
    json_node_unref(root);
    g_object_unref(g);
    g_object_unref(b);
    return s;
}

static void conn_free(struct mgmt_conn *c)
{
    c->m->conns = g_list_remove(c->m->conns, c);
    if (c->src)
        g_source_remove(c->src);
    if (c->timer)
        g_source_remove(c->timer);
    vp_close_fd(&c->fd);
    g_free(c);
}

/* Write all of @s (small) with a short poll-bounded loop; errors just end it. */
static void write_all(int fd, const char *s, size_t len)
{
    while (len) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n > 0) {
            s += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd p = { .fd = fd, .events = POLLOUT };
            if (poll(&p, 1, 2000) <= 0)
                return;
        } else {
            return;
        }
    }
}

static void answer(struct mgmt_conn *c)
{
    char *line = c->buf;
    line[c->len] = 0;
    g_strstrip(line);
    char *out;
    if (strcmp(line, "status") == 0) {
        out = srv_mgmt_status_json(c->m->srv);
    } else {
        JsonBuilder *b = json_builder_new();
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "error");
        g_autofree char *valid = g_utf8_make_valid(line, -1);
        char *e = g_strdup_printf("unknown command '%s' (known: status)", valid);
        json_builder_add_string_value(b, e);
        g_free(e);
        json_builder_end_object(b);
        JsonGenerator *g = json_generator_new();
        JsonNode *root = json_builder_get_root(b);
        json_generator_set_root(g, root);
        out = json_generator_to_data(g, NULL);
        json_node_unref(root);
        g_object_unref(g);
        g_object_unref(b);
    }
    write_all(c->fd, out, strlen(out));
    write_all(c->fd, "\n", 1);
    g_free(out);
}

static gboolean conn_readable(gint fd, GIOCondition cond, gpointer data)
{
    struct mgmt_conn *c = data;
    (void)cond;
    ssize_t n = recv(fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return G_SOURCE_CONTINUE;
    if (n > 0)
        c->len += (size_t)n;
    if (n <= 0 || memchr(c->buf, '\n', c->len) || c->len >= sizeof(c->buf) - 1) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl)
            c->len = (size_t)(nl - c->buf);
        if (c->len)
            answer(c);
        c->src = 0;
        conn_free(c);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static gboolean conn_timeout(gpointer data)
{
    struct mgmt_conn *c = data;
    c->timer = 0;
    conn_free(c);
    return G_SOURCE_REMOVE;
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    struct srv_mgmt *m = data;
    (void)cond;
    int cfd = srv_unix_accept(fd);
    if (cfd < 0)
        return G_SOURCE_CONTINUE;
    struct mgmt_conn *c = g_new0(struct mgmt_conn, 1);
    c->m = m;
    c->fd = cfd;
    c->src = g_unix_fd_add(cfd, G_IO_IN | G_IO_HUP | G_IO_ERR, conn_readable, c);
    c->timer = g_timeout_add(2000, conn_timeout, c);
    m->conns = g_list_prepend(m->conns, c);
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
