/*
 * faultshim.c - an LD_PRELOAD library for the fault-injection test: it makes the
 * socket I/O of a real process (vhost-pci-server, vhost-pci-client, a dynamically
 * linked vhost-pci-guestd) behave as a loaded machine may make it behave, so the
 * code's handling of it is exercised:
 *
 *   VP_FAULT_SHORT=N   send, sendmsg and write on a stream socket move at most N bytes
 *                      (short writes; fds still ride on the first byte)
 *   VP_FAULT_RSHORT=N  recv, recvmsg and read on a stream socket take at most N bytes
 *   VP_FAULT_EINTR=N   every N-th of those calls fails with EINTR before doing anything
 *                      (as if a signal had interrupted it)
 *
 * Only AF_UNIX/inet stream sockets are touched (not eventfds, pipes, files, datagram
 * sockets, where a short transfer would lose data). Nothing else changes. Counters
 * are per process. Test code: not linked into any program.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static size_t wshort, rshort;
static unsigned every;
static unsigned calls;

static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_read)(int, void *, size_t);

__attribute__((constructor)) static void shim_init(void)
{
    const char *s = getenv("VP_FAULT_SHORT"), *r = getenv("VP_FAULT_RSHORT"),
               *e = getenv("VP_FAULT_EINTR");
    wshort = s ? strtoul(s, NULL, 0) : 0;
    rshort = r ? strtoul(r, NULL, 0) : 0;
    every = e ? (unsigned)strtoul(e, NULL, 0) : 0;
    real_send = dlsym(RTLD_NEXT, "send");
    real_sendmsg = dlsym(RTLD_NEXT, "sendmsg");
    real_write = dlsym(RTLD_NEXT, "write");
    real_recv = dlsym(RTLD_NEXT, "recv");
    real_recvmsg = dlsym(RTLD_NEXT, "recvmsg");
    real_read = dlsym(RTLD_NEXT, "read");
}

static int is_stream_socket(int fd)
{
    struct stat st;
    int type = 0;
    socklen_t len = sizeof(type);
    int saved = errno;
    int r = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
    errno = saved;
    return r;
}

/* EINTR now? (Only for calls on stream sockets.) */
static int interrupt(void)
{
    if (!every)
        return 0;
    if (__atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED) % every)
        return 0;
    errno = EINTR;
    return 1;
}

/* Copy of @iov limited to @max bytes (0: no limit) in @out (capacity @cap). */
static size_t clip(const struct iovec *iov, size_t n, size_t max, struct iovec *out, size_t cap)
{
    size_t k = 0, left = max;
    for (size_t i = 0; i < n && k < cap; i++) {
        out[k] = iov[i];
        if (max) {
            if (!left)
                break;
            if (out[k].iov_len > left)
                out[k].iov_len = left;
            left -= out[k].iov_len;
        }
        k++;
    }
    return k;
}

ssize_t sendmsg(int fd, const struct msghdr *mh, int flags)
{
    if (!is_stream_socket(fd))
        return real_sendmsg(fd, mh, flags);
    if (interrupt())
        return -1;
    struct iovec iov[64];
    struct msghdr m = *mh;
    m.msg_iov = iov;
    m.msg_iovlen = clip(mh->msg_iov, mh->msg_iovlen, wshort, iov, 64);
    return real_sendmsg(fd, &m, flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    if (!is_stream_socket(fd))
        return real_send(fd, buf, len, flags);
    if (interrupt())
        return -1;
    return real_send(fd, buf, wshort && len > wshort ? wshort : len, flags);
}

ssize_t write(int fd, const void *buf, size_t len)
{
    if (!is_stream_socket(fd))
        return real_write(fd, buf, len);
    if (interrupt())
        return -1;
    return real_write(fd, buf, wshort && len > wshort ? wshort : len);
}

ssize_t recvmsg(int fd, struct msghdr *mh, int flags)
{
    if (!is_stream_socket(fd))
        return real_recvmsg(fd, mh, flags);
    if (interrupt())
        return -1;
    struct iovec iov[64], *orig = mh->msg_iov;
    size_t orig_n = mh->msg_iovlen;
    mh->msg_iovlen = clip(orig, orig_n, rshort, iov, 64);
    mh->msg_iov = iov;
    ssize_t n = real_recvmsg(fd, mh, flags);
    mh->msg_iov = orig;
    mh->msg_iovlen = orig_n;
    return n;
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    if (!is_stream_socket(fd))
        return real_recv(fd, buf, len, flags);
    if (interrupt())
        return -1;
    return real_recv(fd, buf, rshort && len > rshort ? rshort : len, flags);
}

ssize_t read(int fd, void *buf, size_t len)
{
    if (!is_stream_socket(fd))
        return real_read(fd, buf, len);
    if (interrupt())
        return -1;
    return real_read(fd, buf, rshort && len > rshort ? rshort : len);
}
