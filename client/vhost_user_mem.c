/*
 * vhost_user_mem.c - the vhost-user core's memory table (vhost_user_priv.h):
 * SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG, the translation of ring user addresses to
 * guest-physical ones, and memory changes waiting for the user's verdict
 * (ops->mem_added / mem_removed, vu_dev_reply_mem).
 *
 * Security model: regions come from the frontend (see vhost_user.c): no zero size,
 * no overflow of gpa+size, user address+size or mmap_offset+size, inside their file,
 * no overlap (protocol/vp_memtable.h), at most max_mem_slots; a running vring must
 * keep its memory across a change. An fd is owned by the message, then by the memory
 * change, then by the region; it is closed on refusal, removal and disconnect.
 */
#include "vhost_user_priv.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "vp_memtable.h"
#include "vp_vring.h"

/* ---- Memory table ---- */

static void vu_region_to_vp(const struct vu_region *r, struct vp_region *out)
{
    out->gpa = r->gpa;
    out->size = r->size;
    out->mmap_offset = r->mmap_offset;
    out->fd = r->fd;
}

/** @mem as the shared memory table (protocol/vp_memtable.h: target = the frontend's
 *  user address, file_offset = mmap_offset, slot = index in @mem), without entry @skip
 *  (UINT32_MAX: none). Overlap checks and translations are vp_mt_*'s on it. */
static void vu_mem_view(const struct vu_mem *mem, unsigned skip, struct vp_memtable *t)
{
    vp_mt_init(t, VP_MAX_REGIONS);
    for (unsigned i = 0; i < mem->n; i++)
        if (i != skip)
            t->r[t->n++] = (struct vp_mt_region){ mem->r[i].gpa, mem->r[i].size,
                                                  mem->r[i].uaddr, mem->r[i].mmap_offset, i };
}

/** Decode one 32-byte wire region and check it on its own (no fd, no table). */
static int vu_region_decode(struct vu_dev *dev, const char *what, const uint8_t *p,
                            struct vu_region *r)
{
    r->gpa = vp_get_le64(p);
    r->size = vp_get_le64(p + 8);
    r->uaddr = vp_get_le64(p + 16);
    r->mmap_offset = vp_get_le64(p + 24);
    r->fd = -1;
    if (r->size == 0)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 " has zero size", what, r->gpa);
    if (!vp_span_ok(r->gpa, r->size))
        return vu_err(dev, "%s: region guest address range 0x%" PRIx64 "+0x%" PRIx64
                      " overflows", what, r->gpa, r->size);
    if (!vp_span_ok(r->uaddr, r->size))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": user address range 0x%" PRIx64
                      "+0x%" PRIx64 " overflows", what, r->gpa, r->uaddr, r->size);
    if (!vp_span_ok(r->mmap_offset, r->size))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": mmap offset range 0x%" PRIx64
                      "+0x%" PRIx64 " overflows", what, r->gpa, r->mmap_offset, r->size);
    return 0;
}

/** Check @r's fd (a regular file or memfd that holds the region) and record its
 *  identity. Does not take the fd. */
static int vu_region_check_fd(struct vu_dev *dev, const char *what, struct vu_region *r,
                              int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": fstat: %s", what, r->gpa,
                      strerror(errno));
    if (!S_ISREG(st.st_mode))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": fd is not a regular file or memfd",
                      what, r->gpa);
    if (!vp_range_ok(r->mmap_offset, r->size, (uint64_t)st.st_size))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": mmap offset 0x%" PRIx64 "+0x%" PRIx64
                      " extends beyond its file (%lld bytes)", what, r->gpa, r->mmap_offset,
                      r->size, (long long)st.st_size);
    r->st_dev = st.st_dev;
    r->st_ino = st.st_ino;
    return 0;
}

/** Same region: every field the frontend gave and the same file. */
static bool vu_region_same(const struct vu_region *a, const struct vu_region *b)
{
    return a->gpa == b->gpa && a->size == b->size && a->uaddr == b->uaddr &&
           a->mmap_offset == b->mmap_offset && a->st_dev == b->st_dev &&
           a->st_ino == b->st_ino;
}

/** Check that @r overlaps no region of @mem other than index @skip (guest-physical
 *  and user ranges: vp_mt_check_regions with disjoint targets). */
static int vu_mem_check_overlap(struct vu_dev *dev, const char *what, const struct vu_mem *mem,
                                const struct vu_region *r, unsigned skip)
{
    struct vp_memtable t;
    vu_mem_view(mem, skip, &t);
    struct vp_mt_region c = { r->gpa, r->size, r->uaddr, r->mmap_offset, 0 };
    vp_error e = { "" };
    if (vp_mt_check_regions(t.r, t.n, &c, 1, VP_MT_DISJOINT_TARGETS, NULL, &e) < 0)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 " (user address 0x%" PRIx64 "; targets "
                      "are user addresses): %s", what, r->gpa, r->uaddr, e.msg);
    return 0;
}

static int vu_mem_find_gpa(const struct vu_mem *mem, uint64_t gpa)
{
    struct vp_memtable t;
    vu_mem_view(mem, UINT32_MAX, &t);
    return vp_mt_find(&t, gpa);
}

unsigned vu_mem_limit(const struct vu_dev *dev)
{
    return dev->cfg.max_mem_slots;
}

/**
 * Translate the user range [uaddr, uaddr+len) to guest-physical through @mem; the
 * range must lie inside one region (STYLE habit 6: a ring never spans regions).
 */
static int vu_translate(struct vu_dev *dev, const struct vp_memtable *t, uint32_t index,
                        const char *ring, uint64_t uaddr, uint64_t len, uint64_t align,
                        uint64_t *gpa)
{
    uint64_t g = 0;
    uint64_t got = vp_mt_translate_target(t, uaddr, len, &g);
    if (got == 0)
        return vu_err(dev, "vring %u: %s ring user address 0x%" PRIx64
                      " is outside every memory region", index, ring, uaddr);
    if (got < len) {
        int k = vp_mt_lookup(t, g);
        return vu_err(dev, "vring %u: %s ring at user address 0x%" PRIx64 " (%" PRIu64
                      " bytes) crosses the end of region gpa 0x%" PRIx64, index, ring,
                      uaddr, len, k >= 0 ? t->r[k].gpa : g);
    }
    if (g & (align - 1))
        return vu_err(dev, "vring %u: %s ring guest-physical address 0x%" PRIx64
                      " is not %" PRIu64 "-byte aligned", index, ring, g, align);
    *gpa = g;
    return 0;
}

int vu_vring_translate(struct vu_dev *dev, const struct vu_mem *mem, uint32_t index,
                              const struct vu_vring *q, uint32_t num, struct vp_virtq *out)
{
    /* Split-ring sizes (vp_vring.h); num 0: unknown yet, only the first byte counts. */
    uint64_t ld = num ? vp_vring_desc_size(num) : 1, la = num ? vp_vring_avail_size(num) : 1,
             lu = num ? vp_vring_used_size(num) : 1;
    struct vp_memtable t;
    vu_mem_view(mem, UINT32_MAX, &t);
    int ret = vu_translate(dev, &t, index, "descriptor", q->desc_user, ld, 16, &out->desc);
    if (!ret)
        ret = vu_translate(dev, &t, index, "avail", q->avail_user, la, 2, &out->avail);
    if (!ret)
        ret = vu_translate(dev, &t, index, "used", q->used_user, lu, 4, &out->used);
    return ret;
}

/** After a memory change: every running vring must still translate to the same
 *  guest-physical addresses through @mem. */
static int vu_mem_check_running(struct vu_dev *dev, const char *what, const struct vu_mem *mem)
{
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++) {
        const struct vu_vring *q = &dev->vq[i];
        if (!q->running)
            continue;
        struct vp_virtq before, after;
        if (vu_vring_translate(dev, &dev->mem, i, q, q->num, &before) < 0 ||
            vu_vring_translate(dev, mem, i, q, q->num, &after) < 0 ||
            before.desc != after.desc || before.avail != after.avail ||
            before.used != after.used)
            return vu_err(dev, "%s: the change would remove the memory of running vring %u",
                          what, i);
    }
    return 0;
}

void vu_mem_clear(struct vu_mem *mem)
{
    for (unsigned i = 0; i < mem->n; i++)
        vp_close_fd(&mem->r[i].fd);
    mem->n = 0;
}

void vu_job_clear(struct vu_mem_job *j)
{
    for (unsigned i = 0; i < j->nadd; i++)
        vp_close_fd(&j->add[i].fd);
    memset(j, 0, sizeof(*j));
    j->request = VU_NONE;
}

/* ---- Memory changes (ops->mem_added / mem_removed, vu_dev_reply_mem) ---- */

/** Start a job for @m's request; changes are added with vu_job_rem/vu_job_add. */
static void vu_job_begin(struct vu_dev *dev, const struct vu_msg *m)
{
    vu_job_clear(&dev->job);
    dev->job.request = m->request;
    dev->job.need_reply = vu_need_reply(dev, m);
}

static void vu_job_rem(struct vu_dev *dev, uint64_t gpa)
{
    dev->job.rem_gpa[dev->job.nrem++] = gpa;
}

/** Queue @r for adding; the job takes @m's fd @fdi. */
static void vu_job_add(struct vu_dev *dev, const struct vu_region *r, struct vu_msg *m,
                       unsigned fdi)
{
    struct vu_region *a = &dev->job.add[dev->job.nadd++];
    *a = *r;
    a->fd = m->fds[fdi];
    m->fds[fdi] = -1;
}

/** Refuse the current change of the job (with need_reply): reason in dev->err. */
static void vu_job_refuse(struct vu_dev *dev)
{
    dev->job.refused = true;
    vu_log(dev, VU_LOG_WARNING, "vhost-user: %s: failure reply", dev->err.msg);
}

/** Apply the current change with the verdict @result (0 accepts, -errno refuses;
 *  anything else nonzero refuses too). */
static void vu_job_apply(struct vu_dev *dev, struct vu_region *r, bool add, int result)
{
    struct vu_mem_job *j = &dev->job;
    const char *what = vu_request_name(j->request);
    if (result != 0) {
        if (result > 0)
            result = -EINVAL; /* not an errno: refused all the same */
        vu_err(dev, "%s: region gpa 0x%" PRIx64 " size 0x%" PRIx64 ": %s refused by the "
               "backend user (%s)", what, r->gpa, r->size, add ? "adding" : "removal",
               strerror(-result));
        if (j->need_reply) {
            vu_job_refuse(dev);
            if (add)
                vp_close_fd(&r->fd);
            return;
        }
        /* No REPLY_ACK: the frontend cannot be told and goes on as if it worked. */
        vu_log(dev, VU_LOG_WARNING, "vhost-user: %s; the frontend asked for no reply "
               "(REPLY_ACK), so it cannot be told: the change is applied as it believes",
               dev->err.msg);
    }
    if (add) {
        dev->mem.r[dev->mem.n++] = *r;
        r->fd = -1;
        return;
    }
    int i = vu_mem_find_gpa(&dev->mem, r->gpa);
    if (i < 0)
        return;
    struct vu_region old = dev->mem.r[i];
    dev->mem.r[i] = dev->mem.r[--dev->mem.n];
    vp_close_fd(&old.fd);
}

/**
 * Run the job from its current change on. Returns VU_DEFERRED while the user's verdict
 * on a change is outstanding (the table and the user's view stay consistent: nothing
 * else is read meanwhile), 0 when every change has one, VU_REFUSED when one was
 * refused (only with need_reply), -EPROTO when the device broke.
 */
static int vu_job_run(struct vu_dev *dev)
{
    struct vu_mem_job *j = &dev->job;
    const char *what = vu_request_name(j->request);
    while (j->next < j->nrem + j->nadd && !dev->broken) {
        bool add = j->next >= j->nrem;
        struct vu_region *r;
        if (add) {
            r = &j->add[j->next - j->nrem];
            /* Checked with the whole request; only an earlier refusal in the same
             * SET_MEM_TABLE (a region that stayed) can make these fail now. */
            int ret = vu_mem_check_overlap(dev, what, &dev->mem, r, UINT32_MAX);
            if (!ret && dev->mem.n >= vu_mem_limit(dev))
                ret = vu_err(dev, "%s: region gpa 0x%" PRIx64 ": too many regions (limit %u)",
                             what, r->gpa, vu_mem_limit(dev));
            if (ret < 0) {
                vu_job_refuse(dev);
                vp_close_fd(&r->fd);
                j->next++;
                continue;
            }
        } else {
            int i = vu_mem_find_gpa(&dev->mem, j->rem_gpa[j->next]);
            if (i < 0) {
                j->next++;
                continue;
            }
            r = &dev->mem.r[i];
        }
        int verdict = 0;
        int (*cb)(struct vu_dev *, const struct vp_region *, void *) =
            add ? dev->ops.mem_added : dev->ops.mem_removed;
        if (cb) {
            struct vp_region vr;
            vu_region_to_vp(r, &vr);
            j->in_callback = true;
            j->answered = false;
            dev->pending = j->request;
            int ret = cb(dev, &vr, dev->opaque);
            j->in_callback = false;
            if (dev->broken)
                break;
            if (ret == VU_DEFERRED && !j->answered)
                return VU_DEFERRED;
            dev->pending = VU_NONE;
            verdict = ret == VU_DEFERRED ? j->result : ret;
        }
        vu_job_apply(dev, r, add, verdict);
        j->next++;
    }
    bool refused = j->refused;
    vu_job_clear(j);
    dev->pending = VU_NONE;
    if (dev->broken)
        return -EPROTO;
    /* A refused addition that was to replace a removed region may leave a running
     * vring without memory (SET_MEM_TABLE only): nothing sane is left to serve. */
    for (uint32_t i = 0; i < dev->cfg.nqueues; i++) {
        const struct vu_vring *q = &dev->vq[i];
        struct vp_virtq v;
        if (q->running && vu_vring_translate(dev, &dev->mem, i, q, q->num, &v) < 0) {
            vu_err(dev, "%s: after the refused change running vring %u has no memory", what, i);
            vu_break(dev, EPROTO);
            return -EPROTO;
        }
    }
    return refused ? VU_REFUSED : 0;
}

/** A frontend set up for more queue pairs than configured is refused at its memory
 *  table (SET_MEM_TABLE, ADD_MEM_REG): the first request of its start that a frontend
 *  waits for (REPLY_ACK), so it reports a failed start in its own words. */
static int vu_check_excess(struct vu_dev *dev, const char *what)
{
    if (!dev->excess)
        return 0;
    return vu_err(dev, "%s: the frontend set up virtqueue %u, but this backend offers %u "
                  "queue pair(s): start it with at most %u (DPDK: queues=%u; QEMU: "
                  "-netdev vhost-user,queues=%u), or the backend with more", what,
                  dev->excess - 1, dev->cfg.nqueues / 2, dev->cfg.nqueues / 2,
                  dev->cfg.nqueues / 2, dev->cfg.nqueues / 2);
}

/** SET_MEM_TABLE: the whole table; applied as a difference to the current one. */
int vu_set_mem_table_exec(struct vu_dev *dev, struct vu_msg *m)
{
    static const char what[] = "SET_MEM_TABLE";
    if (vu_check_excess(dev, what) < 0)
        return -EINVAL;
    uint32_t n = vp_get_le32(m->payload);
    if (n == 0 || n > VU_MEM_TABLE_MAX)
        return vu_err(dev, "%s: %u regions (1..%u)", what, n, VU_MEM_TABLE_MAX);
    if (n > vu_mem_limit(dev))
        return vu_err(dev, "%s: %u regions, too many regions (limit %u)", what, n,
                      vu_mem_limit(dev));
    if (m->size != 8 + n * VU_REGION_SIZE)
        return vu_err(dev, "%s: payload size %u does not match %u regions (%u bytes)", what,
                      m->size, n, 8 + n * VU_REGION_SIZE);
    if (m->nfds != n)
        return vu_err(dev, "%s: wrong fd count: %u fds for %u regions", what, m->nfds, n);

    /* Build and check the candidate table; nothing is changed until it is valid. */
    struct vu_mem *cand = &dev->scratch;
    cand->n = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct vu_region r;
        int ret = vu_region_decode(dev, what, m->payload + 8 + i * VU_REGION_SIZE, &r);
        if (!ret)
            ret = vu_region_check_fd(dev, what, &r, m->fds[i]);
        if (!ret)
            ret = vu_mem_check_overlap(dev, what, cand, &r, UINT32_MAX);
        if (ret < 0)
            return ret;
        r.fd = -1; /* taken below, once everything is valid */
        cand->r[cand->n++] = r;
    }
    int ret = vu_mem_check_running(dev, what, cand);
    if (ret < 0)
        return ret;

    /* The regions not in the new table go, the new ones come (identical ones stay;
     * the fd of a region already present is closed by the dispatcher). */
    vu_job_begin(dev, m);
    for (unsigned i = 0; i < dev->mem.n; i++) {
        bool keep = false;
        for (unsigned j = 0; j < cand->n && !keep; j++)
            keep = vu_region_same(&dev->mem.r[i], &cand->r[j]);
        if (!keep)
            vu_job_rem(dev, dev->mem.r[i].gpa);
    }
    for (unsigned j = 0; j < cand->n; j++) {
        bool present = false;
        for (unsigned i = 0; i < dev->mem.n && !present; i++)
            present = vu_region_same(&dev->mem.r[i], &cand->r[j]);
        if (!present)
            vu_job_add(dev, &cand->r[j], m, j);
    }
    return vu_job_run(dev);
}

int vu_add_mem_reg_exec(struct vu_dev *dev, struct vu_msg *m)
{
    static const char what[] = "ADD_MEM_REG";
    if (vu_check_excess(dev, what) < 0)
        return -EINVAL;
    struct vu_region r;
    /* payload: u64 padding, then one region */
    int ret = vu_region_decode(dev, what, m->payload + 8, &r);
    if (!ret)
        ret = vu_region_check_fd(dev, what, &r, m->fds[0]);
    if (ret < 0)
        return ret;
    int i = vu_mem_find_gpa(&dev->mem, r.gpa);
    if (i >= 0 && vu_region_same(&dev->mem.r[i], &r)) {
        /* QEMU 7.2 with queues=N sends every ADD_MEM_REG N times (DESIGN section 8). */
        vu_log(dev, VU_LOG_DEBUG, "vhost-user: %s gpa 0x%" PRIx64 " again: already present",
               what, r.gpa);
        return 0; /* the dispatcher closes the duplicate fd */
    }
    ret = vu_mem_check_overlap(dev, what, &dev->mem, &r, UINT32_MAX);
    if (ret < 0)
        return ret;
    if (dev->mem.n >= vu_mem_limit(dev))
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 ": too many regions (limit %u)", what,
                      r.gpa, vu_mem_limit(dev));
    vu_job_begin(dev, m);
    vu_job_add(dev, &r, m, 0);
    return vu_job_run(dev);
}

int vu_rem_mem_reg_exec(struct vu_dev *dev, struct vu_msg *m)
{
    static const char what[] = "REM_MEM_REG";
    /* vhost-user.rst: identified by guest address, user address and size; the mmap
     * offset is ignored; an fd, if any, is closed unused (QEMU < 7.1 sent one). */
    struct vu_region r;
    int ret = vu_region_decode(dev, what, m->payload + 8, &r);
    if (ret < 0)
        return ret;
    int i = vu_mem_find_gpa(&dev->mem, r.gpa);
    if (i < 0) {
        /* Idempotent: QEMU 7.2 multi-queue repeats it once per queue pair. */
        vu_log(dev, VU_LOG_DEBUG, "vhost-user: %s gpa 0x%" PRIx64 ": no such region (repeat?)",
               what, r.gpa);
        return 0;
    }
    struct vu_region *cur = &dev->mem.r[i];
    if (cur->size != r.size || cur->uaddr != r.uaddr)
        return vu_err(dev, "%s: region gpa 0x%" PRIx64 " is 0x%" PRIx64 " bytes at user 0x%"
                      PRIx64 ", not 0x%" PRIx64 " at 0x%" PRIx64, what, r.gpa, cur->size,
                      cur->uaddr, r.size, r.uaddr);
    struct vu_mem *cand = &dev->scratch;
    *cand = dev->mem;
    cand->r[i] = cand->r[--cand->n];
    ret = vu_mem_check_running(dev, what, cand);
    if (ret < 0)
        return ret;
    vu_job_begin(dev, m);
    vu_job_rem(dev, r.gpa);
    return vu_job_run(dev);
}

int vu_dev_reply_mem(struct vu_dev *dev, int result)
{
    vu_enter(dev);
    struct vu_mem_job *j = &dev->job;
    if (dev->broken || j->request == VU_NONE || dev->pending != j->request) {
        vu_leave(dev);
        return -EINVAL;
    }
    if (j->in_callback) {
        /* From inside mem_added/mem_removed: vu_job_run() goes on when it returns. */
        if (j->answered) {
            vu_leave(dev);
            return -EINVAL;
        }
        j->answered = true;
        j->result = result;
        vu_leave(dev);
        return 0;
    }
    uint32_t request = j->request;
    bool need_reply = j->need_reply;
    bool add = j->next >= j->nrem;
    struct vu_region *r = NULL;
    if (add) {
        r = &j->add[j->next - j->nrem];
    } else {
        int i = vu_mem_find_gpa(&dev->mem, j->rem_gpa[j->next]);
        r = i >= 0 ? &dev->mem.r[i] : NULL;
    }
    dev->pending = VU_NONE;
    if (r)
        vu_job_apply(dev, r, add, result);
    j->next++;
    int ret = vu_job_run(dev);
    if (ret == VU_DEFERRED) {
        vu_leave(dev);
        return 0;
    }
    if (ret >= 0 && need_reply)
        ret = vu_reply_u64(dev, request, ret == VU_REFUSED ? 1 : 0);
    return vu_reply_done(dev, ret < 0 ? ret : 0);
}

unsigned vu_dev_get_regions(const struct vu_dev *dev, struct vp_region *out, unsigned max)
{
    for (unsigned i = 0; i < dev->mem.n && i < max; i++)
        vu_region_to_vp(&dev->mem.r[i], &out[i]);
    return dev->mem.n;
}
