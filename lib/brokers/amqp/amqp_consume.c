/*
 * Consuming: basic.consume, deliveries, acks, rejects, dead letters, and
 * deliveries that went stale across a reconnect.
 */
#include "amqp_int.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SETTLED_KEEP_MS (10 * 60 * 1000)
/* How long a waiting fetch goes without looking at the wakeup flag. */
#define WAKE_SLICE_MS 50

/* ---- consuming ------------------------------------------------------------ */

/* Declare a consumed queue on link l as it was asked for. */
static int declare_consumed(amqp_broker *b, conn_link *l, const consumed_queue *q)
{
	if (q->exchange == NULL && q->exchange_type == NULL && q->routing_key == NULL)
		return aiq__amqp_declare_work_queue(b, l, q->name);
	return aiq__amqp_declare_bound_queue(b, l, q->name, q->exchange ? q->exchange : q->name,
	                                     q->exchange_type ? q->exchange_type : "direct",
	                                     q->routing_key ? q->routing_key : q->name);
}

/* basic.consume with a tag of our own, so a delivery names its queue and a
 * cancelled consumer's late deliveries are recognised. */
static int consume_one(amqp_broker *b, conn_link *l, consumed_queue *q)
{
	char what[300];
	snprintf(q->tag, sizeof q->tag, "aiq.%llu", (unsigned long long)++b->next_ctag);
	snprintf(what, sizeof what, "consuming queue '%.200s'", q->name);
	amqp_basic_consume(l->conn, CH_MAIN, aiq__amqp_bytes(q->name), aiq__amqp_bytes(q->tag), 0,
	                   0, 0, amqp_empty_table);
	int rc = aiq__amqp_rpc_check(l, CH_MAIN, what);
	if (rc != AIQ_OK)
		q->tag[0] = '\0';
	return rc;
}

static int start_consuming(amqp_broker *b)
{
	conn_link *l = &b->cons;
	for (size_t i = 0; i < b->nqueues; i++) {
		b->queues[i].tag[0] = '\0';
		int rc = declare_consumed(b, l, &b->queues[i]);
		if (rc != AIQ_OK)
			return rc;
	}
	/* Per consumer (global=false): what quorum queues support. */
	amqp_basic_qos(l->conn, CH_MAIN, 0, (uint16_t)(b->prefetch > 65535 ? 65535 : b->prefetch),
	               0);
	int rc = aiq__amqp_rpc_check(l, CH_MAIN, "setting the prefetch (basic.qos)");
	for (size_t i = 0; rc == AIQ_OK && i < b->nqueues; i++)
		rc = consume_one(b, l, &b->queues[i]);
	return rc;
}

static void queue_clear(consumed_queue *q)
{
	free(q->name);
	free(q->exchange);
	free(q->exchange_type);
	free(q->routing_key);
	memset(q, 0, sizeof *q);
}

void aiq__amqp_queues_free(amqp_broker *b)
{
	for (size_t i = 0; i < b->nqueues; i++)
		queue_clear(&b->queues[i]);
	free(b->queues);
	b->queues = NULL;
	b->nqueues = 0;
}

int aiq__amqp_consume(aiq__broker *base, const char *const *queues, size_t nqueues,
                      unsigned prefetch)
{
	amqp_broker *b = (amqp_broker *)base;
	if (queues == NULL || nqueues == 0)
		return aiq__err(AIQ_EINVAL, "consume needs at least one queue");
	if (b->consuming)
		return aiq__err(AIQ_ESTATE, "this broker handle is already consuming");
	aiq__amqp_queues_free(b);
	b->queues = calloc(nqueues, sizeof *b->queues);
	if (b->queues == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; i < nqueues; i++) {
		if (queues[i] == NULL || *queues[i] == '\0' || strlen(queues[i]) > 200)
			return aiq__err(AIQ_EINVAL, "invalid queue name");
		if (!(b->queues[i].name = aiq__strdup(queues[i])))
			return aiq__err(AIQ_ENOMEM, "out of memory");
		b->nqueues = i + 1;
	}
	b->prefetch = prefetch ? prefetch : 65535;
	/* The first connection must work: a wrong URL or password is reported
	 * now, not retried forever in fetch(). */
	bool auth = false;
	int rc = aiq__amqp_link_connect(b, &b->cons, &auth);
	if (rc == AIQ_OK) {
		rc = start_consuming(b);
		if (rc != AIQ_OK)
			aiq__amqp_link_drop(&b->cons, false);
	}
	if (rc != AIQ_OK)
		return rc;
	b->consuming = true;
	return AIQ_OK;
}

static bool dup_opt(char **out, const char *s)
{
	*out = NULL;
	return s == NULL || *s == '\0' || (*out = aiq__strdup(s)) != NULL;
}

/* The queue is declared on the control link: a refused declaration
 * (PRECONDITION_FAILED closes the channel) costs that link's channel, never
 * the consumers of the consumer link. */
int aiq__amqp_add_queue(aiq__broker *base, const char *queue, const aiq__queue_binding *bind)
{
	amqp_broker *b = (amqp_broker *)base;
	if (!b->consuming)
		return aiq__err(AIQ_ESTATE, "add_queue before consume");
	if (strlen(queue) > 200)
		return aiq__err(AIQ_EINVAL, "invalid queue name");
	for (size_t i = 0; i < b->nqueues; i++)
		if (strcmp(b->queues[i].name, queue) == 0)
			return AIQ_OK;
	consumed_queue q;
	memset(&q, 0, sizeof q);
	if (!dup_opt(&q.name, queue) || !dup_opt(&q.exchange, bind->exchange) ||
	    !dup_opt(&q.exchange_type, bind->exchange_type) ||
	    !dup_opt(&q.routing_key, bind->routing_key)) {
		queue_clear(&q);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	int rc = aiq__amqp_ctl_ready(b);
	if (rc == AIQ_OK)
		rc = declare_consumed(b, &b->ctl, &q);
	consumed_queue *v = rc == AIQ_OK ? realloc(b->queues, (b->nqueues + 1) * sizeof *v) : NULL;
	if (rc == AIQ_OK && v == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc != AIQ_OK) {
		queue_clear(&q);
		return rc;
	}
	b->queues = v;
	conn_link *l = &b->cons;
	if (l->up && (rc = consume_one(b, l, &q)) != AIQ_OK) {
		/* The server closed the channel, and with it every consumer on
		 * it: start over without this queue. */
		char why[MAX_ERRTEXT];
		snprintf(why, sizeof why, "%s", aiq_error_last());
		aiq__amqp_cons_lost(b, why);
		queue_clear(&q);
		return aiq__err(rc, "%s", why);
	}
	/* Down: the reconnect declares and consumes it with the others. */
	b->queues[b->nqueues++] = q;
	return AIQ_OK;
}

int aiq__amqp_cancel_queue(aiq__broker *base, const char *queue)
{
	amqp_broker *b = (amqp_broker *)base;
	size_t i = 0;
	while (i < b->nqueues && strcmp(b->queues[i].name, queue) != 0)
		i++;
	if (i == b->nqueues)
		return AIQ_OK;
	conn_link *l = &b->cons;
	if (l->up && b->queues[i].tag[0]) {
		/* Deliveries sent before the cancel-ok are still read (librabbitmq
		 * keeps them while it waits); take_delivery() rejects them back
		 * to the queue, their tag being unknown by then. */
		amqp_basic_cancel(l->conn, CH_MAIN, aiq__amqp_bytes(b->queues[i].tag));
		char what[300];
		snprintf(what, sizeof what, "cancelling the consumer of '%.200s'", queue);
		if (aiq__amqp_rpc_check(l, CH_MAIN, what) != AIQ_OK)
			aiq__amqp_cons_lost(b, aiq_error_last()); /* resumes without it */
	}
	queue_clear(&b->queues[i]);
	memmove(b->queues + i, b->queues + i + 1, (b->nqueues - i - 1) * sizeof *b->queues);
	b->nqueues--;
	return AIQ_OK;
}

static track *track_find(amqp_broker *b, uint64_t seq, track ***prevp)
{
	track **pp = &b->tracks;
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->seq == seq) {
			if (prevp)
				*prevp = pp;
			return *pp;
		}
	}
	return NULL;
}

static void track_unlink(track **pp)
{
	track *t = *pp;
	*pp = t->next;
	free(t->id);
	free(t);
}

/* Forget settled stale deliveries whose redelivery never came back to us
 * (another consumer took it, or it was purged). */
static void tracks_gc(amqp_broker *b)
{
	int64_t now = aiq__mono_ms();
	track **pp = &b->tracks;
	while (*pp) {
		if ((*pp)->settled != SETTLE_NONE && now - (*pp)->settled_at > SETTLED_KEEP_MS)
			track_unlink(pp);
		else
			pp = &(*pp)->next;
	}
}
/* Headers the broker adds when it dead-letters (our delay queues). */
static void strip_death_headers(json_t *h)
{
	if (!json_is_object(h))
		return;
	static const char *const names[] = {
	        "x-death",
	        "x-first-death-exchange",
	        "x-first-death-queue",
	        "x-first-death-reason",
	        "x-last-death-exchange",
	        "x-last-death-queue",
	        "x-last-death-reason",
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		json_object_del(h, names[i]);
}

/* The properties of an undecodable delivery exactly as received, so its dead
 * letter carries the original bytes (a JSON form would have to alter them). */
typedef struct raw_props {
	amqp_pool_t pool;
	amqp_basic_properties_t p;
} raw_props;

static void raw_props_free(void *data)
{
	raw_props *r = data;
	if (r == NULL)
		return;
	empty_amqp_pool(&r->pool);
	free(r);
}

static bool pool_dup(amqp_bytes_t *dst, amqp_bytes_t src, amqp_pool_t *pool)
{
	*dst = amqp_empty_bytes;
	if (src.len == 0)
		return true;
	amqp_pool_alloc_bytes(pool, src.len, dst);
	if (dst->bytes == NULL)
		return false;
	memcpy(dst->bytes, src.bytes, src.len);
	return true;
}

static raw_props *raw_props_clone(const amqp_basic_properties_t *src)
{
	raw_props *r = calloc(1, sizeof *r);
	if (r == NULL)
		return NULL;
	init_amqp_pool(&r->pool, 4096);
	r->p = *src;
	bool ok = true;
#define DUP(flag, field)                                                                           \
	if (ok && (src->_flags & (flag)))                                                          \
		ok = pool_dup(&r->p.field, src->field, &r->pool);
	DUP(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type)
	DUP(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding)
	DUP(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id)
	DUP(AMQP_BASIC_REPLY_TO_FLAG, reply_to)
	DUP(AMQP_BASIC_EXPIRATION_FLAG, expiration)
	DUP(AMQP_BASIC_MESSAGE_ID_FLAG, message_id)
	DUP(AMQP_BASIC_TYPE_FLAG, type)
	DUP(AMQP_BASIC_USER_ID_FLAG, user_id)
	DUP(AMQP_BASIC_APP_ID_FLAG, app_id)
	DUP(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id)
#undef DUP
	r->p.headers = amqp_empty_table;
	if (ok && (src->_flags & AMQP_BASIC_HEADERS_FLAG))
		ok = amqp_table_clone(&src->headers, &r->p.headers, &r->pool) == AMQP_STATUS_OK;
	if (!ok) {
		raw_props_free(r);
		return NULL;
	}
	return r;
}

/* Set pr[key] to a string property. Bytes JSON cannot hold (not UTF-8, or
 * a NUL) are replaced by '?', and `first` (when still empty) says which
 * property it was. AIQ_ENOMEM only. */
static int property_to_json(json_t *pr, const char *key, amqp_bytes_t b, char *first,
                            size_t firstsz)
{
	char *s = malloc(b.len + 1);
	if (s == NULL)
		return AIQ_ENOMEM;
	if (b.len)
		memcpy(s, b.bytes, b.len);
	s[b.len] = '\0';
	bool clean = strlen(s) == b.len && aiq__utf8_valid(s, b.len);
	if (!clean) {
		if (first[0] == '\0')
			snprintf(first, firstsz,
			         "AMQP property '%s' is not valid UTF-8 text (%zu bytes)", key,
			         b.len);
		for (size_t i = 0; i < b.len; i++)
			if (s[i] == '\0')
				s[i] = '?';
	}
	json_t *v = clean ? json_string(s) : aiq__json_string_lossy(s);
	free(s);
	return v != NULL && json_object_set_new(pr, key, v) == 0 ? AIQ_OK : AIQ_ENOMEM;
}

/* Decode a delivery into *w. Anything the message itself gets wrong (header
 * table or a string property that JSON cannot hold) is not an error: *why
 * receives the reason, the field is kept in a lossy form, and the worker
 * dead-letters the delivery. Only AIQ_ENOMEM is returned as an error. */
static int wire_from_message(aiq__wire *w, const amqp_message_t *m, char **why)
{
	memset(w, 0, sizeof *w);
	*why = NULL;
	const amqp_basic_properties_t *p = &m->properties;
	int rc = AIQ_OK;
	char first[400] = "";
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		if (aiq__amqp_table_to_json(&w->headers, &p->headers) != AIQ_OK) {
			snprintf(first, sizeof first, "%s", aiq_error_last());
			w->headers = json_object();
		}
	} else {
		w->headers = json_object();
	}
	strip_death_headers(w->headers);
	w->properties = json_object();
	if (w->headers == NULL || w->properties == NULL)
		rc = AIQ_ENOMEM;
	json_t *pr = w->properties;
	/* A property with bytes JSON cannot hold (not UTF-8, or NUL) is kept
	 * in a lossy form and marks the delivery undecodable. */
#define PSTR(flag, field, key)                                                                     \
	if (rc == AIQ_OK && (p->_flags & (flag)))                                                  \
		rc = property_to_json(pr, key, p->field, first, sizeof first);
	PSTR(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id, "correlation_id")
	PSTR(AMQP_BASIC_REPLY_TO_FLAG, reply_to, "reply_to")
	PSTR(AMQP_BASIC_EXPIRATION_FLAG, expiration, "expiration")
	PSTR(AMQP_BASIC_MESSAGE_ID_FLAG, message_id, "message_id")
	PSTR(AMQP_BASIC_TYPE_FLAG, type, "type")
	PSTR(AMQP_BASIC_USER_ID_FLAG, user_id, "user_id")
	PSTR(AMQP_BASIC_APP_ID_FLAG, app_id, "app_id")
#undef PSTR
	if (rc == AIQ_OK)
		json_object_set_new(pr, "delivery_mode",
		                    json_integer((p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
		                                         ? p->delivery_mode
		                                         : 1));
	if (rc == AIQ_OK)
		json_object_set_new(
		        pr, "priority",
		        json_integer((p->_flags & AMQP_BASIC_PRIORITY_FLAG) ? p->priority : 0));
	if (rc == AIQ_OK && (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG))
		json_object_set_new(pr, "timestamp", json_integer((json_int_t)p->timestamp));
	if (rc == AIQ_OK && (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) &&
	    !(w->content_type = aiq__amqp_dup_bytes(p->content_type)))
		rc = AIQ_ENOMEM;
	if (rc == AIQ_OK && (p->_flags & AMQP_BASIC_CONTENT_ENCODING_FLAG) &&
	    !(w->content_encoding = aiq__amqp_dup_bytes(p->content_encoding)))
		rc = AIQ_ENOMEM;
	/* A NUL would cut "application/json\0..." to a type it is not. */
	if (rc == AIQ_OK && first[0] == '\0' &&
	    ((w->content_type && strlen(w->content_type) != p->content_type.len) ||
	     (w->content_encoding && strlen(w->content_encoding) != p->content_encoding.len)))
		snprintf(first, sizeof first, "AMQP property '%s' contains a NUL byte",
		         w->content_type && strlen(w->content_type) != p->content_type.len
		                 ? "content_type"
		                 : "content_encoding");
	if (rc == AIQ_OK) {
		w->body_len = m->body.len;
		w->body = malloc(m->body.len ? m->body.len : 1);
		if (w->body == NULL)
			rc = AIQ_ENOMEM;
		else if (m->body.len)
			memcpy(w->body, m->body.bytes, m->body.len);
	}
	if (rc == AIQ_OK && first[0] != '\0' && (*why = aiq__strdup(first)) == NULL)
		rc = AIQ_ENOMEM;
	if (rc != AIQ_OK) {
		aiq__wire_clear(w);
		return aiq__err(AIQ_ENOMEM, "out of memory receiving a message");
	}
	return AIQ_OK;
}

static const char *header_id(const aiq__wire *w, json_int_t *retries)
{
	*retries = 0;
	const json_t *id = json_object_get(w->headers, "id");
	const json_t *r = json_object_get(w->headers, "retries");
	if (json_is_integer(r))
		*retries = json_integer_value(r);
	return json_is_string(id) ? json_string_value(id) : NULL;
}

/* A redelivery of a stale delivery we still track: hold it back or settle it.
 * Returns true when the delivery was absorbed. */
static bool absorb_redelivery(amqp_broker *b, const amqp_basic_deliver_t *env, const aiq__wire *w)
{
	if (!env->redelivered)
		return false;
	json_int_t retries;
	const char *id = header_id(w, &retries);
	if (id == NULL)
		return false;
	conn_link *l = &b->cons;
	for (track **pp = &b->tracks; *pp; pp = &(*pp)->next) {
		track *t = *pp;
		if (t->gen == l->gen || t->shadow_gen == l->gen || t->id == NULL ||
		    t->retries != retries || strcmp(t->id, id) != 0)
			continue;
		if (t->settled == SETTLE_ACK || t->settled == SETTLE_DROP) {
			bool ack = t->settled == SETTLE_ACK;
			aiq__log(AIQ_LOG_WARNING,
			         "amqp: task %s came back after it had finished here; %s the "
			         "redelivery",
			         id, ack ? "acknowledging" : "rejecting");
			if (ack)
				amqp_basic_ack(l->conn, CH_MAIN, env->delivery_tag, 0);
			else
				amqp_basic_reject(l->conn, CH_MAIN, env->delivery_tag, 0);
			track_unlink(pp);
			return true;
		}
		aiq__log(AIQ_LOG_WARNING,
		         "amqp: task %s was redelivered while it still runs here (consumer_timeout "
		         "or a reconnect); holding the redelivery until it finishes",
		         id);
		t->shadow_gen = l->gen;
		t->shadow_tag = env->delivery_tag;
		return true;
	}
	return false;
}

/* A basic.deliver just read on the consumer link: read its content and
 * decode it. Returns AIQ_OK with *out set, AIQ_OK with *out NULL when the
 * delivery was absorbed (a held redelivery), AIQ_ENOMEM (the message went
 * back to the queue), or AIQ_EBROKER when the link failed (*why set). */
static int take_delivery(amqp_broker *b, const amqp_frame_t *f, aiq__delivery **out, char *why,
                         size_t whysz)
{
	conn_link *l = &b->cons;
	*out = NULL;
	/* The method lives in the connection's pool, which reading the content
	 * keeps: copy what is needed first. */
	amqp_basic_deliver_t env = *(const amqp_basic_deliver_t *)f->payload.method.decoded;
	char *rk = aiq__amqp_dup_bytes(env.routing_key);
	amqp_message_t m;
	amqp_rpc_reply_t r = amqp_read_message(l->conn, f->channel, &m, 0);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		char t[MAX_ERRTEXT];
		aiq__amqp_reply_text(t, sizeof t, r);
		snprintf(why, whysz, "reading a delivery failed: %.200s", t);
		free(rk);
		return AIQ_EBROKER;
	}
	aiq__delivery *d = calloc(1, sizeof *d);
	track *t = calloc(1, sizeof *t);
	int rc = d && t && rk ? wire_from_message(&d->wire, &m, &d->undecodable) : AIQ_ENOMEM;
	if (rc == AIQ_OK && d->undecodable) {
		aiq__log(AIQ_LOG_WARNING, "amqp: undecodable delivery on '%s': %s", rk,
		         d->undecodable);
		d->driver_data = raw_props_clone(&m.properties);
		d->driver_free = raw_props_free;
		if (d->driver_data == NULL)
			rc = AIQ_ENOMEM;
	}
	amqp_destroy_message(&m);
	if (rc == AIQ_OK && absorb_redelivery(b, &env, &d->wire)) {
		aiq__delivery_free(d);
		free(t);
		free(rk);
		return AIQ_OK;
	}
	if (rc == AIQ_OK) {
		d->queue = rk;
		rk = NULL;
		json_int_t retries;
		const char *id = header_id(&d->wire, &retries);
		t->id = id ? aiq__strdup(id) : NULL;
		if (id && !t->id)
			rc = AIQ_ENOMEM;
		t->retries = retries;
	}
	if (rc != AIQ_OK) {
		/* Out of memory: give it back rather than lose it, and let the
		 * worker try again later (not an error of the connection). */
		amqp_basic_reject(l->conn, CH_MAIN, env.delivery_tag, 1);
		aiq__delivery_free(d);
		if (t)
			free(t->id);
		free(t);
		free(rk);
		aiq__log(AIQ_LOG_WARNING, "amqp: out of memory receiving a message; it "
		                          "went back to the queue");
		return AIQ_ENOMEM;
	}
	/* The consumer tag names the queue. A tag we no longer know is a
	 * cancelled consumer's: its late delivery goes back to the queue. */
	const consumed_queue *from = NULL;
	for (size_t i = 0; i < b->nqueues && !from; i++)
		if (b->queues[i].tag[0] && strlen(b->queues[i].tag) == env.consumer_tag.len &&
		    memcmp(b->queues[i].tag, env.consumer_tag.bytes, env.consumer_tag.len) == 0)
			from = &b->queues[i];
	char *qname = from ? aiq__strdup(from->name) : NULL;
	if (from == NULL || qname == NULL) {
		if (from == NULL)
			aiq__log(
			        AIQ_LOG_INFO,
			        "amqp: a delivery from '%s' came after its consumer was cancelled; "
			        "it goes back to the queue",
			        d->queue);
		amqp_basic_reject(l->conn, CH_MAIN, env.delivery_tag, 1);
		aiq__delivery_free(d);
		free(t->id);
		free(t);
		return from == NULL ? AIQ_OK : AIQ_ENOMEM;
	}
	free(d->queue);
	d->queue = qname;
	d->redelivered = env.redelivered != 0;
	t->seq = ++b->next_seq;
	t->gen = l->gen;
	t->amqp_tag = env.delivery_tag;
	t->next = b->tracks;
	b->tracks = t;
	d->tag = t->seq;
	*out = d;
	return AIQ_OK;
}

int aiq__amqp_fetch_batch(aiq__broker *base, aiq__delivery **out, size_t max, size_t *n,
                          int64_t timeout_ms)
{
	amqp_broker *b = (amqp_broker *)base;
	if (n == NULL || out == NULL || max == 0)
		return aiq__err(AIQ_EINVAL, "fetch needs room for a delivery");
	*n = 0;
	if (!b->consuming)
		return aiq__err(AIQ_ESTATE, "fetch before consume");
	if (atomic_exchange(&b->wake, false))
		return aiq__err(AIQ_ETIMEDOUT, "woken up");
	conn_link *l = &b->cons;
	int64_t deadline = aiq__mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	tracks_gc(b);
	while (*n < max) {
		if (!l->up) {
			if (*n > 0)
				break; /* the error shows on the next call */
			int rc = aiq__amqp_cons_ensure(b, start_consuming);
			if (rc != AIQ_OK)
				return rc;
		}
		/* Frees the previous delivery's frames (kept while frames are
		 * still queued, so a batch does not pay for it each time). */
		amqp_maybe_release_buffers(l->conn);
		/* Wait for the first, in slices so a wakeup() ends the wait;
		 * after it, only what the socket holds. */
		int64_t left = *n == 0 ? deadline - aiq__mono_ms() : 0;
		if (left > WAKE_SLICE_MS)
			left = WAKE_SLICE_MS;
		amqp_frame_t f;
		char why[MAX_ERRTEXT];
		enum aiq__amqp_read r = aiq__amqp_read_frame(l, &f, left, why, sizeof why);
		if (r == AIQ__AMQP_READ_TIMEOUT) {
			if (*n > 0 || aiq__mono_ms() >= deadline)
				break;
			if (atomic_exchange(&b->wake, false))
				return aiq__err(AIQ_ETIMEDOUT, "woken up");
			continue;
		}
		if (r == AIQ__AMQP_READ_LOST) {
			aiq__amqp_cons_lost(b, why);
		} else if (f.frame_type == AMQP_FRAME_METHOD &&
		           f.payload.method.id == AMQP_BASIC_DELIVER_METHOD) {
			aiq__delivery *d;
			int rc = take_delivery(b, &f, &d, why, sizeof why);
			if (rc == AIQ_EBROKER)
				aiq__amqp_cons_lost(b, why);
			else if (rc == AIQ_ENOMEM && *n == 0)
				return aiq__err(AIQ_ETIMEDOUT, "out of memory receiving a message");
			else if (rc == AIQ_ENOMEM)
				break;
			else if (d)
				out[(*n)++] = d;
		} else if (f.frame_type == AMQP_FRAME_METHOD &&
		           f.payload.method.id == AMQP_BASIC_CANCEL_METHOD) {
			/* The queue was deleted: redeclare and consume again. */
			aiq__amqp_cons_lost(b, "the server cancelled the consumer");
		}
		if (*n == 0 && aiq__mono_ms() >= deadline)
			break;
	}
	return *n > 0 ? AIQ_OK : aiq__err(AIQ_ETIMEDOUT, "no message");
}

int aiq__amqp_fetch(aiq__broker *base, aiq__delivery **out, int64_t timeout_ms)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	size_t n;
	return aiq__amqp_fetch_batch(base, out, 1, &n, timeout_ms);
}

/* Settle a tracked delivery: ack (requeue ignored) or reject. */
static int settle(amqp_broker *b, aiq__delivery *d, bool ack, bool requeue)
{
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "no delivery");
	track **pp = NULL;
	track *t = track_find(b, d->tag, &pp);
	if (t == NULL)
		return aiq__err(AIQ_EINVAL, "unknown or already settled delivery");
	conn_link *l = &b->cons;
	const char *verb = ack ? "ack" : requeue ? "requeue" : "reject";
	if (l->up && t->gen == l->gen) {
		int st = ack ? amqp_basic_ack(l->conn, CH_MAIN, t->amqp_tag, 0)
		             : amqp_basic_reject(l->conn, CH_MAIN, t->amqp_tag, requeue);
		if (st == AMQP_STATUS_OK) {
			track_unlink(pp);
			return AIQ_OK;
		}
		aiq__amqp_cons_lost(b, amqp_error_string2(st));
		/* fall through: the delivery is stale now */
	}
	if (t->shadow_gen != 0 && l->up && t->shadow_gen == l->gen) {
		aiq__log(AIQ_LOG_WARNING,
		         "amqp: %s of task %s applies to its held redelivery (the original "
		         "delivery was on a closed channel)",
		         verb, t->id ? t->id : "?");
		if (ack)
			amqp_basic_ack(l->conn, CH_MAIN, t->shadow_tag, 0);
		else
			amqp_basic_reject(l->conn, CH_MAIN, t->shadow_tag, requeue);
		track_unlink(pp);
		return AIQ_OK;
	}
	if (!ack && requeue) {
		/* The broker requeued it already. */
		track_unlink(pp);
		return AIQ_OK;
	}
	aiq__log(AIQ_LOG_WARNING,
	         "amqp: %s of task %s came after its channel closed; RabbitMQ requeued it, and "
	         "its redelivery to this consumer will be %s",
	         verb, t->id ? t->id : "?", ack ? "acknowledged" : "rejected");
	if (t->id == NULL) {
		track_unlink(pp); /* cannot be matched: it will run again */
		return AIQ_OK;
	}
	t->settled = ack ? SETTLE_ACK : SETTLE_DROP;
	t->settled_at = aiq__mono_ms();
	t->shadow_gen = 0;
	return AIQ_OK;
}

int aiq__amqp_ack(aiq__broker *base, aiq__delivery *d)
{
	return settle((amqp_broker *)base, d, true, false);
}

int aiq__amqp_reject(aiq__broker *base, aiq__delivery *d, bool requeue)
{
	return settle((amqp_broker *)base, d, false, requeue);
}

/* ---- batched acks ------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Hold small writes back so a batch of acks leaves in as few segments as
 * the socket allows (TLS too: it runs over the same descriptor). */
static void cork(conn_link *l, int on)
{
	int fd = amqp_get_sockfd(l->conn);
	if (fd >= 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
}

/* Every tag this channel holds unacknowledged: the tracked deliveries of
 * the current link and the redeliveries held back for stale ones. `multiple`
 * may only cover tags all of which are in the batch. Sorted; *n entries. */
static uint64_t *outstanding_tags(amqp_broker *b, size_t *n)
{
	conn_link *l = &b->cons;
	size_t count = 0;
	for (track *t = b->tracks; t; t = t->next)
		count += (t->gen == l->gen) + (t->shadow_gen != 0 && t->shadow_gen == l->gen);
	uint64_t *v = malloc((count ? count : 1) * sizeof *v);
	if (v == NULL)
		return NULL;
	size_t k = 0;
	for (track *t = b->tracks; t; t = t->next) {
		if (t->gen == l->gen)
			v[k++] = t->amqp_tag;
		if (t->shadow_gen != 0 && t->shadow_gen == l->gen)
			v[k++] = t->shadow_tag;
	}
	qsort(v, k, sizeof *v, cmp_u64);
	*n = k;
	return v;
}

int aiq__amqp_ack_batch(aiq__broker *base, aiq__delivery *const *ds, size_t n)
{
	amqp_broker *b = (amqp_broker *)base;
	conn_link *l = &b->cons;
	if (ds == NULL && n > 0)
		return aiq__err(AIQ_EINVAL, "no deliveries");
	int first = AIQ_OK;
	char firstwhy[MAX_ERRTEXT] = "";
	/* Deliveries of the current channel; the others (stale, unknown) go
	 * through settle(), which never sends their tags on this channel. */
	track **cur = calloc(n ? n : 1, sizeof *cur);
	if (cur == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	size_t ncur = 0;
	for (size_t i = 0; i < n; i++) {
		track *t = ds[i] ? track_find(b, ds[i]->tag, NULL) : NULL;
		if (t && t->in_batch)
			t = NULL; /* twice in one batch */
		if (t && l->up && t->gen == l->gen) {
			t->in_batch = true;
			cur[ncur++] = t;
			continue;
		}
		int rc = t ? settle(b, ds[i], true, false)
		           : aiq__err(AIQ_EINVAL, "unknown or already settled delivery");
		if (rc != AIQ_OK && first == AIQ_OK) {
			first = rc;
			snprintf(firstwhy, sizeof firstwhy, "%s", aiq_error_last());
		}
	}
	size_t nout = 0;
	uint64_t *out = ncur && l->up ? outstanding_tags(b, &nout) : NULL;
	uint64_t *tags = ncur ? malloc(ncur * sizeof *tags) : NULL;
	if (ncur && (out == NULL || tags == NULL)) {
		/* No room to sort: one ack each is still right. */
		free(out);
		free(tags);
		out = tags = NULL;
		nout = 0;
	}
	int st = AMQP_STATUS_OK;
	if (ncur && l->up) {
		/* The longest run of the oldest outstanding tags that are all in
		 * the batch goes as one ack with multiple=true (when it holds two
		 * or more); every other tag is acked alone. */
		size_t run = 0;
		if (tags) {
			for (size_t i = 0; i < ncur; i++)
				tags[i] = cur[i]->amqp_tag;
			qsort(tags, ncur, sizeof *tags, cmp_u64);
			while (run < ncur && run < nout && tags[run] == out[run])
				run++;
			if (run < 2)
				run = 0;
		}
		cork(l, 1);
		if (run) {
			st = amqp_basic_ack(l->conn, CH_MAIN, tags[run - 1], 1);
			b->batch_acks++;
			b->batch_acks_multiple++;
		}
		for (size_t i = run; st == AMQP_STATUS_OK && i < ncur; i++) {
			st = amqp_basic_ack(l->conn, CH_MAIN, tags ? tags[i] : cur[i]->amqp_tag, 0);
			b->batch_acks++;
		}
		cork(l, 0);
	}
	free(out);
	free(tags);
	if (st != AMQP_STATUS_OK) {
		/* Which acks reached the server is unknown: treat the lot as stale
		 * (their redeliveries are settled, as for any stale delivery). */
		aiq__amqp_cons_lost(b, amqp_error_string2(st));
	}
	for (size_t i = 0; i < ncur; i++) {
		cur[i]->in_batch = false;
		track **pp = NULL;
		track *t = track_find(b, cur[i]->seq, &pp);
		aiq__delivery key = {.tag = t->seq};
		if (st == AMQP_STATUS_OK)
			track_unlink(pp);
		else
			(void)settle(b, &key, true, false);
	}
	free(cur);
	if (first != AIQ_OK)
		return aiq__err(first, "%s", firstwhy);
	return AIQ_OK;
}

void aiq__amqp_tracks_free(amqp_broker *b)
{
	while (b->tracks)
		track_unlink(&b->tracks);
}

/* Properties for the dead letter of an undecodable delivery: the received
 * ones, byte for byte, plus header x-aiq-dead-reason; without the
 * per-message TTL, which would expire the dead letter, and without user_id,
 * which RabbitMQ refuses unless it names the publishing connection's user. */
static int raw_dead_props(amqp_basic_properties_t *out, const raw_props *raw, const char *reason,
                          amqp_pool_t *pool)
{
	*out = raw->p;
	out->_flags &= (amqp_flags_t) ~(AMQP_BASIC_EXPIRATION_FLAG | AMQP_BASIC_USER_ID_FLAG);
	out->_flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	out->delivery_mode = AMQP_DELIVERY_PERSISTENT;
	json_t *why = aiq__json_string_lossy(reason);
	const char *text = why ? json_string_value(why) : NULL;
	const amqp_table_t *h = &raw->p.headers;
	int n = (raw->p._flags & AMQP_BASIC_HEADERS_FLAG) ? h->num_entries : 0;
	amqp_table_entry_t *e = amqp_pool_alloc(pool, (size_t)(n + 1) * sizeof *e);
	amqp_bytes_t val = amqp_empty_bytes;
	if (e == NULL || text == NULL || !pool_dup(&val, amqp_cstring_bytes(text), pool)) {
		json_decref(why);
		return aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
	}
	json_decref(why);
	int k = 0;
	for (int i = 0; i < n; i++)
		if (!(h->entries[i].key.len == 17 &&
		      memcmp(h->entries[i].key.bytes, "x-aiq-dead-reason", 17) == 0))
			e[k++] = h->entries[i];
	e[k].key = amqp_cstring_bytes("x-aiq-dead-reason");
	e[k].value.kind = AMQP_FIELD_KIND_UTF8;
	e[k].value.value.bytes = val;
	out->headers.num_entries = k + 1;
	out->headers.entries = e;
	return AIQ_OK;
}

int aiq__amqp_dead_letter(aiq__broker *base, aiq__delivery *d, const char *reason)
{
	amqp_broker *b = (amqp_broker *)base;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "no delivery");
	char *dq = aiq__asprintf("%s" DEAD_SUFFIX, d->queue ? d->queue : "celery");
	if (dq == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	aiq__wire copy;
	int rc = aiq__wire_copy(&copy, &d->wire);
	if (rc == AIQ_OK) {
		if (copy.headers == NULL)
			copy.headers = json_object();
		json_t *why = aiq__json_string_lossy(reason);
		if (copy.headers == NULL || why == NULL ||
		    json_object_set_new(copy.headers, "x-aiq-dead-reason", why) != 0)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (rc == AIQ_OK) {
		/* publish_plain tries once more on a fresh connection: a duplicate
		 * dead letter is better than none. */
		amqp_pool_t pool;
		init_amqp_pool(&pool, 4096);
		amqp_basic_properties_t props;
		if (d->driver_free == raw_props_free && d->driver_data)
			rc = raw_dead_props(&props, d->driver_data, reason, &pool);
		else
			rc = aiq__amqp_props_from_wire(&props, &copy, &pool, false);
		if (rc == AIQ_OK)
			rc = aiq__amqp_publish_plain(b, dq, &props, &copy);
		empty_amqp_pool(&pool);
	}
	aiq__wire_clear(&copy);
	free(dq);
	if (rc != AIQ_OK)
		return rc;
	return settle(b, d, true, false);
}
