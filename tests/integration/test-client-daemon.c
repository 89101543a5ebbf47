/*
 * test-client-daemon.c - the vhost-pci-client daemon (client/main.c) as a real process
 * between a scripted QEMU 7.2 vhost-user frontend (vu_frontend.h, played by this
 * program) and a real vhost-pci-server (--device-host local) + vhost-pci-guestd
 * (--bus local). The server's view is read with `vhost-pci-ctl --json`, the guest
 * driver's with its status socket, the daemon's reasons from its log.
 *
 * Cases: options and --print-capabilities; the QEMU 7.2 sequence (features trimmed
 * to what the device VM accepts, handshake, regions, stop with positions, restart);
 * memory hot-add / hot-remove (multi-queue repeats, a region the server refuses);
 * QEMU reconnecting; the server restarting and appearing late; shutdown with
 * DEVICE_INFO(DEL); malformed vhost-user input (each: reason, no crash, no fd leak);
 * the feature renegotiation round against a scripted server.
 *
 * The daemon binary is $(B)/client/vhost-pci-client next to the test's build dir
 * (VP_CLIENT_BIN overrides).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <uuid/uuid.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "vhost_user.h"
#include "vu_frontend.h"

#define MiB (1ULL << 20)
#define TMO 10000

#define F_PROTO (1ULL << VU_F_PROTOCOL_FEATURES)
#define F_CSUM (1ULL << 0)
#define F_GUEST_CSUM (1ULL << 1)
/* What the scripted guest negotiates (QEMU passes only vhost's feature bits). */
#define F_GUEST ((1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF) | \
                 (1ULL << VP_VIRTIO_F_RING_EVENT_IDX))

/* Guest RAM 0 (4 MiB memfd) as a pc machine lays it out: low memory at guest-physical
 * 0, the rest "above 4G" at 0x100000000 (mmap offset 0x80000). Rings in low memory. */
#define RAM0_SIZE (4 * MiB)
#define LOW_SIZE 0x80000ULL
#define HIGH_GPA 0x100000000ULL
#define HOTPLUG_GPA 0x140000000ULL

static const struct vu_fe_vring vrings[2] = {
    {256, 0x10000, 0x11000, 0x12000, 3},
    {256, 0x20000, 0x21000, 0x22000, 9},
};

/* ------------------------------ the world of one test ------------------------------ */

typedef struct {
    ITestEnv env;
    char *vu_path;              /* the daemon's --socket-path */
    char *log;                  /* its stdout+stderr */
    GPid pid;
    char uuid[37];
    struct vu_fe *fe;
    int low, high;              /* frontend region ids */
} T;

static char *client_bin(void)
{
    if (g_getenv("VP_CLIENT_BIN"))
        return g_strdup(g_getenv("VP_CLIENT_BIN"));
    char *exe = g_file_read_link("/proc/self/exe", NULL);
    g_assert_nonnull(exe);
    char *d1 = g_path_get_dirname(exe), *d2 = g_path_get_dirname(d1),
         *b = g_path_get_dirname(d2);
    char *path = g_build_filename(b, "client", "vhost-pci-client", NULL);
    g_free(exe);
    g_free(d1);
    g_free(d2);
    g_free(b);
    return path;
}

static void child_setup(gpointer data)
{
    (void)data;
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* nothing survives the test program */
}

/* Spawn @argv in @dir with stdout+stderr to @log; @fd (>= 0) becomes the child's fd 3. */
static GPid spawn_logged_fd(const char *dir, char **argv, const char *log, int fd3)
{
    if (!g_file_test(argv[0], G_FILE_TEST_IS_EXECUTABLE))
        g_error("%s does not exist: build it first", argv[0]);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    g_assert_cmpint(fd, >=, 0);
    char *cmd = g_strjoinv(" ", argv);
    g_test_message("spawn: %s", cmd);
    g_free(cmd);
    GPid pid = 0;
    GError *e = NULL;
    int src[1] = { fd3 }, dst[1] = { 3 };
    if (!g_spawn_async_with_pipes_and_fds(dir, (const char *const *)argv, NULL,
                                          G_SPAWN_DO_NOT_REAP_CHILD, child_setup, NULL, -1,
                                          fd, fd, fd3 >= 0 ? src : NULL, fd3 >= 0 ? dst : NULL,
                                          fd3 >= 0 ? 1 : 0, &pid, NULL, NULL, NULL, &e))
        g_error("spawn %s: %s", argv[0], e->message);
    close(fd);
    return pid;
}

static GPid spawn_logged(const char *dir, char **argv, const char *log)
{
    return spawn_logged_fd(dir, argv, log, -1);
}

static char *read_log(T *t)
{
    char *text = NULL;
    if (!g_file_get_contents(t->log, &text, NULL, NULL))
        text = g_strdup("");
    return text;
}

static void dump_daemon_log(T *t)
{
    char *text = read_log(t);
    gsize len = strlen(text);
    g_test_message("----- daemon log (%s) -----\n%s\n----- end of daemon log -----", t->log,
                   len > 12000 ? text + len - 12000 : text);
    g_free(text);
}

static gboolean log_has(T *t, const char *needle)
{
    char *text = read_log(t);
    gboolean r = strstr(text, needle) != NULL;
    g_free(text);
    return r;
}

static guint log_count(T *t, const char *needle)
{
    char *text = read_log(t);
    guint n = 0;
    const char *p = text;
    while ((p = strstr(p, needle)) != NULL) {
        n++;
        p++;
    }
    g_free(text);
    return n;
}

/* Wait until the daemon's log holds @needle (bounded). */
static void wait_log(T *t, const char *needle)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    while (!log_has(t, needle)) {
        if (g_get_monotonic_time() > deadline) {
            dump_daemon_log(t);
            itest_dump_logs(&t->env);
            g_error("the daemon's log never said \"%s\"", needle);
        }
        g_usleep(20000);
    }
}

static int try_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(fd, >=, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Start the daemon on @server (NULL: the env's server) with @extra arguments. */
static void daemon_start_at(T *t, const char *server, const char *const *extra)
{
    char *bin = client_bin();
    GPtrArray *a = g_ptr_array_new();
    const char *base[] = { bin, "--socket-path", t->vu_path, "--server",
                           server ? server : t->env.sock, "--uuid", t->uuid,
                           "--log-level", "debug", "--ack-timeout", "5" };
    for (guint i = 0; i < G_N_ELEMENTS(base); i++)
        g_ptr_array_add(a, (gpointer)base[i]);
    for (const char *const *p = extra; p && *p; p++)
        g_ptr_array_add(a, (gpointer)*p);
    g_ptr_array_add(a, NULL);
    t->pid = spawn_logged(t->env.dir, (char **)a->pdata, t->log);
    g_ptr_array_free(a, TRUE);
    g_free(bin);
    /* Listening: a probe connection is accepted (and closed at once). */
    gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    int fd;
    while ((fd = try_connect(t->vu_path)) < 0) {
        if (!itest_alive(t->pid) || g_get_monotonic_time() > deadline) {
            dump_daemon_log(t);
            g_error("vhost-pci-client does not listen on %s", t->vu_path);
        }
        g_usleep(10000);
    }
    close(fd);
    wait_log(t, "frontend disconnected"); /* the probe has been seen off */
}

static void setup_with(T *t, const char *const *extra, gboolean start_daemon)
{
    memset(t, 0, sizeof(*t));
    itest_env_start(&t->env, NULL);
    t->vu_path = g_build_filename(t->env.dir, "vu.sock", NULL);
    t->log = g_build_filename(t->env.dir, "client.log", NULL);
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, t->uuid);
    if (start_daemon)
        daemon_start_at(t, NULL, extra);
}

static void setup(T *t)
{
    setup_with(t, NULL, TRUE);
}

/* SIGTERM and wait (bounded); returns the wait status. */
static int daemon_stop(T *t)
{
    if (t->pid <= 0)
        return 0;
    kill(t->pid, SIGTERM);
    int st = -1;
    for (int i = 0; i < 1000; i++) {
        pid_t r = waitpid(t->pid, &st, WNOHANG);
        if (r == t->pid) {
            t->pid = 0;
            return st;
        }
        g_usleep(10000);
    }
    dump_daemon_log(t);
    kill(t->pid, SIGKILL);
    waitpid(t->pid, &st, 0);
    t->pid = 0;
    g_error("vhost-pci-client ignored SIGTERM for 10 s");
    return st;
}

static void teardown(T *t)
{
    vu_fe_free(t->fe);
    t->fe = NULL;
    gboolean crashed = t->pid > 0 && !itest_alive(t->pid);
    if (crashed) {
        t->pid = 0;
        g_test_message("FAIL: vhost-pci-client is no longer running (crashed?)");
    }
    int st = daemon_stop(t);
    char *text = read_log(t);
    gboolean sanitizer = strstr(text, "AddressSanitizer") || strstr(text, "runtime error:") ||
                         strstr(text, "LeakSanitizer");
    g_free(text);
    if (crashed || sanitizer || g_test_failed() || WIFSIGNALED(st) ||
        g_getenv("VP_TEST_SHOW_LOGS"))
        dump_daemon_log(t);
    itest_env_stop(&t->env);
    g_free(t->vu_path);
    g_free(t->log);
    if (crashed || sanitizer)
        g_test_fail();
}

/* ------------------------------ the frontend ------------------------------ */

static struct vu_fe *fe_connect(T *t)
{
    int fd = try_connect(t->vu_path);
    g_assert_cmpint(fd, >=, 0);
    struct vu_fe *fe = vu_fe_new(fd, 2, NULL, NULL);
    vu_fe_set_timeout(fe, TMO);
    return fe;
}

#define FE_OK(fe, call)                                                         \
    do {                                                                        \
        int r_ = (call);                                                        \
        if (r_)                                                                 \
            g_error("%s: %d (%s)", #call, r_, vu_fe_error(fe));                 \
    } while (0)

/* QEMU 7.2's start of the device with rings at their bases (a ring at position N has
 * avail and used indexes N in memory: the daemon resumes a ring from its used index
 * when SET_VRING_BASE disagrees). */
static int fe_start(struct vu_fe *fe, const struct vu_fe_vring *v)
{
    for (unsigned i = 0; i < 2; i++) {
        int r = vu_fe_ring_at(fe, &v[i]);
        if (r)
            return r;
    }
    return vu_fe_qemu72_start(fe, F_GUEST, v);
}

/* RAM 0 and its two regions (low + high), as QEMU's main RAM. */
static void fe_ram(T *t)
{
    g_assert_cmpint(vu_fe_ram_new(t->fe, RAM0_SIZE), ==, 0);
    t->low = vu_fe_region_new(t->fe, 0, 0, 0, LOW_SIZE);
    t->high = vu_fe_region_new(t->fe, 0, LOW_SIZE, HIGH_GPA, RAM0_SIZE - LOW_SIZE);
    g_assert_cmpint(t->low, >=, 0);
    g_assert_cmpint(t->high, >=, 0);
}

/* Connect, play QEMU's init and start: the device runs. */
static void fe_up(T *t)
{
    t->fe = fe_connect(t);
    FE_OK(t->fe, vu_fe_qemu72_init(t->fe));
    fe_ram(t);
    FE_OK(t->fe, fe_start(t->fe, vrings));
}

/* ------------------------------ the server's view ------------------------------ */

/* `vhost-pci-ctl --mgmt M status --json`, parsed. */
static JsonNode *ctl_status(T *t)
{
    const char *argv[] = { "--mgmt", t->env.mgmt, "status", "--json", NULL };
    int st = 0;
    char *out = itest_run_ctl(argv, &st);
    g_assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    JsonParser *p = json_parser_new();
    GError *e = NULL;
    if (!json_parser_load_from_data(p, out, -1, &e))
        g_error("vhost-pci-ctl --json printed no JSON (%s): %s", e->message, out);
    JsonNode *root = json_node_copy(json_parser_get_root(p));
    g_object_unref(p);
    g_free(out);
    return root;
}

/* What a test expects of the server's device for our uuid. */
typedef struct {
    gint nfrontends;            /* -1: do not care */
    gint nregions;              /* -1: do not care; 0 also matches "no device" */
    guint64 need_gpa;           /* a region at this gpa must be there (0: none) */
    guint64 absent_gpa;         /* and none at this one (0: none) */
} Expect;

static gboolean matches(T *t, JsonNode *st, const Expect *x)
{
    JsonObject *d = itest_server_device(st, t->uuid);
    if (!d)
        return x->nregions == 0 && x->nfrontends <= 0;
    if (x->nfrontends >= 0 && itest_len(d, "frontends") != (guint)x->nfrontends)
        return FALSE;
    if (x->nregions >= 0 && itest_len(d, "regions") != (guint)x->nregions)
        return FALSE;
    gboolean need = x->need_gpa == 0, absent = TRUE;
    for (guint i = 0; i < itest_len(d, "regions"); i++) {
        guint64 gpa = (guint64)itest_int(itest_elem(d, "regions", i), "gpa");
        need |= gpa == x->need_gpa;
        absent &= x->absent_gpa == 0 || gpa != x->absent_gpa;
    }
    return need && absent;
}

/* Poll vhost-pci-ctl until the server's device matches @x (bounded). Returns the
 * matching status (caller unrefs). */
static JsonNode *wait_server(T *t, Expect x, const char *what)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    for (;;) {
        JsonNode *st = ctl_status(t);
        if (matches(t, st, &x))
            return st;
        if (g_get_monotonic_time() > deadline) {
            char *text = json_to_string(st, TRUE);
            g_test_message("last server status:\n%s", text);
            g_free(text);
            dump_daemon_log(t);
            itest_dump_logs(&t->env);
            g_error("timed out waiting for the server to show: %s", what);
        }
        json_node_unref(st);
        g_usleep(30000);
    }
}

/* The frontend and regions the server shows after fe_up(). */
static void assert_registered(T *t, JsonNode *st)
{
    JsonObject *d = itest_server_device(st, t->uuid);
    g_assert_nonnull(d);
    g_assert_cmpuint(itest_len(d, "frontends"), ==, 1);
    JsonObject *fe = itest_elem(d, "frontends", 0);
    g_assert_cmpstr(json_object_get_string_member(fe, "device_type"), ==, "net");
    g_assert_cmpint(itest_int(fe, "device_id"), ==, 1);
    g_assert_cmpint(itest_int(fe, "nvirtqs"), ==, 2);
    g_assert_cmpuint(itest_len(d, "regions"), ==, 2);
    gboolean low = FALSE, high = FALSE;
    for (guint i = 0; i < 2; i++) {
        JsonObject *r = itest_elem(d, "regions", i);
        guint64 gpa = (guint64)itest_int(r, "gpa"), size = (guint64)itest_int(r, "size"),
                off = (guint64)itest_int(r, "mmap_offset");
        low |= gpa == 0 && size == LOW_SIZE && off == 0;
        high |= gpa == HIGH_GPA && size == RAM0_SIZE - LOW_SIZE && off == LOW_SIZE;
    }
    g_assert_true(low && high);
    /* One memory file: one window. */
    g_assert_cmpuint(itest_len(d, "windows"), ==, 1);
    g_assert_cmpint(itest_int(itest_elem(d, "windows", 0), "size"), ==, RAM0_SIZE);
    g_assert_cmpint(itest_int(d, "features.accepted"), ==, F_GUEST);
}

/* ------------------------------ cases ------------------------------ */

static void test_options(void)
{
    char *bin = client_bin();
    struct { const char *args[8]; int status; const char *out; } cases[] = {
        { { "--print-capabilities" }, 0, "\"type\": \"net\"" },
        { { "--server", "/nonexistent" }, 2, "exactly one of --socket-path" },
        { { "--socket-path", "/tmp/x", "--fd", "3", "--server", "s" }, 2,
          "exactly one of --socket-path" },
        { { "--socket-path", "/tmp/x", "--vhost-server-path", "/tmp/y", "--server", "s" }, 2,
          "exactly one of --socket-path" },
        { { "--socket-path", "/tmp/x" }, 2, "--server PATH is required" },
        { { "--socket-path", "/tmp/x", "--server", "s", "--uuid", "nope" }, 2,
          "is not a UUID" },
        { { "--socket-path", "/tmp/x", "--server", "s", "--features", "0x40000000" }, 2,
          "vhost-user's own" },
        { { "--socket-path", "/tmp/x", "--server", "s", "--log-level", "loud" }, 2,
          "--log-level must be" },
        { { "--socket-path", "/tmp/x", "--server", "s", "--memory-refusal", "maybe" }, 2,
          "--memory-refusal must be reply or log" },
        { { "--socket-path", "/proc/version", "--server", "s" }, 1, "is not a socket" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        GPtrArray *a = g_ptr_array_new();
        g_ptr_array_add(a, bin);
        for (guint k = 0; cases[i].args[k]; k++)
            g_ptr_array_add(a, (gpointer)cases[i].args[k]);
        g_ptr_array_add(a, NULL);
        char *out = NULL, *err = NULL;
        int st = 0;
        GError *e = NULL;
        g_assert_true(g_spawn_sync(NULL, (char **)a->pdata, NULL, G_SPAWN_DEFAULT, NULL, NULL,
                                   &out, &err, &st, &e));
        g_assert_no_error(e);
        g_test_message("case %u: status %d out=%s err=%s", i, st, out, err);
        g_assert_true(WIFEXITED(st));
        g_assert_cmpint(WEXITSTATUS(st), ==, cases[i].status);
        g_assert_nonnull(strstr(cases[i].status ? err : out, cases[i].out));
        if (i == 0) {
            JsonParser *p = json_parser_new();
            g_assert_true(json_parser_load_from_data(p, out, -1, NULL));
            JsonObject *o = json_node_get_object(json_parser_get_root(p));
            g_assert_cmpstr(json_object_get_string_member(o, "type"), ==, "net");
            g_object_unref(p);
        }
        g_free(out);
        g_free(err);
        g_ptr_array_free(a, TRUE);
    }
    g_free(bin);
}

/* The QEMU 7.2 sequence: init (features trimmed by the device VM), start (handshake),
 * stop (GET_VRING_BASE answered from DEL_DONE), restart, disconnect. */
static void test_qemu72_sequence(void)
{
    T t;
    char features[32];
    /* Offer two bits the device VM's driver does not support: QEMU must not see them. */
    g_snprintf(features, sizeof(features), "0x%llx",
               (unsigned long long)(VP_NET_FEATURES | F_CSUM | F_GUEST_CSUM));
    const char *extra[] = { "--features", features, "--device-id", "1", NULL };
    setup_with(&t, extra, TRUE);
    int fds0 = itest_count_fds(t.pid);

    t.fe = fe_connect(&t);
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    g_assert_cmphex(vu_fe_offered_features(t.fe), ==, VP_NET_FEATURES | F_PROTO);
    g_assert_cmphex(vu_fe_protocol_features(t.fe), ==,
                    (1ULL << VU_PF_REPLY_ACK) | (1ULL << VU_PF_CONFIGURE_MEM_SLOTS));
    g_assert_true(log_has(&t, "device VM accepts virtio features 0x"));

    fe_ram(&t);
    FE_OK(t.fe, fe_start(t.fe, vrings));
    JsonNode *st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "frontend + 2 regions");
    assert_registered(&t, st);
    json_node_unref(st);
    wait_log(&t, "DEVICE_INFO_ACK(ADD_DONE)");

    /* The guest driver serves both virtqueues from the bases QEMU set. */
    JsonNode *g = itest_guestd_status(&t.env);
    JsonObject *gd = json_array_get_object_element(
        json_object_get_array_member(json_node_get_object(g), "devices"), 0);
    g_assert_nonnull(gd);
    g_assert_cmpuint(itest_len(gd, "frontends"), ==, 1);
    JsonObject *gfe = itest_elem(gd, "frontends", 0);
    g_assert_cmpint(itest_int(gfe, "nvirtqs"), ==, 2);
    g_assert_cmpint(itest_int(itest_elem(gfe, "queues", 0), "num"), ==, 256);
    g_assert_cmpint(itest_int(itest_elem(gfe, "queues", 0), "last_avail_idx"), ==, 3);
    g_assert_cmpint(itest_int(itest_elem(gfe, "queues", 1), "last_avail_idx"), ==, 9);
    json_node_unref(g);

    /* Stop: each GET_VRING_BASE is answered after DEVICE_INFO(DEL) completed. */
    uint32_t bases[2] = { 0, 0 };
    FE_OK(t.fe, vu_fe_qemu72_stop(t.fe, bases));
    g_assert_cmpuint(bases[0], ==, 3);
    g_assert_cmpuint(bases[1], ==, 9);
    g_assert_true(log_has(&t, "DEVICE_INFO_ACK(DEL_DONE) for net 1: 2 virtqueue position(s)"));
    st = ctl_status(&t);
    g_assert_true(matches(&t, st, &(Expect){ 0, 2, HIGH_GPA, 0 })); /* memory stays */
    json_node_unref(st);

    /* The guest resets and restarts the device: registered again, no duplicate regions. */
    struct vu_fe_vring again[2] = { vrings[0], vrings[1] };
    again[0].base = 7;
    again[1].base = 11;
    FE_OK(t.fe, fe_start(t.fe, again));
    st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "frontend registered again");
    assert_registered(&t, st);
    json_node_unref(st);
    g_assert_cmpuint(log_count(&t, "DEVICE_INFO_ACK(ADD_DONE): net 1"), ==, 2);
    FE_OK(t.fe, vu_fe_qemu72_stop(t.fe, bases));
    g_assert_cmpuint(bases[0], ==, 7);
    g_assert_cmpuint(bases[1], ==, 11);

    /* QEMU goes away: the device VM drops the frontend and the memory. */
    vu_fe_free(t.fe);
    t.fe = NULL;
    st = wait_server(&t, (Expect){ 0, 0, 0, 0 }, "no frontend, no memory after QEMU left");
    json_node_unref(st);
    g_assert_true(itest_alive(t.pid));
    /* Every fd of that connection (memory, kick/call and their copies) is closed. */
    itest_wait_fds(t.pid, fds0, TMO, "after QEMU left");
    teardown(&t);
}

/* Memory hot-add and hot-remove after start (pc-dimm), with QEMU 7.2's multi-queue
 * repeats, and a memory file the server must refuse. */
static void test_memory_hotplug(void)
{
    T t;
    setup(&t);
    int fds0 = itest_count_fds(t.pid);
    fe_up(&t);
    JsonNode *st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered");
    json_node_unref(st);

    vu_fe_set_mem_repeat(t.fe, 2); /* queues=2: every ADD/REM twice */
    int ram1 = vu_fe_ram_new(t.fe, 2 * MiB);
    g_assert_cmpint(ram1, ==, 1);
    int dimm = vu_fe_region_new(t.fe, 1, 0, HOTPLUG_GPA, 2 * MiB);
    FE_OK(t.fe, vu_fe_add_mem_reg(t.fe, dimm));
    /* Answered only after the server's ACK: the region is there right away. */
    st = ctl_status(&t);
    g_assert_true(matches(&t, st, &(Expect){ 1, 3, HOTPLUG_GPA, 0 }));
    JsonObject *d = itest_server_device(st, t.uuid);
    g_assert_cmpuint(itest_len(d, "windows"), ==, 2);
    json_node_unref(st);
    g_assert_cmpuint(log_count(&t, "MEMORY_INFO_ACK(ADD_DONE)"), ==, 1);

    FE_OK(t.fe, vu_fe_rem_mem_reg(t.fe, dimm, false));
    st = ctl_status(&t);
    g_assert_true(matches(&t, st, &(Expect){ 1, 2, HIGH_GPA, HOTPLUG_GPA }));
    json_node_unref(st);
    g_assert_cmpuint(log_count(&t, "MEMORY_INFO_ACK(DEL_DONE)"), ==, 1);

    /* A file of 3 MiB + 512 bytes cannot become BARs (not a power of two, not a page
     * multiple to split): the server refuses it with a reason, which the daemon logs
     * and turns into a failure REPLY_ACK; the frontend carries on. */
    vu_fe_set_mem_repeat(t.fe, 1);
    int ram2 = vu_fe_ram_new(t.fe, 3 * MiB + 512);
    int bad = vu_fe_region_new(t.fe, ram2, 0, HOTPLUG_GPA, 3 * MiB);
    vu_fe_clear_ack(t.fe);
    g_assert_cmpint(vu_fe_add_mem_reg(t.fe, bad), ==, -EIO);
    g_assert_cmpuint(vu_fe_last_ack(t.fe), ==, 1);
    g_assert_true(log_has(&t, "not a power of two"));
    g_assert_true(log_has(&t, "hot-add of region gpa 0x140000000 size 0x300000 failed"));
    g_assert_true(log_has(&t, "the frontend gets a failure reply"));
    g_assert_true(log_has(&t, "ADD_MEM_REG: region gpa 0x140000000 size 0x300000: adding "
                          "refused by the backend user"));
    st = ctl_status(&t);
    g_assert_true(matches(&t, st, &(Expect){ 1, 2, HIGH_GPA, HOTPLUG_GPA }));
    json_node_unref(st);
    FE_OK(t.fe, vu_fe_set_state(t.fe, VU_SET_VRING_ENABLE, 0, 1, true)); /* serves on */

    /* QEMU keeps the refused region out of its table and offers it again when it
     * restarts the device (vhost_dev_start). A failure there would fail the start
     * (QEMU falls back to "userspace virtio": no network), so it is accepted now;
     * the device VM serves the device again with the memory it could take. */
    uint32_t bases[2];
    FE_OK(t.fe, vu_fe_qemu72_stop(t.fe, bases));
    g_assert_cmpuint(bases[1], ==, 9);
    vu_fe_clear_ack(t.fe);
    FE_OK(t.fe, fe_start(t.fe, vrings));
    g_assert_cmpuint(vu_fe_last_ack(t.fe), ==, 0);
    g_assert_true(log_has(&t, "the frontend is (re)starting its device, which a failure "
                          "reply would stop: it gets success"));
    st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, HOTPLUG_GPA },
                     "registered again without the refused region");
    json_node_unref(st);
    wait_log(&t, "the device VM serves net 1 but not all of this start: ");
    g_assert_true(log_has(&t, "MEMORY_INFO_ACK(ADD_FAIL): memory file of region 2 is "
                          "3146240 bytes"));
    g_assert_cmpuint(log_count(&t, "DEVICE_INFO_ACK(ADD_DONE): net 1"), ==, 2);

    /* QEMU's hot-unplug of it: the server never had it, no MEMORY_INFO(DEL). */
    FE_OK(t.fe, vu_fe_rem_mem_reg(t.fe, bad, false));
    g_assert_cmpuint(log_count(&t, "hot-remove: MEMORY_INFO(DEL)"), ==, 1);
    g_assert_cmpuint(log_count(&t, "MEMORY_INFO_ACK(DEL_DONE)"), ==, 1);
    FE_OK(t.fe, vu_fe_qemu72_stop(t.fe, bases));
    vu_fe_free(t.fe);
    t.fe = NULL;
    json_node_unref(wait_server(&t, (Expect){ 0, 0, 0, 0 }, "gone with QEMU"));
    itest_wait_fds(t.pid, fds0, TMO, "after hot-plug and QEMU leaving");
    teardown(&t);
}

/* --memory-refusal log: the server's refusal of a hot-added region is only logged;
 * QEMU gets success (the behaviour before failure replies). */
static void test_memory_refusal_log(void)
{
    T t;
    const char *extra[] = { "--memory-refusal", "log", NULL };
    setup_with(&t, extra, TRUE);
    fe_up(&t);
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered"));
    int ram1 = vu_fe_ram_new(t.fe, 3 * MiB + 512);  /* refused by every device host */
    int bad = vu_fe_region_new(t.fe, (unsigned)ram1, 0, HOTPLUG_GPA, 3 * MiB);
    vu_fe_clear_ack(t.fe);
    FE_OK(t.fe, vu_fe_add_mem_reg(t.fe, bad));
    g_assert_cmpuint(vu_fe_last_ack(t.fe), ==, 0);
    g_assert_true(log_has(&t, "hot-add of region gpa 0x140000000 size 0x300000 failed: "));
    g_assert_true(log_has(&t, "(--memory-refusal log: the frontend gets success;"));
    JsonNode *st = ctl_status(&t);
    g_assert_true(matches(&t, st, &(Expect){ 1, 2, HIGH_GPA, HOTPLUG_GPA }));
    json_node_unref(st);
    teardown(&t);
}

/* QEMU with reconnect=N: the connection drops (DEVICE_INFO(DEL), memory DEL) and QEMU
 * replays everything on a new one. */
static void test_frontend_reconnect(void)
{
    T t;
    setup(&t);
    fe_up(&t);
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered"));

    /* QEMU closes, then connects again at once (the daemon may accept the new
     * connection before its main loop has seen the old one end). */
    shutdown(vu_fe_sock(t.fe), SHUT_RDWR);
    vu_fe_reconnect(t.fe, try_connect(t.vu_path));
    json_node_unref(wait_server(&t, (Expect){ 0, 0, 0, 0 }, "dropped with the connection"));
    g_assert_true(log_has(&t, "frontend disconnected: "));
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    FE_OK(t.fe, fe_start(t.fe, vrings));
    JsonNode *st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered after replay");
    assert_registered(&t, st);
    json_node_unref(st);

    /* A second connection while one is served is refused; the first carries on. */
    int extra = try_connect(t.vu_path);
    g_assert_cmpint(extra, >=, 0);
    struct pollfd p = { .fd = extra, .events = POLLIN };
    g_assert_cmpint(poll(&p, 1, TMO), ==, 1);
    char c;
    g_assert_cmpint(read(extra, &c, 1), ==, 0); /* closed by the daemon */
    close(extra);
    g_assert_true(log_has(&t, "a second vhost-user connection: refused"));
    uint64_t f;
    FE_OK(t.fe, vu_fe_get_u64(t.fe, VU_GET_FEATURES, &f));
    teardown(&t);
}

/* Restart the server (and its guest driver) on the same paths. */
static void server_restart(T *t)
{
    char *bin = itest_bin("server");
    char *argv[] = { bin, "--listen", t->env.sock, "--device-host", "local", "--local-bus",
                     t->env.local_bus, "--mgmt", t->env.mgmt, "--log-level", "debug", NULL };
    t->env.server_pid = spawn_logged(t->env.dir, argv, t->env.server_log);
    g_free(bin);
    gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    JsonNode *n;
    while (!(n = itest_server_status_try(&t->env))) {
        g_assert_true(g_get_monotonic_time() < deadline);
        g_usleep(10000);
    }
    json_node_unref(n);
    itest_start_guestd(&t->env);
}

/* The server dies while QEMU's device runs: the daemon reconnects and registers the
 * running device again (memory, features, device). */
static void test_server_restart(void)
{
    T t;
    setup(&t);
    fe_up(&t);
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered"));

    itest_kill_guestd(&t.env);
    kill(t.env.server_pid, SIGKILL);
    waitpid(t.env.server_pid, NULL, 0);
    t.env.server_pid = 0;
    wait_log(&t, "lost the connection to the vhost-pci server");
    server_restart(&t);
    JsonNode *st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered again");
    assert_registered(&t, st);
    json_node_unref(st);
    g_assert_true(log_has(&t, "the frontend's device is running: registering it with the device VM again"));
    /* Bounded noise: one warning for the loss, none per failed attempt. */
    g_assert_cmpuint(log_count(&t, "cannot connect to the vhost-pci server"), <=, 1);

    uint32_t bases[2];
    FE_OK(t.fe, vu_fe_qemu72_stop(t.fe, bases));
    g_assert_cmpuint(bases[0], ==, 3);
    g_assert_cmpuint(bases[1], ==, 9);
    teardown(&t);
}

/* No server when QEMU asks for features: GET_FEATURES is answered after a bound with
 * the protocol's feature set; the device is registered once the server appears. */
static void test_server_late(void)
{
    T t;
    setup_with(&t, NULL, FALSE);
    char *late = g_build_filename(t.env.dir, "late.sock", NULL);
    daemon_start_at(&t, late, NULL);
    t.fe = fe_connect(&t);
    gint64 t0 = g_get_monotonic_time();
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    gint64 waited_ms = (g_get_monotonic_time() - t0) / 1000;
    g_test_message("GET_FEATURES answered after %" G_GINT64_FORMAT " ms", waited_ms);
    g_assert_cmpint(waited_ms, >=, 2500);
    g_assert_cmpint(waited_ms, <, 5000);
    g_assert_cmphex(vu_fe_offered_features(t.fe), ==, VP_NET_FEATURES | F_PROTO);
    g_assert_true(log_has(&t, "no feature answer from the vhost-pci server within"));
    fe_ram(&t);
    FE_OK(t.fe, fe_start(t.fe, vrings));
    wait_log(&t, "the device is registered once the connection is back");

    g_assert_cmpint(symlink(t.env.sock, late), ==, 0); /* the server appears */
    JsonNode *st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered late");
    assert_registered(&t, st);
    json_node_unref(st);
    g_assert_cmpuint(log_count(&t, "cannot connect to the vhost-pci server"), ==, 1);
    g_free(late);
    teardown(&t);
}

/* SIGTERM: DEVICE_INFO(DEL) and its DEL_DONE before exiting (not the server's
 * implicit DEL on a closed connection); the socket file is removed. */
static void test_shutdown(void)
{
    T t;
    setup(&t);
    fe_up(&t);
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered"));
    gint64 t0 = g_get_monotonic_time();
    int st = daemon_stop(&t);
    g_test_message("daemon exited after %" G_GINT64_FORMAT " ms",
                   (g_get_monotonic_time() - t0) / 1000);
    g_assert_true(WIFEXITED(st));
    g_assert_cmpint(WEXITSTATUS(st), ==, 0);
    g_assert_true(log_has(&t, "shutdown: DEVICE_INFO(DEL) of net 1"));
    g_assert_true(log_has(&t, "DEVICE_INFO_ACK(DEL_DONE) for net 1"));
    g_assert_true(log_has(&t, "shutdown: done"));
    g_assert_false(g_file_test(t.vu_path, G_FILE_TEST_EXISTS));
    g_assert_cmpint(vu_fe_wait_closed(t.fe), ==, 0);
    /* The server saw an explicit DEL, then the connection close destroyed the device. */
    json_node_unref(wait_server(&t, (Expect){ 0, 0, 0, 0 }, "device gone"));
    char *slog = NULL;
    g_assert_true(g_file_get_contents(t.env.server_log, &slog, NULL, NULL));
    g_assert_null(strstr(slog, "implicit DEVICE_INFO(DEL)"));
    g_free(slog);
    teardown(&t);
}

/* Wait (bounded) for the daemon to exit by itself; returns the wait status. */
static int daemon_wait_exit(T *t, int timeout_ms)
{
    int st = -1;
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    while (waitpid(t->pid, &st, WNOHANG) != t->pid) {
        if (g_get_monotonic_time() > deadline) {
            dump_daemon_log(t);
            g_error("vhost-pci-client did not exit within %d ms", timeout_ms);
        }
        g_usleep(10000);
    }
    t->pid = 0;
    return st;
}

/* The daemon started with --fd 3 (vhost-user.rst "Backend program conventions"). */
static void daemon_start_fd(T *t, int fd)
{
    char *bin = client_bin();
    char *argv[] = { bin, "--fd", "3", "--server", t->env.sock, "--uuid", t->uuid,
                     "--log-level", "debug", "--ack-timeout", "5", NULL };
    t->pid = spawn_logged_fd(t->env.dir, argv, t->log, fd);
    g_free(bin);
}

/* --fd with a socket connected to QEMU: served, and the daemon exits (after
 * DEVICE_INFO(DEL)) when QEMU closes it. */
static void test_fd_connected(void)
{
    T t;
    setup_with(&t, NULL, FALSE);
    int sv[2];
    vp_test_socketpair(sv);
    daemon_start_fd(&t, sv[1]);
    close(sv[1]);
    t.fe = vu_fe_new(sv[0], 2, NULL, NULL);
    vu_fe_set_timeout(t.fe, TMO);
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    g_assert_cmphex(vu_fe_offered_features(t.fe), ==, VP_NET_FEATURES | F_PROTO);
    fe_ram(&t);
    FE_OK(t.fe, fe_start(t.fe, vrings));
    JsonNode *st = wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered over --fd");
    assert_registered(&t, st);
    json_node_unref(st);
    vu_fe_free(t.fe);
    t.fe = NULL;
    int ws = daemon_wait_exit(&t, TMO);
    g_assert_true(WIFEXITED(ws));
    g_assert_cmpint(WEXITSTATUS(ws), ==, 0);
    g_assert_true(log_has(&t, "nothing more to serve"));
    g_assert_true(log_has(&t, "DEVICE_INFO_ACK(DEL_DONE) for net 1"));
    teardown(&t);
}

/* --fd with a listening socket: connections are accepted as with --socket-path; the
 * socket file is not the daemon's and stays. */
static void test_fd_listening(void)
{
    T t;
    setup_with(&t, NULL, FALSE);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, t.vu_path, sizeof(sa.sun_path));
    g_assert_cmpint(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(listen(lfd, 4), ==, 0);
    daemon_start_fd(&t, lfd);
    close(lfd);
    fe_up(&t);
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered"));
    int ws = daemon_stop(&t);
    g_assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    g_assert_true(g_file_test(t.vu_path, G_FILE_TEST_EXISTS));
    teardown(&t);
}

/* The device VM's driver stops answering: GET_VRING_BASE cannot get positions (QEMU's
 * connection is dropped, so QEMU restores them from the used index), and shutdown's
 * DEVICE_INFO(DEL) wait is bounded by --ack-timeout. */
static void test_device_vm_stuck(void)
{
    T t;
    const char *extra[] = { "--ack-timeout", "1", NULL };
    setup_with(&t, extra, TRUE);
    fe_up(&t);
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered"));
    kill(t.env.guestd_pid, SIGSTOP);
    uint32_t base;
    gint64 t0 = g_get_monotonic_time();
    int r = vu_fe_get_vring_base(t.fe, 0, &base);
    gint64 ms = (g_get_monotonic_time() - t0) / 1000;
    g_test_message("GET_VRING_BASE ended after %" G_GINT64_FORMAT " ms: %d", ms, r);
    g_assert_cmpint(r, ==, -ECONNRESET);
    g_assert_cmpint(ms, >=, 900);
    g_assert_true(log_has(&t, "GET_VRING_BASE 0: the device VM did not hand back the queue "
                              "positions"));
    vu_fe_free(t.fe);
    t.fe = NULL;

    /* A new QEMU connection and start while the driver is still stuck; SIGINT: the
     * DEVICE_INFO(DEL) wait ends after the ack timeout. */
    kill(t.env.guestd_pid, SIGCONT);
    fe_up(&t);
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered again"));
    kill(t.env.guestd_pid, SIGSTOP);
    t0 = g_get_monotonic_time();
    kill(t.pid, SIGINT);
    int ws = daemon_wait_exit(&t, TMO);
    ms = (g_get_monotonic_time() - t0) / 1000;
    g_test_message("SIGINT: exit after %" G_GINT64_FORMAT " ms", ms);
    g_assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    g_assert_cmpint(ms, >=, 900);
    g_assert_cmpint(ms, <, 5000);
    g_assert_true(log_has(&t, "shutdown: DEVICE_INFO(DEL) did not complete"));
    kill(t.env.guestd_pid, SIGCONT);
    teardown(&t);
}

/* ------------------------------ data path, positions ------------------------------ */

/* Split-ring helpers on the frontend's RAM 0 (mapped here), offsets = guest-physical
 * addresses of the low region. */
static void ring_desc(uint8_t *ram, uint64_t desc, unsigned i, uint64_t addr, uint32_t len,
                      uint16_t flags)
{
    uint8_t *d = ram + desc + 16 * i;
    vp_put_le64(d, addr);
    vp_put_le32(d + 8, len);
    vp_put_le16(d + 12, flags);
    vp_put_le16(d + 14, 0);
}

static void ring_reset(uint8_t *ram, const struct vu_fe_vring *v)
{
    vp_put_le16(ram + v->avail_off + 2, v->base);                 /* avail->idx */
    vp_put_le16(ram + v->avail_off + 4 + 2 * v->num, v->base);    /* used_event */
    vp_put_le16(ram + v->used_off + 2, v->base);                  /* used->idx */
}

static void ring_post(uint8_t *ram, const struct vu_fe_vring *v, uint16_t head)
{
    uint16_t idx = vp_get_le16(ram + v->avail_off + 2);
    vp_put_le16(ram + v->avail_off + 4 + 2 * (idx % v->num), head);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* the entry before the index */
    vp_put_le16(ram + v->avail_off + 2, (uint16_t)(idx + 1));
}

static uint16_t ring_used_idx(uint8_t *ram, const struct vu_fe_vring *v)
{
    return __atomic_load_n((uint16_t *)(ram + v->used_off + 2), __ATOMIC_ACQUIRE);
}

/* With a data path (guestd --endpoint loopback) the device VM moves the queues: a
 * frame sent on the transmitq comes back on the receiveq, through the call eventfd
 * the daemon handed over, and GET_VRING_BASE then answers the device VM's positions
 * (DEVICE_INFO_ACK(DEL_DONE)), not the bases QEMU set. */
static void test_datapath_positions(void)
{
    T t;
    memset(&t, 0, sizeof(t));
    ITestOpts o = { .no_guestd = TRUE };
    itest_env_start(&t.env, &o);
    char *gbin = itest_bin("guestd");
    char *gargv[] = { gbin, "--bus", "local", "--local-bus", t.env.local_bus, "--status",
                      t.env.status, "--endpoint", "loopback", "--log-level", "debug", NULL };
    t.env.guestd_pid = spawn_logged(t.env.dir, gargv, t.env.guestd_log);
    g_free(gbin);
    gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    JsonNode *n;
    while (!(n = itest_guestd_status_try(&t.env))) {
        g_assert_true(itest_alive(t.env.guestd_pid) && g_get_monotonic_time() < deadline);
        g_usleep(10000);
    }
    json_node_unref(n);
    t.vu_path = g_build_filename(t.env.dir, "vu.sock", NULL);
    t.log = g_build_filename(t.env.dir, "client.log", NULL);
    g_strlcpy(t.uuid, "11111111-2222-4333-8444-555555555555", sizeof(t.uuid));
    daemon_start_at(&t, NULL, NULL);

    t.fe = fe_connect(&t);
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    fe_ram(&t);
    uint8_t *ram = mmap(NULL, RAM0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                        vu_fe_ram_fd(t.fe, 0), 0);
    g_assert_true(ram != MAP_FAILED);
    const struct vu_fe_vring *rx = &vrings[0], *tx = &vrings[1];
    ring_reset(ram, rx);
    ring_reset(ram, tx);
    FE_OK(t.fe, fe_start(t.fe, vrings));
    json_node_unref(wait_server(&t, (Expect){ 1, 2, HIGH_GPA, 0 }, "registered"));

    /* One 2 KiB receive buffer, one frame (12-byte virtio-net header + 60 bytes). */
    const uint64_t rxbuf = 0x30000, txbuf = 0x31000;
    memset(ram + rxbuf, 0, 2048);
    memset(ram + txbuf, 0, 12);
    for (unsigned i = 0; i < 60; i++)
        ram[txbuf + 12 + i] = (uint8_t)(0xa0 + i);
    ring_desc(ram, rx->desc_off, 0, rxbuf, 2048, 2 /* VRING_DESC_F_WRITE */);
    ring_desc(ram, tx->desc_off, 0, txbuf, 72, 0);
    ring_post(ram, rx, 0);
    ring_post(ram, tx, 0);
    uint64_t one = 1;
    g_assert_cmpint(write(vu_fe_vring_fd(t.fe, VU_SET_VRING_KICK, 1), &one, 8), ==, 8);

    deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    while (ring_used_idx(ram, rx) != rx->base + 1 || ring_used_idx(ram, tx) != tx->base + 1) {
        if (g_get_monotonic_time() > deadline) {
            itest_dump_logs(&t.env);
            g_error("the frame did not come back: used idx rx %u tx %u",
                    ring_used_idx(ram, rx), ring_used_idx(ram, tx));
        }
        g_usleep(5000);
    }
    /* used->ring[base]: descriptor 0, header + frame written */
    g_assert_cmpuint(vp_get_le32(ram + rx->used_off + 4 + 8 * (rx->base % rx->num)), ==, 0);
    g_assert_cmpuint(vp_get_le32(ram + rx->used_off + 8 + 8 * (rx->base % rx->num)), ==, 72);
    g_assert_cmpmem(ram + rxbuf + 12, 60, ram + txbuf + 12, 60);
    g_assert_cmpuint(vp_get_le16(ram + rxbuf + 10), ==, 1); /* num_buffers */
    /* The receive interrupt arrived on the call eventfd QEMU gave the daemon. */
    int call0 = vu_fe_vring_fd(t.fe, VU_SET_VRING_CALL, 0);
    struct pollfd p = { .fd = call0, .events = POLLIN };
    g_assert_cmpint(poll(&p, 1, TMO), ==, 1);
    uint64_t cnt = 0;
    g_assert_cmpint(read(call0, &cnt, 8), ==, 8);
    g_assert_cmpuint(cnt, >=, 1);

    uint32_t bases[2];
    FE_OK(t.fe, vu_fe_qemu72_stop(t.fe, bases));
    g_assert_cmpuint(bases[0], ==, rx->base + 1u);
    g_assert_cmpuint(bases[1], ==, tx->base + 1u);
    g_assert_true(log_has(&t, "GET_VRING_BASE 1: 10 (from DEVICE_INFO_ACK(DEL_DONE))"));
    munmap(ram, RAM0_SIZE);
    teardown(&t);
}

/* ------------------------------ malformed vhost-user input ------------------------------ */

typedef enum { BAD_CLOSES, BAD_FAILS } BadOutcome;

typedef struct {
    const char *name;
    BadOutcome outcome;         /* connection closed, or REPLY_ACK failure */
    const char *reason;         /* text in the daemon's log */
} BadCase;

static int send_hdr(struct vu_fe *fe, uint32_t req, uint32_t flags, uint32_t size,
                    const void *payload, uint32_t plen, const int *fds, unsigned nfds)
{
    uint8_t buf[VU_HDR_SIZE + 64];
    vp_put_le32(buf, req);
    vp_put_le32(buf + 4, flags | VU_FLAG_VERSION);
    vp_put_le32(buf + 8, size);
    g_assert_cmpuint(plen, <=, 64);
    if (plen)
        memcpy(buf + VU_HDR_SIZE, payload, plen);
    return vu_fe_send_raw(fe, buf, VU_HDR_SIZE + plen, fds, nfds);
}

static void bad_send(guint i, struct vu_fe *fe)
{
    int efd[2] = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC) };
    uint8_t p[40] = { 0 };
    switch (i) {
    case 0: /* truncated header: 6 of 12 bytes, then EOF */
        FE_OK(fe, vu_fe_send_raw(fe, "\x01\x00\x00\x00\x01\x00", 6, NULL, 0));
        shutdown(vu_fe_sock(fe), SHUT_WR);
        break;
    case 1: /* a header announcing 1 MiB of payload */
        FE_OK(fe, send_hdr(fe, VU_SET_FEATURES, 0, 1 << 20, NULL, 0, NULL, 0));
        break;
    case 2: /* SET_VRING_NUM of queue 70 (no frontend has that many), verdict requested */
        vp_put_le32(p, 70);
        vp_put_le32(p + 4, 256);
        FE_OK(fe, send_hdr(fe, VU_SET_VRING_NUM, VU_FLAG_NEED_REPLY, 8, p, 8, NULL, 0));
        break;
    case 3: /* SET_VRING_ADDR of queue 200, no verdict requested */
        vp_put_le32(p, 200);
        FE_OK(fe, send_hdr(fe, VU_SET_VRING_ADDR, 0, 40, p, 40, NULL, 0));
        break;
    case 4: /* SET_VRING_CALL with two fds */
        vp_put_le64(p, 0);
        FE_OK(fe, send_hdr(fe, VU_SET_VRING_CALL, 0, 8, p, 8, efd, 2));
        break;
    case 5: /* ADD_MEM_REG without its fd */
        vp_put_le64(p + 8, 0x1000000);
        vp_put_le64(p + 16, 0x1000);
        FE_OK(fe, send_hdr(fe, VU_ADD_MEM_REG, VU_FLAG_NEED_REPLY, 40, p, 40, NULL, 0));
        break;
    case 6: { /* ADD_MEM_REG whose guest range overflows */
        int ram = vu_fe_ram_fd(fe, 0);
        vp_put_le64(p + 8, 0xfffffffffffff000ULL);
        vp_put_le64(p + 16, 0x2000);
        vp_put_le64(p + 24, 0x7f0000000000ULL);
        FE_OK(fe, send_hdr(fe, VU_ADD_MEM_REG, VU_FLAG_NEED_REPLY, 40, p, 40, &ram, 1));
        break;
    }
    case 7: /* ADD_MEM_REG past the end of its file */
        vp_put_le64(p + 8, 0x1000000);
        vp_put_le64(p + 16, 2 * RAM0_SIZE);
        vp_put_le64(p + 24, 0x7f0000000000ULL);
        {
            int ram = vu_fe_ram_fd(fe, 0);
            FE_OK(fe, send_hdr(fe, VU_ADD_MEM_REG, VU_FLAG_NEED_REPLY, 40, p, 40, &ram, 1));
        }
        break;
    case 8: /* unknown request 99, verdict requested, with an fd */
        FE_OK(fe, send_hdr(fe, 99, VU_FLAG_NEED_REPLY, 8, p, 8, efd, 1));
        break;
    case 9: /* GET_CONFIG: known to vhost-user, not supported here */
        FE_OK(fe, send_hdr(fe, VU_GET_CONFIG, 0, 12, p, 12, NULL, 0));
        break;
    case 10: /* a reply flag on a request */
        FE_OK(fe, send_hdr(fe, VU_GET_FEATURES, VU_FLAG_REPLY, 0, NULL, 0, NULL, 0));
        break;
    }
    vp_close_fds(efd, 2);
}

static const BadCase bad_cases[] = {
    { "truncated header", BAD_CLOSES, "truncated header" },
    { "payload size over the limit", BAD_CLOSES, "over the limit" },
    { "queue index out of range (need_reply)", BAD_FAILS,
      "SET_VRING_NUM: vring index 70 out of range (2 queues, at most 64)" },
    { "queue index out of range", BAD_CLOSES,
      "SET_VRING_ADDR: vring index 200 out of range" },
    { "wrong fd count (2 call fds)", BAD_CLOSES, "SET_VRING_CALL: wrong fd count" },
    { "wrong fd count (ADD_MEM_REG without fd)", BAD_FAILS, "ADD_MEM_REG: wrong fd count" },
    { "region overflow", BAD_FAILS, "overflows" },
    { "region beyond its file", BAD_FAILS, "extends beyond its file" },
    { "unknown request", BAD_FAILS, "unknown request 99" },
    { "unsupported request", BAD_CLOSES, "unsupported request GET_CONFIG" },
    { "reply flag on a request", BAD_CLOSES, "has the REPLY flag set" },
};

static void test_bad_input(void)
{
    T t;
    setup(&t);
    int base = itest_count_fds(t.pid);
    g_assert_cmpint(base, >, 0);
    for (guint i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
        const BadCase *bc = &bad_cases[i];
        g_test_message("bad input %u: %s", i, bc->name);
        struct vu_fe *fe = fe_connect(&t);
        FE_OK(fe, vu_fe_qemu72_init(fe));
        g_assert_cmpint(vu_fe_ram_new(fe, RAM0_SIZE), ==, 0);
        wait_log(&t, "frontend connected");
        /* The daemon now holds the connection and the 4 call/err eventfds of init. */
        itest_wait_fds(t.pid, base + 5, TMO, "after init");
        guint before = log_count(&t, bc->reason);
        bad_send(i, fe);
        if (bc->outcome == BAD_CLOSES) {
            g_assert_cmpint(vu_fe_wait_closed(fe), ==, 0);
        } else {
            g_assert_cmpint(vu_fe_recv_ack(fe, i == 8 ? 99 : i == 2 ? VU_SET_VRING_NUM
                                                              : VU_ADD_MEM_REG), ==, -EIO);
            /* ... and the connection carries on. */
            uint64_t f;
            FE_OK(fe, vu_fe_get_u64(fe, VU_GET_FEATURES, &f));
            g_assert_cmphex(f, ==, VP_NET_FEATURES | F_PROTO);
            itest_wait_fds(t.pid, base + 5, TMO, "rejected request's fds closed");
        }
        gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
        while (log_count(&t, bc->reason) <= before) {
            if (g_get_monotonic_time() > deadline) {
                dump_daemon_log(&t);
                g_error("bad input %u (%s): no \"%s\" in the daemon's log", i, bc->name,
                        bc->reason);
            }
            g_usleep(10000);
        }
        vu_fe_free(fe);
        g_assert_true(itest_alive(t.pid));
        itest_wait_fds(t.pid, base, TMO, bc->name);
    }
    teardown(&t);
}

/* ------------------------------ renegotiation, scripted server ------------------------------ */

/* Read one message from the daemon (bounded); returns its type. */
static guint16 fake_read(int fd, struct vp_msg *msg)
{
    vp_error err = { "" };
    int r = vp_msg_recv(fd, msg, TMO, &err);
    if (r < 0)
        g_error("scripted server: read: %d %s", r, err.msg);
    return msg->hdr.type;
}

static void fake_ack(int fd, const struct vp_msg *req, guint16 type, const struct vp_ack *ack)
{
    struct vp_sock_hdr h = req->hdr;
    g_assert_cmpint(vp_send_ack(fd, type, &h, ack), ==, 0);
}

/* A daemon (@extra arguments) whose vhost-pci server is this program. Returns the
 * listening socket; *sfd is the daemon's connection, its connect-time FEATURE_BITS
 * answered with everything offered accepted. */
static int fake_server_start(T *t, const char *const *extra, int *sfd)
{
    memset(t, 0, sizeof(*t));
    GError *e = NULL;
    t->env.dir = g_dir_make_tmp("vp-itest-XXXXXX", &e);
    g_assert_no_error(e);
    t->vu_path = g_build_filename(t->env.dir, "vu.sock", NULL);
    t->log = g_build_filename(t->env.dir, "client.log", NULL);
    t->env.sock = g_build_filename(t->env.dir, "fake.sock", NULL);
    t->env.mgmt = g_build_filename(t->env.dir, "none", NULL);
    g_strlcpy(t->uuid, "0f0e0d0c-0b0a-4908-8706-050403020100", sizeof(t->uuid));

    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, t->env.sock, sizeof(sa.sun_path));
    g_assert_cmpint(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(listen(lfd, 4), ==, 0);
    daemon_start_at(t, NULL, extra);
    *sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    g_assert_cmpint(*sfd, >=, 0);

    /* Connect-time FEATURE_BITS: accept everything offered. */
    struct vp_msg msg;
    g_assert_cmpuint(fake_read(*sfd, &msg), ==, VP_MSG_FEATURE_BITS);
    uint64_t bits = 0;
    g_assert_cmpint(vp_decode_feature_bits(&msg, &bits, NULL), ==, 0);
    g_assert_cmphex(bits, ==, VP_NET_FEATURES);
    struct vp_ack ack;
    memset(&ack, 0, sizeof(ack));
    ack.feature_bits = bits;
    fake_ack(*sfd, &msg, VP_MSG_FEATURE_BITS_ACK, &ack);
    vp_msg_clear(&msg);
    return lfd;
}

/* Stop the daemon (it must exit 0 with no sanitizer report) and clean up. */
static void fake_server_stop(T *t, int lfd, int sfd)
{
    vu_fe_free(t->fe);
    t->fe = NULL;
    int st = daemon_stop(t);
    g_assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (g_test_failed() || g_getenv("VP_TEST_SHOW_LOGS"))
        dump_daemon_log(t);
    g_assert_false(log_has(t, "Sanitizer") || log_has(t, "runtime error:"));
    if (sfd >= 0)
        close(sfd);
    close(lfd);
    unlink(t->env.sock);
    unlink(t->log);
    rmdir(t->env.dir);
    g_free(t->env.dir);
    g_free(t->env.sock);
    g_free(t->env.mgmt);
    g_free(t->vu_path);
    g_free(t->log);
}

/* What the scripted server does with the next MEMORY_INFO. */
typedef enum { FS_DONE, FS_FAIL, FS_SILENT, FS_CLOSE } FakeAction;

typedef struct {
    int sfd;
    FakeAction action;
    const char *reason;         /* FS_FAIL */
    guint handled;              /* MEMORY_INFOs seen */
    uint32_t last_op;           /* VP_OP_ADD / VP_OP_DEL of the last one */
    uint64_t last_gpa;
} FakeSrv;

/* The frontend's pump: while it waits for QEMU's REPLY_ACK, the scripted server
 * answers the daemon's MEMORY_INFO (same thread, so no blocking read here). */
static void fake_pump(void *opaque)
{
    FakeSrv *f = opaque;
    struct pollfd p = { .fd = f->sfd, .events = POLLIN };
    if (f->sfd < 0 || poll(&p, 1, 1) <= 0)
        return;
    struct vp_msg msg;
    g_assert_cmpuint(fake_read(f->sfd, &msg), ==, VP_MSG_MEMORY_INFO);
    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    g_assert_cmpint(vp_decode_memory_info(&msg, &mi, NULL), ==, 0);
    g_assert_cmpuint(mi.nregions, ==, 1);
    f->last_op = mi.op;
    f->last_gpa = mi.regions[0].gpa;
    vp_memory_info_close_fds(&mi);
    f->handled++;
    struct vp_ack ack;
    memset(&ack, 0, sizeof(ack));
    bool add = mi.op == VP_OP_ADD;
    switch (f->action) {
    case FS_DONE:
        ack.result = add ? VP_ACK_ADD_DONE : VP_ACK_DEL_DONE;
        fake_ack(f->sfd, &msg, VP_MSG_MEMORY_INFO_ACK, &ack);
        break;
    case FS_FAIL:
        ack.result = add ? VP_ACK_ADD_FAIL : VP_ACK_DEL_FAIL;
        g_strlcpy(ack.reason, f->reason, sizeof(ack.reason));
        fake_ack(f->sfd, &msg, VP_MSG_MEMORY_INFO_ACK, &ack);
        break;
    case FS_SILENT:
        break;
    case FS_CLOSE:
        close(f->sfd);
        f->sfd = -1;
        break;
    }
    vp_msg_clear(&msg);
}

/* The device VM's driver accepts less than QEMU negotiated: the daemon confirms the
 * accepted set with FEATURE_BITS_ACK and makes QEMU reconnect, offering only it. */
static void test_renegotiation(void)
{
    T t;
    FakeSrv f = { .sfd = -1, .action = FS_DONE };
    int lfd = fake_server_start(&t, NULL, &f.sfd);
    int sfd = f.sfd;
    struct vp_msg msg;
    uint64_t bits = 0;
    struct vp_ack ack;

    int fd = try_connect(t.vu_path);
    g_assert_cmpint(fd, >=, 0);
    t.fe = vu_fe_new(fd, 2, fake_pump, &f);
    vu_fe_set_timeout(t.fe, TMO);
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    g_assert_cmphex(vu_fe_offered_features(t.fe), ==, VP_NET_FEATURES | F_PROTO);
    fe_ram(&t);
    /* The memory goes to the server as QEMU adds it (answered by the pump). */
    FE_OK(t.fe, fe_start(t.fe, vrings));
    g_assert_cmpuint(f.handled, ==, 2);
    f.sfd = -1; /* the rest is read here */

    /* The handshake: MEMORY_INFO(ADD), FEATURE_BITS(F_GUEST), DEVICE_INFO(ADD). */
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_MEMORY_INFO);
    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    g_assert_cmpint(vp_decode_memory_info(&msg, &mi, NULL), ==, 0);
    g_assert_cmpuint(mi.nregions, ==, 2);
    vp_memory_info_close_fds(&mi);
    memset(&ack, 0, sizeof(ack));
    fake_ack(sfd, &msg, VP_MSG_MEMORY_INFO_ACK, &ack);
    vp_msg_clear(&msg);

    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_FEATURE_BITS);
    g_assert_cmpint(vp_decode_feature_bits(&msg, &bits, NULL), ==, 0);
    g_assert_cmphex(bits, ==, F_GUEST);
    uint64_t fb_seq = msg.hdr.seq;
    memset(&ack, 0, sizeof(ack));
    ack.feature_bits = F_GUEST & ~(1ULL << VP_VIRTIO_NET_F_MRG_RXBUF); /* the driver: less */
    fake_ack(sfd, &msg, VP_MSG_FEATURE_BITS_ACK, &ack);
    vp_msg_clear(&msg);

    /* DEVICE_INFO(ADD) was sent with the others; then the confirmation. */
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_DEVICE_INFO);
    struct vp_msg dev_msg = msg;
    struct vp_device_info di;
    vp_device_info_init(&di);
    g_assert_cmpint(vp_decode_device_info(&dev_msg, &di, NULL), ==, 0);
    g_assert_cmpuint(di.nvirtqs, ==, 2);
    vp_device_info_close_fds(&di);
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_FEATURE_BITS_ACK);
    g_assert_cmpuint(msg.hdr.seq, ==, fb_seq);
    struct vp_ack conf;
    g_assert_cmpint(vp_decode_ack(&msg, &conf, NULL), ==, 0);
    g_assert_cmphex(conf.feature_bits, ==, F_GUEST & ~(1ULL << VP_VIRTIO_NET_F_MRG_RXBUF));
    vp_msg_clear(&msg);
    memset(&ack, 0, sizeof(ack));
    fake_ack(sfd, &dev_msg, VP_MSG_DEVICE_INFO_ACK, &ack);
    vp_msg_clear(&dev_msg);

    /* QEMU is made to reconnect; the daemon tells the device VM it is gone. */
    g_assert_cmpint(vu_fe_wait_closed(t.fe), ==, 0);
    g_assert_true(log_has(&t, "feature renegotiation (spec 1.5.1.1)"));
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_DEVICE_INFO);
    vp_device_info_init(&di);
    g_assert_cmpint(vp_decode_device_info(&msg, &di, NULL), ==, 0);
    g_assert_cmpuint(di.op, ==, VP_OP_DEL);
    memset(&ack, 0, sizeof(ack));
    ack.result = VP_ACK_DEL_DONE;
    fake_ack(sfd, &msg, VP_MSG_DEVICE_INFO_ACK, &ack);
    vp_msg_clear(&msg);
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_MEMORY_INFO);
    vp_msg_clear(&msg);

    /* On the new connection QEMU is offered only what the driver accepted. */
    shutdown(vu_fe_sock(t.fe), SHUT_RDWR);
    vu_fe_reconnect(t.fe, try_connect(t.vu_path));
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    g_assert_cmphex(vu_fe_offered_features(t.fe), ==,
                    (VP_NET_FEATURES & ~(1ULL << VP_VIRTIO_NET_F_MRG_RXBUF)) | F_PROTO);

    fake_server_stop(&t, lfd, sfd);
}

/* ------------------------------ hot-plug verdicts, scripted server ------------------------------ */

/* QEMU's REPLY_ACK to a hot-add / hot-remove is the server's verdict: ADD_DONE and
 * DEL_DONE succeed; ADD_FAIL and DEL_FAIL (the reason logged), no answer within
 * --ack-timeout, and a lost server connection fail. */
static void test_hotplug_verdicts(void)
{
    T t;
    const char *extra[] = { "--ack-timeout", "1", NULL };
    FakeSrv f = { .sfd = -1 };
    int lfd = fake_server_start(&t, extra, &f.sfd);
    struct vp_msg msg;
    struct vp_ack ack;

    int fd = try_connect(t.vu_path);
    g_assert_cmpint(fd, >=, 0);
    t.fe = vu_fe_new(fd, 2, fake_pump, &f);
    vu_fe_set_timeout(t.fe, TMO);
    FE_OK(t.fe, vu_fe_qemu72_init(t.fe));
    fe_ram(&t);
    f.action = FS_DONE; /* the memory as QEMU adds it */
    FE_OK(t.fe, fe_start(t.fe, vrings));
    g_assert_cmpuint(f.handled, ==, 2);
    int sfd = f.sfd;
    f.sfd = -1; /* the handshake is read here */
    /* The handshake, all accepted. */
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_MEMORY_INFO);
    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    g_assert_cmpint(vp_decode_memory_info(&msg, &mi, NULL), ==, 0);
    vp_memory_info_close_fds(&mi);
    memset(&ack, 0, sizeof(ack));
    fake_ack(sfd, &msg, VP_MSG_MEMORY_INFO_ACK, &ack);
    vp_msg_clear(&msg);
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_FEATURE_BITS);
    ack.feature_bits = F_GUEST;
    fake_ack(sfd, &msg, VP_MSG_FEATURE_BITS_ACK, &ack);
    vp_msg_clear(&msg);
    g_assert_cmpuint(fake_read(sfd, &msg), ==, VP_MSG_DEVICE_INFO);
    struct vp_device_info di;
    vp_device_info_init(&di);
    g_assert_cmpint(vp_decode_device_info(&msg, &di, NULL), ==, 0);
    vp_device_info_close_fds(&di);
    memset(&ack, 0, sizeof(ack));
    ack.device_type = di.device_type;
    ack.device_id = di.device_id;
    fake_ack(sfd, &msg, VP_MSG_DEVICE_INFO_ACK, &ack);
    vp_msg_clear(&msg);
    wait_log(&t, "DEVICE_INFO_ACK(ADD_DONE)");

    int ram1 = vu_fe_ram_new(t.fe, 2 * MiB);
    int dimm = vu_fe_region_new(t.fe, (unsigned)ram1, 0, HOTPLUG_GPA, 2 * MiB);
    f.sfd = sfd;
    f.handled = 0;

    /* ADD_FAIL: a failure REPLY_ACK, the server's reason in the log. */
    f.action = FS_FAIL;
    f.reason = "scripted: no room for this window";
    g_assert_cmpint(vu_fe_add_mem_reg(t.fe, dimm), ==, -EIO);
    g_assert_cmpuint(vu_fe_last_ack(t.fe), ==, 1);
    g_assert_cmpuint(f.handled, ==, 1);
    g_assert_cmpuint(f.last_op, ==, VP_OP_ADD);
    g_assert_cmphex(f.last_gpa, ==, HOTPLUG_GPA);
    g_assert_true(log_has(&t, "hot-add of region gpa 0x140000000 size 0x200000 failed: "));
    g_assert_true(log_has(&t, "scripted: no room for this window (the frontend gets a failure reply"));

    /* ADD_DONE: success; QEMU's second vhost_dev (queues=2) repeats it: no request. */
    f.action = FS_DONE;
    vu_fe_set_mem_repeat(t.fe, 2);
    FE_OK(t.fe, vu_fe_add_mem_reg(t.fe, dimm));
    g_assert_cmpuint(vu_fe_last_ack(t.fe), ==, 0);
    g_assert_cmpuint(f.handled, ==, 2);
    vu_fe_set_mem_repeat(t.fe, 1);

    /* DEL_FAIL: failure, the region stays (a second REM_MEM_REG asks again). */
    f.action = FS_FAIL;
    f.reason = "scripted: region busy";
    g_assert_cmpint(vu_fe_rem_mem_reg(t.fe, dimm, false), ==, -EIO);
    g_assert_cmpuint(f.handled, ==, 3);
    g_assert_cmpuint(f.last_op, ==, VP_OP_DEL);
    g_assert_true(log_has(&t, "hot-remove of region gpa 0x140000000 size 0x200000 failed: "));
    g_assert_true(log_has(&t, "scripted: region busy (the frontend gets a failure reply"));
    f.action = FS_DONE;
    FE_OK(t.fe, vu_fe_rem_mem_reg(t.fe, dimm, false));
    g_assert_cmpuint(f.handled, ==, 4);
    g_assert_true(log_has(&t, "hot-removed region gpa 0x140000000 size 0x200000: "
                          "MEMORY_INFO_ACK(DEL_DONE)"));

    /* No answer within --ack-timeout 1: failure. */
    dimm = vu_fe_region_new(t.fe, (unsigned)ram1, 0, HOTPLUG_GPA, 2 * MiB);
    f.action = FS_SILENT;
    gint64 t0 = g_get_monotonic_time();
    g_assert_cmpint(vu_fe_add_mem_reg(t.fe, dimm), ==, -EIO);
    g_assert_cmpint(g_get_monotonic_time() - t0, >=, 900 * 1000);
    g_assert_cmpuint(f.handled, ==, 5);
    g_assert_cmpuint(log_count(&t, "hot-add of region gpa 0x140000000 size 0x200000 failed"),
                     ==, 2);

    /* The server connection drops while QEMU waits: failure. */
    f.action = FS_CLOSE;
    g_assert_cmpint(vu_fe_add_mem_reg(t.fe, dimm), ==, -EIO);
    g_assert_cmpuint(f.handled, ==, 6);
    g_assert_cmpuint(log_count(&t, "hot-add of region gpa 0x140000000 size 0x200000 failed"),
                     ==, 3);
    /* QEMU's connection carries on. */
    uint64_t feat;
    FE_OK(t.fe, vu_fe_get_u64(t.fe, VU_GET_FEATURES, &feat));
    g_assert_true(itest_alive(t.pid));
    fake_server_stop(&t, lfd, f.sfd);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    signal(SIGPIPE, SIG_IGN);
    g_test_add_func("/client-daemon/options", test_options);
    g_test_add_func("/client-daemon/qemu72-sequence", test_qemu72_sequence);
    g_test_add_func("/client-daemon/memory-hotplug", test_memory_hotplug);
    g_test_add_func("/client-daemon/memory-refusal-log", test_memory_refusal_log);
    g_test_add_func("/client-daemon/frontend-reconnect", test_frontend_reconnect);
    g_test_add_func("/client-daemon/server-restart", test_server_restart);
    g_test_add_func("/client-daemon/server-late", test_server_late);
    g_test_add_func("/client-daemon/shutdown", test_shutdown);
    g_test_add_func("/client-daemon/fd-connected", test_fd_connected);
    g_test_add_func("/client-daemon/fd-listening", test_fd_listening);
    g_test_add_func("/client-daemon/device-vm-stuck", test_device_vm_stuck);
    g_test_add_func("/client-daemon/datapath-positions", test_datapath_positions);
    g_test_add_func("/client-daemon/bad-input", test_bad_input);
    g_test_add_func("/client-daemon/renegotiation", test_renegotiation);
    g_test_add_func("/client-daemon/hotplug-verdicts", test_hotplug_verdicts);
    return g_test_run();
}
