/*
 * fuzz-vring.c - libFuzzer target: the device side of the driver VM's virtqueues
 * over fuzzed ring memory and a fuzzed memory table: protocol/vp_vring.c's device
 * side (descriptor walker, avail/used/event indexes) as vhost-pci-net
 * (guest-driver/net.c) drives it, with every descriptor translated through the
 * guest driver's memory table (gd_device_translate) into the mapped windows
 * (DESIGN section 6).
 *
 * The input, read in order (fuzz_guestd.h builds the guestd and the window table):
 *   u8 cfg        bits 0-2: VERSION_1, MRG_RXBUF, EVENT_IDX offered; bit 3: the
 *                 loopback endpoint (frames go from the transmitq straight into the
 *                 receiveq of the same memory) instead of a capturing one; bits 4-5:
 *                 how often the capturing endpoint pushes back (-EAGAIN)
 *   regions       u8 n (1..4), each u8 form + xgpa, size, bar_offset (32-bit, or raw
 *                 64-bit when form bit 0): one MEMORY_INFO(ADD); refused ones are fine
 *   frontend      NET device 1, two queues, each: u8 log2(num) (0..8; bit 7: raw
 *                 64-bit ring addresses follow, else 16-bit offsets from the default
 *                 region's start) desc, avail, used, u16 last_avail_idx, u8
 *                 call_vector (255: none)
 *   memory        u16 n, n bytes written at the start of the windows' memory (rings,
 *                 descriptors and buffers: the driver VM's side, written freely)
 *   operations    until the input ends: poll; receive a frame (u16 length, 1..3
 *                 pieces); poke 8 input bytes at an input offset of the memory (the
 *                 driver VM rewriting its rings meanwhile); delete a region and add it
 *                 back; delete the frontend and add it again at the positions the ACK
 *                 gave back; change the features; a burst of small frames.
 *
 * Invariants besides the sanitizers and the fd check: every frame handed to the
 * endpoint is at most GD_NET_MAX_FRAME bytes, its pieces add up to its length and lie
 * inside the device's logical BAR; a DEVICE_INFO(DEL) answers DEL_DONE with a
 * position for each queue.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_guestd.h"

#define XGPA_BASE 0x100000ULL     /* where the default region puts window 0 */

struct cap_ep {
    struct gd_endpoint base;
    struct fg *g;
    unsigned refuse_mask;         /* push back when (offers & mask) == 1 */
    unsigned offers;
    uint64_t frames, bytes;
};

static int cap_tx(struct gd_endpoint *ep, struct gd_net_port *port, const struct iovec *iov,
                  unsigned niov, size_t len)
{
    struct cap_ep *c = (struct cap_ep *)ep;
    (void)port;
    c->offers++;
    if (c->refuse_mask && (c->offers & c->refuse_mask) == 1)
        return -EAGAIN;
    FZ_CHECK(len <= GD_NET_MAX_FRAME);
    FZ_CHECK(niov <= GD_NET_MAX_IOV);
    const struct gd_device *dev = c->g->dev;
    size_t total = 0;
    static uint8_t sink[GD_NET_MAX_FRAME];
    for (unsigned i = 0; i < niov; i++) {
        const uint8_t *p = iov[i].iov_base;
        FZ_CHECK(dev && dev->bar && p >= dev->bar &&
                 iov[i].iov_len <= dev->bar_size - (uint64_t)(p - dev->bar));
        FZ_CHECK(iov[i].iov_len <= len - total);
        memcpy(sink + total, p, iov[i].iov_len); /* reads every byte (ASan) */
        total += iov[i].iov_len;
    }
    FZ_CHECK(total == len);
    c->frames++;
    c->bytes += len;
    return 0;
}

static void cap_free(struct gd_endpoint *ep) { free(ep); }

static const struct gd_endpoint_ops cap_ops = { .name = "capture", .tx = cap_tx,
                                                .free = cap_free };

/* The frame bytes the receive operations deliver. */
static uint8_t frame[GD_NET_MAX_FRAME + 64];

struct run {
    struct fg g;
    struct vp_cq_msg dev_add;     /* the frontend's DEVICE_INFO(ADD), for re-adding */
    struct vp_cq_msg mem_add;     /* the regions' MEMORY_INFO(ADD) */
};

static struct gd_net_port *port0(struct run *r)
{
    return r->g.net && gd_net_nports(r->g.net) ? gd_net_port_at(r->g.net, 0) : NULL;
}

static void read_regions(struct run *r, struct fz *f)
{
    struct vp_cq_msg *m = &r->mem_add;
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_MEMORY_INFO;
    m->u.mem.op = VP_OP_ADD;
    unsigned n = 1 + fz_u8(f) % 4;
    for (unsigned i = 0; i < n; i++) {
        struct vp_cq_region *reg = &m->u.mem.regions[i];
        uint8_t form = fz_u8(f);
        if (i == 0 && !(form & 2)) {
            /* The usual table: window 0 as one region. */
            *reg = (struct vp_cq_region){ XGPA_BASE, FG_WIN_SIZE, 0 };
        } else if (form & 1) {
            *reg = (struct vp_cq_region){ fz_u64(f), fz_u64(f), fz_u64(f) };
        } else {
            reg->xgpa = fz_u32(f);
            reg->size = fz_u32(f) % (2 * FG_WIN_SIZE);
            reg->bar_offset = fz_u32(f) % (4 * FG_WIN_SIZE);
        }
    }
    m->u.mem.nregions = n;
}

static void read_frontend(struct run *r, struct fz *f)
{
    struct vp_cq_msg *m = &r->dev_add;
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_DEVICE_INFO;
    m->device_type = VP_DEV_NET;
    m->device_id = 1;
    m->u.dev.op = VP_OP_ADD;
    m->u.dev.nvirtqs = 2;
    for (unsigned i = 0; i < 2; i++) {
        struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        q->index = i;
        uint8_t nb = fz_u8(f);
        q->num = 1u << (nb % 9);
        if (nb & 0x80) {
            q->desc = fz_u64(f);
            q->avail = fz_u64(f);
            q->used = fz_u64(f);
        } else {
            q->desc = XGPA_BASE + fz_u16(f);
            q->avail = XGPA_BASE + fz_u16(f);
            q->used = XGPA_BASE + fz_u16(f);
        }
        q->last_avail_idx = fz_u16(f);
        uint8_t v = fz_u8(f);
        q->call_vector = v == 255 ? VP_NO_VECTOR : v;
        q->kick_vector = VP_NO_VECTOR;
    }
}

static void send_features(struct run *r, uint8_t cfg)
{
    struct vp_cq_msg m;
    memset(&m, 0, sizeof(m));
    m.type = VP_MSG_FEATURE_BITS;
    m.u.features = ((cfg & 1) ? 1ULL << VP_VIRTIO_F_VERSION_1 : 0) |
                   ((cfg & 2) ? 1ULL << VP_VIRTIO_NET_F_MRG_RXBUF : 0) |
                   ((cfg & 4) ? 1ULL << VP_VIRTIO_F_RING_EVENT_IDX : 0);
    fg_roundtrip(&r->g, &m, NULL);
}

static void receive(struct run *r, size_t len, unsigned npieces)
{
    struct gd_net_port *p = port0(r);
    if (!p)
        return;
    struct iovec iov[3];
    size_t off = 0;
    for (unsigned i = 0; i < npieces; i++) {
        size_t l = i + 1 == npieces ? len - off : (len - off) / 2;
        iov[i] = (struct iovec){ frame + off, l };
        off += l;
    }
    int ret = gd_net_port_rx(p, iov, npieces, len);
    FZ_CHECK(ret == 0 || ret == -EAGAIN || ret == -EMSGSIZE || ret == -EIO ||
             ret == -ENODEV);
}

/* DEVICE_INFO(DEL), then the same frontend again at the positions given back. */
static void readd_frontend(struct run *r)
{
    struct vp_cq_msg del, ack;
    memset(&del, 0, sizeof(del));
    del.type = VP_MSG_DEVICE_INFO;
    del.device_type = VP_DEV_NET;
    del.device_id = 1;
    del.u.dev.op = VP_OP_DEL;
    int64_t res = fg_roundtrip(&r->g, &del, &ack);
    if (res == VP_ACK_DEL_DONE) {
        FZ_CHECK(ack.u.ack.npos == 2);
        for (unsigned i = 0; i < 2; i++)
            r->dev_add.u.dev.virtqs[i].last_avail_idx = ack.u.ack.pos[i].last_avail_idx;
    }
    fg_roundtrip(&r->g, &r->dev_add, NULL);
}

/* MEMORY_INFO(DEL) of region @i (the data path must let go of it), then ADD again. */
static void readd_region(struct run *r, unsigned i, bool back)
{
    i %= r->mem_add.u.mem.nregions;
    struct vp_cq_msg m = r->mem_add;
    m.u.mem.op = VP_OP_DEL;
    m.u.mem.nregions = 1;
    m.u.mem.regions[0] = r->mem_add.u.mem.regions[i];
    fg_roundtrip(&r->g, &m, NULL);
    if (back) {
        m.u.mem.op = VP_OP_ADD;
        fg_roundtrip(&r->g, &m, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = { data, size };
    struct fz_fdset before;
    fg_once();
    fz_fds_begin(&before);
    static struct run r;
    memset(&r, 0, sizeof(r));

    uint8_t cfg = fz_u8(&f);
    struct gd_endpoint *ep;
    struct cap_ep *cap = NULL;
    vp_error err = { { 0 } };
    if (cfg & 8) {
        ep = gd_endpoint_loopback_new(NULL, &err);
    } else {
        cap = calloc(1, sizeof(*cap));
        FZ_CHECK(cap != NULL);
        cap->base = (struct gd_endpoint){ .ops = &cap_ops };
        cap->g = &r.g;
        cap->refuse_mask = (cfg >> 4) & 3;
        ep = &cap->base;
    }
    fg_setup(&r.g, &f, ep);
    read_regions(&r, &f);
    read_frontend(&r, &f);
    const uint8_t *mem;
    size_t nmem = fz_take(&f, fz_u16(&f), &mem);
    memcpy(fg_mem, mem, nmem);

    fg_roundtrip(&r.g, &r.mem_add, NULL);
    send_features(&r, cfg);
    fg_roundtrip(&r.g, &r.dev_add, NULL);

    for (unsigned step = 0; step < 200 && f.n && r.g.net; step++) {
        uint8_t op = fz_u8(&f);
        switch (op & 7) {
        case 0:
            gd_net_poll(r.g.net);
            break;
        case 1: {
            size_t len = fz_u16(&f);
            if (op & 0x80)
                len += GD_NET_MAX_FRAME - 0x8000; /* around the limit */
            receive(&r, len > sizeof(frame) ? sizeof(frame) : len, 1 + (op >> 3) % 3);
            break;
        }
        case 2: {
            uint32_t off = fz_u16(&f) % (FG_WIN_SIZE - 8);
            const uint8_t *b;
            size_t n = fz_take(&f, 8, &b);
            memcpy(fg_mem + off, b, n);
            break;
        }
        case 3:
            readd_region(&r, op >> 4, op & 8);
            break;
        case 4:
            readd_frontend(&r);
            break;
        case 5:
            send_features(&r, op >> 3);
            break;
        case 6:
            for (unsigned i = 0; i < 8; i++)
                receive(&r, 14 + 50 * i, 1);
            break;
        default:
            for (unsigned i = 0; i < 4; i++)
                gd_net_poll(r.g.net);
            break;
        }
    }
    fg_service_all(&r.g);
    fg_drain_acks(&r.g, NULL);
    if (r.g.net)
        gd_net_poll(r.g.net);
    fg_teardown(&r.g);
    fz_fds_end(&before);
    return 0;
}
