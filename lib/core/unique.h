/*
 * Unique jobs (docs/workflows.md, "Unique jobs"): a producer claims a key
 * for its task id with a TTL before it publishes, atomically (a Lua script
 * on Redis, a mutex in the process otherwise); a second producer of the
 * same key gets the id that holds it instead of a new task. The message
 * carries the key and its scope in the header AIQ__UNIQUE_HEADER, and the
 * worker releases the key when the scope ends: `queued` when a worker
 * starts the task, `running` when it reaches a final state, `until_success`
 * when it succeeds (a failure keeps the key until its TTL).
 */
#ifndef AIQ_UNIQUE_H
#define AIQ_UNIQUE_H

#include "config_int.h"
#include "internal.h"
#include "message.h"

/* {"key": "<the claimed key>", "scope": "queued"|"running"|"until_success"} */
#define AIQ__UNIQUE_HEADER "x-aiq-unique"

typedef struct aiq__unique aiq__unique;

/* Where keys live: unique.url, else the result store's or the broker's
 * Redis, else this process. Connects at the first call. */
int aiq__unique_new(aiq__unique **out, const aiq_config *cfg);
void aiq__unique_free(aiq__unique *u);

/* The stored key of a task (malloc): "aiq:unique:" + the explicit key, or
 * "aiq:unique:" + task name + ":" + a SHA-1 name UUID of the canonical
 * JSON (sorted keys, compact) of [args, kwargs]. NULL when out of memory
 * or when args/kwargs do not parse (the enqueue reports those). */
char *aiq__unique_key(const char *explicit_key, const char *task, const char *args_json,
                      const char *kwargs_json);

/* Claim `key` for `task_id` for ttl_ms: *holder NULL = claimed, else the
 * id of the task that holds it (malloc). Errors as AIQ_ESTORE. */
int aiq__unique_claim(aiq__unique *u, char **holder, const char *key, const char *task_id,
                      int64_t ttl_ms);
/* Release `key` if `task_id` still holds it. */
int aiq__unique_release(aiq__unique *u, const char *key, const char *task_id);

/* Put the header on a wire built for the task (and on its local model,
 * if any). scope: an AIQ_UNIQUE_* value. */
int aiq__unique_tag(aiq__wire *wire, const char *key, int scope);

/* The producer's step between building a task's wire and publishing it:
 * derive the key (into *key_out, malloc), claim it for `task_id`, and tag
 * the wire. *holder = the id holding the key already (malloc; nothing to
 * publish), else NULL. */
int aiq__unique_enqueue_claim(aiq__unique *u, aiq__wire *wire, char **key_out, char **holder,
                              const char *explicit_key, int64_t ttl_ms, int scope, const char *task,
                              const char *args_json, const char *kwargs_json, const char *task_id);

/* The worker's side: a task starts, or reached `state` (final). Releases
 * the message's key when its scope ends there; failures are logged. */
void aiq__unique_on_start(aiq__unique *u, const aiq__message *m);
void aiq__unique_on_final(aiq__unique *u, const aiq__message *m, int state);

#endif /* AIQ_UNIQUE_H */
