/*
 * device.c - one vhost-pci device (DESIGN section 3): the control area memfd, the
 * notification eventfds, memory windows and regions, frontends and their doorbell
 * vectors, and the device side of the controlq (queue 0 receiveq: the guest driver's
 * ACKs; queue 1 transmitq: the server's messages), with the pending-ACK table keyed
 * by controlq msg_seq.
 *
 * Security model: the control area is shared with the device VM, whose guest driver
 * may be hostile or buggy and may rewrite any byte at any time. device_status is read
 * once per kick into a local; the rings go through vp_vring_dev (which reads each
 * shared field once and breaks the queue on any inconsistency); every descriptor
 * address is a control-area offset that must lie inside the buffer pool
 * (vp_range_ok, overflow-proof) before a byte is copied; a message is copied once
 * into a private buffer and only then decoded (vp_cq_decode checks every count).
 * A malformed message or a broken ring marks this device NEEDS_RESET and fails its
 * pending requests; other devices carry on. ACKs that match no outstanding message
 * are counted (bad_messages) and ignored.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include <glib-unix.h>

/* Fixed control-area layout (offsets the server chooses; DESIGN section 3). */
#define CA_Q0_DESC 0x1000
#define CA_Q0_AVAIL 0x1400
#define CA_Q0_USED 0x1600
#define CA_Q1_DESC 0x2000
#define CA_Q1_AVAIL 0x2400
#define CA_Q1_USED 0x2600
#define CA_BUF_OFF 0x4000
#define CA_BUF_SIZE (2u * VP_CA_QUEUE_NUM * VP_CA_BUF_SLOT)

G_STATIC_ASSERT(CA_Q0_AVAIL >= CA_Q0_DESC + 16 * VP_CA_QUEUE_NUM);
G_STATIC_ASSERT(CA_Q0_USED >= CA_Q0_AVAIL + 6 + 2 * VP_CA_QUEUE_NUM);
G_STATIC_ASSERT(CA_Q1_DESC >= CA_Q0_USED + 6 + 8 * VP_CA_QUEUE_NUM);
G_STATIC_ASSERT(CA_Q1_AVAIL >= CA_Q1_DESC + 16 * VP_CA_QUEUE_NUM);
G_STATIC_ASSERT(CA_Q1_USED >= CA_Q1_AVAIL + 6 + 2 * VP_CA_QUEUE_NUM);
G_STATIC_ASSERT(CA_BUF_OFF >= CA_Q1_USED + 6 + 8 * VP_CA_QUEUE_NUM);
G_STATIC_ASSERT(CA_BUF_OFF + CA_BUF_SIZE <= VP_CA_SIZE);
G_STATIC_ASSERT(VP_CA_HEADER_END <= CA_Q0_DESC);
G_STATIC_ASSERT(VP_CA_BUF_SLOT >= VP_CQ_MAX_MSG);

void srv_uuid_str(const uint8_t *u, char out[37])
{
    g_snprintf(out, 37,
               "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
               u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
               u[12], u[13], u[14], u[15]);
}

/* ------------------------------ devfns ------------------------------ */

int srv_devfn_alloc(struct vp_server *srv)
{
    const struct vp_devhost_ops *o = srv->host_ops;
    uint32_t step = o->devfn_step ? o->devfn_step : 1;
    for (uint32_t d = o->devfn_first; d <= o->devfn_last && d < 256; d += step) {
        if (!srv->devfn_busy[d]) {
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

/* Fire-and-forget unplug: the devfn stays busy until the host completes. */
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

static void srv_unplug(struct vp_server *srv, bool control, uint32_t ctrl_devfn, uint32_t devfn)
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

/* ------------------------------ life cycle ------------------------------ */

static gboolean on_kick(gint fd, GIOCondition cond, gpointer data);
static void ring_irq(struct srv_device *dev);

static int new_eventfd(void)
{
    return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

static void write_header(struct srv_device *dev)
{
    uint8_t *ca = dev->ca;
    memcpy(ca + VP_CA_OFF_MAGIC, VP_CA_MAGIC, 8);
    vp_put_le32(ca + VP_CA_OFF_VERSION, VP_CA_VERSION);
    vp_put_le32(ca + VP_CA_OFF_STATUS, 0);
    vp_put_le64(ca + VP_CA_OFF_DEVICE_FEATURES, 0);  /* no local feature bits yet */
    vp_put_le64(ca + VP_CA_OFF_DRIVER_FEATURES, 0);
    memcpy(ca + VP_CA_OFF_PEER_UUID, dev->uuid, VP_UUID_LEN);
    vp_put_le64(ca + VP_CA_OFF_BAR_SIZE, dev->bar_size);
    vp_put_le32(ca + VP_CA_OFF_NWINDOWS, 0);
    vp_put_le32(ca + VP_CA_OFF_GENERATION, dev->generation);
    static const uint64_t q[2][3] = { { CA_Q0_DESC, CA_Q0_AVAIL, CA_Q0_USED },
                                      { CA_Q1_DESC, CA_Q1_AVAIL, CA_Q1_USED } };
    for (int i = 0; i < 2; i++) {
        uint8_t *e = ca + VP_CA_OFF_QUEUE + i * VP_CA_QUEUE_SIZE;
        vp_put_le16(e + VP_CA_Q_SIZE, VP_CA_QUEUE_NUM);
        vp_put_le64(e + VP_CA_Q_DESC_OFF, q[i][0]);
        vp_put_le64(e + VP_CA_Q_AVAIL_OFF, q[i][1]);
        vp_put_le64(e + VP_CA_Q_USED_OFF, q[i][2]);
    }
    vp_put_le64(ca + VP_CA_OFF_BUF_OFF, CA_BUF_OFF);
    vp_put_le64(ca + VP_CA_OFF_BUF_SIZE, CA_BUF_SIZE);
}

struct srv_device *srv_device_new(struct vp_server *srv, const uint8_t *uuid, vp_error *err)
{
    struct srv_device *dev = g_new0(struct srv_device, 1);
    dev->srv = srv;
    dev->refs = 1;
    memcpy(dev->uuid, uuid, VP_UUID_LEN);
    srv_uuid_str(uuid, dev->uuid_str);
    dev->ctrl_fd = dev->rx_kick_fd = dev->tx_kick_fd = dev->irq_fd = -1;
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        dev->wins[i].fd = -1;
    dev->frontends = g_ptr_array_new_with_free_func((GDestroyNotify)srv_frontend_free);
    dev->cq_pending = g_hash_table_new(g_int64_hash, g_int64_equal);
    g_queue_init(&dev->cq_out);
    g_queue_init(&dev->jobs);

    int d = srv_devfn_alloc(srv);
    if (d < 0) {
        vp_fail(err, -ENOSPC, "no free PCI slot for a vhost-pci control function");
        dev->devfn = 0xffffffffu;
        goto fail;
    }
    dev->devfn = (uint32_t)d;

    dev->ctrl_fd = memfd_create("vhost-pci-control", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (dev->ctrl_fd < 0 || ftruncate(dev->ctrl_fd, VP_CA_SIZE) < 0) {
        vp_fail(err, -errno, "control area memfd: %s", g_strerror(errno));
        goto fail;
    }
    void *p = mmap(NULL, VP_CA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, dev->ctrl_fd, 0);
    if (p == MAP_FAILED) {
        vp_fail(err, -errno, "mmap of the control area: %s", g_strerror(errno));
        goto fail;
    }
    dev->ca = p;
    dev->ca_size = VP_CA_SIZE;
    /* Sealed against resizing: a shrink would SIGBUS the device VM's QEMU. */
    if (fcntl(dev->ctrl_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        vp_fail(err, -errno, "sealing the control area: %s", g_strerror(errno));
        goto fail;
    }
    dev->rx_kick_fd = new_eventfd();
    dev->tx_kick_fd = new_eventfd();
    dev->irq_fd = new_eventfd();
    if (dev->rx_kick_fd < 0 || dev->tx_kick_fd < 0 || dev->irq_fd < 0) {
        vp_fail(err, -errno, "eventfd: %s", g_strerror(errno));
        goto fail;
    }
    write_header(dev);
    dev->rx_kick_src = g_unix_fd_add(dev->rx_kick_fd, G_IO_IN, on_kick, dev);
    dev->tx_kick_src = g_unix_fd_add(dev->tx_kick_fd, G_IO_IN, on_kick, dev);
    g_info("device %s: created, control function devfn 0x%x", dev->uuid_str, dev->devfn);
    return dev;

fail:
    dev->dead = true;
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
    if (dev->ca)
        munmap(dev->ca, dev->ca_size);
    dev->ca = NULL;
    vp_close_fd(&dev->ctrl_fd);
    vp_close_fd(&dev->rx_kick_fd);
    vp_close_fd(&dev->tx_kick_fd);
    vp_close_fd(&dev->irq_fd);
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        vp_close_fd(&dev->wins[i].fd);
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
    g_hash_table_destroy(dev->cq_pending);
    g_free(dev);
}

struct srv_device *srv_device_lookup(struct vp_server *srv, const uint8_t *uuid)
{
    char s[37];
    srv_uuid_str(uuid, s);
    return g_hash_table_lookup(srv->devices, s);
}

void srv_device_publish(struct srv_device *dev)
{
    g_hash_table_insert(dev->srv->devices, g_strdup(dev->uuid_str), srv_device_ref(dev));
    dev->in_table = true;
}

/* Fail every controlq op (queued or sent) with @why. */
static void fail_ops(struct srv_device *dev, const char *why)
{
    GList *all = NULL;
    struct srv_cq_op *op;
    while ((op = g_queue_pop_head(&dev->cq_out)))
        all = g_list_prepend(all, op);
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, dev->cq_pending);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        all = g_list_prepend(all, v);
        g_hash_table_iter_remove(&it);
    }
    all = g_list_reverse(all);
    for (GList *l = all; l; l = l->next) {
        op = l->data;
        op->done(dev, op->opaque, NULL, why);
        g_free(op);
    }
    g_list_free(all);
}

void srv_device_destroy(struct srv_device *dev, const char *why)
{
    if (dev->dead)
        return;
    struct vp_server *srv = dev->srv;
    srv_device_ref(dev);
    dev->dead = true;
    g_info("device %s: destroying (%s)", dev->uuid_str, why);
    if (dev->closing_timer)
        g_source_remove(dev->closing_timer);
    dev->closing_timer = 0;
    fail_ops(dev, why);
    srv_jobs_fail_all(dev, why);
    if (dev->job_idle)
        g_source_remove(dev->job_idle);
    dev->job_idle = 0;

    /* Windows first, then the control function. Functions still being plugged are
     * unplugged by their plug completion (it sees dev->dead). */
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        struct srv_window *w = &dev->wins[i];
        if (w->used && w->state == WIN_PLUGGED) {
            srv_unplug(srv, false, dev->devfn, w->devfn);
            w->used = false;
        }
    }
    if (dev->control_plugged) {
        srv_unplug(srv, true, dev->devfn, dev->devfn);
        dev->control_plugged = false;
        dev->devfn = 0xffffffffu;  /* freed by unplug_done */
    }
    close_resources(dev);
    if (dev->in_table) {
        dev->in_table = false;
        /* The table's value destroy function drops its reference. */
        g_hash_table_remove(srv->devices, dev->uuid_str);
    }
    srv_device_unref(dev);
}

/* ------------------------------ plugging ------------------------------ */

struct plug_ctx {
    struct srv_device *dev;           /* a reference */
    int win;                          /* window index, -1: the control function */
    uint32_t devfn;
    uint32_t ctrl_devfn;              /* the device's control function */
    void (*done)(struct srv_device *, void *, int, const char *);
    void *opaque;
};

static void plug_done(void *opaque, int ret, const char *reason)
{
    struct plug_ctx *c = opaque;
    struct srv_device *dev = c->dev;
    struct vp_server *srv = dev->srv;
    if (ret < 0)
        g_warning("device %s: plugging %s devfn 0x%x failed: %s", dev->uuid_str,
                  c->win < 0 ? "control function" : "window", c->devfn,
                  reason && *reason ? reason : g_strerror(-ret));
    if (dev->dead) {
        /* Destroyed meanwhile: take back what was plugged. */
        if (ret == 0)
            srv_unplug(srv, c->win < 0, c->ctrl_devfn, c->devfn);
        else
            srv_devfn_free(srv, c->devfn);
        if (c->win < 0) {
            dev->control_plugging = false;
            dev->devfn = 0xffffffffu;  /* handed to the unplug, or freed */
        }
        srv_device_unref(dev);
        g_free(c);
        return;
    }
    if (c->win < 0) {
        dev->control_plugging = false;
        dev->control_plugged = ret == 0;
        if (ret == 0 && srv_vectors_count(&dev->vectors)) {
            vp_error err = { "" };
            if (srv_device_announce_vectors(dev, &err))
                g_warning("device %s: %s", dev->uuid_str, err.msg);
        }
    } else {
        struct srv_window *w = &dev->wins[c->win];
        if (ret == 0) {
            w->state = WIN_PLUGGED;
        } else {
            srv_devfn_free(srv, w->devfn);
            vp_close_fd(&w->fd);
            w->used = false;
        }
    }
    char why[300];
    g_snprintf(why, sizeof(why), "%s", reason && *reason ? reason : (ret ? g_strerror(-ret) : ""));
    if (c->done)
        c->done(dev, c->opaque, ret, why);
    srv_device_unref(dev);
    g_free(c);
}

void srv_device_plug_control(struct srv_device *dev,
                             void (*done)(struct srv_device *, void *, int, const char *),
                             void *opaque)
{
    struct plug_ctx *c = g_new0(struct plug_ctx, 1);
    c->dev = srv_device_ref(dev);
    c->win = -1;
    c->devfn = dev->devfn;
    c->ctrl_devfn = dev->devfn;
    c->done = done;
    c->opaque = opaque;
    struct vp_devhost_control ctl = {
        .devfn = dev->devfn, .ctrl_fd = dev->ctrl_fd, .ctrl_size = dev->ca_size,
        .rx_kick_fd = dev->rx_kick_fd, .tx_kick_fd = dev->tx_kick_fd, .irq_fd = dev->irq_fd,
        .nvectors = VP_MAX_VECTORS,
    };
    memcpy(ctl.uuid, dev->uuid, VP_UUID_LEN);
    /* The driver validates the header as soon as the function appears: bar_size
     * (decided by now, also for a clone) must already be there, not only after the
     * first srv_device_write_windows(). */
    if (dev->ca)
        vp_put_le64(dev->ca + VP_CA_OFF_BAR_SIZE, dev->bar_size);
    dev->control_plugging = true;
    g_info("device %s: plugging control function devfn 0x%x", dev->uuid_str, dev->devfn);
    dev->srv->host_ops->plug_control(dev->srv->host, &ctl, plug_done, c);
}

int srv_device_add_window(struct srv_device *dev, const struct srv_file_id *file, int fd,
                          uint64_t bar_offset,
                          void (*done)(struct srv_device *, void *, int, const char *),
                          void *opaque, vp_error *err)
{
    int idx = -1;
    for (int i = 0; i < VP_MAX_WINDOWS && idx < 0; i++)
        if (!dev->wins[i].used)
            idx = i;
    if (idx < 0) {
        close(fd);
        return vp_fail(err, -ENOSPC, "a device has at most %d memory windows", VP_MAX_WINDOWS);
    }
    int devfn = srv_devfn_alloc(dev->srv);
    if (devfn < 0) {
        close(fd);
        return vp_fail(err, -ENOSPC, "no free PCI slot for a memory window");
    }
    struct srv_window *w = &dev->wins[idx];
    *w = (struct srv_window){ .used = true, .state = WIN_PLUGGING, .file = *file,
                              .bar_offset = bar_offset, .devfn = (uint32_t)devfn, .fd = fd };
    struct plug_ctx *c = g_new0(struct plug_ctx, 1);
    c->dev = srv_device_ref(dev);
    c->win = idx;
    c->devfn = w->devfn;
    c->ctrl_devfn = dev->devfn;
    c->done = done;
    c->opaque = opaque;
    g_info("device %s: plugging window devfn 0x%x (%" PRIu64 " bytes at BAR offset 0x%" PRIx64 ")",
           dev->uuid_str, w->devfn, file->size, bar_offset);
    dev->srv->host_ops->plug_window(dev->srv->host, dev->devfn, w->devfn, fd, file->size,
                                    plug_done, c);
    return idx;
}

void srv_device_set_bar_size(struct srv_device *dev, uint64_t bar_size)
{
    dev->bar_size = bar_size;
    if (dev->ca)
        vp_put_le64(dev->ca + VP_CA_OFF_BAR_SIZE, bar_size);
}

int srv_device_find_window(struct srv_device *dev, const struct srv_file_id *file)
{
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        struct srv_window *w = &dev->wins[i];
        if (w->used && w->file.dev == file->dev && w->file.ino == file->ino)
            return i;
    }
    return -1;
}

uint64_t srv_region_bar_offset(const struct srv_device *dev, const struct srv_region *r)
{
    return dev->wins[r->win].bar_offset + r->mmap_offset;
}

void srv_device_write_windows(struct srv_device *dev)
{
    if (!dev->ca)
        return;
    uint8_t *ca = dev->ca;
    uint32_t n = 0;
    vp_put_le64(ca + VP_CA_OFF_BAR_SIZE, dev->bar_size);
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        struct srv_window *w = &dev->wins[i];
        if (!w->used || w->state != WIN_PLUGGED)
            continue;
        uint8_t *e = ca + VP_CA_OFF_WINDOW + n * VP_CA_WINDOW_SIZE;
        memset(e, 0, VP_CA_WINDOW_SIZE);
        vp_put_le16(e + VP_CA_WIN_PCI_DOMAIN, 0);
        e[VP_CA_WIN_BUS] = 0;
        e[VP_CA_WIN_DEVFN] = (uint8_t)w->devfn;
        vp_put_le64(e + VP_CA_WIN_BAR_OFFSET, w->bar_offset);
        vp_put_le64(e + VP_CA_WIN_SIZE, w->file.size);
        n++;
    }
    memset(ca + VP_CA_OFF_WINDOW + n * VP_CA_WINDOW_SIZE, 0,
           (VP_MAX_WINDOWS - n) * VP_CA_WINDOW_SIZE);
    vp_put_le32(ca + VP_CA_OFF_NWINDOWS, n);
    dev->generation++;
    /* Orders the table writes above before the generation the driver polls. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    vp_put_le32(ca + VP_CA_OFF_GENERATION, dev->generation);
    /* Like a virtio configuration-change interrupt: the driver re-reads the table. */
    ring_irq(dev);
}

void srv_device_drop_unused_windows(struct srv_device *dev)
{
    bool changed = false;
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        struct srv_window *w = &dev->wins[i];
        if (!w->used || w->refs || w->state != WIN_PLUGGED)
            continue;
        g_info("device %s: dropping window devfn 0x%x", dev->uuid_str, w->devfn);
        w->used = false;
        vp_close_fd(&w->fd);
        srv_unplug(dev->srv, false, dev->devfn, w->devfn);
        changed = true;
    }
    if (changed)
        srv_device_write_windows(dev);
}

/* ------------------------------ frontends, vectors ------------------------------ */

void srv_frontend_free(struct srv_frontend *fe)
{
    if (!fe)
        return;
    for (uint32_t i = 0; i < fe->nvirtqs && i < VP_MAX_VIRTQS; i++) {
        vp_close_fd(&fe->virtqs[i].kick_fd);
        vp_close_fd(&fe->virtqs[i].call_fd);
    }
    g_free(fe);
}

struct srv_frontend *srv_device_find_frontend(struct srv_device *dev, uint64_t device_id,
                                              guint *idx)
{
    for (guint i = 0; i < dev->frontends->len; i++) {
        struct srv_frontend *fe = g_ptr_array_index(dev->frontends, i);
        if (fe->device_id == device_id) {
            if (idx)
                *idx = i;
            return fe;
        }
    }
    return NULL;
}

int srv_device_announce_vectors(struct srv_device *dev, vp_error *err)
{
    if (!dev->control_plugged && !dev->control_plugging)
        return 0;  /* announced when the control function is plugged */
    unsigned n = srv_vectors_count(&dev->vectors);
    int fds[VP_MAX_VECTORS];
    for (unsigned v = 0; v < n; v++) {
        fds[v] = -1;  /* a hole: no eventfd (the host keeps or fills it) */
        const struct srv_vector *e = &dev->vectors.v[v];
        if (!e->used)
            continue;
        struct srv_frontend *fe = srv_device_find_frontend(dev, e->device_id, NULL);
        for (uint32_t q = 0; fe && q < fe->nvirtqs; q++)
            if (fe->virtqs[q].index == e->index && fe->virtqs[q].call_fd >= 0)
                fds[v] = fe->virtqs[q].call_fd;
    }
    g_debug("device %s: announcing %u vector(s) of peer id %d", dev->uuid_str, n,
            VP_ID_DRIVER_VM);
    return dev->srv->host_ops->set_peer_vectors(dev->srv->host, dev->devfn, VP_ID_DRIVER_VM,
                                                fds, n, err);
}

/* ------------------------------ controlq ------------------------------ */

static void ring_irq(struct srv_device *dev)
{
    uint64_t one = 1;
    if (dev->irq_fd >= 0 && write(dev->irq_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        g_warning("device %s: controlq interrupt: %s", dev->uuid_str, g_strerror(errno));
}

void srv_device_break(struct srv_device *dev, const char *fmt, ...)
{
    if (dev->broken || dev->dead)
        return;
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(dev->broken_reason, sizeof(dev->broken_reason), fmt, ap);
    va_end(ap);
    dev->broken = true;
    g_warning("device %s: NEEDS_RESET: %s", dev->uuid_str, dev->broken_reason);
    dev->status |= VP_STATUS_NEEDS_RESET;
    if (dev->ca) {
        vp_put_le32(dev->ca + VP_CA_OFF_STATUS, dev->status);
        ring_irq(dev);
    }
    char why[320];
    g_snprintf(why, sizeof(why), "vhost-pci device needs reset: %s", dev->broken_reason);
    srv_device_ref(dev);
    fail_ops(dev, why);
    srv_device_unref(dev);
}

/* Does [addr, addr+len) lie inside the buffer pool? Overflow-proof. */
static bool in_pool(uint64_t addr, uint64_t len)
{
    return addr >= CA_BUF_OFF && vp_range_ok(addr - CA_BUF_OFF, len, CA_BUF_SIZE);
}

static void bad_ack(struct srv_device *dev, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void bad_ack(struct srv_device *dev, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    dev->counters.bad_acks++;
    dev->srv->counters.bad_messages++;
    g_warning("device %s: ignoring controlq message: %s", dev->uuid_str, why);
}

static bool result_fits(uint16_t op, uint64_t result)
{
    if (op == VP_OP_ADD)
        return result == VP_ACK_ADD_DONE || result == VP_ACK_ADD_FAIL;
    return result == VP_ACK_DEL_DONE || result == VP_ACK_DEL_FAIL;
}

static void handle_ack(struct srv_device *dev, const struct vp_cq_msg *m)
{
    if (m->type != VP_MSG_MEMORY_INFO_ACK && m->type != VP_MSG_DEVICE_INFO_ACK &&
        m->type != VP_MSG_FEATURE_BITS_ACK) {
        bad_ack(dev, "%s seq %" PRIu64 " on the receiveq is not an ACK",
                vp_msg_type_name(m->type), m->seq);
        return;
    }
    uint64_t seq = m->seq;
    struct srv_cq_op *op = g_hash_table_lookup(dev->cq_pending, &seq);
    if (!op) {
        bad_ack(dev, "%s seq %" PRIu64 " matches no outstanding message",
                vp_msg_type_name(m->type), seq);
        return;
    }
    if (m->type != op->type + 1) {
        bad_ack(dev, "%s seq %" PRIu64 " does not answer %s", vp_msg_type_name(m->type), seq,
                vp_msg_type_name(op->type));
        return;
    }
    if (op->type != VP_MSG_FEATURE_BITS && !result_fits(op->op, m->u.ack.result)) {
        bad_ack(dev, "%s seq %" PRIu64 " result %s does not answer op %s",
                vp_msg_type_name(m->type), seq, vp_ack_result_name(m->u.ack.result),
                op->op == VP_OP_ADD ? "ADD" : "DEL");
        return;
    }
    if (op->type == VP_MSG_DEVICE_INFO &&
        (m->device_id != op->device_id || m->device_type != op->device_type)) {
        bad_ack(dev, "%s seq %" PRIu64 " names device %s %" PRIu64 ", not %s %" PRIu64,
                vp_msg_type_name(m->type), seq, vp_device_type_name(m->device_type),
                m->device_id, vp_device_type_name(op->device_type), op->device_id);
        return;
    }
    g_hash_table_remove(dev->cq_pending, &seq);
    bool fail = op->type != VP_MSG_FEATURE_BITS &&
                (m->u.ack.result == VP_ACK_ADD_FAIL || m->u.ack.result == VP_ACK_DEL_FAIL);
    if (fail)
        dev->counters.acks_fail++;
    else
        dev->counters.acks_ok++;
    g_debug("device %s: controlq %s seq %" PRIu64 " %s%s%s", dev->uuid_str,
            vp_msg_type_name(m->type), seq,
            op->type == VP_MSG_FEATURE_BITS ? "" : vp_ack_result_name(m->u.ack.result),
            fail ? ": " : "", fail ? m->u.ack.reason : "");
    op->done(dev, op->opaque, m, NULL);
    g_free(op);
}

/* seq order of two controlq ops (GCompareFunc). */
static gint op_seq_cmp(gconstpointer a, gconstpointer b)
{
    const struct srv_cq_op *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The guest driver reset the device (asked with reset_req, or wrote a status without
 * DRIVER_OK / without our NEEDS_RESET): forget the device side of the old rings and
 * wait for its next DRIVER_OK. Messages the old driver never answered are sent again
 * to the new one, after the state replay (srv_req_replay), in their original order,
 * so every client request still gets exactly one answer and sees the effect it asked
 * for: the replay is built from the server's table, which already holds the effect
 * of an ADD in flight (an identical region or frontend again is harmless to the
 * driver) and not yet that of a DEL or FEATURE_BITS in flight (sent again, it is
 * applied on top). Failing them instead would roll back table entries the replay has
 * just handed to the new driver. */
static void driver_reset(struct srv_device *dev, const char *why)
{
    unsigned resend = g_hash_table_size(dev->cq_pending);
    bool had_state = dev->driver_ok || dev->broken || dev->replay_due;
    if (dev->driver_ok || dev->broken)
        dev->counters.resets++;  /* one per driver that went away (not per signal of it) */
    g_message("device %s: guest driver reset the device (%s)%s; %u unanswered controlq "
              "message(s) go to the next driver", dev->uuid_str, why,
              dev->broken ? ", leaving NEEDS_RESET" : "", resend + g_queue_get_length(&dev->cq_out));
    dev->driver_ok = false;
    dev->broken = false;
    dev->broken_reason[0] = 0;
    dev->replay_due = had_state;
    /* Sent but unanswered ones first (they went out before the queued ones). */
    GList *sent = g_hash_table_get_values(dev->cq_pending);
    g_hash_table_steal_all(dev->cq_pending);
    sent = g_list_sort(sent, op_seq_cmp);
    for (GList *l = g_list_last(sent); l; l = l->prev)
        g_queue_push_head(&dev->cq_out, l->data);
    g_list_free(sent);
    /* A replay the old driver did not finish is superseded by the next one (so a
     * driver that keeps resetting cannot make the queue grow). */
    GList *stale = NULL;
    for (GList *l = dev->cq_out.head; l; l = l->next)
        if (((struct srv_cq_op *)l->data)->replay)
            stale = g_list_prepend(stale, l->data);
    for (GList *l = stale; l; l = l->next) {
        struct srv_cq_op *op = l->data;
        g_queue_remove(&dev->cq_out, op);
        op->done(dev, op->opaque, NULL, "superseded by the replay after the next reset");
        g_free(op);
    }
    g_list_free(stale);
}

static void attach_rings(struct srv_device *dev)
{
    struct vp_vring_mem m0 = { dev->ca + CA_Q0_DESC, dev->ca + CA_Q0_AVAIL,
                               dev->ca + CA_Q0_USED, VP_CA_QUEUE_NUM };
    struct vp_vring_mem m1 = { dev->ca + CA_Q1_DESC, dev->ca + CA_Q1_AVAIL,
                               dev->ca + CA_Q1_USED, VP_CA_QUEUE_NUM };
    if (vp_vring_dev_init(&dev->rxq, &m0, true, 0) || vp_vring_dev_init(&dev->txq, &m1, true, 0)) {
        srv_device_break(dev, "cannot attach the controlq rings");
        return;
    }
    dev->driver_ok = true;
    vp_vring_dev_set_notify(&dev->rxq, true);
    vp_vring_dev_set_notify(&dev->txq, true);
    g_info("device %s: guest driver is DRIVER_OK (status 0x%x)", dev->uuid_str, dev->status);
    if (dev->replay_due) {
        /* After a reset: the state replay goes ahead of the messages held back. */
        dev->replay_due = false;
        GQueue held = G_QUEUE_INIT;
        struct srv_cq_op *op;
        while ((op = g_queue_pop_head(&dev->cq_out)))
            g_queue_push_tail(&held, op);
        dev->replaying = true;
        srv_req_replay(dev);
        dev->replaying = false;
        while ((op = g_queue_pop_head(&held)))
            g_queue_push_tail(&dev->cq_out, op);
        g_message("device %s: new guest driver is DRIVER_OK: device state replayed on the "
                  "controlq", dev->uuid_str);
    }
    if (dev->on_driver_ok) {
        void (*cb)(struct srv_device *, void *) = dev->on_driver_ok;
        dev->on_driver_ok = NULL;
        cb(dev, dev->on_driver_ok_opaque);
    }
}

static void read_status(struct srv_device *dev)
{
    uint32_t req = vp_get_le32(dev->ca + VP_CA_OFF_RESET_REQ);  /* read once */
    if (req != dev->reset_seen) {
        driver_reset(dev, "it asked for a reset");
        dev->reset_seen = req;
        /* Stop touching the old rings before saying so. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        vp_put_le32(dev->ca + VP_CA_OFF_RESET_DONE, req);
        ring_irq(dev);
    }
    /* Read after the reset answer: the driver may have gone on meanwhile. */
    uint32_t st = vp_get_le32(dev->ca + VP_CA_OFF_STATUS);  /* read once */
    if (st != dev->status)
        g_debug("device %s: device_status 0x%x", dev->uuid_str, st);
    dev->status = st;
    if (dev->broken) {
        if (st & (VP_STATUS_NEEDS_RESET | VP_STATUS_FAILED))
            return;  /* still broken: the driver has not reset it */
        /* The driver wrote over our NEEDS_RESET: it is starting afresh. */
        char why[64];
        g_snprintf(why, sizeof(why), "status 0x%x after NEEDS_RESET", st);
        driver_reset(dev, why);
    }
    if (st & VP_STATUS_FAILED) {
        srv_device_break(dev, "guest driver set FAILED (status 0x%x)", st);
        return;
    }
    if (!dev->driver_ok) {
        if (st & VP_STATUS_NEEDS_RESET)
            srv_device_break(dev, "guest driver set NEEDS_RESET (status 0x%x)", st);
        else if (st & VP_STATUS_DRIVER_OK) {
            if (!(st & VP_STATUS_FEATURES_OK))
                g_warning("device %s: DRIVER_OK without FEATURES_OK (status 0x%x)",
                          dev->uuid_str, st);
            attach_rings(dev);
        }
    } else if (!(st & VP_STATUS_DRIVER_OK)) {
        char why[64];
        g_snprintf(why, sizeof(why), "status 0x%x without DRIVER_OK", st);
        driver_reset(dev, why);
    } else if (st & VP_STATUS_NEEDS_RESET) {
        srv_device_break(dev, "guest driver set NEEDS_RESET (status 0x%x)", st);
    }
}

static void service_rx(struct srv_device *dev)
{
    for (;;) {
        if (dev->dead || dev->broken || !dev->driver_ok)
            return;
        struct vp_vring_seg segs[16];
        unsigned nsegs = 0;
        uint16_t head = 0;
        int r = vp_vring_dev_pop(&dev->rxq, segs, G_N_ELEMENTS(segs), &nsegs, &head);
        if (r < 0) {
            srv_device_break(dev, "control receiveq broken: %s", dev->rxq.why);
            return;
        }
        if (r == 0) {
            if (vp_vring_dev_set_notify(&dev->rxq, true))
                continue;
            return;
        }
        uint8_t buf[VP_CA_BUF_SLOT];
        size_t len = 0;
        for (unsigned i = 0; i < nsegs; i++) {
            if (segs[i].write)
                continue;  /* an ACK buffer has nothing for the device to write */
            if (!in_pool(segs[i].addr, segs[i].len)) {
                srv_device_break(dev, "receiveq descriptor 0x%" PRIx64 "+%u is outside the "
                                 "buffer pool", segs[i].addr, segs[i].len);
                return;
            }
            if (segs[i].len > sizeof(buf) - len) {
                srv_device_break(dev, "receiveq message larger than %zu bytes", sizeof(buf));
                return;
            }
            memcpy(buf + len, dev->ca + segs[i].addr, segs[i].len);  /* copied once */
            len += segs[i].len;
        }
        if (vp_vring_dev_push(&dev->rxq, head, 0) < 0) {
            srv_device_break(dev, "control receiveq broken: %s", dev->rxq.why);
            return;
        }
        vp_vring_dev_flush(&dev->rxq);
        if (vp_vring_dev_need_notify(&dev->rxq))
            ring_irq(dev);
        dev->counters.controlq_rx++;
        struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
        vp_error err = { "" };
        if (vp_cq_decode(buf, len, m, &err) < 0) {
            g_free(m);
            srv_device_break(dev, "malformed controlq message from the guest driver: %s",
                             err.msg);
            return;
        }
        handle_ack(dev, m);
        g_free(m);
    }
}

static void service_tx(struct srv_device *dev)
{
    bool sent = false;
    while (!g_queue_is_empty(&dev->cq_out)) {
        if (dev->dead || dev->broken || !dev->driver_ok)
            break;
        struct vp_vring_seg segs[16];
        unsigned nsegs = 0;
        uint16_t head = 0;
        int r = vp_vring_dev_pop(&dev->txq, segs, G_N_ELEMENTS(segs), &nsegs, &head);
        if (r < 0) {
            srv_device_break(dev, "control transmitq broken: %s", dev->txq.why);
            break;
        }
        if (r == 0) {
            if (vp_vring_dev_set_notify(&dev->txq, true))
                continue;
            g_debug("device %s: waiting for transmitq buffers", dev->uuid_str);
            break;
        }
        struct srv_cq_op *op = g_queue_peek_head(&dev->cq_out);
        size_t off = 0;
        for (unsigned i = 0; i < nsegs && off < op->len; i++) {
            if (!segs[i].write) {
                srv_device_break(dev, "transmitq buffer is not device-writable");
                goto out;
            }
            if (!in_pool(segs[i].addr, segs[i].len)) {
                srv_device_break(dev, "transmitq descriptor 0x%" PRIx64 "+%u is outside the "
                                 "buffer pool", segs[i].addr, segs[i].len);
                goto out;
            }
            size_t n = MIN((size_t)segs[i].len, op->len - off);
            memcpy(dev->ca + segs[i].addr, op->buf + off, n);
            off += n;
        }
        if (off < op->len) {
            srv_device_break(dev, "transmitq buffer too small for a %zu-byte message", op->len);
            break;
        }
        if (vp_vring_dev_push(&dev->txq, head, (uint32_t)op->len) < 0) {
            srv_device_break(dev, "control transmitq broken: %s", dev->txq.why);
            break;
        }
        vp_vring_dev_flush(&dev->txq);
        g_queue_pop_head(&dev->cq_out);
        g_hash_table_insert(dev->cq_pending, &op->seq, op);
        dev->counters.controlq_tx++;
        g_debug("device %s: controlq -> %s seq %" PRIu64, dev->uuid_str,
                vp_msg_type_name(op->type), op->seq);
        sent = true;
    }
out:
    /* The briefing's rule: put the message on the transmitq and ring the controlq
     * interrupt (spurious interrupts are harmless; the driver also polls). */
    if (sent && !dev->dead)
        ring_irq(dev);
}

static void service(struct srv_device *dev)
{
    if (dev->dead)
        return;
    srv_device_ref(dev);
    if (dev->broken && dev->ca)
        read_status(dev);  /* a driver reset takes the device back */
    if (dev->broken) {
        char why[320];
        g_snprintf(why, sizeof(why), "vhost-pci device needs reset: %s", dev->broken_reason);
        fail_ops(dev, why);
    } else {
        read_status(dev);
        service_rx(dev);
        service_tx(dev);
    }
    srv_device_unref(dev);
}

static gboolean on_kick(gint fd, GIOCondition cond, gpointer data)
{
    (void)cond;
    uint64_t v;
    while (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        ;  /* drain */
    service(data);
    return G_SOURCE_CONTINUE;
}

static gboolean service_idle(gpointer data)
{
    struct srv_device *dev = data;
    service(dev);
    srv_device_unref(dev);
    return G_SOURCE_REMOVE;
}

uint64_t srv_cq_submit(struct srv_device *dev, struct vp_cq_msg *m, srv_cq_done_fn done,
                       void *opaque)
{
    struct srv_cq_op *op = g_new0(struct srv_cq_op, 1);
    op->seq = ++dev->next_cq_seq;
    op->done = done;
    op->opaque = opaque;
    op->replay = dev->replaying;
    op->type = m->type;
    op->device_type = m->device_type;
    op->device_id = m->device_id;
    op->op = m->type == VP_MSG_MEMORY_INFO ? m->u.mem.op
           : m->type == VP_MSG_DEVICE_INFO ? m->u.dev.op : 0;
    m->seq = op->seq;
    m->version = VP_MSG_VERSION;
    int len = vp_cq_encode(m, op->buf, sizeof(op->buf));
    if (len <= 0) {
        /* Our own message: a bug, not a peer error. Fail it from the loop. */
        g_warning("device %s: cannot encode controlq %s (%d)", dev->uuid_str,
                  vp_msg_type_name(m->type), len);
        op->len = 0;
        srv_device_break(dev, "internal error encoding a controlq message");
    } else {
        op->len = (size_t)len;
    }
    g_queue_push_tail(&dev->cq_out, op);
    g_idle_add(service_idle, srv_device_ref(dev));
    return op->seq;
}
