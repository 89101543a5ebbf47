/*
 * vnet-bench - host-only throughput of frames through vhost-pci (run by tools/bench,
 * `make bench`). A userspace virtio-net frontend (vnet_frontend.h) sends frames to
 * a vhost-pci-guestd running `--endpoint loopback`, which copies each one from the
 * frontend's transmit buffers straight into its receive buffers; the frontend checks
 * a sequence number in every frame it gets back. Baseline, in the same run: the same
 * frames echoed by a second thread over a UNIX SOCK_SEQPACKET socketpair (two kernel
 * copies each way).
 *
 *   vnet-bench --server PATH [--seconds S] [--sizes 64,1500] [--window N] [--pairs N]
 *
 * Prints, per frame size: frames/s and Gbit/s (frame bytes carried one way) for
 * vhost-pci and for the baseline, and their ratio. Figures only: no pass/fail.
 * With --pairs N (multi-queue, issue 10) the frontend has N queue pairs, each driven
 * by a thread of its own with the same window; the vhost-pci figure is their sum
 * (guestd polls pair q on its worker q: run it with --workers >= N).
 */
#include <errno.h>
#include <glib.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vnet_frontend.h"

typedef struct {
    double fps, gbps;
    guint64 frames;
} Result;

static void fill(guint8 *f, gsize len, guint64 seq)
{
    memset(f, 0xff, 6);                       /* broadcast destination */
    memcpy(f + 6, "\x02\x00\x00\x00\x00\x01", 6);
    f[12] = 0x88;
    f[13] = 0xb5;                             /* local experimental ethertype */
    memcpy(f + 14, &seq, sizeof(seq));
    f[len - 1] = (guint8)seq; /* touch the whole frame */
}

static guint64 seq_of(const guint8 *f) { guint64 s; memcpy(&s, f + 14, sizeof(s)); return s; }

static Result run_vhost_pci(VnetFe *fe, gsize size, double seconds, guint window)
{
    guint8 *tx = g_malloc0(size), *rx = g_malloc(VNET_FE_MAX_FRAME);
    GError *err = NULL;
    guint64 sent = 0, got = 0;
    gint64 t0 = g_get_monotonic_time(), end = t0 + (gint64)(seconds * 1e6), t1 = t0;
    gboolean stop = FALSE;
    while (!stop || got < sent) {
        int work = 0;
        while (!stop && sent - got < window) {
            fill(tx, size, sent);
            int r = vnet_fe_try_send(fe, tx, size, &err);
            if (r < 0)
                g_error("send: %s", err->message);
            if (r == 0)
                break;
            sent++;
            work++;
        }
        for (;;) {
            gsize len = 0;
            int r = vnet_fe_try_recv(fe, rx, VNET_FE_MAX_FRAME, &len, &err);
            if (r < 0)
                g_error("recv: %s", err->message);
            if (r == 0)
                break;
            if (len != size || seq_of(rx) != got)
                g_error("frame %" G_GUINT64_FORMAT ": got %zu bytes seq %" G_GUINT64_FORMAT,
                        got, len, seq_of(rx));
            got++;
            work++;
        }
        if ((got & 1023) == 0 || !work) {
            t1 = g_get_monotonic_time();
            if (t1 >= end)
                stop = TRUE;
            if (t1 >= end + 5 * G_USEC_PER_SEC)
                g_error("frames stopped coming back (%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                        ")", got, sent);
        }
        if (!work)
            vnet_fe_wait(fe, 0, 1);
    }
    t1 = g_get_monotonic_time();
    g_free(tx);
    g_free(rx);
    double secs = (double)(t1 - t0) / 1e6;
    return (Result){ .fps = (double)got / secs, .gbps = (double)got * (double)size * 8 / secs / 1e9,
                     .frames = got };
}

typedef struct {
    VnetFe *fe;
    gsize size;
    double seconds;
    guint window;
    Result r;
} PairRun;

static gpointer pair_thread(gpointer data)
{
    PairRun *pr = data;
    pr->r = run_vhost_pci(pr->fe, pr->size, pr->seconds, pr->window);
    return NULL;
}

/* Every pair of @fe at once, one thread each; the sum of their figures. */
static Result run_pairs(VnetFe *fe, guint npairs, gsize size, double seconds, guint window)
{
    if (npairs == 1)
        return run_vhost_pci(fe, size, seconds, window);
    PairRun runs[VNET_FE_MAX_PAIRS];
    GThread *th[VNET_FE_MAX_PAIRS];
    for (guint i = 0; i < npairs; i++) {
        runs[i] = (PairRun){ .fe = vnet_fe_pair(fe, i), .size = size, .seconds = seconds,
                             .window = window };
        th[i] = g_thread_new("pair", pair_thread, &runs[i]);
    }
    Result sum = { 0 };
    for (guint i = 0; i < npairs; i++) {
        g_thread_join(th[i]);
        sum.fps += runs[i].r.fps;
        sum.gbps += runs[i].r.gbps;
        sum.frames += runs[i].r.frames;
    }
    return sum;
}

/* ------------------------------ baseline ------------------------------ */

typedef struct {
    int fd;
    gsize size;
} Echo;

static gpointer echo_thread(gpointer data)
{
    Echo *e = data;
    guint8 *buf = g_malloc(VNET_FE_MAX_FRAME);
    for (;;) {
        ssize_t n = recv(e->fd, buf, VNET_FE_MAX_FRAME, 0);
        if (n <= 0)
            break;
        if (send(e->fd, buf, (size_t)n, 0) != n)
            break;
    }
    g_free(buf);
    return NULL;
}

static Result run_socketpair(gsize size, double seconds, guint window)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        g_error("socketpair: %s", g_strerror(errno));
    Echo e = { .fd = sv[1], .size = size };
    GThread *th = g_thread_new("echo", echo_thread, &e);
    guint8 *tx = g_malloc0(size), *rx = g_malloc(VNET_FE_MAX_FRAME);
    guint64 sent = 0, got = 0;
    gint64 t0 = g_get_monotonic_time(), end = t0 + (gint64)(seconds * 1e6), t1 = t0;
    gboolean stop = FALSE;
    while (!stop || got < sent) {
        while (!stop && sent - got < window) {
            fill(tx, size, sent);
            ssize_t n = send(sv[0], tx, size, MSG_DONTWAIT);
            if (n < 0)
                break;
            sent++;
        }
        struct pollfd p = { .fd = sv[0], .events = POLLIN };
        if (poll(&p, 1, 100) > 0) {
            while (got < sent) {
                ssize_t n = recv(sv[0], rx, VNET_FE_MAX_FRAME, MSG_DONTWAIT);
                if (n < 0)
                    break;
                if ((gsize)n != size || seq_of(rx) != got)
                    g_error("baseline frame %" G_GUINT64_FORMAT " wrong", got);
                got++;
            }
        }
        t1 = g_get_monotonic_time();
        if (t1 >= end)
            stop = TRUE;
    }
    shutdown(sv[0], SHUT_RDWR);
    g_thread_join(th);
    close(sv[0]);
    close(sv[1]);
    g_free(tx);
    g_free(rx);
    double secs = (double)(t1 - t0) / 1e6;
    return (Result){ .fps = (double)got / secs, .gbps = (double)got * (double)size * 8 / secs / 1e9,
                     .frames = got };
}

int main(int argc, char **argv)
{
    char *server = NULL, *sizes = NULL;
    double seconds = 2.0;
    gint window = 128, pairs = 1;
    GOptionEntry entries[] = {
        { "server", 0, 0, G_OPTION_ARG_FILENAME, &server, "vhost-pci-server socket", "PATH" },
        { "seconds", 0, 0, G_OPTION_ARG_DOUBLE, &seconds, "seconds per measurement (2)", "S" },
        { "sizes", 0, 0, G_OPTION_ARG_STRING, &sizes, "frame sizes (64,1500)", "LIST" },
        { "window", 0, 0, G_OPTION_ARG_INT, &window, "frames in flight (128)", "N" },
        { "pairs", 0, 0, G_OPTION_ARG_INT, &pairs, "queue pairs, one thread each (1)", "N" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("- vhost-pci data path benchmark");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || !server || window <= 0 ||
        pairs < 1 || pairs > VNET_FE_MAX_PAIRS) {
        fprintf(stderr, "vnet-bench: %s\n", err ? err->message
                                               : "--server PATH is required; --pairs 1..16");
        return 2;
    }
    g_option_context_free(ctx);
    gsize ram = 8u << 20; /* a power of two with room for every pair's rings and buffers */
    while (ram < (8u << 20) + (gsize)pairs * (2u << 20))
        ram *= 2;
    VnetVm *vm = vnet_vm_new(server, NULL, ram, &err);
    if (!vm) {
        fprintf(stderr, "vnet-bench: %s\n", err->message);
        return 1;
    }
    VnetFeConfig cfg = { .device_id = 1, .qsize = 256, .rx_buf_size = 2048,
                         .pairs = (guint)pairs };
    VnetFe *fe = vnet_fe_new(vm, &cfg, &err);
    if (!fe) {
        fprintf(stderr, "vnet-bench: %s\n", err->message);
        return 1;
    }
    char **list = g_strsplit(sizes ? sizes : "64,1500", ",", -1);
    printf("vhost-pci data path: frontend -> guestd (loopback endpoint) -> frontend, "
           "features 0x%" G_GINT64_MODIFIER "x, %u-entry rings, %d frames in flight, "
           "%d queue pair(s)\n", fe->features, cfg.qsize, window, pairs);
    printf("baseline: the same frames echoed over a UNIX SOCK_SEQPACKET socketpair by a "
           "thread\n");
    printf("%-6s %14s %10s %14s %10s %8s\n", "bytes", "vhost-pci f/s", "Gbit/s",
           "baseline f/s", "Gbit/s", "ratio");
    for (char **s = list; *s; s++) {
        gsize size = (gsize)g_ascii_strtoull(*s, NULL, 10);
        if (size < 22 || size > 65536) {
            fprintf(stderr, "vnet-bench: bad size %s (22..65536)\n", *s);
            continue;
        }
        run_pairs(fe, (guint)pairs, size, 0.2, (guint)window); /* warm-up */
        Result v = run_pairs(fe, (guint)pairs, size, seconds, (guint)window);
        Result b = run_socketpair(size, seconds, (guint)window);
        printf("%-6zu %14.0f %10.3f %14.0f %10.3f %7.2fx\n", size, v.fps, v.gbps, b.fps, b.gbps,
               b.fps > 0 ? v.fps / b.fps : 0.0);
        fflush(stdout);
    }
    printf("kicks: receiveq %" G_GUINT64_FORMAT ", transmitq %" G_GUINT64_FORMAT
           " for %" G_GUINT64_FORMAT " frames sent; receive interrupts %" G_GUINT64_FORMAT "\n",
           fe->q[0].kicks, fe->q[1].kicks, fe->tx_frames, fe->rx_interrupts);
    g_strfreev(list);
    vnet_fe_del(fe, NULL, NULL, NULL);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    g_free(server);
    g_free(sizes);
    return 0;
}
