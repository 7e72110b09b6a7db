/*
 * Celery's result meta JSON, checked against what a Celery 5.2 worker stored
 * in Redis and sent over rpc:// (tests/data/celery_result_metas.json).
 */
#include "testutil.h"

#include "message.h"
#include "result_int.h"

#include <stdlib.h>
#include <string.h>

static json_t *metas;

static void load_vectors(void)
{
	size_t len;
	char *text = aiq_test_read_data("celery_result_metas.json", &len);
	json_error_t jerr;
	metas = json_loadb(text, len, 0, &jerr);
	ck_assert_msg(metas != NULL, "test vectors: %s", jerr.text);
	free(text);
}

static void free_vectors(void)
{
	json_decref(metas);
	metas = NULL;
}

static const json_t *meta_vector(const char *name)
{
	size_t i;
	json_t *v;
	json_array_foreach(metas, i, v)
	{
		if (strcmp(json_string_value(json_object_get(v, "name")), name) == 0)
			return v;
	}
	ck_abort_msg("no meta named %s", name);
	return NULL;
}

static const char *raw_meta(const char *name)
{
	return json_string_value(json_object_get(meta_vector(name), "raw"));
}

static aiq_result *parse(const char *name)
{
	const char *raw = raw_meta(name);
	aiq_result *r = NULL;
	int rc = aiq__result_from_meta(&r, NULL, raw, strlen(raw));
	ck_assert_msg(rc == AIQ_OK, "%s: %s", name, aiq_error_last());
	return r;
}

static void assert_str_or_null(const char *got, const char *want)
{
	if (want == NULL)
		ck_assert_ptr_null(got);
	else
		ck_assert_str_eq(got, want);
}

START_TEST(test_parse_every_state)
{
	size_t i, seen[8] = {0};
	json_t *v;
	json_array_foreach(metas, i, v)
	{
		const char *raw = json_string_value(json_object_get(v, "raw"));
		const char *id = json_string_value(json_object_get(v, "task_id"));
		json_t *parsed = json_loads(raw, 0, NULL);
		const char *status = json_string_value(json_object_get(parsed, "status"));
		aiq_result *r = NULL;
		ck_assert_msg(aiq__result_from_meta(&r, NULL, raw, strlen(raw)) == AIQ_OK, "%s: %s",
		              json_string_value(json_object_get(v, "name")), aiq_error_last());
		ck_assert_str_eq(aiq_result_task_id(r), id);
		ck_assert_str_eq(aiq_state_name(aiq_result_state(r)), status);
		seen[aiq_result_state(r)]++;
		const json_t *date_done = json_object_get(parsed, "date_done");
		assert_str_or_null(aiq_result_date_done(r), json_string_value(date_done));
		const json_t *tb = json_object_get(parsed, "traceback");
		assert_str_or_null(aiq_result_traceback(r), json_string_value(tb));
		const json_t *result = json_object_get(parsed, "result");
		if (strcmp(status, "FAILURE") == 0 || strcmp(status, "RETRY") == 0) {
			ck_assert_str_eq(aiq_result_error_type(r),
			                 json_string_value(json_object_get(result, "exc_type")));
			ck_assert_str_eq(aiq_result_error_module(r),
			                 json_string_value(json_object_get(result, "exc_module")));
			ck_assert_str_eq(aiq_result_error_message(r),
			                 json_string_value(json_array_get(
			                         json_object_get(result, "exc_message"), 0)));
		} else {
			ck_assert_ptr_null(aiq_result_error_type(r));
			json_t *back = json_loads(aiq_result_json(r), JSON_DECODE_ANY, NULL);
			ck_assert_msg(json_equal(back, (json_t *)(uintptr_t)result), "%s",
			              aiq_result_json(r));
			json_decref(back);
		}
		aiq_result_free(r);
		json_decref(parsed);

		/* The key passed in wins over the meta's task_id. */
		ck_assert_int_eq(aiq__result_from_meta(&r, "other-id", raw, strlen(raw)), AIQ_OK);
		ck_assert_str_eq(aiq_result_task_id(r), "other-id");
		aiq_result_free(r);
	}
	ck_assert_uint_eq(i, 24);
	ck_assert_uint_gt(seen[AIQ_STATE_SUCCESS], 0);
	ck_assert_uint_gt(seen[AIQ_STATE_FAILURE], 0);
	ck_assert_uint_gt(seen[AIQ_STATE_RETRY], 0);
	ck_assert_uint_gt(seen[AIQ_STATE_STARTED], 0);
	ck_assert_uint_gt(seen[AIQ_STATE_PROGRESS], 0);
}
END_TEST

START_TEST(test_parse_details)
{
	aiq_result *r = parse("success_0");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r),
	                 "{\"track_id\": 42, \"word_count\": 5, \"char_count\": 21, \"upper\": "
	                 "\"I LOVE THIS RAP VERSE\", \"sentiment\": \"positive\"}");
	ck_assert_str_eq(aiq_result_date_done(r), "2026-11-29T01:20:16.189084");
	ck_assert_ptr_null(aiq_result_traceback(r));
	aiq_result_free(r);

	r = parse("failure_0");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "AnalysisError");
	ck_assert_str_eq(aiq_result_error_message(r), "track 13: model exploded");
	ck_assert_str_eq(aiq_result_error_module(r), "tasks");
	ck_assert_int_eq(strncmp(aiq_result_traceback(r), "Traceback (most recent call last):", 34),
	                 0);
	ck_assert_ptr_nonnull(
	        strstr(aiq_result_traceback(r), "tasks.AnalysisError: track 13: model exploded\n"));
	aiq_result_free(r);

	r = parse("value_error_0");
	ck_assert_str_eq(aiq_result_error_type(r), "ValueError");
	ck_assert_str_eq(aiq_result_error_message(r), "bad value 'x'");
	ck_assert_str_eq(aiq_result_error_module(r), "builtins");
	aiq_result_free(r);

	r = parse("retry_then_fail_0");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_STARTED);
	ck_assert_str_eq(aiq_result_json(r), "{\"pid\": 9628, \"hostname\": \"w1@vm\"}");
	ck_assert_ptr_null(aiq_result_date_done(r));
	aiq_result_free(r);

	r = parse("retry_then_fail_2");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_RETRY);
	ck_assert_str_eq(aiq_result_error_type(r), "ConnectionError");
	ck_assert_str_eq(aiq_result_error_message(r), "LLM endpoint unavailable (attempt 1)");
	ck_assert_str_eq(r->parent_id, "b4f92ffb-ebfd-4317-b269-27e680d84a69");
	ck_assert_ptr_null(aiq_result_date_done(r));
	aiq_result_free(r);

	r = parse("progress_1");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PROGRESS);
	ck_assert_str_eq(aiq_result_json(r), "{\"track_id\": 77, \"current\": 2, \"total\": 3}");
	aiq_result_free(r);

	r = parse("none_result_0");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "null");
	aiq_result_free(r);

	r = parse("not_registered");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "NotRegistered");
	ck_assert_str_eq(aiq_result_error_message(r), "tasks.does_not_exist");
	ck_assert_str_eq(aiq_result_error_module(r), "celery.exceptions");
	ck_assert_ptr_null(aiq_result_traceback(r));
	aiq_result_free(r);

	/* rpc:// bodies: task_id first, no date_done. */
	r = parse("rpc_3_failure");
	ck_assert_str_eq(aiq_result_task_id(r), "048b88bc-9a7c-4db0-9d73-460f8c60b031");
	ck_assert_str_eq(aiq_result_error_message(r), "track 2: model exploded");
	ck_assert_ptr_null(aiq_result_date_done(r));
	aiq_result_free(r);
}
END_TEST

START_TEST(test_meta_roundtrip_exact)
{
	/* Parse and write back: byte for byte what Celery stored, for every
	 * Redis meta (RETRY's children list is not modelled; skip those). */
	size_t i, exact = 0;
	json_t *v;
	json_array_foreach(metas, i, v)
	{
		const char *raw = json_string_value(json_object_get(v, "raw"));
		if (strcmp(json_string_value(json_object_get(v, "backend")), "redis") != 0 ||
		    strstr(raw, "\"children\": []") == NULL)
			continue;
		aiq_result *r = NULL;
		ck_assert_int_eq(aiq__result_from_meta(&r, NULL, raw, strlen(raw)), AIQ_OK);
		char *out;
		ck_assert_int_eq(aiq__result_to_meta(&out, r), AIQ_OK);
		ck_assert_str_eq(out, raw);
		ck_assert_str_eq(aiq_result_meta_json(r), raw);
		free(out);
		aiq_result_free(r);
		exact++;
	}
	ck_assert_uint_eq(exact, 13);
}
END_TEST

START_TEST(test_meta_built_from_fields)
{
	/* The same bytes from a record built by hand. */
	aiq_result *r;
	ck_assert_int_eq(
	        aiq__result_new(&r, "127d2278-2705-40fe-9987-01ad4d69c905", AIQ_STATE_SUCCESS),
	        AIQ_OK);
	ck_assert_int_eq(aiq__result_set_json(r, "{\"track_id\":42,\"word_count\":5,\"char_count\":"
	                                         "21,\"upper\":\"I LOVE THIS RAP VERSE\","
	                                         "\"sentiment\":\"positive\"}"),
	                 AIQ_OK);
	r->date_done = strdup("2026-11-29T01:20:16.189084");
	char *out;
	ck_assert_int_eq(aiq__result_to_meta(&out, r), AIQ_OK);
	ck_assert_str_eq(out, raw_meta("success_0"));
	free(out);
	aiq_result_free(r);

	ck_assert_int_eq(
	        aiq__result_new(&r, "9b6bc4c6-500e-4a0c-b597-523b47aab6ce", AIQ_STATE_FAILURE),
	        AIQ_OK);
	ck_assert_int_eq(aiq__result_set_error(r, "NotRegistered", "tasks.does_not_exist",
	                                       "celery.exceptions", NULL),
	                 AIQ_OK);
	r->date_done = strdup("2026-11-29T01:20:31.134034");
	ck_assert_int_eq(aiq__result_to_meta(&out, r), AIQ_OK);
	ck_assert_str_eq(out, raw_meta("not_registered"));
	free(out);
	aiq_result_free(r);

	/* STARTED with a parent: parent_id sits between date_done and task_id. */
	ck_assert_int_eq(
	        aiq__result_new(&r, "b4f92ffb-ebfd-4317-b269-27e680d84a69", AIQ_STATE_STARTED),
	        AIQ_OK);
	ck_assert_int_eq(aiq__result_set_json(r, "{\"pid\": 9628, \"hostname\": \"w1@vm\"}"),
	                 AIQ_OK);
	r->parent_id = strdup("b4f92ffb-ebfd-4317-b269-27e680d84a69");
	ck_assert_int_eq(aiq__result_to_meta(&out, r), AIQ_OK);
	ck_assert_str_eq(out, raw_meta("retry_then_fail_3"));
	free(out);
	aiq_result_free(r);
}
END_TEST

START_TEST(test_meta_revoked_and_errors)
{
	aiq_result *r;
	char *out;
	ck_assert_int_eq(aiq__result_new(&r, "t1", AIQ_STATE_REVOKED), AIQ_OK);
	r->date_done = strdup("2026-01-01T00:00:00.000000");
	ck_assert_int_eq(aiq__result_to_meta(&out, r), AIQ_OK);
	ck_assert_str_eq(out,
	                 "{\"status\": \"REVOKED\", \"result\": {\"exc_type\": "
	                 "\"TaskRevokedError\", \"exc_message\": [\"revoked\"], \"exc_module\": "
	                 "\"celery.exceptions\"}, \"traceback\": null, \"children\": [], "
	                 "\"date_done\": \"2026-01-01T00:00:00.000000\", \"task_id\": \"t1\"}");
	free(out);
	ck_assert_int_eq(
	        aiq__result_set_error(r, "TaskRevokedError", "expired", "celery.exceptions", NULL),
	        AIQ_OK);
	ck_assert_int_eq(aiq__result_to_meta(&out, r), AIQ_OK);
	ck_assert_ptr_nonnull(strstr(out, "\"exc_message\": [\"expired\"]"));

	/* And back. */
	aiq_result *b;
	ck_assert_int_eq(aiq__result_from_meta(&b, NULL, out, strlen(out)), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(b), AIQ_STATE_REVOKED);
	ck_assert_str_eq(aiq_result_error_type(b), "TaskRevokedError");
	ck_assert_str_eq(aiq_result_error_message(b), "expired");
	aiq_result_free(b);
	free(out);
	aiq_result_free(r);

	/* RETRY with an error and a traceback; messages with quotes and newlines. */
	ck_assert_int_eq(aiq__result_new(&r, "t2", AIQ_STATE_RETRY), AIQ_OK);
	ck_assert_int_eq(aiq__result_set_error(r, "ConnectionError", "say \"hi\"\n", NULL, "tb\n"),
	                 AIQ_OK);
	ck_assert_int_eq(aiq__result_to_meta(&out, r), AIQ_OK);
	ck_assert_str_eq(out, "{\"status\": \"RETRY\", \"result\": {\"exc_type\": "
	                      "\"ConnectionError\", \"exc_message\": [\"say \\\"hi\\\"\\n\"], "
	                      "\"exc_module\": \"builtins\"}, \"traceback\": \"tb\\n\", "
	                      "\"children\": [], \"date_done\": null, \"task_id\": \"t2\"}");
	free(out);
	aiq_result_free(r);
}
END_TEST

START_TEST(test_meta_lenient_parse)
{
	static const struct {
		const char *json;
		int state;
		const char *result;
		const char *message;
	} cases[] = {
	        /* A custom update_state() name is progress. */
	        {"{\"status\": \"ANALYZING\", \"result\": {\"step\": 2}}", AIQ_STATE_PROGRESS,
	         "{\"step\": 2}", NULL},
	        /* Missing keys. */
	        {"{\"status\": \"SUCCESS\"}", AIQ_STATE_SUCCESS, "null", NULL},
	        {"{\"status\": \"PENDING\", \"result\": null}", AIQ_STATE_PENDING, "null", NULL},
	        /* exc_message shapes. */
	        {"{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"E\", \"exc_message\": "
	         "[42, "
	         "\"x\"]}}",
	         AIQ_STATE_FAILURE, "null", "[42, \"x\"]"},
	        {"{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"E\", \"exc_message\": "
	         "\"plain\"}}",
	         AIQ_STATE_FAILURE, "null", "plain"},
	        {"{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"E\", \"exc_message\": "
	         "[]}}",
	         AIQ_STATE_FAILURE, "null", ""},
	        {"{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"E\"}}", AIQ_STATE_FAILURE,
	         "null", ""},
	        {"{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"E\", \"exc_message\": "
	         "[\"first\", \"second\"]}}",
	         AIQ_STATE_FAILURE, "null", "first"},
	        /* A failure whose result is not an exception dict keeps the value. */
	        {"{\"status\": \"FAILURE\", \"result\": \"boom\"}", AIQ_STATE_FAILURE, "\"boom\"",
	         NULL},
	        {"{\"status\": \"SUCCESS\", \"result\": [1.5, \"\\u00e9\", {\"a\": null}]}",
	         AIQ_STATE_SUCCESS, "[1.5, \"\xc3\xa9\", {\"a\": null}]", NULL},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		aiq_result *r = NULL;
		ck_assert_msg(aiq__result_from_meta(&r, "id", cases[i].json,
		                                    strlen(cases[i].json)) == AIQ_OK,
		              "case %zu: %s", i, aiq_error_last());
		ck_assert_int_eq(aiq_result_state(r), cases[i].state);
		ck_assert_str_eq(aiq_result_json(r), cases[i].result);
		assert_str_or_null(aiq_result_error_message(r), cases[i].message);
		aiq_result_free(r);
	}
}
END_TEST

START_TEST(test_meta_rejects)
{
	static const struct {
		const char *json;
		size_t len;
		const char *needle;
	} cases[] = {
	        {"", 0, "result meta is empty"},
	        {"not json", 0, "result meta is not valid JSON"},
	        {"{\"status\": ", 0, "result meta is not valid JSON"},
	        {"[]", 0, "result meta must be a JSON object, got array"},
	        {"\"SUCCESS\"", 0, "result meta must be a JSON object, got string"},
	        {"{\"result\": 1, \"task_id\": \"x\"}", 0, "result meta has no 'status'"},
	        {"{\"status\": 5, \"task_id\": \"x\"}", 0,
	         "result meta 'status' must be a string, got integer"},
	        {"{\"status\": \"SUCCESS\", \"traceback\": 5, \"task_id\": \"x\"}", 0,
	         "result meta 'traceback' must be a string, got integer"},
	        {"{\"status\": \"SUCCESS\", \"date_done\": [], \"task_id\": \"x\"}", 0,
	         "result meta 'date_done' must be a string, got array"},
	        {"{\"status\": \"SUCCESS\", \"task_id\": 7}", 0,
	         "result meta 'task_id' must be a string, got integer"},
	        {"{\"status\": \"SUCCESS\"}", 0, "result meta has no 'task_id'"},
	        {"{\"status\": \"SUCCESS\", \"task_id\": \"x\"}\0junk", 40,
	         "result meta is not valid JSON"},
	        {"\xff\xfe", 0, "result meta is not valid JSON"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		aiq_result *r = (aiq_result *)(uintptr_t)1;
		size_t len = cases[i].len ? cases[i].len : strlen(cases[i].json);
		ck_assert_msg(aiq__result_from_meta(&r, NULL, cases[i].json, len) == AIQ_EPROTO,
		              "case %zu accepted", i);
		ck_assert_msg(strstr(aiq_error_last(), cases[i].needle) != NULL,
		              "case %zu: '%s' lacks '%s'", i, aiq_error_last(), cases[i].needle);
		ck_assert_ptr_null(r);
	}
	aiq_result *r;
	ck_assert_int_eq(aiq__result_from_meta(&r, "x", NULL, 5), AIQ_EPROTO);
	char *out;
	ck_assert_int_eq(aiq__result_to_meta(&out, NULL), AIQ_EINVAL);
}
END_TEST

static Suite *result_suite(void)
{
	Suite *s = suite_create("result");
	TCase *tc = tcase_create("meta");
	tcase_add_checked_fixture(tc, load_vectors, free_vectors);
	tcase_add_test(tc, test_parse_every_state);
	tcase_add_test(tc, test_parse_details);
	tcase_add_test(tc, test_meta_roundtrip_exact);
	tcase_add_test(tc, test_meta_built_from_fields);
	tcase_add_test(tc, test_meta_revoked_and_errors);
	tcase_add_test(tc, test_meta_lenient_parse);
	tcase_add_test(tc, test_meta_rejects);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return aiq_test_run(result_suite());
}
