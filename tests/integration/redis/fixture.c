/*
 * Shared helpers of the Redis integration tests.
 */
#include "fixture.h"

#include "config_int.h"
#include "message.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *rt_url(void)
{
	const char *u = getenv("AIQ_TEST_REDIS_URL");
	ck_assert_msg(u != NULL, "AIQ_TEST_REDIS_URL is not set: run through run.sh");
	return u;
}

redisContext *rt_raw(void)
{
	const char *port = getenv("AIQ_TEST_REDIS_PORT");
	ck_assert_msg(port != NULL, "AIQ_TEST_REDIS_PORT is not set: run through run.sh");
	struct timeval tv = {5, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", atoi(port), tv);
	ck_assert_msg(c != NULL && c->err == 0, "cannot connect to the test redis");
	return c;
}

redisReply *rt_cmd(const char *fmt, ...)
{
	redisContext *c = rt_raw();
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	ck_assert_msg(r != NULL, "redis command failed: %s", c->errstr);
	redisFree(c);
	return r;
}

void rt_flush(void)
{
	freeReplyObject(rt_cmd("FLUSHALL"));
}

void rt_restart(void)
{
	const char *sh = getenv("AIQ_TEST_REDIS_SH");
	const char *dir = getenv("AIQ_TEST_REDIS_DIR");
	ck_assert(sh != NULL && dir != NULL);
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "'%s' restart '%s' >/dev/null", sh, dir);
	ck_assert_int_eq(system(cmd), 0);
}

void rt_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

int64_t rt_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int rt_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

aiq_config *rt_broker_cfg(int visibility_s)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.visibility_timeout_s", visibility_s),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.poll_ms", 10), AIQ_OK);
	return cfg;
}

aiq__broker *rt_open_broker(const aiq_config *cfg)
{
	aiq__broker *b = NULL;
	int rc = aiq__broker_open(&b, rt_url(), cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	ck_assert_str_eq(b->ops->name, "redis");
	return b;
}

void rt_make_wire(aiq__wire *w, const char *id, int priority)
{
	aiq__message m;
	aiq__message_init(&m);
	m.id = strdup(id);
	m.task = strdup("tests.echo");
	m.args = json_pack("[s]", id);
	m.priority = priority;
	ck_assert_int_eq(aiq__message_to_wire(w, &m), AIQ_OK);
	aiq__message_clear(&m);
}

void rt_publish(aiq__broker *b, const char *queue, const char *id, int priority,
                int64_t not_before_ms)
{
	aiq__wire w = {0};
	rt_make_wire(&w, id, priority);
	int rc = b->ops->publish(b, queue, &w, not_before_ms);
	ck_assert_msg(rc == AIQ_OK, "publish: %s", aiq_error_last());
	aiq__wire_clear(&w);
}

const char *rt_id_of(const aiq__delivery *d)
{
	return json_string_value(json_object_get(d->wire.headers, "id"));
}

long long rt_llen(const char *key)
{
	redisReply *r = rt_cmd("LLEN %b", key, strlen(key));
	ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
	long long n = r->integer;
	freeReplyObject(r);
	return n;
}
