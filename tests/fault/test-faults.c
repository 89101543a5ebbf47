/*
 * test-faults.c - fault injection (issue 12 item 5), host-only, real processes:
 * vhost-pci-server --device-host local, vhost-pci-guestd --bus local --endpoint
 * loopback, and the vhost-pci-client daemon driven by the scripted QEMU 7.2 frontend
 * (tests/integration/vu_frontend.h, played by this program).
 *
 * Two proxies of our own (fault_proxy.h) sit on the links: client daemon <-> server
 * (the vhost-pci socket, "vp") and guestd <-> server (the local bus, "lb"). They
 * number every message, so the steps are enumerated, not sampled: a dry run records
 * the messages of the scenario (the handshake, a memory hot-add and hot-remove, the
 * device stop, the daemon's shutdown), then for every message k of each link the
 * scenario runs again with one fault at k:
 *   kill-client / kill-server / kill-guestd   SIGKILL of that process as message k
 *                                             passes (it is dead before the message is
 *                                             delivered);
 *   hangup                                    the link carrying message k is closed at
 *                                             both ends instead of delivering it.
 * A killed server (and the guestd, which ends when its bus is lost) is restarted at
 * once, as an operator would; the client daemon reconnects by itself.
 * After each fault: the daemon is stopped; the server shows no device (vhost-pci-ctl
 * --json) and the guestd none either; both hold exactly the fds and shared mappings
 * (/proc/PID/fd, /proc/PID/maps) they held before the scenario; no sanitizer report
 * in any log; and a fresh client completes its handshake (and leaves no trace).
 *
 * Transport faults: the whole scenario with the server and the client daemon (and
 * guestd when it is dynamically linked, i.e. under SANITIZE=1) running with
 * tests/fault/faultshim.so (LD_PRELOAD): every send/write on a socket moves at most a
 * few bytes (short writes) and every third socket call fails with EINTR first; and
 * with the proxies delivering every message in fragments of a few bytes, so each
 * receiver sees partial messages.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "fault_proxy.h"
#include "itest.h"
#include "vhost_user.h"
#include "vp_localbus.h"
#include "vu_frontend.h"

#define MiB (1ULL << 20)
#define TMO 10000                 /* bound of every wait for a state, ms */
#define EXIT_TMO 30000            /* bound of a wait for a process to exit: an ASan
                                     build's exit (leak check) on a loaded machine is slow */
#define FE_TMO 6000               /* the frontend's bound (GET_FEATURES waits 2.5 s
                                     for a server that is down) */
#define F_GUEST ((1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF) | \
                 (1ULL << VP_VIRTIO_F_RING_EVENT_IDX))
#define RAM0_SIZE (4 * MiB)
#define HOTPLUG_GPA 0x140000000ULL

static const struct vu_fe_vring vrings[2] = {
    { 256, 0x10000, 0x11000, 0x12000, 3 },
    { 256, 0x20000, 0x21000, 0x22000, 9 },
};

enum chan { VP, LB, NCHAN };
static const char *const chan_name[NCHAN] = { "vp", "lb" };

enum kind { KILL_CLIENT, KILL_SERVER, KILL_GUESTD, HANGUP, NKIND };
static const char *const kind_name[NKIND] = { "kill-client", "kill-server", "kill-guestd",
                                              "hangup" };

/* A step: the @occ-th message of @type going @dir on a link. Steps are named by
 * occurrence, not by position: messages of the two directions (and the ACKs of
 * requests sent back to back) interleave differently from run to run. */
struct recmsg {
    enum fp_dir dir;
    uint32_t type;
    unsigned occ;
};

#define MAX_TYPES 16              /* vp types 0..5, lb types 1..7 */

static struct {
    ITestEnv env;
    char *vp_path, *lb_path;      /* the proxies' sockets */
    struct fault_proxy *fp[NCHAN];
    int s_fds, s_maps, g_fds, g_maps; /* baseline: no device */

    /* Shared with the proxy threads. */
    GMutex lock;
    gboolean recording;
    GArray *rec[NCHAN];           /* struct recmsg, the dry run */
    int armed_chan;               /* -1: nothing armed */
    struct recmsg armed;
    enum kind armed_kind;
    unsigned seen[NCHAN][2][MAX_TYPES]; /* occurrences since arm() */
    unsigned hellos;              /* local bus HELLOs ever (a guestd connected) */
    int fired;
    int fired_chan;               /* the link of the fault that fired */
    pid_t pid_client, pid_server, pid_guestd; /* the victims, 0: none (never a reaped pid) */

    /* The client of the current scenario. */
    char *vu_path, *client_log;
    GPid client;
    gsize log_seen[3];            /* sanitizer scan offsets: server, guestd, client logs */
} w;

/* ------------------------------ processes ------------------------------ */

static const char *type_name(enum chan c, uint32_t type)
{
    static const char *const lb[] = { "?", "HELLO", "PLUG_CONTROL", "PEER_VECTORS",
                                      "PLUG_WINDOW", "UNPLUG_WINDOW", "UNPLUG_CONTROL",
                                      "EJECTED" };
    if (c == VP)
        return vp_msg_type_name(type);
    return type < G_N_ELEMENTS(lb) ? lb[type] : "?";
}

/* Has @pid exited? (Not reaped: waitid WNOWAIT; the whole thread group is gone.) */
static gboolean exited(pid_t pid)
{
    siginfo_t si = { 0 };
    return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == pid;
}

/* Wait (bounded) until the killed @pid has exited: every thread, not only the leader
 * (a SIGKILLed process whose threads still tear down shows as a zombie but is not
 * reapable yet; the machine may be loaded). */
static void wait_dead(pid_t pid)
{
    gint64 t0 = g_get_monotonic_time();
    while (!exited(pid) && g_get_monotonic_time() - t0 < (gint64)EXIT_TMO * 1000)
        g_usleep(500);
    gint64 ms = (g_get_monotonic_time() - t0) / 1000;
    if (ms > 500)
        g_printerr("test-faults: pid %d took %" G_GINT64_FORMAT " ms to exit after SIGKILL\n",
                   pid, ms);
}

static enum fp_action hook(void *opaque, unsigned index, enum fp_dir dir, uint32_t type)
{
    enum chan c = GPOINTER_TO_INT(opaque);
    (void)index;
    g_mutex_lock(&w.lock);
    unsigned occ = type < MAX_TYPES ? ++w.seen[c][dir][type] : 0;
    if (c == LB && type == VP_LB_HELLO)
        w.hellos++;
    if (w.recording)
        g_array_append_val(w.rec[c], ((struct recmsg){ dir, type, occ }));
    gboolean now = w.armed_chan == (int)c && w.armed.dir == dir && w.armed.type == type &&
                   w.armed.occ == occ;
    pid_t victim = 0;
    if (now) {
        w.armed_chan = -1;        /* once */
        victim = w.armed_kind == KILL_CLIENT ? w.pid_client
               : w.armed_kind == KILL_SERVER ? w.pid_server
               : w.armed_kind == KILL_GUESTD ? w.pid_guestd : 0;
    }
    enum kind kind = w.armed_kind;
    g_mutex_unlock(&w.lock);
    if (!now)
        return FP_FORWARD;
    if (victim > 0) {
        kill(victim, SIGKILL);
        wait_dead(victim);
    }
    /* Only now: the test's recovery must see the victim dead. */
    g_mutex_lock(&w.lock);
    w.fired = 1;
    w.fired_chan = c;
    g_mutex_unlock(&w.lock);
    return kind == HANGUP ? FP_HANGUP : FP_FORWARD;
}

static gboolean fired(void)
{
    g_mutex_lock(&w.lock);
    gboolean f = w.fired;
    g_mutex_unlock(&w.lock);
    return f;
}

/* Start the guestd and wait until its HELLO went through the proxy (so that it does
 * not land in a later scenario's steps). */
static void guestd_start(void)
{
    g_mutex_lock(&w.lock);
    unsigned before = w.hellos;
    g_mutex_unlock(&w.lock);
    itest_start_guestd(&w.env);
    for (int i = 0; i < TMO / 2; i++) {
        g_mutex_lock(&w.lock);
        gboolean seen = w.hellos != before;
        g_mutex_unlock(&w.lock);
        if (seen)
            return;
        g_usleep(2000);
    }
    g_error("the guestd's HELLO never passed the local bus proxy");
}

/* Wait (bounded) until the guestd has exited after losing its bus (@why: how it was
 * lost): it logs "bus lost ... shutting down" and ends, a sanitized one only after its
 * leak check, which takes seconds on a loaded machine. Only a gone guestd is
 * restarted by ensure_up(); one that outlives its bus is a failure. */
static void wait_guestd_gone(const char *why)
{
    pid_t pid = w.env.guestd_pid;
    gint64 t0 = g_get_monotonic_time();
    while (pid > 0 && !exited(pid)) {
        if (g_get_monotonic_time() - t0 > (gint64)EXIT_TMO * 1000) {
            itest_dump_logs(&w.env);
            g_error("vhost-pci-guestd (pid %d) still runs %d ms after %s: it must shut down "
                    "when its bus is lost", pid, EXIT_TMO, why);
        }
        g_usleep(2000);
    }
}

/* The server, then the guestd, running again (a killed server takes the guestd with
 * it: it ends when its bus is lost). */
static void ensure_up(void)
{
    if (!itest_alive(w.env.server_pid)) {
        w.env.server_pid = 0;
        /* The guestd sees its bus go and exits: wait for that before restarting it. */
        wait_guestd_gone("the server's death");
        itest_alive(w.env.guestd_pid); /* reaps it */
        w.env.guestd_pid = 0;
        itest_start_server(&w.env, NULL);
    }
    if (!itest_alive(w.env.guestd_pid)) {
        w.env.guestd_pid = 0;
        guestd_start();
    }
}

/* After the fault: the processes it ends have ended (a hang-up of the local bus ends
 * the guestd a moment later: wait for that, or ensure_up() would find it still alive
 * and leave the server without a guestd), and the server and guestd run again:
 * restarted at once, as an operator would, so that the survivors' pending work can
 * complete. Called again and again while the scenario waits; each fault is handled
 * once (the restarted guestd is not the hung-up one). */
static void recover(void)
{
    g_mutex_lock(&w.lock);
    gboolean lb_hangup = w.armed_kind == HANGUP && w.armed_chan == -1 && w.fired &&
                         w.fired_chan == LB && w.env.guestd_pid == w.pid_guestd;
    g_mutex_unlock(&w.lock);
    if (lb_hangup)
        wait_guestd_gone("its local bus was hung up");
    ensure_up();
}

/* While the frontend waits: bring the server and guestd back once a fault hit them. */
static void pump(void *opaque)
{
    (void)opaque;
    if (fired())
        recover();
    g_usleep(1000);
}

static int try_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(fd, >=, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        vp_close_fd(&fd);
    return fd;
}

static void client_start(void)
{
    char *bin = itest_bin("client");
    char uuid[37];
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, uuid);
    unlink(w.vu_path);
    char *argv[] = { bin, "--socket-path", w.vu_path, "--server", w.vp_path, "--uuid", uuid,
                     "--log-level", "debug", "--ack-timeout", "3", NULL };
    w.client = itest_spawn(&w.env, argv, w.client_log);
    g_mutex_lock(&w.lock);
    w.pid_client = w.client;
    g_mutex_unlock(&w.lock);
    g_free(bin);
}

/* SIGTERM the daemon and reap it (bounded); it says goodbye to the server first. */
static void client_stop(void)
{
    if (w.client <= 0)
        return;
    kill(w.client, SIGTERM);
    for (int i = 0; i < EXIT_TMO / 5 && !exited(w.client); i++)
        g_usleep(5000);
    gboolean hung = !exited(w.client);
    if (hung)
        kill(w.client, SIGKILL);
    /* The hook must not kill the pid once it is reaped (it may be reused). */
    g_mutex_lock(&w.lock);
    w.pid_client = 0;
    g_mutex_unlock(&w.lock);
    waitpid(w.client, NULL, 0);
    w.client = 0;
    if (hung) {
        itest_dump_logs(&w.env);
        g_error("vhost-pci-client ignored SIGTERM for %d ms", EXIT_TMO);
    }
}

/* Connect the frontend to the daemon once it listens (bounded). */
static struct vu_fe *fe_connect(void)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    int fd;
    while ((fd = try_connect(w.vu_path)) < 0) {
        if (!itest_alive(w.client))
            return NULL;          /* killed before it listened */
        if (g_get_monotonic_time() > deadline)
            g_error("vhost-pci-client does not listen on %s", w.vu_path);
        g_usleep(2000);
    }
    struct vu_fe *fe = vu_fe_new(fd, 2, pump, NULL);
    vu_fe_set_timeout(fe, FE_TMO);
    return fe;
}

/* ------------------------------ the scenario ------------------------------ */

/* Wait until the server's only device has @nfrontends frontends and @nregions
 * regions (-1: any), bounded; with @faulty, until the fault fired. The daemon talks
 * to the server in the background: this puts the scenario's steps in one order. */
static int wait_server_device(gboolean faulty, int nfrontends, int nregions)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)TMO * 1000;
    while (g_get_monotonic_time() < deadline) {
        if (faulty && fired())
            return -ECANCELED;
        JsonNode *st = itest_server_status_try(&w.env);
        JsonObject *d = st && itest_ndevices(st) == 1
                            ? json_array_get_object_element(json_object_get_array_member(
                                                                json_node_get_object(st), "devices"), 0)
                            : NULL;
        gboolean ok = d && (int)itest_len(d, "frontends") == nfrontends &&
                      (nregions < 0 || (int)itest_len(d, "regions") == nregions);
        if (st)
            json_node_unref(st);
        if (ok)
            return 0;
        pump(NULL);
    }
    if (!faulty)
        g_error("the server never showed a device with %d frontend(s), %d region(s)",
                nfrontends, nregions);
    return -ETIMEDOUT;
}

/*
 * The frontend's life: QEMU's init and start (the handshake: MEMORY_INFO,
 * FEATURE_BITS, DEVICE_INFO), a DIMM hot-added and hot-removed, the device stopped,
 * QEMU gone, the daemon stopped. With @faulty, the first failure after the fault is
 * the end of the script (what follows would only wait for timeouts); without, every
 * step must succeed.
 */
static void scenario(gboolean faulty)
{
    client_start();
    struct vu_fe *fe = fe_connect();
    int ret = fe ? 0 : -ECONNRESET;
#define STEP(call)                                                              \
    do {                                                                        \
        if (ret == 0 && !(faulty && fired())) {                                 \
            ret = (call);                                                       \
            if (ret < 0 && !faulty)                                             \
                g_error("%s: %d (%s)", #call, ret, vu_fe_error(fe));            \
        }                                                                       \
    } while (0)
    STEP(vu_fe_qemu72_init(fe));
    STEP(vu_fe_ram_new(fe, RAM0_SIZE));
    STEP(vu_fe_region_new(fe, 0, 0, 0, RAM0_SIZE) < 0 ? -EINVAL : 0);
    STEP(vu_fe_qemu72_start(fe, F_GUEST, vrings));
    STEP(wait_server_device(faulty, 1, -1));
    int dimm = -1;
    STEP(vu_fe_ram_new(fe, 2 * MiB) < 0 ? -EINVAL : 0);
    STEP((dimm = vu_fe_region_new(fe, 1, 0, HOTPLUG_GPA, 2 * MiB)) < 0 ? -EINVAL : 0);
    STEP(vu_fe_add_mem_reg(fe, dimm));
    STEP(vu_fe_rem_mem_reg(fe, dimm, false));
    STEP(vu_fe_qemu72_stop(fe, NULL));
    if (faulty && fired())
        recover();
    vu_fe_free(fe);
    /* QEMU is gone: the daemon deletes the memory but stays (MEMORY_INFO(DEL)); then
     * it is stopped. */
    if (fe)
        STEP(wait_server_device(faulty, 0, 0));
#undef STEP
    client_stop();
}

/* ------------------------------ checks ------------------------------ */

static int count_shared_maps(GPid pid)
{
    char path[64], *text = NULL;
    g_snprintf(path, sizeof(path), "/proc/%d/maps", pid);
    if (!g_file_get_contents(path, &text, NULL, NULL))
        return -1;
    int n = 0;
    for (char *line = text; line && *line;) {
        /* "start-end perms ...": perms is "rw-s" for a shared mapping */
        const char *sp = strchr(line, ' ');
        if (sp && sp[4] == 's')
            n++;
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    g_free(text);
    return n;
}

static gboolean no_devices(JsonNode *server, JsonNode *guestd, gpointer data)
{
    (void)data;
    return itest_ndevices(server) == 0 && guestd && itest_ndevices(guestd) == 0;
}

/* vhost-pci-ctl --json: the server's word that no device is left. */
static void assert_no_orphan(const char *what)
{
    const char *argv[] = { "--mgmt", w.env.mgmt, "status", "--json", NULL };
    int st = 0;
    char *preload = g_strdup(g_getenv("LD_PRELOAD"));
    g_unsetenv("LD_PRELOAD");     /* vhost-pci-ctl is the observer, not under test */
    char *out = itest_run_ctl(argv, &st);
    if (preload)
        g_setenv("LD_PRELOAD", preload, TRUE);
    g_free(preload);
    g_assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    JsonParser *p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, out, -1, NULL));
    guint n = itest_ndevices(json_parser_get_root(p));
    g_object_unref(p);
    if (n != 0) {
        itest_dump_logs(&w.env);
        g_error("%s: vhost-pci-ctl --json shows %u orphaned device(s):\n%s", what, n, out);
    }
    g_free(out);
}

/* A sanitizer report written to @log since the last look. */
static void assert_log_clean(const char *log, gsize *seen, const char *who, const char *what)
{
    char *text = NULL;
    gsize len = 0;
    if (!g_file_get_contents(log, &text, &len, NULL))
        return;
    const char *from = text + MIN(*seen, len);
    gboolean bad = strstr(from, "AddressSanitizer") || strstr(from, "LeakSanitizer") ||
                   strstr(from, "runtime error:");
    *seen = len;
    if (bad)
        g_test_message("----- %s log -----\n%s", who, from);
    g_free(text);
    if (bad)
        g_error("%s: sanitizer report in the %s's log", what, who);
}

/* Server and guestd back to where they were: no device, the fds and shared mappings
 * of the baseline (bounded: a process closes an fd a moment after its state looks
 * final), nothing in the logs. */
static void assert_clean(const char *what)
{
    ensure_up();
    itest_wait_for(&w.env, no_devices, NULL, TMO, what);
    assert_no_orphan(what);
    itest_wait_fds(w.env.server_pid, w.s_fds, TMO, what);
    itest_wait_fds(w.env.guestd_pid, w.g_fds, TMO, what);
    int sm = count_shared_maps(w.env.server_pid), gm = count_shared_maps(w.env.guestd_pid);
    if (sm != w.s_maps || gm != w.g_maps)
        g_error("%s: shared mappings: server %d (baseline %d), guestd %d (baseline %d)", what,
                sm, w.s_maps, gm, w.g_maps);
    assert_log_clean(w.env.server_log, &w.log_seen[0], "server", what);
    assert_log_clean(w.env.guestd_log, &w.log_seen[1], "guestd", what);
    assert_log_clean(w.client_log, &w.log_seen[2], "client", what);
}

static gboolean device_running(JsonNode *server, JsonNode *guestd, gpointer data)
{
    (void)data;
    if (itest_ndevices(server) != 1 || !guestd || itest_ndevices(guestd) != 1)
        return FALSE;
    JsonObject *d = json_array_get_object_element(
        json_object_get_array_member(json_node_get_object(server), "devices"), 0);
    return itest_len(d, "frontends") == 1 && itest_len(d, "regions") == 1;
}

/* A fresh client's handshake completes (the server and guestd show its device with
 * the frontend), then it leaves no trace. */
static void assert_fresh_client(const char *what)
{
    client_start();
    struct vu_fe *fe = fe_connect();
    g_assert_nonnull(fe);
    if (vu_fe_qemu72_init(fe) < 0 || vu_fe_ram_new(fe, RAM0_SIZE) < 0 ||
        vu_fe_region_new(fe, 0, 0, 0, RAM0_SIZE) < 0 ||
        vu_fe_qemu72_start(fe, F_GUEST, vrings) < 0) {
        itest_dump_logs(&w.env);
        g_error("%s: a fresh client's handshake failed: %s", what, vu_fe_error(fe));
    }
    itest_wait_for(&w.env, device_running, NULL, TMO, what);
    g_assert_cmpint(vu_fe_qemu72_stop(fe, NULL), ==, 0);
    vu_fe_free(fe);
    client_stop();
    assert_clean(what);
}

/* ------------------------------ the cases ------------------------------ */

static void arm(int chan, const struct recmsg *step, enum kind kind)
{
    g_mutex_lock(&w.lock);
    w.pid_server = w.env.server_pid;
    w.pid_guestd = w.env.guestd_pid;
    w.armed_chan = chan;
    if (step)
        w.armed = *step;
    w.armed_kind = kind;
    w.fired = 0;
    memset(w.seen, 0, sizeof(w.seen));
    g_mutex_unlock(&w.lock);
    for (int c = 0; c < NCHAN; c++)
        fp_reset(w.fp[c]);
}

/* The scenario without a fault, recording every message: the steps to enumerate. */
static void test_dry_run(void)
{
    arm(-1, NULL, HANGUP);
    g_mutex_lock(&w.lock);
    w.recording = TRUE;
    g_mutex_unlock(&w.lock);
    scenario(FALSE);
    assert_clean("dry run");
    g_mutex_lock(&w.lock);
    w.recording = FALSE;
    g_mutex_unlock(&w.lock);
    for (int c = 0; c < NCHAN; c++) {
        GString *s = g_string_new(NULL);
        for (guint i = 0; i < w.rec[c]->len; i++) {
            struct recmsg *m = &g_array_index(w.rec[c], struct recmsg, i);
            g_string_append_printf(s, " %s%s#%u", m->dir == FP_TO_TARGET ? ">" : "<",
                                   type_name(c, m->type), m->occ);
        }
        g_test_message("%s: %u messages:%s", chan_name[c], w.rec[c]->len, s->str);
        g_string_free(s, TRUE);
    }
    /* The handshake, hot-add and hot-remove went over both links. */
    g_assert_cmpuint(w.rec[VP]->len, >=, 12);
    g_assert_cmpuint(w.rec[LB]->len, >=, 5);
}

/* Every step of both links with fault @kind. */
static void run_kind(gconstpointer data)
{
    enum kind kind = GPOINTER_TO_INT(data);
    g_assert_cmpuint(w.rec[VP]->len, >, 0); /* after the dry run */
    for (int c = 0; c < NCHAN; c++) {
        for (guint k = 1; k <= w.rec[c]->len; k++) {
            struct recmsg *m = &g_array_index(w.rec[c], struct recmsg, k - 1);
            char what[96];
            g_snprintf(what, sizeof(what), "%s at %s step %u: %s %s #%u", kind_name[kind],
                       chan_name[c], k, m->dir == FP_TO_TARGET ? "to the server" : "from the server",
                       type_name((enum chan)c, m->type), m->occ);
            gint64 t0 = g_get_monotonic_time();
            arm(c, m, kind);
            scenario(TRUE);
            /* Messages after the daemon's exit (the server's teardown) come later. */
            for (int i = 0; i < TMO / 5 && !fired(); i++)
                g_usleep(5000);
            if (!fired()) {
                itest_dump_logs(&w.env);
                g_error("%s: the scenario ended with %u %s messages, none of them this one; "
                        "the fault never fired", what, fp_count(w.fp[c]), chan_name[c]);
            }
            /* A fault late in the scenario (the device's teardown after the daemon's
             * exit) fires after its last recover(): recover now, before arm() forgets
             * which fault fired. */
            recover();
            arm(-1, NULL, HANGUP);
            assert_clean(what);
            assert_fresh_client(what);
            g_test_message("%s: recovered, fresh client ok (%" G_GINT64_FORMAT " ms)", what,
                           (g_get_monotonic_time() - t0) / 1000);
        }
    }
}

/* Restart the server and the guestd with @shim in their environment (NULL: none). */
static void restart_with(const char *shim)
{
    if (shim) {
        g_setenv("LD_PRELOAD", shim, TRUE);
        g_setenv("VP_FAULT_SHORT", "3", TRUE);
        g_setenv("VP_FAULT_RSHORT", "5", TRUE);
        g_setenv("VP_FAULT_EINTR", "3", TRUE);
        /* An ASan build wants its runtime first among the preloaded libraries. */
        const char *a = g_getenv("ASAN_OPTIONS");
        char *opts = g_strdup_printf("%s%sverify_asan_link_order=0", a ? a : "", a ? ":" : "");
        g_setenv("ASAN_OPTIONS", opts, TRUE);
        g_free(opts);
    } else {
        g_unsetenv("LD_PRELOAD");
        g_unsetenv("VP_FAULT_SHORT");
        g_unsetenv("VP_FAULT_RSHORT");
        g_unsetenv("VP_FAULT_EINTR");
    }
    kill(w.env.guestd_pid, SIGTERM);
    kill(w.env.server_pid, SIGTERM);
    for (int i = 0; i < EXIT_TMO / 5 &&
                    (itest_alive(w.env.server_pid) || itest_alive(w.env.guestd_pid)); i++)
        g_usleep(5000);
    ensure_up();
}

static char *shim_path(void)
{
    char *exe = g_file_read_link("/proc/self/exe", NULL);
    char *dir = g_path_get_dirname(exe);
    char *p = g_build_filename(dir, "faultshim.so", NULL);
    g_free(exe);
    g_free(dir);
    g_assert_true(g_file_test(p, G_FILE_TEST_EXISTS));
    return p;
}

/* Short writes, short reads and EINTR in the server, the daemon (and a dynamically
 * linked guestd); messages delivered in fragments of 3 bytes by both proxies. */
/* Is @lib mapped into @pid? */
static gboolean maps_have(GPid pid, const char *lib)
{
    char path[64], *text = NULL;
    g_snprintf(path, sizeof(path), "/proc/%d/maps", pid);
    gboolean r = g_file_get_contents(path, &text, NULL, NULL) && strstr(text, lib);
    g_free(text);
    return r;
}

static void test_transport_faults(void)
{
    char *shim = shim_path();
    restart_with(shim);
    g_assert_true(maps_have(w.env.server_pid, "faultshim.so"));
    /* The guestd is static except in sanitized builds: then the proxy's fragments are
     * what it sees. */
    g_test_message("guestd %s the shim", maps_have(w.env.guestd_pid, "faultshim.so")
                                              ? "runs with" : "is static: runs without");
    for (int c = 0; c < NCHAN; c++)
        fp_set_fragment(w.fp[c], 3);
    arm(-1, NULL, HANGUP);
    scenario(FALSE);              /* the daemon inherits the environment too */
    assert_clean("short writes, EINTR, fragmented messages");
    assert_fresh_client("short writes, EINTR, fragmented messages");
    for (int c = 0; c < NCHAN; c++)
        fp_set_fragment(w.fp[c], 0);
    restart_with(NULL);
    assert_fresh_client("after the transport faults");
    g_free(shim);
}

/* ------------------------------ the world ------------------------------ */

static void world_start(void)
{
    g_mutex_init(&w.lock);
    w.armed_chan = -1;
    for (int c = 0; c < NCHAN; c++)
        w.rec[c] = g_array_new(FALSE, TRUE, sizeof(struct recmsg));
    itest_env_start(&w.env, &(ITestOpts){ .no_guestd = TRUE });
    /* The guestd serves its frontends with the loopback endpoint. */
    char *wrapper = itest_guestd_endpoint_wrapper(w.env.dir, "loopback");
    g_setenv("VP_GUESTD_BIN", wrapper, TRUE);
    g_free(wrapper);
    w.vp_path = g_build_filename(w.env.dir, "vp-proxy.sock", NULL);
    w.lb_path = g_build_filename(w.env.dir, "lb-proxy.sock", NULL);
    w.vu_path = g_build_filename(w.env.dir, "vu.sock", NULL);
    w.client_log = g_build_filename(w.env.dir, "client.log", NULL);
    w.fp[VP] = fp_new(w.vp_path, w.env.sock, FP_VP, hook, GINT_TO_POINTER(VP));
    w.fp[LB] = fp_new(w.lb_path, w.env.local_bus, FP_LB, hook, GINT_TO_POINTER(LB));
    g_assert_nonnull(w.fp[VP]);
    g_assert_nonnull(w.fp[LB]);
    w.env.guestd_bus = w.lb_path;
    guestd_start();
    /* The baseline: what each holds with no device. */
    itest_wait_for(&w.env, no_devices, NULL, TMO, "start");
    w.s_fds = itest_count_fds(w.env.server_pid);
    w.g_fds = itest_count_fds(w.env.guestd_pid);
    w.s_maps = count_shared_maps(w.env.server_pid);
    w.g_maps = count_shared_maps(w.env.guestd_pid);
    g_test_message("baseline: server %d fds %d shared maps, guestd %d fds %d shared maps",
                   w.s_fds, w.s_maps, w.g_fds, w.g_maps);
}

static void world_stop(void)
{
    client_stop();
    const char *keep = g_getenv("FAULT_KEEP_LOGS"); /* a directory to copy the logs to */
    if (keep) {
        char *cmd = g_strdup_printf("cp %s/server.log %s/guestd.log %s/client.log %s", w.env.dir,
                                    w.env.dir, w.env.dir, keep);
        g_spawn_command_line_sync(cmd, NULL, NULL, NULL, NULL);
        g_free(cmd);
    }
    for (int c = 0; c < NCHAN; c++)
        fp_free(w.fp[c]);
    w.env.guestd_bus = NULL;
    itest_env_stop(&w.env);
    g_free(w.vp_path);
    g_free(w.lb_path);
    g_free(w.vu_path);
    g_free(w.client_log);
    for (int c = 0; c < NCHAN; c++)
        g_array_free(w.rec[c], TRUE);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/faults/dry-run", test_dry_run);
    for (int k = 0; k < NKIND; k++) {
        char *name = g_strdup_printf("/faults/%s-at-every-step", kind_name[k]);
        g_test_add_data_func(name, GINT_TO_POINTER(k), run_kind);
        g_free(name);
    }
    g_test_add_func("/faults/short-writes-eintr-fragments", test_transport_faults);
    world_start();
    int r = g_test_run();
    world_stop();
    return r;
}
