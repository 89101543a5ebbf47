/*
 * unix_listen.h - listening UNIX stream sockets for the server's three sockets
 * (--listen, --local-bus, --mgmt), created with restrictive modes (issue 12.6): owner
 * only (0600) unless srv_unix_set_access() opened them to a group.
 */
#ifndef VP_SERVER_UNIX_LISTEN_H
#define VP_SERVER_UNIX_LISTEN_H

#include "vp_common.h"

/**
 * Create a non-blocking, close-on-exec UNIX stream socket listening on @path.
 * A stale socket file (nobody accepts on it) is replaced; a live one or a path that
 * is not a socket is an error. Returns the fd (caller owns it) or -errno with a
 * reason in @err.
 */
int srv_unix_listen(const char *path, vp_error *err);

/** The mode and group of every socket srv_unix_listen() creates from now on (@gid
 *  (gid_t)-1: keep the process's group). The socket file is created with this mode
 *  (umask around bind), so there is no moment with wider access. Default 0600. */
void srv_unix_set_access(unsigned mode, unsigned gid);

/** accept4() a connection as non-blocking + close-on-exec; -errno on error. */
int srv_unix_accept(int listen_fd);

#endif
