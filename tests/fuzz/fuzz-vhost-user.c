/*
 * fuzz-vhost-user.c - libFuzzer target: the vhost-user backend core of the client
 * (client/vhost_user.c): framing, the central request checks (vu_check_request) and
 * every handler, as a frontend (the driver VM's QEMU, or anything that connects to
 * the daemon's socket) drives them.
 *
 * The input:
 *   u8 cfg     bits 0-1: queue pairs (1..4); bits 2-7: max_mem_slots (0: default 64)
 *   u8 policy  how the user callbacks answer: bits 0-1 mem_added/mem_removed (accept,
 *              refuse, defer to a later step, answer from inside the callback), bit 2
 *              GET_FEATURES deferred, bit 3 GET_VRING_BASE deferred
 *   steps      until the input ends:
 *     send     a run of input bytes as one sendmsg with 0..3 (sometimes up to 12) fds
 *              of input-chosen kinds (memfds of odd sizes and seals, eventfds, pipes,
 *              sockets, directories, ...): whole or split requests, fds on any byte;
 *     handle   vu_dev_handle_input(), then read and check every reply it wrote;
 *     answer   complete whatever is deferred (features, vring base, memory verdict),
 *              or vu_dev_fail(), or shut the frontend's side down (EOF).
 *
 * Invariants besides the sanitizers and the fd check: ops->vring_started sees a
 * running virtqueue with a power-of-two size whose three rings lie inside one region
 * each of a table of 1..64 regions with open fds; fds handed to callbacks are
 * open; every reply has the REPLY flag, version 1 and a size that fits its request;
 * ops->disconnected is called at most once, with a reason.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "fuzz.h"
#include "vhost_user.h"
#include "vp_vring.h"

struct ctx {
    int sv[2];                    /* sv[0]: the frontend (ours), sv[1]: the backend's */
    struct vu_dev *dev;
    uint8_t policy;
    struct fz *f;
    unsigned disconnects;
    uint8_t rbuf[VU_HDR_SIZE + VU_MAX_PAYLOAD];
    size_t rgot;
};

static bool fd_open(int fd)
{
    return fd >= 0 && fcntl(fd, F_GETFD) >= 0;
}

static bool inside_region(const struct vp_region *regions, unsigned n, uint64_t gpa,
                          uint64_t size)
{
    for (unsigned i = 0; i < n; i++) {
        const struct vp_region *r = &regions[i];
        if (gpa >= r->gpa && gpa - r->gpa <= r->size && size <= r->size - (gpa - r->gpa))
            return true;
    }
    return false;
}

static void on_vring_started(struct vu_dev *dev, const struct vu_vring_info *info,
                             void *opaque)
{
    (void)opaque;
    struct vp_region regions[VP_MAX_REGIONS];
    unsigned n = vu_dev_get_regions(dev, regions, VP_MAX_REGIONS);
    FZ_CHECK(n >= 1 && n <= VP_MAX_REGIONS);
    for (unsigned i = 0; i < n; i++) {
        const struct vp_region *r = &regions[i];
        FZ_CHECK(fd_open(r->fd));
        FZ_CHECK(r->size > 0 && r->gpa <= UINT64_MAX - r->size);
    }
    const struct vp_virtq *q = &info->vq;
    FZ_CHECK(info->running);
    FZ_CHECK(q->index < VU_MAX_QUEUES);
    FZ_CHECK(q->num >= 1 && q->num <= VP_MAX_VRING_NUM && !(q->num & (q->num - 1)));
    FZ_CHECK(inside_region(regions, n, q->desc, vp_vring_desc_size(q->num)));
    FZ_CHECK(inside_region(regions, n, q->avail, vp_vring_avail_size(q->num)));
    FZ_CHECK(inside_region(regions, n, q->used, vp_vring_used_size(q->num)));
    FZ_CHECK(q->kick_fd == -1 || fd_open(q->kick_fd));
    FZ_CHECK(q->call_fd == -1 || fd_open(q->call_fd));
}

static int mem_verdict(struct vu_dev *dev, const struct vp_region *region, struct ctx *c)
{
    FZ_CHECK(region->size > 0);
    switch (c->policy & 3) {
    case 0:
        return 0;
    case 1:
        return -EINVAL;
    case 2:
        return VU_DEFERRED;
    default:
        /* Answered from inside the callback (allowed by vhost_user.h). */
        FZ_CHECK(vu_dev_reply_mem(dev, fz_bool(c->f) ? 0 : -ENOSPC) == 0);
        return VU_DEFERRED;
    }
}

static int on_mem_added(struct vu_dev *dev, const struct vp_region *region, void *opaque)
{
    FZ_CHECK(fd_open(region->fd));
    return mem_verdict(dev, region, opaque);
}

static int on_mem_removed(struct vu_dev *dev, const struct vp_region *region, void *opaque)
{
    return mem_verdict(dev, region, opaque);
}

static int on_get_features(struct vu_dev *dev, uint64_t *features, void *opaque)
{
    (void)dev;
    struct ctx *c = opaque;
    if (c->policy & 4)
        return VU_DEFERRED;
    *features = VP_NET_FEATURES;
    return 0;
}

static void on_vring_changed(struct vu_dev *dev, const struct vu_vring_info *info,
                             void *opaque)
{
    (void)dev;
    (void)opaque;
    const struct vp_virtq *vq = &info->vq;
    FZ_CHECK(vq->index < VU_MAX_QUEUES);
    FZ_CHECK(vq->kick_fd == -1 || fd_open(vq->kick_fd));
    FZ_CHECK(vq->call_fd == -1 || fd_open(vq->call_fd));
}

static int on_get_vring_base(struct vu_dev *dev, uint32_t index, uint16_t *last_avail_idx,
                             void *opaque)
{
    (void)dev;
    struct ctx *c = opaque;
    FZ_CHECK(index < VU_MAX_QUEUES);
    if (c->policy & 8)
        return VU_DEFERRED;
    *last_avail_idx = (uint16_t)index;
    return 0;
}

static void on_disconnected(struct vu_dev *dev, const char *reason, void *opaque)
{
    (void)dev;
    struct ctx *c = opaque;
    FZ_CHECK(reason && reason[0]);
    c->disconnects++;
    FZ_CHECK(c->disconnects == 1);
}

static const struct vu_dev_ops ops = {
    .get_features = on_get_features,
    .vring_started = on_vring_started,
    .mem_added = on_mem_added,
    .mem_removed = on_mem_removed,
    .vring_changed = on_vring_changed,
    .get_vring_base = on_get_vring_base,
    .disconnected = on_disconnected,
};

/* Read what the backend answered and check each reply's header. */
static void read_replies(struct ctx *c)
{
    for (;;) {
        ssize_t n = recv(c->sv[0], c->rbuf + c->rgot, sizeof(c->rbuf) - c->rgot, MSG_DONTWAIT);
        if (n <= 0)
            return;
        c->rgot += (size_t)n;
        while (c->rgot >= VU_HDR_SIZE) {
            uint32_t request = vp_get_le32(c->rbuf);
            uint32_t flags = vp_get_le32(c->rbuf + 4);
            uint32_t size = vp_get_le32(c->rbuf + 8);
            (void)request;        /* echoes the request, even an unknown one */
            FZ_CHECK((flags & VU_FLAG_VERSION_MASK) == VU_FLAG_VERSION);
            FZ_CHECK(flags & VU_FLAG_REPLY);
            FZ_CHECK(size == 8);  /* a u64, a vring state, or a REPLY_ACK status */
            if (c->rgot < VU_HDR_SIZE + size)
                break;
            memmove(c->rbuf, c->rbuf + VU_HDR_SIZE + size, c->rgot - VU_HDR_SIZE - size);
            c->rgot -= VU_HDR_SIZE + size;
        }
    }
}

/* The socket buffer is full: let the backend read (and read its replies). */
static void drain(void *opaque)
{
    struct ctx *c = opaque;
    vu_dev_handle_input(c->dev);
    read_replies(c);
}

static void answer(struct ctx *c, uint8_t cmd)
{
    struct fz *f = c->f;
    if (!c->dev)
        return;
    switch ((cmd >> 2) & 7) {
    case 0:
        vu_dev_reply_features(c->dev, fz_u64(f));
        break;
    case 1:
        vu_dev_reply_vring_base(c->dev, fz_u8(f) % (VU_MAX_QUEUES + 1), fz_u16(f));
        break;
    case 2:
    case 3:
        vu_dev_reply_mem(c->dev, cmd & 0x20 ? -EIO : 0);
        break;
    case 4:
        vu_dev_fail(c->dev, "fuzz: the user gives up (%u)", cmd);
        break;
    case 5:
        shutdown(c->sv[0], SHUT_WR);
        break;
    default: {
        struct vp_region regs[VP_MAX_REGIONS];
        unsigned n = vu_dev_get_regions(c->dev, regs, VP_MAX_REGIONS);
        FZ_CHECK(n <= VP_MAX_REGIONS);
        for (unsigned i = 0; i < n; i++)
            FZ_CHECK(fd_open(regs[i].fd));
        break;
    }
    }
    read_replies(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = { data, size };
    struct fz_fdset before;
    fz_fds_begin(&before);
    static struct ctx c;
    memset(&c, 0, sizeof(c));
    c.f = &f;
    uint8_t cfg = fz_u8(&f);
    c.policy = fz_u8(&f);
    FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, c.sv) == 0);
    struct vu_dev_config vc = { .nqueues = 2 * (1 + (cfg & 3)), .max_mem_slots = cfg >> 2 };
    vp_error err = { { 0 } };
    c.dev = vu_dev_new(c.sv[1], &vc, &ops, &c, &err);
    if (!c.dev) {
        /* Only a max_mem_slots over the limit is refused; the socket is closed. */
        FZ_CHECK(vc.max_mem_slots > VP_MAX_REGIONS && err.msg[0]);
        close(c.sv[0]);
        fz_fds_end(&before);
        return 0;
    }

    for (unsigned step = 0; step < 512 && f.n; step++) {
        uint8_t cmd = fz_u8(&f);
        switch (cmd & 3) {
        case 0:
        case 1:
            /* up to 12 fds: over VU_MAX_FDS now and then */
            fz_send_chunk(&f, c.sv[0], cmd, 1024, 13, drain, &c);
            break;
        case 2: {
            int ret = vu_dev_handle_input(c.dev);
            FZ_CHECK(ret == 0 || ret == -ECONNRESET || ret == -EPROTO || ret == -EIO ||
                     ret == -ECONNABORTED);
            FZ_CHECK(ret == 0 || vu_dev_is_broken(c.dev));
            read_replies(&c);
            break;
        }
        default:
            answer(&c, cmd);
            break;
        }
    }
    shutdown(c.sv[0], SHUT_WR);
    for (int i = 0; i < 64 && !vu_dev_is_broken(c.dev) && vu_dev_wants_input(c.dev); i++) {
        vu_dev_handle_input(c.dev);
        read_replies(&c);
    }
    vu_dev_free(c.dev);
    close(c.sv[0]);
    fz_fds_end(&before);
    return 0;
}
