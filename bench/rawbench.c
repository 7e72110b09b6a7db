/*
 * rawbench: the raw broker ceilings, with no libaiqueue code at all
 * (librabbitmq-c and hiredis directly). bench/run.sh drives it.
 *
 * The messages are the library's own: a sample that aiqbench enqueued to
 * SAMPLEQ is read back (basic.get / LINDEX) and re-sent byte for byte, with
 * the same AMQP properties and header table, so sizes are identical.
 *
 *   rawbench amqp-publish  HOST PORT SAMPLEQ DSTQ N [CONFIRM]
 *       publish N copies, persistent, mandatory, each waiting for its
 *       publisher confirm (the guarantee aiq_client_enqueue gives);
 *       CONFIRM=0 skips confirms (only to fill a queue fast).
 *   rawbench amqp-consume  HOST PORT Q N THREADS PREFETCH REDIS_PORT|0
 *       THREADS connections, basic.qos PREFETCH, consume with manual acks;
 *       with REDIS_PORT, SET a ~200-byte result key (EX 86400) before each
 *       ack (at-least-once with the result stored, as the worker does).
 *   rawbench redis-publish HOST PORT SAMPLEQ DSTQ N
 *       LPUSH N copies, one round trip each.
 *   rawbench redis-consume HOST PORT Q N THREADS WITH_RESULT
 *       reliable-queue pattern (no loss window): RPOPLPUSH Q Q.proc,
 *       [SET result EX 86400], LREM Q.proc 1 msg.
 *   rawbench redis-consume-batch HOST PORT Q N THREADS BATCH
 *       the batched limit with the same guarantees: one Lua script pops up
 *       to BATCH and records each in kombu's unacked hash and unacked_index
 *       zset; per message a result SET (EX 86400) and a PUBLISH on its
 *       celery-task-meta channel, pipelined, every reply read; then one
 *       script removes the whole batch from unacked (the ack).
 *   rawbench amqp-consume-batch HOST PORT Q N THREADS PREFETCH REDIS_PORT BATCH
 *       basic.qos PREFETCH; take what the socket holds (up to BATCH, the
 *       first one waited for), pipeline the result SETs to Redis and read
 *       their replies, then one basic.ack with multiple=1 for the batch.
 * Each prints "rate <messages/s>".
 */
#define _GNU_SOURCE
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(const char *what)
{
	fprintf(stderr, "rawbench: %s\n", what);
	exit(1);
}

static const char *g_host;
static int g_port;

static amqp_connection_state_t amqp_open(void)
{
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);
	if (!s || amqp_socket_open(s, g_host, g_port))
		fail("amqp connect");
	amqp_rpc_reply_t r =
	        amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		fail("amqp login");
	amqp_channel_open(c, 1);
	if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
		fail("channel open");
	return c;
}

static void amqp_declare(amqp_connection_state_t c, const char *q)
{
	amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 0, 1, 0, 0, amqp_empty_table);
	if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
		fail("queue.declare");
}

static void wait_confirm(amqp_connection_state_t c)
{
	for (;;) {
		amqp_frame_t f;
		if (amqp_simple_wait_frame(c, &f) != AMQP_STATUS_OK)
			fail("wait confirm");
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		if (f.payload.method.id == AMQP_BASIC_ACK_METHOD)
			return;
		if (f.payload.method.id == AMQP_BASIC_NACK_METHOD ||
		    f.payload.method.id == AMQP_BASIC_RETURN_METHOD)
			fail("nack/return");
	}
}

static int amqp_publish_cmd(char **av)
{
	const char *sampleq = av[2], *dstq = av[3];
	long n = atol(av[4]);
	int confirm = av[5] ? atoi(av[5]) : 1;
	amqp_connection_state_t c = amqp_open();
	if (confirm) {
		amqp_confirm_select(c, 1);
		if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
			fail("confirm.select");
	}
	amqp_declare(c, dstq);
	amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(sampleq), 1);
	if (r.reply_type != AMQP_RESPONSE_NORMAL || r.reply.id != AMQP_BASIC_GET_OK_METHOD)
		fail("no sample message");
	amqp_message_t m;
	if (amqp_read_message(c, 1, &m, 0).reply_type != AMQP_RESPONSE_NORMAL)
		fail("read sample");
	m.properties.delivery_mode = 2;
	m.properties._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
	fprintf(stderr, "rawbench: sample body %zu bytes\n", m.body.len);
	long warm = n / 10 < 200 ? n / 10 + 1 : 200;
	double t0 = 0;
	for (long i = 0; i < warm + n; i++) {
		if (i == warm)
			t0 = now_s();
		if (amqp_basic_publish(c, 1, amqp_cstring_bytes(""), amqp_cstring_bytes(dstq), 1, 0,
		                       &m.properties, m.body) != AMQP_STATUS_OK)
			fail("publish");
		if (confirm)
			wait_confirm(c);
	}
	double dt = now_s() - t0;
	if (!confirm) /* a round trip so every publish reached the broker */
		amqp_declare(c, dstq);
	printf("rate %.1f\nsecs %.3f\n", (double)n / dt, dt);
	amqp_destroy_message(&m);
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
	return 0;
}

/* ---- consumers (shared by both brokers) --------------------------------- */

static atomic_long g_done;
static long g_n;
static int g_prefetch, g_redis_port, g_with_result;
static const char *g_queue;
static double g_first, g_last;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static const char result_fmt[] =
        "{\"status\": \"SUCCESS\", \"result\": null, \"traceback\": null, \"children\": [], "
        "\"date_done\": \"2026-01-01T00:00:00.000000\", \"task_id\": "
        "\"%08lx-0000-4000-8000-000000000000\"}";

static void mark(long k)
{
	if (k == 0 || k == g_n) {
		pthread_mutex_lock(&g_mu);
		if (k == 0)
			g_first = now_s();
		else
			g_last = now_s();
		pthread_mutex_unlock(&g_mu);
	}
}

static redisContext *redis_open(int port)
{
	redisContext *r = redisConnect("127.0.0.1", port);
	if (!r || r->err)
		fail("redis connect");
	return r;
}

static void store_result(redisContext *r, long k)
{
	char key[80], val[400];
	snprintf(key, sizeof key, "celery-task-meta-raw-%ld", k);
	snprintf(val, sizeof val, result_fmt, k);
	redisReply *rep = redisCommand(r, "SET %s %s EX 86400", key, val);
	if (!rep || rep->type == REDIS_REPLY_ERROR)
		fail("SET");
	freeReplyObject(rep);
}

static void *amqp_consumer(void *arg)
{
	(void)arg;
	amqp_connection_state_t c = amqp_open();
	redisContext *r = g_redis_port ? redis_open(g_redis_port) : NULL;
	amqp_basic_qos(c, 1, 0, (uint16_t)g_prefetch, 0);
	amqp_basic_consume(c, 1, amqp_cstring_bytes(g_queue), amqp_empty_bytes, 0, 0, 0,
	                   amqp_empty_table);
	if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
		fail("consume");
	while (atomic_load(&g_done) < g_n) {
		amqp_envelope_t e;
		struct timeval tv = {0, 100000};
		amqp_maybe_release_buffers(c);
		amqp_rpc_reply_t rr = amqp_consume_message(c, &e, &tv, 0);
		if (rr.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
		    rr.library_error == AMQP_STATUS_TIMEOUT)
			continue;
		if (rr.reply_type != AMQP_RESPONSE_NORMAL)
			fail("consume_message");
		long k = atomic_fetch_add(&g_done, 1);
		mark(k);
		if (r)
			store_result(r, k);
		amqp_basic_ack(c, 1, e.delivery_tag, 0);
		amqp_destroy_envelope(&e);
		if (k + 1 == g_n)
			mark(g_n);
	}
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
	if (r)
		redisFree(r);
	return NULL;
}

static void *redis_consumer(void *arg)
{
	(void)arg;
	redisContext *r = redis_open(g_port);
	char proc[256];
	snprintf(proc, sizeof proc, "%s.proc", g_queue);
	while (atomic_load(&g_done) < g_n) {
		redisReply *m = redisCommand(r, "RPOPLPUSH %s %s", g_queue, proc);
		if (!m || m->type == REDIS_REPLY_ERROR)
			fail("RPOPLPUSH");
		if (m->type == REDIS_REPLY_NIL) {
			freeReplyObject(m);
			usleep(1000);
			continue;
		}
		long k = atomic_fetch_add(&g_done, 1);
		mark(k);
		if (g_with_result)
			store_result(r, k);
		redisReply *a = redisCommand(r, "LREM %s 1 %b", proc, m->str, m->len);
		if (!a || a->type == REDIS_REPLY_ERROR)
			fail("LREM");
		freeReplyObject(a);
		freeReplyObject(m);
		if (k + 1 == g_n)
			mark(g_n);
	}
	redisFree(r);
	return NULL;
}

/* ---- batched consumers: the limit ------------------------------------------ */

static int g_batch;
static atomic_int g_thread_seq;

static const char fetch_batch_lua[] = "local out = {}\n"
                                      "for i = 1, tonumber(ARGV[1]) do\n"
                                      "  local m = redis.call('RPOP', KEYS[1])\n"
                                      "  if not m then break end\n"
                                      "  local tag = ARGV[2] .. ':' .. i\n"
                                      "  redis.call('HSET', KEYS[2], tag, m)\n"
                                      "  redis.call('ZADD', KEYS[3], ARGV[3], tag)\n"
                                      "  out[#out + 1] = tag\n"
                                      "end\n"
                                      "return out\n";
static const char ack_batch_lua[] = "for i = 1, #ARGV do\n"
                                    "  redis.call('HDEL', KEYS[1], ARGV[i])\n"
                                    "  redis.call('ZREM', KEYS[2], ARGV[i])\n"
                                    "end\n"
                                    "return #ARGV\n";

static void load_script(redisContext *r, const char *src, char sha[41])
{
	redisReply *x = redisCommand(r, "SCRIPT LOAD %s", src);
	if (!x || x->type != REDIS_REPLY_STRING || x->len != 40)
		fail("SCRIPT LOAD");
	memcpy(sha, x->str, 41);
	freeReplyObject(x);
}

/* Pipeline SET + (optionally) PUBLISH for results k0..k0+n-1, read replies. */
static void store_results_pipelined(redisContext *r, long k0, long n, int publish)
{
	char key[80], val[400];
	for (long i = 0; i < n; i++) {
		snprintf(key, sizeof key, "celery-task-meta-raw-%ld", k0 + i);
		snprintf(val, sizeof val, result_fmt, k0 + i);
		redisAppendCommand(r, "SET %s %s EX 86400", key, val);
		if (publish)
			redisAppendCommand(r, "PUBLISH %s %s", key, val);
	}
	for (long i = 0; i < n * (publish ? 2 : 1); i++) {
		redisReply *x = NULL;
		if (redisGetReply(r, (void **)&x) != REDIS_OK || !x || x->type == REDIS_REPLY_ERROR)
			fail("pipelined result");
		freeReplyObject(x);
	}
}

static void *redis_batch_consumer(void *arg)
{
	(void)arg;
	redisContext *r = redis_open(g_port);
	char fsha[41], asha[41], prefix[32], stamp[32], nbuf[16];
	load_script(r, fetch_batch_lua, fsha);
	load_script(r, ack_batch_lua, asha);
	int me = atomic_fetch_add(&g_thread_seq, 1);
	snprintf(nbuf, sizeof nbuf, "%d", g_batch);
	const char **av = malloc(sizeof *av * (size_t)(g_batch + 8));
	size_t *al = malloc(sizeof *al * (size_t)(g_batch + 8));
	for (long round = 0; atomic_load(&g_done) < g_n; round++) {
		snprintf(prefix, sizeof prefix, "raw%d-%ld", me, round);
		snprintf(stamp, sizeof stamp, "%.3f", now_s());
		const char *fa[] = {"EVALSHA",       fsha, "3",    g_queue, "unacked",
		                    "unacked_index", nbuf, prefix, stamp};
		redisReply *m = redisCommandArgv(r, 9, fa, NULL);
		if (!m || m->type != REDIS_REPLY_ARRAY)
			fail("fetch script");
		long got = (long)m->elements;
		if (got == 0) {
			freeReplyObject(m);
			usleep(1000);
			continue;
		}
		long k = atomic_fetch_add(&g_done, got);
		mark(k);
		store_results_pipelined(r, k, got, 1);
		int ac = 0;
		av[ac] = "EVALSHA";
		al[ac++] = 7;
		av[ac] = asha;
		al[ac++] = 40;
		av[ac] = "2";
		al[ac++] = 1;
		av[ac] = "unacked";
		al[ac++] = 7;
		av[ac] = "unacked_index";
		al[ac++] = 13;
		for (long i = 0; i < got; i++) {
			av[ac] = m->element[i]->str;
			al[ac++] = m->element[i]->len;
		}
		redisReply *a = redisCommandArgv(r, ac, av, al);
		if (!a || a->type == REDIS_REPLY_ERROR)
			fail("ack script");
		freeReplyObject(a);
		freeReplyObject(m);
		if (k + got >= g_n)
			mark(g_n);
	}
	free(av);
	free(al);
	redisFree(r);
	return NULL;
}

static void *amqp_batch_consumer(void *arg)
{
	(void)arg;
	amqp_connection_state_t c = amqp_open();
	redisContext *r = g_redis_port ? redis_open(g_redis_port) : NULL;
	amqp_basic_qos(c, 1, 0, (uint16_t)g_prefetch, 0);
	amqp_basic_consume(c, 1, amqp_cstring_bytes(g_queue), amqp_empty_bytes, 0, 0, 0,
	                   amqp_empty_table);
	if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
		fail("consume");
	while (atomic_load(&g_done) < g_n) {
		uint64_t last_tag = 0;
		long got = 0;
		while (got < g_batch) {
			amqp_envelope_t e;
			struct timeval wait = {0, 100000}, now = {0, 0};
			/* The first one is waited for; then only what is already here
			 * (a zero timeout polls the socket once). */
			amqp_maybe_release_buffers(c);
			amqp_rpc_reply_t rr = amqp_consume_message(c, &e, got ? &now : &wait, 0);
			if (rr.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
			    rr.library_error == AMQP_STATUS_TIMEOUT)
				break;
			if (rr.reply_type != AMQP_RESPONSE_NORMAL)
				fail("consume_message");
			last_tag = e.delivery_tag;
			amqp_destroy_envelope(&e);
			got++;
		}
		if (got == 0)
			continue;
		long k = atomic_fetch_add(&g_done, got);
		mark(k);
		if (r)
			store_results_pipelined(r, k, got, 0);
		amqp_basic_ack(c, 1, last_tag, 1);
		if (k + got >= g_n)
			mark(g_n);
	}
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
	if (r)
		redisFree(r);
	return NULL;
}

static int consume_cmd(void *(*fn)(void *), int threads)
{
	pthread_t th[64];
	if (threads < 1 || threads > 64)
		fail("threads");
	for (int i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, fn, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	/* The first message's clock starts at its receipt: (N-1) intervals. */
	double dt = g_last - g_first;
	printf("rate %.1f\nsecs %.3f\n", (double)(g_n - 1) / dt, dt);
	return 0;
}

static int redis_publish_cmd(char **av)
{
	const char *sampleq = av[2], *dstq = av[3];
	long n = atol(av[4]);
	redisContext *r = redis_open(g_port);
	redisReply *s = redisCommand(r, "LINDEX %s 0", sampleq);
	if (!s || s->type != REDIS_REPLY_STRING)
		fail("no sample message");
	fprintf(stderr, "rawbench: sample element %zu bytes\n", s->len);
	long warm = n / 10 < 200 ? n / 10 + 1 : 200;
	double t0 = 0;
	char wq[256];
	snprintf(wq, sizeof wq, "%s.warm", dstq);
	for (long i = 0; i < warm + n; i++) {
		if (i == warm)
			t0 = now_s();
		redisReply *a =
		        redisCommand(r, "LPUSH %s %b", i < warm ? wq : dstq, s->str, s->len);
		if (!a || a->type == REDIS_REPLY_ERROR)
			fail("LPUSH");
		freeReplyObject(a);
	}
	double dt = now_s() - t0;
	printf("rate %.1f\nsecs %.3f\n", (double)n / dt, dt);
	freeReplyObject(redisCommand(r, "DEL %s", wq));
	freeReplyObject(s);
	redisFree(r);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 7)
		fail("usage: see the comment at the top of bench/rawbench.c");
	g_host = argv[2];
	g_port = atoi(argv[3]);
	if (!strcmp(argv[1], "amqp-publish"))
		return amqp_publish_cmd(argv + 2);
	if (!strcmp(argv[1], "redis-publish"))
		return redis_publish_cmd(argv + 2);
	g_queue = argv[4];
	g_n = atol(argv[5]);
	if (!strcmp(argv[1], "amqp-consume") && argc >= 9) {
		g_prefetch = atoi(argv[7]);
		g_redis_port = atoi(argv[8]);
		return consume_cmd(amqp_consumer, atoi(argv[6]));
	}
	if (!strcmp(argv[1], "redis-consume") && argc >= 8) {
		g_with_result = atoi(argv[7]);
		return consume_cmd(redis_consumer, atoi(argv[6]));
	}
	if (!strcmp(argv[1], "redis-consume-batch") && argc >= 8) {
		g_batch = atoi(argv[7]) > 0 ? atoi(argv[7]) : 1;
		return consume_cmd(redis_batch_consumer, atoi(argv[6]));
	}
	if (!strcmp(argv[1], "amqp-consume-batch") && argc >= 10) {
		g_prefetch = atoi(argv[7]);
		g_redis_port = atoi(argv[8]);
		g_batch = atoi(argv[9]) > 0 ? atoi(argv[9]) : 1;
		return consume_cmd(amqp_batch_consumer, atoi(argv[6]));
	}
	fail("unknown mode");
	return 2;
}
