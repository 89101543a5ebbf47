/*
 * net_worker.c - who polls which queue pair of vhost-pci-net (net.h "Threading",
 * net_priv.h; issue 10): worker threads, each with its own loop (adaptive polling of
 * its pairs, the endpoint's per-worker fds), and the pause that lets the control
 * thread change ports and memory while no worker touches them (spec 1.6.2: every CPU
 * has stopped using memory before its DEL is acknowledged).
 *
 * Pairs go to workers by index: pair q of every port is polled by worker
 * q mod nworkers, so pair q of different ports, and TAP queue q, meet on one thread.
 * Workers are started as the ports' pairs need them (at most max_workers) and
 * stopped when no pair needs them any more (the endpoint is told both ways). Without workers (max_workers 0, "inline mode") one pseudo
 * worker is a poller of the control loop, as before threads existed.
 *
 * The pause: the control thread sets pause_req of every worker and wakes its loop
 * (an eventfd), then waits until each has parked. A worker parks at one place only,
 * at the start of its poll, where it holds no pointer into a pair, a ring or peer
 * memory; it stays parked until net_resume(). pthread mutexes order everything the
 * control thread changed before the workers run again.
 * libc (and pthreads) only.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "endpoint.h"
#include "log.h"
#include "loop.h"
#include "net_priv.h"

unsigned gd_net_worker_index(void)
{
    const struct net_worker *w = net_current_worker();
    return w ? w->index : 0;
}

/* Park here while the control thread asks (see the file comment). Returns true when
 * the worker is to end: it then touches nothing any more. */
static bool park_if_asked(struct net_worker *w)
{
    if (!__atomic_load_n(&w->pause_req, __ATOMIC_ACQUIRE))
        return false;
    pthread_mutex_lock(&w->mu);
    w->paused = true;
    pthread_cond_broadcast(&w->cv);
    while (__atomic_load_n(&w->pause_req, __ATOMIC_ACQUIRE) && !w->quit)
        pthread_cond_wait(&w->cv, &w->mu);
    bool quit = w->quit;
    if (!quit)
        w->paused = false;
    pthread_mutex_unlock(&w->mu);
    if (quit)
        gd_loop_quit(w->loop);
    return quit;
}

int net_worker_poll(struct net_worker *w)
{
    if (w->thread && park_if_asked(w))
        return 0;
    /* A thread worker is its thread's for good (worker_main); the inline one only
     * while it polls (the control thread is no worker otherwise). */
    struct net_worker *was = net_current_worker();
    net_set_current_worker(w);
    struct gd_net *net = w->net;
    int work = 0;
    w->retry = false;
    for (unsigned i = 0; i < w->npairs; i++)
        work += net_pair_tx(w->pairs[i]);
    if (net->ep->ops->poll)
        work += net->ep->ops->poll(net->ep);
    for (unsigned i = 0; i < w->npairs; i++)
        net_pair_flush(w->pairs[i]);
    if (work) {
        /* Busy: the driver VMs need not kick, we are polling anyway. */
        w->idle_polls = 0;
        if (w->idle) {
            w->idle = false;
            for (unsigned i = 0; i < w->npairs; i++)
                net_pair_tx_notify(w->pairs[i], false);
        }
    } else if (!w->idle && ++w->idle_polls >= GD_NET_IDLE_POLLS) {
        /* Idle for a while (about when the loop stops spinning): ask for transmitq
         * kicks, then re-check (virtio's disable / drain / enable / re-check). Not at
         * the first empty poll: a frame every few microseconds would make the driver
         * VM kick (a syscall) for each one. */
        w->idle = true;
        for (unsigned i = 0; i < w->npairs; i++)
            net_pair_tx_notify(w->pairs[i], true);
    }
    if (w->retry)
        work++;
    net_set_current_worker(was);
    return work;
}

int gd_net_poll(struct gd_net *net) { return net_worker_poll(&net->inl); }

static int worker_poller(void *opaque) { return net_worker_poll(opaque); }

static void on_wake(void *opaque, int fd, short revents)
{
    (void)opaque;
    (void)revents;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        gd_debug("worker wake eventfd: %s", strerror(errno));
}

static void wake(struct net_worker *w)
{
    uint64_t one = 1;
    if (write(w->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        gd_debug("worker %u: wake: %s", w->index, strerror(errno));
}

static void *worker_main(void *opaque)
{
    struct net_worker *w = opaque;
    net_set_current_worker(w);
    int r = gd_loop_run(w->loop);
    if (r < 0)
        gd_error("data path worker %u: event loop: %s", w->index, strerror(-r));
    return NULL;
}

static void worker_free(struct net_worker *w)
{
    if (!w)
        return;
    if (w->loop) {
        gd_loop_del_fd(w->loop, w->wake_watch);
        gd_loop_free(w->loop);
    }
    vp_close_fd(&w->wake_fd);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w->pairs);
    free(w);
}

/* Start worker number net->nworkers, parked when the net is paused. */
static int worker_start(struct gd_net *net)
{
    struct net_worker *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->net = net;
    w->index = net->nworkers;
    w->thread = true;
    w->wake_fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->pause_req = net->pause_depth > 0;
    w->loop = gd_loop_new();
    w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!w->loop || w->wake_fd < 0)
        goto fail;
    w->wake_watch = gd_loop_add_fd(w->loop, w->wake_fd, POLLIN, on_wake, w);
    /* It only ends a sleep: a spinning worker sees pause_req at its next poll, so
     * the wake fd costs it no ppoll every few iterations (loop.h; issue 11). */
    if (w->wake_watch > 0)
        gd_loop_set_fd_lazy(w->loop, w->wake_watch, true);
    w->poller = gd_loop_add_poller(w->loop, worker_poller, w, GD_NET_MAX_SLEEP_NS);
    if (w->wake_watch < 0 || w->poller < 0)
        goto fail;
    if (net->ep->ops->worker_started)
        net->ep->ops->worker_started(net->ep, w->index, w->loop);
    /* Workers take no signal: the control thread's signalfd gets them all. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int r = pthread_create(&w->th, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        gd_error("data path worker %u: pthread_create: %s", w->index, strerror(r));
        goto fail;
    }
    net->workers[net->nworkers++] = w;
    gd_info("data path worker %u started", w->index);
    return 0;
fail:
    worker_free(w);
    return -ENOMEM;
}

void net_pause(struct gd_net *net)
{
    if (net->pause_depth++ || !net->nworkers)
        return;
    for (unsigned i = 0; i < net->nworkers; i++) {
        struct net_worker *w = net->workers[i];
        __atomic_store_n(&w->pause_req, 1, __ATOMIC_RELEASE);
        wake(w);
    }
    for (unsigned i = 0; i < net->nworkers; i++) {
        struct net_worker *w = net->workers[i];
        pthread_mutex_lock(&w->mu);
        while (!w->paused)
            pthread_cond_wait(&w->cv, &w->mu);
        pthread_mutex_unlock(&w->mu);
    }
}

void net_resume(struct gd_net *net)
{
    if (!net->pause_depth || --net->pause_depth)
        return;
    for (unsigned i = 0; i < net->nworkers; i++) {
        struct net_worker *w = net->workers[i];
        pthread_mutex_lock(&w->mu);
        __atomic_store_n(&w->pause_req, 0, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
}

static int worker_add_pair(struct net_worker *w, struct net_pair *pair)
{
    if (w->npairs == w->cap) {
        unsigned ncap = w->cap ? w->cap * 2 : 8;
        struct net_pair **np = realloc(w->pairs, ncap * sizeof(*np));
        if (!np)
            return -ENOMEM;
        w->pairs = np;
        w->cap = ncap;
    }
    w->pairs[w->npairs++] = pair;
    pair->w = w;
    pair->rx.q->worker = w->index;
    pair->tx.q->worker = w->index;
    w->idle = false;
    return 0;
}

/* Stop the last worker (parked or not) and forget it; the endpoint lets go of what
 * it kept for it first. */
static void worker_stop_last(struct gd_net *net)
{
    struct net_worker *w = net->workers[--net->nworkers];
    net->workers[net->nworkers] = NULL;
    pthread_mutex_lock(&w->mu);
    w->quit = true;
    __atomic_store_n(&w->pause_req, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    wake(w);
    pthread_join(w->th, NULL);
    if (net->ep->ops->worker_stopped)
        net->ep->ops->worker_stopped(net->ep, w->index);
    gd_info("data path worker %u stopped", w->index);
    worker_free(w);
}

int net_assign(struct gd_net *net)
{
    int ret = 0;
    /* As many workers as the port with the most pairs needs (none without a port:
     * an idle guestd holds what it held at start). */
    unsigned want = 0;
    for (unsigned i = 0; i < net->nports; i++)
        want = net->ports[i]->npairs > want ? net->ports[i]->npairs : want;
    if (want > net->max_workers)
        want = net->max_workers;
    while (net->nworkers > want)
        worker_stop_last(net);
    /* Leaving inline mode (threads wanted again, e.g. a device's clone starting its
     * port after the old one stopped): the endpoint lets go of what it watches on the
     * control loop for index 0 before thread 0 takes it over. Otherwise both the
     * control loop and thread 0 would serve that endpoint queue (a TAP queue read on
     * one thread, its held frame delivered on the other) and fill one receiveq at once. */
    if (want && net->inl_started) {
        if (net->ep->ops->worker_stopped)
            net->ep->ops->worker_stopped(net->ep, 0);
        net->inl_started = false;
    }
    while (net->nworkers < want && worker_start(net) == 0)
        ;
    /* Inline mode, or not even one thread could start: the control loop polls. */
    struct net_worker **ws = net->workers;
    unsigned nw = net->nworkers;
    struct net_worker *inl = &net->inl;
    if (!nw) {
        ws = &inl;
        nw = 1;
        if (!net->inl_started && net->ep->ops->worker_started)
            net->ep->ops->worker_started(net->ep, 0, net->loop);
        net->inl_started = true;
    }
    for (unsigned k = 0; k < nw; k++)
        ws[k]->npairs = 0;
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        for (unsigned q = 0; q < p->npairs; q++) {
            p->pairs[q].shared_rx = false;
            if (worker_add_pair(ws[q % nw], &p->pairs[q]) < 0)
                ret = -ENOMEM;
        }
    }
    /* The inline poller runs while there is a pair to poll. */
    if (!net->nworkers && inl->npairs && !inl->poller) {
        int id = gd_loop_add_poller(net->loop, worker_poller, inl, GD_NET_MAX_SLEEP_NS);
        if (id < 0)
            ret = -ENOMEM;
        else
            inl->poller = id;
    } else if ((net->nworkers || !inl->npairs) && inl->poller) {
        gd_loop_del_poller(net->loop, inl->poller);
        inl->poller = 0;
    }
    if (!net->nworkers)
        return ret;
    /* Receive queues other threads may write (net_priv.h): the pair that worker w
     * delivers into is not w's own when the port has fewer pairs than workers; the
     * control loop's deliveries (unix endpoint) go to pair 0. */
    const struct gd_endpoint_ops *eo = net->ep->ops;
    for (unsigned i = 0; i < net->nports; i++) {
        struct gd_net_port *p = net->ports[i];
        if (eo->rx_from_loop)
            p->pairs[0].shared_rx = true;
        if (eo->pair_local)
            continue;
        for (unsigned k = 0; k < nw; k++) {
            struct net_pair *t = &p->pairs[k < p->npairs ? k : k % p->npairs];
            if (t->w != ws[k])
                t->shared_rx = true;
        }
    }
    return ret;
}

void net_workers_free(struct gd_net *net)
{
    while (net->nworkers)
        worker_stop_last(net);
    if (net->inl.poller)
        gd_loop_del_poller(net->loop, net->inl.poller);
    net->inl.poller = 0;
    free(net->inl.pairs);
    net->inl.pairs = NULL;
    net->inl.npairs = net->inl.cap = 0;
}
