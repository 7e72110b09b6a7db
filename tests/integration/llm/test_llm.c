/*
 * The llm analyzer end to end: a real worker (memory:// broker and store)
 * runs tasks.analyze_track against openai_server.py, a local
 * OpenAI-compatible server that checks each request and answers per
 * scenario (the model name). Each case checks the stored outcome.
 * Public API only.
 *
 * Environment: AIQ_LLM_SERVER (path of openai_server.py), AIQ_PYTHON.
 */
#include <aiqueue/aiqueue.h>
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "llm_fixture.h"

/* ---- a worker on a thread ------------------------------------------------- */

struct fixture {
	aiq_config *cfg;
	aiq_client *client;
	aiq_worker *worker;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	char retry_detail[1024];
	atomic_int retries;
};

static void on_event(int event, const char *id, const char *name, const char *detail, void *ud)
{
	struct fixture *fx = ud;
	if (event != AIQ_EVENT_RETRIED)
		return;
	pthread_mutex_lock(&fx->lock);
	snprintf(fx->retry_detail, sizeof fx->retry_detail, "%s", detail ? detail : "");
	pthread_mutex_unlock(&fx->lock);
	atomic_fetch_add(&fx->retries, 1);
}

static void *run_thread(void *arg)
{
	struct fixture *fx = arg;
	aiq_worker_run(fx->worker);
	return NULL;
}

static char base_url[128];

/* A configuration pointing the llm analyzer at the test server. */
static void fx_config(struct fixture *fx)
{
	memset(fx, 0, sizeof *fx);
	pthread_mutex_init(&fx->lock, NULL);
	snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d/v1/", server_port);
	ck_assert_int_eq(aiq_config_new(&fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "broker.url", "memory://llm"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "result.url", "memory://llm"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "worker.concurrency", 1), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "task.retry_backoff_ms", 20), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_bool(fx->cfg, "task.retry_jitter", 0), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "llm.base_url", base_url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "llm.api_key", API_KEY), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "llm.timeout_ms", 10000), AIQ_OK);
}

static void fx_start(struct fixture *fx)
{
	int rc = aiq_worker_new(&fx->worker, fx->cfg);
	ck_assert_msg(rc == AIQ_OK, "aiq_worker_new: %s", aiq_error_last());
	ck_assert_int_eq(aiq_worker_on_event(fx->worker, on_event, fx, NULL), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&fx->client, fx->cfg), AIQ_OK);
	ck_assert_int_eq(pthread_create(&fx->thread, NULL, run_thread, fx), 0);
	fx->started = true;
}

static void fx_done(struct fixture *fx)
{
	if (fx->started) {
		aiq_worker_stop(fx->worker);
		pthread_join(fx->thread, NULL);
	}
	aiq_worker_free(fx->worker);
	aiq_client_free(fx->client);
	aiq_config_free(fx->cfg);
	pthread_mutex_destroy(&fx->lock);
}

/* Enqueue tasks.analyze_track with a given analyzer and options, wait for
 * the final state. Lyrics are unique per call (the server counts attempts
 * per prompt). */
static aiq_result *analyze(struct fixture *fx, const char *analyzer, const char *options_json,
                           int timeout_ms)
{
	static int serial;
	char args[256], kwargs[512];
	snprintf(args, sizeof args,
	         "[\"track-%d\", \"la la la, the rain on the window\\nla la la, case %d-%ld\"]",
	         serial, serial, (long)getpid());
	serial++;
	snprintf(kwargs, sizeof kwargs, "{\"analyzer\": \"%s\", \"options\": %s}", analyzer,
	         options_json ? options_json : "{}");
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx->client, "tasks.analyze_track", args, kwargs, NULL);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	aiq_result *r = NULL;
	rc = aiq_client_wait(&r, fx->client, id, timeout_ms);
	ck_assert_msg(rc == AIQ_OK, "wait: %s (%s)", aiq_strerror(rc), aiq_error_last());
	aiq_free(id);
	return r;
}

/* Assert SUCCESS and that the stored analysis came from `model`. */
static void assert_success(aiq_result *r, const char *analyzer, const char *model)
{
	ck_assert_msg(aiq_result_state(r) == AIQ_STATE_SUCCESS, "state %s: %s: %s",
	              aiq_state_name(aiq_result_state(r)), aiq_result_error_type(r),
	              aiq_result_error_message(r));
	const char *json = aiq_result_json(r);
	char want[200];
	snprintf(want, sizeof want, "\"analyzer\": \"%s\"", analyzer);
	ck_assert_msg(strstr(json, want), "no %s in %s", want, json);
	snprintf(want, sizeof want, "\"model\": \"%s\"", model);
	ck_assert_msg(strstr(json, want), "no %s in %s", want, json);
	ck_assert_msg(strstr(json, "\"mood\": \"wistful\""), "analysis missing: %s", json);
	ck_assert_msg(strstr(json, "\"total_tokens\": 42"), "usage missing: %s", json);
	ck_assert_msg(strstr(json, "\"prompt_tokens\": 30"), "usage missing: %s", json);
	ck_assert_msg(strstr(json, "\"latency_ms\": "), "latency missing: %s", json);
}

static void assert_failure(aiq_result *r, const char *type, const char *needle)
{
	ck_assert_msg(aiq_result_state(r) == AIQ_STATE_FAILURE, "state %s (%s)",
	              aiq_state_name(aiq_result_state(r)), aiq_result_json(r));
	ck_assert_str_eq(aiq_result_error_type(r), type);
	if (needle)
		ck_assert_msg(strstr(aiq_result_error_message(r), needle), "'%s' not in '%s'",
		              needle, aiq_result_error_message(r));
}

static void set_model(struct fixture *fx, const char *model)
{
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "llm.model", model), AIQ_OK);
}

/* ---- cases ------------------------------------------------------------------ */

START_TEST(test_success)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "ok");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "ok");
	ck_assert_ptr_nonnull(strstr(aiq_result_json(r), "\"finish_reason\": \"stop\""));
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 0);
	ck_assert_int_eq(requests_for("ok"), 1);
	/* A second task on the same thread reuses the handle (and connection). */
	r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "ok");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_preset)
{
	struct fixture fx;
	fx_config(&fx);
	/* `llm` itself points nowhere: the preset must carry its own URL. */
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "llm.base_url", "http://127.0.0.1:1/v1"),
	                 AIQ_OK);
	char presets[512];
	snprintf(presets, sizeof presets,
	         "qwen = model:preset-qwen, base_url:%s, temperature:0.7 ; "
	         "gemma=model:gemma3:4b,base_url:http://127.0.0.1:1/v1",
	         base_url);
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "llm.presets", presets), AIQ_OK);
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "qwen", NULL, 20000);
	assert_success(r, "qwen", "preset-qwen");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_bad_preset)
{
	struct fixture fx;
	fx_config(&fx);
	/* Refused when set (not when a worker starts), and nothing changes. */
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "llm.presets", "qwen=model:x,colour:blue"),
	                 AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "colour"), "%s", aiq_error_last());
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "llm.temperature", "warm"), AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "llm.temperature"), "%s", aiq_error_last());
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_worker_new(&w, fx.cfg), AIQ_OK);
	aiq_worker_free(w);
	fx_done(&fx);
}
END_TEST

START_TEST(test_options_override_model)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "ok");
	fx_start(&fx);
	aiq_result *r =
	        analyze(&fx, "llm", "{\"model\": \"ok-override\", \"max_tokens\": 64}", 20000);
	assert_success(r, "llm", "ok-override");
	aiq_result_free(r);
	r = analyze(&fx, "llm", "{\"temperature\": \"hot\"}", 20000);
	assert_failure(r, "ValueError", "temperature");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_json_mode_off)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "plain-ok");
	ck_assert_int_eq(aiq_config_set_bool(fx.cfg, "llm.json_mode", 0), AIQ_OK);
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "plain-ok");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_key_from_environment)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "ok-env");
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "llm.api_key", ""), AIQ_OK);
	unsetenv("AIQUEUE_LLM_API_KEY");
	setenv("OPENAI_API_KEY", API_KEY, 1);
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "ok-env");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_fenced_json)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "fenced");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "fenced");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

/* 429 with Retry-After: 1 -> RETRY, then SUCCESS no sooner than a second later. */
START_TEST(test_rate_limited_retry_after_seconds)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "ratelimit-once");
	fx_start(&fx);
	int64_t t0 = now_ms();
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	int64_t took = now_ms() - t0;
	assert_success(r, "llm", "ratelimit-once");
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 1);
	ck_assert_msg(strstr(fx.retry_detail, "HTTP 429"), "%s", fx.retry_detail);
	ck_assert_msg(took >= 900, "Retry-After ignored: done after %lld ms", (long long)took);
	ck_assert_int_eq(requests_for("ratelimit-once"), 2);
	fx_done(&fx);
}
END_TEST

START_TEST(test_rate_limited_retry_after_date)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "ratelimit-date");
	fx_start(&fx);
	int64_t t0 = now_ms();
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	int64_t took = now_ms() - t0;
	assert_success(r, "llm", "ratelimit-date");
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 1);
	/* The date is 2 s ahead at one-second resolution: at least ~1 s. */
	ck_assert_msg(took >= 900, "Retry-After date ignored: done after %lld ms", (long long)took);
	fx_done(&fx);
}
END_TEST

START_TEST(test_server_error_then_success)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "error500-once");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "error500-once");
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 1);
	ck_assert_msg(strstr(fx.retry_detail, "HTTP 500"), "%s", fx.retry_detail);
	fx_done(&fx);
}
END_TEST

START_TEST(test_server_error_until_max_retries)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "error500");
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "task.max_retries", 2), AIQ_OK);
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_failure(r, "MaxRetriesExceededError", NULL);
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 2);
	ck_assert_int_eq(requests_for("error500"), 3);
	fx_done(&fx);
}
END_TEST

START_TEST(test_timeout_then_success)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "slow-once");
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "llm.timeout_ms", 500), AIQ_OK);
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "slow-once");
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 1);
	ck_assert_msg(strstr(fx.retry_detail, "llm.timeout_ms"), "%s", fx.retry_detail);
	fx_done(&fx);
}
END_TEST

START_TEST(test_dropped_connection_then_success)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "drop-once");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_success(r, "llm", "drop-once");
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 1);
	ck_assert_msg(strstr(fx.retry_detail, "cannot reach"), "%s", fx.retry_detail);
	fx_done(&fx);
}
END_TEST

START_TEST(test_not_json)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "notjson");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_failure(r, "LLMInvalidOutput", "not JSON");
	ck_assert_msg(strstr(aiq_result_error_message(r), "Sure! This is a sad song"), "%s",
	              aiq_result_error_message(r));
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 0);
	fx_done(&fx);
}
END_TEST

START_TEST(test_array_not_object)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "array");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_failure(r, "LLMInvalidOutput", "a JSON array");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_unauthorized)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "unauthorized");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_failure(r, "LLMAuthError", "llm.api_key");
	/* The server echoed the key; the stored message must not carry it. */
	ck_assert_msg(strstr(aiq_result_error_message(r), API_KEY) == NULL, "key leaked: %s",
	              aiq_result_error_message(r));
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 0);
	ck_assert_int_eq(requests_for("unauthorized"), 1);
	fx_done(&fx);
}
END_TEST

START_TEST(test_unknown_model)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "missing");
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_failure(r, "LLMNotFound", "llm.model");
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 0);
	fx_done(&fx);
}
END_TEST

START_TEST(test_response_too_large)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "huge");
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "llm.max_response_bytes", 4096), AIQ_OK);
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_failure(r, "LLMResponseTooLarge", "llm.max_response_bytes");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

/* The soft time limit cancels the task; the analyzer aborts the transfer. */
START_TEST(test_soft_time_limit_aborts_request)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "slow");
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "task.soft_time_limit_ms", 300), AIQ_OK);
	fx_start(&fx);
	int64_t t0 = now_ms();
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	int64_t took = now_ms() - t0;
	assert_failure(r, "SoftTimeLimitExceeded", NULL);
	ck_assert_msg(took < 4000, "transfer not aborted: %lld ms", (long long)took);
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_unreachable_server_retries)
{
	struct fixture fx;
	fx_config(&fx);
	set_model(&fx, "ok");
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "llm.base_url", "http://127.0.0.1:1/v1"),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "task.max_retries", 1), AIQ_OK);
	fx_start(&fx);
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	assert_failure(r, "MaxRetriesExceededError", NULL);
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&fx.retries), 1);
	ck_assert_msg(strstr(fx.retry_detail, "cannot reach"), "%s", fx.retry_detail);
	fx_done(&fx);
}
END_TEST

static void my_analyzer(aiq_task *task, const char *text, const char *params, void *ud)
{
	aiq_task_succeed(task, "{\"mine\": true}");
}

static atomic_int destroyed;

static void count_destroy(void *ud)
{
	atomic_fetch_add(&destroyed, 1);
}

/* `llm` is a built-in: a program may replace it with its own analyzer. */
START_TEST(test_user_analyzer_replaces_llm)
{
	struct fixture fx;
	fx_config(&fx);
	fx_start(&fx);
	aiq_worker_stop(fx.worker);
	pthread_join(fx.thread, NULL);
	fx.started = false;
	ck_assert_int_eq(
	        aiq_worker_add_analyzer(fx.worker, "llm", my_analyzer, NULL, count_destroy),
	        AIQ_OK);
	ck_assert_int_eq(
	        aiq_worker_add_analyzer(fx.worker, "llm", my_analyzer, NULL, count_destroy),
	        AIQ_EEXIST);
	ck_assert_int_eq(atomic_load(&destroyed), 1); /* the refused registration's */
	ck_assert_int_eq(pthread_create(&fx.thread, NULL, run_thread, &fx), 0);
	fx.started = true;
	aiq_result *r = analyze(&fx, "llm", NULL, 20000);
	ck_assert_ptr_nonnull(strstr(aiq_result_json(r), "\"mine\": true"));
	aiq_result_free(r);
	fx_done(&fx);
	ck_assert_int_eq(atomic_load(&destroyed), 2);
}
END_TEST

int main(void)
{
	server_start();
	Suite *s = suite_create("llm");
	TCase *tc = tcase_create("analyzer");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_success);
	tcase_add_test(tc, test_preset);
	tcase_add_test(tc, test_bad_preset);
	tcase_add_test(tc, test_options_override_model);
	tcase_add_test(tc, test_json_mode_off);
	tcase_add_test(tc, test_key_from_environment);
	tcase_add_test(tc, test_fenced_json);
	tcase_add_test(tc, test_rate_limited_retry_after_seconds);
	tcase_add_test(tc, test_rate_limited_retry_after_date);
	tcase_add_test(tc, test_server_error_then_success);
	tcase_add_test(tc, test_server_error_until_max_retries);
	tcase_add_test(tc, test_timeout_then_success);
	tcase_add_test(tc, test_dropped_connection_then_success);
	tcase_add_test(tc, test_not_json);
	tcase_add_test(tc, test_array_not_object);
	tcase_add_test(tc, test_unauthorized);
	tcase_add_test(tc, test_unknown_model);
	tcase_add_test(tc, test_response_too_large);
	tcase_add_test(tc, test_soft_time_limit_aborts_request);
	tcase_add_test(tc, test_unreachable_server_retries);
	tcase_add_test(tc, test_user_analyzer_replaces_llm);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	server_stop();
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
