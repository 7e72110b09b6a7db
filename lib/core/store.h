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
	/* Optional (NULL: the front calls put() for each). Store n states in as
	 * few round trips as the store allows (one pipeline, one transaction),
	 * each exactly as put() would; status[i] receives put()'s code for
	 * result i (AIQ_ESTATE where a final state was already stored). Every
	 * entry is written. Returns AIQ_OK when the batch reached the store,
	 * else the connection's error (then every status is that error). */
	int (*put_batch)(aiq__store *s, const aiq_result *const *rs, size_t n, int *status);
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

/* Front function over put_batch (falls back to put() for each). */
int aiq__store_put_batch(aiq__store *s, const aiq_result *const *rs, size_t n, int *status);

extern const aiq__store_ops aiq__memory_store_ops;

#endif /* AIQ_STORE_H */
