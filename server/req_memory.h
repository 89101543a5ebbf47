/*
 * req_memory.h - MEMORY_INFO requests (spec 1.5.1.2, 1.6.1.2; DESIGN sections 3-4):
 * ADD places the regions' files as windows in the logical BAR (cloning the device
 * when they do not fit), DEL removes regions after the guest driver stopped using
 * them. Both are jobs on the tenant's queue, answered after the driver's ACK.
 */
#ifndef VP_SERVER_REQ_MEMORY_H
#define VP_SERVER_REQ_MEMORY_H

#include "jobs.h"
#include "vp_msg.h"

struct srv_tenant;

/** Handler of MEMORY_INFO (session.c's dispatch table): decode @msg (moving its fds
 *  into the request; the caller clears @msg afterwards), validate (fstat, window
 *  sizes, queue room), create the tenant's device on the first ADD, queue a job or
 *  answer at once. Returns 0, or a negative errno with a reason in @err for a decode
 *  (framing) error: the caller disconnects that client. */
int srv_req_memory_info(const struct srv_req *rq, struct vp_msg *msg, vp_error *err);

/** Queue an internal MEMORY_INFO(DEL) of every region of @t's device (no reply):
 *  the last connection closed, the driver must stop using the memory before its
 *  windows go. Nothing when the device has no regions. */
void srv_req_memory_del_all(struct srv_tenant *t);

#endif
