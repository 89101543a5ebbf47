/*
 * vpclient.h - libvhostpci-client: the client side of the vhost-pci socket protocol
 * (DESIGN section 4, spec 1.5.1.1 and 1.6.1.1).
 *
 * A VpClient is one connection to a vhost-pci-server, speaking for one driver VM
 * (its client_uuid, RFC 4122, from libuuid). It sends MEMORY_INFO, FEATURE_BITS and
 * DEVICE_INFO with increasing msg_seq and matches every ACK to its request by the
 * seq the ACK carries. Each request has a callback and a timeout.
 *
 * Two ways to use it:
 *  - From a GLib main loop (asynchronous): the client watches its socket with a
 *    GSource attached to a GMainContext (the thread-default one at connect time,
 *    or the one given to vp_client_attach()). The request functions send at once
 *    and return the msg_seq; the callback runs from that context when the ACK
 *    arrives, the timeout expires or the connection ends.
 *  - From a plain blocking caller: the *_sync() wrappers run a private
 *    GMainContext until the answer, the timeout or a disconnect.
 *
 * Results. Every callback gets the ACK as a VpClientReply when one arrived (result,
 * accepted feature bits, the server's reason, the last_avail_idx of every stopped
 * virtqueue) and a GError that is NULL only on success. A *_FAIL result gives
 * VP_CLIENT_ERROR_REJECTED whose message contains the server's reason; no ACK at all
 * gives TIMEOUT, DISCONNECTED or CANCELLED (reply NULL).
 *
 * File descriptors. The library sends the caller's fds (memory files, kick and call
 * eventfds) with SCM_RIGHTS and never closes them: the caller owns them before and
 * after the call and may close them as soon as the request function has returned.
 * The library owns only its socket (and, with vp_client_new_from_fd(), the fd it
 * was given).
 *
 * Threading: a VpClient is used from one thread at a time, the one iterating the
 * context it is attached to. Callbacks may call any function of this API on the
 * same client, including vp_client_close() and vp_client_unref().
 *
 * Security model: the server is another process. Every message read from it goes
 * through vp_reader_read()/vp_decode_ack(); an ACK naming no outstanding request,
 * a message that is not an ACK, or an ACK that does not fit its request is
 * reported (g_warning, counted) and never trusted further.
 */
#ifndef VPCLIENT_H
#define VPCLIENT_H

#include <glib.h>

#include "vp_msg.h"

G_BEGIN_DECLS

/** Error domain of this library. */
#define VP_CLIENT_ERROR (vp_client_error_quark())
GQuark vp_client_error_quark(void);

typedef enum {
    VP_CLIENT_ERROR_REJECTED,     /* the server answered ADD_FAIL / DEL_FAIL: see reason */
    VP_CLIENT_ERROR_TIMEOUT,      /* no ACK within the request's timeout */
    VP_CLIENT_ERROR_DISCONNECTED, /* the server closed the connection / socket error */
    VP_CLIENT_ERROR_PROTOCOL,     /* an ACK that does not fit its request, bad framing */
    VP_CLIENT_ERROR_INVALID,      /* bad arguments or state (e.g. nothing to confirm) */
    VP_CLIENT_ERROR_IO,           /* connect/send failed: message has strerror */
    VP_CLIENT_ERROR_CANCELLED,    /* vp_client_close() while the request was waiting */
} VpClientErrorCode;

/** Default request timeout used by callers that do not care (milliseconds). */
#define VP_CLIENT_DEFAULT_TIMEOUT_MS 5000

typedef struct _VpClient VpClient;

/** One ACK from the server, as the callback sees it (valid during the callback;
 *  copy it to keep it). */
typedef struct {
    guint16 type;        /* VP_MSG_MEMORY_INFO_ACK, _DEVICE_INFO_ACK, _FEATURE_BITS_ACK */
    guint64 seq;         /* msg_seq of the request it answers */
    struct vp_ack ack;   /* result (vp_ack_result), feature_bits (FEATURE_BITS_ACK:
                            the accepted bits), reason ("" unless a failure),
                            device_type/device_id (DEVICE_INFO_ACK), positions
                            (DEVICE_INFO_ACK(DEL_DONE): last_avail_idx per queue) */
} VpClientReply;

/**
 * Called once per request. @reply is the ACK when one arrived (also when its result
 * is a failure), NULL otherwise. @error is NULL on success (ADD_DONE / DEL_DONE,
 * or any FEATURE_BITS_ACK whose accepted bits are a subset of the offer); else it
 * says why (VpClientErrorCode). Neither outlives the call.
 */
typedef void (*VpClientAckFunc)(VpClient *client, const VpClientReply *reply,
                                const GError *error, gpointer user_data);

/** Called once when the connection ends (peer closed, socket or framing error,
 *  vp_client_close()); @error says why (DISCONNECTED, PROTOCOL or CANCELLED). */
typedef void (*VpClientClosedFunc)(VpClient *client, const GError *error,
                                   gpointer user_data);

/* ------------------------------ connection ------------------------------ */

/**
 * Connect to the server socket at @path (a UNIX stream socket path) for the driver
 * VM named by @uuid (16 bytes; NULL: a new random one from libuuid). The socket
 * watch is attached to the thread-default GMainContext (the global default when
 * none is pushed). Returns a client with one reference, or NULL with
 * VP_CLIENT_ERROR_IO (the message names the path and strerror).
 */
VpClient *vp_client_connect(const char *path, const guint8 *uuid, GError **error);

/** Like vp_client_connect() over an already connected stream socket @fd, which the
 *  client takes over (it is made non-blocking and closed by the client). */
VpClient *vp_client_new_from_fd(int fd, const guint8 *uuid);

VpClient *vp_client_ref(VpClient *client);
/** Drop a reference; the last one closes the connection as vp_client_close() would
 *  (pending callbacks run with CANCELLED) and frees the client. */
void vp_client_unref(VpClient *client);

/**
 * Close the connection now: every pending request's callback runs with
 * VP_CLIENT_ERROR_CANCELLED, then the closed callback. Idempotent. The client stays
 * allocated until its last reference is dropped; later requests fail with
 * DISCONNECTED.
 */
void vp_client_close(VpClient *client);

/** Move the socket watch and the timeout timer to @context (NULL: the global
 *  default). Pending requests keep their deadlines. */
void vp_client_attach(VpClient *client, GMainContext *context);

/** Register the closed callback (replaces any earlier one). */
void vp_client_set_closed_func(VpClient *client, VpClientClosedFunc func,
                               gpointer user_data);

/** The client_uuid (16 bytes, owned by the client). */
const guint8 *vp_client_get_uuid(VpClient *client);
/** The client_uuid as canonical text into @out (37 bytes with the NUL). */
void vp_client_get_uuid_string(VpClient *client, char out[37]);
/** True until the connection has ended. */
gboolean vp_client_is_connected(VpClient *client);
/** Requests sent and not answered, timed out or cancelled yet. */
guint vp_client_get_pending(VpClient *client);
/** msg_seq the next request will carry (starts at 1, increases by one per request). */
guint64 vp_client_get_next_seq(VpClient *client);
/** Messages from the server that answered nothing (unknown seq, not an ACK, or a
 *  late ACK after its request timed out). */
guint64 vp_client_get_ignored(VpClient *client);

/* ------------------------ requests (asynchronous) ------------------------ */
/*
 * Each sends one message and returns its msg_seq (> 0); the callback runs later,
 * exactly once. On an immediate failure (bad arguments, not connected, send error)
 * returns 0 with @error set and the callback is NOT called.
 * @timeout_ms: time to wait for the ACK; < 0 waits forever.
 */

/** FEATURE_BITS(@features). Alone, on connect and before any memory (DESIGN 4,
 *  "Feature timing"), this asks which bits the server's guest driver supports:
 *  reply->ack.feature_bits are the accepted bits, and nothing more is owed. When a
 *  device already exists for this client_uuid (another connection of the driver
 *  VM made it), the device VM answers, and if it accepted fewer bits the server
 *  waits for the renegotiation round: the caller then renegotiates its frontend
 *  and calls vp_client_confirm_features() (allowed after any FEATURE_BITS_ACK whose
 *  bits differ from the offer; timeouts are not suspended for it). */
guint64 vp_client_send_features(VpClient *client, guint64 features, int timeout_ms,
                                VpClientAckFunc func, gpointer user_data, GError **error);

/** MEMORY_INFO(ADD) of @n regions (1..VP_MAX_REGIONS): guest-physical address, size
 *  and mmap_offset (bytes) and fd of each (the caller's, sent, not closed). */
guint64 vp_client_memory_add(VpClient *client, const struct vp_region *regions, guint n,
                             int timeout_ms, VpClientAckFunc func, gpointer user_data,
                             GError **error);

/** MEMORY_INFO(DEL) of @n regions, named by gpa and size (fds ignored, none sent). */
guint64 vp_client_memory_del(VpClient *client, const struct vp_region *regions, guint n,
                             int timeout_ms, VpClientAckFunc func, gpointer user_data,
                             GError **error);

/** DEVICE_INFO(ADD) of @dev: a new frontend device, or new info (ring addresses,
 *  fds...) for one the server already has (spec 1.6.1.1). dev->op is ignored. The
 *  kick/call fds of the virtqueues (-1: none) are the caller's, sent, not closed. */
guint64 vp_client_device_add(VpClient *client, const struct vp_device_info *dev,
                             int timeout_ms, VpClientAckFunc func, gpointer user_data,
                             GError **error);

/** DEVICE_INFO(DEL) of frontend (@device_type, @device_id). On DEL_DONE
 *  reply->ack.positions holds the last_avail_idx of each of its virtqueues. */
guint64 vp_client_device_del(VpClient *client, guint32 device_type, guint64 device_id,
                             int timeout_ms, VpClientAckFunc func, gpointer user_data,
                             GError **error);

/* ------------------------------ handshake ------------------------------ */

/** Outcome of vp_client_handshake(). have_* says which ACKs arrived. */
typedef struct {
    gboolean have_memory, have_features, have_device;
    VpClientReply memory;     /* MEMORY_INFO_ACK */
    VpClientReply features;   /* FEATURE_BITS_ACK (ack.feature_bits: accepted bits) */
    VpClientReply device;     /* DEVICE_INFO_ACK */
    guint64 offered;          /* the bits sent with FEATURE_BITS */
    guint64 accepted;         /* the bits the device VM accepted */
    gboolean renegotiated;    /* accepted != offered: the round of spec 1.5.1.1 ran */
    guint64 final_features;   /* bits confirmed with FEATURE_BITS_ACK (= offered
                                 when no round was needed) */
} VpClientHandshake;

/**
 * Called when the accepted bits differ from the offered ones (spec 1.5.1.1): the
 * caller resets its frontend and renegotiates @accepted with the frontend's driver,
 * then calls vp_client_confirm_features() with the bits finally negotiated (from
 * this callback or later). While a confirmation is owed, the timeouts of all
 * pending requests are suspended (the server holds them until it gets it).
 */
typedef void (*VpClientRenegotiateFunc)(VpClient *client, guint64 offered,
                                        guint64 accepted, gpointer user_data);

/** Called once when the handshake ends: @result holds every ACK that arrived;
 *  @error is NULL when all three succeeded (and any renegotiation was confirmed),
 *  else the first failure in the order memory, features, device. */
typedef void (*VpClientHandshakeFunc)(VpClient *client, const VpClientHandshake *result,
                                      const GError *error, gpointer user_data);

/**
 * The three-message handshake of spec 1.5.1.1: MEMORY_INFO(ADD) of @regions,
 * FEATURE_BITS(@features), DEVICE_INFO(ADD) of @dev, sent back to back, then wait
 * for the three ACKs (each with @timeout_ms). If the accepted bits differ from
 * @features, @renegotiate runs (NULL: the library confirms the accepted bits
 * itself) and the handshake ends only after vp_client_confirm_features().
 * Returns the msg_seq of the MEMORY_INFO (> 0), or 0 with @error (then neither
 * callback runs; a partial send is reported this way too).
 */
guint64 vp_client_handshake(VpClient *client, const struct vp_region *regions, guint n,
                            guint64 features, const struct vp_device_info *dev,
                            int timeout_ms, VpClientRenegotiateFunc renegotiate,
                            VpClientHandshakeFunc func, gpointer user_data, GError **error);

/**
 * Finish the renegotiation round: send FEATURE_BITS_ACK(@final_features), carrying
 * the msg_seq of the FEATURE_BITS it concludes, after the frontend has
 * renegotiated. @final_features must be a subset of the accepted bits. No ACK
 * answers it. A round is open during a handshake whose accepted bits differed
 * (until confirmed), or after a standalone FEATURE_BITS whose did (until the next
 * round or a confirmation). Returns FALSE with INVALID when no round is open (or
 * the bits are not a subset), IO/DISCONNECTED when the send failed.
 */
gboolean vp_client_confirm_features(VpClient *client, guint64 final_features,
                                    GError **error);

/** TRUE while a handshake's renegotiation round waits for
 *  vp_client_confirm_features() (the round that suspends timeouts). */
gboolean vp_client_renegotiation_pending(VpClient *client);

/* ------------------------- blocking wrappers ------------------------- */
/*
 * Each runs the request on a private GMainContext until its callback ran, and
 * returns TRUE on success. @reply (may be NULL) receives the ACK whenever one
 * arrived, also on a failure result (then reply->ack.reason has the server's
 * reason; check reply->type != 0 to know an ACK arrived). Other requests of this
 * client that complete meanwhile run their callbacks from inside the call.
 */
gboolean vp_client_send_features_sync(VpClient *client, guint64 features, int timeout_ms,
                                      VpClientReply *reply, GError **error);
gboolean vp_client_memory_add_sync(VpClient *client, const struct vp_region *regions,
                                   guint n, int timeout_ms, VpClientReply *reply,
                                   GError **error);
gboolean vp_client_memory_del_sync(VpClient *client, const struct vp_region *regions,
                                   guint n, int timeout_ms, VpClientReply *reply,
                                   GError **error);
gboolean vp_client_device_add_sync(VpClient *client, const struct vp_device_info *dev,
                                   int timeout_ms, VpClientReply *reply, GError **error);
gboolean vp_client_device_del_sync(VpClient *client, guint32 device_type,
                                   guint64 device_id, int timeout_ms,
                                   VpClientReply *reply, GError **error);

/**
 * Blocking handshake. When the accepted bits differ from @features, @renegotiate
 * (may be NULL) is called from inside and must return the bits the frontend
 * finally negotiated (a subset of @accepted); NULL confirms @accepted. @result
 * (may be NULL) gets every ACK that arrived.
 */
typedef guint64 (*VpClientRenegotiateSyncFunc)(guint64 offered, guint64 accepted,
                                               gpointer user_data);
gboolean vp_client_handshake_sync(VpClient *client, const struct vp_region *regions,
                                  guint n, guint64 features,
                                  const struct vp_device_info *dev, int timeout_ms,
                                  VpClientRenegotiateSyncFunc renegotiate,
                                  gpointer user_data, VpClientHandshake *result,
                                  GError **error);

G_END_DECLS

#endif
