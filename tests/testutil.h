/*
 * testutil.h - helpers shared by the GTest programs.
 */
#ifndef VP_TESTUTIL_H
#define VP_TESTUTIL_H

#include <glib.h>

#include "vp_common.h"

/** Assert that the process has exactly @before open fds (no leak, no double close). */
#define vp_assert_fds(before)                                                   \
    do {                                                                        \
        int now_ = vp_count_open_fds();                                         \
        if (now_ != (before))                                                   \
            g_error("fd leak: %d open fds, expected %d", now_, (int)(before)); \
    } while (0)

/** A memfd of @size bytes with F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL when @seal.
 *  Aborts the test on failure. */
int vp_test_memfd(const char *name, gsize size, gboolean seal);

/** A connected AF_UNIX SOCK_STREAM pair (both blocking). */
void vp_test_socketpair(int sv[2]);

#endif
