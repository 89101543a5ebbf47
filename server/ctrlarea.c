/*
 * ctrlarea.c - the control area's memfd and the server's fields in it (ctrlarea.h).
 */
#include "ctrlarea.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Fixed control-area layout (offsets the server chooses; DESIGN section 3). */
#define CA_Q0_DESC 0x1000
#define CA_Q0_AVAIL 0x1400
#define CA_Q0_USED 0x1600
#define CA_Q1_DESC 0x2000
#define CA_Q1_AVAIL 0x2400
#define CA_Q1_USED 0x2600
#define CA_BUF_OFF 0x4000
#define CA_BUF_SIZE (2u * VP_CA_QUEUE_NUM * VP_CA_BUF_SLOT)

_Static_assert(CA_Q0_AVAIL >= CA_Q0_DESC + 16 * VP_CA_QUEUE_NUM, "q0 desc");
_Static_assert(CA_Q0_USED >= CA_Q0_AVAIL + 6 + 2 * VP_CA_QUEUE_NUM, "q0 avail");
_Static_assert(CA_Q1_DESC >= CA_Q0_USED + 6 + 8 * VP_CA_QUEUE_NUM, "q0 used");
_Static_assert(CA_Q1_AVAIL >= CA_Q1_DESC + 16 * VP_CA_QUEUE_NUM, "q1 desc");
_Static_assert(CA_Q1_USED >= CA_Q1_AVAIL + 6 + 2 * VP_CA_QUEUE_NUM, "q1 avail");
_Static_assert(CA_BUF_OFF >= CA_Q1_USED + 6 + 8 * VP_CA_QUEUE_NUM, "q1 used");
_Static_assert(CA_BUF_OFF + CA_BUF_SIZE <= VP_CA_SIZE, "pool");
_Static_assert(VP_CA_HEADER_END <= CA_Q0_DESC, "header");

static const uint64_t ring_off[2][3] = { { CA_Q0_DESC, CA_Q0_AVAIL, CA_Q0_USED },
                                         { CA_Q1_DESC, CA_Q1_AVAIL, CA_Q1_USED } };

static void write_header(uint8_t *ca, const uint8_t *uuid)
{
    memcpy(ca + VP_CA_OFF_MAGIC, VP_CA_MAGIC, 8);
    vp_put_le32(ca + VP_CA_OFF_VERSION, VP_CA_VERSION);
    vp_put_le32(ca + VP_CA_OFF_STATUS, 0);
    vp_put_le64(ca + VP_CA_OFF_DEVICE_FEATURES, 0);  /* no local feature bits yet */
    vp_put_le64(ca + VP_CA_OFF_DRIVER_FEATURES, 0);
    memcpy(ca + VP_CA_OFF_PEER_UUID, uuid, VP_UUID_LEN);
    vp_put_le64(ca + VP_CA_OFF_BAR_SIZE, 0);
    vp_put_le32(ca + VP_CA_OFF_NWINDOWS, 0);
    vp_put_le32(ca + VP_CA_OFF_GENERATION, 0);
    for (int i = 0; i < 2; i++) {
        uint8_t *e = ca + VP_CA_OFF_QUEUE + i * VP_CA_QUEUE_SIZE;
        vp_put_le16(e + VP_CA_Q_SIZE, VP_CA_QUEUE_NUM);
        vp_put_le64(e + VP_CA_Q_DESC_OFF, ring_off[i][0]);
        vp_put_le64(e + VP_CA_Q_AVAIL_OFF, ring_off[i][1]);
        vp_put_le64(e + VP_CA_Q_USED_OFF, ring_off[i][2]);
    }
    vp_put_le64(ca + VP_CA_OFF_BUF_OFF, CA_BUF_OFF);
    vp_put_le64(ca + VP_CA_OFF_BUF_SIZE, CA_BUF_SIZE);
}

int srv_ca_create(struct srv_ctrlarea *ca, const uint8_t uuid[VP_UUID_LEN], vp_error *err)
{
    int ret;
    memset(ca, 0, sizeof(*ca));
    ca->fd = memfd_create("vhost-pci-control", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (ca->fd < 0 || ftruncate(ca->fd, VP_CA_SIZE) < 0) {
        ret = vp_fail(err, -errno, "control area memfd: %s", strerror(errno));
        goto fail;
    }
    void *p = mmap(NULL, VP_CA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, ca->fd, 0);
    if (p == MAP_FAILED) {
        ret = vp_fail(err, -errno, "mmap of the control area: %s", strerror(errno));
        goto fail;
    }
    ca->map = p;
    ca->size = VP_CA_SIZE;
    /* Sealed against resizing: a shrink would SIGBUS the device VM's QEMU. */
    if (fcntl(ca->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        ret = vp_fail(err, -errno, "sealing the control area: %s", strerror(errno));
        goto fail;
    }
    write_header(ca->map, uuid);
    return 0;

fail:
    srv_ca_close(ca);
    return ret;
}

void srv_ca_close(struct srv_ctrlarea *ca)
{
    if (ca->map)
        munmap(ca->map, ca->size);
    ca->map = NULL;
    vp_close_fd(&ca->fd);
}

void srv_ca_set_bar_size(struct srv_ctrlarea *ca, uint64_t bar_size)
{
    if (ca->map)
        vp_put_le64(ca->map + VP_CA_OFF_BAR_SIZE, bar_size);
}

void srv_ca_write_windows(struct srv_ctrlarea *ca, uint64_t bar_size,
                          const struct srv_ca_window *w, unsigned n)
{
    if (!ca->map)
        return;
    uint8_t *map = ca->map;
    if (n > VP_MAX_WINDOWS)
        n = VP_MAX_WINDOWS;
    vp_put_le64(map + VP_CA_OFF_BAR_SIZE, bar_size);
    for (unsigned i = 0; i < n; i++) {
        uint8_t *e = map + VP_CA_OFF_WINDOW + i * VP_CA_WINDOW_SIZE;
        memset(e, 0, VP_CA_WINDOW_SIZE);
        vp_put_le16(e + VP_CA_WIN_PCI_DOMAIN, 0);
        e[VP_CA_WIN_BUS] = 0;
        e[VP_CA_WIN_DEVFN] = (uint8_t)w[i].devfn;
        vp_put_le64(e + VP_CA_WIN_BAR_OFFSET, w[i].bar_offset);
        vp_put_le64(e + VP_CA_WIN_SIZE, w[i].size);
    }
    memset(map + VP_CA_OFF_WINDOW + n * VP_CA_WINDOW_SIZE, 0,
           (VP_MAX_WINDOWS - n) * VP_CA_WINDOW_SIZE);
    vp_put_le32(map + VP_CA_OFF_NWINDOWS, n);
    ca->generation++;
    /* Orders the table writes above before the generation the driver polls. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    vp_put_le32(map + VP_CA_OFF_GENERATION, ca->generation);
}

void srv_ca_ring(const struct srv_ctrlarea *ca, unsigned q, struct vp_vring_mem *m)
{
    const uint64_t *o = ring_off[q ? 1 : 0];
    m->desc = ca->map + o[0];
    m->avail = ca->map + o[1];
    m->used = ca->map + o[2];
    m->num = VP_CA_QUEUE_NUM;
}

bool srv_ca_in_pool(uint64_t addr, uint64_t len)
{
    return addr >= CA_BUF_OFF && vp_range_ok(addr - CA_BUF_OFF, len, CA_BUF_SIZE);
}
