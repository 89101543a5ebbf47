/*
 * vhost_user_vring.c - the vhost-user core's virtqueues (vhost_user_priv.h):
 * SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/ENABLE and GET_VRING_BASE, and starting each
 * ring once it is complete (ops->vring_started).
 *
 * Security model: the queue index was checked by the dispatcher (vhost_user.c); num
 * must be a power of two up to VP_MAX_VRING_NUM, base fit 16 bits, flags be known;
 * ring addresses are user addresses that must lie inside one region each
 * (vu_vring_translate). A vring's eventfds are owned by the vring, closed on
 * replacement, GET_VRING_BASE (kick), RESET_OWNER and disconnect.
 */
#include "vhost_user_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

static bool vu_is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* ---- Vrings ---- */

void vu_vring_init(struct vu_vring *q)
{
    memset(q, 0, sizeof(*q));
    q->kick_fd = q->call_fd = q->err_fd = -1;
}

void vu_vring_close(struct vu_vring *q)
{
    vp_close_fd(&q->kick_fd);
    vp_close_fd(&q->call_fd);
    vp_close_fd(&q->err_fd);
}

static void vu_vring_describe(const struct vu_dev *dev, uint32_t index, struct vp_virtq *out)
{
    const struct vu_vring *q = &dev->vq[index];
    memset(out, 0, sizeof(*out));
    out->index = index;
    out->num = q->num;
    out->last_avail_idx = q->base;
    out->kick_fd = q->kick_fd;
    out->call_fd = q->call_fd;
}

bool vu_any_running(const struct vu_dev *dev)
{
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++)
        if (dev->vq[i].running)
            return true;
    return false;
}

/** The frontend stopped vring @index (GET_VRING_BASE): it re-sends num, base,
 *  addresses and kick at the next start; call and enable stay. */
static void vu_vring_stop(struct vu_dev *dev, uint32_t index)
{
    struct vu_vring *q = &dev->vq[index];
    bool was_running = q->running;
    q->running = false;
    q->have_num = q->have_addr = q->have_base = q->have_kick = false;
    vp_close_fd(&q->kick_fd);
    if (was_running && !vu_any_running(dev))
        vu_log(dev, VU_LOG_INFO, "vhost-user: device stopped (no virtqueue runs)");
}

/** Is vring @q enabled? With VHOST_USER_F_PROTOCOL_FEATURES it is what
 *  SET_VRING_ENABLE said; without it every ring is enabled (vhost-user.rst). */
static bool vu_vring_enabled(const struct vu_dev *dev, const struct vu_vring *q)
{
    if (dev->features & (1ULL << VU_F_PROTOCOL_FEATURES))
        return q->enabled;
    return true;
}

static bool vu_vring_complete(const struct vu_vring *q)
{
    return q->have_num && q->have_addr && q->have_base && q->have_kick;
}

/** Fill dev->info for vring @index (translated when running). */
static int vu_vring_info_fill(struct vu_dev *dev, uint32_t index)
{
    const struct vu_vring *q = &dev->vq[index];
    struct vu_vring_info *info = &dev->info;
    memset(info, 0, sizeof(*info));
    vu_vring_describe(dev, index, &info->vq);
    info->running = q->running;
    info->enabled = vu_vring_enabled(dev, q);
    info->call_fresh = q->call_fresh;
    if (!q->running)
        return 0;
    return vu_vring_translate(dev, &dev->mem, index, q, q->num, &info->vq);
}

/* Start every vring that has become complete: the call fd is not required: QEMU 7.2
 * sends its real one right after the kick (info.call_fresh tells), a polling frontend
 * none. Returns -EINVAL (reason in dev->err) when a ring no longer translates.
 */
int vu_check_rings(struct vu_dev *dev)
{
    if (!dev->features_set || dev->mem.n == 0)
        return 0;
    for (uint32_t i = 0; i < dev->cfg.nqueues && !dev->broken; i++) {
        struct vu_vring *q = &dev->vq[i];
        if (q->running || !vu_vring_complete(q))
            continue;
        q->running = true;
        int ret = vu_vring_info_fill(dev, i);
        if (ret < 0) {
            q->running = false;
            return ret;
        }
        vu_log(dev, VU_LOG_INFO, "vhost-user: vring %u runs: num %u base %u%s", i, q->num,
               q->base, vu_vring_enabled(dev, q) ? "" : " (disabled)");
        if (dev->ops.vring_started)
            dev->ops.vring_started(dev, &dev->info, dev->opaque);
    }
    return 0;
}

static int vu_vring_not_running(struct vu_dev *dev, const char *what, uint32_t index)
{
    if (dev->vq[index].running)
        return vu_err(dev, "%s: vring %u is running (stop it with GET_VRING_BASE first)",
                      what, index);
    return 0;
}

int vu_set_vring_num_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m), num = vu_state_num(m);
    int ret = vu_vring_not_running(dev, "SET_VRING_NUM", index);
    if (ret < 0)
        return ret;
    if (!vu_is_pow2(num) || num > VP_MAX_VRING_NUM)
        return vu_err(dev, "SET_VRING_NUM: vring %u: num %u is not a power of two in 1..%u",
                      index, num, VP_MAX_VRING_NUM);
    dev->vq[index].num = num;
    dev->vq[index].have_num = true;
    return 0;
}

int vu_set_vring_addr_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vp_get_le32(m->payload);
    uint32_t flags = vp_get_le32(m->payload + 4);
    struct vu_vring *q = &dev->vq[index];
    int ret = vu_vring_not_running(dev, "SET_VRING_ADDR", index);
    if (ret < 0)
        return ret;
    if (flags & VU_VRING_F_LOG)
        return vu_err(dev, "SET_VRING_ADDR: vring %u: dirty logging (VHOST_VRING_F_LOG) is "
                      "not supported", index);
    if (flags)
        return vu_err(dev, "SET_VRING_ADDR: vring %u: unknown flags 0x%x", index, flags);
    struct vu_vring t = *q;
    t.desc_user = vp_get_le64(m->payload + 8);
    t.used_user = vp_get_le64(m->payload + 16);  /* wire order: desc, used, avail, log */
    t.avail_user = vp_get_le64(m->payload + 24);
    struct vp_virtq v;
    ret = vu_vring_translate(dev, &dev->mem, index, &t, t.have_num ? t.num : 0, &v);
    if (ret < 0)
        return ret;
    q->desc_user = t.desc_user;
    q->used_user = t.used_user;
    q->avail_user = t.avail_user;
    q->have_addr = true;
    return 0;
}

int vu_set_vring_base_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m), num = vu_state_num(m);
    int ret = vu_vring_not_running(dev, "SET_VRING_BASE", index);
    if (ret < 0)
        return ret;
    if (num > UINT16_MAX)
        return vu_err(dev, "SET_VRING_BASE: vring %u: base %u over 65535 (split rings only)",
                      index, num);
    dev->vq[index].base = (uint16_t)num;
    dev->vq[index].have_base = true;
    return 0;
}

static int vu_finish_get_vring_base(struct vu_dev *dev, uint32_t index, uint16_t v)
{
    dev->pending = VU_NONE;
    vu_vring_stop(dev, index);
    vu_log(dev, VU_LOG_DEBUG, "vhost-user: vring %u stopped at %u", index, v);
    return vu_reply_state(dev, VU_GET_VRING_BASE, index, v);
}

int vu_get_vring_base_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m);
    struct vu_vring *q = &dev->vq[index];
    uint16_t v = q->have_base ? q->base : 0;
    if (q->running && dev->ops.get_vring_base) {
        dev->pending = VU_GET_VRING_BASE;
        dev->pending_index = index;
        int r = dev->ops.get_vring_base(dev, index, &v, dev->opaque);
        if (r == VU_DEFERRED)
            return dev->pending == VU_GET_VRING_BASE ? VU_DEFERRED : 0;
        if (r < 0) {
            dev->pending = VU_NONE;
            return vu_err(dev, "GET_VRING_BASE: vring %u: the backend user failed: %s", index,
                          strerror(-r));
        }
        if (dev->pending != VU_GET_VRING_BASE)
            return 0;
    }
    return vu_finish_get_vring_base(dev, index, v);
}

/** SET_VRING_KICK/CALL/ERR: u64 index | NOFD flag, 0 or 1 fd accordingly. */
static int vu_vring_fd_exec(struct vu_dev *dev, struct vu_msg *m, int **slot_out,
                            uint32_t *index_out)
{
    const char *what = vu_request_name(m->request);
    uint64_t v = vu_payload_u64(m);
    uint32_t index = (uint32_t)(v & VU_VRING_IDX_MASK);
    bool nofd = v & VU_VRING_NOFD;
    if (v & ~(uint64_t)(VU_VRING_IDX_MASK | VU_VRING_NOFD))
        return vu_err(dev, "%s: unknown bits 0x%" PRIx64 " in the payload", what,
                      v & ~(uint64_t)(VU_VRING_IDX_MASK | VU_VRING_NOFD));
    if (m->nfds != (nofd ? 0u : 1u))
        return vu_err(dev, "%s: vring %u: wrong fd count: %u fds %s the invalid-fd flag", what,
                      index, m->nfds, nofd ? "with" : "without");
    struct vu_vring *q = &dev->vq[index];
    int *slot = m->request == VU_SET_VRING_KICK ? &q->kick_fd
              : m->request == VU_SET_VRING_CALL ? &q->call_fd : &q->err_fd;
    vp_close_fd(slot);
    if (!nofd) {
        *slot = m->fds[0];
        m->fds[0] = -1;
    }
    *slot_out = slot;
    *index_out = index;
    return 0;
}

/** Tell the user about vring @index: new fds of a running ring (@enable_change
 *  false), or a change of its enabled state (any ring). */
static void vu_notify_vring(struct vu_dev *dev, uint32_t index, bool enable_change)
{
    if ((!dev->vq[index].running && !enable_change) || !dev->ops.vring_changed ||
        index >= dev->cfg.nqueues) /* a queue beyond the configured ones never runs */
        return;
    if (vu_vring_info_fill(dev, index) < 0)
        return; /* cannot happen: checked at start and on every memory change */
    dev->ops.vring_changed(dev, &dev->info, dev->opaque);
}

int vu_set_vring_kick_exec(struct vu_dev *dev, struct vu_msg *m)
{
    int *slot;
    uint32_t index;
    int ret = vu_vring_fd_exec(dev, m, &slot, &index);
    if (ret < 0)
        return ret;
    dev->vq[index].have_kick = true;
    dev->vq[index].call_fresh = false;
    vu_notify_vring(dev, index, false);
    return 0;
}

int vu_set_vring_call_exec(struct vu_dev *dev, struct vu_msg *m)
{
    int *slot;
    uint32_t index;
    int ret = vu_vring_fd_exec(dev, m, &slot, &index);
    if (ret < 0)
        return ret;
    dev->vq[index].have_call = true;
    dev->vq[index].call_fresh = true;
    vu_notify_vring(dev, index, false);
    return 0;
}

int vu_set_vring_err_exec(struct vu_dev *dev, struct vu_msg *m)
{
    int *slot;
    uint32_t index;
    return vu_vring_fd_exec(dev, m, &slot, &index);
}

int vu_set_vring_enable_exec(struct vu_dev *dev, struct vu_msg *m)
{
    uint32_t index = vu_state_index(m), num = vu_state_num(m);
    if (num > 1)
        return vu_err(dev, "SET_VRING_ENABLE: vring %u: value %u is not 0 or 1", index, num);
    bool was = vu_vring_enabled(dev, &dev->vq[index]);
    dev->vq[index].enabled = num == 1;
    if (vu_vring_enabled(dev, &dev->vq[index]) != was)
        vu_notify_vring(dev, index, true);
    return 0;
}

int vu_dev_reply_vring_base(struct vu_dev *dev, uint32_t index, uint16_t last_avail_idx)
{
    vu_enter(dev);
    if (dev->broken || dev->pending != VU_GET_VRING_BASE || dev->pending_index != index) {
        vu_leave(dev);
        return -EINVAL;
    }
    return vu_reply_done(dev, vu_finish_get_vring_base(dev, index, last_avail_idx));
}
