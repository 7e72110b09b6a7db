/*
 * Text embeddings for similarity search (embed_int.h): the local hashed
 * 3-gram embedding and the OpenAI-compatible /embeddings client, which
 * reuses llm.c's HTTP exchange, endpoint, presets and key handling.
 */
#include "embed_int.h"

#include "config_int.h"
#ifdef AIQ_HAVE_LLM
#include "llm_int.h"
#include "url.h"
#endif

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EMBED_PATH      "/embeddings"
#define BACKOFF_MIN_MS  250
#define BACKOFF_MAX_MS  5000
#define EXCERPT_BYTES   120
#define PROVIDER_LOCAL  0
#define PROVIDER_OPENAI 1

struct aiq__embedder {
	int provider;
	size_t dims;
	char *model;
	char *url;      /* base URL + EMBED_PATH (openai) */
	char *safe_url; /* for messages */
	char *api_key;
	int64_t retries;
	int64_t timeout_ms, connect_timeout_ms, max_response_bytes, retry_after_max_ms;
};

/* ---- the local embedding ------------------------------------------------ */

/* The next code point of s[*i..len), advancing *i; an invalid byte stands
 * for itself. */
static uint32_t next_cp(const unsigned char *s, size_t len, size_t *i)
{
	uint32_t c = s[*i];
	size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
	if (n > 1 && *i + n <= len && aiq__utf8_valid((const char *)s + *i, n)) {
		c &= 0x3Fu >> (n - 1);
		for (size_t k = 1; k < n; k++)
			c = (c << 6) | (s[*i + k] & 0x3Fu);
		*i += n;
		return c;
	}
	*i += 1;
	return c;
}

/* Case-fold ASCII and Latin-1 letters; 0 for a separator (not a letter or
 * digit: blanks, punctuation, controls). Code points above Latin-1 count as
 * letters and are kept as they are. */
static uint32_t fold(uint32_t c)
{
	if (c >= 'A' && c <= 'Z')
		return c + 32;
	if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
		return c;
	if (c >= 0xC0 && c <= 0xDE && c != 0xD7)
		return c + 32;
	if ((c >= 0xDF && c <= 0xFF && c != 0xF7) || c == 0xAA || c == 0xB5 || c == 0xBA)
		return c;
	return c > 0xFF ? c : 0;
}

static uint64_t fnv1a(const uint32_t g[3])
{
	uint64_t h = UINT64_C(14695981039346656037);
	for (int k = 0; k < 3; k++)
		for (int b = 0; b < 4; b++) {
			h ^= (g[k] >> (8 * b)) & 0xFF;
			h *= UINT64_C(1099511628211);
		}
	return h;
}

static double normalise(double *vec, size_t dims)
{
	double sum = 0;
	for (size_t i = 0; i < dims; i++)
		sum += vec[i] * vec[i];
	double norm = sqrt(sum);
	if (norm > 0)
		for (size_t i = 0; i < dims; i++)
			vec[i] /= norm;
	return norm;
}

int aiq__embed_local(double *vec, size_t dims, const char *text, size_t len)
{
	memset(vec, 0, dims * sizeof *vec);
	const unsigned char *s = (const unsigned char *)(text ? text : "");
	uint32_t g[3] = {' ', ' ', ' '}; /* the window; starts on the leading pad */
	size_t have = 1, i = 0;
	bool last_sep = true, any = false;
	for (;;) {
		uint32_t c;
		if (i < len) {
			c = fold(next_cp(s, len, &i));
			if (c == 0) {
				if (last_sep)
					continue; /* a run of separators is one space */
				c = ' ';
			}
		} else if (!last_sep) {
			c = ' '; /* the trailing pad */
		} else {
			break;
		}
		last_sep = c == ' ';
		any = any || !last_sep;
		g[0] = g[1];
		g[1] = g[2];
		g[2] = c;
		if (++have >= 3) {
			uint64_t h = fnv1a(g);
			vec[(size_t)(h % dims)] += (h >> 63) ? -1.0 : 1.0;
		}
	}
	if (!any || normalise(vec, dims) == 0)
		return aiq__err(AIQ_EINVAL, "nothing to embed: the text has no letter or digit");
	return AIQ_OK;
}

double aiq__embed_cosine(const double *a, const double *b, size_t dims)
{
	double ab = 0, aa = 0, bb = 0;
	for (size_t i = 0; i < dims; i++) {
		ab += a[i] * b[i];
		aa += a[i] * a[i];
		bb += b[i] * b[i];
	}
	return aa > 0 && bb > 0 ? ab / (sqrt(aa) * sqrt(bb)) : 0;
}

/* ---- the /embeddings answer --------------------------------------------- */

/* An excerpt of untrusted text on one line, safe for a message. */
static void excerpt(char *out, size_t size, const char *s, size_t len)
{
	size_t n = len < EXCERPT_BYTES ? len : EXCERPT_BYTES, o = 0;
	for (size_t i = 0; i < n && o + 1 < size; i++) {
		unsigned char c = (unsigned char)s[i];
		out[o++] = (char)(c < 0x20 || c >= 0x7F ? '?' : c);
	}
	out[o] = '\0';
}

int aiq__embed_parse_reply(double *vec, size_t dims, const char *body, size_t len,
                           const char *where)
{
	char ex[EXCERPT_BYTES + 1];
	json_error_t jerr;
	json_t *root = json_loadb(body ? body : "", len, 0, &jerr);
	if (root == NULL) {
		excerpt(ex, sizeof ex, body ? body : "", len);
		return aiq__err(
		        AIQ_EJSON,
		        "the answer from %s is not JSON (%s at byte %d): \"%s\"; is the URL "
		        "an OpenAI-compatible /v1 endpoint?",
		        where, jerr.text, jerr.position, ex);
	}
	json_t *emb =
	        json_object_get(json_array_get(json_object_get(root, "data"), 0), "embedding");
	int rc = AIQ_OK;
	if (!json_is_array(emb)) {
		excerpt(ex, sizeof ex, body, len);
		rc = aiq__err(AIQ_EPROTO,
		              "the answer from %s is not an embeddings answer (no "
		              "data[0].embedding array): \"%s\"",
		              where, ex);
	} else if (json_array_size(emb) != dims) {
		rc = aiq__err(AIQ_EPROTO,
		              "the model at %s answered %zu dimensions, embed.dims is %zu: set "
		              "embed.dims to the model's size",
		              where, json_array_size(emb), dims);
	} else {
		for (size_t i = 0; rc == AIQ_OK && i < dims; i++) {
			json_t *v = json_array_get(emb, i);
			if (!json_is_number(v) || !isfinite(json_number_value(v)))
				rc = aiq__err(AIQ_EPROTO,
				              "the answer from %s has a non-number at "
				              "data[0].embedding[%zu]",
				              where, i);
			else
				vec[i] = json_number_value(v);
		}
		if (rc == AIQ_OK && normalise(vec, dims) == 0)
			rc = aiq__err(AIQ_EPROTO, "the answer from %s is a zero vector", where);
	}
	json_decref(root);
	return rc;
}

/* ---- settings ------------------------------------------------------------ */

void aiq__embedder_free(aiq__embedder *e)
{
	if (e == NULL)
		return;
	free(e->model);
	free(e->url);
	free(e->safe_url);
	if (e->api_key) {
		memset(e->api_key, 0, strlen(e->api_key));
		free(e->api_key);
	}
	free(e);
}

#ifdef AIQ_HAVE_LLM
static int openai_settings(aiq__embedder *e, const aiq_config *cfg)
{
	char *base = NULL, *key = NULL;
	int rc = aiq__llm_endpoint(&base, &key, cfg, aiq__cfg_str(cfg, AIQ_CFG_EMBED_PRESET));
	if (rc != AIQ_OK)
		return rc;
	const char *url = aiq__cfg_str(cfg, AIQ_CFG_EMBED_URL);
	const char *ekey = aiq__cfg_str(cfg, AIQ_CFG_EMBED_API_KEY);
	size_t n = strlen(*url ? url : base);
	while (n > 0 && (*url ? url : base)[n - 1] == '/')
		n--;
	e->url = aiq__asprintf("%.*s%s", (int)n, *url ? url : base, EMBED_PATH);
	e->safe_url = e->url ? aiq__url_redact(e->url) : NULL;
	e->api_key = aiq__strdup(*ekey ? ekey : key);
	if (key) {
		memset(key, 0, strlen(key));
		free(key);
	}
	free(base);
	if (!e->url || !e->safe_url || !e->api_key)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	e->retries = aiq__cfg_int(cfg, AIQ_CFG_EMBED_RETRIES);
	e->timeout_ms = aiq__cfg_int(cfg, AIQ_CFG_LLM_TIMEOUT_MS);
	e->connect_timeout_ms = aiq__cfg_int(cfg, AIQ_CFG_LLM_CONNECT_TIMEOUT_MS);
	e->max_response_bytes = aiq__cfg_int(cfg, AIQ_CFG_LLM_MAX_RESPONSE_BYTES);
	e->retry_after_max_ms = aiq__cfg_int(cfg, AIQ_CFG_LLM_RETRY_AFTER_MAX_MS);
	return aiq__llm_start();
}
#endif

int aiq__embedder_new(aiq__embedder **out, const aiq_config *cfg)
{
	*out = NULL;
	aiq__embedder *e = calloc(1, sizeof *e);
	if (e == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	e->dims = (size_t)aiq__cfg_int(cfg, AIQ_CFG_EMBED_DIMS);
	bool openai = strcmp(aiq__cfg_str(cfg, AIQ_CFG_EMBED_PROVIDER), "openai") == 0;
	e->provider = openai ? PROVIDER_OPENAI : PROVIDER_LOCAL;
	e->model = aiq__strdup(openai ? aiq__cfg_str(cfg, AIQ_CFG_EMBED_MODEL)
	                              : AIQ__EMBED_LOCAL_MODEL);
	int rc = e->model ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
#ifdef AIQ_HAVE_LLM
	if (rc == AIQ_OK && openai)
		rc = openai_settings(e, cfg);
#else
	if (rc == AIQ_OK && openai)
		rc = aiq__err(AIQ_EUNSUPPORTED,
		              "embed.provider 'openai' needs libcurl, which this libaiqueue was "
		              "built without; use 'local'");
#endif
	if (rc != AIQ_OK) {
		aiq__embedder_free(e);
		return rc;
	}
	*out = e;
	return AIQ_OK;
}

size_t aiq__embedder_dims(const aiq__embedder *e)
{
	return e->dims;
}

const char *aiq__embedder_model(const aiq__embedder *e)
{
	return e->model;
}

/* ---- the /embeddings client ---------------------------------------------- */

#ifdef AIQ_HAVE_LLM
static void sleep_ms(int64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* A failed transfer worth another attempt: not a bad URL, TLS setup or
 * memory (curl's codes 1, 3, 4, 27, 60, 77, 58). */
static bool curl_transient(int rc)
{
	static const int fatal[] = {1, 3, 4, 27, 58, 60, 77};
	for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
		if (rc == fatal[i])
			return false;
	return true;
}

static int openai_run(const aiq__embedder *e, double *vec, const char *text, size_t len)
{
	json_t *req = json_pack("{s:s, s:s%}", "model", e->model, "input", text, len);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (body == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory preparing the embeddings request");
	struct aiq__llm_request r = {
	        .url = e->url,
	        .api_key = e->api_key,
	        .body = body,
	        .timeout_ms = e->timeout_ms,
	        .connect_timeout_ms = e->connect_timeout_ms,
	        .max_response_bytes = e->max_response_bytes,
	        .retry_after_max_ms = e->retry_after_max_ms,
	};
	char last[512] = "";
	int rc = AIQ_OK;
	int64_t backoff = BACKOFF_MIN_MS;
	for (int64_t attempt = 0;; attempt++) {
		struct aiq__llm_reply a;
		rc = aiq__llm_post(&a, &r);
		if (rc != AIQ_OK) {
			aiq__llm_reply_clear(&a);
			break;
		}
		bool retry = false;
		int64_t wait = -1;
		char detail[EXCERPT_BYTES + 8];
		if (a.curl_rc != 0) {
			snprintf(last, sizeof last, "cannot reach %s: %s", e->safe_url,
			         a.curl_error);
			retry = curl_transient(a.curl_rc) && !a.over_limit;
			rc = aiq__err(a.over_limit ? AIQ_ETOOBIG : AIQ_ERROR, "%s%s", last,
			              a.over_limit ? " (over llm.max_response_bytes)" : "");
		} else if (a.status < 200 || a.status > 299) {
			aiq__llm_server_message(detail, sizeof detail, a.body, a.len);
			snprintf(last, sizeof last, "HTTP %ld from %s: %s", a.status, e->safe_url,
			         detail);
			aiq__llm_scrub_key(last, e->api_key);
			retry = aiq__llm_status_transient(a.status);
			wait = a.retry_after_ms;
			rc = aiq__err(AIQ_ERROR, "%s%s", last,
			              a.status == 401 || a.status == 403
			                      ? " (set embed.api_key or AIQUEUE_LLM_API_KEY)"
			              : a.status == 404
			                      ? " (check embed.model and that the URL ends "
			                        "in /v1)"
			                      : "");
		} else {
			rc = aiq__embed_parse_reply(vec, e->dims, a.body, a.len, e->safe_url);
		}
		aiq__llm_reply_clear(&a);
		if (!retry)
			break;
		if (attempt >= e->retries) {
			rc = aiq__err(AIQ_ELIMIT, "embeddings: gave up after %lld attempts: %s",
			              (long long)attempt + 1, last);
			break;
		}
		aiq__log(AIQ_LOG_INFO, "embeddings: retrying: %s", last);
		sleep_ms(wait >= 0 ? wait : backoff);
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
	}
	free(body);
	return rc;
}
#endif

int aiq__embedder_run(const aiq__embedder *e, double *vec, const char *text, size_t len)
{
	if (e == NULL || vec == NULL || text == NULL)
		return aiq__err(AIQ_EINVAL, "embedding needs an embedder, a vector and a text");
#ifdef AIQ_HAVE_LLM
	if (e->provider == PROVIDER_OPENAI) {
		if (!aiq__utf8_valid(text, len))
			return aiq__err(AIQ_EINVAL, "the text to embed is not valid UTF-8");
		return openai_run(e, vec, text, len);
	}
#endif
	return aiq__embed_local(vec, e->dims, text, len);
}
