/*
 * daemon_bridge.c - the vhost-pci-client daemon's bridge glue (daemon.h): events
 * into the bridge, the bridge's actions carried out (VpClient requests to the
 * vhost-pci server, whose ACKs come back as events; vhost-user replies; timers),
 * and the bridge's log into GLib's.
 *
 * Security model: what the server answers is matched and framed by
 * libvhostpci-client; this file copies it into events (positions bounded by
 * VP_MAX_VIRTQS) for the bridge, which decides what to trust.
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include "daemon.h"

#include <inttypes.h>
#include <string.h>

void daemon_post(struct daemon *d, const struct br_event *ev)
{
    br_post(d->br, ev);
}

void daemon_post_simple(struct daemon *d, enum br_event_type type)
{
    daemon_post(d, &(struct br_event){ .type = type });
}

/** What a request of the bridge is waiting for (the callbacks' user data). */
struct req {
    struct daemon *d;
    uint64_t token;
};

static struct req *req_new(struct daemon *d, uint64_t token)
{
    struct req *r = g_new0(struct req, 1);
    r->d = d;
    r->token = token;
    return r;
}

static enum br_status status_of(const GError *error)
{
    if (!error)
        return BR_OK;
    if (g_error_matches(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_REJECTED))
        return BR_REJECTED;
    if (g_error_matches(error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_TIMEOUT))
        return BR_NO_ANSWER;
    return BR_LOST;
}

static void on_features_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                            gpointer data)
{
    struct req *r = data;
    (void)c;
    daemon_post(r->d, &(struct br_event){ .type = BR_EV_FEATURES_ACK, .token = r->token,
                                          .status = status_of(error),
                                          .reason = error ? error->message : NULL,
                                          .features = reply ? reply->ack.feature_bits : 0 });
    g_free(r);
}

static void on_mem_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                       gpointer data)
{
    struct req *r = data;
    (void)c;
    (void)reply;
    daemon_post(r->d, &(struct br_event){ .type = BR_EV_MEM_ACK, .token = r->token,
                                          .status = status_of(error),
                                          .reason = error ? error->message : NULL });
    g_free(r);
}

static void on_del_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                       gpointer data)
{
    struct req *r = data;
    (void)c;
    struct br_event ev = { .type = BR_EV_DEL_ACK, .token = r->token,
                           .status = status_of(error),
                           .reason = error ? error->message : NULL };
    if (reply && !error) {
        ev.npositions = MIN(reply->ack.npositions, (uint32_t)VP_MAX_VIRTQS);
        memcpy(ev.positions, reply->ack.positions, ev.npositions * sizeof(ev.positions[0]));
    }
    daemon_post(r->d, &ev);
    g_free(r);
}

static void on_renegotiate(VpClient *c, guint64 offered, guint64 accepted, gpointer data)
{
    struct req *r = data; /* freed by on_handshake */
    (void)c;
    daemon_post(r->d, &(struct br_event){ .type = BR_EV_RENEGOTIATE, .token = r->token,
                                          .offered = offered, .features = accepted });
}

static void on_handshake(VpClient *c, const VpClientHandshake *res, const GError *error,
                         gpointer data)
{
    struct req *r = data;
    (void)c;
    struct br_event ev = { .type = BR_EV_HANDSHAKE_DONE, .token = r->token,
                           .reason = error ? error->message : NULL,
                           .features = res->final_features,
                           .renegotiated = res->renegotiated };
    /* The device's verdict, and the memory's (the error is the first failure in the
     * order memory, features, device). */
    if (res->have_device)
        ev.status = res->device.ack.result == VP_ACK_ADD_DONE ? BR_OK : BR_REJECTED;
    else
        ev.status = error ? status_of(error) : BR_LOST;
    if (res->have_memory)
        ev.mem_status = res->memory.ack.result == VP_ACK_ADD_DONE ? BR_OK : BR_REJECTED;
    else
        ev.mem_status = error ? status_of(error) : BR_LOST;
    if (ev.status == BR_OK && res->have_features && error &&
        !(res->have_memory && ev.mem_status != BR_OK))
        ev.status = status_of(error); /* the feature round failed */
    daemon_post(r->d, &ev);
    g_free(r);
}

static gboolean br_timer_cb(gpointer data);

/** Timer user data: the daemon and which timer (pointer arithmetic on the array). */
static gboolean br_timer_cb(gpointer data)
{
    guint *slot = data;
    struct daemon *d = &the_daemon;
    enum br_timer t = (enum br_timer)(slot - d->br_timer);
    d->br_timer[t] = 0;
    daemon_post_simple(d, br_timer_event(t));
    return G_SOURCE_REMOVE;
}

static void send_failed(struct daemon *d, const struct br_action *a, const char *why)
{
    g_warning("cannot send a request to the vhost-pci server: %s", why);
    enum br_event_type t = a->type == BR_ACT_SEND_FEATURES ? BR_EV_FEATURES_ACK
                         : a->type == BR_ACT_SEND_MEMORY ? BR_EV_MEM_ACK
                         : a->type == BR_ACT_SEND_HANDSHAKE ? BR_EV_HANDSHAKE_DONE
                         : BR_EV_DEL_ACK;
    daemon_post(d, &(struct br_event){ .type = t, .token = a->token, .status = BR_LOST,
                                       .mem_status = BR_LOST, .reason = why });
}

/** Carry out one action of the bridge. */
void daemon_act(struct br *br, const struct br_action *a, void *opaque)
{
    struct daemon *d = opaque;
    (void)br;
    struct vu_dev *v = vu_dev_of(d);
    GError *e = NULL;
    guint64 seq = 1;
    switch (a->type) {
    case BR_ACT_SEND_FEATURES:
    case BR_ACT_SEND_MEMORY:
    case BR_ACT_SEND_HANDSHAKE:
    case BR_ACT_SEND_DEVICE_DEL: {
        if (!d->vpc) {
            send_failed(d, a, "not connected");
            break;
        }
        struct req *r = req_new(d, a->token);
        if (a->type == BR_ACT_SEND_FEATURES)
            seq = vp_client_send_features(d->vpc, a->features, d->timeout_ms,
                                          on_features_ack, r, &e);
        else if (a->type == BR_ACT_SEND_MEMORY && a->op == VP_OP_ADD)
            seq = vp_client_memory_add(d->vpc, a->regions, a->nregions, d->timeout_ms,
                                       on_mem_ack, r, &e);
        else if (a->type == BR_ACT_SEND_MEMORY)
            seq = vp_client_memory_del(d->vpc, a->regions, a->nregions, d->timeout_ms,
                                       on_mem_ack, r, &e);
        else if (a->type == BR_ACT_SEND_HANDSHAKE)
            seq = vp_client_handshake(d->vpc, a->regions, a->nregions, a->features, a->dev,
                                      d->timeout_ms, on_renegotiate, on_handshake, r, &e);
        else
            seq = vp_client_device_del(d->vpc, VP_DEV_NET, (uint64_t)d->device_id,
                                       d->timeout_ms, on_del_ack, r, &e);
        if (!seq) {
            g_free(r);
            send_failed(d, a, e->message);
            g_error_free(e);
        }
        break;
    }
    case BR_ACT_CONFIRM_FEATURES:
        if (!d->vpc || !vp_client_confirm_features(d->vpc, a->features, &e)) {
            g_warning("FEATURE_BITS_ACK: %s", e ? e->message : "not connected");
            g_clear_error(&e);
        } else {
            g_message("FEATURE_BITS_ACK(0x%" PRIx64 ") sent", a->features);
        }
        break;
    case BR_ACT_REPLY_FEATURES:
        if (v && vu_dev_reply_features(v, a->features) < 0)
            g_warning("GET_FEATURES: the reply could not be sent");
        break;
    case BR_ACT_REPLY_MEM:
        if (v && vu_dev_reply_mem(v, a->result) < 0)
            g_warning("memory change: the reply could not be sent");
        break;
    case BR_ACT_REPLY_VRING_BASE:
        if (v && vu_dev_reply_vring_base(v, a->index, a->base) < 0)
            g_warning("GET_VRING_BASE %u: the reply could not be sent", a->index);
        break;
    case BR_ACT_DROP_FRONTEND:
        if (v && !vu_dev_is_broken(v))
            vu_dev_fail(v, "%s", a->reason);
        break;
    case BR_ACT_TIMER_START:
        if (d->br_timer[a->timer])
            g_source_remove(d->br_timer[a->timer]);
        d->br_timer[a->timer] = g_timeout_add((guint)a->ms, br_timer_cb,
                                              &d->br_timer[a->timer]);
        break;
    case BR_ACT_TIMER_STOP:
        if (d->br_timer[a->timer])
            g_source_remove(d->br_timer[a->timer]);
        d->br_timer[a->timer] = 0;
        break;
    case BR_ACT_QUIT:
        g_main_loop_quit(d->loop);
        break;
    }
}

void daemon_br_log(enum br_log_level level, const char *msg, void *opaque)
{
    (void)opaque;
    switch (level) {
    case BR_LOG_DEBUG:
        g_debug("%s", msg);
        break;
    case BR_LOG_INFO:
        g_info("%s", msg);
        break;
    case BR_LOG_MESSAGE:
        g_message("%s", msg);
        break;
    case BR_LOG_WARNING:
        g_warning("%s", msg);
        break;
    case BR_LOG_ERROR:
        g_critical("%s", msg);
        break;
    }
}
