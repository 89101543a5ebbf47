/*
 * itest.h - helpers of the host-only integration tests: a fresh temp dir per test,
 * vhost-pci-server (--device-host local) and vhost-pci-guestd (--bus local) as child
 * processes, their status documents (server --mgmt, guestd --status), bounded
 * polling, peer memory (sealed memfds) and frontend device descriptions.
 *
 * Child processes: started with g_spawn in the test's temp dir, stdout+stderr to a
 * log file there, PR_SET_PDEATHSIG(SIGKILL) so that nothing survives the test
 * program, and killed + reaped by itest_env_stop() (also from a SIGABRT handler when
 * an assertion fails). Logs are copied into the test output on failure; when an
 * assertion aborts the program, the temp dir with the logs is kept and its path
 * printed on stderr.
 *
 * Binaries: $(B)/server/vhost-pci-server, $(B)/guest-driver/vhost-pci-guestd and
 * $(B)/tools/vhost-pci-ctl, where $(B) is three levels above the test program;
 * VP_SERVER_BIN, VP_GUESTD_BIN, VP_CTL_BIN override them.
 */
#ifndef ITEST_H
#define ITEST_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <sys/types.h>

#include "testutil.h"
#include "vp_msg.h"
#include "vpclient.h"

/** How long the tests wait for a condition, or for an ACK (milliseconds). */
#define ITEST_TIMEOUT_MS 5000

/** Options of itest_env_start(). */
typedef struct {
    gboolean no_guestd;          /* start only the server (the test plays the guestd) */
    const char *const *server_args; /* extra server arguments, NULL-terminated */
} ITestOpts;

/** One test's world: temp dir, socket paths, child processes. */
typedef struct {
    char *dir;                   /* fresh temp dir, removed by itest_env_stop() */
    char *sock;                  /* server --listen */
    char *local_bus;             /* server --local-bus, guestd --local-bus */
    char *mgmt;                  /* server --mgmt */
    char *status;                /* guestd --status */
    char *server_log, *guestd_log;
    GPid server_pid, guestd_pid; /* 0 when not running */
    char *guestd_bus;            /* guestd --local-bus when set (e.g. a proxy in front of
                                    local_bus; the caller owns it), else local_bus */
} ITestEnv;

/** Start the server (and the guestd unless opts->no_guestd) and wait until both
 *  answer their status sockets. Aborts the test on failure (with the logs). */
void itest_env_start(ITestEnv *env, const ITestOpts *opts);
/** Assert that the children are still alive (no crash), then SIGTERM, bounded
 *  wait, SIGKILL, waitpid; scan their logs for sanitizer reports; remove the temp
 *  dir. Idempotent. */
void itest_env_stop(ITestEnv *env);
/** Start only the guestd (after the server). */
void itest_start_guestd(ITestEnv *env);
/** (Re)start the server of @env on its paths (after itest_env_start(), e.g. once it
 *  was killed) and wait until it answers its mgmt socket. */
void itest_start_server(ITestEnv *env, const ITestOpts *opts);
/** Spawn @argv (NULL-terminated) in env->dir with stdout+stderr appended to @log; the
 *  child dies with the test program and is killed if the test aborts. Reap it with
 *  itest_alive() (or waitpid). */
GPid itest_spawn(ITestEnv *env, char **argv, const char *log);
/** itest_spawn() for a program that may be found in PATH, with @stdin_fd: NULL
 *  (stdin is /dev/null), or where the write end of a pipe to its stdin goes (the
 *  caller's). */
GPid itest_spawn_stdin(ITestEnv *env, char **argv, const char *log, int *stdin_fd);
/** Run @fn (once) when the test program aborts (a failed assertion), before the
 *  children are killed: for what the test holds outside its temp dir (mounts, system
 *  settings). NULL removes it. */
void itest_on_abort(void (*fn)(void));
/** SIGTERM, at most 3 s, then SIGKILL; reaps; *@pid = 0. */
void itest_stop(GPid *pid, const char *name);
/** SIGKILL and reap now; *@pid = 0. Returns the wait status. */
int itest_kill9(GPid *pid);
/** Kill the guestd now (SIGKILL + waitpid). */
void itest_kill_guestd(ITestEnv *env);
/** TRUE when @pid has not exited (reaps it when it has, recording the status). */
gboolean itest_alive(GPid pid);
/** Print the children's logs into the test output (g_test_message). */
void itest_dump_logs(ITestEnv *env);

/** Path of a program: "server", "guestd", "ctl" or "client" (the vhost-pci-client
 *  daemon; VP_CLIENT_BIN overrides). */
char *itest_bin(const char *which);

/** Write an executable script @dir/guestd that runs the guestd of itest_bin("guestd")
 *  with the arguments it gets plus --endpoint @endpoint (in single quotes). Returns
 *  its path (g_free(); the caller removes the file). Point VP_GUESTD_BIN at it
 *  before itest_env_start() to give the guestd a data path endpoint. */
char *itest_guestd_endpoint_wrapper(const char *dir, const char *endpoint);

/* ---- status documents ---- */

/** Read @fd to EOF (a read error such as a reset counts as EOF: the peer closed with
 *  our request unread), at most @timeout_ms milliseconds. Returns what came (free
 *  with g_string_free()); *@eof says whether it ended. @fd stays the caller's. */
GString *itest_read_to_eof(int fd, int timeout_ms, gboolean *eof);

/** Connect to the status-style socket @path, send request[0..len), read to EOF (2 s
 *  bound) and parse one JSON object. NULL when there is no answer or it is not a JSON
 *  object. Free with json_node_unref(). */
JsonNode *itest_socket_query(const char *path, const char *request, gsize len);

/** The server's status document (connect to --mgmt, "status\n", read to EOF).
 *  Returns NULL when the server does not answer. Free with json_node_unref(). */
JsonNode *itest_server_status_try(ITestEnv *env);
/** Same, aborting the test when there is no answer. */
JsonNode *itest_server_status(ITestEnv *env);
/** The guestd's status document (--status socket), or NULL / abort. */
JsonNode *itest_guestd_status_try(ITestEnv *env);
JsonNode *itest_guestd_status(ITestEnv *env);

/** The server device of @uuid (canonical text) in @status, or NULL. */
JsonObject *itest_server_device(JsonNode *status, const char *uuid);
/** The guestd device with slot @slot in @status, or NULL. */
JsonObject *itest_guestd_device(JsonNode *status, gint64 slot);
/** Number of devices in a status document. */
guint itest_ndevices(JsonNode *status);
/** Integer member (dotted path allowed: "counters.clones"); aborts when missing. */
gint64 itest_int(JsonObject *o, const char *path);
/** Boolean member; aborts when missing. */
gboolean itest_bool(JsonObject *o, const char *path);
/** Array member's element @i as an object; aborts when missing. */
JsonObject *itest_elem(JsonObject *o, const char *array, guint i);
/** Length of array member @array (aborts when missing). */
guint itest_len(JsonObject *o, const char *array);

/** A condition on the two status documents (guestd may be NULL when not running). */
typedef gboolean (*ITestCond)(JsonNode *server, JsonNode *guestd, gpointer data);
/** Poll both status documents every 20 ms until @cond holds, at most @timeout_ms;
 *  on timeout abort the test naming @what and printing the last documents. */
void itest_wait_for(ITestEnv *env, ITestCond cond, gpointer data, int timeout_ms,
                    const char *what);

/** Number of open fds of process @pid (/proc/<pid>/fd). */
int itest_count_fds(GPid pid);
/** Wait (bounded by @timeout_ms) until @pid has exactly @expected open fds: a
 *  process may close an fd a moment after its state looks final. On timeout list
 *  /proc/<pid>/fd and abort the test, naming @what. */
void itest_wait_fds(GPid pid, int expected, int timeout_ms, const char *what);

/* ---- memory and devices of a pretend driver VM ---- */

/** A sealed (SHRINK|GROW) memfd of @size bytes, mapped into this process at
 *  *@map (may be NULL: not mapped). */
int itest_memfd(gsize size, void **map);

/** Fill @di with a virtio-net frontend (@device_id): 2 virtqueues of 256 entries,
 *  rings at guest-physical @ring_gpa (queue i at ring_gpa + i * 0x10000: desc,
 *  avail +0x1000, used +0x2000), last_avail_idx @lai0/@lai1, kick/call eventfds
 *  from @efds[4] (kick0, call0, kick1, call1; -1 allowed). */
void itest_net_device(struct vp_device_info *di, guint64 device_id, guint64 ring_gpa,
                      guint16 lai0, guint16 lai1, const int efds[4]);
/** Make the avail index of queue @q of a device described by itest_net_device()
 *  equal @idx in the mapped memory @ram (region at gpa @ram_gpa), so the device
 *  sees no new buffers after resuming at last_avail_idx @idx. */
void itest_set_avail_idx(void *ram, guint64 ram_gpa, guint64 ring_gpa, guint q, guint16 idx);
/** Four fresh eventfds into @efds. */
void itest_eventfds(int efds[4]);

/** Connect a client (aborts on failure). @uuid may be NULL (random). */
VpClient *itest_client(ITestEnv *env, const guint8 *uuid);
/** The client's uuid as text (static buffer per call site is the caller's). */
void itest_uuid(VpClient *c, char out[37]);

/** Run vhost-pci-ctl with @argv (after the program name, NULL-terminated); returns
 *  its stdout (caller frees) and exit status in *@status. */
char *itest_run_ctl(const char *const *argv, int *status);

#endif
