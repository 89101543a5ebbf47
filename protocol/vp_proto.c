/*
 * vp_proto.c - the table of the vhost-pci protocol (vp_proto.h). libc only.
 */
#include "vp_proto.h"

#define ADD_RESULTS (VP_RESULT(VP_ACK_ADD_DONE) | VP_RESULT(VP_ACK_ADD_FAIL))
#define DEL_RESULTS (VP_RESULT(VP_ACK_DEL_DONE) | VP_RESULT(VP_ACK_DEL_FAIL))

static const struct vp_msg_rule rules[VP_MSG_TYPE_COUNT] = {
    [VP_MSG_MEMORY_INFO] = {
        .name = "MEMORY_INFO", .reply = VP_MSG_MEMORY_INFO_ACK, .answers = -1,
        .senders = { VP_FROM_CLIENT, VP_FROM_SERVER }, .has_op = true,
        .results = { ADD_RESULTS, DEL_RESULTS },
        .max_fds = VP_MAX_REGIONS,       /* one per region (ADD), none (DEL) */
        .client_states = VP_ST_ANY, .reject = VP_REJECT_DISCONNECT, .reject_why = "",
    },
    [VP_MSG_MEMORY_INFO_ACK] = {
        .name = "MEMORY_INFO_ACK", .is_ack = true, .reply = -1,
        .answers = VP_MSG_MEMORY_INFO,
        .senders = { VP_FROM_SERVER, VP_FROM_DRIVER },
        .client_states = 0, .reject = VP_REJECT_DISCONNECT,
        .reject_why = "MEMORY_INFO_ACK is sent by the server, not a client",
    },
    [VP_MSG_DEVICE_INFO] = {
        .name = "DEVICE_INFO", .reply = VP_MSG_DEVICE_INFO_ACK, .answers = -1,
        .senders = { VP_FROM_CLIENT, VP_FROM_SERVER }, .has_op = true,
        .results = { ADD_RESULTS, DEL_RESULTS },
        .max_fds = VP_MAX_FDS,           /* kick + call per virtqueue */
        .client_states = VP_ST_DEVICE | VP_ST_RENEG, .reject = VP_REJECT_ACK_FAIL,
        .reject_why = "no vhost-pci device for this client_uuid: send MEMORY_INFO(ADD) first",
    },
    [VP_MSG_DEVICE_INFO_ACK] = {
        .name = "DEVICE_INFO_ACK", .is_ack = true, .reply = -1,
        .answers = VP_MSG_DEVICE_INFO,
        .senders = { VP_FROM_SERVER, VP_FROM_DRIVER },
        .client_states = 0, .reject = VP_REJECT_DISCONNECT,
        .reject_why = "DEVICE_INFO_ACK is sent by the server, not a client",
    },
    [VP_MSG_FEATURE_BITS] = {
        .name = "FEATURE_BITS", .reply = VP_MSG_FEATURE_BITS_ACK, .answers = -1,
        .senders = { VP_FROM_CLIENT, VP_FROM_SERVER },
        .results = { ADD_RESULTS, 0 },   /* the accepted bits count only with ADD_DONE */
        .client_states = VP_ST_ANY, .reject = VP_REJECT_DISCONNECT, .reject_why = "",
    },
    [VP_MSG_FEATURE_BITS_ACK] = {
        .name = "FEATURE_BITS_ACK", .is_ack = true, .reply = -1,
        .answers = VP_MSG_FEATURE_BITS,
        /* The client sends it too: its confirmation in the renegotiation round. */
        .senders = { VP_FROM_SERVER | VP_FROM_CLIENT, VP_FROM_DRIVER },
        .client_states = VP_ST_RENEG, .reject = VP_REJECT_IGNORE,
        .reject_why = "no feature renegotiation is pending",
    },
};

const struct vp_msg_rule *vp_proto_rule(unsigned type)
{
    return type < VP_MSG_TYPE_COUNT ? &rules[type] : 0;
}

bool vp_proto_is_ack(unsigned type)
{
    return type < VP_MSG_TYPE_COUNT && rules[type].is_ack;
}

int vp_proto_reply_type(unsigned type)
{
    return type < VP_MSG_TYPE_COUNT ? rules[type].reply : -1;
}

bool vp_proto_sender(unsigned type, enum vp_leg leg, unsigned sender)
{
    return type < VP_MSG_TYPE_COUNT && (unsigned)leg < 2 && (rules[type].senders[leg] & sender);
}

static unsigned results_of(unsigned type, unsigned op)
{
    if (type >= VP_MSG_TYPE_COUNT || rules[type].is_ack)
        return 0;
    const struct vp_msg_rule *r = &rules[type];
    return r->results[r->has_op && op == VP_OP_DEL ? 1 : 0];
}

bool vp_proto_result_fits(unsigned type, unsigned op, uint64_t result)
{
    return result < 32 && (results_of(type, op) & VP_RESULT(result));
}

bool vp_proto_result_done(unsigned type, unsigned op, uint64_t result)
{
    const struct vp_msg_rule *r = vp_proto_rule(type);
    if (!r || r->is_ack)
        return false;
    return result == (r->has_op && op == VP_OP_DEL ? VP_ACK_DEL_DONE : VP_ACK_ADD_DONE);
}
