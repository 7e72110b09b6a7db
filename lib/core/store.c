/*
 * Result-store registry: maps a URL scheme to a driver table.
 */
#include "store.h"

#include "url.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifdef AIQ_HAVE_REDIS
extern const aiq__store_ops aiq__redis_store_ops;
#endif
#ifdef AIQ_HAVE_POSTGRES
extern const aiq__store_ops aiq__postgres_store_ops;
#endif

/* Stores built into this library; optional ones compile out. */
static const aiq__store_ops *const store_drivers[] = {
        &aiq__memory_store_ops,
#ifdef AIQ_HAVE_REDIS
        &aiq__redis_store_ops,
#endif
#ifdef AIQ_HAVE_POSTGRES
        &aiq__postgres_store_ops,
#endif
};

int aiq__store_lookup(const aiq__store_ops **out, const char *url)
{
	if (out == NULL || url == NULL)
		return aiq__err(AIQ_EINVAL, "no result store URL given");
	*out = NULL;
	size_t len = aiq__url_scheme_len(url);
	if (len == 0) {
		char *safe = aiq__url_redact(url);
		int rc = aiq__err(
		        AIQ_EINVAL,
		        "result store URL '%.200s' has no scheme (expected e.g. memory://, "
		        "redis://, postgresql://)",
		        safe ? safe : "?");
		free(safe);
		return rc;
	}
	for (size_t i = 0; i < sizeof store_drivers / sizeof store_drivers[0]; i++) {
		if (aiq__url_scheme_in(store_drivers[i]->schemes, url, len)) {
			*out = store_drivers[i];
			return AIQ_OK;
		}
	}
	return aiq__err(AIQ_EUNSUPPORTED,
	                "result store URL scheme '%.*s' is unknown or not built into this library",
	                (int)(len > 64 ? 64 : len), url);
}

int aiq__store_open(aiq__store **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "no output pointer for the result store");
	*out = NULL;
	const aiq__store_ops *ops;
	int rc = aiq__store_lookup(&ops, url);
	if (rc != AIQ_OK)
		return rc;
	return ops->open(out, url, cfg);
}

void aiq__store_close(aiq__store *s)
{
	if (s == NULL)
		return;
	s->ops->close(s);
}

int aiq__store_put_batch(aiq__store *s, const aiq_result *const *rs, size_t n, int *status)
{
	if (s == NULL || ((rs == NULL || status == NULL) && n > 0))
		return aiq__err(AIQ_EINVAL, "put_batch: no store, results or status array");
	if (n == 0)
		return AIQ_OK;
	if (s->ops->put_batch)
		return s->ops->put_batch(s, rs, n, status);
	for (size_t i = 0; i < n; i++)
		status[i] = s->ops->put(s, rs[i]);
	return AIQ_OK;
}
