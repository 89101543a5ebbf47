/*
 * vp_payload.c - the protobuf-c payloads of vhost-pci socket messages (DESIGN section
 * 4): MEMORY_INFO, DEVICE_INFO, FEATURE_BITS and the ACKs, decoded into the plain
 * structs of vp_msg.h and encoded from them (framing and fds: vp_msg.c).
 *
 * Security model: the payload and its fds come from another process that may be
 * hostile; the header was already checked by vp_msg.c's reader.
 *   - Payload decoders count repeated entries on the raw wire before protobuf-c
 *     allocates anything, check every count against the limits before copying into
 *     the fixed arrays, check each fd index against the fds actually received (each
 *     used exactly once, all of them named), and only then move the fds.
 *   - Text from the peer (ACK reasons) is truncated to VP_MAX_REASON bytes on a UTF-8
 *     boundary and control characters are replaced, so it is safe to log.
 * Semantic checks (overlap, file bounds, seals, ring layout) are in vp_validate.c.
 */
#include "vp_msg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhost_pci.pb-c.h"
#include "vp_proto.h"

/* ------------------------------------------------------------------------- */
/* Payload decoding                                                          */
/* ------------------------------------------------------------------------- */

/* Read a protobuf varint from [*p, end). Returns 0 or -1 (truncated / too long). */
static int wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/*
 * Count the top-level occurrences of length-delimited field @field in a protobuf
 * payload without unpacking it, so that a repeated field over its limit is rejected
 * before protobuf-c allocates one struct per entry. Returns the count, or -1 when
 * the wire format is broken (protobuf-c would reject it too).
 */
static long wire_count_field(const uint8_t *buf, size_t len, unsigned field)
{
    if (len == 0)
        return 0;                 /* an empty payload (buf may be NULL) */
    const uint8_t *p = buf, *end = buf + len;
    long count = 0;
    while (p < end) {
        uint64_t key, v;
        if (wire_varint(&p, end, &key) < 0)
            return -1;
        switch (key & 7) {
        case 0: /* varint */
            if (wire_varint(&p, end, &v) < 0)
                return -1;
            break;
        case 1: /* 64-bit */
            if ((size_t)(end - p) < 8)
                return -1;
            p += 8;
            break;
        case 2: /* length-delimited */
            if (wire_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return -1;
            p += v;
            if ((key >> 3) == field)
                count++;
            break;
        case 5: /* 32-bit */
            if ((size_t)(end - p) < 4)
                return -1;
            p += 4;
            break;
        default: /* groups (3, 4) are not used by proto3; 6, 7 are invalid */
            return -1;
        }
    }
    return count;
}

/* Checks common to every decoder: message type, optional fd ban, repeated count. */
static int decode_precheck(const struct vp_msg *msg, uint16_t type, bool fds_allowed,
                           unsigned rep_field, unsigned rep_max, const char *rep_name,
                           vp_error *err)
{
    if (msg->hdr.type != type)
        return vp_fail(err, -EINVAL, "expected %s, got %s", vp_msg_type_name(type),
                       vp_msg_type_name(msg->hdr.type));
    if (msg->nfds > VP_MAX_FDS || (msg->hdr.len && !msg->payload))
        return vp_fail(err, -EINVAL, "malformed message struct");
    if (!fds_allowed && msg->nfds)
        return vp_fail(err, -EPROTO, "%s carries %u fds, expected none",
                       vp_msg_type_name(type), msg->nfds);
    if (rep_name) {
        long n = wire_count_field(msg->payload, msg->hdr.len, rep_field);
        if (n < 0)
            return vp_fail(err, -EPROTO, "%s: payload is not valid protobuf",
                           vp_msg_type_name(type));
        if ((unsigned long)n > rep_max)
            return vp_fail(err, -EPROTO, "%s: %ld %s, at most %u",
                           vp_msg_type_name(type), n, rep_name, rep_max);
    }
    return 0;
}

#define DECODE_UNPACK_FAIL(type)                                                  \
    vp_fail(err, -EPROTO, "%s: payload is not valid protobuf", vp_msg_type_name(type))

/* Mark fd index @idx of @msg used by @what ("region 3", ...). 0 or -EPROTO. */
static int claim_fd(const struct vp_msg *msg, bool used[VP_MAX_FDS], int64_t idx,
                    const char *what, vp_error *err)
{
    if (idx < 0 || idx >= (int64_t)msg->nfds)
        return vp_fail(err, -EPROTO, "%s: fd_index %lld out of range (%u fds received)",
                       what, (long long)idx, msg->nfds);
    if (used[idx])
        return vp_fail(err, -EPROTO, "%s: fd_index %lld used twice", what, (long long)idx);
    if (msg->fds[idx] < 0)
        return vp_fail(err, -EPROTO, "%s: fd_index %lld names an fd already taken",
                       what, (long long)idx);
    used[idx] = true;
    return 0;
}

void vp_memory_info_init(struct vp_memory_info *mi)
{
    mi->op = VP_OP_ADD;
    mi->nregions = 0;
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++) {
        memset(&mi->regions[i], 0, sizeof(mi->regions[i]));
        mi->regions[i].fd = -1;
    }
}

void vp_device_info_init(struct vp_device_info *di)
{
    di->op = VP_OP_ADD;
    di->device_type = 0;
    di->device_id = 0;
    di->nvirtqs = 0;
    for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
        memset(&di->virtqs[i], 0, sizeof(di->virtqs[i]));
        di->virtqs[i].kick_fd = -1;
        di->virtqs[i].call_fd = -1;
    }
}

void vp_memory_info_close_fds(struct vp_memory_info *mi)
{
    /* Every slot, not only nregions: fds are -1 beyond it after init. */
    for (unsigned i = 0; i < VP_MAX_REGIONS; i++)
        vp_close_fd(&mi->regions[i].fd);
}

void vp_device_info_close_fds(struct vp_device_info *di)
{
    for (unsigned i = 0; i < VP_MAX_VIRTQS; i++) {
        vp_close_fd(&di->virtqs[i].kick_fd);
        vp_close_fd(&di->virtqs[i].call_fd);
    }
}

int vp_decode_memory_info(struct vp_msg *msg, struct vp_memory_info *out, vp_error *err)
{
    vp_memory_info_init(out);
    int ret = decode_precheck(msg, VP_MSG_MEMORY_INFO, true, 2, VP_MAX_REGIONS,
                              "regions", err);
    if (ret < 0)
        return ret;

    VhostPci__MemoryInfo *pb = vhost_pci__memory_info__unpack(NULL, msg->hdr.len,
                                                              msg->payload);
    if (!pb)
        return DECODE_UNPACK_FAIL(VP_MSG_MEMORY_INFO);

    bool used[VP_MAX_FDS] = { false };
    unsigned nfd_named = 0;
    if (pb->n_regions > VP_MAX_REGIONS) {
        ret = vp_fail(err, -EPROTO, "MEMORY_INFO: %zu regions, at most %u",
                      pb->n_regions, VP_MAX_REGIONS);
        goto out;
    }
    if (pb->op != VP_OP_ADD && pb->op != VP_OP_DEL) {
        ret = vp_fail(err, -EPROTO, "MEMORY_INFO: unknown op %u", pb->op);
        goto out;
    }
    if (pb->op == VP_OP_ADD) {
        /* One fd per region (DESIGN section 4). */
        for (size_t i = 0; i < pb->n_regions; i++) {
            char what[32];
            snprintf(what, sizeof(what), "region %zu", i);
            ret = claim_fd(msg, used, pb->regions[i]->fd_index, what, err);
            if (ret < 0)
                goto out;
            nfd_named++;
        }
    }
    if (nfd_named != msg->nfds) {
        ret = vp_fail(err, -EPROTO, "MEMORY_INFO(%s): %u fds received, payload names %u",
                      pb->op == VP_OP_ADD ? "ADD" : "DEL", msg->nfds, nfd_named);
        goto out;
    }

    /* All checks passed: copy, then move the fds. */
    out->op = pb->op;
    out->nregions = (uint32_t)pb->n_regions;
    for (size_t i = 0; i < pb->n_regions; i++) {
        const VhostPci__MemoryRegion *pr = pb->regions[i];
        struct vp_region *rg = &out->regions[i];
        rg->gpa = pr->guest_phys_addr;
        rg->size = pr->memory_size;
        rg->mmap_offset = pr->mmap_offset;
        if (pb->op == VP_OP_ADD) {
            rg->fd = msg->fds[pr->fd_index];
            msg->fds[pr->fd_index] = -1;
        }
    }
    ret = 0;
out:
    vhost_pci__memory_info__free_unpacked(pb, NULL);
    return ret;
}

int vp_decode_device_info(struct vp_msg *msg, struct vp_device_info *out, vp_error *err)
{
    vp_device_info_init(out);
    int ret = decode_precheck(msg, VP_MSG_DEVICE_INFO, true, 4, VP_MAX_VIRTQS,
                              "virtqueues", err);
    if (ret < 0)
        return ret;

    VhostPci__DeviceInfo *pb = vhost_pci__device_info__unpack(NULL, msg->hdr.len,
                                                              msg->payload);
    if (!pb)
        return DECODE_UNPACK_FAIL(VP_MSG_DEVICE_INFO);

    bool used[VP_MAX_FDS] = { false };
    unsigned nfd_named = 0;
    if (pb->n_virtqs > VP_MAX_VIRTQS) {
        ret = vp_fail(err, -EPROTO, "DEVICE_INFO: %zu virtqueues, at most %u",
                      pb->n_virtqs, VP_MAX_VIRTQS);
        goto out;
    }
    if (pb->op != VP_OP_ADD && pb->op != VP_OP_DEL) {
        ret = vp_fail(err, -EPROTO, "DEVICE_INFO: unknown op %u", pb->op);
        goto out;
    }
    for (size_t i = 0; i < pb->n_virtqs; i++) {
        const VhostPci__Virtq *pv = pb->virtqs[i];
        if (pv->last_avail_idx > 0xffff) {
            ret = vp_fail(err, -EPROTO, "virtqueue %zu: last_avail_idx %u over 16 bits",
                          i, pv->last_avail_idx);
            goto out;
        }
        const int32_t idx[2] = { pv->kick_fd_index, pv->call_fd_index };
        for (unsigned k = 0; k < 2; k++) {
            if (idx[k] == -1)
                continue;
            char what[48];
            snprintf(what, sizeof(what), "virtqueue %zu %s fd", i, k ? "call" : "kick");
            ret = claim_fd(msg, used, idx[k], what, err);
            if (ret < 0)
                goto out;
            nfd_named++;
        }
    }
    if (nfd_named != msg->nfds) {
        ret = vp_fail(err, -EPROTO, "DEVICE_INFO: %u fds received, payload names %u",
                      msg->nfds, nfd_named);
        goto out;
    }

    out->op = pb->op;
    out->device_type = pb->device_type;
    out->device_id = pb->device_id;
    out->nvirtqs = (uint32_t)pb->n_virtqs;
    for (size_t i = 0; i < pb->n_virtqs; i++) {
        const VhostPci__Virtq *pv = pb->virtqs[i];
        struct vp_virtq *q = &out->virtqs[i];
        q->index = pv->index;
        q->num = pv->num;
        q->desc = pv->desc_addr;
        q->avail = pv->avail_addr;
        q->used = pv->used_addr;
        q->last_avail_idx = (uint16_t)pv->last_avail_idx;
        if (pv->kick_fd_index >= 0) {
            q->kick_fd = msg->fds[pv->kick_fd_index];
            msg->fds[pv->kick_fd_index] = -1;
        }
        if (pv->call_fd_index >= 0) {
            q->call_fd = msg->fds[pv->call_fd_index];
            msg->fds[pv->call_fd_index] = -1;
        }
    }
    ret = 0;
out:
    vhost_pci__device_info__free_unpacked(pb, NULL);
    return ret;
}

int vp_decode_feature_bits(const struct vp_msg *msg, uint64_t *bits, vp_error *err)
{
    int ret = decode_precheck(msg, VP_MSG_FEATURE_BITS, false, 0, 0, NULL, err);
    if (ret < 0)
        return ret;
    VhostPci__FeatureBits *pb = vhost_pci__feature_bits__unpack(NULL, msg->hdr.len,
                                                               msg->payload);
    if (!pb)
        return DECODE_UNPACK_FAIL(VP_MSG_FEATURE_BITS);
    *bits = pb->feature_bits;
    vhost_pci__feature_bits__free_unpacked(pb, NULL);
    return 0;
}

/* Copy peer text into @dst (VP_MAX_REASON + 1 bytes): at most VP_MAX_REASON bytes,
 * cut on a UTF-8 character boundary, control characters replaced by '?'. */
static void copy_reason(char dst[VP_MAX_REASON + 1], const char *src)
{
    size_t n = src ? strnlen(src, VP_MAX_REASON + 1) : 0;
    if (n > VP_MAX_REASON) {
        n = VP_MAX_REASON;
        /* Do not cut a multi-byte character: back up over continuation bytes. */
        size_t k = n;
        while (k > 0 && ((uint8_t)src[k] & 0xc0) == 0x80)
            k--;
        if (n - k < 4)
            n = k;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)src[i];
        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    dst[n] = '\0';
}

int vp_decode_ack(const struct vp_msg *msg, struct vp_ack *out, vp_error *err)
{
    memset(out, 0, sizeof(*out));
    if (!vp_proto_is_ack(msg->hdr.type))
        return vp_fail(err, -EINVAL, "expected an ACK, got %s",
                       vp_msg_type_name(msg->hdr.type));
    int ret = decode_precheck(msg, msg->hdr.type, false, 6, VP_MAX_VIRTQS,
                              "virtqueue positions", err);
    if (ret < 0)
        return ret;
    VhostPci__Ack *pb = vhost_pci__ack__unpack(NULL, msg->hdr.len, msg->payload);
    if (!pb)
        return DECODE_UNPACK_FAIL(msg->hdr.type);

    const char *tn = vp_msg_type_name(msg->hdr.type);
    if (pb->result > VP_ACK_DEL_FAIL) {
        ret = vp_fail(err, -EPROTO, "%s: unknown result %llu", tn,
                      (unsigned long long)pb->result);
        goto out;
    }
    if (pb->n_positions > VP_MAX_VIRTQS) {
        ret = vp_fail(err, -EPROTO, "%s: %zu virtqueue positions, at most %u", tn,
                      pb->n_positions, VP_MAX_VIRTQS);
        goto out;
    }
    for (size_t i = 0; i < pb->n_positions; i++) {
        if (pb->positions[i]->last_avail_idx > 0xffff) {
            ret = vp_fail(err, -EPROTO, "%s: position %zu: last_avail_idx %u over 16 bits",
                          tn, i, pb->positions[i]->last_avail_idx);
            goto out;
        }
    }

    out->result = pb->result;
    out->feature_bits = pb->feature_bits;
    copy_reason(out->reason, pb->reason);
    out->device_type = pb->device_type;
    out->device_id = pb->device_id;
    out->npositions = (uint32_t)pb->n_positions;
    for (size_t i = 0; i < pb->n_positions; i++) {
        out->positions[i].index = pb->positions[i]->index;
        out->positions[i].last_avail_idx = (uint16_t)pb->positions[i]->last_avail_idx;
    }
    ret = 0;
out:
    vhost_pci__ack__free_unpacked(pb, NULL);
    return ret;
}

/* ------------------------------------------------------------------------- */
/* Payload encoding                                                          */
/* ------------------------------------------------------------------------- */

/* Pack @m as a whole @type message (header, then payload) into a malloc'd buffer. */
static int pack_msg(const struct vp_sock_hdr *hdr, uint16_t type, const ProtobufCMessage *m,
                    uint8_t **out, size_t *outlen)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    if (len > VP_MAX_PAYLOAD)
        return -EINVAL;
    uint8_t *buf = malloc(VP_SOCK_HDR_SIZE + len);
    if (!buf)
        return -ENOMEM;
    struct vp_sock_hdr h = *hdr;
    h.type = type;
    h.len = (uint32_t)len;
    vp_sock_hdr_encode(&h, buf);
    if (len)
        protobuf_c_message_pack(m, buf + VP_SOCK_HDR_SIZE);
    *out = buf;
    *outlen = VP_SOCK_HDR_SIZE + len;
    return 0;
}

/* Send a packed message (pack_msg) with @fds; frees @buf. */
static int send_buffer(int sock, const struct vp_sock_hdr *hdr, uint16_t type, uint8_t *buf,
                       size_t len, const int *fds, unsigned nfds)
{
    struct vp_sock_hdr h = *hdr;
    h.type = type;
    int ret = vp_msg_send(sock, &h, buf + VP_SOCK_HDR_SIZE, len - VP_SOCK_HDR_SIZE, fds, nfds);
    free(buf);
    return ret;
}

/* Pack @m and send it as @type with @fds. */
static int send_packed(int sock, const struct vp_sock_hdr *hdr, uint16_t type,
                       const ProtobufCMessage *m, const int *fds, unsigned nfds)
{
    uint8_t *buf;
    size_t len;
    int ret = pack_msg(hdr, type, m, &buf, &len);
    return ret < 0 ? ret : send_buffer(sock, hdr, type, buf, len, fds, nfds);
}

int vp_send_memory_info(int sock, const struct vp_sock_hdr *hdr, const struct vp_memory_info *mi)
{
    if (mi->nregions > VP_MAX_REGIONS || (mi->op != VP_OP_ADD && mi->op != VP_OP_DEL))
        return -EINVAL;

    VhostPci__MemoryRegion rs[VP_MAX_REGIONS];
    VhostPci__MemoryRegion *rp[VP_MAX_REGIONS];
    int fds[VP_MAX_REGIONS];
    unsigned nfds = 0;
    for (unsigned i = 0; i < mi->nregions; i++) {
        const struct vp_region *rg = &mi->regions[i];
        vhost_pci__memory_region__init(&rs[i]);
        rs[i].guest_phys_addr = rg->gpa;
        rs[i].memory_size = rg->size;
        rs[i].mmap_offset = rg->mmap_offset;
        if (mi->op == VP_OP_ADD) {
            /* One fd per region, in order; DEL sends none. */
            if (rg->fd < 0)
                return -EINVAL;
            rs[i].fd_index = nfds;
            fds[nfds++] = rg->fd;
        }
        rp[i] = &rs[i];
    }
    VhostPci__MemoryInfo pb = VHOST_PCI__MEMORY_INFO__INIT;
    pb.op = mi->op;
    pb.n_regions = mi->nregions;
    pb.regions = rp;
    return send_packed(sock, hdr, VP_MSG_MEMORY_INFO, &pb.base, fds, nfds);
}

int vp_send_device_info(int sock, const struct vp_sock_hdr *hdr, const struct vp_device_info *di)
{
    if (di->nvirtqs > VP_MAX_VIRTQS || (di->op != VP_OP_ADD && di->op != VP_OP_DEL))
        return -EINVAL;

    VhostPci__Virtq qs[VP_MAX_VIRTQS];
    VhostPci__Virtq *qp[VP_MAX_VIRTQS];
    int fds[VP_MAX_FDS];
    unsigned nfds = 0;
    for (unsigned i = 0; i < di->nvirtqs; i++) {
        const struct vp_virtq *q = &di->virtqs[i];
        vhost_pci__virtq__init(&qs[i]);
        qs[i].index = q->index;
        qs[i].num = q->num;
        qs[i].desc_addr = q->desc;
        qs[i].avail_addr = q->avail;
        qs[i].used_addr = q->used;
        qs[i].last_avail_idx = q->last_avail_idx;
        qs[i].kick_fd_index = -1;
        qs[i].call_fd_index = -1;
        if (q->kick_fd >= 0) {
            qs[i].kick_fd_index = (int32_t)nfds;
            fds[nfds++] = q->kick_fd;
        }
        if (q->call_fd >= 0) {
            qs[i].call_fd_index = (int32_t)nfds;
            fds[nfds++] = q->call_fd;
        }
        qp[i] = &qs[i];
    }
    VhostPci__DeviceInfo pb = VHOST_PCI__DEVICE_INFO__INIT;
    pb.op = di->op;
    pb.device_type = di->device_type;
    pb.device_id = di->device_id;
    pb.n_virtqs = di->nvirtqs;
    pb.virtqs = qp;
    return send_packed(sock, hdr, VP_MSG_DEVICE_INFO, &pb.base, fds, nfds);
}

int vp_send_feature_bits(int sock, const struct vp_sock_hdr *hdr, uint64_t bits)
{
    VhostPci__FeatureBits pb = VHOST_PCI__FEATURE_BITS__INIT;
    pb.feature_bits = bits;
    return send_packed(sock, hdr, VP_MSG_FEATURE_BITS, &pb.base, NULL, 0);
}

int vp_pack_ack(uint16_t type, const struct vp_sock_hdr *hdr, const struct vp_ack *ack,
                uint8_t **out, size_t *len)
{
    if (!vp_proto_is_ack(type) || ack->npositions > VP_MAX_VIRTQS)
        return -EINVAL;

    VhostPci__VirtqPosition ps[VP_MAX_VIRTQS];
    VhostPci__VirtqPosition *pp[VP_MAX_VIRTQS];
    for (unsigned i = 0; i < ack->npositions; i++) {
        vhost_pci__virtq_position__init(&ps[i]);
        ps[i].index = ack->positions[i].index;
        ps[i].last_avail_idx = ack->positions[i].last_avail_idx;
        pp[i] = &ps[i];
    }
    /* The reason may be unterminated in a caller's buffer: copy at most its size. */
    char reason[VP_MAX_REASON + 1];
    size_t rl = strnlen(ack->reason, VP_MAX_REASON);
    memcpy(reason, ack->reason, rl);
    reason[rl] = '\0';

    VhostPci__Ack pb = VHOST_PCI__ACK__INIT;
    pb.result = ack->result;
    pb.feature_bits = ack->feature_bits;
    pb.reason = reason;
    pb.device_type = ack->device_type;
    pb.device_id = ack->device_id;
    pb.n_positions = ack->npositions;
    pb.positions = pp;
    return pack_msg(hdr, type, &pb.base, out, len);
}

int vp_send_ack(int sock, uint16_t type, const struct vp_sock_hdr *hdr, const struct vp_ack *ack)
{
    uint8_t *buf;
    size_t len;
    int ret = vp_pack_ack(type, hdr, ack, &buf, &len);
    return ret < 0 ? ret : send_buffer(sock, hdr, type, buf, len, NULL, 0);
}
