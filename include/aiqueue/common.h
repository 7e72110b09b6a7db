/**
 * @file common.h
 * @brief Shared macros and helpers of the libaiqueue public API.
 *
 * Every public header includes this one. It defines the export macro, the
 * C++ linkage guards and the one deallocator for memory the library hands out.
 */
#ifndef AIQUEUE_COMMON_H
#define AIQUEUE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(AIQ_BUILDING_LIBRARY)
#define AIQ_API __declspec(dllexport)
#elif defined(_WIN32)
#define AIQ_API __declspec(dllimport)
#elif defined(__GNUC__) && defined(AIQ_BUILDING_LIBRARY)
#define AIQ_API __attribute__((visibility("default")))
#else
#define AIQ_API
#endif

#if defined(__GNUC__)
#define AIQ_DEPRECATED __attribute__((deprecated))
#else
#define AIQ_DEPRECATED
#endif

#ifdef __cplusplus
#define AIQ_BEGIN_DECLS extern "C" {
#define AIQ_END_DECLS   }
#else
#define AIQ_BEGIN_DECLS
#define AIQ_END_DECLS
#endif

AIQ_BEGIN_DECLS

/**
 * @brief Free memory that the library handed to the caller.
 *
 * Strings returned through `char **` out-parameters (task ids, JSON
 * documents, configuration values) belong to the caller and must be released
 * with this function, never with the caller's own `free()`: the library and
 * the program may use different allocators (Python's ctypes, for instance).
 *
 * @param ptr memory returned by the library, or NULL (a no-op).
 * @since 0.1
 */
AIQ_API void aiq_free(void *ptr);

/**
 * @brief Copy a broker or store URL with its secrets replaced by `***`.
 *
 * Hides the password of `scheme://user:password@host` (the userinfo ends at
 * the last `@` of the URL, as the library's parser reads it, so unencoded
 * `@`, `#`, `?` or `/` in a password are covered), a userinfo without `:`
 * (`redis://SECRET@host`, which Redis reads as a password; for `amqp` and
 * `postgresql` URLs it is a user name and kept), the value of query
 * parameters that carry secrets (`password`, `token`, `api_key`, ...), and
 * does so for each URL of a `;`-separated list (failover and `sentinel://`
 * lists). Use it wherever a URL is shown to a person: logs, banners, HTTP
 * bodies.
 *
 * @param out receives the redacted copy, to be freed with aiq_free(); set to
 *            NULL on failure.
 * @param url the URL; any text is accepted (text that is not a URL comes
 *            back unchanged).
 * @return AIQ_OK, AIQ_EINVAL (NULL argument) or AIQ_ENOMEM.
 * @note Thread-safe.
 * @since 0.2
 */
AIQ_API int aiq_url_redact(char **out, const char *url);

/**
 * @brief Check, without connecting, that this build can open a broker URL.
 *
 * Tells a configuration that can never work from a broker that is merely
 * down: programs call it at start and exit at once on #AIQ_EUNSUPPORTED,
 * while a failed connection later may be retried.
 *
 * @param url the broker URL (`memory://`, `amqp://…`, `redis://…`).
 * @return AIQ_OK (a driver for the scheme is built in), AIQ_EINVAL (NULL, or
 *         no scheme), AIQ_EUNSUPPORTED (the scheme is unknown, names a result
 *         store, or needs an optional feature this build lacks; then
 *         aiq_error_last() names the feature and the Debian package that
 *         provides it, e.g. `amqp` and `librabbitmq-dev`).
 * @note Thread-safe.
 * @since 0.2
 */
AIQ_API int aiq_url_check_broker(const char *url);

/**
 * @brief Check, without connecting, that this build can open a result-store URL.
 *
 * As aiq_url_check_broker() for `result.url` (and `archive.url`):
 * `memory://`, `redis://…`, `postgresql://…`. The features and packages are
 * `redis` (libhiredis-dev) and `postgres` (libpq-dev).
 *
 * @param url the result store URL.
 * @return AIQ_OK, AIQ_EINVAL or AIQ_EUNSUPPORTED, as aiq_url_check_broker().
 * @note Thread-safe.
 * @since 0.2
 */
AIQ_API int aiq_url_check_store(const char *url);

/**
 * @brief Parse an ISO-8601 date-time into UNIX microseconds.
 *
 * The library's one reader of times, used for ETAs, expiry and result
 * dates alike. Accepts `YYYY-MM-DDThh:mm[:ss[.fraction]][offset]` where
 * the separator may also be `t` or a space, the fraction has 1 to 9 digits
 * (after `.` or `,`; digits beyond microseconds are truncated) and the
 * offset is `Z`, `+hh`, `+hh:mm` or `+hhmm` (or with `-`). A time without
 * an offset is taken as UTC, as Celery does. Dates are checked against the
 * Gregorian calendar (2023-02-29 is refused).
 *
 * Example: `"2030-01-02T03:04:05.5+02:00"` gives 1893546245500000.
 *
 * @param out_unix_us receives microseconds since 1970-01-01T00:00:00Z (may
 *                    be negative for earlier times); set to 0 on failure.
 * @param text        the time, UTF-8, NUL-terminated; not kept.
 * @return AIQ_OK, or AIQ_EINVAL (a NULL argument, or text that is not such
 *         a time; aiq_error_last() quotes it).
 * @note Thread-safe.
 * @since 0.2
 */
AIQ_API int aiq_time_parse_iso8601(int64_t *out_unix_us, const char *text);

/**
 * @brief Destructor for a `userdata` pointer given with a callback.
 *
 * Called exactly once, when the library no longer needs the userdata (when
 * the handle that holds the callback is freed, or when the registration
 * fails). May be NULL where nothing needs releasing.
 * @since 0.1
 */
typedef void (*aiq_destroy_fn)(void *userdata);

AIQ_END_DECLS

#endif /* AIQUEUE_COMMON_H */
