/*
 * itest_fakegd.c - a pretend vhost-pci-guestd in a thread (itest_fakegd.h).
 *
 * Security model: the peer is the vhost-pci-server under test. Local bus messages
 * are parsed by vp_lb_recv() and controlq messages by vp_cq_decode(); message
 * lengths are clamped to a buffer slot before they are copied out of the control
 * area, the ring layout goes through vp_vring_drv_init(). Anything unexpected ends
 * the thread with a reason in failure (the test then fails), never an abort.
 */
#include "itest_fakegd.h"

#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vp_common.h"
#include "vp_controlq.h"
#include "vp_ctrlarea.h"
#include "vp_localbus.h"
#include "vp_vring.h"
#include "vp_wire.h"

typedef struct {
    guint8 *ca;
    gsize ca_size;
    int fds[4];            /* control area, rx kick, tx kick, irq */
    struct vp_vring_drv rx, tx;
    guint64 buf_off;
    unsigned ntx, nrx;     /* slots: tx [0, ntx), rx [ntx, ntx + nrx) */
    gboolean rx_busy[VP_CA_QUEUE_NUM];
    gboolean ready;
} FakeDev;

static gboolean fg_fail(ITestFakeGd *fg, const char *what)
{
    g_strlcpy(fg->failure, what, sizeof(fg->failure));
    return FALSE;
}

static void fg_kick(int efd)
{
    guint64 one = 1;
    g_assert_cmpint(write(efd, &one, 8), ==, 8);
}

static gboolean fg_plug_control(ITestFakeGd *fg, FakeDev *d, const struct vp_lb_msg *m,
                                int *fds)
{
    memcpy(d->fds, fds, sizeof(d->fds));
    d->ca_size = m->size;
    d->ca = mmap(NULL, d->ca_size, PROT_READ | PROT_WRITE, MAP_SHARED, d->fds[0], 0);
    if (d->ca == MAP_FAILED)
        return fg_fail(fg, "mmap control area");
    if (memcmp(d->ca + VP_CA_OFF_MAGIC, VP_CA_MAGIC, 8) != 0)
        return fg_fail(fg, "control area magic");
    vp_put_le32(d->ca + VP_CA_OFF_STATUS, VP_STATUS_ACKNOWLEDGE | VP_STATUS_DRIVER);
    vp_put_le32(d->ca + VP_CA_OFF_STATUS,
                VP_STATUS_ACKNOWLEDGE | VP_STATUS_DRIVER | VP_STATUS_FEATURES_OK);
    struct vp_vring_drv *qs[2] = { &d->rx, &d->tx };
    for (int q = 0; q < 2; q++) {
        const guint8 *e = d->ca + VP_CA_OFF_QUEUE + q * VP_CA_QUEUE_SIZE;
        struct vp_vring_mem mem = {
            .desc = d->ca + vp_get_le64(e + VP_CA_Q_DESC_OFF),
            .avail = d->ca + vp_get_le64(e + VP_CA_Q_AVAIL_OFF),
            .used = d->ca + vp_get_le64(e + VP_CA_Q_USED_OFF),
            .num = vp_get_le16(e + VP_CA_Q_SIZE),
        };
        if (vp_vring_drv_init(qs[q], &mem, true) < 0)
            return fg_fail(fg, "vring init");
    }
    d->buf_off = vp_get_le64(d->ca + VP_CA_OFF_BUF_OFF);
    guint64 slots = vp_get_le64(d->ca + VP_CA_OFF_BUF_SIZE) / VP_CA_BUF_SLOT;
    d->ntx = MIN(d->tx.mem.num, VP_CA_QUEUE_NUM);
    if (slots <= d->ntx)
        return fg_fail(fg, "buffer pool too small for both queues");
    d->nrx = MIN((guint64)VP_CA_QUEUE_NUM, slots - d->ntx);
    for (unsigned i = 0; i < d->ntx; i++) {
        struct vp_vring_seg seg = { .addr = d->buf_off + (guint64)i * VP_CA_BUF_SLOT,
                                    .len = VP_CA_BUF_SLOT, .write = true };
        if (vp_vring_drv_add(&d->tx, &seg, 0, 1, GUINT_TO_POINTER(i + 1)) < 0)
            return fg_fail(fg, "post transmitq buffer");
    }
    vp_vring_drv_kick_prepare(&d->tx);
    vp_put_le32(d->ca + VP_CA_OFF_STATUS, VP_STATUS_ACKNOWLEDGE | VP_STATUS_DRIVER |
                                              VP_STATUS_FEATURES_OK | VP_STATUS_DRIVER_OK);
    fg_kick(d->fds[1]);
    d->ready = TRUE;
    return TRUE;
}

/* Put @len bytes at @msg in a free receiveq buffer, add it to the receiveq and kick. */
static gboolean fg_put(ITestFakeGd *fg, FakeDev *d, const void *msg, size_t len)
{
    void *tok;
    guint32 ulen;
    while (vp_vring_drv_get_used(&d->rx, &tok, &ulen) == 1)
        d->rx_busy[GPOINTER_TO_UINT(tok) - 1] = FALSE;
    unsigned slot = 0;
    while (slot < d->nrx && d->rx_busy[slot])
        slot++;
    if (slot == d->nrx)
        return fg_fail(fg, "no free receiveq buffer");
    guint64 off = d->buf_off + (guint64)(d->ntx + slot) * VP_CA_BUF_SLOT;
    memcpy(d->ca + off, msg, len);
    struct vp_vring_seg seg = { .addr = off, .len = (guint32)len };
    if (vp_vring_drv_add(&d->rx, &seg, 1, 0, GUINT_TO_POINTER(slot + 1)) < 0)
        return fg_fail(fg, "add to receiveq");
    d->rx_busy[slot] = TRUE;
    vp_vring_drv_kick_prepare(&d->rx);
    fg_kick(d->fds[1]);
    return TRUE;
}

/* Put one encoded ACK on the receiveq and kick. */
static gboolean fg_send_ack(ITestFakeGd *fg, FakeDev *d, const struct vp_cq_msg *ack)
{
    guint8 out[VP_CA_BUF_SLOT];
    int n = vp_cq_encode(ack, out, sizeof(out));
    if (n <= 0)
        return fg_fail(fg, "encode ACK");
    return fg_put(fg, d, out, (size_t)n);
}

/* The garbage hook, then answer every message the server put on the transmitq. */
static gboolean fg_service(ITestFakeGd *fg, FakeDev *d)
{
    void *tok;
    guint32 len;
    int ret;
    if (g_atomic_int_get(&fg->garbage) && !g_atomic_int_get(&fg->garbage_sent)) {
        guint8 junk[64];
        memset(junk, 0xa5, sizeof(junk));
        if (!fg_put(fg, d, junk, sizeof(junk)))
            return FALSE;
        g_atomic_int_set(&fg->garbage_sent, 1);
    }
    while ((ret = vp_vring_drv_get_used(&d->tx, &tok, &len)) == 1) {
        unsigned slot = GPOINTER_TO_UINT(tok) - 1;
        guint8 buf[VP_CA_BUF_SLOT];
        len = MIN(len, VP_CA_BUF_SLOT);
        memcpy(buf, d->ca + d->buf_off + (guint64)slot * VP_CA_BUF_SLOT, len);
        struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1), *ack = g_new0(struct vp_cq_msg, 1);
        vp_error err = { { 0 } };
        if (vp_cq_decode(buf, len, m, &err) < 0) {
            g_free(m);
            g_free(ack);
            return fg_fail(fg, err.msg);
        }
        g_atomic_int_inc(&fg->messages);
        if (fg->bogus && !g_atomic_int_get(&fg->bogus_sent)) {
            struct vp_cq_msg fake = *m;
            fake.seq = m->seq + 1000;
            vp_cq_make_ack(ack, &fake, VP_ACK_ADD_DONE, NULL);
            if (!fg_send_ack(fg, d, ack)) {
                g_free(m);
                g_free(ack);
                return FALSE;
            }
            g_atomic_int_set(&fg->bogus_sent, 1);
        }
        guint64 result = m->type == VP_MSG_MEMORY_INFO ? (m->u.mem.op == VP_OP_ADD ? VP_ACK_ADD_DONE : VP_ACK_DEL_DONE)
                       : m->type == VP_MSG_DEVICE_INFO ? (m->u.dev.op == VP_OP_ADD ? VP_ACK_ADD_DONE : VP_ACK_DEL_DONE)
                       : VP_ACK_ADD_DONE;
        vp_cq_make_ack(ack, m, result, NULL);
        if (m->type == VP_MSG_FEATURE_BITS)
            ack->u.ack.features = m->u.features & VP_NET_FEATURES;
        gboolean ok = fg_send_ack(fg, d, ack);
        g_free(m);
        g_free(ack);
        if (!ok)
            return FALSE;
        g_atomic_int_inc(&fg->acks);
        /* Give the buffer back. */
        struct vp_vring_seg seg = { .addr = d->buf_off + (guint64)slot * VP_CA_BUF_SLOT,
                                    .len = VP_CA_BUF_SLOT, .write = true };
        if (vp_vring_drv_add(&d->tx, &seg, 0, 1, GUINT_TO_POINTER(slot + 1)) < 0)
            return fg_fail(fg, "repost transmitq buffer");
        vp_vring_drv_kick_prepare(&d->tx);
        fg_kick(d->fds[2]);
    }
    if (ret < 0)
        return fg_fail(fg, "transmitq broken");
    return TRUE;
}

static gpointer fake_guestd(gpointer data)
{
    ITestFakeGd *fg = data;
    FakeDev d = { .fds = { -1, -1, -1, -1 } };
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, fg->path, sizeof(sa.sun_path));
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        fg_fail(fg, "connect to the local bus");
        goto out;
    }
    struct vp_lb_msg hello = { .type = VP_LB_HELLO };
    if (vp_lb_send(s, &hello, NULL, 0) < 0) {
        fg_fail(fg, "send HELLO");
        goto out;
    }
    while (!g_atomic_int_get(&fg->stop)) {
        struct pollfd p = { .fd = s, .events = POLLIN };
        if (poll(&p, 1, 2) > 0) {
            struct vp_lb_msg m;
            int fds[VP_LB_MAX_FDS];
            unsigned nfds = 0;
            vp_error err = { { 0 } };
            if (vp_lb_recv(s, &m, fds, VP_LB_MAX_FDS, &nfds, &err) < 0) {
                if (!g_atomic_int_get(&fg->stop))
                    fg_fail(fg, err.msg);
                break;
            }
            if (m.type == VP_LB_PLUG_CONTROL && !d.ready && nfds == 4) {
                if (!fg_plug_control(fg, &d, &m, fds))
                    break;
                nfds = 0; /* kept */
            } else if (fg->eject &&
                       (m.type == VP_LB_UNPLUG_WINDOW || m.type == VP_LB_UNPLUG_CONTROL)) {
                struct vp_lb_msg ej = { .type = VP_LB_EJECTED, .slot = m.slot,
                                        .devfn = m.type == VP_LB_UNPLUG_CONTROL
                                                     ? VP_LB_CONTROL_DEVFN : m.devfn };
                vp_lb_send(s, &ej, NULL, 0);
            }
            vp_close_fds(fds, nfds);
        }
        if (d.ready && !fg_service(fg, &d))
            break;
    }
out:
    if (d.ready) {
        vp_vring_drv_destroy(&d.rx);
        vp_vring_drv_destroy(&d.tx);
    }
    if (d.ca && d.ca != MAP_FAILED)
        munmap(d.ca, d.ca_size);
    vp_close_fds(d.fds, 4);
    vp_close_fd(&s);
    return NULL;
}

void itest_fakegd_start(ITestFakeGd *fg, const char *name)
{
    fg->thread = g_thread_new(name, fake_guestd, fg);
}

void itest_fakegd_check(ITestFakeGd *fg)
{
    if (fg->failure[0])
        g_error("fake guestd: %s", fg->failure);
}

void itest_fakegd_stop(ITestFakeGd *fg)
{
    g_atomic_int_set(&fg->stop, 1);
    g_thread_join(fg->thread);
    fg->thread = NULL;
    itest_fakegd_check(fg);
}
