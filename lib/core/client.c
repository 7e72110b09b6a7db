/*
 * The producer: builds Celery protocol v2 messages and publishes them;
 * reads, waits for, revokes and forgets results through the result store.
 */
#include "broker.h"
#include "json_load.h"
#include "canvas_int.h"
#include "client_int.h"
#include "config_int.h"
#include "message.h"
#include "sent_events.h"
#include "store.h"
#include "unique.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_TASK_ID 155 /* Celery's column width for task ids */
#define MAX_NAME    255
#define REPR_MAX    1024

struct aiq_enqueue_opts {
	char *task_id;
	char *queue;
	int64_t countdown_ms;
	int64_t eta_ms; /* 0 = not set */
	int64_t expires_ms;
	int priority;
	int max_retries; /* -1 = not set */
	int64_t soft_ms, hard_ms;
	bool ignore_result;
	char *unique_key; /* NULL = derived (when unique_scope is set) */
	int64_t unique_ttl_ms;
	int unique_scope; /* 0 = not unique */
};

struct aiq_client {
	aiq_config *cfg;
	aiq__broker *broker;
	aiq__store *store;
	aiq__unique *unique;    /* unique jobs' keys (unique.h) */
	aiq__sent_events *sent; /* task-sent events; NULL when off (sent_events.h) */
	char origin[300];
	char reply_to[37];
	size_t max_bytes;

	/* The broker connection is used by one thread at a time: publishes go
	 * through the group below, other broker calls take it exclusively. */
	pthread_mutex_t pub_lock;
	pthread_cond_t pub_cv;
	struct pub_entry *pub_head, *pub_tail;
	bool pub_busy;                  /* a thread is using the broker */
	size_t published, groups;       /* aiq__client_publish_stats, under pub_lock */
	unsigned test_publish_delay_us; /* aiq__client_test_publish_delay */

	/* on_complete: ids enqueued since registration, as a set. */
	pthread_mutex_t lock;
	json_t *pending;
	aiq_completion_fn complete_fn;
	void *complete_ud;
	aiq_destroy_fn complete_destroy;
};

static const char *queue_or_default(const aiq_client *c, const char *queue);

/* ---- options ------------------------------------------------------------- */

AIQ_API int aiq_enqueue_opts_new(aiq_enqueue_opts **out)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	aiq_enqueue_opts *o = calloc(1, sizeof *o);
	if (o == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	o->max_retries = -1;
	*out = o;
	return AIQ_OK;
}

AIQ_API void aiq_enqueue_opts_free(aiq_enqueue_opts *o)
{
	if (o == NULL)
		return;
	free(o->task_id);
	free(o->queue);
	free(o->unique_key);
	free(o);
}

static bool printable_name(const char *s, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f)
			return false;
	return n > 0 && n <= max && aiq__utf8_valid(s, n);
}

static int replace_str(char **dst, const char *src)
{
	char *copy = strdup(src);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	free(*dst);
	*dst = copy;
	return AIQ_OK;
}

AIQ_API int aiq_enqueue_opts_set_task_id(aiq_enqueue_opts *o, const char *task_id)
{
	if (o == NULL || task_id == NULL || !printable_name(task_id, MAX_TASK_ID))
		return aiq__err(AIQ_EINVAL, "task id must be 1-%d bytes of printable UTF-8",
		                MAX_TASK_ID);
	return replace_str(&o->task_id, task_id);
}

AIQ_API int aiq_enqueue_opts_set_queue(aiq_enqueue_opts *o, const char *queue)
{
	if (o == NULL || queue == NULL || !printable_name(queue, MAX_NAME))
		return aiq__err(AIQ_EINVAL, "queue name must be 1-%d bytes of printable UTF-8",
		                MAX_NAME);
	return replace_str(&o->queue, queue);
}

AIQ_API int aiq_enqueue_opts_set_countdown_ms(aiq_enqueue_opts *o, int64_t countdown_ms)
{
	if (o == NULL || countdown_ms < 0)
		return aiq__err(AIQ_EINVAL, "countdown must not be negative");
	o->countdown_ms = countdown_ms;
	return AIQ_OK;
}

AIQ_API int aiq_enqueue_opts_set_eta_ms(aiq_enqueue_opts *o, int64_t eta_unix_ms)
{
	if (o == NULL || eta_unix_ms < 0)
		return aiq__err(AIQ_EINVAL, "ETA must not be negative");
	o->eta_ms = eta_unix_ms;
	return AIQ_OK;
}

AIQ_API int aiq_enqueue_opts_set_expires_ms(aiq_enqueue_opts *o, int64_t expires_ms)
{
	if (o == NULL || expires_ms <= 0)
		return aiq__err(AIQ_EINVAL, "expiry must be positive");
	o->expires_ms = expires_ms;
	return AIQ_OK;
}

AIQ_API int aiq_enqueue_opts_set_priority(aiq_enqueue_opts *o, int priority)
{
	if (o == NULL || priority < 0 || priority > 255)
		return aiq__err(AIQ_EINVAL, "priority must be in 0..255");
	o->priority = priority;
	return AIQ_OK;
}

AIQ_API int aiq_enqueue_opts_set_max_retries(aiq_enqueue_opts *o, int max_retries)
{
	if (o == NULL || max_retries < 0)
		return aiq__err(AIQ_EINVAL, "max retries must not be negative");
	o->max_retries = max_retries;
	return AIQ_OK;
}

AIQ_API int aiq_enqueue_opts_set_time_limits(aiq_enqueue_opts *o, int64_t soft_ms, int64_t hard_ms)
{
	if (o == NULL || soft_ms < 0 || hard_ms < 0 || (soft_ms && hard_ms && soft_ms > hard_ms))
		return aiq__err(AIQ_EINVAL, "time limits must be >= 0 with soft <= hard");
	o->soft_ms = soft_ms;
	o->hard_ms = hard_ms;
	return AIQ_OK;
}

AIQ_API int aiq_enqueue_opts_set_ignore_result(aiq_enqueue_opts *o, int ignore)
{
	if (o == NULL)
		return aiq__err(AIQ_EINVAL, "options are NULL");
	o->ignore_result = ignore != 0;
	return AIQ_OK;
}

/* ---- client ---------------------------------------------------------------- */

AIQ_API int aiq_client_new(aiq_client **out, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	aiq_client *c = calloc(1, sizeof *c);
	if (c == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->pub_lock, NULL);
	pthread_cond_init(&c->pub_cv, NULL);
	int rc = aiq_config_copy(&c->cfg, cfg);
	if (rc == AIQ_OK)
		rc = aiq__broker_open(&c->broker, aiq__cfg_str(cfg, AIQ_CFG_BROKER_URL), cfg);
	if (rc == AIQ_OK)
		rc = aiq__store_open(&c->store, aiq__cfg_str(cfg, AIQ_CFG_RESULT_URL), cfg);
	if (rc == AIQ_OK)
		rc = aiq__unique_new(&c->unique, cfg);
	if (rc != AIQ_OK) {
		aiq_client_free(c);
		return rc;
	}
	char host[200] = "localhost";
	gethostname(host, sizeof host - 1);
	snprintf(c->origin, sizeof c->origin, "gen%ld@%s", (long)getpid(), host);
	aiq__uuid4(c->reply_to);
	c->max_bytes = (size_t)aiq__cfg_int(cfg, AIQ_CFG_MESSAGE_MAX_BYTES);
	rc = aiq__sent_events_new(&c->sent, cfg, c->origin);
	if (rc != AIQ_OK) {
		aiq_client_free(c);
		return rc;
	}
	*out = c;
	return AIQ_OK;
}

AIQ_API void aiq_client_free(aiq_client *c)
{
	if (c == NULL)
		return;
	if (c->store && c->complete_fn)
		aiq__store_subscribe(c->store, NULL, NULL);
	if (c->complete_destroy)
		c->complete_destroy(c->complete_ud);
	aiq__sent_events_free(c->sent);
	aiq__broker_close(c->broker);
	aiq__store_close(c->store);
	aiq__unique_free(c->unique);
	json_decref(c->pending);
	aiq_config_free(c->cfg);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->pub_lock);
	pthread_cond_destroy(&c->pub_cv);
	free(c);
}

static int parse_json_arg(json_t **out, const char *text, const char *what, bool want_array)
{
	if (text == NULL) {
		*out = want_array ? json_array() : json_object();
		return *out ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
	}
	json_error_t jerr;
	*out = aiq__json_loadb(text, strlen(text), JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	if (*out == NULL)
		return aiq__err(AIQ_EJSON, "%s is not valid JSON: %s (line %d, column %d)", what,
		                jerr.text, jerr.line, jerr.column);
	if (want_array ? !json_is_array(*out) : !json_is_object(*out)) {
		json_decref(*out);
		*out = NULL;
		return aiq__err(AIQ_EINVAL, "%s must be a JSON %s", what,
		                want_array ? "array" : "object");
	}
	return AIQ_OK;
}

/* Build the wire form of one task. `id` (37 bytes) receives a fresh UUID
 * unless opts fix the id; *not_before_ms gets the time to pass to publish()
 * (0 = deliver now). Sets the message on failure. */
static int build_task(aiq__wire *wire, int64_t *not_before_ms, char id[37], char **sent,
                      const aiq_client *c, const char *task_name, const char *args_json,
                      const char *kwargs_json, const aiq_enqueue_opts *opts)
{
	aiq__message m;
	aiq__message_init(&m);
	int rc = parse_json_arg(&m.args, args_json, "args", true);
	if (rc == AIQ_OK)
		rc = parse_json_arg(&m.kwargs, kwargs_json, "kwargs", false);
	if (rc != AIQ_OK)
		goto out;

	id[0] = '\0';
	if (opts->task_id == NULL)
		aiq__uuid4(id);
	int64_t now_ms = aiq__now_ms();
	int64_t eta_ms = opts->eta_ms ? opts->eta_ms
	                              : (opts->countdown_ms ? now_ms + opts->countdown_ms : 0);
	/* Borrowed strings: cleared before aiq__message_clear() below. */
	m.id = opts->task_id ? opts->task_id : id;
	m.task = (char *)(uintptr_t)task_name;
	m.root_id = m.id;
	m.origin = (char *)(uintptr_t)c->origin;
	m.reply_to = (char *)(uintptr_t)c->reply_to;
	m.eta_us = eta_ms * 1000;
	m.expires_us = opts->expires_ms ? (now_ms + opts->expires_ms) * 1000 : 0;
	m.time_limit = (double)opts->hard_ms / 1000.0;
	m.soft_time_limit = (double)opts->soft_ms / 1000.0;
	m.priority = opts->priority;
	m.max_retries = opts->max_retries;
	m.ignore_result = opts->ignore_result;
	m.argsrepr = aiq__pyrepr_args(m.args, REPR_MAX);
	m.kwargsrepr = aiq__pyrepr_kwargs(m.kwargs, REPR_MAX);
	if (m.argsrepr == NULL || m.kwargsrepr == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
		goto out;
	}
	rc = aiq__message_to_wire(wire, &m);
	if (rc != AIQ_OK)
		goto out;
	if (wire->body_len > c->max_bytes) {
		rc = aiq__err(AIQ_ETOOBIG,
		              "task message is %zu bytes, over message.max_bytes (%zu)",
		              wire->body_len, c->max_bytes);
		goto out;
	}
	/* A process-local broker hands the model on to its consumer, which
	 * then need not decode the wire (the args and kwargs move over). Without
	 * one (out of memory) the consumer decodes the wire as usual. */
	if (aiq__broker_takes_decoded(c->broker))
		(void)aiq__message_local(&wire->local, wire, &m);
	/* Park the task in the broker only where every consumer, Celery's
	 * included, will see it when due; otherwise send it now with its ETA. */
	bool delay = aiq__broker_delays_for_all(c->broker) && eta_ms > now_ms;
	*not_before_ms = delay ? eta_ms : 0;
	/* task-sent: encoded now, queued once the broker took the task. */
	if (sent && c->sent)
		*sent = aiq__sent_events_encode(c->sent, &m, queue_or_default(c, opts->queue));
out:
	m.id = m.task = m.root_id = m.origin = m.reply_to = NULL;
	aiq__message_clear(&m);
	if (rc != AIQ_OK)
		aiq__wire_clear(wire);
	return rc;
}

/* ---- sharing the broker connection between threads ---------------------- */

#define PUB_GROUP_MAX 128 /* single enqueues published in one batch */

/* One enqueue waiting to be published by the group's leader. */
struct pub_entry {
	const char *queue;
	const aiq__wire *wire;
	int64_t not_before_ms;
	int status;
	bool done;
	char why[256]; /* the leader's error text for a failed publish */
	struct pub_entry *next;
};

/* Take the broker connection for this thread. */
static void broker_acquire(aiq_client *c)
{
	pthread_mutex_lock(&c->pub_lock);
	while (c->pub_busy)
		pthread_cond_wait(&c->pub_cv, &c->pub_lock);
	c->pub_busy = true;
	pthread_mutex_unlock(&c->pub_lock);
}

static void broker_release(aiq_client *c)
{
	pthread_mutex_lock(&c->pub_lock);
	c->pub_busy = false;
	pthread_cond_broadcast(&c->pub_cv);
	pthread_mutex_unlock(&c->pub_lock);
}

/* Publish the queued entries for the head's queue (up to PUB_GROUP_MAX) in
 * one publish_batch: one pipeline, one confirm wait. Leader, with the
 * broker taken and pub_lock not held. */
static void publish_group(aiq_client *c, struct pub_entry **batch, size_t n)
{
	if (n == 1) {
		batch[0]->status = aiq__broker_publish(c->broker, batch[0]->queue, batch[0]->wire,
		                                       batch[0]->not_before_ms);
		if (batch[0]->status != AIQ_OK)
			snprintf(batch[0]->why, sizeof batch[0]->why, "%s", aiq_error_last());
		return;
	}
	const aiq__wire *msgs[PUB_GROUP_MAX];
	int64_t nb[PUB_GROUP_MAX];
	int status[PUB_GROUP_MAX];
	for (size_t i = 0; i < n; i++) {
		msgs[i] = batch[i]->wire;
		nb[i] = batch[i]->not_before_ms;
	}
	int rc = aiq__broker_publish_batch(c->broker, batch[0]->queue, msgs, n, nb, status);
	const char *why = aiq_error_last();
	bool any_failed = false;
	for (size_t i = 0; i < n; i++)
		any_failed = any_failed || status[i] != AIQ_OK;
	for (size_t i = 0; i < n; i++) {
		/* A driver that failed the call but no single message is not believed. */
		batch[i]->status = rc != AIQ_OK && !any_failed ? rc : status[i];
		if (batch[i]->status != AIQ_OK)
			snprintf(batch[i]->why, sizeof batch[i]->why, "%s", why);
	}
}

/* Publish one message, grouped with whatever other threads enqueue at the
 * same moment: the first thread to find the broker free publishes every
 * queued message for its queue in one batch (its own included) and the
 * others wait for their answer; the next waiter leads the next group.
 * Each caller returns only once its own message was accepted or refused. */
static int publish_grouped(aiq_client *c, const char *queue, const aiq__wire *wire,
                           int64_t not_before_ms)
{
	struct pub_entry e = {.queue = queue, .wire = wire, .not_before_ms = not_before_ms};
	pthread_mutex_lock(&c->pub_lock);
	/* e stays queued only while this call waits: it is unlinked before the
	 * return below, so the list never holds a dead frame. */
	if (c->pub_tail)
		c->pub_tail->next = &e; /* cppcheck-suppress autoVariables */
	else
		c->pub_head = &e; /* cppcheck-suppress autoVariables */
	c->pub_tail = &e;         /* cppcheck-suppress autoVariables */
	while (!e.done) {
		if (c->pub_busy) {
			pthread_cond_wait(&c->pub_cv, &c->pub_lock);
			continue;
		}
		c->pub_busy = true;
		/* The head's queue: every queued entry for it, in order. */
		struct pub_entry *batch[PUB_GROUP_MAX];
		size_t n = 0;
		const char *q = c->pub_head->queue;
		struct pub_entry **link = &c->pub_head;
		while (*link && n < PUB_GROUP_MAX) {
			struct pub_entry *x = *link;
			if (strcmp(x->queue, q) == 0) {
				batch[n++] = x;
				*link = x->next;
			} else {
				link = &x->next;
			}
		}
		c->pub_tail = NULL;
		for (struct pub_entry *x = c->pub_head; x; x = x->next)
			c->pub_tail = x;
		unsigned delay_us = c->test_publish_delay_us;
		pthread_mutex_unlock(&c->pub_lock);
		if (delay_us)
			usleep(delay_us);
		publish_group(c, batch, n);
		pthread_mutex_lock(&c->pub_lock);
		for (size_t i = 0; i < n; i++)
			batch[i]->done = true;
		c->published += n;
		c->groups++;
		c->pub_busy = false;
		pthread_cond_broadcast(&c->pub_cv);
	}
	pthread_mutex_unlock(&c->pub_lock);
	if (e.status != AIQ_OK)
		return aiq__err(e.status, "%s", e.why);
	return AIQ_OK;
}

void aiq__client_test_publish_delay(aiq_client *c, unsigned us)
{
	pthread_mutex_lock(&c->pub_lock);
	c->test_publish_delay_us = us;
	pthread_mutex_unlock(&c->pub_lock);
}

void aiq__client_publish_stats(aiq_client *c, size_t *published, size_t *groups)
{
	pthread_mutex_lock(&c->pub_lock);
	*published = c->published;
	*groups = c->groups;
	pthread_mutex_unlock(&c->pub_lock);
}

static void pending_add(aiq_client *c, const char *id)
{
	pthread_mutex_lock(&c->lock);
	if (c->complete_fn && c->pending)
		json_object_set_new(c->pending, id, json_true());
	pthread_mutex_unlock(&c->lock);
}

static void pending_del(aiq_client *c, const char *id)
{
	pthread_mutex_lock(&c->lock);
	if (c->pending)
		json_object_del(c->pending, id);
	pthread_mutex_unlock(&c->lock);
}

/* aiq_client_enqueue, and aiq_client_enqueue_unique's *existing_out. */
static int enqueue_one(char **task_id_out, int *existing_out, aiq_client *c, const char *task_name,
                       const char *args_json, const char *kwargs_json, const aiq_enqueue_opts *opts)
{
	if (task_id_out)
		*task_id_out = NULL;
	if (existing_out)
		*existing_out = 0;
	if (c == NULL || task_name == NULL)
		return aiq__err(AIQ_EINVAL, "client and task name are required");
	if (!printable_name(task_name, MAX_NAME))
		return aiq__err(AIQ_EINVAL, "task name must be 1-%d bytes of printable UTF-8",
		                MAX_NAME);
	aiq_enqueue_opts defaults = {.max_retries = -1};
	if (opts == NULL)
		opts = &defaults;

	aiq__wire wire = {0};
	char fresh[37];
	int64_t not_before_ms = 0;
	char *sent = NULL;
	int rc = build_task(&wire, &not_before_ms, fresh, &sent, c, task_name, args_json,
	                    kwargs_json, opts);
	if (rc != AIQ_OK)
		return rc;
	const char *id = opts->task_id ? opts->task_id : fresh;
	char *id_copy = NULL;
	if (task_id_out && !(id_copy = strdup(id))) {
		aiq__wire_clear(&wire);
		free(sent);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	char *ukey = NULL;
	if (opts->unique_scope) {
		char *holder = NULL;
		rc = aiq__unique_enqueue_claim(c->unique, &wire, &ukey, &holder, opts->unique_key,
		                               opts->unique_ttl_ms, opts->unique_scope, task_name,
		                               args_json, kwargs_json, id);
		if (rc != AIQ_OK || holder) {
			aiq__wire_clear(&wire);
			free(sent);
			free(id_copy);
			free(ukey);
			if (holder && existing_out)
				*existing_out = 1;
			if (holder && task_id_out)
				*task_id_out = holder;
			else
				free(holder);
			return rc;
		}
	}
	pending_add(c, id);
	rc = publish_grouped(c, queue_or_default(c, opts->queue), &wire, not_before_ms);
	aiq__wire_clear(&wire);
	if (rc != AIQ_OK && ukey)
		(void)aiq__unique_release(c->unique, ukey, id);
	free(ukey);
	if (rc != AIQ_OK) {
		pending_del(c, id);
		free(id_copy);
		free(sent);
		return rc;
	}
	if (sent)
		aiq__sent_events_post(c->sent, sent);
	if (task_id_out)
		*task_id_out = id_copy;
	return AIQ_OK; /* cppcheck-suppress memleak ; id_copy is NULL without task_id_out */
}

AIQ_API int aiq_client_enqueue(char **task_id_out, aiq_client *c, const char *task_name,
                               const char *args_json, const char *kwargs_json,
                               const aiq_enqueue_opts *opts)
{
	return enqueue_one(task_id_out, NULL, c, task_name, args_json, kwargs_json, opts);
}

AIQ_API int aiq_client_enqueue_batch(char **task_ids_out, int *status_out, aiq_client *c,
                                     const char *task_name, const char *const *args_json,
                                     const char *const *kwargs_json, size_t n,
                                     const aiq_enqueue_opts *opts)
{
	for (size_t i = 0; i < n; i++) {
		if (task_ids_out)
			task_ids_out[i] = NULL;
		if (status_out)
			status_out[i] = AIQ_EINVAL;
	}
	if (c == NULL || task_name == NULL)
		return aiq__err(AIQ_EINVAL, "client and task name are required");
	if (!printable_name(task_name, MAX_NAME))
		return aiq__err(AIQ_EINVAL, "task name must be 1-%d bytes of printable UTF-8",
		                MAX_NAME);
	aiq_enqueue_opts defaults = {.max_retries = -1};
	if (opts == NULL)
		opts = &defaults;
	if (opts->task_id && n > 1)
		return aiq__err(AIQ_EINVAL,
		                "a fixed task id cannot be given to a batch of %zu tasks", n);
	if (opts->unique_scope)
		return aiq__err(AIQ_EINVAL, "unique jobs are enqueued one by one, not in a batch");
	if (n == 0)
		return AIQ_OK;
	if (n > SIZE_MAX / (sizeof(aiq__wire) + 64))
		return aiq__err(AIQ_EINVAL, "batch of %zu tasks is too large", n);

	/* One block: per task its wire form, id, status and not-before time;
	 * the built ones compacted for the publish. */
	aiq__wire *wires = calloc(n, sizeof *wires);
	char(*ids)[37] = calloc(n, sizeof *ids);
	int *status = malloc(n * sizeof *status);
	int64_t *not_before = calloc(n, sizeof *not_before);
	const aiq__wire **built = malloc(n * sizeof *built);
	int64_t *built_nb = malloc(n * sizeof *built_nb);
	int *built_status = malloc(n * sizeof *built_status);
	size_t *built_idx = malloc(n * sizeof *built_idx);
	char **copies = calloc(n, sizeof *copies);
	char **sents = c->sent ? calloc(n, sizeof *sents) : NULL;
	if ((c->sent && !sents) || !wires || !ids || !status || !not_before || !built ||
	    !built_nb || !built_status || !built_idx || !copies) {
		free(wires);
		free(ids);
		free(status);
		free(not_before);
		free(built);
		free(built_nb);
		free(built_status);
		free(built_idx);
		free(copies);
		free(sents);
		for (size_t i = 0; status_out && i < n; i++)
			status_out[i] = AIQ_ENOMEM;
		return aiq__err(AIQ_ENOMEM, "out of memory building a batch of %zu tasks", n);
	}

	int first_rc = AIQ_OK;
	size_t first_idx = 0, failed = 0, nbuilt = 0;
	char why[512] = "";
	for (size_t i = 0; i < n; i++) {
		int rc = build_task(&wires[i], &not_before[i], ids[i], sents ? &sents[i] : NULL, c,
		                    task_name, args_json ? args_json[i] : NULL,
		                    kwargs_json ? kwargs_json[i] : NULL, opts);
		const char *id = opts->task_id ? opts->task_id : ids[i];
		if (rc == AIQ_OK && task_ids_out && !(copies[i] = strdup(id))) {
			aiq__wire_clear(&wires[i]);
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		}
		status[i] = rc;
		if (rc != AIQ_OK) {
			if (failed++ == 0) {
				first_rc = rc;
				first_idx = i;
				snprintf(why, sizeof why, "%s", aiq_error_last());
			}
			continue;
		}
		pending_add(c, id);
		built[nbuilt] = &wires[i];
		built_nb[nbuilt] = not_before[i];
		built_status[nbuilt] = AIQ_EBROKER; /* never success unless reported */
		built_idx[nbuilt] = i;
		nbuilt++;
	}

	if (nbuilt > 0) {
		broker_acquire(c);
		int prc = aiq__broker_publish_batch(c->broker, queue_or_default(c, opts->queue),
		                                    built, nbuilt, built_nb, built_status);
		char pwhy[512];
		snprintf(pwhy, sizeof pwhy, "%s", prc != AIQ_OK ? aiq_error_last() : "");
		broker_release(c);
		/* A driver that failed the call but no single message is not believed. */
		bool any_failed = false;
		for (size_t k = 0; k < nbuilt; k++)
			any_failed = any_failed || built_status[k] != AIQ_OK;
		for (size_t k = 0; k < nbuilt; k++) {
			size_t i = built_idx[k];
			int rc = prc != AIQ_OK && !any_failed ? prc : built_status[k];
			status[i] = rc;
			if (rc == AIQ_OK)
				continue;
			pending_del(c, opts->task_id ? opts->task_id : ids[i]);
			free(copies[i]);
			copies[i] = NULL;
			if (failed++ == 0 || i < first_idx) {
				first_rc = rc;
				first_idx = i;
				snprintf(why, sizeof why, "%s", pwhy);
			}
		}
	}

	for (size_t i = 0; i < n; i++) {
		if (status_out)
			status_out[i] = status[i];
		if (task_ids_out)
			task_ids_out[i] = copies[i];
		aiq__wire_clear(&wires[i]);
		if (sents && status[i] == AIQ_OK)
			aiq__sent_events_post(c->sent, sents[i]);
		else if (sents)
			free(sents[i]);
	}
	free(sents);
	free(wires);
	free(ids);
	free(status);
	free(not_before);
	free(built);
	free(built_nb);
	free(built_status);
	free(built_idx);
	free(copies);
	if (failed)
		return aiq__err(first_rc, "%zu of %zu tasks failed; first (task %zu): %s", failed,
		                n, first_idx, why);
	return AIQ_OK;
}

static int check_id(const aiq_client *c, const char *task_id)
{
	if (c == NULL || task_id == NULL || !printable_name(task_id, MAX_TASK_ID))
		return aiq__err(AIQ_EINVAL, "a client and a valid task id are required");
	return AIQ_OK;
}

AIQ_API int aiq_client_get_result(aiq_result **out, aiq_client *c, const char *task_id)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	int rc = check_id(c, task_id);
	if (rc == AIQ_OK)
		rc = aiq__store_get(c->store, out, task_id);
	return rc;
}

AIQ_API int aiq_client_wait(aiq_result **out, aiq_client *c, const char *task_id,
                            int64_t timeout_ms)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	int rc = check_id(c, task_id);
	if (rc != AIQ_OK)
		return rc;
	return aiq__store_wait(c->store, out, task_id, timeout_ms);
}

AIQ_API int aiq_client_revoke(aiq_client *c, const char *task_id)
{
	int rc = check_id(c, task_id);
	if (rc != AIQ_OK)
		return rc;
	aiq_result *r = NULL;
	rc = aiq__result_new(&r, task_id, AIQ_STATE_REVOKED);
	if (rc == AIQ_OK)
		rc = aiq__result_set_error(r, "TaskRevokedError", "revoked", "celery.exceptions",
		                           NULL);
	if (rc == AIQ_OK) {
		aiq__result_mark_done(r);
		rc = aiq__store_put(c->store, r);
	}
	aiq_result_free(r);
	if (rc == AIQ_ESTATE) {
		/* Already final: say which state it kept, so callers report the truth. */
		aiq_result *now = NULL;
		const char *state = "final";
		if (aiq__store_get(c->store, &now, task_id) == AIQ_OK &&
		    aiq_state_is_ready(now->state))
			state = aiq_state_name(now->state);
		rc = aiq__err(AIQ_ESTATE, "task %.155s already finished as %s; not revoked",
		              task_id, state);
		aiq_result_free(now);
	}
	return rc;
}

AIQ_API int aiq_client_forget(aiq_client *c, const char *task_id)
{
	int rc = check_id(c, task_id);
	if (rc != AIQ_OK)
		return rc;
	return aiq__store_forget(c->store, task_id);
}

static void on_store_complete(const aiq_result *r, void *userdata)
{
	aiq_client *c = userdata;
	pthread_mutex_lock(&c->lock);
	bool mine = c->pending && json_object_get(c->pending, r->task_id) != NULL;
	if (mine)
		json_object_del(c->pending, r->task_id);
	aiq_completion_fn fn = c->complete_fn;
	void *ud = c->complete_ud;
	pthread_mutex_unlock(&c->lock);
	if (mine && fn)
		fn(r->task_id, r, ud);
}

AIQ_API int aiq_client_on_complete(aiq_client *c, aiq_completion_fn fn, void *userdata,
                                   aiq_destroy_fn destroy)
{
	int rc = AIQ_OK;
	if (c == NULL)
		rc = aiq__err(AIQ_EINVAL, "client is NULL");
	else if (fn == NULL) {
		/* Remove the callback. */
		if (c->complete_fn)
			aiq__store_subscribe(c->store, NULL, NULL);
		if (c->complete_destroy)
			c->complete_destroy(c->complete_ud);
		pthread_mutex_lock(&c->lock);
		c->complete_fn = NULL;
		c->complete_ud = NULL;
		c->complete_destroy = NULL;
		json_object_clear(c->pending);
		pthread_mutex_unlock(&c->lock);
		if (destroy)
			destroy(userdata);
		return AIQ_OK;
	} else if (!(aiq__store_caps(c->store) & AIQ__STORE_CAP_NOTIFY))
		rc = aiq__err(AIQ_EUNSUPPORTED, "the %s result store cannot notify completions",
		              aiq__store_name(c->store));
	if (rc != AIQ_OK) {
		if (destroy)
			destroy(userdata);
		return rc;
	}
	/* Unsubscribe first so no call of the old callback is in progress. */
	if (c->complete_fn)
		aiq__store_subscribe(c->store, NULL, NULL);
	if (c->complete_destroy)
		c->complete_destroy(c->complete_ud);
	pthread_mutex_lock(&c->lock);
	if (c->pending == NULL)
		c->pending = json_object();
	c->complete_fn = fn;
	c->complete_ud = userdata;
	c->complete_destroy = destroy;
	pthread_mutex_unlock(&c->lock);
	rc = c->pending ? aiq__store_subscribe(c->store, on_store_complete, c)
	                : aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc != AIQ_OK) {
		pthread_mutex_lock(&c->lock);
		c->complete_fn = NULL;
		pthread_mutex_unlock(&c->lock);
	}
	return rc;
}

AIQ_API int aiq_client_ping(aiq_client *c)
{
	if (c == NULL)
		return aiq__err(AIQ_EINVAL, "client is NULL");
	broker_acquire(c);
	int rc = aiq__broker_ping(c->broker);
	broker_release(c);
	if (rc == AIQ_OK)
		rc = aiq__store_ping(c->store);
	return rc;
}

static const char *queue_or_default(const aiq_client *c, const char *queue)
{
	return queue ? queue : aiq__cfg_str(c->cfg, AIQ_CFG_QUEUE);
}

AIQ_API int aiq_client_queue_depth(uint64_t *count, aiq_client *c, const char *queue)
{
	if (count)
		*count = 0;
	if (count == NULL || c == NULL || (queue && !printable_name(queue, MAX_NAME)))
		return aiq__err(AIQ_EINVAL, "count, client and a valid queue name are required");
	uint64_t n = 0;
	broker_acquire(c);
	int rc = aiq__broker_depth(c->broker, queue_or_default(c, queue), &n);
	broker_release(c);
	if (rc == AIQ_OK)
		*count = n;
	return rc;
}

AIQ_API int aiq_client_purge(uint64_t *removed, aiq_client *c, const char *queue)
{
	if (removed)
		*removed = 0;
	if (c == NULL || (queue && !printable_name(queue, MAX_NAME)))
		return aiq__err(AIQ_EINVAL, "a client and a valid queue name are required");
	uint64_t n = 0;
	broker_acquire(c);
	int rc = aiq__broker_purge(c->broker, queue_or_default(c, queue), &n);
	broker_release(c);
	if (rc == AIQ_OK && removed)
		*removed = n;
	return rc;
}

/* ---- unique jobs (unique.h) ------------------------------------------------- */

#define MAX_UNIQUE_KEY    200
#define MAX_UNIQUE_TTL_MS (INT64_C(30) * 24 * 3600 * 1000)

AIQ_API int aiq_enqueue_opts_set_unique(aiq_enqueue_opts *o, const char *key, int64_t ttl_ms,
                                        int scope)
{
	if (o == NULL)
		return aiq__err(AIQ_EINVAL, "no options");
	if (scope < 0 || scope > AIQ_UNIQUE_UNTIL_SUCCESS)
		return aiq__err(AIQ_EINVAL, "unique scope %d is not an aiq_unique_scope value",
		                scope);
	if (scope != 0 && (ttl_ms < 1 || ttl_ms > MAX_UNIQUE_TTL_MS))
		return aiq__err(AIQ_EINVAL, "unique TTL must be 1 ms to 30 days, got %lld ms",
		                (long long)ttl_ms);
	if (scope != 0 && key && !printable_name(key, MAX_UNIQUE_KEY))
		return aiq__err(AIQ_EINVAL, "unique key must be 1-%d bytes of printable UTF-8",
		                MAX_UNIQUE_KEY);
	char *copy = NULL;
	if (scope != 0 && key && (copy = strdup(key)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	free(o->unique_key);
	o->unique_key = copy;
	o->unique_ttl_ms = scope ? ttl_ms : 0;
	o->unique_scope = scope;
	return AIQ_OK;
}

AIQ_API int aiq_client_enqueue_unique(char **task_id_out, int *existing_out, aiq_client *c,
                                      const char *task_name, const char *args_json,
                                      const char *kwargs_json, const aiq_enqueue_opts *opts)
{
	return enqueue_one(task_id_out, existing_out, c, task_name, args_json, kwargs_json, opts);
}

/* ---- workflows (canvas.h; signatures to messages: canvas.c) --------------- */

/* Publish a message built from a signature, as aiq_client_enqueue() does. */
static int send_built(aiq_client *c, aiq__sig_send *s)
{
	if (s->msg.reply_to == NULL && !(s->msg.reply_to = strdup(c->reply_to)))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	aiq__wire wire = {0};
	int rc = aiq__message_to_wire(&wire, &s->msg);
	if (rc != AIQ_OK)
		return rc;
	if (wire.body_len > c->max_bytes) {
		aiq__wire_clear(&wire);
		return aiq__err(AIQ_ETOOBIG,
		                "task message is %zu bytes, over message.max_bytes (%zu)",
		                wire.body_len, c->max_bytes);
	}
	bool delay = aiq__broker_delays_for_all(c->broker) && s->not_before_ms > aiq__now_ms();
	pending_add(c, s->msg.id);
	char *sent =
	        c->sent ? aiq__sent_events_encode(c->sent, &s->msg, queue_or_default(c, s->queue))
	                : NULL;
	rc = publish_grouped(c, queue_or_default(c, s->queue), &wire, delay ? s->not_before_ms : 0);
	if (rc != AIQ_OK)
		pending_del(c, s->msg.id);
	if (rc == AIQ_OK && sent)
		aiq__sent_events_post(c->sent, sent);
	else
		free(sent);
	aiq__wire_clear(&wire);
	return rc;
}

/* A copy of a signature whose options carry a task id (its own or fresh). */
static json_t *frozen_copy(const aiq_signature *sig)
{
	json_t *copy = json_deep_copy(aiq__signature_json(sig));
	if (copy == NULL)
		return NULL;
	json_t *o = json_object_get(copy, "options");
	if (!json_is_object(o) && (!(o = json_object()) || json_object_set_new(copy, "options", o)))
		goto fail;
	if (!json_is_string(json_object_get(o, "task_id"))) {
		char id[37];
		aiq__uuid4(id);
		if (json_object_set_new(o, "task_id", json_string(id)) != 0)
			goto fail;
	}
	return copy;
fail:
	json_decref(copy);
	return NULL;
}

static const char *frozen_id(const json_t *sig)
{
	return json_string_value(json_object_get(json_object_get(sig, "options"), "task_id"));
}

AIQ_API int aiq_client_send_signature(char **task_id_out, aiq_client *c, const aiq_signature *s)
{
	if (task_id_out)
		*task_id_out = NULL;
	if (c == NULL || s == NULL)
		return aiq__err(AIQ_EINVAL, "a client and a signature are required");
	aiq__sig_send built;
	int rc = aiq__signature_build(&built, aiq__signature_json(s), NULL, NULL, NULL, NULL,
	                              c->origin);
	char *id = NULL;
	if (rc == AIQ_OK && task_id_out && !(id = strdup(built.msg.id)))
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK)
		rc = send_built(c, &built);
	aiq__sig_send_clear(&built);
	if (rc != AIQ_OK) {
		free(id);
		return rc;
	}
	if (task_id_out)
		*task_id_out = id;
	return AIQ_OK; /* cppcheck-suppress memleak ; id is NULL without task_id_out */
}

static void free_ids(char **ids, size_t n)
{
	for (size_t i = 0; ids && i < n; i++) {
		free(ids[i]);
		ids[i] = NULL;
	}
}

static int check_sigs(const aiq_client *c, const aiq_signature *const *sigs, size_t n)
{
	if (c == NULL || sigs == NULL || n == 0)
		return aiq__err(AIQ_EINVAL, "a client and at least one signature are required");
	for (size_t i = 0; i < n; i++)
		if (sigs[i] == NULL)
			return aiq__err(AIQ_EINVAL, "signature %zu is NULL", i);
	return AIQ_OK;
}

AIQ_API int aiq_client_send_chain(char **task_ids_out, aiq_client *c,
                                  const aiq_signature *const *sigs, size_t n)
{
	for (size_t i = 0; task_ids_out && i < n; i++)
		task_ids_out[i] = NULL;
	int rc = check_sigs(c, sigs, n);
	if (rc != AIQ_OK)
		return rc;
	/* Celery's chain: every step frozen (its id fixed now), the first sent
	 * with the others reversed in embed.chain, the next step last. */
	json_t *steps = json_array();
	json_t *rest = json_array();
	if (steps == NULL || rest == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; rc == AIQ_OK && i < n; i++)
		if (json_array_append_new(steps, frozen_copy(sigs[i])) != 0)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = n; rc == AIQ_OK && i > 1; i--)
		if (json_array_append(rest, json_array_get(steps, i - 1)) != 0)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; rc == AIQ_OK && task_ids_out && i < n; i++)
		if (!(task_ids_out[i] = strdup(frozen_id(json_array_get(steps, i)))))
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK) {
		aiq__sig_send built;
		rc = aiq__signature_build(&built, json_array_get(steps, 0), NULL, NULL, NULL,
		                          n > 1 ? rest : NULL, c->origin);
		if (rc == AIQ_OK)
			rc = send_built(c, &built);
		aiq__sig_send_clear(&built);
	}
	json_decref(steps);
	json_decref(rest);
	if (rc != AIQ_OK)
		free_ids(task_ids_out, n);
	return rc;
}

/* The members of a group (or a chord's header, `chord` its frozen body): each
 * sent with group_id and group_index, in order; stops at the first that is
 * not sent and says how many were. */
static int send_members(aiq_client *c, const aiq_signature *const *sigs, size_t n, const char *gid,
                        json_t *chord, char **ids_out)
{
	int rc = AIQ_OK;
	for (size_t i = 0; rc == AIQ_OK && i < n; i++) {
		json_t *member = frozen_copy(sigs[i]);
		json_t *o = json_object_get(member, "options");
		if (member == NULL || json_object_set_new(o, "group_id", json_string(gid)) != 0 ||
		    json_object_set_new(o, "group_index", json_integer((json_int_t)i)) != 0 ||
		    (chord && json_object_set(o, "chord", chord) != 0)) {
			json_decref(member);
			return aiq__err(AIQ_ENOMEM, "out of memory");
		}
		aiq__sig_send built;
		rc = aiq__signature_build(&built, member, NULL, NULL, NULL, NULL, c->origin);
		if (rc == AIQ_OK)
			rc = send_built(c, &built);
		if (rc == AIQ_OK && ids_out && !(ids_out[i] = strdup(frozen_id(member))))
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		else if (rc != AIQ_OK)
			rc = aiq__err(rc, "%s %zu of %zu not sent (%zu were%s): %s",
			              chord ? "chord part" : "group member", i, n, i,
			              chord ? "; the body will not run" : "", aiq_error_last());
		aiq__sig_send_clear(&built);
		json_decref(member);
	}
	return rc;
}

AIQ_API int aiq_client_send_group(char **group_id_out, char **task_ids_out, aiq_client *c,
                                  const aiq_signature *const *sigs, size_t n)
{
	if (group_id_out)
		*group_id_out = NULL;
	for (size_t i = 0; task_ids_out && i < n; i++)
		task_ids_out[i] = NULL;
	int rc = check_sigs(c, sigs, n);
	if (rc != AIQ_OK)
		return rc;
	char gid[37];
	aiq__uuid4(gid);
	char *gid_copy = NULL;
	if (group_id_out && !(gid_copy = strdup(gid)))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	rc = send_members(c, sigs, n, gid, NULL, task_ids_out);
	if (rc != AIQ_OK) {
		free(gid_copy);
		return rc;
	}
	if (group_id_out)
		*group_id_out = gid_copy;
	return AIQ_OK; /* cppcheck-suppress memleak ; gid_copy is NULL without group_id_out */
}

AIQ_API int aiq_client_send_chord(char **body_id_out, char **header_ids_out, aiq_client *c,
                                  const aiq_signature *const *header, size_t n,
                                  const aiq_signature *body)
{
	if (body_id_out)
		*body_id_out = NULL;
	for (size_t i = 0; header_ids_out && i < n; i++)
		header_ids_out[i] = NULL;
	int rc = check_sigs(c, header, n);
	if (rc == AIQ_OK && body == NULL)
		rc = aiq__err(AIQ_EINVAL, "a chord needs a body");
	if (rc != AIQ_OK)
		return rc;
	json_t *frozen = frozen_copy(body);
	char *body_id = frozen ? strdup(frozen_id(frozen)) : NULL;
	if (body_id == NULL) {
		json_decref(frozen);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	/* Celery's chord: the header is a group whose members carry the body in
	 * embed.chord; the store learns the header's size first, so the part
	 * that completes it can tell (RedisBackend.set_chord_size). */
	char gid[37];
	aiq__uuid4(gid);
	rc = aiq__store_chord_set_size(c->store, gid, (int64_t)n);
	if (rc != AIQ_OK)
		rc = aiq__err(rc, "chord not sent: %s", aiq_error_last());
	if (rc == AIQ_OK)
		rc = send_members(c, header, n, gid, frozen, header_ids_out);
	json_decref(frozen);
	if (rc == AIQ_OK && body_id_out) {
		*body_id_out = body_id;
		body_id = NULL;
	}
	free(body_id);
	return rc;
}

/* Celery's GroupResult.as_tuple(): ((gid, None), [((id, None), None), ...]). */
AIQ_API int aiq_client_save_group(aiq_client *c, const char *group_id, const char *const *task_ids,
                                  size_t n)
{
	if (c == NULL || group_id == NULL || !printable_name(group_id, MAX_TASK_ID) ||
	    (task_ids == NULL && n > 0))
		return aiq__err(AIQ_EINVAL,
		                "a client, a valid group id and the task ids are required");
	json_t *members = json_array();
	for (size_t i = 0; members && i < n; i++) {
		if (task_ids[i] == NULL || !printable_name(task_ids[i], MAX_TASK_ID)) {
			json_decref(members);
			return aiq__err(AIQ_EINVAL, "task id %zu of the group is not valid", i);
		}
		if (json_array_append_new(members, json_pack("[[s, n], n]", task_ids[i])) != 0) {
			json_decref(members);
			members = NULL;
		}
	}
	json_t *meta = members ? json_pack("{s:[[s, n], o]}", "result", group_id, members) : NULL;
	char *text = meta ? aiq__json_dumps_py(meta) : NULL;
	json_decref(meta);
	int rc = text ? aiq__store_put_group(c->store, group_id, text)
	              : aiq__err(AIQ_ENOMEM, "out of memory");
	free(text);
	return rc;
}

AIQ_API int aiq_client_restore_group(char **task_ids_json_out, aiq_client *c, const char *group_id)
{
	if (task_ids_json_out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*task_ids_json_out = NULL;
	if (c == NULL || group_id == NULL || !printable_name(group_id, MAX_TASK_ID))
		return aiq__err(AIQ_EINVAL, "a client and a valid group id are required");
	char *text = NULL;
	int rc = aiq__store_get_group(c->store, group_id, &text);
	if (rc != AIQ_OK)
		return rc;
	if (text == NULL)
		return aiq__err(AIQ_ENOTFOUND, "no result saved for group %s", group_id);
	json_t *meta = json_loads(text, 0, NULL);
	free(text);
	const json_t *members = json_array_get(json_object_get(meta, "result"), 1);
	json_t *ids = json_array();
	for (size_t i = 0; ids && i < json_array_size(members); i++) {
		/* ((id, parent), children) of a plain result; a nested group
		 * (whose first element is not a pair) is refused. */
		const json_t *id = json_array_get(json_array_get(json_array_get(members, i), 0), 0);
		if (!json_is_string(id)) {
			json_decref(ids);
			json_decref(meta);
			return aiq__err(AIQ_EPROTO,
			                "group %s: member %zu is not a plain task result (nested "
			                "groups are not supported)",
			                group_id, i);
		}
		if (json_array_append(ids, (json_t *)(uintptr_t)id) != 0) {
			json_decref(ids);
			ids = NULL;
		}
	}
	if (meta == NULL || !json_is_array(members)) {
		json_decref(ids);
		json_decref(meta);
		return aiq__err(AIQ_EPROTO, "group %s: the saved result is not Celery's", group_id);
	}
	*task_ids_json_out = ids ? json_dumps(ids, JSON_COMPACT) : NULL;
	json_decref(ids);
	json_decref(meta);
	return *task_ids_json_out ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
}
