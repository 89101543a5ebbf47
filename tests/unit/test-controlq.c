/*
 * test-controlq.c - controlq messages (protocol/vp_controlq.c): wire layout byte by
 * byte, round trip of every type at its maximum counts, every decode error (with
 * hand-written hostile bytes), encode errors, vp_cq_make_ack, truncations and
 * random mutations. Decoding always runs on an exactly sized heap copy so that the
 * sanitizer build catches any read past the end.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "testutil.h"
#include "vp_controlq.h"

/* Decode from an exactly sized private copy (ASan sees any overread). */
static int decode_exact(const void *buf, size_t len, struct vp_cq_msg *m, vp_error *err)
{
    void *copy = g_malloc(len ? len : 1);
    memcpy(copy, buf, len);
    int r = vp_cq_decode(copy, len, m, err);
    g_free(copy);
    return r;
}

static struct vp_cq_msg *msg_new(void) { return g_new0(struct vp_cq_msg, 1); }

/* --------------------------------- layout --------------------------------- */

static void test_layout_feature_bits(void)
{
    struct vp_cq_msg *m = msg_new();
    m->type = VP_MSG_FEATURE_BITS;
    m->seq = 0x0102030405060708ULL;
    m->device_type = 0;
    m->device_id = 0;
    m->u.features = 0x1122334455667788ULL;
    unsigned char buf[64];
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, 36);
    static const unsigned char want[36] = {
        4, 0, 1, 0, 8, 0, 0, 0,                     /* type, version, msg_len */
        8, 7, 6, 5, 4, 3, 2, 1,                     /* seq */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,         /* device_type, device_id */
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
    };
    g_assert_cmpmem(buf, 36, want, 36);
    g_free(m);
}

static void test_layout_device_info(void)
{
    struct vp_cq_msg *m = msg_new();
    m->type = VP_MSG_DEVICE_INFO;
    m->seq = 9;
    m->device_type = VP_DEV_NET;
    m->device_id = 0xaabbccdd00112233ULL;
    m->u.dev.op = VP_OP_DEL;
    m->u.dev.nvirtqs = 1;
    m->u.dev.virtqs[0] = (struct vp_cq_virtq){
        .index = 0x01020304, .num = 256, .last_avail_idx = 0xbeef, .kick_vector = VP_NO_VECTOR,
        .call_vector = 7, .desc = 0x1000, .avail = 0x2000, .used = 0x3000,
    };
    unsigned char buf[VP_CQ_MAX_MSG];
    int n = vp_cq_encode(m, buf, sizeof(buf));
    g_assert_cmpint(n, ==, VP_CQ_HDR_SIZE + 22 + 40);
    const unsigned char *p = buf;
    g_assert_cmpuint(vp_get_le16(p + 0), ==, VP_MSG_DEVICE_INFO);
    g_assert_cmpuint(vp_get_le16(p + 2), ==, VP_MSG_VERSION);
    g_assert_cmpuint(vp_get_le32(p + 4), ==, 62);
    g_assert_cmpuint(vp_get_le64(p + 8), ==, 9);
    g_assert_cmpuint(vp_get_le32(p + 16), ==, VP_DEV_NET);
    g_assert_cmpuint(vp_get_le64(p + 20), ==, 0xaabbccdd00112233ULL);
    p += 28;
    g_assert_cmpuint(vp_get_le16(p + 0), ==, VP_OP_DEL);
    g_assert_cmpuint(vp_get_le32(p + 2), ==, 1);
    g_assert_cmpuint(vp_get_le32(p + 6), ==, VP_DEV_NET);
    g_assert_cmpuint(vp_get_le64(p + 10), ==, 0xaabbccdd00112233ULL);
    g_assert_cmpuint(vp_get_le32(p + 18), ==, 0);       /* rsvd */
    p += 22;
    g_assert_cmpuint(vp_get_le32(p + 0), ==, 0x01020304);
    g_assert_cmpuint(vp_get_le32(p + 4), ==, 256);
    g_assert_cmpuint(vp_get_le16(p + 8), ==, 0xbeef);
    g_assert_cmpuint(vp_get_le16(p + 10), ==, 0xffff);
    g_assert_cmpuint(vp_get_le16(p + 12), ==, 7);
    g_assert_cmpuint(vp_get_le16(p + 14), ==, 0);
    g_assert_cmpuint(vp_get_le64(p + 16), ==, 0x1000);
    g_assert_cmpuint(vp_get_le64(p + 24), ==, 0x2000);
    g_assert_cmpuint(vp_get_le64(p + 32), ==, 0x3000);
    g_free(m);
}

static void test_layout_memory_and_ack(void)
{
    struct vp_cq_msg *m = msg_new();
    m->type = VP_MSG_MEMORY_INFO;
    m->u.mem.op = VP_OP_ADD;
    m->u.mem.nregions = 2;
    m->u.mem.regions[1] = (struct vp_cq_region){ 0x100000000ULL, 0x40000000, 0x80000000ULL };
    unsigned char buf[VP_CQ_MAX_MSG];
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, 28 + 6 + 48);
    g_assert_cmpuint(vp_get_le32(buf + 4), ==, 54);
    g_assert_cmpuint(vp_get_le16(buf + 28), ==, VP_OP_ADD);
    g_assert_cmpuint(vp_get_le32(buf + 30), ==, 2);
    g_assert_cmpuint(vp_get_le64(buf + 34 + 24), ==, 0x100000000ULL);
    g_assert_cmpuint(vp_get_le64(buf + 34 + 32), ==, 0x40000000);
    g_assert_cmpuint(vp_get_le64(buf + 34 + 40), ==, 0x80000000ULL);

    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_DEVICE_INFO_ACK;
    m->seq = 77;
    m->u.ack.result = VP_ACK_DEL_DONE;
    m->u.ack.features = 0x55;
    m->u.ack.npos = 1;
    m->u.ack.pos[0].index = 3;
    m->u.ack.pos[0].last_avail_idx = 0x1234;
    strcpy(m->u.ack.reason, "why");
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, 28 + 24 + 8 + 3);
    g_assert_cmpuint(vp_get_le32(buf + 4), ==, 35);
    g_assert_cmpuint(vp_get_le64(buf + 28), ==, VP_ACK_DEL_DONE);
    g_assert_cmpuint(vp_get_le64(buf + 36), ==, 0x55);
    g_assert_cmpuint(vp_get_le32(buf + 44), ==, 1);
    g_assert_cmpuint(vp_get_le32(buf + 48), ==, 3);
    g_assert_cmpuint(vp_get_le32(buf + 52), ==, 3);
    g_assert_cmpuint(vp_get_le16(buf + 56), ==, 0x1234);
    g_assert_cmpmem(buf + 60, 3, "why", 3);
    g_free(m);
}

/* ------------------------------- round trips ------------------------------- */

static void fill_max(struct vp_cq_msg *m, uint16_t type)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->version = VP_MSG_VERSION;
    m->seq = 0xfedcba9876543210ULL + type;
    switch (type) {
    case VP_MSG_MEMORY_INFO:
        m->u.mem.op = VP_OP_DEL;
        m->u.mem.nregions = VP_MAX_REGIONS;
        for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
            m->u.mem.regions[i] = (struct vp_cq_region){
                0x100000000ULL * i + 7, 0x200000ULL << (i % 20), UINT64_MAX - i };
        break;
    case VP_MSG_DEVICE_INFO:
        m->device_type = VP_DEV_SCSI;
        m->device_id = UINT64_MAX - 1;
        m->u.dev.op = VP_OP_ADD;
        m->u.dev.nvirtqs = VP_MAX_VIRTQS;
        for (unsigned i = 0; i < VP_MAX_VIRTQS; i++)
            m->u.dev.virtqs[i] = (struct vp_cq_virtq){
                .index = i, .num = 32768 >> (i % 15), .last_avail_idx = (uint16_t)(0xffff - i),
                .kick_vector = i % 2 ? VP_NO_VECTOR : (uint16_t)i, .call_vector = (uint16_t)(i * 3),
                .desc = 0x1000ULL * i, .avail = UINT64_MAX - i, .used = 0x8000000000000000ULL + i };
        break;
    case VP_MSG_FEATURE_BITS:
        m->u.features = UINT64_MAX;
        break;
    default:
        m->device_type = type == VP_MSG_DEVICE_INFO_ACK ? VP_DEV_NET : 0;
        m->device_id = 42;
        m->u.ack.result = VP_ACK_DEL_FAIL;
        m->u.ack.features = 0x8000000000000001ULL;
        m->u.ack.npos = VP_MAX_VIRTQS;
        for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
            m->u.ack.pos[i].index = 1000 + i;
            m->u.ack.pos[i].last_avail_idx = (uint16_t)(i * 1021);
        }
        for (unsigned i = 0; i < VP_MAX_REASON; i++)
            m->u.ack.reason[i] = (char)('a' + i % 26);
        m->u.ack.reason[VP_MAX_REASON] = '\0';
        break;
    }
}

static size_t max_len(uint16_t type)
{
    switch (type) {
    case VP_MSG_MEMORY_INFO: return 28 + 6 + 24 * VP_MAX_REGIONS;
    case VP_MSG_DEVICE_INFO: return 28 + 22 + 40 * VP_MAX_VIRTQS;
    case VP_MSG_FEATURE_BITS: return 28 + 8;
    default: return 28 + 24 + 8 * VP_MAX_VIRTQS + VP_MAX_REASON;
    }
}

static void test_round_trip_max(void)
{
    struct vp_cq_msg *m = msg_new(), *d = msg_new();
    unsigned char buf[VP_CQ_MAX_MSG + 16];
    g_assert_cmpuint(max_len(VP_MSG_DEVICE_INFO), ==, VP_CQ_MAX_MSG);
    for (uint16_t type = 0; type < VP_MSG_TYPE_COUNT; type++) {
        fill_max(m, type);
        int n = vp_cq_encode(m, buf, sizeof(buf));
        g_assert_cmpint(n, ==, (int)max_len(type));
        g_assert_cmpint(n, <=, VP_CQ_MAX_MSG);
        /* Exactly sized buffer is enough. */
        unsigned char *exact = g_malloc(n);
        g_assert_cmpint(vp_cq_encode(m, exact, n), ==, n);
        g_assert_cmpmem(exact, n, buf, n);
        g_free(exact);

        vp_error err = { "" };
        memset(d, 0xee, sizeof(*d));
        g_assert_cmpint(decode_exact(buf, n, d, &err), ==, 0);
        g_assert_cmpstr(err.msg, ==, "");
        g_assert_cmpuint(d->type, ==, type);
        g_assert_cmpuint(d->version, ==, VP_MSG_VERSION);
        g_assert_cmpuint(d->seq, ==, m->seq);
        g_assert_cmpuint(d->device_type, ==, m->device_type);
        g_assert_cmpuint(d->device_id, ==, m->device_id);
        switch (type) {
        case VP_MSG_MEMORY_INFO:
            g_assert_cmpuint(d->u.mem.op, ==, m->u.mem.op);
            g_assert_cmpuint(d->u.mem.nregions, ==, VP_MAX_REGIONS);
            g_assert_cmpmem(d->u.mem.regions, sizeof(d->u.mem.regions), m->u.mem.regions,
                            sizeof(m->u.mem.regions));
            break;
        case VP_MSG_DEVICE_INFO:
            g_assert_cmpuint(d->u.dev.op, ==, m->u.dev.op);
            g_assert_cmpuint(d->u.dev.nvirtqs, ==, VP_MAX_VIRTQS);
            for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
                const struct vp_cq_virtq *a = &d->u.dev.virtqs[i], *b = &m->u.dev.virtqs[i];
                g_assert_cmpuint(a->index, ==, b->index);
                g_assert_cmpuint(a->num, ==, b->num);
                g_assert_cmpuint(a->last_avail_idx, ==, b->last_avail_idx);
                g_assert_cmpuint(a->kick_vector, ==, b->kick_vector);
                g_assert_cmpuint(a->call_vector, ==, b->call_vector);
                g_assert_cmpuint(a->desc, ==, b->desc);
                g_assert_cmpuint(a->avail, ==, b->avail);
                g_assert_cmpuint(a->used, ==, b->used);
            }
            break;
        case VP_MSG_FEATURE_BITS:
            g_assert_cmpuint(d->u.features, ==, m->u.features);
            break;
        default:
            g_assert_cmpuint(d->u.ack.result, ==, m->u.ack.result);
            g_assert_cmpuint(d->u.ack.features, ==, m->u.ack.features);
            g_assert_cmpuint(d->u.ack.npos, ==, VP_MAX_VIRTQS);
            for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
                g_assert_cmpuint(d->u.ack.pos[i].index, ==, m->u.ack.pos[i].index);
                g_assert_cmpuint(d->u.ack.pos[i].last_avail_idx, ==,
                                 m->u.ack.pos[i].last_avail_idx);
            }
            g_assert_cmpstr(d->u.ack.reason, ==, m->u.ack.reason);
            break;
        }
        /* Re-encoding the decoded message gives the same bytes. */
        unsigned char again[VP_CQ_MAX_MSG];
        g_assert_cmpint(vp_cq_encode(d, again, sizeof(again)), ==, n);
        g_assert_cmpmem(again, n, buf, n);
    }
    /* Empty lists round-trip too. */
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_MEMORY_INFO;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, 34);
    g_assert_cmpint(decode_exact(buf, 34, d, NULL), ==, 0);
    g_assert_cmpuint(d->u.mem.nregions, ==, 0);
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_FEATURE_BITS_ACK;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, 52);
    g_assert_cmpint(decode_exact(buf, 52, d, NULL), ==, 0);
    g_assert_cmpstr(d->u.ack.reason, ==, "");
    g_free(m);
    g_free(d);
}

/* --------------------------------- decode errors --------------------------------- */

/* Raw message builder: header + arbitrary payload bytes. */
struct raw {
    unsigned char b[4096];
    size_t len;
};

static void raw_hdr(struct raw *r, uint16_t type, uint16_t version, uint32_t dtype, uint64_t did)
{
    memset(r, 0, sizeof(*r));
    vp_put_le16(r->b, type);
    vp_put_le16(r->b + 2, version);
    vp_put_le64(r->b + 8, 5);
    vp_put_le32(r->b + 16, dtype);
    vp_put_le64(r->b + 20, did);
    r->len = VP_CQ_HDR_SIZE;
}

/* Append @n payload bytes (zero) and keep msg_len consistent; returns their start. */
static unsigned char *raw_add(struct raw *r, size_t n)
{
    unsigned char *p = r->b + r->len;
    g_assert_cmpuint(r->len + n, <=, sizeof(r->b));
    r->len += n;
    vp_put_le32(r->b + 4, (uint32_t)(r->len - VP_CQ_HDR_SIZE));
    return p;
}

static void raw_mem(struct raw *r, uint16_t op, uint32_t nregion, unsigned entries)
{
    raw_hdr(r, VP_MSG_MEMORY_INFO, VP_MSG_VERSION, 0, 0);
    unsigned char *p = raw_add(r, 6);
    vp_put_le16(p, op);
    vp_put_le32(p + 2, nregion);
    raw_add(r, 24 * entries);
}

static void raw_dev(struct raw *r, uint16_t op, uint32_t nvirtq, unsigned entries,
                    uint32_t htype, uint64_t hid, uint32_t ptype, uint64_t pid)
{
    raw_hdr(r, VP_MSG_DEVICE_INFO, VP_MSG_VERSION, htype, hid);
    unsigned char *p = raw_add(r, 22);
    vp_put_le16(p, op);
    vp_put_le32(p + 2, nvirtq);
    vp_put_le32(p + 6, ptype);
    vp_put_le64(p + 10, pid);
    raw_add(r, 40 * entries);
}

static void raw_ack(struct raw *r, uint16_t type, uint64_t result, uint32_t npos,
                    unsigned entries, uint32_t reason_len, unsigned reason_bytes)
{
    raw_hdr(r, type, VP_MSG_VERSION, 0, 0);
    unsigned char *p = raw_add(r, 24);
    vp_put_le64(p, result);
    vp_put_le32(p + 16, npos);
    vp_put_le32(p + 20, reason_len);
    raw_add(r, 8 * entries);
    memset(raw_add(r, reason_bytes), 'x', reason_bytes);
}

static void expect_bad(const struct raw *r, const char *why)
{
    struct vp_cq_msg *m = msg_new();
    vp_error err = { "" };
    int fds = vp_count_open_fds();
    int ret = decode_exact(r->b, r->len, m, &err);
    if (ret != -EPROTO || !strstr(err.msg, why))
        g_error("decode: ret %d reason '%s', want -EPROTO and '%s'", ret, err.msg, why);
    /* Nothing half-decoded is left behind. */
    g_assert_cmpuint(m->type, ==, 0);
    g_assert_cmpuint(m->seq, ==, 0);
    vp_assert_fds(fds);
    g_free(m);
}

static void test_decode_header_errors(void)
{
    struct raw r;
    /* Short buffers. */
    raw_hdr(&r, VP_MSG_FEATURE_BITS, VP_MSG_VERSION, 0, 0);
    r.len = 0;
    expect_bad(&r, "too short: 0 bytes");
    r.len = VP_CQ_HDR_SIZE - 1;
    expect_bad(&r, "too short: 27 bytes");
    /* msg_len not matching the buffer, both ways. */
    raw_hdr(&r, VP_MSG_FEATURE_BITS, VP_MSG_VERSION, 0, 0);
    raw_add(&r, 8);
    vp_put_le32(r.b + 4, 9);
    expect_bad(&r, "msg_len 9 does not match the 8 payload bytes");
    vp_put_le32(r.b + 4, 7);
    expect_bad(&r, "msg_len 7 does not match");
    vp_put_le32(r.b + 4, 0xffffffffu);
    expect_bad(&r, "msg_len 4294967295 does not match");
    /* Unknown types. */
    raw_hdr(&r, VP_MSG_TYPE_COUNT, VP_MSG_VERSION, 0, 0);
    raw_add(&r, 8);
    expect_bad(&r, "unknown msg_type 6");
    raw_hdr(&r, 0xffff, VP_MSG_VERSION, 0, 0);
    expect_bad(&r, "unknown msg_type 65535");
    /* Bad versions. */
    raw_hdr(&r, VP_MSG_FEATURE_BITS, 0, 0, 0);
    raw_add(&r, 8);
    expect_bad(&r, "unsupported msg_version 0");
    raw_hdr(&r, VP_MSG_FEATURE_BITS, 2, 0, 0);
    raw_add(&r, 8);
    expect_bad(&r, "unsupported msg_version 2");
}

static void test_decode_payload_errors(void)
{
    struct raw r;
    /* Payload shorter than the type's fixed part. */
    raw_hdr(&r, VP_MSG_MEMORY_INFO, VP_MSG_VERSION, 0, 0);
    raw_add(&r, 5);
    expect_bad(&r, "MEMORY_INFO: payload too short: 5 bytes, need 6");
    raw_hdr(&r, VP_MSG_DEVICE_INFO, VP_MSG_VERSION, 0, 0);
    raw_add(&r, 21);
    expect_bad(&r, "DEVICE_INFO: payload too short: 21 bytes, need 22");
    raw_hdr(&r, VP_MSG_DEVICE_INFO_ACK, VP_MSG_VERSION, 0, 0);
    expect_bad(&r, "DEVICE_INFO_ACK: payload too short: 0 bytes, need 24");
    raw_hdr(&r, VP_MSG_FEATURE_BITS, VP_MSG_VERSION, 0, 0);
    raw_add(&r, 7);
    expect_bad(&r, "FEATURE_BITS: payload too short: 7 bytes");
    raw_hdr(&r, VP_MSG_FEATURE_BITS, VP_MSG_VERSION, 0, 0);
    raw_add(&r, 9);
    expect_bad(&r, "FEATURE_BITS: payload is 9 bytes");

    /* Counts over the limits (payload sized to match, so only the count is wrong). */
    raw_mem(&r, VP_OP_ADD, VP_MAX_REGIONS + 1, VP_MAX_REGIONS + 1);
    expect_bad(&r, "nregion 65 over the limit 64");
    raw_mem(&r, VP_OP_ADD, 0xffffffffu, 0);
    expect_bad(&r, "nregion 4294967295 over the limit");
    raw_dev(&r, VP_OP_ADD, VP_MAX_VIRTQS + 1, VP_MAX_VIRTQS + 1, 1, 2, 1, 2);
    expect_bad(&r, "nvirtq 65 over the limit 64");
    raw_ack(&r, VP_MSG_DEVICE_INFO_ACK, VP_ACK_DEL_DONE, VP_MAX_VIRTQS + 1, VP_MAX_VIRTQS + 1,
            0, 0);
    expect_bad(&r, "npos 65 over the limit 64");
    raw_ack(&r, VP_MSG_MEMORY_INFO_ACK, VP_ACK_ADD_FAIL, 0, 0, VP_MAX_REASON + 1,
            VP_MAX_REASON + 1);
    expect_bad(&r, "reason_len 256 over the limit 255");
    raw_ack(&r, VP_MSG_MEMORY_INFO_ACK, VP_ACK_ADD_FAIL, 0, 0, 0xffffffffu, 0);
    expect_bad(&r, "reason_len 4294967295 over the limit");

    /* Payload length not what the counts imply. */
    raw_mem(&r, VP_OP_ADD, 2, 3);
    expect_bad(&r, "MEMORY_INFO: payload is 78 bytes, 2 regions imply 54");
    raw_mem(&r, VP_OP_ADD, 2, 1);
    expect_bad(&r, "2 regions imply 54");
    raw_dev(&r, VP_OP_ADD, 1, 0, 1, 2, 1, 2);
    expect_bad(&r, "DEVICE_INFO: payload is 22 bytes, 1 virtqueues imply 62");
    raw_dev(&r, VP_OP_ADD, 0, 1, 1, 2, 1, 2);
    expect_bad(&r, "0 virtqueues imply 22");
    raw_ack(&r, VP_MSG_FEATURE_BITS_ACK, VP_ACK_ADD_DONE, 1, 0, 0, 0);
    expect_bad(&r, "FEATURE_BITS_ACK: payload is 24 bytes, npos 1 and reason_len 0 imply 32");
    raw_ack(&r, VP_MSG_MEMORY_INFO_ACK, VP_ACK_ADD_FAIL, 0, 0, 5, 4);
    expect_bad(&r, "npos 0 and reason_len 5 imply 29");
    raw_ack(&r, VP_MSG_MEMORY_INFO_ACK, VP_ACK_ADD_FAIL, 0, 0, 4, 5);
    expect_bad(&r, "payload is 29 bytes, npos 0 and reason_len 4 imply 28");

    /* Unknown ops. */
    raw_mem(&r, 2, 0, 0);
    expect_bad(&r, "MEMORY_INFO: unknown op 2");
    raw_dev(&r, 0xffff, 0, 0, 1, 2, 1, 2);
    expect_bad(&r, "DEVICE_INFO: unknown op 65535");

    /* ACK results out of range. */
    raw_ack(&r, VP_MSG_DEVICE_INFO_ACK, 4, 0, 0, 0, 0);
    expect_bad(&r, "DEVICE_INFO_ACK: bad ack result 4");
    raw_ack(&r, VP_MSG_FEATURE_BITS_ACK, UINT64_MAX, 0, 0, 0, 0);
    expect_bad(&r, "bad ack result 18446744073709551615");

    /* DEVICE_INFO naming different devices in header and payload. */
    raw_dev(&r, VP_OP_ADD, 0, 0, VP_DEV_NET, 7, VP_DEV_BLK, 7);
    expect_bad(&r, "header names device 1/7, payload 2/7 (device mismatch)");
    raw_dev(&r, VP_OP_DEL, 1, 1, VP_DEV_NET, 7, VP_DEV_NET, 8);
    expect_bad(&r, "header names device 1/7, payload 1/8 (device mismatch)");
}

/* Reasons are made safe to log. Unknown device types are NOT a decode error: the
 * guest driver answers them with ADD_FAIL. */
static void test_decode_lenient_bits(void)
{
    struct raw r;
    struct vp_cq_msg *m = msg_new();
    raw_ack(&r, VP_MSG_DEVICE_INFO_ACK, VP_ACK_ADD_FAIL, 0, 0, 6, 6);
    memcpy(r.b + r.len - 6, "a\nb\033\x80z", 6);
    g_assert_cmpint(decode_exact(r.b, r.len, m, NULL), ==, 0);
    g_assert_cmpstr(m->u.ack.reason, ==, "a?b??z");
    raw_dev(&r, VP_OP_ADD, 0, 0, 77, 1, 77, 1);
    g_assert_cmpint(decode_exact(r.b, r.len, m, NULL), ==, 0);
    g_assert_cmpuint(m->device_type, ==, 77);
    g_free(m);
}

/* Every truncation of a valid message is refused; random mutations never crash and
 * whatever decodes re-encodes to the same length. */
static void test_truncations_and_mutations(void)
{
    struct vp_cq_msg *m = msg_new(), *d = msg_new();
    unsigned char buf[VP_CQ_MAX_MSG];
    GRand *rnd = g_rand_new_with_seed(1234);
    for (uint16_t type = 0; type < VP_MSG_TYPE_COUNT; type++) {
        fill_max(m, type);
        if (type == VP_MSG_MEMORY_INFO)
            m->u.mem.nregions = 3;
        if (type == VP_MSG_DEVICE_INFO)
            m->u.dev.nvirtqs = 2;
        if (type & 1) {
            m->u.ack.npos = 2;
            m->u.ack.reason[10] = '\0';
        }
        int n = vp_cq_encode(m, buf, sizeof(buf));
        g_assert_cmpint(n, >, 0);
        for (int len = 0; len < n; len++) {
            vp_error err = { "" };
            g_assert_cmpint(decode_exact(buf, len, d, &err), ==, -EPROTO);
            g_assert_cmpstr(err.msg, !=, "");
        }
        for (unsigned k = 0; k < 3000; k++) {
            unsigned char mut[VP_CQ_MAX_MSG];
            memcpy(mut, buf, n);
            unsigned flips = g_rand_int_range(rnd, 1, 4);
            for (unsigned f = 0; f < flips; f++)
                mut[g_rand_int_range(rnd, 0, n)] = (unsigned char)g_rand_int_range(rnd, 0, 256);
            int len = n;
            /* Sometimes fix msg_len so that the payload parsers are reached. */
            if (k % 2)
                vp_put_le32(mut + 4, (uint32_t)(n - VP_CQ_HDR_SIZE));
            vp_error err = { "" };
            int r = decode_exact(mut, len, d, &err);
            g_assert_true(r == 0 || r == -EPROTO);
            if (r == 0) {
                unsigned char again[VP_CQ_MAX_MSG];
                g_assert_cmpint(vp_cq_encode(d, again, sizeof(again)), ==, len);
            } else {
                g_assert_cmpstr(err.msg, !=, "");
            }
        }
    }
    g_rand_free(rnd);
    g_free(m);
    g_free(d);
}

/* --------------------------------- encode errors --------------------------------- */

static void test_encode_errors(void)
{
    struct vp_cq_msg *m = msg_new();
    unsigned char buf[VP_CQ_MAX_MSG];
    for (uint16_t type = 0; type < VP_MSG_TYPE_COUNT; type++) {
        fill_max(m, type);
        int n = vp_cq_encode(m, buf, sizeof(buf));
        g_assert_cmpint(n, >, 0);
        memset(buf, 0x5a, sizeof(buf));
        g_assert_cmpint(vp_cq_encode(m, buf, n - 1), ==, -ENOSPC);
        g_assert_cmpint(vp_cq_encode(m, buf, 0), ==, -ENOSPC);
        g_assert_cmpint(vp_cq_encode(m, buf, VP_CQ_HDR_SIZE), ==, -ENOSPC);
        g_assert_cmpuint(buf[0], ==, 0x5a);      /* nothing written */
    }
    fill_max(m, VP_MSG_MEMORY_INFO);
    m->u.mem.nregions = VP_MAX_REGIONS + 1;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    fill_max(m, VP_MSG_MEMORY_INFO);
    m->u.mem.op = 2;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    fill_max(m, VP_MSG_DEVICE_INFO);
    m->u.dev.nvirtqs = VP_MAX_VIRTQS + 1;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    fill_max(m, VP_MSG_DEVICE_INFO);
    m->u.dev.op = 7;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    fill_max(m, VP_MSG_DEVICE_INFO_ACK);
    m->u.ack.npos = VP_MAX_VIRTQS + 1;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    fill_max(m, VP_MSG_DEVICE_INFO_ACK);
    m->u.ack.result = 4;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    fill_max(m, VP_MSG_FEATURE_BITS);
    m->type = VP_MSG_TYPE_COUNT;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    m->type = 0xffff;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, -EINVAL);
    /* A version field left 0 by the caller is still sent as VP_MSG_VERSION. */
    fill_max(m, VP_MSG_FEATURE_BITS);
    m->version = 0;
    g_assert_cmpint(vp_cq_encode(m, buf, sizeof(buf)), ==, 36);
    g_assert_cmpuint(vp_get_le16(buf + 2), ==, VP_MSG_VERSION);
    g_free(m);
}

/* --------------------------------- make_ack --------------------------------- */

static void test_make_ack(void)
{
    struct vp_cq_msg *req = msg_new(), *ack = msg_new();
    static const uint16_t pairs[][2] = {
        { VP_MSG_MEMORY_INFO, VP_MSG_MEMORY_INFO_ACK },
        { VP_MSG_DEVICE_INFO, VP_MSG_DEVICE_INFO_ACK },
        { VP_MSG_FEATURE_BITS, VP_MSG_FEATURE_BITS_ACK },
    };
    for (unsigned i = 0; i < VP_ARRAY_SIZE(pairs); i++) {
        fill_max(req, pairs[i][0]);
        req->device_type = VP_DEV_NET;
        req->device_id = 1234 + i;
        memset(ack, 0x77, sizeof(*ack));
        vp_cq_make_ack(ack, req, VP_ACK_ADD_FAIL, "device type blk not supported");
        g_assert_cmpuint(ack->type, ==, pairs[i][1]);
        g_assert_cmpuint(ack->version, ==, VP_MSG_VERSION);
        g_assert_cmpuint(ack->seq, ==, req->seq);
        g_assert_cmpuint(ack->device_type, ==, VP_DEV_NET);
        g_assert_cmpuint(ack->device_id, ==, 1234 + i);
        g_assert_cmpuint(ack->u.ack.result, ==, VP_ACK_ADD_FAIL);
        g_assert_cmpuint(ack->u.ack.features, ==, 0);
        g_assert_cmpuint(ack->u.ack.npos, ==, 0);
        g_assert_cmpstr(ack->u.ack.reason, ==, "device type blk not supported");
        /* It encodes and decodes. */
        unsigned char buf[VP_CQ_MAX_MSG];
        int n = vp_cq_encode(ack, buf, sizeof(buf));
        g_assert_cmpint(n, ==, 28 + 24 + 29);
        g_assert_cmpint(decode_exact(buf, n, req, NULL), ==, 0);
        g_assert_cmpstr(req->u.ack.reason, ==, "device type blk not supported");
    }
    /* NULL reason; an over-long reason is truncated to VP_MAX_REASON bytes. */
    fill_max(req, VP_MSG_FEATURE_BITS);
    vp_cq_make_ack(ack, req, VP_ACK_ADD_DONE, NULL);
    g_assert_cmpstr(ack->u.ack.reason, ==, "");
    char longr[600];
    memset(longr, 'r', sizeof(longr) - 1);
    longr[sizeof(longr) - 1] = '\0';
    vp_cq_make_ack(ack, req, VP_ACK_ADD_DONE, longr);
    g_assert_cmpuint(strlen(ack->u.ack.reason), ==, VP_MAX_REASON);
    /* In place (ack aliasing the request). */
    fill_max(req, VP_MSG_DEVICE_INFO);
    uint64_t seq = req->seq, id = req->device_id;
    vp_cq_make_ack(req, req, VP_ACK_DEL_DONE, "ok");
    g_assert_cmpuint(req->type, ==, VP_MSG_DEVICE_INFO_ACK);
    g_assert_cmpuint(req->seq, ==, seq);
    g_assert_cmpuint(req->device_id, ==, id);
    g_assert_cmpuint(req->device_type, ==, VP_DEV_SCSI);
    g_assert_cmpstr(req->u.ack.reason, ==, "ok");
    g_free(req);
    g_free(ack);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/controlq/layout/feature_bits", test_layout_feature_bits);
    g_test_add_func("/controlq/layout/device_info", test_layout_device_info);
    g_test_add_func("/controlq/layout/memory_and_ack", test_layout_memory_and_ack);
    g_test_add_func("/controlq/round_trip_max", test_round_trip_max);
    g_test_add_func("/controlq/decode/header_errors", test_decode_header_errors);
    g_test_add_func("/controlq/decode/payload_errors", test_decode_payload_errors);
    g_test_add_func("/controlq/decode/lenient_bits", test_decode_lenient_bits);
    g_test_add_func("/controlq/decode/truncations_mutations", test_truncations_and_mutations);
    g_test_add_func("/controlq/encode_errors", test_encode_errors);
    g_test_add_func("/controlq/make_ack", test_make_ack);
    return g_test_run();
}
