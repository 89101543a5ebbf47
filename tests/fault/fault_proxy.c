/*
 * fault_proxy.c - the fault-injection test's message-aware socket proxy
 * (fault_proxy.h). Test code: its peers are the project's own processes.
 */
#include "fault_proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vp_common.h"
#include "vp_localbus.h"
#include "vp_wire.h"

#define FP_HDR 32
#define FP_MAX_LINKS 8
#define FP_MAX_MSG (FP_HDR + VP_MAX_PAYLOAD)
#define FP_MAX_FDS 253

/* One direction of a link: the message being assembled. */
struct fp_half {
    int from, to;                 /* fds of the link (not owned here) */
    uint8_t *buf;                 /* FP_MAX_MSG bytes */
    size_t got, total;            /* total: FP_HDR until the header is in */
    int fds[FP_MAX_FDS];
    unsigned nfds;
};

struct fp_link {
    bool used;
    int a, b;                     /* a: accepted (client side), b: to the target */
    struct fp_half half[2];       /* [FP_TO_TARGET]: a -> b, [FP_FROM_TARGET]: b -> a */
};

struct fault_proxy {
    enum fp_framing framing;
    fp_hook hook;
    void *opaque;
    char listen_path[108], target_path[108];
    int lfd;
    int wake[2];                  /* commands to the thread: 'q' quit, 'h' hang up all */
    pthread_t thread;
    struct fp_link links[FP_MAX_LINKS];
    unsigned count;               /* atomic */
    unsigned fragment;            /* atomic */
};

static void half_clear(struct fp_half *h)
{
    vp_close_fds(h->fds, h->nfds);
    h->nfds = 0;
    h->got = 0;
    h->total = FP_HDR;
}

static void link_close(struct fp_link *l)
{
    if (!l->used)
        return;
    for (int d = 0; d < 2; d++) {
        half_clear(&l->half[d]);
        free(l->half[d].buf);
        l->half[d].buf = NULL;
    }
    vp_close_fd(&l->a);
    vp_close_fd(&l->b);
    l->used = false;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Write all of [p, p+len) to @fd (non-blocking: poll for room, 5 s bound), the fds on
 * the first byte. Returns 0 or -1. */
static int send_all(int fd, const uint8_t *p, size_t len, const int *fds, unsigned nfds)
{
    int64_t deadline = now_ms() + 5000;
    while (len) {
        struct iovec iov = { (void *)p, len };
        ssize_t n = vp_sendmsg_fds(fd, &iov, 1, nfds ? fds : NULL, nfds,
                                   MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN) {
            struct pollfd pf = { .fd = fd, .events = POLLOUT };
            if (now_ms() > deadline || poll(&pf, 1, 100) < 0)
                return -1;
            continue;
        }
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
        nfds = 0;
    }
    return 0;
}

/* Until the receiver has read what we sent (bounded): so it sees a partial message. */
static void wait_drained(int fd)
{
    for (int i = 0; i < 50; i++) {
        int outq = 0;
        if (ioctl(fd, SIOCOUTQ, &outq) < 0 || outq == 0)
            return;
        struct timespec ts = { 0, 2000000 };
        nanosleep(&ts, NULL);
    }
}

static int deliver(struct fault_proxy *fp, struct fp_half *h)
{
    unsigned frag = __atomic_load_n(&fp->fragment, __ATOMIC_RELAXED);
    size_t off = 0;
    const int *fds = h->fds;
    unsigned nfds = h->nfds;
    while (off < h->total) {
        size_t n = h->total - off;
        if (frag && n > frag)
            n = frag;
        if (send_all(h->to, h->buf + off, n, fds, nfds) < 0)
            return -1;
        nfds = 0;
        off += n;
        if (frag && off < h->total)
            wait_drained(h->to);
    }
    return 0;
}

/* Read what is there for @h. Returns 0 (keep going) or -1 (the link is over). */
static int half_read(struct fault_proxy *fp, struct fp_link *l, enum fp_dir dir)
{
    struct fp_half *h = &l->half[dir];
    union {
        char b[CMSG_SPACE(FP_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = { h->buf + h->got, h->total - h->got };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                         .msg_controllen = sizeof(u.b) };
    ssize_t n = recvmsg(h->from, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    if (vp_take_scm_fds(&mh, h->fds, FP_MAX_FDS, &h->nfds, NULL))
        return -1;
    if (n == 0)
        return -1;
    h->got += (size_t)n;
    if (h->got == FP_HDR && fp->framing == FP_VP) {
        uint32_t len = vp_get_le32(h->buf + 4);
        if (len > VP_MAX_PAYLOAD)
            return -1;
        h->total = FP_HDR + len;
    }
    if (h->got < h->total)
        return 0;

    unsigned index = __atomic_add_fetch(&fp->count, 1, __ATOMIC_SEQ_CST);
    uint32_t type = fp->framing == FP_VP ? vp_get_le16(h->buf) : vp_get_le32(h->buf);
    enum fp_action a = fp->hook ? fp->hook(fp->opaque, index, dir, type) : FP_FORWARD;
    if (a == FP_HANGUP)
        return -1;
    int r = deliver(fp, h);
    half_clear(h);
    return r;
}

static void accept_one(struct fault_proxy *fp)
{
    int a = accept4(fp->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (a < 0)
        return;
    struct fp_link *l = NULL;
    for (int i = 0; i < FP_MAX_LINKS && !l; i++)
        if (!fp->links[i].used)
            l = &fp->links[i];
    int b = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, fp->target_path, sizeof(sa.sun_path));
    if (!l || b < 0 || connect(b, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        fcntl(b, F_SETFL, O_NONBLOCK) < 0) {
        vp_close_fd(&a);          /* the target is down: the client sees a hang-up */
        vp_close_fd(&b);
        return;
    }
    memset(l, 0, sizeof(*l));
    l->used = true;
    l->a = a;
    l->b = b;
    for (int d = 0; d < 2; d++) {
        l->half[d].buf = malloc(FP_MAX_MSG);
        l->half[d].from = d == FP_TO_TARGET ? a : b;
        l->half[d].to = d == FP_TO_TARGET ? b : a;
        l->half[d].total = FP_HDR;
    }
}

static void *fp_thread(void *arg)
{
    struct fault_proxy *fp = arg;
    for (;;) {
        struct pollfd pf[2 + 2 * FP_MAX_LINKS];
        int map[2 + 2 * FP_MAX_LINKS];
        unsigned n = 0;
        pf[n++] = (struct pollfd){ .fd = fp->wake[0], .events = POLLIN };
        pf[n++] = (struct pollfd){ .fd = fp->lfd, .events = POLLIN };
        for (int i = 0; i < FP_MAX_LINKS; i++) {
            if (!fp->links[i].used)
                continue;
            for (int d = 0; d < 2; d++) {
                map[n] = i * 2 + d;
                pf[n++] = (struct pollfd){ .fd = fp->links[i].half[d].from, .events = POLLIN };
            }
        }
        if (poll(pf, n, -1) < 0)
            continue;
        if (pf[0].revents) {
            char c = 0;
            if (read(fp->wake[0], &c, 1) == 1 && c == 'q')
                break;
            if (c == 'h')
                for (int i = 0; i < FP_MAX_LINKS; i++)
                    link_close(&fp->links[i]);
            continue;
        }
        /* Links first: a peer that died and its successor connecting show up in one
         * round; the target must see the old link close before the new one opens,
         * as it would without a proxy in between. */
        for (unsigned k = 2; k < n; k++) {
            struct fp_link *l = &fp->links[map[k] / 2];
            if (!pf[k].revents || !l->used)
                continue;
            if (half_read(fp, l, (enum fp_dir)(map[k] % 2)) < 0)
                link_close(l);
        }
        if (pf[1].revents)
            accept_one(fp);
    }
    for (int i = 0; i < FP_MAX_LINKS; i++)
        link_close(&fp->links[i]);
    return NULL;
}

struct fault_proxy *fp_new(const char *listen_path, const char *target_path,
                           enum fp_framing framing, fp_hook hook, void *opaque)
{
    struct fault_proxy *fp = calloc(1, sizeof(*fp));
    if (!fp || strlen(listen_path) >= sizeof(fp->listen_path) ||
        strlen(target_path) >= sizeof(fp->target_path)) {
        free(fp);
        errno = ENAMETOOLONG;
        return NULL;
    }
    fp->framing = framing;
    fp->hook = hook;
    fp->opaque = opaque;
    strcpy(fp->listen_path, listen_path);
    strcpy(fp->target_path, target_path);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, listen_path, strlen(listen_path) + 1);
    fp->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fp->lfd < 0 || bind(fp->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fp->lfd, 8) < 0 || pipe2(fp->wake, O_CLOEXEC) < 0) {
        int e = errno;
        vp_close_fd(&fp->lfd);
        free(fp);
        errno = e;
        return NULL;
    }
    if (pthread_create(&fp->thread, NULL, fp_thread, fp) != 0) {
        vp_close_fd(&fp->lfd);
        vp_close_fds(fp->wake, 2);
        unlink(listen_path);
        free(fp);
        errno = EAGAIN;
        return NULL;
    }
    return fp;
}

static void command(struct fault_proxy *fp, char c)
{
    if (write(fp->wake[1], &c, 1) != 1)
        abort();
}

void fp_free(struct fault_proxy *fp)
{
    if (!fp)
        return;
    command(fp, 'q');
    pthread_join(fp->thread, NULL);
    vp_close_fd(&fp->lfd);
    vp_close_fds(fp->wake, 2);
    unlink(fp->listen_path);
    free(fp);
}

void fp_reset(struct fault_proxy *fp)
{
    __atomic_store_n(&fp->count, 0, __ATOMIC_SEQ_CST);
}

unsigned fp_count(struct fault_proxy *fp)
{
    return __atomic_load_n(&fp->count, __ATOMIC_SEQ_CST);
}

void fp_set_fragment(struct fault_proxy *fp, unsigned bytes)
{
    __atomic_store_n(&fp->fragment, bytes, __ATOMIC_RELAXED);
}

void fp_hangup_all(struct fault_proxy *fp)
{
    command(fp, 'h');
}
