/*
 * The private result-store driver interface; same pattern as broker.h.
 *
 * Rule every store keeps: a final state (SUCCESS, FAILURE, REVOKED) is never
 * replaced by a later write; put() then returns AIQ_ESTATE and changes nothing.
 *
 * Threading: a store handle is thread-safe (a worker's pool threads share
 * one); drivers whose connection is single-threaded serialize internally.
 */
#ifndef AIQ_STORE_H
#define AIQ_STORE_H

#include "internal.h"
#include "result_int.h"

typedef struct aiq__store_ops aiq__store_ops;

typedef struct aiq__store {
	const aiq__store_ops *ops;
} aiq__store;

/* Completion callback: runs for every final state written through any handle
 * of the same store, on the writer's thread or a driver thread. */
typedef void (*aiq__store_notify_fn)(const aiq_result *r, void *userdata);

enum {
	/* subscribe() is implemented */
	AIQ__STORE_CAP_NOTIFY = 1u << 0,
};

struct aiq__store_ops {
	const char *name;
	const char *const *schemes;
	unsigned caps;

	int (*open)(aiq__store **out, const char *url, const aiq_config *cfg);
	void (*close)(aiq__store *s);

	/* Store a state. AIQ_ESTATE when a final state is already stored. */
	int (*put)(aiq__store *s, const aiq_result *r);
	/* Current state; a PENDING result when the store knows nothing. */
	int (*get)(aiq__store *s, aiq_result **out, const char *task_id);
	/* Block until the task is final or timeout_ms passes (negative = forever).
	 * On AIQ_ETIMEDOUT *out still receives the latest state. */
	int (*wait)(aiq__store *s, aiq_result **out, const char *task_id, int64_t timeout_ms);
	/* Register (fn != NULL) or remove (fn == NULL) this handle's completion
	 * callback. Removal waits until no call of the old callback is running. */
	int (*subscribe)(aiq__store *s, aiq__store_notify_fn fn, void *userdata);
	/* A cheap round trip to the server; NULL when there is nothing to check. */
	int (*ping)(aiq__store *s);
};

int aiq__store_lookup(const aiq__store_ops **out, const char *url);
int aiq__store_open(aiq__store **out, const char *url, const aiq_config *cfg);
void aiq__store_close(aiq__store *s);

extern const aiq__store_ops aiq__memory_store_ops;

#endif /* AIQ_STORE_H */
