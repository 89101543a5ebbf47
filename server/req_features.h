/*
 * req_features.h - FEATURE_BITS and FEATURE_BITS_ACK (spec 1.5.1.1/1.5.1.2; DESIGN
 * section 4, "Feature timing"): before the tenant has a device the offer is answered
 * at once with what the shipped guest driver supports (VP_NET_FEATURES); with a
 * device it goes to the guest driver as a job, and when the driver accepts fewer
 * bits than offered the job waits for the client's FEATURE_BITS_ACK (the
 * renegotiation round) before the next request runs.
 */
#ifndef VP_SERVER_REQ_FEATURES_H
#define VP_SERVER_REQ_FEATURES_H

#include "jobs.h"
#include "vp_msg.h"

/** Handler of FEATURE_BITS (session.c's dispatch table). 0, or a negative errno
 *  with a reason in @err for a decode error (the caller disconnects). */
int srv_req_feature_bits(const struct srv_req *rq, struct vp_msg *msg, vp_error *err);
/** Handler of a client's FEATURE_BITS_ACK (allowed only while the renegotiation
 *  round waits for it; anything off is counted and ignored). 0, or a negative errno
 *  with a reason in @err for a decode error. */
int srv_req_feature_bits_ack(const struct srv_req *rq, struct vp_msg *msg, vp_error *err);

#endif
