/* vp_wire.c - names of protocol constants for logs. libc only. */
#include "vp_wire.h"

#include "vp_proto.h"

const char *vp_msg_type_name(unsigned type)
{
    const struct vp_msg_rule *r = vp_proto_rule(type);
    return r ? r->name : "UNKNOWN";
}

const char *vp_ack_result_name(uint64_t result)
{
    static const char *const names[] = { "ADD_DONE", "ADD_FAIL", "DEL_DONE", "DEL_FAIL" };
    return result < 4 ? names[result] : "UNKNOWN";
}

int vp_device_type_valid(uint32_t type)
{
    return (type >= VP_DEV_NET && type <= VP_DEV_BALLOON) || type == VP_DEV_SCSI;
}

const char *vp_device_type_name(uint32_t type)
{
    switch (type) {
    case VP_DEV_NET: return "net";
    case VP_DEV_BLK: return "blk";
    case VP_DEV_CONSOLE: return "console";
    case VP_DEV_ENTROPY: return "entropy";
    case VP_DEV_BALLOON: return "balloon";
    case VP_DEV_SCSI: return "scsi";
    default: return "unknown";
    }
}
