/*
 * vpclient_ops.c - the operations of libvhostpci-client (spec 1.5.1.1, 1.6.1.1,
 * DESIGN section 4): FEATURE_BITS, MEMORY_INFO(ADD/DEL), DEVICE_INFO(ADD/DEL), the
 * three-message handshake and its renegotiation round.
 *
 * The library checks only what the encoder needs (counts, ADD regions carrying an
 * fd); every semantic check (overlaps, file bounds, seals, ring addresses) is the
 * server's, whose reason comes back in the ACK.
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include "vpclient_private.h"

#include <errno.h>

static gboolean check_connected(VpClient *c, const char *what, GError **error)
{
    if (c->fd < 0) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_DISCONNECTED,
                    "cannot send %s: not connected to the server", what);
        return FALSE;
    }
    return TRUE;
}

static VpcRequest *new_request(guint16 type, guint32 op, VpClientAckFunc func,
                               gpointer user_data)
{
    VpcRequest *req = g_new0(VpcRequest, 1);
    req->type = type;
    req->op = op;
    req->func = func;
    req->user_data = user_data;
    return req;
}

/* Register @req, send with @send, undo on failure. Returns the seq or 0. */
typedef int (*SendFunc)(VpClient *c, const struct vp_sock_hdr *hdr, gconstpointer arg);

static guint64 start(VpClient *c, VpcRequest *req, int timeout_ms, SendFunc send,
                     gconstpointer arg, const char *what, GError **error)
{
    guint64 seq = vpc_register(c, req, timeout_ms);
    struct vp_sock_hdr hdr;
    vpc_make_hdr(c, &hdr, seq);
    int ret = send(c, &hdr, arg);
    if (ret < 0) {
        vpc_unregister(c, seq);
        vpc_send_failed(c, ret, what, error);
        return 0;
    }
    g_debug("sent %s seq %" G_GUINT64_FORMAT, what, seq);
    return seq;
}

static int send_features(VpClient *c, const struct vp_sock_hdr *hdr, gconstpointer arg)
{
    return vp_send_feature_bits(c->fd, hdr, *(const guint64 *)arg);
}

static int send_memory(VpClient *c, const struct vp_sock_hdr *hdr, gconstpointer arg)
{
    return vp_send_memory_info(c->fd, hdr, arg);
}

static int send_device(VpClient *c, const struct vp_sock_hdr *hdr, gconstpointer arg)
{
    return vp_send_device_info(c->fd, hdr, arg);
}

/* ------------------------------ FEATURE_BITS ------------------------------ */

static guint64 features_request(VpClient *c, guint64 features, int timeout_ms,
                                VpClientAckFunc func, gpointer user_data, VpcDoneFunc done,
                                gpointer op_data, GError **error)
{
    if (!check_connected(c, "FEATURE_BITS", error))
        return 0;
    VpcRequest *req = new_request(VP_MSG_FEATURE_BITS, 0, func, user_data);
    req->features = features;
    req->done = done;
    req->op_data = op_data;
    return start(c, req, timeout_ms, send_features, &features, "FEATURE_BITS", error);
}

/* A standalone FEATURE_BITS answered with fewer bits than offered: the caller may
 * confirm the round with vp_client_confirm_features(). */
static void features_done(VpClient *c, VpcRequest *req, const VpClientReply *reply,
                          const GError *error)
{
    if (reply && !error && reply->ack.feature_bits != req->features && c->fd >= 0 &&
        !c->reneg_pending) {
        c->reneg_confirmable = TRUE;
        c->reneg_seq = req->seq;
        c->reneg_accepted = reply->ack.feature_bits;
    }
    if (req->func)
        req->func(c, reply, error, req->user_data);
}

guint64 vp_client_send_features(VpClient *c, guint64 features, int timeout_ms,
                                VpClientAckFunc func, gpointer user_data, GError **error)
{
    return features_request(c, features, timeout_ms, func, user_data, features_done, NULL,
                            error);
}

/* ------------------------------ MEMORY_INFO ------------------------------ */

static gboolean fill_memory(struct vp_memory_info *mi, guint32 op,
                            const struct vp_region *regions, guint n, GError **error)
{
    const char *ops = op == VP_OP_ADD ? "ADD" : "DEL";
    if (n == 0 || n > VP_MAX_REGIONS || !regions) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID,
                    "MEMORY_INFO(%s) with %u regions: 1 to %u allowed", ops, n,
                    VP_MAX_REGIONS);
        return FALSE;
    }
    vp_memory_info_init(mi);
    mi->op = op;
    mi->nregions = n;
    for (guint i = 0; i < n; i++) {
        mi->regions[i] = regions[i];
        if (op == VP_OP_DEL) {
            mi->regions[i].fd = -1;
        } else if (regions[i].fd < 0) {
            g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID,
                        "MEMORY_INFO(ADD) region %u (gpa 0x%" G_GINT64_MODIFIER
                        "x) has no fd", i, regions[i].gpa);
            return FALSE;
        }
    }
    return TRUE;
}

static guint64 memory_request(VpClient *c, guint32 op, const struct vp_region *regions,
                              guint n, int timeout_ms, VpClientAckFunc func,
                              gpointer user_data, VpcDoneFunc done, gpointer op_data,
                              GError **error)
{
    const char *what = op == VP_OP_ADD ? "MEMORY_INFO(ADD)" : "MEMORY_INFO(DEL)";
    if (!check_connected(c, what, error))
        return 0;
    struct vp_memory_info *mi = g_new(struct vp_memory_info, 1);
    guint64 seq = 0;
    if (fill_memory(mi, op, regions, n, error)) {
        VpcRequest *req = new_request(VP_MSG_MEMORY_INFO, op, func, user_data);
        req->done = done;
        req->op_data = op_data;
        seq = start(c, req, timeout_ms, send_memory, mi, what, error);
    }
    g_free(mi); /* the fds in it are the caller's: not closed */
    return seq;
}

guint64 vp_client_memory_add(VpClient *c, const struct vp_region *regions, guint n,
                             int timeout_ms, VpClientAckFunc func, gpointer user_data,
                             GError **error)
{
    return memory_request(c, VP_OP_ADD, regions, n, timeout_ms, func, user_data, NULL,
                          NULL, error);
}

guint64 vp_client_memory_del(VpClient *c, const struct vp_region *regions, guint n,
                             int timeout_ms, VpClientAckFunc func, gpointer user_data,
                             GError **error)
{
    return memory_request(c, VP_OP_DEL, regions, n, timeout_ms, func, user_data, NULL,
                          NULL, error);
}

/* ------------------------------ DEVICE_INFO ------------------------------ */

static guint64 device_request(VpClient *c, const struct vp_device_info *dev, int timeout_ms,
                              VpClientAckFunc func, gpointer user_data, VpcDoneFunc done,
                              gpointer op_data, GError **error)
{
    const char *what = dev->op == VP_OP_ADD ? "DEVICE_INFO(ADD)" : "DEVICE_INFO(DEL)";
    if (!check_connected(c, what, error))
        return 0;
    if (dev->nvirtqs > VP_MAX_VIRTQS) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID,
                    "%s with %u virtqueues: at most %u", what, dev->nvirtqs,
                    VP_MAX_VIRTQS);
        return 0;
    }
    VpcRequest *req = new_request(VP_MSG_DEVICE_INFO, dev->op, func, user_data);
    req->device_type = dev->device_type;
    req->device_id = dev->device_id;
    req->done = done;
    req->op_data = op_data;
    return start(c, req, timeout_ms, send_device, dev, what, error);
}

/* A copy of @dev with op ADD (the caller's struct is const). */
static struct vp_device_info *device_add_copy(const struct vp_device_info *dev)
{
    struct vp_device_info *di = g_memdup2(dev, sizeof(*dev));
    di->op = VP_OP_ADD;
    return di;
}

guint64 vp_client_device_add(VpClient *c, const struct vp_device_info *dev, int timeout_ms,
                             VpClientAckFunc func, gpointer user_data, GError **error)
{
    struct vp_device_info *di = device_add_copy(dev);
    guint64 seq = device_request(c, di, timeout_ms, func, user_data, NULL, NULL, error);
    g_free(di); /* kick/call fds are the caller's: not closed */
    return seq;
}

guint64 vp_client_device_del(VpClient *c, guint32 device_type, guint64 device_id,
                             int timeout_ms, VpClientAckFunc func, gpointer user_data,
                             GError **error)
{
    struct vp_device_info *di = g_new(struct vp_device_info, 1);
    vp_device_info_init(di);
    di->op = VP_OP_DEL;
    di->device_type = device_type;
    di->device_id = device_id;
    guint64 seq = device_request(c, di, timeout_ms, func, user_data, NULL, NULL, error);
    g_free(di);
    return seq;
}

/* ------------------------------ renegotiation ------------------------------ */

gboolean vp_client_confirm_features(VpClient *c, guint64 final_features, GError **error)
{
    if (!c->reneg_pending && !c->reneg_confirmable) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID,
                    "no feature renegotiation round is open");
        return FALSE;
    }
    if (final_features & ~c->reneg_accepted) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID,
                    "final feature bits 0x%" G_GINT64_MODIFIER "x include 0x%"
                    G_GINT64_MODIFIER "x, which the device VM did not accept (0x%"
                    G_GINT64_MODIFIER "x)", final_features,
                    final_features & ~c->reneg_accepted, c->reneg_accepted);
        return FALSE;
    }
    /* The ACK carries the seq of the FEATURE_BITS it concludes (DESIGN 4). */
    struct vp_sock_hdr hdr;
    vpc_make_hdr(c, &hdr, c->reneg_seq);
    struct vp_ack *ack = g_new0(struct vp_ack, 1);
    ack->result = 0; /* unused for FEATURE_BITS_ACK */
    ack->feature_bits = final_features;
    int ret = vp_send_ack(c->fd, VP_MSG_FEATURE_BITS_ACK, &hdr, ack);
    g_free(ack);
    if (ret < 0) {
        /* A dead connection closes the client, which also ends the round. */
        vpc_send_failed(c, ret, "FEATURE_BITS_ACK", error);
        return FALSE;
    }
    g_debug("sent FEATURE_BITS_ACK seq %" G_GUINT64_FORMAT " with final bits 0x%"
            G_GINT64_MODIFIER "x", c->reneg_seq, final_features);

    void (*end)(VpClient *, gpointer, gboolean, guint64) = c->reneg_end;
    gpointer data = c->reneg_data;
    c->reneg_pending = FALSE;
    c->reneg_confirmable = FALSE;
    c->reneg_end = NULL;
    c->reneg_data = NULL;
    /* The server held our other requests during the round: their clocks restart. */
    vpc_rearm_deadlines(c);
    if (end)
        end(c, data, TRUE, final_features);
    return TRUE;
}

/* ------------------------------ handshake ------------------------------ */

typedef struct {
    gint ref;
    VpClient *client;
    VpClientHandshake res;
    GError *err_memory, *err_features, *err_device, *err_round;
    guint outstanding;        /* requests not completed */
    gboolean round_open;      /* waiting for vp_client_confirm_features() */
    gboolean finished;
    gboolean starting;        /* requests being sent: do not finish yet */
    VpClientRenegotiateFunc renegotiate;
    VpClientHandshakeFunc func;
    gpointer user_data;
} Handshake;

static Handshake *hs_ref(Handshake *hs)
{
    hs->ref++;
    return hs;
}

static void hs_unref(Handshake *hs)
{
    if (--hs->ref > 0)
        return;
    g_clear_error(&hs->err_memory);
    g_clear_error(&hs->err_features);
    g_clear_error(&hs->err_device);
    g_clear_error(&hs->err_round);
    g_free(hs);
}

static void hs_maybe_finish(Handshake *hs)
{
    if (hs->finished || hs->starting || hs->outstanding > 0 || hs->round_open)
        return;
    hs->finished = TRUE;
    const GError *e = hs->err_memory ? hs->err_memory
                    : hs->err_features ? hs->err_features
                    : hs->err_device ? hs->err_device
                    : hs->err_round;
    if (hs->func)
        hs->func(hs->client, &hs->res, e, hs->user_data);
}

static void hs_round_end(VpClient *c, gpointer data, gboolean confirmed, guint64 bits)
{
    (void)c;
    Handshake *hs = data;
    hs->round_open = FALSE;
    if (confirmed) {
        hs->res.final_features = bits;
    } else if (!hs->err_round) {
        hs->err_round = g_error_new(VP_CLIENT_ERROR, VP_CLIENT_ERROR_DISCONNECTED,
                                    "the connection ended before the renegotiated "
                                    "feature bits were confirmed");
    }
    hs_maybe_finish(hs);
    hs_unref(hs); /* the round's reference */
}

static void hs_done(VpClient *c, VpcRequest *req, const VpClientReply *reply,
                    const GError *error)
{
    Handshake *hs = req->op_data;
    hs_ref(hs);
    hs->outstanding--;
    switch (req->type) {
    case VP_MSG_MEMORY_INFO:
        if (reply) {
            hs->res.have_memory = TRUE;
            hs->res.memory = *reply;
        }
        if (error)
            hs->err_memory = g_error_copy(error);
        break;
    case VP_MSG_DEVICE_INFO:
        if (reply) {
            hs->res.have_device = TRUE;
            hs->res.device = *reply;
        }
        if (error)
            hs->err_device = g_error_copy(error);
        break;
    case VP_MSG_FEATURE_BITS:
        if (reply) {
            hs->res.have_features = TRUE;
            hs->res.features = *reply;
            hs->res.accepted = reply->ack.feature_bits;
        }
        if (error) {
            hs->err_features = g_error_copy(error);
        } else if (hs->res.accepted != hs->res.offered && c->fd >= 0) {
            /* Spec 1.5.1.1: the frontend renegotiates, then we confirm. */
            hs->res.renegotiated = TRUE;
            hs->round_open = TRUE;
            c->reneg_pending = TRUE;
            c->reneg_confirmable = FALSE;
            c->reneg_seq = req->seq;
            c->reneg_accepted = hs->res.accepted;
            c->reneg_end = hs_round_end;
            c->reneg_data = hs_ref(hs);
            vpc_deadlines_changed(c);
            g_info("device VM accepted features 0x%" G_GINT64_MODIFIER "x of the offered 0x%"
                   G_GINT64_MODIFIER "x: renegotiation round", hs->res.accepted,
                   hs->res.offered);
            if (hs->renegotiate) {
                hs->renegotiate(c, hs->res.offered, hs->res.accepted, hs->user_data);
            } else {
                GError *e = NULL;
                if (!vp_client_confirm_features(c, hs->res.accepted, &e)) {
                    g_warning("confirming the accepted features: %s", e->message);
                    g_error_free(e);
                }
            }
        }
        break;
    default:
        break;
    }
    hs_maybe_finish(hs);
    hs_unref(hs); /* the local reference */
    hs_unref(hs); /* the request's reference */
}

guint64 vp_client_handshake(VpClient *c, const struct vp_region *regions, guint n,
                            guint64 features, const struct vp_device_info *dev,
                            int timeout_ms, VpClientRenegotiateFunc renegotiate,
                            VpClientHandshakeFunc func, gpointer user_data, GError **error)
{
    if (!check_connected(c, "the handshake", error))
        return 0;
    if (c->reneg_pending) {
        g_set_error(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID,
                    "a feature renegotiation round is still open");
        return 0;
    }
    Handshake *hs = g_new0(Handshake, 1);
    hs->ref = 1; /* ours until the three requests are out */
    hs->client = c;
    hs->res.offered = features;
    hs->res.final_features = features;
    hs->renegotiate = renegotiate;
    hs->func = func;
    hs->user_data = user_data;

    struct vp_device_info *di = device_add_copy(dev);
    hs->outstanding = 3;
    hs->starting = TRUE;
    /* Each request holds a reference, taken here; a request function that fails
     * has not stored it, so it is dropped below. */
    guint64 seq_mem = memory_request(c, VP_OP_ADD, regions, n, timeout_ms, NULL, NULL,
                                     hs_done, hs_ref(hs), error);
    guint64 seq_feat = 0, seq_dev = 0;
    if (seq_mem)
        seq_feat = features_request(c, features, timeout_ms, NULL, NULL, hs_done,
                                    hs_ref(hs), error);
    if (seq_feat)
        seq_dev = device_request(c, di, timeout_ms, NULL, NULL, hs_done, hs_ref(hs), error);
    g_free(di);
    hs->starting = FALSE;

    if (!seq_dev) {
        /* Partial send: report it here and run no callback. Requests already out
         * are forgotten (their ACKs will be ignored); a send failure that closed
         * the connection has completed them already. */
        hs->finished = TRUE;
        hs_unref(hs); /* the failed request's reference */
        guint64 sent[2] = { seq_mem, seq_feat };
        for (guint i = 0; i < 2; i++) {
            if (sent[i] && g_hash_table_lookup(c->pending, &sent[i])) {
                vpc_unregister(c, sent[i]);
                hs_unref(hs);
            }
        }
        hs_unref(hs);
        return 0;
    }
    hs_unref(hs);
    return seq_mem;
}
