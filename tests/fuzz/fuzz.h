/*
 * fuzz.h - helpers shared by the libFuzzer targets of tests/fuzz/ (static functions,
 * included by each fuzz-*.c).
 *
 *  - struct fz: a cursor over the fuzz input that hands out integers and byte runs
 *    and yields zeros once the input is used up, so every input is a valid program
 *    for a target (no input is rejected for being short).
 *  - fz_make_fd(): an fd of a kind the input chooses (sealed and unsealed memfds of
 *    input-chosen sizes, a plain file, pipe, eventfd, socket, /dev/null, a directory,
 *    an O_PATH fd): peers may pass any of these where a memfd or eventfd is expected.
 *  - fz_fds_begin()/fz_fds_end(): every target checks after each input that the
 *    set of open fds is back where it was (a leaked fd aborts the run like a
 *    sanitizer report does). fz_fds_limit(): a target that never needs many fds
 *    makes that check cover every fd number, at less cost.
 *  - LLVMFuzzerInitialize(): targets run with G_SLICE=always-malloc (below).
 *  - fz_quiet_glib(): GLib log output off (peer garbage makes the code under test
 *    warn on every input), but g_critical / g_error still abort: a GLib assertion
 *    failing is a bug.
 *
 * Targets check their own invariants with FZ_CHECK(), which prints the condition (to
 * fd 2 directly: targets may point stdio's stderr elsewhere) and aborts, so libFuzzer
 * records the input as a crash.
 */
#ifndef VP_FUZZ_H
#define VP_FUZZ_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vp_common.h"

#define FZ_CHECK(cond)                                                              \
    do {                                                                            \
        if (!(cond)) {                                                              \
            dprintf(2, "%s:%d: fuzz invariant violated: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                         \
            abort();                                                                \
        }                                                                           \
    } while (0)

struct fz {
    const uint8_t *p;
    size_t n;
};

static inline uint8_t fz_u8(struct fz *f)
{
    if (!f->n)
        return 0;
    f->n--;
    return *f->p++;
}

static inline uint16_t fz_u16(struct fz *f)
{
    uint16_t lo = fz_u8(f);
    return (uint16_t)(lo | (uint16_t)fz_u8(f) << 8);
}

static inline uint32_t fz_u32(struct fz *f)
{
    uint32_t lo = fz_u16(f);
    return lo | (uint32_t)fz_u16(f) << 16;
}

static inline uint64_t fz_u64(struct fz *f)
{
    uint64_t lo = fz_u32(f);
    return lo | (uint64_t)fz_u32(f) << 32;
}

static inline bool fz_bool(struct fz *f) { return fz_u8(f) & 1; }

/** Take up to @max bytes (fewer when the input ends); returns the count. */
static inline size_t fz_take(struct fz *f, size_t max, const uint8_t **out)
{
    size_t n = max < f->n ? max : f->n;
    *out = f->p;
    f->p += n;
    f->n -= n;
    return n;
}

/** Kinds of fds a peer may pass (fz_make_fd). */
enum fz_fd_kind {
    FZ_FD_MEMFD_SEALED,       /* memfd, F_SEAL_SHRINK|GROW|SEAL */
    FZ_FD_MEMFD_SHRINK_SEAL,  /* memfd, F_SEAL_SHRINK only */
    FZ_FD_MEMFD_UNSEALED,
    FZ_FD_FILE,               /* an unlinked regular file (O_TMPFILE), no seals */
    FZ_FD_PIPE,               /* read end; write end closed */
    FZ_FD_EVENTFD,
    FZ_FD_SOCKET,             /* one end of a socketpair; the other closed */
    FZ_FD_DEVNULL,
    FZ_FD_DIR,
    FZ_FD_OPATH,
    FZ_FD_KINDS,
};

static inline int fz_memfd(uint64_t size, unsigned seals)
{
    int fd = memfd_create("fz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)size) < 0 || (seals && fcntl(fd, F_ADD_SEALS, seals) < 0)) {
        close(fd);
        return -1;
    }
    return fd;
}

/** File sizes the input chooses from: page multiples, odd sizes, empty, 2 MiB. */
static const uint64_t fz_sizes[16] = {
    4096, 8192, 16384, 65536, 1 << 20, 2 << 20, 0, 1,
    4095, 4097, 3 * 4096, 12288 + 17, 32768, 5 * 4096, 7 * 4096 + 1, 4 << 20,
};

static inline int fz_make_fd_fresh(unsigned kind, uint64_t size)
{
    int sv[2], fd = -1;
    switch (kind) {
    case FZ_FD_MEMFD_SEALED:
        return fz_memfd(size, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    case FZ_FD_MEMFD_SHRINK_SEAL:
        return fz_memfd(size, F_SEAL_SHRINK);
    case FZ_FD_MEMFD_UNSEALED:
        return fz_memfd(size, 0);
    case FZ_FD_FILE:
        /* tmpfs: a plain file (no seals), cheaper to make than one on disk */
        fd = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
            fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0 && ftruncate(fd, (off_t)size) < 0)
            vp_close_fd(&fd);
        return fd;
    case FZ_FD_PIPE:
        if (pipe2(sv, O_CLOEXEC) < 0)
            return -1;
        close(sv[1]);
        return sv[0];
    case FZ_FD_EVENTFD:
        return eventfd(0, EFD_CLOEXEC);
    case FZ_FD_SOCKET:
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
            return -1;
        close(sv[1]);
        return sv[0];
    case FZ_FD_DEVNULL:
        return open("/dev/null", O_RDWR | O_CLOEXEC);
    case FZ_FD_DIR:
        return open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    default:
        return open("/", O_PATH | O_CLOEXEC);
    }
}

/* One fd per (kind, size) made once per process (creating and destroying a memfd per
 * use costs more than the code under test): fz_make_fd hands out duplicates. The
 * code under test never writes or resizes them. Kinds without a size have one entry. */
static int fz_pool[FZ_FD_KINDS][16];
static bool fz_pool_ready;

static inline void fz_pool_init(void)
{
    if (fz_pool_ready)
        return;
    fz_pool_ready = true;
    for (unsigned k = 0; k < FZ_FD_KINDS; k++) {
        bool sized = k <= FZ_FD_FILE;
        for (unsigned i = 0; i < 16; i++)
            fz_pool[k][i] = (sized || i == 0) ? fz_make_fd_fresh(k, fz_sizes[i]) : -1;
    }
}

/**
 * A duplicate of the pool's fd of sized @kind (<= FZ_FD_FILE) and @size bytes (one of
 * fz_sizes; aborts otherwise): the same open file every time, for a target that
 * would otherwise make a fresh memfd per input. The caller owns it.
 */
static inline int fz_pool_dup(unsigned kind, uint64_t size)
{
    fz_pool_init();
    for (unsigned i = 0; kind <= FZ_FD_FILE && i < 16; i++) {
        if (fz_sizes[i] == size && fz_pool[kind][i] >= 0)
            return fcntl(fz_pool[kind][i], F_DUPFD_CLOEXEC, 0);
    }
    FZ_CHECK(!"fz_pool_dup: no such pool fd");
    return -1;
}

/**
 * An fd of the kind and size chosen by the input (2 bytes): a duplicate of the
 * pool's, so two of them may be the same open file (as regions of one memfd are).
 * The caller owns it. Returns -1 only when the system refuses.
 */
static inline int fz_make_fd(struct fz *f)
{
    unsigned kind = fz_u8(f) % FZ_FD_KINDS;
    unsigned si = fz_u8(f) % 16;
    fz_pool_init();
    int src = fz_pool[kind][kind <= FZ_FD_FILE ? si : 0];
    return src < 0 ? -1 : fcntl(src, F_DUPFD_CLOEXEC, 0);
}

/* The fd leak check: which of the fds below the scan bound are open, found with
 * poll(2) (reading /proc/self/fd costs more). The bound is FZ_FD_SCAN, or what the
 * target set with fz_fds_limit(). The poll costs in proportion to the fds it looks
 * at, so the scan at the start of an input looks only up to a little above the
 * highest fd the previous input left open (all above were closed then, checked):
 * what libFuzzer opens for good between two inputs (the symbolizer's pipes when it
 * prints a new function) takes the lowest free numbers, which that scan covers. Had
 * it opened more than FZ_FD_SLACK, the end of the next input would report them
 * (a false report, never a missed one). */
#define FZ_FD_SCAN 2048
#define FZ_FD_SLACK 32

struct fz_fdset {
    uint8_t open[FZ_FD_SCAN];
};

static int fz_fd_bound = FZ_FD_SCAN;
static int fz_fd_last_hi = FZ_FD_SCAN;  /* highest fd the last input left open */

/**
 * For targets whose inputs never hold many fds: lower the soft RLIMIT_NOFILE to
 * @n (<= FZ_FD_SCAN, and above what any input needs) and scan only fds below @n.
 * No fd at or above @n can be created afterwards, so the check covers every fd an
 * input can open; without this, fds at FZ_FD_SCAN and above are not looked at.
 * Call before the first fz_fds_begin(). Aborts when the limit cannot be set.
 */
static inline void fz_fds_limit(int n)
{
    struct rlimit rl;
    FZ_CHECK(n > 0 && n <= FZ_FD_SCAN && getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur > (rlim_t)n) {
        rl.rlim_cur = (rlim_t)n;
        FZ_CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    }
    fz_fd_bound = n;
}

/* Which of the fds below @n are open (the rest of @s up to the bound: closed).
 * Not instrumented: the harness's own loops are no coverage of the code under test. */
__attribute__((no_sanitize("coverage"))) static inline void fz_fd_scan(struct fz_fdset *s, int n)
{
    static struct pollfd p[FZ_FD_SCAN];
    if (n > fz_fd_bound)
        n = fz_fd_bound;
    for (int i = 0; i < n; i++)
        p[i] = (struct pollfd){ .fd = i, .events = 0 };
    FZ_CHECK(poll(p, (nfds_t)n, 0) >= 0);
    for (int i = 0; i < n; i++)
        s->open[i] = !(p[i].revents & POLLNVAL);
    memset(s->open + n, 0, (size_t)(fz_fd_bound - n));
}

/** Record the open fds at the start of an input (creates the fd pool first). */
static inline void fz_fds_begin(struct fz_fdset *s)
{
    fz_pool_init();
    fz_fd_scan(s, fz_fd_last_hi + 1 + FZ_FD_SLACK);
}

/** Abort when the input left an fd open, or closed one it did not own. */
__attribute__((no_sanitize("coverage"))) static inline void fz_fds_end(const struct fz_fdset *before)
{
    struct fz_fdset now;
    fz_fd_scan(&now, fz_fd_bound);
    int hi = -1;
    for (int i = 0; i < fz_fd_bound; i++) {
        if (now.open[i] != before->open[i]) {
            dprintf(2, "fuzz: fd %d %s by the input\n", i,
                    now.open[i] ? "left open (leaked)" : "closed (not its own)");
            abort();
        }
        if (now.open[i])
            hi = i;
    }
    fz_fd_last_hi = hi;
}

/*
 * GLib before 2.76 hands out small blocks (GList, GHashTable, GSource pieces, and
 * json-glib's JsonNode and JsonObject) from per-thread slice magazines: ASan does not
 * see an overflow or use-after-free of such a block, LSan does not see it leak, and
 * the magazines make an input allocate more than it frees, so libFuzzer runs inputs
 * again for its leak check and, after 1000 such checks, stops checking inputs for
 * leaks at all. G_SLICE=always-malloc makes every slice a malloc. GLib reads it
 * once, before main in a program linked with GObject, so the target executes
 * itself again with it set (unless G_SLICE is already set: a caller's choice).
 */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    if (!getenv("G_SLICE")) {
        setenv("G_SLICE", "always-malloc", 1);
        execv("/proc/self/exe", *argv);
        dprintf(2, "fuzz: re-executing with G_SLICE=always-malloc: %s\n", strerror(errno));
    }
    return 0;
}

/** Send @len bytes of @buf with @nfds fds on @sock (non-blocking; MSG_NOSIGNAL).
 *  Returns the bytes sent, or -errno (-EAGAIN when the socket buffer is full). */
static inline ssize_t fz_send(int sock, const void *buf, size_t len, const int *fds,
                              unsigned nfds)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return vp_sendmsg_fds(sock, &iov, 1, nfds ? fds : NULL, nfds,
                          MSG_NOSIGNAL | MSG_DONTWAIT);
}

/**
 * One "send" step of the stream targets: a run of input bytes (u16 length, at most
 * @maxlen) as one sendmsg on @sock with 0..3 fds of input-chosen kinds (cmd bits 2-3),
 * or, when cmd bits 2-7 are all set, an input-chosen number below @maxfds (over the
 * receiver's limit now and then). fds ride on the first byte; a chunk of fds and no
 * bytes gets one byte. When the socket buffer is full, @drain(@opaque) runs once (the
 * receiver reads) and the send is tried again. Our copies of the fds are closed.
 */
static inline void fz_send_chunk(struct fz *f, int sock, uint8_t cmd, size_t maxlen,
                                 unsigned maxfds, void (*drain)(void *), void *opaque)
{
    unsigned nfds = (cmd >> 2) & 3;
    if ((cmd >> 2) == 0x3f)
        nfds = fz_u8(f) % maxfds;
    const uint8_t *bytes;
    size_t len = fz_take(f, fz_u16(f) % maxlen, &bytes);
    static const uint8_t one;
    if (len == 0) {
        if (!nfds)
            return;
        bytes = &one;
        len = 1;
    }
    int fds[256];
    unsigned made = 0;
    for (unsigned i = 0; i < nfds && made < 256; i++) {
        int fd = fz_make_fd(f);
        if (fd >= 0)
            fds[made++] = fd;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        if (fz_send(sock, bytes, len, fds, made > VP_SEND_MAX_FDS ? VP_SEND_MAX_FDS : made) !=
            -EAGAIN)
            break;
        drain(opaque);
    }
    vp_close_fds(fds, made);
}

#ifdef __G_LIB_H__   /* targets that include <glib.h> first */
static GLogWriterOutput fz_log_writer(GLogLevelFlags level, const GLogField *fields,
                                      gsize n, gpointer data)
{
    (void)data;
    if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL)) {
        g_log_writer_standard_streams(level, fields, n, NULL);
        abort();
    }
    return G_LOG_WRITER_HANDLED;
}

/** GLib logs off, except that g_critical / g_error abort (see the file comment). */
static inline void fz_quiet_glib(void)
{
    static bool done;             /* GLib takes a writer once per process */
    if (!done && !getenv("FUZZ_VERBOSE"))
        g_log_set_writer_func(fz_log_writer, NULL, NULL);
    done = true;
}
#endif

#endif
