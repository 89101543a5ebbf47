/*
 * vp_controlq.c - encode / decode / validate controlq messages (vp_controlq.h,
 * DESIGN section 5, spec 1.5). Packed little-endian, byte offsets as documented in
 * the header; no struct is ever overlaid on the wire bytes.
 *
 * Security model: vp_cq_decode() parses bytes that came from the other side of a
 * controlq (the server or the guest driver, either may be compromised). The caller
 * has already copied them out of shared memory into a private buffer, so they cannot
 * change under us. Nothing is trusted: the header's msg_len must match the buffer,
 * the type and version must be known, every count is checked against its limit in a
 * wide type before any array is touched, the payload length must be exactly what the
 * counts imply, ops and ACK results must be known values, and a DEVICE_INFO's header
 * and payload must name the same device. Each field is read once. A reason string is
 * copied with non-printable bytes replaced so that logging it is safe.
 *
 * Dispatch is table-driven: each message type declares its fixed payload size and
 * per-entry size; the table is checked centrally before the type's parser runs.
 *
 * libc only.
 */
#include "vp_controlq.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

/* Payload sizes (see the header comment of vp_controlq.h). */
#define MEM_FIXED 6
#define MEM_ENTRY 24
#define DEV_FIXED 22
#define DEV_ENTRY 40
#define FEAT_FIXED 8
#define ACK_FIXED 24
#define ACK_ENTRY 8

/* Header field offsets. */
#define H_TYPE 0
#define H_VERSION 2
#define H_LEN 4
#define H_SEQ 8
#define H_DEVTYPE 16
#define H_DEVID 20

/* ------------------------------- encoding ------------------------------- */

static size_t ack_reason_len(const struct vp_cq_msg *m)
{
    return strnlen(m->u.ack.reason, VP_MAX_REASON);
}

/* Payload length of @m, or -EINVAL. */
static long payload_len(const struct vp_cq_msg *m)
{
    switch (m->type) {
    case VP_MSG_MEMORY_INFO:
        if (m->u.mem.nregions > VP_MAX_REGIONS)
            return -EINVAL;
        return MEM_FIXED + (long)MEM_ENTRY * m->u.mem.nregions;
    case VP_MSG_DEVICE_INFO:
        if (m->u.dev.nvirtqs > VP_MAX_VIRTQS)
            return -EINVAL;
        return DEV_FIXED + (long)DEV_ENTRY * m->u.dev.nvirtqs;
    case VP_MSG_FEATURE_BITS:
        return FEAT_FIXED;
    case VP_MSG_MEMORY_INFO_ACK:
    case VP_MSG_DEVICE_INFO_ACK:
    case VP_MSG_FEATURE_BITS_ACK:
        if (m->u.ack.npos > VP_MAX_VIRTQS)
            return -EINVAL;
        return ACK_FIXED + (long)ACK_ENTRY * m->u.ack.npos + (long)ack_reason_len(m);
    default:
        return -EINVAL;
    }
}

int vp_cq_encode(const struct vp_cq_msg *m, void *buf, size_t buflen)
{
    long plen = payload_len(m);
    if (plen < 0)
        return (int)plen;
    if ((m->type == VP_MSG_MEMORY_INFO && m->u.mem.op > VP_OP_DEL) ||
        (m->type == VP_MSG_DEVICE_INFO && m->u.dev.op > VP_OP_DEL))
        return -EINVAL;
    if (m->type & 1) {
        if (m->u.ack.result > VP_ACK_DEL_FAIL)
            return -EINVAL;
    }
    size_t total = VP_CQ_HDR_SIZE + (size_t)plen;
    if (total > buflen)
        return -ENOSPC;

    unsigned char *b = buf;
    vp_put_le16(b + H_TYPE, m->type);
    vp_put_le16(b + H_VERSION, VP_MSG_VERSION); /* the only version we speak */
    vp_put_le32(b + H_LEN, (uint32_t)plen);
    vp_put_le64(b + H_SEQ, m->seq);
    vp_put_le32(b + H_DEVTYPE, m->device_type);
    vp_put_le64(b + H_DEVID, m->device_id);
    unsigned char *p = b + VP_CQ_HDR_SIZE;

    switch (m->type) {
    case VP_MSG_MEMORY_INFO:
        vp_put_le16(p, m->u.mem.op);
        vp_put_le32(p + 2, m->u.mem.nregions);
        p += MEM_FIXED;
        for (uint32_t i = 0; i < m->u.mem.nregions; i++, p += MEM_ENTRY) {
            const struct vp_cq_region *r = &m->u.mem.regions[i];
            vp_put_le64(p, r->xgpa);
            vp_put_le64(p + 8, r->size);
            vp_put_le64(p + 16, r->bar_offset);
        }
        break;
    case VP_MSG_DEVICE_INFO:
        vp_put_le16(p, m->u.dev.op);
        vp_put_le32(p + 2, m->u.dev.nvirtqs);
        vp_put_le32(p + 6, m->device_type);
        vp_put_le64(p + 10, m->device_id);
        vp_put_le32(p + 18, 0); /* rsvd */
        p += DEV_FIXED;
        for (uint32_t i = 0; i < m->u.dev.nvirtqs; i++, p += DEV_ENTRY) {
            const struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
            vp_put_le32(p, q->index);
            vp_put_le32(p + 4, q->num);
            vp_put_le16(p + 8, q->last_avail_idx);
            vp_put_le16(p + 10, q->kick_vector);
            vp_put_le16(p + 12, q->call_vector);
            vp_put_le16(p + 14, 0);
            vp_put_le64(p + 16, q->desc);
            vp_put_le64(p + 24, q->avail);
            vp_put_le64(p + 32, q->used);
        }
        break;
    case VP_MSG_FEATURE_BITS:
        vp_put_le64(p, m->u.features);
        break;
    default: { /* the three ACKs (payload_len() rejected anything else) */
        size_t rlen = ack_reason_len(m);
        vp_put_le64(p, m->u.ack.result);
        vp_put_le64(p + 8, m->u.ack.features);
        vp_put_le32(p + 16, m->u.ack.npos);
        vp_put_le32(p + 20, (uint32_t)rlen);
        p += ACK_FIXED;
        for (uint32_t i = 0; i < m->u.ack.npos; i++, p += ACK_ENTRY) {
            vp_put_le32(p, m->u.ack.pos[i].index);
            vp_put_le16(p + 4, m->u.ack.pos[i].last_avail_idx);
            vp_put_le16(p + 6, 0);
        }
        memcpy(p, m->u.ack.reason, rlen);
        break;
    }
    }
    return (int)total;
}

/* ------------------------------- decoding ------------------------------- */

typedef int (*cq_parse_fn)(const unsigned char *p, size_t plen, struct vp_cq_msg *m,
                           vp_error *err);

/* Per type: fixed payload bytes (checked centrally before the parser runs) and
 * the parser, which checks its counts and the exact length. */
struct cq_type_info {
    size_t fixed;
    cq_parse_fn parse;
};

static int check_len(size_t plen, uint64_t want, const char *what, uint64_t count,
                     struct vp_cq_msg *m, vp_error *err)
{
    if (plen != want)
        return vp_fail(err, -EPROTO,
                       "controlq %s: payload is %zu bytes, %llu %s imply %llu",
                       vp_msg_type_name(m->type), plen, (unsigned long long)count, what,
                       (unsigned long long)want);
    return 0;
}

static int parse_mem(const unsigned char *p, size_t plen, struct vp_cq_msg *m, vp_error *err)
{
    uint16_t op = vp_get_le16(p);
    uint32_t n = vp_get_le32(p + 2);
    if (op != VP_OP_ADD && op != VP_OP_DEL)
        return vp_fail(err, -EPROTO, "controlq MEMORY_INFO: unknown op %u", op);
    if (n > VP_MAX_REGIONS)
        return vp_fail(err, -EPROTO, "controlq MEMORY_INFO: nregion %u over the limit %u",
                       n, VP_MAX_REGIONS);
    int r = check_len(plen, MEM_FIXED + (uint64_t)MEM_ENTRY * n, "regions", n, m, err);
    if (r < 0)
        return r;
    m->u.mem.op = op;
    m->u.mem.nregions = n;
    p += MEM_FIXED;
    for (uint32_t i = 0; i < n; i++, p += MEM_ENTRY) {
        m->u.mem.regions[i].xgpa = vp_get_le64(p);
        m->u.mem.regions[i].size = vp_get_le64(p + 8);
        m->u.mem.regions[i].bar_offset = vp_get_le64(p + 16);
    }
    return 0;
}

static int parse_dev(const unsigned char *p, size_t plen, struct vp_cq_msg *m, vp_error *err)
{
    uint16_t op = vp_get_le16(p);
    uint32_t n = vp_get_le32(p + 2);
    uint32_t dtype = vp_get_le32(p + 6);
    uint64_t did = vp_get_le64(p + 10);
    if (op != VP_OP_ADD && op != VP_OP_DEL)
        return vp_fail(err, -EPROTO, "controlq DEVICE_INFO: unknown op %u", op);
    if (n > VP_MAX_VIRTQS)
        return vp_fail(err, -EPROTO, "controlq DEVICE_INFO: nvirtq %u over the limit %u",
                       n, VP_MAX_VIRTQS);
    int r = check_len(plen, DEV_FIXED + (uint64_t)DEV_ENTRY * n, "virtqueues", n, m, err);
    if (r < 0)
        return r;
    if (dtype != m->device_type || did != m->device_id)
        return vp_fail(err, -EPROTO,
                       "controlq DEVICE_INFO: header names device %u/%llu, payload %u/%llu "
                       "(device mismatch)",
                       m->device_type, (unsigned long long)m->device_id, dtype,
                       (unsigned long long)did);
    m->u.dev.op = op;
    m->u.dev.nvirtqs = n;
    p += DEV_FIXED;
    for (uint32_t i = 0; i < n; i++, p += DEV_ENTRY) {
        struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        q->index = vp_get_le32(p);
        q->num = vp_get_le32(p + 4);
        q->last_avail_idx = vp_get_le16(p + 8);
        q->kick_vector = vp_get_le16(p + 10);
        q->call_vector = vp_get_le16(p + 12);
        q->desc = vp_get_le64(p + 16);
        q->avail = vp_get_le64(p + 24);
        q->used = vp_get_le64(p + 32);
    }
    return 0;
}

static int parse_feat(const unsigned char *p, size_t plen, struct vp_cq_msg *m, vp_error *err)
{
    int r = check_len(plen, FEAT_FIXED, "feature words", 1, m, err);
    if (r < 0)
        return r;
    m->u.features = vp_get_le64(p);
    return 0;
}

static int parse_ack(const unsigned char *p, size_t plen, struct vp_cq_msg *m, vp_error *err)
{
    uint64_t result = vp_get_le64(p);
    uint64_t features = vp_get_le64(p + 8);
    uint32_t npos = vp_get_le32(p + 16);
    uint32_t rlen = vp_get_le32(p + 20);
    const char *tname = vp_msg_type_name(m->type);
    if (result > VP_ACK_DEL_FAIL)
        return vp_fail(err, -EPROTO, "controlq %s: bad ack result %llu", tname,
                       (unsigned long long)result);
    if (npos > VP_MAX_VIRTQS)
        return vp_fail(err, -EPROTO, "controlq %s: npos %u over the limit %u", tname, npos,
                       VP_MAX_VIRTQS);
    if (rlen > VP_MAX_REASON)
        return vp_fail(err, -EPROTO, "controlq %s: reason_len %u over the limit %u", tname,
                       rlen, VP_MAX_REASON);
    uint64_t want = ACK_FIXED + (uint64_t)ACK_ENTRY * npos + rlen;
    if (plen != want)
        return vp_fail(err, -EPROTO,
                       "controlq %s: payload is %zu bytes, npos %u and reason_len %u imply %llu",
                       tname, plen, npos, rlen, (unsigned long long)want);
    m->u.ack.result = result;
    m->u.ack.features = features;
    m->u.ack.npos = npos;
    p += ACK_FIXED;
    for (uint32_t i = 0; i < npos; i++, p += ACK_ENTRY) {
        m->u.ack.pos[i].index = vp_get_le32(p);
        m->u.ack.pos[i].last_avail_idx = vp_get_le16(p + 4);
    }
    /* Copy the reason; anything but printable ASCII becomes '?' (log safety). */
    for (uint32_t i = 0; i < rlen; i++) {
        unsigned char c = p[i];
        m->u.ack.reason[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    m->u.ack.reason[rlen] = '\0';
    return 0;
}

static const struct cq_type_info cq_types[VP_MSG_TYPE_COUNT] = {
    [VP_MSG_MEMORY_INFO] = { MEM_FIXED, parse_mem },
    [VP_MSG_MEMORY_INFO_ACK] = { ACK_FIXED, parse_ack },
    [VP_MSG_DEVICE_INFO] = { DEV_FIXED, parse_dev },
    [VP_MSG_DEVICE_INFO_ACK] = { ACK_FIXED, parse_ack },
    [VP_MSG_FEATURE_BITS] = { FEAT_FIXED, parse_feat },
    [VP_MSG_FEATURE_BITS_ACK] = { ACK_FIXED, parse_ack },
};

int vp_cq_decode(const void *buf, size_t len, struct vp_cq_msg *m, vp_error *err)
{
    const unsigned char *b = buf;
    memset(m, 0, sizeof(*m));
    if (len < VP_CQ_HDR_SIZE)
        return vp_fail(err, -EPROTO, "controlq message too short: %zu bytes, header is %d",
                       len, VP_CQ_HDR_SIZE);
    uint16_t type = vp_get_le16(b + H_TYPE);
    uint16_t version = vp_get_le16(b + H_VERSION);
    uint32_t msg_len = vp_get_le32(b + H_LEN);
    size_t plen = len - VP_CQ_HDR_SIZE;
    if (msg_len != plen)
        return vp_fail(err, -EPROTO, "controlq msg_len %u does not match the %zu payload bytes",
                       msg_len, plen);
    if (type >= VP_MSG_TYPE_COUNT)
        return vp_fail(err, -EPROTO, "controlq: unknown msg_type %u", type);
    if (version != VP_MSG_VERSION)
        return vp_fail(err, -EPROTO, "controlq %s: unsupported msg_version %u (want %d)",
                       vp_msg_type_name(type), version, VP_MSG_VERSION);
    const struct cq_type_info *ti = &cq_types[type];
    if (plen < ti->fixed)
        return vp_fail(err, -EPROTO, "controlq %s: payload too short: %zu bytes, need %zu",
                       vp_msg_type_name(type), plen, ti->fixed);
    m->type = type;
    m->version = version;
    m->seq = vp_get_le64(b + H_SEQ);
    m->device_type = vp_get_le32(b + H_DEVTYPE);
    m->device_id = vp_get_le64(b + H_DEVID);
    int r = ti->parse(b + VP_CQ_HDR_SIZE, plen, m, err);
    if (r < 0) {
        memset(m, 0, sizeof(*m));
        return r;
    }
    return 0;
}

void vp_cq_make_ack(struct vp_cq_msg *ack, const struct vp_cq_msg *req, uint64_t result,
                    const char *reason)
{
    /* Copy what we need first: @ack may alias @req. */
    uint16_t type = (uint16_t)(req->type | 1); /* MEMORY_INFO 0 -> _ACK 1, ... */
    uint64_t seq = req->seq;
    uint32_t dtype = req->device_type;
    uint64_t did = req->device_id;
    char why[VP_MAX_REASON + 1] = "";
    if (reason) {
        size_t n = strnlen(reason, VP_MAX_REASON);
        memcpy(why, reason, n);
        why[n] = '\0';
    }

    memset(ack, 0, sizeof(*ack));
    ack->type = type;
    ack->version = VP_MSG_VERSION;
    ack->seq = seq;
    ack->device_type = dtype;
    ack->device_id = did;
    ack->u.ack.result = result;
    memcpy(ack->u.ack.reason, why, sizeof(why));
}
