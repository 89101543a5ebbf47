/*
 * status.h - the status socket of vhost-pci-guestd (--status PATH; the contract in
 * the briefing, "guestd status socket"). A client connects, writes "status\n" and
 * reads one JSON document until EOF.
 *
 * Served from the loop without blocking it (non-blocking sockets, partial writes
 * resumed on POLLOUT), so a slow reader never stalls the data path. Each client has
 * GD_STATUS_TIMEOUT_NS for the whole exchange (request line and reading the answer),
 * then it is closed and its slot freed: GD_STATUS_MAX_CLIENTS clients that connect
 * and never read cannot keep the socket dead. A client beyond the
 * GD_STATUS_MAX_CLIENTS open ones is closed at once (logged).
 * libc only.
 */
#ifndef GD_STATUS_H
#define GD_STATUS_H

#include "controlplane.h"
#include "json.h"
#include "vp_common.h"

#define GD_STATUS_MAX_CLIENTS 16
#define GD_STATUS_TIMEOUT_NS (5 * 1000 * 1000 * 1000ULL)

struct gd_status;

/**
 * Listen on @path (a stale socket file there is replaced) and serve @cp's state.
 * Returns NULL with a reason in @err.
 */
struct gd_status *gd_status_new(struct gd_loop *loop, struct gd_cp *cp, const char *path,
                                vp_error *err);

/** Set the per-client deadline (nanoseconds from accept to close; 0: back to
 *  GD_STATUS_TIMEOUT_NS) for clients accepted from now on. Tests use a short one. */
void gd_status_set_timeout_ns(struct gd_status *st, uint64_t timeout_ns);

/** Close the listener and every client, unlink the socket file. NULL is a no-op. */
void gd_status_free(struct gd_status *st);

/** Render @cp's state as the status document into @j (tests use this directly). */
void gd_status_render(struct gd_cp *cp, struct gd_json *j);

#endif
