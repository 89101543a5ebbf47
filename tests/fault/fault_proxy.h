/*
 * fault_proxy.h - a message-aware UNIX socket proxy for the fault-injection test: it
 * sits between two real processes (the vhost-pci-client daemon and the server on the
 * vhost-pci socket, the server and vhost-pci-guestd on the local bus), forwards every
 * message with its fds, numbers the messages of the channel, and lets the test act at
 * each message boundary: kill a process, hang the link up, or deliver the message in
 * small fragments (so the receiver sees partial messages).
 *
 * Framing: FP_VP, the vhost-pci socket protocol (32-byte header whose le32 at offset 4
 * is the payload length, DESIGN section 4); FP_LB, the local bus (fixed 32-byte
 * messages, protocol/vp_localbus.h). fds ride on a message's first byte, as both
 * protocols require; the proxy reads a message's header and payload separately, so
 * fds are never attributed to the wrong message. The peers are the project's own
 * programs, so the proxy trusts the framing (a length over the limit ends the link).
 *
 * Threading: the proxy runs in its own thread (poll loop). The hook runs in that
 * thread, before a message is forwarded; everything else is called from the test's
 * thread. Counters are read with fp_count().
 */
#ifndef FAULT_PROXY_H
#define FAULT_PROXY_H

#include <stdbool.h>
#include <stdint.h>

enum fp_framing {
    FP_VP,   /* vhost-pci socket messages */
    FP_LB,   /* local bus messages */
};

/** Direction of a message: from the side that connected to the proxy (the client,
 *  the guestd) to the proxy's target (the server), or back. */
enum fp_dir {
    FP_TO_TARGET,
    FP_FROM_TARGET,
};

enum fp_action {
    FP_FORWARD,     /* deliver the message */
    FP_HANGUP,      /* drop it (closing its fds) and close both ends of the link */
};

/**
 * Called for every complete message before it is forwarded: @index counts the
 * channel's messages from 1 (both directions, all links, since fp_reset), @type is
 * the message's type field (VP: le16 at 0, LB: le32 at 0). Runs in the proxy thread;
 * it may kill processes. Returns what to do with the message.
 */
typedef enum fp_action (*fp_hook)(void *opaque, unsigned index, enum fp_dir dir,
                                  uint32_t type);

struct fault_proxy;

/**
 * Listen on @listen_path; for each connection, connect to @target_path (if that fails
 * the connection is closed at once, as if the target were down) and forward in both
 * directions. @hook may be NULL. Returns NULL with errno set.
 */
struct fault_proxy *fp_new(const char *listen_path, const char *target_path,
                           enum fp_framing framing, fp_hook hook, void *opaque);

/** Stop the thread, close every link and the listening socket (the path is removed). */
void fp_free(struct fault_proxy *fp);

/** Restart the message numbering (call while the channel is quiet). */
void fp_reset(struct fault_proxy *fp);

/** Messages handed to the hook since fp_reset. */
unsigned fp_count(struct fault_proxy *fp);

/** Deliver messages in fragments of at most @bytes bytes (0: whole), waiting
 *  (bounded) for the receiver to read each one before sending the next. */
void fp_set_fragment(struct fault_proxy *fp, unsigned bytes);

/** Close every open link now (both ends), as a hang-up of all of them. */
void fp_hangup_all(struct fault_proxy *fp);

#endif
