/*
 * The Redis broker: "redis://[[user]:password@]host[:port][/db]" and
 * "unix://[[user]:password@]/path[?db=N]", speaking kombu's Redis transport
 * so Celery producers and workers share the queues (docs/redis.md).
 *
 * Keys (kombu's layout, plus two of our own):
 *   <queue>, <queue>\x06\x163, \x166, \x169   lists of kombu envelopes; LPUSH,
 *                                            served from the right, priority
 *                                            step 0 first (kombu's order)
 *   _kombu.binding.<queue>                   set {"<queue>\x06\x16\x06\x16<queue>"}
 *   unacked / unacked_index / unacked_mutex  kombu's in-flight hash, its zset
 *                                            of fetch (lease) times, its lock
 *   _aiq.delayed.<queue>                     zset of "<step>:<envelope>" by due ms
 *   <queue>.dead                             dead letters (see dead_record)
 *
 * No loss window: one Lua script (fetch.lua) moves due delayed messages,
 * pops up to N elements (fetch: 1; fetch_batch: up to the free prefetch),
 * and records each in unacked/unacked_index, so a message is always
 * either in a list, in the delayed set, or in unacked. ack.lua removes
 * many tags in one call. A single publish is a plain LPUSH (the binding is
 * written once per connection). The scripts are the .lua files beside this
 * one, embedded at build time; redis_common.c runs them (EVALSHA).
 * Elements that are not kombu envelopes are moved to <queue>.dead by the
 * same script. Scripts cannot block, so fetch() polls: one script call, then
 * a sleep of at most redis.poll_ms on the wakeup pipe, until its timeout.
 *
 * Leases: a keeper thread with its own connection refreshes the
 * unacked_index score of every delivery this handle holds (every
 * redis.lease_renew_ms), so a long task is never restored while it runs,
 * and restores entries older than redis.visibility_timeout_s (those of dead
 * consumers, Python or C) under kombu's unacked_mutex.
 *
 * Reconnecting: when the connection drops, fetch() returns AIQ_ETIMEDOUT and
 * retries with a capped exponential backoff (redis.reconnect_max_ms); only
 * a refused password or database is a hard error. Other calls reconnect
 * once and retry once.
 *
 * Threading: one thread uses a handle at a time (wakeup() is thread-safe and
 * async-signal-safe: it writes one byte to a pipe). The held-delivery list
 * is shared with the keeper thread under `lock`.
 */
#include "broker.h"

#include "config_int.h"
#include "redis_common.h"
#include "redis_lua.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern const aiq__broker_ops aiq__redis_broker_ops;
int aiq__redis_bus_open(aiq__bus **out, const char *url, const aiq_config *cfg);

#define KEY_UNACKED       "unacked"
#define KEY_UNACKED_INDEX "unacked_index"
#define KEY_UNACKED_MUTEX "unacked_mutex"
#define PRIO_SEP          "\x06\x16"
#define RESTORE_LIMIT     "1000"
#define BACKOFF_MIN_MS    100
/* Most messages one fetch.lua call takes: its HSET and ZADD get 2 * max + 1
 * arguments through Lua's unpack(), which must never fail (a script error
 * after the pops would not undo them). */
#define FETCH_MAX 1000

/* The scripts, by id; their text is in the .lua files beside this one. */
enum {
	S_FETCH = AIQ__LUA_FETCH,
	S_ACK = AIQ__LUA_ACK,
	S_REQUEUE = AIQ__LUA_REQUEUE,
	S_DEAD = AIQ__LUA_DEAD_LETTER,
	S_RESTORE = AIQ__LUA_RESTORE,
	S_COUNT = AIQ__LUA_COUNT,
	S_N = AIQ__LUA_N
};

#define scripts(i) (&aiq__redis_scripts[i])

typedef aiq__redis_conn conn;

/* The keys of one queue, built once (at consume(), or at the first
 * publish to it) instead of at every call. */
typedef struct qkeys {
	char *name;
	char *list[4];  /* priority lists, step slot 0..3 (kombu's _q_for_pri) */
	char *delayed;  /* _aiq.delayed.<queue> */
	char *dead;     /* <queue>.dead */
	char *binding;  /* _kombu.binding.<queue> */
	char *member;   /* "<queue>\x06\x16\x06\x16<queue>" */
	uint64_t bound; /* main.generation in which the binding was written; 0 never */
	struct qkeys *next;
} qkeys;

#define QKEYS_CACHE_MAX 256 /* queues remembered for publish/depth/purge */

/* A delivery this handle holds unacknowledged. */
typedef struct held {
	uint64_t id;
	char *tag;  /* kombu delivery_tag: the field in unacked */
	char *list; /* list it came from (requeue target) */
	char *queue;
	struct held *next;
} held;

typedef struct redis_broker {
	aiq__broker base;
	aiq__redis_target target;
	conn main; /* used by the thread that owns the handle */
	bool down; /* main connection lost; fetch reconnects with backoff */
	int64_t next_attempt_ms, backoff_ms, backoff_max_ms;
	int wake[2]; /* wakeup pipe: read end, write end */

	qkeys **queues; /* consumed, in consume() order, then add_queue()'s */
	size_t nqueues, rr;
	bool consuming; /* consume() was called (cancel_queue() may leave no queue) */
	qkeys *cache;   /* other queues' keys (publish, depth, purge) */
	/* The fetch script's arguments, built at consume(): the keys, then
	 * ARGV pointing at the buffers below and at the queue names. */
	const char **fetch_args;
	size_t fetch_nargs;
	char fetch_now_s[32], fetch_now_ms[32], fetch_nq[32], fetch_start[32], fetch_max[32];
	size_t ncache;
	unsigned prefetch;
	int64_t visibility_ms, renew_ms, restore_ms, poll_ms;
	uint64_t next_id;

	pthread_mutex_t lock; /* guards held, nheld, stop */
	pthread_cond_t cond;  /* keeper sleeps on it (CLOCK_MONOTONIC) */
	held *held;
	size_t nheld;
	bool stop;
	bool keeper_started;
	pthread_t keeper;
} redis_broker;

/* ---- keys ---- */

static const char steps[4] = {'0', '3', '6', '9'};

/* Priority list of `queue` for step slot 0..3 (kombu's _q_for_pri). */
static char *list_key(const char *queue, int slot)
{
	if (slot == 0)
		return aiq__strdup(queue);
	return aiq__asprintf("%s" PRIO_SEP "%c", queue, steps[slot]);
}

/* kombu: clamp to 0..9, then the largest step <= priority. */
static int priority_slot(const aiq__wire *w)
{
	json_t *p = w->properties ? json_object_get(w->properties, "priority") : NULL;
	json_int_t v = json_is_integer(p) ? json_integer_value(p) : 0;
	return v >= 9 ? 3 : v >= 6 ? 2 : v >= 3 ? 1 : 0;
}

/* ---- queue keys ---- */

static void qkeys_free(qkeys *q)
{
	if (q == NULL)
		return;
	free(q->name);
	for (int i = 0; i < 4; i++)
		free(q->list[i]);
	free(q->delayed);
	free(q->dead);
	free(q->binding);
	free(q->member);
	free(q);
}

static qkeys *qkeys_new(const char *queue)
{
	qkeys *q = calloc(1, sizeof *q);
	if (q == NULL)
		return NULL;
	bool ok = (q->name = aiq__strdup(queue)) != NULL;
	for (int i = 0; i < 4; i++)
		ok = ok && (q->list[i] = list_key(queue, i)) != NULL;
	ok = ok && (q->delayed = aiq__asprintf("_aiq.delayed.%s", queue)) != NULL &&
	     (q->dead = aiq__asprintf("%s.dead", queue)) != NULL &&
	     (q->binding = aiq__asprintf("_kombu.binding.%s", queue)) != NULL &&
	     (q->member = aiq__asprintf("%s" PRIO_SEP PRIO_SEP "%s", queue, queue)) != NULL;
	if (!ok) {
		qkeys_free(q);
		return NULL;
	}
	return q;
}

/* The keys of `queue`, built at most once per handle (while it stays in
 * the cache). Borrowed: valid until the next keys_for() or consume().
 * NULL when out of memory. */
static qkeys *keys_for(redis_broker *h, const char *queue)
{
	for (size_t i = 0; i < h->nqueues; i++)
		if (strcmp(h->queues[i]->name, queue) == 0)
			return h->queues[i];
	for (qkeys *q = h->cache; q; q = q->next)
		if (strcmp(q->name, queue) == 0)
			return q;
	if (h->ncache >= QKEYS_CACHE_MAX) {
		for (qkeys *q = h->cache, *next; q; q = next) {
			next = q->next;
			qkeys_free(q);
		}
		h->cache = NULL;
		h->ncache = 0;
	}
	qkeys *q = qkeys_new(queue);
	if (q) {
		q->next = h->cache;
		h->cache = q;
		h->ncache++;
	}
	return q;
}

/* Prefix of the functions below: conn_* are the shared connection's. */
#define conn_drop   aiq__redis_conn_drop
#define conn_broken aiq__redis_conn_broken

static int conn_open(conn *k, bool *hard)
{
	return aiq__redis_conn_open(k, hard);
}

/* ---- held deliveries (lock held) ---- */

static void held_free(held *x)
{
	if (x == NULL)
		return;
	free(x->tag);
	free(x->list);
	free(x->queue);
	free(x);
}

static held *held_take(redis_broker *h, uint64_t id)
{
	for (held **pp = &h->held; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			held *x = *pp;
			*pp = x->next;
			h->nheld--;
			return x;
		}
	}
	return NULL;
}

/* ---- keeper thread: lease renewal and visibility restore ---- */

static int restore_stale(conn *k, int64_t visibility_ms)
{
	char token[37], cutoff[32];
	aiq__uuid4(token);
	snprintf(cutoff, sizeof cutoff, "%.3f", (double)(aiq__now_ms() - visibility_ms) / 1000.0);
	const char *args[] = {KEY_UNACKED, KEY_UNACKED_INDEX, KEY_UNACKED_MUTEX, token,
	                      cutoff,      RESTORE_LIMIT};
	redisReply *r = NULL;
	int rc = aiq__redis_conn_eval(&r, k, S_RESTORE, 3, 6, args, NULL);
	if (rc != AIQ_OK)
		return rc;
	if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
		aiq__log(AIQ_LOG_WARNING,
		         "redis: restored %lld unacknowledged message(s) older than the "
		         "visibility timeout (%lld s)",
		         (long long)r->integer, (long long)(visibility_ms / 1000));
	freeReplyObject(r);
	return AIQ_OK;
}

static void renew_leases(redis_broker *h, conn *k)
{
	pthread_mutex_lock(&h->lock);
	size_t n = h->nheld;
	if (n == 0) {
		pthread_mutex_unlock(&h->lock);
		return;
	}
	char score[32];
	snprintf(score, sizeof score, "%.3f", (double)aiq__now_ms() / 1000.0);
	int argc = 3 + 2 * (int)n;
	const char **argv = malloc((size_t)argc * sizeof *argv);
	char **tags = calloc(n, sizeof *tags);
	bool ok = argv && tags;
	size_t i = 0;
	for (held *x = h->held; ok && x; x = x->next, i++)
		ok = (tags[i] = aiq__strdup(x->tag)) != NULL;
	pthread_mutex_unlock(&h->lock);
	if (ok) {
		argv[0] = "ZADD";
		argv[1] = KEY_UNACKED_INDEX;
		argv[2] = "XX"; /* never re-adds an entry acked or restored meanwhile */
		for (i = 0; i < n; i++) {
			argv[3 + 2 * i] = score;
			argv[4 + 2 * i] = tags[i];
		}
		redisReply *r = NULL;
		if (aiq__redis_conn_command(&r, k, argc, argv, NULL) == AIQ_OK)
			freeReplyObject(r);
		else
			aiq__log(AIQ_LOG_WARNING, "redis: renewing %zu lease(s) failed: %s", n,
			         aiq_error_last());
	}
	if (tags)
		for (i = 0; i < n; i++)
			free(tags[i]);
	free(tags);
	free(argv);
}

static void *keeper_main(void *arg)
{
	redis_broker *h = arg;
	conn k;
	aiq__redis_conn_init(&k, &h->target, AIQ_EBROKER);
	int64_t now = aiq__mono_ms();
	int64_t next_renew = now + h->renew_ms, next_restore = now + h->restore_ms;
	pthread_mutex_lock(&h->lock);
	while (!h->stop) {
		now = aiq__mono_ms();
		int64_t until = next_renew < next_restore ? next_renew : next_restore;
		if (now < until) {
			struct timespec ts = aiq__timespec_ms(until);
			pthread_cond_timedwait(&h->cond, &h->lock, &ts);
			continue;
		}
		pthread_mutex_unlock(&h->lock);
		if (now >= next_renew) {
			renew_leases(h, &k);
			next_renew = now + h->renew_ms;
		}
		if (now >= next_restore) {
			if (restore_stale(&k, h->visibility_ms) != AIQ_OK)
				aiq__log(AIQ_LOG_DEBUG, "redis: visibility restore skipped: %s",
				         aiq_error_last());
			next_restore = now + h->restore_ms;
		}
		pthread_mutex_lock(&h->lock);
	}
	pthread_mutex_unlock(&h->lock);
	conn_drop(&k);
	return NULL;
}

/* ---- driver operations ---- */

static void redis_close(aiq__broker *b);

static int redis_open(aiq__broker **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "redis broker needs an output pointer");
	*out = NULL;
	redis_broker *h = calloc(1, sizeof *h);
	if (h == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory opening the Redis broker");
	h->base.ops = &aiq__redis_broker_ops;
	h->wake[0] = h->wake[1] = -1;
	pthread_mutex_init(&h->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cond, &ca);
	pthread_condattr_destroy(&ca);
	aiq__redis_conn_init(&h->main, &h->target, AIQ_EBROKER);
	int rc = aiq__redis_target_parse(&h->target, url, cfg);
	if (rc != AIQ_OK) {
		redis_close(&h->base);
		return rc;
	}
	/* The declared ranges keep every value below positive. */
	h->visibility_ms = aiq__cfg_int(cfg, AIQ_CFG_REDIS_VISIBILITY_TIMEOUT_S) * 1000;
	h->renew_ms = aiq__cfg_int(cfg, AIQ_CFG_REDIS_LEASE_RENEW_MS);
	if (h->renew_ms <= 0) {
		h->renew_ms = h->visibility_ms / 4;
		if (h->renew_ms > 60000)
			h->renew_ms = 60000;
	}
	if (h->renew_ms < 10)
		h->renew_ms = 10;
	h->restore_ms = h->visibility_ms / 2;
	if (h->restore_ms > 60000)
		h->restore_ms = 60000;
	if (h->restore_ms < 250)
		h->restore_ms = 250;
	h->poll_ms = aiq__cfg_int(cfg, AIQ_CFG_REDIS_POLL_MS);
	h->backoff_max_ms = aiq__cfg_int(cfg, AIQ_CFG_REDIS_RECONNECT_MAX_MS);
	h->backoff_ms = BACKOFF_MIN_MS;
	if (pipe(h->wake) != 0) {
		h->wake[0] = h->wake[1] = -1;
		redis_close(&h->base);
		return aiq__err(AIQ_EIO, "cannot create the Redis broker's wakeup pipe: %s",
		                strerror(errno));
	}
	for (int i = 0; i < 2; i++) {
		fcntl(h->wake[i], F_SETFL, fcntl(h->wake[i], F_GETFL) | O_NONBLOCK);
		fcntl(h->wake[i], F_SETFD, FD_CLOEXEC);
	}
	bool hard;
	if ((rc = conn_open(&h->main, &hard)) != AIQ_OK) {
		redis_close(&h->base);
		return rc;
	}
	*out = &h->base;
	return AIQ_OK;
}

/* Give a held delivery back to its queue (close, reject with requeue). */
static int requeue_held(redis_broker *h, const held *x)
{
	const char *args[] = {KEY_UNACKED, KEY_UNACKED_INDEX, x->list, x->tag};
	redisReply *r = NULL;
	int rc = aiq__redis_conn_eval(&r, &h->main, S_REQUEUE, 3, 4, args, NULL);
	freeReplyObject(r);
	return rc;
}

static void redis_close(aiq__broker *b)
{
	if (b == NULL)
		return;
	redis_broker *h = (redis_broker *)b;
	if (h->keeper_started) {
		pthread_mutex_lock(&h->lock);
		h->stop = true;
		pthread_cond_signal(&h->cond);
		pthread_mutex_unlock(&h->lock);
		pthread_join(h->keeper, NULL);
	}
	/* Unacknowledged deliveries go back at once, as a warm shutdown of a
	 * kombu worker does, onto the served end (kombu's RPUSH) so they are
	 * served before anything still queued, marked redelivered. The held
	 * list is newest first and each push lands in front of the previous
	 * one, so walking it as it is leaves the oldest in front: they are
	 * served again in their original order. (kombu walks its deliveries
	 * oldest first, which serves them again newest first.) If Redis is
	 * unreachable they stay in unacked and come back after the visibility
	 * timeout. */
	size_t unreturned = 0;
	for (held *x = h->held; x; x = x->next) {
		/* Once Redis proved unreachable, do not reconnect (and, for a
		 * Sentinel target, wait out a failover) once per delivery. */
		if (unreturned > 0 && conn_broken(&h->main)) {
			unreturned++;
			continue;
		}
		if (requeue_held(h, x) != AIQ_OK) {
			unreturned++;
			aiq__log(AIQ_LOG_WARNING,
			         "redis: could not return delivery %s to '%s' on close (%s); it "
			         "comes back after the visibility timeout",
			         x->tag, x->queue, aiq_error_last());
		}
	}
	if (unreturned > 1)
		aiq__log(AIQ_LOG_WARNING,
		         "redis: %zu deliveries not returned on close; they come back after the "
		         "visibility timeout",
		         unreturned);
	for (held *x = h->held, *next; x; x = next) {
		next = x->next;
		held_free(x);
	}
	conn_drop(&h->main);
	for (int k = 0; k < 2; k++)
		if (h->wake[k] >= 0)
			close(h->wake[k]);
	for (size_t q = 0; q < h->nqueues; q++)
		qkeys_free(h->queues[q]);
	free(h->queues);
	free(h->fetch_args);
	for (qkeys *q = h->cache, *next; q; q = next) {
		next = q->next;
		qkeys_free(q);
	}
	aiq__redis_target_clear(&h->target);
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* One message of a batch, encoded: the element and the key it goes to. */
typedef struct batch_item {
	char *payload; /* envelope, or "<step>:<envelope>" for the delayed set */
	size_t len;
	int slot; /* priority list slot, or -1 for the delayed set */
	char score[32];
} batch_item;

static int batch_item_make(batch_item *it, const char *queue, const aiq__wire *msg,
                           int64_t not_before_ms, int64_t now_ms)
{
	if (msg == NULL)
		return aiq__err(AIQ_EINVAL, "publish needs a message");
	if (msg->body_len > AIQ__MAX_MESSAGE_BYTES)
		return aiq__err(AIQ_ETOOBIG, "message body of %zu bytes is over the %u-byte limit",
		                msg->body_len, AIQ__MAX_MESSAGE_BYTES);
	char tag[37];
	aiq__uuid4(tag);
	char *env = NULL;
	size_t env_len = 0;
	int rc = aiq__envelope_encode(&env, &env_len, msg, "", queue, tag);
	if (rc != AIQ_OK)
		return rc;
	int slot = priority_slot(msg);
	if (not_before_ms <= now_ms) {
		it->payload = env;
		it->len = env_len;
		it->slot = slot;
		return AIQ_OK;
	}
	it->payload = malloc(env_len + 3);
	if (it->payload == NULL) {
		free(env);
		return aiq__err(AIQ_ENOMEM, "out of memory publishing to Redis");
	}
	it->payload[0] = steps[slot];
	it->payload[1] = ':';
	memcpy(it->payload + 2, env, env_len);
	it->len = env_len + 2;
	it->slot = -1;
	snprintf(it->score, sizeof it->score, "%lld", (long long)not_before_ms);
	free(env);
	return AIQ_OK;
}

#define BATCH_WINDOW 512 /* commands in flight per pipeline round */
/* Status of a message a demoted master refused (READONLY): not queued. */
#define AIQ__REDIS_RESEND 1

/* The binding, a plain command; in a batch it also finds (and replaces) a
 * connection that died while idle before anything is sent. */
static int batch_bind(redis_broker *h, const char *binding, const char *member)
{
	const char *argv[] = {"SADD", binding, member};
	redisReply *r = NULL;
	int rc = aiq__redis_conn_command(&r, &h->main, 3, argv, NULL);
	if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
		rc = aiq__err(AIQ_EBROKER, "Redis SADD failed: %s", r->str);
	freeReplyObject(r);
	return rc;
}

/* Write the queue's binding once per connection (kombu's lookup of the
 * queue from its exchange reads it; restore() reads it too). A connection
 * reopened since may face a server that lost it, so it is written again. */
static int ensure_bound(redis_broker *h, qkeys *q)
{
	if (q->bound != 0 && q->bound == h->main.generation && !conn_broken(&h->main))
		return AIQ_OK;
	int rc = batch_bind(h, q->binding, q->member);
	if (rc == AIQ_OK)
		q->bound = h->main.generation;
	return rc;
}

/* After the first publish to a queue on this connection, one plain LPUSH
 * (ZADD for a delayed message). */
static int redis_publish(aiq__broker *b, const char *queue, const aiq__wire *msg,
                         int64_t not_before_ms)
{
	redis_broker *h = (redis_broker *)b;
	if (queue == NULL || queue[0] == '\0')
		return aiq__err(AIQ_EINVAL, "publish needs a queue name");
	batch_item it = {0};
	int rc = batch_item_make(&it, queue, msg, not_before_ms, aiq__now_ms());
	if (rc != AIQ_OK)
		return rc;
	qkeys *q = keys_for(h, queue);
	if (q == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory publishing to Redis");
	} else if ((rc = ensure_bound(h, q)) == AIQ_OK) {
		const char *target = it.slot < 0 ? q->delayed : q->list[it.slot];
		const char *argv[4];
		size_t lens[4];
		int argc = 0;
		argv[argc] = it.slot < 0 ? "ZADD" : "LPUSH";
		lens[argc] = strlen(argv[argc]);
		argc++;
		argv[argc] = target;
		lens[argc++] = strlen(target);
		if (it.slot < 0) {
			argv[argc] = it.score;
			lens[argc++] = strlen(it.score);
		}
		argv[argc] = it.payload;
		lens[argc++] = it.len;
		uint64_t gen = h->main.generation;
		redisReply *r = NULL;
		rc = aiq__redis_conn_command(&r, &h->main, argc, argv, lens);
		if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
			rc = aiq__err(AIQ_EBROKER, "Redis %s %.200s failed: %.300s", argv[0],
			              target, r->str);
		freeReplyObject(r);
		/* Reconnected during the push: bind on the new connection too. */
		if (rc == AIQ_OK && h->main.generation != gen)
			rc = ensure_bound(h, q);
		if (rc == AIQ_OK)
			rc = aiq__redis_wait_replicas(h->main.c, &h->target, AIQ_EBROKER);
	}
	free(it.payload);
	return rc;
}

/* Pipeline LPUSH/ZADD for every message, then read every reply: a reply
 * that is an error fails its message; a connection lost before a reply
 * fails that message and every later one (they may or may not have been
 * queued). */
static int redis_publish_batch(aiq__broker *b, const char *queue, const aiq__wire *const *msgs,
                               size_t n, const int64_t *not_before_ms, int *status)
{
	redis_broker *h = (redis_broker *)b;
	for (size_t k = 0; k < n; k++)
		status[k] = AIQ_EBROKER;
	if (queue == NULL || queue[0] == '\0' || msgs == NULL)
		return aiq__err(AIQ_EINVAL, "publish needs a queue name and messages");
	if (n == 0)
		return AIQ_OK;
	batch_item *items = calloc(n, sizeof *items);
	qkeys *q = keys_for(h, queue);
	size_t nlost = 0, nrefused = 0, nbad = 0;
	char why[512] = "";
	int rc = AIQ_OK;
	if (items == NULL || q == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory publishing to Redis");
		for (size_t k = 0; k < n; k++)
			status[k] = rc;
		snprintf(why, sizeof why, "%s", aiq_error_last());
		goto out;
	}
	int64_t now = aiq__now_ms();
	for (size_t k = 0; k < n; k++) {
		int irc = batch_item_make(&items[k], queue, msgs[k],
		                          not_before_ms ? not_before_ms[k] : 0, now);
		/* A built message stays AIQ_EBROKER until its reply says otherwise. */
		status[k] = irc == AIQ_OK ? AIQ_EBROKER : irc;
		if (irc != AIQ_OK && nbad++ == 0)
			snprintf(why, sizeof why, "%s", aiq_error_last());
	}
	if ((rc = batch_bind(h, q->binding, q->member)) != AIQ_OK) {
		snprintf(why, sizeof why, "%s", aiq_error_last());
		for (size_t k = 0; k < n; k++)
			if (items[k].payload)
				status[k] = rc;
		goto out;
	}
	q->bound = h->main.generation;
	int resent = 0;
	for (size_t start = 0; start < n;) {
		size_t end = start + BATCH_WINDOW < n ? start + BATCH_WINDOW : n;
		bool demoted = false;
		if (conn_broken(&h->main)) {
			/* Lost in an earlier window: the rest was never sent. */
			bool hard;
			if (conn_open(&h->main, &hard) != AIQ_OK) {
				if (why[0] == '\0')
					snprintf(why, sizeof why, "%s", aiq_error_last());
				break; /* the rest keeps AIQ_EBROKER */
			}
		}
		redisContext *c = h->main.c;
		size_t appended = start;
		for (size_t k = start; k < end; k++) {
			if (items[k].payload == NULL)
				continue;
			batch_item *it = &items[k];
			int st;
			if (it->slot < 0) {
				const char *argv[] = {"ZADD", q->delayed, it->score, it->payload};
				size_t lens[] = {4, strlen(q->delayed), strlen(it->score), it->len};
				st = redisAppendCommandArgv(c, 4, argv, lens);
			} else {
				const char *argv[] = {"LPUSH", q->list[it->slot], it->payload};
				size_t lens[] = {5, strlen(q->list[it->slot]), it->len};
				st = redisAppendCommandArgv(c, 3, argv, lens);
			}
			if (st != REDIS_OK)
				break; /* out of memory: this one and later are not sent */
			appended = k + 1;
		}
		bool lost = false;
		for (size_t k = start; k < appended; k++) {
			if (items[k].payload == NULL)
				continue;
			redisReply *r = NULL;
			if (lost || redisGetReply(c, (void **)&r) != REDIS_OK) {
				if (!lost && why[0] == '\0')
					snprintf(
					        why, sizeof why,
					        "connection to Redis lost (%s); unreplied messages "
					        "may or may not have been queued",
					        aiq__redis_errstr(c));
				lost = true;
				nlost++;
				continue;
			}
			if (aiq__redis_demoted(&h->target, r)) {
				/* Not queued: sent again to the new master below. */
				if (!demoted)
					aiq__log(AIQ_LOG_WARNING,
					         "redis: the server of Sentinel master '%s' is no "
					         "longer the master (%.200s); finding the master "
					         "again",
					         h->target.master_name, r->str);
				demoted = true;
				status[k] = AIQ__REDIS_RESEND;
			} else if (r->type == REDIS_REPLY_ERROR) {
				nrefused++;
				if (why[0] == '\0')
					snprintf(why, sizeof why, "Redis refused a message: %.300s",
					         r->str);
			} else {
				status[k] = AIQ_OK;
			}
			freeReplyObject(r);
		}
		/* Durability: the window's accepted messages count only once
		 * enough replicas have them; unconfirmed ones fail (they may be
		 * queued: the caller may send them again). */
		int wrc = AIQ_OK;
		if (h->target.min_replicas > 0 && !demoted)
			wrc = lost ? aiq__err(AIQ_EBROKER, "connection lost before WAIT")
			           : aiq__redis_wait_replicas(c, &h->target, AIQ_EBROKER);
		if (wrc != AIQ_OK) {
			size_t nunconfirmed = 0;
			for (size_t k = start; k < appended; k++)
				if (status[k] == AIQ_OK) {
					status[k] = AIQ_EBROKER;
					nunconfirmed++;
				}
			nlost += nunconfirmed;
			if (why[0] == '\0')
				snprintf(why, sizeof why, "%s", aiq_error_last());
		}
		if (appended < end || lost || demoted) {
			if (appended < end && why[0] == '\0')
				snprintf(why, sizeof why, "out of memory publishing to Redis");
			/* Commands still buffered or unread make the context unusable. */
			conn_drop(&h->main);
		}
		if (demoted) {
			/* Accepted before the demotion but never confirmed by WAIT:
			 * they fail (maybe queued, so they are not sent again). */
			for (size_t k = start; h->target.min_replicas > 0 && k < appended; k++)
				if (status[k] == AIQ_OK) {
					status[k] = AIQ_EBROKER;
					nlost++;
					free(items[k].payload);
					items[k].payload = NULL;
					if (why[0] == '\0')
						snprintf(why, sizeof why,
						         "the master was demoted before WAIT "
						         "confirmed "
						         "the messages");
				}
			bool again = !lost && resent++ < 2;
			for (size_t k = start; k < appended; k++) {
				if (status[k] != AIQ__REDIS_RESEND)
					continue;
				if (again) {
					status[k] = AIQ_EBROKER;
				} else {
					status[k] = AIQ_EBROKER;
					nrefused++;
					if (why[0] == '\0')
						snprintf(
						        why, sizeof why,
						        "Redis answered READONLY again: no master");
				}
			}
			if (again) {
				/* Only the READONLY ones go again (skip the others). */
				for (size_t k = start; k < appended; k++)
					if (status[k] != AIQ_EBROKER && items[k].payload) {
						free(items[k].payload);
						items[k].payload = NULL;
					}
				if (conn_open(&h->main, &(bool){false}) == AIQ_OK &&
				    batch_bind(h, q->binding, q->member) == AIQ_OK) {
					q->bound = h->main.generation;
					continue; /* the same window, on the new master */
				}
				if (why[0] == '\0')
					snprintf(why, sizeof why, "%s", aiq_error_last());
			}
		}
		start = end;
	}
out:
	rc = AIQ_OK;
	size_t failed = 0;
	for (size_t k = 0; k < n; k++) {
		if (status[k] != AIQ_OK && failed++ == 0)
			rc = status[k];
	}
	if (rc != AIQ_OK)
		rc = aiq__err(rc,
		              "%zu of %zu messages to '%.200s' not accepted (%zu invalid, %zu "
		              "refused, %zu unreplied): %s",
		              failed, n, queue, nbad, nrefused, nlost,
		              why[0] ? why : "the connection to Redis failed");
	for (size_t k = 0; items && k < n; k++)
		free(items[k].payload);
	free(items);
	return rc;
}

/* The fetch script's arguments for the consumed queues. */
static int build_fetch_args(redis_broker *h)
{
	size_t nargs = 2 + 6 * h->nqueues + 5 + h->nqueues;
	const char **args = calloc(nargs, sizeof *args);
	if (args == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory starting to consume");
	free(h->fetch_args);
	h->fetch_args = args;
	h->fetch_nargs = nargs;
	const char **a = args;
	*a++ = KEY_UNACKED;
	*a++ = KEY_UNACKED_INDEX;
	for (size_t i = 0; i < h->nqueues; i++) {
		for (int s = 0; s < 4; s++)
			*a++ = h->queues[i]->list[s];
		*a++ = h->queues[i]->delayed;
		*a++ = h->queues[i]->dead;
	}
	snprintf(h->fetch_nq, sizeof h->fetch_nq, "%zu", h->nqueues);
	*a++ = h->fetch_now_s;
	*a++ = h->fetch_now_ms;
	*a++ = h->fetch_nq;
	*a++ = h->fetch_start;
	*a++ = h->fetch_max;
	for (size_t i = 0; i < h->nqueues; i++)
		*a++ = h->queues[i]->name;
	h->rr = 0;
	return AIQ_OK;
}

static int redis_consume(aiq__broker *b, const char *const *queues, size_t nqueues,
                         unsigned prefetch)
{
	redis_broker *h = (redis_broker *)b;
	if (queues == NULL || nqueues == 0)
		return aiq__err(AIQ_EINVAL, "consume needs at least one queue");
	qkeys **copy = calloc(nqueues, sizeof *copy);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory starting to consume");
	for (size_t i = 0; i < nqueues; i++) {
		if (queues[i] == NULL || queues[i][0] == '\0' ||
		    (copy[i] = qkeys_new(queues[i])) == NULL) {
			for (size_t j = 0; j <= i && j < nqueues; j++)
				qkeys_free(copy[j]);
			free(copy);
			return queues[i] == NULL || queues[i][0] == '\0'
			               ? aiq__err(AIQ_EINVAL, "consume: queue %zu has no name", i)
			               : aiq__err(AIQ_ENOMEM, "out of memory starting to consume");
		}
	}
	for (size_t q = 0; q < h->nqueues; q++)
		qkeys_free(h->queues[q]);
	free(h->queues);
	h->queues = copy;
	h->nqueues = nqueues;
	if (build_fetch_args(h) != AIQ_OK) {
		for (size_t q = 0; q < h->nqueues; q++)
			qkeys_free(h->queues[q]);
		free(h->queues);
		h->queues = NULL;
		h->nqueues = 0;
		return aiq__err(AIQ_ENOMEM, "out of memory starting to consume");
	}
	h->prefetch = prefetch;
	h->consuming = true;
	/* Messages of consumers that died while we were away come back first. */
	if (restore_stale(&h->main, h->visibility_ms) != AIQ_OK)
		aiq__log(AIQ_LOG_WARNING, "redis: visibility restore at consume start failed: %s",
		         aiq_error_last());
	if (!h->keeper_started) {
		if (pthread_create(&h->keeper, NULL, keeper_main, h) != 0)
			return aiq__err(AIQ_ERROR, "cannot start the Redis lease keeper thread");
		h->keeper_started = true;
	}
	return AIQ_OK;
}

/* kombu's Redis transport routes a direct exchange through the set
 * "_kombu.binding.<exchange>" ("<routing key>\x06\x16\x06\x16<queue>"),
 * which add_consumer writes as a Celery worker's queue_bind does; topic
 * bindings need kombu's patterns and fanout is pub/sub there, so only
 * direct ones are taken. The queue set changes on the thread that fetches:
 * a message is popped and recorded in unacked by one script, so none is
 * in flight between a pop and a delivery when the set changes. */
static int redis_add_queue(aiq__broker *b, const char *queue, const aiq__queue_binding *bind)
{
	redis_broker *h = (redis_broker *)b;
	if (!h->consuming)
		return aiq__err(AIQ_ESTATE, "add_queue before consume");
	if (bind->exchange_type && *bind->exchange_type &&
	    strcmp(bind->exchange_type, "direct") != 0)
		return aiq__err(AIQ_EUNSUPPORTED,
		                "the redis broker consumes queues of direct exchanges only, not "
		                "'%.40s' (kombu's Redis transport routes topic exchanges by "
		                "pattern and fanout ones by pub/sub)",
		                bind->exchange_type);
	for (size_t i = 0; i < h->nqueues; i++)
		if (strcmp(h->queues[i]->name, queue) == 0)
			return AIQ_OK;
	const char *ex = bind->exchange && *bind->exchange ? bind->exchange : queue;
	const char *rk = bind->routing_key && *bind->routing_key ? bind->routing_key : queue;
	char *set = aiq__asprintf("_kombu.binding.%s", ex);
	char *member = aiq__asprintf("%s" PRIO_SEP PRIO_SEP "%s", rk, queue);
	qkeys *q = qkeys_new(queue);
	qkeys **v = q ? realloc(h->queues, (h->nqueues + 1) * sizeof *v) : NULL;
	int rc = set && member && v ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory adding a queue");
	if (v)
		h->queues = v;
	if (rc == AIQ_OK)
		rc = batch_bind(h, set, member);
	free(set);
	free(member);
	if (rc == AIQ_OK) {
		h->queues[h->nqueues++] = q;
		rc = build_fetch_args(h);
		if (rc != AIQ_OK)
			h->nqueues--;
	}
	if (rc != AIQ_OK)
		qkeys_free(q);
	return rc;
}

/* Deliveries already fetched keep their own copies of the queue's names
 * (held, aiq__delivery.queue): ack, reject and dead_letter still work. */
static int redis_cancel_queue(aiq__broker *b, const char *queue)
{
	redis_broker *h = (redis_broker *)b;
	for (size_t i = 0; i < h->nqueues; i++) {
		if (strcmp(h->queues[i]->name, queue) == 0) {
			qkeys *q = h->queues[i];
			memmove(h->queues + i, h->queues + i + 1,
			        (h->nqueues - i - 1) * sizeof *h->queues);
			h->nqueues--;
			int rc = build_fetch_args(h);
			if (rc != AIQ_OK) {
				/* Out of memory: keep consuming it, say so. */
				memmove(h->queues + i + 1, h->queues + i,
				        (h->nqueues - i) * sizeof *h->queues);
				h->queues[i] = q;
				h->nqueues++;
				return rc;
			}
			qkeys_free(q);
			return AIQ_OK;
		}
	}
	return AIQ_OK;
}

/* Sleep up to ms on the wakeup pipe. True when woken (the pipe drained). */
static bool wait_wake(redis_broker *h, int64_t ms)
{
	struct pollfd p = {.fd = h->wake[0], .events = POLLIN};
	if (ms < 0)
		ms = 0;
	int n = poll(&p, 1, (int)(ms > 60000 ? 60000 : ms));
	if (n <= 0)
		return false;
	char buf[64];
	while (read(h->wake[0], buf, sizeof buf) > 0) {
	}
	return true;
}

static void went_down(redis_broker *h, const char *why);

/* Sleep until the first consumed queue's main list gets an element, at most
 * `ms`, instead of polling blindly: BLMOVE of a list onto its own tail blocks
 * until the list is not empty and then leaves it exactly as it was, so no
 * message ever leaves Redis here (the fetch script still takes it, with its
 * unacked bookkeeping, atomically). Priority lists and due delayed messages
 * are still found by the next poll, at most `ms` later. A wakeup() during the
 * wait is honoured when the reply arrives. Returns true when woken. */
static bool wait_for_push(redis_broker *h, int64_t ms)
{
	redisContext *c = h->main.c;
	const char *key = h->queues[0]->list[0];
	char secs[32];
	snprintf(secs, sizeof secs, "%.3f", (double)ms / 1000.0);
	const char *argv[] = {"BLMOVE", key, key, "RIGHT", "RIGHT", secs};
	if (redisAppendCommandArgv(c, 6, argv, NULL) != REDIS_OK)
		return wait_wake(h, ms);
	int done = 0;
	while (!done) {
		if (redisBufferWrite(c, &done) != REDIS_OK) {
			went_down(h, c->errstr);
			return wait_wake(h, ms);
		}
	}
	struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN},
	                      {.fd = h->wake[0], .events = POLLIN}};
	/* The reply comes by `ms`; the slack covers a slow server. */
	int n = poll(p, 2, (int)(ms > 60000 ? 60000 : ms) + 1000);
	bool woken = false;
	if (n > 0 && (p[1].revents & POLLIN)) {
		char buf[64];
		while (read(h->wake[0], buf, sizeof buf) > 0) {
		}
		woken = true;
	}
	redisReply *r = NULL;
	if (redisGetReply(c, (void **)&r) != REDIS_OK)
		went_down(h, c->errstr);
	else if (r && r->type == REDIS_REPLY_ERROR)
		aiq__log(AIQ_LOG_DEBUG, "redis: BLMOVE wait: %s", r->str); /* e.g. WRONGTYPE */
	freeReplyObject(r);
	return woken;
}

/* Note the lost connection once and schedule the next attempt. */
static void went_down(redis_broker *h, const char *why)
{
	if (!h->down)
		aiq__log(AIQ_LOG_WARNING, "redis: connection to %s lost (%s); reconnecting",
		         h->target.redacted, why);
	h->down = true;
	conn_drop(&h->main);
	h->next_attempt_ms = aiq__mono_ms() + h->backoff_ms;
	h->backoff_ms *= 2;
	if (h->backoff_ms > h->backoff_max_ms)
		h->backoff_ms = h->backoff_max_ms;
}

/* Make the main connection usable for fetch. AIQ_OK, 1 (not yet: retry
 * later) or a hard error. */
static int fetch_connect(redis_broker *h)
{
	if (!conn_broken(&h->main))
		return AIQ_OK;
	if (!h->down)
		went_down(h, aiq__redis_conn_why(&h->main));
	if (aiq__mono_ms() < h->next_attempt_ms)
		return 1;
	bool hard = false;
	int rc = conn_open(&h->main, &hard);
	if (rc != AIQ_OK) {
		if (hard)
			return rc;
		aiq__log(AIQ_LOG_DEBUG, "redis: reconnect failed: %s", aiq_error_last());
		went_down(h, aiq_error_last()); /* already down: only reschedules */
		return 1;
	}
	aiq__log(AIQ_LOG_INFO, "redis: reconnected to %s; consuming again", h->target.redacted);
	h->base.reconnects++;
	h->down = false;
	h->backoff_ms = BACKOFF_MIN_MS;
	return AIQ_OK;
}

/* A record for <queue>.dead when the element is not a usable envelope. */
static char *dead_record(const char *queue, const char *reason, const char *raw, size_t len)
{
	json_t *o = json_object();
	if (o == NULL)
		return NULL;
	json_t *why = aiq__json_string_lossy(reason);
	json_object_set_new(o, "x-aiq-dead-reason", why ? why : json_string("?"));
	json_object_set_new(o, "queue", json_string(queue));
	if (aiq__utf8_valid(raw, len)) {
		json_object_set_new(o, "raw", json_stringn(raw, len));
	} else {
		char *b64 = aiq__base64_encode((const unsigned char *)raw, len, NULL);
		json_object_set_new(o, "raw_base64", b64 ? json_string(b64) : json_null());
		free(b64);
	}
	json_object_set_new(o, "time", json_real((double)aiq__now_ms() / 1000.0));
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

static int run_dead(redis_broker *h, const char *queue, const char *tag, const char *payload,
                    size_t payload_len, bool *found)
{
	qkeys *q = keys_for(h, queue);
	if (q == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
	const char *dead = q->dead;
	const char *args[] = {KEY_UNACKED, KEY_UNACKED_INDEX, dead, tag, payload};
	size_t lens[] = {strlen(KEY_UNACKED), strlen(KEY_UNACKED_INDEX), strlen(dead), strlen(tag),
	                 payload_len};
	redisReply *r = NULL;
	int rc = aiq__redis_conn_eval(&r, &h->main, S_DEAD, 3, 5, args, lens);
	if (rc == AIQ_OK && found)
		*found = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
	freeReplyObject(r);
	return rc;
}

/* Turn one fetch.lua delivery entry (queue index, slot, element, tag) into
 * *out. 1 when the element was no decodable envelope (then dead-lettered). */
static int make_delivery(redis_broker *h, aiq__delivery **out, redisReply *const *e)
{
	if (e[0]->type != REDIS_REPLY_INTEGER || e[1]->type != REDIS_REPLY_INTEGER ||
	    e[2]->type != REDIS_REPLY_STRING || e[3]->type != REDIS_REPLY_STRING ||
	    e[0]->integer < 0 || (size_t)e[0]->integer >= h->nqueues || e[1]->integer < 1 ||
	    e[1]->integer > 4)
		return aiq__err(AIQ_EBROKER, "unexpected reply from the Redis fetch script");
	size_t qi = (size_t)e[0]->integer;
	int slot = (int)e[1]->integer - 1;
	const redisReply *el = e[2], *tagr = e[3];
	const char *queue = h->queues[qi]->name;
	aiq__delivery *d = calloc(1, sizeof *d);
	held *x = calloc(1, sizeof *x);
	if (d == NULL || x == NULL || (x->tag = aiq__strndup(tagr->str, tagr->len)) == NULL ||
	    (x->list = aiq__strdup(h->queues[qi]->list[slot])) == NULL ||
	    (x->queue = aiq__strdup(queue)) == NULL || (d->queue = aiq__strdup(queue)) == NULL) {
		free(d);
		held_free(x);
		/* It stays in unacked and comes back after the visibility timeout. */
		return aiq__err(AIQ_ENOMEM, "out of memory receiving a message from Redis");
	}
	int rc = aiq__envelope_decode(&d->wire, NULL, el->str, el->len);
	if (rc != AIQ_OK) {
		char reason[600];
		snprintf(reason, sizeof reason, "undecodable envelope: %s", aiq_error_last());
		aiq__log(AIQ_LOG_WARNING, "redis: element of '%s' moved to '%s.dead': %s", queue,
		         queue, reason);
		char *rec = dead_record(queue, reason, el->str, el->len);
		rc = rec ? run_dead(h, queue, x->tag, rec, strlen(rec), NULL)
		         : aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
		free(rec);
		held_free(x);
		aiq__delivery_free(d);
		return rc == AIQ_OK ? 1 : rc;
	}
	json_t *di =
	        d->wire.properties ? json_object_get(d->wire.properties, "delivery_info") : NULL;
	d->redelivered = json_is_true(json_object_get(di, "redelivered"));
	x->id = d->tag = ++h->next_id;
	pthread_mutex_lock(&h->lock);
	x->next = h->held;
	h->held = x;
	h->nheld++;
	pthread_mutex_unlock(&h->lock);
	*out = d;
	return AIQ_OK;
}

/* One fetch.lua call taking up to `max`: AIQ_OK with *n >= 1 deliveries in
 * out[], 1 when nothing is ready, 2 when only unusable elements were found
 * (dead-lettered: try again), or an error (then *n == 0). A delivery that
 * fails here after the script (out of memory) stays in unacked and comes
 * back after the visibility timeout; the others are returned. */
static int fetch_once(redis_broker *h, aiq__delivery **out, size_t max, size_t *n)
{
	size_t nq = h->nqueues;
	*n = 0;
	int64_t now = aiq__now_ms();
	snprintf(h->fetch_now_s, sizeof h->fetch_now_s, "%.3f", (double)now / 1000.0);
	snprintf(h->fetch_now_ms, sizeof h->fetch_now_ms, "%lld", (long long)now);
	snprintf(h->fetch_start, sizeof h->fetch_start, "%zu", h->rr % nq);
	snprintf(h->fetch_max, sizeof h->fetch_max, "%zu", max);
	redisReply *r = NULL;
	int rc = aiq__redis_conn_eval_here(&r, &h->main, S_FETCH, (int)(2 + 6 * nq),
	                                   (int)h->fetch_nargs, h->fetch_args, NULL);
	if (rc != AIQ_OK)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY) {
		freeReplyObject(r);
		return aiq__err(AIQ_EBROKER, "unexpected reply from the Redis fetch script");
	}
	size_t ndead = 0, nfailed = 0, i = 0;
	int first_err = AIQ_OK;
	char why[512] = "";
	while (i < r->elements) {
		redisReply **e = r->element + i;
		if (e[0]->type == REDIS_REPLY_INTEGER && e[0]->integer == 1 &&
		    i + 5 <= r->elements && *n < max) {
			int drc = make_delivery(h, &out[*n], e + 1);
			if (drc == AIQ_OK) {
				h->rr = (size_t)e[1]->integer + 1;
				(*n)++;
			} else if (drc == 1) {
				ndead++;
			} else if (nfailed++ == 0) {
				first_err = drc;
				snprintf(why, sizeof why, "%s", aiq_error_last());
			}
			i += 5;
		} else if (e[0]->type == REDIS_REPLY_INTEGER && e[0]->integer == 2 &&
		           i + 3 <= r->elements && e[1]->type == REDIS_REPLY_INTEGER &&
		           e[1]->integer >= 0 && (size_t)e[1]->integer < nq &&
		           e[2]->type == REDIS_REPLY_STRING) {
			const char *q = h->queues[e[1]->integer]->name;
			aiq__log(AIQ_LOG_WARNING,
			         "redis: element of queue '%s' moved to '%s.dead': %.*s", q, q,
			         (int)e[2]->len, e[2]->str);
			ndead++;
			i += 3;
		} else {
			if (nfailed++ == 0) {
				first_err =
				        aiq__err(AIQ_EBROKER,
				                 "unexpected reply from the Redis fetch script");
				snprintf(why, sizeof why, "%s", aiq_error_last());
			}
			break;
		}
	}
	freeReplyObject(r);
	if (nfailed > 0)
		aiq__log(AIQ_LOG_WARNING,
		         "redis: %zu fetched message(s) not handed out (%s); they stay in unacked "
		         "and come back after the visibility timeout",
		         nfailed, why);
	if (*n > 0)
		return AIQ_OK;
	if (nfailed > 0)
		return aiq__err(first_err, "%s", why);
	return ndead > 0 ? 2 : 1;
}

/* fetch() and fetch_batch(): wait up to timeout_ms for the first delivery,
 * then take what is ready, at most `max` and the free prefetch. */
static int fetch_some(redis_broker *h, aiq__delivery **out, size_t max, size_t *n,
                      int64_t timeout_ms)
{
	*n = 0;
	if (!h->consuming)
		return aiq__err(AIQ_ESTATE, "fetch() called before consume()");
	int64_t deadline = -1;
	if (timeout_ms >= 0 && timeout_ms < INT64_MAX / 4)
		deadline = aiq__mono_ms() + timeout_ms;
	for (;;) {
		int64_t now = aiq__mono_ms();
		int64_t left = deadline < 0 ? h->poll_ms : deadline - now;
		int rc = fetch_connect(h);
		if (rc < 0)
			return rc;
		if (rc == AIQ_OK) {
			pthread_mutex_lock(&h->lock);
			size_t room = h->prefetch == 0          ? max
			              : h->nheld >= h->prefetch ? 0
			                                        : h->prefetch - h->nheld;
			pthread_mutex_unlock(&h->lock);
			if (room > max)
				room = max;
			if (room > FETCH_MAX)
				room = FETCH_MAX;
			if (room > 0 && h->nqueues > 0) {
				rc = fetch_once(h, out, room, n);
				if (rc == AIQ_OK)
					return AIQ_OK;
				if (rc == 2)
					continue;
				if (rc == AIQ_ENOMEM) {
					/* Not the connection's fault: the element stays
					 * in unacked and is restored after the visibility
					 * timeout; the worker tries again. */
					char why[256];
					snprintf(why, sizeof why, "%s", aiq_error_last());
					aiq__log(AIQ_LOG_WARNING, "redis: %s", why);
					return aiq__err(AIQ_ETIMEDOUT, "%s", why);
				}
				if (rc < 0) {
					if (rc != AIQ_EBROKER)
						return rc;
					/* Connection lost, or a transient error reply (LOADING,
					 * OOM, READONLY): keep trying with backoff. */
					went_down(h, aiq_error_last());
				}
			}
		}
		if (deadline >= 0 && left <= 0)
			return aiq__err(AIQ_ETIMEDOUT,
			                h->down ? "Redis is unreachable; reconnecting"
			                        : "no message within the timeout");
		int64_t nap = h->down ? h->next_attempt_ms - now : h->poll_ms;
		if (nap > left)
			nap = left;
		if (nap < 1)
			nap = 1;
		/* Wait on the queue itself only when a push can be taken at once
		 * (connected, below the prefetch bound); otherwise just sleep. */
		pthread_mutex_lock(&h->lock);
		bool room = h->prefetch == 0 || h->nheld < h->prefetch;
		pthread_mutex_unlock(&h->lock);
		bool woken = !h->down && room && nap >= 5 && h->nqueues > 0 ? wait_for_push(h, nap)
		                                                            : wait_wake(h, nap);
		if (woken)
			return aiq__err(AIQ_ETIMEDOUT, "fetch interrupted by wakeup()");
	}
}

static int redis_fetch(aiq__broker *b, aiq__delivery **out, int64_t timeout_ms)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "fetch needs an output pointer");
	*out = NULL;
	size_t n = 0;
	return fetch_some((redis_broker *)b, out, 1, &n, timeout_ms);
}

static int redis_fetch_batch(aiq__broker *b, aiq__delivery **out, size_t max, size_t *n,
                             int64_t timeout_ms)
{
	if (n == NULL || out == NULL || max == 0)
		return aiq__err(AIQ_EINVAL, "fetch_batch needs an output array and max > 0");
	return fetch_some((redis_broker *)b, out, max, n, timeout_ms);
}

static void redis_wakeup(aiq__broker *b)
{
	redis_broker *h = (redis_broker *)b;
	char c = 1;
	ssize_t n = write(h->wake[1], &c, 1); /* a full pipe already wakes */
	(void)n;
}

static int unknown_delivery(const aiq__delivery *d)
{
	return aiq__err(AIQ_ESTATE,
	                "delivery %llu is not outstanding on this handle (already acknowledged "
	                "or rejected, or delivered by another handle)",
	                (unsigned long long)d->tag);
}

static held *take(redis_broker *h, const aiq__delivery *d)
{
	pthread_mutex_lock(&h->lock);
	held *x = held_take(h, d->tag);
	pthread_mutex_unlock(&h->lock);
	return x;
}

#define ACK_CHUNK 256 /* tags per ack.lua call (Lua's unpack() has a limit) */

/* Drop n held deliveries from unacked and unacked_index with ack.lua,
 * ACK_CHUNK tags per call; warn about those no longer there. The held
 * entries are freed whatever happens: an entry left in unacked by a
 * failure comes back after the visibility timeout (its outcome is stored,
 * so running it again is safe). */
static int ack_held(redis_broker *h, held **xs, size_t n)
{
	int rc = AIQ_OK;
	const char **args = malloc((2 + (n < ACK_CHUNK ? n : ACK_CHUNK)) * sizeof *args);
	if (args == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory acknowledging messages");
	for (size_t start = 0; args && start < n && rc == AIQ_OK; start += ACK_CHUNK) {
		size_t m = n - start < ACK_CHUNK ? n - start : ACK_CHUNK;
		args[0] = KEY_UNACKED;
		args[1] = KEY_UNACKED_INDEX;
		for (size_t k = 0; k < m; k++)
			args[2 + k] = xs[start + k]->tag;
		redisReply *r = NULL;
		rc = aiq__redis_conn_eval(&r, &h->main, S_ACK, 2, (int)(2 + m), args, NULL);
		for (size_t k = 0; rc == AIQ_OK && k < m; k++) {
			const redisReply *e = r->type == REDIS_REPLY_ARRAY && k < r->elements
			                              ? r->element[k]
			                              : NULL;
			if (e && e->type == REDIS_REPLY_INTEGER && e->integer == 0)
				aiq__log(
				        AIQ_LOG_WARNING,
				        "redis: delivery %s of '%s' was no longer in unacked when "
				        "acknowledged (restored after the visibility timeout?); it "
				        "may run again",
				        xs[start + k]->tag, xs[start + k]->queue);
		}
		freeReplyObject(r);
	}
	free(args);
	for (size_t k = 0; k < n; k++)
		held_free(xs[k]);
	return rc;
}

static int redis_ack(aiq__broker *b, aiq__delivery *d)
{
	redis_broker *h = (redis_broker *)b;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "ack needs a delivery");
	held *x = take(h, d);
	if (x == NULL)
		return unknown_delivery(d);
	return ack_held(h, &x, 1);
}

/* One script call per ACK_CHUNK deliveries. Deliveries this handle does not
 * hold are skipped (AIQ_ESTATE is returned after the others are acked). */
static int redis_ack_batch(aiq__broker *b, aiq__delivery *const *ds, size_t n)
{
	redis_broker *h = (redis_broker *)b;
	if (ds == NULL && n > 0)
		return aiq__err(AIQ_EINVAL, "ack_batch needs deliveries");
	if (n == 0)
		return AIQ_OK;
	held **xs = malloc(n * sizeof *xs);
	if (xs == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory acknowledging messages");
	size_t m = 0, unknown = 0;
	uint64_t first_unknown = 0;
	pthread_mutex_lock(&h->lock);
	for (size_t i = 0; i < n; i++) {
		held *x = ds[i] ? held_take(h, ds[i]->tag) : NULL;
		if (x)
			xs[m++] = x;
		else if (unknown++ == 0)
			first_unknown = ds[i] ? ds[i]->tag : 0;
	}
	pthread_mutex_unlock(&h->lock);
	int rc = m ? ack_held(h, xs, m) : AIQ_OK;
	free(xs);
	if (rc == AIQ_OK && unknown > 0)
		rc = aiq__err(AIQ_ESTATE,
		              "%zu of %zu deliveries (first: %llu) are not outstanding on this "
		              "handle (already acknowledged or rejected, or delivered by another "
		              "handle); the others were acknowledged",
		              unknown, n, (unsigned long long)first_unknown);
	return rc;
}

static int redis_reject(aiq__broker *b, aiq__delivery *d, bool requeue)
{
	redis_broker *h = (redis_broker *)b;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "reject needs a delivery");
	held *x = take(h, d);
	if (x == NULL)
		return unknown_delivery(d);
	int rc;
	if (requeue) {
		rc = requeue_held(h, x);
	} else {
		rc = ack_held(h, &x, 1);
		x = NULL;
	}
	held_free(x);
	return rc;
}

static int redis_dead_letter(aiq__broker *b, aiq__delivery *d, const char *reason)
{
	redis_broker *h = (redis_broker *)b;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "dead_letter needs a delivery");
	pthread_mutex_lock(&h->lock);
	held *x = NULL;
	for (x = h->held; x && x->id != d->tag; x = x->next) {
	}
	pthread_mutex_unlock(&h->lock);
	if (x == NULL)
		return unknown_delivery(d);
	/* The dead copy is the same envelope (same tag) with the reason added
	 * as header x-aiq-dead-reason, routed to <queue>.dead. */
	aiq__wire w = {0};
	int rc = aiq__wire_copy(&w, &d->wire);
	json_t *why = aiq__json_string_lossy(reason);
	char *dead = aiq__asprintf("%s.dead", x->queue);
	char *env = NULL;
	size_t env_len = 0;
	if (rc == AIQ_OK && (why == NULL || dead == NULL ||
	                     (w.headers == NULL && (w.headers = json_object()) == NULL) ||
	                     json_object_set(w.headers, "x-aiq-dead-reason", why) != 0))
		rc = aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
	if (rc == AIQ_OK)
		rc = aiq__envelope_encode(&env, &env_len, &w, "", dead, x->tag);
	bool found = false;
	if (rc == AIQ_OK)
		rc = run_dead(h, x->queue, x->tag, env, env_len, &found);
	if (rc == AIQ_OK) {
		pthread_mutex_lock(&h->lock);
		held *mine = held_take(h, d->tag);
		pthread_mutex_unlock(&h->lock);
		if (!found)
			aiq__log(AIQ_LOG_WARNING,
			         "redis: delivery %s of '%s' was no longer in unacked when "
			         "dead-lettered; another consumer has it now",
			         mine ? mine->tag : "?", mine ? mine->queue : "?");
		held_free(mine);
	}
	free(env);
	free(dead);
	json_decref(why);
	aiq__wire_clear(&w);
	return rc;
}

static int run_count(redis_broker *h, const char *queue, bool purge, uint64_t *n)
{
	qkeys *q = keys_for(h, queue);
	if (q == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory counting a Redis queue");
	char now_ms[32];
	snprintf(now_ms, sizeof now_ms, "%lld", (long long)aiq__now_ms());
	const char *args[] = {q->list[0], q->list[1], q->list[2],       q->list[3],
	                      q->delayed, now_ms,     purge ? "1" : "0"};
	redisReply *r = NULL;
	int rc = aiq__redis_conn_eval(&r, &h->main, S_COUNT, 5, 7, args, NULL);
	if (rc == AIQ_OK)
		*n = r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? (uint64_t)r->integer : 0;
	freeReplyObject(r);
	return rc;
}

static int redis_purge(aiq__broker *b, const char *queue, uint64_t *removed)
{
	if (queue == NULL || queue[0] == '\0')
		return aiq__err(AIQ_EINVAL, "purge needs a queue name");
	uint64_t n = 0;
	int rc = run_count((redis_broker *)b, queue, true, &n);
	if (rc == AIQ_OK && removed)
		*removed = n;
	return rc;
}

static int redis_depth(aiq__broker *b, const char *queue, uint64_t *count)
{
	if (queue == NULL || queue[0] == '\0' || count == NULL)
		return aiq__err(AIQ_EINVAL, "depth needs a queue name and an output pointer");
	return run_count((redis_broker *)b, queue, false, count);
}

static int redis_ping(aiq__broker *b)
{
	redis_broker *h = (redis_broker *)b;
	const char *argv[] = {"PING"};
	redisReply *r = NULL;
	int rc = aiq__redis_conn_command(&r, &h->main, 1, argv, NULL);
	if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
		rc = aiq__err(AIQ_EBROKER, "Redis PING failed: %s", r->str);
	freeReplyObject(r);
	return rc;
}

static const char *const redis_schemes[] = {"redis",        "rediss",   "unix",
                                            "redis+socket", "sentinel", NULL};

/* Not AIQ__BROKER_CAP_PRIORITY: kombu's Redis order serves lower numbers
 * first, the reverse of that capability's promise (docs/redis.md). */
const aiq__broker_ops aiq__redis_broker_ops = {
        .name = "redis",
        .schemes = redis_schemes,
        .caps = AIQ__BROKER_CAP_DELAY | AIQ__BROKER_CAP_DELAY_OURS_ONLY |
                AIQ__BROKER_CAP_DEAD_LETTER,
        .open = redis_open,
        .close = redis_close,
        .publish = redis_publish,
        .publish_batch = redis_publish_batch,
        .consume = redis_consume,
        .fetch = redis_fetch,
        .fetch_batch = redis_fetch_batch,
        .wakeup = redis_wakeup,
        .ack = redis_ack,
        .ack_batch = redis_ack_batch,
        .reject = redis_reject,
        .dead_letter = redis_dead_letter,
        .purge = redis_purge,
        .depth = redis_depth,
        .ping = redis_ping,
        .add_queue = redis_add_queue,
        .cancel_queue = redis_cancel_queue,
        .bus_open = aiq__redis_bus_open, /* redis_events.c */
};
