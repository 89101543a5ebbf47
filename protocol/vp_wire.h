/*
 * vp_wire.h - constants of the vhost-pci protocol shared by the socket protocol
 * (client <-> server, DESIGN section 4) and the controlq (server <-> guest driver,
 * DESIGN section 5). Values are the spec's (vhost-pci-spec.txt 1.5).
 *
 * libc only.
 */
#ifndef VP_WIRE_H
#define VP_WIRE_H

#include <stdint.h>

/* Message types (spec 1.5, struct vhost_pci_msg_info.msg_type). */
enum vp_msg_type {
    VP_MSG_MEMORY_INFO = 0,
    VP_MSG_MEMORY_INFO_ACK = 1,
    VP_MSG_DEVICE_INFO = 2,
    VP_MSG_DEVICE_INFO_ACK = 3,
    VP_MSG_FEATURE_BITS = 4,
    VP_MSG_FEATURE_BITS_ACK = 5,
    VP_MSG_TYPE_COUNT = 6,
};

/** The only msg_version this implementation speaks (socket and controlq). */
#define VP_MSG_VERSION 1

/* ops of MEMORY_INFO / DEVICE_INFO (spec 1.5). */
enum vp_op {
    VP_OP_ADD = 0,
    VP_OP_DEL = 1,
};

/* ACK results (spec 1.5, struct vhost_pci_ack). */
enum vp_ack_result {
    VP_ACK_ADD_DONE = 0,
    VP_ACK_ADD_FAIL = 1,
    VP_ACK_DEL_DONE = 2,
    VP_ACK_DEL_FAIL = 3,
};

/* Frontend device types (spec 1.5, struct vhost_pci_controlq_hdr). */
enum vp_device_type {
    VP_DEV_NET = 1,
    VP_DEV_BLK = 2,
    VP_DEV_CONSOLE = 3,
    VP_DEV_ENTROPY = 4,
    VP_DEV_BALLOON = 5,
    VP_DEV_SCSI = 8,
};

/* Limits (DESIGN section 4), checked before anything is touched. */
#define VP_MAX_REGIONS 64          /* regions per MEMORY_INFO and per device */
#define VP_MAX_VIRTQS 64           /* virtqueues per DEVICE_INFO */
#define VP_MAX_VRING_NUM 32768     /* virtio 1.0 split ring maximum */
#define VP_MAX_PAYLOAD (64 * 1024) /* socket payload bytes */
#define VP_MAX_FDS (2 * VP_MAX_VIRTQS) /* kick + call per virtqueue */
#define VP_MAX_REASON 255          /* bytes of a failure reason, without NUL */
#define VP_UUID_LEN 16

/* Socket message header (DESIGN section 4): 32 bytes, little-endian.
 *   0 le16 msg_type, 2 le16 msg_version, 4 le32 msg_len, 8 le64 msg_seq,
 *  16 u8 client_uuid[16]                                                        */
#define VP_SOCK_HDR_SIZE 32

/** Name of a message type for logs ("MEMORY_INFO", ...); "UNKNOWN" if out of range. */
const char *vp_msg_type_name(unsigned type);
/** Name of an ACK result ("ADD_DONE", ...); "UNKNOWN" if out of range. */
const char *vp_ack_result_name(uint64_t result);
/** Name of a device type ("net", "blk", ...); "unknown" if not a spec value. */
const char *vp_device_type_name(uint32_t type);
/** True when @type is one of the spec's frontend device types. */
int vp_device_type_valid(uint32_t type);

/* Virtio feature bits that vhost-pci-net knows (virtio 1.0 numbering). */
#define VP_VIRTIO_NET_F_CSUM 0
#define VP_VIRTIO_NET_F_MAC 5
#define VP_VIRTIO_NET_F_MRG_RXBUF 15
#define VP_VIRTIO_NET_F_STATUS 16
#define VP_VIRTIO_F_NOTIFY_ON_EMPTY 24
#define VP_VIRTIO_F_RING_INDIRECT_DESC 28
#define VP_VIRTIO_F_RING_EVENT_IDX 29
#define VP_VHOST_USER_F_PROTOCOL_FEATURES 30
#define VP_VIRTIO_F_VERSION_1 32
#define VP_VIRTIO_F_IN_ORDER 35

/** The feature set of the vhost-pci-net guest driver this project ships: the one
 *  definition used by client, server and guestd (DESIGN section 4, "Feature timing").
 *  VERSION_1, MRG_RXBUF, EVENT_IDX, STATUS, MAC and IN_ORDER (virtio 1.1 2.6.9: the
 *  device uses buffers in the order they were made available; why guestd may promise
 *  it is in guest-driver/device_msgs.c, handle_feature_bits). */
#define VP_NET_FEATURES                                                        \
    ((1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF) |   \
     (1ULL << VP_VIRTIO_F_RING_EVENT_IDX) | (1ULL << VP_VIRTIO_NET_F_STATUS) | \
     (1ULL << VP_VIRTIO_NET_F_MAC) | (1ULL << VP_VIRTIO_F_IN_ORDER))

#endif
