/*
 * vp_msg.h - vhost-pci socket messages (DESIGN section 4): framing, fd passing,
 * protobuf-c payloads decoded into plain C structs, and their semantic validation.
 *
 * Security model: everything read from the socket comes from another, possibly
 * hostile, process. Lengths, counts and indexes are checked against the limits of
 * vp_wire.h before any array is touched; every fd received with a message that is
 * rejected is closed before the error is returned.
 *
 * Threading: none of these functions keeps global state; a struct may be used by one
 * thread at a time.
 */
#ifndef VP_MSG_H
#define VP_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vp_common.h"
#include "vp_wire.h"

/** The fixed socket header, host byte order (wire: 32 bytes little-endian). */
struct vp_sock_hdr {
    uint16_t type;        /* vp_msg_type */
    uint16_t version;     /* VP_MSG_VERSION */
    uint32_t len;         /* payload bytes, <= VP_MAX_PAYLOAD */
    uint64_t seq;         /* per client, increasing; an ACK carries the seq it answers */
    uint8_t uuid[VP_UUID_LEN]; /* client_uuid: names the driver VM */
};

/** One received message. Owns payload (malloc) and fds until vp_msg_clear(). */
struct vp_msg {
    struct vp_sock_hdr hdr;
    uint8_t *payload;     /* hdr.len bytes, NULL when hdr.len == 0 */
    int fds[VP_MAX_FDS];
    unsigned nfds;
};

/** Free the payload and close every fd still owned by @msg (set to -1). */
void vp_msg_clear(struct vp_msg *msg);

/** Encode @hdr into 32 wire bytes. */
void vp_sock_hdr_encode(const struct vp_sock_hdr *hdr, uint8_t out[VP_SOCK_HDR_SIZE]);
/** Decode and check 32 wire bytes: known type, version VP_MSG_VERSION, len <=
 *  VP_MAX_PAYLOAD. Returns 0, or -EPROTO with a reason in @err. */
int vp_sock_hdr_decode(const uint8_t in[VP_SOCK_HDR_SIZE], struct vp_sock_hdr *hdr,
                       vp_error *err);

/**
 * Send one message: header, @len payload bytes, and @nfds fds attached to the
 * first byte with SCM_RIGHTS. Blocks until everything is written (handles partial
 * writes and EINTR; on a non-blocking socket it polls for POLLOUT). The caller keeps
 * ownership of @fds. hdr->len is ignored and replaced by @len.
 * Returns 0, -EINVAL (len or nfds over the limits), or -errno of the socket
 * (-EPIPE when the peer has gone); MSG_NOSIGNAL is used, so no SIGPIPE.
 */
int vp_msg_send(int sock, const struct vp_sock_hdr *hdr, const void *payload, size_t len,
                const int *fds, unsigned nfds);

/**
 * Incremental receiver for a non-blocking stream socket, so a peer that sends half a
 * message cannot stall a main loop. Owns the fds and payload gathered so far.
 */
struct vp_msg_reader {
    uint8_t hdrbuf[VP_SOCK_HDR_SIZE];
    size_t got;           /* bytes of header + payload received so far */
    struct vp_msg msg;    /* being assembled */
};

/** Initialise an empty reader. */
void vp_reader_init(struct vp_msg_reader *r);
/** Drop a partial message: close its fds, free its payload. The reader is reusable. */
void vp_reader_reset(struct vp_msg_reader *r);

/**
 * Read from @sock until one whole message is assembled or the socket would block.
 * Returns 1 with the message moved into @out (caller owns it: vp_msg_clear()),
 * 0 when more bytes are needed (EAGAIN), or a negative errno with a reason in @err:
 *   -ECONNRESET  the peer closed (EOF), possibly mid-message,
 *   -EPROTO      bad header (unknown type or version, msg_len over the limit),
 *   -EMSGSIZE    more than VP_MAX_FDS fds, or MSG_CTRUNC (fds were truncated),
 *   other        -errno of recvmsg.
 * On any error every fd gathered for the partial message is closed.
 * Also works on a blocking socket (then it returns only 1 or an error).
 */
int vp_reader_read(struct vp_msg_reader *r, int sock, struct vp_msg *out, vp_error *err);

/** Blocking convenience: read exactly one message from a blocking socket, giving up
 *  after @timeout_ms (-1: forever) with -ETIMEDOUT. Same results as vp_reader_read. */
int vp_msg_recv(int sock, struct vp_msg *out, int timeout_ms, vp_error *err);

/* ---- Decoded payloads (plain C, host byte order) ---- */

/** One memory region of MEMORY_INFO. */
struct vp_region {
    uint64_t gpa;         /* guest-physical address of the first byte */
    uint64_t size;        /* bytes, > 0 */
    uint64_t mmap_offset; /* offset inside the file, bytes */
    int fd;               /* owned by the containing struct; -1 when none (DEL) */
};

/** MEMORY_INFO payload. Owns the region fds. */
struct vp_memory_info {
    uint32_t op;          /* VP_OP_ADD / VP_OP_DEL */
    uint32_t nregions;    /* <= VP_MAX_REGIONS */
    struct vp_region regions[VP_MAX_REGIONS];
};

/** One virtqueue of DEVICE_INFO. */
struct vp_virtq {
    uint32_t index;       /* frontend queue index */
    uint32_t num;         /* ring size, power of two, <= VP_MAX_VRING_NUM */
    uint64_t desc, avail, used; /* guest-physical addresses */
    uint16_t last_avail_idx;
    int kick_fd, call_fd; /* owned by the containing struct; -1 when none */
};

/** DEVICE_INFO payload. Owns the kick/call fds. */
struct vp_device_info {
    uint32_t op;          /* VP_OP_ADD / VP_OP_DEL */
    uint32_t device_type; /* vp_device_type */
    uint64_t device_id;
    uint32_t nvirtqs;     /* <= VP_MAX_VIRTQS; 0 for DEL */
    struct vp_virtq virtqs[VP_MAX_VIRTQS];
};

/** Position of one stopped virtqueue (DEVICE_INFO_ACK(DEL_DONE)). */
struct vp_virtq_pos {
    uint32_t index;
    uint16_t last_avail_idx;
};

/** ACK payload (all *_ACK types). */
struct vp_ack {
    uint64_t result;       /* vp_ack_result */
    uint64_t feature_bits; /* FEATURE_BITS_ACK: accepted bits */
    char reason[VP_MAX_REASON + 1]; /* "" unless a failure */
    uint32_t device_type;  /* DEVICE_INFO_ACK only */
    uint64_t device_id;
    uint32_t npositions;   /* <= VP_MAX_VIRTQS */
    struct vp_virtq_pos positions[VP_MAX_VIRTQS];
};

/** Set every fd of @mi / @di to -1 and counts to 0 (does not close). */
void vp_memory_info_init(struct vp_memory_info *mi);
void vp_device_info_init(struct vp_device_info *di);
/** Close every fd owned by @mi / @di (set to -1). */
void vp_memory_info_close_fds(struct vp_memory_info *mi);
void vp_device_info_close_fds(struct vp_device_info *di);

/**
 * Decode @msg's payload. On success the fds named by the payload are MOVED from
 * @msg into the result (msg->fds[i] set to -1). Checks: type matches, protobuf
 * parses, counts within limits, op known, and the fd count equals exactly the fds
 * the payload names, each fd_index used once (DESIGN section 4).
 * Returns 0, or -EPROTO / -EINVAL with a reason; on error @msg still owns its fds
 * (the caller's vp_msg_clear() closes them) and the result owns none.
 * Semantic checks (overlap, file bounds, seals) are vp_validate_*().
 */
int vp_decode_memory_info(struct vp_msg *msg, struct vp_memory_info *out, vp_error *err);
int vp_decode_device_info(struct vp_msg *msg, struct vp_device_info *out, vp_error *err);
int vp_decode_feature_bits(const struct vp_msg *msg, uint64_t *bits, vp_error *err);
int vp_decode_ack(const struct vp_msg *msg, struct vp_ack *out, vp_error *err);

/**
 * Encode and send. @hdr supplies type-independent fields (seq, uuid, version); the
 * type is set by each function. fds of @mi/@di are sent, not closed (caller keeps
 * ownership). Returns 0 or -errno as vp_msg_send(), -EINVAL if the struct is over
 * the limits.
 */
int vp_send_memory_info(int sock, const struct vp_sock_hdr *hdr, const struct vp_memory_info *mi);
int vp_send_device_info(int sock, const struct vp_sock_hdr *hdr, const struct vp_device_info *di);
int vp_send_feature_bits(int sock, const struct vp_sock_hdr *hdr, uint64_t bits);
/** @type is one of the *_ACK types. */
int vp_send_ack(int sock, uint16_t type, const struct vp_sock_hdr *hdr, const struct vp_ack *ack);

/** Encode an ACK of @type as a whole socket message (32-byte header, then payload)
 *  into a new buffer *@out of *@len bytes (free() it), for a non-blocking writer
 *  (vp_outq). Returns 0, -EINVAL (not an ACK type, over the limits) or -ENOMEM. */
int vp_pack_ack(uint16_t type, const struct vp_sock_hdr *hdr, const struct vp_ack *ack,
                uint8_t **out, size_t *len);

/* ---- Semantic validation (DESIGN section 4 limits) ---- */

/** Validation flags. */
enum {
    /** Accept memfds not sealed against shrinking (F_SEAL_SHRINK). Off by default:
     *  a shrink would SIGBUS whoever maps the file. */
    VP_VALIDATE_ALLOW_UNSEALED = 1u << 0,
};

/**
 * Validate an ADD MEMORY_INFO: 1..VP_MAX_REGIONS regions, no zero size, no u64
 * overflow of gpa+size or mmap_offset+size, no two regions overlapping in
 * guest-physical space, each region inside its file (fstat st_size), each fd a
 * regular file or memfd, and memfds sealed with F_SEAL_SHRINK unless
 * VP_VALIDATE_ALLOW_UNSEALED. For DEL: 1..VP_MAX_REGIONS regions, nonzero sizes,
 * no overflow, no fds. Returns 0 or -EINVAL with a reason naming the region.
 * Does not take ownership of anything.
 */
int vp_validate_memory_info(const struct vp_memory_info *mi, unsigned flags, vp_error *err);

/** Check that @b's regions overlap neither each other nor any region of @a: the
 *  memory table's check (vp_mt_check_regions) on MEMORY_INFO regions; @b's regions
 *  must be nonempty and must not wrap. At most VP_MAX_REGIONS each. 0 or -EINVAL. */
int vp_validate_no_overlap(const struct vp_region *a, unsigned na,
                           const struct vp_region *b, unsigned nb, vp_error *err);

/**
 * Check the kick and call fds of a DEVICE_INFO (issue 12.1): each one present must be
 * an eventfd (its /proc/self/fd link is "anon_inode:[eventfd]"): a pipe, socket, file
 * or other fd is refused, since whoever signals it (the device VM's QEMU, guestd)
 * writes 8 bytes into it and must not block or feed another object. Returns 0 or
 * -EINVAL with a reason naming the queue, the fd (kick or call) and what it is.
 * Takes nothing and changes nothing.
 */
int vp_validate_device_fds(const struct vp_device_info *di, vp_error *err);

/**
 * Validate a DEVICE_INFO: known device type, op ADD with 1..VP_MAX_VIRTQS virtqueues
 * (DEL: none), distinct indexes, num a power of two in [1, 32768], ring addresses
 * non-zero, aligned (desc 16, avail 2, used 4) and not overflowing with the ring
 * sizes of num. Returns 0 or -EINVAL with a reason naming the queue.
 */
int vp_validate_device_info(const struct vp_device_info *di, vp_error *err);

#endif
