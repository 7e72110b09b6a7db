/**
 * @file task.h
 * @brief A task as its handler sees it, and the outcomes a handler reports.
 *
 * An #aiq_task is lent to a handler for the duration of one call. Accessors
 * return borrowed strings that live as long as the call. A handler reports
 * at most one outcome: aiq_task_succeed(), aiq_task_fail() or
 * aiq_task_retry(); a handler that returns without one succeeds with a
 * `null` result, but one whose every report was refused (invalid result
 * JSON, out of memory) ends FAILURE `InvalidResultError` with the reason. aiq_task_progress() may be called any number of times
 * before the outcome.
 *
 * All functions here may be called only from the thread running the handler,
 * except aiq_task_cancelled(), which any thread may call while the handler
 * runs.
 */
#ifndef AIQUEUE_TASK_H
#define AIQUEUE_TASK_H

#include <aiqueue/common.h>

AIQ_BEGIN_DECLS

/** @brief Opaque task handed to a handler. @since 0.1 */
typedef struct aiq_task aiq_task;

/** @brief Task id (UUID text). @since 0.1 */
AIQ_API const char *aiq_task_id(const aiq_task *t);

/** @brief Registered task name, e.g. "tasks.analyze_track". @since 0.1 */
AIQ_API const char *aiq_task_name(const aiq_task *t);

/** @brief Positional arguments as a JSON array text. @since 0.1 */
AIQ_API const char *aiq_task_args_json(const aiq_task *t);

/** @brief Keyword arguments as a JSON object text. @since 0.1 */
AIQ_API const char *aiq_task_kwargs_json(const aiq_task *t);

/** @brief How many times this task was retried before this run (0 on the first). @since 0.1 */
AIQ_API int aiq_task_retries(const aiq_task *t);

/** @brief ETA as UNIX time in milliseconds, 0 when the task had none. @since 0.1 */
AIQ_API int64_t aiq_task_eta_ms(const aiq_task *t);

/** @brief Queue the task was received from. @since 0.1 */
AIQ_API const char *aiq_task_queue(const aiq_task *t);

/**
 * @brief Whether the handler is asked to stop.
 *
 * Becomes non-zero when the soft time limit passes, when the task is revoked
 * while running, or when the worker is aborted. A well-behaved handler polls
 * it between steps and returns soon after it turns non-zero.
 *
 * @return 0 while the handler may go on; otherwise the reason
 *         (#AIQ_ETIMEDOUT for the soft limit, #AIQ_ECANCELED otherwise).
 * Thread-safe.
 * @since 0.1
 */
AIQ_API int aiq_task_cancelled(const aiq_task *t);

/**
 * @brief Finish the task successfully.
 * @param t the task.
 * @param result_json the return value as JSON text (copied), or NULL for `null`.
 * @return #AIQ_OK, #AIQ_EJSON (not valid JSON; no outcome recorded: unless a
 *         later report is valid, the task ends FAILURE `InvalidResultError`),
 *         #AIQ_ESTATE (an outcome was already reported).
 * @since 0.1
 */
AIQ_API int aiq_task_succeed(aiq_task *t, const char *result_json);

/**
 * @brief Finish the task with a failure.
 * @param t the task.
 * @param exc_type exception type name (e.g. "AnalysisError"); NULL gives "Exception".
 * @param message human-readable message (copied); NULL gives "".
 * @param exc_module module of the type for Celery clients (NULL gives "builtins"
 *        when exc_type is NULL, else "aiqueue").
 * @return #AIQ_OK or #AIQ_ESTATE.
 * @since 0.1
 */
AIQ_API int aiq_task_fail(aiq_task *t, const char *exc_type, const char *message,
                          const char *exc_module);

/**
 * @brief Attach a traceback (or any diagnostic text) to a failure.
 *
 * Stored as Celery's `traceback` field with the FAILURE or RETRY state that
 * the handler reports. Bindings use it for their language's stack trace.
 *
 * @param t the task.
 * @param traceback text (copied); NULL clears it.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_task_set_traceback(aiq_task *t, const char *traceback);

/**
 * @brief Ask for the task to run again later.
 *
 * The worker republishes the task with retries + 1 and a new ETA, stores
 * RETRY, then acknowledges this delivery. When the task's max retries are
 * used up the task ends FAILURE with `MaxRetriesExceededError` instead.
 *
 * @param t the task.
 * @param countdown_ms delay before the next run; negative uses the
 *        configured exponential backoff with full jitter.
 * @param reason message stored with the RETRY state (copied), or NULL.
 * @return #AIQ_OK, #AIQ_ELIMIT (max retries used up: FAILURE will be stored),
 *         #AIQ_ESTATE.
 * @since 0.1
 */
AIQ_API int aiq_task_retry(aiq_task *t, int64_t countdown_ms, const char *reason);

/**
 * @brief Store a PROGRESS state with custom meta now.
 * @param t the task.
 * @param meta_json a JSON object text (copied).
 * @return #AIQ_OK, #AIQ_EJSON, #AIQ_EINVAL (not an object), #AIQ_ESTORE, #AIQ_ESTATE.
 * @since 0.1
 */
AIQ_API int aiq_task_progress(aiq_task *t, const char *meta_json);

AIQ_END_DECLS

#endif /* AIQUEUE_TASK_H */
