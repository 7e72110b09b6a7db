/*
 * The real worker and client over Redis (broker.url and result.url on the
 * private server): round trips, lease renewal of a long task with a short
 * visibility timeout, poison elements, a Redis restart mid-run.
 */
#include "fixture.h"

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fixture {
	aiq_config *cfg;
	aiq_client *client;
	aiq_worker *worker;
	pthread_t thread;
	int run_rc;
	bool started;
};

static atomic_int runs;

static void add_task(aiq_task *t, void *ud)
{
	(void)ud;
	atomic_fetch_add(&runs, 1);
	json_t *a = json_loads(aiq_task_args_json(t), 0, NULL);
	long long sum =
	        json_integer_value(json_array_get(a, 0)) + json_integer_value(json_array_get(a, 1));
	json_decref(a);
	char out[64];
	snprintf(out, sizeof out, "%lld", sum);
	aiq_task_succeed(t, out);
}

static void sleep_task(aiq_task *t, void *ud)
{
	(void)ud;
	atomic_fetch_add(&runs, 1);
	json_t *a = json_loads(aiq_task_args_json(t), 0, NULL);
	int ms = (int)json_integer_value(json_array_get(a, 0));
	json_decref(a);
	rt_sleep_ms(ms);
	aiq_task_succeed(t, "\"slept\"");
}

static void fx_init(struct fixture *fx, int visibility_s)
{
	memset(fx, 0, sizeof *fx);
	atomic_store(&runs, 0);
	ck_assert_int_eq(aiq_config_new(&fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "broker.url", rt_url()), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "result.url", rt_url()), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "worker.concurrency", 4), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "redis.visibility_timeout_s", visibility_s),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "redis.reconnect_max_ms", 500), AIQ_OK);
	int rc = aiq_client_new(&fx->client, fx->cfg);
	ck_assert_msg(rc == AIQ_OK, "client: %s", aiq_error_last());
	ck_assert_int_eq(aiq_worker_new(&fx->worker, fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tests.add", add_task, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tests.sleep", sleep_task, NULL, NULL),
	                 AIQ_OK);
}

static void *run_thread(void *arg)
{
	struct fixture *fx = arg;
	fx->run_rc = aiq_worker_run(fx->worker);
	return NULL;
}

static void fx_start(struct fixture *fx)
{
	ck_assert_int_eq(pthread_create(&fx->thread, NULL, run_thread, fx), 0);
	fx->started = true;
}

static void fx_done(struct fixture *fx)
{
	if (fx->started) {
		aiq_worker_stop(fx->worker);
		pthread_join(fx->thread, NULL);
		ck_assert_msg(fx->run_rc == AIQ_OK, "worker: %s", aiq_worker_error(fx->worker));
	}
	aiq_worker_free(fx->worker);
	aiq_client_free(fx->client);
	aiq_config_free(fx->cfg);
}

static char *enqueue(struct fixture *fx, const char *name, const char *args, int64_t countdown)
{
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	if (countdown > 0)
		ck_assert_int_eq(aiq_enqueue_opts_set_countdown_ms(o, countdown), AIQ_OK);
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx->client, name, args, NULL, o);
	aiq_enqueue_opts_free(o);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	return id;
}

static void expect_result(struct fixture *fx, const char *id, const char *json, int64_t timeout)
{
	aiq_result *r = NULL;
	int rc = aiq_client_wait(&r, fx->client, id, timeout);
	ck_assert_msg(rc == AIQ_OK, "wait %s: %s (%s)", id, aiq_strerror(rc), aiq_error_last());
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), json);
	aiq_result_free(r);
}

START_TEST(round_trip)
{
	rt_flush();
	struct fixture fx;
	fx_init(&fx, 3600);
	enum { N = 30 };
	char *ids[N];
	for (int i = 0; i < N / 2; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d, %d]", i, 1000);
		ids[i] = enqueue(&fx, "tests.add", args, 0);
	}
	fx_start(&fx);
	for (int i = N / 2; i < N; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d, %d]", i, 1000);
		ids[i] = enqueue(&fx, "tests.add", args, 0);
	}
	for (int i = 0; i < N; i++) {
		char want[32];
		snprintf(want, sizeof want, "%d", i + 1000);
		expect_result(&fx, ids[i], want, 20000);
		aiq_free(ids[i]);
	}
	/* the result is Celery's key with the default one-day TTL */
	fx_done(&fx);
	ck_assert_int_eq(atomic_load(&runs), N);
	redisReply *r = rt_cmd("HLEN unacked");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
}
END_TEST

START_TEST(long_task_keeps_its_lease)
{
	rt_flush();
	struct fixture fx;
	fx_init(&fx, 1); /* visibility 1 s, task 3 s */
	char *id = enqueue(&fx, "tests.sleep", "[3000]", 0);
	fx_start(&fx);
	expect_result(&fx, id, "\"slept\"", 20000);
	rt_sleep_ms(1500); /* a wrongful restore would run it again now */
	ck_assert_int_eq(atomic_load(&runs), 1);
	fx_done(&fx);
	ck_assert_int_eq(atomic_load(&runs), 1);
	aiq_free(id);
}
END_TEST

START_TEST(poison_does_not_stop_the_worker)
{
	rt_flush();
	struct fixture fx;
	fx_init(&fx, 3600);
	fx_start(&fx);
	freeReplyObject(rt_cmd("LPUSH celery %s", "}{ not json"));
	freeReplyObject(rt_cmd("LPUSH celery %s", "[1, 2, 3]"));
	char *id = enqueue(&fx, "tests.add", "[2, 3]", 0);
	expect_result(&fx, id, "5", 20000);
	aiq_free(id);
	/* an unregistered task is dead-lettered by the worker with its envelope */
	char *id2 = enqueue(&fx, "tests.nobody", "[]", 0);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, fx.client, id2, 20000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "NotRegistered");
	aiq_result_free(r);
	aiq_free(id2);
	fx_done(&fx);
	redisReply *rr = rt_cmd("LLEN celery.dead");
	ck_assert_int_eq(rr->integer, 3);
	freeReplyObject(rr);
}
END_TEST

START_TEST(redis_restart_mid_run)
{
	rt_flush();
	struct fixture fx;
	fx_init(&fx, 5);
	fx_start(&fx);
	enum { N = 8 };
	char *ids[3 * N];
	for (int i = 0; i < N; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d, 1]", i);
		ids[i] = enqueue(&fx, "tests.add", args, 0);
	}
	for (int i = 0; i < N; i++) {
		char want[16];
		snprintf(want, sizeof want, "%d", i + 1);
		expect_result(&fx, ids[i], want, 20000);
	}
	/* delayed ones wait in Redis across the restart */
	for (int i = N; i < 2 * N; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d, 1]", i);
		ids[i] = enqueue(&fx, "tests.add", args, 2500);
	}
	rt_restart();
	for (int i = 2 * N; i < 3 * N; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d, 1]", i);
		ids[i] = enqueue(&fx, "tests.add", args, 0);
	}
	for (int i = N; i < 3 * N; i++) {
		char want[16];
		snprintf(want, sizeof want, "%d", i + 1);
		expect_result(&fx, ids[i], want, 30000);
	}
	for (int i = 0; i < 3 * N; i++)
		aiq_free(ids[i]);
	fx_done(&fx);
	ck_assert_int_eq(atomic_load(&runs), 3 * N);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("redis_worker");
	TCase *tc = tcase_create("worker");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, round_trip);
	tcase_add_test(tc, long_task_keeps_its_lease);
	tcase_add_test(tc, poison_does_not_stop_the_worker);
	tcase_add_test(tc, redis_restart_mid_run);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return rt_run(suite());
}
