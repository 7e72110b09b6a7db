/**
 * @file worker.h
 * @brief Consumer side: register task handlers and run them on a thread pool.
 *
 * A worker consumes the configured queues, runs each task on one of
 * `worker.concurrency` threads, stores the outcome, and only then
 * acknowledges the message (at-least-once). Handlers must therefore be
 * idempotent: a task may run again after a crash.
 *
 * Registration calls must happen before aiq_worker_run(). aiq_worker_stop()
 * is the only call that is safe from any thread and from a signal handler.
 */
#ifndef AIQUEUE_WORKER_H
#define AIQUEUE_WORKER_H

#include <aiqueue/common.h>
#include <aiqueue/config.h>
#include <aiqueue/task.h>

AIQ_BEGIN_DECLS

/** @brief Opaque worker handle. @since 0.1 */
typedef struct aiq_worker aiq_worker;

/**
 * @brief A task handler. Runs on a worker pool thread.
 * @param task the task (borrowed for the call); report the outcome on it.
 * @param userdata as registered.
 * @since 0.1
 */
typedef void (*aiq_task_fn)(aiq_task *task, void *userdata);

/** @brief Worker event kinds (the equivalent of Celery's task signals). @since 0.1 */
enum aiq_event {
	AIQ_EVENT_RECEIVED = 1,  /**< a valid message for a known task arrived (consumer thread) */
	AIQ_EVENT_STARTED = 2,   /**< the handler is about to run (pool thread) */
	AIQ_EVENT_SUCCEEDED = 3, /**< SUCCESS was stored (pool thread) */
	AIQ_EVENT_FAILED = 4,    /**< FAILURE was stored (pool or consumer thread) */
	AIQ_EVENT_RETRIED = 5,   /**< the task was rescheduled and RETRY stored (pool thread) */
	AIQ_EVENT_REVOKED = 6,   /**< revoked or expired; not run or stopped (any worker thread) */
	AIQ_EVENT_REJECTED =
	        7 /**< message dead-lettered: undecodable or unknown task (consumer thread) */
};

/**
 * @brief Worker event callback.
 * @param event an #aiq_event.
 * @param task_id id of the task, or NULL when the message could not be decoded.
 * @param task_name name of the task, or NULL when unknown.
 * @param detail extra text: the error message for FAILED/REJECTED, else NULL.
 * @param userdata as registered.
 * @since 0.1
 */
typedef void (*aiq_event_fn)(int event, const char *task_id, const char *task_name,
                             const char *detail, void *userdata);

/**
 * @brief Create a worker (connects nothing until aiq_worker_run()).
 *
 * The built-in analysis task (`analyze.task_name`, default
 * "tasks.analyze_track") and the built-in `lyrics` analyzer are registered
 * already.
 *
 * @param[out] out receives the worker; free it with aiq_worker_free().
 * @param cfg configuration (copied).
 * @return #AIQ_OK, #AIQ_EINVAL (bad option values), #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_worker_new(aiq_worker **out, const aiq_config *cfg);

/**
 * @brief Free a worker. Must not be called while aiq_worker_run() is running.
 *
 * Waits for handler threads that are still running (see the hard time limit
 * in docs/worker.md), then calls every registered destructor once.
 * NULL is a no-op.
 * @since 0.1
 */
AIQ_API void aiq_worker_free(aiq_worker *w);

/**
 * @brief Register a handler for a task name.
 * @param w worker (not running).
 * @param task_name name Celery producers use, e.g. "tasks.add" (copied).
 * @param fn handler.
 * @param userdata passed to every call of @p fn, from several threads at once.
 * @param destroy called once on @p userdata when the worker is freed, or at
 *        once when registration fails. May be NULL.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_EEXIST, #AIQ_ESTATE (running), #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_worker_register(aiq_worker *w, const char *task_name, aiq_task_fn fn,
                                void *userdata, aiq_destroy_fn destroy);

/**
 * @brief Register an event callback (one per worker; again replaces it).
 *
 * The callback may run on several worker threads at once; the event list
 * says which thread calls it for what. It must not block for long.
 *
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ESTATE (running). On failure @p destroy
 *         runs on @p userdata.
 * @since 0.1
 */
AIQ_API int aiq_worker_on_event(aiq_worker *w, aiq_event_fn fn, void *userdata,
                                aiq_destroy_fn destroy);

/**
 * @brief Connect and process tasks until stopped. Blocks the calling thread.
 *
 * @return #AIQ_OK after a graceful stop (in-flight tasks finished);
 *         #AIQ_ECANCELED after an aborting second stop (in-flight deliveries
 *         are returned to the broker unacknowledged);
 *         #AIQ_EBROKER / #AIQ_ESTORE when a connection could not be made;
 *         #AIQ_ESTATE when already running. Details: aiq_worker_error().
 * @since 0.1
 */
AIQ_API int aiq_worker_run(aiq_worker *w);

/**
 * @brief Ask a running worker to stop.
 *
 * The first call stops consuming and lets in-flight tasks finish; the second
 * aborts the wait (handlers see aiq_task_cancelled()). Calling it before
 * aiq_worker_run() makes the next run return at once.
 *
 * Async-signal-safe and thread-safe.
 * @since 0.1
 */
AIQ_API void aiq_worker_stop(aiq_worker *w);

/**
 * @brief Detail of the last error raised on the worker's own threads
 *        (connection lost, store write failed, …).
 * @return a string owned by the worker, valid until the next call on @p w
 *         from this thread; "" when none.
 * @since 0.1
 */
AIQ_API const char *aiq_worker_error(const aiq_worker *w);

/** @brief Counters read with aiq_worker_counter(). @since 0.1 */
enum aiq_counter {
	AIQ_COUNTER_SUCCEEDED = 0, /**< tasks that ended SUCCESS */
	AIQ_COUNTER_FAILED = 1,    /**< tasks that ended FAILURE */
	AIQ_COUNTER_RETRIED = 2,   /**< retries scheduled */
	AIQ_COUNTER_REVOKED = 3,   /**< tasks revoked or expired */
	AIQ_COUNTER_DEAD = 4,      /**< messages dead-lettered */
	AIQ_COUNTER_RUNNING = 5,   /**< handlers running now */
	/** times the consuming broker connection was lost and made again
	 *  (not the first connect) @since 0.2 */
	AIQ_COUNTER_BROKER_RECONNECTS = 6,
	/** UNIX time in ms of the last worker-online / worker-heartbeat event
	 *  the broker took (worker.send_events); 0 = none yet @since 0.2 */
	AIQ_COUNTER_LAST_HEARTBEAT_MS = 7
};

/**
 * @brief Counters since the worker was created.
 *
 * A counter moves right after the outcome is stored, so a client that has
 * just seen a result may briefly read the old value.
 *
 * @param w worker.
 * @param which an #aiq_counter.
 * @return the counter, or -1 for an unknown @p which. Thread-safe.
 * @since 0.1
 */
AIQ_API int64_t aiq_worker_counter(const aiq_worker *w, int which);

AIQ_END_DECLS

#endif /* AIQUEUE_WORKER_H */
