/*
 * Shared coordination state for rate limits (lib/worker/ratelimit.c) and
 * unique jobs (lib/core/unique.c): one Redis connection, chosen from an
 * explicit URL or the first Redis among the result store's and the
 * broker's URLs, serialized by a mutex. Without Redis in the build, or
 * with no Redis URL at all, aiq__coord_open gives NULL and the callers keep
 * their state in the process. Hides hiredis from its callers.
 */
#ifndef AIQ_COORD_H
#define AIQ_COORD_H

#include "config_int.h"
#include "internal.h"

typedef struct aiq__coord aiq__coord;

/* True when `url` names a Redis server (redis://, unix://, redis+socket://). */
bool aiq__coord_is_redis(const char *url);

/* *out = a connection (not opened yet: the first call connects) to the
 * URL of key `url_key` when it is not empty, else to result.url or
 * broker.url, the first that is a Redis URL, else NULL (AIQ_OK: keep the
 * state in the process). An explicit URL that is not Redis is AIQ_EINVAL
 * naming the key. Errors of later calls are reported as `code`. */
int aiq__coord_open(aiq__coord **out, enum aiq__cfg_str url_key, const aiq_config *cfg, int code);
void aiq__coord_free(aiq__coord *k);

/* The token bucket of ratelimit.lua: take `cost` tokens (take) or read.
 * *wait_us = how long until the bucket is out of debt (0: it had enough);
 * *tokens = what is left (may be negative). */
int aiq__coord_bucket(aiq__coord *k, int64_t *wait_us, double *tokens, const char *key, double rate,
                      double burst, double cost, bool take);

/* Claim `key` for `value` for ttl_ms, atomically: *holder = NULL when this
 * call claimed it, else a copy of the value holding it (free()). */
int aiq__coord_claim(aiq__coord *k, char **holder, const char *key, const char *value,
                     int64_t ttl_ms);
/* Delete `key` if it still holds `value`. */
int aiq__coord_release(aiq__coord *k, const char *key, const char *value);

/* Run one command (a plain one, or EVAL with its script text) for callers
 * whose keys need more than a claim (the scheduler's lease): *str = a copy
 * of a string or status reply (free()), *num = an integer reply; a nil
 * reply leaves *str NULL and *num 0. An error reply is an error. */
int aiq__coord_command(aiq__coord *k, char **str, int64_t *num, int argc, const char **argv);

#endif /* AIQ_COORD_H */
