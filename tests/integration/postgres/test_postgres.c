/*
 * The PostgreSQL result store against a real server (run.sh starts a private
 * cluster and passes its URL in AIQ_PG_URL): schema creation and upgrade,
 * idempotent upserts, state ordering, LISTEN/NOTIFY waits, expiry, the
 * analyses table, forget, hostile input, a worker that loses nothing while the
 * server restarts, archive.url, and the errors for a wrong password, a
 * missing database and a read-only server, and chord joins (the contract
 * shared with memory://, concurrent parts on several connections, expiry,
 * a connection killed between parts).
 */
#include "testutil.h"

#include "chord_contract.h"
#include "coord_contract.h"
#include "config_int.h"
#include "postgres_schema.h"
#include "result_int.h"
#include "store.h"

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static const char *pg_url(void)
{
	const char *u = getenv("AIQ_PG_URL");
	ck_assert_msg(u != NULL, "AIQ_PG_URL is not set: run this test through run.sh");
	return u;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The cluster's URL with another database name (the URL ends in /postgres). */
static char *db_url(const char *db)
{
	const char *u = pg_url();
	const char *slash = strrchr(u, '/');
	ck_assert_ptr_nonnull(slash);
	size_t n = (size_t)(slash - u) + 1;
	char *out = malloc(n + strlen(db) + 1);
	memcpy(out, u, n);
	strcpy(out + n, db);
	return out;
}

static PGconn *sql_connect(const char *url)
{
	PGconn *c = PQconnectdb(url);
	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
	return c;
}

/* Run SQL (one parameter or none) and return the first column of the first
 * row as an integer (0 when there are no rows). */
static int64_t sql_int(const char *url, const char *sql, const char *param)
{
	PGconn *c = sql_connect(url);
	const char *vals[] = {param};
	PGresult *res = PQexecParams(c, sql, param ? 1 : 0, NULL, vals, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(res);
	ck_assert_msg(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK, "%s: %s", sql,
	              PQerrorMessage(c));
	int64_t v = 0;
	if (st == PGRES_TUPLES_OK && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
		v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	PQfinish(c);
	return v;
}

static char *sql_text(const char *url, const char *sql, const char *param)
{
	PGconn *c = sql_connect(url);
	const char *vals[] = {param};
	PGresult *res = PQexecParams(c, sql, param ? 1 : 0, NULL, vals, NULL, NULL, 0);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
	char *v = NULL;
	if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
		v = strdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	PQfinish(c);
	return v;
}

static void sql_exec(const char *url, const char *sql)
{
	PGconn *c = sql_connect(url);
	PGresult *res = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(res);
	ck_assert_msg(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK, "%s: %s", sql,
	              PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
}

/* A fresh, empty database; returns its URL. */
static char *fresh_db(const char *name)
{
	char sql[200];
	snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", name);
	sql_exec(pg_url(), sql);
	snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
	sql_exec(pg_url(), sql);
	return db_url(name);
}

static aiq_config *new_cfg(void)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	return cfg;
}

static aiq__store *open_store(const char *url, const aiq_config *cfg)
{
	aiq__store *s = NULL;
	int rc = aiq__store_open(&s, url, cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	return s;
}

static aiq_result *make(const char *id, int state, const char *json)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq__result_new(&r, id, state), AIQ_OK);
	if (json)
		ck_assert_int_eq(aiq__result_set_json(r, json), AIQ_OK);
	if (aiq_state_is_ready(state))
		aiq__result_mark_done(r);
	return r;
}

static int put(aiq__store *s, const char *id, int state, const char *json)
{
	aiq_result *r = make(id, state, json);
	int rc = s->ops->put(s, r);
	aiq_result_free(r);
	return rc;
}

static void put_ok(aiq__store *s, const char *id, int state, const char *json)
{
	int rc = put(s, id, state, json);
	ck_assert_msg(rc == AIQ_OK, "put %s %s: %s", id, aiq_state_name(state), aiq_error_last());
}

static aiq_result *get(aiq__store *s, const char *id)
{
	aiq_result *r = NULL;
	int rc = s->ops->get(s, &r, id);
	ck_assert_msg(rc == AIQ_OK, "get %s: %s", id, aiq_error_last());
	return r;
}

/* JSON texts equal as values (jsonb keeps values, not spacing or key order). */
static void assert_json_eq(const char *got, const char *want)
{
	json_t *a = json_loads(got, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	json_t *b = json_loads(want, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	ck_assert_msg(a && b, "not JSON: %.200s / %.200s", got, want);
	ck_assert_msg(json_equal(a, b), "JSON differs: got %.300s want %.300s", got, want);
	json_decref(a);
	json_decref(b);
}

static void unique_id(char *buf, size_t n, const char *prefix)
{
	static atomic_int seq;
	snprintf(buf, n, "%s-%d-%d", prefix, (int)getpid(), atomic_fetch_add(&seq, 1));
}

/* The newest migration's number: every open applies them all. */
#define LATEST ((int64_t)aiq__pg_migrations[AIQ__PG_NMIGRATIONS - 1].version)

/* ---- schema --------------------------------------------------------------------- */

START_TEST(test_schema_created)
{
	char *url = fresh_db("aiq_fresh");
	aiq_config *cfg = new_cfg();
	aiq__store *s = open_store(url, cfg);
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_schema_migrations", NULL), LATEST);
	ck_assert_int_eq(sql_int(url, "SELECT max(version) FROM aiq_schema_migrations", NULL),
	                 LATEST);
	ck_assert_int_eq(sql_int(url,
	                         "SELECT count(*) FROM pg_indexes WHERE indexname IN "
	                         "('aiq_tasks_state_idx', 'aiq_tasks_updated_at_idx', "
	                         "'aiq_tasks_done_at_idx', 'aiq_analyses_track_id_idx', "
	                         "'aiq_analyses_analyzer_idx')",
	                         NULL),
	                 5);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'aiq_tasks_notify'",
	                NULL),
	        1);
	/* Opening again changes nothing. */
	aiq__store *s2 = open_store(url, cfg);
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_schema_migrations", NULL), LATEST);
	put_ok(s2, "schema-1", AIQ_STATE_SUCCESS, "{\"ok\": true}");
	aiq_result *r = get(s, "schema-1");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	aiq__store_close(s2);
	aiq__store_close(s);
	aiq_config_free(cfg);
	free(url);
}
END_TEST

struct opener {
	const char *url;
	int rc;
	char err[512];
};

static void *open_thread(void *arg)
{
	struct opener *o = arg;
	aiq__store *s = NULL;
	o->rc = aiq__store_open(&s, o->url, NULL);
	snprintf(o->err, sizeof o->err, "%s", o->rc ? aiq_error_last() : "");
	aiq__store_close(s);
	return NULL;
}

/* Workers starting together on an empty database do not race. */
START_TEST(test_schema_concurrent)
{
	char *url = fresh_db("aiq_race");
	enum { N = 6 };
	pthread_t th[N];
	struct opener o[N];
	for (int i = 0; i < N; i++) {
		o[i] = (struct opener){url, -1, ""};
		pthread_create(&th[i], NULL, open_thread, &o[i]);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		ck_assert_msg(o[i].rc == AIQ_OK, "open %d: %s", i, o[i].err);
	}
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_schema_migrations", NULL), LATEST);
	free(url);
}
END_TEST

/* Migration 1 as it shipped, written out here on purpose: this test must not
 * follow edits of postgres_schema.h. */
static const char *const schema_v1 =
        "CREATE TABLE aiq_schema_migrations (version integer PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE aiq_tasks (id text PRIMARY KEY, name text, state text NOT NULL,"
        " result jsonb, error jsonb, retries integer NOT NULL DEFAULT 0, worker text,"
        " queue text, parent_id text, created_at timestamptz NOT NULL DEFAULT now(),"
        " started_at timestamptz, done_at timestamptz,"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE aiq_analyses (id bigserial PRIMARY KEY, track_id text NOT NULL,"
        " task_id text NOT NULL UNIQUE, analyzer text, result jsonb,"
        " created_at timestamptz NOT NULL DEFAULT now());"
        "INSERT INTO aiq_schema_migrations (version) VALUES (1);"
        "INSERT INTO aiq_tasks (id, state, result, done_at) VALUES"
        " ('old-task', 'SUCCESS', '{\"kept\": [1, 2]}', now());"
        "INSERT INTO aiq_tasks (id, state) VALUES ('old-running', 'STARTED');";

START_TEST(test_schema_upgrade)
{
	char *url = fresh_db("aiq_v1");
	sql_exec(url, schema_v1);
	aiq_config *cfg = new_cfg();
	ck_assert_int_eq(aiq_config_set_int(cfg, "postgres.expires_s", 0), AIQ_OK);
	aiq__store *s = open_store(url, cfg);
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_schema_migrations", NULL), LATEST);
	ck_assert_int_eq(sql_int(url,
	                         "SELECT count(*) FROM information_schema.columns WHERE "
	                         "table_name = 'aiq_tasks' AND column_name = 'result_raw'",
	                         NULL),
	                 1);
	/* Old rows survive and read back. */
	aiq_result *r = get(s, "old-task");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	assert_json_eq(aiq_result_json(r), "{\"kept\": [1, 2]}");
	ck_assert_ptr_nonnull(aiq_result_date_done(r));
	aiq_result_free(r);
	/* The new trigger works for an old row. */
	put_ok(s, "old-running", AIQ_STATE_SUCCESS, "7");
	r = NULL;
	ck_assert_int_eq(s->ops->wait(s, &r, "old-running", 2000), AIQ_OK);
	ck_assert_str_eq(aiq_result_json(r), "7");
	aiq_result_free(r);
	aiq__store_close(s);
	aiq_config_free(cfg);
	free(url);
}
END_TEST

/* ---- writes ---------------------------------------------------------------------- */

START_TEST(test_upsert_idempotent)
{
	aiq_config *cfg = new_cfg();
	aiq__store *s = open_store(pg_url(), cfg);
	char id[64];
	unique_id(id, sizeof id, "redeliver");
	/* First delivery starts, the worker dies, the redelivery runs again. */
	put_ok(s, id, AIQ_STATE_STARTED, "{\"pid\": 1, \"hostname\": \"w1@host\"}");
	put_ok(s, id, AIQ_STATE_PROGRESS, "{\"done\": 10}");
	put_ok(s, id, AIQ_STATE_STARTED, "{\"pid\": 2, \"hostname\": \"w2@host\"}");
	put_ok(s, id, AIQ_STATE_SUCCESS, "{\"answer\": 42}");
	/* The same outcome stored again (ack lost, redelivered, run again). */
	ck_assert_int_eq(put(s, id, AIQ_STATE_SUCCESS, "{\"answer\": 42}"), AIQ_ESTATE);
	ck_assert_int_eq(sql_int(pg_url(), "SELECT count(*) FROM aiq_tasks WHERE id = $1", id), 1);
	char *worker = sql_text(pg_url(), "SELECT worker FROM aiq_tasks WHERE id = $1", id);
	ck_assert_str_eq(worker, "w2@host");
	free(worker);
	ck_assert_int_eq(sql_int(pg_url(),
	                         "SELECT count(*) FROM aiq_tasks WHERE id = $1 AND started_at "
	                         "IS NOT NULL AND done_at IS NOT NULL AND state = 'SUCCESS'",
	                         id),
	                 1);
	aiq_result *r = get(s, id);
	assert_json_eq(aiq_result_json(r), "{\"answer\": 42}");
	aiq_result_free(r);

	/* RETRY states are counted. */
	unique_id(id, sizeof id, "retries");
	aiq_result *rr = make(id, AIQ_STATE_RETRY, NULL);
	ck_assert_int_eq(aiq__result_set_error(rr, "IOError", "flaky", "builtins", NULL), AIQ_OK);
	ck_assert_int_eq(s->ops->put(s, rr), AIQ_OK);
	ck_assert_int_eq(s->ops->put(s, rr), AIQ_OK);
	aiq_result_free(rr);
	ck_assert_int_eq(sql_int(pg_url(), "SELECT retries FROM aiq_tasks WHERE id = $1", id), 2);
	r = get(s, id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_RETRY);
	ck_assert_str_eq(aiq_result_error_type(r), "IOError");
	ck_assert_str_eq(aiq_result_error_message(r), "flaky");
	aiq_result_free(r);
	aiq__store_close(s);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(test_state_order)
{
	aiq__store *s = open_store(pg_url(), NULL);
	char id[64];
	unique_id(id, sizeof id, "order");
	put_ok(s, id, AIQ_STATE_SUCCESS, "\"done\"");
	ck_assert_int_eq(put(s, id, AIQ_STATE_STARTED, "{\"pid\": 1}"), AIQ_ESTATE);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "SUCCESS"));
	ck_assert_int_eq(put(s, id, AIQ_STATE_FAILURE, NULL), AIQ_ESTATE);
	ck_assert_int_eq(put(s, id, AIQ_STATE_REVOKED, NULL), AIQ_ESTATE);
	aiq_result *r = get(s, id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "\"done\"");
	aiq_result_free(r);

	/* A failure keeps its error and traceback. */
	unique_id(id, sizeof id, "fail");
	aiq_result *f = make(id, AIQ_STATE_FAILURE, NULL);
	ck_assert_int_eq(aiq__result_set_error(f, "ValueError", "bad 'input'", "builtins",
	                                       "Traceback (most recent call last):\n  ..."),
	                 AIQ_OK);
	ck_assert_int_eq(s->ops->put(s, f), AIQ_OK);
	r = get(s, id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "ValueError");
	ck_assert_str_eq(aiq_result_error_message(r), "bad 'input'");
	ck_assert_str_eq(aiq_result_error_module(r), "builtins");
	ck_assert_str_eq(aiq_result_traceback(r), "Traceback (most recent call last):\n  ...");
	ck_assert_str_eq(aiq_result_date_done(r), f->date_done); /* µs kept */
	aiq_result_free(r);
	aiq_result_free(f);
	ck_assert_int_eq(put(s, id, AIQ_STATE_SUCCESS, "1"), AIQ_ESTATE);

	/* Unknown tasks read as PENDING. */
	r = get(s, "never-stored");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	aiq__store_close(s);
}
END_TEST

/* ---- waiting ---------------------------------------------------------------------- */

struct delayed_put {
	const char *id;
	int delay_ms;
};

static void *delayed_put_thread(void *arg)
{
	struct delayed_put *d = arg;
	aiq__store *s = NULL;
	if (aiq__store_open(&s, pg_url(), NULL) != AIQ_OK)
		return NULL;
	sleep_ms(d->delay_ms);
	put(s, d->id, AIQ_STATE_SUCCESS, "{\"late\": true}");
	aiq__store_close(s);
	return NULL;
}

START_TEST(test_wait_notify)
{
	aiq__store *s = open_store(pg_url(), NULL);
	ck_assert(s->ops->caps & AIQ__STORE_CAP_NOTIFY);
	char id[64];

	/* Stored before the wait: returned at once. */
	unique_id(id, sizeof id, "before");
	put_ok(s, id, AIQ_STATE_SUCCESS, "1");
	int64_t t0 = mono_ms();
	aiq_result *r = NULL;
	ck_assert_int_eq(s->ops->wait(s, &r, id, 10000), AIQ_OK);
	ck_assert_int_lt(mono_ms() - t0, 1000);
	ck_assert_str_eq(aiq_result_json(r), "1");
	aiq_result_free(r);

	/* Stored by another connection while waiting: woken by the notification
	 * (long before the 30 s safety re-read). Several rounds, so the race
	 * between the first read and the store is exercised. */
	for (int round = 0; round < 5; round++) {
		unique_id(id, sizeof id, "during");
		struct delayed_put d = {id, round * 40};
		pthread_t th;
		pthread_create(&th, NULL, delayed_put_thread, &d);
		t0 = mono_ms();
		r = NULL;
		int rc = s->ops->wait(s, &r, id, 20000);
		ck_assert_msg(rc == AIQ_OK, "wait: %s", aiq_error_last());
		ck_assert_int_lt(mono_ms() - t0, 5000);
		assert_json_eq(aiq_result_json(r), "{\"late\": true}");
		aiq_result_free(r);
		pthread_join(th, NULL);
	}

	/* Timeout: the latest state comes back with AIQ_ETIMEDOUT. */
	unique_id(id, sizeof id, "slow");
	put_ok(s, id, AIQ_STATE_STARTED, "{\"pid\": 3}");
	r = NULL;
	t0 = mono_ms();
	ck_assert_int_eq(s->ops->wait(s, &r, id, 300), AIQ_ETIMEDOUT);
	ck_assert_int_ge(mono_ms() - t0, 290);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_STARTED);
	aiq_result_free(r);
	aiq__store_close(s);
}
END_TEST

struct waiter_arg {
	aiq__store *s;
	const char *id;
	int rc;
};

static void *wait_thread(void *arg)
{
	struct waiter_arg *w = arg;
	aiq_result *r = NULL;
	w->rc = w->s->ops->wait(w->s, &r, w->id, 20000);
	aiq_result_free(r);
	return NULL;
}

/* Many threads waiting on one handle, each for its own task. */
START_TEST(test_wait_many)
{
	aiq__store *s = open_store(pg_url(), NULL);
	aiq__store *writer = open_store(pg_url(), NULL);
	enum { N = 16 };
	char ids[N][64];
	struct waiter_arg w[N];
	pthread_t th[N];
	for (int i = 0; i < N; i++) {
		unique_id(ids[i], sizeof ids[i], "many");
		w[i] = (struct waiter_arg){s, ids[i], -1};
		pthread_create(&th[i], NULL, wait_thread, &w[i]);
	}
	sleep_ms(100);
	int64_t t0 = mono_ms();
	for (int i = 0; i < N; i++)
		put_ok(writer, ids[i], AIQ_STATE_SUCCESS, "null");
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(w[i].rc, AIQ_OK);
	}
	ck_assert_int_lt(mono_ms() - t0, 5000);
	aiq__store_close(writer);
	aiq__store_close(s);
}
END_TEST

struct seen {
	pthread_mutex_t lock;
	char id[64];
	int state;
};

static void on_done(const aiq_result *r, void *ud)
{
	struct seen *seen = ud;
	pthread_mutex_lock(&seen->lock);
	if (strcmp(r->task_id, seen->id) == 0)
		seen->state = r->state;
	pthread_mutex_unlock(&seen->lock);
}

START_TEST(test_subscribe)
{
	aiq__store *s = open_store(pg_url(), NULL);
	aiq__store *writer = open_store(pg_url(), NULL);
	struct seen seen = {PTHREAD_MUTEX_INITIALIZER, "", -1};
	unique_id(seen.id, sizeof seen.id, "sub");
	ck_assert_int_eq(s->ops->subscribe(s, on_done, &seen), AIQ_OK);
	sleep_ms(300); /* the listener connects */
	put_ok(writer, seen.id, AIQ_STATE_FAILURE, NULL);
	int state = -1;
	for (int i = 0; i < 100 && state < 0; i++) {
		sleep_ms(50);
		pthread_mutex_lock(&seen.lock);
		state = seen.state;
		pthread_mutex_unlock(&seen.lock);
	}
	ck_assert_int_eq(state, AIQ_STATE_FAILURE);
	ck_assert_int_eq(s->ops->subscribe(s, NULL, NULL), AIQ_OK);
	aiq__store_close(writer);
	aiq__store_close(s);
}
END_TEST

/* ---- expiry ------------------------------------------------------------------------ */

START_TEST(test_expiry)
{
	char *url = fresh_db("aiq_expiry");
	aiq_config *cfg = new_cfg();
	ck_assert_int_eq(aiq_config_set_int(cfg, "result.expires_s", 1), AIQ_OK);
	aiq__store *s = open_store(url, cfg);
	put_ok(s, "exp-a", AIQ_STATE_SUCCESS,
	       "{\"track_id\": \"t1\", \"analyzer\": \"lyrics\", \"analysis\": {\"x\": 1}}");
	put_ok(s, "exp-b", AIQ_STATE_STARTED, "{\"pid\": 1}");
	aiq_result *r = get(s, "exp-a");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	sleep_ms(1300);
	/* Expired rows read as absent even before they are deleted... */
	r = get(s, "exp-a");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	/* An expired final state may be written again, as to a fresh key; that
	 * write also deletes the other expired rows. Analyses stay. */
	put_ok(s, "exp-a", AIQ_STATE_SUCCESS, "{\"again\": 1}");
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_tasks", NULL), 1);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_analyses WHERE task_id = 'exp-a'", NULL), 1);
	ck_assert_int_eq(put(s, "exp-a", AIQ_STATE_SUCCESS, "3"), AIQ_ESTATE);
	r = get(s, "exp-a");
	assert_json_eq(aiq_result_json(r), "{\"again\": 1}");
	aiq_result_free(r);
	aiq__store_close(s);

	/* postgres.expires_s = 0 keeps rows whatever result.expires_s says. */
	ck_assert_int_eq(aiq_config_set_int(cfg, "postgres.expires_s", 0), AIQ_OK);
	s = open_store(url, cfg);
	put_ok(s, "keep", AIQ_STATE_SUCCESS, "1");
	sleep_ms(1200);
	put_ok(s, "keep-2", AIQ_STATE_SUCCESS, "1");
	r = get(s, "keep");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	aiq__store_close(s);
	aiq_config_free(cfg);
	free(url);
}
END_TEST

/* ---- hostile input ------------------------------------------------------------------- */

static char *huge_json(size_t bytes)
{
	json_t *arr = json_array();
	size_t total = 0;
	for (int i = 0; total < bytes; i++) {
		char buf[160];
		snprintf(buf, sizeof buf,
		         "строка %d — \"quoted\" \\back\\slash\\ 🎵 \x01\x02\x1f\x7f ' ; DROP TABLE "
		         "aiq_tasks; --",
		         i);
		json_array_append_new(arr,
		                      json_pack("{s:i, s:s, s:f}", "i", i, "s", buf, "f", i / 7.0));
		total += strlen(buf) + 40;
	}
	char *out = json_dumps(arr, JSON_COMPACT);
	json_decref(arr);
	return out;
}

START_TEST(test_hostile_input)
{
	aiq__store *s = open_store(pg_url(), NULL);
	static const char *const texts[] = {
	        "{\"q\": \"it's \\\"quoted\\\" ''; DROP TABLE aiq_tasks; --\"}",
	        "{\"b\": \"back\\\\slash \\\\\\\\ \\\\u0000 not a NUL\"}",
	        "{\"nul\": \"before\\u0000after\", \"more\": [\"\\u0000\"]}",
	        "{\"ctl\": \"\\u0001\\u0002\\u001f\\u007f\\t\\n\\r\\b\\f\"}",
	        "{\"ru\": \"Привет, мир! Ёжик в тумане\", \"emoji\": \"🎸🎤 "
	        "👩‍👩‍👧\"}",
	        "[1, -0.5, 1.5e-7, 12345678901234567, true, false, null, {}, []]",
	        "\"\\ud83c\\udfb5 escaped surrogate pair\"",
	        "\"\xc3\xbf\xc3\xbe latin-1 lookalikes\"",
	};
	char id[128];
	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
		snprintf(id, sizeof id, "hostile-%zu-'\"\\ ключ 🎵-%d", i, (int)getpid());
		put_ok(s, id, AIQ_STATE_SUCCESS, texts[i]);
		aiq_result *r = get(s, id);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		ck_assert_str_eq(aiq_result_task_id(r), id);
		assert_json_eq(aiq_result_json(r), texts[i]);
		aiq_result_free(r);
	}
	/* The NUL-bearing result keeps its exact text. */
	snprintf(id, sizeof id, "hostile-2-'\"\\ ключ 🎵-%d", (int)getpid());
	aiq_result *r = get(s, id);
	ck_assert_str_eq(aiq_result_json(r), texts[2]);
	aiq_result_free(r);

	/* Hostile error text, and bytes that are not UTF-8 (replaced, not lost). */
	snprintf(id, sizeof id, "hostile-err-%d", (int)getpid());
	aiq_result *f = make(id, AIQ_STATE_FAILURE, NULL);
	ck_assert_int_eq(aiq__result_set_error(f, "Ошибка'\"", "bad \xff\xfe bytes; 'x' \\ 🎵",
	                                       "mod", "tb \"line\"\n"),
	                 AIQ_OK);
	ck_assert_int_eq(s->ops->put(s, f), AIQ_OK);
	aiq_result_free(f);
	r = get(s, id);
	ck_assert_str_eq(aiq_result_error_type(r), "Ошибка'\"");
	ck_assert_str_eq(aiq_result_error_message(r),
	                 "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes; 'x' \\ 🎵");
	ck_assert_str_eq(aiq_result_traceback(r), "tb \"line\"\n");
	aiq_result_free(r);

	/* About 5 MB of JSON. */
	char *big = huge_json(5u * 1024 * 1024);
	ck_assert_uint_ge(strlen(big), 5u * 1024 * 1024);
	snprintf(id, sizeof id, "hostile-huge-%d", (int)getpid());
	put_ok(s, id, AIQ_STATE_SUCCESS, big);
	r = get(s, id);
	assert_json_eq(aiq_result_json(r), big);
	aiq_result_free(r);
	free(big);

	/* Ids the store refuses. */
	ck_assert_int_eq(put(s, "", AIQ_STATE_SUCCESS, "1"), AIQ_EINVAL);
	ck_assert_int_eq(put(s, "bad\xff id", AIQ_STATE_SUCCESS, "1"), AIQ_EINVAL);
	aiq__store_close(s);
}
END_TEST

/* ---- worker --------------------------------------------------------------------------- */

struct fixture {
	aiq_config *cfg;
	aiq_client *client;
	aiq_worker *worker;
	pthread_t thread;
	int run_rc;
};

static void *run_thread(void *arg)
{
	struct fixture *fx = arg;
	fx->run_rc = aiq_worker_run(fx->worker);
	return NULL;
}

static void echo_task(aiq_task *t, void *ud)
{
	(void)ud;
	char buf[160];
	snprintf(buf, sizeof buf, "{\"echo\": \"%s\"}", aiq_task_id(t));
	aiq_task_succeed(t, buf);
}

static void fx_start(struct fixture *fx, const char *broker, const char *result,
                     const char *archive, int concurrency)
{
	memset(fx, 0, sizeof *fx);
	fx->cfg = new_cfg();
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "broker.url", broker), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "result.url", result), AIQ_OK);
	if (archive)
		ck_assert_int_eq(aiq_config_set_str(fx->cfg, "archive.url", archive), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "worker.concurrency", concurrency), AIQ_OK);
	int rc = aiq_client_new(&fx->client, fx->cfg);
	ck_assert_msg(rc == AIQ_OK, "client: %s", aiq_error_last());
	ck_assert_int_eq(aiq_worker_new(&fx->worker, fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tasks.echo", echo_task, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(pthread_create(&fx->thread, NULL, run_thread, fx), 0);
}

static void fx_stop(struct fixture *fx)
{
	aiq_worker_stop(fx->worker);
	pthread_join(fx->thread, NULL);
	ck_assert_msg(fx->run_rc == AIQ_OK, "worker: %s", aiq_worker_error(fx->worker));
	aiq_worker_free(fx->worker);
	aiq_client_free(fx->client);
	aiq_config_free(fx->cfg);
}

static char *enqueue(struct fixture *fx, const char *task, const char *args)
{
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx->client, task, args, NULL, NULL);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	return id;
}

static void *restart_thread(void *arg)
{
	(void)arg;
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "'%s' restart '%s' >/dev/null 2>&1", getenv("AIQ_PG_SH"),
	         getenv("AIQ_PG_DIR"));
	int rc = system(cmd);
	return (void *)(intptr_t)rc;
}

/* 2,000 tasks while the server restarts: every one ends SUCCESS. */
START_TEST(test_worker_survives_restart)
{
	char *url = fresh_db("aiq_restart");
	struct fixture fx;
	fx_start(&fx, "memory://pg-restart", url, NULL, 8);
	enum { N = 2000 };
	for (int i = 0; i < N; i++)
		aiq_free(enqueue(&fx, "tasks.echo", "[]"));
	const char *count_sql = "SELECT count(*) FROM aiq_tasks WHERE state = 'SUCCESS'";
	/* Restart once some results are in. */
	int64_t deadline = mono_ms() + 60000;
	while (sql_int(url, count_sql, NULL) < 200 && mono_ms() < deadline)
		sleep_ms(20);
	pthread_t th;
	pthread_create(&th, NULL, restart_thread, NULL);
	void *restart_rc = NULL;
	pthread_join(th, &restart_rc);
	ck_assert_msg(restart_rc == NULL, "postgres.sh restart failed");
	int64_t done = 0;
	deadline = mono_ms() + 120000;
	while ((done = sql_int(url, count_sql, NULL)) < N && mono_ms() < deadline)
		sleep_ms(100);
	fx_stop(&fx);
	ck_assert_int_eq(done, N);
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_tasks", NULL), N);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_tasks WHERE result->>'echo' = id", NULL), N);
	free(url);
}
END_TEST

static const char *const lyrics = "I walk the line tonight\\nI hold the light so bright\\n"
                                  "The river runs so deep\\nThe secrets that we keep";

/* The built-in analysis task fills aiq_analyses, one row per task. */
START_TEST(test_analyses)
{
	char *url = fresh_db("aiq_analyses_db");
	struct fixture fx;
	fx_start(&fx, "memory://pg-analyses", url, NULL, 4);
	char *ids[4];
	char args[512];
	for (int i = 0; i < 3; i++) {
		snprintf(args, sizeof args, "[\"track-%d\", \"%s\"]", i, lyrics);
		ids[i] = enqueue(&fx, "tasks.analyze_track", args);
	}
	snprintf(args, sizeof args, "[77, \"%s\"]", lyrics); /* an integer track id */
	ids[3] = enqueue(&fx, "tasks.analyze_track", args);
	char *other = enqueue(&fx, "tasks.echo", "[]");
	for (int i = 0; i < 4; i++) {
		aiq_result *r = NULL;
		int rc = aiq_client_wait(&r, fx.client, ids[i], 20000);
		ck_assert_msg(rc == AIQ_OK, "wait: %s", aiq_error_last());
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		aiq_result_free(r);
	}
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, fx.client, other, 20000), AIQ_OK);
	aiq_result_free(r);
	fx_stop(&fx);

	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_analyses", NULL), 4);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_analyses WHERE task_id = $1", ids[0]), 1);
	ck_assert_int_eq(sql_int(url,
	                         "SELECT count(*) FROM aiq_analyses WHERE analyzer = 'lyrics' AND "
	                         "result->'rhyme'->>'rhyme_density' IS NOT NULL",
	                         NULL),
	                 4);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_analyses WHERE track_id = '77'", NULL), 1);
	ck_assert_int_eq(sql_int(url,
	                         "SELECT count(*) FROM aiq_tasks WHERE name = "
	                         "'tasks.analyze_track'",
	                         NULL),
	                 4);
	/* The query docs/postgres.md shows runs. */
	sql_exec(url, "SELECT analyzer, avg((result->'rhyme'->>'rhyme_density')::float8) "
	              "FROM aiq_analyses GROUP BY analyzer");

	/* A redelivered analysis (stored again) adds no second row. */
	aiq__store *s = open_store(url, NULL);
	aiq_result *again = NULL;
	ck_assert_int_eq(s->ops->get(s, &again, ids[0]), AIQ_OK);
	ck_assert_int_eq(s->ops->put(s, again), AIQ_ESTATE);
	aiq_result_free(again);
	put_ok(s, "not-analysis", AIQ_STATE_SUCCESS,
	       "{\"track_id\": \"x\", \"analyzer\": \"y\", \"analysis\": 1, \"extra\": 2}");
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_analyses", NULL), 4);
	aiq__store_close(s);
	for (int i = 0; i < 4; i++)
		aiq_free(ids[i]);
	aiq_free(other);
	free(url);
}
END_TEST

/* aiq_client_forget() deletes the task's row and nothing else: its analysis
 * row stays (docs/postgres.md). */
START_TEST(test_forget)
{
	char *url = fresh_db("aiq_forget_db");
	aiq__store *s = open_store(url, NULL);
	put_ok(s, "fg-analysis", AIQ_STATE_SUCCESS,
	       "{\"track_id\": \"t-1\", \"analyzer\": \"lyrics\", \"analysis\": {\"n\": 1}}");
	put_ok(s, "fg-other", AIQ_STATE_FAILURE, NULL);
	put_ok(s, "fg-started", AIQ_STATE_STARTED, NULL);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_analyses WHERE task_id = $1", "fg-analysis"),
	        1);

	aiq_config *cfg = new_cfg();
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://pg-forget"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", url), AIQ_OK);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client: %s", aiq_error_last());
	rc = aiq_client_forget(c, "fg-analysis");
	ck_assert_msg(rc == AIQ_OK, "forget: %s", aiq_error_last());
	ck_assert_int_eq(aiq_client_forget(c, "fg-started"), AIQ_OK); /* not final: gone too */
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_tasks WHERE id = $1", "fg-analysis"), 0);
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_tasks WHERE id = $1", "fg-started"),
	                 0);
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_tasks WHERE id = $1", "fg-other"),
	                 1);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_analyses WHERE task_id = $1", "fg-analysis"),
	        1);
	ck_assert_int_eq(aiq_client_forget(c, "fg-analysis"), AIQ_OK); /* already gone */
	ck_assert_int_eq(aiq_client_forget(c, "fg-never"), AIQ_OK);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_get_result(&r, c, "fg-analysis"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	/* Stored again after forget: a new row, and still one analysis row. */
	put_ok(s, "fg-analysis", AIQ_STATE_SUCCESS,
	       "{\"track_id\": \"t-1\", \"analyzer\": \"lyrics\", \"analysis\": {\"n\": 2}}");
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_tasks WHERE id = $1", "fg-analysis"), 1);
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_analyses WHERE task_id = $1", "fg-analysis"),
	        1);
	aiq_client_free(c);
	aiq_config_free(cfg);
	aiq__store_close(s);
	free(url);
}
END_TEST

/* archive.url: results in the memory store, and archived to PostgreSQL. */
START_TEST(test_archive)
{
	char *url = fresh_db("aiq_archive");
	struct fixture fx;
	fx_start(&fx, "memory://pg-archive", "memory://pg-archive", url, 4);
	enum { N = 20 };
	char *ids[N];
	char args[512];
	for (int i = 0; i < N; i++) {
		snprintf(args, sizeof args, "[\"arch-%d\", \"%s\"]", i, lyrics);
		ids[i] = enqueue(&fx, "tasks.analyze_track", args);
	}
	char *bad = enqueue(&fx, "tasks.analyze_track", "[1]"); /* FAILURE, archived too */
	for (int i = 0; i < N; i++) {
		aiq_result *r = NULL;
		ck_assert_int_eq(aiq_client_wait(&r, fx.client, ids[i], 20000), AIQ_OK);
		aiq_result_free(r);
	}
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, fx.client, bad, 20000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	aiq_result_free(r);
	fx_stop(&fx); /* archive writes finish before the acks */

	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_tasks WHERE state = 'SUCCESS'", NULL), N);
	ck_assert_int_eq(sql_int(url,
	                         "SELECT count(*) FROM aiq_tasks WHERE state = 'FAILURE' AND "
	                         "error->>'exc_type' = 'TypeError' AND id = $1",
	                         bad),
	                 1);
	ck_assert_int_eq(sql_int(url, "SELECT count(*) FROM aiq_analyses", NULL), N);
	/* Only final states go to the archive. */
	ck_assert_int_eq(
	        sql_int(url, "SELECT count(*) FROM aiq_tasks WHERE state = 'STARTED'", NULL), 0);
	for (int i = 0; i < N; i++)
		aiq_free(ids[i]);
	aiq_free(bad);
	free(url);
}
END_TEST

/* ---- errors ------------------------------------------------------------------------- */

static char *url_for(const char *userinfo, const char *db, const char *query)
{
	char *out = malloc(1024);
	snprintf(out, 1024, "postgresql://%s@127.0.0.1:%s/%s%s", userinfo, getenv("AIQ_PG_PORT"),
	         db, query ? query : "");
	return out;
}

START_TEST(test_wrong_password)
{
	char *bad = url_for("aiq_pw:wrong-secret-pw", "postgres", NULL);
	aiq__store *s = NULL;
	int rc = aiq__store_open(&s, bad, NULL);
	ck_assert_int_eq(rc, AIQ_ESTORE);
	ck_assert_ptr_null(s);
	const char *msg = aiq_error_last();
	ck_assert_msg(strstr(msg, "password authentication failed") != NULL, "%s", msg);
	ck_assert_msg(strstr(msg, "wrong-secret-pw") == NULL, "password in message: %s", msg);
	ck_assert_msg(strstr(msg, "aiq_pw:***@") != NULL, "%s", msg);
	free(bad);

	/* The right password works (the role may not create the schema). */
	char *good = url_for("aiq_pw:right-pw", "postgres", NULL);
	rc = aiq__store_open(&s, good, NULL);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	put_ok(s, "pw-ok", AIQ_STATE_SUCCESS, "1");
	aiq__store_close(s);
	free(good);
}
END_TEST

START_TEST(test_missing_database)
{
	char *url = url_for("aiq", "no_such_db", NULL);
	aiq__store *s = NULL;
	ck_assert_int_eq(aiq__store_open(&s, url, NULL), AIQ_ESTORE);
	const char *msg = aiq_error_last();
	ck_assert_msg(strstr(msg, "database \"no_such_db\" does not exist") != NULL, "%s", msg);
	free(url);

	/* Nothing listening: a clear error, quickly. */
	char *gone = strdup("postgresql://aiq@127.0.0.1:1/postgres?connect_timeout=2");
	ck_assert_int_eq(aiq__store_open(&s, gone, NULL), AIQ_ESTORE);
	ck_assert_msg(strstr(aiq_error_last(), "127.0.0.1") != NULL, "%s", aiq_error_last());
	free(gone);

	/* A URL libpq cannot parse, with the password kept out of the message. */
	ck_assert_int_eq(aiq__store_open(&s, "postgresql://u:p%zzsecret@127.0.0.1/x", NULL),
	                 AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "secret") == NULL, "%s", aiq_error_last());
}
END_TEST

START_TEST(test_read_only)
{
	aiq__store *s = open_store(pg_url(), NULL); /* the schema exists */
	aiq__store_close(s);
	char *url = url_for("aiq", "postgres", "?options=-c%20default_transaction_read_only%3Don");
	s = open_store(url, NULL);
	aiq_result *r = get(s, "never-stored");
	aiq_result_free(r);
	int rc = put(s, "read-only-task", AIQ_STATE_SUCCESS, "1");
	ck_assert_int_eq(rc, AIQ_ESTORE);
	ck_assert_msg(strstr(aiq_error_last(), "read-only transaction"), "%s", aiq_error_last());
	ck_assert_msg(strstr(aiq_error_last(), "the server is read-only"), "%s", aiq_error_last());
	ck_assert_int_eq(s->ops->ping(s), AIQ_OK);
	aiq__store_close(s);
	free(url);
}
END_TEST

/* A write during an outage fails with AIQ_ESTORE; the handle recovers. */
START_TEST(test_outage)
{
	aiq__store *s = open_store(pg_url(), NULL);
	put_ok(s, "outage-1", AIQ_STATE_SUCCESS, "1");
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "'%s' stop '%s' >/dev/null 2>&1", getenv("AIQ_PG_SH"),
	         getenv("AIQ_PG_DIR"));
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_eq(put(s, "outage-2", AIQ_STATE_SUCCESS, "2"), AIQ_ESTORE);
	ck_assert_int_eq(s->ops->ping(s), AIQ_ESTORE);
	snprintf(cmd, sizeof cmd, "'%s' restart '%s' >/dev/null 2>&1", getenv("AIQ_PG_SH"),
	         getenv("AIQ_PG_DIR"));
	ck_assert_int_eq(system(cmd), 0);
	int rc = AIQ_ESTORE;
	for (int i = 0; i < 50 && rc != AIQ_OK; i++) {
		rc = put(s, "outage-2", AIQ_STATE_SUCCESS, "2");
		if (rc != AIQ_OK)
			sleep_ms(100);
	}
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	aiq_result *r = get(s, "outage-2");
	ck_assert_str_eq(aiq_result_json(r), "2");
	aiq_result_free(r);
	aiq__store_close(s);
}
END_TEST

/* ---- chords -------------------------------------------------------------------- */

/* Regression: the PostgreSQL store could not join chords (AIQ_EUNSUPPORTED). */
START_TEST(test_chord_contract)
{
	aiq__store *s = open_store(pg_url(), NULL);
	char gid[64];
	unique_id(gid, sizeof gid, "pg-chord");
	chord_contract(s, gid);
	/* chord_done took the parts with the chord's row. */
	ck_assert_int_eq(
	        sql_int(pg_url(), "SELECT count(*) FROM aiq_chords WHERE group_id = $1", gid), 0);
	ck_assert_int_eq(
	        sql_int(pg_url(), "SELECT count(*) FROM aiq_chord_parts WHERE group_id = $1", gid),
	        0);
	aiq__store_close(s);
}
END_TEST

/* Parts returned at once on several connections: the row lock serializes
 * the count, so exactly one caller sees the chord complete. */
START_TEST(test_chord_concurrent)
{
	enum { CONNS = 6, EACH = 100, ROUNDS = 3 };
	aiq__store *h[CONNS];
	for (int i = 0; i < CONNS; i++)
		h[i] = open_store(pg_url(), NULL);
	double best = 0;
	for (int round = 0; round < ROUNDS; round++) {
		char gid[64];
		unique_id(gid, sizeof gid, "pg-conc");
		double rate = chord_concurrent(h, CONNS, EACH, gid);
		if (rate > best)
			best = rate;
		ck_assert_int_eq(sql_int(pg_url(),
		                         "SELECT count(*) FROM aiq_chord_parts WHERE group_id = $1",
		                         gid),
		                 0);
	}
	fprintf(stderr, "chord join: %d connections x %d parts: %.0f part returns/s\n", CONNS, EACH,
	        best);
	for (int i = 0; i < CONNS; i++)
		aiq__store_close(h[i]);
}
END_TEST

/* A chord expires with the results (postgres.expires_s, from its last part)
 * and the sweep deletes it. */
START_TEST(test_chord_expiry)
{
	aiq_config *cfg = new_cfg();
	ck_assert_int_eq(aiq_config_set_int(cfg, "postgres.expires_s", 1), AIQ_OK);
	aiq__store *s = open_store(pg_url(), cfg);
	char gid[64];
	unique_id(gid, sizeof gid, "pg-chord-exp");
	ck_assert_int_eq(aiq__store_chord_set_size(s, gid, 2), AIQ_OK);
	chord_return_pending(s, gid, 0, "x0", 0);
	sleep_ms(2100);
	/* Expired: the last part completes nothing. */
	chord_return_pending(s, gid, 1, "x1", 1);
	put_ok(s, "chord-exp-sweep", AIQ_STATE_SUCCESS, "1"); /* runs the sweep */
	ck_assert_int_eq(
	        sql_int(pg_url(), "SELECT count(*) FROM aiq_chords WHERE group_id = $1", gid), 0);
	ck_assert_int_eq(
	        sql_int(pg_url(), "SELECT count(*) FROM aiq_chord_parts WHERE group_id = $1", gid),
	        0);
	aiq__store_close(s);
	aiq_config_free(cfg);
}
END_TEST

/* The server drops the store's connection between two parts: the next part
 * reconnects, is counted once, and completes the chord. */
START_TEST(test_chord_connection_killed)
{
	aiq__store *s = open_store(pg_url(), NULL);
	char gid[64];
	unique_id(gid, sizeof gid, "pg-chord-kill");
	ck_assert_int_eq(aiq__store_chord_set_size(s, gid, 2), AIQ_OK);
	chord_return_pending(s, gid, 0, "k0", 0);
	sql_int(pg_url(),
	        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
	        "WHERE application_name = $1 AND pid <> pg_backend_pid()",
	        "libaiqueue");
	char *ready = NULL;
	int rc = chord_return(s, gid, 0, "k0", 0, &ready);
	ck_assert_msg(rc == AIQ_OK, "%s", aiq_error_last());
	ck_assert_ptr_null(ready);
	ck_assert_int_eq(chord_return(s, gid, 1, "k1", 1, &ready), AIQ_OK);
	ck_assert_ptr_nonnull(ready);
	char *ids = chord_ready_ids(ready);
	ck_assert_str_eq(ids, "k0,k1");
	free(ids);
	free(ready);
	ck_assert_int_eq(aiq__store_chord_done(s, gid), AIQ_OK);
	aiq__store_close(s);
}
END_TEST

/* ---- coordination state: rate limits, unique keys, concurrency (migration 6) ---- */

static aiq__coord *open_coord_pg(void)
{
	return coord_open_for("amqp://127.0.0.1:1//", pg_url(), NULL, "postgres");
}

START_TEST(test_coord_contract)
{
	aiq__coord *k = open_coord_pg();
	coord_contract(k, "pg-contract:");
	ck_assert_int_eq(sql_int(pg_url(), "SELECT count(*) FROM aiq_leases WHERE key = $1",
	                         "pg-contract:lease"),
	                 2);
	ck_assert_int_eq(sql_int(pg_url(), "SELECT count(*) FROM aiq_claims WHERE key = $1",
	                         "pg-contract:claim"),
	                 1);
	aiq__coord_free(k);
}
END_TEST

START_TEST(test_coord_race)
{
	coord_race(open_coord_pg, "pg-race:");
}
END_TEST

/* Which store a handle uses, and the URLs it refuses. */
START_TEST(test_coord_selection)
{
	aiq_config *cfg = new_cfg();
	aiq__coord *k = NULL;
	/* Redis first, wherever it is named; no connection is made yet. */
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "redis://127.0.0.1:1/0"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", pg_url()), AIQ_OK);
	ck_assert_int_eq(aiq__coord_open(&k, AIQ_CFG_UNIQUE_URL, cfg, AIQ_ESTORE, AIQ__COORD_ANY),
	                 AIQ_OK);
	ck_assert_str_eq(aiq__coord_kind(k), "redis");
	aiq__coord_free(k);
	/* The scheduler's raw commands need Redis: PostgreSQL is not taken. */
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "amqp://127.0.0.1:1//"), AIQ_OK);
	ck_assert_int_eq(
	        aiq__coord_open(&k, AIQ_CFG_BEAT_URL, cfg, AIQ_ESTORE, AIQ__COORD_REDIS_ONLY),
	        AIQ_OK);
	ck_assert_ptr_null(k);
	ck_assert_int_eq(aiq_config_set_str(cfg, "beat.url", pg_url()), AIQ_OK);
	ck_assert_int_eq(
	        aiq__coord_open(&k, AIQ_CFG_BEAT_URL, cfg, AIQ_ESTORE, AIQ__COORD_REDIS_ONLY),
	        AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "beat.url"));
	/* An explicit URL of no coordinating kind. */
	ck_assert_int_eq(aiq_config_set_str(cfg, "unique.url", "amqp://127.0.0.1:1//"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_open(&k, AIQ_CFG_UNIQUE_URL, cfg, AIQ_ESTORE, AIQ__COORD_ANY),
	                 AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "PostgreSQL"));
	/* A PostgreSQL that cannot be reached: each call fails with the reason
	 * (the handle tries again at most once a second). */
	ck_assert_int_eq(aiq_config_set_str(cfg, "unique.url",
	                                    "postgresql://127.0.0.1:1/none?connect_timeout=2"),
	                 AIQ_OK);
	ck_assert_int_eq(aiq__coord_open(&k, AIQ_CFG_UNIQUE_URL, cfg, AIQ_ESTORE, AIQ__COORD_ANY),
	                 AIQ_OK);
	char *holder = NULL;
	ck_assert_int_eq(aiq__coord_claim(k, &holder, "x", "y", 1000), AIQ_ESTORE);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "127.0.0.1"));
	ck_assert_int_eq(aiq__coord_claim(k, &holder, "x", "y", 1000), AIQ_ESTORE);
	aiq__coord_free(k);
	aiq_config_free(cfg);
}
END_TEST

/* A connection killed under the handle: the next call reconnects. */
START_TEST(test_coord_connection_killed)
{
	aiq__coord *k = open_coord_pg();
	bool got = false;
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, "pg-kill:l", "a", 1, 60000), AIQ_OK);
	ck_assert(got);
	sql_int(pg_url(),
	        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
	        "WHERE application_name = $1 AND pid <> pg_backend_pid()",
	        "libaiqueue");
	ck_assert_msg(aiq__coord_lease_take(k, &got, "pg-kill:l", "b", 1, 60000) == AIQ_OK, "%s",
	              aiq_error_last());
	ck_assert(!got);
	ck_assert_int_eq(aiq__coord_lease_drop(k, "pg-kill:l", "a"), AIQ_OK);
	ck_assert_int_eq(aiq__coord_lease_take(k, &got, "pg-kill:l", "b", 1, 60000), AIQ_OK);
	ck_assert(got);
	aiq__coord_free(k);
}
END_TEST

static void unique_done(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_succeed(t, "1");
}

static void *unique_worker_run(void *w)
{
	aiq_worker_run(w);
	return NULL;
}

/* Unique jobs with no Redis anywhere: the client's key is a row of
 * aiq_claims holding the task id, and the worker's success releases it. */
START_TEST(test_coord_unique_jobs)
{
	aiq_config *cfg = new_cfg();
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://pg-unique"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", pg_url()), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_unique(o, "pg-job", 60000, AIQ_UNIQUE_UNTIL_SUCCESS),
	                 AIQ_OK);
	char *first = NULL, *again = NULL;
	int existing = -1;
	ck_assert_msg(aiq_client_enqueue_unique(&first, &existing, c, "pg.unique", "[1]", NULL,
	                                        o) == AIQ_OK,
	              "%s", aiq_error_last());
	ck_assert_int_eq(existing, 0);
	ck_assert_int_eq(
	        aiq_client_enqueue_unique(&again, &existing, c, "pg.unique", "[1]", NULL, o),
	        AIQ_OK);
	ck_assert_int_eq(existing, 1);
	ck_assert_str_eq(again, first);
	aiq_free(again);
	ck_assert_int_eq(sql_int(pg_url(),
	                         "SELECT count(*) FROM aiq_claims WHERE key = 'aiq:unique:pg-job' "
	                         "AND value = $1",
	                         first),
	                 1);
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "pg.unique", unique_done, NULL, NULL), AIQ_OK);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, unique_worker_run, w), 0);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, c, first, 20000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	int64_t left = 1;
	for (int i = 0; i < 200 && left; i++) {
		left = sql_int(pg_url(), "SELECT count(*) FROM aiq_claims WHERE key = $1",
		               "aiq:unique:pg-job");
		if (left) {
			struct timespec ts = {0, 10 * 1000000};
			nanosleep(&ts, NULL);
		}
	}
	ck_assert_int_eq(left, 0);
	ck_assert_int_eq(
	        aiq_client_enqueue_unique(&again, &existing, c, "pg.unique", "[1]", NULL, o),
	        AIQ_OK);
	ck_assert_int_eq(existing, 0);
	ck_assert_str_ne(again, first);
	aiq_free(again);
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	aiq_worker_free(w);
	aiq_free(first);
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

static Suite *postgres_suite(void)
{
	Suite *s = suite_create("postgres");
	TCase *tc = tcase_create("store");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_schema_created);
	tcase_add_test(tc, test_schema_concurrent);
	tcase_add_test(tc, test_schema_upgrade);
	tcase_add_test(tc, test_upsert_idempotent);
	tcase_add_test(tc, test_state_order);
	tcase_add_test(tc, test_wait_notify);
	tcase_add_test(tc, test_wait_many);
	tcase_add_test(tc, test_subscribe);
	tcase_add_test(tc, test_expiry);
	tcase_add_test(tc, test_hostile_input);
	tcase_add_test(tc, test_analyses);
	tcase_add_test(tc, test_archive);
	tcase_add_test(tc, test_forget);
	tcase_add_test(tc, test_wrong_password);
	tcase_add_test(tc, test_missing_database);
	tcase_add_test(tc, test_read_only);
	tcase_add_test(tc, test_outage);
	tcase_add_test(tc, test_worker_survives_restart);
	tcase_add_test(tc, test_chord_contract);
	tcase_add_test(tc, test_chord_concurrent);
	tcase_add_test(tc, test_chord_expiry);
	tcase_add_test(tc, test_chord_connection_killed);
	tcase_add_test(tc, test_coord_contract);
	tcase_add_test(tc, test_coord_race);
	tcase_add_test(tc, test_coord_selection);
	tcase_add_test(tc, test_coord_connection_killed);
	tcase_add_test(tc, test_coord_unique_jobs);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return aiq_test_run(postgres_suite());
}
