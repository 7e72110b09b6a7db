/*
 * Coordination state (coord.h). In Redis, the bucket, claim and lease
 * scripts run on one connection of their own, opened at the first call and
 * reopened after a drop. In PostgreSQL, a result store handle of its own
 * (opened at the first call, so a client that never needs one never
 * connects) runs the store's coordination ops.
 */
#include "coord.h"

#include "store.h"
#include "url.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef AIQ_HAVE_REDIS
#include "redis_common.h"
#include "redis_lua.h"
#endif

/* A PostgreSQL handle that failed to open is not tried again sooner. */
#define PG_REOPEN_MS 1000

struct aiq__coord {
	pthread_mutex_t lock;
	int code;
	bool redis;
#ifdef AIQ_HAVE_REDIS
	aiq__redis_target target;
	aiq__redis_conn conn;
#endif
	/* PostgreSQL */
	char *url;
	aiq_config *cfg;
	aiq__store *store;
	int64_t reopen_at_ms;
	char why[512]; /* the last open failure, repeated until reopen_at_ms */
};

bool aiq__coord_is_redis(const char *url)
{
	static const char *const schemes[] = {"redis", "unix", "redis+socket", NULL};
	size_t len = url ? aiq__url_scheme_len(url) : 0;
	return len > 0 && aiq__url_scheme_in(schemes, url, len);
}

bool aiq__coord_is_postgres(const char *url)
{
	static const char *const schemes[] = {"postgresql", "postgres", NULL};
	size_t len = url ? aiq__url_scheme_len(url) : 0;
	return len > 0 && aiq__url_scheme_in(schemes, url, len);
}

static int open_redis(aiq__coord *k, const char *url, const aiq_config *cfg)
{
#ifdef AIQ_HAVE_REDIS
	int rc = aiq__redis_target_parse(&k->target, url, cfg);
	if (rc != AIQ_OK) {
		aiq__redis_target_clear(&k->target);
		return rc;
	}
	aiq__redis_conn_init(&k->conn, &k->target, k->code);
	k->redis = true;
	return AIQ_OK;
#else
	(void)k, (void)url, (void)cfg;
	return aiq__err(AIQ_EUNSUPPORTED, "this build has no Redis support");
#endif
}

static int open_postgres(aiq__coord *k, const char *url, const aiq_config *cfg)
{
	const aiq__store_ops *ops = NULL;
	int rc = aiq__store_lookup(&ops, url);
	if (rc != AIQ_OK)
		return rc;
	if ((k->url = aiq__strdup(url)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return aiq_config_copy(&k->cfg, cfg);
}

int aiq__coord_open(aiq__coord **out, enum aiq__cfg_str url_key, const aiq_config *cfg, int code,
                    enum aiq__coord_kinds kinds)
{
	*out = NULL;
	bool any = kinds == AIQ__COORD_ANY;
	const char *url = aiq__cfg_str(cfg, url_key);
	const char *result = aiq__cfg_str(cfg, AIQ_CFG_RESULT_URL);
	const char *broker = aiq__cfg_str(cfg, AIQ_CFG_BROKER_URL);
	if (*url && !aiq__coord_is_redis(url) && !(any && aiq__coord_is_postgres(url)))
		return aiq__err(AIQ_EINVAL,
		                "%s: only a Redis URL (redis://, unix://)%s is supported",
		                aiq__config_key_name((size_t)url_key),
		                any ? " or a PostgreSQL URL (postgresql://)" : "");
	const char *use = *url                                    ? url
	                  : aiq__coord_is_redis(result)           ? result
	                  : aiq__coord_is_redis(broker)           ? broker
	                  : any && aiq__coord_is_postgres(result) ? result
	                                                          : NULL;
	if (use == NULL)
		return AIQ_OK;
	aiq__coord *k = calloc(1, sizeof *k);
	if (k == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	pthread_mutex_init(&k->lock, NULL);
	k->code = code;
	int rc = aiq__coord_is_redis(use) ? open_redis(k, use, cfg) : open_postgres(k, use, cfg);
	if (rc != AIQ_OK) {
		aiq__coord_free(k);
		return rc;
	}
	*out = k;
	return AIQ_OK;
}

void aiq__coord_free(aiq__coord *k)
{
	if (k == NULL)
		return;
#ifdef AIQ_HAVE_REDIS
	if (k->redis) {
		aiq__redis_conn_drop(&k->conn);
		aiq__redis_target_clear(&k->target);
	}
#endif
	aiq__store_close(k->store);
	aiq_config_free(k->cfg);
	free(k->url);
	pthread_mutex_destroy(&k->lock);
	free(k);
}

const char *aiq__coord_kind(const aiq__coord *k)
{
	return k && k->redis ? "redis" : "postgres";
}

/* The PostgreSQL handle, opened on first use. The store serializes its
 * own connection, so k->lock only guards the opening. */
static int pg_store(aiq__coord *k, aiq__store **out)
{
	*out = NULL;
	int rc = AIQ_OK;
	pthread_mutex_lock(&k->lock);
	if (k->store == NULL) {
		int64_t now = aiq__mono_ms();
		if (now >= k->reopen_at_ms &&
		    aiq__store_open(&k->store, k->url, k->cfg) != AIQ_OK) {
			snprintf(k->why, sizeof k->why, "%s", aiq_error_last());
			k->reopen_at_ms = now + PG_REOPEN_MS;
		}
		if (k->store == NULL)
			rc = aiq__err(k->code, "%s", k->why);
	}
	*out = k->store;
	pthread_mutex_unlock(&k->lock);
	return rc;
}

#ifdef AIQ_HAVE_REDIS

/* One of the embedded scripts on the handle's connection, with one key
 * (args[0]); *rep the reply. */
static int redis_eval(aiq__coord *k, redisReply **rep, int script, int nargs, const char **args)
{
	*rep = NULL;
	pthread_mutex_lock(&k->lock);
	int rc = aiq__redis_conn_eval(rep, &k->conn, script, 1, nargs, args, NULL);
	pthread_mutex_unlock(&k->lock);
	return rc;
}

/* A script whose integer reply is all the caller needs. */
static int redis_int(aiq__coord *k, int64_t *n, int script, int nargs, const char **args)
{
	redisReply *rep = NULL;
	int rc = redis_eval(k, &rep, script, nargs, args);
	if (rc == AIQ_OK && (rep == NULL || rep->type != REDIS_REPLY_INTEGER))
		rc = aiq__err(k->code, "'%.200s': unexpected reply", args[0]);
	if (rc == AIQ_OK && n)
		*n = rep->integer;
	freeReplyObject(rep);
	return rc;
}

static int redis_bucket(aiq__coord *k, int64_t *wait_us, double *tokens, const char *key,
                        double rate, double burst, double cost, bool take)
{
	char r[40], b[40], c[40];
	snprintf(r, sizeof r, "%.9g", rate);
	snprintf(b, sizeof b, "%.9g", burst);
	snprintf(c, sizeof c, "%.9g", cost);
	const char *args[] = {key, r, b, c, take ? "1" : "0"};
	redisReply *rep = NULL;
	int rc = redis_eval(k, &rep, AIQ__LUA_RATELIMIT, 5, args);
	if (rc == AIQ_OK && (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
	                     rep->element[0]->type != REDIS_REPLY_INTEGER ||
	                     rep->element[1]->type != REDIS_REPLY_STRING))
		rc = aiq__err(k->code, "rate limit bucket '%.200s': unexpected reply", key);
	if (rc == AIQ_OK) {
		*wait_us = rep->element[0]->integer;
		*tokens = strtod(rep->element[1]->str, NULL);
	}
	freeReplyObject(rep);
	return rc;
}

static int redis_claim(aiq__coord *k, char **holder, const char *key, const char *value,
                       int64_t ttl_ms)
{
	char ttl[32];
	snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
	const char *args[] = {key, value, ttl};
	redisReply *rep = NULL;
	int rc = redis_eval(k, &rep, AIQ__LUA_UNIQUE_CLAIM, 3, args);
	if (rc == AIQ_OK && rep && rep->type == REDIS_REPLY_STRING) {
		/* A retried call that had claimed already finds itself. */
		if (strcmp(rep->str, value) != 0 && (*holder = aiq__strdup(rep->str)) == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	} else if (rc == AIQ_OK && (rep == NULL || rep->type != REDIS_REPLY_NIL)) {
		rc = aiq__err(k->code, "unique key: unexpected reply");
	}
	freeReplyObject(rep);
	return rc;
}

static int redis_lease_take(aiq__coord *k, bool *got, const char *key, const char *member,
                            long limit, int64_t lease_ms)
{
	char lim[24], ms[24];
	snprintf(lim, sizeof lim, "%ld", limit);
	snprintf(ms, sizeof ms, "%lld", (long long)lease_ms);
	const char *args[] = {key, member, lim, ms};
	int64_t n = 0;
	int rc = redis_int(k, &n, AIQ__LUA_LEASE_TAKE, 4, args);
	*got = rc == AIQ_OK && n == 1;
	return rc;
}

static int redis_lease_renew(aiq__coord *k, const char *key, const char *member, int64_t lease_ms)
{
	char ms[24];
	snprintf(ms, sizeof ms, "%lld", (long long)lease_ms);
	const char *args[] = {key, member, ms};
	return redis_int(k, NULL, AIQ__LUA_LEASE_RENEW, 3, args);
}

#endif /* AIQ_HAVE_REDIS */

/* Each call: Redis when the handle is Redis, else the PostgreSQL store. */

int aiq__coord_bucket(aiq__coord *k, int64_t *wait_us, double *tokens, const char *key, double rate,
                      double burst, double cost, bool take)
{
	*wait_us = 0;
	*tokens = 0;
#ifdef AIQ_HAVE_REDIS
	if (k->redis)
		return redis_bucket(k, wait_us, tokens, key, rate, burst, cost, take);
#endif
	aiq__store *st;
	int rc = pg_store(k, &st);
	return rc == AIQ_OK ? aiq__store_bucket(st, wait_us, tokens, key, rate, burst, cost, take)
	                    : rc;
}

int aiq__coord_claim(aiq__coord *k, char **holder, const char *key, const char *value,
                     int64_t ttl_ms)
{
	*holder = NULL;
#ifdef AIQ_HAVE_REDIS
	if (k->redis)
		return redis_claim(k, holder, key, value, ttl_ms);
#endif
	aiq__store *st;
	int rc = pg_store(k, &st);
	return rc == AIQ_OK ? aiq__store_claim(st, holder, key, value, ttl_ms) : rc;
}

int aiq__coord_release(aiq__coord *k, const char *key, const char *value)
{
#ifdef AIQ_HAVE_REDIS
	if (k->redis) {
		const char *args[] = {key, value};
		return redis_int(k, NULL, AIQ__LUA_UNIQUE_RELEASE, 2, args);
	}
#endif
	aiq__store *st;
	int rc = pg_store(k, &st);
	return rc == AIQ_OK ? aiq__store_release(st, key, value) : rc;
}

int aiq__coord_lease_take(aiq__coord *k, bool *got, const char *key, const char *member, long limit,
                          int64_t lease_ms)
{
	*got = false;
#ifdef AIQ_HAVE_REDIS
	if (k->redis)
		return redis_lease_take(k, got, key, member, limit, lease_ms);
#endif
	aiq__store *st;
	int rc = pg_store(k, &st);
	return rc == AIQ_OK ? aiq__store_lease_take(st, got, key, member, limit, lease_ms) : rc;
}

int aiq__coord_lease_renew(aiq__coord *k, const char *key, const char *member, int64_t lease_ms)
{
#ifdef AIQ_HAVE_REDIS
	if (k->redis)
		return redis_lease_renew(k, key, member, lease_ms);
#endif
	aiq__store *st;
	int rc = pg_store(k, &st);
	return rc == AIQ_OK ? aiq__store_lease_renew(st, key, member, lease_ms) : rc;
}

int aiq__coord_lease_drop(aiq__coord *k, const char *key, const char *member)
{
#ifdef AIQ_HAVE_REDIS
	if (k->redis) {
		const char *args[] = {key, member};
		return redis_int(k, NULL, AIQ__LUA_LEASE_DROP, 2, args);
	}
#endif
	aiq__store *st;
	int rc = pg_store(k, &st);
	return rc == AIQ_OK ? aiq__store_lease_drop(st, key, member) : rc;
}

int aiq__coord_command(aiq__coord *k, char **str, int64_t *num, int argc, const char **argv)
{
	*str = NULL;
	*num = 0;
#ifdef AIQ_HAVE_REDIS
	if (!k->redis)
		return aiq__err(AIQ_EUNSUPPORTED, "%.40s: not a Redis connection", argv[0]);
	redisReply *rep = NULL;
	pthread_mutex_lock(&k->lock);
	int rc = aiq__redis_conn_command(&rep, &k->conn, argc, argv, NULL);
	pthread_mutex_unlock(&k->lock);
	if (rc == AIQ_OK && rep == NULL)
		rc = aiq__err(k->code, "%.40s: no reply", argv[0]);
	else if (rc == AIQ_OK && rep->type == REDIS_REPLY_ERROR)
		rc = aiq__err(k->code, "%.40s: %.200s", argv[0], rep->str);
	else if (rc == AIQ_OK && rep->type == REDIS_REPLY_INTEGER)
		*num = rep->integer;
	else if (rc == AIQ_OK &&
	         (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS) &&
	         (*str = aiq__strndup(rep->str, rep->len)) == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	freeReplyObject(rep);
	return rc;
#else
	(void)k, (void)argc;
	return aiq__err(AIQ_EUNSUPPORTED, "%.40s: this build has no Redis support", argv[0]);
#endif
}
