/*
 * test-guestd-bus.c - the guest driver's buses with the real control plane on top:
 *  - `local`: the test plays the server's local device host on a UNIX socket
 *    (protocol/vp_localbus.h): HELLO, PLUG_CONTROL with a control area memfd and
 *    eventfds, PEER_VECTORS, PLUG_WINDOW, the controlq interrupt, UNPLUG_WINDOW and
 *    UNPLUG_CONTROL answered with EJECTED, refused plugs, the server going away.
 *  - `pci`: a fake sysfs tree of regular files (vendor, device, resource0/1/2):
 *    discovery by magic + MSI-X BAR, the doorbell register write, window mapping by
 *    PCI address, polling of the controlq, functions vanishing.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <signal.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "bus.h"
#include "controlplane.h"
#include "device.h"
#include "guestd-fake.h"
#include "log.h"
#include "loop.h"
#include "testutil.h"
#include "vp_localbus.h"

#define WIN_SIZE (2ULL << 20)

static bool lost;
static char lost_why[256];

static void on_lost(void *opaque, const char *why)
{
    (void)opaque;
    lost = true;
    g_strlcpy(lost_why, why, sizeof(lost_why));
}

/* Iterate @loop until @cond holds (bounded: 3 s). */
#define ITERATE_UNTIL(loop, cond)                                          \
    do {                                                                   \
        uint64_t deadline_ = gd_now_ns() + 3000000000ULL;                  \
        while (!(cond)) {                                                  \
            if (gd_now_ns() > deadline_)                                   \
                g_error("timed out waiting for %s", #cond);                \
            gd_loop_iterate((loop), 5 * 1000 * 1000);                      \
        }                                                                  \
    } while (0)

static bool readable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) == 1;
}

static uint64_t drain_efd(int fd)
{
    uint64_t v = 0;
    if (readable(fd))
        g_assert_cmpint(read(fd, &v, sizeof(v)), ==, sizeof(v));
    return v;
}

/* Receive one local-bus message from guestd within 3 s (driving its loop). */
static void lb_expect(struct gd_loop *loop, int sock, uint32_t type, uint32_t slot,
                      uint32_t devfn)
{
    ITERATE_UNTIL(loop, readable(sock));
    struct vp_lb_msg m;
    int fds[4];
    unsigned nfds = 0;
    vp_error err = { { 0 } };
    g_assert_cmpint(vp_lb_recv(sock, &m, fds, 4, &nfds, &err), ==, 0);
    g_assert_cmpuint(nfds, ==, 0);
    g_assert_cmpuint(m.type, ==, type);
    g_assert_cmpuint(m.slot, ==, slot);
    g_assert_cmpuint(m.devfn, ==, devfn);
}

/* A guestd control plane on the local bus, with the test as its server: listening
 * socket, guestd connected and started, its HELLO received. */
struct lb_rig {
    char *dir, *path;
    int lsock, srv;
    struct gd_loop *loop;
    struct gd_cp *cp;
    struct gd_bus *bus;
};

static void lb_rig_up(struct lb_rig *r)
{
    r->dir = g_dir_make_tmp("guestd-lb-XXXXXX", NULL);
    r->path = g_build_filename(r->dir, "bus.sock", NULL);
    r->lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, r->path, sizeof(sa.sun_path));
    g_assert_cmpint(bind(r->lsock, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(listen(r->lsock, 1), ==, 0);

    r->loop = gd_loop_new();
    lost = false;
    struct gd_cp_config cfg = { .bus_lost = on_lost };
    r->cp = gd_cp_new(r->loop, &cfg);
    vp_error err = { { 0 } };
    r->bus = gd_bus_local_new(r->loop, r->path, 1000, &gd_cp_bus_events, r->cp, &err);
    g_assert_nonnull(r->bus);
    gd_cp_set_bus(r->cp, r->bus);
    r->srv = accept4(r->lsock, NULL, NULL, SOCK_CLOEXEC);
    g_assert_cmpint(r->srv, >=, 0);
    g_assert_cmpint(gd_bus_start(r->bus, &err), ==, 0);
    lb_expect(r->loop, r->srv, VP_LB_HELLO, 0, 0);
}

static void lb_rig_down(struct lb_rig *r)
{
    gd_cp_shutdown(r->cp);
    gd_bus_destroy(r->bus);
    gd_cp_free(r->cp);
    gd_loop_free(r->loop);
    vp_close_fd(&r->srv);
    vp_close_fd(&r->lsock);
    unlink(r->path);
    g_rmdir(r->dir);
    g_free(r->path);
    g_free(r->dir);
}

static void test_local_bus(void)
{
    gd_log_set_level(g_test_verbose() ? GD_LOG_DEBUG : GD_LOG_ERROR);
    int before = vp_count_open_fds();
    struct lb_rig rig;
    lb_rig_up(&rig);
    struct gd_loop *loop = rig.loop;
    struct gd_cp *cp = rig.cp;
    struct gd_bus *bus = rig.bus;
    int srv = rig.srv;

    /* A refused plug: the file is smaller than announced. No device, fds closed. */
    int small = vp_test_memfd("small", 4096, TRUE);
    int e[3];
    for (int i = 0; i < 3; i++)
        e[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int fds[4] = { small, e[0], e[1], e[2] };
    struct vp_lb_msg m = { .type = VP_LB_PLUG_CONTROL, .slot = 2, .count = 4,
                           .size = VP_CA_SIZE };
    g_assert_cmpint(vp_lb_send(srv, &m, fds, 4), ==, 0);
    /* A window for a slot that is not plugged: refused too. */
    int wfd = vp_test_memfd("win", WIN_SIZE, TRUE);
    m = (struct vp_lb_msg){ .type = VP_LB_PLUG_WINDOW, .slot = 2, .devfn = 0x10, .count = 1,
                            .size = WIN_SIZE };
    g_assert_cmpint(vp_lb_send(srv, &m, &wfd, 1), ==, 0);
    for (int i = 0; i < 5; i++)
        gd_loop_iterate(loop, 5 * 1000 * 1000);
    g_assert_null(gd_cp_device(cp, 2));

    /* A good control function in slot 3. */
    int cafd = vp_test_memfd("ca", VP_CA_SIZE, TRUE);
    struct fk_dev fk = { 0 };
    fk.ca = mmap(NULL, VP_CA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, cafd, 0);
    g_assert_true(fk.ca != MAP_FAILED);
    fk_write_header(fk.ca, FK_BAR_SIZE);
    fk_set_window(fk.ca, 0, 0x10, 0, WIN_SIZE);
    fk_publish_windows(fk.ca, 1);
    fds[0] = cafd;
    m = (struct vp_lb_msg){ .type = VP_LB_PLUG_CONTROL, .slot = 3, .count = 4,
                            .size = VP_CA_SIZE };
    g_assert_cmpint(vp_lb_send(srv, &m, fds, 4), ==, 0);
    ITERATE_UNTIL(loop, gd_cp_device(cp, 3) != NULL);
    struct gd_device *d = gd_cp_device(cp, 3);
    g_assert_false(d->broken);
    g_assert_cmpuint(fk_status(fk.ca) & VP_STATUS_DRIVER_OK, !=, 0);
    g_assert_cmpuint(drain_efd(e[0]), >=, 1); /* doorbell id 0 vector 0 */
    g_assert_false(d->win[0].mapped);        /* listed, not plugged yet */
    fk_attach(&fk);

    /* The driver VM's call vectors. */
    int pv[2] = { eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
    m = (struct vp_lb_msg){ .type = VP_LB_PEER_VECTORS, .slot = 3, .count = 2,
                            .arg = VP_ID_DRIVER_VM };
    g_assert_cmpint(vp_lb_send(srv, &m, pv, 2), ==, 0);
    ITERATE_UNTIL(loop, gd_bus_peer_vectors(bus, 3, VP_ID_DRIVER_VM) == 2);
    g_assert_cmpint(gd_device_notify_peer(d, 1), ==, 0);
    g_assert_cmpuint(drain_efd(pv[1]), ==, 1);
    g_assert_cmpuint(drain_efd(pv[0]), ==, 0);
    g_assert_cmpint(gd_device_notify_peer(d, 2), ==, -ERANGE);

    /* The server's order: PLUG_WINDOW, then the message, then the interrupt. The
     * bus is synced before the controlq is served, so the region finds its window. */
    m = (struct vp_lb_msg){ .type = VP_LB_PLUG_WINDOW, .slot = 3, .devfn = 0x10, .count = 1,
                            .size = WIN_SIZE };
    g_assert_cmpint(vp_lb_send(srv, &m, &wfd, 1), ==, 0);
    struct vp_cq_msg msg, ack;
    fk_mem_msg(&msg, VP_OP_ADD, 0x100000, 1 << 20, 0);
    uint64_t seq = fk_send(&fk, &msg);
    uint64_t one = 1;
    g_assert_cmpint(write(e[2], &one, 8), ==, 8);
    ITERATE_UNTIL(loop, fk_recv_ack(&fk, &ack) == 1);
    g_assert_cmpuint(ack.seq, ==, seq);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    g_assert_true(d->win[0].mapped);
    uint8_t *wmap = mmap(NULL, WIN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, wfd, 0);
    memcpy(wmap + 0x20, "seen", 4);
    uint64_t avail;
    uint8_t *p = gd_device_translate(d, 0x100020, 4, &avail);
    g_assert_nonnull(p);
    g_assert_cmpmem(p, 4, "seen", 4);
    munmap(wmap, WIN_SIZE);

    /* UNPLUG_WINDOW: the region goes, the window is unmapped, EJECTED answers. */
    m = (struct vp_lb_msg){ .type = VP_LB_UNPLUG_WINDOW, .slot = 3, .devfn = 0x10 };
    g_assert_cmpint(vp_lb_send(srv, &m, NULL, 0), ==, 0);
    lb_expect(loop, srv, VP_LB_EJECTED, 3, 0x10);
    g_assert_false(d->win[0].mapped);
    g_assert_cmpuint(d->mt.n, ==, 0);
    /* An unknown window is answered at once too. */
    m.devfn = 0x77;
    g_assert_cmpint(vp_lb_send(srv, &m, NULL, 0), ==, 0);
    lb_expect(loop, srv, VP_LB_EJECTED, 3, 0x77);

    /* PLUG_WINDOW with arg = a file offset (a piece of a file whose size is not a
     * power of two, issue 13 item 3): the second half of the file is mapped. */
    fk_set_window(fk.ca, 0, 0x10, 0, WIN_SIZE / 2);
    fk_publish_windows(fk.ca, 1);
    m = (struct vp_lb_msg){ .type = VP_LB_PLUG_WINDOW, .slot = 3, .devfn = 0x10, .count = 1,
                            .size = WIN_SIZE / 2, .arg = WIN_SIZE / 2 };
    g_assert_cmpint(vp_lb_send(srv, &m, &wfd, 1), ==, 0);
    fk_mem_msg(&msg, VP_OP_ADD, 0x100000, WIN_SIZE / 2, 0);
    seq = fk_send(&fk, &msg);
    g_assert_cmpint(write(e[2], &one, 8), ==, 8);
    ITERATE_UNTIL(loop, fk_recv_ack(&fk, &ack) == 1);
    g_assert_cmpuint(ack.seq, ==, seq);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    wmap = mmap(NULL, WIN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, wfd, 0);
    memcpy(wmap + WIN_SIZE / 2 + 0x20, "half", 4);
    p = gd_device_translate(d, 0x100020, 4, &avail);
    g_assert_nonnull(p);
    g_assert_cmpmem(p, 4, "half", 4);
    munmap(wmap, WIN_SIZE);
    m = (struct vp_lb_msg){ .type = VP_LB_UNPLUG_WINDOW, .slot = 3, .devfn = 0x10 };
    g_assert_cmpint(vp_lb_send(srv, &m, NULL, 0), ==, 0);
    lb_expect(loop, srv, VP_LB_EJECTED, 3, 0x10);
    /* An offset that is not page-aligned, or runs past the file's end: refused. */
    m = (struct vp_lb_msg){ .type = VP_LB_PLUG_WINDOW, .slot = 3, .devfn = 0x10, .count = 1,
                            .size = WIN_SIZE / 2, .arg = WIN_SIZE / 2 + 4096 };
    g_assert_cmpint(vp_lb_send(srv, &m, &wfd, 1), ==, 0);
    m.arg = 512;
    g_assert_cmpint(vp_lb_send(srv, &m, &wfd, 1), ==, 0);
    for (int i = 0; i < 5; i++)
        gd_loop_iterate(loop, 5 * 1000 * 1000);
    uint64_t wsize = 0;
    g_assert_cmpint(gd_bus_window_query(bus, 3, (struct gd_win_id){ .devfn = 0x10 }, &wsize),
                    ==, -ENOENT);

    /* UNPLUG_CONTROL: the device goes, EJECTED(control). */
    m = (struct vp_lb_msg){ .type = VP_LB_UNPLUG_CONTROL, .slot = 3 };
    g_assert_cmpint(vp_lb_send(srv, &m, NULL, 0), ==, 0);
    lb_expect(loop, srv, VP_LB_EJECTED, 3, VP_LB_CONTROL_DEVFN);
    g_assert_null(gd_cp_device(cp, 3));

    /* Plug again, then the server goes away: everything is unplugged, bus lost. */
    m = (struct vp_lb_msg){ .type = VP_LB_PLUG_CONTROL, .slot = 4, .count = 4,
                            .size = VP_CA_SIZE };
    fk_write_header(fk.ca, FK_BAR_SIZE);
    g_assert_cmpint(vp_lb_send(srv, &m, fds, 4), ==, 0);
    ITERATE_UNTIL(loop, gd_cp_device(cp, 4) != NULL);
    vp_close_fd(&rig.srv);
    ITERATE_UNTIL(loop, lost);
    g_assert_nonnull(strstr(lost_why, "closed by the server"));
    g_assert_null(gd_cp_device(cp, 4));

    lb_rig_down(&rig);
    munmap(fk.ca, VP_CA_SIZE);
    vp_close_fds(e, 3);
    vp_close_fds(pv, 2);
    close(small);
    close(wfd);
    close(cafd);
    vp_assert_fds(before);
}

static void test_local_bus_protocol_error(void)
{
    int before = vp_count_open_fds();
    struct lb_rig rig;
    lb_rig_up(&rig);
    /* EJECTED only travels guestd -> server. */
    struct vp_lb_msg m = { .type = VP_LB_EJECTED, .slot = 1 };
    g_assert_cmpint(vp_lb_send(rig.srv, &m, NULL, 0), ==, 0);
    ITERATE_UNTIL(rig.loop, lost);
    g_assert_nonnull(strstr(lost_why, "unexpected message type 7"));
    lb_rig_down(&rig);

    /* No server at all: a bounded retry, then a reason. */
    vp_error err = { { 0 } };
    struct gd_loop *loop = gd_loop_new();
    struct gd_bus *bus;
    uint64_t t0 = gd_now_ns();
    bus = gd_bus_local_new(loop, "/nonexistent/bus.sock", 100, &gd_cp_bus_events, NULL, &err);
    g_assert_null(bus);
    g_assert_cmpuint(gd_now_ns() - t0, >=, 90000000ULL);
    g_assert_nonnull(strstr(err.msg, "connecting to local bus /nonexistent/bus.sock"));
    gd_loop_free(loop);
    vp_assert_fds(before);
}

/* Plug a good control function into @slot of @r (control area + three eventfds the
 * test keeps in @e); returns the device. @fk is attached (the test can then send). */
static struct gd_device *plug_control(struct lb_rig *r, unsigned slot, struct fk_dev *fk,
                                      int *cafd, int e[3])
{
    *cafd = vp_test_memfd("ca", VP_CA_SIZE, TRUE);
    fk->ca = mmap(NULL, VP_CA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, *cafd, 0);
    g_assert_true(fk->ca != MAP_FAILED);
    fk_write_header(fk->ca, FK_BAR_SIZE);
    for (int i = 0; i < 3; i++)
        e[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int fds[4] = { *cafd, e[0], e[1], e[2] };
    struct vp_lb_msg m = { .type = VP_LB_PLUG_CONTROL, .slot = slot, .count = 4,
                           .size = VP_CA_SIZE };
    g_assert_cmpint(vp_lb_send(r->srv, &m, fds, 4), ==, 0);
    ITERATE_UNTIL(r->loop, gd_cp_device(r->cp, slot) != NULL);
    struct gd_device *d = gd_cp_device(r->cp, slot);
    g_assert_false(d->broken);
    fk_attach(fk);
    return d;
}

static void unplug_control(struct lb_rig *r, unsigned slot, struct fk_dev *fk, int *cafd,
                           int e[3])
{
    struct vp_lb_msg m = { .type = VP_LB_UNPLUG_CONTROL, .slot = slot };
    g_assert_cmpint(vp_lb_send(r->srv, &m, NULL, 0), ==, 0);
    lb_expect(r->loop, r->srv, VP_LB_EJECTED, slot, VP_LB_CONTROL_DEVFN);
    munmap(fk->ca, VP_CA_SIZE);
    vp_close_fds(e, 3);
    vp_close_fd(cafd);
}

static void set_blocking(int fd, bool blocking)
{
    int fl = fcntl(fd, F_GETFL);
    g_assert_cmpint(fl, >=, 0);
    fl = blocking ? fl & ~O_NONBLOCK : fl | O_NONBLOCK;
    g_assert_cmpint(fcntl(fd, F_SETFL, fl), ==, 0);
}

static bool is_nonblocking(int fd) { return fcntl(fd, F_GETFL) & O_NONBLOCK; }

/* Issue 12.1: the driver VM's call fds come from another process unchecked. A
 * blocking eventfd whose counter is full or a blocking pipe nobody reads must never
 * stall guestd (its doorbell returns at once), an fd of another kind is refused, and
 * a process that shares the file description and clears O_NONBLOCK again does not
 * stall it either. Without the fix the first doorbell below blocks for ever (the
 * alarm then ends the test program). */
static void test_local_bus_doorbell_never_blocks(void)
{
    gd_log_set_level(g_test_verbose() ? GD_LOG_DEBUG : GD_LOG_ERROR);
    int before = vp_count_open_fds();
    struct lb_rig rig;
    lb_rig_up(&rig);
    struct fk_dev fk = { 0 };
    int cafd, e[3];
    struct gd_device *d = plug_control(&rig, 3, &fk, &cafd, e);

    int full = eventfd(0, EFD_CLOEXEC);          /* blocking, counter at its maximum */
    uint64_t max = 0xfffffffffffffffeULL;
    g_assert_cmpint(write(full, &max, 8), ==, 8);
    int pp[2];
    g_assert_cmpint(pipe2(pp, O_CLOEXEC | O_NONBLOCK), ==, 0);
    char junk[4096] = { 0 };
    while (write(pp[1], junk, sizeof(junk)) > 0)
        ;                                        /* full pipe ... */
    set_blocking(pp[1], true);                   /* ... in blocking mode */
    int file = vp_test_memfd("not-an-eventfd", 4096, FALSE);
    int good = eventfd(0, EFD_CLOEXEC);
    int vec[4] = { full, pp[1], file, good };
    struct vp_lb_msg m = { .type = VP_LB_PEER_VECTORS, .slot = 3, .count = 4,
                           .arg = VP_ID_DRIVER_VM };
    g_assert_cmpint(vp_lb_send(rig.srv, &m, vec, 4), ==, 0);
    ITERATE_UNTIL(rig.loop, gd_bus_peer_vectors(rig.bus, 3, VP_ID_DRIVER_VM) == 4);
    /* guestd made the descriptions it kept non-blocking (the test shares them). */
    g_assert_true(is_nonblocking(full));
    g_assert_true(is_nonblocking(pp[1]));
    g_assert_true(is_nonblocking(good));

    alarm(20); /* a blocked doorbell ends the program instead of hanging the suite */
    g_assert_cmpint(gd_device_notify_peer(d, 0), ==, 0);      /* full counter: rung */
    g_assert_cmpint(gd_device_notify_peer(d, 1), ==, 0);      /* full pipe: rung */
    g_assert_cmpint(gd_device_notify_peer(d, 2), ==, -EBADF); /* refused at plug */
    g_assert_cmpint(gd_device_notify_peer(d, 3), ==, 0);
    uint64_t v = 0;
    g_assert_cmpint(read(good, &v, 8), ==, 8);
    g_assert_cmpuint(v, ==, 1);
    /* Someone clears O_NONBLOCK again behind guestd's back: still never blocks. */
    set_blocking(full, true);
    set_blocking(pp[1], true);
    for (int i = 0; i < 100; i++) {
        g_assert_cmpint(gd_device_notify_peer(d, 0), ==, 0);
        g_assert_cmpint(gd_device_notify_peer(d, 1), ==, 0);
    }
    /* Once the reader reads, the doorbell gets through again. */
    g_assert_cmpint(read(full, &v, 8), ==, 8);
    g_assert_cmpint(gd_device_notify_peer(d, 0), ==, 0);
    g_assert_cmpint(read(full, &v, 8), ==, 8);
    g_assert_cmpuint(v, ==, 1);
    alarm(0);
    /* The control plane went on: the controlq still answers. */
    struct vp_cq_msg msg, ack;
    fk_feature_msg(&msg, 1ULL << VP_VIRTIO_F_VERSION_1);
    uint64_t seq = fk_send(&fk, &msg);
    uint64_t one = 1;
    g_assert_cmpint(write(e[2], &one, 8), ==, 8);
    ITERATE_UNTIL(rig.loop, fk_recv_ack(&fk, &ack) == 1);
    g_assert_cmpuint(ack.seq, ==, seq);
    g_assert_false(lost);

    unplug_control(&rig, 3, &fk, &cafd, e);
    lb_rig_down(&rig);
    vp_close_fd(&full);
    vp_close_fds(pp, 2);
    vp_close_fd(&file);
    vp_close_fd(&good);
    vp_assert_fds(before);
}

static int *new_eventfds(unsigned n)
{
    int *f = g_new(int, n);
    for (unsigned i = 0; i < n; i++) {
        f[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        g_assert_cmpint(f[i], >=, 0);
    }
    return f;
}

/* Issue 12.4: guestd out of fds. A message whose fds the kernel cannot install
 * (MSG_CTRUNC) is refused on its own: the bus is not lost, the device and its
 * vectors stay, and once fds are free again the next message is taken. Without the
 * fix guestd lost the bus (and with it every device). Then the fd budget: a bus
 * created under a low limit refuses a PEER_VECTORS that would eat the reserve. */
static void test_local_bus_out_of_fds(void)
{
    gd_log_set_level(g_test_verbose() ? GD_LOG_DEBUG : GD_LOG_ERROR);
    int before = vp_count_open_fds();
    struct rlimit old;
    g_assert_cmpint(getrlimit(RLIMIT_NOFILE, &old), ==, 0);
    struct lb_rig rig;
    lb_rig_up(&rig);
    struct fk_dev fk = { 0 };
    int cafd, e[3];
    struct gd_device *d = plug_control(&rig, 3, &fk, &cafd, e);
    int *two = new_eventfds(2);
    struct vp_lb_msg m = { .type = VP_LB_PEER_VECTORS, .slot = 3, .count = 2,
                           .arg = VP_ID_DRIVER_VM };
    g_assert_cmpint(vp_lb_send(rig.srv, &m, two, 2), ==, 0);
    ITERATE_UNTIL(rig.loop, gd_bus_peer_vectors(rig.bus, 3, VP_ID_DRIVER_VM) == 2);

    enum { N = 40 };
    int *many = new_eventfds(N);
    m.count = N;
    g_assert_cmpint(vp_lb_send(rig.srv, &m, many, N), ==, 0);
    int wfd = vp_test_memfd("win", WIN_SIZE, TRUE);
    struct vp_lb_msg w = { .type = VP_LB_PLUG_WINDOW, .slot = 3, .devfn = 0x10, .count = 1,
                           .size = WIN_SIZE };
    g_assert_cmpint(vp_lb_send(rig.srv, &w, &wfd, 1), ==, 0);
    struct rlimit tight = old;
    tight.rlim_cur = (rlim_t)vp_count_open_fds() + 8;
    g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &tight), ==, 0);
    int fill[16];                                     /* every fd number taken */
    unsigned nfill = 0;
    while (nfill < G_N_ELEMENTS(fill) && (fill[nfill] = dup(0)) >= 0)
        nfill++;
    g_assert_cmpuint(nfill, <, G_N_ELEMENTS(fill));
    for (int i = 0; i < 10; i++)
        gd_loop_iterate(rig.loop, 1000000);
    vp_close_fds(fill, nfill);
    g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &old), ==, 0);
    g_assert_false(lost);
    g_assert_true(gd_cp_device(rig.cp, 3) == d);
    g_assert_cmpint(gd_bus_peer_vectors(rig.bus, 3, VP_ID_DRIVER_VM), ==, 2);
    uint64_t size = 0;
    g_assert_cmpint(gd_bus_window_query(rig.bus, 3, (struct gd_win_id){ .devfn = 0x10 },
                                        &size), ==, -ENOENT);
    g_assert_cmpint(gd_device_notify_peer(d, 1), ==, 0);
    g_assert_cmpuint(drain_efd(two[1]), ==, 1);
    /* fds are free again: the same messages now go through. */
    g_assert_cmpint(vp_lb_send(rig.srv, &m, many, N), ==, 0);
    g_assert_cmpint(vp_lb_send(rig.srv, &w, &wfd, 1), ==, 0);
    ITERATE_UNTIL(rig.loop, gd_bus_peer_vectors(rig.bus, 3, VP_ID_DRIVER_VM) == N);
    ITERATE_UNTIL(rig.loop, gd_bus_window_query(rig.bus, 3, (struct gd_win_id){ .devfn = 0x10 },
                                                &size) == 0);
    unplug_control(&rig, 3, &fk, &cafd, e);
    lb_rig_down(&rig);

    /* The budget: a bus that may hold 30 fds refuses a PEER_VECTORS that would take
     * it over (the kernel could install them: the budget keeps a reserve). */
    lb_rig_up(&rig);
    gd_bus_local_set_fd_budget(rig.bus, 30);
    d = plug_control(&rig, 4, &fk, &cafd, e);
    m.slot = 4;
    m.count = 20;
    g_assert_cmpint(vp_lb_send(rig.srv, &m, many, 20), ==, 0);
    ITERATE_UNTIL(rig.loop, gd_bus_peer_vectors(rig.bus, 4, VP_ID_DRIVER_VM) == 20);
    m.count = 30;
    g_assert_cmpint(vp_lb_send(rig.srv, &m, many, 30), ==, 0);
    for (int i = 0; i < 10; i++)
        gd_loop_iterate(rig.loop, 1000000);
    g_assert_cmpint(gd_bus_peer_vectors(rig.bus, 4, VP_ID_DRIVER_VM), ==, 20); /* refused */
    g_assert_false(lost);
    g_assert_true(gd_cp_device(rig.cp, 4) == d);
    m.count = 27; /* 3 eventfds + 27 vectors: exactly the budget */
    g_assert_cmpint(vp_lb_send(rig.srv, &m, many, 27), ==, 0);
    ITERATE_UNTIL(rig.loop, gd_bus_peer_vectors(rig.bus, 4, VP_ID_DRIVER_VM) == 27);
    unplug_control(&rig, 4, &fk, &cafd, e);
    lb_rig_down(&rig);

    vp_close_fds(two, 2);
    vp_close_fds(many, N);
    g_free(two);
    g_free(many);
    vp_close_fd(&wfd);
    vp_assert_fds(before);
}

/* ------------------------------- pci bus ------------------------------- */

static char *mkfn(const char *root, const char *addr)
{
    char *d = g_build_filename(root, "bus", "pci", "devices", addr, NULL);
    g_assert_cmpint(g_mkdir_with_parents(d, 0755), ==, 0);
    return d;
}

static void put_file(const char *dir, const char *name, const void *data, size_t len,
                     size_t size)
{
    char *p = g_build_filename(dir, name, NULL);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    g_assert_cmpint(fd, >=, 0);
    if (len)
        g_assert_cmpint(write(fd, data, len), ==, (ssize_t)len);
    g_assert_cmpint(ftruncate(fd, (off_t)size), ==, 0);
    close(fd);
    g_free(p);
}

static void ivshmem_fn(const char *dir, bool msix, size_t bar2)
{
    put_file(dir, "vendor", "0x1af4\n", 7, 7);
    put_file(dir, "device", "0x1110\n", 7, 7);
    put_file(dir, "resource0", NULL, 0, 256);
    if (msix)
        put_file(dir, "resource1", NULL, 0, 4096);
    put_file(dir, "resource2", NULL, 0, bar2);
}

static uint8_t *map_file(const char *dir, const char *name, size_t size)
{
    char *p = g_build_filename(dir, name, NULL);
    int fd = open(p, O_RDWR | O_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    g_assert_true(m != MAP_FAILED);
    close(fd);
    g_free(p);
    return m;
}

static void rm_fn(const char *dir)
{
    static const char *const files[] = { "vendor", "device", "resource", "resource0",
                                         "resource1", "resource2" };
    for (unsigned i = 0; i < G_N_ELEMENTS(files); i++) {
        char *p = g_build_filename(dir, files[i], NULL);
        unlink(p);
        g_free(p);
    }
    g_assert_cmpint(rmdir(dir), ==, 0);
}

static void test_pci_bus(void)
{
    gd_log_set_level(g_test_verbose() ? GD_LOG_DEBUG : GD_LOG_ERROR);
    int before = vp_count_open_fds();
    char *root = g_dir_make_tmp("guestd-sysfs-XXXXXX", NULL);
    /* 00:05.0 control function, 00:06.0 window, 00:07.0 a window whose first bytes
     * the peer made look like a control area (no MSI-X BAR: not a control). */
    char *ctl = mkfn(root, "0000:00:05.0");
    char *win = mkfn(root, "0000:00:06.0");
    char *fake = mkfn(root, "0000:00:07.0");
    char *other = mkfn(root, "0000:00:02.0");
    ivshmem_fn(ctl, true, VP_CA_SIZE);
    ivshmem_fn(win, false, WIN_SIZE);
    ivshmem_fn(fake, false, VP_CA_SIZE);
    put_file(other, "vendor", "0x8086\n", 7, 7);
    put_file(other, "device", "0x100e\n", 7, 7);
    struct fk_dev fk = { 0 };
    fk.ca = map_file(ctl, "resource2", VP_CA_SIZE);
    fk_write_header(fk.ca, FK_BAR_SIZE);
    uint8_t *fk2 = map_file(fake, "resource2", VP_CA_SIZE);
    fk_write_header(fk2, FK_BAR_SIZE);
    /* BAR0 (512 bytes here) starts 0x100 into its page: the kernel's resource0 mapping
     * starts at the page, so the registers are 0x100 into the mapping (the fake
     * resource0 file stands for that page). */
    const char res[] = "0x00000000febf1100 0x00000000febf12ff 0x0000000000040200\n"
                       "0x00000000febf2000 0x00000000febf2fff 0x0000000000040200\n";
    put_file(ctl, "resource", res, sizeof(res) - 1, sizeof(res) - 1);
    put_file(ctl, "resource0", NULL, 0, 512);
    uint8_t *regs_page = map_file(ctl, "resource0", 512);
    uint8_t *regs = regs_page + 0x100;
    vp_put_le32(regs + VP_IVSHMEM_DOORBELL_REG, 0xffffffff);
    /* The window table names 0000:00:06.0 (devfn 6 << 3). */
    fk_set_window(fk.ca, 0, 6 << 3, 2 << 20, WIN_SIZE);
    fk_publish_windows(fk.ca, 1);

    struct gd_loop *loop = gd_loop_new();
    struct gd_cp *cp = gd_cp_new(loop, NULL);
    vp_error err = { { 0 } };
    struct gd_bus *bus = gd_bus_pci_new(loop, root, 0, &gd_cp_bus_events, cp, &err);
    g_assert_nonnull(bus);
    gd_cp_set_bus(cp, bus);
    g_assert_cmpint(gd_bus_start(bus, &err), ==, 0);
    ITERATE_UNTIL(loop, gd_cp_device(cp, 5 << 3) != NULL);
    struct gd_device *d = gd_cp_device(cp, 5 << 3);
    g_assert_false(d->broken);
    g_assert_null(gd_cp_device(cp, 7 << 3)); /* magic alone is not enough */
    g_assert_cmpuint(fk_status(fk.ca), ==, 15);
    g_assert_cmpuint(fk_status(fk2), ==, 0);
    g_assert_cmpuint(vp_get_le32(regs + VP_IVSHMEM_DOORBELL_REG), ==, 0); /* id 0, vector 0 */
    g_assert_cmpint(gd_bus_irq_fd(bus, 5 << 3), ==, -1);
    ITERATE_UNTIL(loop, d->win[0].mapped);
    fk_attach(&fk);

    /* Polled controlq: no interrupt needed. */
    uint8_t *wmap = map_file(win, "resource2", WIN_SIZE);
    memcpy(wmap + 8, "pci!", 4);
    struct vp_cq_msg msg, ack;
    fk_mem_msg(&msg, VP_OP_ADD, 0x100000, 1 << 20, 2 << 20);
    uint64_t seq = fk_send(&fk, &msg);
    ITERATE_UNTIL(loop, fk_recv_ack(&fk, &ack) == 1);
    g_assert_cmpuint(ack.seq, ==, seq);
    g_assert_cmpuint(ack.u.ack.result, ==, VP_ACK_ADD_DONE);
    uint64_t avail;
    uint8_t *p = gd_device_translate(d, 0x100008, 4, &avail);
    g_assert_nonnull(p);
    g_assert_cmpmem(p, 4, "pci!", 4);
    munmap(wmap, WIN_SIZE);

    /* Doorbell encoding: (peer << 16) | vector. */
    g_assert_cmpint(gd_device_notify_peer(d, 7), ==, 0);
    g_assert_cmpuint(vp_get_le32(regs + VP_IVSHMEM_DOORBELL_REG), ==, (2u << 16) | 7);
    g_assert_cmpint(gd_device_notify_peer(d, 300), ==, -ERANGE);

    /* The window vanishes (ACPI unplug): region dropped, window unmapped. */
    rm_fn(win);
    gd_bus_sync(bus);
    g_assert_false(d->win[0].mapped);
    g_assert_cmpuint(d->mt.n, ==, 0);
    /* The control function is unplugged but not rescanned yet: its BAR reads as
     * zeros. Not the peer's fault: service stops quietly, nothing is written. */
    char *r2 = g_build_filename(ctl, "resource2", NULL);
    g_assert_cmpint(unlink(r2), ==, 0);
    g_free(r2);
    vp_put_le32(fk.ca + VP_CA_OFF_GENERATION, 0);
    ITERATE_UNTIL(loop, d->broken);
    g_assert_cmpstr(d->reason, ==, "control function removed");
    g_assert_cmpuint(fk_status(fk.ca), ==, 15);
    /* Before the rescan, a new control function is plugged at the same address (a
     * restarted server re-plugs the slot within a second of removing what the killed
     * one left): a new sysfs directory. The rescan tells them apart: the old device
     * goes, a new one is served. (The old directory is kept aside meanwhile, so the
     * new one cannot get its inode.) Without it the broken device stayed and the new
     * function was never served. */
    char *ctl_old = g_strconcat(ctl, ".old", NULL);
    g_assert_cmpint(rename(ctl, ctl_old), ==, 0);
    g_free(mkfn(root, "0000:00:05.0"));
    ivshmem_fn(ctl, true, VP_CA_SIZE);
    uint8_t *ca2 = map_file(ctl, "resource2", VP_CA_SIZE);
    fk_write_header(ca2, FK_BAR_SIZE);
    gd_bus_sync(bus);
    struct gd_device *d2 = gd_cp_device(cp, 5 << 3);
    g_assert_nonnull(d2);
    g_assert_false(d2->broken);
    ITERATE_UNTIL(loop, fk_status(ca2) == 15);
    rm_fn(ctl_old);
    g_free(ctl_old);
    /* The rescan then unplugs it: the device goes. */
    rm_fn(ctl);
    gd_bus_sync(bus);
    g_assert_null(gd_cp_device(cp, 5 << 3));
    munmap(ca2, VP_CA_SIZE);

    gd_cp_shutdown(cp);
    gd_bus_destroy(bus);
    gd_cp_free(cp);
    gd_loop_free(loop);
    munmap(fk.ca, VP_CA_SIZE);
    munmap(fk2, VP_CA_SIZE);
    munmap(regs_page, 512);
    rm_fn(fake);
    char *p2 = g_build_filename(other, "vendor", NULL);
    unlink(p2);
    g_free(p2);
    p2 = g_build_filename(other, "device", NULL);
    unlink(p2);
    g_free(p2);
    rmdir(other);
    char *devs = g_build_filename(root, "bus", "pci", "devices", NULL);
    char *pci = g_build_filename(root, "bus", "pci", NULL);
    char *busd = g_build_filename(root, "bus", NULL);
    g_assert_cmpint(rmdir(devs), ==, 0);
    rmdir(pci);
    rmdir(busd);
    g_assert_cmpint(rmdir(root), ==, 0);
    g_free(devs);
    g_free(pci);
    g_free(busd);
    g_free(ctl);
    g_free(win);
    g_free(fake);
    g_free(other);
    g_free(root);
    vp_assert_fds(before);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/guestd/bus/local", test_local_bus);
    g_test_add_func("/guestd/bus/local-protocol-error", test_local_bus_protocol_error);
    g_test_add_func("/guestd/bus/local-doorbell-never-blocks",
                    test_local_bus_doorbell_never_blocks);
    g_test_add_func("/guestd/bus/local-out-of-fds", test_local_bus_out_of_fds);
    g_test_add_func("/guestd/bus/pci", test_pci_bus);
    return g_test_run();
}
