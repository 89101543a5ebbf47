/*
 * resources.c - the resource model (resources.h).
 */
#include "resources.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "server.h"
#include "tenant.h"

void srv_limits_init(struct srv_limits *l)
{
    *l = (struct srv_limits){
        .max_connections = 256,
        .max_connections_per_uid = 64,
        .max_connections_per_client = 32,
        .max_devices = 0,
        .max_devices_per_uid = 64,
        .max_functions_per_client = 8,
        .max_vectors_per_client = 128,
        .max_fds_per_client = 512,
        .max_queue_pairs = 8,
        .max_memory_per_client = 16ULL << 30,
        .max_memory = 64ULL << 30,
        .max_reply_bytes = 1ULL << 20,
        .max_reply_bytes_total = 64ULL << 20,
    };
}

/* "16G", "512M", "64K", "4096": bytes. */
static gboolean parse_size(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    struct srv_limits *l = data;
    char *end = NULL;
    errno = 0;
    guint64 v = g_ascii_strtoull(value, &end, 10);
    unsigned shift = 0;
    if (end && *end) {
        switch (g_ascii_toupper(*end)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        default: shift = 99;
        }
        if (end[1] && !(g_ascii_toupper(end[1]) == 'I' && g_ascii_toupper(end[2]) == 'B' && !end[3]) &&
            !(g_ascii_toupper(end[1]) == 'B' && !end[2]))
            shift = 99;
    }
    if (errno || end == value || shift == 99 || (shift && v > (UINT64_MAX >> shift)) || v == 0) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s: '%s' is not a size (a positive number of bytes, K, M, G or T)", name,
                    value);
        return FALSE;
    }
    v <<= shift;
    guint64 *dst = g_str_equal(name, "--max-memory-per-client") ? &l->max_memory_per_client
                 : g_str_equal(name, "--max-memory") ? &l->max_memory
                 : g_str_equal(name, "--max-reply-bytes") ? &l->max_reply_bytes
                 : &l->max_reply_bytes_total;
    *dst = v;
    return TRUE;
}

GOptionGroup *srv_limits_option_group(struct srv_limits *l)
{
    const GOptionEntry entries[] = {
        { "max-connections", 0, 0, G_OPTION_ARG_INT, &l->max_connections,
          "Client connections open at once, overall (256)", "N" },
        { "max-connections-per-uid", 0, 0, G_OPTION_ARG_INT, &l->max_connections_per_uid,
          "... from one local user (64)", "N" },
        { "max-connections-per-client", 0, 0, G_OPTION_ARG_INT, &l->max_connections_per_client,
          "... with one client_uuid (32)", "N" },
        { "max-devices", 0, 0, G_OPTION_ARG_INT, &l->max_devices,
          "vhost-pci devices overall (default: half the PCI functions of the device host)", "N" },
        { "max-devices-per-uid", 0, 0, G_OPTION_ARG_INT, &l->max_devices_per_uid,
          "Devices (client_uuids) one local user may own (64)", "N" },
        { "max-functions-per-client", 0, 0, G_OPTION_ARG_INT, &l->max_functions_per_client,
          "PCI functions (control + memory windows) of one client; a clone counts twice "
          "while it runs (8)", "N" },
        { "max-vectors-per-client", 0, 0, G_OPTION_ARG_INT, &l->max_vectors_per_client,
          "Live doorbell vectors (call eventfds) of one client (128)", "N" },
        { "max-fds-per-client", 0, 0, G_OPTION_ARG_INT, &l->max_fds_per_client,
          "File descriptors the server holds for one client (512)", "N" },
        { "max-queue-pairs", 0, 0, G_OPTION_ARG_INT, &l->max_queue_pairs,
          "Queue pairs of a NET frontend: at most 2 x N virtqueues (8)", "N" },
        { "max-memory-per-client", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)parse_size,
          "Peer memory one device may expose (whole memory files: 16G)", "SIZE" },
        { "max-memory", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)parse_size,
          "... all devices together (64G; the device VM's 64-bit PCI hole must hold twice "
          "this)", "SIZE" },
        { "max-reply-bytes", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)parse_size,
          "Unread reply bytes of one connection before it is closed (1M)", "SIZE" },
        { "max-reply-bytes-total", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)parse_size,
          "... of all connections; over it the connection with most is closed (64M)", "SIZE" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GOptionGroup *g = g_option_group_new("limits", "Resource limits (each one client's "
                                         "error when reached; nobody else notices):",
                                         "Show the resource-limit options", l, NULL);
    g_option_group_add_entries(g, entries);
    return g;
}

int srv_limits_finish(struct srv_limits *l, unsigned host_functions, vp_error *err)
{
    if (l->max_devices == 0)
        l->max_devices = (gint)MAX(1u, host_functions / 2);
    const struct { const char *name; gint v; } ints[] = {
        { "--max-connections", l->max_connections },
        { "--max-connections-per-uid", l->max_connections_per_uid },
        { "--max-connections-per-client", l->max_connections_per_client },
        { "--max-devices", l->max_devices },
        { "--max-devices-per-uid", l->max_devices_per_uid },
        { "--max-functions-per-client", l->max_functions_per_client },
        { "--max-vectors-per-client", l->max_vectors_per_client },
        { "--max-fds-per-client", l->max_fds_per_client },
        { "--max-queue-pairs", l->max_queue_pairs },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(ints); i++)
        if (ints[i].v <= 0)
            return vp_fail(err, -EINVAL, "%s must be a positive number", ints[i].name);
    if (l->max_functions_per_client < 2)
        return vp_fail(err, -EINVAL, "--max-functions-per-client must be at least 2 (a control "
                       "function and one window)");
    if (l->max_queue_pairs > VP_MAX_VIRTQS / 2)
        return vp_fail(err, -EINVAL, "--max-queue-pairs is at most %d", VP_MAX_VIRTQS / 2);
    return 0;
}

/* ---- per-uid usage ---- */

struct srv_uid_usage *srv_uid_usage(struct vp_server *srv, unsigned uid)
{
    struct srv_uid_usage *u = g_hash_table_lookup(srv->uids, GUINT_TO_POINTER(uid));
    if (!u) {
        u = g_new0(struct srv_uid_usage, 1);
        u->uid = uid;
        g_hash_table_insert(srv->uids, GUINT_TO_POINTER(uid), u);
    }
    return u;
}

void srv_uid_usage_trim(struct vp_server *srv, unsigned uid)
{
    struct srv_uid_usage *u = g_hash_table_lookup(srv->uids, GUINT_TO_POINTER(uid));
    if (u && !u->connections)
        g_hash_table_remove(srv->uids, GUINT_TO_POINTER(uid));
}

/* ---- checks ---- */

int srv_limit_connection(struct vp_server *srv, unsigned uid, vp_error *err)
{
    const struct srv_limits *l = srv->limits;
    if (g_hash_table_size(srv->sessions) >= (guint)l->max_connections)
        return vp_fail(err, -EUSERS, "the server has %u client connections, the most "
                       "--max-connections allows", g_hash_table_size(srv->sessions));
    struct srv_uid_usage *u = g_hash_table_lookup(srv->uids, GUINT_TO_POINTER(uid));
    if (u && u->connections >= (unsigned)l->max_connections_per_uid)
        return vp_fail(err, -EUSERS, "uid %u has %u connections, the most "
                       "--max-connections-per-uid allows", uid, u->connections);
    return 0;
}

int srv_limit_client_connection(struct vp_server *srv, unsigned nconns, vp_error *err)
{
    if (nconns > (unsigned)srv->limits->max_connections_per_client)
        return vp_fail(err, -EUSERS, "this client_uuid has %u connections, the most "
                       "--max-connections-per-client allows", nconns - 1);
    return 0;
}

int srv_limit_device(struct vp_server *srv, unsigned uid, vp_error *err)
{
    const struct srv_limits *l = srv->limits;
    unsigned devices = 0, owned = 0;
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, srv->tenants);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        const struct srv_tenant *t = v;
        devices += t->dev != NULL;
        owned += t->dev && t->owner_uid == uid;
    }
    if (devices >= (unsigned)l->max_devices)
        return vp_fail(err, -ENOSPC, "the server has %u vhost-pci devices, the most "
                       "--max-devices allows", devices);
    if (owned >= (unsigned)l->max_devices_per_uid)
        return vp_fail(err, -EDQUOT, "uid %u owns %u vhost-pci devices, the most "
                       "--max-devices-per-uid allows", uid, owned);
    return 0;
}

/* Bytes of windows of @dev. */
static uint64_t device_memory(const struct srv_device *dev)
{
    uint64_t sum = 0;
    for (int i = 0; dev && i < VP_MAX_WINDOWS; i++)
        if (dev->mem.wins[i].used)
            sum += dev->mem.wins[i].file.size;
    return sum;
}

int srv_limit_memory(struct vp_server *srv, const struct srv_tenant *t, unsigned functions,
                     uint64_t memory, uint64_t extra_memory, vp_error *err)
{
    const struct srv_limits *l = srv->limits;
    if (functions > (unsigned)l->max_functions_per_client)
        return vp_fail(err, -EDQUOT, "this client would use %u PCI functions (control and "
                       "memory windows%s), the most --max-functions-per-client allows is %d",
                       functions, extra_memory ? ", its clone counted" : "",
                       l->max_functions_per_client);
    if (memory > l->max_memory_per_client)
        return vp_fail(err, -EDQUOT, "this client would expose %" PRIu64 " bytes of memory "
                       "files, more than --max-memory-per-client (%" PRIu64 ")", memory,
                       (uint64_t)l->max_memory_per_client);
    uint64_t all = 0;
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, srv->tenants);
    while (g_hash_table_iter_next(&it, &k, &v))
        if (v != t)
            all += device_memory(((struct srv_tenant *)v)->dev);
    if (all + memory + extra_memory < all || all + memory + extra_memory > l->max_memory)
        return vp_fail(err, -ENOSPC, "the server would expose %" PRIu64 " bytes of memory files, "
                       "more than --max-memory (%" PRIu64 ")", all + memory + extra_memory,
                       (uint64_t)l->max_memory);
    return 0;
}

int srv_limit_frontends(struct vp_server *srv, unsigned vectors, unsigned fds, vp_error *err)
{
    const struct srv_limits *l = srv->limits;
    if (vectors > (unsigned)l->max_vectors_per_client)
        return vp_fail(err, -EDQUOT, "this client would hold %u doorbell vectors (call "
                       "eventfds), the most --max-vectors-per-client allows is %d", vectors,
                       l->max_vectors_per_client);
    if (fds > (unsigned)l->max_fds_per_client)
        return vp_fail(err, -EDQUOT, "the server would hold %u fds for this client, the most "
                       "--max-fds-per-client allows is %d", fds, l->max_fds_per_client);
    return 0;
}

int srv_limit_virtqueues(struct vp_server *srv, uint32_t device_type, uint32_t nvirtqs,
                         vp_error *err)
{
    unsigned max = 2u * (unsigned)srv->limits->max_queue_pairs;
    if (device_type == VP_DEV_NET && nvirtqs > max)
        return vp_fail(err, -EINVAL, "a net frontend has at most %u virtqueues (%d queue "
                       "pairs, --max-queue-pairs), not %u", max, srv->limits->max_queue_pairs,
                       nvirtqs);
    return 0;
}
