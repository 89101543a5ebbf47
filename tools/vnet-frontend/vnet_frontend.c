/*
 * vnet_frontend.c - a userspace virtio-net frontend playing a driver VM
 * (vnet_frontend.h; virtio 1.0 5.1, DESIGN sections 4 and 6).
 *
 * Security model: the device side (vhost-pci-guestd, through the shared rings) is
 * another process that may misbehave. vp_vring's driver side keeps private shadows
 * (free list, chain heads, tokens) and breaks on a used id it did not hand out; here
 * every used length is clamped against the buffer it names, num_buffers is checked
 * against what was posted, and a frame that would overflow the caller's buffer is an
 * error. Any such error makes the frontend unusable, never crashes the process.
 */
#include "vnet_frontend.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vp_wire.h"

#define VNET_DEFAULT_FEATURES                                                   \
    ((1ULL << VP_VIRTIO_F_VERSION_1) | (1ULL << VP_VIRTIO_NET_F_MRG_RXBUF) |   \
     (1ULL << VP_VIRTIO_F_RING_EVENT_IDX))
#define HDR_SLOT 16               /* bytes reserved per separate header */
#define RX 0
#define TX 1

G_DEFINE_QUARK(vnet-frontend-error-quark, vnet_fe_error)

/* ------------------------------- memory ------------------------------- */

static int make_memfd(gsize size, guint8 **map, GError **error)
{
    int fd = memfd_create("vnet-frontend", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        g_set_error(error, VNET_FE_ERROR, 0, "memfd of %zu bytes: %s", size, g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        g_set_error(error, VNET_FE_ERROR, 0, "mmap: %s", g_strerror(errno));
        close(fd);
        return -1;
    }
    *map = p;
    return fd;
}

static gboolean is_pow2(guint64 v) { return v && !(v & (v - 1)); }

VnetVm *vnet_vm_new(const char *server_path, const guint8 *uuid, gsize ram_size,
                    GError **error)
{
    if (ram_size < (1u << 20) || ram_size % (1u << 20)) {
        g_set_error(error, VNET_FE_ERROR, 0, "RAM size %zu is not a multiple of 1 MiB >= 1 MiB",
                    ram_size);
        return NULL;
    }
    VnetVm *vm = g_new0(VnetVm, 1);
    vm->timeout_ms = VP_CLIENT_DEFAULT_TIMEOUT_MS;
    for (guint i = 0; i < VNET_VM_MAX_REGIONS; i++)
        vm->regions[i].fd = -1;
    VnetRegion *r = &vm->regions[0];
    r->fd = make_memfd(ram_size, &r->map, error);
    if (r->fd < 0) {
        g_free(vm);
        return NULL;
    }
    r->gpa = 0;
    r->size = ram_size;
    r->used = 4096; /* gpa 0 is never handed out */
    vm->nregions = 1;
    vm->client = vp_client_connect(server_path, uuid, error);
    if (!vm->client) {
        vnet_vm_free(vm);
        return NULL;
    }
    vp_client_get_uuid_string(vm->client, vm->uuid);
    return vm;
}

void vnet_vm_free(VnetVm *vm)
{
    if (!vm)
        return;
    if (vm->client) {
        vp_client_close(vm->client);
        vp_client_unref(vm->client);
    }
    for (guint i = 0; i < vm->nregions; i++) {
        VnetRegion *r = &vm->regions[i];
        if (r->map)
            munmap(r->map, r->size);
        vp_close_fd(&r->fd);
    }
    g_free(vm);
}

static struct vp_region region_msg(const VnetRegion *r)
{
    return (struct vp_region){ .gpa = r->gpa, .size = r->size, .mmap_offset = 0, .fd = r->fd };
}

int vnet_vm_add_memory(VnetVm *vm, guint64 gpa, gsize size, GError **error)
{
    if (vm->nregions >= VNET_VM_MAX_REGIONS) {
        g_set_error(error, VNET_FE_ERROR, 0, "too many regions");
        return -1;
    }
    VnetRegion *r = &vm->regions[vm->nregions];
    r->fd = make_memfd(size, &r->map, error);
    if (r->fd < 0)
        return -1;
    r->gpa = gpa;
    r->size = size;
    r->used = gpa ? 0 : 4096;
    struct vp_region m = region_msg(r);
    if (!vp_client_memory_add_sync(vm->client, &m, 1, vm->timeout_ms, NULL, error)) {
        munmap(r->map, r->size);
        r->map = NULL;
        vp_close_fd(&r->fd);
        return -1;
    }
    r->present = TRUE;
    return (int)vm->nregions++;
}

gboolean vnet_vm_del_memory(VnetVm *vm, guint idx, GError **error)
{
    if (idx >= vm->nregions || !vm->regions[idx].present) {
        g_set_error(error, VNET_FE_ERROR, 0, "no region %u", idx);
        return FALSE;
    }
    struct vp_region m = region_msg(&vm->regions[idx]);
    m.fd = -1;
    if (!vp_client_memory_del_sync(vm->client, &m, 1, vm->timeout_ms, NULL, error))
        return FALSE;
    vm->regions[idx].present = FALSE;
    return TRUE;
}

gboolean vnet_vm_readd_memory(VnetVm *vm, guint idx, GError **error)
{
    if (idx >= vm->nregions || vm->regions[idx].present) {
        g_set_error(error, VNET_FE_ERROR, 0, "region %u is not deleted", idx);
        return FALSE;
    }
    struct vp_region m = region_msg(&vm->regions[idx]);
    if (!vp_client_memory_add_sync(vm->client, &m, 1, vm->timeout_ms, NULL, error))
        return FALSE;
    vm->regions[idx].present = TRUE;
    return TRUE;
}

guint64 vnet_vm_alloc(VnetVm *vm, guint idx, guint64 size, guint64 align)
{
    if (idx >= vm->nregions || !size || !is_pow2(align))
        return 0;
    VnetRegion *r = &vm->regions[idx];
    guint64 off = (r->used + align - 1) & ~(align - 1);
    if (off > r->size || size > r->size - off)
        return 0;
    r->used = off + size;
    return r->gpa + off;
}

void *vnet_vm_ptr(VnetVm *vm, guint64 gpa, guint64 len)
{
    for (guint i = 0; i < vm->nregions; i++) {
        VnetRegion *r = &vm->regions[i];
        if (r->map && gpa >= r->gpa && vp_range_ok(gpa - r->gpa, len, r->size))
            return r->map + (gpa - r->gpa);
    }
    return NULL;
}

/* ------------------------------- frontend ------------------------------- */

static int fe_fail(VnetFe *fe, GError **error, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static int fe_fail(VnetFe *fe, GError **error, const char *fmt, ...)
{
    if (!fe->failed) {
        va_list ap;
        va_start(ap, fmt);
        g_vsnprintf(fe->why, sizeof(fe->why), fmt, ap);
        va_end(ap);
        fe->failed = TRUE;
    }
    g_set_error(error, VNET_FE_ERROR, 0, "frontend %" G_GUINT64_FORMAT ": %s",
                fe->cfg.device_id, fe->why);
    return -1;
}

static void *gptr(VnetFe *fe, guint64 gpa, guint64 len)
{
    void *p = vnet_vm_ptr(fe->vm, gpa, len);
    g_assert(p); /* our own allocations */
    return p;
}

static int ring_init(VnetFe *fe, guint qi)
{
    VnetFeQueue *q = &fe->q[qi];
    struct vp_vring_mem mem = {
        .desc = gptr(fe, q->desc_gpa, vp_vring_desc_size(fe->cfg.qsize)),
        .avail = gptr(fe, q->avail_gpa, vp_vring_avail_size(fe->cfg.qsize)),
        .used = gptr(fe, q->used_gpa, vp_vring_used_size(fe->cfg.qsize)),
        .num = fe->cfg.qsize,
    };
    return vp_vring_drv_init(&q->vr, &mem,
                             fe->features & (1ULL << VP_VIRTIO_F_RING_EVENT_IDX));
}

static void set_features(VnetFe *fe, guint64 f)
{
    fe->features = f;
    fe->mrg = (f >> VP_VIRTIO_NET_F_MRG_RXBUF) & 1;
    fe->hdr_len = (fe->mrg || ((f >> VP_VIRTIO_F_VERSION_1) & 1)) ? 12 : 10;
}

static void kick(VnetFe *fe, guint qi)
{
    VnetFeQueue *q = &fe->q[qi];
    if (vp_vring_drv_kick_prepare(&q->vr)) {
        guint64 one = 1;
        if (write(q->kick_fd, &one, sizeof(one)) == sizeof(one))
            q->kicks++;
    }
}

/* Post receive chain @i (not published until kick()). */
static int rx_post(VnetFe *fe, guint i)
{
    struct vp_vring_seg s[2];
    guint n = 0;
    if (!fe->mrg)
        s[n++] = (struct vp_vring_seg){ fe->rx_hdr_gpa + (guint64)i * HDR_SLOT, fe->hdr_len, true };
    s[n++] = (struct vp_vring_seg){ fe->rx_gpa + (guint64)i * fe->cfg.rx_buf_size,
                                    fe->cfg.rx_buf_size, true };
    int r = vp_vring_drv_add(&fe->q[RX].vr, s, 0, n, GUINT_TO_POINTER(i + 1));
    if (r == 0)
        fe->rx_posted++;
    return r;
}

static void tx_slots_init(VnetFe *fe)
{
    fe->tx_nfree = 0;
    for (guint i = fe->tx_nslots; i-- > 0;) {
        fe->tx_next[i] = -1;
        fe->tx_free[fe->tx_nfree++] = (guint16)i;
    }
}

static void tx_area_set(VnetFe *fe, guint64 gpa)
{
    fe->tx_gpa = gpa;
    fe->tx_hdr_gpa = gpa + (guint64)fe->tx_nslots * fe->cfg.tx_slot_size;
    fe->tx_ptr = gptr(fe, fe->tx_gpa, (guint64)fe->tx_nslots * fe->cfg.tx_slot_size);
    fe->tx_hdr_ptr = gptr(fe, fe->tx_hdr_gpa, (guint64)fe->tx_nslots * HDR_SLOT);
}

guint64 vnet_fe_tx_area_size(const VnetFe *fe)
{
    return (guint64)fe->tx_nslots * (fe->cfg.tx_slot_size + HDR_SLOT);
}

/* One queue pair's state: rings, buffers and eventfds in the VM's RAM (@c already has
 * its defaults), not announced yet. @index: the pair number (call fds of custom_call
 * are for pair 0 only). NULL with @error. */
static VnetFe *fe_alloc(VnetVm *vm, const VnetFeConfig *c, guint index, GError **error)
{
    VnetFe *fe = g_new0(VnetFe, 1);
    fe->vm = vm;
    fe->cfg = *c;
    set_features(fe, c->features);
    for (guint i = 0; i < 2; i++)
        fe->q[i].kick_fd = fe->q[i].call_fd = -1;
    fe->tx_nslots = c->qsize;
    fe->tx_next = g_new(gint32, fe->tx_nslots);
    fe->tx_free = g_new(guint16, fe->tx_nslots);
    fe->scratch = g_malloc(VNET_FE_MAX_FRAME + 64);

    /* Rings and buffers in RAM (region 0), as a driver would allocate them. */
    guint64 qs = c->qsize;
    for (guint i = 0; i < 2; i++) {
        VnetFeQueue *q = &fe->q[i];
        q->desc_gpa = vnet_vm_alloc(vm, 0, vp_vring_desc_size(qs), 4096);
        q->avail_gpa = vnet_vm_alloc(vm, 0, vp_vring_avail_size(qs), 4096);
        q->used_gpa = vnet_vm_alloc(vm, 0, vp_vring_used_size(qs), 4096);
        q->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        q->call_fd = c->custom_call && index == 0 ? fcntl(c->call_fd[i], F_DUPFD_CLOEXEC, 0)
                                                  : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    }
    fe->rx_gpa = vnet_vm_alloc(vm, 0, (guint64)c->rx_bufs * c->rx_buf_size, 64);
    fe->rx_hdr_gpa = vnet_vm_alloc(vm, 0, (guint64)c->rx_bufs * HDR_SLOT, 64);
    guint64 txa = vnet_vm_alloc(vm, 0, vnet_fe_tx_area_size(fe), 64);
    if (!fe->q[0].desc_gpa || !fe->q[0].avail_gpa || !fe->q[0].used_gpa ||
        !fe->q[1].desc_gpa || !fe->q[1].avail_gpa || !fe->q[1].used_gpa || !fe->rx_gpa ||
        !fe->rx_hdr_gpa || !txa) {
        g_set_error(error, VNET_FE_ERROR, 0, "RAM too small for the rings and buffers");
        vnet_fe_free(fe);
        return NULL;
    }
    if (fe->q[0].kick_fd < 0 || fe->q[0].call_fd < 0 || fe->q[1].kick_fd < 0 ||
        fe->q[1].call_fd < 0) {
        g_set_error(error, VNET_FE_ERROR, 0, "eventfd: %s", g_strerror(errno));
        vnet_fe_free(fe);
        return NULL;
    }
    tx_area_set(fe, txa);
    tx_slots_init(fe);
    if (ring_init(fe, RX) < 0 || ring_init(fe, TX) < 0) {
        g_set_error(error, VNET_FE_ERROR, 0, "vring init failed");
        vnet_fe_free(fe);
        return NULL;
    }
    return fe;
}

/* After the handshake: set the rings up again when the features were renegotiated,
 * post the receive buffers. */
static gboolean fe_go(VnetFe *fe, guint64 final, GError **error)
{
    VnetFeConfig *c = &fe->cfg;
    fe->started = TRUE;
    if (final != fe->features) {
        /* Renegotiated: nothing is posted yet, set the rings up for the final bits. */
        set_features(fe, final);
        vp_vring_drv_destroy(&fe->q[RX].vr);
        vp_vring_drv_destroy(&fe->q[TX].vr);
        if (ring_init(fe, RX) < 0 || ring_init(fe, TX) < 0) {
            g_set_error(error, VNET_FE_ERROR, 0, "vring init failed");
            return FALSE;
        }
        if (!fe->mrg && c->rx_bufs > c->qsize / 2)
            c->rx_bufs = c->qsize / 2;
    }
    for (guint i = 0; i < c->rx_bufs; i++)
        g_assert_cmpint(rx_post(fe, i), ==, 0);
    kick(fe, RX);
    return TRUE;
}

VnetFe *vnet_fe_new(VnetVm *vm, const VnetFeConfig *cfg, GError **error)
{
    VnetFeConfig c = *cfg;
    if (!c.device_id)
        c.device_id = 1;
    if (!c.qsize)
        c.qsize = 256;
    if (!c.pairs)
        c.pairs = 1;
    if (!c.features && !c.no_features)
        c.features = VNET_DEFAULT_FEATURES;
    if (!c.rx_buf_size)
        c.rx_buf_size = 2048;
    if (!c.tx_slot_size)
        c.tx_slot_size = 2048;
    gboolean mrg = (c.features >> VP_VIRTIO_NET_F_MRG_RXBUF) & 1;
    if (!c.rx_bufs)
        c.rx_bufs = mrg ? c.qsize : c.qsize / 2;
    if (!is_pow2(c.qsize) || c.qsize > 32768 || c.rx_bufs > c.qsize ||
        c.rx_buf_size < 64 || c.tx_slot_size < 64 || c.pairs > VNET_FE_MAX_PAIRS) {
        g_set_error(error, VNET_FE_ERROR, 0, "bad frontend configuration");
        return NULL;
    }
    VnetFe *fe = fe_alloc(vm, &c, 0, error);
    if (!fe)
        return NULL;
    for (guint i = 1; i < c.pairs; i++) {
        fe->pair[i] = fe_alloc(vm, &c, i, error);
        if (!fe->pair[i]) {
            vnet_fe_free(fe);
            return NULL;
        }
    }
    fe->pair[0] = fe;

    struct vp_device_info di;
    vp_device_info_init(&di);
    di.op = VP_OP_ADD;
    di.device_type = VP_DEV_NET;
    di.device_id = c.device_id;
    di.nvirtqs = 2 * c.pairs;
    for (guint i = 0; i < di.nvirtqs; i++) {
        const VnetFeQueue *q = &fe->pair[i / 2]->q[i % 2];
        di.virtqs[i] = (struct vp_virtq){
            .index = i, .num = c.qsize, .desc = q->desc_gpa, .avail = q->avail_gpa,
            .used = q->used_gpa, .last_avail_idx = 0, .kick_fd = q->kick_fd,
            .call_fd = q->call_fd,
        };
    }
    guint64 final = c.features;
    if (!vm->ram_sent) {
        struct vp_region ram = region_msg(&vm->regions[0]);
        VpClientHandshake hs;
        if (!vp_client_handshake_sync(vm->client, &ram, 1, c.features, &di, vm->timeout_ms,
                                      NULL, NULL, &hs, error)) {
            vnet_fe_free(fe);
            return NULL;
        }
        vm->ram_sent = TRUE;
        vm->regions[0].present = TRUE;
        vm->features = final = hs.final_features;
    } else {
        if (!vp_client_device_add_sync(vm->client, &di, vm->timeout_ms, NULL, error)) {
            vnet_fe_free(fe);
            return NULL;
        }
        final = c.features & vm->features;
    }
    for (guint i = 0; i < c.pairs; i++) {
        if (!fe_go(fe->pair[i], final, error)) {
            vnet_fe_free(fe);
            return NULL;
        }
    }
    return fe;
}

VnetFe *vnet_fe_pair(VnetFe *fe, guint i)
{
    return i < fe->cfg.pairs ? fe->pair[i] : NULL;
}

gboolean vnet_fe_del(VnetFe *fe, guint16 *rx_idx, guint16 *tx_idx, GError **error)
{
    VpClientReply reply;
    memset(&reply, 0, sizeof(reply));
    if (!vp_client_device_del_sync(fe->vm->client, VP_DEV_NET, fe->cfg.device_id,
                                   fe->vm->timeout_ms, &reply, error))
        return FALSE;
    fe->started = FALSE;
    for (guint i = 0; i < reply.ack.npositions && i < VP_MAX_VIRTQS; i++) {
        if (reply.ack.positions[i].index == RX && rx_idx)
            *rx_idx = reply.ack.positions[i].last_avail_idx;
        if (reply.ack.positions[i].index == TX && tx_idx)
            *tx_idx = reply.ack.positions[i].last_avail_idx;
    }
    return TRUE;
}

void vnet_fe_free(VnetFe *fe)
{
    if (!fe)
        return;
    for (guint i = 1; i < VNET_FE_MAX_PAIRS; i++) {
        if (fe->pair[i] && fe->pair[i] != fe)
            vnet_fe_free(fe->pair[i]);
    }
    for (guint i = 0; i < 2; i++) {
        vp_vring_drv_destroy(&fe->q[i].vr);
        vp_close_fd(&fe->q[i].kick_fd);
        vp_close_fd(&fe->q[i].call_fd);
    }
    g_free(fe->tx_next);
    g_free(fe->tx_free);
    g_free(fe->scratch);
    g_free(fe);
}

/* ------------------------------- transmit ------------------------------- */

int vnet_fe_reclaim(VnetFe *fe, GError **error)
{
    if (fe->failed)
        return fe_fail(fe, error, "unusable");
    int n = 0;
    for (;;) {
        void *tok = NULL;
        uint32_t len = 0;
        int r = vp_vring_drv_get_used(&fe->q[TX].vr, &tok, &len);
        if (r == 0)
            break;
        if (r < 0)
            return fe_fail(fe, error, "transmitq: %s", fe->q[TX].vr.why);
        guint slot = GPOINTER_TO_UINT(tok) - 1;
        if (slot >= fe->tx_nslots)
            return fe_fail(fe, error, "transmitq: bad token");
        for (gint32 s = (gint32)slot; s >= 0;) {
            gint32 nx = fe->tx_next[s];
            fe->tx_next[s] = -1;
            fe->tx_free[fe->tx_nfree++] = (guint16)s;
            s = nx;
        }
        fe->tx_inflight--;
        n++;
    }
    return n;
}

int vnet_fe_try_send(VnetFe *fe, const void *frame, gsize len, GError **error)
{
    if (fe->failed)
        return fe_fail(fe, error, "unusable");
    if (len == 0 || len > VNET_FE_MAX_FRAME) {
        g_set_error(error, VNET_FE_ERROR, 0, "frame of %zu bytes", len);
        return -1;
    }
    const VnetFeConfig *c = &fe->cfg;
    gboolean sep = c->tx_hdr_separate;
    guint64 body = sep ? len : len + fe->hdr_len;
    guint nslots = (guint)((body + c->tx_slot_size - 1) / c->tx_slot_size);
    guint ndesc = nslots + (sep ? 1 : 0);
    if (ndesc > c->qsize || nslots > fe->tx_nslots) {
        g_set_error(error, VNET_FE_ERROR, 0, "frame of %zu bytes needs %u descriptors, "
                    "the ring has %u", len, ndesc, c->qsize);
        return -1;
    }
    if (fe->tx_nfree < nslots || vp_vring_drv_num_free(&fe->q[TX].vr) < ndesc) {
        if (vnet_fe_reclaim(fe, error) < 0)
            return -1;
        if (fe->tx_nfree < nslots || vp_vring_drv_num_free(&fe->q[TX].vr) < ndesc)
            return 0;
    }
    struct vp_vring_seg segs[VNET_FE_MAX_FRAME / 64 + 2];
    guint n = 0;
    guint8 hdr[12] = { 0 }; /* no offloads: flags 0, GSO_NONE, num_buffers 0 on transmit */
    gint32 first = -1, prev = -1;
    const guint8 *src = frame;
    gsize hdr_left = sep ? 0 : fe->hdr_len, data_left = len;
    for (guint k = 0; k < nslots; k++) {
        guint16 s = fe->tx_free[--fe->tx_nfree];
        if (first < 0)
            first = s;
        else
            fe->tx_next[prev] = s;
        fe->tx_next[s] = -1;
        prev = s;
        guint8 *dst = fe->tx_ptr + (guint64)s * c->tx_slot_size;
        gsize room = c->tx_slot_size, put = 0;
        if (hdr_left) {
            memcpy(dst, hdr, hdr_left);
            put = hdr_left;
            hdr_left = 0;
        }
        gsize d = MIN(room - put, data_left);
        memcpy(dst + put, src, d);
        src += d;
        data_left -= d;
        put += d;
        segs[n++] = (struct vp_vring_seg){ fe->tx_gpa + (guint64)s * c->tx_slot_size,
                                           (uint32_t)put, false };
    }
    if (sep) {
        guint8 *h = fe->tx_hdr_ptr + (guint64)first * HDR_SLOT;
        memcpy(h, hdr, fe->hdr_len);
        memmove(segs + 1, segs, n * sizeof(segs[0]));
        segs[0] = (struct vp_vring_seg){ fe->tx_hdr_gpa + (guint64)first * HDR_SLOT,
                                         fe->hdr_len, false };
        n++;
    }
    int r = vp_vring_drv_add(&fe->q[TX].vr, segs, n, 0, GUINT_TO_POINTER((guint)first + 1));
    if (r < 0)
        return fe_fail(fe, error, "transmitq add: %s", g_strerror(-r));
    fe->tx_inflight++;
    fe->tx_frames++;
    kick(fe, TX);
    return 1;
}

int vnet_fe_send(VnetFe *fe, const void *frame, gsize len, int timeout_ms, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    for (;;) {
        int r = vnet_fe_try_send(fe, frame, len, error);
        if (r != 0)
            return r;
        gint64 left = deadline - g_get_monotonic_time();
        if (left <= 0)
            return 0;
        vnet_fe_wait(fe, TX, (int)MAX(1, left / 1000));
    }
}

/* ------------------------------- receive ------------------------------- */

/* Take one used receive chain: its index and the data bytes after the header
 * (*@data, *@dlen), *@nbufs from the header when @first. */
static int rx_take(VnetFe *fe, gboolean first, guint *idx, const guint8 **data, gsize *dlen,
                   guint *nbufs, GError **error)
{
    void *tok = NULL;
    uint32_t len = 0;
    int r = vp_vring_drv_get_used(&fe->q[RX].vr, &tok, &len);
    if (r <= 0)
        return r < 0 ? fe_fail(fe, error, "receiveq: %s", fe->q[RX].vr.why) : 0;
    guint i = GPOINTER_TO_UINT(tok) - 1;
    if (i >= fe->cfg.rx_bufs)
        return fe_fail(fe, error, "receiveq: bad token");
    fe->rx_posted--;
    *idx = i;
    guint8 *buf = fe->vm->regions[0].map + (fe->rx_gpa + (guint64)i * fe->cfg.rx_buf_size);
    if (fe->mrg) {
        if (len > fe->cfg.rx_buf_size)
            return fe_fail(fe, error, "receiveq: used length %u > buffer %u", len,
                           fe->cfg.rx_buf_size);
        if (first) {
            if (len < fe->hdr_len)
                return fe_fail(fe, error, "receiveq: used length %u < header", len);
            guint16 nb = vp_get_le16(buf + 10);
            if (nb == 0 || nb > fe->cfg.rx_bufs)
                return fe_fail(fe, error, "receiveq: num_buffers %u (posted %u)", nb,
                               fe->cfg.rx_bufs);
            *nbufs = nb;
            *data = buf + fe->hdr_len;
            *dlen = len - fe->hdr_len;
        } else {
            *data = buf;
            *dlen = len;
        }
        return 1;
    }
    if (len < fe->hdr_len || len - fe->hdr_len > fe->cfg.rx_buf_size)
        return fe_fail(fe, error, "receiveq: used length %u does not fit header + %u", len,
                       fe->cfg.rx_buf_size);
    *nbufs = 1;
    *data = buf;
    *dlen = len - fe->hdr_len;
    return 1;
}

int vnet_fe_try_recv(VnetFe *fe, void *out, gsize cap, gsize *outlen, GError **error)
{
    if (fe->failed)
        return fe_fail(fe, error, "unusable");
    /* A frame whose buffers are not all visible yet is kept in fe->scratch between
     * calls (rx_part_*); the common case copies straight into @out. */
    guint8 *dst = out;
    gsize dcap = cap;
    if (fe->rx_part_bufs) {
        dst = fe->scratch;
        dcap = VNET_FE_MAX_FRAME;
    }
    guint nbufs = fe->rx_part_bufs ? fe->rx_part_bufs : 1;
    guint b = fe->rx_part_done;
    gsize total = fe->rx_part_len;
    gboolean too_big = fe->rx_part_too_big;
    while (b < nbufs) {
        const guint8 *data = NULL;
        gsize dlen = 0;
        guint idx = 0;
        int r = rx_take(fe, b == 0, &idx, &data, &dlen, &nbufs, error);
        if (r < 0)
            return -1;
        if (r == 0) {
            if (b == 0)
                return 0;
            /* Part of a frame: park it in scratch until the rest is published. */
            if (dst != fe->scratch && !too_big)
                memcpy(fe->scratch, dst, total);
            fe->rx_part_bufs = nbufs;
            fe->rx_part_done = b;
            fe->rx_part_len = total;
            fe->rx_part_too_big = too_big;
            kick(fe, RX);
            return 0;
        }
        if (dlen > dcap || total > dcap - dlen)
            too_big = TRUE;
        else
            memcpy(dst + total, data, dlen);
        total += dlen;
        if (rx_post(fe, idx) < 0)
            return fe_fail(fe, error, "receiveq: re-post failed");
        b++;
    }
    kick(fe, RX);
    fe->rx_part_bufs = fe->rx_part_done = 0;
    fe->rx_part_len = 0;
    fe->rx_part_too_big = FALSE;
    if (too_big || total > cap) {
        g_set_error(error, VNET_FE_ERROR, 0, "received frame of %zu bytes > buffer %zu", total,
                    cap);
        return -1;
    }
    if (dst == fe->scratch)
        memcpy(out, fe->scratch, total);
    fe->rx_frames++;
    *outlen = total;
    return 1;
}

gboolean vnet_fe_wait(VnetFe *fe, guint qi, int timeout_ms)
{
    VnetFeQueue *q = &fe->q[qi];
    if (vp_vring_drv_set_notify(&q->vr, true))
        return TRUE;
    struct pollfd p = { .fd = q->call_fd, .events = POLLIN };
    int r = poll(&p, 1, timeout_ms);
    guint64 v;
    if (r > 0 && read(q->call_fd, &v, sizeof(v)) == sizeof(v) && qi == RX)
        fe->rx_interrupts++;
    vp_vring_drv_set_notify(&q->vr, false);
    return r > 0;
}

int vnet_fe_recv(VnetFe *fe, void *buf, gsize cap, gsize *len, int timeout_ms, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    for (;;) {
        int r = vnet_fe_try_recv(fe, buf, cap, len, error);
        if (r != 0)
            return r;
        gint64 left = deadline - g_get_monotonic_time();
        if (left <= 0)
            return 0;
        vnet_fe_wait(fe, RX, (int)MAX(1, MIN(left / 1000, 50)));
    }
}

gboolean vnet_fe_move_tx(VnetFe *fe, guint region, int timeout_ms, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    while (fe->tx_inflight) {
        if (vnet_fe_reclaim(fe, error) < 0)
            return FALSE;
        if (!fe->tx_inflight)
            break;
        if (g_get_monotonic_time() > deadline) {
            g_set_error(error, VNET_FE_ERROR, 0, "%u transmit chains not used in time",
                        fe->tx_inflight);
            return FALSE;
        }
        vnet_fe_wait(fe, TX, 10);
    }
    guint64 gpa = vnet_vm_alloc(fe->vm, region, vnet_fe_tx_area_size(fe), 64);
    if (!gpa) {
        g_set_error(error, VNET_FE_ERROR, 0, "region %u too small", region);
        return FALSE;
    }
    tx_area_set(fe, gpa);
    tx_slots_init(fe);
    return TRUE;
}
