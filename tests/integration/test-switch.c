/*
 * test-switch.c - guestd's switch endpoint (--endpoint switch) end to end on the
 * host, with real processes: several pretend driver VMs (tools/vnet-frontend, each
 * its own client_uuid, so its own vhost-pci device) -> libvhostpci-client ->
 * vhost-pci-server (--device-host local) -> one vhost-pci-guestd whose switch joins
 * every frontend. Every frame is checked byte for byte.
 *
 * "Not received" is never waited for: frames of one sender are switched in order, so
 * when a later broadcast of the same sender arrives first, an earlier frame was not
 * delivered there.
 *
 * Covers: flooding of unknown unicast and broadcast, learning from source
 * addresses, unicast to the learned port only, bulk traffic both ways with 60, 1514
 * and 9000-byte frames, a destination that stops taking frames (drops for it, the
 * others unhurt), a hostile frontend that breaks its transmit ring (only its queue
 * stops), and one that sends from thousands of source addresses (bounded learning,
 * the others' entries stay).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "itest.h"
#include "itest_frames.h"
#include "vnet_frontend.h"
#include "vp_wire.h"

#define MiB (1ULL << 20)
#define TMO ITEST_TIMEOUT_MS

typedef struct {
    ITestEnv env;
    char *tmp;
} Sw;

/* Server and a guestd with --endpoint switch (@workers: its --workers, 0: default). */
static void sw_start_workers(Sw *s, unsigned workers)
{
    GError *e = NULL;
    s->tmp = g_dir_make_tmp("vp-sw-XXXXXX", &e);
    g_assert_no_error(e);
    /* The wrapper quotes the spec: close and reopen the quotes around the option. */
    char *spec = workers ? g_strdup_printf("switch' --workers '%u", workers) : g_strdup("switch");
    char *wrapper = itest_guestd_endpoint_wrapper(s->tmp, spec);
    g_free(spec);
    g_setenv("VP_GUESTD_BIN", wrapper, TRUE);
    itest_env_start(&s->env, NULL);
    g_unsetenv("VP_GUESTD_BIN");
    unlink(wrapper);
    rmdir(s->tmp);
    g_free(wrapper);
}

static void sw_start(Sw *s) { sw_start_workers(s, 0); }

static void sw_stop(Sw *s)
{
    itest_env_stop(&s->env);
    g_free(s->tmp);
}

/* A pretend driver VM with one frontend; its MAC address is 02:00:00:00:00:@id. */
typedef struct {
    VnetVm *vm;
    VnetFe *fe;
    guint8 mac[6];
} Node;

static void node_up(Sw *s, Node *n, guint8 id, const VnetFeConfig *cfg)
{
    n->vm = itest_vnet_vm(&s->env, 8 * MiB);
    VnetFeConfig c = cfg ? *cfg : (VnetFeConfig){ 0 };
    c.device_id = 1;
    n->fe = itest_vnet_fe(n->vm, &c);
    memcpy(n->mac, "\x02\x00\x00\x00\x00", 5);
    n->mac[5] = id;
}

static void node_down(Node *n)
{
    vnet_fe_free(n->fe);
    vnet_vm_free(n->vm);
}

/* The switch with three pretend driver VMs, MACs 02:00:00:00:00:0a, 0b, 0c. */
static void three_up(Sw *s, Node *a, Node *b, Node *c)
{
    sw_start(s);
    node_up(s, a, 0x0a, NULL);
    node_up(s, b, 0x0b, NULL);
    node_up(s, c, 0x0c, NULL);
}

static void three_down(Sw *s, Node *a, Node *b, Node *c)
{
    node_down(a);
    node_down(b);
    node_down(c);
    sw_stop(s);
}

static const guint8 BCAST[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* Frame @seq of stream @tag with addresses @dst <- @src. */
static void build(guint8 *f, gsize len, const guint8 *dst, const guint8 *src, guint64 seq,
                  guint8 tag)
{
    itest_frame_fill(f, len, seq, tag);
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
}

static void send_frame(Node *from, const guint8 *dst, const guint8 *src, gsize len,
                       guint64 seq, guint8 tag)
{
    guint8 f[VNET_FE_MAX_FRAME];
    build(f, len, dst, src, seq, tag);
    GError *e = NULL;
    g_assert_cmpint(vnet_fe_send(from->fe, f, len, TMO, &e), ==, 1);
    g_assert_no_error(e);
}

/* The next frame @to receives must be frame @seq of @tag, @dst <- @src. */
static void expect_frame(Node *to, const guint8 *dst, const guint8 *src, gsize len, guint64 seq,
                         guint8 tag, const char *what)
{
    static guint8 got[VNET_FE_MAX_FRAME], want[VNET_FE_MAX_FRAME];
    gsize n = 0;
    GError *e = NULL;
    int r = vnet_fe_recv(to->fe, got, sizeof(got), &n, TMO, &e);
    g_assert_no_error(e);
    if (r != 1)
        g_error("%s: nothing received within %d ms", what, TMO);
    build(want, len, dst, src, seq, tag);
    if (n != len || memcmp(got, want, len))
        g_error("%s: got %zu bytes (dst %02x, src %02x, tag %u), want frame %" G_GUINT64_FORMAT
                " of %zu bytes (dst %02x, src %02x, tag %u)", what, n, got[5], got[11], got[22],
                seq, len, dst[5], src[5], tag);
}

static JsonObject *switch_status(JsonNode *g)
{
    JsonObject *dp = json_object_get_object_member(json_node_get_object(g), "datapath");
    g_assert_nonnull(dp);
    g_assert_cmpstr(json_object_get_string_member(dp, "endpoint"), ==, "switch");
    return json_object_get_object_member(dp, "switch");
}

/* Flooding, learning, unicast to the learned port only. */
static void test_learn_flood(void)
{
    Sw s;
    Node a, b, c;
    three_up(&s, &a, &b, &c);

    /* A -> B, B unknown: flooded to B and C, never back to A. */
    send_frame(&a, b.mac, a.mac, 100, 1, 1);
    expect_frame(&b, b.mac, a.mac, 100, 1, 1, "unknown unicast at B");
    expect_frame(&c, b.mac, a.mac, 100, 1, 1, "unknown unicast flooded to C");
    /* B -> A: A was learned from its frame: unicast, C gets only B's next broadcast. */
    send_frame(&b, a.mac, b.mac, 200, 2, 2);
    send_frame(&b, BCAST, b.mac, 60, 3, 3);
    expect_frame(&a, a.mac, b.mac, 200, 2, 2, "learned unicast at A");
    expect_frame(&a, BCAST, b.mac, 60, 3, 3, "broadcast at A");
    expect_frame(&c, BCAST, b.mac, 60, 3, 3, "broadcast at C (the unicast before it not)");
    /* A -> B now known too. */
    send_frame(&a, b.mac, a.mac, 1514, 4, 4);
    send_frame(&a, BCAST, a.mac, 64, 5, 5);
    expect_frame(&b, b.mac, a.mac, 1514, 4, 4, "learned unicast at B");
    expect_frame(&b, BCAST, a.mac, 64, 5, 5, "broadcast at B");
    expect_frame(&c, BCAST, a.mac, 64, 5, 5, "broadcast at C (the unicast before it not)");
    /* A frame to the sender's own address goes nowhere; a runt is dropped. */
    send_frame(&a, a.mac, a.mac, 80, 6, 6);
    guint8 runt[10] = { 0 };
    GError *e = NULL;
    g_assert_cmpint(vnet_fe_send(a.fe, runt, sizeof(runt), TMO, &e), ==, 1);
    send_frame(&a, BCAST, a.mac, 64, 7, 7);
    expect_frame(&b, BCAST, a.mac, 64, 7, 7, "broadcast after a self-addressed frame and a runt");
    expect_frame(&c, BCAST, a.mac, 64, 7, 7, "broadcast after a self-addressed frame and a runt");

    JsonNode *g = itest_guestd_status(&s.env);
    JsonObject *st = switch_status(g);
    g_assert_cmpint(itest_int(st, "macs"), ==, 2);
    g_assert_cmpint(itest_int(st, "unicast"), ==, 2);
    g_assert_cmpint(itest_int(st, "flooded"), ==, 4);
    g_assert_cmpint(itest_int(st, "filtered"), ==, 1);
    g_assert_cmpint(itest_int(st, "runts"), ==, 1);
    json_node_unref(g);
    three_down(&s, &a, &b, &c);
}

enum { BURST = 40 };

/* A burst of BURST frames @a -> @dst (tag @tag) then a broadcast (tag @tag + 1): the
 * burst arrives at @at, then the broadcast; @not_at gets the broadcast first (none of
 * the burst). */
static void burst_to(Node *a, const guint8 *dst, Node *at, Node *not_at, guint8 tag,
                     const char *what)
{
    for (guint64 i = 0; i < BURST; i++)
        send_frame(a, dst, a->mac, 60 + i, i, tag);
    send_frame(a, BCAST, a->mac, 64, 0, tag + 1);
    for (guint64 i = 0; i < BURST; i++)
        expect_frame(at, dst, a->mac, 60 + i, i, tag, what);
    expect_frame(at, BCAST, a->mac, 64, 0, tag + 1, what);
    expect_frame(not_at, BCAST, a->mac, 64, 0, tag + 1, what);
}

/*
 * A MAC address that moves to another port while a sender keeps sending to it: the
 * sender's kept decision (same source and destination) must not outlive the table
 * entry it came from. Bursts of frames with the same addresses, so that most of
 * them are switched by the kept decision.
 */
static void test_move(void)
{
    Sw s;
    Node a, b, c;
    three_up(&s, &a, &b, &c);
    send_frame(&b, BCAST, b.mac, 60, 0, 1);
    expect_frame(&a, BCAST, b.mac, 60, 0, 1, "hello from B at A");
    expect_frame(&c, BCAST, b.mac, 60, 0, 1, "hello from B at C");
    send_frame(&c, BCAST, c.mac, 60, 0, 2);
    expect_frame(&a, BCAST, c.mac, 60, 0, 2, "hello from C at A");
    expect_frame(&b, BCAST, c.mac, 60, 0, 2, "hello from C at B");

    burst_to(&a, b.mac, &b, &c, 3, "A -> B before the move: at B only");
    /* B's address now transmits from C's port: the switch moves it there. */
    send_frame(&c, a.mac, b.mac, 70, 0, 5);
    expect_frame(&a, a.mac, b.mac, 70, 0, 5, "C as B, to A (learned unicast)");
    burst_to(&a, b.mac, &c, &b, 6, "A -> B's address after the move: at C only");
    /* Moved back: B transmits again. */
    send_frame(&b, a.mac, b.mac, 80, 0, 8);
    expect_frame(&a, a.mac, b.mac, 80, 0, 8, "B back, to A");
    burst_to(&a, b.mac, &b, &c, 9, "A -> B after moving back: at B only");

    JsonNode *g = itest_guestd_status(&s.env);
    JsonObject *st = switch_status(g);
    g_assert_cmpint(itest_int(st, "unicast"), ==, 3 * BURST + 2);
    g_assert_cmpint(itest_int(st, "macs"), ==, 3);
    json_node_unref(g);
    three_down(&s, &a, &b, &c);
}

/* Bulk traffic both ways at once, mixed sizes, every frame checked in order. */
static void test_bulk(void)
{
    static const gsize sizes[] = { 60, 1514, 9000 };
    Sw s;
    sw_start(&s);
    Node a, b;
    node_up(&s, &a, 0x0a, NULL);
    node_up(&s, &b, 0x0b, NULL);
    /* Teach the switch both addresses (one broadcast each). */
    send_frame(&a, BCAST, a.mac, 60, 0, 9);
    expect_frame(&b, BCAST, a.mac, 60, 0, 9, "hello from A");
    send_frame(&b, BCAST, b.mac, 60, 0, 9);
    expect_frame(&a, BCAST, b.mac, 60, 0, 9, "hello from B");

    enum { N = 3000 };
    guint64 sent[2] = { 0, 0 }, got[2] = { 0, 0 };
    Node *from[2] = { &a, &b }, *to[2] = { &b, &a };
    static guint8 f[VNET_FE_MAX_FRAME], want[VNET_FE_MAX_FRAME];
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    while (got[0] < N || got[1] < N) {
        guint work = 0;
        for (int d = 0; d < 2; d++) {
            GError *e = NULL;
            while (sent[d] < N && sent[d] - got[d] < 64) {
                gsize len = sizes[sent[d] % 3];
                build(f, len, to[d]->mac, from[d]->mac, sent[d], (guint8)(20 + d));
                int r = vnet_fe_try_send(from[d]->fe, f, len, &e);
                g_assert_no_error(e);
                if (r == 0)
                    break;
                sent[d]++;
                work++;
            }
            for (;;) {
                gsize n = 0;
                int r = vnet_fe_try_recv(to[d]->fe, f, sizeof(f), &n, &e);
                g_assert_no_error(e);
                if (r == 0)
                    break;
                gsize len = sizes[got[d] % 3];
                build(want, len, to[d]->mac, from[d]->mac, got[d], (guint8)(20 + d));
                if (n != len || memcmp(f, want, len))
                    g_error("direction %d: frame %" G_GUINT64_FORMAT " wrong (%zu bytes)", d,
                            got[d], n);
                got[d]++;
                work++;
            }
        }
        if (!work) {
            if (g_get_monotonic_time() > deadline)
                g_error("bulk: %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " frames arrived",
                        got[0], got[1]);
            vnet_fe_wait(a.fe, 0, 2);
        }
    }
    JsonNode *g = itest_guestd_status(&s.env);
    g_assert_cmpint(itest_int(switch_status(g), "unicast"), ==, 2 * N);
    json_node_unref(g);
    node_down(&a);
    node_down(&b);
    sw_stop(&s);
}

/* Write transmit descriptor 0 of @fe to point outside its memory and publish it. */
static void break_tx_ring(VnetFe *fe)
{
    guint8 *dsc = fe->q[1].vr.mem.desc;
    vp_put_le64(dsc, 0x7f0000000000ULL);
    vp_put_le32(dsc + 8, 100);
    vp_put_le16(dsc + 12, 0);
    vp_put_le16(dsc + 14, 0);
    guint8 *av = fe->q[1].vr.mem.avail;
    guint16 idx = vp_get_le16(av + 2);
    vp_put_le16(av + 4 + 2 * (idx & (fe->cfg.qsize - 1)), 0);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    vp_put_le16(av + 2, (guint16)(idx + 1));
}

/* Queue @qi of the only frontend of the device whose peer is @n's VM. */
static JsonObject *node_queue(JsonNode *g, Node *n, guint qi)
{
    for (guint i = 0; i < itest_ndevices(g); i++) {
        JsonObject *d = json_array_get_object_element(
            json_object_get_array_member(json_node_get_object(g), "devices"), i);
        g_assert_false(itest_bool(d, "broken"));
        if (!g_str_equal(json_object_get_string_member(d, "peer_uuid"), n->vm->uuid))
            continue;
        return itest_elem(itest_elem(d, "frontends", 0), "queues", qi);
    }
    g_error("no device for %s in guestd's status", n->vm->uuid);
}

/* Hostile and stuck ports hurt only themselves. */
static void test_hostile(void)
{
    Sw s;
    sw_start(&s);
    Node a, b, c, stuck, evil;
    node_up(&s, &a, 0x0a, NULL);
    node_up(&s, &b, 0x0b, NULL);
    node_up(&s, &c, 0x0c, NULL);
    node_up(&s, &stuck, 0x0d, &(VnetFeConfig){ .rx_bufs = 16 }); /* never reads */
    node_up(&s, &evil, 0x0e, NULL);
    Node *good[3] = { &a, &b, &c };
    for (guint i = 0; i < 3; i++) {
        send_frame(good[i], BCAST, good[i]->mac, 60, i, 1);
        for (guint k = 0; k < 3; k++)
            if (k != i)
                expect_frame(good[k], BCAST, good[i]->mac, 60, i, 1, "hello");
    }

    /* A source-address flood: at most 256 entries learned for it; C gets its frames
     * (unicast: C is known), A and B stay known. */
    guint8 fake[6] = { 0x02, 0xee, 0, 0, 0, 0 };
    for (guint i = 0; i < 2000; i++) {
        fake[4] = (guint8)(i >> 8);
        fake[5] = (guint8)i;
        send_frame(&evil, c.mac, fake, 60, i, 2);
        expect_frame(&c, c.mac, fake, 60, i, 2, "frame from the hostile node at C");
    }
    /* A -> B is still unicast: C sees only A's broadcast after it. */
    for (guint i = 0; i < 100; i++)
        send_frame(&a, b.mac, a.mac, 1514, i, 3);
    send_frame(&a, BCAST, a.mac, 60, 100, 3);
    for (guint i = 0; i < 100; i++)
        expect_frame(&b, b.mac, a.mac, 1514, i, 3, "A -> B after the flood");
    expect_frame(&b, BCAST, a.mac, 60, 100, 3, "broadcast at B");
    expect_frame(&c, BCAST, a.mac, 60, 100, 3, "broadcast at C (A -> B not flooded)");

    /* The stuck node runs out of receive buffers: its copies are dropped, B and C get
     * every broadcast. */
    for (guint i = 0; i < 40; i++) {
        send_frame(&a, BCAST, a.mac, 60, 200 + i, 4);
        expect_frame(&b, BCAST, a.mac, 60, 200 + i, 4, "broadcast at B");
        expect_frame(&c, BCAST, a.mac, 60, 200 + i, 4, "broadcast at C");
    }

    /* The hostile node breaks its transmit ring: its queue stops, nothing else. */
    break_tx_ring(evil.fe);
    JsonNode *g = NULL;
    gint64 deadline = g_get_monotonic_time() + TMO * 1000;
    for (;;) {
        g = itest_guestd_status(&s.env);
        if (itest_bool(node_queue(g, &evil, 1), "broken"))
            break;
        json_node_unref(g);
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10000);
    }
    g_assert_false(itest_bool(node_queue(g, &evil, 0), "broken"));
    Node *all[5] = { &a, &b, &c, &stuck, &evil };
    for (guint i = 0; i < 4; i++) {
        g_assert_false(itest_bool(node_queue(g, all[i], 0), "broken"));
        g_assert_false(itest_bool(node_queue(g, all[i], 1), "broken"));
    }
    JsonObject *st = switch_status(g);
    /* At most 256 of the hostile node's addresses are held (a bucket full of its own
     * entries recycles the oldest, so a few more than 256 may have been learned on the
     * way); the rest were not learned. */
    g_assert_cmpint(itest_int(st, "macs"), <=, 3 + 256);
    g_assert_cmpint(itest_int(st, "not_learned"), >=, 1500);
    g_assert_cmpint(itest_int(st, "no_buffers"), >, 0); /* the stuck node's copies */
    json_node_unref(g);
    for (guint i = 0; i < 50; i++)
        send_frame(&b, a.mac, b.mac, 9000, i, 5);
    for (guint i = 0; i < 50; i++)
        expect_frame(&a, a.mac, b.mac, 9000, i, 5, "B -> A after the hostile node broke");

    for (guint i = 0; i < 5; i++)
        node_down(all[i]);
    sw_stop(&s);
}

/* Multi-queue ports on two workers: A has 2 queue pairs, B one. What A's pair 1
 * (worker 1) sends to B lands in B's only pair, which worker 0 polls: written by
 * both workers under its lock. Every frame checked, both ways, all pairs at once. */
static void test_multi_queue(void)
{
    Sw s;
    sw_start_workers(&s, 2);
    Node a, b;
    node_up(&s, &a, 0x0a, &(VnetFeConfig){ .pairs = 2 });
    node_up(&s, &b, 0x0b, NULL);
    VnetFe *a1 = vnet_fe_pair(a.fe, 1);
    send_frame(&b, BCAST, b.mac, 60, 0, 9);
    expect_frame(&a, BCAST, b.mac, 60, 0, 9, "hello from B"); /* worker 0: A's pair 0 */
    send_frame(&a, BCAST, a.mac, 60, 0, 9);
    expect_frame(&b, BCAST, a.mac, 60, 0, 9, "hello from A");

    enum { N = 2000 };
    static const gsize sizes[] = { 60, 1514, 9000 };
    static guint8 f[VNET_FE_MAX_FRAME], want[VNET_FE_MAX_FRAME];
    /* Streams: A pair 0 -> B, A pair 1 -> B (both into B's pair), B -> A. */
    VnetFe *from[3] = { a.fe, a1, b.fe };
    const guint8 *dst[3] = { b.mac, b.mac, a.mac }, *src[3] = { a.mac, a.mac, b.mac };
    guint64 sent[3] = { 0 }, got[3] = { 0 };
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    while (got[0] < N || got[1] < N || got[2] < N) {
        guint work = 0;
        GError *e = NULL;
        for (int k = 0; k < 3; k++) {
            while (sent[k] < N && sent[k] - got[k] < 32) {
                gsize len = sizes[sent[k] % 3];
                build(f, len, dst[k], src[k], sent[k], (guint8)(30 + k));
                int r = vnet_fe_try_send(from[k], f, len, &e);
                g_assert_no_error(e);
                if (r == 0)
                    break;
                sent[k]++;
                work++;
            }
        }
        /* B gets streams 0 and 1 interleaved (each in order); A gets stream 2. */
        for (int k = 1; k < 3; k++) {
            VnetFe *rx = k == 1 ? b.fe : a.fe;
            for (;;) {
                gsize n = 0;
                int r = vnet_fe_try_recv(rx, f, sizeof(f), &n, &e);
                g_assert_no_error(e);
                if (r == 0)
                    break;
                int st = k == 2 ? 2 : f[22] == 30 ? 0 : 1;
                gsize len = sizes[got[st] % 3];
                build(want, len, dst[st], src[st], got[st], (guint8)(30 + st));
                if (n != len || memcmp(f, want, len))
                    g_error("stream %d: frame %" G_GUINT64_FORMAT " wrong (%zu bytes, tag %u)",
                            st, got[st], n, f[22]);
                got[st]++;
                work++;
            }
        }
        if (!work) {
            if (g_get_monotonic_time() > deadline)
                g_error("multi-queue switch: %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT "/%"
                        G_GUINT64_FORMAT " of %d", got[0], got[1], got[2], N);
            vnet_fe_wait(b.fe, 0, 2);
        }
    }
    JsonNode *g = itest_guestd_status(&s.env);
    JsonObject *dp = json_object_get_object_member(json_node_get_object(g), "datapath");
    g_assert_cmpint(itest_int(dp, "workers"), ==, 2);
    g_assert_cmpint(itest_int(switch_status(g), "no_buffers"), ==, 0);
    json_node_unref(g);
    node_down(&a);
    node_down(&b);
    sw_stop(&s);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/switch/learn-flood", test_learn_flood);
    g_test_add_func("/switch/move", test_move);
    g_test_add_func("/switch/bulk", test_bulk);
    g_test_add_func("/switch/hostile", test_hostile);
    g_test_add_func("/switch/multi-queue", test_multi_queue);
    return g_test_run();
}
