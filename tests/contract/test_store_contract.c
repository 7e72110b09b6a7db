/*
 * Result-store semantics every driver keeps, written once and run against
 * each (AIQ_CONTRACT_DRIVER): put / put_batch / get / get_batch / wait, a final state
 * never replaced (also across handles and inside one batch), expiry,
 * forget, and the declared capability set.
 */
#include "contract.h"

#include "result_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static aiq__store *open_store_cfg(const aiq_config *c)
{
	aiq__store *s = NULL;
	int rc = aiq__store_open(&s, ct_driver_get()->url, c);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	return s;
}

static aiq__store *open_store(void)
{
	aiq_config *c = ct_config();
	aiq__store *s = open_store_cfg(c);
	aiq_config_free(c);
	return s;
}

static aiq_result *make(const char *id, int state, const char *json)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq__result_new(&r, id, state), AIQ_OK);
	if (json)
		ck_assert_int_eq(aiq__result_set_json(r, json), AIQ_OK);
	if (state == AIQ_STATE_FAILURE)
		ck_assert_int_eq(aiq__result_set_error(r, "ValueError", "bad", "builtins", NULL),
		                 AIQ_OK);
	if (aiq_state_is_ready(state))
		aiq__result_mark_done(r);
	return r;
}

static void put(aiq__store *s, const char *id, int state, const char *json)
{
	aiq_result *r = make(id, state, json);
	int rc = ct_put(s, r);
	ck_assert_msg(rc == AIQ_OK, "put %s %s: %s", id, aiq_state_name(state), aiq_error_last());
	aiq_result_free(r);
}

static void expect_state(aiq__store *s, const char *id, int state, const char *json)
{
	aiq_result *r = NULL;
	int rc = ct_get(s, &r, id);
	ck_assert_msg(rc == AIQ_OK, "get %s: %s", id, aiq_error_last());
	ck_assert_str_eq(aiq_result_task_id(r), id);
	ck_assert_msg(aiq_result_state(r) == state, "%s is %s, expected %s", id,
	              aiq_state_name(aiq_result_state(r)), aiq_state_name(state));
	if (json)
		ck_assert_str_eq(aiq_result_json(r), json);
	aiq_result_free(r);
}

static char *tid(char *buf, size_t size, const char *what)
{
	char prefix[64];
	snprintf(prefix, sizeof prefix, "contract-%s", what);
	return ts_unique(buf, size, prefix);
}

/* ---- cases ---- */

START_TEST(caps_declared)
{
	const ct_driver *d = ct_driver_get();
	aiq__store *s = open_store();
	ck_assert_str_eq(ct_store_name(s), d->name);
	ck_assert_msg(ct_store_caps(s) == d->store_caps, "%s declares caps %#x, expected %#x",
	              d->name, ct_store_caps(s), d->store_caps);
	if (d->native_batches)
		ck_assert_msg(ct_store_has_native_batches(s), "%s must have its own put_batch",
		              d->name);
	aiq__store_close(s);
}
END_TEST

START_TEST(put_get)
{
	char id[96], other[96];
	tid(id, sizeof id, "pg");
	tid(other, sizeof other, "unknown");
	aiq__store *s = open_store();
	expect_state(s, other, AIQ_STATE_PENDING, NULL);
	put(s, id, AIQ_STATE_STARTED, NULL);
	expect_state(s, id, AIQ_STATE_STARTED, NULL);
	put(s, id, AIQ_STATE_SUCCESS, "{\"answer\": 42}");
	aiq_result *r = NULL;
	ck_assert_int_eq(ct_get(s, &r, id), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "{\"answer\": 42}");
	ck_assert_ptr_nonnull(aiq_result_date_done(r));
	aiq_result_free(r);
	/* Another handle on the same store sees it. */
	aiq__store *t = open_store();
	expect_state(t, id, AIQ_STATE_SUCCESS, "{\"answer\": 42}");
	aiq__store_close(t);
	aiq__store_close(s);
}
END_TEST

START_TEST(failure_kept_whole)
{
	char id[96];
	tid(id, sizeof id, "fail");
	aiq__store *s = open_store();
	put(s, id, AIQ_STATE_FAILURE, NULL);
	aiq_result *r = NULL;
	ck_assert_int_eq(ct_get(s, &r, id), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "ValueError");
	ck_assert_str_eq(aiq_result_error_message(r), "bad");
	aiq_result_free(r);
	aiq__store_close(s);
}
END_TEST

START_TEST(never_backwards)
{
	char id[96];
	tid(id, sizeof id, "final");
	aiq__store *s = open_store(), *t = open_store();
	put(s, id, AIQ_STATE_SUCCESS, "1");
	const int later[] = {AIQ_STATE_PENDING, AIQ_STATE_STARTED, AIQ_STATE_RETRY,
	                     AIQ_STATE_FAILURE, AIQ_STATE_REVOKED, AIQ_STATE_SUCCESS};
	for (size_t i = 0; i < sizeof later / sizeof later[0]; i++) {
		aiq_result *r = make(id, later[i], "2");
		ck_assert_int_eq(ct_put(i % 2 ? s : t, r), AIQ_ESTATE);
		aiq_result_free(r);
	}
	expect_state(s, id, AIQ_STATE_SUCCESS, "1");
	expect_state(t, id, AIQ_STATE_SUCCESS, "1");
	aiq__store_close(t);
	aiq__store_close(s);
}
END_TEST

START_TEST(put_batch_each_as_put)
{
	char a[96], b[96], done[96], f[96], twice[96], back[96];
	tid(a, sizeof a, "ba");
	tid(b, sizeof b, "bb");
	tid(done, sizeof done, "bdone");
	tid(f, sizeof f, "bf");
	tid(twice, sizeof twice, "btwice");
	tid(back, sizeof back, "bback");
	aiq__store *s = open_store();
	put(s, done, AIQ_STATE_SUCCESS, "\"first\"");
	aiq_result *rs[] = {
	        make(a, AIQ_STATE_STARTED, NULL),
	        make(b, AIQ_STATE_SUCCESS, "[1, 2]"),
	        make(done, AIQ_STATE_STARTED, NULL), /* final already stored */
	        make(f, AIQ_STATE_FAILURE, NULL),
	        make(twice, AIQ_STATE_STARTED, NULL), /* then final: in order */
	        make(twice, AIQ_STATE_SUCCESS, "3"),
	        make(back, AIQ_STATE_SUCCESS, "4"), /* then backwards: refused */
	        make(back, AIQ_STATE_STARTED, NULL),
	};
	size_t n = sizeof rs / sizeof rs[0];
	int status[8];
	for (size_t i = 0; i < n; i++)
		status[i] = 12345;
	int rc = aiq__store_put_batch(s, (const aiq_result *const *)rs, n, status);
	ck_assert_msg(rc == AIQ_OK, "put_batch: %s", aiq_error_last());
	const int want[] = {AIQ_OK, AIQ_OK, AIQ_ESTATE, AIQ_OK, AIQ_OK, AIQ_OK, AIQ_OK, AIQ_ESTATE};
	for (size_t i = 0; i < n; i++) {
		ck_assert_msg(status[i] == want[i], "status[%zu] = %d (%s), expected %d", i,
		              status[i], aiq_strerror(status[i]), want[i]);
		aiq_result_free(rs[i]);
	}
	expect_state(s, a, AIQ_STATE_STARTED, NULL);
	expect_state(s, b, AIQ_STATE_SUCCESS, "[1, 2]");
	expect_state(s, done, AIQ_STATE_SUCCESS, "\"first\"");
	expect_state(s, f, AIQ_STATE_FAILURE, NULL);
	expect_state(s, twice, AIQ_STATE_SUCCESS, "3");
	expect_state(s, back, AIQ_STATE_SUCCESS, "4");
	ck_assert_int_eq(aiq__store_put_batch(s, NULL, 0, NULL), AIQ_OK);
	aiq__store_close(s);
}
END_TEST

/* get_batch answers each id exactly as get() does, in order, for known and
 * unknown tasks alike; an empty id is refused alone; batches larger than
 * the front's stack arrays work the same. */
START_TEST(get_batch_each_as_get)
{
	const ct_driver *d = ct_driver_get();
	aiq__store *s = open_store();
	if (d->native_get_batch)
		ck_assert_msg(ct_store_has_native_get_batch(s), "%s must have its own get_batch",
		              d->name);
	enum { N = 100 };
	char ids[N][96];
	const char *asked[N + 1];
	for (size_t i = 0; i < N; i++) {
		char what[32];
		/* Some ids carry characters a list syntax must quote. */
		snprintf(what, sizeof what, i % 7 == 3 ? "gb%zu\"q\\,{}" : "gb%zu", i);
		tid(ids[i], sizeof ids[i], what);
		asked[i] = ids[i];
		switch (i % 5) {
		case 0: break; /* never stored: PENDING */
		case 1: put(s, ids[i], AIQ_STATE_STARTED, NULL); break;
		case 2: put(s, ids[i], AIQ_STATE_SUCCESS, "{\"n\": 1}"); break;
		case 3: put(s, ids[i], AIQ_STATE_FAILURE, NULL); break;
		default: put(s, ids[i], AIQ_STATE_REVOKED, NULL); break;
		}
	}
	asked[N] = ""; /* refused alone */
	for (size_t n = 1; n <= N; n = n < 8 ? n + 1 : n * 3) {
		size_t m = n == N ? N + 1 : n;
		aiq_result *rs[N + 1];
		int st[N + 1];
		int rc = aiq__store_get_batch(s, rs, asked, m, st);
		ck_assert_msg(rc == AIQ_OK, "get_batch of %zu: %s", m, aiq_error_last());
		for (size_t i = 0; i < m; i++) {
			if (i == N) {
				ck_assert_int_eq(st[i], AIQ_EINVAL);
				ck_assert_ptr_null(rs[i]);
				continue;
			}
			aiq_result *one = NULL;
			ck_assert_int_eq(ct_get(s, &one, asked[i]), AIQ_OK);
			ck_assert_msg(st[i] == AIQ_OK, "status[%zu] = %s", i, aiq_strerror(st[i]));
			ck_assert_str_eq(aiq_result_task_id(rs[i]), asked[i]);
			ck_assert_int_eq(aiq_result_state(rs[i]), aiq_result_state(one));
			if (aiq_result_json(one))
				ck_assert_str_eq(aiq_result_json(rs[i]), aiq_result_json(one));
			if (aiq_result_error_type(one))
				ck_assert_str_eq(aiq_result_error_type(rs[i]),
				                 aiq_result_error_type(one));
			aiq_result_free(one);
			aiq_result_free(rs[i]);
		}
	}
	ck_assert_int_eq(aiq__store_get_batch(s, NULL, NULL, 0, NULL), AIQ_OK);
	aiq__store_close(s);
}
END_TEST

struct later_put {
	char id[96];
	int delay_ms;
};

static void *put_later(void *arg)
{
	struct later_put *lp = arg;
	aiq__store *s = open_store();
	ts_sleep_ms(lp->delay_ms);
	put(s, lp->id, AIQ_STATE_STARTED, NULL);
	ts_sleep_ms(lp->delay_ms);
	put(s, lp->id, AIQ_STATE_SUCCESS, "\"late\"");
	aiq__store_close(s);
	return NULL;
}

START_TEST(wait_for_final)
{
	struct later_put lp = {.delay_ms = 200};
	tid(lp.id, sizeof lp.id, "wait");
	aiq__store *s = open_store();
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, put_later, &lp), 0);
	int64_t t0 = ts_mono_ms();
	aiq_result *r = NULL;
	int rc = ct_wait(s, &r, lp.id, 10000);
	int64_t took = ts_mono_ms() - t0;
	ck_assert_msg(rc == AIQ_OK, "wait: %s", aiq_error_last());
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS); /* not STARTED */
	ck_assert_str_eq(aiq_result_json(r), "\"late\"");
	ck_assert_msg(took >= 300, "wait returned after %lld ms, before the write",
	              (long long)took);
	aiq_result_free(r);
	pthread_join(t, NULL);
	/* Already final: at once. */
	t0 = ts_mono_ms();
	ck_assert_int_eq(ct_wait(s, &r, lp.id, 10000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_msg(ts_mono_ms() - t0 < 2000, "wait on a final task blocked");
	aiq_result_free(r);
	aiq__store_close(s);
}
END_TEST

START_TEST(wait_times_out_with_latest)
{
	char id[96], none[96];
	tid(id, sizeof id, "wto");
	tid(none, sizeof none, "wnone");
	aiq__store *s = open_store();
	put(s, id, AIQ_STATE_STARTED, NULL);
	aiq_result *r = NULL;
	int64_t t0 = ts_mono_ms();
	ck_assert_int_eq(ct_wait(s, &r, id, 300), AIQ_ETIMEDOUT);
	ck_assert_msg(ts_mono_ms() - t0 >= 250, "timed out early");
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_STARTED);
	aiq_result_free(r);
	r = NULL;
	ck_assert_int_eq(ct_wait(s, &r, none, 100), AIQ_ETIMEDOUT);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	aiq__store_close(s);
}
END_TEST

START_TEST(expiry)
{
	char id[96], keep[96];
	tid(id, sizeof id, "exp");
	tid(keep, sizeof keep, "keep");
	aiq_config *c = ct_config();
	ck_assert_int_eq(aiq_config_set_int(c, "result.expires_s", 1), AIQ_OK);
	aiq__store *s = open_store_cfg(c);
	aiq_config_free(c);
	aiq__store *forever = open_store();
	put(s, id, AIQ_STATE_SUCCESS, "\"soon gone\"");
	put(forever, keep, AIQ_STATE_SUCCESS, "\"kept\"");
	expect_state(s, id, AIQ_STATE_SUCCESS, "\"soon gone\"");
	/* A final state that expired is gone, so the id reads as PENDING. */
	int64_t end = ts_mono_ms() + 5000;
	aiq_result *r = NULL;
	for (;;) {
		ck_assert_int_eq(ct_get(s, &r, id), AIQ_OK);
		int st = aiq_result_state(r);
		aiq_result_free(r);
		if (st == AIQ_STATE_PENDING)
			break;
		ck_assert_msg(ts_mono_ms() < end, "a 1 s result still there after 5 s");
		ts_sleep_ms(100);
	}
	expect_state(forever, keep, AIQ_STATE_SUCCESS, "\"kept\"");
	aiq__store_close(forever);
	aiq__store_close(s);
}
END_TEST

START_TEST(forget_result)
{
	char id[96], other[96], unknown[96];
	tid(id, sizeof id, "forget");
	tid(other, sizeof other, "fkeep");
	tid(unknown, sizeof unknown, "funknown");
	aiq__store *s = open_store(), *t = open_store();
	put(s, id, AIQ_STATE_SUCCESS, "\"gone\"");
	put(s, other, AIQ_STATE_SUCCESS, "\"kept\"");
	int rc = aiq__store_forget(s, id);
	ck_assert_msg(rc == AIQ_OK, "forget: %s", aiq_error_last());
	/* Gone for every handle; only that task's result. */
	expect_state(s, id, AIQ_STATE_PENDING, NULL);
	expect_state(t, id, AIQ_STATE_PENDING, NULL);
	expect_state(t, other, AIQ_STATE_SUCCESS, "\"kept\"");
	/* Nothing stored is not an error, twice over. */
	ck_assert_int_eq(aiq__store_forget(t, id), AIQ_OK);
	ck_assert_int_eq(aiq__store_forget(t, unknown), AIQ_OK);
	ck_assert_int_eq(aiq__store_forget(t, ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq__store_forget(t, NULL), AIQ_EINVAL);
	/* The final state went with it: the task may be stored anew. */
	put(t, id, AIQ_STATE_STARTED, NULL);
	expect_state(s, id, AIQ_STATE_STARTED, NULL);
	put(t, id, AIQ_STATE_FAILURE, NULL);
	expect_state(s, id, AIQ_STATE_FAILURE, NULL);
	aiq__store_close(t);
	aiq__store_close(s);
}
END_TEST

struct forget_waiter {
	char id[96];
	int64_t timeout_ms;
	int rc;
	int state;
	char json[32];
};

static void *wait_thread(void *arg)
{
	struct forget_waiter *fw = arg;
	aiq__store *s = open_store();
	aiq_result *r = NULL;
	fw->rc = ct_wait(s, &r, fw->id, fw->timeout_ms);
	fw->state = r ? aiq_result_state(r) : -1;
	snprintf(fw->json, sizeof fw->json, "%s",
	         r && aiq_result_json(r) ? aiq_result_json(r) : "");
	aiq_result_free(r);
	aiq__store_close(s);
	return NULL;
}

/* A wait() in progress when its task is forgotten neither hangs nor ends:
 * it keeps waiting for a new final state, or its deadline. */
START_TEST(forget_while_waiting)
{
	struct forget_waiter stored = {.timeout_ms = 20000}, expires = {.timeout_ms = 1500};
	tid(stored.id, sizeof stored.id, "fwait");
	tid(expires.id, sizeof expires.id, "fwaitto");
	aiq__store *s = open_store();
	put(s, stored.id, AIQ_STATE_STARTED, NULL);
	put(s, expires.id, AIQ_STATE_STARTED, NULL);
	pthread_t ta, tb;
	int64_t t0 = ts_mono_ms();
	ck_assert_int_eq(pthread_create(&ta, NULL, wait_thread, &stored), 0);
	ck_assert_int_eq(pthread_create(&tb, NULL, wait_thread, &expires), 0);
	ts_sleep_ms(300);
	ck_assert_int_eq(aiq__store_forget(s, stored.id), AIQ_OK);
	ck_assert_int_eq(aiq__store_forget(s, expires.id), AIQ_OK);
	ts_sleep_ms(300);
	put(s, stored.id, AIQ_STATE_SUCCESS, "\"again\"");
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	ck_assert_msg(stored.rc == AIQ_OK, "wait after forget: %s", aiq_strerror(stored.rc));
	ck_assert_int_eq(stored.state, AIQ_STATE_SUCCESS);
	ck_assert_str_eq(stored.json, "\"again\"");
	ck_assert_int_eq(expires.rc, AIQ_ETIMEDOUT);
	ck_assert_int_eq(expires.state, AIQ_STATE_PENDING);
	ck_assert_msg(ts_mono_ms() - t0 >= 1400, "the forgotten task's wait ended early");
	aiq__store_close(s);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("store contract");
	TCase *tc = tcase_create(ct_driver_get()->name);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, caps_declared);
	tcase_add_test(tc, put_get);
	tcase_add_test(tc, failure_kept_whole);
	tcase_add_test(tc, never_backwards);
	tcase_add_test(tc, put_batch_each_as_put);
	tcase_add_test(tc, get_batch_each_as_get);
	tcase_add_test(tc, wait_for_final);
	tcase_add_test(tc, wait_times_out_with_latest);
	tcase_add_test(tc, expiry);
	tcase_add_test(tc, forget_result);
	tcase_add_test(tc, forget_while_waiting);
	suite_add_tcase(s, tc);
	return ts_run(s);
}
