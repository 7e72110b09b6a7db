/*
 * The in-process result store: "memory://" or "memory://<name>".
 *
 * Instances. Handles opened with the same name share one store; other names
 * are isolated. The process-wide registry of instances, guarded by
 * registry_lock (separate from the memory broker's), is this driver's one
 * piece of global mutable state; an instance is refcounted by its handles
 * and freed with its records when the last one closes.
 *
 * Records live in a hash table keyed by task id. A final state is never
 * replaced (put() gives AIQ_ESTATE). Storing a final state wakes wait() calls
 * (one condition variable per instance) and calls the completion callback of
 * every subscribed handle, on the writer's thread, outside the store lock.
 *
 * Expiry works as Redis SETEX does: each write takes the writing handle's
 * result.expires_s (read at open; 0 = never) and the record expires that long
 * after its last write. Expired records read as absent (PENDING). They are
 * removed lazily: put() drops every expired record (a min-heap on expiry
 * time makes that O(log n) per record, once), and a read that meets one drops
 * it. Expiry runs on the monotonic clock. forget() removes a record at once;
 * the task then reads PENDING and may be stored again.
 *
 * Chords are joined under the instance lock, with the PostgreSQL store's
 * semantics (see the chords section below).
 *
 * Threading: every handle is thread-safe. A completion callback may call
 * into the store (put, get, wait, and subscribe on its own handle), but must
 * not close the handle whose callback it is.
 */
#include "store.h"

#include "config_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define STORE_BUCKETS_MIN 64
#define NOT_IN_HEAP       SIZE_MAX

typedef struct store_entry {
	aiq_result *r;
	uint64_t hash;
	int64_t expires_ms; /* monotonic; 0 = never */
	size_t heap_idx;    /* position in the expiry heap, NOT_IN_HEAP when none */
	struct store_entry *hnext;
} store_entry;

typedef struct mem_store mem_store;

typedef struct store_instance {
	char *name;
	unsigned refs; /* guarded by registry_lock */
	struct store_instance *next;
	pthread_mutex_t lock; /* guards everything below and the handles' subscriptions */
	pthread_cond_t done;  /* a final state was stored (CLOCK_MONOTONIC) */
	pthread_cond_t idle;  /* a completion callback call returned */
	store_entry **buckets;
	size_t nbuckets, count;
	store_entry **expiry; /* min-heap on expires_ms */
	size_t nexpiry, expiry_cap;
	mem_store *handles;
	struct mem_chord *chords; /* chords being joined, newest first */
} store_instance;

struct mem_store {
	aiq__store base;
	store_instance *inst;
	int64_t expires_ms; /* TTL this handle writes with; 0 = never */
	aiq__store_notify_fn fn;
	void *userdata;
	unsigned inflight; /* calls of fn running now */
	mem_store *next, *prev;
};

/* A chord's join: its size and each returned part (see the chords section). */
typedef struct chord_part {
	int64_t index; /* group_index; -1 = none */
	char *task_id;
	char *entry;
} chord_part;

typedef struct mem_chord {
	char *group_id;
	int64_t size;
	int64_t expires_ms; /* monotonic; 0 = never */
	bool fired;         /* a part completed the count */
	char *fired_by;     /* that part's task id */
	chord_part *parts;
	size_t nparts, cap;
	struct mem_chord *next;
} mem_chord;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static store_instance *registry;

/* Callbacks running on this thread, innermost first, so subscribe() called
 * from inside a handle's own callback does not wait for itself. */
typedef struct callback_frame {
	const mem_store *s;
	struct callback_frame *up;
} callback_frame;
static _Thread_local callback_frame *callback_stack;

static uint64_t hash_id(const char *s)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a */
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= UINT64_C(0x100000001b3);
	}
	return h;
}

/* ---- expiry heap (instance lock held) ---- */

static void heap_set(store_instance *inst, size_t i, store_entry *e)
{
	inst->expiry[i] = e;
	e->heap_idx = i;
}

static void heap_sift_up(store_instance *inst, size_t i)
{
	store_entry *e = inst->expiry[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (inst->expiry[parent]->expires_ms <= e->expires_ms)
			break;
		heap_set(inst, i, inst->expiry[parent]);
		i = parent;
	}
	heap_set(inst, i, e);
}

static void heap_sift_down(store_instance *inst, size_t i)
{
	store_entry *e = inst->expiry[i];
	size_t n = inst->nexpiry;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && inst->expiry[c + 1]->expires_ms < inst->expiry[c]->expires_ms)
			c++;
		if (inst->expiry[c]->expires_ms >= e->expires_ms)
			break;
		heap_set(inst, i, inst->expiry[c]);
		i = c;
	}
	heap_set(inst, i, e);
}

static void heap_remove(store_instance *inst, store_entry *e)
{
	size_t i = e->heap_idx;
	if (i == NOT_IN_HEAP)
		return;
	e->heap_idx = NOT_IN_HEAP;
	store_entry *last = inst->expiry[--inst->nexpiry];
	if (last == e)
		return;
	heap_set(inst, i, last);
	heap_sift_up(inst, i);
	heap_sift_down(inst, last->heap_idx);
}

/* Make room for one more heap entry before anything is changed. */
static int heap_reserve(store_instance *inst)
{
	if (inst->nexpiry < inst->expiry_cap)
		return AIQ_OK;
	size_t cap = inst->expiry_cap ? inst->expiry_cap * 2 : 64;
	store_entry **h = realloc(inst->expiry, cap * sizeof *h);
	if (h == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory storing a result");
	inst->expiry = h;
	inst->expiry_cap = cap;
	return AIQ_OK;
}

/* Set e's expiry (0 = never); heap_reserve() must have succeeded. */
static void entry_set_expiry(store_instance *inst, store_entry *e, int64_t expires_ms)
{
	heap_remove(inst, e);
	e->expires_ms = expires_ms;
	if (expires_ms == 0)
		return;
	e->heap_idx = inst->nexpiry++;
	inst->expiry[e->heap_idx] = e;
	heap_sift_up(inst, e->heap_idx);
}

/* ---- hash table (instance lock held) ---- */

static store_entry **bucket_of(store_instance *inst, uint64_t hash)
{
	return &inst->buckets[hash & (inst->nbuckets - 1)];
}

static void entry_unlink_free(store_instance *inst, store_entry *e)
{
	store_entry **pp = bucket_of(inst, e->hash);
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	inst->count--;
	heap_remove(inst, e);
	aiq_result_free(e->r);
	free(e);
}

static void expire_due(store_instance *inst, int64_t now_ms)
{
	while (inst->nexpiry > 0 && inst->expiry[0]->expires_ms <= now_ms)
		entry_unlink_free(inst, inst->expiry[0]);
}

/* The live record for id, or NULL; drops it when it has expired. */
static store_entry *entry_find(store_instance *inst, const char *id, uint64_t hash)
{
	for (store_entry *e = *bucket_of(inst, hash); e; e = e->hnext) {
		if (e->hash == hash && strcmp(e->r->task_id, id) == 0) {
			if (e->expires_ms != 0 && e->expires_ms <= aiq__mono_ms()) {
				entry_unlink_free(inst, e);
				return NULL;
			}
			return e;
		}
	}
	return NULL;
}

/* Grow when the load passes 1; a failed grow only makes chains longer. */
static void table_maybe_grow(store_instance *inst)
{
	if (inst->count < inst->nbuckets)
		return;
	size_t n = inst->nbuckets * 2;
	store_entry **b = calloc(n, sizeof *b);
	if (b == NULL)
		return;
	for (size_t i = 0; i < inst->nbuckets; i++) {
		for (store_entry *e = inst->buckets[i], *next; e; e = next) {
			next = e->hnext;
			e->hnext = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(inst->buckets);
	inst->buckets = b;
	inst->nbuckets = n;
}

static void chord_free(mem_chord *ch)
{
	for (size_t i = 0; i < ch->nparts; i++) {
		free(ch->parts[i].task_id);
		free(ch->parts[i].entry);
	}
	free(ch->parts);
	free(ch->group_id);
	free(ch->fired_by);
	free(ch);
}

/* ---- registry ---- */

static int instance_create(store_instance **out, const char *name)
{
	store_instance *inst = calloc(1, sizeof *inst);
	if (inst == NULL)
		goto oom;
	inst->nbuckets = STORE_BUCKETS_MIN;
	inst->buckets = calloc(inst->nbuckets, sizeof *inst->buckets);
	inst->name = strdup(name);
	if (inst->buckets == NULL || inst->name == NULL)
		goto oom;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int err = pthread_cond_init(&inst->done, &ca);
	pthread_condattr_destroy(&ca);
	if (err != 0)
		goto oom;
	if (pthread_cond_init(&inst->idle, NULL) != 0) {
		pthread_cond_destroy(&inst->done);
		goto oom;
	}
	pthread_mutex_init(&inst->lock, NULL);
	inst->refs = 1;
	*out = inst;
	return AIQ_OK;
oom:
	if (inst) {
		free(inst->buckets);
		free(inst->name);
		free(inst);
	}
	return aiq__err(AIQ_ENOMEM, "out of memory creating an in-process result store");
}

static int instance_acquire(store_instance **out, const char *name)
{
	pthread_mutex_lock(&registry_lock);
	store_instance *inst;
	for (inst = registry; inst; inst = inst->next)
		if (strcmp(inst->name, name) == 0)
			break;
	int rc = AIQ_OK;
	if (inst) {
		inst->refs++;
	} else if ((rc = instance_create(&inst, name)) == AIQ_OK) {
		inst->next = registry;
		registry = inst;
	}
	pthread_mutex_unlock(&registry_lock);
	*out = inst;
	return rc;
}

static void instance_release(store_instance *inst)
{
	pthread_mutex_lock(&registry_lock);
	bool last = --inst->refs == 0;
	if (last) {
		store_instance **pp = &registry;
		while (*pp != inst)
			pp = &(*pp)->next;
		*pp = inst->next;
	}
	pthread_mutex_unlock(&registry_lock);
	if (!last)
		return;
	for (size_t i = 0; i < inst->nbuckets; i++) {
		for (store_entry *e = inst->buckets[i], *next; e; e = next) {
			next = e->hnext;
			aiq_result_free(e->r);
			free(e);
		}
	}
	free(inst->buckets);
	free(inst->expiry);
	while (inst->chords) {
		mem_chord *ch = inst->chords;
		inst->chords = ch->next;
		chord_free(ch);
	}
	pthread_cond_destroy(&inst->done);
	pthread_cond_destroy(&inst->idle);
	pthread_mutex_destroy(&inst->lock);
	free(inst->name);
	free(inst);
}

/* ---- driver operations ---- */

static int mem_open(aiq__store **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL || url == NULL)
		return aiq__err(AIQ_EINVAL, "memory result store needs a URL");
	*out = NULL;
	const char *sep = strstr(url, "://");
	if (sep == NULL || sep - url != 6 || strncasecmp(url, "memory", 6) != 0)
		return aiq__err(AIQ_EINVAL,
		                "not a memory:// URL"); /* never print a URL unredacted */
	mem_store *s = calloc(1, sizeof *s);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory opening the memory result store");
	int64_t expires_s = aiq__cfg_int(cfg, AIQ_CFG_RESULT_EXPIRES_S);
	/* Ten years and more mean never; it also keeps the sum below from overflowing. */
	if (expires_s > 0 && expires_s < INT64_C(10) * 366 * 86400)
		s->expires_ms = expires_s * 1000;
	int rc = instance_acquire(&s->inst, sep + 3);
	if (rc != AIQ_OK) {
		free(s);
		return rc;
	}
	s->base.ops = &aiq__memory_store_ops;
	store_instance *inst = s->inst;
	pthread_mutex_lock(&inst->lock);
	s->next = inst->handles;
	if (inst->handles)
		inst->handles->prev = s;
	inst->handles = s;
	pthread_mutex_unlock(&inst->lock);
	*out = &s->base;
	return AIQ_OK;
}

/* Calls of s's callback running on this thread (they cannot finish while it
 * waits). */
static unsigned own_calls(const mem_store *s)
{
	unsigned n = 0;
	for (const callback_frame *f = callback_stack; f; f = f->up)
		n += f->s == s;
	return n;
}

static void mem_close(aiq__store *base)
{
	if (base == NULL)
		return;
	mem_store *s = (mem_store *)base;
	store_instance *inst = s->inst;
	pthread_mutex_lock(&inst->lock);
	s->fn = NULL;
	while (s->inflight > 0)
		pthread_cond_wait(&inst->idle, &inst->lock);
	if (s->prev)
		s->prev->next = s->next;
	else
		inst->handles = s->next;
	if (s->next)
		s->next->prev = s->prev;
	pthread_mutex_unlock(&inst->lock);
	instance_release(inst);
	free(s);
}

static int check_id(const char *task_id)
{
	if (task_id == NULL || task_id[0] == '\0')
		return aiq__err(AIQ_EINVAL, "no task id given");
	return AIQ_OK;
}

/* Call every subscribed handle's callback with r, the lock held on entry and
 * exit but released around each call. A handle stays linked while a call of
 * its callback runs (close and subscribe wait for inflight == 0), so its
 * next pointer is valid again once the lock is retaken. */
static void notify_all(store_instance *inst, const aiq_result *r)
{
	for (mem_store *h = inst->handles; h;) {
		aiq__store_notify_fn fn = h->fn;
		if (fn == NULL) {
			h = h->next;
			continue;
		}
		void *userdata = h->userdata;
		h->inflight++;
		pthread_mutex_unlock(&inst->lock);
		callback_frame frame = {h, callback_stack};
		callback_stack = &frame;
		fn(r, userdata);
		callback_stack = frame.up;
		pthread_mutex_lock(&inst->lock);
		if (--h->inflight == 0)
			pthread_cond_broadcast(&inst->idle);
		h = h->next;
	}
}

/* One write, with everything it allocates made before the lock is taken. */
typedef struct put_prep {
	const aiq_result *r;
	aiq_result *copy;   /* the record to store */
	aiq_result *notice; /* what callbacks see (final states only) */
	store_entry *fresh; /* the entry, when the id is new */
	uint64_t hash;
} put_prep;

static void prep_clear(put_prep *p)
{
	aiq_result_free(p->copy);
	aiq_result_free(p->notice);
	free(p->fresh);
	p->copy = p->notice = NULL;
	p->fresh = NULL;
}

static int put_prepare(put_prep *p, const aiq_result *r, int64_t stored_us)
{
	memset(p, 0, sizeof *p);
	if (r == NULL)
		return aiq__err(AIQ_EINVAL, "put needs a result");
	int rc = check_id(r->task_id);
	if (rc != AIQ_OK)
		return rc;
	if (r->state < AIQ_STATE_PENDING || r->state > AIQ_STATE_REVOKED)
		return aiq__err(AIQ_EINVAL, "invalid task state %d", r->state);
	p->r = r;
	if ((p->fresh = calloc(1, sizeof *p->fresh)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory storing a result");
	if ((rc = aiq__result_copy(&p->copy, r)) != AIQ_OK ||
	    (aiq_state_is_ready(r->state) && (rc = aiq__result_copy(&p->notice, r)) != AIQ_OK)) {
		prep_clear(p);
		return rc;
	}
	p->copy->stored_us = stored_us;
	if (p->notice)
		p->notice->stored_us = stored_us;
	p->hash = hash_id(r->task_id);
	return AIQ_OK;
}

/* Store one prepared write (instance lock held). On success the record
 * owns p->copy; p->notice stays for the caller to announce and free. */
static int put_apply(mem_store *s, put_prep *p, int64_t now)
{
	store_instance *inst = s->inst;
	const aiq_result *r = p->r;
	store_entry *e = entry_find(inst, r->task_id, p->hash);
	if (e && aiq_state_is_ready(e->r->state))
		return aiq__err(AIQ_ESTATE,
		                "task %.64s is already %s; a final state is never replaced (new "
		                "state %s ignored)",
		                r->task_id, aiq_state_name(e->r->state), aiq_state_name(r->state));
	int rc;
	if (s->expires_ms && (rc = heap_reserve(inst)) != AIQ_OK)
		return rc;
	if (e) {
		aiq_result_free(e->r);
		e->r = p->copy;
	} else {
		e = p->fresh;
		p->fresh = NULL;
		e->r = p->copy;
		e->hash = p->hash;
		e->heap_idx = NOT_IN_HEAP;
		table_maybe_grow(inst);
		store_entry **b = bucket_of(inst, p->hash);
		e->hnext = *b;
		*b = e;
		inst->count++;
	}
	p->copy = NULL;
	entry_set_expiry(inst, e, s->expires_ms ? now + s->expires_ms : 0);
	return AIQ_OK;
}

static int mem_put(aiq__store *base, const aiq_result *r)
{
	const aiq_result *const rs[1] = {r};
	int status;
	int rc = base->ops->put_batch(base, rs, 1, &status);
	return rc != AIQ_OK ? rc : status;
}

/* Every write under one lock hold: one expiry sweep, one broadcast. Error
 * messages of failed entries stay in aiq_error_last() only for the last one
 * that failed. */
static int mem_put_batch(aiq__store *base, const aiq_result *const *rs, size_t n, int *status)
{
	mem_store *s = (mem_store *)base;
	if (n == 0)
		return AIQ_OK;
	if (rs == NULL || status == NULL)
		return aiq__err(AIQ_EINVAL, "put_batch needs results and a status array");
	put_prep one, *preps = &one;
	if (n > 1 && (preps = calloc(n, sizeof *preps)) == NULL) {
		for (size_t i = 0; i < n; i++)
			status[i] = AIQ_ENOMEM;
		return aiq__err(AIQ_ENOMEM, "out of memory storing %zu results", n);
	}
	int64_t stored_us = aiq__now_us();
	size_t ready = 0;
	for (size_t i = 0; i < n; i++)
		if ((status[i] = put_prepare(&preps[i], rs[i], stored_us)) == AIQ_OK)
			ready++;
	/* A failed entry's message must survive the successful ones. */
	char last_error[512] = "";
	for (size_t i = n; i-- > 0;)
		if (status[i] != AIQ_OK) {
			snprintf(last_error, sizeof last_error, "%s", aiq_error_last());
			break;
		}

	store_instance *inst = s->inst;
	bool any_final = false;
	if (ready > 0) {
		pthread_mutex_lock(&inst->lock);
		int64_t now = aiq__mono_ms();
		expire_due(inst, now);
		for (size_t i = 0; i < n; i++) {
			if (status[i] != AIQ_OK)
				continue;
			status[i] = put_apply(s, &preps[i], now);
			if (status[i] != AIQ_OK)
				snprintf(last_error, sizeof last_error, "%s", aiq_error_last());
			else if (preps[i].notice)
				any_final = true;
		}
		if (any_final) {
			pthread_cond_broadcast(&inst->done);
			for (size_t i = 0; i < n; i++)
				if (status[i] == AIQ_OK && preps[i].notice)
					notify_all(inst, preps[i].notice);
		}
		pthread_mutex_unlock(&inst->lock);
	}
	for (size_t i = 0; i < n; i++)
		prep_clear(&preps[i]);
	if (preps != &one)
		free(preps);
	if (last_error[0])
		aiq__err(AIQ_EINVAL, "%s", last_error); /* the detail; the codes are in status */
	return AIQ_OK;
}

/* Copy of the live record for id, or a fresh PENDING result. */
static int current(aiq_result **out, store_instance *inst, const char *id, uint64_t hash)
{
	store_entry *e = entry_find(inst, id, hash);
	if (e)
		return aiq__result_copy(out, e->r);
	return aiq__result_new(out, id, AIQ_STATE_PENDING);
}

static int mem_get(aiq__store *base, aiq_result **out, const char *task_id)
{
	mem_store *s = (mem_store *)base;
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "get needs an output pointer");
	*out = NULL;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	uint64_t hash = hash_id(task_id);
	pthread_mutex_lock(&s->inst->lock);
	rc = current(out, s->inst, task_id, hash);
	pthread_mutex_unlock(&s->inst->lock);
	return rc;
}

/* Every state under one lock hold. */
static int mem_get_batch(aiq__store *base, aiq_result **out, const char *const *task_ids, size_t n,
                         int *status)
{
	mem_store *s = (mem_store *)base;
	if ((out == NULL || task_ids == NULL || status == NULL) && n > 0)
		return aiq__err(AIQ_EINVAL, "get_batch needs outputs, ids and a status array");
	pthread_mutex_lock(&s->inst->lock);
	for (size_t i = 0; i < n; i++) {
		out[i] = NULL;
		status[i] = check_id(task_ids[i]);
		if (status[i] == AIQ_OK)
			status[i] = current(&out[i], s->inst, task_ids[i], hash_id(task_ids[i]));
	}
	pthread_mutex_unlock(&s->inst->lock);
	return AIQ_OK;
}

static int mem_wait(aiq__store *base, aiq_result **out, const char *task_id, int64_t timeout_ms)
{
	mem_store *s = (mem_store *)base;
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "wait needs an output pointer");
	*out = NULL;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	uint64_t hash = hash_id(task_id);
	int64_t deadline = -1;
	if (timeout_ms >= 0 && timeout_ms < INT64_MAX / 4)
		deadline = aiq__mono_ms() + timeout_ms;
	store_instance *inst = s->inst;
	pthread_mutex_lock(&inst->lock);
	for (;;) {
		/* Checked under the lock: a result stored before the call is seen. */
		store_entry *e = entry_find(inst, task_id, hash);
		if (e && aiq_state_is_ready(e->r->state)) {
			rc = aiq__result_copy(out, e->r);
			break;
		}
		if (deadline >= 0 && aiq__mono_ms() >= deadline) {
			rc = current(out, inst, task_id, hash);
			if (rc == AIQ_OK)
				rc = AIQ_ETIMEDOUT;
			break;
		}
		if (deadline < 0) {
			pthread_cond_wait(&inst->done, &inst->lock);
		} else {
			struct timespec ts = aiq__timespec_ms(deadline);
			pthread_cond_timedwait(&inst->done, &inst->lock, &ts);
		}
	}
	pthread_mutex_unlock(&inst->lock);
	if (rc == AIQ_ETIMEDOUT)
		return aiq__err(AIQ_ETIMEDOUT, "task %.64s did not finish within %lld ms", task_id,
		                (long long)timeout_ms);
	return rc;
}

/* Drops the record. Waiters are not woken: they wait on for a new final
 * state or their deadline, as they would for a task never stored. */
static int mem_forget(aiq__store *base, const char *task_id)
{
	mem_store *s = (mem_store *)base;
	int rc = check_id(task_id);
	if (rc != AIQ_OK)
		return rc;
	uint64_t hash = hash_id(task_id);
	pthread_mutex_lock(&s->inst->lock);
	store_entry *e = entry_find(s->inst, task_id, hash);
	if (e)
		entry_unlink_free(s->inst, e);
	pthread_mutex_unlock(&s->inst->lock);
	return AIQ_OK;
}

static int mem_subscribe(aiq__store *base, aiq__store_notify_fn fn, void *userdata)
{
	mem_store *s = (mem_store *)base;
	store_instance *inst = s->inst;
	unsigned own = own_calls(s);
	pthread_mutex_lock(&inst->lock);
	s->fn = NULL;
	while (s->inflight > own)
		pthread_cond_wait(&inst->idle, &inst->lock);
	s->fn = fn;
	s->userdata = fn ? userdata : NULL;
	pthread_mutex_unlock(&inst->lock);
	return AIQ_OK;
}

/* ---- chords ----
 * The same join as the PostgreSQL store's, under the instance lock: a part
 * counts once (deduplicated by task id and by group_index), the part whose
 * return completes the count is told so (*ready) and so is a repeat of that
 * same part's return before chord_done, as a redelivery after a crash
 * before the body was sent. A chord expires as a record does, counted from
 * its last write. Chords are a list: few are joined at once. */

/* The live chord for group_id (instance lock held); drops expired ones. */
static mem_chord *chord_find(store_instance *inst, const char *group_id)
{
	int64_t now = aiq__mono_ms();
	for (mem_chord **pp = &inst->chords; *pp;) {
		mem_chord *ch = *pp;
		if (ch->expires_ms != 0 && ch->expires_ms <= now) {
			*pp = ch->next;
			chord_free(ch);
			continue;
		}
		if (strcmp(ch->group_id, group_id) == 0)
			return ch;
		pp = &ch->next;
	}
	return NULL;
}

static int mem_chord_set_size(aiq__store *base, const char *group_id, int64_t size)
{
	mem_store *s = (mem_store *)base;
	store_instance *inst = s->inst;
	int rc = AIQ_OK;
	pthread_mutex_lock(&inst->lock);
	mem_chord *ch = chord_find(inst, group_id);
	if (ch == NULL) {
		ch = calloc(1, sizeof *ch);
		if (ch && !(ch->group_id = strdup(group_id))) {
			free(ch);
			ch = NULL;
		}
		if (ch) {
			ch->next = inst->chords;
			inst->chords = ch;
		} else {
			rc = aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
		}
	}
	if (ch) {
		ch->size = size;
		ch->expires_ms = s->expires_ms ? aiq__mono_ms() + s->expires_ms : 0;
	}
	pthread_mutex_unlock(&inst->lock);
	return rc;
}

static int part_order(const void *a, const void *b)
{
	const chord_part *x = a, *y = b;
	if (x->index != y->index) {
		if (x->index < 0 || y->index < 0) /* none sorts last (+inf) */
			return x->index < 0 ? 1 : -1;
		return x->index < y->index ? -1 : 1;
	}
	return strcmp(x->entry, y->entry);
}

/* The JSON array of the parts' entries in group_index order (lock held). */
static char *chord_entries(mem_chord *ch)
{
	qsort(ch->parts, ch->nparts, sizeof *ch->parts, part_order);
	size_t len = 3;
	for (size_t i = 0; i < ch->nparts; i++)
		len += strlen(ch->parts[i].entry) + 1;
	char *out = malloc(len), *p = out;
	if (out == NULL)
		return NULL;
	*p++ = '[';
	for (size_t i = 0; i < ch->nparts; i++) {
		size_t n = strlen(ch->parts[i].entry);
		if (i > 0)
			*p++ = ',';
		memcpy(p, ch->parts[i].entry, n);
		p += n;
	}
	*p++ = ']';
	*p = '\0';
	return out;
}

static bool part_known(const mem_chord *ch, int64_t index, const char *task_id)
{
	for (size_t i = 0; i < ch->nparts; i++)
		if ((index >= 0 && ch->parts[i].index == index) ||
		    strcmp(ch->parts[i].task_id, task_id) == 0)
			return true;
	return false;
}

static int mem_chord_part_return(aiq__store *base, const char *group_id, int64_t group_index,
                                 const char *entry, char **ready)
{
	mem_store *s = (mem_store *)base;
	store_instance *inst = s->inst;
	char *tid = NULL;
	int rc = aiq__store_chord_entry_id(&tid, entry);
	if (rc != AIQ_OK)
		return rc;
	if (group_index < 0)
		group_index = -1;
	pthread_mutex_lock(&inst->lock);
	mem_chord *ch = chord_find(inst, group_id);
	/* No size: not a chord this store joins (as Redis skips it). */
	if (ch && !part_known(ch, group_index, tid)) {
		char *copy = strdup(entry);
		if (copy && ch->nparts == ch->cap) {
			size_t cap = ch->cap ? ch->cap * 2 : 8;
			chord_part *p = realloc(ch->parts, cap * sizeof *p);
			if (p) {
				ch->parts = p;
				ch->cap = cap;
			}
		}
		if (copy == NULL || ch->nparts == ch->cap) {
			free(copy);
			rc = aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
		} else {
			ch->parts[ch->nparts++] = (chord_part){group_index, tid, copy};
			tid = NULL;
			ch->expires_ms = s->expires_ms ? aiq__mono_ms() + s->expires_ms : 0;
			if (!ch->fired && (int64_t)ch->nparts >= ch->size) {
				ch->fired = true;
				ch->fired_by = strdup(ch->parts[ch->nparts - 1].task_id);
				if (!(*ready = chord_entries(ch)))
					rc = aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
			}
		}
	} else if (ch && ch->fired && ch->fired_by && strcmp(ch->fired_by, tid) == 0) {
		if (!(*ready = chord_entries(ch)))
			rc = aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
	}
	pthread_mutex_unlock(&inst->lock);
	free(tid);
	return rc;
}

static int mem_chord_done(aiq__store *base, const char *group_id)
{
	store_instance *inst = ((mem_store *)base)->inst;
	pthread_mutex_lock(&inst->lock);
	for (mem_chord **pp = &inst->chords; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->group_id, group_id) == 0) {
			mem_chord *ch = *pp;
			*pp = ch->next;
			chord_free(ch);
			break;
		}
	pthread_mutex_unlock(&inst->lock);
	return AIQ_OK;
}

static const char *const memory_schemes[] = {"memory", NULL};

const aiq__store_ops aiq__memory_store_ops = {
        .name = "memory",
        .schemes = memory_schemes,
        .caps = AIQ__STORE_CAP_NOTIFY,
        .open = mem_open,
        .close = mem_close,
        .put = mem_put,
        .put_batch = mem_put_batch,
        .get = mem_get,
        .get_batch = mem_get_batch,
        .wait = mem_wait,
        .subscribe = mem_subscribe,
        .forget = mem_forget,
        .chord_set_size = mem_chord_set_size,
        .chord_part_return = mem_chord_part_return,
        .chord_done = mem_chord_done,
};
