/*
 * Broker semantics every driver keeps, written once and run against each
 * (AIQ_CONTRACT_DRIVER): publish / fetch / fetch_batch / ack / ack_batch,
 * reject with and without requeue, close returning unacked deliveries,
 * delay, dead letters, priority, purge, depth, wakeup, the declared
 * capability set, and a worker draining a queue over the driver.
 */
#include "contract.h"

#include "message.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 5000 /* how long any expected delivery may take to show up */

/* ---- helpers ---- */

static aiq_config *cfg;
/* Held open for the whole case: a memory:// instance lives as long as one
 * of its handles, and "closed, then opened again" must find the same one. */
static aiq__broker *keeper;

static aiq__broker *open_broker(void)
{
	aiq__broker *b = NULL;
	int rc = aiq__broker_open(&b, ct_driver_get()->url, cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	return b;
}

static void setup(void)
{
	cfg = ct_config();
	keeper = open_broker();
}

static void teardown(void)
{
	aiq__broker_close(keeper);
	aiq_config_free(cfg);
	keeper = NULL;
	cfg = NULL;
}

static void make_wire(aiq__wire *w, const char *id, int priority)
{
	aiq__message m;
	aiq__message_init(&m);
	m.id = strdup(id);
	m.task = strdup("contract.echo");
	m.args = json_pack("[s]", id);
	m.priority = priority;
	ck_assert_int_eq(aiq__message_to_wire(w, &m), AIQ_OK);
	aiq__message_clear(&m);
}

static void publish_at(aiq__broker *b, const char *queue, const char *id, int priority,
                       int64_t not_before_ms)
{
	aiq__wire w = {0};
	make_wire(&w, id, priority);
	int rc = ct_publish(b, queue, &w, not_before_ms);
	ck_assert_msg(rc == AIQ_OK, "publish %s: %s", id, aiq_error_last());
	aiq__wire_clear(&w);
}

static void publish(aiq__broker *b, const char *queue, const char *id)
{
	publish_at(b, queue, id, 0, 0);
}

static void consume(aiq__broker *b, const char *queue, unsigned prefetch)
{
	const char *qs[] = {queue};
	int rc = ct_consume(b, qs, 1, prefetch);
	ck_assert_msg(rc == AIQ_OK, "consume: %s", aiq_error_last());
}

static const char *id_of(const aiq__delivery *d)
{
	const char *id = json_string_value(json_object_get(d->wire.headers, "id"));
	ck_assert_ptr_nonnull(id);
	return id;
}

/* The next delivery, within WAIT_MS. */
static aiq__delivery *fetch(aiq__broker *b)
{
	aiq__delivery *d = NULL;
	int rc = ct_fetch(b, &d, WAIT_MS);
	ck_assert_msg(rc == AIQ_OK, "fetch: %s (%s)", aiq_strerror(rc), aiq_error_last());
	ck_assert_ptr_nonnull(d);
	return d;
}

static void expect_nothing(aiq__broker *b, int64_t timeout_ms)
{
	aiq__delivery *d = NULL;
	int rc = ct_fetch(b, &d, timeout_ms);
	ck_assert_msg(rc == AIQ_ETIMEDOUT, "expected no delivery, got %s (%s)",
	              rc == AIQ_OK ? id_of(d) : aiq_strerror(rc), aiq_error_last());
	ck_assert_ptr_null(d);
}

static void ack(aiq__broker *b, aiq__delivery *d)
{
	int rc = ct_ack(b, d);
	ck_assert_msg(rc == AIQ_OK, "ack: %s", aiq_error_last());
	aiq__delivery_free(d);
}

/* Depth reaches `want` within WAIT_MS (a broker may count with a lag). */
static void expect_depth(aiq__broker *b, const char *queue, uint64_t want)
{
	uint64_t n = UINT64_MAX;
	int64_t end = ts_mono_ms() + WAIT_MS;
	do {
		int rc = ct_depth(b, queue, &n);
		ck_assert_msg(rc == AIQ_OK, "depth: %s", aiq_error_last());
		if (n == want)
			return;
		ts_sleep_ms(20);
	} while (ts_mono_ms() < end);
	ck_abort_msg("depth of %s is %llu, expected %llu", queue, (unsigned long long)n,
	             (unsigned long long)want);
}

/* Fetch with fetch_batch until `want` deliveries are held, checking each
 * call's contract; returns how many calls it took. */
static int fetch_batch_all(aiq__broker *b, aiq__delivery **out, size_t max, size_t want)
{
	size_t got = 0;
	int calls = 0;
	int64_t end = ts_mono_ms() + WAIT_MS;
	while (got < want) {
		ck_assert_msg(ts_mono_ms() < end, "only %zu of %zu deliveries arrived", got, want);
		size_t n = 99;
		size_t room = want - got < max ? want - got : max;
		int rc = aiq__broker_fetch_batch(b, out + got, room, &n, 500);
		calls++;
		if (rc == AIQ_ETIMEDOUT) {
			ck_assert_uint_eq(n, 0);
			continue;
		}
		ck_assert_msg(rc == AIQ_OK, "fetch_batch: %s", aiq_error_last());
		ck_assert_msg(n >= 1 && n <= room, "fetch_batch gave %zu (room %zu)", n, room);
		for (size_t i = 0; i < n; i++)
			ck_assert_ptr_nonnull(out[got + i]);
		got += n;
	}
	return calls;
}

static char *qname(char *buf, size_t size, const char *what)
{
	char prefix[64];
	snprintf(prefix, sizeof prefix, "contract.%s", what);
	return ts_unique(buf, size, prefix);
}

/* ---- cases ---- */

START_TEST(caps_declared)
{
	const ct_driver *d = ct_driver_get();
	aiq__broker *b = open_broker();
	ck_assert_str_eq(ct_broker_name(b), d->name);
	ck_assert_msg(ct_broker_caps(b) == d->broker_caps, "%s declares caps %#x, expected %#x",
	              d->name, ct_broker_caps(b), d->broker_caps);
	if (d->native_batches)
		ck_assert_msg(ct_broker_has_native_batches(b),
		              "%s must have its own fetch_batch and ack_batch", d->name);
	aiq__broker_close(b);
}
END_TEST

START_TEST(publish_fetch_ack)
{
	char q[128];
	qname(q, sizeof q, "basic");
	aiq__broker *b = open_broker();
	const char *ids[] = {"pfa-1", "pfa-2", "pfa-3"};
	for (int i = 0; i < 3; i++)
		publish(b, q, ids[i]);
	consume(b, q, 10);
	for (int i = 0; i < 3; i++) {
		aiq__delivery *d = fetch(b);
		ck_assert_str_eq(id_of(d), ids[i]); /* FIFO */
		ck_assert_str_eq(d->queue, q);
		ck_assert(!d->redelivered);
		ck_assert_ptr_null(d->undecodable);
		/* The wire form arrives as it was built. */
		aiq__wire w = {0};
		make_wire(&w, ids[i], 0);
		ck_assert_uint_eq(d->wire.body_len, w.body_len);
		ck_assert_mem_eq(d->wire.body, w.body, w.body_len);
		ck_assert_str_eq(d->wire.content_type, "application/json");
		ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "task")),
		                 "contract.echo");
		aiq__wire_clear(&w);
		ack(b, d);
	}
	expect_nothing(b, 200);
	aiq__broker_close(b);
	/* Acknowledged means gone, also for the next connection. */
	b = open_broker();
	consume(b, q, 10);
	expect_nothing(b, 300);
	expect_depth(b, q, 0);
	aiq__broker_close(b);
}
END_TEST

START_TEST(fetch_batch_and_ack_batch)
{
	char q[128];
	qname(q, sizeof q, "batch");
	aiq__broker *b = open_broker();
	char ids[5][16];
	for (int i = 0; i < 5; i++) {
		snprintf(ids[i], sizeof ids[i], "fb-%d", i);
		publish(b, q, ids[i]);
	}
	expect_depth(b, q, 5);
	consume(b, q, 16);
	aiq__delivery *ds[8] = {0};
	int calls = fetch_batch_all(b, ds, 8, 5);
	if (ct_driver_get()->batch_all_ready)
		ck_assert_msg(calls == 1, "5 ready deliveries took %d fetch_batch calls", calls);
	for (int i = 0; i < 5; i++)
		ck_assert_str_eq(id_of(ds[i]), ids[i]);
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 0), AIQ_OK);
	int rc = aiq__broker_ack_batch(b, ds, 5);
	ck_assert_msg(rc == AIQ_OK, "ack_batch: %s", aiq_error_last());
	for (int i = 0; i < 5; i++)
		aiq__delivery_free(ds[i]);
	size_t n = 7;
	ck_assert_int_eq(aiq__broker_fetch_batch(b, ds, 8, &n, 200), AIQ_ETIMEDOUT);
	ck_assert_uint_eq(n, 0);
	aiq__broker_close(b);
	b = open_broker();
	consume(b, q, 16);
	expect_nothing(b, 300);
	aiq__broker_close(b);
}
END_TEST

/* fetch_batch never holds more than the prefetch bound. */
START_TEST(fetch_batch_prefetch_bound)
{
	char q[128];
	qname(q, sizeof q, "bound");
	aiq__broker *b = open_broker();
	for (int i = 0; i < 5; i++) {
		char id[16];
		snprintf(id, sizeof id, "pb-%d", i);
		publish(b, q, id);
	}
	expect_depth(b, q, 5);
	consume(b, q, 2);
	aiq__delivery *ds[8] = {0};
	fetch_batch_all(b, ds, 8, 2);
	size_t n = 9;
	int rc = aiq__broker_fetch_batch(b, ds + 2, 6, &n, 300);
	ck_assert_msg(rc == AIQ_ETIMEDOUT && n == 0, "a third delivery at prefetch 2 (%s, n=%zu)",
	              aiq_strerror(rc), n);
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 2), AIQ_OK);
	aiq__delivery_free(ds[0]);
	aiq__delivery_free(ds[1]);
	fetch_batch_all(b, ds, 8, 2);
	ck_assert_str_eq(id_of(ds[0]), "pb-2");
	ck_assert_str_eq(id_of(ds[1]), "pb-3");
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 2), AIQ_OK);
	aiq__delivery_free(ds[0]);
	aiq__delivery_free(ds[1]);
	ack(b, fetch(b));
	aiq__broker_close(b);
}
END_TEST

START_TEST(double_ack_refused)
{
	char q[128];
	qname(q, sizeof q, "twice");
	aiq__broker *b = open_broker();
	publish(b, q, "twice-1");
	publish(b, q, "twice-2");
	consume(b, q, 10);
	aiq__delivery *d1 = fetch(b), *d2 = fetch(b);
	ck_assert_int_eq(ct_ack(b, d1), AIQ_OK);
	ck_assert_int_ne(ct_ack(b, d1), AIQ_OK);
	/* A batch with one stale delivery still acknowledges the others. */
	aiq__delivery *both[] = {d1, d2};
	ck_assert_int_ne(aiq__broker_ack_batch(b, both, 2), AIQ_OK);
	aiq__delivery_free(d1);
	aiq__delivery_free(d2);
	aiq__broker_close(b);
	b = open_broker();
	consume(b, q, 10);
	expect_nothing(b, 300);
	aiq__broker_close(b);
}
END_TEST

START_TEST(reject_requeue_and_drop)
{
	char q[128];
	qname(q, sizeof q, "reject");
	aiq__broker *b = open_broker();
	publish(b, q, "rj-1");
	consume(b, q, 10);
	aiq__delivery *d = fetch(b);
	ck_assert(!d->redelivered);
	ck_assert_int_eq(ct_reject(b, d, true), AIQ_OK);
	aiq__delivery_free(d);
	d = fetch(b);
	ck_assert_str_eq(id_of(d), "rj-1");
	ck_assert(d->redelivered || ct_driver_get()->requeue_not_redelivered);
	ck_assert_int_eq(ct_reject(b, d, false), AIQ_OK);
	aiq__delivery_free(d);
	expect_nothing(b, 300);
	expect_depth(b, q, 0);
	aiq__broker_close(b);
	b = open_broker();
	consume(b, q, 10);
	expect_nothing(b, 300);
	aiq__broker_close(b);
}
END_TEST

START_TEST(close_returns_unacked)
{
	char q[128];
	qname(q, sizeof q, "close");
	aiq__broker *b = open_broker();
	publish(b, q, "cl-1");
	publish(b, q, "cl-2");
	consume(b, q, 10);
	aiq__delivery *d1 = fetch(b), *d2 = fetch(b);
	aiq__broker_close(b);
	/* The deliveries stay readable after close. */
	ck_assert_str_eq(id_of(d1), "cl-1");
	ck_assert_str_eq(id_of(d2), "cl-2");
	aiq__delivery_free(d1);
	aiq__delivery_free(d2);
	b = open_broker();
	consume(b, q, 10);
	d1 = fetch(b);
	d2 = fetch(b);
	bool reversed = ct_driver_get()->close_reverses_unacked;
	ck_assert_str_eq(id_of(d1), reversed ? "cl-2" : "cl-1");
	ck_assert_str_eq(id_of(d2), reversed ? "cl-1" : "cl-2");
	ck_assert(d1->redelivered || ct_driver_get()->requeue_not_redelivered);
	ck_assert(d2->redelivered || ct_driver_get()->requeue_not_redelivered);
	ack(b, d1);
	ack(b, d2);
	aiq__broker_close(b);
}
END_TEST

START_TEST(delay)
{
	const ct_driver *drv = ct_driver_get();
	char q[128];
	qname(q, sizeof q, "delay");
	aiq__broker *b = open_broker();
	int64_t due = ts_wall_ms() + 1500;
	publish_at(b, q, "late", 0, due);
	publish(b, q, "now");
	consume(b, q, 10);
	aiq__delivery *d = fetch(b);
	ck_assert_str_eq(id_of(d), "now");
	ack(b, d);
	expect_nothing(b, 500);
	expect_depth(b, q, 0);
	d = NULL;
	int rc = ct_fetch(b, &d, 1500 + drv->delay_slack_ms + WAIT_MS);
	ck_assert_msg(rc == AIQ_OK, "the delayed message never came: %s", aiq_error_last());
	int64_t at = ts_wall_ms();
	ck_assert_str_eq(id_of(d), "late");
	int64_t earliest = drv->delay_early_by_half ? due - 1500 / 2 : due;
	ck_assert_msg(at >= earliest, "delivered %lld ms early", (long long)(due - at));
	ck_assert_msg(at <= due + drv->delay_slack_ms, "delivered %lld ms late",
	              (long long)(at - due));
	ack(b, d);
	aiq__broker_close(b);
}
END_TEST

START_TEST(dead_letter)
{
	char q[128], dq[160];
	qname(q, sizeof q, "dead");
	snprintf(dq, sizeof dq, "%s.dead", q);
	aiq__broker *b = open_broker();
	publish(b, q, "dl-1");
	consume(b, q, 10);
	aiq__delivery *d = fetch(b);
	int rc = ct_dead_letter(b, d, "contract: no handler");
	ck_assert_msg(rc == AIQ_OK, "dead_letter: %s", aiq_error_last());
	/* The caller's delivery is not rewritten by it. */
	ck_assert_ptr_null(json_object_get(d->wire.headers, "x-aiq-dead-reason"));
	aiq__delivery_free(d);
	expect_nothing(b, 200);
	aiq__broker_close(b); /* nothing unacked to return */

	aiq__broker *c = open_broker();
	consume(c, q, 10);
	expect_nothing(c, 300);
	aiq__broker_close(c);
	c = open_broker();
	consume(c, dq, 10);
	d = fetch(c);
	ck_assert_str_eq(id_of(d), "dl-1");
	ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "x-aiq-dead-reason")),
	                 "contract: no handler");
	aiq__wire w = {0};
	make_wire(&w, "dl-1", 0);
	ck_assert_uint_eq(d->wire.body_len, w.body_len);
	ck_assert_mem_eq(d->wire.body, w.body, w.body_len);
	aiq__wire_clear(&w);
	ack(c, d);
	aiq__broker_close(c);
}
END_TEST

START_TEST(priority)
{
	char q[128];
	qname(q, sizeof q, "prio");
	/* RabbitMQ needs priority queues declared as such. */
	ck_assert_int_eq(aiq_config_set_int(cfg, "amqp.queue_max_priority", 10), AIQ_OK);
	aiq__broker *b = open_broker();
	publish_at(b, q, "p1-a", 1, 0);
	publish_at(b, q, "p1-b", 1, 0);
	publish_at(b, q, "p5", 5, 0);
	publish_at(b, q, "p9", 9, 0);
	publish_at(b, q, "p1-c", 1, 0);
	expect_depth(b, q, 5);
	consume(b, q, 1);
	const char *order[] = {"p9", "p5", "p1-a", "p1-b", "p1-c"};
	for (int i = 0; i < 5; i++) {
		aiq__delivery *d = fetch(b);
		ck_assert_str_eq(id_of(d), order[i]);
		ack(b, d);
	}
	aiq__broker_close(b);
}
END_TEST

START_TEST(purge_and_depth)
{
	char q[128];
	qname(q, sizeof q, "purge");
	aiq__broker *b = open_broker();
	for (int i = 0; i < 4; i++) {
		char id[16];
		snprintf(id, sizeof id, "pg-%d", i);
		publish(b, q, id);
	}
	expect_depth(b, q, 4);
	uint64_t removed = 0;
	ck_assert_int_eq(ct_purge(b, q, &removed), AIQ_OK);
	ck_assert_uint_eq(removed, 4);
	expect_depth(b, q, 0);
	consume(b, q, 10);
	expect_nothing(b, 300);
	/* Unacked deliveries are not ready: depth leaves them out, purge keeps them. */
	publish(b, q, "pg-held");
	aiq__delivery *d = fetch(b);
	expect_depth(b, q, 0);
	ck_assert_int_eq(ct_purge(b, q, &removed), AIQ_OK);
	ck_assert_uint_eq(removed, 0);
	ack(b, d);
	aiq__broker_close(b);
}
END_TEST

struct waker {
	aiq__broker *b;
};

static void *wake_later(void *arg)
{
	struct waker *w = arg;
	ts_sleep_ms(200);
	ct_wakeup(w->b);
	return NULL;
}

START_TEST(wakeup_interrupts_fetch)
{
	char q[128];
	qname(q, sizeof q, "wake");
	aiq__broker *b = open_broker();
	consume(b, q, 10);
	/* A wakeup sent while no fetch() waits is kept for the next one. */
	ct_wakeup(b);
	int64_t t0 = ts_mono_ms();
	aiq__delivery *d = NULL;
	ck_assert_int_eq(ct_fetch(b, &d, 30000), AIQ_ETIMEDOUT);
	ck_assert_msg(ts_mono_ms() - t0 < 2000, "a pending wakeup did not end fetch at once");
	if (!ct_driver_get()->wakeup_not_interrupting) {
		/* One sent while fetch() waits ends it. */
		struct waker w = {b};
		pthread_t t;
		ck_assert_int_eq(pthread_create(&t, NULL, wake_later, &w), 0);
		t0 = ts_mono_ms();
		ck_assert_int_eq(ct_fetch(b, &d, 30000), AIQ_ETIMEDOUT);
		ck_assert_msg(ts_mono_ms() - t0 < 10000, "wakeup did not interrupt fetch");
		pthread_join(t, NULL);
	}
	aiq__broker_close(b);
}
END_TEST

static void echo_handler(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_succeed(t, aiq_task_args_json(t));
}

/* The whole path over this driver: a client publishes, a worker on its own
 * thread (the shared fixture) fetches, runs, stores and acknowledges. */
START_TEST(worker_drains_queue)
{
	char q[128], store[96];
	qname(q, sizeof q, "worker");
	ts_unique(store, sizeof store, "memory://contract-results");
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", ct_driver_get()->url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", store), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "queue", q), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 2), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_msg(aiq_client_new(&c, cfg) == AIQ_OK, "client: %s", aiq_error_last());
	ts_worker tw;
	ts_worker_init(&tw, cfg);
	ck_assert_int_eq(aiq_worker_register(tw.worker, "contract.echo", echo_handler, NULL, NULL),
	                 AIQ_OK);
	ts_worker_start(&tw);
	char *ids[5];
	for (int i = 0; i < 5; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d]", i);
		int rc = aiq_client_enqueue(&ids[i], c, "contract.echo", args, NULL, NULL);
		ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	}
	for (int i = 0; i < 5; i++) {
		aiq_result *r = NULL;
		int rc = aiq_client_wait(&r, c, ids[i], 20000);
		ck_assert_msg(rc == AIQ_OK, "wait %s: %s", ids[i], aiq_error_last());
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		char want[32];
		snprintf(want, sizeof want, "[%d]", i);
		ck_assert_str_eq(aiq_result_json(r), want);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	ts_worker_done(&tw);
	aiq__broker *b = open_broker();
	expect_depth(b, q, 0);
	aiq__broker_close(b);
	aiq_client_free(c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("broker contract");
	TCase *tc = tcase_create(ct_driver_get()->name);
	tcase_set_timeout(tc, 60);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, caps_declared);
	tcase_add_test(tc, publish_fetch_ack);
	tcase_add_test(tc, fetch_batch_and_ack_batch);
	tcase_add_test(tc, fetch_batch_prefetch_bound);
	tcase_add_test(tc, double_ack_refused);
	tcase_add_test(tc, reject_requeue_and_drop);
	tcase_add_test(tc, close_returns_unacked);
	/* Gated cases: the driver table says which capabilities this driver has,
	 * and caps_declared checks the driver declares exactly those. */
	unsigned caps = ct_driver_get()->broker_caps;
	if (caps & AIQ__BROKER_CAP_DELAY)
		tcase_add_test(tc, delay);
	else
		printf("%s: no CAP_DELAY: delay not run\n", ct_driver_get()->name);
	if (caps & AIQ__BROKER_CAP_DEAD_LETTER)
		tcase_add_test(tc, dead_letter);
	else
		printf("%s: no CAP_DEAD_LETTER: dead_letter not run\n", ct_driver_get()->name);
	if (caps & AIQ__BROKER_CAP_PRIORITY)
		tcase_add_test(tc, priority);
	else
		printf("%s: no CAP_PRIORITY: priority not run\n", ct_driver_get()->name);
	tcase_add_test(tc, purge_and_depth);
	tcase_add_test(tc, wakeup_interrupts_fetch);
	tcase_add_test(tc, worker_drains_queue);
	suite_add_tcase(s, tc);
	return ts_run(s);
}
