/*
 * Configuration: defaults, typed and text setters, errors, environment.
 */
#include "testutil.h"

#include "internal.h"

#include <aiqueue/aiqueue.h>
#include <stdlib.h>
#include <string.h>

static char *get(const aiq_config *cfg, const char *key)
{
	char *v = NULL;
	ck_assert_int_eq(aiq_config_get(&v, cfg, key), AIQ_OK);
	return v;
}

START_TEST(test_defaults)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	char *v = get(cfg, "broker.url");
	ck_assert_str_eq(v, "memory://");
	aiq_free(v);
	v = get(cfg, "queue");
	ck_assert_str_eq(v, "celery");
	aiq_free(v);
	int64_t n = 0;
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "result.expires_s"), AIQ_OK);
	ck_assert_int_eq(n, 86400);
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "task.max_retries"), AIQ_OK);
	ck_assert_int_eq(n, 3);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_typed_setters)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "queue", "lyrics"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 7), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "result.track_started", 0), AIQ_OK);
	char *v = get(cfg, "queue");
	ck_assert_str_eq(v, "lyrics");
	aiq_free(v);
	v = get(cfg, "worker.concurrency");
	ck_assert_str_eq(v, "7");
	aiq_free(v);
	v = get(cfg, "result.track_started");
	ck_assert_str_eq(v, "false");
	aiq_free(v);

	/* Wrong types are refused and change nothing. */
	ck_assert_int_eq(aiq_config_set_int(cfg, "queue", 1), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.concurrency", "2"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "queue", 1), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", -1), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "out of range"));
	v = get(cfg, "worker.concurrency");
	ck_assert_str_eq(v, "7");
	aiq_free(v);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_text_setter)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", "32"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "task.retry_jitter", "Off"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "task.retry_jitter", "YES"), AIQ_OK);
	int64_t n = 0;
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "worker.prefetch"), AIQ_OK);
	ck_assert_int_eq(n, 32);
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "task.retry_jitter"), AIQ_OK);
	ck_assert_int_eq(n, 1);

	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", "12abc"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", " 3"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.prefetch", "99999999999999999999"),
	                 AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, "task.retry_jitter", "maybe"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "boolean"));
	ck_assert_int_eq(aiq_config_get_int(&n, cfg, "worker.prefetch"), AIQ_OK);
	ck_assert_int_eq(n, 32);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_unknown_key)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "broker.ulr", "x"), AIQ_ENOTFOUND);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "broker.ulr"));
	char *v = NULL;
	ck_assert_int_eq(aiq_config_get(&v, cfg, "nope"), AIQ_ENOTFOUND);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(aiq_config_set(NULL, "queue", "x"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_set(cfg, NULL, "x"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_config_new(NULL), AIQ_EINVAL);
	aiq_config_free(NULL);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_copy_is_deep)
{
	aiq_config *a = NULL, *b = NULL;
	ck_assert_int_eq(aiq_config_new(&a), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(a, "queue", "first"), AIQ_OK);
	ck_assert_int_eq(aiq_config_copy(&b, a), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(a, "queue", "second"), AIQ_OK);
	char *v = get(b, "queue");
	ck_assert_str_eq(v, "first");
	aiq_free(v);
	aiq_config_free(a);
	aiq_config_free(b);
}
END_TEST

START_TEST(test_env)
{
	unsetenv("AIQUEUE_BROKER_URL");
	unsetenv("AIQUEUE_RESULT_URL");
	setenv("CELERY_BROKER_URL", "memory://from-celery", 1);
	setenv("CELERY_RESULT_BACKEND", "memory://celery-results", 1);
	setenv("AIQUEUE_WORKER_CONCURRENCY", "5", 1);
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_OK);
	char *v = get(cfg, "broker.url");
	ck_assert_str_eq(v, "memory://from-celery");
	aiq_free(v);
	v = get(cfg, "result.url");
	ck_assert_str_eq(v, "memory://celery-results");
	aiq_free(v);
	v = get(cfg, "worker.concurrency");
	ck_assert_str_eq(v, "5");
	aiq_free(v);

	/* The project's own variable wins over Celery's. */
	setenv("AIQUEUE_BROKER_URL", "memory://ours", 1);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_OK);
	v = get(cfg, "broker.url");
	ck_assert_str_eq(v, "memory://ours");
	aiq_free(v);

	/* A bad value names the variable. */
	setenv("AIQUEUE_WORKER_PREFETCH", "lots", 1);
	ck_assert_int_eq(aiq_config_load_env(cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "AIQUEUE_WORKER_PREFETCH"));
	unsetenv("AIQUEUE_WORKER_PREFETCH");
	unsetenv("AIQUEUE_BROKER_URL");
	unsetenv("CELERY_BROKER_URL");
	unsetenv("CELERY_RESULT_BACKEND");
	unsetenv("AIQUEUE_WORKER_CONCURRENCY");
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_errors_and_version)
{
	ck_assert_str_eq(aiq_strerror(AIQ_OK), "success");
	ck_assert_str_eq(aiq_strerror(AIQ_ETIMEDOUT), "timed out");
	ck_assert_str_eq(aiq_strerror(12345), "unknown error");
	for (int code = AIQ_ELIMIT; code <= AIQ_OK; code++)
		ck_assert_str_ne(aiq_strerror(code), "unknown error");
	aiq_error_clear();
	ck_assert_str_eq(aiq_error_last(), "");
	ck_assert_str_eq(aiq_version_string(), AIQ_VERSION_STRING);
	ck_assert_int_eq(aiq_version_number(), AIQ_VERSION_NUMBER);
}
END_TEST

static int log_calls, log_destroyed;
static void count_log(int level, const char *message, void *ud)
{
	(void)message;
	ck_assert_int_ge(level, AIQ_LOG_WARNING);
	ck_assert_ptr_eq(ud, &log_calls);
	log_calls++;
}
static void count_log_destroy(void *ud)
{
	ck_assert_ptr_eq(ud, &log_calls);
	log_destroyed++;
}

START_TEST(test_log_handler)
{
	ck_assert_int_eq(aiq_log_level_from_name("DEBUG"), AIQ_LOG_DEBUG);
	ck_assert_int_eq(aiq_log_level_from_name("warning"), AIQ_LOG_WARNING);
	ck_assert_int_eq(aiq_log_level_from_name("loud"), AIQ_EINVAL);
	aiq_log_set_handler(count_log, &log_calls, count_log_destroy);
	aiq_log_set_level(AIQ_LOG_WARNING);
	aiq__log(AIQ_LOG_WARNING, "seen %d", 1);
	aiq__log(AIQ_LOG_INFO, "dropped below the level");
	ck_assert_int_eq(log_calls, 1);
	ck_assert_int_eq(log_destroyed, 0);
	aiq_log_set_handler(NULL, NULL, NULL); /* back to stderr: the old userdata goes */
	ck_assert_int_eq(log_destroyed, 1);
	aiq_log_set_handler(NULL, NULL, NULL);
	ck_assert_int_eq(log_destroyed, 1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_typed_setters);
	tcase_add_test(tc, test_text_setter);
	tcase_add_test(tc, test_unknown_key);
	tcase_add_test(tc, test_copy_is_deep);
	tcase_add_test(tc, test_env);
	tcase_add_test(tc, test_errors_and_version);
	tcase_add_test(tc, test_log_handler);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
