/*
 * The Redis broker driver against a real redis-server: kombu's wire and key
 * layout, priorities, ack/requeue, dead consumers, poison elements, delayed
 * messages with racing consumers, wakeup, depth and purge.
 */
#include "fixture.h"

#include "broker.h"
#include "config_int.h"
#include "message.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static aiq__delivery *fetch(aiq__broker *b, int64_t timeout_ms)
{
	aiq__delivery *d = NULL;
	int rc = b->ops->fetch(b, &d, timeout_ms);
	ck_assert_msg(rc == AIQ_OK, "fetch: %s (%s)", aiq_strerror(rc), aiq_error_last());
	ck_assert_ptr_nonnull(d);
	return d;
}

static void consume(aiq__broker *b, const char *queue)
{
	const char *qs[] = {queue};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, 0), AIQ_OK);
}

START_TEST(envelope_is_kombu)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	rt_publish(b, "celery", "id-env-1", 0, 0);
	redisReply *r = rt_cmd("LRANGE celery 0 -1");
	ck_assert_int_eq(r->type, REDIS_REPLY_ARRAY);
	ck_assert_int_eq(r->elements, 1);
	json_error_t je;
	json_t *env = json_loadb(r->element[0]->str, r->element[0]->len, 0, &je);
	ck_assert_msg(env != NULL, "not JSON: %s", je.text);
	ck_assert_str_eq(json_string_value(json_object_get(env, "content-type")),
	                 "application/json");
	ck_assert_str_eq(json_string_value(json_object_get(env, "content-encoding")), "utf-8");
	ck_assert(json_is_string(json_object_get(env, "body")));
	json_t *props = json_object_get(env, "properties");
	ck_assert_str_eq(json_string_value(json_object_get(props, "body_encoding")), "base64");
	const char *tag = json_string_value(json_object_get(props, "delivery_tag"));
	ck_assert_ptr_nonnull(tag);
	ck_assert_int_eq(strlen(tag), 36);
	json_t *di = json_object_get(props, "delivery_info");
	ck_assert_str_eq(json_string_value(json_object_get(di, "exchange")), "");
	ck_assert_str_eq(json_string_value(json_object_get(di, "routing_key")), "celery");
	json_t *headers = json_object_get(env, "headers");
	ck_assert_str_eq(json_string_value(json_object_get(headers, "id")), "id-env-1");
	ck_assert_str_eq(json_string_value(json_object_get(headers, "task")), "tests.echo");
	/* the body decodes to Celery's [args, kwargs, embed] */
	aiq__wire w = {0};
	char *tag2 = NULL;
	ck_assert_int_eq(aiq__envelope_decode(&w, &tag2, r->element[0]->str, r->element[0]->len),
	                 AIQ_OK);
	ck_assert_str_eq(tag2, tag);
	json_t *body = json_loadb((const char *)w.body, w.body_len, 0, &je);
	ck_assert(json_is_array(body) && json_array_size(body) == 3);
	ck_assert_str_eq(json_string_value(json_array_get(json_array_get(body, 0), 0)), "id-env-1");
	json_decref(body);
	free(tag2);
	aiq__wire_clear(&w);
	json_decref(env);
	freeReplyObject(r);
	/* kombu's binding */
	r = rt_cmd("SISMEMBER _kombu.binding.celery %b",
	           "celery\x06\x16\x06\x16"
	           "celery",
	           (size_t)16);
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(priorities_kombu_order)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	rt_publish(b, "pq", "p9", 9, 0);
	rt_publish(b, "pq", "p5", 5, 0);
	rt_publish(b, "pq", "p0a", 0, 0);
	rt_publish(b, "pq", "p7", 7, 0);
	rt_publish(b, "pq", "p0b", 0, 0);
	ck_assert_int_eq(rt_llen("pq"), 2);
	ck_assert_int_eq(rt_llen("pq\x06\x16"
	                         "3"),
	                 1);
	ck_assert_int_eq(rt_llen("pq\x06\x16"
	                         "6"),
	                 1);
	ck_assert_int_eq(rt_llen("pq\x06\x16"
	                         "9"),
	                 1);
	uint64_t n = 0;
	ck_assert_int_eq(b->ops->depth(b, "pq", &n), AIQ_OK);
	ck_assert_uint_eq(n, 5);
	consume(b, "pq");
	const char *want[] = {"p0a", "p0b", "p5", "p7", "p9"};
	for (int i = 0; i < 5; i++) {
		aiq__delivery *d = fetch(b, 2000);
		ck_assert_str_eq(rt_id_of(d), want[i]);
		ck_assert_str_eq(d->queue, "pq");
		ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
		aiq__delivery_free(d);
	}
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(unacked_layout_ack_requeue)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	rt_publish(b, "uq", "u1", 0, 0);
	consume(b, "uq");
	aiq__delivery *d = fetch(b, 2000);
	ck_assert_str_eq(rt_id_of(d), "u1");
	ck_assert_int_eq(rt_llen("uq"), 0);
	/* kombu's layout: unacked[tag] = [envelope, exchange, routing_key] */
	redisReply *r = rt_cmd("HGETALL unacked");
	ck_assert_int_eq(r->elements, 2);
	char *tag = strdup(r->element[0]->str);
	json_error_t je;
	json_t *v = json_loadb(r->element[1]->str, r->element[1]->len, 0, &je);
	ck_assert_msg(v != NULL, "unacked value is not JSON: %s", je.text);
	ck_assert(json_is_array(v) && json_array_size(v) == 3);
	ck_assert_str_eq(
	        json_string_value(json_object_get(
	                json_object_get(json_array_get(v, 0), "properties"), "delivery_tag")),
	        tag);
	ck_assert_str_eq(json_string_value(json_array_get(v, 1)), "");
	ck_assert_str_eq(json_string_value(json_array_get(v, 2)), "uq");
	json_decref(v);
	freeReplyObject(r);
	r = rt_cmd("ZSCORE unacked_index %s", tag);
	ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
	double score = atof(r->str);
	ck_assert(score > (double)time(NULL) - 60 && score < (double)time(NULL) + 60);
	freeReplyObject(r);

	/* requeue: back on the list, out of unacked */
	ck_assert_int_eq(b->ops->reject(b, d, true), AIQ_OK);
	aiq__delivery_free(d);
	ck_assert_int_eq(rt_llen("uq"), 1);
	r = rt_cmd("HLEN unacked");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	/* ack: gone everywhere */
	d = fetch(b, 2000);
	ck_assert_str_eq(rt_id_of(d), "u1");
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_ESTATE);
	aiq__delivery_free(d);
	r = rt_cmd("HLEN unacked");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	r = rt_cmd("ZCARD unacked_index");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	ck_assert_int_eq(rt_llen("uq"), 0);
	free(tag);
	/* close returns held deliveries at once */
	rt_publish(b, "uq", "u2", 0, 0);
	d = fetch(b, 2000);
	aiq__delivery_free(d);
	aiq__broker_close(b);
	ck_assert_int_eq(rt_llen("uq"), 1);
	aiq_config_free(cfg);
}
END_TEST

/* Requeue marks the envelope redelivered as kombu's _do_restore_message
 * does (headers.redelivered, properties.delivery_info.redelivered; the
 * latter added when missing) and edits nothing else of its text: numbers
 * beyond cjson's precision, empty arrays, escaped slashes and braces in
 * strings come back byte for byte. */
START_TEST(requeue_marks_redelivered_in_place)
{
	rt_flush();
	/* bodies: base64 of [[], {}, {}] */
	static const char *const text[][2] = {
	        {"{\"body\": \"W1tdLCB7fSwge31d\", \"content-encoding\": \"utf-8\", "
	         "\"content-type\": "
	         "\"application/json\", \"headers\": {\"lang\": \"py\", \"task\": \"t\", "
	         "\"id\": \"m1\", \"big\": 1234567890123456789, \"empty\": [], \"path\": "
	         "\"a\\/b \\\"}\\\" {\"}, \"properties\": {\"delivery_info\": {\"exchange\": "
	         "\"\", \"routing_key\": \"rq\", \"redelivered\": false}, \"delivery_tag\": "
	         "\"tag-m1\", \"body_encoding\": \"base64\", \"priority\": 0}}",
	         "{\"body\": \"W1tdLCB7fSwge31d\", \"content-encoding\": \"utf-8\", "
	         "\"content-type\": "
	         "\"application/json\", \"headers\": {\"redelivered\":true,\"lang\": \"py\", "
	         "\"task\": \"t\", \"id\": \"m1\", \"big\": 1234567890123456789, \"empty\": [], "
	         "\"path\": \"a\\/b \\\"}\\\" {\"}, \"properties\": {\"delivery_info\": "
	         "{\"exchange\": \"\", \"routing_key\": \"rq\", \"redelivered\": true}, "
	         "\"delivery_tag\": \"tag-m1\", \"body_encoding\": \"base64\", \"priority\": 0}}"},
	        {"{\"body\":\"W1tdLCB7fSwge31d\",\"content-encoding\":\"utf-8\",\"content-type\":"
	         "\"application/json\",\"headers\":{\"lang\":\"py\",\"task\":\"t\",\"id\":\"m2\"},"
	         "\"properties\":{\"delivery_tag\":\"tag-m2\",\"body_encoding\":\"base64\"}}",
	         "{\"body\":\"W1tdLCB7fSwge31d\",\"content-encoding\":\"utf-8\",\"content-type\":"
	         "\"application/json\",\"headers\":{\"redelivered\":true,\"lang\":\"py\",\"task\":"
	         "\"t\",\"id\":\"m2\"},\"properties\":{\"delivery_info\":{\"redelivered\":true},"
	         "\"delivery_tag\":\"tag-m2\",\"body_encoding\":\"base64\"}}"},
	};
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	consume(b, "rq");
	for (size_t i = 0; i < sizeof text / sizeof text[0]; i++) {
		const char *in = text[i][0], *want = text[i][1];
		freeReplyObject(rt_cmd("LPUSH rq %s", in));
		aiq__delivery *d = fetch(b, 2000);
		ck_assert(!d->redelivered);
		ck_assert_int_eq(b->ops->reject(b, d, true), AIQ_OK);
		aiq__delivery_free(d);
		redisReply *r = rt_cmd("LRANGE rq 0 -1");
		ck_assert_int_eq(r->elements, 1);
		ck_assert_str_eq(r->element[0]->str, want);
		freeReplyObject(r);
		d = fetch(b, 2000);
		ck_assert(d->redelivered);
		/* Requeued again: the marks are set, not added twice. */
		ck_assert_int_eq(b->ops->reject(b, d, true), AIQ_OK);
		aiq__delivery_free(d);
		r = rt_cmd("LRANGE rq 0 -1");
		ck_assert_str_eq(r->element[0]->str, want);
		freeReplyObject(r);
		d = fetch(b, 2000);
		ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
		aiq__delivery_free(d);
	}
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(dead_consumer_restored)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(1);
	aiq__broker *pub = rt_open_broker(cfg);
	rt_publish(pub, "dq", "d1", 0, 0);
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		/* The consumer fetches, reports, and dies without ack or close. */
		aiq__broker *b = NULL;
		if (aiq__broker_open(&b, rt_url(), cfg) != AIQ_OK)
			_exit(1);
		const char *qs[] = {"dq"};
		aiq__delivery *d = NULL;
		if (b->ops->consume(b, qs, 1, 0) != AIQ_OK || b->ops->fetch(b, &d, 3000) != AIQ_OK)
			_exit(2);
		ssize_t n = write(fds[1], "x", 1);
		(void)n;
		pause();
		_exit(0);
	}
	close(fds[1]);
	char c;
	ck_assert_int_eq(read(fds[0], &c, 1), 1);
	close(fds[0]);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	ck_assert_int_eq(rt_llen("dq"), 0);
	redisReply *r = rt_cmd("HLEN unacked");
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);

	/* Another consumer gets it back once the visibility timeout passed. */
	aiq__broker *b = rt_open_broker(cfg);
	consume(b, "dq");
	int64_t t0 = rt_mono_ms();
	aiq__delivery *d = NULL;
	while (d == NULL && rt_mono_ms() - t0 < 10000) {
		int rc = b->ops->fetch(b, &d, 200);
		ck_assert(rc == AIQ_OK || rc == AIQ_ETIMEDOUT);
	}
	ck_assert_msg(d != NULL, "the dead consumer's message was not restored");
	ck_assert_str_eq(rt_id_of(d), "d1");
	/* restored by the visibility timeout: marked redelivered */
	ck_assert(d->redelivered);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	aiq__delivery_free(d);
	aiq__broker_close(b);
	aiq__broker_close(pub);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(poison_goes_to_dead_list)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	freeReplyObject(rt_cmd("LPUSH xq %s", "this is not json"));
	freeReplyObject(rt_cmd("LPUSH xq %s", "{\"a\": 1}"));
	freeReplyObject(rt_cmd("LPUSH xq %s", "{\"body\": \"!!notbase64\", \"content-type\": "
	                                      "\"application/json\", \"content-encoding\": "
	                                      "\"utf-8\", \"headers\": {}, \"properties\": "
	                                      "{\"delivery_tag\": \"t-bad\", \"body_encoding\": "
	                                      "\"base64\"}}"));
	rt_publish(b, "xq", "good", 0, 0);
	consume(b, "xq");
	aiq__delivery *d = fetch(b, 3000);
	ck_assert_str_eq(rt_id_of(d), "good");
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	aiq__delivery_free(d);
	ck_assert_int_eq(rt_llen("xq.dead"), 3);
	redisReply *r = rt_cmd("LRANGE xq.dead 0 -1");
	for (size_t i = 0; i < r->elements; i++) {
		json_t *rec = json_loadb(r->element[i]->str, r->element[i]->len, 0, NULL);
		ck_assert_ptr_nonnull(rec);
		ck_assert(json_is_string(json_object_get(rec, "x-aiq-dead-reason")));
		ck_assert_str_eq(json_string_value(json_object_get(rec, "queue")), "xq");
		ck_assert(json_is_string(json_object_get(rec, "raw")));
		json_decref(rec);
	}
	freeReplyObject(r);
	r = rt_cmd("HLEN unacked");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

/* Regression: a delivery tag with a NUL byte was kept whole in unacked by the
 * fetch script but cut at the NUL in C, so the ack removed nothing and the
 * message came back forever. Such an envelope is dead-lettered at fetch. */
START_TEST(nul_delivery_tag_dead_lettered)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(1);
	aiq__broker *b = rt_open_broker(cfg);
	static const char env[] = "{\"body\": \"W1tdLCB7fSwge31d\", \"content-type\": "
	                          "\"application/json\", \"content-encoding\": \"utf-8\", "
	                          "\"headers\": {\"task\": \"tests.echo\", \"id\": \"nul-tag\"}, "
	                          "\"properties\": {\"delivery_tag\": \"t\\u0000nul\", "
	                          "\"body_encoding\": \"base64\", \"delivery_info\": "
	                          "{\"exchange\": \"\", \"routing_key\": \"nq\"}}}";
	freeReplyObject(rt_cmd("LPUSH nq %b", env, strlen(env)));
	rt_publish(b, "nq", "good", 0, 0);
	consume(b, "nq");
	aiq__delivery *d = fetch(b, 3000);
	ck_assert_str_eq(rt_id_of(d), "good");
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	aiq__delivery_free(d);
	ck_assert_int_eq(rt_llen("nq.dead"), 1);
	redisReply *r = rt_cmd("LRANGE nq.dead 0 -1");
	json_t *rec = json_loadb(r->element[0]->str, r->element[0]->len, 0, NULL);
	ck_assert_ptr_nonnull(rec);
	ck_assert_msg(strstr(json_string_value(json_object_get(rec, "x-aiq-dead-reason")), "NUL") !=
	                      NULL,
	              "reason: %s", json_string_value(json_object_get(rec, "x-aiq-dead-reason")));
	ck_assert_str_eq(json_string_value(json_object_get(rec, "raw")), env);
	json_decref(rec);
	freeReplyObject(r);
	r = rt_cmd("HLEN unacked");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	/* Nothing comes back, even past the visibility timeout. */
	rt_sleep_ms(1500);
	d = NULL;
	ck_assert_int_eq(b->ops->fetch(b, &d, 1500), AIQ_ETIMEDOUT);
	ck_assert_ptr_null(d);
	ck_assert_int_eq(rt_llen("nq"), 0);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(dead_letter_keeps_envelope)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	rt_publish(b, "lq", "dl1", 0, 0);
	consume(b, "lq");
	aiq__delivery *d = fetch(b, 2000);
	ck_assert_int_eq(b->ops->dead_letter(b, d, "unregistered task 'x'"), AIQ_OK);
	aiq__delivery_free(d);
	redisReply *r = rt_cmd("LRANGE lq.dead 0 -1");
	ck_assert_int_eq(r->elements, 1);
	aiq__wire w = {0};
	ck_assert_int_eq(aiq__envelope_decode(&w, NULL, r->element[0]->str, r->element[0]->len),
	                 AIQ_OK);
	ck_assert_str_eq(json_string_value(json_object_get(w.headers, "x-aiq-dead-reason")),
	                 "unregistered task 'x'");
	ck_assert_str_eq(json_string_value(json_object_get(w.headers, "id")), "dl1");
	aiq__wire_clear(&w);
	freeReplyObject(r);
	r = rt_cmd("HLEN unacked");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

#define NDELAYED 60
#define NRACERS  4

struct racer {
	aiq_config *cfg;
	int got[NDELAYED];
	int count;
	int early; /* deliveries before their due time */
};

static volatile int racers_stop;

static void *race_main(void *arg)
{
	struct racer *rc = arg;
	aiq__broker *b = NULL;
	if (aiq__broker_open(&b, rt_url(), rc->cfg) != AIQ_OK)
		return NULL;
	const char *qs[] = {"rq"};
	b->ops->consume(b, qs, 1, 0);
	while (!racers_stop) {
		aiq__delivery *d = NULL;
		if (b->ops->fetch(b, &d, 50) != AIQ_OK)
			continue;
		const char *id = rt_id_of(d);
		int i = -1;
		int64_t due = 0;
		if (id && sscanf(id, "r%d-%lld", &i, (long long *)&due) == 2 && i >= 0 &&
		    i < NDELAYED) {
			rc->got[i]++;
			if (aiq__now_ms() + 5 < due)
				rc->early++;
		}
		rc->count++;
		b->ops->ack(b, d);
		aiq__delivery_free(d);
	}
	aiq__broker_close(b);
	return NULL;
}

START_TEST(delayed_racing_consumers)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *pub = rt_open_broker(cfg);
	struct racer racers[NRACERS];
	pthread_t th[NRACERS];
	racers_stop = 0;
	memset(racers, 0, sizeof racers);
	for (int i = 0; i < NRACERS; i++) {
		racers[i].cfg = cfg;
		ck_assert_int_eq(pthread_create(&th[i], NULL, race_main, &racers[i]), 0);
	}
	int64_t base = aiq__now_ms() + 800;
	for (int i = 0; i < NDELAYED; i++) {
		int64_t due = base + (i % 10) * 100;
		char id[64];
		snprintf(id, sizeof id, "r%d-%lld", i, (long long)due);
		rt_publish(pub, "rq", id, 0, due);
	}
	uint64_t n = 99;
	ck_assert_int_eq(pub->ops->depth(pub, "rq", &n), AIQ_OK);
	ck_assert_uint_eq(n, 0); /* none is due yet */
	redisReply *r = rt_cmd("ZCARD _aiq.delayed.rq");
	ck_assert_int_eq(r->integer, NDELAYED);
	freeReplyObject(r);
	int64_t t0 = rt_mono_ms();
	int total = 0;
	while (rt_mono_ms() - t0 < 15000) {
		total = 0;
		for (int i = 0; i < NRACERS; i++)
			total += racers[i].count;
		if (total >= NDELAYED)
			break;
		rt_sleep_ms(50);
	}
	rt_sleep_ms(500); /* any double delivery would show up now */
	racers_stop = 1;
	for (int i = 0; i < NRACERS; i++)
		pthread_join(th[i], NULL);
	int early = 0;
	for (int k = 0; k < NDELAYED; k++) {
		int runs = 0;
		for (int i = 0; i < NRACERS; i++)
			runs += racers[i].got[k];
		ck_assert_msg(runs == 1, "delayed message %d delivered %d times", k, runs);
	}
	for (int i = 0; i < NRACERS; i++)
		early += racers[i].early;
	ck_assert_int_eq(early, 0);
	r = rt_cmd("ZCARD _aiq.delayed.rq");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	aiq__broker_close(pub);
	aiq_config_free(cfg);
}
END_TEST

struct waker {
	aiq__broker *b;
	int rc;
	int64_t took;
};

static void *fetch_long(void *arg)
{
	struct waker *w = arg;
	aiq__delivery *d = NULL;
	int64_t t0 = rt_mono_ms();
	w->rc = w->b->ops->fetch(w->b, &d, 10000);
	w->took = rt_mono_ms() - t0;
	aiq__delivery_free(d);
	return NULL;
}

START_TEST(wakeup_depth_purge)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	ck_assert_int_eq(b->ops->ping(b), AIQ_OK);
	consume(b, "wq");
	struct waker w = {b, 0, 0};
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, fetch_long, &w), 0);
	rt_sleep_ms(200);
	b->ops->wakeup(b);
	pthread_join(th, NULL);
	ck_assert_int_eq(w.rc, AIQ_ETIMEDOUT);
	ck_assert_msg(w.took < 2000, "wakeup took %lld ms", (long long)w.took);

	aiq__broker *pub = rt_open_broker(cfg);
	rt_publish(pub, "wq2", "a", 0, 0);
	rt_publish(pub, "wq2", "b", 5, 0);
	rt_publish(pub, "wq2", "c", 0, aiq__now_ms() + 60000);
	uint64_t n = 0;
	ck_assert_int_eq(pub->ops->depth(pub, "wq2", &n), AIQ_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(pub->ops->purge(pub, "wq2", &n), AIQ_OK);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(pub->ops->depth(pub, "wq2", &n), AIQ_OK);
	ck_assert_uint_eq(n, 0);
	aiq__broker_close(pub);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(bad_urls)
{
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, "redis://127.0.0.1:1/0", NULL), AIQ_EBROKER);
	ck_assert_int_eq(aiq__broker_open(&b, "redis://127.0.0.1:99999/0", NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq__broker_open(&b, "redis://127.0.0.1:6379/x", NULL), AIQ_EINVAL);
	/* the test server has no password: AUTH fails, a hard error */
	char url[256];
	snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%s/0", getenv("AIQ_TEST_REDIS_PORT"));
	ck_assert_int_eq(aiq__broker_open(&b, url, NULL), AIQ_EBROKER);
	ck_assert_ptr_null(strstr(aiq_error_last(), "wrong"));
}
END_TEST

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* 1,000 tasks through the client in one pipelined call: the list grows by
 * exactly that many, and consuming it yields each task id once. */
START_TEST(batch_pipeline)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", rt_url()), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://rb"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "queue", "bq"), AIQ_OK);
	aiq__broker *b = rt_open_broker(cfg);
	rt_publish(b, "bq", "before", 0, 0);
	ck_assert_int_eq(rt_llen("bq"), 1);
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	enum { N = 1000 };
	static char *ids[N];
	static int status[N];
	static char *seen[N];
	int rc = aiq_client_enqueue_batch(ids, status, c, "tests.echo", NULL, NULL, N, NULL);
	ck_assert_msg(rc == AIQ_OK, "batch: %s", aiq_error_last());
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(status[i], AIQ_OK);
	ck_assert_int_eq(rt_llen("bq"), N + 1);
	redisReply *r = rt_cmd("SISMEMBER _kombu.binding.bq %b",
	                       "bq\x06\x16\x06\x16"
	                       "bq",
	                       (size_t)8);
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);

	consume(b, "bq");
	aiq__delivery *d = fetch(b, 2000);
	ck_assert_str_eq(rt_id_of(d), "before");
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	aiq__delivery_free(d);
	for (int i = 0; i < N; i++) {
		d = fetch(b, 2000);
		seen[i] = strdup(rt_id_of(d));
		ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
		aiq__delivery_free(d);
	}
	ck_assert_int_eq(rt_llen("bq"), 0);
	qsort(ids, N, sizeof *ids, cmp_str);
	qsort(seen, N, sizeof *seen, cmp_str);
	for (int i = 0; i < N; i++) {
		ck_assert_str_eq(seen[i], ids[i]);
		if (i > 0)
			ck_assert_str_ne(ids[i], ids[i - 1]);
	}
	for (int i = 0; i < N; i++) {
		free(seen[i]);
		aiq_free(ids[i]);
	}
	aiq_client_free(c);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

/* An error reply fails exactly its message: priority-3 messages go to a key
 * that holds the wrong type; the others (and a delayed one) are accepted. */
START_TEST(batch_error_reply)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	ck_assert(b->ops->publish_batch != NULL);
	redisReply *r = rt_cmd("SET %b x",
	                       "mq\x06\x16"
	                       "3",
	                       (size_t)5);
	freeReplyObject(r);
	enum { N = 9 };
	aiq__wire wires[N];
	const aiq__wire *msgs[N];
	int64_t nb[N] = {0};
	int status[N];
	for (int i = 0; i < N; i++) {
		char id[16];
		snprintf(id, sizeof id, "m%d", i);
		rt_make_wire(&wires[i], id, i % 3 == 1 ? 3 : 0);
		msgs[i] = &wires[i];
	}
	nb[8] = aiq__now_ms() + 60000;
	int rc = b->ops->publish_batch(b, "mq", msgs, N, nb, status);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "3 of 9") != NULL, "%s", aiq_error_last());
	ck_assert_msg(strstr(aiq_error_last(), "WRONGTYPE") != NULL, "%s", aiq_error_last());
	for (int i = 0; i < N; i++)
		ck_assert_msg(status[i] == (i % 3 == 1 ? AIQ_EBROKER : AIQ_OK), "message %d: %d", i,
		              status[i]);
	ck_assert_int_eq(rt_llen("mq"), 5);
	r = rt_cmd("ZCARD _aiq.delayed.mq");
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);
	/* The connection is still good. */
	rc = b->ops->publish_batch(b, "mq", msgs, 1, NULL, status);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	ck_assert_int_eq(rt_llen("mq"), 6);
	for (int i = 0; i < N; i++)
		aiq__wire_clear(&wires[i]);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

/* The server restarted since the last call: the dead connection is
 * replaced before anything is sent, and the batch goes through. */
START_TEST(batch_after_restart)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = rt_open_broker(cfg);
	rt_publish(b, "rq2", "first", 0, 0);
	rt_restart();
	aiq__wire wires[3];
	const aiq__wire *msgs[3];
	int status[3];
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof id, "r%d", i);
		rt_make_wire(&wires[i], id, 0);
		msgs[i] = &wires[i];
	}
	int rc = b->ops->publish_batch(b, "rq2", msgs, 3, NULL, status);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	ck_assert_int_ge(rt_llen("rq2"), 3);
	for (int i = 0; i < 3; i++)
		aiq__wire_clear(&wires[i]);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("redis_broker");
	TCase *tc = tcase_create("broker");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, envelope_is_kombu);
	tcase_add_test(tc, priorities_kombu_order);
	tcase_add_test(tc, unacked_layout_ack_requeue);
	tcase_add_test(tc, requeue_marks_redelivered_in_place);
	tcase_add_test(tc, dead_consumer_restored);
	tcase_add_test(tc, poison_goes_to_dead_list);
	tcase_add_test(tc, nul_delivery_tag_dead_lettered);
	tcase_add_test(tc, dead_letter_keeps_envelope);
	tcase_add_test(tc, delayed_racing_consumers);
	tcase_add_test(tc, wakeup_depth_purge);
	tcase_add_test(tc, bad_urls);
	tcase_add_test(tc, batch_pipeline);
	tcase_add_test(tc, batch_error_reply);
	tcase_add_test(tc, batch_after_restart);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return rt_run(suite());
}
