/*
 * String-keyed configuration. Every key is declared once in `keys` below
 * with its type, default and what it accepts (an integer range, or for a
 * string key the function that checks it); a configuration is a flat array
 * of values parallel to that table. Every setter goes through the same
 * checks, so a value that is stored is a value the library can use.
 */
#include "config_int.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum key_type { KEY_STR, KEY_INT, KEY_BOOL };

/* Checks a string value for `key` (already known to be valid UTF-8):
 * AIQ_OK, or AIQ_EINVAL with a message naming the key and what it takes. */
typedef int (*str_check_fn)(const char *key, const char *value);

struct key_def {
	const char *name;
	enum key_type type;
	const char *def_str; /* KEY_STR default */
	int64_t def_int;     /* KEY_INT / KEY_BOOL default */
	int64_t min, max;    /* KEY_INT bounds */
	str_check_fn check;  /* KEY_STR: what the value must be */
};

static int check_text(const char *key, const char *value);
static int check_line(const char *key, const char *value);
static int check_hostname(const char *key, const char *value);
static int check_name(const char *key, const char *value);
static int check_queue_list(const char *key, const char *value);
static int check_url(const char *key, const char *value);
static int check_url_or_empty(const char *key, const char *value);
static int check_http_url(const char *key, const char *value);
static int check_queue_type(const char *key, const char *value);
static int check_temperature(const char *key, const char *value);
static int check_presets(const char *key, const char *value);

/* STR: any UTF-8 text; STRV: text that `check` accepts. */
#define STR(n, d)                                                                                  \
	{                                                                                          \
		n, KEY_STR, d, 0, 0, 0, check_text                                                 \
	}
#define STRV(n, d, check)                                                                          \
	{                                                                                          \
		n, KEY_STR, d, 0, 0, 0, check                                                      \
	}
#define INT(n, d, lo, hi)                                                                          \
	{                                                                                          \
		n, KEY_INT, NULL, d, lo, hi, NULL                                                  \
	}
#define BOOL(n, d)                                                                                 \
	{                                                                                          \
		n, KEY_BOOL, NULL, d, 0, 1, NULL                                                   \
	}
#define DAY_S   86400
#define HOUR_MS (3600 * 1000)

static const struct key_def keys[] = {
        STRV("broker.url", "memory://", check_url),
        STRV("result.url", "memory://", check_url),
        STRV("queue", "celery", check_name),
        INT("result.expires_s", DAY_S, 0, INT64_C(10) * 365 * DAY_S),
        BOOL("result.track_started", 1),
        INT("worker.concurrency", 0, 0, 1024),
        INT("worker.prefetch", 0, 0, 1000000),
        INT("worker.prefetch_multiplier", 4, 1, 1000), /* used when worker.prefetch is 0 */
        STRV("worker.queues", "", check_queue_list),
        STRV("worker.hostname", "", check_hostname),
        INT("worker.eta_horizon_ms", 2000, 0, HOUR_MS),
        INT("task.max_retries", 3, 0, 1000000),
        INT("task.retry_backoff_ms", 1000, 0, INT64_C(24) * HOUR_MS),
        INT("task.retry_backoff_max_ms", 600000, 0, INT64_C(7) * 24 * HOUR_MS),
        BOOL("task.retry_jitter", 1),
        INT("task.soft_time_limit_ms", 0, 0, INT64_C(7) * 24 * HOUR_MS),
        INT("task.time_limit_ms", 0, 0, INT64_C(7) * 24 * HOUR_MS),
        STRV("analyze.task_name", "tasks.analyze_track", check_name),
        STRV("analyze.default_analyzer", "lyrics", check_name),
        INT("message.max_bytes", 16 * 1024 * 1024, 1024, 64 * 1024 * 1024),
        /* -- amqp driver keys -- */
        INT("amqp.heartbeat_s", 60, 0, 65535),
        INT("amqp.connect_timeout_ms", 5000, 1, 600000),
        INT("amqp.confirm_timeout_ms", 10000, 1, 3600000),
        INT("amqp.queue_max_priority", 0, 0, 255),
        STRV("amqp.queue_type", "classic", check_queue_type),
        STRV("amqp.ssl_cacert", "", check_line),
        STRV("amqp.ssl_cert", "", check_line),
        STRV("amqp.ssl_key", "", check_line),
        BOOL("amqp.ssl_verify", 1),
        /* -- redis driver keys -- */
        INT("redis.visibility_timeout_s", 3600, 1, INT64_C(30) * DAY_S),
        INT("redis.lease_renew_ms", 0, 0, HOUR_MS),
        INT("redis.connect_timeout_ms", 2000, 1, 600000),
        INT("redis.socket_timeout_ms", 5000, 1, 600000),
        INT("redis.poll_ms", 50, 1, 10000),
        INT("redis.reconnect_max_ms", 2000, 10, 600000),
        /* -- postgres store keys -- */
        INT("postgres.connect_timeout_s", 5, 1, 600),
        /* -1 = result.expires_s; 0 = keep task rows forever (analyses are always kept) */
        INT("postgres.expires_s", -1, -1, INT64_C(10) * 365 * DAY_S),
        /* a second store every final state is also written to ("" = none) */
        STRV("archive.url", "", check_url_or_empty),
        /* -- llm analyzer keys -- */
        STRV("llm.base_url", "http://127.0.0.1:11434/v1", check_http_url),
        STRV("llm.model", "qwen2.5:7b-instruct", check_name),
        STRV("llm.api_key", "", check_line), /* else $AIQUEUE_LLM_API_KEY, else $OPENAI_API_KEY */
        INT("llm.timeout_ms", 120000, 100, INT64_C(24) * HOUR_MS),
        INT("llm.connect_timeout_ms", 10000, 100, HOUR_MS),
        INT("llm.max_tokens", 1024, 1, 1000000),
        STRV("llm.temperature", "0.2", check_temperature), /* "" leaves it to the server */
        STR("llm.system_prompt", ""),   /* "" = the built-in lyrics analysis prompt */
        STR("llm.prompt_template", ""), /* "" = built-in; {{lyrics}} marks the text */
        BOOL("llm.json_mode", 1),
        STRV("llm.presets", "", check_presets), /* "name=model:…,base_url:…;name2=…" */
        INT("llm.max_response_bytes", 8 * 1024 * 1024, 1024, 256 * 1024 * 1024),
        INT("llm.retry_after_max_ms", 600000, 0, INT64_C(24) * HOUR_MS),
};

#define NKEYS (sizeof keys / sizeof keys[0])

/* ---- what string values may be ------------------------------------------ */

#define MAX_NAME        255  /* queue, task and analyzer names (AMQP's shortstr) */
#define MAX_URL_BYTES   2048 /* the LLM analyzer's limit for base URL + path */
#define CHAT_PATH       "/chat/completions"
#define TEMPERATURE_MAX 2.0

/* Index of the first control character in s[0..len), or len when none. */
static size_t control_at(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return i;
	return len;
}

/* The value itself in a message when it is safe to print, else "?". */
static const char *shown(const char *value)
{
	size_t n = strlen(value);
	return control_at(value, n) == n ? value : "?";
}

static int check_text(const char *key, const char *value)
{
	(void)key;
	(void)value; /* valid UTF-8 is all a free text needs (checked before) */
	return AIQ_OK;
}

/* One line of text (a path, a key, a host name): no control characters.
 * The value is never echoed: it may be a secret. */
static int check_line(const char *key, const char *value)
{
	size_t n = strlen(value), at = control_at(value, n);
	if (at < n)
		return aiq__err(AIQ_EINVAL,
		                "'%s' must be one line of text without control characters "
		                "(byte %zu is 0x%02x)",
		                key, at, (unsigned)(unsigned char)value[at]);
	return AIQ_OK;
}

/* "" (the default name) or one line that fits the worker's name buffer. */
static int check_hostname(const char *key, const char *value)
{
	size_t n = strlen(value);
	if (n > MAX_NAME)
		return aiq__err(AIQ_EINVAL, "'%s' must be at most %d bytes, got %zu", key, MAX_NAME,
		                n);
	return check_line(key, value);
}

static bool name_ok(const char *s, size_t len)
{
	return len > 0 && len <= MAX_NAME && control_at(s, len) == len;
}

static int check_name(const char *key, const char *value)
{
	if (!name_ok(value, strlen(value)))
		return aiq__err(AIQ_EINVAL,
		                "'%s' must be 1-%d bytes of printable UTF-8 (no control "
		                "characters), got '%.64s'",
		                key, MAX_NAME, shown(value));
	return AIQ_OK;
}

/* "a, b,c": the worker's list; "" means "the `queue` key". */
static int check_queue_list(const char *key, const char *value)
{
	size_t count = 0;
	for (const char *p = value; *p;) {
		while (*p == ',' || *p == ' ')
			p++;
		const char *start = p;
		while (*p && *p != ',')
			p++;
		const char *end = p;
		while (end > start && end[-1] == ' ')
			end--;
		if (end == start)
			continue;
		if (!name_ok(start, (size_t)(end - start)))
			return aiq__err(AIQ_EINVAL,
			                "'%s': queue %zu must be 1-%d bytes of printable UTF-8 "
			                "(no control characters)",
			                key, count + 1, MAX_NAME);
		count++;
	}
	if (*value && count == 0)
		return aiq__err(AIQ_EINVAL,
		                "'%s' names no queue: give comma-separated names, or \"\" to use "
		                "'queue'",
		                key);
	return AIQ_OK;
}

/* Length of an RFC 3986 scheme followed by "://" at s, or 0. */
static size_t scheme_len(const char *s, size_t len)
{
	if (len == 0 || !isalpha((unsigned char)s[0]))
		return 0;
	size_t i = 1;
	while (i < len &&
	       (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
		i++;
	return len - i >= 3 && memcmp(s + i, "://", 3) == 0 ? i : 0;
}

/* A broker or store URL, or a ';'-separated failover list of them. Whether
 * the scheme is built into this library is decided when it is opened; the
 * URL is never echoed (it may hold a password). */
static int check_url(const char *key, const char *value)
{
	size_t n = strlen(value), at = control_at(value, n), count = 0;
	if (at < n)
		return aiq__err(AIQ_EINVAL, "'%s' must not contain control characters (byte %zu)",
		                key, at);
	for (const char *p = value; *p;) {
		while (*p == ';' || *p == ' ')
			p++;
		const char *end = strchr(p, ';');
		if (end == NULL)
			end = p + strlen(p);
		const char *e = end;
		while (e > p && e[-1] == ' ')
			e--;
		if (e > p && scheme_len(p, (size_t)(e - p)) == 0)
			return aiq__err(
			        AIQ_EINVAL,
			        "'%s': URL %zu has no scheme (expected scheme://…, e.g. "
			        "amqp://guest:guest@localhost:5672//, redis://localhost:6379/0, "
			        "memory://)",
			        key, count + 1);
		if (e > p)
			count++;
		p = end;
	}
	if (count == 0)
		return aiq__err(AIQ_EINVAL,
		                "'%s' must be a URL such as amqp://guest:guest@localhost:5672//, "
		                "redis://localhost:6379/0 or memory://",
		                key);
	return AIQ_OK;
}

static int check_url_or_empty(const char *key, const char *value)
{
	return *value ? check_url(key, value) : AIQ_OK;
}

/* An HTTP(S) base URL of `len` bytes (the LLM server's /v1). */
static int http_url_ok(const char *what, const char *key, const char *u, size_t len)
{
	size_t skip = len >= 7 && memcmp(u, "http://", 7) == 0    ? 7
	              : len >= 8 && memcmp(u, "https://", 8) == 0 ? 8
	                                                          : 0;
	if (skip == 0 || skip == len || u[skip] == '/')
		return aiq__err(AIQ_EINVAL, "%s%s: base URL must be http://host… or https://host…",
		                key, what);
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)u[i] <= 0x20 || u[i] == 0x7f)
			return aiq__err(AIQ_EINVAL,
			                "%s%s: base URL must not contain spaces or control "
			                "characters (byte %zu)",
			                key, what, i);
	while (len > 0 && u[len - 1] == '/')
		len--;
	if (len + sizeof CHAT_PATH > MAX_URL_BYTES)
		return aiq__err(AIQ_EINVAL, "%s%s: base URL must be at most %zu bytes", key, what,
		                MAX_URL_BYTES - sizeof CHAT_PATH);
	return AIQ_OK;
}

static int check_http_url(const char *key, const char *value)
{
	return http_url_ok("", key, value, strlen(value));
}

static int check_queue_type(const char *key, const char *value)
{
	if (strcmp(value, "classic") != 0 && strcmp(value, "quorum") != 0)
		return aiq__err(AIQ_EINVAL, "'%s' must be 'classic' or 'quorum', got '%.40s'", key,
		                shown(value));
	return AIQ_OK;
}

/* JSON's number grammar (locale-independent, as the analyzer parses it). */
static bool temperature_ok(const char *text, size_t len)
{
	if (len == 0)
		return true; /* left to the server */
	json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
	bool ok = json_is_number(v) && json_number_value(v) >= 0 &&
	          json_number_value(v) <= TEMPERATURE_MAX;
	json_decref(v);
	return ok;
}

static int check_temperature(const char *key, const char *value)
{
	if (!temperature_ok(value, strlen(value)))
		return aiq__err(AIQ_EINVAL,
		                "'%s' must be a number from 0 to 2, or \"\" to leave it to the "
		                "server; got '%.32s'",
		                key, shown(value));
	return AIQ_OK;
}

static bool int_ok(const char *text, size_t len, int64_t lo, int64_t hi)
{
	char buf[32];
	if (len == 0 || len >= sizeof buf)
		return false;
	memcpy(buf, text, len);
	buf[len] = '\0';
	if (!isdigit((unsigned char)buf[0]) && buf[0] != '-' && buf[0] != '+')
		return false;
	char *end;
	errno = 0;
	long long v = strtoll(buf, &end, 10);
	return *end == '\0' && errno == 0 && v >= lo && v <= hi;
}

/* One "field:value" of an llm.presets entry, with the analyzer's rules. */
static int check_preset_field(const char *key, const char *name, size_t nlen, const char *f,
                              size_t len)
{
	const char *colon = memchr(f, ':', len);
	if (colon == NULL)
		return aiq__err(AIQ_EINVAL, "%s '%.*s': expected field:value, got '%.*s'", key,
		                (int)nlen, name, (int)(len > 60 ? 60 : len), f);
	size_t klen = (size_t)(colon - f), vlen = len - klen - 1;
	const char *v = colon + 1;
	char what[96];
	snprintf(what, sizeof what, " '%.*s'", (int)nlen, name);
#define IS(k)    (klen == sizeof(k) - 1 && memcmp(f, k, klen) == 0)
#define BAD(...) aiq__err(AIQ_EINVAL, "%s%s: " __VA_ARGS__)
	if (control_at(v, vlen) < vlen)
		return BAD("field '%.*s' contains a control character", key, what, (int)klen, f);
	if (IS("model"))
		return vlen > 0 && vlen <= MAX_NAME
		               ? AIQ_OK
		               : BAD("model must be 1-%d bytes", key, what, MAX_NAME);
	if (IS("base_url"))
		return http_url_ok(what, key, v, vlen);
	if (IS("api_key_env")) {
		bool ok = vlen > 0 && vlen < 128 && !isdigit((unsigned char)v[0]);
		for (size_t i = 0; ok && i < vlen; i++)
			ok = isalnum((unsigned char)v[i]) || v[i] == '_';
		return ok ? AIQ_OK
		          : BAD("api_key_env must name an environment variable "
		                "([A-Za-z_][A-Za-z0-9_]*, "
		                "at most 127 bytes)",
		                key, what);
	}
	if (IS("temperature"))
		return temperature_ok(v, vlen)
		               ? AIQ_OK
		               : BAD("temperature must be a number from 0 to 2, got '%.*s'", key,
		                     what, (int)(vlen > 32 ? 32 : vlen), v);
	if (IS("max_tokens"))
		return int_ok(v, vlen, 1, 1000000)
		               ? AIQ_OK
		               : BAD("max_tokens must be an integer from 1 to 1000000", key, what);
	if (IS("timeout_ms"))
		return int_ok(v, vlen, 100, INT64_C(86400000))
		               ? AIQ_OK
		               : BAD("timeout_ms must be an integer from 100 to 86400000", key,
		                     what);
	if (IS("json_mode"))
		return int_ok(v, vlen, 0, 1) ? AIQ_OK : BAD("json_mode must be 0 or 1", key, what);
#undef BAD
#undef IS
	return aiq__err(AIQ_EINVAL,
	                "%s%s: unknown field '%.*s' (known: model, base_url, api_key_env, "
	                "temperature, max_tokens, timeout_ms, json_mode)",
	                key, what, (int)(klen > 40 ? 40 : klen), f);
}

/* llm.presets: "name=field:value,field:value;name2=…", split exactly as the
 * LLM analyzer splits it when a worker registers the presets. */
static int check_presets(const char *key, const char *spec)
{
	for (const char *p = spec; *p;) {
		while (*p == ';' || *p == ' ' || *p == '\n')
			p++;
		if (*p == '\0')
			break;
		const char *end = strchr(p, ';');
		if (end == NULL)
			end = p + strlen(p);
		const char *eq = memchr(p, '=', (size_t)(end - p));
		const char *name_end = eq ? eq : end;
		while (name_end > p && name_end[-1] == ' ')
			name_end--;
		size_t nlen = (size_t)(name_end - p);
		if (eq == NULL || nlen == 0)
			return aiq__err(AIQ_EINVAL,
			                "%s: expected name=field:value,…;name2=…, got '%.*s'", key,
			                (int)(end - p > 60 ? 60 : end - p), p);
		if (!name_ok(p, nlen))
			return aiq__err(AIQ_EINVAL,
			                "%s: preset names must be 1-%d bytes of printable UTF-8",
			                key, MAX_NAME);
		if ((nlen == 3 && memcmp(p, "llm", 3) == 0) ||
		    (nlen == 6 && memcmp(p, "lyrics", 6) == 0))
			return aiq__err(AIQ_EINVAL,
			                "%s: '%.*s' is a built-in analyzer's name, choose another",
			                key, (int)nlen, p);
		/* A name given twice would be refused when the worker registers it. */
		for (const char *q = spec; q < p;) {
			while (*q == ';' || *q == ' ' || *q == '\n')
				q++;
			if (q >= p)
				break;
			const char *qe = strchr(q, ';');
			const char *qeq = memchr(q, '=', (size_t)(qe - q));
			const char *qn = qeq;
			while (qn > q && qn[-1] == ' ')
				qn--;
			if ((size_t)(qn - q) == nlen && memcmp(q, p, nlen) == 0)
				return aiq__err(AIQ_EINVAL, "%s: preset '%.*s' is defined twice",
				                key, (int)nlen, p);
			q = qe + 1;
		}
		for (const char *f = eq + 1; f < end;) {
			const char *comma = memchr(f, ',', (size_t)(end - f));
			const char *fe = comma ? comma : end;
			while (f < fe && *f == ' ')
				f++;
			size_t flen = (size_t)(fe - f);
			while (flen > 0 && f[flen - 1] == ' ')
				flen--;
			if (flen > 0) {
				int rc = check_preset_field(key, p, nlen, f, flen);
				if (rc != AIQ_OK)
					return rc;
			}
			f = fe + 1;
		}
		p = *end ? end + 1 : end;
	}
	return AIQ_OK;
}

/* ---- the configuration object ------------------------------------------- */

union value {
	char *s;
	int64_t i;
};

struct aiq_config {
	union value v[NKEYS];
};

static int find_key(const char *key)
{
	if (key == NULL)
		return aiq__err(AIQ_EINVAL, "no configuration key given");
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].name, key) == 0)
			return (int)i;
	return aiq__err(AIQ_ENOTFOUND, "unknown configuration key '%.100s'", key);
}

/* A configuration holding `src`'s values, or every default when src is NULL. */
static int config_make(aiq_config **out, const aiq_config *src)
{
	aiq_config *cfg = calloc(1, sizeof *cfg);
	if (cfg == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type == KEY_STR) {
			cfg->v[i].s = strdup(src ? src->v[i].s : keys[i].def_str);
			if (cfg->v[i].s == NULL) {
				aiq_config_free(cfg);
				return aiq__err(AIQ_ENOMEM, "out of memory");
			}
		} else {
			cfg->v[i].i = src ? src->v[i].i : keys[i].def_int;
		}
	}
	*out = cfg;
	return AIQ_OK;
}

AIQ_API int aiq_config_new(aiq_config **out)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	return config_make(out, NULL);
}

AIQ_API void aiq_config_free(aiq_config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < NKEYS; i++)
		if (keys[i].type == KEY_STR)
			free(cfg->v[i].s);
	free(cfg);
}

AIQ_API int aiq_config_copy(aiq_config **out, const aiq_config *src)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out and src must not be NULL");
	*out = NULL;
	if (src == NULL)
		return aiq__err(AIQ_EINVAL, "out and src must not be NULL");
	return config_make(out, src);
}

/* The one place a string value is checked: UTF-8, then the key's rule. */
static int check_str_at(int k, const char *value)
{
	if (!aiq__utf8_valid(value, strlen(value)))
		return aiq__err(AIQ_EINVAL, "'%s' must be valid UTF-8 text", keys[k].name);
	return keys[k].check(keys[k].name, value);
}

static int set_str_at(aiq_config *cfg, int k, const char *value)
{
	int rc = check_str_at(k, value);
	if (rc != AIQ_OK)
		return rc;
	char *copy = strdup(value);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	free(cfg->v[k].s);
	cfg->v[k].s = copy;
	return AIQ_OK;
}

static int set_int_at(aiq_config *cfg, int k, int64_t value)
{
	const struct key_def *d = &keys[k];
	if (value < d->min || value > d->max)
		return aiq__err(AIQ_EINVAL, "value %lld for '%s' is out of range [%lld, %lld]",
		                (long long)value, d->name, (long long)d->min, (long long)d->max);
	cfg->v[k].i = value;
	return AIQ_OK;
}

static int parse_bool(const char *text, int *out)
{
	static const char *const yes[] = {"1", "true", "yes", "on"};
	static const char *const no[] = {"0", "false", "no", "off"};
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(text, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(text, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return -1;
}

AIQ_API int aiq_config_set(aiq_config *cfg, const char *key, const char *text)
{
	if (cfg == NULL || text == NULL)
		return aiq__err(AIQ_EINVAL, "cfg and text must not be NULL");
	int k = find_key(key);
	if (k < 0)
		return k;
	switch (keys[k].type) {
	case KEY_STR: return set_str_at(cfg, k, text);
	case KEY_INT: {
		char *end = NULL;
		errno = 0;
		long long v = strtoll(text, &end, 10);
		if (end == text || *end != '\0' || errno == ERANGE || isspace((unsigned char)*text))
			return aiq__err(AIQ_EINVAL,
			                "'%s' expects an integer from %lld to %lld, got '%.64s'",
			                key, (long long)keys[k].min, (long long)keys[k].max,
			                shown(text));
		return set_int_at(cfg, k, v);
	}
	case KEY_BOOL: {
		int b;
		if (parse_bool(text, &b) != 0)
			return aiq__err(AIQ_EINVAL,
			                "'%s' expects a boolean (true/false, yes/no, on/off, 1/0), "
			                "got '%.64s'",
			                key, shown(text));
		cfg->v[k].i = b;
		return AIQ_OK;
	}
	}
	return aiq__err(AIQ_ERROR, "corrupt key table");
}

AIQ_API int aiq_config_set_str(aiq_config *cfg, const char *key, const char *value)
{
	if (cfg == NULL || value == NULL)
		return aiq__err(AIQ_EINVAL, "cfg and value must not be NULL");
	int k = find_key(key);
	if (k < 0)
		return k;
	if (keys[k].type != KEY_STR)
		return aiq__err(AIQ_EINVAL, "'%s' is not a string option", key);
	return set_str_at(cfg, k, value);
}

AIQ_API int aiq_config_set_int(aiq_config *cfg, const char *key, int64_t value)
{
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	int k = find_key(key);
	if (k < 0)
		return k;
	if (keys[k].type != KEY_INT)
		return aiq__err(AIQ_EINVAL, "'%s' is not an integer option", key);
	return set_int_at(cfg, k, value);
}

AIQ_API int aiq_config_set_bool(aiq_config *cfg, const char *key, int value)
{
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	int k = find_key(key);
	if (k < 0)
		return k;
	if (keys[k].type != KEY_BOOL)
		return aiq__err(AIQ_EINVAL, "'%s' is not a boolean option", key);
	cfg->v[k].i = value != 0;
	return AIQ_OK;
}

AIQ_API int aiq_config_get(char **out, const aiq_config *cfg, const char *key)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out and cfg must not be NULL");
	*out = NULL;
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "out and cfg must not be NULL");
	int k = find_key(key);
	if (k < 0)
		return k;
	char *s;
	if (keys[k].type == KEY_STR)
		s = strdup(cfg->v[k].s);
	else if (keys[k].type == KEY_BOOL)
		s = strdup(cfg->v[k].i ? "true" : "false");
	else
		s = aiq__asprintf("%lld", (long long)cfg->v[k].i);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	*out = s;
	return AIQ_OK;
}

AIQ_API int aiq_config_get_int(int64_t *out, const aiq_config *cfg, const char *key)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out and cfg must not be NULL");
	*out = 0;
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "out and cfg must not be NULL");
	int k = find_key(key);
	if (k < 0)
		return k;
	if (keys[k].type == KEY_STR)
		return aiq__err(AIQ_EINVAL, "'%s' is a string option", key);
	*out = cfg->v[k].i;
	return AIQ_OK;
}

/* ---- the environment ------------------------------------------------------ */

/* "worker.prefetch" -> "AIQUEUE_WORKER_PREFETCH" */
static void env_name(char *buf, size_t size, const char *key)
{
	size_t n = (size_t)snprintf(buf, size, "AIQUEUE_");
	for (const char *p = key; *p && n + 1 < size; p++)
		buf[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
	buf[n] = '\0';
}

/* True when the project's own variable for `key` is set: it wins over
 * every Celery variable that maps to the same key. */
static bool own_var_set(const char *key)
{
	char name[128];
	env_name(name, sizeof name, key);
	const char *v = getenv(name);
	return v != NULL && *v != '\0';
}

/* Seconds as Python's float() writes them ("300", "2.5", "1e3", " 7 ")
 * scaled by 10^scale and rounded up, so that a short positive time never
 * becomes 0 (which means "none" or "forever"). Exact: no binary floating
 * point, no locale. -1 when the text is not such a number. */
static int parse_seconds(const char *text, int scale, int64_t *out)
{
	const char *p = text;
	while (isspace((unsigned char)*p))
		p++;
	bool neg = *p == '-';
	if (*p == '-' || *p == '+')
		p++;
	int64_t digits = 0;
	int ndigits = 0, frac = 0, exp = 0;
	bool any = false, dropped = false, seen_dot = false;
	for (;; p++) {
		if (*p == '.' && !seen_dot) {
			seen_dot = true;
			continue;
		}
		if (!isdigit((unsigned char)*p))
			break;
		any = true;
		if (ndigits == 0 && *p == '0') {
			if (seen_dot)
				frac++;
			continue;
		}
		if (ndigits < 18) {
			digits = digits * 10 + (*p - '0');
			ndigits++;
			if (seen_dot)
				frac++;
		} else if (seen_dot) {
			dropped |= *p != '0';
		} else {
			return -1; /* more than 18 integer digits: far out of any range */
		}
	}
	if (!any)
		return -1;
	if (*p == 'e' || *p == 'E') {
		p++;
		bool eneg = *p == '-';
		if (*p == '-' || *p == '+')
			p++;
		if (!isdigit((unsigned char)*p))
			return -1;
		for (; isdigit((unsigned char)*p); p++)
			if ((exp = exp * 10 + (*p - '0')) > 400)
				return -1;
		if (eneg)
			exp = -exp;
	}
	while (isspace((unsigned char)*p))
		p++;
	if (*p != '\0')
		return -1;
	int shift = exp + scale - frac;
	int64_t v = digits;
	if (shift >= 0) {
		for (int i = 0; i < shift && v != 0; i++) {
			if (v > INT64_MAX / 10)
				return -1;
			v *= 10;
		}
	} else {
		bool rest = dropped;
		for (int i = 0; i < -shift && v != 0; i++) {
			rest |= v % 10 != 0;
			v /= 10;
		}
		if (rest)
			v++;
	}
	*out = neg ? -v : v;
	return 0;
}

/* How a Celery value becomes ours. */
enum conv {
	CV_TEXT,            /* the same text */
	CV_S,               /* float seconds -> whole seconds, rounded up */
	CV_MS,              /* float seconds -> milliseconds, rounded up */
	CV_PREFETCH,        /* worker_prefetch_multiplier (0 = no limit) */
	CV_DISABLE_PREFETCH /* worker_disable_prefetch: true = multiplier 1 */
};

struct celery_map {
	const char *name; /* Celery's variable, or the transport option's name */
	const char *key;  /* our key */
	enum conv conv;
};

/* Celery settings with an equivalent key, read from the variables a Celery
 * deployment sets (Celery's own names, upper case, CELERY_ prefix).
 * Later rows win over earlier ones. */
static const struct celery_map celery_vars[] = {
        {"CELERY_BROKER_URL", "broker.url", CV_TEXT},
        {"CELERY_RESULT_BACKEND", "result.url", CV_TEXT},
        {"CELERY_TASK_DEFAULT_QUEUE", "queue", CV_TEXT},
        {"CELERY_TASK_DEFAULT_QUEUE_TYPE", "amqp.queue_type", CV_TEXT},
        {"CELERY_TASK_QUEUE_MAX_PRIORITY", "amqp.queue_max_priority", CV_TEXT},
        {"CELERY_TASK_SOFT_TIME_LIMIT", "task.soft_time_limit_ms", CV_MS},
        {"CELERY_TASK_TIME_LIMIT", "task.time_limit_ms", CV_MS},
        {"CELERY_TASK_TRACK_STARTED", "result.track_started", CV_TEXT},
        {"CELERY_RESULT_EXPIRES", "result.expires_s", CV_S},
        {"CELERY_WORKER_CONCURRENCY", "worker.concurrency", CV_TEXT},
        {"CELERY_WORKER_PREFETCH_MULTIPLIER", "worker.prefetch_multiplier", CV_PREFETCH},
        {"CELERY_WORKER_DISABLE_PREFETCH", "worker.prefetch_multiplier", CV_DISABLE_PREFETCH},
        {"CELERY_BROKER_HEARTBEAT", "amqp.heartbeat_s", CV_S},
        {"CELERY_BROKER_CONNECTION_TIMEOUT", "amqp.connect_timeout_ms", CV_MS},
        {"CELERY_REDIS_SOCKET_TIMEOUT", "redis.socket_timeout_ms", CV_MS},
        {"CELERY_REDIS_SOCKET_CONNECT_TIMEOUT", "redis.connect_timeout_ms", CV_MS},
};

/* broker_transport_options entries with an equivalent key (kombu's names);
 * every other option is for a kombu feature this library does not have. */
static const struct celery_map transport_options[] = {
        {"visibility_timeout", "redis.visibility_timeout_s", CV_S},
        {"socket_timeout", "redis.socket_timeout_ms", CV_MS},
        {"socket_connect_timeout", "redis.connect_timeout_ms", CV_MS},
        {"connect_timeout", "amqp.connect_timeout_ms", CV_MS},
};

/* CELERY_WORKER_DISABLE_PREFETCH=true: Celery lets it win over the multiplier. */
static bool disable_prefetch(void)
{
	const char *v = getenv("CELERY_WORKER_DISABLE_PREFETCH");
	int b = 0;
	return v != NULL && parse_bool(v, &b) == 0 && b;
}

static int apply_celery(aiq_config *cfg, const struct celery_map *m, const char *text)
{
	int k = find_key(m->key);
	if (k < 0)
		return k;
	int64_t n;
	switch (m->conv) {
	case CV_TEXT: {
		/* Python's int() and strtobool() take surrounding blanks. */
		char buf[64];
		size_t len = strlen(text);
		if (keys[k].type != KEY_STR && len < sizeof buf) {
			while (len > 0 && isspace((unsigned char)text[len - 1]))
				len--;
			while (len > 0 && isspace((unsigned char)*text)) {
				text++;
				len--;
			}
			memcpy(buf, text, len);
			buf[len] = '\0';
			text = buf;
		}
		return aiq_config_set(cfg, m->key, text);
	}
	case CV_S:
	case CV_MS:
		if (parse_seconds(text, m->conv == CV_MS ? 3 : 0, &n) != 0)
			return aiq__err(AIQ_EINVAL,
			                "expects seconds (a number such as 300 or 2.5) for '%s', "
			                "got '%.64s'",
			                m->key, shown(text));
		return set_int_at(cfg, k, n);
	case CV_PREFETCH:
		if (parse_seconds(text, 0, &n) != 0 || strpbrk(text, ".eE") != NULL)
			return aiq__err(AIQ_EINVAL, "expects an integer multiplier, got '%.64s'",
			                shown(text));
		/* Celery's 0 means no limit: the largest worker.prefetch, unless
		 * AIQUEUE_WORKER_PREFETCH says otherwise or prefetch is disabled. */
		if (n == 0)
			return own_var_set("worker.prefetch") || disable_prefetch()
			               ? AIQ_OK
			               : set_int_at(cfg, find_key("worker.prefetch"),
			                            keys[find_key("worker.prefetch")].max);
		return set_int_at(cfg, k, n);
	case CV_DISABLE_PREFETCH: {
		int b;
		if (parse_bool(text, &b) != 0)
			return aiq__err(AIQ_EINVAL, "expects a boolean (true/false), got '%.64s'",
			                shown(text));
		return b ? set_int_at(cfg, k, 1) : AIQ_OK;
	}
	}
	return aiq__err(AIQ_ERROR, "corrupt Celery table");
}

/* A Python dict literal as Celery's settings hold it ("{'visibility_timeout':
 * 3600, 'x': True}") rewritten as JSON; plain JSON passes unchanged.
 * NULL with *bad = the offending byte (or SIZE_MAX: out of memory). */
static char *py_dict_to_json(const char *in, size_t *bad)
{
	size_t len = strlen(in), o = 0, i = 0;
	char *out = malloc(3 * len + 16); /* "." -> "0.0" is the largest growth */
	if (out == NULL) {
		*bad = SIZE_MAX;
		return NULL;
	}
	while (i < len) {
		unsigned char c = (unsigned char)in[i];
		if (c == '\'' || c == '"') {
			out[o++] = '"';
			for (i++; i < len && in[i] != (char)c;) {
				if (in[i] == '\\') {
					char e = in[i + 1];
					if (e == '\'') {
						out[o++] = '\'';
						i += 2;
					} else if (e == 'x' && isxdigit((unsigned char)in[i + 2]) &&
					           isxdigit((unsigned char)in[i + 3])) {
						memcpy(out + o, "\\u00", 4);
						o += 4;
						out[o++] = in[i + 2];
						out[o++] = in[i + 3];
						i += 4;
					} else if (e != '\0' && strchr("\"\\/bfnrtu", e)) {
						out[o++] = '\\';
						out[o++] = e;
						i += 2;
					} else {
						goto fail;
					}
				} else if (in[i] == '"') {
					out[o++] = '\\';
					out[o++] = in[i++];
				} else {
					out[o++] = in[i++];
				}
			}
			if (i >= len)
				goto fail;
			out[o++] = '"';
			i++;
		} else if (isalpha(c) || c == '_') {
			size_t s = i;
			while (i < len && (isalnum((unsigned char)in[i]) || in[i] == '_'))
				i++;
			static const char *const words[][2] = {
			        {"True", "true"},   {"true", "true"}, {"False", "false"},
			        {"false", "false"}, {"None", "null"}, {"null", "null"},
			};
			const char *w = NULL;
			for (size_t j = 0; j < sizeof words / sizeof words[0]; j++)
				if (strlen(words[j][0]) == i - s &&
				    memcmp(in + s, words[j][0], i - s) == 0)
					w = words[j][1];
			if (w == NULL) {
				i = s;
				goto fail;
			}
			memcpy(out + o, w, strlen(w));
			o += strlen(w);
		} else if (isdigit(c) || c == '.' || c == '-' || c == '+') {
			if (c == '-')
				out[o++] = in[i++];
			else if (c == '+')
				i++;
			if (in[i] == '.')
				out[o++] = '0';
			while (isdigit((unsigned char)in[i]))
				out[o++] = in[i++];
			if (in[i] == '.') {
				out[o++] = in[i++];
				if (!isdigit((unsigned char)in[i]))
					out[o++] = '0';
				while (isdigit((unsigned char)in[i]))
					out[o++] = in[i++];
			}
			if (in[i] == 'e' || in[i] == 'E') {
				out[o++] = in[i++];
				if (in[i] == '-' || in[i] == '+')
					out[o++] = in[i++];
				while (isdigit((unsigned char)in[i]))
					out[o++] = in[i++];
			}
		} else if (c == '}' || c == ']' || c == ')') {
			/* Python allows a trailing comma; JSON does not. */
			size_t j = o;
			while (j > 0 && isspace((unsigned char)out[j - 1]))
				j--;
			if (j > 0 && out[j - 1] == ',')
				out[j - 1] = ' ';
			out[o++] = c == ')' ? ']' : (char)c;
			i++;
		} else if (c == '(') {
			out[o++] = '[';
			i++;
		} else if (strchr("{[:, \t\r\n", c)) {
			out[o++] = in[i++];
		} else {
			goto fail;
		}
	}
	out[o] = '\0';
	return out;
fail:
	*bad = i;
	free(out);
	return NULL;
}

static int apply_transport_options(aiq_config *cfg, const char *text)
{
	size_t bad = 0;
	char *js = py_dict_to_json(text, &bad);
	if (js == NULL)
		return bad == SIZE_MAX ? aiq__err(AIQ_ENOMEM, "out of memory")
		                       : aiq__err(AIQ_EINVAL,
		                                  "expects a dict such as {'visibility_timeout': "
		                                  "3600}; byte %zu is not part of a literal",
		                                  bad);
	json_error_t err;
	json_t *opts = json_loads(js, JSON_REJECT_DUPLICATES, &err);
	free(js);
	if (!json_is_object(opts)) {
		json_decref(opts);
		return aiq__err(AIQ_EINVAL,
		                "expects a dict such as {'visibility_timeout': 3600}: %s (column "
		                "%d)",
		                opts ? "not a dict" : err.text, opts ? 0 : err.column);
	}
	int rc = AIQ_OK;
	for (size_t i = 0;
	     rc == AIQ_OK && i < sizeof transport_options / sizeof transport_options[0]; i++) {
		const struct celery_map *m = &transport_options[i];
		json_t *v = json_object_get(opts, m->name);
		if (v == NULL || json_is_null(v) || own_var_set(m->key))
			continue;
		if (!json_is_number(v)) {
			rc = aiq__err(AIQ_EINVAL, "%s must be a number of seconds", m->name);
			break;
		}
		char *num = json_dumps(v, JSON_ENCODE_ANY);
		if (num == NULL) {
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
			break;
		}
		rc = apply_celery(cfg, m, num);
		free(num);
		if (rc != AIQ_OK) {
			char detail[256];
			snprintf(detail, sizeof detail, "%s", aiq_error_last());
			rc = aiq__err(rc, "%s: %s", m->name, detail);
		}
	}
	json_decref(opts);
	return rc;
}

/* Name the variable in the error aiq_config_set() (or a conversion) left. */
static int env_error(int rc, const char *var)
{
	char detail[256];
	snprintf(detail, sizeof detail, "%s", aiq_error_last());
	return aiq__err(rc, "environment variable %s: %s", var, detail);
}

static const char *env_value(const char *var)
{
	const char *v = getenv(var);
	return v != NULL && *v != '\0' ? v : NULL;
}

/* Everything is applied to a scratch copy first, so a bad variable leaves
 * `cfg` as it was. */
AIQ_API int aiq_config_load_env(aiq_config *cfg)
{
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	aiq_config *next = NULL;
	int rc = config_make(&next, cfg);
	if (rc != AIQ_OK)
		return rc;
	for (size_t i = 0; rc == AIQ_OK && i < sizeof celery_vars / sizeof celery_vars[0]; i++) {
		const char *val = env_value(celery_vars[i].name);
		if (val == NULL || own_var_set(celery_vars[i].key))
			continue;
		rc = apply_celery(next, &celery_vars[i], val);
		if (rc != AIQ_OK)
			rc = env_error(rc, celery_vars[i].name);
	}
	const char *opts = env_value("CELERY_BROKER_TRANSPORT_OPTIONS");
	if (rc == AIQ_OK && opts != NULL) {
		rc = apply_transport_options(next, opts);
		if (rc != AIQ_OK)
			rc = env_error(rc, "CELERY_BROKER_TRANSPORT_OPTIONS");
	}
	for (size_t i = 0; rc == AIQ_OK && i < NKEYS; i++) {
		char var[128];
		env_name(var, sizeof var, keys[i].name);
		const char *val = env_value(var);
		if (val == NULL)
			continue;
		rc = aiq_config_set(next, keys[i].name, val);
		if (rc != AIQ_OK)
			rc = env_error(rc, var);
	}
	if (rc == AIQ_OK) {
		struct aiq_config old = *cfg;
		*cfg = *next;
		*next = old;
	}
	aiq_config_free(next);
	return rc;
}

/* ---- the library's own reads ---------------------------------------------- */

const char *aiq__config_str(const aiq_config *cfg, const char *key)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (keys[i].type == KEY_STR && strcmp(keys[i].name, key) == 0)
			return cfg->v[i].s;
	return "";
}

int64_t aiq__config_int(const aiq_config *cfg, const char *key)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (keys[i].type != KEY_STR && strcmp(keys[i].name, key) == 0)
			return cfg->v[i].i;
	return 0;
}

size_t aiq__config_key_count(void)
{
	return NKEYS;
}

const char *aiq__config_key_name(size_t i)
{
	return i < NKEYS ? keys[i].name : NULL;
}
