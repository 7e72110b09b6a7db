/**
 * @file result.h
 * @brief The stored outcome of a task, as a client reads it.
 */
#ifndef AIQUEUE_RESULT_H
#define AIQUEUE_RESULT_H

#include <aiqueue/common.h>

AIQ_BEGIN_DECLS

/** @brief Task states, named as Celery names them. @since 0.1 */
enum aiq_state {
	AIQ_STATE_PENDING = 0,  /**< unknown to the store (not yet received, or expired) */
	AIQ_STATE_RECEIVED = 1, /**< a worker holds the task */
	AIQ_STATE_STARTED = 2,  /**< a handler is running it */
	AIQ_STATE_PROGRESS = 3, /**< the handler reported progress (meta in the result JSON) */
	AIQ_STATE_RETRY = 4,    /**< it failed and was scheduled again */
	AIQ_STATE_SUCCESS = 5,  /**< done; the result JSON is the return value */
	AIQ_STATE_FAILURE = 6,  /**< done; the error type and message say why */
	AIQ_STATE_REVOKED = 7   /**< revoked or expired before it finished */
};

/** @brief Opaque stored outcome. @since 0.1 */
typedef struct aiq_result aiq_result;

/**
 * @brief Celery name of a state ("PENDING", "SUCCESS", …).
 * @return a static string; "UNKNOWN" for values outside #aiq_state.
 * @since 0.1
 */
AIQ_API const char *aiq_state_name(int state);

/**
 * @brief Parse a Celery state name.
 * @return the #aiq_state value, or #AIQ_EINVAL for an unknown name.
 * @since 0.1
 */
AIQ_API int aiq_state_from_name(const char *name);

/**
 * @brief Whether a state is final (SUCCESS, FAILURE or REVOKED).
 * @return 1 when final, else 0.
 * @since 0.1
 */
AIQ_API int aiq_state_is_ready(int state);

/** @brief Free a result. NULL is a no-op. @since 0.1 */
AIQ_API void aiq_result_free(aiq_result *r);

/** @brief State of the task (#aiq_state). @since 0.1 */
AIQ_API int aiq_result_state(const aiq_result *r);

/** @brief Task id (borrowed, lives as long as @p r). @since 0.1 */
AIQ_API const char *aiq_result_task_id(const aiq_result *r);

/**
 * @brief Result value as JSON text (borrowed).
 *
 * The return value for SUCCESS; the progress meta for PROGRESS; the worker
 * description for STARTED; "null" when there is none.
 * @since 0.1
 */
AIQ_API const char *aiq_result_json(const aiq_result *r);

/** @brief Exception type name for FAILURE/RETRY, else NULL (borrowed). @since 0.1 */
AIQ_API const char *aiq_result_error_type(const aiq_result *r);

/** @brief Error message for FAILURE/RETRY, else NULL (borrowed). @since 0.1 */
AIQ_API const char *aiq_result_error_message(const aiq_result *r);

/** @brief Exception module (Celery `exc_module`), else NULL (borrowed). @since 0.1 */
AIQ_API const char *aiq_result_error_module(const aiq_result *r);

/** @brief Traceback text, else NULL (borrowed). @since 0.1 */
AIQ_API const char *aiq_result_traceback(const aiq_result *r);

/**
 * @brief Completion time as naive UTC ISO-8601 with microseconds
 *        (Celery's `date_done`), or NULL while not done (borrowed).
 * @since 0.1
 */
AIQ_API const char *aiq_result_date_done(const aiq_result *r);

/**
 * @brief The whole record as Celery's result meta JSON (borrowed).
 *
 * `{"status", "result", "traceback", "children", "date_done", "task_id"}`,
 * exactly what the Redis result store writes.
 * @since 0.1
 */
AIQ_API const char *aiq_result_meta_json(const aiq_result *r);

AIQ_END_DECLS

#endif /* AIQUEUE_RESULT_H */
