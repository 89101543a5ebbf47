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

/* A local host on a fresh bus socket with control function 3 in its registry
 * (replayed when a guestd connects). */
struct fixture {
    char *dir, *path;
    struct vp_devhost *h;
    int efd, ca, before;
};

static void fixture_start(struct fixture *f)
{
    f->dir = g_dir_make_tmp("vp-lbhost-XXXXXX", NULL);
    f->path = g_build_filename(f->dir, "bus.sock", NULL);
    vp_error err = { "" };
    struct vp_devhost_config cfg = { .local_bus = f->path, .timeout_ms = 1000 };
    f->before = vp_count_open_fds();
    f->h = vp_devhost_local_ops.create(&cfg, &err);
    g_assert_nonnull(f->h);
    f->efd = eventfd(0, EFD_CLOEXEC);
    f->ca = vp_test_memfd("ca", VP_CA_SIZE, TRUE);
    struct vp_devhost_control ctl = {
        .devfn = 3, .ctrl_fd = f->ca, .ctrl_size = VP_CA_SIZE,
        .rx_kick_fd = f->efd, .tx_kick_fd = f->efd, .irq_fd = f->efd, .nvectors = 8,
    };
    struct outcome o = { FALSE, 0, "" };
    vp_devhost_local_ops.plug_control(f->h, &ctl, on_done, &o);
    VP_SPIN_UNTIL(o.done, WAIT_MS);
    g_assert_true(o.done);
    g_assert_cmpint(o.ret, ==, 0);
}

/* Destroy the host: it leaves no fd open. */
static void fixture_stop(struct fixture *f)
{
    vp_close_fd(&f->ca);
    vp_close_fd(&f->efd);
    vp_devhost_local_ops.destroy(f->h);
    vp_assert_fds(f->before);
    g_rmdir(f->dir);
    g_free(f->dir);
    g_free(f->path);
}

static int bus_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    g_assert_cmpint(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    return fd;
}

static gboolean readable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) == 1;
}

/* The next message on @fd (within WAIT_MS; its fds closed): its type, or -errno. */
static int next_type(int fd)
{
    VP_SPIN_UNTIL(readable(fd), WAIT_MS);
    g_assert_true(readable(fd));
    struct vp_lb_msg m;
    int fds[4];
    unsigned n = 0;
    vp_error err = { "" };
    int r = vp_lb_recv(fd, &m, fds, 4, &n, &err);
    vp_close_fds(fds, n);
    return r < 0 ? r : (int)m.type;
}

/* A guestd that connects and then never reads: once the socket buffer is full the
 * host must not block the server for ever on the next message; it gives up on that
 * guestd (disconnect, the registry stays for the next one). The process is killed by
 * SIGALRM (a failure) if a send blocks without a bound. */
static void test_guestd_not_reading(void)
{
    struct fixture f;
    fixture_start(&f);
    int gd = bus_connect(f.path);
    g_assert_cmpint(next_type(gd), ==, VP_LB_PLUG_CONTROL);  /* accepted: the replay */

    /* From now on the guestd reads nothing: 1000 fd-less messages, far more than a
     * socket buffer holds. */
    g_test_expect_message("vp-server", G_LOG_LEVEL_WARNING,
                          "local bus: vhost-pci-guestd disconnected (send failed: *)");
    alarm(30);
    vp_error err = { "" };
    for (unsigned i = 0; i < 1000; i++)
        g_assert_cmpint(vp_devhost_local_ops.set_peer_vectors(f.h, 3, VP_ID_DRIVER_VM, NULL,
                                                               0, &err), ==, 0);
    alarm(0);
    g_test_assert_expected_messages();

    /* What did get through is followed by EOF: the host closed the connection. */
    unsigned got = 0;
    int t;
    while ((t = next_type(gd)) != -ECONNRESET) {
        g_assert_cmpint(t, ==, VP_LB_PEER_VECTORS);
        got++;
    }
    g_assert_cmpuint(got, <, 1000);
    vp_close_fd(&gd);
    fixture_stop(&f);
}

/* A restarted guestd can connect before its predecessor's EOF reaches the host (a
 * relay on the bus, or scheduling): the newcomer waits for the old connection to go
 * and then gets the replay (it used to be refused at once, leaving no guestd). A
 * second guestd next to one that stays is refused after LB_TAKEOVER_MS. */
static void test_successor_before_eof(void)
{
    struct fixture f;
    fixture_start(&f);
    int g1 = bus_connect(f.path);
    g_assert_cmpint(next_type(g1), ==, VP_LB_PLUG_CONTROL);
    int g2 = bus_connect(f.path);  /* the successor, while g1 is still connected */
    VP_SPIN_UNTIL(FALSE, 200);
    g_assert_false(readable(g2));  /* waiting, not refused (no EOF) nor served */
    g_test_expect_message("vp-server", G_LOG_LEVEL_WARNING,
                          "local bus: vhost-pci-guestd disconnected (EOF)");
    vp_close_fd(&g1);
    g_assert_cmpint(next_type(g2), ==, VP_LB_PLUG_CONTROL);
    g_test_assert_expected_messages();

    /* A third one while g2 stays: refused after the takeover wait. */
    int g3 = bus_connect(f.path);
    VP_SPIN_UNTIL(FALSE, 100);  /* accepted: it waits */
    g_test_expect_message("vp-server", G_LOG_LEVEL_WARNING,
                          "local bus: a second vhost-pci-guestd connected while one is "
                          "running; refusing it");
    g_assert_cmpint(next_type(g3), ==, -ECONNRESET);
    g_test_assert_expected_messages();
    g_assert_false(readable(g2));  /* g2 is still the one */
    vp_close_fd(&g3);

    g_test_expect_message("vp-server", G_LOG_LEVEL_WARNING,
                          "local bus: vhost-pci-guestd disconnected (EOF)");
    vp_close_fd(&g2);
    VP_SPIN_UNTIL(FALSE, 100);
    g_test_assert_expected_messages();
    fixture_stop(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/devhost-local/plug-control-bad-fd", test_plug_control_bad_fd);
    g_test_add_func("/devhost-local/guestd-not-reading", test_guestd_not_reading);
    g_test_add_func("/devhost-local/successor-before-eof", test_successor_before_eof);
    return g_test_run();
}
