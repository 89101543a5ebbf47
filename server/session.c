/*
 * session.c - one client connection of vhost-pci-server (session.h).
 *
 * Security model: the client is another, possibly hostile, process. vp_reader_read()
 * checks the header (type, version, msg_len <= 64 KiB, fd count) before anything is
 * allocated; the handlers decode and validate before touching state. Framing errors
 * (truncated message, over-limit msg_len, fd mismatch, unknown type, undecodable
 * payload, a message from the server's side of the protocol) disconnect this client
 * only; validation errors are answered with ADD_FAIL/DEL_FAIL and a reason and keep
 * the connection. Every received fd is owned by the message until a handler moves it
 * out, and vp_msg_clear() closes whatever is left on every path. A connection is
 * bound to the client_uuid of its first message; another uuid later is a framing
 * error.
 */
#include "session.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>
#include <glib-unix.h>
#include <uuid/uuid.h>

#include "closing.h"
#include "jobs.h"
#include "req_device.h"
#include "req_features.h"
#include "req_memory.h"
#include "resources.h"
#include "server.h"
#include "tenant.h"
#include "vp_proto.h"

/* The handler of each message a client may send. When it is allowed, how many fds
 * it may carry and what happens otherwise is the protocol table's
 * (protocol/vp_proto.h), checked in handle_message() before any handler runs. */
typedef int (*req_handler)(const struct srv_req *, struct vp_msg *, vp_error *);
static const req_handler handlers[VP_MSG_TYPE_COUNT] = {
    [VP_MSG_MEMORY_INFO] = srv_req_memory_info,
    [VP_MSG_DEVICE_INFO] = srv_req_device_info,
    [VP_MSG_FEATURE_BITS] = srv_req_feature_bits,
    [VP_MSG_FEATURE_BITS_ACK] = srv_req_feature_bits_ack,
};

/* The server's view of the connection's client_uuid (VP_ST_*). */
static unsigned session_state(struct srv_session *s)
{
    struct srv_tenant *t = s->tenant;
    if (!t->dev)
        return VP_ST_NO_DEVICE;
    return srv_jobs_waiting_client(&t->jobs) ? VP_ST_RENEG : VP_ST_DEVICE;
}

static struct srv_session *session_lookup(struct vp_server *srv, uint64_t id)
{
    return id ? g_hash_table_lookup(srv->sessions, &id) : NULL;
}

void srv_session_close(struct srv_session *s, const char *why)
{
    struct vp_server *srv = s->srv;
    uint64_t id = s->id;
    struct srv_tenant *t = s->tenant;
    s->tenant = NULL;  /* the hold goes to the tenant's closing below */
    SRV_LOG_PEER(&srv->conn_log, "connections", G_LOG_LEVEL_INFO,
                 "client %s: connection %" PRIu64 " closed (%s)", s->uuid_str, id, why);
    srv->counters.disconnects++;
    if (s->src)
        g_source_remove(s->src);
    s->src = 0;
    g_hash_table_remove(srv->sessions, &id);  /* frees s (and its unsent replies) */
    if (!t)
        return;
    if (srv->shutting_down)
        srv_tenant_unbind(t);
    else
        srv_closing_session_closed(t, id);
}

struct close_later {
    struct vp_server *srv;
    uint64_t id;
    char why[200];
};

static gboolean close_later_cb(gpointer data)
{
    struct close_later *c = data;
    struct srv_session *s = session_lookup(c->srv, c->id);
    if (s)
        srv_session_close(s, c->why);
    g_free(c);
    return G_SOURCE_REMOVE;
}


static void close_deferred(struct vp_server *srv, uint64_t id, const char *why)
{
    struct close_later *c = g_new0(struct close_later, 1);
    c->srv = srv;
    c->id = id;
    g_strlcpy(c->why, why, sizeof(c->why));
    g_idle_add_full(G_PRIORITY_DEFAULT, close_later_cb, c, NULL);
}

/* A reply could not be written from the writable watch (vp_outq_glib). */
static void on_send_error(void *opaque, int err)
{
    struct srv_session *s = opaque;
    char why[200];
    g_snprintf(why, sizeof(why), "sending an ACK failed: %s", g_strerror(-err));
    close_deferred(s->srv, s->id, why);
}

/* Unread reply bytes of every connection together (12.3). */
static uint64_t reply_bytes_total(struct vp_server *srv, struct srv_session **largest)
{
    uint64_t sum = 0;
    GHashTableIter it;
    gpointer k, v;
    *largest = NULL;
    g_hash_table_iter_init(&it, srv->sessions);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        struct srv_session *s = v;
        sum += s->out.q.cost;
        if (!*largest || s->out.q.cost > (*largest)->out.q.cost)
            *largest = s;
    }
    return sum;
}

/* The server's reply hook (vp_server.reply): the ACK goes into the session's bounded
 * output queue, written now or when the socket takes it. Past the per-connection
 * bound (--max-reply-bytes) that connection is closed; past the bound of all
 * connections together (--max-reply-bytes-total) the one with most unread bytes is. */
static void session_reply(struct vp_server *srv, uint64_t session_id, uint16_t type,
                          uint64_t seq, const struct vp_ack *ack)
{
    struct srv_session *s = session_lookup(srv, session_id);
    if (!s || s->fd < 0 || !s->tenant || s->out.q.error)
        return;
    struct vp_sock_hdr hdr = { .type = type, .version = VP_MSG_VERSION, .seq = seq };
    memcpy(hdr.uuid, s->tenant->uuid, VP_UUID_LEN);
    uint8_t *buf = NULL;
    size_t len = 0;
    int r = vp_pack_ack(type, &hdr, ack, &buf, &len);
    struct srv_session *largest;
    if (r == 0 && !vp_outq_idle(&s->out.q) &&
        reply_bytes_total(srv, &largest) + len > srv->limits->max_reply_bytes_total) {
        char why[200];
        g_snprintf(why, sizeof(why), "it leaves %zu reply bytes unread, the most of all "
                   "connections, which together reached --max-reply-bytes-total",
                   largest->out.q.cost);
        close_deferred(srv, largest->id, why);
        if (largest == s) {
            free(buf);
            return;
        }
    }
    if (r == 0)
        r = vp_outq_push(&s->out.q, buf, len, NULL, 0, 0);
    free(buf);
    if (r == -ENOBUFS) {
        close_deferred(srv, session_id, "the client does not read its ACKs (more than "
                       "--max-reply-bytes unread)");
    } else if (r < 0) {
        /* Closed from the loop: the caller may be in the middle of a job. */
        char why[200];
        g_snprintf(why, sizeof(why), "sending %s failed: %s", vp_msg_type_name(type),
                   g_strerror(-r));
        close_deferred(srv, session_id, why);
    }
}

/* Answer a rejected DEVICE_INFO: decode just enough to echo op and device. */
static int reject_with_ack(const struct srv_req *rq, struct vp_msg *msg, const char *why,
                           vp_error *err)
{
    if (msg->hdr.type != VP_MSG_DEVICE_INFO)
        return vp_fail(err, -EPROTO, "%s", why);
    struct vp_device_info *di;
    int r = srv_decode_device_info(msg, &di, err);
    if (r < 0)
        return r;
    vp_device_info_close_fds(di);
    srv_req_answer(rq, VP_MSG_DEVICE_INFO_ACK,
                   di->op == VP_OP_DEL ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL, why, di);
    g_free(di);
    return 0;
}

/* Bind @s to the uuid of its first message; later messages must carry the same. A
 * uuid whose device another uid created is not this connection's (12.6); the nil
 * uuid names nobody. */
static int bind_uuid(struct srv_session *s, const struct vp_msg *msg, vp_error *err)
{
    if (!s->tenant) {
        static const uint8_t nil[VP_UUID_LEN];
        if (memcmp(msg->hdr.uuid, nil, VP_UUID_LEN) == 0)
            return vp_fail(err, -EPROTO, "the nil client_uuid names no driver VM");
        struct srv_tenant *t = srv_tenant_lookup(s->srv, msg->hdr.uuid);
        if (t && t->dev && t->owner_uid != s->uid)
            return vp_fail(err, -EACCES, "client_uuid is in use by another user (uid %u); "
                           "this connection is uid %u", t->owner_uid, s->uid);
        s->tenant = srv_tenant_bind(s->srv, msg->hdr.uuid);
        uuid_unparse_lower(msg->hdr.uuid, s->uuid_str);
        if (srv_limit_client_connection(s->srv, s->tenant->nconns, err) < 0)
            return -EUSERS;
        SRV_LOG_PEER(&s->srv->conn_log, "connections", G_LOG_LEVEL_INFO,
                     "client %s: connection %" PRIu64 " bound", s->uuid_str, s->id);
        return 0;
    }
    if (memcmp(s->tenant->uuid, msg->hdr.uuid, VP_UUID_LEN) != 0)
        return vp_fail(err, -EPROTO, "client_uuid changed on one connection");
    return 0;
}

/* Handle one framed message. Returns 0, or <0 with @err: disconnect. */
static int handle_message(struct srv_session *s, struct vp_msg *msg, vp_error *err)
{
    struct vp_server *srv = s->srv;
    srv->counters.messages++;
    int r = bind_uuid(s, msg, err);
    if (r < 0)
        return r;
    unsigned type = msg->hdr.type;
    const struct vp_msg_rule *rule = vp_proto_rule(type);
    if (!rule)  /* vp_reader_read already rejects these */
        return vp_fail(err, -EPROTO, "unknown message type %u", type);
    /* A client's requests carry increasing msg_seq (DESIGN 4); its ACKs (the
     * renegotiation round) carry the seq they answer. */
    if (!rule->is_ack) {
        if (s->seq_seen && msg->hdr.seq <= s->last_seq)
            return vp_fail(err, -EPROTO, "%s msg_seq %" PRIu64 " does not increase (the last "
                           "request had %" PRIu64 ")", rule->name, msg->hdr.seq, s->last_seq);
        s->seq_seen = true;
        s->last_seq = msg->hdr.seq;
    }
    g_debug("client %s: %s seq %" PRIu64 " (%u bytes, %u fds)", s->uuid_str, rule->name,
            msg->hdr.seq, msg->hdr.len, msg->nfds);
    if (msg->nfds > rule->max_fds)
        return vp_fail(err, -EPROTO, "%s with %u fds (at most %u)", rule->name, msg->nfds,
                       rule->max_fds);
    const struct srv_req rq = { .srv = srv, .tenant = s->tenant, .session_id = s->id,
                                .seq = msg->hdr.seq, .uuid_str = s->uuid_str,
                                .uid = s->uid, .log = &s->tenant->log };
    if (!(rule->client_states & session_state(s)) || !handlers[type]) {
        switch (rule->reject) {
        case VP_REJECT_DISCONNECT:
            return vp_fail(err, -EPROTO, "%s", rule->reject_why);
        case VP_REJECT_ACK_FAIL:
            return reject_with_ack(&rq, msg, rule->reject_why, err);
        case VP_REJECT_IGNORE:
            srv->counters.bad_messages++;
            SRV_LOG_PEER(rq.log, s->uuid_str, G_LOG_LEVEL_WARNING,
                         "client %s: %s seq %" PRIu64 " ignored: %s", s->uuid_str, rule->name,
                         msg->hdr.seq, rule->reject_why);
            return 0;
        }
    }
    return handlers[type](&rq, msg, err);
}

static gboolean on_readable(gint fd, GIOCondition cond, gpointer data)
{
    struct srv_session *s = data;
    struct vp_server *srv = s->srv;
    uint64_t id = s->id;
    (void)fd;
    (void)cond;
    /* Bounded per wakeup so one busy client cannot starve the others. */
    for (int n = 0; n < 64; n++) {
        struct vp_msg msg;
        memset(&msg, 0, sizeof(msg));
        vp_error err = { "" };
        int r = vp_reader_read(&s->reader, s->fd, &msg, &err);
        if (r == 0)
            return G_SOURCE_CONTINUE;
        if (r < 0) {
            char why[300];
            if (r == -ECONNRESET) {
                g_snprintf(why, sizeof(why), "peer closed");
            } else {
                srv->counters.bad_messages++;
                SRV_LOG_PEER(&srv->conn_log, "connections", G_LOG_LEVEL_WARNING,
                             "client %s: %s: disconnecting", s->uuid_str, err.msg);
                g_snprintf(why, sizeof(why), "framing error: %s", err.msg);
            }
            s->src = 0;
            srv_session_close(s, why);
            return G_SOURCE_REMOVE;
        }
        r = handle_message(s, &msg, &err);
        vp_msg_clear(&msg);  /* closes every fd no handler took */
        if (r < 0) {
            srv->counters.bad_messages++;
            SRV_LOG_PEER(&srv->conn_log, "connections", G_LOG_LEVEL_WARNING,
                         "client %s: %s: disconnecting", s->uuid_str, err.msg);
            char why[300];
            g_snprintf(why, sizeof(why), "protocol error: %s", err.msg);
            s->src = 0;
            srv_session_close(s, why);
            return G_SOURCE_REMOVE;
        }
        if (!session_lookup(srv, id))
            return G_SOURCE_REMOVE;  /* closed meanwhile (cannot happen: closes are deferred) */
    }
    return G_SOURCE_CONTINUE;
}

static void session_free(gpointer p)
{
    struct srv_session *s = p;
    if (s->src)
        g_source_remove(s->src);
    vp_outq_glib_destroy(&s->out);
    vp_reader_reset(&s->reader);
    vp_close_fd(&s->fd);
    if (s->tenant)
        srv_tenant_unbind(s->tenant);
    srv_uid_usage(s->srv, s->uid)->connections--;
    srv_uid_usage_trim(s->srv, s->uid);
    g_free(s);
}

void srv_sessions_init(struct vp_server *srv)
{
    srv->sessions = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, session_free);
    srv->reply = session_reply;
    srv->conn_log.burst = SRV_CONN_LOG_BURST;
}

void srv_session_new(struct vp_server *srv, int fd, unsigned uid, int pid)
{
    struct srv_session *s = g_new0(struct srv_session, 1);
    s->srv = srv;
    s->id = ++srv->next_session_id;
    s->fd = fd;
    s->uid = uid;
    s->pid = pid;
    srv_uid_usage(srv, uid)->connections++;
    g_strlcpy(s->uuid_str, "(unbound)", sizeof(s->uuid_str));
    vp_reader_init(&s->reader);
    vp_outq_glib_init(&s->out, NULL, fd, (size_t)srv->limits->max_reply_bytes, NULL,
                      on_send_error, s);
    s->src = g_unix_fd_add(fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_readable, s);
    g_hash_table_insert(srv->sessions, &s->id, s);
    SRV_LOG_PEER(&srv->conn_log, "connections", G_LOG_LEVEL_INFO,
                 "connection %" PRIu64 " accepted (pid %d, uid %u)", s->id, pid, uid);
}

void srv_sessions_close_all(struct vp_server *srv, const char *why)
{
    GList *ss = g_hash_table_get_values(srv->sessions);
    for (GList *l = ss; l; l = l->next)
        srv_session_close(l->data, why);
    g_list_free(ss);
}

void srv_sessions_free(struct vp_server *srv)
{
    if (srv->sessions)
        g_hash_table_destroy(srv->sessions);
    srv->sessions = NULL;
}
