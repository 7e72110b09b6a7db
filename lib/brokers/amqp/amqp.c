/*
 * The RabbitMQ broker driver (librabbitmq-c): "amqp://", "amqps://", and kombu's
 * aliases "pyamqp://" and "librabbitmq://".
 * docs/rabbitmq.md is the user-facing description; this comment is the map.
 *
 * Links. A handle owns up to two connections ("links"), each single-threaded
 * and used only by the thread using the handle:
 *  - the control link: publishing (channel 1 in confirm mode), declarations,
 *    and queue.declare(passive)/purge/ping on channel 2, where a 404 only
 *    costs that scratch channel;
 *  - the consumer link, opened by consume(): declarations, basic.qos
 *    (per consumer), basic.consume, acks, all on channel 1.
 * Keeping publishes off the consuming connection means a confirm wait never
 * has to sort deliveries out of the frame stream.
 *
 * Topology, exactly as Celery 5.2 declares it: exchange "<q>" direct durable,
 * queue "<q>" durable (arguments only when amqp.queue_max_priority or
 * amqp.queue_type ask for them), queue.bind "<q>" to "<q>" with key "<q>".
 * Dead-letter queues "<q>.dead" are declared the same way by every path,
 * never with x-max-priority, as quorum queues when work queues are
 * (amqp_topology.c); amqp.delivery_limit adds x-delivery-limit to quorum
 * work queues, dead-lettering into "<q>.dead".
 * Messages go to the default exchange with routing key "<q>", persistent.
 *
 * Confirms: publish() returns AIQ_OK only after basic.ack for that message.
 * It is published mandatory, so a message no queue took comes back as
 * basic.return (reported as AIQ_EBROKER even though an ack follows); a nack,
 * a channel or connection close, or no answer within amqp.confirm_timeout_ms
 * is AIQ_EBROKER too, and the link is dropped so the next call starts clean.
 *
 * Delays: publish(not_before_ms) parks the message in "<q>.delay.<2^k>", a
 * durable queue whose x-message-ttl is 2^k ms and which dead-letters into the
 * default exchange with routing key "<q>". k is the largest with 2^k <= the
 * remaining delay, so the message comes back EARLY by less than half the
 * delay, never late; every message in one delay queue has the same TTL, so
 * none waits behind another (no head-of-line blocking). The worker sees the
 * message's ETA still ahead and parks it again (a smaller bucket each hop,
 * log2(delay) hops at most) until it is within its ETA horizon. Broker-added
 * dead-lettering headers (x-death, x-first-death-*, x-last-death-*) are
 * removed when a message is received, so they never accumulate.
 *
 * Reconnects. Any connection or channel error drops the link. fetch() keeps
 * returning AIQ_ETIMEDOUT while it reconnects with capped exponential backoff
 * (100 ms doubling to 5 s), redeclares and resumes consuming; it fails hard
 * only for refused credentials or a vhost that stays refused for 15 s.
 * publish() republishes what was nacked or left unconfirmed by a lost link,
 * on a fresh connection (the next node), for amqp.republish_ms
 * (amqp_publish.c).
 *
 * Stale deliveries. Each delivery records the link generation it came from.
 * After a reconnect (including RabbitMQ closing the channel with
 * PRECONDITION_FAILED because a delivery stayed unacked past its
 * consumer_timeout) the old deliveries are stale: the broker has requeued
 * them. The worker may still be running them, so:
 *  - a redelivery (redelivered flag set) with the same task id and retries
 *    as a stale delivery this handle still tracks is held back, not handed
 *    to the worker: the task never runs twice in parallel in this process;
 *  - ack/reject/dead_letter of the stale delivery is applied to the held
 *    redelivery instead (or, if it has not arrived yet, remembered for up to
 *    10 minutes and applied when it does), and returns AIQ_OK with a warning.
 * So a task that outlives consumer_timeout runs once and its outcome is
 * stored once, as long as the redelivery comes back to this consumer. Another
 * process consuming the same queue may receive it and run it in parallel;
 * RabbitMQ 3.10 has no per-queue or per-consumer timeout, so the remedy there
 * is a consumer_timeout above the longest task.
 *
 * Batches. fetch_batch() waits for the first delivery, then takes every
 * delivery the socket already holds (up to `max`) without waiting again;
 * fetch() is a batch of at most one. ack_batch() acknowledges the longest
 * run of this channel's oldest outstanding tags that lie in the batch with
 * one basic.ack(multiple=true), and every other tag with its own basic.ack,
 * all written before one flush (TCP_CORK); `multiple` never covers a
 * delivery outside the batch, and a stale delivery's tag is never sent on a
 * newer channel (see above).
 *
 * wakeup() sets a flag: the next fetch() returns at once, and a fetch()
 * already waiting sees it within WAKE_SLICE_MS (amqp_consume.c), since it
 * waits for a frame in slices that short.
 *
 * The files, by job, are listed in amqp_int.h.
 */
#include "amqp_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- inspection ------------------------------------------------------------ */

/* queue.declare(passive) on the scratch channel: *exists false for 404. */
static int passive_count(amqp_broker *b, const char *q, bool *exists, uint64_t *count)
{
	conn_link *l = &b->ctl;
	*exists = false;
	*count = 0;
	int rc = aiq__amqp_ensure_scratch(l);
	if (rc != AIQ_OK)
		return rc;
	amqp_queue_declare_ok_t *ok = amqp_queue_declare(l->conn, CH_SCRATCH, aiq__amqp_bytes(q), 1,
	                                                 0, 0, 0, amqp_empty_table);
	amqp_rpc_reply_t r = amqp_get_rpc_reply(l->conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL && ok) {
		*exists = true;
		*count = ok->message_count;
		return AIQ_OK;
	}
	if (aiq__amqp_close_code(r) == AMQP_NOT_FOUND && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
		aiq__amqp_channel_recover(l, CH_SCRATCH, r);
		return AIQ_OK;
	}
	char t[MAX_ERRTEXT];
	aiq__amqp_reply_text(t, sizeof t, r);
	rc = aiq__err(AIQ_EBROKER, "inspecting queue '%.200s' failed: %s", q, t);
	aiq__amqp_channel_recover(l, CH_SCRATCH, r);
	return rc;
}

static int amqp_depth(aiq__broker *base, const char *queue, uint64_t *count)
{
	amqp_broker *b = (amqp_broker *)base;
	if (queue == NULL || count == NULL)
		return aiq__err(AIQ_EINVAL, "queue and count are required");
	int rc = aiq__amqp_ctl_ready(b);
	if (rc != AIQ_OK)
		return rc;
	bool exists;
	return passive_count(b, queue, &exists, count);
}

static int purge_one(amqp_broker *b, const char *q, uint64_t *removed)
{
	bool exists;
	uint64_t n;
	int rc = passive_count(b, q, &exists, &n);
	if (rc != AIQ_OK || !exists)
		return rc;
	conn_link *l = &b->ctl;
	amqp_queue_purge_ok_t *ok = amqp_queue_purge(l->conn, CH_SCRATCH, aiq__amqp_bytes(q));
	char what[300];
	snprintf(what, sizeof what, "purging queue '%.200s'", q);
	rc = aiq__amqp_rpc_check(l, CH_SCRATCH, what);
	if (rc == AIQ_OK && ok)
		*removed += ok->message_count;
	return rc;
}

static int amqp_purge(aiq__broker *base, const char *queue, uint64_t *removed)
{
	amqp_broker *b = (amqp_broker *)base;
	if (queue == NULL)
		return aiq__err(AIQ_EINVAL, "no queue");
	uint64_t total = 0;
	int rc = aiq__amqp_ctl_ready(b);
	if (rc == AIQ_OK)
		rc = purge_one(b, queue, &total);
	/* Delayed messages are waiting in the queue too. */
	for (int k = DELAY_MIN_SHIFT; rc == AIQ_OK && k <= DELAY_MAX_SHIFT; k++) {
		char *dq = aiq__amqp_delay_queue_name(queue, k);
		if (dq == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		rc = purge_one(b, dq, &total);
		free(dq);
	}
	if (removed)
		*removed = total;
	return rc;
}

static int amqp_ping(aiq__broker *base)
{
	amqp_broker *b = (amqp_broker *)base;
	int rc = aiq__amqp_ctl_ready(b);
	if (rc != AIQ_OK)
		return rc;
	rc = aiq__amqp_ensure_scratch(&b->ctl);
	if (rc != AIQ_OK)
		return rc;
	amqp_exchange_declare(b->ctl.conn, CH_SCRATCH, amqp_cstring_bytes("amq.direct"),
	                      amqp_cstring_bytes("direct"), 1, 0, 0, 0, amqp_empty_table);
	return aiq__amqp_rpc_check(&b->ctl, CH_SCRATCH, "ping (exchange.declare passive)");
}
static void amqp_wakeup(aiq__broker *base)
{
	atomic_store(&((amqp_broker *)base)->wake, true);
}

/* ---- open / close ----------------------------------------------------------- */

static void amqp_close(aiq__broker *base)
{
	amqp_broker *b = (amqp_broker *)base;
	if (b == NULL)
		return;
	aiq__amqp_link_drop(&b->cons, true);
	aiq__amqp_link_drop(&b->ctl, true);
	aiq__amqp_tracks_free(b);
	aiq__amqp_queues_free(b);
	aiq__amqp_settings_clear(&b->set);
	free(b);
}

static int amqp_open(aiq__broker **out, const char *url, const aiq_config *cfg)
{
	amqp_broker *b = calloc(1, sizeof *b);
	if (b == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	b->base.ops = &aiq__amqp_broker_ops;
	atomic_init(&b->wake, false);
	int rc = aiq__amqp_settings_init(&b->set, url, cfg);
	if (rc != AIQ_OK) {
		amqp_close(&b->base);
		return rc;
	}
	/* Connect now so a wrong address or password shows up at open. */
	rc = aiq__amqp_ctl_ready(b);
	if (rc != AIQ_OK) {
		amqp_close(&b->base);
		return rc;
	}
	*out = &b->base;
	return AIQ_OK;
}

static const char *const amqp_schemes[] = {"amqp", "amqps", "pyamqp", "librabbitmq", NULL};

const aiq__broker_ops aiq__amqp_broker_ops = {
        .name = "amqp",
        .schemes = amqp_schemes,
        .caps = AIQ__BROKER_CAP_DELAY | AIQ__BROKER_CAP_PRIORITY | AIQ__BROKER_CAP_DEAD_LETTER,
        .open = amqp_open,
        .close = amqp_close,
        .publish = aiq__amqp_publish,
        .publish_batch = aiq__amqp_publish_batch,
        .consume = aiq__amqp_consume,
        .fetch = aiq__amqp_fetch,
        .fetch_batch = aiq__amqp_fetch_batch,
        .wakeup = amqp_wakeup,
        .ack = aiq__amqp_ack,
        .ack_batch = aiq__amqp_ack_batch,
        .reject = aiq__amqp_reject,
        .dead_letter = aiq__amqp_dead_letter,
        .purge = amqp_purge,
        .depth = amqp_depth,
        .ping = amqp_ping,
        .keepalive = aiq__amqp_keepalive,
        .add_queue = aiq__amqp_add_queue,
        .cancel_queue = aiq__amqp_cancel_queue,
        .bus_open = aiq__amqp_bus_open,
};
