/*
 * clone.c - cloning a vhost-pci device (clone.h).
 *
 * Steps: create the clone (its own control function) with the old device's memory
 * table, features, frontends and vectors; plug its control function and windows; wait
 * for its guest driver's DRIVER_OK; stop every frontend on the old device
 * (DEVICE_INFO(DEL), collecting last_avail_idx); replay memory, features and the
 * frontends (at those positions) on the clone; then hand it to the caller. Only the
 * clone's memory decides whether it works: its other refusals are logged. A failure
 * restarts the old device's frontends where they stopped.
 */
#include "clone.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>

#include "cqmsg.h"

struct srv_clone {
    struct srv_device *dev;              /* the old device (a reference) */
    struct srv_device *nd;               /* the clone (a reference) */
    srv_clone_done_fn done;
    void *opaque;
    unsigned waiting;                    /* plugs / controlq ops outstanding */
    bool plugs_done, driver_ok, dels_done, replay_sent;
    bool failed, ended;
    char reason[300];
    bool old_frontends_deleted;
};

static void clone_progress(struct srv_clone *c);

/* Drop everything; the clone is destroyed unless it was handed over (c->nd NULL). */
static void clone_free(struct srv_clone *c)
{
    c->ended = true;
    if (c->nd) {
        c->nd->on_driver_ok = NULL;
        srv_device_destroy(c->nd, "its clone operation ended");
        srv_device_unref(c->nd);
        c->nd = NULL;
    }
    srv_device_unref(c->dev);
    g_free(c);
}

void srv_clone_cancel(struct srv_clone *c)
{
    if (c)
        clone_free(c);
}

static void readd_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    (void)opaque;  /* fire-and-forget re-add on the old device */
    (void)ack;
    (void)fail;
}

static void clone_fail(struct srv_clone *c, const char *why)
{
    struct srv_device *dev = c->dev;
    char reason[300];
    g_strlcpy(reason, why, sizeof(reason));
    g_warning("device %s: cloning failed: %s", dev->uuid_str, reason);
    /* The old device's frontends were stopped: start them again where they stopped. */
    if (c->old_frontends_deleted && c->nd && !dev->dead) {
        for (guint i = 0; i < c->nd->frontends->len; i++) {
            struct srv_frontend *nfe = g_ptr_array_index(c->nd->frontends, i);
            struct srv_frontend *ofe = srv_device_find_frontend(dev, nfe->device_id, NULL);
            if (!ofe)
                continue;
            for (uint32_t q = 0; q < ofe->nvirtqs; q++)
                ofe->virtqs[q].last_avail_idx = nfe->virtqs[q].last_avail_idx;
            srv_cqmsg_submit_device(&dev->cq, ofe, VP_OP_ADD, readd_acked, NULL);
        }
    }
    srv_clone_done_fn done = c->done;
    void *opaque = c->opaque;
    clone_free(c);
    done(opaque, NULL, reason);
}

static void clone_step_done(struct srv_clone *c, bool failed, const char *why, bool fatal)
{
    if (c->ended)
        return;
    if (failed && fatal && !c->failed) {
        c->failed = true;
        g_strlcpy(c->reason, why, sizeof(c->reason));
    } else if (failed) {
        g_warning("device %s: cloning: %s", c->dev->uuid_str, why);
    }
    if (c->waiting)
        c->waiting--;
    if (c->waiting == 0)
        clone_progress(c);
}

static void clone_plug_done(struct srv_device *nd, void *opaque, int ret, const char *reason)
{
    struct srv_clone *c = opaque;
    (void)nd;
    char why[300];
    g_snprintf(why, sizeof(why), "device host could not plug the cloned vhost-pci device: %s",
               reason);
    clone_step_done(c, ret < 0, why, true);
}

static void clone_driver_ok(struct srv_device *nd, void *opaque)
{
    struct srv_clone *c = opaque;
    (void)nd;
    if (c->ended)
        return;
    c->driver_ok = true;
    if (c->waiting == 0)
        clone_progress(c);
}

static void clone_del_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_clone *c = opaque;
    if (c->ended)
        return;
    if (ack && ack->u.ack.result == VP_ACK_DEL_DONE) {
        struct srv_frontend *fe = srv_device_find_frontend(c->nd, ack->device_id, NULL);
        for (uint32_t p = 0; fe && p < ack->u.ack.npos; p++)
            for (uint32_t q = 0; q < fe->nvirtqs; q++)
                if (fe->virtqs[q].index == ack->u.ack.pos[p].index)
                    fe->virtqs[q].last_avail_idx = ack->u.ack.pos[p].last_avail_idx;
        clone_step_done(c, false, NULL, false);
    } else {
        char why[300];
        g_snprintf(why, sizeof(why), "old device did not stop frontend %" PRIu64 ": %s",
                   ack ? ack->device_id : 0, fail ? fail : srv_cq_ack_reason(ack, "DEL_FAIL"));
        clone_step_done(c, true, why, false);
    }
}

static void clone_replay_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_clone *c = opaque;
    if (c->ended)
        return;
    bool bad = fail || (ack->type != VP_MSG_FEATURE_BITS_ACK &&
                        ack->u.ack.result != VP_ACK_ADD_DONE);
    char why[300];
    g_snprintf(why, sizeof(why), "clone refused %s: %s",
               ack ? vp_msg_type_name(ack->type) : "a message",
               fail ? fail : srv_cq_ack_reason(ack, "ADD_FAIL"));
    /* Only the memory decides whether the clone works; the rest is logged. */
    clone_step_done(c, bad, why, ack && ack->type == VP_MSG_MEMORY_INFO_ACK);
}

static void clone_swap(struct srv_clone *c)
{
    struct srv_device *dev = c->dev, *nd = c->nd;
    g_message("device %s: cloned: BAR 0x%" PRIx64 " -> 0x%" PRIx64 ", control function devfn "
              "0x%x -> 0x%x", dev->uuid_str, dev->mem.bar_size, nd->mem.bar_size, dev->devfn,
              nd->devfn);
    nd->clones = dev->clones + 1;
    nd->on_driver_ok = NULL;
    c->nd = NULL;  /* handed over */
    srv_clone_done_fn done = c->done;
    void *opaque = c->opaque;
    clone_free(c);
    done(opaque, nd, NULL);
}

/* Stop the frontends on the old device, collecting last_avail_idx. */
static bool stop_old_frontends(struct srv_clone *c)
{
    struct srv_device *dev = c->dev;
    c->dels_done = true;
    c->old_frontends_deleted = true;
    if (!dev->cq.driver_ok || dev->cq.broken)
        return false;
    c->waiting++;  /* hold */
    for (guint i = 0; i < dev->frontends->len; i++) {
        c->waiting++;
        srv_cqmsg_submit_device(&dev->cq, g_ptr_array_index(dev->frontends, i), VP_OP_DEL,
                                clone_del_acked, c);
    }
    clone_step_done(c, false, NULL, false);  /* drop the hold */
    return true;
}

/* Initialise the clone like a new device: memory, features, frontends. */
static void replay_on_clone(struct srv_clone *c)
{
    struct srv_device *nd = c->nd;
    c->replay_sent = true;
    c->waiting++;  /* hold */
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    srv_cqmsg_mem(m, VP_OP_ADD);
    for (unsigned i = 0; i < nd->mem.table.n; i++)
        srv_cqmsg_add_region(m, &nd->mem.table.r[i]);
    c->waiting++;
    srv_cq_submit(&nd->cq, m, clone_replay_acked, c);
    g_free(m);
    if (nd->feat_state != FEAT_NONE) {
        c->waiting++;
        srv_cqmsg_submit_features(&nd->cq, nd->features_accepted, clone_replay_acked, c);
    }
    for (guint i = 0; i < nd->frontends->len; i++) {
        c->waiting++;
        srv_cqmsg_submit_device(&nd->cq, g_ptr_array_index(nd->frontends, i), VP_OP_ADD,
                                clone_replay_acked, c);
    }
    clone_step_done(c, false, NULL, false);  /* drop the hold */
}

static void clone_progress(struct srv_clone *c)
{
    if (c->ended)
        return;
    if (c->failed) {
        char why[300];
        g_strlcpy(why, c->reason, sizeof(why));
        clone_fail(c, why);
        return;
    }
    if (!c->plugs_done) {
        c->plugs_done = true;
        srv_device_write_windows(c->nd);
    }
    if (!c->driver_ok)
        return;  /* clone_driver_ok() continues */
    if (!c->dels_done && stop_old_frontends(c))
        return;
    if (!c->replay_sent) {
        replay_on_clone(c);
        return;
    }
    clone_swap(c);
}

/* Plug the clone's windows: the old ones (duplicated fds) at their offsets in the
 * clone's BAR, then the new ones of @add; enter the regions. */
static void plug_windows(struct srv_clone *c, struct srv_clone_mem *add)
{
    struct srv_device *dev = c->dev, *nd = c->nd;
    vp_error err = { "" };
    struct srv_win_pos old[VP_MAX_WINDOWS];
    int oldmap[VP_MAX_WINDOWS], map_old[VP_MAX_WINDOWS], map_new[VP_MAX_WINDOWS];
    unsigned nold = srv_mem_used_windows(&dev->mem, old, oldmap);
    for (unsigned k = 0; k < nold; k++) {
        const struct srv_window *w = &dev->mem.wins[oldmap[k]];
        int fd = fcntl(w->fd, F_DUPFD_CLOEXEC, 3);
        uint64_t off = add ? add->plan->clone_offset[k] : w->bar_offset;
        c->waiting++;
        map_old[k] = srv_device_add_window(nd, &w->file, fd, off, clone_plug_done, c, &err);
        if (map_old[k] < 0)
            clone_step_done(c, true, err.msg, true);
    }
    for (unsigned n = 0; add && n < add->plan->nnew; n++) {
        int fd = srv_mem_take_new_fd(add->mi, add->plan, add->keep, add->nkeep, n);
        c->waiting++;
        map_new[n] = srv_device_add_window(nd, &add->plan->newwin[n], fd,
                                           add->plan->clone_offset[nold + n], clone_plug_done,
                                           c, &err);
        if (map_new[n] < 0)
            clone_step_done(c, true, err.msg, true);
    }
    if (c->failed)
        return;
    for (unsigned i = 0; i < dev->mem.table.n; i++) {
        const struct vp_mt_region *r = &dev->mem.table.r[i];
        unsigned k = 0;
        while (k < nold && oldmap[k] != (int)r->slot)
            k++;
        srv_mem_insert(&nd->mem, r->gpa, r->size, r->file_offset, (unsigned)map_old[k]);
    }
    if (add)
        srv_mem_add_kept(&nd->mem, add->mi, add->plan, add->keep, add->nkeep, map_old, map_new,
                         NULL, NULL);
}

int srv_clone_start(struct srv_clone **out, struct srv_device *dev, struct srv_clone_mem *add,
                    bool renumber, const char *why, srv_clone_done_fn done, void *opaque,
                    vp_error *err)
{
    *out = NULL;
    struct srv_device *nd = srv_device_new(dev->srv, dev->uuid, err);
    if (!nd)
        return -ENOSPC;
    uint64_t bar_size = add ? add->plan->bar_size : dev->mem.bar_size;
    g_info("device %s: %s: cloning with BAR 0x%" PRIx64, dev->uuid_str, why, bar_size);
    struct srv_clone *c = g_new0(struct srv_clone, 1);
    *out = c;
    c->dev = srv_device_ref(dev);
    c->nd = nd;
    c->done = done;
    c->opaque = opaque;
    srv_device_set_bar_size(nd, bar_size);
    nd->features_offered = dev->features_offered;
    nd->features_accepted = dev->features_accepted;
    nd->feat_state = dev->feat_state == FEAT_NONE ? FEAT_NONE : FEAT_SETTLED;
    uint16_t map[VP_MAX_VECTORS];
    if (renumber)
        srv_vectors_compact(&dev->vectors, &nd->vectors, map);
    else
        nd->vectors = dev->vectors;
    for (guint i = 0; i < dev->frontends->len; i++) {
        struct srv_frontend *fe = srv_frontend_copy(g_ptr_array_index(dev->frontends, i));
        for (uint32_t q = 0; renumber && q < fe->nvirtqs; q++)
            if (fe->call_vector[q] != VP_NO_VECTOR)
                fe->call_vector[q] = map[fe->call_vector[q]];
        g_ptr_array_add(nd->frontends, fe);
    }
    nd->on_driver_ok = clone_driver_ok;
    nd->on_driver_ok_opaque = c;

    c->waiting = 1;  /* hold */
    c->waiting++;
    srv_device_plug_control(nd, clone_plug_done, c);
    plug_windows(c, add);
    clone_step_done(c, false, NULL, false);  /* drop the hold */
    return 0;
}
