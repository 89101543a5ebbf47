/*
 * test-guestd-loop.c - when the guest driver's event loop (guest-driver/loop.c) reads
 * the clock, and that the bounds it promises still hold (loop.h "Reading the clock").
 *
 * The loop runs on a clock of the test's own (gd_loop_set_clock): a fake monotonic
 * time that the pollers advance by a fixed step per call, so that "iterations of
 * 1 us each" is exact and each bound is checked to the nanosecond, whatever the load
 * of the machine. ppoll still runs for real (timeouts of 0 while the loop spins; a
 * few microseconds while it backs off). The real-clock behaviour (idle back-off in
 * real time, fd watches, timer removal) is /guestd/loop in test-guestd-controlplane.c.
 *
 * Covers: a busy or spinning loop reads the clock about once per GD_CLOCK_PERIOD_NS,
 * not per iteration; a timer still fires within GD_CLOCK_PERIOD_NS of its due time
 * while pollers are always busy, and within GD_CLOCK_STRIDE_MAX iterations when the
 * iterations suddenly grow longer; a timer added from a poller is checked at once;
 * fds are still checked every GD_FD_CHECK_ITERS iterations and within about
 * GD_FD_CHECK_NS while busy; the spin window still ends within a period and the loop
 * then sleeps (ppoll with a timeout) on every idle iteration.
 */
#include <errno.h>
#include <glib.h>
#include <poll.h>
#include <unistd.h>

#include "loop.h"
#include "testutil.h"
#include "vp_common.h"

/* The fake clock and a poller that advances it by @step_ns per call. */
struct fake {
    uint64_t t;                   /* now, ns (starts well above 0) */
    uint64_t step_ns;             /* added by each poller call */
    int busy;                     /* > 0: calls left that report work; < 0: always */
    uint64_t last_work_t;         /* t after the last call that reported work */
    uint64_t calls;
};

static uint64_t fake_clock(void *opaque) { return ((struct fake *)opaque)->t; }

static int fake_poller(void *opaque)
{
    struct fake *f = opaque;
    f->t += f->step_ns;
    f->calls++;
    if (f->busy == 0)
        return 0;
    if (f->busy > 0)
        f->busy--;
    f->last_work_t = f->t;
    return 1;
}

struct fired {
    int n;
    uint64_t at;                  /* fake time it fired */
    uint64_t iter;                /* loop iteration it fired in */
    struct fake *f;
    struct gd_loop *loop;
};

static void on_timer(void *opaque)
{
    struct fired *fi = opaque;
    struct gd_loop_stats st;
    gd_loop_get_stats(fi->loop, &st);
    fi->n++;
    fi->at = fi->f->t;
    fi->iter = st.iterations;
}

static struct gd_loop *new_fake_loop(struct fake *f, uint64_t step_ns, int busy,
                                     uint64_t max_sleep_ns)
{
    *f = (struct fake){ .t = 1000000000ULL, .step_ns = step_ns, .busy = busy };
    struct gd_loop *loop = gd_loop_new();
    g_assert_nonnull(loop);
    gd_loop_set_clock(loop, fake_clock, f);
    g_assert_cmpint(gd_loop_add_poller(loop, fake_poller, f, max_sleep_ns), >, 0);
    return loop;
}

static struct gd_loop_stats stats(struct gd_loop *loop)
{
    struct gd_loop_stats st;
    gd_loop_get_stats(loop, &st);
    return st;
}

/* Pollers always busy, 100 ns per iteration: the loop reads the clock about every
 * GD_CLOCK_PERIOD_NS, not on each of the 4000 iterations; with no fd watched, it
 * makes no ppoll at all (it made one every GD_FD_CHECK_ITERS iterations). */
static void test_busy_reads_rarely(void)
{
    struct fake f;
    struct gd_loop *loop = new_fake_loop(&f, 100, -1, 1000000);
    const unsigned iters = 4000;
    for (unsigned i = 0; i < iters; i++)
        g_assert_cmpint(gd_loop_iterate(loop, -1), ==, 1);
    struct gd_loop_stats st = stats(loop);
    g_assert_cmpuint(st.iterations, ==, iters);
    /* 100 ns x 32 iterations < GD_CLOCK_PERIOD_NS: the stride reaches its maximum,
     * and each fd check comes at a read. The old loop read on every iteration. */
    g_assert_cmpuint(st.clock_reads, <=, iters / 16);
    g_assert_cmpuint(st.fd_checks, ==, 0);
    g_assert_cmpuint(st.sleeps, ==, 0);
    gd_loop_free(loop);
}

/* Run until @fi fired (bounded). */
static void run_until_fired(struct gd_loop *loop, struct fired *fi, unsigned max_iters)
{
    for (unsigned i = 0; i < max_iters && !fi->n; i++)
        g_assert_cmpint(gd_loop_iterate(loop, -1), >=, 0);
    g_assert_cmpint(fi->n, ==, 1);
}

/* Pollers always busy, 1 us per iteration: a 200 us timer fires, not early, and at
 * most GD_CLOCK_PERIOD_NS plus one iteration late, while the clock is read on fewer
 * than half the iterations. */
static void test_timer_while_busy(void)
{
    struct fake f;
    struct gd_loop *loop = new_fake_loop(&f, 1000, -1, 1000000);
    for (unsigned i = 0; i < 100; i++) /* the stride settles */
        gd_loop_iterate(loop, -1);
    struct gd_loop_stats st0 = stats(loop);
    struct fired fi = { .f = &f, .loop = loop };
    uint64_t due = f.t + 200000;
    g_assert_cmpint(gd_loop_add_timer(loop, 200000, on_timer, &fi), >, 0);
    run_until_fired(loop, &fi, 100000);
    g_assert_cmpuint(fi.at, >=, due);
    g_assert_cmpuint(fi.at - due, <=, GD_CLOCK_PERIOD_NS + f.step_ns);
    struct gd_loop_stats st = stats(loop);
    g_assert_cmpuint(st.clock_reads - st0.clock_reads, <, (st.iterations - st0.iterations) / 2);
    gd_loop_free(loop);
}

/* The iterations suddenly grow from 10 ns to 10 us (traffic starts) while the stride
 * is at its maximum: a timer due meanwhile fires at most GD_CLOCK_STRIDE_MAX
 * iterations late; then the stride fits the new length and the next timer fires
 * within GD_CLOCK_PERIOD_NS plus one iteration again. */
static void test_timer_when_iterations_grow(void)
{
    struct fake f;
    struct gd_loop *loop = new_fake_loop(&f, 10, -1, 1000000);
    for (unsigned i = 0; i < 1000; i++)
        gd_loop_iterate(loop, -1);
    struct fired fi = { .f = &f, .loop = loop };
    uint64_t due = f.t + 30000;
    g_assert_cmpint(gd_loop_add_timer(loop, 30000, on_timer, &fi), >, 0);
    gd_loop_iterate(loop, -1); /* the read the new timer asks for: not due yet */
    g_assert_cmpint(fi.n, ==, 0);
    f.step_ns = 10000;
    run_until_fired(loop, &fi, 100000);
    g_assert_cmpuint(fi.at, >=, due);
    g_assert_cmpuint(fi.at - due, <=, GD_CLOCK_STRIDE_MAX * f.step_ns);

    struct fired fi2 = { .f = &f, .loop = loop };
    due = f.t + 300000;
    g_assert_cmpint(gd_loop_add_timer(loop, 300000, on_timer, &fi2), >, 0);
    run_until_fired(loop, &fi2, 100000);
    g_assert_cmpuint(fi2.at, >=, due);
    g_assert_cmpuint(fi2.at - due, <=, GD_CLOCK_PERIOD_NS + f.step_ns);
    gd_loop_free(loop);
}

/* A poller that adds a timer of 0 ns while the loop spins with its largest stride:
 * the timer runs in that same iteration (the new timer makes it read the clock). */
struct adder {
    struct fake *f;
    struct fired *fi;
    struct gd_loop *loop;
    bool add;
};

static int adding_poller(void *opaque)
{
    struct adder *a = opaque;
    if (a->add) {
        a->add = false;
        g_assert_cmpint(gd_loop_add_timer(a->loop, 0, on_timer, a->fi), >, 0);
    }
    return 1;
}

static void test_timer_added_while_spinning(void)
{
    struct fake f;
    struct gd_loop *loop = new_fake_loop(&f, 10, -1, 1000000);
    struct fired fi = { .f = &f, .loop = loop };
    struct adder a = { .f = &f, .fi = &fi, .loop = loop };
    g_assert_cmpint(gd_loop_add_poller(loop, adding_poller, &a, 1000000), >, 0);
    for (unsigned i = 0; i < 1000; i++)
        gd_loop_iterate(loop, -1);
    for (unsigned k = 0; k < 3; k++) { /* wherever the stride stands */
        uint64_t reads = stats(loop).clock_reads;
        a.add = true;
        gd_loop_iterate(loop, -1);
        g_assert_cmpint(fi.n, ==, (int)k + 1);
        g_assert_cmpuint(stats(loop).clock_reads, >, reads);
        gd_loop_iterate(loop, -1);
    }
    gd_loop_free(loop);
}

/* An fd watch that drains its socket and notes the fake time of each dispatch. */
struct fd_seen {
    struct fake *f;
    unsigned dispatches;
    uint64_t at;
};

static void on_fd(void *opaque, int fd, short revents)
{
    struct fd_seen *seen = opaque;
    char buf[8];
    g_assert_true(revents & POLLIN);
    g_assert_cmpint(read(fd, buf, sizeof(buf)), >, 0);
    seen->dispatches++;
    seen->at = seen->f->t;
}

/* A fake loop (new_fake_loop) watching one end of a socketpair with on_fd. */
struct fd_fx {
    struct fake f;
    struct gd_loop *loop;
    int sv[2], id, fds_before;
    struct fd_seen seen;
};

static void fd_fx_init(struct fd_fx *x, uint64_t step_ns, uint64_t max_sleep_ns)
{
    x->fds_before = vp_count_open_fds();
    x->loop = new_fake_loop(&x->f, step_ns, -1, max_sleep_ns);
    vp_test_socketpair(x->sv);
    x->seen = (struct fd_seen){ .f = &x->f };
    x->id = gd_loop_add_fd(x->loop, x->sv[0], POLLIN, on_fd, &x->seen);
    g_assert_cmpint(x->id, >, 0);
}

static void fd_fx_fini(struct fd_fx *x)
{
    gd_loop_free(x->loop);
    vp_close_fd(&x->sv[0]);
    vp_close_fd(&x->sv[1]);
    vp_assert_fds(x->fds_before);
}

/* Pollers always busy: input on a watched fd is dispatched within
 * GD_FD_CHECK_ITERS + 1 iterations of 100 ns, and, with iterations of 10 us, within
 * GD_FD_CHECK_NS plus a clock period and one iteration. */
static void test_fds_while_busy(void)
{
    struct fd_fx x;
    fd_fx_init(&x, 100, 1000000);
    for (unsigned round = 0; round < 2; round++) {
        for (unsigned i = 0; i < 1000; i++)
            gd_loop_iterate(x.loop, -1);
        for (unsigned k = 0; k < 5; k++) {
            g_assert_cmpint(write(x.sv[1], "x", 1), ==, 1);
            uint64_t t0 = x.f.t;
            unsigned want = x.seen.dispatches + 1;
            for (unsigned n = 0; x.seen.dispatches < want; n++) {
                g_assert_cmpuint(n, <=, GD_FD_CHECK_ITERS + 1);
                gd_loop_iterate(x.loop, -1);
            }
            g_assert_cmpuint(x.seen.at - t0, <=, GD_FD_CHECK_NS + GD_CLOCK_PERIOD_NS + x.f.step_ns);
            for (unsigned i = 0; i < 7 * k; i++) /* another phase against the checks */
                gd_loop_iterate(x.loop, -1);
        }
        x.f.step_ns = 10000;
    }
    g_assert_cmpuint(stats(x.loop).sleeps, ==, 0);
    fd_fx_fini(&x);
}

/* A lazy watch (gd_loop_set_fd_lazy: a worker's wake eventfd) and iterations of
 * 10 ns (a ping-pong's empty polls, issue 11): while busy, no ppoll at all (the
 * loop made one every 33 iterations: 600 in these 200 us; a frame arriving during
 * one waited for it); input on the lazy watch waits until the loop stops spinning
 * and is then dispatched at the first iteration that sleeps. Made eager again,
 * the iteration bound is back. */
static void test_lazy_fd_while_busy(void)
{
    struct fd_fx x;
    fd_fx_init(&x, 10, 20000);
    g_assert_cmpint(gd_loop_set_fd_lazy(x.loop, x.id, true), ==, 0);
    g_assert_cmpint(gd_loop_set_fd_lazy(x.loop, x.id + 100, true), ==, -ENOENT);
    for (unsigned i = 0; i < 1000; i++) /* the stride settles */
        gd_loop_iterate(x.loop, -1);
    struct gd_loop_stats st0 = stats(x.loop);
    const unsigned iters = 20000;
    for (unsigned i = 0; i < iters; i++)
        gd_loop_iterate(x.loop, -1);
    struct gd_loop_stats st = stats(x.loop);
    g_assert_cmpuint(st.fd_checks - st0.fd_checks, ==, 0);
    g_assert_cmpint(write(x.sv[1], "x", 1), ==, 1);
    for (unsigned i = 0; i < iters; i++)
        gd_loop_iterate(x.loop, -1);
    g_assert_cmpuint(x.seen.dispatches, ==, 0);
    /* Eager again: checked every GD_FD_CHECK_ITERS iterations. */
    g_assert_cmpint(gd_loop_set_fd_lazy(x.loop, x.id, false), ==, 0);
    st0 = stats(x.loop);
    for (unsigned i = 0; i < 3300; i++)
        gd_loop_iterate(x.loop, -1);
    g_assert_cmpuint(stats(x.loop).fd_checks - st0.fd_checks, >=, 3300 / (GD_FD_CHECK_ITERS + 1));
    g_assert_cmpuint(x.seen.dispatches, ==, 1);
    /* Lazy, busy: nothing; idle: dispatched at the first iteration that sleeps. */
    g_assert_cmpint(gd_loop_set_fd_lazy(x.loop, x.id, true), ==, 0);
    g_assert_cmpint(write(x.sv[1], "x", 1), ==, 1);
    for (unsigned i = 0; i < 1000; i++)
        gd_loop_iterate(x.loop, -1);
    g_assert_cmpuint(x.seen.dispatches, ==, 1);
    x.f.busy = 0;
    x.f.step_ns = 1000;
    while (!stats(x.loop).sleeps) {
        g_assert_cmpuint(x.seen.dispatches, ==, 1);
        gd_loop_iterate(x.loop, -1);
    }
    g_assert_cmpuint(x.seen.dispatches, ==, 2);
    fd_fx_fini(&x);
}

/* Work stops: the loop spins on for the spin window (no sleep), begins to sleep at
 * most two clock periods (plus one iteration) after it ended (work counts at the
 * read after it, the end is seen at a read), and from then on sleeps
 * and reads the clock on every idle iteration; work again: it spins at once. */
static void test_spin_then_sleep(void)
{
    struct fake f;
    struct gd_loop *loop = new_fake_loop(&f, 100, 50, 20000);
    const uint64_t spin = 50000;
    gd_loop_set_spin_ns(loop, spin);
    uint64_t first_sleep_t = 0;
    for (unsigned i = 0; i < 100000 && !first_sleep_t; i++) {
        gd_loop_iterate(loop, -1);
        if (stats(loop).sleeps)
            first_sleep_t = f.t;
        else if (f.busy == 0)
            g_assert_cmpuint(f.t - f.last_work_t, <, spin + 2 * GD_CLOCK_PERIOD_NS + f.step_ns);
    }
    g_assert_cmpuint(first_sleep_t, !=, 0);
    g_assert_cmpuint(first_sleep_t - f.last_work_t, >=, spin);
    g_assert_cmpuint(first_sleep_t - f.last_work_t, <=, spin + 2 * GD_CLOCK_PERIOD_NS + f.step_ns);

    struct gd_loop_stats st0 = stats(loop);
    for (unsigned i = 0; i < 40; i++)
        gd_loop_iterate(loop, -1);
    struct gd_loop_stats st = stats(loop);
    g_assert_cmpuint(st.sleeps - st0.sleeps, ==, 40);
    g_assert_cmpuint(st.clock_reads - st0.clock_reads, >=, 40);

    /* Busy again: no more sleeping. */
    f.busy = -1;
    for (unsigned i = 0; i < 200; i++)
        gd_loop_iterate(loop, -1);
    g_assert_cmpuint(stats(loop).sleeps, ==, st.sleeps);
    gd_loop_free(loop);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/guestd-loop/busy-reads-clock-rarely", test_busy_reads_rarely);
    g_test_add_func("/guestd-loop/timer-while-busy", test_timer_while_busy);
    g_test_add_func("/guestd-loop/timer-when-iterations-grow", test_timer_when_iterations_grow);
    g_test_add_func("/guestd-loop/timer-added-while-spinning", test_timer_added_while_spinning);
    g_test_add_func("/guestd-loop/fds-while-busy", test_fds_while_busy);
    g_test_add_func("/guestd-loop/lazy-fd-while-busy", test_lazy_fd_while_busy);
    g_test_add_func("/guestd-loop/spin-then-sleep", test_spin_then_sleep);
    return g_test_run();
}
