/*
 * Worker internals shared by worker.c, task.c and analyze_task.c.
 */
#ifndef AIQ_WORKER_INT_H
#define AIQ_WORKER_INT_H

#include "broker.h"
#include "message.h"
#include "store.h"

#include <pthread.h>
#include <stdatomic.h>

enum task_outcome { OUTCOME_NONE, OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_RETRY };

/* What the consumer thread does with a finished task's delivery. */
enum task_disposition { DISPOSE_ACK, DISPOSE_REQUEUE, DISPOSE_NONE };

struct handler {
	char *name;
	aiq_task_fn fn;
	void *userdata;
	aiq_destroy_fn destroy;
};

struct aiq_task {
	aiq_worker *w;
	aiq__delivery *delivery; /* owned until the consumer thread disposes of it */
	aiq__message msg;
	const struct handler *handler;
	char *args_json;
	char *kwargs_json;
	int max_retries;
	int64_t soft_deadline; /* monotonic ms, 0 = none */
	int64_t hard_deadline; /* monotonic ms, 0 = none */
	int64_t started_mono;
	int64_t hold_until_ms; /* ETA (UNIX ms) while held in memory */

	/* Outcome reported by the handler. */
	enum task_outcome outcome;
	char *result_json;
	char *exc_type;
	char *exc_message;
	char *exc_module;
	char *traceback; /* aiq_task_set_traceback() */
	int64_t retry_countdown_ms;
	/* Why a report was refused (invalid result JSON, out of memory); when
	 * no valid outcome follows, the task ends FAILURE InvalidResultError. */
	char invalid_report[300];

	atomic_int cancel; /* 0, AIQ_ETIMEDOUT (soft limit) or AIQ_ECANCELED */
	bool revoked;      /* revoked while running (consumer thread, under lock) */
	int final_before;  /* state already final before it ran (it did not run); 0 = none */
	bool abandoned;    /* hard limit or abort: the consumer disposed of it (under lock) */
	bool overdue;      /* abandoned at its hard time limit (under lock) */
	char *queue;       /* queue it came from (the delivery may go before the handler ends) */
	enum task_disposition disposition;

	struct aiq_task *next; /* in one of the worker's lists */
	struct aiq_task *prev;
};

/* Handler of the built-in analysis task; userdata is the worker. */
void aiq__analyze_task(aiq_task *t, void *userdata);
/* Built-in analyzer adapters. */
void aiq__lyrics_analyzer(aiq_task *t, const char *text, const char *params_json, void *ud);

/* Register a built-in analyzer: a later aiq_worker_add_analyzer() of the
 * same name replaces it. On failure destroy(userdata) runs (worker.c). */
int aiq__worker_add_builtin_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn,
                                     void *userdata, aiq_destroy_fn destroy);
/* Keep a loaded plugin until aiq_worker_free(), which calls close_fn(handle)
 * after every destructor ran. AIQ_ESTATE while running (worker.c). */
int aiq__worker_keep_plugin(aiq_worker *w, void *handle, void (*close_fn)(void *handle));
/* Register the `llm` analyzer and the llm.presets names (analyzers/llm.c). */
int aiq__llm_register(aiq_worker *w, const aiq_config *cfg);

/* Analyzer used when a task names none (worker.c). */
const char *aiq__worker_default_analyzer(const aiq_worker *w);
/* Look up a registered analyzer (worker.c). */
int aiq__worker_find_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn *fn, void **ud);
/* Store a state for a running task, honouring ignore_result (worker.c). */
int aiq__worker_store_state(aiq_worker *w, aiq_task *t, int state, const char *json,
                            const char *exc_type, const char *exc_message, const char *exc_module);

void aiq__task_free(aiq_task *t);

/* Pool threads started and not yet joined, those running and those that
 * retired but were not reaped yet (worker.c; for tests). */
size_t aiq__worker_thread_count(aiq_worker *w);

#endif /* AIQ_WORKER_INT_H */
