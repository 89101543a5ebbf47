/*
 * vp_localbus.c - the `local` device host's bus: fixed 32-byte messages with fds
 * (vp_localbus.h, DESIGN section 7).
 *
 * Security model: vp_lb_recv() reads from the other process (server or guestd),
 * which may be buggy or hostile. The message is decoded from a private copy; its
 * type must be known, its slot below VP_LB_MAX_SLOTS, and the number of fds that
 * came with it exactly the type's (checked centrally from a table); fds must be
 * attached to the first byte only; a truncated control message (MSG_CTRUNC) or
 * more fds than the caller has room for is an error. On every error path each fd
 * received with the message is closed before returning, so the caller never owns
 * an fd it did not ask for. Received fds are close-on-exec (MSG_CMSG_CLOEXEC).
 *
 * libc only.
 */
#include "vp_localbus.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long a reader waits for the rest of a message on a non-blocking socket. */
#define VP_LB_PARTIAL_TIMEOUT_MS 5000

/* Wire offsets. */
#define LB_TYPE 0
#define LB_SLOT 4
#define LB_DEVFN 8
#define LB_COUNT 12
#define LB_SIZE 16
#define LB_ARG 24

/* Per type: the fd count it must carry (FDS_FROM_COUNT: the count field's value). */
#define FDS_FROM_COUNT (-1)
struct lb_type_info {
    const char *name;
    int nfds;
};

static const struct lb_type_info lb_types[] = {
    [VP_LB_HELLO] = { "HELLO", 0 },
    [VP_LB_PLUG_CONTROL] = { "PLUG_CONTROL", 4 },
    [VP_LB_PEER_VECTORS] = { "PEER_VECTORS", FDS_FROM_COUNT },
    [VP_LB_PLUG_WINDOW] = { "PLUG_WINDOW", 1 },
    [VP_LB_UNPLUG_WINDOW] = { "UNPLUG_WINDOW", 0 },
    [VP_LB_UNPLUG_CONTROL] = { "UNPLUG_CONTROL", 0 },
    [VP_LB_EJECTED] = { "EJECTED", 0 },
};

static const struct lb_type_info *lb_type(uint32_t type)
{
    if (type >= VP_ARRAY_SIZE(lb_types) || !lb_types[type].name)
        return NULL;
    return &lb_types[type];
}

void vp_lb_encode(const struct vp_lb_msg *m, unsigned char buf[VP_LB_MSG_SIZE])
{
    vp_put_le32(buf + LB_TYPE, m->type);
    vp_put_le32(buf + LB_SLOT, m->slot);
    vp_put_le32(buf + LB_DEVFN, m->devfn);
    vp_put_le32(buf + LB_COUNT, m->count);
    vp_put_le64(buf + LB_SIZE, m->size);
    vp_put_le64(buf + LB_ARG, m->arg);
}

int vp_lb_send(int sock, const struct vp_lb_msg *m, const int *fds, unsigned nfds)
{
    if (nfds > VP_LB_MAX_FDS || (nfds && !fds))
        return -EINVAL;

    unsigned char buf[VP_LB_MSG_SIZE];
    vp_lb_encode(m, buf);

    size_t done = 0;
    bool fds_sent = nfds == 0;
    while (done < sizeof(buf)) {
        struct iovec iov = { .iov_base = buf + done, .iov_len = sizeof(buf) - done };
        /* The fds ride on the first byte only. */
        ssize_t n = vp_sendmsg_fds(sock, &iov, 1, fds_sent ? NULL : fds,
                                   fds_sent ? 0 : nfds, MSG_NOSIGNAL);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            if ((n == -EAGAIN || n == -EWOULDBLOCK) && done > 0) {
                /* Non-blocking socket, message half sent: finish it. */
                struct pollfd p = { .fd = sock, .events = POLLOUT };
                if (poll(&p, 1, VP_LB_PARTIAL_TIMEOUT_MS) > 0)
                    continue;
                return -ETIMEDOUT;
            }
            return (int)n;
        }
        fds_sent = true;
        done += (size_t)n;
    }
    return 0;
}

int vp_lb_recv(int sock, struct vp_lb_msg *m, int *fds, unsigned maxfds, unsigned *nfds,
               vp_error *err)
{
    unsigned char buf[VP_LB_MSG_SIZE];
    union {
        char buf[CMSG_SPACE(VP_LB_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } cbuf;
    size_t done = 0;
    bool overflow = false, foreign = false, ctrunc = false, late_fds = false;
    int ret = 0;

    if (!fds)
        maxfds = 0;
    *nfds = 0;
    memset(m, 0, sizeof(*m));

    while (done < sizeof(buf)) {
        struct iovec iov = { .iov_base = buf + done, .iov_len = sizeof(buf) - done };
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = cbuf.buf, .msg_controllen = sizeof(cbuf.buf),
        };
        /* Once part of a message is in, never block without a bound, even on a
         * blocking socket: a peer that stops mid-message gets the bounded poll below
         * instead of stalling its receiver (and whatever loop it serves) for ever. */
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (done > 0 ? MSG_DONTWAIT : 0));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && done > 0) {
                struct pollfd p = { .fd = sock, .events = POLLIN };
                if (poll(&p, 1, VP_LB_PARTIAL_TIMEOUT_MS) > 0)
                    continue;
                ret = vp_fail(err, -EPROTO, "local bus: short message (%zu of %d bytes, "
                              "rest did not arrive)", done, VP_LB_MSG_SIZE);
                goto fail;
            }
            ret = -errno;
            vp_fail(err, ret, "local bus: recvmsg: %s", strerror(-ret));
            goto fail;
        }
        unsigned before = *nfds;
        /* Fds that do not fit are closed at once; other control messages: foreign. */
        if (vp_take_scm_fds(&msg, fds, maxfds, nfds, &foreign))
            overflow = true;
        if (done > 0 && (*nfds != before || overflow))
            late_fds = true;
        if (msg.msg_flags & MSG_CTRUNC)
            ctrunc = true;
        if (n == 0) {
            if (done == 0 && *nfds == 0 && !overflow) {
                ret = vp_fail(err, -ECONNRESET, "local bus: connection closed by peer");
                goto fail;
            }
            ret = vp_fail(err, -EPROTO, "local bus: short message (%zu of %d bytes before EOF)",
                          done, VP_LB_MSG_SIZE);
            goto fail;
        }
        done += (size_t)n;
    }

    if (overflow) {
        ret = vp_fail(err, -EPROTO, "local bus: more fds than the %u expected", maxfds);
        goto fail;
    }
    if (foreign) {
        ret = vp_fail(err, -EPROTO, "local bus: unexpected control message");
        goto fail;
    }
    if (late_fds) {
        ret = vp_fail(err, -EPROTO, "local bus: fds not attached to the first byte");
        goto fail;
    }

    /* Decode from the private copy, each field once. */
    m->type = vp_get_le32(buf + LB_TYPE);
    m->slot = vp_get_le32(buf + LB_SLOT);
    m->devfn = vp_get_le32(buf + LB_DEVFN);
    m->count = vp_get_le32(buf + LB_COUNT);
    m->size = vp_get_le64(buf + LB_SIZE);
    m->arg = vp_get_le64(buf + LB_ARG);

    const struct lb_type_info *ti = lb_type(m->type);
    if (!ti) {
        ret = vp_fail(err, -EPROTO, "local bus: unknown message type %u", m->type);
        goto fail;
    }
    if (m->slot >= VP_LB_MAX_SLOTS) {
        ret = vp_fail(err, -EPROTO, "local bus %s: slot %u out of range (max %d)", ti->name,
                      m->slot, VP_LB_MAX_SLOTS - 1);
        goto fail;
    }
    if (ctrunc) {
        /* The message arrived whole (the stream stays in step) but the kernel could
         * not hand over its fds, typically because the receiver is at RLIMIT_NOFILE:
         * the header is returned so that the receiver can refuse this one message. */
        vp_close_fds(fds, *nfds);
        *nfds = 0;
        return vp_fail(err, -ENOBUFS, "local bus %s (slot %u): control data truncated "
                       "(MSG_CTRUNC): its %u fds did not arrive", ti->name, m->slot, m->count);
    }
    uint64_t want = ti->nfds == FDS_FROM_COUNT ? m->count : (uint64_t)ti->nfds;
    if (*nfds != want) {
        ret = vp_fail(err, -EPROTO, "local bus %s: wrong fd count: got %u, expected %llu",
                      ti->name, *nfds, (unsigned long long)want);
        goto fail;
    }
    return 0;

fail:
    vp_close_fds(fds, *nfds);
    *nfds = 0;
    memset(m, 0, sizeof(*m));
    return ret;
}
