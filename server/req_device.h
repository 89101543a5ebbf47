/*
 * req_device.h - DEVICE_INFO requests (spec 1.5.1.2, 1.6.1.1/2; DESIGN section 4): ADD
 * hands a frontend's virtqueues (ring addresses, positions, kick/call eventfds) to
 * the guest driver, giving each call fd a doorbell vector; DEL stops a frontend and
 * answers with the last_avail_idx of each queue. Jobs on the tenant's queue,
 * answered after the driver's ACK.
 */
#ifndef VP_SERVER_REQ_DEVICE_H
#define VP_SERVER_REQ_DEVICE_H

#include "frontends.h"
#include "jobs.h"
#include "vp_msg.h"

struct srv_tenant;

/** Decode the DEVICE_INFO in @msg into a new struct *@out, which then owns the fds
 *  it names (release with vp_device_info_close_fds() and g_free()). Returns 0, or
 *  vp_decode_device_info()'s error with a reason in @err when the payload is
 *  malformed (a framing error; *@out is NULL and @msg keeps its fds). */
int srv_decode_device_info(struct vp_msg *msg, struct vp_device_info **out, vp_error *err);

/** Handler of DEVICE_INFO (session.c's dispatch table): decode, validate, queue a job
 *  or answer at once (validation errors: DEVICE_INFO_ACK ADD_FAIL/DEL_FAIL with a
 *  reason). Returns 0, or a negative errno with a reason in @err for a decode
 *  (framing) error: the caller disconnects that client. */
int srv_req_device_info(const struct srv_req *rq, struct vp_msg *msg, vp_error *err);

/** Queue an internal DEVICE_INFO(DEL) of @fe on @t's device (no reply): the
 *  connection that added it closed without DEL. */
void srv_req_device_del_implicit(struct srv_tenant *t, const struct srv_frontend *fe);

#endif
