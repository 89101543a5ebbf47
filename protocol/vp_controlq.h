/*
 * vp_controlq.h - controlq messages between the server and the guest driver
 * (DESIGN section 5, spec 1.5): binary, packed, little-endian.
 *
 * Wire layout (offsets in bytes):
 *   vhost_pci_msg_info      0 le16 msg_type, 2 le16 msg_version, 4 le32 msg_len
 *                           (payload bytes after the 28-byte header), 8 le64 msg_seq
 *   vhost_pci_controlq_hdr 16 le32 device_type, 20 le64 device_id      (28 bytes)
 *   MEMORY_INFO payload:   le16 ops, le32 nregion,
 *                          nregion x { le64 region_base_xgpa, le64 size,
 *                                      le64 offset_in_bar_area }         (6 + 24 n)
 *   DEVICE_INFO payload:   le16 ops, le32 nvirtq, le32 device_type, le64 device_id,
 *                          le32 rsvd (0; ignored on decode),
 *                          nvirtq x { le32 index, le32 num, le16 last_avail_idx,
 *                                     le16 kick_vector, le16 call_vector, le16 rsvd,
 *                                     le64 desc, le64 avail, le64 used } (22 + 40 n)
 *   FEATURE_BITS payload:  le64 feature_bits                             (8)
 *   *_ACK payload:         le64 ack (vp_ack_result), le64 feature_bits,
 *                          le32 npos, le32 reason_len,
 *                          npos x { le32 index, le16 last_avail_idx, le16 rsvd },
 *                          reason_len bytes of reason (no NUL)   (24 + 8 npos + r)
 * An ACK's msg_seq is the msg_seq of the message it answers.
 *
 * Security model: a decoded buffer comes from shared memory the other side can
 * rewrite at any time. Callers copy the bytes out of shared memory once into a
 * private buffer, then decode; vp_cq_decode() checks every length and count against
 * the buffer and the limits before touching anything.
 *
 * libc only (the guest driver links this).
 */
#ifndef VP_CONTROLQ_H
#define VP_CONTROLQ_H

#include <stddef.h>
#include <stdint.h>

#include "vp_common.h"
#include "vp_wire.h"

#define VP_CQ_HDR_SIZE 28
/** Largest encoded controlq message (DEVICE_INFO with VP_MAX_VIRTQS queues). */
#define VP_CQ_MAX_MSG (VP_CQ_HDR_SIZE + 22 + 40 * VP_MAX_VIRTQS)

/** Vector value meaning "no vector". */
#define VP_NO_VECTOR 0xffff

/** A memory region as the guest driver sees it. */
struct vp_cq_region {
    uint64_t xgpa;        /* region_base_xgpa: the driver VM's guest-physical address */
    uint64_t size;        /* bytes */
    uint64_t bar_offset;  /* offset_in_bar_area: where the bytes are in the logical BAR */
};

struct vp_cq_virtq {
    uint32_t index, num;
    uint16_t last_avail_idx;
    uint16_t kick_vector; /* VP_NO_VECTOR: kicks stay with the server (DESIGN 3) */
    uint16_t call_vector; /* doorbell vector for peer id 2 (the driver VM's call) */
    uint64_t desc, avail, used; /* driver VM guest-physical addresses */
};

/** A decoded controlq message, host byte order. */
struct vp_cq_msg {
    uint16_t type;        /* vp_msg_type */
    uint16_t version;     /* VP_MSG_VERSION */
    uint64_t seq;
    uint32_t device_type; /* controlq header: which frontend (0 for memory/features) */
    uint64_t device_id;
    union {
        struct {          /* VP_MSG_MEMORY_INFO */
            uint16_t op;
            uint32_t nregions;  /* <= VP_MAX_REGIONS */
            struct vp_cq_region regions[VP_MAX_REGIONS];
        } mem;
        struct {          /* VP_MSG_DEVICE_INFO */
            uint16_t op;
            uint32_t nvirtqs;   /* <= VP_MAX_VIRTQS */
            struct vp_cq_virtq virtqs[VP_MAX_VIRTQS];
        } dev;
        uint64_t features; /* VP_MSG_FEATURE_BITS */
        struct {          /* every *_ACK */
            uint64_t result;
            uint64_t features;
            uint32_t npos;      /* <= VP_MAX_VIRTQS */
            struct { uint32_t index; uint16_t last_avail_idx; } pos[VP_MAX_VIRTQS];
            char reason[VP_MAX_REASON + 1];
        } ack;
    } u;
};

/**
 * Encode @m into @buf (@buflen bytes). The payload's device_type/device_id of a
 * DEVICE_INFO are taken from the header fields. Returns the encoded length (> 0), or
 * -EINVAL (a count over the limits, unknown type) / -ENOSPC (buffer too small).
 */
int vp_cq_encode(const struct vp_cq_msg *m, void *buf, size_t buflen);

/**
 * Decode and validate @len bytes at @buf (a private copy, see the security model).
 * Checks: len >= header, msg_len == len - header, known type, version, payload
 * length exactly what the counts imply, counts within limits, known op, ACK result
 * in range, reason_len <= VP_MAX_REASON, DEVICE_INFO header and payload naming the
 * same device. Does not check ring addresses against memory (the caller's table).
 * Returns 0, or -EPROTO with a reason in @err.
 */
int vp_cq_decode(const void *buf, size_t len, struct vp_cq_msg *m, vp_error *err);

/** Fill an ACK answering @req: same device, seq and the matching *_ACK type.
 *  @reason may be NULL; it is truncated to VP_MAX_REASON bytes. */
void vp_cq_make_ack(struct vp_cq_msg *ack, const struct vp_cq_msg *req, uint64_t result,
                    const char *reason);

#endif
