/*
 * vu_frontend.c - scripted vhost-user frontend for tests (see vu_frontend.h).
 *
 * Security model: test code talking to the backend under test; replies are still
 * checked (flags, request, size) so a broken backend fails a test instead of
 * confusing it.
 */
#include "vu_frontend.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The frontend's fake user address space: RAM i at VU_FE_UBASE + i * VU_FE_USTRIDE. */
#define VU_FE_UBASE 0x7f1200000000ULL
#define VU_FE_USTRIDE 0x1000000000ULL

struct vu_fe_ram {
    int fd;
    uint64_t size;
};

struct vu_fe_region {
    bool live;
    unsigned ram;
    uint64_t mmap_offset, gpa, size;
};

struct vu_fe {
    int sock;
    unsigned nqueues;
    vu_fe_pump_fn pump;
    void *pump_opaque;
    int timeout_ms;
    uint64_t accepted_pf;
    unsigned mem_repeat;
    uint64_t offered;
    uint64_t pf_offered;
    uint64_t pf;
    struct vu_fe_ram ram[VU_FE_MAX_RAM];
    unsigned nram;
    struct vu_fe_region reg[VU_FE_MAX_REGIONS];
    uint64_t last_ack;      /* VU_FE_NO_ACK: none since the last clear */
    bool unsealed;          /* new RAM is not sealed (DPDK's memory) */
    int kick[VU_MAX_QUEUES], call[VU_MAX_QUEUES], err[VU_MAX_QUEUES];
    vp_error error;
};

static int fe_fail(struct vu_fe *fe, int ret, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fe_fail(struct vu_fe *fe, int ret, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fe->error.msg, sizeof(fe->error.msg), fmt, ap);
    va_end(ap);
    return ret;
}

static int64_t fe_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct vu_fe *vu_fe_new(int sock, unsigned nqueues, vu_fe_pump_fn pump, void *pump_opaque)
{
    struct vu_fe *fe = calloc(1, sizeof(*fe));
    if (!fe)
        abort();
    fe->sock = sock;
    fe->nqueues = nqueues > VU_MAX_QUEUES ? VU_MAX_QUEUES : nqueues;
    fe->pump = pump;
    fe->pump_opaque = pump_opaque;
    fe->timeout_ms = 5000;
    fe->accepted_pf = VU_FE_QEMU72_PF;
    fe->mem_repeat = 1;
    fe->last_ack = VU_FE_NO_ACK;
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++)
        fe->kick[i] = fe->call[i] = fe->err[i] = -1;
    return fe;
}

void vu_fe_free(struct vu_fe *fe)
{
    if (!fe)
        return;
    vp_close_fd(&fe->sock);
    for (unsigned i = 0; i < fe->nram; i++)
        vp_close_fd(&fe->ram[i].fd);
    vp_close_fds(fe->kick, VU_MAX_QUEUES);
    vp_close_fds(fe->call, VU_MAX_QUEUES);
    vp_close_fds(fe->err, VU_MAX_QUEUES);
    free(fe);
}

void vu_fe_reconnect(struct vu_fe *fe, int sock)
{
    vp_close_fd(&fe->sock);
    fe->sock = sock;
    fe->offered = fe->pf_offered = fe->pf = 0;
    vp_close_fds(fe->kick, VU_MAX_QUEUES);
    vp_close_fds(fe->call, VU_MAX_QUEUES);
    vp_close_fds(fe->err, VU_MAX_QUEUES);
}

const char *vu_fe_error(const struct vu_fe *fe) { return fe->error.msg; }
int vu_fe_sock(const struct vu_fe *fe) { return fe->sock; }
void vu_fe_set_accepted_pf(struct vu_fe *fe, uint64_t pf) { fe->accepted_pf = pf; }
void vu_fe_set_mem_repeat(struct vu_fe *fe, unsigned n) { fe->mem_repeat = n ? n : 1; }
void vu_fe_set_timeout(struct vu_fe *fe, int timeout_ms) { fe->timeout_ms = timeout_ms; }
uint64_t vu_fe_offered_features(const struct vu_fe *fe) { return fe->offered; }
uint64_t vu_fe_protocol_features(const struct vu_fe *fe) { return fe->pf; }

/* ---- Memory ---- */

int vu_fe_ram_new(struct vu_fe *fe, uint64_t size)
{
    if (fe->nram >= VU_FE_MAX_RAM)
        return fe_fail(fe, -ENOSPC, "too many RAM blocks");
    int fd = memfd_create("vu-fe-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return fe_fail(fe, -errno, "memfd_create: %s", strerror(errno));
    if (ftruncate(fd, (off_t)size) < 0 ||
        (!fe->unsealed &&
         fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)) {
        int e = errno;
        close(fd);
        return fe_fail(fe, -e, "memfd set-up: %s", strerror(e));
    }
    fe->ram[fe->nram].fd = fd;
    fe->ram[fe->nram].size = size;
    return (int)fe->nram++;
}

void vu_fe_set_ram_sealed(struct vu_fe *fe, bool sealed)
{
    fe->unsealed = !sealed;
}

int vu_fe_ram_fd(const struct vu_fe *fe, unsigned ram)
{
    return ram < fe->nram ? fe->ram[ram].fd : -1;
}

uint64_t vu_fe_uaddr(const struct vu_fe *fe, unsigned ram, uint64_t off)
{
    (void)fe;
    return VU_FE_UBASE + (uint64_t)ram * VU_FE_USTRIDE + off;
}

int vu_fe_region_new(struct vu_fe *fe, unsigned ram, uint64_t mmap_offset, uint64_t gpa,
                     uint64_t size)
{
    if (ram >= fe->nram)
        return fe_fail(fe, -EINVAL, "no RAM %u", ram);
    for (unsigned i = 0; i < VU_FE_MAX_REGIONS; i++) {
        if (fe->reg[i].live)
            continue;
        fe->reg[i] = (struct vu_fe_region){true, ram, mmap_offset, gpa, size};
        return (int)i;
    }
    return fe_fail(fe, -ENOSPC, "too many regions");
}

int vu_fe_region_drop(struct vu_fe *fe, int id)
{
    if (id < 0 || id >= VU_FE_MAX_REGIONS || !fe->reg[id].live)
        return fe_fail(fe, -EINVAL, "no region %d", id);
    fe->reg[id].live = false;
    return 0;
}

/* ---- Transport ---- */

/** The socket buffer is full: pump the backend until there is room (bounded). */
static int fe_wait_writable(struct vu_fe *fe)
{
    int64_t deadline = fe_now_ms() + fe->timeout_ms;
    for (;;) {
        struct pollfd pfd = {.fd = fe->sock, .events = POLLOUT};
        int r = poll(&pfd, 1, fe->pump ? 0 : 10);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return fe_fail(fe, -errno, "poll: %s", strerror(errno));
        if (fe_now_ms() >= deadline)
            return fe_fail(fe, -ETIMEDOUT, "the backend does not read within %d ms",
                           fe->timeout_ms);
        if (fe->pump)
            fe->pump(fe->pump_opaque);
        else
            continue;
        if (poll(&pfd, 1, 1) > 0)
            return 0;
    }
}

int vu_fe_send_raw(struct vu_fe *fe, const void *buf, size_t len, const int *fds,
                   unsigned nfds)
{
    if (nfds > 16)
        return fe_fail(fe, -EINVAL, "too many fds");
    if (len == 0)
        return 0;
    size_t off = 0;
    while (off < len) {
        struct iovec iov = {.iov_base = (char *)buf + off, .iov_len = len - off};
        ssize_t n = vp_sendmsg_fds(fe->sock, &iov, 1, fds, off == 0 ? nfds : 0,
                                   MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            if (n == -EAGAIN || n == -EWOULDBLOCK) {
                int r = fe_wait_writable(fe);
                if (r < 0)
                    return r;
                continue;
            }
            return fe_fail(fe, (int)n, "sendmsg: %s", strerror((int)-n));
        }
        off += (size_t)n;
    }
    return 0;
}

int vu_fe_send(struct vu_fe *fe, uint32_t request, uint32_t flags, const void *payload,
               uint32_t size, const int *fds, unsigned nfds)
{
    uint8_t buf[VU_HDR_SIZE + VU_MAX_PAYLOAD];
    if (size > VU_MAX_PAYLOAD)
        return fe_fail(fe, -EINVAL, "payload too big for the test frontend");
    vp_put_le32(buf, request);
    vp_put_le32(buf + 4, flags | VU_FLAG_VERSION);
    vp_put_le32(buf + 8, size);
    if (size)
        memcpy(buf + VU_HDR_SIZE, payload, size);
    return vu_fe_send_raw(fe, buf, VU_HDR_SIZE + size, fds, nfds);
}

/** Wait until the socket is readable, pumping the backend meanwhile. */
static int fe_wait_readable(struct vu_fe *fe, int timeout_ms)
{
    int64_t deadline = fe_now_ms() + timeout_ms;
    for (;;) {
        struct pollfd pfd = {.fd = fe->sock, .events = POLLIN};
        int r = poll(&pfd, 1, fe->pump ? 0 : 10);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return fe_fail(fe, -errno, "poll: %s", strerror(errno));
        if (fe_now_ms() >= deadline)
            return fe_fail(fe, -ETIMEDOUT, "no reply from the backend within %d ms",
                           timeout_ms);
        if (fe->pump) {
            fe->pump(fe->pump_opaque);
            r = poll(&pfd, 1, 1);
            if (r > 0)
                return 0;
        }
    }
}

static int fe_read_exact(struct vu_fe *fe, void *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        int r = fe_wait_readable(fe, fe->timeout_ms);
        if (r < 0)
            return r;
        ssize_t n = recv(fe->sock, (char *)buf + off, len - off, MSG_DONTWAIT);
        if (n == 0)
            return fe_fail(fe, -ECONNRESET, "the backend closed the connection");
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return fe_fail(fe, -errno, "recv: %s", strerror(errno));
        }
        off += (size_t)n;
    }
    return 0;
}

int vu_fe_recv_reply(struct vu_fe *fe, uint32_t request, void *payload, uint32_t size)
{
    uint8_t hdr[VU_HDR_SIZE];
    int r = fe_read_exact(fe, hdr, sizeof(hdr));
    if (r < 0)
        return r;
    uint32_t req = vp_get_le32(hdr), flags = vp_get_le32(hdr + 4), sz = vp_get_le32(hdr + 8);
    /* QEMU insists on exactly version | REPLY. */
    if (flags != (VU_FLAG_VERSION | VU_FLAG_REPLY))
        return fe_fail(fe, -EPROTO, "reply flags 0x%x", flags);
    if (req != request)
        return fe_fail(fe, -EPROTO, "reply to %s, expected %s", vu_request_name(req),
                       vu_request_name(request));
    if (sz != size)
        return fe_fail(fe, -EPROTO, "reply size %u, expected %u", sz, size);
    return size ? fe_read_exact(fe, payload, size) : 0;
}

int vu_fe_recv_ack(struct vu_fe *fe, uint32_t request)
{
    uint8_t p[8];
    int r = vu_fe_recv_reply(fe, request, p, sizeof(p));
    if (r < 0)
        return r;
    uint64_t v = vp_get_le64(p);
    fe->last_ack = v;
    if (v != 0)
        return fe_fail(fe, -EIO, "the backend rejected %s (reply %" PRIu64 ")",
                       vu_request_name(request), v);
    return 0;
}

uint64_t vu_fe_last_ack(const struct vu_fe *fe) { return fe->last_ack; }
void vu_fe_clear_ack(struct vu_fe *fe) { fe->last_ack = VU_FE_NO_ACK; }

int vu_fe_wait_closed(struct vu_fe *fe)
{
    int64_t deadline = fe_now_ms() + fe->timeout_ms;
    for (;;) {
        int remaining = (int)(deadline - fe_now_ms());
        if (remaining <= 0)
            return fe_fail(fe, -ETIMEDOUT, "the backend did not close within %d ms",
                           fe->timeout_ms);
        int r = fe_wait_readable(fe, remaining);
        if (r < 0)
            return r;
        char buf[256];
        ssize_t n = recv(fe->sock, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0)
            return 0;
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return errno == ECONNRESET ? 0 : fe_fail(fe, -errno, "recv: %s", strerror(errno));
        /* Replies before the close (e.g. a failure ack) are skipped. */
    }
}

bool vu_fe_reply_pending(struct vu_fe *fe, int ms)
{
    return fe_wait_readable(fe, ms) == 0;
}

/* ---- Messages ---- */

static bool fe_reply_ack(const struct vu_fe *fe)
{
    return fe->pf & (1ULL << VU_PF_REPLY_ACK);
}

int vu_fe_get_u64(struct vu_fe *fe, uint32_t request, uint64_t *v)
{
    int r = vu_fe_send(fe, request, 0, NULL, 0, NULL, 0);
    uint8_t p[8];
    if (!r)
        r = vu_fe_recv_reply(fe, request, p, sizeof(p));
    if (!r)
        *v = vp_get_le64(p);
    return r;
}

int vu_fe_set_u64(struct vu_fe *fe, uint32_t request, uint64_t v, bool need_reply)
{
    uint8_t p[8];
    vp_put_le64(p, v);
    int r = vu_fe_send(fe, request, need_reply ? VU_FLAG_NEED_REPLY : 0, p, 8, NULL, 0);
    if (!r && need_reply)
        r = vu_fe_recv_ack(fe, request);
    return r;
}

int vu_fe_set_state(struct vu_fe *fe, uint32_t request, uint32_t index, uint32_t num,
                    bool need_reply)
{
    uint8_t p[8];
    vp_put_le32(p, index);
    vp_put_le32(p + 4, num);
    int r = vu_fe_send(fe, request, need_reply ? VU_FLAG_NEED_REPLY : 0, p, 8, NULL, 0);
    if (!r && need_reply)
        r = vu_fe_recv_ack(fe, request);
    return r;
}

int vu_fe_set_vring_addr(struct vu_fe *fe, uint32_t index, uint64_t desc_u, uint64_t avail_u,
                         uint64_t used_u, uint32_t flags)
{
    uint8_t p[40];
    vp_put_le32(p, index);
    vp_put_le32(p + 4, flags);
    vp_put_le64(p + 8, desc_u);
    vp_put_le64(p + 16, used_u);
    vp_put_le64(p + 24, avail_u);
    vp_put_le64(p + 32, 0); /* log_guest_addr */
    return vu_fe_send(fe, VU_SET_VRING_ADDR, 0, p, sizeof(p), NULL, 0);
}

static int *fe_vring_slot(struct vu_fe *fe, uint32_t request, uint32_t index)
{
    if (index >= VU_MAX_QUEUES)
        return NULL;
    switch (request) {
    case VU_SET_VRING_KICK: return &fe->kick[index];
    case VU_SET_VRING_CALL: return &fe->call[index];
    case VU_SET_VRING_ERR: return &fe->err[index];
    default: return NULL;
    }
}

int vu_fe_set_vring_fd(struct vu_fe *fe, uint32_t request, uint32_t index, bool nofd)
{
    int *slot = fe_vring_slot(fe, request, index);
    if (!slot)
        return fe_fail(fe, -EINVAL, "bad vring fd request");
    vp_close_fd(slot);
    uint8_t p[8];
    vp_put_le64(p, (index & VU_VRING_IDX_MASK) | (nofd ? VU_VRING_NOFD : 0));
    if (nofd)
        return vu_fe_send(fe, request, 0, p, 8, NULL, 0);
    *slot = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (*slot < 0)
        return fe_fail(fe, -errno, "eventfd: %s", strerror(errno));
    return vu_fe_send(fe, request, 0, p, 8, slot, 1);
}

int vu_fe_vring_fd(const struct vu_fe *fe, uint32_t request, uint32_t index)
{
    int *slot = fe_vring_slot((struct vu_fe *)fe, request, index);
    return slot ? *slot : -1;
}

int vu_fe_get_vring_base(struct vu_fe *fe, uint32_t index, uint32_t *num)
{
    uint8_t p[8];
    vp_put_le32(p, index);
    vp_put_le32(p + 4, 0);
    int r = vu_fe_send(fe, VU_GET_VRING_BASE, 0, p, 8, NULL, 0);
    if (!r)
        r = vu_fe_recv_reply(fe, VU_GET_VRING_BASE, p, 8);
    if (r)
        return r;
    if (vp_get_le32(p) != index)
        return fe_fail(fe, -EPROTO, "GET_VRING_BASE reply for vring %u, expected %u",
                       vp_get_le32(p), index);
    if (num)
        *num = vp_get_le32(p + 4);
    return 0;
}

static void fe_put_region(uint8_t *p, const struct vu_fe *fe, const struct vu_fe_region *r,
                          uint64_t mmap_offset)
{
    vp_put_le64(p, r->gpa);
    vp_put_le64(p + 8, r->size);
    vp_put_le64(p + 16, vu_fe_uaddr(fe, r->ram, r->mmap_offset));
    vp_put_le64(p + 24, mmap_offset);
}

static struct vu_fe_region *fe_region(struct vu_fe *fe, int id)
{
    if (id < 0 || id >= VU_FE_MAX_REGIONS || !fe->reg[id].live)
        return NULL;
    return &fe->reg[id];
}

int vu_fe_add_mem_reg(struct vu_fe *fe, int id)
{
    struct vu_fe_region *r = fe_region(fe, id);
    if (!r)
        return fe_fail(fe, -EINVAL, "no region %d", id);
    uint8_t p[40] = {0};
    fe_put_region(p + 8, fe, r, r->mmap_offset);
    bool ack = fe_reply_ack(fe);
    for (unsigned i = 0; i < fe->mem_repeat; i++) {
        int ret = vu_fe_send(fe, VU_ADD_MEM_REG, ack ? VU_FLAG_NEED_REPLY : 0, p, sizeof(p),
                             &fe->ram[r->ram].fd, 1);
        if (!ret && ack)
            ret = vu_fe_recv_ack(fe, VU_ADD_MEM_REG);
        if (ret)
            return ret;
    }
    return 0;
}

int vu_fe_rem_mem_reg(struct vu_fe *fe, int id, bool with_fd)
{
    struct vu_fe_region *r = fe_region(fe, id);
    if (!r)
        return fe_fail(fe, -EINVAL, "no region %d", id);
    uint8_t p[40] = {0};
    fe_put_region(p + 8, fe, r, 0);
    bool ack = fe_reply_ack(fe);
    for (unsigned i = 0; i < fe->mem_repeat; i++) {
        int ret = vu_fe_send(fe, VU_REM_MEM_REG, ack ? VU_FLAG_NEED_REPLY : 0, p, sizeof(p),
                             with_fd ? &fe->ram[r->ram].fd : NULL, with_fd ? 1 : 0);
        if (!ret && ack)
            ret = vu_fe_recv_ack(fe, VU_REM_MEM_REG);
        if (ret)
            return ret;
    }
    r->live = false;
    return 0;
}

int vu_fe_set_mem_table(struct vu_fe *fe)
{
    uint8_t p[8 + VU_MEM_TABLE_MAX * VU_REGION_SIZE] = {0};
    int fds[VU_MEM_TABLE_MAX];
    uint32_t n = 0;
    for (unsigned i = 0; i < VU_FE_MAX_REGIONS; i++) {
        const struct vu_fe_region *r = &fe->reg[i];
        if (!r->live)
            continue;
        if (n == VU_MEM_TABLE_MAX)
            return fe_fail(fe, -E2BIG, "more than %u regions for SET_MEM_TABLE",
                           VU_MEM_TABLE_MAX);
        fe_put_region(p + 8 + n * VU_REGION_SIZE, fe, r, r->mmap_offset);
        fds[n++] = fe->ram[r->ram].fd;
    }
    vp_put_le32(p, n);
    bool ack = fe_reply_ack(fe);
    int ret = vu_fe_send(fe, VU_SET_MEM_TABLE, ack ? VU_FLAG_NEED_REPLY : 0, p,
                         8 + n * VU_REGION_SIZE, fds, n);
    if (!ret && ack)
        ret = vu_fe_recv_ack(fe, VU_SET_MEM_TABLE);
    return ret;
}

/* ---- QEMU 7.2 sequences ---- */

static int fe_qemu_init(struct vu_fe *fe, bool enable_rings);

int vu_fe_qemu72_init(struct vu_fe *fe)
{
    return fe_qemu_init(fe, true);
}

int vu_fe_qemu10_init(struct vu_fe *fe)
{
    return fe_qemu_init(fe, false);
}

static int fe_qemu_init(struct vu_fe *fe, bool enable_rings)
{
    uint64_t f, pf = 0;
    int r = vu_fe_get_u64(fe, VU_GET_FEATURES, &f);
    if (r)
        return r;
    fe->offered = f;
    if (f & (1ULL << VU_F_PROTOCOL_FEATURES)) {
        if ((r = vu_fe_get_u64(fe, VU_GET_PROTOCOL_FEATURES, &pf)))
            return r;
        fe->pf_offered = pf;
        pf &= fe->accepted_pf;
        if ((r = vu_fe_set_u64(fe, VU_SET_PROTOCOL_FEATURES, pf, false)))
            return r;
        fe->pf = pf;
        if (pf & (1ULL << VU_PF_CONFIGURE_MEM_SLOTS)) {
            uint64_t slots;
            if ((r = vu_fe_get_u64(fe, VU_GET_MAX_MEM_SLOTS, &slots)))
                return r;
        }
    }
    if ((r = vu_fe_send(fe, VU_SET_OWNER, 0, NULL, 0, NULL, 0)))
        return r;
    if ((r = vu_fe_get_u64(fe, VU_GET_FEATURES, &f)))
        return r;
    fe->offered = f;
    for (unsigned i = 0; i < fe->nqueues; i++) {
        if ((r = vu_fe_set_vring_fd(fe, VU_SET_VRING_CALL, i, false)) ||
            (r = vu_fe_set_vring_fd(fe, VU_SET_VRING_ERR, i, false)))
            return r;
    }
    if (enable_rings && (f & (1ULL << VU_F_PROTOCOL_FEATURES))) {
        for (unsigned rep = 0; rep < 2; rep++)
            for (unsigned i = 0; i < fe->nqueues; i++)
                if ((r = vu_fe_set_state(fe, VU_SET_VRING_ENABLE, i, 1, false)))
                    return r;
    }
    return 0;
}

int vu_fe_ring_at(struct vu_fe *fe, const struct vu_fe_vring *v)
{
    if (fe->nram == 0)
        return fe_fail(fe, -EINVAL, "no guest RAM for the rings");
    uint8_t b[2];
    vp_put_le16(b, v->base);
    if (pwrite(fe->ram[0].fd, b, 2, (off_t)(v->avail_off + 2)) != 2 ||
        pwrite(fe->ram[0].fd, b, 2, (off_t)(v->used_off + 2)) != 2)
        return fe_fail(fe, -errno, "writing the ring indexes: %s", strerror(errno));
    return 0;
}

int vu_fe_qemu72_start(struct vu_fe *fe, uint64_t features, const struct vu_fe_vring *vrings)
{
    if (fe->offered & (1ULL << VU_F_PROTOCOL_FEATURES))
        features |= 1ULL << VU_F_PROTOCOL_FEATURES;
    int r = vu_fe_set_u64(fe, VU_SET_FEATURES, features, false);
    if (r)
        return r;
    if (fe->pf & (1ULL << VU_PF_CONFIGURE_MEM_SLOTS)) {
        for (int i = 0; i < VU_FE_MAX_REGIONS; i++)
            if (fe->reg[i].live && (r = vu_fe_add_mem_reg(fe, i)))
                return r;
    } else if ((r = vu_fe_set_mem_table(fe))) {
        return r;
    }
    for (unsigned i = 0; i < fe->nqueues; i++) {
        const struct vu_fe_vring *v = &vrings[i];
        if ((r = vu_fe_set_state(fe, VU_SET_VRING_NUM, i, v->num, false)) ||
            (r = vu_fe_set_state(fe, VU_SET_VRING_BASE, i, v->base, false)) ||
            (r = vu_fe_set_vring_addr(fe, i, vu_fe_uaddr(fe, 0, v->desc_off),
                                      vu_fe_uaddr(fe, 0, v->avail_off),
                                      vu_fe_uaddr(fe, 0, v->used_off), 0)) ||
            (r = vu_fe_set_vring_fd(fe, VU_SET_VRING_KICK, i, false)) ||
            (r = vu_fe_set_vring_fd(fe, VU_SET_VRING_CALL, i, false)))
            return r;
    }
    return 0;
}

int vu_fe_qemu72_stop(struct vu_fe *fe, uint32_t *bases)
{
    for (unsigned i = 0; i < fe->nqueues; i++) {
        uint32_t b;
        int r = vu_fe_get_vring_base(fe, i, &b);
        if (r)
            return r;
        if (bases)
            bases[i] = b;
    }
    return 0;
}

/* ---- DPDK 22.11 virtio-user's sequences ---- */

int vu_fe_dpdk_init(struct vu_fe *fe)
{
    uint64_t f, pf;
    int r;
    fe->accepted_pf = 1ULL << VU_PF_REPLY_ACK;
    if ((r = vu_fe_send(fe, VU_SET_OWNER, 0, NULL, 0, NULL, 0)) ||
        (r = vu_fe_get_u64(fe, VU_GET_FEATURES, &f)) ||
        (r = vu_fe_get_u64(fe, VU_GET_PROTOCOL_FEATURES, &pf)) ||
        (r = vu_fe_set_u64(fe, VU_SET_PROTOCOL_FEATURES, pf & fe->accepted_pf, false)))
        return r;
    fe->offered = f;
    fe->pf_offered = pf;
    fe->pf = pf & fe->accepted_pf;
    return 0;
}

int vu_fe_dpdk_start(struct vu_fe *fe, uint64_t features, const struct vu_fe_vring *vrings)
{
    int r;
    for (unsigned i = 0; i < fe->nqueues; i++)
        if ((r = vu_fe_set_vring_fd(fe, VU_SET_VRING_CALL, i, false)))
            return r;
    if (fe->offered & (1ULL << VU_F_PROTOCOL_FEATURES))
        features |= 1ULL << VU_F_PROTOCOL_FEATURES;
    if ((r = vu_fe_set_u64(fe, VU_SET_FEATURES, features, false)) ||
        (r = vu_fe_set_mem_table(fe)))
        return r;
    for (unsigned i = 0; i < fe->nqueues; i++) {
        const struct vu_fe_vring *v = &vrings[i];
        if ((r = vu_fe_set_state(fe, VU_SET_VRING_NUM, i, v->num, false)) ||
            (r = vu_fe_set_state(fe, VU_SET_VRING_BASE, i, v->base, false)) ||
            (r = vu_fe_set_vring_addr(fe, i, vu_fe_uaddr(fe, 0, v->desc_off),
                                      vu_fe_uaddr(fe, 0, v->avail_off),
                                      vu_fe_uaddr(fe, 0, v->used_off), 0)) ||
            (r = vu_fe_set_vring_fd(fe, VU_SET_VRING_KICK, i, false)))
            return r;
    }
    for (unsigned i = 0; i < fe->nqueues; i++)
        if ((r = vu_fe_set_state(fe, VU_SET_VRING_ENABLE, i, 1, false)))
            return r;
    return 0;
}

int vu_fe_dpdk_stop(struct vu_fe *fe, uint32_t *bases)
{
    int r;
    for (unsigned i = 0; i < fe->nqueues; i++)
        if ((r = vu_fe_set_state(fe, VU_SET_VRING_ENABLE, i, 0, false)))
            return r;
    return vu_fe_qemu72_stop(fe, bases);
}
