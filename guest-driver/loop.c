/*
 * loop.c - single-threaded poll(2) event loop with fd watches, timers and adaptive
 * pollers (see loop.h). libc only.
 *
 * Sources live in three arrays. Removal only marks an entry dead (so indexes stay
 * valid while callbacks run and a removed source is never called again); dead
 * entries are compacted at the end of an iteration in which something died.
 * gd_loop_iterate() is not re-entrant.
 *
 * The clock is read only when a decision needs it (loop.h "Reading the clock"): on
 * every iteration that may sleep, but while the loop spins only every clock_stride
 * iterations, the stride adapting so that two reads come about GD_CLOCK_PERIOD_NS
 * apart. A spinning data path otherwise spends a clock_gettime per empty poll.
 */
#include "loop.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct gd_fd_watch {
    int id;
    int fd;
    short events;
    bool dead;
    bool lazy;                    /* gd_loop_set_fd_lazy: not in neager */
    gd_fd_cb cb;
    void *opaque;
};

struct gd_timer {
    int id;
    bool dead;
    uint64_t due_ns;
    gd_timer_cb cb;
    void *opaque;
};

struct gd_poller {
    int id;
    bool dead;
    uint64_t max_sleep_ns;
    gd_poll_cb cb;
    void *opaque;
};

struct gd_loop {
    struct gd_fd_watch *fds;
    unsigned nfds, capfds;
    struct gd_timer *timers;
    unsigned ntimers, captimers;
    struct gd_poller *pollers;
    unsigned npollers, cappollers;
    struct pollfd *pfd;           /* scratch for poll(2) */
    unsigned *pfd_idx;            /* pfd[i] belongs to fds[pfd_idx[i]] */
    unsigned cappfd;
    int next_id;
    bool quit;
    bool dirty;                   /* a source died: compact() has work */
    uint64_t spin_ns;
    uint64_t last_work_ns;        /* when a poller last did work (as of the read after it) */
    uint64_t sleep_ns;            /* current back-off step, 0 = none (spinning) */
    uint64_t fds_checked_ns;      /* when ppoll last ran */
    unsigned busy_skips;          /* iterations since then that skipped it (saturates
                                     at GD_FD_CHECK_ITERS) */
    unsigned neager;              /* live fd watches that are not lazy: while none, a
                                     spinning loop checks fds by time only */
    /* The clock (loop.h "Reading the clock"). */
    gd_clock_fn clock;            /* NULL: gd_now_ns */
    void *clock_opaque;
    uint64_t now_ns;              /* the value of its last read */
    unsigned clock_stride;        /* spinning: one read every this many iterations */
    unsigned clock_skips;         /* iterations since the last read that made none */
    bool clock_stale;             /* read at the next iteration (a timer was added) */
    bool work_unseen;             /* a poller did work since the last read */
    struct gd_loop_stats stats;
};

#define GD_SLEEP_START_NS 1000ULL

/* Read the clock now (counted) and adapt the stride from what the iterations since
 * the previous read took: more than a period, cut it to the iterations that fit in
 * one (at least 1: after a sleep it is 1); less than half a period over a whole
 * stride, double it (at most GD_CLOCK_STRIDE_MAX). A steady loop then reads about
 * every GD_CLOCK_PERIOD_NS / 2 .. GD_CLOCK_PERIOD_NS. */
static uint64_t read_clock(struct gd_loop *loop)
{
    uint64_t now = loop->clock ? loop->clock(loop->clock_opaque) : gd_now_ns();
    uint64_t span = now - loop->now_ns;
    unsigned iters = loop->clock_skips + 1;
    if (span > GD_CLOCK_PERIOD_NS) {
        uint64_t fit = (uint64_t)iters * GD_CLOCK_PERIOD_NS / span;
        if (fit < loop->clock_stride)
            loop->clock_stride = fit ? (unsigned)fit : 1;
    } else if (span < GD_CLOCK_PERIOD_NS / 2 && iters >= loop->clock_stride &&
               loop->clock_stride < GD_CLOCK_STRIDE_MAX) {
        loop->clock_stride *= 2;
    }
    loop->now_ns = now;
    loop->clock_skips = 0;
    loop->clock_stale = false;
    loop->stats.clock_reads++;
    return now;
}

uint64_t gd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Grow an array of @elem-byte entries to hold one more. */
static int grow(void **arr, unsigned n, unsigned *cap, size_t elem)
{
    if (n < *cap)
        return 0;
    unsigned ncap = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

struct gd_loop *gd_loop_new(void)
{
    struct gd_loop *loop = calloc(1, sizeof(*loop));
    if (!loop)
        return NULL;
    loop->next_id = 1;
    loop->spin_ns = 50000;
    loop->clock_stride = 1;
    return loop;
}

void gd_loop_free(struct gd_loop *loop)
{
    if (!loop)
        return;
    free(loop->fds);
    free(loop->timers);
    free(loop->pollers);
    free(loop->pfd);
    free(loop->pfd_idx);
    free(loop);
}

static int new_id(struct gd_loop *loop)
{
    int id = loop->next_id++;
    if (loop->next_id <= 0) /* 2^31 sources in one run: wrap to 1, never 0 */
        loop->next_id = 1;
    return id;
}

int gd_loop_add_fd(struct gd_loop *loop, int fd, short events, gd_fd_cb cb, void *opaque)
{
    if (grow((void **)&loop->fds, loop->nfds, &loop->capfds, sizeof(*loop->fds)) < 0)
        return -ENOMEM;
    struct gd_fd_watch *w = &loop->fds[loop->nfds++];
    *w = (struct gd_fd_watch){ .id = new_id(loop), .fd = fd, .events = events,
                               .cb = cb, .opaque = opaque };
    loop->neager++;
    return w->id;
}

static struct gd_fd_watch *find_fd(struct gd_loop *loop, int id)
{
    for (unsigned i = 0; i < loop->nfds; i++) {
        if (loop->fds[i].id == id && !loop->fds[i].dead)
            return &loop->fds[i];
    }
    return NULL;
}

int gd_loop_mod_fd(struct gd_loop *loop, int id, short events)
{
    struct gd_fd_watch *w = find_fd(loop, id);
    if (!w)
        return -ENOENT;
    w->events = events;
    return 0;
}

int gd_loop_set_fd_lazy(struct gd_loop *loop, int id, bool lazy)
{
    struct gd_fd_watch *w = find_fd(loop, id);
    if (!w)
        return -ENOENT;
    if (w->lazy != lazy)
        loop->neager += lazy ? -1u : 1u;
    w->lazy = lazy;
    return 0;
}

void gd_loop_del_fd(struct gd_loop *loop, int id)
{
    struct gd_fd_watch *w = id > 0 ? find_fd(loop, id) : NULL;
    if (w) {
        w->dead = true;
        loop->dirty = true;
        if (!w->lazy)
            loop->neager--;
    }
}

int gd_loop_add_timer(struct gd_loop *loop, uint64_t delay_ns, gd_timer_cb cb, void *opaque)
{
    if (grow((void **)&loop->timers, loop->ntimers, &loop->captimers,
             sizeof(*loop->timers)) < 0)
        return -ENOMEM;
    struct gd_timer *t = &loop->timers[loop->ntimers++];
    uint64_t now = loop->clock ? loop->clock(loop->clock_opaque) : gd_now_ns();
    *t = (struct gd_timer){ .id = new_id(loop), .due_ns = now + delay_ns,
                            .cb = cb, .opaque = opaque };
    loop->clock_stale = true; /* its due time is checked at the next iteration */
    return t->id;
}

void gd_loop_del_timer(struct gd_loop *loop, int id)
{
    for (unsigned i = 0; id > 0 && i < loop->ntimers; i++) {
        if (loop->timers[i].id == id) {
            loop->timers[i].dead = true;
            loop->dirty = true;
        }
    }
}

int gd_loop_add_poller(struct gd_loop *loop, gd_poll_cb cb, void *opaque,
                       uint64_t max_sleep_ns)
{
    if (grow((void **)&loop->pollers, loop->npollers, &loop->cappollers,
             sizeof(*loop->pollers)) < 0)
        return -ENOMEM;
    struct gd_poller *p = &loop->pollers[loop->npollers++];
    *p = (struct gd_poller){ .id = new_id(loop), .max_sleep_ns = max_sleep_ns,
                             .cb = cb, .opaque = opaque };
    /* A new poller starts busy: it probably has work right away. */
    loop->work_unseen = true;
    loop->sleep_ns = 0;
    return p->id;
}

void gd_loop_del_poller(struct gd_loop *loop, int id)
{
    for (unsigned i = 0; id > 0 && i < loop->npollers; i++) {
        if (loop->pollers[i].id == id) {
            loop->pollers[i].dead = true;
            loop->dirty = true;
        }
    }
}

void gd_loop_set_spin_ns(struct gd_loop *loop, uint64_t spin_ns) { loop->spin_ns = spin_ns; }

void gd_loop_set_clock(struct gd_loop *loop, gd_clock_fn clock, void *opaque)
{
    loop->clock = clock;
    loop->clock_opaque = opaque;
    loop->clock_stale = true;
}

void gd_loop_get_stats(const struct gd_loop *loop, struct gd_loop_stats *stats)
{
    *stats = loop->stats;
}

void gd_loop_quit(struct gd_loop *loop) { loop->quit = true; }

/* Drop dead entries (between iterations only). */
static void compact(struct gd_loop *loop)
{
    if (!loop->dirty)
        return;
    loop->dirty = false;
    unsigned j = 0;
    for (unsigned i = 0; i < loop->nfds; i++) {
        if (!loop->fds[i].dead)
            loop->fds[j++] = loop->fds[i];
    }
    loop->nfds = j;
    j = 0;
    for (unsigned i = 0; i < loop->ntimers; i++) {
        if (!loop->timers[i].dead)
            loop->timers[j++] = loop->timers[i];
    }
    loop->ntimers = j;
    j = 0;
    for (unsigned i = 0; i < loop->npollers; i++) {
        if (!loop->pollers[i].dead)
            loop->pollers[j++] = loop->pollers[i];
    }
    loop->npollers = j;
}

/* How long to sleep given the pollers' state (@now: the clock just read; work since
 * the previous read counts as done now); -1 = no bound from pollers. */
static int64_t poller_sleep(struct gd_loop *loop, uint64_t now)
{
    uint64_t max_sleep = UINT64_MAX;
    bool any = false;
    for (unsigned i = 0; i < loop->npollers; i++) {
        if (loop->pollers[i].dead)
            continue;
        any = true;
        if (loop->pollers[i].max_sleep_ns < max_sleep)
            max_sleep = loop->pollers[i].max_sleep_ns;
    }
    if (!any)
        return -1;
    if (loop->work_unseen) {
        loop->work_unseen = false;
        loop->last_work_ns = now;
        loop->sleep_ns = 0;
        return 0;
    }
    if (now - loop->last_work_ns < loop->spin_ns)
        return 0;
    /* Idle: back off, doubling up to the smallest bound. */
    uint64_t s = loop->sleep_ns ? loop->sleep_ns * 2 : GD_SLEEP_START_NS;
    if (s > max_sleep)
        s = max_sleep;
    loop->sleep_ns = s;
    return (int64_t)s;
}

int gd_loop_iterate(struct gd_loop *loop, int64_t max_wait_ns)
{
    int ran = 0;
    int work = 0;
    unsigned live = 0;

    loop->stats.iterations++;
    /* 1. Pollers (the snapshot count: pollers added now run next iteration). */
    unsigned np = loop->npollers;
    for (unsigned i = 0; i < np; i++) {
        if (loop->pollers[i].dead)
            continue;
        live++;
        if (loop->pollers[i].cb(loop->pollers[i].opaque) > 0) {
            work++;
            ran++;
        }
    }

    /* A poller that ended the loop (a data path worker told to stop) gets nothing
     * more dispatched on it. */
    if (loop->quit) {
        compact(loop);
        return ran;
    }
    if (work) {
        loop->work_unseen = true;
        loop->sleep_ns = 0; /* busy: spinning again */
    }

    /* 2. While spinning, between two reads of the clock: nothing can be known due,
     * nothing waits; the fd check comes at the latest with GD_FD_CHECK_ITERS (when a
     * watch is not lazy), which makes a read. */
    bool iter_bound = loop->neager > 0;
    if (live && loop->sleep_ns == 0 && !loop->clock_stale &&
        loop->clock_skips + 1 < loop->clock_stride &&
        (!iter_bound || loop->busy_skips < GD_FD_CHECK_ITERS)) {
        loop->clock_skips++;
        loop->busy_skips += loop->busy_skips < GD_FD_CHECK_ITERS;
        compact(loop);
        return ran;
    }

    /* 3. Timeout: pollers' back-off, earliest timer, caller's bound. */
    uint64_t now = read_clock(loop);
    int64_t wait = poller_sleep(loop, now);
    for (unsigned i = 0; i < loop->ntimers; i++) {
        if (loop->timers[i].dead)
            continue;
        int64_t d = loop->timers[i].due_ns > now ? (int64_t)(loop->timers[i].due_ns - now) : 0;
        if (wait < 0 || d < wait)
            wait = d;
    }
    if (max_wait_ns >= 0 && (wait < 0 || max_wait_ns < wait))
        wait = max_wait_ns;

    /* 4. Wait for fds (or, spinning, skip the syscall for a while: not past the
     * iteration bound before the next read, which would otherwise be an extra one,
     * nor past GD_FD_CHECK_NS; with only lazy watches, or none, not at all). */
    if (wait == 0 && live &&
        (!iter_bound || (loop->busy_skips + loop->clock_stride <= GD_FD_CHECK_ITERS &&
                         now - loop->fds_checked_ns < GD_FD_CHECK_NS))) {
        bool timer_due = false;
        for (unsigned i = 0; i < loop->ntimers && !timer_due; i++)
            timer_due = !loop->timers[i].dead && loop->timers[i].due_ns <= now;
        if (!timer_due) {
            loop->busy_skips += loop->busy_skips < GD_FD_CHECK_ITERS;
            compact(loop);
            return ran;
        }
    }
    loop->busy_skips = 0;
    loop->fds_checked_ns = now;
    if (loop->nfds > loop->cappfd) {
        struct pollfd *p = realloc(loop->pfd, loop->nfds * sizeof(*p));
        if (!p)
            return -ENOMEM;
        loop->pfd = p;
        unsigned *ix = realloc(loop->pfd_idx, loop->nfds * sizeof(*ix));
        if (!ix)
            return -ENOMEM;
        loop->pfd_idx = ix;
        loop->cappfd = loop->nfds;
    }
    unsigned n = 0;
    for (unsigned i = 0; i < loop->nfds; i++) {
        if (loop->fds[i].dead)
            continue;
        loop->pfd[n] = (struct pollfd){ .fd = loop->fds[i].fd, .events = loop->fds[i].events };
        loop->pfd_idx[n++] = i;
    }
    struct timespec ts, *tsp = NULL;
    if (wait >= 0) {
        ts.tv_sec = (time_t)(wait / 1000000000LL);
        ts.tv_nsec = (long)(wait % 1000000000LL);
        tsp = &ts;
    }
    loop->stats.fd_checks++;
    if (wait != 0)
        loop->stats.sleeps++;
    int r = ppoll(n ? loop->pfd : NULL, n, tsp, NULL);
    if (r < 0 && errno != EINTR)
        return -errno;

    /* 5. fd events. */
    for (unsigned k = 0; r > 0 && k < n; k++) {
        if (!loop->pfd[k].revents)
            continue;
        struct gd_fd_watch *w = &loop->fds[loop->pfd_idx[k]];
        if (w->dead)
            continue;
        w->cb(w->opaque, w->fd, loop->pfd[k].revents);
        ran++;
    }

    /* 6. Due timers (those added by callbacks wait for the next iteration). The clock
     * again only if time passed in ppoll or in fd callbacks. */
    if (wait != 0 || r > 0)
        now = read_clock(loop);
    unsigned nt = loop->ntimers;
    for (unsigned i = 0; i < nt; i++) {
        struct gd_timer *t = &loop->timers[i];
        if (t->dead || t->due_ns > now)
            continue;
        t->dead = true;
        loop->dirty = true;
        gd_timer_cb cb = t->cb;
        void *opaque = t->opaque;
        cb(opaque); /* may add timers: t may move, do not touch it after */
        ran++;
    }

    compact(loop);
    return ran;
}

int gd_loop_run(struct gd_loop *loop)
{
    loop->quit = false;
    while (!loop->quit) {
        int r = gd_loop_iterate(loop, -1);
        if (r < 0)
            return r;
    }
    return 0;
}
