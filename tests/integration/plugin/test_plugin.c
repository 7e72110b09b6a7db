/*
 * Plugin loading through the public API: the example plugin (textstats)
 * registers an analyzer that runs end to end on a memory:// worker; broken
 * plugins fail with clear errors and leave the worker usable.
 *
 * Environment (set by meson.build): AIQ_PLUGIN_GOOD, AIQ_PLUGIN_DIR,
 * AIQ_PLUGIN_NOT_SO, AIQ_PLUGIN_BAD_{NO_SYMBOLS,NO_REGISTER,NEWER_ABI,REGISTER}.
 */
#include <aiqueue/aiqueue.h>
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v && *v, "%s is not set", name);
	return v;
}

static aiq_worker *new_worker(aiq_config **cfg_out)
{
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://plugin"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://plugin"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 2), AIQ_OK);
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	if (cfg_out)
		*cfg_out = cfg;
	else
		aiq_config_free(cfg);
	return w;
}

static void assert_contains(const char *text, const char *needle)
{
	ck_assert_msg(strstr(text, needle) != NULL, "'%s' not in '%s'", needle, text);
}

static void *run_thread(void *arg)
{
	aiq_worker_run(arg);
	return NULL;
}

START_TEST(test_good_plugin_end_to_end)
{
	aiq_config *cfg;
	aiq_worker *w = new_worker(&cfg);
	int rc = aiq_worker_load_plugin(w, env("AIQ_PLUGIN_GOOD"));
	ck_assert_msg(rc == AIQ_OK, "load: %s", aiq_error_last());

	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run_thread, w), 0);
	aiq_client *c;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	char *id = NULL;
	rc = aiq_client_enqueue(
	        &id, c, "tasks.analyze_track",
	        "[7, \"Paper boats on the river\\nPaper boats on the river\\n\\n"
	        "They sail away, they sail away\\nPaper boats on the river\"]",
	        "{\"analyzer\": \"textstats\", \"options\": {\"min_word_length\": 4}}", NULL);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, c, id, 10000), AIQ_OK);
	ck_assert_msg(aiq_result_state(r) == AIQ_STATE_SUCCESS, "%s: %s", aiq_result_error_type(r),
	              aiq_result_error_message(r));
	const char *json = aiq_result_json(r);
	assert_contains(json, "\"analyzer\": \"textstats\"");
	assert_contains(json, "\"lines\": 4");
	assert_contains(json, "\"stanzas\": 2");
	/* words of 4+ letters: 3 per "Paper boats on the river" line, 6 in the other */
	assert_contains(json, "\"words\": 15");
	assert_contains(json, "\"repeated_lines\": 3");
	assert_contains(json, "\"repetition\": 0.75");
	aiq_result_free(r);
	aiq_free(id);

	aiq_worker_stop(w);
	pthread_join(th, NULL);
	aiq_client_free(c);
	aiq_worker_free(w); /* unloads the plugin after its registrations are gone */
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_same_plugin_twice)
{
	aiq_worker *w = new_worker(NULL);
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_GOOD")), AIQ_OK);
	/* Its analyzer exists already: the plugin's own error comes back. */
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_GOOD")), AIQ_EEXIST);
	assert_contains(aiq_error_last(), "failed to register");
	assert_contains(aiq_error_last(), "textstats");
	aiq_worker_free(w);
}
END_TEST

START_TEST(test_missing_file)
{
	aiq_worker *w = new_worker(NULL);
	char path[512];
	snprintf(path, sizeof path, "%s/no-such-plugin.so", env("AIQ_PLUGIN_DIR"));
	ck_assert_int_eq(aiq_worker_load_plugin(w, path), AIQ_ENOTFOUND);
	assert_contains(aiq_error_last(), "no-such-plugin.so");
	/* A bare name is searched by the loader, and not found either. */
	ck_assert_int_eq(aiq_worker_load_plugin(w, "aiq-no-such-plugin.so"), AIQ_ENOTFOUND);
	aiq_worker_free(w);
}
END_TEST

START_TEST(test_not_a_shared_object)
{
	aiq_worker *w = new_worker(NULL);
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_NOT_SO")), AIQ_EINVAL);
	assert_contains(aiq_error_last(), "cannot load plugin");
	aiq_worker_free(w);
}
END_TEST

START_TEST(test_missing_symbols)
{
	aiq_worker *w = new_worker(NULL);
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_BAD_NO_SYMBOLS")),
	                 AIQ_ENOTFOUND);
	assert_contains(aiq_error_last(), "aiq_plugin_abi_version");
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_BAD_NO_REGISTER")),
	                 AIQ_ENOTFOUND);
	assert_contains(aiq_error_last(), "aiq_plugin_register");
	aiq_worker_free(w);
}
END_TEST

START_TEST(test_newer_abi)
{
	aiq_worker *w = new_worker(NULL);
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_BAD_NEWER_ABI")), AIQ_EABI);
	char want[64];
	snprintf(want, sizeof want, "built for plugin ABI %d", AIQ_PLUGIN_ABI_VERSION + 1);
	assert_contains(aiq_error_last(), want);
	assert_contains(aiq_error_last(), "upgrade libaiqueue");
	/* Nothing was registered and the worker still takes a good plugin. */
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_GOOD")), AIQ_OK);
	aiq_worker_free(w);
}
END_TEST

START_TEST(test_failing_registration)
{
	aiq_worker *w = new_worker(NULL);
	ck_assert_int_eq(aiq_worker_load_plugin(w, env("AIQ_PLUGIN_BAD_REGISTER")), AIQ_EINVAL);
	assert_contains(aiq_error_last(), "failed to register");
	assert_contains(aiq_error_last(), "analyzer name");
	aiq_worker_free(w);
}
END_TEST

START_TEST(test_invalid_arguments)
{
	aiq_worker *w = new_worker(NULL);
	ck_assert_int_eq(aiq_worker_load_plugin(NULL, env("AIQ_PLUGIN_GOOD")), AIQ_EINVAL);
	ck_assert_int_eq(aiq_worker_load_plugin(w, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_worker_load_plugin(w, ""), AIQ_EINVAL);
	aiq_worker_free(w);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("plugin");
	TCase *tc = tcase_create("load");
	tcase_add_test(tc, test_good_plugin_end_to_end);
	tcase_add_test(tc, test_same_plugin_twice);
	tcase_add_test(tc, test_missing_file);
	tcase_add_test(tc, test_not_a_shared_object);
	tcase_add_test(tc, test_missing_symbols);
	tcase_add_test(tc, test_newer_abi);
	tcase_add_test(tc, test_failing_registration);
	tcase_add_test(tc, test_invalid_arguments);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
