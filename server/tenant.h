/*
 * tenant.h - one driver VM as the server knows it, by its client_uuid (DESIGN
 * section 4: "client_uuid names the driver VM; all connections with the same
 * client_uuid share one vhost-pci device"): its connections, its vhost-pci device
 * and the queue its requests run in.
 *
 * A tenant exists while it has a connection or a device: created when the first
 * connection binds the uuid, freed when the last connection has closed and its
 * device is gone (srv_tenant_release()). The server's table (vp_server.tenants)
 * holds it. Main thread only.
 */
#ifndef VP_SERVER_TENANT_H
#define VP_SERVER_TENANT_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "device.h"
#include "jobs.h"
#include "ratelimit.h"
#include "vp_wire.h"

struct vp_server;

/** One driver VM (client_uuid). */
struct srv_tenant {
    struct vp_server *srv;
    uint8_t uuid[VP_UUID_LEN];
    char uuid_str[37];
    unsigned nconns;                     /* connections bound to this uuid */
    struct srv_device *dev;              /* its vhost-pci device (a reference), or NULL */
    unsigned owner_uid;                  /* the uid that created the device (while dev) */
    struct srv_jobq jobs;                /* its requests (jobs.h) */
    struct srv_ratelimit log;            /* lines this driver VM causes (12.2) */
    bool closing;                        /* last connection gone: DEL + destroy queued */
    guint closing_timer;                 /* bound on that (closing.c) */
};

/** The tenant of @uuid, or NULL. */
struct srv_tenant *srv_tenant_lookup(struct vp_server *srv, const uint8_t *uuid);
/** A connection binds @uuid: the tenant (created when new) with one more connection. */
struct srv_tenant *srv_tenant_bind(struct vp_server *srv, const uint8_t *uuid);
/** Create @t's device for a connection of @uid (its first MEMORY_INFO(ADD); the caller
 *  checked the device limits) and record @uid as its owner. 0, or -errno with a reason
 *  in @err (no device then). */
int srv_tenant_create_device(struct srv_tenant *t, unsigned uid, vp_error *err);
/** Make @nd (a clone; the caller's reference is taken) @t's device and return the
 *  old one (the caller destroys it and drops the reference). Queued jobs stay and
 *  run on @nd. */
struct srv_device *srv_tenant_swap_device(struct srv_tenant *t, struct srv_device *nd);
/** Destroy @t's device: fail its controlq messages, fail every queued job with
 *  @why, unplug, close; then free @t when no connection is left. */
void srv_tenant_destroy_device(struct srv_tenant *t, const char *why);
/** A connection of @t closed (its count drops); frees @t when nothing is left. The
 *  caller does not touch @t afterwards. */
void srv_tenant_unbind(struct srv_tenant *t);
/** Every tenant, sorted by uuid text (for status documents; free with g_list_free). */
GList *srv_tenants_sorted(struct vp_server *srv);

#endif
