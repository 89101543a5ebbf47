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
 * Every case ends with the server alive and at its baseline of fds.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "itest.h"

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
    int fds = itest_count_fds(env.server_pid);
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

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_default();
    g_test_add_func("/server-limits/flood", test_flood);
    return g_test_run();
}
