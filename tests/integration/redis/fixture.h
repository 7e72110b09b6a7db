/*
 * Shared helpers of the Redis integration tests: the private server's URL,
 * a raw hiredis connection to look at keys, clocks.
 */
#ifndef AIQ_REDIS_FIXTURE_H
#define AIQ_REDIS_FIXTURE_H

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
/* Run a Check suite; exit status. */
int rt_run(Suite *s);

#endif
