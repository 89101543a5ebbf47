/*
 * itest_frames.c - frames and loopback traffic of the data path tests
 * (itest_frames.h).
 */
#include "itest_frames.h"

#include <string.h>

void itest_frame_fill(guint8 *f, gsize len, guint64 seq, guint8 tag)
{
    static const guint8 hdr[14] = { 0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5 };
    guint64 x = seq * 0x9e3779b97f4a7c15ULL + tag + 1;
    for (gsize i = 0; i < len; i++) {
        if (i < 14) {
            f[i] = hdr[i];
        } else if (i < 22) {
            f[i] = (guint8)(seq >> (8 * (i - 14)));
        } else if (i == 22) {
            f[i] = tag;
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f[i] = (guint8)x;
        }
    }
}

/* The sequence number a frame says it is (for the error message). */
static guint64 frame_seq(const guint8 *f)
{
    guint64 s = 0;
    for (int i = 0; i < 8; i++)
        s |= (guint64)f[14 + i] << (8 * i);
    return s;
}

void itest_frame_check(const guint8 *got, gsize len, gsize want_len, guint64 seq, guint8 tag,
                       const char *what)
{
    static guint8 want[65536];
    if (len != want_len)
        g_error("%s: frame %" G_GUINT64_FORMAT " is %zu bytes, want %zu", what, seq, len, want_len);
    itest_frame_fill(want, want_len, seq, tag);
    if (memcmp(got, want, len) != 0) {
        gsize i = 0;
        while (got[i] == want[i])
            i++;
        g_error("%s: frame %" G_GUINT64_FORMAT " (%zu bytes, seq in it %" G_GUINT64_FORMAT
                ") differs at byte %zu: 0x%02x, want 0x%02x",
                what, seq, len, frame_seq(got), i, got[i], want[i]);
    }
}

VnetVm *itest_vnet_vm(ITestEnv *env, gsize ram)
{
    GError *e = NULL;
    VnetVm *vm = vnet_vm_new(env->sock, NULL, ram, &e);
    g_assert_no_error(e);
    return vm;
}

VnetFe *itest_vnet_fe(VnetVm *vm, const VnetFeConfig *cfg)
{
    GError *e = NULL;
    VnetFe *fe = vnet_fe_new(vm, cfg, &e);
    g_assert_no_error(e);
    g_assert_nonnull(fe);
    return fe;
}

guint itest_fe_send_frames(VnetFe *fe, guint64 first, guint64 n, guint64 *sent, guint64 got,
                           guint64 window, const gsize *sizes, guint nsizes, guint8 tag)
{
    static guint8 tx[65536];
    GError *e = NULL;
    guint done = 0;
    while (*sent < n && *sent - got < window) {
        gsize len = itest_frame_size(sizes, nsizes, first + *sent);
        itest_frame_fill(tx, len, first + *sent, tag);
        int r = vnet_fe_try_send(fe, tx, len, &e);
        g_assert_no_error(e);
        if (r == 0)
            break;
        (*sent)++;
        done++;
    }
    return done;
}

guint itest_fe_recv_frames(VnetFe *fe, guint64 first, guint64 *got, const gsize *sizes,
                           guint nsizes, guint8 tag, const char *what)
{
    static guint8 rx[65536];
    GError *e = NULL;
    guint done = 0;
    for (;;) {
        gsize len = 0;
        int r = vnet_fe_try_recv(fe, rx, sizeof(rx), &len, &e);
        g_assert_no_error(e);
        if (r == 0)
            break;
        itest_frame_check(rx, len, itest_frame_size(sizes, nsizes, first + *got), first + *got,
                          tag, what);
        (*got)++;
        done++;
    }
    return done;
}

void itest_loop_traffic(VnetFe *fe, guint64 first, guint64 n, const gsize *sizes, guint nsizes,
                        guint window, guint8 tag, int timeout_s)
{
    guint64 sent = 0, got = 0;
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_s * G_USEC_PER_SEC;
    while (got < n) {
        guint work = itest_fe_send_frames(fe, first, n, &sent, got, window, sizes, nsizes, tag);
        work += itest_fe_recv_frames(fe, first, &got, sizes, nsizes, tag, "loopback");
        if (!work) {
            if (g_get_monotonic_time() > deadline)
                g_error("loopback: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                        " frames back, %" G_GUINT64_FORMAT " sent", got, n, sent);
            vnet_fe_wait(fe, 0, 5);
        }
    }
}
