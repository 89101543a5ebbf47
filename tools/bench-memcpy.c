/*
 * bench-memcpy - this machine's single-core copy limit per frame size (`make bench`,
 * issue 11 "The limit"): the rate at which one core can memcpy frames of each size
 * from one ring of buffers into another, which bounds any one-copy data path.
 *
 *   bench-memcpy [--sizes 64,256,1518,9000] [--seconds S] [--buffers N] [--json]
 *
 * Per size: N (default 256) source and N destination buffers of 9216 bytes each, as
 * a ring of receive buffers and a ring of transmit buffers would be; frame i goes
 * from source i % N to destination i % N. Runs S seconds (default 1) per size after a
 * short warm-up and prints frames/s (Mpps) and Gbit/s of frame bytes.
 */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOT 9216

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "sizes", required_argument, NULL, 'z' }, { "seconds", required_argument, NULL, 's' },
        { "buffers", required_argument, NULL, 'b' }, { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 },
    };
    char sizes_buf[256] = "64,256,1518,9000";
    double seconds = 1;
    unsigned nbuf = 256;
    int json = 0, c;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'z': snprintf(sizes_buf, sizeof(sizes_buf), "%s", optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'b': nbuf = (unsigned)strtoul(optarg, NULL, 0); break;
        case 'j': json = 1; break;
        default:
            fputs("usage: bench-memcpy [--sizes 64,256,1518,9000] [--seconds S] "
                  "[--buffers N] [--json]\n", stderr);
            return 2;
        }
    }
    if (nbuf == 0 || seconds <= 0) {
        fputs("bench-memcpy: --buffers and --seconds must be positive\n", stderr);
        return 2;
    }
    uint8_t *src = aligned_alloc(64, (size_t)nbuf * SLOT), *dst = aligned_alloc(64, (size_t)nbuf * SLOT);
    if (!src || !dst) {
        fputs("bench-memcpy: out of memory\n", stderr);
        return 1;
    }
    memset(src, 0x5a, (size_t)nbuf * SLOT);
    memset(dst, 0, (size_t)nbuf * SLOT);

    int first = 1;
    if (json)
        printf("[");
    for (char *save = NULL, *tok = strtok_r(sizes_buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        size_t size = strtoul(tok, NULL, 0);
        if (size == 0 || size > SLOT) {
            fprintf(stderr, "bench-memcpy: size %s out of range 1..%d\n", tok, SLOT);
            return 2;
        }
        uint64_t frames = 0;
        double t0 = now_s(), t_end = t0 + seconds, t;
        for (unsigned i = 0; i < nbuf * 4; i++)                  /* warm-up */
            memcpy(dst + (size_t)(i % nbuf) * SLOT, src + (size_t)(i % nbuf) * SLOT, size);
        t0 = now_s();
        t_end = t0 + seconds;
        do {
            for (unsigned i = 0; i < nbuf; i++) {
                memcpy(dst + (size_t)i * SLOT, src + (size_t)i * SLOT, size);
                /* keep the compiler from dropping or merging the copies */
                __asm__ __volatile__("" : : "r"(dst) : "memory");
            }
            frames += nbuf;
        } while ((t = now_s()) < t_end);
        double fps = (double)frames / (t - t0);
        double gbps = fps * (double)size * 8 / 1e9;
        if (json)
            printf("%s{\"size\": %zu, \"mpps\": %.3f, \"gbps\": %.3f}", first ? "" : ", ",
                   size, fps / 1e6, gbps);
        else
            printf("memcpy %5zu B: %8.2f Mpps %8.2f Gbit/s\n", size, fps / 1e6, gbps);
        first = 0;
    }
    if (json)
        printf("]\n");
    free(src);
    free(dst);
    return 0;
}
