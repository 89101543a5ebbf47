/*
 * vhost-pci-ctl - inspect a running vhost-pci-server through its --mgmt socket.
 *
 *   vhost-pci-ctl --mgmt PATH status [--json]
 *   vhost-pci-ctl --guestd PATH queues [--json]
 *
 * `queues` asks a vhost-pci-guestd (its --status socket, same request) for its
 * devices and prints one line per virtqueue: frontend, queue pair, the data path
 * worker polling it, frames, bytes, position, broken.
 * Connects, writes `status\n`, reads one JSON document until EOF (schema: briefing,
 * "Server management socket"). --json prints it verbatim (pretty); otherwise a
 * human-readable summary of the same.
 *
 * Security model: the server's answer is parsed with json-glib and every member is
 * read with a typed accessor that tolerates its absence; at most 16 MiB are read.
 */
#include <errno.h>
#include <glib.h>
#include <inttypes.h>
#include <json-glib/json-glib.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_ANSWER (16u << 20)
#define TIMEOUT_MS 5000

static char *query(const char *path, const char *cmd, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "socket path too long");
        return NULL;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "cannot connect to %s: %s",
                    path, g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char line[64];
    g_snprintf(line, sizeof(line), "%s\n", cmd);
    if (send(fd, line, strlen(line), MSG_NOSIGNAL) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "send: %s", g_strerror(errno));
        close(fd);
        return NULL;
    }
    GString *out = g_string_new(NULL);
    char buf[4096];
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int pr = poll(&p, 1, TIMEOUT_MS);
        if (pr == 0) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "no answer from %s within %d ms",
                        path, TIMEOUT_MS);
            break;
        }
        ssize_t n = pr < 0 ? -1 : read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "read: %s",
                        g_strerror(errno));
            break;
        }
        if (n == 0) {
            close(fd);
            return g_string_free(out, FALSE);
        }
        if (out->len + (size_t)n > MAX_ANSWER) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE, "answer over %u bytes",
                        MAX_ANSWER);
            break;
        }
        g_string_append_len(out, buf, n);
    }
    close(fd);
    g_string_free(out, TRUE);
    return NULL;
}

/* Member @name of @o, or NULL when @o is NULL or has no such member. */
static JsonNode *mget(JsonObject *o, const char *name)
{
    return o && json_object_has_member(o, name) ? json_object_get_member(o, name) : NULL;
}

static gint64 iget(JsonObject *o, const char *name)
{
    JsonNode *n = mget(o, name);
    return n && JSON_NODE_HOLDS_VALUE(n) ? json_node_get_int(n) : 0;
}

static const char *sget(JsonObject *o, const char *name)
{
    JsonNode *n = mget(o, name);
    return n && JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_STRING
               ? json_node_get_string(n) : "";
}

static gboolean bget(JsonObject *o, const char *name)
{
    JsonNode *n = mget(o, name);
    return n && JSON_NODE_HOLDS_VALUE(n) && json_node_get_boolean(n);
}

static JsonObject *oget(JsonObject *o, const char *name)
{
    JsonNode *n = mget(o, name);
    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static JsonArray *aget(JsonObject *o, const char *name)
{
    JsonNode *n = mget(o, name);
    return n && JSON_NODE_HOLDS_ARRAY(n) ? json_node_get_array(n) : NULL;
}

static JsonObject *elem(JsonArray *a, guint i)
{
    JsonNode *n = json_array_get_element(a, i);
    return JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static void print_status(JsonObject *root)
{
    JsonObject *c = oget(root, "counters");
    printf("device host: %s\n", sget(root, "device_host"));
    printf("connections: %" G_GINT64_FORMAT "   messages: %" G_GINT64_FORMAT
           "   bad messages: %" G_GINT64_FORMAT "   disconnects: %" G_GINT64_FORMAT "\n",
           iget(root, "connections"), iget(c, "messages"), iget(c, "bad_messages"),
           iget(c, "disconnects"));
    JsonArray *refs = aget(root, "refusals");
    guint nr = refs ? json_array_get_length(refs) : 0;
    if (nr)
        printf("refusals: %" G_GINT64_FORMAT " since the server started; the last %u:\n",
               iget(root, "refusals_total"), nr);
    for (guint i = 0; i < nr; i++) {
        JsonObject *r = elem(refs, i);
        printf("  %.1f s ago  client %s: %s seq %" G_GINT64_FORMAT " -> %s: %s\n    fix: %s\n",
               iget(r, "age_ms") / 1000.0, sget(r, "client"), sget(r, "request"),
               iget(r, "seq"), sget(r, "result"), sget(r, "reason"), sget(r, "fix"));
    }
    JsonArray *devs = aget(root, "devices");
    guint n = devs ? json_array_get_length(devs) : 0;
    printf("devices: %u\n", n);
    for (guint i = 0; i < n; i++) {
        JsonObject *d = elem(devs, i);
        JsonObject *f = oget(d, "features");
        JsonObject *dc = oget(d, "counters");
        printf("\n  device %s\n", sget(d, "uuid"));
        printf("    slot 0x%02" G_GINT64_MODIFIER "x   status 0x%02" G_GINT64_MODIFIER "x%s%s   "
               "connections %" G_GINT64_FORMAT "\n",
               iget(d, "slot"), iget(d, "status"), bget(d, "driver_ok") ? " DRIVER_OK" : "",
               bget(d, "needs_reset") ? " NEEDS_RESET" : "", iget(d, "connections"));
        if (*sget(d, "reason"))
            printf("    reason: %s\n", sget(d, "reason"));
        printf("    BAR 0x%" G_GINT64_MODIFIER "x   generation %" G_GINT64_FORMAT
               "   features offered 0x%" G_GINT64_MODIFIER "x accepted 0x%" G_GINT64_MODIFIER "x\n",
               iget(d, "bar_size"), iget(d, "generation"), iget(f, "offered"),
               iget(f, "accepted"));
        printf("    controlq tx %" G_GINT64_FORMAT " rx %" G_GINT64_FORMAT "   acks ok %"
               G_GINT64_FORMAT " fail %" G_GINT64_FORMAT "   clones %" G_GINT64_FORMAT
               "   resets %" G_GINT64_FORMAT "\n",
               iget(dc, "controlq_tx"), iget(dc, "controlq_rx"), iget(dc, "acks_ok"),
               iget(dc, "acks_fail"), iget(dc, "clones"), iget(dc, "resets"));
        JsonArray *a = aget(d, "windows");
        guint m = a ? json_array_get_length(a) : 0;
        printf("    windows (%u):\n", m);
        if (m)
            printf("      %-6s %-18s %-18s\n", "devfn", "bar_offset", "size");
        for (guint k = 0; k < m; k++) {
            JsonObject *w = elem(a, k);
            printf("      0x%-4" G_GINT64_MODIFIER "x 0x%-16" G_GINT64_MODIFIER "x 0x%-16"
                   G_GINT64_MODIFIER "x\n", iget(w, "devfn"), iget(w, "bar_offset"),
                   iget(w, "size"));
        }
        a = aget(d, "regions");
        m = a ? json_array_get_length(a) : 0;
        printf("    regions (%u):\n", m);
        if (m)
            printf("      %-18s %-18s %-18s %-18s\n", "gpa", "size", "mmap_offset", "bar_offset");
        for (guint k = 0; k < m; k++) {
            JsonObject *r = elem(a, k);
            printf("      0x%-16" G_GINT64_MODIFIER "x 0x%-16" G_GINT64_MODIFIER "x 0x%-16"
                   G_GINT64_MODIFIER "x 0x%-16" G_GINT64_MODIFIER "x\n", iget(r, "gpa"),
                   iget(r, "size"), iget(r, "mmap_offset"), iget(r, "bar_offset"));
        }
        a = aget(d, "frontends");
        m = a ? json_array_get_length(a) : 0;
        printf("    frontends (%u):\n", m);
        for (guint k = 0; k < m; k++) {
            JsonObject *fe = elem(a, k);
            printf("      %s device_id %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT " virtqueues\n",
                   sget(fe, "device_type"), iget(fe, "device_id"), iget(fe, "nvirtqs"));
        }
    }
}

/* `queues`: guestd's per-queue counters (issue 10). */
static void print_queues(JsonObject *root)
{
    JsonObject *dp = oget(root, "datapath");
    if (dp)
        printf("data path: endpoint %s, %" G_GINT64_FORMAT " worker(s), %" G_GINT64_FORMAT
               " port(s)\n", sget(dp, "endpoint"), iget(dp, "workers"), iget(dp, "ports"));
    printf("%-5s %-10s %-5s %-4s %-6s %12s %16s %8s %s\n", "slot", "device_id", "queue",
           "pair", "worker", "frames", "bytes", "position", "state");
    JsonArray *devs = aget(root, "devices");
    for (guint d = 0; devs && d < json_array_get_length(devs); d++) {
        JsonObject *dev = elem(devs, d);
        JsonArray *fes = aget(dev, "frontends");
        for (guint f = 0; fes && f < json_array_get_length(fes); f++) {
            JsonObject *fe = elem(fes, f);
            JsonArray *qs = aget(fe, "queues");
            for (guint k = 0; qs && k < json_array_get_length(qs); k++) {
                JsonObject *q = elem(qs, k);
                gint64 idx = iget(q, "index");
                printf("%-5" G_GINT64_FORMAT " %-10" G_GINT64_FORMAT " %-5" G_GINT64_FORMAT
                       " %-4" G_GINT64_FORMAT " %-6" G_GINT64_FORMAT " %12" G_GINT64_FORMAT
                       " %16" G_GINT64_FORMAT " %8" G_GINT64_FORMAT " %s\n",
                       iget(dev, "slot"), iget(fe, "device_id"), idx, idx / 2, iget(q, "worker"),
                       iget(q, "packets"), iget(q, "bytes"), iget(q, "last_avail_idx"),
                       bget(q, "broken") ? "BROKEN" : idx % 2 ? "transmitq" : "receiveq");
            }
        }
    }
}

int main(int argc, char **argv)
{
    char *mgmt = NULL, *guestd = NULL;
    gboolean json = FALSE;
    GOptionEntry entries[] = {
        { "mgmt", 'm', 0, G_OPTION_ARG_FILENAME, &mgmt,
          "Management socket of the vhost-pci-server (its --mgmt PATH)", "PATH" },
        { "guestd", 'g', 0, G_OPTION_ARG_FILENAME, &guestd,
          "Status socket of a vhost-pci-guestd (its --status PATH), for `queues`", "PATH" },
        { "json", 'j', 0, G_OPTION_ARG_NONE, &json, "Print the server's JSON document", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GOptionContext *ctx = g_option_context_new("status - inspect a vhost-pci-server");
    g_option_context_set_summary(ctx, "Commands:\n  status    devices, windows, regions, "
                                      "frontends and counters of the server (--mgmt)\n"
                                      "  queues    every virtqueue a guestd serves, with its "
                                      "worker and counters (--guestd)");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "vhost-pci-ctl: %s\n", err->message);
        return 2;
    }
    g_option_context_free(ctx);
    gboolean queues = argc == 2 && !strcmp(argv[1], "queues");
    if (argc != 2 || (queues ? !guestd : (!mgmt || strcmp(argv[1], "status") != 0))) {
        fprintf(stderr, "usage: vhost-pci-ctl --mgmt PATH status [--json]\n"
                        "       vhost-pci-ctl --guestd PATH queues [--json]\n");
        return 2;
    }
    char *answer = query(queues ? guestd : mgmt, "status", &err);
    if (!answer) {
        fprintf(stderr, "vhost-pci-ctl: %s\n", err->message);
        return 1;
    }
    JsonParser *p = json_parser_new();
    if (!json_parser_load_from_data(p, answer, -1, &err)) {
        fprintf(stderr, "vhost-pci-ctl: the server's answer is not JSON: %s\n", err->message);
        return 1;
    }
    JsonNode *root = json_parser_get_root(p);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        fprintf(stderr, "vhost-pci-ctl: the server's answer is not a JSON object\n");
        return 1;
    }
    JsonObject *o = json_node_get_object(root);
    if (json_object_has_member(o, "error")) {
        fprintf(stderr, "vhost-pci-ctl: server: %s\n", sget(o, "error"));
        return 1;
    }
    if (json) {
        JsonGenerator *g = json_generator_new();
        json_generator_set_root(g, root);
        json_generator_set_pretty(g, TRUE);
        char *s = json_generator_to_data(g, NULL);
        printf("%s\n", s);
        g_free(s);
        g_object_unref(g);
    } else if (queues) {
        print_queues(o);
    } else {
        print_status(o);
    }
    g_object_unref(p);
    g_free(answer);
    g_free(mgmt);
    g_free(guestd);
    return 0;
}
