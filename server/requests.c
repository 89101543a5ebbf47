/*
 * requests.c - socket requests as per-device jobs (spec 1.5/1.6, DESIGN sections 3-4).
 *
 * Every request that needs the guest driver becomes a job on its device's queue; the
 * head job runs, the others wait (one change at a time keeps the memory table, the
 * windows and the controlq consistent). A job relays its change over the controlq and
 * answers the client's socket only after the guest driver's controlq ACK, passing
 * the driver's ADD_FAIL/DEL_FAIL reason through. Each job carries the client's
 * session id and msg_seq; a session that has gone simply gets no reply.
 *
 * Timeouts (--ack-timeout): a job still queued when its timer fires is dropped and
 * answered "device VM driver did not answer within N s"; a running job is answered
 * the same way and finishes silently when the driver eventually answers (its
 * effects, or rollback, still apply).
 *
 * Security model: requests were framed and decoded by session.c (vp_decode_*) and
 * are validated here (vp_validate_*, window sizes, the device's own table) before any
 * state changes; every fd a request carries is owned by its job and closed when the
 * job ends unless it was handed to a window or frontend. The guest driver's ACKs
 * arrive already matched (device.c) and are trusted only as far as their result,
 * accepted features (masked with the offer) and queue positions.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kcmp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

enum job_kind { JOB_MEM_ADD, JOB_MEM_DEL, JOB_FEATURES, JOB_DEV_ADD, JOB_DEV_DEL, JOB_DESTROY };
enum job_phase { PH_QUEUED, PH_RUNNING, PH_RENEG };

static const char *const job_names[] = {
    "MEMORY_INFO(ADD)", "MEMORY_INFO(DEL)", "FEATURE_BITS", "DEVICE_INFO(ADD)",
    "DEVICE_INFO(DEL)", "destroy",
};

struct clone_state {
    struct srv_device *nd;                 /* the clone (a reference) */
    unsigned waiting;                      /* plugs / controlq ops outstanding */
    bool plugs_done, driver_ok, dels_done, replay_sent;
    bool failed;
    char reason[300];
    bool old_frontends_deleted;
};

struct srv_job {
    struct srv_device *dev;
    enum job_kind kind;
    enum job_phase phase;
    uint64_t session_id;                   /* 0: internal, no reply */
    uint64_t sock_seq;
    bool replied;                          /* answered (or orphaned by a timeout) */
    bool finishing;
    guint timer;
    unsigned waiting;                      /* outstanding plugs */
    bool failed;
    char fail[300];
    struct vp_memory_info *mi;             /* MEM_*: owns its fds */
    struct vp_device_info *di;             /* DEV_*: owns its fds */
    uint64_t features;                     /* FEATURES: the offer */
    /* MEM_ADD */
    unsigned nadded;
    uint64_t added_gpa[VP_MAX_REGIONS];
    /* DEV_ADD */
    struct srv_frontend *old_fe;
    struct srv_frontend *new_fe;
    int fresh_vec[VP_MAX_VIRTQS];
    unsigned nfresh;
    struct clone_state *clone;
    bool reneg_relaying;                   /* FEATURES: client's smaller set sent on */
};

static void jobs_kick(struct srv_device *dev);
static void clone_cleanup(struct srv_job *job);

/* ------------------------------ replies ------------------------------ */

static uint16_t reply_type(const struct srv_job *job)
{
    switch (job->kind) {
    case JOB_MEM_ADD:
    case JOB_MEM_DEL:
        return VP_MSG_MEMORY_INFO_ACK;
    case JOB_FEATURES:
        return VP_MSG_FEATURE_BITS_ACK;
    default:
        return VP_MSG_DEVICE_INFO_ACK;
    }
}

static bool job_is_del(const struct srv_job *job)
{
    return job->kind == JOB_MEM_DEL || job->kind == JOB_DEV_DEL;
}

static void job_reply(struct srv_job *job, const struct vp_ack *ack)
{
    if (job->replied)
        return;
    job->replied = true;
    if (!job->session_id)
        return;
    srv_reply(job->dev->srv, job->session_id, reply_type(job), job->sock_seq, ack);
}

static void fill_ack(struct srv_job *job, struct vp_ack *ack, uint64_t result, const char *reason)
{
    srv_ack_fill(ack, result, reason, job->di);
}

static void job_free(struct srv_job *job)
{
    if (job->timer)
        g_source_remove(job->timer);
    if (job->clone)
        clone_cleanup(job);
    if (job->mi) {
        vp_memory_info_close_fds(job->mi);
        g_free(job->mi);
    }
    if (job->di) {
        vp_device_info_close_fds(job->di);
        g_free(job->di);
    }
    g_free(job);
}

/* End the job: answer (unless already answered), take it off the queue, run the
 * next one. @ack may be NULL: then a plain @result/@reason answer. */
static void job_finish(struct srv_job *job, uint64_t result, const char *reason,
                       const struct vp_ack *ack)
{
    struct srv_device *dev = job->dev;
    if (job->finishing)
        return;
    job->finishing = true;
    struct vp_ack a;
    if (!ack) {
        fill_ack(job, &a, result, reason);
        ack = &a;
    }
    if (job->kind == JOB_DESTROY)
        ;  /* its outcome is logged by srv_device_destroy() */
    else if (result == VP_ACK_ADD_FAIL || result == VP_ACK_DEL_FAIL)
        g_message("device %s: %s -> %s: %s", dev->uuid_str, job_names[job->kind],
                  vp_ack_result_name(result), ack->reason);
    else
        g_info("device %s: %s -> %s", dev->uuid_str, job_names[job->kind],
               job->kind == JOB_FEATURES ? "accepted" : vp_ack_result_name(result));
    job_reply(job, ack);
    g_queue_remove(&dev->jobs, job);
    job_free(job);
    jobs_kick(dev);
}

static void job_fail(struct srv_job *job, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void job_fail(struct srv_job *job, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    job_finish(job, job_is_del(job) ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL, why, NULL);
}

/* ------------------------------ queue ------------------------------ */

static void job_start(struct srv_job *job);

static gboolean jobs_run(gpointer data)
{
    struct srv_device *dev = data;
    dev->job_idle = 0;
    struct srv_job *job = g_queue_peek_head(&dev->jobs);
    if (job && job->phase == PH_QUEUED && !dev->dead) {
        job->phase = PH_RUNNING;
        job_start(job);
    }
    return G_SOURCE_REMOVE;
}

static void jobs_kick(struct srv_device *dev)
{
    if (!dev->dead && !dev->job_idle && !g_queue_is_empty(&dev->jobs))
        dev->job_idle = g_idle_add(jobs_run, dev);
}

static gboolean job_timeout(gpointer data)
{
    struct srv_job *job = data;
    struct srv_device *dev = job->dev;
    struct vp_server *srv = dev->srv;
    job->timer = 0;
    char why[300];
    struct srv_job *head = g_queue_peek_head(&dev->jobs);
    if (job->phase == PH_RENEG && job->reneg_relaying) {
        g_warning("device %s: guest driver did not answer the renegotiated FEATURE_BITS "
                  "within %g s", dev->uuid_str, srv->opt.ack_timeout_s);
        return G_SOURCE_REMOVE;  /* the controlq op still completes (ACK or failure) */
    }
    if (job->phase == PH_RENEG) {
        g_warning("device %s: client did not confirm renegotiated features 0x%" PRIx64
                  " with FEATURE_BITS_ACK within %g s; settling on them", dev->uuid_str,
                  dev->features_accepted, srv->opt.ack_timeout_s);
        dev->feat_state = FEAT_SETTLED;
        job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
        return G_SOURCE_REMOVE;
    }
    if (head && head != job && head->phase == PH_RENEG)
        g_snprintf(why, sizeof(why), "feature renegotiation was not confirmed by the client's "
                   "FEATURE_BITS_ACK within %g s", srv->opt.ack_timeout_s);
    else
        g_snprintf(why, sizeof(why), "device VM driver did not answer within %g s",
                   srv->opt.ack_timeout_s);
    uint64_t result = job_is_del(job) ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL;
    if (job->phase == PH_QUEUED) {
        job_finish(job, result, why, NULL);  /* never started: just drop it */
    } else {
        g_warning("device %s: %s: %s (it goes on in the background)", dev->uuid_str,
                  job_names[job->kind], why);
        struct vp_ack a;
        fill_ack(job, &a, result, why);
        job_reply(job, &a);
    }
    return G_SOURCE_REMOVE;
}

/* Requests a device queues at most (each may hold up to VP_MAX_FDS fds). */
#define MAX_QUEUED_JOBS 64

/* Does @dev's queue hold MAX_QUEUED_JOBS already? Then the reason is in @err. */
static bool jobs_full(struct srv_device *dev, vp_error *err)
{
    if (g_queue_get_length(&dev->jobs) < MAX_QUEUED_JOBS)
        return false;
    vp_fail(err, -EBUSY, "too many requests queued for this vhost-pci device (%d)",
            MAX_QUEUED_JOBS);
    return true;
}

static struct srv_job *job_new(struct srv_device *dev, enum job_kind kind, uint64_t session_id,
                               uint64_t seq)
{
    struct srv_job *job = g_new0(struct srv_job, 1);
    job->dev = dev;
    job->kind = kind;
    job->session_id = session_id;
    job->sock_seq = seq;
    return job;
}

static void job_enqueue(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    unsigned ms = dev->srv->timeout_ms ? dev->srv->timeout_ms : 1;
    if (job->kind != JOB_DESTROY)
        job->timer = g_timeout_add(ms, job_timeout, job);
    g_queue_push_tail(&dev->jobs, job);
    g_debug("device %s: queued %s (%u in queue)", dev->uuid_str, job_names[job->kind],
            g_queue_get_length(&dev->jobs));
    jobs_kick(dev);
}

void srv_jobs_fail_all(struct srv_device *dev, const char *why)
{
    struct srv_job *job;
    while ((job = g_queue_peek_head(&dev->jobs))) {
        if (job->finishing) {  /* being finished up the stack: just unlink */
            g_queue_pop_head(&dev->jobs);
            continue;
        }
        if (job->phase == PH_RENEG)
            job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
        else
            job_fail(job, "%s", why);
    }
}

bool srv_jobs_waiting_reneg(struct srv_device *dev)
{
    struct srv_job *head = g_queue_peek_head(&dev->jobs);
    return head && head->phase == PH_RENEG;
}

/* ------------------------------ helpers ------------------------------ */

static const char *driver_reason(const struct vp_cq_msg *ack, const char *dflt)
{
    return ack->u.ack.reason[0] ? ack->u.ack.reason : dflt;
}

/* Fail @job when its device needs reset (nothing can be sent on its controlq); true
 * when it did. */
static bool job_fail_if_broken(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    if (!dev->broken)
        return false;
    job_fail(job, "vhost-pci device needs reset: %s", dev->broken_reason);
    return true;
}

/* The head of a job's controlq ACK handler: when the message was not delivered
 * (@fail) or the guest driver answered other than @done, undo what the job did
 * (@rollback, may be NULL) and fail the job with the driver's reason, else
 * @refused. True when the job was failed. */
static bool job_ack_failed(struct srv_job *job, const struct vp_cq_msg *ack, const char *fail,
                           uint64_t done, const char *refused,
                           void (*rollback)(struct srv_job *))
{
    if (!fail && ack->u.ack.result == done)
        return false;
    char why[300];
    g_strlcpy(why, fail ? fail : driver_reason(ack, refused), sizeof(why));
    if (rollback)
        rollback(job);
    job_fail(job, "%s", why);
    return true;
}

static int find_region(struct srv_device *dev, uint64_t gpa)
{
    for (unsigned i = 0; i < dev->nregions; i++)
        if (dev->regions[i].gpa == gpa)
            return (int)i;
    return -1;
}

static void remove_region(struct srv_device *dev, uint64_t gpa)
{
    int i = find_region(dev, gpa);
    if (i < 0)
        return;
    struct srv_window *w = &dev->wins[dev->regions[i].win];
    if (w->refs)
        w->refs--;
    memmove(&dev->regions[i], &dev->regions[i + 1],
            (dev->nregions - (unsigned)i - 1) * sizeof(dev->regions[0]));
    dev->nregions--;
}

/* Is [gpa, gpa+len) inside one region of the table? Overflow-proof. */
static bool inside_regions(struct srv_device *dev, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < dev->nregions; i++) {
        const struct srv_region *r = &dev->regions[i];
        if (gpa >= r->gpa && vp_range_ok(gpa - r->gpa, len, r->size))
            return true;
    }
    return false;
}

static void cq_mem_msg(struct vp_cq_msg *m, uint16_t op)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_MEMORY_INFO;
    m->version = VP_MSG_VERSION;
    m->u.mem.op = op;
}

static void cq_add_region(struct srv_device *dev, struct vp_cq_msg *m, const struct srv_region *r)
{
    struct vp_cq_region *c = &m->u.mem.regions[m->u.mem.nregions++];
    c->xgpa = r->gpa;
    c->size = r->size;
    c->bar_offset = srv_region_bar_offset(dev, r);
}

static void cq_dev_msg(struct vp_cq_msg *m, const struct srv_frontend *fe, uint16_t op)
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

/* Send DEVICE_INFO(@op) of @fe on @dev's controlq. */
static void cq_dev_submit(struct srv_device *dev, const struct srv_frontend *fe, uint16_t op,
                          srv_cq_done_fn done, void *opaque)
{
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    cq_dev_msg(m, fe, op);
    srv_cq_submit(dev, m, done, opaque);
    g_free(m);
}

/* Send FEATURE_BITS(@bits) on @dev's controlq. */
static void cq_features_submit(struct srv_device *dev, uint64_t bits, srv_cq_done_fn done,
                               void *opaque)
{
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    m->type = VP_MSG_FEATURE_BITS;
    m->u.features = bits;
    srv_cq_submit(dev, m, done, opaque);
    g_free(m);
}

/* Are two fds the same open file (kcmp KCMP_FILE)? False when unsure. */
static bool same_open_file(int a, int b)
{
    if (a < 0 || b < 0)
        return false;
    pid_t pid = getpid();
    return syscall(SYS_kcmp, pid, pid, KCMP_FILE, a, b) == 0;
}

static int file_id(int fd, struct srv_file_id *id)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    id->dev = (uint64_t)st.st_dev;
    id->ino = (uint64_t)st.st_ino;
    id->size = (uint64_t)st.st_size;
    return 0;
}

static struct srv_frontend *frontend_copy(const struct srv_frontend *fe)
{
    struct srv_frontend *c = g_memdup2(fe, sizeof(*fe));
    for (uint32_t i = 0; i < c->nvirtqs; i++) {
        c->virtqs[i].kick_fd = fe->virtqs[i].kick_fd >= 0
                                   ? fcntl(fe->virtqs[i].kick_fd, F_DUPFD_CLOEXEC, 3) : -1;
        c->virtqs[i].call_fd = fe->virtqs[i].call_fd >= 0
                                   ? fcntl(fe->virtqs[i].call_fd, F_DUPFD_CLOEXEC, 3) : -1;
    }
    return c;
}

/* ------------------------------ MEMORY_INFO(ADD) ------------------------------ */

/* The fd of the plan's new window @n: taken from the first kept region placed in it
 * that still has one (the window owns it from now on); -1 when none. */
static int take_new_window_fd(struct vp_memory_info *mi, const struct srv_add_plan *plan,
                              const unsigned *keep, unsigned nkeep, unsigned n)
{
    int fd = -1;
    for (unsigned k = 0; k < nkeep && fd < 0; k++) {
        if (plan->region_win[k] == -1 - (int)n) {
            fd = mi->regions[keep[k]].fd;
            mi->regions[keep[k]].fd = -1;  /* handed to the window */
        }
    }
    return fd;
}

/* Enter the kept regions of @mi into @d's table: a region the plan puts in old window
 * i goes into d's window oldidx[i], one in new window n into newidx[n]. With @job,
 * each region's gpa is recorded for a rollback. */
static void table_add_kept(struct srv_device *d, const struct vp_memory_info *mi,
                           const struct srv_add_plan *plan, const unsigned *keep,
                           unsigned nkeep, const int *oldidx, const int *newidx,
                           struct srv_job *job)
{
    for (unsigned k = 0; k < nkeep; k++) {
        const struct vp_region *r = &mi->regions[keep[k]];
        int w = plan->region_win[k] >= 0 ? oldidx[plan->region_win[k]]
                                         : newidx[-1 - plan->region_win[k]];
        d->regions[d->nregions++] = (struct srv_region){ r->gpa, r->size, r->mmap_offset,
                                                         (unsigned)w };
        d->wins[w].refs++;
        if (job)
            job->added_gpa[job->nadded++] = r->gpa;
    }
}

static void mem_add_rollback(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    for (unsigned i = 0; i < job->nadded; i++)
        remove_region(dev, job->added_gpa[i]);
    job->nadded = 0;
    srv_device_drop_unused_windows(dev);
    bool any = false;
    for (int i = 0; i < VP_MAX_WINDOWS; i++)
        any |= dev->wins[i].used;
    if (!any && dev->nregions == 0)
        srv_device_set_bar_size(dev, 0);  /* nothing placed: the next memory sizes the BAR afresh */
}

static void mem_add_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                          const char *fail)
{
    struct srv_job *job = opaque;
    (void)dev;
    if (job_ack_failed(job, ack, fail, VP_ACK_ADD_DONE, "the guest driver refused the memory",
                       mem_add_rollback))
        return;
    job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
}

static void mem_add_send(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    if (job->failed) {
        mem_add_rollback(job);
        job_fail(job, "%s", job->fail);
        return;
    }
    if (dev->broken) {
        mem_add_rollback(job);
        job_fail_if_broken(job);
        return;
    }
    srv_device_write_windows(dev);
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    cq_mem_msg(m, VP_OP_ADD);
    for (unsigned i = 0; i < job->nadded; i++) {
        int r = find_region(dev, job->added_gpa[i]);
        if (r >= 0)
            cq_add_region(dev, m, &dev->regions[r]);
    }
    srv_cq_submit(dev, m, mem_add_acked, job);
    g_free(m);
}

static void mem_plug_done(struct srv_device *dev, void *opaque, int ret, const char *reason)
{
    struct srv_job *job = opaque;
    (void)dev;
    if (ret < 0 && !job->failed) {
        job->failed = true;
        g_snprintf(job->fail, sizeof(job->fail),
                   "device host could not plug the vhost-pci device: %s", reason);
    }
    if (--job->waiting == 0)
        mem_add_send(job);
}

static void clone_start(struct srv_job *job, const struct srv_add_plan *plan,
                        const unsigned *keep, unsigned nkeep, const struct srv_file_id *files,
                        const int *oldmap, unsigned nold);

static void mem_add_start(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    struct vp_memory_info *mi = job->mi;
    vp_error err = { "" };

    if (job_fail_if_broken(job))
        return;
    struct srv_file_id files[VP_MAX_REGIONS];
    unsigned keep[VP_MAX_REGIONS], nkeep = 0;
    for (unsigned i = 0; i < mi->nregions; i++) {
        const struct vp_region *r = &mi->regions[i];
        int e = file_id(r->fd, &files[i]);
        if (e < 0) {
            job_fail(job, "region %u: fstat: %s", i, g_strerror(-e));
            return;
        }
        int t = find_region(dev, r->gpa);
        if (t >= 0) {
            const struct srv_region *x = &dev->regions[t];
            const struct srv_window *w = &dev->wins[x->win];
            if (x->size == r->size && x->mmap_offset == r->mmap_offset &&
                w->file.dev == files[i].dev && w->file.ino == files[i].ino)
                continue;  /* already in the table (another connection of this VM) */
        }
        keep[nkeep++] = i;
    }
    if (nkeep == 0) {
        job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
        return;
    }
    struct vp_region table[VP_MAX_REGIONS], add[VP_MAX_REGIONS];
    for (unsigned i = 0; i < dev->nregions; i++)
        table[i] = (struct vp_region){ dev->regions[i].gpa, dev->regions[i].size,
                                       dev->regions[i].mmap_offset, -1 };
    struct srv_file_id kfiles[VP_MAX_REGIONS];
    for (unsigned k = 0; k < nkeep; k++) {
        add[k] = mi->regions[keep[k]];
        kfiles[k] = files[keep[k]];
    }
    if (vp_validate_no_overlap(table, dev->nregions, add, nkeep, &err) < 0) {
        job_fail(job, "%s", err.msg);
        return;
    }
    if (dev->nregions + nkeep > VP_MAX_REGIONS) {
        job_fail(job, "too many regions: a device has at most %d", VP_MAX_REGIONS);
        return;
    }
    struct srv_win_pos old[VP_MAX_WINDOWS];
    int oldmap[VP_MAX_WINDOWS];
    unsigned nold = 0;
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        if (!dev->wins[i].used)
            continue;
        old[nold] = (struct srv_win_pos){ dev->wins[i].file, dev->wins[i].bar_offset };
        oldmap[nold++] = i;
    }
    struct srv_add_plan *plan = g_new0(struct srv_add_plan, 1);
    if (srv_plan_add(old, nold, dev->bar_size, kfiles, nkeep, plan, &err) < 0) {
        g_free(plan);
        job_fail(job, "%s", err.msg);
        return;
    }
    for (unsigned k = 0; k < nkeep; k++) {
        const struct vp_region *r = &mi->regions[keep[k]];
        if (plan->region_win[k] < 0)
            continue;
        uint64_t wsize = old[plan->region_win[k]].file.size;
        if (!vp_range_ok(r->mmap_offset, r->size, wsize)) {
            g_free(plan);
            job_fail(job, "region %u [mmap_offset 0x%" PRIx64 ", +0x%" PRIx64 ") lies beyond its "
                     "file's window of 0x%" PRIx64 " bytes (the file grew since it was plugged)",
                     keep[k], r->mmap_offset, r->size, wsize);
            return;
        }
    }
    if (plan->clone) {
        clone_start(job, plan, keep, nkeep, kfiles, oldmap, nold);
        g_free(plan);
        return;
    }
    if (dev->bar_size == 0)
        srv_device_set_bar_size(dev, plan->bar_size);

    job->waiting = 1;  /* held until every plug below has been started */
    if (!dev->control_plugged && !dev->control_plugging) {
        job->waiting++;
        srv_device_plug_control(dev, mem_plug_done, job);
    }
    int newidx[VP_MAX_WINDOWS];
    for (unsigned n = 0; n < plan->nnew; n++) {
        int fd = take_new_window_fd(mi, plan, keep, nkeep, n);
        job->waiting++;
        newidx[n] = srv_device_add_window(dev, &plan->newwin[n], fd, plan->new_offset[n],
                                          mem_plug_done, job, &err);
        if (newidx[n] < 0) {
            job->waiting--;
            if (!job->failed) {
                job->failed = true;
                g_strlcpy(job->fail, err.msg, sizeof(job->fail));
            }
        }
    }
    if (!job->failed)
        table_add_kept(dev, mi, plan, keep, nkeep, oldmap, newidx, job);
    g_free(plan);
    mem_plug_done(dev, job, 0, "");  /* drop the hold */
}

/* ------------------------------ cloning (spec 1.6.1.2) ------------------------------ */

static void clone_replay_acked(struct srv_device *nd, void *opaque, const struct vp_cq_msg *ack,
                               const char *fail);
static void clone_progress(struct srv_job *job);

static void clone_cleanup(struct srv_job *job)
{
    struct clone_state *c = job->clone;
    job->clone = NULL;
    if (!c)
        return;
    if (c->nd) {
        c->nd->on_driver_ok = NULL;
        c->nd->clone_of = NULL;
        if (!c->nd->in_table)
            srv_device_destroy(c->nd, "its clone operation ended");
        srv_device_unref(c->nd);
    }
    g_free(c);
}

static void clone_fail(struct srv_job *job, const char *why)
{
    struct clone_state *c = job->clone;
    struct srv_device *dev = job->dev;
    char reason[300];
    g_strlcpy(reason, why, sizeof(reason));
    g_warning("device %s: cloning failed: %s", dev->uuid_str, reason);
    /* The old device's frontends were stopped: start them again where they stopped. */
    if (c->old_frontends_deleted && c->nd && !dev->dead) {
        for (guint i = 0; i < c->nd->frontends->len; i++) {
            struct srv_frontend *nfe = g_ptr_array_index(c->nd->frontends, i);
            struct srv_frontend *ofe = srv_device_find_frontend(dev, nfe->device_id, NULL);
            if (!ofe)
                continue;
            for (uint32_t q = 0; q < ofe->nvirtqs; q++)
                ofe->virtqs[q].last_avail_idx = nfe->virtqs[q].last_avail_idx;
            cq_dev_submit(dev, ofe, VP_OP_ADD, clone_replay_acked, NULL);
        }
    }
    clone_cleanup(job);
    job_fail(job, "%s", reason);
}

static void clone_step_done(struct srv_job *job, bool failed, const char *why, bool fatal)
{
    struct clone_state *c = job->clone;
    if (!c || job->finishing)
        return;
    if (failed && fatal && !c->failed) {
        c->failed = true;
        g_strlcpy(c->reason, why, sizeof(c->reason));
    } else if (failed) {
        g_warning("device %s: cloning: %s", job->dev->uuid_str, why);
    }
    if (c->waiting)
        c->waiting--;
    if (c->waiting == 0)
        clone_progress(job);
}

static void clone_plug_done(struct srv_device *nd, void *opaque, int ret, const char *reason)
{
    struct srv_job *job = opaque;
    (void)nd;
    char why[300];
    g_snprintf(why, sizeof(why), "device host could not plug the cloned vhost-pci device: %s",
               reason);
    clone_step_done(job, ret < 0, why, true);
}

static void clone_driver_ok(struct srv_device *nd, void *opaque)
{
    struct srv_job *job = opaque;
    (void)nd;
    if (!job->clone)
        return;
    job->clone->driver_ok = true;
    if (job->clone->waiting == 0)
        clone_progress(job);
}

static void clone_del_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                            const char *fail)
{
    struct srv_job *job = opaque;
    (void)dev;
    struct clone_state *c = job->clone;
    if (!c || job->finishing)
        return;
    if (ack && ack->u.ack.result == VP_ACK_DEL_DONE) {
        struct srv_frontend *fe = srv_device_find_frontend(c->nd, ack->device_id, NULL);
        for (uint32_t p = 0; fe && p < ack->u.ack.npos; p++)
            for (uint32_t q = 0; q < fe->nvirtqs; q++)
                if (fe->virtqs[q].index == ack->u.ack.pos[p].index)
                    fe->virtqs[q].last_avail_idx = ack->u.ack.pos[p].last_avail_idx;
        clone_step_done(job, false, NULL, false);
    } else {
        char why[300];
        g_snprintf(why, sizeof(why), "old device did not stop frontend %" PRIu64 ": %s",
                   ack ? ack->device_id : 0, fail ? fail : driver_reason(ack, "DEL_FAIL"));
        clone_step_done(job, true, why, false);
    }
}

static void clone_replay_acked(struct srv_device *nd, void *opaque, const struct vp_cq_msg *ack,
                               const char *fail)
{
    struct srv_job *job = opaque;
    (void)nd;
    if (!job)
        return;  /* fire-and-forget re-add on the old device */
    bool bad = fail || (ack->type != VP_MSG_FEATURE_BITS_ACK &&
                        ack->u.ack.result != VP_ACK_ADD_DONE);
    char why[300];
    g_snprintf(why, sizeof(why), "clone refused %s: %s",
               ack ? vp_msg_type_name(ack->type) : "a message",
               fail ? fail : driver_reason(ack, "ADD_FAIL"));
    /* Only the memory decides whether the clone works; the rest is logged. */
    clone_step_done(job, bad, why, ack && ack->type == VP_MSG_MEMORY_INFO_ACK);
}

static void clone_swap(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    struct clone_state *c = job->clone;
    struct srv_device *nd = c->nd;
    struct vp_server *srv = dev->srv;
    g_message("device %s: cloned: BAR 0x%" PRIx64 " -> 0x%" PRIx64 ", control function devfn "
              "0x%x -> 0x%x", dev->uuid_str, dev->bar_size, nd->bar_size, dev->devfn,
              nd->devfn);
    nd->clone_of = NULL;
    nd->counters.clones = dev->counters.clones + 1;
    nd->closing = dev->closing;
    /* Later requests move to the clone. */
    GList *rest = NULL;
    for (GList *l = dev->jobs.head; l; l = l->next)
        if (l->data != job)
            rest = g_list_append(rest, l->data);
    for (GList *l = rest; l; l = l->next) {
        struct srv_job *j = l->data;
        g_queue_remove(&dev->jobs, j);
        j->dev = nd;
        g_queue_push_tail(&nd->jobs, j);
    }
    g_list_free(rest);
    if (dev->in_table) {
        dev->in_table = false;
        srv_device_ref(dev);
        g_hash_table_remove(srv->devices, dev->uuid_str);
        srv_device_publish(nd);
    }
    srv_device_ref(dev);
    job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);  /* the client sees only this */
    srv_device_destroy(dev, "replaced by its clone");
    srv_device_unref(dev);
    srv_device_unref(dev);
    jobs_kick(nd);
}

static void clone_progress(struct srv_job *job)
{
    struct clone_state *c = job->clone;
    struct srv_device *dev = job->dev;
    struct srv_device *nd = c->nd;
    if (job->finishing)
        return;
    if (c->failed) {
        char why[300];
        g_strlcpy(why, c->reason, sizeof(why));
        clone_fail(job, why);
        return;
    }
    if (!c->plugs_done) {
        c->plugs_done = true;
        srv_device_write_windows(nd);
    }
    if (!c->driver_ok)
        return;  /* clone_driver_ok() continues */
    if (!c->dels_done) {
        /* Stop the frontends on the old device, collecting last_avail_idx. */
        c->dels_done = true;
        c->old_frontends_deleted = true;
        if (dev->driver_ok && !dev->broken) {
            c->waiting++;  /* hold */
            for (guint i = 0; i < dev->frontends->len; i++) {
                c->waiting++;
                cq_dev_submit(dev, g_ptr_array_index(dev->frontends, i), VP_OP_DEL,
                              clone_del_acked, job);
            }
            clone_step_done(job, false, NULL, false);  /* drop the hold */
            return;
        }
    }
    if (!c->replay_sent) {
        /* Initialise the clone like a new device: memory, features, frontends. */
        c->replay_sent = true;
        struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
        c->waiting++;  /* hold */
        cq_mem_msg(m, VP_OP_ADD);
        for (unsigned i = 0; i < nd->nregions; i++)
            cq_add_region(nd, m, &nd->regions[i]);
        c->waiting++;
        srv_cq_submit(nd, m, clone_replay_acked, job);
        g_free(m);
        if (nd->feat_state != FEAT_NONE) {
            c->waiting++;
            cq_features_submit(nd, nd->features_accepted, clone_replay_acked, job);
        }
        for (guint i = 0; i < nd->frontends->len; i++) {
            c->waiting++;
            cq_dev_submit(nd, g_ptr_array_index(nd->frontends, i), VP_OP_ADD,
                          clone_replay_acked, job);
        }
        clone_step_done(job, false, NULL, false);  /* drop the hold */
        return;
    }
    clone_swap(job);
}

static void clone_start(struct srv_job *job, const struct srv_add_plan *plan,
                        const unsigned *keep, unsigned nkeep, const struct srv_file_id *files,
                        const int *oldmap, unsigned nold)
{
    struct srv_device *dev = job->dev;
    struct vp_memory_info *mi = job->mi;
    vp_error err = { "" };
    (void)files;
    struct srv_device *nd = srv_device_new(dev->srv, dev->uuid, &err);
    if (!nd) {
        job_fail(job, "cannot clone the vhost-pci device: %s", err.msg);
        return;
    }
    g_info("device %s: memory does not fit the BAR (0x%" PRIx64 "): cloning with BAR 0x%" PRIx64,
           dev->uuid_str, dev->bar_size, plan->bar_size);
    struct clone_state *c = g_new0(struct clone_state, 1);
    job->clone = c;
    c->nd = nd;
    nd->clone_of = dev;
    srv_device_set_bar_size(nd, plan->bar_size);
    nd->features_offered = dev->features_offered;
    nd->features_accepted = dev->features_accepted;
    nd->feat_state = dev->feat_state == FEAT_NONE ? FEAT_NONE : FEAT_SETTLED;
    nd->vectors = dev->vectors;
    for (guint i = 0; i < dev->frontends->len; i++)
        g_ptr_array_add(nd->frontends, frontend_copy(g_ptr_array_index(dev->frontends, i)));
    nd->on_driver_ok = clone_driver_ok;
    nd->on_driver_ok_opaque = job;

    c->waiting = 1;  /* hold */
    c->waiting++;
    srv_device_plug_control(nd, clone_plug_done, job);
    int map_old[VP_MAX_WINDOWS], map_new[VP_MAX_WINDOWS];
    for (unsigned k = 0; k < nold; k++) {
        const struct srv_window *w = &dev->wins[oldmap[k]];
        int fd = fcntl(w->fd, F_DUPFD_CLOEXEC, 3);
        c->waiting++;
        map_old[k] = srv_device_add_window(nd, &w->file, fd, plan->clone_offset[k],
                                           clone_plug_done, job, &err);
        if (map_old[k] < 0)
            clone_step_done(job, true, err.msg, true);
    }
    for (unsigned n = 0; n < plan->nnew; n++) {
        int fd = take_new_window_fd(mi, plan, keep, nkeep, n);
        c->waiting++;
        map_new[n] = srv_device_add_window(nd, &plan->newwin[n], fd, plan->clone_offset[nold + n],
                                           clone_plug_done, job, &err);
        if (map_new[n] < 0)
            clone_step_done(job, true, err.msg, true);
    }
    if (job->clone && !c->failed) {
        for (unsigned i = 0; i < dev->nregions; i++) {
            struct srv_region r = dev->regions[i];
            unsigned k = 0;
            while (k < nold && oldmap[k] != (int)r.win)
                k++;
            r.win = (unsigned)map_old[k];
            nd->regions[nd->nregions++] = r;
            nd->wins[r.win].refs++;
        }
        table_add_kept(nd, mi, plan, keep, nkeep, map_old, map_new, NULL);
    }
    if (job->clone)
        clone_step_done(job, false, NULL, false);  /* drop the hold */
}

/* ------------------------------ MEMORY_INFO(DEL) ------------------------------ */

static void mem_del_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                          const char *fail)
{
    struct srv_job *job = opaque;
    if (job_ack_failed(job, ack, fail, VP_ACK_DEL_DONE,
                       "the guest driver refused to remove the memory", NULL))
        return;
    for (unsigned i = 0; i < job->mi->nregions; i++)
        remove_region(dev, job->mi->regions[i].gpa);
    srv_device_drop_unused_windows(dev);
    job_finish(job, VP_ACK_DEL_DONE, NULL, NULL);
}

static void mem_del_start(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    struct vp_memory_info *mi = job->mi;
    if (job_fail_if_broken(job))
        return;
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    cq_mem_msg(m, VP_OP_DEL);
    for (unsigned i = 0; i < mi->nregions; i++) {
        const struct vp_region *r = &mi->regions[i];
        int t = find_region(dev, r->gpa);
        if (t < 0 || dev->regions[t].size != r->size) {
            g_free(m);
            job_fail(job, "region gpa 0x%" PRIx64 " size 0x%" PRIx64 " is not in the memory "
                     "table of this vhost-pci device", r->gpa, r->size);
            return;
        }
        for (unsigned k = 0; k < i; k++) {
            if (mi->regions[k].gpa == r->gpa) {
                g_free(m);
                job_fail(job, "region gpa 0x%" PRIx64 " is listed twice", r->gpa);
                return;
            }
        }
        cq_add_region(dev, m, &dev->regions[t]);
    }
    srv_cq_submit(dev, m, mem_del_acked, job);
    g_free(m);
}

/* ------------------------------ FEATURE_BITS ------------------------------ */

static void features_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                           const char *fail)
{
    struct srv_job *job = opaque;
    if (fail) {
        job_fail(job, "%s", fail);
        return;
    }
    uint64_t accepted = ack->u.ack.features;
    if (accepted & ~job->features) {
        dev->counters.bad_acks++;
        dev->srv->counters.bad_messages++;
        g_warning("device %s: guest driver accepted feature bits 0x%" PRIx64 " that were not "
                  "offered (0x%" PRIx64 "); ignoring them", dev->uuid_str,
                  accepted & ~job->features, job->features);
        accepted &= job->features;
    }
    dev->features_offered = job->features;
    dev->features_accepted = accepted;
    struct vp_ack a;
    fill_ack(job, &a, VP_ACK_ADD_DONE, NULL);
    a.feature_bits = accepted;
    if (accepted == job->features) {
        dev->feat_state = FEAT_SETTLED;
        job_finish(job, VP_ACK_ADD_DONE, NULL, &a);
        return;
    }
    /* Spec 1.5.1.2: wait for the client's FEATURE_BITS_ACK (renegotiation round). */
    g_message("device %s: guest driver accepted 0x%" PRIx64 " of 0x%" PRIx64 ": waiting for the "
              "client to renegotiate", dev->uuid_str, accepted, job->features);
    job_reply(job, &a);
    dev->feat_state = FEAT_RENEGOTIATING;
    job->phase = PH_RENEG;
    if (job->timer)
        g_source_remove(job->timer);
    job->timer = g_timeout_add(dev->srv->timeout_ms ? dev->srv->timeout_ms : 1, job_timeout, job);
}

static void features_start(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    if (job_fail_if_broken(job))
        return;
    cq_features_submit(dev, job->features, features_acked, job);
}

/* ------------------------------ DEVICE_INFO(ADD) ------------------------------ */

static void dev_add_rollback(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    guint idx;
    if (job->new_fe && srv_device_find_frontend(dev, job->new_fe->device_id, &idx) == job->new_fe)
        g_ptr_array_remove_index(dev->frontends, idx);  /* frees it */
    job->new_fe = NULL;
    for (unsigned i = 0; i < job->nfresh; i++)
        srv_vector_free(&dev->vectors, job->fresh_vec[i]);
    job->nfresh = 0;
    if (job->old_fe) {
        g_ptr_array_add(dev->frontends, job->old_fe);
        job->old_fe = NULL;
    }
    vp_error err = { "" };
    if (srv_device_announce_vectors(dev, &err))
        g_warning("device %s: %s", dev->uuid_str, err.msg);
}

static void dev_add_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                          const char *fail)
{
    struct srv_job *job = opaque;
    if (job_ack_failed(job, ack, fail, VP_ACK_ADD_DONE, "the guest driver refused the device",
                       dev_add_rollback))
        return;
    struct srv_frontend *fe = job->new_fe;
    /* Vectors of queues the new info no longer has (with a call fd) go. */
    for (int v = 0; v < VP_MAX_VECTORS; v++) {
        const struct srv_vector *e = &dev->vectors.v[v];
        if (!e->used || e->device_id != fe->device_id)
            continue;
        bool keep = false;
        for (uint32_t q = 0; q < fe->nvirtqs; q++)
            keep |= fe->call_vector[q] == v;
        if (!keep)
            srv_vector_free(&dev->vectors, v);
    }
    srv_frontend_free(job->old_fe);
    job->old_fe = NULL;
    job->new_fe = NULL;
    vp_error err = { "" };
    if (srv_device_announce_vectors(dev, &err))
        g_warning("device %s: %s", dev->uuid_str, err.msg);
    job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
}

static void dev_add_start(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    struct vp_device_info *di = job->di;
    vp_error err = { "" };
    if (job_fail_if_broken(job))
        return;
    for (uint32_t i = 0; i < di->nvirtqs; i++) {
        const struct vp_virtq *q = &di->virtqs[i];
        const struct { const char *name; uint64_t gpa, len; } rings[3] = {
            { "descriptor table", q->desc, vp_vring_desc_size(q->num) },
            { "avail ring", q->avail, vp_vring_avail_size(q->num) },
            { "used ring", q->used, vp_vring_used_size(q->num) },
        };
        for (int k = 0; k < 3; k++) {
            if (!inside_regions(dev, rings[k].gpa, rings[k].len)) {
                job_fail(job, "virtqueue %u: %s at gpa 0x%" PRIx64 " (%" PRIu64 " bytes) is not "
                         "inside one memory region", q->index, rings[k].name, rings[k].gpa,
                         rings[k].len);
                return;
            }
        }
    }
    guint idx;
    struct srv_frontend *old = srv_device_find_frontend(dev, di->device_id, &idx);
    if (old && old->device_type != di->device_type) {
        job_fail(job, "device_id %" PRIu64 " is already a %s device", di->device_id,
                 vp_device_type_name(old->device_type));
        return;
    }
    struct srv_frontend *fe = g_new0(struct srv_frontend, 1);
    fe->device_type = di->device_type;
    fe->device_id = di->device_id;
    fe->owner_session = job->session_id ? job->session_id : (old ? old->owner_session : 0);
    fe->nvirtqs = di->nvirtqs;
    for (uint32_t i = 0; i < di->nvirtqs; i++) {
        fe->call_vector[i] = VP_NO_VECTOR;
        if (di->virtqs[i].call_fd < 0)
            continue;
        /* Keep the vector only when the call fd is the same open file (an update
         * that did not change it); a new eventfd needs a fresh number. */
        int v = -1;
        for (uint32_t q = 0; old && q < old->nvirtqs && v < 0; q++)
            if (old->virtqs[q].index == di->virtqs[i].index && old->call_vector[q] != VP_NO_VECTOR &&
                same_open_file(old->virtqs[q].call_fd, di->virtqs[i].call_fd))
                v = old->call_vector[q];
        if (v < 0) {
            v = srv_vector_alloc(&dev->vectors, di->device_id, di->virtqs[i].index);
            if (v >= 0)
                job->fresh_vec[job->nfresh++] = v;
        }
        if (v < 0) {
            for (unsigned k = 0; k < job->nfresh; k++)
                srv_vector_free(&dev->vectors, job->fresh_vec[k]);
            job->nfresh = 0;
            g_free(fe);
            job_fail(job, "no free doorbell vector for virtqueue %u: this vhost-pci device "
                     "has handed out all %d (vectors are never reused)", di->virtqs[i].index,
                     VP_MAX_VECTORS);
            return;
        }
        fe->call_vector[i] = (uint16_t)v;
    }
    for (uint32_t i = 0; i < di->nvirtqs; i++) {
        fe->virtqs[i] = di->virtqs[i];  /* the frontend takes the kick/call fds */
        di->virtqs[i].kick_fd = di->virtqs[i].call_fd = -1;
    }
    if (old)
        job->old_fe = g_ptr_array_steal_index(dev->frontends, idx);
    g_ptr_array_add(dev->frontends, fe);
    job->new_fe = fe;
    if (srv_device_announce_vectors(dev, &err) < 0) {
        dev_add_rollback(job);
        job_fail(job, "cannot announce the call eventfds: %s", err.msg);
        return;
    }
    cq_dev_submit(dev, fe, VP_OP_ADD, dev_add_acked, job);
}

/* ------------------------------ DEVICE_INFO(DEL) ------------------------------ */

static void dev_del_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                          const char *fail)
{
    struct srv_job *job = opaque;
    if (job_ack_failed(job, ack, fail, VP_ACK_DEL_DONE,
                       "the guest driver refused to remove the device", NULL))
        return;
    struct vp_ack a;
    fill_ack(job, &a, VP_ACK_DEL_DONE, NULL);
    a.npositions = MIN(ack->u.ack.npos, (uint32_t)VP_MAX_VIRTQS);
    for (uint32_t i = 0; i < a.npositions; i++) {
        a.positions[i].index = ack->u.ack.pos[i].index;
        a.positions[i].last_avail_idx = ack->u.ack.pos[i].last_avail_idx;
    }
    guint idx;
    if (srv_device_find_frontend(dev, job->di->device_id, &idx))
        g_ptr_array_remove_index(dev->frontends, idx);
    srv_vector_free_device(&dev->vectors, job->di->device_id);
    vp_error err = { "" };
    if (srv_device_announce_vectors(dev, &err))
        g_warning("device %s: %s", dev->uuid_str, err.msg);
    job_finish(job, VP_ACK_DEL_DONE, NULL, &a);
}

static void dev_del_start(struct srv_job *job)
{
    struct srv_device *dev = job->dev;
    struct vp_device_info *di = job->di;
    struct srv_frontend *fe = srv_device_find_frontend(dev, di->device_id, NULL);
    if (!fe || fe->device_type != di->device_type) {
        job_fail(job, "no %s frontend device %" PRIu64 " on this vhost-pci device",
                 vp_device_type_name(di->device_type), di->device_id);
        return;
    }
    if (job_fail_if_broken(job))
        return;
    cq_dev_submit(dev, fe, VP_OP_DEL, dev_del_acked, job);
}

/* ------------------------------ dispatch ------------------------------ */

static void job_start(struct srv_job *job)
{
    g_debug("device %s: starting %s", job->dev->uuid_str, job_names[job->kind]);
    switch (job->kind) {
    case JOB_MEM_ADD:
        mem_add_start(job);
        break;
    case JOB_MEM_DEL:
        mem_del_start(job);
        break;
    case JOB_FEATURES:
        features_start(job);
        break;
    case JOB_DEV_ADD:
        dev_add_start(job);
        break;
    case JOB_DEV_DEL:
        dev_del_start(job);
        break;
    case JOB_DESTROY: {
        struct srv_device *dev = job->dev;
        if (srv_sessions_of_uuid(dev->srv, dev->uuid) > 0) {
            dev->closing = false;
            if (dev->closing_timer)
                g_source_remove(dev->closing_timer);
            dev->closing_timer = 0;
            job_finish(job, VP_ACK_DEL_DONE, NULL, NULL);
        } else {
            srv_device_destroy(dev, "its last client connection closed");
        }
        break;
    }
    }
}

/* ------------------------------ socket requests ------------------------------ */

int srv_req_memory_info(struct srv_session *s, struct vp_msg *msg, vp_error *err)
{
    struct vp_server *srv = s->srv;
    uint64_t seq = msg->hdr.seq;
    struct vp_memory_info *mi = g_new0(struct vp_memory_info, 1);
    vp_memory_info_init(mi);
    int r = vp_decode_memory_info(msg, mi, err);
    if (r < 0) {
        g_free(mi);
        return r;  /* framing: the caller disconnects; msg still owns the fds */
    }
    uint64_t fail = mi->op == VP_OP_DEL ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL;
    vp_error verr = { "" };
    if (vp_validate_memory_info(mi, srv->validate_flags, &verr) < 0)
        goto reject;
    if (mi->op == VP_OP_ADD) {
        for (unsigned i = 0; i < mi->nregions; i++) {
            struct srv_file_id id = { 0, 0, 0 };
            int e = file_id(mi->regions[i].fd, &id);
            if (e < 0) {
                vp_fail(&verr, e, "region %u: fstat: %s", i, g_strerror(-e));
                goto reject;
            }
            if (srv_check_window_size(i, id.size, &verr) < 0)
                goto reject;
        }
    }
    struct srv_device *dev = srv_device_lookup(srv, s->uuid);
    if (dev && jobs_full(dev, &verr))
        goto reject;
    if (!dev && mi->op == VP_OP_DEL) {
        vp_fail(&verr, -ENODEV, "no vhost-pci device for this client_uuid");
        goto reject;
    }
    if (!dev) {
        dev = srv_device_new(srv, s->uuid, &verr);
        if (!dev)
            goto reject;
        srv_device_publish(dev);
        srv_device_unref(dev);  /* the table holds it */
    }
    struct srv_job *job = job_new(dev, mi->op == VP_OP_ADD ? JOB_MEM_ADD : JOB_MEM_DEL, s->id, seq);
    job->mi = mi;
    job_enqueue(job);
    return 0;

reject:
    vp_memory_info_close_fds(mi);
    g_free(mi);
    srv_reply_now(s, VP_MSG_MEMORY_INFO_ACK, seq, fail, verr.msg, NULL);
    return 0;
}

int srv_req_device_info(struct srv_session *s, struct vp_msg *msg, vp_error *err)
{
    struct vp_server *srv = s->srv;
    uint64_t seq = msg->hdr.seq;
    struct vp_device_info *di;
    int r = srv_decode_device_info(msg, &di, err);
    if (r < 0)
        return r;  /* framing: the caller disconnects; msg still owns the fds */
    uint64_t fail = di->op == VP_OP_DEL ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL;
    vp_error verr = { "" };
    struct srv_device *dev = srv_device_lookup(srv, s->uuid);
    if (vp_validate_device_info(di, &verr) < 0)
        goto reject;
    if (!dev) {
        vp_fail(&verr, -ENODEV, "no vhost-pci device for this client_uuid: send "
                "MEMORY_INFO(ADD) first");
        goto reject;
    }
    if (jobs_full(dev, &verr))
        goto reject;
    struct srv_job *job = job_new(dev, di->op == VP_OP_ADD ? JOB_DEV_ADD : JOB_DEV_DEL, s->id, seq);
    job->di = di;
    job_enqueue(job);
    return 0;

reject:
    vp_device_info_close_fds(di);
    srv_reply_now(s, VP_MSG_DEVICE_INFO_ACK, seq, fail, verr.msg, di);
    g_free(di);
    return 0;
}

int srv_req_feature_bits(struct srv_session *s, struct vp_msg *msg, vp_error *err)
{
    uint64_t bits = 0;
    int r = vp_decode_feature_bits(msg, &bits, err);
    if (r < 0)
        return r;
    struct srv_device *dev = srv_device_lookup(s->srv, s->uuid);
    if (!dev) {
        /* DESIGN 4, feature timing: no device yet, answer with what guestd supports. */
        struct vp_ack a;
        srv_ack_fill(&a, VP_ACK_ADD_DONE, NULL, NULL);
        a.feature_bits = bits & VP_NET_FEATURES;
        g_info("client %s: FEATURE_BITS 0x%" PRIx64 " before any device: accepted 0x%" PRIx64,
               s->uuid_str, bits, a.feature_bits);
        srv_reply(s->srv, s->id, VP_MSG_FEATURE_BITS_ACK, msg->hdr.seq, &a);
        return 0;
    }
    vp_error verr = { "" };
    if (jobs_full(dev, &verr)) {
        struct vp_ack a;
        srv_ack_fill(&a, VP_ACK_ADD_FAIL, verr.msg, NULL);
        srv_reply(s->srv, s->id, VP_MSG_FEATURE_BITS_ACK, msg->hdr.seq, &a);
        return 0;
    }
    struct srv_job *job = job_new(dev, JOB_FEATURES, s->id, msg->hdr.seq);
    job->features = bits;
    job_enqueue(job);
    return 0;
}

static void reneg_relay_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                              const char *fail)
{
    struct srv_job *job = opaque;
    if (fail) {
        g_warning("device %s: renegotiated FEATURE_BITS not delivered: %s", dev->uuid_str, fail);
    } else {
        uint64_t accepted = ack->u.ack.features & job->features;
        if (accepted != job->features)
            g_warning("device %s: guest driver accepted 0x%" PRIx64 " of the renegotiated 0x%"
                      PRIx64, dev->uuid_str, accepted, job->features);
        dev->features_accepted = accepted;
    }
    dev->feat_state = FEAT_SETTLED;
    job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);  /* already answered: no reply */
}

int srv_req_feature_bits_ack(struct srv_session *s, struct vp_msg *msg, vp_error *err)
{
    struct vp_ack ack;
    int r = vp_decode_ack(msg, &ack, err);
    if (r < 0)
        return r;
    struct srv_device *dev = srv_device_lookup(s->srv, s->uuid);
    struct srv_job *head = dev ? g_queue_peek_head(&dev->jobs) : NULL;
    if (!head || head->phase != PH_RENEG) {
        s->srv->counters.bad_messages++;
        g_warning("client %s: FEATURE_BITS_ACK seq %" PRIu64 " while no renegotiation is "
                  "pending; ignored", s->uuid_str, msg->hdr.seq);
        return 0;
    }
    if (ack.feature_bits & ~dev->features_accepted) {
        s->srv->counters.bad_messages++;
        g_warning("client %s: FEATURE_BITS_ACK 0x%" PRIx64 " has bits the device did not accept "
                  "(0x%" PRIx64 "); still waiting", s->uuid_str, ack.feature_bits,
                  dev->features_accepted);
        return 0;
    }
    if (head->reneg_relaying) {
        s->srv->counters.bad_messages++;
        g_warning("client %s: second FEATURE_BITS_ACK seq %" PRIu64 " ignored", s->uuid_str,
                  msg->hdr.seq);
        return 0;
    }
    g_message("device %s: client confirmed renegotiated features 0x%" PRIx64, dev->uuid_str,
              ack.feature_bits);
    if (ack.feature_bits == dev->features_accepted) {
        dev->feat_state = FEAT_SETTLED;
        job_finish(head, VP_ACK_ADD_DONE, NULL, NULL);
        return 0;
    }
    /* The frontend settled on fewer bits than the driver accepted: tell the driver
     * (no socket reply: FEATURE_BITS_ACK from a client is not answered). */
    head->reneg_relaying = true;
    head->features = ack.feature_bits;
    cq_features_submit(dev, ack.feature_bits, reneg_relay_acked, head);
    return 0;
}

static gboolean closing_deadline(gpointer data)
{
    struct srv_device *dev = data;
    dev->closing_timer = 0;
    if (srv_sessions_of_uuid(dev->srv, dev->uuid) == 0) {
        g_warning("device %s: its queued requests did not finish within the ack timeout "
                  "after the last connection closed", dev->uuid_str);
        srv_device_destroy(dev, "its last client connection closed");
    } else {
        dev->closing = false;
    }
    return G_SOURCE_REMOVE;
}

void srv_req_session_closed(struct vp_server *srv, uint64_t session_id, const uint8_t *uuid)
{
    struct srv_device *dev = srv_device_lookup(srv, uuid);
    if (!dev)
        return;
    /* A connection that closes without DEVICE_INFO(DEL) means DEL for its frontends. */
    for (guint i = 0; i < dev->frontends->len; i++) {
        struct srv_frontend *fe = g_ptr_array_index(dev->frontends, i);
        if (fe->owner_session != session_id)
            continue;
        fe->owner_session = 0;
        if (!dev->driver_ok || dev->broken)
            continue;  /* the driver never saw it / cannot answer: destroy covers it */
        struct srv_job *job = job_new(dev, JOB_DEV_DEL, 0, 0);
        job->di = g_new0(struct vp_device_info, 1);
        vp_device_info_init(job->di);
        job->di->op = VP_OP_DEL;
        job->di->device_type = fe->device_type;
        job->di->device_id = fe->device_id;
        g_info("device %s: implicit DEVICE_INFO(DEL) of %s %" PRIu64 " (connection closed)",
               dev->uuid_str, vp_device_type_name(fe->device_type), fe->device_id);
        job_enqueue(job);
    }
    if (srv_sessions_of_uuid(srv, uuid) > 0 || dev->closing)
        return;
    dev->closing = true;
    if (dev->driver_ok && !dev->broken && dev->nregions) {
        /* Let the driver stop using the memory before its windows are unplugged. */
        struct srv_job *job = job_new(dev, JOB_MEM_DEL, 0, 0);
        job->mi = g_new0(struct vp_memory_info, 1);
        vp_memory_info_init(job->mi);
        job->mi->op = VP_OP_DEL;
        for (unsigned i = 0; i < dev->nregions; i++)
            job->mi->regions[job->mi->nregions++] = (struct vp_region){
                dev->regions[i].gpa, dev->regions[i].size, dev->regions[i].mmap_offset, -1 };
        job_enqueue(job);
    }
    job_enqueue(job_new(dev, JOB_DESTROY, 0, 0));
    dev->closing_timer = g_timeout_add(srv->timeout_ms + 100, closing_deadline, dev);
}

/* ------------------------------ driver reset replay ------------------------------ */

/* Where the driver VM's used ring of @q says its device side stopped: used->idx,
 * read from the peer memory through the window file (the driver VM's ring: a new
 * guest driver resumes there, as vp_vring_dev_init resumes the used index). Returns
 * false when the ring is not inside the table or cannot be read. */
static bool read_used_idx(struct srv_device *dev, const struct vp_virtq *q, uint16_t *out)
{
    uint64_t gpa = q->used + 2;  /* struct vring_used { le16 flags; le16 idx; ... } */
    if (gpa < q->used)
        return false;
    for (unsigned i = 0; i < dev->nregions; i++) {
        const struct srv_region *r = &dev->regions[i];
        if (gpa < r->gpa || !vp_range_ok(gpa - r->gpa, 2, r->size))
            continue;
        int fd = dev->wins[r->win].fd;
        uint64_t off = r->mmap_offset + (gpa - r->gpa);
        uint8_t b[2];
        if (fd < 0 || off > (uint64_t)INT64_MAX || pread(fd, b, 2, (off_t)off) != 2)
            return false;
        *out = vp_get_le16(b);
        return true;
    }
    return false;
}

static void replay_acked(struct srv_device *dev, void *opaque, const struct vp_cq_msg *ack,
                         const char *fail)
{
    (void)opaque;
    if (fail)
        g_info("device %s: state replay after a driver reset not delivered: %s",
               dev->uuid_str, fail);
    else if (ack->type != VP_MSG_FEATURE_BITS_ACK && ack->u.ack.result != VP_ACK_ADD_DONE)
        g_warning("device %s: new guest driver refused the replayed %s: %s", dev->uuid_str,
                  vp_msg_type_name(ack->type - 1), driver_reason(ack, "ADD_FAIL"));
}

void srv_req_replay(struct srv_device *dev)
{
    if (dev->nregions) {
        struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
        cq_mem_msg(m, VP_OP_ADD);
        for (unsigned i = 0; i < dev->nregions; i++)
            cq_add_region(dev, m, &dev->regions[i]);
        srv_cq_submit(dev, m, replay_acked, NULL);
        g_free(m);
    }
    if (dev->feat_state != FEAT_NONE)
        cq_features_submit(dev, dev->features_accepted, replay_acked, NULL);
    for (guint i = 0; i < dev->frontends->len; i++) {
        struct srv_frontend *fe = g_ptr_array_index(dev->frontends, i);
        /* The old driver died without DEL: its positions are the used indexes it
         * published (chains it took but never gave back are served again). */
        for (uint32_t q = 0; q < fe->nvirtqs; q++) {
            uint16_t idx;
            if (read_used_idx(dev, &fe->virtqs[q], &idx))
                fe->virtqs[q].last_avail_idx = idx;
        }
        g_info("device %s: replaying %s frontend %" PRIu64 " (%u virtqueue(s), queue 0 at %u)",
               dev->uuid_str, vp_device_type_name(fe->device_type), fe->device_id, fe->nvirtqs,
               fe->nvirtqs ? fe->virtqs[0].last_avail_idx : 0);
        cq_dev_submit(dev, fe, VP_OP_ADD, replay_acked, NULL);
    }
}
