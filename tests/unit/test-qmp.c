/*
 * test-qmp.c - the asynchronous QMP client (server/qmp.c) against a scripted fake
 * QEMU monitor living on the other end of a socketpair (or a listening UNIX socket),
 * served from the same GMainContext. The fake records every line and every fd the
 * client sends, and answers what each test tells it to.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../server/qmp.h"
#include "../testutil.h"

#define GREETING "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, " \
                 "\"package\": \"\"}, \"capabilities\": [\"oob\"]}}"
#define WAIT_MS 3000

/* ---- the fake monitor ------------------------------------------------------- */

typedef struct fake {
    int fd;
    GSource *src;
    GString *in;
    GQueue lines;       /* char *, complete lines received */
    GQueue fds;         /* GINT_TO_POINTER(fd + 1) received with SCM_RIGHTS */
    gboolean eof;
} fake;

static gboolean fake_on_readable(gint fd, GIOCondition cond, gpointer data)
{
    fake *f = data;
    char buf[4096];
    union {
        char b[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = { buf, sizeof(buf) };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                         .msg_controllen = sizeof(u.b) };
    struct cmsghdr *cm;
    ssize_t n;
    char *nl;

    (void)cond;
    n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    if (n <= 0) {
        f->eof = TRUE;
        f->src = NULL;
        return G_SOURCE_REMOVE;
    }
    for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t k, nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (k = 0; k < nfd; k++) {
                int rfd;
                memcpy(&rfd, CMSG_DATA(cm) + k * sizeof(int), sizeof(int));
                g_queue_push_tail(&f->fds, GINT_TO_POINTER(rfd + 1));
            }
        }
    }
    g_string_append_len(f->in, buf, n);
    while ((nl = memchr(f->in->str, '\n', f->in->len))) {
        gsize len = (gsize)(nl - f->in->str);
        g_queue_push_tail(&f->lines, g_strndup(f->in->str, len));
        g_string_erase(f->in, 0, (gssize)len + 1);
    }
    return G_SOURCE_CONTINUE;
}

static void fake_init(fake *f, int fd)
{
    memset(f, 0, sizeof(*f));
    f->fd = fd;
    f->in = g_string_new(NULL);
    g_queue_init(&f->lines);
    g_queue_init(&f->fds);
    f->src = g_unix_fd_source_new(fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(f->src, G_SOURCE_FUNC(fake_on_readable), f, NULL);
    g_source_attach(f->src, NULL);
    g_source_unref(f->src);
}

static void fake_close(fake *f)
{
    if (f->src)
        g_source_destroy(f->src);
    f->src = NULL;
    vp_close_fd(&f->fd);
}

static void fake_fini(fake *f)
{
    fake_close(f);
    g_string_free(f->in, TRUE);
    g_queue_clear_full(&f->lines, g_free);
    while (!g_queue_is_empty(&f->fds)) {
        int fd = GPOINTER_TO_INT(g_queue_pop_head(&f->fds)) - 1;
        vp_close_fd(&fd);
    }
}

static void fake_send(fake *f, const char *json)
{
    g_autofree char *line = g_strconcat(json, "\r\n", NULL);
    g_assert_cmpint(write(f->fd, line, strlen(line)), ==, (gssize)strlen(line));
}

/* Iterate the default context until *cond or @ms passed; returns *cond. */
static gboolean spin_until(const gboolean *cond, guint ms)
{
    VP_SPIN_UNTIL(*cond, ms);
    return *cond;
}

/* Spin until the fake has a line (bounded); parse it; return the command object. */
static JsonObject *fake_expect(fake *f, const char *execute, gint64 *id)
{
    g_autofree char *line = NULL;
    g_autoptr(JsonParser) p = json_parser_new();
    JsonObject *o;

    VP_SPIN_UNTIL(!g_queue_is_empty(&f->lines), WAIT_MS);
    line = g_queue_pop_head(&f->lines);
    g_assert_nonnull(line);
    g_assert_true(json_parser_load_from_data(p, line, -1, NULL));
    o = json_object_ref(json_node_get_object(json_parser_get_root(p)));
    g_assert_cmpstr(json_object_get_string_member(o, "execute"), ==, execute);
    *id = json_object_get_int_member(o, "id");
    g_assert_cmpint(*id, >, 0);
    return o;
}

static void fake_return(fake *f, gint64 id, const char *ret_json)
{
    g_autofree char *s = g_strdup_printf("{\"return\": %s, \"id\": %" G_GINT64_FORMAT "}",
                                         ret_json, id);
    fake_send(f, s);
}

/* ---- recorded outcomes ------------------------------------------------------ */

typedef struct outcome {
    gboolean done;
    int calls;
    int ret;
    vp_error err;
    char *err_class;
    char *value;        /* serialized value */
    int64_t fd, fdset_id;
} outcome;

static void record(qmp_client *c, const qmp_reply *r, void *opaque)
{
    outcome *o = opaque;
    (void)c;
    o->calls++;
    o->done = TRUE;
    o->ret = r->ret;
    o->err = r->err;
    o->err_class = g_strdup(r->err_class);
    o->value = r->value ? json_to_string(r->value, FALSE) : NULL;
    o->fd = r->fd;
    o->fdset_id = r->fdset_id;
}

static void outcome_clear(outcome *o)
{
    g_free(o->err_class);
    g_free(o->value);
    memset(o, 0, sizeof(*o));
}

typedef struct states {
    int ready, closed, last_ret;
    vp_error err;
} states;

static void on_state(qmp_client *c, int ret, const vp_error *err, void *opaque)
{
    states *s = opaque;
    (void)c;
    if (ret == 0) {
        s->ready++;
    } else {
        s->closed++;
        s->err = *err;
    }
    s->last_ret = ret;
}

typedef struct events {
    int n;
    char *name, *device;
} events;

static void on_event(qmp_client *c, const char *name, JsonObject *data, void *opaque)
{
    events *e = opaque;
    (void)c;
    e->n++;
    g_free(e->name);
    g_free(e->device);
    e->name = g_strdup(name);
    e->device = data && json_object_has_member(data, "device")
                    ? g_strdup(json_object_get_string_member(data, "device")) : NULL;
}

/* A client attached to a socketpair, greeted and with capabilities negotiated. */
typedef struct rig {
    qmp_client *c;
    fake f;
    states st;
    events ev;
} rig;

static void rig_up(rig *r)
{
    int sv[2];
    vp_error err = { { 0 } };
    gint64 id;
    JsonObject *o;

    memset(r, 0, sizeof(*r));
    vp_test_socketpair(sv);
    r->c = qmp_client_new(NULL);
    qmp_client_set_state_handler(r->c, on_state, &r->st);
    qmp_client_set_event_handler(r->c, on_event, &r->ev);
    g_assert_cmpint(qmp_client_attach_fd(r->c, sv[0], WAIT_MS, &err), ==, 0);
    fake_init(&r->f, sv[1]);
    g_assert_false(qmp_client_is_ready(r->c));
    fake_send(&r->f, GREETING);
    o = fake_expect(&r->f, "qmp_capabilities", &id);
    g_assert_false(json_object_has_member(o, "arguments"));
    json_object_unref(o);
    g_assert_false(qmp_client_is_ready(r->c));
    fake_return(&r->f, id, "{}");
    VP_SPIN_UNTIL(r->st.ready || r->st.closed, WAIT_MS);
    g_assert_cmpint(r->st.ready, ==, 1);
    g_assert_true(qmp_client_is_ready(r->c));
}

static void rig_down(rig *r)
{
    qmp_client_free(r->c);
    fake_fini(&r->f);
    g_free(r->ev.name);
    g_free(r->ev.device);
}

/* ---- tests ------------------------------------------------------------------ */

static int fds_before;

static void test_greeting_and_caps(void)
{
    rig r;

    fds_before = vp_count_open_fds();
    rig_up(&r);
    g_assert_cmpint(r.st.closed, ==, 0);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_commands_queued_before_ready(void)
{
    int sv[2];
    vp_error err;
    fake f;
    outcome o = { 0 };
    gint64 id;
    JsonObject *cmd;
    qmp_client *c;

    fds_before = vp_count_open_fds();
    vp_test_socketpair(sv);
    c = qmp_client_new(NULL);
    g_assert_cmpint(qmp_client_attach_fd(c, sv[0], WAIT_MS, &err), ==, 0);
    fake_init(&f, sv[1]);
    /* Queued before the greeting: must go out only after qmp_capabilities. */
    qmp_client_execute(c, "query-status", NULL, record, &o);
    fake_send(&f, GREETING);
    json_object_unref(fake_expect(&f, "qmp_capabilities", &id));
    fake_return(&f, id, "{}");
    cmd = fake_expect(&f, "query-status", &id);
    json_object_unref(cmd);
    fake_return(&f, id, "{\"status\": \"running\", \"running\": true}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, 0);
    g_assert_nonnull(strstr(o.value, "\"running\""));
    outcome_clear(&o);
    qmp_client_free(c);
    fake_fini(&f);
    vp_assert_fds(fds_before);
}

static void test_command_ok(void)
{
    rig r;
    outcome o = { 0 };
    gint64 id;
    JsonObject *cmd, *args = json_object_new();

    fds_before = vp_count_open_fds();
    rig_up(&r);
    json_object_set_string_member(args, "driver", "ivshmem-plain");
    json_object_set_string_member(args, "id", "win0");
    g_assert_cmpuint(qmp_client_execute(r.c, "device_add", args, record, &o), >, 0);
    g_assert_false(o.done);     /* never called before execute returned */
    cmd = fake_expect(&r.f, "device_add", &id);
    args = json_object_get_object_member(cmd, "arguments");
    g_assert_cmpstr(json_object_get_string_member(args, "driver"), ==, "ivshmem-plain");
    g_assert_cmpstr(json_object_get_string_member(args, "id"), ==, "win0");
    json_object_unref(cmd);
    fake_return(&r.f, id, "{}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.calls, ==, 1);
    g_assert_cmpint(o.ret, ==, 0);
    g_assert_cmpstr(o.value, ==, "{}");
    g_assert_cmpint(o.fd, ==, -1);
    outcome_clear(&o);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_command_error(void)
{
    rig r;
    outcome o = { 0 };
    gint64 id;
    g_autofree char *ans = NULL;

    fds_before = vp_count_open_fds();
    rig_up(&r);
    qmp_client_execute(r.c, "device_add", NULL, record, &o);
    json_object_unref(fake_expect(&r.f, "device_add", &id));
    ans = g_strdup_printf("{\"id\": %" G_GINT64_FORMAT ", \"error\": {\"class\": \"GenericError\", "
                          "\"desc\": \"Duplicate device ID 'win0'\"}}", id);
    fake_send(&r.f, ans);
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, -EIO);
    g_assert_cmpstr(o.err.msg, ==, "Duplicate device ID 'win0'");
    g_assert_cmpstr(o.err_class, ==, "GenericError");
    g_assert_null(o.value);
    outcome_clear(&o);

    /* An error QEMU could not attach an id to (unparseable command) still answers the
     * command in flight; a mistyped desc does not crash the client. */
    qmp_client_execute(r.c, "x", NULL, record, &o);
    json_object_unref(fake_expect(&r.f, "x", &id));
    fake_send(&r.f, "{\"error\": {\"class\": \"GenericError\", \"desc\": 7}}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, -EIO);
    g_assert_nonnull(strstr(o.err.msg, "without text"));
    outcome_clear(&o);
    g_assert_true(qmp_client_is_ready(r.c));
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_one_in_flight_and_stale_ids(void)
{
    rig r;
    outcome o1 = { 0 }, o2 = { 0 };
    gint64 id1, id2;
    gboolean never = FALSE;

    fds_before = vp_count_open_fds();
    rig_up(&r);
    qmp_client_execute(r.c, "first", NULL, record, &o1);
    qmp_client_execute(r.c, "second", NULL, record, &o2);
    json_object_unref(fake_expect(&r.f, "first", &id1));
    spin_until(&never, 100);
    g_assert_cmpint(g_queue_get_length(&r.f.lines), ==, 0);    /* second held back */
    /* An answer for an id that is not in flight is dropped. */
    fake_return(&r.f, id1 + 100, "{}");
    spin_until(&never, 50);
    g_assert_false(o1.done);
    fake_return(&r.f, id1, "1");
    g_assert_true(spin_until(&o1.done, WAIT_MS));
    json_object_unref(fake_expect(&r.f, "second", &id2));
    g_assert_cmpint(id2, >, id1);
    fake_return(&r.f, id2, "2");
    g_assert_true(spin_until(&o2.done, WAIT_MS));
    g_assert_cmpstr(o1.value, ==, "1");
    g_assert_cmpstr(o2.value, ==, "2");
    outcome_clear(&o1);
    outcome_clear(&o2);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_event(void)
{
    rig r;
    outcome w_any = { 0 }, w_other = { 0 }, w_mine = { 0 };

    fds_before = vp_count_open_fds();
    rig_up(&r);
    qmp_client_wait_event(r.c, "DEVICE_DELETED", NULL, WAIT_MS, record, &w_any);
    qmp_client_wait_event(r.c, "DEVICE_DELETED", "other", 200, record, &w_other);
    qmp_client_wait_event(r.c, "DEVICE_DELETED", "win0", WAIT_MS, record, &w_mine);
    fake_send(&r.f, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"DEVICE_DELETED\", "
                    "\"data\": {\"device\": \"win0\", \"path\": \"/machine/peripheral/win0\"}}");
    g_assert_true(spin_until(&w_mine.done, WAIT_MS));
    g_assert_true(w_any.done);
    g_assert_cmpint(w_mine.ret, ==, 0);
    g_assert_nonnull(strstr(w_mine.value, "/machine/peripheral/win0"));
    g_assert_cmpint(r.ev.n, ==, 1);
    g_assert_cmpstr(r.ev.name, ==, "DEVICE_DELETED");
    g_assert_cmpstr(r.ev.device, ==, "win0");
    /* The waiter for another device runs into its bound. */
    g_assert_true(spin_until(&w_other.done, WAIT_MS));
    g_assert_cmpint(w_other.ret, ==, -ETIMEDOUT);
    g_assert_nonnull(strstr(w_other.err.msg, "no DEVICE_DELETED event for other within 200 ms"));
    g_assert_cmpint(w_mine.calls, ==, 1);
    /* An event with no data still reaches the handler. */
    fake_send(&r.f, "{\"event\": \"RESUME\"}");
    {
        gboolean never = FALSE;
        spin_until(&never, 50);
    }
    g_assert_cmpint(r.ev.n, ==, 2);
    g_assert_cmpstr(r.ev.name, ==, "RESUME");
    g_assert_null(r.ev.device);
    outcome_clear(&w_any);
    outcome_clear(&w_other);
    outcome_clear(&w_mine);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_device_del(void)
{
    rig r;
    outcome o = { 0 };
    gint64 id;
    JsonObject *cmd;
    g_autofree char *ans = NULL;

    fds_before = vp_count_open_fds();
    rig_up(&r);
    /* Success: device_del answered, then the guest ejects -> DEVICE_DELETED. */
    qmp_client_device_del(r.c, "ctl0", WAIT_MS, record, &o);
    cmd = fake_expect(&r.f, "device_del", &id);
    g_assert_cmpstr(json_object_get_string_member(json_object_get_object_member(cmd, "arguments"),
                                                  "id"), ==, "ctl0");
    json_object_unref(cmd);
    fake_return(&r.f, id, "{}");
    {
        gboolean never = FALSE;
        spin_until(&never, 30);
    }
    g_assert_false(o.done);
    fake_send(&r.f, "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"ctl0\", \"path\": \"/x\"}}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, 0);
    outcome_clear(&o);

    /* The event before the answer (synchronous unplug) is not missed. */
    qmp_client_device_del(r.c, "ctl1", WAIT_MS, record, &o);
    json_object_unref(fake_expect(&r.f, "device_del", &id));
    fake_send(&r.f, "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"ctl1\", \"path\": \"/x\"}}");
    fake_return(&r.f, id, "{}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, 0);
    g_assert_cmpint(o.calls, ==, 1);
    outcome_clear(&o);

    /* device_del refused: QEMU's reason, no waiter left behind. */
    qmp_client_device_del(r.c, "nope", WAIT_MS, record, &o);
    json_object_unref(fake_expect(&r.f, "device_del", &id));
    ans = g_strdup_printf("{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'nope' not found\"}, "
                          "\"id\": %" G_GINT64_FORMAT "}", id);
    fake_send(&r.f, ans);
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, -EIO);
    g_assert_cmpstr(o.err.msg, ==, "Device 'nope' not found");
    g_assert_cmpstr(o.err_class, ==, "DeviceNotFound");
    outcome_clear(&o);

    /* No eject within the bound. */
    qmp_client_device_del(r.c, "stuck", 200, record, &o);
    json_object_unref(fake_expect(&r.f, "device_del", &id));
    fake_return(&r.f, id, "{}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, -ETIMEDOUT);
    g_assert_nonnull(strstr(o.err.msg, "no DEVICE_DELETED event for stuck within 200 ms"));
    /* A late event does not call back again. */
    fake_send(&r.f, "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"stuck\"}}");
    {
        gboolean never = FALSE;
        spin_until(&never, 30);
    }
    g_assert_cmpint(o.calls, ==, 1);
    outcome_clear(&o);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_add_fd(void)
{
    rig r;
    outcome o = { 0 };
    gint64 id;
    JsonObject *cmd, *args;
    int memfd, got;
    struct stat a, b;

    fds_before = vp_count_open_fds();
    rig_up(&r);
    memfd = vp_test_memfd("qmp-add-fd", 4096, TRUE);
    qmp_client_add_fd(r.c, memfd, -1, "window 0", record, &o);
    cmd = fake_expect(&r.f, "add-fd", &id);
    args = json_object_get_object_member(cmd, "arguments");
    g_assert_cmpstr(json_object_get_string_member(args, "opaque"), ==, "window 0");
    g_assert_false(json_object_has_member(args, "fdset-id"));
    json_object_unref(cmd);
    /* The fd arrived with the command's bytes and is the same file. */
    g_assert_cmpint(g_queue_get_length(&r.f.fds), ==, 1);
    got = GPOINTER_TO_INT(g_queue_pop_head(&r.f.fds)) - 1;
    g_assert_cmpint(fstat(memfd, &a), ==, 0);
    g_assert_cmpint(fstat(got, &b), ==, 0);
    g_assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
    g_assert_cmpint(got, !=, memfd);
    vp_close_fd(&got);
    fake_return(&r.f, id, "{\"fdset-id\": 3, \"fd\": 42}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, 0);
    g_assert_cmpint(o.fd, ==, 42);
    g_assert_cmpint(o.fdset_id, ==, 3);
    outcome_clear(&o);

    /* getfd: the fd rides along too; QEMU answers with no number. */
    qmp_client_getfd(r.c, memfd, "ctl0-shm", record, &o);
    cmd = fake_expect(&r.f, "getfd", &id);
    g_assert_cmpstr(json_object_get_string_member(json_object_get_object_member(cmd, "arguments"),
                                                  "fdname"), ==, "ctl0-shm");
    json_object_unref(cmd);
    g_assert_cmpint(g_queue_get_length(&r.f.fds), ==, 1);
    got = GPOINTER_TO_INT(g_queue_pop_head(&r.f.fds)) - 1;
    vp_close_fd(&got);
    fake_return(&r.f, id, "{}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, 0);
    g_assert_cmpint(o.fd, ==, -1);
    outcome_clear(&o);

    /* A malformed add-fd answer is this command's failure, not a crash. */
    qmp_client_add_fd(r.c, memfd, 3, NULL, record, &o);
    cmd = fake_expect(&r.f, "add-fd", &id);
    g_assert_cmpint(json_object_get_int_member(json_object_get_object_member(cmd, "arguments"),
                                               "fdset-id"), ==, 3);
    json_object_unref(cmd);
    got = GPOINTER_TO_INT(g_queue_pop_head(&r.f.fds)) - 1;
    vp_close_fd(&got);
    fake_return(&r.f, id, "{\"fd\": \"x\"}");
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, -EPROTO);
    g_assert_nonnull(strstr(o.err.msg, "add-fd answer without fd"));
    outcome_clear(&o);

    /* A bad fd is refused before anything is sent. */
    qmp_client_add_fd(r.c, 1000000, -1, NULL, record, &o);
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, -EBADF);
    g_assert_nonnull(strstr(o.err.msg, "cannot duplicate the fd"));
    g_assert_cmpint(g_queue_get_length(&r.f.lines), ==, 0);
    outcome_clear(&o);

    vp_close_fd(&memfd);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_eof(void)
{
    rig r;
    outcome o = { 0 }, later = { 0 }, w = { 0 };
    gint64 id;

    fds_before = vp_count_open_fds();
    rig_up(&r);
    qmp_client_wait_event(r.c, "DEVICE_DELETED", "x", WAIT_MS, record, &w);
    qmp_client_execute(r.c, "device_add", NULL, record, &o);
    json_object_unref(fake_expect(&r.f, "device_add", &id));
    fake_close(&r.f);       /* QEMU went away with a command in flight */
    g_assert_true(spin_until(&o.done, WAIT_MS));
    g_assert_cmpint(o.ret, ==, -ECONNRESET);
    g_assert_nonnull(strstr(o.err.msg, "EOF"));
    g_assert_true(w.done);
    g_assert_cmpint(w.ret, ==, -ECONNRESET);
    g_assert_cmpint(r.st.closed, ==, 1);
    g_assert_cmpint(r.st.last_ret, ==, -ECONNRESET);
    g_assert_nonnull(strstr(r.st.err.msg, "EOF"));
    g_assert_true(qmp_client_is_closed(r.c));
    /* Later commands fail, asynchronously. */
    qmp_client_execute(r.c, "query-status", NULL, record, &later);
    g_assert_false(later.done);
    g_assert_true(spin_until(&later.done, WAIT_MS));
    g_assert_cmpint(later.ret, ==, -ECONNRESET);
    g_assert_nonnull(strstr(later.err.msg, "closed"));
    outcome_clear(&o);
    outcome_clear(&later);
    outcome_clear(&w);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void test_not_qmp(void)
{
    int sv[2];
    vp_error err;
    fake f;
    states st = { 0 };
    qmp_client *c;

    fds_before = vp_count_open_fds();
    vp_test_socketpair(sv);
    c = qmp_client_new(NULL);
    qmp_client_set_state_handler(c, on_state, &st);
    g_assert_cmpint(qmp_client_attach_fd(c, sv[0], WAIT_MS, &err), ==, 0);
    fake_init(&f, sv[1]);
    fake_send(&f, "{\"return\": {}}");     /* not a greeting */
    VP_SPIN_UNTIL(st.closed, WAIT_MS);
    g_assert_cmpint(st.closed, ==, 1);
    g_assert_cmpint(st.last_ret, ==, -EPROTO);
    g_assert_nonnull(strstr(st.err.msg, "greeting"));
    qmp_client_free(c);
    fake_fini(&f);

    /* Garbage after the greeting. */
    memset(&st, 0, sizeof(st));
    vp_test_socketpair(sv);
    c = qmp_client_new(NULL);
    qmp_client_set_state_handler(c, on_state, &st);
    g_assert_cmpint(qmp_client_attach_fd(c, sv[0], WAIT_MS, &err), ==, 0);
    fake_init(&f, sv[1]);
    fake_send(&f, GREETING);
    fake_send(&f, "{\"event\": ");
    fake_send(&f, "[1, 2]");
    VP_SPIN_UNTIL(st.closed, WAIT_MS);
    g_assert_cmpint(st.last_ret, ==, -EPROTO);
    g_assert_nonnull(strstr(st.err.msg, "not JSON"));
    qmp_client_free(c);
    fake_fini(&f);

    /* JSON nested deeper than QEMU's own limit: refused before json-glib's recursive
     * parser runs out of stack (100000 levels crashed the server). Found with the
     * fuzz-qmp target (tests/fuzz). */
    memset(&st, 0, sizeof(st));
    vp_test_socketpair(sv);
    c = qmp_client_new(NULL);
    qmp_client_set_state_handler(c, on_state, &st);
    g_assert_cmpint(qmp_client_attach_fd(c, sv[0], WAIT_MS, &err), ==, 0);
    fake_init(&f, sv[1]);
    {
        g_autofree char *deep = g_malloc(100001);
        memset(deep, '[', 100000);
        memcpy(deep, "{\"a\": ", 6);   /* an object, so only the depth is wrong */
        deep[100000] = 0;
        fake_send(&f, deep);
    }
    VP_SPIN_UNTIL(st.closed, WAIT_MS);
    g_assert_cmpint(st.last_ret, ==, -EPROTO);
    g_assert_nonnull(strstr(st.err.msg, "nested deeper than 1024 levels"));
    qmp_client_free(c);
    fake_fini(&f);

    /* No greeting at all: bounded. */
    memset(&st, 0, sizeof(st));
    vp_test_socketpair(sv);
    c = qmp_client_new(NULL);
    qmp_client_set_state_handler(c, on_state, &st);
    g_assert_cmpint(qmp_client_attach_fd(c, sv[0], 150, &err), ==, 0);
    fake_init(&f, sv[1]);
    VP_SPIN_UNTIL(st.closed, WAIT_MS);
    g_assert_cmpint(st.last_ret, ==, -ETIMEDOUT);
    g_assert_nonnull(strstr(st.err.msg, "greeting"));
    qmp_client_free(c);
    fake_fini(&f);
    vp_assert_fds(fds_before);
}

/* A line after the greeting that the client must refuse: the connection closes with
 * -EPROTO and a reason naming @why, and no fd stays open. */
static void refused_after_greeting(const char *line, const char *why)
{
    int sv[2];
    vp_error err;
    fake f;
    states st = { 0 };
    int fds = vp_count_open_fds();

    vp_test_socketpair(sv);
    qmp_client *c = qmp_client_new(NULL);
    qmp_client_set_state_handler(c, on_state, &st);
    g_assert_cmpint(qmp_client_attach_fd(c, sv[0], WAIT_MS, &err), ==, 0);
    fake_init(&f, sv[1]);
    fake_send(&f, GREETING);
    fake_send(&f, line);
    VP_SPIN_UNTIL(st.closed, WAIT_MS);
    g_assert_cmpint(st.closed, ==, 1);
    g_assert_cmpint(st.last_ret, ==, -EPROTO);
    g_assert_nonnull(strstr(st.err.msg, why));
    qmp_client_free(c);
    fake_fini(&f);
    vp_assert_fds(fds);
}

/* Several JSON values on one line: json-glib 1.6 keeps the last as the root and leaks
 * the others (found by fuzz-qmp with G_SLICE=always-malloc; a QEMU repeating such
 * lines grew the server's memory without bound while the connection stayed up).
 * The line is refused before json-glib sees it; so is a top-level value that is not
 * an object. */
static void test_one_value_per_line(void)
{
    refused_after_greeting("{\"return\": {}}{\"event\": \"RESET\"}",
                           "more than one JSON value on a line");
    refused_after_greeting("{} {\"event\": \"x\", \"data\": {\"s\": \"}{\"}}",
                           "more than one JSON value on a line");
    refused_after_greeting("1 {\"event\": \"RESET\"}", "JSON that is not an object");
    refused_after_greeting("[{\"event\": \"RESET\"}]", "JSON that is not an object");
}

static void test_command_timeout(void)
{
    rig r;
    outcome o1 = { 0 }, o2 = { 0 }, o3 = { 0 };
    gint64 id1, id2;

    fds_before = vp_count_open_fds();
    rig_up(&r);
    qmp_client_execute_full(r.c, "slow", NULL, -1, 150, record, &o1);
    qmp_client_execute_full(r.c, "queued", NULL, -1, 100, record, &o2);
    qmp_client_execute(r.c, "next", NULL, record, &o3);
    json_object_unref(fake_expect(&r.f, "slow", &id1));
    g_assert_true(spin_until(&o2.done, WAIT_MS));     /* timed out while queued */
    g_assert_cmpint(o2.ret, ==, -ETIMEDOUT);
    g_assert_true(spin_until(&o1.done, WAIT_MS));
    g_assert_cmpint(o1.ret, ==, -ETIMEDOUT);
    g_assert_nonnull(strstr(o1.err.msg, "QMP command slow: no answer"));
    /* QEMU finally answers: dropped; the queued-and-expired one was never sent. */
    fake_return(&r.f, id1, "{}");
    json_object_unref(fake_expect(&r.f, "next", &id2));
    fake_return(&r.f, id2, "3");
    g_assert_true(spin_until(&o3.done, WAIT_MS));
    g_assert_cmpint(o3.ret, ==, 0);
    g_assert_cmpint(o1.calls, ==, 1);
    outcome_clear(&o1);
    outcome_clear(&o2);
    outcome_clear(&o3);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

static void free_in_callback(qmp_client *c, const qmp_reply *r, void *opaque)
{
    record(c, r, opaque);
    qmp_client_free(c);
}

static void test_free(void)
{
    rig r;
    outcome o1 = { 0 }, o2 = { 0 }, w = { 0 };
    gint64 id;

    fds_before = vp_count_open_fds();
    /* Freed with work pending: every callback gets -ECANCELED, synchronously. */
    rig_up(&r);
    qmp_client_execute(r.c, "a", NULL, record, &o1);
    qmp_client_execute(r.c, "b", NULL, record, &o2);
    qmp_client_wait_event(r.c, "X", NULL, WAIT_MS, record, &w);
    json_object_unref(fake_expect(&r.f, "a", &id));
    qmp_client_free(r.c);
    r.c = NULL;
    g_assert_cmpint(o1.ret, ==, -ECANCELED);
    g_assert_cmpint(o2.ret, ==, -ECANCELED);
    g_assert_cmpint(w.ret, ==, -ECANCELED);
    g_assert_nonnull(strstr(o1.err.msg, "freed"));
    g_assert_cmpint(r.st.closed, ==, 0);      /* the owner freeing is not told "closed" */
    outcome_clear(&o1);
    outcome_clear(&o2);
    outcome_clear(&w);
    rig_down(&r);

    /* Freed from inside its own callback, with more data in the same read. */
    rig_up(&r);
    qmp_client_execute(r.c, "a", NULL, free_in_callback, &o1);
    json_object_unref(fake_expect(&r.f, "a", &id));
    {
        g_autofree char *two = g_strdup_printf("{\"return\": {}, \"id\": %" G_GINT64_FORMAT "}\n"
                                               "{\"event\": \"RESUME\"}", id);
        fake_send(&r.f, two);
    }
    g_assert_true(spin_until(&o1.done, WAIT_MS));
    g_assert_cmpint(o1.ret, ==, 0);
    g_assert_cmpint(r.ev.n, ==, 0);
    r.c = NULL;
    outcome_clear(&o1);
    rig_down(&r);
    vp_assert_fds(fds_before);
}

/* A real listening UNIX socket, served by the fake after accept(2). */
typedef struct listener {
    int lfd;
    fake f;
    gboolean accepted;
} listener;

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    listener *l = data;
    int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    (void)cond;
    g_assert_cmpint(cfd, >=, 0);
    fake_init(&l->f, cfd);
    fake_send(&l->f, GREETING);
    l->accepted = TRUE;
    return G_SOURCE_REMOVE;
}

static gboolean serve_caps(gpointer data)
{
    listener *l = data;
    gint64 id;
    if (!l->accepted || g_queue_is_empty(&l->f.lines))
        return G_SOURCE_CONTINUE;
    json_object_unref(fake_expect(&l->f, "qmp_capabilities", &id));
    fake_return(&l->f, id, "{}");
    return G_SOURCE_REMOVE;
}

static void test_connect_path(void)
{
    g_autofree char *dir = g_dir_make_tmp("vp-qmp-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "qmp.sock", NULL);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    listener l = { 0 };
    vp_error err = { { 0 } };
    JsonNode *ret = NULL;
    qmp_client *c;
    guint src;

    fds_before = vp_count_open_fds();
    /* Nothing listening yet. */
    c = qmp_client_new(NULL);
    g_assert_cmpint(qmp_client_connect(c, path, WAIT_MS, &err), ==, -ENOENT);
    g_assert_nonnull(strstr(err.msg, "connect to QMP socket"));
    qmp_client_free(c);

    l.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    g_assert_cmpint(bind(l.lfd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(listen(l.lfd, 1), ==, 0);
    g_unix_fd_add(l.lfd, G_IO_IN, on_accept, &l);
    src = g_timeout_add(5, serve_caps, &l);

    c = qmp_client_new(NULL);
    g_assert_cmpint(qmp_client_connect_sync(c, path, WAIT_MS, &err), ==, 0);
    g_assert_true(qmp_client_is_ready(c));
    (void)src;
    /* A blocking command: the fake answers from a timeout source of this context. */
    {
        gint64 id;
        qmp_client_execute(c, "query-name", NULL, NULL, NULL);
        json_object_unref(fake_expect(&l.f, "query-name", &id));
        fake_return(&l.f, id, "{}");
    }
    g_assert_cmpint(qmp_client_execute_sync(c, "query-version", NULL, -1, 200, &ret, NULL, &err),
                    ==, -ETIMEDOUT);
    g_assert_nonnull(strstr(err.msg, "query-version"));
    g_assert_null(ret);
    qmp_client_free(c);
    fake_fini(&l.f);
    vp_close_fd(&l.lfd);
    g_unlink(path);
    g_rmdir(dir);
    vp_assert_fds(fds_before);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    /* Create the default context's wakeup fd before any fd baseline is taken. */
    g_main_context_iteration(NULL, FALSE);
    g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL);
    g_test_add_func("/qmp/greeting-and-capabilities", test_greeting_and_caps);
    g_test_add_func("/qmp/commands-queued-before-ready", test_commands_queued_before_ready);
    g_test_add_func("/qmp/command-ok", test_command_ok);
    g_test_add_func("/qmp/command-error", test_command_error);
    g_test_add_func("/qmp/one-in-flight", test_one_in_flight_and_stale_ids);
    g_test_add_func("/qmp/event", test_event);
    g_test_add_func("/qmp/device-del", test_device_del);
    g_test_add_func("/qmp/add-fd", test_add_fd);
    g_test_add_func("/qmp/eof", test_eof);
    g_test_add_func("/qmp/not-qmp", test_not_qmp);
    g_test_add_func("/qmp/one-value-per-line", test_one_value_per_line);
    g_test_add_func("/qmp/command-timeout", test_command_timeout);
    g_test_add_func("/qmp/free", test_free);
    g_test_add_func("/qmp/connect-path", test_connect_path);
    return g_test_run();
}
