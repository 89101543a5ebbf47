/*
 * vp_localbus.h - the `local` device host's bus (DESIGN section 7): how a server
 * hands vhost-pci devices to a vhost-pci-guestd process with no VM in between.
 * It mirrors what QEMU does for the `qemu` host: plugging a control function
 * (ivshmem-doorbell: control area + eventfds) and memory windows (ivshmem-plain).
 *
 * Transport: UNIX stream socket; the server listens on --local-bus PATH, one guestd
 * connects (it plays the whole device VM). Every message is a fixed 32-byte struct
 * (little-endian), fds attached with SCM_RIGHTS to its first byte:
 *
 *   0 le32 type      (vp_lb_type)
 *   4 le32 slot      control function slot (like a PCI devfn), 0..255
 *   8 le32 devfn     window function (PLUG_WINDOW / UNPLUG_WINDOW)
 *  12 le32 count     fds attached / vectors listed
 *  16 le64 size      bytes (control area or window)
 *  24 le64 arg       type-specific
 *
 * Server -> guestd:
 *   PLUG_CONTROL   slot, size = control area bytes; fds: control area memfd,
 *                  then eventfds [id0 v0 receiveq kick, id0 v1 transmitq kick,
 *                  id1 v0 controlq irq]; count = 4.
 *   PEER_VECTORS   slot, arg = peer id (2); fds: one eventfd per vector 0..count-1
 *                  (replaces the whole list; count 0 = peer gone).
 *   PLUG_WINDOW    slot, devfn, size = window bytes, arg = its offset in the file
 *                  (bytes, page-aligned; nonzero for a piece of a file whose size is
 *                  not a power of two); fds: the peer memory file.
 *   UNPLUG_WINDOW  slot, devfn.
 *   UNPLUG_CONTROL slot.
 * guestd -> server:
 *   HELLO          sent once on connect.
 *   EJECTED        slot, devfn (0xffffffff for the control function): the guest let
 *                  go of it (unmapped); the server's analogue of DEVICE_DELETED.
 *
 * Security model: each side treats the other's messages as untrusted: unknown
 * types, fd counts that differ from the type's, out-of-range slots close the
 * connection after closing every received fd.
 * libc only.
 */
#ifndef VP_LOCALBUS_H
#define VP_LOCALBUS_H

#include <stdint.h>

#include "vp_common.h"

#define VP_LB_MSG_SIZE 32
#define VP_LB_MAX_FDS 253          /* Linux SCM_MAX_FD: fds per sendmsg */
#define VP_LB_MAX_SLOTS 256
#define VP_LB_CONTROL_DEVFN 0xffffffffu

enum vp_lb_type {
    VP_LB_HELLO = 1,
    VP_LB_PLUG_CONTROL = 2,
    VP_LB_PEER_VECTORS = 3,
    VP_LB_PLUG_WINDOW = 4,
    VP_LB_UNPLUG_WINDOW = 5,
    VP_LB_UNPLUG_CONTROL = 6,
    VP_LB_EJECTED = 7,
};

/** One local-bus message, host byte order. */
struct vp_lb_msg {
    uint32_t type, slot, devfn, count;
    uint64_t size, arg;
};

/** Encode @m into its 32 wire bytes (for a non-blocking writer such as vp_outq). */
void vp_lb_encode(const struct vp_lb_msg *m, unsigned char buf[VP_LB_MSG_SIZE]);

/**
 * Send @m with @nfds fds (caller keeps them). Blocking; handles partial writes and
 * EINTR; MSG_NOSIGNAL. Returns 0 or -errno (-EINVAL: nfds > VP_LB_MAX_FDS).
 */
int vp_lb_send(int sock, const struct vp_lb_msg *m, const int *fds, unsigned nfds);

/**
 * Receive one message from a blocking socket (or one that is readable). Only the
 * first byte is waited for without a bound; the rest of a started message must come
 * within a few seconds (blocking or not), else -EPROTO "short message". On success
 * returns 0 and the received fds are owned by the caller (fds[0..*nfds), capacity
 * @maxfds). Returns -ECONNRESET on EOF, -EPROTO (short message, unknown type,
 * fd count not the type's), or -errno; on error every fd received with the message
 * is closed and a reason is in @err. -ENOBUFS: a well-formed message whose fds the
 * kernel could not install (MSG_CTRUNC, e.g. the receiver is at RLIMIT_NOFILE): *@m
 * is decoded (type and slot checked), no fd is returned, and the stream is still in
 * step, so the receiver may refuse just that message.
 */
int vp_lb_recv(int sock, struct vp_lb_msg *m, int *fds, unsigned maxfds, unsigned *nfds,
               vp_error *err);

#endif
