/*
 * vpclient_private.h - internals shared by the files of libvhostpci-client:
 * vpclient_core.c (connection, requests, ACK matching, deadlines; no event loop),
 * vpclient_glib.c (the GSource adapter and the blocking wrappers) and
 * vpclient_ops.c (the protocol operations and the handshake).
 */
#ifndef VPCLIENT_PRIVATE_H
#define VPCLIENT_PRIVATE_H

#include "vpclient.h"

typedef struct VpcRequest VpcRequest;

/** Internal completion hook of a request (the handshake uses it); when set it runs
 *  instead of the public callback. */
typedef void (*VpcDoneFunc)(VpClient *c, VpcRequest *req, const VpClientReply *reply,
                            const GError *error);

/** One request waiting for its ACK. Owned by client->pending (keyed by seq). */
struct VpcRequest {
    guint64 seq;
    guint16 type;          /* message type sent */
    guint32 op;            /* VP_OP_ADD / VP_OP_DEL (MEMORY_INFO, DEVICE_INFO) */
    guint32 device_type;   /* DEVICE_INFO: the frontend it names */
    guint64 device_id;
    guint64 features;      /* FEATURE_BITS: the offer */
    gint64 timeout_us;     /* < 0: none */
    gint64 deadline;       /* monotonic µs; < 0: none */
    VpClientAckFunc func;
    gpointer user_data;
    VpcDoneFunc done;      /* internal hook, or NULL */
    gpointer op_data;      /* the hook's state */
};

struct _VpClient {
    gint ref;
    int fd;                       /* the socket, -1 once closed */
    guint8 uuid[VP_UUID_LEN];
    guint64 next_seq;
    struct vp_msg_reader reader;
    GHashTable *pending;          /* guint64 seq -> VpcRequest* */
    guint64 ignored;

    /* Renegotiation round (spec 1.5.1.1) waiting for vp_client_confirm_features():
     * reneg_pending for the handshake's round (suspends timeouts), reneg_confirmable
     * after a standalone FEATURE_BITS whose accepted bits differed (the caller
     * decides whether the server waits for a confirmation). */
    gboolean reneg_pending;
    gboolean reneg_confirmable;
    guint64 reneg_seq;            /* the FEATURE_BITS it concludes */
    guint64 reneg_accepted;
    /* Runs when the round ends: confirmed with @final_bits, or not (closed). */
    void (*reneg_end)(VpClient *c, gpointer data, gboolean confirmed, guint64 final_bits);
    gpointer reneg_data;

    VpClientClosedFunc closed_func;
    gpointer closed_data;

    /* GLib adapter. */
    GMainContext *context;        /* ref held */
    GSource *watch;               /* socket readable */
    GSource *timer;               /* earliest deadline */
};

/* ---- core (vpclient_core.c) ---- */

/** Fill a socket header for the next request (type set by the vp_send_* call). */
void vpc_make_hdr(VpClient *c, struct vp_sock_hdr *hdr, guint64 seq);

/** Allocate the next seq; register @req (taking ownership) under it with its
 *  deadline from @timeout_ms. Returns the seq. */
guint64 vpc_register(VpClient *c, VpcRequest *req, int timeout_ms);

/** Remove @seq from the pending table without running anything (after a failed
 *  send). */
void vpc_unregister(VpClient *c, guint64 seq);

/** Turn a negative errno of a send into a GError; -EPIPE/-ECONNRESET also close
 *  the connection (pending requests fail with DISCONNECTED). */
void vpc_send_failed(VpClient *c, int ret, const char *what, GError **error);

/** The socket is readable: read and dispatch every whole message. */
void vpc_on_readable(VpClient *c);

/** Fail every request whose deadline passed. */
void vpc_expire(VpClient *c, gint64 now);

/** Earliest deadline of the pending requests (monotonic µs), -1 when none (or
 *  while a renegotiation round suspends them). */
gint64 vpc_next_deadline(VpClient *c);

/** Re-arm every pending deadline from now (after a renegotiation round). */
void vpc_rearm_deadlines(VpClient *c);

/** End the connection with @code/@msg: fail pending requests, closed callback. */
void vpc_close_with(VpClient *c, VpClientErrorCode code, const char *msg);

/* ---- GLib adapter (vpclient_glib.c) ---- */

/** Create the socket watch and timer on c->context. */
void vpc_sources_attach(VpClient *c);
/** Destroy both sources. */
void vpc_sources_detach(VpClient *c);
/** Set the timer's ready time to vpc_next_deadline(). */
void vpc_timer_update(VpClient *c);

#endif
