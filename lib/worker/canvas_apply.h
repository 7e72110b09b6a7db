/*
 * The worker's side of Celery canvas: links, errbacks and chains applied
 * after a task's final state (canvas_apply.c). Pool threads.
 */
#ifndef AIQ_CANVAS_APPLY_H
#define AIQ_CANVAS_APPLY_H

#include "worker_int.h"

/* Whether the task's embed asks for anything after this final state. */
bool aiq__canvas_has_work(const aiq_task *t, int state);
/* SUCCESS with this result (JSON text): callbacks, then the chain's next
 * step. Call before the result is stored. Never fails: what cannot be sent
 * is dead-lettered or logged. */
void aiq__canvas_on_success(aiq_worker *w, const aiq_task *t, const char *result_json);
/* FAILURE: the errbacks, with the task's id. Call after the failure is stored. */
void aiq__canvas_on_failure(aiq_worker *w, const aiq_task *t);

/* After a final state was stored: a chord part's return (the body when it
 * was the last part), then FAILURE's errbacks. */
void aiq__canvas_after_store(aiq_worker *w, const aiq_task *t, int state, const char *json,
                             const char *exc_type, const char *exc_message, const char *exc_module);

#endif /* AIQ_CANVAS_APPLY_H */
