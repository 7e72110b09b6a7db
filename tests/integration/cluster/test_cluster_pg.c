/*
 * The PostgreSQL result store against a primary with a streaming standby
 * (run.sh starts them once, scripts/services/postgres_standby.sh), through
 * the libpq multi-host URL with target_session_attrs=read-write: the primary
 * is stopped while results are written (every tenth an analysis, which adds
 * an archive row), the standby is promoted, and the writer goes on there.
 * Every result the store accepted is on the new primary, with its archive
 * row. A second pair, replicating synchronously, loses its primary to a
 * crash (kill -9) instead: no acknowledged result is lost either. The lines
 * starting with "cluster:" give the figures.
 */
#include "result_int.h"
#include "store.h"

#include <aiqueue/aiqueue.h>
#include <check.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TOTAL 2000

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

/* The URL of the pair in $var (AIQ_TEST_PG_DIR: asynchronous standby,
 * AIQ_TEST_PG_DIR2: synchronous standby). */
static char *read_url(const char *var)
{
	const char *dir = getenv(var);
	ck_assert_msg(dir != NULL, "%s is not set (run through run.sh)", var);
	char path[1024];
	snprintf(path, sizeof path, "%s/url", dir);
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	static char buf[1024];
	ck_assert_ptr_nonnull(fgets(buf, sizeof buf, f));
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
	return buf;
}

static void standby(const char *var, const char *cmd)
{
	char line[2048];
	snprintf(line, sizeof line, "'%s' %s '%s' >/dev/null", getenv("AIQ_TEST_PG_STANDBY_SH"),
	         cmd, getenv(var));
	ck_assert_msg(system(line) == 0, "postgres_standby.sh %s failed", cmd);
}

/* The library's log, to stdout, counting what libpq reported through it
 * (a server's FATAL on shutdown arrives between statements). */
static atomic_int libpq_logged;

static void log_to_stdout(int level, const char *message, void *userdata)
{
	(void)userdata;
	if (strstr(message, "FATAL:") != NULL)
		atomic_fetch_add(&libpq_logged, 1);
	printf("libaiqueue (%d): %s\n", level, message);
}

/* fd 2 goes to a temporary file from start_capture() to end_capture(),
 * which returns what was written there (NUL-terminated, static). */
static int saved_stderr = -1;
static FILE *captured;

static void start_capture(void)
{
	fflush(stderr);
	captured = tmpfile();
	ck_assert_ptr_nonnull(captured);
	saved_stderr = dup(2);
	ck_assert_int_ge(saved_stderr, 0);
	ck_assert_int_eq(dup2(fileno(captured), 2), 2);
}

static const char *end_capture(void)
{
	static char text[8192];
	fflush(stderr);
	ck_assert_int_eq(dup2(saved_stderr, 2), 2);
	close(saved_stderr);
	rewind(captured);
	size_t n = fread(text, 1, sizeof text - 1, captured);
	text[n] = '\0';
	fclose(captured);
	return text;
}

struct run {
	aiq__store *st;
	int total;
	atomic_int written;
	int failures;   /* puts that failed (the writer tried again later) */
	int estate;     /* retries answered "already stored" */
	int64_t gap_ms; /* longest time from a failed put to the next success */
	char why[512];  /* the first failure */
};

static aiq_result *make(int i)
{
	char id[32], json[160];
	snprintf(id, sizeof id, "pg-%d", i);
	if (i % 10 == 0)
		snprintf(json, sizeof json,
		         "{\"track_id\": \"t-%d\", \"analyzer\": \"wordcount\", \"analysis\": "
		         "{\"words\": %d}}",
		         i, i);
	else
		snprintf(json, sizeof json, "%d", i);
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq__result_new(&r, id, AIQ_STATE_SUCCESS), AIQ_OK);
	ck_assert_int_eq(aiq__result_set_json(r, json), AIQ_OK);
	aiq__result_mark_done(r);
	return r;
}

/* A worker's loop: store each result; on a failure, wait and store it
 * again (a result write is idempotent). */
static void *writer(void *arg)
{
	struct run *r = arg;
	for (int i = 0; i < r->total; i++) {
		aiq_result *res = make(i);
		int64_t down_since = 0;
		for (;;) {
			int rc = aiq__store_put(r->st, res);
			/* AIQ_ESTATE: a final state is stored for this id already
			 * (the first try committed, then its connection died); the
			 * worker takes it as stored, and the read-back checks it. */
			if (rc == AIQ_ESTATE)
				r->estate++;
			if (rc == AIQ_OK || rc == AIQ_ESTATE)
				break;
			if (r->why[0] == '\0')
				snprintf(r->why, sizeof r->why, "%s", aiq_error_last());
			r->failures++;
			if (down_since == 0)
				down_since = mono_ms();
			sleep_ms(50);
		}
		if (down_since && mono_ms() - down_since > r->gap_ms)
			r->gap_ms = mono_ms() - down_since;
		aiq_result_free(res);
		atomic_fetch_add(&r->written, 1);
	}
	return NULL;
}

/* Writes r->total results while the primary is stopped (crash: kill -9 of
 * every server process; otherwise a fast shutdown) and the standby then
 * promoted, as an operator or a supervisor would; then checks that every
 * result the store acknowledged is on the new primary. */
static void failover_run(const char *var, bool crash)
{
	const char *url = read_url(var);
	ck_assert_msg(aiq_url_check_store(url) == AIQ_OK, "url check: %s", aiq_error_last());
	static struct run r;
	memset(&r, 0, sizeof r);
	r.total = crash ? TOTAL / 2 : TOTAL;
	atomic_store(&libpq_logged, 0);
	aiq_log_set_handler(log_to_stdout, NULL, NULL);
	start_capture();
	int rc = aiq__store_open(&r.st, url, NULL);
	ck_assert_msg(rc == AIQ_OK, "open %s: %s", url, aiq_error_last());
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, writer, &r), 0);
	while (atomic_load(&r.written) < r.total * 3 / 10)
		sleep_ms(5);
	int at = atomic_load(&r.written);
	int64_t t0 = mono_ms();
	standby(var, crash ? "kill-primary" : "stop-primary");
	int64_t stopped = mono_ms();
	standby(var, "promote");
	int64_t promoted = mono_ms();
	pthread_join(th, NULL);
	/* libpq writes nothing on stderr itself: what the server said goes
	 * through the library's log (regression: "FATAL:  terminating
	 * connection due to administrator command" was printed raw). */
	const char *raw_stderr = end_capture();
	aiq_log_set_handler(NULL, NULL, NULL);
	fflush(stdout);
	if (raw_stderr[0])
		fprintf(stderr, "written to stderr during the failover:\n%s\n", raw_stderr);
	ck_assert_msg(strstr(raw_stderr, "FATAL") == NULL, "libpq wrote to stderr: %s", raw_stderr);

	/* Read everything back on the new primary. */
	int lost = 0, wrong = 0;
	for (int i = 0; i < r.total; i++) {
		char id[32];
		snprintf(id, sizeof id, "pg-%d", i);
		aiq_result *got = NULL;
		rc = aiq__store_get(r.st, &got, id);
		ck_assert_msg(rc == AIQ_OK, "get %s: %s", id, aiq_error_last());
		if (aiq_result_state(got) != AIQ_STATE_SUCCESS)
			lost++;
		else if (i % 10 != 0 && atoi(aiq_result_json(got)) != i)
			wrong++;
		aiq_result_free(got);
	}
	PGconn *c = PQconnectdb(url);
	ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
	PGresult *res = PQexec(c, "SELECT count(*), pg_is_in_recovery() FROM aiq_analyses "
	                          "WHERE task_id LIKE 'pg-%'");
	ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
	long archived = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	bool recovery = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	PQclear(res);
	PQfinish(c);
	fprintf(stderr,
	        "cluster: postgres primary %s at %d of %d results (%s %.2f s, promote "
	        "%.2f s); written %d, lost %d, wrong %d, archive rows %ld of %d, failed puts "
	        "retried by the writer %d, retries found already stored %d, libpq messages "
	        "logged %d, unavailability window "
	        "%.2f s%s%s\n",
	        crash ? "killed (kill -9, synchronous standby)" : "stopped", at, r.total,
	        crash ? "kill" : "stop", (double)(stopped - t0) / 1000.0,
	        (double)(promoted - stopped) / 1000.0, atomic_load(&r.written), lost, wrong,
	        archived, r.total / 10, r.failures, r.estate, atomic_load(&libpq_logged),
	        (double)r.gap_ms / 1000.0, r.why[0] ? "; first failure: " : "", r.why);
	ck_assert(!recovery);
	ck_assert_int_eq(lost, 0);
	ck_assert_int_eq(wrong, 0);
	ck_assert_int_eq(archived, r.total / 10);
	aiq__store_close(r.st);
}

START_TEST(standby_promoted)
{
	failover_run("AIQ_TEST_PG_DIR", false);
}
END_TEST

/* A crash of the primary (no shutdown, nothing flushed), the synchronous
 * standby promoted after it: no acknowledged result is lost. */
START_TEST(primary_killed)
{
	failover_run("AIQ_TEST_PG_DIR2", true);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cluster-pg");
	TCase *tc = tcase_create("cluster-pg");
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, standby_promoted);
	tcase_add_test(tc, primary_killed);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
