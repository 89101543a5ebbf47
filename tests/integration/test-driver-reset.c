/*
 * test-driver-reset.c - a guest driver that goes away and comes back, with real
 * processes: libvhostpci-client (or the userspace virtio-net frontend of
 * tools/vnet-frontend) -> vhost-pci-server (--device-host local) ->
 * vhost-pci-guestd (--bus local), and a fake guestd in a thread that breaks the
 * device on purpose.
 *
 * What must hold when the device VM's guest driver is killed and a new one connects
 * to the same local bus (nothing done on the driver VM's side):
 *  - the local device host replays the control function and windows to it, the new
 *    guestd resets the control area its predecessor left (status 0, reset request,
 *    then the handshake), the server re-attaches its controlq and replays the memory
 *    table, the features and every frontend (mgmt: driver_ok, not needs_reset, one
 *    reset counted); later requests complete as before;
 *  - traffic through guestd's loopback endpoint flows again from where it stopped,
 *    every frame checked byte for byte;
 *  - a device in NEEDS_RESET (a guestd that put garbage on the controlq) recovers
 *    when a good guestd replaces the bad one;
 *  - the server holds the same number of fds afterwards.
 */
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "itest.h"
#include "itest_fakegd.h"
#include "itest_frames.h"
#include "vp_ctrlarea.h"
#include "vp_wire.h"

#define MiB (1ULL << 20)
#define TMO ITEST_TIMEOUT_MS
#define RING_GPA 0x10000ULL
#define STATUS_ALL (VP_STATUS_ACKNOWLEDGE | VP_STATUS_DRIVER | VP_STATUS_FEATURES_OK | \
                    VP_STATUS_DRIVER_OK)

/* ------------------------------ expectations ------------------------------ */

/* The device of @uuid is back: server driver_ok and not needs_reset with @resets
 * resets counted, guestd shows the device at the server's slot with full status,
 * @regions regions and @frontends frontends. */
typedef struct {
    const char *uuid;
    gint64 resets;
    guint regions, frontends;
} Back;

static gboolean device_back(JsonNode *s, JsonNode *g, gpointer data)
{
    const Back *b = data;
    JsonObject *sd = itest_server_device(s, b->uuid);
    if (!sd || !itest_bool(sd, "driver_ok") || itest_bool(sd, "needs_reset"))
        return FALSE;
    if (itest_int(sd, "counters.resets") != b->resets)
        return FALSE;
    if (itest_len(sd, "regions") != b->regions || itest_len(sd, "frontends") != b->frontends)
        return FALSE;
    JsonObject *gd = g ? itest_guestd_device(g, itest_int(sd, "slot")) : NULL;
    if (!gd || itest_bool(gd, "broken") || itest_int(gd, "status") != STATUS_ALL)
        return FALSE;
    return itest_len(gd, "regions") == b->regions && itest_len(gd, "frontends") == b->frontends;
}

static gboolean device_needs_reset(JsonNode *s, JsonNode *g, gpointer data)
{
    (void)g;
    JsonObject *sd = itest_server_device(s, data);
    return sd && itest_bool(sd, "needs_reset");
}

/* How many lines of the server's log contain @needle. */
static guint server_log_count(ITestEnv *env, const char *needle)
{
    gchar *text = NULL;
    g_assert_true(g_file_get_contents(env->server_log, &text, NULL, NULL));
    guint n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    g_free(text);
    return n;
}

static void assert_resets(ITestEnv *env, const char *uuid, gint64 want)
{
    JsonNode *s = itest_server_status(env);
    JsonObject *sd = itest_server_device(s, uuid);
    g_assert_nonnull(sd);
    g_assert_cmpint(itest_int(sd, "counters.resets"), ==, want);
    g_assert_cmpstr(json_object_get_string_member(sd, "reason"), ==, "");
    json_node_unref(s);
    g_assert_cmpuint(server_log_count(env, "guest driver reset the device"), ==, (guint)want);
}

/* ------------------------------ a pretend driver VM ------------------------------ */

typedef struct {
    VpClient *c;
    char uuid[37];
    int ram_fd;
    void *ram;
    int efds[4];
} Vm;

static void vm_open(ITestEnv *env, Vm *vm)
{
    memset(vm, 0, sizeof(*vm));
    vm->c = itest_client(env, NULL);
    itest_uuid(vm->c, vm->uuid);
    vm->ram_fd = itest_memfd(MiB, &vm->ram);
    itest_eventfds(vm->efds);
}

static void vm_close(Vm *vm)
{
    vp_client_close(vm->c);
    vp_client_unref(vm->c);
    munmap(vm->ram, MiB);
    vp_close_fd(&vm->ram_fd);
    vp_close_fds(vm->efds, 4);
}

static void vm_net(Vm *vm, struct vp_device_info *di, guint16 num0)
{
    itest_net_device(di, 1, RING_GPA, 0, 0, vm->efds);
    di->virtqs[0].num = num0;
}

static void vm_handshake(Vm *vm)
{
    struct vp_region r = { .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = vm->ram_fd };
    struct vp_device_info di;
    vm_net(vm, &di, 256);
    VpClientHandshake res;
    GError *e = NULL;
    gboolean ok = vp_client_handshake_sync(vm->c, &r, 1, VP_NET_FEATURES, &di, TMO, NULL, NULL,
                                           &res, &e);
    g_assert_no_error(e);
    g_assert_true(ok);
    g_assert_cmpuint(res.memory.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmphex(res.features.ack.feature_bits, ==, VP_NET_FEATURES);
    g_assert_cmpuint(res.device.ack.result, ==, VP_ACK_ADD_DONE);
}

/* A DEVICE_INFO update (queue 0 resized to @num0): expect ADD_DONE. */
static void vm_update(Vm *vm, guint16 num0)
{
    struct vp_device_info di;
    vm_net(vm, &di, num0);
    VpClientReply rep;
    GError *e = NULL;
    gboolean ok = vp_client_device_add_sync(vm->c, &di, TMO, &rep, &e);
    g_assert_no_error(e);
    g_assert_true(ok);
    g_assert_cmpuint(rep.type, ==, VP_MSG_DEVICE_INFO_ACK);
    g_assert_cmpuint(rep.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpstr(rep.ack.reason, ==, "");
}

/* The only frontend of guestd's only device, or NULL while there is not exactly one
 * of each (or guestd is not running). */
static JsonObject *guestd_only_frontend(JsonNode *g)
{
    JsonObject *gd = g && itest_ndevices(g) == 1 ? itest_elem(json_node_get_object(g),
                                                               "devices", 0) : NULL;
    if (!gd || itest_len(gd, "frontends") != 1)
        return NULL;
    return itest_elem(gd, "frontends", 0);
}

static gboolean guestd_queue0_num(JsonNode *s, JsonNode *g, gpointer data)
{
    (void)s;
    JsonObject *fe = guestd_only_frontend(g);
    return fe && itest_len(fe, "queues") == 2 &&
           itest_int(itest_elem(fe, "queues", 0), "num") == GPOINTER_TO_INT(data);
}

/* ------------------------------ (a) restart ------------------------------ */

/* SIGKILL guestd after the handshake, start a new one on the same local bus: the
 * device comes back with its memory table and frontend, and the next request of the
 * driver VM completes. Twice; the second time the server sees the old guestd's
 * hang-up and the new one's connection at once. */
static void test_restart(void)
{
    ITestEnv env;
    itest_env_start(&env, NULL);
    Vm vm;
    vm_open(&env, &vm);
    vm_handshake(&vm);
    Back back = { .uuid = vm.uuid, .resets = 0, .regions = 1, .frontends = 1 };
    itest_wait_for(&env, device_back, &back, TMO, "device after the handshake");
    int fds = itest_count_fds(env.server_pid);

    for (gint64 round = 1; round <= 2; round++) {
        /* Round 2: the server handles the old guestd's EOF and the new one's connect
         * in the same main loop iteration (it was stopped meanwhile). */
        if (round == 2)
            g_assert_cmpint(kill(env.server_pid, SIGSTOP), ==, 0);
        itest_kill_guestd(&env);
        itest_start_guestd(&env);
        if (round == 2)
            g_assert_cmpint(kill(env.server_pid, SIGCONT), ==, 0);
        back.resets = round;
        itest_wait_for(&env, device_back, &back, TMO, "device back after a guestd restart");
        assert_resets(&env, vm.uuid, round);
        /* The driver VM's next request completes and reaches the new guestd. */
        guint16 num = round == 1 ? 128 : 64;
        vm_update(&vm, num);
        itest_wait_for(&env, guestd_queue0_num, GINT_TO_POINTER(num), TMO,
                       "the update in the new guestd");
        itest_wait_fds(env.server_pid, fds, TMO, "server after a guestd restart");
    }
    vm_close(&vm);
    itest_env_stop(&env);
}

/* ------------------------------ (b) data path ------------------------------ */

/* Frames (itest_frames.h): stream 0, sizes cycling through FRAME_SIZES. */
static const gsize FRAME_SIZES[] = { 60, 1514, 9000 };

static gsize frame_len(guint64 seq)
{
    return itest_frame_size(FRAME_SIZES, G_N_ELEMENTS(FRAME_SIZES), seq);
}

/* Send frames [first, first + n) through guestd's loopback and check each one comes
 * back, in order, byte for byte (at most @window in flight; 30 s bound). */
static void loop_traffic(VnetFe *fe, guint64 first, guint64 n, guint window)
{
    itest_loop_traffic(fe, first, n, FRAME_SIZES, G_N_ELEMENTS(FRAME_SIZES), window, 0, 30);
}

/* guestd's receive queue of its only frontend has carried @data packets. */
static gboolean guestd_rx_packets(JsonNode *s, JsonNode *g, gpointer data)
{
    (void)s;
    JsonObject *fe = guestd_only_frontend(g);
    return fe && itest_int(itest_elem(fe, "queues", 0), "packets") >= GPOINTER_TO_INT(data);
}

/* Traffic through guestd --endpoint loopback before the kill and again once the new
 * guestd took over: the frontend resumes where the old guestd's used rings stopped.
 * The driver VM has @ram bytes in one file: served as @nwin windows (6 MiB: 4 + 2 MiB,
 * issue 13 item 3, its one region spanning both). */
static void run_datapath(gsize ram, guint nwin)
{
    GError *e = NULL;
    char *tmp = g_dir_make_tmp("vp-reset-XXXXXX", &e);
    g_assert_no_error(e);
    char *wrapper = itest_guestd_endpoint_wrapper(tmp, "loopback");
    g_setenv("VP_GUESTD_BIN", wrapper, TRUE);

    ITestEnv env;
    itest_env_start(&env, NULL);
    VnetVm *vm = itest_vnet_vm(&env, ram);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1 });
    char uuid[37];
    itest_uuid(vm->client, uuid);
    loop_traffic(fe, 0, 600, 32);
    Back back = { .uuid = uuid, .resets = 0, .regions = 1, .frontends = 1 };
    itest_wait_for(&env, device_back, &back, TMO, "device with traffic");
    JsonNode *st = itest_server_status(&env);
    g_assert_cmpuint(itest_len(itest_server_device(st, uuid), "windows"), ==, nwin);
    json_node_unref(st);
    int fds = itest_count_fds(env.server_pid);

    /* Frames in flight when it dies: looped back by the old guestd into the receive
     * ring but not yet taken by the frontend. */
    static guint8 tx[65536];
    for (guint64 s = 600; s < 608; s++) {
        itest_frame_fill(tx, frame_len(s), s, 0);
        g_assert_cmpint(vnet_fe_send(fe, tx, frame_len(s), TMO, &e), ==, 1);
        g_assert_no_error(e);
    }
    itest_wait_for(&env, guestd_rx_packets, GINT_TO_POINTER(608), TMO,
                   "the old guestd looped 608 frames back");
    itest_kill_guestd(&env);
    guint16 used_rx = vp_get_le16((guint8 *)fe->q[0].vr.mem.used + 2);
    guint16 used_tx = vp_get_le16((guint8 *)fe->q[1].vr.mem.used + 2);
    itest_start_guestd(&env);
    back.resets = 1;
    itest_wait_for(&env, device_back, &back, TMO, "device back after the guestd restart");
    assert_resets(&env, uuid, 1);
    /* The new guestd resumed at the used indexes its predecessor published. */
    JsonNode *g = itest_guestd_status(&env);
    JsonObject *gfe = itest_elem(itest_elem(json_node_get_object(g), "devices", 0),
                                 "frontends", 0);
    g_assert_cmpint(itest_int(itest_elem(gfe, "queues", 0), "last_avail_idx"), ==, used_rx);
    g_assert_cmpint(itest_int(itest_elem(gfe, "queues", 1), "last_avail_idx"), ==, used_tx);
    json_node_unref(g);

    /* 600..607 are still there, once each, in order. */
    static guint8 rx[65536];
    for (guint64 seq = 600; seq < 608; seq++) {
        gsize len = 0;
        int r = vnet_fe_recv(fe, rx, sizeof(rx), &len, TMO, &e);
        g_assert_no_error(e);
        g_assert_cmpint(r, ==, 1);
        itest_frame_check(rx, len, frame_len(seq), seq, 0, "after the restart");
    }
    gsize extra = 0;
    g_assert_cmpint(vnet_fe_try_recv(fe, rx, sizeof(rx), &extra, &e), ==, 0);
    g_assert_no_error(e);
    vnet_fe_reclaim(fe, &e);
    g_assert_no_error(e);
    loop_traffic(fe, 1000, 900, 32);
    itest_wait_fds(env.server_pid, fds, TMO, "server after the guestd restart");

    vnet_fe_free(fe);
    vnet_vm_free(vm);
    itest_env_stop(&env);
    g_unsetenv("VP_GUESTD_BIN");
    unlink(wrapper);
    rmdir(tmp);
    g_free(wrapper);
    g_free(tmp);
}

static void test_datapath(void)
{
    run_datapath(4 * MiB, 1);
}

static void test_datapath_split(void)
{
    run_datapath(6 * MiB, 2);
}

/* ------------------------------ (c) NEEDS_RESET ------------------------------ */

/* The bad guestd is an itest_fakegd.h fake guestd on the local bus: it does the
 * status handshake, answers every controlq message with a success ACK and, once told
 * to (garbage), puts garbage on the control receiveq (the server must mark the device
 * NEEDS_RESET). It leaves when told to, closing its connection. */

static gboolean server_sees_no_guestd(JsonNode *s, JsonNode *g, gpointer data)
{
    (void)s;
    (void)g;
    ITestEnv *env = data;
    return server_log_count(env, "vhost-pci-guestd disconnected") >= 1;
}

/* A guestd that puts garbage on the controlq (NEEDS_RESET: requests fail with the
 * reason) is replaced by a good one: the device recovers and serves requests. */
static void test_needs_reset(void)
{
    ITestEnv env;
    ITestOpts opts = { .no_guestd = TRUE };
    itest_env_start(&env, &opts);
    ITestFakeGd bg = { .path = env.local_bus };
    itest_fakegd_start(&bg, "bad-guestd");
    Vm vm;
    vm_open(&env, &vm);
    vm_handshake(&vm);
    itest_fakegd_check(&bg);
    int fds = itest_count_fds(env.server_pid);

    g_atomic_int_set(&bg.garbage, 1);
    itest_wait_for(&env, device_needs_reset, vm.uuid, TMO, "NEEDS_RESET after garbage");
    struct vp_device_info di;
    vm_net(&vm, &di, 128);
    VpClientReply rep;
    GError *e = NULL;
    g_assert_false(vp_client_device_add_sync(vm.c, &di, TMO, &rep, &e));
    g_clear_error(&e);
    g_assert_cmpuint(rep.type, ==, VP_MSG_DEVICE_INFO_ACK);
    g_assert_cmpuint(rep.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(rep.ack.reason, "needs reset"));
    g_assert_nonnull(strstr(rep.ack.reason, "malformed controlq message"));

    itest_fakegd_stop(&bg);
    itest_wait_for(&env, server_sees_no_guestd, &env, TMO, "the bad guestd gone");
    itest_start_guestd(&env);
    Back back = { .uuid = vm.uuid, .resets = 1, .regions = 1, .frontends = 1 };
    itest_wait_for(&env, device_back, &back, TMO, "device back after NEEDS_RESET");
    assert_resets(&env, vm.uuid, 1);
    vm_update(&vm, 128);
    itest_wait_for(&env, guestd_queue0_num, GINT_TO_POINTER(128), TMO,
                   "the update in the new guestd");
    itest_wait_fds(env.server_pid, fds, TMO, "server after NEEDS_RESET and a new guestd");
    vm_close(&vm);
    itest_env_stop(&env);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/driver-reset/restart", test_restart);
    g_test_add_func("/driver-reset/datapath", test_datapath);
    g_test_add_func("/driver-reset/datapath-split", test_datapath_split);
    g_test_add_func("/driver-reset/needs-reset", test_needs_reset);
    return g_test_run();
}
