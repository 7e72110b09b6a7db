/*
 * The Redis result store: "redis://..." and "unix://..." URLs, in the format
 * of Celery's Redis result backend, so Python clients read our results and
 * we read theirs (docs/redis.md).
 *
 * Every state is written by one Lua script (put_result.lua) that reads the current
 * value, refuses to replace a final state (SUCCESS, FAILURE, REVOKED: put()
 * returns AIQ_ESTATE), then does SET celery-task-meta-<id> <meta> [EX ttl]
 * and PUBLISH on the channel of the same name, atomically. The TTL is
 * result.expires_s (0 = no expiry). A missing key reads as PENDING;
 * forget() deletes the key (DEL), as Celery's forget() does.
 *
 * wait() subscribes on a connection of its own first, then reads the key,
 * then waits for messages with poll() on the socket, so a result stored
 * between the read and the wait cannot be missed. subscribe() runs a thread
 * with PSUBSCRIBE celery-task-meta-* that calls the callback for final
 * states published by anyone (completions published while that connection
 * is down are not seen).
 *
 * Threading: the handle is thread-safe; `lock` serializes the command
 * connection. Callbacks run on the notify thread with `cb_lock` held (a
 * recursive mutex, so the callback may call subscribe() on its own handle).
 */
#include "store.h"

#include "config_int.h"
#include "redis_common.h"
#include "redis_lua.h"

#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

extern const aiq__store_ops aiq__redis_store_ops;

#define META_PREFIX   "celery-task-meta-"
#define RETRY_WAIT_MS 200

typedef struct redis_store {
	aiq__store base;
	aiq__redis_target target;
	int64_t expires_s;

	pthread_mutex_t lock; /* guards conn */
	aiq__redis_conn conn; /* commands and scripts */

	pthread_mutex_t cb_lock; /* recursive; held while a callback runs */
	aiq__store_notify_fn fn;
	void *userdata;
	bool thread_running;
	pthread_t thread;
	atomic_bool stop;
	redisContext *sub; /* the notify thread's connection */
} redis_store;

static void redis_close(aiq__store *base);

static int redis_open(aiq__store **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "redis result store needs an output pointer");
	*out = NULL;
	redis_store *s = calloc(1, sizeof *s);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory opening the Redis result store");
	s->base.ops = &aiq__redis_store_ops;
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutexattr_t ma;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&s->cb_lock, &ma);
	pthread_mutexattr_destroy(&ma);
	atomic_init(&s->stop, false);
	s->expires_s = aiq__cfg_int(cfg, AIQ_CFG_RESULT_EXPIRES_S);
	aiq__redis_conn_init(&s->conn, &s->target, AIQ_ESTORE);
	int rc = aiq__redis_target_parse(&s->target, url, cfg);
	if (rc == AIQ_OK)
		rc = aiq__redis_conn_open(&s->conn, NULL);
	if (rc != AIQ_OK) {
		redis_close(&s->base);
		return rc;
	}
	*out = &s->base;
	return AIQ_OK;
}

static void stop_thread(redis_store *s)
{
	if (!s->thread_running)
		return;
	atomic_store(&s->stop, true);
	pthread_join(s->thread, NULL);
	s->thread_running = false;
	atomic_store(&s->stop, false);
}

static void redis_close(aiq__store *base)
{
	if (base == NULL)
		return;
	redis_store *s = (redis_store *)base;
	pthread_mutex_lock(&s->cb_lock);
	s->fn = NULL;
	pthread_mutex_unlock(&s->cb_lock);
	stop_thread(s);
	aiq__redis_conn_drop(&s->conn);
	aiq__redis_target_clear(&s->target);
	pthread_mutex_destroy(&s->cb_lock);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* GET the meta key; *json NULL when absent. */
static int get_meta(redis_store *s, char **json, size_t *len, const char *key)
{
	*json = NULL;
	*len = 0;
	const char *argv[] = {"GET", key};
	redisReply *r = NULL;
	pthread_mutex_lock(&s->lock);
	int rc = aiq__redis_conn_command(&r, &s->conn, 2, argv, NULL);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK) {
		if (r->type == REDIS_REPLY_STRING) {
			if ((*json = aiq__strndup(r->str, r->len)) == NULL)
				rc = aiq__err(AIQ_ENOMEM, "out of memory reading a result");
			*len = r->len;
		} else if (r->type == REDIS_REPLY_ERROR) {
			rc = aiq__err(AIQ_ESTORE, "Redis GET %s failed: %s", key, r->str);
		}
		freeReplyObject(r);
	}
	return rc;
}

static int check_id(const char *task_id)
{
	if (task_id == NULL || task_id[0] == '\0')
		return aiq__err(AIQ_EINVAL, "no task id given");
	return AIQ_OK;
}

static int redis_put(aiq__store *base, const aiq_result *r)
{
	redis_store *s = (redis_store *)base;
	if (r == NULL)
		return aiq__err(AIQ_EINVAL, "put needs a result");
	int rc = check_id(r->task_id);
	if (rc != AIQ_OK)
		return rc;
	if (r->state < AIQ_STATE_PENDING || r->state > AIQ_STATE_REVOKED)
		return aiq__err(AIQ_EINVAL, "invalid task state %d", r->state);
	char *meta = NULL;
	if ((rc = aiq__result_to_meta(&meta, r)) != AIQ_OK)
		return rc;
	char *key = aiq__asprintf(META_PREFIX "%s", r->task_id);
	if (key == NULL) {
		free(meta);
		return aiq__err(AIQ_ENOMEM, "out of memory storing a result");
	}
	char ttl[32];
	snprintf(ttl, sizeof ttl, "%lld", (long long)s->expires_s);
	const char *args[] = {key, meta, ttl};
	redisReply *rep = NULL;
	pthread_mutex_lock(&s->lock);
	rc = aiq__redis_conn_eval(&rep, &s->conn, AIQ__LUA_PUT_RESULT, 1, 3, args, NULL);
	/* Durability (redis.min_replicas): the state counts once replicas
	 * have it; a retried put finds it written and only waits again. */
	if (rc == AIQ_OK)
		rc = aiq__redis_wait_replicas(s->conn.c, &s->target, AIQ_ESTORE);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
	    rep->element[0]->type == REDIS_REPLY_STRING) {
		const char *old = rep->element[0]->str;
		rc = aiq__err(
		        AIQ_ESTATE,
		        "task %.64s is already %s; a final state is never replaced (new state "
		        "%s ignored)",
		        r->task_id, old, aiq_state_name(r->state));
	}
	freeReplyObject(rep);
	free(key);
	free(meta);
	return rc;
}

#define PUT_WINDOW  256 /* results per put_result.lua call */
#define PUT_PENDING 1   /* status of a result not yet answered by Redis */

/* One round: put_result.lua once per PUT_WINDOW pending results (a script
 * call costs the server more than the commands it runs), every call
 * pipelined, then the replies read. *lost when the connection failed
 * (later results of the round stay pending), *noscript when Redis
 * answered NOSCRIPT (those stay pending too: the script did not run). */
static void put_round(redis_store *s, char **keys, char **metas, const char *ttl, size_t n,
                      int *status, bool *lost, bool *noscript, bool *demoted, char *why,
                      size_t whylen)
{
	aiq__redis_conn *k = &s->conn;
	*lost = *noscript = *demoted = false;
	const char *args[2 * PUT_WINDOW + 1];
	size_t idx[PUT_WINDOW];
	/* Calls in flight: where each one's results start in order[]. */
	size_t *order = malloc(n * sizeof *order);
	size_t *first = malloc((n / PUT_WINDOW + 2) * sizeof *first);
	if (order == NULL || first == NULL) {
		free(order);
		free(first);
		for (size_t i = 0; i < n; i++)
			if (status[i] == PUT_PENDING)
				status[i] = AIQ_ENOMEM;
		snprintf(why, whylen, "out of memory storing results");
		return;
	}
	size_t ncalls = 0, norder = 0;
	for (size_t i = 0; i < n;) {
		size_t m = 0;
		for (; i < n && m < PUT_WINDOW; i++)
			if (status[i] == PUT_PENDING)
				idx[m++] = i;
		if (m == 0)
			break;
		for (size_t j = 0; j < m; j++) {
			args[j] = keys[idx[j]];
			args[m + j] = metas[idx[j]];
		}
		args[2 * m] = ttl;
		if (aiq__redis_conn_append_eval(k, AIQ__LUA_PUT_RESULT, (int)m, (int)(2 * m + 1),
		                                args, NULL) != AIQ_OK) {
			for (size_t j = 0; j < m; j++)
				status[idx[j]] = AIQ_ENOMEM;
			continue;
		}
		first[ncalls++] = norder;
		for (size_t j = 0; j < m; j++)
			order[norder++] = idx[j];
	}
	first[ncalls] = norder;
	for (size_t c = 0; c < ncalls; c++) {
		size_t from = first[c], m = first[c + 1] - from;
		redisReply *r = NULL;
		if (*lost || redisGetReply(k->c, (void **)&r) != REDIS_OK) {
			if (!*lost)
				snprintf(why, whylen, "connection to Redis lost: %s",
				         aiq__redis_errstr(k->c));
			*lost = true;
			continue; /* stay pending: resent after a reconnect */
		}
		if (aiq__redis_is_error(r, "NOSCRIPT")) {
			*noscript = true;
		} else if (aiq__redis_demoted(&s->target, r)) {
			/* The master turned replica: these did not run; they stay
			 * pending and go to the new master after a reconnect. */
			if (!*demoted)
				snprintf(why, whylen, "Redis is no longer the master: %.300s",
				         r->str);
			*demoted = true;
		} else if (r->type == REDIS_REPLY_ERROR || r->type != REDIS_REPLY_ARRAY ||
		           r->elements != m) {
			for (size_t j = 0; j < m; j++)
				status[order[from + j]] = AIQ_ESTORE;
			snprintf(why, whylen, "Redis put_result script failed: %.300s",
			         r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		} else {
			for (size_t j = 0; j < m; j++)
				status[order[from + j]] = r->element[j]->type == REDIS_REPLY_STRING
				                                  ? AIQ_ESTATE
				                                  : AIQ_OK;
		}
		freeReplyObject(r);
	}
	free(order);
	free(first);
	if (*lost || *demoted)
		aiq__redis_conn_drop(k); /* replies unread, or a replica: reconnect */
}

/* Many puts in one round trip: put_result.lua for a group of results runs,
 * for each in order, exactly what put() runs for one (the final-state rule
 * stays atomic per result).
 * Results Redis did not answer (connection lost) are sent again once after
 * a reconnect; those answered NOSCRIPT (script cache flushed) are sent
 * again once after loading the script. */
static int redis_put_batch(aiq__store *base, const aiq_result *const *rs, size_t n, int *status)
{
	redis_store *s = (redis_store *)base;
	if ((rs == NULL || status == NULL) && n > 0)
		return aiq__err(AIQ_EINVAL, "put_batch needs results and a status array");
	if (n == 0)
		return AIQ_OK;
	char **keys = calloc(n, sizeof *keys), **metas = calloc(n, sizeof *metas);
	if (keys == NULL || metas == NULL) {
		free(keys);
		free(metas);
		for (size_t i = 0; i < n; i++)
			status[i] = AIQ_ENOMEM;
		return aiq__err(AIQ_ENOMEM, "out of memory storing results");
	}
	size_t ninvalid = 0;
	for (size_t i = 0; i < n; i++) {
		const aiq_result *r = rs[i];
		int rc = r == NULL ? AIQ_EINVAL : check_id(r->task_id);
		if (rc == AIQ_OK && (r->state < AIQ_STATE_PENDING || r->state > AIQ_STATE_REVOKED))
			rc = AIQ_EINVAL;
		if (rc == AIQ_OK)
			rc = aiq__result_to_meta(&metas[i], r);
		if (rc == AIQ_OK && (keys[i] = aiq__asprintf(META_PREFIX "%s", r->task_id)) == NULL)
			rc = AIQ_ENOMEM;
		status[i] = rc == AIQ_OK ? PUT_PENDING : rc;
		if (rc != AIQ_OK)
			ninvalid++;
	}
	char ttl[32];
	snprintf(ttl, sizeof ttl, "%lld", (long long)s->expires_s);
	char why[512] = "";
	int rc = AIQ_OK;
	int reconnects = 0, reloads = 0;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		bool pending = false;
		for (size_t i = 0; i < n && !pending; i++)
			pending = status[i] == PUT_PENDING;
		if (!pending)
			break;
		if (aiq__redis_conn_broken(&s->conn)) {
			if (reconnects++ > 0 ||
			    (rc = aiq__redis_conn_open(&s->conn, NULL)) != AIQ_OK) {
				rc = rc != AIQ_OK ? rc : AIQ_ESTORE;
				if (why[0] == '\0')
					snprintf(why, sizeof why, "%s",
					         aiq__redis_errstr(s->conn.c));
				break;
			}
			/* Written on the connection that failed, maybe not
			 * replicated before a failover: the script is idempotent,
			 * so write those again where WAIT can confirm them. */
			if (s->target.min_replicas > 0)
				for (size_t i = 0; i < n; i++)
					if (status[i] == AIQ_OK)
						status[i] = PUT_PENDING;
		}
		if ((rc = aiq__redis_conn_load(&s->conn, AIQ__LUA_PUT_RESULT)) != AIQ_OK) {
			snprintf(why, sizeof why, "%s", aiq_error_last());
			if (aiq__redis_conn_broken(&s->conn))
				continue; /* reconnect once */
			break;
		}
		bool lost, noscript, demoted;
		put_round(s, keys, metas, ttl, n, status, &lost, &noscript, &demoted, why,
		          sizeof why);
		if (noscript) {
			s->conn.sha[AIQ__LUA_PUT_RESULT][0] = '\0';
			if (reloads++ > 0) {
				rc = AIQ_ESTORE;
				snprintf(why, sizeof why,
				         "Redis keeps forgetting the put_result "
				         "script (NOSCRIPT)");
				break;
			}
		}
	}
	if (rc == AIQ_OK && s->target.min_replicas > 0) {
		bool written = false;
		for (size_t i = 0; i < n && !written; i++)
			written = status[i] == AIQ_OK;
		if (written &&
		    (rc = aiq__redis_wait_replicas(s->conn.c, &s->target, AIQ_ESTORE)) != AIQ_OK) {
			snprintf(why, sizeof why, "%s", aiq_error_last());
			for (size_t i = 0; i < n; i++)
				if (status[i] == AIQ_OK)
					status[i] = PUT_PENDING; /* reported as failed below */
		}
	}
	pthread_mutex_unlock(&s->lock);
	size_t nfinal = 0, nfailed = 0;
	for (size_t i = 0; i < n; i++) {
		if (status[i] == PUT_PENDING) {
			status[i] = rc != AIQ_OK ? rc : AIQ_ESTORE;
			nfailed++;
		} else if (status[i] == AIQ_ESTATE) {
			nfinal++;
		} else if (status[i] != AIQ_OK) {
			nfailed++;
		}
	}
	for (size_t i = 0; i < n; i++) {
		free(keys[i]);
		free(metas[i]);
	}
	free(keys);
	free(metas);
	if (rc != AIQ_OK)
		return aiq__err(rc, "%zu of %zu results not stored: %s", nfailed, n,
		                why[0] ? why : "the connection to Redis failed");
	if (nfailed > 0 || nfinal > 0)
		aiq__err(AIQ_ESTATE,
		         "%zu of %zu results not stored (%zu invalid, %zu already final: a final "
		         "state is never replaced)%s%s",
		         nfailed + nfinal, n, ninvalid, nfinal, why[0] ? "; " : "", why);
	return AIQ_OK;
}

static int redis_get(aiq__store *base, aiq_result **out, const char *task_id)
{
	redis_store *s = (redis_store *)base;
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "get needs an output pointer");
	*out = NULL;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	char *key = aiq__asprintf(META_PREFIX "%s", task_id);
	if (key == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory reading a result");
	char *json = NULL;
	size_t len = 0;
	rc = get_meta(s, &json, &len, key);
	free(key);
	if (rc != AIQ_OK)
		return rc;
	if (json == NULL)
		return aiq__result_new(out, task_id, AIQ_STATE_PENDING);
	rc = aiq__result_from_meta(out, task_id, json, len);
	free(json);
	return rc;
}

/* Every state in one MGET. */
static int redis_get_batch(aiq__store *base, aiq_result **out, const char *const *task_ids,
                           size_t n, int *status)
{
	redis_store *s = (redis_store *)base;
	if ((out == NULL || task_ids == NULL || status == NULL) && n > 0)
		return aiq__err(AIQ_EINVAL, "get_batch needs outputs, ids and a status array");
	if (n == 0)
		return AIQ_OK;
	char **keys = calloc(n + 1, sizeof *keys);
	const char **argv = calloc(n + 1, sizeof *argv);
	int rc = keys && argv ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory reading results");
	size_t argc = 1;
	if (rc == AIQ_OK)
		argv[0] = "MGET";
	for (size_t i = 0; i < n; i++) {
		out[i] = NULL;
		status[i] = check_id(task_ids[i]);
		if (rc != AIQ_OK || status[i] != AIQ_OK)
			continue;
		if ((keys[i] = aiq__asprintf(META_PREFIX "%s", task_ids[i])) == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory reading results");
		else
			argv[argc++] = keys[i];
	}
	redisReply *r = NULL;
	if (rc == AIQ_OK && argc > 1) {
		pthread_mutex_lock(&s->lock);
		rc = aiq__redis_conn_command(&r, &s->conn, (int)argc, argv, NULL);
		pthread_mutex_unlock(&s->lock);
		if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
			rc = aiq__err(AIQ_ESTORE, "Redis MGET failed: %.300s", r->str);
		else if (rc == AIQ_OK && (r->type != REDIS_REPLY_ARRAY || r->elements != argc - 1))
			rc = aiq__err(AIQ_ESTORE, "Redis MGET gave an unexpected reply");
	}
	for (size_t i = 0, j = 0; rc == AIQ_OK && i < n; i++) {
		if (status[i] != AIQ_OK)
			continue;
		const redisReply *e = r->element[j++];
		if (e->type == REDIS_REPLY_STRING)
			status[i] = aiq__result_from_meta(&out[i], task_ids[i], e->str, e->len);
		else
			status[i] = aiq__result_new(&out[i], task_ids[i], AIQ_STATE_PENDING);
	}
	if (r)
		freeReplyObject(r);
	for (size_t i = 0; i < n; i++) {
		free(keys ? keys[i] : NULL);
		if (rc != AIQ_OK) {
			aiq_result_free(out[i]);
			out[i] = NULL;
			status[i] = rc;
		}
	}
	free(keys);
	free(argv);
	return rc;
}

/* Connect a pub/sub connection and (P)SUBSCRIBE to one channel/pattern. */
static int sub_open(redisContext **out, redis_store *s, const char *cmd, const char *channel)
{
	int rc = aiq__redis_connect(out, &s->target, AIQ_ESTORE, NULL);
	if (rc != AIQ_OK)
		return rc;
	const char *argv[] = {cmd, channel};
	redisReply *r = NULL;
	rc = aiq__redis_command(&r, *out, AIQ_ESTORE, 2, argv, NULL);
	if (rc == AIQ_OK && r->type != REDIS_REPLY_ARRAY)
		rc = aiq__err(AIQ_ESTORE, "Redis %s %s failed: %s", cmd, channel,
		              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
	freeReplyObject(r);
	if (rc != AIQ_OK) {
		redisFree(*out);
		*out = NULL;
	}
	return rc;
}

/* Next pub/sub message within ms (negative = wait forever): AIQ_OK with
 * *out, AIQ_ETIMEDOUT, or AIQ_ESTORE when the connection failed. */
static int sub_read(redisReply **out, redisContext *c, int64_t ms)
{
	*out = NULL;
	if (c == NULL)
		return aiq__err(AIQ_ESTORE, "Redis pub/sub connection is down");
	for (;;) {
		void *reply = NULL;
		if (redisGetReplyFromReader(c, &reply) != REDIS_OK)
			return aiq__err(AIQ_ESTORE, "Redis pub/sub connection failed: %s",
			                aiq__redis_errstr(c));
		if (reply) {
			*out = reply;
			return AIQ_OK;
		}
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		int n = poll(&p, 1, ms < 0 ? -1 : (int)(ms > 60000 ? 60000 : ms));
		if (n == 0)
			return AIQ_ETIMEDOUT;
		if (n < 0)
			continue; /* EINTR */
		if (redisBufferRead(c) != REDIS_OK)
			return aiq__err(AIQ_ESTORE, "Redis pub/sub connection failed: %s",
			                aiq__redis_errstr(c));
	}
}

/* Parse a published meta; a final result into *out, else NULL. */
static void final_from(aiq_result **out, const char *task_id, const redisReply *payload)
{
	*out = NULL;
	if (payload == NULL || payload->type != REDIS_REPLY_STRING)
		return;
	aiq_result *r = NULL;
	if (aiq__result_from_meta(&r, task_id, payload->str, payload->len) != AIQ_OK)
		return;
	if (aiq_state_is_ready(r->state))
		*out = r;
	else
		aiq_result_free(r);
}

static int redis_wait(aiq__store *base, aiq_result **out, const char *task_id, int64_t timeout_ms)
{
	redis_store *s = (redis_store *)base;
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "wait needs an output pointer");
	*out = NULL;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	char *key = aiq__asprintf(META_PREFIX "%s", task_id);
	if (key == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory waiting for a result");
	int64_t deadline = -1;
	if (timeout_ms >= 0 && timeout_ms < INT64_MAX / 4)
		deadline = aiq__mono_ms() + timeout_ms;
	redisContext *sub = NULL;
	aiq_result *cur = NULL;
	for (;;) {
		/* Subscribe first, then read: a result stored in between is
		 * published after we listen, or already in the key. */
		if (sub == NULL) {
			rc = sub_open(&sub, s, "SUBSCRIBE", key);
			if (rc == AIQ_OK) {
				aiq_result_free(cur);
				cur = NULL;
				rc = redis_get(base, &cur, task_id);
				if (rc == AIQ_OK && aiq_state_is_ready(cur->state))
					break;
			}
			if (rc != AIQ_OK) {
				if (sub)
					redisFree(sub);
				sub = NULL;
				if (deadline >= 0 && aiq__mono_ms() >= deadline)
					break;
				struct pollfd none = {.fd = -1};
				poll(&none, 0, RETRY_WAIT_MS);
				continue;
			}
		}
		int64_t left = deadline < 0 ? -1 : deadline - aiq__mono_ms();
		if (deadline >= 0 && left <= 0) {
			rc = AIQ_ETIMEDOUT;
			break;
		}
		redisReply *m = NULL;
		rc = sub_read(&m, sub, left);
		if (rc == AIQ_ETIMEDOUT)
			break;
		if (rc != AIQ_OK) {
			redisFree(sub); /* lost: subscribe and read again */
			sub = NULL;
			continue;
		}
		aiq_result *fin = NULL;
		if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
		    m->element[0]->type == REDIS_REPLY_STRING &&
		    strcmp(m->element[0]->str, "message") == 0)
			final_from(&fin, task_id, m->element[2]);
		freeReplyObject(m);
		if (fin) {
			aiq_result_free(cur);
			cur = fin;
			rc = AIQ_OK;
			break;
		}
	}
	if (sub)
		redisFree(sub);
	free(key);
	if (rc == AIQ_ETIMEDOUT || (rc != AIQ_OK && cur == NULL)) {
		/* Hand back the latest state, as the contract asks. */
		aiq_result *latest = NULL;
		int grc = redis_get(base, &latest, task_id);
		if (grc == AIQ_OK) {
			aiq_result_free(cur);
			cur = latest;
			if (aiq_state_is_ready(cur->state))
				rc = AIQ_OK;
		} else if (cur == NULL) {
			return grc;
		}
	}
	*out = cur;
	if (rc == AIQ_ETIMEDOUT)
		return aiq__err(AIQ_ETIMEDOUT, "task %.64s did not finish within %lld ms", task_id,
		                (long long)timeout_ms);
	return rc;
}

/* ---- completion notifications ---- */

static void deliver(redis_store *s, const redisReply *m)
{
	if (m->type != REDIS_REPLY_ARRAY || m->elements != 4 ||
	    m->element[0]->type != REDIS_REPLY_STRING ||
	    strcmp(m->element[0]->str, "pmessage") != 0 ||
	    m->element[2]->type != REDIS_REPLY_STRING || m->element[2]->len <= strlen(META_PREFIX))
		return;
	char *id = aiq__strndup(m->element[2]->str + strlen(META_PREFIX),
	                        m->element[2]->len - strlen(META_PREFIX));
	aiq_result *r = NULL;
	if (id)
		final_from(&r, id, m->element[3]);
	if (r) {
		pthread_mutex_lock(&s->cb_lock);
		if (s->fn)
			s->fn(r, s->userdata);
		pthread_mutex_unlock(&s->cb_lock);
	}
	aiq_result_free(r);
	free(id);
}

static void *notify_main(void *arg)
{
	redis_store *s = arg;
	bool warned = false;
	while (!atomic_load(&s->stop)) {
		if (s->sub == NULL) {
			if (sub_open(&s->sub, s, "PSUBSCRIBE", META_PREFIX "*") != AIQ_OK) {
				if (!warned)
					aiq__log(AIQ_LOG_WARNING,
					         "redis store: notification connection lost: %s",
					         aiq_error_last());
				warned = true;
				struct pollfd none = {.fd = -1};
				poll(&none, 0, RETRY_WAIT_MS);
				continue;
			}
			warned = false;
		}
		redisReply *m = NULL;
		int rc = sub_read(&m, s->sub, RETRY_WAIT_MS);
		if (rc == AIQ_ETIMEDOUT)
			continue;
		if (rc != AIQ_OK) {
			redisFree(s->sub);
			s->sub = NULL;
			continue;
		}
		deliver(s, m);
		freeReplyObject(m);
	}
	if (s->sub)
		redisFree(s->sub);
	s->sub = NULL;
	return NULL;
}

static int redis_subscribe(aiq__store *base, aiq__store_notify_fn fn, void *userdata)
{
	redis_store *s = (redis_store *)base;
	bool self = s->thread_running && pthread_equal(pthread_self(), s->thread);
	pthread_mutex_lock(&s->cb_lock); /* waits for a running callback */
	s->fn = fn;
	s->userdata = fn ? userdata : NULL;
	pthread_mutex_unlock(&s->cb_lock);
	if (fn == NULL) {
		if (!self)
			stop_thread(s);
		return AIQ_OK;
	}
	if (s->thread_running)
		return AIQ_OK;
	/* Subscribed before returning, so no later completion is missed. */
	int rc = sub_open(&s->sub, s, "PSUBSCRIBE", META_PREFIX "*");
	if (rc == AIQ_OK && pthread_create(&s->thread, NULL, notify_main, s) != 0) {
		redisFree(s->sub);
		s->sub = NULL;
		rc = aiq__err(AIQ_ERROR, "cannot start the Redis notification thread");
	}
	if (rc != AIQ_OK) {
		pthread_mutex_lock(&s->cb_lock);
		s->fn = NULL;
		s->userdata = NULL;
		pthread_mutex_unlock(&s->cb_lock);
		return rc;
	}
	s->thread_running = true;
	return AIQ_OK;
}

static int redis_ping(aiq__store *base)
{
	redis_store *s = (redis_store *)base;
	const char *argv[] = {"PING"};
	redisReply *r = NULL;
	pthread_mutex_lock(&s->lock);
	int rc = aiq__redis_conn_command(&r, &s->conn, 1, argv, NULL);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
		rc = aiq__err(AIQ_ESTORE, "Redis PING failed: %s", r->str);
	freeReplyObject(r);
	return rc;
}

/* DEL celery-task-meta-<id>: the key Celery's Redis backend deletes in
 * AsyncResult.forget(). A wait() in progress keeps waiting for a PUBLISH. */
static int redis_forget(aiq__store *base, const char *task_id)
{
	redis_store *s = (redis_store *)base;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	char *key = aiq__asprintf(META_PREFIX "%s", task_id);
	if (key == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory forgetting a result");
	const char *argv[] = {"DEL", key};
	redisReply *r = NULL;
	pthread_mutex_lock(&s->lock);
	rc = aiq__redis_conn_command(&r, &s->conn, 2, argv, NULL);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
		rc = aiq__err(AIQ_ESTORE, "Redis DEL %.200s failed: %s", key, r->str);
	freeReplyObject(r);
	free(key);
	return rc;
}

/* ---- Celery 5.2's Redis chord join ------------------------------------------
 * RedisBackend (celery/backends/redis.py, result_chord_ordered default):
 *   <prefix><gid>.s  the header's size (set_chord_size)
 *   <prefix><gid>.j  sorted set of the parts' [1, id, state, result] by group_index
 *   <prefix><gid>.t  a size correction (totaldiff), read and added
 * with <prefix> = "celery-taskset-meta-". A part's return is one MULTI/EXEC,
 * as redis-py's transaction pipeline sends it: ZADD .j, ZCOUNT .j -inf +inf,
 * GET .t, GET .s, and with result_expires EXPIRE on the three keys. The part
 * whose ZCOUNT equals .s + .t completed the header: it reads ZRANGE .j 0 -1,
 * sends the body, then deletes the three keys. */
#define TASKSET_PREFIX "celery-taskset-meta-"

static int chord_keys(char *keys[3], const char *gid)
{
	static const char suffix[3] = {'j', 't', 's'};
	for (int i = 0; i < 3; i++)
		if (!(keys[i] = aiq__asprintf(TASKSET_PREFIX "%s.%c", gid, suffix[i]))) {
			for (int k = 0; k < i; k++)
				free(keys[k]);
			return aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
		}
	return AIQ_OK;
}

static void free_keys(char *keys[3])
{
	for (int i = 0; i < 3; i++)
		free(keys[i]);
}

static int redis_chord_set_size(aiq__store *base, const char *group_id, int64_t size)
{
	redis_store *s = (redis_store *)base;
	char *keys[3];
	int rc = chord_keys(keys, group_id);
	if (rc != AIQ_OK)
		return rc;
	char n[32], ttl[32];
	snprintf(n, sizeof n, "%lld", (long long)size);
	snprintf(ttl, sizeof ttl, "%lld", (long long)s->expires_s);
	/* Celery's backend.set(): SETEX with result_expires, else SET. */
	const char *setex[] = {"SETEX", keys[2], ttl, n};
	const char *set[] = {"SET", keys[2], n};
	redisReply *r = NULL;
	pthread_mutex_lock(&s->lock);
	rc = s->expires_s > 0 ? aiq__redis_conn_command(&r, &s->conn, 4, setex, NULL)
	                      : aiq__redis_conn_command(&r, &s->conn, 3, set, NULL);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
		rc = aiq__err(AIQ_ESTORE, "Redis SET %.200s failed: %s", keys[2], r->str);
	freeReplyObject(r);
	free_keys(keys);
	return rc;
}

/* An integer reply, or a string of digits (GET), or nil; -1 otherwise. */
static long long reply_int(const redisReply *r)
{
	if (r == NULL || r->type == REDIS_REPLY_NIL)
		return 0;
	if (r->type == REDIS_REPLY_INTEGER)
		return r->integer;
	if (r->type == REDIS_REPLY_STRING)
		return strtoll(r->str, NULL, 10);
	return -1;
}

/* Send argv lists as one pipeline on the connection and read every reply;
 * the last one is returned. Lock held. */
static int pipeline(redisReply **last, redis_store *s, const char **const *cmds, const int *argc,
                    int n)
{
	*last = NULL;
	if (aiq__redis_conn_broken(&s->conn)) {
		bool hard = false;
		int rc = aiq__redis_conn_open(&s->conn, &hard);
		if (rc != AIQ_OK)
			return rc;
	}
	redisContext *c = s->conn.c;
	for (int i = 0; i < n; i++)
		if (redisAppendCommandArgv(c, argc[i], cmds[i], NULL) != REDIS_OK)
			goto broken;
	for (int i = 0; i < n; i++) {
		void *rep = NULL;
		if (redisGetReply(c, &rep) != REDIS_OK || rep == NULL)
			goto broken;
		if (i + 1 < n)
			freeReplyObject(rep);
		else
			*last = rep;
	}
	return AIQ_OK;
broken:;
	int rc = aiq__err(AIQ_ESTORE, "Redis chord transaction failed: %s",
	                  c->errstr[0] ? c->errstr : "connection lost");
	aiq__redis_conn_drop(&s->conn);
	return rc;
}

static int redis_chord_part_return(aiq__store *base, const char *group_id, int64_t group_index,
                                   const char *entry, char **ready)
{
	redis_store *s = (redis_store *)base;
	char *keys[3];
	int rc = chord_keys(keys, group_id);
	if (rc != AIQ_OK)
		return rc;
	char score[32], ttl[32];
	if (group_index < 0)
		snprintf(score, sizeof score, "+inf");
	else
		snprintf(score, sizeof score, "%lld", (long long)group_index);
	snprintf(ttl, sizeof ttl, "%lld", (long long)s->expires_s);
	const char *multi[] = {"MULTI"};
	const char *zadd[] = {"ZADD", keys[0], score, entry};
	const char *zcount[] = {"ZCOUNT", keys[0], "-inf", "+inf"};
	const char *get_t[] = {"GET", keys[1]};
	const char *get_s[] = {"GET", keys[2]};
	const char *exp_j[] = {"EXPIRE", keys[0], ttl};
	const char *exp_t[] = {"EXPIRE", keys[1], ttl};
	const char *exp_s[] = {"EXPIRE", keys[2], ttl};
	const char *exec[] = {"EXEC"};
	const char **const with[] = {multi, zadd, zcount, get_t, get_s, exp_j, exp_t, exp_s, exec};
	const int with_n[] = {1, 4, 4, 2, 2, 3, 3, 3, 1};
	const char **const without[] = {multi, zadd, zcount, get_t, get_s, exec};
	const int without_n[] = {1, 4, 4, 2, 2, 1};
	bool expire = s->expires_s > 0;
	redisReply *r = NULL;
	pthread_mutex_lock(&s->lock);
	rc = expire ? pipeline(&r, s, with, with_n, 9) : pipeline(&r, s, without, without_n, 6);
	if (rc == AIQ_OK && (r->type != REDIS_REPLY_ARRAY || r->elements < 4))
		rc = aiq__err(AIQ_ESTORE, "Redis chord transaction of %.64s failed: %s", group_id,
		              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
	long long count = rc == AIQ_OK ? reply_int(r->element[1]) : -1;
	long long diff = rc == AIQ_OK ? reply_int(r->element[2]) : 0;
	long long size = rc == AIQ_OK ? reply_int(r->element[3]) : 0;
	freeReplyObject(r);
	r = NULL;
	/* No size yet (GET .s nil): not a chord this store joins; Celery skips it too. */
	if (rc == AIQ_OK && size > 0 && count == size + diff) {
		const char *zrange[] = {"ZRANGE", keys[0], "0", "-1"};
		rc = aiq__redis_conn_command(&r, &s->conn, 4, zrange, NULL);
		if (rc == AIQ_OK && r->type != REDIS_REPLY_ARRAY)
			rc = aiq__err(AIQ_ESTORE, "Redis ZRANGE %.200s failed", keys[0]);
		json_t *list = rc == AIQ_OK ? json_array() : NULL;
		for (size_t i = 0; list && i < r->elements; i++) {
			json_t *e = r->element[i]->type == REDIS_REPLY_STRING
			                    ? json_loadb(r->element[i]->str, r->element[i]->len,
			                                 JSON_DECODE_ANY, NULL)
			                    : NULL;
			if (e == NULL || json_array_append_new(list, e) != 0) {
				rc = aiq__err(AIQ_ESTORE, "chord %.64s: part entry %zu is not JSON",
				              group_id, i);
				break;
			}
		}
		if (rc == AIQ_OK && !(*ready = json_dumps(list, JSON_COMPACT)))
			rc = aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
		json_decref(list);
		freeReplyObject(r);
	}
	pthread_mutex_unlock(&s->lock);
	free_keys(keys);
	return rc;
}

static int redis_chord_done(aiq__store *base, const char *group_id)
{
	redis_store *s = (redis_store *)base;
	char *keys[3];
	int rc = chord_keys(keys, group_id);
	if (rc != AIQ_OK)
		return rc;
	const char *del[] = {"DEL", keys[0], keys[1], keys[2]};
	redisReply *r = NULL;
	pthread_mutex_lock(&s->lock);
	rc = aiq__redis_conn_command(&r, &s->conn, 4, del, NULL);
	pthread_mutex_unlock(&s->lock);
	freeReplyObject(r);
	free_keys(keys);
	return rc;
}

/* celery-taskset-meta-<gid>: Celery's save_group (backend.set: SETEX with
 * result_expires, else SET) and restore_group (GET). */
static int redis_put_group(aiq__store *base, const char *group_id, const char *meta)
{
	redis_store *s = (redis_store *)base;
	char *key = aiq__asprintf(TASKSET_PREFIX "%s", group_id);
	if (key == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory saving a group");
	char ttl[32];
	snprintf(ttl, sizeof ttl, "%lld", (long long)s->expires_s);
	const char *setex[] = {"SETEX", key, ttl, meta};
	const char *set[] = {"SET", key, meta};
	redisReply *r = NULL;
	pthread_mutex_lock(&s->lock);
	int rc = s->expires_s > 0 ? aiq__redis_conn_command(&r, &s->conn, 4, setex, NULL)
	                          : aiq__redis_conn_command(&r, &s->conn, 3, set, NULL);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
		rc = aiq__err(AIQ_ESTORE, "Redis SET %.200s failed: %s", key, r->str);
	freeReplyObject(r);
	free(key);
	return rc;
}

static int redis_get_group(aiq__store *base, const char *group_id, char **meta)
{
	redis_store *s = (redis_store *)base;
	char *key = aiq__asprintf(TASKSET_PREFIX "%s", group_id);
	if (key == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory reading a group");
	size_t len = 0;
	int rc = get_meta(s, meta, &len, key);
	free(key);
	return rc;
}

static const char *const redis_schemes[] = {"redis",        "rediss",   "unix",
                                            "redis+socket", "sentinel", NULL};

const aiq__store_ops aiq__redis_store_ops = {
        .name = "redis",
        .schemes = redis_schemes,
        .caps = AIQ__STORE_CAP_NOTIFY,
        .open = redis_open,
        .close = redis_close,
        .put = redis_put,
        .put_batch = redis_put_batch,
        .get = redis_get,
        .get_batch = redis_get_batch,
        .wait = redis_wait,
        .subscribe = redis_subscribe,
        .ping = redis_ping,
        .forget = redis_forget,
        .chord_set_size = redis_chord_set_size,
        .chord_part_return = redis_chord_part_return,
        .chord_done = redis_chord_done,
        .put_group = redis_put_group,
        .get_group = redis_get_group,
};
