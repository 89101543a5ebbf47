/* vp_log_glib.c - the --log-level filter shared by the GLib programs. */
#include "vp_log_glib.h"

#include <glib.h>
#include <string.h>

static GLogLevelFlags log_threshold = G_LOG_LEVEL_INFO;

static GLogWriterOutput log_writer(GLogLevelFlags level, const GLogField *fields, gsize n,
                                   gpointer data)
{
    GLogLevelFlags l = level & G_LOG_LEVEL_MASK;
    /* GLib's levels grow in value as they get less severe. */
    if (l > log_threshold)
        return G_LOG_WRITER_HANDLED;
    return g_log_writer_standard_streams(level, fields, n, data);
}

int vp_log_set_level(const char *name)
{
    static const struct { const char *name; GLogLevelFlags level; } levels[] = {
        { "error", G_LOG_LEVEL_CRITICAL }, { "warning", G_LOG_LEVEL_WARNING },
        { "info", G_LOG_LEVEL_INFO }, { "debug", G_LOG_LEVEL_DEBUG },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(levels); i++) {
        if (strcmp(name, levels[i].name) == 0) {
            log_threshold = levels[i].level;
            return 0;
        }
    }
    return -1;
}

void vp_log_install(void)
{
    g_log_set_writer_func(log_writer, NULL, NULL);
}
