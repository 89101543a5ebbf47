/*
 * main.c - vhost-pci-guestd: the vhost-pci guest driver (DESIGN section 6).
 * Options, wiring of loop + bus + control plane + status socket, clean shutdown.
 * libc only, statically linked.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "bus.h"
#include "controlplane.h"
#include "endpoint.h"
#include "log.h"
#include "loop.h"
#include "net.h"
#include "status.h"
#include "vp_wire.h"

struct opts {
    const char *bus;
    const char *local_bus;
    const char *status;
    const char *tap;
    const char *endpoint;         /* --endpoint SPEC (vhost-pci-net, endpoint.h) */
    const char *sysfs;
    uint64_t refuse_features;     /* --features / --refuse-features */
    unsigned workers;             /* --workers N */
    unsigned connect_timeout_ms;
    unsigned window_wait_ms;
    unsigned rescan_ms;
};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: vhost-pci-guestd [OPTIONS]\n"
            "The vhost-pci guest driver: serves vhost-pci devices (control plane and,\n"
            "for NET frontends, the vhost-pci-net data path).\n"
            "\n"
            "  --bus local|pci         how devices are found (default: pci)\n"
            "                            pci:   sysfs 1af4:1110 functions (inside the device VM)\n"
            "                            local: the server's --local-bus socket (host-only)\n"
            "  --local-bus PATH        the server's local bus socket (implies --bus local)\n"
            "  --status PATH           serve the status socket (JSON) at PATH\n"
            "  --tap NAME              TAP interface for vhost-pci-net packets\n"
            "  --endpoint SPEC         where vhost-pci-net packets go instead:\n"
            "                            tap:NAME   a TAP interface (same as --tap NAME)\n"
            "                            loopback   back to the sending driver VM\n"
            "                            switch     a learning switch between all driver VMs\n"
            "                            unix:PATH  SOCK_SEQPACKET socket (tests)\n"
            "                          without --tap/--endpoint frontends are only recorded\n"
            "  --features MASK         accept at most these remote feature bits (hex or\n"
            "                          decimal) of those offered; default: every bit the\n"
            "                          vhost-pci-net data path supports (0x%llx)\n"
            "  --refuse-features MASK  never accept these bits (with --features: both apply);\n"
            "                          a frontend then goes through the renegotiation round\n"
            "  --workers N             data path threads: each queue pair is polled by one,\n"
            "                          at most N run (default: the online CPUs, at most %d);\n"
            "                          0: no threads, the main loop polls every pair\n"
            "  --log-level LEVEL       error|warn|info|debug (default: info)\n"
            "  --sysfs PATH            sysfs root for --bus pci (default: /sys)\n"
            "  --rescan-ms N           pci bus: rescan sysfs every N ms (default: 1000)\n"
            "  --connect-timeout-ms N  local bus: keep retrying connect for N ms (default: 5000)\n"
            "  --window-wait-ms N      how long a message may wait for a window to be\n"
            "                          plugged before it fails (default: 10000)\n"
            "  -h, --help              this text\n",
            (unsigned long long)VP_NET_FEATURES, GD_NET_MAX_WORKERS);
}

static int parse_uint(const char *s, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > 3600000UL)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

/* A feature mask: hex (0x...), octal or decimal, all 64 bits. */
static int parse_mask(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-')
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    enum { O_BUS = 256, O_LOCAL_BUS, O_STATUS, O_TAP, O_LOG, O_SYSFS, O_RESCAN, O_CONNECT,
           O_WAIT, O_ENDPOINT, O_FEATURES, O_REFUSE, O_WORKERS };
    static const struct option longopts[] = {
        { "bus", required_argument, NULL, O_BUS },
        { "local-bus", required_argument, NULL, O_LOCAL_BUS },
        { "status", required_argument, NULL, O_STATUS },
        { "tap", required_argument, NULL, O_TAP },
        { "endpoint", required_argument, NULL, O_ENDPOINT },
        { "features", required_argument, NULL, O_FEATURES },
        { "refuse-features", required_argument, NULL, O_REFUSE },
        { "workers", required_argument, NULL, O_WORKERS },
        { "log-level", required_argument, NULL, O_LOG },
        { "sysfs", required_argument, NULL, O_SYSFS },
        { "rescan-ms", required_argument, NULL, O_RESCAN },
        { "connect-timeout-ms", required_argument, NULL, O_CONNECT },
        { "window-wait-ms", required_argument, NULL, O_WAIT },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    *o = (struct opts){ .sysfs = "/sys", .connect_timeout_ms = 5000,
                        .window_wait_ms = 10000, .rescan_ms = 1000,
                        .workers = ncpu < 1 ? 1 : ncpu > GD_NET_MAX_WORKERS ? GD_NET_MAX_WORKERS
                                                                            : (unsigned)ncpu };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        enum gd_log_level lvl;
        switch (c) {
        case O_BUS:
            if (strcmp(optarg, "local") && strcmp(optarg, "pci")) {
                fprintf(stderr, "vhost-pci-guestd: --bus must be local or pci\n");
                return -1;
            }
            o->bus = optarg;
            break;
        case O_LOCAL_BUS: o->local_bus = optarg; break;
        case O_STATUS: o->status = optarg; break;
        case O_TAP: o->tap = optarg; break;
        case O_ENDPOINT: o->endpoint = optarg; break;
        case O_SYSFS: o->sysfs = optarg; break;
        case O_FEATURES:
        case O_REFUSE: {
            uint64_t mask;
            if (parse_mask(optarg, &mask) < 0) {
                fprintf(stderr, "vhost-pci-guestd: bad feature mask %s (e.g. 0x%llx)\n", optarg,
                        (unsigned long long)VP_NET_FEATURES);
                return -1;
            }
            o->refuse_features |= c == O_FEATURES ? ~mask : mask;
            break;
        }
        case O_LOG:
            if (gd_log_parse_level(optarg, &lvl) < 0) {
                fprintf(stderr, "vhost-pci-guestd: bad --log-level %s\n", optarg);
                return -1;
            }
            gd_log_set_level(lvl);
            break;
        case O_WORKERS: {
            unsigned v;
            if (parse_uint(optarg, &v) < 0 || v > GD_NET_MAX_WORKERS) {
                fprintf(stderr, "vhost-pci-guestd: --workers takes 0..%d\n",
                        GD_NET_MAX_WORKERS);
                return -1;
            }
            o->workers = v;
            break;
        }
        case O_RESCAN:
        case O_CONNECT:
        case O_WAIT: {
            unsigned v;
            if (parse_uint(optarg, &v) < 0) {
                fprintf(stderr, "vhost-pci-guestd: bad number %s\n", optarg);
                return -1;
            }
            if (c == O_RESCAN)
                o->rescan_ms = v;
            else if (c == O_CONNECT)
                o->connect_timeout_ms = v;
            else
                o->window_wait_ms = v;
            break;
        }
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "vhost-pci-guestd: unexpected argument %s\n", argv[optind]);
        return -1;
    }
    if (!o->bus)
        o->bus = o->local_bus ? "local" : "pci";
    if (!strcmp(o->bus, "local") && !o->local_bus) {
        fprintf(stderr, "vhost-pci-guestd: --bus local needs --local-bus PATH\n");
        return -1;
    }
    if (!strcmp(o->bus, "pci") && o->local_bus) {
        fprintf(stderr, "vhost-pci-guestd: --local-bus only goes with --bus local\n");
        return -1;
    }
    if (o->tap && o->endpoint) {
        fprintf(stderr, "vhost-pci-guestd: give --tap or --endpoint, not both\n");
        return -1;
    }
    if (o->window_wait_ms == 0)
        o->window_wait_ms = 1;
    return 0;
}

/* Every device holds eventfds, call fds and window files: raise the soft fd limit to
 * the hard one (the local bus budgets its fds below it, issue 12.4). */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            gd_warn("raising the file descriptor limit from %llu to %llu: %s",
                    (unsigned long long)was, (unsigned long long)rl.rlim_max, strerror(errno));
    }
}

static void on_signal(void *opaque, int fd, short revents)
{
    struct gd_loop *loop = opaque;
    (void)revents;
    struct signalfd_siginfo si;
    if (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        gd_info("signal %u: shutting down", si.ssi_signo);
    gd_loop_quit(loop);
}

static void on_bus_lost(void *opaque, const char *why)
{
    gd_info("bus lost (%s): shutting down", why);
    gd_loop_quit(opaque);
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse_args(argc, argv, &o) < 0)
        return 2;

    int rc = 1;
    vp_error err = { { 0 } };
    struct gd_loop *loop = gd_loop_new();
    struct gd_cp *cp = NULL;
    struct gd_bus *bus = NULL;
    struct gd_status *st = NULL;
    struct gd_net *net = NULL;
    int sfd = -1;
    if (!loop) {
        gd_error("out of memory");
        return 1;
    }

    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0 || gd_loop_add_fd(loop, sfd, POLLIN, on_signal, loop) < 0) {
        gd_error("signalfd: %s", strerror(errno));
        goto out;
    }

    struct gd_cp_config cfg = {
        .tap = o.tap,
        .window_wait_ns = (uint64_t)o.window_wait_ms * 1000000ULL,
        .refuse_features = o.refuse_features,
        .bus_lost = on_bus_lost,
        .opaque = loop,
    };
    cp = gd_cp_new(loop, &cfg);
    if (!cp) {
        gd_error("out of memory");
        goto out;
    }
    /* The data path (vhost-pci-net), when an endpoint is configured. */
    if (o.tap || o.endpoint) {
        char spec[128];
        snprintf(spec, sizeof(spec), "%s%s", o.tap ? "tap:" : "", o.tap ? o.tap : o.endpoint);
        struct gd_endpoint *ep = gd_endpoint_new(loop, spec, &err);
        if (!ep) {
            gd_error("%s", err.msg);
            goto out;
        }
        net = gd_net_new(loop, ep);
        if (!net) {
            gd_error("out of memory");
            goto out;
        }
        gd_net_set_workers(net, o.workers);
        gd_cp_set_datapath(cp, &gd_net_ops, net);
    }

    if (o.status) {
        st = gd_status_new(loop, cp, o.status, &err);
        if (!st) {
            gd_error("%s", err.msg);
            goto out;
        }
    }
    if (!strcmp(o.bus, "local"))
        bus = gd_bus_local_new(loop, o.local_bus, o.connect_timeout_ms, &gd_cp_bus_events, cp,
                               &err);
    else
        bus = gd_bus_pci_new(loop, o.sysfs, o.rescan_ms, &gd_cp_bus_events, cp, &err);
    if (!bus) {
        gd_error("%s", err.msg);
        goto out;
    }
    gd_cp_set_bus(cp, bus);
    if (gd_bus_start(bus, &err) < 0) {
        gd_error("%s", err.msg);
        goto out;
    }
    if (o.refuse_features & VP_NET_FEATURES)
        gd_info("feature bits refused: 0x%llx (accepting at most 0x%llx)",
                (unsigned long long)(o.refuse_features & VP_NET_FEATURES),
                (unsigned long long)(VP_NET_FEATURES & ~o.refuse_features));
    gd_info("running: bus %s%s%s%s%s", o.bus, o.local_bus ? " " : "",
            o.local_bus ? o.local_bus : "", o.status ? ", status " : "", o.status ? o.status : "");

    int r = gd_loop_run(loop);
    if (r < 0) {
        gd_error("event loop: %s", strerror(-r));
        goto out;
    }
    rc = 0;
out:
    /* Devices first (frontends stopped, windows unmapped), then the bus that owns
     * the control areas, then the status socket. */
    if (cp)
        gd_cp_shutdown(cp);
    gd_bus_destroy(bus);
    gd_status_free(st);
    gd_cp_free(cp);
    gd_net_free(net); /* after every frontend was stopped */
    vp_close_fd(&sfd);
    gd_loop_free(loop);
    return rc;
}
