/*
 * jobs.c - requests, answers and the per-tenant job queue (jobs.h).
 *
 * Security model: requests were framed, decoded and validated before they become
 * jobs; a job owns the fds of its request until its kind hands them on, and its
 * kind's free() closes what is left on every path. The guest driver's ACKs arrive
 * already matched (cq_dev.c) and are trusted only as far as their result.
 */
#include "jobs.h"

#include <errno.h>
#include <inttypes.h>

#include "server.h"
#include "vp_proto.h"

/* ------------------------------ answers ------------------------------ */

void srv_ack_fill(struct vp_ack *ack, uint64_t result, const char *reason,
                  const struct vp_device_info *di)
{
    memset(ack, 0, sizeof(*ack));
    ack->result = result;
    if (reason)
        g_strlcpy(ack->reason, reason, sizeof(ack->reason));
    if (di) {
        ack->device_type = di->device_type;
        ack->device_id = di->device_id;
    }
}

void srv_reply(struct vp_server *srv, uint64_t session_id, uint16_t type, uint64_t seq,
               const struct vp_ack *ack)
{
    if (session_id && srv->reply)
        srv->reply(srv, session_id, type, seq, ack);
}

/* Name of the request @ack_type answers, with its op when it has one: for the record. */
static void request_name(uint16_t ack_type, uint64_t result, char *out, size_t size)
{
    const struct vp_msg_rule *ack = vp_proto_rule(ack_type);
    const struct vp_msg_rule *req = ack && ack->answers >= 0 ? vp_proto_rule((unsigned)ack->answers)
                                                              : NULL;
    if (req && req->has_op)
        g_snprintf(out, size, "%s(%s)", req->name,
                   result == VP_ACK_DEL_FAIL || result == VP_ACK_DEL_DONE ? "DEL" : "ADD");
    else
        g_strlcpy(out, req ? req->name : "request", size);
}

void srv_req_answer(const struct srv_req *rq, uint16_t type, uint64_t result,
                    const char *reason, const struct vp_device_info *di)
{
    struct vp_ack a;
    srv_ack_fill(&a, result, reason, di);
    if (result == VP_ACK_ADD_FAIL || result == VP_ACK_DEL_FAIL) {
        char name[40];
        request_name(type, result, name, sizeof(name));
        srv_refusal_note(&rq->srv->refusals, rq->uuid_str, name, rq->seq, result, a.reason);
    }
    if (reason)
        SRV_LOG_PEER(rq->log, rq->uuid_str, G_LOG_LEVEL_MESSAGE,
                     "client %s: %s seq %" PRIu64 " -> %s: %s", rq->uuid_str,
                     vp_msg_type_name(type), rq->seq, vp_ack_result_name(result), reason);
    srv_reply(rq->srv, rq->session_id, type, rq->seq, &a);
}

/* ------------------------------ jobs ------------------------------ */

static void jobs_kick(struct srv_jobq *q);

/* The result a failure of @job answers with. */
static uint64_t fail_result(const struct srv_job *job)
{
    return job->kind->op == VP_OP_DEL ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL;
}

void srv_job_fill_ack(const struct srv_job *job, struct vp_ack *ack, uint64_t result,
                      const char *reason)
{
    srv_ack_fill(ack, result, reason, NULL);
    if (job->echo_device) {
        ack->device_type = job->device_type;
        ack->device_id = job->device_id;
    }
    if (!vp_proto_result_done(job->kind->type, job->kind->op, result) && job->kind->fail_ack)
        job->kind->fail_ack(job, ack);
}

void srv_job_reply(struct srv_job *job, const struct vp_ack *ack)
{
    if (job->replied)
        return;
    job->replied = true;
    srv_reply(job->q->srv, job->session_id, (uint16_t)vp_proto_reply_type(job->kind->type),
              job->sock_seq, ack);
}

static void job_free(struct srv_job *job)
{
    if (job->timer)
        g_source_remove(job->timer);
    job->timer = 0;
    job->kind->free(job);
}

/* A failure answer of @job (not yet recorded): into the server's refusals. */
static void note_refusal(struct srv_job *job, const struct vp_ack *ack)
{
    if (job->replied)
        return;  /* recorded when it was answered */
    srv_refusal_note(&job->q->srv->refusals, job->q->name, job->kind->name, job->sock_seq,
                     ack->result, ack->reason);
}

void srv_job_finish(struct srv_job *job, uint64_t result, const char *reason,
                    const struct vp_ack *ack)
{
    struct srv_jobq *q = job->q;
    if (job->finishing)
        return;
    job->finishing = true;
    struct vp_ack a;
    if (!ack) {
        srv_job_fill_ack(job, &a, result, reason);
        ack = &a;
    }
    if (job->kind->internal) {
        ;  /* its outcome is logged by what it did */
    } else if (result == VP_ACK_ADD_FAIL || result == VP_ACK_DEL_FAIL) {
        note_refusal(job, ack);
        SRV_LOG_PEER(q->log, q->name, G_LOG_LEVEL_MESSAGE, "device %s: %s -> %s: %s", q->name,
                     job->kind->name, vp_ack_result_name(result), ack->reason);
    } else {
        SRV_LOG_PEER(q->log, q->name, G_LOG_LEVEL_INFO, "device %s: %s -> %s", q->name,
                     job->kind->name,
                     job->kind->type == VP_MSG_FEATURE_BITS ? "accepted"
                                                            : vp_ack_result_name(result));
    }
    srv_job_reply(job, ack);
    g_queue_remove(&q->jobs, job);
    job_free(job);
    jobs_kick(q);
}

void srv_job_fail(struct srv_job *job, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    srv_job_finish(job, fail_result(job), why, NULL);
}

bool srv_job_fail_if_broken(struct srv_job *job, const struct srv_cq *cq)
{
    if (!cq->broken)
        return false;
    srv_job_fail(job, "vhost-pci device needs reset: %s", cq->broken_reason);
    return true;
}

bool srv_job_ack_failed(struct srv_job *job, const struct vp_cq_msg *ack, const char *fail,
                        uint64_t done, const char *refused, void (*rollback)(struct srv_job *))
{
    if (!fail && ack->u.ack.result == done)
        return false;
    char why[300];
    g_strlcpy(why, fail ? fail : srv_cq_ack_reason(ack, refused), sizeof(why));
    if (rollback)
        rollback(job);
    srv_job_fail(job, "%s", why);
    return true;
}

/* ------------------------------ queue ------------------------------ */

static gboolean jobs_run(gpointer data)
{
    struct srv_jobq *q = data;
    q->idle = 0;
    struct srv_job *job = g_queue_peek_head(&q->jobs);
    if (job && job->phase == SRV_JOB_QUEUED && !q->stopped) {
        job->phase = SRV_JOB_RUNNING;
        g_debug("device %s: starting %s", q->name, job->kind->name);
        job->kind->start(job);  /* may free the queue's tenant: touch nothing after */
    }
    return G_SOURCE_REMOVE;
}

static void jobs_kick(struct srv_jobq *q)
{
    if (!q->stopped && !q->idle && !g_queue_is_empty(&q->jobs))
        q->idle = g_idle_add_full(G_PRIORITY_DEFAULT, jobs_run, q, NULL);  /* fair: 12.2 */
}

void srv_jobq_init(struct srv_jobq *q, struct vp_server *srv, const char *name,
                   struct srv_ratelimit *log)
{
    memset(q, 0, sizeof(*q));
    q->srv = srv;
    q->name = name;
    q->log = log;
    g_queue_init(&q->jobs);
}

void srv_jobq_stop(struct srv_jobq *q)
{
    q->stopped = true;
    if (q->idle)
        g_source_remove(q->idle);
    q->idle = 0;
}

static gboolean job_timeout(gpointer data)
{
    struct srv_job *job = data;
    struct srv_jobq *q = job->q;
    double secs = q->srv->opt.ack_timeout_s;
    job->timer = 0;
    if (job->phase == SRV_JOB_WAIT_CLIENT) {
        job->kind->wait_timeout(job);
        return G_SOURCE_REMOVE;
    }
    char why[300];
    struct srv_job *head = g_queue_peek_head(&q->jobs);
    if (head && head != job && head->phase == SRV_JOB_WAIT_CLIENT)
        g_snprintf(why, sizeof(why), "%s within %g s", head->kind->wait_why, secs);
    else
        g_snprintf(why, sizeof(why), "device VM driver did not answer within %g s", secs);
    uint64_t result = fail_result(job);
    if (job->phase == SRV_JOB_QUEUED) {
        srv_job_finish(job, result, why, NULL);  /* never started: just drop it */
    } else {
        SRV_LOG_PEER(q->log, q->name, G_LOG_LEVEL_WARNING,
                     "device %s: %s: %s (it goes on in the background)", q->name,
                     job->kind->name, why);
        struct vp_ack a;
        srv_job_fill_ack(job, &a, result, why);
        note_refusal(job, &a);
        srv_job_reply(job, &a);
    }
    return G_SOURCE_REMOVE;
}

static guint start_timer(struct srv_job *job)
{
    unsigned ms = job->q->srv->timeout_ms ? job->q->srv->timeout_ms : 1;
    return g_timeout_add(ms, job_timeout, job);
}

void srv_job_wait_client(struct srv_job *job)
{
    job->phase = SRV_JOB_WAIT_CLIENT;
    if (job->timer)
        g_source_remove(job->timer);
    job->timer = start_timer(job);
}

bool srv_jobs_full(struct srv_jobq *q, vp_error *err)
{
    if (g_queue_get_length(&q->jobs) < SRV_MAX_QUEUED_JOBS)
        return false;
    vp_fail(err, -EBUSY, "too many requests queued for this vhost-pci device (%d)",
            SRV_MAX_QUEUED_JOBS);
    return true;
}

struct srv_job *srv_jobs_head(struct srv_jobq *q)
{
    return g_queue_peek_head(&q->jobs);
}

bool srv_jobs_waiting_client(struct srv_jobq *q)
{
    struct srv_job *head = g_queue_peek_head(&q->jobs);
    return head && head->phase == SRV_JOB_WAIT_CLIENT;
}

void srv_job_init(struct srv_job *job, const struct srv_job_kind *kind,
                  struct srv_tenant *tenant, uint64_t session_id, uint64_t seq)
{
    job->kind = kind;
    job->tenant = tenant;
    job->session_id = session_id;
    job->sock_seq = seq;
}

void srv_job_enqueue(struct srv_jobq *q, struct srv_job *job)
{
    job->q = q;
    if (!job->kind->internal)
        job->timer = start_timer(job);
    g_queue_push_tail(&q->jobs, job);
    g_debug("device %s: queued %s (%u in queue)", q->name, job->kind->name,
            g_queue_get_length(&q->jobs));
    jobs_kick(q);
}

void srv_jobs_fail_all(struct srv_jobq *q, const char *why)
{
    struct srv_job *job;
    while ((job = g_queue_peek_head(&q->jobs))) {
        if (job->finishing) {  /* being finished up the stack: just unlink */
            g_queue_pop_head(&q->jobs);
            continue;
        }
        if (job->phase == SRV_JOB_WAIT_CLIENT)
            srv_job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
        else
            srv_job_fail(job, "%s", why);
    }
}
