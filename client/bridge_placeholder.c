/*
 * bridge_placeholder.c - --features-from-device (bridge_priv.h): the device VM's
 * driver answers FEATURE_BITS before the frontend's first GET_FEATURES is answered.
 *
 * Why: QEMU asks GET_FEATURES when the driver VM starts, long before it sends memory,
 * and refuses a backend that later offers fewer features than its guest acked ("vhost
 * lacks feature mask", QEMU 7.2 and 10.0), so the renegotiation round of spec 1.5.1.1
 * after the frontend started cannot be carried out with QEMU. A server without a
 * device for our client_uuid can only answer with the protocol's set (DESIGN 4,
 * feature timing). So, on connecting to the server, the bridge runs the spec's
 * handshake for a placeholder: MEMORY_INFO(ADD) of a small sealed memfd of its own
 * (BR_PH_SIZE at BR_PH_GPA + a slot per device_id, far from any frontend address)
 * creates the device,
 * FEATURE_BITS(offer) then goes to the device VM's driver, whose FEATURE_BITS_ACK is
 * final; when it accepts less, the bridge "re-negotiates with its driver" by offering
 * the frontend only the accepted bits and confirms them with FEATURE_BITS_ACK
 * (bridge_transitions.c, h_features_ack). Once the frontend's own memory is on the
 * server, MEMORY_INFO(DEL) removes the placeholder: the device keeps only the
 * frontend's memory (the server clones the device when that does not fit the BAR it
 * sized for the placeholder).
 *
 * Security model: the placeholder is our own memory; nothing here reads peer input
 * beyond the ACK's status and reason, which are only logged.
 */
#include "bridge_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void br_ph_init(struct br *br)
{
    struct br_placeholder *ph = &br->ph;
    ph->fd = -1;
    ph->state = BR_PH_NONE;
    if (!br->cfg.features_from_device)
        return;
    int fd = memfd_create("vhost-pci-client-placeholder", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)BR_PH_SIZE) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        ph->create_errno = errno;
        if (fd >= 0)
            close(fd);
        return;
    }
    ph->fd = fd;
}

void br_ph_close(struct br *br)
{
    vp_close_fd(&br->ph.fd);
}

/** The placeholder as a region (its fd lent). */
static struct vp_region ph_region(const struct br *br)
{
    return (struct vp_region){ .gpa = BR_PH_GPA + (br_dev_id(br) & 0xfffff) * BR_PH_SIZE,
                               .size = BR_PH_SIZE, .mmap_offset = 0, .fd = br->ph.fd };
}

/** Fire-and-forget MEMORY_INFO(DEL) of the placeholder region. */
static void br_ph_send_del(struct br *br)
{
    br->regions[0] = ph_region(br);
    br->regions[0].fd = -1;
    br_emit(br, &(struct br_action){ .type = BR_ACT_SEND_MEMORY, .token = br_new_token(br),
                                     .op = VP_OP_DEL, .nregions = 1, .regions = br->regions });
}

bool br_ph_start(struct br *br)
{
    struct br_placeholder *ph = &br->ph;
    if (!br->cfg.features_from_device)
        return false;
    if (ph->fd < 0) {
        br_log(br, BR_LOG_WARNING, "--features-from-device: no placeholder memory (memfd: "
               "%s): the server answers FEATURE_BITS without the device VM's driver",
               strerror(ph->create_errno));
        return false;
    }
    if (br->mem.t.n) /* the frontend's memory exists: its handshake carries the features */
        return false;
    ph->token = br_new_token(br);
    ph->state = BR_PH_ADDING;
    br->regions[0] = ph_region(br);
    br_log(br, BR_LOG_MESSAGE, "--features-from-device: MEMORY_INFO(ADD) of a placeholder "
           "region (gpa 0x%" PRIx64 " size 0x%" PRIx64 ") so that the device VM's driver "
           "answers FEATURE_BITS before the frontend negotiates", br->regions[0].gpa,
           br->regions[0].size);
    br_emit(br, &(struct br_action){ .type = BR_ACT_SEND_MEMORY, .token = ph->token,
                                     .op = VP_OP_ADD, .nregions = 1, .regions = br->regions });
    return true;
}

bool br_ph_mem_ack(struct br *br, const struct br_event *ev)
{
    struct br_placeholder *ph = &br->ph;
    if (ph->state != BR_PH_ADDING || ev->token == 0 || ev->token != ph->token)
        return false;
    ph->token = 0;
    if (ev->status != BR_OK) {
        /* Without an answer the device VM's driver may still take the region late
         * (server/jobs.h: a timed-out job finishes silently). A DEL queues behind the
         * ADD on the tenant's job queue: it undoes it, or fails harmlessly. */
        bool late = ev->status == BR_NO_ANSWER && br->link_up;
        ph->state = BR_PH_NONE;
        br_log(br, BR_LOG_WARNING, "--features-from-device: the placeholder region was not "
               "taken (%s): FEATURE_BITS is answered without the device VM's driver, and a "
               "renegotiation may follow the frontend's start%s", br_why(ev),
               late ? "; MEMORY_INFO(DEL) of the placeholder in case the device VM takes "
               "it late" : "");
        if (late)
            br_ph_send_del(br);
        br_send_offer(br, false);
        return true;
    }
    ph->state = BR_PH_HELD;
    br_log(br, BR_LOG_MESSAGE, "--features-from-device: the device VM holds the placeholder "
           "region: FEATURE_BITS 0x%" PRIx64 " to its driver", br->cfg.offer);
    br_send_offer(br, true);
    if (br->mirror.t.n) /* the frontend's memory got there meanwhile */
        br_ph_retire(br);
    return true;
}

void br_ph_retire(struct br *br)
{
    struct br_placeholder *ph = &br->ph;
    if (ph->state != BR_PH_HELD || !br->link_up)
        return;
    ph->state = BR_PH_NONE;
    br_log(br, BR_LOG_INFO, "--features-from-device: the frontend's memory is on the device "
           "VM: MEMORY_INFO(DEL) of the placeholder region");
    br_ph_send_del(br);
}

void br_ph_forget(struct br *br)
{
    br->ph.state = BR_PH_NONE;
    br->ph.token = 0;
}
