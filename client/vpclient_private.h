/*
 * vpclient_private.h - internals shared by the files of libvhostpci-client:
 * vpclient_core.c (connection, requests, ACK matching, deadlines; no event loop),
 * vpclient_ops.c (the protocol operations and the handshake, on the core) and
 * vpclient_glib.c (the GSource adapter, the constructors that attach it, and the
 * blocking wrappers, on both). Calls go one way: glib -> ops -> core, glib -> core;
 * the core tells the adapter what changed through the loop hooks it was given
 * (vpc_loop), never by calling it.
 */
#ifndef VPCLIENT_PRIVATE_H
#define VPCLIENT_PRIVATE_H

#include "vpclient.h"

typedef struct VpcRequest VpcRequest;

/**
 * What the core tells its event-loop adapter. All called with the client, and the
 * adapter's @data given to vpc_new().
 *  deadlines  the earliest deadline changed (vpc_next_deadline(); -1: none)
 *  closed     the socket is closed: stop watching it (before pending callbacks run)
 *  destroy    the client is being freed: release everything of the adapter's
 */
struct vpc_loop {
    void (*deadlines)(VpClient *c, void *data);
    void (*closed)(VpClient *c, void *data);
    void (*destroy)(VpClient *c, void *data);
};

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

    /* The event loop's hooks (the GLib adapter's, vpclient_glib.c). */
    const struct vpc_loop *loop;
    void *loop_data;
};

/* ---- core (vpclient_core.c) ---- */

/** A client on the connected stream socket @fd (taken over: made non-blocking,
 *  closed by the client) for @uuid (NULL: a random one), with one reference; @loop
 *  and @data are its event loop's hooks (kept). */
VpClient *vpc_new(int fd, const guint8 *uuid, const struct vpc_loop *loop, void *data);

/** Connect a stream socket to @path. Returns the fd, or -1 with VP_CLIENT_ERROR_IO. */
int vpc_connect_fd(const char *path, GError **error);

/** The earliest deadline may have changed: tell the adapter. */
void vpc_deadlines_changed(VpClient *c);

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

#endif
