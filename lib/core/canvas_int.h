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
 * "subtask_type" null or absent (nested chains, groups and chords inside a
 * signature are not applied by this library yet), "immutable" a boolean
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

#endif /* AIQ_CANVAS_INT_H */
