/*
 * The in-process broker and result store, and the driver registries.
 */
#include "broker.h"
#include "store.h"
#include "testutil.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0) {
	}
}

/* A message whose "id" header and body are both `id`. */
static void make_wire(aiq__wire *w, const char *id, int priority)
{
	memset(w, 0, sizeof *w);
	w->headers = json_pack("{s:s}", "id", id);
	w->properties = json_pack("{s:i}", "priority", priority);
	w->content_type = strdup("application/json");
	w->content_encoding = strdup("utf-8");
	w->body = (unsigned char *)strdup(id);
	w->body_len = strlen(id);
	ck_assert_ptr_nonnull(w->headers);
	ck_assert_ptr_nonnull(w->body);
}

static void publish(aiq__broker *b, const char *queue, const char *id, int priority,
                    int64_t not_before_ms)
{
	aiq__wire w;
	make_wire(&w, id, priority);
	ck_assert_int_eq(b->ops->publish(b, queue, &w, not_before_ms), AIQ_OK);
	aiq__wire_clear(&w);
}

static const char *wire_id(const aiq__delivery *d)
{
	return json_string_value(json_object_get(d->wire.headers, "id"));
}

static aiq__broker *open_broker(const char *url)
{
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, url, NULL), AIQ_OK);
	ck_assert_ptr_nonnull(b);
	return b;
}

static void consume1(aiq__broker *b, const char *queue, unsigned prefetch)
{
	const char *qs[] = {queue};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, prefetch), AIQ_OK);
}

/* Fetch one delivery, check its id, and return it (caller acks and frees). */
static aiq__delivery *expect(aiq__broker *b, const char *id, int64_t timeout_ms)
{
	aiq__delivery *d = NULL;
	int rc = b->ops->fetch(b, &d, timeout_ms);
	ck_assert_msg(rc == AIQ_OK, "fetch for %s: %s (%s)", id, aiq_strerror(rc),
	              aiq_error_last());
	ck_assert_ptr_nonnull(d);
	ck_assert_str_eq(wire_id(d), id);
	ck_assert_uint_eq(d->wire.body_len, strlen(id));
	ck_assert_int_eq(memcmp(d->wire.body, id, d->wire.body_len), 0);
	return d;
}

static void expect_ack(aiq__broker *b, const char *id)
{
	aiq__delivery *d = expect(b, id, 1000);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	aiq__delivery_free(d);
}

static void expect_empty(aiq__broker *b, int64_t timeout_ms)
{
	aiq__delivery *d = NULL;
	ck_assert_int_eq(b->ops->fetch(b, &d, timeout_ms), AIQ_ETIMEDOUT);
	ck_assert_ptr_null(d);
}

static uint64_t depth(aiq__broker *b, const char *queue)
{
	uint64_t n = 99999;
	ck_assert_int_eq(b->ops->depth(b, queue, &n), AIQ_OK);
	return n;
}

/* ------------------------------------------------------------------ */
/* Registries and URL redaction                                         */

START_TEST(test_lookup)
{
	const aiq__broker_ops *bo = NULL;
	ck_assert_int_eq(aiq__broker_lookup(&bo, "memory://"), AIQ_OK);
	ck_assert_ptr_eq(bo, &aiq__memory_broker_ops);
	ck_assert_int_eq(aiq__broker_lookup(&bo, "MEMORY://x"), AIQ_OK);
	ck_assert_ptr_eq(bo, &aiq__memory_broker_ops);
	ck_assert_int_eq(aiq__broker_lookup(&bo, "kafka://host:9092"), AIQ_EUNSUPPORTED);
	ck_assert_ptr_null(bo);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "kafka"));
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "not built"));
#ifndef AIQ_HAVE_AMQP
	ck_assert_int_eq(aiq__broker_lookup(&bo, "amqp://guest:guest@localhost//"),
	                 AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "amqp"));
#endif
	ck_assert_int_eq(aiq__broker_lookup(&bo, "no-scheme-here"), AIQ_EINVAL);
	ck_assert_int_eq(aiq__broker_lookup(&bo, "://host"), AIQ_EINVAL);
	ck_assert_int_eq(aiq__broker_lookup(&bo, NULL), AIQ_EINVAL);

	const aiq__store_ops *so = NULL;
	ck_assert_int_eq(aiq__store_lookup(&so, "memory://results"), AIQ_OK);
	ck_assert_ptr_eq(so, &aiq__memory_store_ops);
	ck_assert_int_eq(aiq__store_lookup(&so, "mongodb://x"), AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "mongodb"));
	ck_assert_int_eq(aiq__store_lookup(&so, "results"), AIQ_EINVAL);

	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, "bogus://x", NULL), AIQ_EUNSUPPORTED);
	ck_assert_ptr_null(b);
	aiq__store *s = NULL;
	ck_assert_int_eq(aiq__store_open(&s, "bogus://x", NULL), AIQ_EUNSUPPORTED);
	ck_assert_ptr_null(s);
	aiq__broker_close(NULL);
	aiq__store_close(NULL);
	aiq__delivery_free(NULL);
}
END_TEST

static void check_redact(const char *in, const char *want)
{
	char *got = aiq__url_redact(in);
	ck_assert_ptr_nonnull(got);
	ck_assert_msg(strcmp(got, want) == 0, "redact(%s) = %s, want %s", in, got, want);
	free(got);
}

START_TEST(test_url_redact)
{
	check_redact("amqp://guest:secret@localhost:5672//", "amqp://guest:***@localhost:5672//");
	check_redact("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0");
	check_redact("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0");
	check_redact("amqp://user@host/vhost", "amqp://user@host/vhost");
	check_redact("amqp://u:@host", "amqp://u:***@host");
	check_redact("amqp://u:p@ss/w@host:1/v", "amqp://u:***@host:1/v");
	check_redact("memory://", "memory://");
	check_redact("memory://name", "memory://name");
	check_redact("postgresql://app:pw@db:5432/aiq?sslmode=require&password=x2",
	             "postgresql://app:***@db:5432/aiq?sslmode=require&password=***");
	check_redact("postgresql:///aiq?host=/run/pg&password=&x=1",
	             "postgresql:///aiq?host=/run/pg&password=***&x=1");
	check_redact("not a url", "not a url");
	check_redact("", "");
	ck_assert_ptr_null(aiq__url_redact(NULL));
}
END_TEST

/* ------------------------------------------------------------------ */
/* Broker                                                               */

START_TEST(test_publish_fetch_ack)
{
	aiq__broker *b = open_broker("memory://basic");
	ck_assert_str_eq(b->ops->name, "memory");
	ck_assert(b->ops->caps & AIQ__BROKER_CAP_DELAY);
	ck_assert(b->ops->caps & AIQ__BROKER_CAP_PRIORITY);
	ck_assert(b->ops->caps & AIQ__BROKER_CAP_DEAD_LETTER);

	aiq__delivery *d = NULL;
	ck_assert_int_eq(b->ops->fetch(b, &d, 0), AIQ_ESTATE); /* before consume */
	ck_assert_int_eq(depth(b, "nothing-here"), 0);

	aiq__wire w;
	make_wire(&w, "m1", 0);
	ck_assert_int_eq(b->ops->publish(b, "q", &w, 0), AIQ_OK);
	/* The broker copied it: changing ours changes nothing there. */
	json_object_set_new(w.headers, "id", json_string("changed"));
	aiq__wire_clear(&w);
	ck_assert_int_eq(depth(b, "q"), 1);

	consume1(b, "q", 0);
	d = expect(b, "m1", 1000);
	ck_assert_str_eq(d->queue, "q");
	ck_assert(!d->redelivered);
	ck_assert_str_eq(d->wire.content_type, "application/json");
	ck_assert_int_eq(depth(b, "q"), 0);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_ESTATE); /* twice */
	ck_assert_int_eq(b->ops->reject(b, d, true), AIQ_ESTATE);
	aiq__delivery_free(d);
	expect_empty(b, 0);
	expect_empty(b, 30);

	ck_assert_int_eq(b->ops->publish(b, "", &w, 0), AIQ_EINVAL);
	ck_assert_int_eq(b->ops->publish(b, "q", NULL, 0), AIQ_EINVAL);
	ck_assert_int_eq(b->ops->consume(b, NULL, 0, 0), AIQ_EINVAL);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_too_big)
{
	aiq__broker *b = open_broker("memory://big");
	unsigned char byte = 'x';
	aiq__wire w = {0};
	w.body = &byte;
	w.body_len = (size_t)AIQ__MAX_MESSAGE_BYTES + 1; /* checked before any read */
	ck_assert_int_eq(b->ops->publish(b, "q", &w, 0), AIQ_ETOOBIG);
	ck_assert_int_eq(depth(b, "q"), 0);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_priority_order)
{
	aiq__broker *b = open_broker("memory://prio");
	publish(b, "q", "a0", 0, 0);
	publish(b, "q", "b5", 5, 0);
	publish(b, "q", "c9", 9, 0);
	publish(b, "q", "d5", 5, 0);
	publish(b, "q", "e0", 0, 0);
	publish(b, "q", "f255", 1000, 0); /* clamped to 255 */
	publish(b, "q", "g-1", -3, 0);    /* clamped to 0 */
	consume1(b, "q", 0);
	const char *order[] = {"f255", "c9", "b5", "d5", "a0", "e0", "g-1"};
	for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
		expect_ack(b, order[i]);
	expect_empty(b, 0);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_fifo)
{
	aiq__broker *b = open_broker("memory://fifo");
	char id[32];
	for (int i = 0; i < 500; i++) {
		snprintf(id, sizeof id, "m%d", i);
		publish(b, "q", id, 3, 0);
	}
	ck_assert_int_eq(depth(b, "q"), 500);
	consume1(b, "q", 0);
	for (int i = 0; i < 500; i++) {
		snprintf(id, sizeof id, "m%d", i);
		expect_ack(b, id);
	}
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_round_robin)
{
	aiq__broker *b = open_broker("memory://rr");
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof id, "a%d", i);
		publish(b, "qa", id, 0, 0);
		snprintf(id, sizeof id, "b%d", i);
		publish(b, "qb", id, 0, 0);
	}
	const char *qs[] = {"qa", "qb"};
	ck_assert_int_eq(b->ops->consume(b, qs, 2, 0), AIQ_OK);
	const char *order[] = {"a0", "b0", "a1", "b1", "a2", "b2"};
	for (size_t i = 0; i < 6; i++)
		expect_ack(b, order[i]);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_delayed)
{
	aiq__broker *b = open_broker("memory://delay");
	consume1(b, "q", 0);
	int64_t now = aiq__now_ms();
	int64_t start = aiq__mono_ms();
	/* Wide margins: on a loaded machine the steps before the empty check
	 * may take well over 100 ms. */
	publish(b, "q", "late", 0, now + 1600);
	publish(b, "q", "early", 0, now + 800);
	publish(b, "q", "past", 0, now - 1000); /* already due: ready at once */
	publish(b, "q", "now", 0, 0);
	ck_assert_int_eq(depth(b, "q"), 2);
	expect_ack(b, "past");
	expect_ack(b, "now");
	/* Not visible before it is due. */
	expect_empty(b, 50);

	/* A fetch with a long timeout wakes when the first one falls due. */
	aiq__delivery *d = expect(b, "early", 5000);
	int64_t t1 = aiq__mono_ms() - start;
	ck_assert_msg(t1 >= 780 && t1 < 4000, "early delivered after %lld ms", (long long)t1);
	b->ops->ack(b, d);
	aiq__delivery_free(d);
	d = expect(b, "late", 5000);
	int64_t t2 = aiq__mono_ms() - start;
	ck_assert_msg(t2 >= 1580 && t2 < 5000, "late delivered after %lld ms", (long long)t2);
	b->ops->ack(b, d);
	aiq__delivery_free(d);
	expect_empty(b, 0);
	aiq__broker_close(b);
}
END_TEST

struct delayed_publisher {
	aiq__broker *b;
	int64_t due_ms;
};

static void *publish_delayed_later(void *arg)
{
	struct delayed_publisher *p = arg;
	sleep_ms(50);
	publish(p->b, "q", "soon", 0, p->due_ms);
	return NULL;
}

/* A fetch already blocked for a long time notices a delayed message that
 * another handle publishes meanwhile, and wakes when it falls due. */
START_TEST(test_delayed_published_while_waiting)
{
	aiq__broker *c = open_broker("memory://delay2");
	aiq__broker *p = open_broker("memory://delay2");
	consume1(c, "q", 0);
	struct delayed_publisher arg = {p, aiq__now_ms() + 200};
	pthread_t t;
	int64_t start = aiq__mono_ms();
	pthread_create(&t, NULL, publish_delayed_later, &arg);
	aiq__delivery *d = expect(c, "soon", 10000);
	int64_t took = aiq__mono_ms() - start;
	ck_assert_msg(took >= 180 && took < 5000, "took %lld ms", (long long)took);
	pthread_join(t, NULL);
	c->ops->ack(c, d);
	aiq__delivery_free(d);
	aiq__broker_close(p);
	aiq__broker_close(c);
}
END_TEST

START_TEST(test_prefetch)
{
	aiq__broker *b = open_broker("memory://prefetch");
	for (int i = 0; i < 5; i++) {
		char id[8];
		snprintf(id, sizeof id, "m%d", i);
		publish(b, "q", id, 0, 0);
	}
	consume1(b, "q", 2);
	aiq__delivery *d0 = expect(b, "m0", 0);
	aiq__delivery *d1 = expect(b, "m1", 0);
	expect_empty(b, 0);
	expect_empty(b, 50);
	ck_assert_int_eq(depth(b, "q"), 3);
	ck_assert_int_eq(b->ops->ack(b, d0), AIQ_OK);
	aiq__delivery *d2 = expect(b, "m2", 0);
	expect_empty(b, 0);
	ck_assert_int_eq(b->ops->reject(b, d1, false), AIQ_OK);
	ck_assert_int_eq(b->ops->ack(b, d2), AIQ_OK);
	expect_ack(b, "m3");
	expect_ack(b, "m4");
	aiq__delivery_free(d0);
	aiq__delivery_free(d1);
	aiq__delivery_free(d2);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_reject)
{
	aiq__broker *b = open_broker("memory://reject");
	publish(b, "q", "a", 0, 0);
	publish(b, "q", "b", 0, 0);
	consume1(b, "q", 0);
	aiq__delivery *d = expect(b, "a", 0);
	ck_assert(!d->redelivered);
	ck_assert_int_eq(b->ops->reject(b, d, true), AIQ_OK);
	aiq__delivery_free(d);
	ck_assert_int_eq(depth(b, "q"), 2);
	d = expect(b, "a", 0); /* back at the front */
	ck_assert(d->redelivered);
	ck_assert_int_eq(b->ops->reject(b, d, false), AIQ_OK); /* dropped */
	ck_assert_int_eq(b->ops->reject(b, d, false), AIQ_ESTATE);
	aiq__delivery_free(d);
	d = expect(b, "b", 0);
	ck_assert(!d->redelivered);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	aiq__delivery_free(d);
	expect_empty(b, 0);
	ck_assert_int_eq(depth(b, "q"), 0);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_close_requeues)
{
	aiq__broker *h1 = open_broker("memory://closing");
	aiq__broker *h2 = open_broker("memory://closing");
	publish(h1, "q", "a", 0, 0);
	publish(h1, "q", "b", 0, 0);
	publish(h1, "q", "c", 0, 0);
	consume1(h1, "q", 0);
	consume1(h2, "q", 0);
	aiq__delivery *da = expect(h1, "a", 0);
	aiq__delivery *db = expect(h1, "b", 0);
	ck_assert_int_eq(depth(h2, "q"), 1);
	aiq__broker_close(h1);
	/* The deliveries stay valid after their handle closed. */
	ck_assert_str_eq(wire_id(da), "a");
	ck_assert_str_eq(db->queue, "q");
	aiq__delivery_free(da);
	aiq__delivery_free(db);

	ck_assert_int_eq(depth(h2, "q"), 3);
	aiq__delivery *d = expect(h2, "a", 0);
	ck_assert(d->redelivered);
	h2->ops->ack(h2, d);
	aiq__delivery_free(d);
	d = expect(h2, "b", 0);
	ck_assert(d->redelivered);
	h2->ops->ack(h2, d);
	aiq__delivery_free(d);
	d = expect(h2, "c", 0);
	ck_assert(!d->redelivered);
	/* An unacked delivery from the last handle is simply dropped with the
	 * broker; freeing it afterwards is safe. */
	aiq__broker_close(h2);
	aiq__delivery_free(d);
}
END_TEST

START_TEST(test_dead_letter)
{
	aiq__broker *b = open_broker("memory://dlq");
	publish(b, "jobs", "bad", 7, 0);
	aiq__wire bare = {0}; /* no headers at all */
	bare.body = (unsigned char *)"raw";
	bare.body_len = 3;
	ck_assert_int_eq(b->ops->publish(b, "jobs", &bare, 0), AIQ_OK);

	consume1(b, "jobs", 0);
	aiq__delivery *d = expect(b, "bad", 0);
	ck_assert_int_eq(b->ops->dead_letter(b, d, "unknown task 'x'"), AIQ_OK);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_ESTATE); /* already acknowledged */
	aiq__delivery_free(d);
	d = NULL;
	ck_assert_int_eq(b->ops->fetch(b, &d, 0), AIQ_OK);
	ck_assert_ptr_null(d->wire.headers);
	ck_assert_int_eq(b->ops->dead_letter(b, d, "bad \xff bytes"), AIQ_OK);
	aiq__delivery_free(d);
	ck_assert_int_eq(depth(b, "jobs"), 0);
	ck_assert_int_eq(depth(b, "jobs.dead"), 2);

	aiq__broker *inspect = open_broker("memory://dlq");
	consume1(inspect, "jobs.dead", 0);
	d = expect(inspect, "bad", 0);
	ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "x-aiq-dead-reason")),
	                 "unknown task 'x'");
	ck_assert(!d->redelivered);
	inspect->ops->ack(inspect, d);
	aiq__delivery_free(d);
	ck_assert_int_eq(inspect->ops->fetch(inspect, &d, 0), AIQ_OK);
	ck_assert_uint_eq(d->wire.body_len, 3);
	ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "x-aiq-dead-reason")),
	                 "bad ? bytes");
	inspect->ops->ack(inspect, d);
	aiq__delivery_free(d);
	aiq__broker_close(inspect);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_purge)
{
	aiq__broker *b = open_broker("memory://purge");
	publish(b, "q", "r1", 0, 0);
	publish(b, "q", "r2", 4, 0);
	publish(b, "q", "r3", 0, 0);
	publish(b, "q", "later1", 0, aiq__now_ms() + 3600 * 1000);
	publish(b, "q", "later2", 2, aiq__now_ms() + 7200 * 1000);
	consume1(b, "q", 0);
	aiq__delivery *d = expect(b, "r2", 0); /* unacked: survives the purge */
	ck_assert_int_eq(depth(b, "q"), 2);
	uint64_t removed = 0;
	ck_assert_int_eq(b->ops->purge(b, "q", &removed), AIQ_OK);
	ck_assert_uint_eq(removed, 4);
	ck_assert_int_eq(depth(b, "q"), 0);
	expect_empty(b, 0);
	ck_assert_int_eq(b->ops->reject(b, d, true), AIQ_OK);
	aiq__delivery_free(d);
	ck_assert_int_eq(depth(b, "q"), 1);
	ck_assert_int_eq(b->ops->purge(b, "q", &removed), AIQ_OK);
	ck_assert_uint_eq(removed, 1);
	ck_assert_int_eq(b->ops->purge(b, "never-declared", &removed), AIQ_OK);
	ck_assert_uint_eq(removed, 0);
	aiq__broker_close(b);
}
END_TEST

START_TEST(test_instances)
{
	aiq__broker *a1 = open_broker("memory://alpha");
	aiq__broker *a2 = open_broker("memory://alpha");
	aiq__broker *bb = open_broker("memory://beta");
	aiq__broker *def = open_broker("memory://");
	publish(a1, "q", "x", 0, 0);
	ck_assert_int_eq(depth(a2, "q"), 1);
	ck_assert_int_eq(depth(bb, "q"), 0);
	ck_assert_int_eq(depth(def, "q"), 0);
	aiq__broker_close(a1);
	/* Still alive: a2 holds the instance. */
	ck_assert_int_eq(depth(a2, "q"), 1);
	aiq__broker_close(a2);
	/* The last handle closed: a new one starts empty. */
	a1 = open_broker("memory://alpha");
	ck_assert_int_eq(depth(a1, "q"), 0);
	aiq__broker_close(a1);
	aiq__broker_close(bb);
	aiq__broker_close(def);

	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__memory_broker_ops.open(&b, "redis://x", NULL), AIQ_EINVAL);
}
END_TEST

struct blocked_fetch {
	aiq__broker *b;
	int rc;
	int64_t took_ms;
};

static void *fetch_blocking(void *arg)
{
	struct blocked_fetch *f = arg;
	aiq__delivery *d = NULL;
	int64_t start = aiq__mono_ms();
	f->rc = f->b->ops->fetch(f->b, &d, 20000);
	f->took_ms = aiq__mono_ms() - start;
	aiq__delivery_free(d);
	return NULL;
}

START_TEST(test_wakeup)
{
	aiq__broker *b = open_broker("memory://wake");
	consume1(b, "q", 0);
	struct blocked_fetch f = {b, 1, 0};
	pthread_t t;
	pthread_create(&t, NULL, fetch_blocking, &f);
	sleep_ms(100);
	b->ops->wakeup(b);
	pthread_join(t, NULL);
	ck_assert_int_eq(f.rc, AIQ_ETIMEDOUT);
	ck_assert_msg(f.took_ms < 5000, "wakeup took %lld ms", (long long)f.took_ms);

	/* A wakeup that arrives before the fetch is not lost. */
	b->ops->wakeup(b);
	int64_t start = aiq__mono_ms();
	expect_empty(b, 20000);
	ck_assert_int_lt(aiq__mono_ms() - start, 5000);

	/* A publish wakes a blocked fetch with the message. */
	f.rc = 1;
	pthread_create(&t, NULL, fetch_blocking, &f);
	sleep_ms(50);
	aiq__broker *p = open_broker("memory://wake");
	publish(p, "q", "m", 0, 0);
	pthread_join(t, NULL);
	ck_assert_int_eq(f.rc, AIQ_OK);
	ck_assert_int_lt(f.took_ms, 5000);
	aiq__broker_close(p);
	aiq__broker_close(b);
}
END_TEST

#define STRESS_PRODUCERS    4
#define STRESS_CONSUMERS    4
#define STRESS_PER_PRODUCER 5000
#define STRESS_TOTAL        (STRESS_PRODUCERS * STRESS_PER_PRODUCER)

struct stress {
	atomic_int seen[STRESS_TOTAL];
	atomic_int acked;
	atomic_int errors;
};

struct stress_arg {
	struct stress *st;
	int index;
};

static void *stress_producer(void *arg)
{
	struct stress_arg *a = arg;
	aiq__broker *b = open_broker("memory://stress");
	for (int i = 0; i < STRESS_PER_PRODUCER; i++) {
		char id[32];
		snprintf(id, sizeof id, "%d", a->index * STRESS_PER_PRODUCER + i);
		aiq__wire w;
		make_wire(&w, id, i % 3);
		if (b->ops->publish(b, "stress", &w, 0) != AIQ_OK)
			atomic_fetch_add(&a->st->errors, 1);
		aiq__wire_clear(&w);
	}
	aiq__broker_close(b);
	return NULL;
}

static void *stress_consumer(void *arg)
{
	struct stress_arg *a = arg;
	aiq__broker *b = open_broker("memory://stress");
	const char *qs[] = {"stress"};
	b->ops->consume(b, qs, 1, 8);
	unsigned n = 0;
	while (atomic_load(&a->st->acked) < STRESS_TOTAL) {
		aiq__delivery *d = NULL;
		int rc = b->ops->fetch(b, &d, 20);
		if (rc == AIQ_ETIMEDOUT)
			continue;
		if (rc != AIQ_OK) {
			atomic_fetch_add(&a->st->errors, 1);
			break;
		}
		int id = atoi(json_string_value(json_object_get(d->wire.headers, "id")));
		/* Now and then hand one back: it must still be consumed once. */
		if (++n % 97 == 0) {
			if (b->ops->reject(b, d, true) != AIQ_OK)
				atomic_fetch_add(&a->st->errors, 1);
		} else {
			if (id < 0 || id >= STRESS_TOTAL || b->ops->ack(b, d) != AIQ_OK)
				atomic_fetch_add(&a->st->errors, 1);
			else
				atomic_fetch_add(&a->st->seen[id], 1);
			atomic_fetch_add(&a->st->acked, 1);
		}
		aiq__delivery_free(d);
	}
	aiq__broker_close(b);
	return NULL;
}

START_TEST(test_stress)
{
	struct stress *st = calloc(1, sizeof *st);
	ck_assert_ptr_nonnull(st);
	/* Keep the instance alive for the whole run. */
	aiq__broker *keep = open_broker("memory://stress");
	pthread_t prod[STRESS_PRODUCERS], cons[STRESS_CONSUMERS];
	struct stress_arg pa[STRESS_PRODUCERS], ca[STRESS_CONSUMERS];
	for (int i = 0; i < STRESS_CONSUMERS; i++) {
		ca[i] = (struct stress_arg){st, i};
		pthread_create(&cons[i], NULL, stress_consumer, &ca[i]);
	}
	for (int i = 0; i < STRESS_PRODUCERS; i++) {
		pa[i] = (struct stress_arg){st, i};
		pthread_create(&prod[i], NULL, stress_producer, &pa[i]);
	}
	for (int i = 0; i < STRESS_PRODUCERS; i++)
		pthread_join(prod[i], NULL);
	for (int i = 0; i < STRESS_CONSUMERS; i++)
		pthread_join(cons[i], NULL);
	ck_assert_int_eq(atomic_load(&st->errors), 0);
	ck_assert_int_eq(atomic_load(&st->acked), STRESS_TOTAL);
	for (int i = 0; i < STRESS_TOTAL; i++)
		ck_assert_msg(atomic_load(&st->seen[i]) == 1, "message %d consumed %d times", i,
		              atomic_load(&st->seen[i]));
	ck_assert_int_eq(depth(keep, "stress"), 0);
	aiq__broker_close(keep);
	free(st);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Result store                                                         */

static aiq__store *open_store(const char *url, const aiq_config *cfg)
{
	aiq__store *s = NULL;
	int rc = aiq__store_open(&s, url, cfg);
	ck_assert_msg(rc == AIQ_OK, "open %s: %s", url, aiq_error_last());
	return s;
}

static aiq_result *make_result(const char *id, int state, const char *json)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq__result_new(&r, id, state), AIQ_OK);
	if (json)
		ck_assert_int_eq(aiq__result_set_json(r, json), AIQ_OK);
	if (state == AIQ_STATE_FAILURE)
		ck_assert_int_eq(aiq__result_set_error(r, "ValueError", "boom", "builtins", NULL),
		                 AIQ_OK);
	if (aiq_state_is_ready(state))
		aiq__result_mark_done(r);
	return r;
}

static void put_state(aiq__store *s, const char *id, int state, const char *json, int want_rc)
{
	aiq_result *r = make_result(id, state, json);
	int rc = s->ops->put(s, r);
	ck_assert_msg(rc == want_rc, "put %s %s: %d (%s)", id, aiq_state_name(state), rc,
	              aiq_error_last());
	aiq_result_free(r);
}

static int get_state(aiq__store *s, const char *id)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(s->ops->get(s, &r, id), AIQ_OK);
	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(aiq_result_task_id(r), id);
	int state = aiq_result_state(r);
	aiq_result_free(r);
	return state;
}

START_TEST(test_store_put_get)
{
	aiq__store *s = open_store("memory://st-basic", NULL);
	ck_assert_str_eq(s->ops->name, "memory");
	ck_assert(s->ops->caps & AIQ__STORE_CAP_NOTIFY);

	aiq_result *r = NULL;
	ck_assert_int_eq(s->ops->get(s, &r, "unknown"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	ck_assert_str_eq(aiq_result_task_id(r), "unknown");
	ck_assert_str_eq(aiq_result_json(r), "null");
	aiq_result_free(r);

	aiq_result *in = make_result("t1", AIQ_STATE_FAILURE, "{\"a\": 1}");
	ck_assert_int_eq(s->ops->put(s, in), AIQ_OK);
	/* Stored by copy: changing ours afterwards changes nothing there. */
	ck_assert_int_eq(aiq__result_set_json(in, "[2]"), AIQ_OK);
	aiq_result *a = NULL, *b = NULL;
	ck_assert_int_eq(s->ops->get(s, &a, "t1"), AIQ_OK);
	ck_assert_int_eq(s->ops->get(s, &b, "t1"), AIQ_OK);
	ck_assert_ptr_ne(a, b);
	ck_assert_int_eq(aiq_result_state(a), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_json(a), "{\"a\": 1}");
	ck_assert_str_eq(aiq_result_error_type(a), "ValueError");
	ck_assert_str_eq(aiq_result_error_message(a), "boom");
	ck_assert_ptr_nonnull(aiq_result_date_done(a));
	ck_assert_str_eq(aiq_result_date_done(a), aiq_result_date_done(in));
	aiq_result_free(a);
	ck_assert_str_eq(aiq_result_json(b), "{\"a\": 1}");
	aiq_result_free(b);
	aiq_result_free(in);

	/* Shared by name, isolated from other names. */
	aiq__store *same = open_store("memory://st-basic", NULL);
	aiq__store *other = open_store("memory://st-other", NULL);
	ck_assert_int_eq(get_state(same, "t1"), AIQ_STATE_FAILURE);
	ck_assert_int_eq(get_state(other, "t1"), AIQ_STATE_PENDING);
	aiq__store_close(other);
	aiq__store_close(same);

	ck_assert_int_eq(s->ops->put(s, NULL), AIQ_EINVAL);
	ck_assert_int_eq(s->ops->get(s, &r, ""), AIQ_EINVAL);
	ck_assert_int_eq(s->ops->get(s, &r, NULL), AIQ_EINVAL);

	/* Many records: the table grows and every one stays reachable. */
	char id[32];
	for (int i = 0; i < 3000; i++) {
		snprintf(id, sizeof id, "many-%d", i);
		put_state(s, id, i % 2 ? AIQ_STATE_SUCCESS : AIQ_STATE_STARTED, NULL, AIQ_OK);
	}
	for (int i = 0; i < 3000; i++) {
		snprintf(id, sizeof id, "many-%d", i);
		ck_assert_int_eq(get_state(s, id), i % 2 ? AIQ_STATE_SUCCESS : AIQ_STATE_STARTED);
	}
	aiq__store_close(s);
}
END_TEST

START_TEST(test_store_final_kept)
{
	aiq__store *s = open_store("memory://st-final", NULL);
	put_state(s, "t", AIQ_STATE_RECEIVED, NULL, AIQ_OK);
	put_state(s, "t", AIQ_STATE_STARTED, NULL, AIQ_OK);
	put_state(s, "t", AIQ_STATE_PROGRESS, "{\"done\": 3}", AIQ_OK);
	put_state(s, "t", AIQ_STATE_STARTED, NULL, AIQ_OK); /* non-final replaces non-final */
	ck_assert_int_eq(get_state(s, "t"), AIQ_STATE_STARTED);
	put_state(s, "t", AIQ_STATE_SUCCESS, "42", AIQ_OK);
	put_state(s, "t", AIQ_STATE_FAILURE, NULL, AIQ_ESTATE);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "SUCCESS"));
	put_state(s, "t", AIQ_STATE_STARTED, NULL, AIQ_ESTATE);
	put_state(s, "t", AIQ_STATE_SUCCESS, "43", AIQ_ESTATE);
	aiq_result *r = NULL;
	ck_assert_int_eq(s->ops->get(s, &r, "t"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "42");
	aiq_result_free(r);

	put_state(s, "rev", AIQ_STATE_REVOKED, NULL, AIQ_OK);
	put_state(s, "rev", AIQ_STATE_SUCCESS, NULL, AIQ_ESTATE);
	aiq__store_close(s);
}
END_TEST

START_TEST(test_store_wait_ready)
{
	aiq__store *s = open_store("memory://st-wait1", NULL);
	put_state(s, "t", AIQ_STATE_SUCCESS, "\"ok\"", AIQ_OK);
	aiq_result *r = NULL;
	int64_t start = aiq__mono_ms();
	ck_assert_int_eq(s->ops->wait(s, &r, "t", 0), AIQ_OK);
	ck_assert_str_eq(aiq_result_json(r), "\"ok\"");
	aiq_result_free(r);
	ck_assert_int_eq(s->ops->wait(s, &r, "t", -1), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	ck_assert_int_eq(s->ops->wait(s, &r, "t", 10000), AIQ_OK);
	aiq_result_free(r);
	ck_assert_int_lt(aiq__mono_ms() - start, 1000);
	aiq__store_close(s);
}
END_TEST

struct later_put {
	const char *url;
	const char *id;
	int delay_ms;
};

static void *put_later(void *arg)
{
	struct later_put *p = arg;
	aiq__store *s = open_store(p->url, NULL);
	sleep_ms(p->delay_ms);
	put_state(s, p->id, AIQ_STATE_STARTED, NULL, AIQ_OK);
	char other[64];
	snprintf(other, sizeof other, "not-%s", p->id); /* wakes waiters, not for them */
	put_state(s, other, AIQ_STATE_SUCCESS, NULL, AIQ_OK);
	sleep_ms(p->delay_ms);
	put_state(s, p->id, AIQ_STATE_SUCCESS, "[1, 2]", AIQ_OK);
	aiq__store_close(s);
	return NULL;
}

START_TEST(test_store_wait_wakes)
{
	aiq__store *s = open_store("memory://st-wait2", NULL);
	struct later_put p = {"memory://st-wait2", "t", 100};
	pthread_t t;
	int64_t start = aiq__mono_ms();
	pthread_create(&t, NULL, put_later, &p);
	aiq_result *r = NULL;
	ck_assert_int_eq(s->ops->wait(s, &r, "t", 20000), AIQ_OK);
	int64_t took = aiq__mono_ms() - start;
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "[1, 2]");
	ck_assert_msg(took >= 150 && took < 10000, "took %lld ms", (long long)took);
	aiq_result_free(r);
	pthread_join(t, NULL);

	/* Forever also wakes. */
	p.id = "t2";
	p.delay_ms = 30;
	pthread_create(&t, NULL, put_later, &p);
	ck_assert_int_eq(s->ops->wait(s, &r, "t2", -1), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	pthread_join(t, NULL);
	aiq__store_close(s);
}
END_TEST

START_TEST(test_store_wait_timeout)
{
	aiq__store *s = open_store("memory://st-wait3", NULL);
	put_state(s, "t", AIQ_STATE_PROGRESS, "{\"step\": 2}", AIQ_OK);
	aiq_result *r = NULL;
	int64_t start = aiq__mono_ms();
	ck_assert_int_eq(s->ops->wait(s, &r, "t", 100), AIQ_ETIMEDOUT);
	int64_t took = aiq__mono_ms() - start;
	ck_assert_msg(took >= 95 && took < 5000, "took %lld ms", (long long)took);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PROGRESS);
	ck_assert_str_eq(aiq_result_json(r), "{\"step\": 2}");
	aiq_result_free(r);
	r = NULL;
	ck_assert_int_eq(s->ops->wait(s, &r, "nobody", 0), AIQ_ETIMEDOUT);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	ck_assert_str_eq(aiq_result_task_id(r), "nobody");
	aiq_result_free(r);
	aiq__store_close(s);
}
END_TEST

struct notes {
	atomic_int calls;
	atomic_int entered;
	atomic_int exited;
	int sleep_ms;
	char last_id[64];
	int last_state;
};

static void on_final(const aiq_result *r, void *userdata)
{
	struct notes *n = userdata;
	atomic_fetch_add(&n->entered, 1);
	if (n->sleep_ms)
		sleep_ms(n->sleep_ms);
	snprintf(n->last_id, sizeof n->last_id, "%s", aiq_result_task_id(r));
	n->last_state = aiq_result_state(r);
	atomic_fetch_add(&n->calls, 1);
	atomic_fetch_add(&n->exited, 1);
}

START_TEST(test_store_subscribe)
{
	aiq__store *sub = open_store("memory://st-sub", NULL);
	aiq__store *w = open_store("memory://st-sub", NULL);
	aiq__store *elsewhere = open_store("memory://st-sub-other", NULL);
	struct notes n;
	memset(&n, 0, sizeof n);
	ck_assert_int_eq(sub->ops->subscribe(sub, on_final, &n), AIQ_OK);

	put_state(w, "a", AIQ_STATE_STARTED, NULL, AIQ_OK);
	ck_assert_int_eq(atomic_load(&n.calls), 0);
	put_state(w, "a", AIQ_STATE_SUCCESS, "1", AIQ_OK);
	ck_assert_int_eq(atomic_load(&n.calls), 1);
	ck_assert_str_eq(n.last_id, "a");
	ck_assert_int_eq(n.last_state, AIQ_STATE_SUCCESS);
	put_state(w, "a", AIQ_STATE_SUCCESS, "1", AIQ_ESTATE); /* not again */
	ck_assert_int_eq(atomic_load(&n.calls), 1);
	put_state(sub, "b", AIQ_STATE_FAILURE, NULL, AIQ_OK); /* its own writes too */
	ck_assert_int_eq(atomic_load(&n.calls), 2);
	ck_assert_str_eq(n.last_id, "b");
	ck_assert_int_eq(n.last_state, AIQ_STATE_FAILURE);
	put_state(elsewhere, "c", AIQ_STATE_SUCCESS, NULL, AIQ_OK); /* other instance */
	ck_assert_int_eq(atomic_load(&n.calls), 2);

	ck_assert_int_eq(sub->ops->subscribe(sub, NULL, NULL), AIQ_OK);
	put_state(w, "d", AIQ_STATE_REVOKED, NULL, AIQ_OK);
	ck_assert_int_eq(atomic_load(&n.calls), 2);

	aiq__store_close(elsewhere);
	aiq__store_close(w);
	aiq__store_close(sub);
}
END_TEST

static void *put_final(void *arg)
{
	aiq__store *s = open_store("memory://st-sub2", NULL);
	put_state(s, (const char *)arg, AIQ_STATE_SUCCESS, NULL, AIQ_OK);
	aiq__store_close(s);
	return NULL;
}

/* Removal waits until a call of the old callback that is running returns. */
START_TEST(test_store_unsubscribe_waits)
{
	aiq__store *sub = open_store("memory://st-sub2", NULL);
	struct notes n;
	memset(&n, 0, sizeof n);
	n.sleep_ms = 200;
	ck_assert_int_eq(sub->ops->subscribe(sub, on_final, &n), AIQ_OK);
	pthread_t t;
	pthread_create(&t, NULL, put_final, (void *)"slow");
	while (atomic_load(&n.entered) == 0)
		sleep_ms(1);
	ck_assert_int_eq(atomic_load(&n.exited), 0);
	ck_assert_int_eq(sub->ops->subscribe(sub, NULL, NULL), AIQ_OK);
	ck_assert_int_eq(atomic_load(&n.exited), 1);
	pthread_join(t, NULL);
	ck_assert_int_eq(atomic_load(&n.calls), 1);
	aiq__store_close(sub);
}
END_TEST

struct self_unsub {
	aiq__store *s;
	atomic_int calls;
};

static void unsubscribe_self(const aiq_result *r, void *userdata)
{
	(void)r;
	struct self_unsub *u = userdata;
	atomic_fetch_add(&u->calls, 1);
	u->s->ops->subscribe(u->s, NULL, NULL); /* must not wait for itself */
}

START_TEST(test_store_unsubscribe_from_callback)
{
	aiq__store *s = open_store("memory://st-sub3", NULL);
	struct self_unsub u = {s, 0};
	ck_assert_int_eq(s->ops->subscribe(s, unsubscribe_self, &u), AIQ_OK);
	put_state(s, "x", AIQ_STATE_SUCCESS, NULL, AIQ_OK);
	put_state(s, "y", AIQ_STATE_SUCCESS, NULL, AIQ_OK);
	ck_assert_int_eq(atomic_load(&u.calls), 1);
	aiq__store_close(s);
}
END_TEST

START_TEST(test_store_expiry)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "result.expires_s", 1), AIQ_OK);
	aiq__store *s = open_store("memory://st-expiry", cfg);
	aiq_config *never = NULL;
	ck_assert_int_eq(aiq_config_new(&never), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(never, "result.expires_s", 0), AIQ_OK);
	aiq__store *keep = open_store("memory://st-expiry", never);

	put_state(s, "done", AIQ_STATE_SUCCESS, "1", AIQ_OK);
	put_state(s, "running", AIQ_STATE_STARTED, NULL, AIQ_OK);
	put_state(keep, "kept", AIQ_STATE_SUCCESS, NULL, AIQ_OK);
	ck_assert_int_eq(get_state(s, "done"), AIQ_STATE_SUCCESS);
	sleep_ms(700);
	put_state(s, "running", AIQ_STATE_PROGRESS, NULL, AIQ_OK); /* a write renews */
	sleep_ms(550);
	/* 1.25 s after its write, "done" reads as absent; "running" was renewed. */
	ck_assert_int_eq(get_state(s, "done"), AIQ_STATE_PENDING);
	ck_assert_int_eq(get_state(keep, "done"), AIQ_STATE_PENDING);
	ck_assert_int_eq(get_state(s, "running"), AIQ_STATE_PROGRESS);
	ck_assert_int_eq(get_state(s, "kept"), AIQ_STATE_SUCCESS);
	/* An expired final state no longer blocks a write. */
	put_state(s, "done", AIQ_STATE_FAILURE, NULL, AIQ_OK);
	ck_assert_int_eq(get_state(s, "done"), AIQ_STATE_FAILURE);
	sleep_ms(1200);
	/* Lazy purge on put drops the rest; reads agree. */
	put_state(keep, "trigger", AIQ_STATE_STARTED, NULL, AIQ_OK);
	ck_assert_int_eq(get_state(s, "running"), AIQ_STATE_PENDING);
	ck_assert_int_eq(get_state(s, "done"), AIQ_STATE_PENDING);
	ck_assert_int_eq(get_state(s, "kept"), AIQ_STATE_SUCCESS);
	aiq_result *r = NULL;
	ck_assert_int_eq(s->ops->wait(s, &r, "done", 0), AIQ_ETIMEDOUT);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);

	aiq__store_close(keep);
	aiq__store_close(s);
	aiq_config_free(never);
	aiq_config_free(cfg);
}
END_TEST

/* ---- the decoded handoff (aiq__wire.local) ---- */

static void same_str(const char *a, const char *b, const char *what)
{
	ck_assert_msg((a == NULL) == (b == NULL) && (a == NULL || strcmp(a, b) == 0),
	              "%s: '%s' vs '%s'", what, a ? a : "(null)", b ? b : "(null)");
}

static void same_json(const json_t *a, const json_t *b, const char *what)
{
	char *ta = a ? json_dumps(a, JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
	char *tb = b ? json_dumps(b, JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
	same_str(ta, tb, what);
	/* json_equal also tells integer 1 from real 1.0. */
	ck_assert_msg((a == NULL && b == NULL) || json_equal(a, b), "%s differs", what);
	free(ta);
	free(tb);
}

/* Every field the worker reads: the handed-over model must be what the
 * wire path decodes. */
static void same_message(const aiq__message *a, const aiq__message *b)
{
	ck_assert_int_eq(a->protocol, b->protocol);
	same_str(a->id, b->id, "id");
	same_str(a->task, b->task, "task");
	same_str(a->lang, b->lang, "lang");
	same_str(a->shadow, b->shadow, "shadow");
	same_str(a->root_id, b->root_id, "root_id");
	same_str(a->parent_id, b->parent_id, "parent_id");
	same_str(a->group, b->group, "group");
	same_str(a->origin, b->origin, "origin");
	same_str(a->argsrepr, b->argsrepr, "argsrepr");
	same_str(a->kwargsrepr, b->kwargsrepr, "kwargsrepr");
	same_json(a->args, b->args, "args");
	same_json(a->kwargs, b->kwargs, "kwargs");
	same_json(a->embed, b->embed, "embed");
	same_json(a->extra_headers, b->extra_headers, "extra headers");
	ck_assert_int_eq(a->retries, b->retries);
	ck_assert_int_eq(a->eta_us, b->eta_us);
	ck_assert_int_eq(a->expires_us, b->expires_us);
	ck_assert(a->time_limit == b->time_limit);
	ck_assert(a->soft_time_limit == b->soft_time_limit);
	ck_assert_int_eq(a->ignore_result, b->ignore_result);
	ck_assert_int_eq(a->max_retries, b->max_retries);
	same_str(a->correlation_id, b->correlation_id, "correlation_id");
	same_str(a->reply_to, b->reply_to, "reply_to");
	ck_assert_int_eq(a->priority, b->priority);
	ck_assert_int_eq(a->delivery_mode, b->delivery_mode);
}

/* A wire with its decoded model attached, as the client builds it for an
 * in-process broker; *ref receives what decoding the wire gives. */
static void make_local_wire(aiq__wire *w, aiq__message *ref, const char *id)
{
	aiq__message m;
	aiq__message_init(&m);
	json_error_t e;
	m.args = json_loads("[1, 2.5, 1.0, \"\\u00e9t\\u00e9\", {\"a\": [null, true]}, "
	                    "-9007199254740993]",
	                    0, &e);
	m.kwargs = json_loads("{\"k\": 1.0, \"s\": \"x\", \"n\": {\"deep\": []}}", 0, &e);
	ck_assert_ptr_nonnull(m.args);
	ck_assert_ptr_nonnull(m.kwargs);
	m.id = strdup(id);
	m.task = strdup("tasks.local");
	m.root_id = strdup(id);
	m.reply_to = strdup("reply.q");
	m.eta_us = aiq__now_us() + 123456;
	m.expires_us = aiq__now_us() + 60 * 1000000LL + 7;
	m.time_limit = 2.5;
	m.soft_time_limit = 1;
	m.priority = 7;
	m.max_retries = 4;
	m.argsrepr = aiq__pyrepr_args(m.args, 1024);
	m.kwargsrepr = aiq__pyrepr_kwargs(m.kwargs, 1024);
	ck_assert_int_eq(aiq__message_to_wire(w, &m), AIQ_OK);
	ck_assert_int_eq(aiq__message_from_wire(ref, w), AIQ_OK);
	ck_assert_int_eq(aiq__message_local(&w->local, w, &m), AIQ_OK);
	ck_assert_ptr_null(m.args); /* moved, not shared */
	ck_assert_ptr_null(m.kwargs);
	aiq__message_clear(&m);
}

static void check_wire_decodes(const aiq__delivery *d, const aiq__message *ref)
{
	ck_assert_ptr_null(d->message);
	aiq__message got;
	ck_assert_int_eq(aiq__message_from_wire(&got, &d->wire), AIQ_OK);
	same_message(&got, ref);
	aiq__message_clear(&got);
}

/* Published in-process with its model: the first delivery to a handle that
 * accepts decoded messages carries the model (no wire), identical to what
 * the wire decodes; after a requeue and after close() the message comes
 * back as its wire, which still decodes to the same. A handle that does
 * not accept them gets the wire even on the first delivery. */
START_TEST(test_memory_decoded_handoff)
{
	aiq__broker *pub = open_broker("memory://local_handoff");
	aiq__broker *c = open_broker("memory://local_handoff");
	ck_assert(aiq__broker_takes_decoded(pub));
	consume1(c, "q", 0);
	aiq__broker_accept_decoded(c);

	aiq__message ref;
	aiq__wire w;
	make_local_wire(&w, &ref, "local-1");
	ck_assert_int_eq(aiq__broker_publish(pub, "q", &w, 0), AIQ_OK);
	ck_assert_ptr_null(w.local); /* the broker took it */
	aiq__wire_clear(&w);

	aiq__delivery *d = NULL;
	ck_assert_int_eq(aiq__broker_fetch(c, &d, 1000), AIQ_OK);
	ck_assert_ptr_nonnull(d->message);
	ck_assert_ptr_null(d->wire.headers);
	ck_assert_ptr_null(d->wire.body);
	ck_assert(!d->redelivered);
	same_message(d->message, &ref);

	/* Requeued: the broker's wire comes back. */
	ck_assert_int_eq(aiq__broker_reject(c, d, true), AIQ_OK);
	aiq__delivery_free(d);
	ck_assert_int_eq(aiq__broker_fetch(c, &d, 1000), AIQ_OK);
	ck_assert(d->redelivered);
	check_wire_decodes(d, &ref);
	aiq__delivery_free(d);

	/* Returned by close(): the same on the next handle. */
	aiq__broker_close(c);
	c = open_broker("memory://local_handoff");
	consume1(c, "q", 0);
	aiq__broker_accept_decoded(c);
	ck_assert_int_eq(aiq__broker_fetch(c, &d, 1000), AIQ_OK);
	ck_assert(d->redelivered);
	check_wire_decodes(d, &ref);
	/* Dead-lettered: the kept wire, with the reason header. */
	ck_assert_int_eq(aiq__broker_dead_letter(c, d, "why"), AIQ_OK);
	aiq__delivery_free(d);
	aiq__broker_close(c);

	/* A handle that did not ask for models gets the wire. */
	aiq__message_clear(&ref);
	make_local_wire(&w, &ref, "local-2");
	ck_assert_int_eq(aiq__broker_publish(pub, "q2", &w, 0), AIQ_OK);
	aiq__wire_clear(&w);
	aiq__broker *plain = open_broker("memory://local_handoff");
	consume1(plain, "q2", 0);
	ck_assert_int_eq(aiq__broker_fetch(plain, &d, 1000), AIQ_OK);
	check_wire_decodes(d, &ref);
	ck_assert_int_eq(aiq__broker_ack(plain, d), AIQ_OK);
	aiq__delivery_free(d);

	/* The dead-lettered copy is the wire with its reason. */
	consume1(plain, "q.dead", 0);
	ck_assert_int_eq(aiq__broker_fetch(plain, &d, 1000), AIQ_OK);
	ck_assert_ptr_null(d->message);
	ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "x-aiq-dead-reason")),
	                 "why");
	ck_assert_str_eq(wire_id(d), "local-1");
	ck_assert_int_eq(aiq__broker_ack(plain, d), AIQ_OK);
	aiq__delivery_free(d);

	/* Purged and never fetched: the model goes with the message. */
	aiq__message_clear(&ref);
	make_local_wire(&w, &ref, "local-3");
	ck_assert_int_eq(aiq__broker_publish(pub, "q3", &w, 0), AIQ_OK);
	aiq__wire_clear(&w);
	uint64_t removed = 0;
	ck_assert_int_eq(aiq__broker_purge(pub, "q3", &removed), AIQ_OK);
	ck_assert_uint_eq(removed, 1);

	aiq__message_clear(&ref);
	aiq__broker_close(plain);
	aiq__broker_close(pub);
}
END_TEST

static Suite *memory_suite(void)
{
	Suite *s = suite_create("memory");
	TCase *tc = tcase_create("registry");
	tcase_add_test(tc, test_lookup);
	tcase_add_test(tc, test_url_redact);
	suite_add_tcase(s, tc);

	tc = tcase_create("broker");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_publish_fetch_ack);
	tcase_add_test(tc, test_too_big);
	tcase_add_test(tc, test_priority_order);
	tcase_add_test(tc, test_fifo);
	tcase_add_test(tc, test_round_robin);
	tcase_add_test(tc, test_delayed);
	tcase_add_test(tc, test_delayed_published_while_waiting);
	tcase_add_test(tc, test_prefetch);
	tcase_add_test(tc, test_reject);
	tcase_add_test(tc, test_close_requeues);
	tcase_add_test(tc, test_dead_letter);
	tcase_add_test(tc, test_purge);
	tcase_add_test(tc, test_instances);
	tcase_add_test(tc, test_wakeup);
	tcase_add_test(tc, test_stress);
	suite_add_tcase(s, tc);

	tc = tcase_create("store");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_store_put_get);
	tcase_add_test(tc, test_store_final_kept);
	tcase_add_test(tc, test_store_wait_ready);
	tcase_add_test(tc, test_store_wait_wakes);
	tcase_add_test(tc, test_store_wait_timeout);
	tcase_add_test(tc, test_store_subscribe);
	tcase_add_test(tc, test_store_unsubscribe_waits);
	tcase_add_test(tc, test_store_unsubscribe_from_callback);
	tcase_add_test(tc, test_store_expiry);
	tcase_add_test(tc, test_memory_decoded_handoff);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return aiq_test_run(memory_suite());
}
