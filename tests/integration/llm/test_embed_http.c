/*
 * The OpenAI-compatible /embeddings client (lib/analyzers/embed.c) against
 * openai_server.py, a real HTTP server on 127.0.0.1 that this program
 * starts: the request it sends, a 429 retried after Retry-After, a 5xx
 * retried embed.retries times, a body that is not JSON, a wrong size and a
 * refused key, each with a clear error.
 */
#include "config_int.h"
#include "embed_int.h"
#include "internal.h"
#include "llm_fixture.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static aiq__embedder *embedder(const char *model, const char *retries)
{
	aiq_config *cfg = NULL;
	char url[128];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/", server_port);
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.provider", "openai"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.model", model), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.dims", "8"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.retries", retries), AIQ_OK);
	/* The endpoint and key come from an llm preset: embed.preset reuses them. */
	char presets[256];
	snprintf(presets, sizeof presets, "local=model:x,base_url:%s,api_key_env:AIQ_TEST_KEY",
	         url);
	ck_assert_int_eq(aiq_config_set(cfg, "llm.presets", presets), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.preset", "local"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "llm.timeout_ms", "5000"), AIQ_OK);
	aiq__embedder *e = NULL;
	int rc = aiq__embedder_new(&e, cfg);
	ck_assert_msg(rc == AIQ_OK, "rc %d: %s", rc, aiq_error_last());
	aiq_config_free(cfg);
	return e;
}

static void expect_vector(const double *v, const char *text)
{
	double want[8], norm = 0;
	for (int i = 0; i < 8; i++) {
		want[i] = (i + 1) * (1 + (double)(strlen(text) % 3));
		norm += want[i] * want[i];
	}
	for (int i = 0; i < 8; i++)
		ck_assert_double_eq_tol(v[i], want[i] / sqrt(norm), 1e-12);
}

START_TEST(test_ok)
{
	aiq__embedder *e = embedder("embed-ok", "0");
	double v[8];
	const char text[] = "rain on the window";
	int rc = aiq__embedder_run(e, v, text, strlen(text));
	ck_assert_msg(rc == AIQ_OK, "rc %d: %s", rc, aiq_error_last());
	expect_vector(v, text);
	ck_assert_str_eq(aiq__embedder_model(e), "embed-ok");
	aiq__embedder_free(e);
}
END_TEST

START_TEST(test_ratelimit_retried)
{
	aiq__embedder *e = embedder("embed-ratelimit-once", "2");
	double v[8];
	const char text[] = "a rate limited text";
	int64_t t0 = now_ms();
	int rc = aiq__embedder_run(e, v, text, strlen(text));
	int64_t took = now_ms() - t0;
	ck_assert_msg(rc == AIQ_OK, "rc %d: %s", rc, aiq_error_last());
	expect_vector(v, text);
	ck_assert_int_eq(requests_for("embed-ratelimit-once"), 2);
	ck_assert_msg(took >= 900, "Retry-After: 1 was not honoured (%lld ms)", (long long)took);
	aiq__embedder_free(e);
}
END_TEST

START_TEST(test_ratelimit_without_retries)
{
	aiq__embedder *e = embedder("embed-ratelimit-once", "0");
	double v[8];
	const char text[] = "no retries allowed";
	ck_assert_int_eq(aiq__embedder_run(e, v, text, strlen(text)), AIQ_ELIMIT);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "HTTP 429"));
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "gave up after 1 attempts"));
	aiq__embedder_free(e);
}
END_TEST

START_TEST(test_error500_gives_up)
{
	aiq__embedder *e = embedder("embed-error500", "2");
	double v[8];
	ck_assert_int_eq(aiq__embedder_run(e, v, "x", 1), AIQ_ELIMIT);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "embedding model crashed"));
	ck_assert_int_eq(requests_for("embed-error500"), 3);
	aiq__embedder_free(e);
}
END_TEST

START_TEST(test_malformed_json)
{
	aiq__embedder *e = embedder("embed-malformed", "2");
	double v[8];
	ck_assert_int_eq(aiq__embedder_run(e, v, "x", 1), AIQ_EJSON);
	const char *m = aiq_error_last();
	ck_assert_msg(strstr(m, "is not JSON") && strstr(m, "/v1/embeddings"), "message: %s", m);
	ck_assert_int_eq(requests_for("embed-malformed"), 1); /* not retried */
	aiq__embedder_free(e);
}
END_TEST

START_TEST(test_wrong_size)
{
	aiq__embedder *e = embedder("embed-wrongsize", "2");
	double v[8];
	ck_assert_int_eq(aiq__embedder_run(e, v, "x", 1), AIQ_EPROTO);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "answered 5 dimensions, embed.dims is 8"));
	aiq__embedder_free(e);
}
END_TEST

START_TEST(test_unauthorized)
{
	aiq__embedder *e = embedder("embed-unauthorized", "2");
	double v[8];
	ck_assert_int_eq(aiq__embedder_run(e, v, "x", 1), AIQ_ERROR);
	const char *m = aiq_error_last();
	ck_assert_msg(strstr(m, "HTTP 401") && strstr(m, "embed.api_key"), "message: %s", m);
	ck_assert_ptr_null(strstr(m, API_KEY));
	ck_assert_int_eq(requests_for("embed-unauthorized"), 1);
	aiq__embedder_free(e);
}
END_TEST

START_TEST(test_unknown_preset)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.provider", "openai"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.preset", "nope"), AIQ_OK);
	aiq__embedder *e = NULL;
	ck_assert_int_eq(aiq__embedder_new(&e, cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "no preset named 'nope'"));
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	setenv("AIQ_TEST_KEY", API_KEY, 1);
	server_start();
	Suite *s = suite_create("embed_http");
	TCase *tc = tcase_create("client");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_ok);
	tcase_add_test(tc, test_ratelimit_retried);
	tcase_add_test(tc, test_ratelimit_without_retries);
	tcase_add_test(tc, test_error500_gives_up);
	tcase_add_test(tc, test_malformed_json);
	tcase_add_test(tc, test_wrong_size);
	tcase_add_test(tc, test_unauthorized);
	tcase_add_test(tc, test_unknown_preset);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	server_stop();
	return failed == 0 ? 0 : 1;
}
