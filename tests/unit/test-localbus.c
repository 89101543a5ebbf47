/*
 * test-localbus.c - the local device host's bus (protocol/vp_localbus.c): round trip
 * of every message type with its fds (identity checked with fstat), every malformed
 * message a hostile peer can send (wrong fd count for the type, unknown type, slot
 * out of range, fds not on the first byte, more fds than room, MSG_CTRUNC), EOF,
 * partial messages, EINTR, and that no error path leaks an fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <glib.h>

#include "testutil.h"
#include "vp_localbus.h"

/* --------------------------------- helpers --------------------------------- */

static int new_eventfd(void)
{
    int fd = eventfd(0, EFD_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    return fd;
}

static void assert_same_file(int a, int b)
{
    struct stat sa, sb;
    g_assert_cmpint(fstat(a, &sa), ==, 0);
    g_assert_cmpint(fstat(b, &sb), ==, 0);
    g_assert_cmpuint(sa.st_dev, ==, sb.st_dev);
    g_assert_cmpuint(sa.st_ino, ==, sb.st_ino);
    g_assert_cmpint(a, !=, b);
}

static void assert_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    g_assert_cmpint(fl, >=, 0);
    g_assert_true(fl & FD_CLOEXEC);
}

/* Raw write of bytes with optional fds, as a hostile peer would. */
static void raw_send(int sock, const void *buf, size_t len, const int *fds, unsigned nfds)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    g_assert_cmpint(vp_sendmsg_fds(sock, &iov, 1, fds, nfds, MSG_NOSIGNAL), ==, (ssize_t)len);
}

static void encode(unsigned char b[VP_LB_MSG_SIZE], const struct vp_lb_msg *m)
{
    vp_put_le32(b, m->type);
    vp_put_le32(b + 4, m->slot);
    vp_put_le32(b + 8, m->devfn);
    vp_put_le32(b + 12, m->count);
    vp_put_le64(b + 16, m->size);
    vp_put_le64(b + 24, m->arg);
}

/* Receive expecting failure: error code, reason, no fd handed out, none leaked
 * (@fds_before counts the process's fds once the sender closed its copies). */
static void expect_recv_error(int sock, unsigned maxfds, int want, const char *why)
{
    int fds[VP_LB_MAX_FDS];
    for (unsigned i = 0; i < VP_LB_MAX_FDS; i++)
        fds[i] = -1;
    unsigned nfds = 999;
    struct vp_lb_msg m;
    vp_error err = { "" };
    int r = vp_lb_recv(sock, &m, fds, maxfds, &nfds, &err);
    if (r != want || !strstr(err.msg, why))
        g_error("recv: ret %d reason '%s', want %d and '%s'", r, err.msg, want, why);
    g_assert_cmpuint(nfds, ==, 0);
    g_assert_cmpuint(m.type, ==, 0);
}

/* -------------------------------- round trips -------------------------------- */

struct rt_case {
    const char *name;
    struct vp_lb_msg m;
    unsigned nfds;
};

static void test_round_trip(void)
{
    static const struct rt_case cases[] = {
        { "HELLO", { VP_LB_HELLO, 0, 0, 0, 0, 0 }, 0 },
        { "PLUG_CONTROL", { VP_LB_PLUG_CONTROL, 3, VP_LB_CONTROL_DEVFN, 4, 1u << 20, 0 }, 4 },
        { "PEER_VECTORS", { VP_LB_PEER_VECTORS, 255, 0, 8, 0, 2 }, 8 },
        { "PEER_VECTORS gone", { VP_LB_PEER_VECTORS, 7, 0, 0, 0, 2 }, 0 },
        { "PEER_VECTORS max", { VP_LB_PEER_VECTORS, 1, 0, VP_LB_MAX_FDS, 0, 2 }, VP_LB_MAX_FDS },
        { "PLUG_WINDOW", { VP_LB_PLUG_WINDOW, 3, 0x28, 1, 1ULL << 33, 0x1122334455667788ULL }, 1 },
        { "UNPLUG_WINDOW", { VP_LB_UNPLUG_WINDOW, 3, 0x28, 0, 0, 0 }, 0 },
        { "UNPLUG_CONTROL", { VP_LB_UNPLUG_CONTROL, 3, 0, 0, 0, 0 }, 0 },
        { "EJECTED control", { VP_LB_EJECTED, 3, VP_LB_CONTROL_DEVFN, 0, 0, 0 }, 0 },
        { "EJECTED window", { VP_LB_EJECTED, 3, 0x28, 0, 0, 0 }, 0 },
    };
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    for (unsigned c = 0; c < VP_ARRAY_SIZE(cases); c++) {
        g_test_message("case: %s", cases[c].name);
        const struct rt_case *tc = &cases[c];
        int sent[VP_LB_MAX_FDS];
        for (unsigned i = 0; i < tc->nfds; i++)
            sent[i] = i == 0 && tc->m.type != VP_LB_PEER_VECTORS
                          ? vp_test_memfd("lb", 4096, FALSE)
                          : new_eventfd();
        g_assert_cmpint(vp_lb_send(sv[0], &tc->m, tc->nfds ? sent : NULL, tc->nfds), ==, 0);

        int got[VP_LB_MAX_FDS];
        unsigned n = 999;
        struct vp_lb_msg m;
        vp_error err = { "" };
        g_assert_cmpint(vp_lb_recv(sv[1], &m, got, VP_LB_MAX_FDS, &n, &err), ==, 0);
        g_assert_cmpstr(err.msg, ==, "");
        g_assert_cmpuint(m.type, ==, tc->m.type);
        g_assert_cmpuint(m.slot, ==, tc->m.slot);
        g_assert_cmpuint(m.devfn, ==, tc->m.devfn);
        g_assert_cmpuint(m.count, ==, tc->m.count);
        g_assert_cmpuint(m.size, ==, tc->m.size);
        g_assert_cmpuint(m.arg, ==, tc->m.arg);
        g_assert_cmpuint(n, ==, tc->nfds);
        for (unsigned i = 0; i < n; i++) {
            assert_same_file(sent[i], got[i]);   /* same file, in order */
            assert_cloexec(got[i]);
        }
        vp_close_fds(got, n);
        vp_close_fds(sent, tc->nfds);
        vp_assert_fds(before);
    }
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

/* Several messages back to back in the socket buffer are taken one at a time, each
 * with its own fds. */
static void test_back_to_back(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    int a = vp_test_memfd("a", 8192, FALSE), b = vp_test_memfd("b", 4096, FALSE);
    struct vp_lb_msg w1 = { VP_LB_PLUG_WINDOW, 1, 2, 1, 8192, 0 };
    struct vp_lb_msg w2 = { VP_LB_PLUG_WINDOW, 1, 3, 1, 4096, 0 };
    struct vp_lb_msg u = { VP_LB_UNPLUG_WINDOW, 1, 2, 0, 0, 0 };
    g_assert_cmpint(vp_lb_send(sv[0], &w1, &a, 1), ==, 0);
    g_assert_cmpint(vp_lb_send(sv[0], &u, NULL, 0), ==, 0);
    g_assert_cmpint(vp_lb_send(sv[0], &w2, &b, 1), ==, 0);
    int got[4];
    unsigned n;
    struct vp_lb_msg m;
    g_assert_cmpint(vp_lb_recv(sv[1], &m, got, 4, &n, NULL), ==, 0);
    g_assert_cmpuint(m.devfn, ==, 2);
    g_assert_cmpuint(n, ==, 1);
    assert_same_file(a, got[0]);
    vp_close_fd(&got[0]);
    g_assert_cmpint(vp_lb_recv(sv[1], &m, got, 4, &n, NULL), ==, 0);
    g_assert_cmpuint(m.type, ==, VP_LB_UNPLUG_WINDOW);
    g_assert_cmpuint(n, ==, 0);
    g_assert_cmpint(vp_lb_recv(sv[1], &m, got, 4, &n, NULL), ==, 0);
    g_assert_cmpuint(m.devfn, ==, 3);
    g_assert_cmpuint(n, ==, 1);
    assert_same_file(b, got[0]);
    vp_close_fd(&got[0]);
    vp_close_fd(&a);
    vp_close_fd(&b);
    vp_assert_fds(before);
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

/* ------------------------------ hostile messages ------------------------------ */

struct bad_case {
    const char *name;
    struct vp_lb_msg m;
    unsigned nfds;
    unsigned maxfds;
    const char *why;
};

static void test_bad_messages(void)
{
    static const struct bad_case cases[] = {
        { "HELLO with an fd", { VP_LB_HELLO, 0, 0, 0, 0, 0 }, 1, 8,
          "HELLO: wrong fd count: got 1, expected 0" },
        { "PLUG_CONTROL with 3", { VP_LB_PLUG_CONTROL, 1, 0, 4, 4096, 0 }, 3, 8,
          "PLUG_CONTROL: wrong fd count: got 3, expected 4" },
        { "PLUG_CONTROL with 5", { VP_LB_PLUG_CONTROL, 1, 0, 4, 4096, 0 }, 5, 8,
          "PLUG_CONTROL: wrong fd count: got 5, expected 4" },
        { "PLUG_CONTROL with 0", { VP_LB_PLUG_CONTROL, 1, 0, 4, 4096, 0 }, 0, 8,
          "PLUG_CONTROL: wrong fd count: got 0, expected 4" },
        { "PEER_VECTORS count 3, 2 fds", { VP_LB_PEER_VECTORS, 1, 0, 3, 0, 2 }, 2, 8,
          "PEER_VECTORS: wrong fd count: got 2, expected 3" },
        { "PEER_VECTORS count 0, 1 fd", { VP_LB_PEER_VECTORS, 1, 0, 0, 0, 2 }, 1, 8,
          "PEER_VECTORS: wrong fd count: got 1, expected 0" },
        { "PEER_VECTORS count huge", { VP_LB_PEER_VECTORS, 1, 0, 0xffffffffu, 0, 2 }, 4, 8,
          "PEER_VECTORS: wrong fd count: got 4, expected 4294967295" },
        { "PLUG_WINDOW with 0", { VP_LB_PLUG_WINDOW, 1, 5, 1, 4096, 0 }, 0, 8,
          "PLUG_WINDOW: wrong fd count: got 0, expected 1" },
        { "PLUG_WINDOW with 2", { VP_LB_PLUG_WINDOW, 1, 5, 1, 4096, 0 }, 2, 8,
          "PLUG_WINDOW: wrong fd count: got 2, expected 1" },
        { "UNPLUG_WINDOW with 2", { VP_LB_UNPLUG_WINDOW, 1, 5, 0, 0, 0 }, 2, 8,
          "UNPLUG_WINDOW: wrong fd count: got 2, expected 0" },
        { "UNPLUG_CONTROL with 1", { VP_LB_UNPLUG_CONTROL, 1, 0, 0, 0, 0 }, 1, 8,
          "UNPLUG_CONTROL: wrong fd count: got 1, expected 0" },
        { "EJECTED with 1", { VP_LB_EJECTED, 1, 0, 0, 0, 0 }, 1, 8,
          "EJECTED: wrong fd count: got 1, expected 0" },
        { "type 0", { 0, 0, 0, 0, 0, 0 }, 0, 8, "unknown message type 0" },
        { "type 8 with fds", { 8, 0, 0, 2, 0, 0 }, 2, 8, "unknown message type 8" },
        { "type 0xffffffff", { 0xffffffffu, 0, 0, 1, 0, 0 }, 1, 8,
          "unknown message type 4294967295" },
        { "slot 256", { VP_LB_PLUG_WINDOW, 256, 0, 1, 4096, 0 }, 1, 8,
          "PLUG_WINDOW: slot 256 out of range (max 255)" },
        { "slot huge", { VP_LB_PLUG_CONTROL, 0xffffffffu, 0, 4, 4096, 0 }, 4, 8,
          "slot 4294967295 out of range" },
        { "more fds than room", { VP_LB_PEER_VECTORS, 1, 0, 6, 0, 2 }, 6, 2,
          "more fds than the 2 expected" },
        { "fds but no room", { VP_LB_PLUG_WINDOW, 1, 0, 1, 4096, 0 }, 1, 0,
          "more fds than the 0 expected" },
    };
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    for (unsigned c = 0; c < VP_ARRAY_SIZE(cases); c++) {
        g_test_message("case: %s", cases[c].name);
        const struct bad_case *tc = &cases[c];
        int sent[8];
        for (unsigned i = 0; i < tc->nfds; i++)
            sent[i] = new_eventfd();
        g_assert_cmpint(vp_lb_send(sv[0], &tc->m, sent, tc->nfds), ==, 0);
        vp_close_fds(sent, tc->nfds);   /* the socket holds the in-flight copies */
        expect_recv_error(sv[1], tc->maxfds, -EPROTO, tc->why);
        vp_assert_fds(before);
        /* The stream is still in step: a good message after a bad one works. */
        struct vp_lb_msg hello = { VP_LB_HELLO, 0, 0, 0, 0, 0 }, m;
        unsigned n;
        g_assert_cmpint(vp_lb_send(sv[0], &hello, NULL, 0), ==, 0);
        g_assert_cmpint(vp_lb_recv(sv[1], &m, NULL, 0, &n, NULL), ==, 0);
        g_assert_cmpuint(m.type, ==, VP_LB_HELLO);
    }
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

/* A second batch of fds attached to a later byte of the message. (A stream socket
 * merges a leading fd-less chunk into the read that returns the first fds, so only
 * fds arriving with a later read are detectable; those are refused.) */
static void test_fds_not_on_first_byte(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    struct vp_lb_msg m = { VP_LB_PLUG_WINDOW, 1, 2, 1, 4096, 0 };
    unsigned char b[VP_LB_MSG_SIZE];
    encode(b, &m);
    int fd = vp_test_memfd("first", 4096, FALSE), late = vp_test_memfd("late", 4096, FALSE);
    raw_send(sv[0], b, 8, &fd, 1);
    raw_send(sv[0], b + 8, VP_LB_MSG_SIZE - 8, &late, 1);
    vp_close_fd(&fd);
    vp_close_fd(&late);
    expect_recv_error(sv[1], 4, -EPROTO, "fds not attached to the first byte");
    vp_assert_fds(before);
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

/* Fds on the first byte, the rest of the message in later writes: fine. */
static void test_partial_message(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    struct vp_lb_msg m = { VP_LB_PLUG_WINDOW, 9, 0x30, 1, 1 << 21, 5 };
    unsigned char b[VP_LB_MSG_SIZE];
    encode(b, &m);
    int fd = vp_test_memfd("partial", 4096, FALSE);
    raw_send(sv[0], b, 1, &fd, 1);
    raw_send(sv[0], b + 1, 10, NULL, 0);
    raw_send(sv[0], b + 11, VP_LB_MSG_SIZE - 11, NULL, 0);
    int got[2];
    unsigned n;
    struct vp_lb_msg r;
    vp_error err = { "" };
    g_assert_cmpint(vp_lb_recv(sv[1], &r, got, 2, &n, &err), ==, 0);
    g_assert_cmpuint(r.slot, ==, 9);
    g_assert_cmpuint(r.size, ==, 1 << 21);
    g_assert_cmpuint(n, ==, 1);
    assert_same_file(fd, got[0]);
    vp_close_fd(&got[0]);
    vp_close_fd(&fd);
    vp_assert_fds(before);
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

/* EOF before a message: -ECONNRESET; EOF in the middle of one: -EPROTO, fds closed. */
static void test_eof(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    vp_close_fd(&sv[0]);
    expect_recv_error(sv[1], 4, -ECONNRESET, "connection closed by peer");
    vp_close_fd(&sv[1]);

    vp_test_socketpair(sv);
    struct vp_lb_msg m = { VP_LB_PLUG_WINDOW, 1, 2, 1, 4096, 0 };
    unsigned char b[VP_LB_MSG_SIZE];
    encode(b, &m);
    int fd = vp_test_memfd("short", 4096, FALSE);
    raw_send(sv[0], b, 20, &fd, 1);
    vp_close_fd(&fd);
    vp_close_fd(&sv[0]);
    expect_recv_error(sv[1], 4, -EPROTO, "short message (20 of 32 bytes before EOF)");
    vp_close_fd(&sv[1]);
    vp_assert_fds(before - 2);
}

/* The receiving process runs out of fd numbers: the kernel delivers what fits and
 * sets MSG_CTRUNC; every fd that did arrive is closed, and the header is returned
 * with -ENOBUFS so the receiver can refuse that one message. */
static void test_ctrunc(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    enum { N = 64 };
    int sent[N];
    for (unsigned i = 0; i < N; i++)
        sent[i] = new_eventfd();
    struct vp_lb_msg m = { VP_LB_PEER_VECTORS, 1, 0, N, 0, 2 };
    g_assert_cmpint(vp_lb_send(sv[0], &m, sent, N), ==, 0);
    vp_close_fds(sent, N);
    int before = vp_count_open_fds();

    struct rlimit old, tight;
    g_assert_cmpint(getrlimit(RLIMIT_NOFILE, &old), ==, 0);
    tight = old;
    tight.rlim_cur = (rlim_t)before + 3;   /* only a few new fd numbers are free */
    g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &tight), ==, 0);
    int got[VP_LB_MAX_FDS];
    unsigned n = 999;
    struct vp_lb_msg r;
    vp_error err = { "" };
    int ret = vp_lb_recv(sv[1], &r, got, VP_LB_MAX_FDS, &n, &err);
    g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &old), ==, 0);
    if (ret != -ENOBUFS || !strstr(err.msg, "MSG_CTRUNC"))
        g_error("recv: ret %d reason '%s', want -ENOBUFS and MSG_CTRUNC", ret, err.msg);
    g_assert_cmpuint(n, ==, 0);
    /* The header came whole: the receiver can refuse just this message. */
    g_assert_cmpuint(r.type, ==, VP_LB_PEER_VECTORS);
    g_assert_cmpuint(r.slot, ==, 1);
    g_assert_cmpuint(r.count, ==, N);
    vp_assert_fds(before);
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

/* ---------------------------------- sending ---------------------------------- */

static void test_send_errors(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    struct vp_lb_msg m = { VP_LB_PEER_VECTORS, 1, 0, VP_LB_MAX_FDS + 1, 0, 2 };
    int fds[VP_LB_MAX_FDS + 1];
    for (unsigned i = 0; i < VP_ARRAY_SIZE(fds); i++)
        fds[i] = 0;
    g_assert_cmpint(vp_lb_send(sv[0], &m, fds, VP_LB_MAX_FDS + 1), ==, -EINVAL);
    g_assert_cmpint(vp_lb_send(sv[0], &m, NULL, 1), ==, -EINVAL);
    /* A bad fd number: the kernel refuses, nothing is sent. */
    int bad = 1000000;
    m.count = 1;
    g_assert_cmpint(vp_lb_send(sv[0], &m, &bad, 1), ==, -EBADF);
    /* Peer gone: -EPIPE, and no SIGPIPE kills us (MSG_NOSIGNAL). */
    vp_close_fd(&sv[1]);
    struct vp_lb_msg hello = { VP_LB_HELLO, 0, 0, 0, 0, 0 };
    g_assert_cmpint(vp_lb_send(sv[0], &hello, NULL, 0), ==, -EPIPE);
    vp_close_fd(&sv[0]);
    vp_assert_fds(before - 2);
}

/* ------------------------------ EINTR, non-blocking ------------------------------ */

static volatile sig_atomic_t alarms;
static void on_alarm(int sig) { (void)sig; alarms++; }

struct delayed {
    int sock;
    int fd;
    unsigned delay_ms;
    const unsigned char *bytes;
    size_t off, len;
};

static gpointer delayed_send(gpointer opaque)
{
    struct delayed *d = opaque;
    g_usleep(d->delay_ms * 1000);
    raw_send(d->sock, d->bytes + d->off, d->len, d->fd >= 0 ? &d->fd : NULL, d->fd >= 0);
    return NULL;
}

/* A signal interrupts the blocked recvmsg (no SA_RESTART): recv retries and gets the
 * message the other thread sends later. */
static void test_eintr(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    struct sigaction sa = { .sa_handler = on_alarm }, old;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;   /* no SA_RESTART: the syscall fails with EINTR */
    g_assert_cmpint(sigaction(SIGALRM, &sa, &old), ==, 0);

    struct vp_lb_msg m = { VP_LB_PLUG_WINDOW, 4, 1, 1, 4096, 0 };
    unsigned char b[VP_LB_MSG_SIZE];
    encode(b, &m);
    int fd = vp_test_memfd("eintr", 4096, FALSE);
    struct delayed d = { sv[0], fd, 300, b, 0, VP_LB_MSG_SIZE };
    /* The sender thread must not take the signal. */
    sigset_t block, prev;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &block, &prev);
    GThread *t = g_thread_new("sender", delayed_send, &d);
    pthread_sigmask(SIG_SETMASK, &prev, NULL);

    alarms = 0;
    struct itimerval it = { .it_value = { 0, 30000 } };
    g_assert_cmpint(setitimer(ITIMER_REAL, &it, NULL), ==, 0);
    int got[2];
    unsigned n;
    struct vp_lb_msg r;
    vp_error err = { "" };
    int ret = vp_lb_recv(sv[1], &r, got, 2, &n, &err);
    g_thread_join(t);
    g_assert_cmpint(ret, ==, 0);
    g_assert_cmpuint(r.slot, ==, 4);
    g_assert_cmpuint(n, ==, 1);
    assert_same_file(fd, got[0]);
    g_assert_cmpint(alarms, ==, 1);
    sigaction(SIGALRM, &old, NULL);
    vp_close_fd(&got[0]);
    vp_close_fd(&fd);
    vp_assert_fds(before);
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

/* Non-blocking receiver: nothing there -> -EAGAIN; half a message there -> recv waits
 * (bounded) for the rest. */
static void test_nonblocking(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    int fl = fcntl(sv[1], F_GETFL);
    g_assert_cmpint(fcntl(sv[1], F_SETFL, fl | O_NONBLOCK), ==, 0);
    expect_recv_error(sv[1], 2, -EAGAIN, "");

    struct vp_lb_msg m = { VP_LB_PLUG_WINDOW, 4, 1, 1, 4096, 0 };
    unsigned char b[VP_LB_MSG_SIZE];
    encode(b, &m);
    int fd = vp_test_memfd("nb", 4096, FALSE);
    raw_send(sv[0], b, 12, &fd, 1);
    struct delayed d = { sv[0], -1, 100, b, 12, VP_LB_MSG_SIZE - 12 };
    GThread *t = g_thread_new("sender", delayed_send, &d);
    int got[2];
    unsigned n;
    struct vp_lb_msg r;
    int ret = vp_lb_recv(sv[1], &r, got, 2, &n, NULL);
    g_thread_join(t);
    g_assert_cmpint(ret, ==, 0);
    g_assert_cmpuint(r.type, ==, VP_LB_PLUG_WINDOW);
    g_assert_cmpuint(n, ==, 1);
    assert_same_file(fd, got[0]);
    vp_close_fd(&got[0]);
    vp_close_fd(&fd);
    vp_assert_fds(before);
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

struct recv_job {
    int sock;
    int ret;
    struct vp_lb_msg m;
    int fds[2];
    unsigned nfds;
    vp_error err;
    gint done;
};

static gpointer recv_thread(gpointer opaque)
{
    struct recv_job *j = opaque;
    j->ret = vp_lb_recv(j->sock, &j->m, j->fds, 2, &j->nfds, &j->err);
    g_atomic_int_set(&j->done, 1);
    return NULL;
}

/* Blocking receiver, a peer that sends half a message (with its fd) and then nothing
 * while keeping the connection open: recv gives up after its bound with -EPROTO and
 * closes the fd, instead of blocking its caller's main loop for ever. */
static void test_stalled_half_message(void)
{
    int sv[2];
    vp_test_socketpair(sv);
    int before = vp_count_open_fds();
    struct vp_lb_msg m = { VP_LB_PLUG_WINDOW, 4, 1, 1, 4096, 0 };
    unsigned char b[VP_LB_MSG_SIZE];
    encode(b, &m);
    int fd = vp_test_memfd("stalled", 4096, FALSE);
    raw_send(sv[0], b, 10, &fd, 1);
    vp_close_fd(&fd);

    struct recv_job j = { .sock = sv[1], .err = { "" } };
    GThread *t = g_thread_new("receiver", recv_thread, &j);
    gint64 deadline = g_get_monotonic_time() + 15 * G_USEC_PER_SEC;
    while (!g_atomic_int_get(&j.done) && g_get_monotonic_time() < deadline)
        g_usleep(10000);
    gboolean returned = g_atomic_int_get(&j.done);
    if (!returned)
        shutdown(sv[1], SHUT_RDWR);  /* unblock it, then fail */
    g_thread_join(t);
    g_assert_true(returned);
    g_assert_cmpint(j.ret, ==, -EPROTO);
    g_assert_nonnull(strstr(j.err.msg, "short message (10 of 32 bytes, rest did not arrive)"));
    g_assert_cmpuint(j.nfds, ==, 0);
    vp_assert_fds(before);
    vp_close_fd(&sv[0]);
    vp_close_fd(&sv[1]);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/localbus/round_trip", test_round_trip);
    g_test_add_func("/localbus/back_to_back", test_back_to_back);
    g_test_add_func("/localbus/bad_messages", test_bad_messages);
    g_test_add_func("/localbus/fds_not_on_first_byte", test_fds_not_on_first_byte);
    g_test_add_func("/localbus/partial_message", test_partial_message);
    g_test_add_func("/localbus/eof", test_eof);
    g_test_add_func("/localbus/ctrunc", test_ctrunc);
    g_test_add_func("/localbus/send_errors", test_send_errors);
    g_test_add_func("/localbus/eintr", test_eintr);
    g_test_add_func("/localbus/nonblocking", test_nonblocking);
    g_test_add_func("/localbus/stalled_half_message", test_stalled_half_message);
    return g_test_run();
}
