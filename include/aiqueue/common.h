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
