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
 * A signature may be a nested chain, group or chord (subtask_type): it is
 * applied as Celery's Signature.apply_async would (aiq__canvas_plan_build,
 * canvas_int.h): a chord's size is set in the store before any of its
 * parts is sent; a nested signature refused as a whole sends nothing.
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

/* Send one planned message; failures are kept (keep_unsent), never returned. */
static void send_planned(aiq_worker *w, const char *parent, const json_t *sig, aiq__sig_send *s)
{
	const char *queue = s->queue ? s->queue : aiq__cfg_str(w->cfg, AIQ_CFG_QUEUE);
	aiq__wire wire = {0};
	if (aiq__message_to_wire(&wire, &s->msg) != AIQ_OK) {
		char *why = strdup(aiq_error_last());
		keep_unsent(w, queue, NULL, sig, parent, why ? why : "?");
		free(why);
		return;
	}
	int64_t delay_ms = 100;
	for (int attempt = 1;; attempt++) {
		if (publish_once(w, queue, &wire, s->not_before_ms) == AIQ_OK) {
			aiq__log(AIQ_LOG_INFO, "task %s: sent %s[%s] to %s", parent, s->msg.task,
			         s->msg.id, queue);
			break;
		}
		if (attempt >= SEND_ATTEMPTS) {
			char *why = strdup(aiq_error_last());
			keep_unsent(w, queue, &wire, sig, parent, why ? why : "?");
			free(why);
			break;
		}
		usleep((useconds_t)(delay_ms * 1000));
		delay_ms *= 2;
	}
	aiq__wire_clear(&wire);
}

/* A chord's header size goes to the store before any of its parts is sent
 * (RedisBackend.set_chord_size), so the part that completes it can tell. */
static int set_chord_sizes(aiq_worker *w, const aiq__canvas_plan *plan)
{
	const char *gid;
	json_t *size;
	json_object_foreach((json_t *)(uintptr_t)plan->chord_sizes, gid, size)
	{
		int rc =
		        aiq__store_chord_set_size(w->store, gid, (int64_t)json_integer_value(size));
		if (rc != AIQ_OK)
			return aiq__err(rc,
			                "chord %s: its size could not be set in the result store, "
			                "so none of its parts was sent: %s",
			                gid, aiq_error_last());
	}
	return AIQ_OK;
}

/* Apply one signature of any kind (a task, or a nested chain, group or
 * chord: aiq__canvas_plan_build); failures are kept (keep_unsent), never
 * returned. A signature refused as a whole sends nothing. */
static void apply_as(aiq_worker *w, const char *parent, const char *root, const json_t *sig,
                     const json_t *prepend, const json_t *chain)
{
	aiq__canvas_plan plan;
	int rc = aiq__canvas_plan_build(&plan, sig, prepend, parent, root, chain, NULL);
	if (rc == AIQ_OK)
		rc = set_chord_sizes(w, &plan);
	if (rc != AIQ_OK) {
		/* Nothing to send: the signature itself is wrong or unsupported. */
		const json_t *o = json_object_get(sig, "options");
		const char *q = json_string_value(json_object_get(o, "queue"));
		char *why = strdup(aiq_error_last());
		keep_unsent(w, q ? q : aiq__cfg_str(w->cfg, AIQ_CFG_QUEUE), NULL, sig, parent,
		            why ? why : "?");
		free(why);
		aiq__canvas_plan_clear(&plan);
		return;
	}
	for (size_t i = 0; i < plan.n; i++)
		send_planned(w, parent, sig, &plan.sends[i]);
	aiq__canvas_plan_clear(&plan);
}

static void apply_one(aiq_worker *w, const aiq_task *t, const json_t *sig, const json_t *prepend,
                      const json_t *chain)
{
	apply_as(w, t->msg.id, t->msg.root_id ? t->msg.root_id : t->msg.id, sig, prepend, chain);
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

/* ---- chords (Celery 5.2's Redis join; the store does the counting) ------- */

static json_t *part_result(int state, const char *json, const char *exc_type,
                           const char *exc_message, const char *exc_module)
{
	if (state == AIQ_STATE_SUCCESS)
		return json_loads(json ? json : "null", JSON_DECODE_ANY, NULL);
	/* Celery's exception dict (backend.prepare_exception). */
	return json_pack("{s:s, s:[s], s:s}", "exc_type", exc_type ? exc_type : "Exception",
	                 "exc_message", exc_message ? exc_message : "", "exc_module",
	                 exc_module ? exc_module : "builtins");
}

/* The body cannot run: it ends FAILURE ChordError and its errbacks are sent
 * with its id (backend.chord_error_from_stack). */
static void fail_body(aiq_worker *w, const aiq_task *t, const json_t *body, const char *why)
{
	const json_t *options = json_object_get(body, "options");
	const char *id = json_string_value(json_object_get(options, "task_id"));
	aiq__log(AIQ_LOG_WARNING, "chord %s: %s", t->msg.group, why);
	if (id == NULL) {
		aiq__log(AIQ_LOG_ERROR, "chord %s: its body has no task id; ChordError not stored",
		         t->msg.group);
		return;
	}
	if (aiq__outcome_store(w, id, NULL, AIQ_STATE_FAILURE, NULL, "ChordError", why,
	                       "celery.exceptions", NULL) != AIQ_OK)
		aiq__log(AIQ_LOG_ERROR, "chord %s: storing ChordError for body %s failed: %s",
		         t->msg.group, id, aiq_error_last());
	json_t *errbacks = NULL;
	const json_t *le = json_object_get(options, "link_error");
	if (json_is_array(le))
		errbacks = json_incref((json_t *)(uintptr_t)le);
	else if (json_is_object(le))
		errbacks = json_pack("[O]", le);
	json_t *jid = json_string(id);
	/* The errbacks' parent is the body, as in Celery. */
	const char *root = t->msg.root_id ? t->msg.root_id : id;
	for (size_t i = 0; jid && i < json_array_size(errbacks); i++)
		apply_as(w, id, root, json_array_get(errbacks, i), jid, NULL);
	json_decref(jid);
	json_decref(errbacks);
}

/* All parts returned: the body with the list of their results, or
 * ChordError naming the first part that failed. */
static void run_body(aiq_worker *w, const aiq_task *t, const json_t *body, const json_t *parts)
{
	json_t *results = json_array();
	for (size_t i = 0; results && i < json_array_size(parts); i++) {
		const json_t *e = json_array_get(parts, i);
		const char *tid = json_string_value(json_array_get(e, 1));
		const char *state = json_string_value(json_array_get(e, 2));
		const json_t *value = json_array_get(e, 3);
		if (!json_is_array(e) || !state) {
			fail_body(w, t, body,
			          "Join error: a part's entry is not [1, id, state, result]");
			json_decref(results);
			return;
		}
		if (strcmp(state, "FAILURE") == 0 || strcmp(state, "REVOKED") == 0) {
			const char *type = json_string_value(json_object_get(value, "exc_type"));
			const json_t *msg = json_object_get(value, "exc_message");
			const char *text = json_is_array(msg)
			                           ? json_string_value(json_array_get(msg, 0))
			                           : json_string_value(msg);
			char why[512];
			snprintf(why, sizeof why, "Dependency %s raised %s('%s')", tid ? tid : "?",
			         type ? type : "Exception", text ? text : "");
			fail_body(w, t, body, why);
			json_decref(results);
			return;
		}
		if (json_array_append(results, (json_t *)(uintptr_t)(value ? value : json_null())))
			break;
	}
	if (results)
		apply_one(w, t, body, results, NULL);
	else
		aiq__log(AIQ_LOG_ERROR, "chord %s: out of memory running its body", t->msg.group);
	json_decref(results);
}

static void chord_part(aiq_worker *w, const aiq_task *t, int state, const char *json,
                       const char *exc_type, const char *exc_message, const char *exc_module)
{
	const json_t *body = t->msg.embed ? json_object_get(t->msg.embed, "chord") : NULL;
	if (!json_is_object(body) || t->msg.group == NULL)
		return;
	const json_t *index =
	        t->msg.extra_headers ? json_object_get(t->msg.extra_headers, "group_index") : NULL;
	json_t *entry = json_pack("[i, s, s, o?]", 1, t->msg.id, aiq_state_name(state),
	                          part_result(state, json, exc_type, exc_message, exc_module));
	char *text = entry ? aiq__json_dumps_py(entry) : NULL;
	json_decref(entry);
	char *ready = NULL;
	int rc = text ? aiq__store_chord_part_return(
	                        w->store, t->msg.group,
	                        json_is_integer(index) ? (int64_t)json_integer_value(index) : -1,
	                        text, &ready)
	              : aiq__err(AIQ_ENOMEM, "out of memory");
	free(text);
	if (rc != AIQ_OK) {
		aiq__log(AIQ_LOG_ERROR,
		         "chord %s: the return of part %s was not recorded (its body may never "
		         "run): %s",
		         t->msg.group, t->msg.id, aiq_error_last());
		aiq__worker_seterr(w, "chord %s: part %s not recorded: %s", t->msg.group, t->msg.id,
		                   aiq_error_last());
		return;
	}
	if (ready == NULL)
		return;
	json_t *parts = json_loads(ready, 0, NULL);
	free(ready);
	if (parts)
		run_body(w, t, body, parts);
	else
		fail_body(w, t, body, "Join error: the parts' entries are not JSON");
	json_decref(parts);
	if (aiq__store_chord_done(w->store, t->msg.group) != AIQ_OK)
		aiq__log(AIQ_LOG_WARNING, "chord %s: deleting its keys failed: %s", t->msg.group,
		         aiq_error_last());
}

void aiq__canvas_after_store(aiq_worker *w, const aiq_task *t, int state, const char *json,
                             const char *exc_type, const char *exc_message, const char *exc_module)
{
	/* As Celery's backend: a revoked part returns to its chord (which then
	 * fails with ChordError) but calls no errback. */
	if (state != AIQ_STATE_SUCCESS && state != AIQ_STATE_FAILURE && state != AIQ_STATE_REVOKED)
		return;
	chord_part(w, t, state, json, exc_type, exc_message, exc_module);
	if (state == AIQ_STATE_FAILURE)
		aiq__canvas_on_failure(w, t);
}
