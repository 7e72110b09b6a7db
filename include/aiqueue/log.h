/**
 * @file log.h
 * @brief Where the library's diagnostics go.
 *
 * The library reports what a program cannot see through return codes —
 * a broker connection lost and re-established, a message dead-lettered, a
 * store write retried — through one process-wide log handler. By default
 * messages at #AIQ_LOG_WARNING and above go to stderr, prefixed with
 * "libaiqueue: ". Passwords in URLs are never logged.
 */
#ifndef AIQUEUE_LOG_H
#define AIQUEUE_LOG_H

#include <aiqueue/common.h>

AIQ_BEGIN_DECLS

/** @brief Log levels (syslog-like order). @since 0.1 */
enum aiq_log_level {
	AIQ_LOG_DEBUG = 10,   /**< details for finding a fault */
	AIQ_LOG_INFO = 20,    /**< normal events (connected, a worker started) */
	AIQ_LOG_WARNING = 30, /**< something went wrong and was handled */
	AIQ_LOG_ERROR = 40    /**< something failed */
};

/**
 * @brief A log handler.
 * @param level an #aiq_log_level.
 * @param message one line of text without a trailing newline (borrowed).
 * @param userdata as given to aiq_log_set_handler().
 * @since 0.1
 */
typedef void (*aiq_log_fn)(int level, const char *message, void *userdata);

/**
 * @brief Route the library's log messages to @p fn (NULL restores stderr).
 *
 * The handler may be called from any library thread, concurrently, and must
 * be thread-safe. Replacing it waits until no call of the old handler is in
 * progress, then calls the old @p destroy on its userdata (once).
 *
 * @param fn handler, or NULL for the default (stderr).
 * @param userdata passed to every call of @p fn.
 * @param destroy called once on @p userdata when the handler is replaced or
 *        reset; may be NULL. Not called at process exit: reset the handler
 *        (aiq_log_set_handler(NULL, NULL, NULL)) to release it earlier.
 * @since 0.1
 */
AIQ_API void aiq_log_set_handler(aiq_log_fn fn, void *userdata, aiq_destroy_fn destroy);

/**
 * @brief Drop messages below @p level (default #AIQ_LOG_WARNING). Thread-safe.
 * @since 0.1
 */
AIQ_API void aiq_log_set_level(int level);

/**
 * @brief Parse "debug", "info", "warning" or "error" (any case).
 * @return the #aiq_log_level, or #AIQ_EINVAL (-2).
 * @since 0.1
 */
AIQ_API int aiq_log_level_from_name(const char *name);

AIQ_END_DECLS

#endif /* AIQUEUE_LOG_H */
