/*
 * ctrlarea.h - reading and validating the control area (DESIGN section 3,
 * protocol/vp_ctrlarea.h) from the guest driver's side.
 *
 * The server writes the header, the window table and the queue layout; the driver
 * reads each field once into the structs below and validates the copies. Pure
 * functions over a mapped area: no bus, no loop. libc only.
 */
#ifndef GD_CTRLAREA_H
#define GD_CTRLAREA_H

#include <stdint.h>

#include "vp_bar.h"
#include "vp_common.h"
#include "vp_ctrlarea.h"

/** Largest logical BAR the driver reserves address space for (64 TiB). */
#define GD_MAX_BAR_SIZE (1ULL << 46)

/** One control queue's place in the control area (offsets in bytes). */
struct gd_ca_queue {
    uint32_t size;                /* ring entries, a power of two */
    uint64_t desc_off, avail_off, used_off;
};

/** The validated, private copy of the control area header. */
struct gd_ca_layout {
    uint64_t ca_size;             /* bytes of the mapped area */
    uint32_t version;
    uint64_t device_features;     /* local feature bits the device offers */
    uint8_t peer_uuid[16];        /* the driver VM's client_uuid */
    uint64_t bar_size;            /* logical BAR bytes */
    struct gd_ca_queue q[2];      /* [VP_CQ_RECEIVEQ], [VP_CQ_TRANSMITQ] */
    uint64_t buf_off, buf_size;   /* buffer pool */
    unsigned ntx;                 /* transmitq buffers to post: min(q[1].size, VP_CA_QUEUE_NUM) */
    unsigned nack;                /* ACK buffers: min(q[0].size, pool slots - ntx) */
};

/** True when the area starts with VP_CA_MAGIC (it is a vhost-pci control area). */
int gd_ca_has_magic(const void *ca, uint64_t ca_size);

/**
 * Read and validate the header of the @ca_size-byte control area at @ca: magic,
 * version, bar_size (a power of two, VP_BAR_MIN_SIZE..GD_MAX_BAR_SIZE), nwindows,
 * both queues (size a power of two up to VP_MAX_VRING_NUM; desc/avail/used aligned
 * to 16/2/4 bytes as virtio 1.0 2.6 requires, inside the area, not overlapping the
 * header, each other or the buffer pool), the buffer pool (inside the area, not overlapping the header, room
 * for at least ntx + 1 slots of VP_CA_BUF_SLOT bytes).
 * Returns 0, or -EPROTO with a reason in @err.
 */
int gd_ca_read_layout(const void *ca, uint64_t ca_size, struct gd_ca_layout *l, vp_error *err);

/** One window table entry, validated. */
struct gd_ca_window {
    uint16_t domain;
    uint8_t bus, devfn;
    uint64_t bar_offset;          /* bytes from the start of the logical BAR */
    uint64_t size;                /* bytes, a power of two >= 4 KiB */
};

struct gd_ca_windows {
    uint32_t generation;
    uint32_t n;
    struct gd_ca_window w[VP_MAX_WINDOWS];
};

/** The generation field (one acquire load). */
uint32_t gd_ca_generation(const void *ca);

/**
 * Read the window table consistently: generation, table, generation again (the
 * server bumps it after rewriting the table). Validates every entry against
 * @bar_size: size a power of two >= 4096, bar_offset a multiple of size, inside the
 * BAR, no overlap, no function listed twice.
 * Returns 0, -EAGAIN (the table changed while being read: try again) or -EPROTO
 * with a reason in @err.
 */
int gd_ca_read_windows(const void *ca, uint64_t bar_size, struct gd_ca_windows *out,
                       vp_error *err);

/** device_status: read once / write (with a release barrier before the store, so
 *  everything the driver wrote before is visible to the device first). */
uint32_t gd_ca_get_status(const void *ca);
void gd_ca_set_status(void *ca, uint32_t status);

/** Write driver_features. */
void gd_ca_set_driver_features(void *ca, uint64_t features);

#endif
