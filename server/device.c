/*
 * device.c - a vhost-pci device's life cycle and plugging (device.h).
 *
 * Security model: nothing here parses peer input; the control area and controlq are
 * cq_dev.c's, the memory table windows.c's. Fds handed to the device host stay ours
 * (the host duplicates what it keeps); a plug that completes after the device was
 * destroyed is taken back at once.
 */
#include "device.h"

#include <errno.h>
#include <inttypes.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <glib-unix.h>
#include <uuid/uuid.h>

#include "cqmsg.h"
#include "devfn.h"
#include "server.h"

/* ------------------------------ controlq hooks ------------------------------ */

static gboolean service_idle(gpointer data)
{
    struct srv_device *dev = data;
    if (!dev->dead)
        srv_cq_service(&dev->cq);
    srv_device_unref(dev);
    return G_SOURCE_REMOVE;
}

/* At the default priority, like the clients' sockets: internal work gets its turn
 * in every iteration however busy a client keeps its socket (issue 12.2). */
static void cq_schedule(void *opaque)
{
    g_idle_add_full(G_PRIORITY_DEFAULT, service_idle, srv_device_ref(opaque), NULL);
}

static void cq_driver_ok(void *opaque, bool replay)
{
    struct srv_device *dev = opaque;
    if (replay)
        srv_cqmsg_replay(&dev->cq, dev->uuid_str, &dev->mem, dev->feat_state != FEAT_NONE,
                         dev->features_accepted, dev->frontends);
    if (dev->on_driver_ok) {
        void (*cb)(struct srv_device *, void *) = dev->on_driver_ok;
        dev->on_driver_ok = NULL;
        cb(dev, dev->on_driver_ok_opaque);
    }
}

static const struct srv_cq_hooks cq_hooks = {
    .driver_ok = cq_driver_ok,
    .schedule = cq_schedule,
};

static gboolean on_kick(gint fd, GIOCondition cond, gpointer data)
{
    struct srv_device *dev = data;
    (void)cond;
    uint64_t v;
    while (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        ;  /* drain */
    if (!dev->dead) {
        srv_device_ref(dev);
        srv_cq_service(&dev->cq);
        srv_device_unref(dev);
    }
    return G_SOURCE_CONTINUE;
}

/* ------------------------------ life cycle ------------------------------ */

static int new_eventfd(void)
{
    return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

struct srv_device *srv_device_new(struct vp_server *srv, const uint8_t *uuid, vp_error *err)
{
    struct srv_device *dev = g_new0(struct srv_device, 1);
    dev->srv = srv;
    dev->refs = 1;
    memcpy(dev->uuid, uuid, VP_UUID_LEN);
    uuid_unparse_lower(uuid, dev->uuid_str);
    dev->ca.fd = dev->rx_kick_fd = dev->tx_kick_fd = dev->irq_fd = -1;
    srv_mem_init(&dev->mem);
    dev->frontends = g_ptr_array_new_with_free_func((GDestroyNotify)srv_frontend_free);
    dev->vectors.max = srv->host_ops->max_vectors;
    srv_cq_init(&dev->cq, dev->uuid_str, &dev->ca, -1, &cq_hooks, dev,
                &srv->counters.bad_messages);

    int d = srv_devfn_alloc(srv);
    if (d < 0) {
        vp_fail(err, -ENOSPC, "no free PCI slot for a vhost-pci control function");
        dev->devfn = 0xffffffffu;
        goto fail;
    }
    dev->devfn = (uint32_t)d;
    if (srv_ca_create(&dev->ca, uuid, err) < 0)
        goto fail;
    dev->rx_kick_fd = new_eventfd();
    dev->tx_kick_fd = new_eventfd();
    dev->irq_fd = new_eventfd();
    if (dev->rx_kick_fd < 0 || dev->tx_kick_fd < 0 || dev->irq_fd < 0) {
        vp_fail(err, -errno, "eventfd: %s", g_strerror(errno));
        goto fail;
    }
    dev->cq.irq_fd = dev->irq_fd;
    dev->rx_kick_src = g_unix_fd_add(dev->rx_kick_fd, G_IO_IN, on_kick, dev);
    dev->tx_kick_src = g_unix_fd_add(dev->tx_kick_fd, G_IO_IN, on_kick, dev);
    g_info("device %s: created, control function devfn 0x%x", dev->uuid_str, dev->devfn);
    return dev;

fail:
    dev->dead = true;
    srv_cq_close(&dev->cq, "device creation failed");
    srv_device_unref(dev);
    return NULL;
}

struct srv_device *srv_device_ref(struct srv_device *dev)
{
    dev->refs++;
    return dev;
}

static void close_resources(struct srv_device *dev)
{
    if (dev->rx_kick_src)
        g_source_remove(dev->rx_kick_src);
    if (dev->tx_kick_src)
        g_source_remove(dev->tx_kick_src);
    dev->rx_kick_src = dev->tx_kick_src = 0;
    srv_ca_close(&dev->ca);
    vp_close_fd(&dev->rx_kick_fd);
    vp_close_fd(&dev->tx_kick_fd);
    vp_close_fd(&dev->irq_fd);
    dev->cq.irq_fd = -1;
    srv_mem_close_fds(&dev->mem);
    g_ptr_array_set_size(dev->frontends, 0);
}

void srv_device_unref(struct srv_device *dev)
{
    if (--dev->refs > 0)
        return;
    g_assert(dev->dead);
    close_resources(dev);
    if (dev->devfn < 256 && !dev->control_plugged && !dev->control_plugging)
        srv_devfn_free(dev->srv, dev->devfn);
    g_ptr_array_free(dev->frontends, TRUE);
    srv_cq_destroy(&dev->cq);
    g_free(dev);
}

void srv_device_stop(struct srv_device *dev, const char *why)
{
    if (dev->dead)
        return;
    dev->dead = true;
    g_info("device %s: destroying (%s)", dev->uuid_str, why);
    srv_device_ref(dev);
    srv_cq_close(&dev->cq, why);
    srv_device_unref(dev);
}

void srv_device_destroy(struct srv_device *dev, const char *why)
{
    struct vp_server *srv = dev->srv;
    srv_device_ref(dev);
    srv_device_stop(dev, why);
    /* Windows first, then the control function. Pieces still being plugged are
     * unplugged by their plug completion (it sees dev->dead). */
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        struct srv_window *w = &dev->mem.wins[i];
        if (!w->used)
            continue;
        for (unsigned k = 0; k < w->npieces; k++) {
            if (w->piece[k].state == PIECE_PLUGGED) {
                srv_unplug(srv, false, dev->devfn, w->piece[k].devfn);
                w->piece[k].state = PIECE_NONE;
            }
        }
        if (w->state == WIN_PLUGGED)
            w->used = false;
    }
    if (dev->control_plugged) {
        srv_unplug(srv, true, dev->devfn, dev->devfn);
        dev->control_plugged = false;
        dev->devfn = 0xffffffffu;  /* freed by the unplug's completion */
    }
    close_resources(dev);
    srv_device_unref(dev);
}

/* ------------------------------ plugging ------------------------------ */

/* The pieces of one window being plugged: the caller's completion runs once, when
 * the last piece completed, with the first failure. */
struct win_group {
    unsigned pending;
    int ret;
    char reason[256];
    srv_plug_done_fn done;
    void *opaque;
};

struct plug_ctx {
    struct srv_device *dev;           /* a reference */
    int win;                          /* window index, -1: the control function */
    unsigned piece;                   /* window: which piece */
    struct win_group *group;          /* window: shared by its pieces */
    uint32_t devfn;
    uint32_t ctrl_devfn;              /* the device's control function */
    srv_plug_done_fn done;            /* control function */
    void *opaque;
};

static struct plug_ctx *plug_ctx_new(struct srv_device *dev, int win, uint32_t devfn,
                                     srv_plug_done_fn done, void *opaque)
{
    struct plug_ctx *c = g_new0(struct plug_ctx, 1);
    c->dev = srv_device_ref(dev);
    c->win = win;
    c->devfn = devfn;
    c->ctrl_devfn = dev->devfn;
    c->done = done;
    c->opaque = opaque;
    return c;
}

/* One piece of window c->win completed. A failed piece fails the window: the pieces
 * that did plug are taken back and the window slot is freed. */
static void window_piece_done(struct plug_ctx *c, int ret, const char *reason)
{
    struct srv_device *dev = c->dev;
    struct vp_server *srv = dev->srv;
    struct win_group *g = c->group;
    struct srv_window *w = &dev->mem.wins[c->win];
    struct srv_win_piece *p = &w->piece[c->piece];

    if (ret < 0 && g->ret == 0) {
        g->ret = ret;
        g_snprintf(g->reason, sizeof(g->reason), "%s",
                   reason && *reason ? reason : g_strerror(-ret));
    }
    if (ret == 0 && dev->dead)
        srv_unplug(srv, false, c->ctrl_devfn, c->devfn);  /* destroyed meanwhile */
    else if (ret < 0)
        srv_devfn_free(srv, c->devfn);
    p->state = ret == 0 && !dev->dead ? PIECE_PLUGGED : PIECE_NONE;
    if (--g->pending == 0) {
        if (!dev->dead) {
            if (g->ret == 0) {
                w->state = WIN_PLUGGED;
            } else {
                for (unsigned k = 0; k < w->npieces; k++) {
                    if (w->piece[k].state == PIECE_PLUGGED)
                        srv_unplug(srv, false, c->ctrl_devfn, w->piece[k].devfn);
                    w->piece[k].state = PIECE_NONE;
                }
                vp_close_fd(&w->fd);
                w->used = false;
            }
            if (g->done)
                g->done(dev, g->opaque, g->ret, g->reason);
        }
        g_free(g);
    }
    srv_device_unref(dev);
    g_free(c);
}

static void plug_done(void *opaque, int ret, const char *reason)
{
    struct plug_ctx *c = opaque;
    struct srv_device *dev = c->dev;
    struct vp_server *srv = dev->srv;
    if (ret < 0)
        g_warning("device %s: plugging %s devfn 0x%x failed: %s", dev->uuid_str,
                  c->win < 0 ? "control function" : "window", c->devfn,
                  reason && *reason ? reason : g_strerror(-ret));
    if (c->win >= 0) {
        window_piece_done(c, ret, reason);
        return;
    }
    if (dev->dead) {
        /* Destroyed meanwhile: take back what was plugged. */
        if (ret == 0)
            srv_unplug(srv, true, c->ctrl_devfn, c->devfn);
        else
            srv_devfn_free(srv, c->devfn);
        dev->control_plugging = false;
        dev->devfn = 0xffffffffu;  /* handed to the unplug, or freed */
        srv_device_unref(dev);
        g_free(c);
        return;
    }
    dev->control_plugging = false;
    dev->control_plugged = ret == 0;
    if (ret == 0 && srv_vectors_count(&dev->vectors)) {
        vp_error err = { "" };
        if (srv_device_announce_vectors(dev, &err))
            g_warning("device %s: %s", dev->uuid_str, err.msg);
    }
    char why[300];
    g_snprintf(why, sizeof(why), "%s", reason && *reason ? reason : (ret ? g_strerror(-ret) : ""));
    if (c->done)
        c->done(dev, c->opaque, ret, why);
    srv_device_unref(dev);
    g_free(c);
}

void srv_device_plug_control(struct srv_device *dev, srv_plug_done_fn done, void *opaque)
{
    struct plug_ctx *c = plug_ctx_new(dev, -1, dev->devfn, done, opaque);
    struct vp_devhost_control ctl = {
        .devfn = dev->devfn, .ctrl_fd = dev->ca.fd, .ctrl_size = dev->ca.size,
        .rx_kick_fd = dev->rx_kick_fd, .tx_kick_fd = dev->tx_kick_fd, .irq_fd = dev->irq_fd,
        .nvectors = VP_MAX_VECTORS,
    };
    memcpy(ctl.uuid, dev->uuid, VP_UUID_LEN);
    /* The driver validates the header as soon as the function appears: bar_size
     * (decided by now, also for a clone) must already be there, not only after the
     * first srv_device_write_windows(). */
    srv_ca_set_bar_size(&dev->ca, dev->mem.bar_size);
    dev->control_plugging = true;
    g_info("device %s: plugging control function devfn 0x%x", dev->uuid_str, dev->devfn);
    dev->srv->host_ops->plug_control(dev->srv->host, &ctl, plug_done, c);
}

int srv_device_add_window(struct srv_device *dev, const struct srv_file_id *file, int fd,
                          uint64_t bar_offset, srv_plug_done_fn done, void *opaque,
                          vp_error *err)
{
    struct srv_piece at[64];
    unsigned n = srv_file_pieces(file->size, at);
    int devfns[VP_MAX_WINDOWS];
    int idx = srv_mem_free_slot(&dev->mem);
    if (idx < 0) {
        close(fd);
        return vp_fail(err, -ENOSPC, "a device has at most %d memory windows", VP_MAX_WINDOWS);
    }
    if (n == 0 || n > VP_MAX_WINDOWS) {
        close(fd);
        return vp_fail(err, -EINVAL, "a memory file of %" PRIu64 " bytes cannot be a window",
                       file->size);
    }
    for (unsigned k = 0; k < n; k++) {
        devfns[k] = srv_devfn_alloc(dev->srv);
        if (devfns[k] < 0) {
            while (k > 0)
                srv_devfn_free(dev->srv, (uint32_t)devfns[--k]);
            close(fd);
            return vp_fail(err, -ENOSPC, "no free PCI slot for a memory window (%u needed)", n);
        }
    }
    struct srv_window *w = &dev->mem.wins[idx];
    *w = (struct srv_window){ .used = true, .state = WIN_PLUGGING, .file = *file,
                              .bar_offset = bar_offset, .npieces = n, .fd = fd };
    struct win_group *g = g_new0(struct win_group, 1);
    g->pending = n;
    g->done = done;
    g->opaque = opaque;
    for (unsigned k = 0; k < n; k++) {
        w->piece[k] = (struct srv_win_piece){ at[k], (uint32_t)devfns[k], PIECE_PLUGGING };
        struct plug_ctx *c = plug_ctx_new(dev, idx, w->piece[k].devfn, NULL, NULL);
        c->piece = k;
        c->group = g;
        g_info("device %s: plugging window devfn 0x%x (%" PRIu64 " bytes of a %" PRIu64
               "-byte file from offset 0x%" PRIx64 ", at BAR offset 0x%" PRIx64 ")",
               dev->uuid_str, w->piece[k].devfn, at[k].size, file->size, at[k].file_offset,
               bar_offset + at[k].file_offset);
        dev->srv->host_ops->plug_window(dev->srv->host, dev->devfn, w->piece[k].devfn, fd,
                                        at[k].file_offset, at[k].size, plug_done, c);
    }
    return idx;
}

void srv_device_set_bar_size(struct srv_device *dev, uint64_t bar_size)
{
    dev->mem.bar_size = bar_size;
    srv_ca_set_bar_size(&dev->ca, bar_size);
}

void srv_device_write_windows(struct srv_device *dev)
{
    if (!dev->ca.map)
        return;
    struct srv_ca_window w[VP_MAX_WINDOWS];
    unsigned n = srv_mem_plugged(&dev->mem, w);
    srv_ca_write_windows(&dev->ca, dev->mem.bar_size, w, n);
    /* Like a virtio configuration-change interrupt: the driver re-reads the table. */
    srv_cq_irq(&dev->cq);
}

void srv_device_drop_unused_windows(struct srv_device *dev)
{
    bool changed = false;
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        struct srv_window *w = &dev->mem.wins[i];
        if (!w->used || w->refs || w->state != WIN_PLUGGED)
            continue;
        g_info("device %s: dropping window devfn 0x%x (%u piece(s))", dev->uuid_str,
               w->piece[0].devfn, w->npieces);
        w->used = false;
        vp_close_fd(&w->fd);
        for (unsigned k = 0; k < w->npieces; k++) {
            if (w->piece[k].state == PIECE_PLUGGED)
                srv_unplug(dev->srv, false, dev->devfn, w->piece[k].devfn);
            w->piece[k].state = PIECE_NONE;
        }
        changed = true;
    }
    if (changed)
        srv_device_write_windows(dev);
}

/* ------------------------------ frontends, vectors ------------------------------ */

struct srv_frontend *srv_device_find_frontend(struct srv_device *dev, uint64_t device_id,
                                              guint *idx)
{
    return srv_frontends_find(dev->frontends, device_id, idx);
}

int srv_device_announce_vectors(struct srv_device *dev, vp_error *err)
{
    if (!dev->control_plugged && !dev->control_plugging)
        return 0;  /* announced when the control function is plugged */
    int fds[VP_MAX_VECTORS];
    unsigned n = srv_frontends_call_fds(dev->frontends, &dev->vectors, fds);
    g_debug("device %s: announcing %u vector(s) of peer id %d", dev->uuid_str, n,
            VP_ID_DRIVER_VM);
    return dev->srv->host_ops->set_peer_vectors(dev->srv->host, dev->devfn, VP_ID_DRIVER_VM,
                                                fds, n, err);
}
