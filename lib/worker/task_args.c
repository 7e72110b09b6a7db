/*
 * Typed access to one argument of a task, so a handler needs no JSON
 * library. Reads the arguments the message decoder already parsed
 * (t->msg.args, t->msg.kwargs): no second parse and no per-task cache.
 */
#include "internal.h"
#include "worker_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Which argument a call asked for, for the error messages. */
struct where {
	const aiq_task *t;
	int64_t index;    /* positional, when name is NULL */
	const char *name; /* keyword */
};

static const char *task_id(const aiq_task *t)
{
	return t->msg.id ? t->msg.id : "?";
}

/* "a string", "an integer", ... as the messages say them. */
static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a real number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	case JSON_NULL: return "null";
	}
	return "a value of unknown type";
}

static int wrong_type(const struct where *at, const json_t *v, const char *wanted)
{
	if (at->name)
		return aiq__err(AIQ_EINVAL, "task %s: keyword argument '%s' is %s, not %s",
		                task_id(at->t), at->name, json_kind(v), wanted);
	return aiq__err(AIQ_EINVAL, "task %s: positional argument %lld is %s, not %s",
	                task_id(at->t), (long long)at->index, json_kind(v), wanted);
}

/* The value asked for, or an error naming what is missing. */
static int lookup(const json_t **out, const struct where *at)
{
	const aiq_task *t = at->t;
	if (at->name == NULL) {
		size_t n = json_is_array(t->msg.args) ? json_array_size(t->msg.args) : 0;
		if (at->index < 0 || (uint64_t)at->index >= n)
			return aiq__err(AIQ_ENOTFOUND,
			                "task %s: no positional argument %lld (it has %zu)",
			                task_id(t), (long long)at->index, n);
		*out = json_array_get(t->msg.args, (size_t)at->index);
		return AIQ_OK;
	}
	const json_t *v =
	        json_is_object(t->msg.kwargs) ? json_object_get(t->msg.kwargs, at->name) : NULL;
	if (v == NULL)
		return aiq__err(AIQ_ENOTFOUND, "task %s: no keyword argument '%s'", task_id(t),
		                at->name);
	*out = v;
	return AIQ_OK;
}

/* NULL checks shared by every accessor; `out` is already cleared. */
static int check_call(const aiq_task *t, const void *out, bool keyword, const char *name)
{
	if (t == NULL)
		return aiq__err(AIQ_EINVAL, "task is NULL");
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	if (keyword && name == NULL)
		return aiq__err(AIQ_EINVAL, "task %s: keyword argument name is NULL", task_id(t));
	return AIQ_OK;
}

static int get_str(const char **out, size_t *len, const struct where *at)
{
	const json_t *v = NULL;
	int rc = lookup(&v, at);
	if (rc != AIQ_OK)
		return rc;
	if (!json_is_string(v))
		return wrong_type(at, v, "a string");
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	if (len == NULL && strlen(s) != n) {
		if (at->name)
			return aiq__err(AIQ_EINVAL,
			                "task %s: keyword argument '%s' holds a NUL byte; "
			                "pass a length pointer to read it",
			                task_id(at->t), at->name);
		return aiq__err(AIQ_EINVAL,
		                "task %s: positional argument %lld holds a NUL byte; "
		                "pass a length pointer to read it",
		                task_id(at->t), (long long)at->index);
	}
	*out = s;
	if (len)
		*len = n;
	return AIQ_OK;
}

static int get_int(int64_t *out, const struct where *at)
{
	const json_t *v = NULL;
	int rc = lookup(&v, at);
	if (rc != AIQ_OK)
		return rc;
	if (!json_is_integer(v))
		return wrong_type(at, v, "an integer");
	*out = (int64_t)json_integer_value(v);
	return AIQ_OK;
}

static int get_double(double *out, const struct where *at)
{
	const json_t *v = NULL;
	int rc = lookup(&v, at);
	if (rc != AIQ_OK)
		return rc;
	if (!json_is_number(v))
		return wrong_type(at, v, "a number");
	*out = json_number_value(v);
	return AIQ_OK;
}

static int get_bool(int *out, const struct where *at)
{
	const json_t *v = NULL;
	int rc = lookup(&v, at);
	if (rc != AIQ_OK)
		return rc;
	if (!json_is_boolean(v))
		return wrong_type(at, v, "a boolean");
	*out = json_is_true(v) ? 1 : 0;
	return AIQ_OK;
}

static int get_json(char **out, const struct where *at)
{
	const json_t *v = NULL;
	int rc = lookup(&v, at);
	if (rc != AIQ_OK)
		return rc;
	char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	/* aiq_free() is free(); copy in case jansson has its own allocator. */
	char *copy = text ? aiq__strdup(text) : NULL;
	free(text);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "task %s: out of memory", task_id(at->t));
	*out = copy;
	return AIQ_OK;
}

AIQ_API int64_t aiq_task_arg_count(const aiq_task *t)
{
	if (t == NULL || !json_is_array(t->msg.args))
		return 0;
	return (int64_t)json_array_size(t->msg.args);
}

AIQ_API int aiq_task_arg_str(const char **out, size_t *len, const aiq_task *t, int64_t index)
{
	if (out)
		*out = NULL;
	if (len)
		*len = 0;
	int rc = check_call(t, out, false, NULL);
	struct where at = {t, index, NULL};
	return rc != AIQ_OK ? rc : get_str(out, len, &at);
}

AIQ_API int aiq_task_arg_int(int64_t *out, const aiq_task *t, int64_t index)
{
	if (out)
		*out = 0;
	int rc = check_call(t, out, false, NULL);
	struct where at = {t, index, NULL};
	return rc != AIQ_OK ? rc : get_int(out, &at);
}

AIQ_API int aiq_task_arg_double(double *out, const aiq_task *t, int64_t index)
{
	if (out)
		*out = 0;
	int rc = check_call(t, out, false, NULL);
	struct where at = {t, index, NULL};
	return rc != AIQ_OK ? rc : get_double(out, &at);
}

AIQ_API int aiq_task_arg_bool(int *out, const aiq_task *t, int64_t index)
{
	if (out)
		*out = 0;
	int rc = check_call(t, out, false, NULL);
	struct where at = {t, index, NULL};
	return rc != AIQ_OK ? rc : get_bool(out, &at);
}

AIQ_API int aiq_task_arg_json(char **out, const aiq_task *t, int64_t index)
{
	if (out)
		*out = NULL;
	int rc = check_call(t, out, false, NULL);
	struct where at = {t, index, NULL};
	return rc != AIQ_OK ? rc : get_json(out, &at);
}

AIQ_API int aiq_task_kwarg_str(const char **out, size_t *len, const aiq_task *t, const char *name)
{
	if (out)
		*out = NULL;
	if (len)
		*len = 0;
	int rc = check_call(t, out, true, name);
	struct where at = {t, 0, name};
	return rc != AIQ_OK ? rc : get_str(out, len, &at);
}

AIQ_API int aiq_task_kwarg_int(int64_t *out, const aiq_task *t, const char *name)
{
	if (out)
		*out = 0;
	int rc = check_call(t, out, true, name);
	struct where at = {t, 0, name};
	return rc != AIQ_OK ? rc : get_int(out, &at);
}

AIQ_API int aiq_task_kwarg_double(double *out, const aiq_task *t, const char *name)
{
	if (out)
		*out = 0;
	int rc = check_call(t, out, true, name);
	struct where at = {t, 0, name};
	return rc != AIQ_OK ? rc : get_double(out, &at);
}

AIQ_API int aiq_task_kwarg_bool(int *out, const aiq_task *t, const char *name)
{
	if (out)
		*out = 0;
	int rc = check_call(t, out, true, name);
	struct where at = {t, 0, name};
	return rc != AIQ_OK ? rc : get_bool(out, &at);
}

AIQ_API int aiq_task_kwarg_json(char **out, const aiq_task *t, const char *name)
{
	if (out)
		*out = NULL;
	int rc = check_call(t, out, true, name);
	struct where at = {t, 0, name};
	return rc != AIQ_OK ? rc : get_json(out, &at);
}
