/*
 * The result record behind the public aiq_result, and Celery's result meta
 * JSON codec (reference: the Redis result backend's SETEX payload).
 */
#ifndef AIQ_RESULT_INT_H
#define AIQ_RESULT_INT_H

#include "internal.h"

struct aiq_result {
	char *task_id;
	int state;
	char *result_json; /* JSON text; "null" when none */
	char *exc_type;
	char *exc_message;
	char *exc_module;
	char *traceback;
	char *date_done; /* naive UTC ISO-8601 with µs, NULL unless final */
	char *parent_id;
	int64_t stored_us; /* when this record was written (UNIX µs) */
	char *meta_json;   /* cache for aiq_result_meta_json() */
};

int aiq__result_new(aiq_result **out, const char *task_id, int state);
int aiq__result_copy(aiq_result **out, const aiq_result *r);
/* Setters copy their input. set_json validates JSON. */
int aiq__result_set_json(aiq_result *r, const char *json);
int aiq__result_set_error(aiq_result *r, const char *type, const char *message, const char *module,
                          const char *traceback);
/* Set date_done to now (naive UTC with µs). */
void aiq__result_mark_done(aiq_result *r);

/* Celery meta JSON, key order as Celery emits it. */
int aiq__result_to_meta(char **out, const aiq_result *r);
/* Parse Celery meta JSON (any state name, custom ones become PROGRESS). */
int aiq__result_from_meta(aiq_result **out, const char *task_id, const char *json, size_t len);

#endif /* AIQ_RESULT_INT_H */
