/*
 * test-datapath.c - the vhost-pci-net data path end to end on the host, with real
 * processes: a userspace virtio-net frontend (tools/vnet-frontend, playing the driver
 * VM, its RAM in sealed memfds) -> libvhostpci-client -> vhost-pci-server
 * (--device-host local) -> vhost-pci-guestd (--bus local) with an endpoint:
 *  - loopback: guestd sends every frame back on the frontend's receive queue;
 *  - unix: guestd's frames go to this test over a SOCK_SEQPACKET socket and frames
 *    written there reach the frontend, so each direction is checked on its own.
 * Every frame is checked byte for byte (contents derived from a sequence number).
 *
 * Covers: 60/1514/9000-byte frames and frames spanning several mergeable receive
 * buffers, both directions, with and without MRG_RXBUF / EVENT_IDX / VERSION_1 and a
 * separate header descriptor; enough traffic to wrap the 16-bit ring indexes several
 * times, with the positions guestd reports checked against the rings; memory hot-add
 * (transmit buffers moved into the new region), hot-remove of an unused region and
 * the clone path during traffic; DEVICE_INFO(DEL) positions; hostile frontends
 * (descriptor outside memory, looping chain, avail index jump, head out of range,
 * 4 GiB length overflow, address wrap, writable transmit buffer, bad receive buffer)
 * break only their own queue while guestd and the other frontends carry on.
 *
 * guestd gets its --endpoint through a wrapper script named by VP_GUESTD_BIN (the
 * itest helpers start guestd with fixed arguments).
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <signal.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "itest_frames.h"
#include "vnet_frontend.h"
#include "vp_wire.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define TMO ITEST_TIMEOUT_MS
#define LOOP_S 60                 /* bound of one loopback run (seconds) */
#define EP_HDR 24                 /* unix endpoint port header: uuid + le64 device_id */

/* ------------------------------- fixture ------------------------------- */

typedef struct {
    ITestEnv env;
    char *tmp;                    /* wrapper script, endpoint socket */
    char *ep_path;
    int ep;                       /* connection to guestd's unix endpoint, or -1 */
} Dp;

/* Start server and guestd with --endpoint @endpoint; @pre (NULL: none) is a shell
 * line the guestd wrapper runs first (e.g. "ulimit -Sn 64"), @args (NULL: none) more
 * guestd arguments. */
static void dp_start_with(Dp *d, const char *endpoint, const char *pre, const char *args);

static void dp_start(Dp *d, const char *endpoint) { dp_start_with(d, endpoint, NULL, NULL); }

static void dp_start_with(Dp *d, const char *endpoint, const char *pre, const char *args)
{
    memset(d, 0, sizeof(*d));
    d->ep = -1;
    GError *e = NULL;
    d->tmp = g_dir_make_tmp("vp-dp-XXXXXX", &e);
    g_assert_no_error(e);
    char *spec;
    if (g_str_equal(endpoint, "unix")) {
        d->ep_path = g_build_filename(d->tmp, "ep.sock", NULL);
        spec = g_strdup_printf("unix:%s", d->ep_path);
    } else {
        spec = g_strdup(endpoint);
    }
    char *wrapper = itest_guestd_endpoint_wrapper(d->tmp, spec);
    if (pre || args) {
        char *text = NULL;
        g_assert_true(g_file_get_contents(wrapper, &text, NULL, NULL));
        g_assert_true(g_str_has_prefix(text, "#!/bin/sh\n") && g_str_has_suffix(text, "\n"));
        text[strlen(text) - 1] = 0;
        char *with = g_strdup_printf("#!/bin/sh\n%s\n%s %s\n", pre ? pre : "",
                                     text + strlen("#!/bin/sh\n"), args ? args : "");
        g_assert_true(g_file_set_contents(wrapper, with, -1, NULL));
        g_assert_cmpint(chmod(wrapper, 0755), ==, 0);
        g_free(with);
        g_free(text);
    }
    g_setenv("VP_GUESTD_BIN", wrapper, TRUE);
    itest_env_start(&d->env, NULL);
    g_unsetenv("VP_GUESTD_BIN");
    g_free(wrapper);
    g_free(spec);
    if (d->ep_path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        g_strlcpy(sa.sun_path, d->ep_path, sizeof(sa.sun_path));
        d->ep = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        g_assert_cmpint(d->ep, >=, 0);
        /* guestd listens before it answers its status socket. */
        g_assert_cmpint(connect(d->ep, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
        int sz = 4 << 20;
        setsockopt(d->ep, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        setsockopt(d->ep, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    /* guestd runs and the endpoint is connected: nothing in tmp is needed any more,
     * remove it now so that an aborted test leaves nothing behind. */
    char *w = g_build_filename(d->tmp, "guestd", NULL);
    unlink(w);
    g_free(w);
    if (d->ep_path)
        unlink(d->ep_path);
    rmdir(d->tmp);
}

static void dp_stop(Dp *d)
{
    vp_close_fd(&d->ep);
    itest_env_stop(&d->env);
    g_free(d->tmp);
    g_free(d->ep_path);
    memset(d, 0, sizeof(*d));
    d->ep = -1;
}

/* Does guestd's log have a line containing @a followed (on it) by @b? */
static gboolean guestd_log_has(Dp *d, const char *a, const char *b)
{
    gchar *text = NULL;
    gboolean ok = g_file_get_contents(d->env.guestd_log, &text, NULL, NULL);
    g_assert_true(ok);
    gboolean found = FALSE;
    gchar **lines = g_strsplit(text, "\n", -1);
    for (gchar **l = lines; *l && !found; l++) {
        const char *at = strstr(*l, a);
        found = at && strstr(at, b);
    }
    g_strfreev(lines);
    g_free(text);
    return found;
}

/* ------------------- traffic helpers (loopback: itest_frames.h) ------------------- */

/* The unix endpoint's port header of @fe. */
static void ep_hdr(guint8 *h, VnetFe *fe)
{
    memcpy(h, vp_client_get_uuid(fe->vm->client), 16);
    vp_put_le64(h + 16, fe->cfg.device_id);
}

/*
 * Frontend -> guestd -> unix endpoint: @n frames, each checked (port header too) in
 * the order sent.
 */
static void tx_traffic(Dp *d, VnetFe *fe, guint64 n, const gsize *sizes, guint nsizes, guint8 tag)
{
    static guint8 rx[EP_HDR + 65536];
    guint8 want_hdr[EP_HDR];
    ep_hdr(want_hdr, fe);
    GError *e = NULL;
    guint64 sent = 0, got = 0;
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    while (got < n) {
        guint work = itest_fe_send_frames(fe, 0, n, &sent, got, G_MAXUINT64, sizes, nsizes, tag);
        for (;;) {
            gssize r = recv(d->ep, rx, sizeof(rx), MSG_DONTWAIT);
            if (r < 0) {
                g_assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
                break;
            }
            g_assert_cmpint(r, >=, EP_HDR);
            g_assert_cmpmem(rx, EP_HDR, want_hdr, EP_HDR);
            itest_frame_check(rx + EP_HDR, (gsize)r - EP_HDR, itest_frame_size(sizes, nsizes, got),
                              got, tag, "driver VM -> device VM");
            got++;
            work++;
        }
        if (!work) {
            if (g_get_monotonic_time() > deadline)
                g_error("tx: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " frames arrived",
                        got, n);
            vnet_fe_reclaim(fe, &e);
            g_assert_no_error(e);
            struct pollfd p = { .fd = d->ep, .events = POLLIN };
            poll(&p, 1, 5);
        }
    }
}

/* Unix endpoint -> guestd -> frontend: @n frames, each checked in order. */
static void rx_traffic(Dp *d, VnetFe *fe, guint64 n, const gsize *sizes, guint nsizes, guint8 tag)
{
    static guint8 tx[EP_HDR + 65536];
    guint64 sent = 0, got = 0;
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    ep_hdr(tx, fe);
    while (got < n) {
        guint work = 0;
        while (sent < n && sent - got < 256) {
            gsize len = itest_frame_size(sizes, nsizes, sent);
            itest_frame_fill(tx + EP_HDR, len, sent, tag);
            gssize r = send(d->ep, tx, EP_HDR + len, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (r < 0) {
                g_assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
                break;
            }
            g_assert_cmpint(r, ==, (gssize)(EP_HDR + len));
            sent++;
            work++;
        }
        work += itest_fe_recv_frames(fe, 0, &got, sizes, nsizes, tag, "device VM -> driver VM");
        if (!work) {
            if (g_get_monotonic_time() > deadline)
                g_error("rx: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " frames arrived",
                        got, n);
            vnet_fe_wait(fe, 0, 5);
        }
    }
}

/* ------------------------------- status ------------------------------- */

typedef struct {
    gint64 packets, last_avail_idx;
    gboolean broken;
} QState;

/* Queue @qi of frontend @id of @vm as guestd reports it; FALSE when not found. */
static gboolean dp_queue_try(Dp *d, VnetVm *vm, guint64 id, guint qi, QState *out)
{
    JsonNode *s = itest_server_status(&d->env);
    JsonObject *sd = itest_server_device(s, vm->uuid);
    gboolean found = FALSE;
    if (sd) {
        gint64 slot = itest_int(sd, "slot");
        JsonNode *g = itest_guestd_status(&d->env);
        JsonObject *gd = itest_guestd_device(g, slot);
        for (guint i = 0; gd && i < itest_len(gd, "frontends"); i++) {
            JsonObject *f = itest_elem(gd, "frontends", i);
            if ((guint64)itest_int(f, "device_id") != id)
                continue;
            for (guint k = 0; k < itest_len(f, "queues"); k++) {
                JsonObject *q = itest_elem(f, "queues", k);
                if (itest_int(q, "index") != qi)
                    continue;
                out->packets = itest_int(q, "packets");
                out->last_avail_idx = itest_int(q, "last_avail_idx");
                out->broken = itest_bool(q, "broken");
                found = TRUE;
            }
        }
        json_node_unref(g);
    }
    json_node_unref(s);
    return found;
}

static QState dp_queue(Dp *d, VnetVm *vm, guint64 id, guint qi)
{
    QState q = { 0 };
    if (!dp_queue_try(d, vm, id, qi, &q))
        g_error("frontend %" G_GUINT64_FORMAT " queue %u not in guestd's status", id, qi);
    return q;
}

/* Wait (bounded) until queue @qi of frontend @id has handled @packets frames. */
static QState dp_wait_packets(Dp *d, VnetVm *vm, guint64 id, guint qi, gint64 packets)
{
    gint64 deadline = g_get_monotonic_time() + TMO * 1000;
    for (;;) {
        QState q = dp_queue(d, vm, id, qi);
        if (q.packets >= packets)
            return q;
        if (g_get_monotonic_time() > deadline)
            g_error("queue %u of frontend %" G_GUINT64_FORMAT ": %" G_GINT64_FORMAT
                    " packets, want %" G_GINT64_FORMAT, qi, id, q.packets, packets);
        g_usleep(10000);
    }
}

static guint16 used_idx(VnetFe *fe, guint qi)
{
    return vp_get_le16((guint8 *)fe->q[qi].vr.mem.used + 2);
}

/* -------------------------------- tests -------------------------------- */

static const gsize SIZES3[] = { 60, 1514, 9000 };

/* Loopback: every size, default buffers and small mergeable buffers (a 1514-byte
 * frame spans 3, a 9000-byte one 18), frames checked byte for byte. */
static void test_loopback_sizes(void)
{
    Dp d;
    dp_start(&d, "loopback");
    VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *a = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1 });
    g_assert_true(a->mrg);
    g_assert_cmpuint(a->hdr_len, ==, 12);
    for (guint s = 0; s < 3; s++)
        itest_loop_traffic(a, 0, 300, &SIZES3[s], 1, 32, (guint8)s, LOOP_S);
    itest_loop_traffic(a, 0, 3000, SIZES3, 3, 64, 7, LOOP_S);
    QState tq = dp_wait_packets(&d, vm, 1, 1, 3900);
    g_assert_cmpint(tq.packets, ==, 3900);
    g_assert_false(tq.broken);
    QState rq = dp_queue(&d, vm, 1, 0);
    g_assert_cmpint(rq.packets, ==, 3900);

    VnetFe *b = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 2, .rx_buf_size = 512 });
    itest_loop_traffic(b, 0, 2000, SIZES3, 3, 16, 9, LOOP_S);
    /* 60 -> 1 buffer, 1514 -> 3, 9000 -> 18: the receive ring moved that far. */
    g_assert_cmpuint(b->q[0].vr.last_used_idx, ==, (guint16)(667 * 1 + 667 * 3 + 666 * 18));
    itest_loop_traffic(a, 5000, 100, SIZES3, 3, 8, 3, LOOP_S); /* the first one still works */
    vnet_fe_free(b);
    vnet_fe_free(a);
    vnet_vm_free(vm);
    dp_stop(&d);
}

/* Each direction on its own through the unix endpoint, for several feature sets:
 * one driver VM (device) per set, as features are per device. */
static void test_unix_directions(void)
{
    static const struct {
        const char *name;
        VnetFeConfig cfg;
        guint hdr_len;
    } sets[] = {
        { "VERSION_1|MRG_RXBUF|EVENT_IDX", { .device_id = 1 }, 12 },
        { "small mergeable buffers, separate header",
          { .device_id = 2, .rx_buf_size = 512, .tx_hdr_separate = TRUE, .tx_slot_size = 1024 }, 12 },
        { "VERSION_1|EVENT_IDX (no MRG_RXBUF)",
          { .device_id = 3, .features = (1ULL << VP_VIRTIO_F_VERSION_1) |
                                        (1ULL << VP_VIRTIO_F_RING_EVENT_IDX),
            .rx_buf_size = 9216, .rx_bufs = 64 }, 12 },
        { "VERSION_1|MRG_RXBUF (no EVENT_IDX)",
          { .device_id = 4, .features = (1ULL << VP_VIRTIO_F_VERSION_1) |
                                        (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF) }, 12 },
        { "legacy 10-byte header (EVENT_IDX only)",
          { .device_id = 5, .features = 1ULL << VP_VIRTIO_F_RING_EVENT_IDX, .rx_buf_size = 9216,
            .rx_bufs = 64, .tx_hdr_separate = TRUE }, 10 },
        { "no feature bits at all",
          { .device_id = 6, .no_features = TRUE, .rx_buf_size = 9216, .rx_bufs = 64 }, 10 },
    };
    Dp d;
    dp_start(&d, "unix");
    for (guint i = 0; i < G_N_ELEMENTS(sets); i++) {
        g_test_message("feature set: %s", sets[i].name);
        VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
        VnetFe *fe = itest_vnet_fe(vm, &sets[i].cfg);
        g_assert_cmpuint(fe->hdr_len, ==, sets[i].hdr_len);
        tx_traffic(&d, fe, 600, SIZES3, 3, (guint8)i);
        rx_traffic(&d, fe, 600, SIZES3, 3, (guint8)(i + 100));
        QState tq = dp_wait_packets(&d, vm, sets[i].cfg.device_id, 1, 600);
        QState rq = dp_queue(&d, vm, sets[i].cfg.device_id, 0);
        g_assert_cmpint(tq.packets, ==, 600);
        g_assert_cmpint(rq.packets, ==, 600);
        g_assert_false(tq.broken || rq.broken);
        /* Both at once, interleaved. */
        tx_traffic(&d, fe, 50, SIZES3, 3, 1);
        rx_traffic(&d, fe, 50, SIZES3, 3, 2);
        vnet_fe_free(fe);
        vnet_vm_free(vm);
    }
    dp_stop(&d);
}

/* Enough traffic to wrap both 16-bit ring indexes three times, with mixed sizes; the
 * positions guestd reports and DEVICE_INFO(DEL) returns match the rings. */
static void test_wrap(void)
{
    static const gsize mix[] = { 60, 60, 60, 1514, 60, 60, 60, 9000 };
    const guint64 n = 3 * 65536 + 4321;
    Dp d;
    dp_start(&d, "loopback");
    VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 7 });
    itest_loop_traffic(fe, 0, n, mix, G_N_ELEMENTS(mix), 128, 5, LOOP_S);
    /* TX: one chain per frame; RX: 60 and 1514 take one 2048-byte buffer, 9000 five. */
    guint64 rx_chains = n / 8 * 12 + 0;
    for (guint64 k = n / 8 * 8; k < n; k++)
        rx_chains += mix[k % 8] == 9000 ? 5 : 1;
    g_assert_cmpuint(fe->q[0].vr.last_used_idx, ==, (guint16)rx_chains);
    QState tq = dp_wait_packets(&d, vm, 7, 1, (gint64)n);
    QState rq = dp_wait_packets(&d, vm, 7, 0, (gint64)n);
    g_assert_cmpint(tq.packets, ==, (gint64)n);
    g_assert_cmpint(rq.packets, ==, (gint64)n);
    g_assert_cmpint(tq.last_avail_idx, ==, (guint16)n);
    g_assert_cmpint(rq.last_avail_idx, ==, (guint16)rx_chains);
    g_assert_cmpuint(used_idx(fe, 1), ==, (guint16)n);
    g_assert_cmpuint(used_idx(fe, 0), ==, (guint16)rx_chains);
    g_test_message("%" G_GUINT64_FORMAT " frames, %" G_GUINT64_FORMAT " receive buffers; kicks "
                   "rx %" G_GUINT64_FORMAT " tx %" G_GUINT64_FORMAT ", rx interrupts %"
                   G_GUINT64_FORMAT, n, rx_chains, fe->q[0].kicks, fe->q[1].kicks,
                   fe->rx_interrupts);
    /* Kick suppression works: far fewer kicks than frames. */
    g_assert_cmpuint(fe->q[1].kicks, <, n / 4);
    guint16 rx_idx = 0xffff, tx_idx = 0xffff;
    GError *e = NULL;
    g_assert_true(vnet_fe_del(fe, &rx_idx, &tx_idx, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(tx_idx, ==, (guint16)n);
    g_assert_cmpuint(rx_idx, ==, (guint16)rx_chains);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    dp_stop(&d);
}

/* Fill the transmit ring while nothing is received: guestd ends up holding a frame
 * it cannot deliver (receive ring full) and the rest waits in the rings. Returns how
 * many frames were queued. */
static guint64 fill_up(VnetFe *fe, guint64 first, const gsize *sizes, guint nsizes, guint8 tag)
{
    guint64 n = 0;
    gint64 quiet_since = g_get_monotonic_time();
    /* Keep sending until the ring stays full for 50 ms (guestd stopped taking). */
    while (g_get_monotonic_time() - quiet_since < 50000) {
        if (itest_fe_send_frames(fe, first, G_MAXUINT64, &n, 0, G_MAXUINT64, sizes, nsizes, tag))
            quiet_since = g_get_monotonic_time();
        else
            g_usleep(1000);
    }
    return n;
}

static gboolean server_clones_is(JsonNode *s, JsonNode *g, gpointer data)
{
    (void)g;
    const struct { const char *uuid; gint64 want; } *w = data;
    JsonObject *dev = itest_server_device(s, w->uuid);
    return dev && itest_int(dev, "counters.clones") == w->want;
}

/* Memory hot-add (transmit buffers moved into it), hot-remove of an unused region and
 * a hot-add that forces a clone, each while frames are held inside guestd and the
 * rings; nothing is lost, reordered or damaged. DEVICE_INFO(DEL) while frames are
 * held reports the positions of the used rings. */
static void test_memory_hotplug(void)
{
    static const gsize mix[] = { 60, 9000, 1514, 60, 9000 };
    const guint nmix = G_N_ELEMENTS(mix);
    GError *e = NULL;
    Dp d;
    dp_start(&d, "loopback");
    VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1 });
    guint64 seq = 0;
    itest_loop_traffic(fe, seq, 1000, mix, nmix, 64, 1, LOOP_S);
    seq += 1000;

    /* Hot-add 1 MiB at 4 GiB with frames held, then move the transmit buffers there. */
    guint64 held = fill_up(fe, seq, mix, nmix, 1);
    g_assert_cmpuint(held, >, 0);
    int r2 = vnet_vm_add_memory(vm, 4 * GiB, 1 * MiB, &e);
    g_assert_no_error(e);
    itest_loop_traffic(fe, seq, held, mix, nmix, 0, 1, LOOP_S); /* window 0: only receive */
    seq += held;
    g_assert_true(vnet_fe_move_tx(fe, (guint)r2, TMO, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(fe->tx_gpa, >=, 4 * GiB);
    itest_loop_traffic(fe, seq, 1000, mix, nmix, 64, 1, LOOP_S);
    seq += 1000;

    /* Hot-add 1 MiB at 5 GiB, then hot-remove it (no buffer uses it) with frames held. */
    int r3 = vnet_vm_add_memory(vm, 5 * GiB, 1 * MiB, &e);
    g_assert_no_error(e);
    itest_loop_traffic(fe, seq, 500, mix, nmix, 64, 1, LOOP_S);
    seq += 500;
    held = fill_up(fe, seq, mix, nmix, 1);
    g_assert_true(vnet_vm_del_memory(vm, (guint)r3, &e));
    g_assert_no_error(e);
    itest_loop_traffic(fe, seq, held, mix, nmix, 0, 1, LOOP_S);
    seq += held;
    itest_loop_traffic(fe, seq, 1000, mix, nmix, 64, 1, LOOP_S);
    seq += 1000;

    /* 4 MiB more cannot fit the 8 MiB logical BAR: the server clones the device
     * (guestd: DEVICE_INFO(DEL) on the old one, ADD at the reported positions on the
     * new one) while frames are held. */
    held = fill_up(fe, seq, mix, nmix, 1);
    int r4 = vnet_vm_add_memory(vm, 6 * GiB, 4 * MiB, &e);
    g_assert_no_error(e);
    g_assert_cmpint(r4, >, 0);
    struct { const char *uuid; gint64 want; } w = { vm->uuid, 1 };
    itest_wait_for(&d.env, server_clones_is, &w, TMO, "one clone");
    itest_loop_traffic(fe, seq, held, mix, nmix, 0, 1, LOOP_S);
    seq += held;
    itest_loop_traffic(fe, seq, 2000, mix, nmix, 64, 1, LOOP_S);
    seq += 2000;
    QState tq = dp_wait_packets(&d, vm, 1, 1, 1);
    g_assert_false(tq.broken);

    /* DEVICE_INFO(DEL) with frames held: positions = what the device used. */
    held = fill_up(fe, seq, mix, nmix, 1);
    g_assert_cmpuint(held, >, 0);
    guint16 rx_idx = 0, tx_idx = 0;
    g_assert_true(vnet_fe_del(fe, &rx_idx, &tx_idx, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(tx_idx, ==, used_idx(fe, 1));
    g_assert_cmpuint(rx_idx, ==, used_idx(fe, 0));
    g_assert_cmpuint(fe->q[1].vr.avail_idx, !=, tx_idx); /* some were really held */
    g_test_message("%" G_GUINT64_FORMAT " frames; DEL positions rx %u tx %u", seq, rx_idx, tx_idx);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    dp_stop(&d);
}

/* Inject one frame for @fe through the unix endpoint. */
static void ep_inject(Dp *d, VnetFe *fe, guint64 seq, gsize len, guint8 tag)
{
    static guint8 pkt[EP_HDR + 65536];
    ep_hdr(pkt, fe);
    itest_frame_fill(pkt + EP_HDR, len, seq, tag);
    g_assert_cmpint(send(d->ep, pkt, EP_HDR + len, MSG_NOSIGNAL), ==, (gssize)(EP_HDR + len));
}

/* Wait (bounded) until the device has used @idx entries of queue @qi. */
static void wait_used(VnetFe *fe, guint qi, guint16 idx)
{
    gint64 deadline = g_get_monotonic_time() + TMO * 1000;
    while (used_idx(fe, qi) != idx) {
        if (g_get_monotonic_time() > deadline)
            g_error("used index of queue %u is %u, want %u", qi, used_idx(fe, qi), idx);
        g_usleep(1000);
    }
}

/* How many interrupts are pending on @fe's call eventfd of @qi (read and cleared). */
static guint64 take_irqs(VnetFe *fe, guint qi)
{
    guint64 v = 0;
    if (read(fe->q[qi].call_fd, &v, sizeof(v)) != sizeof(v))
        v = 0;
    return v;
}

/* Used-buffer notifications reach the driver VM exactly when vring_need_event (or,
 * without event indexes, the NO_INTERRUPT flag) asks for them. */
static void test_notifications(void)
{
    Dp d;
    dp_start(&d, "unix");
    GError *e = NULL;
    static guint8 buf[65536];
    gsize len = 0;
    for (guint variant = 0; variant < 2; variant++) {
        VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
        VnetFeConfig cfg = { .device_id = 1 };
        if (variant == 1)
            cfg.features = (1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF);
        VnetFe *fe = itest_vnet_fe(vm, &cfg);
        g_assert_cmpint(fe->q[0].vr.event_idx, ==, variant == 0);
        take_irqs(fe, 0);
        /* Asked for: one interrupt. */
        g_assert_false(vp_vring_drv_set_notify(&fe->q[0].vr, true));
        ep_inject(&d, fe, 0, 60, 1);
        struct pollfd p = { .fd = fe->q[0].call_fd, .events = POLLIN };
        g_assert_cmpint(poll(&p, 1, TMO), ==, 1);
        g_assert_cmpuint(take_irqs(fe, 0), >=, 1);
        wait_used(fe, 0, 1);
        /* Not asked for (event index passed / NO_INTERRUPT set): none. */
        if (variant == 1)
            vp_vring_drv_set_notify(&fe->q[0].vr, false);
        for (guint i = 1; i <= 20; i++)
            ep_inject(&d, fe, i, 1514, 1);
        wait_used(fe, 0, 21);
        g_assert_cmpuint(take_irqs(fe, 0), ==, 0);
        for (guint i = 0; i <= 20; i++) {
            g_assert_cmpint(vnet_fe_try_recv(fe, buf, sizeof(buf), &len, &e), ==, 1);
            itest_frame_check(buf, len, i ? 1514 : 60, i, 1, "notifications");
        }
        /* Asked for again: one more. */
        g_assert_false(vp_vring_drv_set_notify(&fe->q[0].vr, true));
        ep_inject(&d, fe, 21, 9000, 1);
        g_assert_cmpint(poll(&p, 1, TMO), ==, 1);
        g_assert_cmpuint(take_irqs(fe, 0), >=, 1);
        g_assert_cmpint(vnet_fe_recv(fe, buf, sizeof(buf), &len, TMO, &e), ==, 1);
        itest_frame_check(buf, len, 9000, 21, 1, "notifications");
        vnet_fe_free(fe);
        vnet_vm_free(vm);
    }
    dp_stop(&d);
}

/* Frames that cannot fit are dropped, not delivered truncated, and traffic goes on:
 * without MRG_RXBUF a frame larger than one receive chain; with it, none. */
static void test_oversize(void)
{
    Dp d;
    dp_start(&d, "unix");
    GError *e = NULL;
    static guint8 buf[65536];
    gsize len = 0;
    VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){
        .device_id = 1, .rx_buf_size = 2048, .rx_bufs = 16,
        .features = (1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_F_RING_EVENT_IDX) });
    g_assert_false(fe->mrg);
    /* A chain is a 12-byte header descriptor + a 2048-byte data descriptor. */
    ep_inject(&d, fe, 0, 9000, 2);   /* 12 + 9000 > 2060: dropped */
    ep_inject(&d, fe, 1, 2048, 2);   /* 12 + 2048 = 2060: fits exactly */
    ep_inject(&d, fe, 2, 2049, 2);   /* one byte too many: dropped */
    ep_inject(&d, fe, 3, 60, 2);
    g_assert_cmpint(vnet_fe_recv(fe, buf, sizeof(buf), &len, TMO, &e), ==, 1);
    itest_frame_check(buf, len, 2048, 1, 2, "oversize");
    g_assert_cmpint(vnet_fe_recv(fe, buf, sizeof(buf), &len, TMO, &e), ==, 1);
    itest_frame_check(buf, len, 60, 3, 2, "oversize");
    g_assert_no_error(e);
    QState rq = dp_queue(&d, vm, 1, 0);
    g_assert_cmpint(rq.packets, ==, 2);
    g_assert_false(rq.broken);
    rx_traffic(&d, fe, 100, (const gsize[]){ 60, 1514, 2048 }, 3, 3);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    dp_stop(&d);
}

/* MEMORY_INFO(DEL) of the region holding a frontend's rings: guestd stops those queues
 * before it acknowledges; announcing the region again resumes them where they were. */
static void test_park_resume(void)
{
    GError *e = NULL;
    Dp d;
    dp_start(&d, "loopback");
    VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 3 });
    itest_loop_traffic(fe, 0, 3000, SIZES3, 3, 64, 4, LOOP_S);
    g_assert_true(vnet_vm_del_memory(vm, 0, &e));
    g_assert_no_error(e);
    g_assert_true(guestd_log_has(&d, "net 3: virtqueue 0 parked at", ""));
    g_assert_true(guestd_log_has(&d, "net 3: virtqueue 1 parked at 3000", ""));
    /* Nothing moves while parked. */
    static guint8 f[100];
    itest_frame_fill(f, 60, 3000, 4);
    g_assert_cmpint(vnet_fe_try_send(fe, f, 60, &e), ==, 1);
    g_usleep(50000);
    g_assert_cmpuint(used_idx(fe, 1), ==, 3000);
    g_assert_true(vnet_vm_readd_memory(vm, 0, &e));
    g_assert_no_error(e);
    itest_loop_traffic(fe, 3000, 1, SIZES3, 3, 0, 4, LOOP_S); /* the frame sent while parked */
    itest_loop_traffic(fe, 3001, 3000, SIZES3, 3, 64, 4, LOOP_S);
    g_assert_false(dp_queue(&d, vm, 3, 0).broken || dp_queue(&d, vm, 3, 1).broken);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    dp_stop(&d);
}

/* ------------------------------ hostile frontends ------------------------------ */

/* Write descriptor @i of queue @qi directly (bypassing the driver side). */
static void evil_desc(VnetFe *fe, guint qi, guint i, guint64 addr, guint32 len, guint16 flags,
                      guint16 next)
{
    guint8 *dsc = (guint8 *)fe->q[qi].vr.mem.desc + 16 * i;
    vp_put_le64(dsc, addr);
    vp_put_le32(dsc + 8, len);
    vp_put_le16(dsc + 12, flags);
    vp_put_le16(dsc + 14, next);
}

/* Make @head available on queue @qi, moving avail->idx by @step (1 normally). */
static void evil_publish(VnetFe *fe, guint qi, guint16 head, guint16 step)
{
    guint8 *av = fe->q[qi].vr.mem.avail;
    guint16 idx = vp_get_le16(av + 2);
    vp_put_le16(av + 4 + 2 * (idx & (fe->cfg.qsize - 1)), head);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    vp_put_le16(av + 2, (guint16)(idx + step));
}

typedef struct {
    const char *name;
    guint qi;                     /* queue attacked */
    const char *reason;           /* in guestd's log line */
    void (*attack)(VnetFe *fe);
} Attack;

#define RAMB (16 * MiB)
#define NXT VP_VRING_DESC_F_NEXT
#define WR VP_VRING_DESC_F_WRITE
static guint64 ram_buf(VnetFe *fe) { return fe->tx_gpa; } /* a valid buffer of its own */

static void at_outside(VnetFe *fe)
{
    evil_desc(fe, 1, 0, 0x7f0000000000ULL, 100, 0, 0);
    evil_publish(fe, 1, 0, 1);
}
static void at_loop(VnetFe *fe)
{
    evil_desc(fe, 1, 0, ram_buf(fe), 64, NXT, 1);
    evil_desc(fe, 1, 1, ram_buf(fe), 64, NXT, 0);
    evil_publish(fe, 1, 0, 1);
}
static void at_jump(VnetFe *fe)
{
    evil_desc(fe, 1, 0, ram_buf(fe), 64, 0, 0);
    evil_publish(fe, 1, 0, (guint16)(fe->cfg.qsize + 5));
}
static void at_head(VnetFe *fe) { evil_publish(fe, 1, (guint16)(fe->cfg.qsize + 3), 1); }
static void at_next(VnetFe *fe)
{
    evil_desc(fe, 1, 0, ram_buf(fe), 64, NXT, 999);
    evil_publish(fe, 1, 0, 1);
}
static void at_len4g(VnetFe *fe)
{
    evil_desc(fe, 1, 0, ram_buf(fe), 0xffffffffu, NXT, 1);
    evil_desc(fe, 1, 1, ram_buf(fe), 0xffffffffu, 0, 0);
    evil_publish(fe, 1, 0, 1);
}
static void at_wrap(VnetFe *fe)
{
    evil_desc(fe, 1, 0, 0xfffffffffffff000ULL, 0x2000, 0, 0);
    evil_publish(fe, 1, 0, 1);
}
static void at_cross(VnetFe *fe)
{
    evil_desc(fe, 1, 0, RAMB - 16, 4096, 0, 0); /* runs off the end of RAM */
    evil_publish(fe, 1, 0, 1);
}
static void at_writable_tx(VnetFe *fe)
{
    evil_desc(fe, 1, 0, ram_buf(fe), 64, WR, 0);
    evil_publish(fe, 1, 0, 1);
}
static void at_short_tx(VnetFe *fe)
{
    evil_desc(fe, 1, 0, ram_buf(fe), 4, 0, 0); /* shorter than the header */
    evil_publish(fe, 1, 0, 1);
}
/* Receive queue: corrupt the first posted chain (mergeable: chain i is descriptor i). */
static void at_rx_outside(VnetFe *fe) { vp_put_le64(fe->q[0].vr.mem.desc, 0x7f0000000000ULL); }
static void at_rx_readable(VnetFe *fe)
{
    guint8 *dsc = fe->q[0].vr.mem.desc;
    vp_put_le16(dsc + 12, 0);
}
static void at_rx_tiny(VnetFe *fe)
{
    guint8 *dsc = fe->q[0].vr.mem.desc;
    vp_put_le32(dsc + 8, 3); /* a mergeable buffer smaller than the header */
}

static const Attack attacks[] = {
    { "descriptor outside memory", 1, "outside the driver VM's memory", at_outside },
    { "looping chain", 1, "(loop)", at_loop },
    { "avail index jumps by more than num", 1, "more than num", at_jump },
    { "head index out of range", 1, "head 259 >= num 256", at_head },
    { "next index out of range", 1, "next 999 >= num 256", at_next },
    { "length overflow (2 x 4 GiB - 1)", 1, "total length over 4 GiB", at_len4g },
    { "address + length wraps", 1, "outside the driver VM's memory", at_wrap },
    { "buffer runs off the end of RAM", 1, "outside the driver VM's memory", at_cross },
    { "writable transmit buffer", 1, "device-writable descriptor", at_writable_tx },
    { "transmit chain shorter than the header", 1, "shorter than the 12-byte", at_short_tx },
    { "receive buffer outside memory", 0, "outside the driver VM's memory", at_rx_outside },
    { "readable receive buffer", 0, "device-readable descriptor", at_rx_readable },
    { "receive buffer smaller than the header", 0, "smaller than the 12-byte header",
      at_rx_tiny },
};

static void test_hostile(void)
{
    static const gsize small[] = { 60, 1514 };
    GError *e = NULL;
    Dp d;
    dp_start(&d, "unix");
    /* Good frontends: one in the same driver VM (same vhost-pci device) as the hostile
     * ones, one in another driver VM. */
    VnetVm *vm = itest_vnet_vm(&d.env, RAMB), *other = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *good = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1 });
    VnetFe *good2 = itest_vnet_fe(other, &(VnetFeConfig){ .device_id = 1 });
    tx_traffic(&d, good, 100, SIZES3, 3, 1);
    rx_traffic(&d, good2, 100, SIZES3, 3, 1);
    for (guint i = 0; i < G_N_ELEMENTS(attacks); i++) {
        const Attack *a = &attacks[i];
        guint64 id = 100 + i;
        g_test_message("attack: %s", a->name);
        VnetFe *evil = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = id, .qsize = 256,
                                                   .rx_bufs = 16, .rx_buf_size = 2048 });
        a->attack(evil);
        if (a->qi == 0) {
            /* Receive buffers are taken when a frame arrives: send one. */
            guint8 pkt[EP_HDR + 60];
            ep_hdr(pkt, evil);
            itest_frame_fill(pkt + EP_HDR, 60, 0, 0);
            g_assert_cmpint(send(d.ep, pkt, sizeof(pkt), MSG_NOSIGNAL), ==, (gssize)sizeof(pkt));
        }
        /* The attacked queue breaks, with the reason in guestd's log. */
        gint64 deadline = g_get_monotonic_time() + TMO * 1000;
        QState q;
        while (!(q = dp_queue(&d, vm, id, a->qi)).broken) {
            if (g_get_monotonic_time() > deadline)
                g_error("%s: queue %u did not break", a->name, a->qi);
            g_usleep(10000);
        }
        char *line = g_strdup_printf("net %" G_GUINT64_FORMAT ": virtqueue %u (%s) broken: ", id,
                                     a->qi, a->qi ? "transmitq" : "receiveq");
        if (!guestd_log_has(&d, line, a->reason))
            g_error("%s: guestd log has no \"%s...%s\"", a->name, line, a->reason);
        g_free(line);
        /* Its other queue still works. */
        g_assert_false(dp_queue(&d, vm, id, 1 - a->qi).broken);
        if (a->qi == 1)
            rx_traffic(&d, evil, 20, small, 2, 3);
        else
            tx_traffic(&d, evil, 20, small, 2, 3);
        /* guestd and the other frontends carry on. */
        g_assert_true(itest_alive(d.env.guestd_pid));
        tx_traffic(&d, good, 30, SIZES3, 3, (guint8)i);
        rx_traffic(&d, good, 30, SIZES3, 3, (guint8)i);
        tx_traffic(&d, good2, 30, SIZES3, 3, (guint8)i);
        rx_traffic(&d, good2, 30, SIZES3, 3, (guint8)i);
        /* A broken frontend can still be deleted. */
        g_assert_true(vnet_fe_del(evil, NULL, NULL, &e));
        g_assert_no_error(e);
        vnet_fe_free(evil);
    }
    JsonNode *g = itest_guestd_status(&d.env);
    for (guint i = 0; i < itest_ndevices(g); i++) {
        JsonObject *dev = json_array_get_object_element(
            json_object_get_array_member(json_node_get_object(g), "devices"), i);
        g_assert_false(itest_bool(dev, "broken"));
    }
    json_node_unref(g);
    g_assert_false(dp_queue(&d, vm, 1, 0).broken || dp_queue(&d, vm, 1, 1).broken);
    vnet_fe_free(good);
    vnet_fe_free(good2);
    vnet_vm_free(vm);
    vnet_vm_free(other);
    dp_stop(&d);
}

/* Issue 12.1: a driver VM whose call fds are blocking eventfds with a full counter
 * (the server passes any fd on). guestd's doorbell on them used to block for ever:
 * every device's data path and controlq stopped, the status socket went silent, and
 * SIGTERM did not end it. Now the other driver VM's traffic goes on, the status
 * socket answers, the hostile frontend's own frames still come back, and SIGTERM
 * ends guestd with status 0. */
static void test_hostile_call_fds(void)
{
    Dp d;
    dp_start(&d, "loopback");
    int full = eventfd(0, EFD_CLOEXEC);               /* blocking */
    uint64_t max = 0xfffffffffffffffeULL;
    g_assert_cmpint(write(full, &max, 8), ==, 8);
    VnetVm *evm = itest_vnet_vm(&d.env, 4 * MiB), *gvm = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *evil = itest_vnet_fe(evm, &(VnetFeConfig){ .device_id = 7, .custom_call = TRUE,
                                                      .call_fd = { full, full } });
    VnetFe *good = itest_vnet_fe(gvm, &(VnetFeConfig){ .device_id = 1 });
    /* The hostile frontend's frames make guestd ring its (full) call fd. */
    guint64 sent = 0, got = 0;
    g_assert_cmpuint(itest_fe_send_frames(evil, 0, 32, &sent, 0, 32, SIZES3, 1, 4), ==, 32);
    itest_loop_traffic(good, 0, 2000, SIZES3, 3, 32, 5, LOOP_S);
    gint64 deadline = g_get_monotonic_time() + TMO * 1000;
    while (got < sent) {
        if (!itest_fe_recv_frames(evil, 0, &got, SIZES3, 1, 4, "hostile call fd")) {
            g_assert_cmpint(g_get_monotonic_time(), <, deadline);
            g_usleep(1000);
        }
    }
    JsonNode *g = itest_guestd_status(&d.env);
    json_node_unref(g);
    itest_loop_traffic(good, 2000, 500, SIZES3, 3, 32, 5, LOOP_S);
    /* SIGTERM ends guestd, cleanly. */
    GPid pid = d.env.guestd_pid;
    g_assert_cmpint(kill(pid, SIGTERM), ==, 0);
    int st = 0;
    deadline = g_get_monotonic_time() + 3 * G_USEC_PER_SEC;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (g_get_monotonic_time() > deadline)
            g_error("guestd did not end within 3 s of SIGTERM");
        g_usleep(10000);
    }
    g_assert_true(WIFEXITED(st));
    g_assert_cmpint(WEXITSTATUS(st), ==, 0);
    d.env.guestd_pid = 0;
    vnet_fe_free(evil);
    vnet_fe_free(good);
    vnet_vm_free(evm);
    vnet_vm_free(gvm);
    vp_close_fd(&full);
    dp_stop(&d);
}

/* Issue 12.4: guestd raises its own RLIMIT_NOFILE (soft) to the hard limit; started
 * with a soft limit of 64 it reports the hard one. */
static void test_fd_limit(void)
{
    struct rlimit rl;
    g_assert_cmpint(getrlimit(RLIMIT_NOFILE, &rl), ==, 0);
    if (rl.rlim_max <= 64) {
        g_test_skip("the hard RLIMIT_NOFILE is 64 or less: nothing to raise");
        return;
    }
    Dp d;
    dp_start_with(&d, "loopback", "ulimit -Sn 64", NULL);
    JsonNode *g = itest_guestd_status(&d.env);
    g_assert_cmpint(itest_int(json_node_get_object(g), "fd_limit"), ==, (gint64)rl.rlim_max);
    json_node_unref(g);
    VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1 });
    itest_loop_traffic(fe, 0, 100, SIZES3, 3, 16, 1, LOOP_S);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    dp_stop(&d);
}

/* Issue 9 item 6: guestd told to accept fewer features than offered. The frontend
 * offers VERSION_1 | MRG_RXBUF | EVENT_IDX; guestd accepts what its option leaves,
 * the frontend goes through the renegotiation round, and traffic flows with the
 * reduced set (no mergeable buffers: one 2048-byte buffer per frame). */
static void test_refused_features(void)
{
    static const gsize sizes[] = { 60, 1514 };
    const guint64 ver1 = 1ULL << VP_VIRTIO_F_VERSION_1, mrg = 1ULL << VP_VIRTIO_NET_F_MRG_RXBUF,
                  ei = 1ULL << VP_VIRTIO_F_RING_EVENT_IDX;
    static const struct {
        const char *args;
        guint64 refused;
    } cases[] = {
        { "--refuse-features 0x8000", 1ULL << VP_VIRTIO_NET_F_MRG_RXBUF },
        { "--features 0x100000000", (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF) |
                                    (1ULL << VP_VIRTIO_F_RING_EVENT_IDX) },
    };
    for (guint c = 0; c < G_N_ELEMENTS(cases); c++) {
        Dp d;
        dp_start_with(&d, "loopback", NULL, cases[c].args);
        VnetVm *vm = itest_vnet_vm(&d.env, 4 * MiB);
        VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1 });
        g_assert_cmphex(fe->features, ==, (ver1 | mrg | ei) & ~cases[c].refused);
        g_assert_false(fe->mrg);
        JsonNode *g = itest_guestd_status(&d.env);
        JsonObject *dev = json_array_get_object_element(
            json_object_get_array_member(json_node_get_object(g), "devices"), 0);
        g_assert_cmphex(itest_int(dev, "features"), ==, fe->features);
        json_node_unref(g);
        itest_loop_traffic(fe, 0, 1000, sizes, 2, 32, (guint8)c, LOOP_S);
        vnet_fe_free(fe);
        vnet_vm_free(vm);
        dp_stop(&d);
    }
}

/* Loopback traffic on pairs 0..npairs-1 of @fe at once: @n frames each (stream tag =
 * @tag + pair), every frame checked, at most @window in flight per pair. */
static void loop_pairs(VnetFe *fe, guint npairs, guint64 first, guint64 n, guint window,
                       guint8 tag)
{
    guint64 sent[VNET_FE_MAX_PAIRS] = { 0 }, got[VNET_FE_MAX_PAIRS] = { 0 };
    gint64 deadline = g_get_monotonic_time() + (gint64)LOOP_S * G_USEC_PER_SEC;
    for (;;) {
        guint work = 0, done = 0;
        for (guint i = 0; i < npairs; i++) {
            VnetFe *pf = vnet_fe_pair(fe, i);
            work += itest_fe_send_frames(pf, first, n, &sent[i], got[i], window, SIZES3, 3,
                                         (guint8)(tag + i));
            work += itest_fe_recv_frames(pf, first, &got[i], SIZES3, 3, (guint8)(tag + i),
                                         "multi-queue loopback");
            done += got[i] == n;
        }
        if (done == npairs)
            return;
        if (!work) {
            if (g_get_monotonic_time() > deadline)
                g_error("multi-queue loopback: pair 0 %" G_GUINT64_FORMAT ", pair 1 %"
                        G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " back", got[0], got[1], n);
            vnet_fe_wait(fe, 0, 2);
        }
    }
}

/* The guestd queue record of queue @qi of frontend 1 of the only device. */
static JsonObject *gd_queue(JsonNode *g, guint qi)
{
    JsonObject *dev = json_array_get_object_element(
        json_object_get_array_member(json_node_get_object(g), "devices"), 0);
    JsonObject *f = itest_elem(dev, "frontends", 0);
    for (guint k = 0; k < itest_len(f, "queues"); k++) {
        JsonObject *q = itest_elem(f, "queues", k);
        if (itest_int(q, "index") == qi)
            return q;
    }
    g_error("queue %u not in guestd's status", qi);
}

/* Issue 10: a frontend with 2 queue pairs served by 2 workers in parallel (pair q by
 * worker q): traffic on both at once, every frame checked; memory hot-add (pair 1's
 * transmit buffers moved there) and hot-remove with frames in flight on both pairs
 * (the workers are parked for each change, nothing breaks); then pair 1's transmit
 * ring is broken: only that queue stops, pair 0 carries on. */
static void test_multi_queue(void)
{
    GError *e = NULL;
    Dp d;
    dp_start_with(&d, "loopback", NULL, "--workers 2");
    VnetVm *vm = itest_vnet_vm(&d.env, 16 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1, .pairs = 2 });
    guint64 seq = 0;
    loop_pairs(fe, 2, seq, 2000, 32, 10);
    seq += 2000;
    JsonNode *g = itest_guestd_status(&d.env);
    g_assert_cmpint(itest_int(json_object_get_object_member(json_node_get_object(g), "datapath"),
                              "workers"), ==, 2);
    for (guint qi = 0; qi < 4; qi++) {
        JsonObject *q = gd_queue(g, qi);
        g_assert_cmpint(itest_int(q, "packets"), ==, 2000);
        g_assert_cmpint(itest_int(q, "worker"), ==, qi / 2);
        g_assert_false(itest_bool(q, "broken"));
    }
    json_node_unref(g);

    /* Hot-add with frames in flight on both pairs; pair 1 transmits from there. */
    VnetFe *p1 = vnet_fe_pair(fe, 1);
    guint64 s0 = 0, s1 = 0;
    itest_fe_send_frames(fe, seq, 64, &s0, 0, 64, SIZES3, 3, 10);
    itest_fe_send_frames(p1, seq, 64, &s1, 0, 64, SIZES3, 3, 11);
    int r = vnet_vm_add_memory(vm, 4 * GiB, 4 * MiB, &e);
    g_assert_no_error(e);
    guint64 g0 = 0, g1 = 0;
    while (g0 < s0 || g1 < s1) {
        if (!itest_fe_recv_frames(fe, seq, &g0, SIZES3, 3, 10, "pair 0 over hot-add") &&
            !itest_fe_recv_frames(p1, seq, &g1, SIZES3, 3, 11, "pair 1 over hot-add"))
            vnet_fe_wait(fe, 0, 2);
    }
    seq += 64;
    g_assert_true(vnet_fe_move_tx(p1, (guint)r, TMO, &e));
    g_assert_no_error(e);
    loop_pairs(fe, 2, seq, 1000, 32, 10);
    seq += 1000;

    /* Hot-add and hot-remove a region nobody uses, frames in flight on both pairs. */
    int r2 = vnet_vm_add_memory(vm, 5 * GiB, 1 * MiB, &e);
    g_assert_no_error(e);
    s0 = s1 = g0 = g1 = 0;
    itest_fe_send_frames(fe, seq, 64, &s0, 0, 64, SIZES3, 3, 10);
    itest_fe_send_frames(p1, seq, 64, &s1, 0, 64, SIZES3, 3, 11);
    g_assert_true(vnet_vm_del_memory(vm, (guint)r2, &e));
    g_assert_no_error(e);
    while (g0 < s0 || g1 < s1) {
        if (!itest_fe_recv_frames(fe, seq, &g0, SIZES3, 3, 10, "pair 0 over hot-remove") &&
            !itest_fe_recv_frames(p1, seq, &g1, SIZES3, 3, 11, "pair 1 over hot-remove"))
            vnet_fe_wait(fe, 0, 2);
    }
    seq += 64;
    loop_pairs(fe, 2, seq, 1000, 32, 10);
    seq += 1000;
    g = itest_guestd_status(&d.env);
    for (guint qi = 0; qi < 4; qi++)
        g_assert_false(itest_bool(gd_queue(g, qi), "broken"));
    json_node_unref(g);

    /* Pair 1's transmit ring broken: queue 3 stops, pairs 0 goes on. */
    evil_desc(p1, 1, 0, 0x7f0000000000ULL, 100, 0, 0);
    evil_publish(p1, 1, 0, 1);
    QState q3;
    gint64 deadline = g_get_monotonic_time() + TMO * 1000;
    while (!(q3 = dp_queue(&d, vm, 1, 3)).broken) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10000);
    }
    itest_loop_traffic(fe, seq, 1000, SIZES3, 3, 32, 10, LOOP_S);
    g = itest_guestd_status(&d.env);
    for (guint qi = 0; qi < 3; qi++)
        g_assert_false(itest_bool(gd_queue(g, qi), "broken"));
    json_node_unref(g);
    g_assert_true(guestd_log_has(&d, "net 1: virtqueue 3 (transmitq) broken: ",
                                 "outside the driver VM's memory"));
    /* vhost-pci-ctl queues: one line per queue, its pair and worker. */
    const char *argv[] = { "--guestd", d.env.status, "queues", NULL };
    int st = -1;
    char *out = itest_run_ctl(argv, &st);
    g_assert_cmpint(st, ==, 0);
    g_test_message("%s", out);
    g_assert_nonnull(strstr(out, "2 worker(s)"));
    char **lines = g_strsplit(out, "\n", -1);
    guint seen = 0;
    for (char **l = lines; *l; l++) {
        int slot, dev, qi, pair, worker;
        long long frames, bytes;
        int pos;
        char state[32];
        if (sscanf(*l, "%d %d %d %d %d %lld %lld %d %31s", &slot, &dev, &qi, &pair, &worker,
                   &frames, &bytes, &pos, state) != 9)
            continue;
        g_assert_cmpint(pair, ==, qi / 2);
        g_assert_cmpint(worker, ==, qi / 2);
        g_assert_cmpint(frames, >, 0);
        g_assert_cmpstr(state, ==, qi == 3 ? "BROKEN" : qi % 2 ? "transmitq" : "receiveq");
        seen |= 1u << qi;
    }
    g_assert_cmpuint(seen, ==, 0xf);
    g_strfreev(lines);
    g_free(out);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    dp_stop(&d);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/datapath/loopback-sizes", test_loopback_sizes);
    g_test_add_func("/datapath/unix-directions", test_unix_directions);
    g_test_add_func("/datapath/wrap", test_wrap);
    g_test_add_func("/datapath/memory-hotplug-clone", test_memory_hotplug);
    g_test_add_func("/datapath/notifications", test_notifications);
    g_test_add_func("/datapath/oversize", test_oversize);
    g_test_add_func("/datapath/park-resume", test_park_resume);
    g_test_add_func("/datapath/hostile-frontends", test_hostile);
    g_test_add_func("/datapath/hostile-call-fds", test_hostile_call_fds);
    g_test_add_func("/datapath/fd-limit", test_fd_limit);
    g_test_add_func("/datapath/refused-features", test_refused_features);
    g_test_add_func("/datapath/multi-queue", test_multi_queue);
    return g_test_run();
}
