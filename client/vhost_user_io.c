/*
 * vhost_user_io.c - the vhost-user core's socket (vhost_user_priv.h): receiving one
 * request at a time, never reading past it, and sending replies through the output
 * queue (protocol/vp_outq.h), never blocking.
 *
 * Security model: the bytes and fds come from the frontend (see vhost_user.c). The
 * header is checked (version, no REPLY flag, size <= VU_MAX_PAYLOAD) before a
 * payload byte is read; more fds than VU_MAX_FDS with one message, a truncated
 * header or payload break the device; received fds belong to the message until a
 * handler takes them, the dispatcher closes the rest.
 */
#include "vhost_user_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- Receiving ---- */

/** One recvmsg into the current message, never past its end. Returns 1 when bytes
 *  arrived, 0 when the socket would block, -errno on error/EOF (with a reason; the
 *  device is broken). */
static int vu_recv_some(struct vu_dev *dev)
{
    struct vu_msg *m = &dev->msg;
    uint8_t *dst;
    size_t want;
    if (dev->got < VU_HDR_SIZE) {
        dst = dev->hdr + dev->got;
        want = VU_HDR_SIZE - dev->got;
    } else {
        dst = m->payload + (dev->got - VU_HDR_SIZE);
        want = VU_HDR_SIZE + m->size - dev->got;
    }

    union {
        char buf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {.iov_base = dst, .iov_len = want};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
                        .msg_controllen = sizeof(cbuf.buf)};
    ssize_t n;
    do {
        n = recvmsg(dev->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        int e = errno;
        vu_err(dev, "recvmsg: %s", strerror(e));
        vu_break(dev, EIO);
        return -EIO;
    }

    bool too_many = (mh.msg_flags & MSG_CTRUNC) != 0;
    if (vp_take_scm_fds(&mh, m->fds, VU_MAX_FDS, &m->nfds, NULL))
        too_many = true;
    if (too_many) {
        vu_err(dev, "wrong fd count: more than %u fds with one message", VU_MAX_FDS);
        vu_break(dev, EPROTO);
        return -EPROTO;
    }
    if (n == 0) {
        if (dev->got == 0 && m->nfds == 0) {
            vu_err(dev, "the frontend closed the connection");
            vu_break(dev, ECONNRESET);
            return -ECONNRESET;
        }
        if (dev->got < VU_HDR_SIZE)
            vu_err(dev, "truncated header: the frontend closed after %zu of %u bytes",
                   dev->got, VU_HDR_SIZE);
        else
            vu_err(dev, "truncated payload: the frontend closed after %zu of %u bytes of %s",
                   dev->got - VU_HDR_SIZE, m->size, vu_request_name(m->request));
        vu_break(dev, EPROTO);
        return -EPROTO;
    }

    dev->got += (size_t)n;
    if (dev->got == VU_HDR_SIZE) {
        m->request = vp_get_le32(dev->hdr);
        m->flags = vp_get_le32(dev->hdr + 4);
        m->size = vp_get_le32(dev->hdr + 8);
        if ((m->flags & VU_FLAG_VERSION_MASK) != VU_FLAG_VERSION) {
            vu_err(dev, "bad header: flags 0x%x: version %u, expected %u", m->flags,
                   m->flags & VU_FLAG_VERSION_MASK, VU_FLAG_VERSION);
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
        if (m->flags & VU_FLAG_REPLY) {
            vu_err(dev, "bad header: %s has the REPLY flag set", vu_request_name(m->request));
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
        if (m->size > VU_MAX_PAYLOAD) {
            vu_err(dev, "bad header: %s payload size %u over the limit %u",
                   vu_request_name(m->request), m->size, VU_MAX_PAYLOAD);
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
    }
    return 1;
}

int vu_recv_step(struct vu_dev *dev)
{
    for (;;) {
        int r = vu_recv_some(dev);
        if (r <= 0)
            return r;
        if (dev->got >= VU_HDR_SIZE && dev->got == VU_HDR_SIZE + dev->msg.size)
            return 1;
    }
}

/* ---- Sending ---- */

/** Send one reply (flags: version | REPLY) through the output queue: what the socket
 *  does not take now goes out when it is writable (never a blocking wait). A queue
 *  over VU_OUTQ_MAX or a send error breaks the device. */
static int vu_send_reply(struct vu_dev *dev, uint32_t request, const void *payload, uint32_t size)
{
    uint8_t buf[VU_HDR_SIZE + 64];
    if (size > sizeof(buf) - VU_HDR_SIZE)
        return -EINVAL;
    vp_put_le32(buf, request);
    vp_put_le32(buf + 4, VU_FLAG_VERSION | VU_FLAG_REPLY);
    vp_put_le32(buf + 8, size);
    if (size)
        memcpy(buf + VU_HDR_SIZE, payload, size);
    int r = vp_outq_push(&dev->outq, buf, VU_HDR_SIZE + size, NULL, 0, request);
    if (r == -ENOBUFS) {
        vu_err(dev, "reply to %s: the frontend does not read its socket (%zu bytes of "
               "replies queued)", vu_request_name(request), dev->outq.bytes);
        vu_break(dev, EIO);
        return -EIO;
    }
    if (r < 0) {
        vu_err(dev, "reply to %s: send: %s", vu_request_name(request), strerror(-r));
        vu_break(dev, EIO);
        return r;
    }
    return 0;
}

int vu_reply_u64(struct vu_dev *dev, uint32_t request, uint64_t v)
{
    uint8_t p[8];
    vp_put_le64(p, v);
    return vu_send_reply(dev, request, p, sizeof(p));
}

int vu_reply_state(struct vu_dev *dev, uint32_t request, uint32_t index, uint32_t num)
{
    uint8_t p[8];
    vp_put_le32(p, index);
    vp_put_le32(p + 4, num);
    return vu_send_reply(dev, request, p, sizeof(p));
}
