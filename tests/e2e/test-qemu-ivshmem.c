/*
 * test-qemu-ivshmem.c - the building blocks of the qemu device host against a real
 * QEMU (7.2 or 10.0; DESIGN sections 3 and 7): server/qmp.c drives QEMU over QMP, and
 * server/ivshmem_endpoint.c serves the ivshmem-doorbell's chardev.
 *
 *   /qemu-ivshmem/paused   QEMU started with -S (no guest code runs: hot-plug while
 *                          the firmware boots has crashed QEMU, DESIGN section 3):
 *                          add-fd + object-add memory-backend-file + device_add
 *                          ivshmem-plain; chardev-add (server:false) to our endpoint +
 *                          device_add ivshmem-doorbell; QMP errors carry QEMU's text;
 *                          QEMU really mapped both memfds; QMP query-pci shows both
 *                          functions with their BAR sizes (never HMP text: 10.0 prints
 *                          an unmapped BAR without its size); peer re-announce; EOF.
 *   /qemu-ivshmem/guest    the same into a booted guest (build/guest from
 *                          tools/mkguest; skipped when absent): the guest sees both
 *                          functions in sysfs and reads the window's bytes, its
 *                          Doorbell writes fire our eventfds, device_del completes with
 *                          DEVICE_DELETED, then object-del / chardev-remove / remove-fd.
 *   /qemu-ivshmem/devhost  server/devhost_qemu.c (vp_devhost_qemu_ops) doing all of
 *                          that for the server, into a booted guest: plug, QMP errors
 *                          as failure reasons with the plug taken back, refused sizes,
 *                          peer vectors, doorbells, unplug, destroy; a new host
 *                          removes what a destroyed (killed) one left plugged; one
 *                          it cannot remove (VM stopped: no eject) is a held devfn
 *                          until its DEVICE_DELETED.
 *
 * Environment: VP_GUEST_DIR (default $VP_B/guest, VP_B defaulting to build: the make
 * build dir, exported by tests/e2e/module.mk), VP_GUEST_BOOT_S (default 300),
 * QEMU: the QEMU selector (7.2, 10.0 or a path; resolved by tools/qemu-select, default
 * the system's). Always TCG (KVM hangs on these machines).
 * A QEMU started here dies with the test (PR_SET_PDEATHSIG).
 *
 * Never sent on purpose: a memory-backend whose size is not a power of two behind an
 * ivshmem device - QEMU 7.2 aborts the whole VM on it (pci_register_bar assertion).
 */
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../server/devhost.h"
#include "../../server/ivshmem_endpoint.h"
#include "../../server/qmp.h"
#include "vp_ctrlarea.h"
#include "../testutil.h"

#define QMP_MS 20000
#define CTL_VECTORS 4   /* room for appended vectors (never replaced: see the endpoint) */

typedef struct vm {
    char *dir, *qmp_path, *log_path, *agent_path, *ep_path;
    char *qmp2_path;    /* a second QMP monitor, for the device host under test (a
                           QMP socket serves one client at a time) */
    GPid pid;
    gboolean exited;
    int status;
    qmp_client *c;
} vm;

/* ---- QEMU process ----------------------------------------------------------- */

static void child_setup(gpointer data)
{
    (void)data;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static void on_child_exit(GPid pid, gint status, gpointer data)
{
    vm *v = data;
    (void)pid;
    v->exited = TRUE;
    v->status = status;
}

static const char *guest_dir(void)
{
    static char *dir;
    const char *d = g_getenv("VP_GUEST_DIR");

    if (d)
        return d;
    if (!dir) {
        const char *b = g_getenv("VP_B");
        dir = g_build_filename(b && *b ? b : "build", "guest", NULL);
    }
    return dir;
}

/* The PVH-bootable vmlinux boots faster under TCG; vmlinuz otherwise. */
static char *guest_kernel(void)
{
    char *k = g_build_filename(guest_dir(), "vmlinux", NULL);

    if (g_file_test(k, G_FILE_TEST_EXISTS))
        return k;
    g_free(k);
    return g_build_filename(guest_dir(), "vmlinuz", NULL);
}

static gboolean have_guest(void)
{
    g_autofree char *k = g_build_filename(guest_dir(), "vmlinuz", NULL);
    g_autofree char *i = g_build_filename(guest_dir(), "initramfs.cpio.gz", NULL);
    return g_file_test(k, G_FILE_TEST_EXISTS) && g_file_test(i, G_FILE_TEST_EXISTS);
}

/* The QEMU binary chosen by $QEMU, through tools/qemu-select (run from the top of
 * the tree, as tests/run does). */
static const char *qemu_binary(void)
{
    static char *path;
    const char *argv[] = { "tools/qemu-select", NULL };
    g_autoptr(GError) gerr = NULL;
    g_autofree char *errout = NULL;
    int status = -1;

    if (path)
        return path;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &path,
                      &errout, &status, &gerr))
        g_error("tools/qemu-select: %s", gerr->message);
    if (!g_spawn_check_wait_status(status, NULL) || !path || !*path)
        g_error("tools/qemu-select found no QEMU: %s", errout ? errout : "");
    g_strstrip(path);
    g_test_message("QEMU binary: %s", path);
    return path;
}

static void vm_start(vm *v, gboolean guest)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GError) gerr = NULL;
    const char *qemu = qemu_binary();
    vp_error err = { { 0 } };
    gint64 deadline;
    int logfd, ret;

    memset(v, 0, sizeof(*v));
    v->dir = g_dir_make_tmp("vp-e2e-ivshmem-XXXXXX", NULL);
    v->qmp_path = g_build_filename(v->dir, "qmp.sock", NULL);
    v->log_path = g_build_filename(v->dir, "console.log", NULL);
    v->agent_path = g_build_filename(v->dir, "agent.sock", NULL);
    v->ep_path = g_build_filename(v->dir, "ctl0.sock", NULL);
    v->qmp2_path = g_build_filename(v->dir, "qmp-host.sock", NULL);

    g_ptr_array_add(argv, g_strdup(qemu));
#define ARG(...) g_ptr_array_add(argv, g_strdup_printf(__VA_ARGS__))
    ARG("-machine"); ARG("pc");
    ARG("-accel"); ARG("tcg");
    ARG("-nographic"); ARG("-nodefaults");
    ARG("-m"); ARG("256M");
    ARG("-qmp"); ARG("unix:%s,server=on,wait=off", v->qmp_path);
    ARG("-qmp"); ARG("unix:%s,server=on,wait=off", v->qmp2_path);
    ARG("-serial"); ARG("file:%s", v->log_path);
    if (guest) {
        g_ptr_array_add(argv, g_strdup("-kernel"));
        g_ptr_array_add(argv, guest_kernel());
        ARG("-initrd"); ARG("%s/initramfs.cpio.gz", guest_dir());
        ARG("-append"); ARG("console=ttyS0 quiet panic=-1 vp.role=none");
        ARG("-chardev"); ARG("socket,id=agent,path=%s,server=on,wait=off", v->agent_path);
        ARG("-serial"); ARG("chardev:agent");
        ARG("-no-reboot");
    } else {
        ARG("-S");
    }
#undef ARG
    g_ptr_array_add(argv, NULL);

    logfd = open(v->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    g_assert_cmpint(logfd, >=, 0);
    {
        g_autofree char *cmd = g_strjoinv(" ", (char **)argv->pdata);
        g_test_message("starting: %s", cmd);
    }
    if (!g_spawn_async_with_fds(NULL, (char **)argv->pdata, NULL,
                                G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
                                child_setup, NULL, &v->pid, -1, logfd, logfd, &gerr))
        g_error("cannot start %s: %s", qemu, gerr->message);
    vp_close_fd(&logfd);
    g_child_watch_add(v->pid, on_child_exit, v);

    /* The QMP socket appears during QEMU's start-up: bounded retries. */
    deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    for (;;) {
        v->c = qmp_client_new(NULL);
        ret = qmp_client_connect_sync(v->c, v->qmp_path, 10000, &err);
        if (ret == 0)
            break;
        qmp_client_free(v->c);
        v->c = NULL;
        g_assert_false(v->exited);
        if ((ret != -ENOENT && ret != -ECONNREFUSED) || g_get_monotonic_time() > deadline)
            g_error("QMP connect: %s", err.msg);
        g_usleep(50 * 1000);
    }
}

static void vm_stop(vm *v)
{
    vp_error err;

    if (v->c && !v->exited)
        qmp_client_execute_sync(v->c, "quit", NULL, -1, 5000, NULL, NULL, &err);
    VP_SPIN_UNTIL(v->exited, 10000);
    if (!v->exited) {
        kill(v->pid, SIGKILL);
        VP_SPIN_UNTIL(v->exited, 5000);
    }
    g_assert_true(v->exited);
    g_spawn_close_pid(v->pid);
    qmp_client_free(v->c);
    g_unlink(v->qmp_path);
    g_unlink(v->ep_path);       /* an endpoint still alive unlinks it again, harmlessly */
    g_unlink(v->qmp2_path);
    g_free(v->qmp2_path);
    g_unlink(v->agent_path);
    {
        g_autofree char *lock = g_strconcat(v->agent_path, ".lock", NULL);
        g_unlink(lock);
    }
    g_unlink(v->log_path);
    g_rmdir(v->dir);
    g_free(v->dir);
    g_free(v->qmp_path);
    g_free(v->log_path);
    g_free(v->agent_path);
    g_free(v->ep_path);
}

/* Run one QMP command whose arguments are given as JSON text; returns the outcome. */
static int qmp(vm *v, const char *cmd, const char *args_json, int fd, int64_t *qemu_fd,
               char **ret_text, vp_error *err)
{
    JsonObject *args = NULL;
    JsonNode *ret = NULL;
    int r;

    if (args_json) {
        g_autoptr(JsonNode) n = json_from_string(args_json, NULL);
        g_assert_nonnull(n);
        args = json_object_ref(json_node_get_object(n));
    }
    r = qmp_client_execute_sync(v->c, cmd, args, fd, QMP_MS, &ret, qemu_fd, err);
    if (ret_text)
        *ret_text = ret ? json_to_string(ret, FALSE) : NULL;
    if (ret)
        json_node_unref(ret);
    g_test_message("QMP %s %s%s -> %s", cmd, args_json ? args_json : "",
                   fd >= 0 ? " (+fd)" : "", r == 0 ? "ok" : err->msg);
    return r;
}

#define QMP_OK(v, cmd, args) do {                                              \
        vp_error e_ = { { 0 } };                                               \
        int r_ = qmp(v, cmd, args, -1, NULL, NULL, &e_);                       \
        if (r_ != 0)                                                           \
            g_error("QMP %s failed: %s", cmd, e_.msg);                          \
    } while (0)

/* The size of BAR @bar of the PCI function whose qdev id is @id, from QMP
 * query-pci; 0 when there is no such function or BAR. */
static guint64 qmp_pci_bar_size(vm *v, const char *id, int bar)
{
    vp_error err = { { 0 } };
    g_autofree char *text = NULL;
    g_autoptr(JsonNode) root = NULL;
    JsonArray *buses, *devs, *regions;
    guint i, j, k;

    g_assert_cmpint(qmp(v, "query-pci", NULL, -1, NULL, &text, &err), ==, 0);
    root = json_from_string(text, NULL);
    g_assert_nonnull(root);
    buses = json_node_get_array(root);
    for (i = 0; i < json_array_get_length(buses); i++) {
        devs = json_object_get_array_member(json_array_get_object_element(buses, i), "devices");
        for (j = 0; devs && j < json_array_get_length(devs); j++) {
            JsonObject *d = json_array_get_object_element(devs, j);
            if (g_strcmp0(json_object_get_string_member_with_default(d, "qdev_id", ""), id))
                continue;
            regions = json_object_get_array_member(d, "regions");
            for (k = 0; regions && k < json_array_get_length(regions); k++) {
                JsonObject *r = json_array_get_object_element(regions, k);
                if (json_object_get_int_member(r, "bar") == bar)
                    return (guint64)json_object_get_int_member(r, "size");
            }
        }
    }
    return 0;
}

/* How many mappings of QEMU show memfd @name (QEMU mmapped the fd we passed). */
static int qemu_maps(vm *v, const char *name)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/maps", (int)v->pid);
    g_autofree char *text = NULL;
    g_autofree char *needle = g_strdup_printf("/memfd:%s ", name);
    const char *p;
    int n = 0;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return -1;
    for (p = text; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

/* ---- the pieces of a vhost-pci device --------------------------------------- */

typedef struct parts {
    int win;            /* window memfd (2 MiB) */
    int64_t win_qemu_fd, win_fdset;
    int ctl;            /* control area memfd (1 MiB) */
    int kick[2];        /* peer 0: receiveq, transmitq kick */
    int irq;            /* the device VM's own vector 0: never given to QEMU (below) */
    int call[2];        /* peer 2 */
    ivshmem_endpoint *ep;
    int ups, downs;
} parts;

static void on_ep_state(ivshmem_endpoint *ep, gboolean up, void *opaque)
{
    parts *p = opaque;
    (void)ep;
    if (up)
        p->ups++;
    else
        p->downs++;
}

static int memfd_named(const char *name, gsize size, const char *marker)
{
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, (off_t)size), ==, 0);
    g_assert_cmpint(pwrite(fd, marker, strlen(marker), 0), ==, (gssize)strlen(marker));
    g_assert_cmpint(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), ==, 0);
    return fd;
}

static void parts_make(parts *p, vm *v)
{
    vp_error err = { { 0 } };
    unsigned i;

    memset(p, 0, sizeof(*p));
    p->win = memfd_named("vp-e2e-win0", 2u << 20, "VPWIN0");
    p->ctl = memfd_named("vp-e2e-ctl0", 1u << 20, "VHOSTPCI");
    for (i = 0; i < 2; i++) {
        p->kick[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        p->call[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    p->irq = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* Listening before QEMU is ever told about it (chardev-add). */
    p->ep = ivshmem_endpoint_new(NULL, v->ep_path, p->ctl, 1, &err);
    g_assert_nonnull(p->ep);
    ivshmem_endpoint_set_state_handler(p->ep, on_ep_state, p);
    g_assert_cmpint(ivshmem_endpoint_set_peer(p->ep, 0, p->kick, 2, &err), ==, 0);
    /* No eventfd for peer 1 (the device VM's own id), as in server/devhost_qemu.c:
     * ivshmem leaves the fd handler of an own-vector eventfd behind when the device is
     * unplugged, and QEMU crashes once that fd number is reused (test_devhost). */
    g_assert_cmpint(ivshmem_endpoint_set_peer(p->ep, 2, p->call, 2, &err), ==, 0);
}

static void parts_free(parts *p)
{
    ivshmem_endpoint_free(p->ep);
    vp_close_fd(&p->win);
    vp_close_fd(&p->ctl);
    vp_close_fds(p->kick, 2);
    vp_close_fds(p->call, 2);
    vp_close_fd(&p->irq);
}

/* Window: add-fd, object-add memory-backend-file on /proc/self/fd/N, ivshmem-plain. */
static void plug_window(vm *v, parts *p, const char *addr)
{
    vp_error err = { { 0 } };
    g_autofree char *ret = NULL;
    g_autofree char *obj = NULL;
    g_autofree char *dev = NULL;

    g_assert_cmpint(qmp(v, "add-fd", "{\"opaque\": \"vp-e2e win0\"}", p->win, &p->win_qemu_fd,
                        &ret, &err), ==, 0);
    g_assert_cmpint(p->win_qemu_fd, >=, 0);
    {
        g_autoptr(JsonNode) n = json_from_string(ret, NULL);
        p->win_fdset = json_object_get_int_member(json_node_get_object(n), "fdset-id");
    }
    obj = g_strdup_printf("{\"qom-type\": \"memory-backend-file\", \"id\": \"mem-win0\", "
                          "\"mem-path\": \"/proc/self/fd/%" G_GINT64_FORMAT "\", "
                          "\"size\": %u, \"share\": true}", p->win_qemu_fd, 2u << 20);
    QMP_OK(v, "object-add", obj);
    dev = g_strdup_printf("{\"driver\": \"ivshmem-plain\", \"id\": \"win0\", "
                          "\"memdev\": \"mem-win0\", \"addr\": \"%s\"}", addr);
    QMP_OK(v, "device_add", dev);
}

/* Control function: chardev-add (client, server:false) to our endpoint, then
 * ivshmem-doorbell with vectors covering every peer's list. */
static void plug_control(vm *v, parts *p, const char *addr)
{
    g_autofree char *chr = g_strdup_printf(
        "{\"id\": \"chr-ctl0\", \"backend\": {\"type\": \"socket\", \"data\": {"
        "\"addr\": {\"type\": \"unix\", \"data\": {\"path\": \"%s\"}}, \"server\": false}}}",
        v->ep_path);
    g_autofree char *dev = g_strdup_printf(
        "{\"driver\": \"ivshmem-doorbell\", \"id\": \"ctl0\", \"chardev\": \"chr-ctl0\", "
        "\"vectors\": %u, \"addr\": \"%s\"}", CTL_VECTORS, addr);
    ivshmem_endpoint_stats st;

    QMP_OK(v, "chardev-add", chr);
    /* chardev-add connected; the endpoint accepts (and sends the set-up) as soon as
     * the main context runs - the sync QMP call above already iterated it. */
    VP_SPIN_UNTIL(p->ups == 1, 5000);
    g_assert_cmpint(p->ups, ==, 1);
    QMP_OK(v, "device_add", dev);
    ivshmem_endpoint_get_stats(p->ep, &st);
    g_assert_cmpuint(st.connections, ==, 1);
    g_assert_cmpuint(st.shm_sent, ==, 1);
    /* version, own id, shm; peer 0: 2 kicks; peer 2: 2 calls (peer 1: none) */
    g_assert_cmpuint(st.messages_sent, ==, 3 + 2 + 2);
    g_assert_cmpuint(st.fds_sent, ==, 1 + 2 + 2);
}

/* ---- paused VM: everything that needs no guest ------------------------------ */

static void test_paused(void)
{
    vm v;
    parts p;
    vp_error err = { { 0 } };
    int newcall;

    vm_start(&v, FALSE);
    parts_make(&p, &v);

    plug_window(&v, &p, "0x10");
    g_assert_cmpint(qemu_maps(&v, "vp-e2e-win0"), >=, 1);

    /* QMP errors arrive with QEMU's own text. */
    g_assert_cmpint(qmp(&v, "device_add", "{\"driver\": \"ivshmem-plain\", \"id\": \"win0\", "
                        "\"memdev\": \"mem-win0\", \"addr\": \"0x12\"}", -1, NULL, NULL, &err),
                    ==, -EIO);
    g_assert_cmpstr(err.msg, ==, "Duplicate device ID 'win0'");
    g_assert_cmpint(qmp(&v, "device_add", "{\"driver\": \"ivshmem-plain\", \"id\": \"win1\", "
                        "\"memdev\": \"mem-win0\", \"addr\": \"0x12\"}", -1, NULL, NULL, &err),
                    ==, -EIO);
    g_assert_nonnull(strstr(err.msg, "already busy memdev"));
    g_assert_cmpint(qmp(&v, "chardev-add", "{\"id\": \"chr-x\", \"backend\": {\"type\": \"socket\", "
                        "\"data\": {\"addr\": {\"type\": \"unix\", \"data\": {\"path\": "
                        "\"/nonexistent/x.sock\"}}, \"server\": false}}}", -1, NULL, NULL, &err),
                    ==, -EIO);
    g_assert_nonnull(strstr(err.msg, "Failed to connect to '/nonexistent/x.sock'"));

    plug_control(&v, &p, "0x11");
    g_assert_cmpint(qemu_maps(&v, "vp-e2e-ctl0"), >=, 1);
    /* Both functions, with their BAR sizes (unmapped: -S), from QMP query-pci. */
    g_assert_cmpuint(qmp_pci_bar_size(&v, "win0", 2), ==, 2u << 20);
    g_assert_cmpuint(qmp_pci_bar_size(&v, "ctl0", 2), ==, 1u << 20);
    g_assert_cmpuint(qmp_pci_bar_size(&v, "ctl0", 0), ==, 256);     /* registers */
    g_assert_cmpuint(qmp_pci_bar_size(&v, "nosuch", 2), ==, 0);

    /* A new driver VM call fd gets a fresh vector (2): appended, QEMU takes it (async).
     * (A "peer gone" message would corrupt QEMU 7.2's heap: the endpoint never sends
     * one and refuses to replace a vector QEMU holds.) */
    newcall = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    {
        int list[3] = { p.call[0], p.call[1], newcall };
        ivshmem_endpoint_stats st;
        g_assert_cmpint(ivshmem_endpoint_set_peer(p.ep, 2, list, 3, &err), ==, 0);
        ivshmem_endpoint_get_stats(p.ep, &st);
        g_assert_cmpuint(st.messages_sent, ==, 3 + 2 + 2 + 1);
        QMP_OK(&v, "query-status", NULL);
        list[0] = newcall;
        g_assert_cmpint(ivshmem_endpoint_set_peer(p.ep, 2, list, 3, &err), ==, -ENOTSUP);
        g_assert_cmpint(ivshmem_endpoint_set_peer(p.ep, 2, NULL, 0, &err), ==, 0);
        ivshmem_endpoint_get_stats(p.ep, &st);
        g_assert_cmpuint(st.messages_sent, ==, 3 + 2 + 2 + 1);
    }
    QMP_OK(&v, "query-status", NULL);
    vp_close_fd(&newcall);
    g_assert_true(ivshmem_endpoint_connected(p.ep));
    g_assert_false(v.exited);

    /* device_del needs a running guest to eject (ACPI): with -S it stays pending, and
     * the bounded wait says so. */
    g_assert_cmpint(qmp_client_device_del_sync(v.c, "win0", 500, &err), ==, -ETIMEDOUT);
    g_assert_nonnull(strstr(err.msg, "no DEVICE_DELETED event for win0"));

    /* QEMU going away: the QMP client sees EOF, the endpoint the disconnect. */
    kill(v.pid, SIGTERM);
    VP_SPIN_UNTIL(v.exited && p.downs == 1 && qmp_client_is_closed(v.c), 10000);
    g_assert_true(v.exited);
    g_assert_cmpint(p.downs, ==, 1);
    g_assert_true(qmp_client_is_closed(v.c));
    g_assert_cmpint(qmp(&v, "query-status", NULL, -1, NULL, NULL, &err), ==, -ECONNRESET);
    parts_free(&p);
    vm_stop(&v);
}

/* ---- booted guest ----------------------------------------------------------- */

/* Run a shell command in the guest through tools/vp-guest; returns its status. */
static int guest_exec(vm *v, const char *cmd, char **out)
{
    const char *argv[] = { "tools/vp-guest", "exec", v->agent_path, "--timeout", "60", "--",
                           cmd, NULL };
    g_autoptr(GError) gerr = NULL;
    char *o = NULL;
    int status = -1;

    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL,
                      &o, NULL, &status, &gerr))
        g_error("vp-guest: %s", gerr->message);
    g_test_message("guest$ %s\n%s[status %d]", cmd, o, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    if (out)
        *out = o;
    else
        g_free(o);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static gboolean wait_guest_ready(vm *v, int timeout_s)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_s * G_USEC_PER_SEC;

    while (g_get_monotonic_time() < deadline && !v->exited) {
        g_autofree char *log = NULL;
        if (g_file_get_contents(v->log_path, &log, NULL, NULL)) {
            if (strstr(log, "VP-GUEST-READY"))
                return TRUE;
            if (strstr(log, "Kernel panic"))
                return FALSE;
        }
        g_main_context_iteration(NULL, FALSE);
        g_usleep(100 * 1000);
    }
    return FALSE;
}

/* Wait (bounded) for eventfd @fd to become readable; returns its counter or 0. */
static uint64_t eventfd_wait(int fd, int ms)
{
    struct pollfd pfd = { fd, POLLIN, 0 };
    uint64_t cnt = 0;

    if (poll(&pfd, 1, ms) == 1 && read(fd, &cnt, sizeof(cnt)) == sizeof(cnt))
        return cnt;
    return 0;
}

#define GUEST_SYSFS_WAIT(dev)                                                       \
    "D=/sys/bus/pci/devices/" dev "; i=0; "                                          \
    "while [ ! -e $D/resource ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; "

static void test_guest(void)
{
    vm v;
    parts p;
    vp_error err = { { 0 } };
    char *out = NULL;
    const char *boot_env = g_getenv("VP_GUEST_BOOT_S");
    int boot_s = boot_env ? atoi(boot_env) : 300;
    int rc, newcall;
    g_autofree char *rmfd = NULL;

    if (!have_guest()) {
        g_autofree char *why = g_strdup_printf("no guest image in %s (tools/mkguest)", guest_dir());
        g_test_skip(why);
        return;
    }
    vm_start(&v, TRUE);
    if (!wait_guest_ready(&v, boot_s)) {
        g_autofree char *log = NULL;
        g_file_get_contents(v.log_path, &log, NULL, NULL);
        g_test_message("console:\n%s", log ? log : "(none)");
        g_error("guest not ready within %d s", boot_s);
    }
    parts_make(&p, &v);
    plug_window(&v, &p, "0x10");
    plug_control(&v, &p, "0x11");

    /* The guest sees both functions (ACPI hot-plug, no guest action). */
    rc = guest_exec(&v, GUEST_SYSFS_WAIT("0000:00:10.0") "cat $D/vendor $D/device; "
                        GUEST_SYSFS_WAIT("0000:00:11.0") "cat $D/vendor $D/device", &out);
    g_assert_cmpint(rc, ==, 0);
    g_assert_cmpstr(out, ==, "0x1af4\n0x1110\n0x1af4\n0x1110\n");
    g_free(out);

    /* A new call fd for the driver VM: appended as peer 2 vector 2. */
    newcall = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    {
        int list[3] = { p.call[0], p.call[1], newcall };
        g_assert_cmpint(ivshmem_endpoint_set_peer(p.ep, 2, list, 3, &err), ==, 0);
    }

    /* It reads the window's bytes through BAR2 (first 4 bytes "VPWI"), the control
     * area's through the doorbell's BAR2 ("VHOS"), and rings the Doorbell (BAR0 + 12):
     * (peer 0 << 16) | vector 1, (peer 2 << 16) | vector 1 and the appended
     * (peer 2 << 16) | vector 2. */
    rc = guest_exec(&v,
        "command -v devmem >/dev/null || { echo no-devmem; exit 3; }; "
        "bar() { sed -n \"$(($2+1))p\" /sys/bus/pci/devices/$1/resource | cut -d' ' -f1; }; "
        "for d in 0000:00:10.0 0000:00:11.0; do echo 1 > /sys/bus/pci/devices/$d/enable; done; "
        "devmem $(bar 0000:00:10.0 2) 32; devmem $(bar 0000:00:11.0 2) 32; "
        "b0=$(bar 0000:00:11.0 0); devmem $((b0 + 12)) 32 0x00000001; "
        "devmem $((b0 + 12)) 32 0x00020001; devmem $((b0 + 12)) 32 0x00020002", &out);
    if (rc == 3) {
        g_test_message("guest has no devmem: BAR contents and doorbell not checked");
    } else {
        g_assert_cmpint(rc, ==, 0);
        g_assert_nonnull(strstr(out, "0x49575056"));    /* "VPWI" little-endian */
        g_assert_nonnull(strstr(out, "0x534F4856"));    /* "VHOS" */
        g_assert_cmpuint(eventfd_wait(p.kick[1], 5000), ==, 1);  /* transmitq kick */
        g_assert_cmpuint(eventfd_wait(p.call[1], 5000), ==, 1);  /* driver VM call */
        g_assert_cmpuint(eventfd_wait(newcall, 5000), ==, 1);    /* appended vector */
        g_assert_cmpuint(eventfd_wait(p.kick[0], 0), ==, 0);     /* nothing else */
    }
    g_free(out);
    vp_close_fd(&newcall);

    /* Unplug: device_del + DEVICE_DELETED (the guest ejects), then the back ends. */
    g_assert_cmpint(qmp_client_device_del_sync(v.c, "win0", 30000, &err), ==, 0);
    g_assert_cmpint(qmp_client_device_del_sync(v.c, "ctl0", 30000, &err), ==, 0);
    QMP_OK(&v, "object-del", "{\"id\": \"mem-win0\"}");
    QMP_OK(&v, "chardev-remove", "{\"id\": \"chr-ctl0\"}");
    VP_SPIN_UNTIL(p.downs == 1, 5000);
    g_assert_cmpint(p.downs, ==, 1);
    rmfd = g_strdup_printf("{\"fdset-id\": %" G_GINT64_FORMAT ", \"fd\": %" G_GINT64_FORMAT "}",
                           p.win_fdset, p.win_qemu_fd);
    QMP_OK(&v, "remove-fd", rmfd);
    /* QEMU lets go of both memfds (RAM blocks are reclaimed after an RCU grace
     * period, so this is a bounded wait). */
    {
        gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
        while ((qemu_maps(&v, "vp-e2e-win0") || qemu_maps(&v, "vp-e2e-ctl0")) &&
               g_get_monotonic_time() < deadline)
            g_usleep(50 * 1000);
        g_test_message("memfd mappings gone after unplug: win0 %d ctl0 %d",
                       qemu_maps(&v, "vp-e2e-win0"), qemu_maps(&v, "vp-e2e-ctl0"));
    }
    g_assert_cmpint(qemu_maps(&v, "vp-e2e-win0"), ==, 0);
    g_assert_cmpint(qemu_maps(&v, "vp-e2e-ctl0"), ==, 0);
    rc = guest_exec(&v, "ls /sys/bus/pci/devices/ | grep -c -e 00:10.0 -e 00:11.0", &out);
    g_assert_cmpstr(out, ==, "0\n");
    g_free(out);

    /* Plug again at the same addresses after a completed unplug. */
    {
        parts p2;
        parts_free(&p);
        parts_make(&p2, &v);
        plug_window(&v, &p2, "0x10");
        plug_control(&v, &p2, "0x11");
        rc = guest_exec(&v, GUEST_SYSFS_WAIT("0000:00:11.0") "cat $D/device", &out);
        g_assert_cmpstr(out, ==, "0x1110\n");
        g_free(out);
        g_assert_false(v.exited);
        vm_stop(&v);
        parts_free(&p2);
    }
}

/* ---- the qemu device host ---------------------------------------------------- */

/* Give QEMU @n new readable fds (memfds of memory backends, lowest free numbers
 * first), so that every fd number an unplug just freed is in use again; QEMU must
 * still answer afterwards. A QEMU main-loop fd handler left behind by an unplugged
 * device (ivshmem's own-vector eventfds: server/devhost_qemu.c) fires on such a reused
 * number and runs on freed memory: SIGSEGV. The backends are deleted again. */
static void fill_freed_fd_numbers(vm *v, int n)
{
    for (int i = 0; i < n; i++) {
        g_autofree char *args = g_strdup_printf(
            "{\"qom-type\": \"memory-backend-memfd\", \"id\": \"vp-fill%d\", "
            "\"size\": 1048576, \"share\": true}", i);
        QMP_OK(v, "object-add", args);
    }
    /* Each QMP answer needs a main-loop iteration after the previous command: the
     * loop has polled every reused number by now. */
    QMP_OK(v, "query-status", NULL);
    QMP_OK(v, "query-status", NULL);
    for (int i = 0; i < n; i++) {
        g_autofree char *args = g_strdup_printf("{\"id\": \"vp-fill%d\"}", i);
        QMP_OK(v, "object-del", args);
    }
    g_assert_false(v->exited);
}

typedef struct done_rec {
    gboolean done;
    int ret;
    char reason[300];
} done_rec;

static void on_done(void *opaque, int ret, const char *reason)
{
    done_rec *d = opaque;
    g_assert_false(d->done);    /* exactly once */
    d->done = TRUE;
    d->ret = ret;
    g_strlcpy(d->reason, reason, sizeof(d->reason));
    g_test_message("devhost completion: %d %s", ret, reason);
}

#define HOST_WAIT(d) do {                                                       \
        VP_SPIN_UNTIL((d).done, 60000);                                            \
        g_assert_true((d).done);                                                \
    } while (0)

/* Plug control function @c through host @h and wait for the completion (in @d);
 * returns its ret. */
static int plug_control_wait(const struct vp_devhost_ops *o, struct vp_devhost *h,
                             const struct vp_devhost_control *c, done_rec *d)
{
    memset(d, 0, sizeof(*d));
    o->plug_control(h, c, on_done, d);
    HOST_WAIT(*d);
    return d->ret;
}

/* The device host's functions at slots 8 and 9 are gone: QEMU no longer maps their
 * memfds (bounded wait), the guest has no such PCI function. */
static void assert_slots_8_9_gone(vm *v)
{
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    char *out = NULL;

    while ((qemu_maps(v, "vp-e2e-win0") || qemu_maps(v, "vp-e2e-ctl0")) &&
           g_get_monotonic_time() < deadline)
        g_usleep(50 * 1000);
    g_assert_cmpint(qemu_maps(v, "vp-e2e-win0"), ==, 0);
    g_assert_cmpint(qemu_maps(v, "vp-e2e-ctl0"), ==, 0);
    guest_exec(v, "ls /sys/bus/pci/devices/ | grep -c -e 00:08.0 -e 00:09.0", &out);
    g_assert_cmpstr(out, ==, "0\n");
    g_free(out);
}

static void test_devhost(void)
{
    const struct vp_devhost_ops *o = &vp_devhost_qemu_ops;
    vm v;
    parts p;
    struct vp_devhost *h;
    vp_error err = { { 0 } };
    done_rec d = { 0 };
    char *out = NULL;
    int odd, win2, rc, newcall;
    int fds_before;
    struct vp_devhost_control ctl8;

    if (!have_guest()) {
        g_autofree char *why = g_strdup_printf("no guest image in %s (tools/mkguest)", guest_dir());
        g_test_skip(why);
        return;
    }
    vm_start(&v, TRUE);
    g_assert_true(wait_guest_ready(&v, 300));
    parts_make(&p, &v);         /* only its fds are used here; its endpoint idles */
    fds_before = vp_count_open_fds();
    {
        struct vp_devhost_config cfg = { .qmp = v.qmp2_path, .timeout_ms = 20000 };
        struct vp_devhost_config bad = { .qmp = "/nonexistent/qmp.sock", .timeout_ms = 1000 };
        g_assert_null(o->create(&bad, &err));
        g_assert_nonnull(strstr(err.msg, "connect to QMP socket /nonexistent/qmp.sock"));
        h = o->create(&cfg, &err);
        g_assert_nonnull(h);
    }
    g_assert_cmpuint(o->devfn_first, ==, 0x40);
    g_assert_cmpuint(o->devfn_step, ==, 8);

    /* Control function at slot 8, window at slot 9. */
    {
        struct vp_devhost_control ctl = {
            .devfn = 0x40, .ctrl_fd = p.ctl, .ctrl_size = 1u << 20,
            .rx_kick_fd = p.kick[0], .tx_kick_fd = p.kick[1], .irq_fd = p.irq,
            .nvectors = VP_MAX_VECTORS,
        };
        o->plug_control(h, &ctl, on_done, &d);
        g_assert_false(d.done);     /* never before the call returned */
        HOST_WAIT(d);
        g_assert_cmpint(d.ret, ==, 0);
        g_assert_cmpstr(d.reason, ==, "");
    }
    memset(&d, 0, sizeof(d));
    o->plug_window(h, 0x40, 0x48, p.win, 0, 2u << 20, on_done, &d);
    HOST_WAIT(d);
    g_assert_cmpint(d.ret, ==, 0);

    /* Refused before QEMU sees it: a size that is not a power of two would abort the
     * VM; the same devfn twice. */
    odd = vp_test_memfd("vp-e2e-odd", 3u << 20, TRUE);
    memset(&d, 0, sizeof(d));
    o->plug_window(h, 0x40, 0x50, odd, 0, 3u << 20, on_done, &d);
    g_assert_false(d.done);
    HOST_WAIT(d);
    g_assert_cmpint(d.ret, ==, -EINVAL);
    g_assert_nonnull(strstr(d.reason, "not a power of two"));
    memset(&d, 0, sizeof(d));
    o->plug_window(h, 0x40, 0x48, p.win, 0, 2u << 20, on_done, &d);
    HOST_WAIT(d);
    g_assert_cmpint(d.ret, ==, -EEXIST);

    /* QEMU refuses (slot 1 holds the PIIX3): its text is the reason, and what had been
     * added for the window (fd, memory backend) is taken back. */
    win2 = memfd_named("vp-e2e-win2", 1u << 20, "VPWIN2");
    memset(&d, 0, sizeof(d));
    o->plug_window(h, 0x40, 0x08, win2, 0, 1u << 20, on_done, &d);
    HOST_WAIT(d);
    g_assert_cmpint(d.ret, ==, -EIO);
    g_assert_nonnull(strstr(d.reason, "not available"));
    {
        gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
        while (qemu_maps(&v, "vp-e2e-win2") && g_get_monotonic_time() < deadline)
            g_usleep(50 * 1000);
        g_assert_cmpint(qemu_maps(&v, "vp-e2e-win2"), ==, 0);
    }
    QMP_OK(&v, "query-status", NULL);

    /* Peer 2 (driver VM call fds); a change to a vector QEMU holds is refused. */
    g_assert_cmpint(o->set_peer_vectors(h, 0x40, VP_ID_DRIVER_VM, p.call, 2, &err), ==, 0);
    newcall = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    {
        int l[2] = { newcall, p.call[1] };
        g_assert_cmpint(o->set_peer_vectors(h, 0x40, VP_ID_DRIVER_VM, l, 2, &err), ==, -ENOTSUP);
        g_assert_nonnull(strstr(err.msg, "vector 0 already has an eventfd in QEMU"));
    }
    g_assert_cmpint(o->set_peer_vectors(h, 0x99, VP_ID_DRIVER_VM, p.call, 2, &err), ==, -ENOENT);
    vp_close_fd(&newcall);

    /* The guest sees both; its doorbell reaches the server's kick and the call fd. */
    rc = guest_exec(&v,
        GUEST_SYSFS_WAIT("0000:00:08.0") "cat $D/device; "
        GUEST_SYSFS_WAIT("0000:00:09.0") "cat $D/device; "
        "command -v devmem >/dev/null || exit 3; "
        "bar() { sed -n \"$(($2+1))p\" /sys/bus/pci/devices/$1/resource | cut -d' ' -f1; }; "
        "for x in 08 09; do echo 1 > /sys/bus/pci/devices/0000:00:$x.0/enable; done; "
        "devmem $(bar 0000:00:09.0 2) 32; devmem $(bar 0000:00:08.0 2) 32; "
        "b0=$(bar 0000:00:08.0 0); devmem $((b0 + 12)) 32 0x00000000; "
        "devmem $((b0 + 12)) 32 0x00020001", &out);
    g_assert_true(g_str_has_prefix(out, "0x1110\n0x1110\n"));
    if (rc != 3) {
        g_assert_cmpint(rc, ==, 0);
        g_assert_nonnull(strstr(out, "0x49575056"));    /* window: "VPWI" */
        g_assert_nonnull(strstr(out, "0x534F4856"));    /* control area: "VHOS" */
        g_assert_cmpuint(eventfd_wait(p.kick[0], 5000), ==, 1);  /* receiveq kick */
        g_assert_cmpuint(eventfd_wait(p.call[1], 5000), ==, 1);
    }
    g_free(out);

    /* Unplug: window, control function; an unknown one is nothing to do. */
    memset(&d, 0, sizeof(d));
    o->unplug_window(h, 0x40, 0x48, on_done, &d);
    HOST_WAIT(d);
    g_assert_cmpint(d.ret, ==, 0);
    memset(&d, 0, sizeof(d));
    o->unplug_control(h, 0x40, on_done, &d);
    HOST_WAIT(d);
    g_assert_cmpint(d.ret, ==, 0);
    memset(&d, 0, sizeof(d));
    o->unplug_window(h, 0x40, 0x48, on_done, &d);
    HOST_WAIT(d);
    g_assert_cmpint(d.ret, ==, 0);
    assert_slots_8_9_gone(&v);
    /* Regression (make soak: the device VM's QEMU died on a client restart): the
     * unplugged control function left nothing behind that a reused fd number wakes. */
    fill_freed_fd_numbers(&v, 16);

    /* A control function with 8 vectors at slot 8, for the rest of the test. */
    ctl8 = (struct vp_devhost_control){
        .devfn = 0x40, .ctrl_fd = p.ctl, .ctrl_size = 1u << 20,
        .rx_kick_fd = p.kick[0], .tx_kick_fd = p.kick[1], .irq_fd = p.irq, .nvectors = 8,
    };

    /* Server restart (issue 12 item 6): a host destroyed with its functions plugged
     * leaves them in QEMU, as a killed server does (destroy only closes its endpoints
     * and QMP). A new host removes them while it is created (device_del + DEVICE_DELETED,
     * chardev-remove, object-del, remove-fd), and the devfns can be used again (below,
     * with ids that do not collide with the old ones). Without it: "PCI: slot 8
     * function 0 not available for ivshmem-doorbell, in use by ...". */
    {
        struct vp_devhost_config cfg = { .qmp = v.qmp2_path, .timeout_ms = 20000 };
        memset(&d, 0, sizeof(d));
        o->plug_control(h, &ctl8, on_done, &d);
        HOST_WAIT(d);
        g_assert_cmpint(d.ret, ==, 0);
        memset(&d, 0, sizeof(d));
        o->plug_window(h, 0x40, 0x48, p.win, 0, 2u << 20, on_done, &d);
        HOST_WAIT(d);
        g_assert_cmpint(d.ret, ==, 0);
        o->destroy(h);
        rc = guest_exec(&v, GUEST_SYSFS_WAIT("0000:00:09.0")
                        "ls /sys/bus/pci/devices/ | grep -c -e 00:08.0 -e 00:09.0", &out);
        g_assert_cmpstr(out, ==, "2\n");
        g_free(out);
        g_assert_true(qemu_maps(&v, "vp-e2e-win0") && qemu_maps(&v, "vp-e2e-ctl0"));

        h = o->create(&cfg, &err);
        g_assert_nonnull(h);
        assert_slots_8_9_gone(&v);
        /* Nothing of ours left in QEMU: devices, chardevs, memory backends, fds. */
        {
            static const char *const q[][3] = {
                { "qom-list", "{\"path\": \"/machine/peripheral\"}", "vpci-" },
                { "query-chardev", NULL, "vpci-" },
                { "qom-list", "{\"path\": \"/objects\"}", "vpci-" },
                { "query-fdsets", NULL, "vhost-pci" },
            };
            for (size_t i = 0; i < G_N_ELEMENTS(q); i++) {
                g_autofree char *text = NULL;
                g_assert_cmpint(qmp(&v, q[i][0], q[i][1], -1, NULL, &text, &err), ==, 0);
                g_assert_nonnull(text);
                g_assert_null(strstr(text, q[i][2]));
            }
        }
        QMP_OK(&v, "query-status", NULL);
    }

    /* Zombie slots: a leftover the guest does not eject within the bound (here: the
     * VM is stopped) stays in QEMU, and the new host reports its devfn as held
     * (devfn_held), which the server's allocator skips (server/devfn.c); a plug there
     * is what QEMU refuses. When its DEVICE_DELETED arrives (the guest runs again and
     * ejects it) the devfn is usable again. */
    {
        struct vp_devhost_config quick = { .qmp = v.qmp2_path, .timeout_ms = 1000 };
        g_assert_cmpint(plug_control_wait(o, h, &ctl8, &d), ==, 0);
        o->destroy(h);
        QMP_OK(&v, "stop", NULL);
        h = o->create(&quick, &err);
        g_assert_nonnull(h);
        g_assert_nonnull(o->devfn_held);
        g_assert_true(o->devfn_held(h, 0x40));
        g_assert_false(o->devfn_held(h, 0x48));
        g_assert_cmpint(plug_control_wait(o, h, &ctl8, &d), ==, -EIO);
        g_assert_nonnull(strstr(d.reason, "not available"));
        QMP_OK(&v, "cont", NULL);
        VP_SPIN_UNTIL(!o->devfn_held(h, 0x40), 120000);
        g_assert_false(o->devfn_held(h, 0x40));
        g_assert_cmpint(plug_control_wait(o, h, &ctl8, &d), ==, 0);
        memset(&d, 0, sizeof(d));
        o->unplug_control(h, 0x40, on_done, &d);
        HOST_WAIT(d);
        g_assert_cmpint(d.ret, ==, 0);
    }

    /* Plug again, then destroy with an unplug in flight: no completion is called. */
    {
        memset(&d, 0, sizeof(d));
        o->plug_control(h, &ctl8, on_done, &d);
        HOST_WAIT(d);
        g_assert_cmpint(d.ret, ==, 0);
        memset(&d, 0, sizeof(d));
        o->unplug_control(h, 0x40, on_done, &d);
        o->destroy(h);
        g_assert_false(d.done);
    }
    vp_close_fd(&odd);
    vp_close_fd(&win2);
    vp_assert_fds(fds_before);
    g_assert_false(v.exited);
    vm_stop(&v);
    parts_free(&p);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_iteration(NULL, FALSE);
    g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL);
    g_test_add_func("/qemu-ivshmem/paused", test_paused);
    g_test_add_func("/qemu-ivshmem/guest", test_guest);
    g_test_add_func("/qemu-ivshmem/devhost", test_devhost);
    return g_test_run();
}
