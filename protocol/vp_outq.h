/*
 * vp_outq.h - a bounded, non-blocking output queue for one stream socket that
 * carries fds (SCM_RIGHTS) and owns them until they are sent: one module for every
 * writer of a socket it must never block on (the server's client sessions, its QMP
 * client, its ivshmem endpoints, its mgmt socket; the client's vhost-user backend).
 *
 * Each message is a byte string plus fds attached to its first byte. Messages go out
 * in order with non-blocking sendmsg (MSG_DONTWAIT | MSG_NOSIGNAL); a partial write
 * keeps its offset; when the socket is full the queue asks its owner for a writable
 * watch (ops->want_writable) and the owner calls vp_outq_flush() when it fires. The
 * core knows no event loop (STYLE habit 10): vp_outq_glib.h is the GLib adapter.
 *
 * Ownership: vp_outq_push() copies the bytes and duplicates the fds (F_DUPFD_CLOEXEC);
 * the caller keeps its own. The queue closes its copies once their message's first
 * byte went out (the peer has its own then), and on vp_outq_clear().
 *
 * Bounds: at most max_bytes queued, counting each message's bookkeeping too (a flood
 * of short messages costs what it costs), and at most max_fds fds held (set it after
 * vp_outq_init; 0: none); a push that would exceed either is refused with -ENOBUFS
 * and queues nothing: the owner decides, e.g. disconnects a peer that does not read. Errors: the first send error is sticky (q->error); the queue then sends
 * nothing more and the owner clears it.
 *
 * libc only. One thread per queue.
 */
#ifndef VP_OUTQ_H
#define VP_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vp_outq_msg;

/** The owner's side. */
struct vp_outq_ops {
    /** Watch the socket for writability (@on) or stop; when writable, call
     *  vp_outq_flush(). Required. */
    void (*want_writable)(void *opaque, bool on);
    /** Message @tag (from vp_outq_push) was written completely. May be NULL. */
    void (*sent)(void *opaque, uint64_t tag);
};

/** A queue. Fields are read-only for the owner. */
struct vp_outq {
    int fd;                              /* the socket (borrowed) */
    size_t max_bytes;                    /* queued cost allowed; 0: no bound */
    size_t bytes;                        /* queued bytes not yet written */
    size_t cost;                         /* queued bytes + per-message bookkeeping */
    unsigned max_fds;                    /* queued fds allowed; 0: no bound */
    unsigned nfds;                       /* queued fds not yet sent */
    unsigned count;                      /* queued messages */
    struct vp_outq_msg *head, *tail;
    size_t head_off;                     /* bytes of the head already written */
    bool watching;                       /* want_writable(true) in force */
    int error;                           /* first send error (-errno), 0: none */
    const struct vp_outq_ops *ops;
    void *opaque;
    uint64_t msgs_sent, fds_sent;        /* counters */
};

/** Most fds one message carries (Linux SCM_MAX_FD). */
#define VP_OUTQ_MAX_FDS 253

/** An empty queue for socket @fd. */
void vp_outq_init(struct vp_outq *q, int fd, size_t max_bytes, const struct vp_outq_ops *ops,
                  void *opaque);

/**
 * Queue @len bytes at @data (copied; len > 0) with @nfds fds (duplicated) attached to
 * their first byte, and send what the socket takes now when nothing was queued
 * before. @tag comes back through ops->sent. Returns 0, -ENOBUFS (over max_bytes),
 * -EINVAL (len 0, too many fds, a bad fd), -EMFILE/-ENOMEM (copying), or the queue's
 * sticky error; nothing is queued on error.
 */
int vp_outq_push(struct vp_outq *q, const void *data, size_t len, const int *fds,
                 unsigned nfds, uint64_t tag);

/** Write as much as the socket takes. Returns 0 (all written, or the socket is full
 *  and the writable watch is on) or the sticky error (-errno: -EPIPE, -ECONNRESET...;
 *  the watch is off, the queue keeps its messages until vp_outq_clear()). */
int vp_outq_flush(struct vp_outq *q);

/** Drop every queued message (closing their fds) and stop watching. The queue can be
 *  used again (the sticky error is reset). */
void vp_outq_clear(struct vp_outq *q);

/** Nothing left to write. */
static inline bool vp_outq_idle(const struct vp_outq *q)
{
    return q->head == NULL;
}

#endif
