/*
 * fuzz-controlq.c - libFuzzer target: controlq messages (protocol/vp_controlq.c,
 * DESIGN section 5) as the guest driver receives them from the server on the control
 * transmitq, and as the server decodes the guest driver's ACKs.
 *
 * The input: a window table for the control area (fuzz_guestd.h), then records
 *   u8 ctl, u16 len, len bytes
 * Each record's bytes are decoded with vp_cq_decode(); what decodes is encoded again
 * and must decode to the same message (encode(decode(x)) is a fixpoint), and an ACK
 * made for it must encode and decode. Then the bytes are put into a transmitq buffer
 * of a real guestd (control plane, devices, vhost-pci-net with the loopback endpoint,
 * on the fake bus of fuzz_guestd.h), claiming ctl bit 0 ? an input-chosen used length
 * : len; ctl bit 1 services guestd now, ctl bit 2 leaves its ACKs unread (it runs
 * out of ACK buffers). Every ACK guestd writes must decode. A malformed message may
 * break the device (NEEDS_RESET); the sanitizers and the fd check must stay quiet.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_guestd.h"
#include "vp_controlq.h"

static void check_decode(const uint8_t *b, size_t len)
{
    static struct vp_cq_msg m, m2, ack;
    vp_error err = { { 0 } };
    if (vp_cq_decode(b, len, &m, &err) < 0) {
        FZ_CHECK(err.msg[0] != 0);
        return;
    }
    FZ_CHECK(m.type < VP_MSG_TYPE_COUNT && m.version == VP_MSG_VERSION);
    uint8_t e1[VP_CQ_MAX_MSG + VP_MAX_REASON + 64], e2[sizeof(e1)];
    int n1 = vp_cq_encode(&m, e1, sizeof(e1));
    FZ_CHECK(n1 > 0 && (size_t)n1 == len);
    FZ_CHECK(vp_cq_decode(e1, (size_t)n1, &m2, &err) == 0);
    int n2 = vp_cq_encode(&m2, e2, sizeof(e2));
    FZ_CHECK(n2 == n1 && memcmp(e1, e2, (size_t)n1) == 0);

    vp_cq_make_ack(&ack, &m, VP_ACK_ADD_FAIL, m.type & 1 ? m.u.ack.reason : "refused");
    n1 = vp_cq_encode(&ack, e1, sizeof(e1));
    FZ_CHECK(n1 > 0);
    FZ_CHECK(vp_cq_decode(e1, (size_t)n1, &m2, &err) == 0);
    FZ_CHECK(m2.seq == m.seq && m2.type == (m.type | 1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f = { data, size };
    struct fz_fdset before;
    fg_once();                    /* its memfd outlives the input */
    fz_fds_begin(&before);
    struct fg g;
    vp_error err = { { 0 } };
    fg_setup(&g, &f, gd_endpoint_loopback_new(NULL, &err));

    for (unsigned rec = 0; rec < 256 && f.n; rec++) {
        uint8_t ctl = fz_u8(&f);
        size_t want = fz_u16(&f) % (VP_CA_BUF_SLOT + 1);
        const uint8_t *bytes;
        size_t len = fz_take(&f, want, &bytes);
        check_decode(bytes, len);

        /* A whole zero-padded slot, so bytes beyond len are never a previous input's. */
        uint8_t slot[VP_CA_BUF_SLOT] = { 0 };
        memcpy(slot, bytes, len);
        uint32_t used = (ctl & 1) ? fz_u32(&f) : (uint32_t)len;
        if (!fg_send_raw(&g, slot, sizeof(slot), used)) {
            fg_service(&g);       /* out of buffers: let guestd catch up, drop this one */
            fg_drain_acks(&g, NULL);
            continue;
        }
        if (ctl & 2)
            fg_service(&g);
        if (!(ctl & 4))
            fg_drain_acks(&g, NULL);
    }
    fg_service_all(&g);
    fg_drain_acks(&g, NULL);
    fg_teardown(&g);
    fz_fds_end(&before);
    return 0;
}
