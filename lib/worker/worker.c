/*
 * The worker's glue: configuration, connections, and aiq_worker_run, which
 * starts the pool and runs the consumer loop on the caller's thread.
 * Retries and delayed re-parking are published through a second,
 * mutex-protected connection. The path of a delivery is in consumer.c ->
 * pool.c -> outcome.c (worker_int.h).
 */
#include "worker_int.h"

#include "config_int.h"
#include "embed_sink.h"
#include "events.h"
#include "ratelimit.h"
#include "unique.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void aiq__worker_seterr(aiq_worker *w, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&w->err_lock);
	vsnprintf(w->err, sizeof w->err, fmt, ap);
	pthread_mutex_unlock(&w->err_lock);
	va_end(ap);
}

void aiq__worker_emit(aiq_worker *w, int event, const char *id, const char *name,
                      const char *detail)
{
	if (w->event_fn)
		w->event_fn(event, id, name, detail, w->event_ud);
	aiq__events_task(w, event, NULL, id, name, NULL, detail);
	aiq__control_note(w, event, name);
}

void aiq__worker_emit_task(aiq_worker *w, int event, const aiq_task *t, const char *exc_type,
                           const char *detail)
{
	if (w->event_fn)
		w->event_fn(event, t->msg.id, t->msg.task, detail, w->event_ud);
	aiq__events_task(w, event, t, t->msg.id, t->msg.task, exc_type, detail);
	aiq__control_note(w, event, t->msg.task);
}

static int split_queues(aiq_worker *w, const char *list)
{
	const char *name;
	size_t len;
	for (const char *p = list; aiq__list_next(&p, &name, &len);) {
		char **q = realloc(w->queues, (w->nqueues + 1) * sizeof *q);
		if (q == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		w->queues = q;
		if (!(w->queues[w->nqueues] = strndup(name, len)))
			return aiq__err(AIQ_ENOMEM, "out of memory");
		w->nqueues++;
	}
	return AIQ_OK;
}

AIQ_API int aiq_worker_new(aiq_worker **out, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out must not be NULL");
	*out = NULL;
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	aiq_worker *w = calloc(1, sizeof *w);
	if (w == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	pthread_mutex_init(&w->lock, NULL);
	pthread_mutex_init(&w->pub_lock, NULL);
	pthread_mutex_init(&w->put_lock, NULL);
	pthread_cond_init(&w->put_cv, NULL);
	pthread_mutex_init(&w->err_lock, NULL);
	pthread_cond_init(&w->work_cv, NULL);
	pthread_cond_init(&w->consumer_cv, NULL);
	pthread_mutex_init(&w->server_lock, NULL);
	w->server_fd = -1;
	int rc = aiq_config_copy(&w->cfg, cfg);
	if (rc != AIQ_OK)
		goto fail;

	w->concurrency = (int)aiq__cfg_int(cfg, AIQ_CFG_WORKER_CONCURRENCY);
	if (w->concurrency <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		w->concurrency = n > 0 ? (int)n : 1;
	}
	int64_t prefetch = aiq__cfg_int(cfg, AIQ_CFG_WORKER_PREFETCH);
	int64_t per_thread = aiq__cfg_int(cfg, AIQ_CFG_WORKER_PREFETCH_MULTIPLIER);
	w->prefetch = prefetch > 0 ? (size_t)prefetch : (size_t)w->concurrency * (size_t)per_thread;
	if (w->prefetch < (size_t)w->concurrency)
		w->prefetch = (size_t)w->concurrency;
	w->max_retries = (int)aiq__cfg_int(cfg, AIQ_CFG_TASK_MAX_RETRIES);
	w->soft_limit_ms = aiq__cfg_int(cfg, AIQ_CFG_TASK_SOFT_TIME_LIMIT_MS);
	w->hard_limit_ms = aiq__cfg_int(cfg, AIQ_CFG_TASK_TIME_LIMIT_MS);
	w->limit_min_ms = aiq__cfg_int(cfg, AIQ_CFG_WORKER_TIME_LIMIT_MIN_MS);
	w->limit_max_ms = aiq__cfg_int(cfg, AIQ_CFG_WORKER_TIME_LIMIT_MAX_MS);
	if (w->limit_max_ms > 0 && w->limit_min_ms > w->limit_max_ms) {
		rc = aiq__err(AIQ_EINVAL,
		              "worker.time_limit_min_ms (%lld) exceeds worker.time_limit_max_ms "
		              "(%lld)",
		              (long long)w->limit_min_ms, (long long)w->limit_max_ms);
		goto fail;
	}
	w->max_abandoned = (size_t)aiq__cfg_int(cfg, AIQ_CFG_WORKER_MAX_ABANDONED_THREADS);
	w->eta_horizon_ms = aiq__cfg_int(cfg, AIQ_CFG_WORKER_ETA_HORIZON_MS);
	w->track_started = aiq__cfg_bool(cfg, AIQ_CFG_RESULT_TRACK_STARTED);
	w->pool_kind = strcmp(aiq__cfg_str(cfg, AIQ_CFG_WORKER_POOL), "threads") == 0
	                       ? POOL_THREADS
	                       : POOL_PROCESSES;
	w->max_tasks_per_child = aiq__cfg_int(cfg, AIQ_CFG_WORKER_MAX_TASKS_PER_CHILD);
	w->max_memory_kib = aiq__cfg_int(cfg, AIQ_CFG_WORKER_MAX_MEMORY_PER_CHILD);

	const char *queues = aiq__cfg_str(cfg, AIQ_CFG_WORKER_QUEUES);
	rc = split_queues(w, *queues ? queues : aiq__cfg_str(cfg, AIQ_CFG_QUEUE));
	if (rc != AIQ_OK)
		goto fail;
	if (w->nqueues == 0) {
		rc = aiq__err(AIQ_EINVAL, "no queue to consume: set 'queue' or 'worker.queues'");
		goto fail;
	}

	const char *host = aiq__cfg_str(cfg, AIQ_CFG_WORKER_HOSTNAME);
	if (*host) {
		snprintf(w->hostname, sizeof w->hostname, "%s", host);
	} else {
		char node[200] = "localhost";
		gethostname(node, sizeof node - 1);
		snprintf(w->hostname, sizeof w->hostname, "aiq%ld@%s", (long)getpid(), node);
	}

	rc = aiq__registry_add_builtins(w, cfg);
	if (rc == AIQ_OK)
		rc = aiq__ratelimit_new(&w->ratelimit, cfg);
	if (rc == AIQ_OK)
		rc = aiq__unique_new(&w->unique, cfg);
	if (rc == AIQ_OK)
		rc = aiq__embed_sink_new(&w->embed, cfg);
	if (rc != AIQ_OK)
		goto fail;
	*out = w;
	return AIQ_OK;
fail:
	aiq_worker_free(w);
	return rc;
}

AIQ_API const char *aiq_worker_error(const aiq_worker *w)
{
	if (w == NULL)
		return "";
	aiq_worker *mw = (aiq_worker *)(uintptr_t)w;
	pthread_mutex_lock(&mw->err_lock);
	memcpy(mw->err_copy, mw->err, sizeof mw->err_copy);
	pthread_mutex_unlock(&mw->err_lock);
	return mw->err_copy;
}

AIQ_API int64_t aiq_worker_counter(const aiq_worker *w, int which)
{
	if (w == NULL || which < 0 || which >= CNT_N)
		return -1;
	return atomic_load(&((aiq_worker *)(uintptr_t)w)->counters[which]);
}

AIQ_API void aiq_worker_stop(aiq_worker *w)
{
	/* Only an atomic increment: async-signal-safe. The consumer notices
	 * within one tick. */
	if (w)
		atomic_fetch_add(&w->stop_requests, 1);
}

static void close_connections(aiq_worker *w)
{
	aiq__broker_close(w->consumer);
	w->consumer = NULL;
	aiq__broker_close(w->publisher);
	w->publisher = NULL;
	aiq__store_close(w->store);
	w->store = NULL;
	aiq__store_close(w->archive);
	w->archive = NULL;
}

static int open_connections(aiq_worker *w)
{
	const char *burl = aiq__cfg_str(w->cfg, AIQ_CFG_BROKER_URL);
	const char *surl = aiq__cfg_str(w->cfg, AIQ_CFG_RESULT_URL);
	const char *aurl = aiq__cfg_str(w->cfg, AIQ_CFG_ARCHIVE_URL);
	/* Only what is missing: after an abort the store and publisher stayed
	 * open for the handlers that were still running. */
	int rc = w->store ? AIQ_OK : aiq__store_open(&w->store, surl, w->cfg);
	if (rc == AIQ_OK && aurl[0] != '\0' && w->archive == NULL)
		rc = aiq__store_open(&w->archive, aurl, w->cfg);
	if (rc == AIQ_OK)
		rc = aiq__broker_open(&w->consumer, burl, w->cfg);
	if (rc == AIQ_OK && w->publisher == NULL)
		rc = aiq__broker_open(&w->publisher, burl, w->cfg);
	if (rc == AIQ_OK)
		rc = aiq__broker_consume(w->consumer, (const char *const *)w->queues, w->nqueues,
		                         (unsigned)w->prefetch);
	if (rc == AIQ_OK)
		aiq__broker_accept_decoded(w->consumer); /* consumer.c takes them */
	if (rc != AIQ_OK) {
		aiq__worker_seterr(w, "%s", aiq_error_last());
		close_connections(w);
	}
	return rc;
}

AIQ_API int aiq_worker_run(aiq_worker *w)
{
	if (w == NULL)
		return aiq__err(AIQ_EINVAL, "worker is NULL");
	bool expected = false;
	if (!atomic_compare_exchange_strong(&w->running_flag, &expected, true))
		return aiq__err(AIQ_ESTATE, "the worker is already running");
	/* Handlers left running by an earlier abort must finish first. */
	aiq__pool_join(w);
	/* The fork server first, while this process holds no connection of
	 * the run and no pool thread: children inherit neither. */
	if (w->pool_kind == POOL_PROCESSES) {
		int rc = aiq__proc_server_start(w);
		if (rc != AIQ_OK) {
			aiq__worker_seterr(w, "%s", aiq_error_last());
			atomic_store(&w->running_flag, false);
			return rc;
		}
	}
	if (w->consumer == NULL) {
		int rc = open_connections(w);
		if (rc != AIQ_OK) {
			aiq__proc_server_stop(w);
			atomic_store(&w->running_flag, false);
			return rc;
		}
	}
	int rc = AIQ_OK;
	w->started_at_ms = aiq__now_ms();
	aiq__events_start(w);
	aiq__control_start(w);
	pthread_mutex_lock(&w->lock);
	w->quit = false;
	w->discard_done = false;
	w->wake_target = w->consumer;
	for (int i = 0; i < w->concurrency && rc == AIQ_OK; i++)
		rc = aiq__pool_spawn(w);
	pthread_mutex_unlock(&w->lock);
	if (rc != AIQ_OK)
		aiq__worker_seterr(w, "%s", aiq_error_last());

	bool aborted = false;
	if (rc == AIQ_OK)
		rc = aiq__consumer_loop(w, &aborted);

	pthread_mutex_lock(&w->lock);
	w->quit = true;
	pthread_cond_broadcast(&w->work_cv);
	pthread_mutex_unlock(&w->lock);
	if (!aborted) {
		aiq__pool_join(w);
		aiq__outcome_settle(w);
	}
	aiq__control_stop(w);
	aiq__events_stop(w);
	/* After an abort, handlers may still run; the store and publisher stay
	 * open for them until aiq_worker_free() or the next run. None of them
	 * may wake the consumer once it is being closed. */
	pthread_mutex_lock(&w->lock);
	w->wake_target = NULL;
	pthread_mutex_unlock(&w->lock);
	aiq__broker_close(w->consumer);
	w->consumer = NULL;
	if (!aborted) {
		close_connections(w);
	}
	atomic_store(&w->stop_requests, 0);
	atomic_store(&w->running_flag, false);
	if (rc != AIQ_OK)
		return aiq__err(rc, "%s", aiq_worker_error(w));
	return aborted ? aiq__err(AIQ_ECANCELED, "worker aborted") : AIQ_OK;
}

AIQ_API void aiq_worker_free(aiq_worker *w)
{
	if (w == NULL)
		return;
	aiq__pool_join(w);
	aiq__control_free(w);
	aiq__events_free(w);
	close_connections(w);
	aiq__registry_free(w);
	aiq__ratelimit_free(w->ratelimit);
	aiq__unique_free(w->unique);
	aiq__embed_sink_free(w->embed);
	for (size_t i = 0; i < w->nqueues; i++)
		free(w->queues[i]);
	free(w->queues);
	free(w->threads);
	aiq_config_free(w->cfg);
	pthread_mutex_destroy(&w->lock);
	pthread_mutex_destroy(&w->pub_lock);
	pthread_mutex_destroy(&w->put_lock);
	pthread_cond_destroy(&w->put_cv);
	pthread_mutex_destroy(&w->err_lock);
	pthread_cond_destroy(&w->work_cv);
	pthread_cond_destroy(&w->consumer_cv);
	pthread_mutex_destroy(&w->server_lock);
	free(w->exits);
	free(w);
}
