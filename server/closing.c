/*
 * closing.c - implicit DELs and the destroy after the last connection (closing.h).
 */
#include "closing.h"

#include "req_device.h"
#include "req_memory.h"
#include "server.h"
#include "tenant.h"

/* The destroy job: runs after everything queued before it. A connection that came
 * back meanwhile keeps the device. */
static void destroy_start(struct srv_job *job)
{
    struct srv_tenant *t = job->tenant;
    if (t->nconns > 0) {
        t->closing = false;
        if (t->closing_timer)
            g_source_remove(t->closing_timer);
        t->closing_timer = 0;
        srv_job_finish(job, VP_ACK_DEL_DONE, NULL, NULL);
        return;
    }
    srv_tenant_destroy_device(t, "its last client connection closed");  /* fails @job too */
}

static void destroy_free(struct srv_job *job)
{
    g_free(job);
}

static const struct srv_job_kind destroy_kind = {
    .name = "destroy", .type = VP_MSG_DEVICE_INFO, .op = VP_OP_DEL, .internal = true,
    .start = destroy_start, .free = destroy_free,
};

static gboolean closing_deadline(gpointer data)
{
    struct srv_tenant *t = data;
    t->closing_timer = 0;
    if (t->nconns == 0) {
        g_warning("device %s: its queued requests did not finish within the ack timeout "
                  "after the last connection closed", t->uuid_str);
        srv_tenant_destroy_device(t, "its last client connection closed");
    } else {
        t->closing = false;
    }
    return G_SOURCE_REMOVE;
}

void srv_closing_session_closed(struct srv_tenant *t, uint64_t session_id)
{
    struct srv_device *dev = t->dev;
    srv_tenant_unbind(t);  /* frees @t only when it has no device */
    if (!dev)
        return;
    /* A connection that closes without DEVICE_INFO(DEL) means DEL for its frontends. */
    for (guint i = 0; i < dev->frontends->len; i++) {
        struct srv_frontend *fe = g_ptr_array_index(dev->frontends, i);
        if (fe->owner_session != session_id)
            continue;
        fe->owner_session = 0;
        if (!dev->cq.driver_ok || dev->cq.broken)
            continue;  /* the driver never saw it / cannot answer: destroy covers it */
        srv_req_device_del_implicit(t, fe);
    }
    if (t->nconns > 0 || t->closing)
        return;
    t->closing = true;
    if (dev->cq.driver_ok && !dev->cq.broken)
        srv_req_memory_del_all(t);  /* the driver stops using the memory before unplug */
    struct srv_job *job = g_new0(struct srv_job, 1);
    srv_job_init(job, &destroy_kind, t, 0, 0);
    srv_job_enqueue(&t->jobs, job);
    t->closing_timer = g_timeout_add(t->srv->timeout_ms + 100, closing_deadline, t);
}
