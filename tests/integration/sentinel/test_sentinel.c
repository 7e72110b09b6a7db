/*
 * Redis with Sentinel (suite 'cluster'): a master, a replica and three
 * Sentinels started once by run.sh (scripts/services/redis_sentinel.sh).
 *
 *  - sentinel:// URLs: the master name from redis.master_name or
 *    ?master_name=, clear errors for an unknown name, unreachable
 *    sentinels (listed, passwords hidden), a list mixing schemes.
 *  - redis.min_replicas: an enqueue and a result write that fewer
 *    replicas confirm fail (AIQ_EBROKER / AIQ_ESTORE) instead of claiming
 *    success.
 *  - Failover: kill -9 of the master while a client enqueues 5,000 tasks and
 *    a worker runs them, storing results in the same Sentinel-managed
 *    Redis, with redis.min_replicas = 1: no acknowledged enqueue and no
 *    result is lost; duplicates and the unavailability window are printed.
 *  - +switch-master: clients told of a new master move to it at once, while
 *    the old one still accepts writes.
 */
#include "broker.h"
#include "result_int.h"
#include "store.h"

#include <aiqueue/aiqueue.h>
#include <check.h>
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SECRET    "Sentinel-Secret-42"
#define MAX_TASKS 5000 /* AIQ_TEST_SENTINEL_TASKS may ask for fewer (valgrind) */
#define BATCH     50

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v != NULL && *v, "%s is not set: run through run.sh", name);
	return v;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Run the test bed script with arguments; its first output line. */
static char *bed(const char *args)
{
	char cmd[1024];
	/* The script takes DIR second: "script verb DIR rest". */
	char verb[64] = "", rest[256] = "";
	sscanf(args, "%63s %255[^\n]", verb, rest);
	snprintf(cmd, sizeof cmd, "'%s' %s '%s' %s", env("AIQ_TEST_SENTINEL_SH"), verb,
	         env("AIQ_TEST_SENTINEL_DIR"), rest);
	FILE *p = popen(cmd, "r");
	ck_assert_msg(p != NULL, "popen %s", cmd);
	char line[256] = "";
	if (fgets(line, sizeof line, p) == NULL)
		line[0] = '\0';
	int st = pclose(p);
	ck_assert_msg(st == 0, "'%s' failed (%d)", cmd, st);
	line[strcspn(line, "\n")] = '\0';
	return strdup(line);
}

static redisContext *raw(int port)
{
	struct timeval tv = {5, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	ck_assert_msg(c != NULL && c->err == 0, "cannot connect to 127.0.0.1:%d", port);
	return c;
}

static long long master_int(const char *fmt, const char *arg)
{
	char *port = bed("master");
	redisContext *c = raw(atoi(port));
	redisReply *r = redisCommand(c, fmt, arg);
	ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER, "%s", fmt);
	long long v = r->integer;
	freeReplyObject(r);
	redisFree(c);
	free(port);
	return v;
}

static aiq_config *config(const char *url, int min_replicas)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", url), AIQ_OK);
	ck_assert_int_eq(
	        aiq_config_set_str(cfg, "redis.master_name", env("AIQ_TEST_SENTINEL_MASTER")),
	        AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.min_replicas", min_replicas), AIQ_OK);
	return cfg;
}

/* ---- URLs and errors ---- */

START_TEST(urls_and_errors)
{
	const char *url = env("AIQ_TEST_SENTINEL_URL");
	aiq_client *c = NULL;

	/* redis.master_name */
	aiq_config *cfg = config(url, 0);
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client: %s", aiq_error_last());
	ck_assert_int_eq(aiq_client_ping(c), AIQ_OK);
	aiq_client_free(c);
	aiq_config_free(cfg);

	/* ?master_name= in the URL wins over the key */
	char buf[1024];
	snprintf(buf, sizeof buf, "%s?master_name=%s", url, env("AIQ_TEST_SENTINEL_MASTER"));
	cfg = config(buf, 0);
	ck_assert_int_eq(aiq_config_set_str(cfg, "redis.master_name", "not-this-one"), AIQ_OK);
	rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client with ?master_name=: %s", aiq_error_last());
	aiq_client_free(c);
	aiq_config_free(cfg);

	/* no master name at all: refused before connecting */
	cfg = config(url, 0);
	ck_assert_int_eq(aiq_config_set_str(cfg, "redis.master_name", ""), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "redis.master_name") != NULL, "%s",
	              aiq_error_last());
	aiq_config_free(cfg);

	/* an unknown master name is named */
	cfg = config(url, 0);
	ck_assert_int_eq(aiq_config_set_str(cfg, "redis.master_name", "nosuchmaster"), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "no Redis Sentinel knows a master named "
	                                       "'nosuchmaster'") != NULL,
	              "%s", aiq_error_last());
	aiq_config_free(cfg);

	/* no sentinel reachable: every one listed, no password shown */
	int64_t t0 = mono_ms();
	cfg = config("sentinel://:" SECRET "@127.0.0.1:1;sentinel://:" SECRET "@127.0.0.1:2", 0);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EBROKER);
	const char *e = aiq_error_last();
	ck_assert_msg(strstr(e, "no Redis Sentinel reachable") && strstr(e, "127.0.0.1:1 (") &&
	                      strstr(e, "127.0.0.1:2 ("),
	              "%s", e);
	ck_assert_msg(strstr(e, SECRET) == NULL, "password shown: %s", e);
	ck_assert_msg(mono_ms() - t0 < 3000, "took %lld ms", (long long)(mono_ms() - t0));
	aiq_config_free(cfg);

	/* a list mixing schemes */
	cfg = config("sentinel://127.0.0.1:1;redis://:" SECRET "@127.0.0.1:2", 0);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "must be sentinel://") &&
	                      !strstr(aiq_error_last(), SECRET),
	              "%s", aiq_error_last());
	aiq_config_free(cfg);

	/* an option kombu does not have */
	snprintf(buf, sizeof buf, "%s?bogus=1", url);
	cfg = config(buf, 0);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "unknown option 'bogus'"), "%s", aiq_error_last());
	aiq_config_free(cfg);

	/* WAIT must end before the socket gives up */
	cfg = config(url, 1);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.wait_timeout_ms", 5000), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.socket_timeout_ms", 5000), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "must exceed redis.wait_timeout_ms"), "%s",
	              aiq_error_last());
	aiq_config_free(cfg);
}
END_TEST

static void node_cmd(int port, const char *cmd)
{
	redisContext *c = raw(port);
	redisReply *r = redisCommand(c, cmd);
	ck_assert_msg(r && r->type != REDIS_REPLY_ERROR, "%d %s: %s", port, cmd,
	              r ? r->str : c->errstr);
	freeReplyObject(r);
	redisFree(c);
}

static long long node_int(int port, const char *cmd)
{
	redisContext *c = raw(port);
	redisReply *r = redisCommand(c, cmd);
	ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER, "%d %s", port, cmd);
	long long v = r->integer;
	freeReplyObject(r);
	redisFree(c);
	return v;
}

/* ---- a sentinel that names a replica ---- */

/* A fake sentinel: answers every command with the address (127.0.0.1,
 * `answer_port`), as SENTINEL get-master-addr-by-name does, except
 * SUBSCRIBE (and PING once subscribed), answered as Sentinel does. Setting
 * `announce` sends every subscriber a +switch-master message for master
 * "m" from `old_port` to `answer_port`. Up to 8 connections at a time,
 * one reply per read (hiredis waits for each reply). */
enum { FAKE_CONNS = 8 };
struct fake_sentinel {
	int fd, port;
	atomic_int answer_port, old_port; /* may change while it runs */
	atomic_bool stop, announce;
	atomic_int subscribers, announced;
	pthread_t thread;
};

static bool send_all(int fd, const char *buf, size_t len)
{
	return write(fd, buf, len) == (ssize_t)len;
}

static void *fake_main(void *arg)
{
	struct fake_sentinel *f = arg;
	int conns[FAKE_CONNS];
	bool subscribed[FAKE_CONNS] = {false};
	for (int i = 0; i < FAKE_CONNS; i++)
		conns[i] = -1;
	while (!atomic_load(&f->stop)) {
		if (atomic_exchange(&f->announce, false)) {
			char msg[160], frame[256];
			int n = snprintf(msg, sizeof msg, "m 127.0.0.1 %d 127.0.0.1 %d",
			                 atomic_load(&f->old_port), atomic_load(&f->answer_port));
			int len = snprintf(
			        frame, sizeof frame,
			        "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%d\r\n%s\r\n", n,
			        msg);
			for (int i = 0; i < FAKE_CONNS; i++)
				if (conns[i] >= 0 && subscribed[i] &&
				    send_all(conns[i], frame, (size_t)len))
					atomic_fetch_add(&f->announced, 1);
		}
		struct pollfd p[FAKE_CONNS + 1];
		p[0] = (struct pollfd){.fd = f->fd, .events = POLLIN};
		for (int i = 0; i < FAKE_CONNS; i++)
			p[i + 1] = (struct pollfd){.fd = conns[i], .events = POLLIN};
		if (poll(p, FAKE_CONNS + 1, 20) <= 0)
			continue;
		if (p[0].revents) {
			int c = accept(f->fd, NULL, NULL);
			for (int i = 0; c >= 0 && i < FAKE_CONNS; i++)
				if (conns[i] < 0) {
					conns[i] = c;
					subscribed[i] = false;
					c = -1;
				}
			if (c >= 0)
				close(c);
		}
		for (int i = 0; i < FAKE_CONNS; i++) {
			if (conns[i] < 0 || !(p[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char buf[512], reply[96];
			ssize_t n = read(conns[i], buf, sizeof buf - 1);
			int len;
			if (n > 0) {
				buf[n] = '\0';
				if (strstr(buf, "SUBSCRIBE") != NULL) {
					len = snprintf(reply, sizeof reply,
					               "*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-"
					               "master\r\n:1\r\n");
					if (!subscribed[i])
						atomic_fetch_add(&f->subscribers, 1);
					subscribed[i] = true;
				} else if (subscribed[i]) {
					len = snprintf(reply, sizeof reply,
					               "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
				} else {
					char port[16];
					snprintf(port, sizeof port, "%d",
					         atomic_load(&f->answer_port));
					len = snprintf(reply, sizeof reply,
					               "*2\r\n$9\r\n127.0.0.1\r\n$%zu\r\n%s\r\n",
					               strlen(port), port);
				}
				if (send_all(conns[i], reply, (size_t)len))
					continue;
			}
			if (subscribed[i])
				atomic_fetch_sub(&f->subscribers, 1);
			close(conns[i]);
			conns[i] = -1;
		}
	}
	for (int i = 0; i < FAKE_CONNS; i++)
		if (conns[i] >= 0)
			close(conns[i]);
	return NULL;
}

static void fake_start(struct fake_sentinel *f, int answer_port)
{
	memset(f, 0, sizeof *f);
	atomic_init(&f->answer_port, answer_port);
	atomic_init(&f->old_port, answer_port);
	atomic_init(&f->announce, false);
	atomic_init(&f->subscribers, 0);
	atomic_init(&f->announced, 0);
	f->fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(f->fd, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ck_assert_int_eq(bind(f->fd, (struct sockaddr *)&a, sizeof a), 0);
	ck_assert_int_eq(listen(f->fd, 8), 0);
	socklen_t alen = sizeof a;
	ck_assert_int_eq(getsockname(f->fd, (struct sockaddr *)&a, &alen), 0);
	f->port = ntohs(a.sin_port);
	atomic_init(&f->stop, false);
	ck_assert_int_eq(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake_sentinel *f)
{
	atomic_store(&f->stop, true);
	pthread_join(f->thread, NULL);
	close(f->fd);
}

/* A master that ROLE shows to be a replica (Sentinel has not finished a
 * failover) is not used: the connect asks again until redis.sentinel_wait_ms
 * and then says why. */
START_TEST(named_replica_is_refused)
{
	char *master = bed("master");
	int replica = 0;
	char ports[64];
	snprintf(ports, sizeof ports, "%s", env("AIQ_TEST_SENTINEL_DATA_PORTS"));
	for (char *p = strtok(ports, " "); p; p = strtok(NULL, " "))
		if (strcmp(p, master) != 0)
			replica = atoi(p);
	ck_assert_int_gt(replica, 0);
	struct fake_sentinel f;
	fake_start(&f, replica);
	char url[128];
	snprintf(url, sizeof url, "sentinel://127.0.0.1:%d?master_name=m", f.port);
	aiq_config *cfg = config(url, 0);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.sentinel_wait_ms", 600), AIQ_OK);
	aiq_client *c = NULL;
	int64_t t0 = mono_ms();
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EBROKER);
	int64_t took = mono_ms() - t0;
	const char *e = aiq_error_last();
	ck_assert_msg(strstr(e, "not usable after") && strstr(e, "ROLE says it is a replica"), "%s",
	              e);
	ck_assert_msg(took >= 300 && took < 3000, "took %lld ms", (long long)took);
	/* The same fake naming the real master: accepted after ROLE. */
	fake_stop(&f);
	fake_start(&f, atoi(master));
	snprintf(url, sizeof url, "sentinel://127.0.0.1:%d?master_name=m", f.port);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", url), AIQ_OK);
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	ck_assert_int_eq(aiq_client_ping(c), AIQ_OK);
	aiq_client_free(c);
	fake_stop(&f);
	aiq_config_free(cfg);
	free(master);
}
END_TEST

/* Closing a consumer while the master is unreachable: its deliveries stay
 * in unacked (they come back after the visibility timeout), and close does
 * not wait out redis.sentinel_wait_ms once per delivery. */
START_TEST(close_while_unreachable_is_bounded)
{
	char *mp = bed("master");
	struct fake_sentinel f;
	fake_start(&f, atoi(mp));
	char url[128];
	snprintf(url, sizeof url, "sentinel://127.0.0.1:%d?master_name=m", f.port);
	aiq_config *cfg = config(url, 0);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.sentinel_wait_ms", 1000), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_msg(aiq_client_new(&c, cfg) == AIQ_OK, "%s", aiq_error_last());
	uint64_t removed;
	ck_assert_int_eq(aiq_client_purge(&removed, c, "closeq"), AIQ_OK);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, "closeq"), AIQ_OK);
	enum { HELD = 6 };
	for (int i = 0; i < HELD; i++) {
		char *id = NULL;
		ck_assert_int_eq(aiq_client_enqueue(&id, c, "tests.x", "[]", NULL, o), AIQ_OK);
		aiq_free(id);
	}
	aiq__broker *b = NULL;
	ck_assert_msg(aiq__broker_open(&b, url, cfg) == AIQ_OK, "%s", aiq_error_last());
	const char *queues[] = {"closeq"};
	ck_assert_int_eq(aiq__broker_consume(b, queues, 1, 0), AIQ_OK);
	aiq__delivery *d[HELD] = {0};
	for (int i = 0; i < HELD; i++)
		ck_assert_msg(aiq__broker_fetch(b, &d[i], 5000) == AIQ_OK, "%s", aiq_error_last());
	/* The master becomes unreachable for this handle: the sentinel names
	 * a closed port and the handle's connections are cut. */
	atomic_store(&f.answer_port, 1);
	int m = atoi(mp);
	node_cmd(m, "CLIENT KILL TYPE normal SKIPME yes");
	int64_t t0 = mono_ms();
	aiq__broker_close(b);
	int64_t took = mono_ms() - t0;
	for (int i = 0; i < HELD; i++)
		aiq__delivery_free(d[i]);
	ck_assert_msg(took < 2500, "close took %lld ms for %d held deliveries", (long long)took,
	              HELD);
	ck_assert_int_eq(node_int(m, "HLEN unacked"), HELD); /* restored later */
	ck_assert_int_eq(node_int(m, "DEL unacked unacked_index"), 2);
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);
	aiq_config_free(cfg);
	fake_stop(&f);
	free(mp);
}
END_TEST

/* ---- redis.min_replicas ---- */

START_TEST(min_replicas_refuses)
{
	const char *url = env("AIQ_TEST_SENTINEL_URL");
	/* One replica exists: asking for two can never be met. */
	aiq_config *cfg = config(url, 2);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.wait_timeout_ms", 200), AIQ_OK);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client: %s", aiq_error_last());
	char *id = NULL;
	rc = aiq_client_enqueue(&id, c, "tests.nobody", "[]", NULL, NULL);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_ptr_null(id);
	ck_assert_msg(strstr(aiq_error_last(), "only 1 of the 2 replica(s)"), "%s",
	              aiq_error_last());
	const char *const args[2] = {"[1]", "[2]"};
	int status[2];
	rc = aiq_client_enqueue_batch(NULL, status, c, "tests.nobody", args, NULL, 2, NULL);
	ck_assert_int_eq(rc, AIQ_EBROKER);
	ck_assert_int_eq(status[0], AIQ_EBROKER);
	ck_assert_int_eq(status[1], AIQ_EBROKER);
	ck_assert_msg(strstr(aiq_error_last(), "redis.min_replicas"), "%s", aiq_error_last());
	aiq_client_free(c);

	/* The result store reports the same. */
	aiq__store *s = NULL;
	ck_assert_int_eq(aiq__store_open(&s, url, cfg), AIQ_OK);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq__result_new(&r, "sentinel-durable-1", AIQ_STATE_SUCCESS), AIQ_OK);
	ck_assert_int_eq(aiq__store_put(s, r), AIQ_ESTORE);
	ck_assert_msg(strstr(aiq_error_last(), "only 1 of the 2"), "%s", aiq_error_last());
	const aiq_result *rs[1] = {r};
	int st[1];
	ck_assert_int_eq(aiq__store_put_batch(s, rs, 1, st), AIQ_ESTORE);
	ck_assert_int_eq(st[0], AIQ_ESTORE);
	aiq__store_close(s);

	/* With one replica asked for, the same writes succeed. */
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.min_replicas", 1), AIQ_OK);
	ck_assert_int_eq(aiq__store_open(&s, url, cfg), AIQ_OK);
	ck_assert_int_eq(aiq__store_put(s, r), AIQ_OK);
	aiq__store_close(s);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	rc = aiq_client_enqueue(&id, c, "tests.nobody", "[]", NULL, NULL);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	aiq_free(id);
	uint64_t removed = 0;
	ck_assert_int_eq(aiq_client_purge(&removed, c, "celery"), AIQ_OK);
	aiq_client_free(c);
	aiq_result_free(r);
	aiq_config_free(cfg);
}
END_TEST

/* ---- failover ---- */

static atomic_int runs[MAX_TASKS];
static atomic_llong last_run_ms, max_gap_ms, gap_after_ms;
static atomic_llong kill_ms;

static void echo_task(aiq_task *t, void *ud)
{
	(void)ud;
	int i = atoi(aiq_task_args_json(t) + 1);
	if (i >= 0 && i < MAX_TASKS)
		atomic_fetch_add(&runs[i], 1);
	long long now = mono_ms(), prev = atomic_exchange(&last_run_ms, now);
	if (prev && atomic_load(&kill_ms) && prev >= atomic_load(&kill_ms) - 5000 &&
	    now - prev > atomic_load(&max_gap_ms)) {
		atomic_store(&max_gap_ms, now - prev);
		atomic_store(&gap_after_ms, prev - atomic_load(&kill_ms));
	}
	char out[32];
	snprintf(out, sizeof out, "%d", i);
	aiq_task_succeed(t, out);
}

struct worker_run {
	aiq_worker *w;
	int rc;
};

static void *worker_main(void *arg)
{
	struct worker_run *wr = arg;
	wr->rc = aiq_worker_run(wr->w);
	return NULL;
}

struct killer {
	char *old, *now;
	int64_t failover_ms, rejoin_ms;
};

/* kill -9 the master, wait for Sentinel's failover, bring the dead node back
 * as a replica of the new master (redis.min_replicas = 1 needs one). */
static void *killer_main(void *arg)
{
	struct killer *k = arg;
	int64_t t0 = mono_ms();
	atomic_store(&kill_ms, t0);
	k->old = bed("kill-master");
	char args[64];
	snprintf(args, sizeof args, "wait-failover %s 30", k->old);
	k->now = bed(args);
	k->failover_ms = mono_ms() - t0;
	snprintf(args, sizeof args, "rejoin %s", k->old);
	free(bed(args));
	k->rejoin_ms = mono_ms() - t0;
	return NULL;
}

/* A second client that needs no replica (redis.min_replicas = 0) enqueues
 * one task at a time during the failover: how long it could not enqueue,
 * and how soon after the sentinels announced the new master
 * (+switch-master, heard by a subscriber of the test's own) it could. */
struct probe {
	const char *url;
	atomic_bool stop;
	int64_t last_ok;      /* the last accepted enqueue */
	int64_t gap_ms;       /* the longest time without one, after the kill began */
	int64_t gap_end;      /* when that gap ended */
	int64_t announced_ms; /* +switch-master heard */
};

static void *probe_main(void *arg)
{
	struct probe *p = arg;
	aiq_config *cfg = config(p->url, 0);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.sentinel_wait_ms", 15000), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.connect_timeout_ms", 500), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_msg(aiq_client_new(&c, cfg) == AIQ_OK, "probe: %s", aiq_error_last());
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, "probe"), AIQ_OK);
	while (!atomic_load(&p->stop)) {
		char *id = NULL;
		int rc = aiq_client_enqueue(&id, c, "tests.nobody", "[]", NULL, o);
		aiq_free(id);
		int64_t now = mono_ms(), killed = atomic_load(&kill_ms);
		if (rc == AIQ_OK) {
			if (killed && p->last_ok && now - p->last_ok > p->gap_ms) {
				p->gap_ms = now - p->last_ok;
				p->gap_end = now;
			}
			p->last_ok = now;
		}
		sleep_ms(rc == AIQ_OK ? 5 : 0);
	}
	uint64_t removed;
	(void)aiq_client_purge(&removed, c, "probe");
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return NULL;
}

/* SUBSCRIBE +switch-master on the first sentinel of the list; the time of
 * the first message. */
static void *announce_main(void *arg)
{
	struct probe *p = arg;
	int port = 0;
	ck_assert_int_eq(sscanf(p->url, "sentinel://127.0.0.1:%d", &port), 1);
	struct timeval tv = {30, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	ck_assert_msg(c != NULL && c->err == 0, "sentinel %d", port);
	redisSetTimeout(c, tv);
	redisReply *r = redisCommand(c, "SUBSCRIBE +switch-master");
	ck_assert_msg(r != NULL, "SUBSCRIBE: %s", c->errstr);
	freeReplyObject(r);
	void *m = NULL;
	if (redisGetReply(c, &m) == REDIS_OK)
		p->announced_ms = mono_ms();
	freeReplyObject(m);
	redisFree(c);
	return NULL;
}

START_TEST(failover_loses_nothing)
{
	int64_t t_start = mono_ms();
	const char *url = env("AIQ_TEST_SENTINEL_URL");
	const char *want = getenv("AIQ_TEST_SENTINEL_TASKS");
	const int NTASKS =
	        want && atoi(want) >= 100 && atoi(want) <= MAX_TASKS ? atoi(want) : MAX_TASKS;
	const int kill_after = NTASKS * 2 / 5;
	aiq_config *cfg = config(url, 1);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 4), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.visibility_timeout_s", 6), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.reconnect_max_ms", 500), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.sentinel_wait_ms", 15000), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.connect_timeout_ms", 500), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "task.retry_backoff_ms", 100), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_msg(aiq_client_new(&c, cfg) == AIQ_OK, "client: %s", aiq_error_last());
	uint64_t removed;
	ck_assert_int_eq(aiq_client_purge(&removed, c, "celery"), AIQ_OK);

	struct worker_run wr = {0};
	ck_assert_msg(aiq_worker_new(&wr.w, cfg) == AIQ_OK, "worker: %s", aiq_error_last());
	ck_assert_int_eq(aiq_worker_register(wr.w, "tests.echo", echo_task, NULL, NULL), AIQ_OK);
	pthread_t wt, kt, pt, at;
	ck_assert_int_eq(pthread_create(&wt, NULL, worker_main, &wr), 0);
	static struct probe pr;
	memset(&pr, 0, sizeof pr);
	pr.url = url;
	ck_assert_int_eq(pthread_create(&pt, NULL, probe_main, &pr), 0);
	ck_assert_int_eq(pthread_create(&at, NULL, announce_main, &pr), 0);

	char **ids = calloc(NTASKS, sizeof *ids);
	char(*argbuf)[16] = calloc(NTASKS, sizeof *argbuf);
	ck_assert_ptr_nonnull(ids);
	ck_assert_ptr_nonnull(argbuf);
	for (int i = 0; i < NTASKS; i++)
		snprintf(argbuf[i], sizeof argbuf[i], "[%d]", i);
	struct killer k = {0};
	bool killed = false;
	int failed_enqueues = 0, accepted = 0;
	int64_t first_fail_ms = 0, longest_call_ms = 0, last_ok_ms = 0, enqueue_gap_ms = 0;
	char first_error[512] = "";
	/* Every task is enqueued until the broker accepts it (a failed
	 * enqueue is sent again, under a new id: it may have been queued). */
	int next = 0;
	int64_t deadline = mono_ms() + 60000;
	while (next < NTASKS && mono_ms() < deadline) {
		if (!killed && accepted >= kill_after) {
			ck_assert_int_eq(pthread_create(&kt, NULL, killer_main, &k), 0);
			killed = true;
		}
		int todo[BATCH], m = 0;
		const char *args[BATCH];
		for (int i = next; i < NTASKS && m < BATCH; i++)
			if (ids[i] == NULL) {
				todo[m] = i;
				args[m++] = argbuf[i];
			}
		char *got[BATCH];
		int status[BATCH];
		int64_t call_start = mono_ms();
		int rc = aiq_client_enqueue_batch(got, status, c, "tests.echo", args, NULL,
		                                  (size_t)m, NULL);
		int64_t now = mono_ms();
		if (killed && now - call_start > longest_call_ms)
			longest_call_ms = now - call_start; /* a connect waiting out the failover */
		bool any_ok = false;
		for (int j = 0; j < m; j++)
			any_ok |= status[j] == AIQ_OK;
		if (any_ok) {
			/* Unavailable: the longest time without an accepted enqueue. */
			if (killed && last_ok_ms && now - last_ok_ms > enqueue_gap_ms)
				enqueue_gap_ms = now - last_ok_ms;
			last_ok_ms = now;
		}
		for (int j = 0; j < m; j++) {
			if (status[j] == AIQ_OK) {
				ids[todo[j]] = got[j];
				accepted++;
			} else {
				aiq_free(got[j]);
				failed_enqueues++;
			}
		}
		if (rc != AIQ_OK) {
			if (first_fail_ms == 0 && killed) {
				first_fail_ms = now;
				snprintf(first_error, sizeof first_error, "%s", aiq_error_last());
			}
			sleep_ms(50);
		}
		while (next < NTASKS && ids[next])
			next++;
	}
	ck_assert_msg(next == NTASKS, "only %d of %d tasks accepted within 60 s", accepted, NTASKS);
	int64_t enqueued_ms = mono_ms();
	ck_assert_msg(killed, "the master was never killed");
	pthread_join(kt, NULL);
	pthread_join(at, NULL);
	while ((pr.gap_end == 0 || pr.gap_end < pr.announced_ms) && mono_ms() < deadline)
		sleep_ms(20);
	atomic_store(&pr.stop, true);
	pthread_join(pt, NULL);

	/* Every accepted task has its result (and the broker holds nothing). */
	int lost = NTASKS, pending_unacked = -1;
	deadline = mono_ms() + 60000;
	bool *seen = calloc((size_t)NTASKS, sizeof *seen);
	ck_assert_ptr_nonnull(seen);
	while (mono_ms() < deadline) {
		lost = 0;
		for (int i = 0; i < NTASKS; i++) {
			if (seen[i])
				continue;
			aiq_result *r = NULL;
			if (aiq_client_get_result(&r, c, ids[i]) == AIQ_OK &&
			    aiq_result_state(r) == AIQ_STATE_SUCCESS)
				seen[i] = true;
			else
				lost++;
			aiq_result_free(r);
		}
		if (lost == 0)
			break;
		sleep_ms(200);
	}
	int64_t results_ms = mono_ms();
	/* The in-flight bookkeeping drains: acks reached the new master, and
	 * whatever a lost ack left behind is restored and acked again. */
	deadline = mono_ms() + 30000;
	uint64_t depth = 1;
	while (mono_ms() < deadline) {
		pending_unacked = (int)master_int("HLEN %s", "unacked");
		ck_assert_int_eq(aiq_client_queue_depth(&depth, c, "celery"), AIQ_OK);
		if (pending_unacked == 0 && depth == 0)
			break;
		sleep_ms(250);
	}
	int64_t drained_ms = mono_ms();
	aiq_worker_stop(wr.w);
	pthread_join(wt, NULL);

	int duplicates = 0, never = 0;
	for (int i = 0; i < NTASKS; i++) {
		int n = atomic_load(&runs[i]);
		if (n == 0)
			never++;
		else
			duplicates += n - 1;
	}
	printf("sentinel failover: %d tasks, master %s killed after %d accepted; new master "
	       "%s after %lld ms, old node back as replica after %lld ms\n",
	       NTASKS, k.old, kill_after, k.now, (long long)k.failover_ms, (long long)k.rejoin_ms);
	printf("sentinel failover: enqueues unavailable for %lld ms (longest gap between accepted "
	       "enqueues; longest call %lld ms); %d refused and sent again; first error: %s\n",
	       (long long)enqueue_gap_ms, (long long)longest_call_ms, failed_enqueues,
	       first_error[0] ? first_error : "none");
	printf("sentinel failover: probe (min_replicas 0, one enqueue at a time): no enqueue "
	       "for %lld ms, until %lld ms after the kill began, %lld ms after +switch-master "
	       "(announced %lld ms after the kill began)\n",
	       (long long)pr.gap_ms, (long long)(pr.gap_end - atomic_load(&kill_ms)),
	       (long long)(pr.gap_end - pr.announced_ms),
	       (long long)(pr.announced_ms - atomic_load(&kill_ms)));
	printf("sentinel failover: longest pause between task runs %lld ms (starting %lld ms "
	       "after the kill)\n",
	       (long long)atomic_load(&max_gap_ms), (long long)atomic_load(&gap_after_ms));
	printf("sentinel failover: lost acknowledged enqueues/results %d, duplicate runs %d, "
	       "never run %d, unacked left %d, queue depth %llu\n",
	       lost, duplicates, never, pending_unacked, (unsigned long long)depth);
	printf("sentinel failover: enqueued in %lld ms, all results after %lld ms, drained "
	       "after %lld ms (wall)\n",
	       (long long)(enqueued_ms - t_start), (long long)(results_ms - t_start),
	       (long long)(drained_ms - t_start));
	fflush(stdout);
	ck_assert_msg(wr.rc == AIQ_OK, "worker: %s", aiq_worker_error(wr.w));
	ck_assert_int_eq(lost, 0);
	ck_assert_int_eq(never, 0);
	ck_assert_int_eq(pending_unacked, 0);
	ck_assert_uint_eq(depth, 0);

	for (int i = 0; i < NTASKS; i++)
		aiq_free(ids[i]);
	free(ids);
	free(argbuf);
	free(seen);
	free(k.old);
	free(k.now);
	aiq_worker_free(wr.w);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

/* ---- two data nodes named by a fake sentinel ---- */

/* The bed's master m and its replica r, and a fake sentinel that names m
 * (the tests below make r a master by hand and have the fake say so). */
struct swap_bed {
	char *master;
	int m, r;
	struct fake_sentinel f;
	char url[128];
	aiq_config *cfg;
};

static void swap_bed_start(struct swap_bed *b)
{
	b->master = bed("master");
	b->m = atoi(b->master);
	b->r = 0;
	char ports[64];
	snprintf(ports, sizeof ports, "%s", env("AIQ_TEST_SENTINEL_DATA_PORTS"));
	for (char *p = strtok(ports, " "); p; p = strtok(NULL, " "))
		if (atoi(p) != b->m)
			b->r = atoi(p);
	ck_assert_int_gt(b->r, 0);
	fake_start(&b->f, b->m);
	snprintf(b->url, sizeof b->url, "sentinel://127.0.0.1:%d?master_name=m", b->f.port);
	b->cfg = config(b->url, 0);
}

static void swap_bed_stop(struct swap_bed *b)
{
	aiq_config_free(b->cfg);
	fake_stop(&b->f);
	free(b->master);
}

/* Enqueue options for `queue`, purged first through `c`. */
static aiq_enqueue_opts *fresh_queue(aiq_client *c, const char *queue)
{
	uint64_t removed;
	ck_assert_int_eq(aiq_client_purge(&removed, c, queue), AIQ_OK);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, queue), AIQ_OK);
	return o;
}

/* ---- +switch-master ---- */

/* The sentinels announce a new master while the old one still accepts
 * writes (a manual SENTINEL FAILOVER, or a master cut off from the others
 * but not from this client): clients subscribed to +switch-master move at
 * once, so the next write lands on the new master, not on the old one
 * whose writes are dropped when it turns replica. A fake sentinel names
 * the master and sends the announcement; the test makes the replica a
 * master by hand and puts it back afterwards. */
START_TEST(switch_master_moves_clients)
{
	struct swap_bed b;
	swap_bed_start(&b);
	int m = b.m, r = b.r;
	struct fake_sentinel *f = &b.f;
	const char *url = b.url;
	aiq_config *cfg = b.cfg;
	aiq_client *c = NULL;
	ck_assert_msg(aiq_client_new(&c, cfg) == AIQ_OK, "%s", aiq_error_last());
	aiq__store *st = NULL;
	ck_assert_msg(aiq__store_open(&st, url, cfg) == AIQ_OK, "%s", aiq_error_last());
	aiq_enqueue_opts *o = fresh_queue(c, "switched");
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "tests.x", "[]", NULL, o), AIQ_OK);
	aiq_free(id);
	aiq_result *res = NULL;
	ck_assert_int_eq(aiq__result_new(&res, "sentinel-switch-0", AIQ_STATE_SUCCESS), AIQ_OK);
	ck_assert_int_eq(aiq__store_put(st, res), AIQ_OK);
	aiq_result_free(res);
	/* The connections subscribe to the fake on their first connect. */
	for (int i = 0; i < 100 && atomic_load(&f->subscribers) == 0; i++)
		sleep_ms(20);
	int subscribers = atomic_load(&f->subscribers);

	/* Both nodes are masters now; the sentinel announces the other. */
	node_cmd(r, "REPLICAOF NO ONE");
	long long base = node_int(r, "LLEN switched"); /* the first, if it was replicated */
	atomic_store(&f->old_port, m);
	atomic_store(&f->answer_port, r);
	atomic_store(&f->announce, true);
	for (int i = 0; i < 100 && atomic_load(&f->announced) < subscribers; i++)
		sleep_ms(10);
	sleep_ms(300); /* the message reaches the library's watcher (a busy machine) */
	int64_t t0 = mono_ms();
	int rc = aiq_client_enqueue(&id, c, "tests.x", "[]", NULL, o);
	int64_t took = mono_ms() - t0;
	ck_assert_msg(rc == AIQ_OK, "enqueue after the switch: %s", aiq_error_last());
	aiq_free(id);
	ck_assert_int_eq(aiq__result_new(&res, "sentinel-switch-1", AIQ_STATE_SUCCESS), AIQ_OK);
	rc = aiq__store_put(st, res);
	ck_assert_msg(rc == AIQ_OK, "result write after the switch: %s", aiq_error_last());
	aiq_result_free(res);
	long long on_old = node_int(m, "LLEN switched"), on_new = node_int(r, "LLEN switched");
	long long res_new = node_int(r, "EXISTS celery-task-meta-sentinel-switch-1");
	printf("sentinel switch-master: %d subscriber(s) told; next enqueue took %lld ms; queue "
	       "length on the old master %lld, on the new %lld; result on the new: %lld\n",
	       subscribers, (long long)took, on_old, on_new, res_new);
	fflush(stdout);

	/* Put the node back as the real sentinels know it. */
	char cmd[64];
	snprintf(cmd, sizeof cmd, "REPLICAOF 127.0.0.1 %d", m);
	node_cmd(r, cmd);
	redisContext *rc_ = raw(r);
	bool up = false;
	for (int i = 0; i < 200 && !up; i++) {
		redisReply *rep = redisCommand(rc_, "INFO replication");
		up = rep && rep->type == REDIS_REPLY_STRING &&
		     strstr(rep->str, "master_link_status:up") != NULL;
		freeReplyObject(rep);
		if (!up)
			sleep_ms(50);
	}
	redisFree(rc_);
	node_cmd(m, "DEL switched");

	ck_assert_int_eq(on_old, 1);        /* only the write from before the switch */
	ck_assert_int_eq(on_new, base + 1); /* the new one */
	ck_assert_int_ge(subscribers, 1);
	ck_assert_int_eq(res_new, 1);
	ck_assert(up);
	aiq__store_close(st);
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);
	swap_bed_stop(&b);
}
END_TEST

/* ---- a master demoted under a live connection ---- */

/* The master turns replica while clients stay connected to it (REPLICAOF
 * keeps normal clients): their next write gets READONLY, which must send
 * them to the new master instead of failing. A fake sentinel names the
 * master; the test swaps the roles of the two data nodes by hand and then
 * has it name the other one. Runs last: the real sentinels see roles they
 * did not choose. */
START_TEST(demoted_master_readonly)
{
	struct swap_bed b;
	swap_bed_start(&b);
	int m = b.m, r = b.r;
	struct fake_sentinel *f = &b.f;
	const char *url = b.url;
	aiq_config *cfg = b.cfg;
	aiq_client *single = NULL, *batch = NULL;
	ck_assert_msg(aiq_client_new(&single, cfg) == AIQ_OK, "%s", aiq_error_last());
	ck_assert_msg(aiq_client_new(&batch, cfg) == AIQ_OK, "%s", aiq_error_last());
	aiq__store *s = NULL;
	ck_assert_msg(aiq__store_open(&s, url, cfg) == AIQ_OK, "%s", aiq_error_last());
	aiq_enqueue_opts *o = fresh_queue(single, "demoted");
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, single, "tests.x", "[]", NULL, o), AIQ_OK);
	aiq_free(id);

	/* Swap: the old master follows the other node, which takes over. */
	char cmd[64];
	snprintf(cmd, sizeof cmd, "REPLICAOF 127.0.0.1 %d", r);
	node_cmd(r, "REPLICAOF NO ONE");
	node_cmd(m, cmd);
	atomic_store(&f->answer_port, r);

	int rc = aiq_client_enqueue(&id, single, "tests.x", "[]", NULL, o);
	ck_assert_msg(rc == AIQ_OK, "single enqueue after the demotion: %s", aiq_error_last());
	aiq_free(id);
	const char *const args[3] = {"[1]", "[2]", "[3]"};
	int status[3];
	rc = aiq_client_enqueue_batch(NULL, status, batch, "tests.x", args, NULL, 3, o);
	ck_assert_msg(rc == AIQ_OK, "batch enqueue after the demotion: %s", aiq_error_last());
	aiq_result *res = NULL;
	ck_assert_int_eq(aiq__result_new(&res, "sentinel-demoted-1", AIQ_STATE_SUCCESS), AIQ_OK);
	rc = aiq__store_put(s, res);
	ck_assert_msg(rc == AIQ_OK, "result write after the demotion: %s", aiq_error_last());
	/* Everything is on the new master. */
	ck_assert_int_eq(node_int(r, "LLEN demoted"), 5);
	ck_assert_int_eq(node_int(r, "EXISTS celery-task-meta-sentinel-demoted-1"), 1);

	aiq_result_free(res);
	aiq__store_close(s);
	aiq_enqueue_opts_free(o);
	aiq_client_free(single);
	aiq_client_free(batch);
	swap_bed_stop(&b);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("sentinel");
	/* Two cases, so CK_RUN_CASE=basic runs the quick ones alone (valgrind). */
	TCase *tc = tcase_create("basic");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, urls_and_errors);
	tcase_add_test(tc, named_replica_is_refused);
	tcase_add_test(tc, close_while_unreachable_is_bounded);
	tcase_add_test(tc, min_replicas_refuses);
	suite_add_tcase(s, tc);
	TCase *fo = tcase_create("failover");
	tcase_set_timeout(fo, 150);
	tcase_add_test(fo, failover_loses_nothing);
	tcase_add_test(fo, switch_master_moves_clients);
	tcase_add_test(fo, demoted_master_readonly);
	suite_add_tcase(s, fo);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
