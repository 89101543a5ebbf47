/*
 * resources.h - the server's resource model (issue 12.4/12.5): what one client, one
 * local user (uid) and the server as a whole may hold, each an option with a default
 * that no legitimate driver VM reaches. Going past a limit gives that client a clear
 * error naming the limit and its option; nobody else notices.
 *
 *   per connection   unread reply bytes (--max-reply-bytes)
 *   per client_uuid  connections, PCI functions (control + windows, a clone counted
 *                    twice while it runs), live doorbell vectors, fds held, peer memory
 *                    exposed, virtqueues of a NET frontend (2 x --max-queue-pairs)
 *   per uid          connections, devices (client_uuids with a device)
 *   overall          connections, devices, peer memory exposed, unread reply bytes
 *
 * Checks read the state the server keeps anyway (tenants and their devices, the
 * sessions' count) plus a per-uid connection count. Callers include this header (the
 * server struct holds the limits by pointer). Main thread.
 */
#ifndef VP_SERVER_RESOURCES_H
#define VP_SERVER_RESOURCES_H

#include <glib.h>
#include <stddef.h>
#include <stdint.h>

#include "vp_common.h"

struct vp_server;
struct srv_tenant;

/** The limits (options). */
struct srv_limits {
    gint max_connections;                /* open client connections overall (256) */
    gint max_connections_per_uid;        /* ... of one local user (64) */
    gint max_connections_per_client;     /* ... of one client_uuid (32) */
    gint max_devices;                    /* devices overall (0: the host's functions / 2) */
    gint max_devices_per_uid;            /* client_uuids with a device, per user (64) */
    gint max_functions_per_client;       /* PCI functions of one client (8) */
    gint max_vectors_per_client;         /* live doorbell vectors of one device (128) */
    gint max_fds_per_client;             /* fds held for one client (512) */
    gint max_queue_pairs;                /* a NET frontend has at most 2x virtqueues (8) */
    guint64 max_memory_per_client;       /* bytes of peer memory one device exposes (16 GiB) */
    guint64 max_memory;                  /* ... all devices together (64 GiB) */
    guint64 max_reply_bytes;             /* unread ACK bytes of one connection (1 MiB) */
    guint64 max_reply_bytes_total;       /* ... of all connections together (64 MiB) */
};

/** Set the defaults. */
void srv_limits_init(struct srv_limits *l);

/** The --max-* options, as a group of the server's GOptionContext ("--help-limits"
 *  lists them; every option is also accepted without it). */
GOptionGroup *srv_limits_option_group(struct srv_limits *l);

/** After parsing: derive what depends on the device host (@host_functions: devfns it
 *  can plug) and check every value is positive. 0 or -EINVAL with a reason. */
int srv_limits_finish(struct srv_limits *l, unsigned host_functions, vp_error *err);

/* ---- per-uid usage ---- */

/** What one local user holds (its devices are counted from the tenants). */
struct srv_uid_usage {
    unsigned uid;
    unsigned connections;
};

/** The usage of @uid (created empty on first use). */
struct srv_uid_usage *srv_uid_usage(struct vp_server *srv, unsigned uid);
/** Forget @uid's entry when it holds nothing. */
void srv_uid_usage_trim(struct vp_server *srv, unsigned uid);

/* ---- checks: 0, or -EUSERS / -ENOSPC / -EDQUOT / -EINVAL with a reason ---- */

/** A new connection from @uid (at accept). */
int srv_limit_connection(struct vp_server *srv, unsigned uid, vp_error *err);
/** A client_uuid with @nconns connections, the new one included (when it binds). */
int srv_limit_client_connection(struct vp_server *srv, unsigned nconns, vp_error *err);
/** A device for client @t of @uid (its first MEMORY_INFO(ADD)). */
int srv_limit_device(struct vp_server *srv, unsigned uid, vp_error *err);
/** Client @t would hold @functions PCI functions, @memory bytes of windows (its whole
 *  memory afterwards; @extra_memory more for the whole server, e.g. a clone). */
int srv_limit_memory(struct vp_server *srv, const struct srv_tenant *t, unsigned functions,
                     uint64_t memory, uint64_t extra_memory, vp_error *err);
/** Client @t would hold @vectors live vectors and @fds fds. */
int srv_limit_frontends(struct vp_server *srv, unsigned vectors, unsigned fds, vp_error *err);
/** A NET frontend with @nvirtqs virtqueues (other types: always 0). */
int srv_limit_virtqueues(struct vp_server *srv, uint32_t device_type, uint32_t nvirtqs,
                         vp_error *err);

#endif
