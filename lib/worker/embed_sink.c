/*
 * The analyze path's embeddings (embed_sink.h). The similarity handle
 * opens on first use, on the thread (or pool child process) that runs the
 * task, so that a forked child never shares its parent's connection; after
 * a failed open, or a write the store refused (AIQ_ESTORE), the next
 * attempt waits OPEN_RETRY_MS, so a store that is down costs one task a
 * connect timeout, not every task.
 */
#include "embed_sink.h"

#include "config_int.h"
#include "similar_int.h"

#include <aiqueue/similar.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OPEN_RETRY_MS 30000

struct aiq__embed_sink {
	aiq_config *cfg;
	pthread_mutex_t lock; /* guards the fields below */
	aiq_similar *sim;
	pid_t pid;            /* the process that opened sim */
	int64_t next_open_ms; /* no open and no write before (monotonic) */
};

int aiq__embed_sink_new(struct aiq__embed_sink **out, const aiq_config *cfg)
{
	*out = NULL;
	if (!aiq__cfg_bool(cfg, AIQ_CFG_EMBED_ENABLED) || aiq__similar_store_url(cfg) == NULL)
		return AIQ_OK;
	int rc = aiq__similar_check_config(cfg); /* fail now, not at every task */
	if (rc != AIQ_OK)
		return rc;
	struct aiq__embed_sink *s = calloc(1, sizeof *s);
	if (s == NULL || aiq_config_copy(&s->cfg, cfg) != AIQ_OK) {
		free(s);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	pthread_mutex_init(&s->lock, NULL);
	*out = s;
	return AIQ_OK;
}

void aiq__embed_sink_free(struct aiq__embed_sink *s)
{
	if (s == NULL)
		return;
	if (s->pid == getpid())
		aiq_similar_free(s->sim);
	aiq_config_free(s->cfg);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* The handle, opened when missing (lock held); NULL when it cannot be or
 * while a pause after a store failure lasts. */
static aiq_similar *handle(struct aiq__embed_sink *s)
{
	if (s->sim && s->pid != getpid())
		s->sim = NULL; /* inherited across fork: the parent's, not ours to use */
	if (aiq__mono_ms() < s->next_open_ms)
		return NULL;
	if (s->sim)
		return s->sim;
	if (aiq_similar_open(&s->sim, s->cfg) != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "embeddings are not stored (next try in %d s): %s",
		         OPEN_RETRY_MS / 1000, aiq_error_last());
		s->next_open_ms = aiq__mono_ms() + OPEN_RETRY_MS;
		return NULL;
	}
	s->pid = getpid();
	return s->sim;
}

void aiq__embed_sink_store(struct aiq__embed_sink *s, const json_t *track, const char *text,
                           size_t len)
{
	if (s == NULL || len != strlen(text)) /* a text with U+0000 is not embedded */
		return;
	char num[32];
	const char *id = json_string_value(track);
	if (id == NULL && json_is_integer(track)) {
		snprintf(num, sizeof num, "%lld", (long long)json_integer_value(track));
		id = num;
	}
	if (id == NULL)
		return;
	pthread_mutex_lock(&s->lock);
	aiq_similar *sim = handle(s);
	pthread_mutex_unlock(&s->lock);
	/* The handle is thread-safe and lives until the sink is freed, after
	 * the pool: the embedding (an HTTP call for openai) runs unlocked. */
	int rc = sim ? aiq_similar_put_text(sim, id, text) : AIQ_OK;
	if (rc == AIQ_ESTORE) {
		/* A store that is down would cost every task a connect timeout. */
		pthread_mutex_lock(&s->lock);
		s->next_open_ms = aiq__mono_ms() + OPEN_RETRY_MS;
		pthread_mutex_unlock(&s->lock);
		aiq__log(AIQ_LOG_WARNING, "track %.100s: embedding not stored, none for %d s: %s",
		         id, OPEN_RETRY_MS / 1000, aiq_error_last());
	} else if (rc == AIQ_EINVAL)
		aiq__log(AIQ_LOG_DEBUG, "track %.100s: no embedding stored: %s", id,
		         aiq_error_last());
	else if (rc != AIQ_OK)
		aiq__log(AIQ_LOG_WARNING, "track %.100s: embedding not stored: %s", id,
		         aiq_error_last());
}
