/*
 * The worker's private interface between its parts. A delivery's path reads
 * in one direction through them:
 *
 *   consumer.c  fetch -> decide (undecodable, unregistered, expired, ETA)
 *   pool.c      run (threads, time limits, revocation, abandoned threads)
 *   pool_process.c  with worker.pool = processes, each pool thread runs its
 *               tasks' handlers in a forked child process instead (the
 *               child: proc_child.c; the fork server: proc_server.c)
 *   outcome.c   store -> ack / retry with backoff / dead letter; the archive
 *
 * registry.c holds handlers, analyzers (built-ins from a table) and plugins;
 * worker.c is the glue (new, free, run, stop); task.c and analyze_task.c are
 * the handler's view of a task.
 *
 * Every delivery is in exactly one place until it is disposed of:
 *   held (ETA within the horizon) -> ready -> running -> done -> acked/rejected
 * and `inflight` counts all of them, so the prefetch bound holds end to end.
 */
#ifndef AIQ_WORKER_INT_H
#define AIQ_WORKER_INT_H

#include "broker.h"
#include "message.h"
#include "store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

enum task_outcome { OUTCOME_NONE, OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_RETRY };

/* What the consumer thread does with a finished task's delivery. */
enum task_disposition { DISPOSE_ACK, DISPOSE_REQUEUE, DISPOSE_NONE };

struct handler {
	char *name;
	aiq_task_fn fn;
	void *userdata;
	aiq_destroy_fn destroy;
};

/* Turns a result (parsed) into the text stored instead (malloc, NULL when
 * out of memory): see aiq__task_wrap_result(). */
typedef char *(*aiq__result_wrap_fn)(const json_t *result, void *ctx);

struct aiq_task {
	aiq_worker *w;
	aiq__delivery *delivery; /* owned until the consumer thread disposes of it */
	aiq__message msg;
	const struct handler *handler;
	char *args_json;
	char *kwargs_json;
	int max_retries;
	int64_t soft_deadline; /* monotonic ms, 0 = none */
	int64_t hard_deadline; /* monotonic ms, 0 = none */
	int64_t started_mono;
	int64_t hold_until_ms; /* ETA (UNIX ms) while held in memory */

	/* Outcome reported by the handler. */
	enum task_outcome outcome;
	char *result_json;
	char *exc_type;
	char *exc_message;
	char *exc_module;
	char *traceback; /* aiq_task_set_traceback() */
	int64_t retry_countdown_ms;
	/* Why a report was refused (invalid result JSON, out of memory); when
	 * no valid outcome follows, the task ends FAILURE InvalidResultError. */
	char invalid_report[300];
	/* The analysis task's wrapper of the JSON its analyzer reports. */
	aiq__result_wrap_fn wrap;
	void *wrap_ctx;

	atomic_int cancel; /* 0, AIQ_ETIMEDOUT (soft limit) or AIQ_ECANCELED */
	bool revoked;      /* revoked while running (consumer thread, under lock) */
	/* Revoked with terminate and REVOKED stored (control thread): the
	 * process pool kills the child running it. */
	atomic_bool terminate;
	bool terminated;  /* its pool process was killed for it (under lock) */
	int final_before; /* state already final before it ran (it did not run); 0 = none */
	int64_t state_checked_mono; /* when the consumer read its state (monotonic ms); 0 = not */
	bool abandoned; /* hard limit or abort: the consumer disposed of it (under lock) */
	bool overdue;   /* abandoned at its hard time limit (under lock) */
	bool held;      /* abandon_overdue (pool.c) still reads it unlocked (under lock) */
	bool retired;   /* its thread returned while held: the holder frees it (under lock) */
	char *queue;    /* queue it came from (the delivery may go before the handler ends) */
	struct aiq__ratelimit_slot *slot; /* its concurrency slot (ratelimit.h), given back when
	                                   * it is freed */
	enum task_disposition disposition;
	/* Set in a pool child process (pool_process.c): states the handler
	 * reports (progress) go to the parent, which stores them. */
	int (*forward_state)(aiq_task *t, int state, const char *json);

	struct aiq_task *next; /* in one of the worker's lists */
	struct aiq_task *prev;
};

#define TICK_MS 50 /* longest the consumer blocks before re-checking flags */
/* A state the consumer read at fetch time stands for the read before the
 * task runs while it is younger than this (older: read again). */
#define STATE_FRESH_MS 250
#define ERRBUF         512

struct analyzer {
	char *name;
	aiq_analyzer_fn fn;
	void *userdata;
	aiq_destroy_fn destroy;
	bool builtin; /* a user analyzer of the same name replaces it */
};

struct plugin_handle {
	void *handle;
	void (*close)(void *handle);
};

struct list {
	aiq_task *head, *tail;
	size_t n;
};

struct pool_thread {
	pthread_t id;
	bool retired; /* exited its loop: the consumer joins it (aiq__pool_reap) */
};

/* worker.pool: where handlers run. */
enum pool_kind { POOL_THREADS, POOL_PROCESSES };

/* A pool thread's child process (worker.pool = processes). */
struct proc_exit {
	pid_t pid;
	int status; /* as waitpid() gives it */
};

struct proc_slot {
	pid_t pid;     /* -1 = none running */
	int fd;        /* the parent's end of the socket pair */
	int64_t tasks; /* tasks this child ran (worker.max_tasks_per_child) */
};

/* In the order of the public enum aiq_counter (aiq_worker_counter reads them). */
enum {
	CNT_SUCCEEDED,
	CNT_FAILED,
	CNT_RETRIED,
	CNT_REVOKED,
	CNT_DEAD,
	CNT_RUNNING,
	CNT_RECONNECTS,   /* consumer.c, from aiq__broker_reconnects() */
	CNT_LAST_BEAT_MS, /* events.c: UNIX ms of the last heartbeat sent */
	CNT_N
};

struct aiq_worker {
	aiq_config *cfg;
	struct handler *handlers;
	size_t nhandlers;
	struct analyzer *analyzers;
	size_t nanalyzers;
	aiq_event_fn event_fn;
	void *event_ud;
	aiq_destroy_fn event_destroy;
	struct plugin_handle *plugins; /* closed after every destructor ran */
	size_t nplugins;

	int concurrency;
	size_t prefetch;
	char **queues;
	size_t nqueues;
	char hostname[256];
	int max_retries;
	int64_t soft_limit_ms, hard_limit_ms;
	int64_t limit_min_ms, limit_max_ms; /* clamp for producer-chosen limits; 0 = none */
	size_t max_abandoned;               /* worker.max_abandoned_threads */
	int64_t eta_horizon_ms;
	bool track_started;
	enum pool_kind pool_kind;    /* worker.pool */
	int64_t max_tasks_per_child; /* processes: 0 = no limit */
	int64_t max_memory_kib;      /* processes: resident KiB per child, 0 = no limit */
	/* The fork server (pool_process.c): forked at run start, it forks the
	 * children and reports how each ended. */
	pthread_mutex_t server_lock; /* one exchange with it at a time; guards exits */
	int server_fd;               /* -1 = none */
	pid_t server_pid;
	struct proc_exit *exits; /* ends of children reported and not yet taken */
	size_t nexits, cap_exits;
	atomic_llong jobs; /* job numbers, as billiard's, for WorkerLostError */

	aiq__broker *consumer;
	aiq__broker *publisher;
	pthread_mutex_t pub_lock;
	aiq__store *store;
	aiq__store *archive; /* archive.url: final states are also written here */

	/* Group commit of result writes (outcome.c): queued writes, and whether
	 * a leader is committing a group. */
	pthread_mutex_t put_lock;
	pthread_cond_t put_cv;
	struct aiq__put_entry *put_head, *put_tail;
	bool put_writing;
	/* Tests only: how long each group commit takes at least (µs, 0 =
	 * none), so that writers that finish together overlap whatever the
	 * machine's scheduling (tests/unit/test_worker.c). */
	unsigned test_commit_delay_us;
	/* How the data path batched (for tests): result writes and the groups
	 * that committed them, acknowledgements and the batches that sent them. */
	atomic_size_t put_writes, put_groups, acked, ack_batches;
	/* Fetches that returned deliveries, and the deliveries they returned. */
	atomic_size_t fetches, fetched;
	atomic_size_t decodes_skipped; /* deliveries that carried their decoded message */
	/* Batched state reads of fetched tasks (check_states in consumer.c). */
	atomic_size_t state_batches;

	pthread_mutex_t lock;
	pthread_cond_t work_cv;     /* pool threads wait for ready tasks */
	pthread_cond_t consumer_cv; /* consumer waits for done tasks when at prefetch */
	struct list held, ready, running, done;
	int64_t slots_renewed_mono; /* concurrency leases last renewed (consumer thread) */
	size_t inflight;
	bool quit;                   /* pool threads exit when ready is empty */
	bool consumer_idle;          /* consumer blocked on consumer_cv (not in fetch) */
	struct pool_thread *threads; /* started and not yet joined */
	size_t nthreads, cap_threads;
	/* Threads still running a handler abandoned at its hard time limit, and
	 * replacements not started because that count reached max_abandoned:
	 * while any is missing the consumer takes no new work. */
	size_t nabandoned, missing;
	/* Stop/abort ordering: pool threads wake the consumer only through
	 * wake_target, cleared before the consumer is closed; once an abort
	 * handed everything back (discard_done), finished tasks are not queued
	 * for a consumer that no longer holds their deliveries. */
	aiq__broker *wake_target;
	bool discard_done;

	atomic_int stop_requests;
	atomic_bool running_flag;
	atomic_llong counters[CNT_N];

	/* Celery events and remote control (events.h). */
	struct aiq__events *events;
	struct aiq__control *control;
	struct aiq__ratelimit *ratelimit; /* worker.rate_limits (ratelimit.h) */
	struct aiq__unique *unique;       /* releases unique jobs' keys (unique.h) */
	struct aiq__embed_sink *embed;    /* analysed texts' embeddings (embed_sink.h) */
	atomic_llong lamport;             /* the Lamport clock events and replies carry */
	int64_t started_at_ms;            /* UNIX ms the last run started (stats uptime) */

	pthread_mutex_t err_lock;
	char err[ERRBUF];
	char err_copy[ERRBUF];
};

/* ---- lists (the caller holds w->lock) ------------------------------------ */

static inline void aiq__list_push(struct list *l, aiq_task *t)
{
	t->next = NULL;
	t->prev = l->tail;
	if (l->tail)
		l->tail->next = t;
	else
		l->head = t;
	l->tail = t;
	l->n++;
}

static inline void aiq__list_remove(struct list *l, aiq_task *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		l->head = t->next;
	if (t->next)
		t->next->prev = t->prev;
	else
		l->tail = t->prev;
	t->next = t->prev = NULL;
	l->n--;
}

static inline aiq_task *aiq__list_pop(struct list *l)
{
	aiq_task *t = l->head;
	if (t)
		aiq__list_remove(l, t);
	return t;
}

/* ---- worker.c: glue ------------------------------------------------------- */

/* The per-handle error message (aiq_worker_error). Any thread. */
void aiq__worker_seterr(aiq_worker *w, const char *fmt, ...) AIQ__PRINTF(2, 3);
/* Call the event callback, if any. Any thread. */
void aiq__worker_emit(aiq_worker *w, int event, const char *id, const char *name,
                      const char *detail);
/* The same for a task at hand, whose Celery event then carries its fields
 * (args, result, runtime...); exc_type NULL = the task's own. */
void aiq__worker_emit_task(aiq_worker *w, int event, const aiq_task *t, const char *exc_type,
                           const char *detail);

/* ---- registry.c ------------------------------------------------------------ */

const struct handler *aiq__registry_find_handler(const aiq_worker *w, const char *name);
/* Register the analysis task and every built-in analyzer of the table. */
int aiq__registry_add_builtins(aiq_worker *w, const aiq_config *cfg);
/* Destructors of handlers, analyzers and the event callback, then the plugins. */
void aiq__registry_free(aiq_worker *w);
/* aiq__worker_add_builtin_analyzer() and aiq__worker_keep_plugin(): analyzer.h */
/* Analyzer used when a task names none. */
const char *aiq__worker_default_analyzer(const aiq_worker *w);
/* Look up a registered analyzer. */
int aiq__worker_find_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn *fn, void **ud);

/* Handler of the built-in analysis task; userdata is the worker. */
void aiq__analyze_task(aiq_task *t, void *userdata);

/* ---- consumer.c: fetch -> decide ------------------------------------------ */

/* The consuming loop of aiq_worker_run, with the pool started. Returns the
 * run's error (AIQ_OK on a clean stop); *aborted tells whether everything
 * unfinished was handed back (second stop, or a consuming error). */
int aiq__consumer_loop(aiq_worker *w, bool *aborted);

/* ---- control.c: queue changes (add_consumer, cancel_consumer) -------------- */

/* Apply the queue changes remote control asked for: called by the consumer
 * thread, which owns w->consumer, once per tick. Cheap when none is pending. */
void aiq__control_apply_queues(aiq_worker *w);

/* ---- pool.c: run ------------------------------------------------------------ */

/* Start one pool thread. w->lock held. */
int aiq__pool_spawn(aiq_worker *w);
/* Join every pool thread (consumer thread or aiq_worker_free). */
void aiq__pool_join(aiq_worker *w);
/* Join threads that retired after a hard time limit. Lock not held. */
void aiq__pool_reap(aiq_worker *w);
/* Soft/hard time limits and revocation of running tasks. Consumer thread. */
void aiq__pool_supervise(aiq_worker *w, int64_t *last_revoke_check);
/* Pool threads started and not yet joined, those running and those that
 * retired but were not reaped yet (for tests). */
size_t aiq__worker_thread_count(aiq_worker *w);
/* How the data path batched so far (for tests); any pointer may be NULL. */
void aiq__worker_batch_stats(aiq_worker *w, size_t *put_writes, size_t *put_groups, size_t *acked,
                             size_t *ack_batches);

/* Fetches that returned deliveries and how many they returned (for tests,
 * consumer.c); either pointer may be NULL. */
void aiq__worker_fetch_stats(aiq_worker *w, size_t *fetches, size_t *fetched);
/* For tests: deliveries taken without a decode (a process-local broker
 * handed over the publisher's model). */
size_t aiq__worker_decodes_skipped(aiq_worker *w);

/* ---- pool_process.c: handlers in child processes -------------------------- */

/* Start the fork server: at run start, before any pool thread or connection
 * exists, so every child is forked from a process with one thread. */
int aiq__proc_server_start(aiq_worker *w);
/* End the fork server, once every pool thread was joined. */
void aiq__proc_server_stop(aiq_worker *w);
/* Have the slot's child forked if it has none. AIQ_OK or AIQ_ERROR. */
int aiq__proc_start(aiq_worker *w, struct proc_slot *s);
/* Run the task's handler in the slot's child and record its outcome in t,
 * as the handler would have: a child that dies ends the task FAILURE
 * WorkerLostError and is replaced; the hard time limit kills the child
 * (FAILURE TimeLimitExceeded). Pool thread, lock not held. */
void aiq__proc_run(aiq_worker *w, struct proc_slot *s, aiq_task *t);
/* End the slot's child: ask it to exit (it is idle), or kill it. */
void aiq__proc_stop(aiq_worker *w, struct proc_slot *s, bool kill_it);

/* ---- outcome.c: store -> ack / retry / dead letter ------------------------ */

/* Decide and store a finished task's outcome (pool thread); returns what
 * the consumer does with its delivery. */
enum task_disposition aiq__outcome_finish(aiq_worker *w, aiq_task *t);
/* What follows the task's REVOKED (TaskRevokedError `why`): when it was
 * stored, its chord hears of the part; its unique key goes, the count and
 * the event (with `event_detail`). */
void aiq__outcome_revoked(aiq_worker *w, aiq_task *t, bool stored, const char *why,
                          const char *event_detail);
/* Store a state (and a final one in the archive). Any thread. */
int aiq__outcome_store(aiq_worker *w, const char *id, const char *parent_id, int state,
                       const char *json, const char *exc_type, const char *exc_message,
                       const char *exc_module, const char *traceback);
/* Store a state for a running task, honouring ignore_result. */
int aiq__worker_store_state(aiq_worker *w, aiq_task *t, int state, const char *json,
                            const char *exc_type, const char *exc_message, const char *exc_module);
/* Publish through the worker's shared publishing connection. Any thread. */
int aiq__outcome_publish(aiq_worker *w, const char *queue, const aiq__wire *wire,
                         int64_t not_before);
/* Ack or requeue a delivery (consumer thread); NULL is a no-op. */
void aiq__outcome_dispose(aiq_worker *w, aiq__delivery *d, const char *id,
                          enum task_disposition disp);
/* Dead-letter a delivery with the reason, or leave it on the broker when
 * that fails (consumer thread). */
void aiq__outcome_dead_letter(aiq_worker *w, aiq__delivery *d, const char *id, const char *name,
                              const char *reason);
/* Ack or requeue every finished task on the done list (consumer thread). */
void aiq__outcome_settle(aiq_worker *w);

void aiq__task_free(aiq_task *t);
/* Free what a task owns (message, strings) but not the task or its delivery. */
void aiq__task_release(aiq_task *t);
/* From now on aiq_task_succeed() stores wrap(result, ctx) instead of the
 * result it is given (NULL fn: the result itself again). */
void aiq__task_wrap_result(aiq_task *t, aiq__result_wrap_fn fn, void *ctx);

#endif /* AIQ_WORKER_INT_H */
