/*
 * req_features.c - FEATURE_BITS jobs and the renegotiation round (req_features.h).
 *
 * Security model: feature bits are 64-bit values from a client (the offer, its
 * confirmation) and from the guest driver (what it accepted). The driver's answer is
 * masked with the offer (bits it accepted that were not offered are counted as a bad
 * message and ignored); a client's FEATURE_BITS_ACK may only confirm a subset of what
 * the driver accepted, once, while a round is pending; anything else is counted and
 * ignored without touching state.
 */
#include "req_features.h"

#include <inttypes.h>

#include "cqmsg.h"
#include "server.h"
#include "tenant.h"

struct feat_job {
    struct srv_job base;
    struct srv_device *dev;              /* the device it runs on (borrowed) */
    uint64_t features;                   /* the offer (then the client's smaller set) */
    bool reneg_relaying;                 /* the client's smaller set sent on to the driver */
};

static struct feat_job *feat_job(struct srv_job *job)
{
    return (struct feat_job *)job;
}

static void feat_job_free(struct srv_job *job)
{
    g_free(feat_job(job));
}

static void features_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_job *job = opaque;
    struct feat_job *fj = feat_job(job);
    struct srv_device *dev = fj->dev;
    if (fail) {
        srv_job_fail(job, "%s", fail);
        return;
    }
    uint64_t accepted = ack->u.ack.features;
    if (accepted & ~fj->features) {
        dev->cq.counters.bad_acks++;
        dev->srv->counters.bad_messages++;
        g_warning("device %s: guest driver accepted feature bits 0x%" PRIx64 " that were not "
                  "offered (0x%" PRIx64 "); ignoring them", dev->uuid_str,
                  accepted & ~fj->features, fj->features);
        accepted &= fj->features;
    }
    dev->features_offered = fj->features;
    dev->features_accepted = accepted;
    struct vp_ack a;
    srv_job_fill_ack(job, &a, VP_ACK_ADD_DONE, NULL);
    a.feature_bits = accepted;
    if (accepted == fj->features) {
        dev->feat_state = FEAT_SETTLED;
        srv_job_finish(job, VP_ACK_ADD_DONE, NULL, &a);
        return;
    }
    /* Spec 1.5.1.2: wait for the client's FEATURE_BITS_ACK (renegotiation round). */
    g_message("device %s: guest driver accepted 0x%" PRIx64 " of 0x%" PRIx64 ": waiting for the "
              "client to renegotiate", dev->uuid_str, accepted, fj->features);
    srv_job_reply(job, &a);
    dev->feat_state = FEAT_RENEGOTIATING;
    srv_job_wait_client(job);
}

static void features_start(struct srv_job *job)
{
    struct feat_job *fj = feat_job(job);
    struct srv_device *dev = fj->dev = job->tenant->dev;
    if (srv_job_fail_if_broken(job, &dev->cq))
        return;
    srv_cqmsg_submit_features(&dev->cq, fj->features, features_acked, job);
}

static void features_wait_timeout(struct srv_job *job)
{
    struct feat_job *fj = feat_job(job);
    struct srv_device *dev = fj->dev;
    double secs = dev->srv->opt.ack_timeout_s;
    if (fj->reneg_relaying) {
        g_warning("device %s: guest driver did not answer the renegotiated FEATURE_BITS "
                  "within %g s", dev->uuid_str, secs);
        return;  /* the controlq op still completes (ACK or failure) */
    }
    g_warning("device %s: client did not confirm renegotiated features 0x%" PRIx64
              " with FEATURE_BITS_ACK within %g s; settling on them", dev->uuid_str,
              dev->features_accepted, secs);
    dev->feat_state = FEAT_SETTLED;
    srv_job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
}

/* A FEATURE_BITS answered ADD_FAIL (the driver did not answer in time, the device
 * needs reset) still carries a meaningful accepted set (issue 12, off the design: it
 * used to be 0, which a client reading only the bits takes for "nothing accepted"):
 * the bits the device settled on, or, before any, what the shipped guest driver
 * supports, as answered before a device exists. */
static void features_fail_ack(const struct srv_job *job, struct vp_ack *ack)
{
    const struct feat_job *fj = (const struct feat_job *)job;
    const struct srv_device *dev = fj->dev ? fj->dev : job->tenant->dev;
    if (dev && dev->feat_state != FEAT_NONE)
        ack->feature_bits = dev->features_accepted & fj->features;
    else
        ack->feature_bits = fj->features & VP_NET_FEATURES;
}

static const struct srv_job_kind features_kind = {
    .name = "FEATURE_BITS", .type = VP_MSG_FEATURE_BITS, .op = VP_OP_ADD,
    .fail_ack = features_fail_ack,
    .start = features_start, .free = feat_job_free, .wait_timeout = features_wait_timeout,
    .wait_why = "feature renegotiation was not confirmed by the client's FEATURE_BITS_ACK",
};

int srv_req_feature_bits(const struct srv_req *rq, struct vp_msg *msg, vp_error *err)
{
    struct srv_tenant *t = rq->tenant;
    uint64_t bits = 0;
    int r = vp_decode_feature_bits(msg, &bits, err);
    if (r < 0)
        return r;
    if (!t->dev) {
        /* DESIGN 4, feature timing: no device yet, answer with what guestd supports. */
        struct vp_ack a;
        srv_ack_fill(&a, VP_ACK_ADD_DONE, NULL, NULL);
        a.feature_bits = bits & VP_NET_FEATURES;
        SRV_LOG_PEER(rq->log, rq->uuid_str, G_LOG_LEVEL_INFO,
                     "client %s: FEATURE_BITS 0x%" PRIx64 " before any device: accepted 0x%"
                     PRIx64, rq->uuid_str, bits, a.feature_bits);
        srv_reply(rq->srv, rq->session_id, VP_MSG_FEATURE_BITS_ACK, rq->seq, &a);
        return 0;
    }
    vp_error verr = { "" };
    if (srv_jobs_full(&t->jobs, &verr)) {
        struct vp_ack a;
        srv_ack_fill(&a, VP_ACK_ADD_FAIL, verr.msg, NULL);
        a.feature_bits = t->dev->feat_state != FEAT_NONE ? t->dev->features_accepted & bits
                                                          : bits & VP_NET_FEATURES;
        srv_refusal_note(&rq->srv->refusals, rq->uuid_str, "FEATURE_BITS", rq->seq,
                         VP_ACK_ADD_FAIL, verr.msg);
        srv_reply(rq->srv, rq->session_id, VP_MSG_FEATURE_BITS_ACK, rq->seq, &a);
        return 0;
    }
    struct feat_job *fj = g_new0(struct feat_job, 1);
    srv_job_init(&fj->base, &features_kind, t, rq->session_id, rq->seq);
    fj->features = bits;
    srv_job_enqueue(&t->jobs, &fj->base);
    return 0;
}

static void reneg_relay_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_job *job = opaque;
    struct feat_job *fj = feat_job(job);
    struct srv_device *dev = fj->dev;
    if (fail) {
        g_warning("device %s: renegotiated FEATURE_BITS not delivered: %s", dev->uuid_str, fail);
    } else {
        uint64_t accepted = ack->u.ack.features & fj->features;
        if (accepted != fj->features)
            g_warning("device %s: guest driver accepted 0x%" PRIx64 " of the renegotiated 0x%"
                      PRIx64, dev->uuid_str, accepted, fj->features);
        dev->features_accepted = accepted;
    }
    dev->feat_state = FEAT_SETTLED;
    srv_job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);  /* already answered: no reply */
}

int srv_req_feature_bits_ack(const struct srv_req *rq, struct vp_msg *msg, vp_error *err)
{
    struct vp_server *srv = rq->srv;
    struct srv_tenant *t = rq->tenant;
    struct vp_ack ack;
    int r = vp_decode_ack(msg, &ack, err);
    if (r < 0)
        return r;
    struct srv_job *head = t->dev ? srv_jobs_head(&t->jobs) : NULL;
    if (!head || head->phase != SRV_JOB_WAIT_CLIENT || head->kind != &features_kind) {
        srv->counters.bad_messages++;
        SRV_LOG_PEER(rq->log, rq->uuid_str, G_LOG_LEVEL_WARNING,
                     "client %s: FEATURE_BITS_ACK seq %" PRIu64 " while no renegotiation is "
                     "pending; ignored", rq->uuid_str, rq->seq);
        return 0;
    }
    struct feat_job *fj = feat_job(head);
    struct srv_device *dev = t->dev;
    if (ack.feature_bits & ~dev->features_accepted) {
        srv->counters.bad_messages++;
        SRV_LOG_PEER(rq->log, rq->uuid_str, G_LOG_LEVEL_WARNING,
                     "client %s: FEATURE_BITS_ACK 0x%" PRIx64 " has bits the device did not "
                     "accept (0x%" PRIx64 "); still waiting", rq->uuid_str, ack.feature_bits,
                     dev->features_accepted);
        return 0;
    }
    if (fj->reneg_relaying) {
        srv->counters.bad_messages++;
        SRV_LOG_PEER(rq->log, rq->uuid_str, G_LOG_LEVEL_WARNING,
                     "client %s: second FEATURE_BITS_ACK seq %" PRIu64 " ignored", rq->uuid_str,
                     rq->seq);
        return 0;
    }
    g_message("device %s: client confirmed renegotiated features 0x%" PRIx64, dev->uuid_str,
              ack.feature_bits);
    if (ack.feature_bits == dev->features_accepted) {
        dev->feat_state = FEAT_SETTLED;
        srv_job_finish(head, VP_ACK_ADD_DONE, NULL, NULL);
        return 0;
    }
    /* The frontend settled on fewer bits than the driver accepted: tell the driver
     * (no socket reply: FEATURE_BITS_ACK from a client is not answered). */
    fj->reneg_relaying = true;
    fj->features = ack.feature_bits;
    srv_cqmsg_submit_features(&dev->cq, ack.feature_bits, reneg_relay_acked, head);
    return 0;
}
