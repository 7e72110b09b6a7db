/*
 * Broker registry: maps a URL scheme to a driver table, and the helpers every
 * driver shares (delivery release, URL redaction for logs).
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

/* Length of the RFC 3986 scheme before "://", or 0 when there is none. */
static size_t url_scheme_len(const char *url)
{
	const char *sep = url ? strstr(url, "://") : NULL;
	if (sep == NULL || sep == url)
		return 0;
	for (const char *p = url; p < sep; p++) {
		char c = *p;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (p > url && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'));
		if (!ok)
			return 0;
	}
	return (size_t)(sep - url);
}

static bool scheme_matches(const char *const *schemes, const char *url, size_t len)
{
	for (; *schemes; schemes++)
		if (strlen(*schemes) == len && strncasecmp(*schemes, url, len) == 0)
			return true;
	return false;
}

int aiq__broker_lookup(const aiq__broker_ops **out, const char *url)
{
	if (out == NULL || url == NULL)
		return aiq__err(AIQ_EINVAL, "no broker URL given");
	*out = NULL;
	size_t len = url_scheme_len(url);
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
		if (scheme_matches(broker_drivers[i]->schemes, url, len)) {
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

/* Append n bytes of s to buf at *pos (buf is large enough by construction). */
static void put_bytes(char *buf, size_t *pos, const char *s, size_t n)
{
	memcpy(buf + *pos, s, n);
	*pos += n;
}

/*
 * Replace the password of scheme://user:password@host (and the value of a
 * "password=" query parameter, which libpq URLs allow) with "***".
 *
 * The userinfo ends at the LAST '@' before any '?' or '#': passwords often
 * carry an unencoded '@' or '/', and over-redacting a rare '@' in a path is
 * better than printing part of a secret.
 */
char *aiq__url_redact(const char *url)
{
	if (url == NULL)
		return NULL;
	size_t len = strlen(url);
	/* Each "***" grows the text by at most 3 bytes (an empty secret): one
	 * userinfo password and at most len/9 "password=" parameters. */
	char *buf = malloc(len + 3 + 3 * (len / 9 + 1) + 1);
	if (buf == NULL)
		return NULL;
	size_t pos = 0;
	const char *sep = strstr(url, "://");
	if (sep == NULL) {
		memcpy(buf, url, len + 1);
		return buf;
	}
	const char *auth = sep + 3;
	const char *end = auth + strcspn(auth, "?#");
	const char *at = NULL;
	for (const char *p = auth; p < end; p++)
		if (*p == '@')
			at = p;
	const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
	if (colon) {
		put_bytes(buf, &pos, url, (size_t)(colon + 1 - url));
		put_bytes(buf, &pos, "***", 3);
		put_bytes(buf, &pos, at, (size_t)(end - at));
	} else {
		put_bytes(buf, &pos, url, (size_t)(end - url));
	}
	/* Query: redact password=... values; keep everything else as it is. */
	const char *p = end;
	if (*p == '?') {
		put_bytes(buf, &pos, p, 1);
		p++;
		while (*p && *p != '#') {
			size_t n = strcspn(p, "&#");
			if (n >= 9 && strncasecmp(p, "password=", 9) == 0) {
				put_bytes(buf, &pos, p, 9);
				put_bytes(buf, &pos, "***", 3);
			} else {
				put_bytes(buf, &pos, p, n);
			}
			p += n;
			if (*p == '&')
				put_bytes(buf, &pos, p++, 1);
		}
	}
	put_bytes(buf, &pos, p, strlen(p));
	buf[pos] = '\0';
	return buf;
}

AIQ_API int aiq_url_redact(char **out, const char *url)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_url_redact: out is NULL");
	*out = NULL;
	if (url == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_url_redact: url is NULL");
	*out = aiq__url_redact(url);
	if (*out == NULL)
		return aiq__err(AIQ_ENOMEM, "aiq_url_redact: out of memory");
	return AIQ_OK;
}
