/*
 * Shared coordination state for rate limits and concurrency slots
 * (lib/worker/ratelimit.c), unique jobs (lib/core/unique.c) and the
 * scheduler's lease (lib/beat/beat.c): kept in Redis, or in PostgreSQL
 * through the result store's coordination ops (store.h, the tables of
 * migration 6). The URL is an explicit one, else the first Redis among the
 * result store's and the broker's URLs, else a PostgreSQL result store's.
 * With none of them, aiq__coord_open gives NULL and the callers keep their
 * state in the process. One connection per handle, opened at the first
 * call, serialized by a mutex. Hides hiredis and libpq from its callers.
 */
#ifndef AIQ_COORD_H
#define AIQ_COORD_H

#include "config_int.h"
#include "internal.h"

typedef struct aiq__coord aiq__coord;

/* True when `url` names a Redis server (redis://, unix://, redis+socket://). */
bool aiq__coord_is_redis(const char *url);
/* True when `url` is a PostgreSQL URL (postgresql://, postgres://). */
bool aiq__coord_is_postgres(const char *url);

enum aiq__coord_kinds {
	AIQ__COORD_REDIS_ONLY, /* for raw commands (aiq__coord_command) */
	AIQ__COORD_ANY         /* Redis or PostgreSQL */
};

/* *out = a handle (not connected yet: the first call connects) to the URL
 * of key `url_key` when it is not empty, else to result.url or broker.url,
 * the first that is a Redis URL, else (AIQ__COORD_ANY) to result.url when
 * it is a PostgreSQL URL, else NULL (AIQ_OK: keep the state in the
 * process). An explicit URL of another kind is AIQ_EINVAL naming the key.
 * Errors of later calls are reported as `code`. */
int aiq__coord_open(aiq__coord **out, enum aiq__cfg_str url_key, const aiq_config *cfg, int code,
                    enum aiq__coord_kinds kinds);
void aiq__coord_free(aiq__coord *k);
/* "redis" or "postgres", for messages. */
const char *aiq__coord_kind(const aiq__coord *k);

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

/* A concurrency slot: a lease of lease_ms on one of at most `limit` places
 * under `key`, held by `member` (unique per acquisition). *got false when
 * every place is held; ended leases are dropped first (a worker killed with
 * kill -9 frees its places that way); a member that holds one already is
 * extended. Renew extends a held lease (one that ended stays ended); drop
 * gives it back. */
int aiq__coord_lease_take(aiq__coord *k, bool *got, const char *key, const char *member, long limit,
                          int64_t lease_ms);
int aiq__coord_lease_renew(aiq__coord *k, const char *key, const char *member, int64_t lease_ms);
int aiq__coord_lease_drop(aiq__coord *k, const char *key, const char *member);

/* Redis only (AIQ__COORD_REDIS_ONLY handles).
 * Run one command (a plain one, or EVAL with its script text) for callers
 * whose keys need more than a claim (the scheduler's lease): *str = a copy
 * of a string or status reply (free()), *num = an integer reply; a nil
 * reply leaves *str NULL and *num 0. An error reply is an error. */
int aiq__coord_command(aiq__coord *k, char **str, int64_t *num, int argc, const char **argv);

#endif /* AIQ_COORD_H */
