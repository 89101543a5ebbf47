/*
 * test-client-lib.c - libvhostpci-client against a scripted fake server on a
 * socketpair (no server process): msg_seq and client_uuid on the wire, ACKs matched
 * by seq in any order, timeouts and late ACKs, failure reasons, the renegotiation
 * round, disconnects, protocol violations by the server, fd ownership, and the
 * blocking wrappers (fake server in a thread).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "vpclient.h"

/* ------------------------------ helpers ------------------------------ */

typedef struct {
    int calls;
    gboolean have_reply;
    VpClientReply reply;
    GError *error;
} Got;

static void got_cb(VpClient *c, const VpClientReply *reply, const GError *error,
                   gpointer data)
{
    (void)c;
    Got *g = data;
    g->calls++;
    g->have_reply = reply != NULL;
    if (reply)
        g->reply = *reply;
    g_clear_error(&g->error);
    if (error)
        g->error = g_error_copy(error);
}

static void got_clear(Got *g)
{
    g_clear_error(&g->error);
    memset(g, 0, sizeof(*g));
}

/* Iterate the default context until *@cond is nonzero; fail after @ms. */
static void run_until(const int *cond, int ms)
{
    VP_SPIN_UNTIL(*cond, (guint)ms);
    g_assert_true(*cond);
}

/* Iterate whatever is ready now, without blocking. */
static void run_pending(void)
{
    while (g_main_context_iteration(NULL, FALSE))
        ;
}

static const guint8 test_uuid[16] = { 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef,
                                       0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef };

typedef struct {
    int srv;             /* the fake server's end */
    VpClient *client;
    int fds_before;
} Fake;

static void fake_setup(Fake *f)
{
    f->fds_before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    f->srv = sv[1];
    f->client = vp_client_new_from_fd(sv[0], test_uuid);
    g_assert_nonnull(f->client);
}

static void fake_teardown(Fake *f)
{
    vp_client_unref(f->client);
    vp_close_fd(&f->srv);
    run_pending();
    vp_assert_fds(f->fds_before);
}

/* Receive the next request at the fake server. */
static void srv_recv(Fake *f, struct vp_msg *msg, guint16 type)
{
    vp_error err = { { 0 } };
    int ret = vp_msg_recv(f->srv, msg, 2000, &err);
    if (ret != 1)
        g_error("fake server: recv: %d %s", ret, err.msg);
    g_assert_cmpuint(msg->hdr.type, ==, type);
    g_assert_cmpmem(msg->hdr.uuid, 16, test_uuid, 16);
    g_assert_cmpuint(msg->hdr.version, ==, VP_MSG_VERSION);
}

static void srv_ack(Fake *f, guint16 type, guint64 seq, const struct vp_ack *ack)
{
    struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = seq };
    memcpy(h.uuid, test_uuid, 16);
    g_assert_cmpint(vp_send_ack(f->srv, type, &h, ack), ==, 0);
}

static void srv_ack_simple(Fake *f, guint16 type, guint64 seq, guint64 result,
                           const char *reason)
{
    struct vp_ack ack = { .result = result };
    if (reason)
        g_strlcpy(ack.reason, reason, sizeof(ack.reason));
    srv_ack(f, type, seq, &ack);
}

static void make_net_device(struct vp_device_info *di, guint64 id, int kick, int call)
{
    vp_device_info_init(di);
    di->device_type = VP_DEV_NET;
    di->device_id = id;
    di->nvirtqs = 2;
    for (unsigned i = 0; i < 2; i++) {
        struct vp_virtq *q = &di->virtqs[i];
        q->index = i;
        q->num = 256;
        q->desc = 0x100000 + i * 0x10000;
        q->avail = q->desc + 0x1000;
        q->used = q->desc + 0x2000;
        q->kick_fd = kick;
        q->call_fd = call;
    }
}

/* ------------------------------ tests ------------------------------ */

/* seq starts at 1 and increases; the uuid travels in every header; ACKs in any
 * order reach the request they name. */
static void test_seq_and_matching(void)
{
    Fake f;
    fake_setup(&f);
    char text[37];
    vp_client_get_uuid_string(f.client, text);
    g_assert_cmpstr(text, ==, "12345678-9abc-4def-8123-456789abcdef");
    g_assert_cmpuint(vp_client_get_next_seq(f.client), ==, 1);

    Got a = { 0 }, b = { 0 };
    GError *e = NULL;
    guint64 s1 = vp_client_send_features(f.client, VP_NET_FEATURES, 1000, got_cb, &a, &e);
    g_assert_no_error(e);
    guint64 s2 = vp_client_device_del(f.client, VP_DEV_NET, 7, 1000, got_cb, &b, &e);
    g_assert_no_error(e);
    g_assert_cmpuint(s1, ==, 1);
    g_assert_cmpuint(s2, ==, 2);
    g_assert_cmpuint(vp_client_get_pending(f.client), ==, 2);

    struct vp_msg m1, m2;
    srv_recv(&f, &m1, VP_MSG_FEATURE_BITS);
    srv_recv(&f, &m2, VP_MSG_DEVICE_INFO);
    g_assert_cmpuint(m1.hdr.seq, ==, 1);
    g_assert_cmpuint(m2.hdr.seq, ==, 2);
    guint64 bits;
    vp_error err = { { 0 } };
    g_assert_cmpint(vp_decode_feature_bits(&m1, &bits, &err), ==, 0);
    g_assert_cmphex(bits, ==, VP_NET_FEATURES);
    struct vp_device_info *di = g_new(struct vp_device_info, 1);
    g_assert_cmpint(vp_decode_device_info(&m2, di, &err), ==, 0);
    g_assert_cmpuint(di->op, ==, VP_OP_DEL);
    g_assert_cmpuint(di->device_id, ==, 7);
    g_free(di);
    vp_msg_clear(&m1);
    vp_msg_clear(&m2);

    /* Answer the second first. */
    struct vp_ack ack = { .result = VP_ACK_DEL_DONE, .device_type = VP_DEV_NET,
                          .device_id = 7, .npositions = 2 };
    ack.positions[0] = (struct vp_virtq_pos){ 0, 17 };
    ack.positions[1] = (struct vp_virtq_pos){ 1, 65535 };
    srv_ack(&f, VP_MSG_DEVICE_INFO_ACK, 2, &ack);
    run_until(&b.calls, 2000);
    g_assert_cmpint(a.calls, ==, 0);
    g_assert_no_error(b.error);
    g_assert_true(b.have_reply);
    g_assert_cmpuint(b.reply.seq, ==, 2);
    g_assert_cmpuint(b.reply.ack.npositions, ==, 2);
    g_assert_cmpuint(b.reply.ack.positions[0].last_avail_idx, ==, 17);
    g_assert_cmpuint(b.reply.ack.positions[1].last_avail_idx, ==, 65535);

    struct vp_ack fa = { .feature_bits = VP_NET_FEATURES & ~(1ULL << VP_VIRTIO_NET_F_MAC) };
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 1, &fa);
    run_until(&a.calls, 2000);
    g_assert_no_error(a.error);
    g_assert_cmphex(a.reply.ack.feature_bits, ==, fa.feature_bits);
    g_assert_cmpuint(vp_client_get_pending(f.client), ==, 0);
    g_assert_cmpuint(vp_client_get_next_seq(f.client), ==, 3);
    /* A standalone FEATURE_BITS suspends nothing, but fewer accepted bits may be
     * confirmed (the server waits for it when the device already exists). */
    g_assert_false(vp_client_renegotiation_pending(f.client));
    g_assert_false(vp_client_confirm_features(f.client, VP_NET_FEATURES, &e));
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID);
    g_clear_error(&e);
    g_assert_true(vp_client_confirm_features(f.client, fa.feature_bits, &e));
    g_assert_no_error(e);
    srv_recv(&f, &m1, VP_MSG_FEATURE_BITS_ACK);
    g_assert_cmpuint(m1.hdr.seq, ==, 1);
    struct vp_ack conf;
    g_assert_cmpint(vp_decode_ack(&m1, &conf, &err), ==, 0);
    g_assert_cmphex(conf.feature_bits, ==, fa.feature_bits);
    vp_msg_clear(&m1);
    g_assert_false(vp_client_confirm_features(f.client, fa.feature_bits, &e));
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID);
    g_clear_error(&e);
    g_assert_cmpuint(vp_client_get_next_seq(f.client), ==, 3);
    got_clear(&a);
    got_clear(&b);
    fake_teardown(&f);
}

/* A failure result reaches the caller with the server's reason. */
static void test_rejected_reason(void)
{
    Fake f;
    fake_setup(&f);
    int mfd = vp_test_memfd("r", 1 << 20, TRUE);
    struct vp_region r = { .gpa = 0x40000000, .size = 1 << 20, .mmap_offset = 0, .fd = mfd };
    Got g = { 0 };
    GError *e = NULL;
    g_assert_cmpuint(vp_client_memory_add(f.client, &r, 1, 1000, got_cb, &g, &e), ==, 1);
    g_assert_no_error(e);

    struct vp_msg m;
    srv_recv(&f, &m, VP_MSG_MEMORY_INFO);
    g_assert_cmpuint(m.nfds, ==, 1);
    vp_msg_clear(&m);
    srv_ack_simple(&f, VP_MSG_MEMORY_INFO_ACK, 1, VP_ACK_ADD_FAIL, "window size 3 MiB is not a power of two");
    run_until(&g.calls, 2000);
    g_assert_error(g.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_REJECTED);
    g_assert_nonnull(strstr(g.error->message, "window size 3 MiB is not a power of two"));
    g_assert_nonnull(strstr(g.error->message, "ADD_FAIL"));
    g_assert_true(g.have_reply);
    g_assert_cmpuint(g.reply.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_cmpstr(g.reply.ack.reason, ==, "window size 3 MiB is not a power of two");
    /* The caller's memfd is still open: the library did not close it. */
    g_assert_cmpint(fcntl(mfd, F_GETFD), >=, 0);
    vp_close_fd(&mfd);
    got_clear(&g);
    fake_teardown(&f);
}

/* No ACK within the timeout: TIMEOUT; the late ACK is ignored and counted. */
static void test_timeout_and_late_ack(void)
{
    Fake f;
    fake_setup(&f);
    Got g = { 0 };
    GError *e = NULL;
    gint64 t0 = g_get_monotonic_time();
    g_assert_cmpuint(vp_client_send_features(f.client, 1, 100, got_cb, &g, &e), ==, 1);
    run_until(&g.calls, 3000);
    gint64 waited = (g_get_monotonic_time() - t0) / 1000;
    g_assert_cmpint(waited, >=, 100);
    g_assert_error(g.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_TIMEOUT);
    g_assert_nonnull(strstr(g.error->message, "no FEATURE_BITS_ACK for FEATURE_BITS seq 1"));
    g_assert_false(g.have_reply);

    struct vp_msg m;
    srv_recv(&f, &m, VP_MSG_FEATURE_BITS);
    vp_msg_clear(&m);
    struct vp_ack fa = { .feature_bits = 1 };
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 1, &fa);
    /* A second request proves the late ACK has been read and skipped. */
    Got h = { 0 };
    g_assert_cmpuint(vp_client_send_features(f.client, 2, 1000, got_cb, &h, &e), ==, 2);
    srv_recv(&f, &m, VP_MSG_FEATURE_BITS);
    vp_msg_clear(&m);
    fa.feature_bits = 2;
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 2, &fa);
    run_until(&h.calls, 2000);
    g_assert_no_error(h.error);
    g_assert_cmpint(g.calls, ==, 1);
    g_assert_cmpuint(vp_client_get_ignored(f.client), ==, 1);
    got_clear(&g);
    got_clear(&h);
    fake_teardown(&f);
}

/* ACKs that do not fit their request are protocol errors, not successes. */
static void test_server_protocol_violations(void)
{
    Fake f;
    fake_setup(&f);
    Got a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    GError *e = NULL;
    vp_client_send_features(f.client, 0x3, 1000, got_cb, &a, &e);
    vp_client_device_del(f.client, VP_DEV_NET, 1, 1000, got_cb, &b, &e);
    vp_client_device_del(f.client, VP_DEV_NET, 2, 1000, got_cb, &c, &e);
    vp_client_device_del(f.client, VP_DEV_NET, 3, 1000, got_cb, &d, &e);
    g_assert_no_error(e);
    for (int i = 0; i < 4; i++) {
        struct vp_msg m;
        srv_recv(&f, &m, i == 0 ? VP_MSG_FEATURE_BITS : VP_MSG_DEVICE_INFO);
        vp_msg_clear(&m);
    }
    struct vp_ack fa = { .feature_bits = 0x7 };         /* bit 2 was not offered */
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 1, &fa);
    srv_ack_simple(&f, VP_MSG_MEMORY_INFO_ACK, 2, VP_ACK_DEL_DONE, NULL); /* wrong type */
    struct vp_ack wrongdev = { .result = VP_ACK_DEL_DONE, .device_type = VP_DEV_NET,
                               .device_id = 99 };
    srv_ack(&f, VP_MSG_DEVICE_INFO_ACK, 3, &wrongdev);
    struct vp_ack wrongres = { .result = VP_ACK_ADD_DONE, .device_type = VP_DEV_NET,
                               .device_id = 3 };       /* ADD_DONE answering a DEL */
    srv_ack(&f, VP_MSG_DEVICE_INFO_ACK, 4, &wrongres);
    /* Not an ACK at all, and an ACK for a seq never sent: ignored. */
    struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = 5 };
    g_assert_cmpint(vp_send_feature_bits(f.srv, &h, 1), ==, 0);
    srv_ack_simple(&f, VP_MSG_MEMORY_INFO_ACK, 1000, VP_ACK_ADD_DONE, NULL);
    run_until(&d.calls, 2000);
    run_pending();

    g_assert_error(a.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL);
    g_assert_nonnull(strstr(a.error->message, "not offered"));
    g_assert_error(b.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL);
    g_assert_nonnull(strstr(b.error->message, "with MEMORY_INFO_ACK"));
    g_assert_error(c.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL);
    g_assert_nonnull(strstr(c.error->message, "names device net/99"));
    g_assert_error(d.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL);
    g_assert_nonnull(strstr(d.error->message, "ADD_DONE"));
    g_assert_cmpuint(vp_client_get_ignored(f.client), ==, 2);
    g_assert_true(vp_client_is_connected(f.client));
    got_clear(&a);
    got_clear(&b);
    got_clear(&c);
    got_clear(&d);
    fake_teardown(&f);
}

typedef struct {
    int calls;
    GError *error;
} Closed;

static void closed_cb(VpClient *c, const GError *error, gpointer data)
{
    (void)c;
    Closed *cl = data;
    cl->calls++;
    g_clear_error(&cl->error);
    cl->error = g_error_copy(error);
}

/* The server goes away: pending requests fail with DISCONNECTED, closed runs once,
 * later requests fail at once. Framing garbage from the server also ends it. */
static void test_disconnect(void)
{
    Fake f;
    fake_setup(&f);
    Closed cl = { 0 };
    vp_client_set_closed_func(f.client, closed_cb, &cl);
    Got g = { 0 };
    GError *e = NULL;
    vp_client_send_features(f.client, 1, -1, got_cb, &g, &e);
    g_assert_no_error(e);
    vp_close_fd(&f.srv);
    run_until(&g.calls, 2000);
    g_assert_error(g.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_DISCONNECTED);
    /* EOF, or ECONNRESET: the request was still unread in the server's buffer. */
    g_assert_nonnull(strstr(g.error->message, "connection to the server ended"));
    g_assert_cmpint(cl.calls, ==, 1);
    g_assert_false(vp_client_is_connected(f.client));
    g_assert_cmpuint(vp_client_send_features(f.client, 1, 100, got_cb, &g, &e), ==, 0);
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_DISCONNECTED);
    g_clear_error(&e);
    g_assert_cmpint(g.calls, ==, 1);
    got_clear(&g);
    g_clear_error(&cl.error);
    fake_teardown(&f);

    /* A header with a bad version from the server: PROTOCOL. */
    fake_setup(&f);
    vp_client_set_closed_func(f.client, closed_cb, &cl);
    cl.calls = 0;
    vp_client_send_features(f.client, 1, 1000, got_cb, &g, &e);
    uint8_t junk[VP_SOCK_HDR_SIZE] = { 1, 0, 9, 0 };
    g_assert_cmpint(write(f.srv, junk, sizeof(junk)), ==, sizeof(junk));
    run_until(&g.calls, 2000);
    g_assert_error(g.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL);
    g_assert_cmpint(cl.calls, ==, 1);
    g_assert_error(cl.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_PROTOCOL);
    got_clear(&g);
    g_clear_error(&cl.error);
    fake_teardown(&f);
}

/* vp_client_close() cancels; closing from inside a callback is safe. */
static void close_in_cb(VpClient *c, const VpClientReply *reply, const GError *error,
                        gpointer data)
{
    got_cb(c, reply, error, data);
    vp_client_close(c);
}

static void test_close_cancels(void)
{
    Fake f;
    fake_setup(&f);
    Got a = { 0 }, b = { 0 };
    GError *e = NULL;
    vp_client_send_features(f.client, 1, 1000, close_in_cb, &a, &e);
    vp_client_send_features(f.client, 2, 1000, got_cb, &b, &e);
    struct vp_ack fa = { .feature_bits = 1 };
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 1, &fa);
    run_until(&a.calls, 2000);
    /* The first callback closed the client: the second was cancelled. */
    g_assert_no_error(a.error);
    g_assert_cmpint(b.calls, ==, 1);
    g_assert_error(b.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_CANCELLED);
    got_clear(&a);
    got_clear(&b);
    fake_teardown(&f);
}

/* The handshake: three messages back to back, three ACKs; accepted != offered runs
 * the renegotiation round, whose FEATURE_BITS_ACK carries the FEATURE_BITS' seq
 * and the final bits; timeouts are suspended while the round is open. */
typedef struct {
    int reneg_calls, done_calls;
    guint64 offered, accepted;
    gboolean have_result;
    VpClientHandshake result;
    GError *error;
} HsGot;

static void hs_reneg_cb(VpClient *c, guint64 offered, guint64 accepted, gpointer data)
{
    (void)c;
    HsGot *h = data;
    h->reneg_calls++;
    h->offered = offered;
    h->accepted = accepted;
}

static void hs_done_cb(VpClient *c, const VpClientHandshake *res, const GError *error,
                       gpointer data)
{
    (void)c;
    HsGot *h = data;
    h->done_calls++;
    h->result = *res;
    if (error)
        h->error = g_error_copy(error);
}

static void test_handshake_renegotiation(void)
{
    Fake f;
    fake_setup(&f);
    int mfd = vp_test_memfd("ram", 1 << 20, TRUE);
    int kick = vp_test_memfd("kick", 4096, FALSE), call = vp_test_memfd("call", 4096, FALSE);
    int before = vp_count_open_fds();
    struct vp_region r = { .gpa = 0, .size = 1 << 20, .fd = mfd };
    struct vp_device_info *di = g_new(struct vp_device_info, 1);
    make_net_device(di, 1, kick, call);
    HsGot h = { 0 };
    GError *e = NULL;
    guint64 offer = VP_NET_FEATURES | (1ULL << VP_VIRTIO_NET_F_CSUM);
    g_assert_cmpuint(vp_client_handshake(f.client, &r, 1, offer, di, 200, hs_reneg_cb,
                                         hs_done_cb, &h, &e), ==, 1);
    g_assert_no_error(e);
    g_free(di);

    struct vp_msg m;
    srv_recv(&f, &m, VP_MSG_MEMORY_INFO);
    g_assert_cmpuint(m.hdr.seq, ==, 1);
    g_assert_cmpuint(m.nfds, ==, 1);
    vp_msg_clear(&m);
    srv_recv(&f, &m, VP_MSG_FEATURE_BITS);
    g_assert_cmpuint(m.hdr.seq, ==, 2);
    vp_msg_clear(&m);
    srv_recv(&f, &m, VP_MSG_DEVICE_INFO);
    g_assert_cmpuint(m.hdr.seq, ==, 3);
    g_assert_cmpuint(m.nfds, ==, 4);
    vp_msg_clear(&m);
    /* Received fds closed again: only the caller's remain. */
    vp_assert_fds(before);

    srv_ack_simple(&f, VP_MSG_MEMORY_INFO_ACK, 1, VP_ACK_ADD_DONE, NULL);
    struct vp_ack fa = { .feature_bits = VP_NET_FEATURES };
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 2, &fa);
    run_until(&h.reneg_calls, 2000);
    g_assert_cmphex(h.offered, ==, offer);
    g_assert_cmphex(h.accepted, ==, VP_NET_FEATURES);
    g_assert_true(vp_client_renegotiation_pending(f.client));
    g_assert_cmpint(h.done_calls, ==, 0);

    /* The 200 ms timeouts are suspended while the frontend renegotiates. */
    gboolean waited = FALSE;
    g_timeout_add(400, vp_test_set_flag, &waited);
    run_until(&waited, 2000);
    g_assert_cmpint(h.done_calls, ==, 0);
    g_assert_cmpuint(vp_client_get_pending(f.client), ==, 1);

    /* Bits outside the accepted set are refused. */
    g_assert_false(vp_client_confirm_features(f.client, offer, &e));
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID);
    g_clear_error(&e);
    guint64 final = VP_NET_FEATURES & ~(1ULL << VP_VIRTIO_NET_F_STATUS);
    g_assert_true(vp_client_confirm_features(f.client, final, &e));
    g_assert_no_error(e);
    g_assert_false(vp_client_confirm_features(f.client, final, &e));
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID);
    g_clear_error(&e);

    srv_recv(&f, &m, VP_MSG_FEATURE_BITS_ACK);
    g_assert_cmpuint(m.hdr.seq, ==, 2);
    struct vp_ack got;
    vp_error err = { { 0 } };
    g_assert_cmpint(vp_decode_ack(&m, &got, &err), ==, 0);
    g_assert_cmphex(got.feature_bits, ==, final);
    vp_msg_clear(&m);
    g_assert_cmpuint(vp_client_get_next_seq(f.client), ==, 4);

    struct vp_ack da = { .result = VP_ACK_ADD_DONE, .device_type = VP_DEV_NET, .device_id = 1 };
    srv_ack(&f, VP_MSG_DEVICE_INFO_ACK, 3, &da);
    run_until(&h.done_calls, 2000);
    g_assert_no_error(h.error);
    g_assert_true(h.result.have_memory && h.result.have_features && h.result.have_device);
    g_assert_true(h.result.renegotiated);
    g_assert_cmphex(h.result.final_features, ==, final);
    g_assert_cmphex(h.result.accepted, ==, VP_NET_FEATURES);
    g_assert_cmpuint(h.result.device.seq, ==, 3);

    vp_close_fd(&mfd);
    vp_close_fd(&kick);
    vp_close_fd(&call);
    fake_teardown(&f);
}

/* A handshake whose device ACK fails reports it, with all three ACKs visible; a
 * handshake whose DEVICE_INFO_ACK never comes times out. */
static void test_handshake_failures(void)
{
    Fake f;
    fake_setup(&f);
    int mfd = vp_test_memfd("ram", 1 << 20, TRUE);
    struct vp_region r = { .gpa = 0, .size = 1 << 20, .fd = mfd };
    struct vp_device_info *di = g_new(struct vp_device_info, 1);
    make_net_device(di, 5, -1, -1);
    di->device_type = VP_DEV_BLK;
    HsGot h = { 0 };
    GError *e = NULL;
    vp_client_handshake(f.client, &r, 1, 0x1, di, 1000, NULL, hs_done_cb, &h, &e);
    g_assert_no_error(e);
    static const guint16 order[] = { VP_MSG_MEMORY_INFO, VP_MSG_FEATURE_BITS,
                                     VP_MSG_DEVICE_INFO };
    for (guint i = 0; i < G_N_ELEMENTS(order); i++) {
        struct vp_msg m;
        srv_recv(&f, &m, order[i]);
        vp_msg_clear(&m);
    }
    struct vp_ack da = { .result = VP_ACK_ADD_FAIL, .device_type = VP_DEV_BLK, .device_id = 5 };
    g_strlcpy(da.reason, "device type blk not supported by vhost-pci-guestd", sizeof(da.reason));
    srv_ack(&f, VP_MSG_DEVICE_INFO_ACK, 3, &da);
    srv_ack_simple(&f, VP_MSG_MEMORY_INFO_ACK, 1, VP_ACK_ADD_DONE, NULL);
    struct vp_ack fa = { .feature_bits = 0x1 };
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 2, &fa);
    run_until(&h.done_calls, 2000);
    g_assert_error(h.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_REJECTED);
    g_assert_nonnull(strstr(h.error->message, "device type blk not supported"));
    g_assert_false(h.result.renegotiated);
    g_assert_cmphex(h.result.final_features, ==, 0x1);
    g_assert_cmpuint(h.result.device.ack.result, ==, VP_ACK_ADD_FAIL);
    g_clear_error(&h.error);

    memset(&h, 0, sizeof(h));
    di->device_type = VP_DEV_NET;
    vp_client_handshake(f.client, &r, 1, 0x1, di, 150, NULL, hs_done_cb, &h, &e);
    g_assert_no_error(e);
    srv_ack_simple(&f, VP_MSG_MEMORY_INFO_ACK, 4, VP_ACK_ADD_DONE, NULL);
    srv_ack(&f, VP_MSG_FEATURE_BITS_ACK, 5, &fa);
    run_until(&h.done_calls, 2000);
    g_assert_error(h.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_TIMEOUT);
    g_assert_nonnull(strstr(h.error->message, "no DEVICE_INFO_ACK"));
    g_assert_true(h.result.have_memory && h.result.have_features);
    g_assert_false(h.result.have_device);
    g_clear_error(&h.error);
    g_free(di);
    vp_close_fd(&mfd);
    fake_teardown(&f);
}

/* Bad arguments fail at once with INVALID and run no callback. */
static void test_invalid_arguments(void)
{
    Fake f;
    fake_setup(&f);
    Got g = { 0 };
    GError *e = NULL;
    struct vp_region r = { .gpa = 0, .size = 4096, .fd = -1 };
    g_assert_cmpuint(vp_client_memory_add(f.client, &r, 1, 100, got_cb, &g, &e), ==, 0);
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID);
    g_assert_nonnull(strstr(e->message, "has no fd"));
    g_clear_error(&e);
    g_assert_cmpuint(vp_client_memory_add(f.client, &r, 0, 100, got_cb, &g, &e), ==, 0);
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID);
    g_clear_error(&e);
    g_assert_false(vp_client_confirm_features(f.client, 1, &e));
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_INVALID);
    g_clear_error(&e);
    /* DEL needs no fd. */
    g_assert_cmpuint(vp_client_memory_del(f.client, &r, 1, 100, got_cb, &g, &e), ==, 1);
    g_assert_no_error(e);
    struct vp_msg m;
    srv_recv(&f, &m, VP_MSG_MEMORY_INFO);
    g_assert_cmpuint(m.nfds, ==, 0);
    vp_msg_clear(&m);
    run_until(&g.calls, 2000); /* times out */
    g_assert_error(g.error, VP_CLIENT_ERROR, VP_CLIENT_ERROR_TIMEOUT);
    got_clear(&g);
    fake_teardown(&f);
}

/* ---------------------- blocking wrappers (server thread) ---------------------- */

static gpointer sync_server(gpointer data)
{
    Fake *f = data;
    struct vp_msg m;
    vp_error err = { { 0 } };
    /* 1: features; 2..4: handshake with a renegotiation; 5: memory del rejected. */
    while (vp_msg_recv(f->srv, &m, 5000, &err) == 1) {
        guint64 seq = m.hdr.seq;
        guint16 type = m.hdr.type;
        vp_msg_clear(&m);
        struct vp_ack a = { 0 };
        switch (type) {
        case VP_MSG_FEATURE_BITS:
            a.feature_bits = seq == 1 ? 0x5 : 0x1;
            srv_ack(f, VP_MSG_FEATURE_BITS_ACK, seq, &a);
            break;
        case VP_MSG_MEMORY_INFO:
            srv_ack_simple(f, VP_MSG_MEMORY_INFO_ACK, seq,
                           seq == 2 ? VP_ACK_ADD_DONE : VP_ACK_DEL_FAIL,
                           seq == 2 ? NULL : "no region at gpa 0x0");
            break;
        case VP_MSG_FEATURE_BITS_ACK:
            /* The round is over: now answer the held DEVICE_INFO. */
            a.result = VP_ACK_ADD_DONE;
            a.device_type = VP_DEV_NET;
            a.device_id = 1;
            srv_ack(f, VP_MSG_DEVICE_INFO_ACK, 4, &a);
            break;
        default:
            break; /* DEVICE_INFO held until the round ends */
        }
    }
    return NULL;
}

static guint64 sync_reneg(guint64 offered, guint64 accepted, gpointer data)
{
    (void)offered;
    (*(int *)data)++;
    return accepted;
}

static void test_sync_wrappers(void)
{
    Fake f;
    fake_setup(&f);
    GThread *t = g_thread_new("fake-server", sync_server, &f);
    VpClientReply reply;
    GError *e = NULL;
    g_assert_true(vp_client_send_features_sync(f.client, 0x7, 2000, &reply, &e));
    g_assert_no_error(e);
    g_assert_cmphex(reply.ack.feature_bits, ==, 0x5);

    int mfd = vp_test_memfd("ram", 1 << 20, TRUE);
    struct vp_region r = { .gpa = 0, .size = 1 << 20, .fd = mfd };
    struct vp_device_info *di = g_new(struct vp_device_info, 1);
    make_net_device(di, 1, -1, -1);
    VpClientHandshake res;
    int reneg_calls = 0;
    g_assert_true(vp_client_handshake_sync(f.client, &r, 1, 0x3, di, 2000, sync_reneg,
                                           &reneg_calls, &res, &e));
    g_assert_no_error(e);
    g_assert_cmpint(reneg_calls, ==, 1);
    g_assert_true(res.renegotiated);
    g_assert_cmphex(res.final_features, ==, 0x1);
    g_assert_cmpuint(res.device.ack.result, ==, VP_ACK_ADD_DONE);
    g_free(di);

    g_assert_false(vp_client_memory_del_sync(f.client, &r, 1, 2000, &reply, &e));
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_REJECTED);
    g_assert_nonnull(strstr(e->message, "no region at gpa 0x0"));
    g_assert_cmpuint(reply.type, ==, VP_MSG_MEMORY_INFO_ACK);
    g_assert_cmpuint(reply.ack.result, ==, VP_ACK_DEL_FAIL);
    g_clear_error(&e);

    /* Timeout of a blocking call. */
    g_assert_false(vp_client_device_del_sync(f.client, VP_DEV_NET, 1, 100, &reply, &e));
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_TIMEOUT);
    g_assert_cmpuint(reply.type, ==, 0);
    g_clear_error(&e);

    shutdown(f.srv, SHUT_RDWR);
    g_thread_join(t);
    vp_close_fd(&mfd);
    fake_teardown(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    /* Create the default context (and its wakeup fd) before counting fds. */
    g_main_context_default();
    g_test_add_func("/client-lib/seq-and-matching", test_seq_and_matching);
    g_test_add_func("/client-lib/rejected-reason", test_rejected_reason);
    g_test_add_func("/client-lib/timeout-and-late-ack", test_timeout_and_late_ack);
    g_test_add_func("/client-lib/server-protocol-violations", test_server_protocol_violations);
    g_test_add_func("/client-lib/disconnect", test_disconnect);
    g_test_add_func("/client-lib/close-cancels", test_close_cancels);
    g_test_add_func("/client-lib/handshake-renegotiation", test_handshake_renegotiation);
    g_test_add_func("/client-lib/handshake-failures", test_handshake_failures);
    g_test_add_func("/client-lib/invalid-arguments", test_invalid_arguments);
    g_test_add_func("/client-lib/sync-wrappers", test_sync_wrappers);
    return g_test_run();
}
