/*
 * The handler's view of a task: accessors and outcome reporting.
 */
#include "worker_int.h"
#include "json_load.h"

#include "config_int.h"
#include "ratelimit.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void aiq__task_free(aiq_task *t)
{
	if (t == NULL)
		return;
	aiq__ratelimit_release(t->w ? t->w->ratelimit : NULL, t->slot);
	aiq__delivery_free(t->delivery);
	aiq__task_release(t);
	free(t);
}

void aiq__task_release(aiq_task *t)
{
	aiq__message_clear(&t->msg);
	free(t->queue);
	free(t->args_json);
	free(t->kwargs_json);
	free(t->result_json);
	free(t->exc_type);
	free(t->exc_message);
	free(t->exc_module);
	free(t->traceback);
}

AIQ_API const char *aiq_task_id(const aiq_task *t)
{
	return t ? t->msg.id : NULL;
}

AIQ_API const char *aiq_task_name(const aiq_task *t)
{
	return t ? t->msg.task : NULL;
}

AIQ_API const char *aiq_task_args_json(const aiq_task *t)
{
	return t ? t->args_json : NULL;
}

AIQ_API const char *aiq_task_kwargs_json(const aiq_task *t)
{
	return t ? t->kwargs_json : NULL;
}

AIQ_API int aiq_task_retries(const aiq_task *t)
{
	return t ? t->msg.retries : 0;
}

AIQ_API int64_t aiq_task_eta_ms(const aiq_task *t)
{
	return t ? t->msg.eta_us / 1000 : 0;
}

AIQ_API const char *aiq_task_queue(const aiq_task *t)
{
	return t ? t->queue : NULL;
}

AIQ_API int aiq_task_cancelled(const aiq_task *t)
{
	return t ? atomic_load(&((aiq_task *)(uintptr_t)t)->cancel) : 0;
}

void aiq__task_wrap_result(aiq_task *t, aiq__result_wrap_fn fn, void *ctx)
{
	t->wrap = fn;
	t->wrap_ctx = ctx;
}

static int check_open(const aiq_task *t)
{
	if (t == NULL)
		return aiq__err(AIQ_EINVAL, "task is NULL");
	if (t->outcome != OUTCOME_NONE)
		return aiq__err(AIQ_ESTATE, "task %s already reported its outcome", t->msg.id);
	return AIQ_OK;
}

/* Remember a refused report and return its error: a handler that reports
 * nothing valid must not end as a silent SUCCESS (outcome.c). */
static int refuse(aiq_task *t, int code, const char *fmt, ...) AIQ__PRINTF(3, 4);
static int refuse(aiq_task *t, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->invalid_report, sizeof t->invalid_report, fmt, ap);
	va_end(ap);
	return aiq__err(code, "task %s: %s", t->msg.id ? t->msg.id : "?", t->invalid_report);
}

AIQ_API int aiq_task_succeed(aiq_task *t, const char *result_json)
{
	int rc = check_open(t);
	if (rc != AIQ_OK)
		return rc;
	if (result_json == NULL)
		result_json = "null";
	/* A result is stored and sent like a message: the same cap. */
	size_t len = strlen(result_json);
	size_t max = (size_t)aiq__cfg_int(t->w ? t->w->cfg : NULL, AIQ_CFG_MESSAGE_MAX_BYTES);
	if (len > max)
		return refuse(t, AIQ_ETOOBIG, "result is %zu bytes, over message.max_bytes (%zu)",
		              len, max);
	json_error_t jerr;
	json_t *v = aiq__json_loadb(result_json, len, JSON_DECODE_ANY, &jerr);
	if (v == NULL)
		return refuse(t, AIQ_EJSON, "result is not valid JSON: %s (line %d, column %d)",
		              jerr.text, jerr.line, jerr.column);
	t->result_json = t->wrap ? t->wrap(v, t->wrap_ctx) : strdup(result_json);
	json_decref(v);
	if (t->result_json == NULL)
		return refuse(t, AIQ_ENOMEM, "out of memory storing the result");
	t->outcome = OUTCOME_SUCCESS;
	return AIQ_OK;
}

AIQ_API int aiq_task_fail(aiq_task *t, const char *exc_type, const char *message,
                          const char *exc_module)
{
	int rc = check_open(t);
	if (rc != AIQ_OK)
		return rc;
	const char *module = exc_module ? exc_module : (exc_type ? "aiqueue" : "builtins");
	free(t->exc_type);
	free(t->exc_message);
	free(t->exc_module);
	t->exc_type = strdup(exc_type ? exc_type : "Exception");
	t->exc_message = strdup(message ? message : "");
	t->exc_module = strdup(module);
	if (!t->exc_type || !t->exc_message || !t->exc_module)
		return refuse(t, AIQ_ENOMEM, "out of memory recording the failure");
	t->outcome = OUTCOME_FAILURE;
	return AIQ_OK;
}

AIQ_API int aiq_task_set_traceback(aiq_task *t, const char *traceback)
{
	if (t == NULL)
		return aiq__err(AIQ_EINVAL, "task is NULL");
	char *copy = NULL;
	if (traceback && !(copy = strdup(traceback)))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	free(t->traceback);
	t->traceback = copy;
	return AIQ_OK;
}

AIQ_API int aiq_task_retry(aiq_task *t, int64_t countdown_ms, const char *reason)
{
	int rc = check_open(t);
	if (rc != AIQ_OK)
		return rc;
	free(t->exc_type);
	free(t->exc_message);
	free(t->exc_module);
	t->exc_type = strdup("Retry");
	t->exc_message = strdup(reason ? reason : "retry requested");
	t->exc_module = strdup("celery.exceptions");
	if (!t->exc_type || !t->exc_message || !t->exc_module)
		return refuse(t, AIQ_ENOMEM, "out of memory recording the retry");
	t->retry_countdown_ms = countdown_ms;
	t->outcome = OUTCOME_RETRY;
	if (t->msg.retries >= t->max_retries)
		return aiq__err(AIQ_ELIMIT, "task %s used up its %d retries", t->msg.id,
		                t->max_retries);
	return AIQ_OK;
}

AIQ_API int aiq_task_progress(aiq_task *t, const char *meta_json)
{
	int rc = check_open(t);
	if (rc != AIQ_OK)
		return rc;
	if (meta_json == NULL)
		return aiq__err(AIQ_EINVAL, "progress meta is NULL");
	json_error_t jerr;
	json_t *v = json_loads(meta_json, 0, &jerr);
	if (v == NULL)
		return aiq__err(AIQ_EJSON, "progress meta is not valid JSON: %s", jerr.text);
	bool is_obj = json_is_object(v);
	json_decref(v);
	if (!is_obj)
		return aiq__err(AIQ_EINVAL, "progress meta must be a JSON object");
	if (t->forward_state) /* in a pool process: the parent stores it */
		return t->forward_state(t, AIQ_STATE_PROGRESS, meta_json);
	return aiq__worker_store_state(t->w, t, AIQ_STATE_PROGRESS, meta_json, NULL, NULL, NULL);
}
