/*
 * Broker registry: maps a URL scheme to a driver table, and the helpers every
 * driver shares (delivery release).
 */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifdef AIQ_HAVE_AMQP
extern const aiq__broker_ops aiq__amqp_broker_ops;
#endif
#ifdef AIQ_HAVE_REDIS
extern const aiq__broker_ops aiq__redis_broker_ops;
#endif

/* Drivers built into this library. Optional ones compile out; a URL naming
 * one that is missing gets AIQ_EUNSUPPORTED, not a crash or a silent default. */
static const aiq__broker_ops *const broker_drivers[] = {
        &aiq__memory_broker_ops,
#ifdef AIQ_HAVE_AMQP
        &aiq__amqp_broker_ops,
#endif
#ifdef AIQ_HAVE_REDIS
        &aiq__redis_broker_ops,
#endif
};

void aiq__delivery_free(aiq__delivery *d)
{
	if (d == NULL)
		return;
	aiq__wire_clear(&d->wire);
	aiq__message_free(d->message);
	free(d->queue);
	free(d->undecodable);
	if (d->driver_free)
		d->driver_free(d->driver_data);
	free(d);
}

int aiq__broker_lookup(const aiq__broker_ops **out, const char *url)
{
	if (out == NULL || url == NULL)
		return aiq__err(AIQ_EINVAL, "no broker URL given");
	*out = NULL;
	size_t len = aiq__url_scheme_len(url);
	if (len == 0) {
		char *safe = aiq__url_redact(url);
		int rc = aiq__err(AIQ_EINVAL,
		                  "broker URL '%.200s' has no scheme (expected e.g. memory://, "
		                  "amqp://, redis://)",
		                  safe ? safe : "?");
		free(safe);
		return rc;
	}
	for (size_t i = 0; i < sizeof broker_drivers / sizeof broker_drivers[0]; i++) {
		if (aiq__url_scheme_in(broker_drivers[i]->schemes, url, len)) {
			*out = broker_drivers[i];
			return AIQ_OK;
		}
	}
	return aiq__err(AIQ_EUNSUPPORTED,
	                "broker URL scheme '%.*s' is unknown or not built into this library",
	                (int)(len > 64 ? 64 : len), url);
}

int aiq__broker_open(aiq__broker **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "no output pointer for the broker");
	*out = NULL;
	const aiq__broker_ops *ops;
	int rc = aiq__broker_lookup(&ops, url);
	if (rc != AIQ_OK)
		return rc;
	return ops->open(out, url, cfg);
}

void aiq__broker_close(aiq__broker *b)
{
	if (b == NULL)
		return;
	b->ops->close(b);
}

/* ---- front functions ----------------------------------------------------- */

static bool valid_queue(const char *queue)
{
	return queue != NULL && *queue != '\0';
}

const char *aiq__broker_name(const aiq__broker *b)
{
	return b ? b->ops->name : "";
}

unsigned aiq__broker_caps(const aiq__broker *b)
{
	return b ? b->ops->caps : 0;
}

bool aiq__broker_delays_for_all(const aiq__broker *b)
{
	unsigned caps = aiq__broker_caps(b);
	return (caps & AIQ__BROKER_CAP_DELAY) && !(caps & AIQ__BROKER_CAP_DELAY_OURS_ONLY);
}

static int check_publish(const aiq__broker *b, const char *queue, int64_t not_before_ms)
{
	if (b == NULL || !valid_queue(queue))
		return aiq__err(AIQ_EINVAL, "publish: no broker or no queue name");
	if (not_before_ms > 0 && !(b->ops->caps & AIQ__BROKER_CAP_DELAY))
		return aiq__err(AIQ_EUNSUPPORTED, "the %s broker cannot delay messages",
		                b->ops->name);
	return AIQ_OK;
}

int aiq__broker_publish(aiq__broker *b, const char *queue, const aiq__wire *msg,
                        int64_t not_before_ms)
{
	int rc = check_publish(b, queue, not_before_ms);
	if (rc != AIQ_OK)
		return rc;
	if (msg == NULL)
		return aiq__err(AIQ_EINVAL, "publish: no message");
	return b->ops->publish(b, queue, msg, not_before_ms);
}

int aiq__broker_publish_batch(aiq__broker *b, const char *queue, const aiq__wire *const *msgs,
                              size_t n, const int64_t *not_before_ms, int *status)
{
	if (n > 0 && (msgs == NULL || status == NULL))
		return aiq__err(AIQ_EINVAL, "publish_batch: no messages or no status array");
	for (size_t i = 0; i < n; i++)
		status[i] = AIQ_EBROKER; /* never success unless reported */
	int64_t latest = 0;
	for (size_t i = 0; i < n; i++) {
		if (msgs[i] == NULL)
			return aiq__err(AIQ_EINVAL, "publish_batch: message %zu is NULL", i);
		if (not_before_ms && not_before_ms[i] > latest)
			latest = not_before_ms[i];
	}
	int rc = check_publish(b, queue, latest);
	if (rc != AIQ_OK || n == 0) {
		for (size_t i = 0; i < n; i++)
			status[i] = rc;
		return rc;
	}
	if (b->ops->publish_batch)
		return b->ops->publish_batch(b, queue, msgs, n, not_before_ms, status);
	int first = AIQ_OK;
	size_t failed = 0;
	char why[512] = "";
	for (size_t i = 0; i < n; i++) {
		status[i] =
		        b->ops->publish(b, queue, msgs[i], not_before_ms ? not_before_ms[i] : 0);
		if (status[i] != AIQ_OK && failed++ == 0) {
			first = status[i];
			snprintf(why, sizeof why, "%s", aiq_error_last());
		}
	}
	if (failed)
		return aiq__err(first, "%zu of %zu messages were not accepted; first: %s", failed,
		                n, why);
	return AIQ_OK;
}

int aiq__broker_consume(aiq__broker *b, const char *const *queues, size_t nqueues,
                        unsigned prefetch)
{
	if (b == NULL || queues == NULL || nqueues == 0)
		return aiq__err(AIQ_EINVAL, "consume: no broker or no queues");
	for (size_t i = 0; i < nqueues; i++)
		if (!valid_queue(queues[i]))
			return aiq__err(AIQ_EINVAL, "consume: queue %zu has no name", i);
	return b->ops->consume(b, queues, nqueues, prefetch);
}

int aiq__broker_fetch(aiq__broker *b, aiq__delivery **out, int64_t timeout_ms)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "fetch: out is NULL");
	*out = NULL;
	if (b == NULL)
		return aiq__err(AIQ_EINVAL, "fetch: no broker");
	int rc = b->ops->fetch(b, out, timeout_ms);
	if (rc == AIQ_OK && *out == NULL)
		return aiq__err(AIQ_EBROKER, "the %s broker returned no delivery", b->ops->name);
	return rc;
}

void aiq__broker_wakeup(aiq__broker *b)
{
	if (b && b->ops->wakeup)
		b->ops->wakeup(b);
}

int aiq__broker_ack(aiq__broker *b, aiq__delivery *d)
{
	if (b == NULL || d == NULL)
		return aiq__err(AIQ_EINVAL, "ack: no broker or no delivery");
	return b->ops->ack(b, d);
}

int aiq__broker_reject(aiq__broker *b, aiq__delivery *d, bool requeue)
{
	if (b == NULL || d == NULL)
		return aiq__err(AIQ_EINVAL, "reject: no broker or no delivery");
	return b->ops->reject(b, d, requeue);
}

int aiq__broker_dead_letter(aiq__broker *b, aiq__delivery *d, const char *reason)
{
	if (b == NULL || d == NULL)
		return aiq__err(AIQ_EINVAL, "dead_letter: no broker or no delivery");
	if (!(b->ops->caps & AIQ__BROKER_CAP_DEAD_LETTER) || b->ops->dead_letter == NULL)
		return aiq__err(AIQ_EUNSUPPORTED, "the %s broker cannot dead-letter messages",
		                b->ops->name);
	return b->ops->dead_letter(b, d, reason ? reason : "");
}

int aiq__broker_purge(aiq__broker *b, const char *queue, uint64_t *removed)
{
	uint64_t n = 0;
	if (removed)
		*removed = 0;
	if (b == NULL || !valid_queue(queue))
		return aiq__err(AIQ_EINVAL, "purge: no broker or no queue name");
	int rc = b->ops->purge(b, queue, &n);
	if (rc == AIQ_OK && removed)
		*removed = n;
	return rc;
}

int aiq__broker_depth(aiq__broker *b, const char *queue, uint64_t *count)
{
	if (count)
		*count = 0;
	if (b == NULL || count == NULL || !valid_queue(queue))
		return aiq__err(AIQ_EINVAL, "depth: no broker, no count or no queue name");
	return b->ops->depth(b, queue, count);
}

int aiq__broker_ping(aiq__broker *b)
{
	if (b == NULL)
		return aiq__err(AIQ_EINVAL, "ping: no broker");
	return b->ops->ping ? b->ops->ping(b) : AIQ_OK;
}

void aiq__broker_keepalive(aiq__broker *b)
{
	if (b && b->ops->keepalive)
		b->ops->keepalive(b);
}

int aiq__broker_fetch_batch(aiq__broker *b, aiq__delivery **out, size_t max, size_t *n,
                            int64_t timeout_ms)
{
	if (n == NULL)
		return aiq__err(AIQ_EINVAL, "fetch_batch: n is NULL");
	*n = 0;
	if (b == NULL || out == NULL || max == 0)
		return aiq__err(AIQ_EINVAL, "fetch_batch: no broker, no room or max == 0");
	if (b->ops->fetch_batch)
		return b->ops->fetch_batch(b, out, max, n, timeout_ms);
	/* One delivery per call: waiting for more would only add latency. */
	int rc = b->ops->fetch(b, &out[0], timeout_ms);
	if (rc == AIQ_OK)
		*n = 1;
	return rc;
}

int aiq__broker_ack_batch(aiq__broker *b, aiq__delivery *const *ds, size_t n)
{
	if (b == NULL || (ds == NULL && n > 0))
		return aiq__err(AIQ_EINVAL, "ack_batch: no broker or no deliveries");
	if (n == 0)
		return AIQ_OK;
	if (b->ops->ack_batch)
		return b->ops->ack_batch(b, ds, n);
	int first = AIQ_OK;
	for (size_t i = 0; i < n; i++) {
		int rc = b->ops->ack(b, ds[i]);
		if (rc != AIQ_OK && first == AIQ_OK)
			first = rc;
	}
	return first;
}

/* ---- the bus (events and remote control) ---------------------------------- */

int aiq__bus_open(aiq__bus **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "no output pointer for the bus");
	*out = NULL;
	const aiq__broker_ops *ops;
	int rc = aiq__broker_lookup(&ops, url);
	if (rc != AIQ_OK)
		return rc;
	if (ops->bus_open == NULL)
		return aiq__err(AIQ_EUNSUPPORTED,
		                "the %s broker carries no Celery events or remote control",
		                ops->name);
	return ops->bus_open(out, url, cfg);
}

uint64_t aiq__broker_reconnects(const aiq__broker *b)
{
	return b ? b->reconnects : 0;
}

void aiq__bus_close(aiq__bus *bus)
{
	if (bus)
		bus->ops->close(bus);
}

int aiq__bus_publish_event(aiq__bus *bus, const char *routing_key, const char *body, size_t len,
                           const char *hostname)
{
	if (bus == NULL || !valid_queue(routing_key) || body == NULL)
		return aiq__err(AIQ_EINVAL, "publish_event: no bus, routing key or body");
	return bus->ops->publish_event(bus, routing_key, body, len, hostname ? hostname : "");
}

int aiq__bus_listen(aiq__bus *bus, const char *nodename)
{
	if (bus == NULL || !valid_queue(nodename))
		return aiq__err(AIQ_EINVAL, "listen: no bus or no node name");
	return bus->ops->listen(bus, nodename);
}

int aiq__bus_listen_events(aiq__bus *bus)
{
	if (bus == NULL)
		return aiq__err(AIQ_EINVAL, "listen_events: no bus");
	if (bus->ops->listen_events == NULL)
		return aiq__err(AIQ_EUNSUPPORTED, "this broker's bus cannot receive events");
	return bus->ops->listen_events(bus);
}

int aiq__bus_fetch(aiq__bus *bus, char **body, int64_t *clock, int64_t timeout_ms)
{
	if (body == NULL || clock == NULL)
		return aiq__err(AIQ_EINVAL, "bus fetch: no output pointers");
	*body = NULL;
	*clock = 0;
	if (bus == NULL)
		return aiq__err(AIQ_EINVAL, "bus fetch: no bus");
	return bus->ops->fetch(bus, body, clock, timeout_ms);
}

int aiq__bus_reply(aiq__bus *bus, const char *exchange, const char *routing_key, const char *body,
                   size_t len, const char *ticket, int64_t clock)
{
	if (bus == NULL || exchange == NULL || routing_key == NULL || body == NULL)
		return aiq__err(AIQ_EINVAL, "bus reply: no bus, exchange, routing key or body");
	return bus->ops->reply(bus, exchange, routing_key, body, len, ticket, clock);
}

void aiq__broker_accept_decoded(aiq__broker *b)
{
	if (b && b->ops->accept_decoded)
		b->ops->accept_decoded(b);
}

bool aiq__broker_takes_decoded(const aiq__broker *b)
{
	return b && b->ops->accept_decoded;
}

/* ---- changing the consumed queues ------------------------------------------ */

bool aiq__exchange_type_known(const char *type)
{
	static const char *const known[] = {"direct", "topic", "fanout", "headers"};
	for (size_t i = 0; type && i < sizeof known / sizeof known[0]; i++)
		if (strcmp(type, known[i]) == 0)
			return true;
	return false;
}

int aiq__broker_add_queue(aiq__broker *b, const char *queue, const aiq__queue_binding *bind)
{
	if (b == NULL || !valid_queue(queue))
		return aiq__err(AIQ_EINVAL, "add_queue: no broker or no queue name");
	aiq__queue_binding none = {NULL, NULL, NULL};
	if (bind == NULL)
		bind = &none;
	if (bind->exchange_type && *bind->exchange_type &&
	    !aiq__exchange_type_known(bind->exchange_type))
		return aiq__err(AIQ_EINVAL,
		                "add_queue: unknown exchange type '%.100s' (direct, topic, fanout "
		                "or headers)",
		                bind->exchange_type);
	if (b->ops->add_queue == NULL)
		return aiq__err(AIQ_EUNSUPPORTED,
		                "the %s broker cannot change the queues it consumes", b->ops->name);
	return b->ops->add_queue(b, queue, bind);
}

int aiq__broker_cancel_queue(aiq__broker *b, const char *queue)
{
	if (b == NULL || !valid_queue(queue))
		return aiq__err(AIQ_EINVAL, "cancel_queue: no broker or no queue name");
	if (b->ops->cancel_queue == NULL)
		return aiq__err(AIQ_EUNSUPPORTED,
		                "the %s broker cannot change the queues it consumes", b->ops->name);
	return b->ops->cancel_queue(b, queue);
}
