/*
 * vp-sockcat - send one request line to a UNIX stream socket and copy the answer to
 * stdout until EOF. libc only, static: it goes into the guest image (the busybox there
 * has no UNIX-socket client) so the host can read vhost-pci-guestd's --status socket
 * through the command agent:
 *
 *   vp-sockcat [--timeout-ms N] PATH [REQUEST]     (REQUEST default "status")
 *
 * A newline is appended to REQUEST. Exit status: 0 answer copied (EOF seen), 1 cannot
 * connect or I/O error, 2 usage, 3 no EOF within the timeout (default 5000 ms, for the
 * whole exchange).
 *
 * Security model: the answer is not parsed, only copied (at most 16 MiB); the peer is
 * a local daemon the caller chose.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_ANSWER (16u << 20)

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    long timeout_ms = 5000;
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "--timeout-ms") == 0) {
        char *end;
        timeout_ms = strtol(argv[i + 1], &end, 10);
        if (*end || timeout_ms <= 0 || timeout_ms > 3600000) {
            fprintf(stderr, "vp-sockcat: bad --timeout-ms %s\n", argv[i + 1]);
            return 2;
        }
        i += 2;
    }
    if (argc - i < 1 || argc - i > 2) {
        fprintf(stderr, "usage: vp-sockcat [--timeout-ms N] PATH [REQUEST]\n");
        return 2;
    }
    const char *path = argv[i];
    const char *req = argc - i == 2 ? argv[i + 1] : "status";

    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "vp-sockcat: socket path too long\n");
        return 2;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        fprintf(stderr, "vp-sockcat: cannot connect to %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t len = strlen(req);
    char *line = malloc(len + 2);
    if (!line) {
        close(fd);
        return 1;
    }
    memcpy(line, req, len);
    line[len] = '\n';
    int rc = write_all(fd, line, len + 1);
    free(line);
    if (rc < 0) {
        fprintf(stderr, "vp-sockcat: write to %s: %s\n", path, strerror(errno));
        close(fd);
        return 1;
    }

    long long deadline = now_ms() + timeout_ms;
    size_t total = 0;
    char buf[4096];
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            fprintf(stderr, "vp-sockcat: no EOF from %s within %ld ms\n", path, timeout_ms);
            close(fd);
            return 3;
        }
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int pr = poll(&p, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            continue;
        ssize_t n = pr < 0 ? -1 : read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "vp-sockcat: read from %s: %s\n", path, strerror(errno));
            close(fd);
            return 1;
        }
        if (n == 0)
            break;
        total += (size_t)n;
        if (total > MAX_ANSWER || write_all(STDOUT_FILENO, buf, (size_t)n) < 0) {
            fprintf(stderr, "vp-sockcat: answer too long or stdout failed\n");
            close(fd);
            return 1;
        }
    }
    close(fd);
    return 0;
}
