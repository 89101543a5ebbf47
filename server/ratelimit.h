/*
 * ratelimit.h - per-peer rate limiting of log lines (issue 12.2): a peer that floods
 * the server with bad or pointless messages must not flood its log. Each peer (a
 * tenant, i.e. a driver VM) gets SRV_LOG_BURST lines per second, the server's
 * connection events as a whole SRV_CONN_LOG_BURST; lines beyond are counted and
 * summed up in one line when the next second starts. Main thread.
 */
#ifndef VP_SERVER_RATELIMIT_H
#define VP_SERVER_RATELIMIT_H

#include <glib.h>
#include <stdbool.h>

/** Lines one peer may log per second. */
#define SRV_LOG_BURST 20

/** Lines the connection events of all peers together may log per second: many
 *  driver VMs (re)connect at once when a host starts; a connection flood still
 *  logs at most this many lines a second. */
#define SRV_CONN_LOG_BURST 256

/** The state of one peer's limit (zero-initialised). */
struct srv_ratelimit {
    gint64 window_us;                    /* start of the current second (monotonic) */
    unsigned lines;                      /* lines logged in it */
    unsigned suppressed;                 /* lines dropped in it */
    unsigned burst;                      /* lines allowed a second; 0: SRV_LOG_BURST */
};

/** May @who log one more line now? When a new second starts after lines were
 *  dropped, logs "<n> log lines about <who> suppressed" first. */
bool srv_rl_allow(struct srv_ratelimit *rl, const char *who);

/** g_log at @level, under @rl's limit for peer @who. */
#define SRV_LOG_PEER(rl, who, level, ...)                                     \
    do {                                                                      \
        if (srv_rl_allow((rl), (who)))                                        \
            g_log(G_LOG_DOMAIN, (level), __VA_ARGS__);                        \
    } while (0)

#endif
