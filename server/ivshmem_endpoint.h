/*
 * ivshmem_endpoint.h - the ivshmem-server side for one ivshmem-doorbell device
 * (QEMU docs/specs/ivshmem-spec.rst, "the ivshmem server protocol"; DESIGN sections 3
 * and 7). Debian does not package QEMU's ivshmem-server, and we need to hand out our
 * own shm and eventfds anyway, so the server serves one endpoint per control function.
 *
 * Wire format (server -> QEMU only; QEMU never sends anything): messages of one
 * 8-byte little-endian int64, optionally with one fd attached by SCM_RIGHTS.
 * When QEMU connects (chardev socket in client mode, `server: false`, no reconnect),
 * the endpoint sends at once, in this order:
 *   1. 0            protocol version, no fd
 *   2. own_id       the peer id of the device VM (1), no fd
 *   3. -1 + shm fd  the shared memory: the control area memfd
 *   4. for each peer id in ascending order (0 = server, 1 = the device VM itself,
 *      2 = driver VM), for each of its vectors v in order: id + eventfd of vector v.
 * QEMU reads 1-3 synchronously while holding its main loop (inside device_add), so
 * they must be ready the moment it connects: the endpoint listens from creation and
 * accepts from its GLib source; 4 is handled asynchronously by QEMU.
 * A vector with no fd (a hole, -1) is sent as a "sink" eventfd the endpoint owns, so
 * that later vectors keep their numbers (QEMU numbers a peer's vectors by counting
 * its messages).
 *
 * Vectors are append-only while QEMU is connected. The ivshmem protocol's "peer gone"
 * message (id, no fd) is NEVER sent: QEMU 7.2's close_peer_eventfds() frees the peer's
 * eventfd array without reallocating it, so a later vector for that peer writes into
 * freed memory (seen here: "malloc_consolidate(): unaligned fastbin chunk detected",
 * QEMU dead) and unplugging the device frees it twice. So a vector QEMU holds keeps
 * its eventfd until the device is unplugged; ivshmem_endpoint_set_peer() sends only
 * the vectors beyond those, and refuses (-ENOTSUP) to change one QEMU holds. The
 * server therefore never reuses a vector number for a different call fd on a plugged
 * control function (new fds get fresh numbers; vectors= must leave room for them).
 *
 * QEMU requirements the endpoint enforces: the shm size is a power of two (it becomes
 * BAR2; anything else aborts the device VM's QEMU), at most IVSHMEM_EP_MAX_VECTORS
 * vectors per peer (the device's vectors= must cover them), the device VM's own
 * vectors cannot change while QEMU is connected (QEMU refuses a disconnect of its own
 * id). One QEMU connection at a time; a second one is closed at once. After QEMU
 * disconnects (chardev-remove), a new connection gets the full set again.
 *
 * Ownership: every fd handed in stays the caller's; the endpoint keeps duplicates
 * (F_DUPFD_CLOEXEC) and closes them in ivshmem_endpoint_free(). Concurrency: one
 * endpoint is used from the thread owning its GMainContext.
 */
#ifndef VP_IVSHMEM_ENDPOINT_H
#define VP_IVSHMEM_ENDPOINT_H

#include <glib.h>
#include <stdint.h>

#include "vp_common.h"

#define IVSHMEM_EP_PROTOCOL_VERSION 0
#define IVSHMEM_EP_MAX_PEERS 16          /* ids 0..15 (QEMU allows up to 65535) */
#define IVSHMEM_EP_MAX_VECTORS 256       /* the Doorbell decodes 8 bits of vector */

typedef struct ivshmem_endpoint ivshmem_endpoint;

/** Connection changes: @connected TRUE when QEMU connected and the set-up messages
 *  (1-3 above) were handed to the socket, FALSE when it disconnected. */
typedef void (*ivshmem_endpoint_state_fn)(ivshmem_endpoint *ep, gboolean connected,
                                          void *opaque);

/**
 * Create an endpoint listening on UNIX socket @path (must not exist; removed again by
 * ivshmem_endpoint_free) and serving from @ctx (NULL = thread default).
 * @shm_fd: the shared memory (a duplicate is kept); its size (fstat) must be a
 * non-zero power of two. @own_id: the id QEMU gets (VP_ID_DEVICE_VM), < IVSHMEM_EP_MAX_PEERS.
 * Returns NULL with a reason in @err: bad size/id (EINVAL), path too long, bind/listen
 * errors (e.g. EADDRINUSE when the path exists).
 */
ivshmem_endpoint *ivshmem_endpoint_new(GMainContext *ctx, const char *path, int shm_fd,
                                       unsigned own_id, vp_error *err);

/** Stop listening, close the QEMU connection, remove the socket file, close every
 *  kept fd. NULL is ok. Not from inside the endpoint's own state callback. */
void ivshmem_endpoint_free(ivshmem_endpoint *ep);

void ivshmem_endpoint_set_state_handler(ivshmem_endpoint *ep, ivshmem_endpoint_state_fn fn,
                                        void *opaque);

/**
 * Set the eventfd list of peer @id: @fds[v] is its vector v (duplicated; -1 = a hole),
 * @n of them. Not connected: the list replaces the old one and is sent in full when
 * QEMU connects. Connected: the vectors QEMU already holds must be unchanged (the same
 * open file, compared with kcmp(2)) or -1 / beyond @n (then QEMU keeps the old one,
 * which goes stale); vectors beyond them are sent at once. n == 0 ("peer gone") thus
 * sends nothing to a connected QEMU. Returns 0, or -EINVAL (id or n out of range, a
 * bad fd), -ENOTSUP (a vector QEMU holds would change), -EBUSY (the own id's vectors
 * while QEMU is connected), -errno of dup; nothing changed on error.
 */
int ivshmem_endpoint_set_peer(ivshmem_endpoint *ep, unsigned id, const int *fds, unsigned n,
                              vp_error *err);

/** The endpoint's copy of peer @id's eventfd for @vector (borrowed), or -1. */
int ivshmem_endpoint_peer_fd(const ivshmem_endpoint *ep, unsigned id, unsigned vector);

/** Number of vectors peer @id has now (0 when unknown). */
unsigned ivshmem_endpoint_peer_vectors(const ivshmem_endpoint *ep, unsigned id);

/** Largest vector count of any peer: the vectors= the device needs (at least 1). */
unsigned ivshmem_endpoint_max_vectors(const ivshmem_endpoint *ep);

/** Signal peer @id's @vector: write 1 to its eventfd (e.g. id 1 vector 0 interrupts the
 *  device VM's guest). 0 or -EINVAL (no such vector) / -errno of write. */
int ivshmem_endpoint_notify(const ivshmem_endpoint *ep, unsigned id, unsigned vector);

/** TRUE while a QEMU connection is open. */
gboolean ivshmem_endpoint_connected(const ivshmem_endpoint *ep);

/** Counters for logs and tests. */
typedef struct ivshmem_endpoint_stats {
    uint64_t connections;        /* QEMU connections accepted and served */
    uint64_t rejected;           /* extra connections closed at once */
    uint64_t messages_sent;      /* 8-byte messages fully written */
    uint64_t fds_sent;           /* of which carried an fd */
    uint64_t shm_sent;           /* shm messages written (one per connection) */
} ivshmem_endpoint_stats;

/** Copy the endpoint's counters into @st. */
void ivshmem_endpoint_get_stats(const ivshmem_endpoint *ep, ivshmem_endpoint_stats *st);

/** The socket path (borrowed). */
const char *ivshmem_endpoint_path(const ivshmem_endpoint *ep);

#endif
