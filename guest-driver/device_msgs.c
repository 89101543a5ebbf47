/*
 * device_msgs.c - the controlq messages a vhost-pci device handles (device.h; spec
 * 1.5.2, 1.6.2): MEMORY_INFO (the memory table, protocol/vp_memtable, plus the check
 * that every region lies in one mapped window), DEVICE_INFO (the support list of
 * frontends, their rings checked by vp_ring_check / vp_mt_check_ring, started and
 * stopped through the data path) and FEATURE_BITS. One handler per request type,
 * each filling the ACK.
 *
 * Security model: a message reaches a handler decoded and validated (vp_cq_decode);
 * its values are still the server's: every region and ring is checked against the
 * table and the windows before use, a refusal is an *_FAIL with a reason (the device
 * stays healthy), and memory or a frontend goes only after the data path stopped
 * using it (spec 1.6.2). libc only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane.h"
#include "device_priv.h"
#include "log.h"
#include "vp_memtable.h"
#include "vp_wire.h"

/* Every region of a MEMORY_INFO(ADD) inside one mapped window: 0, -EAGAIN when one is
 * only waiting for its window (and none is refused for good), else the first refusal. */
static int windows_check(struct gd_device *dev, const struct vp_mt_region *r, unsigned n,
                         vp_error *err)
{
    bool again = false;
    vp_error again_err = { { 0 } };
    for (unsigned i = 0; i < n; i++) {
        vp_error werr = { { 0 } };
        int c = gd_dev_window_check(dev, r[i].target, r[i].size, &werr);
        if (c == -EAGAIN && !again) {
            again = true;
            snprintf(again_err.msg, sizeof(again_err.msg), "region %u: %s", i, werr.msg);
        } else if (c < 0 && c != -EAGAIN) {
            return vp_fail(err, c, "region %u (xgpa 0x%llx size 0x%llx bar offset 0x%llx): %s",
                           i, (unsigned long long)r[i].gpa, (unsigned long long)r[i].size,
                           (unsigned long long)r[i].target, werr.msg);
        }
    }
    return again ? vp_fail(err, -EAGAIN, "%s", again_err.msg) : 0;
}

/* The regions of a controlq MEMORY_INFO as memory table regions (target: the offset
 * in the logical BAR). */
static void to_mt(const struct vp_cq_region *c, unsigned n, struct vp_mt_region *out)
{
    for (unsigned i = 0; i < n; i++)
        out[i] = (struct vp_mt_region){ .gpa = c[i].xgpa, .size = c[i].size,
                                        .target = c[i].bar_offset };
}

static enum gd_handled memory_info(struct gd_device *dev, const struct vp_cq_msg *m,
                                   struct vp_cq_msg *ack, bool last_try)
{
    vp_error err = { { 0 } };
    if (gd_dev_refresh_windows(dev, false) < 0)
        return GD_H_BROKEN;
    unsigned n = m->u.mem.nregions;
    struct vp_mt_region regs[VP_MAX_REGIONS];
    to_mt(m->u.mem.regions, n, regs);
    if (m->u.mem.op == VP_OP_ADD) {
        /* The same MEMORY_INFO again (a replay) is no overlap: its regions are skipped. */
        unsigned added = 0;
        int r = vp_mt_check_add(&dev->mt, regs, n, VP_MT_SKIP_SAME, NULL, &err);
        if (!r)
            r = windows_check(dev, regs, n, &err);
        if (r == -EAGAIN && !last_try)
            return GD_H_RETRY;
        if (!r)
            r = vp_mt_add(&dev->mt, regs, n, VP_MT_SKIP_SAME, &added, &err);
        if (r < 0) {
            char why[VP_MAX_REASON + 1];
            snprintf(why, sizeof(why), "%s%s", r == -EAGAIN ? "timed out: " : "", err.msg);
            gd_warn("slot %u: MEMORY_INFO(ADD) seq %llu refused: %s", dev->slot,
                    (unsigned long long)m->seq, why);
            vp_cq_make_ack(ack, m, VP_ACK_ADD_FAIL, why);
            return GD_H_ACK;
        }
        gd_dev_memory_add(dev, &dev->mt.r[dev->mt.n - added], added);
        gd_info("slot %u: memory table: %u region(s) added (%u known)", dev->slot, added,
                dev->mt.n);
        vp_cq_make_ack(ack, m, VP_ACK_ADD_DONE, NULL);
        return GD_H_ACK;
    }
    /* DEL: all named regions must be known; the data path stops using them first
     * (spec 1.6.2), then they leave the table, then the ACK goes out. */
    if (vp_mt_check_del(&dev->mt, regs, n, &err) < 0) {
        gd_warn("slot %u: MEMORY_INFO(DEL) seq %llu refused: %s", dev->slot,
                (unsigned long long)m->seq, err.msg);
        vp_cq_make_ack(ack, m, VP_ACK_DEL_FAIL, err.msg);
        return GD_H_ACK;
    }
    struct vp_mt_region gone[VP_MAX_REGIONS];
    for (unsigned i = 0; i < n; i++)
        gone[i] = dev->mt.r[vp_mt_find(&dev->mt, regs[i].gpa)]; /* checked: present */
    gd_dev_memory_del(dev, gone, n);
    vp_mt_del(&dev->mt, gone, n);
    gd_info("slot %u: memory table: %u region(s) deleted (%u left)", dev->slot, n, dev->mt.n);
    vp_cq_make_ack(ack, m, VP_ACK_DEL_DONE, NULL);
    return GD_H_ACK;
}

static enum gd_handled handle_memory_info(struct gd_device *dev, const struct vp_cq_msg *m,
                                          struct vp_cq_msg *ack, bool last_try)
{
    gd_dev_pause(dev);
    enum gd_handled h = memory_info(dev, m, ack, last_try);
    gd_dev_resume(dev);
    return h;
}

static int validate_virtqs(struct gd_device *dev, const struct vp_cq_msg *m, vp_error *err)
{
    uint32_t n = m->u.dev.nvirtqs;
    if (n == 0)
        return vp_fail(err, -EINVAL, "no virtqueues");
    for (uint32_t i = 0; i < n; i++) {
        const struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        if (q->index >= VP_MAX_VIRTQS)
            return vp_fail(err, -EINVAL, "virtq index %u exceeds %u", q->index,
                           VP_MAX_VIRTQS - 1);
        for (uint32_t j = 0; j < i; j++) {
            if (m->u.dev.virtqs[j].index == q->index)
                return vp_fail(err, -EINVAL, "virtq index %u listed twice", q->index);
        }
        if (q->call_vector != VP_NO_VECTOR && q->call_vector >= VP_MAX_VECTORS)
            return vp_fail(err, -EINVAL, "virtq %u: call vector %u exceeds %u", q->index,
                           q->call_vector, VP_MAX_VECTORS - 1);
        /* Size, alignment, no wrap; each part inside one region of the table. */
        struct vp_ring_layout l = { .index = q->index, .num = q->num, .desc = q->desc,
                                    .avail = q->avail, .used = q->used };
        int r = vp_ring_check(&l, err);
        if (!r)
            r = vp_mt_check_ring(&dev->mt, &l, err);
        if (r)
            return r;
    }
    return 0;
}

struct gd_frontend *gd_device_frontend(struct gd_device *dev, uint32_t type, uint64_t id)
{
    for (unsigned i = 0; i < dev->nfe; i++) {
        if (dev->fe[i]->device_type == type && dev->fe[i]->device_id == id)
            return dev->fe[i];
    }
    return NULL;
}

static void remove_frontend(struct gd_device *dev, struct gd_frontend *fe)
{
    for (unsigned i = 0; i < dev->nfe; i++) {
        if (dev->fe[i] == fe) {
            memmove(&dev->fe[i], &dev->fe[i + 1], (dev->nfe - i - 1) * sizeof(dev->fe[0]));
            dev->nfe--;
            break;
        }
    }
    free(fe);
}

static void fill_frontend(struct gd_frontend *fe, const struct vp_cq_msg *m)
{
    fe->device_type = m->device_type;
    fe->device_id = m->device_id;
    fe->nqueues = m->u.dev.nvirtqs;
    for (uint32_t i = 0; i < fe->nqueues; i++) {
        const struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        fe->queues[i] = (struct gd_queue){
            .index = q->index, .num = q->num, .last_avail_idx = q->last_avail_idx,
            .kick_vector = q->kick_vector, .call_vector = q->call_vector,
            .desc = q->desc, .avail = q->avail, .used = q->used,
        };
    }
}

static enum gd_handled device_add(struct gd_device *dev, const struct vp_cq_msg *m,
                                  struct vp_cq_msg *ack)
{
    vp_error err = { { 0 } };
    const char *tname = vp_device_type_name(m->device_type);
    char why[VP_MAX_REASON + 1];
    if (m->device_type != VP_DEV_NET) {
        snprintf(why, sizeof(why), "device type %s not supported by vhost-pci-guestd", tname);
        goto fail;
    }
    if (validate_virtqs(dev, m, &err) < 0) {
        snprintf(why, sizeof(why), "%s device_id %llu: %s", tname,
                 (unsigned long long)m->device_id, err.msg);
        goto fail;
    }
    struct gd_frontend *old = gd_device_frontend(dev, m->device_type, m->device_id);
    if (!old && dev->nfe >= GD_MAX_FRONTENDS) {
        snprintf(why, sizeof(why), "support list full (%u frontends)", GD_MAX_FRONTENDS);
        goto fail;
    }
    struct gd_frontend *fe = old;
    if (old) {
        /* Its info changed (spec 1.6.1.1): stop the old queues, serve the new ones. */
        gd_dev_frontend_stop(dev, old);
    } else {
        fe = calloc(1, sizeof(*fe));
        if (!fe) {
            snprintf(why, sizeof(why), "out of memory");
            goto fail;
        }
        dev->fe[dev->nfe++] = fe;
    }
    fill_frontend(fe, m);
    if (gd_dev_frontend_start(dev, fe, &err) < 0) {
        snprintf(why, sizeof(why), "%s device_id %llu: %s", tname,
                 (unsigned long long)m->device_id, err.msg);
        remove_frontend(dev, fe);
        goto fail;
    }
    gd_info("slot %u: %s frontend device_id %llu %s (%u virtqueues)", dev->slot, tname,
            (unsigned long long)m->device_id, old ? "updated" : "added", fe->nqueues);
    vp_cq_make_ack(ack, m, VP_ACK_ADD_DONE, NULL);
    return GD_H_ACK;
fail:
    gd_warn("slot %u: DEVICE_INFO(ADD) seq %llu refused: %s", dev->slot,
            (unsigned long long)m->seq, why);
    vp_cq_make_ack(ack, m, VP_ACK_ADD_FAIL, why);
    return GD_H_ACK;
}

static enum gd_handled device_del(struct gd_device *dev, const struct vp_cq_msg *m,
                                  struct vp_cq_msg *ack)
{
    struct gd_frontend *fe = gd_device_frontend(dev, m->device_type, m->device_id);
    if (!fe) {
        char why[VP_MAX_REASON + 1];
        snprintf(why, sizeof(why), "no %s frontend with device_id %llu in the support list",
                 vp_device_type_name(m->device_type), (unsigned long long)m->device_id);
        gd_warn("slot %u: DEVICE_INFO(DEL) seq %llu refused: %s", dev->slot,
                (unsigned long long)m->seq, why);
        vp_cq_make_ack(ack, m, VP_ACK_DEL_FAIL, why);
        return GD_H_ACK;
    }
    /* Stop first (spec 1.6.2): the positions below are final once the hook returned. */
    gd_dev_frontend_stop(dev, fe);
    vp_cq_make_ack(ack, m, VP_ACK_DEL_DONE, NULL);
    ack->u.ack.npos = fe->nqueues;
    for (uint32_t i = 0; i < fe->nqueues; i++) {
        ack->u.ack.pos[i].index = fe->queues[i].index;
        ack->u.ack.pos[i].last_avail_idx = fe->queues[i].last_avail_idx;
    }
    gd_info("slot %u: %s frontend device_id %llu deleted", dev->slot,
            vp_device_type_name(fe->device_type), (unsigned long long)fe->device_id);
    remove_frontend(dev, fe);
    return GD_H_ACK;
}

static enum gd_handled handle_device_info(struct gd_device *dev, const struct vp_cq_msg *m,
                                          struct vp_cq_msg *ack, bool last_try)
{
    (void)last_try;
    gd_dev_pause(dev);
    enum gd_handled h = m->u.dev.op == VP_OP_ADD ? device_add(dev, m, ack)
                                                 : device_del(dev, m, ack);
    gd_dev_resume(dev);
    return h;
}

static enum gd_handled handle_feature_bits(struct gd_device *dev, const struct vp_cq_msg *m,
                                           struct vp_cq_msg *ack, bool last_try)
{
    (void)last_try;
    /* Never accept a bit that was not offered (spec 1.5.2), nor one the
     * configuration refuses.
     *
     * VIRTIO_F_IN_ORDER (virtio 1.1 2.6.9; in VP_NET_FEATURES, so accepted unless
     * --refuse-features names it): the device must use buffers in the order they were
     * made available (an in-order driver such as DPDK's virtio-user takes used entry i
     * as the chain made available at position i, without reading its id). Audit of
     * every writer of used entries (net_path.c, the only one), which holds in every
     * mode, so guestd accepts the bit whenever it is offered and behaves the same
     * whether or not it was negotiated:
     *  - transmitq: chains are taken in ring order and used in that order, sent or
     *    dropped (empty, too large, too scattered); an endpoint's -EAGAIN holds the
     *    chain and every later one (net_pair_tx).
     *  - receiveq: chains are taken into a FIFO stash in ring order; a frame uses the
     *    first k of them (k > 1 only with MRG_RXBUF), in order; a frame that does not
     *    fit is dropped or waits, never skipping a chain (pair_rx, rx_write).
     *  - errors: a bad chain breaks the queue and nothing from it on is ever used;
     *    what was used before it is published when net_path.c found the fault (flags,
     *    addresses, sizes: vq_fail flushes first), and stays unpublished when vp_vring
     *    did (index, loop, next out of range): a prefix in order either way.
     *  - endpoints (loopback, tap, unix, switch) never touch the rings: they go through
     *    gd_net_port_rx; with --workers a receiveq written by several threads is
     *    written under its rx_lock, a whole frame at a time (net_worker.c, net_assign).
     *  - stop, memory DEL (parking), clone: chains taken and not used are given back
     *    (the resume position is the first unused one), so the used index equals the
     *    resume position and a restart continues in order (vq_resume_idx).
     * tests/unit/test-guestd-net.c "/guestd-net/in-order/..." checks each path. */
    uint64_t accepted = m->u.features & VP_NET_FEATURES & ~dev->cp->cfg.refuse_features;
    dev->features = accepted;
    if (dev->cp->dp && dev->cp->dp->features)
        dev->cp->dp->features(dev->cp->dp_opaque, dev, accepted);
    gd_info("slot %u: features offered 0x%llx, accepted 0x%llx", dev->slot,
            (unsigned long long)m->u.features, (unsigned long long)accepted);
    vp_cq_make_ack(ack, m, VP_ACK_ADD_DONE, NULL);
    ack->u.ack.features = accepted;
    return GD_H_ACK;
}

/* One handler per request type; which types the server may send on the controlq is
 * protocol/vp_proto's to say (process()). */
static const gd_handler handlers[VP_MSG_TYPE_COUNT] = {
    [VP_MSG_MEMORY_INFO] = handle_memory_info,
    [VP_MSG_DEVICE_INFO] = handle_device_info,
    [VP_MSG_FEATURE_BITS] = handle_feature_bits,
};

gd_handler gd_dev_handler(unsigned type)
{
    return type < VP_MSG_TYPE_COUNT ? handlers[type] : NULL;
}
