/*
 * The Redis result store against a real redis-server: Celery's key, meta
 * and TTL, the final-state rule, waiting (wakes on publish, never misses a
 * stored result), completion notifications, forget (Celery's key deleted).
 */
#include "fixture.h"

#include "config_int.h"
#include "store.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static aiq__store *open_store(int64_t expires_s)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "result.expires_s", expires_s), AIQ_OK);
	aiq__store *s = NULL;
	int rc = aiq__store_open(&s, rt_url(), cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	ck_assert_str_eq(s->ops->name, "redis");
	aiq_config_free(cfg);
	return s;
}

static aiq_result *make(const char *id, int state, const char *json)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq__result_new(&r, id, state), AIQ_OK);
	if (json)
		ck_assert_int_eq(aiq__result_set_json(r, json), AIQ_OK);
	if (aiq_state_is_ready(state))
		aiq__result_mark_done(r);
	return r;
}

static void put(aiq__store *s, const char *id, int state, const char *json, int want)
{
	aiq_result *r = make(id, state, json);
	int rc = s->ops->put(s, r);
	ck_assert_msg(rc == want, "put %s: %s (%s)", id, aiq_strerror(rc), aiq_error_last());
	aiq_result_free(r);
}

START_TEST(celery_format_and_ttl)
{
	rt_flush();
	aiq__store *s = open_store(1234);
	ck_assert_int_eq(s->ops->ping(s), AIQ_OK);
	put(s, "t1", AIQ_STATE_STARTED, "{\"pid\": 1, \"hostname\": \"w@h\"}", AIQ_OK);
	redisReply *r = rt_cmd("TTL celery-task-meta-t1");
	ck_assert_msg(r->integer > 1200 && r->integer <= 1234, "TTL %lld", r->integer);
	freeReplyObject(r);
	put(s, "t1", AIQ_STATE_SUCCESS, "{\"answer\": 42}", AIQ_OK);
	r = rt_cmd("GET celery-task-meta-t1");
	ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
	json_t *meta = json_loads(r->str, 0, NULL);
	ck_assert_ptr_nonnull(meta);
	ck_assert_str_eq(json_string_value(json_object_get(meta, "status")), "SUCCESS");
	ck_assert_int_eq(
	        json_integer_value(json_object_get(json_object_get(meta, "result"), "answer")), 42);
	ck_assert_str_eq(json_string_value(json_object_get(meta, "task_id")), "t1");
	ck_assert(json_is_string(json_object_get(meta, "date_done")));
	ck_assert(json_is_array(json_object_get(meta, "children")));
	json_decref(meta);
	freeReplyObject(r);
	r = rt_cmd("TTL celery-task-meta-t1");
	ck_assert_msg(r->integer > 1200 && r->integer <= 1234, "TTL %lld", r->integer);
	freeReplyObject(r);

	aiq_result *got = NULL;
	ck_assert_int_eq(s->ops->get(s, &got, "t1"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(got), AIQ_STATE_SUCCESS);
	aiq_result_free(got);
	ck_assert_int_eq(s->ops->get(s, &got, "missing"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(got), AIQ_STATE_PENDING);
	aiq_result_free(got);
	s->ops->close(s);

	/* 0 = no expiry: SET without EX */
	s = open_store(0);
	put(s, "t2", AIQ_STATE_SUCCESS, "1", AIQ_OK);
	r = rt_cmd("TTL celery-task-meta-t2");
	ck_assert_int_eq(r->integer, -1);
	freeReplyObject(r);
	s->ops->close(s);
}
END_TEST

START_TEST(final_state_kept)
{
	rt_flush();
	aiq__store *s = open_store(600);
	put(s, "f1", AIQ_STATE_FAILURE, NULL, AIQ_OK);
	put(s, "f1", AIQ_STATE_STARTED, NULL, AIQ_ESTATE);
	put(s, "f1", AIQ_STATE_SUCCESS, "2", AIQ_ESTATE);
	aiq_result *got = NULL;
	ck_assert_int_eq(s->ops->get(s, &got, "f1"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(got), AIQ_STATE_FAILURE);
	aiq_result_free(got);
	/* a foreign writer's final state counts too */
	freeReplyObject(rt_cmd("SET celery-task-meta-f2 %s",
	                       "{\"status\": \"REVOKED\", \"result\": null, \"traceback\": null, "
	                       "\"children\": [], \"date_done\": null, \"task_id\": \"f2\"}"));
	put(s, "f2", AIQ_STATE_SUCCESS, "3", AIQ_ESTATE);
	s->ops->close(s);
}
END_TEST

struct waiter {
	aiq__store *s;
	const char *id;
	int64_t timeout;
	int rc;
	int state;
	int64_t took;
};

static void *wait_main(void *arg)
{
	struct waiter *w = arg;
	aiq_result *r = NULL;
	int64_t t0 = rt_mono_ms();
	w->rc = w->s->ops->wait(w->s, &r, w->id, w->timeout);
	w->took = rt_mono_ms() - t0;
	w->state = r ? aiq_result_state(r) : -1;
	aiq_result_free(r);
	return NULL;
}

START_TEST(wait_wakes_and_never_misses)
{
	rt_flush();
	aiq__store *s = open_store(600);
	/* already stored: returns at once */
	put(s, "w0", AIQ_STATE_SUCCESS, "0", AIQ_OK);
	struct waiter w0 = {s, "w0", 5000, 0, 0, 0};
	wait_main(&w0);
	ck_assert_int_eq(w0.rc, AIQ_OK);
	ck_assert_int_eq(w0.state, AIQ_STATE_SUCCESS);
	ck_assert(w0.took < 1000);

	/* stored later by another handle: wakes on the publish */
	aiq__store *writer = open_store(600);
	struct waiter w1 = {s, "w1", 20000, 0, 0, 0};
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, wait_main, &w1), 0);
	rt_sleep_ms(300);
	put(writer, "w1", AIQ_STATE_STARTED, NULL, AIQ_OK);
	rt_sleep_ms(200);
	put(writer, "w1", AIQ_STATE_SUCCESS, "1", AIQ_OK);
	pthread_join(th, NULL);
	ck_assert_int_eq(w1.rc, AIQ_OK);
	ck_assert_int_eq(w1.state, AIQ_STATE_SUCCESS);
	ck_assert_msg(w1.took < 5000, "wait took %lld ms", (long long)w1.took);

	/* many waiters racing with writers: none misses its result */
	enum { N = 20 };
	struct waiter ws[N];
	pthread_t ths[N];
	char ids[N][16];
	for (int i = 0; i < N; i++) {
		snprintf(ids[i], sizeof ids[i], "race%d", i);
		ws[i] = (struct waiter){s, ids[i], 15000, 0, 0, 0};
		ck_assert_int_eq(pthread_create(&ths[i], NULL, wait_main, &ws[i]), 0);
	}
	for (int i = 0; i < N; i++)
		put(writer, ids[i], AIQ_STATE_SUCCESS, "null", AIQ_OK);
	for (int i = 0; i < N; i++) {
		pthread_join(ths[i], NULL);
		ck_assert_int_eq(ws[i].rc, AIQ_OK);
		ck_assert_int_eq(ws[i].state, AIQ_STATE_SUCCESS);
	}

	/* timeout: the latest state comes back */
	put(writer, "w2", AIQ_STATE_STARTED, NULL, AIQ_OK);
	struct waiter w2 = {s, "w2", 300, 0, 0, 0};
	wait_main(&w2);
	ck_assert_int_eq(w2.rc, AIQ_ETIMEDOUT);
	ck_assert_int_eq(w2.state, AIQ_STATE_STARTED);
	writer->ops->close(writer);
	s->ops->close(s);
}
END_TEST

static pthread_mutex_t note_lock = PTHREAD_MUTEX_INITIALIZER;
static int notes;
static char last_note[64];

static void on_note(const aiq_result *r, void *ud)
{
	(void)ud;
	pthread_mutex_lock(&note_lock);
	notes++;
	snprintf(last_note, sizeof last_note, "%s", aiq_result_task_id(r));
	pthread_mutex_unlock(&note_lock);
}

START_TEST(notify_on_completion)
{
	rt_flush();
	aiq__store *s = open_store(600);
	ck_assert(s->ops->caps & AIQ__STORE_CAP_NOTIFY);
	ck_assert_int_eq(s->ops->subscribe(s, on_note, NULL), AIQ_OK);
	aiq__store *writer = open_store(600);
	put(writer, "n1", AIQ_STATE_STARTED, NULL, AIQ_OK); /* not final: no note */
	put(writer, "n1", AIQ_STATE_SUCCESS, "1", AIQ_OK);
	int64_t t0 = rt_mono_ms();
	int n = 0;
	while (rt_mono_ms() - t0 < 5000) {
		pthread_mutex_lock(&note_lock);
		n = notes;
		pthread_mutex_unlock(&note_lock);
		if (n >= 1)
			break;
		rt_sleep_ms(20);
	}
	rt_sleep_ms(200);
	pthread_mutex_lock(&note_lock);
	ck_assert_int_eq(notes, 1);
	ck_assert_str_eq(last_note, "n1");
	pthread_mutex_unlock(&note_lock);
	ck_assert_int_eq(s->ops->subscribe(s, NULL, NULL), AIQ_OK);
	put(writer, "n2", AIQ_STATE_SUCCESS, "1", AIQ_OK);
	rt_sleep_ms(300);
	pthread_mutex_lock(&note_lock);
	ck_assert_int_eq(notes, 1);
	pthread_mutex_unlock(&note_lock);
	writer->ops->close(writer);
	s->ops->close(s);
}
END_TEST

static int64_t key_exists(const char *key)
{
	redisReply *r = rt_cmd("EXISTS %s", key);
	ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
	int64_t n = r->integer;
	freeReplyObject(r);
	return n;
}

/* aiq_client_forget() deletes exactly celery-task-meta-<id>, whoever wrote
 * it, and nothing else. */
START_TEST(forget_deletes_celery_key)
{
	rt_flush();
	aiq__store *s = open_store(600);
	put(s, "g1", AIQ_STATE_SUCCESS, "1", AIQ_OK);
	put(s, "g1x", AIQ_STATE_SUCCESS, "2", AIQ_OK);
	freeReplyObject(rt_cmd("SET celery-task-meta-g2 %s",
	                       "{\"status\": \"SUCCESS\", \"result\": 3, \"traceback\": null, "
	                       "\"children\": [], \"date_done\": null, \"task_id\": \"g2\"}"));
	freeReplyObject(rt_cmd("SET g1 %s", "unrelated"));
	ck_assert_int_eq(key_exists("celery-task-meta-g1"), 1);

	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://redis-forget"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", rt_url()), AIQ_OK);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client: %s", aiq_error_last());
	rc = aiq_client_forget(c, "g1");
	ck_assert_msg(rc == AIQ_OK, "forget: %s", aiq_error_last());
	ck_assert_int_eq(key_exists("celery-task-meta-g1"), 0);
	ck_assert_int_eq(key_exists("celery-task-meta-g1x"), 1);
	ck_assert_int_eq(key_exists("g1"), 1);
	ck_assert_int_eq(aiq_client_forget(c, "g2"), AIQ_OK); /* a foreign writer's key */
	ck_assert_int_eq(key_exists("celery-task-meta-g2"), 0);
	ck_assert_int_eq(aiq_client_forget(c, "g1"), AIQ_OK); /* already gone */
	ck_assert_int_eq(aiq_client_forget(c, ""), AIQ_EINVAL);
	aiq_result *got = NULL;
	ck_assert_int_eq(aiq_client_get_result(&got, c, "g1"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(got), AIQ_STATE_PENDING);
	aiq_result_free(got);
	/* The final-state rule went with the key. */
	put(s, "g1", AIQ_STATE_STARTED, NULL, AIQ_OK);
	ck_assert_int_eq(key_exists("celery-task-meta-g1"), 1);
	aiq_client_free(c);
	aiq_config_free(cfg);
	s->ops->close(s);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("redis_store");
	TCase *tc = tcase_create("store");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, celery_format_and_ttl);
	tcase_add_test(tc, final_state_kept);
	tcase_add_test(tc, wait_wakes_and_never_misses);
	tcase_add_test(tc, notify_on_completion);
	tcase_add_test(tc, forget_deletes_celery_key);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return rt_run(suite());
}
