/*
 * A finished task's outcome: store it (and archive a final state), then
 * decide what happens to its delivery: ack, retry with backoff (a new
 * message, then ack), requeue when the store is unreachable, or the dead
 * letter queue. Results before acks: a delivery is acknowledged only after
 * its outcome is stored.
 */
#include "worker_int.h"

#include "canvas_apply.h"
#include "config_int.h"
#include "ratelimit.h"
#include "unique.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STORE_ATTEMPTS 4  /* writes of a final state before giving the task back */
#define ARCHIVE_TRIES  3  /* writes of a final state to the archive before giving up */
#define SETTLE_MAX     64 /* deliveries acknowledged in one batch */
#define GROUP_MAX      64 /* result writes committed in one batch */

/* ---- group commit of result writes ---------------------------------------- */

/* A write waiting for the group commit: the thread that queued it waits
 * until a leader committed it (or commits the queue itself). */
struct aiq__put_entry {
	const aiq_result *r;
	int status;
	bool done;
	char why[256]; /* the leader's error text for a failed write */
	struct aiq__put_entry *next;
};

/* Commit up to GROUP_MAX queued writes in one put_batch. Leader only,
 * put_lock not held; statuses are published when `done` is set under it. */
static void commit_group(aiq_worker *w, struct aiq__put_entry *batch, size_t n)
{
	const aiq_result *rs[GROUP_MAX];
	int status[GROUP_MAX];
	if (w->test_commit_delay_us)
		usleep(w->test_commit_delay_us);
	struct aiq__put_entry *e = batch;
	for (size_t i = 0; i < n; i++, e = e->next)
		rs[i] = e->r;
	int rc = aiq__store_put_batch(w->store, rs, n, status);
	atomic_fetch_add(&w->put_groups, 1);
	atomic_fetch_add(&w->put_writes, n);
	const char *why = aiq_error_last();
	e = batch;
	for (size_t i = 0; i < n; i++, e = e->next) {
		e->status = rc != AIQ_OK && status[i] == AIQ_OK ? rc : status[i];
		if (e->status != AIQ_OK)
			snprintf(e->why, sizeof e->why, "%s", why);
	}
}

/* Store a state through the group commit: pool threads queue their writes;
 * the first one to find no commit under way commits whatever is queued
 * (its own included) in one round trip, the others wait for it, and the
 * next waiter leads the next group. Each caller returns only when its own
 * write was answered, so "results before acks" holds per delivery. A
 * store without a batched write gets the group as puts in a row, which its
 * own lock would have serialised anyway. */
static int put_grouped(aiq_worker *w, const aiq_result *r)
{
	struct aiq__put_entry e = {.r = r};
	pthread_mutex_lock(&w->put_lock);
	if (w->put_tail)
		w->put_tail->next = &e;
	else
		w->put_head = &e;
	w->put_tail = &e;
	while (!e.done) {
		if (w->put_writing) {
			pthread_cond_wait(&w->put_cv, &w->put_lock);
			continue;
		}
		w->put_writing = true;
		struct aiq__put_entry *batch = w->put_head, *last = batch;
		size_t n = 1;
		while (n < GROUP_MAX && last->next) {
			last = last->next;
			n++;
		}
		w->put_head = last->next;
		if (w->put_head == NULL)
			w->put_tail = NULL;
		pthread_mutex_unlock(&w->put_lock);
		commit_group(w, batch, n);
		pthread_mutex_lock(&w->put_lock);
		for (struct aiq__put_entry *x = batch; n > 0; n--) {
			struct aiq__put_entry *next = x->next;
			x->done = true;
			x = next;
		}
		w->put_writing = false;
		pthread_cond_broadcast(&w->put_cv);
	}
	pthread_mutex_unlock(&w->put_lock);
	if (e.status != AIQ_OK)
		return aiq__err(e.status, "%s", e.why);
	return AIQ_OK;
}

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

int aiq__outcome_store(aiq_worker *w, const char *id, const char *parent_id, int state,
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
		rc = put_grouped(w, r);
		if (rc == AIQ_OK && w->archive && aiq_state_is_ready(state))
			archive_final(w, r);
	}
	aiq_result_free(r);
	if (rc != AIQ_OK && rc != AIQ_ESTATE)
		aiq__worker_seterr(w, "storing %s for task %s failed: %s", aiq_state_name(state),
		                   id, aiq_error_last());
	return rc;
}

int aiq__worker_store_state(aiq_worker *w, aiq_task *t, int state, const char *json,
                            const char *exc_type, const char *exc_message, const char *exc_module)
{
	if (t->msg.ignore_result)
		return AIQ_OK;
	return aiq__outcome_store(w, t->msg.id, t->msg.parent_id, state, json, exc_type,
	                          exc_message, exc_module, exc_type ? t->traceback : NULL);
}

/* A final state must reach the store before the delivery is acked. Transient
 * store failures are retried a few times; after that the task goes back to
 * the broker (at-least-once: it will run again rather than be lost).
 * *already is set when the store held a final state (a revoke, or another
 * run of a redelivered copy), which this write then did not replace. */
static enum task_disposition store_final(aiq_worker *w, aiq_task *t, int state, const char *json,
                                         const char *exc_type, const char *exc_message,
                                         const char *exc_module, bool *already)
{
	int64_t delay_ms = 100;
	*already = false;
	for (int attempt = 0; attempt < STORE_ATTEMPTS; attempt++) {
		int rc = aiq__worker_store_state(w, t, state, json, exc_type, exc_message,
		                                 exc_module);
		if (rc == AIQ_OK || rc == AIQ_ESTATE) {
			*already = rc == AIQ_ESTATE;
			return DISPOSE_ACK;
		}
		if (attempt + 1 < STORE_ATTEMPTS) {
			usleep((useconds_t)(delay_ms * 1000));
			delay_ms *= 2;
		}
	}
	return DISPOSE_REQUEUE;
}

/* Store a final state, then count it and send its event — unless the store
 * already held a final state, which stays: then the task is counted and
 * reported by whoever made it final, not a second time here. */
static enum task_disposition finish_final(aiq_worker *w, aiq_task *t, int state, const char *json,
                                          const char *exc_type, const char *exc_message,
                                          const char *exc_module)
{
	bool already;
	/* Celery applies links and the chain before it stores the result. */
	if (state == AIQ_STATE_SUCCESS)
		aiq__canvas_on_success(w, t, json);
	enum task_disposition d =
	        store_final(w, t, state, json, exc_type, exc_message, exc_module, &already);
	if (d == DISPOSE_ACK && !already)
		aiq__canvas_after_store(w, t, state, json, exc_type, exc_message, exc_module);
	if (already) {
		aiq__log(AIQ_LOG_INFO, "task %s was already final; its %s was not stored",
		         t->msg.id, aiq_state_name(state));
	} else if (d == DISPOSE_ACK) {
		aiq__unique_on_final(w->unique, &t->msg, state);
		bool ok = state == AIQ_STATE_SUCCESS;
		atomic_fetch_add(&w->counters[ok ? CNT_SUCCEEDED : CNT_FAILED], 1);
		aiq__worker_emit_task(w, ok ? AIQ_EVENT_SUCCEEDED : AIQ_EVENT_FAILED, t, exc_type,
		                      exc_message);
	}
	return d;
}

static int64_t backoff_ms(const aiq_worker *w, int retries)
{
	int64_t base = aiq__cfg_int(w->cfg, AIQ_CFG_TASK_RETRY_BACKOFF_MS);
	int64_t cap = aiq__cfg_int(w->cfg, AIQ_CFG_TASK_RETRY_BACKOFF_MAX_MS);
	int64_t d = base;
	for (int i = 0; i < retries && d < cap; i++)
		d *= 2;
	if (d > cap)
		d = cap;
	if (aiq__cfg_bool(w->cfg, AIQ_CFG_TASK_RETRY_JITTER))
		d = (int64_t)aiq__rand_range((uint64_t)d); /* full jitter */
	return d;
}

/* Publish through the worker's publishing connection. */
int aiq__outcome_publish(aiq_worker *w, const char *queue, const aiq__wire *wire,
                         int64_t not_before)
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
	rc = aiq__outcome_publish(w, queue, &wire, delay ? eta_ms : 0);
	aiq__wire_clear(&wire);
	return rc;
}

static enum task_disposition do_retry(aiq_worker *w, aiq_task *t)
{
	if (t->msg.retries >= t->max_retries) {
		char msg[300];
		snprintf(msg, sizeof msg, "Can't retry %s[%s] args:%s kwargs:%s", t->msg.task,
		         t->msg.id, t->args_json, t->kwargs_json);
		return finish_final(w, t, AIQ_STATE_FAILURE, NULL, "MaxRetriesExceededError", msg,
		                    "celery.exceptions");
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
		aiq__worker_seterr(w, "republishing task %s for a retry failed: %s", t->msg.id,
		                   aiq_error_last());
		return DISPOSE_REQUEUE;
	}
	aiq__worker_store_state(w, t, AIQ_STATE_RETRY, NULL, t->exc_type, t->exc_message,
	                        t->exc_module);
	atomic_fetch_add(&w->counters[CNT_RETRIED], 1);
	aiq__worker_emit_task(w, AIQ_EVENT_RETRIED, t, NULL, t->exc_message);
	return DISPOSE_ACK;
}

void aiq__outcome_revoked(aiq_worker *w, aiq_task *t, bool stored, const char *why,
                          const char *event_detail)
{
	if (stored)
		aiq__canvas_after_store(w, t, AIQ_STATE_REVOKED, NULL, "TaskRevokedError", why,
		                        "celery.exceptions");
	aiq__unique_on_final(w->unique, &t->msg, AIQ_STATE_REVOKED);
	atomic_fetch_add(&w->counters[CNT_REVOKED], 1);
	aiq__worker_emit(w, AIQ_EVENT_REVOKED, t->msg.id, t->msg.task, event_detail);
}

/* Decide and store the outcome; returns what to do with the delivery. */
enum task_disposition aiq__outcome_finish(aiq_worker *w, aiq_task *t)
{
	if (t->final_before == AIQ_STATE_REVOKED) {
		/* Revoked before it ran: REVOKED was stored by the revoke. */
		aiq__outcome_revoked(w, t, true, "revoked", "revoked");
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
		/* REVOKED is already stored */
		aiq__outcome_revoked(w, t, true, t->terminated ? "terminated" : "revoked",
		                     t->terminated ? "terminated" : "revoked while running");
		return DISPOSE_ACK;
	}
	if (t->outcome == OUTCOME_NONE && t->invalid_report[0] != '\0')
		/* The handler reported, but nothing it reported was valid: never
		 * a silent SUCCESS with null. */
		return finish_final(w, t, AIQ_STATE_FAILURE, NULL, "InvalidResultError",
		                    t->invalid_report, "aiqueue");
	switch (t->outcome) {
	case OUTCOME_NONE:
	case OUTCOME_SUCCESS:
		aiq__ratelimit_charge(w->ratelimit, &t->msg, t->result_json);
		return finish_final(w, t, AIQ_STATE_SUCCESS,
		                    t->result_json ? t->result_json : "null", NULL, NULL, NULL);
	case OUTCOME_FAILURE:
		return finish_final(w, t, AIQ_STATE_FAILURE, NULL, t->exc_type, t->exc_message,
		                    t->exc_module);
	case OUTCOME_RETRY: return do_retry(w, t);
	}
	return DISPOSE_ACK;
}

void aiq__outcome_dispose(aiq_worker *w, aiq__delivery *d, const char *id,
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
		aiq__worker_seterr(w, "%s of task %s failed: %s",
		                   disp == DISPOSE_ACK ? "acknowledgement" : "requeue",
		                   id ? id : "?", aiq_error_last());
}

void aiq__outcome_dead_letter(aiq_worker *w, aiq__delivery *d, const char *id, const char *name,
                              const char *reason)
{
	int rc = aiq__broker_dead_letter(w->consumer, d, reason);
	if (rc != AIQ_OK) {
		/* Never drop it silently: leave it for redelivery and say why. */
		aiq__worker_seterr(w,
		                   "dead-lettering a message failed (%s); it stays on the broker",
		                   aiq_error_last());
		aiq__broker_reject(w->consumer, d, true);
	}
	atomic_fetch_add(&w->counters[CNT_DEAD], 1);
	aiq__worker_emit(w, AIQ_EVENT_REJECTED, id, name, reason);
}

/* Ack or reject finished tasks. Called without the lock. */
void aiq__outcome_settle(aiq_worker *w)
{
	/* Every task on the done list has its outcome stored already (the pool
	 * thread stored it before queueing the task), so the acks of all of
	 * them go in one batch; requeues go one by one. */
	for (;;) {
		aiq_task *acks[SETTLE_MAX];
		size_t nacks = 0;
		struct list requeue = {0};
		pthread_mutex_lock(&w->lock);
		while (nacks < SETTLE_MAX) {
			aiq_task *t = aiq__list_pop(&w->done);
			if (t == NULL)
				break;
			w->inflight--;
			if (t->disposition == DISPOSE_ACK && t->delivery)
				acks[nacks++] = t;
			else
				aiq__list_push(&requeue, t);
		}
		bool more = w->done.n > 0;
		pthread_mutex_unlock(&w->lock);

		aiq__delivery *ds[SETTLE_MAX];
		for (size_t i = 0; i < nacks; i++)
			ds[i] = acks[i]->delivery;
		if (nacks > 0) {
			atomic_fetch_add(&w->ack_batches, 1);
			atomic_fetch_add(&w->acked, nacks);
		}
		if (nacks > 0 && aiq__broker_ack_batch(w->consumer, ds, nacks) != AIQ_OK)
			aiq__worker_seterr(
			        w,
			        "acknowledging %zu deliveries failed (their outcomes are "
			        "stored; the broker delivers them again): %s",
			        nacks, aiq_error_last());
		for (size_t i = 0; i < nacks; i++)
			aiq__task_free(acks[i]);
		aiq_task *t;
		while ((t = aiq__list_pop(&requeue))) {
			aiq__outcome_dispose(w, t->delivery, t->msg.id, t->disposition);
			aiq__task_free(t);
		}
		if (!more)
			return;
	}
}

void aiq__worker_batch_stats(aiq_worker *w, size_t *put_writes, size_t *put_groups, size_t *acked,
                             size_t *ack_batches)
{
	if (put_writes)
		*put_writes = atomic_load(&w->put_writes);
	if (put_groups)
		*put_groups = atomic_load(&w->put_groups);
	if (acked)
		*acked = atomic_load(&w->acked);
	if (ack_batches)
		*ack_batches = atomic_load(&w->ack_batches);
}
