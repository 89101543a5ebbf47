/*
 * vu-pingpong - round-trip latency of one frame through a vhost-user backend that
 * sends every frame back (`make bench`, issue 11 "Latency").
 *
 * It is a small vhost-user FRONTEND of the project's own, the test frontend
 * (tests/integration/vu_frontend: QEMU 7.2's message sequence, sealed memfd RAM)
 * grown a data path: a virtio-net driver side (protocol/vp_vring driver half) with
 * queue 0 = receiveq and queue 1 = transmitq in its RAM. It is used identically
 * against every backend that reflects frames: vhost-pci-client -> vhost-pci-server
 * (--device-host local) -> vhost-pci-guestd --endpoint loopback, and DPDK's vhost
 * PMD in a testpmd io-forwarding the port to itself.
 *
 *   vu-pingpong --socket PATH [--size BYTES] [--count N] [--warmup N]
 *               [--timeout-ms MS] [--json]
 *
 * Ping-pong: one frame of --size bytes (64 by default; Ethernet frame without the
 * virtio-net header) is put on the transmitq, and the clock runs until the same
 * frame (sequence number checked) is in the receiveq's used ring; then the next.
 * Both rings are polled (no interrupts asked for: VRING_AVAIL_F_NO_INTERRUPT), the
 * transmitq is kicked when the backend asks for it. After --warmup round trips
 * (default 1000), --count (default 20000) are timed. Prints median, p99, min, max
 * and mean in microseconds, and how many of the timed frames were followed by a
 * kick (the backend asked for one; a kick is a syscall inside the timed round trip)
 * (--json: one JSON object). Exit status 0 when every frame
 * came back intact within --timeout-ms (default 5000) each; 1 otherwise, with why.
 *
 * Features negotiated: VIRTIO_F_VERSION_1 only (12-byte virtio-net header, no
 * mergeable buffers, no event index), plus VHOST_USER_F_PROTOCOL_FEATURES with
 * REPLY_ACK and CONFIGURE_MEM_SLOTS when offered.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vp_vring.h"
#include "vu_frontend.h"

#define RAM_SIZE (16u << 20)    /* guest RAM (bytes): rings + buffers */
#define QNUM 256                /* descriptors per ring */
#define BUF_SIZE 2048           /* one receive buffer: header + frame */
#define HDR_LEN 12              /* virtio-net header with VIRTIO_F_VERSION_1 */
#define F_VERSION_1 32

/* Layout in RAM (offsets = guest-physical addresses: RAM sits at gpa 0). */
#define RING_OFF(q) (0x1000 + (uint64_t)(q) * 0x10000) /* desc, avail, used (not at 0:
                                                         a zero address is refused) */
#define RXBUF_OFF   (1u << 20)
#define TXBUF_OFF   (RXBUF_OFF + QNUM * BUF_SIZE)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int connect_unix(const char *path, int timeout_ms)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "vu-pingpong: socket path too long: %s\n", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    for (;;) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            return -1;
        if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return s;
        int e = errno;
        close(s);
        if ((e != ENOENT && e != ECONNREFUSED) || now_ns() > deadline) {
            fprintf(stderr, "vu-pingpong: connect %s: %s\n", path, strerror(e));
            return -1;
        }
        usleep(20000);
    }
}

struct ring {
    struct vp_vring_drv vq;
    struct vu_fe_vring lay;
};

static int ring_init(struct ring *r, uint8_t *ram, unsigned q)
{
    struct vp_vring_mem m;

    r->lay.num = QNUM;
    r->lay.desc_off = RING_OFF(q);
    r->lay.avail_off = r->lay.desc_off + vp_vring_desc_size(QNUM);
    r->lay.used_off = (r->lay.avail_off + vp_vring_avail_size(QNUM) + 4095) & ~4095ull;
    r->lay.base = 0;
    m.desc = ram + r->lay.desc_off;
    m.avail = ram + r->lay.avail_off;
    m.used = ram + r->lay.used_off;
    m.num = QNUM;
    return vp_vring_drv_init(&r->vq, &m, false);
}

static int post_rx(struct ring *rx, unsigned i)
{
    struct vp_vring_seg seg = { RXBUF_OFF + (uint64_t)i * BUF_SIZE, BUF_SIZE, true };
    return vp_vring_drv_add(&rx->vq, &seg, 0, 1, (void *)(uintptr_t)(i + 1));
}

static void usage(void)
{
    fputs("usage: vu-pingpong --socket PATH [--size BYTES] [--count N] [--warmup N]\n"
          "                   [--timeout-ms MS] [--json]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "socket", required_argument, NULL, 's' }, { "size", required_argument, NULL, 'z' },
        { "count", required_argument, NULL, 'n' }, { "warmup", required_argument, NULL, 'w' },
        { "timeout-ms", required_argument, NULL, 't' }, { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    const char *path = NULL;
    unsigned size = 64, count = 20000, warmup = 1000, timeout_ms = 5000;
    int json = 0, c, rc = 1;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': path = optarg; break;
        case 'z': size = (unsigned)strtoul(optarg, NULL, 0); break;
        case 'n': count = (unsigned)strtoul(optarg, NULL, 0); break;
        case 'w': warmup = (unsigned)strtoul(optarg, NULL, 0); break;
        case 't': timeout_ms = (unsigned)strtoul(optarg, NULL, 0); break;
        case 'j': json = 1; break;
        default: usage();
        }
    }
    if (!path || size < 60 || size > BUF_SIZE - HDR_LEN || count == 0) {
        if (path)
            fprintf(stderr, "vu-pingpong: --size must be 60..%d, --count at least 1\n",
                    BUF_SIZE - HDR_LEN);
        usage();
    }

    int sock = connect_unix(path, (int)timeout_ms);
    if (sock < 0)
        return 1;
    struct vu_fe *fe = vu_fe_new(sock, 2, NULL, NULL);
    struct ring rx = { 0 }, tx = { 0 };
    uint8_t *ram = MAP_FAILED;
    uint64_t *rtt = calloc(count, sizeof(*rtt));
    int kick = -1;

    vu_fe_set_timeout(fe, (int)timeout_ms);
    vu_fe_set_accepted_pf(fe, (1ull << VU_PF_REPLY_ACK) | (1ull << VU_PF_CONFIGURE_MEM_SLOTS));
    int ramid = vu_fe_ram_new(fe, RAM_SIZE);
    if (!rtt || ramid < 0 || vu_fe_region_new(fe, (unsigned)ramid, 0, 0, RAM_SIZE) < 0) {
        fprintf(stderr, "vu-pingpong: guest RAM: %s\n", vu_fe_error(fe));
        goto out;
    }
    ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, vu_fe_ram_fd(fe, 0), 0);
    if (ram == MAP_FAILED || ring_init(&rx, ram, 0) || ring_init(&tx, ram, 1)) {
        fprintf(stderr, "vu-pingpong: cannot set up the rings\n");
        goto out;
    }
    if (vu_fe_qemu72_init(fe)) {
        fprintf(stderr, "vu-pingpong: vhost-user handshake: %s\n", vu_fe_error(fe));
        goto out;
    }
    if (!(vu_fe_offered_features(fe) & (1ull << F_VERSION_1))) {
        fprintf(stderr, "vu-pingpong: the backend does not offer VIRTIO_F_VERSION_1\n");
        goto out;
    }
    for (unsigned i = 0; i < QNUM; i++)
        post_rx(&rx, i);
    vp_vring_drv_kick_prepare(&rx.vq);
    vp_vring_drv_set_notify(&rx.vq, false);         /* we poll: no interrupts */
    vp_vring_drv_set_notify(&tx.vq, false);
    {
        struct vu_fe_vring lay[2] = { rx.lay, tx.lay };
        if (vu_fe_qemu72_start(fe, 1ull << F_VERSION_1, lay)) {
            fprintf(stderr, "vu-pingpong: starting the device: %s\n", vu_fe_error(fe));
            goto out;
        }
    }
    kick = vu_fe_vring_fd(fe, VU_SET_VRING_KICK, 1);

    uint64_t seq = 0, kicks = 0;      /* kicks: transmitq kicks in the timed frames */
    for (unsigned n = 0; n < warmup + count; n++, seq++) {
        unsigned slot = (unsigned)(seq % QNUM);
        uint8_t *buf = ram + TXBUF_OFF + (uint64_t)slot * BUF_SIZE, *f = buf + HDR_LEN;
        struct vp_vring_seg seg = { TXBUF_OFF + (uint64_t)slot * BUF_SIZE, HDR_LEN + size, false };
        void *tok;
        uint32_t len;
        int r;

        memset(buf, 0, HDR_LEN);
        memset(f, 0xff, 6);                             /* broadcast */
        memcpy(f + 6, "\x02\x00\x00\x00\x00\x01", 6);
        f[12] = 0x88, f[13] = 0xb5;                     /* local experimental */
        memcpy(f + 14, &seq, sizeof(seq));
        /* Reclaim transmitted chains first (the backend used them). */
        while ((r = vp_vring_drv_get_used(&tx.vq, &tok, &len)) == 1)
            ;
        uint64_t t0 = now_ns();
        if (r < 0 || vp_vring_drv_add(&tx.vq, &seg, 1, 0, NULL)) {
            fprintf(stderr, "vu-pingpong: transmitq broken or full: %s\n", tx.vq.why);
            goto out;
        }
        if (vp_vring_drv_kick_prepare(&tx.vq) && kick >= 0) {
            uint64_t one = 1;
            if (write(kick, &one, sizeof(one)) != sizeof(one)) {
                perror("vu-pingpong: kick");
                goto out;
            }
            if (n >= warmup)
                kicks++;
        }
        uint64_t deadline = t0 + (uint64_t)timeout_ms * 1000000u;
        for (;;) {
            r = vp_vring_drv_get_used(&rx.vq, &tok, &len);
            if (r == 1)
                break;
            if (r < 0 || now_ns() > deadline) {
                fprintf(stderr, "vu-pingpong: frame %" PRIu64 " not back within %u ms%s%s\n",
                        seq, timeout_ms, r < 0 ? ": receiveq broken: " : "",
                        r < 0 ? rx.vq.why : "");
                goto out;
            }
        }
        uint64_t t1 = now_ns();
        unsigned i = (unsigned)(uintptr_t)tok - 1;
        const uint8_t *got = ram + RXBUF_OFF + (uint64_t)i * BUF_SIZE + HDR_LEN;
        uint64_t gseq;
        memcpy(&gseq, got + 14, sizeof(gseq));
        if (i >= QNUM || len != HDR_LEN + size || gseq != seq) {
            fprintf(stderr, "vu-pingpong: frame %" PRIu64 " came back wrong: buffer %u, "
                    "%u bytes (want %u), sequence %" PRIu64 "\n", seq, i, len,
                    HDR_LEN + size, gseq);
            goto out;
        }
        post_rx(&rx, i);
        vp_vring_drv_kick_prepare(&rx.vq);   /* polled backends need no kick for rx */
        if (n >= warmup)
            rtt[n - warmup] = t1 - t0;
    }

    qsort(rtt, count, sizeof(*rtt), cmp_u64);
    {
        double sum = 0;
        for (unsigned i = 0; i < count; i++)
            sum += (double)rtt[i];
        double med = rtt[count / 2] / 1e3, p99 = rtt[(count * 99) / 100] / 1e3;
        double mn = rtt[0] / 1e3, mx = rtt[count - 1] / 1e3, mean = sum / count / 1e3;
        if (json)
            printf("{\"size\": %u, \"count\": %u, \"median_us\": %.3f, \"p99_us\": %.3f, "
                   "\"min_us\": %.3f, \"max_us\": %.3f, \"mean_us\": %.3f, \"kicks\": %" PRIu64 "}\n",
                   size, count, med, p99, mn, mx, mean, kicks);
        else
            printf("%u-byte round trip over %u frames: median %.2f us, p99 %.2f us, "
                   "min %.2f us, max %.2f us, mean %.2f us; %" PRIu64 " transmitq kicks\n", size,
                   count, med, p99, mn, mx, mean, kicks);
    }
    vu_fe_qemu72_stop(fe, NULL);
    rc = 0;
out:
    vp_vring_drv_destroy(&rx.vq);
    vp_vring_drv_destroy(&tx.vq);
    if (ram != MAP_FAILED)
        munmap(ram, RAM_SIZE);
    vu_fe_free(fe);
    free(rtt);
    return rc;
}
