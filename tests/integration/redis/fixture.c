/*
 * Shared helpers of the Redis integration tests.
 */
#include "fixture.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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
