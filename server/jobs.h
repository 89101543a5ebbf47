/*
 * jobs.h - client requests and their answers (DESIGN section 4), and the job queue
 * each tenant (driver VM) runs them in (spec 1.5/1.6 sequences).
 *
 * Every request that needs the guest driver becomes a job on its tenant's queue; the
 * head job runs, the others wait (one change at a time keeps the memory table, the
 * windows and the controlq consistent). A job answers the client's socket only after
 * the guest driver's controlq ACK for the same change. Each job carries the
 * client's session id and msg_seq; a session that has gone simply gets no reply.
 * What a job does is its kind's (req_memory.c, req_device.c, req_features.c,
 * closing.c); this file only queues, times out and answers.
 *
 * Timeouts (--ack-timeout): a job still queued when its timer fires is dropped and
 * answered "device VM driver did not answer within N s"; a running job is answered
 * the same way and finishes silently when the driver eventually answers (its
 * effects, or rollback, still apply). A job that was answered and now waits for a
 * client message (the renegotiation round) has its own timeout action.
 *
 * Main thread only.
 */
#ifndef VP_SERVER_JOBS_H
#define VP_SERVER_JOBS_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "cq_dev.h"
#include "ratelimit.h"
#include "vp_msg.h"

struct vp_server;
struct srv_tenant;
struct srv_job;

/* ------------------------------ requests and answers ------------------------------ */

/** One request as session.c hands it to a request handler. */
struct srv_req {
    struct vp_server *srv;
    struct srv_tenant *tenant;           /* the connection's driver VM (never NULL) */
    uint64_t session_id;                 /* the connection that asked */
    uint64_t seq;                        /* its msg_seq, echoed in the ACK */
    const char *uuid_str;                /* client_uuid text, for logs */
    unsigned uid;                        /* the connection's uid (SO_PEERCRED) */
    struct srv_ratelimit *log;           /* the lines this client causes (its tenant's) */
};

/** Fill @ack: @result, @reason (may be NULL: none; truncated to fit) and, with @di,
 *  its device_type and device_id; every other field 0. */
void srv_ack_fill(struct vp_ack *ack, uint64_t result, const char *reason,
                  const struct vp_device_info *di);

/** Send @ack as a socket ACK of @type answering @seq on session @session_id, through
 *  the server's reply hook (nothing when @session_id is 0 or has gone). */
void srv_reply(struct vp_server *srv, uint64_t session_id, uint16_t type, uint64_t seq,
               const struct vp_ack *ack);

/** Answer @rq at once with an ACK of @type (result, reason, @di as for srv_ack_fill),
 *  logging the reason when there is one. */
void srv_req_answer(const struct srv_req *rq, uint16_t type, uint64_t result,
                    const char *reason, const struct vp_device_info *di);

/* ------------------------------ jobs ------------------------------ */

enum srv_job_phase {
    SRV_JOB_QUEUED,                      /* waiting for its turn */
    SRV_JOB_RUNNING,                     /* started */
    SRV_JOB_WAIT_CLIENT,                 /* answered; waits for a client message */
};

/** What one kind of job does (a static const table per kind). */
struct srv_job_kind {
    const char *name;                    /* for logs: "MEMORY_INFO(ADD)" */
    uint16_t type;                       /* the request (its ACK type: vp_proto.h) */
    uint16_t op;                         /* VP_OP_ADD / VP_OP_DEL: which *_FAIL a failure is */
    bool internal;                       /* no timer, outcome not logged (destroy) */
    /** Run the job (it is the head of its queue). It ends with srv_job_finish/fail,
     *  now or from a later completion. */
    void (*start)(struct srv_job *job);
    /** Release the kind's resources and free the job (the kind struct it is in). */
    void (*free)(struct srv_job *job);
    /** SRV_JOB_WAIT_CLIENT timed out (may be NULL when a kind never waits). */
    void (*wait_timeout)(struct srv_job *job);
    /** Why a job queued behind this one in SRV_JOB_WAIT_CLIENT timed out ("... within
     *  N s" is appended). */
    const char *wait_why;
    /** What a failure answer built by the queue carries besides result, reason and the
     *  device echo (may be NULL). */
    void (*fail_ack)(const struct srv_job *job, struct vp_ack *ack);
};

/** One job. Kinds embed it as the first member of their own struct. */
struct srv_job {
    const struct srv_job_kind *kind;
    struct srv_jobq *q;
    struct srv_tenant *tenant;           /* the kinds' business (opaque here) */
    enum srv_job_phase phase;
    uint64_t session_id;                 /* 0: internal, no reply */
    uint64_t sock_seq;
    bool replied;                        /* answered (or orphaned by a timeout) */
    bool finishing;
    guint timer;
    bool echo_device;                    /* DEVICE_INFO_ACK: echo device_type / id */
    uint32_t device_type;
    uint64_t device_id;
};

/** A tenant's queue; the head job runs. */
struct srv_jobq {
    struct vp_server *srv;
    const char *name;                    /* the tenant's uuid text (borrowed), for logs */
    struct srv_ratelimit *log;           /* the tenant's log limit (borrowed) */
    GQueue jobs;                         /* struct srv_job* */
    guint idle;                          /* pending start of the head job */
    bool stopped;                        /* the tenant is going: nothing starts any more */
};

/** Requests a tenant queues at most (each may hold up to VP_MAX_FDS fds). */
#define SRV_MAX_QUEUED_JOBS 64

/** An empty queue of tenant @name (borrowed) logging under @log (borrowed). */
void srv_jobq_init(struct srv_jobq *q, struct vp_server *srv, const char *name,
                   struct srv_ratelimit *log);
/** Nothing starts any more (the tenant is being destroyed). */
void srv_jobq_stop(struct srv_jobq *q);
/** Fail every queued job with @why (a job waiting for the client is settled instead). */
void srv_jobs_fail_all(struct srv_jobq *q, const char *why);
/** Does @q hold SRV_MAX_QUEUED_JOBS already? Then the reason is in @err. */
bool srv_jobs_full(struct srv_jobq *q, vp_error *err);
/** The head job, or NULL. */
struct srv_job *srv_jobs_head(struct srv_jobq *q);
/** Whether the head job waits for a client message (SRV_JOB_WAIT_CLIENT). */
bool srv_jobs_waiting_client(struct srv_jobq *q);

/** Initialise @job (zeroed by the caller's allocation) of @kind for @tenant, answering
 *  @seq on @session_id (0: internal). */
void srv_job_init(struct srv_job *job, const struct srv_job_kind *kind,
                  struct srv_tenant *tenant, uint64_t session_id, uint64_t seq);
/** Append @job to @q (with its timer) and start it when it is the head. */
void srv_job_enqueue(struct srv_jobq *q, struct srv_job *job);
/** End the job: answer (unless already answered), take it off the queue, free it,
 *  run the next one. @ack may be NULL: then a plain @result/@reason answer. */
void srv_job_finish(struct srv_job *job, uint64_t result, const char *reason,
                    const struct vp_ack *ack);
/** srv_job_finish() with ADD_FAIL (DEL_FAIL for a DEL kind) and a formatted reason. */
void srv_job_fail(struct srv_job *job, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/** Answer now without ending the job (the renegotiation round, a timeout). */
void srv_job_reply(struct srv_job *job, const struct vp_ack *ack);
/** Fill @ack for @job: @result, @reason, the device echo. */
void srv_job_fill_ack(const struct srv_job *job, struct vp_ack *ack, uint64_t result,
                      const char *reason);
/** The job was answered and now waits for a client message: phase WAIT_CLIENT, the
 *  timer restarts (the kind's wait_timeout runs when it fires). */
void srv_job_wait_client(struct srv_job *job);

/** Fail @job when its device needs reset (nothing can be sent on @cq): true when it
 *  did, with the reason "vhost-pci device needs reset: <why>". */
bool srv_job_fail_if_broken(struct srv_job *job, const struct srv_cq *cq);

/**
 * The head of a job's controlq ACK handler: when the message was not delivered
 * (@fail) or the guest driver answered other than @done, undo what the job did
 * (@rollback, may be NULL) and fail the job with the driver's reason, else @refused.
 * True when the job was failed.
 */
bool srv_job_ack_failed(struct srv_job *job, const struct vp_cq_msg *ack, const char *fail,
                        uint64_t done, const char *refused, void (*rollback)(struct srv_job *));

#endif
