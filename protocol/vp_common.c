/* vp_common.c - helpers shared by every component (libc only). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "vp_common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int vp_fail(vp_error *err, int ret, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return ret;
}

bool vp_vbreak(bool *broken, char *why, size_t size, const char *fmt, va_list ap)
{
    if (*broken)
        return false;  /* keep the first reason */
    if (size)
        vsnprintf(why, size, fmt, ap);
    *broken = true;
    return true;
}

bool vp_break(bool *broken, char *why, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool now = vp_vbreak(broken, why, size, fmt, ap);
    va_end(ap);
    return now;
}

void vp_close_fd(int *fdp)
{
    if (*fdp >= 0) {
        close(*fdp);
        *fdp = -1;
    }
}

void vp_close_fds(int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        vp_close_fd(&fds[i]);
}

ssize_t vp_sendmsg_fds(int sock, struct iovec *iov, size_t iovcnt, const int *fds,
                       unsigned nfds, int flags)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * VP_SEND_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = iovcnt };

    if (nfds > VP_SEND_MAX_FDS || (nfds && !fds))
        return -EINVAL;
    if (nfds) {
        memset(&cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n = sendmsg(sock, &mh, flags);
    return n < 0 ? -errno : n;
}

unsigned vp_take_scm_fds(struct msghdr *mh, int *fds, unsigned max, unsigned *nfds,
                         bool *foreign)
{
    unsigned closed = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            if (foreign)
                *foreign = true;
            continue;
        }
        if (c->cmsg_len < CMSG_LEN(0))
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (fds && *nfds < max) {
                fds[(*nfds)++] = fd;
            } else {
                vp_close_fd(&fd);
                closed++;
            }
        }
    }
    return closed;
}

int vp_count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n - 1; /* the directory's own fd */
}
