/* unix_listen.c - listening UNIX stream sockets (unix_listen.h). */
#include "unix_listen.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int fill_addr(const char *path, struct sockaddr_un *sa, vp_error *err)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (!path || !*path || strlen(path) >= sizeof(sa->sun_path))
        return vp_fail(err, -ENAMETOOLONG, "socket path '%s' is empty or too long",
                       path ? path : "");
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

static unsigned sock_mode = 0600;
static unsigned sock_gid = (unsigned)-1;

void srv_unix_set_access(unsigned mode, unsigned gid)
{
    sock_mode = mode & 0777;
    sock_gid = gid;
}

int srv_unix_listen(const char *path, vp_error *err)
{
    struct sockaddr_un sa;
    int r = fill_addr(path, &sa, err);
    if (r)
        return r;

    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return vp_fail(err, -EEXIST, "%s exists and is not a socket", path);
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0)
            return vp_fail(err, -errno, "socket: %s", strerror(errno));
        int c = connect(probe, (struct sockaddr *)&sa, sizeof(sa));
        close(probe);
        if (c == 0)
            return vp_fail(err, -EADDRINUSE, "%s: another process is listening on it", path);
        unlink(path);  /* stale */
    }

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return vp_fail(err, -errno, "socket: %s", strerror(errno));
    /* Created with the final mode (bits beyond it masked), then given its group. */
    mode_t old = umask(~(mode_t)sock_mode & 0777);
    int b = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    umask(old);
    if (b < 0 || listen(fd, 16) < 0) {
        e = b < 0 ? e : errno;
        close(fd);
        if (b == 0)
            unlink(path);
        return vp_fail(err, -e, "cannot listen on %s: %s", path, strerror(e));
    }
    if ((sock_gid != (unsigned)-1 && chown(path, (uid_t)-1, (gid_t)sock_gid) < 0) ||
        chmod(path, sock_mode) < 0) {
        e = errno;
        close(fd);
        unlink(path);
        return vp_fail(err, -e, "cannot set the access of %s: %s", path, strerror(e));
    }
    return fd;
}

int srv_unix_accept(int listen_fd)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return fd < 0 ? -errno : fd;
}
