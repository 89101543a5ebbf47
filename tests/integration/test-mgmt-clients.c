/*
 * test-mgmt-clients.c - the server's management socket (--mgmt, server/mgmt.c)
 * against local clients that do not play along, with a real server and guestd.
 *
 *  stuck-reader  enough devices with 64 regions each that the status document is
 *                larger than what the socket buffers; a client asks and never
 *                reads. Meanwhile another mgmt client gets the whole document and a
 *                vhost-pci client's DEVICE_INFO is answered, both within a bound
 *                well below the old 2 s stall; the stuck client is closed after
 *                MGMT_DEADLINE_MS with a truncated answer (logged).
 *  too-many      MGMT_MAX_CLIENTS clients that send nothing; one more is closed at
 *                once without an answer (logged); after the deadline the idle ones
 *                are closed and a new client is answered.
 * Both end with the server holding exactly the fds it held before.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "itest.h"
#include "mgmt.h"

#define MiB (1ULL << 20)
#define KiB (1ULL << 10)
#define TMO ITEST_TIMEOUT_MS
#define RING_GPA 0x10000ULL
#define PROMPT_MS 1000          /* "promptly": the old blocking write stalled 2 s */
#define NBIG 40                 /* devices of 64 regions: ~9 KiB of JSON each */

static int mgmt_connect(ITestEnv *env)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(fd, >=, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, env->mgmt, sizeof(sa.sun_path));
    g_assert_cmpint(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    return fd;
}

static int queued(int fd)
{
    int n = 0;
    g_assert_cmpint(ioctl(fd, FIONREAD, &n), ==, 0);
    return n;
}

/* The server closed its end (POLLHUP shows even with unread data queued). */
static gboolean hung_up(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}

/* Wait (bounded) until the server has closed @fd; returns when it happened. */
static gint64 wait_hung_up(int fd, gint64 until_us, const char *what)
{
    while (!hung_up(fd)) {
        if (g_get_monotonic_time() > until_us)
            g_error("%s: the server did not close it in time", what);
        g_usleep(10 * 1000);
    }
    return g_get_monotonic_time();
}

static gboolean log_has(ITestEnv *env, const char *needle)
{
    char *text = NULL;
    g_assert_true(g_file_get_contents(env->server_log, &text, NULL, NULL));
    gboolean found = strstr(text, needle) != NULL;
    g_free(text);
    return found;
}

/* One status query, answered with a whole JSON document within PROMPT_MS. */
static void assert_prompt_status(ITestEnv *env, guint ndevices)
{
    gint64 t0 = g_get_monotonic_time();
    int fd = mgmt_connect(env);
    g_assert_cmpint(send(fd, "status\n", 7, MSG_NOSIGNAL), ==, 7);
    gboolean eof;
    GString *s = itest_read_to_eof(fd, PROMPT_MS, &eof);
    gint64 ms = (g_get_monotonic_time() - t0) / 1000;
    close(fd);
    g_test_message("status query: %zu bytes in %" G_GINT64_FORMAT " ms", s->len, ms);
    g_assert_true(eof);
    g_assert_cmpint(ms, <, PROMPT_MS);
    JsonParser *p = json_parser_new();
    GError *e = NULL;
    g_assert_true(json_parser_load_from_data(p, s->str, (gssize)s->len, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(itest_ndevices(json_parser_get_root(p)), ==, ndevices);
    g_object_unref(p);
    g_string_free(s, TRUE);
}

/* ------------------------------ stuck reader ------------------------------ */

typedef struct {
    VpClient *c;
    int ram;
} Big;

/* A driver VM with 64 regions of 64 KiB (one 4 MiB memfd, so one window). */
static void big_open(ITestEnv *env, Big *b)
{
    b->c = itest_client(env, NULL);
    b->ram = itest_memfd(4 * MiB, NULL);
    struct vp_region r[VP_MAX_REGIONS];
    for (guint i = 0; i < VP_MAX_REGIONS; i++)
        r[i] = (struct vp_region){ .gpa = 0x100000000ULL + i * 64 * KiB, .size = 64 * KiB,
                                   .mmap_offset = i * 64 * KiB, .fd = b->ram };
    VpClientReply rep;
    GError *e = NULL;
    gboolean ok = vp_client_memory_add_sync(b->c, r, VP_MAX_REGIONS, TMO, &rep, &e);
    g_assert_no_error(e);
    g_assert_true(ok);
    g_assert_cmpuint(rep.ack.result, ==, VP_ACK_ADD_DONE);
}

static void big_close(Big *b)
{
    vp_client_close(b->c);
    vp_client_unref(b->c);
    vp_close_fd(&b->ram);
}

static void test_stuck_reader(void)
{
    ITestEnv env;
    itest_env_start(&env, NULL);

    /* A: a driver VM with a working net device. */
    VpClient *a = itest_client(&env, NULL);
    char a_uuid[37];
    itest_uuid(a, a_uuid);
    void *a_map;
    int a_ram = itest_memfd(MiB, &a_map);
    int efds[4];
    itest_eventfds(efds);
    struct vp_region r = { .gpa = 0, .size = MiB, .mmap_offset = 0, .fd = a_ram };
    struct vp_device_info di;
    itest_net_device(&di, 1, RING_GPA, 0, 0, efds);
    VpClientHandshake hs;
    GError *e = NULL;
    g_assert_true(vp_client_handshake_sync(a, &r, 1, VP_NET_FEATURES, &di, TMO, NULL, NULL,
                                           &hs, &e));
    g_assert_no_error(e);

    Big big[NBIG];
    for (guint i = 0; i < NBIG; i++)
        big_open(&env, &big[i]);
    assert_prompt_status(&env, NBIG + 1);
    int fds = itest_count_fds(env.server_pid);

    /* The stuck client: asks, never reads. */
    int stuck = mgmt_connect(&env);
    gint64 t_conn = g_get_monotonic_time();
    g_assert_cmpint(send(stuck, "status\n", 7, MSG_NOSIGNAL), ==, 7);
    /* The server wrote what the socket takes; settle: no growth for 100 ms. */
    int got = 0;
    for (int still = 0; still < 10;) {
        g_assert_cmpint(g_get_monotonic_time() - t_conn, <, 2 * G_USEC_PER_SEC);
        g_usleep(10 * 1000);
        int now = queued(stuck);
        still = now == got && now > 0 ? still + 1 : 0;
        got = now;
    }
    g_assert_false(hung_up(stuck));

    /* Another mgmt client and a vhost-pci client are served promptly meanwhile. */
    assert_prompt_status(&env, NBIG + 1);
    gsize doc_len = 0;
    {
        int fd = mgmt_connect(&env);
        g_assert_cmpint(send(fd, "status\n", 7, MSG_NOSIGNAL), ==, 7);
        gboolean eof;
        GString *s = itest_read_to_eof(fd, PROMPT_MS, &eof);
        g_assert_true(eof);
        doc_len = s->len;
        g_string_free(s, TRUE);
        close(fd);
    }
    g_test_message("document %zu bytes, the stuck client got %d", doc_len, got);
    /* Else the answer fit in the socket buffer and nothing was tested: more NBIG. */
    g_assert_cmpint(got, <, (int)doc_len);

    gint64 t0 = g_get_monotonic_time();
    itest_net_device(&di, 1, RING_GPA, 1, 1, efds);
    itest_set_avail_idx(a_map, 0, RING_GPA, 0, 1);
    itest_set_avail_idx(a_map, 0, RING_GPA, 1, 1);
    VpClientReply rep;
    g_assert_true(vp_client_device_add_sync(a, &di, PROMPT_MS, &rep, &e));
    g_assert_no_error(e);
    g_assert_cmpuint(rep.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_cmpint((g_get_monotonic_time() - t0) / 1000, <, PROMPT_MS);

    /* The stuck client is closed at its deadline, not before, with half an answer. */
    gint64 t_hup = wait_hung_up(stuck, t_conn + (MGMT_DEADLINE_MS + TMO) * 1000LL,
                                "the stuck mgmt client");
    g_assert_cmpint((t_hup - t_conn) / 1000, >=, MGMT_DEADLINE_MS - 500);
    g_assert_cmpint(queued(stuck), ==, got);
    close(stuck);
    g_assert_true(log_has(&env, "did not read its answer within"));
    itest_wait_fds(env.server_pid, fds, TMO, "server after the stuck mgmt client");
    assert_prompt_status(&env, NBIG + 1);

    for (guint i = 0; i < NBIG; i++)
        big_close(&big[i]);
    vp_client_close(a);
    vp_client_unref(a);
    for (int i = 0; i < 4; i++)
        vp_close_fd(&efds[i]);
    munmap(a_map, MiB);
    vp_close_fd(&a_ram);
    itest_env_stop(&env);
}

/* ------------------------------ too many clients ------------------------------ */

static void test_too_many(void)
{
    ITestEnv env;
    itest_env_start(&env, NULL);
    int fds = itest_count_fds(env.server_pid);

    int idle[MGMT_MAX_CLIENTS];
    gint64 t_conn = g_get_monotonic_time();
    for (int i = 0; i < MGMT_MAX_CLIENTS; i++)
        idle[i] = mgmt_connect(&env);
    /* All accepted (the server holds one fd each), none answered. */
    itest_wait_fds(env.server_pid, fds + MGMT_MAX_CLIENTS, TMO, "server with idle mgmt clients");

    int extra = mgmt_connect(&env);
    /* The server may close the refused connection before this send runs: then the
     * send fails with EPIPE or ECONNRESET. Either way no answer may come. */
    ssize_t sent = send(extra, "status\n", 7, MSG_NOSIGNAL);
    if (sent < 0)
        g_assert_true(errno == EPIPE || errno == ECONNRESET);
    else
        g_assert_cmpint(sent, ==, 7);
    gboolean eof;
    GString *s = itest_read_to_eof(extra, PROMPT_MS, &eof);
    g_assert_true(eof);
    g_assert_cmpuint(s->len, ==, 0);
    g_string_free(s, TRUE);
    close(extra);
    g_assert_cmpint((g_get_monotonic_time() - t_conn) / 1000, <, MGMT_DEADLINE_MS);
    g_assert_true(log_has(&env, "refusing a new one"));
    for (int i = 0; i < MGMT_MAX_CLIENTS; i++)
        g_assert_false(hung_up(idle[i]));

    /* After the deadline the idle ones are gone and the socket answers again. */
    for (int i = 0; i < MGMT_MAX_CLIENTS; i++) {
        gint64 t = wait_hung_up(idle[i], t_conn + (MGMT_DEADLINE_MS + TMO) * 1000LL,
                                "an idle mgmt client");
        g_assert_cmpint((t - t_conn) / 1000, >=, MGMT_DEADLINE_MS - 500);
        close(idle[i]);
    }
    itest_wait_fds(env.server_pid, fds, TMO, "server after the idle mgmt clients");
    assert_prompt_status(&env, 0);
    itest_wait_fds(env.server_pid, fds, TMO, "server after a good mgmt query");
    itest_env_stop(&env);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_default();
    g_test_add_func("/mgmt-clients/stuck-reader", test_stuck_reader);
    g_test_add_func("/mgmt-clients/too-many", test_too_many);
    return g_test_run();
}
