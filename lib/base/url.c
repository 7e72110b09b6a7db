/*
 * URL parsing with kombu's rules and the library's URL redactor (url.h says
 * what is accepted and why).
 */
#include "url.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- a growable string, for the redactor -------------------------------- */

typedef struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (p == NULL) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

/* ---- lexical helpers ---------------------------------------------------- */

/* Length of the RFC 3986 scheme when s starts with "scheme://", else 0. */
static size_t scheme_len(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
	                 (i > 0 && ((s[i] >= '0' && s[i] <= '9') || s[i] == '+' || s[i] == '-' ||
	                            s[i] == '.'))))
		i++;
	if (i == 0 || i + 3 > n || memcmp(s + i, "://", 3) != 0)
		return 0;
	return i;
}

size_t aiq__url_scheme_len(const char *url)
{
	return url ? scheme_len(url, strlen(url)) : 0;
}

bool aiq__url_scheme_in(const char *const *schemes, const char *url, size_t len)
{
	for (; *schemes; schemes++)
		if (strlen(*schemes) == len && strncasecmp(*schemes, url, len) == 0)
			return true;
	return false;
}

size_t aiq__url_segment_len(const char *s)
{
	size_t n = strlen(s);
	for (size_t i = 0; i < n; i++)
		if (s[i] == ';' && scheme_len(s + i + 1, n - i - 1) > 0)
			return i;
	return n;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode s[0..n) (and '+' as a space when plus). *nul is set when
 * the text encodes a NUL byte; the result is then freed and NULL. */
static char *decode(const char *s, size_t n, bool plus, bool *nul)
{
	char *out = malloc(n + 1);
	if (out == NULL)
		return NULL;
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		int hi, lo;
		if (s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
		    (lo = hexval(s[i + 2])) >= 0) {
			char c = (char)(hi * 16 + lo);
			if (c == '\0') {
				free(out);
				*nul = true;
				return NULL;
			}
			out[j++] = c;
			i += 2;
		} else {
			out[j++] = (char)(plus && s[i] == '+' ? ' ' : s[i]);
		}
	}
	out[j] = '\0';
	return out;
}

/* ---- parsing ------------------------------------------------------------ */

void aiq__url_clear(aiq__url *u)
{
	if (u == NULL)
		return;
	free(u->scheme);
	free(u->user);
	if (u->password)
		memset(u->password, 0, strlen(u->password));
	free(u->password);
	free(u->host);
	free(u->path);
	for (size_t i = 0; i < u->nparams; i++) {
		free(u->params[i].key);
		if (u->params[i].value)
			memset(u->params[i].value, 0, strlen(u->params[i].value));
		free(u->params[i].value);
	}
	free(u->params);
	free(u->redacted);
	memset(u, 0, sizeof *u);
}

const char *aiq__url_query(const aiq__url *u, const char *key)
{
	for (size_t i = u->nparams; i > 0; i--)
		if (strcmp(u->params[i - 1].key, key) == 0)
			return u->params[i - 1].value;
	return NULL;
}

/* Decode one component into *out (NULL when empty). */
static int component(char **out, const aiq__url *u, const char *s, size_t n, bool plus,
                     const char *what)
{
	*out = NULL;
	if (n == 0)
		return AIQ_OK;
	bool nul = false;
	*out = decode(s, n, plus, &nul);
	if (nul)
		return aiq__err(AIQ_EINVAL,
		                "the %s of URL '%.200s' holds a percent-encoded NUL (%%00)", what,
		                u->redacted);
	if (*out == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a URL");
	return AIQ_OK;
}

static int parse_query(aiq__url *u, const char *q, size_t n)
{
	const char *end = q + n;
	while (q < end) {
		const char *amp = memchr(q, '&', (size_t)(end - q));
		const char *pe = amp ? amp : end;
		const char *eq = memchr(q, '=', (size_t)(pe - q));
		if (eq && eq + 1 < pe && eq > q) {
			aiq__url_param *ps = realloc(u->params, (u->nparams + 1) * sizeof *ps);
			if (ps == NULL)
				return aiq__err(AIQ_ENOMEM, "out of memory parsing a URL");
			u->params = ps;
			aiq__url_param *p = &u->params[u->nparams];
			p->key = p->value = NULL;
			u->nparams++;
			int rc = component(&p->key, u, q, (size_t)(eq - q), true, "query");
			if (rc == AIQ_OK)
				rc = component(&p->value, u, eq + 1, (size_t)(pe - eq - 1), true,
				               "query");
			if (rc != AIQ_OK)
				return rc;
		}
		q = amp ? amp + 1 : end;
	}
	return AIQ_OK;
}

static int parse_port(aiq__url *u, const char *s, size_t n)
{
	if (n == 0)
		return AIQ_OK;
	long v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || v > 65535) {
			v = -1;
			break;
		}
		v = v * 10 + (s[i] - '0');
	}
	if (v < 1 || v > 65535)
		return aiq__err(
		        AIQ_EINVAL,
		        "bad port '%.*s' in URL '%.200s' (expected a number from 1 to 65535)",
		        (int)(n > 20 ? 20 : n), s, u->redacted);
	u->port = (int)v;
	return AIQ_OK;
}

static int parse_hostport(aiq__url *u, const char *s, size_t n)
{
	const char *end = s + n;
	const char *colon;
	if (n > 0 && *s == '[') {
		const char *rb = memchr(s, ']', n);
		if (rb == NULL)
			return aiq__err(AIQ_EINVAL,
			                "unbalanced '[' in the host of URL '%.200s' (write an IPv6 "
			                "address as [::1]:port)",
			                u->redacted);
		if (rb + 1 < end && rb[1] != ':')
			return aiq__err(AIQ_EINVAL,
			                "unexpected text after ']' in the host of URL '%.200s'",
			                u->redacted);
		if (rb == s + 1)
			return aiq__err(AIQ_EINVAL, "empty IPv6 address '[]' in URL '%.200s'",
			                u->redacted);
		int rc = component(&u->host, u, s + 1, (size_t)(rb - s - 1), false, "host");
		if (rc != AIQ_OK)
			return rc;
		colon = rb + 1 < end ? rb + 1 : NULL;
	} else {
		colon = memchr(s, ':', n);
		if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1)))
			return aiq__err(
			        AIQ_EINVAL,
			        "host of URL '%.200s' has several ':' (write an IPv6 address "
			        "in brackets, [::1]:port)",
			        u->redacted);
		if (memchr(s, ']', n))
			return aiq__err(AIQ_EINVAL, "unbalanced ']' in the host of URL '%.200s'",
			                u->redacted);
		int rc = component(&u->host, u, s, (size_t)((colon ? colon : end) - s), false,
		                   "host");
		if (rc != AIQ_OK)
			return rc;
	}
	return colon ? parse_port(u, colon + 1, (size_t)(end - colon - 1)) : AIQ_OK;
}

int aiq__url_parse(aiq__url *u, const char *url)
{
	memset(u, 0, sizeof *u);
	if (url == NULL)
		return aiq__err(AIQ_EINVAL, "no URL given");
	u->redacted = aiq__url_redact(url);
	if (u->redacted == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a URL");
	size_t len = strlen(url);
	size_t sl = scheme_len(url, len);
	if (sl == 0)
		return aiq__err(AIQ_EINVAL, "URL '%.200s' has no scheme (expected scheme://...)",
		                u->redacted);
	if ((u->scheme = aiq__strndup(url, sl)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a URL");
	for (char *p = u->scheme; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	const char *auth = url + sl + 3;
	const char *end = url + len;
	const char *at = NULL;
	for (const char *p = auth; p < end; p++)
		if (*p == '@')
			at = p;
	int rc;
	if (at) {
		const char *colon = memchr(auth, ':', (size_t)(at - auth));
		u->bare_user = colon == NULL;
		const char *uend = colon ? colon : at;
		rc = component(&u->user, u, auth, (size_t)(uend - auth), false, "user name");
		if (rc == AIQ_OK && colon)
			rc = component(&u->password, u, colon + 1, (size_t)(at - colon - 1), false,
			               "password");
		if (rc != AIQ_OK)
			return rc;
	}
	const char *hp = at ? at + 1 : auth;
	const char *hend = hp + strcspn(hp, "/?#");
	rc = parse_hostport(u, hp, (size_t)(hend - hp));
	if (rc != AIQ_OK)
		return rc;
	const char *rest = hend;
	if (*rest == '/') {
		size_t pn = strcspn(rest + 1, "?#");
		rc = component(&u->path, u, rest + 1, pn, false, "path");
		if (rc != AIQ_OK)
			return rc;
		if (u->path == NULL && (u->path = aiq__strdup("")) == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory parsing a URL");
		rest += 1 + pn;
	}
	if (*rest == '?') {
		size_t qn = strcspn(rest + 1, "#");
		rc = parse_query(u, rest + 1, qn);
		if (rc != AIQ_OK)
			return rc;
	}
	return AIQ_OK;
}

/* ---- redaction ---------------------------------------------------------- */

/* Query parameters whose values are secrets. */
static const char *const secret_keys[] = {
        "password",        "passwd",     "pwd",  "pass", "secret",        "token", "access_token",
        "api_key",         "apikey",     "auth", "key",  "client_secret", "sig",   "signature",
        "x-amz-signature", "auth_token", NULL,
};

static bool secret_key(const char *k, size_t n)
{
	for (const char *const *s = secret_keys; *s; s++)
		if (strlen(*s) == n && strncasecmp(*s, k, n) == 0)
			return true;
	return false;
}

/* Schemes whose userinfo without ':' is a user name, not a secret: shown,
 * since it helps to tell which account a server refused. Everywhere else
 * (redis, sentinel, https tokens) it is hidden. */
static bool user_only_scheme(const char *s, size_t n)
{
	static const char *const names[] = {"amqp",     "amqps",      "pyamqp", "librabbitmq",
	                                    "postgres", "postgresql", NULL};
	for (const char *const *p = names; *p; p++)
		if (strlen(*p) == n && strncasecmp(*p, s, n) == 0)
			return true;
	return false;
}

static void redact_one(sbuf *b, const char *s, size_t n)
{
	size_t sl = scheme_len(s, n);
	if (sl == 0) {
		sb_put(b, s, n);
		return;
	}
	const char *auth = s + sl + 3;
	const char *end = s + n;
	const char *at = NULL;
	for (const char *p = auth; p < end; p++)
		if (*p == '@')
			at = p;
	sb_put(b, s, (size_t)(auth - s));
	if (at) {
		const char *colon = memchr(auth, ':', (size_t)(at - auth));
		if (colon)
			sb_put(b, auth, (size_t)(colon + 1 - auth));
		else if (user_only_scheme(s, sl))
			sb_put(b, auth, (size_t)(at - auth));
		if (colon || !user_only_scheme(s, sl))
			sb_put(b, "***", 3);
	}
	const char *p = at ? at : auth;
	const char *q = memchr(p, '?', (size_t)(end - p));
	if (q == NULL) {
		sb_put(b, p, (size_t)(end - p));
		return;
	}
	sb_put(b, p, (size_t)(q + 1 - p));
	p = q + 1;
	while (p < end && *p != '#') {
		size_t pn = strcspn(p, "&#");
		if (p + pn > end)
			pn = (size_t)(end - p);
		const char *eq = memchr(p, '=', pn);
		if (eq && secret_key(p, (size_t)(eq - p))) {
			sb_put(b, p, (size_t)(eq + 1 - p));
			sb_put(b, "***", 3);
		} else {
			sb_put(b, p, pn);
		}
		p += pn;
		if (p < end && *p == '&')
			sb_put(b, p++, 1);
	}
	sb_put(b, p, (size_t)(end - p));
}

char *aiq__url_redact(const char *url)
{
	if (url == NULL)
		return NULL;
	sbuf b = {0};
	sb_put(&b, "", 0);
	const char *p = url;
	while (*p) {
		size_t n = aiq__url_segment_len(p);
		redact_one(&b, p, n);
		p += n;
		if (*p == ';')
			sb_put(&b, p++, 1);
	}
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
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
