/*
 * Text embeddings: a vector of `dims` doubles, L2-normalised, for one text.
 *
 * Two providers (embed.provider):
 *   local   hashed character 3-grams: the text is case-folded (ASCII and
 *           Latin-1 letters), every run of characters that are not letters
 *           or digits becomes one space, the text is padded with a space at
 *           both ends, and each 3-code-point window adds +1 or -1 (a bit of
 *           its FNV-1a hash) to one of `dims` buckets (the hash modulo
 *           dims); the vector is then L2-normalised. Deterministic (the same
 *           text gives the same vector on every machine and version that
 *           keeps AIQ__EMBED_LOCAL_MODEL), needs no model, and measures
 *           shared spelling, not meaning.
 *   openai  POST {embed.url or llm.base_url}/embeddings {"model", "input"}
 *           to an OpenAI-compatible server (OpenAI, Ollama's /v1, vLLM,
 *           llama.cpp's server) through llm.c's HTTP exchange; the answer's
 *           data[0].embedding must have embed.dims numbers and is normalised.
 */
#ifndef AIQ_EMBED_INT_H
#define AIQ_EMBED_INT_H

#include "internal.h"

/* The model name stored with a local embedding. */
#define AIQ__EMBED_LOCAL_MODEL "local-ngram3-v1"

typedef struct aiq__embedder aiq__embedder;

/* Settings from embed.* (and llm.* for the endpoint and key when the
 * provider is openai). AIQ_EUNSUPPORTED: openai without libcurl. */
int aiq__embedder_new(aiq__embedder **out, const aiq_config *cfg);
void aiq__embedder_free(aiq__embedder *e);
size_t aiq__embedder_dims(const aiq__embedder *e);
/* AIQ__EMBED_LOCAL_MODEL or embed.model. */
const char *aiq__embedder_model(const aiq__embedder *e);

/* Fill vec[0..dims) with the text's embedding. AIQ_EINVAL: the text has
 * nothing to embed (no letter or digit for local). The openai provider
 * retries a 429, 408, 5xx or a failed connection embed.retries times
 * (honouring Retry-After up to llm.retry_after_max_ms) and then gives
 * AIQ_ELIMIT; an answer that is not JSON gives AIQ_EJSON, one that is not
 * an embeddings answer of the right size AIQ_EPROTO, another HTTP error
 * AIQ_ERROR. The message says what to fix. Thread-safe. */
int aiq__embedder_run(const aiq__embedder *e, double *vec, const char *text, size_t len);

/* The local embedding. AIQ_OK or AIQ_EINVAL (nothing to embed: vec zero). */
int aiq__embed_local(double *vec, size_t dims, const char *text, size_t len);

/* Read an /embeddings answer body into vec (normalised). `where` names the
 * server in messages. AIQ_EJSON or AIQ_EPROTO as above. */
int aiq__embed_parse_reply(double *vec, size_t dims, const char *body, size_t len,
                           const char *where);

/* Cosine of two vectors of the same size (0 when either is zero). */
double aiq__embed_cosine(const double *a, const double *b, size_t dims);

#endif /* AIQ_EMBED_INT_H */
