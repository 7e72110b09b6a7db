/**
 * @file config.h
 * @brief String-keyed configuration shared by clients and workers.
 *
 * An #aiq_config holds every option by name. Keys are documented in
 * docs/configuration.md; the most used are:
 *
 * | key                            | type     | default                         |
 * |--------------------------------|----------|---------------------------------|
 * | `broker.url`                   | string   | `memory://`                     |
 * | `result.url`                   | string   | `memory://`                     |
 * | `queue`                        | string   | `celery`                        |
 * | `worker.concurrency`           | int      | number of CPUs                  |
 * | `worker.prefetch`              | int      | 0 (= multiplier × concurrency)  |
 * | `worker.prefetch_multiplier`   | int      | 4                               |
 * | `task.max_retries`             | int      | 3                               |
 * | `task.soft_time_limit_ms`      | int      | 0 (none)                        |
 * | `task.time_limit_ms`           | int      | 0 (none)                        |
 * | `result.expires_s`             | int      | 86400                           |
 *
 * Every value is checked when it is set, by every setter and by
 * aiq_config_load_env(): a value out of the key's range, or a string the key
 * does not take (an empty queue name, `amqp.queue_type` other than
 * `classic`/`quorum`, an `llm.temperature` that is not a number from 0 to 2,
 * a malformed `llm.presets`, a URL without a scheme…), gives #AIQ_EINVAL
 * with a message naming the key and what it accepts, and changes nothing.
 * Each key's range is listed in docs/configuration.md.
 *
 * Every fallible call that has an out-parameter sets it to NULL (or 0 for
 * aiq_config_get_int()) when it fails, unless the out-parameter itself is
 * NULL.
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
 *                 Set to NULL on failure.
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
 * @param[out] out receives the copy (caller frees with aiq_config_free()); set
 *                 to NULL on failure.
 * @param src configuration to copy.
 * @return #AIQ_OK, #AIQ_EINVAL or #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_config_copy(aiq_config **out, const aiq_config *src);

/**
 * @brief Set a key from its text form, parsed according to the key's type.
 *
 * Integers accept decimal digits with an optional sign; booleans accept
 * `1/0/true/false/yes/no/on/off` (any case); strings must be valid UTF-8 and
 * what the key accepts (see the file comment).
 *
 * @param cfg configuration.
 * @param key option name; copied.
 * @param text value as text; copied.
 * @return #AIQ_OK, #AIQ_ENOTFOUND (unknown key, named in aiq_error_last()),
 *         #AIQ_EINVAL (text does not parse as the key's type, is out of range,
 *         or is not a value the key accepts; the key keeps its value).
 * @since 0.1
 */
AIQ_API int aiq_config_set(aiq_config *cfg, const char *key, const char *text);

/**
 * @brief Set a string-typed key.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (key is not a string key, value
 *         NULL, or a value the key does not accept; the key keeps its value).
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
 * @param[out] out receives a new string; free it with aiq_free(). Set to NULL
 *                 on failure.
 * @param cfg configuration.
 * @param key option name.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_config_get(char **out, const aiq_config *cfg, const char *key);

/**
 * @brief Read an integer or boolean key.
 * @param[out] out receives the value; set to 0 on failure.
 * @param cfg configuration.
 * @param key option name.
 * @return #AIQ_OK, #AIQ_ENOTFOUND, #AIQ_EINVAL (key is a string key).
 * @since 0.1
 */
AIQ_API int aiq_config_get_int(int64_t *out, const aiq_config *cfg, const char *key);

/**
 * @brief Load options from the process environment.
 *
 * Every key `a.b_c` is read from `AIQUEUE_A_B_C` when that variable is set
 * and not empty. The Celery settings that have an equivalent key are also
 * read from the variables a Celery deployment sets (`CELERY_BROKER_URL`,
 * `CELERY_RESULT_BACKEND`, `CELERY_TASK_DEFAULT_QUEUE`,
 * `CELERY_TASK_TIME_LIMIT` in seconds, `CELERY_WORKER_PREFETCH_MULTIPLIER`,
 * `CELERY_BROKER_TRANSPORT_OPTIONS` as a Python dict or JSON object, …;
 * the full table with units is in docs/configuration.md). An `AIQUEUE_*`
 * variable wins over every `CELERY_*` one for the same key. Variables that
 * are not set leave their key unchanged.
 *
 * @return #AIQ_OK, or #AIQ_EINVAL / #AIQ_ENOMEM for the first variable that
 *         cannot be used (named in aiq_error_last()). On failure nothing is
 *         loaded: `cfg` keeps every value it had.
 * @since 0.1 (the Celery variables beyond the two URLs, and leaving `cfg`
 *        unchanged on failure, since 0.2)
 */
AIQ_API int aiq_config_load_env(aiq_config *cfg);

AIQ_END_DECLS

#endif /* AIQUEUE_CONFIG_H */
