/*
 * The worker: one consumer thread (the caller of aiq_worker_run) owns the
 * consuming broker connection; a pool of threads runs handlers. Finished
 * tasks travel back to the consumer thread, which alone acknowledges or
 * rejects deliveries (broker connections are single-threaded). Retries and
 * delayed re-parking are published through a second, mutex-protected
 * connection.
 *
 * Every delivery is in exactly one place until it is disposed of:
 *   held (ETA within the horizon) -> ready -> running -> done -> acked/rejected
 * and `inflight` counts all of them, so the prefetch bound holds end to end.
 */
#include "worker_int.h"

#include "config_int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TICK_MS         50  /* longest the consumer blocks before re-checking flags */
#define IDLE_FETCH_MS   250 /* fetch timeout with nothing in flight (bounds stop latency) */
#define REVOKE_CHECK_MS 250 /* running tasks older than this are checked for revocation */
#define STORE_ATTEMPTS  4   /* writes of a final state before giving the task back */
#define ARCHIVE_TRIES   3   /* writes of a final state to the archive before giving up */
#define ERRBUF          512

struct analyzer {
	char *name;
	aiq_analyzer_fn fn;
	void *userdata;
	aiq_destroy_fn destroy;
	bool builtin; /* a user analyzer of the same name replaces it */
};

struct plugin_handle {
	void *handle;
	void (*close)(void *handle);
};

struct list {
	aiq_task *head, *tail;
	size_t n;
};

struct pool_thread {
	pthread_t id;
	bool retired; /* exited its loop: the consumer joins it (reap_retired) */
};

enum { CNT_SUCCEEDED, CNT_FAILED, CNT_RETRIED, CNT_REVOKED, CNT_DEAD, CNT_RUNNING, CNT_N };

struct aiq_worker {
	aiq_config *cfg;
	struct handler *handlers;
	size_t nhandlers;
	struct analyzer *analyzers;
	size_t nanalyzers;
	aiq_event_fn event_fn;
	void *event_ud;
	aiq_destroy_fn event_destroy;
	struct plugin_handle *plugins; /* closed after every destructor ran */
	size_t nplugins;

	int concurrency;
	size_t prefetch;
	char **queues;
	size_t nqueues;
	char hostname[256];
	int max_retries;
	int64_t soft_limit_ms, hard_limit_ms;
	int64_t limit_min_ms, limit_max_ms; /* clamp for producer-chosen limits; 0 = none */
	size_t max_abandoned;               /* worker.max_abandoned_threads */
	int64_t eta_horizon_ms;
	bool track_started;

	aiq__broker *consumer;
	aiq__broker *publisher;
	pthread_mutex_t pub_lock;
	aiq__store *store;
	aiq__store *archive; /* archive.url: final states are also written here */

	pthread_mutex_t lock;
	pthread_cond_t work_cv;     /* pool threads wait for ready tasks */
	pthread_cond_t consumer_cv; /* consumer waits for done tasks when at prefetch */
	struct list held, ready, running, done;
	size_t inflight;
	bool quit;                   /* pool threads exit when ready is empty */
	bool consumer_idle;          /* consumer blocked on consumer_cv (not in fetch) */
	struct pool_thread *threads; /* started and not yet joined */
	size_t nthreads, cap_threads;
	/* Threads still running a handler abandoned at its hard time limit, and
	 * replacements not started because that count reached max_abandoned:
	 * while any is missing the consumer takes no new work. */
	size_t nabandoned, missing;
	/* Stop/abort ordering: pool threads wake the consumer only through
	 * wake_target, cleared before the consumer is closed; once an abort
	 * handed everything back (discard_done), finished tasks are not queued
	 * for a consumer that no longer holds their deliveries. */
	aiq__broker *wake_target;
	bool discard_done;

	atomic_int stop_requests;
	atomic_bool running_flag;
	atomic_llong counters[CNT_N];

	pthread_mutex_t err_lock;
	char err[ERRBUF];
	char err_copy[ERRBUF];
};

/* ---- small helpers ------------------------------------------------------ */

static void list_push(struct list *l, aiq_task *t)
{
	t->next = NULL;
	t->prev = l->tail;
	if (l->tail)
		l->tail->next = t;
	else
		l->head = t;
	l->tail = t;
	l->n++;
}

static void list_remove(struct list *l, aiq_task *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		l->head = t->next;
	if (t->next)
		t->next->prev = t->prev;
	else
		l->tail = t->prev;
	t->next = t->prev = NULL;
	l->n--;
}

static aiq_task *list_pop(struct list *l)
{
	aiq_task *t = l->head;
	if (t)
		list_remove(l, t);
	return t;
}

static void worker_seterr(aiq_worker *w, const char *fmt, ...) AIQ__PRINTF(2, 3);
static void worker_seterr(aiq_worker *w, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&w->err_lock);
	vsnprintf(w->err, sizeof w->err, fmt, ap);
	pthread_mutex_unlock(&w->err_lock);
	va_end(ap);
}

static void emit(aiq_worker *w, int event, const char *id, const char *name, const char *detail)
{
	if (w->event_fn)
		w->event_fn(event, id, name, detail, w->event_ud);
}

static const struct handler *find_handler(const aiq_worker *w, const char *name)
{
	for (size_t i = 0; i < w->nhandlers; i++)
		if (strcmp(w->handlers[i].name, name) == 0)
			return &w->handlers[i];
	return NULL;
}

/* ---- registration -------------------------------------------------------- */

static int add_handler(aiq_worker *w, const char *name, aiq_task_fn fn, void *ud,
                       aiq_destroy_fn destroy)
{
	struct handler *h = realloc(w->handlers, (w->nhandlers + 1) * sizeof *h);
	if (h == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->handlers = h;
	char *copy = strdup(name);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->handlers[w->nhandlers++] = (struct handler){copy, fn, ud, destroy};
	return AIQ_OK;
}

static int add_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn, void *ud,
                        aiq_destroy_fn destroy)
{
	struct analyzer *a = realloc(w->analyzers, (w->nanalyzers + 1) * sizeof *a);
	if (a == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->analyzers = a;
	char *copy = strdup(name);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->analyzers[w->nanalyzers++] = (struct analyzer){copy, fn, ud, destroy, false};
	return AIQ_OK;
}

static int split_queues(aiq_worker *w, const char *list)
{
	const char *p = list;
	while (*p) {
		while (*p == ',' || *p == ' ')
			p++;
		const char *start = p;
		while (*p && *p != ',')
			p++;
		const char *end = p;
		while (end > start && end[-1] == ' ')
			end--;
		if (end == start)
			continue;
		char **q = realloc(w->queues, (w->nqueues + 1) * sizeof *q);
		if (q == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		w->queues = q;
		if (!(w->queues[w->nqueues] = strndup(start, (size_t)(end - start))))
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
	pthread_mutex_init(&w->err_lock, NULL);
	pthread_cond_init(&w->work_cv, NULL);
	pthread_cond_init(&w->consumer_cv, NULL);
	int rc = aiq_config_copy(&w->cfg, cfg);
	if (rc != AIQ_OK)
		goto fail;

	w->concurrency = (int)aiq__config_int(cfg, "worker.concurrency");
	if (w->concurrency <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		w->concurrency = n > 0 ? (int)n : 1;
	}
	int64_t prefetch = aiq__config_int(cfg, "worker.prefetch");
	int64_t per_thread = aiq__config_int(cfg, "worker.prefetch_multiplier");
	w->prefetch = prefetch > 0 ? (size_t)prefetch : (size_t)w->concurrency * (size_t)per_thread;
	if (w->prefetch < (size_t)w->concurrency)
		w->prefetch = (size_t)w->concurrency;
	w->max_retries = (int)aiq__config_int(cfg, "task.max_retries");
	w->soft_limit_ms = aiq__config_int(cfg, "task.soft_time_limit_ms");
	w->hard_limit_ms = aiq__config_int(cfg, "task.time_limit_ms");
	w->limit_min_ms = aiq__config_int(cfg, "worker.time_limit_min_ms");
	w->limit_max_ms = aiq__config_int(cfg, "worker.time_limit_max_ms");
	if (w->limit_max_ms > 0 && w->limit_min_ms > w->limit_max_ms) {
		rc = aiq__err(AIQ_EINVAL,
		              "worker.time_limit_min_ms (%lld) exceeds worker.time_limit_max_ms "
		              "(%lld)",
		              (long long)w->limit_min_ms, (long long)w->limit_max_ms);
		goto fail;
	}
	w->max_abandoned = (size_t)aiq__config_int(cfg, "worker.max_abandoned_threads");
	w->eta_horizon_ms = aiq__config_int(cfg, "worker.eta_horizon_ms");
	w->track_started = aiq__config_int(cfg, "result.track_started") != 0;

	const char *queues = aiq__config_str(cfg, "worker.queues");
	rc = split_queues(w, *queues ? queues : aiq__config_str(cfg, "queue"));
	if (rc != AIQ_OK)
		goto fail;
	if (w->nqueues == 0) {
		rc = aiq__err(AIQ_EINVAL, "no queue to consume: set 'queue' or 'worker.queues'");
		goto fail;
	}

	const char *host = aiq__config_str(cfg, "worker.hostname");
	if (*host) {
		snprintf(w->hostname, sizeof w->hostname, "%s", host);
	} else {
		char node[200] = "localhost";
		gethostname(node, sizeof node - 1);
		snprintf(w->hostname, sizeof w->hostname, "aiq%ld@%s", (long)getpid(), node);
	}

	rc = add_handler(w, aiq__config_str(cfg, "analyze.task_name"), aiq__analyze_task, w, NULL);
	if (rc == AIQ_OK)
		rc = aiq__worker_add_builtin_analyzer(w, "lyrics", aiq__lyrics_analyzer, NULL,
		                                      NULL);
#ifdef AIQ_HAVE_LLM
	if (rc == AIQ_OK)
		rc = aiq__llm_register(w, cfg); /* `llm` and the llm.presets names */
#endif
	if (rc != AIQ_OK)
		goto fail;
	*out = w;
	return AIQ_OK;
fail:
	aiq_worker_free(w);
	return rc;
}

AIQ_API int aiq_worker_register(aiq_worker *w, const char *task_name, aiq_task_fn fn,
                                void *userdata, aiq_destroy_fn destroy)
{
	int rc;
	if (w == NULL || task_name == NULL || *task_name == '\0' || fn == NULL)
		rc = aiq__err(AIQ_EINVAL, "worker, task name and handler are required");
	else if (atomic_load(&w->running_flag))
		rc = aiq__err(AIQ_ESTATE, "cannot register '%s' while the worker runs", task_name);
	else if (find_handler(w, task_name))
		rc = aiq__err(AIQ_EEXIST, "task '%s' is already registered", task_name);
	else
		rc = add_handler(w, task_name, fn, userdata, destroy);
	if (rc != AIQ_OK && destroy)
		destroy(userdata);
	return rc;
}

AIQ_API int aiq_worker_add_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn,
                                    void *userdata, aiq_destroy_fn destroy)
{
	int rc = AIQ_OK;
	if (w == NULL || name == NULL || *name == '\0' || fn == NULL)
		rc = aiq__err(AIQ_EINVAL, "worker, analyzer name and function are required");
	else if (atomic_load(&w->running_flag))
		rc = aiq__err(AIQ_ESTATE, "cannot add analyzer '%s' while the worker runs", name);
	if (rc != AIQ_OK)
		goto out;
	for (size_t i = 0; i < w->nanalyzers; i++) {
		struct analyzer *a = &w->analyzers[i];
		if (strcmp(a->name, name) != 0)
			continue;
		if (!a->builtin) {
			rc = aiq__err(AIQ_EEXIST, "analyzer '%s' is already registered", name);
			goto out;
		}
		/* A user analyzer replaces the built-in of the same name. */
		if (a->destroy)
			a->destroy(a->userdata);
		a->fn = fn;
		a->userdata = userdata;
		a->destroy = destroy;
		a->builtin = false;
		return AIQ_OK;
	}
	rc = add_analyzer(w, name, fn, userdata, destroy);
out:
	if (rc != AIQ_OK && destroy)
		destroy(userdata);
	return rc;
}

int aiq__worker_add_builtin_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn,
                                     void *userdata, aiq_destroy_fn destroy)
{
	int rc = AIQ_OK;
	for (size_t i = 0; i < w->nanalyzers; i++)
		if (strcmp(w->analyzers[i].name, name) == 0)
			rc = aiq__err(AIQ_EEXIST, "analyzer '%s' is already registered", name);
	if (rc == AIQ_OK)
		rc = add_analyzer(w, name, fn, userdata, destroy);
	if (rc == AIQ_OK)
		w->analyzers[w->nanalyzers - 1].builtin = true;
	else if (destroy)
		destroy(userdata);
	return rc;
}

int aiq__worker_keep_plugin(aiq_worker *w, void *handle, void (*close_fn)(void *handle))
{
	if (atomic_load(&w->running_flag))
		return aiq__err(AIQ_ESTATE, "cannot load a plugin while the worker runs");
	struct plugin_handle *p = realloc(w->plugins, (w->nplugins + 1) * sizeof *p);
	if (p == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->plugins = p;
	w->plugins[w->nplugins++] = (struct plugin_handle){handle, close_fn};
	return AIQ_OK;
}

const char *aiq__worker_default_analyzer(const aiq_worker *w)
{
	return aiq__config_str(w->cfg, "analyze.default_analyzer");
}

int aiq__worker_find_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn *fn, void **ud)
{
	for (size_t i = 0; i < w->nanalyzers; i++) {
		if (strcmp(w->analyzers[i].name, name) == 0) {
			*fn = w->analyzers[i].fn;
			*ud = w->analyzers[i].userdata;
			return AIQ_OK;
		}
	}
	return aiq__err(AIQ_ENOTFOUND, "unknown analyzer '%.100s'", name);
}

AIQ_API int aiq_worker_on_event(aiq_worker *w, aiq_event_fn fn, void *userdata,
                                aiq_destroy_fn destroy)
{
	if (w == NULL || fn == NULL || atomic_load(&w->running_flag)) {
		if (destroy)
			destroy(userdata);
		return w == NULL || fn == NULL
		               ? aiq__err(AIQ_EINVAL, "worker and callback are required")
		               : aiq__err(AIQ_ESTATE,
		                          "cannot set the event callback while running");
	}
	if (w->event_destroy)
		w->event_destroy(w->event_ud);
	w->event_fn = fn;
	w->event_ud = userdata;
	w->event_destroy = destroy;
	return AIQ_OK;
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

/* ---- storing outcomes ----------------------------------------------------- */

/* Copy a final state the result store accepted to the archive (archive.url).
 * Best effort: a few attempts 100-200 ms apart, then an error in the log;
 * the delivery is acknowledged either way, so an archive outage never stalls
 * the queue (docs/postgres.md). */
static void archive_final(aiq_worker *w, const aiq_result *r)
{
	int64_t delay_ms = 100;
	for (int attempt = 1;; attempt++) {
		int rc = aiq__store_put(w->archive, r);
		if (rc == AIQ_OK || rc == AIQ_ESTATE)
			return;
		if (attempt >= ARCHIVE_TRIES) {
			aiq__log(AIQ_LOG_ERROR,
			         "archiving %s for task %s failed after %d attempts: %s",
			         aiq_state_name(r->state), r->task_id, attempt, aiq_error_last());
			return;
		}
		usleep((useconds_t)(delay_ms * 1000));
		delay_ms *= 2;
	}
}

static int store_state(aiq_worker *w, const char *id, const char *parent_id, int state,
                       const char *json, const char *exc_type, const char *exc_message,
                       const char *exc_module, const char *traceback)
{
	aiq_result *r = NULL;
	int rc = aiq__result_new(&r, id, state);
	if (rc == AIQ_OK && json)
		rc = aiq__result_set_json(r, json);
	if (rc == AIQ_OK && exc_type)
		rc = aiq__result_set_error(r, exc_type, exc_message, exc_module, traceback);
	if (rc == AIQ_OK && parent_id && !(r->parent_id = strdup(parent_id)))
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK) {
		if (aiq_state_is_ready(state))
			aiq__result_mark_done(r);
		rc = aiq__store_put(w->store, r);
		if (rc == AIQ_OK && w->archive && aiq_state_is_ready(state))
			archive_final(w, r);
	}
	aiq_result_free(r);
	if (rc != AIQ_OK && rc != AIQ_ESTATE)
		worker_seterr(w, "storing %s for task %s failed: %s", aiq_state_name(state), id,
		              aiq_error_last());
	return rc;
}

int aiq__worker_store_state(aiq_worker *w, aiq_task *t, int state, const char *json,
                            const char *exc_type, const char *exc_message, const char *exc_module)
{
	if (t->msg.ignore_result)
		return AIQ_OK;
	return store_state(w, t->msg.id, t->msg.parent_id, state, json, exc_type, exc_message,
	                   exc_module, exc_type ? t->traceback : NULL);
}

/* A final state must reach the store before the delivery is acked. Transient
 * store failures are retried a few times; after that the task goes back to
 * the broker (at-least-once: it will run again rather than be lost). */
static enum task_disposition store_final(aiq_worker *w, aiq_task *t, int state, const char *json,
                                         const char *exc_type, const char *exc_message,
                                         const char *exc_module)
{
	int64_t delay_ms = 100;
	for (int attempt = 0; attempt < STORE_ATTEMPTS; attempt++) {
		int rc = aiq__worker_store_state(w, t, state, json, exc_type, exc_message,
		                                 exc_module);
		if (rc == AIQ_OK || rc == AIQ_ESTATE)
			return DISPOSE_ACK;
		if (attempt + 1 < STORE_ATTEMPTS) {
			usleep((useconds_t)(delay_ms * 1000));
			delay_ms *= 2;
		}
	}
	return DISPOSE_REQUEUE;
}

/* ---- retries -------------------------------------------------------------- */

static int64_t backoff_ms(const aiq_worker *w, int retries)
{
	int64_t base = aiq__config_int(w->cfg, "task.retry_backoff_ms");
	int64_t cap = aiq__config_int(w->cfg, "task.retry_backoff_max_ms");
	int64_t d = base;
	for (int i = 0; i < retries && d < cap; i++)
		d *= 2;
	if (d > cap)
		d = cap;
	if (aiq__config_int(w->cfg, "task.retry_jitter"))
		d = (int64_t)aiq__rand_range((uint64_t)d); /* full jitter */
	return d;
}

/* Publish through the worker's publishing connection. */
static int publish(aiq_worker *w, const char *queue, const aiq__wire *wire, int64_t not_before)
{
	pthread_mutex_lock(&w->pub_lock);
	int rc = aiq__broker_publish(w->publisher, queue, wire, not_before);
	pthread_mutex_unlock(&w->pub_lock);
	return rc;
}

static int publish_message(aiq_worker *w, const char *queue, const aiq__message *m)
{
	aiq__wire wire;
	int rc = aiq__message_to_wire(&wire, m);
	if (rc != AIQ_OK)
		return rc;
	int64_t eta_ms = m->eta_us / 1000;
	bool delay =
	        (aiq__broker_caps(w->publisher) & AIQ__BROKER_CAP_DELAY) && eta_ms > aiq__now_ms();
	rc = publish(w, queue, &wire, delay ? eta_ms : 0);
	aiq__wire_clear(&wire);
	return rc;
}

static enum task_disposition do_retry(aiq_worker *w, aiq_task *t)
{
	if (t->msg.retries >= t->max_retries) {
		char msg[300];
		snprintf(msg, sizeof msg, "Can't retry %s[%s] args:%s kwargs:%s", t->msg.task,
		         t->msg.id, t->args_json, t->kwargs_json);
		atomic_fetch_add(&w->counters[CNT_FAILED], 1);
		enum task_disposition d =
		        store_final(w, t, AIQ_STATE_FAILURE, NULL, "MaxRetriesExceededError", msg,
		                    "celery.exceptions");
		emit(w, AIQ_EVENT_FAILED, t->msg.id, t->msg.task, msg);
		return d;
	}
	int64_t countdown =
	        t->retry_countdown_ms >= 0 ? t->retry_countdown_ms : backoff_ms(w, t->msg.retries);
	/* The new message: same id and root, retries + 1, a new ETA, parent = self. */
	aiq__message next = t->msg;
	next.retries = t->msg.retries + 1;
	next.eta_us = (aiq__now_ms() + countdown) * 1000;
	next.parent_id = t->msg.id;
	int rc = publish_message(w, t->delivery->queue, &next);
	if (rc != AIQ_OK) {
		worker_seterr(w, "republishing task %s for a retry failed: %s", t->msg.id,
		              aiq_error_last());
		return DISPOSE_REQUEUE;
	}
	aiq__worker_store_state(w, t, AIQ_STATE_RETRY, NULL, t->exc_type, t->exc_message,
	                        t->exc_module);
	atomic_fetch_add(&w->counters[CNT_RETRIED], 1);
	emit(w, AIQ_EVENT_RETRIED, t->msg.id, t->msg.task, t->exc_message);
	return DISPOSE_ACK;
}

/* ---- pool threads ----------------------------------------------------------- */

/* Before a task runs: storing STARTED doubles as the check that it is not
 * final already (revoked, or finished by an earlier delivery of the same
 * message), because a store never replaces a final state and says so; only
 * then, or without STARTED, is the state read. Runs on the pool thread, so
 * these round trips are spread over the pool instead of serialising the
 * consumer. Returns false when the task must not run. */
static bool claim_task(aiq_worker *w, aiq_task *t)
{
	if (w->track_started && !t->msg.ignore_result) {
		char *meta = aiq__asprintf("{\"pid\": %ld, \"hostname\": \"%s\"}", (long)getpid(),
		                           w->hostname);
		int rc = meta ? aiq__worker_store_state(w, t, AIQ_STATE_STARTED, meta, NULL, NULL,
		                                        NULL)
		              : AIQ_ENOMEM;
		free(meta);
		if (rc != AIQ_ESTATE)
			return true; /* stored, or a store error: run; the outcome write retries */
	}
	aiq_result *r = NULL;
	if (aiq__store_get(w->store, &r, t->msg.id) != AIQ_OK)
		return true;
	int state = aiq_result_state(r);
	aiq_result_free(r);
	if (!aiq_state_is_ready(state))
		return true;
	t->final_before = state;
	return false;
}

static void run_task(aiq_worker *w, aiq_task *t)
{
	emit(w, AIQ_EVENT_STARTED, t->msg.id, t->msg.task, NULL);
	t->handler->fn(t, t->handler->userdata);
}

/* Decide and store the outcome; returns what to do with the delivery. */
static enum task_disposition finish_task(aiq_worker *w, aiq_task *t)
{
	if (t->final_before == AIQ_STATE_REVOKED) {
		atomic_fetch_add(&w->counters[CNT_REVOKED], 1);
		emit(w, AIQ_EVENT_REVOKED, t->msg.id, t->msg.task, "revoked");
		return DISPOSE_ACK;
	}
	if (t->final_before) {
		aiq__log(AIQ_LOG_INFO, "task %s is already %s: acknowledging a redelivery",
		         t->msg.id, aiq_state_name(t->final_before));
		return DISPOSE_ACK;
	}
	int cancel = atomic_load(&t->cancel);
	if (cancel == AIQ_ECANCELED && !t->revoked)
		return DISPOSE_REQUEUE; /* worker aborted: give it back untouched */
	if (t->revoked) {
		atomic_fetch_add(&w->counters[CNT_REVOKED], 1);
		emit(w, AIQ_EVENT_REVOKED, t->msg.id, t->msg.task, "revoked while running");
		return DISPOSE_ACK; /* REVOKED is already stored */
	}
	if (t->outcome == OUTCOME_NONE && t->invalid_report[0] != '\0') {
		/* The handler reported, but nothing it reported was valid: never
		 * a silent SUCCESS with null. */
		enum task_disposition d =
		        store_final(w, t, AIQ_STATE_FAILURE, NULL, "InvalidResultError",
		                    t->invalid_report, "aiqueue");
		atomic_fetch_add(&w->counters[CNT_FAILED], 1);
		emit(w, AIQ_EVENT_FAILED, t->msg.id, t->msg.task, t->invalid_report);
		return d;
	}
	switch (t->outcome) {
	case OUTCOME_NONE:
	case OUTCOME_SUCCESS: {
		enum task_disposition d =
		        store_final(w, t, AIQ_STATE_SUCCESS,
		                    t->result_json ? t->result_json : "null", NULL, NULL, NULL);
		atomic_fetch_add(&w->counters[CNT_SUCCEEDED], 1);
		emit(w, AIQ_EVENT_SUCCEEDED, t->msg.id, t->msg.task, NULL);
		return d;
	}
	case OUTCOME_FAILURE: {
		enum task_disposition d = store_final(w, t, AIQ_STATE_FAILURE, NULL, t->exc_type,
		                                      t->exc_message, t->exc_module);
		atomic_fetch_add(&w->counters[CNT_FAILED], 1);
		emit(w, AIQ_EVENT_FAILED, t->msg.id, t->msg.task, t->exc_message);
		return d;
	}
	case OUTCOME_RETRY: return do_retry(w, t);
	}
	return DISPOSE_ACK;
}

/* A time limit the producer chose (seconds, from the message), clamped to
 * worker.time_limit_min_ms / worker.time_limit_max_ms; `fallback` when the
 * message gives none. Never rounds a positive limit down to "none". */
static int64_t task_limit_ms(const aiq_worker *w, double seconds, int64_t fallback)
{
	if (!(seconds > 0))
		return fallback;
	double ms = seconds * 1000.0;
	if (!(ms < 1e15))
		ms = 1e15; /* beyond any sane limit; keeps the conversion defined */
	int64_t v = (int64_t)ms;
	if (v < 1)
		v = 1;
	if (w->limit_min_ms > 0 && v < w->limit_min_ms)
		v = w->limit_min_ms;
	if (w->limit_max_ms > 0 && v > w->limit_max_ms)
		v = w->limit_max_ms;
	return v;
}

/* Mark the calling pool thread as exited, for reap_retired(). Lock held. */
static void retire_self(aiq_worker *w)
{
	pthread_t self = pthread_self();
	for (size_t i = 0; i < w->nthreads; i++)
		if (pthread_equal(w->threads[i].id, self))
			w->threads[i].retired = true;
}

static void *pool_main(void *arg)
{
	aiq_worker *w = arg;
	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (w->ready.n == 0 && !w->quit)
			pthread_cond_wait(&w->work_cv, &w->lock);
		aiq_task *t = list_pop(&w->ready);
		if (t == NULL)
			break; /* quit with nothing left */
		list_push(&w->running, t);
		t->started_mono = aiq__mono_ms();
		int64_t soft = task_limit_ms(w, t->msg.soft_time_limit, w->soft_limit_ms);
		int64_t hard = task_limit_ms(w, t->msg.time_limit, w->hard_limit_ms);
		t->soft_deadline = soft > 0 ? t->started_mono + soft : 0;
		t->hard_deadline = hard > 0 ? t->started_mono + hard : 0;
		atomic_fetch_add(&w->counters[CNT_RUNNING], 1);
		pthread_mutex_unlock(&w->lock);

		if (claim_task(w, t))
			run_task(w, t);

		pthread_mutex_lock(&w->lock);
		bool abandoned = t->abandoned, overdue = t->overdue;
		if (!abandoned)
			list_remove(&w->running, t);
		pthread_mutex_unlock(&w->lock);
		atomic_fetch_sub(&w->counters[CNT_RUNNING], 1);

		if (abandoned) {
			/* The consumer already disposed of the delivery: discard the
			 * outcome. A thread left behind by a hard time limit had a
			 * replacement started; it retires, unless the replacement
			 * was withheld (max_abandoned_threads), then it takes the
			 * free slot itself. */
			aiq__task_free(t);
			pthread_mutex_lock(&w->lock);
			pthread_cond_signal(&w->consumer_cv);
			if (overdue) {
				w->nabandoned--;
				if (w->missing > 0 && !w->quit) {
					w->missing--;
					if (w->missing == 0)
						aiq__log(AIQ_LOG_WARNING,
						         "worker: a handler past its hard time "
						         "limit "
						         "returned; taking work again");
					continue;
				}
			}
			break;
		}
		t->disposition = finish_task(w, t);

		pthread_mutex_lock(&w->lock);
		if (w->discard_done) {
			/* Aborted meanwhile: the consumer handed every delivery back
			 * and may be closed; the broker redelivers this one, and
			 * the stored final state makes that redelivery a no-op. */
			pthread_mutex_unlock(&w->lock);
			aiq__delivery *d = t->delivery;
			t->delivery = NULL;
			aiq__delivery_free(d);
			aiq__task_free(t);
			pthread_mutex_lock(&w->lock);
			continue;
		}
		list_push(&w->done, t);
		pthread_cond_signal(&w->consumer_cv);
		/* Under the lock, so the consumer cannot be closed meanwhile
		 * (wakeup() never blocks). */
		if (!w->consumer_idle && w->wake_target)
			aiq__broker_wakeup(w->wake_target);
	}
	retire_self(w);
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/* Called with w->lock held. */
static int spawn_thread(aiq_worker *w)
{
	if (w->nthreads == w->cap_threads) {
		size_t cap = w->cap_threads ? w->cap_threads * 2 : 8;
		struct pool_thread *nt = realloc(w->threads, cap * sizeof *nt);
		if (nt == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		w->threads = nt;
		w->cap_threads = cap;
	}
	struct pool_thread *pt = &w->threads[w->nthreads];
	pt->retired = false;
	if (pthread_create(&pt->id, NULL, pool_main, w) != 0)
		return aiq__err(AIQ_ERROR, "cannot start a worker thread");
	w->nthreads++;
	return AIQ_OK;
}

/* Consumer thread or aiq_worker_free(), with no pool thread being started. */
static void join_threads(aiq_worker *w)
{
	pthread_mutex_lock(&w->lock);
	size_t n = w->nthreads;
	pthread_mutex_unlock(&w->lock);
	for (size_t i = 0; i < n; i++)
		pthread_join(w->threads[i].id, NULL);
	pthread_mutex_lock(&w->lock);
	w->nthreads = 0;
	w->nabandoned = 0;
	w->missing = 0;
	pthread_mutex_unlock(&w->lock);
}

/* Join threads that left their loop (retired after a hard time limit), so
 * each expiry costs a thread only while its handler still runs. Consumer
 * thread, lock not held. */
static void reap_retired(aiq_worker *w)
{
	pthread_t gone[16];
	size_t n = 0;
	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < w->nthreads && n < 16;) {
		if (w->threads[i].retired) {
			gone[n++] = w->threads[i].id;
			w->threads[i] = w->threads[--w->nthreads];
		} else {
			i++;
		}
	}
	pthread_mutex_unlock(&w->lock);
	for (size_t i = 0; i < n; i++)
		pthread_join(gone[i], NULL); /* it is past its last use of the lock */
}

size_t aiq__worker_thread_count(aiq_worker *w)
{
	pthread_mutex_lock(&w->lock);
	size_t n = w->nthreads;
	pthread_mutex_unlock(&w->lock);
	return n;
}

/* ---- consumer thread ------------------------------------------------------ */

static void dispose_delivery(aiq_worker *w, aiq__delivery *d, const char *id,
                             enum task_disposition disp)
{
	int rc = AIQ_OK;
	if (d == NULL)
		return;
	if (disp == DISPOSE_ACK)
		rc = aiq__broker_ack(w->consumer, d);
	else if (disp == DISPOSE_REQUEUE)
		rc = aiq__broker_reject(w->consumer, d, true);
	if (rc != AIQ_OK)
		worker_seterr(w, "%s of task %s failed: %s",
		              disp == DISPOSE_ACK ? "acknowledgement" : "requeue", id ? id : "?",
		              aiq_error_last());
}

static void dispose(aiq_worker *w, aiq_task *t, enum task_disposition disp)
{
	dispose_delivery(w, t->delivery, t->msg.id, disp);
}

static void dead_letter(aiq_worker *w, aiq__delivery *d, const char *id, const char *name,
                        const char *reason)
{
	int rc = aiq__broker_dead_letter(w->consumer, d, reason);
	if (rc != AIQ_OK) {
		/* Never drop it silently: leave it for redelivery and say why. */
		worker_seterr(w, "dead-lettering a message failed (%s); it stays on the broker",
		              aiq_error_last());
		aiq__broker_reject(w->consumer, d, true);
	}
	atomic_fetch_add(&w->counters[CNT_DEAD], 1);
	emit(w, AIQ_EVENT_REJECTED, id, name, reason);
}

static bool is_revoked(aiq_worker *w, const char *id)
{
	aiq_result *r = NULL;
	if (aiq__store_get(w->store, &r, id) != AIQ_OK)
		return false;
	bool revoked = aiq_result_state(r) == AIQ_STATE_REVOKED;
	aiq_result_free(r);
	return revoked;
}

/* Handle one fresh delivery on the consumer thread. Returns true when the
 * delivery became a task counted in inflight. */
static bool accept_delivery(aiq_worker *w, aiq__delivery *d)
{
	aiq_task *t = calloc(1, sizeof *t);
	if (t == NULL || (d->queue && !(t->queue = strdup(d->queue)))) {
		free(t);
		aiq__broker_reject(w->consumer, d, true);
		aiq__delivery_free(d);
		return false;
	}
	t->w = w;
	t->delivery = d;
	aiq__message_init(&t->msg);
	int rc = aiq__message_from_wire(&t->msg, &d->wire);
	if (rc == AIQ_ENOMEM) {
		/* Not the message's fault: give it back. */
		dispose(w, t, DISPOSE_REQUEUE);
		aiq__task_free(t);
		return false;
	}
	if (rc != AIQ_OK || d->undecodable) {
		/* A poison message: dead-lettered with the reason, never requeued,
		 * never an error of the run. */
		char reason[600];
		snprintf(reason, sizeof reason, "undecodable message: %s",
		         d->undecodable ? d->undecodable : aiq_error_last());
		if (t->msg.id)
			store_state(w, t->msg.id, NULL, AIQ_STATE_FAILURE, NULL,
			            "InvalidTaskMessage", reason, "aiqueue", NULL);
		dead_letter(w, d, t->msg.id, t->msg.task, reason);
		aiq__task_free(t);
		return false;
	}
	const char *id = t->msg.id, *name = t->msg.task;
	t->handler = find_handler(w, name);
	if (t->handler == NULL) {
		char reason[400];
		snprintf(reason, sizeof reason, "unregistered task '%.300s'", name);
		if (!t->msg.ignore_result)
			store_state(w, id, NULL, AIQ_STATE_FAILURE, NULL, "NotRegistered", name,
			            "celery.exceptions", NULL);
		atomic_fetch_add(&w->counters[CNT_FAILED], 1);
		emit(w, AIQ_EVENT_FAILED, id, name, reason);
		dead_letter(w, d, id, name, reason);
		aiq__task_free(t);
		return false;
	}
	int64_t now = aiq__now_ms();
	if (t->msg.expires_us && t->msg.expires_us / 1000 <= now) {
		store_state(w, id, NULL, AIQ_STATE_REVOKED, NULL, "TaskRevokedError", "expired",
		            "celery.exceptions", NULL);
		dispose(w, t, DISPOSE_ACK);
		atomic_fetch_add(&w->counters[CNT_REVOKED], 1);
		emit(w, AIQ_EVENT_REVOKED, id, name, "expired");
		aiq__task_free(t);
		return false;
	}
	t->args_json = json_dumps(t->msg.args, JSON_COMPACT);
	t->kwargs_json = json_dumps(t->msg.kwargs, JSON_COMPACT);
	if (!t->args_json || !t->kwargs_json) {
		dispose(w, t, DISPOSE_REQUEUE);
		aiq__task_free(t);
		return false;
	}
	t->max_retries = t->msg.max_retries >= 0 ? t->msg.max_retries : w->max_retries;
	t->retry_countdown_ms = -1;
	emit(w, AIQ_EVENT_RECEIVED, id, name, NULL);

	int64_t eta_ms = t->msg.eta_us / 1000;
	if (eta_ms > now) {
		/* Far ETAs are parked in the broker rather than held here, so a
		 * worker never sits on unacked messages for long. */
		if (eta_ms - now > w->eta_horizon_ms &&
		    (aiq__broker_caps(w->publisher) & AIQ__BROKER_CAP_DELAY) &&
		    publish(w, d->queue, &d->wire, eta_ms) == AIQ_OK) {
			dispose(w, t, DISPOSE_ACK);
			aiq__task_free(t);
			return false;
		}
		t->hold_until_ms = eta_ms;
		pthread_mutex_lock(&w->lock);
		list_push(&w->held, t);
		w->inflight++;
		pthread_mutex_unlock(&w->lock);
		return true;
	}
	pthread_mutex_lock(&w->lock);
	list_push(&w->ready, t);
	w->inflight++;
	pthread_cond_signal(&w->work_cv);
	pthread_mutex_unlock(&w->lock);
	return true;
}

/* Ack or reject finished tasks. Called without the lock. */
static void drain_done(aiq_worker *w)
{
	for (;;) {
		pthread_mutex_lock(&w->lock);
		aiq_task *t = list_pop(&w->done);
		if (t)
			w->inflight--;
		pthread_mutex_unlock(&w->lock);
		if (t == NULL)
			return;
		dispose(w, t, t->disposition);
		aiq__task_free(t);
	}
}

/* Move held tasks whose ETA has come to the ready list; returns the time
 * until the next one is due (or TICK_MS). Lock held. */
static int64_t release_held(aiq_worker *w)
{
	int64_t now = aiq__now_ms(), next = TICK_MS;
	aiq_task *t = w->held.head;
	while (t) {
		aiq_task *nx = t->next;
		if (t->hold_until_ms <= now) {
			list_remove(&w->held, t);
			list_push(&w->ready, t);
			pthread_cond_signal(&w->work_cv);
		} else if (t->hold_until_ms - now < next) {
			next = t->hold_until_ms - now;
		}
		t = nx;
	}
	return next;
}

/* Hard time limit passed: a thread cannot be killed safely, so record the
 * failure, ack the delivery, give the slot to a new thread, and let the old
 * one retire when (if ever) its handler returns. Lock held on entry and exit;
 * released in between. */
static void abandon_overdue(aiq_worker *w, aiq_task *t)
{
	list_remove(&w->running, t);
	t->abandoned = true;
	t->overdue = true;
	w->inflight--;
	atomic_store(&t->cancel, AIQ_ETIMEDOUT);
	char msg[128];
	snprintf(msg, sizeof msg, "TimeLimitExceeded(%.3f)",
	         (double)(t->hard_deadline - t->started_mono) / 1000.0);
	char *id = strdup(t->msg.id), *name = strdup(t->msg.task);
	char *parent = aiq__strdup(t->msg.parent_id);
	bool ignore = t->msg.ignore_result;
	aiq__delivery *d = t->delivery; /* from now on the consumer owns it */
	t->delivery = NULL;
	w->nabandoned++;
	bool withheld = w->nabandoned > w->max_abandoned;
	if (withheld || spawn_thread(w) != AIQ_OK) {
		w->missing++;
		char why[300];
		if (withheld)
			snprintf(why, sizeof why,
			         "%zu handler(s) still run past their hard time limit "
			         "(worker.max_abandoned_threads = %zu): no replacement thread; "
			         "taking no new work until one returns",
			         w->nabandoned, w->max_abandoned);
		else
			snprintf(why, sizeof why,
			         "cannot replace a thread stuck past its time limit; taking no "
			         "new work until it returns");
		worker_seterr(w, "%s", why);
		aiq__log(AIQ_LOG_ERROR, "worker: %s", why);
	}
	pthread_mutex_unlock(&w->lock);

	if (!ignore && id)
		store_state(w, id, parent, AIQ_STATE_FAILURE, NULL, "TimeLimitExceeded", msg,
		            "billiard.exceptions", NULL);
	dispose_delivery(w, d, id, DISPOSE_ACK);
	aiq__delivery_free(d);
	atomic_fetch_add(&w->counters[CNT_FAILED], 1);
	emit(w, AIQ_EVENT_FAILED, id, name, msg);
	free(id);
	free(name);
	free(parent);
	pthread_mutex_lock(&w->lock);
}

/* Soft/hard time limits and revocation of running tasks. Consumer thread. */
static void supervise(aiq_worker *w, int64_t *last_revoke_check)
{
	int64_t now = aiq__mono_ms();
	bool check_revoked = now - *last_revoke_check >= REVOKE_CHECK_MS;
	if (check_revoked)
		*last_revoke_check = now;

	pthread_mutex_lock(&w->lock);
	aiq_task *t = w->running.head;
	while (t) {
		if (t->soft_deadline && now >= t->soft_deadline)
			atomic_store(&t->cancel, AIQ_ETIMEDOUT);
		if (t->hard_deadline && now >= t->hard_deadline) {
			abandon_overdue(w, t);
			t = w->running.head; /* the list may have changed while unlocked */
			continue;
		}
		t = t->next;
	}

	/* Revocation: ask the store about tasks that have run for a while. */
	size_t n = 0;
	char *ids[64];
	if (check_revoked)
		for (t = w->running.head; t && n < 64; t = t->next)
			if (!t->revoked && now - t->started_mono >= REVOKE_CHECK_MS)
				ids[n++] = strdup(t->msg.id);
	pthread_mutex_unlock(&w->lock);
	for (size_t i = 0; i < n; i++) {
		if (ids[i] == NULL || !is_revoked(w, ids[i])) {
			free(ids[i]);
			ids[i] = NULL;
		}
	}
	pthread_mutex_lock(&w->lock);
	for (t = w->running.head; t; t = t->next) {
		for (size_t i = 0; i < n; i++) {
			if (ids[i] && strcmp(ids[i], t->msg.id) == 0) {
				t->revoked = true;
				atomic_store(&t->cancel, AIQ_ECANCELED);
			}
		}
	}
	pthread_mutex_unlock(&w->lock);
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
}

/* Second stop: hand back everything not finished and return. */
static void abort_inflight(aiq_worker *w)
{
	pthread_mutex_lock(&w->lock);
	struct list back = {0};
	aiq_task *t;
	while ((t = list_pop(&w->held)))
		list_push(&back, t);
	while ((t = list_pop(&w->ready)))
		list_push(&back, t);
	struct list deliveries = {0};
	for (t = w->running.head; t; t = t->next) {
		t->abandoned = true;
		atomic_store(&t->cancel, AIQ_ECANCELED);
		aiq_task *holder = calloc(1, sizeof *holder);
		if (holder) {
			holder->delivery = t->delivery;
			t->delivery = NULL;
			aiq__message_init(&holder->msg);
			list_push(&deliveries, holder);
		}
	}
	w->running = (struct list){0};
	/* Finished tasks still hold deliveries of this consumer: settle them
	 * here; tasks that finish from now on are discarded by their thread. */
	struct list done = w->done;
	w->done = (struct list){0};
	w->inflight = 0;
	w->discard_done = true;
	w->quit = true;
	pthread_cond_broadcast(&w->work_cv);
	pthread_mutex_unlock(&w->lock);

	while ((t = list_pop(&done))) {
		dispose(w, t, t->disposition);
		aiq__task_free(t);
	}
	while ((t = list_pop(&back))) {
		dispose(w, t, DISPOSE_REQUEUE);
		aiq__task_free(t);
	}
	while ((t = list_pop(&deliveries))) {
		dispose(w, t, DISPOSE_REQUEUE);
		aiq__task_free(t);
	}
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
	const char *burl = aiq__config_str(w->cfg, "broker.url");
	const char *surl = aiq__config_str(w->cfg, "result.url");
	const char *aurl = aiq__config_str(w->cfg, "archive.url");
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
	if (rc != AIQ_OK) {
		worker_seterr(w, "%s", aiq_error_last());
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
	join_threads(w);
	if (w->consumer == NULL) {
		int rc = open_connections(w);
		if (rc != AIQ_OK) {
			atomic_store(&w->running_flag, false);
			return rc;
		}
	}
	int rc = AIQ_OK;
	pthread_mutex_lock(&w->lock);
	w->quit = false;
	w->discard_done = false;
	w->wake_target = w->consumer;
	for (int i = 0; i < w->concurrency && rc == AIQ_OK; i++)
		rc = spawn_thread(w);
	pthread_mutex_unlock(&w->lock);
	if (rc != AIQ_OK)
		worker_seterr(w, "%s", aiq_error_last());

	int64_t last_revoke_check = aiq__mono_ms();
	bool draining = false, aborted = false;
	while (rc == AIQ_OK) {
		int stops = atomic_load(&w->stop_requests);
		drain_done(w);
		supervise(w, &last_revoke_check);
		reap_retired(w);

		pthread_mutex_lock(&w->lock);
		int64_t wait_ms = release_held(w);
		if (stops >= 1 && !draining) {
			draining = true;
			/* Tasks waiting for their ETA have not started: give them back. */
			struct list back = w->held;
			w->held = (struct list){0};
			w->inflight -= back.n;
			pthread_mutex_unlock(&w->lock);
			aiq_task *t;
			while ((t = list_pop(&back))) {
				dispose(w, t, DISPOSE_REQUEUE);
				aiq__task_free(t);
			}
			pthread_mutex_lock(&w->lock);
		}
		if (stops >= 2) {
			pthread_mutex_unlock(&w->lock);
			abort_inflight(w);
			aborted = true;
			break;
		}
		if (draining) {
			if (w->inflight == 0) {
				pthread_mutex_unlock(&w->lock);
				break;
			}
			pthread_mutex_unlock(&w->lock);
			aiq__broker_keepalive(w->consumer);
			pthread_mutex_lock(&w->lock);
			w->consumer_idle = true;
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += TICK_MS * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			if (w->done.n == 0)
				pthread_cond_timedwait(&w->consumer_cv, &w->lock, &ts);
			w->consumer_idle = false;
			pthread_mutex_unlock(&w->lock);
			continue;
		}
		if (w->inflight >= w->prefetch || w->missing > 0) {
			/* At the prefetch bound, or short of threads because handlers
			 * hang past their hard limit: wait for a task to finish,
			 * keeping the consuming connection alive meanwhile. */
			pthread_mutex_unlock(&w->lock);
			aiq__broker_keepalive(w->consumer);
			pthread_mutex_lock(&w->lock);
			w->consumer_idle = true;
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			int64_t ms = wait_ms < TICK_MS ? wait_ms : TICK_MS;
			ts.tv_nsec += ms * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			if (w->done.n == 0)
				pthread_cond_timedwait(&w->consumer_cv, &w->lock, &ts);
			w->consumer_idle = false;
			pthread_mutex_unlock(&w->lock);
			continue;
		}
		bool have_done = w->done.n > 0;
		/* Nothing in flight: block longer, so an idle worker costs the
		 * broker a few calls a second rather than twenty. */
		if (w->inflight == 0)
			wait_ms = IDLE_FETCH_MS;
		pthread_mutex_unlock(&w->lock);

		aiq__delivery *d = NULL;
		int frc = aiq__broker_fetch(w->consumer, &d, have_done ? 0 : wait_ms);
		if (frc == AIQ_OK && d) {
			accept_delivery(w, d);
		} else if (frc != AIQ_ETIMEDOUT) {
			/* Drivers reconnect inside fetch; a hard error ends the run. */
			worker_seterr(w, "consuming failed: %s", aiq_error_last());
			rc = frc;
			atomic_fetch_add(&w->stop_requests, 2);
			abort_inflight(w);
			aborted = true;
			break;
		}
	}

	pthread_mutex_lock(&w->lock);
	w->quit = true;
	pthread_cond_broadcast(&w->work_cv);
	pthread_mutex_unlock(&w->lock);
	if (!aborted) {
		join_threads(w);
		drain_done(w);
	}
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
	join_threads(w);
	close_connections(w);
	for (size_t i = 0; i < w->nhandlers; i++) {
		if (w->handlers[i].destroy)
			w->handlers[i].destroy(w->handlers[i].userdata);
		free(w->handlers[i].name);
	}
	free(w->handlers);
	for (size_t i = 0; i < w->nanalyzers; i++) {
		if (w->analyzers[i].destroy)
			w->analyzers[i].destroy(w->analyzers[i].userdata);
		free(w->analyzers[i].name);
	}
	free(w->analyzers);
	if (w->event_destroy)
		w->event_destroy(w->event_ud);
	for (size_t i = 0; i < w->nqueues; i++)
		free(w->queues[i]);
	free(w->queues);
	free(w->threads);
	/* Last: the destructors above may live in these plugins. */
	for (size_t i = w->nplugins; i > 0; i--)
		w->plugins[i - 1].close(w->plugins[i - 1].handle);
	free(w->plugins);
	aiq_config_free(w->cfg);
	pthread_mutex_destroy(&w->lock);
	pthread_mutex_destroy(&w->pub_lock);
	pthread_mutex_destroy(&w->err_lock);
	pthread_cond_destroy(&w->work_cv);
	pthread_cond_destroy(&w->consumer_cv);
	free(w);
}
