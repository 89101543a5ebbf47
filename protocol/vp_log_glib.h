/*
 * vp_log_glib.h - the --log-level filter shared by the GLib programs (server, client
 * daemon). Host-only: not part of the libc-only core the guest driver links.
 */
#ifndef VP_LOG_GLIB_H
#define VP_LOG_GLIB_H

/** Set the least severe level printed: "error" (criticals and errors), "warning",
 *  "info" (the default) or "debug". Returns 0, or -1 for any other name. */
int vp_log_set_level(const char *name);

/** Install the filtering writer as GLib's log writer (standard streams). */
void vp_log_install(void);

#endif
