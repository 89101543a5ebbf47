/*
 * vp_common.h - small helpers shared by every vhost-pci component.
 *
 * libc only: the guest driver links this.
 */
#ifndef VP_COMMON_H
#define VP_COMMON_H

#include <endian.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

/** A human-readable error reason, filled by functions that validate peer input.
 *  Always NUL-terminated; empty when no error was set. */
typedef struct vp_error {
    char msg[256];
} vp_error;

/** Format a reason into @err (may be NULL). Returns @ret so that callers can write
 *  `return vp_fail(err, -EINVAL, "bad %s", x);`. */
int vp_fail(vp_error *err, int ret, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/**
 * Break something with a reason, once (STYLE habit 7: a peer error makes that peer's
 * object broken, sticky, never an abort): when *@broken is false, format the reason
 * into @why (@size bytes, always NUL-terminated), set *@broken and return true; when
 * it is broken already, keep the first reason and return false. Used by the virtqueues
 * (vp_vring), the server's controlq device side and guestd's devices.
 */
bool vp_break(bool *broken, char *why, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/** vp_break() with a va_list. */
bool vp_vbreak(bool *broken, char *why, size_t size, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/** Close *fdp if it is >= 0 and set it to -1 (one owner per fd; STYLE habit 4). */
void vp_close_fd(int *fdp);

/** Close every fd in fds[0..n) that is >= 0 and set it to -1. */
void vp_close_fds(int *fds, unsigned n);

/** Most fds one vp_sendmsg_fds() attaches (Linux SCM_MAX_FD). */
#define VP_SEND_MAX_FDS 253

/**
 * One sendmsg(2) of iov[0..iovcnt) on the stream socket @sock, with fds[0..nfds)
 * attached to its first byte as one SCM_RIGHTS control message (no control message
 * when @nfds is 0). @flags go to sendmsg (MSG_NOSIGNAL, MSG_DONTWAIT, ...). The fds
 * stay the caller's: the peer gets duplicates once a byte went out (a return > 0), so
 * a caller that loops over a partial send passes nfds = 0 from then on.
 * Returns the bytes sent, or -errno with nothing sent (-EINTR and -EAGAIN too: the
 * caller decides whether and how to wait and retry); -EINVAL when @nfds is over
 * VP_SEND_MAX_FDS or @fds is NULL with @nfds > 0.
 */
ssize_t vp_sendmsg_fds(int sock, struct iovec *iov, size_t iovcnt, const int *fds,
                       unsigned nfds, int flags);

struct msghdr;

/**
 * Move the fds of every SCM_RIGHTS control message of @mh, as recvmsg(2) filled it,
 * into fds[*nfds .. max), advancing *nfds; an fd that does not fit is closed at once
 * (one owner per fd even for a peer that sends too many). When @foreign is not NULL
 * it is set to true if a control message of another kind came along.
 * Returns how many fds were closed for lack of room (0: all of them were kept).
 */
unsigned vp_take_scm_fds(struct msghdr *mh, int *fds, unsigned max, unsigned *nfds,
                         bool *foreign);

/** Number of open fds of this process (entries of /proc/self/fd, minus the one used
 *  to read it). Used by tests to prove that no fd leaked. Returns -1 on error. */
int vp_count_open_fds(void);

/* Typed little-endian accessors for shared memory and wire structs (STYLE habit 9).
 * Each reads or writes the field exactly once. */
static inline uint16_t vp_get_le16(const void *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }
static inline uint32_t vp_get_le32(const void *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static inline uint64_t vp_get_le64(const void *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
static inline void vp_put_le16(void *p, uint16_t v) { v = htole16(v); memcpy(p, &v, 2); }
static inline void vp_put_le32(void *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static inline void vp_put_le64(void *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }

/** True when [off, off+len) lies inside [0, size), written so it cannot overflow
 *  (STYLE habit 5). len == 0 is inside when off <= size. */
static inline int vp_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

#define VP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
