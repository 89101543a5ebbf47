/*
 * json.h - a tiny JSON writer for the status socket (libc only: the guest driver has
 * no GLib). Builds one compact document in a growing buffer; commas are inserted
 * automatically; strings are escaped (", \, control characters, and bytes >= 0x80
 * as \u00XX so the output is always valid ASCII JSON).
 */
#ifndef GD_JSON_H
#define GD_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GD_JSON_MAX_DEPTH 16

struct gd_json {
    char *buf;                    /* NUL-terminated document (malloc), NULL before use */
    size_t len, cap;
    bool oom;                     /* an allocation failed: the document is unusable */
    unsigned depth;
    bool need_comma[GD_JSON_MAX_DEPTH + 1];
};

/** Start an empty document in @j (no allocation yet). */
void gd_json_init(struct gd_json *j);
/** Free the buffer. */
void gd_json_free(struct gd_json *j);

/* @key is the member name inside an object, NULL inside an array or at top level. */
void gd_json_begin_object(struct gd_json *j, const char *key);
void gd_json_end_object(struct gd_json *j);
void gd_json_begin_array(struct gd_json *j, const char *key);
void gd_json_end_array(struct gd_json *j);
void gd_json_uint(struct gd_json *j, const char *key, uint64_t v);
void gd_json_int(struct gd_json *j, const char *key, int64_t v);
void gd_json_bool(struct gd_json *j, const char *key, bool v);
void gd_json_string(struct gd_json *j, const char *key, const char *s);

/** Append @s escaped as a JSON string (with quotes). */
void gd_json_escape(struct gd_json *j, const char *s);

#endif
