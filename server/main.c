/*
 * main.c - vhost-pci-server: options, main loop, signals, shutdown (DESIGN sections
 * 2, 4, 7). One server per device VM: it listens for vhost-pci clients (--listen),
 * realises one vhost-pci device per client_uuid through a device host
 * (--device-host local|qemu) and answers status queries (--mgmt).
 */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <glib-unix.h>

#include "mgmt.h"
#include "resources.h"
#include "session.h"
#include "tenant.h"
#include "unix_listen.h"
#include "vp_log_glib.h"

/* Device hosts, by --device-host name. A host whose implementation is not linked
 * has a NULL ops (vp_devhost_qemu_ops is weak until devhost_qemu.c exists). */
static const struct {
    const char *name;
    const struct vp_devhost_ops *ops;
} hosts[] = {
    { "local", &vp_devhost_local_ops },
    { "qemu", &vp_devhost_qemu_ops },
};

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data);

static gboolean resume_accept(gpointer data)
{
    struct vp_server *srv = data;
    if (srv->listen_fd >= 0 && !srv->shutting_down)
        srv->listen_src = g_unix_fd_add(srv->listen_fd, G_IO_IN, on_accept, srv);
    return G_SOURCE_REMOVE;
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    struct vp_server *srv = data;
    (void)cond;
    for (;;) {
        int c = srv_unix_accept(fd);
        if (c == -EMFILE || c == -ENFILE || c == -ENOBUFS || c == -ENOMEM) {
            /* The pending connection stays: pause instead of spinning on it. */
            g_warning("accept: %s: pausing new connections for 200 ms", g_strerror(-c));
            srv->listen_src = 0;
            g_timeout_add(200, resume_accept, srv);
            return G_SOURCE_REMOVE;
        }
        if (c < 0) {
            if (c != -EAGAIN && c != -EINTR)
                g_warning("accept: %s", g_strerror(-c));
            break;
        }
        /* Who connected (SO_PEERCRED): its uid owns what it creates (issue 12.6). */
        struct ucred cred;
        socklen_t len = sizeof(cred);
        vp_error err = { "" };
        if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
            g_warning("accept: SO_PEERCRED: %s; connection closed", g_strerror(errno));
            close(c);
            continue;
        }
        if (srv_limit_connection(srv, cred.uid, &err) < 0) {
            SRV_LOG_PEER(&srv->conn_log, "connections", G_LOG_LEVEL_WARNING,
                         "connection from pid %d uid %u refused: %s", (int)cred.pid,
                         (unsigned)cred.uid, err.msg);
            close(c);
            continue;
        }
        srv_session_new(srv, c, cred.uid, cred.pid);
    }
    return G_SOURCE_CONTINUE;
}

/* --socket-group / --socket-mode: the access of the sockets created from now on. */
static int socket_access(const struct srv_options *o)
{
    unsigned gid = (unsigned)-1, mode = o->socket_group ? 0660 : 0600;
    if (o->socket_group) {
        struct group *g = getgrnam(o->socket_group);
        char *end = NULL;
        unsigned long n = strtoul(o->socket_group, &end, 10);
        if (g)
            gid = (unsigned)g->gr_gid;
        else if (end && !*end && end != o->socket_group)
            gid = (unsigned)n;
        else {
            fprintf(stderr, "vhost-pci-server: --socket-group: no group '%s'\n", o->socket_group);
            return -1;
        }
    }
    if (o->socket_mode) {
        char *end = NULL;
        unsigned long m = strtoul(o->socket_mode, &end, 8);
        if (!end || *end || end == o->socket_mode || m > 0777) {
            fprintf(stderr, "vhost-pci-server: --socket-mode must be octal, at most 0777\n");
            return -1;
        }
        mode = (unsigned)m;
    }
    srv_unix_set_access(mode, gid);
    return 0;
}

/* Every queued request may hold up to VP_MAX_FDS fds: use the whole fd allowance. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            g_debug("setrlimit(RLIMIT_NOFILE): %s", g_strerror(errno));
    }
}

static void shutdown_begin(struct vp_server *srv);

/* Destroy every tenant's device (the tenants go with it: no connection is left). */
static void destroy_all(struct vp_server *srv, const char *why)
{
    GList *ts = g_hash_table_get_values(srv->tenants);
    for (GList *l = ts; l; l = l->next)
        srv_tenant_destroy_device(l->data, why);
    g_list_free(ts);
}

static gboolean on_signal(gpointer data)
{
    struct vp_server *srv = data;
    if (srv->shutting_down) {
        g_message("second signal: quitting without waiting");
        g_main_loop_quit(srv->loop);
        return G_SOURCE_CONTINUE;
    }
    shutdown_begin(srv);
    return G_SOURCE_CONTINUE;
}

static gboolean shutdown_poll(gpointer data)
{
    struct vp_server *srv = data;
    static gint64 deadline;
    if (!deadline)
        deadline = g_get_monotonic_time() + (gint64)srv->timeout_ms * 1000 + 500000;
    if (srv->unplugs_outstanding == 0 || g_get_monotonic_time() > deadline) {
        if (srv->unplugs_outstanding)
            g_warning("shutdown: %u unplug(s) did not complete in time", srv->unplugs_outstanding);
        g_main_loop_quit(srv->loop);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void shutdown_begin(struct vp_server *srv)
{
    g_message("shutting down: unplugging %u device(s)", g_hash_table_size(srv->tenants));
    srv->shutting_down = true;
    if (srv->listen_src)
        g_source_remove(srv->listen_src);
    srv->listen_src = 0;
    vp_close_fd(&srv->listen_fd);
    unlink(srv->opt.listen_path);
    /* Clients first (no implicit DELs while shutting down), then devices. */
    srv_sessions_close_all(srv, "server shutting down");
    destroy_all(srv, "server shutting down");
    g_timeout_add(20, shutdown_poll, srv);
}

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    struct vp_server srv_storage, *srv = &srv_storage;
    memset(srv, 0, sizeof(*srv));
    srv->listen_fd = -1;
    srv->opt.ack_timeout_s = 10.0;

    GOptionEntry entries[] = {
        { "listen", 'l', 0, G_OPTION_ARG_FILENAME, &srv->opt.listen_path,
          "UNIX socket where vhost-pci clients connect (required)", "PATH" },
        { "device-host", 'd', 0, G_OPTION_ARG_STRING, &srv->opt.device_host,
          "How devices are realised: local (a vhost-pci-guestd on --local-bus) or qemu "
          "(QMP hot-plug into the device VM via --qmp). Default: local", "local|qemu" },
        { "local-bus", 0, 0, G_OPTION_ARG_FILENAME, &srv->opt.local_bus,
          "UNIX socket where the local host's vhost-pci-guestd connects (--device-host local)",
          "PATH" },
        { "qmp", 0, 0, G_OPTION_ARG_FILENAME, &srv->opt.qmp,
          "QMP socket of the device VM's QEMU (--device-host qemu)", "PATH" },
        { "mgmt", 'm', 0, G_OPTION_ARG_FILENAME, &srv->opt.mgmt_path,
          "Management socket: write 'status\\n', read one JSON document (vhost-pci-ctl)",
          "PATH" },
        { "log-level", 0, 0, G_OPTION_ARG_STRING, &srv->opt.log_level,
          "Least severe messages to print: error, warning, info (default) or debug", "LEVEL" },
        { "allow-unsealed", 0, 0, G_OPTION_ARG_NONE, &srv->opt.allow_unsealed,
          "Accept memfds not sealed against shrinking (e.g. plain-file memory; unsafe: a "
          "shrink would SIGBUS the device VM)", NULL },
        { "ack-timeout", 't', 0, G_OPTION_ARG_DOUBLE, &srv->opt.ack_timeout_s,
          "Seconds to wait for the device VM driver's controlq ACK (and for unplugs) before "
          "failing a request (default 10)", "SECONDS" },
        { "socket-group", 0, 0, G_OPTION_ARG_STRING, &srv->opt.socket_group,
          "Let this group use the sockets (--listen, --mgmt, --local-bus: mode 0660); by "
          "default only their owner may (0600)", "GROUP" },
        { "socket-mode", 0, 0, G_OPTION_ARG_STRING, &srv->opt.socket_mode,
          "Mode of the sockets, octal (default 0600, 0660 with --socket-group)", "MODE" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GOptionContext *ctx = g_option_context_new("- vhost-pci server for one device VM");
    g_option_context_set_summary(ctx,
        "Accepts vhost-pci clients (one per frontend device of a driver VM), creates one\n"
        "vhost-pci device per client_uuid in the device VM through the device host, and\n"
        "relays memory, feature and device information to the guest driver over the\n"
        "controlq (spec 1.5/1.6, DESIGN.md).");
    g_option_context_set_description(ctx,
        "Examples:\n"
        "  vhost-pci-server --listen /run/vp.sock --device-host local --local-bus /run/vp-bus.sock \\\n"
        "                   --mgmt /run/vp-mgmt.sock\n"
        "  vhost-pci-server --listen /run/vp.sock --device-host qemu --qmp /run/devvm-qmp.sock\n"
        "SIGINT/SIGTERM: unplug every device (bounded by --ack-timeout), remove the sockets, exit.\n");
    g_option_context_add_main_entries(ctx, entries, NULL);
    static struct srv_limits limits;
    srv->limits = &limits;
    srv_limits_init(srv->limits);
    g_option_context_add_group(ctx, srv_limits_option_group(srv->limits));
    GError *gerr = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &gerr)) {
        fprintf(stderr, "vhost-pci-server: %s (see --help)\n", gerr->message);
        return 2;
    }
    g_option_context_free(ctx);
    /* Defaults after parsing: GOption does not free a preset string it replaces. */
    if (!srv->opt.device_host)
        srv->opt.device_host = g_strdup("local");
    if (!srv->opt.log_level)
        srv->opt.log_level = g_strdup("info");

    if (vp_log_set_level(srv->opt.log_level) < 0) {
        fprintf(stderr, "vhost-pci-server: --log-level must be error, warning, info or debug\n");
        return 2;
    }
    vp_log_install();
    if (!srv->opt.listen_path) {
        fprintf(stderr, "vhost-pci-server: --listen PATH is required (see --help)\n");
        return 2;
    }
    if (!(srv->opt.ack_timeout_s > 0 && srv->opt.ack_timeout_s <= 3600)) {
        fprintf(stderr, "vhost-pci-server: --ack-timeout must be in (0, 3600] seconds\n");
        return 2;
    }
    srv->timeout_ms = (unsigned)(srv->opt.ack_timeout_s * 1000.0 + 0.5);
    if (srv->timeout_ms == 0)
        srv->timeout_ms = 1;
    srv->validate_flags = srv->opt.allow_unsealed ? VP_VALIDATE_ALLOW_UNSEALED : 0;
    if (socket_access(&srv->opt) < 0)
        return 2;

    bool known = false;
    for (size_t i = 0; i < G_N_ELEMENTS(hosts); i++) {
        if (strcmp(hosts[i].name, srv->opt.device_host) == 0) {
            known = true;
            srv->host_ops = hosts[i].ops;
        }
    }
    if (!known) {
        fprintf(stderr, "vhost-pci-server: unknown --device-host '%s' (local or qemu)\n",
                srv->opt.device_host);
        return 2;
    }
    if (!srv->host_ops) {
        fprintf(stderr, "vhost-pci-server: %s device host not built yet\n", srv->opt.device_host);
        return 2;
    }
    if (strcmp(srv->opt.device_host, "qemu") == 0 && !srv->opt.qmp) {
        fprintf(stderr, "vhost-pci-server: --device-host qemu needs --qmp PATH\n");
        return 2;
    }
    if (strcmp(srv->opt.device_host, "local") == 0 && !srv->opt.local_bus) {
        fprintf(stderr, "vhost-pci-server: --device-host local needs --local-bus PATH\n");
        return 2;
    }
    {
        const struct vp_devhost_ops *o = srv->host_ops;
        unsigned step = o->devfn_step ? o->devfn_step : 1;
        unsigned functions = (MIN(o->devfn_last, 255u) - o->devfn_first) / step + 1;
        vp_error lerr = { "" };
        if (srv_limits_finish(srv->limits, functions, &lerr) < 0) {
            fprintf(stderr, "vhost-pci-server: %s\n", lerr.msg);
            return 2;
        }
    }

    raise_fd_limit();
    srv->loop = g_main_loop_new(NULL, FALSE);
    srv_sessions_init(srv);
    srv->tenants = g_hash_table_new(g_str_hash, g_str_equal);
    srv->uids = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    int rc = 1;
    vp_error err = { "" };
    struct vp_devhost_config hc = { .local_bus = srv->opt.local_bus, .qmp = srv->opt.qmp,
                                    .timeout_ms = srv->timeout_ms };
    srv->host = srv->host_ops->create(&hc, &err);
    if (!srv->host) {
        fprintf(stderr, "vhost-pci-server: device host %s: %s\n", srv->host_ops->name, err.msg);
        goto out;
    }
    srv->listen_fd = srv_unix_listen(srv->opt.listen_path, &err);
    if (srv->listen_fd < 0) {
        fprintf(stderr, "vhost-pci-server: %s\n", err.msg);
        goto out;
    }
    srv->listen_src = g_unix_fd_add(srv->listen_fd, G_IO_IN, on_accept, srv);
    if (srv->opt.mgmt_path) {
        srv->mgmt = srv_mgmt_new(srv, srv->opt.mgmt_path, &err);
        if (!srv->mgmt) {
            fprintf(stderr, "vhost-pci-server: --mgmt: %s\n", err.msg);
            goto out;
        }
    }
    g_unix_signal_add(SIGINT, on_signal, srv);
    g_unix_signal_add(SIGTERM, on_signal, srv);
    g_message("listening on %s (device host %s, ack timeout %g s%s)", srv->opt.listen_path,
              srv->host_ops->name, srv->opt.ack_timeout_s,
              srv->opt.allow_unsealed ? ", unsealed memory allowed" : "");

    g_main_loop_run(srv->loop);
    rc = 0;
    g_message("stopped");

out:
    srv->shutting_down = true;
    if (srv->listen_src)
        g_source_remove(srv->listen_src);
    if (srv->listen_fd >= 0) {
        vp_close_fd(&srv->listen_fd);
        unlink(srv->opt.listen_path);
    }
    srv_mgmt_free(srv->mgmt);
    srv_sessions_free(srv);
    /* Devices left (shutdown not begun, e.g. a second signal) are destroyed now. */
    destroy_all(srv, "server exiting");
    if (srv->host)
        srv->host_ops->destroy(srv->host);
    g_hash_table_destroy(srv->tenants);
    g_hash_table_destroy(srv->uids);
    if (srv->loop)
        g_main_loop_unref(srv->loop);
    g_free(srv->opt.listen_path);
    g_free(srv->opt.device_host);
    g_free(srv->opt.local_bus);
    g_free(srv->opt.qmp);
    g_free(srv->opt.mgmt_path);
    g_free(srv->opt.log_level);
    g_free(srv->opt.socket_group);
    g_free(srv->opt.socket_mode);
    return rc;
}
