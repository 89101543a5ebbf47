/*
 * vu_frontend.h - a scripted vhost-user FRONTEND for tests: plays what QEMU 7.2 sends
 * for a virtio-net device (DESIGN section 8, "Facts about stock QEMU 7.2") over a
 * socket, and can send malformed messages.
 *
 * Guest RAM is memfd-backed and sealed (F_SEAL_SHRINK|GROW|SEAL). Regions may share
 * one memfd at different mmap offsets, as QEMU's main RAM does. The frontend's
 * "userspace" addresses are its own numbering (RAM i starts at vu_fe_uaddr(fe, i, 0)),
 * not real pointers: the backend must translate them through the memory table.
 *
 * Waiting: when a reply is expected the frontend polls its socket and, in between,
 * calls the pump function so a backend living in the same thread (e.g. on a GLib main
 * context) can run; every wait is bounded (timeout_ms, default 5000).
 *
 * Errors: functions return 0 or a negative errno with a reason in vu_fe_error().
 * Not for peer input from untrusted sources: test code.
 */
#ifndef VU_FRONTEND_H
#define VU_FRONTEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vhost_user.h"

#define VU_FE_MAX_RAM 8
#define VU_FE_MAX_REGIONS 16

/** QEMU 7.2's known protocol features (VHOST_USER_PROTOCOL_F_* 0..16): what it
 *  accepts of the backend's offer. */
#define VU_FE_QEMU72_PF 0x1ffffULL

struct vu_fe;

typedef void (*vu_fe_pump_fn)(void *opaque);

/** A vring as the frontend lays it out: offsets in RAM 0 (bytes), size, base. */
struct vu_fe_vring {
    uint32_t num;
    uint64_t desc_off, avail_off, used_off;
    uint16_t base;          /* SET_VRING_BASE value */
};

/** Create a frontend for @nqueues virtqueues on the connected socket @sock (taken
 *  over, closed by vu_fe_free). @pump may be NULL. */
struct vu_fe *vu_fe_new(int sock, unsigned nqueues, vu_fe_pump_fn pump, void *pump_opaque);
/** Close the socket, every memfd and eventfd. NULL is ignored. */
void vu_fe_free(struct vu_fe *fe);

/** QEMU reconnecting (-chardev ...,reconnect=N) after a backend restart: continue on
 *  the new connected socket @sock (taken over; the old one is closed). Guest RAM and
 *  regions stay; negotiated state and vring eventfds are dropped, so the init and
 *  start sequences can be replayed. */
void vu_fe_reconnect(struct vu_fe *fe, int sock);

const char *vu_fe_error(const struct vu_fe *fe);
int vu_fe_sock(const struct vu_fe *fe);
/** Protocol features the frontend accepts of the offer (default VU_FE_QEMU72_PF). */
void vu_fe_set_accepted_pf(struct vu_fe *fe, uint64_t pf);
/** Send every ADD_MEM_REG/REM_MEM_REG @n times (QEMU 7.2 with queues=n). Default 1. */
void vu_fe_set_mem_repeat(struct vu_fe *fe, unsigned n);
/** Bound of every wait, milliseconds. */
void vu_fe_set_timeout(struct vu_fe *fe, int timeout_ms);
/** Backend features offered (last GET_FEATURES) and negotiated protocol features. */
uint64_t vu_fe_offered_features(const struct vu_fe *fe);
uint64_t vu_fe_protocol_features(const struct vu_fe *fe);

/* ---- Guest memory ---- */

/** A new sealed memfd of @size bytes as guest RAM. Returns its index or -errno. */
int vu_fe_ram_new(struct vu_fe *fe, uint64_t size);
/** Whether RAM created from now on is sealed against shrinking and growing (default
 *  yes, as QEMU's memory-backend-memfd; DPDK's memory never is). */
void vu_fe_set_ram_sealed(struct vu_fe *fe, bool sealed);
/** The memfd of RAM @ram (owned by the frontend). */
int vu_fe_ram_fd(const struct vu_fe *fe, unsigned ram);
/** The frontend's user address of byte @off of RAM @ram. */
uint64_t vu_fe_uaddr(const struct vu_fe *fe, unsigned ram, uint64_t off);
/** Describe a region (local only; sent by the start script, vu_fe_add_mem_reg or
 *  vu_fe_set_mem_table): RAM @ram bytes [mmap_offset, +size) at guest-physical @gpa.
 *  Returns the region id or -errno. */
int vu_fe_region_new(struct vu_fe *fe, unsigned ram, uint64_t mmap_offset, uint64_t gpa,
                     uint64_t size);

/** Forget region @id locally (the next vu_fe_set_mem_table no longer carries it). */
int vu_fe_region_drop(struct vu_fe *fe, int id);

/* ---- Single messages ---- */

/** Send a request: header (request, flags | version, size) + payload + fds (kept by
 *  the caller). */
int vu_fe_send(struct vu_fe *fe, uint32_t request, uint32_t flags, const void *payload,
               uint32_t size, const int *fds, unsigned nfds);
/** Send raw bytes with @fds attached to the first byte. When the socket buffer is
 *  full the backend is pumped; fails with -ETIMEDOUT after timeout_ms. */
int vu_fe_send_raw(struct vu_fe *fe, const void *buf, size_t len, const int *fds,
                   unsigned nfds);
/** Wait for a reply to @request with exactly @size payload bytes. -ECONNRESET when
 *  the backend closed, -ETIMEDOUT, -EPROTO on a malformed reply. */
int vu_fe_recv_reply(struct vu_fe *fe, uint32_t request, void *payload, uint32_t size);
/** Wait for the REPLY_ACK u64 of @request: 0 when it says success, -EIO when it
 *  says failure. */
int vu_fe_recv_ack(struct vu_fe *fe, uint32_t request);
/** The u64 of the last REPLY_ACK received (0: success, nonzero: the backend's failure
 *  status), or VU_FE_NO_ACK when none arrived since the last vu_fe_clear_ack(). */
#define VU_FE_NO_ACK UINT64_MAX
uint64_t vu_fe_last_ack(const struct vu_fe *fe);
/** Forget the last REPLY_ACK (vu_fe_last_ack() says VU_FE_NO_ACK until the next). */
void vu_fe_clear_ack(struct vu_fe *fe);
/** Wait until the backend closes the connection (EOF). 0 or -ETIMEDOUT. */
int vu_fe_wait_closed(struct vu_fe *fe);
/** Does a reply (or EOF) arrive within @ms? (Pumps meanwhile.) */
bool vu_fe_reply_pending(struct vu_fe *fe, int ms);

int vu_fe_get_u64(struct vu_fe *fe, uint32_t request, uint64_t *v);
/** @need_reply: set NEED_REPLY and wait for the ack. */
int vu_fe_set_u64(struct vu_fe *fe, uint32_t request, uint64_t v, bool need_reply);
int vu_fe_set_state(struct vu_fe *fe, uint32_t request, uint32_t index, uint32_t num,
                    bool need_reply);
/** SET_VRING_ADDR with user addresses. */
int vu_fe_set_vring_addr(struct vu_fe *fe, uint32_t index, uint64_t desc_u, uint64_t avail_u,
                         uint64_t used_u, uint32_t flags);
/** SET_VRING_KICK/CALL/ERR with a new eventfd (the previous one of that slot is
 *  closed), or with the invalid-fd flag when @nofd. */
int vu_fe_set_vring_fd(struct vu_fe *fe, uint32_t request, uint32_t index, bool nofd);
/** The frontend's eventfd of @index for KICK/CALL/ERR (-1 none). */
int vu_fe_vring_fd(const struct vu_fe *fe, uint32_t request, uint32_t index);
int vu_fe_get_vring_base(struct vu_fe *fe, uint32_t index, uint32_t *num);
/** ADD_MEM_REG of region @id (repeated per vu_fe_set_mem_repeat; need_reply when
 *  REPLY_ACK was negotiated, as QEMU 7.2 does). */
int vu_fe_add_mem_reg(struct vu_fe *fe, int id);
/** REM_MEM_REG of region @id (mmap offset 0 and no fd, as QEMU 7.2; @with_fd sends
 *  the RAM fd as QEMU < 7.1 did). The region is forgotten. */
int vu_fe_rem_mem_reg(struct vu_fe *fe, int id, bool with_fd);
/** SET_MEM_TABLE of every live region. */
int vu_fe_set_mem_table(struct vu_fe *fe);

/** Make the ring @v in RAM 0 look like one at position v->base: its avail and used
 *  indexes are v->base (a ring that has moved that far, all buffers used). */
int vu_fe_ring_at(struct vu_fe *fe, const struct vu_fe_vring *v);

/* ---- QEMU 7.2's sequences ---- */

/** Handshake at start: GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
 *  GET_MAX_MEM_SLOTS (if CONFIGURE_MEM_SLOTS), SET_OWNER, GET_FEATURES,
 *  SET_VRING_CALL/SET_VRING_ERR per queue, SET_VRING_ENABLE 1 per queue (twice). */
int vu_fe_qemu72_init(struct vu_fe *fe);
/** The same as QEMU 10.0 sends it with MSI-X: without the SET_VRING_ENABLEs (its
 *  vhost_dev_start enables the rings after the kicks). */
int vu_fe_qemu10_init(struct vu_fe *fe);
/** The guest starts the device: SET_FEATURES(@features | PROTOCOL_FEATURES when
 *  offered), ADD_MEM_REG per live region (or SET_MEM_TABLE without
 *  CONFIGURE_MEM_SLOTS), then per queue SET_VRING_NUM, SET_VRING_BASE,
 *  SET_VRING_ADDR (user addresses of RAM 0), SET_VRING_KICK, SET_VRING_CALL. The
 *  rings' memory is the caller's (vu_fe_ring_at makes a ring look like one at its
 *  base: a backend may check the used index against SET_VRING_BASE). */
int vu_fe_qemu72_start(struct vu_fe *fe, uint64_t features, const struct vu_fe_vring *vrings);
/** Shutdown: GET_VRING_BASE per queue; the answers go to @bases (may be NULL). */
int vu_fe_qemu72_stop(struct vu_fe *fe, uint32_t *bases);

/* ---- DPDK 22.11 virtio-user's sequences (DESIGN "DPDK 22.11 virtio-user") ---- */

/** SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES (REPLY_ACK
 *  only: memory goes as SET_MEM_TABLE). */
int vu_fe_dpdk_init(struct vu_fe *fe);
/** Port start: SET_VRING_CALL per ring, SET_FEATURES, SET_MEM_TABLE (need_reply), per
 *  ring NUM, BASE, ADDR, KICK (the rings' memory is the caller's), then
 *  SET_VRING_ENABLE 1 ring by ring. Returns -EIO when the backend fails the
 *  SET_MEM_TABLE (DPDK: "Failed to start device"). */
int vu_fe_dpdk_start(struct vu_fe *fe, uint64_t features, const struct vu_fe_vring *vrings);
/** Port stop: SET_VRING_ENABLE 0 per ring, then GET_VRING_BASE per ring (answers to
 *  @bases, may be NULL). */
int vu_fe_dpdk_stop(struct vu_fe *fe, uint32_t *bases);

#endif
