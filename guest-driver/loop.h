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
 *    window), fds are checked (one ppoll) only every 50 us or 32 iterations,
 *    whichever comes first, so a polling data path makes no syscall per poll.
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
