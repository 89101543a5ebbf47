/*
 * ctrlarea.c - reading and validating the control area header and window table
 * (DESIGN section 3, protocol/vp_ctrlarea.h).
 *
 * Security model: the control area is shared with the server (and, through QEMU,
 * with the host); it may change under our feet. Each field is read exactly once
 * into a local (vp_get_le*), and only the locals are validated and used. Every range
 * check is overflow-proof (vp_range_ok). A bad header is a broken device, never a
 * crash. libc only.
 */
#include "ctrlarea.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "vp_vring.h"
#include "vp_wire.h"

#define GD_PAGE 4096ULL

int gd_ca_has_magic(const void *ca, uint64_t ca_size)
{
    char magic[8];
    if (ca_size < sizeof(magic))
        return 0;
    memcpy(magic, (const uint8_t *)ca + VP_CA_OFF_MAGIC, sizeof(magic));
    return memcmp(magic, VP_CA_MAGIC, sizeof(magic)) == 0;
}

struct range {
    const char *what;
    uint64_t off, len;
};

static bool overlap(const struct range *a, const struct range *b)
{
    /* Both are inside the area (checked before), so the sums cannot overflow. */
    return a->len && b->len && a->off < b->off + b->len && b->off < a->off + a->len;
}

static int read_queue(const uint8_t *ca, unsigned i, struct gd_ca_queue *q, vp_error *err)
{
    const uint8_t *p = ca + VP_CA_OFF_QUEUE + i * VP_CA_QUEUE_SIZE;
    const char *name = i == VP_CQ_RECEIVEQ ? "receiveq" : "transmitq";
    q->size = vp_get_le16(p + VP_CA_Q_SIZE);
    q->desc_off = vp_get_le64(p + VP_CA_Q_DESC_OFF);
    q->avail_off = vp_get_le64(p + VP_CA_Q_AVAIL_OFF);
    q->used_off = vp_get_le64(p + VP_CA_Q_USED_OFF);
    /* le16 cannot hold 32768's successor; 0 would be 65536 in virtio terms: reject. */
    if (!vp_is_pow2(q->size) || q->size > VP_MAX_VRING_NUM)
        return vp_fail(err, -EPROTO, "control %s size %u is not a power of two in 1..%u",
                       name, q->size, VP_MAX_VRING_NUM);
    if ((q->desc_off & 15) || (q->avail_off & 1) || (q->used_off & 3))
        return vp_fail(err, -EPROTO,
                       "control %s rings misaligned (desc 0x%llx, avail 0x%llx, used 0x%llx)",
                       name, (unsigned long long)q->desc_off,
                       (unsigned long long)q->avail_off, (unsigned long long)q->used_off);
    return 0;
}

int gd_ca_read_layout(const void *area, uint64_t ca_size, struct gd_ca_layout *l, vp_error *err)
{
    const uint8_t *ca = area;
    memset(l, 0, sizeof(*l));
    l->ca_size = ca_size;
    if (ca_size < VP_CA_HEADER_END)
        return vp_fail(err, -EPROTO, "control area of %llu bytes is smaller than its header",
                       (unsigned long long)ca_size);
    if (!gd_ca_has_magic(ca, ca_size))
        return vp_fail(err, -EPROTO, "control area magic is not \"%s\"", VP_CA_MAGIC);
    l->version = vp_get_le32(ca + VP_CA_OFF_VERSION);
    if (l->version != VP_CA_VERSION)
        return vp_fail(err, -EPROTO, "control area version %u, expected %u", l->version,
                       VP_CA_VERSION);
    l->device_features = vp_get_le64(ca + VP_CA_OFF_DEVICE_FEATURES);
    memcpy(l->peer_uuid, ca + VP_CA_OFF_PEER_UUID, sizeof(l->peer_uuid));
    l->bar_size = vp_get_le64(ca + VP_CA_OFF_BAR_SIZE);
    if (!vp_is_pow2(l->bar_size) || l->bar_size < VP_BAR_MIN_SIZE ||
        l->bar_size > GD_MAX_BAR_SIZE)
        return vp_fail(err, -EPROTO,
                       "bar_size %llu is not a power of two between %llu and %llu",
                       (unsigned long long)l->bar_size, (unsigned long long)VP_BAR_MIN_SIZE,
                       (unsigned long long)GD_MAX_BAR_SIZE);
    uint32_t nwin = vp_get_le32(ca + VP_CA_OFF_NWINDOWS);
    if (nwin > VP_MAX_WINDOWS)
        return vp_fail(err, -EPROTO, "nwindows %u exceeds %u", nwin, VP_MAX_WINDOWS);

    for (unsigned i = 0; i < 2; i++) {
        int r = read_queue(ca, i, &l->q[i], err);
        if (r < 0)
            return r;
    }
    l->buf_off = vp_get_le64(ca + VP_CA_OFF_BUF_OFF);
    l->buf_size = vp_get_le64(ca + VP_CA_OFF_BUF_SIZE);

    const struct gd_ca_queue *rq = &l->q[VP_CQ_RECEIVEQ], *tq = &l->q[VP_CQ_TRANSMITQ];
    struct range rs[] = {
        { "header", 0, VP_CA_HEADER_END },
        { "receiveq descriptor table", rq->desc_off, vp_vring_desc_size(rq->size) },
        { "receiveq avail ring", rq->avail_off, vp_vring_avail_size(rq->size) },
        { "receiveq used ring", rq->used_off, vp_vring_used_size(rq->size) },
        { "transmitq descriptor table", tq->desc_off, vp_vring_desc_size(tq->size) },
        { "transmitq avail ring", tq->avail_off, vp_vring_avail_size(tq->size) },
        { "transmitq used ring", tq->used_off, vp_vring_used_size(tq->size) },
        { "buffer pool", l->buf_off, l->buf_size },
    };
    for (unsigned i = 1; i < VP_ARRAY_SIZE(rs); i++) {
        if (!vp_range_ok(rs[i].off, rs[i].len, ca_size))
            return vp_fail(err, -EPROTO,
                           "control %s [0x%llx, +0x%llx) is outside the %llu-byte area",
                           rs[i].what, (unsigned long long)rs[i].off,
                           (unsigned long long)rs[i].len, (unsigned long long)ca_size);
    }
    for (unsigned i = 0; i < VP_ARRAY_SIZE(rs); i++) {
        for (unsigned j = i + 1; j < VP_ARRAY_SIZE(rs); j++) {
            if (overlap(&rs[i], &rs[j]))
                return vp_fail(err, -EPROTO, "control %s overlaps the %s", rs[j].what,
                               rs[i].what);
        }
    }

    l->ntx = tq->size < VP_CA_QUEUE_NUM ? tq->size : VP_CA_QUEUE_NUM;
    uint64_t slots = l->buf_size / VP_CA_BUF_SLOT;
    if (slots < (uint64_t)l->ntx + 1)
        return vp_fail(err, -EPROTO,
                       "buffer pool of %llu bytes holds %llu slots of %u bytes, need %u",
                       (unsigned long long)l->buf_size, (unsigned long long)slots,
                       VP_CA_BUF_SLOT, l->ntx + 1);
    uint64_t nack = slots - l->ntx;
    if (nack > rq->size)
        nack = rq->size;
    l->nack = (unsigned)nack;
    return 0;
}

uint32_t gd_ca_generation(const void *ca)
{
    uint32_t g = le32toh(__atomic_load_n((const uint32_t *)((const uint8_t *)ca +
                                                            VP_CA_OFF_GENERATION),
                                         __ATOMIC_ACQUIRE));
    return g;
}

int gd_ca_read_windows(const void *area, uint64_t bar_size, struct gd_ca_windows *out,
                       vp_error *err)
{
    const uint8_t *ca = area;
    memset(out, 0, sizeof(*out));
    /* Seqlock-style read: the server rewrites the table, then (release) bumps the
     * generation. Our acquire load of the generation orders the table reads after
     * it; the fence before the second load orders the table reads before it. */
    uint32_t gen = gd_ca_generation(ca);
    uint32_t n = vp_get_le32(ca + VP_CA_OFF_NWINDOWS);
    if (n > VP_MAX_WINDOWS)
        n = VP_MAX_WINDOWS + 1; /* rejected below, after the consistency check */
    struct gd_ca_window w[VP_MAX_WINDOWS];
    for (uint32_t i = 0; i < n && i < VP_MAX_WINDOWS; i++) {
        const uint8_t *p = ca + VP_CA_OFF_WINDOW + i * VP_CA_WINDOW_SIZE;
        w[i].domain = vp_get_le16(p + VP_CA_WIN_PCI_DOMAIN);
        w[i].bus = p[VP_CA_WIN_BUS];
        w[i].devfn = p[VP_CA_WIN_DEVFN];
        w[i].bar_offset = vp_get_le64(p + VP_CA_WIN_BAR_OFFSET);
        w[i].size = vp_get_le64(p + VP_CA_WIN_SIZE);
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (gd_ca_generation(ca) != gen)
        return vp_fail(err, -EAGAIN, "window table changed while being read");
    if (n > VP_MAX_WINDOWS)
        return vp_fail(err, -EPROTO, "nwindows exceeds %u", VP_MAX_WINDOWS);

    for (uint32_t i = 0; i < n; i++) {
        const struct gd_ca_window *a = &w[i];
        if (!vp_is_pow2(a->size) || a->size < GD_PAGE)
            return vp_fail(err, -EPROTO,
                           "window %u (devfn 0x%x): size %llu is not a power of two >= %llu",
                           i, a->devfn, (unsigned long long)a->size,
                           (unsigned long long)GD_PAGE);
        if (a->bar_offset & (a->size - 1))
            return vp_fail(err, -EPROTO,
                           "window %u (devfn 0x%x): bar_offset 0x%llx is not a multiple of "
                           "its size 0x%llx",
                           i, a->devfn, (unsigned long long)a->bar_offset,
                           (unsigned long long)a->size);
        if (!vp_range_ok(a->bar_offset, a->size, bar_size))
            return vp_fail(err, -EPROTO,
                           "window %u (devfn 0x%x): [0x%llx, +0x%llx) is outside the "
                           "0x%llx-byte BAR",
                           i, a->devfn, (unsigned long long)a->bar_offset,
                           (unsigned long long)a->size, (unsigned long long)bar_size);
        for (uint32_t j = 0; j < i; j++) {
            const struct gd_ca_window *b = &w[j];
            if (a->domain == b->domain && a->bus == b->bus && a->devfn == b->devfn)
                return vp_fail(err, -EPROTO, "windows %u and %u name the same function "
                               "%04x:%02x devfn 0x%x", j, i, a->domain, a->bus, a->devfn);
            struct range ra = { "", a->bar_offset, a->size }, rb = { "", b->bar_offset, b->size };
            if (overlap(&ra, &rb))
                return vp_fail(err, -EPROTO, "windows %u and %u overlap in the BAR", j, i);
        }
        out->w[i] = *a;
    }
    out->n = n;
    out->generation = gen;
    return 0;
}

uint32_t gd_ca_get_status(const void *ca)
{
    return le32toh(__atomic_load_n((const uint32_t *)((const uint8_t *)ca + VP_CA_OFF_STATUS),
                                   __ATOMIC_ACQUIRE));
}

void gd_ca_set_status(void *ca, uint32_t status)
{
    /* Release: the rings and buffers initialised before (e.g. ahead of DRIVER_OK)
     * are visible to the device before it sees the new status. */
    __atomic_store_n((uint32_t *)((uint8_t *)ca + VP_CA_OFF_STATUS), htole32(status),
                     __ATOMIC_RELEASE);
}

void gd_ca_set_driver_features(void *ca, uint64_t features)
{
    vp_put_le64((uint8_t *)ca + VP_CA_OFF_DRIVER_FEATURES, features);
}
