/*
 * Embeddings and similarity search in PostgreSQL (include/aiqueue/similar.h)
 * against a real server (run.sh starts a private cluster and passes its URL
 * in AIQ_PG_URL): 20 lyrics stored with the local embedding, the neighbours
 * of a track (itself excluded, a near-duplicate first, scores equal to the
 * cosine computed in C), a text query, k bounds, an unknown track, models
 * kept apart, bad vectors refused without a trace, and the worker's analyze
 * path storing the embedding of what it analysed.
 *
 * This server has no pgvector, so the real[] column and aiq_cosine() are
 * what runs here; the pgvector path (the `<=>` operator) is chosen by
 * detection and is not exercised by this suite.
 */
#include "testutil.h"

#include "embed_int.h"
#include "postgres_schema.h"

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NLYRICS 20

static const char *const lyrics[NLYRICS] = {
        "The rain keeps falling on the empty street tonight, I walk alone without you",
        "Dancing in the neon light until the morning comes, the bass is in my bones",
        "Mother told me never trust a stranger with a smile and a silver car",
        "Fields of golden barley swaying in the summer wind, we were young and free",
        "I burned the letters that you wrote me, ashes scatter on the winter snow",
        "Highway ninety-nine, the engine roars, no looking back at that old town",
        "Little baby close your eyes, the moon is watching over you tonight",
        "We stand together, raise your fists, the revolution starts today",
        "Coffee cups and crossword puzzles, Sunday mornings in the kitchen light",
        "Deep blue ocean, take me under, let the waves decide my fate",
        "My heart beats like a drum machine, electric pulse inside my veins",
        "Grandpa played the fiddle on the porch when the fireflies came out",
        "Concrete jungle, sirens wailing, hustle hard to pay the rent",
        "Stars are falling from the sky like diamonds on your velvet dress",
        "Broken glass and broken promises, I am done with all your lies",
        "Mountain high and valley low, the river sings an ancient song",
        "Jump up, jump up, everybody get down on the dance floor now",
        "Candle burning in the window, waiting for my soldier to come home",
        "Pixels glowing on the screen, we fell in love through fiber optic lines",
        "Old man sitting by the harbour, counting ships that never came",
};
/* Near-duplicates: one word changed, punctuation and case changed. */
static const char dup_of_0[] =
        "the RAIN keeps falling on the empty streets tonight... I walk alone, without you!";
static const char near_of_6[] = "little baby close your eyes, the moon is watching you tonight";

static const char *pg_url(void)
{
	const char *u = getenv("AIQ_PG_URL");
	ck_assert_msg(u != NULL, "AIQ_PG_URL is not set: run this test through run.sh");
	return u;
}

static void sql_exec(const char *url, const char *sql)
{
	PGconn *c = PQconnectdb(url);
	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
	PGresult *res = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(res);
	ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql,
	              PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
}

static char *sql_text(const char *url, const char *sql)
{
	PGconn *c = PQconnectdb(url);
	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
	PGresult *res = PQexec(c, sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
	char *v = PQntuples(res) ? strdup(PQgetvalue(res, 0, 0)) : NULL;
	PQclear(res);
	PQfinish(c);
	return v;
}

static long long sql_count(const char *url, const char *sql)
{
	char *t = sql_text(url, sql);
	long long n = t ? strtoll(t, NULL, 10) : 0;
	free(t);
	return n;
}

/* A fresh database with its URL (the cluster's URL ends in /postgres). */
static char *fresh_db(const char *name)
{
	char sql[200];
	snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", name);
	sql_exec(pg_url(), sql);
	snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
	sql_exec(pg_url(), sql);
	const char *u = pg_url();
	size_t n = (size_t)(strrchr(u, '/') - u) + 1;
	char *out = malloc(n + strlen(name) + 1);
	memcpy(out, u, n);
	strcpy(out + n, name);
	return out;
}

static aiq_similar *open_similar(const char *url)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "result.url", url), AIQ_OK);
	aiq_similar *s = NULL;
	int rc = aiq_similar_open(&s, cfg);
	ck_assert_msg(rc == AIQ_OK, "open: %s", aiq_error_last());
	aiq_config_free(cfg);
	return s;
}

static void track_name(char *out, size_t size, int i)
{
	snprintf(out, size, "track-%02d", i);
}

/* The 20 lyrics and the near-duplicate of lyric 0 ("dup-0"). */
static void store_all(aiq_similar *s)
{
	char id[32];
	for (int i = 0; i < NLYRICS; i++) {
		track_name(id, sizeof id, i);
		int rc = aiq_similar_put_text(s, id, lyrics[i]);
		ck_assert_msg(rc == AIQ_OK, "put %s: %s", id, aiq_error_last());
	}
	ck_assert_int_eq(aiq_similar_put_text(s, "dup-0", dup_of_0), AIQ_OK);
}

static double local_cosine(const char *a, const char *b)
{
	double va[256], vb[256];
	ck_assert_int_eq(aiq__embed_local(va, 256, a, strlen(a)), AIQ_OK);
	ck_assert_int_eq(aiq__embed_local(vb, 256, b, strlen(b)), AIQ_OK);
	return aiq__embed_cosine(va, vb, 256);
}

START_TEST(test_backend_detected)
{
	char *url = fresh_db("aiq_sim_backend");
	aiq_similar *s = open_similar(url);
	long long available = sql_count(
	        url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'");
	ck_assert_str_eq(aiq_similar_backend(s), available ? "pgvector" : "real[]");
	char *type = sql_text(url, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
	                           "WHERE attrelid = 'aiq_embeddings'::regclass "
	                           "AND attname = 'embedding'");
	ck_assert_str_eq(type, available ? "vector" : "real[]");
	free(type);
	ck_assert_int_eq(sql_count(url, "SELECT max(version) FROM aiq_schema_migrations"),
	                 aiq__pg_migrations[AIQ__PG_NMIGRATIONS - 1].version);
	aiq_similar_free(s);
	free(url);
}
END_TEST

START_TEST(test_neighbours_of_track)
{
	char *url = fresh_db("aiq_sim_track");
	aiq_similar *s = open_similar(url);
	store_all(s);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings"), NLYRICS + 1);
	aiq_similar_list *l = NULL;
	int rc = aiq_similar_to_track(&l, s, "track-00", 5);
	ck_assert_msg(rc == AIQ_OK, "similar: %s", aiq_error_last());
	ck_assert_uint_eq(aiq_similar_list_count(l), 5);
	/* The near-duplicate first, far above the rest; the track itself absent. */
	ck_assert_str_eq(aiq_similar_list_track_id(l, 0), "dup-0");
	ck_assert_msg(aiq_similar_list_score(l, 0) > 0.8, "dup score %f",
	              aiq_similar_list_score(l, 0));
	for (size_t i = 0; i < 5; i++) {
		const char *id = aiq_similar_list_track_id(l, i);
		ck_assert_str_ne(id, "track-00");
		if (i > 0) {
			ck_assert(aiq_similar_list_score(l, i) <= aiq_similar_list_score(l, i - 1));
			ck_assert_msg(aiq_similar_list_score(l, i) <
			                      aiq_similar_list_score(l, 0) - 0.3,
			              "%s scores %f, near the duplicate", id,
			              aiq_similar_list_score(l, i));
			/* The SQL cosine over real[] is the C cosine (float4 storage). */
			int n = atoi(id + strlen("track-"));
			ck_assert_double_eq_tol(aiq_similar_list_score(l, i),
			                        local_cosine(lyrics[0], lyrics[n]), 1e-5);
		}
	}
	ck_assert_double_eq_tol(aiq_similar_list_score(l, 0), local_cosine(lyrics[0], dup_of_0),
	                        1e-5);
	ck_assert_ptr_null(aiq_similar_list_track_id(l, 5));
	ck_assert(aiq_similar_list_score(l, 5) == 0);

	char *json = NULL;
	ck_assert_int_eq(aiq_similar_list_json(&json, l), AIQ_OK);
	json_t *j = json_loads(json, 0, NULL);
	ck_assert(json_is_array(j));
	ck_assert_uint_eq(json_array_size(j), 5);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(j, 0), "track_id")),
	                 "dup-0");
	ck_assert_double_eq_tol(json_real_value(json_object_get(json_array_get(j, 0), "score")),
	                        aiq_similar_list_score(l, 0), 1e-12);
	json_decref(j);
	aiq_free(json);
	aiq_similar_list_free(l);

	/* k larger than the rows: every other track, once. */
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "track-07", AIQ_SIMILAR_MAX_K), AIQ_OK);
	ck_assert_uint_eq(aiq_similar_list_count(l), NLYRICS);
	aiq_similar_list_free(l);
	aiq_similar_free(s);
	free(url);
}
END_TEST

START_TEST(test_neighbours_of_text)
{
	char *url = fresh_db("aiq_sim_text");
	aiq_similar *s = open_similar(url);
	store_all(s);
	aiq_similar_list *l = NULL;
	ck_assert_int_eq(aiq_similar_to_text(&l, s, near_of_6, 3), AIQ_OK);
	ck_assert_uint_eq(aiq_similar_list_count(l), 3);
	ck_assert_str_eq(aiq_similar_list_track_id(l, 0), "track-06");
	ck_assert(aiq_similar_list_score(l, 0) > aiq_similar_list_score(l, 1) + 0.3);
	aiq_similar_list_free(l);
	ck_assert_int_eq(aiq_similar_to_text(&l, s, " ?! ", 3), AIQ_EINVAL);
	ck_assert_ptr_null(l);
	aiq_similar_free(s);
	free(url);
}
END_TEST

START_TEST(test_k_bounds_and_unknown)
{
	char *url = fresh_db("aiq_sim_bounds");
	aiq_similar *s = open_similar(url);
	store_all(s);
	aiq_similar_list *l = (aiq_similar_list *)&l;
	const int bad[] = {0, -1, AIQ_SIMILAR_MAX_K + 1, 1000000};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ck_assert_int_eq(aiq_similar_to_track(&l, s, "track-01", bad[i]), AIQ_EINVAL);
		ck_assert_ptr_null(l);
		ck_assert_ptr_nonnull(strstr(aiq_error_last(), "k must be from 1 to 100"));
		ck_assert_int_eq(aiq_similar_to_text(&l, s, "rain", bad[i]), AIQ_EINVAL);
	}
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "track-01", 1), AIQ_OK);
	ck_assert_uint_eq(aiq_similar_list_count(l), 1);
	aiq_similar_list_free(l);
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "no-such-track", 5), AIQ_ENOTFOUND);
	ck_assert_ptr_null(l);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "no-such-track"));
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "", 5), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "\xff", 5), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_to_track(NULL, s, "track-01", 5), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_to_track(&l, NULL, "track-01", 5), AIQ_EINVAL);
	aiq_similar_free(s);
	free(url);
}
END_TEST

START_TEST(test_models_apart_and_bad_vectors)
{
	char *url = fresh_db("aiq_sim_models");
	aiq_similar *s = open_similar(url);
	store_all(s);
	const double a[3] = {1, 0, 0}, b[3] = {0.9, 0.1, 0}, c[3] = {0, 0, 1};
	ck_assert_int_eq(aiq_similar_put(s, "m-a", "other-model", a, 3), AIQ_OK);
	ck_assert_int_eq(aiq_similar_put(s, "m-b", "other-model", b, 3), AIQ_OK);
	ck_assert_int_eq(aiq_similar_put(s, "m-c", "other-model", c, 3), AIQ_OK);
	aiq_similar_list *l = NULL;
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "m-a", 10), AIQ_OK);
	ck_assert_uint_eq(aiq_similar_list_count(l), 2); /* only its own model */
	ck_assert_str_eq(aiq_similar_list_track_id(l, 0), "m-b");
	ck_assert_double_eq_tol(aiq_similar_list_score(l, 0), 0.9 / sqrt(0.82), 1e-6);
	ck_assert_str_eq(aiq_similar_list_track_id(l, 1), "m-c");
	ck_assert_double_eq_tol(aiq_similar_list_score(l, 1), 0, 1e-9);
	aiq_similar_list_free(l);
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "track-00", 100), AIQ_OK);
	for (size_t i = 0; i < aiq_similar_list_count(l); i++)
		ck_assert(strncmp(aiq_similar_list_track_id(l, i), "m-", 2) != 0);
	aiq_similar_list_free(l);

	/* Refused, and nothing stored. */
	const double zero[3] = {0, 0, 0}, nan3[3] = {1, NAN, 0};
	long long before = sql_count(url, "SELECT count(*) FROM aiq_embeddings");
	ck_assert_int_eq(aiq_similar_put(s, "bad", "other-model", zero, 3), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_put(s, "bad", "other-model", nan3, 3), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_put(s, "bad", "other-model", a, 0), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_put(s, "", "other-model", a, 3), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_put(s, "bad", "", a, 3), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_put_text(s, "bad", ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq_similar_put_text(s, "bad", "a\xff"), AIQ_EINVAL);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings"), before);
	/* A track id with quotes and braces is only data. */
	ck_assert_int_eq(
	        aiq_similar_put(s, "x'}{\"); DROP TABLE aiq_embeddings; --", "other-model", c, 3),
	        AIQ_OK);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings"), before + 1);
	/* Replacing a track's embedding keeps one row. */
	ck_assert_int_eq(aiq_similar_put(s, "m-c", "other-model", a, 3), AIQ_OK);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings"), before + 1);
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "m-a", 1), AIQ_OK);
	ck_assert_str_eq(aiq_similar_list_track_id(l, 0), "m-c");
	ck_assert_double_eq_tol(aiq_similar_list_score(l, 0), 1, 1e-6);
	aiq_similar_list_free(l);
	aiq_similar_free(s);
	free(url);
}
END_TEST

START_TEST(test_needs_postgres)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	aiq_similar *s = (aiq_similar *)&s;
	ck_assert_int_eq(aiq_similar_open(&s, cfg), AIQ_EUNSUPPORTED); /* memory:// */
	ck_assert_ptr_null(s);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "archive.url or result.url"));
	aiq_config_free(cfg);
}
END_TEST

/* ---- the analyze path ------------------------------------------------------ */

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

static void fx_start(struct fixture *fx, const char *broker, const char *url, bool embed,
                     const char *pool)
{
	memset(fx, 0, sizeof *fx);
	ck_assert_int_eq(aiq_config_new(&fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "broker.url", broker), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "result.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_bool(fx->cfg, "embed.enabled", embed), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "worker.concurrency", 2), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "worker.pool", pool), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&fx->client, fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&fx->worker, fx->cfg), AIQ_OK);
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

/* Enqueue tasks.analyze_track(args[, analyzer]) and wait for its final state. */
static int analyze(struct fixture *fx, const char *args, const char *kwargs)
{
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, fx->client, "tasks.analyze_track", args, kwargs, NULL);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	aiq_result *r = NULL;
	rc = aiq_client_wait(&r, fx->client, id, 20000);
	ck_assert_msg(rc == AIQ_OK, "wait: %s", aiq_error_last());
	int state = aiq_result_state(r);
	aiq_result_free(r);
	aiq_free(id);
	return state;
}

/* With the pool's threads (_i = 0) and its child processes (_i = 1), which
 * open their own connection. */
START_TEST(test_analyze_stores_embeddings)
{
	const char *pool = _i ? "processes" : "threads";
	char *url = fresh_db(_i ? "aiq_sim_worker_p" : "aiq_sim_worker_t");
	struct fixture fx;
	fx_start(&fx, "memory://sim-worker", url, true, pool);
	char args[512];
	snprintf(args, sizeof args, "[\"song-a\", \"%s\"]", lyrics[0]);
	ck_assert_int_eq(analyze(&fx, args, NULL), AIQ_STATE_SUCCESS);
	snprintf(args, sizeof args, "[77, \"%s\"]", dup_of_0); /* an integer track id */
	ck_assert_int_eq(analyze(&fx, args, NULL), AIQ_STATE_SUCCESS);
	snprintf(args, sizeof args, "[\"song-c\", \"%s\"]", lyrics[1]);
	ck_assert_int_eq(analyze(&fx, args, NULL), AIQ_STATE_SUCCESS);
	/* A failed analysis stores no embedding; a text with nothing to embed
	 * still succeeds. */
	snprintf(args, sizeof args, "[\"song-x\", \"%s\"]", lyrics[2]);
	ck_assert_int_eq(analyze(&fx, args, "{\"analyzer\": \"no-such-analyzer\"}"),
	                 AIQ_STATE_FAILURE);
	ck_assert_int_eq(analyze(&fx, "[\"song-empty\", \"?! ...\"]", NULL), AIQ_STATE_SUCCESS);
	fx_stop(&fx);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings"), 3);
	ck_assert_int_eq(
	        sql_count(
	                url,
	                "SELECT count(*) FROM aiq_embeddings WHERE model = '" AIQ__EMBED_LOCAL_MODEL
	                "' AND dims = 256"),
	        3);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_analyses"), 4);

	aiq_similar *s = open_similar(url);
	aiq_similar_list *l = NULL;
	ck_assert_int_eq(aiq_similar_to_track(&l, s, "song-a", 5), AIQ_OK);
	ck_assert_uint_eq(aiq_similar_list_count(l), 2);
	ck_assert_str_eq(aiq_similar_list_track_id(l, 0), "77");
	ck_assert_str_eq(aiq_similar_list_track_id(l, 1), "song-c");
	aiq_similar_list_free(l);
	aiq_similar_free(s);

	/* embed.enabled = false: analyses only. */
	fx_start(&fx, "memory://sim-worker-off", url, false, pool);
	snprintf(args, sizeof args, "[\"song-off\", \"%s\"]", lyrics[3]);
	ck_assert_int_eq(analyze(&fx, args, NULL), AIQ_STATE_SUCCESS);
	fx_stop(&fx);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings"), 3);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_analyses"), 5);
	free(url);
}
END_TEST

/* A write the store refuses loses only the embedding, and pauses the next
 * ones (no connect timeout per task while a store is down). */
START_TEST(test_analyze_store_failure_pauses)
{
	char *url = fresh_db("aiq_sim_pause");
	struct fixture fx;
	fx_start(&fx, "memory://sim-pause", url, true, "threads");
	char args[512];
	snprintf(args, sizeof args, "[\"before\", \"%s\"]", lyrics[4]);
	ck_assert_int_eq(analyze(&fx, args, NULL), AIQ_STATE_SUCCESS);
	sql_exec(url, "ALTER TABLE aiq_embeddings RENAME TO aiq_embeddings_away");
	snprintf(args, sizeof args, "[\"refused\", \"%s\"]", lyrics[5]);
	ck_assert_int_eq(analyze(&fx, args, NULL), AIQ_STATE_SUCCESS);
	sql_exec(url, "ALTER TABLE aiq_embeddings_away RENAME TO aiq_embeddings");
	snprintf(args, sizeof args, "[\"paused\", \"%s\"]", lyrics[6]);
	ck_assert_int_eq(analyze(&fx, args, NULL), AIQ_STATE_SUCCESS);
	fx_stop(&fx);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_analyses"), 3);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings"), 1);
	ck_assert_int_eq(sql_count(url, "SELECT count(*) FROM aiq_embeddings "
	                                "WHERE track_id = 'before'"),
	                 1);
	free(url);
}
END_TEST

START_TEST(test_worker_refuses_bad_embed_settings)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "result.url", pg_url()), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.provider", "openai"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "embed.preset", "missing"), AIQ_OK);
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "no preset named 'missing'"));
	aiq_config_free(cfg);
}
END_TEST

static Suite *similar_suite(void)
{
	Suite *s = suite_create("similar");
	TCase *tc = tcase_create("store");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_backend_detected);
	tcase_add_test(tc, test_neighbours_of_track);
	tcase_add_test(tc, test_neighbours_of_text);
	tcase_add_test(tc, test_k_bounds_and_unknown);
	tcase_add_test(tc, test_models_apart_and_bad_vectors);
	tcase_add_test(tc, test_needs_postgres);
	tcase_add_loop_test(tc, test_analyze_stores_embeddings, 0, 2);
	tcase_add_test(tc, test_analyze_store_failure_pauses);
	tcase_add_test(tc, test_worker_refuses_bad_embed_settings);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return aiq_test_run(similar_suite());
}
