/*
 * Shared plumbing of the Redis broker and result store: URLs, connections,
 * commands, Lua scripts, and hiredis errors turned into AIQ_E* codes.
 */
#include "redis_common.h"

#include "broker.h" /* aiq__url_redact */
#include "config_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_PORT 6379

/* Decode %XX escapes of s[0..n) into a fresh string. */
static char *pct_decode(const char *s, size_t n)
{
	char *out = malloc(n + 1);
	if (out == NULL)
		return NULL;
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n) {
			char hex[3] = {s[i + 1], s[i + 2], 0};
			char *end;
			long v = strtol(hex, &end, 16);
			if (*end == '\0') {
				out[j++] = (char)v;
				i += 2;
				continue;
			}
		}
		out[j++] = s[i];
	}
	out[j] = '\0';
	return out;
}

static int parse_db(const char *s, size_t n, int *db)
{
	if (n == 0)
		return AIQ_OK;
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || v > 100000)
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*db = v;
	return AIQ_OK;
}

/* Query parameters: db=N and password=...; others are ignored. */
static int parse_query(aiq__redis_target *t, const char *q)
{
	while (q && *q) {
		size_t n = strcspn(q, "&#");
		if (n > 3 && strncmp(q, "db=", 3) == 0) {
			if (parse_db(q + 3, n - 3, &t->db) != AIQ_OK)
				return -1;
		} else if (n >= 9 && strncmp(q, "password=", 9) == 0) {
			free(t->password);
			if ((t->password = pct_decode(q + 9, n - 9)) == NULL)
				return -2;
		}
		q += n;
		if (*q != '&')
			break;
		q++;
	}
	return AIQ_OK;
}

int aiq__redis_target_parse(aiq__redis_target *t, const char *url, const aiq_config *cfg)
{
	memset(t, 0, sizeof *t);
	t->connect_timeout_ms = cfg ? (int)aiq__config_int(cfg, "redis.connect_timeout_ms") : 0;
	t->socket_timeout_ms = cfg ? (int)aiq__config_int(cfg, "redis.socket_timeout_ms") : 0;
	if (t->connect_timeout_ms <= 0)
		t->connect_timeout_ms = 2000;
	if (t->socket_timeout_ms <= 0)
		t->socket_timeout_ms = 5000;
	if (url == NULL)
		return aiq__err(AIQ_EINVAL, "no Redis URL given");
	t->redacted = aiq__url_redact(url);
	if (t->redacted == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
	const char *sep = strstr(url, "://");
	bool unix_socket;
	if (sep && sep - url == 5 && strncasecmp(url, "redis", 5) == 0)
		unix_socket = false;
	else if (sep && sep - url == 4 && strncasecmp(url, "unix", 4) == 0)
		unix_socket = true;
	else
		return aiq__err(AIQ_EINVAL, "not a redis:// or unix:// URL: '%.200s'", t->redacted);
	const char *auth = sep + 3;
	const char *query = strchr(auth, '?');
	const char *end = query ? query : auth + strlen(auth);
	const char *frag = memchr(auth, '#', (size_t)(end - auth));
	if (frag)
		end = frag;
	/* userinfo ends at the last '@' (passwords may hold '@' or '/') */
	const char *at = NULL;
	for (const char *p = auth; p < end; p++)
		if (*p == '@')
			at = p;
	const char *hostpart = auth;
	if (at) {
		const char *colon = memchr(auth, ':', (size_t)(at - auth));
		if (colon) {
			if (colon > auth &&
			    (t->user = pct_decode(auth, (size_t)(colon - auth))) == NULL)
				goto oom;
			if ((t->password = pct_decode(colon + 1, (size_t)(at - colon - 1))) == NULL)
				goto oom;
		} else if ((t->password = pct_decode(auth, (size_t)(at - auth))) == NULL) {
			goto oom; /* redis://secret@host: a bare password, as redis-py reads it */
		}
		hostpart = at + 1;
	}
	if (unix_socket) {
		if (hostpart >= end || *hostpart != '/')
			return aiq__err(AIQ_EINVAL,
			                "unix:// URL needs an absolute socket path: '%.200s'",
			                t->redacted);
		if ((t->path = pct_decode(hostpart, (size_t)(end - hostpart))) == NULL)
			goto oom;
	} else {
		size_t rest = end > hostpart ? (size_t)(end - hostpart) : 0;
		const char *slash = rest ? memchr(hostpart, '/', rest) : NULL;
		const char *hend = slash ? slash : end;
		const char *colon = NULL;
		if (hostpart < hend && *hostpart == '[') { /* [v6 address]:port */
			const char *rb = memchr(hostpart, ']', (size_t)(hend - hostpart));
			if (rb == NULL)
				return aiq__err(AIQ_EINVAL, "unbalanced '[' in Redis URL '%.200s'",
				                t->redacted);
			t->host = aiq__strndup(hostpart + 1, (size_t)(rb - hostpart - 1));
			colon = rb + 1 < hend && rb[1] == ':' ? rb + 1 : NULL;
		} else {
			colon = memchr(hostpart, ':', (size_t)(hend - hostpart));
			size_t hl = (size_t)((colon ? colon : hend) - hostpart);
			t->host = hl ? aiq__strndup(hostpart, hl) : aiq__strdup("127.0.0.1");
		}
		if (t->host == NULL)
			goto oom;
		t->port = DEFAULT_PORT;
		if (colon) {
			int port = 0;
			if (parse_db(colon + 1, (size_t)(hend - colon - 1), &port) != AIQ_OK ||
			    port <= 0 || port > 65535)
				return aiq__err(AIQ_EINVAL, "bad port in Redis URL '%.200s'",
				                t->redacted);
			t->port = port;
		}
		if (slash && parse_db(slash + 1, (size_t)(end - slash - 1), &t->db) != AIQ_OK)
			return aiq__err(AIQ_EINVAL,
			                "bad database number in Redis URL '%.200s' (expected /N)",
			                t->redacted);
	}
	if (query) {
		int rc = parse_query(t, query + 1);
		if (rc == -2)
			goto oom;
		if (rc != AIQ_OK)
			return aiq__err(AIQ_EINVAL, "bad db= parameter in Redis URL '%.200s'",
			                t->redacted);
	}
	return AIQ_OK;
oom:
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

int aiq__redis_eval(redisReply **out, redisContext *c, int code, const aiq__redis_script *script,
                    char sha[41], int nkeys, int nargs, const char **args, const size_t *lens)
{
	*out = NULL;
	redisReply *r = NULL;
	int rc;
	if (sha[0] == '\0') {
		const char *argv[3] = {"SCRIPT", "LOAD", script->text};
		rc = aiq__redis_command(&r, c, code, 3, argv, NULL);
		if (rc != AIQ_OK)
			return rc;
		if (r->type != REDIS_REPLY_STRING || r->len != 40) {
			rc = aiq__err(code, "Redis could not load the %s script: %s", script->name,
			              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
			freeReplyObject(r);
			return rc;
		}
		memcpy(sha, r->str, 40);
		sha[40] = '\0';
		freeReplyObject(r);
	}
	int argc = 3 + nargs;
	const char **argv = malloc((size_t)argc * sizeof *argv);
	size_t *argl = malloc((size_t)argc * sizeof *argl);
	if (argv == NULL || argl == NULL) {
		free(argv);
		free(argl);
		return aiq__err(AIQ_ENOMEM, "out of memory running a Redis script");
	}
	char nk[16];
	snprintf(nk, sizeof nk, "%d", nkeys);
	argv[0] = "EVALSHA";
	argv[1] = sha;
	argv[2] = nk;
	argl[0] = 7;
	argl[1] = 40;
	argl[2] = strlen(nk);
	for (int i = 0; i < nargs; i++) {
		argv[3 + i] = args[i];
		argl[3 + i] = lens ? lens[i] : strlen(args[i]);
	}
	rc = aiq__redis_command(&r, c, code, argc, argv, argl);
	if (rc == AIQ_OK && aiq__redis_is_error(r, "NOSCRIPT")) {
		/* The server lost its script cache (restart, SCRIPT FLUSH). */
		freeReplyObject(r);
		r = NULL;
		argv[0] = "EVAL";
		argl[0] = 4;
		argv[1] = script->text;
		argl[1] = strlen(script->text);
		sha[0] = '\0';
		rc = aiq__redis_command(&r, c, code, argc, argv, argl);
	}
	free(argv);
	free(argl);
	if (rc != AIQ_OK)
		return rc;
	if (r->type == REDIS_REPLY_ERROR) {
		rc = aiq__err(code, "Redis %s script failed: %.300s", script->name, r->str);
		freeReplyObject(r);
		return rc;
	}
	*out = r;
	return AIQ_OK;
}
