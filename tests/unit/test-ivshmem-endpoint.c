/*
 * test-ivshmem-endpoint.c - the ivshmem-server endpoint (server/ivshmem_endpoint.c)
 * against a fake QEMU that connects like ivshmem-doorbell's chardev and decodes the
 * 8-byte little-endian messages and their SCM_RIGHTS fds.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../server/ivshmem_endpoint.h"
#include "../testutil.h"

#define WAIT_MS 3000

typedef struct rig {
    char *dir, *path;
    int shm;
    int srv[2];         /* peer 0: receiveq kick, transmitq kick */
    int irq;            /* peer 1 vector 0 */
    int call[3];        /* peer 2 */
    ivshmem_endpoint *ep;
    int ups, downs;
} rig;

static void on_state(ivshmem_endpoint *ep, gboolean up, void *opaque)
{
    rig *r = opaque;
    (void)ep;
    if (up)
        r->ups++;
    else
        r->downs++;
}

static int efd(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    g_assert_cmpint(fd, >=, 0);
    return fd;
}

static void rig_up(rig *r)
{
    vp_error err = { { 0 } };
    unsigned i;

    memset(r, 0, sizeof(*r));
    r->dir = g_dir_make_tmp("vp-ivep-XXXXXX", NULL);
    r->path = g_build_filename(r->dir, "ctl.sock", NULL);
    r->shm = vp_test_memfd("ivshmem-ctl", 1 << 20, TRUE);
    r->srv[0] = efd();
    r->srv[1] = efd();
    r->irq = efd();
    for (i = 0; i < 3; i++)
        r->call[i] = efd();
    r->ep = ivshmem_endpoint_new(NULL, r->path, r->shm, 1, &err);
    g_assert_nonnull(r->ep);
    ivshmem_endpoint_set_state_handler(r->ep, on_state, r);
    g_assert_cmpint(ivshmem_endpoint_set_peer(r->ep, 0, r->srv, 2, &err), ==, 0);
    g_assert_cmpint(ivshmem_endpoint_set_peer(r->ep, 1, &r->irq, 1, &err), ==, 0);
    g_assert_cmpint(ivshmem_endpoint_set_peer(r->ep, 2, r->call, 3, &err), ==, 0);
    g_assert_cmpuint(ivshmem_endpoint_max_vectors(r->ep), ==, 3);
}

static void rig_down(rig *r)
{
    unsigned i;
    struct stat st;

    ivshmem_endpoint_free(r->ep);
    g_assert_cmpint(stat(r->path, &st), ==, -1);    /* socket file removed */
    vp_close_fd(&r->shm);
    vp_close_fds(r->srv, 2);
    vp_close_fd(&r->irq);
    for (i = 0; i < 3; i++)
        vp_close_fd(&r->call[i]);
    g_rmdir(r->dir);
    g_free(r->dir);
    g_free(r->path);
}

/* Fake QEMU side. */
static int qemu_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    g_assert_cmpint(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    return fd;
}

/* Read one message (bounded); returns 1 and fills, or 0 on EOF / nothing within @ms. */
static int qemu_recv(int fd, int64_t *value, int *rfd, int ms)
{
    uint8_t b[8];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = { b, sizeof(b) };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof(u.buf) };
    struct pollfd p = { fd, POLLIN, 0 };
    struct cmsghdr *cm;
    ssize_t n;

    *rfd = -1;
    if (poll(&p, 1, ms) != 1)
        return 0;
    n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    if (n == 0)
        return 0;
    g_assert_cmpint(n, ==, 8);      /* the endpoint never splits a message here */
    for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
            memcpy(rfd, CMSG_DATA(cm), sizeof(int));
    *value = (int64_t)vp_get_le64(b);
    return 1;
}

static void same_file(int a, int b)
{
    struct stat sa, sb;
    g_assert_cmpint(fstat(a, &sa), ==, 0);
    g_assert_cmpint(fstat(b, &sb), ==, 0);
    g_assert_true(sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino);
}

/* Expect message (@value, fd that is the same file as @want, or none if @want < 0). */
static void expect(int qfd, int64_t value, int want)
{
    int64_t v = 12345;
    int got;

    g_assert_cmpint(qemu_recv(qfd, &v, &got, WAIT_MS), ==, 1);
    g_assert_cmpint(v, ==, value);
    if (want < 0) {
        g_assert_cmpint(got, ==, -1);
    } else {
        g_assert_cmpint(got, >=, 0);
        same_file(got, want);
        vp_close_fd(&got);
    }
}

static void expect_full_setup(rig *r, int q)
{
    expect(q, 0, -1);               /* protocol version */
    expect(q, 1, -1);               /* own id */
    expect(q, -1, r->shm);          /* shared memory */
    expect(q, 0, r->srv[0]);        /* peer 0 vectors 0, 1 */
    expect(q, 0, r->srv[1]);
    expect(q, 1, r->irq);           /* own vector 0 */
    expect(q, 2, r->call[0]);       /* peer 2 vectors 0..2 */
    expect(q, 2, r->call[1]);
    expect(q, 2, r->call[2]);
}

static void test_setup_sequence(void)
{
    int before = vp_count_open_fds();
    rig r;
    int q, dummy;
    int64_t v;
    ivshmem_endpoint_stats st;

    rig_up(&r);
    g_assert_false(ivshmem_endpoint_connected(r.ep));
    q = qemu_connect(r.path);
    VP_SPIN_UNTIL(r.ups == 1, WAIT_MS);
    g_assert_cmpint(r.ups, ==, 1);
    g_assert_true(ivshmem_endpoint_connected(r.ep));
    expect_full_setup(&r, q);
    g_assert_cmpint(qemu_recv(q, &v, &dummy, 50), ==, 0);      /* nothing more */
    ivshmem_endpoint_get_stats(r.ep, &st);
    g_assert_cmpuint(st.connections, ==, 1);
    g_assert_cmpuint(st.messages_sent, ==, 9);
    g_assert_cmpuint(st.fds_sent, ==, 7);
    g_assert_cmpuint(st.shm_sent, ==, 1);

    /* The eventfds are the caller's: a write on QEMU's side is seen by the caller's
     * fd (the endpoint keeps duplicates of the same eventfd). */
    g_assert_cmpint(ivshmem_endpoint_notify(r.ep, 1, 0), ==, 0);
    {
        uint64_t cnt = 0;
        g_assert_cmpint(read(r.irq, &cnt, 8), ==, 8);
        g_assert_cmpuint(cnt, ==, 1);
    }
    g_assert_cmpint(ivshmem_endpoint_notify(r.ep, 1, 1), ==, -EINVAL);
    g_assert_cmpint(ivshmem_endpoint_peer_fd(r.ep, 0, 1), >=, 0);
    g_assert_cmpint(ivshmem_endpoint_peer_fd(r.ep, 0, 2), ==, -1);
    g_assert_cmpint(ivshmem_endpoint_peer_fd(r.ep, 99, 0), ==, -1);

    vp_close_fd(&q);
    VP_SPIN_UNTIL(r.downs == 1, WAIT_MS);
    g_assert_cmpint(r.downs, ==, 1);
    g_assert_false(ivshmem_endpoint_connected(r.ep));
    rig_down(&r);
    vp_assert_fds(before);
}

static void test_peer_update(void)
{
    int before = vp_count_open_fds();
    rig r;
    int q, dummy, newcall[3], list[6];
    int64_t v;
    vp_error err = { { 0 } };
    ivshmem_endpoint_stats st;

    rig_up(&r);
    q = qemu_connect(r.path);
    VP_SPIN_UNTIL(r.ups == 1, WAIT_MS);
    expect_full_setup(&r, q);
    newcall[0] = efd();
    newcall[1] = efd();
    newcall[2] = efd();

    /* New call fds get fresh vector numbers: only they are sent, in order; a hole is
     * filled with the endpoint's sink eventfd; never a "peer gone" (id, no fd). */
    list[0] = r.call[0];
    list[1] = r.call[1];
    list[2] = r.call[2];
    list[3] = newcall[0];
    list[4] = -1;
    list[5] = newcall[1];
    g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 2, list, 6, &err), ==, 0);
    expect(q, 2, newcall[0]);
    {
        int64_t val;
        int got;
        g_assert_cmpint(qemu_recv(q, &val, &got, WAIT_MS), ==, 1);
        g_assert_cmpint(val, ==, 2);
        g_assert_cmpint(got, >=, 0);    /* the sink */
        vp_close_fd(&got);
    }
    expect(q, 2, newcall[1]);
    g_assert_cmpint(qemu_recv(q, &v, &dummy, 50), ==, 0);
    g_assert_cmpuint(ivshmem_endpoint_peer_vectors(r.ep, 2), ==, 6);

    /* Replacing a vector QEMU holds is refused, and changes nothing. */
    list[1] = newcall[2];
    g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 2, list, 6, &err), ==, -ENOTSUP);
    g_assert_nonnull(strstr(err.msg, "peer 2 vector 1 already has an eventfd in QEMU"));
    g_assert_cmpuint(ivshmem_endpoint_peer_vectors(r.ep, 2), ==, 6);
    /* Holes and a shorter list are fine (QEMU keeps the old ones); same for "gone". */
    list[1] = -1;
    g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 2, list, 4, &err), ==, 0);
    g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 2, NULL, 0, &err), ==, 0);
    g_assert_cmpint(qemu_recv(q, &v, &dummy, 50), ==, 0);
    g_assert_cmpuint(ivshmem_endpoint_peer_vectors(r.ep, 2), ==, 6);
    /* The same file under another fd number is "unchanged". */
    {
        int d = dup(r.call[0]);
        g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 2, &d, 1, &err), ==, 0);
        vp_close_fd(&d);
    }
    /* Appending after that continues at vector 6. */
    list[0] = -1;
    list[1] = -1;
    list[2] = -1;
    list[3] = -1;
    list[4] = -1;
    list[5] = -1;
    {
        int l7[7] = { -1, -1, -1, -1, -1, -1, newcall[2] };
        g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 2, l7, 7, &err), ==, 0);
    }
    expect(q, 2, newcall[2]);
    g_assert_cmpint(qemu_recv(q, &v, &dummy, 50), ==, 0);

    /* QEMU's own vectors are fixed while it is connected. */
    g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 1, newcall, 1, &err), ==, -EBUSY);
    g_assert_nonnull(strstr(err.msg, "cannot change while it is connected"));

    /* Not connected: the list is replaced as given, and a new QEMU gets all of it. */
    vp_close_fd(&q);
    VP_SPIN_UNTIL(r.downs == 1, WAIT_MS);
    list[0] = newcall[1];
    list[1] = -1;
    list[2] = newcall[0];
    g_assert_cmpint(ivshmem_endpoint_set_peer(r.ep, 2, list, 3, &err), ==, 0);
    q = qemu_connect(r.path);
    VP_SPIN_UNTIL(r.ups == 2, WAIT_MS);
    expect(q, 0, -1);
    expect(q, 1, -1);
    expect(q, -1, r.shm);
    expect(q, 0, r.srv[0]);
    expect(q, 0, r.srv[1]);
    expect(q, 1, r.irq);
    expect(q, 2, newcall[1]);
    {
        int64_t val;
        int got;
        g_assert_cmpint(qemu_recv(q, &val, &got, WAIT_MS), ==, 1);
        g_assert_cmpint(val, ==, 2);
        g_assert_cmpint(got, >=, 0);
        vp_close_fd(&got);
    }
    expect(q, 2, newcall[0]);
    g_assert_cmpint(qemu_recv(q, &v, &dummy, 50), ==, 0);
    ivshmem_endpoint_get_stats(r.ep, &st);
    g_assert_cmpuint(st.connections, ==, 2);
    vp_close_fd(&q);
    vp_close_fds(newcall, 3);
    rig_down(&r);
    vp_assert_fds(before);
}

static void test_second_connection_rejected(void)
{
    int before = vp_count_open_fds();
    rig r;
    int q, q2, dummy;
    int64_t v;
    ivshmem_endpoint_stats st;

    rig_up(&r);
    q = qemu_connect(r.path);
    VP_SPIN_UNTIL(r.ups == 1, WAIT_MS);
    q2 = qemu_connect(r.path);
    ivshmem_endpoint_get_stats(r.ep, &st);
    VP_SPIN_UNTIL((ivshmem_endpoint_get_stats(r.ep, &st), st.rejected == 1), WAIT_MS);
    g_assert_cmpuint(st.rejected, ==, 1);
    g_assert_cmpint(qemu_recv(q2, &v, &dummy, WAIT_MS), ==, 0);   /* EOF, nothing sent */
    expect_full_setup(&r, q);
    vp_close_fd(&q2);
    vp_close_fd(&q);
    VP_SPIN_UNTIL(r.downs == 1, WAIT_MS);
    /* Freed while connected. */
    q = qemu_connect(r.path);
    VP_SPIN_UNTIL(r.ups == 2, WAIT_MS);
    expect_full_setup(&r, q);
    rig_down(&r);
    g_assert_cmpint(qemu_recv(q, &v, &dummy, WAIT_MS), ==, 0);    /* then EOF */
    vp_close_fd(&q);
    vp_assert_fds(before);
}

static void test_bad_input(void)
{
    int before = vp_count_open_fds();
    g_autofree char *dir = g_dir_make_tmp("vp-ivep-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "x.sock", NULL);
    vp_error err = { { 0 } };
    ivshmem_endpoint *ep;
    int shm, odd, fds[2];

    /* A shm that is not a power of two would abort QEMU: refused. */
    odd = vp_test_memfd("odd", 3 << 20, TRUE);
    g_assert_null(ivshmem_endpoint_new(NULL, path, odd, 1, &err));
    g_assert_nonnull(strstr(err.msg, "not a power of two"));
    vp_close_fd(&odd);
    odd = vp_test_memfd("empty", 0, FALSE);
    g_assert_null(ivshmem_endpoint_new(NULL, path, odd, 1, &err));
    g_assert_nonnull(strstr(err.msg, "size 0 is not a power of two"));
    vp_close_fd(&odd);

    shm = vp_test_memfd("ok", 4096, TRUE);
    g_assert_null(ivshmem_endpoint_new(NULL, path, shm, IVSHMEM_EP_MAX_PEERS, &err));
    g_assert_nonnull(strstr(err.msg, "own id 16 out of range"));
    g_assert_null(ivshmem_endpoint_new(NULL, path, -1, 1, &err));
    g_assert_nonnull(strstr(err.msg, "shm fd"));
    g_assert_cmpint(access(path, F_OK), ==, -1);

    ep = ivshmem_endpoint_new(NULL, path, shm, 1, &err);
    g_assert_nonnull(ep);
    /* The path is taken now. */
    g_assert_null(ivshmem_endpoint_new(NULL, path, shm, 1, &err));
    g_assert_nonnull(strstr(err.msg, "Address already in use"));

    fds[0] = efd();
    fds[1] = 1000000;
    g_assert_cmpint(ivshmem_endpoint_set_peer(ep, 16, fds, 1, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "peer id 16 out of range"));
    g_assert_cmpint(ivshmem_endpoint_set_peer(ep, 2, fds, 257, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "257 vectors, at most 256"));
    g_assert_cmpint(ivshmem_endpoint_set_peer(ep, 2, fds, 1, &err), ==, 0);
    /* A bad fd changes nothing. */
    g_assert_cmpint(ivshmem_endpoint_set_peer(ep, 2, fds, 2, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "vector 1: bad fd 1000000"));
    fds[1] = -7;
    g_assert_cmpint(ivshmem_endpoint_set_peer(ep, 2, fds, 2, &err), ==, -EINVAL);
    g_assert_nonnull(strstr(err.msg, "vector 1: bad fd -7"));
    g_assert_cmpuint(ivshmem_endpoint_peer_vectors(ep, 2), ==, 1);
    vp_close_fd(&fds[0]);
    ivshmem_endpoint_free(ep);
    vp_close_fd(&shm);
    g_rmdir(dir);
    vp_assert_fds(before);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_main_context_iteration(NULL, FALSE);  /* the context's wakeup fd, before baselines */
    g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL);
    g_test_add_func("/ivshmem-endpoint/setup-sequence", test_setup_sequence);
    g_test_add_func("/ivshmem-endpoint/peer-update", test_peer_update);
    g_test_add_func("/ivshmem-endpoint/second-connection", test_second_connection_rejected);
    g_test_add_func("/ivshmem-endpoint/bad-input", test_bad_input);
    return g_test_run();
}
