/*
 * The RabbitMQ driver against a private rabbitmq-server (run.sh): round trips
 * through the real client and worker, the exact Celery wire form read back
 * with basic.get, confirms failing, priorities, delays, dead letters, a
 * server restart mid-run, a task outliving consumer_timeout, a wrong password.
 * Each test uses its own queue names, so tests never see each other's
 * messages on the shared node.
 */
#include "amqp_int.h" /* ack counters */
#include "broker.h"

#include <aiqueue/aiqueue.h>
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers -------------------------------------------------------------- */

static const char *url(void)
{
	const char *u = getenv("AIQ_TEST_AMQP_URL");
	ck_assert_msg(u != NULL && *u, "AIQ_TEST_AMQP_URL is not set (run through run.sh)");
	return u;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A unique queue name per test run. */
static void qname(char *buf, size_t n, const char *what)
{
	snprintf(buf, n, "aiqt.%s.%ld.%lld", what, (long)getpid(), (long long)now_ms());
}

static void rabbit(const char *cmd)
{
	const char *sh = getenv("AIQ_TEST_RABBITMQ_SH");
	const char *dir = getenv("AIQ_TEST_RABBITMQ_DIR");
	ck_assert_ptr_nonnull(sh);
	ck_assert_ptr_nonnull(dir);
	char line[2048];
	snprintf(line, sizeof line, "'%s' %s '%s' >/dev/null", sh, cmd, dir);
	int rc = system(line);
	ck_assert_msg(rc == 0, "rabbitmq.sh %s failed (%d)", cmd, rc);
}

/* A raw librabbitmq connection for looking at what is on the broker. */
static amqp_connection_state_t raw_open(void)
{
	char *u = strdup(url());
	struct amqp_connection_info ci;
	ck_assert_int_eq(amqp_parse_url(u, &ci), AMQP_STATUS_OK);
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);
	ck_assert_int_eq(amqp_socket_open(s, ci.host, ci.port), AMQP_STATUS_OK);
	amqp_rpc_reply_t r =
	        amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
	ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
	amqp_channel_open(c, 1);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	free(u);
	return c;
}

static void raw_close(amqp_connection_state_t c)
{
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
}

/* Ready messages in a queue (-1 if it does not exist). */
static long raw_depth(const char *q)
{
	amqp_connection_state_t c = raw_open();
	amqp_queue_declare_ok_t *ok =
	        amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 1, 0, 0, 0, amqp_empty_table);
	long n = ok ? (long)ok->message_count : -1;
	if (ok)
		raw_close(c);
	else
		amqp_destroy_connection(c);
	return n;
}

/* basic.get one message (acked); returns false when the queue is empty. */
static bool raw_get(amqp_connection_state_t c, const char *q, amqp_message_t *m)
{
	amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(q), 1);
	ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
	if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
		return false;
	r = amqp_read_message(c, 1, m, 0);
	ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
	return true;
}

static const amqp_field_value_t *header(const amqp_message_t *m, const char *key)
{
	const amqp_table_t *t = &m->properties.headers;
	for (int i = 0; i < t->num_entries; i++)
		if (t->entries[i].key.len == strlen(key) &&
		    memcmp(t->entries[i].key.bytes, key, strlen(key)) == 0)
			return &t->entries[i].value;
	return NULL;
}

static void expect_kind(const amqp_message_t *m, const char *key, char kind)
{
	const amqp_field_value_t *v = header(m, key);
	ck_assert_msg(v != NULL, "header '%s' missing", key);
	ck_assert_msg(v->kind == kind, "header '%s' has type '%c', expected '%c'", key, v->kind,
	              kind);
}

static bool bytes_eq(amqp_bytes_t b, const char *s)
{
	return b.len == strlen(s) && memcmp(b.bytes, s, b.len) == 0;
}

/* ---- worker fixture --------------------------------------------------------- */

static atomic_int runs, running, max_running;

static void add_task(aiq_task *t, void *ud)
{
	(void)ud;
	atomic_fetch_add(&runs, 1);
	json_t *a = json_loads(aiq_task_args_json(t), 0, NULL);
	long long sum =
	        json_integer_value(json_array_get(a, 0)) + json_integer_value(json_array_get(a, 1));
	json_decref(a);
	char out[64];
	snprintf(out, sizeof out, "%lld", sum);
	aiq_task_succeed(t, out);
}

/* Sleeps args[0] ms; records how many run at once and the start time. */
static void sleep_task(aiq_task *t, void *ud)
{
	(void)ud;
	atomic_fetch_add(&runs, 1);
	int now = atomic_fetch_add(&running, 1) + 1;
	int prev = atomic_load(&max_running);
	while (now > prev && !atomic_compare_exchange_weak(&max_running, &prev, now))
		;
	json_t *a = json_loads(aiq_task_args_json(t), 0, NULL);
	int ms = (int)json_integer_value(json_array_get(a, 0));
	json_decref(a);
	sleep_ms(ms);
	atomic_fetch_sub(&running, 1);
	char out[64];
	snprintf(out, sizeof out, "%lld", (long long)now_ms());
	aiq_task_succeed(t, out);
}

struct fixture {
	aiq_config *cfg;
	aiq_client *client;
	aiq_worker *worker;
	pthread_t thread;
	int run_rc;
	bool started;
	char queue[128];
};

static void fx_init(struct fixture *fx, const char *what, int concurrency)
{
	memset(fx, 0, sizeof *fx);
	atomic_store(&runs, 0);
	atomic_store(&running, 0);
	atomic_store(&max_running, 0);
	qname(fx->queue, sizeof fx->queue, what);
	ck_assert_int_eq(aiq_config_new(&fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "broker.url", url()), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "result.url", "memory://x"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "queue", fx->queue), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "worker.concurrency", concurrency), AIQ_OK);
}

static void fx_client(struct fixture *fx)
{
	int rc = aiq_client_new(&fx->client, fx->cfg);
	ck_assert_msg(rc == AIQ_OK, "client: %s", aiq_error_last());
}

static void *run_thread(void *arg)
{
	struct fixture *fx = arg;
	fx->run_rc = aiq_worker_run(fx->worker);
	return NULL;
}

static void fx_start(struct fixture *fx)
{
	ck_assert_int_eq(aiq_worker_new(&fx->worker, fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tests.add", add_task, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tests.sleep", sleep_task, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(pthread_create(&fx->thread, NULL, run_thread, fx), 0);
	fx->started = true;
}

static void fx_done(struct fixture *fx)
{
	if (fx->started) {
		aiq_worker_stop(fx->worker);
		pthread_join(fx->thread, NULL);
		ck_assert_msg(fx->run_rc == AIQ_OK, "worker run: %d %s", fx->run_rc,
		              aiq_worker_error(fx->worker));
	}
	aiq_worker_free(fx->worker);
	aiq_client_free(fx->client);
	aiq_config_free(fx->cfg);
}

static char *enqueue(struct fixture *fx, const char *task, const char *args,
                     const aiq_enqueue_opts *o)
{
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx->client, task, args, NULL, o);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %d %s", rc, aiq_error_last());
	return id;
}

static aiq_result *wait_done(struct fixture *fx, const char *id, int64_t timeout_ms)
{
	aiq_result *r = NULL;
	int rc = aiq_client_wait(&r, fx->client, id, timeout_ms);
	ck_assert_msg(rc == AIQ_OK, "wait for %s: %d %s (worker: %s)", id, rc, aiq_error_last(),
	              fx->worker ? aiq_worker_error(fx->worker) : "-");
	return r;
}

/* ---- tests ------------------------------------------------------------------ */

START_TEST(round_trip)
{
	struct fixture fx;
	fx_init(&fx, "rt", 2);
	fx_client(&fx);
	fx_start(&fx);
	char *ids[10];
	for (int i = 0; i < 10; i++) {
		char args[64];
		snprintf(args, sizeof args, "[%d, 100]", i);
		ids[i] = enqueue(&fx, "tests.add", args, NULL);
	}
	for (int i = 0; i < 10; i++) {
		aiq_result *r = wait_done(&fx, ids[i], 20000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		char want[32];
		snprintf(want, sizeof want, "%d", 100 + i);
		ck_assert_str_eq(aiq_result_json(r), want);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	ck_assert_int_eq(atomic_load(&runs), 10);
	uint64_t depth = 99;
	ck_assert_int_eq(aiq_client_queue_depth(&depth, fx.client, fx.queue), AIQ_OK);
	ck_assert_int_eq(depth, 0);
	ck_assert_int_eq(aiq_client_ping(fx.client), AIQ_OK);
	fx_done(&fx);
}
END_TEST

/* What a Celery worker would read: header types and properties, byte for byte
 * as py-amqp writes them; topology that Celery can redeclare. */
START_TEST(wire_form)
{
	struct fixture fx;
	fx_init(&fx, "wire", 1);
	fx_client(&fx);
	aiq_enqueue_opts *o;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_expires_ms(o, 120000), AIQ_OK);
	char *id = enqueue(&fx, "tests.add", "[42, \"I love this rap verse\"]", o);
	aiq_enqueue_opts_free(o);

	amqp_connection_state_t c = raw_open();
	amqp_message_t m;
	ck_assert(raw_get(c, fx.queue, &m));
	const amqp_basic_properties_t *p = &m.properties;
	ck_assert(p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG);
	ck_assert(bytes_eq(p->content_type, "application/json"));
	ck_assert(bytes_eq(p->content_encoding, "utf-8"));
	ck_assert(p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG);
	ck_assert_int_eq(p->delivery_mode, 2);
	ck_assert(p->_flags & AMQP_BASIC_PRIORITY_FLAG);
	ck_assert_int_eq(p->priority, 0);
	ck_assert(bytes_eq(p->correlation_id, id));
	ck_assert(p->_flags & AMQP_BASIC_EXPIRATION_FLAG);
	char expbuf[32] = "";
	memcpy(expbuf, p->expiration.bytes, p->expiration.len < 31 ? p->expiration.len : 31);
	int64_t exp = atoll(expbuf);
	ck_assert(exp > 110000 && exp <= 120000);
	ck_assert(!(p->_flags & (AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
	                         AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG)));
	ck_assert(p->_flags & AMQP_BASIC_HEADERS_FLAG);
	expect_kind(&m, "lang", 'S');
	expect_kind(&m, "task", 'S');
	expect_kind(&m, "id", 'S');
	expect_kind(&m, "shadow", 'V');
	expect_kind(&m, "eta", 'V');
	expect_kind(&m, "expires", 'S');
	expect_kind(&m, "group", 'V');
	expect_kind(&m, "group_index", 'V');
	expect_kind(&m, "retries", 'I');
	expect_kind(&m, "timelimit", 'A');
	expect_kind(&m, "root_id", 'S');
	expect_kind(&m, "parent_id", 'V');
	expect_kind(&m, "argsrepr", 'S');
	expect_kind(&m, "kwargsrepr", 'S');
	expect_kind(&m, "origin", 'S');
	expect_kind(&m, "ignore_result", 't');
	const amqp_field_value_t *tl = header(&m, "timelimit");
	ck_assert_int_eq(tl->value.array.num_entries, 2);
	ck_assert_int_eq(tl->value.array.entries[0].kind, 'V');
	ck_assert_int_eq(tl->value.array.entries[1].kind, 'V');
	ck_assert(bytes_eq(header(&m, "task")->value.bytes, "tests.add"));
	ck_assert(bytes_eq(header(&m, "id")->value.bytes, id));
	ck_assert_int_eq(header(&m, "retries")->value.i32, 0);
	ck_assert_int_eq(header(&m, "ignore_result")->value.boolean, 0);
	ck_assert(m.body.len > 0 && ((const char *)m.body.bytes)[0] == '[');
	amqp_destroy_message(&m);

	/* Celery's own declarations must succeed on what we declared. */
	amqp_exchange_declare(c, 1, amqp_cstring_bytes(fx.queue), amqp_cstring_bytes("direct"), 0,
	                      1, 0, 0, amqp_empty_table);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	amqp_queue_declare(c, 1, amqp_cstring_bytes(fx.queue), 0, 1, 0, 0, amqp_empty_table);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	amqp_queue_bind(c, 1, amqp_cstring_bytes(fx.queue), amqp_cstring_bytes(fx.queue),
	                amqp_cstring_bytes(fx.queue), amqp_empty_table);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	raw_close(c);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

/* Field types beyond what Celery sends, through the driver both ways. */
START_TEST(header_types)
{
	char q[128];
	qname(q, sizeof q, "types");
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, url(), NULL), AIQ_OK);
	aiq__wire w = {0};
	w.headers = json_pack("{s:s, s:i, s:I, s:b, s:n, s:f, s:[i,s,n], s:{s:i}}", "s", "text",
	                      "i", 7, "big", (json_int_t)5000000000LL, "flag", 1, "none", "real",
	                      1.5, "arr", 1, "x", "obj", "k", 3);
	w.properties = json_pack("{s:s, s:i}", "correlation_id", "abc", "priority", 0);
	w.content_type = strdup("application/json");
	w.content_encoding = strdup("utf-8");
	w.body = (unsigned char *)strdup("[[], {}, {}]");
	w.body_len = strlen((char *)w.body);
	ck_assert_int_eq(b->ops->publish(b, q, &w, 0), AIQ_OK);

	amqp_connection_state_t c = raw_open();
	amqp_message_t m;
	ck_assert(raw_get(c, q, &m));
	expect_kind(&m, "s", 'S');
	expect_kind(&m, "i", 'I');
	expect_kind(&m, "big", 'l');
	expect_kind(&m, "flag", 't');
	expect_kind(&m, "none", 'V');
	expect_kind(&m, "real", 'd');
	expect_kind(&m, "arr", 'A');
	expect_kind(&m, "obj", 'F');
	amqp_destroy_message(&m);

	/* Publish tags the encoder never writes, and read them through fetch. */
	amqp_table_entry_t e[6];
	e[0].key = amqp_cstring_bytes("ts");
	e[0].value.kind = AMQP_FIELD_KIND_TIMESTAMP;
	e[0].value.value.u64 = 1700000000;
	e[1].key = amqp_cstring_bytes("i8");
	e[1].value.kind = AMQP_FIELD_KIND_I8;
	e[1].value.value.i8 = -5;
	e[2].key = amqp_cstring_bytes("f");
	e[2].value.kind = AMQP_FIELD_KIND_F32;
	e[2].value.value.f32 = 0.5f;
	e[3].key = amqp_cstring_bytes("u64");
	e[3].value.kind = AMQP_FIELD_KIND_U64;
	e[3].value.value.u64 = 12;
	e[4].key = amqp_cstring_bytes("bytes");
	e[4].value.kind = AMQP_FIELD_KIND_BYTES;
	e[4].value.value.bytes = amqp_cstring_bytes("hi");
	e[5].key = amqp_cstring_bytes("x-death");
	e[5].value.kind = AMQP_FIELD_KIND_VOID;
	amqp_basic_properties_t props = {0};
	props._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.headers.num_entries = 6;
	props.headers.entries = e;
	ck_assert_int_eq(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0,
	                                    &props, amqp_cstring_bytes("[]")),
	                 AMQP_STATUS_OK);
	raw_close(c);

	const char *qs[] = {q};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, 4), AIQ_OK);
	aiq__delivery *d = NULL;
	int64_t end = mono_ms() + 5000;
	int rc;
	while ((rc = b->ops->fetch(b, &d, 100)) == AIQ_ETIMEDOUT && mono_ms() < end)
		;
	ck_assert_int_eq(rc, AIQ_OK);
	json_t *h = d->wire.headers;
	ck_assert_int_eq(json_integer_value(json_object_get(h, "ts")), 1700000000);
	ck_assert_int_eq(json_integer_value(json_object_get(h, "i8")), -5);
	ck_assert(json_real_value(json_object_get(h, "f")) == 0.5);
	ck_assert_int_eq(json_integer_value(json_object_get(h, "u64")), 12);
	ck_assert_str_eq(json_string_value(json_object_get(h, "bytes")), "hi");
	ck_assert_ptr_null(json_object_get(h, "x-death"));
	ck_assert_str_eq(d->queue, q);
	ck_assert_int_eq(b->ops->ack(b, d), AIQ_OK);
	aiq__delivery_free(d);
	aiq__wire_clear(&w);
	aiq__broker_close(b);
}
END_TEST

/* A queue declared by someone else with other arguments: publishing to it
 * fails with AIQ_EBROKER and says why; never AIQ_OK. */
START_TEST(confirm_failure)
{
	char q[128];
	qname(q, sizeof q, "conflict");
	amqp_connection_state_t c = raw_open();
	amqp_table_entry_t arg;
	arg.key = amqp_cstring_bytes("x-max-priority");
	arg.value.kind = AMQP_FIELD_KIND_I32;
	arg.value.value.i32 = 5;
	amqp_table_t t = {1, &arg};
	amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 0, 1, 0, 0, t);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	raw_close(c);

	struct fixture fx;
	fx_init(&fx, "conflict", 1);
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "queue", q), AIQ_OK);
	fx_client(&fx);
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx.client, "tests.add", "[1, 2]", NULL, NULL);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "PRECONDITION_FAILED") != NULL, "%s",
	              aiq_error_last());
	/* The handle recovers: a good queue works on the same client. */
	aiq_enqueue_opts *o;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, fx.queue), AIQ_OK);
	rc = aiq_client_enqueue(&id, fx.client, "tests.add", "[1, 2]", NULL, o);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	fx_done(&fx);
}
END_TEST

START_TEST(priorities)
{
	struct fixture fx;
	fx_init(&fx, "prio", 1);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "amqp.queue_max_priority", 10), AIQ_OK);
	fx_client(&fx);
	aiq_enqueue_opts *o;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	for (int i = 0; i < 5; i++)
		aiq_free(enqueue(&fx, "tests.add", "[0, 0]", NULL));
	ck_assert_int_eq(aiq_enqueue_opts_set_priority(o, 9), AIQ_OK);
	char *hi = enqueue(&fx, "tests.add", "[9, 9]", o);
	aiq_enqueue_opts_free(o);

	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, url(), fx.cfg), AIQ_OK);
	const char *qs[] = {fx.queue};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, 1), AIQ_OK);
	aiq__delivery *d = NULL;
	int rc;
	int64_t end = mono_ms() + 5000;
	while ((rc = b->ops->fetch(b, &d, 100)) == AIQ_ETIMEDOUT && mono_ms() < end)
		;
	ck_assert_int_eq(rc, AIQ_OK);
	ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "id")), hi);
	ck_assert_int_eq(json_integer_value(json_object_get(d->wire.properties, "priority")), 9);
	ck_assert_int_eq(b->ops->reject(b, d, true), AIQ_OK);
	aiq__delivery_free(d);
	aiq__broker_close(b);
	uint64_t removed = 0;
	ck_assert_int_eq(aiq_client_purge(&removed, fx.client, fx.queue), AIQ_OK);
	ck_assert_int_eq(removed, 6);
	aiq_free(hi);
	fx_done(&fx);
}
END_TEST

/* Countdowns are parked in the broker (a delay queue), not in the worker,
 * and run no earlier than due. */
START_TEST(delayed)
{
	struct fixture fx;
	fx_init(&fx, "delay", 2);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.eta_horizon_ms", 1000), AIQ_OK);
	fx_client(&fx);
	fx_start(&fx);
	aiq_enqueue_opts *o;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_countdown_ms(o, 5000), AIQ_OK);
	int64_t t0 = now_ms();
	char *late = enqueue(&fx, "tests.sleep", "[0]", o);
	ck_assert_int_eq(aiq_enqueue_opts_set_countdown_ms(o, 1500), AIQ_OK);
	char *soon = enqueue(&fx, "tests.sleep", "[0]", o);
	aiq_enqueue_opts_free(o);
	/* Right after publishing, both wait in delay queues, not in the work queue. */
	char dq[200];
	snprintf(dq, sizeof dq, "%s.delay.4096", fx.queue);
	ck_assert_int_eq(raw_depth(dq), 1);
	snprintf(dq, sizeof dq, "%s.delay.1024", fx.queue);
	ck_assert_int_eq(raw_depth(dq), 1);

	aiq_result *r = wait_done(&fx, soon, 15000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	int64_t ran_at = atoll(aiq_result_json(r));
	ck_assert_msg(ran_at >= t0 + 1500, "ran %lld ms early", (long long)(t0 + 1500 - ran_at));
	ck_assert_msg(ran_at < t0 + 4000, "ran %lld ms late", (long long)(ran_at - t0 - 1500));
	aiq_result_free(r);
	r = wait_done(&fx, late, 15000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ran_at = atoll(aiq_result_json(r));
	ck_assert_msg(ran_at >= t0 + 5000, "ran %lld ms early", (long long)(t0 + 5000 - ran_at));
	ck_assert_msg(ran_at < t0 + 8000, "ran %lld ms late", (long long)(ran_at - t0 - 5000));
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&runs), 2);
	aiq_free(soon);
	aiq_free(late);
	fx_done(&fx);
}
END_TEST

START_TEST(dead_letters)
{
	struct fixture fx;
	fx_init(&fx, "dead", 1);
	fx_client(&fx);
	fx_start(&fx);
	/* Not JSON at all, then an unknown task: both end in <queue>.dead. */
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, url(), NULL), AIQ_OK);
	aiq__wire w = {0};
	w.headers = json_pack("{s:s, s:s}", "task", "tests.add", "id", "poison-1");
	w.properties = json_object();
	w.content_type = strdup("application/json");
	w.content_encoding = strdup("utf-8");
	w.body = (unsigned char *)strdup("not json");
	w.body_len = 8;
	ck_assert_int_eq(b->ops->publish(b, fx.queue, &w, 0), AIQ_OK);
	aiq__wire_clear(&w);
	aiq__broker_close(b);
	char *unknown = enqueue(&fx, "tests.nobody", "[]", NULL);
	char *good = enqueue(&fx, "tests.add", "[1, 1]", NULL);
	aiq_result *r = wait_done(&fx, good, 10000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	r = wait_done(&fx, unknown, 10000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "NotRegistered");
	aiq_result_free(r);

	char dq[200];
	snprintf(dq, sizeof dq, "%s.dead", fx.queue);
	int64_t end = mono_ms() + 5000;
	while (raw_depth(dq) < 2 && mono_ms() < end)
		sleep_ms(50);
	ck_assert_int_eq(raw_depth(dq), 2);
	amqp_connection_state_t c = raw_open();
	int seen = 0;
	amqp_message_t m;
	while (raw_get(c, dq, &m)) {
		const amqp_field_value_t *why = header(&m, "x-aiq-dead-reason");
		ck_assert_ptr_nonnull(why);
		ck_assert_int_eq(why->kind, 'S');
		ck_assert_int_eq(m.properties.delivery_mode, 2);
		ck_assert(why->value.bytes.len > 0);
		seen++;
		amqp_destroy_message(&m);
	}
	raw_close(c);
	ck_assert_int_eq(seen, 2);
	ck_assert_int_eq(raw_depth(fx.queue), 0);
	aiq_free(unknown);
	aiq_free(good);
	fx_done(&fx);
}
END_TEST

/* Publish one raw message (default exchange) with Celery v2 headers task/id
 * plus `extra` header entries, and the given string properties. */
struct raw_prop {
	amqp_flags_t flag;
	const char *bytes;
	size_t len;
};

static void raw_publish(amqp_connection_state_t c, const char *q, const char *id,
                        const amqp_table_entry_t *extra, int nextra, const struct raw_prop *rp,
                        const char *body, size_t body_len, amqp_bytes_t ctype)
{
	amqp_table_entry_t e[8];
	int n = 0;
	e[n].key = amqp_cstring_bytes("task");
	e[n].value.kind = AMQP_FIELD_KIND_UTF8;
	e[n++].value.value.bytes = amqp_cstring_bytes("tests.add");
	e[n].key = amqp_cstring_bytes("id");
	e[n].value.kind = AMQP_FIELD_KIND_UTF8;
	e[n++].value.value.bytes = amqp_cstring_bytes(id);
	for (int i = 0; i < nextra && n < 8; i++)
		e[n++] = extra[i];
	amqp_basic_properties_t p;
	memset(&p, 0, sizeof p);
	p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
	           AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	p.headers.num_entries = n;
	p.headers.entries = e;
	p.content_type = ctype;
	p.content_encoding = amqp_cstring_bytes("utf-8");
	p.delivery_mode = 2;
	if (rp) {
		amqp_bytes_t b = {rp->len, (void *)(uintptr_t)rp->bytes};
		p._flags |= rp->flag;
		switch (rp->flag) {
		case AMQP_BASIC_CORRELATION_ID_FLAG: p.correlation_id = b; break;
		case AMQP_BASIC_REPLY_TO_FLAG: p.reply_to = b; break;
		case AMQP_BASIC_MESSAGE_ID_FLAG: p.message_id = b; break;
		case AMQP_BASIC_TYPE_FLAG: p.type = b; break;
		case AMQP_BASIC_APP_ID_FLAG: p.app_id = b; break;
		default: ck_abort_msg("unexpected property flag");
		}
	}
	amqp_bytes_t bb = {body_len, (void *)(uintptr_t)body};
	ck_assert_int_eq(
	        amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0, &p, bb),
	        AMQP_STATUS_OK);
}

/* Regression: a delivery whose properties are not UTF-8 made the consumer
 * fail with "out of memory", requeue it and end the run, on every restart.
 * Every undecodable delivery (properties, header table, body) is dead-lettered
 * with its reason, and the worker goes on. */
START_TEST(poison_deliveries)
{
	struct fixture fx;
	fx_init(&fx, "poison", 1);
	fx_client(&fx);
	fx_start(&fx);
	int64_t end = mono_ms() + 10000;
	while (raw_depth(fx.queue) < 0 && mono_ms() < end)
		sleep_ms(50);
	static const char good_body[] = "[[1, 2], {}, {\"callbacks\": null, \"errbacks\": null, "
	                                "\"chain\": null, \"chord\": null}]";
	static const struct raw_prop props[] = {
	        {AMQP_BASIC_CORRELATION_ID_FLAG, "\xff\xfe-cid", 6},
	        {AMQP_BASIC_REPLY_TO_FLAG, "re\0ply", 6},
	        {AMQP_BASIC_MESSAGE_ID_FLAG, "\xc3\x28", 2},
	        {AMQP_BASIC_TYPE_FLAG, "t\x80", 2},
	        {AMQP_BASIC_APP_ID_FLAG, "app\xed\xa0\x80", 6},
	};
	enum { NPROPS = sizeof props / sizeof props[0] };
	const amqp_bytes_t json_type = amqp_cstring_bytes("application/json");
	amqp_connection_state_t c = raw_open();
	for (int i = 0; i < NPROPS; i++) {
		char id[32];
		snprintf(id, sizeof id, "poison-prop-%d", i);
		raw_publish(c, fx.queue, id, NULL, 0, &props[i], good_body, strlen(good_body),
		            json_type);
	}
	/* A header table JSON cannot hold: an 'S' string that is not UTF-8. */
	amqp_table_entry_t bad = {.key = amqp_cstring_bytes("lang")};
	bad.value.kind = AMQP_FIELD_KIND_UTF8;
	bad.value.value.bytes = (amqp_bytes_t){3, "\xff\xff\xff"};
	raw_publish(c, fx.queue, "poison-header", &bad, 1, NULL, good_body, strlen(good_body),
	            json_type);
	/* Bodies: truncated JSON, and bytes that are not UTF-8. */
	raw_publish(c, fx.queue, "poison-body-1", NULL, 0, NULL, "[[1, 2], {", 10, json_type);
	raw_publish(c, fx.queue, "poison-body-2", NULL, 0, NULL, "\xff\xfe", 2, json_type);
	/* A content type that a NUL would cut to "application/json". */
	raw_publish(c, fx.queue, "poison-ctype", NULL, 0, NULL, good_body, strlen(good_body),
	            (amqp_bytes_t){20, "application/json\0bin"});
	enum { NPOISON = NPROPS + 4 };

	char *good = enqueue(&fx, "tests.add", "[2, 3]", NULL);
	aiq_result *r = wait_done(&fx, good, 15000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "5");
	aiq_result_free(r);
	/* The id could be read: FAILURE is stored against it. */
	r = wait_done(&fx, "poison-prop-0", 5000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "InvalidTaskMessage");
	ck_assert_msg(strstr(aiq_result_error_message(r), "correlation_id") != NULL, "%s",
	              aiq_result_error_message(r));
	aiq_result_free(r);

	char dq[200];
	snprintf(dq, sizeof dq, "%s.dead", fx.queue);
	end = mono_ms() + 10000;
	while (raw_depth(dq) < NPOISON && mono_ms() < end)
		sleep_ms(50);
	ck_assert_int_eq(raw_depth(dq), NPOISON);
	ck_assert_int_eq(raw_depth(fx.queue), 0);
	int seen = 0, props_kept = 0;
	amqp_message_t m;
	while (raw_get(c, dq, &m)) {
		const amqp_field_value_t *why = header(&m, "x-aiq-dead-reason");
		ck_assert_ptr_nonnull(why);
		ck_assert_int_eq(why->kind, 'S');
		ck_assert(why->value.bytes.len > 0);
		fprintf(stderr, "dead letter: %.*s\n", (int)why->value.bytes.len,
		        (const char *)why->value.bytes.bytes);
		/* The undecodable property travels to the dead letter unchanged. */
		for (int i = 0; i < NPROPS; i++) {
			amqp_bytes_t b =
			        props[i].flag == AMQP_BASIC_CORRELATION_ID_FLAG
			                ? m.properties.correlation_id
			        : props[i].flag == AMQP_BASIC_REPLY_TO_FLAG ? m.properties.reply_to
			        : props[i].flag == AMQP_BASIC_MESSAGE_ID_FLAG
			                ? m.properties.message_id
			        : props[i].flag == AMQP_BASIC_TYPE_FLAG ? m.properties.type
			                                                : m.properties.app_id;
			if ((m.properties._flags & props[i].flag) && b.len == props[i].len &&
			    memcmp(b.bytes, props[i].bytes, b.len) == 0)
				props_kept++;
		}
		seen++;
		amqp_destroy_message(&m);
	}
	raw_close(c);
	ck_assert_int_eq(seen, NPOISON);
	ck_assert_int_eq(props_kept, NPROPS);
	ck_assert_int_eq(aiq_worker_counter(fx.worker, AIQ_COUNTER_DEAD), NPOISON);
	aiq_free(good);
	fx_done(&fx); /* asserts the run itself did not fail */
}
END_TEST

START_TEST(wrong_password)
{
	char *u = strdup(url());
	char *at = strchr(u + 7, '@');
	ck_assert_ptr_nonnull(at);
	char bad[512];
	snprintf(bad, sizeof bad, "amqp://guest:S3cretWr0ng%s", at);
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", bad), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://x"), AIQ_OK);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	const char *msg = aiq_error_last();
	ck_assert_msg(strstr(msg, "S3cretWr0ng") == NULL, "password leaked: %s", msg);
	ck_assert_msg(strstr(msg, "ACCESS_REFUSED") != NULL || strstr(msg, "login") != NULL,
	              "unclear message: %s", msg);
	/* The worker fails at start, with the same kind of message. */
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	rc = aiq_worker_run(w);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_worker_error(w), "S3cretWr0ng") == NULL, "%s",
	              aiq_worker_error(w));
	aiq_worker_free(w);
	aiq_config_free(cfg);
	free(u);
}
END_TEST

/* Failover list: a dead endpoint first, the real one second. */
START_TEST(failover_urls)
{
	struct fixture fx;
	fx_init(&fx, "failover", 1);
	char list[1024];
	snprintf(list, sizeof list, "amqp://guest:guest@127.0.0.1:1/%%2f;%s", url());
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "broker.url", list), AIQ_OK);
	fx_client(&fx);
	fx_start(&fx);
	char *id = enqueue(&fx, "tests.add", "[2, 3]", NULL);
	aiq_result *r = wait_done(&fx, id, 10000);
	ck_assert_str_eq(aiq_result_json(r), "5");
	aiq_result_free(r);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

/* A task running past consumer_timeout (5 s on the test node): the channel is
 * closed by RabbitMQ and the message requeued; the worker keeps going, the
 * task does not run twice in parallel, its outcome is stored once, and the
 * redelivery is settled by the original's ack. */
START_TEST(long_task)
{
	struct fixture fx;
	fx_init(&fx, "long", 2);
	fx_client(&fx);
	fx_start(&fx);
	char *id = enqueue(&fx, "tests.sleep", "[8000]", NULL);
	aiq_result *r = wait_done(&fx, id, 30000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	/* The worker survived and still consumes. */
	char *after = enqueue(&fx, "tests.add", "[4, 4]", NULL);
	r = wait_done(&fx, after, 10000);
	ck_assert_str_eq(aiq_result_json(r), "8");
	aiq_result_free(r);
	/* Give a wrongly released redelivery time to run again. */
	sleep_ms(1500);
	ck_assert_int_eq(atomic_load(&max_running), 1);
	ck_assert_int_eq(atomic_load(&runs), 2); /* the sleep once, the add once */
	ck_assert_int_eq(raw_depth(fx.queue), 0);
	aiq_free(id);
	aiq_free(after);
	fx_done(&fx);
}
END_TEST

/* Every slot busy with a task longer than several heartbeat intervals: the
 * worker does not fetch at its prefetch bound, so it must keep the
 * connection alive itself, or RabbitMQ closes it (heartbeat timeout) and the
 * delivery churns. */
static atomic_int lost_connections;
static char last_loss[512];
static void count_losses(int level, const char *message, void *ud)
{
	(void)level;
	(void)ud;
	if (strstr(message, "amqp:")) {
		atomic_fetch_add(&lost_connections, 1);
		snprintf(last_loss, sizeof last_loss, "%s", message);
	}
}

START_TEST(heartbeat_at_prefetch_bound)
{
	struct fixture fx;
	fx_init(&fx, "heartbeat", 1);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "amqp.heartbeat_s", 1), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx.cfg, "worker.prefetch", 1), AIQ_OK);
	fx_client(&fx);
	atomic_store(&lost_connections, 0);
	aiq_log_set_handler(count_losses, NULL, NULL);
	fx_start(&fx);
	/* 3.5 s: several 1 s heartbeat intervals, below the test node's 5 s
	 * consumer_timeout. */
	char *id = enqueue(&fx, "tests.sleep", "[3500]", NULL);
	aiq_result *r = wait_done(&fx, id, 30000);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	/* A dropped connection shows at the next fetch, after the task. */
	char *after = enqueue(&fx, "tests.add", "[1, 1]", NULL);
	r = wait_done(&fx, after, 10000);
	aiq_result_free(r);
	aiq_free(after);
	aiq_log_set_handler(NULL, NULL, NULL);
	ck_assert_msg(atomic_load(&lost_connections) == 0, "%d driver warnings, last: %s",
	              atomic_load(&lost_connections), last_loss);
	ck_assert_int_eq(atomic_load(&runs), 2);
	aiq_free(id);
	fx_done(&fx);
}
END_TEST

/* amqp.queue_type=quorum: the queue is declared as a quorum queue (a classic
 * redeclaration is refused) and the worker consumes it (per-consumer QoS). */
START_TEST(quorum_queue)
{
	struct fixture fx;
	fx_init(&fx, "quorum", 2);
	ck_assert_int_eq(aiq_config_set_str(fx.cfg, "amqp.queue_type", "quorum"), AIQ_OK);
	fx_client(&fx);
	fx_start(&fx);
	char *ids[5];
	for (int i = 0; i < 5; i++)
		ids[i] = enqueue(&fx, "tests.add", "[1, 2]", NULL);
	for (int i = 0; i < 5; i++) {
		aiq_result *r = wait_done(&fx, ids[i], 20000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		ck_assert_str_eq(aiq_result_json(r), "3");
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	amqp_connection_state_t c = raw_open();
	amqp_queue_declare(c, 1, amqp_cstring_bytes(fx.queue), 0, 1, 0, 0, amqp_empty_table);
	amqp_rpc_reply_t rr = amqp_get_rpc_reply(c);
	ck_assert_int_eq(rr.reply_type, AMQP_RESPONSE_SERVER_EXCEPTION);
	ck_assert_int_eq(rr.reply.id, AMQP_CHANNEL_CLOSE_METHOD);
	amqp_channel_close_t *cc = rr.reply.decoded;
	ck_assert_int_eq(cc->reply_code, 406); /* PRECONDITION_FAILED: x-queue-type differs */
	amqp_destroy_connection(c);
	fx_done(&fx);
}
END_TEST

/* The node goes down while a worker runs: publishing meanwhile fails (never a
 * false success); after it comes back, messages published before (durable,
 * persistent, some of them in flight when it went down) and after all
 * complete, and the worker and the client reconnected by themselves. */
START_TEST(server_restart)
{
	struct fixture fx;
	fx_init(&fx, "restart", 2);
	fx_client(&fx);
	char *ids[40];
	for (int i = 0; i < 20; i++)
		ids[i] = enqueue(&fx, "tests.sleep", "[200]", NULL);
	fx_start(&fx);
	sleep_ms(500); /* some run, some are prefetched, most wait in the queue */
	rabbit("stop");
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx.client, "tests.add", "[1, 2]", NULL, NULL);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	rabbit("restart");
	for (int i = 20; i < 40; i++)
		ids[i] = enqueue(&fx, "tests.add", "[1, 2]", NULL);
	for (int i = 0; i < 40; i++) {
		aiq_result *r = wait_done(&fx, ids[i], 60000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	ck_assert_int_ge(atomic_load(&runs), 40); /* at least once */
	fx_done(&fx);
}
END_TEST

/* ---- batches ------------------------------------------------------------------ */

/* 1,000 tasks in one call: every one confirmed, queued once and run. */
START_TEST(batch_confirmed)
{
	struct fixture fx;
	fx_init(&fx, "batch", 8);
	fx_client(&fx);
	enum { N = 1000 };
	static char bufs[N][32];
	static const char *args[N];
	static char *ids[N];
	static int status[N];
	for (int i = 0; i < N; i++) {
		snprintf(bufs[i], sizeof bufs[i], "[%d, 1]", i);
		args[i] = bufs[i];
	}
	int rc = aiq_client_enqueue_batch(ids, status, fx.client, "tests.add", args, NULL, N, NULL);
	ck_assert_msg(rc == AIQ_OK, "batch: %d %s", rc, aiq_error_last());
	for (int i = 0; i < N; i++) {
		ck_assert_int_eq(status[i], AIQ_OK);
		ck_assert_ptr_nonnull(ids[i]);
	}
	ck_assert_int_eq(raw_depth(fx.queue), N); /* confirmed means queued */
	fx_start(&fx);
	for (int i = 0; i < N; i++) {
		aiq_result *r = wait_done(&fx, ids[i], 60000);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		char want[32];
		snprintf(want, sizeof want, "%d", i + 1);
		ck_assert_str_eq(aiq_result_json(r), want);
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	ck_assert_int_eq(atomic_load(&runs), N);
	fx_done(&fx);
}
END_TEST

static void ctl(const char *args)
{
	char line[2048];
	snprintf(line, sizeof line, "'%s' ctl '%s' %s >/dev/null", getenv("AIQ_TEST_RABBITMQ_SH"),
	         getenv("AIQ_TEST_RABBITMQ_DIR"), args);
	int rc = system(line);
	ck_assert_msg(rc == 0, "rabbitmqctl %s failed (%d)", args, rc);
}

/* A raw message whose correlation id names it. */
static void test_wire(aiq__wire *w, int i)
{
	char cid[32];
	snprintf(cid, sizeof cid, "batch-msg-%d", i);
	memset(w, 0, sizeof *w);
	w->headers = json_pack("{s:s}", "id", cid);
	w->properties = json_pack("{s:s, s:i}", "correlation_id", cid, "delivery_mode", 2);
	w->body = (unsigned char *)strdup("[[], {}, {}]");
	w->body_len = strlen((const char *)w->body);
	ck_assert_ptr_nonnull(w->headers);
	ck_assert_ptr_nonnull(w->properties);
}

static aiq__broker *driver_open(void)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	aiq__broker *b = NULL;
	int rc = aiq__broker_open(&b, url(), cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	aiq_config_free(cfg);
	ck_assert(b->ops->publish_batch != NULL);
	return b;
}

/* basic.nack (a queue that rejects publishes over its length) and
 * basic.return (an unroutable message) fail exactly the messages they
 * name; the others in the same batch are confirmed. */
START_TEST(batch_nack_and_return)
{
	enum { N = 10 };
	aiq__wire wires[N];
	const aiq__wire *msgs[N];
	int status[N];
	int64_t nb[N] = {0};
	for (int i = 0; i < N; i++) {
		test_wire(&wires[i], i);
		msgs[i] = &wires[i];
	}
	aiq__broker *b = driver_open();

	/* Nacks: at most 3 messages, further publishes refused. */
	char q[128];
	qname(q, sizeof q, "nack");
	ctl("set_policy --apply-to queues aiqt-nack '^aiqt\\.nack\\.' "
	    "'{\"max-length\":3,\"overflow\":\"reject-publish\"}'");
	int rc = b->ops->publish_batch(b, q, msgs, N, nb, status);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "7 of 10") != NULL, "%s", aiq_error_last());
	ck_assert_msg(strstr(aiq_error_last(), "7 refused") != NULL, "%s", aiq_error_last());
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(status[i], i < 3 ? AIQ_OK : AIQ_EBROKER);
	ck_assert_int_eq(raw_depth(q), 3);
	ctl("clear_policy aiqt-nack");

	/* Returns: every other message goes to a delay queue that is then
	 * deleted behind the driver's back, so only those come back. */
	qname(q, sizeof q, "ret");
	for (int i = 0; i < N; i++)
		nb[i] = i % 2 ? now_ms() + 60000 : 0;
	rc = b->ops->publish_batch(b, q, msgs, N, nb, status);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	char dq[200];
	snprintf(dq, sizeof dq, "%s.delay.32768", q);
	ck_assert_int_eq(raw_depth(dq), N / 2);
	amqp_connection_state_t c = raw_open();
	amqp_queue_delete(c, 1, amqp_cstring_bytes(dq), 0, 0);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	raw_close(c);
	for (int i = 0; i < N; i++)
		nb[i] = i % 2 ? now_ms() + 60000 : 0;
	rc = b->ops->publish_batch(b, q, msgs, N, nb, status);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "5 returned") != NULL, "%s", aiq_error_last());
	for (int i = 0; i < N; i++)
		ck_assert_msg(status[i] == (i % 2 ? AIQ_EBROKER : AIQ_OK), "message %d: %d", i,
		              status[i]);
	ck_assert_int_eq(raw_depth(q), N); /* 5 from each batch */
	/* The handle is still good. */
	for (int i = 0; i < N; i++)
		nb[i] = 0;
	rc = b->ops->publish_batch(b, q, msgs, N, nb, status);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	ck_assert_int_eq(raw_depth(q), 2 * N);
	aiq__broker_close(b);
	for (int i = 0; i < N; i++)
		aiq__wire_clear(&wires[i]);
}
END_TEST

/* The node is down: every task of a batch fails, none is reported sent. */
START_TEST(batch_node_stopped)
{
	struct fixture fx;
	fx_init(&fx, "batchdown", 1);
	fx_client(&fx);
	char *first = enqueue(&fx, "tests.add", "[1, 2]", NULL); /* the link is up */
	aiq_free(first);
	rabbit("stop");
	enum { N = 50 };
	char *ids[N];
	int status[N];
	int rc = aiq_client_enqueue_batch(ids, status, fx.client, "tests.add", NULL, NULL, N, NULL);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "50 of 50") != NULL, "%s", aiq_error_last());
	for (int i = 0; i < N; i++) {
		ck_assert_int_eq(status[i], AIQ_EBROKER);
		ck_assert_ptr_null(ids[i]);
	}
	rabbit("restart");
	rc = aiq_client_enqueue_batch(ids, status, fx.client, "tests.add", NULL, NULL, N, NULL);
	ck_assert_msg(rc == AIQ_OK, "after restart: %s", aiq_error_last());
	for (int i = 0; i < N; i++)
		aiq_free(ids[i]);
	ck_assert_int_eq(raw_depth(fx.queue), N + 1);
	fx_done(&fx);
}
END_TEST

static void *stop_soon(void *arg)
{
	(void)arg;
	sleep_ms(30);
	char line[2048];
	snprintf(line, sizeof line, "'%s' stop '%s' >/dev/null", getenv("AIQ_TEST_RABBITMQ_SH"),
	         getenv("AIQ_TEST_RABBITMQ_DIR"));
	return (void *)(intptr_t)system(line);
}

/* The node stops while a large batch is in flight: whatever the timing,
 * every task reported accepted is in the queue after the restart, and every
 * other one failed with AIQ_EBROKER. */
START_TEST(batch_node_lost_midway)
{
	struct fixture fx;
	fx_init(&fx, "batchlost", 1);
	fx_client(&fx);
	char *first = enqueue(&fx, "tests.add", "[1, 2]", NULL);
	aiq_free(first);
	enum { N = 20000 };
	static char *ids[N];
	static int status[N];
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, stop_soon, NULL), 0);
	int rc = aiq_client_enqueue_batch(ids, status, fx.client, "tests.add", NULL, NULL, N, NULL);
	void *stop_rc;
	pthread_join(th, &stop_rc);
	ck_assert_int_eq((int)(intptr_t)stop_rc, 0);
	long ok = 0;
	for (int i = 0; i < N; i++) {
		if (status[i] == AIQ_OK) {
			ok++;
			ck_assert_ptr_nonnull(ids[i]);
			aiq_free(ids[i]);
		} else {
			ck_assert_int_eq(status[i], AIQ_EBROKER);
			ck_assert_ptr_null(ids[i]);
		}
	}
	ck_assert_int_eq(rc, ok == N ? AIQ_OK : AIQ_EBROKER);
	/* Shows in the log whether the stop landed mid-batch this time. */
	fprintf(stderr, "batch_node_lost_midway: %ld of %d accepted: %s\n", ok, (int)N,
	        rc == AIQ_OK ? "all" : aiq_error_last());
	rabbit("restart");
	long depth = raw_depth(fx.queue) - 1; /* without the first task */
	ck_assert_msg(depth >= ok, "%ld tasks reported accepted, %ld in the queue (%s)", ok, depth,
	              rc == AIQ_OK ? "" : aiq_error_last());
	fx_done(&fx);
}
END_TEST

/* ---- batched fetch and ack ------------------------------------------------------ */

/* The correlation id of a delivery made by test_wire(). */
static int wire_index(const aiq__delivery *d)
{
	const char *cid = json_string_value(json_object_get(d->wire.properties, "correlation_id"));
	ck_assert_ptr_nonnull(cid);
	int i = -1;
	ck_assert_int_eq(sscanf(cid, "batch-msg-%d", &i), 1);
	return i;
}

static void publish_n(aiq__broker *b, const char *q, int first, int n)
{
	aiq__wire *wires = calloc((size_t)n, sizeof *wires);
	const aiq__wire **msgs = calloc((size_t)n, sizeof *msgs);
	int *status = calloc((size_t)n, sizeof *status);
	ck_assert(wires && msgs && status);
	for (int i = 0; i < n; i++) {
		test_wire(&wires[i], first + i);
		msgs[i] = &wires[i];
	}
	int rc = b->ops->publish_batch(b, q, msgs, (size_t)n, NULL, status);
	ck_assert_msg(rc == AIQ_OK, "publish: %s", aiq_error_last());
	for (int i = 0; i < n; i++)
		aiq__wire_clear(&wires[i]);
	free(wires);
	free(msgs);
	free(status);
}

/* Fetch until `want` deliveries are in ds[] (in delivery order). */
static void fetch_n(aiq__broker *b, aiq__delivery **ds, size_t want, size_t max)
{
	size_t have = 0;
	int64_t end = mono_ms() + 20000;
	while (have < want) {
		ck_assert_msg(mono_ms() < end, "only %zu of %zu deliveries arrived", have, want);
		size_t n = 0;
		size_t room = want - have < max ? want - have : max;
		int rc = aiq__broker_fetch_batch(b, ds + have, room, &n, 200);
		ck_assert_msg(rc == AIQ_OK || rc == AIQ_ETIMEDOUT, "fetch: %s", aiq_error_last());
		have += n;
	}
}

/* Many queued messages: one fetch_batch call returns several, each decoded,
 * and a test-side drain loop (fetch_batch + ack_batch) reports its rate. */
START_TEST(fetch_batch_drains)
{
	char q[128];
	qname(q, sizeof q, "fbatch");
	aiq__broker *b = driver_open();
	enum { N = 200 };
	publish_n(b, q, 0, N);
	const char *qs[] = {q};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, N), AIQ_OK);
	sleep_ms(500); /* let the prefetch window fill the socket */
	aiq__delivery *ds[N];
	size_t n = 0;
	int rc = aiq__broker_fetch_batch(b, ds, N, &n, 2000);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	ck_assert_msg(n > 1, "one fetch_batch returned %zu deliveries", n);
	for (size_t i = 0; i < n; i++) {
		ck_assert_ptr_null(ds[i]->undecodable);
		ck_assert_int_eq(wire_index(ds[i]), (int)i);
		ck_assert_str_eq(ds[i]->queue, q);
	}
	fetch_n(b, ds + n, N - n, N);
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, N), AIQ_OK);
	for (size_t i = 0; i < N; i++)
		aiq__delivery_free(ds[i]);
	aiq__broker_close(b);
	ck_assert_int_eq(raw_depth(q), 0);

	/* Throughput figure (printed, not asserted). */
	enum { M = 20000, PREFETCH = 512, MAX = 256 };
	b = driver_open();
	publish_n(b, q, 0, M);
	ck_assert_int_eq(b->ops->consume(b, qs, 1, PREFETCH), AIQ_OK);
	static aiq__delivery *buf[MAX];
	long got = 0, calls = 0;
	int64_t t0 = mono_ms(), end = t0 + 60000;
	while (got < M && mono_ms() < end) {
		size_t k = 0;
		rc = aiq__broker_fetch_batch(b, buf, MAX, &k, 200);
		ck_assert_msg(rc == AIQ_OK || rc == AIQ_ETIMEDOUT, "%s", aiq_error_last());
		calls += k > 0;
		ck_assert_int_eq(aiq__broker_ack_batch(b, buf, k), AIQ_OK);
		for (size_t i = 0; i < k; i++)
			aiq__delivery_free(buf[i]);
		got += (long)k;
	}
	int64_t dt = mono_ms() - t0;
	ck_assert_int_eq(got, M);
	fprintf(stderr, "fetch_batch_drains: %ld deliveries in %lld ms (%.0f/s), %.1f per call\n",
	        got, (long long)dt, dt > 0 ? got * 1000.0 / (double)dt : 0.0,
	        calls ? (double)got / (double)calls : 0.0);
	aiq__broker_close(b);
	ck_assert_int_eq(raw_depth(q), 0);
}
END_TEST

/* ack_batch acknowledges exactly the deliveries it is given: a contiguous
 * run that is not the oldest (so `multiple` must not be used there), the
 * oldest run (where it may be), and scattered ones. Closing the connection
 * returns the rest, and only the rest, to the queue. */
START_TEST(ack_batch_exact)
{
	char q[128];
	qname(q, sizeof q, "abatch");
	aiq__broker *b = driver_open();
	enum { N = 12 };
	publish_n(b, q, 0, N);
	const char *qs[] = {q};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, N), AIQ_OK);
	aiq__delivery *ds[N];
	fetch_n(b, ds, N, N);
	for (int i = 0; i < N; i++)
		ck_assert_int_eq(wire_index(ds[i]), i);
	const amqp_broker *ab = (const amqp_broker *)b;
	/* Not the oldest (0 and 1 are outstanding): one ack each. */
	aiq__delivery *run[] = {ds[2], ds[3], ds[4]};
	ck_assert_int_eq(aiq__broker_ack_batch(b, run, 3), AIQ_OK);
	ck_assert_int_eq(ab->batch_acks, 3);
	ck_assert_int_eq(ab->batch_acks_multiple, 0);
	/* The two oldest, in any order: one multiple ack. */
	aiq__delivery *oldest[] = {ds[1], ds[0]};
	ck_assert_int_eq(aiq__broker_ack_batch(b, oldest, 2), AIQ_OK);
	ck_assert_int_eq(ab->batch_acks, 4);
	ck_assert_int_eq(ab->batch_acks_multiple, 1);
	/* Scattered, the oldest outstanding (5) not among them: one each. */
	aiq__delivery *scattered[] = {ds[11], ds[6], ds[9]};
	ck_assert_int_eq(aiq__broker_ack_batch(b, scattered, 3), AIQ_OK);
	ck_assert_int_eq(ab->batch_acks, 7);
	ck_assert_int_eq(ab->batch_acks_multiple, 1);
	/* 5 and 7 are now the two oldest outstanding (6 went before), with 8
	 * just above: one multiple ack on 7 covers exactly them. */
	aiq__delivery *gap[] = {ds[7], ds[5]};
	ck_assert_int_eq(aiq__broker_ack_batch(b, gap, 2), AIQ_OK);
	ck_assert_int_eq(ab->batch_acks, 8);
	ck_assert_int_eq(ab->batch_acks_multiple, 2);
	/* Acking one twice is refused and changes nothing. */
	ck_assert_int_eq(aiq__broker_ack_batch(b, run, 1), AIQ_EINVAL);
	for (int i = 0; i < N; i++)
		aiq__delivery_free(ds[i]);
	aiq__broker_close(b); /* 8 and 10 go back */
	ck_assert_int_eq(raw_depth(q), 2);
	amqp_connection_state_t c = raw_open();
	int left[2], k = 0;
	amqp_message_t m;
	while (raw_get(c, q, &m)) {
		ck_assert_int_lt(k, 2);
		ck_assert(m.properties._flags & AMQP_BASIC_CORRELATION_ID_FLAG);
		ck_assert_int_eq(sscanf((const char *)m.properties.correlation_id.bytes,
		                        "batch-msg-%d", &left[k]),
		                 1);
		k++;
		amqp_destroy_message(&m);
	}
	raw_close(c);
	ck_assert_int_eq(k, 2);
	ck_assert_int_eq(left[0], 8);
	ck_assert_int_eq(left[1], 10);
}
END_TEST

/* Deliveries from before a broker restart are acked with ack_batch after the
 * consumer reconnected: their tags are never sent on the new channel (that
 * would close it with PRECONDITION_FAILED, or ack someone else's message),
 * their redeliveries are settled instead, and the new channel keeps working. */
START_TEST(ack_batch_stale_after_restart)
{
	char q[128];
	qname(q, sizeof q, "astale");
	aiq__broker *b = driver_open();
	enum { N = 8 };
	publish_n(b, q, 0, N);
	const char *qs[] = {q};
	ck_assert_int_eq(b->ops->consume(b, qs, 1, N), AIQ_OK);
	aiq__delivery *ds[N];
	fetch_n(b, ds, N, N);
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds, 6), AIQ_OK);
	rabbit("restart");
	/* Reconnect; redeliveries of 6 and 7 are held back, not handed out. */
	int64_t end = mono_ms() + 8000;
	while (mono_ms() < end) {
		aiq__delivery *d = NULL;
		size_t n = 0;
		int rc = aiq__broker_fetch_batch(b, &d, 1, &n, 200);
		ck_assert_msg(rc == AIQ_ETIMEDOUT, "fetch after restart: %d %s", rc,
		              aiq_error_last());
		ck_assert_int_eq(n, 0);
	}
	/* Stale tags 7 and 8, both higher than any tag of the new channel. */
	ck_assert_int_eq(aiq__broker_ack_batch(b, ds + 6, 2), AIQ_OK);
	publish_n(b, q, 100, 2);
	aiq__delivery *fresh[4];
	size_t have = 0;
	end = mono_ms() + 3000;
	while (mono_ms() < end) {
		size_t n = 0;
		int rc = aiq__broker_fetch_batch(b, fresh + have, 4 - have, &n, 200);
		ck_assert_msg(rc == AIQ_OK || rc == AIQ_ETIMEDOUT, "%s", aiq_error_last());
		have += n;
		ck_assert_int_le(have, 2); /* 6 and 7 never come back */
	}
	ck_assert_int_eq(have, 2);
	ck_assert_int_eq(wire_index(fresh[0]), 100);
	ck_assert_int_eq(wire_index(fresh[1]), 101);
	ck_assert_int_eq(aiq__broker_ack_batch(b, fresh, 2), AIQ_OK);
	for (size_t i = 0; i < have; i++)
		aiq__delivery_free(fresh[i]);
	/* The same channel still takes and acks (a closed one would requeue). */
	publish_n(b, q, 200, 1);
	fetch_n(b, fresh, 1, 1);
	ck_assert_int_eq(wire_index(fresh[0]), 200);
	ck_assert_int_eq(aiq__broker_ack_batch(b, fresh, 1), AIQ_OK);
	sleep_ms(300);
	size_t n = 0;
	ck_assert_int_eq(aiq__broker_fetch_batch(b, fresh + 1, 1, &n, 300), AIQ_ETIMEDOUT);
	for (int i = 0; i < N; i++)
		aiq__delivery_free(ds[i]);
	aiq__delivery_free(fresh[0]);
	aiq__broker_close(b);
	ck_assert_int_eq(raw_depth(q), 0);
}
END_TEST

/* publish() is a batch of one through the same confirm tracker as
 * publish_batch(): both confirm, and both report a returned message as
 * not accepted. */
START_TEST(confirms_one_and_many)
{
	char q[128];
	qname(q, sizeof q, "confirm");
	aiq__broker *b = driver_open();
	aiq__wire w;
	test_wire(&w, 0);
	ck_assert_int_eq(b->ops->publish(b, q, &w, 0), AIQ_OK);
	ck_assert_int_eq(raw_depth(q), 1);
	publish_n(b, q, 1, 300);
	ck_assert_int_eq(raw_depth(q), 301);
	/* A delay queue deleted behind the driver's back: the message comes
	 * back unroutable (basic.return, then basic.ack). */
	ck_assert_int_eq(b->ops->publish(b, q, &w, now_ms() + 60000), AIQ_OK);
	char dq[200];
	snprintf(dq, sizeof dq, "%s.delay.32768", q);
	ck_assert_int_eq(raw_depth(dq), 1);
	amqp_connection_state_t c = raw_open();
	amqp_queue_delete(c, 1, amqp_cstring_bytes(dq), 0, 0);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	raw_close(c);
	int rc = b->ops->publish(b, q, &w, now_ms() + 60000);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "could not route") != NULL, "%s", aiq_error_last());
	/* Still good afterwards, one and many. */
	ck_assert_int_eq(b->ops->publish(b, q, &w, 0), AIQ_OK);
	publish_n(b, q, 1, 10);
	ck_assert_int_eq(raw_depth(q), 312);
	aiq__wire_clear(&w);
	aiq__broker_close(b);
}
END_TEST

/* With amqp.queue_max_priority set, "<q>.dead" is declared the same way by
 * every path (dead_letter, consume, publish, purge, depth), whichever comes
 * first: no 406 PRECONDITION_FAILED for an inequivalent x-max-priority. */
START_TEST(dead_queue_with_max_priority)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "amqp.queue_max_priority", 10), AIQ_OK);
	for (int consume_first = 0; consume_first < 2; consume_first++) {
		char q[128], dq[160];
		qname(q, sizeof q, consume_first ? "dlp-consume-first" : "dlp-dead-first");
		snprintf(dq, sizeof dq, "%s.dead", q);
		aiq__broker *b = NULL, *dead = NULL, *ctl_b = NULL;
		ck_assert_int_eq(aiq__broker_open(&b, url(), cfg), AIQ_OK);
		ck_assert_int_eq(aiq__broker_open(&dead, url(), cfg), AIQ_OK);
		ck_assert_int_eq(aiq__broker_open(&ctl_b, url(), cfg), AIQ_OK);
		const char *dqs[] = {dq}, *qs[] = {q};
		if (consume_first)
			ck_assert_msg(dead->ops->consume(dead, dqs, 1, 10) == AIQ_OK, "consume: %s",
			              aiq_error_last());
		aiq__wire w;
		test_wire(&w, 1);
		ck_assert_int_eq(b->ops->publish(b, q, &w, 0), AIQ_OK);
		aiq__wire_clear(&w);
		ck_assert_int_eq(b->ops->consume(b, qs, 1, 10), AIQ_OK);
		aiq__delivery *d = NULL;
		ck_assert_int_eq(b->ops->fetch(b, &d, 5000), AIQ_OK);
		int rc = b->ops->dead_letter(b, d, "regression: max priority");
		ck_assert_msg(rc == AIQ_OK, "dead_letter: %s", aiq_error_last());
		aiq__delivery_free(d);
		if (!consume_first)
			ck_assert_msg(dead->ops->consume(dead, dqs, 1, 10) == AIQ_OK, "consume: %s",
			              aiq_error_last());
		d = NULL;
		rc = dead->ops->fetch(dead, &d, 5000);
		ck_assert_msg(rc == AIQ_OK, "fetch from %s: %s (%s)", dq, aiq_strerror(rc),
		              aiq_error_last());
		ck_assert_str_eq(json_string_value(json_object_get(d->wire.headers, "id")),
		                 "batch-msg-1");
		ck_assert_str_eq(
		        json_string_value(json_object_get(d->wire.headers, "x-aiq-dead-reason")),
		        "regression: max priority");
		ck_assert_int_eq(dead->ops->ack(dead, d), AIQ_OK);
		aiq__delivery_free(d);
		aiq__broker_close(dead);
		/* publish to it, depth and purge on another handle */
		test_wire(&w, 2);
		rc = ctl_b->ops->publish(ctl_b, dq, &w, 0);
		ck_assert_msg(rc == AIQ_OK, "publish to %s: %s", dq, aiq_error_last());
		aiq__wire_clear(&w);
		uint64_t n = 0;
		ck_assert_int_eq(ctl_b->ops->depth(ctl_b, dq, &n), AIQ_OK);
		ck_assert_uint_eq(n, 1);
		rc = ctl_b->ops->purge(ctl_b, dq, &n);
		ck_assert_msg(rc == AIQ_OK, "purge %s: %s", dq, aiq_error_last());
		ck_assert_uint_eq(n, 1);
		ck_assert_int_eq(ctl_b->ops->depth(ctl_b, dq, &n), AIQ_OK);
		ck_assert_uint_eq(n, 0);
		/* the work queue itself keeps its x-max-priority (publish
		 * redeclares it with the argument) */
		aiq__broker_close(b);
		test_wire(&w, 3);
		ck_assert_int_eq(ctl_b->ops->publish(ctl_b, q, &w, 0), AIQ_OK);
		aiq__wire_clear(&w);
		ck_assert_int_eq(ctl_b->ops->purge(ctl_b, q, &n), AIQ_OK);
		ck_assert_uint_eq(n, 1);
		aiq__broker_close(ctl_b);
	}
	aiq_config_free(cfg);
}
END_TEST

/* AIQ_TEST_ONLY=name runs one test (for debugging). */
#define ADD(t)                                                                                     \
	do {                                                                                       \
		const char *only = getenv("AIQ_TEST_ONLY");                                        \
		if (only == NULL || strcmp(only, #t) == 0)                                         \
			tcase_add_test(tc, t);                                                     \
	} while (0)

int main(void)
{
	Suite *s = suite_create("amqp");
	TCase *tc = tcase_create("amqp");
	tcase_set_timeout(tc, 150);
	ADD(round_trip);
	ADD(wire_form);
	ADD(header_types);
	ADD(confirm_failure);
	ADD(priorities);
	ADD(dead_letters);
	ADD(dead_queue_with_max_priority);
	ADD(poison_deliveries);
	ADD(wrong_password);
	ADD(failover_urls);
	ADD(delayed);
	ADD(long_task);
	ADD(quorum_queue);
	ADD(heartbeat_at_prefetch_bound);
	ADD(server_restart);
	ADD(batch_confirmed);
	ADD(batch_nack_and_return);
	ADD(batch_node_stopped);
	ADD(batch_node_lost_midway);
	ADD(fetch_batch_drains);
	ADD(ack_batch_exact);
	ADD(ack_batch_stale_after_restart);
	ADD(confirms_one_and_many);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
