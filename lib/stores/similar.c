/*
 * The public similarity API (include/aiqueue/similar.h): argument checks,
 * the embedder and the result list here; the SQL in postgres_vec.c.
 */
#include <aiqueue/similar.h>

#include "config_int.h"
#include "embed_int.h"
#include "similar_int.h"
#ifdef AIQ_HAVE_POSTGRES
#include "postgres_vec.h"
#endif

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_TRACK_ID_BYTES 4096
#define MAX_MODEL_BYTES    255
#define MAX_DIMS           16000

struct aiq_similar {
#ifdef AIQ_HAVE_POSTGRES
	aiq__pgvec *db;
#endif
	aiq__embedder *embedder;
};

struct aiq_similar_list {
	size_t n;
	char **ids;
	double *scores;
};

static bool is_postgres(const char *url)
{
	return strncasecmp(url, "postgresql://", 13) == 0 ||
	       strncasecmp(url, "postgres://", 11) == 0;
}

const char *aiq__similar_store_url(const aiq_config *cfg)
{
	const char *url = aiq__cfg_str(cfg, AIQ_CFG_ARCHIVE_URL);
	if (!is_postgres(url))
		url = aiq__cfg_str(cfg, AIQ_CFG_RESULT_URL);
	return is_postgres(url) ? url : NULL;
}

int aiq__similar_check_config(const aiq_config *cfg)
{
	aiq__embedder *e = NULL;
	int rc = aiq__embedder_new(&e, cfg);
	aiq__embedder_free(e);
	return rc;
}

static int check_text_arg(const char *what, const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max || !aiq__utf8_valid(s, n))
		return aiq__err(AIQ_EINVAL, "%s must be UTF-8 text of 1 to %zu bytes", what, max);
	return AIQ_OK;
}

static int check_k(int k)
{
	if (k < 1 || k > AIQ_SIMILAR_MAX_K)
		return aiq__err(AIQ_EINVAL, "k must be from 1 to %d, got %d", AIQ_SIMILAR_MAX_K, k);
	return AIQ_OK;
}

AIQ_API void aiq_similar_free(aiq_similar *s)
{
	if (s == NULL)
		return;
#ifdef AIQ_HAVE_POSTGRES
	aiq__pgvec_close(s->db);
#endif
	aiq__embedder_free(s->embedder);
	free(s);
}

AIQ_API int aiq_similar_open(aiq_similar **out, const aiq_config *cfg)
{
	if (out == NULL || cfg == NULL)
		return aiq__err(AIQ_EINVAL,
		                "aiq_similar_open needs an output pointer and a config");
	*out = NULL;
	const char *url = aiq__similar_store_url(cfg);
	if (url == NULL)
		return aiq__err(AIQ_EUNSUPPORTED,
		                "similarity search needs a PostgreSQL store: set archive.url or "
		                "result.url to a postgresql:// URL");
#ifdef AIQ_HAVE_POSTGRES
	aiq_similar *s = calloc(1, sizeof *s);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = aiq__embedder_new(&s->embedder, cfg);
	if (rc == AIQ_OK)
		rc = aiq__pgvec_open(&s->db, url, cfg);
	if (rc != AIQ_OK) {
		aiq_similar_free(s);
		return rc;
	}
	*out = s;
	return AIQ_OK;
#else
	return aiq__err(AIQ_EUNSUPPORTED,
	                "similarity search needs PostgreSQL support, which this libaiqueue was "
	                "built without");
#endif
}

AIQ_API const char *aiq_similar_backend(const aiq_similar *s)
{
#ifdef AIQ_HAVE_POSTGRES
	return s ? aiq__pgvec_backend(s->db) : NULL;
#else
	(void)s;
	return NULL;
#endif
}

AIQ_API int aiq_similar_put(aiq_similar *s, const char *track_id, const char *model,
                            const double *vec, size_t dims)
{
	if (s == NULL || vec == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_similar_put needs a handle and a vector");
	int rc = check_text_arg("track_id", track_id, MAX_TRACK_ID_BYTES);
	if (rc == AIQ_OK)
		rc = check_text_arg("model", model, MAX_MODEL_BYTES);
	if (rc != AIQ_OK)
		return rc;
	if (dims == 0 || dims > MAX_DIMS)
		return aiq__err(AIQ_EINVAL, "dims must be from 1 to %d, got %zu", MAX_DIMS, dims);
	double *unit = malloc(dims * sizeof *unit), sum = 0;
	if (unit == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; i < dims; i++) {
		if (!isfinite(vec[i])) {
			free(unit);
			return aiq__err(AIQ_EINVAL, "vec[%zu] is not a finite number", i);
		}
		sum += vec[i] * vec[i];
	}
	if (!(sum > 0) || !isfinite(sum)) {
		free(unit);
		return aiq__err(AIQ_EINVAL, "the vector is zero (or too large to normalise)");
	}
	for (size_t i = 0; i < dims; i++)
		unit[i] = vec[i] / sqrt(sum);
#ifdef AIQ_HAVE_POSTGRES
	rc = aiq__pgvec_put(s->db, track_id, model, unit, dims);
#else
	rc = aiq__err(AIQ_EUNSUPPORTED, "built without PostgreSQL support");
#endif
	free(unit);
	return rc;
}

/* The embedder's vector of a text (malloc'd, embedder's size). */
static int embed_text(const aiq_similar *s, double **vec, const char *text)
{
	*vec = NULL;
	if (text == NULL || !aiq__utf8_valid(text, strlen(text)))
		return aiq__err(AIQ_EINVAL, "text must be UTF-8");
	size_t dims = aiq__embedder_dims(s->embedder);
	double *v = malloc(dims * sizeof *v);
	if (v == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = aiq__embedder_run(s->embedder, v, text, strlen(text));
	if (rc != AIQ_OK) {
		free(v);
		return rc;
	}
	*vec = v;
	return AIQ_OK;
}

AIQ_API int aiq_similar_put_text(aiq_similar *s, const char *track_id, const char *text)
{
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_similar_put_text needs a handle");
	int rc = check_text_arg("track_id", track_id, MAX_TRACK_ID_BYTES);
	double *v = NULL;
	if (rc == AIQ_OK)
		rc = embed_text(s, &v, text);
	if (rc == AIQ_OK)
		rc = aiq_similar_put(s, track_id, aiq__embedder_model(s->embedder), v,
		                     aiq__embedder_dims(s->embedder));
	free(v);
	return rc;
}

AIQ_API void aiq_similar_list_free(aiq_similar_list *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->ids[i]);
	free(l->ids);
	free(l->scores);
	free(l);
}

#ifdef AIQ_HAVE_POSTGRES
/* Move the hits into a new list (the hits are freed either way). */
static int list_of(aiq_similar_list **out, struct aiq__pgvec_hit *hits, size_t n)
{
	aiq_similar_list *l = calloc(1, sizeof *l);
	if (l)
		l->ids = calloc(n ? n : 1, sizeof *l->ids);
	if (l && l->ids)
		l->scores = calloc(n ? n : 1, sizeof *l->scores);
	if (l == NULL || l->ids == NULL || l->scores == NULL) {
		aiq_similar_list_free(l);
		aiq__pgvec_hits_free(hits, n);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		l->ids[i] = hits[i].track_id;
		l->scores[i] = hits[i].score;
		hits[i].track_id = NULL;
	}
	l->n = n;
	aiq__pgvec_hits_free(hits, n);
	*out = l;
	return AIQ_OK;
}
#endif

AIQ_API int aiq_similar_to_track(aiq_similar_list **out, aiq_similar *s, const char *track_id,
                                 int k)
{
	if (out == NULL || s == NULL)
		return aiq__err(AIQ_EINVAL,
		                "aiq_similar_to_track needs an output pointer and a handle");
	*out = NULL;
	int rc = check_text_arg("track_id", track_id, MAX_TRACK_ID_BYTES);
	if (rc == AIQ_OK)
		rc = check_k(k);
	if (rc != AIQ_OK)
		return rc;
#ifdef AIQ_HAVE_POSTGRES
	struct aiq__pgvec_hit *hits = NULL;
	size_t n = 0;
	rc = aiq__pgvec_near_track(s->db, &hits, &n, track_id, k);
	return rc == AIQ_OK ? list_of(out, hits, n) : rc;
#else
	return aiq__err(AIQ_EUNSUPPORTED, "built without PostgreSQL support");
#endif
}

AIQ_API int aiq_similar_to_text(aiq_similar_list **out, aiq_similar *s, const char *text, int k)
{
	if (out == NULL || s == NULL)
		return aiq__err(AIQ_EINVAL,
		                "aiq_similar_to_text needs an output pointer and a handle");
	*out = NULL;
	int rc = check_k(k);
	double *v = NULL;
	if (rc == AIQ_OK)
		rc = embed_text(s, &v, text);
	if (rc != AIQ_OK)
		return rc;
#ifdef AIQ_HAVE_POSTGRES
	struct aiq__pgvec_hit *hits = NULL;
	size_t n = 0;
	rc = aiq__pgvec_near_vec(s->db, &hits, &n, aiq__embedder_model(s->embedder), v,
	                         aiq__embedder_dims(s->embedder), k);
	free(v);
	return rc == AIQ_OK ? list_of(out, hits, n) : rc;
#else
	free(v);
	return aiq__err(AIQ_EUNSUPPORTED, "built without PostgreSQL support");
#endif
}

AIQ_API size_t aiq_similar_list_count(const aiq_similar_list *l)
{
	return l ? l->n : 0;
}

AIQ_API const char *aiq_similar_list_track_id(const aiq_similar_list *l, size_t i)
{
	return l && i < l->n ? l->ids[i] : NULL;
}

AIQ_API double aiq_similar_list_score(const aiq_similar_list *l, size_t i)
{
	return l && i < l->n ? l->scores[i] : 0;
}

AIQ_API int aiq_similar_list_json(char **out, const aiq_similar_list *l)
{
	if (out == NULL || l == NULL)
		return aiq__err(AIQ_EINVAL,
		                "aiq_similar_list_json needs an output pointer and a list");
	*out = NULL;
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < l->n; i++)
		if (json_array_append_new(arr, json_pack("{s:s, s:f}", "track_id", l->ids[i],
		                                         "score", l->scores[i])) != 0) {
			json_decref(arr);
			arr = NULL;
		}
	char *text = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
	json_decref(arr);
	if (text == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	*out = text;
	return AIQ_OK;
}
