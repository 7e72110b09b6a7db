/*
 * Shared helpers of the Redis integration tests: the private server's URL,
 * a raw hiredis connection to look at keys, clocks.
 */
#ifndef AIQ_REDIS_FIXTURE_H
#define AIQ_REDIS_FIXTURE_H

#include "broker.h"

#include <check.h>
#include <hiredis/hiredis.h>
#include <stdint.h>

/* AIQ_TEST_REDIS_URL, set by run.sh (the test aborts without it). */
const char *rt_url(void);
/* A raw connection to the private server. */
redisContext *rt_raw(void);
/* Run a command on a fresh raw connection; the reply (caller frees). */
redisReply *rt_cmd(const char *fmt, ...);
/* FLUSHALL, so each test starts from an empty server. */
void rt_flush(void);
/* Restart the private server (same port, AOF kept). */
void rt_restart(void);
void rt_sleep_ms(int ms);
int64_t rt_mono_ms(void);
/* Broker options for the tests: this visibility timeout, a 10 ms poll. */
aiq_config *rt_broker_cfg(int visibility_s);
/* The Redis broker on the private server (asserts that it opened). */
aiq__broker *rt_open_broker(const aiq_config *cfg);
/* A tests.echo message with this id (also its one argument) and priority. */
void rt_make_wire(aiq__wire *w, const char *id, int priority);
/* Publish rt_make_wire(id, priority) to `queue`, due at not_before_ms. */
void rt_publish(aiq__broker *b, const char *queue, const char *id, int priority,
                int64_t not_before_ms);
/* The task id of a delivery (headers.id). */
const char *rt_id_of(const aiq__delivery *d);
/* The length of a list. */
long long rt_llen(const char *key);
/* Run a Check suite; exit status. */
int rt_run(Suite *s);

#endif
