/*
 * test-msg.c - socket framing, fd passing and payload decoding (protocol/vp_msg.c).
 *
 * Malformed payloads are written with a tiny protobuf encoder of our own (below), so
 * the decoders are checked against the wire format of vhost_pci.proto independently
 * of protobuf-c's encoder. Every bad input asserts the error code, the reason text
 * and that no fd leaked.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../testutil.h"
#include "vp_msg.h"

#define TIMEOUT_MS 5000

static const uint8_t test_uuid[VP_UUID_LEN] = {
    0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1,
    0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8,
};

static struct vp_sock_hdr mkhdr(uint64_t seq)
{
    struct vp_sock_hdr h = { .version = VP_MSG_VERSION, .seq = seq };
    memcpy(h.uuid, test_uuid, VP_UUID_LEN);
    return h;
}

/* ---- a minimal protobuf writer (wire format only) ---- */

static void pb_varint(GByteArray *b, uint64_t v)
{
    do {
        uint8_t c = (v & 0x7f) | (v > 0x7f ? 0x80 : 0);
        g_byte_array_append(b, &c, 1);
        v >>= 7;
    } while (v);
}

static void pb_uint(GByteArray *b, unsigned field, uint64_t v)
{
    pb_varint(b, (uint64_t)field << 3);
    pb_varint(b, v);
}

/* proto3 int32: negative values are 10-byte varints of the sign-extended value. */
static void pb_int32(GByteArray *b, unsigned field, int32_t v)
{
    pb_uint(b, field, (uint64_t)(int64_t)v);
}

static void pb_bytes(GByteArray *b, unsigned field, const void *data, size_t len)
{
    pb_varint(b, ((uint64_t)field << 3) | 2);
    pb_varint(b, len);
    g_byte_array_append(b, data, (guint)len);
}

/* Append @sub as field @field and free it. */
static void pb_sub(GByteArray *b, unsigned field, GByteArray *sub)
{
    pb_bytes(b, field, sub->data, sub->len);
    g_byte_array_unref(sub);
}

static GByteArray *pb_region(uint64_t gpa, uint64_t size, uint64_t off, uint32_t fd_index)
{
    GByteArray *r = g_byte_array_new();
    pb_uint(r, 1, gpa);
    pb_uint(r, 2, size);
    pb_uint(r, 3, off);
    pb_uint(r, 4, fd_index);
    return r;
}

static GByteArray *pb_virtq(uint32_t index, uint32_t num, uint32_t last_avail,
                            int32_t kick, int32_t call)
{
    GByteArray *q = g_byte_array_new();
    pb_uint(q, 1, index);
    pb_uint(q, 2, num);
    pb_uint(q, 3, 0x10000 + index * 0x4000);
    pb_uint(q, 4, 0x11000 + index * 0x4000);
    pb_uint(q, 5, 0x12000 + index * 0x4000);
    pb_uint(q, 6, last_avail);
    pb_int32(q, 7, kick);
    pb_int32(q, 8, call);
    return q;
}

/* ---- helpers ---- */

/* Send @payload as @type (any type and version, even invalid) with @fds. */
static void send_raw(int sock, uint16_t type, uint16_t version, GByteArray *payload,
                     const int *fds, unsigned nfds)
{
    struct vp_sock_hdr h = mkhdr(7);
    h.type = type;
    h.version = version;
    g_assert_cmpint(vp_msg_send(sock, &h, payload ? payload->data : NULL,
                                payload ? payload->len : 0, fds, nfds), ==, 0);
    if (payload)
        g_byte_array_unref(payload);
}

/* sendmsg() @len bytes with @nfds fds attached, no framing. */
static void send_bytes_fds(int sock, const void *data, size_t len, const int *fds,
                           unsigned nfds)
{
    struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
    g_assert_cmpint(vp_sendmsg_fds(sock, &iov, 1, fds, nfds, MSG_NOSIGNAL), ==, (ssize_t)len);
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    g_assert_cmpint(fcntl(fd, F_SETFL, fl | O_NONBLOCK), ==, 0);
}

static void assert_same_file(int a, int b)
{
    struct stat sa, sb;
    g_assert_cmpint(a, >=, 0);
    g_assert_cmpint(b, >=, 0);
    g_assert_cmpint(a, !=, b);
    g_assert_cmpint(fstat(a, &sa), ==, 0);
    g_assert_cmpint(fstat(b, &sb), ==, 0);
    g_assert_cmpuint(sa.st_dev, ==, sb.st_dev);
    g_assert_cmpuint(sa.st_ino, ==, sb.st_ino);
}

static void assert_err(int ret, int want, const vp_error *err, const char *substr)
{
    g_assert_cmpint(ret, ==, want);
    if (!strstr(err->msg, substr))
        g_error("reason \"%s\" does not contain \"%s\"", err->msg, substr);
}

/* Receive one message that must arrive fine. */
static void recv_ok(int sock, struct vp_msg *m)
{
    vp_error err = { "" };
    int r = vp_msg_recv(sock, m, TIMEOUT_MS, &err);
    if (r != 1)
        g_error("vp_msg_recv: %d %s", r, err.msg);
}

/* Receive a message and decode it with the decoder for its type; expect failure. */
static void recv_decode_fails(int sock, int want, const char *substr)
{
    struct vp_msg m;
    vp_error err = { "" };
    recv_ok(sock, &m);
    int r;
    switch (m.hdr.type) {
    case VP_MSG_MEMORY_INFO: {
        struct vp_memory_info mi;
        r = vp_decode_memory_info(&m, &mi, &err);
        for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
            g_assert_cmpint(mi.regions[i].fd, ==, -1); /* the result owns none */
        break;
    }
    case VP_MSG_DEVICE_INFO: {
        struct vp_device_info di;
        r = vp_decode_device_info(&m, &di, &err);
        for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
            g_assert_cmpint(di.virtqs[i].kick_fd, ==, -1);
            g_assert_cmpint(di.virtqs[i].call_fd, ==, -1);
        }
        break;
    }
    case VP_MSG_FEATURE_BITS: {
        uint64_t bits;
        r = vp_decode_feature_bits(&m, &bits, &err);
        break;
    }
    default: {
        struct vp_ack ack;
        r = vp_decode_ack(&m, &ack, &err);
        break;
    }
    }
    assert_err(r, want, &err, substr);
    vp_msg_clear(&m); /* closes the fds the message still owns */
}

/* ---- header ---- */

static void test_hdr_codec(void)
{
    struct vp_sock_hdr h = mkhdr(0x0102030405060708ULL), d;
    h.type = VP_MSG_DEVICE_INFO_ACK;
    h.len = 0x1234;
    uint8_t w[VP_SOCK_HDR_SIZE];
    vp_sock_hdr_encode(&h, w);
    static const uint8_t want[16] = { 3, 0, 1, 0, 0x34, 0x12, 0, 0,
                                      8, 7, 6, 5, 4, 3, 2, 1 };
    g_assert_cmpmem(w, 16, want, 16);
    g_assert_cmpmem(w + 16, 16, test_uuid, 16);

    vp_error err = { "" };
    g_assert_cmpint(vp_sock_hdr_decode(w, &d, &err), ==, 0);
    g_assert_cmpuint(d.type, ==, h.type);
    g_assert_cmpuint(d.version, ==, VP_MSG_VERSION);
    g_assert_cmpuint(d.len, ==, 0x1234);
    g_assert_cmpuint(d.seq, ==, h.seq);
    g_assert_cmpmem(d.uuid, 16, test_uuid, 16);

    h.type = VP_MSG_TYPE_COUNT;
    vp_sock_hdr_encode(&h, w);
    assert_err(vp_sock_hdr_decode(w, &d, &err), -EPROTO, &err, "unknown message type 6");
    h.type = VP_MSG_FEATURE_BITS;
    h.version = 2;
    vp_sock_hdr_encode(&h, w);
    assert_err(vp_sock_hdr_decode(w, &d, &err), -EPROTO, &err, "version 2");
    h.version = VP_MSG_VERSION;
    h.len = VP_MAX_PAYLOAD + 1;
    vp_sock_hdr_encode(&h, w);
    assert_err(vp_sock_hdr_decode(w, &d, &err), -EPROTO, &err, "over the limit");
    h.len = VP_MAX_PAYLOAD;
    vp_sock_hdr_encode(&h, w);
    g_assert_cmpint(vp_sock_hdr_decode(w, &d, &err), ==, 0);
}

/* ---- round trips ---- */

static void test_roundtrip_memory_info(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);

    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    mi.op = VP_OP_ADD;
    mi.nregions = 3;
    for (unsigned i = 0; i < 3; i++) {
        mi.regions[i].gpa = 0x100000000ULL * i;
        mi.regions[i].size = 0x10000 << i;
        mi.regions[i].mmap_offset = 0x1000 * i;
        mi.regions[i].fd = vp_test_memfd("rt", 0x1000 * i + (0x10000 << i), TRUE);
    }
    struct vp_sock_hdr h = mkhdr(42);
    h.type = VP_MSG_FEATURE_BITS; /* overwritten by vp_send_memory_info */
    g_assert_cmpint(vp_send_memory_info(sv[0], &h, &mi), ==, 0);

    struct vp_msg m;
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.hdr.type, ==, VP_MSG_MEMORY_INFO);
    g_assert_cmpuint(m.hdr.version, ==, VP_MSG_VERSION);
    g_assert_cmpuint(m.hdr.seq, ==, 42);
    g_assert_cmpmem(m.hdr.uuid, 16, test_uuid, 16);
    g_assert_cmpuint(m.nfds, ==, 3);

    struct vp_memory_info out;
    vp_error err = { "" };
    g_assert_cmpint(vp_decode_memory_info(&m, &out, &err), ==, 0);
    for (unsigned i = 0; i < m.nfds; i++)
        g_assert_cmpint(m.fds[i], ==, -1); /* moved */
    g_assert_cmpuint(out.op, ==, VP_OP_ADD);
    g_assert_cmpuint(out.nregions, ==, 3);
    for (unsigned i = 0; i < 3; i++) {
        g_assert_cmpuint(out.regions[i].gpa, ==, mi.regions[i].gpa);
        g_assert_cmpuint(out.regions[i].size, ==, mi.regions[i].size);
        g_assert_cmpuint(out.regions[i].mmap_offset, ==, mi.regions[i].mmap_offset);
        assert_same_file(out.regions[i].fd, mi.regions[i].fd);
    }
    g_assert_cmpint(vp_validate_memory_info(&out, 0, &err), ==, 0);
    vp_msg_clear(&m);
    vp_memory_info_close_fds(&out);

    /* DEL: no fds on the wire. */
    mi.op = VP_OP_DEL;
    g_assert_cmpint(vp_send_memory_info(sv[0], &h, &mi), ==, 0);
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.nfds, ==, 0);
    g_assert_cmpint(vp_decode_memory_info(&m, &out, &err), ==, 0);
    g_assert_cmpuint(out.op, ==, VP_OP_DEL);
    g_assert_cmpuint(out.nregions, ==, 3);
    for (unsigned i = 0; i < 3; i++) {
        g_assert_cmpuint(out.regions[i].gpa, ==, mi.regions[i].gpa);
        g_assert_cmpint(out.regions[i].fd, ==, -1);
    }
    g_assert_cmpint(vp_validate_memory_info(&out, 0, &err), ==, 0);
    vp_msg_clear(&m);

    /* ADD with a region without an fd cannot be sent. */
    mi.op = VP_OP_ADD;
    int keep = mi.regions[1].fd;
    mi.regions[1].fd = -1;
    g_assert_cmpint(vp_send_memory_info(sv[0], &h, &mi), ==, -EINVAL);
    mi.regions[1].fd = keep;
    mi.nregions = VP_MAX_REGIONS + 1;
    g_assert_cmpint(vp_send_memory_info(sv[0], &h, &mi), ==, -EINVAL);
    mi.nregions = 3;

    vp_memory_info_close_fds(&mi);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_roundtrip_memory_info_max(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    int memfd = vp_test_memfd("max", 64 * 4096, TRUE);

    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    mi.nregions = VP_MAX_REGIONS;
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++) {
        mi.regions[i].gpa = 4096ULL * i;
        mi.regions[i].size = 4096;
        mi.regions[i].mmap_offset = 4096ULL * i;
        mi.regions[i].fd = dup(memfd);
    }
    struct vp_sock_hdr h = mkhdr(1);
    g_assert_cmpint(vp_send_memory_info(sv[0], &h, &mi), ==, 0);
    struct vp_msg m;
    recv_ok(sv[1], &m);
    struct vp_memory_info out;
    vp_error err = { "" };
    g_assert_cmpint(vp_decode_memory_info(&m, &out, &err), ==, 0);
    g_assert_cmpuint(out.nregions, ==, VP_MAX_REGIONS);
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
        assert_same_file(out.regions[i].fd, memfd);
    g_assert_cmpint(vp_validate_memory_info(&out, 0, &err), ==, 0);
    vp_msg_clear(&m);
    vp_memory_info_close_fds(&out);
    vp_memory_info_close_fds(&mi);
    close(memfd);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_roundtrip_device_info(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);

    struct vp_device_info di;
    vp_device_info_init(&di);
    di.op = VP_OP_ADD;
    di.device_type = VP_DEV_NET;
    di.device_id = 0xfeedface12345678ULL;
    di.nvirtqs = 3;
    for (unsigned i = 0; i < 3; i++) {
        struct vp_virtq *q = &di.virtqs[i];
        q->index = i;
        q->num = 256u << i;
        q->desc = 0x100000 * (i + 1);
        q->avail = q->desc + 0x10000;
        q->used = q->desc + 0x20000;
        q->last_avail_idx = (uint16_t)(0xfff0 + i);
        q->kick_fd = eventfd(0, EFD_CLOEXEC);
        /* queue 1 has no call fd: -1 on the wire */
        q->call_fd = i == 1 ? -1 : eventfd(0, EFD_CLOEXEC);
    }
    struct vp_sock_hdr h = mkhdr(0xffffffffffffffffULL);
    g_assert_cmpint(vp_send_device_info(sv[0], &h, &di), ==, 0);

    struct vp_msg m;
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.hdr.type, ==, VP_MSG_DEVICE_INFO);
    g_assert_cmpuint(m.hdr.seq, ==, 0xffffffffffffffffULL);
    g_assert_cmpmem(m.hdr.uuid, 16, test_uuid, 16);
    g_assert_cmpuint(m.nfds, ==, 5);

    struct vp_device_info out;
    vp_error err = { "" };
    g_assert_cmpint(vp_decode_device_info(&m, &out, &err), ==, 0);
    g_assert_cmpuint(out.op, ==, VP_OP_ADD);
    g_assert_cmpuint(out.device_type, ==, VP_DEV_NET);
    g_assert_cmpuint(out.device_id, ==, di.device_id);
    g_assert_cmpuint(out.nvirtqs, ==, 3);
    for (unsigned i = 0; i < 3; i++) {
        const struct vp_virtq *a = &di.virtqs[i], *b = &out.virtqs[i];
        g_assert_cmpuint(b->index, ==, a->index);
        g_assert_cmpuint(b->num, ==, a->num);
        g_assert_cmpuint(b->desc, ==, a->desc);
        g_assert_cmpuint(b->avail, ==, a->avail);
        g_assert_cmpuint(b->used, ==, a->used);
        g_assert_cmpuint(b->last_avail_idx, ==, a->last_avail_idx);
        assert_same_file(b->kick_fd, a->kick_fd);
        if (i == 1)
            g_assert_cmpint(b->call_fd, ==, -1);
        else
            assert_same_file(b->call_fd, a->call_fd);
    }
    g_assert_cmpint(vp_validate_device_info(&out, &err), ==, 0);
    vp_msg_clear(&m);
    vp_device_info_close_fds(&out);

    /* DEL, no virtqueues. */
    struct vp_device_info del;
    vp_device_info_init(&del);
    del.op = VP_OP_DEL;
    del.device_type = VP_DEV_NET;
    del.device_id = di.device_id;
    g_assert_cmpint(vp_send_device_info(sv[0], &h, &del), ==, 0);
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.nfds, ==, 0);
    g_assert_cmpint(vp_decode_device_info(&m, &out, &err), ==, 0);
    g_assert_cmpuint(out.op, ==, VP_OP_DEL);
    g_assert_cmpuint(out.nvirtqs, ==, 0);
    g_assert_cmpuint(out.device_id, ==, di.device_id);
    g_assert_cmpint(vp_validate_device_info(&out, &err), ==, 0);
    vp_msg_clear(&m);

    vp_device_info_close_fds(&di);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

/* 64 virtqueues with kick and call: VP_MAX_FDS fds in one message. */
static void test_roundtrip_device_info_max(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    struct vp_device_info di;
    vp_device_info_init(&di);
    di.device_type = VP_DEV_NET;
    di.nvirtqs = VP_MAX_VIRTQS;
    for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
        struct vp_virtq *q = &di.virtqs[i];
        q->index = i;
        q->num = 1;
        q->desc = 0x1000 + 0x100 * i;
        q->avail = q->desc + 0x20;
        q->used = q->desc + 0x40;
        q->kick_fd = eventfd(0, EFD_CLOEXEC);
        q->call_fd = eventfd(0, EFD_CLOEXEC);
    }
    struct vp_sock_hdr h = mkhdr(3);
    g_assert_cmpint(vp_send_device_info(sv[0], &h, &di), ==, 0);
    struct vp_msg m;
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.nfds, ==, VP_MAX_FDS);
    struct vp_device_info out;
    vp_error err = { "" };
    g_assert_cmpint(vp_decode_device_info(&m, &out, &err), ==, 0);
    for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
        assert_same_file(out.virtqs[i].kick_fd, di.virtqs[i].kick_fd);
        assert_same_file(out.virtqs[i].call_fd, di.virtqs[i].call_fd);
    }
    /* An eventfd write on the sent copy is seen on the received one. */
    uint64_t one = 1, got = 0;
    g_assert_cmpint(write(di.virtqs[63].call_fd, &one, 8), ==, 8);
    g_assert_cmpint(read(out.virtqs[63].call_fd, &got, 8), ==, 8);
    g_assert_cmpuint(got, ==, 1);
    g_assert_cmpint(vp_validate_device_info(&out, &err), ==, 0);
    vp_msg_clear(&m);
    vp_device_info_close_fds(&out);
    vp_device_info_close_fds(&di);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_roundtrip_feature_bits_and_acks(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    vp_error err = { "" };
    struct vp_msg m;

    struct vp_sock_hdr h = mkhdr(5);
    g_assert_cmpint(vp_send_feature_bits(sv[0], &h, VP_NET_FEATURES | (1ULL << 63)), ==, 0);
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.hdr.type, ==, VP_MSG_FEATURE_BITS);
    g_assert_cmpuint(m.hdr.seq, ==, 5);
    uint64_t bits = 0;
    g_assert_cmpint(vp_decode_feature_bits(&m, &bits, &err), ==, 0);
    g_assert_cmpuint(bits, ==, VP_NET_FEATURES | (1ULL << 63));
    vp_msg_clear(&m);

    /* Zero bits: an empty payload (proto3 omits defaults). */
    g_assert_cmpint(vp_send_feature_bits(sv[0], &h, 0), ==, 0);
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.hdr.len, ==, 0);
    g_assert_null(m.payload);
    bits = 1;
    g_assert_cmpint(vp_decode_feature_bits(&m, &bits, &err), ==, 0);
    g_assert_cmpuint(bits, ==, 0);
    vp_msg_clear(&m);

    static const uint16_t types[] = { VP_MSG_MEMORY_INFO_ACK, VP_MSG_DEVICE_INFO_ACK,
                                      VP_MSG_FEATURE_BITS_ACK };
    for (unsigned t = 0; t < G_N_ELEMENTS(types); t++) {
        struct vp_ack ack = { 0 };
        ack.result = t == 1 ? VP_ACK_DEL_DONE : VP_ACK_ADD_FAIL;
        ack.feature_bits = VP_NET_FEATURES;
        snprintf(ack.reason, sizeof(ack.reason), "reason %u: no", t);
        ack.device_type = VP_DEV_NET;
        ack.device_id = 99;
        ack.npositions = t == 1 ? 2 : 0;
        ack.positions[0] = (struct vp_virtq_pos){ 0, 0xffff };
        ack.positions[1] = (struct vp_virtq_pos){ 1, 17 };
        h.seq = 100 + t;
        g_assert_cmpint(vp_send_ack(sv[0], types[t], &h, &ack), ==, 0);
        recv_ok(sv[1], &m);
        g_assert_cmpuint(m.hdr.type, ==, types[t]);
        g_assert_cmpuint(m.hdr.seq, ==, 100 + t);
        g_assert_cmpmem(m.hdr.uuid, 16, test_uuid, 16);
        struct vp_ack out;
        g_assert_cmpint(vp_decode_ack(&m, &out, &err), ==, 0);
        g_assert_cmpuint(out.result, ==, ack.result);
        g_assert_cmpuint(out.feature_bits, ==, VP_NET_FEATURES);
        g_assert_cmpstr(out.reason, ==, ack.reason);
        g_assert_cmpuint(out.device_type, ==, VP_DEV_NET);
        g_assert_cmpuint(out.device_id, ==, 99);
        g_assert_cmpuint(out.npositions, ==, ack.npositions);
        for (unsigned i = 0; i < out.npositions; i++) {
            g_assert_cmpuint(out.positions[i].index, ==, ack.positions[i].index);
            g_assert_cmpuint(out.positions[i].last_avail_idx, ==, ack.positions[i].last_avail_idx);
        }
        vp_msg_clear(&m);
    }
    /* Not an ACK type, or too many positions: refused before sending. */
    struct vp_ack bad = { 0 };
    g_assert_cmpint(vp_send_ack(sv[0], VP_MSG_FEATURE_BITS, &h, &bad), ==, -EINVAL);
    bad.npositions = VP_MAX_VIRTQS + 1;
    g_assert_cmpint(vp_send_ack(sv[0], VP_MSG_DEVICE_INFO_ACK, &h, &bad), ==, -EINVAL);

    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

/* Peer text: truncated to VP_MAX_REASON on a UTF-8 boundary, control chars replaced. */
static void test_ack_reason_sanitised(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    vp_error err = { "" };
    struct vp_msg m;
    struct vp_ack out;

    /* 254 'a', then a 3-byte character straddling byte 255, then more. */
    GString *s = g_string_new(NULL);
    for (unsigned i = 0; i < VP_MAX_REASON - 1; i++)
        g_string_append_c(s, 'a');
    g_string_append(s, "\xe2\x82\xac tail tail tail");
    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, VP_ACK_ADD_FAIL);
    pb_bytes(p, 3, s->str, s->len);
    send_raw(sv[0], VP_MSG_MEMORY_INFO_ACK, VP_MSG_VERSION, p, NULL, 0);
    recv_ok(sv[1], &m);
    g_assert_cmpint(vp_decode_ack(&m, &out, &err), ==, 0);
    g_assert_cmpuint(strlen(out.reason), ==, VP_MAX_REASON - 1);
    g_assert_true(g_utf8_validate(out.reason, -1, NULL));
    vp_msg_clear(&m);

    /* 2000 bytes of reason: cut at VP_MAX_REASON. */
    g_string_truncate(s, 0);
    for (unsigned i = 0; i < 2000; i++)
        g_string_append_c(s, 'b');
    p = g_byte_array_new();
    pb_bytes(p, 3, s->str, s->len);
    send_raw(sv[0], VP_MSG_FEATURE_BITS_ACK, VP_MSG_VERSION, p, NULL, 0);
    recv_ok(sv[1], &m);
    g_assert_cmpint(vp_decode_ack(&m, &out, &err), ==, 0);
    g_assert_cmpuint(strlen(out.reason), ==, VP_MAX_REASON);
    vp_msg_clear(&m);

    /* Control characters (terminal escapes, newlines) are replaced. */
    p = g_byte_array_new();
    pb_bytes(p, 3, "bad\n\x1b[2Jx", 10);
    send_raw(sv[0], VP_MSG_DEVICE_INFO_ACK, VP_MSG_VERSION, p, NULL, 0);
    recv_ok(sv[1], &m);
    g_assert_cmpint(vp_decode_ack(&m, &out, &err), ==, 0);
    g_assert_cmpstr(out.reason, ==, "bad??[2Jx");
    vp_msg_clear(&m);

    g_string_free(s, TRUE);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

/* Two messages back to back: the reader never reads into the next one, so each
 * message gets exactly its own fds. */
static void test_back_to_back(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    int a = eventfd(0, EFD_CLOEXEC), b = eventfd(0, EFD_CLOEXEC), c = eventfd(0, EFD_CLOEXEC);
    int f1[1] = { a }, f2[2] = { b, c };
    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_DEL);
    pb_uint(p, 2, VP_DEV_NET);
    send_raw(sv[0], VP_MSG_DEVICE_INFO, VP_MSG_VERSION, p, f1, 1);
    send_raw(sv[0], VP_MSG_FEATURE_BITS, VP_MSG_VERSION, NULL, f2, 2);
    send_raw(sv[0], VP_MSG_FEATURE_BITS, VP_MSG_VERSION, NULL, NULL, 0);

    struct vp_msg m;
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.hdr.type, ==, VP_MSG_DEVICE_INFO);
    g_assert_cmpuint(m.nfds, ==, 1);
    assert_same_file(m.fds[0], a);
    vp_msg_clear(&m);
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.hdr.type, ==, VP_MSG_FEATURE_BITS);
    g_assert_cmpuint(m.nfds, ==, 2);
    assert_same_file(m.fds[0], b);
    assert_same_file(m.fds[1], c);
    vp_msg_clear(&m);
    recv_ok(sv[1], &m);
    g_assert_cmpuint(m.nfds, ==, 0);
    vp_msg_clear(&m);

    close(a);
    close(b);
    close(c);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

/* ---- partial delivery ---- */

/* The header arrives one byte at a time (fd on the first byte), then the payload in
 * two halves: the non-blocking reader returns 0 until the last byte, then 1. */
static void test_partial_delivery(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    set_nonblock(sv[1]);
    int memfd = vp_test_memfd("partial", 4096, TRUE);

    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_sub(p, 2, pb_region(0x1000, 4096, 0, 0));
    struct vp_sock_hdr h = mkhdr(77);
    h.type = VP_MSG_MEMORY_INFO;
    h.len = p->len;
    uint8_t wire[VP_SOCK_HDR_SIZE + 256];
    g_assert_cmpuint(p->len, <, 256);
    vp_sock_hdr_encode(&h, wire);
    memcpy(wire + VP_SOCK_HDR_SIZE, p->data, p->len);
    size_t total = VP_SOCK_HDR_SIZE + p->len;
    g_byte_array_unref(p);

    struct vp_msg_reader r;
    vp_reader_init(&r);
    struct vp_msg m;
    vp_error err = { "" };
    g_assert_cmpint(vp_reader_read(&r, sv[1], &m, &err), ==, 0); /* nothing yet */

    size_t sent = 0;
    while (sent < VP_SOCK_HDR_SIZE) {
        send_bytes_fds(sv[0], wire + sent, 1, sent == 0 ? &memfd : NULL, sent == 0 ? 1 : 0);
        sent++;
        g_assert_cmpint(vp_reader_read(&r, sv[1], &m, &err), ==, 0);
        g_assert_cmpuint(r.got, ==, sent);
    }
    g_assert_cmpuint(r.msg.nfds, ==, 1);
    size_t half = (total - sent) / 2;
    send_bytes_fds(sv[0], wire + sent, half, NULL, 0);
    sent += half;
    g_assert_cmpint(vp_reader_read(&r, sv[1], &m, &err), ==, 0);
    send_bytes_fds(sv[0], wire + sent, total - sent, NULL, 0);
    g_assert_cmpint(vp_reader_read(&r, sv[1], &m, &err), ==, 1);
    g_assert_cmpuint(r.got, ==, 0); /* ready for the next message */
    g_assert_cmpuint(r.msg.nfds, ==, 0);

    g_assert_cmpuint(m.hdr.seq, ==, 77);
    g_assert_cmpuint(m.nfds, ==, 1);
    struct vp_memory_info mi;
    g_assert_cmpint(vp_decode_memory_info(&m, &mi, &err), ==, 0);
    assert_same_file(mi.regions[0].fd, memfd);
    vp_msg_clear(&m);
    vp_memory_info_close_fds(&mi);

    /* Nothing more: 0 again, then EOF at a message boundary. */
    g_assert_cmpint(vp_reader_read(&r, sv[1], &m, &err), ==, 0);
    close(sv[0]);
    assert_err(vp_reader_read(&r, sv[1], &m, &err), -ECONNRESET, &err,
               "peer closed the connection");
    g_assert_null(strstr(err.msg, "mid-message"));

    vp_reader_reset(&r);
    close(memfd);
    close(sv[1]);
    vp_assert_fds(before);
}

struct writer {
    int sock;
    uint8_t *buf;
    size_t len;
    int fd;
    GMutex lock;
    GCond cond;
    int stage;      /* main -> writer: 1 = send the rest */
};

/* Sends the first half of a message (fd attached), waits for the go, sends the rest. */
static gpointer writer_thread(gpointer data)
{
    struct writer *w = data;
    size_t half = w->len / 2;
    send_bytes_fds(w->sock, w->buf, half, &w->fd, 1);
    g_mutex_lock(&w->lock);
    gint64 end = g_get_monotonic_time() + TIMEOUT_MS * 1000;
    while (w->stage < 1) {
        if (!g_cond_wait_until(&w->cond, &w->lock, end))
            break;
    }
    g_mutex_unlock(&w->lock);
    send_bytes_fds(w->sock, w->buf + half, w->len - half, NULL, 0);
    return NULL;
}

/* A peer that sends half a message does not stall vp_msg_recv past its timeout; and
 * a blocking vp_reader_read waits for the rest. */
static void test_half_message_thread(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    int efd = eventfd(0, EFD_CLOEXEC);
    vp_error err = { "" };

    /* 1: half a message, then nothing: timeout, fd closed. */
    uint8_t wire[VP_SOCK_HDR_SIZE + 16];
    struct vp_sock_hdr h = mkhdr(9);
    h.type = VP_MSG_FEATURE_BITS;
    h.len = 16;
    vp_sock_hdr_encode(&h, wire);
    memset(wire + VP_SOCK_HDR_SIZE, 0, 16);
    send_bytes_fds(sv[0], wire, 20, &efd, 1);
    int during = vp_count_open_fds();
    struct vp_msg m;
    gint64 t0 = g_get_monotonic_time();
    assert_err(vp_msg_recv(sv[1], &m, 100, &err), -ETIMEDOUT, &err, "within 100 ms");
    g_assert_cmpint(g_get_monotonic_time() - t0, >=, 90 * 1000);
    vp_assert_fds(during); /* the received copy of efd was closed */
    close(sv[0]);
    close(sv[1]);

    /* 2: a blocking reader on a blocking socket waits for the second half. */
    vp_test_socketpair(sv);
    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, 0xabcdef);
    h.len = p->len;
    g_autofree uint8_t *buf = g_malloc(VP_SOCK_HDR_SIZE + p->len);
    vp_sock_hdr_encode(&h, buf);
    memcpy(buf + VP_SOCK_HDR_SIZE, p->data, p->len);
    struct writer w = { .sock = sv[0], .buf = buf, .len = VP_SOCK_HDR_SIZE + p->len,
                        .fd = efd };
    g_byte_array_unref(p);
    g_mutex_init(&w.lock);
    g_cond_init(&w.cond);
    GThread *t = g_thread_new("writer", writer_thread, &w);

    /* Wait until the first half is there, then let the writer finish. */
    struct pollfd pfd = { .fd = sv[1], .events = POLLIN };
    g_assert_cmpint(poll(&pfd, 1, TIMEOUT_MS), ==, 1);
    g_mutex_lock(&w.lock);
    w.stage = 1;
    g_cond_signal(&w.cond);
    g_mutex_unlock(&w.lock);

    struct vp_msg_reader r;
    vp_reader_init(&r);
    g_assert_cmpint(vp_reader_read(&r, sv[1], &m, &err), ==, 1);
    g_thread_join(t);
    g_assert_cmpuint(m.nfds, ==, 1);
    assert_same_file(m.fds[0], efd);
    vp_msg_clear(&m);
    g_mutex_clear(&w.lock);
    g_cond_clear(&w.cond);

    close(efd);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

struct big_sender {
    int sock;
    const uint8_t *payload;
    size_t len;
    int fd;
    int ret;
};

static gpointer big_sender_thread(gpointer data)
{
    struct big_sender *s = data;
    struct vp_sock_hdr h = mkhdr(11);
    h.type = VP_MSG_MEMORY_INFO_ACK;
    s->ret = vp_msg_send(s->sock, &h, s->payload, s->len, &s->fd, 1);
    return NULL;
}

/* A 64 KiB payload through a small, non-blocking send buffer: vp_msg_send loops over
 * partial writes (polling for POLLOUT) and the fd arrives exactly once. */
static void test_partial_writes(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    int small = 4096;
    g_assert_cmpint(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), ==, 0);
    set_nonblock(sv[0]);
    int efd = eventfd(0, EFD_CLOEXEC);

    g_autofree uint8_t *payload = g_malloc(VP_MAX_PAYLOAD);
    for (size_t i = 0; i < VP_MAX_PAYLOAD; i++)
        payload[i] = (uint8_t)(i * 7 + 3);
    struct big_sender s = { .sock = sv[0], .payload = payload, .len = VP_MAX_PAYLOAD,
                            .fd = efd, .ret = 1 };
    GThread *t = g_thread_new("sender", big_sender_thread, &s);

    struct vp_msg m;
    recv_ok(sv[1], &m);
    g_thread_join(t);
    g_assert_cmpint(s.ret, ==, 0);
    g_assert_cmpuint(m.hdr.type, ==, VP_MSG_MEMORY_INFO_ACK);
    g_assert_cmpuint(m.hdr.len, ==, VP_MAX_PAYLOAD);
    g_assert_cmpmem(m.payload, VP_MAX_PAYLOAD, payload, VP_MAX_PAYLOAD);
    g_assert_cmpuint(m.nfds, ==, 1);
    assert_same_file(m.fds[0], efd);
    vp_msg_clear(&m);

    close(efd);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_send_errors(void)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    struct vp_sock_hdr h = mkhdr(1);
    h.type = VP_MSG_FEATURE_BITS;
    static uint8_t big[VP_MAX_PAYLOAD + 1];
    int fds[VP_MAX_FDS + 1];
    for (unsigned i = 0; i <= VP_MAX_FDS; i++)
        fds[i] = sv[0];
    g_assert_cmpint(vp_msg_send(sv[0], &h, big, sizeof(big), NULL, 0), ==, -EINVAL);
    g_assert_cmpint(vp_msg_send(sv[0], &h, NULL, 0, fds, VP_MAX_FDS + 1), ==, -EINVAL);
    /* Peer gone: -EPIPE, and no SIGPIPE kills us (MSG_NOSIGNAL). */
    close(sv[1]);
    g_assert_cmpint(vp_msg_send(sv[0], &h, big, 10, NULL, 0), ==, -EPIPE);
    g_assert_cmpint(vp_send_feature_bits(sv[0], &h, 1), ==, -EPIPE);
    close(sv[0]);
    vp_assert_fds(before);
}

/* ---- truncated and malformed frames ---- */

static int make_fds(int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        fds[i] = eventfd(0, EFD_CLOEXEC);
        g_assert_cmpint(fds[i], >=, 0);
    }
    return 0;
}

/* Send @len bytes of @wire with @nfds fresh fds on the first byte, close the sender,
 * and expect vp_msg_recv to fail with @want / @substr and no fd leaked. */
static void expect_frame_error(const uint8_t *wire, size_t len, unsigned nfds, int want,
                               const char *substr)
{
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    int fds[VP_MAX_FDS + 8];
    g_assert_cmpuint(nfds, <=, G_N_ELEMENTS(fds));
    make_fds(fds, nfds);
    send_bytes_fds(sv[0], wire, len, fds, nfds);
    vp_close_fds(fds, nfds);
    close(sv[0]);

    struct vp_msg m;
    vp_error err = { "" };
    assert_err(vp_msg_recv(sv[1], &m, TIMEOUT_MS, &err), want, &err, substr);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_truncated(void)
{
    uint8_t wire[VP_SOCK_HDR_SIZE + 100];
    struct vp_sock_hdr h = mkhdr(1);
    h.type = VP_MSG_MEMORY_INFO;
    h.len = 100;
    vp_sock_hdr_encode(&h, wire);
    memset(wire + VP_SOCK_HDR_SIZE, 0, 100);

    /* EOF before anything. */
    expect_frame_error(wire, 0, 0, -ECONNRESET, "peer closed the connection");
    /* EOF mid-header, with fds attached. */
    expect_frame_error(wire, 1, 3, -ECONNRESET, "mid-message (1 of 32 bytes, in the header)");
    expect_frame_error(wire, 31, 2, -ECONNRESET, "in the header");
    /* EOF mid-payload, with fds attached. */
    expect_frame_error(wire, VP_SOCK_HDR_SIZE, 4, -ECONNRESET, "mid-message (32 of 132 bytes)");
    expect_frame_error(wire, VP_SOCK_HDR_SIZE + 99, 1, -ECONNRESET, "131 of 132");

    /* Same through the incremental reader: 0, then the error on EOF. */
    int before = vp_count_open_fds();
    int sv[2], fds[2];
    vp_test_socketpair(sv);
    set_nonblock(sv[1]);
    make_fds(fds, 2);
    send_bytes_fds(sv[0], wire, 40, fds, 2);
    vp_close_fds(fds, 2);
    struct vp_msg_reader r;
    vp_reader_init(&r);
    struct vp_msg m;
    vp_error err = { "" };
    g_assert_cmpint(vp_reader_read(&r, sv[1], &m, &err), ==, 0);
    g_assert_cmpuint(r.msg.nfds, ==, 2);
    close(sv[0]);
    assert_err(vp_reader_read(&r, sv[1], &m, &err), -ECONNRESET, &err, "40 of 132");
    g_assert_cmpuint(r.msg.nfds, ==, 0);
    g_assert_cmpuint(r.got, ==, 0);
    close(sv[1]);
    vp_assert_fds(before);
}

static void test_bad_header(void)
{
    uint8_t wire[VP_SOCK_HDR_SIZE];
    struct vp_sock_hdr h = mkhdr(1);

    h.type = VP_MSG_FEATURE_BITS;
    h.len = VP_MAX_PAYLOAD + 1;
    vp_sock_hdr_encode(&h, wire);
    expect_frame_error(wire, sizeof(wire), 2, -EPROTO, "over the limit");
    h.len = 0xffffffffu;
    vp_sock_hdr_encode(&h, wire);
    expect_frame_error(wire, sizeof(wire), 1, -EPROTO, "msg_len 4294967295");

    h.len = 0;
    h.type = 6;
    vp_sock_hdr_encode(&h, wire);
    expect_frame_error(wire, sizeof(wire), 1, -EPROTO, "unknown message type 6");
    h.type = 0xffff;
    vp_sock_hdr_encode(&h, wire);
    expect_frame_error(wire, sizeof(wire), 0, -EPROTO, "unknown message type 65535");

    h.type = VP_MSG_MEMORY_INFO;
    h.version = 0;
    vp_sock_hdr_encode(&h, wire);
    expect_frame_error(wire, sizeof(wire), 2, -EPROTO, "version 0");
    h.version = 2;
    vp_sock_hdr_encode(&h, wire);
    expect_frame_error(wire, sizeof(wire), 0, -EPROTO, "unsupported message version 2");

    /* Also through vp_msg_send (which does not police type or version). */
    int before = vp_count_open_fds();
    int sv[2], fd = eventfd(0, EFD_CLOEXEC);
    vp_test_socketpair(sv);
    send_raw(sv[0], 9, VP_MSG_VERSION, NULL, &fd, 1);
    struct vp_msg m;
    vp_error err = { "" };
    assert_err(vp_msg_recv(sv[1], &m, TIMEOUT_MS, &err), -EPROTO, &err, "unknown message type 9");
    close(fd);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

/* More than VP_MAX_FDS fds on one message: -EMSGSIZE and all of them closed. */
static void test_too_many_fds(void)
{
    uint8_t wire[VP_SOCK_HDR_SIZE];
    struct vp_sock_hdr h = mkhdr(1);
    h.type = VP_MSG_FEATURE_BITS;
    vp_sock_hdr_encode(&h, wire);

    /* In one recvmsg: more than the receive buffer holds (MSG_CTRUNC). */
    expect_frame_error(wire, sizeof(wire), VP_MAX_FDS + 1, -EMSGSIZE, "MSG_CTRUNC");
    expect_frame_error(wire, sizeof(wire), VP_MAX_FDS + 8, -EMSGSIZE, "more than 128 fds");

    /* Exactly VP_MAX_FDS on one message is fine (then rejected by the decoder). */
    int before = vp_count_open_fds();
    int sv[2], fds[VP_MAX_FDS];
    vp_test_socketpair(sv);
    make_fds(fds, VP_MAX_FDS);
    send_bytes_fds(sv[0], wire, sizeof(wire), fds, VP_MAX_FDS);
    vp_close_fds(fds, VP_MAX_FDS);
    recv_decode_fails(sv[1], -EPROTO, "FEATURE_BITS carries 128 fds, expected none");
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);

    /* Spread over two recvmsg calls: 100 on the first byte, 100 on the rest. */
    before = vp_count_open_fds();
    vp_test_socketpair(sv);
    int many[100];
    make_fds(many, 100);
    send_bytes_fds(sv[0], wire, 1, many, 100);
    send_bytes_fds(sv[0], wire + 1, sizeof(wire) - 1, many, 100);
    vp_close_fds(many, 100);
    struct vp_msg m;
    vp_error err = { "" };
    assert_err(vp_msg_recv(sv[1], &m, TIMEOUT_MS, &err), -EMSGSIZE, &err,
               "200 fds attached to one message, at most 128");
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

/* ---- payload decoding ---- */

/* Send @p as @type with @nfds fresh fds and expect its decoder to fail. */
static void expect_decode_error(uint16_t type, GByteArray *p, unsigned nfds, int want,
                                const char *substr)
{
    int before = vp_count_open_fds();
    int sv[2], fds[VP_MAX_FDS];
    vp_test_socketpair(sv);
    make_fds(fds, nfds);
    send_raw(sv[0], type, VP_MSG_VERSION, p, fds, nfds);
    vp_close_fds(fds, nfds);
    recv_decode_fails(sv[1], want, substr);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

static GByteArray *mem_add(unsigned nregions)
{
    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    for (unsigned i = 0; i < nregions; i++)
        pb_sub(p, 2, pb_region(0x100000ULL * i, 0x1000, 0, i));
    return p;
}

static void test_decode_memory_info_errors(void)
{
    /* fd count does not match the payload. */
    expect_decode_error(VP_MSG_MEMORY_INFO, mem_add(2), 3, -EPROTO,
                        "3 fds received, payload names 2");
    expect_decode_error(VP_MSG_MEMORY_INFO, mem_add(2), 1, -EPROTO,
                        "region 1: fd_index 1 out of range (1 fds received)");
    expect_decode_error(VP_MSG_MEMORY_INFO, mem_add(1), 0, -EPROTO,
                        "region 0: fd_index 0 out of range (0 fds received)");

    /* fd_index out of range, used twice. */
    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_sub(p, 2, pb_region(0, 0x1000, 0, 0));
    pb_sub(p, 2, pb_region(0x1000, 0x1000, 0, 7));
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 2, -EPROTO,
                        "region 1: fd_index 7 out of range");
    p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_sub(p, 2, pb_region(0, 0x1000, 0, 1));
    pb_sub(p, 2, pb_region(0x1000, 0x1000, 0, 1));
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 2, -EPROTO, "region 1: fd_index 1 used twice");
    p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_sub(p, 2, pb_region(0, 0x1000, 0, 0xffffffffu));
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 1, -EPROTO, "fd_index 4294967295 out of range");

    /* DEL carries no fds. */
    p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_DEL);
    pb_sub(p, 2, pb_region(0, 0x1000, 0, 0));
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 1, -EPROTO,
                        "MEMORY_INFO(DEL): 1 fds received, payload names 0");

    /* 65 regions: rejected before protobuf-c unpacks them (and with fds). */
    expect_decode_error(VP_MSG_MEMORY_INFO, mem_add(VP_MAX_REGIONS + 1), VP_MAX_REGIONS + 1,
                        -EPROTO, "65 regions, at most 64");
    p = g_byte_array_new();
    for (unsigned i = 0; i < 5000; i++)
        pb_sub(p, 2, g_byte_array_new());
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 0, -EPROTO, "5000 regions, at most 64");

    /* Unknown op. */
    p = mem_add(1);
    pb_uint(p, 1, 2); /* last value wins in protobuf */
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 1, -EPROTO, "unknown op 2");

    /* Garbage. */
    p = g_byte_array_new();
    g_byte_array_append(p, (const guint8 *)"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12);
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 1, -EPROTO, "not valid protobuf");
    p = mem_add(1);
    g_byte_array_set_size(p, p->len - 1); /* truncated sub-message */
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 1, -EPROTO, "not valid protobuf");
    p = g_byte_array_new();
    pb_varint(p, (2 << 3) | 2);
    pb_varint(p, 3);
    g_byte_array_append(p, (const guint8 *)"\x08\xff\xff", 3); /* bad inner varint */
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 0, -EPROTO, "not valid protobuf");
    p = g_byte_array_new();
    pb_uint(p, 2, 5); /* field 2 as a varint: wrong wire type */
    expect_decode_error(VP_MSG_MEMORY_INFO, p, 0, -EPROTO, "not valid protobuf");

}

static GByteArray *dev_add(unsigned nvirtqs)
{
    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_uint(p, 2, VP_DEV_NET);
    pb_uint(p, 3, 7);
    for (unsigned i = 0; i < nvirtqs; i++)
        pb_sub(p, 4, pb_virtq(i, 256, 0, (int32_t)(2 * i), (int32_t)(2 * i + 1)));
    return p;
}

static void test_decode_device_info_errors(void)
{
    expect_decode_error(VP_MSG_DEVICE_INFO, dev_add(2), 5, -EPROTO,
                        "DEVICE_INFO: 5 fds received, payload names 4");
    expect_decode_error(VP_MSG_DEVICE_INFO, dev_add(2), 3, -EPROTO,
                        "virtqueue 1 call fd: fd_index 3 out of range (3 fds received)");
    expect_decode_error(VP_MSG_DEVICE_INFO, dev_add(VP_MAX_VIRTQS + 1), 0, -EPROTO,
                        "65 virtqueues, at most 64");

    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_uint(p, 2, VP_DEV_NET);
    pb_sub(p, 4, pb_virtq(0, 256, 0, 0, 1));
    pb_sub(p, 4, pb_virtq(1, 256, 0, 1, -1));
    expect_decode_error(VP_MSG_DEVICE_INFO, p, 2, -EPROTO,
                        "virtqueue 1 kick fd: fd_index 1 used twice");
    p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_sub(p, 4, pb_virtq(0, 256, 0, 0, 0));
    expect_decode_error(VP_MSG_DEVICE_INFO, p, 1, -EPROTO,
                        "virtqueue 0 call fd: fd_index 0 used twice");
    p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_sub(p, 4, pb_virtq(0, 256, 0, -2, -1));
    expect_decode_error(VP_MSG_DEVICE_INFO, p, 1, -EPROTO,
                        "virtqueue 0 kick fd: fd_index -2 out of range");
    p = g_byte_array_new();
    pb_uint(p, 1, VP_OP_ADD);
    pb_sub(p, 4, pb_virtq(0, 256, 0x10000, -1, -1));
    expect_decode_error(VP_MSG_DEVICE_INFO, p, 0, -EPROTO,
                        "virtqueue 0: last_avail_idx 65536 over 16 bits");
    p = dev_add(1);
    pb_uint(p, 1, 5);
    expect_decode_error(VP_MSG_DEVICE_INFO, p, 2, -EPROTO, "unknown op 5");
    p = g_byte_array_new();
    g_byte_array_append(p, (const guint8 *)"\x22\x10\x08", 3);
    expect_decode_error(VP_MSG_DEVICE_INFO, p, 2, -EPROTO, "not valid protobuf");
}

static void test_decode_small_errors(void)
{
    /* FEATURE_BITS and ACKs carry no fds. */
    GByteArray *p = g_byte_array_new();
    pb_uint(p, 1, 3);
    expect_decode_error(VP_MSG_FEATURE_BITS, p, 1, -EPROTO,
                        "FEATURE_BITS carries 1 fds, expected none");
    expect_decode_error(VP_MSG_DEVICE_INFO_ACK, NULL, 2, -EPROTO,
                        "DEVICE_INFO_ACK carries 2 fds, expected none");
    p = g_byte_array_new();
    g_byte_array_append(p, (const guint8 *)"\x0f", 1);
    expect_decode_error(VP_MSG_FEATURE_BITS, p, 0, -EPROTO, "not valid protobuf");
    p = g_byte_array_new();
    g_byte_array_append(p, (const guint8 *)"\x1a\x05" "ab", 4);
    expect_decode_error(VP_MSG_MEMORY_INFO_ACK, p, 0, -EPROTO, "not valid protobuf");

    /* ACK contents. */
    p = g_byte_array_new();
    pb_uint(p, 1, 4);
    expect_decode_error(VP_MSG_MEMORY_INFO_ACK, p, 0, -EPROTO, "unknown result 4");
    p = g_byte_array_new();
    for (unsigned i = 0; i < VP_MAX_VIRTQS + 1; i++)
        pb_sub(p, 6, g_byte_array_new());
    expect_decode_error(VP_MSG_DEVICE_INFO_ACK, p, 0, -EPROTO,
                        "65 virtqueue positions, at most 64");
    p = g_byte_array_new();
    GByteArray *pos = g_byte_array_new();
    pb_uint(pos, 1, 1);
    pb_uint(pos, 2, 0x10000);
    pb_sub(p, 6, pos);
    expect_decode_error(VP_MSG_DEVICE_INFO_ACK, p, 0, -EPROTO,
                        "position 0: last_avail_idx 65536 over 16 bits");

    /* A decoder applied to the wrong type is the caller's bug: -EINVAL. */
    int before = vp_count_open_fds();
    int sv[2];
    vp_test_socketpair(sv);
    send_raw(sv[0], VP_MSG_FEATURE_BITS, VP_MSG_VERSION, NULL, NULL, 0);
    struct vp_msg m;
    recv_ok(sv[1], &m);
    vp_error err = { "" };
    struct vp_memory_info mi;
    struct vp_device_info di;
    struct vp_ack ack;
    assert_err(vp_decode_memory_info(&m, &mi, &err), -EINVAL, &err,
               "expected MEMORY_INFO, got FEATURE_BITS");
    assert_err(vp_decode_device_info(&m, &di, &err), -EINVAL, &err, "expected DEVICE_INFO");
    assert_err(vp_decode_ack(&m, &ack, &err), -EINVAL, &err, "expected an ACK");
    vp_msg_clear(&m);
    send_raw(sv[0], VP_MSG_MEMORY_INFO_ACK, VP_MSG_VERSION, NULL, NULL, 0);
    recv_ok(sv[1], &m);
    uint64_t bits;
    assert_err(vp_decode_feature_bits(&m, &bits, &err), -EINVAL, &err,
               "expected FEATURE_BITS, got MEMORY_INFO_ACK");
    vp_msg_clear(&m);
    close(sv[0]);
    close(sv[1]);
    vp_assert_fds(before);
}

/* vp_msg_clear / *_close_fds / reader_reset close what they own exactly once. */
static void test_ownership_helpers(void)
{
    int before = vp_count_open_fds();
    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    mi.regions[0].fd = eventfd(0, EFD_CLOEXEC);
    mi.regions[63].fd = eventfd(0, EFD_CLOEXEC);
    vp_memory_info_close_fds(&mi);
    g_assert_cmpint(mi.regions[0].fd, ==, -1);
    g_assert_cmpint(mi.regions[63].fd, ==, -1);
    vp_memory_info_close_fds(&mi); /* idempotent */

    struct vp_device_info di;
    vp_device_info_init(&di);
    di.virtqs[5].kick_fd = eventfd(0, EFD_CLOEXEC);
    di.virtqs[63].call_fd = eventfd(0, EFD_CLOEXEC);
    vp_device_info_close_fds(&di);
    g_assert_cmpint(di.virtqs[5].kick_fd, ==, -1);
    g_assert_cmpint(di.virtqs[63].call_fd, ==, -1);

    struct vp_msg_reader r;
    vp_reader_init(&r);
    r.msg.fds[0] = eventfd(0, EFD_CLOEXEC);
    r.msg.nfds = 1;
    r.msg.payload = g_malloc(10);
    vp_reader_reset(&r);
    g_assert_cmpint(r.msg.fds[0], ==, -1);
    g_assert_null(r.msg.payload);
    vp_reader_reset(&r);
    vp_assert_fds(before);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    /* A test must fail, not die, if MSG_NOSIGNAL were missing. */
    signal(SIGPIPE, SIG_DFL);
    g_test_add_func("/msg/hdr/codec", test_hdr_codec);
    g_test_add_func("/msg/roundtrip/memory-info", test_roundtrip_memory_info);
    g_test_add_func("/msg/roundtrip/memory-info-64", test_roundtrip_memory_info_max);
    g_test_add_func("/msg/roundtrip/device-info", test_roundtrip_device_info);
    g_test_add_func("/msg/roundtrip/device-info-64", test_roundtrip_device_info_max);
    g_test_add_func("/msg/roundtrip/feature-bits-acks", test_roundtrip_feature_bits_and_acks);
    g_test_add_func("/msg/roundtrip/ack-reason", test_ack_reason_sanitised);
    g_test_add_func("/msg/roundtrip/back-to-back", test_back_to_back);
    g_test_add_func("/msg/partial/byte-by-byte", test_partial_delivery);
    g_test_add_func("/msg/partial/half-message", test_half_message_thread);
    g_test_add_func("/msg/partial/writes", test_partial_writes);
    g_test_add_func("/msg/send/errors", test_send_errors);
    g_test_add_func("/msg/bad/truncated", test_truncated);
    g_test_add_func("/msg/bad/header", test_bad_header);
    g_test_add_func("/msg/bad/too-many-fds", test_too_many_fds);
    g_test_add_func("/msg/bad/memory-info", test_decode_memory_info_errors);
    g_test_add_func("/msg/bad/device-info", test_decode_device_info_errors);
    g_test_add_func("/msg/bad/feature-bits-acks", test_decode_small_errors);
    g_test_add_func("/msg/ownership", test_ownership_helpers);
    return g_test_run();
}
