/*
 * What the Redis broker and the Redis result store share: URL parsing,
 * connecting (with AUTH and SELECT), running commands and Lua scripts, and
 * translating hiredis failures into AIQ_E* codes with a message. Only the
 * Redis drivers include this header (it pulls in hiredis).
 */
#ifndef AIQ_REDIS_COMMON_H
#define AIQ_REDIS_COMMON_H

#include "internal.h"

#include <hiredis/hiredis.h>

/* The +switch-master announcements of a Sentinel target (redis_common.c). */
typedef struct aiq__redis_watch aiq__redis_watch;

/* One Redis Sentinel of a sentinel:// list. */
typedef struct aiq__redis_sentinel {
	char *host;
	int port;
} aiq__redis_sentinel;

/* Where to connect, from redis://[[user]:password@]host[:port][/db],
 * redis://password@host, unix://[[user]:password@]/path[?db=N],
 * redis+socket:///path[?virtual_host=N] (lib/url.h has the grammar), or a
 * kombu Sentinel list "sentinel://[[user]:password@]host[:port][/db];
 * sentinel://host2[:port]..." with a master name (redis.master_name or
 * ?master_name=): the first URL's user, password and db are the master's,
 * as in kombu and Celery; the sentinels' own password is
 * redis.sentinel_password (Celery's sentinel_kwargs). Such a target has no
 * host: every connect asks the sentinels where the master is (see
 * aiq__redis_connect). rediss:// is refused with AIQ_EUNSUPPORTED: hiredis
 * here has no TLS. Read-only after parsing: the connections of a driver
 * share it across threads. */
typedef struct aiq__redis_target {
	char *host; /* NULL for a unix socket and a Sentinel list */
	int port;
	char *path; /* unix socket path, or NULL */
	char *user; /* ACL user, or NULL */
	char *password;
	int db;
	char *redacted; /* the URL with the password hidden, for messages */
	int connect_timeout_ms;
	int socket_timeout_ms;
	/* Sentinel: nsentinels > 0 */
	aiq__redis_sentinel *sentinels;
	size_t nsentinels;
	char *master_name;
	char *sentinel_password; /* NULL = the sentinels take none */
	int sentinel_wait_ms;    /* how long a connect waits for a usable master */
	aiq__redis_watch *watch; /* +switch-master subscriber, shared (thread-safe) */
	/* Durability: WAIT for this many replicas after writes (0 = never). */
	int min_replicas;
	int wait_timeout_ms;
} aiq__redis_target;

/* Parse `url`; timeouts come from cfg (redis.connect_timeout_ms,
 * redis.socket_timeout_ms) or defaults when cfg is NULL. `code` is the
 * error code to report (AIQ_EBROKER or AIQ_ESTORE are for I/O failures;
 * parse errors are AIQ_EINVAL). */
int aiq__redis_target_parse(aiq__redis_target *out, const char *url, const aiq_config *cfg);
void aiq__redis_target_clear(aiq__redis_target *t);

/* Connect, AUTH and SELECT. On failure returns `code` (with a message) and
 * sets *hard when retrying cannot help (wrong password, no such database,
 * a master name no sentinel knows).
 * For a Sentinel target: ask each sentinel in turn
 * SENTINEL get-master-addr-by-name, connect to the address named and
 * confirm with ROLE that it is the master. While sentinels answer but the
 * master they name is unreachable or not (yet) a master, a failover is
 * under way: try again with a growing pause, for up to
 * redis.sentinel_wait_ms, cut short by a +switch-master announcement. No
 * sentinel reachable fails at once, listing them.
 * The first connect of a Sentinel target starts its watcher: a thread
 * subscribed to +switch-master on one sentinel at a time (the next one when
 * that connection fails), stopped by aiq__redis_target_clear. An
 * announcement for the target's master wakes connects that wait out a
 * failover and marks every connection made before it broken (see
 * aiq__redis_conn_broken), so clients move to the new master at once, not
 * on their next failure. A forked child does not use its parent's watcher
 * (it falls back to asking the sentinels after a failure). */
int aiq__redis_connect(redisContext **out, const aiq__redis_target *t, int code, bool *hard);

/* True when the reply is an error whose text starts with `prefix`. */
bool aiq__redis_is_error(const redisReply *r, const char *prefix);

/* True when the target is Sentinel-managed and the reply says the server
 * is a replica now (READONLY, also inside a script's error): the command
 * did not run, and the master must be found again. */
bool aiq__redis_demoted(const aiq__redis_target *t, const redisReply *r);

/* With t->min_replicas > 0: WAIT until that many replicas have every write
 * made so far on connection c, at most t->wait_timeout_ms. AIQ_OK, or
 * `code` with a message saying how many confirmed (the writes may be lost
 * if the master fails now). AIQ_OK at once when min_replicas is 0. */
int aiq__redis_wait_replicas(redisContext *c, const aiq__redis_target *t, int code);

/* Run one command. AIQ_OK with *out set (possibly an error reply the caller
 * inspects); `code` when the connection failed (the context is then
 * unusable: check c->err). */
int aiq__redis_command(redisReply **out, redisContext *c, int code, int argc, const char **argv,
                       const size_t *lens);

/* A Lua script, loaded once per connection and run with EVALSHA. */
typedef struct aiq__redis_script {
	const char *name;
	const char *text;
} aiq__redis_script;

/* Every script of the Redis drivers, indexed by the AIQ__LUA_* ids of the
 * generated redis_lua.h (from the .lua files beside this header). */
extern const aiq__redis_script aiq__redis_scripts[];

#define AIQ__REDIS_MAX_SCRIPTS 16 /* >= AIQ__LUA_N, checked in redis_common.c */

/* One connection of a Redis driver (broker, its lease keeper, the result
 * store): the context, where it goes, and its script cache. Scripts run
 * with EVALSHA by id (AIQ__LUA_*); a NOSCRIPT reply (server restarted,
 * SCRIPT FLUSH) loads the script again and retries once. Not thread-safe:
 * the owner serializes its use. */
typedef struct aiq__redis_conn {
	redisContext *c;                      /* NULL until connected, and after a drop */
	const aiq__redis_target *target;      /* borrowed from the owner */
	int code;                             /* AIQ_EBROKER or AIQ_ESTORE */
	uint64_t generation;                  /* bumped at every connect */
	uint64_t switches;                    /* the target's +switch-master count at connect */
	char sha[AIQ__REDIS_MAX_SCRIPTS][41]; /* "" = not loaded on this connection */
} aiq__redis_conn;

void aiq__redis_conn_init(aiq__redis_conn *k, const aiq__redis_target *t, int code);
/* Connect (dropping any old context); *hard as for aiq__redis_connect. */
int aiq__redis_conn_open(aiq__redis_conn *k, bool *hard);
void aiq__redis_conn_drop(aiq__redis_conn *k);
/* Never connected, dropped, or failed (then unusable until reopened), or
 * connected before the sentinels announced a new master (+switch-master). */
bool aiq__redis_conn_broken(const aiq__redis_conn *k);
/* Why a connection is broken, for a log line: hiredis's error, or that the
 * sentinels announced a new master. */
const char *aiq__redis_conn_why(const aiq__redis_conn *k);

/* Run one command; when the connection is broken before or during the
 * call, reconnect once and retry once. An error reply is returned as is
 * (the caller inspects it). */
int aiq__redis_conn_command(redisReply **out, aiq__redis_conn *k, int argc, const char **argv,
                            const size_t *lens);

/* Run script `id` with nkeys keys among its nargs arguments, reconnecting
 * once and retrying once like aiq__redis_conn_command. Use it for scripts
 * that are safe to run twice; aiq__redis_conn_eval_here never reconnects.
 * An error reply becomes k->code with the message. */
int aiq__redis_conn_eval(redisReply **out, aiq__redis_conn *k, int id, int nkeys, int nargs,
                         const char **args, const size_t *lens);
int aiq__redis_conn_eval_here(redisReply **out, aiq__redis_conn *k, int id, int nkeys, int nargs,
                              const char **args, const size_t *lens);

/* For pipelines: make sure script `id` is loaded (SCRIPT LOAD) on the
 * current connection, then append EVALSHA calls with
 * aiq__redis_conn_append_eval and read the replies with redisGetReply. A
 * NOSCRIPT reply in a pipeline means that call did not run: load again
 * (after clearing k->sha[id]) and resend it. */
int aiq__redis_conn_load(aiq__redis_conn *k, int id);
int aiq__redis_conn_append_eval(aiq__redis_conn *k, int id, int nkeys, int nargs, const char **args,
                                const size_t *lens);

/* The message for a failed context, for aiq__err. */
const char *aiq__redis_errstr(const redisContext *c);

#endif /* AIQ_REDIS_COMMON_H */
