/*
 * Celery's result meta JSON, as its Redis result backend stores and publishes
 * it: {"status", "result", "traceback", "children", "date_done",
 * ["parent_id"], "task_id"} with Python's separators. Errors travel as an
 * exception dict {"exc_type", "exc_message": [args...], "exc_module"} that a
 * Python client turns back into an exception.
 */
#include "message.h"
#include "json_load.h"
#include "result_int.h"

#include <stdlib.h>
#include <string.h>

#define NSTATES 8 /* AIQ_STATE_PENDING .. AIQ_STATE_REVOKED */

static bool is_error_state(int state)
{
	return state == AIQ_STATE_FAILURE || state == AIQ_STATE_RETRY || state == AIQ_STATE_REVOKED;
}

static json_t *string_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *exception_dict(const char *type, const char *message, const char *module)
{
	return json_pack("{s:s, s:[s], s:s}", "exc_type", type, "exc_message", message,
	                 "exc_module", module);
}

static int result_value(json_t **out, const aiq_result *r)
{
	*out = NULL;
	bool raw = !is_error_state(r->state) ||
	           (r->exc_type == NULL && r->result_json && strcmp(r->result_json, "null") != 0 &&
	            r->state != AIQ_STATE_REVOKED);
	if (raw) {
		json_error_t jerr;
		*out = json_loads(r->result_json ? r->result_json : "null",
		                  JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
		if (*out == NULL)
			return aiq__err(AIQ_EINVAL, "result of task %s is not valid JSON: %s",
			                r->task_id, jerr.text);
		return AIQ_OK;
	}
	if (r->state == AIQ_STATE_REVOKED && r->exc_type == NULL)
		*out = exception_dict("TaskRevokedError",
		                      r->exc_message ? r->exc_message : "revoked",
		                      "celery.exceptions");
	else
		*out = exception_dict(r->exc_type ? r->exc_type : "Exception",
		                      r->exc_message ? r->exc_message : "",
		                      r->exc_module ? r->exc_module : "builtins");
	return *out ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory encoding a result");
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
	return v == NULL ? -1 : json_object_set_new(obj, key, v);
}

int aiq__result_to_meta(char **out, const aiq_result *r)
{
	*out = NULL;
	if (r == NULL || r->task_id == NULL)
		return aiq__err(AIQ_EINVAL, "result has no task id");
	if (r->state < 0 || r->state >= NSTATES)
		return aiq__err(AIQ_EINVAL, "result has an unknown state %d", r->state);
	json_t *result;
	int rc = result_value(&result, r);
	if (rc != AIQ_OK)
		return rc;
	json_t *meta = json_object();
	if (meta == NULL || set_new(meta, "status", json_string(aiq_state_name(r->state))) ||
	    set_new(meta, "result", result) ||
	    set_new(meta, "traceback", string_or_null(r->traceback)) ||
	    set_new(meta, "children", json_array()) ||
	    set_new(meta, "date_done", string_or_null(r->date_done)) ||
	    (r->parent_id && set_new(meta, "parent_id", json_string(r->parent_id))) ||
	    set_new(meta, "task_id", json_string(r->task_id))) {
		json_decref(meta);
		return aiq__err(AIQ_ENOMEM, "out of memory encoding a result");
	}
	*out = aiq__json_dumps_py(meta);
	json_decref(meta);
	return *out ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory encoding a result");
}

static int state_from_status(const char *status)
{
	for (int i = 0; i < NSTATES; i++)
		if (strcmp(status, aiq_state_name(i)) == 0)
			return i;
	/* update_state(state="ANYTHING") is how Celery tasks report progress. */
	return AIQ_STATE_PROGRESS;
}

/* Optional string member: NULL when absent or null, an error when of another type. */
static int opt_string(const char **dst, const json_t *meta, const char *key)
{
	const json_t *v = json_object_get(meta, key);
	*dst = NULL;
	if (v == NULL || json_is_null(v))
		return AIQ_OK;
	if (!json_is_string(v))
		return aiq__err(AIQ_EPROTO, "result meta '%s' must be a string, got %s", key,
		                aiq__json_type_name(v));
	*dst = json_string_value(v);
	return AIQ_OK;
}

static int dup_into(char **dst, const char *s)
{
	if (s == NULL)
		return AIQ_OK;
	char *copy = aiq__strdup(s);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a result");
	free(*dst);
	*dst = copy;
	return AIQ_OK;
}

/* The exception's args: Celery sends a list; show its first element when it
 * is text, the whole list as JSON otherwise. */
static char *exception_message(const json_t *v)
{
	if (v == NULL || json_is_null(v))
		return aiq__strdup("");
	if (json_is_string(v))
		return aiq__strdup(json_string_value(v));
	if (json_is_array(v) && json_array_size(v) == 0)
		return aiq__strdup("");
	if (json_is_array(v) && json_is_string(json_array_get(v, 0)))
		return aiq__strdup(json_string_value(json_array_get(v, 0)));
	return aiq__json_dumps_py(v);
}

static int decode_exception(aiq_result *r, const json_t *exc, const char *traceback)
{
	const json_t *type = json_object_get(exc, "exc_type");
	const json_t *module = json_object_get(exc, "exc_module");
	char *message = exception_message(json_object_get(exc, "exc_message"));
	if (message == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a result");
	int rc = aiq__result_set_error(r, json_string_value(type), message,
	                               json_is_string(module) ? json_string_value(module) : NULL,
	                               traceback);
	free(message);
	return rc;
}

static int decode_meta(aiq_result **out, const char *task_id, const json_t *meta)
{
	if (!json_is_object(meta))
		return aiq__err(AIQ_EPROTO, "result meta must be a JSON object, got %s",
		                aiq__json_type_name(meta));
	const json_t *status = json_object_get(meta, "status");
	if (status == NULL)
		return aiq__err(AIQ_EPROTO, "result meta has no 'status'");
	if (!json_is_string(status))
		return aiq__err(AIQ_EPROTO, "result meta 'status' must be a string, got %s",
		                aiq__json_type_name(status));
	const char *meta_id, *traceback, *date_done, *parent_id;
	int rc;
	if ((rc = opt_string(&meta_id, meta, "task_id")) ||
	    (rc = opt_string(&traceback, meta, "traceback")) ||
	    (rc = opt_string(&date_done, meta, "date_done")) ||
	    (rc = opt_string(&parent_id, meta, "parent_id")))
		return rc;
	if (task_id == NULL)
		task_id = meta_id;
	if (task_id == NULL || task_id[0] == '\0')
		return aiq__err(AIQ_EPROTO, "result meta has no 'task_id'");

	aiq_result *r;
	if ((rc = aiq__result_new(&r, task_id, state_from_status(json_string_value(status)))))
		return rc;
	const json_t *result = json_object_get(meta, "result");
	if (is_error_state(r->state) && json_is_object(result) &&
	    json_is_string(json_object_get(result, "exc_type"))) {
		rc = decode_exception(r, result, traceback);
	} else {
		char *text = result ? aiq__json_dumps_py(result) : aiq__strdup("null");
		if (text == NULL) {
			rc = aiq__err(AIQ_ENOMEM, "out of memory decoding a result");
		} else {
			free(r->result_json);
			r->result_json = text;
			rc = dup_into(&r->traceback, traceback);
		}
	}
	if (rc == AIQ_OK && !(rc = dup_into(&r->date_done, date_done)))
		rc = dup_into(&r->parent_id, parent_id);
	if (rc != AIQ_OK) {
		aiq_result_free(r);
		return rc;
	}
	*out = r;
	return AIQ_OK;
}

int aiq__result_from_meta(aiq_result **out, const char *task_id, const char *json, size_t len)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "no result destination given");
	*out = NULL;
	if (json == NULL || len == 0)
		return aiq__err(AIQ_EPROTO, "result meta is empty");
	json_error_t jerr;
	json_t *meta = aiq__json_loadb(json, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	if (meta == NULL)
		return aiq__err(AIQ_EPROTO,
		                "result meta is not valid JSON: %s (line %d, column %d)", jerr.text,
		                jerr.line, jerr.column);
	int rc = decode_meta(out, task_id, meta);
	json_decref(meta);
	return rc;
}
