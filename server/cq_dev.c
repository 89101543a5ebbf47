/*
 * cq_dev.c - the device side of the controlq (cq_dev.h; security model there).
 */
#define G_LOG_DOMAIN "vp-server"
#include "cq_dev.h"

#include <errno.h>
#include <inttypes.h>
#include <unistd.h>

#include "vp_proto.h"

G_STATIC_ASSERT(VP_CA_BUF_SLOT >= VP_CQ_MAX_MSG);

/* One outgoing controlq message and its completion. */
struct srv_cq_op {
    uint64_t seq;
    uint16_t type, op;                   /* request type and op (ACK matching) */
    uint32_t device_type;
    uint64_t device_id;
    uint8_t buf[VP_CQ_MAX_MSG];
    size_t len;
    srv_cq_done_fn done;
    void *opaque;
    bool replay;                         /* part of a state replay after a driver reset */
};

void srv_cq_init(struct srv_cq *cq, const char *name, struct srv_ctrlarea *ca, int irq_fd,
                 const struct srv_cq_hooks *hooks, void *opaque, uint64_t *bad_messages)
{
    memset(cq, 0, sizeof(*cq));
    cq->name = name;
    cq->ca = ca;
    cq->irq_fd = irq_fd;
    cq->hooks = hooks;
    cq->opaque = opaque;
    cq->bad_messages = bad_messages;
    g_queue_init(&cq->out);
    cq->pending = g_hash_table_new(g_int64_hash, g_int64_equal);
}

void srv_cq_irq(struct srv_cq *cq)
{
    uint64_t one = 1;
    if (cq->irq_fd >= 0 && write(cq->irq_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        g_warning("device %s: controlq interrupt: %s", cq->name, g_strerror(errno));
}

/* Fail every op (queued or sent) with @why. */
static void fail_ops(struct srv_cq *cq, const char *why)
{
    GList *all = NULL;
    struct srv_cq_op *op;
    while ((op = g_queue_pop_head(&cq->out)))
        all = g_list_prepend(all, op);
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, cq->pending);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        all = g_list_prepend(all, v);
        g_hash_table_iter_remove(&it);
    }
    all = g_list_reverse(all);
    for (GList *l = all; l; l = l->next) {
        op = l->data;
        op->done(op->opaque, NULL, why);
        g_free(op);
    }
    g_list_free(all);
}

void srv_cq_close(struct srv_cq *cq, const char *why)
{
    if (cq->closed)
        return;
    cq->closed = true;
    fail_ops(cq, why);
}

void srv_cq_destroy(struct srv_cq *cq)
{
    g_queue_clear_full(&cq->out, g_free);
    if (cq->pending)
        g_hash_table_destroy(cq->pending);
    cq->pending = NULL;
}

void srv_cq_break(struct srv_cq *cq, const char *fmt, ...)
{
    if (cq->closed)
        return;
    va_list ap;
    va_start(ap, fmt);
    bool now = vp_vbreak(&cq->broken, cq->broken_reason, sizeof(cq->broken_reason), fmt, ap);
    va_end(ap);
    if (!now)
        return;
    g_warning("device %s: NEEDS_RESET: %s", cq->name, cq->broken_reason);
    cq->status |= VP_STATUS_NEEDS_RESET;
    if (cq->ca->map) {
        vp_put_le32(cq->ca->map + VP_CA_OFF_STATUS, cq->status);
        srv_cq_irq(cq);
    }
    char why[320];
    g_snprintf(why, sizeof(why), "vhost-pci device needs reset: %s", cq->broken_reason);
    fail_ops(cq, why);
}

static void bad_ack(struct srv_cq *cq, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void bad_ack(struct srv_cq *cq, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    cq->counters.bad_acks++;
    if (cq->bad_messages)
        (*cq->bad_messages)++;
    g_warning("device %s: ignoring controlq message: %s", cq->name, why);
}

/* An ACK from the guest driver: matched by seq to an outstanding message, checked
 * against the protocol table (the type that answers it, a result its op allows). */
static void handle_ack(struct srv_cq *cq, const struct vp_cq_msg *m)
{
    if (!vp_proto_sender(m->type, VP_LEG_CONTROLQ, VP_FROM_DRIVER)) {
        bad_ack(cq, "%s seq %" PRIu64 " on the receiveq is not an ACK",
                vp_msg_type_name(m->type), m->seq);
        return;
    }
    uint64_t seq = m->seq;
    struct srv_cq_op *op = g_hash_table_lookup(cq->pending, &seq);
    if (!op) {
        bad_ack(cq, "%s seq %" PRIu64 " matches no outstanding message",
                vp_msg_type_name(m->type), seq);
        return;
    }
    if ((int)m->type != vp_proto_reply_type(op->type)) {
        bad_ack(cq, "%s seq %" PRIu64 " does not answer %s", vp_msg_type_name(m->type), seq,
                vp_msg_type_name(op->type));
        return;
    }
    if (!vp_proto_result_fits(op->type, op->op, m->u.ack.result)) {
        bad_ack(cq, "%s seq %" PRIu64 " result %s does not answer op %s",
                vp_msg_type_name(m->type), seq, vp_ack_result_name(m->u.ack.result),
                op->op == VP_OP_ADD ? "ADD" : "DEL");
        return;
    }
    if (op->type == VP_MSG_DEVICE_INFO &&
        (m->device_id != op->device_id || m->device_type != op->device_type)) {
        bad_ack(cq, "%s seq %" PRIu64 " names device %s %" PRIu64 ", not %s %" PRIu64,
                vp_msg_type_name(m->type), seq, vp_device_type_name(m->device_type),
                m->device_id, vp_device_type_name(op->device_type), op->device_id);
        return;
    }
    g_hash_table_remove(cq->pending, &seq);
    bool fail = !vp_proto_result_done(op->type, op->op, m->u.ack.result);
    if (fail)
        cq->counters.acks_fail++;
    else
        cq->counters.acks_ok++;
    g_debug("device %s: controlq %s seq %" PRIu64 " %s%s%s", cq->name,
            vp_msg_type_name(m->type), seq,
            op->type == VP_MSG_FEATURE_BITS ? "" : vp_ack_result_name(m->u.ack.result),
            fail ? ": " : "", fail ? m->u.ack.reason : "");
    op->done(op->opaque, m, NULL);
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
 * to the new one, after the state replay (the driver_ok hook), in their original
 * order, so every client request still gets exactly one answer and sees the effect it
 * asked for: the replay is built from the server's table, which already holds the
 * effect of an ADD in flight (an identical region or frontend again is harmless to
 * the driver) and not yet that of a DEL or FEATURE_BITS in flight (sent again, it is
 * applied on top). Failing them instead would roll back table entries the replay has
 * just handed to the new driver. */
static void driver_reset(struct srv_cq *cq, const char *why)
{
    unsigned resend = g_hash_table_size(cq->pending);
    bool had_state = cq->driver_ok || cq->broken || cq->replay_due;
    if (cq->driver_ok || cq->broken)
        cq->counters.resets++;  /* one per driver that went away (not per signal of it) */
    g_message("device %s: guest driver reset the device (%s)%s; %u unanswered controlq "
              "message(s) go to the next driver", cq->name, why,
              cq->broken ? ", leaving NEEDS_RESET" : "", resend + g_queue_get_length(&cq->out));
    cq->driver_ok = false;
    cq->broken = false;
    cq->broken_reason[0] = 0;
    cq->replay_due = had_state;
    /* Sent but unanswered ones first (they went out before the queued ones). */
    GList *sent = g_hash_table_get_values(cq->pending);
    g_hash_table_steal_all(cq->pending);
    sent = g_list_sort(sent, op_seq_cmp);
    for (GList *l = g_list_last(sent); l; l = l->prev)
        g_queue_push_head(&cq->out, l->data);
    g_list_free(sent);
    /* A replay the old driver did not finish is superseded by the next one (so a
     * driver that keeps resetting cannot make the queue grow). */
    GList *stale = NULL;
    for (GList *l = cq->out.head; l; l = l->next)
        if (((struct srv_cq_op *)l->data)->replay)
            stale = g_list_prepend(stale, l->data);
    for (GList *l = stale; l; l = l->next) {
        struct srv_cq_op *op = l->data;
        g_queue_remove(&cq->out, op);
        op->done(op->opaque, NULL, "superseded by the replay after the next reset");
        g_free(op);
    }
    g_list_free(stale);
}

static void attach_rings(struct srv_cq *cq)
{
    struct vp_vring_mem m0, m1;
    srv_ca_ring(cq->ca, VP_CQ_RECEIVEQ, &m0);
    srv_ca_ring(cq->ca, VP_CQ_TRANSMITQ, &m1);
    if (vp_vring_dev_init(&cq->rxq, &m0, true, 0) || vp_vring_dev_init(&cq->txq, &m1, true, 0)) {
        srv_cq_break(cq, "cannot attach the controlq rings");
        return;
    }
    cq->driver_ok = true;
    vp_vring_dev_set_notify(&cq->rxq, true);
    vp_vring_dev_set_notify(&cq->txq, true);
    g_info("device %s: guest driver is DRIVER_OK (status 0x%x)", cq->name, cq->status);
    bool replay = cq->replay_due;
    GQueue held = G_QUEUE_INIT;
    if (replay) {
        /* After a reset: the state replay goes ahead of the messages held back. */
        cq->replay_due = false;
        struct srv_cq_op *op;
        while ((op = g_queue_pop_head(&cq->out)))
            g_queue_push_tail(&held, op);
        cq->replaying = true;
    }
    cq->hooks->driver_ok(cq->opaque, replay);
    if (replay) {
        cq->replaying = false;
        struct srv_cq_op *op;
        while ((op = g_queue_pop_head(&held)))
            g_queue_push_tail(&cq->out, op);
        g_message("device %s: new guest driver is DRIVER_OK: device state replayed on the "
                  "controlq", cq->name);
    }
}

static void read_status(struct srv_cq *cq)
{
    uint8_t *ca = cq->ca->map;
    uint32_t req = vp_get_le32(ca + VP_CA_OFF_RESET_REQ);  /* read once */
    if (req != cq->reset_seen) {
        driver_reset(cq, "it asked for a reset");
        cq->reset_seen = req;
        /* Stop touching the old rings before saying so. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        vp_put_le32(ca + VP_CA_OFF_RESET_DONE, req);
        srv_cq_irq(cq);
    }
    /* Read after the reset answer: the driver may have gone on meanwhile. */
    uint32_t st = vp_get_le32(ca + VP_CA_OFF_STATUS);  /* read once */
    if (st != cq->status)
        g_debug("device %s: device_status 0x%x", cq->name, st);
    cq->status = st;
    if (cq->broken) {
        if (st & (VP_STATUS_NEEDS_RESET | VP_STATUS_FAILED))
            return;  /* still broken: the driver has not reset it */
        /* The driver wrote over our NEEDS_RESET: it is starting afresh. */
        char why[64];
        g_snprintf(why, sizeof(why), "status 0x%x after NEEDS_RESET", st);
        driver_reset(cq, why);
    }
    if (st & VP_STATUS_FAILED) {
        srv_cq_break(cq, "guest driver set FAILED (status 0x%x)", st);
        return;
    }
    if (!cq->driver_ok) {
        if (st & VP_STATUS_NEEDS_RESET)
            srv_cq_break(cq, "guest driver set NEEDS_RESET (status 0x%x)", st);
        else if (st & VP_STATUS_DRIVER_OK) {
            if (!(st & VP_STATUS_FEATURES_OK))
                g_warning("device %s: DRIVER_OK without FEATURES_OK (status 0x%x)",
                          cq->name, st);
            attach_rings(cq);
        }
    } else if (!(st & VP_STATUS_DRIVER_OK)) {
        char why[64];
        g_snprintf(why, sizeof(why), "status 0x%x without DRIVER_OK", st);
        driver_reset(cq, why);
    } else if (st & VP_STATUS_NEEDS_RESET) {
        srv_cq_break(cq, "guest driver set NEEDS_RESET (status 0x%x)", st);
    }
}

static bool can_run(const struct srv_cq *cq)
{
    return !cq->closed && !cq->broken && cq->driver_ok;
}

/* The next chain of @vq (@what names it for a break): 1 with @segs (16 entries) filled,
 * 0 when the ring is empty (notifications re-enabled, re-checked), -1 after breaking
 * the device. */
static int pop_chain(struct srv_cq *cq, struct vp_vring_dev *vq, const char *what,
                     struct vp_vring_seg *segs, unsigned *nsegs, uint16_t *head)
{
    for (;;) {
        int r = vp_vring_dev_pop(vq, segs, 16, nsegs, head);
        if (r < 0) {
            srv_cq_break(cq, "control %s broken: %s", what, vq->why);
            return -1;
        }
        if (r > 0 || !vp_vring_dev_set_notify(vq, true))
            return r;
    }
}

static void service_rx(struct srv_cq *cq)
{
    while (can_run(cq)) {
        struct vp_vring_seg segs[16];
        unsigned nsegs = 0;
        uint16_t head = 0;
        if (pop_chain(cq, &cq->rxq, "receiveq", segs, &nsegs, &head) <= 0)
            return;
        uint8_t buf[VP_CA_BUF_SLOT];
        size_t len = 0;
        for (unsigned i = 0; i < nsegs; i++) {
            if (segs[i].write)
                continue;  /* an ACK buffer has nothing for the device to write */
            if (!srv_ca_in_pool(segs[i].addr, segs[i].len)) {
                srv_cq_break(cq, "receiveq descriptor 0x%" PRIx64 "+%u is outside the "
                             "buffer pool", segs[i].addr, segs[i].len);
                return;
            }
            if (segs[i].len > sizeof(buf) - len) {
                srv_cq_break(cq, "receiveq message larger than %zu bytes", sizeof(buf));
                return;
            }
            memcpy(buf + len, cq->ca->map + segs[i].addr, segs[i].len);  /* copied once */
            len += segs[i].len;
        }
        if (vp_vring_dev_push(&cq->rxq, head, 0) < 0) {
            srv_cq_break(cq, "control receiveq broken: %s", cq->rxq.why);
            return;
        }
        vp_vring_dev_flush(&cq->rxq);
        if (vp_vring_dev_need_notify(&cq->rxq))
            srv_cq_irq(cq);
        cq->counters.rx++;
        struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
        vp_error err = { "" };
        if (vp_cq_decode(buf, len, m, &err) < 0) {
            g_free(m);
            srv_cq_break(cq, "malformed controlq message from the guest driver: %s", err.msg);
            return;
        }
        handle_ack(cq, m);
        g_free(m);
    }
}

/* Copy @op into the chain @segs[0..nsegs) of the transmitq. False after breaking the
 * device (a bad or too small buffer). */
static bool fill_chain(struct srv_cq *cq, const struct srv_cq_op *op,
                       const struct vp_vring_seg *segs, unsigned nsegs)
{
    size_t off = 0;
    for (unsigned i = 0; i < nsegs && off < op->len; i++) {
        if (!segs[i].write) {
            srv_cq_break(cq, "transmitq buffer is not device-writable");
            return false;
        }
        if (!srv_ca_in_pool(segs[i].addr, segs[i].len)) {
            srv_cq_break(cq, "transmitq descriptor 0x%" PRIx64 "+%u is outside the buffer "
                         "pool", segs[i].addr, segs[i].len);
            return false;
        }
        size_t n = MIN((size_t)segs[i].len, op->len - off);
        memcpy(cq->ca->map + segs[i].addr, op->buf + off, n);
        off += n;
    }
    if (off < op->len) {
        srv_cq_break(cq, "transmitq buffer too small for a %zu-byte message", op->len);
        return false;
    }
    return true;
}

static void service_tx(struct srv_cq *cq)
{
    bool sent = false;
    while (!g_queue_is_empty(&cq->out) && can_run(cq)) {
        struct vp_vring_seg segs[16];
        unsigned nsegs = 0;
        uint16_t head = 0;
        int r = pop_chain(cq, &cq->txq, "transmitq", segs, &nsegs, &head);
        if (r == 0)
            g_debug("device %s: waiting for transmitq buffers", cq->name);
        if (r <= 0)
            break;
        struct srv_cq_op *op = g_queue_peek_head(&cq->out);
        if (!fill_chain(cq, op, segs, nsegs))
            break;
        if (vp_vring_dev_push(&cq->txq, head, (uint32_t)op->len) < 0) {
            srv_cq_break(cq, "control transmitq broken: %s", cq->txq.why);
            break;
        }
        vp_vring_dev_flush(&cq->txq);
        g_queue_pop_head(&cq->out);
        g_hash_table_insert(cq->pending, &op->seq, op);
        cq->counters.tx++;
        g_debug("device %s: controlq -> %s seq %" PRIu64, cq->name, vp_msg_type_name(op->type),
                op->seq);
        sent = true;
    }
    /* Spec 1.5.1.2: put the message on the transmitq and inject a controlq interrupt
     * (spurious interrupts are harmless; the driver also polls). */
    if (sent && !cq->closed)
        srv_cq_irq(cq);
}

void srv_cq_service(struct srv_cq *cq)
{
    if (cq->closed || !cq->ca->map)
        return;
    if (cq->broken)
        read_status(cq);  /* a driver reset takes the device back */
    if (cq->broken) {
        char why[320];
        g_snprintf(why, sizeof(why), "vhost-pci device needs reset: %s", cq->broken_reason);
        fail_ops(cq, why);
        return;
    }
    read_status(cq);
    service_rx(cq);
    service_tx(cq);
}

uint64_t srv_cq_submit(struct srv_cq *cq, struct vp_cq_msg *m, srv_cq_done_fn done,
                       void *opaque)
{
    struct srv_cq_op *op = g_new0(struct srv_cq_op, 1);
    op->seq = ++cq->next_seq;
    op->done = done;
    op->opaque = opaque;
    op->replay = cq->replaying;
    op->type = m->type;
    op->device_type = m->device_type;
    op->device_id = m->device_id;
    op->op = m->type == VP_MSG_MEMORY_INFO ? m->u.mem.op
           : m->type == VP_MSG_DEVICE_INFO ? m->u.dev.op : 0;
    m->seq = op->seq;
    m->version = VP_MSG_VERSION;
    if (cq->closed) {
        uint64_t seq = op->seq;
        g_free(op);
        done(opaque, NULL, "the vhost-pci device was destroyed");
        return seq;
    }
    int len = vp_cq_encode(m, op->buf, sizeof(op->buf));
    if (len <= 0) {
        /* Our own message: a bug, not a peer error. Fail it from the loop. */
        g_warning("device %s: cannot encode controlq %s (%d)", cq->name,
                  vp_msg_type_name(m->type), len);
        op->len = 0;
        srv_cq_break(cq, "internal error encoding a controlq message");
    } else {
        op->len = (size_t)len;
    }
    g_queue_push_tail(&cq->out, op);
    cq->hooks->schedule(cq->opaque);
    return op->seq;
}
