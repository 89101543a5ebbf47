/*
 * main.c - vhost-pci-client: the driver VM's vhost-user backend (DESIGN sections 2, 4
 * and 8). QEMU's virtio-net (-netdev vhost-user) connects to --socket-path; the daemon
 * connects to the device VM's vhost-pci-server (--server) and turns what QEMU sets up
 * into vhost-pci messages, so that the device VM's driver serves the driver VM's
 * virtqueues directly:
 *
 *   daemon start / server (re)connect  FEATURE_BITS(--features)  -> accepted bits
 *   GET_FEATURES                       the accepted bits (+ PROTOCOL_FEATURES, a
 *                                      vhost-user bit never forwarded); deferred until
 *                                      the answer, at most FEATURES_WAIT_MS
 *   the guest starts the device        after HANDSHAKE_SETTLE_MS: MEMORY_INFO(ADD) of
 *   (SET_FEATURES, regions, vrings)    every region, FEATURE_BITS (the negotiated set),
 *                                      DEVICE_INFO(ADD) with the kick/call fds (spec
 *                                      1.5.1.1)
 *   accepted < negotiated              renegotiation round: FEATURE_BITS_ACK(accepted),
 *                                      then QEMU's connection is closed so that it
 *                                      reconnects (reconnect=N) and renegotiates the
 *                                      smaller offer
 *   ADD_MEM_REG / REM_MEM_REG          MEMORY_INFO(ADD/DEL); QEMU's REPLY_ACK is the
 *   (after the first start)            server's verdict: ADD_DONE/DEL_DONE -> success;
 *                                      ADD_FAIL/DEL_FAIL, timeout or a lost connection
 *                                      -> failure (the reason logged at warning), and
 *                                      the refused region is not in the table the
 *                                      next handshake sends (a refused removal keeps
 *                                      it). Only while QEMU's device runs and with
 *                                      --memory-refusal reply (default): while QEMU
 *                                      (re)starts it a failure would fail QEMU's vhost
 *                                      start, so the answer is success (see
 *                                      mem_may_refuse). Without REPLY_ACK negotiated
 *                                      QEMU cannot be told: the core logs it and
 *                                      applies the change (vhost_user.h, mem_added)
 *   new kick/call fd of a running ring DEVICE_INFO(ADD) update (spec 1.6.1.1)
 *   GET_VRING_BASE                     DEVICE_INFO(DEL); answered with the
 *                                      last_avail_idx of DEVICE_INFO_ACK(DEL_DONE); when
 *                                      the DEL fails QEMU's connection is dropped (no
 *                                      error reply exists; QEMU then restores the
 *                                      position from the used index)
 *   QEMU disconnects                   DEVICE_INFO(DEL), MEMORY_INFO(DEL) of everything
 *   SIGINT / SIGTERM                   DEVICE_INFO(DEL), wait for DEL_DONE (bounded), exit
 *   the server connection drops        reconnect with backoff; re-run the handshake
 *                                      when QEMU's device is started
 *   no server answer for GET_FEATURES  after FEATURES_WAIT_MS offer the protocol's set
 *                                      (VP_NET_FEATURES & --features); the handshake's
 *                                      FEATURE_BITS round settles it
 *
 * One QEMU connection at a time (a second is refused), one frontend (device_type NET,
 * --device-id), one receiveq/transmitq pair. Answers that arrive late (for an earlier
 * start of QEMU's device, or an earlier connection) are recognised by a generation
 * number and never applied to the current one.
 *
 * Program conventions: docs/interop/vhost-user.rst "Backend program conventions"
 * (--socket-path, --fd, --print-capabilities).
 *
 * Security model: the daemon parses no peer input itself. QEMU's requests are
 * framed and validated by the vhost-user core (client/vhost_user.c: sizes, fd counts,
 * queue indexes, regions), the server's messages by libvhostpci-client (framing, ACK
 * matching). What this file takes from the server is trusted only as far as: the ACK
 * result and reason (logged), the accepted feature bits (masked with our offer), and
 * queue positions (used only for queue indexes the frontend has). Every fd the daemon
 * keeps (dup'ed kick/call eventfds, listening socket) has one owner here and is
 * closed on replacement, stop, disconnect and exit.
 *
 * Threading: one thread, one GLib main loop (the global default context). A server
 * request made while QEMU waits for a reply (ADD_MEM_REG/REM_MEM_REG,
 * GET_VRING_BASE, GET_FEATURES) is asynchronous; the vhost-user core reads nothing
 * more from QEMU until the ACK's callback answers it (vu_dev_reply_*).
 */
#define G_LOG_DOMAIN "vhost-pci-client"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib.h>
#include <glib-unix.h>
#include <uuid/uuid.h>

#include "vhost_user.h"
#include "vhost_user_glib.h"
#include "vp_log_glib.h"
#include "vp_wire.h"
#include "vpclient.h"

/* Virtqueues of the frontend: one receiveq/transmitq pair (multi-queue not supported). */
#define NQUEUES 2
/* How long GET_FEATURES waits for the server's feature answer before offering the
 * protocol's feature set (the handshake's FEATURE_BITS round settles it later). */
#define FEATURES_WAIT_MS 3000
/* Delay between QEMU's start and the handshake, for late SET_VRING_CALLs. */
#define HANDSHAKE_SETTLE_MS 20
/* Server reconnection backoff: first retry, ceiling, and how often a still failing
 * reconnection is reported above debug level. */
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000
#define RECONNECT_REPORT_US (30 * G_USEC_PER_SEC)
/* Bits of GET_FEATURES that belong to vhost-user itself and are never forwarded. */
#define VU_LEVEL_FEATURES (1ULL << VU_F_PROTOCOL_FEATURES)

/** What the server holds of ours: a region, identified like the server does. */
struct mirror_region {
    uint64_t gpa, size, mmap_offset;
    dev_t st_dev;
    ino_t st_ino;
};

/** State of our frontend device on the server. */
enum fe_state {
    FE_NONE,      /* not registered (or DEVICE_INFO(DEL) sent) */
    FE_ADDING,    /* DEVICE_INFO(ADD) sent, no ACK yet */
    FE_ADDED,     /* DEVICE_INFO_ACK(ADD_DONE) */
};

struct daemon {
    /* options */
    char *socket_path;
    int opt_fd;
    char *server_path;
    char *uuid_opt;
    gint64 device_id;
    char *log_level;
    char *features_opt;
    char *memory_refusal_opt;
    double ack_timeout_s;
    gboolean print_caps;

    uint64_t offer;               /* virtio features asked of the server */
    bool refusal_replies;         /* --memory-refusal reply: the server's refusal of a
                                     hot-added region is QEMU's failure REPLY_ACK */
    int timeout_ms;               /* per server request */
    guint8 uuid[16];
    char uuid_str[37];
    GMainLoop *loop;
    int exit_code;

    /* vhost-user side */
    int listen_fd;                /* -1: none (--fd with a connected socket) */
    bool own_socket_path;         /* we bound --socket-path: unlink at exit */
    guint listen_src;
    struct vu_glib *vu;           /* the QEMU connection, at most one */
    unsigned vu_gen;              /* connection number, for late callbacks */
    bool features_deferred;       /* GET_FEATURES waits for the server */
    guint features_timer;
    struct vp_device_info dev;    /* the frontend as last started; kick/call fds are
                                     ours (dup'ed), -1 when not held */
    bool dev_valid;
    unsigned start_gen;           /* QEMU's starts, for answers that come late */
    bool fe_ok_this_start;        /* DEVICE_INFO(ADD) succeeded since the last start */
    bool vrb_pending;             /* a GET_VRING_BASE waits for DEL_DONE */
    uint32_t vrb_index;
    unsigned vrb_gen;
    bool pos_valid[NQUEUES];      /* positions of DEVICE_INFO_ACK(DEL_DONE) */
    uint16_t pos[NQUEUES];
    guint update_idle;            /* coalesced DEVICE_INFO(ADD) update */
    guint handshake_timer;        /* settle after the start (HANDSHAKE_SETTLE_MS) */

    /* server side */
    VpClient *vpc;                /* NULL while not connected */
    guint reconnect_timer;
    unsigned reconnect_delay_ms;
    unsigned reconnect_failures;
    gint64 reconnect_reported;
    bool ever_connected;
    bool srv_features_known;
    bool srv_features_provisional; /* srv_accepted is the fallback, not an answer */
    uint64_t srv_accepted;
    enum fe_state fe;
    unsigned dels_pending;        /* DEVICE_INFO(DEL)s outstanding */
    struct mirror_region mirror[VP_MAX_REGIONS];
    unsigned nmirror;

    /* shutdown */
    bool shutting_down;
    guint shutdown_timer;
};

static struct daemon the_daemon;

/* ------------------------------ helpers ------------------------------ */

static struct vu_dev *vu_dev_of(struct daemon *d)
{
    return d->vu ? vu_glib_dev(d->vu) : NULL;
}

static bool qemu_started(struct daemon *d)
{
    struct vu_dev *v = vu_dev_of(d);
    return v && !vu_dev_is_broken(v) && vu_dev_is_started(v);
}

/** The virtio feature set forwarded to the device VM: SET_FEATURES without the
 *  vhost-user-level bits. */
static uint64_t final_features(uint64_t negotiated)
{
    return negotiated & ~VU_LEVEL_FEATURES;
}

static int dup_fd(int fd)
{
    if (fd < 0)
        return -1;
    int n = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (n < 0)
        g_warning("dup of fd %d: %s", fd, g_strerror(errno));
    return n;
}

static void dev_release(struct daemon *d)
{
    vp_device_info_close_fds(&d->dev);
    d->dev_valid = false;
}

/** Keep a copy of the frontend as QEMU started it (fds dup'ed: ours). */
static void dev_take(struct daemon *d, const struct vu_start_info *info)
{
    dev_release(d);
    vp_device_info_init(&d->dev);
    d->dev.op = VP_OP_ADD;
    d->dev.device_type = VP_DEV_NET;
    d->dev.device_id = (uint64_t)d->device_id;
    d->dev.nvirtqs = info->nvirtqs;
    for (unsigned i = 0; i < info->nvirtqs; i++) {
        d->dev.virtqs[i] = info->virtqs[i];
        d->dev.virtqs[i].kick_fd = dup_fd(info->virtqs[i].kick_fd);
        d->dev.virtqs[i].call_fd = dup_fd(info->virtqs[i].call_fd);
    }
    d->dev_valid = true;
}

static int file_identity(int fd, dev_t *dev, ino_t *ino)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return -1;
    *dev = st.st_dev;
    *ino = st.st_ino;
    return 0;
}

static int mirror_find(struct daemon *d, uint64_t gpa)
{
    for (unsigned i = 0; i < d->nmirror; i++)
        if (d->mirror[i].gpa == gpa)
            return (int)i;
    return -1;
}

static void mirror_remove(struct daemon *d, uint64_t gpa)
{
    int i = mirror_find(d, gpa);
    if (i >= 0)
        d->mirror[i] = d->mirror[--d->nmirror];
}

static void mirror_put(struct daemon *d, const struct mirror_region *m)
{
    int i = mirror_find(d, m->gpa);
    if (i >= 0)
        d->mirror[i] = *m;
    else if (d->nmirror < VP_MAX_REGIONS)
        d->mirror[d->nmirror++] = *m;
}

static void mirror_add(struct daemon *d, const struct vp_region *r)
{
    struct mirror_region m = { r->gpa, r->size, r->mmap_offset, 0, 0 };
    if (file_identity(r->fd, &m.st_dev, &m.st_ino) < 0)
        return;
    mirror_put(d, &m);
}

static bool mirror_same(const struct mirror_region *m, const struct vp_region *r)
{
    dev_t dv;
    ino_t in;
    return m->gpa == r->gpa && m->size == r->size && m->mmap_offset == r->mmap_offset &&
           file_identity(r->fd, &dv, &in) == 0 && dv == m->st_dev && in == m->st_ino;
}

/** What an asynchronous server request was sent for: answers to an earlier start
 *  of QEMU's device (or an earlier QEMU connection) must not touch the current one. */
struct req_ctx {
    struct daemon *d;
    unsigned start_gen;
    bool for_stop;                /* DEVICE_INFO(DEL) answering GET_VRING_BASE */
    unsigned nnew;                /* handshake: regions new to the server, */
    uint64_t new_gpa[VP_MAX_REGIONS]; /* which a refused MEMORY_INFO did not add */
};

static struct req_ctx *req_ctx_new(struct daemon *d, bool for_stop)
{
    struct req_ctx *r = g_new0(struct req_ctx, 1);
    r->d = d;
    r->start_gen = d->start_gen;
    r->for_stop = for_stop;
    return r;
}

/** The reason of a request's failure as one line ("" when none). */
static const char *why(const GError *error)
{
    return error ? error->message : "";
}

/* ------------------------------ server: features ------------------------------ */

static void features_answer_qemu(struct daemon *d, uint64_t features, const char *how)
{
    if (d->features_timer) {
        g_source_remove(d->features_timer);
        d->features_timer = 0;
    }
    if (!d->features_deferred)
        return;
    d->features_deferred = false;
    struct vu_dev *v = vu_dev_of(d);
    if (!v)
        return;
    g_info("GET_FEATURES: offering QEMU 0x%" PRIx64 " (%s)", features, how);
    int r = vu_dev_reply_features(v, features);
    if (r < 0)
        g_warning("GET_FEATURES: reply failed: %s", g_strerror(-r));
}

static void on_features_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                            gpointer data)
{
    struct daemon *d = data;
    if (c != d->vpc)
        return;
    if (error) {
        g_warning("feature negotiation with the vhost-pci server failed: %s", why(error));
        return;
    }
    uint64_t acc = reply->ack.feature_bits & d->offer;
    if (!d->srv_features_known || d->srv_features_provisional || acc != d->srv_accepted)
        g_message("device VM accepts virtio features 0x%" PRIx64 " of the offered 0x%" PRIx64,
                  acc, d->offer);
    d->srv_features_known = true;
    d->srv_features_provisional = false;
    d->srv_accepted = acc;
    features_answer_qemu(d, acc, "accepted by the device VM");
}

/** FEATURE_BITS on connecting (DESIGN 4 "Feature timing"). */
static void srv_negotiate(struct daemon *d)
{
    GError *e = NULL;
    if (!vp_client_send_features(d->vpc, d->offer, d->timeout_ms, on_features_ack, d, &e)) {
        g_warning("cannot send FEATURE_BITS: %s", e->message);
        g_error_free(e);
    }
}

static gboolean on_features_timeout(gpointer data)
{
    struct daemon *d = data;
    d->features_timer = 0;
    uint64_t f = d->offer & VP_NET_FEATURES;
    /* Provisional: the next GET_FEATURES gets it at once; the server's answer, when
     * it comes, replaces it. */
    d->srv_accepted = f;
    d->srv_features_known = true;
    d->srv_features_provisional = true;
    g_warning("no feature answer from the vhost-pci server within %d ms: offering QEMU "
              "0x%" PRIx64 " (the handshake's FEATURE_BITS round settles the final set)",
              FEATURES_WAIT_MS, f);
    features_answer_qemu(d, f, "server not answering");
    return G_SOURCE_REMOVE;
}

/* ------------------------------ server: frontend device ------------------------------ */

static void vring_base_answer(struct daemon *d, bool drop_qemu, const char *reason);

static void on_del_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                       gpointer data)
{
    struct req_ctx *ctx = data;
    struct daemon *d = ctx->d;
    /* Positions are QEMU's answer only for the stop of the current start. */
    bool current = ctx->for_stop && ctx->start_gen == d->start_gen;
    g_free(ctx);
    (void)c;
    if (d->dels_pending)
        d->dels_pending--;
    if (error) {
        g_warning("DEVICE_INFO(DEL) of net %" G_GINT64_FORMAT " failed: %s", d->device_id,
                  why(error));
    } else if (!current) {
        g_message("DEVICE_INFO_ACK(DEL_DONE) for net %" G_GINT64_FORMAT, d->device_id);
    } else {
        unsigned n = 0;
        for (uint32_t i = 0; i < reply->ack.npositions; i++) {
            const struct vp_virtq_pos *p = &reply->ack.positions[i];
            if (p->index >= NQUEUES) {
                g_warning("DEVICE_INFO_ACK(DEL_DONE) names virtqueue %u: ignored (the "
                          "frontend has %u)", p->index, NQUEUES);
                continue;
            }
            d->pos[p->index] = p->last_avail_idx;
            d->pos_valid[p->index] = true;
            n++;
        }
        g_message("DEVICE_INFO_ACK(DEL_DONE) for net %" G_GINT64_FORMAT ": %u virtqueue "
                  "position(s)", d->device_id, n);
    }
    if (current && d->vrb_pending) {
        /* The device VM may have moved the queues: without positions QEMU must fall
         * back to the used index, which it does when the backend goes away. */
        bool drop = error && d->fe_ok_this_start;
        vring_base_answer(d, drop, why(error));
    }
    if (d->shutting_down && d->dels_pending == 0) {
        g_message("shutdown: %s", error ? "DEVICE_INFO(DEL) did not complete" : "done");
        g_main_loop_quit(d->loop);
    }
}

/** DEVICE_INFO(DEL) of our frontend when the server has it (the server runs it after
 *  any ADD sent before). @for_stop: its positions answer GET_VRING_BASE. Returns true
 *  when a DEL was sent. */
static bool srv_device_del(struct daemon *d, const char *what, bool for_stop)
{
    if (!d->vpc || d->fe == FE_NONE)
        return false;
    GError *e = NULL;
    g_info("%s: DEVICE_INFO(DEL) of net %" G_GINT64_FORMAT, what, d->device_id);
    d->fe = FE_NONE;
    struct req_ctx *ctx = req_ctx_new(d, for_stop);
    if (!vp_client_device_del(d->vpc, VP_DEV_NET, (uint64_t)d->device_id, d->timeout_ms,
                              on_del_ack, ctx, &e)) {
        g_free(ctx);
        g_warning("%s: cannot send DEVICE_INFO(DEL): %s", what, e->message);
        g_error_free(e);
        return false;
    }
    d->dels_pending++;
    return true;
}

static void on_memdel_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                          gpointer data)
{
    (void)c;
    (void)reply;
    (void)data;
    if (error)
        g_warning("MEMORY_INFO(DEL) failed: %s", why(error));
    else
        g_info("MEMORY_INFO_ACK(DEL_DONE)");
}

/** MEMORY_INFO(DEL) of every region the server holds of ours except those still in
 *  @keep (NULL: all). Asynchronous. */
static void srv_memory_del_stale(struct daemon *d, const struct vp_region *keep, unsigned nkeep)
{
    struct vp_region del[VP_MAX_REGIONS];
    unsigned n = 0;
    for (unsigned i = 0; i < d->nmirror;) {
        bool kept = false;
        for (unsigned k = 0; k < nkeep && !kept; k++)
            kept = mirror_same(&d->mirror[i], &keep[k]);
        if (kept) {
            i++;
            continue;
        }
        del[n++] = (struct vp_region){ d->mirror[i].gpa, d->mirror[i].size,
                                       d->mirror[i].mmap_offset, -1 };
        d->mirror[i] = d->mirror[--d->nmirror];
    }
    if (n == 0 || !d->vpc)
        return;
    GError *e = NULL;
    g_info("MEMORY_INFO(DEL) of %u region(s)", n);
    if (!vp_client_memory_del(d->vpc, del, n, d->timeout_ms, on_memdel_ack, d, &e)) {
        g_warning("cannot send MEMORY_INFO(DEL): %s", e->message);
        g_error_free(e);
    }
}

static gboolean drop_qemu_idle(gpointer data);

static void on_renegotiate(VpClient *c, guint64 offered, guint64 accepted, gpointer data)
{
    struct req_ctx *ctx = data;   /* freed by on_handshake, which the confirmation
                                     below may run: not used after it */
    struct daemon *d = ctx->d;
    bool current = ctx->start_gen == d->start_gen;
    g_warning("feature renegotiation (spec 1.5.1.1): the device VM's driver accepted 0x%"
              G_GINT64_MODIFIER "x of the negotiated 0x%" G_GINT64_MODIFIER "x; QEMU must "
              "renegotiate the smaller set", accepted, offered);
    /* Drop the refused bits from what QEMU is offered (bits the device VM accepted
     * earlier and the guest did not negotiate stay). */
    d->srv_accepted &= ~(offered & ~accepted);
    d->srv_features_known = true;
    d->srv_features_provisional = false;
    /* The frontend is restricted to the accepted bits from now on (the next
     * GET_FEATURES offers only them): confirm them as the final set. */
    GError *e = NULL;
    if (!vp_client_confirm_features(c, accepted, &e)) {
        g_warning("FEATURE_BITS_ACK: %s", e->message);
        g_error_free(e);
    } else {
        g_message("FEATURE_BITS_ACK(0x%" G_GINT64_MODIFIER "x) sent", accepted);
    }
    /* QEMU renegotiates only on a new connection (-chardev ...,reconnect=N). Drop it
     * from the main loop, outside the library's callback. */
    if (current)
        g_idle_add(drop_qemu_idle, d);
}

static void on_handshake(VpClient *c, const VpClientHandshake *r, const GError *error,
                         gpointer data)
{
    struct req_ctx *ctx = data;
    struct daemon *d = ctx->d;
    bool current = ctx->start_gen == d->start_gen;
    if (c != d->vpc || !current) {
        if (c == d->vpc)
            g_info("handshake of an earlier start ended: %s", error ? error->message : "done");
        g_free(ctx);
        return;
    }
    /* A refused MEMORY_INFO adds none of its regions; those the server had before
     * (an earlier start of this connection) stay. */
    if (r->have_memory && r->memory.ack.result != VP_ACK_ADD_DONE)
        for (unsigned i = 0; i < ctx->nnew; i++)
            mirror_remove(d, ctx->new_gpa[i]);
    g_free(ctx);
    bool dev_ok = r->have_device && r->device.ack.result == VP_ACK_ADD_DONE;
    if (d->fe == FE_ADDING)
        d->fe = dev_ok ? FE_ADDED : FE_NONE;
    if (dev_ok)
        d->fe_ok_this_start = true;
    if (error && !dev_ok) {
        g_warning("the device VM did not take the frontend (net %" G_GINT64_FORMAT "): %s",
                  d->device_id, error->message);
        return;
    }
    if (error) /* e.g. a region refused again at a restart (mem_may_refuse) */
        g_warning("the device VM serves net %" G_GINT64_FORMAT " but not all of this "
                  "start: %s (it cannot reach buffers in memory it refused)", d->device_id,
                  error->message);
    g_message("DEVICE_INFO_ACK(ADD_DONE): net %" G_GINT64_FORMAT " with %u virtqueues "
              "is served by the device VM (features 0x%" G_GINT64_MODIFIER "x%s)",
              d->device_id, d->dev.nvirtqs, r->final_features,
              r->renegotiated ? ", renegotiated" : "");
}

/** The three-message handshake of spec 1.5.1.1 for QEMU's started device. */
static void srv_handshake(struct daemon *d)
{
    struct vu_dev *v = vu_dev_of(d);
    if (d->handshake_timer) {
        g_source_remove(d->handshake_timer);
        d->handshake_timer = 0;
    }
    if (!d->vpc || !v || !d->dev_valid)
        return;
    struct vp_region regions[VP_MAX_REGIONS];
    unsigned n = vu_dev_get_regions(v, regions, VP_MAX_REGIONS);
    if (n == 0 || n > VP_MAX_REGIONS)
        return;
    /* Regions the server still has that QEMU no longer has go first (a previous QEMU
     * connection, or changes made while the server could not be reached). */
    srv_memory_del_stale(d, regions, n);
    uint64_t features = final_features(vu_dev_features(v));
    GError *e = NULL;
    g_info("handshake: MEMORY_INFO(ADD) of %u region(s), FEATURE_BITS 0x%" PRIx64
           ", DEVICE_INFO(ADD) of net %" G_GINT64_FORMAT, n, features, d->device_id);
    struct req_ctx *ctx = req_ctx_new(d, false);
    for (unsigned i = 0; i < n; i++)
        if (mirror_find(d, regions[i].gpa) < 0) /* stale ones are gone: same region */
            ctx->new_gpa[ctx->nnew++] = regions[i].gpa;
    if (!vp_client_handshake(d->vpc, regions, n, features, &d->dev, d->timeout_ms,
                             on_renegotiate, on_handshake, ctx, &e)) {
        g_free(ctx);
        g_warning("cannot send the handshake: %s", e->message);
        g_error_free(e);
        return;
    }
    /* The server runs its jobs in order: later requests come after these. */
    for (unsigned i = 0; i < n; i++)
        mirror_add(d, &regions[i]);
    d->fe = FE_ADDING;
}

static void on_update_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                          gpointer data)
{
    (void)c;
    (void)reply;
    struct daemon *d = data;
    if (error)
        g_warning("DEVICE_INFO(ADD) update of net %" G_GINT64_FORMAT " failed: %s",
                  d->device_id, why(error));
    else
        g_info("DEVICE_INFO_ACK(ADD_DONE) for the update of net %" G_GINT64_FORMAT,
               d->device_id);
}

static gboolean update_idle(gpointer data)
{
    struct daemon *d = data;
    d->update_idle = 0;
    if (!d->vpc || d->fe == FE_NONE || !d->dev_valid || !qemu_started(d))
        return G_SOURCE_REMOVE;
    GError *e = NULL;
    g_info("DEVICE_INFO(ADD) update of net %" G_GINT64_FORMAT " (new kick/call fds)",
           d->device_id);
    if (!vp_client_device_add(d->vpc, &d->dev, d->timeout_ms, on_update_ack, d, &e)) {
        g_warning("cannot send the DEVICE_INFO(ADD) update: %s", e->message);
        g_error_free(e);
    }
    return G_SOURCE_REMOVE;
}

/* ------------------------------ server connection ------------------------------ */

static void srv_connect(struct daemon *d);

static gboolean reconnect_cb(gpointer data)
{
    struct daemon *d = data;
    d->reconnect_timer = 0;
    srv_connect(d);
    return G_SOURCE_REMOVE;
}

static void schedule_reconnect(struct daemon *d)
{
    if (d->shutting_down || d->reconnect_timer)
        return;
    d->reconnect_timer = g_timeout_add(d->reconnect_delay_ms, reconnect_cb, d);
    d->reconnect_delay_ms = MIN(d->reconnect_delay_ms * 2, RECONNECT_MAX_MS);
}

static gboolean unref_client_idle(gpointer data)
{
    vp_client_unref(data);
    return G_SOURCE_REMOVE;
}

static void on_srv_closed(VpClient *c, const GError *error, gpointer data)
{
    struct daemon *d = data;
    if (c != d->vpc)
        return;
    d->vpc = NULL;
    /* Freed from the main loop: callers up the stack may still hold the pointer. */
    g_idle_add(unref_client_idle, c);
    d->nmirror = 0;
    d->fe = FE_NONE;
    d->dels_pending = 0;
    if (d->shutting_down) {
        g_message("shutdown: the server connection closed (%s)", why(error));
        g_main_loop_quit(d->loop);
        return;
    }
    g_warning("lost the connection to the vhost-pci server %s: %s; reconnecting",
              d->server_path, why(error));
    d->reconnect_delay_ms = RECONNECT_MIN_MS;
    d->reconnect_failures = 0;
    d->reconnect_reported = g_get_monotonic_time();
    schedule_reconnect(d);
}

static void srv_connect(struct daemon *d)
{
    GError *e = NULL;
    VpClient *c = vp_client_connect(d->server_path, d->uuid, &e);
    if (!c) {
        d->reconnect_failures++;
        gint64 now = g_get_monotonic_time();
        /* Bounded noise: the first failure loudly, then a summary now and then. */
        if (d->reconnect_failures == 1)
            g_warning("cannot connect to the vhost-pci server: %s; retrying with backoff "
                      "(up to %d ms)", e->message, RECONNECT_MAX_MS);
        else if (now - d->reconnect_reported >= RECONNECT_REPORT_US)
            g_message("still cannot connect to the vhost-pci server (%u attempts): %s",
                      d->reconnect_failures, e->message);
        else
            g_debug("connect attempt %u: %s", d->reconnect_failures, e->message);
        if (d->reconnect_failures == 1 || now - d->reconnect_reported >= RECONNECT_REPORT_US)
            d->reconnect_reported = now;
        g_error_free(e);
        schedule_reconnect(d);
        return;
    }
    d->vpc = c;
    vp_client_set_closed_func(c, on_srv_closed, d);
    if (d->reconnect_failures)
        g_message("connected to the vhost-pci server %s after %u failed attempt(s)",
                  d->server_path, d->reconnect_failures);
    else
        g_message("connected to the vhost-pci server %s%s", d->server_path,
                  d->ever_connected ? " again" : "");
    d->ever_connected = true;
    d->reconnect_failures = 0;
    d->reconnect_delay_ms = RECONNECT_MIN_MS;
    d->nmirror = 0;
    d->fe = FE_NONE;
    srv_negotiate(d);
    if (d->vpc && qemu_started(d)) {
        g_message("QEMU's device is running: registering it with the device VM again");
        srv_handshake(d);
    }
}

/* ------------------------------ vhost-user callbacks ------------------------------ */

static gboolean handshake_timer_cb(gpointer data)
{
    struct daemon *d = data;
    d->handshake_timer = 0;
    if (qemu_started(d))
        srv_handshake(d);
    return G_SOURCE_REMOVE;
}

static void cancel_handshake_timer(struct daemon *d)
{
    if (d->handshake_timer) {
        g_source_remove(d->handshake_timer);
        d->handshake_timer = 0;
    }
}

static int cb_get_features(struct vu_dev *v, uint64_t *features, void *opaque)
{
    struct daemon *d = opaque;
    (void)v;
    if (d->srv_features_known) {
        *features = d->srv_accepted;
        g_debug("GET_FEATURES: 0x%" PRIx64 " (accepted by the device VM)", *features);
        return 0;
    }
    g_info("GET_FEATURES: waiting for the vhost-pci server's feature answer (at most %d ms)",
           FEATURES_WAIT_MS);
    d->features_deferred = true;
    if (!d->features_timer)
        d->features_timer = g_timeout_add(FEATURES_WAIT_MS, on_features_timeout, d);
    return VU_DEFERRED;
}

static void cb_started(struct vu_dev *v, const struct vu_start_info *info, void *opaque)
{
    struct daemon *d = opaque;
    (void)v;
    dev_take(d, info);
    d->start_gen++;
    d->fe_ok_this_start = false;
    memset(d->pos_valid, 0, sizeof(d->pos_valid));
    g_message("QEMU started the device: %u region(s), %u virtqueue(s), features 0x%" PRIx64,
              info->nregions, info->nvirtqs, info->features);
    for (unsigned i = 0; i < info->nregions; i++)
        g_info("  region gpa 0x%" PRIx64 " size 0x%" PRIx64 " mmap_offset 0x%" PRIx64,
               info->regions[i].gpa, info->regions[i].size, info->regions[i].mmap_offset);
    for (unsigned i = 0; i < info->nvirtqs; i++)
        g_info("  virtqueue %u: num %u desc 0x%" PRIx64 " avail 0x%" PRIx64 " used 0x%"
               PRIx64 " last_avail_idx %u", info->virtqs[i].index, info->virtqs[i].num,
               info->virtqs[i].desc, info->virtqs[i].avail, info->virtqs[i].used,
               info->virtqs[i].last_avail_idx);
    if (!d->vpc) {
        g_message("not connected to the vhost-pci server: the device is registered once "
                  "the connection is back");
        return;
    }
    /* QEMU sends each ring's SET_VRING_CALL right after its SET_VRING_KICK; the core
     * may start the device in between when the socket runs dry. A short settle lets
     * the fresh call fd into the first DEVICE_INFO (each new call fd costs the device
     * VM a doorbell vector, and vectors are never reused). */
    if (d->handshake_timer)
        g_source_remove(d->handshake_timer);
    d->handshake_timer = g_timeout_add(HANDSHAKE_SETTLE_MS, handshake_timer_cb, d);
}

/** A hot-plug MEMORY_INFO request: its ACK is QEMU's answer (vu_dev_reply_mem). */
struct mem_req {
    struct daemon *d;
    unsigned vu_gen;              /* the QEMU connection waiting for the verdict */
    bool may_refuse;              /* a failure becomes QEMU's failure REPLY_ACK */
    struct mirror_region region;  /* what the server gains / loses */
};

/**
 * May a refused hot-plug request fail QEMU's ADD_MEM_REG/REM_MEM_REG? Only with
 * --memory-refusal reply and while QEMU's device runs. QEMU 7.2 sends memory changes
 * on two paths: for a running device (vhost_commit), where a failure reply is only
 * logged ("vhost_set_mem_table failed") and the region stays out of its table, to be
 * offered again at its next memory change; and from vhost_dev_start when it (re)starts
 * the device, where a failure fails the start ("unable to start vhost net ...
 * falling back on userspace virtio": no networking until the next device reset).
 * During a (re)start the region is therefore accepted whatever the server says, as
 * before; the handshake that follows offers it again and the device is served with
 * the memory the device VM could take.
 */
static bool mem_may_refuse(struct daemon *d)
{
    struct vu_dev *v = vu_dev_of(d);
    return d->refusal_replies && v && vu_dev_is_started(v);
}

static struct mem_req *mem_req_new(struct daemon *d, const struct vp_region *r)
{
    struct mem_req *q = g_new0(struct mem_req, 1);
    q->d = d;
    q->vu_gen = d->vu_gen;
    q->may_refuse = mem_may_refuse(d);
    q->region = (struct mirror_region){ r->gpa, r->size, r->mmap_offset, 0, 0 };
    file_identity(r->fd, &q->region.st_dev, &q->region.st_ino);
    return q;
}

/** The verdict on QEMU's pending ADD_MEM_REG/REM_MEM_REG: 0, or -EIO for a failure
 *  REPLY_ACK (success unless @q may refuse). Only for the connection @q was made for. */
static void mem_answer_qemu(struct mem_req *q, int result, const char *what)
{
    struct daemon *d = q->d;
    if (!q->may_refuse)
        result = 0;
    struct vu_dev *v = vu_dev_of(q->d);
    if (!v || q->vu_gen != d->vu_gen) {
        g_info("%s of gpa 0x%" PRIx64 ": the QEMU connection that asked is gone", what,
               q->region.gpa);
        return;
    }
    int r = vu_dev_reply_mem(v, result);
    if (r < 0)
        g_warning("%s of gpa 0x%" PRIx64 ": reply to QEMU failed: %s", what, q->region.gpa,
                  g_strerror(-r));
}

/** What QEMU is told of a refusal, for the log. */
static const char *refusal_effect(const struct mem_req *q)
{
    if (q->may_refuse)
        return "QEMU gets a failure reply";
    if (q->d->refusal_replies)
        return "QEMU is starting the device, which a failure reply would stop: it gets "
               "success";
    return "--memory-refusal log: QEMU gets success";
}

/** MEMORY_INFO(DEL) of what the server holds of ours that the current QEMU connection
 *  does not have (all of it without a connection). */
static void srv_memory_del_unowned(struct daemon *d)
{
    struct vp_region keep[VP_MAX_REGIONS];
    struct vu_dev *v = vu_dev_of(d);
    unsigned n = v && !vu_dev_is_broken(v) ? vu_dev_get_regions(v, keep, VP_MAX_REGIONS) : 0;
    srv_memory_del_stale(d, keep, MIN(n, VP_MAX_REGIONS));
}

static void on_hot_add_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                           gpointer data)
{
    struct mem_req *q = data;
    struct daemon *d = q->d;
    const struct mirror_region *m = &q->region;
    (void)reply;
    if (error) {
        /* ADD_FAIL (the server's reason), timeout or disconnect: the device VM does
         * not have the region. */
        g_warning("hot-add of region gpa 0x%" PRIx64 " size 0x%" PRIx64 " failed: %s (%s; "
                  "the device VM cannot reach buffers placed there)", m->gpa, m->size,
                  error->message, refusal_effect(q));
        mem_answer_qemu(q, -EIO, "hot-add");
        g_free(q);
        return;
    }
    if (c == d->vpc)
        mirror_put(d, m);
    g_message("hot-added region gpa 0x%" PRIx64 " size 0x%" PRIx64
              ": MEMORY_INFO_ACK(ADD_DONE)", m->gpa, m->size);
    if (!vu_dev_of(d) || q->vu_gen != d->vu_gen)
        srv_memory_del_unowned(d); /* its QEMU left meanwhile: not ours to keep */
    else
        mem_answer_qemu(q, 0, "hot-add");
    g_free(q);
}

static void on_hot_del_ack(VpClient *c, const VpClientReply *reply, const GError *error,
                           gpointer data)
{
    struct mem_req *q = data;
    struct daemon *d = q->d;
    const struct mirror_region *m = &q->region;
    (void)reply;
    (void)c;
    if (error) {
        g_warning("hot-remove of region gpa 0x%" PRIx64 " size 0x%" PRIx64 " failed: %s "
                  "(%s)", m->gpa, m->size, error->message, refusal_effect(q));
        mem_answer_qemu(q, -EIO, "hot-remove");
    } else {
        mirror_remove(d, m->gpa);
        g_message("hot-removed region gpa 0x%" PRIx64 " size 0x%" PRIx64
                  ": MEMORY_INFO_ACK(DEL_DONE)", m->gpa, m->size);
        mem_answer_qemu(q, 0, "hot-remove");
    }
    g_free(q);
}

static int cb_mem_added(struct vu_dev *v, const struct vp_region *r, void *opaque)
{
    struct daemon *d = opaque;
    (void)v;
    if (!d->vpc || (d->nmirror == 0 && d->fe == FE_NONE)) {
        g_info("region gpa 0x%" PRIx64 " size 0x%" PRIx64 " added; the device VM gets it "
               "with the next handshake", r->gpa, r->size);
        return 0;
    }
    /* QEMU waits for this request's reply: it gets the server's verdict. */
    GError *e = NULL;
    g_info("hot-add: MEMORY_INFO(ADD) of gpa 0x%" PRIx64 " size 0x%" PRIx64, r->gpa, r->size);
    struct mem_req *q = mem_req_new(d, r);
    if (!vp_client_memory_add(d->vpc, r, 1, d->timeout_ms, on_hot_add_ack, q, &e)) {
        g_warning("hot-add of region gpa 0x%" PRIx64 " size 0x%" PRIx64 " failed: cannot "
                  "send MEMORY_INFO(ADD): %s (%s)", r->gpa, r->size, e->message,
                  refusal_effect(q));
        g_error_free(e);
        int ret = q->may_refuse ? -EIO : 0;
        g_free(q);
        return ret;
    }
    return VU_DEFERRED;
}

static int cb_mem_removed(struct vu_dev *v, const struct vp_region *r, void *opaque)
{
    struct daemon *d = opaque;
    (void)v;
    if (!d->vpc || mirror_find(d, r->gpa) < 0) {
        g_info("region gpa 0x%" PRIx64 " size 0x%" PRIx64 " removed (not on the server)",
               r->gpa, r->size);
        return 0;
    }
    struct vp_region del = { r->gpa, r->size, r->mmap_offset, -1 };
    GError *e = NULL;
    g_info("hot-remove: MEMORY_INFO(DEL) of gpa 0x%" PRIx64 " size 0x%" PRIx64, r->gpa,
           r->size);
    struct mem_req *q = mem_req_new(d, r);
    if (!vp_client_memory_del(d->vpc, &del, 1, d->timeout_ms, on_hot_del_ack, q, &e)) {
        g_warning("hot-remove of region gpa 0x%" PRIx64 " failed: cannot send "
                  "MEMORY_INFO(DEL): %s (%s)", r->gpa, e->message, refusal_effect(q));
        g_error_free(e);
        int ret = q->may_refuse ? -EIO : 0;
        g_free(q);
        return ret;
    }
    return VU_DEFERRED;
}

static void cb_vring_changed(struct vu_dev *v, const struct vp_virtq *vq, bool enabled,
                             void *opaque)
{
    struct daemon *d = opaque;
    (void)v;
    if (!d->dev_valid)
        return;
    for (unsigned i = 0; i < d->dev.nvirtqs; i++) {
        struct vp_virtq *q = &d->dev.virtqs[i];
        if (q->index != vq->index)
            continue;
        vp_close_fd(&q->kick_fd);
        vp_close_fd(&q->call_fd);
        q->kick_fd = dup_fd(vq->kick_fd);
        q->call_fd = dup_fd(vq->call_fd);
    }
    g_info("virtqueue %u changed (%s, kick fd %s, call fd %s)", vq->index,
           enabled ? "enabled" : "disabled", vq->kick_fd >= 0 ? "set" : "none",
           vq->call_fd >= 0 ? "set" : "none");
    if (!enabled)
        g_info("vhost-pci has no per-queue enable: virtqueue %u stays with the device VM",
               vq->index);
    if (d->fe != FE_NONE && !d->update_idle)
        d->update_idle = g_idle_add(update_idle, d);
}

static int cb_get_vring_base(struct vu_dev *v, uint32_t index, uint16_t *last_avail_idx,
                             void *opaque)
{
    struct daemon *d = opaque;
    (void)v;
    if (index < NQUEUES && d->pos_valid[index]) {
        *last_avail_idx = d->pos[index];
        g_info("GET_VRING_BASE %u: %u (from DEVICE_INFO_ACK(DEL_DONE))", index, *last_avail_idx);
        return 0;
    }
    cancel_handshake_timer(d); /* stopped before it was registered */
    if (!srv_device_del(d, "QEMU stops the device", true)) {
        /* The device VM never served this start: the queue did not move. */
        g_info("GET_VRING_BASE %u: %u (the device VM does not serve the queue)", index,
               *last_avail_idx);
        return 0;
    }
    d->vrb_pending = true;
    d->vrb_index = index;
    d->vrb_gen = d->vu_gen;
    return VU_DEFERRED;
}

static void vring_base_answer(struct daemon *d, bool drop_qemu, const char *reason)
{
    d->vrb_pending = false;
    struct vu_dev *v = vu_dev_of(d);
    if (!v || d->vrb_gen != d->vu_gen)
        return;
    uint32_t index = d->vrb_index;
    if (drop_qemu) {
        /* GET_VRING_BASE has no error reply: without the backend QEMU restores the
         * queue position from the used index itself (hw/virtio/vhost.c). */
        vu_dev_fail(v, "GET_VRING_BASE %u: the device VM did not hand back the queue "
                    "positions (%s)", index, reason);
        return;
    }
    uint16_t val = 0;
    if (index < NQUEUES && d->pos_valid[index]) {
        val = d->pos[index];
    } else {
        for (unsigned i = 0; i < d->dev.nvirtqs; i++)
            if (d->dev.virtqs[i].index == index)
                val = d->dev.virtqs[i].last_avail_idx;
    }
    g_info("GET_VRING_BASE %u: %u", index, val);
    int r = vu_dev_reply_vring_base(v, index, val);
    if (r < 0)
        g_warning("GET_VRING_BASE %u: reply failed: %s", index, g_strerror(-r));
}

static void cb_disconnected(struct vu_dev *v, const char *reason, void *opaque);

static const struct vu_dev_ops vu_ops = {
    .get_features = cb_get_features,
    .started = cb_started,
    .mem_added = cb_mem_added,
    .mem_removed = cb_mem_removed,
    .vring_changed = cb_vring_changed,
    .get_vring_base = cb_get_vring_base,
    .disconnected = cb_disconnected,
};

static void qemu_gone(struct daemon *d)
{
    cancel_handshake_timer(d);
    d->start_gen++; /* late answers belong to this connection */
    if (d->features_timer) {
        g_source_remove(d->features_timer);
        d->features_timer = 0;
    }
    if (d->update_idle) {
        g_source_remove(d->update_idle);
        d->update_idle = 0;
    }
    d->features_deferred = false;
    d->vrb_pending = false;
    memset(d->pos_valid, 0, sizeof(d->pos_valid));
    /* The driver VM's frontend and memory are gone for the device VM too. */
    if (!d->shutting_down) {
        srv_device_del(d, "QEMU disconnected", false);
        srv_memory_del_stale(d, NULL, 0);
    }
    dev_release(d);
    vu_glib_free(d->vu); /* deferred by the core when called from its callback */
    d->vu = NULL;
}

static void cb_disconnected(struct vu_dev *v, const char *reason, void *opaque)
{
    struct daemon *d = opaque;
    if (v != vu_dev_of(d))
        return;
    g_message("QEMU disconnected: %s", reason);
    qemu_gone(d);
    if (d->listen_fd < 0 && !d->shutting_down) {
        g_message("the vhost-user socket (--fd) is closed: nothing more to serve");
        raise(SIGTERM);
    }
}

static gboolean drop_qemu_idle(gpointer data)
{
    struct daemon *d = data;
    struct vu_dev *v = vu_dev_of(d);
    if (v && !vu_dev_is_broken(v))
        vu_dev_fail(v, "feature renegotiation: the device VM accepts only 0x%" PRIx64
                    "; reconnect (QEMU: -chardev socket,...,reconnect=N) to renegotiate",
                    d->srv_accepted);
    return G_SOURCE_REMOVE;
}

/* ------------------------------ vhost-user socket ------------------------------ */

static void serve_connection(struct daemon *d, int sock)
{
    struct vu_dev *old = vu_dev_of(d);
    if (old && vu_dev_fd(old) >= 0) {
        /* QEMU reconnecting (reconnect=N) may be accepted before the main loop has
         * seen the old connection's end: look at it now. */
        struct pollfd p = { .fd = vu_dev_fd(old), .events = POLLRDHUP };
        if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            vu_dev_fail(old, "the frontend closed the connection (a new one replaces it)");
    }
    if (d->vu) {
        g_warning("a second vhost-user connection: refused (one frontend per daemon)");
        close(sock);
        return;
    }
    struct vu_dev_config cfg = { .nqueues = NQUEUES };
    vp_error err = { "" };
    d->vu_gen++;
    d->vu = vu_glib_new(sock, &cfg, &vu_ops, d, NULL, &err);
    if (!d->vu) {
        g_warning("cannot serve the vhost-user connection: %s", err.msg);
        return;
    }
    g_message("QEMU connected (vhost-user connection %u)", d->vu_gen);
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data);

static gboolean resume_accept(gpointer data)
{
    struct daemon *d = data;
    if (d->listen_fd >= 0 && !d->shutting_down && !d->listen_src)
        d->listen_src = g_unix_fd_add(d->listen_fd, G_IO_IN, on_accept, d);
    return G_SOURCE_REMOVE;
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    struct daemon *d = data;
    (void)cond;
    for (;;) {
        int s = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                /* The pending connection stays: pause instead of spinning on it. */
                g_warning("accept on the vhost-user socket: %s: pausing for 200 ms",
                          g_strerror(e));
                d->listen_src = 0;
                g_timeout_add(200, resume_accept, d);
                return G_SOURCE_REMOVE;
            }
            if (e != EAGAIN && e != EWOULDBLOCK)
                g_warning("accept on the vhost-user socket: %s", g_strerror(e));
            break;
        }
        serve_connection(d, s);
    }
    return G_SOURCE_CONTINUE;
}

/** Listen on @path (a stale socket file from an earlier run is replaced; a live one
 *  is an error). Returns the fd or -1 with a message. */
static int listen_unix(const char *path, vp_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        vp_fail(err, -1, "--socket-path %s: longer than %zu bytes", path, sizeof(sa.sun_path) - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            vp_fail(err, -1, "--socket-path %s exists and is not a socket", path);
            return -1;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            vp_fail(err, -1, "--socket-path %s: another process is listening there", path);
            return -1;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        vp_fail(err, -1, "--socket-path %s: %s", path,
                    g_strerror(e));
        return -1;
    }
    return fd;
}

/** --fd: a listening socket is served like --socket-path; a connected one is the
 *  single vhost-user connection. Returns 0, or -1 with a message. */
static int adopt_fd(struct daemon *d, int fd, vp_error *err)
{
    int type = 0, acc = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
        vp_fail(err, -1, "--fd %d is not a stream socket", fd);
        return -1;
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    len = sizeof(acc);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
            vp_fail(err, -1, "--fd %d: %s", fd,
                        g_strerror(errno));
            return -1;
        }
        d->listen_fd = fd;
        return 0;
    }
    serve_connection(d, fd);
    return d->vu ? 0 : -1;
}

/* ------------------------------ shutdown ------------------------------ */

static gboolean shutdown_deadline(gpointer data)
{
    struct daemon *d = data;
    d->shutdown_timer = 0;
    g_warning("shutdown: no DEVICE_INFO_ACK(DEL) within %d ms: exiting anyway",
              d->timeout_ms + 1000);
    g_main_loop_quit(d->loop);
    return G_SOURCE_REMOVE;
}

static gboolean on_signal(gpointer data)
{
    struct daemon *d = data;
    if (d->shutting_down) {
        g_message("second signal: exiting without waiting");
        g_main_loop_quit(d->loop);
        return G_SOURCE_CONTINUE;
    }
    d->shutting_down = true;
    g_message("shutting down");
    if (d->listen_src) {
        g_source_remove(d->listen_src);
        d->listen_src = 0;
    }
    if (d->reconnect_timer) {
        g_source_remove(d->reconnect_timer);
        d->reconnect_timer = 0;
    }
    if (srv_device_del(d, "shutdown", false) || d->dels_pending > 0) {
        d->shutdown_timer = g_timeout_add(d->timeout_ms + 1000, shutdown_deadline, d);
        return G_SOURCE_CONTINUE;
    }
    g_main_loop_quit(d->loop);
    return G_SOURCE_CONTINUE;
}

/* ------------------------------ options, main ------------------------------ */

static int parse_options(struct daemon *d, int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &d->socket_path,
          "vhost-user UNIX socket to listen on; QEMU connects (-chardev socket,path=PATH "
          "-netdev vhost-user). Incompatible with --fd", "PATH" },
        { "fd", 0, 0, G_OPTION_ARG_INT, &d->opt_fd,
          "Use this inherited vhost-user socket (listening, or connected to QEMU). "
          "Incompatible with --socket-path", "FDNUM" },
        { "print-capabilities", 0, 0, G_OPTION_ARG_NONE, &d->print_caps,
          "Print the backend capabilities (JSON, vhost-user.json) and exit", NULL },
        { "server", 'S', 0, G_OPTION_ARG_FILENAME, &d->server_path,
          "The device VM's vhost-pci-server socket (its --listen PATH; required)", "PATH" },
        { "uuid", 'u', 0, G_OPTION_ARG_STRING, &d->uuid_opt,
          "client_uuid naming this driver VM (default: a new random one, printed at start)",
          "UUID" },
        { "device-id", 'i', 0, G_OPTION_ARG_INT64, &d->device_id,
          "device_id of this frontend in the driver VM (default 1)", "N" },
        { "features", 0, 0, G_OPTION_ARG_STRING, &d->features_opt,
          "virtio-net feature bits offered to the device VM (default: the vhost-pci-net "
          "set, VP_NET_FEATURES)", "MASK" },
        { "memory-refusal", 0, 0, G_OPTION_ARG_STRING, &d->memory_refusal_opt,
          "When the device VM refuses memory QEMU hot-adds (or -removes) while its device "
          "runs: 'reply' (default) answers QEMU's ADD_MEM_REG/REM_MEM_REG with a failure "
          "(QEMU logs it and keeps the region out of its table); 'log' only logs it and "
          "answers success. While QEMU (re)starts its device the answer is always success "
          "(a failure there would stop QEMU's vhost-user networking)", "reply|log" },
        { "ack-timeout", 't', 0, G_OPTION_ARG_DOUBLE, &d->ack_timeout_s,
          "Seconds to wait for each server ACK (default 15)", "SECONDS" },
        { "log-level", 0, 0, G_OPTION_ARG_STRING, &d->log_level,
          "Least severe messages to print: error, warning, info (default) or debug", "LEVEL" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GOptionContext *ctx = g_option_context_new("- vhost-user backend of a driver VM for vhost-pci");
    g_option_context_set_summary(ctx,
        "The vhost-user backend of the driver VM's virtio-net: relays QEMU's memory,\n"
        "features and virtqueues to the device VM's vhost-pci-server (DESIGN.md 4), whose\n"
        "guest driver then serves the queues through shared memory.");
    g_option_context_set_description(ctx,
        "Example:\n"
        "  vhost-pci-client --socket-path /run/vu.sock --server /run/vp.sock --device-id 1\n"
        "  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem0,size=512M,share=on \\\n"
        "      -numa node,memdev=mem0 -chardev socket,id=vu,path=/run/vu.sock,reconnect=1 \\\n"
        "      -netdev vhost-user,id=n0,chardev=vu -device virtio-net-pci,netdev=n0,vectors=0\n"
        "SIGINT/SIGTERM: DEVICE_INFO(DEL) of the frontend, wait for DEL_DONE (bounded by\n"
        "--ack-timeout), exit.\n");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *e = NULL;
    bool ok = g_option_context_parse(ctx, &argc, &argv, &e);
    g_option_context_free(ctx);
    if (!ok) {
        fprintf(stderr, "vhost-pci-client: %s (see --help)\n", e->message);
        g_error_free(e);
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "vhost-pci-client: unexpected argument '%s' (see --help)\n", argv[1]);
        return 2;
    }
    if (d->print_caps)
        return 0;
    /* Defaults after parsing: GOption does not free a preset string it replaces. */
    if (!d->log_level)
        d->log_level = g_strdup("info");
    if (vp_log_set_level(d->log_level) < 0) {
        fprintf(stderr, "vhost-pci-client: --log-level must be error, warning, info or debug\n");
        return 2;
    }
    if (!!d->socket_path == (d->opt_fd >= 0)) {
        fprintf(stderr, "vhost-pci-client: give exactly one of --socket-path PATH and --fd "
                "FDNUM\n");
        return 2;
    }
    if (!d->server_path) {
        fprintf(stderr, "vhost-pci-client: --server PATH is required (see --help)\n");
        return 2;
    }
    if (d->device_id < 0) {
        fprintf(stderr, "vhost-pci-client: --device-id must be >= 0\n");
        return 2;
    }
    if (!(d->ack_timeout_s > 0 && d->ack_timeout_s <= 3600)) {
        fprintf(stderr, "vhost-pci-client: --ack-timeout must be in (0, 3600] seconds\n");
        return 2;
    }
    if (!d->memory_refusal_opt || strcmp(d->memory_refusal_opt, "reply") == 0) {
        d->refusal_replies = true;
    } else if (strcmp(d->memory_refusal_opt, "log") == 0) {
        d->refusal_replies = false;
    } else {
        fprintf(stderr, "vhost-pci-client: --memory-refusal must be reply or log\n");
        return 2;
    }
    d->timeout_ms = (int)(d->ack_timeout_s * 1000.0 + 0.5);
    if (d->timeout_ms <= 0)
        d->timeout_ms = 1;
    d->offer = VP_NET_FEATURES;
    if (d->features_opt) {
        char *end = NULL;
        errno = 0;
        guint64 v = g_ascii_strtoull(d->features_opt, &end, 0);
        if (errno || !end || *end || end == d->features_opt) {
            fprintf(stderr, "vhost-pci-client: --features '%s' is not a number\n",
                    d->features_opt);
            return 2;
        }
        if (v & VU_LEVEL_FEATURES) {
            fprintf(stderr, "vhost-pci-client: --features: bit %d is vhost-user's own "
                    "(VHOST_USER_F_PROTOCOL_FEATURES), not a virtio-net feature\n",
                    VU_F_PROTOCOL_FEATURES);
            return 2;
        }
        d->offer = v;
    }
    if (d->uuid_opt) {
        uuid_t u;
        if (uuid_parse(d->uuid_opt, u) < 0) {
            fprintf(stderr, "vhost-pci-client: --uuid '%s' is not a UUID "
                    "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)\n", d->uuid_opt);
            return 2;
        }
        memcpy(d->uuid, u, 16);
    } else {
        uuid_t u;
        uuid_generate_random(u);
        memcpy(d->uuid, u, 16);
    }
    uuid_unparse_lower(d->uuid, d->uuid_str);
    return -1;
}

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    struct daemon *d = &the_daemon;
    d->opt_fd = -1;
    d->device_id = 1;
    d->ack_timeout_s = 15.0;
    d->listen_fd = -1;
    d->reconnect_delay_ms = RECONNECT_MIN_MS;
    vp_device_info_init(&d->dev);

    int rc = parse_options(d, argc, argv);
    if (rc >= 0) {
        if (rc == 0 && d->print_caps) {
            /* vhost-user.json VHostUserBackendCapabilities: a net backend has no
             * type-specific features. */
            printf("{\n  \"type\": \"net\"\n}\n");
            fflush(stdout);
        }
        return rc;
    }
    vp_log_install();
    signal(SIGPIPE, SIG_IGN);

    d->loop = g_main_loop_new(NULL, FALSE);
    vp_error err = { "" };
    if (d->socket_path) {
        d->listen_fd = listen_unix(d->socket_path, &err);
        if (d->listen_fd < 0) {
            fprintf(stderr, "vhost-pci-client: %s\n", err.msg);
            return 1;
        }
        d->own_socket_path = true;
    } else if (adopt_fd(d, d->opt_fd, &err) < 0) {
        fprintf(stderr, "vhost-pci-client: %s\n", err.msg[0] ? err.msg : "cannot use --fd");
        return 1;
    }
    if (d->listen_fd >= 0)
        d->listen_src = g_unix_fd_add(d->listen_fd, G_IO_IN, on_accept, d);
    g_unix_signal_add(SIGINT, on_signal, d);
    g_unix_signal_add(SIGTERM, on_signal, d);

    char *where = d->socket_path ? g_strdup(d->socket_path) : g_strdup_printf("fd %d", d->opt_fd);
    g_message("client_uuid %s, device_id %" G_GINT64_FORMAT ", vhost-user socket %s, "
              "server %s, offering features 0x%" PRIx64, d->uuid_str, d->device_id, where,
              d->server_path, d->offer);
    g_free(where);
    srv_connect(d);

    g_main_loop_run(d->loop);

    /* Exit: QEMU's connection, the server connection, the socket. */
    if (d->vu) {
        vu_glib_free(d->vu);
        d->vu = NULL;
    }
    dev_release(d);
    if (d->vpc) {
        VpClient *c = d->vpc;
        d->vpc = NULL;
        vp_client_close(c);
        vp_client_unref(c);
    }
    if (d->listen_src)
        g_source_remove(d->listen_src);
    vp_close_fd(&d->listen_fd);
    if (d->own_socket_path)
        unlink(d->socket_path);
    /* Sources (idle unrefs) still pending are dropped with the context. */
    while (g_main_context_iteration(NULL, FALSE))
        ;
    g_main_loop_unref(d->loop);
    g_message("stopped");
    g_free(d->socket_path);
    g_free(d->server_path);
    g_free(d->uuid_opt);
    g_free(d->log_level);
    g_free(d->features_opt);
    g_free(d->memory_refusal_opt);
    return d->exit_code;
}
