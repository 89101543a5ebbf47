/*
 * loop.h - the single-threaded event loop of vhost-pci-guestd (libc only, poll-based).
 *
 * Three kinds of sources, all dispatched on the one thread:
 *  - fd watches (poll(2) events),
 *  - one-shot timers (CLOCK_MONOTONIC, nanoseconds),
 *  - pollers: callbacks run on every iteration that report whether they did work.
 *    This is the idle/busy-poll hook of the data path (DESIGN section 3: a userspace
 *    guest driver cannot take MSI-X interrupts, so it polls rings adaptively): while
 *    any poller reports work the loop does not sleep at all; once every poller has
 *    been idle for the spin window, the loop sleeps in growing steps (doubling from
 *    1 us) up to the smallest max_sleep_ns of the registered pollers, and wakes at
 *    once for fd events and timers. While the loop spins (busy, or within the spin
 *    window), fds are checked (one ppoll) only every GD_FD_CHECK_NS or
 *    GD_FD_CHECK_ITERS iterations, whichever comes first (never while every watch is
 *    lazy, gd_loop_set_fd_lazy), so a polling data path makes no syscall per poll.
 *
 * Reading the clock: a spinning loop does not read CLOCK_MONOTONIC on every
 * iteration either (a clock_gettime per empty poll was a sixth of a busy data path's
 * time). It reads it every clock_stride iterations, the stride adapting so that reads
 * come about GD_CLOCK_PERIOD_NS apart: doubled (up to GD_CLOCK_STRIDE_MAX) while a
 * whole stride takes less than half the period, cut to the iterations that fit in
 * one period when the last stride took longer. It reads it on every iteration that
 * may sleep (backing off, no poller, a timer just added) and on every fd check.
 * Everything that needs the time is decided at a read, so while the loop spins:
 *  - a timer fires, the spin window ends and the GD_FD_CHECK_NS bound is noticed at
 *    most one stride late: with iterations of steady length, at most
 *    GD_CLOCK_PERIOD_NS (plus one iteration) late; when iterations suddenly grow
 *    longer (traffic starts), at most GD_CLOCK_STRIDE_MAX iterations late, once;
 *  - fds are still checked after at most GD_FD_CHECK_ITERS iterations that skipped
 *    the check (an fd check always comes with a read), unless every watch is lazy
 *    (then not until the loop sleeps);
 *  - work found counts as found at the next read (the spin window may last one
 *    stride longer).
 * While the loop backs off or sleeps, nothing changes: it reads on each iteration.
 *
 * Sources may be added or removed from inside any callback (removal takes effect
 * immediately: a removed source is never called again). Ids are > 0 and never reused.
 * The loop owns no fd: callers close their own fds after removing the watch.
 */
#ifndef GD_LOOP_H
#define GD_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct gd_loop;

/** While the loop spins, fds are checked (one ppoll) at least this often (ns) ... */
#define GD_FD_CHECK_NS 50000ULL
/** ... and at least every this many iterations. */
#define GD_FD_CHECK_ITERS 32
/** While the loop spins, the clock is read about this often (ns) ... */
#define GD_CLOCK_PERIOD_NS 5000ULL
/** ... and at least every this many iterations. */
#define GD_CLOCK_STRIDE_MAX 32

/** A clock for gd_loop_set_clock(): monotonic nanoseconds. */
typedef uint64_t (*gd_clock_fn)(void *opaque);

/** Counters of a loop's work since gd_loop_new() (gd_loop_get_stats). */
struct gd_loop_stats {
    uint64_t iterations;          /* gd_loop_iterate() calls */
    uint64_t clock_reads;         /* reads of the clock deciding an iteration */
    uint64_t fd_checks;           /* ppoll calls */
    uint64_t sleeps;              /* of those, with a timeout other than 0 */
};

/** fd watch callback: @revents are poll(2) revents (POLLIN, POLLOUT, POLLHUP, ...). */
typedef void (*gd_fd_cb)(void *opaque, int fd, short revents);
/** Timer callback (the timer is already removed when it runs). */
typedef void (*gd_timer_cb)(void *opaque);
/** Poller: return > 0 when it did work (the loop keeps spinning), 0 when idle. */
typedef int (*gd_poll_cb)(void *opaque);

/** A new, empty loop. NULL on ENOMEM. */
struct gd_loop *gd_loop_new(void);
/** Free the loop (sources are dropped; their fds are the callers'). */
void gd_loop_free(struct gd_loop *loop);

/** Watch @fd for @events (POLLIN/POLLOUT). Returns an id > 0 or -ENOMEM. */
int gd_loop_add_fd(struct gd_loop *loop, int fd, short events, gd_fd_cb cb, void *opaque);
/** Change the events of watch @id. -ENOENT if there is no such watch. */
int gd_loop_mod_fd(struct gd_loop *loop, int id, short events);
/** Remove watch @id (no-op for 0 or an unknown id). */
void gd_loop_del_fd(struct gd_loop *loop, int id);
/** Make watch @id lazy (or not again): a lazy watch is not checked while the loop
 *  spins, only when it sleeps (or along with the other watches, when they are
 *  checked). For an fd that only wakes a sleeping loop, whose news a poller also
 *  finds by itself (a data path worker's wake eventfd). While every watch is lazy
 *  (or there is none), a spinning loop makes no ppoll at all: a busy ping-pong of
 *  short iterations otherwise spent a syscall every GD_FD_CHECK_ITERS of them, and a
 *  frame that arrived meanwhile waited for it (issue 11). Returns 0, or -ENOENT if
 *  there is no such watch. */
int gd_loop_set_fd_lazy(struct gd_loop *loop, int id, bool lazy);

/** One-shot timer firing after @delay_ns. Returns an id > 0 or -ENOMEM. */
int gd_loop_add_timer(struct gd_loop *loop, uint64_t delay_ns, gd_timer_cb cb, void *opaque);
/** Cancel timer @id (no-op for 0, an unknown or an already fired id). */
void gd_loop_del_timer(struct gd_loop *loop, int id);

/** Register a poller. @max_sleep_ns bounds how long the loop may sleep between two
 *  calls once idle (e.g. 1 ms for a data path, 10 ms for a controlq without
 *  interrupts). Returns an id > 0 or -ENOMEM. */
int gd_loop_add_poller(struct gd_loop *loop, gd_poll_cb cb, void *opaque,
                       uint64_t max_sleep_ns);
/** Remove poller @id (no-op for 0 or an unknown id). */
void gd_loop_del_poller(struct gd_loop *loop, int id);

/** How long the loop keeps spinning after the last poller work (default 50 us). */
void gd_loop_set_spin_ns(struct gd_loop *loop, uint64_t spin_ns);

/** Read @clock (called with @opaque) instead of gd_now_ns() for every decision of
 *  @loop: timers' due times, the spin window, back-off, fd checks (tests drive the
 *  loop with a clock of their own; ppoll still sleeps in real time). NULL restores
 *  gd_now_ns(). Set it before adding timers. */
void gd_loop_set_clock(struct gd_loop *loop, gd_clock_fn clock, void *opaque);

/** Copy @loop's counters into *@stats. */
void gd_loop_get_stats(const struct gd_loop *loop, struct gd_loop_stats *stats);

/**
 * Run one iteration: pollers, then wait up to the computed sleep bounded by
 * @max_wait_ns (< 0: no bound beyond timers and pollers), then dispatch fd events
 * and due timers. Returns the number of callbacks run (pollers that did work
 * included), or -errno when poll fails other than EINTR.
 */
int gd_loop_iterate(struct gd_loop *loop, int64_t max_wait_ns);

/** Iterate until gd_loop_quit(). Returns 0, or -errno on a poll failure. */
int gd_loop_run(struct gd_loop *loop);
/** Make gd_loop_run() return after the current iteration (called from a poller:
 *  right after the pollers, with no fd event or timer dispatched). */
void gd_loop_quit(struct gd_loop *loop);

/** CLOCK_MONOTONIC in nanoseconds. */
uint64_t gd_now_ns(void);

#endif
