/*
 * test-vring.c - the split virtqueue (protocol/vp_vring.c): need_event arithmetic,
 * driver and device basics, chains, notification suppression with and without
 * EVENT_IDX, every malformed ring a hostile peer can write (bytes written straight
 * into the shared memory, as the peer would), sticky broken, and a two-thread run
 * in the style of Linux tools/virtio/ringtest: a driver thread and a device thread
 * pass 200000 buffers through a 256-entry ring, with eventfds as kick and call.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <glib.h>

#include "testutil.h"
#include "vp_common.h"
#include "vp_vring.h"

/* ------------------------------ ring memory ------------------------------ */

struct ring {
    void *block;
    size_t block_size;
    struct vp_vring_mem m;
};

/* One block: desc at 0, avail right after, used at the next 4-byte boundary.
 * Filled with garbage so that tests notice what init does not set. */
static void ring_alloc(struct ring *r, uint32_t num)
{
    size_t d = vp_vring_desc_size(num), a = vp_vring_avail_size(num);
    size_t u = vp_vring_used_size(num);
    size_t uoff = (d + a + 3) & ~(size_t)3;
    r->block_size = (uoff + u + 4095) & ~(size_t)4095;
    r->block = aligned_alloc(4096, r->block_size);
    g_assert_nonnull(r->block);
    memset(r->block, 0xa5, r->block_size);
    r->m.desc = r->block;
    r->m.avail = (char *)r->block + d;
    r->m.used = (char *)r->block + uoff;
    r->m.num = num;
}

static void ring_free(struct ring *r)
{
    free(r->block);
    r->block = NULL;
}

/* Raw access to the shared rings, as a (possibly hostile) peer does it. */
static void desc_set(struct ring *r, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    unsigned char *d = (unsigned char *)r->m.desc + 16 * i;
    vp_put_le64(d, addr);
    vp_put_le32(d + 8, len);
    vp_put_le16(d + 12, flags);
    vp_put_le16(d + 14, next);
}
static uint16_t desc_flags(struct ring *r, unsigned i)
{
    return vp_get_le16((unsigned char *)r->m.desc + 16 * i + 12);
}
static uint16_t desc_next(struct ring *r, unsigned i)
{
    return vp_get_le16((unsigned char *)r->m.desc + 16 * i + 14);
}
static void *avail_flags_p(struct ring *r) { return r->m.avail; }
static void *avail_idx_p(struct ring *r) { return (char *)r->m.avail + 2; }
static void *avail_ring_p(struct ring *r, unsigned i) { return (char *)r->m.avail + 4 + 2 * i; }
static void *used_event_p(struct ring *r) { return (char *)r->m.avail + 4 + 2 * r->m.num; }
static void *used_flags_p(struct ring *r) { return r->m.used; }
static void *used_idx_p(struct ring *r) { return (char *)r->m.used + 2; }
static void *used_elem_p(struct ring *r, unsigned i) { return (char *)r->m.used + 4 + 8 * i; }
static void *avail_event_p(struct ring *r) { return (char *)r->m.used + 4 + 8 * r->m.num; }

/* A hostile driver publishing one avail entry naming @head. */
static void hostile_avail(struct ring *r, uint16_t idx, uint16_t head)
{
    vp_put_le16(avail_ring_p(r, idx & (r->m.num - 1)), head);
    vp_put_le16(avail_idx_p(r), (uint16_t)(idx + 1));
}

/* A hostile device publishing one used entry. */
static void hostile_used(struct ring *r, uint16_t idx, uint32_t id, uint32_t len)
{
    vp_put_le32(used_elem_p(r, idx & (r->m.num - 1)), id);
    vp_put_le32((char *)used_elem_p(r, idx & (r->m.num - 1)) + 4, len);
    vp_put_le16(used_idx_p(r), (uint16_t)(idx + 1));
}

/* ------------------------------ need_event ------------------------------ */

static void test_need_event(void)
{
    static const struct {
        uint16_t event, new_idx, old;
        bool want;
    } t[] = {
        { 0, 1, 0, true },               /* the first entry crosses event 0 */
        { 1, 1, 0, false },              /* event 1 is reached only by the next one */
        { 0, 5, 0, true },
        { 4, 5, 0, true },               /* last entry of a batch */
        { 5, 5, 0, false },
        { 3, 3, 3, false },              /* nothing moved */
        { 0, 0, 0, false },
        { 2, 5, 3, false },              /* event already behind old */
        { 3, 5, 3, true },
        /* 16-bit wrap-around */
        { 0xffff, 0x0001, 0xfffe, true },
        { 0xfffe, 0x0001, 0xfffe, true },
        { 0x0000, 0x0001, 0xfffe, true },
        { 0x0001, 0x0001, 0xfffe, false },
        { 0xfffd, 0x0001, 0xfffe, false },
        { 0xffff, 0x0000, 0xffff, true },
        { 0x0000, 0x0000, 0xffff, false },
        { 0x7fff, 0x8000, 0x7fff, true },
        { 0x8000, 0x8000, 0x7fff, false },
        { 0x1234, 0x1234, 0x1235, false },   /* new behind old by one: a 65535 move */
    };
    for (unsigned i = 0; i < VP_ARRAY_SIZE(t); i++) {
        bool got = vp_vring_need_event(t[i].event, t[i].new_idx, t[i].old);
        if (got != t[i].want)
            g_error("need_event(event=%#x, new=%#x, old=%#x) = %d, want %d", t[i].event,
                    t[i].new_idx, t[i].old, got, t[i].want);
    }
    /* Exhaustive against the definition for a window of wrap-around values: true iff
     * event is one of old, old+1, ..., new-1. */
    for (unsigned old = 0xfff0; old < 0x10010; old++) {
        for (unsigned step = 0; step < 20; step++) {
            uint16_t o = (uint16_t)old, n = (uint16_t)(old + step);
            for (unsigned e = 0xffe0; e < 0x10030; e++) {
                uint16_t ev = (uint16_t)e;
                bool want = (uint16_t)(ev - o) < step;
                g_assert_cmpint(vp_vring_need_event(ev, n, o), ==, want);
            }
        }
    }
}

/* --------------------------------- init --------------------------------- */

static void test_init_errors(void)
{
    struct ring r;
    ring_alloc(&r, 8);
    struct vp_vring_drv drv;
    struct vp_vring_dev dev;
    static const uint32_t bad_num[] = { 0, 3, 6, 100, 65536, 1u << 31 };
    for (unsigned i = 0; i < VP_ARRAY_SIZE(bad_num); i++) {
        struct vp_vring_mem m = r.m;
        m.num = bad_num[i];
        g_assert_cmpint(vp_vring_drv_init(&drv, &m, true), ==, -EINVAL);
        g_assert_cmpint(vp_vring_dev_init(&dev, &m, true, 0), ==, -EINVAL);
    }
    struct vp_vring_mem m = r.m;
    m.desc = (char *)r.m.desc + 8;          /* desc needs 16 */
    g_assert_cmpint(vp_vring_drv_init(&drv, &m, true), ==, -EINVAL);
    g_assert_cmpint(vp_vring_dev_init(&dev, &m, true, 0), ==, -EINVAL);
    m = r.m;
    m.avail = (char *)r.m.avail + 1;        /* avail needs 2 */
    g_assert_cmpint(vp_vring_drv_init(&drv, &m, true), ==, -EINVAL);
    m = r.m;
    m.used = (char *)r.m.used + 2;          /* used needs 4 */
    g_assert_cmpint(vp_vring_dev_init(&dev, &m, true, 0), ==, -EINVAL);
    m = r.m;
    m.used = NULL;
    g_assert_cmpint(vp_vring_drv_init(&drv, &m, true), ==, -EINVAL);
    ring_free(&r);

    /* The largest ring works, and init zeroes every part of it. */
    ring_alloc(&r, 32768);
    g_assert_cmpint(vp_vring_drv_init(&drv, &r.m, true), ==, 0);
    g_assert_cmpint(vp_vring_drv_num_free(&drv), ==, 32768);
    for (uint64_t i = 0; i < vp_vring_desc_size(32768); i++)
        g_assert_cmpint(((unsigned char *)r.m.desc)[i], ==, 0);
    for (uint64_t i = 0; i < vp_vring_avail_size(32768); i++)
        g_assert_cmpint(((unsigned char *)r.m.avail)[i], ==, 0);
    for (uint64_t i = 0; i < vp_vring_used_size(32768); i++)
        g_assert_cmpint(((unsigned char *)r.m.used)[i], ==, 0);
    g_assert_cmpint(vp_vring_dev_init(&dev, &r.m, true, 0), ==, 0);
    vp_vring_drv_destroy(&drv);
    ring_free(&r);
}

/* -------------------------------- basics -------------------------------- */

struct pair {
    struct ring r;
    struct vp_vring_drv drv;
    struct vp_vring_dev dev;
};

static void pair_init(struct pair *p, uint32_t num, bool event_idx)
{
    ring_alloc(&p->r, num);
    g_assert_cmpint(vp_vring_drv_init(&p->drv, &p->r.m, event_idx), ==, 0);
    g_assert_cmpint(vp_vring_dev_init(&p->dev, &p->r.m, event_idx, 0), ==, 0);
}

static void pair_fini(struct pair *p)
{
    vp_vring_drv_destroy(&p->drv);
    ring_free(&p->r);
}

static void test_basic(void)
{
    struct pair p;
    pair_init(&p, 8, true);
    int tok;
    struct vp_vring_seg in[2] = { { 0x1000, 100, false }, { 0x2000, 200, true } };

    g_assert_false(vp_vring_dev_has_avail(&p.dev));
    g_assert_cmpint(vp_vring_drv_add(&p.drv, in, 1, 1, &tok), ==, 0);
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 6);
    /* Not visible before kick_prepare publishes avail->idx. */
    g_assert_false(vp_vring_dev_has_avail(&p.dev));
    g_assert_true(vp_vring_drv_kick_prepare(&p.drv));
    g_assert_true(vp_vring_dev_has_avail(&p.dev));
    /* A second kick_prepare with nothing new asks for no kick. */
    g_assert_false(vp_vring_drv_kick_prepare(&p.drv));

    struct vp_vring_seg segs[4];
    unsigned n = 0;
    uint16_t head = 0xffff;
    g_assert_cmpint(vp_vring_dev_pop(&p.dev, segs, 4, &n, &head), ==, 1);
    g_assert_cmpuint(n, ==, 2);
    g_assert_cmpuint(head, <, 8);
    g_assert_cmpuint(segs[0].addr, ==, 0x1000);
    g_assert_cmpuint(segs[0].len, ==, 100);
    g_assert_false(segs[0].write);
    g_assert_cmpuint(segs[1].addr, ==, 0x2000);
    g_assert_cmpuint(segs[1].len, ==, 200);
    g_assert_true(segs[1].write);
    g_assert_cmpint(vp_vring_dev_pop(&p.dev, segs, 4, &n, &head), ==, 0);
    g_assert_false(vp_vring_dev_has_avail(&p.dev));

    void *t = NULL;
    uint32_t len = 0;
    g_assert_cmpint(vp_vring_dev_push(&p.dev, head, 42), ==, 0);
    /* Not visible before flush. */
    g_assert_cmpint(vp_vring_drv_get_used(&p.drv, &t, &len), ==, 0);
    vp_vring_dev_flush(&p.dev);
    g_assert_true(vp_vring_dev_need_notify(&p.dev));
    g_assert_cmpint(vp_vring_drv_get_used(&p.drv, &t, &len), ==, 1);
    g_assert_true(t == &tok);
    g_assert_cmpuint(len, ==, 42);
    g_assert_cmpint(vp_vring_drv_get_used(&p.drv, &t, &len), ==, 0);
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 8);
    g_assert_false(p.drv.broken);
    g_assert_false(p.dev.broken);

    /* Bad arguments on the driver side. */
    g_assert_cmpint(vp_vring_drv_add(&p.drv, in, 0, 0, &tok), ==, -EINVAL);
    g_assert_cmpint(vp_vring_drv_add(&p.drv, in, 9, 0, &tok), ==, -ENOSPC);
    g_assert_false(p.drv.broken);
    pair_fini(&p);
}

static void test_chains(void)
{
    struct pair p;
    pair_init(&p, 16, true);
    struct vp_vring_seg s[16];
    for (unsigned i = 0; i < 16; i++)
        s[i] = (struct vp_vring_seg){ 0x10000 + 0x100 * i, 10 + i, false };
    int toks[8];

    /* 3 out + 2 in, then 1 out, then 0 out + 4 in, then 6 out: all 16 descriptors. */
    g_assert_cmpint(vp_vring_drv_add(&p.drv, s, 3, 2, &toks[0]), ==, 0);
    g_assert_cmpint(vp_vring_drv_add(&p.drv, s + 5, 1, 0, &toks[1]), ==, 0);
    g_assert_cmpint(vp_vring_drv_add(&p.drv, s + 6, 0, 4, &toks[2]), ==, 0);
    g_assert_cmpint(vp_vring_drv_add(&p.drv, s + 10, 6, 0, &toks[3]), ==, 0);
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 0);
    /* Nothing left, not even for one. */
    g_assert_cmpint(vp_vring_drv_add(&p.drv, s, 1, 0, &toks[4]), ==, -ENOSPC);
    g_assert_false(p.drv.broken);
    g_assert_true(vp_vring_drv_kick_prepare(&p.drv));

    static const unsigned want_n[] = { 5, 1, 4, 6 }, want_first[] = { 0, 5, 6, 10 },
                          want_nout[] = { 3, 1, 0, 6 };
    uint16_t heads[4];
    for (unsigned c = 0; c < 4; c++) {
        struct vp_vring_seg got[16];
        unsigned n;
        g_assert_cmpint(vp_vring_dev_pop(&p.dev, got, 16, &n, &heads[c]), ==, 1);
        g_assert_cmpuint(n, ==, want_n[c]);
        for (unsigned k = 0; k < n; k++) {
            g_assert_cmpuint(got[k].addr, ==, s[want_first[c] + k].addr);
            g_assert_cmpuint(got[k].len, ==, s[want_first[c] + k].len);
            g_assert_cmpint(got[k].write, ==, k >= want_nout[c]);
        }
    }
    /* Complete out of order: 2, 0, 3, 1; the free list must survive it. */
    static const unsigned order[] = { 2, 0, 3, 1 };
    for (unsigned k = 0; k < 4; k++)
        g_assert_cmpint(vp_vring_dev_push(&p.dev, heads[order[k]], 1000 + order[k]), ==, 0);
    vp_vring_dev_flush(&p.dev);
    for (unsigned k = 0; k < 4; k++) {
        void *t;
        uint32_t len;
        g_assert_cmpint(vp_vring_drv_get_used(&p.drv, &t, &len), ==, 1);
        g_assert_true(t == &toks[order[k]]);
        g_assert_cmpuint(len, ==, 1000 + order[k]);
    }
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 16);

    /* A chain using all 16 descriptors is legal (exactly num, not a loop), and the
     * recycled free list hands out 16 distinct descriptors. */
    g_assert_cmpint(vp_vring_drv_add(&p.drv, s, 10, 6, &toks[5]), ==, 0);
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 0);
    vp_vring_drv_kick_prepare(&p.drv);
    struct vp_vring_seg got[16];
    unsigned n;
    uint16_t h;
    g_assert_cmpint(vp_vring_dev_pop(&p.dev, got, 16, &n, &h), ==, 1);
    g_assert_cmpuint(n, ==, 16);
    bool seen[16] = { false };
    unsigned i = h;
    for (unsigned k = 0; k < 16; k++) {
        g_assert_false(seen[i]);
        seen[i] = true;
        g_assert_cmpuint(got[k].addr, ==, s[k].addr);
        g_assert_cmpint(got[k].write, ==, k >= 10);
        if (k < 15) {
            g_assert_true(desc_flags(&p.r, i) & VP_VRING_DESC_F_NEXT);
            i = desc_next(&p.r, i);
        } else {
            g_assert_false(desc_flags(&p.r, i) & VP_VRING_DESC_F_NEXT);
        }
    }
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h, 7), ==, 0);
    vp_vring_dev_flush(&p.dev);
    void *t;
    uint32_t len;
    g_assert_cmpint(vp_vring_drv_get_used(&p.drv, &t, &len), ==, 1);
    g_assert_true(t == &toks[5]);
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 16);
    g_assert_false(p.drv.broken);
    g_assert_false(p.dev.broken);
    pair_fini(&p);
}

/* Many round trips with the indexes crossing 0xffff -> 0: the device resumes at a
 * position near the wrap (as after a hand-over), the driver is played raw. */
static void test_wrap_resume(void)
{
    struct ring r;
    ring_alloc(&r, 4);
    memset(r.block, 0, r.block_size);
    vp_put_le16(used_idx_p(&r), 0xfffd);
    struct vp_vring_dev dev;
    g_assert_cmpint(vp_vring_dev_init(&dev, &r.m, true, 0xfffe), ==, 0);
    g_assert_cmpuint(dev.used_idx, ==, 0xfffd);
    uint16_t aidx = 0xfffe, uidx = 0xfffd;
    for (unsigned round = 0; round < 10; round++) {
        for (unsigned k = 0; k < 3; k++) {
            desc_set(&r, k, 0x100 * k + round, 64, 0, 0);
            hostile_avail(&r, aidx, (uint16_t)k);
            aidx++;
        }
        struct vp_vring_seg s[2];
        unsigned n;
        uint16_t h;
        for (unsigned k = 0; k < 3; k++) {
            g_assert_cmpint(vp_vring_dev_pop(&dev, s, 2, &n, &h), ==, 1);
            g_assert_cmpuint(h, ==, k);
            g_assert_cmpuint(s[0].addr, ==, 0x100 * k + round);
            g_assert_cmpint(vp_vring_dev_push(&dev, h, k), ==, 0);
        }
        g_assert_cmpint(vp_vring_dev_pop(&dev, s, 2, &n, &h), ==, 0);
        vp_vring_dev_flush(&dev);
        uidx = (uint16_t)(uidx + 3);
        g_assert_cmpuint(vp_get_le16(used_idx_p(&r)), ==, uidx);
        g_assert_cmpuint(dev.last_avail_idx, ==, aidx);
    }
    g_assert_false(dev.broken);
    ring_free(&r);
}

/* ------------------------- notification suppression ------------------------- */

static int add_one(struct pair *p, void *tok)
{
    struct vp_vring_seg s = { 0x1000, 64, false };
    return vp_vring_drv_add(&p->drv, &s, 1, 0, tok);
}

static uint16_t pop_one(struct pair *p)
{
    struct vp_vring_seg s[2];
    unsigned n;
    uint16_t h;
    g_assert_cmpint(vp_vring_dev_pop(&p->dev, s, 2, &n, &h), ==, 1);
    return h;
}

static uint16_t pop_one_any(struct pair *p)
{
    struct vp_vring_seg s[8];
    unsigned n;
    uint16_t h;
    g_assert_cmpint(vp_vring_dev_pop(&p->dev, s, 8, &n, &h), ==, 1);
    return h;
}

static void drain_used(struct pair *p, unsigned want)
{
    void *t;
    uint32_t len;
    for (unsigned k = 0; k < want; k++)
        g_assert_cmpint(vp_vring_drv_get_used(&p->drv, &t, &len), ==, 1);
    g_assert_cmpint(vp_vring_drv_get_used(&p->drv, &t, &len), ==, 0);
}

static void test_notify_event_idx(void)
{
    struct pair p;
    int tok;
    pair_init(&p, 8, true);

    /* Kicks: the device asks for one at its next entry (avail_event). */
    g_assert_false(vp_vring_dev_set_notify(&p.dev, true));
    g_assert_cmpuint(vp_get_le16(avail_event_p(&p.r)), ==, 0);
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_true(vp_vring_drv_kick_prepare(&p.drv));     /* crosses avail_event 0 */
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_false(vp_vring_drv_kick_prepare(&p.drv));    /* already kicked for it */
    /* Disabling with EVENT_IDX leaves used->flags 0 (virtio 1.0 2.4.8.2). */
    g_assert_false(vp_vring_dev_set_notify(&p.dev, false));
    g_assert_cmpuint(vp_get_le16(used_flags_p(&p.r)), ==, 0);
    uint16_t h1 = pop_one(&p), h2 = pop_one(&p);
    /* Re-enabling with nothing new: avail_event = 2, nothing to re-check. */
    g_assert_false(vp_vring_dev_set_notify(&p.dev, true));
    g_assert_cmpuint(vp_get_le16(avail_event_p(&p.r)), ==, 2);
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_true(vp_vring_drv_kick_prepare(&p.drv));     /* batch of 2 crosses 2 */
    /* Enabling while buffers are pending returns true (re-check before sleeping). */
    g_assert_true(vp_vring_dev_set_notify(&p.dev, true));
    uint16_t h3 = pop_one(&p), h4 = pop_one(&p);

    /* Interrupts: the driver asks for one at its next used entry (used_event). */
    g_assert_false(vp_vring_drv_set_notify(&p.drv, true));
    g_assert_cmpuint(vp_get_le16(used_event_p(&p.r)), ==, 0);
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h1, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    g_assert_true(vp_vring_dev_need_notify(&p.dev));      /* crosses used_event 0 */
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h2, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    g_assert_false(vp_vring_dev_need_notify(&p.dev));     /* already signalled */
    /* Disabling with EVENT_IDX leaves avail->flags 0 (virtio 1.0 2.4.7.1). */
    g_assert_false(vp_vring_drv_set_notify(&p.drv, false));
    g_assert_cmpuint(vp_get_le16(avail_flags_p(&p.r)), ==, 0);
    drain_used(&p, 2);
    g_assert_false(vp_vring_drv_set_notify(&p.drv, true));
    g_assert_cmpuint(vp_get_le16(used_event_p(&p.r)), ==, 2);
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h3, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    /* Enabling while used entries are pending returns true. */
    g_assert_true(vp_vring_drv_set_notify(&p.drv, true));
    g_assert_true(vp_vring_dev_need_notify(&p.dev));      /* crosses used_event 2 */
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h4, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    g_assert_false(vp_vring_dev_need_notify(&p.dev));
    drain_used(&p, 2);
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 8);
    g_assert_false(p.drv.broken);
    g_assert_false(p.dev.broken);
    pair_fini(&p);
}

static void test_notify_flags(void)
{
    struct pair p;
    int tok;
    pair_init(&p, 8, false);

    /* Kicks: VRING_USED_F_NO_NOTIFY. */
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_true(vp_vring_drv_kick_prepare(&p.drv));
    g_assert_false(vp_vring_dev_set_notify(&p.dev, false));
    g_assert_cmpuint(vp_get_le16(used_flags_p(&p.r)), ==, VP_VRING_USED_F_NO_NOTIFY);
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_false(vp_vring_drv_kick_prepare(&p.drv));
    /* Enabling with two pending: flag cleared, returns true. */
    g_assert_true(vp_vring_dev_set_notify(&p.dev, true));
    g_assert_cmpuint(vp_get_le16(used_flags_p(&p.r)), ==, 0);
    uint16_t h1 = pop_one(&p), h2 = pop_one(&p);
    g_assert_false(vp_vring_dev_set_notify(&p.dev, true));
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_true(vp_vring_drv_kick_prepare(&p.drv));
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    g_assert_true(vp_vring_drv_kick_prepare(&p.drv));     /* no event index: every batch */
    g_assert_false(vp_vring_drv_kick_prepare(&p.drv));    /* but not for nothing */
    uint16_t h3 = pop_one(&p), h4 = pop_one(&p);

    /* Interrupts: VRING_AVAIL_F_NO_INTERRUPT. */
    g_assert_false(vp_vring_drv_set_notify(&p.drv, false));
    g_assert_cmpuint(vp_get_le16(avail_flags_p(&p.r)), ==, VP_VRING_AVAIL_F_NO_INTERRUPT);
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h1, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    g_assert_false(vp_vring_dev_need_notify(&p.dev));
    g_assert_true(vp_vring_drv_set_notify(&p.drv, true));   /* one pending */
    g_assert_cmpuint(vp_get_le16(avail_flags_p(&p.r)), ==, 0);
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h2, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    g_assert_true(vp_vring_dev_need_notify(&p.dev));
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h3, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    g_assert_true(vp_vring_dev_need_notify(&p.dev));
    drain_used(&p, 3);
    g_assert_false(vp_vring_drv_set_notify(&p.drv, true));
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h4, 1), ==, 0);
    vp_vring_dev_flush(&p.dev);
    drain_used(&p, 1);
    g_assert_false(p.drv.broken);
    g_assert_false(p.dev.broken);
    pair_fini(&p);
}

/* ------------------------ malformed rings: device side ------------------------ */

/* The hostile driver writes desc[] and the avail ring, the device pops. */
struct dev_case {
    const char *name;
    void (*write)(struct ring *r);
    unsigned max_segs;
    const char *why;
};

static void bad_head(struct ring *r) { hostile_avail(r, 0, 8); }
static void bad_head_huge(struct ring *r) { hostile_avail(r, 0, 0xffff); }
static void bad_next(struct ring *r)
{
    desc_set(r, 0, 0x1000, 10, VP_VRING_DESC_F_NEXT, 9);
    hostile_avail(r, 0, 0);
}
static void bad_loop(struct ring *r)
{
    desc_set(r, 2, 0x1000, 10, VP_VRING_DESC_F_NEXT, 5);   /* a -> b */
    desc_set(r, 5, 0x2000, 10, VP_VRING_DESC_F_NEXT, 2);   /* b -> a */
    hostile_avail(r, 0, 2);
}
static void bad_self_loop(struct ring *r)
{
    desc_set(r, 3, 0x1000, 10, VP_VRING_DESC_F_NEXT, 3);
    hostile_avail(r, 0, 3);
}
static void bad_too_long(struct ring *r)
{
    desc_set(r, 0, 0x1000, 10, VP_VRING_DESC_F_NEXT, 1);
    desc_set(r, 1, 0x2000, 10, VP_VRING_DESC_F_NEXT, 2);
    desc_set(r, 2, 0x3000, 10, 0, 0);
    hostile_avail(r, 0, 0);
}
static void bad_avail_jump(struct ring *r)
{
    desc_set(r, 0, 0x1000, 10, 0, 0);
    for (unsigned i = 0; i < 8; i++)
        vp_put_le16(avail_ring_p(r, i), 0);
    vp_put_le16(avail_idx_p(r), 9);
}
static void bad_avail_back(struct ring *r)
{
    desc_set(r, 0, 0x1000, 10, 0, 0);
    vp_put_le16(avail_idx_p(r), 0xffff);  /* "moved" by 65535 */
}
static void bad_indirect(struct ring *r)
{
    desc_set(r, 0, 0x1000, 16, VP_VRING_DESC_F_INDIRECT, 0);
    hostile_avail(r, 0, 0);
}
static void bad_indirect_in_chain(struct ring *r)
{
    desc_set(r, 0, 0x1000, 16, VP_VRING_DESC_F_NEXT, 1);
    desc_set(r, 1, 0x2000, 16, VP_VRING_DESC_F_INDIRECT | VP_VRING_DESC_F_WRITE, 0);
    hostile_avail(r, 0, 0);
}
static void bad_read_after_write(struct ring *r)
{
    desc_set(r, 0, 0x1000, 10, VP_VRING_DESC_F_NEXT, 1);
    desc_set(r, 1, 0x2000, 10, VP_VRING_DESC_F_WRITE | VP_VRING_DESC_F_NEXT, 2);
    desc_set(r, 2, 0x3000, 10, 0, 0);
    hostile_avail(r, 0, 0);
}
static void bad_total_len(struct ring *r)
{
    desc_set(r, 0, 0x1000, 0xffffffffu, VP_VRING_DESC_F_NEXT, 1);
    desc_set(r, 1, 0x2000, 1, 0, 0);
    hostile_avail(r, 0, 0);
}

static void test_dev_malformed(void)
{
    static const struct dev_case cases[] = {
        { "head >= num", bad_head, 16, "head 8 >= num 8" },
        { "head 0xffff", bad_head_huge, 16, "head 65535 >= num 8" },
        { "next >= num", bad_next, 16, "next 9 >= num 8" },
        { "loop a->b->a", bad_loop, 64, "longer than num 8 (loop)" },
        { "self loop", bad_self_loop, 64, "longer than num 8 (loop)" },
        { "longer than max_segs", bad_too_long, 2, "longer than max_segs 2" },
        { "max_segs 0", bad_too_long, 0, "longer than max_segs 0" },
        { "avail idx jump", bad_avail_jump, 16, "moved from 0 to 9 (more than num 8)" },
        { "avail idx backwards", bad_avail_back, 16, "moved from 0 to 65535" },
        { "INDIRECT", bad_indirect, 16, "INDIRECT" },
        { "INDIRECT in chain", bad_indirect_in_chain, 16, "descriptor 1: INDIRECT" },
        { "readable after writable", bad_read_after_write, 16, "readable after writable" },
        { "total over 4 GiB", bad_total_len, 16, "over 4 GiB" },
    };
    int fds = vp_count_open_fds();
    for (unsigned c = 0; c < VP_ARRAY_SIZE(cases); c++) {
        g_test_message("case: %s", cases[c].name);
        struct ring r;
        ring_alloc(&r, 8);
        memset(r.block, 0, r.block_size);
        struct vp_vring_dev dev;
        g_assert_cmpint(vp_vring_dev_init(&dev, &r.m, true, 0), ==, 0);
        cases[c].write(&r);
        struct vp_vring_seg segs[64];
        unsigned n = 12345;
        uint16_t h = 0x4321;
        int ret = vp_vring_dev_pop(&dev, segs, cases[c].max_segs, &n, &h);
        if (ret != -EIO || !dev.broken || !strstr(dev.why, cases[c].why))
            g_error("case %s: ret %d broken %d why '%s', want -EIO and '%s'", cases[c].name,
                    ret, dev.broken, dev.why, cases[c].why);
        g_assert_cmpuint(n, ==, 12345);       /* outputs untouched on error */
        g_assert_cmpuint(h, ==, 0x4321);
        g_assert_cmpuint(dev.last_avail_idx, ==, 0);
        /* Sticky: even a now-valid ring is refused, and nothing is published. */
        char why[sizeof(dev.why)];
        memcpy(why, dev.why, sizeof(why));
        memset(r.block, 0, r.block_size);
        desc_set(&r, 0, 0x1000, 10, 0, 0);
        hostile_avail(&r, 0, 0);
        g_assert_cmpint(vp_vring_dev_pop(&dev, segs, 64, &n, &h), ==, -EIO);
        g_assert_cmpint(vp_vring_dev_push(&dev, 0, 1), ==, -EIO);
        vp_vring_dev_flush(&dev);
        g_assert_cmpuint(vp_get_le16(used_idx_p(&r)), ==, 0);
        g_assert_false(vp_vring_dev_has_avail(&dev));
        g_assert_false(vp_vring_dev_need_notify(&dev));
        g_assert_false(vp_vring_dev_set_notify(&dev, true));
        /* The first reason is kept. */
        vp_vring_dev_break(&dev, "later reason");
        g_assert_cmpstr(dev.why, ==, why);
        ring_free(&r);
    }
    vp_assert_fds(fds);
}

/* The device pops a long batch (it prefetches the head descriptors of the entries
 * ahead, reading their avail entries as hints): garbage ahead in the avail ring
 * breaks nothing before it is reached, an entry rewritten after its hint was read is
 * taken as it is when popped, and the bad one breaks the queue when popped. */
static void test_dev_batch_hostile_ahead(void)
{
    struct ring r;
    ring_alloc(&r, 16);
    struct vp_vring_dev dev;
    vp_put_le16(avail_idx_p(&r), 0);
    g_assert_cmpint(vp_vring_dev_init(&dev, &r.m, false, 0), ==, 0);
    for (unsigned i = 0; i < 16; i++) {
        desc_set(&r, i, 0x1000 * (i + 1), 64, 0, 0);
        vp_put_le16(avail_ring_p(&r, i), (uint16_t)i);
    }
    vp_put_le16(avail_ring_p(&r, 10), 999);     /* out of range */
    vp_put_le16(avail_ring_p(&r, 12), 0xffff);  /* garbage further ahead */
    vp_put_le16(avail_idx_p(&r), 16);
    struct vp_vring_seg seg[2];
    unsigned n = 0;
    uint16_t head = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (i == 2)
            vp_put_le16(avail_ring_p(&r, 4), 15); /* its hint was read already */
        g_assert_cmpint(vp_vring_dev_pop(&dev, seg, 2, &n, &head), ==, 1);
        uint16_t want = i == 4 ? 15 : (uint16_t)i;
        g_assert_cmpuint(head, ==, want);
        g_assert_cmpuint(n, ==, 1);
        g_assert_cmpuint(seg[0].addr, ==, 0x1000 * (want + 1));
        g_assert_false(dev.broken);
    }
    g_assert_cmpint(vp_vring_dev_pop(&dev, seg, 2, &n, &head), ==, -EIO);
    g_assert_true(dev.broken);
    g_assert_nonnull(strstr(dev.why, "head 999 >= num 16"));
    ring_free(&r);
}

/* A device publishing in the middle of a batch (every 8 entries, counted by
 * vp_vring_dev_unpublished): the driver takes those entries at once; the
 * notification decided after the batch's last flush covers the ones published
 * early, and a second decision with nothing new asks for none. */
static void test_dev_publish_early(void)
{
    struct pair p;
    pair_init(&p, 32, true);
    struct vp_vring_seg in = { 0x1000, 64, true };
    int tok[20];
    for (unsigned i = 0; i < 20; i++)
        g_assert_cmpint(vp_vring_drv_add(&p.drv, &in, 0, 1, &tok[i]), ==, 0);
    vp_vring_drv_kick_prepare(&p.drv);
    vp_vring_drv_set_notify(&p.drv, true);     /* used_event = 0: interrupt me */
    struct vp_vring_seg seg[2];
    unsigned n = 0, got = 0;
    uint16_t head = 0;
    void *t = NULL;
    uint32_t len = 0;
    g_assert_cmpuint(vp_vring_dev_unpublished(&p.dev), ==, 0);
    for (unsigned i = 0; i < 20; i++) {
        g_assert_cmpint(vp_vring_dev_pop(&p.dev, seg, 2, &n, &head), ==, 1);
        g_assert_cmpint(vp_vring_dev_push(&p.dev, head, 64), ==, 0);
        g_assert_cmpuint(vp_vring_dev_unpublished(&p.dev), ==, i % 8 + 1);
        if (vp_vring_dev_unpublished(&p.dev) >= 8)
            vp_vring_dev_flush(&p.dev);
        while (vp_vring_drv_get_used(&p.drv, &t, &len) == 1) {
            g_assert_true(t == &tok[got]);
            got++;
        }
        g_assert_cmpuint(got, ==, (i + 1) / 8 * 8);
    }
    g_assert_cmpuint(vp_vring_dev_unpublished(&p.dev), ==, 4);
    vp_vring_dev_flush(&p.dev);
    g_assert_cmpuint(vp_vring_dev_unpublished(&p.dev), ==, 0);
    g_assert_true(vp_vring_dev_need_notify(&p.dev));
    while (vp_vring_drv_get_used(&p.drv, &t, &len) == 1)
        got++;
    g_assert_cmpuint(got, ==, 20);
    vp_vring_drv_set_notify(&p.drv, true);     /* re-armed at 20: nothing new */
    vp_vring_dev_flush(&p.dev);
    g_assert_false(vp_vring_dev_need_notify(&p.dev));
    pair_fini(&p);
}

/* A broken-by-the-caller device queue, and push of an out-of-range head. */
static void test_dev_break_and_push(void)
{
    struct pair p;
    pair_init(&p, 8, true);
    g_assert_cmpint(vp_vring_dev_push(&p.dev, 8, 1), ==, -EIO);
    g_assert_true(p.dev.broken);
    g_assert_nonnull(strstr(p.dev.why, "head 8 >= num 8"));
    pair_fini(&p);

    pair_init(&p, 8, true);
    int tok;
    g_assert_cmpint(add_one(&p, &tok), ==, 0);
    vp_vring_drv_kick_prepare(&p.drv);
    vp_vring_dev_break(&p.dev, "reset by %s", "test");
    g_assert_true(p.dev.broken);
    g_assert_cmpstr(p.dev.why, ==, "reset by test");
    struct vp_vring_seg s[2];
    unsigned n;
    uint16_t h;
    g_assert_cmpint(vp_vring_dev_pop(&p.dev, s, 2, &n, &h), ==, -EIO);
    pair_fini(&p);
}

/* ------------------------ malformed rings: driver side ------------------------ */

struct drv_case {
    const char *name;
    void (*write)(struct ring *r, uint16_t inflight_head);
    const char *why;
};

static void used_out_of_range(struct ring *r, uint16_t h) { (void)h; hostile_used(r, 0, 8, 1); }
static void used_huge(struct ring *r, uint16_t h) { (void)h; hostile_used(r, 0, 0xffffffffu, 1); }
static void used_not_head(struct ring *r, uint16_t h)
{
    hostile_used(r, 0, (uint16_t)((h + 1) & 7), 1);   /* second descriptor of the chain */
}
static void used_free_desc(struct ring *r, uint16_t h)
{
    hostile_used(r, 0, (uint16_t)((h + 5) & 7), 1);   /* on the free list */
}
static void used_twice(struct ring *r, uint16_t h)
{
    hostile_used(r, 0, h, 1);
    hostile_used(r, 1, h, 1);
}
static void used_idx_jump(struct ring *r, uint16_t h)
{
    hostile_used(r, 0, h, 1);
    vp_put_le16(used_idx_p(r), 9);
}

static void test_drv_malformed(void)
{
    static const struct drv_case cases[] = {
        { "used id >= num", used_out_of_range, "used id 8 out of range (num 8)" },
        { "used id 0xffffffff", used_huge, "used id 4294967295 out of range" },
        { "used id not a head", used_not_head, "is not a head in flight" },
        { "used id free", used_free_desc, "is not a head in flight" },
        { "used id twice", used_twice, "is not a head in flight" },
        { "used idx jump", used_idx_jump, "used index moved from 0 to 9 (more than num 8)" },
    };
    int fds = vp_count_open_fds();
    for (unsigned c = 0; c < VP_ARRAY_SIZE(cases); c++) {
        g_test_message("case: %s", cases[c].name);
        struct ring r;
        ring_alloc(&r, 8);
        struct vp_vring_drv drv;
        g_assert_cmpint(vp_vring_drv_init(&drv, &r.m, true), ==, 0);
        struct vp_vring_seg s[2] = { { 0x1000, 10, false }, { 0x2000, 10, true } };
        int tok;
        g_assert_cmpint(vp_vring_drv_add(&drv, s, 1, 1, &tok), ==, 0);
        vp_vring_drv_kick_prepare(&drv);
        uint16_t head = vp_get_le16(avail_ring_p(&r, 0));
        cases[c].write(&r, head);

        void *t = NULL;
        uint32_t len = 0;
        int ret = vp_vring_drv_get_used(&drv, &t, &len);
        if (!strcmp(cases[c].name, "used id twice")) {
            /* The first completion is fine, the repeat is not. */
            g_assert_cmpint(ret, ==, 1);
            g_assert_true(t == &tok);
            ret = vp_vring_drv_get_used(&drv, &t, &len);
        }
        if (ret != -EIO || !drv.broken || !strstr(drv.why, cases[c].why))
            g_error("case %s: ret %d broken %d why '%s', want -EIO and '%s'", cases[c].name,
                    ret, drv.broken, drv.why, cases[c].why);
        /* Sticky. */
        g_assert_cmpint(vp_vring_drv_get_used(&drv, &t, &len), ==, -EIO);
        g_assert_cmpint(vp_vring_drv_add(&drv, s, 1, 1, &tok), ==, -EIO);
        g_assert_false(vp_vring_drv_kick_prepare(&drv));
        g_assert_false(vp_vring_drv_set_notify(&drv, true));
        vp_vring_drv_destroy(&drv);
        ring_free(&r);
    }
    vp_assert_fds(fds);
}

/* The driver never trusts what the device rewrote in desc[]: free-list shadows. */
static void test_drv_shadows(void)
{
    struct pair p;
    pair_init(&p, 8, true);
    struct vp_vring_seg s[3] = { { 0x1000, 1, false }, { 0x2000, 2, false }, { 0x3000, 3, true } };
    int tok;
    g_assert_cmpint(vp_vring_drv_add(&p.drv, s, 2, 1, &tok), ==, 0);
    vp_vring_drv_kick_prepare(&p.drv);
    uint16_t h = pop_one_any(&p);
    /* The hostile device scribbles over every descriptor's next and flags. */
    for (unsigned i = 0; i < 8; i++)
        desc_set(&p.r, i, 0xdead, 0xbeef, 0xffff, (uint16_t)(0xfff0 + i));
    g_assert_cmpint(vp_vring_dev_push(&p.dev, h, 3), ==, 0);
    vp_vring_dev_flush(&p.dev);
    drain_used(&p, 1);
    g_assert_cmpint(vp_vring_drv_num_free(&p.drv), ==, 8);
    /* The free list still hands out 8 distinct, in-range descriptors. */
    struct vp_vring_seg eight[8];
    for (unsigned i = 0; i < 8; i++)
        eight[i] = (struct vp_vring_seg){ 0x100 * i, i, false };
    g_assert_cmpint(vp_vring_drv_add(&p.drv, eight, 8, 0, &tok), ==, 0);
    vp_vring_drv_kick_prepare(&p.drv);
    struct vp_vring_seg got[8];
    unsigned n;
    g_assert_cmpint(vp_vring_dev_pop(&p.dev, got, 8, &n, &h), ==, 1);
    g_assert_cmpuint(n, ==, 8);
    for (unsigned i = 0; i < 8; i++)
        g_assert_cmpuint(got[i].addr, ==, 0x100 * i);
    g_assert_false(p.drv.broken);
    g_assert_false(p.dev.broken);
    pair_fini(&p);
}

/* ------------------------------ two threads ------------------------------ */

#define TT_NUM 256
#define TT_TOTAL 200000u
#define TT_SLOTS 128          /* chains of 2 descriptors: the ring holds 128 */
#define TT_SLOT_BYTES 128     /* out at +0 (64 bytes), in at +64 (64 bytes) */
#define TT_BATCH 8            /* device completes up to 8 at a time, reversed */
#define TT_WAIT_MS 20000

struct tt {
    struct ring r;
    struct vp_vring_drv drv;
    struct vp_vring_dev dev;
    int kick_fd, call_fd;
    unsigned char pool[TT_SLOTS * TT_SLOT_BYTES];
    uint32_t slot_seq[TT_SLOTS];       /* driver private: what each slot carries */
    int failed;                        /* atomic */
    char fail_msg[256];
    unsigned kicks, calls, avail_wraps, used_wraps, dev_waits, drv_waits;
    unsigned publish_every;            /* device: flush within a batch every n (0: no) */
};

static void tt_fail(struct tt *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tt_fail(struct tt *t, const char *fmt, ...)
{
    int zero = 0;
    if (__atomic_compare_exchange_n(&t->failed, &zero, 1, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
        va_list ap;
        va_start(ap, fmt);
        g_vsnprintf(t->fail_msg, sizeof(t->fail_msg), fmt, ap);
        va_end(ap);
    }
    /* Wake the other thread. */
    uint64_t one = 1;
    (void)!write(t->kick_fd, &one, 8);
    (void)!write(t->call_fd, &one, 8);
}

static bool tt_failed(struct tt *t) { return __atomic_load_n(&t->failed, __ATOMIC_SEQ_CST); }

static void tt_signal(int fd)
{
    uint64_t one = 1;
    g_assert_cmpint(write(fd, &one, 8), ==, 8);
}

/* Wait for an eventfd with a bound: a lost notification fails the test. */
static bool tt_wait(struct tt *t, int fd, const char *what)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;
    do {
        r = poll(&p, 1, TT_WAIT_MS);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) {
        tt_fail(t, "no %s within %d ms (lost notification?)", what, TT_WAIT_MS);
        return false;
    }
    uint64_t v;
    (void)!read(fd, &v, 8);
    return true;
}

static uint8_t pat(uint32_t seq, unsigned i) { return (uint8_t)(seq * 31 + i * 7 + 1); }
static uint32_t out_len(uint32_t seq) { return 8 + seq % 41; }
static uint32_t in_len(uint32_t seq) { return 8 + (seq * 13) % 53; }

static gpointer tt_device(gpointer opaque)
{
    struct tt *t = opaque;
    uint32_t expect = 0;
    vp_vring_dev_set_notify(&t->dev, false);
    while (expect < TT_TOTAL && !tt_failed(t)) {
        uint16_t heads[TT_BATCH];
        uint32_t lens[TT_BATCH];
        unsigned nb = 0;
        int r = 0;
        while (nb < TT_BATCH) {
            struct vp_vring_seg s[4];
            unsigned n;
            uint16_t h;
            r = vp_vring_dev_pop(&t->dev, s, 4, &n, &h);
            if (r <= 0)
                break;
            /* Translate and check, as a real device would. */
            if (n != 2 || s[0].write || !s[1].write || s[0].len > 64 || s[1].len < 64 ||
                !vp_range_ok(s[0].addr, s[0].len, sizeof(t->pool)) ||
                !vp_range_ok(s[1].addr, 64, sizeof(t->pool))) {
                tt_fail(t, "device: bad chain shape at seq %u", expect);
                return NULL;
            }
            const unsigned char *o = t->pool + s[0].addr;
            unsigned char *in = t->pool + s[1].addr;
            uint32_t seq = vp_get_le32(o);
            if (seq != expect || s[0].len != out_len(seq)) {
                tt_fail(t, "device: got seq %u len %u, want seq %u len %u", seq, s[0].len,
                        expect, out_len(expect));
                return NULL;
            }
            for (unsigned i = 8; i < s[0].len; i++) {
                if (o[i] != pat(seq, i)) {
                    tt_fail(t, "device: seq %u payload byte %u corrupt", seq, i);
                    return NULL;
                }
            }
            vp_put_le32(in, ~seq);
            for (unsigned i = 8; i < in_len(seq); i++)
                in[i] = pat(~seq, i);
            heads[nb] = h;
            lens[nb] = in_len(seq);
            nb++;
            expect++;
        }
        if (r < 0) {
            tt_fail(t, "device: pop: %s", t->dev.why);
            return NULL;
        }
        if (nb) {
            /* Complete in reverse order: exercises the driver's free list. */
            for (unsigned k = nb; k-- > 0;) {
                uint16_t before = t->dev.used_idx;
                if (vp_vring_dev_push(&t->dev, heads[k], lens[k]) < 0) {
                    tt_fail(t, "device: push: %s", t->dev.why);
                    return NULL;
                }
                if (t->dev.used_idx < before)
                    t->used_wraps++;
                if (t->publish_every && vp_vring_dev_unpublished(&t->dev) >= t->publish_every)
                    vp_vring_dev_flush(&t->dev);
            }
            vp_vring_dev_flush(&t->dev);
            if (vp_vring_dev_need_notify(&t->dev)) {
                t->calls++;
                tt_signal(t->call_fd);
            }
            continue;
        }
        /* Empty: ask for a kick, re-check, sleep. */
        if (vp_vring_dev_set_notify(&t->dev, true)) {
            vp_vring_dev_set_notify(&t->dev, false);
            continue;
        }
        t->dev_waits++;
        if (!tt_wait(t, t->kick_fd, "kick"))
            return NULL;
        vp_vring_dev_set_notify(&t->dev, false);
    }
    return NULL;
}

static gpointer tt_driver(gpointer opaque)
{
    struct tt *t = opaque;
    uint32_t sent = 0, done = 0;
    int free_slots[TT_SLOTS], nfree = 0;
    for (int i = TT_SLOTS - 1; i >= 0; i--)
        free_slots[nfree++] = i;
    vp_vring_drv_set_notify(&t->drv, false);

    while (done < TT_TOTAL && !tt_failed(t)) {
        bool progress = false;
        while (sent < TT_TOTAL && nfree > 0 && vp_vring_drv_num_free(&t->drv) >= 2) {
            int slot = free_slots[--nfree];
            unsigned char *o = t->pool + slot * TT_SLOT_BYTES;
            vp_put_le32(o, sent);
            memset(o + 4, 0, 4);
            for (unsigned i = 8; i < out_len(sent); i++)
                o[i] = pat(sent, i);
            memset(o + 64, 0, 64);
            t->slot_seq[slot] = sent;
            struct vp_vring_seg s[2] = {
                { (uint64_t)slot * TT_SLOT_BYTES, out_len(sent), false },
                { (uint64_t)slot * TT_SLOT_BYTES + 64, 64, true },
            };
            uint16_t before = t->drv.avail_idx;
            int r = vp_vring_drv_add(&t->drv, s, 1, 1, (void *)(intptr_t)(slot + 1));
            if (r < 0) {
                tt_fail(t, "driver: add: %d %s", r, t->drv.why);
                return NULL;
            }
            if (t->drv.avail_idx < before)
                t->avail_wraps++;
            sent++;
            progress = true;
        }
        if (vp_vring_drv_kick_prepare(&t->drv)) {
            t->kicks++;
            tt_signal(t->kick_fd);
        }
        void *tok;
        uint32_t len;
        int r;
        while ((r = vp_vring_drv_get_used(&t->drv, &tok, &len)) == 1) {
            int slot = (int)(intptr_t)tok - 1;
            if (slot < 0 || slot >= TT_SLOTS) {
                tt_fail(t, "driver: bad token");
                return NULL;
            }
            uint32_t seq = t->slot_seq[slot];
            const unsigned char *in = t->pool + slot * TT_SLOT_BYTES + 64;
            if (len != in_len(seq) || vp_get_le32(in) != ~seq) {
                tt_fail(t, "driver: reply for seq %u: len %u word %#x", seq, len,
                        vp_get_le32(in));
                return NULL;
            }
            for (unsigned i = 8; i < len; i++) {
                if (in[i] != pat(~seq, i)) {
                    tt_fail(t, "driver: seq %u reply byte %u corrupt", seq, i);
                    return NULL;
                }
            }
            free_slots[nfree++] = slot;
            done++;
            progress = true;
        }
        if (r < 0) {
            tt_fail(t, "driver: get_used: %s", t->drv.why);
            return NULL;
        }
        if (progress || done == TT_TOTAL)
            continue;
        /* Nothing to do: ask for an interrupt, re-check, sleep. */
        if (vp_vring_drv_set_notify(&t->drv, true)) {
            vp_vring_drv_set_notify(&t->drv, false);
            continue;
        }
        t->drv_waits++;
        if (!tt_wait(t, t->call_fd, "interrupt"))
            return NULL;
        vp_vring_drv_set_notify(&t->drv, false);
    }
    return NULL;
}

static void run_two_threads(bool event_idx, unsigned publish_every)
{
    int fds_before = vp_count_open_fds();
    struct tt *t = g_new0(struct tt, 1);
    ring_alloc(&t->r, TT_NUM);
    g_assert_cmpint(vp_vring_drv_init(&t->drv, &t->r.m, event_idx), ==, 0);
    g_assert_cmpint(vp_vring_dev_init(&t->dev, &t->r.m, event_idx, 0), ==, 0);
    t->publish_every = publish_every;
    t->kick_fd = eventfd(0, EFD_CLOEXEC);
    t->call_fd = eventfd(0, EFD_CLOEXEC);
    g_assert_cmpint(t->kick_fd, >=, 0);
    g_assert_cmpint(t->call_fd, >=, 0);

    GThread *dev = g_thread_new("device", tt_device, t);
    GThread *drv = g_thread_new("driver", tt_driver, t);
    g_thread_join(drv);
    g_thread_join(dev);
    if (t->failed)
        g_error("two-thread run failed: %s", t->fail_msg);
    g_test_message("%s: %u buffers, %u kicks, %u interrupts, device slept %u, driver slept %u",
                   event_idx ? "event idx" : "flags", TT_TOTAL, t->kicks, t->calls,
                   t->dev_waits, t->drv_waits);
    /* Every buffer went through, both 16-bit indexes wrapped TT_TOTAL / 65536 times. */
    g_assert_cmpuint(t->drv.avail_idx, ==, (uint16_t)TT_TOTAL);
    g_assert_cmpuint(t->drv.last_used_idx, ==, (uint16_t)TT_TOTAL);
    g_assert_cmpuint(t->dev.last_avail_idx, ==, (uint16_t)TT_TOTAL);
    g_assert_cmpuint(t->dev.used_idx, ==, (uint16_t)TT_TOTAL);
    g_assert_cmpuint(vp_get_le16(avail_idx_p(&t->r)), ==, (uint16_t)TT_TOTAL);
    g_assert_cmpuint(vp_get_le16(used_idx_p(&t->r)), ==, (uint16_t)TT_TOTAL);
    g_assert_cmpuint(t->avail_wraps, ==, TT_TOTAL / 65536);
    g_assert_cmpuint(t->used_wraps, ==, TT_TOTAL / 65536);
    g_assert_cmpuint(t->avail_wraps, >=, 3);
    g_assert_cmpuint(vp_vring_drv_num_free(&t->drv), ==, TT_NUM);
    g_assert_false(t->drv.broken);
    g_assert_false(t->dev.broken);
    /* Suppression did something: far fewer notifications than buffers. */
    g_assert_cmpuint(t->kicks, <, TT_TOTAL);
    g_assert_cmpuint(t->calls, <, TT_TOTAL);

    vp_close_fd(&t->kick_fd);
    vp_close_fd(&t->call_fd);
    vp_vring_drv_destroy(&t->drv);
    ring_free(&t->r);
    g_free(t);
    vp_assert_fds(fds_before);
}

static void test_two_threads_event_idx(void) { run_two_threads(true, 0); }
static void test_two_threads_flags(void) { run_two_threads(false, 0); }
/* Used entries also published in the middle of each batch, every 4 (replies are
 * checked byte by byte: a reply published before its bytes would show). */
static void test_two_threads_publish_every(void) { run_two_threads(true, 4); }

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/vring/need_event", test_need_event);
    g_test_add_func("/vring/init_errors", test_init_errors);
    g_test_add_func("/vring/basic", test_basic);
    g_test_add_func("/vring/chains", test_chains);
    g_test_add_func("/vring/wrap_resume", test_wrap_resume);
    g_test_add_func("/vring/notify_event_idx", test_notify_event_idx);
    g_test_add_func("/vring/notify_flags", test_notify_flags);
    g_test_add_func("/vring/dev_malformed", test_dev_malformed);
    g_test_add_func("/vring/dev_break_and_push", test_dev_break_and_push);
    g_test_add_func("/vring/dev_batch_hostile_ahead", test_dev_batch_hostile_ahead);
    g_test_add_func("/vring/dev_publish_early", test_dev_publish_early);
    g_test_add_func("/vring/drv_malformed", test_drv_malformed);
    g_test_add_func("/vring/drv_shadows", test_drv_shadows);
    g_test_add_func("/vring/two_threads_event_idx", test_two_threads_event_idx);
    g_test_add_func("/vring/two_threads_flags", test_two_threads_flags);
    g_test_add_func("/vring/two_threads_publish_every", test_two_threads_publish_every);
    return g_test_run();
}
