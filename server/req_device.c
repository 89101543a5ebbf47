/*
 * req_device.c - DEVICE_INFO(ADD/DEL) jobs (req_device.h).
 *
 * Security model: the frontend description comes from a client that may be hostile.
 * vp_decode_device_info() checked counts, fd count and fd indexes;
 * vp_validate_device_info() the device type, queue indexes, sizes and ring
 * alignment; here every ring must lie inside one region of the device's memory table
 * (overflow-proof) before the guest driver hears of it. The job owns every kick/call
 * fd of the request until the frontend takes them; what is left is closed when the
 * job ends. The driver's DEL_DONE positions are passed through only as 16-bit values
 * for the queues it names (at most VP_MAX_VIRTQS).
 */
#include "req_device.h"

#include <errno.h>
#include <inttypes.h>

#include "clone.h"
#include "resources.h"
#include "cqmsg.h"
#include "server.h"
#include "tenant.h"

struct dev_job {
    struct srv_job base;
    struct srv_device *dev;              /* the device it runs on (borrowed) */
    struct vp_device_info *di;           /* owns its fds */
    struct srv_frontend *old_fe;         /* ADD: the frontend it replaces (restored on failure) */
    struct srv_frontend *new_fe;
    int fresh_vec[VP_MAX_VIRTQS];        /* ADD: vectors handed out for it */
    unsigned nfresh;
    struct srv_clone *clone;             /* ADD: moving the device to fresh vectors */
    bool moved;                          /* ... done once already */
};

static struct dev_job *dev_job(struct srv_job *job)
{
    return (struct dev_job *)job;
}

static void dev_job_free(struct srv_job *job)
{
    struct dev_job *dj = dev_job(job);
    srv_clone_cancel(dj->clone);
    if (dj->di) {
        vp_device_info_close_fds(dj->di);
        g_free(dj->di);
    }
    g_free(dj);
}

static void announce(struct srv_device *dev)
{
    vp_error err = { "" };
    if (srv_device_announce_vectors(dev, &err))
        g_warning("device %s: %s", dev->uuid_str, err.msg);
}

/* ------------------------------ DEVICE_INFO(ADD) ------------------------------ */

static void dev_add_rollback(struct srv_job *job)
{
    struct dev_job *dj = dev_job(job);
    struct srv_device *dev = dj->dev;
    guint idx;
    if (dj->new_fe && srv_device_find_frontend(dev, dj->new_fe->device_id, &idx) == dj->new_fe)
        g_ptr_array_remove_index(dev->frontends, idx);  /* frees it */
    dj->new_fe = NULL;
    for (unsigned i = 0; i < dj->nfresh; i++)
        srv_vector_free(&dev->vectors, dj->fresh_vec[i]);
    dj->nfresh = 0;
    if (dj->old_fe) {
        g_ptr_array_add(dev->frontends, dj->old_fe);
        dj->old_fe = NULL;
    }
    announce(dev);
}

static void dev_add_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_job *job = opaque;
    struct dev_job *dj = dev_job(job);
    struct srv_device *dev = dj->dev;
    if (srv_job_ack_failed(job, ack, fail, VP_ACK_ADD_DONE, "the guest driver refused the device",
                           dev_add_rollback))
        return;
    /* Vectors of queues the new info no longer has (with a call fd) go. */
    srv_frontend_release_stale_vectors(dj->new_fe, &dev->vectors);
    srv_frontend_free(dj->old_fe);
    dj->old_fe = NULL;
    dj->new_fe = NULL;
    announce(dev);
    srv_job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
}

/* Every ring of @di inside one region of @dev's table; else fail @job. */
static bool rings_inside(struct srv_job *job, struct srv_device *dev,
                         const struct vp_device_info *di)
{
    for (uint32_t i = 0; i < di->nvirtqs; i++) {
        const struct vp_virtq *q = &di->virtqs[i];
        const struct vp_ring_layout rl = { q->index, q->num, q->desc, q->avail, q->used };
        vp_error err = { "" };
        if (vp_mt_check_ring(&dev->mem.table, &rl, &err) < 0) {
            srv_job_fail(job, "%s", err.msg);
            return false;
        }
    }
    return true;
}

static void dev_add_start(struct srv_job *job);

/* The device is on its new control function (or the move failed): run the request
 * again there. */
static void vectors_moved(void *opaque, struct srv_device *nd, const char *fail)
{
    struct dev_job *dj = opaque;
    struct srv_job *job = &dj->base;
    dj->clone = NULL;
    if (!nd) {
        srv_job_fail(job, "the device's doorbell vectors ran out and moving it to a fresh "
                     "control function failed: %s", fail);
        return;
    }
    struct srv_device *old = srv_tenant_swap_device(job->tenant, nd);
    if (old) {
        srv_device_destroy(old, "replaced by its clone (fresh doorbell vectors)");
        srv_device_unref(old);
    }
    dev_add_start(job);
}

/* Every vector number of the control function was handed out (they are never reused:
 * QEMU's ivshmem cannot take one back). Move the device to a fresh control function
 * with the cloning machinery (issue 9 item 5): its frontends stop, and resume on the
 * clone at the positions they stopped at, with their live vectors renumbered; then
 * this request runs again there. */
static void move_to_fresh_vectors(struct srv_job *job, const char *why)
{
    struct dev_job *dj = dev_job(job);
    struct srv_device *dev = dj->dev;
    vp_error err = { "" };
    unsigned nwin = 0;
    uint64_t mem = 0;
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        if (dev->mem.wins[i].used) {
            nwin += dev->mem.wins[i].npieces;  /* PCI functions */
            mem += dev->mem.wins[i].file.size;
        }
    }
    if (dj->moved) {
        srv_job_fail(job, "%s, even on a fresh control function", why);
        return;
    }
    if (srv_limit_memory(dev->srv, job->tenant, 2 + 2 * nwin, mem, mem, &err) < 0) {
        srv_job_fail(job, "%s; moving the device to a fresh control function: %s", why,
                     err.msg);
        return;
    }
    dj->moved = true;
    g_message("device %s: all %u doorbell vector numbers of its control function are used "
              "up: moving it to a fresh one", dev->uuid_str, dev->vectors.next);
    if (srv_clone_start(&dj->clone, dev, NULL, true, "doorbell vectors used up",
                        vectors_moved, dj, &err) < 0)
        srv_job_fail(job, "%s; cannot move the device to a fresh control function: %s", why,
                     err.msg);
}

/* Vectors @dev holds, the fresh ones just handed out included (those the new info no
 * longer uses are released when the guest driver acknowledges it). */
static unsigned live_vectors(const struct srv_device *dev)
{
    unsigned n = 0;
    for (int v = 0; v < VP_MAX_VECTORS; v++)
        n += dev->vectors.v[v].used;
    return n;
}

/* Fds the server would hold for @dev's client: its windows, and the kick and call fds
 * of its frontends with @fe in place of @old. */
static unsigned held_fds(const struct srv_device *dev, const struct srv_frontend *old,
                         const struct srv_frontend *fe)
{
    unsigned n = 0;
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        n += dev->mem.wins[i].used;
    for (guint i = 0; i < dev->frontends->len; i++) {
        const struct srv_frontend *f = g_ptr_array_index(dev->frontends, i);
        for (uint32_t q = 0; f != old && q < f->nvirtqs; q++)
            n += (f->virtqs[q].kick_fd >= 0) + (f->virtqs[q].call_fd >= 0);
    }
    for (uint32_t q = 0; q < fe->nvirtqs; q++)
        n += (fe->virtqs[q].kick_fd >= 0) + (fe->virtqs[q].call_fd >= 0);
    return n;
}

static void dev_add_start(struct srv_job *job)
{
    struct dev_job *dj = dev_job(job);
    struct srv_device *dev = dj->dev = job->tenant->dev;
    struct vp_device_info *di = dj->di;
    vp_error err = { "" };
    if (srv_job_fail_if_broken(job, &dev->cq) || !rings_inside(job, dev, di))
        return;
    guint idx;
    struct srv_frontend *old = srv_device_find_frontend(dev, di->device_id, &idx);
    if (old && old->device_type != di->device_type) {
        srv_job_fail(job, "device_id %" PRIu64 " is already a %s device", di->device_id,
                     vp_device_type_name(old->device_type));
        return;
    }
    struct srv_frontend *fe = g_new0(struct srv_frontend, 1);
    fe->device_type = di->device_type;
    fe->device_id = di->device_id;
    fe->owner_session = job->session_id ? job->session_id : (old ? old->owner_session : 0);
    fe->nvirtqs = di->nvirtqs;
    for (uint32_t i = 0; i < di->nvirtqs; i++) {
        fe->virtqs[i] = di->virtqs[i];  /* the frontend takes the kick/call fds */
        di->virtqs[i].kick_fd = di->virtqs[i].call_fd = -1;
    }
    int r = srv_frontend_assign_vectors(fe, old, &dev->vectors, dj->fresh_vec, &dj->nfresh,
                                        &err);
    if (r == -ENOSPC && srv_vectors_exhausted(&dev->vectors)) {
        /* The request keeps its fds for when it runs again on the fresh device. */
        for (uint32_t i = 0; i < di->nvirtqs; i++) {
            di->virtqs[i].kick_fd = fe->virtqs[i].kick_fd;
            di->virtqs[i].call_fd = fe->virtqs[i].call_fd;
            fe->virtqs[i].kick_fd = fe->virtqs[i].call_fd = -1;
        }
        srv_frontend_free(fe);
        move_to_fresh_vectors(job, err.msg);
        return;
    }
    if (r < 0 ||
        srv_limit_frontends(dev->srv, live_vectors(dev), held_fds(dev, old, fe), &err) < 0) {
        for (unsigned k = 0; k < dj->nfresh; k++)
            srv_vector_free(&dev->vectors, dj->fresh_vec[k]);
        dj->nfresh = 0;
        srv_frontend_free(fe);
        srv_job_fail(job, "%s", err.msg);
        return;
    }
    if (old)
        dj->old_fe = g_ptr_array_steal_index(dev->frontends, idx);
    g_ptr_array_add(dev->frontends, fe);
    dj->new_fe = fe;
    if (srv_device_announce_vectors(dev, &err) < 0) {
        dev_add_rollback(job);
        srv_job_fail(job, "cannot announce the call eventfds: %s", err.msg);
        return;
    }
    srv_cqmsg_submit_device(&dev->cq, fe, VP_OP_ADD, dev_add_acked, job);
}

/* ------------------------------ DEVICE_INFO(DEL) ------------------------------ */

static void dev_del_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_job *job = opaque;
    struct dev_job *dj = dev_job(job);
    struct srv_device *dev = dj->dev;
    if (srv_job_ack_failed(job, ack, fail, VP_ACK_DEL_DONE,
                           "the guest driver refused to remove the device", NULL))
        return;
    struct vp_ack a;
    srv_job_fill_ack(job, &a, VP_ACK_DEL_DONE, NULL);
    a.npositions = MIN(ack->u.ack.npos, (uint32_t)VP_MAX_VIRTQS);
    for (uint32_t i = 0; i < a.npositions; i++) {
        a.positions[i].index = ack->u.ack.pos[i].index;
        a.positions[i].last_avail_idx = ack->u.ack.pos[i].last_avail_idx;
    }
    guint idx;
    if (srv_device_find_frontend(dev, dj->di->device_id, &idx))
        g_ptr_array_remove_index(dev->frontends, idx);
    srv_vector_free_device(&dev->vectors, dj->di->device_id);
    announce(dev);
    srv_job_finish(job, VP_ACK_DEL_DONE, NULL, &a);
}

static void dev_del_start(struct srv_job *job)
{
    struct dev_job *dj = dev_job(job);
    struct srv_device *dev = dj->dev = job->tenant->dev;
    struct vp_device_info *di = dj->di;
    struct srv_frontend *fe = srv_device_find_frontend(dev, di->device_id, NULL);
    if (!fe || fe->device_type != di->device_type) {
        srv_job_fail(job, "no %s frontend device %" PRIu64 " on this vhost-pci device",
                     vp_device_type_name(di->device_type), di->device_id);
        return;
    }
    if (srv_job_fail_if_broken(job, &dev->cq))
        return;
    srv_cqmsg_submit_device(&dev->cq, fe, VP_OP_DEL, dev_del_acked, job);
}

static const struct srv_job_kind dev_add_kind = {
    .name = "DEVICE_INFO(ADD)", .type = VP_MSG_DEVICE_INFO, .op = VP_OP_ADD,
    .start = dev_add_start, .free = dev_job_free,
};
static const struct srv_job_kind dev_del_kind = {
    .name = "DEVICE_INFO(DEL)", .type = VP_MSG_DEVICE_INFO, .op = VP_OP_DEL,
    .start = dev_del_start, .free = dev_job_free,
};

/* ------------------------------ requests ------------------------------ */

static void dev_job_enqueue(struct srv_tenant *t, struct vp_device_info *di,
                            uint64_t session_id, uint64_t seq)
{
    struct dev_job *dj = g_new0(struct dev_job, 1);
    srv_job_init(&dj->base, di->op == VP_OP_ADD ? &dev_add_kind : &dev_del_kind, t,
                 session_id, seq);
    dj->base.echo_device = true;
    dj->base.device_type = di->device_type;
    dj->base.device_id = di->device_id;
    dj->di = di;
    srv_job_enqueue(&t->jobs, &dj->base);
}

int srv_decode_device_info(struct vp_msg *msg, struct vp_device_info **out, vp_error *err)
{
    struct vp_device_info *di = g_new0(struct vp_device_info, 1);
    vp_device_info_init(di);
    int r = vp_decode_device_info(msg, di, err);
    if (r < 0) {
        g_free(di);
        di = NULL;
    }
    *out = di;
    return r;
}

int srv_req_device_info(const struct srv_req *rq, struct vp_msg *msg, vp_error *err)
{
    struct srv_tenant *t = rq->tenant;
    struct vp_device_info *di;
    int r = srv_decode_device_info(msg, &di, err);
    if (r < 0)
        return r;  /* framing: the caller disconnects; msg still owns the fds */
    uint64_t fail = di->op == VP_OP_DEL ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL;
    vp_error verr = { "" };
    if (vp_validate_device_info(di, &verr) < 0 || vp_validate_device_fds(di, &verr) < 0 ||
        srv_limit_virtqueues(rq->srv, di->device_type, di->nvirtqs, &verr) < 0)
        goto reject;
    if (!t->dev) {
        vp_fail(&verr, -ENODEV, "no vhost-pci device for this client_uuid: send "
                "MEMORY_INFO(ADD) first");
        goto reject;
    }
    if (srv_jobs_full(&t->jobs, &verr))
        goto reject;
    dev_job_enqueue(t, di, rq->session_id, rq->seq);
    return 0;

reject:
    vp_device_info_close_fds(di);
    srv_req_answer(rq, VP_MSG_DEVICE_INFO_ACK, fail, verr.msg, di);
    g_free(di);
    return 0;
}

void srv_req_device_del_implicit(struct srv_tenant *t, const struct srv_frontend *fe)
{
    struct vp_device_info *di = g_new0(struct vp_device_info, 1);
    vp_device_info_init(di);
    di->op = VP_OP_DEL;
    di->device_type = fe->device_type;
    di->device_id = fe->device_id;
    SRV_LOG_PEER(&t->log, t->uuid_str, G_LOG_LEVEL_INFO,
                 "device %s: implicit DEVICE_INFO(DEL) of %s %" PRIu64 " (connection closed)",
                 t->uuid_str, vp_device_type_name(fe->device_type), fe->device_id);
    dev_job_enqueue(t, di, 0, 0);
}
