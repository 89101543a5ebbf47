/*
 * qmp_private.h - internals of the QMP client shared by its files (not an API):
 *   qmp.c       connection, writing, commands, life cycle (the parent)
 *   qmp_recv.c  reading QEMU's lines, answers, events and their waiters, device_del
 *   qmp_sync.c  the blocking conveniences for tools and tests
 */
#ifndef VP_QMP_PRIVATE_H
#define VP_QMP_PRIVATE_H

#include <sys/socket.h>
#include <sys/un.h>

#include "qmp.h"
#include "vp_outq_glib.h"

#define QMP_MAX_LINE (8u << 20)         /* query-qmp-schema is ~200 KiB; be generous */
#define QMP_READ_CHUNK 65536
#define QMP_CONNECT_RETRY_MS 20
#define QMP_DEFAULT_TIMEOUT_MS 30000

typedef enum {
    QMP_ST_IDLE,        /* not connected yet */
    QMP_ST_CONNECTING,  /* connect(2) got EAGAIN (backlog full): retrying */
    QMP_ST_GREETING,    /* connected, waiting for {"QMP": ...} */
    QMP_ST_CAPS,        /* qmp_capabilities sent */
    QMP_ST_READY,
    QMP_ST_CLOSED,
} qmp_state;

typedef struct qmp_cmd {
    qmp_client *c;
    guint64 id;
    char *name;
    char *line;             /* serialized command + '\n' */
    int fd;                 /* our duplicate to pass with SCM_RIGHTS, or -1 */
    gboolean internal;      /* qmp_capabilities: may be sent before READY */
    int dup_errno;          /* != 0: the caller's fd could not be duplicated */
    guint timeout_ms;
    GSource *timer;
    qmp_reply_fn fn;        /* NULL once called (timed out while in flight) */
    void *opaque;
} qmp_cmd;

typedef struct qmp_waiter {
    qmp_client *c;
    guint64 id;
    char *event;
    char *device;           /* NULL = any */
    guint timeout_ms;
    GSource *timer;
    qmp_reply_fn fn;
    void *opaque;
} qmp_waiter;

struct qmp_client {
    GMainContext *ctx;
    qmp_state state;
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];

    GSource *in_src;
    GSource *conn_timer;        /* connect retry */
    GSource *deadline_timer;    /* greeting + capabilities bound */
    GSource *pump_src;          /* idle: send next / fail after close */
    gint64 conn_deadline_us;
    guint conn_timeout_ms;

    GByteArray *rbuf;
    struct vp_outq_glib out;    /* the in-flight command's bytes (protocol/vp_outq.h) */

    GQueue queue;               /* qmp_cmd *, unsent */
    qmp_cmd *inflight;
    GList *waiters;             /* qmp_waiter * */
    guint64 next_id;
    guint cmd_timeout_ms;

    qmp_state_fn state_fn;
    void *state_opaque;
    qmp_event_fn event_fn;
    void *event_opaque;

    int depth;                  /* > 0 while inside a main-loop entry point */
    gboolean freeing;
    gboolean ready_reported, closed_reported;
};

/* qmp.c */
void qmp_reply_init(qmp_reply *r, const char *command);
void qmp_enter(qmp_client *c);
void qmp_leave(qmp_client *c);
GSource *qmp_timer_new(qmp_client *c, guint ms, GSourceFunc fn, gpointer data);
void qmp_source_drop(GSource **s);
void qmp_cmd_free(qmp_cmd *cmd);
void qmp_waiter_free(qmp_waiter *w);
void qmp_waiter_fail(qmp_waiter *w, int ret, const char *reason);
void qmp_close(qmp_client *c, int ret, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
void qmp_schedule_pump(qmp_client *c);
void qmp_send_next(qmp_client *c);

/* qmp_recv.c */
gboolean qmp_on_readable(gint fd, GIOCondition cond, gpointer data);

#endif
