/*
 * log.h - the guest driver's tiny leveled logger (libc only; GLib components use
 * g_log instead). Lines go to stderr as "vhost-pci-guestd: <level>: <text>".
 * Single-threaded, like the rest of vhost-pci-guestd.
 */
#ifndef GD_LOG_H
#define GD_LOG_H

enum gd_log_level {
    GD_LOG_ERROR = 0,
    GD_LOG_WARN = 1,
    GD_LOG_INFO = 2,
    GD_LOG_DEBUG = 3,
};

/** Lines above this level are dropped. Default GD_LOG_INFO. */
void gd_log_set_level(enum gd_log_level level);
enum gd_log_level gd_log_get_level(void);

/** Parse "error", "warn"/"warning", "info", "debug" or a digit 0..3.
 *  Returns 0 with *level set, or -EINVAL. */
int gd_log_parse_level(const char *s, enum gd_log_level *level);

/** Write one line (a newline is appended) when @level is enabled. */
void gd_log(enum gd_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define gd_error(...) gd_log(GD_LOG_ERROR, __VA_ARGS__)
#define gd_warn(...) gd_log(GD_LOG_WARN, __VA_ARGS__)
#define gd_info(...) gd_log(GD_LOG_INFO, __VA_ARGS__)
#define gd_debug(...) gd_log(GD_LOG_DEBUG, __VA_ARGS__)

#endif
