/*
 * endpoint.c - endpoint selection by a --endpoint spec (endpoint.h). libc only.
 */
#include <errno.h>
#include <string.h>

#include "endpoint.h"

struct gd_endpoint *gd_endpoint_new(struct gd_loop *loop, const char *spec, vp_error *err)
{
    if (!strncmp(spec, "tap:", 4))
        return gd_endpoint_tap_new(loop, spec + 4, err);
    if (!strcmp(spec, "loopback"))
        return gd_endpoint_loopback_new(loop, err);
    if (!strcmp(spec, "switch"))
        return gd_endpoint_switch_new(loop, err);
    if (!strncmp(spec, "unix:", 5))
        return gd_endpoint_unix_new(loop, spec + 5, err);
    vp_fail(err, -EINVAL, "unknown endpoint '%s' (tap:NAME, loopback, switch or unix:PATH)", spec);
    return NULL;
}
