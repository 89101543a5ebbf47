/*
 * refusals.c - the last refusals and their fixes (refusals.h).
 */
#include "refusals.h"

#include <string.h>

/* Reason text -> what fixes it; the first match wins. */
static const struct {
    const char *match;
    const char *fix;
} fixes[] = {
    { "not a power of two",
      "give the driver VM memory whose backing files are a power of two in size (QEMU: -m "
      "512M, 1G, DIMMs likewise; DPDK: -m 512, or hugepages with --single-file-segments): "
      "a window becomes a PCI BAR; or run the device VM on QEMU 8.1 or later, which serves a "
      "file whose size is a multiple of 4 KiB as several power-of-two windows" },
    { "sealed against shrinking",
      "seal the memory file with F_SEAL_SHRINK (QEMU's memory-backend-memfd does), or start "
      "vhost-pci-server with --allow-unsealed (a shrink would then crash the device VM's QEMU)" },
    { "cannot be sealed",
      "use a memfd sealed with F_SEAL_SHRINK (QEMU: memory-backend-memfd), or start "
      "vhost-pci-server with --allow-unsealed (a shrink would then crash the device VM's QEMU)" },
    { "--max-",
      "raise the vhost-pci-server option the reason names, if this client should have more" },
    { "did not answer within",
      "check that vhost-pci-guestd runs in the device VM (vhost-pci-ctl status: DRIVER_OK), "
      "or raise vhost-pci-server --ack-timeout for a slow device VM" },
    { "needs reset",
      "restart vhost-pci-guestd in the device VM: a new driver takes the device back" },
    { "not an eventfd", "give eventfds as the virtqueues' kick and call fds" },
    { "no free PCI slot",
      "free PCI functions in the device VM (fewer devices or memory files), or lower "
      "--max-devices so that the next client gets a clear refusal" },
    { "overlaps", "the frontend's memory table overlaps itself: a frontend bug" },
    { "in use by another user",
      "connect as the uid that created this client_uuid's device, or use another uuid" },
    { "not supported by vhost-pci-guestd",
      "the device VM's guest driver serves virtio-net frontends only" },
    { "", "see the reason; the device VM's vhost-pci-guestd log has the details" },
};

const char *srv_refusal_fix(const char *reason)
{
    for (size_t i = 0; i < G_N_ELEMENTS(fixes); i++)
        if (strstr(reason, fixes[i].match))
            return fixes[i].fix;
    return fixes[G_N_ELEMENTS(fixes) - 1].fix;
}

void srv_refusal_note(struct srv_refusals *rs, const char *client, const char *request,
                      uint64_t seq, uint64_t result, const char *reason)
{
    struct srv_refusal *r = &rs->r[rs->next];
    rs->next = (rs->next + 1) % SRV_REFUSALS_KEPT;
    rs->total++;
    r->when_us = g_get_monotonic_time();
    g_strlcpy(r->client, client, sizeof(r->client));
    g_strlcpy(r->request, request, sizeof(r->request));
    r->seq = seq;
    r->result = result;
    g_strlcpy(r->reason, reason ? reason : "", sizeof(r->reason));
    r->fix = srv_refusal_fix(r->reason);
}

const struct srv_refusal *srv_refusal_get(const struct srv_refusals *rs, unsigned i)
{
    unsigned kept = rs->total < SRV_REFUSALS_KEPT ? (unsigned)rs->total : SRV_REFUSALS_KEPT;
    if (i >= kept)
        return NULL;
    unsigned first = rs->total < SRV_REFUSALS_KEPT ? 0 : rs->next;
    return &rs->r[(first + i) % SRV_REFUSALS_KEPT];
}
