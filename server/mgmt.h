/*
 * mgmt.h - limits of the management socket (--mgmt PATH, server/mgmt.c); its
 * functions are declared in server.h. The integration test
 * tests/integration/test-mgmt-clients.c reads these to play the worst client.
 */
#ifndef VP_SERVER_MGMT_H
#define VP_SERVER_MGMT_H

/** Bytes of the request line, newline included; a longer line is answered as an
 *  unknown command. */
#define MGMT_LINE_MAX 64
/** Milliseconds one client may take for its whole exchange (sending the request
 *  line and reading the answer); then the server closes it. */
#define MGMT_DEADLINE_MS 5000
/** Mgmt clients open at once; a further one is closed at accept (logged). */
#define MGMT_MAX_CLIENTS 16

#endif
