/*
 * Configuration: defaults, typed and text setters, errors, environment.
 */
#include "testutil.h"

#include "config_int.h"

#include <aiqueue/aiqueue.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static char *get(const aiq_config *cfg, const char *key)
{
	char *v = NULL;
	ck_assert_int_eq(aiq_config_get(&v, cfg, key), AIQ_OK);
	return v;
}

START_TEST(test_defaults)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	char *v = get(cfg, "broker.url");
	ck_assert_str_eq(v, "memory://");
	aiq_free(v);
	v = get(cfg, "queue");
	ck_assert_str_eq(v, "celery");
	aiq_free(v);
	int64_t n = 0;
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "result.expires_s"), AIQ_OK);
	ck_assert_int_eq(n, 86400);
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "task.max_retries"), AIQ_OK);
	ck_assert_int_eq(n, 3);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_typed_setters)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "queue", "lyrics"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 7), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "result.track_started", 0), AIQ_OK);
	char *v = get(cfg, "queue");
	ck_assert_str_eq(v, "lyrics");
	aiq_free(v);
	v = get(cfg, "worker.concurrency");
	ck_assert_str_eq(v, "7");
	aiq_free(v);
	v = get(cfg, "result.track_started");
	ck_assert_str_eq(v, "false");
	aiq_free(v);

	/* Wrong types are refused and change nothing. */
	ck_assert_int_eq(aiq_config_set_int(cfg, "queue", 1), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.concurrency", "2"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "queue", 1), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", -1), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "out of range"));
	v = get(cfg, "worker.concurrency");
	ck_assert_str_eq(v, "7");
	aiq_free(v);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_text_setter)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", "32"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "task.retry_jitter", "Off"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "task.retry_jitter", "YES"), AIQ_OK);
	int64_t n = 0;
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "worker.prefetch"), AIQ_OK);
	ck_assert_int_eq(n, 32);
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "task.retry_jitter"), AIQ_OK);
	ck_assert_int_eq(n, 1);

	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", "12abc"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", " 3"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", "99999999999999999999"),
	                 AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "task.retry_jitter", "maybe"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "boolean"));
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "worker.prefetch"), AIQ_OK);
	ck_assert_int_eq(n, 32);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_unknown_key)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "broker.ulr", "x"), AIQ_ENOTFOUND);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "broker.ulr"));
	char *v = NULL;
	ck_assert_int_eq(aiq_config_get(&v, cfg, "nope"), AIQ_ENOTFOUND);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(aiq_config_set(NULL, "queue", "x"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, NULL, "x"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_new(NULL), AIQ_EINVAL);
	aiq_config_free(NULL);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_copy_is_deep)
{
	aiq_config *a = NULL, *b = NULL;
	ck_assert_int_eq(aiq_config_new(&a), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(a, "queue", "first"), AIQ_OK);
	ck_assert_int_eq(aiq_config_copy(&b, a), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(a, "queue", "second"), AIQ_OK);
	char *v = get(b, "queue");
	ck_assert_str_eq(v, "first");
	aiq_free(v);
	aiq_config_free(a);
	aiq_config_free(b);
}
END_TEST

START_TEST(test_env)
{
	unsetenv("AIQUEUE_BROKER_URL");
	unsetenv("AIQUEUE_RESULT_URL");
	setenv("CELERY_BROKER_URL", "memory://from-celery", 1);
	setenv("CELERY_RESULT_BACKEND", "memory://celery-results", 1);
	setenv("AIQUEUE_WORKER_CONCURRENCY", "5", 1);
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_OK);
	char *v = get(cfg, "broker.url");
	ck_assert_str_eq(v, "memory://from-celery");
	aiq_free(v);
	v = get(cfg, "result.url");
	ck_assert_str_eq(v, "memory://celery-results");
	aiq_free(v);
	v = get(cfg, "worker.concurrency");
	ck_assert_str_eq(v, "5");
	aiq_free(v);

	/* The project's own variable wins over Celery's. */
	setenv("AIQUEUE_BROKER_URL", "memory://ours", 1);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_OK);
	v = get(cfg, "broker.url");
	ck_assert_str_eq(v, "memory://ours");
	aiq_free(v);

	/* A bad value names the variable. */
	setenv("AIQUEUE_WORKER_PREFETCH", "lots", 1);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "AIQUEUE_WORKER_PREFETCH"));
	unsetenv("AIQUEUE_WORKER_PREFETCH");
	unsetenv("AIQUEUE_BROKER_URL");
	unsetenv("CELERY_BROKER_URL");
	unsetenv("CELERY_RESULT_BACKEND");
	unsetenv("AIQUEUE_WORKER_CONCURRENCY");
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_errors_and_version)
{
	ck_assert_str_eq(aiq_strerror(AIQ_OK), "success");
	ck_assert_str_eq(aiq_strerror(AIQ_ETIMEDOUT), "timed out");
	ck_assert_str_eq(aiq_strerror(12345), "unknown error");
	for (int code = AIQ_ELIMIT; code <= AIQ_OK; code++)
		ck_assert_str_ne(aiq_strerror(code), "unknown error");
	aiq_error_clear();
	ck_assert_str_eq(aiq_error_last(), "");
	ck_assert_str_eq(aiq_version_string(), AIQ_VERSION_STRING);
	ck_assert_int_eq(aiq_version_number(), AIQ_VERSION_NUMBER);
}
END_TEST

static int log_calls, log_destroyed;
static void count_log(int level, const char *message, void *ud)
{
	(void)message;
	ck_assert_int_ge(level, AIQ_LOG_WARNING);
	ck_assert_ptr_eq(ud, &log_calls);
	log_calls++;
}
static void count_log_destroy(void *ud)
{
	ck_assert_ptr_eq(ud, &log_calls);
	log_destroyed++;
}

START_TEST(test_log_handler)
{
	ck_assert_int_eq(aiq_log_level_from_name("DEBUG"), AIQ_LOG_DEBUG);
	ck_assert_int_eq(aiq_log_level_from_name("warning"), AIQ_LOG_WARNING);
	ck_assert_int_eq(aiq_log_level_from_name("loud"), AIQ_EINVAL);
	aiq_log_set_handler(count_log, &log_calls, count_log_destroy);
	aiq_log_set_level(AIQ_LOG_WARNING);
	aiq__log(AIQ_LOG_WARNING, "seen %d", 1);
	aiq__log(AIQ_LOG_INFO, "dropped below the level");
	ck_assert_int_eq(log_calls, 1);
	ck_assert_int_eq(log_destroyed, 0);
	aiq_log_set_handler(NULL, NULL, NULL); /* back to stderr: the old userdata goes */
	ck_assert_int_eq(log_destroyed, 1);
	aiq_log_set_handler(NULL, NULL, NULL);
	ck_assert_int_eq(log_destroyed, 1);
}
END_TEST

/* ---- every key is checked when it is set ----------------------------------- */

#define LONG_NAME "<256 bytes>" /* expanded to a 256-byte name */
#define MAX_BAD   12

/* For every key: a value it takes, and values it refuses. */
static const struct key_case {
	const char *key, *good;
	const char *bad[MAX_BAD];
} key_cases[] = {
        {"broker.url", "memory://t", {"no-scheme", "", "://x", "1amqp://h", "amqp://a\nb", " ; "}},
        {"result.url", "memory://t", {"nope", "", "redis:/h", "memory://x\x01"}},
        {"queue", "q1", {"", "a\tb", "x\x7f", LONG_NAME, "\xff"}},
        {"result.expires_s", "60", {"-1", "315360001", "soon", "", " 5", "1.5"}},
        {"result.track_started", "false", {"maybe", "", "2"}},
        {"client.send_sent_event", "true", {"maybe", "", "2"}},
        {"worker.send_events", "true", {"maybe", "", "2"}},
        {"worker.remote_control", "yes", {"sometimes", "-1"}},
        {"worker.rate_limits", "llm.*=100/m,key=kwarg:endpoint", {"a=1/s\nb=2/s"}},
        {"worker.rate_limit_url", "redis://h", {"nope", "x:/y"}},
        {"unique.url", "redis://h", {"nope", "x:/y"}},
        {"worker.concurrency", "2", {"-1", "1025", "two"}},
        {"worker.prefetch", "10", {"-1", "1000001", "ten"}},
        {"worker.prefetch_multiplier", "2", {"0", "1001", "-3"}},
        {"worker.queues", "a, b", {",", " , ", "a,\tb", "a," LONG_NAME}},
        {"worker.hostname", "w1@host", {"a\nb", LONG_NAME, "\xc3"}},
        {"worker.eta_horizon_ms", "0", {"-1", "3600001"}},
        {"worker.max_abandoned_threads", "0", {"-1", "1025"}},
        {"worker.pool", "processes", {"fork", "", "Threads", "solo"}},
        {"worker.max_tasks_per_child", "1000", {"-1", "1000000001"}},
        {"worker.max_memory_per_child", "1048576", {"-1", "1099511627777"}},
        {"worker.time_limit_min_ms", "1000", {"-1", "604800001"}},
        {"worker.time_limit_max_ms", "60000", {"-1", "604800001"}},
        {"task.max_retries", "0", {"-1", "1000001"}},
        {"task.retry_backoff_ms", "10", {"-1", "86400001"}},
        {"task.retry_backoff_max_ms", "10", {"-1", "604800001"}},
        {"task.retry_jitter", "off", {"2", "jitter"}},
        {"task.soft_time_limit_ms", "100", {"-5", "604800001", "1s"}},
        {"task.time_limit_ms", "100", {"-5", "604800001", "1s"}},
        {"analyze.task_name", "tasks.x", {"", "a\nb", LONG_NAME}},
        {"analyze.default_analyzer", "llm", {"", "x\ty"}},
        {"message.max_bytes", "2048", {"1023", "67108865"}},
        {"amqp.heartbeat_s", "0", {"-1", "65536"}},
        {"amqp.connect_timeout_ms", "1", {"0", "600001"}},
        {"amqp.confirm_timeout_ms", "1", {"0", "3600001"}},
        {"amqp.queue_max_priority", "10", {"256", "-1"}},
        {"amqp.queue_type", "quorum", {"weird", "", "Classic", "stream"}},
        {"amqp.delivery_limit", "5", {"-1", "1000001"}},
        {"amqp.republish_ms", "0", {"-1", "600001"}},
        {"amqp.ssl_cacert", "/etc/ssl/ca.pem", {"a\nb", "\xff"}},
        {"amqp.ssl_cert", "/etc/ssl/c.pem", {"a\rb", "\xfe"}},
        {"amqp.ssl_key", "/etc/ssl/k.pem", {"a\tb", "\xc0\x80"}},
        {"amqp.ssl_verify", "no", {"sometimes"}},
        {"redis.visibility_timeout_s", "10", {"0", "2592001"}},
        {"redis.lease_renew_ms", "0", {"-1", "3600001"}},
        {"redis.connect_timeout_ms", "1", {"0", "600001"}},
        {"redis.socket_timeout_ms", "1", {"0", "600001"}},
        {"redis.poll_ms", "1", {"0", "10001"}},
        {"redis.reconnect_max_ms", "10", {"9", "600001"}},
        {"redis.master_name", "mymaster", {"a\nb", "\xff"}},
        {"redis.sentinel_password", "s3cret", {"a\rb", "\xfe"}},
        {"redis.sentinel_wait_ms", "0", {"-1", "600001"}},
        {"redis.min_replicas", "1", {"-1", "101"}},
        {"redis.wait_timeout_ms", "1", {"0", "600001"}},
        {"postgres.connect_timeout_s", "1", {"0", "601"}},
        {"postgres.expires_s", "-1", {"-2", "315360001"}},
        {"archive.url", "", {"nope", "x:/y"}},
        {"llm.base_url",
         "https://api.example.com/v1",
         {"ftp://x", "", "http://", "http:///v1", "http://h x/v1", "localhost:11434/v1"}},
        {"llm.model", "gemma3:4b", {"", "a\nb", LONG_NAME}},
        {"llm.api_key", "sk-123", {"sk\r\nX-Evil: 1", "\xff"}},
        {"llm.timeout_ms", "100", {"99", "86400001"}},
        {"llm.connect_timeout_ms", "100", {"99", "3600001"}},
        {"llm.max_tokens", "1", {"0", "1000001"}},
        {"llm.temperature", "1.5", {"hot", "2.5", "-0.1", "1,5", "0x1", "nan"}},
        {"llm.system_prompt", "Be brief.", {"\xff\xfe"}},
        {"llm.prompt_template", "Lyrics: {{lyrics}}", {"\xc3"}},
        {"llm.json_mode", "0", {"nah"}},
        {"llm.presets",
         "fast=model:x,temperature:0.1;big = model:y, base_url:http://h:1/v1/",
         {"qwen=model:x,colour:blue", "noequals", "a=model:x;a=model:y", "llm=model:x",
          "lyrics=model:x", "a=temperature:3", "a=base_url:ftp://x", "a=max_tokens:0",
          "a=json_mode:2", "a=api_key_env:1X", "=model:x", "a=model"}},
        {"llm.max_response_bytes", "1024", {"1023", "268435457"}},
        {"llm.retry_after_max_ms", "0", {"-1", "86400001"}},
        {"embed.enabled", "0", {"maybe"}},
        {"embed.provider", "openai", {"", "bert", "LOCAL"}},
        {"embed.dims", "8", {"7", "4097"}},
        {"embed.model", "text-embedding-3-small", {"", "a\nb", LONG_NAME}},
        {"embed.url", "http://127.0.0.1:8080/v1", {"ftp://x", "http://", "localhost/v1"}},
        {"embed.preset", "small", {"a\nb"}},
        {"embed.api_key", "sk-1", {"sk\r\nX: 1"}},
        {"embed.retries", "10", {"-1", "11"}},
        {"beat.schedule", "/etc/aiqueue/beat.json", {"a\nb", "\xff"}},
        {"beat.timezone", "Europe/Berlin", {"Europe/\nBerlin", "\xc3"}},
        {"beat.url", "redis://h", {"nope", "x:/y"}},
        {"beat.name", "reports", {"", "a\tb", LONG_NAME}},
        {"beat.lease_ms", "500", {"499", "600001", "5s"}},
        {"beat.catchup_s", "0", {"-1", "2678401", "1m"}},
};

#define NCASES (sizeof key_cases / sizeof key_cases[0])

static const struct key_case *case_for(const char *key)
{
	for (size_t i = 0; i < NCASES; i++)
		if (strcmp(key_cases[i].key, key) == 0)
			return &key_cases[i];
	return NULL;
}

static const char *expand(const char *v, char *buf)
{
	const char *mark = strstr(v, LONG_NAME);
	if (mark == NULL)
		return v;
	size_t pre = (size_t)(mark - v);
	memcpy(buf, v, pre);
	memset(buf + pre, 'x', 256);
	buf[pre + 256] = '\0';
	return buf;
}

/* "worker.prefetch" -> "AIQUEUE_WORKER_PREFETCH" */
static void env_of(char *buf, size_t size, const char *key)
{
	size_t n = (size_t)snprintf(buf, size, "AIQUEUE_");
	for (; *key && n + 1 < size; key++)
		buf[n++] = *key == '.' ? '_' : (char)toupper((unsigned char)*key);
	buf[n] = '\0';
}

/* Unset every AIQUEUE_* and CELERY_* variable. */
static void clear_env(void)
{
	for (;;) {
		char name[256] = "";
		for (char **e = environ; *e; e++) {
			if (strncmp(*e, "AIQUEUE_", 8) == 0 || strncmp(*e, "CELERY_", 7) == 0) {
				size_t n = strcspn(*e, "=");
				snprintf(name, sizeof name, "%.*s", (int)n, *e);
				break;
			}
		}
		if (!*name)
			return;
		unsetenv(name);
	}
}

/* Every key of every configuration as one text, to prove nothing changed. */
static char *snapshot(const aiq_config *cfg)
{
	size_t cap = 65536, len = 0;
	char *out = calloc(1, cap);
	ck_assert_ptr_nonnull(out);
	for (size_t i = 0; i < aiq__config_key_count(); i++) {
		char *v = get(cfg, aiq__config_key_name(i));
		len += (size_t)snprintf(out + len, cap - len, "%s=%s\n", aiq__config_key_name(i),
		                        v);
		ck_assert_uint_lt(len, cap);
		aiq_free(v);
	}
	return out;
}

START_TEST(test_every_key_has_a_case)
{
	size_t n = aiq__config_key_count();
	ck_assert_uint_gt(n, 40);
	ck_assert_ptr_null(aiq__config_key_name(n));
	for (size_t i = 0; i < n; i++) {
		const struct key_case *c = case_for(aiq__config_key_name(i));
		ck_assert_msg(c != NULL, "key '%s' has no validation case",
		              aiq__config_key_name(i));
		ck_assert_msg(c->bad[0] != NULL, "key '%s' has no bad value", c->key);
	}
	/* And no case names a key that does not exist. */
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	for (size_t i = 0; i < NCASES; i++) {
		char *v = NULL;
		ck_assert_msg(aiq_config_get(&v, cfg, key_cases[i].key) == AIQ_OK, "%s",
		              key_cases[i].key);
		aiq_free(v);
	}
	aiq_config_free(cfg);
}
END_TEST

/* Each bad value, through every setter, gives AIQ_EINVAL naming the key and
 * leaves the configuration exactly as it was. */
START_TEST(test_bad_values_change_nothing)
{
	clear_env();
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	char buf[512];
	for (size_t i = 0; i < NCASES; i++) {
		const struct key_case *c = &key_cases[i];
		ck_assert_msg(aiq_config_set(cfg, c->key, c->good) == AIQ_OK, "%s=%s: %s", c->key,
		              c->good, aiq_error_last());
		char *before = snapshot(cfg);
		char var[128];
		env_of(var, sizeof var, c->key);
		for (size_t b = 0; b < MAX_BAD && c->bad[b]; b++) {
			const char *bad = expand(c->bad[b], buf);
			ck_assert_msg(aiq_config_set(cfg, c->key, bad) == AIQ_EINVAL,
			              "aiq_config_set(%s, '%s') was accepted", c->key, bad);
			ck_assert_msg(strstr(aiq_error_last(), c->key), "%s: %s", c->key,
			              aiq_error_last());
			int64_t n = 0;
			char *cur = get(cfg, c->key);
			bool is_bool = !strcmp(cur, "true") || !strcmp(cur, "false");
			aiq_free(cur);
			if (aiq_config_get_int(&n, cfg, c->key) != AIQ_OK) {
				ck_assert_int_eq(aiq_config_set_str(cfg, c->key, bad), AIQ_EINVAL);
				ck_assert_ptr_nonnull(strstr(aiq_error_last(), c->key));
			} else if (!is_bool && (isdigit((unsigned char)*bad) || *bad == '-')) {
				/* The typed setter, with the number the text holds. */
				char *end = NULL;
				long long v = strtoll(bad, &end, 10);
				if (*end == '\0') {
					ck_assert_int_eq(aiq_config_set_int(cfg, c->key, v),
					                 AIQ_EINVAL);
					ck_assert_ptr_nonnull(strstr(aiq_error_last(), c->key));
				}
			}
			/* Environment: AIQ_EINVAL naming the variable, nothing loaded. */
			if (*bad) {
				ck_assert_int_eq(setenv("AIQUEUE_WORKER_CONCURRENCY", "3", 1), 0);
				ck_assert_int_eq(setenv(var, bad, 1), 0);
				ck_assert_msg(aiq_config_load_env(cfg) == AIQ_EINVAL, "%s='%s'",
				              var, bad);
				ck_assert_msg(strstr(aiq_error_last(), var), "%s",
				              aiq_error_last());
				unsetenv(var);
				unsetenv("AIQUEUE_WORKER_CONCURRENCY");
			}
			char *after = snapshot(cfg);
			ck_assert_msg(strcmp(before, after) == 0,
			              "%s='%s' changed the configuration", c->key, bad);
			free(after);
		}
		free(before);
	}
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_messages_name_the_range)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "llm.temperature", "hot"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "from 0 to 2"));
	ck_assert_int_eq(aiq_config_set(cfg, "amqp.queue_type", "weird"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "'classic' or 'quorum'"));
	ck_assert_int_eq(aiq_config_set(cfg, "worker.concurrency", "many"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "from 0 to 1024"));
	ck_assert_int_eq(aiq_config_set(cfg, "queue", ""), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "1-255 bytes"));
	ck_assert_int_eq(aiq_config_set(cfg, "llm.presets", "a=colour:blue"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "colour"));
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "known: model"));
	/* A URL and a key are never echoed: they may hold a password. */
	ck_assert_int_eq(aiq_config_set(cfg, "broker.url", "S3cret@host"), AIQ_EINVAL);
	ck_assert_ptr_null(strstr(aiq_error_last(), "S3cret"));
	ck_assert_int_eq(aiq_config_set(cfg, "llm.base_url", "ftp://u:S3cret@h"), AIQ_EINVAL);
	ck_assert_ptr_null(strstr(aiq_error_last(), "S3cret"));
	ck_assert_int_eq(aiq_config_set(cfg, "llm.api_key", "S3cret\n"), AIQ_EINVAL);
	ck_assert_ptr_null(strstr(aiq_error_last(), "S3cret"));
	/* Values the library used to take and still takes. */
	ck_assert_int_eq(aiq_config_set(cfg, "llm.temperature", ""), AIQ_OK);
	ck_assert_int_eq(
	        aiq_config_set(cfg, "broker.url", "amqp://guest:guest@127.0.0.1:1/%2f;amqp://h//"),
	        AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.queues", ""), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "llm.presets", " ; "), AIQ_OK);
	ck_assert_int_eq(
	        aiq_config_set(cfg, "llm.presets",
	                       "qwen = model:preset-qwen, base_url:http://127.0.0.1:9/v1, "
	                       "temperature:0.7 ; gemma=model:gemma3:4b,api_key_env:GEMMA_KEY,"
	                       "max_tokens:64,timeout_ms:100,json_mode:0,temperature:"),
	        AIQ_OK);
	aiq_config_free(cfg);
}
END_TEST

/* Every fallible call leaves a defined *out on failure. */
START_TEST(test_out_on_failure)
{
	aiq_config *poison = (aiq_config *)(uintptr_t)0x1;
	aiq_config *cfg = NULL, *copy = poison;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_copy(&copy, NULL), AIQ_EINVAL);
	ck_assert_ptr_null(copy);
	char *s = (char *)(uintptr_t)0x1;
	ck_assert_int_eq(aiq_config_get(&s, cfg, "nope"), AIQ_ENOTFOUND);
	ck_assert_ptr_null(s);
	s = (char *)(uintptr_t)0x1;
	ck_assert_int_eq(aiq_config_get(&s, NULL, "queue"), AIQ_EINVAL);
	ck_assert_ptr_null(s);
	s = (char *)(uintptr_t)0x1;
	ck_assert_int_eq(aiq_config_get(&s, cfg, NULL), AIQ_EINVAL);
	ck_assert_ptr_null(s);
	int64_t n = 77;
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "queue"), AIQ_EINVAL);
	ck_assert_int_eq(n, 0);
	n = 77;
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "nope"), AIQ_ENOTFOUND);
	ck_assert_int_eq(n, 0);
	n = 77;
	ck_assert_int_eq(aiq_config_get_int(&n, NULL, "worker.prefetch"), AIQ_EINVAL);
	ck_assert_int_eq(n, 0);
	aiq_config_free(cfg);
}
END_TEST

/* ---- Celery's environment ------------------------------------------------ */

static int64_t int_of(const aiq_config *cfg, const char *key)
{
	int64_t n = 0;
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, key), AIQ_OK);
	return n;
}

static void assert_str(const aiq_config *cfg, const char *key, const char *want)
{
	char *v = get(cfg, key);
	ck_assert_str_eq(v, want);
	aiq_free(v);
}

static aiq_config *load(void)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_msg(aiq_config_load_env(cfg) == AIQ_OK, "%s", aiq_error_last());
	return cfg;
}

/* Each Celery setting with an equivalent key, in Celery's units. */
START_TEST(test_celery_settings)
{
	static const struct {
		const char *var, *value, *key, *want;
	} cases[] = {
	        {"CELERY_BROKER_URL", "memory://celery-b", "broker.url", "memory://celery-b"},
	        {"CELERY_RESULT_BACKEND", "memory://celery-r", "result.url", "memory://celery-r"},
	        {"CELERY_TASK_DEFAULT_QUEUE", "lyrics", "queue", "lyrics"},
	        {"CELERY_TASK_DEFAULT_QUEUE_TYPE", "quorum", "amqp.queue_type", "quorum"},
	        {"CELERY_TASK_QUEUE_MAX_PRIORITY", "10", "amqp.queue_max_priority", "10"},
	        {"CELERY_TASK_SOFT_TIME_LIMIT", "2.5", "task.soft_time_limit_ms", "2500"},
	        {"CELERY_TASK_TIME_LIMIT", "300", "task.time_limit_ms", "300000"},
	        {"CELERY_TASK_TIME_LIMIT", "1e3", "task.time_limit_ms", "1000000"},
	        {"CELERY_TASK_TIME_LIMIT", "0.0001", "task.time_limit_ms",
	         "1"}, /* never 0 = none */
	        {"CELERY_TASK_TIME_LIMIT", " 7 ", "task.time_limit_ms", "7000"},
	        {"CELERY_TASK_TRACK_STARTED", "False", "result.track_started", "false"},
	        {"CELERY_TASK_TRACK_STARTED", "TRUE", "result.track_started", "true"},
	        {"CELERY_RESULT_EXPIRES", "3600", "result.expires_s", "3600"},
	        {"CELERY_RESULT_EXPIRES", "0.5", "result.expires_s", "1"},
	        {"CELERY_RESULT_EXPIRES", "0", "result.expires_s", "0"},
	        {"CELERY_WORKER_CONCURRENCY", "8", "worker.concurrency", "8"},
	        {"CELERY_WORKER_MAX_TASKS_PER_CHILD", "100", "worker.max_tasks_per_child", "100"},
	        {"CELERY_WORKER_MAX_MEMORY_PER_CHILD", "200000", "worker.max_memory_per_child",
	         "200000"},
	        {"CELERY_WORKER_PREFETCH_MULTIPLIER", "1", "worker.prefetch_multiplier", "1"},
	        {"CELERY_WORKER_PREFETCH_MULTIPLIER", "16", "worker.prefetch_multiplier", "16"},
	        {"CELERY_WORKER_PREFETCH_MULTIPLIER", "0", "worker.prefetch", "1000000"},
	        {"CELERY_WORKER_DISABLE_PREFETCH", "true", "worker.prefetch_multiplier", "1"},
	        {"CELERY_WORKER_DISABLE_PREFETCH", "false", "worker.prefetch_multiplier", "4"},
	        {"CELERY_BROKER_HEARTBEAT", "120", "amqp.heartbeat_s", "120"},
	        {"CELERY_BROKER_CONNECTION_TIMEOUT", "4", "amqp.connect_timeout_ms", "4000"},
	        {"CELERY_REDIS_SOCKET_TIMEOUT", "120.0", "redis.socket_timeout_ms", "120000"},
	        {"CELERY_REDIS_SOCKET_CONNECT_TIMEOUT", "1.5", "redis.connect_timeout_ms", "1500"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'visibility_timeout': 43200}",
	         "redis.visibility_timeout_s", "43200"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{\"visibility_timeout\": 7200.5}",
	         "redis.visibility_timeout_s", "7201"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'socket_timeout': 3, }",
	         "redis.socket_timeout_ms", "3000"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'socket_connect_timeout': .5}",
	         "redis.connect_timeout_ms", "500"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'connect_timeout': 10}",
	         "amqp.connect_timeout_ms", "10000"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'heartbeat': 30}", "amqp.heartbeat_s", "30"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'polling_interval': 0.25}", "redis.poll_ms",
	         "250"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'master_name': 'mymaster'}",
	         "redis.master_name", "mymaster"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS",
	         "{'master_name': 'm', 'sentinel_kwargs': {'password': 'spw'}}",
	         "redis.sentinel_password", "spw"},
	        /* Options for kombu features this library does not have are ignored. */
	        {"CELERY_BROKER_TRANSPORT_OPTIONS",
	         "{'queue_order_strategy': 'priority', 'priority_steps': [0, 3, 6, 9], "
	         "'sep': ':', 'global_keyprefix': 'it\\'s\"', 'fanout_patterns': True, "
	         "'max_retries': None, 'retry': (1, 2,), 'visibility_timeout': 60}",
	         "redis.visibility_timeout_s", "60"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		clear_env();
		ck_assert_int_eq(setenv(cases[i].var, cases[i].value, 1), 0);
		aiq_config *cfg = NULL;
		ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
		ck_assert_msg(aiq_config_load_env(cfg) == AIQ_OK, "%s=%s: %s", cases[i].var,
		              cases[i].value, aiq_error_last());
		char *v = get(cfg, cases[i].key);
		ck_assert_msg(strcmp(v, cases[i].want) == 0, "%s=%s gave %s=%s, expected %s",
		              cases[i].var, cases[i].value, cases[i].key, v, cases[i].want);
		aiq_free(v);
		aiq_config_free(cfg);
	}
	clear_env();
}
END_TEST

/* AIQUEUE_* wins over CELERY_*, even when the Celery value is bad. */
START_TEST(test_celery_precedence)
{
	clear_env();
	setenv("CELERY_TASK_DEFAULT_QUEUE", "celery-q", 1);
	setenv("AIQUEUE_QUEUE", "our-q", 1);
	setenv("CELERY_TASK_TIME_LIMIT", "not a number", 1);
	setenv("AIQUEUE_TASK_TIME_LIMIT_MS", "1500", 1);
	setenv("CELERY_WORKER_PREFETCH_MULTIPLIER", "0", 1);
	setenv("AIQUEUE_WORKER_PREFETCH", "12", 1);
	setenv("CELERY_WORKER_CONCURRENCY", "6", 1);
	setenv("AIQUEUE_WORKER_PREFETCH_MULTIPLIER", "2", 1);
	setenv("CELERY_BROKER_TRANSPORT_OPTIONS",
	       "{'visibility_timeout': 100, 'socket_timeout': 9}", 1);
	setenv("AIQUEUE_REDIS_VISIBILITY_TIMEOUT_S", "200", 1);
	setenv("CELERY_BROKER_URL", "memory://celery", 1);
	setenv("AIQUEUE_BROKER_URL", "memory://ours", 1);
	aiq_config *cfg = load();
	assert_str(cfg, "queue", "our-q");
	ck_assert_int_eq(int_of(cfg, "task.time_limit_ms"), 1500);
	ck_assert_int_eq(int_of(cfg, "worker.prefetch"), 12);
	ck_assert_int_eq(int_of(cfg, "worker.prefetch_multiplier"), 2);
	ck_assert_int_eq(int_of(cfg, "worker.concurrency"), 6);
	ck_assert_int_eq(int_of(cfg, "redis.visibility_timeout_s"), 200);
	ck_assert_int_eq(int_of(cfg, "redis.socket_timeout_ms"), 9000);
	assert_str(cfg, "broker.url", "memory://ours");
	aiq_config_free(cfg);

	/* As in kombu, a transport option wins over the CELERY_BROKER_* setting. */
	clear_env();
	setenv("CELERY_BROKER_HEARTBEAT", "120", 1);
	setenv("CELERY_BROKER_TRANSPORT_OPTIONS", "{'heartbeat': 10}", 1);
	cfg = load();
	ck_assert_int_eq(int_of(cfg, "amqp.heartbeat_s"), 10);
	aiq_config_free(cfg);

	/* Celery's worker_disable_prefetch wins over a multiplier of 0 (no limit). */
	clear_env();
	setenv("CELERY_WORKER_PREFETCH_MULTIPLIER", "0", 1);
	setenv("CELERY_WORKER_DISABLE_PREFETCH", "yes", 1);
	cfg = load();
	ck_assert_int_eq(int_of(cfg, "worker.prefetch"), 0);
	ck_assert_int_eq(int_of(cfg, "worker.prefetch_multiplier"), 1);
	aiq_config_free(cfg);
	clear_env();
}
END_TEST

/* broker_use_ssl: its files and verification map to amqp.ssl_*; TLS itself
 * must be the URL's scheme, never silently dropped. */
START_TEST(test_celery_use_ssl)
{
	clear_env();
	setenv("CELERY_BROKER_URL", "amqps://u:p@mq.example:5671//", 1);
	setenv("CELERY_BROKER_USE_SSL",
	       "{'ca_certs': '/etc/ssl/ca.pem', 'certfile': '/c.pem', 'keyfile': '/k.pem', "
	       "'cert_reqs': ssl.CERT_NONE, 'ssl_version': 5}",
	       1);
	aiq_config *cfg = load();
	assert_str(cfg, "amqp.ssl_cacert", "/etc/ssl/ca.pem");
	assert_str(cfg, "amqp.ssl_cert", "/c.pem");
	assert_str(cfg, "amqp.ssl_key", "/k.pem");
	ck_assert_int_eq(int_of(cfg, "amqp.ssl_verify"), 0);
	aiq_config_free(cfg);

	setenv("CELERY_BROKER_USE_SSL", "{\"cert_reqs\": 2}", 1);
	setenv("AIQUEUE_AMQP_SSL_CACERT", "/ours.pem", 1);
	cfg = load();
	ck_assert_int_eq(int_of(cfg, "amqp.ssl_verify"), 1);
	assert_str(cfg, "amqp.ssl_cacert", "/ours.pem");
	aiq_config_free(cfg);

	setenv("CELERY_BROKER_USE_SSL", "True", 1);
	cfg = load();
	aiq_config_free(cfg);

	/* Plain amqp:// with TLS asked for: refused, never sent in clear. */
	setenv("CELERY_BROKER_URL", "amqp://u:p@mq.example//", 1);
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "CELERY_BROKER_USE_SSL"));
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "amqps://"));
	assert_str(cfg, "broker.url", "memory://");
	setenv("CELERY_BROKER_USE_SSL", "{'cert_reqs': 7}", 1);
	setenv("CELERY_BROKER_URL", "amqps://h//", 1);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "cert_reqs"));
	setenv("CELERY_BROKER_USE_SSL", "false", 1);
	setenv("CELERY_BROKER_URL", "amqp://h//", 1);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_OK);
	assert_str(cfg, "broker.url", "amqp://h//");
	aiq_config_free(cfg);
	clear_env();
}
END_TEST

/* A bad Celery value names the variable and loads nothing at all. */
START_TEST(test_celery_bad_values)
{
	static const struct {
		const char *var, *value, *hint;
	} cases[] = {
	        {"CELERY_TASK_TIME_LIMIT", "5 minutes", "seconds"},
	        {"CELERY_TASK_TIME_LIMIT", "-1", "out of range"},
	        {"CELERY_TASK_TIME_LIMIT", "1e400", "seconds"},
	        {"CELERY_TASK_SOFT_TIME_LIMIT", "inf", "seconds"},
	        {"CELERY_RESULT_EXPIRES", "1 day", "seconds"},
	        {"CELERY_TASK_DEFAULT_QUEUE_TYPE", "stream", "quorum"},
	        {"CELERY_TASK_TRACK_STARTED", "perhaps", "boolean"},
	        {"CELERY_WORKER_CONCURRENCY", "lots", "integer"},
	        {"CELERY_WORKER_MAX_MEMORY_PER_CHILD", "-5", "worker.max_memory_per_child"},
	        {"CELERY_WORKER_PREFETCH_MULTIPLIER", "1.5", "integer"},
	        {"CELERY_WORKER_PREFETCH_MULTIPLIER", "-4", "out of range"},
	        {"CELERY_WORKER_PREFETCH_MULTIPLIER", "5000", "out of range"},
	        {"CELERY_WORKER_DISABLE_PREFETCH", "sure", "boolean"},
	        {"CELERY_BROKER_URL", "no-scheme", "broker.url"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "visibility_timeout=3600", "dict"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'visibility_timeout': '3600'}", "number"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'visibility_timeout': 0}", "out of range"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'master_name': 5}",
	         "master_name must be a string"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'priority_steps': list(range(10))}", "byte"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "[3600]", "dict"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'a': 1, 'a': 2}", "dict"},
	        {"CELERY_BROKER_TRANSPORT_OPTIONS", "{'a': 'unterminated}", "byte"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		clear_env();
		aiq_config *cfg = NULL;
		ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
		char *before = snapshot(cfg);
		/* A good variable next to the bad one is not loaded either. */
		setenv("AIQUEUE_TASK_MAX_RETRIES", "7", 1);
		setenv("CELERY_TASK_DEFAULT_QUEUE", "other", 1);
		setenv(cases[i].var, cases[i].value, 1);
		ck_assert_msg(aiq_config_load_env(cfg) == AIQ_EINVAL, "%s=%s was accepted",
		              cases[i].var, cases[i].value);
		ck_assert_msg(strstr(aiq_error_last(), cases[i].var) &&
		                      strstr(aiq_error_last(), cases[i].hint),
		              "%s=%s: %s", cases[i].var, cases[i].value, aiq_error_last());
		char *after = snapshot(cfg);
		ck_assert_str_eq(before, after);
		free(before);
		free(after);
		aiq_config_free(cfg);
	}
	clear_env();
}
END_TEST

/* ---- one declaration per key ---------------------------------------------- */

/* The declared default of key i as aiq_config_get() writes it. */
static void declared_default(char *buf, size_t size, const struct aiq__config_key_info *k)
{
	if (k->def_str != NULL)
		snprintf(buf, size, "%s", k->def_str);
	else if (strcmp(k->type, "bool") == 0)
		snprintf(buf, size, "%s", k->def_int ? "true" : "false");
	else
		snprintf(buf, size, "%lld", (long long)k->def_int);
}

/* Every declared key: a fresh configuration holds its declared default, the
 * library's typed read (with and without a configuration) gives that same
 * value, and the default written back through aiq_config_set() round-trips. */
START_TEST(test_declared_defaults_round_trip)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	size_t n = aiq__config_key_count();
	struct aiq__config_key_info k;
	ck_assert(!aiq__config_key_info(n, &k));
	for (size_t i = 0; i < n; i++) {
		ck_assert(aiq__config_key_info(i, &k));
		ck_assert_str_eq(k.name, aiq__config_key_name(i));
		char want[512];
		declared_default(want, sizeof want, &k);
		char *v = get(cfg, k.name);
		ck_assert_msg(strcmp(v, want) == 0, "%s: default '%s', declared '%s'", k.name, v,
		              want);
		ck_assert_int_eq(aiq_config_set(cfg, k.name, v), AIQ_OK);
		aiq_free(v);
		v = get(cfg, k.name);
		ck_assert_str_eq(v, want);
		aiq_free(v);
		if (k.def_str != NULL) {
			ck_assert_str_eq(aiq__cfg_str(cfg, (enum aiq__cfg_str)i), k.def_str);
			ck_assert_str_eq(aiq__cfg_str(NULL, (enum aiq__cfg_str)i), k.def_str);
		} else if (strcmp(k.type, "bool") == 0) {
			ck_assert_int_eq(aiq__cfg_bool(cfg, (enum aiq__cfg_bool)i), k.def_int != 0);
			ck_assert_int_eq(aiq__cfg_bool(NULL, (enum aiq__cfg_bool)i),
			                 k.def_int != 0);
		} else {
			ck_assert_int_eq(aiq__cfg_int(cfg, (enum aiq__cfg_int)i), k.def_int);
			ck_assert_int_eq(aiq__cfg_int(NULL, (enum aiq__cfg_int)i), k.def_int);
			ck_assert_int_eq(aiq__cfg_int_max((enum aiq__cfg_int)i), k.max);
			ck_assert(k.min <= k.def_int && k.def_int <= k.max);
			/* The range's ends are accepted, one past them refused. */
			ck_assert_int_eq(aiq_config_set_int(cfg, k.name, k.min), AIQ_OK);
			ck_assert_int_eq(aiq_config_set_int(cfg, k.name, k.max), AIQ_OK);
			ck_assert_int_eq(aiq__cfg_int(cfg, (enum aiq__cfg_int)i), k.max);
			ck_assert_int_eq(aiq_config_set_int(cfg, k.name, k.max + 1), AIQ_EINVAL);
			ck_assert_int_eq(aiq_config_set_int(cfg, k.name, k.min - 1), AIQ_EINVAL);
		}
	}
	/* A typed read sees what the string-keyed setter stored. */
	ck_assert_int_eq(aiq_config_set(cfg, "redis.socket_timeout_ms", "1234"), AIQ_OK);
	ck_assert_int_eq(aiq__cfg_int(cfg, AIQ_CFG_REDIS_SOCKET_TIMEOUT_MS), 1234);
	ck_assert_int_eq(aiq_config_set(cfg, "amqp.ssl_verify", "off"), AIQ_OK);
	ck_assert(!aiq__cfg_bool(cfg, AIQ_CFG_AMQP_SSL_VERIFY));
	ck_assert_int_eq(aiq_config_set(cfg, "llm.model", "m1"), AIQ_OK);
	ck_assert_str_eq(aiq__cfg_str(cfg, AIQ_CFG_LLM_MODEL), "m1");
	ck_assert_str_eq(aiq__config_key_name(AIQ_CFG_LLM_MODEL), "llm.model");
	aiq_config_free(cfg);
}
END_TEST

/* The text of a docs table cell: `x` -> x, "" -> empty, else as written. */
static void cell_text(char *out, size_t size, const char *cell, size_t len)
{
	while (len > 0 && *cell == ' ') {
		cell++;
		len--;
	}
	while (len > 0 && cell[len - 1] == ' ')
		len--;
	if (len >= 2 && cell[0] == '`' && memchr(cell + 1, '`', len - 1) == cell + len - 1) {
		cell++;
		len -= 2;
	} else if (len == 2 && memcmp(cell, "\"\"", 2) == 0) {
		len = 0;
	}
	snprintf(out, size, "%.*s", (int)len, cell);
}

/* The cells of one "| a | b | …" row; returns how many (at most max). */
static size_t row_cells(const char *line, char cells[][512], size_t max)
{
	size_t n = 0;
	const char *p = line + 1;
	for (const char *bar; n < max && (bar = strchr(p, '|')) != NULL; p = bar + 1)
		cell_text(cells[n++], sizeof cells[0], p, (size_t)(bar - p));
	return n;
}

/* docs/configuration.md's key tables and the declarations agree: the same
 * keys, each with the declared type, default and integer range. The docs
 * are the one place besides the declarations that states a default. */
START_TEST(test_docs_table_matches_declarations)
{
	char *doc = aiq_test_read_data("../../docs/configuration.md", NULL);
	size_t n = aiq__config_key_count();
	bool *seen = calloc(n, sizeof *seen);
	ck_assert_ptr_nonnull(seen);
	size_t rows = 0;
	for (char *line = strtok(doc, "\n"); line; line = strtok(NULL, "\n")) {
		char cells[5][512];
		if (strncmp(line, "| `", 3) != 0 || row_cells(line, cells, 5) < 4)
			continue;
		const char *type = cells[1];
		if (strcmp(type, "string") != 0 && strcmp(type, "int") != 0 &&
		    strcmp(type, "bool") != 0)
			continue; /* another table (the Celery settings) */
		rows++;
		size_t i = 0;
		while (i < n && strcmp(aiq__config_key_name(i), cells[0]) != 0)
			i++;
		ck_assert_msg(i < n, "docs/configuration.md documents '%s', which is no key",
		              cells[0]);
		ck_assert_msg(!seen[i], "docs/configuration.md documents '%s' twice", cells[0]);
		seen[i] = true;
		struct aiq__config_key_info k;
		ck_assert(aiq__config_key_info(i, &k));
		ck_assert_msg(strcmp(type, k.type) == 0, "%s: docs say %s, declared %s", k.name,
		              type, k.type);
		char want[512];
		declared_default(want, sizeof want, &k);
		if (k.def_str != NULL || strcmp(k.type, "bool") == 0) {
			ck_assert_msg(strcmp(cells[2], want) == 0,
			              "%s: docs say default '%s', "
			              "declared '%s'",
			              k.name, cells[2], want);
			continue;
		}
		/* "16777216", "-1 (= `result.expires_s`)"; "lo – hi (note)" */
		char *end;
		long long def = strtoll(cells[2], &end, 10);
		ck_assert_msg(end != cells[2] && def == k.def_int,
		              "%s: docs say default '%s', declared %lld", k.name, cells[2],
		              (long long)k.def_int);
		long long lo = strtoll(cells[3], &end, 10);
		ck_assert_msg(end != cells[3] && strncmp(end, " – ", strlen(" – ")) == 0,
		              "%s: docs range '%s' is not 'lo – hi'", k.name, cells[3]);
		long long hi = strtoll(end + strlen(" – "), NULL, 10);
		ck_assert_msg(lo == k.min && hi == k.max,
		              "%s: docs say %lld – %lld, declared %lld – %lld", k.name, lo, hi,
		              (long long)k.min, (long long)k.max);
	}
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(seen[i], "key '%s' is missing from docs/configuration.md",
		              aiq__config_key_name(i));
	ck_assert_uint_eq(rows, n);
	free(seen);
	free(doc);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_typed_setters);
	tcase_add_test(tc, test_text_setter);
	tcase_add_test(tc, test_unknown_key);
	tcase_add_test(tc, test_copy_is_deep);
	tcase_add_test(tc, test_env);
	tcase_add_test(tc, test_errors_and_version);
	tcase_add_test(tc, test_log_handler);
	tcase_add_test(tc, test_every_key_has_a_case);
	tcase_add_test(tc, test_declared_defaults_round_trip);
	tcase_add_test(tc, test_docs_table_matches_declarations);
	tcase_add_test(tc, test_bad_values_change_nothing);
	tcase_add_test(tc, test_messages_name_the_range);
	tcase_add_test(tc, test_out_on_failure);
	tcase_add_test(tc, test_celery_settings);
	tcase_add_test(tc, test_celery_precedence);
	tcase_add_test(tc, test_celery_bad_values);
	tcase_add_test(tc, test_celery_use_ssl);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
