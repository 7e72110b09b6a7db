/*
 * The Redis drivers' batched operations against a real redis-server:
 * fetch_batch (up to N in one script, recorded in kombu's unacked layout),
 * ack_batch, their recovery after a crash or a close, the script cache
 * surviving SCRIPT FLUSH and a killed connection, and the result store's
 * put_batch with its per-result status. Prints a few throughput figures
 * (not checked: they only inform).
 */
#include "fixture.h"

#include "broker.h"
#include "config_int.h"
#include "message.h"
#include "store.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static aiq__broker *open_broker(const aiq_config *cfg)
{
	aiq__broker *b = rt_open_broker(cfg);
	ck_assert(b->ops->fetch_batch != NULL);
	ck_assert(b->ops->ack_batch != NULL);
	return b;
}

static void publish(aiq__broker *b, const char *queue, const char *id, int priority)
{
	rt_publish(b, queue, id, priority, 0);
}

static void consume(aiq__broker *b, const char *queue, unsigned prefetch)
{
	const char *qs[] = {queue};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, prefetch), AIQ_OK);
}

static size_t fetch_batch(aiq__broker *b, aiq__delivery **out, size_t max)
{
	size_t n = 0;
	int rc = aiq__broker_fetch_batch(b, out, max, &n, 2000);
	ck_assert_msg(rc == AIQ_OK, "fetch_batch: %s (%s)", aiq_strerror(rc), aiq_error_last());
	return n;
}

static long long int_reply(const char *cmd, const char *arg)
{
	redisReply *r = rt_cmd(cmd, arg, strlen(arg));
	ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
	long long n = r->integer;
	freeReplyObject(r);
	return n;
}

static long long hlen_unacked(void)
{
	return int_reply("HLEN %b", "unacked");
}

static long long zcard_index(void)
{
	return int_reply("ZCARD %b", "unacked_index");
}

/* The kombu delivery_tag of a delivery, read back from its unacked entry:
 * unacked[tag] = [envelope, "", queue] and unacked_index has tag. */
static bool recorded_unacked(const aiq__delivery *d, const char *queue)
{
	redisReply *r = rt_cmd("HGETALL unacked");
	bool found = false;
	for (size_t i = 0; i + 1 < r->elements && !found; i += 2) {
		json_t *v = json_loadb(r->element[i + 1]->str, r->element[i + 1]->len, 0, NULL);
		ck_assert_msg(v && json_is_array(v) && json_array_size(v) == 3,
		              "unacked value is not [envelope, exchange, routing_key]");
		json_t *env = json_array_get(v, 0);
		const char *tag = json_string_value(
		        json_object_get(json_object_get(env, "properties"), "delivery_tag"));
		const char *id =
		        json_string_value(json_object_get(json_object_get(env, "headers"), "id"));
		if (tag && strcmp(tag, r->element[i]->str) == 0 && id &&
		    strcmp(id, rt_id_of(d)) == 0) {
			ck_assert_str_eq(json_string_value(json_array_get(v, 1)), "");
			ck_assert_str_eq(json_string_value(json_array_get(v, 2)), queue);
			redisReply *z = rt_cmd("ZSCORE unacked_index %s", tag);
			found = z->type == REDIS_REPLY_STRING;
			freeReplyObject(z);
		}
		json_decref(v);
	}
	freeReplyObject(r);
	return found;
}

START_TEST(fetch_batch_takes_up_to_n_recorded_unacked)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = open_broker(cfg);
	/* kombu's order: priority step 0 first, then 3, 6, 9; FIFO within. */
	publish(b, "bq", "p9", 9);
	for (int i = 0; i < 6; i++) {
		char id[32];
		snprintf(id, sizeof id, "m%d", i);
		publish(b, "bq", id, 0);
	}
	publish(b, "bq", "p3", 3);
	consume(b, "bq", 0);
	aiq__delivery *ds[16] = {NULL};
	size_t n = fetch_batch(b, ds, 4);
	ck_assert_uint_eq(n, 4);
	for (size_t i = 0; i < n; i++) {
		char want[32];
		snprintf(want, sizeof want, "m%zu", i);
		ck_assert_str_eq(rt_id_of(ds[i]), want);
		ck_assert_str_eq(ds[i]->queue, "bq");
		ck_assert_msg(recorded_unacked(ds[i], "bq"), "%s not in unacked", want);
	}
	ck_assert_int_eq(hlen_unacked(), 4);
	ck_assert_int_eq(zcard_index(), 4);
	ck_assert_int_eq(rt_llen("bq"), 2);
	/* The rest (fewer than asked for) in one call, across priority lists. */
	n = fetch_batch(b, ds + 4, 12);
	ck_assert_uint_eq(n, 4);
	ck_assert_str_eq(rt_id_of(ds[4]), "m4");
	ck_assert_str_eq(rt_id_of(ds[5]), "m5");
	ck_assert_str_eq(rt_id_of(ds[6]), "p3");
	ck_assert_str_eq(rt_id_of(ds[7]), "p9");
	ck_assert_int_eq(hlen_unacked(), 8);
	ck_assert_int_eq(zcard_index(), 8);
	/* Nothing left: a timeout, nothing returned. */
	size_t none = 99;
	ck_assert_int_eq(aiq__broker_fetch_batch(b, ds + 8, 4, &none, 50), AIQ_ETIMEDOUT);
	ck_assert_uint_eq(none, 0);
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 8), AIQ_OK);
	ck_assert_int_eq(hlen_unacked(), 0);
	ck_assert_int_eq(zcard_index(), 0);
	for (size_t i = 0; i < 8; i++)
		aiq__delivery_free(ds[i]);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(fetch_batch_bounded_by_prefetch)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = open_broker(cfg);
	for (int i = 0; i < 10; i++)
		publish(b, "pq", "x", 0);
	consume(b, "pq", 3);
	aiq__delivery *ds[10] = {NULL};
	ck_assert_uint_eq(fetch_batch(b, ds, 10), 3);
	size_t n = 99;
	ck_assert_int_eq(aiq__broker_fetch_batch(b, ds + 3, 7, &n, 30), AIQ_ETIMEDOUT);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 2), AIQ_OK);
	ck_assert_uint_eq(fetch_batch(b, ds + 3, 7), 2);
	ck_assert_int_eq(hlen_unacked(), 3);
	ck_assert_int_eq(rt_llen("pq"), 5);
	for (size_t i = 0; i < 5; i++)
		aiq__delivery_free(ds[i]);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(ack_batch_removes_exactly_those)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = open_broker(cfg);
	for (int i = 0; i < 6; i++) {
		char id[32];
		snprintf(id, sizeof id, "a%d", i);
		publish(b, "aq", id, 0);
	}
	consume(b, "aq", 0);
	aiq__delivery *ds[6] = {NULL};
	ck_assert_uint_eq(fetch_batch(b, ds, 6), 6);
	aiq__delivery *even[3] = {ds[0], ds[2], ds[4]};
	ck_assert_int_eq(aiq__broker_ack_batch(b, even, 3), AIQ_OK);
	ck_assert_int_eq(hlen_unacked(), 3);
	ck_assert_int_eq(zcard_index(), 3);
	for (int i = 0; i < 6; i++)
		ck_assert_msg(recorded_unacked(ds[i], "aq") == (i % 2 == 1),
		              "a%d: unacked entry %s", i, i % 2 ? "missing" : "left behind");
	/* Acked twice: refused, and the others of the call still acked. */
	aiq__delivery *mixed[2] = {ds[0], ds[1]};
	ck_assert_int_eq(aiq__broker_ack_batch(b, mixed, 2), AIQ_ESTATE);
	ck_assert_int_eq(hlen_unacked(), 2);
	ck_assert(!recorded_unacked(ds[1], "aq"));
	/* Close gives the unacknowledged ones back. */
	aiq__broker_close(b);
	ck_assert_int_eq(rt_llen("aq"), 2);
	ck_assert_int_eq(hlen_unacked(), 0);
	ck_assert_int_eq(zcard_index(), 0);
	for (int i = 0; i < 6; i++)
		aiq__delivery_free(ds[i]);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(batch_restored_after_crash)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(1);
	aiq__broker *pub = open_broker(cfg);
	for (int i = 0; i < 5; i++) {
		char id[32];
		snprintf(id, sizeof id, "c%d", i);
		publish(pub, "cq", id, 0);
	}
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		/* Takes a batch and dies without ack or close. */
		aiq__broker *b = NULL;
		if (aiq__broker_open(&b, rt_url(), cfg) != AIQ_OK)
			_exit(1);
		const char *qs[] = {"cq"};
		aiq__delivery *ds[8];
		size_t n = 0;
		if (b->ops->consume(b, qs, 1, 0) != AIQ_OK ||
		    aiq__broker_fetch_batch(b, ds, 8, &n, 3000) != AIQ_OK || n != 5)
			_exit(2);
		ssize_t w = write(fds[1], "x", 1);
		(void)w;
		pause();
		_exit(0);
	}
	close(fds[1]);
	char c;
	ck_assert_int_eq(read(fds[0], &c, 1), 1);
	close(fds[0]);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	ck_assert_int_eq(rt_llen("cq"), 0);
	ck_assert_int_eq(hlen_unacked(), 5);
	ck_assert_int_eq(zcard_index(), 5);

	/* Another consumer gets all of them back after the visibility timeout. */
	aiq__broker *b = open_broker(cfg);
	consume(b, "cq", 0);
	aiq__delivery *ds[8] = {NULL};
	size_t got = 0;
	int64_t t0 = rt_mono_ms();
	while (got < 5 && rt_mono_ms() - t0 < 10000) {
		size_t n = 0;
		int rc = aiq__broker_fetch_batch(b, ds + got, 8 - got, &n, 200);
		ck_assert(rc == AIQ_OK || rc == AIQ_ETIMEDOUT);
		got += n;
	}
	ck_assert_uint_eq(got, 5);
	bool seen[5] = {false};
	for (size_t i = 0; i < got; i++) {
		const char *id = rt_id_of(ds[i]);
		ck_assert(id[0] == 'c' && id[1] >= '0' && id[1] <= '4');
		ck_assert(!seen[id[1] - '0']);
		seen[id[1] - '0'] = true;
	}
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, got), AIQ_OK);
	ck_assert_int_eq(hlen_unacked(), 0);
	for (size_t i = 0; i < got; i++)
		aiq__delivery_free(ds[i]);
	aiq__broker_close(b);
	aiq__broker_close(pub);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(fetch_batch_queues_take_turns_poison_inline)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = open_broker(cfg);
	publish(b, "qa", "a1", 0);
	publish(b, "qa", "a2", 0);
	publish(b, "qb", "b1", 0);
	redisReply *r = rt_cmd("LPUSH qb %s", "not json");
	freeReplyObject(r);
	publish(b, "qb", "b2", 0);
	const char *qs[] = {"qa", "qb"};
	ck_assert_int_eq(b->ops->consume(b, qs, 2, 0), AIQ_OK);
	aiq__delivery *ds[8] = {NULL};
	size_t n = fetch_batch(b, ds, 8);
	/* One each in turn; the poison element goes to qb.dead in the same call. */
	ck_assert_uint_eq(n, 4);
	ck_assert_str_eq(rt_id_of(ds[0]), "a1");
	ck_assert_str_eq(rt_id_of(ds[1]), "b1");
	ck_assert_str_eq(rt_id_of(ds[2]), "a2");
	ck_assert_str_eq(rt_id_of(ds[3]), "b2");
	ck_assert_str_eq(ds[1]->queue, "qb");
	ck_assert_int_eq(rt_llen("qb.dead"), 1);
	r = rt_cmd("LINDEX qb.dead 0");
	ck_assert(strstr(r->str, "not json") != NULL);
	freeReplyObject(r);
	ck_assert_int_eq(hlen_unacked(), 4);
	ck_assert(recorded_unacked(ds[3], "qb"));
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, n), AIQ_OK);
	ck_assert_int_eq(hlen_unacked(), 0);
	for (size_t i = 0; i < n; i++)
		aiq__delivery_free(ds[i]);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

static void script_flush(void)
{
	redisReply *r = rt_cmd("SCRIPT FLUSH");
	ck_assert_int_eq(r->type, REDIS_REPLY_STATUS);
	freeReplyObject(r);
}

/* Close every client connection but the one sending the command. */
static void kill_clients(void)
{
	redisReply *r = rt_cmd("CLIENT KILL TYPE normal");
	ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
	ck_assert_int_ge(r->integer, 1);
	freeReplyObject(r);
}

START_TEST(broker_survives_script_flush_and_kill)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = open_broker(cfg);
	publish(b, "nq", "n1", 0);
	publish(b, "nq", "n2", 0);
	publish(b, "nq", "n3", 0);
	consume(b, "nq", 0);
	aiq__delivery *ds[3] = {NULL};
	ck_assert_uint_eq(fetch_batch(b, ds, 1), 1); /* scripts now cached */
	script_flush();
	ck_assert_uint_eq(fetch_batch(b, ds + 1, 1), 1); /* NOSCRIPT: loaded again */
	script_flush();
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 2), AIQ_OK);
	ck_assert_int_eq(hlen_unacked(), 0);
	aiq__delivery_free(ds[0]);
	aiq__delivery_free(ds[1]);
	/* A dropped connection: the next call reconnects once and succeeds. */
	kill_clients();
	publish(b, "nq", "n4", 0);
	ck_assert_uint_eq(fetch_batch(b, ds, 3), 2);
	kill_clients();
	script_flush();
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 2), AIQ_OK);
	ck_assert_int_eq(hlen_unacked(), 0);
	ck_assert_int_eq(rt_llen("nq"), 0);
	aiq__delivery_free(ds[0]);
	aiq__delivery_free(ds[1]);
	aiq__delivery_free(ds[2]);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

/* Calls of one command since the last CONFIG RESETSTAT (INFO commandstats). */
static long long calls_of(const char *cmd)
{
	redisReply *r = rt_cmd("INFO commandstats");
	ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
	char key[64];
	snprintf(key, sizeof key, "cmdstat_%s:calls=", cmd);
	const char *p = strstr(r->str, key);
	long long n = p ? atoll(p + strlen(key)) : 0;
	freeReplyObject(r);
	return n;
}

static void reset_stats(void)
{
	redisReply *r = rt_cmd("CONFIG RESETSTAT");
	freeReplyObject(r);
}

START_TEST(publish_plain_lpush_after_bind)
{
	rt_flush();
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = open_broker(cfg);
	reset_stats();
	for (int i = 0; i < 5; i++)
		publish(b, "sq", "s", 0);
	ck_assert_int_eq(rt_llen("sq"), 5);
	ck_assert_int_eq(calls_of("sadd"), 1);
	ck_assert_int_eq(calls_of("lpush"), 5);
	ck_assert_int_eq(calls_of("evalsha") + calls_of("eval"), 0);
	redisReply *r = rt_cmd("SISMEMBER _kombu.binding.sq sq\x06\x16\x06\x16sq");
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);
	/* A new connection (the server may have lost the binding) binds again. */
	r = rt_cmd("DEL _kombu.binding.sq");
	freeReplyObject(r);
	kill_clients();
	publish(b, "sq", "s", 0);
	ck_assert_int_eq(rt_llen("sq"), 6);
	r = rt_cmd("SISMEMBER _kombu.binding.sq sq\x06\x16\x06\x16sq");
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);
	/* An error reply fails that publish, clearly. */
	r = rt_cmd("SET wq notalist");
	freeReplyObject(r);
	aiq__message m;
	aiq__message_init(&m);
	m.id = strdup("w");
	m.task = strdup("tests.echo");
	m.args = json_array();
	aiq__wire w = {0};
	ck_assert_int_eq(aiq__message_to_wire(&w, &m), AIQ_OK);
	aiq__message_clear(&m);
	ck_assert_int_eq(b->ops->publish(b, "wq", &w, 0), AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "WRONGTYPE") != NULL, "%s", aiq_error_last());
	aiq__wire_clear(&w);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

static aiq__store *open_store(void)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "result.expires_s", 600), AIQ_OK);
	aiq__store *s = NULL;
	int rc = aiq__store_open(&s, rt_url(), cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	ck_assert(s->ops->put_batch != NULL);
	aiq_config_free(cfg);
	return s;
}

static aiq_result *make_result(const char *id, int state, const char *json)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq__result_new(&r, id, state), AIQ_OK);
	if (json)
		ck_assert_int_eq(aiq__result_set_json(r, json), AIQ_OK);
	if (aiq_state_is_ready(state))
		aiq__result_mark_done(r);
	return r;
}

static const char *stored_status(const char *id, char *buf, size_t len)
{
	redisReply *r = rt_cmd("GET celery-task-meta-%s", id);
	buf[0] = '\0';
	if (r->type == REDIS_REPLY_STRING) {
		json_t *m = json_loadb(r->str, r->len, 0, NULL);
		snprintf(buf, len, "%s", json_string_value(json_object_get(m, "status")));
		json_decref(m);
	}
	freeReplyObject(r);
	return buf;
}

START_TEST(put_batch_statuses)
{
	rt_flush();
	aiq__store *s = open_store();
	aiq_result *old = make_result("pc", AIQ_STATE_FAILURE, NULL);
	ck_assert_int_eq(s->ops->put(s, old), AIQ_OK);
	aiq_result_free(old);
	/* Listen on the channels, as a Celery client waiting for results. */
	redisContext *sub = rt_raw();
	redisReply *r = redisCommand(sub, "PSUBSCRIBE celery-task-meta-*");
	freeReplyObject(r);

	aiq_result *rs[5] = {
	        make_result("pa", AIQ_STATE_STARTED, "{\"pid\": 1}"),
	        make_result("pb", AIQ_STATE_SUCCESS, "{\"answer\": 1}"),
	        make_result("pc", AIQ_STATE_SUCCESS, "{\"answer\": 2}"), /* final: refused */
	        make_result("pa", AIQ_STATE_SUCCESS, "{\"answer\": 3}"),
	        make_result("pb", AIQ_STATE_RETRY, NULL), /* after its final: refused */
	};
	int status[5] = {99, 99, 99, 99, 99};
	script_flush(); /* the first round meets NOSCRIPT and loads again */
	int rc = aiq__store_put_batch(s, (const aiq_result *const *)rs, 5, status);
	ck_assert_msg(rc == AIQ_OK, "put_batch: %s", aiq_error_last());
	ck_assert_int_eq(status[0], AIQ_OK);
	ck_assert_int_eq(status[1], AIQ_OK);
	ck_assert_int_eq(status[2], AIQ_ESTATE);
	ck_assert_int_eq(status[3], AIQ_OK);
	ck_assert_int_eq(status[4], AIQ_ESTATE);
	char buf[32];
	ck_assert_str_eq(stored_status("pa", buf, sizeof buf), "SUCCESS");
	ck_assert_str_eq(stored_status("pb", buf, sizeof buf), "SUCCESS");
	ck_assert_str_eq(stored_status("pc", buf, sizeof buf), "FAILURE");
	r = rt_cmd("TTL celery-task-meta-pa");
	ck_assert(r->integer > 500 && r->integer <= 600);
	freeReplyObject(r);
	/* One PUBLISH per stored state, none for the refused ones. */
	const char *want[] = {"celery-task-meta-pa", "celery-task-meta-pb", "celery-task-meta-pa"};
	for (int i = 0; i < 3; i++) {
		r = NULL;
		ck_assert_int_eq(redisGetReply(sub, (void **)&r), REDIS_OK);
		ck_assert_int_eq(r->elements, 4);
		ck_assert_str_eq(r->element[2]->str, want[i]);
		freeReplyObject(r);
	}
	/* A dropped connection: the batch reconnects once and is stored. */
	kill_clients();
	aiq_result *more[2] = {make_result("pd", AIQ_STATE_SUCCESS, NULL),
	                       make_result("pe", AIQ_STATE_SUCCESS, NULL)};
	rc = aiq__store_put_batch(s, (const aiq_result *const *)more, 2, status);
	ck_assert_msg(rc == AIQ_OK, "put_batch after a kill: %s", aiq_error_last());
	ck_assert_int_eq(status[0], AIQ_OK);
	ck_assert_int_eq(status[1], AIQ_OK);
	ck_assert_str_eq(stored_status("pe", buf, sizeof buf), "SUCCESS");
	redisFree(sub);
	for (int i = 0; i < 5; i++)
		aiq_result_free(rs[i]);
	aiq_result_free(more[0]);
	aiq_result_free(more[1]);
	aiq__store_close(s);
}
END_TEST

/* Figures only: drain N messages with fetch_batch/ack_batch and with
 * fetch/ack, and store N results with put_batch and with put. */
START_TEST(figures)
{
	rt_flush();
	enum { N = 20032, B = 64 }; /* N a multiple of B */
	aiq_config *cfg = rt_broker_cfg(3600);
	aiq__broker *b = open_broker(cfg);
	aiq__store *s = open_store();
	for (int mode = 0; mode < 2; mode++) {
		aiq__message m;
		aiq__message_init(&m);
		m.id = strdup("f");
		m.task = strdup("tests.noop");
		m.args = json_array();
		aiq__wire w = {0};
		ck_assert_int_eq(aiq__message_to_wire(&w, &m), AIQ_OK);
		aiq__message_clear(&m);
		const aiq__wire *ws[B];
		int st[B];
		for (int i = 0; i < B; i++)
			ws[i] = &w;
		int64_t t0 = rt_mono_ms();
		for (int i = 0; i < N; i += B)
			ck_assert_int_eq(b->ops->publish_batch(b, "fq", ws, B, NULL, st), AIQ_OK);
		int64_t t_pub = rt_mono_ms() - t0;
		aiq__wire_clear(&w);
		consume(b, "fq", 0);
		aiq__delivery *ds[B];
		size_t got = 0;
		reset_stats();
		t0 = rt_mono_ms();
		while (got < N) {
			size_t n = 0;
			if (mode == 0) {
				ck_assert_int_eq(aiq__broker_fetch_batch(b, ds, B, &n, 1000),
				                 AIQ_OK);
				ck_assert_int_eq(aiq__broker_ack_batch(b, ds, n), AIQ_OK);
			} else {
				ck_assert_int_eq(b->ops->fetch(b, ds, 1000), AIQ_OK);
				ck_assert_int_eq(b->ops->ack(b, ds[0]), AIQ_OK);
				n = 1;
			}
			for (size_t i = 0; i < n; i++)
				aiq__delivery_free(ds[i]);
			got += n;
		}
		int64_t t_drain = rt_mono_ms() - t0;
		/* Server time of the drain's scripts, to tell it from the client's. */
		redisReply *info = rt_cmd("INFO commandstats");
		const char *es = strstr(info->str, "cmdstat_evalsha:");
		long long usec = 0, calls = 0;
		if (es) {
			const char *u = strstr(es, "usec="), *c = strstr(es, "calls=");
			usec = u ? atoll(u + 5) : 0;
			calls = c ? atoll(c + 6) : 0;
		}
		freeReplyObject(info);
		fprintf(stderr,
		        "figures: drain scripts: %lld EVALSHA calls, %lld ms in the server\n",
		        calls, usec / 1000);
		/* Distinct task ids, so every put is a SET + PUBLISH. */
		aiq_result **rs = calloc(N, sizeof *rs);
		ck_assert_ptr_nonnull(rs);
		for (int i = 0; i < N; i++) {
			char id[32];
			snprintf(id, sizeof id, "fig-%d-%d", mode, i);
			rs[i] = make_result(id, AIQ_STATE_SUCCESS, "null");
		}
		t0 = rt_mono_ms();
		for (int i = 0; i < N; i += B) {
			if (mode == 0) {
				ck_assert_int_eq(
				        s->ops->put_batch(s, (const aiq_result *const *)rs + i, B,
				                          st),
				        AIQ_OK);
				for (int k = 0; k < B; k++)
					ck_assert_int_eq(st[k], AIQ_OK);
			} else {
				for (int k = 0; k < B; k++)
					ck_assert_int_eq(s->ops->put(s, rs[i + k]), AIQ_OK);
			}
		}
		int64_t t_put = rt_mono_ms() - t0;
		for (int i = 0; i < N; i++)
			aiq_result_free(rs[i]);
		free(rs);
		fprintf(stderr,
		        "figures (%s): publish_batch %d in %lld ms; drain %lld ms = %.0f msg/s; "
		        "%d puts in %lld ms = %.0f puts/s\n",
		        mode == 0 ? "fetch_batch/ack_batch/put_batch, batch 64" : "fetch/ack/put",
		        N, (long long)t_pub, (long long)t_drain,
		        t_drain ? N * 1000.0 / (double)t_drain : 0.0, N, (long long)t_put,
		        t_put ? N * 1000.0 / (double)t_put : 0.0);
	}
	aiq__store_close(s);
	aiq__broker_close(b);
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("redis_batch");
	TCase *tc = tcase_create("batch");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, fetch_batch_takes_up_to_n_recorded_unacked);
	tcase_add_test(tc, fetch_batch_bounded_by_prefetch);
	tcase_add_test(tc, ack_batch_removes_exactly_those);
	tcase_add_test(tc, batch_restored_after_crash);
	tcase_add_test(tc, broker_survives_script_flush_and_kill);
	tcase_add_test(tc, put_batch_statuses);
	tcase_add_test(tc, publish_plain_lpush_after_bind);
	tcase_add_test(tc, fetch_batch_queues_take_turns_poison_inline);
	suite_add_tcase(s, tc);
	TCase *fig = tcase_create("figures");
	tcase_set_timeout(fig, 120);
	tcase_add_test(fig, figures);
	suite_add_tcase(s, fig);
	return rt_run(s);
}
