/*
 * vp_msg.c - vhost-pci socket messages (DESIGN section 4): the 32-byte header,
 * fd passing with SCM_RIGHTS and an incremental reader for non-blocking sockets.
 * The protobuf-c payloads (decoded into the plain structs of vp_msg.h, and encoded)
 * are vp_payload.c's.
 *
 * Security model: every byte and every fd that arrives on the socket comes from
 * another process that may be hostile. Do not assume any received field is sensible.
 *   - The header is checked (type, version, msg_len <= VP_MAX_PAYLOAD) as soon as its
 *     32 bytes are in, before the payload buffer is allocated.
 *   - fds are gathered from every recvmsg() of one message (a peer may attach them to
 *     any byte); more than VP_MAX_FDS, or MSG_CTRUNC, rejects the message.
 *   - The reader never reads past the end of the current message, so fds of the next
 *     message cannot be attributed to this one.
 *   - Every error path closes every fd gathered for the message being assembled.
 *   - The payload's own checks are vp_payload.c's (see there).
 * Semantic checks (overlap, file bounds, seals, ring layout) are in vp_validate.c.
 */
#include "vp_msg.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "vp_proto.h"

/* ------------------------------------------------------------------------- */
/* Header                                                                     */
/* ------------------------------------------------------------------------- */

void vp_msg_clear(struct vp_msg *msg)
{
    free(msg->payload);
    msg->payload = NULL;
    vp_close_fds(msg->fds, VP_MAX_FDS);
    msg->nfds = 0;
}

static void msg_init(struct vp_msg *msg)
{
    memset(msg, 0, sizeof(*msg));
    for (unsigned i = 0; i < VP_MAX_FDS; i++)
        msg->fds[i] = -1;
}

void vp_sock_hdr_encode(const struct vp_sock_hdr *hdr, uint8_t out[VP_SOCK_HDR_SIZE])
{
    vp_put_le16(out + 0, hdr->type);
    vp_put_le16(out + 2, hdr->version);
    vp_put_le32(out + 4, hdr->len);
    vp_put_le64(out + 8, hdr->seq);
    memcpy(out + 16, hdr->uuid, VP_UUID_LEN);
}

int vp_sock_hdr_decode(const uint8_t in[VP_SOCK_HDR_SIZE], struct vp_sock_hdr *hdr,
                       vp_error *err)
{
    struct vp_sock_hdr h;
    h.type = vp_get_le16(in + 0);
    h.version = vp_get_le16(in + 2);
    h.len = vp_get_le32(in + 4);
    h.seq = vp_get_le64(in + 8);
    memcpy(h.uuid, in + 16, VP_UUID_LEN);

    if (!vp_proto_rule(h.type))
        return vp_fail(err, -EPROTO, "unknown message type %u", h.type);
    if (h.version != VP_MSG_VERSION)
        return vp_fail(err, -EPROTO, "unsupported message version %u (speak %u) in %s",
                       h.version, VP_MSG_VERSION, vp_msg_type_name(h.type));
    if (h.len > VP_MAX_PAYLOAD)
        return vp_fail(err, -EPROTO, "msg_len %u of %s over the limit of %u bytes",
                       h.len, vp_msg_type_name(h.type), VP_MAX_PAYLOAD);
    *hdr = h;
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Send                                                                       */
/* ------------------------------------------------------------------------- */

static int wait_writable(int sock)
{
    struct pollfd p = { .fd = sock, .events = POLLOUT };
    for (;;) {
        int r = poll(&p, 1, -1);
        if (r > 0)
            return (p.revents & POLLNVAL) ? -EBADF : 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

int vp_msg_send(int sock, const struct vp_sock_hdr *hdr, const void *payload, size_t len,
                const int *fds, unsigned nfds)
{
    if (len > VP_MAX_PAYLOAD || nfds > VP_MAX_FDS || (len && !payload) || (nfds && !fds))
        return -EINVAL;

    uint8_t hbuf[VP_SOCK_HDR_SIZE];
    struct vp_sock_hdr h = *hdr;
    h.len = (uint32_t)len;
    vp_sock_hdr_encode(&h, hbuf);

    struct iovec iov[2] = {
        { .iov_base = hbuf, .iov_len = sizeof(hbuf) },
        { .iov_base = (void *)payload, .iov_len = len },
    };
    unsigned iovi = 0;
    bool fds_sent = (nfds == 0);

    while (iovi < 2) {
        if (iov[iovi].iov_len == 0) {
            iovi++;
            continue;
        }
        /* The fds only on the first byte: nothing has been written yet. */
        ssize_t n = vp_sendmsg_fds(sock, &iov[iovi], 2 - iovi, fds_sent ? NULL : fds,
                                   fds_sent ? 0 : nfds, MSG_NOSIGNAL);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            if (n == -EAGAIN || n == -EWOULDBLOCK) {
                int r = wait_writable(sock);
                if (r < 0)
                    return r;
                continue;
            }
            return (int)n;
        }
        if (n > 0)
            fds_sent = true;
        size_t done = (size_t)n;
        while (iovi < 2 && done >= iov[iovi].iov_len) {
            done -= iov[iovi].iov_len;
            iovi++;
        }
        if (iovi < 2) {
            iov[iovi].iov_base = (uint8_t *)iov[iovi].iov_base + done;
            iov[iovi].iov_len -= done;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Receive                                                                    */
/* ------------------------------------------------------------------------- */

void vp_reader_init(struct vp_msg_reader *r)
{
    memset(r->hdrbuf, 0, sizeof(r->hdrbuf));
    r->got = 0;
    msg_init(&r->msg);
}

void vp_reader_reset(struct vp_msg_reader *r)
{
    vp_msg_clear(&r->msg);
    vp_reader_init(r);
}

/* Take the fds of every SCM_RIGHTS control message into r->msg. Returns 0, or
 * -EMSGSIZE when they do not fit (every fd of this call closed; the caller resets
 * the reader, which closes the ones gathered before). */
static int reader_take_fds(struct vp_msg_reader *r, struct msghdr *mh, vp_error *err)
{
    unsigned closed = vp_take_scm_fds(mh, r->msg.fds, VP_MAX_FDS, &r->msg.nfds, NULL);
    if (closed)
        return vp_fail(err, -EMSGSIZE, "%u fds attached to one message, at most %u",
                       r->msg.nfds + closed, VP_MAX_FDS);
    return 0;
}

/* One step of the reader. @flags is added to recvmsg (MSG_DONTWAIT for
 * vp_msg_recv). Returns 1 (message complete), 0 (would block) or -errno. */
static int reader_read(struct vp_msg_reader *r, int sock, struct vp_msg *out,
                       vp_error *err, int flags)
{
    union {
        /* Room for VP_MAX_FDS fds; a peer sending more sees MSG_CTRUNC. */
        char buf[CMSG_SPACE(sizeof(int) * VP_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    int ret;

    for (;;) {
        size_t total = VP_SOCK_HDR_SIZE + (r->got >= VP_SOCK_HDR_SIZE ? r->msg.hdr.len : 0);
        if (r->got >= VP_SOCK_HDR_SIZE && r->got == total) {
            *out = r->msg;
            msg_init(&r->msg);
            r->got = 0;
            return 1;
        }

        struct iovec iov;
        if (r->got < VP_SOCK_HDR_SIZE) {
            /* Never more than the header: msg_len is not known yet. */
            iov.iov_base = r->hdrbuf + r->got;
            iov.iov_len = VP_SOCK_HDR_SIZE - r->got;
        } else {
            iov.iov_base = r->msg.payload + (r->got - VP_SOCK_HDR_SIZE);
            iov.iov_len = total - r->got;
        }
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = cbuf.buf, .msg_controllen = sizeof(cbuf.buf),
        };
        ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            ret = vp_fail(err, -errno, "recvmsg: %s", strerror(errno));
            goto fail;
        }
        /* Take the fds first, whatever else happened, so that they get closed. */
        ret = reader_take_fds(r, &mh, err);
        if (ret < 0)
            goto fail;
        if (mh.msg_flags & MSG_CTRUNC) {
            ret = vp_fail(err, -EMSGSIZE,
                          "control data truncated (MSG_CTRUNC): more than %u fds or "
                          "foreign control messages", VP_MAX_FDS);
            goto fail;
        }
        if (n == 0) {
            if (r->got == 0)
                ret = vp_fail(err, -ECONNRESET, "peer closed the connection");
            else
                ret = vp_fail(err, -ECONNRESET,
                              "peer closed the connection mid-message (%zu of %zu bytes%s)",
                              r->got, total, r->got < VP_SOCK_HDR_SIZE ? ", in the header" : "");
            goto fail;
        }
        r->got += (size_t)n;

        if (r->got == VP_SOCK_HDR_SIZE) {
            ret = vp_sock_hdr_decode(r->hdrbuf, &r->msg.hdr, err);
            if (ret < 0)
                goto fail;
            if (r->msg.hdr.len > 0) {
                r->msg.payload = malloc(r->msg.hdr.len);
                if (!r->msg.payload) {
                    ret = vp_fail(err, -ENOMEM, "no memory for a %u-byte payload",
                                  r->msg.hdr.len);
                    goto fail;
                }
            }
        }
    }

fail:
    vp_reader_reset(r);
    return ret;
}

int vp_reader_read(struct vp_msg_reader *r, int sock, struct vp_msg *out, vp_error *err)
{
    return reader_read(r, sock, out, err, 0);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int vp_msg_recv(int sock, struct vp_msg *out, int timeout_ms, vp_error *err)
{
    struct vp_msg_reader r;
    vp_reader_init(&r);
    int64_t deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;

    for (;;) {
        int ret = reader_read(&r, sock, out, err, MSG_DONTWAIT);
        if (ret != 0)
            return ret; /* 1, or an error (the reader has closed the fds) */

        int wait_ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0) {
                vp_reader_reset(&r);
                return vp_fail(err, -ETIMEDOUT, "no whole message within %d ms",
                               timeout_ms);
            }
            wait_ms = left > INT32_MAX ? INT32_MAX : (int)left;
        }
        struct pollfd p = { .fd = sock, .events = POLLIN };
        int n = poll(&p, 1, wait_ms);
        if (n < 0 && errno != EINTR) {
            ret = vp_fail(err, -errno, "poll: %s", strerror(errno));
            vp_reader_reset(&r);
            return ret;
        }
        if (n > 0 && (p.revents & POLLNVAL)) {
            vp_reader_reset(&r);
            return vp_fail(err, -EBADF, "poll: socket fd %d is not open", sock);
        }
        /* Readable, hung up or error: the next recvmsg tells which. */
    }
}
