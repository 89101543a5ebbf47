/* log.c - leveled logging to stderr for vhost-pci-guestd (libc only). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static enum gd_log_level log_level = GD_LOG_INFO;

void gd_log_set_level(enum gd_log_level level) { log_level = level; }
enum gd_log_level gd_log_get_level(void) { return log_level; }

int gd_log_parse_level(const char *s, enum gd_log_level *level)
{
    static const struct { const char *name; enum gd_log_level level; } names[] = {
        { "error", GD_LOG_ERROR }, { "warn", GD_LOG_WARN }, { "warning", GD_LOG_WARN },
        { "info", GD_LOG_INFO },   { "debug", GD_LOG_DEBUG },
        { "0", GD_LOG_ERROR },     { "1", GD_LOG_WARN },    { "2", GD_LOG_INFO },
        { "3", GD_LOG_DEBUG },
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *level = names[i].level;
            return 0;
        }
    }
    return -EINVAL;
}

void gd_log(enum gd_log_level level, const char *fmt, ...)
{
    static const char *const tag[] = { "error", "warning", "info", "debug" };
    if (level > log_level)
        return;
    /* One buffer, one write: lines of different levels do not interleave. */
    char line[1024];
    int n = snprintf(line, sizeof(line), "vhost-pci-guestd: %s: ", tag[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    /* One event, one line: control bytes (e.g. from a peer's reason) are masked. */
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    }
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
    fflush(stderr);
}
