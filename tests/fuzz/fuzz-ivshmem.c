/*
 * fuzz-ivshmem.c - libFuzzer target: the server's ivshmem-server endpoint
 * (server/ivshmem_endpoint.c) and the messages it sends to QEMU's ivshmem-doorbell
 * (QEMU docs/specs/ivshmem-spec.rst; DESIGN section 3), against a model of what QEMU
 * does with them.
 *
 * The input first picks the shared memory (sizes that are and are not powers of two)
 * and the own id (sometimes out of range), then plays steps on the endpoint's own
 * GMainContext:
 *   peer     ivshmem_endpoint_set_peer(id, fds) with ids and vector counts around
 *            the limits, holes (-1), bad fds (-2, a closed number), fresh fds of
 *            input-chosen kinds and the same fds as before (kcmp's "same file");
 *   connect  a QEMU connects (a second one is refused by the endpoint);
 *   read     QEMU reads what was sent, a few bytes at a time or all of it;
 *   talk     QEMU writes bytes (the endpoint ignores them);
 *   close    QEMU disconnects;
 *   notify / queries / iterate the context.
 * The QEMU model (as ivshmem.c reads the protocol): version 0, its own id, -1 with the
 * shm fd, then (id, fd) per vector of each peer in order; a message without an fd
 * after the set-up would be "peer gone", which the endpoint must never send.
 *
 * Invariants besides the sanitizers and the fd check: the model accepts every
 * message; the shm fd it gets is the endpoint's memory; after a full read, QEMU holds
 * exactly ivshmem_endpoint_peer_vectors() vectors of each peer; a refused set_peer
 * changes nothing and gives a reason.
 */
#include <glib.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "fuzz.h"
#include "ivshmem_endpoint.h"

/* Most fds the endpoint may hold for its peers' vectors (set_peer): FZ_FD_SCAN less
 * room for the fd pool, a set_peer's own (up to 257) and the sockets. */
#define MAX_HELD (FZ_FD_SCAN - 512)

struct qemu {
    int sock;                     /* -1: not connected */
    uint8_t buf[8];               /* partial message */
    unsigned got;
    int fd;                       /* fd of the partial message, or -1 */
    unsigned stage;               /* 0 version, 1 own id, 2 shm, 3 peers */
    bool refused;                 /* EOF seen (second connection, or disconnected) */
    unsigned vectors[IVSHMEM_EP_MAX_PEERS];
};

struct ctx {
    GMainContext *ctx;
    ivshmem_endpoint *ep;
    char path[108];
    unsigned own_id;
    struct stat shm_st;
    struct qemu q[2];
    struct fz *f;
};

static char dir[80];             /* a private directory for the socket, per process */

static void remove_dir(void)
{
    if (dir[0])
        rmdir(dir);
}

static void iterate(struct ctx *c)
{
    for (int i = 0; i < 256 && g_main_context_iteration(c->ctx, FALSE); i++)
        ;
}

static void qemu_reset(struct qemu *q)
{
    vp_close_fd(&q->sock);
    vp_close_fd(&q->fd);
    memset(q, 0, sizeof(*q));
    q->sock = -1;
    q->fd = -1;
}

/* One whole message, as QEMU's ivshmem_read() handles it. */
static void qemu_message(struct ctx *c, struct qemu *q, int64_t v, int fd)
{
    switch (q->stage) {
    case 0:
        FZ_CHECK(v == IVSHMEM_EP_PROTOCOL_VERSION && fd < 0);
        break;
    case 1:
        FZ_CHECK(v == (int64_t)c->own_id && fd < 0);
        break;
    case 2: {
        FZ_CHECK(v == -1 && fd >= 0);
        struct stat st;
        FZ_CHECK(fstat(fd, &st) == 0);
        FZ_CHECK(st.st_dev == c->shm_st.st_dev && st.st_ino == c->shm_st.st_ino);
        break;
    }
    default:
        FZ_CHECK(v >= 0 && v < IVSHMEM_EP_MAX_PEERS);
        FZ_CHECK(fd >= 0);        /* never "peer gone" (see ivshmem_endpoint.h) */
        q->vectors[v]++;
        FZ_CHECK(q->vectors[v] <= IVSHMEM_EP_MAX_VECTORS);
        break;
    }
    if (q->stage < 3)
        q->stage++;
    vp_close_fd(&fd);
}

/* Read up to @max bytes (0: everything there is) as QEMU. */
static void qemu_read(struct ctx *c, struct qemu *q, size_t max)
{
    size_t total = 0;
    while (q->sock >= 0 && (!max || total < max)) {
        size_t want = sizeof(q->buf) - q->got;
        if (max && want > max - total)
            want = max - total;
        union {
            char b[CMSG_SPACE(4 * sizeof(int))];
            struct cmsghdr align;
        } u;
        struct iovec iov = { q->buf + q->got, want };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                             .msg_controllen = sizeof(u.b) };
        ssize_t n = recvmsg(q->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n == 0) {
            q->refused = true;
            vp_close_fd(&q->sock);
            return;
        }
        if (n < 0)
            return;
        int fds[4];
        unsigned nfds = 0;
        vp_take_scm_fds(&mh, fds, 4, &nfds, NULL);
        FZ_CHECK(nfds <= 1);      /* one fd per message, on its first byte */
        FZ_CHECK(nfds == 0 || (q->got == 0 && q->fd < 0));
        if (nfds)
            q->fd = fds[0];
        q->got += (unsigned)n;
        total += (size_t)n;
        if (q->got == sizeof(q->buf)) {
            int fd = q->fd;
            q->fd = -1;
            q->got = 0;
            qemu_message(c, q, (int64_t)vp_get_le64(q->buf), fd);
        }
    }
}

static void qemu_connect(struct ctx *c, struct qemu *q)
{
    qemu_reset(q);
    q->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    FZ_CHECK(q->sock >= 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    if (connect(q->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        qemu_reset(q);
}

/* After reading everything: the model holds what the endpoint says it sent. */
static void check_vectors(struct ctx *c, struct qemu *q)
{
    if (q->sock < 0 || q->stage < 3 || q->got || !ivshmem_endpoint_connected(c->ep))
        return;
    /* Only the connection the endpoint serves: the other one was refused (EOF). */
    for (unsigned id = 0; id < IVSHMEM_EP_MAX_PEERS; id++)
        FZ_CHECK(q->vectors[id] == ivshmem_endpoint_peer_vectors(c->ep, id));
}

static void set_peer(struct ctx *c, uint8_t cmd)
{
    struct fz *f = c->f;
    unsigned id = fz_u8(f) % (IVSHMEM_EP_MAX_PEERS + 1);
    unsigned n = fz_u8(f) % 9;
    if (cmd & 0x80)
        n = 250 + fz_u8(f) % 8;   /* around IVSHMEM_EP_MAX_VECTORS */
    /* The endpoint holds an fd per vector (and, while it replaces a peer's list, the
     * old and the new ones): keep the total under MAX_HELD whatever the input's
     * length, so that with what the harness holds it stays below the RLIMIT_NOFILE
     * of FZ_FD_SCAN (LLVMFuzzerTestOneInput). Each vector costs the input a byte, so
     * run-fuzz's inputs (at most 1024 bytes) never reach it; make check's (up to
     * 8192) can. */
    unsigned held = 0;
    for (unsigned p = 0; p < IVSHMEM_EP_MAX_PEERS; p++)
        held += ivshmem_endpoint_peer_vectors(c->ep, p);
    if (held + n > MAX_HELD)
        n = held < MAX_HELD ? MAX_HELD - held : 0;
    int *fds = calloc(n ? n : 1, sizeof(int));
    int *mine = calloc(n ? n : 1, sizeof(int));
    FZ_CHECK(fds && mine);
    for (unsigned v = 0; v < n; v++) {
        mine[v] = -1;
        uint8_t k = fz_u8(f);
        switch (k & 3) {
        case 0:
            fds[v] = -1;
            break;
        case 1:
            /* The endpoint's own copy: the "same file" QEMU already holds. */
            fds[v] = ivshmem_endpoint_peer_fd(c->ep, id % IVSHMEM_EP_MAX_PEERS, v);
            if (fds[v] < 0 && (k & 4))
                fds[v] = -2;      /* a bad value */
            break;
        default:
            fds[v] = mine[v] = (k & 4) ? eventfd(0, EFD_CLOEXEC) : fz_make_fd(f);
            break;
        }
    }
    unsigned old_n = ivshmem_endpoint_peer_vectors(c->ep, id);
    vp_error err = { { 0 } };
    int ret = ivshmem_endpoint_set_peer(c->ep, id, fds, n, &err);
    if (ret < 0) {
        FZ_CHECK(err.msg[0] != 0);
        if (ret != -ECONNRESET)   /* a lost connection still took the new list */
            FZ_CHECK(ivshmem_endpoint_peer_vectors(c->ep, id) == old_n);
    } else {
        FZ_CHECK(ivshmem_endpoint_peer_vectors(c->ep, id) >= n);
    }
    vp_close_fds(mine, n);        /* the endpoint keeps duplicates */
    free(fds);
    free(mine);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = { data, size };
    struct fz_fdset before;
    fz_quiet_glib();
    if (!dir[0]) {
        /* notify writes to whatever fd a peer was given; a socket whose other end is
         * closed raises SIGPIPE, which a server ignores (the endpoint's own sends use
         * MSG_NOSIGNAL). */
        signal(SIGPIPE, SIG_IGN);
        /* tmpfs when there is one: binding a socket there costs less than on disk */
        snprintf(dir, sizeof(dir), "/dev/shm/fuzz-ivshmem-%d-XXXXXX", (int)getpid());
        if (!mkdtemp(dir)) {
            snprintf(dir, sizeof(dir), "/tmp/fuzz-ivshmem-%d-XXXXXX", (int)getpid());
            FZ_CHECK(mkdtemp(dir) != NULL);
        }
        atexit(remove_dir);
        /* set_peer keeps the endpoint's fds under MAX_HELD, so an input holds
         * fewer than FZ_FD_SCAN fds and with this limit the leak check sees every fd
         * it can make (above FZ_FD_SCAN nothing would be looked at). */
        fz_fds_limit(FZ_FD_SCAN);
    }
    fz_fds_begin(&before);
    static struct ctx c;
    memset(&c, 0, sizeof(c));
    c.f = &f;
    c.q[0].sock = c.q[0].fd = c.q[1].sock = c.q[1].fd = -1;
    snprintf(c.path, sizeof(c.path), "%s/ep", dir);
    unlink(c.path);
    c.ctx = g_main_context_new();

    uint8_t cfg = fz_u8(&f);
    static const uint64_t shm_sizes[8] = { 4096, 1 << 20, 65536, 4096 * 3, 0, 1, 2 << 20, 12288 };
    /* The pool's memfd of that size (the endpoint only reads its size and passes it
     * on): cheaper than a fresh memfd per input. */
    int shm = fz_pool_dup(FZ_FD_MEMFD_UNSEALED, shm_sizes[cfg & 7]);
    FZ_CHECK(shm >= 0 && fstat(shm, &c.shm_st) == 0);
    c.own_id = (cfg >> 3) % (IVSHMEM_EP_MAX_PEERS + 2);
    vp_error err = { { 0 } };
    c.ep = ivshmem_endpoint_new(c.ctx, c.path, shm, c.own_id, &err);
    vp_close_fd(&shm);            /* the endpoint keeps a duplicate */
    if (!c.ep) {
        FZ_CHECK(err.msg[0] != 0);
        FZ_CHECK(c.own_id >= IVSHMEM_EP_MAX_PEERS || (c.shm_st.st_size & (c.shm_st.st_size - 1)) ||
                 c.shm_st.st_size == 0);
    }

    for (unsigned step = 0; c.ep && step < 256 && f.n; step++) {
        uint8_t cmd = fz_u8(&f);
        struct qemu *q = &c.q[(cmd >> 3) & 1];
        switch (cmd & 7) {
        case 0:
            set_peer(&c, cmd);
            break;
        case 1:
            qemu_connect(&c, q);
            iterate(&c);
            break;
        case 2:
            iterate(&c);
            qemu_read(&c, q, (cmd & 0x80) ? 0 : 1 + fz_u8(&f) % 12);
            break;
        case 3:
            if (q->sock >= 0)
                send(q->sock, "garbage", 1 + (cmd >> 4) % 7, MSG_DONTWAIT | MSG_NOSIGNAL);
            iterate(&c);
            break;
        case 4:
            qemu_reset(q);
            iterate(&c);
            break;
        case 5: {
            unsigned id = fz_u8(&f) % (IVSHMEM_EP_MAX_PEERS + 1);
            unsigned v = fz_u8(&f);
            int ret = ivshmem_endpoint_notify(c.ep, id, v);
            FZ_CHECK(ret <= 0);
            if (ivshmem_endpoint_peer_fd(c.ep, id, v) < 0)
                FZ_CHECK(ret == -EINVAL);
            break;
        }
        case 6: {
            ivshmem_endpoint_stats st;
            ivshmem_endpoint_get_stats(c.ep, &st);
            FZ_CHECK(st.fds_sent <= st.messages_sent + 1);
            FZ_CHECK(ivshmem_endpoint_max_vectors(c.ep) >= 1);
            FZ_CHECK(strcmp(ivshmem_endpoint_path(c.ep), c.path) == 0);
            break;
        }
        default:
            /* Read until the endpoint has nothing left to send (its queue may be
             * longer than the socket buffer), then compare. */
            for (int i = 0; i < 64 && q->sock >= 0; i++) {
                ivshmem_endpoint_stats st0, st1;
                ivshmem_endpoint_get_stats(c.ep, &st0);
                iterate(&c);
                qemu_read(&c, q, 0);
                iterate(&c);
                ivshmem_endpoint_get_stats(c.ep, &st1);
                if (st1.messages_sent == st0.messages_sent)
                    break;
            }
            qemu_read(&c, q, 0);
            check_vectors(&c, q);
            break;
        }
    }
    ivshmem_endpoint_free(c.ep);
    FZ_CHECK(access(c.path, F_OK) < 0 || !c.ep);   /* the socket file is gone */
    qemu_reset(&c.q[0]);
    qemu_reset(&c.q[1]);
    iterate(&c);
    g_main_context_unref(c.ctx);
    unlink(c.path);
    fz_fds_end(&before);
    return 0;
}
