/*
 * test-devfn.c - the server's devfn allocator (server/devfn.c) and the device host's
 * devfn_held (server/devhost.h): a devfn the host still has a function at (qemu: a
 * zombie an unplug or a killed earlier server left, whose DEVICE_DELETED has not come)
 * is skipped until the host has seen it go. Without it the server placed a new device
 * there and the client got ADD_FAIL ("PCI: slot 8 function 0 not available").
 */
#include <errno.h>
#include <glib.h>
#include <string.h>

#include "../../server/devfn.h"
#include "../../server/server.h"
#include "testutil.h"

/* A fake host: slots 8..10 (devfn step 8), @held[devfn] as the host's zombies. */
static bool held[256];
static unsigned held_calls;

static bool fake_devfn_held(struct vp_devhost *h, uint32_t devfn)
{
    g_assert_true(h == (struct vp_devhost *)held);  /* the server's host handle */
    held_calls++;
    return devfn < 256 && held[devfn];
}

static const struct vp_devhost_ops fake_ops = {
    .name = "fake", .devfn_first = 0x40, .devfn_last = 0x50, .devfn_step = 8,
    .devfn_held = fake_devfn_held,
};

static struct vp_server *srv_new(const struct vp_devhost_ops *ops)
{
    struct vp_server *srv = g_new0(struct vp_server, 1);
    srv->host_ops = ops;
    srv->host = (struct vp_devhost *)held;
    memset(held, 0, sizeof(held));
    held_calls = 0;
    return srv;
}

/* A held devfn is skipped; once the host lets go of it, it is handed out again. */
static void test_skips_held(void)
{
    struct vp_server *srv = srv_new(&fake_ops);

    held[0x40] = true;                              /* a zombie in slot 8 */
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x48);
    g_assert_cmpuint(held_calls, >, 0);
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x50);
    g_assert_cmpint(srv_devfn_alloc(srv), ==, -ENOSPC);  /* 0x40 still held */
    held[0x40] = false;                             /* its DEVICE_DELETED came */
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x40);
    srv_devfn_free(srv, 0x48);
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x48);
    g_free(srv);
}

/* Every devfn held: -ENOSPC, nothing marked busy (all usable once released). */
static void test_all_held(void)
{
    struct vp_server *srv = srv_new(&fake_ops);

    held[0x40] = held[0x48] = held[0x50] = true;
    g_assert_cmpint(srv_devfn_alloc(srv), ==, -ENOSPC);
    memset(held, 0, sizeof(held));
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x40);
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x48);
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x50);
    g_free(srv);
}

/* A host without devfn_held (local): only the server's own bookkeeping counts. */
static void test_no_devfn_held(void)
{
    struct vp_devhost_ops ops = fake_ops;
    struct vp_server *srv;

    ops.devfn_held = NULL;
    srv = srv_new(&ops);
    held[0x40] = true;                              /* not asked */
    g_assert_cmpint(srv_devfn_alloc(srv), ==, 0x40);
    g_assert_cmpuint(held_calls, ==, 0);
    g_free(srv);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/devfn/skips-held", test_skips_held);
    g_test_add_func("/devfn/all-held", test_all_held);
    g_test_add_func("/devfn/no-devfn-held", test_no_devfn_held);
    return g_test_run();
}
