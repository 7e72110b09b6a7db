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

/* Where to connect, from redis://[[user]:password@]host[:port][/db],
 * redis://password@host, unix://[[user]:password@]/path[?db=N] or
 * redis+socket:///path[?virtual_host=N] (lib/url.h has the grammar).
 * rediss:// is refused with AIQ_EUNSUPPORTED: hiredis here has no TLS. */
typedef struct aiq__redis_target {
	char *host; /* NULL for a unix socket */
	int port;
	char *path; /* unix socket path, or NULL */
	char *user; /* ACL user, or NULL */
	char *password;
	int db;
	char *redacted; /* the URL with the password hidden, for messages */
	int connect_timeout_ms;
	int socket_timeout_ms;
} aiq__redis_target;

/* Parse `url`; timeouts come from cfg (redis.connect_timeout_ms,
 * redis.socket_timeout_ms) or defaults when cfg is NULL. `code` is the
 * error code to report (AIQ_EBROKER or AIQ_ESTORE are for I/O failures;
 * parse errors are AIQ_EINVAL). */
int aiq__redis_target_parse(aiq__redis_target *out, const char *url, const aiq_config *cfg);
void aiq__redis_target_clear(aiq__redis_target *t);

/* Connect, AUTH and SELECT. On failure returns `code` (with a message) and
 * sets *hard when retrying cannot help (wrong password, no such database). */
int aiq__redis_connect(redisContext **out, const aiq__redis_target *t, int code, bool *hard);

/* True when the reply is an error whose text starts with `prefix`. */
bool aiq__redis_is_error(const redisReply *r, const char *prefix);

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

/* Run `script` with nkeys keys followed by the other arguments. `sha`
 * (41 bytes) caches the script's digest for this connection; "" = not yet
 * loaded. A script error reply becomes `code` with the message. */
int aiq__redis_eval(redisReply **out, redisContext *c, int code, const aiq__redis_script *script,
                    char sha[41], int nkeys, int nargs, const char **args, const size_t *lens);

/* The message for a failed context, for aiq__err. */
const char *aiq__redis_errstr(const redisContext *c);

#endif /* AIQ_REDIS_COMMON_H */
