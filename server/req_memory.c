/*
 * req_memory.c - MEMORY_INFO(ADD/DEL) jobs (req_memory.h).
 *
 * Security model: the regions come from a client that may be hostile. The payload
 * was decoded by vp_decode_memory_info() (counts, fd count, fd indexes) and is
 * validated here before any state changes: vp_validate_memory_info() (sizes, no
 * overflow, no overlap, each region inside its file, memfd seals), the window size
 * of every file (a power of two: QEMU aborts on any other BAR; or, when the host maps
 * parts of files, a page multiple served as power-of-two pieces), no overlap with the
 * device's table, the table's limits, and for a file already plugged that the region
 * still lies inside its window. The job owns every fd of the request until a window
 * takes it; what is left is closed when the job ends.
 */
#include "req_memory.h"

#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>

#include "clone.h"
#include "resources.h"
#include "cqmsg.h"
#include "server.h"
#include "tenant.h"

struct mem_job {
    struct srv_job base;
    struct srv_device *dev;              /* the device it runs on (borrowed) */
    struct vp_memory_info *mi;           /* owns its fds */
    unsigned waiting;                    /* outstanding plugs (ADD) */
    bool failed;
    char fail[300];
    unsigned nadded;                     /* regions entered (ADD), for a rollback */
    uint64_t added_gpa[VP_MAX_REGIONS];
    struct srv_clone *clone;             /* ADD that did not fit: the clone in progress */
};

static struct mem_job *mem_job(struct srv_job *job)
{
    return (struct mem_job *)job;
}

static void mem_job_free(struct srv_job *job)
{
    struct mem_job *mj = mem_job(job);
    srv_clone_cancel(mj->clone);
    if (mj->mi) {
        vp_memory_info_close_fds(mj->mi);
        g_free(mj->mi);
    }
    g_free(mj);
}

/* Fail @job when its device needs reset (nothing can be sent on its controlq); true
 * when it did. */
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

/* Whether the device host serves a file that is not a power of two as several
 * windows (QEMU >= 8.1, local; layout.h "Pieces"). */
static bool host_splits(struct vp_server *srv)
{
    return srv->host_ops->windows_at_offsets(srv->host);
}

/* ------------------------------ MEMORY_INFO(ADD) ------------------------------ */

static void mem_add_rollback(struct srv_job *job)
{
    struct mem_job *mj = mem_job(job);
    struct srv_device *dev = mj->dev;
    for (unsigned i = 0; i < mj->nadded; i++)
        srv_mem_remove_region(&dev->mem, mj->added_gpa[i]);
    mj->nadded = 0;
    srv_device_drop_unused_windows(dev);
    if (!srv_mem_any_window(&dev->mem) && dev->mem.table.n == 0)
        srv_device_set_bar_size(dev, 0);  /* nothing placed: the next memory sizes the BAR afresh */
}

static void mem_add_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_job *job = opaque;
    if (srv_job_ack_failed(job, ack, fail, VP_ACK_ADD_DONE, "the guest driver refused the memory",
                           mem_add_rollback))
        return;
    srv_job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
}

static void mem_add_send(struct srv_job *job)
{
    struct mem_job *mj = mem_job(job);
    struct srv_device *dev = mj->dev;
    if (mj->failed) {
        mem_add_rollback(job);
        srv_job_fail(job, "%s", mj->fail);
        return;
    }
    if (dev->cq.broken) {
        mem_add_rollback(job);
        srv_job_fail_if_broken(job, &dev->cq);
        return;
    }
    srv_device_write_windows(dev);
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    srv_cqmsg_mem(m, VP_OP_ADD);
    for (unsigned i = 0; i < mj->nadded; i++) {
        int r = vp_mt_find(&dev->mem.table, mj->added_gpa[i]);
        if (r >= 0)
            srv_cqmsg_add_region(m, &dev->mem.table.r[r]);
    }
    srv_cq_submit(&dev->cq, m, mem_add_acked, job);
    g_free(m);
}

static void mem_plug_done(struct srv_device *dev, void *opaque, int ret, const char *reason)
{
    struct mem_job *mj = opaque;
    (void)dev;
    if (ret < 0 && !mj->failed) {
        mj->failed = true;
        g_snprintf(mj->fail, sizeof(mj->fail),
                   "device host could not plug the vhost-pci device: %s", reason);
    }
    if (--mj->waiting == 0)
        mem_add_send(&mj->base);
}

/* The clone is ready (or failed): swap it in and answer. */
static void mem_clone_done(void *opaque, struct srv_device *nd, const char *fail)
{
    struct mem_job *mj = opaque;
    struct srv_job *job = &mj->base;
    mj->clone = NULL;
    if (!nd) {
        srv_job_fail(job, "%s", fail);
        return;
    }
    struct srv_device *old = srv_tenant_swap_device(job->tenant, nd);
    srv_job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);  /* the client sees only this */
    if (old) {
        srv_device_destroy(old, "replaced by its clone");
        srv_device_unref(old);
    }
}

/* Which regions of @mi are new to the device (not already in its table with the same
 * size, offset and file: another connection of this VM sent them)? Fills @files
 * (fstat of every region) and @keep; returns how many, or -1 after failing @job. */
static int new_regions(struct srv_job *job, struct srv_device *dev,
                       const struct vp_memory_info *mi, struct srv_file_id *files,
                       unsigned *keep)
{
    unsigned nkeep = 0;
    for (unsigned i = 0; i < mi->nregions; i++) {
        const struct vp_region *r = &mi->regions[i];
        int e = file_id(r->fd, &files[i]);
        if (e < 0) {
            srv_job_fail(job, "region %u: fstat: %s", i, g_strerror(-e));
            return -1;
        }
        int t = vp_mt_find(&dev->mem.table, r->gpa);
        if (t >= 0) {
            const struct vp_mt_region *x = &dev->mem.table.r[t];
            const struct srv_window *w = &dev->mem.wins[x->slot];
            if (x->size == r->size && x->file_offset == r->mmap_offset &&
                w->file.dev == files[i].dev && w->file.ino == files[i].ino)
                continue;  /* already in the table (another connection of this VM) */
        }
        keep[nkeep++] = i;
    }
    return (int)nkeep;
}

/* Check the kept regions against the table and plan their windows; NULL after
 * failing @job. */
static struct srv_add_plan *plan_regions(struct srv_job *job, struct srv_device *dev,
                                         const struct vp_memory_info *mi,
                                         const struct srv_file_id *files, const unsigned *keep,
                                         unsigned nkeep)
{
    vp_error err = { "" };
    struct vp_mt_region add[VP_MAX_REGIONS];
    struct srv_file_id kfiles[VP_MAX_REGIONS];
    for (unsigned k = 0; k < nkeep; k++) {
        const struct vp_region *r = &mi->regions[keep[k]];
        add[k] = (struct vp_mt_region){ .gpa = r->gpa, .size = r->size,
                                        .file_offset = r->mmap_offset };
        kfiles[k] = files[keep[k]];
    }
    /* No overlap with the table, room for them (the memory table's checks). */
    if (vp_mt_check_add(&dev->mem.table, add, nkeep, 0, NULL, &err) < 0) {
        srv_job_fail(job, "%s", err.msg);
        return NULL;
    }
    struct srv_win_pos old[VP_MAX_WINDOWS];
    int oldmap[VP_MAX_WINDOWS];
    unsigned nold = srv_mem_used_windows(&dev->mem, old, oldmap);
    struct srv_add_plan *plan = g_new0(struct srv_add_plan, 1);
    if (srv_plan_add(old, nold, dev->mem.bar_size, kfiles, nkeep, host_splits(dev->srv), plan,
                     &err) < 0) {
        g_free(plan);
        srv_job_fail(job, "%s", err.msg);
        return NULL;
    }
    for (unsigned k = 0; k < nkeep; k++) {
        const struct vp_region *r = &mi->regions[keep[k]];
        if (plan->region_win[k] < 0)
            continue;
        uint64_t wsize = old[plan->region_win[k]].file.size;
        if (!vp_range_ok(r->mmap_offset, r->size, wsize)) {
            g_free(plan);
            srv_job_fail(job, "region %u [mmap_offset 0x%" PRIx64 ", +0x%" PRIx64 ") lies beyond "
                         "its file's window of 0x%" PRIx64 " bytes (the file grew since it was "
                         "plugged)", keep[k], r->mmap_offset, r->size, wsize);
            return NULL;
        }
    }
    return plan;
}

/* The client's PCI functions and exposed memory after @plan (12.4/12.5): within its
 * limits, else fail @job. A clone holds the old device's functions and memory until it
 * replaces it. */
static bool within_limits(struct srv_job *job, struct srv_device *dev,
                          const struct srv_add_plan *plan)
{
    unsigned nold = 0, nnew = 0;  /* functions: one per piece of a window */
    uint64_t old = 0, add = 0;
    for (int i = 0; i < VP_MAX_WINDOWS; i++) {
        if (dev->mem.wins[i].used) {
            nold += dev->mem.wins[i].npieces;
            old += dev->mem.wins[i].file.size;
        }
    }
    for (unsigned n = 0; n < plan->nnew; n++) {
        add += plan->newwin[n].size;
        nnew += srv_file_pieces(plan->newwin[n].size, NULL);
    }
    unsigned functions = plan->clone ? 2 + 2 * nold + nnew : 1 + nold + nnew;
    vp_error err = { "" };
    if (srv_limit_memory(dev->srv, job->tenant, functions, old + add, plan->clone ? old : 0,
                         &err) < 0) {
        srv_job_fail(job, "%s", err.msg);
        return false;
    }
    return true;
}

static void mem_add_start(struct srv_job *job)
{
    struct mem_job *mj = mem_job(job);
    struct srv_device *dev = mj->dev = ((struct srv_tenant *)job->tenant)->dev;
    struct vp_memory_info *mi = mj->mi;
    vp_error err = { "" };

    if (srv_job_fail_if_broken(job, &dev->cq))
        return;
    struct srv_file_id files[VP_MAX_REGIONS];
    unsigned keep[VP_MAX_REGIONS];
    int nkeep = new_regions(job, dev, mi, files, keep);
    if (nkeep < 0)
        return;
    if (nkeep == 0) {
        srv_job_finish(job, VP_ACK_ADD_DONE, NULL, NULL);
        return;
    }
    struct srv_add_plan *plan = plan_regions(job, dev, mi, files, keep, (unsigned)nkeep);
    if (!plan)
        return;
    if (!within_limits(job, dev, plan)) {
        g_free(plan);
        return;
    }
    if (plan->clone) {
        struct srv_clone_mem add = { plan, mi, keep, (unsigned)nkeep };
        char why[96];
        g_snprintf(why, sizeof(why), "memory does not fit the BAR (0x%" PRIx64 ")",
                   dev->mem.bar_size);
        if (srv_clone_start(&mj->clone, dev, &add, false, why, mem_clone_done, mj, &err) < 0)
            srv_job_fail(job, "cannot clone the vhost-pci device: %s", err.msg);
        g_free(plan);
        return;
    }
    if (dev->mem.bar_size == 0)
        srv_device_set_bar_size(dev, plan->bar_size);

    mj->waiting = 1;  /* held until every plug below has been started */
    if (!dev->control_plugged && !dev->control_plugging) {
        mj->waiting++;
        srv_device_plug_control(dev, mem_plug_done, mj);
    }
    int newidx[VP_MAX_WINDOWS];
    struct srv_win_pos old[VP_MAX_WINDOWS];
    int oldmap[VP_MAX_WINDOWS];
    srv_mem_used_windows(&dev->mem, old, oldmap);
    for (unsigned n = 0; n < plan->nnew; n++) {
        int fd = srv_mem_take_new_fd(mi, plan, keep, (unsigned)nkeep, n);
        mj->waiting++;
        newidx[n] = srv_device_add_window(dev, &plan->newwin[n], fd, plan->new_offset[n],
                                          mem_plug_done, mj, &err);
        if (newidx[n] < 0) {
            mj->waiting--;
            if (!mj->failed) {
                mj->failed = true;
                g_strlcpy(mj->fail, err.msg, sizeof(mj->fail));
            }
        }
    }
    if (!mj->failed)
        srv_mem_add_kept(&dev->mem, mi, plan, keep, (unsigned)nkeep, oldmap, newidx,
                         mj->added_gpa, &mj->nadded);
    g_free(plan);
    mem_plug_done(dev, mj, 0, "");  /* drop the hold */
}

/* ------------------------------ MEMORY_INFO(DEL) ------------------------------ */

static void mem_del_acked(void *opaque, const struct vp_cq_msg *ack, const char *fail)
{
    struct srv_job *job = opaque;
    struct mem_job *mj = mem_job(job);
    if (srv_job_ack_failed(job, ack, fail, VP_ACK_DEL_DONE,
                           "the guest driver refused to remove the memory", NULL))
        return;
    for (unsigned i = 0; i < mj->mi->nregions; i++)
        srv_mem_remove_region(&mj->dev->mem, mj->mi->regions[i].gpa);
    srv_device_drop_unused_windows(mj->dev);
    srv_job_finish(job, VP_ACK_DEL_DONE, NULL, NULL);
}

static void mem_del_start(struct srv_job *job)
{
    struct mem_job *mj = mem_job(job);
    struct srv_device *dev = mj->dev = ((struct srv_tenant *)job->tenant)->dev;
    struct vp_memory_info *mi = mj->mi;
    if (srv_job_fail_if_broken(job, &dev->cq))
        return;
    struct vp_cq_msg *m = g_new0(struct vp_cq_msg, 1);
    srv_cqmsg_mem(m, VP_OP_DEL);
    for (unsigned i = 0; i < mi->nregions; i++) {
        const struct vp_region *r = &mi->regions[i];
        int t = vp_mt_find(&dev->mem.table, r->gpa);
        if (t < 0 || dev->mem.table.r[t].size != r->size) {
            g_free(m);
            srv_job_fail(job, "region gpa 0x%" PRIx64 " size 0x%" PRIx64 " is not in the memory "
                         "table of this vhost-pci device", r->gpa, r->size);
            return;
        }
        for (unsigned k = 0; k < i; k++) {
            if (mi->regions[k].gpa == r->gpa) {
                g_free(m);
                srv_job_fail(job, "region gpa 0x%" PRIx64 " is listed twice", r->gpa);
                return;
            }
        }
        srv_cqmsg_add_region(m, &dev->mem.table.r[t]);
    }
    srv_cq_submit(&dev->cq, m, mem_del_acked, job);
    g_free(m);
}

static const struct srv_job_kind mem_add_kind = {
    .name = "MEMORY_INFO(ADD)", .type = VP_MSG_MEMORY_INFO, .op = VP_OP_ADD,
    .start = mem_add_start, .free = mem_job_free,
};
static const struct srv_job_kind mem_del_kind = {
    .name = "MEMORY_INFO(DEL)", .type = VP_MSG_MEMORY_INFO, .op = VP_OP_DEL,
    .start = mem_del_start, .free = mem_job_free,
};

/* ------------------------------ requests ------------------------------ */

static struct mem_job *mem_job_new(struct srv_tenant *t, struct vp_memory_info *mi,
                                   uint64_t session_id, uint64_t seq)
{
    struct mem_job *mj = g_new0(struct mem_job, 1);
    srv_job_init(&mj->base, mi->op == VP_OP_ADD ? &mem_add_kind : &mem_del_kind, t,
                 session_id, seq);
    mj->mi = mi;
    return mj;
}

/* Checks before the request is queued: payload, every file's size as a window. */
static int check_request(struct vp_server *srv, const struct vp_memory_info *mi, vp_error *err)
{
    if (vp_validate_memory_info(mi, srv->validate_flags, err) < 0)
        return -EINVAL;
    if (mi->op != VP_OP_ADD)
        return 0;
    for (unsigned i = 0; i < mi->nregions; i++) {
        struct srv_file_id id = { 0, 0, 0 };
        int e = file_id(mi->regions[i].fd, &id);
        if (e < 0)
            return vp_fail(err, e, "region %u: fstat: %s", i, g_strerror(-e));
        if (srv_check_window_size(i, id.size, host_splits(srv), err) < 0)
            return -EINVAL;
    }
    return 0;
}

int srv_req_memory_info(const struct srv_req *rq, struct vp_msg *msg, vp_error *err)
{
    struct vp_server *srv = rq->srv;
    struct srv_tenant *t = rq->tenant;
    struct vp_memory_info *mi = g_new0(struct vp_memory_info, 1);
    vp_memory_info_init(mi);
    int r = vp_decode_memory_info(msg, mi, err);
    if (r < 0) {
        g_free(mi);
        return r;  /* framing: the caller disconnects; msg still owns the fds */
    }
    uint64_t fail = mi->op == VP_OP_DEL ? VP_ACK_DEL_FAIL : VP_ACK_ADD_FAIL;
    vp_error verr = { "" };
    if (check_request(srv, mi, &verr) < 0)
        goto reject;
    if (t->dev && srv_jobs_full(&t->jobs, &verr))
        goto reject;
    if (!t->dev && mi->op == VP_OP_DEL) {
        vp_fail(&verr, -ENODEV, "no vhost-pci device for this client_uuid");
        goto reject;
    }
    if (!t->dev && (srv_limit_device(srv, rq->uid, &verr) < 0 ||
                    srv_tenant_create_device(t, rq->uid, &verr) < 0))
        goto reject;
    srv_job_enqueue(&t->jobs, &mem_job_new(t, mi, rq->session_id, rq->seq)->base);
    return 0;

reject:
    vp_memory_info_close_fds(mi);
    g_free(mi);
    srv_req_answer(rq, VP_MSG_MEMORY_INFO_ACK, fail, verr.msg, NULL);
    return 0;
}

void srv_req_memory_del_all(struct srv_tenant *t)
{
    struct srv_device *dev = t->dev;
    if (!dev || !dev->mem.table.n)
        return;
    struct vp_memory_info *mi = g_new0(struct vp_memory_info, 1);
    vp_memory_info_init(mi);
    mi->op = VP_OP_DEL;
    for (unsigned i = 0; i < dev->mem.table.n; i++)
        mi->regions[mi->nregions++] = (struct vp_region){
            dev->mem.table.r[i].gpa, dev->mem.table.r[i].size, dev->mem.table.r[i].file_offset, -1 };
    srv_job_enqueue(&t->jobs, &mem_job_new(t, mi, 0, 0)->base);
}
