/*
 * devfn.c - devfn allocation and fire-and-forget unplugs (devfn.h).
 */
#include "devfn.h"

#include <errno.h>

#include "server.h"

int srv_devfn_alloc(struct vp_server *srv)
{
    const struct vp_devhost_ops *o = srv->host_ops;
    uint32_t step = o->devfn_step ? o->devfn_step : 1;
    for (uint32_t d = o->devfn_first; d <= o->devfn_last && d < 256; d += step) {
        /* A function the host still has there (a zombie) would make QEMU refuse the
         * plug: skip it until the host has seen it go. */
        if (!srv->devfn_busy[d] && !(o->devfn_held && o->devfn_held(srv->host, d))) {
            srv->devfn_busy[d] = 1;
            return (int)d;
        }
    }
    return -ENOSPC;
}

void srv_devfn_free(struct vp_server *srv, uint32_t devfn)
{
    if (devfn < 256)
        srv->devfn_busy[devfn] = 0;
}

struct unplug_ctx {
    struct vp_server *srv;
    uint32_t devfn;
    bool control;
};

static void unplug_done(void *opaque, int ret, const char *reason)
{
    struct unplug_ctx *u = opaque;
    if (ret < 0)
        g_warning("unplug of %s devfn 0x%x: %s", u->control ? "control function" : "window",
                  u->devfn, reason && *reason ? reason : g_strerror(-ret));
    else
        g_debug("unplugged %s devfn 0x%x", u->control ? "control function" : "window",
                u->devfn);
    srv_devfn_free(u->srv, u->devfn);
    u->srv->unplugs_outstanding--;
    g_free(u);
}

void srv_unplug(struct vp_server *srv, bool control, uint32_t ctrl_devfn, uint32_t devfn)
{
    struct unplug_ctx *u = g_new0(struct unplug_ctx, 1);
    u->srv = srv;
    u->devfn = devfn;
    u->control = control;
    srv->unplugs_outstanding++;
    if (control)
        srv->host_ops->unplug_control(srv->host, ctrl_devfn, unplug_done, u);
    else
        srv->host_ops->unplug_window(srv->host, ctrl_devfn, devfn, unplug_done, u);
}
