/*
 * frontends.h - the frontend devices of a vhost-pci device (the driver VM's virtio
 * devices, spec 1.5 DEVICE_INFO) and their doorbell vectors of notification id 2
 * (DESIGN section 3: one vector per virtqueue with a call eventfd; numbers are never
 * reused while a control function lives, so a new call fd gets a fresh number).
 *
 * A frontend owns its virtqueues' kick and call fds. GLib (GPtrArray of frontends);
 * main thread.
 */
#ifndef VP_SERVER_FRONTENDS_H
#define VP_SERVER_FRONTENDS_H

#include <glib.h>
#include <stdint.h>

#include "layout.h"
#include "vp_controlq.h"
#include "vp_msg.h"

/** One frontend device (a virtio device of the driver VM). */
struct srv_frontend {
    uint32_t device_type;
    uint64_t device_id;
    uint64_t owner_session;              /* session that added it last (0: none) */
    uint32_t nvirtqs;
    struct vp_virtq virtqs[VP_MAX_VIRTQS];  /* owns kick/call fds */
    uint16_t call_vector[VP_MAX_VIRTQS];    /* VP_NO_VECTOR when no call fd */
};

/** Close the frontend's fds and free it (NULL is fine). */
void srv_frontend_free(struct srv_frontend *fe);
/** A copy with duplicated fds (F_DUPFD_CLOEXEC; a failed dup leaves -1). */
struct srv_frontend *srv_frontend_copy(const struct srv_frontend *fe);
/** The frontend @device_id in @list (struct srv_frontend*), or NULL; its index in
 *  *@idx when @idx is not NULL. */
struct srv_frontend *srv_frontends_find(GPtrArray *list, uint64_t device_id, guint *idx);

/**
 * Give each virtqueue of @fe that has a call fd a vector: the one it had in @old
 * (same device, same queue index) when the call fd is the same open file (kcmp),
 * else a fresh number from @vt. Fresh numbers are appended to @fresh (*@nfresh).
 * Returns 0, or -ENOSPC with a reason in @err when @vt has handed out all of its
 * numbers (the fresh ones of this call are given back then).
 */
int srv_frontend_assign_vectors(struct srv_frontend *fe, const struct srv_frontend *old,
                                struct srv_vectors *vt, int *fresh, unsigned *nfresh,
                                vp_error *err);

/** Release the vectors of @fe's device id in @vt that @fe no longer uses. */
void srv_frontend_release_stale_vectors(const struct srv_frontend *fe, struct srv_vectors *vt);

/** The eventfd list of notification id 2 for @vt: @fds[v] = the call fd (borrowed)
 *  of the frontend queue vector v belongs to, -1 for a hole. Returns the count
 *  (srv_vectors_count). */
unsigned srv_frontends_call_fds(GPtrArray *list, const struct srv_vectors *vt,
                                int fds[VP_MAX_VECTORS]);

#endif
