/*
 * Coordination state in Redis (coord.h): the bucket and claim scripts run
 * on one connection of their own, opened at the first call and reopened
 * after a drop.
 */
#include "coord.h"

#include "url.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool aiq__coord_is_redis(const char *url)
{
	static const char *const schemes[] = {"redis", "unix", "redis+socket", NULL};
	size_t len = url ? aiq__url_scheme_len(url) : 0;
	return len > 0 && aiq__url_scheme_in(schemes, url, len);
}

#ifdef AIQ_HAVE_REDIS

#include "redis_common.h"
#include "redis_lua.h"

struct aiq__coord {
	pthread_mutex_t lock;
	aiq__redis_target target;
	aiq__redis_conn conn;
};

int aiq__coord_open(aiq__coord **out, enum aiq__cfg_str url_key, const aiq_config *cfg, int code)
{
	*out = NULL;
	const char *url = aiq__cfg_str(cfg, url_key);
	const char *first = aiq__cfg_str(cfg, AIQ_CFG_RESULT_URL);
	const char *second = aiq__cfg_str(cfg, AIQ_CFG_BROKER_URL);
	if (*url && !aiq__coord_is_redis(url))
		return aiq__err(AIQ_EINVAL, "%s: only a Redis URL (redis://, unix://) is supported",
		                aiq__config_key_name((size_t)url_key));
	const char *use = url && *url                   ? url
	                  : aiq__coord_is_redis(first)  ? first
	                  : aiq__coord_is_redis(second) ? second
	                                                : NULL;
	if (use == NULL)
		return AIQ_OK;
	aiq__coord *k = calloc(1, sizeof *k);
	if (k == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = aiq__redis_target_parse(&k->target, use, cfg);
	if (rc != AIQ_OK) {
		aiq__redis_target_clear(&k->target);
		free(k);
		return rc;
	}
	pthread_mutex_init(&k->lock, NULL);
	aiq__redis_conn_init(&k->conn, &k->target, code);
	*out = k;
	return AIQ_OK;
}

void aiq__coord_free(aiq__coord *k)
{
	if (k == NULL)
		return;
	aiq__redis_conn_drop(&k->conn);
	aiq__redis_target_clear(&k->target);
	pthread_mutex_destroy(&k->lock);
	free(k);
}

int aiq__coord_bucket(aiq__coord *k, int64_t *wait_us, double *tokens, const char *key, double rate,
                      double burst, double cost, bool take)
{
	char r[40], b[40], c[40];
	snprintf(r, sizeof r, "%.9g", rate);
	snprintf(b, sizeof b, "%.9g", burst);
	snprintf(c, sizeof c, "%.9g", cost);
	const char *args[] = {key, r, b, c, take ? "1" : "0"};
	redisReply *rep = NULL;
	pthread_mutex_lock(&k->lock);
	int rc = aiq__redis_conn_eval(&rep, &k->conn, AIQ__LUA_RATELIMIT, 1, 5, args, NULL);
	pthread_mutex_unlock(&k->lock);
	if (rc == AIQ_OK && (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
	                     rep->element[0]->type != REDIS_REPLY_INTEGER ||
	                     rep->element[1]->type != REDIS_REPLY_STRING))
		rc = aiq__err(k->conn.code, "rate limit bucket '%.200s': unexpected reply", key);
	if (rc == AIQ_OK) {
		*wait_us = rep->element[0]->integer;
		*tokens = strtod(rep->element[1]->str, NULL);
	}
	freeReplyObject(rep);
	return rc;
}

int aiq__coord_claim(aiq__coord *k, char **holder, const char *key, const char *value,
                     int64_t ttl_ms)
{
	*holder = NULL;
	char ttl[32];
	snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
	const char *args[] = {key, value, ttl};
	redisReply *rep = NULL;
	pthread_mutex_lock(&k->lock);
	int rc = aiq__redis_conn_eval(&rep, &k->conn, AIQ__LUA_UNIQUE_CLAIM, 1, 3, args, NULL);
	pthread_mutex_unlock(&k->lock);
	if (rc == AIQ_OK && rep && rep->type == REDIS_REPLY_STRING) {
		/* A retried call that had claimed already finds itself. */
		if (strcmp(rep->str, value) != 0 && (*holder = aiq__strdup(rep->str)) == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	} else if (rc == AIQ_OK && (rep == NULL || rep->type != REDIS_REPLY_NIL)) {
		rc = aiq__err(k->conn.code, "unique key: unexpected reply");
	}
	freeReplyObject(rep);
	return rc;
}

int aiq__coord_release(aiq__coord *k, const char *key, const char *value)
{
	const char *args[] = {key, value};
	redisReply *rep = NULL;
	pthread_mutex_lock(&k->lock);
	int rc = aiq__redis_conn_eval(&rep, &k->conn, AIQ__LUA_UNIQUE_RELEASE, 1, 2, args, NULL);
	pthread_mutex_unlock(&k->lock);
	freeReplyObject(rep);
	return rc;
}

int aiq__coord_command(aiq__coord *k, char **str, int64_t *num, int argc, const char **argv)
{
	*str = NULL;
	*num = 0;
	redisReply *rep = NULL;
	pthread_mutex_lock(&k->lock);
	int rc = aiq__redis_conn_command(&rep, &k->conn, argc, argv, NULL);
	pthread_mutex_unlock(&k->lock);
	if (rc == AIQ_OK && rep == NULL)
		rc = aiq__err(k->conn.code, "%.40s: no reply", argv[0]);
	else if (rc == AIQ_OK && rep->type == REDIS_REPLY_ERROR)
		rc = aiq__err(k->conn.code, "%.40s: %.200s", argv[0], rep->str);
	else if (rc == AIQ_OK && rep->type == REDIS_REPLY_INTEGER)
		*num = rep->integer;
	else if (rc == AIQ_OK &&
	         (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS) &&
	         (*str = aiq__strndup(rep->str, rep->len)) == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	freeReplyObject(rep);
	return rc;
}

#else /* no Redis in this build: every caller keeps its state in the process */

int aiq__coord_open(aiq__coord **out, enum aiq__cfg_str url_key, const aiq_config *cfg, int code)
{
	(void)code;
	*out = NULL;
	if (*aiq__cfg_str(cfg, url_key))
		return aiq__err(AIQ_EUNSUPPORTED, "%s: this build has no Redis support",
		                aiq__config_key_name((size_t)url_key));
	return AIQ_OK;
}

void aiq__coord_free(aiq__coord *k)
{
	(void)k;
}

int aiq__coord_bucket(aiq__coord *k, int64_t *wait_us, double *tokens, const char *key, double rate,
                      double burst, double cost, bool take)
{
	(void)k, (void)wait_us, (void)tokens, (void)key, (void)rate, (void)burst, (void)cost,
	        (void)take;
	return aiq__err(AIQ_EUNSUPPORTED, "no Redis support");
}

int aiq__coord_claim(aiq__coord *k, char **holder, const char *key, const char *value,
                     int64_t ttl_ms)
{
	(void)k, (void)key, (void)value, (void)ttl_ms;
	*holder = NULL;
	return aiq__err(AIQ_EUNSUPPORTED, "no Redis support");
}

int aiq__coord_release(aiq__coord *k, const char *key, const char *value)
{
	(void)k, (void)key, (void)value;
	return aiq__err(AIQ_EUNSUPPORTED, "no Redis support");
}

int aiq__coord_command(aiq__coord *k, char **str, int64_t *num, int argc, const char **argv)
{
	(void)k, (void)argc, (void)argv;
	*str = NULL;
	*num = 0;
	return aiq__err(AIQ_EUNSUPPORTED, "no Redis support");
}

#endif
