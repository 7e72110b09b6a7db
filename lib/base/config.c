/*
 * String-keyed configuration. Every key is declared once, by its owner
 * (config_keys.h lists the owners' lists), with its type, default and what
 * it accepts (an integer range, or for a string key the check_* function
 * below); `keys` is assembled from those lists, and a configuration is a
 * flat array of values parallel to it. Every setter goes through the same
 * checks, so a value that is stored is a value the library can use.
 * Reading the environment (ours and Celery's variables) is config_env.c.
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
static int check_presets(const char *key, const char *spec);
static int check_pool(const char *key, const char *value);
static int check_embed_provider(const char *key, const char *value);
static int check_http_url_or_empty(const char *key, const char *value);

/* The table, assembled from the owners' declaration lists (config_keys.h). */
static const struct key_def keys[] = {
#define AIQ_KEY_STR(id, n, d, check)  [AIQ__CFGI_##id] = {n, KEY_STR, d, 0, 0, 0, check},
#define AIQ_KEY_INT(id, n, d, lo, hi) [AIQ__CFGI_##id] = {n, KEY_INT, NULL, d, lo, hi, NULL},
#define AIQ_KEY_BOOL(id, n, d)        [AIQ__CFGI_##id] = {n, KEY_BOOL, NULL, d, 0, 1, NULL},
#include AIQ__CONFIG_KEY_LISTS
#undef AIQ_KEY_STR
#undef AIQ_KEY_INT
#undef AIQ_KEY_BOOL
};

#define NKEYS ((size_t)AIQ__CFG_NKEYS)
_Static_assert(sizeof keys / sizeof keys[0] == NKEYS, "every declared key has a row");

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
	const char *name;
	size_t len;
	for (const char *p = value; aiq__list_next(&p, &name, &len);) {
		if (!name_ok(name, len))
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

static int check_pool(const char *key, const char *value)
{
	if (strcmp(value, "threads") != 0 && strcmp(value, "processes") != 0 &&
	    strcmp(value, "prefork") != 0)
		return aiq__err(AIQ_EINVAL,
		                "'%s' must be 'threads' or 'processes' ('prefork' is the same as "
		                "'processes'), got '%.40s'",
		                key, shown(value));
	return AIQ_OK;
}

static int check_embed_provider(const char *key, const char *value)
{
	if (strcmp(value, "local") != 0 && strcmp(value, "openai") != 0)
		return aiq__err(AIQ_EINVAL, "'%s' must be 'local' or 'openai', got '%.40s'", key,
		                shown(value));
	return AIQ_OK;
}

static int check_http_url_or_empty(const char *key, const char *value)
{
	return *value ? check_http_url(key, value) : AIQ_OK;
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
int aiq__preset_next(const char **pos, struct aiq__preset *out, const char *key)
{
	const char *p = *pos;
	while (*p == ';' || *p == ' ' || *p == '\n')
		p++;
	if (*p == '\0') {
		*pos = p;
		return 0;
	}
	const char *end = strchr(p, ';');
	if (end == NULL)
		end = p + strlen(p);
	const char *eq = memchr(p, '=', (size_t)(end - p));
	const char *name_end = eq ? eq : end;
	while (name_end > p && name_end[-1] == ' ')
		name_end--;
	if (eq == NULL || name_end == p)
		return aiq__err(AIQ_EINVAL, "%s: expected name=field:value,…;name2=…, got '%.*s'",
		                key, (int)(end - p > 60 ? 60 : end - p), p);
	*out = (struct aiq__preset){
	        .name = p, .nlen = (size_t)(name_end - p), .fields = eq + 1, .end = end};
	*pos = *end ? end + 1 : end;
	return 1;
}

bool aiq__preset_field_next(const struct aiq__preset *p, const char **pos, const char **field,
                            size_t *flen)
{
	for (const char *f = *pos ? *pos : p->fields; f < p->end;) {
		const char *comma = memchr(f, ',', (size_t)(p->end - f));
		const char *fe = comma ? comma : p->end;
		while (f < fe && *f == ' ')
			f++;
		size_t n = (size_t)(fe - f);
		while (n > 0 && f[n - 1] == ' ')
			n--;
		*pos = fe + 1;
		if (n > 0) {
			*field = f;
			*flen = n;
			return true;
		}
		f = fe + 1;
	}
	*pos = p->end;
	return false;
}

static int check_presets(const char *key, const char *spec)
{
	const char *pos = spec;
	struct aiq__preset p;
	int got;
	while ((got = aiq__preset_next(&pos, &p, key)) == 1) {
		if (!name_ok(p.name, p.nlen))
			return aiq__err(AIQ_EINVAL,
			                "%s: preset names must be 1-%d bytes of printable UTF-8",
			                key, MAX_NAME);
		if ((p.nlen == 3 && memcmp(p.name, "llm", 3) == 0) ||
		    (p.nlen == 6 && memcmp(p.name, "lyrics", 6) == 0))
			return aiq__err(AIQ_EINVAL,
			                "%s: '%.*s' is a built-in analyzer's name, choose another",
			                key, (int)p.nlen, p.name);
		/* A name given twice would be refused when the worker registers it. */
		const char *qpos = spec;
		struct aiq__preset q;
		while (qpos < p.name && aiq__preset_next(&qpos, &q, key) == 1 && q.name < p.name)
			if (q.nlen == p.nlen && memcmp(q.name, p.name, p.nlen) == 0)
				return aiq__err(AIQ_EINVAL, "%s: preset '%.*s' is defined twice",
				                key, (int)p.nlen, p.name);
		const char *fpos = NULL, *f;
		size_t flen;
		while (aiq__preset_field_next(&p, &fpos, &f, &flen)) {
			int rc = check_preset_field(key, p.name, p.nlen, f, flen);
			if (rc != AIQ_OK)
				return rc;
		}
	}
	return got;
}

/* ---- the configuration object ------------------------------------------- */

union value {
	char *s;
	int64_t i;
};

struct aiq_config {
	union value v[NKEYS];
};

/* The index of `key`, which must be of one of the `types` (a KEY_BIT mask):
 * the one "find the key, check its type" of every string-keyed call. */
#define KEY_BIT(t) (1u << (t))
#define ANY_TYPE   (KEY_BIT(KEY_STR) | KEY_BIT(KEY_INT) | KEY_BIT(KEY_BOOL))

static int lookup(const char *key, unsigned types, const char *wrong_type)
{
	if (key == NULL)
		return aiq__err(AIQ_EINVAL, "no configuration key given");
	for (size_t i = 0; i < NKEYS; i++) {
		if (strcmp(keys[i].name, key) != 0)
			continue;
		if (!(types & KEY_BIT(keys[i].type)))
			return aiq__err(AIQ_EINVAL, "'%s' %s", key, wrong_type);
		return (int)i;
	}
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
	int k = lookup(key, ANY_TYPE, "");
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
	int k = lookup(key, KEY_BIT(KEY_STR), "is not a string option");
	return k < 0 ? k : set_str_at(cfg, k, value);
}

AIQ_API int aiq_config_set_int(aiq_config *cfg, const char *key, int64_t value)
{
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	int k = lookup(key, KEY_BIT(KEY_INT), "is not an integer option");
	return k < 0 ? k : set_int_at(cfg, k, value);
}

AIQ_API int aiq_config_set_bool(aiq_config *cfg, const char *key, int value)
{
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	int k = lookup(key, KEY_BIT(KEY_BOOL), "is not a boolean option");
	if (k < 0)
		return k;
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
	int k = lookup(key, ANY_TYPE, "");
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
	int k = lookup(key, KEY_BIT(KEY_INT) | KEY_BIT(KEY_BOOL), "is a string option");
	if (k < 0)
		return k;
	*out = cfg->v[k].i;
	return AIQ_OK;
}

/* ---- the library's own reads ---------------------------------------------- */

/* The identifiers are table positions of the right type by construction
 * (config_keys.h); no configuration means the declared defaults. */
const char *aiq__cfg_str(const aiq_config *cfg, enum aiq__cfg_str k)
{
	return cfg ? cfg->v[k].s : keys[k].def_str;
}

int64_t aiq__cfg_int(const aiq_config *cfg, enum aiq__cfg_int k)
{
	return cfg ? cfg->v[k].i : keys[k].def_int;
}

bool aiq__cfg_bool(const aiq_config *cfg, enum aiq__cfg_bool k)
{
	return (cfg ? cfg->v[k].i : keys[k].def_int) != 0;
}

int64_t aiq__cfg_int_max(enum aiq__cfg_int k)
{
	return keys[k].max;
}

const char *aiq__config_shown(const char *value)
{
	return shown(value);
}

int aiq__config_parse_bool(const char *text, int *out)
{
	return parse_bool(text, out);
}

void aiq__config_swap(aiq_config *a, aiq_config *b)
{
	aiq_config t = *a;
	*a = *b;
	*b = t;
}

size_t aiq__config_key_count(void)
{
	return NKEYS;
}

const char *aiq__config_key_name(size_t i)
{
	return i < NKEYS ? keys[i].name : NULL;
}

bool aiq__config_key_info(size_t i, struct aiq__config_key_info *out)
{
	if (i >= NKEYS)
		return false;
	static const char *const type_names[] = {"string", "int", "bool"};
	*out = (struct aiq__config_key_info){
	        .name = keys[i].name,
	        .type = type_names[keys[i].type],
	        .def_str = keys[i].def_str,
	        .def_int = keys[i].def_int,
	        .min = keys[i].min,
	        .max = keys[i].max,
	};
	return true;
}
