/*
 * ivshmem_endpoint.c - ivshmem-server endpoint for one ivshmem-doorbell (see
 * ivshmem_endpoint.h for the protocol).
 *
 * Security model: the peer is the device VM's QEMU connecting to a socket in the
 * server's private directory. The protocol is one-way (server -> QEMU): we never
 * parse anything QEMU sends; bytes from it are read and discarded (read(2) also drops
 * any fd it might attach), EOF or an error ends the connection. What we send is
 * checked before it is accepted from our own caller: shm size a power of two (else
 * QEMU 7.2 aborts on pci_register_bar), ids and vector counts in range, fds valid.
 *
 * Shape: outgoing (int64, fd) messages go through an output queue (vp_outq: non-
 * blocking sendmsg, the fd on the message's first byte, a partly written message
 * keeps its offset, its own writable watch), plus two GLib sources: the listening
 * socket and the QEMU connection.
 */
#define G_LOG_DOMAIN "vp-server"
#include "ivshmem_endpoint.h"

#include "vp_outq_glib.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <string.h>
#include <linux/kcmp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct ep_peer {
    int *fds;               /* owned eventfds, one per vector (-1: hole) */
    int *given;             /* the caller's fd numbers they were copied from */
    unsigned n;
    unsigned sent;          /* vectors the connected QEMU holds (0 when none) */
} ep_peer;

struct ivshmem_endpoint {
    GMainContext *ctx;
    char *path;
    int listen_fd;
    GSource *listen_src;
    int conn_fd;
    GSource *conn_src;
    int shm_fd;
    int sink_fd;            /* filler eventfd for holes, created on first use */
    unsigned own_id;
    ep_peer peers[IVSHMEM_EP_MAX_PEERS];
    struct vp_outq_glib out; /* to the connected QEMU (vp_outq: fds owned until sent) */
    ivshmem_endpoint_state_fn state_fn;
    void *state_opaque;
    ivshmem_endpoint_stats st;
};

/* ---- outgoing messages (protocol/vp_outq.h) ---------------------------------- */

/* Message tags: what the counters need to know once a message went out. */
#define EP_TAG_FD 1u
#define EP_TAG_SHM 2u

static void ep_disconnect(ivshmem_endpoint *ep, const char *why);

static void ep_drop_source(GSource **s)
{
    if (*s) {
        g_source_destroy(*s);
        g_source_unref(*s);
        *s = NULL;
    }
}

static void ep_sent(void *opaque, uint64_t tag)
{
    ivshmem_endpoint *ep = opaque;
    ep->st.messages_sent++;
    if (tag & EP_TAG_FD)
        ep->st.fds_sent++;
    if (tag & EP_TAG_SHM)
        ep->st.shm_sent++;
}

static void ep_send_error(void *opaque, int err)
{
    char why[128];
    g_snprintf(why, sizeof(why), "write: %s", g_strerror(-err));
    ep_disconnect(opaque, why);
}

/* Queue one message (sent at once when the socket takes it); @fd (borrowed) rides on
 * its first byte. Returns 0, or -errno (a dup failure, or the connection's write
 * error: then ep->out.q.error is set). */
static int ep_push(ivshmem_endpoint *ep, int64_t value, int fd)
{
    uint8_t bytes[8];
    vp_put_le64(bytes, (uint64_t)value);
    uint64_t tag = (fd >= 0 ? EP_TAG_FD : 0) | (value == -1 ? EP_TAG_SHM : 0);
    return vp_outq_push(&ep->out.q, bytes, sizeof(bytes), fd >= 0 ? &fd : NULL,
                        fd >= 0 ? 1 : 0, tag);
}

static int ep_sink(ivshmem_endpoint *ep);

/* Queue the vectors of peer @id (one message per vector, in order; a hole gets the
 * sink eventfd so that later vectors keep their numbers). */
static int ep_push_peer(ivshmem_endpoint *ep, unsigned id)
{
    ep_peer *pe = &ep->peers[id];
    unsigned v;
    int ret;

    for (v = 0; v < pe->n; v++) {
        int fd = pe->fds[v] >= 0 ? pe->fds[v] : ep_sink(ep);
        if (fd < 0)
            return -errno;
        ret = ep_push(ep, id, fd);
        if (ret < 0)
            return ret;
    }
    pe->sent = pe->n;
    return 0;
}

/* ---- connection ------------------------------------------------------------- */

static void ep_disconnect(ivshmem_endpoint *ep, const char *why)
{
    if (ep->conn_fd < 0)
        return;
    g_info("ivshmem endpoint %s: QEMU disconnected (%s)", ep->path, why);
    ep_drop_source(&ep->conn_src);
    vp_outq_glib_destroy(&ep->out);
    vp_close_fd(&ep->conn_fd);
    for (unsigned id = 0; id < IVSHMEM_EP_MAX_PEERS; id++)
        ep->peers[id].sent = 0;
    if (ep->state_fn)
        ep->state_fn(ep, FALSE, ep->state_opaque);
}

static gboolean ep_on_conn(gint fd, GIOCondition cond, gpointer data)
{
    ivshmem_endpoint *ep = data;
    char buf[256];
    ssize_t n;

    (void)cond;
    /* QEMU never talks on this socket: discard anything, watch for EOF. */
    n = read(fd, buf, sizeof(buf));
    if (n > 0) {
        g_debug("ivshmem endpoint %s: ignored %zd bytes from QEMU", ep->path, n);
        return G_SOURCE_CONTINUE;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return G_SOURCE_CONTINUE;
    ep_disconnect(ep, n == 0 ? "EOF" : g_strerror(errno));
    return G_SOURCE_CONTINUE;   /* ep_disconnect destroyed the source */
}

/* Queue the whole set-up for a new connection: version, own id, shm, every peer. */
static int ep_queue_setup(ivshmem_endpoint *ep)
{
    unsigned id;
    int ret;

    if ((ret = ep_push(ep, IVSHMEM_EP_PROTOCOL_VERSION, -1)) < 0 ||
        (ret = ep_push(ep, ep->own_id, -1)) < 0 ||
        (ret = ep_push(ep, -1, ep->shm_fd)) < 0)
        return ret;
    for (id = 0; id < IVSHMEM_EP_MAX_PEERS; id++)
        if ((ret = ep_push_peer(ep, id)) < 0)
            return ret;
    return 0;
}

static gboolean ep_on_accept(gint fd, GIOCondition cond, gpointer data)
{
    ivshmem_endpoint *ep = data;
    int cfd;
    int ret;

    (void)cond;
    cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (cfd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            g_warning("ivshmem endpoint %s: accept: %s", ep->path, g_strerror(errno));
        return G_SOURCE_CONTINUE;
    }
    if (ep->conn_fd >= 0) {
        g_warning("ivshmem endpoint %s: a second connection while QEMU is connected, closed",
                  ep->path);
        ep->st.rejected++;
        vp_close_fd(&cfd);
        return G_SOURCE_CONTINUE;
    }
    ep->conn_fd = cfd;
    vp_outq_glib_init(&ep->out, ep->ctx, cfd, 0, ep_sent, ep_send_error, ep);
    /* Written at once as far as the socket takes it: QEMU may already be blocked
     * reading the set-up inside device_add. */
    ret = ep_queue_setup(ep);
    if (ret < 0) {
        char why[128];
        if (ep->out.q.error)
            g_snprintf(why, sizeof(why), "write: %s", g_strerror(-ret));
        else
            g_snprintf(why, sizeof(why), "cannot duplicate fds for the set-up: %s",
                       g_strerror(-ret));
        g_warning("ivshmem endpoint %s: %s", ep->path, why);
        ep->st.rejected++;
        vp_outq_glib_destroy(&ep->out);
        vp_close_fd(&ep->conn_fd);
        for (unsigned id = 0; id < IVSHMEM_EP_MAX_PEERS; id++)
            ep->peers[id].sent = 0;
        return G_SOURCE_CONTINUE;
    }
    ep->st.connections++;
    ep->conn_src = g_unix_fd_source_new(cfd, G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(ep->conn_src, G_SOURCE_FUNC(ep_on_conn), ep, NULL);
    g_source_attach(ep->conn_src, ep->ctx);
    g_info("ivshmem endpoint %s: QEMU connected: version, id %u, shm and peers sent (%u still queued)",
           ep->path, ep->own_id, ep->out.q.count);
    if (ep->state_fn)
        ep->state_fn(ep, TRUE, ep->state_opaque);
    return G_SOURCE_CONTINUE;
}

/* ---- public ----------------------------------------------------------------- */

static gboolean is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

ivshmem_endpoint *ivshmem_endpoint_new(GMainContext *ctx, const char *path, int shm_fd,
                                       unsigned own_id, vp_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    ivshmem_endpoint *ep;
    struct stat st;

    if (own_id >= IVSHMEM_EP_MAX_PEERS) {
        vp_fail(err, -EINVAL, "ivshmem own id %u out of range (max %u)", own_id,
                IVSHMEM_EP_MAX_PEERS - 1);
        return NULL;
    }
    if (!path || strlen(path) >= sizeof(sa.sun_path)) {
        vp_fail(err, -ENAMETOOLONG, "ivshmem endpoint path empty or too long");
        return NULL;
    }
    if (fstat(shm_fd, &st) < 0) {
        vp_fail(err, -errno, "ivshmem shm fd: %s", g_strerror(errno));
        return NULL;
    }
    if (st.st_size <= 0 || !is_pow2((uint64_t)st.st_size)) {
        /* QEMU 7.2 aborts (pci_register_bar: is_power_of_2) on such a BAR. */
        vp_fail(err, -EINVAL, "ivshmem shm size %lld is not a power of two",
                (long long)st.st_size);
        return NULL;
    }
    ep = g_new0(ivshmem_endpoint, 1);
    ep->ctx = ctx ? g_main_context_ref(ctx) : g_main_context_ref_thread_default();
    ep->path = g_strdup(path);
    ep->conn_fd = -1;
    ep->sink_fd = -1;
    ep->own_id = own_id;
    ep->shm_fd = fcntl(shm_fd, F_DUPFD_CLOEXEC, 0);
    ep->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ep->shm_fd < 0 || ep->listen_fd < 0) {
        vp_fail(err, -errno, "ivshmem endpoint: %s", g_strerror(errno));
        goto fail;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (bind(ep->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        vp_fail(err, -errno, "ivshmem endpoint: bind %s: %s", path, g_strerror(errno));
        goto fail;
    }
    if (listen(ep->listen_fd, 4) < 0) {
        vp_fail(err, -errno, "ivshmem endpoint: listen %s: %s", path, g_strerror(errno));
        unlink(path);
        goto fail;
    }
    ep->listen_src = g_unix_fd_source_new(ep->listen_fd, G_IO_IN);
    g_source_set_callback(ep->listen_src, G_SOURCE_FUNC(ep_on_accept), ep, NULL);
    g_source_attach(ep->listen_src, ep->ctx);
    return ep;

fail:
    vp_close_fd(&ep->shm_fd);
    vp_close_fd(&ep->listen_fd);
    g_main_context_unref(ep->ctx);
    g_free(ep->path);
    g_free(ep);
    return NULL;
}

void ivshmem_endpoint_free(ivshmem_endpoint *ep)
{
    unsigned id;

    if (!ep)
        return;
    ep->state_fn = NULL;
    ep_disconnect(ep, "endpoint freed");
    ep_drop_source(&ep->listen_src);
    if (ep->listen_fd >= 0)
        unlink(ep->path);
    vp_close_fd(&ep->listen_fd);
    vp_close_fd(&ep->shm_fd);
    vp_close_fd(&ep->sink_fd);
    for (id = 0; id < IVSHMEM_EP_MAX_PEERS; id++) {
        vp_close_fds(ep->peers[id].fds, ep->peers[id].n);
        g_free(ep->peers[id].fds);
        g_free(ep->peers[id].given);
    }
    g_main_context_unref(ep->ctx);
    g_free(ep->path);
    g_free(ep);
}

void ivshmem_endpoint_set_state_handler(ivshmem_endpoint *ep, ivshmem_endpoint_state_fn fn,
                                        void *opaque)
{
    ep->state_fn = fn;
    ep->state_opaque = opaque;
}

/* Whether @a and @b are the same open file (kcmp KCMP_FILE); when kcmp is not
 * available, whether the caller handed in the same fd number as last time. */
static gboolean ep_same_file(int ours, int caller_old, int theirs)
{
    pid_t me = getpid();
    long r = syscall(SYS_kcmp, me, me, KCMP_FILE, ours, theirs);

    if (r >= 0)
        return r == 0;
    return caller_old == theirs;
}

/* The filler for a vector with no fd: QEMU counts vectors by message, so a hole must
 * still be a message with an eventfd. Nobody reads it. */
static int ep_sink(ivshmem_endpoint *ep)
{
    if (ep->sink_fd < 0)
        ep->sink_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return ep->sink_fd;
}

int ivshmem_endpoint_set_peer(ivshmem_endpoint *ep, unsigned id, const int *fds, unsigned n,
                              vp_error *err)
{
    ep_peer *pe;
    unsigned v, keep, total;
    int *copy, *given;
    int ret;

    if (id >= IVSHMEM_EP_MAX_PEERS)
        return vp_fail(err, -EINVAL, "ivshmem peer id %u out of range (max %u)", id,
                       IVSHMEM_EP_MAX_PEERS - 1);
    if (n > IVSHMEM_EP_MAX_VECTORS)
        return vp_fail(err, -EINVAL, "ivshmem peer %u: %u vectors, at most %u", id, n,
                       IVSHMEM_EP_MAX_VECTORS);
    pe = &ep->peers[id];
    if (id == ep->own_id && ep->conn_fd >= 0)
        return vp_fail(err, -EBUSY, "ivshmem peer %u is QEMU itself: its vectors cannot "
                       "change while it is connected", id);
    for (v = 0; v < n; v++)
        if (fds[v] < -1 || (fds[v] >= 0 && fcntl(fds[v], F_GETFD) < 0))
            return vp_fail(err, -EINVAL, "ivshmem peer %u vector %u: bad fd %d", id, v, fds[v]);

    /* Vectors QEMU already holds stay as they are (QEMU 7.2 cannot replace them:
     * see the header); only a hole (-1) or the same file is accepted there. */
    keep = ep->conn_fd >= 0 ? pe->sent : 0;
    for (v = 0; v < MIN(keep, n); v++) {
        if (fds[v] >= 0 && !ep_same_file(pe->fds[v], pe->given[v], fds[v]))
            return vp_fail(err, -ENOTSUP, "ivshmem peer %u vector %u already has an eventfd "
                           "in QEMU, which cannot replace it (QEMU 7.2 corrupts its heap on "
                           "a peer disconnect): use a fresh vector number", id, v);
    }

    total = MAX(keep, n);
    copy = g_new(int, MAX(total, 1));
    given = g_new(int, MAX(total, 1));
    for (v = 0; v < total; v++) {
        copy[v] = -1;
        given[v] = v < n ? fds[v] : -1;
    }
    for (v = 0; v < total; v++) {
        if (v < keep) {
            copy[v] = pe->fds[v];       /* moved below */
            if (v >= n || fds[v] < 0)
                given[v] = pe->given[v];
            continue;
        }
        if (fds[v] < 0)
            continue;
        copy[v] = fcntl(fds[v], F_DUPFD_CLOEXEC, 0);
        if (copy[v] < 0) {
            ret = -errno;
            for (unsigned k = keep; k < v; k++)
                vp_close_fd(&copy[k]);
            g_free(copy);
            g_free(given);
            return vp_fail(err, ret, "ivshmem peer %u vector %u: dup: %s", id, v,
                           g_strerror(-ret));
        }
    }
    /* Commit: the kept ones moved into copy, the rest of the old list closed. */
    for (v = keep; v < pe->n; v++)
        vp_close_fd(&pe->fds[v]);
    g_free(pe->fds);
    g_free(pe->given);
    pe->fds = copy;
    pe->given = given;
    pe->n = total;

    if (ep->conn_fd < 0)
        return 0;
    if (n < keep)
        g_debug("ivshmem endpoint %s: peer %u shrinks to %u vectors; QEMU keeps %u (stale)",
                ep->path, id, n, keep);
    /* Announce the new vectors to the connected QEMU, in order. */
    for (v = keep; v < total; v++) {
        ret = ep_push(ep, id, pe->fds[v] >= 0 ? pe->fds[v] : ep_sink(ep));
        if (ret < 0 && ep->out.q.error) {
            char why[128];
            g_snprintf(why, sizeof(why), "write: %s", g_strerror(-ret));
            ep_disconnect(ep, why);
            return vp_fail(err, -ECONNRESET, "ivshmem peer %u update: QEMU connection lost",
                           id);
        }
        if (ret < 0) {
            /* Out of fds: QEMU's view is now unknown; drop it (it sees EOF). */
            ep_disconnect(ep, "cannot queue a peer update");
            return vp_fail(err, ret, "ivshmem peer %u update: %s", id, g_strerror(-ret));
        }
    }
    pe->sent = total;
    return 0;
}

int ivshmem_endpoint_peer_fd(const ivshmem_endpoint *ep, unsigned id, unsigned vector)
{
    if (id >= IVSHMEM_EP_MAX_PEERS || vector >= ep->peers[id].n)
        return -1;
    return ep->peers[id].fds[vector];
}

unsigned ivshmem_endpoint_peer_vectors(const ivshmem_endpoint *ep, unsigned id)
{
    return id < IVSHMEM_EP_MAX_PEERS ? ep->peers[id].n : 0;
}

unsigned ivshmem_endpoint_max_vectors(const ivshmem_endpoint *ep)
{
    unsigned id, max = 1;

    for (id = 0; id < IVSHMEM_EP_MAX_PEERS; id++)
        max = MAX(max, ep->peers[id].n);
    return max;
}

int ivshmem_endpoint_notify(const ivshmem_endpoint *ep, unsigned id, unsigned vector)
{
    uint64_t one = 1;
    int fd = ivshmem_endpoint_peer_fd(ep, id, vector);

    if (fd < 0)
        return -EINVAL;
    for (;;) {
        ssize_t n = write(fd, &one, sizeof(one));
        if (n == (ssize_t)sizeof(one))
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        /* EAGAIN: the counter is saturated, the peer has a notification pending. */
        if (n < 0 && errno == EAGAIN)
            return 0;
        return n < 0 ? -errno : -EIO;
    }
}

gboolean ivshmem_endpoint_connected(const ivshmem_endpoint *ep)
{
    return ep->conn_fd >= 0;
}

void ivshmem_endpoint_get_stats(const ivshmem_endpoint *ep, ivshmem_endpoint_stats *st)
{
    *st = ep->st;
}

const char *ivshmem_endpoint_path(const ivshmem_endpoint *ep)
{
    return ep->path;
}
