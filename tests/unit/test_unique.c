/*
 * Unique jobs on memory:// (lib/core/unique.c): derived and explicit
 * keys, the option's checks, the existing task's id and flag, racing
 * threads, each scope's release by the worker, and the TTL. Keys are kept
 * per process: each test uses keys of its own, so the tests also pass in
 * one process (CK_FORK=no, as scripts/valgrind.sh runs them).
 */
#include "testutil.h"

#include "unique.h"

#include <aiqueue/aiqueue.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

START_TEST(derived_keys)
{
	char *a = aiq__unique_key(NULL, "t", "[1, 2]", "{\"b\": 1, \"a\": {\"y\": 2, \"x\": 1}}");
	char *b = aiq__unique_key(NULL, "t", "[1,2]", "{\"a\": {\"x\": 1, \"y\": 2}, \"b\": 1}");
	char *c = aiq__unique_key(NULL, "t", "[2, 1]", "{\"b\": 1, \"a\": {\"y\": 2, \"x\": 1}}");
	char *d = aiq__unique_key(NULL, "u", "[1, 2]", "{\"b\": 1, \"a\": {\"y\": 2, \"x\": 1}}");
	char *e = aiq__unique_key(NULL, "t", NULL, NULL);
	char *f = aiq__unique_key(NULL, "t", "[]", "{}");
	char *x = aiq__unique_key("tenant-7:daily", "t", "[1]", NULL);
	ck_assert_str_eq(a, b); /* canonical: key order and blanks do not matter */
	ck_assert_str_ne(a, c);
	ck_assert_str_ne(a, d);
	ck_assert_str_eq(e, f);
	ck_assert_int_eq(strncmp(a, "aiq:unique:t:", 13), 0);
	ck_assert_int_eq(strlen(a), 13 + 36);
	ck_assert_str_eq(x, "aiq:unique:tenant-7:daily");
	ck_assert_ptr_null(aiq__unique_key(NULL, "t", "[", NULL));
	free(a), free(b), free(c), free(d), free(e), free(f), free(x);
}
END_TEST

START_TEST(option_checks)
{
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(NULL, NULL, 1000, AIQ_UNIQUE_QUEUED),
	                 AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, NULL, 1000, 4), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, NULL, 1000, -1), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, NULL, 0, AIQ_UNIQUE_QUEUED), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "TTL"));
	ck_assert_int_eq(
	        aiq_enqueue_opts_set_unique(o, NULL, INT64_C(31) * 86400000, AIQ_UNIQUE_QUEUED),
	        AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, "", 1000, AIQ_UNIQUE_QUEUED), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, "a\nb", 1000, AIQ_UNIQUE_QUEUED),
	                 AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, "k", 1000, AIQ_UNIQUE_RUNNING), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, NULL, 0, 0), AIQ_OK); /* off again */
	aiq_enqueue_opts_free(o);
}
END_TEST

/* ---- against a worker ------------------------------------------------------ */

struct fx {
	aiq_config *cfg;
	aiq_client *client;
	aiq_worker *worker;
	pthread_t th;
	bool running;
};

static atomic_int gate; /* 1: blocking handlers may finish */

static void slow(aiq_task *t, void *ud)
{
	(void)ud;
	while (!atomic_load(&gate))
		sleep_ms(5);
	aiq_task_succeed(t, "1");
}

static void fails(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_fail(t, "ValueError", "no", NULL);
}

static void fx_init(struct fx *f, const char *name)
{
	memset(f, 0, sizeof *f);
	char url[64];
	snprintf(url, sizeof url, "memory://%s", name);
	ck_assert_int_eq(aiq_config_new(&f->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(f->cfg, "broker.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(f->cfg, "result.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(f->cfg, "worker.concurrency", 2), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(f->cfg, "task.max_retries", 0), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&f->client, f->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&f->worker, f->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(f->worker, "u.slow", slow, NULL, NULL), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(f->worker, "u.fails", fails, NULL, NULL), AIQ_OK);
	atomic_store(&gate, 0);
}

static void *run(void *arg)
{
	aiq_worker_run(arg);
	return NULL;
}

static void fx_start(struct fx *f)
{
	ck_assert_int_eq(pthread_create(&f->th, NULL, run, f->worker), 0);
	f->running = true;
}

static void fx_done(struct fx *f)
{
	atomic_store(&gate, 1);
	if (f->running) {
		aiq_worker_stop(f->worker);
		pthread_join(f->th, NULL);
	}
	aiq_worker_free(f->worker);
	aiq_client_free(f->client);
	aiq_config_free(f->cfg);
}

static char *put(struct fx *f, const char *name, const char *args, int scope, int64_t ttl,
                 int *existing)
{
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, NULL, ttl, scope), AIQ_OK);
	char *id = NULL;
	int rc = aiq_client_enqueue_unique(&id, existing, f->client, name, args, NULL, o);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	aiq_enqueue_opts_free(o);
	return id;
}

static int state_of(struct fx *f, const char *id)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_get_result(&r, f->client, id), AIQ_OK);
	int s = aiq_result_state(r);
	aiq_result_free(r);
	return s;
}

static void wait_state(struct fx *f, const char *id, int state)
{
	for (int i = 0; i < 400 && state_of(f, id) != state; i++)
		sleep_ms(10);
	ck_assert_int_eq(state_of(f, id), state);
}

START_TEST(existing_id_and_flag)
{
	struct fx f;
	fx_init(&f, "uq1");
	int ex = -1;
	char *a = put(&f, "u.slow", "[1]", AIQ_UNIQUE_QUEUED, 60000, &ex);
	ck_assert_int_eq(ex, 0);
	char *b = put(&f, "u.slow", "[1]", AIQ_UNIQUE_QUEUED, 60000, &ex);
	ck_assert_int_eq(ex, 1);
	ck_assert_str_eq(a, b);
	char *c = put(&f, "u.slow", "[2]", AIQ_UNIQUE_QUEUED, 60000, &ex);
	ck_assert_int_eq(ex, 0);
	ck_assert_str_ne(a, c);
	/* aiq_client_enqueue gives the same id, without the flag. */
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, NULL, 60000, AIQ_UNIQUE_QUEUED), AIQ_OK);
	char *d = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&d, f.client, "u.slow", "[1]", NULL, o), AIQ_OK);
	ck_assert_str_eq(a, d);
	/* A batch refuses unique options. */
	ck_assert_int_eq(aiq_client_enqueue_batch(NULL, NULL, f.client, "u.slow", NULL, NULL, 2, o),
	                 AIQ_EINVAL);
	uint64_t n = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&n, f.client, NULL), AIQ_OK);
	ck_assert_int_eq(n, 2); /* [1] and [2] */
	aiq_enqueue_opts_free(o);
	aiq_free(a), aiq_free(b), aiq_free(c), aiq_free(d);
	fx_done(&f);
}
END_TEST

struct racer {
	struct fx *f;
	char *id;
	int existing;
};
static atomic_int go;

static void *race(void *arg)
{
	struct racer *r = arg;
	while (!atomic_load(&go))
		;
	aiq_enqueue_opts *o = NULL;
	aiq_enqueue_opts_new(&o);
	aiq_enqueue_opts_set_unique(o, "raced", 60000, AIQ_UNIQUE_QUEUED);
	aiq_client_enqueue_unique(&r->id, &r->existing, r->f->client, "u.slow", NULL, NULL, o);
	aiq_enqueue_opts_free(o);
	return NULL;
}

START_TEST(eight_threads_race)
{
	struct fx f;
	fx_init(&f, "uq2");
	struct racer rs[8];
	pthread_t th[8];
	atomic_store(&go, 0);
	for (int i = 0; i < 8; i++) {
		rs[i] = (struct racer){.f = &f, .existing = -1};
		ck_assert_int_eq(pthread_create(&th[i], NULL, race, &rs[i]), 0);
	}
	atomic_store(&go, 1);
	int fresh = 0;
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		ck_assert_ptr_nonnull(rs[i].id);
		fresh += rs[i].existing == 0;
	}
	ck_assert_int_eq(fresh, 1);
	for (int i = 0; i < 8; i++)
		ck_assert_str_eq(rs[i].id, rs[0].id);
	for (int i = 0; i < 8; i++)
		aiq_free(rs[i].id);
	uint64_t n = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&n, f.client, NULL), AIQ_OK);
	ck_assert_int_eq(n, 1);
	fx_done(&f);
}
END_TEST

START_TEST(scope_queued_ends_at_start)
{
	struct fx f;
	fx_init(&f, "uq3");
	int ex;
	char *a = put(&f, "u.slow", "[3]", AIQ_UNIQUE_QUEUED, 60000, &ex);
	fx_start(&f);
	wait_state(&f, a, AIQ_STATE_STARTED);
	char *b = put(&f, "u.slow", "[3]", AIQ_UNIQUE_QUEUED, 60000, &ex);
	ck_assert_int_eq(ex, 0); /* released when the worker started it */
	ck_assert_str_ne(a, b);
	aiq_free(a), aiq_free(b);
	fx_done(&f);
}
END_TEST

START_TEST(scope_running_ends_at_final)
{
	struct fx f;
	fx_init(&f, "uq4");
	int ex;
	char *a = put(&f, "u.slow", "[4]", AIQ_UNIQUE_RUNNING, 60000, &ex);
	fx_start(&f);
	wait_state(&f, a, AIQ_STATE_STARTED);
	char *b = put(&f, "u.slow", "[4]", AIQ_UNIQUE_RUNNING, 60000, &ex);
	ck_assert_int_eq(ex, 1); /* still running: held */
	ck_assert_str_eq(a, b);
	atomic_store(&gate, 1);
	wait_state(&f, a, AIQ_STATE_SUCCESS);
	sleep_ms(50);
	char *c = put(&f, "u.slow", "[4]", AIQ_UNIQUE_RUNNING, 60000, &ex);
	ck_assert_int_eq(ex, 0);
	aiq_free(a), aiq_free(b), aiq_free(c);
	fx_done(&f);
}
END_TEST

START_TEST(scope_until_success_and_ttl)
{
	struct fx f;
	fx_init(&f, "uq5");
	int ex;
	char *a = put(&f, "u.fails", "[5]", AIQ_UNIQUE_UNTIL_SUCCESS, 600, &ex);
	fx_start(&f);
	wait_state(&f, a, AIQ_STATE_FAILURE);
	char *b = put(&f, "u.fails", "[5]", AIQ_UNIQUE_UNTIL_SUCCESS, 600, &ex);
	ck_assert_int_eq(ex, 1); /* a failure keeps the key ... */
	ck_assert_str_eq(a, b);
	sleep_ms(700);
	char *c = put(&f, "u.fails", "[5]", AIQ_UNIQUE_UNTIL_SUCCESS, 600, &ex);
	ck_assert_int_eq(ex, 0); /* ... until its TTL */
	ck_assert_str_ne(a, c);
	/* A success releases it. */
	atomic_store(&gate, 1);
	char *d = put(&f, "u.slow", "[9]", AIQ_UNIQUE_UNTIL_SUCCESS, 60000, &ex);
	wait_state(&f, d, AIQ_STATE_SUCCESS);
	sleep_ms(50);
	char *e = put(&f, "u.slow", "[9]", AIQ_UNIQUE_UNTIL_SUCCESS, 60000, &ex);
	ck_assert_int_eq(ex, 0);
	aiq_free(a), aiq_free(b), aiq_free(c), aiq_free(d), aiq_free(e);
	fx_done(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("unique");
	TCase *tc = tcase_create("memory");
	tcase_add_test(tc, derived_keys);
	tcase_add_test(tc, option_checks);
	tcase_add_test(tc, existing_id_and_flag);
	tcase_add_test(tc, eight_threads_race);
	tcase_add_test(tc, scope_queued_ends_at_start);
	tcase_add_test(tc, scope_running_ends_at_final);
	tcase_add_test(tc, scope_until_success_and_ttl);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
