/*
 * test-guestd-status.c - the status socket of vhost-pci-guestd (guest-driver/status.c)
 * against clients that do not play along.
 *
 * The control plane holds one hand-made device with 64 frontends of 64 queues each,
 * so the status document is larger than what a UNIX socket buffers: a client that
 * sends "status\n" and never reads leaves the answer half-written. Such clients must
 * give their slot back after the per-client deadline (set short here), a client
 * beyond GD_STATUS_MAX_CLIENTS is closed at once, the socket keeps answering, and no
 * fd is left behind.
 */
#include <errno.h>
#include <poll.h>
#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "controlplane.h"
#include "device.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "status.h"
#include "testutil.h"

#define DEADLINE_NS (1500 * 1000 * 1000ULL)   /* per-client deadline in this test */
#define WAIT_NS (5 * 1000 * 1000 * 1000ULL)   /* bound of every wait below */

/* A device with GD_MAX_FRONTENDS frontends of VP_MAX_VIRTQS queues, owned by the test
 * (put into cp->dev[0] only while the status socket renders it). */
static struct gd_device *big_device(void)
{
    struct gd_device *d = calloc(1, sizeof(*d));
    g_assert_nonnull(d);
    d->status = 15;
    d->bar_size = 4ULL << 20;
    for (unsigned i = 0; i < GD_MAX_FRONTENDS; i++) {
        struct gd_frontend *fe = calloc(1, sizeof(*fe));
        g_assert_nonnull(fe);
        fe->device_type = VP_DEV_NET;
        fe->device_id = 1000 + i;
        fe->nqueues = VP_MAX_VIRTQS;
        for (unsigned q = 0; q < VP_MAX_VIRTQS; q++) {
            fe->queues[q].index = q;
            fe->queues[q].num = 256;
            fe->queues[q].packets = 123456789ULL * q;
            fe->queues[q].bytes = 987654321ULL * q;
        }
        d->fe[d->nfe++] = fe;
    }
    return d;
}

static void free_big_device(struct gd_device *d)
{
    for (unsigned i = 0; i < d->nfe; i++)
        free(d->fe[i]);
    free(d);
}

static int connect_to(const char *path)
{
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(c, >=, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    g_assert_cmpint(connect(c, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    return c;
}

static void send_request(int c)
{
    g_assert_cmpint(write(c, "status\n", 7), ==, 7);
}

/* Bytes queued for reading on @c. */
static int queued(int c)
{
    int n = 0;
    g_assert_cmpint(ioctl(c, FIONREAD, &n), ==, 0);
    return n;
}

/* The server closed its end of @c (POLLHUP shows even with unread data queued). */
static gboolean hung_up(int c)
{
    struct pollfd p = { .fd = c, .events = POLLIN };
    return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}

static void iterate(struct gd_loop *loop)
{
    gd_loop_iterate(loop, 5 * 1000 * 1000);
}

/* Read @c to EOF while the loop runs (bounded). A close with our request unread
 * reaches us as ECONNRESET: also the end. */
static GString *read_answer(struct gd_loop *loop, int c)
{
    GString *out = g_string_new("");
    uint64_t end = gd_now_ns() + WAIT_NS;
    for (;;) {
        g_assert_cmpuint(gd_now_ns(), <, end);
        iterate(loop);
        char buf[65536];
        ssize_t n;
        while ((n = recv(c, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
            g_string_append_len(out, buf, n);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return out;
        g_assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

static void test_stuck_readers(void)
{
    gd_log_set_level(g_test_verbose() ? GD_LOG_DEBUG : GD_LOG_ERROR);
    int fds_before = vp_count_open_fds();
    struct gd_loop *loop = gd_loop_new();
    struct gd_cp_config cfg = { 0 };
    struct gd_cp *cp = gd_cp_new(loop, &cfg);
    struct gd_device *dev = big_device();
    cp->dev[0] = dev;

    struct gd_json doc;
    gd_json_init(&doc);
    gd_status_render(cp, &doc);
    g_assert_false(doc.oom);
    size_t doc_len = doc.len;
    gd_json_free(&doc);

    char *dir = g_dir_make_tmp("guestd-status-XXXXXX", NULL);
    char *path = g_build_filename(dir, "status.sock", NULL);
    vp_error err = { { 0 } };
    struct gd_status *st = gd_status_new(loop, cp, path, &err);
    g_assert_nonnull(st);
    gd_status_set_timeout_ns(st, DEADLINE_NS);

    /* Fill every slot with a client that asks and never reads. */
    int stuck[GD_STATUS_MAX_CLIENTS];
    uint64_t t0 = gd_now_ns();
    for (unsigned i = 0; i < GD_STATUS_MAX_CLIENTS; i++) {
        stuck[i] = connect_to(path);
        send_request(stuck[i]);
    }
    /* Each gets the part of its answer the socket takes: not all of it (else this
     * test would not test anything), and none is closed yet. */
    for (unsigned i = 0; i < GD_STATUS_MAX_CLIENTS; i++) {
        while (queued(stuck[i]) == 0) {
            g_assert_cmpuint(gd_now_ns() - t0, <, DEADLINE_NS);
            iterate(loop);
        }
    }
    for (unsigned i = 0; i < 3; i++)
        iterate(loop);
    for (unsigned i = 0; i < GD_STATUS_MAX_CLIENTS; i++) {
        g_assert_cmpint(queued(stuck[i]), <, (int)doc_len);
        g_assert_false(hung_up(stuck[i]));
    }

    /* One more: no slot left, closed at once without an answer. */
    int extra = connect_to(path);
    send_request(extra);
    GString *out = read_answer(loop, extra);
    g_assert_cmpuint(out->len, ==, 0);
    g_string_free(out, TRUE);
    close(extra);
    g_assert_cmpuint(gd_now_ns() - t0, <, DEADLINE_NS); /* the others are still held */

    /* After the deadline every stuck client is closed with a truncated answer. */
    for (unsigned i = 0; i < GD_STATUS_MAX_CLIENTS; i++) {
        while (!hung_up(stuck[i])) {
            g_assert_cmpuint(gd_now_ns() - t0, <, DEADLINE_NS + WAIT_NS);
            iterate(loop);
        }
        g_assert_cmpint(queued(stuck[i]), <, (int)doc_len);
        close(stuck[i]);
    }
    g_assert_cmpuint(gd_now_ns() - t0, >=, DEADLINE_NS);

    /* The slots are free again: a reading client gets the whole document. */
    int good = connect_to(path);
    send_request(good);
    out = read_answer(loop, good);
    close(good);
    g_assert_cmpuint(out->len, ==, doc_len);
    JsonParser *p = json_parser_new();
    GError *e = NULL;
    g_assert_true(json_parser_load_from_data(p, out->str, (gssize)out->len, &e));
    g_assert_no_error(e);
    JsonObject *root = json_node_get_object(json_parser_get_root(p));
    JsonArray *devs = json_object_get_array_member(root, "devices");
    g_assert_cmpuint(json_array_get_length(devs), ==, 1);
    JsonObject *d0 = json_array_get_object_element(devs, 0);
    g_assert_cmpuint(json_array_get_length(json_object_get_array_member(d0, "frontends")), ==,
                     GD_MAX_FRONTENDS);
    g_object_unref(p);
    g_string_free(out, TRUE);

    gd_status_free(st);
    cp->dev[0] = NULL;
    free_big_device(dev);
    gd_cp_free(cp);
    gd_loop_free(loop);
    rmdir(dir);
    g_free(path);
    g_free(dir);
    vp_assert_fds(fds_before);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/guestd-status/stuck-readers", test_stuck_readers);
    return g_test_run();
}
