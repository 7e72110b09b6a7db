/**
 * @file config.h
 * @brief String-keyed configuration shared by clients and workers.
 *
 * An #aiq_config holds every option by name. Keys are documented in
 * docs/configuration.md; the most used are:
 *
 * | key                      | type   | default              |
 * |--------------------------|--------|----------------------|
 * | `broker.url`             | string | `memory://`          |
 * | `result.url`             | string | `memory://`          |
 * | `queue`                  | string | `celery`             |
 * | `worker.concurrency`     | int    | number of CPUs       |
 * | `worker.prefetch`        | int    | 0 (= 4 × concurrency)|
 * | `task.max_retries`       | int    | 3                    |
 * | `task.soft_time_limit_ms`| int    | 0 (none)             |
 * | `task.time_limit_ms`     | int    | 0 (none)             |
 * | `result.expires_s`       | int    | 86400                |
 *
 * A configuration is copied by every handle created from it, so it may be
 * changed or freed afterwards without affecting those handles. A single
 * #aiq_config is not thread-safe: use it from one thread at a time.
 */
#ifndef AIQUEUE_CONFIG_H
#define AIQUEUE_CONFIG_H

#include <aiqueue/common.h>

AIQ_BEGIN_DECLS

/** @brief Opaque configuration object. @since 0.1 */
typedef struct aiq_config aiq_config;

/**
 * @brief Create a configuration holding every key at its default.
 * @param[out] out receives the new configuration; free it with aiq_config_free().
 * @return #AIQ_OK, #AIQ_EINVAL (out is NULL) or #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_config_new(aiq_config **out);

/**
 * @brief Free a configuration. NULL is a no-op.
 * @since 0.1
 */
AIQ_API void aiq_config_free(aiq_config *cfg);

/**
 * @brief Deep-copy a configuration.
 * @param[out] out receives the copy (caller frees with aiq_config_free()).
 * @param src configuration to copy.
 * @return #AIQ_OK, #AIQ_EINVAL or #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_config_copy(aiq_config **out, const aiq_config *src);

/**
 * @brief Set a key from its text form, parsed according to the key's type.
 *
 * Integers accept decimal digits with an optional sign; booleans accept
 * `1/0/true/false/yes/no/on/off` (any case).
 *
 * @param cfg configuration.
 * @param key option name; copied.
 * @param text value as text; copied.
 * @return #AIQ_OK, #AIQ_ENOTFOUND (unknown key, named in aiq_error_last()),
 *         #AIQ_EINVAL (text does not parse as the key's type or is out of range).
 * @since 0.1
 */
AIQ_API int aiq_config_set(aiq_config *cfg, const char *key, const char *text);

/**
 * @brief Set a string-typed key.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (key is not a string key, or value NULL).
 * @since 0.1
 */
AIQ_API int aiq_config_set_str(aiq_config *cfg, const char *key, const char *value);

/**
 * @brief Set an integer-typed key.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (not an integer key, or out of range).
 * @since 0.1
 */
AIQ_API int aiq_config_set_int(aiq_config *cfg, const char *key, int64_t value);

/**
 * @brief Set a boolean-typed key (any non-zero value is true).
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (not a boolean key).
 * @since 0.1
 */
AIQ_API int aiq_config_set_bool(aiq_config *cfg, const char *key, int value);

/**
 * @brief Read any key in its text form.
 * @param[out] out receives a new string; free it with aiq_free().
 * @param cfg configuration.
 * @param key option name.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_config_get(char **out, const aiq_config *cfg, const char *key);

/**
 * @brief Read an integer or boolean key.
 * @param[out] out receives the value.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (key is a string key).
 * @since 0.1
 */
AIQ_API int aiq_config_get_int(int64_t *out, const aiq_config *cfg, const char *key);

/**
 * @brief Load options from the process environment.
 *
 * `broker.url` comes from `AIQUEUE_BROKER_URL`, else `CELERY_BROKER_URL`;
 * `result.url` from `AIQUEUE_RESULT_URL`, else `CELERY_RESULT_BACKEND`.
 * Every other key `a.b_c` is read from `AIQUEUE_A_B_C` when that variable
 * is set. Variables that are not set leave the key unchanged.
 *
 * @return #AIQ_OK, or the first error of aiq_config_set() (the variable is
 *         named in aiq_error_last()). Keys set before the error stay set.
 * @since 0.1
 */
AIQ_API int aiq_config_load_env(aiq_config *cfg);

AIQ_END_DECLS

#endif /* AIQUEUE_CONFIG_H */
