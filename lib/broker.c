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
