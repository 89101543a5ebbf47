/*
 * daemon_options.c - the vhost-pci-client daemon's command line (daemon.h): the
 * options and their help, defaults, and the checks that turn a bad command line into
 * a message and exit code 2.
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include "daemon.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <uuid/uuid.h>

#include "vp_log_glib.h"

int daemon_parse_options(struct daemon *d, int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &d->socket_path,
          "vhost-user UNIX socket to listen on; the frontend connects (QEMU: -chardev "
          "socket,path=PATH -netdev vhost-user; DPDK: --vdev net_virtio_user0,path=PATH)",
          "PATH" },
        { "vhost-server-path", 0, 0, G_OPTION_ARG_FILENAME, &d->vhost_server_path,
          "The frontend's listening vhost-user socket: the daemon connects and reconnects "
          "with backoff whenever the connection ends (QEMU: -chardev socket,path=PATH,"
          "server=on; DPDK: --vdev net_virtio_user0,path=PATH,server=1; like OVS's "
          "dpdkvhostuserclient ports)", "PATH" },
        { "fd", 0, 0, G_OPTION_ARG_INT, &d->opt_fd,
          "Use this inherited vhost-user socket (listening, or connected to the frontend)",
          "FDNUM" },
        { "print-capabilities", 0, 0, G_OPTION_ARG_NONE, &d->print_caps,
          "Print the backend capabilities (JSON, vhost-user.json) and exit", NULL },
        { "server", 'S', 0, G_OPTION_ARG_FILENAME, &d->server_path,
          "The device VM's vhost-pci-server socket (its --listen PATH; required)", "PATH" },
        { "uuid", 'u', 0, G_OPTION_ARG_STRING, &d->uuid_opt,
          "client_uuid naming this driver VM (default: a new random one, printed at start)",
          "UUID" },
        { "device-id", 'i', 0, G_OPTION_ARG_INT64, &d->device_id,
          "device_id of this frontend in the driver VM (default 1)", "N" },
        { "features", 0, 0, G_OPTION_ARG_STRING, &d->features_opt,
          "virtio-net feature bits offered to the device VM (default: the vhost-pci-net "
          "set, VP_NET_FEATURES)", "MASK" },
        { "features-from-device", 0, 0, G_OPTION_ARG_NONE, &d->features_from_device,
          "Offer the frontend only what the device VM's guest driver accepts, asked before "
          "answering the frontend's first GET_FEATURES: on connecting to the server the "
          "daemon creates the device with a 2 MiB placeholder region of its own, sends "
          "FEATURE_BITS, confirms a smaller answer with FEATURE_BITS_ACK (spec 1.5.1.1) and "
          "removes the placeholder once the frontend's memory is there. Needed with QEMU "
          "when the device VM accepts fewer features than offered (QEMU cannot renegotiate "
          "after its start: \"vhost lacks feature mask\"); GET_FEATURES then waits up to "
          "2 x --ack-timeout + 5 s for the answer", NULL },
        { "memory-refusal", 0, 0, G_OPTION_ARG_STRING, &d->memory_refusal_opt,
          "When the device VM refuses the frontend's memory: 'reply' (default) answers "
          "the frontend's SET_MEM_TABLE/ADD_MEM_REG/REM_MEM_REG with a failure when it "
          "survives one: for memory hot-plugged while its device runs (QEMU logs it and "
          "keeps the region out) and for its first memory (nothing could be served: DPDK "
          "reports a failed start, QEMU a failed vhost start); 'log' only logs it and "
          "answers success. A frontend restarting its device with memory the device VM "
          "has always gets success", "reply|log" },
        { "queues", 'q', 0, G_OPTION_ARG_INT, &d->queue_pairs,
          "Queue pairs offered to the frontend (default 1; with more: VIRTIO_NET_F_MQ and "
          "VHOST_USER_PROTOCOL_F_MQ; QEMU: -netdev vhost-user,queues=N; DPDK: "
          "queues=N,cq=1). A frontend set up for more is refused at its start with a "
          "reason", "N" },
        { "ack-timeout", 't', 0, G_OPTION_ARG_DOUBLE, &d->ack_timeout_s,
          "Seconds to wait for each server ACK (default 15)", "SECONDS" },
        { "log-level", 0, 0, G_OPTION_ARG_STRING, &d->log_level,
          "Least severe messages to print: error, warning, info (default) or debug", "LEVEL" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GOptionContext *ctx = g_option_context_new("- vhost-user backend of a driver VM for vhost-pci");
    g_option_context_set_summary(ctx,
        "The vhost-user backend of a driver VM's virtio-net (QEMU) or of a DPDK\n"
        "virtio-user port: relays the frontend's memory, features and virtqueues to the\n"
        "device VM's vhost-pci-server (DESIGN.md 4), whose guest driver then serves the\n"
        "queues through shared memory.");
    g_option_context_set_description(ctx,
        "Examples:\n"
        "  vhost-pci-client --socket-path /run/vu.sock --server /run/vp.sock --device-id 1\n"
        "  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem0,size=512M,share=on \\\n"
        "      -numa node,memdev=mem0 -chardev socket,id=vu,path=/run/vu.sock,reconnect=1 \\\n"
        "      -netdev vhost-user,id=n0,chardev=vu -device virtio-net-pci,netdev=n0,vectors=0\n"
        "  dpdk-testpmd --no-pci --vdev net_virtio_user0,path=/run/vu.sock -- ...\n"
        "The frontend listening (reconnects survive a daemon restart):\n"
        "  dpdk-testpmd --no-pci --vdev net_virtio_user0,path=/run/vu.sock,server=1 -- ...\n"
        "  vhost-pci-client --vhost-server-path /run/vu.sock --server /run/vp.sock\n"
        "DPDK's and hugetlbfs memory is never sealed: the server needs --allow-unsealed.\n"
        "SIGINT/SIGTERM: DEVICE_INFO(DEL) of the frontend, wait for DEL_DONE (bounded by\n"
        "--ack-timeout), exit.\n");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *e = NULL;
    bool ok = g_option_context_parse(ctx, &argc, &argv, &e);
    g_option_context_free(ctx);
    if (!ok) {
        fprintf(stderr, "vhost-pci-client: %s (see --help)\n", e->message);
        g_error_free(e);
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "vhost-pci-client: unexpected argument '%s' (see --help)\n", argv[1]);
        return 2;
    }
    if (d->print_caps)
        return 0;
    /* Defaults after parsing: GOption does not free a preset string it replaces. */
    if (!d->log_level)
        d->log_level = g_strdup("info");
    if (vp_log_set_level(d->log_level) < 0) {
        fprintf(stderr, "vhost-pci-client: --log-level must be error, warning, info or debug\n");
        return 2;
    }
    if (!!d->socket_path + (d->opt_fd >= 0) + !!d->vhost_server_path != 1) {
        fprintf(stderr, "vhost-pci-client: give exactly one of --socket-path PATH, "
                "--vhost-server-path PATH and --fd FDNUM\n");
        return 2;
    }
    if (d->vhost_server_path) {
        struct sockaddr_un sa;
        if (strlen(d->vhost_server_path) >= sizeof(sa.sun_path)) {
            fprintf(stderr, "vhost-pci-client: --vhost-server-path %s: longer than %zu "
                    "bytes\n", d->vhost_server_path, sizeof(sa.sun_path) - 1);
            return 2;
        }
    }
    if (!d->server_path) {
        fprintf(stderr, "vhost-pci-client: --server PATH is required (see --help)\n");
        return 2;
    }
    if (d->queue_pairs < 1 || d->queue_pairs > MAX_PAIRS) {
        fprintf(stderr, "vhost-pci-client: --queues must be in 1..%d\n", MAX_PAIRS);
        return 2;
    }
    if (d->device_id < 0) {
        fprintf(stderr, "vhost-pci-client: --device-id must be >= 0\n");
        return 2;
    }
    if (!(d->ack_timeout_s > 0 && d->ack_timeout_s <= 3600)) {
        fprintf(stderr, "vhost-pci-client: --ack-timeout must be in (0, 3600] seconds\n");
        return 2;
    }
    if (!d->memory_refusal_opt || strcmp(d->memory_refusal_opt, "reply") == 0) {
        d->log_refusals_only = false;
    } else if (strcmp(d->memory_refusal_opt, "log") == 0) {
        d->log_refusals_only = true;
    } else {
        fprintf(stderr, "vhost-pci-client: --memory-refusal must be reply or log\n");
        return 2;
    }
    d->timeout_ms = (int)(d->ack_timeout_s * 1000.0 + 0.5);
    if (d->timeout_ms <= 0)
        d->timeout_ms = 1;
    d->offer = VP_NET_FEATURES;
    if (d->features_opt) {
        char *end = NULL;
        errno = 0;
        guint64 v = g_ascii_strtoull(d->features_opt, &end, 0);
        if (errno || !end || *end || end == d->features_opt) {
            fprintf(stderr, "vhost-pci-client: --features '%s' is not a number\n",
                    d->features_opt);
            return 2;
        }
        if (v & VU_LEVEL_FEATURES) {
            fprintf(stderr, "vhost-pci-client: --features: bit %d is vhost-user's own "
                    "(VHOST_USER_F_PROTOCOL_FEATURES), not a virtio-net feature\n",
                    VU_F_PROTOCOL_FEATURES);
            return 2;
        }
        d->offer = v;
    }
    uuid_t u;
    if (d->uuid_opt) {
        if (uuid_parse(d->uuid_opt, u) < 0) {
            fprintf(stderr, "vhost-pci-client: --uuid '%s' is not a UUID "
                    "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)\n", d->uuid_opt);
            return 2;
        }
    } else {
        uuid_generate_random(u);
    }
    memcpy(d->uuid, u, 16);
    uuid_unparse_lower(d->uuid, d->uuid_str);
    return -1;
}
