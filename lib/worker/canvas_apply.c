/*
 * What a worker does with a task's workflow after its final state, as
 * Celery 5.2's worker does (celery/app/trace.py, celery/backends/base.py):
 *
 *   SUCCESS  every signature of embed.callbacks is applied with the result
 *            prepended to its args (unless immutable); then the last
 *            signature of embed.chain is popped and applied the same way,
 *            carrying the rest of the chain in its own embed. Both happen
 *            before the result is stored, as in Celery, so a crash before
 *            the store runs the task and its links again (at least once).
 *   FAILURE  after the failure is stored, every signature of
 *            embed.errbacks is applied with the failed task's id prepended
 *            (unless immutable): Celery's task-style errback, which Celery
 *            also uses for an errback its worker does not have. Errbacks
 *            taking (request, exc, traceback) are called in-process by a
 *            Python worker only; a C worker sends them as tasks too.
 *
 * New messages get parent_id = the finished task, root_id = its root.
 * A message that cannot be sent never costs the parent its result: the
 * result is stored anyway, the message goes to "<queue>.dead" with header
 * x-aiq-dead-reason when the broker takes that, and otherwise its full
 * signature is logged at ERROR (see docs/workflows.md).
 */
#include "canvas_apply.h"

#include "canvas_int.h"
#include "config_int.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEND_ATTEMPTS 3

static int publish_once(aiq_worker *w, const char *queue, const aiq__wire *wire,
                        int64_t not_before_ms)
{
	bool delay = (aiq__broker_caps(w->publisher) & AIQ__BROKER_CAP_DELAY) &&
	             not_before_ms > aiq__now_ms();
	return aiq__outcome_publish(w, queue, wire, delay ? not_before_ms : 0);
}

/* Keep a message that could not be sent: "<queue>.dead", or the log. */
static void keep_unsent(aiq_worker *w, const char *queue, aiq__wire *wire, const json_t *sig,
                        const char *parent_id, const char *why)
{
	char *reason = aiq__asprintf("workflow message of task %s could not be sent to %s: %s",
	                             parent_id, queue, why);
	char *dead = aiq__asprintf("%s.dead", queue);
	int rc = AIQ_ENOMEM;
	if (reason && dead && wire && wire->headers &&
	    json_object_set_new(wire->headers, "x-aiq-dead-reason",
	                        aiq__json_string_lossy(reason)) == 0)
		rc = publish_once(w, dead, wire, 0);
	char *text = json_dumps(sig, JSON_COMPACT);
	if (wire == NULL)
		aiq__log(AIQ_LOG_ERROR, "%s; the signature was refused, so nothing was sent: %s",
		         reason ? reason : why, text ? text : "?");
	else if (rc == AIQ_OK)
		aiq__log(AIQ_LOG_ERROR, "%s; the message is kept in %s: %s", reason, dead,
		         text ? text : "?");
	else
		aiq__log(AIQ_LOG_ERROR, "%s; it could not be dead-lettered either, signature: %s",
		         reason ? reason : why, text ? text : "?");
	aiq__worker_seterr(w, "workflow message of task %s not sent (%s): %s", parent_id,
	                   rc == AIQ_OK ? "dead-lettered" : "logged", why);
	free(text);
	free(reason);
	free(dead);
}

/* Apply one signature; failures are kept (keep_unsent), never returned. */
static void apply_one(aiq_worker *w, const aiq_task *t, const json_t *sig, const json_t *prepend,
                      const json_t *chain)
{
	const char *root = t->msg.root_id ? t->msg.root_id : t->msg.id;
	const char *fallback = aiq__cfg_str(w->cfg, AIQ_CFG_QUEUE);
	aiq__sig_send s;
	aiq__wire wire = {0};
	int rc = aiq__signature_build(&s, sig, prepend, t->msg.id, root, chain, NULL);
	const char *queue = rc == AIQ_OK && s.queue ? s.queue : fallback;
	if (rc == AIQ_OK)
		rc = aiq__message_to_wire(&wire, &s.msg);
	if (rc != AIQ_OK) {
		/* Nothing to send: the signature itself is wrong. */
		char *why = strdup(aiq_error_last());
		keep_unsent(w, queue, NULL, sig, t->msg.id, why ? why : "?");
		free(why);
		aiq__sig_send_clear(&s);
		return;
	}
	int64_t delay_ms = 100;
	for (int attempt = 1;; attempt++) {
		rc = publish_once(w, queue, &wire, s.not_before_ms);
		if (rc == AIQ_OK) {
			aiq__log(AIQ_LOG_INFO, "task %s: sent %s[%s] to %s", t->msg.id, s.msg.task,
			         s.msg.id, queue);
			break;
		}
		if (attempt >= SEND_ATTEMPTS) {
			char *why = strdup(aiq_error_last());
			keep_unsent(w, queue, &wire, sig, t->msg.id, why ? why : "?");
			free(why);
			break;
		}
		usleep((useconds_t)(delay_ms * 1000));
		delay_ms *= 2;
	}
	aiq__wire_clear(&wire);
	aiq__sig_send_clear(&s);
}

static const json_t *embed_list(const aiq_task *t, const char *key)
{
	const json_t *v = t->msg.embed ? json_object_get(t->msg.embed, key) : NULL;
	return json_is_array(v) && json_array_size(v) > 0 ? v : NULL;
}

bool aiq__canvas_has_work(const aiq_task *t, int state)
{
	if (state == AIQ_STATE_SUCCESS)
		return embed_list(t, "callbacks") || embed_list(t, "chain");
	return state == AIQ_STATE_FAILURE && embed_list(t, "errbacks");
}

void aiq__canvas_on_success(aiq_worker *w, const aiq_task *t, const char *result_json)
{
	if (!aiq__canvas_has_work(t, AIQ_STATE_SUCCESS))
		return;
	json_t *result = json_loads(result_json ? result_json : "null", JSON_DECODE_ANY, NULL);
	if (result == NULL) {
		aiq__log(AIQ_LOG_ERROR, "task %s: its result is not JSON; links not applied",
		         t->msg.id);
		return;
	}
	const json_t *callbacks = embed_list(t, "callbacks");
	for (size_t i = 0; i < json_array_size(callbacks); i++)
		apply_one(w, t, json_array_get(callbacks, i), result, NULL);

	const json_t *chain = embed_list(t, "chain");
	if (chain) {
		json_t *rest = json_copy((json_t *)(uintptr_t)chain);
		size_t last = json_array_size(chain) - 1;
		if (rest && json_array_remove(rest, last) == 0)
			apply_one(w, t, json_array_get(chain, last), result, rest);
		else
			aiq__log(AIQ_LOG_ERROR, "task %s: out of memory applying its chain",
			         t->msg.id);
		json_decref(rest);
	}
	json_decref(result);
}

void aiq__canvas_on_failure(aiq_worker *w, const aiq_task *t)
{
	const json_t *errbacks = embed_list(t, "errbacks");
	if (errbacks == NULL)
		return;
	json_t *id = json_string(t->msg.id);
	if (id == NULL) {
		aiq__log(AIQ_LOG_ERROR, "task %s: out of memory applying its errbacks", t->msg.id);
		return;
	}
	for (size_t i = 0; i < json_array_size(errbacks); i++)
		apply_one(w, t, json_array_get(errbacks, i), id, NULL);
	json_decref(id);
}
