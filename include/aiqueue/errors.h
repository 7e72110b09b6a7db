/**
 * @file errors.h
 * @brief Status codes and error details.
 *
 * Every fallible call returns `int`: #AIQ_OK (0) or one of the negative
 * codes below. The list is append-only: a code's value never changes.
 * The code is the truth; the message from aiq_error_last() is advice for a
 * human and may change between releases.
 */
#ifndef AIQUEUE_ERRORS_H
#define AIQUEUE_ERRORS_H

#include <aiqueue/common.h>

AIQ_BEGIN_DECLS

/** @brief Status codes. Values are stable across releases. @since 0.1 */
enum aiq_status {
	AIQ_OK = 0,            /**< success */
	AIQ_ERROR = -1,        /**< unspecified failure */
	AIQ_EINVAL = -2,       /**< invalid argument (NULL handle, bad value, wrong JSON shape) */
	AIQ_ENOMEM = -3,       /**< out of memory */
	AIQ_ENOTFOUND = -4,    /**< unknown configuration key, task, analyzer or queue */
	AIQ_ETIMEDOUT = -5,    /**< a wait ran out of time */
	AIQ_EPROTO = -6,       /**< malformed task message (undecodable, wrong types) */
	AIQ_EBROKER = -7,      /**< the broker failed or is unreachable */
	AIQ_ESTORE = -8,       /**< the result store failed or is unreachable */
	AIQ_EUNSUPPORTED = -9, /**< URL scheme or feature not built into this library */
	AIQ_ESTATE = -10,      /**< call not valid in the handle's current state */
	AIQ_ECANCELED = -11,   /**< operation cancelled (worker aborted, task revoked) */
	AIQ_EEXIST = -12,      /**< name already registered */
	AIQ_ETOOBIG = -13,     /**< message or value over the configured size limit */
	AIQ_EJSON = -14,       /**< text is not valid JSON */
	AIQ_EIO = -15,         /**< operating-system level I/O failure */
	AIQ_EABI = -16,        /**< plugin built for an incompatible ABI */
	AIQ_ELIMIT = -17       /**< a limit was reached (e.g. max retries exceeded) */
};

/**
 * @brief Static, human-readable name of a status code.
 * @param code an #aiq_status value (unknown values give "unknown error").
 * @return a static string; never NULL. Thread-safe.
 * @since 0.1
 */
AIQ_API const char *aiq_strerror(int code);

/**
 * @brief Detail of the last failed call made on the calling thread.
 *
 * Every call that returns a negative code records a message here
 * (for instance `unknown configuration key 'broker.ulr'`). Successful calls
 * leave it unchanged.
 *
 * @return a thread-local string valid until the next library call on this
 *         thread; "" when no error was recorded. Never NULL.
 * @since 0.1
 */
AIQ_API const char *aiq_error_last(void);

/**
 * @brief Clear the calling thread's error detail.
 * @since 0.1
 */
AIQ_API void aiq_error_clear(void);

AIQ_END_DECLS

#endif /* AIQUEUE_ERRORS_H */
