/*
 * devhost.h - the device-host interface of vhost-pci-server (DESIGN section 7):
 * how the server realises a vhost-pci device in the device VM.
 *
 * A vhost-pci device is a control function (ivshmem-doorbell: the control area and
 * notification eventfds) plus one memory window function (ivshmem-plain) per peer
 * memory file, or per power-of-two piece of a file whose size is not a power of two
 * when the host can map part of a file (windows_at_offsets). The server decides everything (devfns, the logical BAR, the control
 * area's contents); a host only plugs and unplugs functions:
 *   - `local` (devhost_local.c): hands the fds to one vhost-pci-guestd over the
 *     local bus (protocol/vp_localbus.h).
 *   - `qemu` (devhost_qemu.c, h7): QMP chardev-add/device_add/object-add to the device
 *     VM's QEMU, an ivshmem-server endpoint per control function, device_del waiting
 *     for DEVICE_DELETED.
 *
 * Naming: a function is named by its devfn (0..255, PCI device << 3 | function).
 * The server allocates devfns from the host's range [devfn_first, devfn_last] in
 * steps of devfn_step (qemu: 8, one slot per function; local: 1) and never hands out
 * a devfn whose unplug has not completed, nor one the host says is still held
 * (devfn_held: qemu, a function an unplug or an earlier server left in the device VM
 * that its guest has not ejected yet).
 *
 * Ownership: every fd passed in stays owned by the caller; a host that needs an fd
 * beyond the call dup()s it (F_DUPFD_CLOEXEC). Strings are copied.
 *
 * Completions: the asynchronous operations (plug/unplug) report once through a
 * vp_devhost_done_fn, always from the GLib main context, never before the call
 * returns (a host that finishes synchronously defers with g_idle_add). ret is 0 or
 * a negative errno; on failure @reason is a human-readable text that the server
 * puts verbatim into the client's ADD_FAIL/DEL_FAIL reason (e.g. QEMU's QMP error
 * desc). Each host bounds every wait it does itself (device_del -> DEVICE_DELETED,
 * local EJECTED) by the timeout of its config, completing with -ETIMEDOUT.
 * vp_devhost_ops.destroy() drops pending completions WITHOUT calling them (the server
 * calls it last, after it has given up waiting).
 *
 * Threading: everything runs in the server's main thread / default GMainContext.
 */
#ifndef VP_SERVER_DEVHOST_H
#define VP_SERVER_DEVHOST_H

#include <stdbool.h>
#include <stdint.h>

#include "vp_common.h"
#include "vp_wire.h"

struct vp_devhost;  /* one host instance (opaque, defined by each implementation) */

/** Completion of an asynchronous host operation. @reason is "" when ret == 0; it is
 *  valid only during the call. */
typedef void (*vp_devhost_done_fn)(void *opaque, int ret, const char *reason);

/** Configuration handed to vp_devhost_ops.create() (from the command line). */
struct vp_devhost_config {
    const char *local_bus;   /* --local-bus PATH (local host), or NULL */
    const char *qmp;         /* --qmp PATH (qemu host), or NULL */
    unsigned timeout_ms;     /* bound for waits the host does (--ack-timeout) */
};

/** What a control function needs (vp_devhost_ops.plug_control). */
struct vp_devhost_control {
    uint32_t devfn;          /* where to plug it (the device's "slot") */
    int ctrl_fd;             /* control area memfd (sealed: shrink, grow, seal) */
    uint64_t ctrl_size;      /* bytes, a power of two (VP_CA_SIZE) */
    /* Notification eventfds, by ivshmem (peer id, vector), DESIGN section 3:
     * the server's own (id 0): it reads them when the guest rings the doorbell. */
    int rx_kick_fd;          /* id 0 vector 0: control receiveq kick */
    int tx_kick_fd;          /* id 0 vector 1: control transmitq kick */
    int irq_fd;              /* id 1 vector 0: controlq interrupt into the device VM */
    uint32_t nvectors;       /* vectors= of the control function (VP_MAX_VECTORS) */
    uint8_t uuid[VP_UUID_LEN]; /* the driver VM's client_uuid (for names, logs) */
};

/** A device host implementation. All function pointers are required but devfn_held. */
struct vp_devhost_ops {
    const char *name;        /* "local", "qemu": the value of --device-host */
    uint32_t devfn_first, devfn_last, devfn_step;  /* devfn range, see above */
    uint32_t max_vectors;    /* vectors set_peer_vectors can announce (0: VP_MAX_VECTORS) */

    /** Whether @devfn (0..255) is still taken in the device VM by a function nobody
     *  serves any more: qemu, a "zombie" (an unplug of this host that timed out, or a
     *  leftover of an earlier, killed server that the sweep at create could not
     *  remove) whose DEVICE_DELETED has not arrived; plugging there would fail ("PCI:
     *  slot N function 0 not available"). The server's allocator skips such devfns
     *  (server/devfn.c); they become usable once the host has seen them go and has
     *  removed their back ends. NULL (the local host): never. */
    bool (*devfn_held)(struct vp_devhost *h, uint32_t devfn);

    /** Create the host (connect/listen). Returns NULL with a reason in @err. */
    struct vp_devhost *(*create)(const struct vp_devhost_config *cfg, vp_error *err);
    /** Close everything; pending completions are dropped, not called. */
    void (*destroy)(struct vp_devhost *h);

    /** Plug a control function. Completes when the function exists in the device VM
     *  (local: the message was delivered to guestd). */
    void (*plug_control)(struct vp_devhost *h, const struct vp_devhost_control *c,
                         vp_devhost_done_fn done, void *opaque);
    /** Plug memory window @devfn of control function @ctrl_devfn: bytes
     *  [@offset, +@size) of file @fd (@size a power of two, already checked; @offset a
     *  multiple of SRV_PIECE_ALIGN, nonzero only when windows_at_offsets() said yes)
     *  as a BAR. */
    void (*plug_window)(struct vp_devhost *h, uint32_t ctrl_devfn, uint32_t devfn,
                        int fd, uint64_t offset, uint64_t size, vp_devhost_done_fn done,
                        void *opaque);
    /** Whether plug_window can map part of a file (a nonzero offset), i.e. whether a
     *  file whose size is not a power of two can be served as several windows
     *  (issue 13 item 3). qemu: QEMU >= 8.1 (memory-backend-file `offset`), from the
     *  version QEMU reported at connect (false until it did); local: always. */
    bool (*windows_at_offsets)(struct vp_devhost *h);
    /** Unplug a window. Completes when the device VM let go of it (QEMU:
     *  DEVICE_DELETED; local: EJECTED) or the host's timeout expired. */
    void (*unplug_window)(struct vp_devhost *h, uint32_t ctrl_devfn, uint32_t devfn,
                          vp_devhost_done_fn done, void *opaque);
    /** Announce the whole eventfd list of notification peer @peer_id (2: the driver
     *  VM's call fds) of control function @ctrl_devfn: @fds[v] is vector v, -1 a hole
     *  (no eventfd: a host keeps what it had there, or fills it with an eventfd nobody
     *  reads). The server never gives a vector number a different eventfd once it was
     *  announced (numbers are not reused; an unchanged vector is the same open file),
     *  so an append-only host (QEMU 7.2 ivshmem) can take every call. n == 0: no
     *  vectors. Synchronous: 0 or -errno with a reason. */
    int (*set_peer_vectors)(struct vp_devhost *h, uint32_t ctrl_devfn, uint32_t peer_id,
                            const int *fds, unsigned n, vp_error *err);
    /** Unplug a control function (its windows are unplugged first by the server). */
    void (*unplug_control)(struct vp_devhost *h, uint32_t ctrl_devfn,
                           vp_devhost_done_fn done, void *opaque);
};

/** The `local` host (devhost_local.c). */
extern const struct vp_devhost_ops vp_devhost_local_ops;
/** The `qemu` host (devhost_qemu.c, written by h7). Weak: NULL until that file is
 *  linked into the server; main.c then reports "qemu device host not built yet". */
extern const struct vp_devhost_ops vp_devhost_qemu_ops __attribute__((weak));

#endif
