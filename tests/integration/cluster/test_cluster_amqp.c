/*
 * The RabbitMQ driver against a private 3-node cluster with quorum queues
 * (run.sh starts it once, scripts/services/rabbitmq_cluster.sh):
 *  - failover: the quorum queue's leader is killed (kill -9 of its Erlang VM)
 *    while 5,000 messages are published in confirmed batches and consumed
 *    with batched acks: none is lost, duplicates are counted, and the
 *    longest pause of the producer and of the consumer is printed;
 *  - partition: the leader is cut off (SIGSTOP of its VM) during the same
 *    load; the majority serves, the cut-off node takes no client, and after
 *    healing the counts are exact;
 *  - amqp.delivery_limit: a poison message requeued past the limit lands in
 *    "<q>.dead" (a quorum queue too; an existing classic one is kept);
 *  - a real Celery 5.2 worker and client use the quorum queues declared here.
 * Each test prints its figures on one line starting with "cluster:".
 */
#include "amqp_int.h"
#include "broker.h"

#include <aiqueue/aiqueue.h>
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TOTAL 5000
#define BATCH 50

static const char *urls(void)
{
	const char *u = getenv("AIQ_TEST_AMQP_URLS");
	ck_assert_msg(u != NULL && *u, "AIQ_TEST_AMQP_URLS is not set (run through run.sh)");
	return u;
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
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void qname(char *buf, size_t n, const char *what)
{
	snprintf(buf, n, "aiqc.%s.%ld.%lld", what, (long)getpid(), (long long)mono_ms());
}

/* Run rabbitmq_cluster.sh CMD DIR ARGS and return its first output line. */
static void cluster(const char *args, char *out, size_t outsz)
{
	char line[2048];
	snprintf(line, sizeof line, "'%s' %s", getenv("AIQ_TEST_CLUSTER_SH"), args);
	FILE *p = popen(line, "r");
	ck_assert_ptr_nonnull(p);
	char buf[256] = "";
	if (fgets(buf, sizeof buf, p) == NULL)
		buf[0] = '\0';
	int rc = pclose(p);
	ck_assert_msg(rc == 0, "rabbitmq_cluster.sh %s failed (%d)", args, rc);
	buf[strcspn(buf, "\n")] = '\0';
	if (out)
		snprintf(out, outsz, "%s", buf);
}

/* fast: the timeouts a client needs to leave a node that is cut off but
 * keeps its sockets open (a paused or partitioned node): heartbeats every
 * 2 s (missed for 4 s: the link is dead), confirms within 3 s. */
static aiq__broker *open_quorum_at(const char *url, int delivery_limit, bool fast)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "amqp.queue_type", "quorum"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "amqp.connect_timeout_ms", fast ? "1500" : "2000"),
	                 AIQ_OK);
	if (fast) {
		ck_assert_int_eq(aiq_config_set(cfg, "amqp.heartbeat_s", "2"), AIQ_OK);
		ck_assert_int_eq(aiq_config_set(cfg, "amqp.confirm_timeout_ms", "3000"), AIQ_OK);
	}
	/* AIQ_TEST_REPUBLISH_MS=0 shows what happens without republishing. */
	const char *rep = getenv("AIQ_TEST_REPUBLISH_MS");
	ck_assert_int_eq(aiq_config_set(cfg, "amqp.republish_ms", rep ? rep : "20000"), AIQ_OK);
	if (delivery_limit > 0) {
		char v[16];
		snprintf(v, sizeof v, "%d", delivery_limit);
		ck_assert_int_eq(aiq_config_set(cfg, "amqp.delivery_limit", v), AIQ_OK);
	}
	aiq__broker *b = NULL;
	int rc = aiq__broker_open(&b, url, cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	aiq_config_free(cfg);
	return b;
}

static aiq__broker *open_quorum(int delivery_limit)
{
	return open_quorum_at(urls(), delivery_limit, false);
}

/* Node i's URL alone (1-based), from the ';'-separated list. */
static void node_url(char *buf, size_t n, int i)
{
	const char *u = urls();
	for (int k = 1; k < i && u; k++) {
		u = strchr(u, ';');
		if (u)
			u++;
	}
	ck_assert_msg(u != NULL, "no URL for node %d", i);
	snprintf(buf, n, "%.*s", (int)strcspn(u, ";"), u);
}

static void make_wire(aiq__wire *w, int i)
{
	char cid[32];
	snprintf(cid, sizeof cid, "cl-%d", i);
	memset(w, 0, sizeof *w);
	w->headers = json_pack("{s:s}", "id", cid);
	w->properties = json_pack("{s:s, s:i}", "correlation_id", cid, "delivery_mode", 2);
	w->body = (unsigned char *)strdup("[[], {}, {}]");
	w->body_len = strlen((const char *)w->body);
	ck_assert(w->headers && w->properties && w->body);
}

static int wire_index(const aiq__delivery *d)
{
	const char *cid = json_string_value(json_object_get(d->wire.properties, "correlation_id"));
	int i = -1;
	if (cid == NULL || sscanf(cid, "cl-%d", &i) != 1 || i < 0 || i >= TOTAL)
		return -1;
	return i;
}

/* ---- failover ------------------------------------------------------------ */

struct run {
	char q[128];
	bool fast;            /* short heartbeat and confirm timeouts (partition test) */
	atomic_int published; /* confirmed */
	atomic_int failed;    /* reported not accepted */
	atomic_bool producer_done, consumer_done;
	int64_t producer_gap_ms; /* longest time between two confirmed batches */
	atomic_int consumed;     /* distinct */
	atomic_int duplicates;
	int64_t consumer_gap_ms;
	unsigned char seen[TOTAL];
	char why[512];
};

static void *producer(void *arg)
{
	struct run *r = arg;
	aiq__broker *b = open_quorum_at(urls(), 0, r->fast);
	aiq__wire w[BATCH];
	const aiq__wire *msgs[BATCH];
	int status[BATCH];
	int64_t last = mono_ms();
	for (int first = 0; first < TOTAL; first += BATCH) {
		for (int k = 0; k < BATCH; k++) {
			make_wire(&w[k], first + k);
			msgs[k] = &w[k];
		}
		int rc = aiq__broker_publish_batch(b, r->q, msgs, BATCH, NULL, status);
		if (rc != AIQ_OK && r->why[0] == '\0')
			snprintf(r->why, sizeof r->why, "%s", aiq_error_last());
		for (int k = 0; k < BATCH; k++) {
			if (status[k] == AIQ_OK)
				atomic_fetch_add(&r->published, 1);
			else
				atomic_fetch_add(&r->failed, 1);
			aiq__wire_clear(&w[k]);
		}
		int64_t now = mono_ms();
		if (now - last > r->producer_gap_ms)
			r->producer_gap_ms = now - last;
		last = now;
	}
	aiq__broker_close(b);
	atomic_store(&r->producer_done, true);
	return NULL;
}

static void *consumer(void *arg)
{
	struct run *r = arg;
	aiq__broker *b = open_quorum_at(urls(), 0, r->fast);
	const char *qs[] = {r->q};
	int rc = aiq__broker_consume(b, qs, 1, 200);
	if (rc != AIQ_OK) {
		snprintf(r->why, sizeof r->why, "consume: %s", aiq_error_last());
		aiq__broker_close(b);
		return NULL;
	}
	int64_t last = mono_ms(), deadline = mono_ms() + 120000;
	enum { MAX = 64 };
	aiq__delivery *ds[MAX];
	while (mono_ms() < deadline) {
		if (atomic_load(&r->consumed) >= TOTAL)
			break;
		size_t n = 0;
		rc = aiq__broker_fetch_batch(b, ds, MAX, &n, 200);
		int64_t now = mono_ms();
		if (rc != AIQ_OK || n == 0)
			continue;
		if (now - last > r->consumer_gap_ms)
			r->consumer_gap_ms = now - last;
		last = now;
		for (size_t k = 0; k < n; k++) {
			int i = wire_index(ds[k]);
			if (i < 0)
				continue;
			if (r->seen[i]++)
				atomic_fetch_add(&r->duplicates, 1);
			else
				atomic_fetch_add(&r->consumed, 1);
		}
		(void)aiq__broker_ack_batch(b, ds, n);
		for (size_t k = 0; k < n; k++)
			aiq__delivery_free(ds[k]);
	}
	aiq__broker_close(b);
	atomic_store(&r->consumer_done, true);
	return NULL;
}

START_TEST(leader_killed)
{
	static struct run r;
	memset(&r, 0, sizeof r);
	qname(r.q, sizeof r.q, "failover");
	/* Declared from node 1 (the first URL): the leader is node 1, where
	 * the producer and the consumer are connected too. */
	aiq__broker *decl = open_quorum(0);
	const char *qs[] = {r.q};
	ck_assert_msg(aiq__broker_consume(decl, qs, 1, 1) == AIQ_OK, "%s", aiq_error_last());
	aiq__broker_close(decl);
	char leader[32], args[400];
	snprintf(args, sizeof args, "leader '%s' '%s'", getenv("AIQ_TEST_CLUSTER_DIR"), r.q);
	cluster(args, leader, sizeof leader);
	ck_assert_msg(atoi(leader) >= 1 && atoi(leader) <= 3, "leader '%s'", leader);

	pthread_t pt, ct;
	ck_assert_int_eq(pthread_create(&ct, NULL, consumer, &r), 0);
	ck_assert_int_eq(pthread_create(&pt, NULL, producer, &r), 0);
	while (atomic_load(&r.published) < TOTAL * 3 / 10 && !atomic_load(&r.producer_done))
		sleep_ms(5);
	int at_pub = atomic_load(&r.published), at_cons = atomic_load(&r.consumed);
	snprintf(args, sizeof args, "kill '%s' %s", getenv("AIQ_TEST_CLUSTER_DIR"), leader);
	cluster(args, NULL, 0);
	int64_t killed = mono_ms();
	while (!atomic_load(&r.producer_done) || atomic_load(&r.consumed) < TOTAL) {
		if (mono_ms() - killed > 150000)
			break;
		sleep_ms(2000);
		if (getenv("AIQ_TEST_VERBOSE"))
			fprintf(stderr, "progress: published %d, refused %d, consumed %d (%s)\n",
			        atomic_load(&r.published), atomic_load(&r.failed),
			        atomic_load(&r.consumed), r.why);
		if (atomic_load(&r.consumer_done))
			break;
	}
	pthread_join(pt, NULL);
	pthread_join(ct, NULL);
	int lost = 0;
	for (int i = 0; i < TOTAL; i++)
		lost += r.seen[i] == 0;
	/* Where the new leader is, for the log. */
	snprintf(args, sizeof args, "leader '%s' '%s'", getenv("AIQ_TEST_CLUSTER_DIR"), r.q);
	char now_leader[32];
	cluster(args, now_leader, sizeof now_leader);
	fprintf(stderr,
	        "cluster: amqp quorum leader (node %s) killed at %d published / %d consumed; "
	        "new leader node %s; published %d, refused %d, consumed %d, lost %d, "
	        "duplicates %d, producer window %.2f s, consumer window %.2f s (run %.1f s "
	        "after the kill)%s%s\n",
	        leader, at_pub, at_cons, now_leader, atomic_load(&r.published),
	        atomic_load(&r.failed), atomic_load(&r.consumed), lost, atomic_load(&r.duplicates),
	        (double)r.producer_gap_ms / 1000.0, (double)r.consumer_gap_ms / 1000.0,
	        (double)(mono_ms() - killed) / 1000.0, r.why[0] ? "; first error: " : "", r.why);
	ck_assert_msg(atomic_load(&r.failed) == 0, "%d messages not accepted: %s",
	              atomic_load(&r.failed), r.why);
	ck_assert_int_eq(atomic_load(&r.published), TOTAL);
	ck_assert_int_eq(lost, 0);
	/* Bring the node back for what follows (it rejoins by itself). */
	snprintf(args, sizeof args, "restart '%s' %s", getenv("AIQ_TEST_CLUSTER_DIR"), leader);
	cluster(args, NULL, 0);
}
END_TEST

/* ---- network partition ------------------------------------------------------ */

/* How many nodes node k lists as running (-1: it did not answer within 3 s;
 * a call made while a node is silent may hang until that node is declared
 * down). */
static int running_seen_by(int k)
{
	char line[2048];
	snprintf(line, sizeof line,
	         "timeout 3 '%s' ctl '%s' %d -q cluster_status --formatter json 2>/dev/null | "
	         "/usr/bin/python3 -c 'import json, sys; "
	         "print(len(json.load(sys.stdin).get(\"running_nodes\", [])))' 2>/dev/null",
	         getenv("AIQ_TEST_CLUSTER_SH"), getenv("AIQ_TEST_CLUSTER_DIR"), k);
	FILE *p = popen(line, "r");
	ck_assert_ptr_nonnull(p);
	char buf[32] = "";
	int n = -1;
	if (fgets(buf, sizeof buf, p) != NULL)
		n = atoi(buf);
	pclose(p);
	return n;
}

/* The quorum queue's leader node is cut off from the cluster while it
 * runs (its Erlang VM stopped with SIGSTOP: its sockets stay open, nothing
 * answers, as behind a dropped link), with the producer and the consumer
 * connected to it. The two other nodes declare it down after net_ticktime
 * and elect a new leader; the clients leave the silent node (heartbeats,
 * confirm timeout) for the majority, which keeps serving, while the cut-off
 * node takes no new client. After the node is back and the cluster healed
 * (pause_minority), every confirmed message was received, none is left. */
START_TEST(leader_partitioned)
{
	static struct run r;
	memset(&r, 0, sizeof r);
	r.fast = true;
	qname(r.q, sizeof r.q, "partition");
	aiq__broker *decl = open_quorum(0);
	const char *qs[] = {r.q};
	ck_assert_msg(aiq__broker_consume(decl, qs, 1, 1) == AIQ_OK, "%s", aiq_error_last());
	aiq__broker_close(decl);
	const char *dir = getenv("AIQ_TEST_CLUSTER_DIR");
	char leader[32], args[400];
	snprintf(args, sizeof args, "leader '%s' '%s'", dir, r.q);
	cluster(args, leader, sizeof leader);
	int cut = atoi(leader);
	ck_assert_msg(cut >= 1 && cut <= 3, "leader '%s'", leader);
	int other = cut % 3 + 1;

	pthread_t pt, ct;
	ck_assert_int_eq(pthread_create(&ct, NULL, consumer, &r), 0);
	ck_assert_int_eq(pthread_create(&pt, NULL, producer, &r), 0);
	while (atomic_load(&r.published) < TOTAL * 3 / 10 && !atomic_load(&r.producer_done))
		sleep_ms(5);
	int at_pub = atomic_load(&r.published), at_cons = atomic_load(&r.consumed);
	snprintf(args, sizeof args, "pause '%s' %d", dir, cut);
	cluster(args, NULL, 0);
	int64_t paused = mono_ms();

	/* The cut-off node takes no client: a connection to it alone fails. */
	char cut_url[512];
	node_url(cut_url, sizeof cut_url, cut);
	int lone_rc;
	{
		aiq_config *cfg = NULL;
		ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
		ck_assert_int_eq(aiq_config_set(cfg, "amqp.queue_type", "quorum"), AIQ_OK);
		ck_assert_int_eq(aiq_config_set(cfg, "amqp.connect_timeout_ms", "1500"), AIQ_OK);
		aiq__broker *lone = NULL;
		lone_rc = aiq__broker_open(&lone, cut_url, cfg);
		uint64_t depth = 0;
		if (lone_rc == AIQ_OK)
			lone_rc = aiq__broker_depth(lone, r.q, &depth);
		aiq__broker_close(lone);
		aiq_config_free(cfg);
	}

	/* The majority declares it down. */
	int64_t declared = 0;
	while (mono_ms() - paused < 30000) {
		if (running_seen_by(other) == 2) {
			declared = mono_ms();
			break;
		}
		sleep_ms(200);
	}
	ck_assert_msg(declared > 0, "node %d still seen running 30 s after it was cut off", cut);
	/* The majority keeps serving: both clients make progress there. */
	int pub_down = atomic_load(&r.published), cons_down = atomic_load(&r.consumed);
	while (mono_ms() - declared < 15000 && !atomic_load(&r.producer_done) &&
	       (atomic_load(&r.published) < pub_down + 500 ||
	        atomic_load(&r.consumed) < cons_down + 500))
		sleep_ms(50);
	int pub_during = atomic_load(&r.published) - at_pub;
	int cons_during = atomic_load(&r.consumed) - at_cons;
	int64_t resumed = mono_ms();
	snprintf(args, sizeof args, "resume '%s' %d", dir, cut);
	cluster(args, NULL, 0);
	int64_t healed = mono_ms();

	while (!atomic_load(&r.producer_done) || atomic_load(&r.consumed) < TOTAL) {
		if (mono_ms() - healed > 120000 || atomic_load(&r.consumer_done))
			break;
		sleep_ms(100);
	}
	pthread_join(pt, NULL);
	pthread_join(ct, NULL);
	int lost = 0;
	for (int i = 0; i < TOTAL; i++)
		lost += r.seen[i] == 0;
	/* After healing, the queue is empty as seen from the node that was
	 * cut off: nothing is left behind, nothing comes back. */
	aiq__broker *b = open_quorum_at(cut_url, 0, false);
	uint64_t left = 99;
	ck_assert_msg(aiq__broker_depth(b, r.q, &left) == AIQ_OK, "%s", aiq_error_last());
	aiq__broker_close(b);
	snprintf(args, sizeof args, "leader '%s' '%s'", dir, r.q);
	char now_leader[32];
	cluster(args, now_leader, sizeof now_leader);
	fprintf(stderr,
	        "cluster: amqp partition of the leader (node %d, SIGSTOP) at %d published / %d "
	        "consumed; declared down by the majority after %.2f s; cut-off node alone: %s; "
	        "during the partition %d published and %d consumed on the majority; healed "
	        "%.2f s after the resume; new leader node %s; published %d, refused %d, "
	        "consumed %d, lost %d, duplicates %d, left in the queue %llu, producer window "
	        "%.2f s, consumer window %.2f s%s%s\n",
	        cut, at_pub, at_cons, (double)(declared - paused) / 1000.0,
	        lone_rc == AIQ_OK ? "served (wrong)" : aiq_strerror(lone_rc), pub_during,
	        cons_during, (double)(healed - resumed) / 1000.0, now_leader,
	        atomic_load(&r.published), atomic_load(&r.failed), atomic_load(&r.consumed), lost,
	        atomic_load(&r.duplicates), (unsigned long long)left,
	        (double)r.producer_gap_ms / 1000.0, (double)r.consumer_gap_ms / 1000.0,
	        r.why[0] ? "; first error: " : "", r.why);
	ck_assert_msg(lone_rc != AIQ_OK, "the cut-off node served a client");
	ck_assert_msg(pub_during > 0 && cons_during > 0,
	              "the majority did not serve during the partition (%d published, %d "
	              "consumed)",
	              pub_during, cons_during);
	ck_assert_msg(atomic_load(&r.failed) == 0, "%d messages not accepted: %s",
	              atomic_load(&r.failed), r.why);
	ck_assert_int_eq(atomic_load(&r.published), TOTAL);
	ck_assert_int_eq(atomic_load(&r.consumed), TOTAL);
	ck_assert_int_eq(lost, 0);
	ck_assert_int_eq(left, 0);
}
END_TEST

/* ---- delivery limit -------------------------------------------------------- */

/* A message requeued more often than amqp.delivery_limit goes to "<q>.dead"
 * (RabbitMQ dead-letters it; the queue was declared with the work queue).
 * Without the limit it would come back for ever. */
START_TEST(delivery_limit_dead_letters)
{
	char q[128], dq[160];
	qname(q, sizeof q, "poison");
	snprintf(dq, sizeof dq, "%s.dead", q);
	/* Classic queues count no deliveries: the limit needs quorum. */
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "amqp.delivery_limit", "2"), AIQ_OK);
	aiq__broker *bad = NULL;
	ck_assert_int_eq(aiq__broker_open(&bad, urls(), cfg), AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "amqp.delivery_limit needs") != NULL, "%s",
	              aiq_error_last());
	aiq_config_free(cfg);

	aiq__broker *b = open_quorum(2);
	aiq__wire w;
	make_wire(&w, 7);
	ck_assert_msg(aiq__broker_publish(b, q, &w, 0) == AIQ_OK, "%s", aiq_error_last());
	aiq__wire_clear(&w);
	const char *qs[] = {q};
	ck_assert_int_eq(aiq__broker_consume(b, qs, 1, 1), AIQ_OK);
	int deliveries = 0;
	int64_t deadline = mono_ms() + 20000;
	while (mono_ms() < deadline) {
		aiq__delivery *d = NULL;
		if (aiq__broker_fetch(b, &d, 500) != AIQ_OK) {
			if (deliveries > 0)
				break; /* nothing came back: it left the queue */
			continue;
		}
		deliveries++;
		ck_assert_int_eq(aiq__broker_reject(b, d, true), AIQ_OK);
		aiq__delivery_free(d);
		ck_assert_msg(deliveries <= 10, "redelivered %d times despite the limit",
		              deliveries);
	}
	uint64_t depth = 0, dead = 0;
	ck_assert_int_eq(aiq__broker_depth(b, q, &depth), AIQ_OK);
	/* The depth of the dead-letter queue lags a moment behind. */
	for (int i = 0; i < 50 && dead == 0; i++) {
		ck_assert_int_eq(aiq__broker_depth(b, dq, &dead), AIQ_OK);
		if (dead == 0)
			sleep_ms(100);
	}
	fprintf(stderr,
	        "cluster: amqp delivery limit 2: delivered %d times, then %llu in '%s', %llu "
	        "left in the queue\n",
	        deliveries, (unsigned long long)dead, dq, (unsigned long long)depth);
	ck_assert_int_eq(deliveries, 3); /* the first delivery and 2 redeliveries */
	ck_assert_int_eq(depth, 0);
	ck_assert_int_eq(dead, 1);
	aiq__broker_close(b);
	/* "<q>.dead" of a quorum work queue is a quorum queue too. */
	char line[2048];
	snprintf(line, sizeof line,
	         "'%s' ctl '%s' 2 -q list_queues name type | grep -F '%s' | grep -q quorum",
	         getenv("AIQ_TEST_CLUSTER_SH"), getenv("AIQ_TEST_CLUSTER_DIR"), dq);
	ck_assert_msg(system(line) == 0, "%s is not a quorum queue", dq);
}
END_TEST

/* A "<q>.dead" that exists as a classic queue (made by a classic setup or an
 * earlier version) is used as it is by a quorum setup: no 406 for the
 * producer. */
START_TEST(classic_dead_queue_kept)
{
	char q[128], dq[160];
	qname(q, sizeof q, "olddead");
	snprintf(dq, sizeof dq, "%s.dead", q);
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	aiq__broker *classic = NULL;
	ck_assert_int_eq(aiq__broker_open(&classic, urls(), cfg), AIQ_OK);
	aiq_config_free(cfg);
	const char *qs[] = {dq};
	ck_assert_int_eq(aiq__broker_consume(classic, qs, 1, 1), AIQ_OK);
	aiq__broker_close(classic);
	aiq__broker *b = open_quorum(3);
	aiq__wire w;
	make_wire(&w, 1);
	int rc = aiq__broker_publish(b, q, &w, 0);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	aiq__wire_clear(&w);
	uint64_t depth = 0;
	ck_assert_int_eq(aiq__broker_depth(b, q, &depth), AIQ_OK);
	ck_assert_int_eq(depth, 1);
	aiq__broker_close(b);
}
END_TEST

/* ---- Celery on the same queues ----------------------------------------------- */

/* Queues declared here (quorum; one with amqp.delivery_limit) are declared
 * again by a real Celery 5.2 worker and client and by kombu, with the
 * arguments docs/scaling.md gives (celery_quorum.py). */
START_TEST(celery_declares_same_queues)
{
	const char *py = getenv("AIQ_TEST_CELERY_PY");
	ck_assert_msg(py && *py, "AIQ_TEST_CELERY_PY is not set (run through run.sh)");
	char q[128], lq[128];
	qname(q, sizeof q, "celery");
	qname(lq, sizeof lq, "celerylimit");
	const char *qs[] = {q}, *lqs[] = {lq};
	aiq__broker *b = open_quorum(0);
	ck_assert_msg(aiq__broker_consume(b, qs, 1, 1) == AIQ_OK, "%s", aiq_error_last());
	aiq__broker_close(b);
	b = open_quorum(4);
	ck_assert_msg(aiq__broker_consume(b, lqs, 1, 1) == AIQ_OK, "%s", aiq_error_last());
	aiq__broker_close(b);
	/* Celery's URL for node 1: kombu takes "%2f" as vhost "/" too. */
	char first[512];
	snprintf(first, sizeof first, "%s", urls());
	first[strcspn(first, ";")] = '\0';
	char line[2048];
	snprintf(line, sizeof line, "/usr/bin/python3 '%s' 'py%s' '%s' '%s' 4 >&2", py, first, q,
	         lq);
	ck_assert_msg(system(line) == 0, "celery_quorum.py failed (see above)");
	/* And this driver still accepts the queues Celery used. */
	b = open_quorum(0);
	ck_assert_msg(aiq__broker_consume(b, qs, 1, 1) == AIQ_OK, "%s", aiq_error_last());
	aiq__broker_close(b);
}
END_TEST

int main(void)
{
	if (getenv("AIQ_TEST_VERBOSE"))
		aiq_log_set_level(AIQ_LOG_DEBUG);
	Suite *s = suite_create("cluster-amqp");
	TCase *tc = tcase_create("cluster-amqp");
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, delivery_limit_dead_letters);
	tcase_add_test(tc, classic_dead_queue_kept);
	tcase_add_test(tc, celery_declares_same_queues);
	tcase_add_test(tc, leader_killed);
	tcase_add_test(tc, leader_partitioned);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
