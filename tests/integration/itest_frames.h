/*
 * itest_frames.h - Ethernet frames whose every byte follows from a sequence number,
 * and the userspace virtio-net frontend of tools/vnet-frontend (playing the driver
 * VM) for the data path integration tests: set-up that aborts the test on failure and
 * loopback traffic through guestd --endpoint loopback, every frame checked byte for
 * byte.
 *
 * Frame layout: 14-byte Ethernet header (02:00:00:00:00:02 <- 02:00:00:00:00:01,
 * ethertype 0x88b5), the sequence number as le64 at byte 14, @tag at byte 22, then
 * xorshift bytes seeded from seq and tag. Single-threaded (static buffers).
 */
#ifndef ITEST_FRAMES_H
#define ITEST_FRAMES_H

#include <glib.h>

#include "itest.h"
#include "vnet_frontend.h"

/** Fill f[0..len) with frame @seq of stream @tag. */
void itest_frame_fill(guint8 *f, gsize len, guint64 seq, guint8 tag);

/** Abort the test (g_error, naming @what, the frame and the first differing byte)
 *  unless got[0..len) is frame @seq of stream @tag and @len is @want_len bytes
 *  (at most 65536). */
void itest_frame_check(const guint8 *got, gsize len, gsize want_len, guint64 seq, guint8 tag,
                       const char *what);

/** Size of frame @seq for a mix: cycles through sizes[0..n). */
static inline gsize itest_frame_size(const gsize *sizes, guint n, guint64 seq)
{
    return sizes[seq % n];
}

/** A pretend driver VM with @ram bytes of memory, connected to @env's server
 *  (vnet_vm_new(); aborts the test on failure). Free with vnet_vm_free(). */
VnetVm *itest_vnet_vm(ITestEnv *env, gsize ram);

/** A virtio-net frontend of @vm (vnet_fe_new(), handshake done; aborts the test on
 *  failure). Free with vnet_fe_free(). */
VnetFe *itest_vnet_fe(VnetVm *vm, const VnetFeConfig *cfg);

/** Frontend -> guestd: send frames first + *sent, ... of stream @tag (sizes:
 *  itest_frame_size(sizes, nsizes, first + i)) while *@sent < @n and fewer than
 *  @window are in flight (*@sent - @got; G_MAXUINT64: no window), until the transmit
 *  queue is full. Advances *@sent; returns how many it sent. */
guint itest_fe_send_frames(VnetFe *fe, guint64 first, guint64 n, guint64 *sent, guint64 got,
                           guint64 window, const gsize *sizes, guint nsizes, guint8 tag);

/** guestd -> frontend: take every frame the receive queue holds and check each is the
 *  next one, frame first + *@got of stream @tag (itest_frame_check(), naming @what).
 *  Advances *@got; returns how many it took. */
guint itest_fe_recv_frames(VnetFe *fe, guint64 first, guint64 *got, const gsize *sizes,
                           guint nsizes, guint8 tag, const char *what);

/** Loopback (guestd --endpoint loopback): send frames [first, first + n) of stream
 *  @tag (sizes: itest_frame_size(sizes, nsizes, seq)) with at most @window in flight
 *  (0: only receive) and check each one comes back, in order, byte for byte. Aborts
 *  the test when not all came back within @timeout_s seconds. */
void itest_loop_traffic(VnetFe *fe, guint64 first, guint64 n, const gsize *sizes, guint nsizes,
                        guint window, guint8 tag, int timeout_s);

#endif
