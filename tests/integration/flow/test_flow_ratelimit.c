/*
 * Rate limits against a real redis-server (suite 'flow'): the bucket
 * script on the server's clock, the coordination contract
 * (tests/unit/coord_contract.h), one limit held across three worker
 * processes, a parked task that survives a kill -9 of its worker, and a
 * concurrency limit per key held across three worker processes. With
 * AIQ_PG_URL (the 'ratelimit-postgres' test) the case 'postgres' holds the
 * same limit and concurrency across three workers in PostgreSQL.
 *
 * Workers are this program run again as `test_flow_ratelimit worker RULES
 * CONCURRENCY`: a fresh process (not a fork of the test's threads) that
 * runs one aiq_worker on the test's Redis until SIGTERM, its handler
 * pushing the time each task started to the list flow:starts.
 */
#include "../redis/fixture.h"

#include "../../unit/coord_contract.h"
#include "coord.h"

#include <aiqueue/aiqueue.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the worker processes ---------------------------------------------- */

static aiq_worker *the_worker;
static redisContext *starts_conn;

static void on_term(int sig)
{
	(void)sig;
	aiq_worker_stop(the_worker);
}

/* One hiredis context, used by every pool thread in turn. */
static pthread_mutex_t starts_lock = PTHREAD_MUTEX_INITIALIZER;

static void tick(aiq_task *t, void *ud)
{
	(void)ud;
	int64_t at = unix_ms();
	pthread_mutex_lock(&starts_lock);
	redisReply *r = redisCommand(starts_conn, "RPUSH flow:starts %lld:%s", (long long)at,
	                             aiq_task_id(t));
	pthread_mutex_unlock(&starts_lock);
	freeReplyObject(r);
	aiq_task_succeed(t, "null");
}

/* 150 ms of work, then "START:END:KWARGS" pushed to flow:spans. */
static void busy(aiq_task *t, void *ud)
{
	(void)ud;
	int64_t from = unix_ms();
	struct timespec ts = {0, 150 * 1000000};
	nanosleep(&ts, NULL);
	int64_t to = unix_ms();
	pthread_mutex_lock(&starts_lock);
	redisReply *r = redisCommand(starts_conn, "RPUSH flow:spans %lld:%lld:%s", (long long)from,
	                             (long long)to, aiq_task_kwargs_json(t));
	pthread_mutex_unlock(&starts_lock);
	freeReplyObject(r);
	aiq_task_succeed(t, "null");
}

/* limits: worker.rate_limit_url ("" = the broker's Redis). */
static int worker_main(const char *rules, int concurrency, int visibility_s, const char *limits)
{
	const char *url = getenv("AIQ_TEST_REDIS_URL");
	const char *port = getenv("AIQ_TEST_REDIS_PORT");
	if (!url || !port)
		return 2;
	starts_conn = redisConnect("127.0.0.1", atoi(port));
	aiq_config *cfg = NULL;
	if (aiq_config_new(&cfg) || aiq_config_set_str(cfg, "broker.url", url) ||
	    aiq_config_set_str(cfg, "result.url", url) ||
	    aiq_config_set_int(cfg, "worker.concurrency", concurrency) ||
	    aiq_config_set_int(cfg, "redis.visibility_timeout_s", visibility_s) ||
	    aiq_config_set_str(cfg, "worker.rate_limits", rules) ||
	    aiq_config_set_str(cfg, "worker.rate_limit_url", limits) ||
	    aiq_worker_new(&the_worker, cfg) ||
	    aiq_worker_register(the_worker, "flow.tick", tick, NULL, NULL) ||
	    aiq_worker_register(the_worker, "flow.busy", busy, NULL, NULL)) {
		fprintf(stderr, "worker: %s\n", aiq_error_last());
		return 2;
	}
	signal(SIGTERM, on_term);
	int rc = aiq_worker_run(the_worker);
	if (rc != AIQ_OK)
		fprintf(stderr, "worker %ld: %s (%s)\n", (long)getpid(), aiq_strerror(rc),
		        aiq_worker_error(the_worker));
	aiq_worker_free(the_worker);
	aiq_config_free(cfg);
	redisFree(starts_conn);
	return rc == AIQ_OK ? 0 : 1;
}

/* Where the workers keep their limits: "" (the broker's Redis) in the
 * 'redis' case, the PostgreSQL of AIQ_PG_URL in the 'postgres' case. */
static const char *limits_url = "";

/* visibility_s: redis.visibility_timeout_s, short where a killed worker's
 * deliveries must come back soon. */
static pid_t spawn_worker(const char *rules, int concurrency, int visibility_s)
{
	char conc[16], vis[16];
	snprintf(conc, sizeof conc, "%d", concurrency);
	snprintf(vis, sizeof vis, "%d", visibility_s);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		execl("/proc/self/exe", "test_flow_ratelimit", "worker", rules, conc, vis,
		      limits_url, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void stop_worker(pid_t pid)
{
	kill(pid, SIGTERM);
	int st = 0;
	pid_t got = 0;
	for (int i = 0; i < 400 && (got = waitpid(pid, &st, WNOHANG)) == 0; i++)
		rt_sleep_ms(50);
	if (got == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		ck_abort_msg("worker %ld did not stop within 20 s of SIGTERM", (long)pid);
	}
	ck_assert_int_eq(got, pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker ended with status %d", st);
}

/* ---- the tests ----------------------------------------------------------- */

static aiq_client *client(void)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", rt_url()), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", rt_url()), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	aiq_config_free(cfg);
	return c;
}

/* Start times (UNIX ms) pushed by the workers, sorted. */
static size_t read_starts(int64_t *out, size_t max)
{
	redisReply *r = rt_cmd("LRANGE flow:starts 0 -1");
	size_t n = 0;
	for (size_t i = 0; i < r->elements && n < max; i++)
		out[n++] = strtoll(r->element[i]->str, NULL, 10);
	freeReplyObject(r);
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
			int64_t x = out[j];
			out[j] = out[j - 1];
			out[j - 1] = x;
		}
	return n;
}

START_TEST(bucket_script_on_server_clock)
{
	rt_flush();
	aiq__coord *k = coord_open_for(NULL, NULL, rt_url(), "redis");
	int64_t wait = -1;
	double left = 0;
	/* 10/s, burst 3: three at once, then turns 100 ms apart. */
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, "b", 10, 3, 1, true), AIQ_OK);
		ck_assert_int_eq(wait, 0);
	}
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, "b", 10, 3, 1, true), AIQ_OK);
	ck_assert_msg(wait > 90000 && wait <= 100000, "%lld us", (long long)wait);
	ck_assert_msg(left <= -0.9 && left > -1.0, "%f", left);
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, "b", 10, 3, 2, true), AIQ_OK);
	ck_assert_msg(wait > 290000 && wait <= 300000, "%lld us", (long long)wait);
	/* Reading takes nothing; the refill follows the server's clock. */
	rt_sleep_ms(300);
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, "b", 10, 3, 1, false), AIQ_OK);
	ck_assert_msg(left > -0.05 && left < 0.2, "%f after 300 ms", left);
	redisReply *r = rt_cmd("HGET b tokens");
	ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
	freeReplyObject(r);
	/* An idle bucket expires once it would be full again. */
	r = rt_cmd("PTTL b");
	ck_assert_msg(r->integer > 0 && r->integer <= 1400, "%lld", (long long)r->integer);
	freeReplyObject(r);
	aiq__coord_free(k);
}
END_TEST

static aiq__coord *open_coord_redis(void)
{
	return coord_open_for(NULL, rt_url(), NULL, "redis");
}

/* The contract PostgreSQL meets too (tests/unit/coord_contract.h). */
START_TEST(coord_contract_redis)
{
	rt_flush();
	aiq__coord *k = open_coord_redis();
	coord_contract(k, "contract:");
	redisReply *r = rt_cmd("ZCARD contract:lease");
	ck_assert_int_eq(r->integer, 2);
	freeReplyObject(r);
	aiq__coord_free(k);
	coord_race(open_coord_redis, "race:");
}
END_TEST

static void one_limit(void)
{
	rt_flush();
	aiq_client *c = client();
	enum { N = 120, RATE = 10, WINDOW_MS = 5000 };
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(aiq_client_enqueue(NULL, c, "flow.tick", NULL, NULL, NULL),
		                 AIQ_OK);
	pid_t w[3];
	for (int i = 0; i < 3; i++)
		w[i] = spawn_worker("flow.tick=10/s", 2, 60);
	int64_t t0 = rt_mono_ms();
	int64_t s[N + 10];
	size_t n = 0;
	while ((n = read_starts(s, N + 10)) == 0 && rt_mono_ms() - t0 < 10000)
		rt_sleep_ms(20);
	ck_assert_msg(n > 0, "no task started");
	rt_sleep_ms(WINDOW_MS + 300);
	n = read_starts(s, N + 10);
	size_t in = 0;
	for (size_t i = 0; i < n; i++)
		in += s[i] - s[0] < WINDOW_MS;
	for (int i = 0; i < 3; i++)
		stop_worker(w[i]);
	/* A bucket of 1 refilled at 10/s lets at most 1 + 10 * 5 start in
	 * 5 s; parking costs some lateness, never more starts. */
	fprintf(stderr,
	        "three workers, limit %d/s (%s): %zu tasks started in the first %d ms (%.2f/s)\n",
	        RATE, *limits_url ? "PostgreSQL" : "Redis", in, WINDOW_MS,
	        (double)in * 1000.0 / WINDOW_MS);
	ck_assert_msg(in <= 1 + RATE * WINDOW_MS / 1000, "%zu starts in %d ms", in, WINDOW_MS);
	ck_assert_msg(in >= RATE * WINDOW_MS / 1000 * 85 / 100, "only %zu starts in %d ms", in,
	              WINDOW_MS);
	aiq_client_free(c);
}

START_TEST(three_workers_one_limit)
{
	one_limit();
}
END_TEST

START_TEST(parked_task_survives_kill_9)
{
	rt_flush();
	aiq_client *c = client();
	enum { N = 20 };
	char *ids[N];
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(aiq_client_enqueue(&ids[i], c, "flow.tick", NULL, NULL, NULL),
		                 AIQ_OK);
	pid_t a = spawn_worker("flow.tick=4/s", 2, 2);
	/* Let it take the backlog and park what must wait (5 s of turns). */
	int64_t t0 = rt_mono_ms();
	long long parked = 0;
	while (rt_mono_ms() - t0 < 5000) {
		redisReply *r = rt_cmd("LLEN flow:starts");
		long long ran = r->integer;
		freeReplyObject(r);
		r = rt_cmd("KEYS *");
		parked = 0;
		for (size_t i = 0; i < r->elements; i++)
			if (strstr(r->element[i]->str, "delayed")) {
				redisReply *z = rt_cmd("ZCARD %s", r->element[i]->str);
				parked += z->integer;
				freeReplyObject(z);
			}
		freeReplyObject(r);
		if (ran >= 2 && parked >= N / 2)
			break;
		rt_sleep_ms(50);
	}
	ck_assert_msg(parked >= N / 2, "only %lld parked", parked);
	kill(a, SIGKILL);
	waitpid(a, NULL, 0);
	pid_t b = spawn_worker("flow.tick=4/s", 2, 2);
	int lost = 0;
	for (int i = 0; i < N; i++) {
		aiq_result *r = NULL;
		int rc = aiq_client_wait(&r, c, ids[i], 30000);
		if (rc != AIQ_OK || aiq_result_state(r) != AIQ_STATE_SUCCESS)
			lost++;
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	stop_worker(b);
	fprintf(stderr, "kill -9 with %lld tasks parked: %d of %d lost\n", parked, lost, N);
	ck_assert_int_eq(lost, 0);
	aiq_client_free(c);
}
END_TEST

/* Most spans of flow:spans for `tenant` that overlap at one instant. */
static int most_at_once(const char *tenant)
{
	redisReply *r = rt_cmd("LRANGE flow:spans 0 -1");
	int most = 0;
	for (size_t i = 0; i < r->elements; i++) {
		if (strstr(r->element[i]->str, tenant) == NULL)
			continue;
		long long from = strtoll(r->element[i]->str, NULL, 10);
		int at_once = 0; /* spans of the tenant running when span i starts */
		for (size_t j = 0; j < r->elements; j++) {
			const char *e = r->element[j]->str;
			char *colon = NULL;
			long long f = strtoll(e, &colon, 10), to = strtoll(colon + 1, NULL, 10);
			if (strstr(e, tenant) && f <= from && from < to)
				at_once++;
		}
		if (at_once > most)
			most = at_once;
	}
	freeReplyObject(r);
	return most;
}

static void concurrency_per_key(void)
{
	rt_flush();
	aiq_client *c = client();
	enum { N = 24 };
	char *ids[N];
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(
		        aiq_client_enqueue(&ids[i], c, "flow.busy", NULL,
		                           i % 2 ? "{\"tenant\": \"tb\"}" : "{\"tenant\": \"ta\"}",
		                           NULL),
		        AIQ_OK);
	pid_t w[3];
	for (int i = 0; i < 3; i++)
		w[i] = spawn_worker("flow.busy=concurrency=2,key=kwarg:tenant", 3, 60);
	int failed = 0;
	int64_t t0 = rt_mono_ms();
	for (int i = 0; i < N; i++) {
		aiq_result *r = NULL;
		int rc = aiq_client_wait(&r, c, ids[i], 30000);
		if (rc != AIQ_OK || aiq_result_state(r) != AIQ_STATE_SUCCESS)
			failed++;
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	int64_t took = rt_mono_ms() - t0;
	for (int i = 0; i < 3; i++)
		stop_worker(w[i]);
	int a = most_at_once("ta"), b = most_at_once("tb");
	fprintf(stderr,
	        "three workers x 3 threads, concurrency 2 per tenant (%s): %d tasks in %lld ms, at "
	        "most %d and %d at once\n",
	        *limits_url ? "PostgreSQL" : "Redis", N, (long long)took, a, b);
	ck_assert_int_eq(failed, 0);
	/* 9 threads, but never more than 2 of a tenant; the limit was reached. */
	ck_assert_int_eq(a, 2);
	ck_assert_int_eq(b, 2);
	/* Every slot was given back: two new ones fit under the limit at once. */
	aiq__coord *k =
	        coord_open_for(NULL, rt_url(), limits_url, *limits_url ? "postgres" : "redis");
	bool got1 = false, got2 = false, got3 = true;
	const char *key = "aiq:concurrency:flow.busy#ta";
	ck_assert_int_eq(aiq__coord_lease_take(k, &got1, key, "check-1", 2, 10000), AIQ_OK);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got2, key, "check-2", 2, 10000), AIQ_OK);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got3, key, "check-3", 2, 10000), AIQ_OK);
	ck_assert(got1 && got2 && !got3);
	aiq__coord_lease_drop(k, key, "check-1");
	aiq__coord_lease_drop(k, key, "check-2");
	aiq__coord_free(k);
	aiq_client_free(c);
}

START_TEST(three_workers_concurrency_per_key)
{
	concurrency_per_key();
}
END_TEST

/* The same two across three worker processes, with the limits in
 * PostgreSQL (the broker stays the test's Redis). */
START_TEST(three_workers_one_limit_pg)
{
	limits_url = getenv("AIQ_PG_URL");
	one_limit();
}
END_TEST

START_TEST(three_workers_concurrency_per_key_pg)
{
	limits_url = getenv("AIQ_PG_URL");
	concurrency_per_key();
}
END_TEST

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "worker") == 0)
		return worker_main(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5]);
	Suite *s = suite_create("flow_ratelimit");
	TCase *tc = tcase_create("redis");
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, bucket_script_on_server_clock);
	tcase_add_test(tc, coord_contract_redis);
	tcase_add_test(tc, three_workers_one_limit);
	tcase_add_test(tc, parked_task_survives_kill_9);
	tcase_add_test(tc, three_workers_concurrency_per_key);
	suite_add_tcase(s, tc);
	/* Run by the 'ratelimit-postgres' test, which starts a PostgreSQL too
	 * and picks this case with CK_RUN_CASE. */
	if (getenv("AIQ_PG_URL")) {
		TCase *pg = tcase_create("postgres");
		tcase_set_timeout(pg, 90);
		tcase_add_test(pg, three_workers_one_limit_pg);
		tcase_add_test(pg, three_workers_concurrency_per_key_pg);
		suite_add_tcase(s, pg);
	}
	return rt_run(s);
}
