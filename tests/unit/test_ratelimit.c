/*
 * Rate limits (lib/worker/ratelimit.c): Celery's rate strings, the rule
 * syntax of worker.rate_limits and its errors, the in-memory token bucket
 * (turns in arrival order, keys, weights charged after the fact), the
 * parked copy's header, remote control's replacement, and a worker on the
 * memory broker held to its limit.
 */
#include "testutil.h"

#include "message.h"
#include "ratelimit.h"

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double rate_of(const char *s)
{
	double r = -1;
	int rc = aiq__rate_parse(&r, s, strlen(s));
	ck_assert_msg(rc == AIQ_OK, "%s: %s", s, aiq_error_last());
	return r;
}

START_TEST(celery_rate_strings)
{
	ck_assert(fabs(rate_of("10/s") - 10) < 1e-9);
	ck_assert(fabs(rate_of("100/m") - 100.0 / 60) < 1e-9);
	ck_assert(fabs(rate_of("5/h") - 5.0 / 3600) < 1e-12);
	ck_assert(fabs(rate_of("3") - 3) < 1e-9);
	ck_assert(fabs(rate_of("0.5/s") - 0.5) < 1e-9);
	static const char *const bad[] = {"",       "0",  "-1/s",  "abc", "10/",  "10/x",
	                                  "10/min", "/s", "1e999", "nan", "10 /s"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		double r = 1;
		ck_assert_msg(aiq__rate_parse(&r, bad[i], strlen(bad[i])) == AIQ_EINVAL, "%s",
		              bad[i]);
		ck_assert_msg(strstr(aiq_error_last(), "rate '") != NULL, "%s: %s", bad[i],
		              aiq_error_last());
		ck_assert(r == 0);
	}
	double r;
	ck_assert_int_eq(aiq__rate_parse(&r, "10/x", 4), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "unknown unit 'x' (s, m or h)"));
}
END_TEST

static aiq__ratelimit *limiter(const char *spec)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.rate_limits", spec), AIQ_OK);
	aiq__ratelimit *r = NULL;
	int rc = aiq__ratelimit_new(&r, cfg);
	aiq_config_free(cfg);
	ck_assert_msg(rc == AIQ_OK, "%s: %s", spec, aiq_error_last());
	return r;
}

static void refused(const char *spec, const char *says)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.rate_limits", spec), AIQ_OK);
	aiq__ratelimit *r = NULL;
	ck_assert_int_eq(aiq__ratelimit_new(&r, cfg), AIQ_EINVAL);
	ck_assert_ptr_null(r);
	ck_assert_msg(strstr(aiq_error_last(), says) != NULL, "%s: %s", spec, aiq_error_last());
	/* The worker refuses it the same way. */
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_EINVAL);
	ck_assert_ptr_null(w);
	aiq_config_free(cfg);
}

START_TEST(rule_errors)
{
	refused("a", "rule 1 'a': expected TASK=RATE");
	refused("a=1/s;=2/s", "rule 2");
	refused("a=10/x", "unknown unit 'x'");
	refused("a=10/s,burst=0", "burst must be a positive number");
	refused("a=10/s,cost=x", "cost must be a positive number");
	refused("a=10/s,key=tenant", "key must be kwarg:NAME, header:NAME or arg:N");
	refused("a=10/s,key=arg:x", "key must be");
	refused("a=10/s,colour=red", "unknown option 'colour'");
	refused("a=10/s,burst", "is not name=value");
	refused("a=10/s,charge=", "charge needs a path");
	refused("a=10/s,concurrency=0", "concurrency must be an integer from 1 to 100000");
	refused("a=concurrency=x", "concurrency must be an integer");
	refused("a=concurrency=100001", "concurrency must be");
	refused("a=key=kwarg:t", "give a rate, a concurrency or both");
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.rate_limit_url", "memory://x"), AIQ_OK);
	aiq__ratelimit *r = NULL;
	ck_assert_int_eq(aiq__ratelimit_new(&r, cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "worker.rate_limit_url"));
	aiq_config_free(cfg);
	/* Blanks and empty rules are fine. */
	aiq__ratelimit_free(limiter(" a=1/s ; ;b.*=2/m,key=kwarg:t,burst=3,cost=2,charge=x.y "));
	aiq__ratelimit_free(limiter(""));
	aiq__ratelimit_free(limiter("a=concurrency=2,key=kwarg:t;b=5/s,concurrency=1"));
}
END_TEST

static aiq__message *msg(const char *task, const char *kwargs)
{
	aiq__message *m = calloc(1, sizeof *m);
	aiq__message_init(m);
	m->id = strdup("id-1");
	m->task = strdup(task);
	m->args = json_array();
	m->kwargs = json_loads(kwargs ? kwargs : "{}", 0, NULL);
	return m;
}

/* ---- concurrency slots ------------------------------------------------- */

static aiq__ratelimit_slot *acquire(aiq__ratelimit *r, aiq__message *m, const char *id, bool *full)
{
	free(m->id);
	m->id = strdup(id);
	aiq__ratelimit_slot *slot = NULL;
	ck_assert_int_eq(aiq__ratelimit_acquire(&slot, full, r, m), AIQ_OK);
	return slot;
}

START_TEST(concurrency_slots)
{
	aiq__ratelimit *r = limiter("c.*=concurrency=2,key=kwarg:t;n=10/s");
	aiq__message *a = msg("c.x", "{\"t\": \"a\"}"), *b = msg("c.y", "{\"t\": \"b\"}");
	bool full;
	aiq__ratelimit_slot *k1 = acquire(r, a, "1", &full), *k2 = acquire(r, a, "2", &full);
	ck_assert(k1 && k2 && !full);
	ck_assert_str_eq(k1->key, "aiq:concurrency:c.*#a");
	/* Each acquisition is its own member: "<task id>/<random>". */
	ck_assert_int_eq(strncmp(k1->member, "1/", 2), 0);
	ck_assert_uint_eq(strlen(k1->member), 2 + 12);
	/* The third with key a waits; key b has its own two. */
	ck_assert_ptr_null(acquire(r, a, "3", &full));
	ck_assert(full);
	aiq__ratelimit_slot *kb = acquire(r, b, "4", &full);
	ck_assert(kb && !full);
	/* A slot given back is taken by the next. */
	aiq__ratelimit_release(r, k1);
	aiq__ratelimit_slot *k3 = acquire(r, a, "3", &full);
	ck_assert(k3 && !full);
	ck_assert_ptr_null(acquire(r, a, "5", &full));
	/* The same task id running twice at once (a retry republished while
	 * the first run ends) needs a second slot. */
	aiq__ratelimit_slot *kb2 = acquire(r, b, "4", &full);
	ck_assert(kb2 && !full);
	ck_assert_str_ne(kb2->member, kb->member);
	ck_assert_ptr_null(acquire(r, b, "4", &full));
	ck_assert(full);
	/* A rule without concurrency, and no rule at all: no slot, not full. */
	aiq__message *n = msg("n", NULL), *o = msg("other", NULL);
	ck_assert_ptr_null(acquire(r, n, "6", &full));
	ck_assert(!full);
	ck_assert_ptr_null(acquire(r, o, "7", &full));
	ck_assert(!full);
	/* rate_limit 0 on a rule with a concurrency keeps the concurrency. */
	ck_assert_int_eq(aiq__ratelimit_set(r, "c.*", "0"), AIQ_OK);
	ck_assert_ptr_null(acquire(r, a, "5", &full));
	ck_assert(full);
	aiq__ratelimit_release(r, k2);
	aiq__ratelimit_release(r, k3);
	aiq__ratelimit_release(r, kb);
	aiq__ratelimit_release(r, kb2);
	aiq__ratelimit_release(r, NULL);
	aiq__message *all[] = {a, b, n, o};
	for (size_t i = 0; i < 4; i++) {
		aiq__message_clear(all[i]);
		free(all[i]);
	}
	aiq__ratelimit_free(r);
}
END_TEST

static int64_t reserve(aiq__ratelimit *r, const aiq__message *m)
{
	int64_t wait = -1;
	ck_assert_int_eq(aiq__ratelimit_reserve(&wait, r, m), AIQ_OK);
	return wait;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* When a reservation's turn comes, in monotonic ms: its wait from the
 * moment the limiter read the clock, somewhere inside the call, so the
 * turn lies in [lo, hi] (the call's start and end plus the wait) whatever
 * the speed of the test (valgrind makes the call take milliseconds). */
struct turn {
	int64_t lo, hi;
};

static struct turn turn(aiq__ratelimit *r, const aiq__message *m)
{
	int64_t a = mono_ms();
	int64_t w = reserve(r, m);
	int64_t b = mono_ms();
	return (struct turn){a + w, b + w};
}

/* Turn u comes `gap` ms (±2) after turn t, as far as the brackets tell. */
static void assert_gap(struct turn t, struct turn u, int64_t gap)
{
	ck_assert_msg(u.hi - t.lo >= gap - 2 && u.lo - t.hi <= gap + 2,
	              "turns [%lld, %lld] then [%lld, %lld]: not %lld ms apart", (long long)t.lo,
	              (long long)t.hi, (long long)u.lo, (long long)u.hi, (long long)gap);
}

START_TEST(bucket_turns)
{
	aiq__ratelimit *r = limiter("t.*=10/s,burst=2;other=1/h");
	aiq__message *m = msg("t.one", NULL), *free_m = msg("unlimited", NULL);
	/* The burst runs at once, then one turn every 100 ms, in order. */
	int64_t t0 = mono_ms();
	ck_assert_int_eq(reserve(r, m), 0);
	ck_assert_int_eq(reserve(r, m), 0);
	struct turn t1 = turn(r, m), t2 = turn(r, m), t3 = turn(r, m);
	int64_t end = mono_ms();
	ck_assert_msg(t1.hi >= t0 + 100 - 2 && t1.lo <= end + 100 + 2, "%lld",
	              (long long)(t1.lo - t0));
	assert_gap(t1, t2, 100);
	assert_gap(t2, t3, 100);
	/* A glob's bucket is shared by the names it matches. */
	aiq__message *m2 = msg("t.two", NULL);
	ck_assert_int_ge(turn(r, m2).hi, t3.lo + 100 - 2);
	/* No rule: never waits. */
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(reserve(r, free_m), 0);
	aiq__message_free(m);
	aiq__message_free(m2);
	aiq__message_free(free_m);
	aiq__ratelimit_free(r);
}
END_TEST

START_TEST(bucket_per_key)
{
	aiq__ratelimit *r = limiter("llm=1/s,key=kwarg:endpoint");
	aiq__message *a = msg("llm", "{\"endpoint\": \"a\"}"),
	             *b = msg("llm", "{\"endpoint\": \"b\"}");
	aiq__message *none = msg("llm", NULL);
	ck_assert_int_eq(reserve(r, a), 0);
	ck_assert_int_eq(reserve(r, b), 0);
	ck_assert_int_eq(reserve(r, none), 0);
	ck_assert_int_gt(reserve(r, a), 900);
	ck_assert_int_gt(reserve(r, b), 900);
	ck_assert_int_gt(reserve(r, none), 900);
	aiq__message_free(a);
	aiq__message_free(b);
	aiq__message_free(none);
	aiq__ratelimit_free(r);
}
END_TEST

START_TEST(weights_charged_after)
{
	/* 100 tokens a second: a task costs 10 up front, its result says it
	 * used 60, so the next one waits for the 50 more. */
	aiq__ratelimit *r =
	        limiter("llm=100/s,burst=10,cost=10,charge=analysis.usage.total_tokens");
	aiq__message *m = msg("llm", NULL);
	int64_t t0 = mono_ms();
	ck_assert_int_eq(reserve(r, m), 0);
	aiq__ratelimit_charge(r, m, "{\"analysis\": {\"usage\": {\"total_tokens\": 60}}}");
	int64_t end = mono_ms();
	struct turn w = turn(r, m);
	ck_assert_msg(w.hi >= t0 + 600 - 2 && w.lo <= end + 600 + 2, "%lld",
	              (long long)(w.lo - t0));
	/* A result without the path, or using less than the cost, adds nothing. */
	aiq__ratelimit_charge(r, m, "{\"analysis\": {}}");
	aiq__ratelimit_charge(r, m, "{\"analysis\": {\"usage\": {\"total_tokens\": 3}}}");
	aiq__ratelimit_charge(r, m, "not json");
	assert_gap(w, turn(r, m), 100);
	aiq__message_free(m);
	aiq__ratelimit_free(r);
}
END_TEST

START_TEST(parked_copy_header)
{
	aiq__message *m = msg("t", NULL);
	ck_assert(!aiq__ratelimit_redeem(m, 1000));
	ck_assert_int_eq(aiq__ratelimit_mark(NULL, m, 5000), AIQ_OK);
	ck_assert(aiq__ratelimit_redeem(m, 5000 + AIQ__RATE_SLOT_GRACE_MS));
	/* Removed once redeemed: a retry built from the message takes tokens. */
	ck_assert(!aiq__ratelimit_redeem(m, 5000));
	ck_assert_int_eq(aiq__ratelimit_mark(NULL, m, 5000), AIQ_OK);
	ck_assert(!aiq__ratelimit_redeem(m, 5001 + AIQ__RATE_SLOT_GRACE_MS)); /* stale */
	ck_assert_ptr_null(json_object_get(m->extra_headers, AIQ__RATE_SLOT_HEADER));
	/* Into a wire's headers when given. */
	json_t *h = json_object();
	ck_assert_int_eq(aiq__ratelimit_mark(h, m, 7), AIQ_OK);
	ck_assert_int_eq(json_integer_value(json_object_get(h, AIQ__RATE_SLOT_HEADER)), 7);
	json_decref(h);
	aiq__message_free(m);
}
END_TEST

START_TEST(control_replaces)
{
	aiq__ratelimit *r = limiter("t=1/h,burst=1");
	aiq__message *m = msg("t", NULL), *n = msg("new", NULL);
	ck_assert_int_eq(reserve(r, m), 0);
	ck_assert_int_gt(reserve(r, m), 3000 * 1000);
	ck_assert_int_eq(aiq__ratelimit_set(r, "t", "10/x"), AIQ_EINVAL);
	ck_assert_int_eq(aiq__ratelimit_set(r, "t", "1000/s"), AIQ_OK);
	ck_assert_int_lt(reserve(r, m), 3000 * 1000); /* the debt now refills fast */
	ck_assert_int_eq(aiq__ratelimit_set(r, "t", "0"), AIQ_OK);
	for (int i = 0; i < 10; i++)
		ck_assert_int_eq(reserve(r, m), 0);
	ck_assert_int_eq(reserve(r, n), 0);
	ck_assert_int_eq(aiq__ratelimit_set(r, "new", "1/h"), AIQ_OK);
	ck_assert_int_eq(reserve(r, n), 0);
	ck_assert_int_gt(reserve(r, n), 1000);
	aiq__message_free(m);
	aiq__message_free(n);
	aiq__ratelimit_free(r);
}
END_TEST

/* ---- a worker on the memory broker --------------------------------------- */

static atomic_int ran;
static int64_t started_at[64];

static void tick(aiq_task *t, void *ud)
{
	(void)ud;
	int i = atomic_fetch_add(&ran, 1);
	if (i < 64)
		started_at[i] = mono_ms();
	aiq_task_succeed(t, "null");
}

static void *run(void *arg)
{
	aiq_worker_run(arg);
	return NULL;
}

START_TEST(worker_held_to_limit)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://rl"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://rl"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 4), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.rate_limits", "rl.tick=20/s"), AIQ_OK);
	aiq_client *c = NULL;
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "rl.tick", tick, NULL, NULL), AIQ_OK);
	atomic_store(&ran, 0);
	char *ids[30];
	for (int i = 0; i < 30; i++)
		ck_assert_int_eq(aiq_client_enqueue(&ids[i], c, "rl.tick", NULL, NULL, NULL),
		                 AIQ_OK);
	int64_t t0 = mono_ms();
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run, w), 0);
	for (int i = 0; i < 30; i++) {
		aiq_result *res = NULL;
		ck_assert_int_eq(aiq_client_wait(&res, c, ids[i], 10000), AIQ_OK);
		ck_assert_int_eq(aiq_result_state(res), AIQ_STATE_SUCCESS);
		aiq_result_free(res);
		aiq_free(ids[i]);
	}
	/* 20/s with a burst of 1: task i's turn is i * 50 ms after the bucket's
	 * first use (after t0), so none starts before; and not much later. */
	for (int i = 0; i < 30; i++)
		ck_assert_msg(started_at[i] - t0 >= i * 50 - 2, "task %d after %lld ms", i,
		              (long long)(started_at[i] - t0));
	ck_assert_msg(started_at[29] - t0 < 6000, "30 tasks in %lld ms",
	              (long long)(started_at[29] - t0));
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	ck_assert_int_eq(atomic_load(&ran), 30);
	aiq_worker_free(w);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

/* At most 2 running per tenant, with 6 pool threads: the handler counts
 * how many of its tenant run at once. */
static atomic_int running[2], most[2], finished;

static void busy(aiq_task *t, void *ud)
{
	(void)ud;
	const char *kw = aiq_task_kwargs_json(t);
	int k = kw && strstr(kw, "\"b\"") ? 1 : 0;
	int now = atomic_fetch_add(&running[k], 1) + 1;
	int m = atomic_load(&most[k]);
	while (now > m && !atomic_compare_exchange_weak(&most[k], &m, now)) {
	}
	struct timespec ts = {0, 30 * 1000000};
	nanosleep(&ts, NULL);
	atomic_fetch_sub(&running[k], 1);
	atomic_fetch_add(&finished, 1);
	aiq_task_succeed(t, "null");
}

START_TEST(worker_concurrency_per_key)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://conc"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://conc"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 6), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.rate_limits",
	                                    "conc.busy=concurrency=2,key=kwarg:tenant"),
	                 AIQ_OK);
	aiq_client *c = NULL;
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "conc.busy", busy, NULL, NULL), AIQ_OK);
	for (int k = 0; k < 2; k++)
		atomic_store(&running[k], 0), atomic_store(&most[k], 0);
	atomic_store(&finished, 0);
	enum { N = 24 };
	char *ids[N];
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(
		        aiq_client_enqueue(&ids[i], c, "conc.busy", NULL,
		                           i % 2 ? "{\"tenant\": \"b\"}" : "{\"tenant\": \"a\"}",
		                           NULL),
		        AIQ_OK);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run, w), 0);
	for (int i = 0; i < N; i++) {
		aiq_result *res = NULL;
		ck_assert_int_eq(aiq_client_wait(&res, c, ids[i], 20000), AIQ_OK);
		ck_assert_int_eq(aiq_result_state(res), AIQ_STATE_SUCCESS);
		aiq_result_free(res);
		aiq_free(ids[i]);
	}
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	ck_assert_int_eq(atomic_load(&finished), N);
	/* Never more than 2 of a tenant at once; both tenants reached 2 (the
	 * limit, not the pool, held them back: 6 threads). */
	for (int k = 0; k < 2; k++)
		ck_assert_int_eq(atomic_load(&most[k]), 2);
	aiq_worker_free(w);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ratelimit");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, celery_rate_strings);
	tcase_add_test(tc, rule_errors);
	tcase_add_test(tc, bucket_turns);
	tcase_add_test(tc, bucket_per_key);
	tcase_add_test(tc, weights_charged_after);
	tcase_add_test(tc, parked_copy_header);
	tcase_add_test(tc, control_replaces);
	tcase_add_test(tc, worker_held_to_limit);
	tcase_add_test(tc, concurrency_slots);
	tcase_add_test(tc, worker_concurrency_per_key);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
