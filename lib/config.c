/*
 * String-keyed configuration. Every key is declared once in `keys` below
 * with its type, default and bounds; a configuration is a flat array of
 * values parallel to that table.
 */
#include "config_int.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum key_type { KEY_STR, KEY_INT, KEY_BOOL };

struct key_def {
	const char *name;
	enum key_type type;
	const char *def_str; /* KEY_STR default */
	int64_t def_int;     /* KEY_INT / KEY_BOOL default */
	int64_t min, max;    /* KEY_INT bounds */
};

#define STR(n, d)                                                                                  \
	{                                                                                          \
		n, KEY_STR, d, 0, 0, 0                                                             \
	}
#define INT(n, d, lo, hi)                                                                          \
	{                                                                                          \
		n, KEY_INT, NULL, d, lo, hi                                                        \
	}
#define BOOL(n, d)                                                                                 \
	{                                                                                          \
		n, KEY_BOOL, NULL, d, 0, 1                                                         \
	}
#define DAY_S   86400
#define HOUR_MS (3600 * 1000)

static const struct key_def keys[] = {
        STR("broker.url", "memory://"),
        STR("result.url", "memory://"),
        STR("queue", "celery"),
        INT("result.expires_s", DAY_S, 0, INT64_C(10) * 365 * DAY_S),
        BOOL("result.track_started", 1),
        INT("worker.concurrency", 0, 0, 1024),
        INT("worker.prefetch", 0, 0, 1000000),
        STR("worker.queues", ""),
        STR("worker.hostname", ""),
        INT("worker.eta_horizon_ms", 2000, 0, HOUR_MS),
        INT("worker.max_abandoned_threads", 16, 0, 1024),
        INT("worker.time_limit_min_ms", 0, 0, INT64_C(7) * 24 * HOUR_MS),
        INT("worker.time_limit_max_ms", 0, 0, INT64_C(7) * 24 * HOUR_MS),
        INT("task.max_retries", 3, 0, 1000000),
        INT("task.retry_backoff_ms", 1000, 0, INT64_C(24) * HOUR_MS),
        INT("task.retry_backoff_max_ms", 600000, 0, INT64_C(7) * 24 * HOUR_MS),
        BOOL("task.retry_jitter", 1),
        INT("task.soft_time_limit_ms", 0, 0, INT64_C(7) * 24 * HOUR_MS),
        INT("task.time_limit_ms", 0, 0, INT64_C(7) * 24 * HOUR_MS),
        STR("analyze.task_name", "tasks.analyze_track"),
        STR("analyze.default_analyzer", "lyrics"),
        INT("message.max_bytes", 16 * 1024 * 1024, 1024, 64 * 1024 * 1024),
        /* -- amqp driver keys -- */
        INT("amqp.heartbeat_s", 60, 0, 65535),
        INT("amqp.connect_timeout_ms", 5000, 1, 600000),
        INT("amqp.confirm_timeout_ms", 10000, 1, 3600000),
        INT("amqp.queue_max_priority", 0, 0, 255),
        STR("amqp.queue_type", "classic"),
        STR("amqp.ssl_cacert", ""),
        STR("amqp.ssl_cert", ""),
        STR("amqp.ssl_key", ""),
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
        STR("archive.url", ""),
        /* -- llm analyzer keys -- */
        STR("llm.base_url", "http://127.0.0.1:11434/v1"),
        STR("llm.model", "qwen2.5:7b-instruct"),
        STR("llm.api_key", ""), /* else $AIQUEUE_LLM_API_KEY, else $OPENAI_API_KEY */
        INT("llm.timeout_ms", 120000, 100, INT64_C(24) * HOUR_MS),
        INT("llm.connect_timeout_ms", 10000, 100, HOUR_MS),
        INT("llm.max_tokens", 1024, 1, 1000000),
        STR("llm.temperature", "0.2"),  /* decimal text; "" leaves it to the server */
        STR("llm.system_prompt", ""),   /* "" = the built-in lyrics analysis prompt */
        STR("llm.prompt_template", ""), /* "" = built-in; {{lyrics}} marks the text */
        BOOL("llm.json_mode", 1),
        STR("llm.presets", ""), /* "name=model:…,base_url:…;name2=…" */
        INT("llm.max_response_bytes", 8 * 1024 * 1024, 1024, 256 * 1024 * 1024),
        INT("llm.retry_after_max_ms", 600000, 0, INT64_C(24) * HOUR_MS),
};

#define NKEYS (sizeof keys / sizeof keys[0])

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

AIQ_API int aiq_config_new(aiq_config **out)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	aiq_config *cfg = calloc(1, sizeof *cfg);
	if (cfg == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type == KEY_STR) {
			cfg->v[i].s = strdup(keys[i].def_str);
			if (cfg->v[i].s == NULL) {
				aiq_config_free(cfg);
				return aiq__err(AIQ_ENOMEM, "out of memory");
			}
		} else {
			cfg->v[i].i = keys[i].def_int;
		}
	}
	*out = cfg;
	return AIQ_OK;
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
	if (out == NULL || src == NULL)
		return aiq__err(AIQ_EINVAL, "out and src must not be NULL");
	aiq_config *cfg = calloc(1, sizeof *cfg);
	if (cfg == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type == KEY_STR) {
			cfg->v[i].s = strdup(src->v[i].s);
			if (cfg->v[i].s == NULL) {
				aiq_config_free(cfg);
				return aiq__err(AIQ_ENOMEM, "out of memory");
			}
		} else {
			cfg->v[i].i = src->v[i].i;
		}
	}
	*out = cfg;
	return AIQ_OK;
}

static int set_str_at(aiq_config *cfg, int k, const char *value)
{
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
			return aiq__err(AIQ_EINVAL, "'%s' expects an integer, got '%.64s'", key,
			                text);
		return set_int_at(cfg, k, v);
	}
	case KEY_BOOL: {
		int b;
		if (parse_bool(text, &b) != 0)
			return aiq__err(AIQ_EINVAL,
			                "'%s' expects a boolean (true/false), got '%.64s'", key,
			                text);
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
	if (out == NULL || cfg == NULL)
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
	if (out == NULL || cfg == NULL)
		return aiq__err(AIQ_EINVAL, "out and cfg must not be NULL");
	int k = find_key(key);
	if (k < 0)
		return k;
	if (keys[k].type == KEY_STR)
		return aiq__err(AIQ_EINVAL, "'%s' is a string option", key);
	*out = cfg->v[k].i;
	return AIQ_OK;
}

/* "worker.prefetch" -> "AIQUEUE_WORKER_PREFETCH" */
static void env_name(char *buf, size_t size, const char *key)
{
	size_t n = (size_t)snprintf(buf, size, "AIQUEUE_");
	for (const char *p = key; *p && n + 1 < size; p++)
		buf[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
	buf[n] = '\0';
}

AIQ_API int aiq_config_load_env(aiq_config *cfg)
{
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	static const struct {
		const char *key, *primary, *fallback;
	} urls[] = {
	        {"broker.url", "AIQUEUE_BROKER_URL", "CELERY_BROKER_URL"},
	        {"result.url", "AIQUEUE_RESULT_URL", "CELERY_RESULT_BACKEND"},
	};
	for (size_t i = 0; i < NKEYS; i++) {
		char name[128];
		const char *var = NULL, *val = NULL;
		for (size_t u = 0; u < sizeof urls / sizeof urls[0]; u++) {
			if (strcmp(urls[u].key, keys[i].name) == 0) {
				var = urls[u].primary;
				val = getenv(var);
				if (val == NULL || *val == '\0') {
					var = urls[u].fallback;
					val = getenv(var);
				}
			}
		}
		if (var == NULL) {
			env_name(name, sizeof name, keys[i].name);
			var = name;
			val = getenv(var);
		}
		if (val == NULL || *val == '\0')
			continue;
		int rc = aiq_config_set(cfg, keys[i].name, val);
		if (rc != AIQ_OK) {
			char detail[256];
			snprintf(detail, sizeof detail, "%s", aiq_error_last());
			return aiq__err(rc, "environment variable %s: %s", var, detail);
		}
	}
	return AIQ_OK;
}

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
