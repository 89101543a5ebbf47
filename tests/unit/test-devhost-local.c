/*
 * test-devhost-local.c - the `local` device host (server/devhost_local.c) without a
 * guestd: what it does with the fds it is handed when a plug cannot be completed.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../server/devhost.h"
#include "vp_ctrlarea.h"
#include "vp_localbus.h"
#include "../testutil.h"

#define WAIT_MS 3000

struct outcome {
    gboolean done;
    int ret;
    char reason[256];
};

static void on_done(void *opaque, int ret, const char *reason)
{
    struct outcome *o = opaque;
    o->done = TRUE;
    o->ret = ret;
    g_strlcpy(o->reason, reason ? reason : "", sizeof(o->reason));
}

/* A control function whose second eventfd cannot be duplicated (an fd number that is
 * not open): the plug fails with a reason, the host keeps none of the fds, and it
 * closes nothing it does not own (fd 0 here stands for any fd of the process). */
static void test_plug_control_bad_fd(void)
{
    g_autofree char *dir = g_dir_make_tmp("vp-lbhost-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "bus.sock", NULL);
    /* Put a known, open file on fd 0 (restored at the end). */
    int old0 = fcntl(0, F_DUPFD_CLOEXEC, 3);
    int marker = eventfd(0, EFD_CLOEXEC);
    g_assert_cmpint(marker, >=, 0);
    g_assert_cmpint(dup2(marker, 0), ==, 0);
    vp_close_fd(&marker);

    vp_error err = { "" };
    struct vp_devhost_config cfg = { .local_bus = path, .timeout_ms = 1000 };
    struct vp_devhost *h = vp_devhost_local_ops.create(&cfg, &err);
    g_assert_nonnull(h);
    int before = vp_count_open_fds();

    int ca = vp_test_memfd("ca", VP_CA_SIZE, TRUE);
    int kick = eventfd(0, EFD_CLOEXEC);
    int closed = 1 << 20;  /* a number that is not open (nor opened by the host) */
    g_assert_cmpint(fcntl(closed, F_GETFD), ==, -1);
    struct vp_devhost_control ctl = {
        .devfn = 3, .ctrl_fd = ca, .ctrl_size = VP_CA_SIZE,
        .rx_kick_fd = kick, .tx_kick_fd = closed, .irq_fd = kick, .nvectors = 8,
    };
    struct outcome o = { FALSE, 0, "" };
    vp_devhost_local_ops.plug_control(h, &ctl, on_done, &o);
    g_assert_false(o.done);  /* never before the call returned (devhost.h) */
    VP_SPIN_UNTIL(o.done, WAIT_MS);
    g_assert_true(o.done);
    g_assert_cmpint(o.ret, <, 0);
    g_assert_nonnull(strstr(o.reason, "dup: "));
    g_assert_cmpint(fcntl(0, F_GETFD), >=, 0);  /* fd 0 was not closed */
    vp_close_fd(&ca);
    vp_close_fd(&kick);
    vp_assert_fds(before);

    vp_devhost_local_ops.destroy(h);
    g_rmdir(dir);
    if (old0 >= 0) {
        g_assert_cmpint(dup2(old0, 0), ==, 0);
        vp_close_fd(&old0);
    } else {
        close(0);
    }
}

/* A guestd that connects and then never reads: once the socket buffer is full the
 * host must not block the server for ever on the next message; it gives up on that
 * guestd (disconnect, the registry stays for the next one). The process is killed by
 * SIGALRM (a failure) if a send blocks without a bound. */
static void test_guestd_not_reading(void)
{
    g_autofree char *dir = g_dir_make_tmp("vp-lbhost-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "bus.sock", NULL);
    vp_error err = { "" };
    struct vp_devhost_config cfg = { .local_bus = path, .timeout_ms = 1000 };
    int before = vp_count_open_fds();
    struct vp_devhost *h = vp_devhost_local_ops.create(&cfg, &err);
    g_assert_nonnull(h);

    /* A control function in the registry, replayed when the guestd connects. */
    int efd = eventfd(0, EFD_CLOEXEC);
    int ca = vp_test_memfd("ca", VP_CA_SIZE, TRUE);
    struct vp_devhost_control ctl = {
        .devfn = 3, .ctrl_fd = ca, .ctrl_size = VP_CA_SIZE,
        .rx_kick_fd = efd, .tx_kick_fd = efd, .irq_fd = efd, .nvectors = 8,
    };
    struct outcome o = { FALSE, 0, "" };
    vp_devhost_local_ops.plug_control(h, &ctl, on_done, &o);
    VP_SPIN_UNTIL(o.done, WAIT_MS);
    g_assert_true(o.done);
    g_assert_cmpint(o.ret, ==, 0);

    int gd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    g_assert_cmpint(connect(gd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    struct pollfd p = { .fd = gd, .events = POLLIN };
    VP_SPIN_UNTIL(poll(&p, 1, 0) == 1, WAIT_MS);  /* accepted: the replay arrives */
    struct vp_lb_msg m;
    int fds[4];
    unsigned n = 0;
    g_assert_cmpint(vp_lb_recv(gd, &m, fds, 4, &n, &err), ==, 0);
    g_assert_cmpuint(m.type, ==, VP_LB_PLUG_CONTROL);
    vp_close_fds(fds, n);

    /* From now on the guestd reads nothing: 1000 fd-less messages, far more than a
     * socket buffer holds. */
    g_test_expect_message("vp-server", G_LOG_LEVEL_WARNING,
                          "local bus: vhost-pci-guestd disconnected (send failed: *)");
    alarm(30);
    for (unsigned i = 0; i < 1000; i++)
        g_assert_cmpint(vp_devhost_local_ops.set_peer_vectors(h, 3, VP_ID_DRIVER_VM, NULL, 0,
                                                               &err), ==, 0);
    alarm(0);
    g_test_assert_expected_messages();

    /* What did get through is followed by EOF: the host closed the connection. */
    unsigned got = 0;
    for (;;) {
        p.revents = 0;
        g_assert_cmpint(poll(&p, 1, WAIT_MS), ==, 1);
        int r = vp_lb_recv(gd, &m, fds, 4, &n, &err);
        if (r == -ECONNRESET)
            break;
        g_assert_cmpint(r, ==, 0);
        g_assert_cmpuint(m.type, ==, VP_LB_PEER_VECTORS);
        got++;
    }
    g_assert_cmpuint(got, <, 1000);
    vp_close_fd(&gd);
    vp_close_fd(&ca);
    vp_close_fd(&efd);
    vp_devhost_local_ops.destroy(h);
    vp_assert_fds(before);
    g_rmdir(dir);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/devhost-local/plug-control-bad-fd", test_plug_control_bad_fd);
    g_test_add_func("/devhost-local/guestd-not-reading", test_guestd_not_reading);
    return g_test_run();
}
