/*
 * device.h - one vhost-pci device as the guest driver sees it: a control function
 * (control area + control queues) plus the memory windows of its logical BAR
 * (DESIGN sections 3, 5, 6; spec 1.5.2, 1.6.2).
 *
 * Life cycle: gd_device_new() on a plugged control function validates the control
 * area header and runs the status handshake (ACKNOWLEDGE|DRIVER, FEATURES_OK, rings
 * initialised, transmitq buffers posted, DRIVER_OK, doorbell id 0 vector 0), reserves
 * bar_size of address space and maps the listed windows that are plugged.
 * gd_device_service() serves the controlq. gd_device_free() releases everything.
 *
 * A device that misbehaves (malformed controlq message, broken ring, bad window
 * table) becomes broken: NEEDS_RESET in device_status, a reason, one log line, its
 * frontends stopped, no more service; other devices carry on. A control area
 * header that cannot be used at all gives FAILED instead (the driver gives up).
 *
 * Single-threaded (the loop thread). libc only.
 */
#ifndef GD_DEVICE_H
#define GD_DEVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "bus.h"
#include "controlq.h"
#include "ctrlarea.h"
#include "datapath.h"
#include "vp_memtable.h"

#define GD_MAX_FRONTENDS 64

struct gd_cp;

/** A window of the logical BAR: the control area's entry plus our mapping state. */
struct gd_window {
    struct gd_ca_window ca;
    bool mapped;
    char error[160];              /* why it could not be mapped; empty: not plugged yet */
};

struct gd_device {
    struct gd_cp *cp;
    unsigned slot;
    uint8_t *ca;                  /* control area (the bus's mapping) */
    uint64_t ca_size;
    struct gd_ca_layout layout;
    uint32_t status;              /* device_status as we last wrote it */
    bool broken;
    char reason[256];             /* why broken (NEEDS_RESET / FAILED), or empty */

    struct gd_cq cq;
    bool cq_ready;

    uint8_t *bar;                 /* reserved logical BAR, bar_size bytes, or NULL */
    uint64_t bar_size;
    struct gd_window win[VP_MAX_WINDOWS];
    unsigned nwin;
    uint32_t generation;          /* of the window table we last applied */
    bool windows_read;

    struct vp_memtable mt;        /* target: offset in the logical BAR */
    struct gd_frontend *fe[GD_MAX_FRONTENDS];
    unsigned nfe;
    uint64_t features;            /* accepted in the last FEATURE_BITS */

    uint64_t messages;            /* controlq messages taken */
    uint64_t acks_sent;

    int irq_watch;                /* loop watch on the bus's interrupt fd, 0: none */
    bool polled;                  /* serviced by the control plane's poller (no irq fd) */
    int retry_timer;              /* loop timer id, 0: none */
    bool stalled;                 /* stall_msg waits for a window */
    unsigned stall_slot;          /* its transmitq buffer, re-posted once handled */
    uint64_t stall_deadline_ns;
    struct vp_cq_msg stall_msg;
    struct vp_cq_msg msg, ack;    /* scratch (large: kept off the stack) */
    uint8_t msgbuf[VP_CA_BUF_SLOT];
};

/**
 * Create the device for control function @slot of @cp's bus and run the handshake.
 * Returns NULL only on ENOMEM; a device whose header is unusable is returned
 * broken (status FAILED) so that it shows in the status with its reason.
 */
struct gd_device *gd_device_new(struct gd_cp *cp, unsigned slot);

/** Stop frontends, release memory and windows, free. The control area mapping is
 *  the bus's and stays. NULL is a no-op. */
void gd_device_free(struct gd_device *dev);

/**
 * Serve the controlq: apply a new window table, take back consumed ACK buffers,
 * handle messages in order (each ACKed on the receiveq), re-post transmitq buffers,
 * ring the server's doorbells, re-arm notifications. Returns the number of messages
 * handled (> 0: there was work).
 */
int gd_device_service(struct gd_device *dev);

/** Window @id was plugged on the bus: map it if the table lists it. */
void gd_device_window_plugged(struct gd_device *dev, struct gd_win_id id);

/** Window @id goes away: drop regions inside it (memory_del hook) and unmap it. */
void gd_device_window_unplug(struct gd_device *dev, struct gd_win_id id);

/** Mark @dev broken (NEEDS_RESET) with a reason; see the file comment. */
void gd_device_break(struct gd_device *dev, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** Write @u as a canonical lower-case UUID string (36 characters + NUL) into @out. */
void gd_uuid_format(const uint8_t u[16], char out[37]);

/** Look a frontend up by type and id; NULL if not in the support list. */
struct gd_frontend *gd_device_frontend(struct gd_device *dev, uint32_t type, uint64_t id);

#endif
