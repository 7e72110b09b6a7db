/*
 * Broker and store URLs as kombu (and so Celery) reads them, and the one
 * redactor that hides their secrets in every message the library prints.
 *
 * Grammar (one URL; a list is several joined by ';', see aiq__url_segment_len):
 *
 *   scheme://[userinfo@]host[:port][/path][?query][#fragment]
 *
 *  - userinfo is everything between "://" and the LAST '@' of the URL, so a
 *    password may hold unencoded '@', ':', '/', '?' and '#'; an '@' anywhere
 *    after the host (a query value) must be written %40. userinfo splits at
 *    its first ':' into user and password; both are percent-decoded.
 *  - host is percent-decoded; an IPv6 address is written in brackets,
 *    "[::1]:5672", and comes back without them. Empty host = not given.
 *  - port is 1..65535; "host:" is the same as no port.
 *  - path is the text after the first '/' following the host, decoded:
 *    "amqp://h//" has path "/", "amqp://h/" has path "", "amqp://h" none.
 *  - query is parsed like Python's parse_qsl: pairs split at '&', '+' is a
 *    space, keys and values percent-decoded, pairs with an empty value (or
 *    no '=') dropped; a repeated key keeps its last value.
 *  - "%00" anywhere is refused: no component may hold a NUL byte. A '%' not
 *    followed by two hex digits stays as it is (as Python's unquote does).
 */
#ifndef AIQ_URL_H
#define AIQ_URL_H

#include "internal.h"

typedef struct aiq__url_param {
	char *key, *value;
} aiq__url_param;

typedef struct aiq__url {
	char *scheme;   /* lower-cased */
	char *user;     /* NULL when absent or empty */
	char *password; /* NULL when absent or empty */
	bool bare_user; /* userinfo without ':' ("redis://SECRET@host") */
	char *host;     /* NULL when empty */
	int port;       /* 0 when not given */
	char *path;     /* NULL when there is no '/' after the host */
	aiq__url_param *params;
	size_t nparams;
	char *redacted; /* aiq__url_redact() of the input, for messages */
} aiq__url;

/* Parse one URL into *u (which the caller clears with aiq__url_clear, also
 * after a failure). AIQ_OK, AIQ_EINVAL with a message naming the redacted
 * URL and what is wrong, or AIQ_ENOMEM. */
int aiq__url_parse(aiq__url *u, const char *url);
void aiq__url_clear(aiq__url *u);

/* The value of query parameter `key`, or NULL. */
const char *aiq__url_query(const aiq__url *u, const char *key);

/* Length of the scheme when url starts with "scheme://" (RFC 3986 scheme
 * characters), else 0. */
size_t aiq__url_scheme_len(const char *url);

/* True when the first len bytes of url name one of the NULL-terminated
 * schemes (ASCII case ignored): how the broker and store registries pick a
 * driver. */
bool aiq__url_scheme_in(const char *const *schemes, const char *url, size_t len);

/* Length of the first URL of a ';'-separated list (kombu's failover lists,
 * "sentinel://h1;sentinel://h2"): a ';' ends a URL only when the next
 * URL's "scheme://" follows it, so a ';' in a password stays in it. */
size_t aiq__url_segment_len(const char *s);

/* A copy of `url` (a URL or a ';'-separated list) with every secret replaced
 * by "***": the password of each userinfo (the whole userinfo when it has
 * no ':', since Redis reads "redis://SECRET@host" as a password; only for
 * amqp and postgresql schemes is a lone name a user, and shown) and the
 * value of query parameters that carry secrets (password, token, api_key,
 * ...). Text that is not a URL comes back unchanged. NULL when url is NULL
 * or memory runs out. Free with free(). */
char *aiq__url_redact(const char *url);

#endif /* AIQ_URL_H */
