/*
 * The result record and its public accessors. The Celery meta JSON codec is
 * in result_meta.c.
 */
#include "result_int.h"
#include "json_load.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const state_names[] = {
        "PENDING", "RECEIVED", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED",
};

AIQ_API const char *aiq_state_name(int state)
{
	if (state < 0 || state >= (int)(sizeof state_names / sizeof state_names[0]))
		return "UNKNOWN";
	return state_names[state];
}

AIQ_API int aiq_state_from_name(const char *name)
{
	if (name == NULL)
		return aiq__err(AIQ_EINVAL, "no state name given");
	for (int i = 0; i < (int)(sizeof state_names / sizeof state_names[0]); i++)
		if (strcmp(name, state_names[i]) == 0)
			return i;
	return aiq__err(AIQ_EINVAL, "unknown task state '%.64s'", name);
}

AIQ_API int aiq_state_is_ready(int state)
{
	return state == AIQ_STATE_SUCCESS || state == AIQ_STATE_FAILURE ||
	       state == AIQ_STATE_REVOKED;
}

int aiq__result_new(aiq_result **out, const char *task_id, int state)
{
	if (out == NULL || task_id == NULL)
		return aiq__err(AIQ_EINVAL, "result needs a task id");
	*out = NULL;
	aiq_result *r = calloc(1, sizeof *r);
	if (r == NULL || !(r->task_id = strdup(task_id)) || !(r->result_json = strdup("null"))) {
		aiq_result_free(r);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	r->state = state;
	r->stored_us = aiq__now_us();
	*out = r;
	return AIQ_OK;
}

static int dup_field(char **dst, const char *src)
{
	if (src == NULL) {
		*dst = NULL;
		return 0;
	}
	*dst = strdup(src);
	return *dst ? 0 : -1;
}

int aiq__result_copy(aiq_result **out, const aiq_result *r)
{
	*out = NULL;
	aiq_result *c = calloc(1, sizeof *c);
	if (c == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	c->state = r->state;
	c->stored_us = r->stored_us;
	if (dup_field(&c->task_id, r->task_id) || dup_field(&c->result_json, r->result_json) ||
	    dup_field(&c->exc_type, r->exc_type) || dup_field(&c->exc_message, r->exc_message) ||
	    dup_field(&c->exc_module, r->exc_module) || dup_field(&c->traceback, r->traceback) ||
	    dup_field(&c->date_done, r->date_done) || dup_field(&c->parent_id, r->parent_id)) {
		aiq_result_free(c);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	*out = c;
	return AIQ_OK;
}

int aiq__result_set_json(aiq_result *r, const char *json)
{
	if (json == NULL)
		json = "null";
	json_error_t jerr;
	json_t *v = aiq__json_loadb(json, strlen(json), JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	if (v == NULL)
		return aiq__err(AIQ_EJSON, "result is not valid JSON: %s (line %d, column %d)",
		                jerr.text, jerr.line, jerr.column);
	json_decref(v);
	char *copy = strdup(json);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	free(r->result_json);
	r->result_json = copy;
	free(r->meta_json);
	r->meta_json = NULL;
	return AIQ_OK;
}

int aiq__result_set_error(aiq_result *r, const char *type, const char *message, const char *module,
                          const char *traceback)
{
	char *t = NULL, *m = NULL, *mod = NULL, *tb = NULL;
	if (dup_field(&t, type ? type : "Exception") || dup_field(&m, message ? message : "") ||
	    dup_field(&mod, module ? module : "builtins") || dup_field(&tb, traceback)) {
		free(t);
		free(m);
		free(mod);
		free(tb);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	free(r->exc_type);
	free(r->exc_message);
	free(r->exc_module);
	free(r->traceback);
	r->exc_type = t;
	r->exc_message = m;
	r->exc_module = mod;
	r->traceback = tb;
	free(r->meta_json);
	r->meta_json = NULL;
	return AIQ_OK;
}

void aiq__result_mark_done(aiq_result *r)
{
	char buf[AIQ__ISO_BUFSZ];
	aiq__iso8601_format(buf, aiq__now_us(), false);
	char *copy = strdup(buf);
	if (copy) {
		free(r->date_done);
		r->date_done = copy;
	}
}

AIQ_API void aiq_result_free(aiq_result *r)
{
	if (r == NULL)
		return;
	free(r->task_id);
	free(r->result_json);
	free(r->exc_type);
	free(r->exc_message);
	free(r->exc_module);
	free(r->traceback);
	free(r->date_done);
	free(r->parent_id);
	free(r->meta_json);
	free(r);
}

AIQ_API int aiq_result_state(const aiq_result *r)
{
	return r ? r->state : AIQ_STATE_PENDING;
}

AIQ_API const char *aiq_result_task_id(const aiq_result *r)
{
	return r ? r->task_id : NULL;
}

AIQ_API const char *aiq_result_json(const aiq_result *r)
{
	return r && r->result_json ? r->result_json : "null";
}

AIQ_API const char *aiq_result_error_type(const aiq_result *r)
{
	return r ? r->exc_type : NULL;
}

AIQ_API const char *aiq_result_error_message(const aiq_result *r)
{
	return r ? r->exc_message : NULL;
}

AIQ_API const char *aiq_result_error_module(const aiq_result *r)
{
	return r ? r->exc_module : NULL;
}

AIQ_API const char *aiq_result_traceback(const aiq_result *r)
{
	return r ? r->traceback : NULL;
}

AIQ_API const char *aiq_result_date_done(const aiq_result *r)
{
	return r ? r->date_done : NULL;
}

AIQ_API const char *aiq_result_meta_json(const aiq_result *r)
{
	if (r == NULL)
		return NULL;
	if (r->meta_json == NULL) {
		/* The cache is filled lazily; the record is logically const. */
		aiq_result *mut = (aiq_result *)(uintptr_t)r;
		if (aiq__result_to_meta(&mut->meta_json, r) != AIQ_OK)
			return NULL;
	}
	return r->meta_json;
}
