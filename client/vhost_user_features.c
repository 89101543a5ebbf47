/*
 * vhost_user_features.c - the vhost-user core's negotiation requests
 * (vhost_user_priv.h): GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_MAX_MEM_SLOTS,
 * GET_QUEUE_NUM, SET_OWNER, RESET_OWNER, and the deferred GET_FEATURES answer
 * (vu_dev_reply_features).
 *
 * Security model: SET_FEATURES may name only bits that were offered and may not
 * change the features of a running device; SET_PROTOCOL_FEATURES only supported
 * bits (see vhost_user.c).
 */
#include "vhost_user_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/** Features the core can never carry: dirty logging, IOTLB, packed rings. */
#define VU_UNSUPPORTED_FEATURES \
    ((1ULL << VU_F_LOG_ALL) | (1ULL << VU_F_IOMMU_PLATFORM) | (1ULL << VU_F_RING_PACKED))

static int vu_finish_get_features(struct vu_dev *dev, uint64_t features)
{
    dev->offered = (features & ~VU_UNSUPPORTED_FEATURES) | (1ULL << VU_F_PROTOCOL_FEATURES);
    dev->pending = VU_NONE;
    return vu_reply_u64(dev, VU_GET_FEATURES, dev->offered);
}

int vu_get_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    uint64_t f = dev->cfg.features;
    if (dev->ops.get_features) {
        dev->pending = VU_GET_FEATURES;
        int r = dev->ops.get_features(dev, &f, dev->opaque);
        if (r == VU_DEFERRED)
            return dev->pending == VU_GET_FEATURES ? VU_DEFERRED : 0;
        if (r < 0) {
            dev->pending = VU_NONE;
            return vu_err(dev, "GET_FEATURES: the backend user failed: %s", strerror(-r));
        }
        if (dev->pending != VU_GET_FEATURES) /* answered from inside the callback */
            return 0;
    }
    return vu_finish_get_features(dev, f);
}

int vu_set_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint64_t f = vu_payload_u64(m);
    if (f & ~dev->offered)
        return vu_err(dev, "SET_FEATURES 0x%" PRIx64 " has bits 0x%" PRIx64
                      " that were not offered (0x%" PRIx64 ")", f, f & ~dev->offered,
                      dev->offered);
    if (vu_any_running(dev) && f != dev->features)
        return vu_err(dev, "SET_FEATURES 0x%" PRIx64 " changes the features (0x%" PRIx64
                      ") of a running device", f, dev->features);
    dev->features = f;
    dev->features_set = true;
    if (dev->ops.features_set)
        dev->ops.features_set(dev, f, dev->opaque);
    return 0;
}

static uint64_t vu_pf_supported(const struct vu_dev *dev)
{
    uint64_t pf = (1ULL << VU_PF_REPLY_ACK) | (1ULL << VU_PF_CONFIGURE_MEM_SLOTS);
    /* QEMU refuses queues=N>1 unless the backend offers MQ and GET_QUEUE_NUM. */
    if (dev->cfg.nqueues > 2)
        pf |= 1ULL << VU_PF_MQ;
    return pf;
}

int vu_get_protocol_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    dev->pf_offered = vu_pf_supported(dev);
    return vu_reply_u64(dev, VU_GET_PROTOCOL_FEATURES, dev->pf_offered);
}

int vu_set_protocol_features_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint64_t pf = vu_payload_u64(m);
    uint64_t ok = vu_pf_supported(dev);
    if (pf & ~ok)
        return vu_err(dev, "SET_PROTOCOL_FEATURES 0x%" PRIx64 ": unsupported protocol "
                      "features 0x%" PRIx64, pf, pf & ~ok);
    dev->protocol_features = pf;
    return 0;
}

int vu_get_max_mem_slots_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    return vu_reply_u64(dev, VU_GET_MAX_MEM_SLOTS, vu_mem_limit(dev));
}

int vu_get_queue_num_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    /* For virtio-net QEMU compares this with its queue *pairs* (net/vhost-user.c). */
    return vu_reply_u64(dev, VU_GET_QUEUE_NUM, dev->cfg.nqueues / 2);
}

int vu_set_owner_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    /* QEMU sends it once per vhost_dev, i.e. once per queue pair: repeats are fine. */
    dev->owner = true;
    return 0;
}

int vu_reset_owner_exec(struct vu_dev *dev, struct vu_msg *m)
{
    (void)m;
    /* Deprecated (vhost-user.rst): "ignore, or disable all rings". We reset the ring
     * set-up, which is only sound while no ring runs. */
    if (vu_any_running(dev))
        return vu_err(dev, "RESET_OWNER while virtqueues are running");
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++) {
        vu_vring_close(&dev->vq[i]);
        vu_vring_init(&dev->vq[i]);
    }
    dev->owner = false;
    return 0;
}

int vu_dev_reply_features(struct vu_dev *dev, uint64_t features)
{
    vu_enter(dev);
    if (dev->broken || dev->pending != VU_GET_FEATURES) {
        vu_leave(dev);
        return -EINVAL;
    }
    return vu_reply_done(dev, vu_finish_get_features(dev, features));
}
