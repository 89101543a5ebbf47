/*
 * test-devhost-local.c - the `local` device host (server/devhost_local.c) without a
 * guestd: what it does with the fds it is handed when a plug cannot be completed.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "../../server/devhost.h"
#include "vp_ctrlarea.h"
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

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/devhost-local/plug-control-bad-fd", test_plug_control_bad_fd);
    return g_test_run();
}
