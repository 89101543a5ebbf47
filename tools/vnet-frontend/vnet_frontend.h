/*
 * vnet_frontend.h - a userspace virtio-net frontend that plays a driver VM on the
 * host (issue "Data path", item 3): host-only tests, the benchmark and the
 * vhost-pci-frontend tool exchange packets with vhost-pci-guestd through it, with
 * no VM anywhere.
 *
 * A VnetVm is one pretend driver VM: a client_uuid, one connection to a
 * vhost-pci-server (libvhostpci-client, blocking wrappers), and its guest-physical
 * memory: main RAM in a sealed memfd at guest-physical 0, plus regions hot-added and
 * hot-removed later (each its own sealed memfd, as pc-dimm hot-plug would give).
 *
 * A VnetFe is one virtio-net device of that VM, exactly as a virtio-net driver would
 * set it up (virtio 1.0 5.1): split virtqueues 0 (receiveq) and 1 (transmitq) in the
 * VM's RAM, receive buffers posted up front, frames sent with a virtio-net header
 * (12 bytes with VIRTIO_F_VERSION_1 / MRG_RXBUF, else 10), event indexes when
 * negotiated, kicks on the kick eventfds when vring says so, waits on the call
 * eventfds that vhost-pci-guestd rings through the server.
 *  - Receive buffers: mergeable (MRG_RXBUF): one descriptor of rx_buf_size bytes
 *    per chain, a frame may span several (num_buffers); else a chain of a header
 *    descriptor plus one rx_buf_size data descriptor per frame.
 *  - Transmit: a frame takes ceil((header + len) / tx_slot_size) descriptors of
 *    tx_slot_size-byte slots (header first, in the first slot, or in a descriptor of
 *    its own with tx_hdr_separate).
 *
 * Everything is checked: a used entry naming an unknown chain, a used length larger
 * than the buffers, a num_buffers that does not fit, make the call fail with
 * VNET_FE_ERROR and the frontend unusable (tests want to know, not to crash).
 *
 * Threading: one thread per VnetVm (and its frontends). GLib, host side.
 */
#ifndef VNET_FRONTEND_H
#define VNET_FRONTEND_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "vp_msg.h"
#include "vp_vring.h"
#include "vpclient.h"

G_BEGIN_DECLS

/** Error domain of the userspace virtio-net frontend. */
#define VNET_FE_ERROR (vnet_fe_error_quark())
GQuark vnet_fe_error_quark(void);

/** Largest frame the frontend sends or receives (bytes, without header). */
#define VNET_FE_MAX_FRAME 65536
/** Most memory regions of a VnetVm. */
#define VNET_VM_MAX_REGIONS 8
/** Most queue pairs of one frontend (virtio-net multi-queue). */
#define VNET_FE_MAX_PAIRS 16

/** One region of the VM's guest-physical memory. */
typedef struct {
    guint64 gpa, size;            /* bytes */
    int fd;                       /* sealed memfd, owned by the VM */
    guint8 *map;                  /* this process's mapping */
    guint64 used;                 /* bump allocator: bytes handed out from the start */
    gboolean present;             /* announced with MEMORY_INFO(ADD), not deleted */
} VnetRegion;

typedef struct {
    VpClient *client;
    char uuid[37];
    VnetRegion regions[VNET_VM_MAX_REGIONS];
    guint nregions;
    gboolean ram_sent;            /* main RAM announced (first frontend's handshake) */
    guint64 features;             /* accepted in the handshake (0 before) */
    int timeout_ms;
} VnetVm;

/**
 * A driver VM with @ram_size bytes of RAM (a multiple of 1 MiB, at least 1 MiB; the
 * server serves one that is not a power of two only if its device host splits files) at
 * guest-physical 0, connected to the server at @server_path as @uuid (16 bytes, NULL:
 * random). Nothing is sent yet: the first vnet_fe_new() sends the RAM. NULL with
 * @error (connect failure, memfd).
 */
VnetVm *vnet_vm_new(const char *server_path, const guint8 *uuid, gsize ram_size,
                    GError **error);
/** Close the connection, unmap and close every region, free. NULL is a no-op. */
void vnet_vm_free(VnetVm *vm);

/**
 * Hot-add a region of @size bytes (a power of two) at guest-physical @gpa: a new
 * sealed memfd, MEMORY_INFO(ADD), wait for the ACK. Returns the region index, or -1
 * with @error (REJECTED carries the server's reason).
 */
int vnet_vm_add_memory(VnetVm *vm, guint64 gpa, gsize size, GError **error);
/** Hot-remove region @idx (MEMORY_INFO(DEL), wait for the ACK); the mapping stays
 *  until vnet_vm_free (buffers in it must not be in use). FALSE with @error. */
gboolean vnet_vm_del_memory(VnetVm *vm, guint idx, GError **error);
/** Announce region @idx again after vnet_vm_del_memory (MEMORY_INFO(ADD) with the same
 *  file, address and size). FALSE with @error. */
gboolean vnet_vm_readd_memory(VnetVm *vm, guint idx, GError **error);
/** @size bytes aligned to @align (a power of two) from region @idx: its
 *  guest-physical address, or 0 when it does not fit (0 is never handed out). */
guint64 vnet_vm_alloc(VnetVm *vm, guint idx, guint64 size, guint64 align);
/** Pointer to guest-physical [gpa, +len) in this process, NULL when not inside one
 *  region. */
void *vnet_vm_ptr(VnetVm *vm, guint64 gpa, guint64 len);

/** Configuration of a frontend; zero fields take the defaults in brackets. */
typedef struct {
    guint64 device_id;            /* [1] */
    guint16 qsize;                /* ring entries of both queues [256] */
    guint pairs;                  /* queue pairs, 1..VNET_FE_MAX_PAIRS [1]: virtqueues
                                     2i (receiveq) and 2i + 1 (transmitq) of pair i */
    guint64 features;             /* offered [VERSION_1 | MRG_RXBUF | EVENT_IDX] */
    gboolean no_features;         /* offer exactly `features`, even when 0 */
    guint32 rx_buf_size;          /* bytes per receive buffer [2048] */
    guint32 rx_bufs;              /* receive chains posted [qsize] */
    guint32 tx_slot_size;         /* bytes per transmit descriptor [2048] */
    gboolean tx_hdr_separate;     /* header in a descriptor of its own */
    gboolean custom_call;         /* announce dup(call_fd[i]) as queue i's call fd instead
                                     of a fresh eventfd (tests: hostile call fds) */
    int call_fd[2];               /* with custom_call: the caller's fds (it keeps them) */
} VnetFeConfig;

/** Per-queue driver side state (exposed for tests that corrupt rings on purpose). */
typedef struct {
    struct vp_vring_drv vr;
    guint64 desc_gpa, avail_gpa, used_gpa;
    int kick_fd, call_fd;         /* eventfds, owned by the frontend */
    guint64 kicks;                /* kick eventfd writes */
} VnetFeQueue;

typedef struct VnetFe {
    VnetVm *vm;
    VnetFeConfig cfg;
    guint64 features;             /* negotiated */
    guint hdr_len;                /* 10 or 12 */
    gboolean mrg;
    VnetFeQueue q[2];             /* [0] receiveq, [1] transmitq */
    /* receive buffers: rx_bufs chains */
    guint64 rx_gpa, rx_hdr_gpa;
    guint rx_posted;              /* chains in the ring */
    /* transmit slots */
    guint64 tx_gpa, tx_hdr_gpa;   /* slot area, header area (tx_hdr_separate) */
    guint8 *tx_ptr, *tx_hdr_ptr;
    guint tx_nslots;
    gint32 *tx_next;              /* slot chain links (-1: end) */
    guint16 *tx_free;             /* free slot stack */
    guint tx_nfree;
    guint tx_inflight;            /* chains the device has not used yet */
    gboolean started;             /* DEVICE_INFO(ADD) acknowledged */
    gboolean failed;              /* a check failed: unusable */
    char why[256];
    guint rx_part_bufs, rx_part_done; /* a frame partly received (its buffers in flight) */
    gsize rx_part_len;
    gboolean rx_part_too_big;
    guint64 tx_frames, rx_frames, rx_interrupts;
    guint8 *scratch;              /* VNET_FE_MAX_FRAME + header */
    /* Multi-queue: pair[0] is this frontend itself (queues 0 and 1); pair[i] a VnetFe
     * for queues 2i and 2i + 1, used with the same calls (vnet_fe_pair()). */
    struct VnetFe *pair[VNET_FE_MAX_PAIRS];
} VnetFe;

/**
 * Create frontend @cfg in @vm (cfg->pairs queue pairs): rings and buffers in the VM's
 * RAM, DEVICE_INFO(ADD)
 * (the first frontend sends MEMORY_INFO(ADD) of the RAM and FEATURE_BITS before it, as
 * the three-message handshake of spec 1.5.1.1), wait for the ACKs, post the receive
 * buffers. A renegotiation round confirms the accepted bits. NULL with @error.
 */
VnetFe *vnet_fe_new(VnetVm *vm, const VnetFeConfig *cfg, GError **error);

/** Queue pair @i of @fe (0: @fe itself), to send and receive on with the calls
 *  below; NULL when @fe has no such pair. Owned by @fe. */
VnetFe *vnet_fe_pair(VnetFe *fe, guint i);

/** DEVICE_INFO(DEL): wait for DEL_DONE; @rx_idx / @tx_idx (may be NULL) get the
 *  positions the device VM reported. FALSE with @error. */
gboolean vnet_fe_del(VnetFe *fe, guint16 *rx_idx, guint16 *tx_idx, GError **error);

/** Free the frontend's private state and eventfds (its ring memory stays the VM's).
 *  NULL is a no-op. */
void vnet_fe_free(VnetFe *fe);

/**
 * Queue one frame of @len bytes (1..VNET_FE_MAX_FRAME) for transmission. Returns 1
 * when queued, 0 when the transmit ring has no room (try again after
 * vnet_fe_reclaim / waiting), -1 with @error when the frontend failed.
 */
int vnet_fe_try_send(VnetFe *fe, const void *frame, gsize len, GError **error);

/** Like vnet_fe_try_send, waiting up to @timeout_ms for room. 0 on timeout. */
int vnet_fe_send(VnetFe *fe, const void *frame, gsize len, int timeout_ms, GError **error);

/**
 * Take one received frame into @buf (capacity @cap, at least the largest frame
 * expected): 1 with *@len set, 0 when none is complete yet, -1 with @error (a check
 * failed, or the frame is larger than @cap). The buffers go back to the ring at
 * once.
 */
int vnet_fe_try_recv(VnetFe *fe, void *buf, gsize cap, gsize *len, GError **error);

/** Like vnet_fe_try_recv, waiting up to @timeout_ms on the receive call eventfd. */
int vnet_fe_recv(VnetFe *fe, void *buf, gsize cap, gsize *len, int timeout_ms, GError **error);

/** Take back transmit buffers the device used. Returns how many chains, -1 on failure. */
int vnet_fe_reclaim(VnetFe *fe, GError **error);

/** Wait (poll) up to @timeout_ms until the device uses something on queue @qi or the
 *  ring already has used entries: interrupts are enabled while waiting. Returns TRUE
 *  when woken by the call eventfd or used entries, FALSE on timeout. */
gboolean vnet_fe_wait(VnetFe *fe, guint qi, int timeout_ms);

/** Make the transmit buffers live at guest-physical @gpa (tx_nslots * tx_slot_size
 *  bytes, plus 16 per slot for headers, inside one region): waits until every
 *  transmit chain was used (@timeout_ms), then switches. FALSE with @error. */
gboolean vnet_fe_move_tx(VnetFe *fe, guint region, int timeout_ms, GError **error);

/** Bytes of transmit buffer area vnet_fe_move_tx() needs. */
guint64 vnet_fe_tx_area_size(const VnetFe *fe);

G_END_DECLS

#endif
