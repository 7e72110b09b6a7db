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
	/* Optional (NULL: the front calls get() for each). Current states of
	 * n tasks in as few round trips as the store allows (one MGET, one
	 * query); out[i] and status[i] receive what get() would give for
	 * task_ids[i] (out[i] NULL where status[i] is an error). Returns AIQ_OK
	 * when the batch reached the store, else the connection's error (then
	 * every status is that error and every out[i] NULL). */
	int (*get_batch)(aiq__store *s, aiq_result **out, const char *const *task_ids, size_t n,
	                 int *status);
	/* Block until the task is final or timeout_ms passes (negative = forever).
	 * On AIQ_ETIMEDOUT *out still receives the latest state. */
	int (*wait)(aiq__store *s, aiq_result **out, const char *task_id, int64_t timeout_ms);
	/* Register (fn != NULL) or remove (fn == NULL) this handle's completion
	 * callback. Removal waits until no call of the old callback is running. */
	int (*subscribe)(aiq__store *s, aiq__store_notify_fn fn, void *userdata);
	/* A cheap round trip to the server; NULL when there is nothing to check. */
	int (*ping)(aiq__store *s);
	/* Optional (NULL: the front gives AIQ_EUNSUPPORTED). Delete the task's
	 * stored state, as Celery's AsyncResult.forget() does; AIQ_OK also when
	 * nothing was stored. Afterwards get() reads PENDING and a later put()
	 * may store any state again. A wait() in progress is not woken: it keeps
	 * waiting for a new final state or its deadline. */
	int (*forget)(aiq__store *s, const char *task_id);
	/* Optional (NULL: the front gives AIQ_EUNSUPPORTED). Celery 5.2's
	 * Redis chord join (RedisBackend.set_chord_size and
	 * on_chord_part_return, docs/workflows.md): set the size of chord
	 * `group_id`'s header; then record one header part's entry (the JSON
	 * text [1, task_id, state, result]) at score group_index (-1 = +inf).
	 * *ready receives the JSON array of every part's entry, in group_index
	 * order, only for the call whose part completed the header (else NULL);
	 * chord_done then deletes the chord's keys. The PostgreSQL and memory
	 * stores join with the same calls but count a part once (by task id and
	 * by group_index) and answer *ready also to the completing part's own
	 * repeat (postgres.c, memory.c). */
	int (*chord_set_size)(aiq__store *s, const char *group_id, int64_t size);
	int (*chord_part_return)(aiq__store *s, const char *group_id, int64_t group_index,
	                         const char *entry, char **ready);
	int (*chord_done)(aiq__store *s, const char *group_id);
	/* Optional (NULL: AIQ_EUNSUPPORTED). A group's saved result, as Celery
	 * 5.2's backend.save_group / restore_group keep it: the meta JSON text
	 * under the group's key. get_group gives *meta NULL when none is saved. */
	int (*put_group)(aiq__store *s, const char *group_id, const char *meta);
	int (*get_group)(aiq__store *s, const char *group_id, char **meta);
	/* Optional, all or none (NULL: AIQ_EUNSUPPORTED). Coordination state
	 * shared by every process using the store, for coord.h (rate limits,
	 * unique jobs, concurrency slots), each call atomic on the server and
	 * timed by the server's clock:
	 * - bucket: the token bucket of coord.h's aiq__coord_bucket;
	 * - claim / release: a key held by one value for ttl_ms (*holder =
	 *   NULL when this call claimed it or `value` holds it already, else a
	 *   copy of the holder); release deletes it only while `value` holds it;
	 * - lease_take / lease_renew / lease_drop: at most `limit` live leases
	 *   per key (a lease ends lease_ms after it was taken or renewed; ended
	 *   ones are dropped first); *got false when every one is taken, true
	 *   also when `member` holds one already (it is extended). */
	int (*bucket)(aiq__store *s, int64_t *wait_us, double *tokens, const char *key, double rate,
	              double burst, double cost, bool take);
	int (*claim)(aiq__store *s, char **holder, const char *key, const char *value,
	             int64_t ttl_ms);
	int (*release)(aiq__store *s, const char *key, const char *value);
	int (*lease_take)(aiq__store *s, bool *got, const char *key, const char *member, long limit,
	                  int64_t lease_ms);
	int (*lease_renew)(aiq__store *s, const char *key, const char *member, int64_t lease_ms);
	int (*lease_drop)(aiq__store *s, const char *key, const char *member);
};

int aiq__store_lookup(const aiq__store_ops **out, const char *url);
int aiq__store_open(aiq__store **out, const char *url, const aiq_config *cfg);
void aiq__store_close(aiq__store *s);

/* Front functions: the core reaches drivers only through these (nothing
 * else touches ->ops). They check once what every driver would otherwise
 * repeat: a result to store is non-NULL with a non-empty task id and a
 * known state; a task id to read is non-empty; a driver's answer is a
 * result of a known state for the id asked (else AIQ_ESTORE, nothing
 * handed out); a state after a final one in the same batch is refused with
 * AIQ_ESTATE without reaching the driver. The "final state never replaced"
 * rule across writers stays the driver's atomic check. */
const char *aiq__store_name(const aiq__store *s);
/* The driver's AIQ__STORE_CAP_* bits (0 for NULL). */
unsigned aiq__store_caps(const aiq__store *s);
int aiq__store_put(aiq__store *s, const aiq_result *r);
/* Falls back to put() for each when the driver has no put_batch. */
int aiq__store_put_batch(aiq__store *s, const aiq_result *const *rs, size_t n, int *status);
int aiq__store_get(aiq__store *s, aiq_result **out, const char *task_id);
/* Falls back to get() for each when the driver has no get_batch. Each
 * answer is checked as get()'s is (status[i] AIQ_ESTORE and out[i] NULL
 * for an invalid one; AIQ_EINVAL for an empty id, not sent to the driver).
 * The caller frees every out[i]. */
int aiq__store_get_batch(aiq__store *s, aiq_result **out, const char *const *task_ids, size_t n,
                         int *status);
int aiq__store_wait(aiq__store *s, aiq_result **out, const char *task_id, int64_t timeout_ms);
/* fn != NULL needs CAP_NOTIFY (AIQ_EUNSUPPORTED); removal is always AIQ_OK
 * when the store cannot notify. */
int aiq__store_subscribe(aiq__store *s, aiq__store_notify_fn fn, void *userdata);
/* AIQ_OK when the driver has nothing to check. */
int aiq__store_ping(aiq__store *s);
/* AIQ_EUNSUPPORTED naming the driver when it has no forget. */
int aiq__store_forget(aiq__store *s, const char *task_id);

/* AIQ_EUNSUPPORTED naming the driver when it cannot join chords. */
int aiq__store_chord_set_size(aiq__store *s, const char *group_id, int64_t size);
int aiq__store_chord_part_return(aiq__store *s, const char *group_id, int64_t group_index,
                                 const char *entry, char **ready);
int aiq__store_chord_done(aiq__store *s, const char *group_id);
/* The task id (*task_id, the caller frees it) of a part's entry, the JSON
 * text [1, task_id, state, result]; AIQ_EINVAL for any other text. The
 * front checks every entry with it; drivers that deduplicate parts by task
 * id read it with it. */
int aiq__store_chord_entry_id(char **task_id, const char *entry);
/* AIQ_EUNSUPPORTED naming the driver when it cannot save groups. */
int aiq__store_put_group(aiq__store *s, const char *group_id, const char *meta);
int aiq__store_get_group(aiq__store *s, const char *group_id, char **meta);
/* AIQ_EUNSUPPORTED naming the driver when it keeps no coordination state;
 * AIQ_EINVAL for an empty key or value, a rate, burst or cost that is not
 * positive (cost may be 0), a limit or a time below 1. */
int aiq__store_bucket(aiq__store *s, int64_t *wait_us, double *tokens, const char *key, double rate,
                      double burst, double cost, bool take);
int aiq__store_claim(aiq__store *s, char **holder, const char *key, const char *value,
                     int64_t ttl_ms);
int aiq__store_release(aiq__store *s, const char *key, const char *value);
int aiq__store_lease_take(aiq__store *s, bool *got, const char *key, const char *member, long limit,
                          int64_t lease_ms);
int aiq__store_lease_renew(aiq__store *s, const char *key, const char *member, int64_t lease_ms);
int aiq__store_lease_drop(aiq__store *s, const char *key, const char *member);

extern const aiq__store_ops aiq__memory_store_ops;

#endif /* AIQ_STORE_H */
