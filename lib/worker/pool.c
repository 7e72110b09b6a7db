/*
 * The pool: threads that claim a ready task, run its handler and store its
 * outcome; time limits (soft: the handler is told; hard: the thread is
 * abandoned and replaced) and revocation of running tasks. With
 * worker.pool = processes each thread runs the handlers in its own child
 * process instead (pool_process.c), and the hard limit kills that child.
 */
#include "worker_int.h"
#include "canvas_apply.h"
#include "ratelimit.h"

#include "unique.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REVOKE_CHECK_MS 250 /* running tasks older than this are checked for revocation */

/* Before a task runs: storing STARTED doubles as the check that it is not
 * final already (revoked, or finished by an earlier delivery of the same
 * message), because a store never replaces a final state and says so; only
 * then, or without STARTED, is the state read. Runs on the pool thread, so
 * these round trips are spread over the pool instead of serialising the
 * consumer. Returns false when the task must not run. */
static bool claim_task(aiq_worker *w, aiq_task *t, pid_t pid)
{
	if (w->track_started && !t->msg.ignore_result) {
		char *meta = aiq__asprintf("{\"pid\": %ld, \"hostname\": \"%s\"}", (long)pid,
		                           w->hostname);
		int rc = meta ? aiq__worker_store_state(w, t, AIQ_STATE_STARTED, meta, NULL, NULL,
		                                        NULL)
		              : AIQ_ENOMEM;
		free(meta);
		if (rc != AIQ_ESTATE)
			return true; /* stored, or a store error: run; the outcome write retries */
	}
	if (t->final_before)
		return false; /* the consumer's read at fetch time found it final */
	if (t->state_checked_mono && aiq__mono_ms() - t->state_checked_mono < STATE_FRESH_MS)
		return true; /* read at fetch time, moments ago */
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

static void run_task(aiq_worker *w, aiq_task *t, struct proc_slot *slot)
{
	aiq__worker_emit_task(w, AIQ_EVENT_STARTED, t, NULL, NULL);
	aiq__unique_on_start(w->unique, &t->msg);
	if (w->pool_kind == POOL_PROCESSES)
		aiq__proc_run(w, slot, t);
	else
		t->handler->fn(t, t->handler->userdata);
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

/* Mark the calling pool thread as exited, for aiq__pool_reap(). Lock held. */
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
	struct proc_slot slot = {.pid = -1, .fd = -1};
	if (w->pool_kind == POOL_PROCESSES && aiq__proc_start(w, &slot) != AIQ_OK)
		aiq__log(AIQ_LOG_ERROR, "worker: %s (retried with the first task)",
		         aiq_error_last());
	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (w->ready.n == 0 && !w->quit)
			pthread_cond_wait(&w->work_cv, &w->lock);
		aiq_task *t = aiq__list_pop(&w->ready);
		if (t == NULL)
			break; /* quit with nothing left */
		aiq__list_push(&w->running, t);
		t->started_mono = aiq__mono_ms();
		int64_t soft = task_limit_ms(w, t->msg.soft_time_limit, w->soft_limit_ms);
		int64_t hard = task_limit_ms(w, t->msg.time_limit, w->hard_limit_ms);
		t->soft_deadline = soft > 0 ? t->started_mono + soft : 0;
		t->hard_deadline = hard > 0 ? t->started_mono + hard : 0;
		atomic_fetch_add(&w->counters[CNT_RUNNING], 1);
		pthread_mutex_unlock(&w->lock);

		if (w->pool_kind == POOL_PROCESSES)
			aiq__proc_start(w, &slot); /* a failure is the task's (aiq__proc_run) */
		if (claim_task(w, t, slot.pid > 0 ? slot.pid : getpid()))
			run_task(w, t, &slot);

		pthread_mutex_lock(&w->lock);
		bool abandoned = t->abandoned, overdue = t->overdue;
		if (!abandoned)
			aiq__list_remove(&w->running, t);
		bool held = abandoned && t->held; /* the supervisor frees it */
		if (held)
			t->retired = true;
		pthread_mutex_unlock(&w->lock);
		atomic_fetch_sub(&w->counters[CNT_RUNNING], 1);

		if (abandoned) {
			/* The consumer already disposed of the delivery: discard the
			 * outcome. A thread left behind by a hard time limit had a
			 * replacement started; it retires, unless the replacement
			 * was withheld (max_abandoned_threads), then it takes the
			 * free slot itself. */
			if (!held)
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
		t->disposition = aiq__outcome_finish(w, t);

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
		aiq__list_push(&w->done, t);
		pthread_cond_signal(&w->consumer_cv);
		/* Under the lock, so the consumer cannot be closed meanwhile
		 * (wakeup() never blocks). */
		if (!w->consumer_idle && w->wake_target)
			aiq__broker_wakeup(w->wake_target);
	}
	retire_self(w);
	pthread_mutex_unlock(&w->lock);
	/* Idle (or killed by an abort): it exits when its socket closes. Who
	 * joins this thread waits for that, so no child outlives the pool. */
	aiq__proc_stop(w, &slot, false);
	return NULL;
}

/* Called with w->lock held. */
int aiq__pool_spawn(aiq_worker *w)
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
void aiq__pool_join(aiq_worker *w)
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
	aiq__proc_server_stop(w); /* its children ended with their threads */
}

/* Join threads that left their loop (retired after a hard time limit), so
 * each expiry costs a thread only while its handler still runs. Consumer
 * thread, lock not held. */
void aiq__pool_reap(aiq_worker *w)
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

/* Keep in ids[] only the tasks whose stored state is REVOKED (the others
 * freed and set to NULL), asking the store once for all of them. */
static void mark_revoked(aiq_worker *w, char **ids, size_t n)
{
	aiq_result *rs[64];
	int st[64];
	const char *asked[64];
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (ids[i])
			asked[m++] = ids[i];
	if (m > 0)
		aiq__store_get_batch(w->store, rs, asked, m, st);
	for (size_t i = 0, k = 0; i < n; i++) {
		if (ids[i] == NULL)
			continue;
		bool revoked = st[k] == AIQ_OK && aiq_result_state(rs[k]) == AIQ_STATE_REVOKED;
		aiq_result_free(rs[k++]);
		if (!revoked) {
			free(ids[i]);
			ids[i] = NULL;
		}
	}
}

/* Hard time limit passed: a thread cannot be killed safely, so record the
 * failure, ack the delivery, give the slot to a new thread, and let the old
 * one retire when (if ever) its handler returns. Lock held on entry and exit;
 * released in between. */
static void abandon_overdue(aiq_worker *w, aiq_task *t)
{
	aiq__list_remove(&w->running, t);
	t->abandoned = true;
	t->overdue = true;
	t->held = true; /* its message is read below, unlocked */
	w->inflight--;
	atomic_store(&t->cancel, AIQ_ETIMEDOUT);
	char msg[128];
	snprintf(msg, sizeof msg, "TimeLimitExceeded(%.3f)",
	         (double)(t->hard_deadline - t->started_mono) / 1000.0);
	/* t->held: its message stays valid until the end, and its thread only
	 * reads it meanwhile. */
	const char *id = t->msg.id, *name = t->msg.task;
	aiq__delivery *d = t->delivery; /* from now on the consumer owns it */
	t->delivery = NULL;
	w->nabandoned++;
	bool withheld = w->nabandoned > w->max_abandoned;
	if (withheld || aiq__pool_spawn(w) != AIQ_OK) {
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
		aiq__worker_seterr(w, "%s", why);
		aiq__log(AIQ_LOG_ERROR, "worker: %s", why);
	}
	pthread_mutex_unlock(&w->lock);

	int rc = AIQ_OK;
	if (!t->msg.ignore_result)
		rc = aiq__outcome_store(w, id, t->msg.parent_id, AIQ_STATE_FAILURE, NULL,
		                        "TimeLimitExceeded", msg, "billiard.exceptions", NULL);
	/* As Celery's hard limit (mark_as_failure with the request): its chord
	 * hears of the part and its errbacks are sent, before the ack. */
	if (rc == AIQ_OK)
		aiq__canvas_after_store(w, t, AIQ_STATE_FAILURE, NULL, "TimeLimitExceeded", msg,
		                        "billiard.exceptions");
	aiq__outcome_dispose(w, d, id, DISPOSE_ACK);
	aiq__delivery_free(d);
	atomic_fetch_add(&w->counters[CNT_FAILED], 1);
	aiq__worker_emit(w, AIQ_EVENT_FAILED, id, name, msg);
	pthread_mutex_lock(&w->lock);
	t->held = false;
	if (t->retired)
		aiq__task_free(t); /* its thread returned meanwhile and left it */
}

/* Extend the leases of the concurrency slots this worker's tasks hold
 * (held for an ETA, ready, running or done). Consumer thread. */
static void renew_slots(aiq_worker *w)
{
	enum { MAX_RENEW = 256 };
	aiq__ratelimit_slot *slots[MAX_RENEW];
	size_t n = 0;
	pthread_mutex_lock(&w->lock);
	struct list *lists[] = {&w->held, &w->ready, &w->running, &w->done};
	for (size_t l = 0; l < sizeof lists / sizeof lists[0]; l++)
		for (aiq_task *t = lists[l]->head; t && n < MAX_RENEW; t = t->next)
			if (t->slot && aiq__ratelimit_slot_copy(&slots[n], t->slot) == AIQ_OK)
				n++;
	pthread_mutex_unlock(&w->lock);
	for (size_t i = 0; i < n; i++) {
		aiq__ratelimit_renew(w->ratelimit, slots[i]);
		aiq__ratelimit_slot_free(slots[i]);
	}
}

/* Soft/hard time limits and revocation of running tasks. Consumer thread. */
void aiq__pool_supervise(aiq_worker *w, int64_t *last_revoke_check)
{
	int64_t now = aiq__mono_ms();
	if (now - w->slots_renewed_mono >= AIQ__CONCURRENCY_RENEW_MS) {
		w->slots_renewed_mono = now;
		renew_slots(w);
	}
	bool check_revoked = now - *last_revoke_check >= REVOKE_CHECK_MS;
	if (check_revoked)
		*last_revoke_check = now;

	pthread_mutex_lock(&w->lock);
	aiq_task *t = w->running.head;
	while (t) {
		if (t->soft_deadline && now >= t->soft_deadline)
			atomic_store(&t->cancel, AIQ_ETIMEDOUT);
		/* Processes: the pool thread kills the child at the hard limit. */
		if (t->hard_deadline && now >= t->hard_deadline && w->pool_kind == POOL_THREADS) {
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
	mark_revoked(w, ids, n);
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
