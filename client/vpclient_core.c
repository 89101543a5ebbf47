/*
 * vpclient_core.c - libvhostpci-client core: the connection, the table of requests
 * waiting for their ACK (keyed by msg_seq), ACK matching and deadlines. No event
 * loop here: an adapter (vpclient_glib.c) calls vpc_on_readable() when the socket is
 * readable and vpc_expire() when the earliest deadline has passed, and learns what
 * changed through the hooks it gave vpc_new() (struct vpc_loop).
 *
 * Security model: the server is another process and may send anything. Framing
 * goes through vp_reader_read() (header checked, fds bounded and closed with the
 * message); payloads through vp_decode_ack(). An ACK is only believed when its seq
 * names an outstanding request and its type is that request's *_ACK; its result
 * must be one the request allows (ADD_* for ADD, DEL_* for DEL), a DEVICE_INFO_ACK
 * must name the device asked about, and a FEATURE_BITS_ACK may only accept bits
 * that were offered. Anything else is counted and logged, never acted upon.
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include "vpclient_private.h"

#include "vp_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uuid/uuid.h>

G_DEFINE_QUARK(vp-client-error-quark, vp_client_error)

/* ------------------------------ requests ------------------------------ */

void vpc_make_hdr(VpClient *c, struct vp_sock_hdr *hdr, guint64 seq)
{
    memset(hdr, 0, sizeof(*hdr));
    hdr->version = VP_MSG_VERSION;
    hdr->seq = seq;
    memcpy(hdr->uuid, c->uuid, VP_UUID_LEN);
}

void vpc_deadlines_changed(VpClient *c)
{
    if (c->loop && c->loop->deadlines)
        c->loop->deadlines(c, c->loop_data);
}

guint64 vpc_register(VpClient *c, VpcRequest *req, int timeout_ms)
{
    req->seq = c->next_seq++;
    req->timeout_us = timeout_ms < 0 ? -1 : (gint64)timeout_ms * 1000;
    req->deadline = req->timeout_us < 0 ? -1 : g_get_monotonic_time() + req->timeout_us;
    g_hash_table_insert(c->pending, &req->seq, req);
    vpc_deadlines_changed(c);
    return req->seq;
}

void vpc_unregister(VpClient *c, guint64 seq)
{
    VpcRequest *req = g_hash_table_lookup(c->pending, &seq);
    if (req) {
        g_hash_table_steal(c->pending, &seq);
        g_free(req);
        vpc_deadlines_changed(c);
    }
}

/* Remove @req from the table and run its completion exactly once. */
static void complete(VpClient *c, VpcRequest *req, const VpClientReply *reply,
                     const GError *error)
{
    g_hash_table_steal(c->pending, &req->seq);
    if (req->done)
        req->done(c, req, reply, error);
    else if (req->func)
        req->func(c, reply, error, req->user_data);
    g_free(req);
}

static gint cmp_seq(gconstpointer a, gconstpointer b)
{
    const VpcRequest *ra = *(VpcRequest *const *)a, *rb = *(VpcRequest *const *)b;
    return ra->seq < rb->seq ? -1 : ra->seq > rb->seq;
}

/* The pending requests (all, or those due at @now when @now >= 0), by seq. */
static GPtrArray *collect(VpClient *c, gint64 now)
{
    GPtrArray *a = g_ptr_array_new();
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        VpcRequest *req = v;
        if (now < 0 || (req->deadline >= 0 && req->deadline <= now))
            g_ptr_array_add(a, req);
    }
    g_ptr_array_sort(a, cmp_seq);
    return a;
}

static const char *ack_name(guint16 req_type)
{
    int t = vp_proto_reply_type(req_type);
    return t < 0 ? "ACK" : vp_msg_type_name((guint16)t);
}

/* --------------------------- ACK dispatch --------------------------- */

/* Check that @ack fits @req (the protocol's table, protocol/vp_proto.h, says which
 * results may answer which request and which of them is success). Returns NULL when
 * it is a success, else the error. */
static GError *judge_ack(const VpcRequest *req, const struct vp_ack *ack)
{
    const char *what = vp_msg_type_name(req->type);
    const char *opname = req->type == VP_MSG_FEATURE_BITS ? "offer"
                       : req->op == VP_OP_ADD ? "ADD" : "DEL";

    if (req->type == VP_MSG_FEATURE_BITS && (ack->feature_bits & ~req->features))
        return g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL,
                           "FEATURE_BITS_ACK (seq %" G_GUINT64_FORMAT ") accepts bits "
                           "0x%" G_GINT64_MODIFIER "x that were not offered "
                           "(offer 0x%" G_GINT64_MODIFIER "x)",
                           req->seq, ack->feature_bits & ~req->features, req->features);
    if (req->type == VP_MSG_DEVICE_INFO &&
        (ack->device_type != req->device_type || ack->device_id != req->device_id))
        return g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL,
                           "DEVICE_INFO_ACK (seq %" G_GUINT64_FORMAT ") names device %s/%"
                           G_GUINT64_FORMAT ", the request named %s/%" G_GUINT64_FORMAT,
                           req->seq, vp_device_type_name(ack->device_type), ack->device_id,
                           vp_device_type_name(req->device_type), req->device_id);
    if (!vp_proto_result_fits(req->type, req->op, ack->result))
        return g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL,
                           "%s(%s) seq %" G_GUINT64_FORMAT " answered with result %s (%"
                           G_GUINT64_FORMAT ")", what, opname, req->seq,
                           vp_ack_result_name(ack->result), ack->result);
    if (vp_proto_result_done(req->type, req->op, ack->result))
        return NULL;
    return g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_REJECTED,
                       "%s(%s) seq %" G_GUINT64_FORMAT " failed: %s(%s): %s",
                       what, opname, req->seq, ack_name(req->type),
                       vp_ack_result_name(ack->result),
                       ack->reason[0] ? ack->reason : "(no reason given)");
}

static void dispatch(VpClient *c, struct vp_msg *msg)
{
    guint16 type = msg->hdr.type;
    guint64 seq = msg->hdr.seq;

    if (!vp_proto_is_ack(type)) {
        c->ignored++;
        g_message("server sent %s (seq %" G_GUINT64_FORMAT "), not an ACK: ignored",
                  vp_msg_type_name(type), seq);
        return;
    }
    VpcRequest *req = g_hash_table_lookup(c->pending, &seq);
    if (!req) {
        c->ignored++;
        g_message("server sent %s for seq %" G_GUINT64_FORMAT
                  ", which no request waits for (timed out, or never sent): ignored",
                  vp_msg_type_name(type), seq);
        return;
    }
    if ((int)type != vp_proto_reply_type(req->type)) {
        GError *e = g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL,
                                "server answered %s seq %" G_GUINT64_FORMAT " with %s",
                                vp_msg_type_name(req->type), seq, vp_msg_type_name(type));
        complete(c, req, NULL, e);
        g_error_free(e);
        return;
    }

    VpClientReply reply = { .type = type, .seq = seq };
    vp_error verr = { { 0 } };
    if (vp_decode_ack(msg, &reply.ack, &verr) < 0) {
        GError *e = g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL,
                                "bad %s for seq %" G_GUINT64_FORMAT ": %s",
                                vp_msg_type_name(type), seq, verr.msg);
        complete(c, req, NULL, e);
        g_error_free(e);
        return;
    }
    GError *e = judge_ack(req, &reply.ack);
    g_debug("%s seq %" G_GUINT64_FORMAT ": result %s, features 0x%" G_GINT64_MODIFIER
            "x%s%s", vp_msg_type_name(type), seq, vp_ack_result_name(reply.ack.result),
            reply.ack.feature_bits, reply.ack.reason[0] ? ", reason: " : "",
            reply.ack.reason);
    complete(c, req, &reply, e);
    if (e)
        g_error_free(e);
}

void vpc_on_readable(VpClient *c)
{
    vp_client_ref(c);
    while (c->fd >= 0) {
        struct vp_msg msg;
        vp_error verr = { { 0 } };
        int ret = vp_reader_read(&c->reader, c->fd, &msg, &verr);
        if (ret == 0)
            break;
        if (ret < 0) {
            VpClientErrorCode code = (ret == -EPROTO || ret == -EMSGSIZE)
                                         ? VP_CLIENT_ERROR_PROTOCOL
                                         : VP_CLIENT_ERROR_DISCONNECTED;
            char *m = g_strdup_printf("connection to the server ended: %s", verr.msg);
            vpc_close_with(c, code, m);
            g_free(m);
            break;
        }
        dispatch(c, &msg);
        vp_msg_clear(&msg);
    }
    vpc_deadlines_changed(c);
    vp_client_unref(c);
}

/* ------------------------------ deadlines ------------------------------ */

gint64 vpc_next_deadline(VpClient *c)
{
    if (c->reneg_pending || c->fd < 0)
        return -1;
    gint64 best = -1;
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        const VpcRequest *req = v;
        if (req->deadline >= 0 && (best < 0 || req->deadline < best))
            best = req->deadline;
    }
    return best;
}

void vpc_expire(VpClient *c, gint64 now)
{
    if (c->reneg_pending)
        return;
    vp_client_ref(c);
    GPtrArray *due = collect(c, now);
    for (guint i = 0; i < due->len; i++) {
        VpcRequest *req = due->pdata[i];
        /* An earlier callback may have closed the client (which completed it). */
        if (g_hash_table_lookup(c->pending, &req->seq) != req)
            continue;
        GError *e = g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_TIMEOUT,
                                "no %s for %s seq %" G_GUINT64_FORMAT " within %"
                                G_GINT64_FORMAT " ms", ack_name(req->type),
                                vp_msg_type_name(req->type), req->seq,
                                req->timeout_us / 1000);
        complete(c, req, NULL, e);
        g_error_free(e);
    }
    g_ptr_array_free(due, TRUE);
    vpc_deadlines_changed(c);
    vp_client_unref(c);
}

void vpc_rearm_deadlines(VpClient *c)
{
    gint64 now = g_get_monotonic_time();
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        VpcRequest *req = v;
        if (req->timeout_us >= 0)
            req->deadline = now + req->timeout_us;
    }
    vpc_deadlines_changed(c);
}

/* ------------------------------ connection ------------------------------ */

void vpc_close_with(VpClient *c, VpClientErrorCode code, const char *msg)
{
    if (c->fd < 0)
        return;
    g_debug("closing connection: %s", msg);
    if (c->loop && c->loop->closed)
        c->loop->closed(c, c->loop_data);
    vp_reader_reset(&c->reader);
    vp_close_fd(&c->fd);

    GError *e = g_error_new_literal(VP_CLIENT_ERROR, code, msg);
    GPtrArray *all = collect(c, -1);
    for (guint i = 0; i < all->len; i++) {
        VpcRequest *req = all->pdata[i];
        if (g_hash_table_lookup(c->pending, &req->seq) == req)
            complete(c, req, NULL, e);
    }
    g_ptr_array_free(all, TRUE);

    c->reneg_confirmable = FALSE;
    if (c->reneg_pending) {
        void (*end)(VpClient *, gpointer, gboolean, guint64) = c->reneg_end;
        gpointer data = c->reneg_data;
        c->reneg_pending = FALSE;
        c->reneg_end = NULL;
        c->reneg_data = NULL;
        if (end)
            end(c, data, FALSE, 0);
    }

    VpClientClosedFunc cf = c->closed_func;
    c->closed_func = NULL;
    if (cf)
        cf(c, e, c->closed_data);
    g_error_free(e);
}

void vpc_send_failed(VpClient *c, int ret, const char *what, GError **error)
{
    if (ret == -EPIPE || ret == -ECONNRESET || ret == -ENOTCONN) {
        char *m = g_strdup_printf("sending %s: the server has gone (%s)", what,
                                  g_strerror(-ret));
        g_set_error_literal(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_DISCONNECTED, m);
        vpc_close_with(c, VP_CLIENT_ERROR_DISCONNECTED, m);
        g_free(m);
    } else if (ret == -EINVAL) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID,
                    "sending %s: message over the protocol limits", what);
    } else {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_IO, "sending %s: %s", what,
                    g_strerror(-ret));
    }
}

VpClient *vpc_new(int fd, const guint8 *uuid, const struct vpc_loop *loop, void *data)
{
    g_return_val_if_fail(fd >= 0, NULL);
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);

    VpClient *c = g_new0(VpClient, 1);
    c->ref = 1;
    c->fd = fd;
    if (uuid)
        memcpy(c->uuid, uuid, VP_UUID_LEN);
    else
        uuid_generate(c->uuid);
    c->next_seq = 1;
    vp_reader_init(&c->reader);
    c->pending = g_hash_table_new(g_int64_hash, g_int64_equal);
    c->loop = loop;
    c->loop_data = data;
    return c;
}

int vpc_connect_fd(const char *path, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (!path || strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_IO,
                    "server socket path %s is too long (at most %zu bytes)",
                    path ? path : "(null)", sizeof(sa.sun_path) - 1);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_IO, "socket: %s",
                    g_strerror(errno));
        return -1;
    }
    while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (errno == EINTR)
            continue;
        int e = errno;
        close(fd);
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_IO,
                    "connect to vhost-pci server %s: %s", path, g_strerror(e));
        return -1;
    }
    return fd;
}

VpClient *vp_client_ref(VpClient *c)
{
    g_return_val_if_fail(c, NULL);
    c->ref++;
    return c;
}

void vp_client_unref(VpClient *c)
{
    if (!c)
        return;
    g_return_if_fail(c->ref > 0);
    if (--c->ref > 0)
        return;
    /* Keep it alive through the callbacks that closing runs. */
    c->ref = 1;
    vpc_close_with(c, VP_CLIENT_ERROR_CANCELLED, "the client was freed");
    if (--c->ref > 0)
        return; /* a callback took a reference */
    if (c->loop && c->loop->destroy)
        c->loop->destroy(c, c->loop_data);
    g_hash_table_destroy(c->pending);
    g_free(c);
}

void vp_client_close(VpClient *c)
{
    g_return_if_fail(c);
    vp_client_ref(c);
    vpc_close_with(c, VP_CLIENT_ERROR_CANCELLED, "the client closed the connection");
    vp_client_unref(c);
}

void vp_client_set_closed_func(VpClient *c, VpClientClosedFunc func, gpointer user_data)
{
    c->closed_func = func;
    c->closed_data = user_data;
}

const guint8 *vp_client_get_uuid(VpClient *c)
{
    return c->uuid;
}

void vp_client_get_uuid_string(VpClient *c, char out[37])
{
    uuid_unparse_lower(c->uuid, out);
}

gboolean vp_client_is_connected(VpClient *c)
{
    return c->fd >= 0;
}

guint vp_client_get_pending(VpClient *c)
{
    return g_hash_table_size(c->pending);
}

guint64 vp_client_get_next_seq(VpClient *c)
{
    return c->next_seq;
}

guint64 vp_client_get_ignored(VpClient *c)
{
    return c->ignored;
}

gboolean vp_client_renegotiation_pending(VpClient *c)
{
    return c->reneg_pending;
}
