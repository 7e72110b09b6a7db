/*
 * Start-up checks of broker and result-store URLs: can this build open the
 * scheme at all? Answers without connecting, so programs can tell a
 * configuration that can never work (exit at once) from a service that is
 * down for now (worth waiting for).
 */
#include "broker.h"
#include "store.h"
#include "url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Every scheme an optional driver takes (kombu's spellings included), the
 * meson feature that builds it and the Debian package that feature needs.
 * `broker` / `store`: what the scheme can name. */
static const struct scheme_feature {
	const char *scheme;
	const char *feature;
	const char *package;
	bool broker, store;
} scheme_features[] = {
        {"amqp", "amqp", "librabbitmq-dev", true, false},
        {"amqps", "amqp", "librabbitmq-dev", true, false},
        {"pyamqp", "amqp", "librabbitmq-dev", true, false},
        {"librabbitmq", "amqp", "librabbitmq-dev", true, false},
        {"redis", "redis", "libhiredis-dev", true, true},
        {"rediss", "redis", "libhiredis-dev", true, true},
        {"redis+socket", "redis", "libhiredis-dev", true, true},
        {"unix", "redis", "libhiredis-dev", true, true},
        {"sentinel", "redis", "libhiredis-dev", true, true},
        {"postgresql", "postgres", "libpq-dev", false, true},
        {"postgres", "postgres", "libpq-dev", false, true},
};

static const struct scheme_feature *find_feature(const char *url, size_t len)
{
	for (size_t i = 0; i < sizeof scheme_features / sizeof scheme_features[0]; i++)
		if (strlen(scheme_features[i].scheme) == len &&
		    strncasecmp(scheme_features[i].scheme, url, len) == 0)
			return &scheme_features[i];
	return NULL;
}

/* Is the driver of `feature` built in? Its first scheme tells. */
static bool feature_built(const char *feature, bool broker)
{
	for (size_t i = 0; i < sizeof scheme_features / sizeof scheme_features[0]; i++) {
		const struct scheme_feature *f = &scheme_features[i];
		if (strcmp(f->feature, feature) != 0)
			continue;
		char url[64];
		snprintf(url, sizeof url, "%s://", f->scheme);
		return broker ? aiq__broker_lookup(&(const aiq__broker_ops *){NULL}, url) == AIQ_OK
		              : aiq__store_lookup(&(const aiq__store_ops *){NULL}, url) == AIQ_OK;
	}
	return false;
}

static int check(const char *url, bool broker)
{
	const char *what = broker ? "broker" : "result store";
	if (url == NULL)
		return aiq__err(AIQ_EINVAL, "no %s URL given", what);
	int rc = broker ? aiq__broker_lookup(&(const aiq__broker_ops *){NULL}, url)
	                : aiq__store_lookup(&(const aiq__store_ops *){NULL}, url);
	if (rc != AIQ_EUNSUPPORTED)
		return rc; /* AIQ_OK, or AIQ_EINVAL with the lookup's message */
	size_t len = aiq__url_scheme_len(url);
	int shown = (int)(len > 64 ? 64 : len);
	const struct scheme_feature *f = find_feature(url, len);
	if (f && (broker ? f->broker : f->store) && feature_built(f->feature, broker))
		return aiq__err(AIQ_EUNSUPPORTED,
		                "%s URL scheme '%.*s' is not taken by this build's %s driver", what,
		                shown, url, f->feature);
	if (f && (broker ? f->broker : f->store))
		return aiq__err(AIQ_EUNSUPPORTED,
		                "%s URL scheme '%.*s' needs the '%s' feature, which this build of "
		                "libaiqueue lacks: install %s (Debian) and rebuild "
		                "(meson setup --reconfigure -D%s=enabled)",
		                what, shown, url, f->feature, f->package, f->feature);
	if (f)
		return aiq__err(AIQ_EUNSUPPORTED, "%s URL scheme '%.*s' names a %s, not a %s", what,
		                shown, url, broker ? "result store" : "broker", what);
	return aiq__err(
	        AIQ_EUNSUPPORTED, "%s URL scheme '%.*s' is unknown (known: memory://, %s)", what,
	        shown, url,
	        broker ? "amqp://, amqps://, pyamqp://, redis://, rediss://, unix://, sentinel://"
	               : "redis://, rediss://, unix://, sentinel://, postgresql://");
}

AIQ_API int aiq_url_check_broker(const char *url)
{
	return check(url, true);
}

AIQ_API int aiq_url_check_store(const char *url)
{
	return check(url, false);
}
