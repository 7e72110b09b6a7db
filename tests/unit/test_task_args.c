/*
 * Typed argument accessors (aiq_task_arg_*, aiq_task_kwarg_*): every type,
 * missing arguments, wrong types, indexes out of range, the int64 limits,
 * UTF-8 strings holding NUL, and one round trip through a worker.
 */
#include "testutil.h"

#include "worker_int.h"

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A task as the worker builds one from a decoded message. */
static aiq_task *make_task(const char *args, const char *kwargs)
{
	aiq_task *t = calloc(1, sizeof *t);
	ck_assert_ptr_nonnull(t);
	json_error_t jerr;
	t->msg.id = strdup("t-1");
	t->msg.args = json_loads(args, JSON_ALLOW_NUL, &jerr);
	ck_assert_msg(t->msg.args != NULL, "args: %s", jerr.text);
	t->msg.kwargs = json_loads(kwargs, JSON_ALLOW_NUL, &jerr);
	ck_assert_msg(t->msg.kwargs != NULL, "kwargs: %s", jerr.text);
	return t;
}

static void assert_error(int rc, int code, const char *needle)
{
	ck_assert_int_eq(rc, code);
	ck_assert_msg(strstr(aiq_error_last(), needle) != NULL, "error '%s' lacks '%s'",
	              aiq_error_last(), needle);
}

START_TEST(test_every_type_positional)
{
	aiq_task *t = make_task("[\"text\", 42, 2.5, true, false, null, [1, {\"a\": 2}]]", "{}");
	ck_assert_int_eq(aiq_task_arg_count(t), 7);

	const char *s = NULL;
	size_t len = 99;
	ck_assert_int_eq(aiq_task_arg_str(&s, &len, t, 0), AIQ_OK);
	ck_assert_str_eq(s, "text");
	ck_assert_uint_eq(len, 4);
	ck_assert_int_eq(aiq_task_arg_str(&s, NULL, t, 0), AIQ_OK);
	ck_assert_str_eq(s, "text");

	int64_t i = 0;
	ck_assert_int_eq(aiq_task_arg_int(&i, t, 1), AIQ_OK);
	ck_assert_int_eq(i, 42);

	double d = 0;
	ck_assert_int_eq(aiq_task_arg_double(&d, t, 2), AIQ_OK);
	ck_assert_double_eq(d, 2.5);
	ck_assert_int_eq(aiq_task_arg_double(&d, t, 1), AIQ_OK); /* an integer converts */
	ck_assert_double_eq(d, 42.0);

	int b = -1;
	ck_assert_int_eq(aiq_task_arg_bool(&b, t, 3), AIQ_OK);
	ck_assert_int_eq(b, 1);
	ck_assert_int_eq(aiq_task_arg_bool(&b, t, 4), AIQ_OK);
	ck_assert_int_eq(b, 0);

	char *j = NULL;
	ck_assert_int_eq(aiq_task_arg_json(&j, t, 5), AIQ_OK);
	ck_assert_str_eq(j, "null");
	aiq_free(j);
	ck_assert_int_eq(aiq_task_arg_json(&j, t, 6), AIQ_OK);
	ck_assert_str_eq(j, "[1,{\"a\":2}]");
	aiq_free(j);
	ck_assert_int_eq(aiq_task_arg_json(&j, t, 0), AIQ_OK);
	ck_assert_str_eq(j, "\"text\"");
	aiq_free(j);
	aiq__task_free(t);
}
END_TEST

START_TEST(test_every_type_keyword)
{
	aiq_task *t = make_task(
	        "[]",
	        "{\"s\": \"v\", \"i\": -7, \"d\": 0.125, \"b\": true, \"o\": {\"k\": [true]}}");
	ck_assert_int_eq(aiq_task_arg_count(t), 0);
	const char *s = NULL;
	size_t len = 0;
	ck_assert_int_eq(aiq_task_kwarg_str(&s, &len, t, "s"), AIQ_OK);
	ck_assert_str_eq(s, "v");
	ck_assert_uint_eq(len, 1);
	int64_t i = 0;
	ck_assert_int_eq(aiq_task_kwarg_int(&i, t, "i"), AIQ_OK);
	ck_assert_int_eq(i, -7);
	double d = 0;
	ck_assert_int_eq(aiq_task_kwarg_double(&d, t, "d"), AIQ_OK);
	ck_assert_double_eq(d, 0.125);
	int b = 0;
	ck_assert_int_eq(aiq_task_kwarg_bool(&b, t, "b"), AIQ_OK);
	ck_assert_int_eq(b, 1);
	char *j = NULL;
	ck_assert_int_eq(aiq_task_kwarg_json(&j, t, "o"), AIQ_OK);
	ck_assert_str_eq(j, "{\"k\":[true]}");
	aiq_free(j);
	aiq__task_free(t);
}
END_TEST

START_TEST(test_missing_and_out_of_range)
{
	aiq_task *t = make_task("[1, 2]", "{\"x\": 1}");
	int64_t i = 5;
	assert_error(aiq_task_arg_int(&i, t, 2), AIQ_ENOTFOUND,
	             "no positional argument 2 (it has 2)");
	ck_assert_int_eq(i, 0);
	assert_error(aiq_task_arg_int(&i, t, -1), AIQ_ENOTFOUND, "no positional argument -1");
	assert_error(aiq_task_arg_int(&i, t, INT64_MAX), AIQ_ENOTFOUND, "no positional argument");
	assert_error(aiq_task_arg_int(&i, t, INT64_MIN), AIQ_ENOTFOUND, "no positional argument");
	i = 5;
	assert_error(aiq_task_kwarg_int(&i, t, "y"), AIQ_ENOTFOUND, "no keyword argument 'y'");
	ck_assert_int_eq(i, 0);
	const char *s = "x";
	size_t len = 3;
	assert_error(aiq_task_kwarg_str(&s, &len, t, "nope"), AIQ_ENOTFOUND, "task t-1");
	ck_assert_ptr_null(s);
	ck_assert_uint_eq(len, 0);
	char *j = (char *)"x";
	assert_error(aiq_task_arg_json(&j, t, 9), AIQ_ENOTFOUND, "no positional argument 9");
	ck_assert_ptr_null(j);
	double d = 1;
	assert_error(aiq_task_kwarg_double(&d, t, ""), AIQ_ENOTFOUND, "no keyword argument ''");
	ck_assert_double_eq(d, 0);
	int b = 1;
	assert_error(aiq_task_arg_bool(&b, t, 3), AIQ_ENOTFOUND, "no positional argument 3");
	ck_assert_int_eq(b, 0);
	aiq__task_free(t);
}
END_TEST

START_TEST(test_wrong_types)
{
	aiq_task *t = make_task("[\"5\", 5, 5.0, 1, null, [], {}]", "{\"flag\": \"true\"}");
	int64_t i = 9;
	assert_error(aiq_task_arg_int(&i, t, 0), AIQ_EINVAL,
	             "positional argument 0 is a string, not an integer");
	ck_assert_int_eq(i, 0);
	assert_error(aiq_task_arg_int(&i, t, 2), AIQ_EINVAL, "is a real number, not an integer");
	const char *s = "x";
	assert_error(aiq_task_arg_str(&s, NULL, t, 1), AIQ_EINVAL, "is an integer, not a string");
	ck_assert_ptr_null(s);
	assert_error(aiq_task_arg_str(&s, NULL, t, 4), AIQ_EINVAL, "is null, not a string");
	double d = 3;
	assert_error(aiq_task_arg_double(&d, t, 0), AIQ_EINVAL, "is a string, not a number");
	ck_assert_double_eq(d, 0);
	assert_error(aiq_task_arg_double(&d, t, 5), AIQ_EINVAL, "is an array, not a number");
	int b = 1;
	assert_error(aiq_task_arg_bool(&b, t, 3), AIQ_EINVAL, "is an integer, not a boolean");
	ck_assert_int_eq(b, 0);
	assert_error(aiq_task_arg_bool(&b, t, 6), AIQ_EINVAL, "is an object, not a boolean");
	assert_error(aiq_task_kwarg_bool(&b, t, "flag"), AIQ_EINVAL,
	             "keyword argument 'flag' is a string, not a boolean");
	aiq__task_free(t);
}
END_TEST

START_TEST(test_null_inputs)
{
	aiq_task *t = make_task("[1]", "{}");
	int64_t i = 0;
	assert_error(aiq_task_arg_int(&i, NULL, 0), AIQ_EINVAL, "task is NULL");
	assert_error(aiq_task_arg_int(NULL, t, 0), AIQ_EINVAL, "out is NULL");
	assert_error(aiq_task_kwarg_int(&i, t, NULL), AIQ_EINVAL, "name is NULL");
	assert_error(aiq_task_kwarg_json(NULL, t, "x"), AIQ_EINVAL, "out is NULL");
	assert_error(aiq_task_arg_str(NULL, NULL, t, 0), AIQ_EINVAL, "out is NULL");
	ck_assert_int_eq(aiq_task_arg_count(NULL), 0);
	aiq__task_free(t);
}
END_TEST

START_TEST(test_int64_limits)
{
	aiq_task *t =
	        make_task("[9223372036854775807, -9223372036854775808, 1e19, 9007199254740993]",
	                  "{\"big\": 9223372036854775807}");
	int64_t i = 0;
	ck_assert_int_eq(aiq_task_arg_int(&i, t, 0), AIQ_OK);
	ck_assert(i == INT64_MAX);
	ck_assert_int_eq(aiq_task_arg_int(&i, t, 1), AIQ_OK);
	ck_assert(i == INT64_MIN);
	/* Past int64: a real, refused rather than rounded or wrapped. */
	assert_error(aiq_task_arg_int(&i, t, 2), AIQ_EINVAL, "is a real number, not an integer");
	ck_assert_int_eq(aiq_task_arg_int(&i, t, 3), AIQ_OK); /* 2^53 + 1, exact */
	ck_assert(i == INT64_C(9007199254740993));
	ck_assert_int_eq(aiq_task_kwarg_int(&i, t, "big"), AIQ_OK);
	ck_assert(i == INT64_MAX);
	double d = 0;
	ck_assert_int_eq(aiq_task_arg_double(&d, t, 2), AIQ_OK);
	ck_assert_double_eq(d, 1e19);
	char *j = NULL;
	ck_assert_int_eq(aiq_task_arg_json(&j, t, 1), AIQ_OK);
	ck_assert_str_eq(j, "-9223372036854775808");
	aiq_free(j);
	aiq__task_free(t);
}
END_TEST

START_TEST(test_utf8_and_nul)
{
	/* "héllo\0wörld" and a 4-byte code point; keys in UTF-8 too. */
	aiq_task *t = make_task("[\"h\\u00e9llo\\u0000w\\u00f6rld\", \"\\ud83c\\udfb5\"]",
	                        "{\"r\\u00e9sum\\u00e9\": \"a\\u0000\", \"plain\": \"\\u044f\"}");
	const char *s = NULL;
	size_t len = 0;
	ck_assert_int_eq(aiq_task_arg_str(&s, &len, t, 0), AIQ_OK);
	ck_assert_uint_eq(len, 13);
	ck_assert_mem_eq(s, "h\xc3\xa9llo\0w\xc3\xb6rld", 14); /* NUL-terminated too */
	/* Without len the NUL would cut the text short: refused. */
	s = "x";
	assert_error(aiq_task_arg_str(&s, NULL, t, 0), AIQ_EINVAL,
	             "positional argument 0 holds a NUL byte");
	ck_assert_ptr_null(s);
	ck_assert_int_eq(aiq_task_arg_str(&s, &len, t, 1), AIQ_OK);
	ck_assert_uint_eq(len, 4);
	ck_assert_str_eq(s, "\xf0\x9f\x8e\xb5");
	ck_assert_int_eq(aiq_task_kwarg_str(&s, &len, t, "r\xc3\xa9sum\xc3\xa9"), AIQ_OK);
	ck_assert_uint_eq(len, 2);
	ck_assert_mem_eq(s, "a\0", 3);
	assert_error(aiq_task_kwarg_str(&s, NULL, t, "r\xc3\xa9sum\xc3\xa9"), AIQ_EINVAL,
	             "keyword argument 'r\xc3\xa9sum\xc3\xa9' holds a NUL byte");
	ck_assert_int_eq(aiq_task_kwarg_str(&s, NULL, t, "plain"), AIQ_OK);
	ck_assert_str_eq(s, "\xd1\x8f");
	char *j = NULL;
	ck_assert_int_eq(aiq_task_arg_json(&j, t, 0), AIQ_OK);
	ck_assert_str_eq(j, "\"h\xc3\xa9llo\\u0000w\xc3\xb6rld\"");
	aiq_free(j);
	aiq__task_free(t);
}
END_TEST

/* ---- through a worker: the arguments a real message carries ---------- */

struct seen {
	int rc[6];
	int64_t n;
	double scale;
	int loud;
	size_t name_len;
	char name[32];
};

static void greet(aiq_task *t, void *userdata)
{
	struct seen *seen = userdata;
	const char *name = NULL;
	seen->rc[0] = aiq_task_arg_str(&name, &seen->name_len, t, 0);
	if (name && seen->name_len < sizeof seen->name)
		memcpy(seen->name, name, seen->name_len);
	seen->rc[1] = aiq_task_arg_int(&seen->n, t, 1);
	seen->rc[2] = aiq_task_kwarg_double(&seen->scale, t, "scale");
	seen->rc[3] = aiq_task_kwarg_bool(&seen->loud, t, "loud");
	int64_t unused = 0;
	seen->rc[4] = aiq_task_kwarg_int(&unused, t, "absent");
	if (seen->rc[4] != AIQ_OK) {
		aiq_task_fail(t, "TypeError", aiq_error_last(), "builtins");
		return;
	}
	aiq_task_succeed(t, "1");
}

static void *run_worker(void *w)
{
	aiq_worker_run(w);
	return NULL;
}

START_TEST(test_through_worker)
{
	aiq_config *cfg = NULL;
	aiq_worker *w = NULL;
	aiq_client *c = NULL;
	struct seen seen;
	memset(&seen, 0, sizeof seen);
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://task_args"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://task_args"), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "tasks.greet", greet, &seen, NULL), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run_worker, w), 0);

	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "tasks.greet",
	                                    "[\"Zo\\u00eb\\u0000!\", -9223372036854775807]",
	                                    "{\"scale\": 3, \"loud\": false}", NULL),
	                 AIQ_OK);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, c, id, 10000), AIQ_OK);
	aiq_worker_stop(w);
	pthread_join(th, NULL);

	ck_assert_int_eq(seen.rc[0], AIQ_OK);
	ck_assert_uint_eq(seen.name_len, 6);
	ck_assert_mem_eq(seen.name, "Zo\xc3\xab\0!", 6);
	ck_assert_int_eq(seen.rc[1], AIQ_OK);
	ck_assert(seen.n == -INT64_MAX);
	ck_assert_int_eq(seen.rc[2], AIQ_OK);
	ck_assert_double_eq(seen.scale, 3.0);
	ck_assert_int_eq(seen.rc[3], AIQ_OK);
	ck_assert_int_eq(seen.loud, 0);
	ck_assert_int_eq(seen.rc[4], AIQ_ENOTFOUND);
	/* The handler's precise message reaches the client as the failure. */
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "TypeError");
	ck_assert_ptr_nonnull(strstr(aiq_result_error_message(r), "no keyword argument 'absent'"));

	aiq_result_free(r);
	aiq_free(id);
	aiq_client_free(c);
	aiq_worker_free(w);
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("task_args");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_every_type_positional);
	tcase_add_test(tc, test_every_type_keyword);
	tcase_add_test(tc, test_missing_and_out_of_range);
	tcase_add_test(tc, test_wrong_types);
	tcase_add_test(tc, test_null_inputs);
	tcase_add_test(tc, test_int64_limits);
	tcase_add_test(tc, test_utf8_and_nul);
	tcase_add_test(tc, test_through_worker);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
