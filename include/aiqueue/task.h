/**
 * @file task.h
 * @brief A task as its handler sees it, and the outcomes a handler reports.
 *
 * An #aiq_task is lent to a handler for the duration of one call. Accessors
 * return borrowed strings that live as long as the call. A handler reports
 * at most one outcome: aiq_task_succeed(), aiq_task_fail() or
 * aiq_task_retry(); a handler that returns without one succeeds with a
 * `null` result, but one whose every report was refused (invalid result
 * JSON, out of memory) ends FAILURE `InvalidResultError` with the reason.
 * aiq_task_progress() may be called any number of times before the outcome.
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

/**
 * @name Typed arguments
 * Read one positional argument (by index) or keyword argument (by name)
 * without a JSON library. Each call reads the task's already decoded
 * arguments: nothing is parsed again and nothing is cached.
 *
 * Common rules: on success the call returns #AIQ_OK and sets `*out`; on
 * failure it leaves `*out` (and `*len`) NULL or 0 and returns
 * - #AIQ_ENOTFOUND: no such argument (index negative or past the last one,
 *   or no keyword of that name);
 * - #AIQ_EINVAL: the argument has another JSON type than asked for, or `t`,
 *   `out` or `name` is NULL;
 *
 * with aiq_error_last() naming the task, the argument and both types, e.g.
 * "task 1f0c...: positional argument 1 is a string, not an integer".
 * Strings are borrowed: they live as long as the task (until the handler
 * returns). Call only from the thread running the handler.
 * @{
 */

/**
 * @brief Number of positional arguments.
 * @param t the task.
 * @return the length of the args array; 0 when `t` is NULL.
 * @since 0.2
 */
AIQ_API int64_t aiq_task_arg_count(const aiq_task *t);

/**
 * @brief A positional argument that is a JSON string.
 * @param out receives the UTF-8 text (borrowed, NUL-terminated).
 * @param len receives its length in bytes, or NULL. A string holding a NUL
 *        byte needs `len`: with NULL it is refused
 *        (#AIQ_EINVAL) rather than silently cut short.
 * @param t the task.
 * @param index 0 for the first argument.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_arg_str(const char **out, size_t *len, const aiq_task *t, int64_t index);

/**
 * @brief A positional argument that is a JSON integer.
 * @param out receives the value; any value of int64_t round-trips. A real
 *        (`2.0`, `1e19`) is refused with #AIQ_EINVAL, never rounded.
 * @param t the task.
 * @param index 0 for the first argument.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_arg_int(int64_t *out, const aiq_task *t, int64_t index);

/**
 * @brief A positional argument that is a JSON number.
 * @param out receives the value; an integer is converted (exact up to 2^53).
 * @param t the task.
 * @param index 0 for the first argument.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_arg_double(double *out, const aiq_task *t, int64_t index);

/**
 * @brief A positional argument that is JSON `true` or `false`.
 * @param out receives 1 or 0. Numbers and strings are refused (#AIQ_EINVAL).
 * @param t the task.
 * @param index 0 for the first argument.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_arg_bool(int *out, const aiq_task *t, int64_t index);

/**
 * @brief A positional argument of any type, as compact JSON text.
 *
 * For lists, objects and `null`, or to hand one argument to a JSON library.
 *
 * @param out receives a new string, to be freed with aiq_free().
 * @param t the task.
 * @param index 0 for the first argument.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (NULL `t` or `out`),
 *         #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_task_arg_json(char **out, const aiq_task *t, int64_t index);

/**
 * @brief A keyword argument that is a JSON string.
 * @param out receives the UTF-8 text (borrowed, NUL-terminated).
 * @param len receives its length in bytes, or NULL (then a string holding a
 *        NUL is refused, as in aiq_task_arg_str()).
 * @param t the task.
 * @param name the keyword (UTF-8).
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_kwarg_str(const char **out, size_t *len, const aiq_task *t, const char *name);

/**
 * @brief A keyword argument that is a JSON integer.
 * @param out receives the value (a real is refused, as in aiq_task_arg_int()).
 * @param t the task.
 * @param name the keyword (UTF-8).
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_kwarg_int(int64_t *out, const aiq_task *t, const char *name);

/**
 * @brief A keyword argument that is a JSON number (integer or real).
 * @param out receives the value.
 * @param t the task.
 * @param name the keyword (UTF-8).
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_kwarg_double(double *out, const aiq_task *t, const char *name);

/**
 * @brief A keyword argument that is JSON `true` or `false`.
 * @param out receives 1 or 0.
 * @param t the task.
 * @param name the keyword (UTF-8).
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (see "Typed arguments").
 * @since 0.2
 */
AIQ_API int aiq_task_kwarg_bool(int *out, const aiq_task *t, const char *name);

/**
 * @brief A keyword argument of any type, as compact JSON text.
 * @param out receives a new string, to be freed with aiq_free().
 * @param t the task.
 * @param name the keyword (UTF-8).
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (NULL `t`, `out` or `name`),
 *         #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_task_kwarg_json(char **out, const aiq_task *t, const char *name);

/** @} */

AIQ_END_DECLS

#endif /* AIQUEUE_TASK_H */
