/*
 * mgmt.h - the management socket (--mgmt PATH, server/mgmt.c): a client writes
 * `status\n` and reads one JSON document describing the server, its devices and their
 * counters (vhost-pci-ctl renders it). The integration test
 * tests/integration/test-mgmt-clients.c reads the limits below to play the worst
 * client.
 */
#ifndef VP_SERVER_MGMT_H
#define VP_SERVER_MGMT_H

#include "vp_common.h"

/** Bytes of the request line, newline included; a longer line is answered as an
 *  unknown command. */
#define MGMT_LINE_MAX 64
/** Milliseconds one client may take for its whole exchange (sending the request
 *  line and reading the answer); then the server closes it. */
#define MGMT_DEADLINE_MS 5000
/** Mgmt clients open at once; a further one is closed at accept (logged). */
#define MGMT_MAX_CLIENTS 16

struct vp_server;
struct srv_mgmt;

/** Listen on @path (removed again by srv_mgmt_free). NULL with a reason in @err. */
struct srv_mgmt *srv_mgmt_new(struct vp_server *srv, const char *path, vp_error *err);
/** Close every client and the socket (NULL is fine). */
void srv_mgmt_free(struct srv_mgmt *m);
/** The status document (pretty JSON; the caller frees it with g_free). */
char *srv_mgmt_status_json(struct vp_server *srv);

#endif
