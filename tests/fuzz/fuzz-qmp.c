/*
 * fuzz-qmp.c - libFuzzer target: the server's QMP client (server/qmp.c) reading what
 * the device VM's QEMU sends: the greeting, answers matched to commands by id,
 * events matched to waiters, error objects, add-fd answers; lines split anywhere,
 * garbage, EOF.
 *
 * The QMP client runs on its own GMainContext over one end of a socketpair
 * (qmp_client_attach_fd); the input plays QEMU on the other end, in steps:
 *   write    a run of input bytes (what QEMU says);
 *   iterate  run the context until nothing is ready, then read (and close the fds of)
 *            what the client wrote: its commands, one JSON object per line;
 *   command  queue a command: an execute with arguments, add-fd and getfd carrying
 *            an fd of an input-chosen kind, a bounded wait for DEVICE_DELETED, a
 *            device_del (waiter + command);
 *   eof      shut QEMU's side down.
 * At the end the client is freed with commands and waiters still pending.
 * No timer fires during a run (every bound is 60 s), so a run depends on the input.
 *
 * Invariants besides the sanitizers and the fd check: every command's callback runs
 * exactly once, with a result the header allows (and -ECANCELED at the latest when
 * the client is freed); add-fd success carries fd and fdset-id >= 0; failures carry a
 * reason; the state handler reports ready and closed at most once each; every line
 * the client writes is a JSON object with "execute" and a numeric "id".
 */
#include <glib.h>
#include <json-glib/json-glib.h>
#include <string.h>
#include <sys/socket.h>

#include "fuzz.h"
#include "qmp.h"

#define BOUND_MS 60000
#define MAX_CMDS 64

struct ctx {
    GMainContext *ctx;
    qmp_client *c;
    int sock;                     /* QEMU's end */
    struct fz *f;
    unsigned ready, closed;
    unsigned queued, answered;
    gboolean answered_flag[MAX_CMDS];
    GString *out;                 /* what the client wrote, not yet a whole line */
};

static struct ctx *cur;           /* the run the callbacks belong to */

/* @opaque: the command's slot number. */
static void on_reply(qmp_client *c, const qmp_reply *r, void *opaque)
{
    struct ctx *x = cur;
    guint slot = GPOINTER_TO_UINT(opaque);
    (void)c;
    FZ_CHECK(slot < MAX_CMDS && !x->answered_flag[slot]);
    x->answered_flag[slot] = TRUE;
    x->answered++;
    FZ_CHECK(r->command && r->command[0]);
    FZ_CHECK(r->ret == 0 || r->ret == -EIO || r->ret == -ETIMEDOUT || r->ret == -ECONNRESET ||
             r->ret == -EPROTO || r->ret == -ECANCELED || r->ret == -EBADF);
    if (r->ret == 0 && strcmp(r->command, "add-fd") == 0)
        FZ_CHECK(r->fd >= 0 && r->fdset_id >= 0);
    if (r->ret < 0) {
        FZ_CHECK(r->value == NULL);
        FZ_CHECK(r->err.msg[0] != 0);
    }
    if (r->ret == -EIO)
        FZ_CHECK(memchr(r->err.msg, 0, sizeof(r->err.msg)) != NULL);
}

static void on_state(qmp_client *c, int ret, const vp_error *err, void *opaque)
{
    struct ctx *x = opaque;
    (void)c;
    if (ret == 0) {
        FZ_CHECK(++x->ready == 1 && x->closed == 0);
    } else {
        FZ_CHECK(++x->closed == 1);
        FZ_CHECK(err && err->msg[0]);
    }
}

static void on_event(qmp_client *c, const char *name, JsonObject *data, void *opaque)
{
    (void)c;
    (void)data;
    (void)opaque;
    FZ_CHECK(name != NULL);
}

/* Check one line the client wrote. */
static void check_line(const char *line, gsize len)
{
    g_autoptr(JsonParser) p = json_parser_new();
    FZ_CHECK(json_parser_load_from_data(p, line, (gssize)len, NULL));
    JsonNode *root = json_parser_get_root(p);
    FZ_CHECK(root && JSON_NODE_HOLDS_OBJECT(root));
    JsonObject *o = json_node_get_object(root);
    FZ_CHECK(json_object_has_member(o, "execute"));
    JsonNode *id = json_object_get_member(o, "id");
    FZ_CHECK(id && JSON_NODE_HOLDS_VALUE(id) && json_node_get_value_type(id) == G_TYPE_INT64);
}

/* Read what the client sent; close the fds it passed (QEMU would keep them). */
static void drain(struct ctx *x)
{
    for (;;) {
        char buf[4096];
        union {
            char b[CMSG_SPACE(8 * sizeof(int))];
            struct cmsghdr align;
        } u;
        struct iovec iov = { buf, sizeof(buf) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                             .msg_controllen = sizeof(u.b) };
        ssize_t n = recvmsg(x->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n <= 0)
            return;
        int fds[8];
        unsigned nfds = 0;
        vp_take_scm_fds(&mh, fds, 8, &nfds, NULL);
        vp_close_fds(fds, nfds);
        g_string_append_len(x->out, buf, n);
        char *nl;
        while ((nl = memchr(x->out->str, '\n', x->out->len))) {
            gsize len = (gsize)(nl - x->out->str);
            check_line(x->out->str, len);
            g_string_erase(x->out, 0, (gssize)len + 1);
        }
    }
}

static void iterate(struct ctx *x)
{
    for (int i = 0; i < 256 && g_main_context_iteration(x->ctx, FALSE); i++)
        ;
    drain(x);
}

static void queue_command(struct ctx *x, uint8_t cmd)
{
    if (x->queued >= MAX_CMDS)
        return;
    gpointer slot = GUINT_TO_POINTER(x->queued);
    x->queued++;
    int fd = -1;
    JsonObject *args;
    switch ((cmd >> 2) & 7) {   /* bits 6-7: flags of the kind */
    case 0:
        args = json_object_new();
        json_object_set_string_member(args, "driver", "ivshmem-plain");
        json_object_set_string_member(args, "id", "win0");
        qmp_client_execute_full(x->c, "device_add", args, -1, BOUND_MS, on_reply, slot);
        break;
    case 1:
        fd = fz_make_fd(x->f);
        qmp_client_add_fd(x->c, fd, cmd & 0x80 ? 3 : -1, cmd & 0x40 ? "win" : NULL, on_reply,
                          slot);
        break;
    case 2:
        fd = fz_make_fd(x->f);
        qmp_client_getfd(x->c, fd, "fd0", on_reply, slot);
        break;
    case 3:
        qmp_client_wait_event(x->c, "DEVICE_DELETED", cmd & 0x80 ? "win0" : NULL, BOUND_MS,
                              on_reply, slot);
        break;
    case 4:
        qmp_client_device_del(x->c, "win0", BOUND_MS, on_reply, slot);
        break;
    default:
        qmp_client_execute(x->c, "query-pci", NULL, on_reply, slot);
        break;
    }
    vp_close_fd(&fd);             /* the client keeps a duplicate */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = { data, size };
    struct fz_fdset before;
    fz_quiet_glib();
    /* At most MAX_CMDS fds queued besides the pool: 256 is plenty (fuzz.h). */
    static bool limited;
    if (!limited)
        fz_fds_limit(256);
    limited = true;
    fz_fds_begin(&before);
    static struct ctx x;
    memset(&x, 0, sizeof(x));
    cur = &x;
    x.f = &f;
    x.out = g_string_new(NULL);
    x.ctx = g_main_context_new();
    int sv[2];
    FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    x.sock = sv[0];
    x.c = qmp_client_new(x.ctx);
    qmp_client_set_state_handler(x.c, on_state, &x);
    qmp_client_set_event_handler(x.c, on_event, &x);
    qmp_client_set_command_timeout(x.c, BOUND_MS);
    vp_error err = { { 0 } };
    FZ_CHECK(qmp_client_attach_fd(x.c, sv[1], BOUND_MS, &err) == 0);

    for (unsigned step = 0; step < 512 && f.n; step++) {
        uint8_t cmd = fz_u8(&f);
        switch (cmd & 3) {
        case 0: {
            const uint8_t *bytes;
            size_t len = fz_take(&f, fz_u16(&f) % 2048, &bytes);
            if (len && send(x.sock, bytes, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
                errno == EAGAIN) {
                iterate(&x);
                send(x.sock, bytes, len, MSG_DONTWAIT | MSG_NOSIGNAL);
            }
            break;
        }
        case 1:
            iterate(&x);
            break;
        case 2:
            queue_command(&x, cmd);
            break;
        default:
            if (cmd & 4)
                shutdown(x.sock, SHUT_WR);
            else
                iterate(&x);
            break;
        }
    }
    iterate(&x);
    qmp_client_free(x.c);
    iterate(&x);
    FZ_CHECK(x.answered == x.queued);   /* every callback ran, at the latest on free */
    close(x.sock);
    g_main_context_unref(x.ctx);
    g_string_free(x.out, TRUE);
    fz_fds_end(&before);
    return 0;
}
