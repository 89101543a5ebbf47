/*
 * itest_fakegd.h - a pretend vhost-pci-guestd for the integration tests, in a thread
 * of the test program, on the server's --local-bus (protocol/vp_localbus.h).
 *
 * It connects and says HELLO, takes the first PLUG_CONTROL (4 fds: control area,
 * receiveq kick, transmitq kick, irq), checks the control area magic, runs the status
 * handshake (ACKNOWLEDGE|DRIVER, FEATURES_OK, both rings at the offsets the server
 * fixed, VP_CA_QUEUE_NUM writable buffers posted on the transmitq, DRIVER_OK,
 * doorbell) and then answers every controlq message on the receiveq with a success
 * ACK (ADD_DONE, DEL_DONE for a DEL; FEATURE_BITS answered with offer &
 * VP_NET_FEATURES), driving both control queues with vp_vring_drv. The hooks below
 * make it misbehave on purpose.
 *
 * Concurrency: the test thread sets the hooks before itest_fakegd_start(), flips
 * garbage/stop with g_atomic_int_set() while it runs and reads the counters with
 * g_atomic_int_get(); failure is written by the thread only and read after the
 * thread made its mark (e.g. after a completed request) or after itest_fakegd_stop().
 * All fds and mappings are the thread's; it closes them when it leaves.
 */
#ifndef ITEST_FAKEGD_H
#define ITEST_FAKEGD_H

#include <glib.h>

typedef struct {
    /* set before itest_fakegd_start() */
    const char *path;          /* the server's --local-bus socket (ITestEnv.local_bus) */
    gboolean bogus;            /* before its first real ACK, put an ACK for msg_seq + 1000
                                  (a message the server never sent) on the receiveq */
    gboolean eject;            /* answer UNPLUG_WINDOW / UNPLUG_CONTROL with EJECTED */
    /* set by the test while it runs */
    volatile gint garbage;     /* put 64 bytes of 0xa5 on the receiveq, once */
    volatile gint stop;        /* leave (closing the connection) */
    /* read by the test */
    volatile gint messages;    /* controlq messages decoded */
    volatile gint acks;        /* success ACKs put on the receiveq */
    volatile gint bogus_sent, garbage_sent;
    char failure[256];         /* why the thread gave up, or empty */
    GThread *thread;
} ITestFakeGd;

/** Start the fake guestd thread (named @name) with the hooks set in @fg; @fg must
 *  stay valid until itest_fakegd_stop(). */
void itest_fakegd_start(ITestFakeGd *fg, const char *name);

/** Abort the test (g_error) when the fake guestd gave up, with its reason. */
void itest_fakegd_check(ITestFakeGd *fg);

/** Tell the fake guestd to leave, join its thread, then itest_fakegd_check(). A
 *  local bus read error once it was told to stop does not count as a failure. */
void itest_fakegd_stop(ITestFakeGd *fg);

#endif
