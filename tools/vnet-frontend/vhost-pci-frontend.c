/*
 * vhost-pci-frontend - a pretend driver VM on the host: a userspace virtio-net
 * frontend (vnet_frontend.h) connected to a vhost-pci-server, whose frames are
 * bridged to a TAP interface. With vhost-pci-guestd's own TAP on the device VM side,
 * the kernel's network stack works at both ends of a vhost-pci link with no VM
 * (tests/integration/test-datapath-netns.sh).
 *
 *   vhost-pci-frontend --server PATH --tap NAME [--device-id N] [--ram-mb N]
 *                      [--qsize N] [--no-mrg] [--no-event-idx] [--ready-file PATH]
 *
 * Runs until SIGINT/SIGTERM, then DEVICE_INFO(DEL) and exit. Prints one line with
 * counters at exit.
 *
 * Security model: frames from the TAP are this host's own; frames from the device
 * side are checked by vnet_frontend.c before they reach the TAP.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vnet_frontend.h"
#include "vp_wire.h"

static int tap_open(const char *name, char *actual, GError **error)
{
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        g_set_error(error, VNET_FE_ERROR, 0, "/dev/net/tun: %s", g_strerror(errno));
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    g_strlcpy(ifr.ifr_name, name, sizeof(ifr.ifr_name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        g_set_error(error, VNET_FE_ERROR, 0, "TAP %s: %s", name, g_strerror(errno));
        close(fd);
        return -1;
    }
    g_strlcpy(actual, ifr.ifr_name, IFNAMSIZ);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s >= 0) {
        if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
            ifr.ifr_flags |= IFF_UP;
            ioctl(s, SIOCSIFFLAGS, &ifr);
        }
        close(s);
    }
    return fd;
}

int main(int argc, char **argv)
{
    char *server = NULL, *tap = NULL, *ready = NULL;
    gint64 device_id = 1;
    gint ram_mb = 8, qsize = 256;
    gboolean no_mrg = FALSE, no_event_idx = FALSE, tx_hdr_sep = FALSE;
    GOptionEntry entries[] = {
        { "server", 0, 0, G_OPTION_ARG_FILENAME, &server, "vhost-pci-server socket", "PATH" },
        { "tap", 0, 0, G_OPTION_ARG_STRING, &tap, "TAP interface to bridge", "NAME" },
        { "device-id", 0, 0, G_OPTION_ARG_INT64, &device_id, "frontend device_id (1)", "N" },
        { "ram-mb", 0, 0, G_OPTION_ARG_INT, &ram_mb, "driver VM RAM, MiB, power of 2 (8)", "N" },
        { "qsize", 0, 0, G_OPTION_ARG_INT, &qsize, "ring entries (256)", "N" },
        { "no-mrg", 0, 0, G_OPTION_ARG_NONE, &no_mrg, "do not offer MRG_RXBUF", NULL },
        { "no-event-idx", 0, 0, G_OPTION_ARG_NONE, &no_event_idx, "do not offer EVENT_IDX",
          NULL },
        { "tx-hdr-separate", 0, 0, G_OPTION_ARG_NONE, &tx_hdr_sep,
          "virtio-net header in a descriptor of its own", NULL },
        { "ready-file", 0, 0, G_OPTION_ARG_FILENAME, &ready, "create PATH once running",
          "PATH" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("- userspace virtio-net frontend over vhost-pci");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || !server || !tap || device_id <= 0 ||
        qsize <= 0 || qsize > 32768 || ram_mb <= 0) {
        fprintf(stderr, "vhost-pci-frontend: %s\n",
                err ? err->message : "--server PATH and --tap NAME are required");
        return 2;
    }
    g_option_context_free(ctx);
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);

    char ifname[IFNAMSIZ];
    int tfd = tap_open(tap, ifname, &err);
    if (tfd < 0) {
        fprintf(stderr, "vhost-pci-frontend: %s\n", err->message);
        return 1;
    }
    VnetVm *vm = vnet_vm_new(server, NULL, (gsize)ram_mb << 20, &err);
    if (!vm) {
        fprintf(stderr, "vhost-pci-frontend: %s\n", err->message);
        return 1;
    }
    VnetFeConfig cfg = { .device_id = (guint64)device_id, .qsize = (guint16)qsize,
                         .tx_hdr_separate = tx_hdr_sep };
    cfg.features = (1ULL << VP_VIRTIO_F_VERSION_1) |
                   (no_mrg ? 0 : 1ULL << VP_VIRTIO_NET_F_MRG_RXBUF) |
                   (no_event_idx ? 0 : 1ULL << VP_VIRTIO_F_RING_EVENT_IDX);
    if (no_mrg) {
        cfg.rx_buf_size = 65536; /* a whole frame per chain */
        cfg.rx_bufs = 32;
    }
    VnetFe *fe = vnet_fe_new(vm, &cfg, &err);
    if (!fe) {
        fprintf(stderr, "vhost-pci-frontend: %s\n", err->message);
        vnet_vm_free(vm);
        return 1;
    }
    fprintf(stderr, "vhost-pci-frontend: %s <-> vhost-pci (uuid %s, device_id %" G_GINT64_FORMAT
            ", features 0x%" G_GINT64_MODIFIER "x)\n", ifname, vm->uuid, device_id, fe->features);
    if (ready)
        g_file_set_contents(ready, vm->uuid, -1, NULL);

    guint8 *buf = g_malloc(VNET_FE_MAX_FRAME);
    guint8 *pending = g_malloc(VNET_FE_MAX_FRAME);
    gssize pending_len = 0; /* a frame read from the TAP that did not fit yet */
    guint64 to_vp = 0, from_vp = 0, tap_drops = 0;
    int rc = 0;
    for (;;) {
        int work = 0;
        /* TAP -> transmitq */
        for (int k = 0; k < 64; k++) {
            if (!pending_len) {
                pending_len = read(tfd, pending, VNET_FE_MAX_FRAME);
                if (pending_len <= 0) {
                    pending_len = 0;
                    break;
                }
            }
            int r = vnet_fe_try_send(fe, pending, (gsize)pending_len, &err);
            if (r < 0)
                goto failed;
            if (r == 0)
                break;
            pending_len = 0;
            to_vp++;
            work++;
        }
        /* receiveq -> TAP */
        for (int k = 0; k < 64; k++) {
            gsize len = 0;
            int r = vnet_fe_try_recv(fe, buf, VNET_FE_MAX_FRAME, &len, &err);
            if (r < 0)
                goto failed;
            if (r == 0)
                break;
            if (write(tfd, buf, len) != (gssize)len)
                tap_drops++;
            from_vp++;
            work++;
        }
        if (vnet_fe_reclaim(fe, &err) < 0)
            goto failed;
        if (work)
            continue;
        /* Idle: sleep on the TAP, the receive call eventfd and signals; transmit
         * completions are taken back on the next round. */
        if (vp_vring_drv_set_notify(&fe->q[0].vr, true))
            continue;
        struct pollfd p[3] = {
            { .fd = tfd, .events = pending_len ? 0 : POLLIN },
            { .fd = fe->q[0].call_fd, .events = POLLIN },
            { .fd = sfd, .events = POLLIN },
        };
        poll(p, 3, pending_len ? 1 : 100);
        guint64 v;
        if (p[1].revents & POLLIN)
            (void)!read(fe->q[0].call_fd, &v, sizeof(v));
        vp_vring_drv_set_notify(&fe->q[0].vr, false);
        if (p[2].revents & POLLIN)
            break;
    }
    goto done;
failed:
    fprintf(stderr, "vhost-pci-frontend: %s\n", err->message);
    g_clear_error(&err);
    rc = 1;
done:
    fprintf(stderr, "vhost-pci-frontend: %" G_GUINT64_FORMAT " frames to vhost-pci, %"
            G_GUINT64_FORMAT " from it, %" G_GUINT64_FORMAT " TAP write drops, kicks %"
            G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT ", rx interrupts %" G_GUINT64_FORMAT "\n",
            to_vp, from_vp, tap_drops, fe->q[0].kicks, fe->q[1].kicks, fe->rx_interrupts);
    if (rc == 0 && !vnet_fe_del(fe, NULL, NULL, &err)) {
        fprintf(stderr, "vhost-pci-frontend: DEVICE_INFO(DEL): %s\n", err->message);
        g_clear_error(&err);
    }
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    close(tfd);
    close(sfd);
    g_free(buf);
    g_free(pending);
    g_free(server);
    g_free(tap);
    g_free(ready);
    return rc;
}
