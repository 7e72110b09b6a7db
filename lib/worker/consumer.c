/*
 * The consumer thread (the caller of aiq_worker_run) owns the consuming
 * broker connection: it fetches, decides what each delivery is (poison,
 * unregistered, expired, held for its ETA, ready), hands ready tasks to the
 * pool and alone acknowledges or rejects deliveries (broker connections are
 * single-threaded).
 */
#include "worker_int.h"
#include "canvas_apply.h"

#include "ratelimit.h"
#include "unique.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IDLE_FETCH_MS 250 /* fetch timeout with nothing in flight (bounds stop latency) */
#define FETCH_MAX     64  /* deliveries taken in one fetch */
/* Fetch policy: with the pool still fed (ready tasks queued), the consumer
 * waits until half the prefetch window is free, or FETCH_DEFER_US after the
 * first slot freed, then acknowledges what finished and refills the window
 * in one fetch. Refetching as soon as one slot frees costs a round trip per
 * task; waiting for a batch costs at most FETCH_DEFER_US of latency, and
 * none when the pool would otherwise go idle (nothing ready: fetch now). */
#define FETCH_DEFER_US 2000

/* Park a far-ETA task in the broker: the delivery's wire as it came, or,
 * when the delivery carried its decoded message instead, that message
 * encoded now (the only time a local handoff needs the bytes). */
static int park_far_eta(aiq_worker *w, const aiq__delivery *d, const aiq__message *m,
                        int64_t eta_ms)
{
	if (d->wire.headers || d->wire.body)
		return aiq__outcome_publish(w, d->queue, &d->wire, eta_ms);
	aiq__wire wire;
	int rc = aiq__message_to_wire(&wire, m);
	if (rc == AIQ_OK)
		rc = aiq__outcome_publish(w, d->queue, &wire, eta_ms);
	aiq__wire_clear(&wire);
	return rc;
}

/* A rate-limited task whose turn is nearer than this waits here. */
#define RATE_HOLD_MS 20
/* When the buckets' store fails, a task is parked this long (no tokens
 * taken) and tries again. */
#define RATE_RETRY_MS 1000

/* worker.rate_limits (ratelimit.h): take the task's tokens, unless it is
 * a parked copy whose turn this is. A turn later than RATE_HOLD_MS parks
 * it in the broker with that ETA, marked as holding its tokens: true, the
 * delivery was acked (after the broker took the copy) and the task freed.
 * Otherwise *eta_ms becomes its turn and it is held here. */
static bool rate_gate(aiq_worker *w, aiq_task *t, int64_t now, int64_t *eta_ms)
{
	if (aiq__ratelimit_redeem(&t->msg, now))
		return false;
	int64_t wait = 0;
	int rc = aiq__ratelimit_reserve(&wait, w->ratelimit, &t->msg);
	if (rc != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "task %s: rate limit unknown (%s); trying again in %d ms",
		         t->msg.id, aiq_error_last(), RATE_RETRY_MS);
		wait = RATE_RETRY_MS;
	}
	int64_t turn = now + wait;
	if (wait == 0 || turn <= *eta_ms)
		return false;
	aiq__delivery *d = t->delivery;
	if (wait > RATE_HOLD_MS && (aiq__broker_caps(w->publisher) & AIQ__BROKER_CAP_DELAY) &&
	    (rc != AIQ_OK || aiq__ratelimit_mark(d->wire.headers, &t->msg, turn) == AIQ_OK) &&
	    park_far_eta(w, d, &t->msg, turn) == AIQ_OK) {
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_ACK);
		aiq__task_free(t);
		return true;
	}
	*eta_ms = turn;
	return false;
}

/* A task that waits for a concurrency slot comes back this long later
 * (plus up to as much again, so waiting tasks do not all return at once). */
#define SLOT_RETRY_MS 250

/* worker.rate_limits' concurrency (ratelimit.h): take a slot for the task.
 * Every slot taken, or the slots' store failing: the task is parked in the
 * broker for a short while (it holds no prefetch slot meanwhile) and true
 * is returned, the delivery disposed of and the task freed. */
static bool slot_gate(aiq_worker *w, aiq_task *t, int64_t now)
{
	bool full = false;
	int rc = aiq__ratelimit_acquire(&t->slot, &full, w->ratelimit, &t->msg);
	if (rc == AIQ_OK && !full)
		return false;
	int64_t wait = SLOT_RETRY_MS + (int64_t)aiq__rand_range(SLOT_RETRY_MS);
	if (rc != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING,
		         "task %s: concurrency slots unknown (%s); trying again in %d ms",
		         t->msg.id, aiq_error_last(), RATE_RETRY_MS);
		wait = RATE_RETRY_MS;
	}
	if (park_far_eta(w, t->delivery, &t->msg, now + wait) == AIQ_OK) {
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_ACK);
	} else {
		aiq__log(AIQ_LOG_WARNING, "task %s: parking it to wait for a slot failed (%s)",
		         t->msg.id, aiq_error_last());
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_REQUEUE);
	}
	aiq__task_free(t);
	return true;
}

/* Handle one fresh delivery on the consumer thread. Returns true when the
 * delivery became a task counted in inflight; a task ready to run is not
 * queued yet but handed back in *ready, for check_states(). */
static bool accept_delivery(aiq_worker *w, aiq__delivery *d, aiq_task **ready)
{
	*ready = NULL;
	aiq_task *t = calloc(1, sizeof *t);
	if (t == NULL || (d->queue && !(t->queue = strdup(d->queue)))) {
		free(t);
		aiq__broker_reject(w->consumer, d, true);
		aiq__delivery_free(d);
		return false;
	}
	t->w = w;
	t->delivery = d;
	int rc = AIQ_OK;
	if (d->message) {
		/* Handed over by a process-local broker: the model its publisher
		 * built, now ours alone; no decode. */
		t->msg = *d->message;
		free(d->message);
		d->message = NULL;
		atomic_fetch_add(&w->decodes_skipped, 1);
	} else {
		rc = aiq__message_from_wire(&t->msg, &d->wire);
	}
	if (rc == AIQ_ENOMEM) {
		/* Not the message's fault: give it back. */
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_REQUEUE);
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
			aiq__outcome_store(w, t->msg.id, NULL, AIQ_STATE_FAILURE, NULL,
			                   "InvalidTaskMessage", reason, "aiqueue", NULL);
		aiq__outcome_dead_letter(w, d, t->msg.id, t->msg.task, reason);
		aiq__task_free(t);
		return false;
	}
	const char *id = t->msg.id, *name = t->msg.task;
	t->handler = aiq__registry_find_handler(w, name);
	if (t->handler == NULL) {
		char reason[400];
		snprintf(reason, sizeof reason, "unregistered task '%.300s'", name);
		if (!t->msg.ignore_result)
			aiq__outcome_store(w, id, NULL, AIQ_STATE_FAILURE, NULL, "NotRegistered",
			                   name, "celery.exceptions", NULL);
		atomic_fetch_add(&w->counters[CNT_FAILED], 1);
		aiq__worker_emit(w, AIQ_EVENT_FAILED, id, name, reason);
		aiq__outcome_dead_letter(w, d, id, name, reason);
		aiq__task_free(t);
		return false;
	}
	int64_t now = aiq__now_ms();
	if (t->msg.expires_us && t->msg.expires_us / 1000 <= now) {
		bool stored =
		        aiq__outcome_store(w, id, NULL, AIQ_STATE_REVOKED, NULL, "TaskRevokedError",
		                           "expired", "celery.exceptions", NULL) == AIQ_OK;
		aiq__outcome_revoked(w, t, stored, "expired", "expired");
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_ACK);
		aiq__task_free(t);
		return false;
	}
	t->args_json = json_dumps(t->msg.args, JSON_COMPACT);
	t->kwargs_json = json_dumps(t->msg.kwargs, JSON_COMPACT);
	if (!t->args_json || !t->kwargs_json) {
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_REQUEUE);
		aiq__task_free(t);
		return false;
	}
	t->max_retries = t->msg.max_retries >= 0 ? t->msg.max_retries : w->max_retries;
	t->retry_countdown_ms = -1;
	aiq__worker_emit_task(w, AIQ_EVENT_RECEIVED, t, NULL, NULL);

	int64_t eta_ms = t->msg.eta_us / 1000;
	if (eta_ms - now <= w->eta_horizon_ms &&
	    (slot_gate(w, t, now) || rate_gate(w, t, now, &eta_ms)))
		return false;
	if (eta_ms > now) {
		/* Far ETAs are parked in the broker rather than held here, so a
		 * worker never sits on unacked messages for long. */
		if (eta_ms - now > w->eta_horizon_ms &&
		    (aiq__broker_caps(w->publisher) & AIQ__BROKER_CAP_DELAY) &&
		    park_far_eta(w, d, &t->msg, eta_ms) == AIQ_OK) {
			aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_ACK);
			aiq__task_free(t);
			return false;
		}
		t->hold_until_ms = eta_ms;
		pthread_mutex_lock(&w->lock);
		aiq__list_push(&w->held, t);
		w->inflight++;
		pthread_mutex_unlock(&w->lock);
		return true;
	}
	pthread_mutex_lock(&w->lock);
	w->inflight++;
	pthread_mutex_unlock(&w->lock);
	*ready = t;
	return true;
}

/* Tasks of one fetch, before they run: read their states in one round trip
 * (get_batch) instead of one read per task on the pool threads. A task
 * whose state is final already (revoked, or finished by an earlier
 * delivery) gets final_before and does not run. Tasks that store STARTED
 * need no read: that write refuses a final state and says so. */
static void check_states(aiq_worker *w, aiq_task **ts, size_t n)
{
	const char *ids[FETCH_MAX];
	aiq_task *asked[FETCH_MAX];
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (ts[i] && !(w->track_started && !ts[i]->msg.ignore_result)) {
			asked[m] = ts[i];
			ids[m++] = ts[i]->msg.id;
		}
	if (m == 0)
		return;
	aiq_result *rs[FETCH_MAX];
	int st[FETCH_MAX];
	aiq__store_get_batch(w->store, rs, ids, m, st);
	atomic_fetch_add(&w->state_batches, 1);
	int64_t now = aiq__mono_ms();
	for (size_t k = 0; k < m; k++) {
		if (st[k] == AIQ_OK) {
			/* A store error leaves the task unchecked: the pool thread
			 * reads its state again before running it. */
			asked[k]->state_checked_mono = now;
			int state = aiq_result_state(rs[k]);
			if (aiq_state_is_ready(state))
				asked[k]->final_before = state;
		}
		aiq_result_free(rs[k]);
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
			aiq__list_remove(&w->held, t);
			aiq__list_push(&w->ready, t);
			pthread_cond_signal(&w->work_cv);
		} else if (t->hold_until_ms - now < next) {
			next = t->hold_until_ms - now;
		}
		t = nx;
	}
	return next;
}

/* Second stop: hand back everything not finished and return. */
static void abort_inflight(aiq_worker *w)
{
	pthread_mutex_lock(&w->lock);
	struct list back = {0};
	aiq_task *t;
	while ((t = aiq__list_pop(&w->held)))
		aiq__list_push(&back, t);
	while ((t = aiq__list_pop(&w->ready)))
		aiq__list_push(&back, t);
	struct list deliveries = {0};
	for (t = w->running.head; t; t = t->next) {
		t->abandoned = true;
		atomic_store(&t->cancel, AIQ_ECANCELED);
		aiq_task *holder = calloc(1, sizeof *holder);
		if (holder) {
			holder->delivery = t->delivery;
			t->delivery = NULL;
			aiq__message_init(&holder->msg);
			aiq__list_push(&deliveries, holder);
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

	while ((t = aiq__list_pop(&done))) {
		aiq__outcome_dispose(w, t->delivery, t->msg.id, t->disposition);
		aiq__task_free(t);
	}
	while ((t = aiq__list_pop(&back))) {
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_REQUEUE);
		aiq__task_free(t);
	}
	while ((t = aiq__list_pop(&deliveries))) {
		aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_REQUEUE);
		aiq__task_free(t);
	}
}

/* The consuming loop: each tick settles finished tasks, supervises running
 * ones, releases held ones whose ETA came, then fetches, unless at the
 * prefetch bound or draining after a stop. */
static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Whether to hold the next fetch back (see FETCH_DEFER_US): some room is
 * free, less than a batch, the pool has ready work, and the first slot
 * freed less than FETCH_DEFER_US ago. *defer_since is when the room first
 * opened (0 = not deferring). Sets *left_us to the time left. Lock held. */
static bool defer_fetch(aiq_worker *w, int64_t *defer_since, int64_t *left_us)
{
	size_t busy = w->inflight - w->done.n; /* done ones are acked before a fetch */
	size_t room = w->prefetch > busy ? w->prefetch - busy : 0;
	size_t batch = w->prefetch / 2;
	if (batch > FETCH_MAX)
		batch = FETCH_MAX;
	if (room == 0 || room >= batch || w->ready.n == 0 || w->missing > 0) {
		*defer_since = 0;
		return false;
	}
	int64_t now = mono_us();
	if (*defer_since == 0)
		*defer_since = now;
	*left_us = *defer_since + FETCH_DEFER_US - now;
	if (*left_us <= 0) {
		*defer_since = 0;
		return false;
	}
	return true;
}

/* Wait on consumer_cv for at most `us` microseconds. Lock held. */
static void wait_consumer_cv(aiq_worker *w, int64_t us)
{
	w->consumer_idle = true;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += (long)(us % 1000000) * 1000L;
	ts.tv_sec += (time_t)(us / 1000000) + ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_cond_timedwait(&w->consumer_cv, &w->lock, &ts);
	w->consumer_idle = false;
}

int aiq__consumer_loop(aiq_worker *w, bool *aborted)
{
	int64_t last_revoke_check = aiq__mono_ms();
	int64_t defer_since = 0;
	bool draining = false;
	int rc = AIQ_OK;
	uint64_t reconnects = aiq__broker_reconnects(w->consumer);
	*aborted = false;
	for (;;) {
		int stops = atomic_load(&w->stop_requests);
		aiq__control_apply_queues(w); /* add_consumer, cancel_consumer */
		aiq__pool_supervise(w, &last_revoke_check);
		aiq__pool_reap(w);

		pthread_mutex_lock(&w->lock);
		int64_t left_us = 0;
		bool defer = stops == 0 && !draining && defer_fetch(w, &defer_since, &left_us);
		if (defer) {
			/* Finished tasks wait with the fetch: their acks go in the
			 * same tick as it, one batch each. */
			wait_consumer_cv(w, left_us < TICK_MS * 1000 ? left_us : TICK_MS * 1000);
			pthread_mutex_unlock(&w->lock);
			continue;
		}
		pthread_mutex_unlock(&w->lock);
		aiq__outcome_settle(w);

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
			while ((t = aiq__list_pop(&back))) {
				aiq__outcome_dispose(w, t->delivery, t->msg.id, DISPOSE_REQUEUE);
				aiq__task_free(t);
			}
			pthread_mutex_lock(&w->lock);
		}
		if (stops >= 2) {
			pthread_mutex_unlock(&w->lock);
			abort_inflight(w);
			*aborted = true;
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
		/* As many as the prefetch bound leaves room for, in one round trip. */
		size_t room = w->prefetch - w->inflight;
		pthread_mutex_unlock(&w->lock);

		aiq__delivery *got[FETCH_MAX];
		size_t n = 0;
		int frc = aiq__broker_fetch_batch(w->consumer, got,
		                                  room < FETCH_MAX ? room : FETCH_MAX, &n,
		                                  have_done ? 0 : wait_ms);
		if (n > 0) {
			atomic_fetch_add(&w->fetches, 1);
			atomic_fetch_add(&w->fetched, n);
		}
		uint64_t r = aiq__broker_reconnects(w->consumer);
		if (r != reconnects)
			atomic_fetch_add(&w->counters[CNT_RECONNECTS], (long long)(r - reconnects));
		reconnects = r;
		aiq_task *ready[FETCH_MAX];
		size_t nready = 0;
		for (size_t i = 0; i < n; i++)
			if (accept_delivery(w, got[i], &ready[nready]) && ready[nready])
				nready++;
		check_states(w, ready, nready);
		if (nready > 0) {
			pthread_mutex_lock(&w->lock);
			for (size_t i = 0; i < nready; i++)
				aiq__list_push(&w->ready, ready[i]);
			pthread_cond_broadcast(&w->work_cv);
			pthread_mutex_unlock(&w->lock);
		}
		if (frc != AIQ_OK && frc != AIQ_ETIMEDOUT) {
			/* Drivers reconnect inside fetch; a hard error ends the run. */
			aiq__worker_seterr(w, "consuming failed: %s", aiq_error_last());
			rc = frc;
			atomic_fetch_add(&w->stop_requests, 2);
			abort_inflight(w);
			*aborted = true;
			break;
		}
	}

	return rc;
}

void aiq__worker_fetch_stats(aiq_worker *w, size_t *fetches, size_t *fetched)
{
	if (fetches)
		*fetches = atomic_load(&w->fetches);
	if (fetched)
		*fetched = atomic_load(&w->fetched);
}

size_t aiq__worker_decodes_skipped(aiq_worker *w)
{
	return atomic_load(&w->decodes_skipped);
}
