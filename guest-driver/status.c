/*
 * status.c - the status socket (status.h).
 *
 * Security model: anyone who can connect to the socket can ask; the request is one
 * short line, read into a fixed buffer (longer input is refused), and the answer
 * never contains anything but numbers and escaped strings (json.c). libc only.
 */
#include "status.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "device.h"
#include "log.h"
#include "loop.h"

struct gd_status_client {
    struct gd_status *st;
    int fd;
    int watch;
    int timer;
    char in[64];
    size_t inlen;
    struct gd_json out;
    size_t outpos;
    bool writing;
};

struct gd_status {
    struct gd_loop *loop;
    struct gd_cp *cp;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int fd;
    int watch;
    uint64_t timeout_ns;          /* whole exchange of one client, from accept to close */
    struct gd_status_client *clients[GD_STATUS_MAX_CLIENTS];
};

/* ------------------------------- document ------------------------------- */

static void render_device(struct gd_json *j, const struct gd_device *d)
{
    gd_json_begin_object(j, NULL);
    gd_json_uint(j, "slot", d->slot);
    gd_json_uint(j, "status", d->status);
    char uuid[37];
    gd_uuid_format(d->layout.peer_uuid, uuid);
    gd_json_string(j, "peer_uuid", uuid);
    gd_json_uint(j, "bar_size", d->bar_size);
    gd_json_uint(j, "generation", d->generation);
    gd_json_uint(j, "features", d->features);
    gd_json_bool(j, "broken", d->broken);
    gd_json_string(j, "reason", d->reason);
    gd_json_uint(j, "acks_sent", d->acks_sent);
    gd_json_uint(j, "messages", d->messages);
    gd_json_begin_array(j, "windows");
    for (unsigned i = 0; i < d->nwin; i++) {
        const struct gd_window *w = &d->win[i];
        gd_json_begin_object(j, NULL);
        gd_json_uint(j, "devfn", w->ca.devfn);
        gd_json_uint(j, "bar_offset", w->ca.bar_offset);
        gd_json_uint(j, "size", w->ca.size);
        gd_json_bool(j, "mapped", w->mapped);
        gd_json_end_object(j);
    }
    gd_json_end_array(j);
    gd_json_begin_array(j, "regions");
    for (unsigned i = 0; i < d->mt.n; i++) {
        gd_json_begin_object(j, NULL);
        gd_json_uint(j, "xgpa", d->mt.r[i].gpa);
        gd_json_uint(j, "size", d->mt.r[i].size);
        gd_json_uint(j, "bar_offset", d->mt.r[i].target);
        gd_json_end_object(j);
    }
    gd_json_end_array(j);
    gd_json_begin_array(j, "frontends");
    for (unsigned i = 0; i < d->nfe; i++) {
        const struct gd_frontend *fe = d->fe[i];
        gd_json_begin_object(j, NULL);
        gd_json_uint(j, "device_type", fe->device_type);
        gd_json_uint(j, "device_id", fe->device_id);
        gd_json_uint(j, "nvirtqs", fe->nqueues);
        gd_json_begin_array(j, "queues");
        for (unsigned q = 0; q < fe->nqueues; q++) {
            const struct gd_queue *vq = &fe->queues[q];
            gd_json_begin_object(j, NULL);
            gd_json_uint(j, "index", vq->index);
            gd_json_uint(j, "num", vq->num);
            gd_json_uint(j, "last_avail_idx",
                         __atomic_load_n(&vq->last_avail_idx, __ATOMIC_RELAXED));
            gd_json_bool(j, "broken", __atomic_load_n(&vq->broken, __ATOMIC_RELAXED));
            gd_json_uint(j, "packets", __atomic_load_n(&vq->packets, __ATOMIC_RELAXED));
            gd_json_uint(j, "bytes", __atomic_load_n(&vq->bytes, __ATOMIC_RELAXED));
            gd_json_uint(j, "worker", vq->worker);
            gd_json_end_object(j);
        }
        gd_json_end_array(j);
        gd_json_end_object(j);
    }
    gd_json_end_array(j);
    gd_json_end_object(j);
}

void gd_status_render(struct gd_cp *cp, struct gd_json *j)
{
    gd_json_begin_object(j, NULL);
    gd_json_string(j, "bus", cp->bus ? cp->bus->ops->name : "");
    struct rlimit rl = { 0 };
    getrlimit(RLIMIT_NOFILE, &rl);
    gd_json_uint(j, "fd_limit", rl.rlim_cur);
    if (cp->dp && cp->dp->status) {
        gd_json_begin_object(j, "datapath");
        cp->dp->status(cp->dp_opaque, j);
        gd_json_end_object(j);
    }
    gd_json_begin_array(j, "devices");
    for (unsigned s = 0; s < GD_CP_MAX_SLOTS; s++) {
        if (cp->dev[s])
            render_device(j, cp->dev[s]);
    }
    gd_json_end_array(j);
    gd_json_end_object(j);
}

/* ------------------------------- clients ------------------------------- */

static void client_close(struct gd_status_client *c)
{
    struct gd_status *st = c->st;
    for (unsigned i = 0; i < GD_STATUS_MAX_CLIENTS; i++) {
        if (st->clients[i] == c)
            st->clients[i] = NULL;
    }
    gd_loop_del_fd(st->loop, c->watch);
    gd_loop_del_timer(st->loop, c->timer);
    vp_close_fd(&c->fd);
    gd_json_free(&c->out);
    free(c);
}

/* The client's deadline for the whole exchange: a client that sends no request, or
 * does not read its answer, gives its slot back (GD_STATUS_MAX_CLIENTS of them could
 * otherwise keep the socket dead for ever). */
static void client_timeout(void *opaque)
{
    struct gd_status_client *c = opaque;
    c->timer = 0;
    if (c->writing)
        gd_info("status: client did not read its answer in time (%zu of %zu bytes sent), "
                "closing it", c->outpos, c->out.len);
    else
        gd_debug("status: client sent no request in time");
    client_close(c);
}

/* Write what the socket takes; close when all is out. */
static void client_flush(struct gd_status_client *c)
{
    while (c->outpos < c->out.len) {
        ssize_t n = send(c->fd, c->out.buf + c->outpos, c->out.len - c->outpos,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            gd_loop_mod_fd(c->st->loop, c->watch, POLLOUT);
            return;
        }
        if (n <= 0) {
            client_close(c);
            return;
        }
        c->outpos += (size_t)n;
    }
    client_close(c);
}

/* The deadline timer keeps running: it bounds the answer's delivery too. */
static void client_answer(struct gd_status_client *c, bool ok)
{
    c->writing = true;
    if (ok) {
        gd_status_render(c->st->cp, &c->out);
    } else {
        gd_json_begin_object(&c->out, NULL);
        gd_json_string(&c->out, "error", "unknown request (send \"status\\n\")");
        gd_json_end_object(&c->out);
    }
    if (c->out.oom || !c->out.buf) {
        client_close(c);
        return;
    }
    client_flush(c);
}

static void client_io(void *opaque, int fd, short revents)
{
    struct gd_status_client *c = opaque;
    (void)fd;
    if (c->writing) {
        client_flush(c);
        return;
    }
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - 1 - c->inlen, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            client_close(c);
            return;
        }
        c->inlen += (size_t)n;
        c->in[c->inlen] = 0;
        char *nl = strchr(c->in, '\n');
        if (!nl) {
            if (c->inlen >= sizeof(c->in) - 1)
                client_answer(c, false);
            return;
        }
        *nl = 0;
        if (nl > c->in && nl[-1] == '\r')
            nl[-1] = 0;
        client_answer(c, strcmp(c->in, "status") == 0);
    }
}

static void on_accept(void *opaque, int fd, short revents)
{
    struct gd_status *st = opaque;
    (void)revents;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    unsigned i;
    for (i = 0; i < GD_STATUS_MAX_CLIENTS && st->clients[i]; i++)
        ;
    struct gd_status_client *c = i < GD_STATUS_MAX_CLIENTS ? calloc(1, sizeof(*c)) : NULL;
    if (!c) {
        gd_warn("status: too many clients, dropping one");
        close(cfd);
        return;
    }
    c->st = st;
    c->fd = cfd;
    gd_json_init(&c->out);
    c->watch = gd_loop_add_fd(st->loop, cfd, POLLIN, client_io, c);
    c->timer = gd_loop_add_timer(st->loop, st->timeout_ns, client_timeout, c);
    if (c->watch < 0 || c->timer < 0) {
        c->watch = c->watch < 0 ? 0 : c->watch;
        c->timer = c->timer < 0 ? 0 : c->timer;
        client_close(c);
        return;
    }
    st->clients[i] = c;
}

struct gd_status *gd_status_new(struct gd_loop *loop, struct gd_cp *cp, const char *path,
                                vp_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (!path || !path[0] || strlen(path) >= sizeof(sa.sun_path)) {
        vp_fail(err, -EINVAL, "status socket path %s", path && path[0] ? "too long" : "missing");
        return NULL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct gd_status *st = calloc(1, sizeof(*st));
    if (!st) {
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    st->loop = loop;
    st->cp = cp;
    st->timeout_ns = GD_STATUS_TIMEOUT_NS;
    memcpy(st->path, sa.sun_path, sizeof(st->path));
    st->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (st->fd < 0) {
        vp_fail(err, -errno, "socket: %s", strerror(errno));
        goto fail;
    }
    unlink(path); /* a stale socket of a previous run */
    if (bind(st->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(st->fd, 16) < 0) {
        vp_fail(err, -errno, "status socket %s: %s", path, strerror(errno));
        goto fail;
    }
    st->watch = gd_loop_add_fd(loop, st->fd, POLLIN, on_accept, st);
    if (st->watch < 0) {
        st->watch = 0;
        vp_fail(err, -ENOMEM, "out of memory");
        unlink(path);
        goto fail;
    }
    return st;
fail:
    vp_close_fd(&st->fd);
    free(st);
    return NULL;
}

void gd_status_set_timeout_ns(struct gd_status *st, uint64_t timeout_ns)
{
    st->timeout_ns = timeout_ns ? timeout_ns : GD_STATUS_TIMEOUT_NS;
}

void gd_status_free(struct gd_status *st)
{
    if (!st)
        return;
    for (unsigned i = 0; i < GD_STATUS_MAX_CLIENTS; i++) {
        if (st->clients[i])
            client_close(st->clients[i]);
    }
    gd_loop_del_fd(st->loop, st->watch);
    vp_close_fd(&st->fd);
    unlink(st->path);
    free(st);
}
