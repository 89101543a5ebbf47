/*
 * devhost_local.c - the `local` device host (devhost.h, DESIGN section 7): no VM;
 * the server hands control areas, windows and eventfds to one vhost-pci-guestd over
 * the local bus (protocol/vp_localbus.h), listening on --local-bus PATH.
 *
 * The host keeps a registry of what is plugged (with its own dup()s of the fds), so
 * requests made before guestd connects simply wait in it: when guestd connects, the
 * whole registry is replayed in plugging order (PLUG_CONTROL, PEER_VECTORS,
 * PLUG_WINDOW per control function). Plugs complete at once (deferred to the main
 * loop); unplugs complete on guestd's EJECTED, bounded by the config timeout, or at
 * once when no guestd is connected (nothing can be mapped then).
 *
 * Security model: guestd is another process. Its messages go through vp_lb_recv()
 * (fixed size, type and fd-count checked); only HELLO and EJECTED are accepted,
 * anything else, and any socket error, closes that connection (after closing every
 * received fd). A second guestd while one is connected waits up to LB_TAKEOVER_MS
 * for the first one to hang up (a restart: its EOF can reach us after the successor's
 * connect, e.g. through a relay), then the registry is replayed to it; if the first
 * one stays, the second is refused.
 */
#define G_LOG_DOMAIN "vp-server"
#include <glib.h>
#include <glib-unix.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "devhost.h"
#include "unix_listen.h"
#include "vp_ctrlarea.h"
#include "vp_localbus.h"
#include "vp_outq_glib.h"

/* How long guestd may read nothing while messages wait for it before it is given up
 * on, and how much may wait (a replay of every devfn is far less). */
#define LB_SEND_TIMEOUT_MS 5000

/* How long a second guestd waits for the connected one to go (see above). */
#define LB_TAKEOVER_MS 1000
#define LB_MAX_QUEUED_BYTES (16u << 10)

struct lb_window {
    uint32_t devfn;
    int fd;
    uint64_t size;
    uint64_t offset;       /* bytes into the file (PLUG_WINDOW arg) */
};

struct lb_control {
    uint32_t devfn;
    uint64_t size;
    int fds[4];            /* control area, rx kick, tx kick, irq */
    int *vec_fds;          /* peer id 2 vectors */
    unsigned nvec;
    GPtrArray *windows;    /* struct lb_window* */
};

struct lb_later {           /* a completion deferred to the main loop */
    struct lb_host *h;
    vp_devhost_done_fn done;
    void *opaque;
    int ret;
    char reason[256];
    guint src;
};

struct lb_wait {            /* an unplug waiting for EJECTED */
    struct lb_host *h;
    uint32_t slot, devfn;
    vp_devhost_done_fn done;
    void *opaque;
    guint timer;
};

struct lb_host {
    unsigned timeout_ms;
    char *path;
    int listen_fd;
    guint listen_src;
    int conn_fd;
    guint conn_src;
    int next_fd;               /* a second guestd, waiting for conn_fd to go */
    guint next_timer;          /* ... for LB_TAKEOVER_MS */
    struct vp_outq_glib out;   /* messages to guestd, written without blocking */
    guint stall_timer;         /* guestd must make progress while messages wait */
    uint64_t stall_mark;       /* messages sent when the timer was armed */
    GPtrArray *controls;   /* struct lb_control*, plugging order */
    GList *later;          /* struct lb_later* */
    GList *waits;          /* struct lb_wait* */
};

static void window_free(gpointer p)
{
    struct lb_window *w = p;
    vp_close_fd(&w->fd);
    g_free(w);
}

static void control_free(gpointer p)
{
    struct lb_control *c = p;
    vp_close_fds(c->fds, 4);
    if (c->vec_fds)
        vp_close_fds(c->vec_fds, c->nvec);
    g_free(c->vec_fds);
    g_ptr_array_free(c->windows, TRUE);
    g_free(c);
}

static struct lb_control *find_control(struct lb_host *h, uint32_t devfn, guint *index)
{
    for (guint i = 0; i < h->controls->len; i++) {
        struct lb_control *c = g_ptr_array_index(h->controls, i);
        if (c->devfn == devfn) {
            if (index)
                *index = i;
            return c;
        }
    }
    return NULL;
}

static gboolean later_fire(gpointer data)
{
    struct lb_later *l = data;
    l->h->later = g_list_remove(l->h->later, l);
    l->done(l->opaque, l->ret, l->reason);
    g_free(l);
    return G_SOURCE_REMOVE;
}

static void complete_later(struct lb_host *h, vp_devhost_done_fn done, void *opaque, int ret,
                           const char *reason)
{
    struct lb_later *l = g_new0(struct lb_later, 1);
    l->h = h;
    l->done = done;
    l->opaque = opaque;
    l->ret = ret;
    g_strlcpy(l->reason, reason ? reason : "", sizeof(l->reason));
    l->src = g_idle_add_full(G_PRIORITY_DEFAULT, later_fire, l, NULL);  /* fair: 12.2 */
    h->later = g_list_prepend(h->later, l);
}

static int dup_fd(int fd)
{
    return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* Complete a plug whose dup_fd() just failed (errno still set) with its reason. */
static void complete_dup_failed(struct lb_host *h, vp_devhost_done_fn done, void *opaque)
{
    char why[128];
    g_snprintf(why, sizeof(why), "dup: %s", g_strerror(errno));
    complete_later(h, done, opaque, -EMFILE, why);
}

static void disconnect(struct lb_host *h, const char *why);

/* Messages wait for guestd: it must take at least one every LB_SEND_TIMEOUT_MS. */
static gboolean stall_check(gpointer data)
{
    struct lb_host *h = data;
    if (vp_outq_idle(&h->out.q) || h->out.q.msgs_sent != h->stall_mark) {
        h->stall_mark = h->out.q.msgs_sent;
        if (!vp_outq_idle(&h->out.q))
            return G_SOURCE_CONTINUE;
        h->stall_timer = 0;
        return G_SOURCE_REMOVE;
    }
    h->stall_timer = 0;
    char why[160];
    g_snprintf(why, sizeof(why), "send failed: it read nothing for %d ms (%u messages "
               "waiting)", LB_SEND_TIMEOUT_MS, h->out.q.count);
    disconnect(h, why);
    return G_SOURCE_REMOVE;
}

static void on_send_error(void *opaque, int err)
{
    char why[128];
    g_snprintf(why, sizeof(why), "send failed: %s", g_strerror(-err));
    disconnect(opaque, why);
}

/* Send one message to guestd if connected, through the output queue (never
 * blocking); a send error, or a guestd that stops reading, drops the connection (the
 * registry keeps the state for the next guestd). */
static void lb_send(struct lb_host *h, const struct vp_lb_msg *m, const int *fds, unsigned nfds)
{
    if (h->conn_fd < 0)
        return;
    unsigned char buf[VP_LB_MSG_SIZE];
    vp_lb_encode(m, buf);
    int r = vp_outq_push(&h->out.q, buf, sizeof(buf), fds, nfds, 0);
    if (r < 0) {
        char why[160];
        if (r == -ENOBUFS)
            g_snprintf(why, sizeof(why), "send failed: it does not read (%u messages waiting)",
                       h->out.q.count);
        else
            g_snprintf(why, sizeof(why), "send failed: %s", g_strerror(-r));
        disconnect(h, why);
        return;
    }
    if (!vp_outq_idle(&h->out.q) && !h->stall_timer) {
        h->stall_mark = h->out.q.msgs_sent;
        h->stall_timer = g_timeout_add(LB_SEND_TIMEOUT_MS, stall_check, h);
    }
}

static void send_control(struct lb_host *h, const struct lb_control *c)
{
    struct vp_lb_msg m = { .type = VP_LB_PLUG_CONTROL, .slot = c->devfn, .count = 4,
                           .size = c->size };
    lb_send(h, &m, c->fds, 4);
}

static void send_vectors(struct lb_host *h, const struct lb_control *c)
{
    struct vp_lb_msg m = { .type = VP_LB_PEER_VECTORS, .slot = c->devfn, .count = c->nvec,
                           .arg = VP_ID_DRIVER_VM };
    lb_send(h, &m, c->vec_fds, c->nvec);
}

static void send_window(struct lb_host *h, const struct lb_control *c, const struct lb_window *w)
{
    struct vp_lb_msg m = { .type = VP_LB_PLUG_WINDOW, .slot = c->devfn, .devfn = w->devfn,
                           .count = 1, .size = w->size, .arg = w->offset };
    lb_send(h, &m, &w->fd, 1);
}

static void replay(struct lb_host *h)
{
    for (guint i = 0; i < h->controls->len && h->conn_fd >= 0; i++) {
        struct lb_control *c = g_ptr_array_index(h->controls, i);
        send_control(h, c);
        if (c->nvec)
            send_vectors(h, c);
        for (guint k = 0; k < c->windows->len; k++)
            send_window(h, c, g_ptr_array_index(c->windows, k));
    }
}

static void wait_finish(struct lb_wait *w, int ret, const char *reason)
{
    w->h->waits = g_list_remove(w->h->waits, w);
    if (w->timer)
        g_source_remove(w->timer);
    w->done(w->opaque, ret, reason);
    g_free(w);
}

static void adopt(struct lb_host *h, int c);

static void disconnect(struct lb_host *h, const char *why)
{
    if (h->conn_fd < 0)
        return;
    g_warning("local bus: vhost-pci-guestd disconnected (%s)", why);
    if (h->conn_src)
        g_source_remove(h->conn_src);
    h->conn_src = 0;
    if (h->stall_timer)
        g_source_remove(h->stall_timer);
    h->stall_timer = 0;
    vp_outq_glib_destroy(&h->out);
    vp_close_fd(&h->conn_fd);
    /* Nothing is mapped by a guestd that has gone: pending unplugs are done. */
    while (h->waits)
        wait_finish(h->waits->data, 0, "");
    if (h->next_fd >= 0) {  /* its successor was waiting */
        g_source_remove(h->next_timer);
        h->next_timer = 0;
        int c = h->next_fd;
        h->next_fd = -1;
        adopt(h, c);
    }
}

static gboolean on_conn(gint fd, GIOCondition cond, gpointer data)
{
    struct lb_host *h = data;
    (void)cond;
    struct vp_lb_msg m;
    int fds[VP_LB_MAX_FDS];
    unsigned nfds = 0;
    vp_error err = { "" };
    int r = vp_lb_recv(fd, &m, fds, VP_LB_MAX_FDS, &nfds, &err);
    if (r < 0) {
        h->conn_src = 0;  /* this source goes away with G_SOURCE_REMOVE */
        disconnect(h, r == -ECONNRESET ? "EOF" : err.msg);
        return G_SOURCE_REMOVE;
    }
    vp_close_fds(fds, nfds);  /* guestd sends no fds */
    switch (m.type) {
    case VP_LB_HELLO:
        g_info("local bus: HELLO from vhost-pci-guestd");
        break;
    case VP_LB_EJECTED: {
        for (GList *l = h->waits; l; l = l->next) {
            struct lb_wait *w = l->data;
            if (w->slot == m.slot && w->devfn == m.devfn) {
                g_debug("local bus: EJECTED slot %u devfn 0x%x", m.slot, m.devfn);
                wait_finish(w, 0, "");
                return G_SOURCE_CONTINUE;
            }
        }
        g_warning("local bus: EJECTED for slot %u devfn 0x%x that is not being unplugged",
                  m.slot, m.devfn);
        break;
    }
    default:
        h->conn_src = 0;
        disconnect(h, "unexpected message type from vhost-pci-guestd");
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

/* Has the peer of connection @fd gone (hung up, or EOF pending)? A guestd that was
 * killed can be followed by its successor before its EOF was handled. */
static bool conn_gone(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL))
        return true;
    char c;
    return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static gboolean on_takeover_timeout(gpointer data)
{
    struct lb_host *h = data;
    h->next_timer = 0;
    g_warning("local bus: a second vhost-pci-guestd connected while one is running; "
              "refusing it");
    vp_close_fd(&h->next_fd);
    return G_SOURCE_REMOVE;
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    struct lb_host *h = data;
    (void)cond;
    int c = srv_unix_accept(fd);
    if (c < 0)
        return G_SOURCE_CONTINUE;
    if (h->conn_fd >= 0 && conn_gone(h->conn_fd))
        disconnect(h, "EOF, seen when a new one connected");  /* a restart: take the new one */
    if (h->conn_fd < 0) {
        adopt(h, c);
    } else if (h->next_fd < 0) {
        /* Perhaps a restart whose predecessor's EOF is still on its way. */
        g_info("local bus: a second vhost-pci-guestd connected; it waits up to %d ms "
               "for the first one to go", LB_TAKEOVER_MS);
        h->next_fd = c;
        h->next_timer = g_timeout_add(LB_TAKEOVER_MS, on_takeover_timeout, h);
    } else {
        g_warning("local bus: a third vhost-pci-guestd connected; refusing it");
        close(c);
    }
    return G_SOURCE_CONTINUE;
}

/* Make @c the connection to guestd (none is connected) and replay the registry. */
static void adopt(struct lb_host *h, int c)
{
    /* Reads are vp_lb_recv's (32-byte messages, bounded by itself); writes go through
     * the output queue, so a guestd that stops reading never stalls the server: it is
     * disconnected after LB_SEND_TIMEOUT_MS without progress, or LB_MAX_QUEUED_BYTES. */
    int fl = fcntl(c, F_GETFL);
    if (fl >= 0)
        fcntl(c, F_SETFL, fl & ~O_NONBLOCK);
    h->conn_fd = c;
    vp_outq_glib_init(&h->out, NULL, c, LB_MAX_QUEUED_BYTES, NULL, on_send_error, h);
    h->conn_src = g_unix_fd_add(c, G_IO_IN | G_IO_HUP | G_IO_ERR, on_conn, h);
    g_message("local bus: vhost-pci-guestd connected; replaying %u control function(s)",
              h->controls->len);
    replay(h);
}

static struct vp_devhost *local_create(const struct vp_devhost_config *cfg, vp_error *err)
{
    if (!cfg->local_bus) {
        vp_fail(err, -EINVAL, "--device-host local needs --local-bus PATH");
        return NULL;
    }
    int fd = srv_unix_listen(cfg->local_bus, err);
    if (fd < 0)
        return NULL;
    struct lb_host *h = g_new0(struct lb_host, 1);
    h->timeout_ms = cfg->timeout_ms;
    h->path = g_strdup(cfg->local_bus);
    h->listen_fd = fd;
    h->conn_fd = -1;
    h->next_fd = -1;
    h->controls = g_ptr_array_new_with_free_func(control_free);
    h->listen_src = g_unix_fd_add(fd, G_IO_IN, on_accept, h);
    g_message("local bus: listening on %s for vhost-pci-guestd", h->path);
    return (struct vp_devhost *)h;
}

static void local_destroy(struct vp_devhost *hh)
{
    struct lb_host *h = (struct lb_host *)hh;
    if (!h)
        return;
    if (h->listen_src)
        g_source_remove(h->listen_src);
    if (h->conn_src)
        g_source_remove(h->conn_src);
    if (h->stall_timer)
        g_source_remove(h->stall_timer);
    if (h->next_timer)
        g_source_remove(h->next_timer);
    vp_close_fd(&h->next_fd);
    vp_outq_glib_destroy(&h->out);
    vp_close_fd(&h->conn_fd);
    vp_close_fd(&h->listen_fd);
    unlink(h->path);
    for (GList *l = h->later; l; l = l->next) {
        struct lb_later *x = l->data;
        g_source_remove(x->src);
        g_free(x);
    }
    g_list_free(h->later);
    for (GList *l = h->waits; l; l = l->next) {
        struct lb_wait *w = l->data;
        if (w->timer)
            g_source_remove(w->timer);
        g_free(w);
    }
    g_list_free(h->waits);
    g_ptr_array_free(h->controls, TRUE);
    g_free(h->path);
    g_free(h);
}

static void local_plug_control(struct vp_devhost *hh, const struct vp_devhost_control *ctl,
                               vp_devhost_done_fn done, void *opaque)
{
    struct lb_host *h = (struct lb_host *)hh;
    if (find_control(h, ctl->devfn, NULL)) {
        complete_later(h, done, opaque, -EEXIST, "control function slot already plugged");
        return;
    }
    struct lb_control *c = g_new0(struct lb_control, 1);
    c->devfn = ctl->devfn;
    c->size = ctl->ctrl_size;
    c->windows = g_ptr_array_new_with_free_func(window_free);
    const int src[4] = { ctl->ctrl_fd, ctl->rx_kick_fd, ctl->tx_kick_fd, ctl->irq_fd };
    for (int i = 0; i < 4; i++)
        c->fds[i] = -1;  /* control_free() on a failed dup closes only what we own */
    for (int i = 0; i < 4; i++) {
        c->fds[i] = dup_fd(src[i]);
        if (c->fds[i] < 0) {
            complete_dup_failed(h, done, opaque);
            control_free(c);
            return;
        }
    }
    g_ptr_array_add(h->controls, c);
    send_control(h, c);
    complete_later(h, done, opaque, 0, "");
}

static void local_plug_window(struct vp_devhost *hh, uint32_t ctrl_devfn, uint32_t devfn,
                              int fd, uint64_t offset, uint64_t size, vp_devhost_done_fn done,
                              void *opaque)
{
    struct lb_host *h = (struct lb_host *)hh;
    struct lb_control *c = find_control(h, ctrl_devfn, NULL);
    if (!c) {
        complete_later(h, done, opaque, -ENODEV, "no such control function");
        return;
    }
    struct lb_window *w = g_new0(struct lb_window, 1);
    w->devfn = devfn;
    w->size = size;
    w->offset = offset;
    w->fd = dup_fd(fd);
    if (w->fd < 0) {
        complete_dup_failed(h, done, opaque);
        g_free(w);
        return;
    }
    g_ptr_array_add(c->windows, w);
    send_window(h, c, w);
    complete_later(h, done, opaque, 0, "");
}

/* guestd mmap()s a window at the offset PLUG_WINDOW names: any part of a file. */
static bool local_windows_at_offsets(struct vp_devhost *hh)
{
    (void)hh;
    return true;
}

static gboolean wait_timeout(gpointer data)
{
    struct lb_wait *w = data;
    char why[160];
    w->timer = 0;
    g_snprintf(why, sizeof(why),
               "vhost-pci-guestd did not eject %s 0x%x within %u ms",
               w->devfn == VP_LB_CONTROL_DEVFN ? "control function" : "window",
               w->devfn == VP_LB_CONTROL_DEVFN ? w->slot : w->devfn, w->h->timeout_ms);
    g_warning("local bus: %s", why);
    wait_finish(w, -ETIMEDOUT, why);
    return G_SOURCE_REMOVE;
}

static void start_unplug(struct lb_host *h, uint32_t slot, uint32_t devfn,
                         vp_devhost_done_fn done, void *opaque)
{
    if (h->conn_fd < 0) {
        complete_later(h, done, opaque, 0, "");
        return;
    }
    struct vp_lb_msg m = { .type = devfn == VP_LB_CONTROL_DEVFN ? VP_LB_UNPLUG_CONTROL
                                                                 : VP_LB_UNPLUG_WINDOW,
                           .slot = slot, .devfn = devfn == VP_LB_CONTROL_DEVFN ? 0 : devfn };
    struct lb_wait *w = g_new0(struct lb_wait, 1);
    w->h = h;
    w->slot = slot;
    w->devfn = devfn;
    w->done = done;
    w->opaque = opaque;
    w->timer = g_timeout_add(h->timeout_ms ? h->timeout_ms : 1, wait_timeout, w);
    h->waits = g_list_append(h->waits, w);
    lb_send(h, &m, NULL, 0);  /* on failure disconnect() completes the wait */
}

static void local_unplug_window(struct vp_devhost *hh, uint32_t ctrl_devfn, uint32_t devfn,
                                vp_devhost_done_fn done, void *opaque)
{
    struct lb_host *h = (struct lb_host *)hh;
    struct lb_control *c = find_control(h, ctrl_devfn, NULL);
    if (c) {
        for (guint k = 0; k < c->windows->len; k++) {
            struct lb_window *w = g_ptr_array_index(c->windows, k);
            if (w->devfn == devfn) {
                g_ptr_array_remove_index(c->windows, k);
                start_unplug(h, ctrl_devfn, devfn, done, opaque);
                return;
            }
        }
    }
    complete_later(h, done, opaque, 0, "");  /* not plugged: nothing to do */
}

static int local_set_peer_vectors(struct vp_devhost *hh, uint32_t ctrl_devfn, uint32_t peer_id,
                                  const int *fds, unsigned n, vp_error *err)
{
    struct lb_host *h = (struct lb_host *)hh;
    struct lb_control *c = find_control(h, ctrl_devfn, NULL);
    if (!c)
        return vp_fail(err, -ENODEV, "no control function at slot %u", ctrl_devfn);
    if (peer_id != VP_ID_DRIVER_VM)
        return vp_fail(err, -EINVAL, "only peer id %d has announced vectors", VP_ID_DRIVER_VM);
    if (n > VP_LB_MAX_FDS)
        return vp_fail(err, -EINVAL, "%u vectors: the local bus carries at most %d", n,
                       VP_LB_MAX_FDS);
    int *copy = n ? g_new(int, n) : NULL;
    for (unsigned i = 0; i < n; i++) {
        /* The local bus carries fds only: a hole becomes an eventfd nobody reads. */
        copy[i] = fds[i] >= 0 ? dup_fd(fds[i]) : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (copy[i] < 0) {
            int e = errno;
            vp_close_fds(copy, i);
            g_free(copy);
            return vp_fail(err, -e, "dup: %s", g_strerror(e));
        }
    }
    if (c->vec_fds)
        vp_close_fds(c->vec_fds, c->nvec);
    g_free(c->vec_fds);
    c->vec_fds = copy;
    c->nvec = n;
    send_vectors(h, c);
    return 0;
}

static void local_unplug_control(struct vp_devhost *hh, uint32_t ctrl_devfn,
                                 vp_devhost_done_fn done, void *opaque)
{
    struct lb_host *h = (struct lb_host *)hh;
    guint idx;
    if (!find_control(h, ctrl_devfn, &idx)) {
        complete_later(h, done, opaque, 0, "");
        return;
    }
    g_ptr_array_remove_index(h->controls, idx);
    start_unplug(h, ctrl_devfn, VP_LB_CONTROL_DEVFN, done, opaque);
}

const struct vp_devhost_ops vp_devhost_local_ops = {
    .name = "local",
    .devfn_first = 1,
    .devfn_last = 255,
    .devfn_step = 1,
    .max_vectors = VP_LB_MAX_FDS,  /* one message carries the whole list */
    .create = local_create,
    .destroy = local_destroy,
    .plug_control = local_plug_control,
    .plug_window = local_plug_window,
    .windows_at_offsets = local_windows_at_offsets,
    .unplug_window = local_unplug_window,
    .set_peer_vectors = local_set_peer_vectors,
    .unplug_control = local_unplug_control,
};
