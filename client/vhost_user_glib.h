/*
 * vhost_user_glib.h - GLib adapter for the vhost-user backend core (vhost_user.h):
 * watches the socket in a GMainContext and logs through g_log (domain "vhost-user").
 *
 * Threading: everything runs in the thread that iterates @ctx.
 */
#ifndef VHOST_USER_GLIB_H
#define VHOST_USER_GLIB_H

#include <glib.h>

#include "vhost_user.h"

struct vu_glib;

/**
 * Create a backend core on the connected socket @sock (taken over, as by vu_dev_new)
 * and watch it in @ctx (NULL: the default context). @ops/@opaque as for vu_dev_new;
 * callbacks run from @ctx's dispatch. While a deferred reply is pending the socket is
 * not watched; vu_dev_reply_*() re-arms the watch. When the connection ends the watch
 * is removed and ops->disconnected is called; the object stays until vu_glib_free().
 * Returns NULL with a reason in @err (then @sock is closed).
 */
struct vu_glib *vu_glib_new(int sock, const struct vu_dev_config *cfg,
                            const struct vu_dev_ops *ops, void *opaque,
                            GMainContext *ctx, vp_error *err);

/** The core, for vu_dev_reply_*(), vu_dev_fail() and the accessors. */
struct vu_dev *vu_glib_dev(struct vu_glib *g);

/** Remove the watch and free the core (closing every fd it holds). May be called
 *  from inside a callback of the core. NULL is ignored. */
void vu_glib_free(struct vu_glib *g);

#endif
