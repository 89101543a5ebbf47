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

/** GSourceFunc that sets the gboolean @flag points to and removes its source. */
gboolean vp_test_set_flag(gpointer flag);

/** Iterate the default GMainContext until @cond holds or @ms milliseconds passed
 *  (a bounded wait, not an assertion: the caller checks @cond afterwards). */
#define VP_SPIN_UNTIL(cond, ms)                                                 \
    do {                                                                        \
        gboolean exp_ = FALSE;                                                  \
        GSource *t_ = g_timeout_source_new(ms);                                 \
        g_source_set_callback(t_, vp_test_set_flag, &exp_, NULL);               \
        g_source_attach(t_, NULL);                                              \
        while (!(cond) && !exp_)                                                \
            g_main_context_iteration(NULL, TRUE);                               \
        g_source_destroy(t_);                                                   \
        g_source_unref(t_);                                                     \
    } while (0)

#endif
