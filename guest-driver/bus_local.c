/*
 * bus_local.c - the `local` bus of vhost-pci-guestd (DESIGN section 7): the server's
 * local device host hands control areas, eventfds and window files over a UNIX
 * socket (protocol/vp_localbus.h). This process plays the whole device VM.
 *
 * Security model: the server's messages are checked here before use, although the
 * server is the host side: vp_lb_recv() rejects unknown types and fd counts that
 * differ from the type's; this file rejects out-of-range slots and devfns, sizes
 * that are zero, absurd or larger than the file (fstat: mapping past the end of a
 * file would SIGBUS on access), duplicate plugs, and messages only guestd may send.
 * A protocol violation closes the connection (after closing every received fd) and
 * unplugs everything; a bad but well-formed plug is refused with a warning.
 *
 * Doorbell fds (the server's kick and interrupt eventfds, the driver VM's call fds)
 * come from other processes: the call fds travel from the driver VM's VMM through
 * the client daemon and the server unchecked (issue 12.1). A doorbell must never
 * stall guestd, so only eventfds, FIFOs and sockets are kept, each is made
 * O_NONBLOCK when it arrives, and every doorbell first asks poll(2) whether a write
 * would block (a process sharing the file description could clear O_NONBLOCK
 * again): a full eventfd counter, a full pipe or socket buffer means the reader has
 * an unread notification, so the doorbell counts as rung. Any other kind of fd is
 * refused at plug time; its vector fails every doorbell with -EBADF.
 *
 * File descriptors are budgeted (issue 12.4): the bus keeps what it holds below
 * RLIMIT_NOFILE minus a reserve for the status socket and the endpoints. A message
 * whose fds would exceed the budget, or whose fds the kernel could not install
 * (MSG_CTRUNC: out of fds), is refused on its own with an error line naming the
 * message and the limit; the connection and every other device carry on.
 *
 * Ownership: every fd received belongs to this file until the matching unplug (the
 * control area memfd is closed right after mmap). libc only.
 */
#include "bus.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "vp_ctrlarea.h"
#include "vp_localbus.h"

#define LB_MAX_CA_SIZE (1ULL << 30)        /* a control area larger than 1 GiB is bogus */
#define LB_MAX_WINDOWS_PER_SLOT VP_MAX_WINDOWS
#define LB_CONTROL_FDS 4                   /* memfd + 3 eventfds */
#define LB_NEFD 3                          /* id0 v0, id0 v1, id1 v0 */
#define LB_FD_RESERVE 64                   /* fds kept free for everything but the bus */

struct lb_window {
    bool used;
    uint8_t devfn;
    int fd;
    uint64_t size;
    uint64_t offset;       /* bytes into the file (PLUG_WINDOW arg) */
};

struct lb_control {
    uint8_t *ca;
    uint64_t ca_size;
    int efd[LB_NEFD];
    int *peer_efd;                /* id 2: one eventfd per vector */
    unsigned npeer;
    struct lb_window win[LB_MAX_WINDOWS_PER_SLOT];
};

struct gd_bus_local {
    struct gd_bus base;           /* first */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int sock;
    int watch;
    bool lost;
    bool in_dispatch;             /* guards sync() against re-entry from callbacks */
    /* Doorbells come from the data path's threads too: the driver VM's vector list is
     * replaced (PEER_VECTORS) under this lock, and read under it. */
    pthread_mutex_t vec_lock;
    unsigned fd_budget;           /* fds the controls may hold (RLIMIT_NOFILE - reserve) */
    struct lb_control *ctl[VP_LB_MAX_SLOTS];
};

static struct gd_bus_local *to_lb(struct gd_bus *bus) { return (struct gd_bus_local *)bus; }

static struct lb_control *get_ctl(struct gd_bus_local *lb, unsigned slot)
{
    return slot < VP_LB_MAX_SLOTS ? lb->ctl[slot] : NULL;
}

/* fds held by every control function (eventfds, vectors, windows). */
static unsigned fds_held(const struct gd_bus_local *lb)
{
    unsigned n = 0;
    for (unsigned s = 0; s < VP_LB_MAX_SLOTS; s++) {
        const struct lb_control *c = lb->ctl[s];
        if (!c)
            continue;
        for (unsigned i = 0; i < LB_NEFD; i++)
            n += c->efd[i] >= 0;
        for (unsigned i = 0; i < c->npeer; i++)
            n += c->peer_efd[i] >= 0;
        for (unsigned i = 0; i < LB_MAX_WINDOWS_PER_SLOT; i++)
            n += c->win[i].used;
    }
    return n;
}

/* Whether @more fds (replacing @less held ones) fit the budget; else a reason. */
static bool fds_fit(const struct gd_bus_local *lb, unsigned more, unsigned less, char *why,
                    size_t len)
{
    unsigned held = fds_held(lb);
    if (held - less + more <= lb->fd_budget)
        return true;
    snprintf(why, len, "the bus would hold %u file descriptors, over its budget of %u "
             "(RLIMIT_NOFILE minus a reserve for other uses): raise the limit",
             held - less + more, lb->fd_budget);
    return false;
}

/*
 * Keep @fd as a doorbell (file comment): an eventfd, FIFO or socket, made
 * O_NONBLOCK. Returns 0, or -EBADF with the reason in @why (the caller closes it).
 */
static int adopt_doorbell(int fd, char *why, size_t len)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(why, len, "fstat: %s", strerror(errno));
        return -EBADF;
    }
    bool ok = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
    if (!ok) {
        /* An eventfd is an anonymous inode: only its /proc link names its kind. */
        char path[64], link[64] = "";
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (n > 0)
            link[n] = 0;
        ok = !strcmp(link, "anon_inode:[eventfd]");
        if (!ok) {
            snprintf(why, len, "not an eventfd, FIFO or socket (%s)",
                     link[0] ? link : S_ISREG(st.st_mode) ? "a regular file" : "unknown kind");
            return -EBADF;
        }
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
        snprintf(why, len, "cannot make it non-blocking: %s", strerror(errno));
        return -EBADF;
    }
    return 0;
}

static void free_control(struct lb_control *c)
{
    if (!c)
        return;
    if (c->ca)
        munmap(c->ca, c->ca_size);
    vp_close_fds(c->efd, LB_NEFD);
    for (unsigned i = 0; i < c->npeer; i++)
        vp_close_fd(&c->peer_efd[i]);
    free(c->peer_efd);
    for (unsigned i = 0; i < LB_MAX_WINDOWS_PER_SLOT; i++) {
        if (c->win[i].used)
            vp_close_fd(&c->win[i].fd);
    }
    free(c);
}

static int send_ejected(struct gd_bus_local *lb, unsigned slot, uint32_t devfn)
{
    struct vp_lb_msg m = { .type = VP_LB_EJECTED, .slot = slot, .devfn = devfn };
    int r = vp_lb_send(lb->sock, &m, NULL, 0);
    if (r < 0)
        gd_warn("local bus: sending EJECTED(slot %u, devfn 0x%x): %s", slot, devfn,
                strerror(-r));
    return r;
}

/* Size check of a received file: st_size must cover @size bytes. */
static int check_file_size(int fd, uint64_t size, vp_error *err)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vp_fail(err, -errno, "fstat: %s", strerror(errno));
    if (st.st_size < 0 || (uint64_t)st.st_size < size)
        return vp_fail(err, -EINVAL, "file holds %lld bytes, %llu announced",
                       (long long)st.st_size, (unsigned long long)size);
    return 0;
}

/* Unplug one control function: tell the user, then release and report. */
static void unplug_control(struct gd_bus_local *lb, unsigned slot, bool report)
{
    struct lb_control *c = lb->ctl[slot];
    if (!c)
        return;
    if (lb->base.ev->control_unplug)
        lb->base.ev->control_unplug(lb->base.ev_opaque, slot);
    lb->ctl[slot] = NULL;
    free_control(c);
    gd_info("local bus: control function of slot %u ejected", slot);
    if (report)
        send_ejected(lb, slot, VP_LB_CONTROL_DEVFN);
}

/* The connection is gone or violated the protocol: unplug everything. */
static void lose_bus(struct gd_bus_local *lb, const char *why)
{
    if (lb->lost)
        return;
    lb->lost = true;
    gd_warn("local bus: %s", why);
    gd_loop_del_fd(lb->base.loop, lb->watch);
    lb->watch = 0;
    for (unsigned s = 0; s < VP_LB_MAX_SLOTS; s++)
        unplug_control(lb, s, false);
    vp_close_fd(&lb->sock);
    if (lb->base.ev->bus_lost)
        lb->base.ev->bus_lost(lb->base.ev_opaque, why);
}

static void on_plug_control(struct gd_bus_local *lb, const struct vp_lb_msg *m, int *fds)
{
    vp_error err = { { 0 } };
    struct lb_control *c = NULL;
    unsigned slot = m->slot;

    if (lb->ctl[slot]) {
        gd_warn("local bus: PLUG_CONTROL for slot %u which is already plugged: ignored", slot);
        goto fail;
    }
    if (m->size < VP_CA_HEADER_END || m->size > LB_MAX_CA_SIZE) {
        gd_warn("local bus: PLUG_CONTROL slot %u: control area size %llu out of range: "
                "ignored", slot, (unsigned long long)m->size);
        goto fail;
    }
    if (check_file_size(fds[0], m->size, &err) < 0) {
        gd_warn("local bus: PLUG_CONTROL slot %u: control area: %s: ignored", slot, err.msg);
        goto fail;
    }
    char why[200];
    for (unsigned i = 0; i < LB_NEFD; i++) {
        if (adopt_doorbell(fds[1 + i], why, sizeof(why)) < 0) {
            gd_warn("local bus: PLUG_CONTROL slot %u: eventfd %u: %s: ignored", slot, i, why);
            goto fail;
        }
    }
    if (!fds_fit(lb, LB_NEFD, 0, why, sizeof(why))) {
        gd_error("local bus: PLUG_CONTROL slot %u refused: %s", slot, why);
        goto fail;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        gd_warn("local bus: PLUG_CONTROL slot %u: out of memory", slot);
        goto fail;
    }
    void *p = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    if (p == MAP_FAILED) {
        gd_warn("local bus: PLUG_CONTROL slot %u: mmap control area: %s", slot,
                strerror(errno));
        goto fail;
    }
    c->ca = p;
    c->ca_size = m->size;
    vp_close_fd(&fds[0]);
    for (unsigned i = 0; i < LB_NEFD; i++) {
        c->efd[i] = fds[1 + i];
        fds[1 + i] = -1;
    }
    lb->ctl[slot] = c;
    gd_info("local bus: control function plugged in slot %u (%llu bytes)", slot,
            (unsigned long long)m->size);
    if (lb->base.ev->control_plugged)
        lb->base.ev->control_plugged(lb->base.ev_opaque, slot);
    return;
fail:
    free(c);
    vp_close_fds(fds, LB_CONTROL_FDS);
}

static void on_peer_vectors(struct gd_bus_local *lb, const struct vp_lb_msg *m, int *fds,
                            unsigned nfds)
{
    struct lb_control *c = lb->ctl[m->slot];
    if (!c || m->arg != VP_ID_DRIVER_VM || nfds > VP_MAX_VECTORS) {
        gd_warn("local bus: PEER_VECTORS slot %u peer %llu count %u refused (%s)", m->slot,
                (unsigned long long)m->arg, nfds,
                !c ? "slot not plugged" : m->arg != VP_ID_DRIVER_VM ? "not the driver VM"
                                                                   : "too many vectors");
        vp_close_fds(fds, nfds);
        return;
    }
    unsigned old_held = 0;
    for (unsigned i = 0; i < c->npeer; i++)
        old_held += c->peer_efd[i] >= 0;
    char why[200];
    if (!fds_fit(lb, nfds, old_held, why, sizeof(why))) {
        /* The old list stays: vector numbers are only ever appended (DESIGN 3), so
         * the queues already started keep their doorbells; a queue that names a new
         * vector gets -ERANGE from its doorbell (logged once by the data path). */
        gd_error("local bus: PEER_VECTORS slot %u (%u vectors) refused: %s; the %u "
                 "vectors announced before stay", m->slot, nfds, why, c->npeer);
        vp_close_fds(fds, nfds);
        return;
    }
    int *list = NULL;
    if (nfds) {
        list = malloc(nfds * sizeof(*list));
        if (!list) {
            gd_warn("local bus: PEER_VECTORS: out of memory");
            vp_close_fds(fds, nfds);
            return;
        }
    }
    unsigned refused = 0;
    for (unsigned i = 0; i < nfds; i++) {
        if (adopt_doorbell(fds[i], why, sizeof(why)) < 0) {
            if (!refused++)
                gd_warn("local bus: slot %u: driver VM vector %u refused: %s (its doorbell "
                        "will fail)", m->slot, i, why);
            vp_close_fd(&fds[i]);
        }
        list[i] = fds[i];
        fds[i] = -1;
    }
    /* Swap, then close the old list: a doorbell never finds the vectors missing. */
    pthread_mutex_lock(&lb->vec_lock);
    int *old = c->peer_efd;
    unsigned nold = c->npeer;
    c->peer_efd = list;
    c->npeer = nfds;
    pthread_mutex_unlock(&lb->vec_lock);
    for (unsigned i = 0; i < nold; i++)
        vp_close_fd(&old[i]);
    free(old);
    if (refused > 1)
        gd_warn("local bus: slot %u: %u of %u driver VM vectors refused", m->slot, refused,
                nfds);
    gd_debug("local bus: slot %u: driver VM has %u vectors", m->slot, nfds);
}

static struct lb_window *find_window(struct lb_control *c, unsigned devfn)
{
    for (unsigned i = 0; c && i < LB_MAX_WINDOWS_PER_SLOT; i++) {
        if (c->win[i].used && c->win[i].devfn == devfn)
            return &c->win[i];
    }
    return NULL;
}

static void on_plug_window(struct gd_bus_local *lb, const struct vp_lb_msg *m, int *fds)
{
    vp_error err = { { 0 } };
    struct lb_control *c = lb->ctl[m->slot];
    const char *why = NULL;
    if (!c)
        why = "slot not plugged";
    else if (m->devfn > 0xff)
        why = "devfn out of range";
    else if (find_window(c, m->devfn))
        why = "devfn already plugged";
    else if (m->size == 0)
        why = "zero size";
    else if (m->arg % 4096 || m->arg + m->size < m->arg)
        why = "file offset not page-aligned or beyond 64 bits";
    else if (check_file_size(fds[0], m->arg + m->size, &err) < 0)
        why = err.msg;
    struct lb_window *w = NULL;
    for (unsigned i = 0; !why && i < LB_MAX_WINDOWS_PER_SLOT; i++) {
        if (!c->win[i].used) {
            w = &c->win[i];
            break;
        }
    }
    if (!why && !w)
        why = "too many windows";
    char budget[200];
    if (!why && !fds_fit(lb, 1, 0, budget, sizeof(budget)))
        why = budget;
    if (why) {
        gd_warn("local bus: PLUG_WINDOW slot %u devfn 0x%x refused: %s", m->slot, m->devfn,
                why);
        vp_close_fd(&fds[0]);
        return;
    }
    *w = (struct lb_window){ .used = true, .devfn = (uint8_t)m->devfn, .fd = fds[0],
                             .size = m->size, .offset = m->arg };
    fds[0] = -1;
    gd_info("local bus: window devfn 0x%x plugged in slot %u (%llu bytes)", m->devfn,
            m->slot, (unsigned long long)m->size);
    if (lb->base.ev->window_plugged)
        lb->base.ev->window_plugged(lb->base.ev_opaque, m->slot,
                                    (struct gd_win_id){ .devfn = (uint8_t)m->devfn });
}

static void on_unplug_window(struct gd_bus_local *lb, const struct vp_lb_msg *m)
{
    struct lb_window *w = m->devfn <= 0xff ? find_window(lb->ctl[m->slot], m->devfn) : NULL;
    if (!w) {
        /* Nothing to let go of: say so at once so the server does not wait. */
        gd_warn("local bus: UNPLUG_WINDOW slot %u devfn 0x%x: not plugged", m->slot, m->devfn);
        send_ejected(lb, m->slot, m->devfn);
        return;
    }
    if (lb->base.ev->window_unplug)
        lb->base.ev->window_unplug(lb->base.ev_opaque, m->slot,
                                   (struct gd_win_id){ .devfn = (uint8_t)m->devfn });
    /* The callback may have unplugged the whole slot; look the window up again. */
    w = find_window(lb->ctl[m->slot], m->devfn);
    if (w) {
        vp_close_fd(&w->fd);
        w->used = false;
    }
    gd_info("local bus: window devfn 0x%x of slot %u ejected", m->devfn, m->slot);
    send_ejected(lb, m->slot, m->devfn);
}

/* Receive and handle one message. Returns 0, or -1 when the bus was lost. */
static int handle_one(struct gd_bus_local *lb)
{
    struct vp_lb_msg m;
    int fds[VP_LB_MAX_FDS];
    unsigned nfds = 0;
    vp_error err = { { 0 } };
    int r = vp_lb_recv(lb->sock, &m, fds, VP_LB_MAX_FDS, &nfds, &err);
    if (r == -ENOBUFS) {
        /* Out of fds: this one message is refused, the bus and the devices carry on
         * (a control function that was not plugged is never used; a window that did
         * not arrive fails the MEMORY_INFO that needs it; a vector list that did not
         * arrive leaves the old one, see on_peer_vectors). */
        struct rlimit rl = { 0 };
        getrlimit(RLIMIT_NOFILE, &rl);
        gd_error("%s: refused (out of file descriptors: this process may open %llu, the "
                 "bus holds %u; raise RLIMIT_NOFILE)", err.msg,
                 (unsigned long long)rl.rlim_cur, fds_held(lb));
        return 0;
    }
    if (r < 0) {
        char why[300];
        if (r == -ECONNRESET)
            snprintf(why, sizeof(why), "connection closed by the server");
        else
            snprintf(why, sizeof(why), "receive failed: %s",
                     err.msg[0] ? err.msg : strerror(-r));
        lose_bus(lb, why);
        return -1;
    }
    if (m.slot >= VP_LB_MAX_SLOTS) {
        char why[120];
        snprintf(why, sizeof(why), "message type %u names slot %u (out of range)", m.type,
                 m.slot);
        vp_close_fds(fds, nfds);
        lose_bus(lb, why);
        return -1;
    }
    switch (m.type) {
    case VP_LB_PLUG_CONTROL:
        on_plug_control(lb, &m, fds);
        break;
    case VP_LB_PEER_VECTORS:
        on_peer_vectors(lb, &m, fds, nfds);
        break;
    case VP_LB_PLUG_WINDOW:
        on_plug_window(lb, &m, fds);
        break;
    case VP_LB_UNPLUG_WINDOW:
        vp_close_fds(fds, nfds);
        on_unplug_window(lb, &m);
        break;
    case VP_LB_UNPLUG_CONTROL:
        vp_close_fds(fds, nfds);
        if (!lb->ctl[m.slot])
            gd_warn("local bus: UNPLUG_CONTROL slot %u: not plugged", m.slot);
        unplug_control(lb, m.slot, false);
        send_ejected(lb, m.slot, VP_LB_CONTROL_DEVFN);
        break;
    default: {
        /* HELLO and EJECTED only travel from guestd to the server. */
        char why[80];
        snprintf(why, sizeof(why), "unexpected message type %u from the server", m.type);
        vp_close_fds(fds, nfds);
        lose_bus(lb, why);
        return -1;
    }
    }
    return 0;
}

/* Handle every message already queued on the socket, without blocking. */
static void drain(struct gd_bus_local *lb)
{
    if (lb->in_dispatch)
        return;
    lb->in_dispatch = true;
    while (!lb->lost && lb->sock >= 0) {
        struct pollfd p = { .fd = lb->sock, .events = POLLIN };
        if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR)))
            break;
        if (handle_one(lb) < 0)
            break;
    }
    lb->in_dispatch = false;
}

static void on_sock(void *opaque, int fd, short revents)
{
    (void)fd;
    (void)revents;
    drain(opaque);
}

static int lb_start(struct gd_bus *bus, vp_error *err)
{
    struct gd_bus_local *lb = to_lb(bus);
    struct vp_lb_msg hello = { .type = VP_LB_HELLO };
    int r = vp_lb_send(lb->sock, &hello, NULL, 0);
    if (r < 0)
        return vp_fail(err, r, "local bus %s: sending HELLO: %s", lb->path, strerror(-r));
    r = gd_loop_add_fd(bus->loop, lb->sock, POLLIN, on_sock, lb);
    if (r < 0)
        return vp_fail(err, r, "local bus: out of memory");
    lb->watch = r;
    return 0;
}

static void lb_sync(struct gd_bus *bus) { drain(to_lb(bus)); }

static int lb_control_area(struct gd_bus *bus, unsigned slot, void **base, uint64_t *size)
{
    struct lb_control *c = get_ctl(to_lb(bus), slot);
    if (!c)
        return -ENOENT;
    *base = c->ca;
    *size = c->ca_size;
    return 0;
}

static int lb_irq_fd(struct gd_bus *bus, unsigned slot)
{
    struct lb_control *c = get_ctl(to_lb(bus), slot);
    return c ? c->efd[2] : -1;
}

static void lb_irq_ack(struct gd_bus *bus, unsigned slot)
{
    struct lb_control *c = get_ctl(to_lb(bus), slot);
    if (!c)
        return;
    /* We are the only reader of this eventfd; poll first so a spurious wake-up
     * cannot block the loop (the fd's O_NONBLOCK flag is shared with the server). */
    struct pollfd p = { .fd = c->efd[2], .events = POLLIN };
    if (poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
        uint64_t v;
        if (read(c->efd[2], &v, sizeof(v)) < 0 && errno != EAGAIN)
            gd_debug("local bus: reading the controlq eventfd: %s", strerror(errno));
    }
}

/* Ring @fd without ever blocking (file comment). */
static int ring(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int n = poll(&p, 1, 0);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (n == 0)
        return 0; /* full: the reader has a notification it has not read yet */
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN && errno != EINTR)
        return -errno; /* EAGAIN: counter or buffer full, the peer is notified anyway */
    return 0;
}

static int lb_doorbell(struct gd_bus *bus, unsigned slot, uint16_t peer, uint16_t vector)
{
    struct gd_bus_local *lb = to_lb(bus);
    struct lb_control *c = get_ctl(lb, slot);
    if (!c)
        return -ENOENT;
    if (peer == VP_ID_DRIVER_VM) {
        /* The call vectors: possibly from a data path thread while PEER_VECTORS
         * replaces the list on the loop thread. */
        pthread_mutex_lock(&lb->vec_lock);
        int r = vector >= c->npeer ? -ERANGE : c->peer_efd[vector] < 0 ? -EBADF
                                                                      : ring(c->peer_efd[vector]);
        pthread_mutex_unlock(&lb->vec_lock);
        return r;
    }
    int fd = -1;
    if (peer == VP_ID_SERVER && vector == VP_VEC_RECEIVEQ_KICK)
        fd = c->efd[0];
    else if (peer == VP_ID_SERVER && vector == VP_VEC_TRANSMITQ_KICK)
        fd = c->efd[1];
    else if (peer == VP_ID_DEVICE_VM && vector == VP_VEC_CONTROLQ_IRQ)
        fd = c->efd[2];
    return fd < 0 ? -ERANGE : ring(fd);
}

static int lb_peer_vectors(struct gd_bus *bus, unsigned slot, uint16_t peer)
{
    struct lb_control *c = get_ctl(to_lb(bus), slot);
    if (!c)
        return 0;
    switch (peer) {
    case VP_ID_SERVER: return 2;
    case VP_ID_DEVICE_VM: return 1;
    case VP_ID_DRIVER_VM: return (int)c->npeer;
    default: return 0;
    }
}

static int lb_window_query(struct gd_bus *bus, unsigned slot, struct gd_win_id id,
                           uint64_t *size)
{
    struct lb_window *w = find_window(get_ctl(to_lb(bus), slot), id.devfn);
    if (!w)
        return -ENOENT;
    *size = w->size;
    return 0;
}

static int lb_window_map(struct gd_bus *bus, unsigned slot, struct gd_win_id id, void *addr,
                         uint64_t size, vp_error *err)
{
    struct lb_window *w = find_window(get_ctl(to_lb(bus), slot), id.devfn);
    if (!w)
        return vp_fail(err, -ENOENT, "window devfn 0x%x not plugged", id.devfn);
    if (size == 0 || size > w->size)
        return vp_fail(err, -EINVAL, "window devfn 0x%x holds %llu bytes, %llu wanted",
                       id.devfn, (unsigned long long)w->size, (unsigned long long)size);
    void *p = mmap(addr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, w->fd,
                   (off_t)w->offset);
    if (p == MAP_FAILED)
        return vp_fail(err, -errno, "mmap window devfn 0x%x: %s", id.devfn, strerror(errno));
    return 0;
}

static void lb_destroy(struct gd_bus *bus)
{
    struct gd_bus_local *lb = to_lb(bus);
    gd_loop_del_fd(bus->loop, lb->watch);
    for (unsigned s = 0; s < VP_LB_MAX_SLOTS; s++) {
        free_control(lb->ctl[s]);
        lb->ctl[s] = NULL;
    }
    vp_close_fd(&lb->sock);
    pthread_mutex_destroy(&lb->vec_lock);
    free(lb);
}

static const struct gd_bus_ops local_ops = {
    .name = "local",
    .windows_by_devfn = true,
    .start = lb_start,
    .sync = lb_sync,
    .control_area = lb_control_area,
    .irq_fd = lb_irq_fd,
    .irq_ack = lb_irq_ack,
    .doorbell = lb_doorbell,
    .peer_vectors = lb_peer_vectors,
    .window_query = lb_window_query,
    .window_map = lb_window_map,
    .destroy = lb_destroy,
};

void gd_bus_local_set_fd_budget(struct gd_bus *bus, unsigned max) { to_lb(bus)->fd_budget = max; }

struct gd_bus *gd_bus_local_new(struct gd_loop *loop, const char *path,
                                unsigned connect_timeout_ms,
                                const struct gd_bus_events *ev, void *opaque, vp_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (!path || strlen(path) >= sizeof(sa.sun_path)) {
        vp_fail(err, -EINVAL, "local bus path %s", path ? "too long" : "missing");
        return NULL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct gd_bus_local *lb = calloc(1, sizeof(*lb));
    if (!lb) {
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    lb->base = (struct gd_bus){ .ops = &local_ops, .loop = loop, .ev = ev, .ev_opaque = opaque };
    memcpy(lb->path, sa.sun_path, sizeof(lb->path));
    lb->sock = -1;
    pthread_mutex_init(&lb->vec_lock, NULL);
    struct rlimit rl;
    rlim_t lim = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
    if (lim == RLIM_INFINITY || lim > UINT32_MAX)
        lim = UINT32_MAX;
    lb->fd_budget = lim > 2 * LB_FD_RESERVE ? (unsigned)(lim - LB_FD_RESERVE) : (unsigned)lim / 2;

    uint64_t deadline = gd_now_ns() + (uint64_t)connect_timeout_ms * 1000000ULL;
    for (;;) {
        lb->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lb->sock < 0) {
            vp_fail(err, -errno, "socket: %s", strerror(errno));
            break;
        }
        if (connect(lb->sock, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return &lb->base;
        int e = errno;
        vp_close_fd(&lb->sock);
        if ((e != ENOENT && e != ECONNREFUSED) || gd_now_ns() >= deadline) {
            vp_fail(err, -e, "connecting to local bus %s: %s", path, strerror(e));
            break;
        }
        struct timespec ts = { .tv_nsec = 20 * 1000000L };
        nanosleep(&ts, NULL);
    }
    pthread_mutex_destroy(&lb->vec_lock);
    free(lb);
    return NULL;
}
