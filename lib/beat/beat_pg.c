/*
 * The scheduler's lease and state in PostgreSQL (beat.url = postgresql://…),
 * the same design as in Redis (beat.c): a lease row per schedule name whose
 * token comes from a sequence, a row per sent slot (primary key = the
 * claim), and the newest slot sent per entry. The claim locks the lease row
 * (FOR UPDATE), so a takeover waits for a claim in flight and a stale
 * leader's claim finds the new token.
 */
#include "beat_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef AIQ_HAVE_POSTGRES

#include <libpq-fe.h>

struct aiq__beat_pg {
	char *url;
	char *name;
	PGconn *conn;
	unsigned dones;
};

static const char schema_sql[] =
        "BEGIN;"
        "SELECT pg_advisory_xact_lock(hashtext('aiq_beat_schema'));"
        "CREATE TABLE IF NOT EXISTS aiq_beat_lease (name text PRIMARY KEY, holder text NOT NULL,"
        " token bigint NOT NULL, expires_at timestamptz NOT NULL);"
        "CREATE SEQUENCE IF NOT EXISTS aiq_beat_fence;"
        "CREATE TABLE IF NOT EXISTS aiq_beat_sent (name text, entry text, slot bigint,"
        " holder text NOT NULL, sent_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (name, entry, slot));"
        "CREATE TABLE IF NOT EXISTS aiq_beat_last (name text, entry text, slot bigint NOT NULL,"
        " PRIMARY KEY (name, entry));"
        "COMMIT;";

static void quiet(void *arg, const char *message)
{
	(void)arg, (void)message;
}

static int connect_pg(aiq__beat_pg *p)
{
	if (p->conn && PQstatus(p->conn) == CONNECTION_OK)
		return AIQ_OK;
	if (p->conn)
		PQfinish(p->conn);
	const char *kw[] = {"dbname", "connect_timeout", NULL};
	const char *val[] = {p->url, "5", NULL};
	p->conn = PQconnectdbParams(kw, val, 1);
	if (PQstatus(p->conn) != CONNECTION_OK)
		return aiq__err(AIQ_ESTORE, "beat.url: PostgreSQL: %.300s",
		                PQerrorMessage(p->conn));
	PQsetNoticeProcessor(p->conn, quiet, NULL); /* "already exists, skipping" */
	PGresult *r = PQexec(p->conn, schema_sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	PQclear(r);
	if (!ok) {
		int rc = aiq__err(AIQ_ESTORE, "beat.url: creating the tables: %.300s",
		                  PQerrorMessage(p->conn));
		PQfinish(p->conn);
		p->conn = NULL;
		return rc;
	}
	return AIQ_OK;
}

/* Run one statement; *res = the result on success (PQclear it). */
static int run(aiq__beat_pg *p, PGresult **res, const char *sql, int n, const char *const *args)
{
	*res = NULL;
	for (int attempt = 0; attempt < 2; attempt++) {
		int rc = connect_pg(p);
		if (rc != AIQ_OK)
			return rc;
		PGresult *r = PQexecParams(p->conn, sql, n, NULL, args, NULL, NULL, 0);
		ExecStatusType st = PQresultStatus(r);
		if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
			*res = r;
			return AIQ_OK;
		}
		PQclear(r);
		if (PQstatus(p->conn) == CONNECTION_OK)
			break; /* an SQL error: retrying would not help */
	}
	return aiq__err(AIQ_ESTORE, "beat.url: PostgreSQL: %.300s",
	                p->conn ? PQerrorMessage(p->conn) : "no connection");
}

int aiq__beat_pg_open(aiq__beat_pg **out, const char *url, const char *name)
{
	*out = NULL;
	aiq__beat_pg *p = calloc(1, sizeof *p);
	if (p == NULL || !(p->url = aiq__strdup(url)) || !(p->name = aiq__strdup(name))) {
		aiq__beat_pg_free(p);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	*out = p;
	return AIQ_OK;
}

void aiq__beat_pg_free(aiq__beat_pg *p)
{
	if (p == NULL)
		return;
	if (p->conn)
		PQfinish(p->conn);
	free(p->url);
	free(p->name);
	free(p);
}

int aiq__beat_pg_lease(aiq__beat_pg *p, int64_t *token, const char *id, int64_t lease_ms)
{
	*token = 0;
	char ms[32];
	snprintf(ms, sizeof ms, "%lld", (long long)lease_ms);
	const char *args[] = {p->name, id, ms};
	PGresult *r;
	int rc = run(
	        p, &r,
	        "INSERT INTO aiq_beat_lease AS l (name, holder, token, expires_at) VALUES ($1, $2,"
	        " nextval('aiq_beat_fence'), clock_timestamp() + $3::bigint * interval '1 ms')"
	        " ON CONFLICT (name) DO UPDATE SET token = CASE WHEN l.holder = EXCLUDED.holder"
	        " AND l.expires_at > clock_timestamp() THEN l.token ELSE EXCLUDED.token END,"
	        " holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
	        " WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp()"
	        " RETURNING token",
	        3, args);
	if (rc == AIQ_OK && PQntuples(r) == 1)
		*token = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return rc;
}

int aiq__beat_pg_claim(aiq__beat_pg *p, int *out, const char *id, int64_t token, const char *entry,
                       int64_t slot)
{
	*out = 0;
	char tok[32], sl[32];
	snprintf(tok, sizeof tok, "%lld", (long long)token);
	snprintf(sl, sizeof sl, "%lld", (long long)slot);
	const char *args[] = {p->name, id, tok, entry, sl};
	PGresult *r;
	int rc = run(p, &r,
	             "WITH l AS (SELECT 1 FROM aiq_beat_lease WHERE name = $1 AND holder = $2 AND"
	             " token = $3::bigint AND expires_at > clock_timestamp() FOR UPDATE),"
	             " ins AS (INSERT INTO aiq_beat_sent (name, entry, slot, holder)"
	             " SELECT $1, $4, $5::bigint, $2 || ' ' || $3 FROM l ON CONFLICT DO NOTHING"
	             " RETURNING 1)"
	             " SELECT (SELECT count(*) FROM l), (SELECT count(*) FROM ins)",
	             5, args);
	if (rc == AIQ_OK && PQntuples(r) == 1)
		*out = strcmp(PQgetvalue(r, 0, 0), "0") == 0   ? -1
		       : strcmp(PQgetvalue(r, 0, 1), "0") == 0 ? 0
		                                               : 1;
	PQclear(r);
	return rc;
}

int aiq__beat_pg_done(aiq__beat_pg *p, const char *entry, int64_t slot, int64_t keep_ms)
{
	char sl[32], keep[32];
	snprintf(sl, sizeof sl, "%lld", (long long)slot);
	snprintf(keep, sizeof keep, "%lld", (long long)keep_ms);
	const char *args[] = {p->name, entry, sl};
	PGresult *r;
	int rc = run(p, &r,
	             "INSERT INTO aiq_beat_last (name, entry, slot) VALUES ($1, $2, $3::bigint)"
	             " ON CONFLICT (name, entry) DO UPDATE SET"
	             " slot = GREATEST(aiq_beat_last.slot, EXCLUDED.slot)",
	             3, args);
	PQclear(r);
	if (rc == AIQ_OK && p->dones++ % 64 == 0) { /* claims older than any catch-up go */
		const char *old[] = {p->name, keep};
		if (run(p, &r,
		        "DELETE FROM aiq_beat_sent WHERE name = $1 AND"
		        " sent_at < now() - $2::bigint * interval '1 ms'",
		        2, old) == AIQ_OK)
			PQclear(r);
	}
	return rc;
}

int aiq__beat_pg_undo(aiq__beat_pg *p, const char *entry, int64_t slot, const char *holder)
{
	char sl[32];
	snprintf(sl, sizeof sl, "%lld", (long long)slot);
	const char *args[] = {p->name, entry, sl, holder};
	PGresult *r;
	int rc =
	        run(p, &r,
	            "DELETE FROM aiq_beat_sent WHERE name = $1 AND entry = $2 AND slot = $3::bigint"
	            " AND holder = $4",
	            4, args);
	PQclear(r);
	return rc;
}

int aiq__beat_pg_release(aiq__beat_pg *p, const char *id, int64_t token)
{
	char tok[32];
	snprintf(tok, sizeof tok, "%lld", (long long)token);
	const char *args[] = {p->name, id, tok};
	PGresult *r;
	int rc = run(
	        p, &r,
	        "DELETE FROM aiq_beat_lease WHERE name = $1 AND holder = $2 AND token = $3::bigint",
	        3, args);
	PQclear(r);
	return rc;
}

int aiq__beat_pg_last(aiq__beat_pg *p, int64_t *slot, const char *entry)
{
	*slot = 0;
	const char *args[] = {p->name, entry};
	PGresult *r;
	int rc = run(p, &r, "SELECT slot FROM aiq_beat_last WHERE name = $1 AND entry = $2", 2,
	             args);
	if (rc == AIQ_OK && PQntuples(r) == 1)
		*slot = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return rc;
}

#else /* no PostgreSQL in this build */

int aiq__beat_pg_open(aiq__beat_pg **out, const char *url, const char *name)
{
	(void)url, (void)name;
	*out = NULL;
	return aiq__err(AIQ_EUNSUPPORTED, "beat.url: this build has no PostgreSQL support");
}

void aiq__beat_pg_free(aiq__beat_pg *p)
{
	(void)p;
}

#define NO_PG aiq__err(AIQ_EUNSUPPORTED, "no PostgreSQL support")
int aiq__beat_pg_lease(aiq__beat_pg *p, int64_t *token, const char *id, int64_t lease_ms)
{
	(void)p, (void)id, (void)lease_ms;
	*token = 0;
	return NO_PG;
}
int aiq__beat_pg_claim(aiq__beat_pg *p, int *out, const char *id, int64_t token, const char *entry,
                       int64_t slot)
{
	(void)p, (void)id, (void)token, (void)entry, (void)slot;
	*out = 0;
	return NO_PG;
}
int aiq__beat_pg_done(aiq__beat_pg *p, const char *entry, int64_t slot, int64_t keep_ms)
{
	(void)p, (void)entry, (void)slot, (void)keep_ms;
	return NO_PG;
}
int aiq__beat_pg_undo(aiq__beat_pg *p, const char *entry, int64_t slot, const char *holder)
{
	(void)p, (void)entry, (void)slot, (void)holder;
	return NO_PG;
}
int aiq__beat_pg_release(aiq__beat_pg *p, const char *id, int64_t token)
{
	(void)p, (void)id, (void)token;
	return NO_PG;
}
int aiq__beat_pg_last(aiq__beat_pg *p, int64_t *slot, const char *entry)
{
	(void)p, (void)entry;
	*slot = 0;
	return NO_PG;
}

#endif
