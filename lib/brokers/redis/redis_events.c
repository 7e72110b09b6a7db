/*
 * The Redis bus: Celery events and remote control as kombu's Redis
 * transport carries them (fanout exchanges are pub/sub with
 * fanout_prefix and fanout_patterns):
 *   events     PUBLISH /<db>.celeryev/<routing key> <envelope>
 *   requests   PSUBSCRIBE /<db>.celery.pidbox
 *              (and SADD _kombu.binding.celery.pidbox
 *               "\x06\x16\x06\x16<node>.celery.pidbox", removed at close:
 *               bookkeeping only, as kombu does)
 *   replies    SMEMBERS _kombu.binding.<exchange>, then LPUSH <envelope>
 *              onto every queue bound with the reply's routing key
 * Pub/sub ignores SELECT, so the database number is part of every channel
 * name: a bus for redis://host/6 talks on "/6.celeryev/..." and nothing
 * else sees it. Envelopes are kombu's (envelope.c), with the event's or
 * reply's headers and delivery_mode 1.
 *
 * Two connections: one in subscribe mode (listen/fetch), one for commands.
 * Both reconnect on the next call after a failure.
 */
#include "broker.h"

#include "message.h"
#include "redis_common.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEP             "\x06\x16"
#define RETRY_MS        1000
#define PIDBOX_EXCHANGE "celery.pidbox"

typedef struct redis_bus {
	aiq__bus base;
	aiq__redis_target target;
	aiq__redis_conn cmd;
	redisContext *sub; /* subscribed to the pidbox channel; NULL when down */
	char *node;
	char *member; /* our member of _kombu.binding.celery.pidbox */
	bool events;  /* listen_events(): subscribed to the events, not the pidbox */
	int64_t retry_at;
	bool lost_logged;
} redis_bus;

int aiq__redis_bus_open(aiq__bus **out, const char *url, const aiq_config *cfg);
extern const aiq__bus_ops aiq__redis_bus_ops;

static int publish_envelope(redis_bus *b, const char *cmd, const char *key, const char *exchange,
                            const char *rk, const char *body, size_t len, json_t *headers)
{
	aiq__wire w = {0};
	w.headers = headers;
	w.properties = json_pack("{s:i, s:i}", "delivery_mode", 1, "priority", 0);
	w.content_type = (char *)"application/json";
	w.content_encoding = (char *)"utf-8";
	w.body = (unsigned char *)(uintptr_t)body;
	w.body_len = len;
	char *env = NULL;
	size_t env_len = 0;
	int rc = w.properties ? aiq__envelope_encode(&env, &env_len, &w, exchange, rk, NULL)
	                      : aiq__err(AIQ_ENOMEM, "out of memory");
	json_decref(w.properties);
	if (rc != AIQ_OK)
		return rc;
	const char *argv[3] = {cmd, key, env};
	size_t lens[3] = {strlen(cmd), strlen(key), env_len};
	redisReply *r = NULL;
	rc = aiq__redis_conn_command(&r, &b->cmd, 3, argv, lens);
	if (rc == AIQ_OK && r->type == REDIS_REPLY_ERROR)
		rc = aiq__err(AIQ_EBROKER, "Redis %s %.100s failed: %.200s", cmd, key, r->str);
	freeReplyObject(r);
	free(env);
	return rc;
}

static int bus_publish_event(aiq__bus *base, const char *rk, const char *body, size_t len,
                             const char *hostname)
{
	redis_bus *b = (redis_bus *)base;
	char *channel = aiq__asprintf("/%d.celeryev/%s", b->target.db, rk);
	json_t *headers = json_pack("{s:s}", "hostname", hostname);
	int rc = channel && headers ? publish_envelope(b, "PUBLISH", channel, "celeryev", rk, body,
	                                               len, headers)
	                            : aiq__err(AIQ_ENOMEM, "out of memory");
	json_decref(headers);
	free(channel);
	return rc;
}

static int bus_reply(aiq__bus *base, const char *exchange, const char *rk, const char *body,
                     size_t len, const char *ticket, int64_t clock)
{
	redis_bus *b = (redis_bus *)base;
	char *binding = aiq__asprintf("_kombu.binding.%s", exchange);
	if (binding == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	const char *argv[2] = {"SMEMBERS", binding};
	redisReply *r = NULL;
	int rc = aiq__redis_conn_command(&r, &b->cmd, 2, argv, NULL);
	free(binding);
	if (rc != AIQ_OK)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY) {
		rc = aiq__err(AIQ_EBROKER, "Redis SMEMBERS of the reply bindings failed: %.200s",
		              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		freeReplyObject(r);
		return rc;
	}
	json_t *headers =
	        ticket ? json_pack("{s:s, s:I}", "ticket", ticket, "clock", (json_int_t)clock)
	               : json_pack("{s:I}", "clock", (json_int_t)clock);
	if (headers == NULL) {
		freeReplyObject(r);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	size_t rklen = strlen(rk);
	for (size_t i = 0; i < r->elements && rc == AIQ_OK; i++) {
		/* "<routing key>\x06\x16<pattern>\x06\x16<queue>" (kombu's binding) */
		const redisReply *m = r->element[i];
		if (m->type != REDIS_REPLY_STRING || m->len < rklen + 4 ||
		    memcmp(m->str, rk, rklen) != 0 || memcmp(m->str + rklen, SEP, 2) != 0)
			continue;
		const char *pat = m->str + rklen + 2;
		const char *q = strstr(pat, SEP);
		if (q == NULL || q[2] == '\0')
			continue;
		rc = publish_envelope(b, "LPUSH", q + 2, exchange, rk, body, len, headers);
	}
	json_decref(headers);
	freeReplyObject(r);
	return rc;
}

static void sub_drop(redis_bus *b, const char *why)
{
	if (b->sub && !b->lost_logged)
		aiq__log(AIQ_LOG_WARNING, "redis: control connection: %s; reconnecting", why);
	if (b->sub)
		b->lost_logged = true;
	if (b->sub)
		redisFree(b->sub);
	b->sub = NULL;
	b->retry_at = aiq__mono_ms() + RETRY_MS;
}

static int sub_connect(redis_bus *b)
{
	if (b->sub)
		return AIQ_OK;
	if (aiq__mono_ms() < b->retry_at)
		return aiq__err(AIQ_EBROKER, "reconnecting to Redis");
	bool hard = false;
	redisContext *c = NULL;
	int rc = aiq__redis_connect(&c, &b->target, AIQ_EBROKER, &hard);
	if (rc != AIQ_OK) {
		b->retry_at = aiq__mono_ms() + RETRY_MS;
		return rc;
	}
	/* The bookkeeping member, then the subscription. */
	redisReply *r = NULL;
	if (b->member) {
		const char *sadd[3] = {"SADD", "_kombu.binding." PIDBOX_EXCHANGE, b->member};
		rc = aiq__redis_conn_command(&r, &b->cmd, 3, sadd, NULL);
		freeReplyObject(r);
		if (rc != AIQ_OK) {
			redisFree(c);
			b->retry_at = aiq__mono_ms() + RETRY_MS;
			return rc;
		}
	}
	char channel[64];
	if (b->events)
		snprintf(channel, sizeof channel, "/%d.celeryev/*", b->target.db);
	else
		snprintf(channel, sizeof channel, "/%d." PIDBOX_EXCHANGE, b->target.db);
	const char *ps[2] = {"PSUBSCRIBE", channel};
	r = NULL;
	rc = aiq__redis_command(&r, c, AIQ_EBROKER, 2, ps, NULL);
	if (rc == AIQ_OK && (r->type != REDIS_REPLY_ARRAY || r->elements < 1))
		rc = aiq__err(AIQ_EBROKER, "Redis PSUBSCRIBE %s failed", channel);
	freeReplyObject(r);
	if (rc != AIQ_OK) {
		redisFree(c);
		b->retry_at = aiq__mono_ms() + RETRY_MS;
		return rc;
	}
	if (b->lost_logged)
		aiq__log(AIQ_LOG_INFO, "redis: control connection is back");
	b->lost_logged = false;
	b->sub = c;
	return AIQ_OK;
}

static int bus_listen(aiq__bus *base, const char *nodename)
{
	redis_bus *b = (redis_bus *)base;
	free(b->node);
	free(b->member);
	b->node = aiq__strdup(nodename);
	b->member = aiq__asprintf(SEP SEP "%s." PIDBOX_EXCHANGE, nodename);
	if (!b->node || !b->member)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	if (b->sub)
		sub_drop(b, "listening again");
	b->retry_at = 0;
	return sub_connect(b);
}

static int bus_listen_events(aiq__bus *base)
{
	redis_bus *b = (redis_bus *)base;
	free(b->node);
	free(b->member);
	b->member = NULL;
	b->events = true;
	if (!(b->node = aiq__strdup("")))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	if (b->sub)
		sub_drop(b, "listening again");
	b->retry_at = 0;
	return sub_connect(b);
}

/* A pmessage's payload: the kombu envelope of the request. */
static int take_request(redisReply *r, char **body, int64_t *clock)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
	    r->element[0]->type != REDIS_REPLY_STRING ||
	    strcmp(r->element[0]->str, "pmessage") != 0 ||
	    r->element[3]->type != REDIS_REPLY_STRING)
		return aiq__err(AIQ_ETIMEDOUT, "not a message");
	aiq__wire w = {0};
	int rc = aiq__envelope_decode(&w, NULL, r->element[3]->str, r->element[3]->len);
	if (rc != AIQ_OK)
		return aiq__err(AIQ_EPROTO, "control request is not a kombu envelope: %s",
		                aiq_error_last());
	json_t *c = w.headers ? json_object_get(w.headers, "clock") : NULL;
	*clock = json_is_integer(c) ? (int64_t)json_integer_value(c) : 0;
	*body = aiq__strndup((const char *)w.body, w.body_len);
	aiq__wire_clear(&w);
	return *body ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
}

static int bus_fetch(aiq__bus *base, char **body, int64_t *clock, int64_t timeout_ms)
{
	redis_bus *b = (redis_bus *)base;
	if (b->node == NULL)
		return aiq__err(AIQ_ESTATE, "the bus is not listening");
	if (sub_connect(b) != AIQ_OK) {
		struct timespec ts = aiq__timespec_ms(timeout_ms > 0 ? timeout_ms : 0);
		nanosleep(&ts, NULL);
		return aiq__err(AIQ_ETIMEDOUT, "reconnecting to Redis");
	}
	int64_t until = aiq__mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	for (;;) {
		void *reply = NULL;
		if (redisGetReplyFromReader(b->sub, &reply) != REDIS_OK) {
			sub_drop(b, aiq__redis_errstr(b->sub));
			return aiq__err(AIQ_ETIMEDOUT, "reconnecting to Redis");
		}
		if (reply) {
			int rc = take_request(reply, body, clock);
			freeReplyObject(reply);
			if (rc != AIQ_ETIMEDOUT)
				return rc;
			continue; /* a subscription confirmation */
		}
		int64_t left = until - aiq__mono_ms();
		if (left < 0)
			left = 0;
		struct pollfd p = {.fd = b->sub->fd, .events = POLLIN};
		int n = poll(&p, 1, (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			return aiq__err(AIQ_ETIMEDOUT, "no control request");
		if (n < 0 || redisBufferRead(b->sub) != REDIS_OK) {
			sub_drop(b, n < 0 ? strerror(errno) : aiq__redis_errstr(b->sub));
			return aiq__err(AIQ_ETIMEDOUT, "reconnecting to Redis");
		}
	}
}

static void bus_close(aiq__bus *base)
{
	redis_bus *b = (redis_bus *)base;
	if (b == NULL)
		return;
	if (b->member && !aiq__redis_conn_broken(&b->cmd)) {
		const char *srem[3] = {"SREM", "_kombu.binding." PIDBOX_EXCHANGE, b->member};
		redisReply *r = NULL;
		if (aiq__redis_command(&r, b->cmd.c, AIQ_EBROKER, 3, srem, NULL) == AIQ_OK)
			freeReplyObject(r);
	}
	if (b->sub)
		redisFree(b->sub);
	aiq__redis_conn_drop(&b->cmd);
	aiq__redis_target_clear(&b->target);
	free(b->node);
	free(b->member);
	free(b);
}

int aiq__redis_bus_open(aiq__bus **out, const char *url, const aiq_config *cfg)
{
	redis_bus *b = calloc(1, sizeof *b);
	if (b == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	b->base.ops = &aiq__redis_bus_ops;
	int rc = aiq__redis_target_parse(&b->target, url, cfg);
	if (rc != AIQ_OK) {
		free(b);
		return rc;
	}
	aiq__redis_conn_init(&b->cmd, &b->target, AIQ_EBROKER);
	rc = aiq__redis_conn_open(&b->cmd, NULL);
	if (rc != AIQ_OK) {
		bus_close(&b->base);
		return rc;
	}
	*out = &b->base;
	return AIQ_OK;
}

const aiq__bus_ops aiq__redis_bus_ops = {
        .close = bus_close,
        .publish_event = bus_publish_event,
        .listen = bus_listen,
        .listen_events = bus_listen_events,
        .fetch = bus_fetch,
        .reply = bus_reply,
};
