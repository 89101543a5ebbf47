/*
 * closing.h - what happens when a client connection closes (spec 1.6.1.2: "when
 * there is no client of a driver VM connecting to the vhost-pci device, the server
 * SHOULD destroy the vhost-pci device for that driver VM"): the frontends that
 * connection added are deleted (a connection that closes without DEVICE_INFO(DEL)
 * means DEL), and after the last connection of the tenant the memory is deleted and
 * the device destroyed, as jobs behind whatever is queued, bounded by the ack timeout.
 */
#ifndef VP_SERVER_CLOSING_H
#define VP_SERVER_CLOSING_H

#include <stdint.h>

struct srv_tenant;

/** Connection @session_id of @t has closed (already removed from the server's
 *  sessions): queue the implicit DELs and, when it was the last connection, the
 *  destroy; then release the connection's hold on @t (which may free @t). */
void srv_closing_session_closed(struct srv_tenant *t, uint64_t session_id);

#endif
