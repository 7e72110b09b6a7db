/*
 * Broker registry: maps a URL scheme to a driver table, and the helpers every
 * driver shares (delivery release).
 */
#include "broker.h"

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
