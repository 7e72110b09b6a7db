/*
 * Publishing with confirms: one tracker for every publish (a single
 * message is a batch of one).
 */
#include "amqp_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- publishing ----------------------------------------------------------- */

int aiq__amqp_props_from_wire(amqp_basic_properties_t *p, const aiq__wire *msg, amqp_pool_t *pool,
                              bool keep_expiration)
{
	memset(p, 0, sizeof *p);
	p->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
	            AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
	            AMQP_BASIC_PRIORITY_FLAG;
	p->content_type =
	        aiq__amqp_bytes(msg->content_type ? msg->content_type : "application/json");
	p->content_encoding =
	        aiq__amqp_bytes(msg->content_encoding ? msg->content_encoding : "utf-8");
	p->delivery_mode = AMQP_DELIVERY_PERSISTENT;
	p->priority = 0;
	int rc = aiq__amqp_table_from_json(&p->headers, msg->headers, pool);
	if (rc != AIQ_OK)
		return rc;
	const json_t *props = msg->properties;
	if (props == NULL)
		return AIQ_OK;
	const json_t *v;
	if ((v = json_object_get(props, "correlation_id")) && json_is_string(v)) {
		p->_flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
		p->correlation_id = aiq__amqp_bytes(json_string_value(v));
	}
	if ((v = json_object_get(props, "reply_to")) && json_is_string(v)) {
		p->_flags |= AMQP_BASIC_REPLY_TO_FLAG;
		p->reply_to = aiq__amqp_bytes(json_string_value(v));
	}
	if ((v = json_object_get(props, "priority")) && json_is_integer(v)) {
		json_int_t pr = json_integer_value(v);
		p->priority = (uint8_t)(pr < 0 ? 0 : pr > 255 ? 255 : pr);
	}
	if ((v = json_object_get(props, "delivery_mode")) && json_is_integer(v) &&
	    json_integer_value(v) == 1)
		p->delivery_mode = AMQP_DELIVERY_NONPERSISTENT;
	if (keep_expiration && (v = json_object_get(props, "expiration")) && json_is_string(v)) {
		p->_flags |= AMQP_BASIC_EXPIRATION_FLAG;
		p->expiration = aiq__amqp_bytes(json_string_value(v));
	}
	return AIQ_OK;
}

/* ---- the confirm tracker -------------------------------------------------- */

/* How each message of a batch fared in its last attempt. */
enum fate {
	FATE_OK,
	FATE_NACKED,   /* basic.nack: republished (a quorum queue without a leader) */
	FATE_RETURNED, /* basic.return: no queue takes it; final */
	FATE_LOST,     /* sent, no confirm before the link failed: republished */
	FATE_UNSENT,   /* never written, the link went down: published again */
	FATE_DOWN,     /* no link or declarations failed with the link: again */
	FATE_FINAL,    /* a refusal that a retry cannot change */
};

/* Messages in flight on the control link, a single publish being a batch of
 * one. The k-th message sent is msgs[sent[k]] and has publish sequence
 * number first_seq + k; done[] and returned[] are indexed by k; todo[],
 * fate[] and status[] by message. An attempt publishes the messages whose
 * todo[] is set. */
typedef struct batch {
	amqp_broker *b;
	const char *queue;
	const aiq__wire *const *msgs;
	const amqp_basic_properties_t *raw; /* exact properties for msgs[0] (dead letters);
	                                       the queue is then a dead-letter one, no delays */
	int *status;
	size_t *sent;
	bool *done;                 /* confirm (or failure) seen */
	bool *returned;             /* basic.return seen: fails even though an ack follows */
	bool *todo;                 /* published by the next attempt */
	unsigned char *fate;        /* enum fate */
	size_t n, nsent, ndone, lo; /* lo: no undone message below it */
	uint64_t first_seq;
	bool wrote; /* some message reached the wire: a retry could duplicate it */
	size_t nacked, nnacked, nreturned, nlost, nunsent;
	char why[MAX_ERRTEXT * 2];        /* first failure */
	char why_before[MAX_ERRTEXT * 2]; /* the previous attempt's */
} batch;

static void batch_settle(batch *t, size_t k, int rc, enum fate fate)
{
	if (t->done[k])
		return;
	t->done[k] = true;
	t->ndone++;
	t->status[t->sent[k]] = rc;
	t->fate[t->sent[k]] = (unsigned char)fate;
	while (t->lo < t->nsent && t->done[t->lo])
		t->lo++;
}

static void batch_note(batch *t, const char *fmt, ...) AIQ__PRINTF(2, 3);

/* Remember the first failure's reason. */
static void batch_note(batch *t, const char *fmt, ...)
{
	if (t->why[0] != '\0')
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->why, sizeof t->why, fmt, ap);
	va_end(ap);
}

/* The link is gone: every sent message without a confirm fails, its fate
 * unknown. */
static void batch_lose(batch *t, const char *why)
{
	aiq__amqp_link_drop(&t->b->ctl, false);
	batch_note(t, "%s; unconfirmed messages may or may not have been queued", why);
	for (size_t k = t->lo; k < t->nsent; k++) {
		if (!t->done[k]) {
			t->nlost++;
			batch_settle(t, k, AIQ_EBROKER, FATE_LOST);
		}
	}
}

/* A confirm for sequence number `tag`, alone or with all before it. */
static void batch_confirm(batch *t, uint64_t tag, bool multiple, bool ack)
{
	if (t->nsent == 0 || tag < t->first_seq)
		return; /* before this batch: stale */
	uint64_t top = tag - t->first_seq;
	if (top >= t->nsent)
		top = t->nsent - 1; /* not ours: cannot happen on a fresh sequence */
	size_t from = multiple ? t->lo : (size_t)top;
	for (size_t k = from; k <= (size_t)top; k++) {
		if (t->done[k])
			continue;
		if (!ack) {
			t->nnacked++;
			batch_note(t, "%s", "RabbitMQ refused a message (basic.nack)");
			batch_settle(t, k, AIQ_EBROKER, FATE_NACKED);
		} else if (t->returned[k]) {
			batch_settle(t, k, AIQ_EBROKER, FATE_RETURNED);
		} else {
			t->nacked++;
			batch_settle(t, k, AIQ_OK, FATE_OK);
		}
	}
}

/* basic.return carries no sequence number: find the message by its
 * correlation id (the task id) among those not yet confirmed. When that is
 * ambiguous, every unconfirmed message counts as returned: a refusal may be
 * over-reported, never an acceptance. */
static void batch_returned(batch *t, const amqp_message_t *m)
{
	const amqp_basic_properties_t *p = &m->properties;
	size_t match = SIZE_MAX, nmatch = 0;
	if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) {
		for (size_t k = t->lo; k < t->nsent; k++) {
			if (t->done[k] || t->returned[k])
				continue;
			const json_t *props = t->msgs[t->sent[k]]->properties;
			const char *cid = json_string_value(
			        props ? json_object_get(props, "correlation_id") : NULL);
			if (cid && strlen(cid) == p->correlation_id.len &&
			    memcmp(cid, p->correlation_id.bytes, p->correlation_id.len) == 0) {
				match = k;
				nmatch++;
			}
		}
	}
	if (nmatch == 1) {
		t->returned[match] = true;
		t->nreturned++;
		return;
	}
	for (size_t k = t->lo; k < t->nsent; k++) {
		if (!t->done[k] && !t->returned[k]) {
			t->returned[k] = true;
			t->nreturned++;
		}
	}
}

/* Read one frame from the control link (waiting up to timeout_ms) and apply
 * it. Returns false when nothing came or the link is gone (then every
 * unconfirmed message has failed). */
static bool batch_pump(batch *t, int64_t timeout_ms)
{
	conn_link *l = &t->b->ctl;
	amqp_frame_t f;
	char why[MAX_ERRTEXT];
	enum aiq__amqp_read r = aiq__amqp_read_frame(l, &f, timeout_ms, why, sizeof why);
	if (r == AIQ__AMQP_READ_LOST) {
		batch_lose(t, why);
		return false;
	}
	if (r == AIQ__AMQP_READ_TIMEOUT || f.frame_type != AMQP_FRAME_METHOD)
		return r == AIQ__AMQP_READ_FRAME;
	amqp_method_number_t id = f.payload.method.id;
	if (id == AMQP_BASIC_ACK_METHOD) {
		const amqp_basic_ack_t *a = f.payload.method.decoded;
		batch_confirm(t, a->delivery_tag, a->multiple, true);
	} else if (id == AMQP_BASIC_NACK_METHOD) {
		const amqp_basic_nack_t *a = f.payload.method.decoded;
		batch_confirm(t, a->delivery_tag, a->multiple, false);
	} else if (id == AMQP_BASIC_RETURN_METHOD) {
		const amqp_basic_return_t *ret = f.payload.method.decoded;
		batch_note(t, "RabbitMQ could not route %s to '%.200s': %u %.*s",
		           t->n == 1 ? "the message" : "a message", t->queue, ret->reply_code,
		           (int)(ret->reply_text.len > 200 ? 200 : ret->reply_text.len),
		           (const char *)ret->reply_text.bytes);
		amqp_message_t m;
		amqp_rpc_reply_t rr = amqp_read_message(l->conn, f.channel, &m, 0);
		if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
			batch_lose(t, "the connection failed while reading a returned message");
			return false;
		}
		batch_returned(t, &m);
		amqp_destroy_message(&m);
	}
	return true;
}

/* Apply what the server already sent, without waiting (keeps confirms and
 * returns flowing while a long batch is written). */
static bool batch_drain(batch *t)
{
	while (batch_pump(t, 0))
		;
	return t->b->ctl.up;
}

/* Wait until every sent message is confirmed; the confirm timeout runs from
 * the last progress, so a long batch is not cut short while confirms flow. */
static void batch_wait(batch *t)
{
	conn_link *l = &t->b->ctl;
	int64_t timeout = t->b->set.confirm_timeout_ms;
	int64_t deadline = aiq__mono_ms() + timeout;
	while (t->ndone < t->nsent && l->up) {
		int64_t left = deadline - aiq__mono_ms();
		if (left <= 0) {
			char why[MAX_ERRTEXT];
			snprintf(why, sizeof why,
			         "no publisher confirm from RabbitMQ within %lld ms",
			         (long long)timeout);
			batch_lose(t, why); /* the link's state is unknown now */
			return;
		}
		size_t before = t->ndone;
		batch_pump(t, left);
		if (t->ndone > before)
			deadline = aiq__mono_ms() + timeout;
	}
	if (t->ndone < t->nsent)
		batch_lose(t, "connection to RabbitMQ lost");
}

#define BATCH_DRAIN_EVERY 64

/* Declarations for a batch, made before publishing starts so no reply has to
 * be sorted out of confirms: the queue, and the delay queues that rks[]
 * (routing keys; NULL: the queue itself) name. */
static int batch_declare(batch *t, const int64_t *not_before_ms, char **rks)
{
	amqp_broker *b = t->b;
	conn_link *l = &b->ctl;
	int rc = aiq__amqp_declare_work_queue(b, l, t->queue);
	if (t->raw)
		return rc;
	int64_t now = aiq__now_ms();
	for (size_t k = 0; rc == AIQ_OK && not_before_ms && k < t->n; k++) {
		if (!t->todo[k])
			continue;
		int64_t delay = not_before_ms[k] > 0 ? not_before_ms[k] - now : 0;
		if (delay < ((int64_t)1 << DELAY_MIN_SHIFT))
			continue;
		int shift = aiq__amqp_delay_shift(delay);
		if ((rks[k] = aiq__amqp_delay_queue_name(t->queue, shift)) == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		else
			rc = aiq__amqp_declare_delay_queue(l, t->queue, shift, rks[k]);
	}
	return rc;
}

/* One attempt: declare, publish every message, wait for the confirms.
 * Messages not sent get AIQ_EBROKER. */
static int batch_once(batch *t, const int64_t *not_before_ms)
{
	amqp_broker *b = t->b;
	conn_link *l = &b->ctl;
	char **rks = calloc(t->n, sizeof *rks);
	int rc = rks ? aiq__amqp_ctl_ready(b) : aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK)
		rc = batch_declare(t, not_before_ms, rks);
	if (rc == AIQ_OK && !l->confirm) {
		amqp_confirm_select(l->conn, CH_MAIN);
		rc = aiq__amqp_rpc_check(l, CH_MAIN, "enabling publisher confirms");
		if (rc == AIQ_OK) {
			l->confirm = true;
			l->pub_seq = 0;
		}
	}
	if (rc != AIQ_OK) {
		/* With the link gone (or never made) another node may do. */
		enum fate f = l->up ? FATE_FINAL : FATE_DOWN;
		for (size_t k = 0; k < t->n; k++) {
			if (t->todo[k]) {
				t->status[k] = rc;
				t->fate[k] = (unsigned char)f;
			}
		}
		batch_note(t, "%s", aiq_error_last());
		goto out;
	}

	t->first_seq = l->pub_seq + 1;
	amqp_pool_t pool;
	init_amqp_pool(&pool, 4096);
	size_t k = 0;
	for (; k < t->n; k++) {
		if (!t->todo[k])
			continue;
		amqp_basic_properties_t props;
		const aiq__wire *msg = t->msgs[k];
		/* In a delay queue a per-message TTL would cut the delay short;
		 * the expires header still stops the task once it arrives. */
		int prc = AIQ_OK;
		if (t->raw)
			props = *t->raw;
		else
			prc = aiq__amqp_props_from_wire(&props, msg, &pool, rks[k] == NULL);
		if (prc != AIQ_OK) {
			/* Not sent; sequence numbers follow what was sent. */
			t->status[k] = prc;
			t->fate[k] = FATE_FINAL;
			batch_note(t, "%s", aiq_error_last());
			recycle_amqp_pool(&pool);
			continue;
		}
		amqp_bytes_t body = {msg->body_len, msg->body};
		/* Mandatory: a message no queue takes comes back (basic.return). */
		int st = amqp_basic_publish(l->conn, CH_MAIN, amqp_empty_bytes,
		                            aiq__amqp_bytes(rks[k] ? rks[k] : t->queue), 1, 0,
		                            &props, body);
		recycle_amqp_pool(&pool);
		t->sent[t->nsent++] = k;
		if (st != AMQP_STATUS_OK) {
			/* Partly written, perhaps: its fate is unknown, like the
			 * unconfirmed ones before it. */
			char why[MAX_ERRTEXT];
			snprintf(why, sizeof why, "publishing failed: %s", amqp_error_string2(st));
			batch_lose(t, why);
			k++;
			break;
		}
		t->wrote = true;
		l->pub_seq++;
		if (t->nsent % BATCH_DRAIN_EVERY == 0 && !batch_drain(t)) {
			k++;
			break;
		}
	}
	for (; k < t->n; k++) { /* never sent: the link went down */
		if (!t->todo[k])
			continue;
		t->status[k] = AIQ_EBROKER;
		t->fate[k] = FATE_UNSENT;
		t->nunsent++;
	}
	empty_amqp_pool(&pool);
	if (l->up)
		batch_wait(t);
	rc = AIQ_OK;
	for (size_t i = 0; i < t->n && rc == AIQ_OK; i++)
		rc = t->todo[i] ? t->status[i] : AIQ_OK;
out:
	for (size_t i = 0; rks && i < t->n; i++)
		free(rks[i]);
	free(rks);
	return rc;
}

static bool retryable(const batch *t, size_t k, bool retry_any)
{
	if (t->status[k] == AIQ_OK)
		return false;
	switch ((enum fate)t->fate[k]) {
	case FATE_NACKED:
	case FATE_LOST:
	case FATE_UNSENT:
	case FATE_DOWN: return true;
	case FATE_RETURNED:
	case FATE_FINAL: return retry_any && t->status[k] == AIQ_EBROKER;
	case FATE_OK: break;
	}
	return false;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* Publish and wait for the confirms, then publish again what was not
 * confirmed: messages nacked (a quorum queue refuses publishes while it
 * elects a new leader), sent but unconfirmed when the link failed (they may
 * have been queued: the copy is a duplicate that consumers tolerate, task ids
 * being idempotent), or never written. Attempts go on, each on a fresh
 * connection to the next node after a nack or a lost link, for
 * amqp.republish_ms, with a backoff of 100 ms doubling to 1 s (none before
 * the first reconnect after a lost link). A message
 * returned (no queue takes it) or refused by a declaration is final. With
 * republish_ms 0, only a batch of which nothing reached the wire because
 * the link had died while idle goes out once more (`retry_any`: one more try
 * after any broker failure, for dead letters, where a duplicate is better
 * than none). */
static int batch_run(batch *t, const int64_t *not_before_ms, bool retry_any)
{
	size_t n = t->n;
	for (size_t k = 0; k < n; k++)
		t->status[k] = AIQ_EBROKER;
	t->sent = calloc(n, sizeof *t->sent);
	t->done = calloc(n, sizeof *t->done);
	t->returned = calloc(n, sizeof *t->returned);
	t->todo = calloc(n, sizeof *t->todo);
	t->fate = calloc(n, sizeof *t->fate);
	int rc;
	if (!t->sent || !t->done || !t->returned || !t->todo || !t->fate) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory publishing");
		for (size_t k = 0; k < n; k++)
			t->status[k] = rc;
		snprintf(t->why, sizeof t->why, "out of memory");
		goto out;
	}
	for (size_t k = 0; k < n; k++)
		t->todo[k] = true;
	bool was_up = t->b->ctl.up;
	int64_t deadline = aiq__mono_ms() + t->b->set.republish_ms;
	int64_t backoff = 0;
	for (int attempt = 0;; attempt++) {
		rc = batch_once(t, not_before_ms);
		if (rc == AIQ_OK || rc == AIQ_ENOMEM)
			break;
		/* A channel whose quorum queue lost its leader goes on nacking
		 * after the queue has a new one (RabbitMQ 3.10): after a nack,
		 * the next attempt or call starts on a fresh connection, at the
		 * next node. */
		size_t nacked = 0;
		for (size_t k = 0; k < n; k++)
			nacked += t->todo[k] && t->status[k] != AIQ_OK && t->fate[k] == FATE_NACKED;
		if (nacked > 0)
			aiq__amqp_link_drop(&t->b->ctl, true);
		bool idle_death = attempt == 0 && was_up && !t->b->ctl.up && !t->wrote;
		bool one_more = attempt == 0 && (retry_any || idle_death);
		if (!one_more && aiq__mono_ms() >= deadline)
			break;
		size_t again = 0;
		for (size_t k = 0; k < n; k++) {
			t->todo[k] = retryable(t, k, retry_any && attempt == 0);
			again += t->todo[k];
		}
		if (again == 0)
			break;
		if (nacked > 0 || attempt > 0) {
			/* Refused on a live link, or no node answered: give the
			 * cluster time to recover. A link that just failed is
			 * replaced at once, by the next node. */
			backoff = backoff ? backoff * 2 : 100;
			if (backoff > 1000)
				backoff = 1000;
			int64_t left = deadline - aiq__mono_ms();
			sleep_ms(backoff < left ? backoff : left > 0 ? left : 0);
		}
		aiq__log(AIQ_LOG_INFO, "amqp: publishing %zu of %zu messages to '%.200s' again: %s",
		         again, n, t->queue, t->why);
		memset(t->done, 0, n * sizeof *t->done);
		memset(t->returned, 0, n * sizeof *t->returned);
		t->nsent = t->ndone = t->lo = 0;
		t->wrote = false;
		memcpy(t->why_before, t->why, sizeof t->why);
		t->why[0] = '\0';
	}
	/* A message that failed for good in an earlier attempt still fails. */
	for (size_t k = 0; rc == AIQ_OK && k < n; k++)
		rc = t->status[k];
	if (t->why[0] == '\0')
		memcpy(t->why, t->why_before, sizeof t->why);
	/* What the caller is told counts each failed message by its last fate. */
	t->nnacked = t->nreturned = t->nlost = t->nunsent = 0;
	for (size_t k = 0; k < n; k++) {
		if (t->status[k] == AIQ_OK)
			continue;
		t->nnacked += t->fate[k] == FATE_NACKED;
		t->nreturned += t->fate[k] == FATE_RETURNED;
		t->nlost += t->fate[k] == FATE_LOST;
		t->nunsent += t->fate[k] == FATE_UNSENT;
	}
out:
	free(t->sent);
	free(t->done);
	free(t->returned);
	free(t->todo);
	free(t->fate);
	return rc;
}

static int check_queue(const char *queue)
{
	if (queue == NULL || *queue == '\0')
		return aiq__err(AIQ_EINVAL, "publish needs a queue name");
	if (strlen(queue) > 200)
		return aiq__err(AIQ_EINVAL, "queue name longer than 200 bytes");
	return AIQ_OK;
}

int aiq__amqp_publish(aiq__broker *base, const char *queue, const aiq__wire *msg,
                      int64_t not_before_ms)
{
	int rc = check_queue(queue);
	if (rc != AIQ_OK)
		return rc;
	if (msg == NULL)
		return aiq__err(AIQ_EINVAL, "publish needs a message");
	int status;
	batch t = {
	        .b = (amqp_broker *)base, .queue = queue, .msgs = &msg, .status = &status, .n = 1};
	rc = batch_run(&t, &not_before_ms, false);
	if (rc != AIQ_OK)
		rc = aiq__err(rc, "%s", t.why[0] ? t.why : "publishing failed");
	return rc;
}

int aiq__amqp_publish_plain(amqp_broker *b, const char *q, const amqp_basic_properties_t *props,
                            const aiq__wire *msg)
{
	int status;
	batch t = {.b = b, .queue = q, .msgs = &msg, .raw = props, .status = &status, .n = 1};
	int rc = batch_run(&t, NULL, true);
	if (rc != AIQ_OK)
		rc = aiq__err(rc, "publishing to '%.200s' failed: %s", q,
		              t.why[0] ? t.why : "unknown failure");
	return rc;
}

int aiq__amqp_publish_batch(aiq__broker *base, const char *queue, const aiq__wire *const *msgs,
                            size_t n, const int64_t *not_before_ms, int *status)
{
	for (size_t k = 0; k < n; k++)
		status[k] = AIQ_EBROKER;
	int rc = check_queue(queue);
	if (rc != AIQ_OK)
		return rc;
	if (msgs == NULL)
		return aiq__err(AIQ_EINVAL, "publish needs messages");
	if (n == 0)
		return AIQ_OK;
	batch t = {
	        .b = (amqp_broker *)base, .queue = queue, .msgs = msgs, .status = status, .n = n};
	rc = batch_run(&t, not_before_ms, false);
	if (rc != AIQ_OK) {
		size_t failed = 0;
		for (size_t k = 0; k < n; k++)
			failed += status[k] != AIQ_OK;
		rc = aiq__err(rc,
		              "%zu of %zu messages to '%.200s' not accepted (%zu refused, %zu "
		              "returned, %zu unconfirmed, %zu not sent): %s",
		              failed, n, queue, t.nnacked, t.nreturned, t.nlost, t.nunsent,
		              t.why[0] ? t.why : "unknown failure");
	}
	return rc;
}
