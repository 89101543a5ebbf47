/*
 * vp_outq.c - bounded non-blocking output queue with fds (vp_outq.h). libc only.
 */
#include "vp_outq.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "vp_common.h"

struct vp_outq_msg {
    struct vp_outq_msg *next;
    uint64_t tag;
    size_t len;
    size_t cost;                         /* what it counts against max_bytes */
    unsigned nfds;                       /* fds still to attach (0 once sent) */
    int *fds;                            /* nfds of them, after data[] */
    uint8_t data[];
};

void vp_outq_init(struct vp_outq *q, int fd, size_t max_bytes, const struct vp_outq_ops *ops,
                  void *opaque)
{
    memset(q, 0, sizeof(*q));
    q->fd = fd;
    q->max_bytes = max_bytes;
    q->ops = ops;
    q->opaque = opaque;
}

static void msg_free(struct vp_outq_msg *m)
{
    vp_close_fds(m->fds, m->nfds);
    free(m);
}

static void watch(struct vp_outq *q, bool on)
{
    if (q->watching == on)
        return;
    q->watching = on;
    q->ops->want_writable(q->opaque, on);
}

int vp_outq_push(struct vp_outq *q, const void *data, size_t len, const int *fds,
                 unsigned nfds, uint64_t tag)
{
    if (q->error)
        return q->error;
    if (len == 0 || nfds > VP_OUTQ_MAX_FDS || (nfds && !fds))
        return -EINVAL;
    /* Bytes plus what holding them costs: one short message is not free. */
    size_t cost = sizeof(struct vp_outq_msg) + len + nfds * sizeof(int);
    if (len > SIZE_MAX / 2 || (q->max_bytes && (cost > q->max_bytes ||
                                                  q->cost > q->max_bytes - cost)))
        return -ENOBUFS;
    if (q->max_fds && nfds > q->max_fds - (q->nfds < q->max_fds ? q->nfds : q->max_fds))
        return -ENOBUFS;
    size_t dlen = (len + sizeof(int) - 1) / sizeof(int) * sizeof(int);
    struct vp_outq_msg *m = malloc(sizeof(*m) + dlen + nfds * sizeof(int));
    if (!m)
        return -ENOMEM;
    m->next = NULL;
    m->tag = tag;
    m->len = len;
    m->cost = cost;
    m->nfds = 0;
    m->fds = (int *)(void *)(m->data + dlen);
    memcpy(m->data, data, len);
    for (unsigned i = 0; i < nfds; i++) {
        int c = fds[i] >= 0 ? fcntl(fds[i], F_DUPFD_CLOEXEC, 0) : -1;
        if (c < 0) {
            int e = fds[i] >= 0 ? errno : EBADF;
            msg_free(m);
            return e == EBADF ? -EINVAL : -e;
        }
        m->fds[m->nfds++] = c;
    }
    bool was_idle = q->head == NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->bytes += len;
    q->cost += cost;
    q->nfds += m->nfds;
    q->count++;
    if (was_idle) {
        int r = vp_outq_flush(q);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The head went out completely: unlink it, count it, tell the owner. */
static void head_done(struct vp_outq *q)
{
    struct vp_outq_msg *m = q->head;
    q->head = m->next;
    if (!q->head)
        q->tail = NULL;
    q->head_off = 0;
    q->count--;
    q->cost -= m->cost;
    q->msgs_sent++;
    uint64_t tag = m->tag;
    msg_free(m);
    if (q->ops->sent)
        q->ops->sent(q->opaque, tag);
}

int vp_outq_flush(struct vp_outq *q)
{
    if (q->error)
        return q->error;
    while (q->head) {
        struct vp_outq_msg *m = q->head;
        struct iovec iov = { m->data + q->head_off, m->len - q->head_off };
        ssize_t n = vp_sendmsg_fds(q->fd, &iov, 1, m->fds, m->nfds,
                                   MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN || n == -EWOULDBLOCK) {
            watch(q, true);
            return 0;
        }
        if (n <= 0) {
            q->error = n < 0 ? (int)n : -EPIPE;
            watch(q, false);
            return q->error;
        }
        if (m->nfds) {
            /* The fds went with the first byte: the peer has its own now. */
            q->fds_sent += m->nfds;
            q->nfds -= m->nfds;
            vp_close_fds(m->fds, m->nfds);
            m->nfds = 0;
        }
        q->head_off += (size_t)n;
        q->bytes -= (size_t)n;
        if (q->head_off == m->len)
            head_done(q);
    }
    watch(q, false);
    return 0;
}

void vp_outq_clear(struct vp_outq *q)
{
    struct vp_outq_msg *m = q->head;
    while (m) {
        struct vp_outq_msg *next = m->next;
        msg_free(m);
        m = next;
    }
    q->head = q->tail = NULL;
    q->head_off = 0;
    q->bytes = 0;
    q->cost = 0;
    q->nfds = 0;
    q->count = 0;
    q->error = 0;
    watch(q, false);
}
