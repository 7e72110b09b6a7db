/*
 * The in-process broker: "memory://" or "memory://<name>". Always built; the
 * embedded default (one process running the API and its workers) and what
 * the unit tests use.
 *
 * Instances. Handles opened with the same name (everything after "://",
 * taken verbatim; "" for plain "memory://") share one broker instance; other
 * names are isolated. The process-wide registry of instances, guarded by
 * registry_lock, is this driver's one piece of global mutable state. An
 * instance is refcounted by its open handles and destroyed, with every
 * message still in it, when the last handle closes.
 *
 * Queues are created on demand by publish() and consume(). In each queue:
 *  - ready messages are ordered by priority (properties.priority, 0..255,
 *    higher first), then FIFO; a requeued message goes to the front of its
 *    priority level;
 *  - delayed messages (publish with not_before_ms in the future) wait in a
 *    min-heap on (due time, publish order) and join the back of their
 *    priority level when due; a blocked fetch() sleeps exactly until the
 *    next one is due.
 *
 * Each handle is one consumer "connection": consume() names its queues and
 * its prefetch bound (unacked deliveries held by the handle; 0 = unlimited).
 * fetch() serves the consumed queues round-robin (each delivery moves the
 * starting point past the queue it came from), so a busy queue cannot starve
 * the others. Unacked messages stay in the instance, keyed by delivery tag;
 * the delivery holds its own copy of the message, so it remains valid after
 * close(). close() returns every unacked message to the front of its queue
 * marked redelivered, as an AMQP connection closing does.
 *
 * purge() removes ready and delayed messages (both are waiting in the
 * queue) but never unacked ones, and counts both; depth() counts ready
 * messages only (delayed ones that fell due count as ready). An unknown
 * queue behaves as an empty one.
 *
 * fetch_batch() takes up to its max deliveries (within the free prefetch)
 * under one lock hold, in the order fetch() would hand them out one by one;
 * ack_batch() acknowledges a batch under one lock hold.
 *
 * Process-local handoff: nothing is encoded or decoded inside this driver.
 * A message is copied at publish (the caller keeps its own wire), and the
 * broker keeps that copy until the message is acknowledged: it is what a
 * requeue, close() or dead_letter() works on. When the publisher attached
 * its decoded model (aiq__wire.local), the broker takes it over
 * and the first delivery carries it (aiq__delivery.message, with an empty
 * wire) when it goes to a handle that asked for that (accept_decoded(), the
 * worker's consumer): the consumer skips the decode and the broker skips
 * the copy. A first delivery to any other handle gets the wire, and the
 * model is dropped.
 * Ownership moves from the publisher's thread to the broker to the one
 * consumer that fetched it; nothing is shared. Any later delivery of the
 * message (requeued, or returned by close()) copies the kept wire, which the
 * consumer decodes as it would from any broker. A delivery owns what it
 * carries, so it stays valid after close(). The JSON is not shared between
 * the broker and a delivery:
 * jansson's reference counts are atomic but json_decref() also reads the
 * count plainly, which ThreadSanitizer reports when a consumer thread frees
 * a delivery while the broker frees the record on another.
 *
 * fetch() with a negative timeout waits until a message or wakeup(). A
 * wakeup() that finds no fetch() blocked is kept, and the next fetch() that
 * would have to wait returns AIQ_ETIMEDOUT at once, so a stop request sent
 * just before the consumer blocks is not lost.
 *
 * Threading: every operation takes the instance mutex, so calls are
 * serialized even across handles; wakeup() is thread-safe but not
 * async-signal-safe (it takes that mutex).
 */
#include "broker.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MEM_NPRIO    256
#define MEM_TAGS_MIN 16

typedef struct mem_queue mem_queue;

typedef struct mem_msg {
	aiq__wire wire;
	aiq__message *decoded; /* the publisher's model, until the first delivery takes it */
	mem_queue *queue;
	uint64_t seq; /* publish order: FIFO and delayed tie-break */
	uint64_t tag; /* delivery tag while unacked */
	int64_t not_before_ms;
	int priority;
	bool redelivered;
	struct mem_msg *next;  /* ready level list; unacked list */
	struct mem_msg *prev;  /* unacked list */
	struct mem_msg *hnext; /* unacked tag hash chain */
} mem_msg;

typedef struct mem_level {
	mem_msg *head, *tail;
} mem_level;

struct mem_queue {
	char *name;
	mem_queue *next;
	mem_level levels[MEM_NPRIO];
	uint64_t nonempty[MEM_NPRIO / 64]; /* bit p: levels[p] has messages */
	uint64_t nready;
	mem_msg **delayed; /* min-heap on (not_before_ms, seq) */
	size_t ndelayed, delayed_cap;
};

typedef struct mem_handle mem_handle;

typedef struct mem_instance {
	char *name;
	unsigned refs; /* guarded by registry_lock */
	struct mem_instance *next;
	pthread_mutex_t lock; /* guards everything below and all handles' state */
	mem_queue *queues;
	mem_handle *handles;
	uint64_t next_seq;
	uint64_t next_tag;
} mem_instance;

struct mem_handle {
	aiq__broker base;
	mem_instance *inst;
	mem_handle *next, *prev; /* instance's handle list */
	pthread_cond_t cond;     /* on inst->lock, CLOCK_MONOTONIC */
	bool waiting;            /* blocked in fetch() */
	bool wake;               /* wakeup() pending; consumed by a fetch that would wait */
	mem_queue **consumed;
	size_t nconsumed;
	bool consuming; /* consume() was called (the list may be empty since) */
	size_t rr;      /* round-robin start */
	unsigned prefetch;
	bool accept_decoded; /* deliveries may carry the decoded message instead of the wire */
	mem_msg *unacked_head, *unacked_tail; /* delivery order */
	size_t nunacked;
	mem_msg **tags; /* hash of unacked by tag; power-of-two buckets */
	size_t ntags;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mem_instance *registry;

/* ---- messages and queues (instance lock held) ---- */

static void msg_free(mem_msg *m)
{
	if (m == NULL)
		return;
	aiq__wire_clear(&m->wire);
	aiq__message_free(m->decoded);
	free(m);
}

static void level_push_back(mem_queue *q, mem_msg *m)
{
	mem_level *l = &q->levels[m->priority];
	m->next = NULL;
	if (l->tail)
		l->tail->next = m;
	else
		l->head = m;
	l->tail = m;
	q->nonempty[m->priority / 64] |= UINT64_C(1) << (m->priority % 64);
	q->nready++;
}

static void level_push_front(mem_queue *q, mem_msg *m)
{
	mem_level *l = &q->levels[m->priority];
	m->next = l->head;
	l->head = m;
	if (l->tail == NULL)
		l->tail = m;
	q->nonempty[m->priority / 64] |= UINT64_C(1) << (m->priority % 64);
	q->nready++;
}

static mem_msg *level_peek(const mem_queue *q)
{
	for (int w = MEM_NPRIO / 64 - 1; w >= 0; w--)
		if (q->nonempty[w])
			return q->levels[w * 64 + 63 - __builtin_clzll(q->nonempty[w])].head;
	return NULL;
}

/* Remove the head of m's level; m must be that head. */
static void level_pop(mem_queue *q, mem_msg *m)
{
	mem_level *l = &q->levels[m->priority];
	l->head = m->next;
	if (l->head == NULL) {
		l->tail = NULL;
		q->nonempty[m->priority / 64] &= ~(UINT64_C(1) << (m->priority % 64));
	}
	m->next = NULL;
	q->nready--;
}

static bool due_before(const mem_msg *a, const mem_msg *b)
{
	return a->not_before_ms < b->not_before_ms ||
	       (a->not_before_ms == b->not_before_ms && a->seq < b->seq);
}

static int heap_push(mem_queue *q, mem_msg *m)
{
	if (q->ndelayed == q->delayed_cap) {
		size_t cap = q->delayed_cap ? q->delayed_cap * 2 : 16;
		mem_msg **d = realloc(q->delayed, cap * sizeof *d);
		if (d == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory queueing a delayed message");
		q->delayed = d;
		q->delayed_cap = cap;
	}
	size_t i = q->ndelayed++;
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!due_before(m, q->delayed[parent]))
			break;
		q->delayed[i] = q->delayed[parent];
		i = parent;
	}
	q->delayed[i] = m;
	return AIQ_OK;
}

static mem_msg *heap_pop(mem_queue *q)
{
	mem_msg *top = q->delayed[0];
	mem_msg *last = q->delayed[--q->ndelayed];
	size_t n = q->ndelayed, i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && due_before(q->delayed[c + 1], q->delayed[c]))
			c++;
		if (!due_before(q->delayed[c], last))
			break;
		q->delayed[i] = q->delayed[c];
		i = c;
	}
	if (n > 0)
		q->delayed[i] = last;
	return top;
}

/* Move delayed messages that are due to the ready levels, in due order. */
static void promote_due(mem_queue *q, int64_t now_ms)
{
	while (q->ndelayed > 0 && q->delayed[0]->not_before_ms <= now_ms)
		level_push_back(q, heap_pop(q));
}

static mem_queue *queue_find(mem_instance *inst, const char *name)
{
	for (mem_queue *q = inst->queues; q; q = q->next)
		if (strcmp(q->name, name) == 0)
			return q;
	return NULL;
}

static int queue_get(mem_queue **out, mem_instance *inst, const char *name)
{
	mem_queue *q = queue_find(inst, name);
	if (q == NULL) {
		q = calloc(1, sizeof *q);
		if (q == NULL || (q->name = strdup(name)) == NULL) {
			free(q);
			return aiq__err(AIQ_ENOMEM, "out of memory creating queue '%.200s'", name);
		}
		q->next = inst->queues;
		inst->queues = q;
	}
	*out = q;
	return AIQ_OK;
}

/* Detach every ready and delayed message of q as one chain (via ->next). */
static mem_msg *queue_take_all(mem_queue *q, uint64_t *count)
{
	mem_msg *chain = NULL;
	*count = q->nready + q->ndelayed;
	for (int p = 0; p < MEM_NPRIO; p++) {
		mem_level *l = &q->levels[p];
		if (l->head) {
			l->tail->next = chain;
			chain = l->head;
			l->head = l->tail = NULL;
		}
	}
	memset(q->nonempty, 0, sizeof q->nonempty);
	q->nready = 0;
	for (size_t i = 0; i < q->ndelayed; i++) {
		q->delayed[i]->next = chain;
		chain = q->delayed[i];
	}
	q->ndelayed = 0;
	return chain;
}

static void queue_free(mem_queue *q)
{
	uint64_t n;
	for (mem_msg *m = queue_take_all(q, &n), *next; m; m = next) {
		next = m->next;
		msg_free(m);
	}
	free(q->delayed);
	free(q->name);
	free(q);
}

static bool consumes(const mem_handle *h, const mem_queue *q)
{
	for (size_t i = 0; i < h->nconsumed; i++)
		if (h->consumed[i] == q)
			return true;
	return false;
}

/* Wake fetch() calls blocked on handles that consume q: a message became
 * ready there, or a delayed one may now be due sooner than they planned. */
static void queue_notify(mem_instance *inst, const mem_queue *q)
{
	for (mem_handle *h = inst->handles; h; h = h->next)
		if (h->waiting && consumes(h, q))
			pthread_cond_signal(&h->cond);
}

/* ---- unacked bookkeeping (instance lock held) ---- */

static int tags_reserve(mem_handle *h)
{
	if (h->nunacked < h->ntags)
		return AIQ_OK;
	size_t n = h->ntags ? h->ntags * 2 : MEM_TAGS_MIN;
	mem_msg **t = calloc(n, sizeof *t);
	if (t == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory tracking unacknowledged deliveries");
	for (size_t i = 0; i < h->ntags; i++) {
		for (mem_msg *m = h->tags[i], *next; m; m = next) {
			next = m->hnext;
			m->hnext = t[m->tag & (n - 1)];
			t[m->tag & (n - 1)] = m;
		}
	}
	free(h->tags);
	h->tags = t;
	h->ntags = n;
	return AIQ_OK;
}

/* Record m as unacked by h (tags_reserve() must have succeeded). */
static void unacked_add(mem_handle *h, mem_msg *m)
{
	size_t b = m->tag & (h->ntags - 1);
	m->hnext = h->tags[b];
	h->tags[b] = m;
	m->prev = h->unacked_tail;
	m->next = NULL;
	if (h->unacked_tail)
		h->unacked_tail->next = m;
	else
		h->unacked_head = m;
	h->unacked_tail = m;
	h->nunacked++;
}

static mem_msg *unacked_find(const mem_handle *h, uint64_t tag)
{
	if (h->ntags == 0)
		return NULL;
	for (mem_msg *m = h->tags[tag & (h->ntags - 1)]; m; m = m->hnext)
		if (m->tag == tag)
			return m;
	return NULL;
}

static void unacked_remove(mem_handle *h, mem_msg *m)
{
	mem_msg **pp = &h->tags[m->tag & (h->ntags - 1)];
	while (*pp != m)
		pp = &(*pp)->hnext;
	*pp = m->hnext;
	if (m->prev)
		m->prev->next = m->next;
	else
		h->unacked_head = m->next;
	if (m->next)
		m->next->prev = m->prev;
	else
		h->unacked_tail = m->prev;
	m->next = m->prev = m->hnext = NULL;
	m->tag = 0;
	h->nunacked--;
}

/* Put an unacked message back at the front of its queue. */
static void requeue_front(mem_instance *inst, mem_msg *m)
{
	m->redelivered = true;
	level_push_front(m->queue, m);
	queue_notify(inst, m->queue);
}

/* ---- registry ---- */

static int instance_acquire(mem_instance **out, const char *name)
{
	pthread_mutex_lock(&registry_lock);
	mem_instance *inst;
	for (inst = registry; inst; inst = inst->next)
		if (strcmp(inst->name, name) == 0)
			break;
	if (inst) {
		inst->refs++;
	} else {
		inst = calloc(1, sizeof *inst);
		if (inst == NULL || (inst->name = strdup(name)) == NULL) {
			pthread_mutex_unlock(&registry_lock);
			free(inst);
			return aiq__err(AIQ_ENOMEM, "out of memory creating an in-process broker");
		}
		pthread_mutex_init(&inst->lock, NULL);
		inst->refs = 1;
		inst->next = registry;
		registry = inst;
	}
	pthread_mutex_unlock(&registry_lock);
	*out = inst;
	return AIQ_OK;
}

static void instance_release(mem_instance *inst)
{
	pthread_mutex_lock(&registry_lock);
	bool last = --inst->refs == 0;
	if (last) {
		mem_instance **pp = &registry;
		while (*pp != inst)
			pp = &(*pp)->next;
		*pp = inst->next;
	}
	pthread_mutex_unlock(&registry_lock);
	if (!last)
		return;
	for (mem_queue *q = inst->queues, *next; q; q = next) {
		next = q->next;
		queue_free(q);
	}
	pthread_mutex_destroy(&inst->lock);
	free(inst->name);
	free(inst);
}

/* ---- driver operations ---- */

static int mem_open(aiq__broker **out, const char *url, const aiq_config *cfg)
{
	(void)cfg;
	if (out == NULL || url == NULL)
		return aiq__err(AIQ_EINVAL, "memory broker needs a URL");
	*out = NULL;
	const char *sep = strstr(url, "://");
	if (sep == NULL || sep - url != 6 || strncasecmp(url, "memory", 6) != 0)
		return aiq__err(AIQ_EINVAL,
		                "not a memory:// URL"); /* never print a URL unredacted */

	mem_handle *h = calloc(1, sizeof *h);
	if (h == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory opening the memory broker");
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int err = pthread_cond_init(&h->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (err != 0) {
		free(h);
		return aiq__err(AIQ_ENOMEM,
		                "cannot create a condition variable for the memory broker");
	}
	int rc = instance_acquire(&h->inst, sep + 3);
	if (rc != AIQ_OK) {
		pthread_cond_destroy(&h->cond);
		free(h);
		return rc;
	}
	h->base.ops = &aiq__memory_broker_ops;
	mem_instance *inst = h->inst;
	pthread_mutex_lock(&inst->lock);
	h->next = inst->handles;
	if (inst->handles)
		inst->handles->prev = h;
	inst->handles = h;
	pthread_mutex_unlock(&inst->lock);
	*out = &h->base;
	return AIQ_OK;
}

static void mem_close(aiq__broker *b)
{
	if (b == NULL)
		return;
	mem_handle *h = (mem_handle *)b;
	mem_instance *inst = h->inst;
	pthread_mutex_lock(&inst->lock);
	/* Newest first, each to the front: the queue keeps delivery order. */
	for (mem_msg *m = h->unacked_tail, *prev; m; m = prev) {
		prev = m->prev;
		m->tag = 0;
		m->prev = m->hnext = NULL;
		requeue_front(inst, m);
	}
	if (h->prev)
		h->prev->next = h->next;
	else
		inst->handles = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&inst->lock);

	instance_release(inst);
	pthread_cond_destroy(&h->cond);
	free(h->consumed);
	free(h->tags);
	free(h);
}

static int msg_priority(const aiq__wire *w)
{
	json_t *p = w->properties ? json_object_get(w->properties, "priority") : NULL;
	if (!json_is_integer(p))
		return 0;
	json_int_t v = json_integer_value(p);
	return v < 0 ? 0 : v > MEM_NPRIO - 1 ? MEM_NPRIO - 1 : (int)v;
}

static int mem_publish(aiq__broker *b, const char *queue, const aiq__wire *msg,
                       int64_t not_before_ms)
{
	mem_handle *h = (mem_handle *)b;
	if (queue == NULL || queue[0] == '\0')
		return aiq__err(AIQ_EINVAL, "publish needs a queue name");
	if (msg == NULL)
		return aiq__err(AIQ_EINVAL, "publish needs a message");
	if (msg->body_len > AIQ__MAX_MESSAGE_BYTES)
		return aiq__err(AIQ_ETOOBIG, "message body of %zu bytes is over the %u-byte limit",
		                msg->body_len, AIQ__MAX_MESSAGE_BYTES);
	mem_msg *m = calloc(1, sizeof *m);
	if (m == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory publishing a message");
	/* The decoded model moves to the broker: the caller gives
	 * its wire up after publish and keeps no reference to the model. */
	m->decoded = msg->local;
	((aiq__wire *)(uintptr_t)msg)->local = NULL;
	int rc = aiq__wire_copy(&m->wire, msg);
	if (rc != AIQ_OK) {
		msg_free(m);
		return rc;
	}
	m->priority = msg_priority(msg);
	m->not_before_ms = not_before_ms;

	mem_instance *inst = h->inst;
	pthread_mutex_lock(&inst->lock);
	mem_queue *q;
	rc = queue_get(&q, inst, queue);
	if (rc == AIQ_OK) {
		m->queue = q;
		m->seq = ++inst->next_seq;
		if (not_before_ms > aiq__now_ms())
			rc = heap_push(q, m);
		else
			level_push_back(q, m);
		if (rc == AIQ_OK)
			queue_notify(inst, q);
	}
	pthread_mutex_unlock(&inst->lock);
	if (rc != AIQ_OK)
		msg_free(m);
	return rc;
}

static int mem_consume(aiq__broker *b, const char *const *queues, size_t nqueues, unsigned prefetch)
{
	mem_handle *h = (mem_handle *)b;
	if (queues == NULL || nqueues == 0)
		return aiq__err(AIQ_EINVAL, "consume needs at least one queue");
	for (size_t i = 0; i < nqueues; i++)
		if (queues[i] == NULL || queues[i][0] == '\0')
			return aiq__err(AIQ_EINVAL, "consume: queue %zu has no name", i);
	mem_queue **consumed = malloc(nqueues * sizeof *consumed);
	if (consumed == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory starting to consume");
	mem_instance *inst = h->inst;
	pthread_mutex_lock(&inst->lock);
	for (size_t i = 0; i < nqueues; i++) {
		int rc = queue_get(&consumed[i], inst, queues[i]);
		if (rc != AIQ_OK) {
			/* Queues already created stay: they are empty and harmless. */
			pthread_mutex_unlock(&inst->lock);
			free(consumed);
			return rc;
		}
	}
	free(h->consumed);
	h->consumed = consumed;
	h->nconsumed = nqueues;
	h->consuming = true;
	h->rr = 0;
	h->prefetch = prefetch;
	pthread_mutex_unlock(&inst->lock);
	return AIQ_OK;
}

/* No exchanges here: the binding is accepted and means nothing. */
static int mem_add_queue(aiq__broker *b, const char *queue, const aiq__queue_binding *bind)
{
	(void)bind;
	mem_handle *h = (mem_handle *)b;
	mem_instance *inst = h->inst;
	pthread_mutex_lock(&inst->lock);
	int rc = h->consuming ? AIQ_OK : aiq__err(AIQ_ESTATE, "add_queue before consume");
	mem_queue *q = NULL;
	if (rc == AIQ_OK)
		rc = queue_get(&q, inst, queue);
	if (rc == AIQ_OK && !consumes(h, q)) {
		mem_queue **v = realloc(h->consumed, (h->nconsumed + 1) * sizeof *v);
		if (v == NULL) {
			rc = aiq__err(AIQ_ENOMEM, "out of memory adding a queue");
		} else {
			h->consumed = v;
			v[h->nconsumed++] = q;
			if (q->nready > 0 && h->waiting)
				pthread_cond_signal(&h->cond);
		}
	}
	pthread_mutex_unlock(&inst->lock);
	return rc;
}

/* Messages stay in the instance: nothing was sent ahead of fetch(). */
static int mem_cancel_queue(aiq__broker *b, const char *queue)
{
	mem_handle *h = (mem_handle *)b;
	pthread_mutex_lock(&h->inst->lock);
	for (size_t i = 0; i < h->nconsumed; i++) {
		if (strcmp(h->consumed[i]->name, queue) == 0) {
			memmove(h->consumed + i, h->consumed + i + 1,
			        (h->nconsumed - i - 1) * sizeof *h->consumed);
			h->nconsumed--;
			h->rr = 0;
			break;
		}
	}
	pthread_mutex_unlock(&h->inst->lock);
	return AIQ_OK;
}

/* Deliver the next ready message from the consumed queues, round-robin.
 * AIQ_OK with *out set, 1 when nothing is ready, or a negative code. */
static int take_next(mem_handle *h, aiq__delivery **out)
{
	mem_msg *m = NULL;
	size_t i;
	for (i = 0; i < h->nconsumed; i++) {
		m = level_peek(h->consumed[(h->rr + i) % h->nconsumed]);
		if (m)
			break;
	}
	if (m == NULL)
		return 1;
	int rc = tags_reserve(h);
	if (rc != AIQ_OK)
		return rc;
	aiq__delivery *d = calloc(1, sizeof *d);
	/* The first delivery to an accepting handle takes the publisher's model
	 * (ownership moves to the consuming thread; nothing is shared) and no
	 * wire; every later one, after a requeue or close(), copies the wire
	 * the broker kept. */
	bool handoff = m->decoded && h->accept_decoded;
	if (d == NULL || (d->queue = strdup(m->queue->name)) == NULL ||
	    (!handoff && aiq__wire_copy(&d->wire, &m->wire) != AIQ_OK)) {
		aiq__delivery_free(d);
		return aiq__err(AIQ_ENOMEM, "out of memory delivering a message");
	}
	/* Only the first delivery may carry it: later ones decode the wire. */
	d->message = handoff ? m->decoded : NULL;
	if (!handoff)
		aiq__message_free(m->decoded);
	m->decoded = NULL;
	level_pop(m->queue, m);
	h->rr = (h->rr + i + 1) % h->nconsumed;
	m->tag = ++h->inst->next_tag;
	unacked_add(h, m);
	d->redelivered = m->redelivered;
	d->tag = m->tag;
	*out = d;
	return AIQ_OK;
}

/* Up to max deliveries into out[], waiting up to timeout_ms for the first;
 * the rest are only those ready at once, within the free prefetch. Out of
 * memory after some were taken returns those; the next call meets it again. */
static int fetch_some(mem_handle *h, aiq__delivery **out, size_t max, size_t *n, int64_t timeout_ms)
{
	*n = 0;
	/* Negative (or absurdly long) timeouts wait until a message or wakeup(). */
	int64_t deadline = -1;
	if (timeout_ms >= 0 && timeout_ms < INT64_MAX / 4)
		deadline = aiq__mono_ms() + timeout_ms;
	bool woken = false, full = false;
	unsigned prefetch = 0;
	mem_instance *inst = h->inst;
	pthread_mutex_lock(&inst->lock);
	if (!h->consuming) {
		pthread_mutex_unlock(&inst->lock);
		return aiq__err(AIQ_ESTATE, "fetch() called before consume()");
	}
	for (;;) {
		int64_t now = aiq__now_ms();
		int64_t next_due = INT64_MAX;
		for (size_t i = 0; i < h->nconsumed; i++) {
			mem_queue *q = h->consumed[i];
			promote_due(q, now);
			if (q->ndelayed > 0 && q->delayed[0]->not_before_ms < next_due)
				next_due = q->delayed[0]->not_before_ms;
		}
		bool room = h->prefetch == 0 || h->nunacked < h->prefetch;
		if (room) {
			int rc = 1;
			while (*n < max && (h->prefetch == 0 || h->nunacked < h->prefetch) &&
			       (rc = take_next(h, &out[*n])) == AIQ_OK)
				++*n;
			if (*n > 0 || rc < 0) {
				pthread_mutex_unlock(&inst->lock);
				return *n > 0 ? AIQ_OK : rc;
			}
		}
		if (h->wake) {
			h->wake = false;
			woken = true;
			break;
		}
		int64_t mono = aiq__mono_ms();
		if (deadline >= 0 && mono >= deadline) {
			full = !room;
			prefetch = h->prefetch;
			break;
		}
		int64_t until = deadline;
		if (room && next_due != INT64_MAX) {
			int64_t due = mono + (next_due - now);
			if (until < 0 || due < until)
				until = due;
		}
		h->waiting = true;
		if (until < 0) {
			pthread_cond_wait(&h->cond, &inst->lock);
		} else {
			struct timespec ts = aiq__timespec_ms(until);
			pthread_cond_timedwait(&h->cond, &inst->lock, &ts);
		}
		h->waiting = false;
	}
	pthread_mutex_unlock(&inst->lock);
	if (woken)
		return aiq__err(AIQ_ETIMEDOUT, "fetch interrupted by wakeup()");
	if (full)
		return aiq__err(AIQ_ETIMEDOUT,
		                "no delivery within %lld ms: %u unacknowledged deliveries reach "
		                "the prefetch limit",
		                (long long)timeout_ms, prefetch);
	return aiq__err(AIQ_ETIMEDOUT, "no message within %lld ms", (long long)timeout_ms);
}

static int mem_fetch(aiq__broker *b, aiq__delivery **out, int64_t timeout_ms)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "fetch needs an output pointer");
	*out = NULL;
	size_t n;
	return fetch_some((mem_handle *)b, out, 1, &n, timeout_ms);
}

static int mem_fetch_batch(aiq__broker *b, aiq__delivery **out, size_t max, size_t *n,
                           int64_t timeout_ms)
{
	if (n == NULL)
		return aiq__err(AIQ_EINVAL, "fetch_batch needs a count pointer");
	*n = 0;
	if (out == NULL || max == 0)
		return aiq__err(AIQ_EINVAL, "fetch_batch needs room for a delivery");
	for (size_t i = 0; i < max; i++)
		out[i] = NULL;
	return fetch_some((mem_handle *)b, out, max, n, timeout_ms);
}

static void mem_accept_decoded(aiq__broker *b)
{
	mem_handle *h = (mem_handle *)b;
	pthread_mutex_lock(&h->inst->lock);
	h->accept_decoded = true;
	pthread_mutex_unlock(&h->inst->lock);
}

static void mem_wakeup(aiq__broker *b)
{
	mem_handle *h = (mem_handle *)b;
	pthread_mutex_lock(&h->inst->lock);
	h->wake = true;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->inst->lock);
}

static int unknown_delivery(const aiq__delivery *d)
{
	return aiq__err(AIQ_ESTATE,
	                "delivery tag %llu is not outstanding on this handle (already "
	                "acknowledged or rejected, or delivered by another handle)",
	                (unsigned long long)d->tag);
}

static int mem_ack(aiq__broker *b, aiq__delivery *d)
{
	mem_handle *h = (mem_handle *)b;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "ack needs a delivery");
	pthread_mutex_lock(&h->inst->lock);
	mem_msg *m = unacked_find(h, d->tag);
	if (m)
		unacked_remove(h, m);
	pthread_mutex_unlock(&h->inst->lock);
	if (m == NULL)
		return unknown_delivery(d);
	msg_free(m);
	return AIQ_OK;
}

/* All under one lock hold. Every known delivery is acknowledged even when
 * one is not outstanding; that one's error is returned. */
static int mem_ack_batch(aiq__broker *b, aiq__delivery *const *ds, size_t n)
{
	mem_handle *h = (mem_handle *)b;
	if (ds == NULL && n > 0)
		return aiq__err(AIQ_EINVAL, "ack_batch needs deliveries");
	mem_msg *done = NULL;
	const aiq__delivery *unknown = NULL;
	bool missing = false;
	pthread_mutex_lock(&h->inst->lock);
	for (size_t i = 0; i < n; i++) {
		mem_msg *m = ds[i] ? unacked_find(h, ds[i]->tag) : NULL;
		if (m == NULL) {
			if (!missing)
				unknown = ds[i];
			missing = true;
			continue;
		}
		unacked_remove(h, m);
		m->next = done;
		done = m;
	}
	pthread_mutex_unlock(&h->inst->lock);
	for (mem_msg *next; done; done = next) {
		next = done->next;
		msg_free(done);
	}
	if (!missing)
		return AIQ_OK;
	if (unknown == NULL)
		return aiq__err(AIQ_EINVAL, "ack_batch: a delivery is NULL");
	return unknown_delivery(unknown);
}

static int mem_reject(aiq__broker *b, aiq__delivery *d, bool requeue)
{
	mem_handle *h = (mem_handle *)b;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "reject needs a delivery");
	pthread_mutex_lock(&h->inst->lock);
	mem_msg *m = unacked_find(h, d->tag);
	bool found = m != NULL;
	if (found) {
		unacked_remove(h, m);
		if (requeue) {
			requeue_front(h->inst, m);
			m = NULL;
		}
	}
	pthread_mutex_unlock(&h->inst->lock);
	if (!found)
		return unknown_delivery(d);
	msg_free(m);
	return AIQ_OK;
}

static int mem_dead_letter(aiq__broker *b, aiq__delivery *d, const char *reason)
{
	mem_handle *h = (mem_handle *)b;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "dead_letter needs a delivery");
	json_t *why = aiq__json_string_lossy(reason);
	if (why == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
	mem_instance *inst = h->inst;
	int rc = AIQ_OK;
	char *dead_name = NULL;
	pthread_mutex_lock(&inst->lock);
	mem_msg *m = unacked_find(h, d->tag);
	if (m == NULL) {
		rc = 1;
		goto out;
	}
	dead_name = aiq__asprintf("%s.dead", m->queue->name);
	if (dead_name == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
		goto out;
	}
	mem_queue *dq;
	if ((rc = queue_get(&dq, inst, dead_name)) != AIQ_OK)
		goto out;
	if (m->wire.headers == NULL && (m->wire.headers = json_object()) == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
		goto out;
	}
	if (json_object_set(m->wire.headers, "x-aiq-dead-reason", why) != 0) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
		goto out;
	}
	/* The broker's own record moves: publishing a copy and acking the
	 * original would leave the same state, with a copy more. */
	unacked_remove(h, m);
	m->queue = dq;
	m->redelivered = false;
	m->seq = ++inst->next_seq;
	level_push_back(dq, m);
	queue_notify(inst, dq);
out:
	pthread_mutex_unlock(&inst->lock);
	json_decref(why);
	free(dead_name);
	return rc == 1 ? unknown_delivery(d) : rc;
}

static int mem_purge(aiq__broker *b, const char *queue, uint64_t *removed)
{
	mem_handle *h = (mem_handle *)b;
	if (queue == NULL)
		return aiq__err(AIQ_EINVAL, "purge needs a queue name");
	uint64_t n = 0;
	mem_msg *chain = NULL;
	pthread_mutex_lock(&h->inst->lock);
	mem_queue *q = queue_find(h->inst, queue);
	if (q)
		chain = queue_take_all(q, &n);
	pthread_mutex_unlock(&h->inst->lock);
	for (mem_msg *next; chain; chain = next) {
		next = chain->next;
		msg_free(chain);
	}
	if (removed)
		*removed = n;
	return AIQ_OK;
}

static int mem_depth(aiq__broker *b, const char *queue, uint64_t *count)
{
	mem_handle *h = (mem_handle *)b;
	if (queue == NULL || count == NULL)
		return aiq__err(AIQ_EINVAL, "depth needs a queue name and an output pointer");
	pthread_mutex_lock(&h->inst->lock);
	mem_queue *q = queue_find(h->inst, queue);
	if (q)
		promote_due(q, aiq__now_ms());
	*count = q ? q->nready : 0;
	pthread_mutex_unlock(&h->inst->lock);
	return AIQ_OK;
}

static const char *const memory_schemes[] = {"memory", NULL};

const aiq__broker_ops aiq__memory_broker_ops = {
        .name = "memory",
        .schemes = memory_schemes,
        .caps = AIQ__BROKER_CAP_DELAY | AIQ__BROKER_CAP_PRIORITY | AIQ__BROKER_CAP_DEAD_LETTER,
        .open = mem_open,
        .close = mem_close,
        .publish = mem_publish,
        .consume = mem_consume,
        .fetch = mem_fetch,
        .fetch_batch = mem_fetch_batch,
        .wakeup = mem_wakeup,
        .ack = mem_ack,
        .ack_batch = mem_ack_batch,
        .reject = mem_reject,
        .dead_letter = mem_dead_letter,
        .purge = mem_purge,
        .depth = mem_depth,
        .accept_decoded = mem_accept_decoded,
        .add_queue = mem_add_queue,
        .cancel_queue = mem_cancel_queue,
};
