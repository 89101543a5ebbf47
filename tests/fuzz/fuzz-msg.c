/*
 * fuzz-msg.c - libFuzzer target: the vhost-pci socket protocol as the server and the
 * client library receive it (protocol/vp_msg.c framing and payload decoding,
 * protocol/vp_validate.c semantic checks; DESIGN section 4).
 *
 * The input is a script of steps played on a non-blocking socketpair:
 *   send   a run of input bytes as one sendmsg, with 0..3 fds (sometimes up to 140)
 *          of input-chosen kinds attached (fz_make_fd: sealed / unsealed memfds of
 *          odd sizes, plain files, pipes, eventfds, sockets, /dev/null, directories,
 *          O_PATH fds), so fds ride on any byte of a message, headers are split, and
 *          messages carry more or fewer fds than their payload names;
 *   read   run the incremental reader (vp_reader_read) until it would block;
 *   recv   one vp_msg_recv() with a zero timeout;
 *   eof    shut the sending side down (EOF, possibly mid-message).
 * Every complete message is decoded by its type's decoder, validated like the server
 * does (vp_validate_memory_info with input-chosen flags, vp_validate_no_overlap
 * against the regions accepted so far, vp_validate_device_info), re-encoded and
 * decoded again (the result must be the same), and freed.
 *
 * Invariants checked besides the sanitizers: no fd left open after the input; the
 * reader's result respects the limits; decoders move exactly the fds the payload
 * names and leave the rest to the message; a reason is always set on failure, is
 * NUL-terminated, and an ACK reason has no control characters; what validation
 * accepts really is in range (non-overlapping, inside its file, sealed unless
 * allowed, aligned rings).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "vp_msg.h"
#include "vp_vring.h"

struct ctx {
    int sv[2];                    /* sv[0]: the peer (writes), sv[1]: ours (reads) */
    bool eof;                     /* reader saw the end of the stream */
    unsigned vflags;
    struct vp_msg_reader rd;
    unsigned ntab;
    struct vp_region tab[VP_MAX_REGIONS]; /* accepted regions (no fds) */
};

static bool fd_open(int fd)
{
    return fd >= 0 && fcntl(fd, F_GETFD) >= 0;
}

static void check_err(int ret, const vp_error *err)
{
    FZ_CHECK(ret < 0);
    FZ_CHECK(memchr(err->msg, 0, sizeof(err->msg)) != NULL);
    FZ_CHECK(err->msg[0] != 0);
}

/* The message owns exactly its nfds first fds. */
static void check_msg(const struct vp_msg *m)
{
    FZ_CHECK(m->hdr.type < VP_MSG_TYPE_COUNT);
    FZ_CHECK(m->hdr.version == VP_MSG_VERSION);
    FZ_CHECK(m->hdr.len <= VP_MAX_PAYLOAD);
    FZ_CHECK((m->hdr.len == 0) == (m->payload == NULL));
    FZ_CHECK(m->nfds <= VP_MAX_FDS);
    for (unsigned i = 0; i < VP_MAX_FDS; i++)
        FZ_CHECK(i < m->nfds ? fd_open(m->fds[i]) : m->fds[i] == -1);
}

/* Send @m's struct through a fresh socketpair with the library's own encoder and read
 * it back; returns the received message (caller clears it). */
static void resend(struct vp_msg *back, int (*sendfn)(int, const struct vp_sock_hdr *,
                                                       const void *), const void *what,
                   const struct vp_sock_hdr *hdr)
{
    int sv[2];
    FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    FZ_CHECK(sendfn(sv[0], hdr, what) == 0);
    vp_error err = { { 0 } };
    FZ_CHECK(vp_msg_recv(sv[1], back, 1000, &err) == 1);
    close(sv[0]);
    close(sv[1]);
}

static int send_mi(int s, const struct vp_sock_hdr *h, const void *p) { return vp_send_memory_info(s, h, p); }
static int send_di(int s, const struct vp_sock_hdr *h, const void *p) { return vp_send_device_info(s, h, p); }

static void check_memory_info(struct ctx *c, struct vp_msg *m)
{
    struct vp_memory_info mi;
    vp_error err = { { 0 } };
    unsigned nfds_before = m->nfds;
    int ret = vp_decode_memory_info(m, &mi, &err);
    if (ret < 0) {
        check_err(ret, &err);
        for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
            FZ_CHECK(mi.regions[i].fd == -1);
        check_msg(m);             /* still owns all its fds */
        FZ_CHECK(m->nfds == nfds_before);
        return;
    }
    FZ_CHECK(mi.nregions <= VP_MAX_REGIONS);
    FZ_CHECK(mi.op == VP_OP_ADD || mi.op == VP_OP_DEL);
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++) {
        bool has = mi.op == VP_OP_ADD && i < mi.nregions;
        FZ_CHECK(has ? fd_open(mi.regions[i].fd) : mi.regions[i].fd == -1);
    }
    for (unsigned i = 0; i < m->nfds; i++)
        FZ_CHECK(m->fds[i] == -1); /* every fd moved */

    /* The encoder must reproduce it. */
    struct vp_msg back;
    resend(&back, send_mi, &mi, &m->hdr);
    struct vp_memory_info mi2;
    FZ_CHECK(vp_decode_memory_info(&back, &mi2, &err) == 0);
    FZ_CHECK(mi2.op == mi.op && mi2.nregions == mi.nregions);
    for (unsigned i = 0; i < mi.nregions; i++) {
        FZ_CHECK(mi2.regions[i].gpa == mi.regions[i].gpa);
        FZ_CHECK(mi2.regions[i].size == mi.regions[i].size);
        FZ_CHECK(mi2.regions[i].mmap_offset == mi.regions[i].mmap_offset);
    }
    vp_memory_info_close_fds(&mi2);
    vp_msg_clear(&back);

    err.msg[0] = 0;
    ret = vp_validate_memory_info(&mi, c->vflags, &err);
    if (ret == 0 && mi.op == VP_OP_ADD) {
        ret = vp_validate_no_overlap(c->tab, c->ntab, mi.regions, mi.nregions, &err);
        if (ret < 0)
            check_err(ret, &err);
    } else if (ret < 0) {
        check_err(ret, &err);
    }
    if (ret == 0) {
        FZ_CHECK(mi.nregions >= 1);
        for (unsigned i = 0; i < mi.nregions; i++) {
            const struct vp_region *r = &mi.regions[i];
            FZ_CHECK(r->size > 0 && r->gpa <= UINT64_MAX - r->size);
            if (mi.op == VP_OP_DEL)
                continue;
            struct stat st;
            FZ_CHECK(fstat(r->fd, &st) == 0 && S_ISREG(st.st_mode));
            FZ_CHECK(vp_range_ok(r->mmap_offset, r->size, (uint64_t)st.st_size));
            if (!(c->vflags & VP_VALIDATE_ALLOW_UNSEALED))
                FZ_CHECK(fcntl(r->fd, F_GET_SEALS) & F_SEAL_SHRINK);
            for (unsigned j = 0; j < c->ntab; j++) {
                const struct vp_region *t = &c->tab[j];
                FZ_CHECK(r->gpa + r->size <= t->gpa || t->gpa + t->size <= r->gpa);
            }
        }
        for (unsigned i = 0; i < mi.nregions; i++) {
            if (mi.op == VP_OP_ADD) {
                if (c->ntab < VP_MAX_REGIONS) {
                    c->tab[c->ntab] = mi.regions[i];
                    c->tab[c->ntab++].fd = -1;
                }
                continue;
            }
            for (unsigned j = 0; j < c->ntab; j++) {
                if (c->tab[j].gpa == mi.regions[i].gpa && c->tab[j].size == mi.regions[i].size) {
                    c->tab[j] = c->tab[--c->ntab];
                    break;
                }
            }
        }
    }
    vp_memory_info_close_fds(&mi);
}

static void check_device_info(struct vp_msg *m)
{
    struct vp_device_info di;
    vp_error err = { { 0 } };
    unsigned nfds_before = m->nfds;
    int ret = vp_decode_device_info(m, &di, &err);
    if (ret < 0) {
        check_err(ret, &err);
        for (unsigned i = 0; i < VP_MAX_VIRTQS; i++)
            FZ_CHECK(di.virtqs[i].kick_fd == -1 && di.virtqs[i].call_fd == -1);
        check_msg(m);
        FZ_CHECK(m->nfds == nfds_before);
        return;
    }
    FZ_CHECK(di.nvirtqs <= VP_MAX_VIRTQS);
    unsigned owned = 0;
    for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
        const struct vp_virtq *q = &di.virtqs[i];
        if (i >= di.nvirtqs)
            FZ_CHECK(q->kick_fd == -1 && q->call_fd == -1);
        owned += (q->kick_fd >= 0) + (q->call_fd >= 0);
        FZ_CHECK(q->kick_fd == -1 || fd_open(q->kick_fd));
        FZ_CHECK(q->call_fd == -1 || fd_open(q->call_fd));
    }
    FZ_CHECK(owned == nfds_before);
    for (unsigned i = 0; i < m->nfds; i++)
        FZ_CHECK(m->fds[i] == -1);

    struct vp_msg back;
    resend(&back, send_di, &di, &m->hdr);
    struct vp_device_info di2;
    FZ_CHECK(vp_decode_device_info(&back, &di2, &err) == 0);
    FZ_CHECK(di2.op == di.op && di2.nvirtqs == di.nvirtqs);
    FZ_CHECK(di2.device_type == di.device_type && di2.device_id == di.device_id);
    for (unsigned i = 0; i < di.nvirtqs; i++) {
        const struct vp_virtq *a = &di.virtqs[i], *b = &di2.virtqs[i];
        FZ_CHECK(a->index == b->index && a->num == b->num && a->desc == b->desc &&
                 a->avail == b->avail && a->used == b->used &&
                 a->last_avail_idx == b->last_avail_idx);
        FZ_CHECK((a->kick_fd >= 0) == (b->kick_fd >= 0));
        FZ_CHECK((a->call_fd >= 0) == (b->call_fd >= 0));
    }
    vp_device_info_close_fds(&di2);
    vp_msg_clear(&back);

    err.msg[0] = 0;
    ret = vp_validate_device_info(&di, &err);
    if (ret < 0) {
        check_err(ret, &err);
    } else if (di.op == VP_OP_ADD) {
        FZ_CHECK(vp_device_type_valid(di.device_type));
        FZ_CHECK(di.nvirtqs >= 1);
        for (unsigned i = 0; i < di.nvirtqs; i++) {
            const struct vp_virtq *q = &di.virtqs[i];
            FZ_CHECK(q->num >= 1 && q->num <= VP_MAX_VRING_NUM && !(q->num & (q->num - 1)));
            FZ_CHECK(q->desc && !(q->desc & 15) &&
                     q->desc <= UINT64_MAX - vp_vring_desc_size(q->num));
            FZ_CHECK(q->avail && !(q->avail & 1) &&
                     q->avail <= UINT64_MAX - vp_vring_avail_size(q->num));
            FZ_CHECK(q->used && !(q->used & 3) &&
                     q->used <= UINT64_MAX - vp_vring_used_size(q->num));
            for (unsigned j = 0; j < i; j++)
                FZ_CHECK(di.virtqs[j].index != q->index);
        }
    } else {
        FZ_CHECK(di.op == VP_OP_DEL && di.nvirtqs == 0);
    }
    vp_device_info_close_fds(&di);
}

static void check_ack(const struct vp_msg *m)
{
    struct vp_ack ack;
    vp_error err = { { 0 } };
    int ret = vp_decode_ack(m, &ack, &err);
    if (ret < 0) {
        check_err(ret, &err);
        return;
    }
    FZ_CHECK(ack.result <= VP_ACK_DEL_FAIL);
    FZ_CHECK(ack.npositions <= VP_MAX_VIRTQS);
    size_t rl = strnlen(ack.reason, sizeof(ack.reason));
    FZ_CHECK(rl <= VP_MAX_REASON);
    for (size_t i = 0; i < rl; i++)
        FZ_CHECK((uint8_t)ack.reason[i] >= 0x20 && ack.reason[i] != 0x7f);

    int sv[2];
    FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    FZ_CHECK(vp_send_ack(sv[0], m->hdr.type, &m->hdr, &ack) == 0);
    struct vp_msg back;
    FZ_CHECK(vp_msg_recv(sv[1], &back, 1000, &err) == 1);
    close(sv[0]);
    close(sv[1]);
    struct vp_ack ack2;
    FZ_CHECK(vp_decode_ack(&back, &ack2, &err) == 0);
    vp_msg_clear(&back);
    FZ_CHECK(ack2.result == ack.result && ack2.feature_bits == ack.feature_bits);
    FZ_CHECK(ack2.device_type == ack.device_type && ack2.device_id == ack.device_id);
    FZ_CHECK(strcmp(ack2.reason, ack.reason) == 0);
    FZ_CHECK(ack2.npositions == ack.npositions);
    for (unsigned i = 0; i < ack.npositions; i++)
        FZ_CHECK(ack2.positions[i].index == ack.positions[i].index &&
                 ack2.positions[i].last_avail_idx == ack.positions[i].last_avail_idx);
}

static void handle(struct ctx *c, struct vp_msg *m)
{
    check_msg(m);
    vp_error err = { { 0 } };
    uint64_t bits;
    switch (m->hdr.type) {
    case VP_MSG_MEMORY_INFO:
        check_memory_info(c, m);
        break;
    case VP_MSG_DEVICE_INFO:
        check_device_info(m);
        break;
    case VP_MSG_FEATURE_BITS: {
        int ret = vp_decode_feature_bits(m, &bits, &err);
        if (ret < 0)
            check_err(ret, &err);
        break;
    }
    default:
        check_ack(m);
        /* A decoder of another type must refuse it and keep the fds with the message. */
        struct vp_memory_info mi;
        FZ_CHECK(vp_decode_memory_info(m, &mi, &err) < 0);
        break;
    }
    vp_msg_clear(m);
}

/* Run the incremental reader until it would block (or the stream ended). */
static void pump(struct ctx *c)
{
    for (unsigned guard = 0; guard < 1024 && !c->eof; guard++) {
        struct vp_msg m;
        vp_error err = { { 0 } };
        int r = vp_reader_read(&c->rd, c->sv[1], &m, &err);
        if (r == 0)
            return;
        if (r == 1) {
            handle(c, &m);
            continue;
        }
        check_err(r, &err);
        FZ_CHECK(c->rd.got == 0 && c->rd.msg.nfds == 0 && c->rd.msg.payload == NULL);
        if (r == -ECONNRESET)
            c->eof = true;
        /* The server would close the connection; keep reading to fuzz resync. */
    }
}

static void drain(void *c) { pump(c); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = { data, size };
    struct fz_fdset before;
    fz_fds_begin(&before);
    struct ctx c = { .vflags = fz_u8(&f) & VP_VALIDATE_ALLOW_UNSEALED };
    FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, c.sv) == 0);
    vp_reader_init(&c.rd);

    for (unsigned step = 0; step < 512 && f.n; step++) {
        uint8_t cmd = fz_u8(&f);
        switch (cmd & 3) {
        case 0:
        case 1:
            /* up to 140 fds: over VP_MAX_FDS (and SCM_MAX_FD) now and then */
            fz_send_chunk(&f, c.sv[0], cmd, 4096, 141, drain, &c);
            break;
        case 2:
            pump(&c);
            break;
        default:
            if (cmd & 4) {
                shutdown(c.sv[0], SHUT_WR);
            } else if (!c.eof && c.rd.got == 0) {
                /* The blocking convenience, bounded by a zero timeout. */
                struct vp_msg m;
                vp_error err = { { 0 } };
                int r = vp_msg_recv(c.sv[1], &m, 0, &err);
                if (r == 1)
                    handle(&c, &m);
                else if (r == -ECONNRESET)
                    c.eof = true;
                if (r < 0)
                    check_err(r, &err);
            }
            break;
        }
    }
    shutdown(c.sv[0], SHUT_WR);
    pump(&c);
    vp_reader_reset(&c.rd);
    close(c.sv[0]);
    close(c.sv[1]);
    fz_fds_end(&before);
    return 0;
}
