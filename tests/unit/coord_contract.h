/*
 * The coordination contract of coord.h (token buckets, unique claims,
 * concurrency leases), checked against a real Redis by
 * tests/integration/flow/test_flow_ratelimit.c and against a real
 * PostgreSQL by tests/integration/postgres/test_postgres.c. Header-only:
 * each test program includes it once.
 *
 *   coord_open_for(...)         the handle rate limits get for some URLs
 *   coord_contract(k, prefix)   one handle: every rule of each call
 *   coord_race(open, prefix)    threads on their own handles take leases
 *                               and claims at once; never more than allowed
 */
#ifndef AIQ_COORD_CONTRACT_H
#define AIQ_COORD_CONTRACT_H

#include "coord.h"

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void coord_sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* The handle rate limits get (AIQ_CFG_WORKER_RATE_LIMIT_URL, any kind) for
 * these URLs (NULL: not set), checked to be of `kind` ("redis",
 * "postgres"). */
static aiq__coord *coord_open_for(const char *broker, const char *result, const char *limits,
                                  const char *kind)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	if (broker)
		ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", broker), AIQ_OK);
	if (result)
		ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", result), AIQ_OK);
	if (limits)
		ck_assert_int_eq(aiq_config_set_str(cfg, "worker.rate_limit_url", limits), AIQ_OK);
	aiq__coord *k = NULL;
	ck_assert_int_eq(
	        aiq__coord_open(&k, AIQ_CFG_WORKER_RATE_LIMIT_URL, cfg, AIQ_ESTORE, AIQ__COORD_ANY),
	        AIQ_OK);
	aiq_config_free(cfg);
	ck_assert_ptr_nonnull(k);
	ck_assert_str_eq(aiq__coord_kind(k), kind);
	return k;
}

static void coord_key(char *buf, size_t n, const char *prefix, const char *name)
{
	snprintf(buf, n, "%s%s", prefix, name);
}

static void coord_bucket_contract(aiq__coord *k, const char *prefix)
{
	char b[128];
	coord_key(b, sizeof b, prefix, "bucket");
	int64_t wait = -1;
	double left = 0;
	/* 10/s, burst 3: three at once, then turns 100 ms apart. */
	for (int i = 0; i < 3; i++) {
		ck_assert_msg(aiq__coord_bucket(k, &wait, &left, b, 10, 3, 1, true) == AIQ_OK, "%s",
		              aiq_error_last());
		ck_assert_int_eq(wait, 0);
	}
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, b, 10, 3, 1, true), AIQ_OK);
	ck_assert_msg(wait > 80000 && wait <= 100000, "%lld us", (long long)wait);
	ck_assert_msg(left <= -0.8 && left > -1.0, "%f", left);
	/* A weight: cost 2 is two turns more. */
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, b, 10, 3, 2, true), AIQ_OK);
	ck_assert_msg(wait > 280000 && wait <= 300000, "%lld us", (long long)wait);
	/* Reading takes nothing; the refill follows the server's clock. */
	coord_sleep_ms(300);
	double before = 0;
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &before, b, 10, 3, 1, false), AIQ_OK);
	ck_assert_msg(before > -0.1 && before < 1.5, "%f after 300 ms", before);
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, b, 10, 3, 1, false), AIQ_OK);
	ck_assert_msg(left >= before && left < before + 0.5, "%f then %f", before, left);
	/* A refill never passes the burst. */
	coord_sleep_ms(600);
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, b, 10, 3, 0, false), AIQ_OK);
	ck_assert_msg(left > 2.9 && left <= 3.0, "%f", left);
	/* A key never seen is a full bucket, and buckets are per key. */
	coord_key(b, sizeof b, prefix, "bucket-fresh");
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, b, 0.5, 5, 5, true), AIQ_OK);
	ck_assert_int_eq(wait, 0);
	ck_assert_msg(left > -0.01 && left < 0.01, "%f", left);
	ck_assert_int_eq(aiq__coord_bucket(k, &wait, &left, b, 0.5, 5, 1, true), AIQ_OK);
	ck_assert_msg(wait > 1900000 && wait <= 2000000, "%lld us", (long long)wait);
}

static void coord_claim_contract(aiq__coord *k, const char *prefix)
{
	char c[128];
	coord_key(c, sizeof c, prefix, "claim");
	char *holder = NULL;
	ck_assert_msg(aiq__coord_claim(k, &holder, c, "task-a", 60000) == AIQ_OK, "%s",
	              aiq_error_last());
	ck_assert_ptr_null(holder);
	/* The holder's own retry finds itself; anyone else learns who holds it. */
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "task-a", 60000), AIQ_OK);
	ck_assert_ptr_null(holder);
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "task-b", 60000), AIQ_OK);
	ck_assert_ptr_nonnull(holder);
	ck_assert_str_eq(holder, "task-a");
	free(holder);
	holder = NULL;
	/* Only the holder releases it. */
	ck_assert_int_eq(aiq__coord_release(k, c, "task-b"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "task-b", 60000), AIQ_OK);
	ck_assert_ptr_nonnull(holder);
	free(holder);
	holder = NULL;
	ck_assert_int_eq(aiq__coord_release(k, c, "task-a"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "task-b", 60000), AIQ_OK);
	ck_assert_ptr_null(holder);
	/* A claim ends with its TTL; a release after that leaves the new one. */
	coord_key(c, sizeof c, prefix, "claim-ttl");
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "old", 200), AIQ_OK);
	ck_assert_ptr_null(holder);
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "new", 60000), AIQ_OK);
	ck_assert_ptr_nonnull(holder);
	free(holder);
	holder = NULL;
	coord_sleep_ms(350);
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "new", 60000), AIQ_OK);
	ck_assert_ptr_null(holder);
	ck_assert_int_eq(aiq__coord_release(k, c, "old"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_claim(k, &holder, c, "third", 60000), AIQ_OK);
	ck_assert_ptr_nonnull(holder);
	ck_assert_str_eq(holder, "new");
	free(holder);
}

static void coord_lease_contract(aiq__coord *k, const char *prefix)
{
	char l[128];
	coord_key(l, sizeof l, prefix, "lease");
	bool got = false;
	ck_assert_msg(aiq__coord_lease_take(k, &got, l, "m1", 2, 60000) == AIQ_OK, "%s",
	              aiq_error_last());
	ck_assert(got);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, l, "m2", 2, 60000), AIQ_OK);
	ck_assert(got);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, l, "m3", 2, 60000), AIQ_OK);
	ck_assert(!got);
	/* A member that holds one is extended, not refused. */
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, l, "m1", 2, 60000), AIQ_OK);
	ck_assert(got);
	/* Dropping frees a place; dropping what is not held changes nothing. */
	ck_assert_int_eq(aiq__coord_lease_drop(k, l, "nobody"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, l, "m3", 2, 60000), AIQ_OK);
	ck_assert(!got);
	ck_assert_int_eq(aiq__coord_lease_drop(k, l, "m2"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, l, "m3", 2, 60000), AIQ_OK);
	ck_assert(got);
	/* Another key has places of its own. */
	char other[128];
	coord_key(other, sizeof other, prefix, "lease-other");
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, other, "m1", 1, 60000), AIQ_OK);
	ck_assert(got);
	/* A lease not renewed ends (a worker killed with kill -9); one renewed
	 * lives on. */
	char e[128];
	coord_key(e, sizeof e, prefix, "lease-ends");
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, e, "dead", 2, 1000), AIQ_OK);
	ck_assert(got);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, e, "alive", 2, 1000), AIQ_OK);
	ck_assert(got);
	for (int i = 0; i < 6; i++) {
		coord_sleep_ms(250);
		ck_assert_int_eq(aiq__coord_lease_renew(k, e, "alive", 1000), AIQ_OK);
	}
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, e, "next", 2, 60000), AIQ_OK);
	ck_assert_msg(got, "a 1 s lease not renewed for 1.5 s still holds its place");
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, e, "more", 2, 60000), AIQ_OK);
	ck_assert_msg(!got, "the renewed lease lost its place");
	/* Renewing an ended lease does not bring it back. */
	ck_assert_int_eq(aiq__coord_lease_renew(k, e, "dead", 60000), AIQ_OK);
	ck_assert_int_eq(aiq__coord_lease_drop(k, e, "next"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, e, "more", 2, 60000), AIQ_OK);
	ck_assert(got);
}

static void coord_contract(aiq__coord *k, const char *prefix)
{
	coord_bucket_contract(k, prefix);
	coord_claim_contract(k, prefix);
	coord_lease_contract(k, prefix);
}

/* ---- threads at once, each on a handle of its own -------------------------- */

enum { COORD_RACERS = 6, COORD_ROUNDS = 20, COORD_LIMIT = 2 };

struct coord_racer {
	aiq__coord *k;
	const char *prefix;
	int index;
	atomic_int *holding;  /* leases held right now, across threads */
	atomic_int *most;     /* the most ever held at once */
	atomic_int *claimed;  /* claims won on the shared key */
	atomic_int *failures; /* calls that failed */
	pthread_barrier_t *start;
};

static void *coord_racer_run(void *arg)
{
	struct coord_racer *r = arg;
	char lease[128], claim[128], member[32];
	coord_key(lease, sizeof lease, r->prefix, "race-lease");
	coord_key(claim, sizeof claim, r->prefix, "race-claim");
	pthread_barrier_wait(r->start);
	char *holder = NULL;
	snprintf(member, sizeof member, "racer-%d", r->index);
	if (aiq__coord_claim(r->k, &holder, claim, member, 60000) != AIQ_OK)
		atomic_fetch_add(r->failures, 1);
	else if (holder == NULL)
		atomic_fetch_add(r->claimed, 1);
	free(holder);
	for (int i = 0; i < COORD_ROUNDS; i++) {
		snprintf(member, sizeof member, "racer-%d-%d", r->index, i);
		bool got = false;
		if (aiq__coord_lease_take(r->k, &got, lease, member, COORD_LIMIT, 60000) !=
		    AIQ_OK) {
			atomic_fetch_add(r->failures, 1);
			continue;
		}
		if (!got) {
			coord_sleep_ms(1);
			continue;
		}
		int now = atomic_fetch_add(r->holding, 1) + 1;
		int seen = atomic_load(r->most);
		while (now > seen && !atomic_compare_exchange_weak(r->most, &seen, now))
			;
		coord_sleep_ms(5);
		atomic_fetch_sub(r->holding, 1);
		if (aiq__coord_lease_drop(r->k, lease, member) != AIQ_OK)
			atomic_fetch_add(r->failures, 1);
	}
	return NULL;
}

/* open() gives a fresh handle on the shared server for each thread. */
static void coord_race(aiq__coord *(*open)(void), const char *prefix)
{
	pthread_t th[COORD_RACERS];
	struct coord_racer rs[COORD_RACERS];
	atomic_int holding = 0, most = 0, claimed = 0, failures = 0;
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, COORD_RACERS);
	for (int i = 0; i < COORD_RACERS; i++) {
		rs[i] = (struct coord_racer){open(), prefix,   i,         &holding,
		                             &most,  &claimed, &failures, &start};
		ck_assert_ptr_nonnull(rs[i].k);
	}
	for (int i = 0; i < COORD_RACERS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, coord_racer_run, &rs[i]), 0);
	for (int i = 0; i < COORD_RACERS; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&start);
	for (int i = 0; i < COORD_RACERS; i++)
		aiq__coord_free(rs[i].k);
	int failed = atomic_load(&failures), winners = atomic_load(&claimed),
	    at_once = atomic_load(&most);
	ck_assert_int_eq(failed, 0);
	ck_assert_int_eq(winners, 1);
	/* The places were used, never more of them than the limit. */
	ck_assert_int_eq(at_once, COORD_LIMIT);
}

#endif /* AIQ_COORD_CONTRACT_H */
