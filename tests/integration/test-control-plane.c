/*
 * test-control-plane.c - the control plane end to end on the host: libvhostpci-client
 * -> vhost-pci-server (--device-host local) -> vhost-pci-guestd (--bus local), real
 * processes in a fresh temp dir per test. Each case asserts the exact socket ACKs
 * and the state both processes report (server --mgmt, guestd --status), waiting on
 * conditions by polling with a bound. Sequences of spec 1.5 / 1.6 and DESIGN 3-4.
 */
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "vp_bar.h"
#include "vp_ctrlarea.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define TMO ITEST_TIMEOUT_MS

/* ------------------------------ a pretend driver VM ------------------------------ */

/* One connection of a driver VM: its client, main RAM (a sealed 1 MiB memfd at
 * guest-physical 0), and the kick/call eventfds of its frontend. */
typedef struct {
    VpClient *c;
    char uuid[37];
    int ram_fd;
    void *ram;
    gsize ram_size;
    int efds[4];
} Vm;

#define RAM_GPA 0x0ULL
#define RAM_SIZE MiB
#define HOTPLUG_GPA (4 * GiB) /* where hot-added memory goes, as with pc-dimm */

static guint64 ring_gpa(guint64 device_id)
{
    return 0x10000 + (device_id - 1) * 0x40000;
}

static void vm_open_sized(ITestEnv *env, Vm *vm, const guint8 *uuid, gsize ram_size)
{
    memset(vm, 0, sizeof(*vm));
    vm->c = itest_client(env, uuid);
    itest_uuid(vm->c, vm->uuid);
    vm->ram_size = ram_size;
    vm->ram_fd = itest_memfd(ram_size, &vm->ram);
    itest_eventfds(vm->efds);
}

static void vm_open(ITestEnv *env, Vm *vm, const guint8 *uuid)
{
    vm_open_sized(env, vm, uuid, RAM_SIZE);
}

static void vm_close(Vm *vm)
{
    if (vm->c) {
        vp_client_close(vm->c);
        vp_client_unref(vm->c);
        vm->c = NULL;
    }
    if (vm->ram)
        munmap(vm->ram, vm->ram_size);
    vm->ram = NULL;
    vp_close_fd(&vm->ram_fd);
    vp_close_fds(vm->efds, 4);
}

static struct vp_region vm_ram(const Vm *vm)
{
    return (struct vp_region){ .gpa = RAM_GPA, .size = vm->ram_size, .mmap_offset = 0,
                               .fd = vm->ram_fd };
}

/* Frontend @id of @vm with its rings resumed at @lai0/@lai1 (the avail rings in RAM
 * say the same, so the device sees no new buffers). */
static struct vp_device_info *vm_net(Vm *vm, guint64 id, guint16 lai0, guint16 lai1)
{
    struct vp_device_info *di = g_new(struct vp_device_info, 1);
    itest_net_device(di, id, ring_gpa(id), lai0, lai1, vm->efds);
    itest_set_avail_idx(vm->ram, RAM_GPA, ring_gpa(id), 0, lai0);
    itest_set_avail_idx(vm->ram, RAM_GPA, ring_gpa(id), 1, lai1);
    return di;
}

static void assert_ack(const VpClientReply *r, guint16 type, guint64 seq, guint64 result)
{
    g_assert_cmpuint(r->type, ==, type);
    g_assert_cmpuint(r->seq, ==, seq);
    g_assert_cmpuint(r->ack.result, ==, result);
    g_assert_cmpstr(r->ack.reason, ==, "");
}

/* The three-message handshake, expecting success without renegotiation. */
static void vm_handshake(Vm *vm, guint64 id, guint16 lai0, guint16 lai1)
{
    struct vp_region r = vm_ram(vm);
    struct vp_device_info *di = vm_net(vm, id, lai0, lai1);
    VpClientHandshake res;
    GError *e = NULL;
    guint64 seq = vp_client_get_next_seq(vm->c);
    gboolean ok = vp_client_handshake_sync(vm->c, &r, 1, VP_NET_FEATURES, di, TMO, NULL,
                                           NULL, &res, &e);
    g_assert_no_error(e);
    g_assert_true(ok);
    g_free(di);
    assert_ack(&res.memory, VP_MSG_MEMORY_INFO_ACK, seq, VP_ACK_ADD_DONE);
    g_assert_cmpuint(res.features.type, ==, VP_MSG_FEATURE_BITS_ACK);
    g_assert_cmpuint(res.features.seq, ==, seq + 1);
    g_assert_cmphex(res.features.ack.feature_bits, ==, VP_NET_FEATURES);
    assert_ack(&res.device, VP_MSG_DEVICE_INFO_ACK, seq + 2, VP_ACK_ADD_DONE);
    g_assert_cmpuint(res.device.ack.device_type, ==, VP_DEV_NET);
    g_assert_cmpuint(res.device.ack.device_id, ==, id);
    g_assert_false(res.renegotiated);
    g_assert_cmphex(res.final_features, ==, VP_NET_FEATURES);
}

/* ------------------------------ state expectations ------------------------------ */

/* What both processes must report about the device of one driver VM. Fields < 0
 * are not checked. */
typedef struct {
    const char *uuid;
    int server_devices, guestd_devices; /* totals */
    int connections;                    /* server total */
    int frontends, regions, windows;    /* of uuid's device, on both sides */
    gint64 bar_size;
    gint64 not_slot;                    /* the device must have moved off this slot */
} Expect;

static Expect expect_default(const char *uuid)
{
    return (Expect){ .uuid = uuid, .server_devices = -1, .guestd_devices = -1,
                     .connections = -1, .frontends = -1, .regions = -1, .windows = -1,
                     .bar_size = -1, .not_slot = -1 };
}

static gboolean expect_holds(JsonNode *s, JsonNode *g, gpointer data)
{
    const Expect *x = data;
    if (x->server_devices >= 0 && itest_ndevices(s) != (guint)x->server_devices)
        return FALSE;
    if (g && x->guestd_devices >= 0 && itest_ndevices(g) != (guint)x->guestd_devices)
        return FALSE;
    if (x->connections >= 0 &&
        itest_int(json_node_get_object(s), "connections") != x->connections)
        return FALSE;
    if (!x->uuid || (x->frontends < 0 && x->regions < 0 && x->windows < 0 &&
                     x->bar_size < 0 && x->not_slot < 0))
        return TRUE;
    JsonObject *sd = itest_server_device(s, x->uuid);
    if (!sd || !itest_bool(sd, "driver_ok"))
        return FALSE;
    gint64 slot = itest_int(sd, "slot");
    if (x->not_slot >= 0 && slot == x->not_slot)
        return FALSE;
    JsonObject *gd = g ? itest_guestd_device(g, slot) : NULL;
    if (g && !gd)
        return FALSE;
    if (x->frontends >= 0 && (itest_len(sd, "frontends") != (guint)x->frontends ||
                              (gd && itest_len(gd, "frontends") != (guint)x->frontends)))
        return FALSE;
    if (x->regions >= 0 && (itest_len(sd, "regions") != (guint)x->regions ||
                            (gd && itest_len(gd, "regions") != (guint)x->regions)))
        return FALSE;
    if (x->windows >= 0 && (itest_len(sd, "windows") != (guint)x->windows ||
                            (gd && itest_len(gd, "windows") != (guint)x->windows)))
        return FALSE;
    if (gd && x->windows >= 0) {
        for (guint i = 0; i < itest_len(gd, "windows"); i++) {
            if (!itest_bool(itest_elem(gd, "windows", i), "mapped"))
                return FALSE;
        }
    }
    if (x->bar_size >= 0 && (itest_int(sd, "bar_size") != x->bar_size ||
                             (gd && itest_int(gd, "bar_size") != x->bar_size)))
        return FALSE;
    return TRUE;
}

static void wait_expect(ITestEnv *env, const Expect *x, const char *what)
{
    itest_wait_for(env, expect_holds, (gpointer)x, TMO, what);
}

/* Snapshots after a wait: the device of @uuid on both sides. */
typedef struct {
    JsonNode *s, *g;
    JsonObject *sd, *gd;
} Snap;

static void snap(ITestEnv *env, const char *uuid, Snap *sn)
{
    sn->s = itest_server_status(env);
    sn->g = itest_guestd_status(env);
    sn->sd = itest_server_device(sn->s, uuid);
    g_assert_nonnull(sn->sd);
    sn->gd = itest_guestd_device(sn->g, itest_int(sn->sd, "slot"));
    g_assert_nonnull(sn->gd);
}

static void snap_free(Snap *sn)
{
    json_node_unref(sn->s);
    json_node_unref(sn->g);
}

/* Region @i of a device equals (gpa, size) on both sides, at the same BAR offset. */
static void assert_region(Snap *sn, guint i, guint64 gpa, guint64 size, guint64 mmap_offset)
{
    JsonObject *sr = itest_elem(sn->sd, "regions", i), *gr = itest_elem(sn->gd, "regions", i);
    g_assert_cmphex(itest_int(sr, "gpa"), ==, gpa);
    g_assert_cmphex(itest_int(sr, "size"), ==, size);
    g_assert_cmphex(itest_int(sr, "mmap_offset"), ==, mmap_offset);
    g_assert_cmphex(itest_int(gr, "xgpa"), ==, gpa);
    g_assert_cmphex(itest_int(gr, "size"), ==, size);
    g_assert_cmphex(itest_int(gr, "bar_offset"), ==, itest_int(sr, "bar_offset"));
    /* Inside the logical BAR. */
    g_assert_true(vp_range_ok((guint64)itest_int(sr, "bar_offset"), size,
                              (guint64)itest_int(sn->sd, "bar_size")));
}

/* Frontend @i: net, @id, 2 queues of @num entries at @lai0/@lai1 (guestd side). */
static void assert_frontend(Snap *sn, guint i, guint64 id, guint num, guint16 lai0,
                            guint16 lai1)
{
    JsonObject *sf = itest_elem(sn->sd, "frontends", i), *gf = itest_elem(sn->gd, "frontends", i);
    g_assert_cmpstr(json_object_get_string_member(sf, "device_type"), ==, "net");
    g_assert_cmpuint(itest_int(sf, "device_id"), ==, id);
    g_assert_cmpuint(itest_int(sf, "nvirtqs"), ==, 2);
    g_assert_cmpuint(itest_int(gf, "device_type"), ==, VP_DEV_NET);
    g_assert_cmpuint(itest_int(gf, "device_id"), ==, id);
    g_assert_cmpuint(itest_int(gf, "nvirtqs"), ==, 2);
    g_assert_cmpuint(itest_len(gf, "queues"), ==, 2);
    for (guint q = 0; q < 2; q++) {
        JsonObject *gq = itest_elem(gf, "queues", q);
        g_assert_cmpuint(itest_int(gq, "index"), ==, q);
        g_assert_cmpuint(itest_int(gq, "num"), ==, num);
        g_assert_cmpuint(itest_int(gq, "last_avail_idx"), ==, q == 0 ? lai0 : lai1);
        g_assert_false(itest_bool(gq, "broken"));
    }
}

/* A device both sides agree is healthy and identical in its basics. */
static void assert_device_sane(Snap *sn)
{
    g_assert_true(itest_bool(sn->sd, "driver_ok"));
    g_assert_cmpuint(itest_int(sn->sd, "status") & VP_STATUS_DRIVER_OK, ==, VP_STATUS_DRIVER_OK);
    g_assert_cmpuint(itest_int(sn->sd, "status") & (VP_STATUS_NEEDS_RESET | VP_STATUS_FAILED), ==, 0);
    g_assert_cmpuint(itest_int(sn->gd, "status"), ==, itest_int(sn->sd, "status"));
    g_assert_false(itest_bool(sn->gd, "broken"));
    g_assert_cmpstr(json_object_get_string_member(sn->gd, "reason"), ==, "");
    g_assert_cmpint(itest_int(sn->gd, "bar_size"), ==, itest_int(sn->sd, "bar_size"));
    g_assert_cmpint(itest_int(sn->gd, "generation"), ==, itest_int(sn->sd, "generation"));
    g_assert_true(vp_is_pow2((guint64)itest_int(sn->sd, "bar_size")));
    g_assert_cmpuint(itest_len(sn->gd, "windows"), ==, itest_len(sn->sd, "windows"));
    for (guint i = 0; i < itest_len(sn->sd, "windows"); i++) {
        JsonObject *sw = itest_elem(sn->sd, "windows", i), *gw = itest_elem(sn->gd, "windows", i);
        g_assert_cmpint(itest_int(gw, "devfn"), ==, itest_int(sw, "devfn"));
        g_assert_cmphex(itest_int(gw, "bar_offset"), ==, itest_int(sw, "bar_offset"));
        g_assert_cmphex(itest_int(gw, "size"), ==, itest_int(sw, "size"));
        g_assert_true(itest_bool(gw, "mapped"));
        /* Aligned to its own size, inside the BAR. */
        g_assert_cmphex(itest_int(sw, "bar_offset") % itest_int(sw, "size"), ==, 0);
        g_assert_true(vp_range_ok((guint64)itest_int(sw, "bar_offset"),
                                  (guint64)itest_int(sw, "size"),
                                  (guint64)itest_int(sn->sd, "bar_size")));
    }
    g_assert_cmpint(itest_int(sn->sd, "counters.acks_fail"), ==, 0);
}

/* ------------------------------ fixture ------------------------------ */

static void env_setup(ITestEnv *env, gconstpointer data)
{
    (void)data;
    itest_env_start(env, NULL);
}

static void env_teardown(ITestEnv *env, gconstpointer data)
{
    (void)data;
    itest_env_stop(env);
}

/* ------------------------------ tests ------------------------------ */

/* Spec 1.5: MEMORY_INFO(ADD), FEATURE_BITS, DEVICE_INFO(ADD) and their three ACKs;
 * a device appears on both sides with the memory table, BAR and frontend. */
static void test_handshake(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 0, 0);

    Expect x = expect_default(vm.uuid);
    x.server_devices = x.guestd_devices = 1;
    x.connections = 1;
    x.frontends = x.regions = x.windows = 1;
    wait_expect(env, &x, "one device with 1 frontend, 1 region, 1 window");

    Snap sn;
    snap(env, vm.uuid, &sn);
    JsonObject *so = json_node_get_object(sn.s);
    g_assert_cmpstr(json_object_get_string_member(so, "device_host"), ==, "local");
    g_assert_cmpint(itest_int(so, "connections"), ==, 1);
    g_assert_cmpint(itest_int(so, "counters.bad_messages"), ==, 0);
    g_assert_cmpint(itest_int(so, "counters.messages"), ==, 3);
    g_assert_cmpstr(json_object_get_string_member(json_node_get_object(sn.g), "bus"), ==, "local");
    assert_device_sane(&sn);
    g_assert_cmpint(itest_int(sn.sd, "bar_size"), ==, vp_bar_size_for(RAM_SIZE));
    g_assert_cmpint(itest_int(sn.sd, "bar_size"), ==, 2 * MiB);
    g_assert_cmphex(itest_int(sn.sd, "features.offered"), ==, VP_NET_FEATURES);
    g_assert_cmphex(itest_int(sn.sd, "features.accepted"), ==, VP_NET_FEATURES);
    g_assert_cmphex(itest_int(sn.gd, "features"), ==, VP_NET_FEATURES);
    g_assert_cmpint(itest_int(sn.sd, "connections"), ==, 1);
    JsonObject *w = itest_elem(sn.sd, "windows", 0);
    g_assert_cmphex(itest_int(w, "bar_offset"), ==, 0);
    g_assert_cmphex(itest_int(w, "size"), ==, RAM_SIZE);
    assert_region(&sn, 0, RAM_GPA, RAM_SIZE, 0);
    assert_frontend(&sn, 0, 1, 256, 0, 0);
    g_assert_cmpint(itest_int(sn.sd, "counters.clones"), ==, 0);
    /* Three controlq messages, three good ACKs; guestd counted the same. */
    g_assert_cmpint(itest_int(sn.sd, "counters.controlq_tx"), >=, 3);
    g_assert_cmpint(itest_int(sn.sd, "counters.acks_ok"), >=, 3);
    g_assert_cmpint(itest_int(sn.gd, "acks_sent"), ==, itest_int(sn.sd, "counters.controlq_rx"));
    snap_free(&sn);
    vm_close(&vm);
}

/* vhost-pci-ctl --json prints the same document as the mgmt socket. */
static void test_ctl_status(ITestEnv *env, gconstpointer data)
{
    (void)data;
    char *ctl = itest_bin("ctl");
    gboolean have = g_file_test(ctl, G_FILE_TEST_IS_EXECUTABLE);
    g_free(ctl);
    if (!have) {
        g_test_skip("vhost-pci-ctl not built");
        return;
    }
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 0, 0);
    int st = -1;
    const char *argv[] = { "--mgmt", env->mgmt, "status", "--json", NULL };
    char *out = itest_run_ctl(argv, &st);
    g_assert_cmpint(st, ==, 0);
    JsonParser *p = json_parser_new();
    GError *e = NULL;
    g_assert_true(json_parser_load_from_data(p, out, -1, &e));
    g_assert_no_error(e);
    JsonNode *root = json_parser_get_root(p);
    g_assert_cmpuint(itest_ndevices(root), ==, 1);
    JsonObject *d = itest_server_device(root, vm.uuid);
    g_assert_nonnull(d);
    g_assert_cmpint(itest_int(d, "bar_size"), ==, 2 * MiB);
    g_object_unref(p);
    g_free(out);

    /* The human table names the device too. */
    const char *argv2[] = { "--mgmt", env->mgmt, "status", NULL };
    out = itest_run_ctl(argv2, &st);
    g_assert_cmpint(st, ==, 0);
    g_assert_nonnull(strstr(out, vm.uuid));
    g_free(out);
    vm_close(&vm);
}

/* DESIGN 4, "Feature timing": FEATURE_BITS alone on connect, before any memory, is
 * answered with the offer intersected with vhost-pci-net's features; no device. */
static void test_features_first(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    guint64 offer = VP_NET_FEATURES | (1ULL << VP_VIRTIO_NET_F_CSUM) |
                    (1ULL << VP_VIRTIO_F_RING_INDIRECT_DESC) |
                    (1ULL << VP_VHOST_USER_F_PROTOCOL_FEATURES);
    VpClientReply r;
    GError *e = NULL;
    g_assert_true(vp_client_send_features_sync(vm.c, offer, TMO, &r, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(r.type, ==, VP_MSG_FEATURE_BITS_ACK);
    g_assert_cmpuint(r.seq, ==, 1);
    g_assert_cmphex(r.ack.feature_bits, ==, VP_NET_FEATURES);
    g_assert_cmpstr(r.ack.reason, ==, "");

    JsonNode *s = itest_server_status(env);
    g_assert_cmpuint(itest_ndevices(s), ==, 0);
    g_assert_cmpint(itest_int(json_node_get_object(s), "connections"), ==, 1);
    json_node_unref(s);
    JsonNode *g = itest_guestd_status(env);
    g_assert_cmpuint(itest_ndevices(g), ==, 0);
    json_node_unref(g);

    /* The frontend negotiated the answer: the handshake needs no round. */
    vm_handshake(&vm, 1, 0, 0);
    g_assert_cmpuint(vp_client_get_next_seq(vm.c), ==, 5);
    vm_close(&vm);
}

/* Spec 1.5.1.1: the device VM accepts less than offered -> the client is told,
 * renegotiates its frontend (here: asynchronously, a little later), confirms with
 * FEATURE_BITS_ACK, and only then does the handshake finish. */
typedef struct {
    int reneg_calls, done_calls;
    guint64 offered, accepted, final;
    VpClientHandshake res;
    GError *error;
    gboolean confirm_failed;
} RenegState;

typedef struct {
    RenegState *st;
    VpClient *c;
} Confirm;

static gboolean do_confirm(gpointer data)
{
    Confirm *cf = data;
    GError *e = NULL;
    if (!vp_client_confirm_features(cf->c, cf->st->final, &e)) {
        g_test_message("confirm failed: %s", e->message);
        cf->st->confirm_failed = TRUE;
        g_error_free(e);
    }
    g_free(cf);
    return G_SOURCE_REMOVE;
}

static void reneg_cb(VpClient *c, guint64 offered, guint64 accepted, gpointer data)
{
    RenegState *st = data;
    st->reneg_calls++;
    st->offered = offered;
    st->accepted = accepted;
    /* The frontend's driver takes fewer bits still (no MAC), 100 ms later. */
    st->final = accepted & ~(1ULL << VP_VIRTIO_NET_F_MAC);
    Confirm *cf = g_new(Confirm, 1);
    cf->st = st;
    cf->c = c;
    g_timeout_add(100, do_confirm, cf);
}

static void reneg_done(VpClient *c, const VpClientHandshake *res, const GError *error,
                       gpointer data)
{
    (void)c;
    RenegState *st = data;
    st->done_calls++;
    st->res = *res;
    if (error)
        st->error = g_error_copy(error);
}

typedef struct {
    const char *uuid;
    guint64 bits;
} FeatWant;

static gboolean features_are(JsonNode *s, JsonNode *g, gpointer data)
{
    const FeatWant *w = data;
    JsonObject *sd = itest_server_device(s, w->uuid);
    if (!sd || (guint64)itest_int(sd, "features.accepted") != w->bits)
        return FALSE;
    JsonObject *gd = itest_guestd_device(g, itest_int(sd, "slot"));
    return gd && (guint64)itest_int(gd, "features") == w->bits;
}

static void test_renegotiation(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    struct vp_region r = vm_ram(&vm);
    struct vp_device_info *di = vm_net(&vm, 1, 0, 0);
    guint64 offer = VP_NET_FEATURES | (1ULL << VP_VIRTIO_NET_F_CSUM);
    RenegState st = { 0 };
    GError *e = NULL;
    g_assert_cmpuint(vp_client_handshake(vm.c, &r, 1, offer, di, TMO, reneg_cb, reneg_done,
                                         &st, &e), ==, 1);
    g_assert_no_error(e);
    g_free(di);
    gint64 deadline = g_get_monotonic_time() + 2 * TMO * 1000;
    while (!st.done_calls && g_get_monotonic_time() < deadline)
        g_main_context_iteration(NULL, TRUE);
    g_assert_cmpint(st.done_calls, ==, 1);
    g_assert_no_error(st.error);
    g_assert_false(st.confirm_failed);
    g_assert_cmpint(st.reneg_calls, ==, 1);
    g_assert_cmphex(st.offered, ==, offer);
    g_assert_cmphex(st.accepted, ==, VP_NET_FEATURES);
    g_assert_true(st.res.renegotiated);
    g_assert_cmphex(st.res.final_features, ==, VP_NET_FEATURES & ~(1ULL << VP_VIRTIO_NET_F_MAC));
    assert_ack(&st.res.memory, VP_MSG_MEMORY_INFO_ACK, 1, VP_ACK_ADD_DONE);
    g_assert_cmpuint(st.res.features.seq, ==, 2);
    g_assert_cmphex(st.res.features.ack.feature_bits, ==, VP_NET_FEATURES);
    assert_ack(&st.res.device, VP_MSG_DEVICE_INFO_ACK, 3, VP_ACK_ADD_DONE);

    Expect x = expect_default(vm.uuid);
    x.frontends = 1;
    wait_expect(env, &x, "device with its frontend after the renegotiation");
    guint64 final = VP_NET_FEATURES & ~(1ULL << VP_VIRTIO_NET_F_MAC);
    itest_wait_for(env, features_are, &(FeatWant){ vm.uuid, final }, TMO,
                   "the confirmed bits on both sides");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    g_assert_cmphex(itest_int(sn.sd, "features.offered"), ==, offer);
    /* The server settles on the bits the client confirmed and relays them. */
    g_assert_cmphex(itest_int(sn.sd, "features.accepted"), ==, final);
    g_assert_cmphex(itest_int(sn.gd, "features"), ==, final);
    snap_free(&sn);

    /* Everything still works afterwards. */
    struct vp_device_info *upd = vm_net(&vm, 1, 3, 4);
    VpClientReply rr;
    g_assert_true(vp_client_device_add_sync(vm.c, upd, TMO, &rr, &e));
    g_assert_no_error(e);
    g_free(upd);
    vm_close(&vm);
}

/* Spec 1.6.1.1: new info for a frontend the device already has is DEVICE_INFO(ADD)
 * again; the device VM takes the new rings (size, position) in place. */
static void test_device_update(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 0, 0);

    struct vp_device_info *di = vm_net(&vm, 1, 7, 300);
    for (guint q = 0; q < 2; q++)
        di->virtqs[q].num = 128;
    VpClientReply r;
    GError *e = NULL;
    g_assert_true(vp_client_device_add_sync(vm.c, di, TMO, &r, &e));
    g_assert_no_error(e);
    g_free(di);
    assert_ack(&r, VP_MSG_DEVICE_INFO_ACK, 4, VP_ACK_ADD_DONE);
    g_assert_cmpuint(r.ack.device_id, ==, 1);

    Expect x = expect_default(vm.uuid);
    x.frontends = 1;
    wait_expect(env, &x, "still one frontend");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    assert_frontend(&sn, 0, 1, 128, 7, 300);
    snap_free(&sn);
    vm_close(&vm);
}

/* DEVICE_INFO(DEL): DEL_DONE carries each queue's last_avail_idx (DESIGN 4), the
 * frontend is gone on both sides, the device stays. */
static void test_device_del(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 5, 65535);
    Expect x = expect_default(vm.uuid);
    x.frontends = 1;
    wait_expect(env, &x, "one frontend");

    VpClientReply r;
    GError *e = NULL;
    g_assert_true(vp_client_device_del_sync(vm.c, VP_DEV_NET, 1, TMO, &r, &e));
    g_assert_no_error(e);
    assert_ack(&r, VP_MSG_DEVICE_INFO_ACK, 4, VP_ACK_DEL_DONE);
    g_assert_cmpuint(r.ack.device_type, ==, VP_DEV_NET);
    g_assert_cmpuint(r.ack.device_id, ==, 1);
    g_assert_cmpuint(r.ack.npositions, ==, 2);
    for (guint i = 0; i < 2; i++) {
        guint idx = r.ack.positions[i].index;
        g_assert_cmpuint(idx, <, 2);
        g_assert_cmpuint(r.ack.positions[i].last_avail_idx, ==, idx == 0 ? 5 : 65535);
    }
    g_assert_cmpuint(r.ack.positions[0].index, !=, r.ack.positions[1].index);

    x.frontends = 0;
    x.regions = 1;
    wait_expect(env, &x, "no frontend, memory kept");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    snap_free(&sn);

    /* And back: the frontend can be added again, resuming where it stopped. */
    struct vp_device_info *di = vm_net(&vm, 1, 5, 65535);
    g_assert_true(vp_client_device_add_sync(vm.c, di, TMO, &r, &e));
    g_assert_no_error(e);
    g_free(di);
    x.frontends = 1;
    wait_expect(env, &x, "frontend added again");
    vm_close(&vm);
}

/* Hot-added memory that fits in the BAR: a new window at a free offset, same device. */
static void test_memory_add_fits(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 0, 0);
    JsonNode *s0 = itest_server_status(env);
    JsonObject *d0 = itest_server_device(s0, vm.uuid);
    gint64 slot = itest_int(d0, "slot"), gen = itest_int(d0, "generation");
    json_node_unref(s0);

    int fd = itest_memfd(MiB, NULL);
    struct vp_region r = { .gpa = HOTPLUG_GPA, .size = MiB, .mmap_offset = 0, .fd = fd };
    VpClientReply rep;
    GError *e = NULL;
    g_assert_true(vp_client_memory_add_sync(vm.c, &r, 1, TMO, &rep, &e));
    g_assert_no_error(e);
    assert_ack(&rep, VP_MSG_MEMORY_INFO_ACK, 4, VP_ACK_ADD_DONE);
    vp_close_fd(&fd); /* the server has its own reference now */

    Expect x = expect_default(vm.uuid);
    x.regions = x.windows = 2;
    x.server_devices = x.guestd_devices = 1;
    wait_expect(env, &x, "2 regions in 2 windows");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    g_assert_cmpint(itest_int(sn.sd, "slot"), ==, slot);
    g_assert_cmpint(itest_int(sn.sd, "bar_size"), ==, 2 * MiB);
    g_assert_cmpint(itest_int(sn.sd, "generation"), >, gen);
    g_assert_cmpint(itest_int(sn.sd, "counters.clones"), ==, 0);
    assert_region(&sn, 0, RAM_GPA, RAM_SIZE, 0);
    assert_region(&sn, 1, HOTPLUG_GPA, MiB, 0);
    g_assert_cmphex(itest_int(itest_elem(sn.sd, "regions", 1), "bar_offset"), ==, MiB);
    assert_frontend(&sn, 0, 1, 256, 0, 0);
    snap_free(&sn);
    vm_close(&vm);
}

/* Hot-added memory that does not fit: the device is cloned (spec 1.6.1.2) with
 * bar_size = pow2ceil(2 x total); the old device is gone, the new one has the full
 * memory table and the frontend at its old position; the client sees one ACK. */
static void test_memory_add_clone(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 11, 22);
    JsonNode *s0 = itest_server_status(env);
    gint64 old_slot = itest_int(itest_server_device(s0, vm.uuid), "slot");
    json_node_unref(s0);

    /* 2 MiB more: no 2 MiB-aligned free room in a 2 MiB BAR holding 1 MiB. */
    int fd = itest_memfd(2 * MiB, NULL);
    struct vp_region r = { .gpa = HOTPLUG_GPA, .size = 2 * MiB, .mmap_offset = 0, .fd = fd };
    VpClientReply rep;
    GError *e = NULL;
    g_assert_true(vp_client_memory_add_sync(vm.c, &r, 1, 2 * TMO, &rep, &e));
    g_assert_no_error(e);
    assert_ack(&rep, VP_MSG_MEMORY_INFO_ACK, 4, VP_ACK_ADD_DONE);
    vp_close_fd(&fd);

    guint64 want_bar = vp_bar_size_for(RAM_SIZE + 2 * MiB);
    g_assert_cmpuint(want_bar, ==, 8 * MiB);
    Expect x = expect_default(vm.uuid);
    x.server_devices = x.guestd_devices = 1;
    x.regions = x.windows = 2;
    x.frontends = 1;
    x.bar_size = (gint64)want_bar;
    x.not_slot = old_slot;
    wait_expect(env, &x, "the clone alone, with the full table, old device gone");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    g_assert_cmpint(itest_int(sn.sd, "counters.clones"), ==, 1);
    g_assert_cmpint(itest_int(sn.sd, "bar_size"), >=, 2 * 2 * MiB);
    g_assert_null(itest_guestd_device(sn.g, old_slot));
    assert_region(&sn, 0, RAM_GPA, RAM_SIZE, 0);
    assert_region(&sn, 1, HOTPLUG_GPA, 2 * MiB, 0);
    /* The frontend was replayed at the positions collected from the old device. */
    assert_frontend(&sn, 0, 1, 256, 11, 22);
    g_assert_cmphex(itest_int(sn.gd, "features"), ==, VP_NET_FEATURES);
    snap_free(&sn);

    /* The clone works: a DEVICE_INFO update and a DEL with positions. */
    struct vp_device_info *di = vm_net(&vm, 1, 12, 23);
    g_assert_true(vp_client_device_add_sync(vm.c, di, TMO, &rep, &e));
    g_assert_no_error(e);
    g_free(di);
    g_assert_true(vp_client_device_del_sync(vm.c, VP_DEV_NET, 1, TMO, &rep, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(rep.ack.npositions, ==, 2);
    vm_close(&vm);
}

static void mem_add(Vm *vm, guint64 gpa, gsize size, guint64 seq)
{
    int fd = itest_memfd(size, NULL);
    struct vp_region r = { .gpa = gpa, .size = size, .mmap_offset = 0, .fd = fd };
    VpClientReply rep;
    GError *e = NULL;
    g_assert_true(vp_client_memory_add_sync(vm->c, &r, 1, 2 * TMO, &rep, &e));
    g_assert_no_error(e);
    assert_ack(&rep, VP_MSG_MEMORY_INFO_ACK, seq, VP_ACK_ADD_DONE);
    vp_close_fd(&fd);
}

/* Cloning where the BAR exactly doubles, as spec 1.6.1.2 words it: 512 KiB of RAM
 * in a 2 MiB BAR, 512 KiB hot-added twice (windows at 512 KiB and 1 MiB), the
 * first removed again (a hole), then 1 MiB that finds no 1 MiB-aligned room: a
 * clone with pow2ceil(2 x 2 MiB) = 4 MiB, the hole closed up. */
static void test_memory_add_clone_doubles(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open_sized(env, &vm, NULL, MiB / 2);
    vm_handshake(&vm, 1, 3, 4);
    mem_add(&vm, HOTPLUG_GPA, MiB / 2, 4);
    mem_add(&vm, HOTPLUG_GPA + GiB, MiB / 2, 5);
    struct vp_region del = { .gpa = HOTPLUG_GPA, .size = MiB / 2, .fd = -1 };
    VpClientReply rep;
    GError *e = NULL;
    g_assert_true(vp_client_memory_del_sync(vm.c, &del, 1, TMO, &rep, &e));
    g_assert_no_error(e);
    assert_ack(&rep, VP_MSG_MEMORY_INFO_ACK, 6, VP_ACK_DEL_DONE);
    Expect x = expect_default(vm.uuid);
    x.regions = x.windows = 2;
    x.bar_size = 2 * MiB;
    wait_expect(env, &x, "RAM and the second hot-added region, 2 MiB BAR");
    JsonNode *s0 = itest_server_status(env);
    JsonObject *d0 = itest_server_device(s0, vm.uuid);
    gint64 old_slot = itest_int(d0, "slot");
    g_assert_cmpint(itest_int(d0, "counters.clones"), ==, 0);
    json_node_unref(s0);

    mem_add(&vm, HOTPLUG_GPA + 2 * GiB, MiB, 7);
    x.server_devices = x.guestd_devices = 1;
    x.regions = x.windows = 3;
    x.frontends = 1;
    x.bar_size = 4 * MiB;
    x.not_slot = old_slot;
    wait_expect(env, &x, "the clone with a 4 MiB BAR, old device gone");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    g_assert_cmpint(itest_int(sn.sd, "counters.clones"), ==, 1);
    g_assert_null(itest_guestd_device(sn.g, old_slot));
    assert_region(&sn, 0, RAM_GPA, MiB / 2, 0);
    assert_region(&sn, 1, HOTPLUG_GPA + GiB, MiB / 2, 0);
    assert_region(&sn, 2, HOTPLUG_GPA + 2 * GiB, MiB, 0);
    assert_frontend(&sn, 0, 1, 256, 3, 4);
    snap_free(&sn);
    vm_close(&vm);
}

/* Issue 13 item 3: a memory file whose size is not a power of two (3 MiB) is served
 * as power-of-two windows (2 MiB + 1 MiB) by a host that maps parts of files (the
 * local host; QEMU >= 8.1). First hot-add: its 4 MiB span does not fit the 2 MiB BAR,
 * so the device is cloned with the pieces; one region covers both pieces, at one
 * contiguous BAR offset. A second split file fits without cloning; removing a split
 * file removes all its windows. */
static void test_memory_add_split(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 5, 6);
    JsonNode *s0 = itest_server_status(env);
    gint64 old_slot = itest_int(itest_server_device(s0, vm.uuid), "slot");
    json_node_unref(s0);

    mem_add(&vm, HOTPLUG_GPA, 3 * MiB, 4);
    Expect x = expect_default(vm.uuid);
    x.server_devices = x.guestd_devices = 1;
    x.regions = 2;
    x.windows = 3;                /* RAM + 2 pieces */
    x.frontends = 1;
    x.bar_size = 16 * MiB;        /* pow2ceil(2 x (1 MiB + 4 MiB span)) */
    x.not_slot = old_slot;
    wait_expect(env, &x, "the clone with the 3 MiB file as 2 + 1 MiB windows");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);      /* every window a power of two, aligned, mapped */
    g_assert_cmpint(itest_int(sn.sd, "counters.clones"), ==, 1);
    assert_region(&sn, 1, HOTPLUG_GPA, 3 * MiB, 0);
    guint64 base = (guint64)itest_int(itest_elem(sn.sd, "regions", 1), "bar_offset");
    guint npieces = 0;
    for (guint i = 0; i < itest_len(sn.sd, "windows"); i++) {
        JsonObject *w = itest_elem(sn.sd, "windows", i);
        if (itest_int(w, "file_size") != 3 * MiB)
            continue;
        npieces++;
        /* Piece k sits at the region's BAR offset + its offset in the file. */
        g_assert_cmphex(itest_int(w, "bar_offset"), ==, base + itest_int(w, "file_offset"));
        g_assert_cmphex(itest_int(w, "size"), ==, itest_int(w, "file_offset") ? MiB : 2 * MiB);
    }
    g_assert_cmpuint(npieces, ==, 2);
    assert_frontend(&sn, 0, 1, 256, 5, 6);
    snap_free(&sn);

    /* A second 3 MiB file fits the 16 MiB BAR: no clone, two more windows. */
    mem_add(&vm, HOTPLUG_GPA + GiB, 3 * MiB, 5);
    x.regions = 3;
    x.windows = 5;
    x.not_slot = -1;
    wait_expect(env, &x, "a second split file: 5 windows, no clone");
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    g_assert_cmpint(itest_int(sn.sd, "counters.clones"), ==, 1);
    snap_free(&sn);

    /* Removing it removes both of its windows. */
    struct vp_region del = { .gpa = HOTPLUG_GPA + GiB, .size = 3 * MiB, .fd = -1 };
    VpClientReply rep;
    GError *e = NULL;
    g_assert_true(vp_client_memory_del_sync(vm.c, &del, 1, TMO, &rep, &e));
    g_assert_no_error(e);
    assert_ack(&rep, VP_MSG_MEMORY_INFO_ACK, 6, VP_ACK_DEL_DONE);
    x.regions = 2;
    x.windows = 3;
    wait_expect(env, &x, "the second split file's two windows gone");
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    snap_free(&sn);
    vm_close(&vm);
}

/* MEMORY_INFO(DEL) of a hot-added region: DEL_DONE, region and window gone on both
 * sides. */
static void test_memory_del(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm vm;
    vm_open(env, &vm, NULL);
    vm_handshake(&vm, 1, 0, 0);
    int fd = itest_memfd(MiB, NULL);
    struct vp_region r = { .gpa = HOTPLUG_GPA, .size = MiB, .mmap_offset = 0, .fd = fd };
    VpClientReply rep;
    GError *e = NULL;
    g_assert_true(vp_client_memory_add_sync(vm.c, &r, 1, TMO, &rep, &e));
    g_assert_no_error(e);
    vp_close_fd(&fd);
    Expect x = expect_default(vm.uuid);
    x.regions = x.windows = 2;
    wait_expect(env, &x, "2 regions");

    r.fd = -1;
    g_assert_true(vp_client_memory_del_sync(vm.c, &r, 1, TMO, &rep, &e));
    g_assert_no_error(e);
    assert_ack(&rep, VP_MSG_MEMORY_INFO_ACK, 5, VP_ACK_DEL_DONE);
    x.regions = x.windows = 1;
    wait_expect(env, &x, "1 region, 1 window after DEL");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    assert_region(&sn, 0, RAM_GPA, RAM_SIZE, 0);
    snap_free(&sn);
    vm_close(&vm);
}

/* A second frontend of the same driver VM (same client_uuid, its own connection)
 * shares the vhost-pci device. */
static void test_second_frontend_shares(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm a, b;
    vm_open(env, &a, NULL);
    vm_handshake(&a, 1, 0, 0);
    vm_open(env, &b, vp_client_get_uuid(a.c));
    g_assert_cmpstr(a.uuid, ==, b.uuid);
    /* The second connection describes the same RAM (same file) and its frontend. */
    vp_close_fd(&b.ram_fd);
    munmap(b.ram, RAM_SIZE);
    b.ram = a.ram;
    b.ram_fd = dup(a.ram_fd);
    /* Its QEMU asks for features first; the device exists, so the device VM answers,
     * with fewer bits than offered: the server waits for the round's confirmation. */
    VpClientReply fr;
    GError *e = NULL;
    g_assert_true(vp_client_send_features_sync(b.c, VP_NET_FEATURES | 1ULL << VP_VIRTIO_NET_F_CSUM,
                                               TMO, &fr, &e));
    g_assert_no_error(e);
    g_assert_cmphex(fr.ack.feature_bits, ==, VP_NET_FEATURES);
    g_assert_true(vp_client_confirm_features(b.c, VP_NET_FEATURES, &e));
    g_assert_no_error(e);
    vm_handshake(&b, 2, 0, 0);
    b.ram = NULL;
    JsonNode *s0 = itest_server_status(env);
    g_assert_cmpint(itest_int(json_node_get_object(s0), "counters.bad_messages"), ==, 0);
    json_node_unref(s0);

    Expect x = expect_default(a.uuid);
    x.server_devices = x.guestd_devices = 1;
    x.connections = 2;
    x.frontends = 2;
    x.regions = x.windows = 1;
    wait_expect(env, &x, "one device, two frontends");
    Snap sn;
    snap(env, a.uuid, &sn);
    assert_device_sane(&sn);
    g_assert_cmpint(itest_int(sn.sd, "connections"), ==, 2);
    assert_frontend(&sn, 0, 1, 256, 0, 0);
    assert_frontend(&sn, 1, 2, 256, 0, 0);
    snap_free(&sn);
    vm_close(&b);
    vm_close(&a);
}

/* Two driver VMs: two devices, two slots, two uuids. */
static void test_two_driver_vms(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm a, b;
    vm_open(env, &a, NULL);
    vm_open(env, &b, NULL);
    vm_handshake(&a, 1, 0, 0);
    vm_handshake(&b, 1, 0, 0);
    Expect x = expect_default(NULL);
    x.server_devices = x.guestd_devices = 2;
    x.connections = 2;
    wait_expect(env, &x, "two devices");
    Snap sa, sb;
    snap(env, a.uuid, &sa);
    snap(env, b.uuid, &sb);
    assert_device_sane(&sa);
    assert_device_sane(&sb);
    g_assert_cmpint(itest_int(sa.sd, "slot"), !=, itest_int(sb.sd, "slot"));
    g_assert_cmpint(itest_int(sa.sd, "connections"), ==, 1);
    g_assert_cmpint(itest_int(sb.sd, "connections"), ==, 1);
    assert_frontend(&sa, 0, 1, 256, 0, 0);
    assert_frontend(&sb, 0, 1, 256, 0, 0);
    snap_free(&sa);
    snap_free(&sb);
    vm_close(&a);
    vm_close(&b);
}

/* Spec 1.6.1.2: the device lives while any connection of its driver VM does. */
static void test_last_close_destroys(ITestEnv *env, gconstpointer data)
{
    (void)data;
    Vm a, b;
    vm_open(env, &a, NULL);
    vm_handshake(&a, 1, 0, 0);
    vm_open(env, &b, vp_client_get_uuid(a.c));
    struct vp_device_info *di = vm_net(&a, 2, 0, 0);
    VpClientReply r;
    GError *e = NULL;
    g_assert_true(vp_client_device_add_sync(b.c, di, TMO, &r, &e));
    g_assert_no_error(e);
    g_free(di);
    Expect x = expect_default(a.uuid);
    x.connections = 2;
    x.frontends = 2;
    wait_expect(env, &x, "two connections, two frontends");

    JsonNode *s0 = itest_server_status(env);
    gint64 disc0 = itest_int(json_node_get_object(s0), "counters.disconnects");
    json_node_unref(s0);

    vm_close(&a);
    x = expect_default(b.uuid);
    x.server_devices = x.guestd_devices = 1;
    x.connections = 1;
    x.frontends = 1; /* the closed connection's frontend went with it */
    wait_expect(env, &x, "device kept for the remaining connection");
    Snap sn;
    snap(env, b.uuid, &sn);
    g_assert_cmpint(itest_int(sn.sd, "connections"), ==, 1);
    assert_frontend(&sn, 0, 2, 256, 0, 0);
    snap_free(&sn);

    vm_close(&b);
    x = expect_default(NULL);
    x.server_devices = x.guestd_devices = 0;
    x.connections = 0;
    wait_expect(env, &x, "device destroyed after the last connection");
    JsonNode *s1 = itest_server_status(env);
    g_assert_cmpint(itest_int(json_node_get_object(s1), "counters.disconnects"), ==, disc0 + 2);
    json_node_unref(s1);
}

/* A client killed in the middle of the handshake (after MEMORY_INFO) leaves nothing
 * behind; a new client of the same driver VM then completes. */
static void test_client_killed_mid_handshake(ITestEnv *env, gconstpointer data)
{
    (void)data;
    guint8 uuid[16];
    for (guint i = 0; i < 16; i++)
        uuid[i] = (guint8)g_random_int();
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    int ramfd = itest_memfd(RAM_SIZE, NULL);
    /* Warm up (a whole device life), so that the fd baseline is a steady state
     * with the guestd's bus connection and GLib's lazily created fds in it. */
    Vm w;
    vm_open(env, &w, NULL);
    vm_handshake(&w, 1, 0, 0);
    vm_close(&w);
    Expect x = expect_default(NULL);
    x.server_devices = x.guestd_devices = 0;
    x.connections = 0;
    wait_expect(env, &x, "warm-up device gone");
    int server_fds = itest_count_fds(env->server_pid);

    pid_t pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        /* The child: no GLib from here, just the socket. */
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        g_strlcpy(sa.sun_path, env->sock, sizeof(sa.sun_path));
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            _exit(2);
        struct vp_memory_info mi;
        vp_memory_info_init(&mi);
        mi.op = VP_OP_ADD;
        mi.nregions = 1;
        mi.regions[0] = (struct vp_region){ .gpa = RAM_GPA, .size = RAM_SIZE, .fd = ramfd };
        struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = 1 };
        memcpy(h.uuid, uuid, 16);
        _exit(vp_send_memory_info(s, &h, &mi) == 0 ? 0 : 3);
    }
    int st;
    g_assert_cmpint(waitpid(pid, &st, 0), ==, pid);
    g_assert_true(WIFEXITED(st));
    g_assert_cmpint(WEXITSTATUS(st), ==, 0);

    /* Whatever the server had started for it is undone. */
    wait_expect(env, &x, "no device, no connection after the client died");
    JsonNode *s = itest_server_status(env);
    g_assert_cmpint(itest_int(json_node_get_object(s), "counters.disconnects"), ==, 2);
    json_node_unref(s);
    itest_wait_fds(env->server_pid, server_fds, TMO, "server after the killed client");

    Vm vm;
    vm_open(env, &vm, uuid);
    vm_handshake(&vm, 1, 0, 0);
    x = expect_default(vm.uuid);
    x.server_devices = x.guestd_devices = 1;
    x.frontends = x.regions = x.windows = 1;
    wait_expect(env, &x, "the new client's device");
    Snap sn;
    snap(env, vm.uuid, &sn);
    assert_device_sane(&sn);
    snap_free(&sn);
    vm_close(&vm);
    vp_close_fd(&ramfd);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_default();
#define ADD(path, fn) g_test_add("/control-plane/" path, ITestEnv, NULL, env_setup, fn, env_teardown)
    ADD("handshake", test_handshake);
    ADD("ctl-status", test_ctl_status);
    ADD("features-first", test_features_first);
    ADD("renegotiation", test_renegotiation);
    ADD("device-update", test_device_update);
    ADD("device-del", test_device_del);
    ADD("memory-add-fits", test_memory_add_fits);
    ADD("memory-add-clone", test_memory_add_clone);
    ADD("memory-add-clone-doubles", test_memory_add_clone_doubles);
    ADD("memory-del", test_memory_del);
    ADD("memory-add-split", test_memory_add_split);
    ADD("second-frontend-shares", test_second_frontend_shares);
    ADD("two-driver-vms", test_two_driver_vms);
    ADD("last-close-destroys", test_last_close_destroys);
    ADD("client-killed-mid-handshake", test_client_killed_mid_handshake);
#undef ADD
    return g_test_run();
}
