/* json.c - a tiny JSON writer (json.h). libc only. */
#include "json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gd_json_init(struct gd_json *j) { memset(j, 0, sizeof(*j)); }

void gd_json_free(struct gd_json *j)
{
    free(j->buf);
    memset(j, 0, sizeof(*j));
}

static void put(struct gd_json *j, const char *s, size_t n)
{
    if (j->oom)
        return;
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 1024;
        while (cap < j->len + n + 1)
            cap *= 2;
        char *p = realloc(j->buf, cap);
        if (!p) {
            j->oom = true;
            return;
        }
        j->buf = p;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
    j->buf[j->len] = 0;
}

static void puts_(struct gd_json *j, const char *s) { put(j, s, strlen(s)); }

void gd_json_escape(struct gd_json *j, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    put(j, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"': puts_(j, "\\\""); break;
        case '\\': puts_(j, "\\\\"); break;
        case '\n': puts_(j, "\\n"); break;
        case '\r': puts_(j, "\\r"); break;
        case '\t': puts_(j, "\\t"); break;
        case '\b': puts_(j, "\\b"); break;
        case '\f': puts_(j, "\\f"); break;
        default:
            if (*p < 0x20 || *p >= 0x7f) {
                char u[6] = { '\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15] };
                put(j, u, sizeof(u));
            } else {
                put(j, (const char *)p, 1);
            }
        }
    }
    put(j, "\"", 1);
}

/* Comma and key before a value. */
static void member(struct gd_json *j, const char *key)
{
    if (j->need_comma[j->depth])
        put(j, ",", 1);
    j->need_comma[j->depth] = true;
    if (key) {
        gd_json_escape(j, key);
        put(j, ":", 1);
    }
}

static void open_(struct gd_json *j, const char *key, const char *c)
{
    member(j, key);
    puts_(j, c);
    if (j->depth < GD_JSON_MAX_DEPTH)
        j->depth++;
    else
        j->oom = true; /* too deep: refuse rather than emit broken JSON */
    j->need_comma[j->depth] = false;
}

static void close_(struct gd_json *j, const char *c)
{
    puts_(j, c);
    if (j->depth)
        j->depth--;
}

void gd_json_begin_object(struct gd_json *j, const char *key) { open_(j, key, "{"); }
void gd_json_end_object(struct gd_json *j) { close_(j, "}"); }
void gd_json_begin_array(struct gd_json *j, const char *key) { open_(j, key, "["); }
void gd_json_end_array(struct gd_json *j) { close_(j, "]"); }

void gd_json_uint(struct gd_json *j, const char *key, uint64_t v)
{
    char b[24];
    member(j, key);
    int n = snprintf(b, sizeof(b), "%" PRIu64, v);
    put(j, b, (size_t)n);
}

void gd_json_int(struct gd_json *j, const char *key, int64_t v)
{
    char b[24];
    member(j, key);
    int n = snprintf(b, sizeof(b), "%" PRId64, v);
    put(j, b, (size_t)n);
}

void gd_json_bool(struct gd_json *j, const char *key, bool v)
{
    member(j, key);
    puts_(j, v ? "true" : "false");
}

void gd_json_string(struct gd_json *j, const char *key, const char *s)
{
    member(j, key);
    gd_json_escape(j, s);
}
