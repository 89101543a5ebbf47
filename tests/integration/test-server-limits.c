/*
 * test-server-limits.c - issue 12, the server's side: one hostile driver VM (or
 * local process) must not hurt another. Real server (--device-host local) and guestd;
 * the hostile peers are raw sockets or client-library connections of this process.
 *
 *  flood           a client streams FEATURE_BITS_ACK as fast as it can: another
 *                  driver VM's whole handshake still completes within the ack
 *                  timeout (12.2: internal work used to starve behind the busy
 *                  socket), and the flood's log lines are rate-limited (it used to
 *                  write tens of MB).
 *  unread-replies  clients that never read their ACKs are closed; the server's
 *                  memory stays bounded (12.3); -total: the bound of all together
 *  functions-per-client, huge-memory, virtqueues-vectors   the resource model (12.4,
 *                  12.5): one client's PCI functions, exposed memory, net queues and
 *                  doorbell vectors, each refused past its limit with a reason
 *  seq-and-nil-uuid, features-timeout-bits   off the design (issue 12)
 *  identity        restrictive socket modes, a uuid bound to the uid that created its
 *                  device, a device quota per uid (12.6)
 *  refusals        what was refused, why and the fix, in the mgmt JSON and
 *                  vhost-pci-ctl status (issue 9 item 4)
 *  vector-move     1000 frontend starts on one device: it moves to a fresh control
 *                  function each time its 256 doorbell vectors are used up (issue 9
 *                  item 5), another frontend's traffic going on across the moves
 * Every case ends with the server alive and at its baseline of fds.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "itest_frames.h"
#include "vp_ctrlarea.h"

#define MiB (1ULL << 20)
#define TMO ITEST_TIMEOUT_MS
#define RING_GPA 0x10000ULL

/* A raw connection to the server's client socket. */
static int raw_connect(ITestEnv *env)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(s, >=, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, env->sock, sizeof(sa.sun_path));
    g_assert_cmpint(connect(s, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    return s;
}

static gboolean log_has(ITestEnv *env, const char *needle)
{
    char *text = NULL;
    if (!g_file_get_contents(env->server_log, &text, NULL, NULL))
        return FALSE;
    gboolean found = strstr(text, needle) != NULL;
    g_free(text);
    return found;
}

/* The server's fds once guestd's local-bus connection is in (the baseline of a test):
 * the server accepts it a moment after guestd answers its status socket. */
static int baseline_fds(ITestEnv *env)
{
    gint64 deadline = g_get_monotonic_time() + TMO * 1000LL;
    while (!log_has(env, "vhost-pci-guestd connected") && g_get_monotonic_time() < deadline)
        g_usleep(10 * 1000);
    return itest_count_fds(env->server_pid);
}

/* A whole handshake of a fresh driver VM (memory, features, a net device); returns
 * how long it took in ms, or -1 when it failed (the error is logged). */
static gint64 handshake(ITestEnv *env, VpClient **out, int *ram, int efds[4])
{
    VpClient *c = itest_client(env, NULL);
    *ram = itest_memfd(MiB, NULL);
    itest_eventfds(efds);
    struct vp_region r = { .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = *ram };
    struct vp_device_info di;
    itest_net_device(&di, 1, RING_GPA, 0, 0, efds);
    VpClientHandshake hs;
    GError *e = NULL;
    gint64 t0 = g_get_monotonic_time();
    gboolean ok = vp_client_handshake_sync(c, &r, 1, VP_NET_FEATURES, &di, 2 * TMO, NULL,
                                           NULL, &hs, &e);
    gint64 ms = (g_get_monotonic_time() - t0) / 1000;
    if (!ok) {
        g_test_message("handshake failed after %" G_GINT64_FORMAT " ms: %s", ms,
                       e ? e->message : "?");
        g_clear_error(&e);
        ms = -1;
    }
    *out = c;
    return ms;
}

static void handshake_free(VpClient *c, int ram, int efds[4])
{
    vp_client_close(c);
    vp_client_unref(c);
    close(ram);
    vp_close_fds(efds, 4);
}

static gsize file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (gsize)st.st_size : 0;
}

/* ------------------------------ 12.2: flood ------------------------------ */

struct flood {
    int fd;
    volatile gint stop;
    guint64 bytes;
};

static void *flood_thread(void *p)
{
    struct flood *f = p;
    /* 512 FEATURE_BITS_ACK messages (no renegotiation is pending: each is ignored). */
    static uint8_t buf[512 * (VP_SOCK_HDR_SIZE + 2)];
    struct vp_sock_hdr h = { .type = VP_MSG_FEATURE_BITS_ACK, .version = VP_MSG_VERSION };
    memset(h.uuid, 0x5a, sizeof(h.uuid));
    h.len = 2;
    for (unsigned i = 0; i < 512; i++) {
        uint8_t *m = buf + i * (VP_SOCK_HDR_SIZE + 2);
        h.seq = i + 1;
        vp_sock_hdr_encode(&h, m);
        m[VP_SOCK_HDR_SIZE] = 0x08;      /* field 1 (result), varint */
        m[VP_SOCK_HDR_SIZE + 1] = 0x00;  /* ADD_DONE */
    }
    while (!g_atomic_int_get(&f->stop)) {
        ssize_t n = send(f->fd, buf, sizeof(buf), MSG_NOSIGNAL);
        if (n <= 0)
            break;
        f->bytes += (guint64)n;
    }
    return NULL;
}

static void test_flood(void)
{
    ITestEnv env;
    const char *args[] = { "--ack-timeout", "3", "--log-level", "info", NULL };
    itest_env_start(&env, &(ITestOpts){ .server_args = args });
    int fds = baseline_fds(&env);
    gsize log0 = file_size(env.server_log);

    struct flood f = { .fd = raw_connect(&env) };
    pthread_t th;
    g_assert_cmpint(pthread_create(&th, NULL, flood_thread, &f), ==, 0);
    g_usleep(300 * 1000);  /* the flood is on */

    VpClient *c;
    int ram, efds[4];
    gint64 ms = handshake(&env, &c, &ram, efds);
    g_test_message("handshake during the flood: %" G_GINT64_FORMAT " ms", ms);
    g_assert_cmpint(ms, >=, 0);
    g_assert_cmpint(ms, <, 3000);
    g_usleep(2000 * 1000);  /* two more seconds of flood */

    g_atomic_int_set(&f.stop, 1);
    pthread_join(th, NULL);
    g_test_message("flood: %" G_GUINT64_FORMAT " bytes sent", f.bytes);
    g_assert_cmpuint(f.bytes, >, 1 << 20);  /* it really flooded */
    gsize grew = file_size(env.server_log) - log0;
    g_test_message("server log grew by %zu bytes", grew);
    g_assert_cmpuint(grew, <, 256 * 1024);
    close(f.fd);
    handshake_free(c, ram, efds);
    JsonNode *s = itest_server_status(&env);
    json_node_unref(s);
    itest_wait_fds(env.server_pid, fds, TMO, "server after the flood");
    itest_env_stop(&env);
}

/* ------------------------------ helpers ------------------------------ */

/* Send FEATURE_BITS with @seq as client @uuid on raw socket @s (blocking). */
static int raw_features(int s, const guint8 *uuid, guint64 seq)
{
    struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = seq };
    memcpy(h.uuid, uuid, VP_UUID_LEN);
    return vp_send_feature_bits(s, &h, VP_NET_FEATURES);
}

/* Wait (bounded) until the server closed raw socket @s: EOF or a reset. */
static gboolean closed_by_server(int s, int timeout_ms)
{
    gboolean eof = FALSE;
    GString *g = itest_read_to_eof(s, timeout_ms, &eof);
    g_string_free(g, TRUE);
    return eof;
}

/* /proc/<pid>/status member @key in kB. */
static long proc_kb(GPid pid, const char *key)
{
    char path[64], *text = NULL;
    g_snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    const char *p = strstr(text, key);
    long kb = p ? strtol(p + strlen(key) + 1, NULL, 10) : -1;
    g_free(text);
    return kb;
}

/* A sealed memfd of @size bytes: its window is the whole file. */
static int memfd_of(gsize size)
{
    return itest_memfd(size, NULL);
}

/* A new client adds memory @r[0..n): the answer's result, its reason in @why. */
static guint64 memory_add(ITestEnv *env, VpClient *c, const struct vp_region *r, unsigned n,
                          char *why, gsize whylen)
{
    VpClientReply rep;
    GError *e = NULL;
    memset(&rep, 0, sizeof(rep));
    vp_client_memory_add_sync(c, r, n, TMO, &rep, &e);
    (void)env;
    g_strlcpy(why, rep.ack.reason, whylen);
    g_clear_error(&e);
    return rep.ack.result;
}

/* ------------------------------ 12.3: unread replies ------------------------------ */

/* Clients that never read their ACKs, each asking 4000 times (FEATURE_BITS before any
 * device is answered at once) and staying connected: the server's memory stays bounded
 * (it held about 830 bytes per unread reply, 4096 of them per client, with no overall
 * bound), and another driver VM is served meanwhile. */
#define NSTUCK 24
static void test_unread_replies(void)
{
    ITestEnv env;
#ifdef __SANITIZE_ADDRESS__
    /* ASan keeps freed memory in quarantine (256 MB by default), which VmHWM would
     * count as the server's: the server this test spawns runs without it. */
    const char *asan = g_getenv("ASAN_OPTIONS");
    g_autofree char *opts = g_strdup_printf("%s%squarantine_size_mb=0", asan ? asan : "",
                                            asan && *asan ? ":" : "");
    g_autofree char *asan_saved = g_strdup(asan);
    g_setenv("ASAN_OPTIONS", opts, TRUE);
    itest_env_start(&env, NULL);
    if (asan_saved)
        g_setenv("ASAN_OPTIONS", asan_saved, TRUE);
    else
        g_unsetenv("ASAN_OPTIONS");
#else
    itest_env_start(&env, NULL);
#endif
    int fds = baseline_fds(&env);
    long hwm0 = proc_kb(env.server_pid, "VmHWM:");
    int s[NSTUCK];
    for (int i = 0; i < NSTUCK; i++) {
        guint8 uuid[16];
        memset(uuid, 0x10 + i, sizeof(uuid));
        s[i] = raw_connect(&env);
        for (guint64 seq = 1; seq <= 4000; seq++)
            g_assert_cmpint(raw_features(s[i], uuid, seq), ==, 0);
    }
    /* Everything answered (queued): the server is at its peak. */
    JsonNode *st = itest_server_status(&env);
    json_node_unref(st);
    long hwm1 = proc_kb(env.server_pid, "VmHWM:");
    g_test_message("%d clients with 4000 unread replies each: server VmHWM %ld -> %ld kB",
                   NSTUCK, hwm0, hwm1);
    g_assert_cmpint(hwm1 - hwm0, <, 32 * 1024);
    /* Another driver VM is served. */
    VpClient *c;
    int ram, efds[4];
    g_assert_cmpint(handshake(&env, &c, &ram, efds), >=, 0);
    handshake_free(c, ram, efds);
    /* One that goes on asking is closed at its own bound (--max-reply-bytes). */
    guint8 uuid[16];
    memset(uuid, 0x10, sizeof(uuid));
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(s[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    gboolean closed = FALSE;
    for (guint64 seq = 4001; seq <= 100000 && !closed; seq++)
        closed = raw_features(s[0], uuid, seq) < 0;
    g_assert_true(closed);
    g_assert_true(log_has(&env, "does not read its ACKs (more than --max-reply-bytes unread)"));
    for (int i = 0; i < NSTUCK; i++)
        close(s[i]);
    itest_wait_fds(env.server_pid, fds, TMO, "server after the unread replies");
    itest_env_stop(&env);
}

/* The bound of all connections together: the one with most unread bytes goes, the
 * others stay. */
static void test_unread_replies_total(void)
{
    ITestEnv env;
    const char *args[] = { "--max-reply-bytes-total", "1200K", NULL };
    itest_env_start(&env, &(ITestOpts){ .server_args = args });
    guint8 ua[16], ub[16];
    memset(ua, 0xa1, 16);
    memset(ub, 0xb2, 16);
    int a = raw_connect(&env), b = raw_connect(&env);
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(a, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    /* A leaves a lot unread (less than its own bound of 1 MiB), then B keeps asking. */
    for (guint64 seq = 1; seq <= 10000; seq++)
        g_assert_cmpint(raw_features(a, ua, seq), ==, 0);
    int sent_b = 0;
    for (guint64 sb = 1; sb <= 60000; sb++, sent_b++)
        if (raw_features(b, ub, sb) < 0)
            break;
    /* B pushed the total over 1200 KiB while A had more unread: A was closed. */
    g_assert_true(closed_by_server(a, TMO));
    g_assert_true(log_has(&env, "which together reached --max-reply-bytes-total"));
    g_test_message("B sent %d requests", sent_b);
    close(a);
    close(b);
    itest_env_stop(&env);
}

/* ------------------------------ 12.4/12.5: limits ------------------------------ */

/* One client cannot take every PCI function: more windows than
 * --max-functions-per-client allows are refused with a reason; another client still
 * gets its device. (127 driver VMs of 4 KiB memfds took every devfn.) */
static void test_functions_per_client(void)
{
    ITestEnv env;
    itest_env_start(&env, NULL);
    int fds = baseline_fds(&env);
    VpClient *c = itest_client(&env, NULL);
    struct vp_region r[9];
    for (unsigned i = 0; i < 9; i++)
        r[i] = (struct vp_region){ .gpa = i * MiB, .size = 64 * 1024, .fd = memfd_of(64 * 1024) };
    char why[300];
    g_assert_cmpuint(memory_add(&env, c, r, 9, why, sizeof(why)), ==, VP_ACK_ADD_FAIL);
    g_test_message("refused: %s", why);
    g_assert_nonnull(strstr(why, "would use 10 PCI functions"));
    g_assert_nonnull(strstr(why, "--max-functions-per-client allows is 8"));
    /* Seven windows fit. */
    g_assert_cmpuint(memory_add(&env, c, r, 7, why, sizeof(why)), ==, VP_ACK_ADD_DONE);
    for (unsigned i = 0; i < 9; i++)
        close(r[i].fd);
    VpClient *d;
    int ram, efds[4];
    g_assert_cmpint(handshake(&env, &d, &ram, efds), >=, 0);
    handshake_free(d, ram, efds);
    vp_client_close(c);
    vp_client_unref(c);
    itest_wait_fds(env.server_pid, fds, TMO, "server after the function limit");
    itest_env_stop(&env);
}

/* A 16 TiB sparse memfd (sealed, a power of two) used to be accepted and exposed to the
 * device VM; now the exposed memory has an upper bound. */
static void test_huge_memory(void)
{
    ITestEnv env;
    itest_env_start(&env, NULL);
    VpClient *c = itest_client(&env, NULL);
    int fd = memfd_create("huge", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, (off_t)(1ULL << 44)), ==, 0);
    g_assert_cmpint(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), ==, 0);
    struct vp_region r = { .gpa = 0, .size = MiB, .fd = fd };
    char why[300];
    g_assert_cmpuint(memory_add(&env, c, &r, 1, why, sizeof(why)), ==, VP_ACK_ADD_FAIL);
    g_test_message("refused: %s", why);
    g_assert_nonnull(strstr(why, "17592186044416 bytes of memory files, more than "
                                 "--max-memory-per-client"));
    close(fd);
    vp_client_close(c);
    vp_client_unref(c);
    itest_env_stop(&env);
}

/* A net frontend with more virtqueues than 2 x --max-queue-pairs (guestd serves pairs)
 * is refused; so is a client that would hold more doorbell vectors than
 * --max-vectors-per-client. */
static void test_virtqueues_vectors(void)
{
    ITestEnv env;
    const char *args[] = { "--max-vectors-per-client", "40", NULL };
    itest_env_start(&env, &(ITestOpts){ .server_args = args });
    int fds = baseline_fds(&env);
    VpClient *c = itest_client(&env, NULL);
    int ram = memfd_of(4 * MiB);
    struct vp_region r = { .gpa = 0, .size = 4 * MiB, .fd = ram };
    char why[300];
    g_assert_cmpuint(memory_add(&env, c, &r, 1, why, sizeof(why)), ==, VP_ACK_ADD_DONE);
    /* 64 virtqueues, each with its own rings and eventfds. */
    struct vp_device_info di;
    vp_device_info_init(&di);
    di.op = VP_OP_ADD;
    di.device_type = VP_DEV_NET;
    di.device_id = 1;
    di.nvirtqs = 64;
    for (unsigned q = 0; q < 64; q++) {
        guint64 base = RING_GPA + q * 0x10000ULL;
        di.virtqs[q] = (struct vp_virtq){ .index = q, .num = 256, .desc = base,
                                          .avail = base + 0x1000, .used = base + 0x2000,
                                          .kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                                          .call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
    }
    VpClientReply rep;
    GError *e = NULL;
    g_assert_false(vp_client_device_add_sync(c, &di, TMO, &rep, &e));
    g_test_message("refused: %s", rep.ack.reason);
    g_assert_nonnull(strstr(rep.ack.reason, "a net frontend has at most 16 virtqueues "
                                            "(8 queue pairs, --max-queue-pairs), not 64"));
    g_clear_error(&e);
    /* Three frontends of 16 queues each: 48 vectors > 40. */
    di.nvirtqs = 16;
    for (guint64 id = 1; id <= 3; id++) {
        di.device_id = id;
        for (unsigned q = 0; q < 16; q++)
            di.virtqs[q].desc = RING_GPA + (q + 16 * (id - 1)) * 0x10000ULL,
            di.virtqs[q].avail = di.virtqs[q].desc + 0x1000,
            di.virtqs[q].used = di.virtqs[q].desc + 0x2000;
        memset(&rep, 0, sizeof(rep));
        gboolean ok = vp_client_device_add_sync(c, &di, TMO, &rep, &e);
        g_test_message("frontend %" G_GUINT64_FORMAT ": %s", id, ok ? "added" : rep.ack.reason);
        if (id < 3) {
            g_assert_true(ok);
        } else {
            g_assert_false(ok);
            g_assert_nonnull(strstr(rep.ack.reason, "would hold 48 doorbell vectors"));
            g_clear_error(&e);
        }
    }
    vp_device_info_close_fds(&di);
    close(ram);
    vp_client_close(c);
    vp_client_unref(c);
    itest_wait_fds(env.server_pid, fds, TMO, "server after the queue limits");
    itest_env_stop(&env);
}

/* ------------------------------ off the design ------------------------------ */

/* msg_seq must increase on a connection; the nil client_uuid names nobody. Both are
 * protocol errors: the connection is closed with a logged reason. */
static void test_seq_and_nil_uuid(void)
{
    ITestEnv env;
    itest_env_start(&env, NULL);
    int fds = baseline_fds(&env);
    guint8 uuid[16];
    memset(uuid, 0x42, 16);
    int s = raw_connect(&env);
    g_assert_cmpint(raw_features(s, uuid, 5), ==, 0);
    g_assert_cmpint(raw_features(s, uuid, 5), ==, 0);
    g_assert_true(closed_by_server(s, TMO));
    g_assert_true(log_has(&env, "FEATURE_BITS msg_seq 5 does not increase (the last request "
                                "had 5)"));
    close(s);
    guint8 nil[16] = { 0 };
    s = raw_connect(&env);
    g_assert_cmpint(raw_features(s, nil, 1), ==, 0);
    g_assert_true(closed_by_server(s, TMO));
    g_assert_true(log_has(&env, "the nil client_uuid names no driver VM"));
    close(s);
    itest_wait_fds(env.server_pid, fds, TMO, "server after bad seq / uuid");
    itest_env_stop(&env);
}

/* A FEATURE_BITS the guest driver does not answer in time: ADD_FAIL that still carries
 * the accepted bits (they were 0, "nothing accepted" for a client reading the bits). */
static void test_features_timeout_bits(void)
{
    ITestEnv env;
    const char *args[] = { "--ack-timeout", "1", NULL };
    itest_env_start(&env, &(ITestOpts){ .server_args = args });
    VpClient *c;
    int ram, efds[4];
    g_assert_cmpint(handshake(&env, &c, &ram, efds), >=, 0);
    kill(env.guestd_pid, SIGSTOP);
    VpClientReply rep;
    GError *e = NULL;
    memset(&rep, 0, sizeof(rep));
    /* (The client library does not judge a FEATURE_BITS_ACK by its result.) */
    vp_client_send_features_sync(c, VP_NET_FEATURES, TMO, &rep, &e);
    kill(env.guestd_pid, SIGCONT);
    g_clear_error(&e);
    g_test_message("FEATURE_BITS_ACK %s, bits 0x%" G_GINT64_MODIFIER "x: %s",
                   vp_ack_result_name(rep.ack.result), rep.ack.feature_bits, rep.ack.reason);
    g_assert_cmpuint(rep.ack.result, ==, VP_ACK_ADD_FAIL);
    g_assert_nonnull(strstr(rep.ack.reason, "did not answer within 1 s"));
    g_assert_cmphex(rep.ack.feature_bits, ==, VP_NET_FEATURES);
    handshake_free(c, ram, efds);
    itest_env_stop(&env);
}

/* ------------------------------ 12.6: identity ------------------------------ */

#define NOBODY 65534

/* Run @fn(@env, @arg) in a child process that is uid/gid 65534 (nobody); returns its
 * exit status (fn's return value, 0..127), or 255 when it could not become nobody. */
static int as_nobody(int (*fn)(ITestEnv *, const void *), ITestEnv *env, const void *arg)
{
    pid_t pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            _exit(255);
        _exit(fn(env, arg) & 127);
    }
    int st = 0;
    g_assert_cmpint(waitpid(pid, &st, 0), ==, pid);
    g_assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* In the child: connect to the socket @arg (a path); 0, or errno. */
static int try_connect(ITestEnv *env, const void *arg)
{
    (void)env;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, arg, sizeof(sa.sun_path));
    int r = connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : errno;
    close(s);
    return r;
}

/* In the child: as client @arg (a uuid), delete its net frontend 1. 1: the server
 * closed the connection; 2: it answered DEL_DONE; 3: anything else. */
static int steal_frontend(ITestEnv *env, const void *arg)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, env->sock, sizeof(sa.sun_path));
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return 4;
    struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = 1 };
    memcpy(h.uuid, arg, VP_UUID_LEN);
    struct vp_device_info di;
    vp_device_info_init(&di);
    di.op = VP_OP_DEL;
    di.device_type = VP_DEV_NET;
    di.device_id = 1;
    if (vp_send_device_info(s, &h, &di) < 0)
        return 1;
    struct vp_msg m;
    vp_error err;
    int r = vp_msg_recv(s, &m, 5000, &err);
    if (r < 0)
        return r == -ECONNRESET ? 1 : 3;
    struct vp_ack ack;
    int out = vp_decode_ack(&m, &ack, &err) == 0 && ack.result == VP_ACK_DEL_DONE ? 2 : 3;
    vp_msg_clear(&m);
    close(s);
    return out;
}

/* In the child: @arg devices of its own (fresh uuids, 64 KiB each); returns how many
 * were created before one was refused with the per-uid limit (+100), or the count. */
static int own_devices(ITestEnv *env, const void *arg)
{
    unsigned n = *(const unsigned *)arg, made = 0;
    for (unsigned i = 0; i < n; i++) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        g_strlcpy(sa.sun_path, env->sock, sizeof(sa.sun_path));
        if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            return 126;
        struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = 1 };
        memset(h.uuid, 0xc0 + i, VP_UUID_LEN);
        struct vp_memory_info mi;
        vp_memory_info_init(&mi);
        mi.nregions = 1;
        mi.regions[0] = (struct vp_region){ .gpa = 0, .size = 64 * 1024,
                                            .fd = vp_test_memfd("own", 64 * 1024, TRUE) };
        int r = vp_send_memory_info(s, &h, &mi);
        vp_memory_info_close_fds(&mi);
        struct vp_msg m;
        vp_error err;
        struct vp_ack ack = { 0 };
        if (r < 0 || vp_msg_recv(s, &m, 5000, &err) < 0 || vp_decode_ack(&m, &ack, &err) < 0)
            return 125;
        vp_msg_clear(&m);
        if (ack.result != VP_ACK_ADD_DONE)
            return strstr(ack.reason, "--max-devices-per-uid") ? 100 + (int)made : 124;
        made++;  /* the connection stays open: the device lives */
    }
    return (int)made;
}

/* The sockets are the server's owner's only (whatever the umask); with a mode that lets
 * others in, a client_uuid still belongs to the uid that created its device: another
 * uid can neither join nor change it; and each uid has its own device quota. */
static void test_identity(void)
{
    ITestEnv env;
    mode_t old = umask(0);  /* the old server created its sockets with the umask's mode */
    itest_env_start(&env, NULL);
    umask(old);
    g_assert_cmpint(chmod(env.dir, 0711), ==, 0);
    g_assert_cmpint(as_nobody(try_connect, &env, env.sock), ==, EACCES);
    g_assert_cmpint(as_nobody(try_connect, &env, env.mgmt), ==, EACCES);
    g_assert_cmpint(as_nobody(try_connect, &env, env.local_bus), ==, EACCES);
    struct stat st;
    g_assert_cmpint(stat(env.mgmt, &st), ==, 0);
    g_assert_cmpuint(st.st_mode & 0777, ==, 0600);
    itest_env_stop(&env);

    const char *args[] = { "--socket-mode", "0666", "--max-devices-per-uid", "2", NULL };
    itest_env_start(&env, &(ITestOpts){ .server_args = args });
    g_assert_cmpint(chmod(env.dir, 0711), ==, 0);
    VpClient *c;
    int ram, efds[4];
    g_assert_cmpint(handshake(&env, &c, &ram, efds), >=, 0);
    char uuid_str[37];
    itest_uuid(c, uuid_str);
    /* Another uid with the victim's uuid: refused at once, the victim's frontend stays. */
    g_assert_cmpint(as_nobody(steal_frontend, &env, vp_client_get_uuid(c)), ==, 1);
    g_assert_true(log_has(&env, "client_uuid is in use by another user (uid 0); this "
                                "connection is uid 65534"));
    JsonNode *s = itest_server_status(&env);
    JsonObject *d = itest_server_device(s, uuid_str);
    g_assert_nonnull(d);
    g_assert_cmpuint(itest_len(d, "frontends"), ==, 1);
    g_assert_cmpint(itest_int(d, "owner_uid"), ==, 0);
    json_node_unref(s);
    /* Its own devices: two, then the per-uid limit; root's device is unaffected. */
    unsigned want = 3;
    g_assert_cmpint(as_nobody(own_devices, &env, &want), ==, 102);
    handshake_free(c, ram, efds);
    g_assert_cmpint(handshake(&env, &c, &ram, efds), >=, 0);
    handshake_free(c, ram, efds);
    itest_env_stop(&env);
}

/* ------------------------------ 9.5: vectors that do not run out ------------------------------ */

static const gsize FRAME_SIZES[] = { 60, 1514, 9000 };

/* Receive frames on @fe until @got reaches @sent (bounded), checking each. */
static void recv_all(VnetFe *fe, guint64 *got, guint64 sent, const char *what)
{
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (*got < sent) {
        if (!itest_fe_recv_frames(fe, 0, got, FRAME_SIZES, G_N_ELEMENTS(FRAME_SIZES), 7, what)) {
            g_assert_cmpint(g_get_monotonic_time(), <, deadline);
            vnet_fe_wait(fe, 0, 10);
        }
    }
}

/* A frontend restarted 1000 times on one long-lived device (each start brings fresh
 * call eventfds, so fresh doorbell vector numbers, never reused): the device moves to a
 * fresh control function whenever its 256 numbers are used up, and every start still
 * succeeds. Meanwhile another frontend of the same device keeps looping traffic back
 * through guestd, with frames in flight across the moves: its queues resume where they
 * stopped, nothing is lost or repeated. (Every DEVICE_INFO was refused after 128
 * starts.) */
#define RESTARTS 1000
static void test_vector_move(void)
{
    g_autofree char *tmp = g_dir_make_tmp("vp-vmove-XXXXXX", NULL);
    char *wrapper = itest_guestd_endpoint_wrapper(tmp, "loopback");
    g_setenv("VP_GUESTD_BIN", wrapper, TRUE);
    ITestEnv env;
    itest_env_start(&env, NULL);
    g_unsetenv("VP_GUESTD_BIN");
    int fds = baseline_fds(&env);

    VnetVm *vm = itest_vnet_vm(&env, 4 * MiB);
    VnetFe *fe = itest_vnet_fe(vm, &(VnetFeConfig){ .device_id = 1 });
    itest_loop_traffic(fe, 0, 100, FRAME_SIZES, G_N_ELEMENTS(FRAME_SIZES), 16, 7, 10);
    guint64 sent = 100, got = 100;
    guint64 ring = vnet_vm_alloc(vm, 0, 0x20000, 0x1000);
    g_assert_cmpuint(ring, !=, 0);
    gint64 t0 = g_get_monotonic_time();
    for (unsigned i = 0; i < RESTARTS; i++) {
        if (i % 50 == 0)  /* frames in flight across the next starts */
            itest_fe_send_frames(fe, 0, sent + 16, &sent, got, 16, FRAME_SIZES,
                                 G_N_ELEMENTS(FRAME_SIZES), 7);
        int efds[4];
        itest_eventfds(efds);
        struct vp_device_info di;
        itest_net_device(&di, 2, ring, 0, 0, efds);
        VpClientReply rep;
        GError *e = NULL;
        if (!vp_client_device_add_sync(vm->client, &di, TMO, &rep, &e))
            g_error("start %u: %s", i, e ? e->message : "?");
        vp_close_fds(efds, 4);
        if (!vp_client_device_del_sync(vm->client, VP_DEV_NET, 2, TMO, &rep, &e))
            g_error("stop %u: %s", i, e ? e->message : "?");
        if (i % 50 == 49)
            recv_all(fe, &got, sent, "frames across vector moves");
    }
    g_test_message("%d starts in %" G_GINT64_FORMAT " ms", RESTARTS,
                   (g_get_monotonic_time() - t0) / 1000);
    itest_loop_traffic(fe, sent, 100, FRAME_SIZES, G_N_ELEMENTS(FRAME_SIZES), 16, 7, 10);
    JsonNode *s = itest_server_status(&env);
    JsonObject *d = itest_server_device(s, vm->uuid);
    g_assert_nonnull(d);
    gint64 clones = itest_int(d, "counters.clones");
    g_test_message("moved to a fresh control function %" G_GINT64_FORMAT " times", clones);
    g_assert_cmpint(clones, >=, (2 * RESTARTS) / VP_MAX_VECTORS - 1);
    json_node_unref(s);
    JsonNode *g = itest_guestd_status(&env);
    g_assert_cmpuint(itest_ndevices(g), ==, 1);  /* the old control functions are gone */
    json_node_unref(g);
    vnet_fe_free(fe);
    vnet_vm_free(vm);
    itest_wait_fds(env.server_pid, fds, TMO, "server after the vector moves");
    itest_env_stop(&env);
    unlink(wrapper);
    g_free(wrapper);
    g_rmdir(tmp);
}

/* ------------------------------ 9.4: refusals shown ------------------------------ */

/* What the device VM refused shows in the mgmt JSON and in `vhost-pci-ctl status`:
 * which client, which request, why, and what fixes it. */
static void test_refusals(void)
{
    ITestEnv env;
    itest_env_start(&env, NULL);
    VpClient *c = itest_client(&env, NULL);
    char uuid[37];
    itest_uuid(c, uuid);
    /* Refused by the server: a memory file of 3 MiB + 512 bytes cannot be BARs (the
     * local host splits page multiples only, issue 13 item 3). */
    int odd = memfd_of(3 * MiB + 512);
    struct vp_region r = { .gpa = 0, .size = MiB, .fd = odd };
    char why[300];
    g_assert_cmpuint(memory_add(&env, c, &r, 1, why, sizeof(why)), ==, VP_ACK_ADD_FAIL);
    close(odd);
    /* Refused by the guest driver: a blk frontend. */
    int ram = memfd_of(MiB);
    r.fd = ram;
    g_assert_cmpuint(memory_add(&env, c, &r, 1, why, sizeof(why)), ==, VP_ACK_ADD_DONE);
    int efds[4];
    itest_eventfds(efds);
    struct vp_device_info di;
    itest_net_device(&di, 9, RING_GPA, 0, 0, efds);
    di.device_type = VP_DEV_BLK;
    VpClientReply rep;
    GError *e = NULL;
    g_assert_false(vp_client_device_add_sync(c, &di, TMO, &rep, &e));
    g_clear_error(&e);

    JsonNode *s = itest_server_status(&env);
    JsonObject *root = json_node_get_object(s);
    g_assert_cmpint(itest_int(root, "refusals_total"), ==, 2);
    JsonObject *r0 = itest_elem(root, "refusals", 0), *r1 = itest_elem(root, "refusals", 1);
    g_assert_cmpstr(json_object_get_string_member(r0, "client"), ==, uuid);
    g_assert_cmpstr(json_object_get_string_member(r0, "request"), ==, "MEMORY_INFO(ADD)");
    g_assert_cmpstr(json_object_get_string_member(r0, "result"), ==, "ADD_FAIL");
    g_assert_nonnull(strstr(json_object_get_string_member(r0, "reason"), "not a power of two"));
    g_assert_nonnull(strstr(json_object_get_string_member(r0, "fix"),
                            "a power of two in size (QEMU: -m 512M"));
    g_assert_cmpstr(json_object_get_string_member(r1, "request"), ==, "DEVICE_INFO(ADD)");
    g_assert_nonnull(strstr(json_object_get_string_member(r1, "reason"),
                            "device type blk not supported by vhost-pci-guestd"));
    g_assert_nonnull(strstr(json_object_get_string_member(r1, "fix"),
                            "serves virtio-net frontends only"));
    json_node_unref(s);
    const char *argv[] = { "--mgmt", env.mgmt, "status", NULL };
    int st = -1;
    char *out = itest_run_ctl(argv, &st);
    g_test_message("%s", out);
    g_assert_cmpint(st, ==, 0);
    g_assert_nonnull(strstr(out, "refusals: 2 since the server started"));
    g_assert_nonnull(strstr(out, "-> ADD_FAIL: memory file of region 0 is 3146240 bytes: not a "
                                 "power of two"));
    g_assert_nonnull(strstr(out, "fix: give the driver VM memory whose backing files are a "
                                 "power of two"));
    g_free(out);
    vp_close_fds(efds, 4);
    close(ram);
    vp_client_close(c);
    vp_client_unref(c);
    itest_env_stop(&env);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_default();
    g_test_add_func("/server-limits/flood", test_flood);
    g_test_add_func("/server-limits/unread-replies", test_unread_replies);
    g_test_add_func("/server-limits/unread-replies-total", test_unread_replies_total);
    g_test_add_func("/server-limits/functions-per-client", test_functions_per_client);
    g_test_add_func("/server-limits/huge-memory", test_huge_memory);
    g_test_add_func("/server-limits/virtqueues-vectors", test_virtqueues_vectors);
    g_test_add_func("/server-limits/seq-and-nil-uuid", test_seq_and_nil_uuid);
    g_test_add_func("/server-limits/features-timeout-bits", test_features_timeout_bits);
    g_test_add_func("/server-limits/identity", test_identity);
    g_test_add_func("/server-limits/vector-move", test_vector_move);
    g_test_add_func("/server-limits/refusals", test_refusals);
    return g_test_run();
}
