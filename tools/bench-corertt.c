/*
 * bench-corertt - the round trip of one cache line between two CPUs (`make bench`).
 *
 *   bench-corertt [--cpus A,B] [--seconds S] [--json]
 *
 * A thread pinned to CPU A stores a counter into a 64-byte line, a thread pinned to
 * CPU B answers with the next value, and so on: each round trip moves the line from
 * A's cache to B's and back, which is what a frontend and a backend polling one ring
 * pay per exchange. Prints the median, over batches of 1000 round trips taken for S
 * seconds (default 0.1), of nanoseconds per round trip.
 *
 * Why the bench needs it: on a virtual machine the host decides on which physical
 * cores the vCPUs run, and moves them. On the AMD EPYC machines of this project the
 * two vCPUs sit either close (a round trip of ~60-75 ns: one L3) or far (~340-390
 * ns), switching every few seconds to minutes, and every polling path (DPDK's too)
 * runs 2-3x slower in the far placement. The bench probes before and after each
 * measurement and compares paths only within one placement.
 *
 * Exit status: 0, 1 when the answering thread did not answer within S + 1 seconds
 * (B busy with a higher-priority task), 2 on bad arguments.
 */

#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 1000
#define MAX_BATCHES 100000

static _Alignas(64) _Atomic unsigned long ball;
static _Alignas(64) _Atomic int quit;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* The answering side: turns every odd value into the next even one. */
static void *answer(void *arg)
{
    unsigned long v = 1;

    if (pin(*(int *)arg) != 0)
        return (void *)1;
    while (!atomic_load_explicit(&quit, memory_order_relaxed)) {
        if (atomic_load_explicit(&ball, memory_order_acquire) == v) {
            atomic_store_explicit(&ball, v + 1, memory_order_release);
            v += 2;
        }
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "cpus", required_argument, NULL, 'c' }, { "seconds", required_argument, NULL, 's' },
        { "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static double ns[MAX_BATCHES];
    int cpu_a = 0, cpu_b = 1, json = 0, c;
    double seconds = 0.1;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (sscanf(optarg, "%d,%d", &cpu_a, &cpu_b) != 2 || cpu_a < 0 || cpu_b < 0 ||
                cpu_a == cpu_b) {
                fprintf(stderr, "bench-corertt: --cpus wants two different CPUs, A,B: '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 's': seconds = atof(optarg); break;
        case 'j': json = 1; break;
        case 'h':
            puts("usage: bench-corertt [--cpus A,B] [--seconds S] [--json]\n"
                 "  the median round trip of one cache line between CPUs A and B (default\n"
                 "  0,1) over S seconds (default 0.1), in nanoseconds");
            return 0;
        default:
            fputs("usage: bench-corertt [--cpus A,B] [--seconds S] [--json]\n", stderr);
            return 2;
        }
    }
    if (!(seconds > 0 && seconds <= 60)) {
        fprintf(stderr, "bench-corertt: --seconds wants 0 < S <= 60\n");
        return 2;
    }
    if (pin(cpu_a) != 0) {
        fprintf(stderr, "bench-corertt: cannot run on CPU %d (is it online and allowed?)\n", cpu_a);
        return 2;
    }

    pthread_t t;
    if (pthread_create(&t, NULL, answer, &cpu_b) != 0) {
        fprintf(stderr, "bench-corertt: pthread_create failed\n");
        return 1;
    }
    unsigned long v = 0;
    size_t n = 0;
    int stuck = 0;
    double end = now_s() + seconds, give_up = end + 1;
    while (n < MAX_BATCHES && !stuck && (n == 0 || now_s() < end)) {
        double t0 = now_s();
        for (int i = 0; i < BATCH && !stuck; i++) {
            atomic_store_explicit(&ball, v + 1, memory_order_release);
            for (unsigned spin = 0;
                 atomic_load_explicit(&ball, memory_order_acquire) != v + 2; spin++) {
                if ((spin & 0xfff) == 0xfff && now_s() > give_up) {
                    stuck = 1;
                    break;
                }
            }
            v += 2;
        }
        ns[n++] = (now_s() - t0) * 1e9 / BATCH;
    }
    atomic_store(&quit, 1);
    void *rc;
    pthread_join(t, &rc);
    if (rc != NULL) {
        fprintf(stderr, "bench-corertt: cannot run on CPU %d (is it online and allowed?)\n", cpu_b);
        return 2;
    }
    if (stuck) {
        fprintf(stderr, "bench-corertt: CPU %d did not answer within %.1f s\n", cpu_b, seconds + 1);
        return 1;
    }
    qsort(ns, n, sizeof(ns[0]), cmp_double);
    double med = ns[n / 2];
    if (json)
        printf("{\"cpus\": [%d, %d], \"rtt_ns\": %.1f, \"batches\": %zu}\n", cpu_a, cpu_b, med, n);
    else
        printf("CPU %d <-> CPU %d: %.1f ns per cache-line round trip (median of %zu x %d)\n",
               cpu_a, cpu_b, med, n, BATCH);
    return 0;
}
