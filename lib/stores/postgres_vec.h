/*
 * Embeddings in PostgreSQL (postgres_vec.c): the table aiq_embeddings that
 * schema migration 4 creates, with pgvector's `vector` column when the
 * extension was available at migration time and `real[]` otherwise. The
 * same calls serve both; the column type, read once at open, picks the SQL.
 */
#ifndef AIQ_POSTGRES_VEC_H
#define AIQ_POSTGRES_VEC_H

#include "internal.h"

typedef struct aiq__pgvec aiq__pgvec;

struct aiq__pgvec_hit {
	char *track_id;
	double score; /* cosine similarity */
};

/* Connect to `url` (a postgresql:// URL), first applying the store's
 * migrations (through the postgres store's own open). AIQ_ESTORE. */
int aiq__pgvec_open(aiq__pgvec **out, const char *url, const aiq_config *cfg);
void aiq__pgvec_close(aiq__pgvec *v);
/* "pgvector" or "real[]". */
const char *aiq__pgvec_backend(const aiq__pgvec *v);
/* Upsert the track's vector (already normalised and checked). */
int aiq__pgvec_put(aiq__pgvec *v, const char *track_id, const char *model, const double *vec,
                   size_t dims);
/* The k nearest other tracks of the track's model and size, best first;
 * AIQ_ENOTFOUND when the track has no embedding. *hits (n entries) is
 * freed with aiq__pgvec_hits_free. */
int aiq__pgvec_near_track(aiq__pgvec *v, struct aiq__pgvec_hit **hits, size_t *n,
                          const char *track_id, int k);
/* The k nearest tracks of `model` and `dims` to the vector. */
int aiq__pgvec_near_vec(aiq__pgvec *v, struct aiq__pgvec_hit **hits, size_t *n, const char *model,
                        const double *vec, size_t dims, int k);
void aiq__pgvec_hits_free(struct aiq__pgvec_hit *hits, size_t n);

#endif /* AIQ_POSTGRES_VEC_H */
