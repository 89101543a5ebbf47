/*
 * guestd-fake.h - the device (server) side of a vhost-pci control area, for the guest
 * driver's unit tests: writes the header the way the server lays it out, attaches
 * vp_vring_dev to both control queues, sends controlq messages on the transmitq and
 * reads the driver's ACKs from the receiveq. Static functions, included by the
 * test-guestd-*.c programs only.
 */
#ifndef GUESTD_FAKE_H
#define GUESTD_FAKE_H

#include <glib.h>
#include <string.h>

#include "vp_controlq.h"
#include "vp_ctrlarea.h"
#include "vp_vring.h"

#define FK_QNUM 64
#define FK_RX_DESC 0x1000
#define FK_RX_AVAIL 0x1400
#define FK_RX_USED 0x1500
#define FK_TX_DESC 0x2000
#define FK_TX_AVAIL 0x2400
#define FK_TX_USED 0x2500
#define FK_BUF_OFF 0x10000
#define FK_BUF_SIZE 0x80000
#define FK_BAR_SIZE (8ULL << 20)

struct fk_dev {
    uint8_t *ca;
    uint64_t size;
    struct vp_vring_dev rx, tx;
    uint64_t seq;
};

static inline void fk_set_queue(uint8_t *ca, unsigned q, uint16_t size, uint64_t desc,
                                uint64_t avail, uint64_t used)
{
    uint8_t *p = ca + VP_CA_OFF_QUEUE + q * VP_CA_QUEUE_SIZE;
    vp_put_le16(p + VP_CA_Q_SIZE, size);
    vp_put_le64(p + VP_CA_Q_DESC_OFF, desc);
    vp_put_le64(p + VP_CA_Q_AVAIL_OFF, avail);
    vp_put_le64(p + VP_CA_Q_USED_OFF, used);
}

/* The standard header: 64-entry queues, 128 buffer slots, no windows. */
static inline void fk_write_header(uint8_t *ca, uint64_t bar_size)
{
    memcpy(ca + VP_CA_OFF_MAGIC, VP_CA_MAGIC, 8);
    vp_put_le32(ca + VP_CA_OFF_VERSION, VP_CA_VERSION);
    vp_put_le32(ca + VP_CA_OFF_STATUS, 0);
    vp_put_le64(ca + VP_CA_OFF_DEVICE_FEATURES, 0);
    for (unsigned i = 0; i < 16; i++)
        ca[VP_CA_OFF_PEER_UUID + i] = (uint8_t)(0xa0 + i);
    vp_put_le64(ca + VP_CA_OFF_BAR_SIZE, bar_size);
    vp_put_le32(ca + VP_CA_OFF_NWINDOWS, 0);
    vp_put_le32(ca + VP_CA_OFF_GENERATION, 1);
    fk_set_queue(ca, VP_CQ_RECEIVEQ, FK_QNUM, FK_RX_DESC, FK_RX_AVAIL, FK_RX_USED);
    fk_set_queue(ca, VP_CQ_TRANSMITQ, FK_QNUM, FK_TX_DESC, FK_TX_AVAIL, FK_TX_USED);
    vp_put_le64(ca + VP_CA_OFF_BUF_OFF, FK_BUF_OFF);
    vp_put_le64(ca + VP_CA_OFF_BUF_SIZE, FK_BUF_SIZE);
}

static inline void fk_set_window(uint8_t *ca, unsigned i, uint8_t devfn, uint64_t bar_offset,
                                 uint64_t size)
{
    uint8_t *p = ca + VP_CA_OFF_WINDOW + i * VP_CA_WINDOW_SIZE;
    memset(p, 0, VP_CA_WINDOW_SIZE);
    p[VP_CA_WIN_DEVFN] = devfn;
    vp_put_le64(p + VP_CA_WIN_BAR_OFFSET, bar_offset);
    vp_put_le64(p + VP_CA_WIN_SIZE, size);
}

/* Publish @n windows: table first, then the generation (as the server does). */
static inline void fk_publish_windows(uint8_t *ca, uint32_t n)
{
    vp_put_le32(ca + VP_CA_OFF_NWINDOWS, n);
    uint32_t gen = vp_get_le32(ca + VP_CA_OFF_GENERATION);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    vp_put_le32(ca + VP_CA_OFF_GENERATION, gen + 1);
}

static inline uint32_t fk_status(const uint8_t *ca) { return vp_get_le32(ca + VP_CA_OFF_STATUS); }

/* Attach the device side of both queues (after the driver's DRIVER_OK). */
static inline void fk_attach(struct fk_dev *d)
{
    struct vp_vring_mem rx = { d->ca + FK_RX_DESC, d->ca + FK_RX_AVAIL, d->ca + FK_RX_USED,
                               FK_QNUM };
    struct vp_vring_mem tx = { d->ca + FK_TX_DESC, d->ca + FK_TX_AVAIL, d->ca + FK_TX_USED,
                               FK_QNUM };
    g_assert_cmpint(vp_vring_dev_init(&d->rx, &rx, true, 0), ==, 0);
    g_assert_cmpint(vp_vring_dev_init(&d->tx, &tx, true, 0), ==, 0);
}

/* Put @len raw bytes into the next transmitq buffer (and claim @used_len). */
static inline void fk_send_raw_len(struct fk_dev *d, const void *bytes, size_t len,
                                   uint32_t used_len)
{
    struct vp_vring_seg seg[4];
    unsigned nsegs = 0;
    uint16_t head = 0;
    g_assert_cmpint(vp_vring_dev_pop(&d->tx, seg, 4, &nsegs, &head), ==, 1);
    g_assert_cmpuint(nsegs, ==, 1);
    g_assert_true(seg[0].write);
    g_assert_cmpuint(seg[0].len, ==, VP_CA_BUF_SLOT);
    g_assert_cmpuint(seg[0].addr, >=, FK_BUF_OFF);
    g_assert_cmpuint(seg[0].addr + seg[0].len, <=, FK_BUF_OFF + FK_BUF_SIZE);
    g_assert_cmpuint(len, <=, seg[0].len);
    memcpy(d->ca + seg[0].addr, bytes, len);
    g_assert_cmpint(vp_vring_dev_push(&d->tx, head, used_len), ==, 0);
    vp_vring_dev_flush(&d->tx);
}

static inline void fk_send_raw(struct fk_dev *d, const void *bytes, size_t len)
{
    fk_send_raw_len(d, bytes, len, (uint32_t)len);
}

/* Encode and send @m (its seq is assigned here and returned). */
static inline uint64_t fk_send(struct fk_dev *d, struct vp_cq_msg *m)
{
    uint8_t buf[VP_CA_BUF_SLOT];
    m->version = VP_MSG_VERSION;
    m->seq = ++d->seq;
    int len = vp_cq_encode(m, buf, sizeof(buf));
    g_assert_cmpint(len, >, 0);
    fk_send_raw(d, buf, (size_t)len);
    return m->seq;
}

/* Take the next ACK from the receiveq: 1 with *ack decoded, 0 when none. */
static inline int fk_recv_ack(struct fk_dev *d, struct vp_cq_msg *ack)
{
    struct vp_vring_seg seg[4];
    unsigned nsegs = 0;
    uint16_t head = 0;
    int r = vp_vring_dev_pop(&d->rx, seg, 4, &nsegs, &head);
    g_assert_cmpint(r, >=, 0);
    if (r == 0)
        return 0;
    g_assert_cmpuint(nsegs, ==, 1);
    g_assert_false(seg[0].write);
    g_assert_cmpuint(seg[0].addr, >=, FK_BUF_OFF);
    g_assert_cmpuint(seg[0].addr + seg[0].len, <=, FK_BUF_OFF + FK_BUF_SIZE);
    uint8_t buf[VP_CA_BUF_SLOT];
    g_assert_cmpuint(seg[0].len, <=, sizeof(buf));
    memcpy(buf, d->ca + seg[0].addr, seg[0].len);
    vp_error err = { { 0 } };
    if (vp_cq_decode(buf, seg[0].len, ack, &err) < 0)
        g_error("bad ACK from the driver: %s", err.msg);
    g_assert_cmpint(vp_vring_dev_push(&d->rx, head, 0), ==, 0);
    vp_vring_dev_flush(&d->rx);
    return 1;
}

/* Message builders. */
static inline void fk_feature_msg(struct vp_cq_msg *m, uint64_t bits)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_FEATURE_BITS;
    m->u.features = bits;
}

static inline void fk_mem_msg(struct vp_cq_msg *m, uint16_t op, uint64_t xgpa, uint64_t size,
                              uint64_t bar_offset)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_MEMORY_INFO;
    m->u.mem.op = op;
    m->u.mem.nregions = 1;
    m->u.mem.regions[0] = (struct vp_cq_region){ xgpa, size, bar_offset };
}

/* A NET-style frontend with @nq queues of 256 entries whose rings lie at @base
 * (guest-physical) onwards, 0x4000 bytes per queue. */
static inline void fk_dev_msg(struct vp_cq_msg *m, uint16_t op, uint32_t type, uint64_t id,
                              unsigned nq, uint64_t base)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_DEVICE_INFO;
    m->device_type = type;
    m->device_id = id;
    m->u.dev.op = op;
    m->u.dev.nvirtqs = nq;
    for (unsigned i = 0; i < nq; i++) {
        struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        q->index = i;
        q->num = 256;
        q->last_avail_idx = (uint16_t)(5 + i);
        q->kick_vector = VP_NO_VECTOR;
        q->call_vector = (uint16_t)i;
        q->desc = base + 0x4000ULL * i;
        q->avail = q->desc + 0x1000;
        q->used = q->desc + 0x2000;
    }
}

#endif
