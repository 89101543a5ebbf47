/*
 * bridge_priv.h - internals shared by the files of the bridge state machine (the
 * public API is bridge.h). The bridge is one parent and its children:
 *
 *   bridge.c              parent: names, the helpers below (log, actions, timers,
 *                         answers to the frontend), the dispatcher that runs the
 *                         transition table, br_new/br_free/br_post
 *   bridge_transitions.c  the transition table and its handlers: what each event
 *                         does in each state
 *   bridge_requests.c     the vhost-pci requests the bridge builds: the registration
 *                         handshake (spec 1.5.1.1) and DEVICE_INFO(DEL)
 *   bridge_rings.c        the rings as the bridge knows them: which can be served,
 *                         where the device VM resumes them
 *   bridge_mem.c          region sets: the frontend's memory table and the server's
 *                         mirror of it; reading a ring's used index from memory
 *   bridge_placeholder.c  --features-from-device: the placeholder region that creates
 *                         the device before the frontend's memory exists, so that
 *                         FEATURE_BITS reaches the device VM's driver
 *
 * Calls between children go one way: transitions -> requests -> rings -> mem (and
 * transitions -> rings, mem, placeholder); every child may call the parent's helpers;
 * the parent reaches the handlers only through br_transitions[] (and creates and
 * closes the placeholder in br_new/br_free).
 *
 * Threading: one thread (the caller of br_post), as in bridge.h. Every fd in these
 * structs is a dup the bridge owns, named at the field.
 */
#ifndef BRIDGE_PRIV_H
#define BRIDGE_PRIV_H

#include <stddef.h>
#include <sys/types.h>

#include "bridge.h"
#include "vp_memtable.h"

/** One virtqueue as the bridge knows it. */
struct br_ring {
    bool running;              /* vu core: complete, until GET_VRING_BASE */
    bool enabled;              /* SET_VRING_ENABLE (or implicit) */
    bool call_fresh;           /* its call fd came after its kick */
    struct vp_virtq vq;        /* num, guest-physical addresses; kick_fd/call_fd: dups,
                                  owned (-1: none) */
    uint16_t pos;              /* where the device VM resumes it: SET_VRING_BASE, or the
                                  position DEVICE_INFO_ACK(DEL_DONE) handed back */
    bool pos_from_device;      /* ... the latter */
};

/** A region's backing file: fd (a dup the bridge owns; -1 where only the identity
 *  matters) and identity, the server's idea of "the same file". */
struct br_file {
    int fd;
    dev_t st_dev;
    ino_t st_ino;
};

/** A set of regions keyed by guest-physical address: the shared memory table
 *  (protocol/vp_memtable.h; file_offset = mmap_offset) and each region's file. */
struct br_regions {
    struct vp_memtable t;
    struct br_file f[VP_MAX_REGIONS];   /* f[i] is t.r[i]'s */
};

/** Which request of the frontend waits for an answer (the vhost-user core reads
 *  nothing more until it comes, so at most one). */
enum br_wait { BR_WAIT_NONE, BR_WAIT_FEATURES, BR_WAIT_VRING_BASE, BR_WAIT_MEM };

/** What the bridge knows of the device VM's features. */
enum br_feat {
    BR_FEAT_UNKNOWN,       /* no answer yet */
    BR_FEAT_PROVISIONAL,   /* no answer in time: the protocol's set was offered */
    BR_FEAT_KNOWN,         /* the server's answer (or the renegotiated set) */
};

/** The memory change waiting for the server's verdict. */
struct br_memop {
    uint64_t token;            /* 0: none */
    uint32_t op;               /* VP_OP_ADD / VP_OP_DEL */
    bool may_refuse;           /* a refusal fails the frontend's request */
    bool running;              /* a ring ran when it came (a hot-plug) */
    struct vp_region reg;      /* the region (reg.fd: -1, see file) */
    struct br_file file;       /* ADD: fd owned */
};

/** The placeholder region of --features-from-device (bridge_placeholder.c). */
enum br_ph_state {
    BR_PH_NONE,        /* not on the server */
    BR_PH_ADDING,      /* its MEMORY_INFO(ADD) waits for the ACK */
    BR_PH_HELD,        /* the server holds it: a device exists for our client_uuid */
};

struct br_placeholder {
    int fd;                    /* sealed memfd of BR_PH_SIZE bytes, owned; -1: none */
    int create_errno;          /* why fd is -1 with the mode on (logged on connecting) */
    enum br_ph_state state;
    uint64_t token;            /* its MEMORY_INFO(ADD) in flight */
};

/** Guest-physical address and size (bytes) of the placeholder region: above what a
 *  QEMU guest (52-bit physical addresses) or DPDK (47-bit user virtual addresses as
 *  guest addresses) can use, so it never overlaps the frontend's regions. The region
 *  of device_id N starts BR_PH_SIZE * (N mod 2^20) above BR_PH_GPA, so that the
 *  daemons of several frontends of one driver VM (one device) do not collide. */
#define BR_PH_GPA ((uint64_t)1 << 62)
#define BR_PH_SIZE ((uint64_t)2 * 1024 * 1024)

#define BR_EVQ 16

struct br_qent {
    struct br_event ev;
    char reason[VP_MAX_REASON + 128];
};

struct br {
    struct br_config cfg;
    br_action_fn act;
    br_log_fn log;
    void *opaque;

    enum br_state state;
    bool link_up;              /* connected to the vhost-pci server */
    enum br_feat feat;
    uint64_t srv_accepted;     /* features the device VM accepts (& offer) */
    uint64_t fe_features;      /* SET_FEATURES */

    enum br_wait wait;
    uint32_t wait_index;       /* BR_WAIT_VRING_BASE */

    struct br_ring ring[VU_MAX_QUEUES];
    struct br_regions mem;     /* the frontend's table as the device VM may get it */
    struct br_regions mirror;  /* what the server holds of ours (identities only) */
    struct br_memop memop;

    uint64_t next_token;
    uint64_t reg_token;        /* the registration (handshake) in flight or served */
    uint64_t del_token;        /* the DEVICE_INFO(DEL) in flight */
    uint64_t feat_token;       /* the connect-time FEATURE_BITS in flight */
    bool feat_via_device;      /* ... sent while the server holds our placeholder: the
                                  device VM's driver answers it, and a smaller answer
                                  waits for our FEATURE_BITS_ACK (spec 1.5.1.2) */
    struct br_placeholder ph;  /* --features-from-device */
    unsigned reg_nnew;         /* regions the handshake added to the mirror */
    uint64_t reg_new_gpa[VP_MAX_REGIONS];
    uint64_t served_mask;      /* virtqueues of the registered device */
    bool timer_armed[BR_NTIMERS];

    /* scratch for actions */
    struct vp_device_info dev;
    struct vp_region regions[VP_MAX_REGIONS];

    /* run to completion */
    bool dispatching;
    struct br_qent q[BR_EVQ];
    unsigned qhead, qlen;
};

/** What a ring event changed. */
enum br_ring_change {
    BR_RC_NONE,        /* nothing that matters (an unknown index) */
    BR_RC_STARTED,     /* the ring (re)started */
    BR_RC_FDS,         /* a running ring got a new kick or call fd */
    BR_RC_ENABLE,      /* enabled or disabled */
};

/* ---- The transition table (bridge_transitions.c), run by bridge.c ---- */

/** A state as a bit of a state set (struct br_transition's from and to). */
#define S(x) (1u << (x))
/** In a row's @to: the handler keeps the state it was called in. */
#define STAY 0u

/** A handler: runs for one event in one state, returns the next state, which must
 *  be among its table row's allowed ones. @ev and what it points to are the
 *  caller's (valid during the call only). */
typedef enum br_state (*br_handler)(struct br *br, const struct br_event *ev);

/**
 * One row: in any state of @from, @event runs @handler, whose result must be one of
 * @to (STAY: the state it was called in). The first matching row wins; an event no
 * row takes is logged and ignored.
 */
struct br_transition {
    uint32_t from;
    enum br_event_type event;
    br_handler handler;
    uint32_t to;
};

/** The rows, in order of precedence, and their number. */
extern const struct br_transition br_transitions[];
extern const size_t br_ntransitions;

/* ---- bridge.c (parent): helpers every child uses ---- */

/** Log @fmt at @level through the user's log function (br_new's @log); nothing if
 *  none. Lines longer than 1023 bytes are cut. */
void br_log(struct br *br, enum br_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Hand action @a to the user (br_new's @act), synchronously. What @a points to is
 *  lent for the call only. */
void br_emit(struct br *br, const struct br_action *a);

/** A new request token (never 0), matched against the answers' ev->token. */
uint64_t br_new_token(struct br *br);

/** A close-on-exec dup of @fd, owned by the caller; -1 for @fd < 0 or on error. */
int br_dup_fd(int fd);

/** Start timer @t for @ms milliseconds (BR_ACT_TIMER_START); it fires as
 *  br_timer_event(@t). */
void br_timer_start(struct br *br, enum br_timer t, int ms);

/** Stop timer @t if it runs (BR_ACT_TIMER_STOP). */
void br_timer_stop(struct br *br, enum br_timer t);

/** @ev's reason text, "" when it has none. */
const char *br_why(const struct br_event *ev);

/** The vhost-pci device id of the frontend (cfg.device_id). */
uint64_t br_dev_id(const struct br *br);

/** Answer a waiting GET_FEATURES with @f plus cfg.frontend_features (logged with
 *  @how); stops the features timer. Nothing is sent when GET_FEATURES does not wait. */
void br_reply_features(struct br *br, uint64_t f, const char *how);

/** Answer the waiting memory change: @result 0 accepts, -errno refuses. */
void br_reply_mem(struct br *br, int result);

/** GET_VRING_BASE of ring @i answered with its position (@from: where it came from,
 *  for the log): the ring stops and its fds are closed. */
void br_reply_vring_base(struct br *br, uint32_t i, const char *from);

/** Drop the frontend's connection (BR_ACT_DROP_FRONTEND) with @reason (lent). */
void br_drop_frontend(struct br *br, const char *reason);

/** FEATURE_BITS(cfg.offer) to the server (BR_ACT_SEND_FEATURES), answered as
 *  BR_EV_FEATURES_ACK with br->feat_token; @via_device: the server holds memory of
 *  ours, so the device VM's driver answers (br->feat_via_device). */
void br_send_offer(struct br *br, bool via_device);

/* ---- bridge_placeholder.c: --features-from-device ---- */

/** With cfg.features_from_device, create the placeholder's sealed memfd (a failure is
 *  kept in ph.create_errno and logged by br_ph_start). Called by br_new. */
void br_ph_init(struct br *br);

/** Close the placeholder's memfd. Called by br_free. */
void br_ph_close(struct br *br);

/** Connected to the server (link up, mirror empty): with the mode on and no memory of
 *  the frontend yet, send MEMORY_INFO(ADD) of the placeholder and return true (its ACK
 *  sends the offer, br_ph_mem_ack); otherwise return false: the caller sends the offer
 *  itself. */
bool br_ph_start(struct br *br);

/** A MEMORY_INFO_ACK: if it answers the placeholder's ADD (@ev->token), handle it
 *  (send the offer, via the device VM's driver when the server took the region) and
 *  return true; false for any other answer. */
bool br_ph_mem_ack(struct br *br, const struct br_event *ev);

/** The frontend's memory is on the server: MEMORY_INFO(DEL) of the placeholder if the
 *  server holds it (fire and forget). */
void br_ph_retire(struct br *br);

/** The server connection ended: the server forgot the placeholder. */
void br_ph_forget(struct br *br);

/* ---- bridge_requests.c: requests to the vhost-pci server ---- */

/** DEVICE_INFO(DEL) of our frontend (spec 1.6; @what: why, for the log); the served
 *  set is emptied, the answer comes as BR_EV_DEL_ACK with br->del_token. */
void br_send_del(struct br *br, const char *what);

/** The three-message handshake of spec 1.5.1.1 (MEMORY_INFO(ADD), FEATURE_BITS,
 *  DEVICE_INFO(ADD)) for the servable rings; the rings' fds are lent to the action.
 *  Returns the next state: REGISTERING, or READY while there is no server connection
 *  or nothing to serve. */
enum br_state br_do_register(struct br *br);

/* ---- bridge_rings.c: the rings ---- */

/** Close ring @r's kick and call fds (dups the bridge owns; set to -1). */
void br_ring_close(struct br_ring *r);

/** Virtqueues a registration carries, as a bit mask of indexes: every queue pair
 *  whose two rings run and are enabled, provided pair 0's do; 0 when the device
 *  cannot be served. */
uint64_t br_servable_mask(const struct br *br);

/** Did every ring of @mask get its call fd after its kick (a frontend that sends
 *  its real call fd right after the kick, QEMU 7.2)? */
bool br_calls_fresh(const struct br *br, uint64_t mask);

/** Record what a RING_STARTED / RING_CHANGED event says (the ring's fds are dup'ed,
 *  the event's stay the caller's); an index beyond cfg.nqueues is logged and ignored. */
enum br_ring_change br_ring_record(struct br *br, const struct br_event *ev);

/** Forget every ring (fds closed). */
void br_rings_reset(struct br *br);

/** Where the device VM resumes ring @i: its position, unless the ring's used index
 *  (read from the frontend's memory) says otherwise; then that, as DPDK does. */
uint16_t br_ring_resume_pos(struct br *br, unsigned i);

/** Does any configured ring run? */
bool br_any_running(const struct br *br);

/* ---- bridge_mem.c: region sets ---- */

/** Identity (device, inode) and, when @size is not NULL, size in bytes of the file
 *  behind @fd. Returns 0, or -1 when @fd < 0 or fstat fails. Does not take @fd. */
int br_file_identity(int fd, dev_t *dev, ino_t *ino, uint64_t *size);

/** A br_file with no fd and no identity. */
struct br_file br_no_file(void);

/** Empty @s (no fds). */
void br_rs_init(struct br_regions *s);

/** Index in @s of the region starting at guest-physical @gpa, or -1. */
int br_rs_find(const struct br_regions *s, uint64_t gpa);

/** Remove the region starting at @gpa from @s (its fd closed); none: nothing. */
void br_rs_remove(struct br_regions *s, uint64_t gpa);

/** Remove every region of @s, closing their fds. */
void br_rs_clear(struct br_regions *s);

/** Put region @r with its file @f (f->fd is taken, set to -1) into @s, replacing one
 *  at the same gpa. A region that does not fit (overlap, full) is logged, its fd
 *  closed. */
void br_rs_put(struct br *br, struct br_regions *s, const struct vp_region *r,
               struct br_file *f);

/** Entry @i of @s as a region (its fd lent, -1 in the mirror). */
struct vp_region br_rs_region(const struct br_regions *s, unsigned i);

/** Does @s hold exactly @r with file @f (same gpa, size, offset, file identity)? */
bool br_rs_same(const struct br_regions *s, const struct vp_region *r,
                const struct br_file *f);

/** The server holds region @r of the frontend's table too (identity of @f only). */
void br_mirror_put(struct br *br, const struct vp_region *r, const struct br_file *f);

/** MEMORY_INFO(DEL) of every region the server holds that the frontend's table does
 *  not (all of them with @all). Fire and forget: the ACK is only logged. */
void br_mirror_del_stale(struct br *br, bool all);

/** The 2-byte used index of the ring whose used ring is at guest-physical @used, read
 *  from the frontend's memory file. Returns 0, or -1 when no region holds it or the
 *  read fails. */
int br_read_used_idx(const struct br *br, uint64_t used, uint16_t *idx);

/** One sentence (into @out, @len bytes) naming what to change so that the device VM
 *  takes the region's memory file @fd (not taken), or "" when nothing we know of
 *  explains the refusal. */
void br_refusal_fix(int fd, char *out, size_t len);

#endif /* BRIDGE_PRIV_H */
