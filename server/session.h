/*
 * session.h - one client connection of vhost-pci-server (DESIGN section 4): framed
 * messages read from a non-blocking socket, dispatched through one table that says,
 * per message type, in which states it is allowed, which request handler runs and
 * what happens otherwise; and the replies going back on it.
 *
 * A connection is bound to the client_uuid of its first message (its tenant,
 * tenant.h). Sessions are owned by vp_server.sessions (by id); anything that
 * outlives a callback refers to a session by its id. Main thread only.
 */
#ifndef VP_SERVER_SESSION_H
#define VP_SERVER_SESSION_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "vp_msg.h"
#include "vp_outq_glib.h"

struct vp_server;
struct srv_tenant;

/** One client connection. */
struct srv_session {
    struct vp_server *srv;
    uint64_t id;
    int fd;
    guint src;
    struct vp_msg_reader reader;
    struct vp_outq_glib out;             /* replies not yet written (bounded) */
    struct srv_tenant *tenant;           /* bound by the first message (a connection hold) */
    char uuid_str[37];
    unsigned uid;                        /* the peer's uid (SO_PEERCRED at accept) */
    int pid;                             /* ... and pid, for logs */
    bool seq_seen;
    uint64_t last_seq;                   /* msg_seq of its last request (must increase) */
};

/** Install the server's reply hook (vp_server.reply) and create its session table. */
void srv_sessions_init(struct vp_server *srv);
/** Accept a new client on @fd (takes ownership), connected by @uid / @pid. */
void srv_session_new(struct vp_server *srv, int fd, unsigned uid, int pid);
/** Close a session: its tenant learns (implicit DEL of its frontends, device destroy
 *  when it was the last connection; only the count while shutting down). */
void srv_session_close(struct srv_session *s, const char *why);
/** Close every session (shutdown). */
void srv_sessions_close_all(struct vp_server *srv, const char *why);
/** Free every session left and the table (exit). */
void srv_sessions_free(struct vp_server *srv);

#endif
