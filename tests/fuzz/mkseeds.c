/*
 * mkseeds.c - writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/
 * seed-*): for each target, inputs in its own format (see the comment atop each
 * fuzz-*.c) that play the real sequences, so the fuzzers start deep in the code
 * instead of at the framing checks. Messages are produced by the project's own
 * encoders (vp_send_*, vp_cq_encode) and the rings by vp_vring's driver side.
 *
 *   build/fuzz/mkseeds tests/fuzz/corpus     (make fuzz-seeds)
 *
 * The seeds are checked in; run this again when an input format changes.
 */
#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "vhost_user.h"
#include "vp_controlq.h"
#include "vp_ctrlarea.h"
#include "vp_msg.h"
#include "vp_vring.h"

static const char *root;

static void put8(GByteArray *b, uint8_t v) { g_byte_array_append(b, &v, 1); }
static void put16(GByteArray *b, uint16_t v) { uint8_t x[2]; vp_put_le16(x, v); g_byte_array_append(b, x, 2); }
static void put32(GByteArray *b, uint32_t v) { uint8_t x[4]; vp_put_le32(x, v); g_byte_array_append(b, x, 4); }
static void putn(GByteArray *b, const void *p, size_t n) { g_byte_array_append(b, p, (guint)n); }

static void save(const char *target, const char *name, GByteArray *b)
{
    char *dir = g_strdup_printf("%s/%s", root, target);
    char *path = g_strdup_printf("%s/seed-%s", dir, name);
    g_mkdir_with_parents(dir, 0755);
    GError *e = NULL;
    if (!g_file_set_contents(path, (const char *)b->data, b->len, &e))
        g_error("%s: %s", path, e->message);
    printf("  %s (%u bytes)\n", path, b->len);
    g_free(path);
    g_free(dir);
    g_byte_array_free(b, TRUE);
}

/* Pool fd descriptions for the targets' fz_make_fd(): kind, size index (fuzz.h). */
#define FD_SEALED_64K FZ_FD_MEMFD_SEALED, 3
#define FD_UNSEALED_64K FZ_FD_MEMFD_UNSEALED, 3
#define FD_EVENTFD FZ_FD_EVENTFD, 0

/* ------------------------------------ msg ------------------------------------ */

/* The bytes one vp_send_*() puts on the socket (fds received and closed). */
static GByteArray *wire_of(int (*send)(int sock, void *arg), void *arg)
{
    int sv[2];
    g_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g_assert(send(sv[0], arg) == 0);
    close(sv[0]);
    GByteArray *out = g_byte_array_new();
    for (;;) {
        char buf[4096];
        union {
            char b[CMSG_SPACE(VP_MAX_FDS * sizeof(int))];
            struct cmsghdr align;
        } u;
        struct iovec iov = { buf, sizeof(buf) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                             .msg_controllen = sizeof(u.b) };
        ssize_t n = recvmsg(sv[1], &mh, MSG_CMSG_CLOEXEC);
        if (n <= 0)
            break;
        int fds[VP_MAX_FDS];
        unsigned nfds = 0;
        vp_take_scm_fds(&mh, fds, VP_MAX_FDS, &nfds, NULL);
        vp_close_fds(fds, nfds);
        putn(out, buf, (size_t)n);
    }
    close(sv[1]);
    return out;
}

static struct vp_sock_hdr hdr0 = { .version = VP_MSG_VERSION, .seq = 1,
                                   .uuid = { 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef,
                                             0x80, 1, 2, 3, 4, 5, 6, 7 } };

static int send_mi(int s, void *a) { return vp_send_memory_info(s, &hdr0, a); }
static int send_di(int s, void *a) { return vp_send_device_info(s, &hdr0, a); }
static int send_fb(int s, void *a) { return vp_send_feature_bits(s, &hdr0, *(uint64_t *)a); }

struct ack_arg { uint16_t type; struct vp_ack ack; };
static int send_ack(int s, void *a)
{
    struct ack_arg *x = a;
    return vp_send_ack(s, x->type, &hdr0, &x->ack);
}

/* One "send" step of fuzz-msg: @nfds pool fds (kind, size index pairs). */
static void msg_send(GByteArray *in, const GByteArray *bytes, size_t off, size_t len,
                     unsigned nfds, const uint8_t *fdspec)
{
    g_assert(nfds <= 3);
    put8(in, (uint8_t)(nfds << 2));
    put16(in, (uint16_t)len);
    putn(in, bytes->data + off, len);
    for (unsigned i = 0; i < nfds; i++) {
        put8(in, fdspec[2 * i]);
        put8(in, fdspec[2 * i + 1]);
    }
}

static void msg_whole(GByteArray *in, GByteArray *bytes, unsigned nfds, const uint8_t *fdspec)
{
    msg_send(in, bytes, 0, bytes->len, nfds, fdspec);
    put8(in, 2);                  /* read */
    g_byte_array_free(bytes, TRUE);
}

static void seeds_msg(void)
{
    static const uint8_t sealed[] = { FD_SEALED_64K, FD_SEALED_64K };
    static const uint8_t evs[] = { FD_EVENTFD, FD_EVENTFD, FD_EVENTFD };
    struct vp_memory_info mi;
    vp_memory_info_init(&mi);
    mi.nregions = 1;
    mi.regions[0] = (struct vp_region){ 0x100000, 0x10000, 0, 0 };
    struct vp_device_info di;
    vp_device_info_init(&di);
    di.device_type = VP_DEV_NET;
    di.device_id = 7;
    di.nvirtqs = 1;
    di.virtqs[0] = (struct vp_virtq){ 0, 256, 0x101000, 0x102000, 0x103000, 3, 0, 0 };
    uint64_t bits = VP_NET_FEATURES;

    /* The handshake, then hot-remove and DEL, with the ACKs a client reads. */
    GByteArray *in = g_byte_array_new();
    put8(in, 0);
    msg_whole(in, wire_of(send_mi, &mi), 1, sealed);
    msg_whole(in, wire_of(send_fb, &bits), 0, NULL);
    msg_whole(in, wire_of(send_di, &di), 2, evs);
    struct ack_arg a = { VP_MSG_MEMORY_INFO_ACK, { .result = VP_ACK_ADD_DONE } };
    msg_whole(in, wire_of(send_ack, &a), 0, NULL);
    a = (struct ack_arg){ VP_MSG_FEATURE_BITS_ACK, { .feature_bits = VP_NET_FEATURES } };
    msg_whole(in, wire_of(send_ack, &a), 0, NULL);
    a = (struct ack_arg){ VP_MSG_DEVICE_INFO_ACK, { .result = VP_ACK_DEL_DONE, .device_type = 1,
                                                    .device_id = 7, .npositions = 2 } };
    a.ack.positions[0] = (struct vp_virtq_pos){ 0, 17 };
    a.ack.positions[1] = (struct vp_virtq_pos){ 1, 65535 };
    msg_whole(in, wire_of(send_ack, &a), 0, NULL);
    a = (struct ack_arg){ VP_MSG_MEMORY_INFO_ACK, { .result = VP_ACK_ADD_FAIL } };
    strcpy(a.ack.reason, "region 0: not sealed \xc3\xa9\x01");
    msg_whole(in, wire_of(send_ack, &a), 0, NULL);
    mi.op = VP_OP_DEL;
    msg_whole(in, wire_of(send_mi, &mi), 0, NULL);
    di.op = VP_OP_DEL;
    di.nvirtqs = 0;
    msg_whole(in, wire_of(send_di, &di), 0, NULL);
    put8(in, 3 | 4);              /* eof */
    save("msg", "handshake", in);

    /* Two regions of one file, unsealed (allowed by the flag), header split in two
     * sends with the fds on the second. */
    mi.op = VP_OP_ADD;
    mi.nregions = 2;
    mi.regions[0] = (struct vp_region){ 0, 0x8000, 0, 0 };
    mi.regions[1] = (struct vp_region){ 0x100000, 0x8000, 0x8000, 0 };
    static const uint8_t unsealed[] = { FD_UNSEALED_64K, FD_UNSEALED_64K };
    in = g_byte_array_new();
    put8(in, VP_VALIDATE_ALLOW_UNSEALED);
    GByteArray *w = wire_of(send_mi, &mi);
    msg_send(in, w, 0, 20, 0, NULL);
    msg_send(in, w, 20, w->len - 20, 2, unsealed);
    g_byte_array_free(w, TRUE);
    put8(in, 2);
    save("msg", "split-unsealed", in);

    /* A DEVICE_INFO with 4 queues and 3 fds: one fd too few (fd count mismatch). */
    di.op = VP_OP_ADD;
    di.nvirtqs = 2;
    di.virtqs[1] = (struct vp_virtq){ 1, 256, 0x104000, 0x105000, 0x106000, 0, 0, 0 };
    in = g_byte_array_new();
    put8(in, 0);
    msg_whole(in, wire_of(send_di, &di), 3, evs);
    save("msg", "fd-count", in);
}

/* ---------------------------------- controlq ---------------------------------- */

#define XGPA 0x100000ULL

static void cq_record(GByteArray *in, struct vp_cq_msg *m, uint64_t seq, uint8_t ctl)
{
    uint8_t buf[VP_CA_BUF_SLOT];
    m->version = VP_MSG_VERSION;
    m->seq = seq;
    int len = vp_cq_encode(m, buf, sizeof(buf));
    g_assert(len > 0);
    put8(in, ctl);
    put16(in, (uint16_t)len);
    putn(in, buf, (size_t)len);
}

static void cq_mem(struct vp_cq_msg *m, uint16_t op, uint64_t xgpa, uint64_t size, uint64_t bar)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_MEMORY_INFO;
    m->u.mem.op = op;
    m->u.mem.nregions = 1;
    m->u.mem.regions[0] = (struct vp_cq_region){ xgpa, size, bar };
}

static void cq_net(struct vp_cq_msg *m, uint16_t op, unsigned nq, uint32_t num)
{
    memset(m, 0, sizeof(*m));
    m->type = VP_MSG_DEVICE_INFO;
    m->device_type = VP_DEV_NET;
    m->device_id = 1;
    m->u.dev.op = op;
    m->u.dev.nvirtqs = nq;
    for (unsigned i = 0; i < nq; i++) {
        struct vp_cq_virtq *q = &m->u.dev.virtqs[i];
        q->index = i;
        q->num = num;
        q->desc = XGPA + 0x4000ULL * i;
        q->avail = q->desc + 0x1000;
        q->used = q->desc + 0x2000;
        q->last_avail_idx = (uint16_t)i;
        q->kick_vector = VP_NO_VECTOR;
        q->call_vector = (uint16_t)i;
    }
}

static void seeds_controlq(void)
{
    struct vp_cq_msg m;
    GByteArray *in = g_byte_array_new();
    put8(in, 0);                  /* one plugged 64 KiB window at BAR offset 0 */
    memset(&m, 0, sizeof(m));
    m.type = VP_MSG_FEATURE_BITS;
    m.u.features = VP_NET_FEATURES;
    cq_record(in, &m, 1, 2);
    cq_mem(&m, VP_OP_ADD, XGPA, 0x10000, 0);
    cq_record(in, &m, 2, 2);
    cq_net(&m, VP_OP_ADD, 2, 256);
    cq_record(in, &m, 3, 2);
    cq_net(&m, VP_OP_ADD, 2, 64);  /* changed: stop and start again */
    cq_record(in, &m, 4, 2);
    cq_net(&m, VP_OP_DEL, 0, 0);
    cq_record(in, &m, 5, 2);
    cq_mem(&m, VP_OP_DEL, XGPA, 0x10000, 0);
    cq_record(in, &m, 6, 2);
    save("controlq", "sequence", in);

    /* Three windows (one not plugged), regions in each, ACKs left unread. */
    in = g_byte_array_new();
    put8(in, 0x8a);               /* table from the input, 3 entries; devfns 0x10, 0x11 plugged */
    for (unsigned i = 0; i < 3; i++) {
        put8(in, (uint8_t)i);        /* devfn 0x10 + i */
        put32(in, (uint32_t)(i << 1));  /* BAR offset i * 64 KiB */
        put8(in, 0);                 /* 64 KiB */
    }
    for (unsigned i = 0; i < 3; i++) {
        cq_mem(&m, VP_OP_ADD, XGPA + 0x100000ULL * i, 0x10000, 0x10000ULL * i);
        cq_record(in, &m, 10 + i, 2 | 4);
    }
    memset(&m, 0, sizeof(m));
    m.type = VP_MSG_MEMORY_INFO_ACK;  /* not allowed on the transmitq */
    cq_record(in, &m, 20, 2);
    save("controlq", "windows", in);
}

/* ----------------------------------- vring ----------------------------------- */

/* The fuzz-vring layout of the driver VM's memory (offsets from XGPA). */
#define VQ_NUM 16
#define TX_DESC 0x000
#define TX_AVAIL 0x100
#define TX_USED 0x200
#define RX_DESC 0x300
#define RX_AVAIL 0x400
#define RX_USED 0x500
#define BUFS 0x600
#define MEM_LEN 0x1000

static void seeds_vring_one(const char *name, uint8_t cfg, const uint8_t *ops, size_t nops)
{
    static uint8_t mem[MEM_LEN];
    memset(mem, 0, sizeof(mem));
    bool ei = cfg & 4;
    struct vp_vring_drv tx, rx;
    struct vp_vring_mem tm = { mem + TX_DESC, mem + TX_AVAIL, mem + TX_USED, VQ_NUM };
    struct vp_vring_mem rm = { mem + RX_DESC, mem + RX_AVAIL, mem + RX_USED, VQ_NUM };
    g_assert(vp_vring_drv_init(&tx, &tm, ei) == 0 && vp_vring_drv_init(&rx, &rm, ei) == 0);
    /* Three frames to transmit (header + bytes), the second in two pieces. */
    for (unsigned i = 0; i < 3; i++) {
        uint64_t off = BUFS + 0x100 * i;
        memset(mem + off + 12, 0x41 + i, 100);
        struct vp_vring_seg s[2] = { { XGPA + off, i == 1 ? 60 : 112, false },
                                     { XGPA + off + 60, 52, false } };
        g_assert(vp_vring_drv_add(&tx, s, i == 1 ? 2 : 1, 0, mem) == 0);
    }
    /* Four receive buffers of 256 bytes. */
    for (unsigned i = 0; i < 4; i++) {
        struct vp_vring_seg s = { XGPA + 0x900 + 0x100 * i, 256, true };
        g_assert(vp_vring_drv_add(&rx, &s, 0, 1, mem) == 0);
    }
    vp_vring_drv_kick_prepare(&tx);
    vp_vring_drv_kick_prepare(&rx);
    vp_vring_drv_destroy(&tx);
    vp_vring_drv_destroy(&rx);

    GByteArray *in = g_byte_array_new();
    put8(in, cfg);
    put8(in, 0);                  /* window table: the default */
    put8(in, 0);                  /* one region: window 0 at XGPA */
    put8(in, 0);
    static const uint16_t ring[2][3] = { { RX_DESC, RX_AVAIL, RX_USED },
                                         { TX_DESC, TX_AVAIL, TX_USED } };
    for (unsigned q = 0; q < 2; q++) {
        put8(in, 4);              /* num 16 */
        for (unsigned k = 0; k < 3; k++)
            put16(in, ring[q][k]);
        put16(in, 0);             /* last_avail_idx */
        put8(in, (uint8_t)q);     /* call vector */
    }
    put16(in, MEM_LEN);
    putn(in, mem, MEM_LEN);
    putn(in, ops, nops);
    save("vring", name, in);
}

static void seeds_vring(void)
{
    /* poll, receive 300 bytes in 2 pieces, poke the TX avail idx, poll, re-add the
     * frontend, burst, re-add region 0, features off, poll x4 */
    static const uint8_t ops[] = { 0, 1 | (1 << 3), 44, 1, 2, (TX_AVAIL + 2) & 0xff,
                                   (TX_AVAIL + 2) >> 8, 4, 0, 0, 0, 0, 0, 0, 0,
                                   0, 4, 6, 3 | 8, 5, 7 };
    seeds_vring_one("capture-all-features", 7, ops, sizeof(ops));
    seeds_vring_one("loopback", 8 | 7, ops, sizeof(ops));
    seeds_vring_one("legacy-header-pushback", 4 | (1 << 4), ops, sizeof(ops));
}

/* --------------------------------- vhost-user --------------------------------- */

static void vu_msg(GByteArray *in, uint32_t req, uint32_t flags, const void *payload,
                   uint32_t size, unsigned nfds, const uint8_t *fdspec)
{
    GByteArray *m = g_byte_array_new();
    put32(m, req);
    put32(m, VU_FLAG_VERSION | flags);
    put32(m, size);
    putn(m, payload, size);
    g_assert(nfds <= 3);
    put8(in, (uint8_t)(nfds << 2));
    put16(in, (uint16_t)m->len);
    putn(in, m->data, m->len);
    for (unsigned i = 0; i < nfds; i++) {
        put8(in, fdspec[2 * i]);
        put8(in, fdspec[2 * i + 1]);
    }
    put8(in, 2);                  /* handle */
    g_byte_array_free(m, TRUE);
}

static void vu_u64(GByteArray *in, uint32_t req, uint32_t flags, uint64_t v, unsigned nfds,
                   const uint8_t *fdspec)
{
    uint8_t p[8];
    vp_put_le64(p, v);
    vu_msg(in, req, flags, p, 8, nfds, fdspec);
}

static void vu_state(GByteArray *in, uint32_t req, uint32_t index, uint32_t num)
{
    uint8_t p[8];
    vp_put_le32(p, index);
    vp_put_le32(p + 4, num);
    vu_msg(in, req, 0, p, 8, 0, NULL);
}

#define VU_UADDR 0x7f0000000000ULL

static void vu_region(uint8_t *p, uint64_t gpa, uint64_t size, uint64_t off)
{
    vp_put_le64(p, gpa);
    vp_put_le64(p + 8, size);
    vp_put_le64(p + 16, VU_UADDR + gpa);
    vp_put_le64(p + 24, off);
}

/* QEMU 7.2's start and stop of a virtio-net device (DESIGN section 8). */
static void vu_qemu_sequence(GByteArray *in, bool mem_slots)
{
    static const uint8_t ev[] = { FD_EVENTFD }, mem[] = { FD_SEALED_64K };
    uint64_t pf = (1ULL << VU_PF_REPLY_ACK) | (mem_slots ? 1ULL << VU_PF_CONFIGURE_MEM_SLOTS : 0);
    vu_msg(in, VU_GET_FEATURES, 0, NULL, 0, 0, NULL);
    vu_msg(in, VU_GET_PROTOCOL_FEATURES, 0, NULL, 0, 0, NULL);
    vu_u64(in, VU_SET_PROTOCOL_FEATURES, 0, pf, 0, NULL);
    if (mem_slots)
        vu_msg(in, VU_GET_MAX_MEM_SLOTS, 0, NULL, 0, 0, NULL);
    vu_msg(in, VU_SET_OWNER, 0, NULL, 0, 0, NULL);
    for (uint64_t q = 0; q < 2; q++)
        vu_u64(in, VU_SET_VRING_CALL, 0, q, 1, ev);
    vu_u64(in, VU_SET_FEATURES, 0, VP_NET_FEATURES | (1ULL << VU_F_PROTOCOL_FEATURES), 0, NULL);
    uint8_t p[8 + VU_REGION_SIZE] = { 0 };
    if (mem_slots) {
        vu_region(p + 8, 0, 0x10000, 0);
        vu_msg(in, VU_ADD_MEM_REG, VU_FLAG_NEED_REPLY, p, sizeof(p), 1, mem);
    } else {
        vp_put_le32(p, 1);
        vu_region(p + 8, 0, 0x10000, 0);
        vu_msg(in, VU_SET_MEM_TABLE, VU_FLAG_NEED_REPLY, p, sizeof(p), 1, mem);
    }
    for (uint32_t q = 0; q < 2; q++) {
        vu_state(in, VU_SET_VRING_NUM, q, 64);
        vu_state(in, VU_SET_VRING_BASE, q, 5);
        uint8_t a[40] = { 0 };
        uint64_t base = VU_UADDR + 0x4000ULL * q;
        vp_put_le32(a, q);
        vp_put_le64(a + 8, base);             /* desc */
        vp_put_le64(a + 16, base + 0x2000);   /* used */
        vp_put_le64(a + 24, base + 0x1000);   /* avail */
        vu_msg(in, VU_SET_VRING_ADDR, 0, a, sizeof(a), 0, NULL);
        vu_u64(in, VU_SET_VRING_KICK, 0, q, 1, ev);
        vu_u64(in, VU_SET_VRING_CALL, 0, q, 1, ev);
        vu_state(in, VU_SET_VRING_ENABLE, q, 1);
    }
    if (mem_slots) {
        /* hot-plug a second region, then remove it */
        vu_region(p + 8, 0x100000, 0x10000, 0);
        vu_msg(in, VU_ADD_MEM_REG, VU_FLAG_NEED_REPLY, p, sizeof(p), 1, mem);
        vu_msg(in, VU_REM_MEM_REG, VU_FLAG_NEED_REPLY, p, sizeof(p), 0, NULL);
    }
    for (uint32_t q = 0; q < 2; q++)
        vu_state(in, VU_GET_VRING_BASE, q, 0);
}

static void seeds_vhost_user(void)
{
    GByteArray *in = g_byte_array_new();
    put8(in, 0);                  /* one queue pair, 64 slots */
    put8(in, 0);                  /* callbacks accept at once */
    vu_qemu_sequence(in, true);
    save("vhost-user", "qemu-7.2", in);

    in = g_byte_array_new();
    put8(in, 1);                  /* two queue pairs */
    put8(in, 2 | 4 | 8);          /* everything deferred */
    vu_qemu_sequence(in, true);
    for (uint8_t sub = 0; sub < 4; sub++)
        put8(in, (uint8_t)(3 | (sub << 2)));  /* answer each kind */
    save("vhost-user", "deferred", in);

    in = g_byte_array_new();
    put8(in, 0);
    put8(in, 1);                  /* memory changes refused */
    vu_qemu_sequence(in, false);  /* SET_MEM_TABLE, as DPDK's virtio-user sends it */
    save("vhost-user", "mem-table-refused", in);
}

/* ------------------------------------ qmp ------------------------------------ */

static void qmp_write(GByteArray *in, const char *line)
{
    put8(in, 0);
    put16(in, (uint16_t)(strlen(line) + 2));
    putn(in, line, strlen(line));
    putn(in, "\r\n", 2);
    put8(in, 1);                  /* iterate */
}

static void seeds_qmp(void)
{
    GByteArray *in = g_byte_array_new();
    qmp_write(in, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7},"
                  " \"package\": \"\"}, \"capabilities\": [\"oob\"]}}");
    qmp_write(in, "{\"return\": {}, \"id\": 1}");
    put8(in, 2 | (0 << 2));       /* device_add: id 2 */
    put8(in, 1);
    qmp_write(in, "{\"return\": {}, \"id\": 2}");
    put8(in, 2 | (1 << 2));       /* add-fd: id 3 */
    put8(in, FZ_FD_MEMFD_SEALED);
    put8(in, 3);
    put8(in, 1);
    qmp_write(in, "{\"return\": {\"fd\": 42, \"fdset-id\": 1}, \"id\": 3}");
    put8(in, 2 | (3 << 2) | 0x80); /* wait for DEVICE_DELETED of win0 */
    put8(in, 2 | (4 << 2));       /* device_del win0: id 4 */
    put8(in, 1);
    qmp_write(in, "{\"return\": {}, \"id\": 4}");
    qmp_write(in, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": "
                  "\"DEVICE_DELETED\", \"data\": {\"device\": \"win0\", \"path\": \"/x\"}}");
    put8(in, 2 | (5 << 2));       /* query-pci: id 5 */
    put8(in, 1);
    qmp_write(in, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Duplicate ID\"}, "
                  "\"id\": 5}");
    put8(in, 2 | (2 << 2));       /* getfd: id 6 */
    put8(in, FZ_FD_EVENTFD);
    put8(in, 0);
    put8(in, 1);
    qmp_write(in, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad\"}}");
    save("qmp", "session", in);

    in = g_byte_array_new();
    qmp_write(in, "{\"QMP\": {}}");
    put8(in, 2);                  /* device_add before capabilities are done */
    qmp_write(in, "{\"return\": {}, \"id\": 7}");
    qmp_write(in, "[1, 2");
    save("qmp", "garbage", in);
}

/* ---------------------------------- ivshmem ---------------------------------- */

static void seeds_ivshmem(void)
{
    GByteArray *in = g_byte_array_new();
    put8(in, 1 | (1 << 3));       /* 1 MiB shm, own id 1 */
    /* peer 0: two eventfds; peer 2: a hole and two eventfds */
    put8(in, 0);
    put8(in, 0); put8(in, 2); put8(in, 6); put8(in, 6);
    put8(in, 0);
    put8(in, 2); put8(in, 3); put8(in, 0); put8(in, 6); put8(in, 6);
    put8(in, 1);                  /* QEMU 0 connects */
    put8(in, 2 | 0x80);           /* reads everything */
    put8(in, 7);                  /* checks */
    /* peer 2 grows: the three it holds (same files), two new */
    put8(in, 0);
    put8(in, 2); put8(in, 5); put8(in, 1); put8(in, 1); put8(in, 1); put8(in, 6); put8(in, 6);
    put8(in, 7);
    put8(in, 0);                  /* peer 2 vector 0 replaced by a new file: refused */
    put8(in, 2); put8(in, 1); put8(in, 6);
    put8(in, 5); put8(in, 2); put8(in, 1);   /* notify peer 2 vector 1 */
    put8(in, 1 | 8);              /* QEMU 1 connects: refused */
    put8(in, 2 | 8 | 0x80);
    put8(in, 3);                  /* QEMU 0 talks */
    put8(in, 4);                  /* QEMU 0 goes */
    put8(in, 1 | 8);              /* QEMU 1 connects again: served */
    put8(in, 7 | 8);
    put8(in, 6);
    save("ivshmem", "basic", in);

    in = g_byte_array_new();
    put8(in, 3 | (2 << 3));       /* 12 KiB: not a power of two -> refused */
    save("ivshmem", "bad-shm", in);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    root = argv[1];
    seeds_msg();
    seeds_controlq();
    seeds_vring();
    seeds_vhost_user();
    seeds_qmp();
    seeds_ivshmem();
    return 0;
}
