/*
 * qmp.h - asynchronous QMP client (QEMU Machine Protocol) for the qemu device host.
 *
 * One qmp_client talks to one QEMU over its QMP UNIX socket (`-qmp unix:PATH,...`),
 * driven by a GMainContext: nothing in here blocks, except the *_sync conveniences
 * for tools and tests, which iterate the client's own context until the answer.
 *
 * Sequence (DESIGN section 7): connect, read the greeting {"QMP": ...}, send
 * qmp_capabilities, then commands. Commands are queued and sent one at a time (the
 * next one only after QEMU answered the previous one): QEMU keeps at most one
 * received fd per monitor, so a command carrying an fd (add-fd, getfd) must never be
 * overtaken, and QMP answers in order anyway. Every reply is matched to its command
 * by the "id" this client puts on it. Events ({"event": ...}) go to one handler and
 * to the bounded waiters (qmp_client_wait_event, qmp_client_device_del).
 *
 * Errors use -errno values with a vp_error reason:
 *   -EIO         QEMU answered {"error": {"class", "desc"}}: reason = QEMU's desc
 *                text verbatim (it becomes an ADD_FAIL / DEL_FAIL reason)
 *   -ETIMEDOUT   the bound given to the command or waiter expired
 *   -ECONNRESET  the QMP connection was closed (EOF, read/write error)
 *   -EPROTO      QEMU sent something that is not QMP (the connection is closed)
 *   -ECANCELED   the client was freed with the command still pending
 *
 * Callbacks run from the client's GMainContext. A callback may queue new commands
 * and may call qmp_client_free() (the client defers its teardown until the callback
 * returns). Concurrency: a client is used from the thread that owns its context.
 */
#ifndef VP_QMP_H
#define VP_QMP_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "vp_common.h"

typedef struct qmp_client qmp_client;

/** The outcome of one QMP command, handed to its qmp_reply_fn. Valid only during the
 *  callback (copy what you keep: json_node_copy(value)). */
typedef struct qmp_reply {
    int ret;                /* 0 on success, else -EIO/-ETIMEDOUT/-ECONNRESET/-EPROTO/-ECANCELED */
    const char *command;    /* the command name, e.g. "device_add" */
    JsonNode *value;        /* on success: the "return" member (often an empty object);
                               NULL on failure. Borrowed. */
    const char *err_class;  /* on -EIO: QMP error class ("GenericError", ...); else NULL */
    vp_error err;           /* on failure: QEMU's desc text (-EIO) or our reason */
    int64_t fd;             /* add-fd success: QEMU's own number for the fd; else -1 */
    int64_t fdset_id;       /* add-fd success: the fd set it was added to; else -1 */
} qmp_reply;

/** Called once per command with its outcome. */
typedef void (*qmp_reply_fn)(qmp_client *c, const qmp_reply *r, void *opaque);

/** Called for every QMP event. @name is the event name ("DEVICE_DELETED"), @data its
 *  "data" member or NULL. Both borrowed for the call. */
typedef void (*qmp_event_fn)(qmp_client *c, const char *name, JsonObject *data,
                             void *opaque);

/** Connection state changes: ret 0 = capabilities negotiated, commands now flow;
 *  ret < 0 = connection failed or closed (reason in @err; -ECONNRESET on EOF). Called
 *  at most once with 0 and at most once with < 0. */
typedef void (*qmp_state_fn)(qmp_client *c, int ret, const vp_error *err, void *opaque);

/** Create an unconnected client bound to @ctx (NULL = the thread-default context,
 *  referenced). Never fails. */
qmp_client *qmp_client_new(GMainContext *ctx);

/** Free the client: close the socket, fail every pending command and waiter with
 *  -ECANCELED (their callbacks run now and must not use @c), drop the handlers.
 *  Safe to call from inside any callback of @c (teardown is deferred). NULL is ok. */
void qmp_client_free(qmp_client *c);

/** Handlers (may be NULL). @state gets "ready" and "closed" (see qmp_state_fn). */
void qmp_client_set_state_handler(qmp_client *c, qmp_state_fn fn, void *opaque);
void qmp_client_set_event_handler(qmp_client *c, qmp_event_fn fn, void *opaque);

/** Start connecting to the QMP UNIX socket at @path (non-blocking; a full listen
 *  backlog is retried until @timeout_ms). The greeting must arrive and
 *  qmp_capabilities must succeed within @timeout_ms too, else the state handler gets
 *  -ETIMEDOUT and the connection is closed. Commands may be queued at once: they are
 *  sent after the capabilities. Returns 0, or -EINVAL (path too long, already
 *  connected) / -errno of socket(2) with a reason in @err; connect(2) errors such as
 *  -ENOENT / -ECONNREFUSED are returned here too. */
int qmp_client_connect(qmp_client *c, const char *path, guint timeout_ms, vp_error *err);

/** The same on an already connected stream socket (tests: one end of a socketpair).
 *  Takes ownership of @fd (closed on error too). */
int qmp_client_attach_fd(qmp_client *c, int fd, guint timeout_ms, vp_error *err);

/** True once qmp_capabilities succeeded and until the connection closed. */
gboolean qmp_client_is_ready(const qmp_client *c);

/** True once the connection closed or failed (the client stays usable for freeing;
 *  new commands fail at once with -ECONNRESET). */
gboolean qmp_client_is_closed(const qmp_client *c);

/** Default bound for commands submitted without one (milliseconds; initially 30000). */
void qmp_client_set_command_timeout(qmp_client *c, guint timeout_ms);

/** Queue command @cmd with arguments @args (taken; NULL = none). @fd >= 0 is
 *  duplicated and the copy sent with SCM_RIGHTS attached to this command's bytes
 *  (the caller keeps @fd). @timeout_ms 0 = the client's default; it runs from now, so
 *  it bounds queueing plus execution. @fn (may be NULL) gets the outcome exactly once,
 *  never before this function returned. Returns the command's id (> 0). A command
 *  that timed out keeps its place: a late answer is dropped, and later commands are
 *  still sent only after it (QEMU executes them in order). */
guint64 qmp_client_execute_full(qmp_client *c, const char *cmd, JsonObject *args, int fd,
                                guint timeout_ms, qmp_reply_fn fn, void *opaque);

/** qmp_client_execute_full() with no fd and the default bound. */
guint64 qmp_client_execute(qmp_client *c, const char *cmd, JsonObject *args,
                           qmp_reply_fn fn, void *opaque);

/** `add-fd`: pass a duplicate of @fd to QEMU (SCM_RIGHTS on the QMP socket). @fdset_id
 *  < 0 = a new fd set; @opaque_text may be NULL. On success r->fd is QEMU's number
 *  for it (usable as /proc/self/fd/<n> inside QEMU: DESIGN section 3) and r->fdset_id
 *  its set. Remove it later with `remove-fd` {"fdset-id", "fd"}. */
guint64 qmp_client_add_fd(qmp_client *c, int fd, int64_t fdset_id, const char *opaque_text,
                          qmp_reply_fn fn, void *opaque);

/** `getfd`: pass a duplicate of @fd to QEMU under @name (`closefd` releases it). QEMU
 *  answers with no number: r->fd stays -1. */
guint64 qmp_client_getfd(qmp_client *c, int fd, const char *name, qmp_reply_fn fn,
                         void *opaque);

/** Bounded wait for event @event whose data "device" member equals @device (NULL =
 *  any). @fn gets ret 0 (r->value = the event's data, or NULL), -ETIMEDOUT after
 *  @timeout_ms, -ECONNRESET or -ECANCELED. Registered at once, so an event that
 *  arrives after this call is seen. Returns a waiter id (> 0). */
guint64 qmp_client_wait_event(qmp_client *c, const char *event, const char *device,
                              guint timeout_ms, qmp_reply_fn fn, void *opaque);

/** Hot-unplug device @id: registers a waiter for DEVICE_DELETED of @id, then sends
 *  `device_del`. @fn gets 0 once DEVICE_DELETED arrived; -EIO with QEMU's reason if
 *  device_del itself failed (e.g. no such device); -ETIMEDOUT when the guest did not
 *  eject within @timeout_ms (ACPI hot-unplug needs a running guest). */
void qmp_client_device_del(qmp_client *c, const char *id, guint timeout_ms,
                           qmp_reply_fn fn, void *opaque);

/* ---- Blocking conveniences for tools and tests. They iterate the client's own
 * GMainContext (acquired; it must not be running in another thread) until the answer,
 * so other sources on that context (e.g. an ivshmem endpoint QEMU is reading from)
 * keep being served. The wait is bounded by the command's / waiter's / connect's own
 * timer. Not for the server's main loop, and never from inside a callback of the
 * same client (-EDEADLK); -EBUSY when the context is owned by another thread. */

/** Connect and negotiate capabilities; returns 0 or the failure (see above). */
int qmp_client_connect_sync(qmp_client *c, const char *path, guint timeout_ms, vp_error *err);

/** The string member @name of @o (borrowed from @o), or NULL when @o is NULL or the
 *  member is absent or not a string. For QMP answers and events (peer input). */
const char *qmp_get_str(JsonObject *o, const char *name);

/** The integer member @name of @o into *@v: true, or false (and *@v untouched) when
 *  @o is NULL or the member is absent or not an integer. */
bool qmp_get_int(JsonObject *o, const char *name, int64_t *v);

/** Run one command (with @fd >= 0 attached, duplicated) and wait. Returns 0 and, if
 *  @ret_out, a copy of the "return" member (json_node_unref it); else -errno with the
 *  reason in @err. @qemu_fd (may be NULL) receives r->fd (add-fd). */
int qmp_client_execute_sync(qmp_client *c, const char *cmd, JsonObject *args, int fd,
                            guint timeout_ms, JsonNode **ret_out, int64_t *qemu_fd,
                            vp_error *err);

/** qmp_client_device_del() and wait. */
int qmp_client_device_del_sync(qmp_client *c, const char *id, guint timeout_ms,
                               vp_error *err);

/** Iterate the client's context until @done becomes true or @timeout_ms passed.
 *  Returns TRUE if @done. For tests waiting on other sources of the same context. */
gboolean qmp_client_iterate_until(qmp_client *c, const gboolean *done, guint timeout_ms);

/** The client's context (borrowed). */
GMainContext *qmp_client_context(const qmp_client *c);

#endif
