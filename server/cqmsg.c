/*
 * cqmsg.c - controlq messages describing a device's state, and the replay after a
 * guest driver reset (cqmsg.h).
 */
#define G_LOG_DOMAIN "vp-server"
#include "cqmsg.h"

#include <inttypes.h>

void srv_cqmsg_mem(struct vp_cq_msg *m, uint16_t op)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_MEMORY_INFO;
    m->version = VP_MSG_VERSION;
    m->u.mem.op = op;
}

void srv_cqmsg_add_region(struct vp_cq_msg *m, const struct vp_mt_region *r)
{
    struct vp_cq_region *c = &m->u.mem.regions[m->u.mem.nregions++];
    c->xgpa = r->gpa;
    c->size = r->size;
    c->bar_offset = r->target;
}

void srv_cqmsg_submit_all_memory(struct srv_cq *cq, const struct srv_memory *mem,
                                 srv_cq_done_fn done, void *opaque)
{
    if (!mem->table.n)
        return;
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    srv_cqmsg_mem(m, VP_OP_ADD);
    for (unsigned i = 0; i < mem->table.n; i++)
        srv_cqmsg_add_region(m, &mem->table.r[i]);
    srv_cq_submit(cq, m, done, opaque);
    g_free(m);
}

static void dev_msg(struct vp_cq_msg *m, const struct srv_frontend *fe, uint16_t op)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_DEVICE_INFO;
    m->version = VP_MSG_VERSION;
    m->device_type = fe->device_type;
    m->device_id = fe->device_id;
    m->u.dev.op = op;
    if (op != VP_OP_ADD)
        return;
    m->u.dev.nvirtqs = fe->nvirtqs;
    for (uint32_t i = 0; i < fe->nvirtqs; i++) {
        const struct vp_virtq *q = &fe->virtqs[i];
        struct vp_cq_virtq *c = &m->u.dev.virtqs[i];
        c->index = q->index;
        c->num = q->num;
        c->last_avail_idx = q->last_avail_idx;
        c->kick_vector = VP_NO_VECTOR;  /* kicks stay with the server (DESIGN 3) */
        c->call_vector = fe->call_vector[i];
        c->desc = q->desc;
        c->avail = q->avail;
        c->used = q->used;
    }
}

void srv_cqmsg_submit_device(struct srv_cq *cq, const struct srv_frontend *fe, uint16_t op,
                             srv_cq_done_fn done, void *opaque)
{
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    dev_msg(m, fe, op);
    srv_cq_submit(cq, m, done, opaque);
    g_free(m);
}

void srv_cqmsg_submit_features(struct srv_cq *cq, uint64_t bits, srv_cq_done_fn done,
                               void *opaque)
{
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    m->type = VP_MSG_FEATURE_BITS;
    m->u.features = bits;
    srv_cq_submit(cq, m, done, opaque);
    g_free(m);
}

/* ------------------------------ driver reset replay ------------------------------ */

static void replay_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    const struct srv_cq *cq = opaque;
    if (fail)
        g_info("device %s: state replay after a driver reset not delivered: %s", cq->name,
               fail);
    else if (ack->type != VP_MSG_FEATURE_BITS_ACK && ack->u.ack.result != VP_ACK_ADD_DONE)
        g_warning("device %s: new guest driver refused the replayed %s: %s", cq->name,
                  vp_msg_type_name(ack->type - 1), srv_cq_ack_reason(ack, "ADD_FAIL"));
}

void srv_cqmsg_replay(struct srv_cq *cq, const char *name, const struct srv_memory *mem,
                      bool have_features, uint64_t features, GPtrArray *frontends)
{
    srv_cqmsg_submit_all_memory(cq, mem, replay_acked, cq);
    if (have_features)
        srv_cqmsg_submit_features(cq, features, replay_acked, cq);
    for (guint i = 0; i < frontends->len; i++) {
        struct srv_frontend *fe = g_ptr_array_index(frontends, i);
        /* The old driver died without DEL: its positions are the used indexes it
         * published (chains it took but never gave back are served again). The
         * driver VM's ring is struct vring_used { le16 flags; le16 idx; ... }. */
        for (uint32_t q = 0; q < fe->nvirtqs; q++) {
            uint16_t idx;
            uint64_t gpa = fe->virtqs[q].used + 2;
            if (gpa > fe->virtqs[q].used && srv_mem_read_le16(mem, gpa, &idx))
                fe->virtqs[q].last_avail_idx = idx;
        }
        g_info("device %s: replaying %s frontend %" PRIu64 " (%u virtqueue(s), queue 0 at %u)",
               name, vp_device_type_name(fe->device_type), fe->device_id, fe->nvirtqs,
               fe->nvirtqs ? fe->virtqs[0].last_avail_idx : 0);
        srv_cqmsg_submit_device(cq, fe, VP_OP_ADD, replay_acked, cq);
    }
}
