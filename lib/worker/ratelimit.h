/*
 * Rate limits shared by every worker (docs/workflows.md, "Rate limits").
 *
 * worker.rate_limits is a ';'-separated list of rules, the first whose
 * pattern matches a task's name applies:
 *
 *   PATTERN=RATE[,key=kwarg:NAME|header:NAME|arg:N][,burst=N][,cost=N][,charge=PATH]
 *                [,concurrency=N]
 *   PATTERN=concurrency=N[,key=...]    (no rate: concurrency only)
 *
 * PATTERN is a glob on the task name (fnmatch: `llm.*`); RATE is Celery's
 * rate string (`10/s`, `100/m`, `5/h`, a plain number = per second). One
 * token bucket per rule and key value holds `burst` tokens (default 1) and
 * refills at RATE; a task takes `cost` tokens (default 1) before it runs,
 * and after a success `charge=PATH` takes the integer found at that dotted
 * path of its stored result (e.g. analysis.usage.total_tokens) minus the
 * cost already taken, so a budget of LLM tokens per minute can be the
 * limit. Buckets live in Redis or PostgreSQL (coord.h: worker.rate_limit_url,
 * else the result store's or the broker's Redis, else a PostgreSQL result
 * store), updated in one atomic step on the server's clock; with neither,
 * in the worker's memory.
 *
 * A task takes its tokens when it is received, even when the bucket lacks
 * them (the bucket goes into debt): the wait returned is when its turn
 * comes, so tasks queue up in arrival order rather than racing again each
 * time tokens appear. The consumer parks a task whose turn is later in the
 * broker with that ETA and the header AIQ__RATE_SLOT_HEADER: the parked
 * copy holds its turn and runs without taking tokens again.
 */
#ifndef AIQ_RATELIMIT_H
#define AIQ_RATELIMIT_H

#include "internal.h"
#include "message.h"

/* Header of a parked copy: the UNIX ms its tokens were reserved for. */
#define AIQ__RATE_SLOT_HEADER "x-aiq-rate-slot"
/* A parked copy that comes back later than this after its turn (workers
 * were down) takes its tokens again, so a backlog does not run at once. */
#define AIQ__RATE_SLOT_GRACE_MS 1000

typedef struct aiq__ratelimit aiq__ratelimit;

/* Celery's rate string: "10/s", "100/m", "5/h", or a plain number (per
 * second), over `len` bytes. *per_s > 0. AIQ_EINVAL with a message. */
int aiq__rate_parse(double *per_s, const char *text, size_t len);

/* The limits of worker.rate_limits and where their buckets live. A spec
 * error is AIQ_EINVAL naming the rule and what is wrong. */
int aiq__ratelimit_new(aiq__ratelimit **out, const aiq_config *cfg);
void aiq__ratelimit_free(aiq__ratelimit *r);

/* Take a task's tokens: *wait_ms = 0 when it may run now, else how long
 * until its turn. No rule for the task: 0 and no round trip. A failure of
 * the bucket's store returns its code (the caller retries later). Any
 * thread. */
int aiq__ratelimit_reserve(int64_t *wait_ms, aiq__ratelimit *r, const aiq__message *m);

/* A parked copy whose turn is now (within AIQ__RATE_SLOT_GRACE_MS of
 * `now`, UNIX ms) holds its tokens: true. The header is removed from the
 * message either way, so a retry built from it takes tokens again. */
bool aiq__ratelimit_redeem(aiq__message *m, int64_t now);

/* Mark a parked copy: its tokens were taken for `turn` (UNIX ms). Sets
 * the header in `headers` (a wire's) when given, else in the message's. */
int aiq__ratelimit_mark(json_t *headers, aiq__message *m, int64_t turn);

/* After a success: charge what the rule's `charge` path of the stored
 * result says beyond the cost taken. Failures are logged. Any thread. */
void aiq__ratelimit_charge(aiq__ratelimit *r, const aiq__message *m, const char *result_json);

/* Remote control `rate_limit`: replace (or add, first) the rule for
 * exactly `task_name`; rate NULL, "" or "0" removes it. AIQ_EINVAL for a
 * bad rate. Any thread. */
int aiq__ratelimit_set(aiq__ratelimit *r, const char *task_name, const char *rate);

/*
 * Concurrency limits: a rule's `concurrency=N` lets at most N tasks it
 * matches (per key value, with `key=`) run at once across every worker
 * sharing the limits' Redis or PostgreSQL (else in this worker). A slot is
 * a lease of AIQ__CONCURRENCY_LEASE_MS that the worker renews every
 * AIQ__CONCURRENCY_RENEW_MS while the task runs, so a worker killed with
 * kill -9 frees its slots when their leases end.
 */
#define AIQ__CONCURRENCY_LEASE_MS 30000
#define AIQ__CONCURRENCY_RENEW_MS 10000

/* A concurrency slot a task holds. */
typedef struct aiq__ratelimit_slot {
	char *key;    /* the rule's key for the task */
	char *member; /* this acquisition */
} aiq__ratelimit_slot;

/* Take a slot for the task: AIQ_OK with *slot set (give it to release,
 * which frees it) when it holds one; AIQ_OK with *slot NULL when no rule
 * limits its concurrency, or with *full true when every slot is taken; a
 * store error's code otherwise. Any thread. */
int aiq__ratelimit_acquire(aiq__ratelimit_slot **slot, bool *full, aiq__ratelimit *r,
                           const aiq__message *m);
/* Give the slot back and free it (a failure is logged: the lease ends by
 * itself). NULL is a no-op. */
void aiq__ratelimit_release(aiq__ratelimit *r, aiq__ratelimit_slot *slot);
/* Extend a slot's lease. */
void aiq__ratelimit_renew(aiq__ratelimit *r, const aiq__ratelimit_slot *slot);
/* A copy (for renewing outside the worker's lock), and its free. */
int aiq__ratelimit_slot_copy(aiq__ratelimit_slot **out, const aiq__ratelimit_slot *slot);
void aiq__ratelimit_slot_free(aiq__ratelimit_slot *slot);

#endif /* AIQ_RATELIMIT_H */
