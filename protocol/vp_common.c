/* vp_common.c - helpers shared by every component (libc only). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "vp_common.h"

#include <dirent.h>
#include <stdio.h>
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
