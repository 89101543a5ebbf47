/*
 * ratelimit.c - per-peer log rate limiting (ratelimit.h).
 */
#define G_LOG_DOMAIN "vp-server"
#include "ratelimit.h"

bool srv_rl_allow(struct srv_ratelimit *rl, const char *who)
{
    unsigned burst = rl->burst ? rl->burst : SRV_LOG_BURST;
    gint64 now = g_get_monotonic_time();
    if (now - rl->window_us >= G_USEC_PER_SEC) {
        if (rl->suppressed)
            g_message("%u log lines about %s suppressed (more than %d a second)",
                      rl->suppressed, who, burst);
        rl->window_us = now;
        rl->lines = 0;
        rl->suppressed = 0;
    }
    if (rl->lines >= burst) {
        rl->suppressed++;
        return false;
    }
    rl->lines++;
    return true;
}
