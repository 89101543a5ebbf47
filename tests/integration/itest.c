/*
 * itest.c - helpers of the host-only integration tests (itest.h).
 */
#include "itest.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------ children ------------------------------ */

/* Children to kill if the test aborts (assertion failure): SIGABRT / SIGTRAP. */
#define MAX_CHILDREN 8
static volatile pid_t children[MAX_CHILDREN];

static void track(pid_t pid, gboolean on)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (on && children[i] == 0) {
            children[i] = pid;
            return;
        }
        if (!on && children[i] == pid) {
            children[i] = 0;
            return;
        }
    }
}

/* Where the current test's logs are, told on stderr when the test aborts (the
 * temp dir is not removed then). */
static char abort_note[600];

/* The test's own clean-up when it aborts (itest_on_abort). */
static void (*abort_hook)(void);

void itest_on_abort(void (*fn)(void))
{
    abort_hook = fn;
}

static void on_fatal_signal(int sig)
{
    if (abort_hook) {
        void (*fn)(void) = abort_hook;
        abort_hook = NULL;
        fn();
    }
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] > 0)
            kill(children[i], SIGKILL);
    }
    if (abort_note[0] && write(2, abort_note, strlen(abort_note)) < 0)
        abort_note[0] = 0;
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_handlers(void)
{
    static gboolean done;
    if (done)
        return;
    done = TRUE;
    struct sigaction sa = { .sa_handler = on_fatal_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGTRAP, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);
    /* A server that dies while we write to it must not kill the test. */
    signal(SIGPIPE, SIG_IGN);
}

static void child_setup(gpointer data)
{
    (void)data;
    /* Die with the test program, whatever happens to it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

char *itest_bin(const char *which)
{
    const char *env = g_str_equal(which, "server") ? "VP_SERVER_BIN"
                    : g_str_equal(which, "guestd") ? "VP_GUESTD_BIN"
                    : g_str_equal(which, "client") ? "VP_CLIENT_BIN" : "VP_CTL_BIN";
    const char *rel = g_str_equal(which, "server") ? "server/vhost-pci-server"
                    : g_str_equal(which, "guestd") ? "guest-driver/vhost-pci-guestd"
                    : g_str_equal(which, "client") ? "client/vhost-pci-client"
                    : "tools/vhost-pci-ctl";
    if (g_getenv(env))
        return g_strdup(g_getenv(env));
    char *exe = g_file_read_link("/proc/self/exe", NULL);
    g_assert_nonnull(exe);
    /* $(B)/tests/integration/test-x -> $(B) */
    char *d1 = g_path_get_dirname(exe), *d2 = g_path_get_dirname(d1),
         *b = g_path_get_dirname(d2);
    char *path = g_build_filename(b, rel, NULL);
    g_free(exe);
    g_free(d1);
    g_free(d2);
    g_free(b);
    return path;
}

char *itest_guestd_endpoint_wrapper(const char *dir, const char *endpoint)
{
    char *real = itest_bin("guestd");
    char *wrapper = g_build_filename(dir, "guestd", NULL);
    char *script = g_strdup_printf("#!/bin/sh\nexec '%s' \"$@\" --endpoint '%s'\n", real,
                                   endpoint);
    g_assert_true(g_file_set_contents(wrapper, script, -1, NULL));
    g_assert_cmpint(chmod(wrapper, 0755), ==, 0);
    g_free(real);
    g_free(script);
    return wrapper;
}

static void stop_child(GPid *pidp, const char *name);

GPid itest_spawn(ITestEnv *env, char **argv, const char *log)
{
    return itest_spawn_stdin(env, argv, log, NULL);
}

GPid itest_spawn_stdin(ITestEnv *env, char **argv, const char *log, int *stdin_fd)
{
    install_handlers();
    if (argv[0][0] == '/' && !g_file_test(argv[0], G_FILE_TEST_IS_EXECUTABLE))
        g_error("%s does not exist: build it first (or set VP_SERVER_BIN / VP_GUESTD_BIN)",
                argv[0]);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    g_assert_cmpint(fd, >=, 0);
    GPid pid = 0;
    GError *e = NULL;
    char *cmd = g_strjoinv(" ", argv);
    g_test_message("spawn: %s", cmd);
    g_free(cmd);
    if (!g_spawn_async_with_pipes_and_fds(env->dir, (const char *const *)argv, NULL,
                                          G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
                                          child_setup, NULL, -1, fd, fd, NULL, NULL, 0, &pid,
                                          stdin_fd, NULL, NULL, &e))
        g_error("spawn %s: %s", argv[0], e->message);
    close(fd);
    track(pid, TRUE);
    return pid;
}

void itest_stop(GPid *pid, const char *name)
{
    stop_child(pid, name);
}

int itest_kill9(GPid *pidp)
{
    GPid pid = *pidp;
    int st = 0;
    if (pid <= 0)
        return 0;
    *pidp = 0;
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    track(pid, FALSE);
    return st;
}


gboolean itest_alive(GPid pid)
{
    if (pid <= 0)
        return FALSE;
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == 0)
        return TRUE;
    if (r == pid) {
        track(pid, FALSE);
        if (WIFSIGNALED(st))
            g_test_message("process %d died of signal %d (%s)", pid, WTERMSIG(st),
                           g_strsignal(WTERMSIG(st)));
        else
            g_test_message("process %d exited with status %d", pid, WEXITSTATUS(st));
    }
    return FALSE;
}

/* SIGTERM, up to 3 s, then SIGKILL; always reaps. */
static void stop_child(GPid *pidp, const char *name)
{
    GPid pid = *pidp;
    if (pid <= 0)
        return;
    *pidp = 0;
    if (kill(pid, SIGTERM) == 0) {
        for (int i = 0; i < 300; i++) {
            int st;
            pid_t r = waitpid(pid, &st, WNOHANG);
            if (r == pid) {
                if (WIFSIGNALED(st))
                    g_test_message("%s (pid %d) ended by signal %d", name, pid, WTERMSIG(st));
                track(pid, FALSE);
                return;
            }
            if (r < 0)
                break;
            g_usleep(10000);
        }
        g_test_message("%s (pid %d) ignored SIGTERM for 3 s: SIGKILL", name, pid);
        kill(pid, SIGKILL);
    }
    waitpid(pid, NULL, 0);
    track(pid, FALSE);
}

static void dump_file(const char *label, const char *path)
{
    char *text = NULL;
    if (path && g_file_get_contents(path, &text, NULL, NULL)) {
        gsize len = strlen(text);
        /* The tail is what matters; keep the output bounded. */
        const char *from = len > 12000 ? text + len - 12000 : text;
        g_test_message("----- %s (%s) -----\n%s\n----- end of %s -----", label, path,
                       from, label);
        g_free(text);
    }
}

void itest_dump_logs(ITestEnv *env)
{
    dump_file("server log", env->server_log);
    dump_file("guestd log", env->guestd_log);
}

static gboolean log_has_sanitizer_report(const char *path)
{
    char *text = NULL;
    gboolean bad = FALSE;
    if (path && g_file_get_contents(path, &text, NULL, NULL)) {
        bad = strstr(text, "AddressSanitizer") || strstr(text, "LeakSanitizer") ||
              strstr(text, "runtime error:");
        g_free(text);
    }
    return bad;
}

static void wait_answering(ITestEnv *env, gboolean guestd)
{
    for (int i = 0; i < ITEST_TIMEOUT_MS / 10; i++) {
        GPid pid = guestd ? env->guestd_pid : env->server_pid;
        if (!itest_alive(pid)) {
            itest_dump_logs(env);
            g_error("%s exited while starting", guestd ? "vhost-pci-guestd" : "vhost-pci-server");
        }
        JsonNode *n = guestd ? itest_guestd_status_try(env) : itest_server_status_try(env);
        if (n) {
            json_node_unref(n);
            return;
        }
        g_usleep(10000);
    }
    itest_dump_logs(env);
    g_error("%s does not answer its status socket", guestd ? "vhost-pci-guestd" : "vhost-pci-server");
}

void itest_start_guestd(ITestEnv *env)
{
    char *bin = itest_bin("guestd");
    char *argv[] = { bin, "--bus", "local", "--local-bus",
                     env->guestd_bus ? env->guestd_bus : env->local_bus, "--status",
                     env->status, "--log-level", "debug", NULL };
    env->guestd_pid = itest_spawn(env, argv, env->guestd_log);
    g_free(bin);
    wait_answering(env, TRUE);
}

void itest_kill_guestd(ITestEnv *env)
{
    if (env->guestd_pid > 0) {
        kill(env->guestd_pid, SIGKILL);
        waitpid(env->guestd_pid, NULL, 0);
        track(env->guestd_pid, FALSE);
        env->guestd_pid = 0;
    }
}

void itest_env_start(ITestEnv *env, const ITestOpts *opts)
{
    memset(env, 0, sizeof(*env));
    GError *e = NULL;
    env->dir = g_dir_make_tmp("vp-itest-XXXXXX", &e);
    g_assert_no_error(e);
    env->sock = g_build_filename(env->dir, "server.sock", NULL);
    env->local_bus = g_build_filename(env->dir, "local-bus.sock", NULL);
    env->mgmt = g_build_filename(env->dir, "mgmt.sock", NULL);
    env->status = g_build_filename(env->dir, "guestd.sock", NULL);
    env->server_log = g_build_filename(env->dir, "server.log", NULL);
    env->guestd_log = g_build_filename(env->dir, "guestd.log", NULL);
    g_snprintf(abort_note, sizeof(abort_note),
               "itest: test aborted; the server/guestd logs are kept in %s\n", env->dir);

    itest_start_server(env, opts);
    if (!opts || !opts->no_guestd)
        itest_start_guestd(env);
}

void itest_start_server(ITestEnv *env, const ITestOpts *opts)
{
    char *bin = itest_bin("server");
    GPtrArray *argv = g_ptr_array_new();
    const char *base[] = { bin, "--listen", env->sock, "--device-host", "local",
                           "--local-bus", env->local_bus, "--mgmt", env->mgmt,
                           "--log-level", "debug" };
    for (guint i = 0; i < G_N_ELEMENTS(base); i++)
        g_ptr_array_add(argv, (gpointer)base[i]);
    for (const char *const *a = opts ? opts->server_args : NULL; a && *a; a++)
        g_ptr_array_add(argv, (gpointer)*a);
    g_ptr_array_add(argv, NULL);
    env->server_pid = itest_spawn(env, (char **)argv->pdata, env->server_log);
    g_ptr_array_free(argv, TRUE);
    g_free(bin);
    wait_answering(env, FALSE);
}

static void rm_rf(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    if (!d)
        return;
    const char *name;
    while ((name = g_dir_read_name(d)) != NULL) {
        char *p = g_build_filename(dir, name, NULL);
        unlink(p);
        g_free(p);
    }
    g_dir_close(d);
    rmdir(dir);
}

void itest_env_stop(ITestEnv *env)
{
    if (!env->dir)
        return;
    gboolean failed = FALSE;
    if (env->server_pid > 0 && !itest_alive(env->server_pid)) {
        g_test_message("FAIL: vhost-pci-server is no longer running (crashed?)");
        env->server_pid = 0;
        failed = TRUE;
    }
    if (env->guestd_pid > 0 && !itest_alive(env->guestd_pid)) {
        g_test_message("FAIL: vhost-pci-guestd is no longer running (crashed?)");
        env->guestd_pid = 0;
        failed = TRUE;
    }
    stop_child(&env->guestd_pid, "vhost-pci-guestd");
    stop_child(&env->server_pid, "vhost-pci-server");
    if (log_has_sanitizer_report(env->server_log) || log_has_sanitizer_report(env->guestd_log)) {
        g_test_message("FAIL: a sanitizer reported an error in a child's log");
        failed = TRUE;
    }
    /* g_test_failed() is also TRUE for a skipped test: only dump then. */
    if (failed || g_test_failed())
        itest_dump_logs(env);
    if (failed)
        g_test_fail();
    rm_rf(env->dir);
    abort_note[0] = 0;
    g_free(env->dir);
    g_free(env->sock);
    g_free(env->local_bus);
    g_free(env->mgmt);
    g_free(env->status);
    g_free(env->server_log);
    g_free(env->guestd_log);
    memset(env, 0, sizeof(*env));
}

/* ------------------------------ status ------------------------------ */

GString *itest_read_to_eof(int fd, int timeout_ms, gboolean *eof)
{
    GString *s = g_string_new(NULL);
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000LL;
    *eof = FALSE;
    while (!*eof) {
        gint64 left = (deadline - g_get_monotonic_time()) / 1000;
        if (left <= 0)
            break;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        char buf[65536];
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n > 0)
            g_string_append_len(s, buf, n);
        else
            *eof = TRUE;
    }
    return s;
}

JsonNode *itest_socket_query(const char *path, const char *request, gsize len)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(fd, >=, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return NULL;
    }
    if (send(fd, request, len, MSG_NOSIGNAL) != (gssize)len) {
        close(fd);
        return NULL;
    }
    gboolean eof;
    GString *s = itest_read_to_eof(fd, 2000, &eof);
    close(fd);
    if (!eof || s->len == 0) {
        g_string_free(s, TRUE);
        return NULL;
    }
    JsonParser *p = json_parser_new();
    GError *e = NULL;
    JsonNode *root = NULL;
    if (json_parser_load_from_data(p, s->str, (gssize)s->len, &e))
        root = json_node_copy(json_parser_get_root(p));
    else
        g_test_message("status of %s is not JSON (%s): %s", path, e->message, s->str);
    g_clear_error(&e);
    g_object_unref(p);
    g_string_free(s, TRUE);
    if (root && !JSON_NODE_HOLDS_OBJECT(root)) {
        json_node_unref(root);
        root = NULL;
    }
    return root;
}

/* Connect to @path, send "status\n", read to EOF (2 s bound), parse. */
static JsonNode *query_status(const char *path)
{
    return itest_socket_query(path, "status\n", 7);
}

JsonNode *itest_server_status_try(ITestEnv *env)
{
    return query_status(env->mgmt);
}

JsonNode *itest_server_status(ITestEnv *env)
{
    JsonNode *n = query_status(env->mgmt);
    if (!n) {
        itest_dump_logs(env);
        g_error("vhost-pci-server does not answer on %s", env->mgmt);
    }
    return n;
}

JsonNode *itest_guestd_status_try(ITestEnv *env)
{
    return query_status(env->status);
}

JsonNode *itest_guestd_status(ITestEnv *env)
{
    JsonNode *n = query_status(env->status);
    if (!n) {
        itest_dump_logs(env);
        g_error("vhost-pci-guestd does not answer on %s", env->status);
    }
    return n;
}

static JsonArray *devices_of(JsonNode *status)
{
    JsonObject *o = json_node_get_object(status);
    if (!json_object_has_member(o, "devices"))
        g_error("status document has no \"devices\"");
    return json_object_get_array_member(o, "devices");
}

guint itest_ndevices(JsonNode *status)
{
    return json_array_get_length(devices_of(status));
}

JsonObject *itest_server_device(JsonNode *status, const char *uuid)
{
    JsonArray *a = devices_of(status);
    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonObject *d = json_array_get_object_element(a, i);
        if (json_object_has_member(d, "uuid") &&
            g_ascii_strcasecmp(json_object_get_string_member(d, "uuid"), uuid) == 0)
            return d;
    }
    return NULL;
}

JsonObject *itest_guestd_device(JsonNode *status, gint64 slot)
{
    JsonArray *a = devices_of(status);
    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonObject *d = json_array_get_object_element(a, i);
        if (json_object_has_member(d, "slot") && json_object_get_int_member(d, "slot") == slot)
            return d;
    }
    return NULL;
}

/* Walk a dotted path to its last object and member name. */
static JsonNode *member(JsonObject *o, const char *path)
{
    char **parts = g_strsplit(path, ".", -1);
    JsonNode *n = NULL;
    for (guint i = 0; parts[i]; i++) {
        if (!o || !json_object_has_member(o, parts[i]))
            g_error("status has no member \"%s\" (path %s)", parts[i], path);
        n = json_object_get_member(o, parts[i]);
        o = JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
    }
    g_strfreev(parts);
    return n;
}

gint64 itest_int(JsonObject *o, const char *path)
{
    JsonNode *n = member(o, path);
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
        g_error("status member %s is not an integer", path);
    return json_node_get_int(n);
}

gboolean itest_bool(JsonObject *o, const char *path)
{
    JsonNode *n = member(o, path);
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_BOOLEAN)
        g_error("status member %s is not a boolean", path);
    return json_node_get_boolean(n);
}

static JsonArray *array_member(JsonObject *o, const char *array)
{
    JsonNode *n = member(o, array);
    if (!JSON_NODE_HOLDS_ARRAY(n))
        g_error("status member %s is not an array", array);
    return json_node_get_array(n);
}

guint itest_len(JsonObject *o, const char *array)
{
    return json_array_get_length(array_member(o, array));
}

JsonObject *itest_elem(JsonObject *o, const char *array, guint i)
{
    JsonArray *a = array_member(o, array);
    if (i >= json_array_get_length(a))
        g_error("status array %s has %u elements, wanted [%u]", array,
                json_array_get_length(a), i);
    return json_array_get_object_element(a, i);
}

static void dump_json(const char *label, JsonNode *n)
{
    if (!n) {
        g_test_message("%s: (no answer)", label);
        return;
    }
    char *text = json_to_string(n, TRUE);
    g_test_message("%s:\n%s", label, text);
    g_free(text);
}

void itest_wait_for(ITestEnv *env, ITestCond cond, gpointer data, int timeout_ms,
                    const char *what)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    for (;;) {
        JsonNode *s = itest_server_status_try(env);
        JsonNode *g = env->guestd_pid > 0 ? itest_guestd_status_try(env) : NULL;
        gboolean ok = s && (env->guestd_pid <= 0 || g) && cond(s, g, data);
        if (ok || g_get_monotonic_time() > deadline) {
            if (!ok) {
                dump_json("server status", s);
                dump_json("guestd status", g);
                itest_dump_logs(env);
            }
            if (s)
                json_node_unref(s);
            if (g)
                json_node_unref(g);
            if (!ok)
                g_error("timed out after %d ms waiting for: %s", timeout_ms, what);
            return;
        }
        if (s)
            json_node_unref(s);
        if (g)
            json_node_unref(g);
        g_usleep(20000);
    }
}

int itest_count_fds(GPid pid)
{
    char *path = g_strdup_printf("/proc/%d/fd", pid);
    GDir *d = g_dir_open(path, 0, NULL);
    g_free(path);
    if (!d)
        return -1;
    int n = 0;
    while (g_dir_read_name(d))
        n++;
    g_dir_close(d);
    return n;
}

void itest_wait_fds(GPid pid, int expected, int timeout_ms, const char *what)
{
    int now = -1;
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    do {
        now = itest_count_fds(pid);
        if (now == expected)
            return;
        g_usleep(10000);
    } while (g_get_monotonic_time() < deadline);
    char *cmd = g_strdup_printf("ls -l /proc/%d/fd", pid);
    char *out = NULL;
    g_spawn_command_line_sync(cmd, &out, NULL, NULL, NULL);
    g_test_message("fds of %d now:\n%s", pid, out ? out : "");
    g_free(cmd);
    g_free(out);
    g_error("%s: process %d holds %d fds, expected %d (leak?)", what, pid, now, expected);
}

/* ------------------------------ memory, devices ------------------------------ */

int itest_memfd(gsize size, void **map)
{
    int fd = vp_test_memfd("itest-ram", size, FALSE);
    g_assert_cmpint(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), ==, 0);
    if (map) {
        *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        g_assert_true(*map != MAP_FAILED);
    }
    return fd;
}

void itest_net_device(struct vp_device_info *di, guint64 device_id, guint64 ring_gpa,
                      guint16 lai0, guint16 lai1, const int efds[4])
{
    vp_device_info_init(di);
    di->op = VP_OP_ADD;
    di->device_type = VP_DEV_NET;
    di->device_id = device_id;
    di->nvirtqs = 2;
    for (guint i = 0; i < 2; i++) {
        struct vp_virtq *q = &di->virtqs[i];
        q->index = i;
        q->num = 256;
        q->desc = ring_gpa + i * 0x10000;
        q->avail = q->desc + 0x1000;
        q->used = q->desc + 0x2000;
        q->last_avail_idx = i == 0 ? lai0 : lai1;
        q->kick_fd = efds ? efds[2 * i] : -1;
        q->call_fd = efds ? efds[2 * i + 1] : -1;
    }
}

void itest_set_avail_idx(void *ram, guint64 ram_gpa, guint64 ring_gpa, guint q, guint16 idx)
{
    guint64 avail = ring_gpa + q * 0x10000 + 0x1000, used = avail + 0x1000;
    vp_put_le16((guint8 *)ram + (avail - ram_gpa) + 2, idx); /* avail->idx */
    vp_put_le16((guint8 *)ram + (used - ram_gpa) + 2, idx);  /* used->idx */
}

void itest_eventfds(int efds[4])
{
    for (int i = 0; i < 4; i++) {
        efds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        g_assert_cmpint(efds[i], >=, 0);
    }
}

VpClient *itest_client(ITestEnv *env, const guint8 *uuid)
{
    GError *e = NULL;
    VpClient *c = vp_client_connect(env->sock, uuid, &e);
    g_assert_no_error(e);
    return c;
}

void itest_uuid(VpClient *c, char out[37])
{
    vp_client_get_uuid_string(c, out);
}

char *itest_run_ctl(const char *const *argv, int *status)
{
    char *bin = itest_bin("ctl");
    GPtrArray *a = g_ptr_array_new();
    g_ptr_array_add(a, bin);
    for (const char *const *p = argv; *p; p++)
        g_ptr_array_add(a, (gpointer)*p);
    g_ptr_array_add(a, NULL);
    char *out = NULL;
    GError *e = NULL;
    if (!g_spawn_sync(NULL, (char **)a->pdata, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out,
                      NULL, status, &e))
        g_error("running %s: %s", bin, e->message);
    g_ptr_array_free(a, TRUE);
    g_free(bin);
    return out;
}
