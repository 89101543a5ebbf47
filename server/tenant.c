/*
 * tenant.c - driver VMs by client_uuid (tenant.h).
 */
#include "tenant.h"

#include <errno.h>
#include <uuid/uuid.h>

#include "server.h"

struct srv_tenant *srv_tenant_lookup(struct vp_server *srv, const uint8_t *uuid)
{
    char s[37];
    uuid_unparse_lower(uuid, s);
    return g_hash_table_lookup(srv->tenants, s);
}

struct srv_tenant *srv_tenant_bind(struct vp_server *srv, const uint8_t *uuid)
{
    struct srv_tenant *t = srv_tenant_lookup(srv, uuid);
    if (!t) {
        t = g_new0(struct srv_tenant, 1);
        t->srv = srv;
        memcpy(t->uuid, uuid, VP_UUID_LEN);
        uuid_unparse_lower(uuid, t->uuid_str);
        srv_jobq_init(&t->jobs, srv, t->uuid_str, &t->log);
        g_hash_table_insert(srv->tenants, t->uuid_str, t);
    }
    t->nconns++;
    return t;
}

/* Free @t when it has neither a connection nor a device. */
static void release_if_unused(struct srv_tenant *t)
{
    if (t->nconns || t->dev)
        return;
    srv_jobq_stop(&t->jobs);
    srv_jobs_fail_all(&t->jobs, "the driver VM has gone");
    if (t->closing_timer)
        g_source_remove(t->closing_timer);
    g_hash_table_remove(t->srv->tenants, t->uuid_str);
    g_free(t);
}

int srv_tenant_create_device(struct srv_tenant *t, unsigned uid, vp_error *err)
{
    t->dev = srv_device_new(t->srv, t->uuid, err);
    if (!t->dev)
        return -ENOSPC;
    t->owner_uid = uid;
    return 0;
}

struct srv_device *srv_tenant_swap_device(struct srv_tenant *t, struct srv_device *nd)
{
    struct srv_device *old = t->dev;
    t->dev = nd;
    return old;
}

void srv_tenant_destroy_device(struct srv_tenant *t, const char *why)
{
    struct srv_device *dev = t->dev;
    if (!dev)
        return;
    if (t->closing_timer)
        g_source_remove(t->closing_timer);
    t->closing_timer = 0;
    srv_jobq_stop(&t->jobs);
    srv_device_stop(dev, why);               /* completions see the jobs still there */
    srv_jobs_fail_all(&t->jobs, why);
    t->dev = NULL;
    srv_device_destroy(dev, why);
    srv_device_unref(dev);
    t->closing = false;
    t->jobs.stopped = false;                 /* a new device may come */
    release_if_unused(t);
}

void srv_tenant_unbind(struct srv_tenant *t)
{
    if (t->nconns)
        t->nconns--;
    release_if_unused(t);
}

static gint cmp_tenant(gconstpointer a, gconstpointer b)
{
    const struct srv_tenant *x = a, *y = b;
    return strcmp(x->uuid_str, y->uuid_str);
}

GList *srv_tenants_sorted(struct vp_server *srv)
{
    return g_list_sort(g_hash_table_get_values(srv->tenants), cmp_tenant);
}
