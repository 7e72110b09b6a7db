/*
 * Client: enqueue validation and the message it publishes, results,
 * waiting, revocation, forgetting, completion callbacks.
 */
#include "testutil.h"

#include "broker.h"
#include "client_int.h"
#include "message.h"
#include "result_int.h"
#include "store.h"

#include <aiqueue/aiqueue.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static aiq_config *make_cfg(const char *name)
{
	aiq_config *cfg = NULL;
	char url[128];
	snprintf(url, sizeof url, "memory://%s", name);
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", url), AIQ_OK);
	return cfg;
}

/* Take the next raw message from a queue of the memory broker. */
static aiq__delivery *take(aiq_config *cfg, const char *queue)
{
	char *url = NULL;
	ck_assert_int_eq(aiq_config_get(&url, cfg, "broker.url"), AIQ_OK);
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, url, cfg), AIQ_OK);
	aiq_free(url);
	ck_assert_int_eq(aiq__broker_consume(b, (const char *const[]){queue}, 1, 0), AIQ_OK);
	aiq__delivery *d = NULL;
	ck_assert_int_eq(aiq__broker_fetch(b, &d, 1000), AIQ_OK);
	ck_assert_int_eq(aiq__broker_ack(b, d), AIQ_OK);
	aiq__broker_close(b);
	return d;
}

START_TEST(test_enqueue_message_shape)
{
	aiq_config *cfg = make_cfg("c_shape");
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_task_id(o, "fixed-id-1"), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, "lyrics"), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_priority(o, 5), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_time_limits(o, 10000, 20000), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_expires_ms(o, 120000), AIQ_OK);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "tasks.analyze_track",
	                                    "[42, \"I love this rap verse\"]", "{}", o),
	                 AIQ_OK);
	ck_assert_str_eq(id, "fixed-id-1");

	aiq__delivery *d = take(cfg, "lyrics");
	json_t *h = d->wire.headers;
	ck_assert_str_eq(json_string_value(json_object_get(h, "task")), "tasks.analyze_track");
	ck_assert_str_eq(json_string_value(json_object_get(h, "id")), "fixed-id-1");
	ck_assert_str_eq(json_string_value(json_object_get(h, "root_id")), "fixed-id-1");
	ck_assert(json_is_null(json_object_get(h, "parent_id")));
	ck_assert_int_eq(json_integer_value(json_object_get(h, "retries")), 0);
	ck_assert_str_eq(json_string_value(json_object_get(h, "argsrepr")),
	                 "(42, 'I love this rap verse')");
	ck_assert_str_eq(json_string_value(json_object_get(h, "kwargsrepr")), "{}");
	ck_assert(json_is_string(json_object_get(h, "expires")));
	json_t *tl = json_object_get(h, "timelimit");
	ck_assert_int_eq(json_array_size(tl), 2);
	ck_assert(json_number_value(json_array_get(tl, 0)) == 20.0); /* hard first */
	ck_assert(json_number_value(json_array_get(tl, 1)) == 10.0);
	ck_assert_str_eq(d->wire.content_type, "application/json");
	ck_assert_int_eq(json_integer_value(json_object_get(d->wire.properties, "priority")), 5);
	ck_assert_str_eq((const char *)d->wire.body,
	                 "[[42, \"I love this rap verse\"], {}, {\"callbacks\": null, "
	                 "\"errbacks\": null, \"chain\": null, \"chord\": null}]");
	aiq__delivery_free(d);
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_enqueue_errors)
{
	aiq_config *cfg = make_cfg("c_errors");
	ck_assert_int_eq(aiq_config_set_int(cfg, "message.max_bytes", 1024), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "t", "[1, 2", NULL, NULL), AIQ_EJSON);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "args"));
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "t", "{}", NULL, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "t", NULL, "[]", NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "", NULL, NULL, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "bad\nname", NULL, NULL, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_enqueue(&id, NULL, "t", NULL, NULL, NULL), AIQ_EINVAL);
	char big[4096];
	memset(big, 'a', sizeof big);
	big[0] = '[';
	big[1] = '"';
	big[sizeof big - 3] = '"';
	big[sizeof big - 2] = ']';
	big[sizeof big - 1] = '\0';
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "t", big, NULL, NULL), AIQ_ETOOBIG);
	ck_assert_ptr_null(id);

	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_priority(o, 256), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_countdown_ms(o, -1), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_expires_ms(o, 0), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_time_limits(o, 10, 5), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_task_id(o, ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, "a\tb"), AIQ_EINVAL);
	/* The length limits docs/security.md states: names 255, task ids 155. */
	char name[300];
	memset(name, 'n', sizeof name);
	name[256] = '\0';
	ck_assert_int_eq(aiq_client_enqueue(&id, c, name, NULL, NULL, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, name), AIQ_EINVAL);
	name[255] = '\0';
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, name), AIQ_OK);
	ck_assert_int_eq(aiq_client_enqueue(&id, c, name, NULL, NULL, NULL), AIQ_OK);
	aiq_free(id);
	id = NULL;
	name[156] = '\0';
	ck_assert_int_eq(aiq_enqueue_opts_set_task_id(o, name), AIQ_EINVAL);
	name[155] = '\0';
	ck_assert_int_eq(aiq_enqueue_opts_set_task_id(o, name), AIQ_OK);
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);

	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "kafka://x"), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "kafka"));
	/* A URL without a scheme is refused when it is set, not when it is opened. */
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "no-scheme"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "broker.url"));
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_wait_and_revoke)
{
	aiq_config *cfg = make_cfg("c_wait");
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "tasks.x", NULL, NULL, NULL), AIQ_OK);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_get_result(&r, c, id), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, c, id, 50), AIQ_ETIMEDOUT);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	ck_assert_int_eq(aiq_client_revoke(c, id), AIQ_OK);
	ck_assert_int_eq(aiq_client_wait(&r, c, id, 1000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	ck_assert_str_eq(aiq_result_error_type(r), "TaskRevokedError");
	aiq_result_free(r);
	/* Already final: the state is kept and the caller is told which one. */
	ck_assert_int_eq(aiq_client_revoke(c, id), AIQ_ESTATE);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "already finished as REVOKED"));
	ck_assert_int_eq(aiq_client_get_result(&r, c, NULL), AIQ_EINVAL);
	aiq_free(id);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_forget)
{
	aiq_config *cfg = make_cfg("c_forget");
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	aiq__store *s = NULL;
	ck_assert_int_eq(aiq__store_open(&s, "memory://c_forget", cfg), AIQ_OK);
	aiq_result *r = NULL, *done = NULL;
	ck_assert_int_eq(aiq__result_new(&done, "forget-me", AIQ_STATE_SUCCESS), AIQ_OK);
	ck_assert_int_eq(aiq__result_set_json(done, "[1, 2]"), AIQ_OK);
	aiq__result_mark_done(done);
	ck_assert_int_eq(aiq__store_put(s, done), AIQ_OK);
	ck_assert_int_eq(aiq_client_get_result(&r, c, "forget-me"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);

	ck_assert_int_eq(aiq_client_forget(c, "forget-me"), AIQ_OK);
	ck_assert_int_eq(aiq_client_get_result(&r, c, "forget-me"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	ck_assert_str_eq(aiq_result_task_id(r), "forget-me");
	aiq_result_free(r);
	/* A forgotten final state no longer blocks a new one. */
	ck_assert_int_eq(aiq__store_put(s, done), AIQ_OK);
	aiq_result_free(done);

	ck_assert_int_eq(aiq_client_forget(c, "never-stored"), AIQ_OK);
	ck_assert_int_eq(aiq_client_forget(c, ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_forget(c, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_forget(c, "bad\nid"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_forget(NULL, "forget-me"), AIQ_EINVAL);
	char longid[200];
	memset(longid, 'x', sizeof longid - 1);
	longid[sizeof longid - 1] = '\0';
	ck_assert_int_eq(aiq_client_forget(c, longid), AIQ_EINVAL);
	aiq__store_close(s);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

struct completions {
	atomic_int n;
	pthread_mutex_t lock; /* callbacks may run on several worker threads at once */
	char last[64];
};

static void on_complete(const char *task_id, const aiq_result *r, void *ud)
{
	struct completions *c = ud;
	pthread_mutex_lock(&c->lock);
	snprintf(c->last, sizeof c->last, "%s:%s", task_id, aiq_state_name(aiq_result_state(r)));
	pthread_mutex_unlock(&c->lock);
	atomic_fetch_add(&c->n, 1);
}

static void ok_handler(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_succeed(t, "true");
}

static void *run(void *w)
{
	return (void *)(intptr_t)aiq_worker_run(w);
}

START_TEST(test_on_complete)
{
	aiq_config *cfg = make_cfg("c_complete");
	aiq_client *c = NULL;
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "tasks.ok", ok_handler, NULL, NULL), AIQ_OK);
	struct completions comp = {0};
	pthread_mutex_init(&comp.lock, NULL);
	ck_assert_int_eq(aiq_client_on_complete(c, on_complete, &comp, NULL), AIQ_OK);
	pthread_t th;
	pthread_create(&th, NULL, run, w);
	char *ids[5];
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(aiq_client_enqueue(&ids[i], c, "tasks.ok", NULL, NULL, NULL),
		                 AIQ_OK);
	for (int i = 0; i < 5; i++) {
		aiq_result *r = NULL;
		ck_assert_int_eq(aiq_client_wait(&r, c, ids[i], 5000), AIQ_OK);
		aiq_result_free(r);
	}
	/* Callbacks run on worker threads right after the store write. */
	for (int i = 0; i < 200 && atomic_load(&comp.n) < 5; i++)
		usleep(5000);
	ck_assert_int_eq(atomic_load(&comp.n), 5);
	pthread_mutex_lock(&comp.lock);
	ck_assert_ptr_nonnull(strstr(comp.last, ":SUCCESS"));
	pthread_mutex_unlock(&comp.lock);
	/* Removing the callback: no more calls, and its userdata is released. */
	ck_assert_int_eq(aiq_client_on_complete(c, NULL, NULL, NULL), AIQ_OK);
	char *late = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&late, c, "tasks.ok", NULL, NULL, NULL), AIQ_OK);
	aiq_result *lr = NULL;
	ck_assert_int_eq(aiq_client_wait(&lr, c, late, 5000), AIQ_OK);
	aiq_result_free(lr);
	aiq_free(late);
	usleep(50000);
	ck_assert_int_eq(atomic_load(&comp.n), 5);
	aiq_worker_stop(w);
	void *rc;
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, AIQ_OK);
	for (int i = 0; i < 5; i++)
		aiq_free(ids[i]);
	aiq_worker_free(w);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

static atomic_int batch_runs;

static void count_handler(aiq_task *t, void *ud)
{
	(void)ud;
	atomic_fetch_add(&batch_runs, 1);
	aiq_task_succeed(t, aiq_task_args_json(t));
}

/* 100 tasks in one call: distinct ids, each one queued once and run. */
START_TEST(test_batch_enqueue)
{
	aiq_config *cfg = make_cfg("c_batch");
	aiq_client *c = NULL;
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	enum { N = 100 };
	const char *args[N];
	char bufs[N][32];
	for (int i = 0; i < N; i++) {
		snprintf(bufs[i], sizeof bufs[i], "[%d]", i);
		args[i] = bufs[i];
	}
	char *ids[N];
	int status[N];
	memset(status, 0x7f, sizeof status);
	ck_assert_int_eq(
	        aiq_client_enqueue_batch(ids, status, c, "tasks.count", args, NULL, N, NULL),
	        AIQ_OK);
	for (int i = 0; i < N; i++) {
		ck_assert_int_eq(status[i], AIQ_OK);
		ck_assert_ptr_nonnull(ids[i]);
		for (int j = 0; j < i; j++)
			ck_assert_str_ne(ids[i], ids[j]);
	}
	uint64_t depth = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, NULL), AIQ_OK);
	ck_assert_int_eq(depth, N);

	atomic_store(&batch_runs, 0);
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "tasks.count", count_handler, NULL, NULL), AIQ_OK);
	pthread_t th;
	pthread_create(&th, NULL, run, w);
	for (int i = 0; i < N; i++) {
		aiq_result *r = NULL;
		ck_assert_int_eq(aiq_client_wait(&r, c, ids[i], 10000), AIQ_OK);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		ck_assert_str_eq(aiq_result_json(r), bufs[i]); /* each id ran its own args */
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	ck_assert_int_eq(atomic_load(&batch_runs), N);
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, NULL), AIQ_OK);
	ck_assert_int_eq(depth, 0);
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	aiq_worker_free(w);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

/* One bad entry fails alone; the others are sent. */
START_TEST(test_batch_partial_failure)
{
	aiq_config *cfg = make_cfg("c_batch_bad");
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	const char *args[5] = {"[1]", NULL, "[3, oops", "[4]", "{\"not\": \"array\"}"};
	const char *kwargs[5] = {NULL, "{\"k\": 2}", NULL, "{}", NULL};
	char *ids[5];
	int status[5];
	int rc = aiq_client_enqueue_batch(ids, status, c, "tasks.x", args, kwargs, 5, NULL);
	ck_assert_int_eq(rc, AIQ_EJSON); /* the first failure in index order */
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "2 of 5"));
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "task 2"));
	ck_assert_int_eq(status[0], AIQ_OK);
	ck_assert_int_eq(status[1], AIQ_OK);
	ck_assert_int_eq(status[2], AIQ_EJSON);
	ck_assert_int_eq(status[3], AIQ_OK);
	ck_assert_int_eq(status[4], AIQ_EINVAL);
	ck_assert_ptr_null(ids[2]);
	ck_assert_ptr_null(ids[4]);
	uint64_t depth = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, NULL), AIQ_OK);
	ck_assert_int_eq(depth, 3);
	/* What was queued is what each slot said. */
	const char *want_body[3] = {"[[1], {}, ", "[[], {\"k\": 2}, ", "[[4], {}, "};
	int slot[3] = {0, 1, 3};
	for (int i = 0; i < 3; i++) {
		aiq__delivery *d = take(cfg, "celery");
		ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "id")),
		                 ids[slot[i]]);
		ck_assert_int_eq(
		        strncmp((const char *)d->wire.body, want_body[i], strlen(want_body[i])), 0);
		aiq__delivery_free(d);
		aiq_free(ids[slot[i]]);
	}
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_batch_edges)
{
	aiq_config *cfg = make_cfg("c_batch_edges");
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	uint64_t depth = 0;
	/* n = 0 */
	ck_assert_int_eq(aiq_client_enqueue_batch(NULL, NULL, c, "tasks.x", NULL, NULL, 0, NULL),
	                 AIQ_OK);
	/* NULL arrays and NULL outputs: three tasks with [] and {} */
	ck_assert_int_eq(aiq_client_enqueue_batch(NULL, NULL, c, "tasks.x", NULL, NULL, 3, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, NULL), AIQ_OK);
	ck_assert_int_eq(depth, 3);
	for (int i = 0; i < 3; i++) {
		aiq__delivery *d = take(cfg, "celery");
		ck_assert_int_eq(strncmp((const char *)d->wire.body, "[[], {}, ", 9), 0);
		aiq__delivery_free(d);
	}
	/* A fixed id is refused for n > 1 (nothing sent), allowed for n = 1. */
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_task_id(o, "fixed-batch"), AIQ_OK);
	char *ids[2] = {(char *)"x", (char *)"y"};
	int status[2] = {AIQ_OK, AIQ_OK};
	ck_assert_int_eq(aiq_client_enqueue_batch(ids, status, c, "tasks.x", NULL, NULL, 2, o),
	                 AIQ_EINVAL);
	ck_assert_ptr_null(ids[0]);
	ck_assert_ptr_null(ids[1]);
	ck_assert_int_eq(status[0], AIQ_EINVAL);
	ck_assert_int_eq(status[1], AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, NULL), AIQ_OK);
	ck_assert_int_eq(depth, 0);
	ck_assert_int_eq(aiq_client_enqueue_batch(ids, status, c, "tasks.x", NULL, NULL, 1, o),
	                 AIQ_OK);
	ck_assert_str_eq(ids[0], "fixed-batch");
	aiq_free(ids[0]);
	aiq_enqueue_opts_free(o);
	/* Bad name or client: every slot fails. */
	ck_assert_int_eq(aiq_client_enqueue_batch(ids, status, c, "", NULL, NULL, 2, NULL),
	                 AIQ_EINVAL);
	ck_assert_int_eq(status[1], AIQ_EINVAL);
	ck_assert_int_eq(aiq_client_enqueue_batch(NULL, status, NULL, "t", NULL, NULL, 2, NULL),
	                 AIQ_EINVAL);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

/* A store driver whose answers break the contract: the front must not hand
 * them out. */
static int bad_get(aiq__store *st, aiq_result **out, const char *task_id)
{
	(void)st;
	if (strcmp(task_id, "null-answer") == 0) {
		*out = NULL;
		return AIQ_OK;
	}
	return aiq__result_new(out, "another-id", AIQ_STATE_SUCCESS);
}

static int accept_put(aiq__store *st, const aiq_result *r)
{
	(void)r;
	(void)st;
	return AIQ_OK;
}

START_TEST(test_front_checks)
{
	static const aiq__store_ops bad_ops = {.name = "bad", .get = bad_get, .put = accept_put};
	aiq__store bad = {&bad_ops};
	aiq_result *r = (aiq_result *)(uintptr_t)1;
	ck_assert_int_eq(aiq__store_get(&bad, &r, "null-answer"), AIQ_ESTORE);
	ck_assert_ptr_null(r);
	ck_assert_int_eq(aiq__store_get(&bad, &r, "mine"), AIQ_ESTORE);
	ck_assert_ptr_null(r);
	ck_assert_int_eq(aiq__store_get(&bad, &r, ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq__store_put(&bad, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq__store_subscribe(&bad, NULL, NULL), AIQ_OK);
	ck_assert_int_eq(aiq__store_ping(&bad), AIQ_OK);
	/* A driver without forget says so, by name. */
	ck_assert_int_eq(aiq__store_forget(&bad, "x"), AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "bad"));
	ck_assert_int_eq(aiq__store_forget(&bad, ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq__store_forget(NULL, "x"), AIQ_EINVAL);

	/* In one batch, nothing replaces a state the batch made final. */
	aiq__store *s = NULL;
	aiq_config *cfg = make_cfg("c_front");
	ck_assert_int_eq(aiq__store_open(&s, "memory://c_front", cfg), AIQ_OK);
	aiq_result *done = NULL, *later = NULL, *noid = NULL;
	ck_assert_int_eq(aiq__result_new(&done, "f1", AIQ_STATE_SUCCESS), AIQ_OK);
	ck_assert_int_eq(aiq__result_new(&later, "f1", AIQ_STATE_STARTED), AIQ_OK);
	ck_assert_int_eq(aiq__result_new(&noid, "x", AIQ_STATE_STARTED), AIQ_OK);
	noid->task_id[0] = '\0';
	const aiq_result *batch[] = {done, noid, later};
	int status[3];
	ck_assert_int_eq(aiq__store_put_batch(s, batch, 3, status), AIQ_OK);
	ck_assert_int_eq(status[0], AIQ_OK);
	ck_assert_int_eq(status[1], AIQ_EINVAL);
	ck_assert_int_eq(status[2], AIQ_ESTATE);
	ck_assert_int_eq(aiq__store_get(s, &r, "f1"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	aiq_result_free(done);
	aiq_result_free(later);
	aiq_result_free(noid);
	aiq__store_close(s);

	/* Broker arguments are checked before the driver sees them. */
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, "memory://c_front", cfg), AIQ_OK);
	aiq__wire w = {0};
	ck_assert_int_eq(aiq__broker_publish(b, "", &w, 0), AIQ_EINVAL);
	ck_assert_int_eq(aiq__broker_publish(b, "q", NULL, 0), AIQ_EINVAL);
	ck_assert_int_eq(aiq__broker_ack(b, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq__broker_consume(b, (const char *const[]){""}, 1, 0), AIQ_EINVAL);
	uint64_t n = 7;
	ck_assert_int_eq(aiq__broker_depth(b, NULL, &n), AIQ_EINVAL);
	ck_assert_int_eq(aiq__broker_ping(b), AIQ_OK);
	ck_assert_str_eq(aiq__broker_name(b), "memory");
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

/* One client shared by many threads: every enqueue lands exactly once, and
 * enqueues made at the same moment share one publish. */
enum { SHARE_THREADS = 16, SHARE_EACH = 200 };

struct share_arg {
	aiq_client *c;
	char *ids[SHARE_EACH];
	int failed;
};

static void *share_main(void *p)
{
	struct share_arg *a = p;
	for (int i = 0; i < SHARE_EACH; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d]", i);
		if (aiq_client_enqueue(&a->ids[i], a->c, "tasks.share", args, NULL, NULL) != AIQ_OK)
			a->failed++;
	}
	return NULL;
}

START_TEST(test_shared_client)
{
	aiq_config *cfg = make_cfg("c_shared");
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	/* Each leader pauses before publishing, so the others queue behind it
	 * however the threads are scheduled (valgrind runs one at a time). */
	aiq__client_test_publish_delay(c, 100);
	static struct share_arg args[SHARE_THREADS];
	pthread_t th[SHARE_THREADS];
	for (int i = 0; i < SHARE_THREADS; i++) {
		args[i] = (struct share_arg){.c = c};
		ck_assert_int_eq(pthread_create(&th[i], NULL, share_main, &args[i]), 0);
	}
	for (int i = 0; i < SHARE_THREADS; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < SHARE_THREADS; i++)
		ck_assert_int_eq(args[i].failed, 0);
	uint64_t n = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&n, c, NULL), AIQ_OK);
	ck_assert_uint_eq(n, SHARE_THREADS * SHARE_EACH);
	size_t published = 0, groups = 0;
	aiq__client_publish_stats(c, &published, &groups);
	ck_assert_uint_eq(published, SHARE_THREADS * SHARE_EACH);
	/* Publishers that overlap share a group. */
	ck_assert_uint_lt(groups, published);

	/* Each id exactly once on the queue. */
	json_t *seen = json_object();
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, "memory://c_shared", cfg), AIQ_OK);
	ck_assert_int_eq(aiq__broker_consume(b, (const char *const[]){"celery"}, 1, 0), AIQ_OK);
	for (uint64_t k = 0; k < n; k++) {
		aiq__delivery *d = NULL;
		ck_assert_int_eq(aiq__broker_fetch(b, &d, 1000), AIQ_OK);
		aiq__message m;
		aiq__message_init(&m);
		ck_assert_int_eq(aiq__message_from_wire(&m, &d->wire), AIQ_OK);
		ck_assert_ptr_null(json_object_get(seen, m.id));
		json_object_set_new(seen, m.id, json_true());
		aiq__message_clear(&m);
		ck_assert_int_eq(aiq__broker_ack(b, d), AIQ_OK);
		aiq__delivery_free(d);
	}
	for (int i = 0; i < SHARE_THREADS; i++)
		for (int j = 0; j < SHARE_EACH; j++) {
			ck_assert_ptr_nonnull(json_object_get(seen, args[i].ids[j]));
			aiq_free(args[i].ids[j]);
		}
	json_decref(seen);
	aiq__broker_close(b);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("client");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_enqueue_message_shape);
	tcase_add_test(tc, test_enqueue_errors);
	tcase_add_test(tc, test_wait_and_revoke);
	tcase_add_test(tc, test_forget);
	tcase_add_test(tc, test_on_complete);
	tcase_add_test(tc, test_batch_enqueue);
	tcase_add_test(tc, test_batch_partial_failure);
	tcase_add_test(tc, test_batch_edges);
	tcase_add_test(tc, test_front_checks);
	tcase_add_test(tc, test_shared_client);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
