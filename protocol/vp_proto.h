/*
 * vp_proto.h - the vhost-pci protocol described once (DESIGN sections 4-5, spec
 * 1.5/1.6): for each message type, who may send it on which leg, which message
 * answers it, which ACK results answer which op, how many fds it may carry on the
 * socket, and in which states of the server's view of a client it is allowed. Every
 * component consults this table instead of knowing the protocol itself:
 *
 *   server   session.c's dispatch (states, fd bound, what to do otherwise),
 *            cq_dev.c's ACK matching, the jobs' reply types
 *   protocol vp_msg.c (which types are ACKs, framing checks)
 *   client   the client library's ACK matching (vp_proto_reply_type,
 *            vp_proto_result_fits, vp_proto_result_done)
 *   guestd   which controlq messages the server may send (vp_proto_sender with
 *            VP_LEG_CONTROLQ, VP_FROM_SERVER), the ACK results it may give
 *
 * The two legs carry the same message types: a request travels downstream (client
 * -> server on the socket, server -> guest driver on the controlq) and its ACK
 * upstream. One exception: in the renegotiation round (spec 1.5.1.1) the client
 * sends FEATURE_BITS_ACK to the server.
 *
 * libc only (the guest driver links it). The table is constant; no state.
 */
#ifndef VP_PROTO_H
#define VP_PROTO_H

#include <stdbool.h>
#include <stdint.h>

#include "vp_wire.h"

/** The two legs of the protocol. */
enum vp_leg {
    VP_LEG_SOCKET = 0,                   /* client <-> server (DESIGN section 4) */
    VP_LEG_CONTROLQ = 1,                 /* server <-> guest driver (DESIGN section 5) */
};

/** Senders (a bit set). */
enum {
    VP_FROM_CLIENT = 1u << 0,
    VP_FROM_SERVER = 1u << 1,
    VP_FROM_DRIVER = 1u << 2,
};

/** The server's view of one client_uuid when a message of it arrives (a bit set). */
enum {
    VP_ST_NO_DEVICE = 1u << 0,           /* no vhost-pci device for this uuid yet */
    VP_ST_DEVICE = 1u << 1,              /* a device exists */
    VP_ST_RENEG = 1u << 2,               /* a device waits for the client's FEATURE_BITS_ACK */
    VP_ST_ANY = VP_ST_NO_DEVICE | VP_ST_DEVICE | VP_ST_RENEG,
};

/** What the server does with a client's message outside its allowed states. */
enum vp_reject {
    VP_REJECT_DISCONNECT,                /* a protocol violation: drop that client */
    VP_REJECT_ACK_FAIL,                  /* answer its *_ACK with ADD_FAIL/DEL_FAIL, why */
    VP_REJECT_IGNORE,                    /* count it as a bad message, log, ignore */
};

/** Bit of ACK result @r in a results mask. */
#define VP_RESULT(r) (1u << (r))

/** One message type. */
struct vp_msg_rule {
    const char *name;                    /* "MEMORY_INFO" */
    bool is_ack;
    int reply;                           /* request: the *_ACK type that answers it; -1 */
    int answers;                         /* ACK: the request type it answers; -1 */
    unsigned senders[2];                 /* by enum vp_leg: VP_FROM_* */
    bool has_op;                         /* carries ADD/DEL (MEMORY_INFO, DEVICE_INFO) */
    unsigned results[2];                 /* request: ACK results allowed, by op (ADD, DEL);
                                            a request without op uses [VP_OP_ADD] */
    unsigned max_fds;                    /* socket: fds it may carry (the decoder checks
                                            the exact count the payload names) */
    unsigned client_states;              /* VP_ST_*: when a client may send it */
    enum vp_reject reject;               /* a client's message outside them */
    const char *reject_why;              /* the reason given then */
};

/** The rule of message type @type, or NULL when it is not a known type. */
const struct vp_msg_rule *vp_proto_rule(unsigned type);

/** True when @type is one of the *_ACK types. */
bool vp_proto_is_ack(unsigned type);

/** The ACK type answering request @type, or -1 (an ACK, an unknown type). */
int vp_proto_reply_type(unsigned type);

/** True when @sender (a VP_FROM_* bit) may send @type on @leg. */
bool vp_proto_sender(unsigned type, enum vp_leg leg, unsigned sender);

/** True when an ACK with @result may answer request @type with @op (ignored for a
 *  request without op). */
bool vp_proto_result_fits(unsigned type, unsigned op, uint64_t result);

/** True when @result of an ACK answering request @type with @op means success
 *  (ADD_DONE for ADD and FEATURE_BITS, DEL_DONE for DEL). */
bool vp_proto_result_done(unsigned type, unsigned op, uint64_t result);

#endif
