/*
 * test-tap-mq.c - guestd's TAP endpoint with several queue pairs (issue 10): the TAP
 * is multi-queue (IFF_MULTI_QUEUE), one queue per data path worker, and each worker
 * moves frames between its queue and the queue pair it polls. Host-only, with real
 * processes: a pretend driver VM (tools/vnet-frontend) with 2 queue pairs ->
 * libvhostpci-client -> vhost-pci-server (--device-host local) -> vhost-pci-guestd
 * --tap --workers 2. The test sees the device VM side through an AF_PACKET socket on
 * the TAP interface, in a network namespace of its own (made by this program at
 * start, inherited by the server and guestd), so the interface name is private.
 *
 * Checked: frames transmitted on either pair reach the interface intact; IPv4/UDP
 * frames of 64 different flows sent into the interface reach the driver VM intact,
 * spread by the kernel over both TAP queues, hence over both pairs; guestd reports
 * two workers, and the queues of pair q are polled by worker q.
 * Needs root and /dev/net/tun: otherwise one test is skipped with the reason.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "itest.h"
#include "itest_frames.h"
#include "vnet_frontend.h"

#define MiB (1ULL << 20)
#define TMO ITEST_TIMEOUT_MS
#define IFNAME "vpmq0"
#define NFLOWS 64

static const char *skip_reason;

/* An IPv4/UDP frame of flow @flow (source port 1000 + flow), @seq in its payload. */
static gsize udp_frame(guint8 *f, guint flow, guint seq)
{
    memset(f, 0, 128);
    memcpy(f, "\x02\x00\x00\x00\x00\x0b", 6);      /* to the driver VM */
    memcpy(f + 6, "\x02\x00\x00\x00\x00\x0d", 6);  /* from the device VM */
    f[12] = 0x08;                                   /* IPv4 */
    guint8 *ip = f + 14;
    ip[0] = 0x45;
    ip[2] = 0;
    ip[3] = 20 + 8 + 16;                            /* total length */
    ip[8] = 64;                                     /* TTL */
    ip[9] = 17;                                     /* UDP */
    memcpy(ip + 12, "\x0a\x63\x02\x01", 4);
    memcpy(ip + 16, "\x0a\x63\x02\x02", 4);
    guint32 sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += (guint32)ip[i] << 8 | ip[i + 1];
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    ip[10] = (guint8)(~sum >> 8);
    ip[11] = (guint8)~sum;
    guint8 *udp = ip + 20;
    udp[0] = (guint8)((1000 + flow) >> 8);
    udp[1] = (guint8)(1000 + flow);
    udp[2] = 0x30;
    udp[3] = 0x39;                                  /* port 12345 */
    udp[5] = 8 + 16;
    memcpy(udp + 8, "vhost-pci mq ", 13);
    udp[21] = (guint8)flow;
    udp[22] = (guint8)(seq >> 8);
    udp[23] = (guint8)seq;
    return 14 + 20 + 8 + 16;
}

static int packet_socket(int *ifindex)
{
    int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    g_assert_cmpint(s, >=, 0);
    *ifindex = (int)if_nametoindex(IFNAME);
    g_assert_cmpint(*ifindex, >, 0);
    struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                               .sll_ifindex = *ifindex };
    g_assert_cmpint(bind(s, (struct sockaddr *)&sll, sizeof(sll)), ==, 0);
    return s;
}

/* The guestd queue record of queue @qi of the only frontend of the only device. */
static JsonObject *gd_queue(JsonNode *g, guint qi)
{
    JsonObject *dev = json_array_get_object_element(
        json_object_get_array_member(json_node_get_object(g), "devices"), 0);
    return itest_elem(itest_elem(dev, "frontends", 0), "queues", qi);
}

static void test_tap_multi_queue(void)
{
    if (skip_reason) {
        g_test_skip(skip_reason);
        return;
    }
    GError *e = NULL;
    char *tmp = g_dir_make_tmp("vp-tapmq-XXXXXX", &e);
    g_assert_no_error(e);
    char *wrapper = itest_guestd_endpoint_wrapper(tmp, "tap:" IFNAME "' --workers '2");
    g_setenv("VP_GUESTD_BIN", wrapper, TRUE);
    ITestEnv env;
    itest_env_start(&env, NULL);
    g_unsetenv("VP_GUESTD_BIN");
    unlink(wrapper);
    rmdir(tmp);
    g_free(wrapper);
    g_free(tmp);
    /* No IPv6 on the interface: nothing but the test's frames crosses it. */
    g_file_set_contents("/proc/sys/net/ipv6/conf/" IFNAME "/disable_ipv6", "1", -1, NULL);

    VnetVm *vm = itest_vnet_vm(&env, 8 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1, .pairs = 2 });
    int ifindex = 0;
    int ps = packet_socket(&ifindex);
    struct timeval tv = { .tv_sec = TMO / 1000 };
    setsockopt(ps, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

    /* Driver VM -> interface, on both pairs. */
    static guint8 f[VNET_FE_MAX_FRAME], got[VNET_FE_MAX_FRAME];
    for (guint pair = 0; pair < 2; pair++) {
        for (guint64 seq = 0; seq < 50; seq++) {
            gsize len = seq % 2 ? 1514 : 60;
            itest_frame_fill(f, len, seq, (guint8)(40 + pair));
            g_assert_cmpint(vnet_fe_send(vnet_fe_pair(fe, pair), f, len, TMO, &e), ==, 1);
            g_assert_no_error(e);
            for (;;) {
                ssize_t n = recv(ps, got, sizeof(got), 0);
                if (n < 0)
                    g_error("pair %u frame %" G_GUINT64_FORMAT ": nothing on the interface: %s",
                            pair, seq, g_strerror(errno));
                if (n >= 14 && got[12] == 0x88 && got[13] == 0xb5) {
                    itest_frame_check(got, (gsize)n, len, seq, (guint8)(40 + pair),
                                      "driver VM -> interface");
                    break;
                }
            }
        }
    }

    /* Interface -> driver VM: 64 flows, spread over the TAP queues by the kernel. */
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = 6 };
    memcpy(to.sll_addr, "\x02\x00\x00\x00\x00\x0b", 6);
    guint rxd[2] = { 0, 0 };
    for (guint flow = 0; flow < NFLOWS; flow++) {
        gsize len = udp_frame(f, flow, flow);
        g_assert_cmpint(sendto(ps, f, len, 0, (struct sockaddr *)&to, sizeof(to)), ==,
                        (gssize)len);
    }
    gint64 deadline = g_get_monotonic_time() + TMO * 1000;
    guint total = 0;
    while (total < NFLOWS) {
        gboolean any = FALSE;
        for (guint pair = 0; pair < 2; pair++) {
            gsize n = 0;
            int r = vnet_fe_try_recv(vnet_fe_pair(fe, pair), got, sizeof(got), &n, &e);
            g_assert_no_error(e);
            if (r != 1)
                continue;
            any = TRUE;
            if (n < 14 + 20 + 8 + 16 || got[12] != 0x08 || memcmp(got + 42, "vhost-pci mq ", 13))
                continue; /* the kernel's own frames (ARP, IPv6 before it was disabled) */
            gsize want_len = udp_frame(f, got[14 + 20 + 8 + 13], got[14 + 20 + 8 + 13]);
            g_assert_cmpuint(n, ==, want_len);
            g_assert_cmpmem(got, n, f, want_len);
            rxd[pair]++;
            total++;
        }
        if (!any) {
            if (g_get_monotonic_time() > deadline)
                g_error("interface -> driver VM: %u of %d frames arrived (%u, %u)", total,
                        NFLOWS, rxd[0], rxd[1]);
            vnet_fe_wait(fe, 0, 2);
        }
    }
    g_test_message("64 flows: %u on pair 0, %u on pair 1", rxd[0], rxd[1]);
    g_assert_cmpuint(rxd[0], >, 0);
    g_assert_cmpuint(rxd[1], >, 0);

    JsonNode *g = itest_guestd_status(&env);
    JsonObject *dp = json_object_get_object_member(json_node_get_object(g), "datapath");
    g_assert_cmpint(itest_int(dp, "workers"), ==, 2);
    for (guint qi = 0; qi < 4; qi++) {
        g_assert_cmpint(itest_int(gd_queue(g, qi), "worker"), ==, qi / 2);
        g_assert_false(itest_bool(gd_queue(g, qi), "broken"));
    }
    g_assert_cmpint(itest_int(gd_queue(g, 1), "packets"), ==, 50);
    g_assert_cmpint(itest_int(gd_queue(g, 3), "packets"), ==, 50);
    json_node_unref(g);
    close(ps);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    itest_env_stop(&env);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    if (geteuid() != 0)
        skip_reason = "needs root (a network namespace, a TAP)";
    else if (access("/dev/net/tun", R_OK | W_OK) != 0)
        skip_reason = "no /dev/net/tun";
    else if (unshare(CLONE_NEWNET) != 0)
        skip_reason = "cannot make a network namespace (unshare CLONE_NEWNET)";
    g_test_add_func("/tap/multi-queue", test_tap_multi_queue);
    return g_test_run();
}
