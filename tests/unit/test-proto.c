/*
 * test-proto.c - the protocol table (protocol/vp_proto.c): every request names the
 * ACK that answers it and back, who sends what on which leg, which results answer
 * which op, the fd bounds and the states a client's message is allowed in.
 */
#include <string.h>

#include "../testutil.h"
#include "vp_proto.h"

static void test_pairs(void)
{
    unsigned requests = 0, acks = 0;
    for (unsigned t = 0; t < VP_MSG_TYPE_COUNT; t++) {
        const struct vp_msg_rule *r = vp_proto_rule(t);
        g_assert_nonnull(r);
        g_assert_cmpstr(r->name, ==, vp_msg_type_name(t));
        g_assert_true(vp_proto_is_ack(t) == r->is_ack);
        if (r->is_ack) {
            acks++;
            g_assert_cmpint(r->reply, ==, -1);
            g_assert_cmpint(vp_proto_reply_type((unsigned)r->answers), ==, (int)t);
            g_assert_cmpuint(r->max_fds, ==, 0);
        } else {
            requests++;
            g_assert_cmpint(r->answers, ==, -1);
            g_assert_true(vp_proto_is_ack((unsigned)r->reply));
            g_assert_cmpint(vp_proto_rule((unsigned)r->reply)->answers, ==, (int)t);
        }
    }
    g_assert_cmpuint(requests, ==, 3);
    g_assert_cmpuint(acks, ==, 3);
    g_assert_null(vp_proto_rule(VP_MSG_TYPE_COUNT));
    g_assert_null(vp_proto_rule(0xffff));
    g_assert_false(vp_proto_is_ack(VP_MSG_TYPE_COUNT));
    g_assert_cmpint(vp_proto_reply_type(VP_MSG_TYPE_COUNT), ==, -1);
    g_assert_cmpstr(vp_msg_type_name(99), ==, "UNKNOWN");
}

static void test_senders(void)
{
    static const unsigned req[] = { VP_MSG_MEMORY_INFO, VP_MSG_DEVICE_INFO, VP_MSG_FEATURE_BITS };
    for (unsigned i = 0; i < G_N_ELEMENTS(req); i++) {
        unsigned t = req[i], a = (unsigned)vp_proto_reply_type(t);
        /* Requests go downstream, ACKs upstream, on both legs. */
        g_assert_true(vp_proto_sender(t, VP_LEG_SOCKET, VP_FROM_CLIENT));
        g_assert_false(vp_proto_sender(t, VP_LEG_SOCKET, VP_FROM_SERVER));
        g_assert_true(vp_proto_sender(t, VP_LEG_CONTROLQ, VP_FROM_SERVER));
        g_assert_false(vp_proto_sender(t, VP_LEG_CONTROLQ, VP_FROM_DRIVER));
        g_assert_true(vp_proto_sender(a, VP_LEG_SOCKET, VP_FROM_SERVER));
        g_assert_true(vp_proto_sender(a, VP_LEG_CONTROLQ, VP_FROM_DRIVER));
        g_assert_false(vp_proto_sender(a, VP_LEG_CONTROLQ, VP_FROM_SERVER));
    }
    /* The renegotiation round: the client's FEATURE_BITS_ACK, and no other ACK. */
    g_assert_true(vp_proto_sender(VP_MSG_FEATURE_BITS_ACK, VP_LEG_SOCKET, VP_FROM_CLIENT));
    g_assert_false(vp_proto_sender(VP_MSG_MEMORY_INFO_ACK, VP_LEG_SOCKET, VP_FROM_CLIENT));
    g_assert_false(vp_proto_sender(VP_MSG_DEVICE_INFO_ACK, VP_LEG_SOCKET, VP_FROM_CLIENT));
    g_assert_false(vp_proto_sender(VP_MSG_MEMORY_INFO, 2, VP_FROM_CLIENT));
}

static void test_results(void)
{
    static const unsigned with_op[] = { VP_MSG_MEMORY_INFO, VP_MSG_DEVICE_INFO };
    for (unsigned i = 0; i < G_N_ELEMENTS(with_op); i++) {
        unsigned t = with_op[i];
        g_assert_true(vp_proto_result_fits(t, VP_OP_ADD, VP_ACK_ADD_DONE));
        g_assert_true(vp_proto_result_fits(t, VP_OP_ADD, VP_ACK_ADD_FAIL));
        g_assert_false(vp_proto_result_fits(t, VP_OP_ADD, VP_ACK_DEL_DONE));
        g_assert_false(vp_proto_result_fits(t, VP_OP_ADD, VP_ACK_DEL_FAIL));
        g_assert_true(vp_proto_result_fits(t, VP_OP_DEL, VP_ACK_DEL_DONE));
        g_assert_true(vp_proto_result_fits(t, VP_OP_DEL, VP_ACK_DEL_FAIL));
        g_assert_false(vp_proto_result_fits(t, VP_OP_DEL, VP_ACK_ADD_DONE));
        g_assert_false(vp_proto_result_fits(t, VP_OP_ADD, 4));
        g_assert_false(vp_proto_result_fits(t, VP_OP_ADD, UINT64_MAX));
        g_assert_true(vp_proto_result_done(t, VP_OP_ADD, VP_ACK_ADD_DONE));
        g_assert_false(vp_proto_result_done(t, VP_OP_ADD, VP_ACK_ADD_FAIL));
        g_assert_true(vp_proto_result_done(t, VP_OP_DEL, VP_ACK_DEL_DONE));
        g_assert_false(vp_proto_result_done(t, VP_OP_DEL, VP_ACK_ADD_DONE));
    }
    /* FEATURE_BITS has no op: ADD_DONE (bits count) or ADD_FAIL. */
    g_assert_true(vp_proto_result_fits(VP_MSG_FEATURE_BITS, VP_OP_DEL, VP_ACK_ADD_DONE));
    g_assert_true(vp_proto_result_fits(VP_MSG_FEATURE_BITS, 0, VP_ACK_ADD_FAIL));
    g_assert_false(vp_proto_result_fits(VP_MSG_FEATURE_BITS, 0, VP_ACK_DEL_DONE));
    g_assert_true(vp_proto_result_done(VP_MSG_FEATURE_BITS, VP_OP_DEL, VP_ACK_ADD_DONE));
    /* An ACK answers nothing. */
    g_assert_false(vp_proto_result_fits(VP_MSG_MEMORY_INFO_ACK, 0, VP_ACK_ADD_DONE));
    g_assert_false(vp_proto_result_done(VP_MSG_MEMORY_INFO_ACK, 0, VP_ACK_ADD_DONE));
}

static void test_client_states(void)
{
    const struct vp_msg_rule *mi = vp_proto_rule(VP_MSG_MEMORY_INFO);
    const struct vp_msg_rule *di = vp_proto_rule(VP_MSG_DEVICE_INFO);
    const struct vp_msg_rule *fb = vp_proto_rule(VP_MSG_FEATURE_BITS);
    const struct vp_msg_rule *fa = vp_proto_rule(VP_MSG_FEATURE_BITS_ACK);
    g_assert_cmpuint(mi->client_states, ==, VP_ST_ANY);
    g_assert_cmpuint(mi->max_fds, ==, VP_MAX_REGIONS);
    g_assert_cmpuint(di->client_states & VP_ST_NO_DEVICE, ==, 0);
    g_assert_cmpint(di->reject, ==, VP_REJECT_ACK_FAIL);
    g_assert_nonnull(strstr(di->reject_why, "send MEMORY_INFO(ADD) first"));
    g_assert_cmpuint(di->max_fds, ==, VP_MAX_FDS);
    g_assert_cmpuint(fb->client_states, ==, VP_ST_ANY);
    g_assert_cmpuint(fb->max_fds, ==, 0);
    g_assert_cmpuint(fa->client_states, ==, VP_ST_RENEG);
    g_assert_cmpint(fa->reject, ==, VP_REJECT_IGNORE);
    for (unsigned t = VP_MSG_MEMORY_INFO_ACK; t <= VP_MSG_DEVICE_INFO_ACK; t += 2) {
        g_assert_cmpuint(vp_proto_rule(t)->client_states, ==, 0);
        g_assert_cmpint(vp_proto_rule(t)->reject, ==, VP_REJECT_DISCONNECT);
        g_assert_nonnull(strstr(vp_proto_rule(t)->reject_why, "sent by the server"));
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/proto/pairs", test_pairs);
    g_test_add_func("/proto/senders", test_senders);
    g_test_add_func("/proto/results", test_results);
    g_test_add_func("/proto/client-states", test_client_states);
    return g_test_run();
}
