/*
 * devhost_qemu_sweep.c - remove what an earlier vhost-pci-server left in the device
 * VM's QEMU before a new one plugs anything (devhost_qemu_sweep.h; issue 12 item 6).
 *
 * Order, per function: device_del + DEVICE_DELETED (the guest ejects it; all at once,
 * each bounded), then its back end (chardev-remove for a control function, object-del
 * for a window's memory backend), then a window's add-fd fd (remove-fd). Back ends and
 * fds without a device (a server killed between object-add and device_add) go too.
 * Found with qom-list /machine/peripheral, query-chardev, qom-list /objects and
 * query-fdsets.
 *
 * Security model: QEMU is the peer; every member used from its answers is type-checked
 * and only names that parse exactly as ours (qh_parse_id) are acted on.
 */
#define G_LOG_DOMAIN "vp-server"
#include "devhost_qemu_sweep.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* One thing of ours found in QEMU. */
struct found {
    char kind[4];               /* "ctl", "win", "chr", "mem", "fd" (fd: kind of "win") */
    char id[40];
    unsigned gen;
    uint32_t devfn;
    int64_t fdset_id, fd;       /* "fd" only */
};

struct sweep {
    qmp_client *qmp;
    unsigned timeout_ms;
    GArray *found;              /* struct found */
    unsigned pending;           /* device_dels without an outcome yet */
    gboolean all_answered;
    unsigned removed;           /* functions whose DEVICE_DELETED came */
    unsigned backends_removed;
};

bool qh_parse_id(const char *id, char kind[4], unsigned *gen, uint32_t *devfn)
{
    static const char *const kinds[] = { "ctl", "win", "chr", "mem" };
    const char *p, *dash;
    char *end;
    guint64 g, d;
    bool known = false;

    if (!id || strncmp(id, "vpci-", 5) != 0 || strlen(id) >= 40)
        return false;
    p = id + 5;
    for (size_t i = 0; i < G_N_ELEMENTS(kinds); i++)
        known |= strncmp(p, kinds[i], 3) == 0;
    if (!known)
        return false;
    dash = strchr(p + 3, '-');
    if (!dash || dash == p + 3 || !g_ascii_isdigit(p[3]))
        return false;
    g = g_ascii_strtoull(p + 3, &end, 10);
    if (end != dash || g > G_MAXUINT)
        return false;
    if (strlen(dash + 1) != 2 || !g_ascii_isxdigit(dash[1]) || !g_ascii_isxdigit(dash[2]))
        return false;
    d = g_ascii_strtoull(dash + 1, &end, 16);
    if (*end)
        return false;
    memcpy(kind, p, 3);
    kind[3] = '\0';
    *gen = (unsigned)g;
    *devfn = (uint32_t)d;
    return true;
}

static JsonObject *array_object(JsonArray *a, guint i)
{
    JsonNode *n = json_array_get_element(a, i);
    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

/* Record @id when it is ours and of one of @kinds ("ctlwin", "chr", "mem"). */
static void found_id(struct sweep *s, const char *id, const char *kinds)
{
    struct found f = { .fdset_id = -1, .fd = -1 };

    if (!qh_parse_id(id, f.kind, &f.gen, &f.devfn) || !strstr(kinds, f.kind))
        return;
    g_strlcpy(f.id, id, sizeof(f.id));
    g_array_append_val(s->found, f);
}

/* Run @cmd (args taken) and return its "return" array (caller unrefs the node), or
 * NULL with the failure logged / in @err. */
static JsonNode *query_array(struct sweep *s, const char *cmd, JsonObject *args, int *ret,
                             vp_error *err)
{
    JsonNode *v = NULL;

    *ret = qmp_client_execute_sync(s->qmp, cmd, args, -1, 0, &v, NULL, err);
    if (*ret < 0)
        return NULL;
    if (!v || !JSON_NODE_HOLDS_ARRAY(v)) {
        g_warning("qemu host: %s: the answer is not an array; leftovers it would list are "
                  "not removed", cmd);
        if (v)
            json_node_unref(v);
        return NULL;
    }
    return v;
}

/* Our ids among the member @member of each element of @cmd's answer (qom-list PATH:
 * "name"; query-chardev: "label"), of @kinds. */
static int scan_list(struct sweep *s, const char *cmd, const char *path, const char *member,
                     const char *kinds, vp_error *err)
{
    JsonObject *a = NULL;
    JsonNode *v;
    JsonArray *arr;
    int ret;

    if (path) {
        a = json_object_new();
        json_object_set_string_member(a, "path", path);
    }
    v = query_array(s, cmd, a, &ret, err);
    if (!v)
        return ret;
    arr = json_node_get_array(v);
    for (guint i = 0; i < json_array_get_length(arr); i++)
        found_id(s, qmp_get_str(array_object(arr, i), member), kinds);
    json_node_unref(v);
    return 0;
}

/* query-fdsets: [{"fdset-id", "fds": [{"fd", "opaque"?}]}]; ours carry the opaque
 * text "vhost-pci <window id>" (devhost_qemu.c, qemu_plug_window). */
static int scan_fdsets(struct sweep *s, vp_error *err)
{
    JsonNode *v;
    JsonArray *sets;
    int ret;

    v = query_array(s, "query-fdsets", NULL, &ret, err);
    if (!v)
        return ret;
    sets = json_node_get_array(v);
    for (guint i = 0; i < json_array_get_length(sets); i++) {
        JsonObject *set = array_object(sets, i);
        JsonNode *fdsn = set ? json_object_get_member(set, "fds") : NULL;
        JsonArray *fds;
        int64_t set_id;

        if (!qmp_get_int(set, "fdset-id", &set_id) || !fdsn || !JSON_NODE_HOLDS_ARRAY(fdsn))
            continue;
        fds = json_node_get_array(fdsn);
        for (guint j = 0; j < json_array_get_length(fds); j++) {
            JsonObject *fo = array_object(fds, j);
            const char *opaque = qmp_get_str(fo, "opaque");
            struct found f = { .fdset_id = set_id };

            if (!opaque || !g_str_has_prefix(opaque, "vhost-pci ") || !qmp_get_int(fo, "fd", &f.fd) ||
                !qh_parse_id(opaque + 10, f.kind, &f.gen, &f.devfn) || strcmp(f.kind, "win") != 0)
                continue;
            g_strlcpy(f.kind, "fd", sizeof(f.kind));
            g_strlcpy(f.id, opaque + 10, sizeof(f.id));
            g_array_append_val(s->found, f);
        }
    }
    json_node_unref(v);
    return 0;
}

/* The device (kind ctl/win) or back end (chr/mem/fd) of the same function as @f. */
static bool same_function(const struct found *a, const struct found *b)
{
    return a->gen == b->gen && a->devfn == b->devfn;
}

/* Per device_del: which found entry; the outcome goes into its kind ("del" when gone,
 * "zom" when it stays). */
struct del_ctx {
    struct sweep *s;
    guint index;
};

static void on_deleted(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct del_ctx *d = opaque;
    struct sweep *s = d->s;
    struct found *f = &g_array_index(s->found, struct found, d->index);
    (void)c;

    if (r->ret == 0 || (r->ret == -EIO && r->err_class &&
                        strcmp(r->err_class, "DeviceNotFound") == 0)) {
        g_message("qemu host: removed %s (devfn 0x%x), left by an earlier server", f->id,
                  f->devfn);
        s->removed++;
        g_strlcpy(f->kind, "del", sizeof(f->kind));
    } else {
        g_warning("qemu host: %s (devfn 0x%x), left by an earlier server, stays: %s%s", f->id,
                  f->devfn, r->err.msg, r->ret == -ETIMEDOUT ? " (the guest did not eject it; "
                  "its back end is removed when DEVICE_DELETED arrives)" : "");
        g_strlcpy(f->kind, "zom", sizeof(f->kind));
    }
    g_free(d);
    if (--s->pending == 0)
        s->all_answered = TRUE;
}

/* The zombie that owns back end @b, if any. */
static struct found *zombie_of(struct sweep *s, const struct found *b)
{
    for (guint i = 0; i < s->found->len; i++) {
        struct found *f = &g_array_index(s->found, struct found, i);
        if (strcmp(f->kind, "zom") == 0 && same_function(f, b))
            return f;
    }
    return NULL;
}

static void remove_backend(struct sweep *s, const struct found *b)
{
    JsonObject *a = json_object_new();
    const char *cmd;
    vp_error err = { "" };

    if (strcmp(b->kind, "fd") == 0) {
        cmd = "remove-fd";
        json_object_set_int_member(a, "fdset-id", b->fdset_id);
        json_object_set_int_member(a, "fd", b->fd);
    } else {
        cmd = strcmp(b->kind, "chr") == 0 ? "chardev-remove" : "object-del";
        json_object_set_string_member(a, "id", b->id);
    }
    if (qmp_client_execute_sync(s->qmp, cmd, a, -1, 0, NULL, NULL, &err) < 0) {
        g_warning("qemu host: %s of %s, left by an earlier server: %s", cmd, b->id, err.msg);
        return;
    }
    g_info("qemu host: %s %s, left by an earlier server", cmd,
           strcmp(b->kind, "fd") == 0 ? "its add-fd fd" : b->id);
    s->backends_removed++;
}

int qh_sweep_leftovers(qmp_client *qmp, unsigned timeout_ms, struct qh_sweep *out,
                       vp_error *err)
{
    /* On the heap: should the wait below give up with device_dels still pending, their
     * callbacks find it intact (it is then leaked on purpose). */
    struct sweep *s = g_new0(struct sweep, 1);
    int ret;

    memset(out, 0, sizeof(*out));
    out->zombies = g_array_new(FALSE, TRUE, sizeof(struct qh_leftover));
    s->qmp = qmp;
    s->timeout_ms = timeout_ms;
    s->found = g_array_new(FALSE, TRUE, sizeof(struct found));
    if ((ret = scan_list(s, "qom-list", "/machine/peripheral", "name", "ctlwin", err)) < 0 ||
        (ret = scan_list(s, "query-chardev", NULL, "label", "chr", err)) < 0 ||
        (ret = scan_list(s, "qom-list", "/objects", "name", "mem", err)) < 0 ||
        (ret = scan_fdsets(s, err)) < 0)
        goto out;
    if (s->found->len == 0)
        goto out;
    g_message("qemu host: %u devices, back ends and fds left by an earlier server in the "
              "device VM: removing them", s->found->len);

    /* Devices first, all at once: each waits for its guest's eject. */
    for (guint i = 0; i < s->found->len; i++) {
        struct found *f = &g_array_index(s->found, struct found, i);
        struct del_ctx *d;

        out->max_gen = MAX(out->max_gen, f->gen);
        if (strcmp(f->kind, "ctl") != 0 && strcmp(f->kind, "win") != 0)
            continue;
        d = g_new0(struct del_ctx, 1);
        d->s = s;
        d->index = i;
        s->pending++;
        qmp_client_device_del(qmp, f->id, timeout_ms, on_deleted, d);
    }
    /* Each waiter is bounded by timeout_ms (and every command by the client's own
     * bound): this wait only adds slack for the queue in front of them. */
    if (s->pending && !qmp_client_iterate_until(qmp, &s->all_answered, timeout_ms + 60000)) {
        g_warning("qemu host: device_del of the leftovers got no outcome");
        return vp_fail(err, -ETIMEDOUT, "device_del of the leftovers got no outcome");
    }

    /* Then the back ends and fds of what went (and orphans); a zombie keeps its own. */
    for (guint i = 0; i < s->found->len; i++) {
        struct found *f = &g_array_index(s->found, struct found, i);
        if (strcmp(f->kind, "chr") && strcmp(f->kind, "mem") && strcmp(f->kind, "fd"))
            continue;
        if (!zombie_of(s, f))
            remove_backend(s, f);
    }
    for (guint i = 0; i < s->found->len; i++) {
        struct found *z = &g_array_index(s->found, struct found, i);
        struct qh_leftover l = { .control = z->id[5] == 'c', .devfn = z->devfn,
                                 .fdset_id = -1, .qemu_fd = -1 };
        if (strcmp(z->kind, "zom") != 0)
            continue;
        g_strlcpy(l.dev_id, z->id, sizeof(l.dev_id));
        g_snprintf(l.backend_id, sizeof(l.backend_id), "vpci-%s%u-%02x",
                   l.control ? "chr" : "mem", z->gen, z->devfn);
        for (guint j = 0; j < s->found->len; j++) {
            struct found *b = &g_array_index(s->found, struct found, j);
            if (!same_function(b, z))
                continue;
            if (!strcmp(b->kind, "chr") || !strcmp(b->kind, "mem"))
                l.backend = true;
            else if (!strcmp(b->kind, "fd")) {
                l.fdset_id = b->fdset_id;
                l.qemu_fd = b->fd;
            }
        }
        g_array_append_val(out->zombies, l);
    }
    out->removed = s->removed;
    out->backends_removed = s->backends_removed;
    g_message("qemu host: leftovers of an earlier server: %u functions removed, %u back ends "
              "and fds removed, %u functions stay", out->removed, out->backends_removed,
              out->zombies->len);
out:
    g_array_unref(s->found);
    g_free(s);
    return ret;
}
