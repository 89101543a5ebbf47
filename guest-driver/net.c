/*
 * net.c - vhost-pci-net: the virtio-net device side of the driver VMs' queues
 * (net.h, DESIGN section 6, virtio 1.0 5.1): ports and their queue pairs started and
 * stopped for the control plane's hooks (datapath.h), memory leaving and joining the
 * table, the status. The per-frame path is net_path.c, the threads net_worker.c.
 *
 * Security model: the frontend's queue list comes from a DEVICE_INFO the control
 * plane already validated (indexes unique and below VP_MAX_VIRTQS, sizes powers of
 * two, every ring inside one region of the memory table); a NET frontend is served
 * the queue pairs 0 .. n-1 it lists completely (receiveq 2q and transmitq 2q + 1),
 * any other queue (the virtio-net control queue, a lone half of a pair) is left
 * alone. Every hook runs with every worker parked (net_pause), so no worker ever
 * sees a half-made change. libc (and pthreads) only.
 */
#include "net.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "net_priv.h"
#include "vp_ctrlarea.h"
#include "vp_wire.h"

/* ------------------------- the calling thread's roles ------------------------- */

/* Kept here, in the parent, so that net_path.c (the per-frame path) and net_worker.c
 * (the threads) both read them without calling each other. */
static __thread struct net_worker *cur_worker;
static __thread struct net_pair *cur_tx_pair;

struct net_worker *net_current_worker(void) { return cur_worker; }
void net_set_current_worker(struct net_worker *w) { cur_worker = w; }
struct net_pair *net_current_tx_pair(void) { return cur_tx_pair; }
void net_set_current_tx_pair(struct net_pair *pair) { cur_tx_pair = pair; }

/* ------------------------------ life cycle ------------------------------ */

static int vq_setup(struct net_pair *pair, struct net_vq *vq, struct gd_queue *q,
                    const char *what, vp_error *err)
{
    vq->pair = pair;
    vq->q = q;
    vq->what = what;
    vq->segs = calloc(q->num, sizeof(*vq->segs));
    vq->stash = calloc(q->num, sizeof(*vq->stash));
    if (!vq->segs || !vq->stash)
        return vp_fail(err, -ENOMEM, "out of memory");
    q->dp = vq;
    return net_vq_attach(vq, err);
}

static void port_free(struct gd_net_port *p)
{
    if (!p)
        return;
    for (unsigned i = 0; p->pairs && i < p->npairs; i++) {
        struct net_pair *pair = &p->pairs[i];
        if (pair->rx.q)
            pair->rx.q->dp = NULL;
        if (pair->tx.q)
            pair->tx.q->dp = NULL;
        free(pair->rx.segs);
        free(pair->rx.stash);
        free(pair->tx.segs);
        free(pair->tx.stash);
        pthread_mutex_destroy(&pair->rx_lock);
    }
    free(p->pairs);
    free(p);
}

static struct gd_queue *find_queue(struct gd_frontend *fe, uint32_t index)
{
    for (uint32_t i = 0; i < fe->nqueues; i++) {
        if (fe->queues[i].index == index)
            return &fe->queues[i];
    }
    return NULL;
}

/* Queue pairs a frontend lists completely from pair 0 on (virtio 1.0 5.1.2). */
static unsigned count_pairs(struct gd_frontend *fe)
{
    unsigned n = 0;
    while (n < VP_MAX_VIRTQS / 2 && find_queue(fe, 2 * n) && find_queue(fe, 2 * n + 1))
        n++;
    return n;
}

static void remove_port(struct gd_net *net, struct gd_net_port *p)
{
    for (unsigned i = 0; i < net->nports; i++) {
        if (net->ports[i] == p) {
            memmove(&net->ports[i], &net->ports[i + 1],
                    (net->nports - i - 1) * sizeof(net->ports[0]));
            net->nports--;
            break;
        }
    }
}

static int frontend_start(struct gd_net *net, struct gd_device *dev, struct gd_frontend *fe,
                          vp_error *err)
{
    if (fe->device_type != VP_DEV_NET)
        return vp_fail(err, -EOPNOTSUPP, "vhost-pci-net serves NET frontends only");
    unsigned npairs = count_pairs(fe);
    if (!npairs)
        return vp_fail(err, -EINVAL, "a NET frontend needs virtqueues 0 (receiveq) and 1 "
                       "(transmitq)");
    if (net->nports == net->cap) {
        unsigned ncap = net->cap ? net->cap * 2 : 8;
        struct gd_net_port **np = realloc(net->ports, ncap * sizeof(*np));
        if (!np)
            return vp_fail(err, -ENOMEM, "out of memory");
        net->ports = np;
        net->cap = ncap;
    }
    struct gd_net_port *p = calloc(1, sizeof(*p));
    if (p) {
        /* Aligned (struct net_pair): the pairs' workers share no cache line. */
        p->pairs = aligned_alloc(NET_CACHE_LINE, npairs * sizeof(*p->pairs));
        if (p->pairs)
            memset(p->pairs, 0, npairs * sizeof(*p->pairs));
    }
    if (!p || !p->pairs) {
        free(p);
        return vp_fail(err, -ENOMEM, "out of memory");
    }
    p->net = net;
    p->dev = dev;
    p->fe = fe;
    memcpy(p->uuid, dev->layout.peer_uuid, sizeof(p->uuid));
    p->device_id = fe->device_id;
    uint64_t f = gd_device_features(dev);
    p->mrg = f & (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF);
    p->event_idx = f & (1ULL << VP_VIRTIO_F_RING_EVENT_IDX);
    p->hdr_len = (p->mrg || (f & (1ULL << VP_VIRTIO_F_VERSION_1))) ? 12 : 10;
    snprintf(p->name, sizeof(p->name), "slot %u net %llu", gd_device_slot(dev),
             (unsigned long long)fe->device_id);
    int r = 0;
    for (unsigned q = 0; q < npairs && !r; q++) {
        struct net_pair *pair = &p->pairs[q];
        pair->port = p;
        pair->index = q;
        pthread_mutex_init(&pair->rx_lock, NULL);
        p->npairs = q + 1; /* port_free undoes what was set up */
        r = vq_setup(pair, &pair->rx, find_queue(fe, 2 * q), "receiveq", err);
        if (!r)
            r = vq_setup(pair, &pair->tx, find_queue(fe, 2 * q + 1), "transmitq", err);
    }
    if (r < 0) {
        port_free(p);
        return r;
    }
    fe->dp = p;
    net->ports[net->nports++] = p;
    if (net_assign(net) < 0) {
        remove_port(net, p);
        net_assign(net);
        fe->dp = NULL;
        port_free(p);
        return vp_fail(err, -ENOMEM, "out of memory");
    }
    if (net->ep->ops->port_added)
        net->ep->ops->port_added(net->ep, p);
    gd_info("%s: started: features 0x%llx, %u-byte header, mergeable %s, event index %s, "
            "%u queue pair(s) of %u entries, pair 0 from %u/%u, endpoint %s, worker%s %u%s",
            p->name, (unsigned long long)f, p->hdr_len, p->mrg ? "yes" : "no",
            p->event_idx ? "yes" : "no", npairs, p->pairs[0].rx.q->num,
            p->pairs[0].rx.q->last_avail_idx, p->pairs[0].tx.q->last_avail_idx,
            net->ep->ops->name, npairs > 1 ? "s from" : "", p->pairs[0].w->index,
            net->nworkers ? "" : " (inline)");
    return 0;
}

static int net_frontend_start(void *opaque, struct gd_device *dev, struct gd_frontend *fe,
                              vp_error *err)
{
    struct gd_net *net = opaque;
    net_pause(net);
    int r = frontend_start(net, dev, fe, err);
    net_resume(net);
    return r;
}

static void net_frontend_stop(void *opaque, struct gd_device *dev, struct gd_frontend *fe)
{
    struct gd_net *net = opaque;
    (void)dev;
    struct gd_net_port *p = fe->dp;
    if (!p)
        return;
    net_pause(net);
    if (net->ep->ops->port_removed)
        net->ep->ops->port_removed(net->ep, p);
    uint64_t rx = 0, tx = 0, drops = 0;
    for (unsigned q = 0; q < p->npairs; q++) {
        struct net_pair *pair = &p->pairs[q];
        net_vq_detach(&pair->rx);
        net_vq_detach(&pair->tx);
        rx += pair->rx.q->packets;
        tx += pair->tx.q->packets;
        drops += pair->drops;
    }
    remove_port(net, p);
    net_assign(net);
    gd_info("%s: stopped: %u pair(s), pair 0 at %u/%u, %llu frames received, %llu "
            "transmitted, %llu dropped", p->name, p->npairs, p->pairs[0].rx.q->last_avail_idx,
            p->pairs[0].tx.q->last_avail_idx, (unsigned long long)rx, (unsigned long long)tx,
            (unsigned long long)drops);
    fe->dp = NULL;
    port_free(p);
    net_resume(net);
}

/* Does any ring of @vq lie in one of @regs (which are leaving the table)? */
static bool vq_uses(const struct net_vq *vq, const struct vp_mt_region *regs, unsigned n)
{
    const struct gd_queue *q = vq->q;
    struct vp_ring_layout l = { .index = q->index, .num = q->num, .desc = q->desc,
                                .avail = q->avail, .used = q->used };
    for (unsigned i = 0; i < n; i++) {
        if (vp_ring_overlaps(&l, regs[i].gpa, regs[i].size))
            return true;
    }
    return false;
}

/* The regions a memory change is about (for the per-virtqueue steps below). */
struct mem_change {
    const struct vp_mt_region *regs;
    unsigned n;
};

/* Call @fn for every virtqueue (receiveq and transmitq of every pair) of the ports of
 * @dev; the caller has paused the workers. */
static void for_each_vq(struct gd_net *net, const struct gd_device *dev,
                        void (*fn)(struct gd_net_port *p, struct net_vq *vq,
                                   const struct mem_change *c),
                        const struct mem_change *c)
{
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        if (p->dev != dev)
            continue;
        for (unsigned q = 0; q < p->npairs; q++) {
            fn(p, &p->pairs[q].rx, c);
            fn(p, &p->pairs[q].tx, c);
        }
    }
}

/* A region leaves: a virtqueue whose rings lie in it is parked until memory returns. */
static void vq_memory_del(struct gd_net_port *p, struct net_vq *vq, const struct mem_change *c)
{
    vq->hint.size = 0; /* its region may be going */
    if (!vq->active || !vq_uses(vq, c->regs, c->n))
        return;
    net_vq_detach(vq);
    vq->parked = true;
    gd_info("%s: virtqueue %u parked at %u: its rings left the memory table", p->name,
            vq->q->index, vq->q->last_avail_idx);
}

/* Regions arrive: a parked virtqueue whose rings are back resumes. */
static void vq_memory_add(struct gd_net_port *p, struct net_vq *vq, const struct mem_change *c)
{
    (void)c;
    if (!vq->parked || vq->q->broken)
        return;
    vp_error err = { { 0 } };
    if (net_vq_attach(vq, &err) == 0)
        gd_info("%s: virtqueue %u resumed at %u", p->name, vq->q->index,
                vq->q->last_avail_idx);
}

static void net_memory_del(void *opaque, struct gd_device *dev, const struct vp_mt_region *regs,
                           unsigned n)
{
    struct gd_net *net = opaque;
    net_pause(net);
    for_each_vq(net, dev, vq_memory_del, &(struct mem_change){ regs, n });
    net_resume(net);
}

static void net_memory_add(void *opaque, struct gd_device *dev, const struct vp_mt_region *regs,
                           unsigned n)
{
    struct gd_net *net = opaque;
    net_pause(net);
    for_each_vq(net, dev, vq_memory_add, &(struct mem_change){ regs, n });
    net_resume(net);
}

static void net_features(void *opaque, struct gd_device *dev, uint64_t features)
{
    (void)opaque;
    /* Ports keep the features they started with; a change comes with new
     * DEVICE_INFO(ADD)s (spec 1.5.1.1). */
    gd_debug("slot %u: features now 0x%llx (applies to frontends started from now on)",
             gd_device_slot(dev), (unsigned long long)features);
}

static void net_status(void *opaque, struct gd_json *j)
{
    struct gd_net *net = opaque;
    gd_json_string(j, "endpoint", net->ep->ops->name);
    gd_json_uint(j, "ports", net->nports);
    gd_json_uint(j, "workers", net->nworkers);
    uint64_t drops = 0;
    for (unsigned i = 0; i < net->nports; i++) {
        for (unsigned q = 0; q < net->ports[i]->npairs; q++)
            drops += __atomic_load_n(&net->ports[i]->pairs[q].drops, __ATOMIC_RELAXED);
    }
    gd_json_uint(j, "port_drops", drops);
    gd_json_uint(j, "endpoint_drops", __atomic_load_n(&net->ep->drops, __ATOMIC_RELAXED));
    if (net->ep->ops->status) {
        gd_json_begin_object(j, net->ep->ops->name);
        net->ep->ops->status(net->ep, j);
        gd_json_end_object(j);
    }
}

static void net_pause_hook(void *opaque) { net_pause(opaque); }
static void net_resume_hook(void *opaque) { net_resume(opaque); }

const struct gd_datapath_ops gd_net_ops = {
    .frontend_start = net_frontend_start,
    .frontend_stop = net_frontend_stop,
    .memory_del = net_memory_del,
    .memory_add = net_memory_add,
    .features = net_features,
    .status = net_status,
    .pause = net_pause_hook,
    .resume = net_resume_hook,
};

struct gd_net *gd_net_new(struct gd_loop *loop, struct gd_endpoint *ep)
{
    struct gd_net *net = calloc(1, sizeof(*net));
    if (!net) {
        gd_endpoint_free(ep);
        return NULL;
    }
    net->loop = loop;
    net->ep = ep;
    ep->net = net;
    net->inl = (struct net_worker){ .net = net, .loop = loop, .wake_fd = -1 };
    return net;
}

int gd_net_set_workers(struct gd_net *net, unsigned max)
{
    if (net->nports || net->nworkers)
        return -EBUSY;
    net->max_workers = max > GD_NET_MAX_WORKERS ? GD_NET_MAX_WORKERS : max;
    return 0;
}

void gd_net_free(struct gd_net *net)
{
    if (!net)
        return;
    if (net->nports)
        gd_warn("vhost-pci-net freed with %u port(s) still started", net->nports);
    net_workers_free(net);
    gd_endpoint_free(net->ep);
    free(net->ports);
    free(net);
}

/* ------------------------------ accessors ------------------------------ */

const uint8_t *gd_net_port_uuid(const struct gd_net_port *p) { return p->uuid; }
uint64_t gd_net_port_device_id(const struct gd_net_port *p) { return p->device_id; }
const char *gd_net_port_name(const struct gd_net_port *p) { return p->name; }
unsigned gd_net_nports(const struct gd_net *net) { return net->nports; }
unsigned gd_net_nworkers(const struct gd_net *net) { return net->nworkers; }
struct gd_net_port *gd_net_port_at(const struct gd_net *net, unsigned i)
{
    return i < net->nports ? net->ports[i] : NULL;
}

struct gd_net_port *gd_net_find_port(const struct gd_net *net, const uint8_t uuid[16],
                                     uint64_t device_id)
{
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        if (p->device_id == device_id && !memcmp(p->uuid, uuid, 16))
            return p;
    }
    return NULL;
}
