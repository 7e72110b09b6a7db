/*
 * Fixtures shared by the test suites: clocks, the private services' URLs,
 * unique names, a worker running on its own thread, and the Check runner.
 * Link tests/support/support.c and add tests/support to the include path.
 */
#ifndef AIQ_TEST_SUPPORT_H
#define AIQ_TEST_SUPPORT_H

#include <aiqueue/aiqueue.h>
#include <check.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- clocks ---- */

void ts_sleep_ms(int ms);
/* Monotonic milliseconds, for timeouts and durations. */
int64_t ts_mono_ms(void);
/* UNIX milliseconds, for ETAs and not-before times. */
int64_t ts_wall_ms(void);

/* ---- private services (started by the suites' run.sh scripts) ---- */

/* Value of the environment variable `var`; exits the program when it is
 * unset, so a suite registered for a service never passes without one (safe
 * in main(), outside any case). */
const char *ts_env(const char *var);
/* AIQ_TEST_REDIS_URL (tests/integration/redis/run.sh). */
const char *ts_redis_url(void);
/* AIQ_TEST_AMQP_URL (tests/integration/amqp/run.sh). */
const char *ts_amqp_url(void);
/* AIQ_PG_URL (tests/integration/postgres/run.sh). */
const char *ts_pg_url(void);

/* "<prefix>-<pid>-<counter>" into buf: a queue or task name no other test
 * of this run uses. Returns buf. */
char *ts_unique(char *buf, size_t size, const char *prefix);

/* ---- a worker on its own thread ---- */

typedef struct ts_worker {
	aiq_worker *worker; /* owned: freed by ts_worker_done() */
	pthread_t thread;
	int run_rc; /* aiq_worker_run()'s return, once joined */
	bool started;
} ts_worker;

/* aiq_worker_new() from cfg (asserting success); not started yet. */
void ts_worker_init(ts_worker *tw, const aiq_config *cfg);
/* Run aiq_worker_run() on a new thread. */
void ts_worker_start(ts_worker *tw);
/* Wait for the run to return (after a stop); its return code. */
int ts_worker_join(ts_worker *tw);
/* Stop a started worker, assert its run returned AIQ_OK, free it. */
void ts_worker_done(ts_worker *tw);

/* ---- running ---- */

/* Run one suite; the process exit status (0 when every case passed). */
int ts_run(Suite *s);

#endif
