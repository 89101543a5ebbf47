/*
 * test-outq.c - the output queue (protocol/vp_outq.c, vp_outq_glib.c): immediate
 * writes, a full socket (watch on, flush when writable), fds that travel once on their
 * message's first byte and are closed by the queue afterwards, the byte bound, a
 * sticky error, and the GLib adapter's watch draining the queue. Every case counts
 * fds before and after.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../testutil.h"
#include "vp_msg.h"
#include "vp_outq.h"
#include "vp_outq_glib.h"

struct owner {
    int watch_calls;
    bool watching;
    unsigned sent;
    uint64_t last_tag;
};

static void want_writable(void *opaque, bool on)
{
    struct owner *o = opaque;
    o->watch_calls++;
    o->watching = on;
}

static void sent(void *opaque, uint64_t tag)
{
    struct owner *o = opaque;
    o->sent++;
    o->last_tag = tag;
}

static const struct vp_outq_ops ops = { want_writable, sent };

static void nonblocking_pair(int sv[2])
{
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), ==, 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
}

/* Read everything available from @fd into @buf (at most @max), taking fds. */
static size_t drain(int fd, uint8_t *buf, size_t max, int *fds, unsigned *nfds)
{
    size_t got = 0;
    for (;;) {
        union { char b[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr a; } c;
        struct iovec iov = { buf + got, max - got };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.b,
                             .msg_controllen = sizeof(c.b) };
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n <= 0)
            return got;
        vp_take_scm_fds(&mh, fds, 8, nfds, NULL);
        got += (size_t)n;
    }
}

static void test_immediate_and_fds(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    nonblocking_pair(sv);
    struct owner o = { 0 };
    struct vp_outq q;
    vp_outq_init(&q, sv[0], 0, &ops, &o);
    int mine = vp_test_memfd("carried", 4096, FALSE);
    g_assert_cmpint(vp_outq_push(&q, "hello", 5, &mine, 1, 7), ==, 0);
    g_assert_true(vp_outq_idle(&q));
    g_assert_cmpuint(o.sent, ==, 1);
    g_assert_cmpuint(o.last_tag, ==, 7);
    g_assert_cmpint(o.watch_calls, ==, 0);
    g_assert_cmpuint(q.fds_sent, ==, 1);
    uint8_t buf[16];
    int got[8];
    unsigned ngot = 0;
    g_assert_cmpuint(drain(sv[1], buf, sizeof(buf), got, &ngot), ==, 5);
    g_assert_cmpmem(buf, 5, "hello", 5);
    g_assert_cmpuint(ngot, ==, 1);
    g_assert_cmpint(fcntl(mine, F_GETFD), >=, 0);  /* the caller's fd stays its own */
    vp_close_fds(got, ngot);
    close(mine);
    /* Bad arguments queue nothing. */
    int bad = 1000;
    g_assert_cmpint(vp_outq_push(&q, "x", 0, NULL, 0, 0), ==, -EINVAL);
    g_assert_cmpint(vp_outq_push(&q, "x", 1, &bad, 1, 0), ==, -EINVAL);
    g_assert_true(vp_outq_idle(&q));
    vp_outq_clear(&q);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_full_socket(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    nonblocking_pair(sv);
    struct owner o = { 0 };
    struct vp_outq q;
    vp_outq_init(&q, sv[0], 1 << 20, &ops, &o);
    static uint8_t chunk[3000];
    int efd = vp_test_memfd("fd", 4096, FALSE);
    unsigned pushed = 0;
    /* Until the socket is full and messages wait, each carrying an fd. */
    while (vp_outq_idle(&q) || q.count < 20) {
        memset(chunk, (int)pushed, sizeof(chunk));
        g_assert_cmpint(vp_outq_push(&q, chunk, sizeof(chunk), &efd, 1, pushed), ==, 0);
        pushed++;
    }
    g_assert_true(o.watching);
    g_assert_cmpuint(q.bytes, >, 0);
    /* The reader takes it all, the owner flushes on each "writable". */
    size_t total = 0;
    unsigned nfds = 0;
    static uint8_t in[1 << 20];
    int got[8];
    while (!vp_outq_idle(&q) || total < (size_t)pushed * sizeof(chunk)) {
        unsigned n = 0;
        total += drain(sv[1], in + total, sizeof(in) - total, got, &n);
        vp_close_fds(got, n);
        nfds += n;
        g_assert_cmpint(vp_outq_flush(&q), ==, 0);
    }
    g_assert_false(o.watching);
    g_assert_cmpuint(total, ==, (size_t)pushed * sizeof(chunk));
    g_assert_cmpuint(nfds, ==, pushed);
    g_assert_cmpuint(o.sent, ==, pushed);
    for (unsigned i = 0; i < pushed; i++)  /* in order */
        g_assert_cmpuint(in[i * sizeof(chunk)], ==, (uint8_t)i);
    close(efd);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_bound_and_error(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    nonblocking_pair(sv);
    struct owner o = { 0 };
    struct vp_outq q;
    vp_outq_init(&q, sv[0], 10000, &ops, &o);
    static uint8_t chunk[4000];
    int efd = vp_test_memfd("fd", 4096, FALSE);
    /* Fill the socket, then the bound. */
    while (vp_outq_idle(&q))
        g_assert_cmpint(vp_outq_push(&q, chunk, sizeof(chunk), NULL, 0, 0), ==, 0);
    g_assert_cmpint(vp_outq_push(&q, chunk, sizeof(chunk), &efd, 1, 0), ==, 0);
    g_assert_cmpint(vp_outq_push(&q, chunk, sizeof(chunk), &efd, 1, 0), ==, -ENOBUFS);
    g_assert_cmpint(vp_outq_push(&q, chunk, 20000, NULL, 0, 0), ==, -ENOBUFS);
    g_assert_cmpuint(q.count, ==, 2);
    /* The reader goes away: the next flush fails, stickily; nothing leaks. */
    close(sv[1]);
    g_assert_cmpint(vp_outq_flush(&q), ==, -EPIPE);
    g_assert_cmpint(q.error, ==, -EPIPE);
    g_assert_false(o.watching);
    g_assert_cmpint(vp_outq_push(&q, "x", 1, NULL, 0, 0), ==, -EPIPE);
    vp_outq_clear(&q);
    g_assert_cmpint(q.error, ==, 0);
    g_assert_true(vp_outq_idle(&q));
    close(efd);
    close(sv[0]);
    vp_assert_fds(before);
}

struct gowner {
    bool drained;
    int error;
};

static void g_drained(void *opaque)
{
    ((struct gowner *)opaque)->drained = true;
}

static void g_error_cb(void *opaque, int err)
{
    ((struct gowner *)opaque)->error = err;
}

static void test_glib_adapter(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    nonblocking_pair(sv);
    struct gowner o = { 0 };
    struct vp_outq_glib g;
    vp_outq_glib_init(&g, NULL, sv[0], 0, NULL, g_error_cb, &o);
    g.on_drained = g_drained;
    static uint8_t chunk[3000];
    while (vp_outq_idle(&g.q))
        g_assert_cmpint(vp_outq_push(&g.q, chunk, sizeof(chunk), NULL, 0, 0), ==, 0);
    g_assert_nonnull(g.src);
    /* A reader in the loop: the watch flushes until drained. */
    static uint8_t in[1 << 16];
    int spins = 0;
    while (!o.drained && spins++ < 1000) {
        unsigned n = 0;
        drain(sv[1], in, sizeof(in), NULL, &n);
        g_main_context_iteration(NULL, FALSE);
    }
    g_assert_true(o.drained);
    g_assert_null(g.src);
    /* And an error from the watch. */
    while (vp_outq_idle(&g.q))
        g_assert_cmpint(vp_outq_push(&g.q, chunk, sizeof(chunk), NULL, 0, 0), ==, 0);
    close(sv[1]);
    VP_SPIN_UNTIL(o.error != 0, 2000);
    g_assert_cmpint(o.error, ==, -EPIPE);
    vp_outq_glib_destroy(&g);
    close(sv[0]);
    vp_assert_fds(before);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_iteration(NULL, FALSE);  /* the default context's own fd, first */
    g_test_add_func("/outq/immediate-and-fds", test_immediate_and_fds);
    g_test_add_func("/outq/full-socket", test_full_socket);
    g_test_add_func("/outq/bound-and-error", test_bound_and_error);
    g_test_add_func("/outq/glib-adapter", test_glib_adapter);
    return g_test_run();
}
