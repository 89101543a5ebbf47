/*
 * main.c - vhost-pci-client: the driver VM's vhost-user backend (DESIGN sections 2, 4
 * and 8). A vhost-user frontend (QEMU's virtio-net with -netdev vhost-user, DPDK's
 * virtio-user) sets up its memory and virtqueues; the daemon turns that into
 * vhost-pci messages to the device VM's vhost-pci-server, so that the device VM's
 * driver serves the frontend's virtqueues directly.
 *
 * What happens when is the bridge's business (client/bridge.h: an explicit state
 * machine, loop-free); the daemon keeps the options, the sockets and the
 * reconnection, feeds the bridge its events and carries out its actions (this file:
 * start-up, main loop and shutdown; the rest in its children, see daemon.h):
 *
 *   vhost-user core (vhost_user.h)  --events-->  bridge  --actions-->  VpClient requests
 *   VpClient ACKs, timers           --events-->          --actions-->  vhost-user replies
 *
 * Connection directions (vhost-user.rst "Backend program conventions"; OVS's
 * dpdkvhostuser / dpdkvhostuserclient ports, DPDK's RTE_VHOST_USER_CLIENT):
 *   --socket-path PATH          the daemon listens, the frontend connects (QEMU
 *                               -chardev socket,path=PATH; DPDK virtio-user path=PATH)
 *   --vhost-server-path PATH    the frontend listens (QEMU -chardev socket,server=on;
 *                               DPDK virtio-user path=PATH,server=1) and the daemon
 *                               connects, reconnecting with bounded backoff whenever
 *                               the connection ends
 *   --fd N                      an inherited socket, listening or connected
 *
 * One frontend connection at a time (a second is refused), one NET frontend
 * (--device-id) with --queues receiveq/transmitq pairs (virtqueues 2k and 2k+1; the
 * frontend's VMM keeps the virtio-net control queue and enables pairs with
 * SET_VRING_ENABLE, which the bridge turns into DEVICE_INFO updates).
 *
 * Security model: the daemon parses no peer input itself. The frontend's requests are
 * framed and validated by the vhost-user core (client/vhost_user.c), the server's
 * messages by libvhostpci-client (framing, ACK matching), and the bridge trusts the
 * server's answers only as far as client/bridge.c says. Every fd the daemon itself
 * keeps (listening socket) has one owner here and is closed at exit.
 *
 * Threading: one thread, one GLib main loop (the global default context).
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include <inttypes.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <glib.h>
#include <glib-unix.h>

#include "daemon.h"
#include "vp_log_glib.h"

struct daemon the_daemon;

/* ------------------------------ shutdown ------------------------------ */

static gboolean shutdown_deadline(gpointer data)
{
    struct daemon *d = data;
    d->shutdown_timer = 0;
    g_warning("shutdown: no DEVICE_INFO_ACK(DEL) within %d ms: exiting anyway",
              d->timeout_ms + 1000);
    g_main_loop_quit(d->loop);
    return G_SOURCE_REMOVE;
}

static gboolean on_signal(gpointer data)
{
    struct daemon *d = data;
    if (d->shutting_down) {
        g_message("second signal: exiting without waiting");
        g_main_loop_quit(d->loop);
        return G_SOURCE_CONTINUE;
    }
    d->shutting_down = true;
    g_message("shutting down");
    if (d->listen_src) {
        g_source_remove(d->listen_src);
        d->listen_src = 0;
    }
    struct retry *rs[] = { &d->srv_retry, &d->fe_retry };
    for (unsigned i = 0; i < G_N_ELEMENTS(rs); i++)
        if (rs[i]->timer) {
            g_source_remove(rs[i]->timer);
            rs[i]->timer = 0;
        }
    d->shutdown_timer = g_timeout_add(d->timeout_ms + 1000, shutdown_deadline, d);
    daemon_post_simple(d, BR_EV_SHUTDOWN);
    return G_SOURCE_CONTINUE;
}

/* ------------------------------ main ------------------------------ */

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    struct daemon *d = &the_daemon;
    d->opt_fd = -1;
    d->device_id = 1;
    d->ack_timeout_s = 15.0;
    d->queue_pairs = 1;
    d->listen_fd = -1;
    daemon_retry_reset(&d->srv_retry);
    daemon_retry_reset(&d->fe_retry);
    d->srv_retry.max_ms = RECONNECT_MAX_MS;
    d->fe_retry.max_ms = FE_RECONNECT_MAX_MS;

    int rc = daemon_parse_options(d, argc, argv);
    if (rc >= 0) {
        if (rc == 0 && d->print_caps) {
            /* vhost-user.json VHostUserBackendCapabilities: a net backend has no
             * type-specific features. */
            printf("{\n  \"type\": \"net\"\n}\n");
            fflush(stdout);
        }
        return rc;
    }
    vp_log_install();
    signal(SIGPIPE, SIG_IGN);

    struct br_config bc = { .device_id = (uint64_t)d->device_id, .offer = d->offer,
                            .nqueues = 2 * (unsigned)d->queue_pairs,
                            .frontend_features = d->queue_pairs > 1 ? 1ULL << VU_F_NET_MQ : 0,
                            .log_refusals_only = d->log_refusals_only,
                            .features_from_device = d->features_from_device,
                            /* the placeholder's MEMORY_INFO(ADD), then FEATURE_BITS */
                            .features_wait_ms = d->features_from_device ?
                                                2 * d->timeout_ms + 5000 : 0 };
    d->br = br_new(&bc, daemon_act, daemon_br_log, d);
    if (!d->br) {
        fprintf(stderr, "vhost-pci-client: out of memory\n");
        return 1;
    }
    d->loop = g_main_loop_new(NULL, FALSE);
    vp_error err = { "" };
    if (d->socket_path) {
        d->listen_fd = daemon_listen_unix(d->socket_path, &err);
        if (d->listen_fd < 0) {
            fprintf(stderr, "vhost-pci-client: %s\n", err.msg);
            return 1;
        }
        d->own_socket_path = true;
    } else if (d->opt_fd >= 0 && daemon_adopt_fd(d, d->opt_fd, &err) < 0) {
        fprintf(stderr, "vhost-pci-client: %s\n", err.msg[0] ? err.msg : "cannot use --fd");
        return 1;
    }
    if (d->listen_fd >= 0)
        d->listen_src = g_unix_fd_add(d->listen_fd, G_IO_IN, daemon_on_accept, d);
    g_unix_signal_add(SIGINT, on_signal, d);
    g_unix_signal_add(SIGTERM, on_signal, d);

    char *where = d->socket_path ? g_strdup_printf("listening on %s", d->socket_path)
                : d->vhost_server_path ? g_strdup_printf("connecting to %s", d->vhost_server_path)
                : g_strdup_printf("fd %d", d->opt_fd);
    g_message("client_uuid %s, device_id %" G_GINT64_FORMAT ", vhost-user socket %s, "
              "server %s, offering features 0x%" PRIx64 "%s, %d queue pair(s)", d->uuid_str,
              d->device_id, where, d->server_path, d->offer,
              d->features_from_device ? " (the frontend gets what the device VM's driver "
              "accepts: --features-from-device)" : "", d->queue_pairs);
    g_free(where);
    daemon_srv_connect(d);
    if (d->vhost_server_path)
        daemon_fe_connect(d);

    g_main_loop_run(d->loop);

    /* Exit: the frontend connection, the server connection, the socket. */
    if (d->vu) {
        vu_glib_free(d->vu);
        d->vu = NULL;
    }
    if (d->vpc) {
        VpClient *c = d->vpc;
        d->vpc = NULL;
        vp_client_set_closed_func(c, NULL, NULL);
        vp_client_close(c);
        vp_client_unref(c);
    }
    if (d->listen_src)
        g_source_remove(d->listen_src);
    vp_close_fd(&d->listen_fd);
    if (d->own_socket_path)
        unlink(d->socket_path);
    /* Sources (idle unrefs, timers) still pending are dropped with the context; the
     * bridge goes after the last callback that could post to it. */
    while (g_main_context_iteration(NULL, FALSE))
        ;
    for (unsigned t = 0; t < BR_NTIMERS; t++)
        if (d->br_timer[t])
            g_source_remove(d->br_timer[t]);
    br_free(d->br);
    g_main_loop_unref(d->loop);
    g_message("stopped");
    g_free(d->socket_path);
    g_free(d->vhost_server_path);
    g_free(d->server_path);
    g_free(d->uuid_opt);
    g_free(d->log_level);
    g_free(d->features_opt);
    g_free(d->memory_refusal_opt);
    return d->exit_code;
}
