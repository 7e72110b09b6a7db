/*
 * Embeddings in PostgreSQL (postgres_vec.h). One connection per handle,
 * behind a mutex; a statement that failed because the connection broke runs
 * once more on a fresh one (every statement here is idempotent).
 *
 * Similarity is computed by the server: for pgvector `1 - (a <=> b)` (its
 * cosine distance), ordered by the distance; for real[] the SQL function
 * aiq_cosine() the migration created, which reads both arrays with unnest
 * (a sequential scan: docs/postgres.md gives the measured cost). Only rows
 * of the query's model and size are compared.
 */
#include "postgres_vec.h"

#include "config_int.h"
#include "store.h"
#include "url.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct aiq__pgvec {
	char *url;
	char *safe_url;
	char timeout_text[24];
	bool pgvector;
	pthread_mutex_t lock;
	PGconn *conn;
};

#define NEAR_SQL(score, order)                                                                     \
	"SELECT track_id, " score " AS score FROM aiq_embeddings "                                 \
	"WHERE model = $2 AND dims = $3::int AND track_id IS DISTINCT FROM $4 "                    \
	"ORDER BY " order ", track_id LIMIT $5::int"

/* $1 the query vector's text, $2 model, $3 dims, $4 a track to leave out
 * (NULL: none), $5 k. */
static const char near_real_sql[] =
        NEAR_SQL("aiq_cosine(embedding, $1::real[])", "score DESC NULLS LAST");
static const char near_vector_sql[] =
        NEAR_SQL("1 - (embedding <=> $1::vector)", "embedding <=> $1::vector");

/* The stored vector of a track as the query's text, in the column's own
 * text form (so it can be cast back), with its model and size. */
static const char track_sql[] =
        "SELECT embedding::text, model, dims FROM aiq_embeddings WHERE track_id = $1";

static const char put_real_sql[] =
        "INSERT INTO aiq_embeddings (track_id, model, dims, embedding) "
        "VALUES ($1, $2, $3::int, $4::real[]) ON CONFLICT (track_id) DO UPDATE SET "
        "model = EXCLUDED.model, dims = EXCLUDED.dims, embedding = EXCLUDED.embedding, "
        "updated_at = now()";
static const char put_vector_sql[] =
        "INSERT INTO aiq_embeddings (track_id, model, dims, embedding) "
        "VALUES ($1, $2, $3::int, $4::vector) ON CONFLICT (track_id) DO UPDATE SET "
        "model = EXCLUDED.model, dims = EXCLUDED.dims, embedding = EXCLUDED.embedding, "
        "updated_at = now()";

static int pq_error(const aiq__pgvec *v, const PGresult *res, const char *what)
{
	const char *m = res ? PQresultErrorMessage(res) : "";
	if (*m == '\0')
		m = PQerrorMessage(v->conn);
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char line[512];
	snprintf(line, sizeof line, "%s", m);
	for (char *p = line; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	size_t n = strlen(line);
	while (n > 0 && line[n - 1] == ' ')
		line[--n] = '\0';
	return aiq__err(AIQ_ESTORE, "PostgreSQL at %s: %s: %s%s%s%s", v->safe_url, what, line,
	                state ? " (SQLSTATE " : "", state ? state : "", state ? ")" : "");
}

static int connect_now(aiq__pgvec *v)
{
	if (v->conn && PQstatus(v->conn) == CONNECTION_OK)
		return AIQ_OK;
	if (v->conn) {
		PQreset(v->conn);
	} else {
		const char *kw[] = {"connect_timeout", "application_name", "dbname",
		                    "client_encoding", NULL};
		const char *val[] = {v->timeout_text, "libaiqueue", v->url, "UTF8", NULL};
		v->conn = PQconnectdbParams(kw, val, 1);
	}
	if (v->conn && PQstatus(v->conn) == CONNECTION_OK)
		return AIQ_OK;
	if (v->conn == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory connecting to PostgreSQL");
	return pq_error(v, NULL, "cannot connect");
}

/* One parameterized statement (lock held); *out receives a query's rows. */
static int run(aiq__pgvec *v, PGresult **out, const char *what, const char *sql, int nparams,
               const char *const *values)
{
	*out = NULL;
	for (int attempt = 0;; attempt++) {
		int rc = connect_now(v);
		if (rc != AIQ_OK)
			return rc;
		PGresult *res = PQexecParams(v->conn, sql, nparams, NULL, values, NULL, NULL, 0);
		ExecStatusType st = PQresultStatus(res);
		if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
			*out = res;
			return AIQ_OK;
		}
		if (PQstatus(v->conn) != CONNECTION_OK && attempt == 0) {
			PQclear(res);
			continue;
		}
		rc = pq_error(v, res, what);
		PQclear(res);
		return rc;
	}
}

void aiq__pgvec_close(aiq__pgvec *v)
{
	if (v == NULL)
		return;
	PQfinish(v->conn);
	pthread_mutex_destroy(&v->lock);
	free(v->url);
	free(v->safe_url);
	free(v);
}

int aiq__pgvec_open(aiq__pgvec **out, const char *url, const aiq_config *cfg)
{
	*out = NULL;
	/* The store's open applies the migrations under its advisory lock. */
	aiq__store *store = NULL;
	int rc = aiq__store_open(&store, url, cfg);
	aiq__store_close(store);
	if (rc != AIQ_OK)
		return rc;
	aiq__pgvec *v = calloc(1, sizeof *v);
	if (v == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	pthread_mutex_init(&v->lock, NULL);
	v->url = aiq__strdup(url);
	v->safe_url = aiq__url_redact(url);
	snprintf(v->timeout_text, sizeof v->timeout_text, "%lld",
	         (long long)aiq__cfg_int(cfg, AIQ_CFG_POSTGRES_CONNECT_TIMEOUT_S));
	if (!v->url || !v->safe_url) {
		aiq__pgvec_close(v);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	PGresult *res = NULL;
	const char *none[1] = {NULL};
	rc = run(v, &res, "reading the embeddings column type",
	         "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
	         "WHERE attrelid = 'aiq_embeddings'::regclass AND attname = 'embedding'",
	         0, none);
	if (rc == AIQ_OK) {
		v->pgvector =
		        PQntuples(res) == 1 && strncmp(PQgetvalue(res, 0, 0), "vector", 6) == 0;
		PQclear(res);
		*out = v;
		return AIQ_OK;
	}
	char msg[1024];
	snprintf(msg, sizeof msg, "%s", aiq_error_last());
	aiq__pgvec_close(v);
	return aiq__err(rc, "%s", msg);
}

const char *aiq__pgvec_backend(const aiq__pgvec *v)
{
	return v->pgvector ? "pgvector" : "real[]";
}

/* "{a,b,…}" for real[], "[a,b,…]" for vector; malloc. */
static char *vector_text(const double *vec, size_t dims, bool pgvector)
{
	size_t cap = dims * 18 + 3, o = 0;
	char *t = malloc(cap);
	if (t == NULL)
		return NULL;
	t[o++] = pgvector ? '[' : '{';
	for (size_t i = 0; i < dims; i++)
		o += (size_t)snprintf(t + o, cap - o, "%s%.9g", i ? "," : "", vec[i]);
	t[o++] = pgvector ? ']' : '}';
	t[o] = '\0';
	return t;
}

int aiq__pgvec_put(aiq__pgvec *v, const char *track_id, const char *model, const double *vec,
                   size_t dims)
{
	char *text = vector_text(vec, dims, v->pgvector);
	if (text == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	char num[24];
	snprintf(num, sizeof num, "%zu", dims);
	const char *vals[] = {track_id, model, num, text};
	PGresult *res = NULL;
	pthread_mutex_lock(&v->lock);
	int rc = run(v, &res, "storing an embedding", v->pgvector ? put_vector_sql : put_real_sql,
	             4, vals);
	pthread_mutex_unlock(&v->lock);
	PQclear(res);
	free(text);
	return rc;
}

void aiq__pgvec_hits_free(struct aiq__pgvec_hit *hits, size_t n)
{
	for (size_t i = 0; hits && i < n; i++)
		free(hits[i].track_id);
	free(hits);
}

static int hits_of(PGresult *res, struct aiq__pgvec_hit **hits, size_t *n)
{
	size_t rows = (size_t)PQntuples(res);
	struct aiq__pgvec_hit *h = calloc(rows ? rows : 1, sizeof *h);
	if (h == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; i < rows; i++) {
		h[i].track_id = aiq__strdup(PQgetvalue(res, (int)i, 0));
		h[i].score =
		        PQgetisnull(res, (int)i, 1) ? 0 : strtod(PQgetvalue(res, (int)i, 1), NULL);
		if (h[i].track_id == NULL) {
			aiq__pgvec_hits_free(h, i);
			return aiq__err(AIQ_ENOMEM, "out of memory");
		}
	}
	*hits = h;
	*n = rows;
	return AIQ_OK;
}

/* The search itself (lock held). */
static int near_locked(aiq__pgvec *v, struct aiq__pgvec_hit **hits, size_t *n, const char *vec_text,
                       const char *model, const char *dims, const char *skip, int k)
{
	char knum[16];
	snprintf(knum, sizeof knum, "%d", k);
	const char *vals[] = {vec_text, model, dims, skip, knum};
	PGresult *res = NULL;
	int rc = run(v, &res, "searching similar embeddings",
	             v->pgvector ? near_vector_sql : near_real_sql, 5, vals);
	if (rc == AIQ_OK)
		rc = hits_of(res, hits, n);
	PQclear(res);
	return rc;
}

int aiq__pgvec_near_track(aiq__pgvec *v, struct aiq__pgvec_hit **hits, size_t *n,
                          const char *track_id, int k)
{
	*hits = NULL;
	*n = 0;
	const char *vals[] = {track_id};
	PGresult *res = NULL;
	pthread_mutex_lock(&v->lock);
	int rc = run(v, &res, "reading an embedding", track_sql, 1, vals);
	if (rc == AIQ_OK && PQntuples(res) == 0)
		rc = aiq__err(AIQ_ENOTFOUND, "no embedding is stored for track '%.200s'", track_id);
	else if (rc == AIQ_OK)
		rc = near_locked(v, hits, n, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
		                 PQgetvalue(res, 0, 2), track_id, k);
	pthread_mutex_unlock(&v->lock);
	PQclear(res);
	return rc;
}

int aiq__pgvec_near_vec(aiq__pgvec *v, struct aiq__pgvec_hit **hits, size_t *n, const char *model,
                        const double *vec, size_t dims, int k)
{
	*hits = NULL;
	*n = 0;
	char *text = vector_text(vec, dims, v->pgvector);
	if (text == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	char num[24];
	snprintf(num, sizeof num, "%zu", dims);
	pthread_mutex_lock(&v->lock);
	int rc = near_locked(v, hits, n, text, model, num, NULL, k);
	pthread_mutex_unlock(&v->lock);
	free(text);
	return rc;
}
