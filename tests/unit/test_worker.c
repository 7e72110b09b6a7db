/*
 * Worker semantics on the memory broker and store: outcomes, retries,
 * ETA/expiry, revocation, time limits, dead letters, concurrency, prefetch,
 * graceful and aborting stops, events.
 */
#include "testutil.h"

#include "broker.h"
#include "config_int.h"
#include "worker_int.h"

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- fixture ------------------------------------------------------------- */

struct fixture {
	aiq_config *cfg;
	aiq_client *client;
	aiq_worker *worker;
	pthread_t thread;
	int run_rc;
	bool started;
};

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fx_init(struct fixture *fx, const char *name, int concurrency)
{
	memset(fx, 0, sizeof *fx);
	char url[128];
	snprintf(url, sizeof url, "memory://%s", name);
	ck_assert_int_eq(aiq_config_new(&fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "broker.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "result.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "worker.concurrency", concurrency), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "task.retry_backoff_ms", 10), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&fx->client, fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&fx->worker, fx->cfg), AIQ_OK);
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

static int fx_join(struct fixture *fx)
{
	if (fx->started) {
		pthread_join(fx->thread, NULL);
		fx->started = false;
	}
	return fx->run_rc;
}

static void fx_done(struct fixture *fx)
{
	if (fx->started) {
		aiq_worker_stop(fx->worker);
		ck_assert_int_eq(fx_join(fx), AIQ_OK);
	}
	aiq_worker_free(fx->worker);
	aiq_client_free(fx->client);
	aiq_config_free(fx->cfg);
}

static char *enqueue(struct fixture *fx, const char *name, const char *args,
                     const aiq_enqueue_opts *o)
{
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx->client, name, args, NULL, o);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	return id;
}

static aiq_result *wait_for(struct fixture *fx, const char *id, int64_t timeout_ms)
{
	aiq_result *r = NULL;
	int rc = aiq_client_wait(&r, fx->client, id, timeout_ms);
	ck_assert_msg(rc == AIQ_OK, "wait %s: %s (%s)", id, aiq_strerror(rc), aiq_error_last());
	return r;
}

/* Open a raw handle on the same memory broker, to look at queues directly. */
static aiq__broker *raw_broker(struct fixture *fx)
{
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, aiq__cfg_str(fx->cfg, AIQ_CFG_BROKER_URL), fx->cfg),
	                 AIQ_OK);
	return b;
}

static uint64_t depth(struct fixture *fx, const char *queue)
{
	aiq__broker *b = raw_broker(fx);
	uint64_t n = 0;
	ck_assert_int_eq(aiq__broker_depth(b, queue, &n), AIQ_OK);
	aiq__broker_close(b);
	return n;
}

/* ---- handlers -------------------------------------------------------------- */

static void add_handler(aiq_task *t, void *ud)
{
	(void)ud;
	json_t *args = json_loads(aiq_task_args_json(t), 0, NULL);
	json_int_t sum = 0;
	size_t i;
	json_t *v;
	json_array_foreach(args, i, v) sum += json_integer_value(v);
	json_decref(args);
	char buf[64];
	snprintf(buf, sizeof buf, "%lld", (long long)sum);
	aiq_task_succeed(t, buf);
}

static void fail_handler(aiq_task *t, void *ud)
{
	(void)ud;
	ck_assert_int_eq(aiq_task_set_traceback(t, "Traceback: frame 1\nframe 2"), AIQ_OK);
	aiq_task_fail(t, "AnalysisError", "model exploded", "tasks");
}

/* Reports a result that is not JSON, then returns. */
static void bad_result_handler(aiq_task *t, void *ud)
{
	atomic_int *rc = ud;
	atomic_store(rc, aiq_task_succeed(t, "{not json"));
}

/* A refused report followed by a valid one: the valid one counts. */
static void corrected_result_handler(aiq_task *t, void *ud)
{
	(void)ud;
	ck_assert_int_eq(aiq_task_succeed(t, "[1,"), AIQ_EJSON);
	ck_assert_int_eq(aiq_task_succeed(t, "[1, 2]"), AIQ_OK);
}

struct counter {
	atomic_int calls;
	atomic_int active;
	atomic_int max_active;
	int sleep_ms;
	int retry_until; /* retry while retries < this */
	int64_t retry_countdown;
};

static void counting_handler(aiq_task *t, void *ud)
{
	struct counter *c = ud;
	atomic_fetch_add(&c->calls, 1);
	int a = atomic_fetch_add(&c->active, 1) + 1;
	int m = atomic_load(&c->max_active);
	while (a > m && !atomic_compare_exchange_weak(&c->max_active, &m, a))
		;
	if (c->sleep_ms)
		sleep_ms(c->sleep_ms);
	atomic_fetch_sub(&c->active, 1);
	if (aiq_task_retries(t) < c->retry_until)
		aiq_task_retry(t, c->retry_countdown, "not yet");
	else {
		char buf[32];
		snprintf(buf, sizeof buf, "%d", aiq_task_retries(t));
		aiq_task_succeed(t, buf);
	}
}

/* Runs until cancelled (or 5 s), then reports which reason it saw. */
static void cancellable_handler(aiq_task *t, void *ud)
{
	atomic_int *seen = ud;
	int64_t end = now_ms() + 5000;
	int why = 0;
	while (now_ms() < end && (why = aiq_task_cancelled(t)) == 0)
		sleep_ms(5);
	atomic_store(seen, why);
	aiq_task_succeed(t, why == AIQ_ETIMEDOUT ? "\"soft\"" : "\"cancelled\"");
}

static atomic_bool stubborn_finished;

static void stubborn_handler(aiq_task *t, void *ud)
{
	(void)ud;
	sleep_ms(1500); /* ignores the cancellation flag */
	atomic_store(&stubborn_finished, true);
	aiq_task_succeed(t, "\"too late\"");
}

/* ---- tests ------------------------------------------------------------------ */

/* ---- hard time limits: threads and memory stay bounded ------------------- */

static int live_threads(void)
{
	int n = 0;
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "Threads:", 8) == 0)
			n = atoi(line + 8);
	if (f)
		fclose(f);
	return n;
}

static long vm_size_kb(void)
{
	long kb = 0;
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "VmSize:", 7) == 0)
			kb = atol(line + 7);
	if (f)
		fclose(f);
	return kb;
}

static int task_dir_count(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	if (d)
		closedir(d);
	return n;
}

/* Ignores cancellation: sleeps past its hard limit, then reports. */
static void overrun_handler(aiq_task *t, void *ud)
{
	sleep_ms(*(int *)ud);
	aiq_task_succeed(t, "\"late\"");
}

static atomic_bool g_release;

/* Hangs (ignoring cancellation) until the test releases it. */
static void hanging_handler(aiq_task *t, void *ud)
{
	(void)ud;
	int64_t end = now_ms() + 20000;
	while (!atomic_load(&g_release) && now_ms() < end)
		sleep_ms(5);
	aiq_task_succeed(t, "\"released\"");
}

static char *enqueue_limited(struct fixture *fx, const char *name, int64_t hard_ms)
{
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_time_limits(o, 0, hard_ms), AIQ_OK);
	char *id = enqueue(fx, name, "[]", o);
	aiq_enqueue_opts_free(o);
	return id;
}

static void fx_reconfigure(struct fixture *fx)
{
	aiq_worker_free(fx->worker);
	ck_assert_int_eq(aiq_worker_new(&fx->worker, fx->cfg), AIQ_OK);
}

/* Regression: every hard-limit expiry left a thread that was neither joined
 * nor detached until the run ended (its stack stayed mapped). */
START_TEST(test_hard_limit_threads_reaped)
{
	struct fixture fx;
	fx_init(&fx, "w_reap", 1);
	int sleep_for = 120;
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.overrun", overrun_handler, &sleep_for, NULL),
	        AIQ_OK);
	enum { N = 60 };
	char *ids[N];
	for (int i = 0; i < N; i++)
		ids[i] = enqueue_limited(&fx, "tasks.overrun", 5);
	long vm0 = 0;
	int tasks0 = task_dir_count();
	fx_start(&fx);
	size_t max_table = 0;
	int max_tasks = 0;
	for (int i = 0; i < N; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 20000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
		ck_assert_str_eq(aiq_result_error_type(r), "TimeLimitExceeded");
		aiq_result_free(r);
		aiq_free(ids[i]);
		if (i == N / 3)
			vm0 = vm_size_kb(); /* malloc arenas of the pool exist by now */
		size_t n = aiq__worker_thread_count(fx.worker);
		max_table = n > max_table ? n : max_table;
		int k = task_dir_count();
		max_tasks = k > max_tasks ? k : max_tasks;
	}
	/* The last overrunning handlers return (~100 ms late) and are reaped;
	 * on a loaded machine that may take longer than their sleep. */
	size_t left = aiq__worker_thread_count(fx.worker);
	for (int k = 0; k < 100 && left > 2; k++) {
		sleep_ms(50);
		left = aiq__worker_thread_count(fx.worker);
	}
	long grown_mb = (vm_size_kb() - vm0) / 1024;
	fprintf(stderr,
	        "reap: %d expiries, unjoined threads max %zu, after %zu; live threads %d -> max "
	        "%d; VmSize +%ld MB\n",
	        N, max_table, left, tasks0, max_tasks, grown_mb);
	/* A handler overruns by ~100 ms; only a few are still sleeping. */
	ck_assert_uint_le(left, 2);
	ck_assert_uint_le(max_table, 12);
	ck_assert_int_le(max_tasks, tasks0 + 1 + 12);
	/* 40 more unjoined 8 MB stacks would be ~320 MB. */
	ck_assert_int_lt(grown_mb, 160);
	ck_assert_int_eq(aiq_worker_counter(fx.worker, AIQ_COUNTER_FAILED), N);
	fx_done(&fx);
}
END_TEST

/* Regression: each expiry started a replacement thread without bound. */
START_TEST(test_hard_limit_abandoned_cap)
{
	struct fixture fx;
	fx_init(&fx, "w_cap", 1);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.max_abandoned_threads", 2), AIQ_OK);
	fx_reconfigure(&fx);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.hang", hanging_handler, NULL, NULL),
	                 AIQ_OK);
	atomic_store(&g_release, false);
	enum { N = 10 };
	char *ids[N];
	for (int i = 0; i < N; i++)
		ids[i] = enqueue_limited(&fx, "tasks.hang", 20);
	int base = live_threads();
	fx_start(&fx);
	/* Three expire: two replaced, the third is not: the worker stops taking work. */
	for (int i = 0; i < 3; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 5000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
		aiq_result_free(r);
	}
	sleep_ms(400);
	int peak = live_threads();
	fprintf(stderr, "cap: live threads %d -> %d with 3 handlers hanging (cap 2)\n", base, peak);
	/* run thread + 3 hanging handlers (one thread of slack for sanitizer
	 * runtimes); without the cap there would be one per expiry. */
	ck_assert_int_le(peak, base + 1 + 3 + 1);
	ck_assert_uint_le(aiq__worker_thread_count(fx.worker), 3);
	for (int i = 3; i < N; i++) {
		aiq_result *r = NULL;
		ck_assert_int_eq(aiq_client_get_result(&r, fx.client, ids[i]), AIQ_OK);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
		aiq_result_free(r);
	}
	ck_assert_msg(strstr(aiq_worker_error(fx.worker), "max_abandoned_threads") != NULL,
	              "worker error: %s", aiq_worker_error(fx.worker));
	/* The hanging handlers return: work resumes, threads are reaped. */
	atomic_store(&g_release, true);
	for (int i = 3; i < N; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 5000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		aiq_result_free(r);
	}
	for (int64_t end = now_ms() + 3000;
	     aiq__worker_thread_count(fx.worker) > 1 && now_ms() < end;)
		sleep_ms(20);
	ck_assert_uint_le(aiq__worker_thread_count(fx.worker), 1);
	for (int i = 0; i < N; i++)
		aiq_free(ids[i]);
	fx_done(&fx);
}
END_TEST

/* Producer-chosen limits are clamped to worker.time_limit_{min,max}_ms. */
START_TEST(test_time_limit_clamp)
{
	struct fixture fx;
	fx_init(&fx, "w_clamp", 2);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.time_limit_min_ms", 300), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.time_limit_max_ms", 500), AIQ_OK);
	fx_reconfigure(&fx);
	int sleep_for = 100;
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.overrun", overrun_handler, &sleep_for, NULL),
	        AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.hang", hanging_handler, NULL, NULL),
	                 AIQ_OK);
	atomic_store(&g_release, false);
	char *quick = enqueue_limited(&fx, "tasks.overrun", 1);   /* raised to 300 ms */
	char *slow = enqueue_limited(&fx, "tasks.hang", 3600000); /* lowered to 500 ms */
	int64_t t0 = now_ms();
	fx_start(&fx);
	aiq_result *r = wait_for(&fx, quick, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	r = wait_for(&fx, slow, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "TimeLimitExceeded");
	ck_assert_str_eq(aiq_result_error_message(r), "TimeLimitExceeded(0.500)");
	ck_assert_int_lt(now_ms() - t0, 3000);
	aiq_result_free(r);
	atomic_store(&g_release, true);
	aiq_free(quick);
	aiq_free(slow);
	fx_done(&fx);

	/* A floor above the ceiling is refused. */
	aiq_config *cfg = NULL;
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.time_limit_min_ms", 600), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.time_limit_max_ms", 500), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_EINVAL);
	ck_assert_ptr_null(w);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_success_roundtrip)
{
	struct fixture fx;
	fx_init(&fx, "w_success", 2);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.add", add_handler, NULL, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.add", "[2, 3, 37]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "42");
	ck_assert_str_eq(aiq_result_task_id(r), id);
	ck_assert_ptr_nonnull(aiq_result_date_done(r));
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_eq(aiq_worker_counter(fx.worker, 0), 1);
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

START_TEST(test_builtin_analyze)
{
	struct fixture fx;
	fx_init(&fx, "w_analyze", 2);
	fx_start(&fx);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, fx.client, "tasks.analyze_track",
	                                    "[7, \"I love the night\\nWe shine so bright\"]",
	                                    "{\"analyzer\": \"lyrics\"}", NULL),
	                 AIQ_OK);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	json_t *v = json_loads(aiq_result_json(r), 0, NULL);
	ck_assert_ptr_nonnull(v);
	ck_assert_int_eq(json_integer_value(json_object_get(v, "track_id")), 7);
	ck_assert_str_eq(json_string_value(json_object_get(v, "analyzer")), "lyrics");
	json_t *analysis = json_object_get(v, "analysis");
	ck_assert(json_is_object(analysis));
	ck_assert_int_eq(json_integer_value(json_object_get(analysis, "line_count")), 2);
	json_decref(v);
	aiq_result_free(r);
	aiq_free(id);

	/* Unknown analyzer and wrong arguments are task failures, not crashes. */
	ck_assert_int_eq(aiq_client_enqueue(&id, fx.client, "tasks.analyze_track", "[1, \"text\"]",
	                                    "{\"analyzer\": \"nope\"}", NULL),
	                 AIQ_OK);
	r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "UnknownAnalyzer");
	aiq_result_free(r);
	aiq_free(id);
	id = enqueue(&fx, "tasks.analyze_track", "[1]", NULL);
	r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "TypeError");
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

static void echo_analyzer(aiq_task *t, const char *text, const char *params, void *ud)
{
	(void)ud;
	char *out = aiq__asprintf("{\"len\": %zu, \"params\": %s}", strlen(text), params);
	aiq_task_succeed(t, out);
	free(out);
}

START_TEST(test_custom_analyzer)
{
	struct fixture fx;
	fx_init(&fx, "w_custom_analyzer", 1);
	ck_assert_int_eq(aiq_worker_add_analyzer(fx.worker, "echo", echo_analyzer, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_worker_add_analyzer(fx.worker, "echo", echo_analyzer, NULL, NULL),
	                 AIQ_EEXIST);
	fx_start(&fx);
	char *id = NULL;
	ck_assert_int_eq(
	        aiq_client_enqueue(&id, fx.client, "tasks.analyze_track", "[\"t-1\", \"abcd\"]",
	                           "{\"analyzer\": \"echo\", \"options\": {\"k\": 1}}", NULL),
	        AIQ_OK);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	json_t *v = json_loads(aiq_result_json(r), 0, NULL);
	ck_assert_str_eq(json_string_value(json_object_get(v, "track_id")), "t-1");
	json_t *a = json_object_get(v, "analysis");
	ck_assert_int_eq(json_integer_value(json_object_get(a, "len")), 4);
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(a, "params"), "k")), 1);
	json_decref(v);
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

START_TEST(test_failure)
{
	struct fixture fx;
	fx_init(&fx, "w_failure", 1);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.fail", fail_handler, NULL, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.fail", "[]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "AnalysisError");
	ck_assert_str_eq(aiq_result_error_message(r), "model exploded");
	ck_assert_str_eq(aiq_result_error_module(r), "tasks");
	ck_assert_str_eq(aiq_result_traceback(r), "Traceback: frame 1\nframe 2");
	ck_assert_ptr_nonnull(
	        strstr(aiq_result_meta_json(r), "\"traceback\": \"Traceback: frame 1"));
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

/* Regression: an invalid result used to end as SUCCESS with null. */
START_TEST(test_invalid_result_fails)
{
	struct fixture fx;
	fx_init(&fx, "w_invalid_result", 1);
	atomic_int rc = 1;
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.bad", bad_result_handler, &rc, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.fixed", corrected_result_handler, NULL, NULL),
	        AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.bad", "[]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(atomic_load(&rc), AIQ_EJSON);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "InvalidResultError");
	ck_assert_msg(strstr(aiq_result_error_message(r), "not valid JSON") != NULL, "message: %s",
	              aiq_result_error_message(r));
	aiq_result_free(r);
	aiq_free(id);

	id = enqueue(&fx, "tasks.fixed", "[]", NULL);
	r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "[1, 2]");
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

static void huge_result_handler(aiq_task *t, void *ud)
{
	atomic_int *rc = ud;
	char big[3000];
	memset(big, 'x', sizeof big);
	big[0] = '"';
	big[sizeof big - 2] = '"';
	big[sizeof big - 1] = '\0';
	atomic_store(rc, aiq_task_succeed(t, big));
}

/* Regression: a result of any size was stored; message.max_bytes caps it. */
START_TEST(test_result_over_limit_fails)
{
	struct fixture fx;
	fx_init(&fx, "w_huge_result", 1);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "message.max_bytes", 2048), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	atomic_int rc = 1;
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.huge", huge_result_handler, &rc, NULL),
	        AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.huge", "[]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(atomic_load(&rc), AIQ_ETOOBIG);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "InvalidResultError");
	ck_assert_msg(strstr(aiq_result_error_message(r), "over message.max_bytes (2048)") != NULL,
	              "message: %s", aiq_result_error_message(r));
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

START_TEST(test_unknown_task_dead_letter)
{
	struct fixture fx;
	fx_init(&fx, "w_unknown", 1);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.add", add_handler, NULL, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.does_not_exist", "[1]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "NotRegistered");
	ck_assert_str_eq(aiq_result_error_message(r), "tasks.does_not_exist");
	ck_assert_str_eq(aiq_result_error_module(r), "celery.exceptions");
	aiq_result_free(r);

	/* The worker keeps going. */
	char *id2 = enqueue(&fx, "tasks.add", "[1, 1]", NULL);
	r = wait_for(&fx, id2, 5000);
	ck_assert_str_eq(aiq_result_json(r), "2");
	aiq_result_free(r);
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);

	/* The copy waits in the dead-letter queue with the reason. */
	aiq__broker *b = raw_broker(&fx);
	ck_assert_int_eq(aiq__broker_consume(b, (const char *const[]){"celery.dead"}, 1, 0),
	                 AIQ_OK);
	aiq__delivery *d = NULL;
	ck_assert_int_eq(aiq__broker_fetch(b, &d, 1000), AIQ_OK);
	const char *reason =
	        json_string_value(json_object_get(d->wire.headers, "x-aiq-dead-reason"));
	ck_assert_ptr_nonnull(reason);
	ck_assert_ptr_nonnull(strstr(reason, "tasks.does_not_exist"));
	ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "id")), id);
	aiq__broker_ack(b, d);
	aiq__delivery_free(d);
	aiq__broker_close(b);
	aiq_free(id);
	aiq_free(id2);
	fx_done(&fx);
}
END_TEST

START_TEST(test_undecodable_dead_letter)
{
	struct fixture fx;
	fx_init(&fx, "w_garbage", 1);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.add", add_handler, NULL, NULL),
	                 AIQ_OK);
	fx_start(&fx);

	/* Three broken messages straight onto the queue. */
	aiq__broker *b = raw_broker(&fx);
	static const char *bodies[] = {"not json at all", "[1, 2", "{\"no\": \"task\"}"};
	for (int i = 0; i < 3; i++) {
		aiq__wire w = {0};
		w.headers = i == 2 ? NULL : json_pack("{s:s, s:s}", "task", "tasks.add", "id", "x");
		w.content_type = strdup("application/json");
		w.content_encoding = strdup("utf-8");
		w.body = (unsigned char *)strdup(bodies[i]);
		w.body_len = strlen(bodies[i]);
		ck_assert_int_eq(aiq__broker_publish(b, "celery", &w, 0), AIQ_OK);
		aiq__wire_clear(&w);
	}
	char *id = enqueue(&fx, "tasks.add", "[20, 22]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_str_eq(aiq_result_json(r), "42");
	aiq_result_free(r);
	aiq_free(id);
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_eq(aiq_worker_counter(fx.worker, 4), 3);
	ck_assert_uint_eq(depth(&fx, "celery.dead"), 3);
	ck_assert_uint_eq(depth(&fx, "celery"), 0);
	aiq__broker_close(b);
	fx_done(&fx);
}
END_TEST

START_TEST(test_retry_then_success)
{
	struct fixture fx;
	fx_init(&fx, "w_retry", 1);
	struct counter c = {.retry_until = 2, .retry_countdown = 20};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.flaky", counting_handler, &c, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.flaky", "[]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "2"); /* ran with retries 0, 1, 2 */
	ck_assert_int_eq(atomic_load(&c.calls), 3);
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_eq(aiq_worker_counter(fx.worker, 2), 2);
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

START_TEST(test_retry_exhausted)
{
	struct fixture fx;
	fx_init(&fx, "w_retry_max", 1);
	struct counter c = {.retry_until = 100, .retry_countdown = -1}; /* backoff policy */
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.flaky", counting_handler, &c, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_max_retries(o, 2), AIQ_OK);
	char *id = enqueue(&fx, "tasks.flaky", "[]", o);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "MaxRetriesExceededError");
	ck_assert_int_eq(atomic_load(&c.calls), 3);
	aiq_result_free(r);
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	fx_done(&fx);
}
END_TEST

START_TEST(test_countdown)
{
	struct fixture fx;
	fx_init(&fx, "w_countdown", 1);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.add", add_handler, NULL, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_countdown_ms(o, 400), AIQ_OK);
	int64_t t0 = now_ms();
	char *id = enqueue(&fx, "tasks.add", "[1]", o);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, fx.client, id, 200), AIQ_ETIMEDOUT);
	ck_assert_int_ne(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_int_ge(now_ms() - t0, 390);
	aiq_result_free(r);
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	fx_done(&fx);
}
END_TEST

START_TEST(test_expired)
{
	struct fixture fx;
	fx_init(&fx, "w_expired", 1);
	struct counter c = {0};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_expires_ms(o, 1), AIQ_OK);
	char *id = enqueue(&fx, "tasks.c", "[]", o);
	sleep_ms(20);
	fx_start(&fx);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	ck_assert_int_eq(atomic_load(&c.calls), 0);
	aiq_result_free(r);
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	fx_done(&fx);
}
END_TEST

START_TEST(test_revoke_before_start)
{
	struct fixture fx;
	fx_init(&fx, "w_revoke_early", 1);
	struct counter c = {0};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	char *id = enqueue(&fx, "tasks.c", "[]", NULL);
	ck_assert_int_eq(aiq_client_revoke(fx.client, id), AIQ_OK);
	char *id2 = enqueue(&fx, "tasks.c", "[]", NULL);
	fx_start(&fx);
	aiq_result *r = wait_for(&fx, id2, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	ck_assert_int_eq(atomic_load(&c.calls), 1); /* only the second ran */
	aiq_result_free(r);
	aiq_free(id);
	aiq_free(id2);
	fx_done(&fx);
}
END_TEST

/* A message whose task is already final (an earlier delivery of it finished,
 * and the ack was lost) is acknowledged without running again; with and
 * without STARTED tracking (the check then reads the state). */
static void check_no_rerun(bool track_started)
{
	struct fixture fx;
	fx_init(&fx, track_started ? "w_rerun_started" : "w_rerun_plain", 1);
	ck_assert_int_eq(aiq_config_set_bool(fx.cfg, "result.track_started", track_started),
	                 AIQ_OK);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	struct counter c = {0};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_task_id(o, "same-task"), AIQ_OK);
	char *id = enqueue(&fx, "tasks.c", "[]", o);
	aiq_result_free(wait_for(&fx, id, 5000));
	char *again = enqueue(&fx, "tasks.c", "[]", o); /* the same message once more */
	char *sentinel = enqueue(&fx, "tasks.c", "[]", NULL);
	aiq_result_free(wait_for(&fx, sentinel, 5000)); /* FIFO, one thread: after `again` */
	ck_assert_int_eq(atomic_load(&c.calls), 2);     /* the first run and the sentinel */
	ck_assert_uint_eq(depth(&fx, "celery"), 0);
	aiq_free(id);
	aiq_free(again);
	aiq_free(sentinel);
	aiq_enqueue_opts_free(o);
	fx_done(&fx);
}

START_TEST(test_no_rerun_of_final_task)
{
	check_no_rerun(true);
	check_no_rerun(false);
}
END_TEST

START_TEST(test_revoke_before_start_untracked)
{
	struct fixture fx;
	fx_init(&fx, "w_revoke_untracked", 1);
	ck_assert_int_eq(aiq_config_set_bool(fx.cfg, "result.track_started", 0), AIQ_OK);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	struct counter c = {0};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	char *id = enqueue(&fx, "tasks.c", "[]", NULL);
	ck_assert_int_eq(aiq_client_revoke(fx.client, id), AIQ_OK);
	char *id2 = enqueue(&fx, "tasks.c", "[]", NULL);
	fx_start(&fx);
	aiq_result_free(wait_for(&fx, id2, 5000));
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	ck_assert_int_eq(atomic_load(&c.calls), 1);
	aiq_result_free(r);
	aiq_free(id);
	aiq_free(id2);
	fx_done(&fx);
}
END_TEST

START_TEST(test_revoke_running)
{
	struct fixture fx;
	fx_init(&fx, "w_revoke_running", 1);
	atomic_int seen = 0;
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.long", cancellable_handler, &seen, NULL),
	        AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.long", "[]", NULL);
	sleep_ms(300);
	ck_assert_int_eq(aiq_client_revoke(fx.client, id), AIQ_OK);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	aiq_result_free(r);
	int64_t end = now_ms() + 3000;
	while (atomic_load(&seen) == 0 && now_ms() < end)
		sleep_ms(10);
	ck_assert_int_eq(atomic_load(&seen), AIQ_ECANCELED);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

/* Fails once the test lets it go (gate 1 -> 2). */
static void gated_fail_handler(aiq_task *t, void *ud)
{
	atomic_int *gate = ud;
	atomic_store(gate, 1);
	while (atomic_load(gate) == 1)
		sleep_ms(1);
	aiq_task_fail(t, "ValueError", "finished after its revoke", "builtins");
}

/* A handler that reports after its task was revoked (before the worker
 * noticed the revoke): REVOKED stays, and the late FAILURE is neither
 * counted nor reported as a failure. */
START_TEST(test_report_after_revoke_is_not_a_failure)
{
	struct fixture fx;
	fx_init(&fx, "w_late_report", 1);
	atomic_int gate = 0;
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.gated", gated_fail_handler, &gate, NULL),
	        AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.gated", "[]", NULL);
	int64_t end = now_ms() + 5000;
	while (atomic_load(&gate) == 0 && now_ms() < end)
		sleep_ms(1);
	ck_assert_int_eq(atomic_load(&gate), 1);
	ck_assert_int_eq(aiq_client_revoke(fx.client, id), AIQ_OK);
	atomic_store(&gate, 2);
	char *sentinel = enqueue(&fx, "tasks.gated", "[]", NULL);
	while (atomic_load(&gate) != 1 && now_ms() < end)
		sleep_ms(1);
	atomic_store(&gate, 2);
	aiq_result_free(wait_for(&fx, sentinel, 5000));
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	aiq_result_free(r);
	/* Counted after its result is stored: read once the worker has stopped. */
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_eq(aiq_worker_counter(fx.worker, AIQ_COUNTER_FAILED), 1); /* the sentinel */
	aiq_free(id);
	aiq_free(sentinel);
	fx_done(&fx);
}
END_TEST

START_TEST(test_soft_time_limit)
{
	struct fixture fx;
	fx_init(&fx, "w_soft", 1);
	atomic_int seen = 0;
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.long", cancellable_handler, &seen, NULL),
	        AIQ_OK);
	fx_start(&fx);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_time_limits(o, 150, 0), AIQ_OK);
	int64_t t0 = now_ms();
	char *id = enqueue(&fx, "tasks.long", "[]", o);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "\"soft\"");
	ck_assert_int_eq(atomic_load(&seen), AIQ_ETIMEDOUT);
	ck_assert_int_lt(now_ms() - t0, 3000);
	aiq_result_free(r);
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	fx_done(&fx);
}
END_TEST

START_TEST(test_hard_time_limit)
{
	struct fixture fx;
	fx_init(&fx, "w_hard", 1);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "task.time_limit_ms", 200), AIQ_OK);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.stuck", stubborn_handler, NULL, NULL),
	        AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.add", add_handler, NULL, NULL),
	                 AIQ_OK);
	atomic_store(&stubborn_finished, false);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.stuck", "[]", NULL);
	char *id2 = enqueue(&fx, "tasks.add", "[5]", NULL);
	aiq_result *r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "TimeLimitExceeded");
	aiq_result_free(r);
	/* With concurrency 1, the next task runs on a replacement thread while
	 * the stuck handler still sleeps (no wall-clock bound: the handler says
	 * when it wakes). */
	r = wait_for(&fx, id2, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_msg(!atomic_load(&stubborn_finished),
	              "the next task waited for the stuck handler");
	aiq_result_free(r);
	/* The late outcome of the stuck handler never replaces the failure. */
	for (int i = 0; i < 1000 && !atomic_load(&stubborn_finished); i++)
		sleep_ms(10);
	ck_assert(atomic_load(&stubborn_finished));
	sleep_ms(200);
	ck_assert_int_eq(aiq_client_get_result(&r, fx.client, id), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	aiq_result_free(r);
	aiq_free(id);
	aiq_free(id2);
	fx_done(&fx);
}
END_TEST

START_TEST(test_concurrency)
{
	struct fixture fx;
	fx_init(&fx, "w_concurrency", 4);
	struct counter c = {.sleep_ms = 150};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	char *ids[16];
	for (int i = 0; i < 16; i++)
		ids[i] = enqueue(&fx, "tasks.c", "[]", NULL);
	fx_start(&fx);
	for (int i = 0; i < 16; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 10000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	/* Four ran at once (the handler counts them): no wall-clock bound, the
	 * machine may be loaded. */
	ck_assert_int_eq(atomic_load(&c.max_active), 4);
	ck_assert_int_eq(atomic_load(&c.calls), 16);
	fx_done(&fx);
}
END_TEST

START_TEST(test_prefetch_bound)
{
	struct fixture fx;
	fx_init(&fx, "w_prefetch", 1);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.prefetch", 2), AIQ_OK);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	struct counter c = {.sleep_ms = 300};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	for (int i = 0; i < 10; i++)
		aiq_free(enqueue(&fx, "tasks.c", "[]", NULL));
	fx_start(&fx);
	sleep_ms(150);
	/* One running, one prefetched: eight still on the broker. */
	ck_assert_uint_eq(depth(&fx, "celery"), 8);
	aiq_worker_stop(fx.worker);
	aiq_worker_stop(fx.worker); /* abort: nothing is lost, all go back */
	ck_assert_int_eq(fx_join(&fx), AIQ_ECANCELED);
	ck_assert_uint_eq(depth(&fx, "celery"), 10 - (uint64_t)atomic_load(&c.calls) + 1);
	fx_done(&fx);
}
END_TEST

/* worker.prefetch 0: the bound is worker.prefetch_multiplier x concurrency. */
START_TEST(test_prefetch_multiplier)
{
	struct fixture fx;
	fx_init(&fx, "w_prefetch_mult", 1);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.prefetch_multiplier", 3), AIQ_OK);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	struct counter c = {.sleep_ms = 300};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	for (int i = 0; i < 10; i++)
		aiq_free(enqueue(&fx, "tasks.c", "[]", NULL));
	fx_start(&fx);
	sleep_ms(150);
	/* One running, two prefetched: seven still on the broker. */
	ck_assert_uint_eq(depth(&fx, "celery"), 7);
	aiq_worker_stop(fx.worker);
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_ECANCELED);
	fx_done(&fx);
}
END_TEST

START_TEST(test_graceful_stop)
{
	struct fixture fx;
	fx_init(&fx, "w_graceful", 2);
	struct counter c = {.sleep_ms = 300};
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.prefetch", 2), AIQ_OK);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	char *ids[6];
	for (int i = 0; i < 6; i++)
		ids[i] = enqueue(&fx, "tasks.c", "[]", NULL);
	fx_start(&fx);
	sleep_ms(100);
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	/* The two that had started finished; the rest are still queued. */
	ck_assert_int_eq(atomic_load(&c.calls), 2);
	ck_assert_uint_eq(depth(&fx, "celery"), 4);
	int done = 0;
	for (int i = 0; i < 6; i++) {
		aiq_result *r = NULL;
		ck_assert_int_eq(aiq_client_get_result(&r, fx.client, ids[i]), AIQ_OK);
		done += aiq_result_state(r) == AIQ_STATE_SUCCESS;
		aiq_result_free(r);
	}
	ck_assert_int_eq(done, 2);
	/* A second run finishes the rest. */
	fx_start(&fx);
	for (int i = 0; i < 6; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 5000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	fx_done(&fx);
}
END_TEST

static aiq_worker *signal_target;
static void on_sigusr1(int sig)
{
	(void)sig;
	aiq_worker_stop(signal_target);
}

/* Regression: after an abort, pool threads still finishing a task woke (and
 * queued work for) a consumer being closed; the in-flight count was
 * decremented after its reset. Abort repeatedly while tasks finish; nothing
 * may be lost and every later run must work (run under TSan by
 * scripts/tsan.sh). */
START_TEST(test_abort_while_finishing)
{
	struct fixture fx;
	fx_init(&fx, "w_abort_race", 4);
	struct counter c = {.sleep_ms = 1};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.quick", counting_handler, &c, NULL),
	                 AIQ_OK);
	enum { N = 120 };
	char *ids[N];
	for (int i = 0; i < N; i++)
		ids[i] = enqueue(&fx, "tasks.quick", "[]", NULL);
	for (int round = 0; round < 4; round++) {
		fx_start(&fx);
		sleep_ms(15 + 10 * round);
		aiq_worker_stop(fx.worker);
		aiq_worker_stop(fx.worker);
		int rc = fx_join(&fx);
		ck_assert_msg(rc == AIQ_ECANCELED || rc == AIQ_OK, "run: %d %s", rc,
		              aiq_worker_error(fx.worker));
	}
	fx_start(&fx);
	for (int i = 0; i < N; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 10000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	fx_done(&fx);
}
END_TEST

START_TEST(test_stop_from_signal)
{
	struct fixture fx;
	fx_init(&fx, "w_signal", 1);
	signal_target = fx.worker;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigusr1;
	sigaction(SIGUSR1, &sa, NULL);
	fx_start(&fx);
	sleep_ms(100);
	int64_t t0 = now_ms();
	kill(getpid(), SIGUSR1);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_lt(now_ms() - t0, 5000); /* stopped, not hanging until the test timeout */
	fx_done(&fx);
}
END_TEST

static void progress_handler(aiq_task *t, void *ud)
{
	atomic_int *gate = ud;
	ck_assert_int_eq(aiq_task_progress(t, "{\"done\": 1, \"total\": 2}"), AIQ_OK);
	ck_assert_int_eq(aiq_task_progress(t, "[1]"), AIQ_EINVAL);
	int64_t end = now_ms() + 5000;
	while (atomic_load(gate) == 0 && now_ms() < end)
		sleep_ms(5);
	aiq_task_succeed(t, "{\"ok\": true}");
	ck_assert_int_eq(aiq_task_succeed(t, "1"), AIQ_ESTATE);
}

START_TEST(test_progress)
{
	struct fixture fx;
	fx_init(&fx, "w_progress", 1);
	atomic_int gate = 0;
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.p", progress_handler, &gate, NULL),
	                 AIQ_OK);
	fx_start(&fx);
	char *id = enqueue(&fx, "tasks.p", "[]", NULL);
	aiq_result *r = NULL;
	int64_t end = now_ms() + 5000;
	int state = AIQ_STATE_PENDING;
	while (state != AIQ_STATE_PROGRESS && now_ms() < end) {
		ck_assert_int_eq(aiq_client_get_result(&r, fx.client, id), AIQ_OK);
		state = aiq_result_state(r);
		if (state == AIQ_STATE_PROGRESS) {
			json_t *m = json_loads(aiq_result_json(r), 0, NULL);
			ck_assert_int_eq(json_integer_value(json_object_get(m, "total")), 2);
			json_decref(m);
		}
		aiq_result_free(r);
		sleep_ms(5);
	}
	ck_assert_int_eq(state, AIQ_STATE_PROGRESS);
	atomic_store(&gate, 1);
	r = wait_for(&fx, id, 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

struct event_log {
	pthread_mutex_t lock;
	int counts[8];
};

static void on_event(int event, const char *id, const char *name, const char *detail, void *ud)
{
	(void)id;
	(void)name;
	(void)detail;
	struct event_log *log = ud;
	pthread_mutex_lock(&log->lock);
	if (event > 0 && event < 8)
		log->counts[event]++;
	pthread_mutex_unlock(&log->lock);
}

static atomic_int destroyed;
static void count_destroy(void *ud)
{
	(void)ud;
	atomic_fetch_add(&destroyed, 1);
}

START_TEST(test_events_and_destructors)
{
	struct fixture fx;
	fx_init(&fx, "w_events", 1);
	struct event_log log = {PTHREAD_MUTEX_INITIALIZER, {0}};
	atomic_store(&destroyed, 0);
	ck_assert_int_eq(aiq_worker_on_event(fx.worker, on_event, &log, count_destroy), AIQ_OK);
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.add", add_handler, NULL, count_destroy),
	        AIQ_OK);
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.fail", fail_handler, NULL, count_destroy),
	        AIQ_OK);
	/* A failed registration still releases its userdata. */
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.add", add_handler, NULL, count_destroy),
	        AIQ_EEXIST);
	ck_assert_int_eq(atomic_load(&destroyed), 1);
	fx_start(&fx);
	char *a = enqueue(&fx, "tasks.add", "[1]", NULL);
	char *b = enqueue(&fx, "tasks.fail", "[]", NULL);
	char *c = enqueue(&fx, "tasks.nope", "[]", NULL);
	aiq_result_free(wait_for(&fx, a, 5000));
	aiq_result_free(wait_for(&fx, b, 5000));
	aiq_result_free(wait_for(&fx, c, 5000));
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_eq(log.counts[AIQ_EVENT_RECEIVED], 2);
	ck_assert_int_eq(log.counts[AIQ_EVENT_STARTED], 2);
	ck_assert_int_eq(log.counts[AIQ_EVENT_SUCCEEDED], 1);
	ck_assert_int_eq(log.counts[AIQ_EVENT_FAILED], 2);
	ck_assert_int_eq(log.counts[AIQ_EVENT_REJECTED], 1);
	aiq_worker_free(fx.worker);
	fx.worker = NULL;
	ck_assert_int_eq(atomic_load(&destroyed), 4);
	aiq_free(a);
	aiq_free(b);
	aiq_free(c);
	fx_done(&fx);
}
END_TEST

/* Sleeps until the next 20 ms boundary of the clock, so the tasks running
 * at once all finish at the same moment, then returns its argument. */
static void in_step_handler(aiq_task *t, void *ud)
{
	(void)ud;
	sleep_ms((int)(20 - now_ms() % 20));
	aiq_task_succeed(t, aiq_task_args_json(t));
}

/* Results written at the same moment by several pool threads are committed
 * in groups, and deliveries finished together are acknowledged in batches,
 * each only after its own result is stored. */
START_TEST(test_batched_outcomes)
{
	struct fixture fx;
	fx_init(&fx, "w_batched", 8);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "step", in_step_handler, NULL, NULL),
	                 AIQ_OK);
	/* Each commit takes 3 ms: writers that finish while one commits join
	 * the next group even when the machine runs the pool's threads one at
	 * a time (the grouping check below failed once under load without). */
	fx.worker->test_commit_delay_us = 3000;
	enum { N = 96 };
	char *ids[N];
	for (int i = 0; i < N; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d]", i);
		ids[i] = enqueue(&fx, "step", args, NULL);
	}
	fx_start(&fx);
	for (int i = 0; i < N; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 20000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		char want[32];
		snprintf(want, sizeof want, "[%d]", i);
		ck_assert_str_eq(aiq_result_json(r), want);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	size_t writes = 0, groups = 0, acked = 0, batches = 0;
	aiq__worker_batch_stats(fx.worker, &writes, &groups, &acked, &batches);
	ck_assert_uint_ge(writes, N); /* every final state, and STARTED where tracked */
	ck_assert_uint_eq(acked, N);
	ck_assert_uint_lt(groups, writes);
	ck_assert_uint_lt(batches, acked);
	ck_assert_uint_eq(depth(&fx, "celery"), 0);
	fx_done(&fx);
}
END_TEST

/* The consumer refills the prefetch window in batches (half the window, or
 * whatever is free after a few milliseconds) instead of one fetch per
 * finished task, and reads the states of a fetch's tasks (the check that
 * they are not revoked or final) in one batch instead of one read each.
 * Tasks revoked before the worker started still never run. */
START_TEST(test_batched_fetch_and_state_check)
{
	struct fixture fx;
	fx_init(&fx, "w_batched_fetch", 2);
	ck_assert_int_eq(aiq_config_set_bool(fx.cfg, "result.track_started", 0), AIQ_OK);
	aiq_worker_free(fx.worker);
	ck_assert_int_eq(aiq_worker_new(&fx.worker, fx.cfg), AIQ_OK);
	struct counter c = {.sleep_ms = 1};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.c", counting_handler, &c, NULL),
	                 AIQ_OK);
	enum { N = 300, REVOKED = 30 };
	char *ids[N];
	for (int i = 0; i < N; i++) {
		ids[i] = enqueue(&fx, "tasks.c", "[]", NULL);
		if (i % (N / REVOKED) == 0)
			ck_assert_int_eq(aiq_client_revoke(fx.client, ids[i]), AIQ_OK);
	}
	fx_start(&fx);
	for (int i = 0; i < N; i++) {
		aiq_result *r = wait_for(&fx, ids[i], 20000);
		ck_assert_int_eq(aiq_result_state(r),
		                 i % (N / REVOKED) == 0 ? AIQ_STATE_REVOKED : AIQ_STATE_SUCCESS);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_eq(atomic_load(&c.calls), N - REVOKED);
	size_t fetches = 0, fetched = 0;
	aiq__worker_fetch_stats(fx.worker, &fetches, &fetched);
	ck_assert_uint_eq(fetched, N);
	/* Prefetch 8 at concurrency 2: batches of about 4, never 1 or 2 on average. */
	ck_assert_msg(fetched >= 3 * fetches, "%zu deliveries in %zu fetches", fetched, fetches);
	size_t reads = atomic_load(&fx.worker->state_batches);
	ck_assert_msg(reads <= fetches && reads > 0, "%zu state reads for %zu fetches", reads,
	              fetches);
	ck_assert_uint_eq(depth(&fx, "celery"), 0);
	fx_done(&fx);
}
END_TEST

START_TEST(test_register_errors)
{
	struct fixture fx;
	fx_init(&fx, "w_reg", 1);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "", add_handler, NULL, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_worker_register(fx.worker, "x", NULL, NULL, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_worker_register(NULL, "x", add_handler, NULL, NULL), AIQ_EINVAL);
	ck_assert_int_eq(
	        aiq_worker_register(fx.worker, "tasks.analyze_track", add_handler, NULL, NULL),
	        AIQ_EEXIST);
	ck_assert_int_eq(aiq_worker_counter(fx.worker, 99), -1);
	aiq_worker_stop(NULL);
	aiq_worker_free(NULL);
	/* A stop before run makes run return at once. */
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(aiq_worker_run(fx.worker), AIQ_OK);
	fx_done(&fx);
}
END_TEST

/* What the handler saw, per run. */
struct seen {
	pthread_mutex_t lock;
	int runs;
	char id[2][64], args[2][256], kwargs[2][256];
	int retries[2];
};

static void recording_handler(aiq_task *t, void *ud)
{
	struct seen *s = ud;
	pthread_mutex_lock(&s->lock);
	int i = s->runs++;
	if (i < 2) {
		snprintf(s->id[i], sizeof s->id[i], "%s", aiq_task_id(t));
		snprintf(s->args[i], sizeof s->args[i], "%s", aiq_task_args_json(t));
		snprintf(s->kwargs[i], sizeof s->kwargs[i], "%s", aiq_task_kwargs_json(t));
		s->retries[i] = aiq_task_retries(t);
	}
	pthread_mutex_unlock(&s->lock);
	if (aiq_task_retries(t) == 0)
		aiq_task_retry(t, 0, "once more, through the wire");
	else
		aiq_task_succeed(t, "null");
}

/* On memory:// the worker takes the client's decoded message instead of
 * decoding the wire (the counter proves the decode was skipped), and the
 * handler sees what the wire path gives: the retry is republished as bytes
 * and decoded, and its run sees the same id, args and kwargs. */
START_TEST(test_memory_skips_decode)
{
	struct fixture fx;
	fx_init(&fx, "w_skip_decode", 1);
	struct seen s = {.lock = PTHREAD_MUTEX_INITIALIZER};
	ck_assert_int_eq(aiq_worker_register(fx.worker, "tasks.rec", recording_handler, &s, NULL),
	                 AIQ_OK);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, fx.client, "tasks.rec",
	                                    "[1, 2.5, 1.0, \"\\u00e9\", {\"a\": [null, true]}]",
	                                    "{\"k\": 1.0, \"s\": \"x\"}", NULL),
	                 AIQ_OK);
	fx_start(&fx);
	aiq_result *r = wait_for(&fx, id, 20000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	aiq_worker_stop(fx.worker);
	ck_assert_int_eq(fx_join(&fx), AIQ_OK);
	ck_assert_int_eq(s.runs, 2);
	/* The first run came from the handoff, the retry through the wire. */
	ck_assert_uint_eq(aiq__worker_decodes_skipped(fx.worker), 1);
	ck_assert_int_eq(s.retries[0], 0);
	ck_assert_int_eq(s.retries[1], 1);
	ck_assert_str_eq(s.id[0], id);
	ck_assert_str_eq(s.id[1], id);
	ck_assert_str_eq(s.args[0], s.args[1]);
	ck_assert_str_eq(s.kwargs[0], s.kwargs[1]);
	ck_assert_str_eq(s.args[0], "[1,2.5,1.0,\"\xc3\xa9\",{\"a\":[null,true]}]");
	ck_assert_str_eq(s.kwargs[0], "{\"k\":1.0,\"s\":\"x\"}");
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("worker");
	TCase *tc = tcase_create("semantics");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_success_roundtrip);
	tcase_add_test(tc, test_builtin_analyze);
	tcase_add_test(tc, test_custom_analyzer);
	tcase_add_test(tc, test_failure);
	tcase_add_test(tc, test_invalid_result_fails);
	tcase_add_test(tc, test_result_over_limit_fails);
	tcase_add_test(tc, test_unknown_task_dead_letter);
	tcase_add_test(tc, test_undecodable_dead_letter);
	tcase_add_test(tc, test_retry_then_success);
	tcase_add_test(tc, test_retry_exhausted);
	tcase_add_test(tc, test_countdown);
	tcase_add_test(tc, test_expired);
	tcase_add_test(tc, test_revoke_before_start);
	tcase_add_test(tc, test_revoke_running);
	tcase_add_test(tc, test_report_after_revoke_is_not_a_failure);
	tcase_add_test(tc, test_no_rerun_of_final_task);
	tcase_add_test(tc, test_revoke_before_start_untracked);
	tcase_add_test(tc, test_soft_time_limit);
	tcase_add_test(tc, test_hard_time_limit);
	tcase_add_test(tc, test_hard_limit_threads_reaped);
	tcase_add_test(tc, test_hard_limit_abandoned_cap);
	tcase_add_test(tc, test_time_limit_clamp);
	tcase_add_test(tc, test_concurrency);
	tcase_add_test(tc, test_prefetch_bound);
	tcase_add_test(tc, test_prefetch_multiplier);
	tcase_add_test(tc, test_graceful_stop);
	tcase_add_test(tc, test_abort_while_finishing);
	tcase_add_test(tc, test_stop_from_signal);
	tcase_add_test(tc, test_progress);
	tcase_add_test(tc, test_events_and_destructors);
	tcase_add_test(tc, test_register_errors);
	tcase_add_test(tc, test_batched_outcomes);
	tcase_add_test(tc, test_batched_fetch_and_state_check);
	tcase_add_test(tc, test_memory_skips_decode);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
