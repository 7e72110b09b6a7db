/*
 * Shared plumbing of the Redis broker and result store: URLs, connections,
 * commands, Lua scripts, and hiredis errors turned into AIQ_E* codes.
 */
#include "redis_common.h"
#include "redis_lua.h"

#include "url.h"
#include "config_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_PORT 6379

const aiq__redis_script aiq__redis_scripts[AIQ__LUA_N] = AIQ__LUA_SCRIPTS;

/* A database number, as kombu's _prepare_virtual_host reads it: "" and "/"
 * are 0, one leading '/' is dropped. */
static int parse_db(const char *s, int *db)
{
	if (*s == '/')
		s++;
	if (*s == '\0') {
		*db = 0;
		return AIQ_OK;
	}
	long v = 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > 1000000)
			return -1;
		v = v * 10 + (*s - '0');
	}
	*db = (int)v;
	return AIQ_OK;
}

/* Seconds (redis-py takes floats) as milliseconds above 0. */
static bool seconds_ms(const char *v, int *ms)
{
	char *end;
	double d = strtod(v, &end);
	if (*v == '\0' || *end != '\0' || !(d > 0 && d <= 86400))
		return false;
	*ms = (int)(d * 1000.0 + 0.5);
	if (*ms == 0)
		*ms = 1;
	return true;
}

static int tls_unsupported(const aiq__redis_target *t)
{
	return aiq__err(AIQ_EUNSUPPORTED,
	                "Redis URL '%.200s' asks for TLS, which this library's hiredis (built "
	                "without SSL) cannot speak; connect through a TLS tunnel (stunnel, "
	                "spiped, or an ssh/haproxy forward) listening on a local plain port and "
	                "use redis:// to that port",
	                t->redacted);
}

/* Query options: what Celery's Redis transport and result backend take from
 * a URL and this driver has; anything else is refused, as kombu does. */
static int url_options(aiq__redis_target *t, const aiq__url *u)
{
	for (size_t i = 0; i < u->nparams; i++) {
		const char *k = u->params[i].key, *v = u->params[i].value;
		if (strcmp(k, "db") == 0 || strcmp(k, "virtual_host") == 0) {
			if (parse_db(v, &t->db) != AIQ_OK)
				return aiq__err(AIQ_EINVAL,
				                "Redis URL '%.200s': %s must be a database number, "
				                "got '%.40s'",
				                t->redacted, k, v);
		} else if (strcmp(k, "password") == 0) {
			free(t->password);
			if ((t->password = aiq__strdup(v)) == NULL)
				return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
		} else if (strcmp(k, "socket_timeout") == 0 ||
		           strcmp(k, "socket_connect_timeout") == 0) {
			int *dst = strcmp(k, "socket_timeout") == 0 ? &t->socket_timeout_ms
			                                            : &t->connect_timeout_ms;
			if (!seconds_ms(v, dst))
				return aiq__err(
				        AIQ_EINVAL,
				        "Redis URL '%.200s': %s must be a number of seconds "
				        "above 0, got '%.40s'",
				        t->redacted, k, v);
		} else if (strncmp(k, "ssl", 3) == 0) {
			return tls_unsupported(t);
		} else {
			return aiq__err(AIQ_EINVAL,
			                "Redis URL '%.200s': unknown option '%.40s' (this driver "
			                "takes db, virtual_host, password, socket_timeout, "
			                "socket_connect_timeout)",
			                t->redacted, k);
		}
	}
	return AIQ_OK;
}

int aiq__redis_target_parse(aiq__redis_target *t, const char *url, const aiq_config *cfg)
{
	memset(t, 0, sizeof *t);
	t->connect_timeout_ms = (int)aiq__cfg_int(cfg, AIQ_CFG_REDIS_CONNECT_TIMEOUT_MS);
	t->socket_timeout_ms = (int)aiq__cfg_int(cfg, AIQ_CFG_REDIS_SOCKET_TIMEOUT_MS);
	if (url == NULL)
		return aiq__err(AIQ_EINVAL, "no Redis URL given");
	aiq__url u;
	int rc = aiq__url_parse(&u, url);
	t->redacted = u.redacted;
	u.redacted = NULL;
	if (rc != AIQ_OK) {
		aiq__url_clear(&u);
		return rc;
	}
	bool unix_socket = strcmp(u.scheme, "unix") == 0 || strcmp(u.scheme, "redis+socket") == 0;
	if (strcmp(u.scheme, "rediss") == 0) {
		rc = tls_unsupported(t);
		goto out;
	}
	if (!unix_socket && strcmp(u.scheme, "redis") != 0) {
		rc = aiq__err(AIQ_EINVAL,
		              "not a redis://, unix:// or redis+socket:// URL: '%.200s'",
		              t->redacted);
		goto out;
	}
	/* "redis://SECRET@host": userinfo without ':' is a password, as the
	 * Redis clients Celery uses read it. */
	if (u.bare_user) {
		t->password = u.user;
	} else {
		t->user = u.user;
		t->password = u.password;
	}
	u.user = u.password = NULL;
	if (unix_socket) {
		if (u.host || u.port || u.path == NULL || *u.path == '\0') {
			rc = aiq__err(AIQ_EINVAL,
			              "Redis URL '%.200s' needs an absolute socket path after "
			              "'://' (e.g. %s:///run/redis/redis.sock)",
			              t->redacted, u.scheme);
			goto out;
		}
		t->path = aiq__asprintf("/%s", u.path);
		if (t->path == NULL)
			goto oom;
	} else {
		t->host = aiq__strdup(u.host ? u.host : "127.0.0.1");
		if (t->host == NULL)
			goto oom;
		t->port = u.port ? u.port : DEFAULT_PORT;
		if (u.path && parse_db(u.path, &t->db) != AIQ_OK) {
			rc = aiq__err(AIQ_EINVAL,
			              "bad database number in Redis URL '%.200s' (expected /N)",
			              t->redacted);
			goto out;
		}
	}
	rc = url_options(t, &u);
out:
	aiq__url_clear(&u);
	return rc;
oom:
	aiq__url_clear(&u);
	return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
}

void aiq__redis_target_clear(aiq__redis_target *t)
{
	if (t == NULL)
		return;
	free(t->host);
	free(t->path);
	free(t->user);
	if (t->password)
		memset(t->password, 0, strlen(t->password));
	free(t->password);
	free(t->redacted);
	memset(t, 0, sizeof *t);
}

static struct timeval ms_timeval(int ms)
{
	struct timeval tv;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	return tv;
}

const char *aiq__redis_errstr(const redisContext *c)
{
	if (c == NULL)
		return "no connection";
	if (c->err == 0)
		return "no error";
	return c->errstr[0] ? c->errstr : "connection error";
}

bool aiq__redis_is_error(const redisReply *r, const char *prefix)
{
	return r && r->type == REDIS_REPLY_ERROR && r->str &&
	       strncmp(r->str, prefix, strlen(prefix)) == 0;
}

int aiq__redis_command(redisReply **out, redisContext *c, int code, int argc, const char **argv,
                       const size_t *lens)
{
	*out = NULL;
	if (c == NULL || c->err)
		return aiq__err(code, "Redis connection is down: %s", aiq__redis_errstr(c));
	redisReply *r = redisCommandArgv(c, argc, argv, lens);
	if (r == NULL)
		return aiq__err(code, "Redis %s failed: %s", argv[0], aiq__redis_errstr(c));
	*out = r;
	return AIQ_OK;
}

int aiq__redis_connect(redisContext **out, const aiq__redis_target *t, int code, bool *hard)
{
	*out = NULL;
	if (hard)
		*hard = false;
	struct timeval ctv = ms_timeval(t->connect_timeout_ms);
	redisContext *c = t->path ? redisConnectUnixWithTimeout(t->path, ctv)
	                          : redisConnectWithTimeout(t->host, t->port, ctv);
	if (c == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory connecting to Redis");
	if (c->err) {
		int rc = aiq__err(code, "cannot connect to Redis at %.200s: %s", t->redacted,
		                  aiq__redis_errstr(c));
		redisFree(c);
		return rc;
	}
	redisSetTimeout(c, ms_timeval(t->socket_timeout_ms));
	if (!t->path)
		redisEnableKeepAlive(c);
	redisReply *r = NULL;
	int rc = AIQ_OK;
	if (t->password) {
		const char *argv[3] = {"AUTH", t->user ? t->user : t->password, t->password};
		rc = aiq__redis_command(&r, c, code, t->user ? 3 : 2, argv, NULL);
		if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR) {
			rc = aiq__err(code, "Redis at %.200s refused the password: %s", t->redacted,
			              r->str);
			if (hard)
				*hard = true;
		}
		freeReplyObject(r);
		r = NULL;
	}
	if (rc == AIQ_OK && t->db != 0) {
		char db[16];
		snprintf(db, sizeof db, "%d", t->db);
		const char *argv[2] = {"SELECT", db};
		rc = aiq__redis_command(&r, c, code, 2, argv, NULL);
		if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR) {
			rc = aiq__err(code, "Redis at %.200s: SELECT %d failed: %s", t->redacted,
			              t->db, r->str);
			if (hard)
				*hard = true;
		}
		freeReplyObject(r);
		r = NULL;
	}
	if (rc == AIQ_OK) {
		/* Detect a server that demands a password we did not give. */
		const char *argv[1] = {"PING"};
		rc = aiq__redis_command(&r, c, code, 1, argv, NULL);
		if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR) {
			rc = aiq__err(code, "Redis at %.200s: %s", t->redacted, r->str);
			if (hard)
				*hard = aiq__redis_is_error(r, "NOAUTH") ||
				        aiq__redis_is_error(r, "WRONGPASS");
		}
		freeReplyObject(r);
	}
	if (rc != AIQ_OK) {
		redisFree(c);
		return rc;
	}
	*out = c;
	return AIQ_OK;
}

_Static_assert(AIQ__LUA_N <= AIQ__REDIS_MAX_SCRIPTS, "raise AIQ__REDIS_MAX_SCRIPTS");

void aiq__redis_conn_init(aiq__redis_conn *k, const aiq__redis_target *t, int code)
{
	memset(k, 0, sizeof *k);
	k->target = t;
	k->code = code;
}

void aiq__redis_conn_drop(aiq__redis_conn *k)
{
	if (k->c)
		redisFree(k->c);
	k->c = NULL;
	memset(k->sha, 0, sizeof k->sha);
}

bool aiq__redis_conn_broken(const aiq__redis_conn *k)
{
	return k->c == NULL || k->c->err != 0;
}

int aiq__redis_conn_open(aiq__redis_conn *k, bool *hard)
{
	aiq__redis_conn_drop(k);
	int rc = aiq__redis_connect(&k->c, k->target, k->code, hard);
	if (rc == AIQ_OK)
		k->generation++;
	return rc;
}

int aiq__redis_conn_command(redisReply **out, aiq__redis_conn *k, int argc, const char **argv,
                            const size_t *lens)
{
	*out = NULL;
	int rc = k->code;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (aiq__redis_conn_broken(k) && (rc = aiq__redis_conn_open(k, NULL)) != AIQ_OK)
			return rc;
		rc = aiq__redis_command(out, k->c, k->code, argc, argv, lens);
		if (rc == AIQ_OK || !aiq__redis_conn_broken(k))
			return rc;
	}
	return rc;
}

int aiq__redis_conn_load(aiq__redis_conn *k, int id)
{
	if (k->sha[id][0] != '\0')
		return AIQ_OK;
	const aiq__redis_script *script = &aiq__redis_scripts[id];
	const char *argv[3] = {"SCRIPT", "LOAD", script->text};
	redisReply *r = NULL;
	int rc = aiq__redis_command(&r, k->c, k->code, 3, argv, NULL);
	if (rc != AIQ_OK)
		return rc;
	if (r->type != REDIS_REPLY_STRING || r->len != 40) {
		rc = aiq__err(k->code, "Redis could not load the %s script: %s", script->name,
		              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		freeReplyObject(r);
		return rc;
	}
	memcpy(k->sha[id], r->str, 40);
	k->sha[id][40] = '\0';
	freeReplyObject(r);
	return AIQ_OK;
}

/* EVALSHA's argv: the command, digest and key count, then the arguments. */
static int evalsha_argv(const char ***argv, size_t **argl, aiq__redis_conn *k, int id, char nk[16],
                        int nkeys, int nargs, const char **args, const size_t *lens)
{
	int argc = 3 + nargs;
	*argv = NULL;
	*argl = NULL;
	if (nargs < 0)
		return aiq__err(AIQ_EINVAL, "negative Redis script argument count");
	*argv = malloc((size_t)argc * sizeof **argv);
	*argl = malloc((size_t)argc * sizeof **argl);
	if (*argv == NULL || *argl == NULL) {
		free(*argv);
		free(*argl);
		*argv = NULL;
		*argl = NULL;
		return aiq__err(AIQ_ENOMEM, "out of memory running a Redis script");
	}
	snprintf(nk, 16, "%d", nkeys);
	(*argv)[0] = "EVALSHA";
	(*argv)[1] = k->sha[id];
	(*argv)[2] = nk;
	(*argl)[0] = 7;
	(*argl)[1] = 40;
	(*argl)[2] = strlen(nk);
	for (int i = 0; i < nargs; i++) {
		(*argv)[3 + i] = args[i];
		(*argl)[3 + i] = lens ? lens[i] : strlen(args[i]);
	}
	return argc;
}

int aiq__redis_conn_append_eval(aiq__redis_conn *k, int id, int nkeys, int nargs, const char **args,
                                const size_t *lens)
{
	const char **argv;
	size_t *argl;
	char nk[16];
	int argc = evalsha_argv(&argv, &argl, k, id, nk, nkeys, nargs, args, lens);
	if (argc < 0)
		return argc;
	int st = redisAppendCommandArgv(k->c, argc, argv, argl);
	free(argv);
	free(argl);
	return st == REDIS_OK ? AIQ_OK
	                      : aiq__err(AIQ_ENOMEM, "out of memory queueing a Redis script");
}

int aiq__redis_conn_eval_here(redisReply **out, aiq__redis_conn *k, int id, int nkeys, int nargs,
                              const char **args, const size_t *lens)
{
	*out = NULL;
	const aiq__redis_script *script = &aiq__redis_scripts[id];
	if (aiq__redis_conn_broken(k))
		return aiq__err(k->code, "Redis connection is down: %s", aiq__redis_errstr(k->c));
	redisReply *r = NULL;
	int rc = AIQ_OK;
	for (int attempt = 0; attempt < 2; attempt++) {
		if ((rc = aiq__redis_conn_load(k, id)) != AIQ_OK)
			return rc;
		const char **argv;
		size_t *argl;
		char nk[16];
		int argc = evalsha_argv(&argv, &argl, k, id, nk, nkeys, nargs, args, lens);
		if (argc < 0)
			return argc;
		rc = aiq__redis_command(&r, k->c, k->code, argc, argv, argl);
		free(argv);
		free(argl);
		if (rc != AIQ_OK)
			return rc;
		if (!aiq__redis_is_error(r, "NOSCRIPT"))
			break;
		/* The server lost its script cache (restart, SCRIPT FLUSH): the
		 * call did not run; load the script again and retry once. */
		freeReplyObject(r);
		r = NULL;
		k->sha[id][0] = '\0';
	}
	if (r == NULL)
		return aiq__err(k->code, "Redis keeps forgetting the %s script (NOSCRIPT)",
		                script->name);
	if (r->type == REDIS_REPLY_ERROR) {
		rc = aiq__err(k->code, "Redis %s script failed: %.300s", script->name, r->str);
		freeReplyObject(r);
		return rc;
	}
	*out = r;
	return AIQ_OK;
}

int aiq__redis_conn_eval(redisReply **out, aiq__redis_conn *k, int id, int nkeys, int nargs,
                         const char **args, const size_t *lens)
{
	*out = NULL;
	int rc = k->code;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (aiq__redis_conn_broken(k) && (rc = aiq__redis_conn_open(k, NULL)) != AIQ_OK)
			return rc;
		rc = aiq__redis_conn_eval_here(out, k, id, nkeys, nargs, args, lens);
		if (rc == AIQ_OK || !aiq__redis_conn_broken(k))
			return rc;
	}
	return rc;
}
