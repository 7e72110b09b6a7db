/*
 * Declarations, exactly as Celery 5.2 makes them (see amqp.c).
 */
#include "amqp_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- topology ----------------------------------------------------------- */

static bool is_declared(const conn_link *l, const char *q)
{
	for (size_t i = 0; i < l->ndeclared; i++)
		if (strcmp(l->declared[i], q) == 0)
			return true;
	return false;
}

static void mark_declared(conn_link *l, const char *q)
{
	char **v = realloc(l->declared, (l->ndeclared + 1) * sizeof *v);
	if (v == NULL)
		return; /* only a cache: it will be declared again next time */
	l->declared = v;
	if ((v[l->ndeclared] = aiq__strdup(q)))
		l->ndeclared++;
}

bool aiq__amqp_is_dead_queue(const char *q)
{
	size_t n = strlen(q), k = sizeof DEAD_SUFFIX - 1;
	return n > k && strcmp(q + n - k, DEAD_SUFFIX) == 0;
}

/* Exchange, queue and binding for a work queue, as Celery declares them.
 *
 * A dead-letter queue gets the same exchange and binding. With classic work
 * queues it never gets a queue argument (no x-max-priority, no
 * x-queue-type): dead_letter() has always declared it that way, and every
 * path (publish to it, consume from it) comes through here, so they agree
 * and existing ones keep working. With quorum work queues it is a quorum
 * queue too, so dead letters survive the loss of a node like the work queue
 * does; an existing argument-free one (406 PRECONDITION_FAILED) is then used
 * as it is.
 *
 * amqp.delivery_limit adds x-delivery-limit to a quorum work queue, with
 * RabbitMQ dead-lettering into "<q>.dead" (declared first: a dead letter to
 * a missing queue is dropped). */
static int declare_queue(amqp_broker *b, conn_link *l, const char *q, bool *conflict)
{
	amqp_table_entry_t args[5];
	int nargs = 0;
	bool dead = aiq__amqp_is_dead_queue(q);
	bool quorum = strcmp(b->set.queue_type, "quorum") == 0;
	char *dlq = NULL;
	*conflict = false;
	if (b->set.max_priority > 0 && !dead) {
		args[nargs].key = amqp_cstring_bytes("x-max-priority");
		args[nargs].value.kind = AMQP_FIELD_KIND_I32; /* py-amqp writes 'I' */
		args[nargs].value.value.i32 = b->set.max_priority;
		nargs++;
	}
	if (quorum) {
		args[nargs].key = amqp_cstring_bytes("x-queue-type");
		args[nargs].value.kind = AMQP_FIELD_KIND_UTF8;
		args[nargs].value.value.bytes = amqp_cstring_bytes("quorum");
		nargs++;
	}
	if (quorum && !dead && b->set.delivery_limit > 0) {
		if ((dlq = aiq__asprintf("%s" DEAD_SUFFIX, q)) == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		int rc = aiq__amqp_declare_work_queue(b, l, dlq);
		if (rc != AIQ_OK) {
			free(dlq);
			return rc;
		}
		args[nargs].key = amqp_cstring_bytes("x-delivery-limit");
		args[nargs].value.kind = AMQP_FIELD_KIND_I32;
		args[nargs].value.value.i32 = b->set.delivery_limit;
		nargs++;
		args[nargs].key = amqp_cstring_bytes("x-dead-letter-exchange");
		args[nargs].value.kind = AMQP_FIELD_KIND_UTF8;
		args[nargs].value.value.bytes = amqp_cstring_bytes("");
		nargs++;
		args[nargs].key = amqp_cstring_bytes("x-dead-letter-routing-key");
		args[nargs].value.kind = AMQP_FIELD_KIND_UTF8;
		args[nargs].value.value.bytes = amqp_cstring_bytes(dlq);
		nargs++;
	}
	amqp_table_t qargs = {nargs, nargs ? args : NULL};
	char what[600];
	snprintf(what, sizeof what,
	         "declaring queue '%.300s' (an existing queue must have the same arguments: "
	         "check amqp.queue_max_priority, amqp.queue_type and amqp.delivery_limit)",
	         q);
	amqp_queue_declare(l->conn, CH_MAIN, aiq__amqp_bytes(q), 0, 1, 0, 0, qargs);
	int rc = aiq__amqp_rpc_check(l, CH_MAIN, what);
	free(dlq);
	*conflict = rc != AIQ_OK && l->up && strstr(aiq_error_last(), "PRECONDITION_FAILED");
	return rc;
}

static int declare_bound(amqp_broker *b, conn_link *l, const char *q, const char *exchange,
                         const char *type, const char *routing_key, bool cache)
{
	if (cache && is_declared(l, q))
		return AIQ_OK;
	char what[600];
	snprintf(what, sizeof what, "declaring exchange '%.300s' (%.20s)", exchange, type);
	amqp_exchange_declare(l->conn, CH_MAIN, aiq__amqp_bytes(exchange), aiq__amqp_bytes(type), 0,
	                      1, 0, 0, amqp_empty_table);
	int rc = aiq__amqp_rpc_check(l, CH_MAIN, what);
	if (rc == AIQ_OK) {
		bool conflict;
		rc = declare_queue(b, l, q, &conflict);
		if (rc != AIQ_OK && conflict && aiq__amqp_is_dead_queue(q)) {
			/* Made argument-free by an earlier version or a classic
			 * setup: keep using it (the channel was reopened). */
			aiq__log(
			        AIQ_LOG_WARNING,
			        "amqp: dead-letter queue '%.200s' exists as a classic queue; using "
			        "it as it is (delete it to have it made a quorum queue)",
			        q);
			rc = aiq__amqp_declare_plain_queue(l, q, amqp_empty_table);
		}
	}
	if (rc == AIQ_OK) {
		snprintf(what, sizeof what, "binding queue '%.200s' to '%.200s'", q, exchange);
		amqp_queue_bind(l->conn, CH_MAIN, aiq__amqp_bytes(q), aiq__amqp_bytes(exchange),
		                aiq__amqp_bytes(routing_key), amqp_empty_table);
		rc = aiq__amqp_rpc_check(l, CH_MAIN, what);
	}
	if (rc == AIQ_OK && cache)
		mark_declared(l, q);
	return rc;
}

int aiq__amqp_declare_work_queue(amqp_broker *b, conn_link *l, const char *q)
{
	return declare_bound(b, l, q, q, "direct", q, true);
}

int aiq__amqp_declare_bound_queue(amqp_broker *b, conn_link *l, const char *q, const char *exchange,
                                  const char *type, const char *routing_key)
{
	return declare_bound(b, l, q, exchange, type, routing_key, false);
}

/* A plain durable queue with optional arguments (dead letters, delays). */
int aiq__amqp_declare_plain_queue(conn_link *l, const char *q, amqp_table_t args)
{
	if (is_declared(l, q))
		return AIQ_OK;
	char what[400];
	snprintf(what, sizeof what, "declaring queue '%.300s'", q);
	amqp_queue_declare(l->conn, CH_MAIN, aiq__amqp_bytes(q), 0, 1, 0, 0, args);
	int rc = aiq__amqp_rpc_check(l, CH_MAIN, what);
	if (rc == AIQ_OK)
		mark_declared(l, q);
	return rc;
}

char *aiq__amqp_delay_queue_name(const char *q, int shift)
{
	return aiq__asprintf("%s.delay.%lld", q, (long long)1 << shift);
}

int aiq__amqp_declare_delay_queue(conn_link *l, const char *q, int shift, const char *name)
{
	amqp_table_entry_t args[3];
	args[0].key = amqp_cstring_bytes("x-message-ttl");
	args[0].value.kind = AMQP_FIELD_KIND_I32;
	args[0].value.value.i32 = (int32_t)((int64_t)1 << shift);
	args[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
	args[1].value.kind = AMQP_FIELD_KIND_UTF8;
	args[1].value.value.bytes = amqp_cstring_bytes("");
	args[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
	args[2].value.kind = AMQP_FIELD_KIND_UTF8;
	args[2].value.value.bytes = aiq__amqp_bytes(q);
	amqp_table_t t = {3, args};
	return aiq__amqp_declare_plain_queue(l, name, t);
}
int aiq__amqp_delay_shift(int64_t delay_ms)
{
	int k = DELAY_MIN_SHIFT;
	while (k < DELAY_MAX_SHIFT && ((int64_t)1 << (k + 1)) <= delay_ms)
		k++;
	return k;
}
