/*
 * devhost_qemu_sweep.h - find and remove what an earlier vhost-pci-server left in the
 * device VM's QEMU (issue 12 item 6: server restart; DESIGN sections 3 and 7).
 *
 * A server that was killed (SIGKILL, crash) leaves its functions plugged: the
 * ivshmem-doorbell control functions (their chardevs connected to the dead server's
 * endpoints), the ivshmem-plain windows, their memory backends and add-fd fds. A new
 * server finds them by the ids the qemu device host gives everything it adds
 * (devhost_qemu.c): "vpci-ctl<gen>-<devfn>" / "vpci-win<gen>-<devfn>" devices,
 * "vpci-chr<gen>-<devfn>" chardevs, "vpci-mem<gen>-<devfn>" memory backends, add-fd
 * fds whose opaque text is "vhost-pci vpci-win<gen>-<devfn>" (gen decimal, devfn two
 * hex digits), and removes them the way the host removes its own (device_del waiting
 * for DEVICE_DELETED, then chardev-remove / object-del / remove-fd) before it plugs
 * anything. Nothing else in QEMU is touched. No "peer gone" message is ever sent
 * (ivshmem's heap bug, devhost_qemu.c); the control functions never held an eventfd
 * for the device VM's own id (ditto), so their unplug leaves no stale fd handler.
 *
 * Security model: QEMU is the peer. Its answers (qom-list, query-chardev,
 * query-fdsets) are checked for the type of every member used; names that do not
 * parse exactly as ours are ignored.
 */
#ifndef VP_SERVER_DEVHOST_QEMU_SWEEP_H
#define VP_SERVER_DEVHOST_QEMU_SWEEP_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "qmp.h"
#include "vp_common.h"

/** A function an earlier server left that did not go within the bound (its guest did
 *  not eject it): still in QEMU, with what it still has there. */
struct qh_leftover {
    bool control;               /* ivshmem-doorbell (else an ivshmem-plain window) */
    uint32_t devfn;             /* PCI slot << 3 | function */
    char dev_id[40];            /* "vpci-ctl<gen>-<devfn>" / "vpci-win<gen>-<devfn>" */
    char backend_id[40];        /* its chardev / memory backend id */
    bool backend;               /* that back end is still in QEMU */
    int64_t fdset_id, qemu_fd;  /* window: its add-fd fd in QEMU, -1 when none */
};

/** What qh_sweep_leftovers() found and did. */
struct qh_sweep {
    unsigned max_gen;           /* highest <gen> in any id found (0: none): ids the new
                                   server makes must use larger ones */
    unsigned removed;           /* functions removed (DEVICE_DELETED seen) */
    unsigned backends_removed;  /* chardevs + memory backends + fds removed */
    GArray *zombies;            /* struct qh_leftover: device_del sent, DEVICE_DELETED
                                   not seen within the bound; owned, g_array_unref */
};

/** Remove every function, chardev, memory backend and add-fd fd with our ids from the
 *  QEMU behind @qmp (connected or connecting; the call drives its GMainContext, so it
 *  must not run inside a callback of @qmp nor while another thread owns that context:
 *  the server calls it from the device host's create(), before its main loop runs).
 *  All device_dels are in flight at once, each bounded by @timeout_ms (ms) for its
 *  DEVICE_DELETED; a function that does not go becomes a zombie in @out (its back end
 *  left in QEMU). A QMP command that fails is logged and the sweep goes on.
 *  Fills @out (zombies always allocated). Returns 0, or a negative errno with a reason
 *  in @err when QEMU could not even be asked (QMP not ready: -ECONNRESET, -ETIMEDOUT). */
int qh_sweep_leftovers(qmp_client *qmp, unsigned timeout_ms, struct qh_sweep *out,
                       vp_error *err);

/** Parse one of our ids: "vpci-" KIND <gen, decimal> "-" <devfn, 2 hex digits>, KIND
 *  one of "ctl", "win", "chr", "mem". Returns true and fills @kind (4 bytes with the
 *  NUL), @gen, @devfn; false for any other text. */
bool qh_parse_id(const char *id, char kind[4], unsigned *gen, uint32_t *devfn);

#endif
