/*
 * frontends.c - frontend devices and their doorbell vectors (frontends.h).
 */
#define G_LOG_DOMAIN "vp-server"
#include "frontends.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <unistd.h>

void srv_frontend_free(struct srv_frontend *fe)
{
    if (!fe)
        return;
    for (uint32_t i = 0; i < fe->nvirtqs && i < VP_MAX_VIRTQS; i++) {
        vp_close_fd(&fe->virtqs[i].kick_fd);
        vp_close_fd(&fe->virtqs[i].call_fd);
    }
    g_free(fe);
}

struct srv_frontend *srv_frontend_copy(const struct srv_frontend *fe)
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

struct srv_frontend *srv_frontends_find(GPtrArray *list, uint64_t device_id, guint *idx)
{
    for (guint i = 0; i < list->len; i++) {
        struct srv_frontend *fe = g_ptr_array_index(list, i);
        if (fe->device_id == device_id) {
            if (idx)
                *idx = i;
            return fe;
        }
    }
    return NULL;
}

/* Are two fds the same open file (kcmp KCMP_FILE)? False when unsure. */
static bool same_open_file(int a, int b)
{
    if (a < 0 || b < 0)
        return false;
    pid_t pid = getpid();
    return syscall(SYS_kcmp, pid, pid, KCMP_FILE, a, b) == 0;
}

int srv_frontend_assign_vectors(struct srv_frontend *fe, const struct srv_frontend *old,
                                struct srv_vectors *vt, int *fresh, unsigned *nfresh,
                                vp_error *err)
{
    unsigned first = *nfresh;
    for (uint32_t i = 0; i < fe->nvirtqs; i++) {
        const struct vp_virtq *q = &fe->virtqs[i];
        fe->call_vector[i] = VP_NO_VECTOR;
        if (q->call_fd < 0)
            continue;
        /* Keep the vector only when the call fd is the same open file (an update
         * that did not change it); a new eventfd needs a fresh number. */
        int v = -1;
        for (uint32_t k = 0; old && k < old->nvirtqs && v < 0; k++)
            if (old->virtqs[k].index == q->index && old->call_vector[k] != VP_NO_VECTOR &&
                same_open_file(old->virtqs[k].call_fd, q->call_fd))
                v = old->call_vector[k];
        if (v < 0) {
            v = srv_vector_alloc(vt, fe->device_id, q->index);
            if (v >= 0)
                fresh[(*nfresh)++] = v;
        }
        if (v < 0) {
            for (unsigned k = first; k < *nfresh; k++)
                srv_vector_free(vt, fresh[k]);
            *nfresh = first;
            return vp_fail(err, -ENOSPC, "no free doorbell vector for virtqueue %u: this "
                           "vhost-pci device has handed out all %u (vectors are never "
                           "reused)", q->index, vt->next);
        }
        fe->call_vector[i] = (uint16_t)v;
    }
    return 0;
}

void srv_frontend_release_stale_vectors(const struct srv_frontend *fe, struct srv_vectors *vt)
{
    for (int v = 0; v < VP_MAX_VECTORS; v++) {
        const struct srv_vector *e = &vt->v[v];
        if (!e->used || e->device_id != fe->device_id)
            continue;
        bool keep = false;
        for (uint32_t q = 0; q < fe->nvirtqs; q++)
            keep |= fe->call_vector[q] == v;
        if (!keep)
            srv_vector_free(vt, v);
    }
}

unsigned srv_frontends_call_fds(GPtrArray *list, const struct srv_vectors *vt,
                                int fds[VP_MAX_VECTORS])
{
    unsigned n = srv_vectors_count(vt);
    for (unsigned v = 0; v < n; v++) {
        fds[v] = -1;  /* a hole: no eventfd (the host keeps or fills it) */
        const struct srv_vector *e = &vt->v[v];
        if (!e->used)
            continue;
        struct srv_frontend *fe = srv_frontends_find(list, e->device_id, NULL);
        for (uint32_t q = 0; fe && q < fe->nvirtqs; q++)
            if (fe->virtqs[q].index == e->index && fe->virtqs[q].call_fd >= 0)
                fds[v] = fe->virtqs[q].call_fd;
    }
    return n;
}
