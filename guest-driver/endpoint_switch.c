/*
 * endpoint_switch.c - the switch endpoint (endpoint.h; issue 11, "VM to VM"): every
 * started port (one NET frontend of a driver VM) is a port of one learning Ethernet
 * switch inside guestd. A frame a driver VM transmits is copied once, straight from
 * its transmit buffers into the receive buffers of the destination driver VM(s): no
 * intermediate buffer, no host process, half the copies of a host switch.
 *
 *  - Learning: the source MAC of every frame is remembered for its port (a unicast
 *    source only). Destinations: a known unicast MAC goes to its port (dropped when
 *    that is the sending port); broadcast, multicast and unknown unicast are flooded
 *    to every other port.
 *  - A destination without receive buffers drops the frame (as a switch with a full
 *    output queue would, and as DPDK's io forwarding does): a driver VM that stops
 *    posting buffers slows nobody else down.
 *  - Entries age out after SW_AGE_NS unseen (a coarse clock, read at the first frame
 *    after each poll: an idle poll reads no clock).
 *  - A sending port keeps the two table entries of its last unicast frame (source,
 *    destination): the next frame with the same addresses skips both look-ups when
 *    those entries still hold them (a MAC has one entry at most, entries never move:
 *    an entry that still holds the address is the one a look-up would find), the
 *    source's on this port, the destination's live and on another port. The source's
 *    entry is refreshed as learning would.
 *
 * Security model: frames come from driver VMs that may be hostile and may rewrite
 * their buffers while they are copied. The 12 address bytes are copied out once
 * into locals and decided on; the frame is then copied, never parsed (a frame that
 * changes under the copy only changes what its destinations receive). The MAC table
 * is bounded and cannot be taken over: SW_BUCKETS x SW_WAYS entries, a keyed hash
 * (random key per process), at most SW_PORT_MAX_MACS entries per port, and a full
 * bucket only ever gives up the sender's own oldest entry or an aged one, never a
 * live entry of another port. What a learning switch cannot prevent, this one does
 * not either: a driver VM may claim another's MAC address and receive its traffic
 * until the owner transmits again (no port security: the frontends' MAC addresses
 * are not known to guestd). Flooding is bounded by the data path's budget per port
 * and poll.
 *
 * Threads: with several data path workers, the table and the counters are used under
 * one mutex (taken per frame, for the decision only, never around a copy); with one
 * worker, or none, no lock is taken. A port that has fewer queue pairs than there are
 * workers is written by other workers under its receive queue's lock (net.c).
 * libc (and pthreads) only.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "endpoint.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "net.h"

#define SW_BUCKETS 1024                    /* a power of two */
#define SW_WAYS 4
#define SW_PORT_MAX_MACS 256
#define SW_AGE_NS (300ULL * 1000 * 1000 * 1000)
#define ETH_HLEN 14

struct sw_entry {
    uint64_t mac;                 /* 48 bits; 0: free (00:00:00:00:00:00 is never learned) */
    struct gd_net_port *port;
    uint64_t seen_ns;
};

/* Per-port bookkeeping (how many entries it holds), found by port. */
struct sw_port {
    struct gd_net_port *port;
    unsigned nmacs;
    /* The entries of its last unicast frame (the file comment); NULL: none. */
    struct sw_entry *c_se, *c_de; /* the source's and the destination's */
};

struct sw_ep {
    struct gd_endpoint base;
    pthread_mutex_t mu;           /* the table and the counters, with several workers */
    uint64_t key;                 /* hash key */
    uint64_t now_ns;              /* coarse clock, read once per poll with frames */
    bool clock_stale;             /* a poll began since now_ns was read */
    struct sw_entry table[SW_BUCKETS][SW_WAYS];
    struct sw_port *ports;
    unsigned nports, capports;
    /* counters (status; stored atomically, read by the control thread) */
    uint64_t entries;             /* ways in use (aged ones until they are reused) */
    uint64_t unicast, flooded, filtered, runts, no_buffers, learned, not_learned;
};

/* Add to a counter that one thread at a time changes (the table's user). */
static void count(uint64_t *c, uint64_t v) { __atomic_store_n(c, *c + v, __ATOMIC_RELAXED); }

static struct sw_ep *sw_of(struct gd_endpoint *ep) { return (struct sw_ep *)ep; }

static uint64_t mac_of(const uint8_t *b)
{
    return (uint64_t)b[0] << 40 | (uint64_t)b[1] << 32 | (uint64_t)b[2] << 24 |
           (uint64_t)b[3] << 16 | (uint64_t)b[4] << 8 | b[5];
}

static bool mac_is_group(uint64_t mac) { return (mac >> 40) & 1; }

static struct sw_entry *bucket(struct sw_ep *sw, uint64_t mac)
{
    uint64_t h = (mac ^ sw->key) * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
    return sw->table[h & (SW_BUCKETS - 1)];
}

static struct sw_port *sw_port(struct sw_ep *sw, const struct gd_net_port *port)
{
    for (unsigned i = 0; i < sw->nports; i++) {
        if (sw->ports[i].port == port)
            return &sw->ports[i];
    }
    return NULL;
}

static uint64_t now_of(const struct sw_ep *sw)
{
    return __atomic_load_n(&sw->now_ns, __ATOMIC_RELAXED);
}

/* Seen less than SW_AGE_NS ago. With several workers each stores the clock it read,
 * so now_ns may briefly lag an entry's seen_ns: "seen in the future" is live, not an
 * unsigned wrap that would age it at once. */
static bool live(const struct sw_ep *sw, const struct sw_entry *e)
{
    return e->mac && (int64_t)(now_of(sw) - e->seen_ns) < (int64_t)SW_AGE_NS;
}

/* The live entry of @mac, or NULL. */
static struct sw_entry *lookup(struct sw_ep *sw, uint64_t mac)
{
    struct sw_entry *b = bucket(sw, mac);
    for (unsigned w = 0; w < SW_WAYS; w++) {
        if (b[w].mac == mac && live(sw, &b[w]))
            return &b[w];
    }
    return NULL;
}

static void drop_entry(struct sw_ep *sw, struct sw_entry *e)
{
    struct sw_port *sp = sw_port(sw, e->port);
    if (sp && sp->nmacs)
        sp->nmacs--;
    memset(e, 0, sizeof(*e));
    count(&sw->entries, (uint64_t)-1);
}

/* Remember that @mac (unicast, not zero) lives behind @port (see the file comment).
 * Returns its entry, or NULL when it could not be learned. */
static struct sw_entry *learn(struct sw_ep *sw, struct sw_port *sp, uint64_t mac)
{
    struct sw_entry *b = bucket(sw, mac);
    struct sw_entry *victim = NULL;
    for (unsigned w = 0; w < SW_WAYS; w++) {
        struct sw_entry *e = &b[w];
        if (e->mac == mac) {
            if (e->port != sp->port) { /* moved (or claimed) */
                drop_entry(sw, e);
                break;
            }
            e->seen_ns = now_of(sw);
            return e;
        }
    }
    if (sp->nmacs >= SW_PORT_MAX_MACS) {
        count(&sw->not_learned, 1);
        return NULL;
    }
    /* A free or aged way first, else the sender's own oldest entry. */
    for (unsigned w = 0; w < SW_WAYS; w++) {
        struct sw_entry *e = &b[w];
        if (!live(sw, e)) {
            victim = e;
            break;
        }
        if (e->port == sp->port && (!victim || e->seen_ns < victim->seen_ns))
            victim = e;
    }
    if (!victim) {
        count(&sw->not_learned, 1); /* flooded until a way frees up */
        return NULL;
    }
    if (victim->mac)
        drop_entry(sw, victim);
    *victim = (struct sw_entry){ .mac = mac, .port = sp->port, .seen_ns = now_of(sw) };
    sp->nmacs++;
    count(&sw->entries, 1);
    count(&sw->learned, 1);
    return victim;
}

/*
 * Learn @src on @port and find where @dst goes: its port, or NULL to flood (group or
 * unknown destination). The caller holds the lock when there are several workers.
 * The port's kept decision answers when it still holds (file comment); a new
 * unicast decision with both addresses in the table is kept.
 */
static struct gd_net_port *decide(struct sw_ep *sw, struct gd_net_port *port, uint64_t dst,
                                  uint64_t src)
{
    if (__atomic_load_n(&sw->clock_stale, __ATOMIC_RELAXED)) {
        __atomic_store_n(&sw->clock_stale, false, __ATOMIC_RELAXED);
        __atomic_store_n(&sw->now_ns, gd_now_ns(), __ATOMIC_RELAXED);
    }
    struct sw_port *sp = sw_port(sw, port);
    if (sp && sp->c_se && sp->c_se->mac == src && sp->c_se->port == port &&
        sp->c_de->mac == dst && sp->c_de->port != port && live(sw, sp->c_de)) {
        sp->c_se->seen_ns = now_of(sw); /* what learn() would do */
        return sp->c_de->port;
    }
    struct sw_entry *se = sp && src && !mac_is_group(src) ? learn(sw, sp, src) : NULL;
    struct sw_entry *de = mac_is_group(dst) ? NULL : lookup(sw, dst);
    if (se && de && de->port != port) {
        sp->c_se = se;
        sp->c_de = de;
    }
    return de ? de->port : NULL;
}

/* Deliver to one port; a full receive queue drops the frame. */
static void deliver(struct sw_ep *sw, struct gd_net_port *to, const struct iovec *iov,
                    unsigned niov, size_t len)
{
    int r = gd_net_port_rx(to, iov, niov, len);
    if (r == -EAGAIN)
        __atomic_fetch_add(&sw->no_buffers, 1, __ATOMIC_RELAXED);
    if (r < 0) /* otherwise counted by the port too */
        __atomic_fetch_add(&sw->base.drops, 1, __ATOMIC_RELAXED);
}

static int sw_tx(struct gd_endpoint *ep, struct gd_net_port *port, const struct iovec *iov,
                 unsigned niov, size_t len)
{
    struct sw_ep *sw = sw_of(ep);
    uint8_t hdr[12];
    size_t got = 0;
    for (unsigned i = 0; i < niov && got < sizeof(hdr); i++) {
        size_t n = iov[i].iov_len < sizeof(hdr) - got ? iov[i].iov_len : sizeof(hdr) - got;
        memcpy(hdr + got, iov[i].iov_base, n); /* read once; decided on the copy */
        got += n;
    }
    if (len < ETH_HLEN || got < sizeof(hdr)) {
        __atomic_fetch_add(&sw->runts, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&ep->drops, 1, __ATOMIC_RELAXED);
        return 0;
    }
    uint64_t dst = mac_of(hdr), src = mac_of(hdr + 6);
    bool locked = gd_net_nworkers(ep->net) > 1;
    if (locked)
        pthread_mutex_lock(&sw->mu);
    struct gd_net_port *to = decide(sw, port, dst, src);
    if (to == port)
        count(&sw->filtered, 1); /* its own address: a switch does not send it back */
    else if (to)
        count(&sw->unicast, 1);
    else
        count(&sw->flooded, 1);
    if (locked)
        pthread_mutex_unlock(&sw->mu);
    if (to) {
        if (to != port)
            deliver(sw, to, iov, niov, len);
        return 0;
    }
    unsigned np = gd_net_nports(ep->net);
    for (unsigned i = 0; i < np; i++) {
        struct gd_net_port *p = gd_net_port_at(ep->net, i);
        if (p != port)
            deliver(sw, p, iov, niov, len);
    }
    return 0;
}

static int sw_poll(struct gd_endpoint *ep)
{
    struct sw_ep *sw = sw_of(ep);
    if (!__atomic_load_n(&sw->clock_stale, __ATOMIC_RELAXED))
        __atomic_store_n(&sw->clock_stale, true, __ATOMIC_RELAXED);
    return 0;
}

static void sw_port_added(struct gd_endpoint *ep, struct gd_net_port *port)
{
    struct sw_ep *sw = sw_of(ep);
    if (sw->nports == sw->capports) {
        unsigned ncap = sw->capports ? sw->capports * 2 : 8;
        struct sw_port *np = realloc(sw->ports, ncap * sizeof(*np));
        if (!np) {
            gd_warn("switch: %s: out of memory: its addresses are not learned (flooded to)",
                    gd_net_port_name(port));
            return;
        }
        sw->ports = np;
        sw->capports = ncap;
    }
    sw->ports[sw->nports++] = (struct sw_port){ .port = port };
}

static void sw_port_removed(struct gd_endpoint *ep, struct gd_net_port *port)
{
    struct sw_ep *sw = sw_of(ep);
    for (unsigned b = 0; b < SW_BUCKETS; b++) {
        for (unsigned w = 0; w < SW_WAYS; w++) {
            if (sw->table[b][w].mac && sw->table[b][w].port == port)
                drop_entry(sw, &sw->table[b][w]);
        }
    }
    for (unsigned i = 0; i < sw->nports; i++) {
        if (sw->ports[i].port == port) {
            sw->ports[i] = sw->ports[--sw->nports];
            break;
        }
    }
}

static uint64_t read_count(const uint64_t *c) { return __atomic_load_n(c, __ATOMIC_RELAXED); }

static void sw_status(struct gd_endpoint *ep, struct gd_json *j)
{
    struct sw_ep *sw = sw_of(ep);
    gd_json_uint(j, "macs", read_count(&sw->entries));
    gd_json_uint(j, "unicast", read_count(&sw->unicast));
    gd_json_uint(j, "flooded", read_count(&sw->flooded));
    gd_json_uint(j, "filtered", read_count(&sw->filtered));
    gd_json_uint(j, "runts", read_count(&sw->runts));
    gd_json_uint(j, "no_buffers", read_count(&sw->no_buffers));
    gd_json_uint(j, "learned", read_count(&sw->learned));
    gd_json_uint(j, "not_learned", read_count(&sw->not_learned));
}

static void sw_free(struct gd_endpoint *ep)
{
    struct sw_ep *sw = sw_of(ep);
    pthread_mutex_destroy(&sw->mu);
    free(sw->ports);
    free(sw);
}

static const struct gd_endpoint_ops sw_ops = {
    .name = "switch",
    .port_added = sw_port_added,
    .port_removed = sw_port_removed,
    .tx = sw_tx,
    .poll = sw_poll,
    .status = sw_status,
    .free = sw_free,
};

struct gd_endpoint *gd_endpoint_switch_new(struct gd_loop *loop, vp_error *err)
{
    struct sw_ep *sw = calloc(1, sizeof(*sw));
    if (!sw) {
        vp_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    sw->base.ops = &sw_ops;
    sw->base.loop = loop;
    pthread_mutex_init(&sw->mu, NULL);
    if (getrandom(&sw->key, sizeof(sw->key), GRND_NONBLOCK) != sizeof(sw->key))
        sw->key = gd_now_ns() * 0x9e3779b97f4a7c15ULL; /* no entropy yet (early boot) */
    sw->now_ns = gd_now_ns();
    return &sw->base;
}
