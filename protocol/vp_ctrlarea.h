/*
 * vp_ctrlarea.h - layout of the control area: BAR2 of the control function, a memfd
 * the server owns (DESIGN section 3). All fields little-endian; use the accessors of
 * vp_common.h on the offsets below.
 *
 * The server writes the identity, BAR and window table and the queue layout; the
 * guest driver writes device_status and driver_features and initialises the rings.
 * Each side reads the other's fields once into locals and validates them.
 * libc only.
 */
#ifndef VP_CTRLAREA_H
#define VP_CTRLAREA_H

#include <stdint.h>

#include "vp_bar.h"
#include "vp_common.h"

#define VP_CA_MAGIC "VHOSTPCI"          /* 8 bytes, no NUL */
#define VP_CA_VERSION 1

/* Field offsets. */
#define VP_CA_OFF_MAGIC 0x000           /* u8[8] */
#define VP_CA_OFF_VERSION 0x008         /* le32 */
#define VP_CA_OFF_STATUS 0x00c          /* le32 device_status (driver writes) */
#define VP_CA_OFF_DEVICE_FEATURES 0x010 /* le64 */
#define VP_CA_OFF_DRIVER_FEATURES 0x018 /* le64 (driver writes) */
#define VP_CA_OFF_PEER_UUID 0x020       /* u8[16]: the driver VM's client_uuid */
#define VP_CA_OFF_BAR_SIZE 0x030        /* le64: logical BAR bytes */
#define VP_CA_OFF_NWINDOWS 0x038        /* le32: entries of window[] in use */
#define VP_CA_OFF_GENERATION 0x03c      /* le32: bumped on every window change */
#define VP_CA_OFF_WINDOW 0x040          /* window[VP_MAX_WINDOWS], 24 bytes each */
#define VP_CA_WINDOW_SIZE 24
#define   VP_CA_WIN_PCI_DOMAIN 0        /* le16 */
#define   VP_CA_WIN_BUS 2               /* u8 */
#define   VP_CA_WIN_DEVFN 3             /* u8: names the window's function */
#define   VP_CA_WIN_BAR_OFFSET 8        /* le64 */
#define   VP_CA_WIN_SIZE 16             /* le64: window (file) bytes */
#define VP_CA_OFF_QUEUE (VP_CA_OFF_WINDOW + VP_MAX_WINDOWS * VP_CA_WINDOW_SIZE) /* 0x340 */
#define VP_CA_QUEUE_SIZE 32
#define   VP_CA_Q_SIZE 0                /* le16: ring entries */
#define   VP_CA_Q_DESC_OFF 8            /* le64: offsets in the control area */
#define   VP_CA_Q_AVAIL_OFF 16
#define   VP_CA_Q_USED_OFF 24
#define VP_CA_OFF_BUF_OFF (VP_CA_OFF_QUEUE + 2 * VP_CA_QUEUE_SIZE)  /* 0x380 le64 */
#define VP_CA_OFF_BUF_SIZE (VP_CA_OFF_BUF_OFF + 8)                  /* le64 */
/* Driver reset handshake (added for guest-driver restarts): a driver that takes
 * over a control area it did not initialise itself (device_status != 0, or
 * reset_req != reset_done) resets it first: device_status 0, reset_req =
 * reset_done + 1 (wrapping), doorbell id 0 vector 0, then it waits (bounded) until
 * the server has copied reset_req into reset_done. The server does so once it has
 * stopped using the old rings (it drops its device-side ring state and re-attaches
 * at the next DRIVER_OK, replaying the device state on the controlq). Only then does
 * the driver initialise the rings and run the status handshake. */
#define VP_CA_OFF_RESET_REQ (VP_CA_OFF_BUF_SIZE + 8)   /* 0x390 le32 (driver writes) */
#define VP_CA_OFF_RESET_DONE (VP_CA_OFF_RESET_REQ + 4) /* 0x394 le32 (server writes) */
#define VP_CA_HEADER_END (VP_CA_OFF_RESET_DONE + 4)

/* Queues of the control area (spec 1.2). */
#define VP_CQ_RECEIVEQ 0    /* driver -> device: the driver's ACKs */
#define VP_CQ_TRANSMITQ 1   /* device -> driver: the server's messages */

/* device_status bits (virtio's values). */
#define VP_STATUS_ACKNOWLEDGE 1
#define VP_STATUS_DRIVER 2
#define VP_STATUS_DRIVER_OK 4
#define VP_STATUS_FEATURES_OK 8
#define VP_STATUS_NEEDS_RESET 64
#define VP_STATUS_FAILED 128

/* Default layout the server uses (a power of two: it becomes a BAR). */
#define VP_CA_SIZE (1u << 20)
#define VP_CA_QUEUE_NUM 64
#define VP_CA_BUF_SLOT 4096      /* bytes per controlq buffer; >= VP_CQ_MAX_MSG */

/* Notification ids and vectors (DESIGN section 3). The guest writes
 * (peer << 16) | vector to the Doorbell register (BAR0 + 12). */
#define VP_ID_SERVER 0
#define VP_ID_DEVICE_VM 1
#define VP_ID_DRIVER_VM 2
#define VP_VEC_RECEIVEQ_KICK 0   /* id 0 */
#define VP_VEC_TRANSMITQ_KICK 1  /* id 0 */
#define VP_VEC_CONTROLQ_IRQ 0    /* id 1 */
#define VP_MAX_VECTORS 256       /* the Doorbell decodes 8 bits of vector */
#define VP_IVSHMEM_DOORBELL_REG 12

#endif
