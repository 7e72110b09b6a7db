/*
 * The RabbitMQ bus: Celery events and remote control, declared exactly as
 * Celery 5.2 declares them (a mismatch is 406 PRECONDITION_FAILED):
 *   celeryev             topic, durable, not auto-delete    (events)
 *   celery.pidbox        fanout, not durable, not auto-delete (requests)
 *   <node>.celery.pidbox queue, not durable, auto-delete,
 *                        x-expires 10000, x-message-ttl 300000, bound with ""
 *                        and consumed no_ack
 *   reply.celery.pidbox  direct, not durable (replies)
 * Events and replies go out transient (delivery_mode 1, priority 0) with
 * content_type application/json and content_encoding utf-8, without
 * confirms. A bus owns one connection (the handle's control link, channel
 * 1); a lost connection is reconnected by the next call, with a short
 * backoff, and the declarations are made again.
 */
#include "amqp_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EVENT_EXCHANGE   "celeryev"
#define PIDBOX_EXCHANGE  "celery.pidbox"
#define REPLY_EXCHANGE   "reply.celery.pidbox"
#define PIDBOX_SUFFIX    ".celery.pidbox"
#define RETRY_MS         1000
#define MAX_REQUEST_SIZE (1024 * 1024)

typedef struct amqp_bus {
	aiq__bus base;
	amqp_broker link;      /* settings and the control link only */
	uint64_t declared_gen; /* link generation in which the exchanges were declared */
	uint64_t listen_gen;   /* ... and the pidbox queue consumed; 0 never */
	char *node;            /* listen(): node name ("" for listen_events()) */
	char *events_queue;    /* listen_events(): "celeryev.<uuid>" */
	int64_t retry_at;      /* monotonic ms before which no reconnect is tried */
	bool lost_logged;
} amqp_bus;

extern const aiq__bus_ops aiq__amqp_bus_ops;

static void lost(amqp_bus *b, const char *what)
{
	if (!b->lost_logged)
		aiq__log(AIQ_LOG_WARNING, "amqp: events/control connection: %s; reconnecting",
		         what);
	b->lost_logged = true;
	aiq__amqp_link_drop(&b->link.ctl, false);
	b->retry_at = aiq__mono_ms() + RETRY_MS;
}

static int declare_exchange(conn_link *l, const char *name, const char *type, bool durable)
{
	amqp_exchange_declare(l->conn, CH_MAIN, amqp_cstring_bytes(name), amqp_cstring_bytes(type),
	                      0, durable, 0, 0, amqp_empty_table);
	char what[100];
	snprintf(what, sizeof what, "declaring exchange '%s'", name);
	return aiq__amqp_rpc_check(l, CH_MAIN, what);
}

/* Declare an auto-delete queue with Celery's x-expires and x-message-ttl
 * (ms), bind it to `exchange` with `key` and consume it without acks;
 * `what` names it in errors ("the pidbox queue"). */
static int listen_on(amqp_bus *b, const char *q, const char *exchange, const char *key,
                     int32_t expires_ms, int32_t ttl_ms, const char *what)
{
	conn_link *l = &b->link.ctl;
	amqp_table_entry_t args[2];
	args[0].key = amqp_cstring_bytes("x-expires");
	args[0].value.kind = AMQP_FIELD_KIND_I32;
	args[0].value.value.i32 = expires_ms;
	args[1].key = amqp_cstring_bytes("x-message-ttl");
	args[1].value.kind = AMQP_FIELD_KIND_I32;
	args[1].value.value.i32 = ttl_ms;
	amqp_table_t qargs = {2, args};
	char step[80];
	amqp_queue_declare(l->conn, CH_MAIN, amqp_cstring_bytes(q), 0, 0, 0, 1, qargs);
	snprintf(step, sizeof step, "declaring %s", what);
	int rc = aiq__amqp_rpc_check(l, CH_MAIN, step);
	if (rc == AIQ_OK) {
		amqp_queue_bind(l->conn, CH_MAIN, amqp_cstring_bytes(q),
		                amqp_cstring_bytes(exchange), amqp_cstring_bytes(key),
		                amqp_empty_table);
		snprintf(step, sizeof step, "binding %s", what);
		rc = aiq__amqp_rpc_check(l, CH_MAIN, step);
	}
	if (rc == AIQ_OK) {
		amqp_basic_consume(l->conn, CH_MAIN, amqp_cstring_bytes(q), amqp_empty_bytes, 0, 1,
		                   0, amqp_empty_table);
		snprintf(step, sizeof step, "consuming %s", what);
		rc = aiq__amqp_rpc_check(l, CH_MAIN, step);
	}
	if (rc == AIQ_OK)
		b->listen_gen = l->gen;
	return rc;
}

/* listen_events(): the queue `celery events` declares for itself (every
 * event); otherwise this node's pidbox queue, as Celery's worker declares it. */
static int start_listening(amqp_bus *b)
{
	if (b->events_queue)
		return listen_on(b, b->events_queue, EVENT_EXCHANGE, "#", 60000, 5000,
		                 "the events queue");
	char *q = aiq__asprintf("%s" PIDBOX_SUFFIX, b->node);
	if (q == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = listen_on(b, q, PIDBOX_EXCHANGE, "", 10000, 300000, "the pidbox queue");
	free(q);
	return rc;
}

/* Connected, with the exchanges declared (and consuming, once listening). */
static int ready(amqp_bus *b)
{
	conn_link *l = &b->link.ctl;
	if (!l->up) {
		if (aiq__mono_ms() < b->retry_at)
			return aiq__err(AIQ_EBROKER, "reconnecting to RabbitMQ");
		bool auth;
		int rc = aiq__amqp_link_connect(&b->link, l, &auth);
		if (rc != AIQ_OK) {
			b->retry_at = aiq__mono_ms() + RETRY_MS;
			return rc;
		}
		if (b->lost_logged)
			aiq__log(AIQ_LOG_INFO, "amqp: events/control connection is back");
		b->lost_logged = false;
	}
	/* An events-only bus never reads: take what the server sent (a close,
	 * heartbeats) so a closed channel is noticed. A listening bus reads in
	 * fetch(). */
	while (b->node == NULL && l->up) {
		amqp_frame_t f;
		char why[MAX_ERRTEXT];
		enum aiq__amqp_read r = aiq__amqp_read_frame(l, &f, 0, why, sizeof why);
		if (r == AIQ__AMQP_READ_TIMEOUT)
			break;
		if (r == AIQ__AMQP_READ_LOST) {
			lost(b, why);
			return aiq__err(AIQ_EBROKER, "%s", why);
		}
	}
	int rc = AIQ_OK;
	if (b->declared_gen != l->gen) {
		rc = declare_exchange(l, EVENT_EXCHANGE, "topic", true);
		if (rc == AIQ_OK)
			rc = declare_exchange(l, PIDBOX_EXCHANGE, "fanout", false);
		if (rc == AIQ_OK)
			rc = declare_exchange(l, REPLY_EXCHANGE, "direct", false);
		if (rc == AIQ_OK)
			b->declared_gen = l->gen;
	}
	if (rc == AIQ_OK && b->node && b->listen_gen != l->gen)
		rc = start_listening(b);
	if (rc != AIQ_OK && l->up)
		lost(b, aiq_error_last());
	return rc;
}

static int publish(amqp_bus *b, const char *exchange, const char *rk, const char *body, size_t len,
                   amqp_table_t headers)
{
	int rc = ready(b);
	if (rc != AIQ_OK)
		return rc;
	conn_link *l = &b->link.ctl;
	amqp_basic_properties_t p;
	memset(&p, 0, sizeof p);
	p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
	           AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
	           AMQP_BASIC_PRIORITY_FLAG;
	p.content_type = amqp_cstring_bytes("application/json");
	p.content_encoding = amqp_cstring_bytes("utf-8");
	p.headers = headers;
	p.delivery_mode = 1;
	p.priority = 0;
	amqp_bytes_t bytes = {len, (void *)(uintptr_t)body};
	int st = amqp_basic_publish(l->conn, CH_MAIN, amqp_cstring_bytes(exchange),
	                            amqp_cstring_bytes(rk), 0, 0, &p, bytes);
	if (st != AMQP_STATUS_OK) {
		rc = aiq__err(AIQ_EBROKER, "publishing to '%s' failed: %s", exchange,
		              amqp_error_string2(st));
		lost(b, aiq_error_last());
	}
	return rc;
}

static int bus_publish_event(aiq__bus *base, const char *rk, const char *body, size_t len,
                             const char *hostname)
{
	amqp_table_entry_t h[1];
	h[0].key = amqp_cstring_bytes("hostname");
	h[0].value.kind = AMQP_FIELD_KIND_UTF8;
	h[0].value.value.bytes = amqp_cstring_bytes(hostname);
	amqp_table_t headers = {1, h};
	return publish((amqp_bus *)base, EVENT_EXCHANGE, rk, body, len, headers);
}

static int bus_reply(aiq__bus *base, const char *exchange, const char *rk, const char *body,
                     size_t len, const char *ticket, int64_t clock)
{
	amqp_table_entry_t h[2];
	int n = 0;
	if (ticket) {
		h[n].key = amqp_cstring_bytes("ticket");
		h[n].value.kind = AMQP_FIELD_KIND_UTF8;
		h[n].value.value.bytes = amqp_cstring_bytes(ticket);
		n++;
	}
	h[n].key = amqp_cstring_bytes("clock");
	if (clock >= INT32_MIN && clock <= INT32_MAX) {
		h[n].value.kind = AMQP_FIELD_KIND_I32;
		h[n].value.value.i32 = (int32_t)clock;
	} else {
		h[n].value.kind = AMQP_FIELD_KIND_I64;
		h[n].value.value.i64 = clock;
	}
	n++;
	amqp_table_t headers = {n, h};
	return publish((amqp_bus *)base, exchange, rk, body, len, headers);
}

static int bus_listen(aiq__bus *base, const char *nodename)
{
	amqp_bus *b = (amqp_bus *)base;
	free(b->node);
	if (!(b->node = aiq__strdup(nodename)))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	b->listen_gen = 0;
	return ready(b);
}

static int bus_listen_events(aiq__bus *base)
{
	amqp_bus *b = (amqp_bus *)base;
	char id[37];
	aiq__uuid4(id);
	free(b->node);
	free(b->events_queue);
	b->node = aiq__strdup("");
	b->events_queue = aiq__asprintf("celeryev.%s", id);
	if (!b->node || !b->events_queue)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	b->listen_gen = 0;
	return ready(b);
}

static int64_t header_clock(const amqp_basic_properties_t *p)
{
	if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
		return 0;
	for (int i = 0; i < p->headers.num_entries; i++) {
		const amqp_table_entry_t *e = &p->headers.entries[i];
		if (e->key.len != 5 || memcmp(e->key.bytes, "clock", 5) != 0)
			continue;
		switch (e->value.kind) {
		case AMQP_FIELD_KIND_I8: return e->value.value.i8;
		case AMQP_FIELD_KIND_U8: return e->value.value.u8;
		case AMQP_FIELD_KIND_I16: return e->value.value.i16;
		case AMQP_FIELD_KIND_U16: return e->value.value.u16;
		case AMQP_FIELD_KIND_I32: return e->value.value.i32;
		case AMQP_FIELD_KIND_U32: return e->value.value.u32;
		case AMQP_FIELD_KIND_I64: return e->value.value.i64;
		case AMQP_FIELD_KIND_U64: return (int64_t)e->value.value.u64;
		default: return 0;
		}
	}
	return 0;
}

static int bus_fetch(aiq__bus *base, char **body, int64_t *clock, int64_t timeout_ms)
{
	amqp_bus *b = (amqp_bus *)base;
	if (b->node == NULL)
		return aiq__err(AIQ_ESTATE, "the bus is not listening");
	int rc = ready(b);
	if (rc != AIQ_OK) {
		/* Reconnecting: wait as a fetch would, then let the caller loop. */
		struct timespec ts = aiq__timespec_ms(timeout_ms > 0 ? timeout_ms : 0);
		nanosleep(&ts, NULL);
		return aiq__err(AIQ_ETIMEDOUT, "reconnecting to RabbitMQ");
	}
	conn_link *l = &b->link.ctl;
	amqp_maybe_release_buffers(l->conn);
	amqp_envelope_t env;
	struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
	amqp_rpc_reply_t r = amqp_consume_message(l->conn, &env, &tv, 0);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		rc = AIQ_OK;
		if (env.message.body.len > MAX_REQUEST_SIZE) {
			rc = aiq__err(AIQ_EPROTO, "control request of %zu bytes refused",
			              env.message.body.len);
		} else {
			*body = aiq__amqp_dup_bytes(env.message.body);
			*clock = header_clock(&env.message.properties);
			if (*body == NULL)
				rc = aiq__err(AIQ_ENOMEM, "out of memory");
		}
		amqp_destroy_envelope(&env);
		return rc;
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
	    r.library_error == AMQP_STATUS_TIMEOUT)
		return aiq__err(AIQ_ETIMEDOUT, "no control request");
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
	    r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
		/* A frame that is not a delivery (a close, a stray method). */
		amqp_frame_t f;
		char why[MAX_ERRTEXT];
		if (aiq__amqp_read_frame(l, &f, 0, why, sizeof why) == AIQ__AMQP_READ_LOST)
			lost(b, why);
		return aiq__err(AIQ_ETIMEDOUT, "no control request");
	}
	char t[MAX_ERRTEXT];
	aiq__amqp_reply_text(t, sizeof t, r);
	lost(b, t);
	return aiq__err(AIQ_ETIMEDOUT, "reconnecting to RabbitMQ");
}

static void bus_close(aiq__bus *base)
{
	amqp_bus *b = (amqp_bus *)base;
	if (b == NULL)
		return;
	aiq__amqp_link_drop(&b->link.ctl, true);
	aiq__amqp_settings_clear(&b->link.set);
	free(b->node);
	free(b->events_queue);
	free(b);
}

int aiq__amqp_bus_open(aiq__bus **out, const char *url, const aiq_config *cfg)
{
	amqp_bus *b = calloc(1, sizeof *b);
	if (b == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	b->base.ops = &aiq__amqp_bus_ops;
	b->link.base.ops = &aiq__amqp_broker_ops;
	int rc = aiq__amqp_settings_init(&b->link.set, url, cfg);
	if (rc == AIQ_OK)
		rc = ready(b);
	if (rc != AIQ_OK) {
		bus_close(&b->base);
		return rc;
	}
	*out = &b->base;
	return AIQ_OK;
}

const aiq__bus_ops aiq__amqp_bus_ops = {
        .close = bus_close,
        .publish_event = bus_publish_event,
        .listen = bus_listen,
        .listen_events = bus_listen_events,
        .fetch = bus_fetch,
        .reply = bus_reply,
};
