/*
 * Celery canvas signatures on the wire (protocol v2 `embed`): a signature is
 * the JSON object Celery 5.2 writes for Signature.__json__():
 *
 *   {"task": name, "args": [...], "kwargs": {...}, "options": {...},
 *    "subtask_type": null | "chain" | "group" | "chord", "immutable": bool}
 *
 * and `embed` = {"callbacks": [sig] | null, "errbacks": [sig] | null,
 * "chain": [sig] | null (reversed: the next task is the last element),
 * "chord": sig | null}. This file turns a signature into the message that
 * applies it, as Signature.apply_async(args, parent_id=, root_id=, chain=)
 * does in Celery's worker (celery/app/trace.py, celery/backends/base.py).
 * Pure: no broker, no store.
 */
#ifndef AIQ_CANVAS_INT_H
#define AIQ_CANVAS_INT_H

#include "message.h"

/* What applying a signature builds. */
typedef struct aiq__sig_send {
	aiq__message msg;      /* the message; its id is options.task_id or a fresh UUID */
	char *queue;           /* options.queue, else options.routing_key, else NULL (default) */
	int64_t not_before_ms; /* options.countdown / options.eta as UNIX ms; 0 = now */
} aiq__sig_send;

void aiq__sig_send_clear(aiq__sig_send *s);

/* Check that `sig` is a signature this library can send: an object with a
 * printable "task" name, "args" an array (or absent/null), "kwargs" an
 * object (or absent/null), "options" an object (or absent/null),
 * "subtask_type" null or absent (a nested chain, group or chord is checked
 * by aiq__canvas_check and applied by aiq__canvas_plan_build), "immutable" a boolean
 * (or absent). AIQ_OK or AIQ_EINVAL with the reason. */
int aiq__signature_check(const json_t *sig);

/* Build the message applying `sig` (borrowed):
 *   prepend   the parent's result, put before the signature's own args
 *             unless it is immutable (NULL: nothing prepended);
 *   parent_id the task whose outcome applies it (NULL: none);
 *   root_id   the workflow's first task (NULL: the new task itself);
 *   chain     the rest of a chain for the new message's embed.chain
 *             (borrowed, copied; NULL: the signature's own options.chain,
 *             if any);
 *   origin    the sender's "gen<pid>@host" (borrowed; NULL: none).
 * Options honoured: task_id, queue, routing_key, countdown, eta, expires,
 * priority, time_limit, soft_time_limit, link, link_error, group_id,
 * group_index, chord, reply_to, shadow, ignore_result, headers. Others are
 * ignored. AIQ_OK, AIQ_EINVAL (see aiq__signature_check, bad option
 * types), AIQ_ENOMEM. `out` is cleared on failure. */
int aiq__signature_build(aiq__sig_send *out, const json_t *sig, const json_t *prepend,
                         const char *parent_id, const char *root_id, const json_t *chain,
                         const char *origin);

/* A new signature object {"task", "args": [], "kwargs": {}, "options": {},
 * "subtask_type": null, "immutable": false}; NULL when out of memory. */
json_t *aiq__signature_object(const char *task);

/* The JSON object of a public signature (borrowed; NULL for NULL). */
const json_t *aiq__signature_json(const aiq_signature *s);

/* ---- nested canvas: chain, group and chord signatures ----------------------
 *
 * Celery 5.2 writes a chain, group or chord inside a link or a chain step as
 * a signature with "subtask_type" "chain" | "group" | "chord" whose members
 * are under "kwargs": "tasks" (chain, group: a list of signatures) or
 * "header" (a list, or a group signature) and "body" (chord). Applying one
 * (Signature.apply_async((result,), parent_id=, root_id=, chain=) in
 * Celery's worker, celery/canvas.py) gives a plan: the chord sizes to set
 * in the result store first, then the messages to send, in order. */

/* Nesting deeper than this is refused (a message cannot make the worker
 * recurse without bound). */
#define AIQ__CANVAS_MAX_DEPTH 32

typedef enum aiq__sig_kind {
	AIQ__SIG_TASK,
	AIQ__SIG_CHAIN,
	AIQ__SIG_GROUP,
	AIQ__SIG_CHORD,
} aiq__sig_kind;

typedef struct aiq__canvas_plan {
	aiq__sig_send *sends; /* the messages, in sending order */
	size_t n;
	size_t cap;
	json_t *chord_sizes; /* {group_id: header size}: set before sending; NULL: none */
} aiq__canvas_plan;

void aiq__canvas_plan_clear(aiq__canvas_plan *p);

/* Check a signature of any kind, members included, to
 * AIQ__CANVAS_MAX_DEPTH levels; *kind (may be NULL) gets its kind.
 * AIQ_OK or AIQ_EINVAL with the reason (which member, which level). */
int aiq__canvas_check(aiq__sig_kind *kind, const json_t *sig);

/* The plan applying `sig` (borrowed) of any kind, with the same arguments
 * as aiq__signature_build:
 *   task   one message (aiq__signature_build);
 *   chain  its steps flattened (nested chains spliced in, a group followed
 *          by a step made a chord with that step as body, as
 *          _chain.prepare_steps does); the first applied with `prepend`
 *          (unless the chain is immutable) and embed.chain = `chain` +
 *          the rest reversed;
 *   group  nested groups unrolled; each member applied with `prepend`, the
 *          same `chain`, options group_id = the group's options.task_id
 *          (else a fresh id) and group_index = its own or its position;
 *   chord  the header's size (chord._descend) to set under its group id;
 *          the body gets parent_id, root_id, chain and a task id when it
 *          has none; each header member is applied with `prepend`,
 *          group_id, group_index and options.chord = the body. An empty
 *          header sends the body with [] prepended (body.delay([])).
 * A chain or a chord ending a group member or a chord part gets the
 * member's group_id/group_index/chord on its last task or its body.
 * Refused (AIQ_EINVAL, nothing planned): what aiq__canvas_check refuses,
 * a chain, group or chord with args of its own, a chord inside a chord
 * header, a chain or chord member ending in a group or chord.
 * AIQ_ENOMEM. `out` is cleared on failure. */
int aiq__canvas_plan_build(aiq__canvas_plan *out, const json_t *sig, const json_t *prepend,
                           const char *parent_id, const char *root_id, const json_t *chain,
                           const char *origin);

#endif /* AIQ_CANVAS_INT_H */
