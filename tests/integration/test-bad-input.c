/*
 * test-bad-input.c - hostile and malformed input against a running
 * vhost-pci-server (--device-host local) with vhost-pci-guestd (--bus local).
 *
 * Every case runs while a good client (driver VM "A") has a working device. Each
 * bad input must get a clear error ACK (result and reason asserted) or a
 * disconnect; afterwards the server must still be running and answering its mgmt
 * socket, hold exactly as many fds as before (/proc/<pid>/fd), and A's device must
 * still work (A completes a DEVICE_INFO update).
 *
 * The last case plays the guestd itself over the local bus (itest_fakegd.h) and puts
 * an ACK for a message never sent on the receiveq.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "itest.h"
#include "itest_fakegd.h"
#include "vhost_pci.pb-c.h"
#include "vp_ctrlarea.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define TMO ITEST_TIMEOUT_MS
#define RING_GPA 0x10000ULL

/* ------------------------------ the fixture ------------------------------ */

typedef struct {
    ITestEnv env;
    VpClient *a;          /* the good driver VM */
    char a_uuid[37];
    int a_ram;
    void *a_map;
    int a_efds[4];
    guint16 a_pos;        /* last_avail_idx of A's next update */
    int server_fds;       /* baseline of /proc/<server>/fd */
    gint64 disconnects, bad_messages;
} Fx;

static void a_handshake(Fx *fx, ITestEnv *env)
{
    fx->a = itest_client(env, NULL);
    itest_uuid(fx->a, fx->a_uuid);
    fx->a_ram = itest_memfd(MiB, &fx->a_map);
    itest_eventfds(fx->a_efds);
    struct vp_region r = { .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = fx->a_ram };
    struct vp_device_info di;
    itest_net_device(&di, 1, RING_GPA, 0, 0, fx->a_efds);
    VpClientHandshake res;
    GError *e = NULL;
    gboolean ok = vp_client_handshake_sync(fx->a, &r, 1, VP_NET_FEATURES, &di, TMO, NULL,
                                           NULL, &res, &e);
    g_assert_no_error(e);
    g_assert_true(ok);
}

static gboolean one_device_one_conn(JsonNode *s, JsonNode *g, gpointer data)
{
    (void)data;
    return itest_ndevices(s) == 1 && (!g || itest_ndevices(g) == 1) &&
           itest_int(json_node_get_object(s), "connections") == 1;
}

/* Server fds settle after the previous step (bounded), then equal the baseline. */
static void assert_server_fds(Fx *fx)
{
    itest_wait_fds(fx->env.server_pid, fx->server_fds, TMO, "server after the bad input");
}

static void fx_setup(Fx *fx, gconstpointer data)
{
    (void)data;
    memset(fx, 0, sizeof(*fx));
    itest_env_start(&fx->env, NULL);
    a_handshake(fx, &fx->env);
    itest_wait_for(&fx->env, one_device_one_conn, NULL, TMO, "A's device");
    fx->server_fds = itest_count_fds(fx->env.server_pid);
    JsonNode *s = itest_server_status(&fx->env);
    fx->disconnects = itest_int(json_node_get_object(s), "counters.disconnects");
    fx->bad_messages = itest_int(json_node_get_object(s), "counters.bad_messages");
    json_node_unref(s);
}

/* After each bad input: server alive and answering, no fd leaked, no stray device,
 * and A's device still works. */
static void assert_still_serving(Fx *fx)
{
    g_assert_true(itest_alive(fx->env.server_pid));
    itest_wait_for(&fx->env, one_device_one_conn, NULL, TMO,
                   "back to A's device and connection only");
    assert_server_fds(fx);
    struct vp_device_info di;
    fx->a_pos++;
    itest_net_device(&di, 1, RING_GPA, fx->a_pos, fx->a_pos, fx->a_efds);
    itest_set_avail_idx(fx->a_map, 0, RING_GPA, 0, fx->a_pos);
    itest_set_avail_idx(fx->a_map, 0, RING_GPA, 1, fx->a_pos);
    VpClientReply r;
    GError *e = NULL;
    g_assert_true(vp_client_device_add_sync(fx->a, &di, TMO, &r, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(r.ack.result, ==, VP_ACK_ADD_DONE);
    JsonNode *s = itest_server_status(&fx->env);
    JsonObject *d = itest_server_device(s, fx->a_uuid);
    g_assert_nonnull(d);
    g_assert_true(itest_bool(d, "driver_ok"));
    g_assert_cmpuint(itest_int(d, "status") & VP_STATUS_NEEDS_RESET, ==, 0);
    json_node_unref(s);
}

static void fx_teardown(Fx *fx, gconstpointer data)
{
    (void)data;
    if (fx->a) {
        vp_client_close(fx->a);
        vp_client_unref(fx->a);
    }
    if (fx->a_map)
        munmap(fx->a_map, MiB);
    vp_close_fd(&fx->a_ram);
    vp_close_fds(fx->a_efds, 4);
    itest_env_stop(&fx->env);
}

/* ------------------------------ raw socket helpers ------------------------------ */

static int raw_connect(Fx *fx)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, fx->env.sock, sizeof(sa.sun_path));
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(s, >=, 0);
    g_assert_cmpint(connect(s, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    return s;
}

static struct vp_sock_hdr raw_hdr(guint64 seq)
{
    struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = seq };
    for (guint i = 0; i < 16; i++)
        h.uuid[i] = (guint8)g_random_int();
    h.uuid[6] = (h.uuid[6] & 0x0f) | 0x40;
    h.uuid[8] = (h.uuid[8] & 0x3f) | 0x80;
    return h;
}

/* The server must close the connection (after an optional error ACK). */
static void expect_disconnect(int s)
{
    for (;;) {
        struct vp_msg m;
        vp_error err = { { 0 } };
        int ret = vp_msg_recv(s, &m, TMO, &err);
        if (ret == 1) {
            struct vp_ack ack;
            if (vp_decode_ack(&m, &ack, &err) == 0)
                g_test_message("before closing, server sent %s: %s",
                               vp_msg_type_name(m.hdr.type), ack.reason);
            vp_msg_clear(&m);
            continue;
        }
        g_assert_cmpint(ret, !=, -ETIMEDOUT);
        g_test_message("server closed the connection: %s", err.msg);
        return;
    }
}

static void wait_disconnects(Fx *fx, gint64 n)
{
    for (int i = 0; i < TMO / 10; i++) {
        JsonNode *s = itest_server_status(&fx->env);
        gint64 d = itest_int(json_node_get_object(s), "counters.disconnects");
        json_node_unref(s);
        if (d >= fx->disconnects + n)
            return;
        g_usleep(10000);
    }
    g_error("server did not count %" G_GINT64_FORMAT " more disconnects", n);
}

/* The server's bad_messages counter grew by at least @n since the fixture began. */
static void wait_bad_messages(Fx *fx, gint64 n)
{
    for (int i = 0; i < TMO / 10; i++) {
        JsonNode *st = itest_server_status(&fx->env);
        gint64 b = itest_int(json_node_get_object(st), "counters.bad_messages");
        json_node_unref(st);
        if (b >= fx->bad_messages + n)
            return;
        g_usleep(10000);
    }
    g_error("server did not count %" G_GINT64_FORMAT " more bad messages", n);
}

/* A framing error (session.c: undecodable payload, fd count, limits): the server
 * drops this client, counts a bad message and a disconnect. */
static void expect_framing_disconnect(Fx *fx, int *s, gint64 nth)
{
    expect_disconnect(*s);
    vp_close_fd(s);
    wait_bad_messages(fx, nth);
    wait_disconnects(fx, nth);
}


/* Send a packed protobuf payload with @nfds fds. */
static void send_packed(int s, guint16 type, struct vp_sock_hdr *h,
                        const ProtobufCMessage *pb, const int *fds, unsigned nfds)
{
    size_t len = protobuf_c_message_get_packed_size(pb);
    guint8 *buf = g_malloc(len ? len : 1);
    protobuf_c_message_pack(pb, buf);
    h->type = type;
    g_assert_cmpint(vp_msg_send(s, h, buf, len, fds, nfds), ==, 0);
    g_free(buf);
}

/* A MEMORY_INFO(ADD) whose regions name fd_index 0..n-1, each 1 MiB at gpa i GiB. */
static void send_memory_pb(int s, struct vp_sock_hdr *h, unsigned nregions,
                           const int *fds, unsigned nfds)
{
    VhostPci__MemoryRegion *rs = g_new(VhostPci__MemoryRegion, nregions);
    VhostPci__MemoryRegion **rp = g_new(VhostPci__MemoryRegion *, nregions);
    for (unsigned i = 0; i < nregions; i++) {
        vhost_pci__memory_region__init(&rs[i]);
        rs[i].guest_phys_addr = (guint64)i * GiB;
        rs[i].memory_size = MiB;
        rs[i].mmap_offset = 0;
        rs[i].fd_index = i;
        rp[i] = &rs[i];
    }
    VhostPci__MemoryInfo mi = VHOST_PCI__MEMORY_INFO__INIT;
    mi.op = VP_OP_ADD;
    mi.n_regions = nregions;
    mi.regions = rp;
    send_packed(s, VP_MSG_MEMORY_INFO, h, &mi.base, fds, nfds);
    g_free(rs);
    g_free(rp);
}


/* A client on its own connection, for semantic bad input through the library. */
static VpClient *other_client(Fx *fx, const guint8 *uuid)
{
    return itest_client(&fx->env, uuid);
}

static void expect_client_fail(VpClient *c, gboolean ok, const VpClientReply *r,
                               GError *e, guint64 result, const char *substr)
{
    g_assert_false(ok);
    g_assert_error(e, VP_CLIENT_ERROR, VP_CLIENT_ERROR_REJECTED);
    g_test_message("rejected: %s", e->message);
    g_assert_cmpuint(r->ack.result, ==, result);
    if (!strstr(r->ack.reason, substr) || !strstr(e->message, substr))
        g_error("reason \"%s\" / error \"%s\" do not contain \"%s\"", r->ack.reason,
                e->message, substr);
    g_error_free(e);
    g_assert_true(vp_client_is_connected(c));
}

/* A new connection of driver VM @uuid (NULL: a new driver VM) adds @n regions: the
 * server refuses them with ADD_FAIL and a reason containing @why; the connection
 * stays up until it is closed here. */
static void expect_memory_add_refused(Fx *fx, const guint8 *uuid, const struct vp_region *r,
                                      unsigned n, const char *why)
{
    VpClient *c = other_client(fx, uuid);
    VpClientReply rep;
    GError *e = NULL;
    gboolean ok = vp_client_memory_add_sync(c, r, n, TMO, &rep, &e);
    expect_client_fail(c, ok, &rep, e, VP_ACK_ADD_FAIL, why);
    vp_client_close(c);
    vp_client_unref(c);
}

/* ------------------------------ framing ------------------------------ */

/* Half a message, the connection held open: others are not stalled; then closed
 * mid-message: the server drops it and counts a disconnect. */
static void test_truncated_message(Fx *fx, gconstpointer data)
{
    (void)data;
    int s = raw_connect(fx);
    struct vp_sock_hdr h = raw_hdr(1);
    h.type = VP_MSG_MEMORY_INFO;
    h.len = 200;
    guint8 wire[VP_SOCK_HDR_SIZE + 50];
    memset(wire, 0xab, sizeof(wire));
    vp_sock_hdr_encode(&h, wire);
    g_assert_cmpint(write(s, wire, sizeof(wire)), ==, sizeof(wire));
    /* Header only, the other half of a second connection. */
    int s2 = raw_connect(fx);
    g_assert_cmpint(write(s2, wire, 10), ==, 10);

    /* A is served meanwhile. */
    struct vp_device_info di;
    itest_net_device(&di, 1, RING_GPA, 0, 0, fx->a_efds);
    VpClientReply r;
    GError *e = NULL;
    g_assert_true(vp_client_device_add_sync(fx->a, &di, TMO, &r, &e));
    g_assert_no_error(e);

    vp_close_fd(&s);
    vp_close_fd(&s2);
    wait_disconnects(fx, 2);
    assert_still_serving(fx);
}

/* A payload that is not valid protobuf (msg_len consistent). */
static void test_truncated_payload(Fx *fx, gconstpointer data)
{
    (void)data;
    int s = raw_connect(fx);
    struct vp_sock_hdr h = raw_hdr(1);
    /* A MemoryInfo cut inside a length-delimited field. */
    static const guint8 cut[] = { 0x08, 0x00, 0x12, 0x20, 0x08, 0x80 };
    h.type = VP_MSG_MEMORY_INFO;
    g_assert_cmpint(vp_msg_send(s, &h, cut, sizeof(cut), NULL, 0), ==, 0);
    expect_framing_disconnect(fx, &s, 1);
    assert_still_serving(fx);
}

/* msg_len over VP_MAX_PAYLOAD: the stream cannot be resynchronised: disconnect. */
static void test_msg_len_over_limit(Fx *fx, gconstpointer data)
{
    (void)data;
    int s = raw_connect(fx);
    struct vp_sock_hdr h = raw_hdr(1);
    h.type = VP_MSG_DEVICE_INFO;
    h.len = VP_MAX_PAYLOAD + 1;
    guint8 wire[VP_SOCK_HDR_SIZE];
    vp_sock_hdr_encode(&h, wire);
    g_assert_cmpint(write(s, wire, sizeof(wire)), ==, sizeof(wire));
    expect_framing_disconnect(fx, &s, 1);
    assert_still_serving(fx);
}

/* Unknown message type and unsupported version: disconnect. */
static void test_bad_header(Fx *fx, gconstpointer data)
{
    (void)data;
    for (int v = 0; v < 2; v++) {
        int s = raw_connect(fx);
        struct vp_sock_hdr h = raw_hdr(1);
        h.type = v == 0 ? 77 : VP_MSG_FEATURE_BITS;
        h.version = v == 0 ? VP_MSG_VERSION : 2;
        guint8 wire[VP_SOCK_HDR_SIZE];
        vp_sock_hdr_encode(&h, wire);
        g_assert_cmpint(write(s, wire, sizeof(wire)), ==, sizeof(wire));
        expect_framing_disconnect(fx, &s, v + 1);
    }
    assert_still_serving(fx);
}

/* Two regions naming fd_index 0 and 1, one fd attached; one region, three fds. */
static void test_fd_count_mismatch(Fx *fx, gconstpointer data)
{
    (void)data;
    int mem = itest_memfd(MiB, NULL);
    int s = raw_connect(fx);
    struct vp_sock_hdr h = raw_hdr(1);
    send_memory_pb(s, &h, 2, &mem, 1);
    expect_framing_disconnect(fx, &s, 1);

    s = raw_connect(fx);
    int fds[3] = { mem, mem, mem };
    h = raw_hdr(1);
    send_memory_pb(s, &h, 1, fds, 3);
    expect_framing_disconnect(fx, &s, 2);

    /* A DEVICE_INFO naming a kick fd that was not attached. */
    s = raw_connect(fx);
    h = raw_hdr(1);
    VhostPci__Virtq q = VHOST_PCI__VIRTQ__INIT;
    q.num = 256;
    q.desc_addr = RING_GPA;
    q.avail_addr = RING_GPA + 0x1000;
    q.used_addr = RING_GPA + 0x2000;
    q.kick_fd_index = 0;
    q.call_fd_index = -1;
    VhostPci__Virtq *qp = &q;
    VhostPci__DeviceInfo di = VHOST_PCI__DEVICE_INFO__INIT;
    di.op = VP_OP_ADD;
    di.device_type = VP_DEV_NET;
    di.device_id = 1;
    di.n_virtqs = 1;
    di.virtqs = &qp;
    send_packed(s, VP_MSG_DEVICE_INFO, &h, &di.base, NULL, 0);
    expect_framing_disconnect(fx, &s, 3);
    vp_close_fd(&mem);
    assert_still_serving(fx);
}

/* 65 regions (one over VP_MAX_REGIONS), each with its own fd. */
static void test_65_regions(Fx *fx, gconstpointer data)
{
    (void)data;
    int mem = itest_memfd(MiB, NULL);
    int fds[65];
    for (int i = 0; i < 65; i++)
        fds[i] = mem;
    int s = raw_connect(fx);
    struct vp_sock_hdr h = raw_hdr(1);
    send_memory_pb(s, &h, 65, fds, 65);
    expect_framing_disconnect(fx, &s, 1);
    vp_close_fd(&mem);
    assert_still_serving(fx);
}

/* ------------------------------ memory semantics ------------------------------ */

/* Overlapping guest-physical ranges: within one message, and against the table of
 * an existing device (a second connection of A's driver VM). */
static void test_overlapping_regions(Fx *fx, gconstpointer data)
{
    (void)data;
    int m1 = itest_memfd(MiB, NULL), m2 = itest_memfd(MiB, NULL);
    struct vp_region r[2] = {
        { .gpa = 0x100000000ULL, .size = MiB, .mmap_offset = 0, .fd = m1 },
        { .gpa = 0x100080000ULL, .size = MiB, .mmap_offset = 0, .fd = m2 },
    };
    expect_memory_add_refused(fx, NULL, r, 2, "overlaps");

    /* Against A's RAM at [0, 1 MiB). */
    struct vp_region o = { .gpa = 0x80000, .size = MiB, .mmap_offset = 0, .fd = m1 };
    expect_memory_add_refused(fx, vp_client_get_uuid(fx->a), &o, 1, "overlaps");
    vp_close_fd(&m1);
    vp_close_fd(&m2);
    assert_still_serving(fx);
}

/* A region reaching past the end of its file. */
static void test_region_past_file_end(Fx *fx, gconstpointer data)
{
    (void)data;
    int m = itest_memfd(MiB, NULL);
    struct vp_region r = { .gpa = 0, .size = MiB, .mmap_offset = MiB / 2, .fd = m };
    expect_memory_add_refused(fx, NULL, &r, 1, "past the end of its file");
    vp_close_fd(&m);
    assert_still_serving(fx);
}

/* A file whose size is not a power of two would abort QEMU as a BAR (DESIGN 3); a
 * host that maps parts of files (local, QEMU >= 8.1) serves it as power-of-two
 * windows only when it is a page multiple: 3 MiB + 512 bytes is refused by all. */
static void test_non_pow2_file(Fx *fx, gconstpointer data)
{
    (void)data;
    int m = itest_memfd(3 * MiB + 512, NULL);
    struct vp_region r = { .gpa = 0, .size = 3 * MiB, .mmap_offset = 0, .fd = m };
    expect_memory_add_refused(fx, NULL, &r, 1, "power of two");
    /* Also as hot-added memory of A's existing device. */
    r.gpa = 4 * GiB;
    expect_memory_add_refused(fx, vp_client_get_uuid(fx->a), &r, 1, "power of two");
    vp_close_fd(&m);
    assert_still_serving(fx);
}

/* A memfd not sealed against shrinking. */
static void test_unsealed_memfd(Fx *fx, gconstpointer data)
{
    (void)data;
    int m = vp_test_memfd("unsealed", MiB, FALSE);
    struct vp_region r = { .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = m };
    expect_memory_add_refused(fx, NULL, &r, 1, "not sealed against shrinking");
    vp_close_fd(&m);
    assert_still_serving(fx);
}

/* DEL of a region or frontend the device does not have, and DEL for a driver VM
 * that has no device at all. */
static void test_del_unknown(Fx *fx, gconstpointer data)
{
    (void)data;
    struct vp_region r = { .gpa = 8 * GiB, .size = MiB, .mmap_offset = 0, .fd = -1 };
    VpClientReply rep;
    GError *e = NULL;
    gboolean ok = vp_client_memory_del_sync(fx->a, &r, 1, TMO, &rep, &e);
    expect_client_fail(fx->a, ok, &rep, e, VP_ACK_DEL_FAIL, "not in the memory table");

    /* Half of a region that exists is not a region. */
    struct vp_region half = { .gpa = 0, .size = MiB / 2, .mmap_offset = 0, .fd = -1 };
    e = NULL;
    ok = vp_client_memory_del_sync(fx->a, &half, 1, TMO, &rep, &e);
    expect_client_fail(fx->a, ok, &rep, e, VP_ACK_DEL_FAIL, "not in the memory table");

    e = NULL;
    ok = vp_client_device_del_sync(fx->a, VP_DEV_NET, 99, TMO, &rep, &e);
    expect_client_fail(fx->a, ok, &rep, e, VP_ACK_DEL_FAIL, "no net frontend device 99");
    g_assert_cmpuint(rep.ack.device_id, ==, 99);

    /* A driver VM without any device. */
    VpClient *c = other_client(fx, NULL);
    e = NULL;
    ok = vp_client_device_del_sync(c, VP_DEV_NET, 1, TMO, &rep, &e);
    expect_client_fail(c, ok, &rep, e, VP_ACK_DEL_FAIL, "no vhost-pci device");
    e = NULL;
    ok = vp_client_memory_del_sync(c, &r, 1, TMO, &rep, &e);
    expect_client_fail(c, ok, &rep, e, VP_ACK_DEL_FAIL, "no vhost-pci device");
    vp_client_close(c);
    vp_client_unref(c);

    /* A's memory and frontend are untouched. */
    JsonNode *s = itest_server_status(&fx->env);
    JsonObject *d = itest_server_device(s, fx->a_uuid);
    g_assert_cmpuint(itest_len(d, "regions"), ==, 1);
    g_assert_cmpuint(itest_len(d, "frontends"), ==, 1);
    json_node_unref(s);
    assert_still_serving(fx);
}

/* A DEVICE_INFO the guest driver cannot serve: a type other than net, and rings
 * that break the split-ring rules. */
static void test_bad_device_info(Fx *fx, gconstpointer data)
{
    (void)data;
    guint8 uuid[16];
    memcpy(uuid, vp_client_get_uuid(fx->a), 16);
    VpClient *c = other_client(fx, uuid);
    struct vp_device_info di;
    itest_net_device(&di, 2, RING_GPA + 0x40000, 0, 0, NULL);
    di.device_type = VP_DEV_BLK;
    VpClientReply rep;
    GError *e = NULL;
    gboolean ok = vp_client_device_add_sync(c, &di, TMO, &rep, &e);
    expect_client_fail(c, ok, &rep, e, VP_ACK_ADD_FAIL,
                       "device type blk not supported by vhost-pci-guestd");

    itest_net_device(&di, 3, RING_GPA + 0x40000, 0, 0, NULL);
    di.virtqs[1].num = 100;
    e = NULL;
    ok = vp_client_device_add_sync(c, &di, TMO, &rep, &e);
    expect_client_fail(c, ok, &rep, e, VP_ACK_ADD_FAIL, "power of two");
    vp_client_close(c);
    vp_client_unref(c);
    assert_still_serving(fx);
}

/* Issue 12.1: kick and call fds must be eventfds. A pipe nobody reads as a call fd
 * would block whoever signals it (guestd's doorbell, the device VM's QEMU); a socket
 * or a memfd means something else. Each is refused with a reason, its fds are closed,
 * and A's device keeps working. */
static void test_call_fd_not_eventfd(Fx *fx, gconstpointer data)
{
    (void)data;
    guint8 uuid[16];
    memcpy(uuid, vp_client_get_uuid(fx->a), 16);
    VpClient *c = other_client(fx, uuid);
    int p[2], sv[2];
    g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
    vp_test_socketpair(sv);
    int mem = vp_test_memfd("kick", 4096, FALSE);
    int efds[4];
    itest_eventfds(efds);
    const struct { int q; gboolean call; int fd; const char *why; } cases[] = {
        { 0, TRUE, p[1], "virtqueue 0: call fd is a pipe, not an eventfd" },
        { 1, FALSE, sv[0], "virtqueue 1: kick fd is a socket, not an eventfd" },
        { 1, TRUE, mem, "virtqueue 1: call fd is a file, not an eventfd" },
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        struct vp_device_info di;
        itest_net_device(&di, 5, RING_GPA + 0x40000, 0, 0, efds);
        if (cases[i].call)
            di.virtqs[cases[i].q].call_fd = cases[i].fd;
        else
            di.virtqs[cases[i].q].kick_fd = cases[i].fd;
        VpClientReply rep;
        GError *e = NULL;
        gboolean ok = vp_client_device_add_sync(c, &di, TMO, &rep, &e);
        expect_client_fail(c, ok, &rep, e, VP_ACK_ADD_FAIL, cases[i].why);
    }
    vp_client_close(c);
    vp_client_unref(c);
    vp_close_fds(efds, 4);
    close(p[0]);
    close(p[1]);
    close(sv[0]);
    close(sv[1]);
    close(mem);
    assert_still_serving(fx);
}

/* ------------------------------ management socket ------------------------------ */

/* An unknown command whose bytes are not UTF-8 (nor printable) is still answered with
 * one valid JSON document naming the error, and the mgmt socket keeps serving. */
static void test_mgmt_bad_command(Fx *fx, gconstpointer data)
{
    (void)data;
    static const char req[] = "\xff\xfe\"\x01st\xc3" "atus\n";
    JsonNode *n = itest_socket_query(fx->env.mgmt, req, sizeof(req) - 1);
    g_assert_nonnull(n);  /* NULL: the answer was not a JSON document */
    JsonObject *o = json_node_get_object(n);
    g_assert_true(json_object_has_member(o, "error"));
    const char *msg = json_object_get_string_member(o, "error");
    g_assert_true(g_utf8_validate(msg, -1, NULL));
    g_assert_nonnull(strstr(msg, "unknown command"));
    g_assert_nonnull(strstr(msg, "(known: status)"));
    json_node_unref(n);
    assert_still_serving(fx);
}

/* An ACK from the guest driver for a message the server never sent: ignored and
 * counted in bad_messages; the device and the server carry on. */
static void test_bogus_guestd_ack(void)
{
    ITestEnv env;
    ITestOpts opts = { .no_guestd = TRUE };
    itest_env_start(&env, &opts);
    ITestFakeGd fg = { .path = env.local_bus, .bogus = TRUE, .eject = TRUE };
    itest_fakegd_start(&fg, "fake-guestd");

    VpClient *c = itest_client(&env, NULL);
    char uuid[37];
    itest_uuid(c, uuid);
    void *map;
    int ram = itest_memfd(MiB, &map);
    struct vp_region r = { .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = ram };
    struct vp_device_info di;
    itest_net_device(&di, 1, RING_GPA, 0, 0, NULL);
    VpClientHandshake res;
    GError *e = NULL;
    gboolean ok = vp_client_handshake_sync(c, &r, 1, VP_NET_FEATURES, &di, TMO, NULL, NULL,
                                           &res, &e);
    itest_fakegd_check(&fg);
    g_assert_no_error(e);
    g_assert_true(ok);
    g_assert_cmpint(g_atomic_int_get(&fg.bogus_sent), ==, 1);

    JsonNode *s = itest_server_status(&env);
    JsonObject *so = json_node_get_object(s);
    g_assert_cmpint(itest_int(so, "counters.bad_messages"), ==, 1);
    JsonObject *d = itest_server_device(s, uuid);
    g_assert_nonnull(d);
    g_assert_true(itest_bool(d, "driver_ok"));
    g_assert_cmpuint(itest_int(d, "status") & (VP_STATUS_NEEDS_RESET | VP_STATUS_FAILED), ==, 0);
    g_assert_cmpint(itest_int(d, "counters.acks_ok"), ==, 3);
    json_node_unref(s);

    /* The device keeps working. */
    VpClientReply rep;
    di.virtqs[0].num = 128;
    g_assert_true(vp_client_device_add_sync(c, &di, TMO, &rep, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(rep.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_true(itest_alive(env.server_pid));

    vp_client_close(c);
    vp_client_unref(c);
    itest_fakegd_stop(&fg);
    munmap(map, MiB);
    vp_close_fd(&ram);
    itest_env_stop(&env);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_default();
#define ADD(path, fn) g_test_add("/bad-input/" path, Fx, NULL, fx_setup, fn, fx_teardown)
    ADD("truncated-message", test_truncated_message);
    ADD("truncated-payload", test_truncated_payload);
    ADD("msg-len-over-limit", test_msg_len_over_limit);
    ADD("bad-header", test_bad_header);
    ADD("fd-count-mismatch", test_fd_count_mismatch);
    ADD("65-regions", test_65_regions);
    ADD("overlapping-regions", test_overlapping_regions);
    ADD("region-past-file-end", test_region_past_file_end);
    ADD("non-pow2-file", test_non_pow2_file);
    ADD("unsealed-memfd", test_unsealed_memfd);
    ADD("del-unknown", test_del_unknown);
    ADD("bad-device-info", test_bad_device_info);
    ADD("call-fd-not-eventfd", test_call_fd_not_eventfd);
    ADD("mgmt-bad-command", test_mgmt_bad_command);
#undef ADD
    g_test_add_func("/bad-input/bogus-guestd-ack", test_bogus_guestd_ack);
    return g_test_run();
}
