/*
 * The PostgreSQL result store: "postgresql://…" or "postgres://…", a libpq
 * connection URI passed through as is (sslmode, options, target_session_attrs
 * and the other libpq parameters work; PGPASSWORD, ~/.pgpass and the other
 * PG* environment variables too). docs/postgres.md is the user's guide.
 *
 * Schema. postgres_schema.h holds numbered migrations; open() applies the
 * missing ones in one transaction under an advisory lock, so concurrent
 * workers never race, and skips the lock when the schema is current (a
 * read-only server can then still be read).
 *
 * Writes. put() is one statement: an upsert on the task id whose update only
 * applies while the stored state is not final (SUCCESS, FAILURE, REVOKED), so
 * a redelivered task updates its one row and a late STARTED never replaces
 * SUCCESS (put() then gives AIQ_ESTATE). In the same statement a SUCCESS
 * whose result has the built-in analysis task's shape — an object with
 * exactly the keys track_id, analyzer and analysis — adds one row to
 * aiq_analyses. The store sees results, not task names, so the shape is the
 * test. A trigger sends NOTIFY aiq_task_done with the task id for every final
 * state, whoever writes it.
 *
 * Expiry works as the other stores' does: a row expires expires_s after its
 * last write (postgres.expires_s, by default result.expires_s; 0 = never);
 * expired rows read as absent, and put() deletes them in batches at most
 * once per min(60 s, expires_s). Analyses are kept. forget() deletes the
 * task's row at once (its analysis row stays, as with expiry).
 *
 * Waiting. A listener thread, started by the first wait() or subscribe(),
 * holds its own connection with LISTEN aiq_task_done. wait() registers
 * itself, notes whether the listener is listening, then reads the row: a
 * result committed before the read is seen by the read, one committed after
 * it is notified. When the listener's connection drops, waiters re-read once
 * it listens again (and every 500 ms meanwhile); a 30 s re-read guards
 * against a connection that died silently.
 *
 * Coordination (store.h's bucket, claim and lease ops, for coord.h): one
 * SQL function or statement per call on the tables of migration 6, timed
 * by the server's clock_timestamp(); ended rows are deleted at most once a
 * minute by the next call (coord_sweep).
 *
 * Connections. The main connection is shared by every thread behind a
 * mutex. After it breaks, the next call reconnects (a failed attempt holds
 * off further ones for 50 ms doubling to 1 s); a statement that failed
 * because the connection broke runs once more on a fresh connection (every
 * statement here is idempotent). While the server is away calls fail with
 * AIQ_ESTORE, and the worker retries or requeues.
 *
 * Errors. libpq and server errors become AIQ_ESTORE with the server's
 * message and SQLSTATE; the URL in messages has its password redacted, and
 * the password is scrubbed from any message libpq gives.
 */
#include "store.h"

#include "broker.h" /* aiq__url_redact */
#include "config_int.h"
#include "postgres_schema.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define MAX_ID_BYTES       4096 /* NOTIFY payloads must stay below 8000 bytes */
#define BACKOFF_MIN_MS     50
#define BACKOFF_MAX_MS     1000
#define LISTEN_BACKOFF_MAX 2000
#define WAIT_RECHECK_MS    30000 /* re-read even when notified; see above */
#define WAIT_POLL_MS       500   /* re-read interval while not listening */
#define SWEEP_BATCH        5000
#define SWEEP_MAX_EVERY_MS 60000
#define TEN_YEARS_S        (INT64_C(10) * 366 * 86400)
#define FINAL_STATES_SQL   "('SUCCESS', 'FAILURE', 'REVOKED')"

typedef struct waiter {
	const char *id;
	bool fired;
	struct waiter *next;
} waiter;

typedef struct pg_store {
	aiq__store base;
	char *url;       /* as given: it may hold a password */
	char *safe_url;  /* for messages */
	char *secret[2]; /* the password, decoded and as written, to scrub */
	char timeout_text[24];
	int64_t connect_timeout_ms;
	int64_t expires_s; /* 0 = never */
	char expires_text[24];
	char *analyze_task_name;

	pthread_mutex_t lock; /* guards the main connection and the fields below */
	PGconn *conn;
	int64_t retry_at_ms; /* monotonic; no reconnect before */
	int64_t backoff_ms;
	int64_t next_sweep_ms;
	int64_t next_coord_sweep_ms;
	bool down_logged;

	pthread_mutex_t wlock; /* guards the listener state and waiters */
	pthread_cond_t wcond;  /* a waiter fired, or the listener's epoch changed */
	pthread_cond_t idle;   /* a completion callback call returned */
	bool listener_started;
	pthread_t listener;
	int wake[2]; /* self-pipe that stops the listener */
	atomic_bool stop;
	bool listening; /* LISTEN is active on the listener's connection */
	uint64_t epoch; /* bumped when listening starts or stops */
	waiter *waiters;
	aiq__store_notify_fn fn;
	void *userdata;
	unsigned inflight;
} pg_store;

extern const aiq__store_ops aiq__postgres_store_ops;

/* ---- text helpers -------------------------------------------------------- */

/* A copy of msg on one line, without trailing blanks and with every known
 * secret replaced by "***". */
static char *clean_message(char *const secret[2], const char *msg)
{
	if (msg == NULL || *msg == '\0')
		msg = "no detail given";
	size_t len = strlen(msg);
	char *out = malloc(len * 3 + 8);
	if (out == NULL)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < len;) {
		bool hit = false;
		for (int k = 0; k < 2 && !hit; k++) {
			const char *sec = secret ? secret[k] : NULL;
			size_t n = sec ? strlen(sec) : 0;
			if (n > 0 && strncmp(msg + i, sec, n) == 0) {
				memcpy(out + o, "***", 3);
				o += 3;
				i += n;
				hit = true;
			}
		}
		if (hit)
			continue;
		char c = msg[i++];
		if (c == '\n' || c == '\r' || c == '\t') {
			if (o > 0 && out[o - 1] != ' ')
				out[o++] = ' ';
		} else {
			out[o++] = c;
		}
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
	return out;
}

/* A copy of s with every byte that is not part of valid UTF-8 replaced by
 * U+FFFD (the database encoding is UTF-8; the text is advice, not data). */
static char *utf8_copy(const char *s)
{
	if (s == NULL)
		return NULL;
	size_t len = strlen(s);
	if (aiq__utf8_valid(s, len))
		return strdup(s);
	char *out = malloc(len * 3 + 1);
	if (out == NULL)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < len;) {
		unsigned char c = (unsigned char)s[i];
		size_t n = c < 0x80         ? 1
		           : (c >> 5) == 6  ? 2
		           : (c >> 4) == 14 ? 3
		           : (c >> 3) == 30 ? 4
		                            : 0;
		if (n > 0 && i + n <= len && aiq__utf8_valid(s + i, n)) {
			memcpy(out + o, s + i, n);
			o += n;
			i += n;
		} else {
			memcpy(out + o, "\xEF\xBF\xBD", 3);
			o += 3;
			i++;
		}
	}
	out[o] = '\0';
	return out;
}

/* True when JSON text holds the escape \u0000, which jsonb cannot store. */
static bool json_has_nul(const char *s)
{
	for (const char *p = s; (p = strchr(p, '\\')) != NULL;) {
		if (p[1] == 'u' && strncmp(p + 2, "0000", 4) == 0)
			return true;
		p += p[1] ? 2 : 1;
	}
	return false;
}

/* ---- errors and connections (lock held) --------------------------------- */

static int conn_error(pg_store *s, PGconn *c, const char *what)
{
	char *m = clean_message(s->secret, c ? PQerrorMessage(c) : "out of memory");
	int rc = aiq__err(AIQ_ESTORE, "%s PostgreSQL at %s: %s", what, s->safe_url,
	                  m ? m : "out of memory");
	free(m);
	return rc;
}

static int result_error(pg_store *s, PGresult *res, const char *what)
{
	const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (primary == NULL) /* no server error: the connection or libpq failed */
		return conn_error(s, s->conn, what);
	char *m = clean_message(s->secret, primary);
	/* 25006: the server names the statement's outer command (a SELECT for
	 * our upsert), so say plainly what is wrong. */
	const char *hint = state && strcmp(state, "25006") == 0
	                           ? "the server is read-only (a hot standby, or "
	                             "default_transaction_read_only is on): "
	                           : "";
	int rc = aiq__err(AIQ_ESTORE, "%s PostgreSQL at %s: %s%s (SQLSTATE %s)", what, s->safe_url,
	                  hint, m ? m : "out of memory", state ? state : "?");
	free(m);
	return rc;
}

/* libpq prints notices, and errors a server sends between statements (a
 * FATAL on shutdown), on stderr by default: route them to the log. */
static void on_notice(void *arg, const PGresult *res)
{
	const pg_store *s = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	bool bad = sev && (strcmp(sev, "WARNING") == 0 || strcmp(sev, "ERROR") == 0 ||
	                   strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
	char *m = clean_message(s->secret, PQresultErrorMessage(res));
	aiq__log(bad ? AIQ_LOG_WARNING : AIQ_LOG_DEBUG, "PostgreSQL at %s: %s", s->safe_url,
	         m ? m : "out of memory");
	free(m);
}

/* Keywords for libpq: defaults first, then the URL (which may override
 * them), then what this driver needs regardless. */
static void conn_params(const pg_store *s, const char *kw[5], const char *val[5])
{
	kw[0] = "connect_timeout";
	val[0] = s->timeout_text;
	kw[1] = "application_name";
	val[1] = "libaiqueue";
	kw[2] = "dbname";
	val[2] = s->url;
	kw[3] = "client_encoding";
	val[3] = "UTF8";
	kw[4] = NULL;
	val[4] = NULL;
}

/* Make the main connection usable: AIQ_OK or AIQ_ESTORE. */
static int conn_ready(pg_store *s)
{
	if (s->conn && PQstatus(s->conn) == CONNECTION_OK)
		return AIQ_OK;
	int64_t now = aiq__mono_ms();
	if (now < s->retry_at_ms) {
		const char *why = s->conn ? PQerrorMessage(s->conn) : "";
		char *m = clean_message(s->secret, why);
		int rc = aiq__err(AIQ_ESTORE,
		                  "PostgreSQL at %s is unreachable (next reconnect in %lld ms): %s",
		                  s->safe_url, (long long)(s->retry_at_ms - now),
		                  m ? m : "out of memory");
		free(m);
		return rc;
	}
	if (s->conn) {
		PQreset(s->conn);
	} else {
		const char *kw[5], *val[5];
		conn_params(s, kw, val);
		s->conn = PQconnectdbParams(kw, val, 1);
		if (s->conn)
			PQsetNoticeReceiver(s->conn, on_notice, s);
	}
	if (s->conn && PQstatus(s->conn) == CONNECTION_OK) {
		if (s->down_logged)
			aiq__log(AIQ_LOG_INFO, "reconnected to PostgreSQL at %s", s->safe_url);
		s->backoff_ms = 0;
		s->retry_at_ms = 0;
		s->down_logged = false;
		return AIQ_OK;
	}
	s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (s->backoff_ms > BACKOFF_MAX_MS)
		s->backoff_ms = BACKOFF_MAX_MS;
	s->retry_at_ms = aiq__mono_ms() + s->backoff_ms;
	int rc = conn_error(s, s->conn, "cannot connect to");
	if (!s->down_logged) {
		aiq__log(AIQ_LOG_WARNING, "%s", aiq_error_last());
		s->down_logged = true;
	}
	return rc;
}

/* Run one parameterized statement on the main connection (lock held). A
 * statement that failed because the connection broke runs once more after
 * a reconnect. *out (when given) receives the rows of a successful query. */
static int run(pg_store *s, PGresult **out, const char *what, const char *sql, int nparams,
               const char *const *values)
{
	if (out)
		*out = NULL;
	for (int attempt = 0;; attempt++) {
		int rc = conn_ready(s);
		if (rc != AIQ_OK)
			return rc;
		PGresult *res = PQexecParams(s->conn, sql, nparams, NULL, values, NULL, NULL, 0);
		ExecStatusType st = PQresultStatus(res);
		if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
			if (out)
				*out = res;
			else
				PQclear(res);
			return AIQ_OK;
		}
		if (PQstatus(s->conn) != CONNECTION_OK && attempt == 0) {
			PQclear(res);
			s->retry_at_ms = 0;
			continue;
		}
		rc = result_error(s, res, what);
		PQclear(res);
		return rc;
	}
}

/* ---- schema ---------------------------------------------------------------- */

/* One statement (or several) without parameters, for the migration. */
static int exec_simple(pg_store *s, PGresult **out, const char *what, const char *sql)
{
	PGresult *res = PQexec(s->conn, sql);
	ExecStatusType st = PQresultStatus(res);
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
		if (out)
			*out = res;
		else
			PQclear(res);
		return AIQ_OK;
	}
	int rc = result_error(s, res, what);
	PQclear(res);
	return rc;
}

static int schema_version(pg_store *s, int *version, bool locked)
{
	PGresult *res = NULL;
	int rc;
	*version = 0;
	if (!locked) {
		rc = exec_simple(s, &res, "checking the schema version on",
		                 "SELECT to_regclass('aiq_schema_migrations') IS NOT NULL");
		if (rc != AIQ_OK)
			return rc;
		bool exists = PQgetvalue(res, 0, 0)[0] == 't';
		PQclear(res);
		if (!exists)
			return AIQ_OK;
	}
	rc = exec_simple(s, &res, "checking the schema version on",
	                 "SELECT coalesce(max(version), 0) FROM aiq_schema_migrations");
	if (rc == AIQ_OK) {
		*version = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
		PQclear(res);
	}
	return rc;
}

static int migrate_locked(pg_store *s)
{
	int rc = exec_simple(s, NULL, "locking the schema on",
	                     "SELECT pg_advisory_xact_lock(" AIQ__PG_SCHEMA_LOCK_KEY ")");
	if (rc == AIQ_OK)
		rc = exec_simple(s, NULL, "creating the migrations table on",
		                 AIQ__PG_MIGRATIONS_TABLE);
	int version = 0;
	if (rc == AIQ_OK)
		rc = schema_version(s, &version, true);
	for (size_t i = 0; rc == AIQ_OK && i < AIQ__PG_NMIGRATIONS; i++) {
		const struct aiq__pg_migration *m = &aiq__pg_migrations[i];
		if (m->version <= version)
			continue;
		char what[160];
		snprintf(what, sizeof what, "applying schema migration %d (%s) on", m->version,
		         m->description);
		rc = exec_simple(s, NULL, what, m->sql);
		if (rc != AIQ_OK)
			break;
		char num[16];
		snprintf(num, sizeof num, "%d", m->version);
		const char *vals[] = {num};
		PGresult *res = PQexecParams(
		        s->conn, "INSERT INTO aiq_schema_migrations (version) VALUES ($1::int)", 1,
		        NULL, vals, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			rc = result_error(s, res, "recording a schema migration on");
		PQclear(res);
		if (rc == AIQ_OK)
			aiq__log(AIQ_LOG_INFO, "PostgreSQL at %s: applied schema migration %d (%s)",
			         s->safe_url, m->version, m->description);
	}
	return rc;
}

/* Create or upgrade the schema (lock held, connection ready). */
static int migrate(pg_store *s)
{
	int version = 0;
	int latest = aiq__pg_migrations[AIQ__PG_NMIGRATIONS - 1].version;
	int rc = schema_version(s, &version, false);
	if (rc != AIQ_OK || version >= latest)
		return rc;
	rc = exec_simple(s, NULL, "starting the schema migration on", "BEGIN");
	if (rc != AIQ_OK)
		return rc;
	rc = migrate_locked(s);
	if (rc == AIQ_OK)
		return exec_simple(s, NULL, "committing the schema migration on", "COMMIT");
	/* Keep the first error: it says what failed. */
	PGresult *res = PQexec(s->conn, "ROLLBACK");
	PQclear(res);
	return rc;
}

/* ---- rows -> results ------------------------------------------------------ */

#define GET_SQL                                                                                    \
	"SELECT state, coalesce(result::text, result_raw), error->>'exc_type', "                   \
	"error->>'exc_message', error->>'exc_module', error->>'traceback', "                       \
	"(extract(epoch FROM done_at) * 1000000)::int8, parent_id, "                               \
	"(extract(epoch FROM updated_at) * 1000000)::int8 "                                        \
	"FROM aiq_tasks WHERE id = $1 "                                                            \
	"AND ($2::int8 = 0 OR updated_at >= now() - $2::int8 * interval '1 second')"

static int set_field(char **dst, PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return AIQ_OK;
	char *v = strdup(PQgetvalue(res, row, col));
	if (v == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory reading a result");
	free(*dst);
	*dst = v;
	return AIQ_OK;
}

/* The result in GET_SQL's rows, or PENDING when there is none. */
/* The result in row `row` of GET_SQL's (or GET_BATCH_SQL's) columns. */
static int row_result(aiq_result **out, const char *id, PGresult *res, int row)
{
	const char *name = PQgetvalue(res, row, 0);
	int state = AIQ_STATE_PROGRESS; /* a custom state written by hand */
	for (int st = AIQ_STATE_PENDING; st <= AIQ_STATE_REVOKED; st++)
		if (strcmp(name, aiq_state_name(st)) == 0)
			state = st;
	aiq_result *r = NULL;
	int rc = aiq__result_new(&r, id, state);
	if (rc == AIQ_OK)
		rc = set_field(&r->result_json, res, row, 1);
	if (rc == AIQ_OK)
		rc = set_field(&r->exc_type, res, row, 2);
	if (rc == AIQ_OK)
		rc = set_field(&r->exc_message, res, row, 3);
	if (rc == AIQ_OK)
		rc = set_field(&r->exc_module, res, row, 4);
	if (rc == AIQ_OK)
		rc = set_field(&r->traceback, res, row, 5);
	if (rc == AIQ_OK && !PQgetisnull(res, row, 6)) {
		char buf[AIQ__ISO_BUFSZ];
		aiq__iso8601_format(buf, strtoll(PQgetvalue(res, row, 6), NULL, 10), false);
		if (!(r->date_done = strdup(buf)))
			rc = aiq__err(AIQ_ENOMEM, "out of memory reading a result");
	}
	if (rc == AIQ_OK)
		rc = set_field(&r->parent_id, res, row, 7);
	if (rc == AIQ_OK && !PQgetisnull(res, row, 8))
		r->stored_us = strtoll(PQgetvalue(res, row, 8), NULL, 10);
	if (rc != AIQ_OK) {
		aiq_result_free(r);
		return rc;
	}
	*out = r;
	return AIQ_OK;
}

static int row_to_result(aiq_result **out, const char *id, PGresult *res)
{
	if (PQntuples(res) == 0)
		return aiq__result_new(out, id, AIQ_STATE_PENDING);
	return row_result(out, id, res, 0);
}

static int check_id(const char *task_id)
{
	if (task_id == NULL || task_id[0] == '\0')
		return aiq__err(AIQ_EINVAL, "no task id given");
	size_t len = strlen(task_id);
	if (len > MAX_ID_BYTES)
		return aiq__err(AIQ_EINVAL,
		                "task id is %zu bytes; the PostgreSQL store takes at most %d", len,
		                MAX_ID_BYTES);
	if (!aiq__utf8_valid(task_id, len))
		return aiq__err(AIQ_EINVAL, "task id is not valid UTF-8");
	return AIQ_OK;
}

/* Read a task on the main connection (lock not held). */
static int read_task(pg_store *s, aiq_result **out, const char *task_id)
{
	const char *vals[] = {task_id, s->expires_text};
	PGresult *res = NULL;
	pthread_mutex_lock(&s->lock);
	int rc = run(s, &res, "reading a result from", GET_SQL, 2, vals);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK)
		rc = row_to_result(out, task_id, res);
	PQclear(res);
	return rc;
}

/* ---- put ---------------------------------------------------------------------- */

#define PUT_SQL                                                                                    \
	"WITH up AS (\n"                                                                           \
	"  INSERT INTO aiq_tasks AS t (id, name, state, result, result_raw, error, retries,\n"     \
	"                              worker, parent_id, started_at, done_at)\n"                  \
	"  VALUES ($1, $2, $3, $4::jsonb, $5,\n"                                                   \
	"          CASE WHEN $6::text IS NULL THEN NULL ELSE jsonb_build_object(\n"                \
	"              'exc_type', $6::text, 'exc_message', $7::text,\n"                           \
	"              'exc_module', $8::text, 'traceback', $9::text) END,\n"                      \
	"          CASE WHEN $3 = 'RETRY' THEN 1 ELSE 0 END, $10, $11,\n"                          \
	"          CASE WHEN $3 = 'STARTED' THEN now() END, $12::timestamptz)\n"                   \
	"  ON CONFLICT (id) DO UPDATE SET\n"                                                       \
	"    name = coalesce(EXCLUDED.name, t.name),\n"                                            \
	"    state = EXCLUDED.state, result = EXCLUDED.result,\n"                                  \
	"    result_raw = EXCLUDED.result_raw, error = EXCLUDED.error,\n"                          \
	"    retries = CASE WHEN t.state IN " FINAL_STATES_SQL " THEN 0 ELSE t.retries END\n"      \
	"              + EXCLUDED.retries,\n"                                                      \
	"    worker = coalesce(EXCLUDED.worker, t.worker),\n"                                      \
	"    parent_id = coalesce(EXCLUDED.parent_id, t.parent_id),\n"                             \
	"    created_at = CASE WHEN t.state IN " FINAL_STATES_SQL " THEN now()\n"                  \
	"                 ELSE t.created_at END,\n"                                                \
	"    started_at = coalesce(EXCLUDED.started_at, t.started_at),\n"                          \
	"    done_at = EXCLUDED.done_at, updated_at = now()\n"                                     \
	"  WHERE t.state NOT IN " FINAL_STATES_SQL "\n"                                            \
	"     OR ($13::int8 > 0 AND t.updated_at < now() - $13::int8 * interval '1 second')\n"     \
	"  RETURNING t.id, t.state, t.result\n"                                                    \
	"), an AS (\n"                                                                             \
	"  INSERT INTO aiq_analyses (track_id, task_id, analyzer, result)\n"                       \
	"  SELECT up.result->>'track_id', up.id, up.result->>'analyzer', up.result->'analysis'\n"  \
	"  FROM up WHERE $14::boolean AND up.state = 'SUCCESS'\n"                                  \
	"  ON CONFLICT (task_id) DO NOTHING\n"                                                     \
	")\n"                                                                                      \
	"SELECT count(*) FROM up"

#define SWEEP_SQL                                                                                  \
	"DELETE FROM aiq_tasks WHERE id IN (SELECT id FROM aiq_tasks "                             \
	"WHERE updated_at < now() - $1::int8 * interval '1 second' LIMIT " AIQ__PG_STR(            \
	        SWEEP_BATCH) ")"
#define SWEEP_CHORDS_SQL                                                                           \
	"DELETE FROM aiq_chords WHERE group_id IN (SELECT group_id FROM aiq_chords "               \
	"WHERE updated_at < now() - $1::int8 * interval '1 second' LIMIT " AIQ__PG_STR(            \
	        SWEEP_BATCH) ")"
#define AIQ__PG_STR2(x) #x
#define AIQ__PG_STR(x)  AIQ__PG_STR2(x)

/* The fields put() derives from the result JSON. */
struct derived {
	char *worker;  /* STARTED meta's hostname */
	bool analysis; /* the built-in analysis task's result shape */
};

static void derive(struct derived *d, const aiq_result *r)
{
	memset(d, 0, sizeof *d);
	const char *json = r->result_json;
	bool started = r->state == AIQ_STATE_STARTED && json && strstr(json, "\"hostname\"");
	bool success = r->state == AIQ_STATE_SUCCESS && json && strstr(json, "\"analysis\"");
	if (!started && !success)
		return;
	json_t *v = json_loads(json, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	if (!json_is_object(v)) {
		json_decref(v);
		return;
	}
	if (started) {
		const char *host = json_string_value(json_object_get(v, "hostname"));
		d->worker = utf8_copy(host);
	} else {
		json_t *track = json_object_get(v, "track_id");
		d->analysis = json_object_size(v) == 3 &&
		              (json_is_string(track) || json_is_integer(track)) &&
		              json_is_string(json_object_get(v, "analyzer")) &&
		              json_object_get(v, "analysis") != NULL;
	}
	json_decref(v);
}

/* Delete expired rows, at most once per sweep interval (lock held). A failure
 * is only logged: the rows go next time. */
static void maybe_sweep(pg_store *s)
{
	if (s->expires_s == 0)
		return;
	int64_t now = aiq__mono_ms();
	if (now < s->next_sweep_ms)
		return;
	int64_t every =
	        s->expires_s * 1000 < SWEEP_MAX_EVERY_MS ? s->expires_s * 1000 : SWEEP_MAX_EVERY_MS;
	s->next_sweep_ms = now + every;
	const char *vals[] = {s->expires_text};
	PGresult *res = NULL;
	if (run(s, &res, "deleting expired results from", SWEEP_SQL, 1, vals) != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "%s", aiq_error_last());
		return;
	}
	if (strtol(PQcmdTuples(res), NULL, 10) >= SWEEP_BATCH)
		s->next_sweep_ms = now; /* more to do: again on the next put */
	PQclear(res);
	res = NULL;
	/* Chords whose last part returned longer ago than that (a part that
	 * never ran, or ran on a worker that does not join chords here). */
	if (run(s, &res, "deleting expired chords from", SWEEP_CHORDS_SQL, 1, vals) != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "%s", aiq_error_last());
		return;
	}
	if (strtol(PQcmdTuples(res), NULL, 10) >= SWEEP_BATCH)
		s->next_sweep_ms = now;
	PQclear(res);
}

static int pg_put(aiq__store *base, const aiq_result *r)
{
	pg_store *s = (pg_store *)base;
	if (r == NULL)
		return aiq__err(AIQ_EINVAL, "put needs a result");
	int rc = check_id(r->task_id);
	if (rc != AIQ_OK)
		return rc;
	if (r->state < AIQ_STATE_PENDING || r->state > AIQ_STATE_REVOKED)
		return aiq__err(AIQ_EINVAL, "invalid task state %d", r->state);
	bool final = aiq_state_is_ready(r->state);
	const char *json = r->result_json ? r->result_json : "null";
	bool raw = json_has_nul(json);

	char done[AIQ__ISO_BUFSZ];
	int64_t done_us = 0;
	if (r->date_done && aiq__iso8601_parse(r->date_done, &done_us) != AIQ_OK)
		done_us = 0;
	if (final && done_us == 0)
		done_us = aiq__now_us();
	aiq__iso8601_format(done, done_us, true);

	struct derived d;
	derive(&d, r);
	char *exc_type = utf8_copy(r->exc_type), *exc_message = utf8_copy(r->exc_message);
	char *exc_module = utf8_copy(r->exc_module), *traceback = utf8_copy(r->traceback);
	char *parent = utf8_copy(r->parent_id);
	if ((r->exc_type && !exc_type) || (r->exc_message && !exc_message) ||
	    (r->exc_module && !exc_module) || (r->traceback && !traceback) ||
	    (r->parent_id && !parent)) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory storing a result");
		goto out;
	}
	const char *vals[14] = {
	        r->task_id,
	        d.analysis ? s->analyze_task_name : NULL,
	        aiq_state_name(r->state),
	        raw ? NULL : json,
	        raw ? json : NULL,
	        exc_type,
	        exc_type ? (exc_message ? exc_message : "") : NULL,
	        exc_type ? (exc_module ? exc_module : "builtins") : NULL,
	        traceback,
	        d.worker,
	        parent,
	        done_us ? done : NULL,
	        s->expires_text,
	        d.analysis ? "true" : "false",
	};
	PGresult *res = NULL;
	int64_t changed = 0;
	char old[32] = "";
	pthread_mutex_lock(&s->lock);
	rc = run(s, &res, "storing a result in", PUT_SQL, 14, vals);
	if (rc == AIQ_OK) {
		changed = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		PQclear(res);
		res = NULL;
		if (changed == 0) { /* a final state is stored: which one, for the message */
			const char *idv[] = {r->task_id};
			if (run(s, &res, "reading a result from",
			        "SELECT state FROM aiq_tasks WHERE id = $1", 1, idv) == AIQ_OK &&
			    PQntuples(res) == 1)
				snprintf(old, sizeof old, "%s", PQgetvalue(res, 0, 0));
			PQclear(res);
		}
		maybe_sweep(s);
	}
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK && changed == 0)
		rc = aiq__err(
		        AIQ_ESTATE,
		        "task %.64s is already %s; a final state is never replaced (new state "
		        "%s ignored)",
		        r->task_id, old[0] ? old : "final", aiq_state_name(r->state));
out:
	free(d.worker);
	free(exc_type);
	free(exc_message);
	free(exc_module);
	free(traceback);
	free(parent);
	return rc;
}

static int pg_get(aiq__store *base, aiq_result **out, const char *task_id)
{
	pg_store *s = (pg_store *)base;
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "get needs an output pointer");
	*out = NULL;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	return read_task(s, out, task_id);
}

#define GET_BATCH_SQL                                                                              \
	"SELECT state, coalesce(result::text, result_raw), error->>'exc_type', "                   \
	"error->>'exc_message', error->>'exc_module', error->>'traceback', "                       \
	"(extract(epoch FROM done_at) * 1000000)::int8, parent_id, "                               \
	"(extract(epoch FROM updated_at) * 1000000)::int8, id "                                    \
	"FROM aiq_tasks WHERE id = ANY($1::text[]) "                                               \
	"AND ($2::int8 = 0 OR updated_at >= now() - $2::int8 * interval '1 second')"

/* A text[] literal of the ids: {"a","b"} with " and \ escaped. */
static char *id_array(const char *const *ids, size_t n)
{
	size_t len = 3;
	for (size_t i = 0; i < n; i++)
		len += 2 * strlen(ids[i]) + 3;
	char *a = malloc(len), *p = a;
	if (a == NULL)
		return NULL;
	*p++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			*p++ = ',';
		*p++ = '"';
		for (const char *c = ids[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				*p++ = '\\';
			*p++ = *c;
		}
		*p++ = '"';
	}
	*p++ = '}';
	*p = '\0';
	return a;
}

/* Every state in one query; ids with no row read PENDING. */
static int pg_get_batch(aiq__store *base, aiq_result **out, const char *const *task_ids, size_t n,
                        int *status)
{
	pg_store *s = (pg_store *)base;
	if ((out == NULL || task_ids == NULL || status == NULL) && n > 0)
		return aiq__err(AIQ_EINVAL, "get_batch needs outputs, ids and a status array");
	const char **valid = calloc(n ? n : 1, sizeof *valid);
	if (valid == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory reading results");
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		out[i] = NULL;
		status[i] = check_id(task_ids[i]);
		if (status[i] == AIQ_OK)
			valid[m++] = task_ids[i];
	}
	int rc = AIQ_OK;
	PGresult *res = NULL;
	if (m > 0) {
		char *arr = id_array(valid, m);
		if (arr == NULL) {
			rc = aiq__err(AIQ_ENOMEM, "out of memory reading results");
		} else {
			const char *vals[] = {arr, s->expires_text};
			pthread_mutex_lock(&s->lock);
			rc = run(s, &res, "reading results from", GET_BATCH_SQL, 2, vals);
			pthread_mutex_unlock(&s->lock);
			free(arr);
		}
	}
	int rows = res ? PQntuples(res) : 0;
	for (size_t i = 0; rc == AIQ_OK && i < n; i++) {
		if (status[i] != AIQ_OK)
			continue;
		int row = -1;
		for (int k = 0; k < rows && row < 0; k++)
			if (strcmp(PQgetvalue(res, k, 9), task_ids[i]) == 0)
				row = k;
		status[i] = row < 0 ? aiq__result_new(&out[i], task_ids[i], AIQ_STATE_PENDING)
		                    : row_result(&out[i], task_ids[i], res, row);
	}
	PQclear(res);
	free(valid);
	if (rc != AIQ_OK)
		for (size_t i = 0; i < n; i++)
			status[i] = rc;
	return rc;
}

/* Deletes the task's row only: its aiq_analyses row, if any, is the
 * analysis archive and stays (as expiry keeps it); Celery's forget()
 * removes the result and nothing else. No NOTIFY fires, so a wait() in
 * progress keeps waiting for a new final state or its deadline. */
static int pg_forget(aiq__store *base, const char *task_id)
{
	pg_store *s = (pg_store *)base;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	const char *vals[] = {task_id};
	pthread_mutex_lock(&s->lock);
	rc = run(s, NULL, "forgetting a result in", "DELETE FROM aiq_tasks WHERE id = $1", 1, vals);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

static int pg_ping(aiq__store *base)
{
	pg_store *s = (pg_store *)base;
	pthread_mutex_lock(&s->lock);
	int rc = run(s, NULL, "pinging", "SELECT 1", 0, NULL);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* ---- chords ------------------------------------------------------------------- *
 * aiq_chords holds a chord's size and count, aiq_chord_parts each returned
 * part (postgres_schema.h, migration 5). A part's return is one call of the
 * function aiq_chord_part_return(): it locks the chord's row, inserts the
 * part unless its task id or group_index is there already, adds the rows it
 * inserted to the count and, when the count reaches the size, records the
 * part's task id in fired_by. It answers true to that part only, so exactly
 * one caller sends the body however many workers and connections return
 * parts at once; a part returned twice (a redelivery) counts once. The
 * answer is also true for the completing part's own retry: run() sends a
 * statement once more when the connection broke, possibly after the first
 * one committed, and a redelivery of that part after a crash before the
 * body was sent sends it then. */

static int pg_chord_set_size(aiq__store *base, const char *group_id, int64_t size)
{
	pg_store *s = (pg_store *)base;
	int rc = check_id(group_id);
	if (rc != AIQ_OK)
		return rc;
	char n[24];
	snprintf(n, sizeof n, "%lld", (long long)size);
	const char *vals[] = {group_id, n};
	pthread_mutex_lock(&s->lock);
	rc = run(s, NULL, "setting a chord's size in",
	         "INSERT INTO aiq_chords (group_id, size) VALUES ($1, $2::int8) "
	         "ON CONFLICT (group_id) DO UPDATE SET size = EXCLUDED.size, updated_at = now()",
	         2, vals);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

static int pg_chord_part_return(aiq__store *base, const char *group_id, int64_t group_index,
                                const char *entry, char **ready)
{
	pg_store *s = (pg_store *)base;
	int rc = check_id(group_id);
	char *tid = NULL;
	if (rc == AIQ_OK)
		rc = aiq__store_chord_entry_id(&tid, entry);
	if (rc == AIQ_OK && !aiq__utf8_valid(entry, strlen(entry)))
		rc = aiq__err(AIQ_EINVAL, "chord %.64s: the part's entry is not valid UTF-8",
		              group_id);
	if (rc != AIQ_OK) {
		free(tid);
		return rc;
	}
	char index[24];
	snprintf(index, sizeof index, "%lld", (long long)group_index);
	const char *vals[] = {group_id, group_index >= 0 ? index : NULL, tid, entry,
	                      s->expires_text};
	PGresult *res = NULL;
	pthread_mutex_lock(&s->lock);
	rc = run(s, &res, "returning a chord part to",
	         "SELECT aiq_chord_part_return($1, $2::int8, $3, $4, $5::int8)", 5, vals);
	bool done = rc == AIQ_OK && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	res = NULL;
	if (done)
		rc = run(s, &res, "reading a chord's parts from",
		         "SELECT '[' || string_agg(entry, ',' ORDER BY group_index NULLS LAST, "
		         "entry) || ']' FROM aiq_chord_parts WHERE group_id = $1",
		         1, vals);
	pthread_mutex_unlock(&s->lock);
	if (done && rc == AIQ_OK) {
		if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
			rc = aiq__err(AIQ_ESTORE, "chord %.64s: its parts are gone", group_id);
		else if (!(*ready = strdup(PQgetvalue(res, 0, 0))))
			rc = aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
	}
	PQclear(res);
	free(tid);
	return rc;
}

/* The parts go with the chord's row (ON DELETE CASCADE). */
static int pg_chord_done(aiq__store *base, const char *group_id)
{
	pg_store *s = (pg_store *)base;
	int rc = check_id(group_id);
	if (rc != AIQ_OK)
		return rc;
	const char *vals[] = {group_id};
	pthread_mutex_lock(&s->lock);
	rc = run(s, NULL, "deleting a chord from", "DELETE FROM aiq_chords WHERE group_id = $1", 1,
	         vals);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* ---- coordination state (store.h, migration 6) ---------------------------------- */

#define COORD_SWEEP_EVERY_MS 60000

/* Delete ended buckets, claims and leases at most once a minute (lock
 * held): rows left over only take room, since each call ignores ended
 * ones. A failure is logged and tried again a minute later. */
static void coord_sweep(pg_store *s)
{
	int64_t now = aiq__mono_ms();
	if (now < s->next_coord_sweep_ms)
		return;
	s->next_coord_sweep_ms = now + COORD_SWEEP_EVERY_MS;
	if (run(s, NULL, "deleting ended rate limit buckets, unique keys and leases from",
	        "WITH b AS (DELETE FROM aiq_buckets WHERE full_at < clock_timestamp()), "
	        "c AS (DELETE FROM aiq_claims WHERE expires_at <= clock_timestamp()) "
	        "DELETE FROM aiq_leases WHERE expires_at <= clock_timestamp()",
	        0, NULL) != AIQ_OK)
		aiq__log(AIQ_LOG_WARNING, "%s", aiq_error_last());
}

/* Run a coordination statement and hand back its one row (lock taken). */
static int coord_run(pg_store *s, PGresult **out, const char *what, const char *sql, int nparams,
                     const char *const *values)
{
	pthread_mutex_lock(&s->lock);
	coord_sweep(s);
	int rc = run(s, out, what, sql, nparams, values);
	pthread_mutex_unlock(&s->lock);
	if (rc == AIQ_OK && out && PQntuples(*out) != 1) {
		PQclear(*out);
		*out = NULL;
		rc = aiq__err(AIQ_ESTORE, "%s PostgreSQL at %s: no row", what, s->safe_url);
	}
	return rc;
}

static int pg_bucket(aiq__store *base, int64_t *wait_us, double *tokens, const char *key,
                     double rate, double burst, double cost, bool take)
{
	pg_store *s = (pg_store *)base;
	char r[40], b[40], c[40];
	snprintf(r, sizeof r, "%.17g", rate);
	snprintf(b, sizeof b, "%.17g", burst);
	snprintf(c, sizeof c, "%.17g", cost);
	const char *vals[] = {key, r, b, c, take ? "t" : "f"};
	PGresult *res = NULL;
	int rc = coord_run(s, &res, "taking from a rate limit bucket in",
	                   "SELECT wait_us, tokens FROM aiq_bucket($1, $2::float8, $3::float8, "
	                   "$4::float8, $5::boolean)",
	                   5, vals);
	if (rc == AIQ_OK) {
		*wait_us = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		*tokens = strtod(PQgetvalue(res, 0, 1), NULL);
	}
	PQclear(res);
	return rc;
}

static int pg_claim(aiq__store *base, char **holder, const char *key, const char *value,
                    int64_t ttl_ms)
{
	pg_store *s = (pg_store *)base;
	char ttl[24];
	snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
	const char *vals[] = {key, value, ttl};
	PGresult *res = NULL;
	int rc = coord_run(s, &res, "claiming a unique key in",
	                   "SELECT aiq_claim($1, $2, $3::int8)", 3, vals);
	/* A retried call that had claimed already finds itself. */
	if (rc == AIQ_OK && !PQgetisnull(res, 0, 0) && strcmp(PQgetvalue(res, 0, 0), value) != 0 &&
	    (*holder = strdup(PQgetvalue(res, 0, 0))) == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	PQclear(res);
	return rc;
}

static int pg_release(aiq__store *base, const char *key, const char *value)
{
	const char *vals[] = {key, value};
	return coord_run((pg_store *)base, NULL, "releasing a unique key in",
	                 "DELETE FROM aiq_claims WHERE key = $1 AND value = $2", 2, vals);
}

static int pg_lease_take(aiq__store *base, bool *got, const char *key, const char *member,
                         long limit, int64_t lease_ms)
{
	pg_store *s = (pg_store *)base;
	char lim[24], ms[24];
	snprintf(lim, sizeof lim, "%ld", limit);
	snprintf(ms, sizeof ms, "%lld", (long long)lease_ms);
	const char *vals[] = {key, member, lim, ms};
	PGresult *res = NULL;
	int rc = coord_run(s, &res, "taking a concurrency slot in",
	                   "SELECT aiq_lease_take($1, $2, $3::int8, $4::int8)", 4, vals);
	if (rc == AIQ_OK)
		*got = PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	return rc;
}

static int pg_lease_renew(aiq__store *base, const char *key, const char *member, int64_t lease_ms)
{
	char ms[24];
	snprintf(ms, sizeof ms, "%lld", (long long)lease_ms);
	const char *vals[] = {key, member, ms};
	return coord_run((pg_store *)base, NULL, "renewing a concurrency slot in",
	                 "UPDATE aiq_leases SET expires_at = clock_timestamp() + "
	                 "$3::int8 * interval '1 millisecond' WHERE key = $1 AND member = $2",
	                 3, vals);
}

static int pg_lease_drop(aiq__store *base, const char *key, const char *member)
{
	const char *vals[] = {key, member};
	return coord_run((pg_store *)base, NULL, "giving back a concurrency slot in",
	                 "DELETE FROM aiq_leases WHERE key = $1 AND member = $2", 2, vals);
}

/* ---- the listener thread ----------------------------------------------------- */

/* Open the listener's connection without blocking past the connect timeout
 * or a stop request, and LISTEN. NULL on failure (the reason is logged). */
static PGconn *listener_connect(pg_store *s)
{
	const char *kw[5], *val[5];
	conn_params(s, kw, val);
	PGconn *c = PQconnectStartParams(kw, val, 1);
	if (c == NULL)
		return NULL;
	PQsetNoticeReceiver(c, on_notice, s);
	int64_t deadline = aiq__mono_ms() + s->connect_timeout_ms;
	PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
	while (PQstatus(c) != CONNECTION_BAD && ps != PGRES_POLLING_OK &&
	       ps != PGRES_POLLING_FAILED) {
		int64_t left = deadline - aiq__mono_ms();
		if (left <= 0 || atomic_load(&s->stop))
			break;
		struct pollfd p[2] = {
		        {PQsocket(c), (short)(ps == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0},
		        {s->wake[0], POLLIN, 0},
		};
		int n = poll(p, 2, (int)(left > 1000 ? 1000 : left));
		if (n < 0 && errno != EINTR)
			break;
		if (n > 0 && p[1].revents)
			break;
		if (n > 0)
			ps = PQconnectPoll(c);
	}
	if (ps == PGRES_POLLING_OK && PQstatus(c) == CONNECTION_OK) {
		PGresult *res = PQexec(c, "LISTEN " AIQ__PG_NOTIFY_CHANNEL);
		bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
		PQclear(res);
		if (ok)
			return c;
	}
	if (!atomic_load(&s->stop)) {
		char *m = clean_message(s->secret, PQerrorMessage(c));
		aiq__log(AIQ_LOG_DEBUG, "PostgreSQL at %s: listener cannot connect: %s",
		         s->safe_url, m ? m : "?");
		free(m);
	}
	PQfinish(c);
	return NULL;
}

static void set_listening(pg_store *s, bool on)
{
	pthread_mutex_lock(&s->wlock);
	s->listening = on;
	s->epoch++;
	pthread_cond_broadcast(&s->wcond);
	pthread_mutex_unlock(&s->wlock);
}

/* Sleep ms, or less when a stop is requested. */
static void listener_pause(pg_store *s, int64_t ms)
{
	struct pollfd p = {s->wake[0], POLLIN, 0};
	poll(&p, 1, (int)ms);
}

static void on_notify(pg_store *s, PGconn *c, const char *id)
{
	pthread_mutex_lock(&s->wlock);
	bool any = false;
	for (waiter *w = s->waiters; w; w = w->next) {
		if (strcmp(w->id, id) == 0) {
			w->fired = true;
			any = true;
		}
	}
	if (any)
		pthread_cond_broadcast(&s->wcond);
	aiq__store_notify_fn fn = s->fn;
	void *ud = s->userdata;
	if (fn)
		s->inflight++;
	pthread_mutex_unlock(&s->wlock);
	if (fn == NULL)
		return;

	const char *vals[] = {id, s->expires_text};
	PGresult *res = PQexecParams(c, GET_SQL, 2, NULL, vals, NULL, NULL, 0);
	aiq_result *r = NULL;
	if (PQresultStatus(res) == PGRES_TUPLES_OK && row_to_result(&r, id, res) == AIQ_OK &&
	    aiq_state_is_ready(r->state))
		fn(r, ud);
	aiq_result_free(r);
	PQclear(res);

	pthread_mutex_lock(&s->wlock);
	if (--s->inflight == 0)
		pthread_cond_broadcast(&s->idle);
	pthread_mutex_unlock(&s->wlock);
}

static void *listener_main(void *arg)
{
	pg_store *s = arg;
	PGconn *c = NULL;
	int64_t backoff = 0;
	while (!atomic_load(&s->stop)) {
		if (c == NULL) {
			if (backoff)
				listener_pause(s, backoff);
			if (atomic_load(&s->stop))
				break;
			c = listener_connect(s);
			if (c == NULL) {
				backoff = backoff ? backoff * 2 : 100;
				if (backoff > LISTEN_BACKOFF_MAX)
					backoff = LISTEN_BACKOFF_MAX;
				continue;
			}
			backoff = 0;
			set_listening(s, true);
		}
		struct pollfd p[2] = {{PQsocket(c), POLLIN, 0}, {s->wake[0], POLLIN, 0}};
		int n = poll(p, 2, -1);
		if (n < 0 && errno != EINTR)
			break;
		if (n <= 0)
			continue;
		if (p[1].revents)
			break;
		if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK) {
			set_listening(s, false);
			PQfinish(c);
			c = NULL;
			continue;
		}
		PGnotify *note;
		while ((note = PQnotifies(c)) != NULL) {
			on_notify(s, c, note->extra);
			PQfreemem(note);
		}
	}
	PQfinish(c);
	set_listening(s, false);
	return NULL;
}

/* Start the listener thread once (wlock held). */
static int listener_start(pg_store *s)
{
	if (s->listener_started)
		return AIQ_OK;
	if (pipe(s->wake) != 0)
		return aiq__err(AIQ_EIO, "cannot create a pipe for the PostgreSQL listener: %s",
		                strerror(errno));
	fcntl(s->wake[0], F_SETFD, FD_CLOEXEC);
	fcntl(s->wake[1], F_SETFD, FD_CLOEXEC);
	int err = pthread_create(&s->listener, NULL, listener_main, s);
	if (err != 0) {
		close(s->wake[0]);
		close(s->wake[1]);
		return aiq__err(AIQ_ENOMEM, "cannot start the PostgreSQL listener thread: %s",
		                strerror(err));
	}
	s->listener_started = true;
	return AIQ_OK;
}

/* ---- wait and subscribe --------------------------------------------------------- */

static int pg_wait(aiq__store *base, aiq_result **out, const char *task_id, int64_t timeout_ms)
{
	pg_store *s = (pg_store *)base;
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "wait needs an output pointer");
	*out = NULL;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	int64_t deadline = -1;
	if (timeout_ms >= 0 && timeout_ms < INT64_MAX / 4)
		deadline = aiq__mono_ms() + timeout_ms;

	waiter me = {task_id, false, NULL};
	pthread_mutex_lock(&s->wlock);
	rc = listener_start(s);
	if (rc == AIQ_OK) {
		me.next = s->waiters;
		s->waiters = &me;
	}
	pthread_mutex_unlock(&s->wlock);
	if (rc != AIQ_OK)
		return rc;

	aiq_result *r = NULL;
	for (;;) {
		pthread_mutex_lock(&s->wlock);
		bool live = s->listening;
		uint64_t epoch = s->epoch;
		me.fired = false;
		pthread_mutex_unlock(&s->wlock);

		/* Read after LISTEN is active: a result committed before this read
		 * is in it, one committed after fires the notification. */
		aiq_result_free(r);
		r = NULL;
		rc = read_task(s, &r, task_id);
		if (rc == AIQ_OK && aiq_state_is_ready(r->state))
			break;
		int64_t now = aiq__mono_ms();
		if (deadline >= 0 && now >= deadline) {
			if (rc == AIQ_OK)
				rc = AIQ_ETIMEDOUT;
			break;
		}
		int64_t until = now + (live && rc == AIQ_OK ? WAIT_RECHECK_MS : WAIT_POLL_MS);
		if (deadline >= 0 && deadline < until)
			until = deadline;
		struct timespec ts = aiq__timespec_ms(until);
		pthread_mutex_lock(&s->wlock);
		while (!me.fired && s->epoch == epoch && aiq__mono_ms() < until)
			pthread_cond_timedwait(&s->wcond, &s->wlock, &ts);
		pthread_mutex_unlock(&s->wlock);
	}

	pthread_mutex_lock(&s->wlock);
	waiter **pp = &s->waiters;
	while (*pp != &me)
		pp = &(*pp)->next;
	*pp = me.next;
	pthread_mutex_unlock(&s->wlock);

	if (rc == AIQ_OK || rc == AIQ_ETIMEDOUT) {
		*out = r;
		if (rc == AIQ_ETIMEDOUT)
			return aiq__err(AIQ_ETIMEDOUT, "task %.64s did not finish within %lld ms",
			                task_id, (long long)timeout_ms);
		return AIQ_OK;
	}
	aiq_result_free(r);
	return rc;
}

static int pg_subscribe(aiq__store *base, aiq__store_notify_fn fn, void *userdata)
{
	pg_store *s = (pg_store *)base;
	int rc = AIQ_OK;
	pthread_mutex_lock(&s->wlock);
	if (fn)
		rc = listener_start(s);
	/* Callbacks run on the listener thread: there, one call is our caller. */
	unsigned own = s->listener_started && pthread_equal(pthread_self(), s->listener) ? 1 : 0;
	s->fn = NULL;
	while (s->inflight > own)
		pthread_cond_wait(&s->idle, &s->wlock);
	if (rc == AIQ_OK) {
		s->fn = fn;
		s->userdata = fn ? userdata : NULL;
	}
	pthread_mutex_unlock(&s->wlock);
	return rc;
}

/* ---- open and close ------------------------------------------------------------ */

static void pg_close(aiq__store *base)
{
	if (base == NULL)
		return;
	pg_store *s = (pg_store *)base;
	if (s->listener_started) {
		atomic_store(&s->stop, true);
		ssize_t n = write(s->wake[1], "x", 1);
		(void)n;
		pthread_join(s->listener, NULL);
		close(s->wake[0]);
		close(s->wake[1]);
	}
	PQfinish(s->conn);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->wlock);
	pthread_cond_destroy(&s->wcond);
	pthread_cond_destroy(&s->idle);
	free(s->url);
	free(s->safe_url);
	free(s->secret[0]);
	free(s->secret[1]);
	free(s->analyze_task_name);
	free(s);
}

/* The password as written in the URL's userinfo (still percent-encoded), so
 * it can be scrubbed from messages even when libpq cannot parse the URL. */
static char *raw_password(const char *url)
{
	const char *auth = strstr(url, "://");
	if (auth == NULL)
		return NULL;
	auth += 3;
	const char *end = auth + strcspn(auth, "?#");
	const char *at = NULL;
	for (const char *p = auth; p < end; p++)
		if (*p == '@')
			at = p;
	const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
	if (colon == NULL || colon + 1 == at)
		return NULL;
	return aiq__strndup(colon + 1, (size_t)(at - colon - 1));
}

static int init_sync(pg_store *s)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int err = pthread_cond_init(&s->wcond, &ca);
	pthread_condattr_destroy(&ca);
	if (err != 0)
		return aiq__err(AIQ_ENOMEM, "out of memory opening the PostgreSQL store");
	if (pthread_cond_init(&s->idle, NULL) != 0) {
		pthread_cond_destroy(&s->wcond);
		return aiq__err(AIQ_ENOMEM, "out of memory opening the PostgreSQL store");
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->wlock, NULL);
	return AIQ_OK;
}

static int pg_open(aiq__store **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL || url == NULL)
		return aiq__err(AIQ_EINVAL, "PostgreSQL result store needs a URL");
	*out = NULL;
	if (strncasecmp(url, "postgresql://", 13) != 0 && strncasecmp(url, "postgres://", 11) != 0)
		return aiq__err(AIQ_EINVAL, "not a postgresql:// URL");
	pg_store *s = calloc(1, sizeof *s);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory opening the PostgreSQL store");
	if (init_sync(s) != AIQ_OK) {
		free(s);
		return AIQ_ENOMEM;
	}
	s->base.ops = &aiq__postgres_store_ops;
	int rc = AIQ_OK;
	s->url = strdup(url);
	s->safe_url = aiq__url_redact(url);
	s->secret[1] = raw_password(url);
	const char *task = aiq__cfg_str(cfg, AIQ_CFG_ANALYZE_TASK_NAME);
	s->analyze_task_name = strdup(task);
	if (!s->url || !s->safe_url || !s->analyze_task_name) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory opening the PostgreSQL store");
		goto fail;
	}

	char *perr = NULL;
	PQconninfoOption *opts = PQconninfoParse(url, &perr);
	if (opts == NULL) {
		char *m = clean_message(s->secret, perr ? perr : "out of memory");
		rc = aiq__err(AIQ_EINVAL, "invalid PostgreSQL URL %s: %s", s->safe_url,
		              m ? m : "out of memory");
		free(m);
		PQfreemem(perr);
		goto fail;
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val && o->val[0])
			s->secret[0] = strdup(o->val);
	PQconninfoFree(opts);

	int64_t timeout_s = aiq__cfg_int(cfg, AIQ_CFG_POSTGRES_CONNECT_TIMEOUT_S);
	s->connect_timeout_ms = timeout_s * 1000;
	snprintf(s->timeout_text, sizeof s->timeout_text, "%lld", (long long)timeout_s);
	int64_t expires = aiq__cfg_int(cfg, AIQ_CFG_POSTGRES_EXPIRES_S);
	if (expires < 0)
		expires = aiq__cfg_int(cfg, AIQ_CFG_RESULT_EXPIRES_S);
	s->expires_s = expires > 0 && expires < TEN_YEARS_S ? expires : 0;
	snprintf(s->expires_text, sizeof s->expires_text, "%lld", (long long)s->expires_s);

	pthread_mutex_lock(&s->lock);
	rc = conn_ready(s);
	if (rc == AIQ_OK)
		rc = migrate(s);
	pthread_mutex_unlock(&s->lock);
	if (rc != AIQ_OK)
		goto fail;
	*out = &s->base;
	return AIQ_OK;
fail:;
	/* Keep the message: closing must not overwrite it. */
	char msg[1024];
	snprintf(msg, sizeof msg, "%s", aiq_error_last());
	pg_close(&s->base);
	return aiq__err(rc, "%s", msg);
}

static const char *const postgres_schemes[] = {"postgresql", "postgres", NULL};

const aiq__store_ops aiq__postgres_store_ops = {
        .name = "postgres",
        .schemes = postgres_schemes,
        .caps = AIQ__STORE_CAP_NOTIFY,
        .open = pg_open,
        .close = pg_close,
        .put = pg_put,
        .get = pg_get,
        .get_batch = pg_get_batch,
        .wait = pg_wait,
        .subscribe = pg_subscribe,
        .ping = pg_ping,
        .forget = pg_forget,
        .chord_set_size = pg_chord_set_size,
        .chord_part_return = pg_chord_part_return,
        .chord_done = pg_chord_done,
        .bucket = pg_bucket,
        .claim = pg_claim,
        .release = pg_release,
        .lease_take = pg_lease_take,
        .lease_renew = pg_lease_renew,
        .lease_drop = pg_lease_drop,
};
