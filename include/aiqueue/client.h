/**
 * @file client.h
 * @brief Producer side: enqueue tasks, read and wait for results, revoke,
 *        forget results.
 *
 * A client owns one broker connection and one result-store connection.
 * Since 0.2 an #aiq_client may be shared by threads: every call except
 * aiq_client_on_complete() and aiq_client_free() may be made from several
 * threads at once. Enqueues made at the same moment are published together
 * (one pipeline or one confirm wait), each call returning once its own
 * task was accepted or refused.
 */
#ifndef AIQUEUE_CLIENT_H
#define AIQUEUE_CLIENT_H

#include <aiqueue/common.h>
#include <aiqueue/config.h>
#include <aiqueue/result.h>

AIQ_BEGIN_DECLS

/** @brief Opaque producer handle. @since 0.1 */
typedef struct aiq_client aiq_client;

/** @brief Opaque per-call enqueue options. @since 0.1 */
typedef struct aiq_enqueue_opts aiq_enqueue_opts;

/**
 * @brief Create enqueue options with nothing set (queue from the config,
 *        fresh task id, no delay, no expiry, priority 0).
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_new(aiq_enqueue_opts **out);

/** @brief Free enqueue options. NULL is a no-op. @since 0.1 */
AIQ_API void aiq_enqueue_opts_free(aiq_enqueue_opts *o);

/**
 * @brief Use this task id instead of a fresh UUID.
 * @return #AIQ_OK, #AIQ_EINVAL (empty, over 155 bytes, or control characters), #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_task_id(aiq_enqueue_opts *o, const char *task_id);

/**
 * @brief Send to this queue instead of the configured `queue`.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_queue(aiq_enqueue_opts *o, const char *queue);

/**
 * @brief Run no earlier than @p countdown_ms from now (sets the ETA).
 * @return #AIQ_OK, #AIQ_EINVAL (negative).
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_countdown_ms(aiq_enqueue_opts *o, int64_t countdown_ms);

/**
 * @brief Run no earlier than this UNIX time in milliseconds (overrides a countdown).
 * @return #AIQ_OK, #AIQ_EINVAL (negative).
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_eta_ms(aiq_enqueue_opts *o, int64_t eta_unix_ms);

/**
 * @brief Expire the task @p expires_ms after it is sent: a worker that gets
 *        it later stores REVOKED instead of running it.
 * @return #AIQ_OK, #AIQ_EINVAL (not positive).
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_expires_ms(aiq_enqueue_opts *o, int64_t expires_ms);

/**
 * @brief Message priority 0–255 (higher first where the broker supports it).
 * @return #AIQ_OK, #AIQ_EINVAL (out of range).
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_priority(aiq_enqueue_opts *o, int priority);

/**
 * @brief Maximum number of retries for this task (overrides `task.max_retries`).
 * @return #AIQ_OK, #AIQ_EINVAL (negative).
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_max_retries(aiq_enqueue_opts *o, int max_retries);

/**
 * @brief Time limits in milliseconds (0 = none): the soft limit raises the
 *        task's cancellation flag, the hard limit ends it with FAILURE
 *        `TimeLimitExceeded`.
 * @return #AIQ_OK, #AIQ_EINVAL (negative, or soft > hard when both set).
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_time_limits(aiq_enqueue_opts *o, int64_t soft_ms, int64_t hard_ms);

/**
 * @brief Ask the worker not to store a result (Celery `ignore_result`).
 * @return #AIQ_OK.
 * @since 0.1
 */
AIQ_API int aiq_enqueue_opts_set_ignore_result(aiq_enqueue_opts *o, int ignore);

/**
 * @brief How long a unique job's key is held (aiq_enqueue_opts_set_unique()).
 * @since 0.2
 */
enum aiq_unique_scope {
	AIQ_UNIQUE_QUEUED = 1,  /**< until a worker starts the task */
	AIQ_UNIQUE_RUNNING = 2, /**< until the task reaches a final state */
	AIQ_UNIQUE_UNTIL_SUCCESS =
	        3 /**< until the task succeeds (after a failure, until the TTL) */
};

/**
 * @brief Make the task a unique job: while its key is held, enqueueing
 *        another task with the same key sends nothing and returns the id
 *        of the task that holds it (aiq_client_enqueue_unique() says so).
 *
 * The key is claimed with the task id and a TTL in one atomic step, on the
 * Redis of `unique.url` (else of `result.url`, else of `broker.url`), or in
 * this process when none is Redis; the worker releases it when @p scope
 * ends; the TTL bounds it in every case (a lost worker, a failure under
 * #AIQ_UNIQUE_UNTIL_SUCCESS). See docs/workflows.md, "Unique jobs".
 *
 * @param o options.
 * @param key the key (copied; 1-200 bytes, printable), or NULL to derive it
 *        from the task name and the canonical JSON of args and kwargs
 *        (sorted keys), hashed.
 * @param ttl_ms how long the key may be held at most, 1 ms to 30 days.
 * @param scope an #aiq_unique_scope value, or 0 to make the task not unique again.
 * @return #AIQ_OK, #AIQ_EINVAL (no options, a bad key, TTL or scope), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_enqueue_opts_set_unique(aiq_enqueue_opts *o, const char *key, int64_t ttl_ms,
                                        int scope);

/**
 * @brief Create a client: connects to `broker.url` and `result.url`.
 * @param[out] out receives the client; free it with aiq_client_free(). NULL on failure.
 * @param cfg configuration (copied).
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ENOMEM, #AIQ_EUNSUPPORTED (scheme not built in),
 *         #AIQ_EBROKER, #AIQ_ESTORE (connection failed; see aiq_error_last()).
 * @since 0.1
 */
AIQ_API int aiq_client_new(aiq_client **out, const aiq_config *cfg);

/** @brief Free a client and close its connections. NULL is a no-op. @since 0.1 */
AIQ_API void aiq_client_free(aiq_client *c);

/**
 * @brief Enqueue one task.
 *
 * Returns once the broker has accepted the message (for brokers with
 * publisher confirms: once it confirmed). The message is Celery protocol v2,
 * so Celery workers can consume it too.
 *
 * @param[out] task_id_out receives the task id (free with aiq_free()), NULL on
 *             failure; may itself be NULL.
 * @param c client.
 * @param task_name registered task name, e.g. "tasks.analyze_track".
 * @param args_json JSON array text of positional arguments, or NULL for `[]`.
 * @param kwargs_json JSON object text of keyword arguments, or NULL for `{}`.
 * @param opts options, or NULL for defaults.
 * @return #AIQ_OK, #AIQ_EINVAL (names, or args not an array / kwargs not an
 *         object), #AIQ_EJSON, #AIQ_ETOOBIG, #AIQ_EBROKER, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_client_enqueue(char **task_id_out, aiq_client *c, const char *task_name,
                               const char *args_json, const char *kwargs_json,
                               const aiq_enqueue_opts *opts);

/**
 * @brief Enqueue one task, as aiq_client_enqueue(), and say whether a
 *        unique job's key (aiq_enqueue_opts_set_unique()) was already held.
 *
 * When the key is held, nothing is sent: @p task_id_out receives the id of
 * the task holding it and @p existing_out 1. Otherwise the key is claimed
 * for the new task before it is published (released again if the publish
 * fails) and @p existing_out is 0. Without unique options this is
 * aiq_client_enqueue() with @p existing_out 0.
 *
 * Thread-safety: as aiq_client_enqueue(); producers racing on one key, in
 * any threads or processes sharing the key's Redis, get exactly one task
 * and all its id.
 *
 * @param[out] task_id_out as for aiq_client_enqueue().
 * @param[out] existing_out receives 1 when an existing task was returned,
 *             else 0 (also on failure); may be NULL.
 * @param c client.
 * @param task_name as for aiq_client_enqueue().
 * @param args_json as for aiq_client_enqueue().
 * @param kwargs_json as for aiq_client_enqueue().
 * @param opts options, or NULL.
 * @return as aiq_client_enqueue(), and #AIQ_ESTORE when the key's store
 *         failed (nothing was sent).
 * @since 0.2
 */
AIQ_API int aiq_client_enqueue_unique(char **task_id_out, int *existing_out, aiq_client *c,
                                      const char *task_name, const char *args_json,
                                      const char *kwargs_json, const aiq_enqueue_opts *opts);

/**
 * @brief Enqueue many tasks of one name, waiting once for the broker.
 *
 * Builds one message per task (as aiq_client_enqueue() does), publishes them
 * all, then waits once until the broker has accepted (for brokers with
 * publisher confirms: confirmed) or refused each of them. Every task gets
 * its own outcome: a task whose args or kwargs are invalid fails alone and
 * the others are still sent; a task the broker refused (RabbitMQ basic.nack,
 * an unroutable message returned), or whose fate is unknown because the
 * connection was lost before its confirm, fails with #AIQ_EBROKER (it may or
 * may not have been queued) and is never reported as accepted.
 *
 * Tasks go to one queue in order; the broker may accept them in any order.
 *
 * @param[out] task_ids_out NULL, or an array of @p n slots: slot i receives
 *             task i's id (free with aiq_free()), or NULL when it failed.
 * @param[out] status_out NULL, or an array of @p n slots: slot i receives
 *             #AIQ_OK or task i's error code.
 * @param c client.
 * @param task_name registered task name, used for every task.
 * @param args_json NULL (every task gets `[]`), or an array of @p n JSON
 *        array texts; a NULL entry means `[]`. Borrowed.
 * @param kwargs_json NULL (every task gets `{}`), or an array of @p n JSON
 *        object texts; a NULL entry means `{}`. Borrowed.
 * @param n number of tasks; 0 does nothing and returns #AIQ_OK.
 * @param opts options for every task, or NULL for defaults. A fixed task id
 *        (aiq_enqueue_opts_set_task_id()) is refused when @p n > 1, and so
 *        are unique options (since 0.2: enqueue unique jobs one by one).
 * @return #AIQ_OK when every task was accepted; otherwise the error code of
 *         the first failed task (in index order) and aiq_error_last() says how
 *         many failed and why the first did: #AIQ_EINVAL (arguments, a fixed
 *         task id with @p n > 1 — then no task is sent), #AIQ_EJSON,
 *         #AIQ_ETOOBIG, #AIQ_EBROKER, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_client_enqueue_batch(char **task_ids_out, int *status_out, aiq_client *c,
                                     const char *task_name, const char *const *args_json,
                                     const char *const *kwargs_json, size_t n,
                                     const aiq_enqueue_opts *opts);

/**
 * @brief Read the current state of a task without waiting.
 * @param[out] out receives the result (PENDING when the store knows nothing);
 *             free with aiq_result_free(). NULL on failure.
 * @param c the client.
 * @param task_id the task's id.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ESTORE, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_client_get_result(aiq_result **out, aiq_client *c, const char *task_id);

/**
 * @brief Wait until a task is done (SUCCESS, FAILURE or REVOKED).
 *
 * Blocks on the store's notification mechanism, not a sleep loop, and cannot
 * miss a result stored just before the call.
 *
 * @param[out] out receives the final result; on #AIQ_ETIMEDOUT it receives
 *             the latest non-final state (caller frees either way when set);
 *             NULL on any other failure.
 * @param c the client.
 * @param task_id the task's id.
 * @param timeout_ms how long to wait, in milliseconds (the Python binding
 *        and the HTTP API's `?wait=` take seconds); negative waits forever.
 * @return #AIQ_OK, #AIQ_ETIMEDOUT, #AIQ_EINVAL, #AIQ_ESTORE, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_client_wait(aiq_result **out, aiq_client *c, const char *task_id,
                            int64_t timeout_ms);

/**
 * @brief Revoke a task: it ends REVOKED. A worker skips it if it has not
 *        started, and raises its cancellation flag if it is running.
 *
 * A task that already reached a final state (SUCCESS, FAILURE, or REVOKED
 * earlier) keeps it: a final state is never replaced. Then the call returns
 * #AIQ_ESTATE and aiq_error_last() names the state the task kept
 * ("task ID already finished as SUCCESS; not revoked").
 *
 * @return #AIQ_OK (the task is now REVOKED), #AIQ_ESTATE (already final:
 *         nothing changed; since 0.2, before which this was reported as
 *         #AIQ_OK), #AIQ_EINVAL, #AIQ_ESTORE.
 * @since 0.1
 */
AIQ_API int aiq_client_revoke(aiq_client *c, const char *task_id);

/**
 * @brief Forget a task's result: delete its stored state from the result
 *        store, as Celery's `AsyncResult.forget()` does.
 *
 * Afterwards aiq_client_get_result() reads PENDING, and any state may be
 * stored for the task again (a worker still running it stores its outcome).
 * The task itself is not revoked and its message, if still queued, is not
 * removed. A call of aiq_client_wait() in progress for the task is not
 * woken: it keeps waiting for a new final state or its timeout.
 *
 * What each store deletes: memory:// drops the record, Redis deletes the key
 * `celery-task-meta-<id>` (the key Celery deletes), PostgreSQL deletes the
 * task's row in `aiq_tasks` (a row in `aiq_analyses` stays).
 *
 * Thread-safety: may be called from several threads at once, like the other
 * calls on a shared client.
 *
 * @param c the client.
 * @param task_id the task's id (borrowed).
 * @return #AIQ_OK (also when nothing was stored for the task), #AIQ_EINVAL
 *         (no client, or a task id that is empty, over 155 bytes or not
 *         printable UTF-8),
 *         #AIQ_EUNSUPPORTED (the result store cannot delete results),
 *         #AIQ_ESTORE (the store failed; the result may remain), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_client_forget(aiq_client *c, const char *task_id);

/**
 * @brief Callback for task completion seen by a client.
 * @param task_id id of the task that reached a final state (borrowed).
 * @param result its result (borrowed, valid during the call).
 * @param userdata as registered.
 * @since 0.1
 */
typedef void (*aiq_completion_fn)(const char *task_id, const aiq_result *result, void *userdata);

/**
 * @brief Be told when tasks enqueued through this client finish.
 *
 * The callback runs once for each task enqueued by @p c after the
 * registration, when it reaches a final state. It runs on a thread that the
 * result store chooses (for memory:// the worker thread that stored the
 * result): it must be quick and must not call back into @p c. One callback
 * per client; registering again replaces it, and @p fn NULL removes it
 * (either way after any call of the old callback has returned; then the old
 * userdata's destructor runs).
 *
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_EUNSUPPORTED (the store cannot notify).
 *         On failure @p destroy is called on @p userdata.
 * @since 0.1
 */
AIQ_API int aiq_client_on_complete(aiq_client *c, aiq_completion_fn fn, void *userdata,
                                   aiq_destroy_fn destroy);

/**
 * @brief Check that the broker and the result store answer.
 *
 * For health checks (`/readyz`): a cheap round trip to each.
 * @return #AIQ_OK, #AIQ_EBROKER or #AIQ_ESTORE (the detail says which and why).
 * @since 0.1
 */
AIQ_API int aiq_client_ping(aiq_client *c);

/**
 * @brief Number of messages ready in a queue (not counting unacknowledged
 *        or delayed ones). Dead letters are in the queue "<queue>.dead".
 * @param[out] count receives the number; 0 on failure.
 * @param c client.
 * @param queue queue name, or NULL for the configured `queue`.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_EBROKER.
 * @since 0.1
 */
AIQ_API int aiq_client_queue_depth(uint64_t *count, aiq_client *c, const char *queue);

/**
 * @brief Remove every ready message from a queue.
 * @param[out] removed receives how many were removed, 0 on failure; may be NULL.
 * @param c client.
 * @param queue queue name, or NULL for the configured `queue`.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_EBROKER.
 * @since 0.1
 */
AIQ_API int aiq_client_purge(uint64_t *removed, aiq_client *c, const char *queue);

AIQ_END_DECLS

#endif /* AIQUEUE_CLIENT_H */
