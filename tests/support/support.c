#include "support.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void ts_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ts_mono_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

int64_t ts_wall_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}

const char *ts_env(const char *var)
{
	const char *v = getenv(var);
	if (v == NULL || v[0] == '\0') {
		/* Not a Check assertion: this may run in main(), outside any case. */
		fprintf(stderr,
		        "%s is not set: run this program through meson test (or its run.sh)\n",
		        var);
		exit(EXIT_FAILURE);
	}
	return v;
}

const char *ts_redis_url(void)
{
	return ts_env("AIQ_TEST_REDIS_URL");
}

const char *ts_amqp_url(void)
{
	return ts_env("AIQ_TEST_AMQP_URL");
}

const char *ts_pg_url(void)
{
	return ts_env("AIQ_PG_URL");
}

char *ts_unique(char *buf, size_t size, const char *prefix)
{
	static atomic_uint counter;
	snprintf(buf, size, "%s-%ld-%u", prefix, (long)getpid(), atomic_fetch_add(&counter, 1));
	return buf;
}

void ts_worker_init(ts_worker *tw, const aiq_config *cfg)
{
	memset(tw, 0, sizeof *tw);
	int rc = aiq_worker_new(&tw->worker, cfg);
	ck_assert_msg(rc == AIQ_OK, "aiq_worker_new: %s", aiq_error_last());
}

static void *run_thread(void *arg)
{
	ts_worker *tw = arg;
	tw->run_rc = aiq_worker_run(tw->worker);
	return NULL;
}

void ts_worker_start(ts_worker *tw)
{
	ck_assert_int_eq(pthread_create(&tw->thread, NULL, run_thread, tw), 0);
	tw->started = true;
}

int ts_worker_join(ts_worker *tw)
{
	if (tw->started) {
		pthread_join(tw->thread, NULL);
		tw->started = false;
	}
	return tw->run_rc;
}

void ts_worker_done(ts_worker *tw)
{
	if (tw->started) {
		aiq_worker_stop(tw->worker);
		ck_assert_int_eq(ts_worker_join(tw), AIQ_OK);
	}
	aiq_worker_free(tw->worker);
	tw->worker = NULL;
}

int ts_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
