/*
 * refusals.h - what the server refused lately, why, and how to fix it (issue 9 item 4,
 * the server's part): every request answered ADD_FAIL or DEL_FAIL (validation, a
 * limit, the guest driver's refusal, a timeout) is recorded with its client, request,
 * reason and a hint naming the fix, so that `vhost-pci-ctl status` and the mgmt JSON
 * ("refusals") show why a driver VM got no device or no memory. Bounded: the last
 * SRV_REFUSALS_KEPT. Main thread.
 */
#ifndef VP_SERVER_REFUSALS_H
#define VP_SERVER_REFUSALS_H

#include <glib.h>
#include <stdint.h>

#include "vp_wire.h"

#define SRV_REFUSALS_KEPT 32

/** One refusal. */
struct srv_refusal {
    gint64 when_us;                      /* g_get_monotonic_time() */
    char client[37];                     /* client_uuid text */
    char request[40];                    /* "MEMORY_INFO(ADD)", "DEVICE_INFO" ... */
    uint64_t seq;                        /* the request's msg_seq */
    uint64_t result;                     /* ADD_FAIL / DEL_FAIL */
    char reason[VP_MAX_REASON + 1];
    const char *fix;                     /* a static hint, never NULL */
};

/** The last refusals, oldest first. */
struct srv_refusals {
    struct srv_refusal r[SRV_REFUSALS_KEPT];
    unsigned next;                       /* slot of the next one */
    uint64_t total;                      /* refusals since the server started */
};

/** Record a refusal of @request (seq @seq) of client @client: @result, @reason. The
 *  fix is chosen from the reason. */
void srv_refusal_note(struct srv_refusals *rs, const char *client, const char *request,
                      uint64_t seq, uint64_t result, const char *reason);

/** What fixes a refusal with @reason (a static string). */
const char *srv_refusal_fix(const char *reason);

/** The @i-th kept refusal, oldest first (i < min(total, SRV_REFUSALS_KEPT)), or NULL. */
const struct srv_refusal *srv_refusal_get(const struct srv_refusals *rs, unsigned i);

#endif
