/*
 * Remote control (worker.remote_control): the worker answers Celery 5.2's
 * pidbox requests (`celery inspect`, `celery status`, `celery control`,
 * Flower) as a Celery worker does, from a thread of its own with its own
 * bus connection.
 *
 * A request is {"method", "arguments", "destination", "pattern", "matcher",
 * "ticket"?, "reply_to"?}. It runs when kombu's Node.handle_message would
 * run it: destination non-empty -> `nodename in destination` (a list: an
 * element equal to it; a string: Python's substring test); else pattern
 * and matcher -> glob (fnmatch) or pcre (re.match, here POSIX extended,
 * anchored at the start); else always. A reply {"<nodename>": value} is
 * sent only when reply_to is present, with the request's ticket; an
 * unknown method or a bad argument is answered {"error": "<repr>"}
 * (kombu's Node.dispatch). `shutdown` stops the worker and, as in Celery,
 * answers nothing.
 *
 * Revocations (`revoke`, `terminate`, and the ids peers send with `hello`)
 * go to an in-memory set like Celery's (at most REVOKED_MAX ids, each for
 * REVOKED_TTL_S) for `revoked` and `hello`, and REVOKED is stored for each
 * id in the result store, which this worker checks before a task runs and
 * while it runs: the revocation holds for every worker of the store, also
 * one that was offline when it was sent. `terminate` asks a running handler
 * to stop (aiq_task_cancelled()); in the thread pool that is all it can do
 * (a thread cannot be killed) and its reply says so, in the process pool
 * the pool process running the task is killed once REVOKED is stored
 * (pool_process.c), with SIGKILL whatever signal was named: pool processes
 * ignore SIGTERM and SIGINT, whose meaning the parent decides.
 */
#include "events.h"

#include "config_int.h"
#include "ratelimit.h"
#include "url.h"

#include <aiqueue/version.h>

#include <fnmatch.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define FETCH_MS      250
#define REVOKED_MAX   50000
#define REVOKED_TTL_S 10800.0
#define NAME_MAX_LEN  256

struct revoked_id {
	char *id;
	double at; /* UNIX seconds it was revoked */
};

struct task_total {
	char *name;
	long long n;
};

/* add_consumer / cancel_consumer, waiting for the consumer thread. */
struct queue_change {
	bool add;
	char *queue, *exchange, *exchange_type, *routing_key; /* NULL: the default */
	struct queue_change *next;
};

/* How a queue added by add_consumer is bound (active_queues shows it);
 * queues without an entry are bound as consume() binds them. */
struct queue_bind {
	char *queue, *exchange, *exchange_type, *routing_key;
};

struct aiq__control {
	aiq__bus *bus;
	pthread_t thread;
	atomic_bool stop;
	bool running;
	pthread_mutex_t lock;       /* guards revoked and totals */
	struct revoked_id *revoked; /* oldest first */
	size_t nrevoked, caprevoked;
	struct task_total *totals;
	size_t ntotals;
	/* Queue changes asked for and not yet applied (oldest first), and the
	 * bindings of added queues; under lock. */
	struct queue_change *changes, *changes_tail;
	atomic_bool changes_pending;
	struct queue_bind *binds;
	size_t nbinds;
};

/* ---- the revoked set and the totals ---------------------------------------- */

static void expire_revoked(struct aiq__control *c, double now)
{
	size_t drop = 0;
	while (drop < c->nrevoked &&
	       (c->nrevoked - drop > REVOKED_MAX || now - c->revoked[drop].at > REVOKED_TTL_S))
		free(c->revoked[drop++].id);
	if (drop) {
		memmove(c->revoked, c->revoked + drop, (c->nrevoked - drop) * sizeof *c->revoked);
		c->nrevoked -= drop;
	}
}

static void add_revoked(struct aiq__control *c, const char *id, double at)
{
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->nrevoked; i++) {
		if (strcmp(c->revoked[i].id, id) == 0) {
			pthread_mutex_unlock(&c->lock);
			return;
		}
	}
	if (c->nrevoked == c->caprevoked) {
		size_t cap = c->caprevoked ? c->caprevoked * 2 : 64;
		struct revoked_id *v = realloc(c->revoked, cap * sizeof *v);
		if (v == NULL) {
			pthread_mutex_unlock(&c->lock);
			return;
		}
		c->revoked = v;
		c->caprevoked = cap;
	}
	char *copy = aiq__strdup(id);
	if (copy) {
		c->revoked[c->nrevoked].id = copy;
		c->revoked[c->nrevoked].at = at;
		c->nrevoked++;
	}
	expire_revoked(c, (double)aiq__now_ms() / 1000.0);
	pthread_mutex_unlock(&c->lock);
}

void aiq__control_note(aiq_worker *w, int event, const char *name)
{
	struct aiq__control *c = w->control;
	if (c == NULL || event != AIQ_EVENT_STARTED || name == NULL)
		return;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->ntotals; i++) {
		if (strcmp(c->totals[i].name, name) == 0) {
			c->totals[i].n++;
			pthread_mutex_unlock(&c->lock);
			return;
		}
	}
	struct task_total *v = realloc(c->totals, (c->ntotals + 1) * sizeof *v);
	if (v) {
		c->totals = v;
		if ((v[c->ntotals].name = aiq__strdup(name))) {
			v[c->ntotals].n = 1;
			c->ntotals++;
		}
	}
	pthread_mutex_unlock(&c->lock);
}

/* ---- request info (active, reserved, scheduled) ----------------------------- */

static json_t *request_info(aiq_worker *w, const aiq_task *t, bool started)
{
	json_t *o = json_object();
	if (o == NULL)
		return NULL;
	json_object_set_new(o, "id", aiq__json_string_lossy(t->msg.id));
	json_object_set_new(o, "name", aiq__json_string_lossy(t->msg.task));
	json_object_set_new(o, "args", json_deep_copy(t->msg.args));
	json_object_set_new(o, "kwargs", json_deep_copy(t->msg.kwargs));
	json_object_set_new(o, "type", aiq__json_string_lossy(t->msg.task));
	json_object_set_new(o, "hostname", aiq__json_string_lossy(w->hostname));
	if (started) {
		int64_t ago = aiq__mono_ms() - t->started_mono;
		json_object_set_new(o, "time_start",
		                    json_real((double)(aiq__now_ms() - ago) / 1000.0));
	} else {
		json_object_set_new(o, "time_start", json_null());
	}
	json_object_set_new(o, "acknowledged", json_false());
	json_object_set_new(o, "delivery_info",
	                    json_pack("{s:s, s:s, s:i, s:b}", "exchange", "", "routing_key",
	                              t->queue ? t->queue : "", "priority", t->msg.priority,
	                              "redelivered", t->delivery && t->delivery->redelivered));
	json_object_set_new(o, "worker_pid",
	                    started ? json_integer((json_int_t)getpid()) : json_null());
	return o;
}

static json_t *list_requests(aiq_worker *w, const struct list *l, bool started, bool scheduled)
{
	json_t *a = json_array();
	if (a == NULL)
		return NULL;
	pthread_mutex_lock(&w->lock);
	for (const aiq_task *t = l->head; t; t = t->next) {
		json_t *info = request_info(w, t, started);
		if (info && scheduled) {
			char eta[AIQ__ISO_BUFSZ];
			aiq__iso8601_format(eta, t->hold_until_ms * 1000, true);
			info = json_pack("{s:s, s:i, s:o}", "eta", eta, "priority", t->msg.priority,
			                 "request", info);
		}
		if (info)
			json_array_append_new(a, info);
	}
	pthread_mutex_unlock(&w->lock);
	return a;
}

/* ---- the commands ------------------------------------------------------------ */

static json_t *ok(const char *text)
{
	return json_pack("{s:o}", "ok", aiq__json_string_lossy(text));
}

static json_t *cmd_stats(aiq_worker *w, struct aiq__control *c)
{
	json_t *total = json_object();
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; total && i < c->ntotals; i++)
		json_object_set_new(total, c->totals[i].name, json_integer(c->totals[i].n));
	pthread_mutex_unlock(&c->lock);
	char clock[32];
	snprintf(clock, sizeof clock, "%lld", (long long)aiq__worker_clock_tick(w));
	struct rusage ru;
	memset(&ru, 0, sizeof ru);
	getrusage(RUSAGE_SELF, &ru);
	json_t *rusage = json_pack(
	        "{s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
	        "utime", (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6, "stime",
	        (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, "maxrss",
	        (json_int_t)ru.ru_maxrss, "ixrss", (json_int_t)ru.ru_ixrss, "idrss",
	        (json_int_t)ru.ru_idrss, "isrss", (json_int_t)ru.ru_isrss, "minflt",
	        (json_int_t)ru.ru_minflt, "majflt", (json_int_t)ru.ru_majflt, "nswap",
	        (json_int_t)ru.ru_nswap, "inblock", (json_int_t)ru.ru_inblock, "oublock",
	        (json_int_t)ru.ru_oublock, "msgsnd", (json_int_t)ru.ru_msgsnd, "msgrcv",
	        (json_int_t)ru.ru_msgrcv, "nsignals", (json_int_t)ru.ru_nsignals, "nvcsw",
	        (json_int_t)ru.ru_nvcsw, "nivcsw", (json_int_t)ru.ru_nivcsw);
	json_t *pool =
	        json_pack("{s:i, s:[I], s:s, s:b, s:[f, f], s:s, s:i}", "max-concurrency",
	                  w->concurrency, "processes", (json_int_t)getpid(), "max-tasks-per-child",
	                  "N/A", "put-guarded-by-semaphore", 0, "timeouts",
	                  (double)w->soft_limit_ms / 1000.0, (double)w->hard_limit_ms / 1000.0,
	                  "implementation", "aiqueue:threads", "threads", w->concurrency);
	const char *burl = aiq__cfg_str(w->cfg, AIQ_CFG_BROKER_URL);
	char *safe = aiq__url_redact(burl);
	json_t *broker = json_pack("{s:s, s:o}", "transport", aiq__broker_name(w->consumer), "url",
	                           aiq__json_string_lossy(safe ? safe : ""));
	free(safe);
	int64_t uptime = (aiq__now_ms() - w->started_at_ms) / 1000;
	return json_pack("{s:o, s:I, s:s, s:I, s:o, s:o, s:I, s:o, s:s}", "total",
	                 total ? total : json_object(), "pid", (json_int_t)getpid(), "clock", clock,
	                 "uptime", (json_int_t)uptime, "pool", pool ? pool : json_object(),
	                 "broker", broker ? broker : json_object(), "prefetch_count",
	                 (json_int_t)w->prefetch, "rusage", rusage ? rusage : json_object(),
	                 "sw_ver", aiq_version_string());
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static json_t *cmd_registered(aiq_worker *w)
{
	/* Sorted, built-in celery.* tasks left out, as Celery does. */
	size_t n = w->nhandlers;
	const char **names = calloc(n ? n : 1, sizeof *names);
	json_t *a = json_array();
	if (names == NULL || a == NULL) {
		free(names);
		json_decref(a);
		return NULL;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(w->handlers[i].name, "celery.", 7) != 0)
			names[k++] = w->handlers[i].name;
	qsort(names, k, sizeof *names, by_name);
	for (size_t i = 0; i < k; i++)
		json_array_append_new(a, aiq__json_string_lossy(names[i]));
	free(names);
	return a;
}

static json_t *cmd_revoked(struct aiq__control *c)
{
	json_t *a = json_array();
	pthread_mutex_lock(&c->lock);
	expire_revoked(c, (double)aiq__now_ms() / 1000.0);
	for (size_t i = 0; a && i < c->nrevoked; i++)
		json_array_append_new(a, json_string(c->revoked[i].id));
	pthread_mutex_unlock(&c->lock);
	return a;
}

static json_t *queue_info(const char *q, const char *exchange, const char *type, const char *rk)
{
	/* kombu's Queue.as_dict(recurse=True), the shape `inspect
	 * active_queues` prints from (name, exchange name/type, routing key). */
	return json_pack("{s:s, s:{s:s, s:s, s:o, s:b, s:b, s:b, s:n, s:b}, s:s, s:n, s:n, s:n, "
	                 "s:b, s:b, s:b, s:b, s:n, s:[], s:b, s:n, s:n, s:n, s:n, s:n}",
	                 "name", q, "exchange", "name", exchange, "type", type, "arguments",
	                 json_null(), "durable", 1, "passive", 0, "auto_delete", 0, "delivery_mode",
	                 "no_declare", 0, "routing_key", rk, "queue_arguments", "binding_arguments",
	                 "consumer_arguments", "durable", 1, "exclusive", 0, "auto_delete", 0,
	                 "no_ack", 0, "alias", "bindings", "no_declare", 0, "expires",
	                 "message_ttl", "max_length", "max_length_bytes", "max_priority");
}

static void bind_clear(struct queue_bind *b)
{
	free(b->queue);
	free(b->exchange);
	free(b->exchange_type);
	free(b->routing_key);
}

static json_t *cmd_active_queues(aiq_worker *w, struct aiq__control *c)
{
	json_t *a = json_array();
	/* The names under the worker's lock (the consumer thread changes
	 * them), then their bindings under the control lock. */
	pthread_mutex_lock(&w->lock);
	json_t *names = json_array();
	for (size_t i = 0; names && i < w->nqueues; i++)
		json_array_append_new(names, json_string(w->queues[i]));
	pthread_mutex_unlock(&w->lock);
	size_t i;
	json_t *v;
	pthread_mutex_lock(&c->lock);
	json_array_foreach(names, i, v)
	{
		const char *q = json_string_value(v);
		const struct queue_bind *b = NULL;
		for (size_t k = 0; q && k < c->nbinds && !b; k++)
			if (strcmp(c->binds[k].queue, q) == 0)
				b = &c->binds[k];
		json_t *info = q ? queue_info(q, b && b->exchange ? b->exchange : q,
		                              b && b->exchange_type ? b->exchange_type : "direct",
		                              b && b->routing_key ? b->routing_key : q)
		                 : NULL;
		if (a && info)
			json_array_append_new(a, info);
		else
			json_decref(info);
	}
	pthread_mutex_unlock(&c->lock);
	json_decref(names);
	return a;
}

/* ---- add_consumer / cancel_consumer ------------------------------------------ */

static void change_free(struct queue_change *ch)
{
	if (ch == NULL)
		return;
	free(ch->queue);
	free(ch->exchange);
	free(ch->exchange_type);
	free(ch->routing_key);
	free(ch);
}

/* A Python repr of a string, as in the error texts kombu sends. */
static void repr_str(char *buf, size_t size, const char *s)
{
	json_t *one = json_array();
	char *r = NULL;
	if (one && json_array_append_new(one, aiq__json_string_lossy(s)) == 0)
		r = aiq__pyrepr_args(one, 200);
	json_decref(one);
	size_t n = r ? strlen(r) : 0;
	if (n >= 3 && strcmp(r + n - 2, ",)") == 0)
		snprintf(buf, size, "%.*s", (int)(n - 3), r + 1);
	else
		snprintf(buf, size, "'?'");
	free(r);
}

/* An optional string argument: NULL when absent, null or ""; false (err
 * set) when it is something else. */
static bool opt_string(const json_t *args, const char *key, const char **out, char *err,
                       size_t errsz)
{
	const json_t *v = json_object_get(args, key);
	*out = NULL;
	if (v == NULL || json_is_null(v))
		return true;
	if (!json_is_string(v)) {
		snprintf(err, errsz, "TypeError('%s must be a string or None')", key);
		return false;
	}
	if (json_string_length(v) > 0)
		*out = json_string_value(v);
	return true;
}

/* Hand the change to the consumer thread, which owns the consuming
 * connection (aiq__control_apply_queues), and wake it. */
static bool post_change(aiq_worker *w, struct aiq__control *c, bool add, const char *queue,
                        const char *exchange, const char *type, const char *rk)
{
	struct queue_change *ch = calloc(1, sizeof *ch);
	if (ch == NULL || !(ch->queue = aiq__strdup(queue)) ||
	    (exchange && !(ch->exchange = aiq__strdup(exchange))) ||
	    (type && !(ch->exchange_type = aiq__strdup(type))) ||
	    (rk && !(ch->routing_key = aiq__strdup(rk)))) {
		change_free(ch);
		return false;
	}
	ch->add = add;
	pthread_mutex_lock(&c->lock);
	if (c->changes_tail)
		c->changes_tail->next = ch;
	else
		c->changes = ch;
	c->changes_tail = ch;
	atomic_store(&c->changes_pending, true);
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_lock(&w->lock);
	if (w->wake_target)
		aiq__broker_wakeup(w->wake_target);
	pthread_cond_signal(&w->consumer_cv);
	pthread_mutex_unlock(&w->lock);
	return true;
}

/* Celery's add_consumer(queue, exchange=None, exchange_type=None,
 * routing_key=None, **options): answered at once, done by the consumer
 * (call_soon in Celery); other options are accepted and not used. */
static json_t *cmd_queue_change(aiq_worker *w, struct aiq__control *c, const char *method,
                                const json_t *args, char *err, size_t errsz)
{
	bool add = strcmp(method, "add_consumer") == 0;
	const json_t *qv = json_object_get(args, "queue");
	if (qv == NULL) {
		snprintf(err, errsz,
		         "TypeError(\"%s() missing 1 required positional argument: 'queue'\")",
		         method);
		return NULL;
	}
	if (!json_is_string(qv) || json_string_length(qv) == 0 ||
	    strlen(json_string_value(qv)) != json_string_length(qv)) {
		snprintf(err, errsz, "TypeError('queue must be a non-empty string')");
		return NULL;
	}
	const char *queue = json_string_value(qv);
	const char *exchange = NULL, *type = NULL, *rk = NULL;
	if (add && (!opt_string(args, "exchange", &exchange, err, errsz) ||
	            !opt_string(args, "exchange_type", &type, err, errsz) ||
	            !opt_string(args, "routing_key", &rk, err, errsz)))
		return NULL;
	if (type && !aiq__exchange_type_known(type)) {
		char r[256];
		repr_str(r, sizeof r, type);
		snprintf(err, errsz,
		         "ValueError(\"unknown exchange type %.260s (direct, topic, fanout or "
		         "headers)\")",
		         r);
		return NULL;
	}
	if (!post_change(w, c, add, queue, exchange, type, rk))
		return NULL; /* MemoryError() */
	char *text = aiq__asprintf(add ? "add consumer %s" : "no longer consuming from %s", queue);
	json_t *r = text ? ok(text) : NULL;
	free(text);
	return r;
}

static bool consumed(aiq_worker *w, const char *queue)
{
	bool found = false;
	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < w->nqueues && !found; i++)
		found = strcmp(w->queues[i], queue) == 0;
	pthread_mutex_unlock(&w->lock);
	return found;
}

static void apply_add(aiq_worker *w, struct aiq__control *c, struct queue_change *ch)
{
	if (consumed(w, ch->queue)) {
		aiq__log(AIQ_LOG_INFO, "control: already consuming from %s", ch->queue);
		return;
	}
	aiq__queue_binding bind = {ch->exchange, ch->exchange_type, ch->routing_key};
	int rc = aiq__broker_add_queue(w->consumer, ch->queue, &bind);
	char *name = rc == AIQ_OK ? aiq__strdup(ch->queue) : NULL;
	if (rc == AIQ_OK && name) {
		pthread_mutex_lock(&w->lock);
		char **v = realloc(w->queues, (w->nqueues + 1) * sizeof *v);
		if (v) {
			w->queues = v;
			v[w->nqueues++] = name;
			name = NULL;
		}
		pthread_mutex_unlock(&w->lock);
	}
	if (rc != AIQ_OK || name) {
		/* Out of memory after the broker took it: the driver consumes
		 * it and the worker's list says so too, or neither does. */
		if (rc == AIQ_OK)
			(void)aiq__broker_cancel_queue(w->consumer, ch->queue);
		free(name);
		aiq__log(AIQ_LOG_WARNING, "control: add_consumer %s failed: %s", ch->queue,
		         rc == AIQ_OK ? "out of memory" : aiq_error_last());
		return;
	}
	aiq__log(AIQ_LOG_INFO, "control: started consuming from %s", ch->queue);
	if (ch->exchange || ch->exchange_type || ch->routing_key) {
		pthread_mutex_lock(&c->lock);
		struct queue_bind *v = realloc(c->binds, (c->nbinds + 1) * sizeof *v);
		if (v) {
			c->binds = v;
			v[c->nbinds] = (struct queue_bind){ch->queue, ch->exchange,
			                                   ch->exchange_type, ch->routing_key};
			c->nbinds++;
			ch->queue = ch->exchange = ch->exchange_type = ch->routing_key = NULL;
		}
		pthread_mutex_unlock(&c->lock);
	}
}

static void apply_cancel(aiq_worker *w, struct aiq__control *c, const struct queue_change *ch)
{
	if (!consumed(w, ch->queue)) {
		aiq__log(AIQ_LOG_INFO, "control: cancel_consumer %s: not consuming from it",
		         ch->queue);
		return;
	}
	int rc = aiq__broker_cancel_queue(w->consumer, ch->queue);
	if (rc != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "control: cancel_consumer %s failed: %s", ch->queue,
		         aiq_error_last());
		return;
	}
	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < w->nqueues; i++) {
		if (strcmp(w->queues[i], ch->queue) == 0) {
			free(w->queues[i]);
			memmove(w->queues + i, w->queues + i + 1,
			        (w->nqueues - i - 1) * sizeof *w->queues);
			w->nqueues--;
			break;
		}
	}
	pthread_mutex_unlock(&w->lock);
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->nbinds; i++) {
		if (strcmp(c->binds[i].queue, ch->queue) == 0) {
			bind_clear(&c->binds[i]);
			c->binds[i] = c->binds[--c->nbinds];
			break;
		}
	}
	pthread_mutex_unlock(&c->lock);
	aiq__log(AIQ_LOG_INFO, "control: no longer consuming from %s", ch->queue);
}

void aiq__control_apply_queues(aiq_worker *w)
{
	struct aiq__control *c = w->control;
	if (c == NULL || !atomic_load(&c->changes_pending))
		return;
	pthread_mutex_lock(&c->lock);
	struct queue_change *list = c->changes;
	c->changes = c->changes_tail = NULL;
	atomic_store(&c->changes_pending, false);
	pthread_mutex_unlock(&c->lock);
	while (list) {
		struct queue_change *next = list->next;
		if (list->add)
			apply_add(w, c, list);
		else
			apply_cancel(w, c, list);
		change_free(list);
		list = next;
	}
}
static json_t *cmd_conf(aiq_worker *w)
{
	char *b = aiq__url_redact(aiq__cfg_str(w->cfg, AIQ_CFG_BROKER_URL));
	char *r = aiq__url_redact(aiq__cfg_str(w->cfg, AIQ_CFG_RESULT_URL));
	json_t *o =
	        json_pack("{s:o, s:o, s:i, s:I, s:s, s:b, s:b, s:f, s:f, s:i, s:s}", "broker_url",
	                  aiq__json_string_lossy(b ? b : ""), "result_backend",
	                  aiq__json_string_lossy(r ? r : ""), "worker_concurrency", w->concurrency,
	                  "worker_prefetch_count", (json_int_t)w->prefetch, "task_default_queue",
	                  aiq__cfg_str(w->cfg, AIQ_CFG_QUEUE), "worker_send_task_events",
	                  w->events != NULL, "task_track_started", w->track_started,
	                  "task_soft_time_limit", (double)w->soft_limit_ms / 1000.0,
	                  "task_time_limit", (double)w->hard_limit_ms / 1000.0, "task_max_retries",
	                  w->max_retries, "worker_implementation", "libaiqueue");
	free(b);
	free(r);
	return o;
}

/* Store REVOKED unless the task is final already (then it stays); true when
 * the store holds REVOKED for it now. */
static bool store_revoked(aiq_worker *w, const char *id)
{
	if (w->store == NULL)
		return false;
	int rc = aiq__outcome_store(w, id, NULL, AIQ_STATE_REVOKED, NULL, "TaskRevokedError",
	                            "revoked", "celery.exceptions", NULL);
	if (rc != AIQ_OK && rc != AIQ_ESTATE)
		aiq__log(AIQ_LOG_WARNING, "control: storing the revocation of %s failed: %s", id,
		         aiq_error_last());
	return rc == AIQ_OK;
}

/* Asks the task to stop when it runs here; `kill` (its REVOKED stored, a
 * process pool) also has its pool process killed. */
static bool running_here(aiq_worker *w, const char *id, bool kill)
{
	bool found = false;
	pthread_mutex_lock(&w->lock);
	for (aiq_task *t = w->running.head; t && !found; t = t->next)
		if (t->msg.id && strcmp(t->msg.id, id) == 0) {
			atomic_store(&t->cancel, AIQ_ECANCELED);
			if (kill)
				atomic_store(&t->terminate, true);
			found = true;
		}
	pthread_mutex_unlock(&w->lock);
	return found;
}

static json_t *cmd_revoke(aiq_worker *w, struct aiq__control *c, const json_t *args, bool terminate,
                          char *err, size_t errsz)
{
	const json_t *ids = json_object_get(args, "task_id");
	json_t *list = json_array();
	if (list == NULL)
		return NULL;
	if (json_is_string(ids)) {
		json_array_append(list, (json_t *)(uintptr_t)ids);
	} else if (json_is_array(ids)) {
		size_t i;
		json_t *v;
		json_array_foreach(ids, i, v)
		{
			if (!json_is_string(v)) {
				json_decref(list);
				snprintf(err, errsz,
				         "TypeError('task_id must be a string or a list of "
				         "strings')");
				return NULL;
			}
			json_array_append(list, v);
		}
	} else {
		json_decref(list);
		snprintf(err, errsz,
		         ids ? "TypeError('task_id must be a string or a list of strings')"
		             : "TypeError(\"revoke() missing 1 required positional argument: "
		               "'task_id'\")");
		return NULL;
	}
	if (json_is_true(json_object_get(args, "terminate")))
		terminate = true;
	char *joined = NULL, *killed = NULL;
	bool processes = w->pool_kind == POOL_PROCESSES, all_killed = true;
	size_t i;
	json_t *v;
	double now = (double)aiq__now_ms() / 1000.0;
	json_array_foreach(list, i, v)
	{
		const char *id = json_string_value(v);
		add_revoked(c, id, now);
		bool stored = store_revoked(w, id);
		char *next = aiq__asprintf("%s%s%s", joined ? joined : "", joined ? ", " : "", id);
		free(joined);
		joined = next;
		if (terminate && running_here(w, id, processes && stored)) {
			all_killed = all_killed && processes && stored;
			next = aiq__asprintf("%s%s%s", killed ? killed : "", killed ? ", " : "",
			                     id);
			free(killed);
			killed = next;
		}
	}
	json_decref(list);
	aiq__log(AIQ_LOG_INFO, "control: tasks flagged as revoked: %s", joined ? joined : "");
	char *text;
	if (terminate && killed && all_killed)
		text = aiq__asprintf("terminate: %s", killed); /* Celery's words */
	else if (terminate && killed)
		text = aiq__asprintf("terminate: %s (%s: asked to stop)", killed,
		                     processes ? "REVOKED not stored" : "handlers run in threads");
	else if (terminate)
		text = aiq__strdup("terminate: tasks unknown");
	else
		text = aiq__asprintf("tasks %s flagged as revoked", joined ? joined : "");
	free(joined);
	free(killed);
	json_t *r = text ? ok(text) : NULL;
	free(text);
	return r;
}

static json_t *cmd_hello(aiq_worker *w, struct aiq__control *c, const json_t *args, bool *none)
{
	const char *from = json_string_value(json_object_get(args, "from_node"));
	if (from && strcmp(from, w->hostname) == 0) {
		*none = true; /* Celery answers its own hello with None */
		return NULL;
	}
	const json_t *theirs = json_object_get(args, "revoked");
	double now = (double)aiq__now_ms() / 1000.0, mono = (double)aiq__mono_ms() / 1000.0;
	if (json_is_object(theirs)) {
		const char *id;
		json_t *at;
		json_object_foreach((json_t *)(uintptr_t)theirs, id, at)
		{
			/* Their times are the sender's time.monotonic(): meaningless
			 * here, so the id counts as revoked from now. */
			(void)at;
			add_revoked(c, id, now);
			store_revoked(w, id);
		}
	}
	/* Celery sends its LimitedSet's _data: id -> [time.monotonic() when
	 * added, id]; a receiver needs the float and expires the id 3 h after
	 * it on its own monotonic clock. */
	json_t *mine = json_object();
	pthread_mutex_lock(&c->lock);
	expire_revoked(c, now);
	for (size_t i = 0; mine && i < c->nrevoked; i++)
		json_object_set_new(
		        mine, c->revoked[i].id,
		        json_pack("[f, s]", mono - (now - c->revoked[i].at), c->revoked[i].id));
	pthread_mutex_unlock(&c->lock);
	return json_pack("{s:o, s:I}", "revoked", mine ? mine : json_object(), "clock",
	                 (json_int_t)aiq__worker_clock_tick(w));
}

/* Celery's rate_limit(task_name, rate_limit): replaces this worker's rule
 * for the task (the buckets stay shared; Celery broadcasts the command to
 * every worker). Celery's replies. */
static json_t *cmd_rate_limit(aiq_worker *w, const json_t *args, char *err, size_t errsz)
{
	const char *name = json_string_value(json_object_get(args, "task_name"));
	const json_t *rv = json_object_get(args, "rate_limit");
	char num[64] = "";
	const char *rate = json_is_string(rv) ? json_string_value(rv) : num;
	if (json_is_number(rv))
		snprintf(num, sizeof num, "%.17g", json_number_value(rv));
	if (name == NULL || aiq__registry_find_handler(w, name) == NULL) {
		snprintf(err, errsz, "unknown task");
		return NULL;
	}
	if (aiq__ratelimit_set(w->ratelimit, name, rate) != AIQ_OK) {
		snprintf(err, errsz, "Invalid rate limit string: ValueError('%.200s')",
		         aiq_error_last());
		return NULL;
	}
	bool off = *rate == '\0' || strcmp(rate, "0") == 0;
	aiq__log(AIQ_LOG_INFO, "control: rate limit of %s %s%s", name, off ? "removed" : "now ",
	         off ? "" : rate);
	return ok(off ? "rate limit disabled successfully" : "new rate limit set successfully");
}

/* The value of one command; NULL with err[] set for an error, NULL with
 * *none for a None reply. */
static json_t *dispatch(aiq_worker *w, struct aiq__control *c, const char *method,
                        const json_t *args, bool *shutdown, bool *none, char *err, size_t errsz)
{
	if (strcmp(method, "ping") == 0)
		return ok("pong");
	if (strcmp(method, "stats") == 0)
		return cmd_stats(w, c);
	if (strcmp(method, "active") == 0)
		return list_requests(w, &w->running, true, false);
	if (strcmp(method, "reserved") == 0)
		return list_requests(w, &w->ready, false, false);
	if (strcmp(method, "scheduled") == 0)
		return list_requests(w, &w->held, false, true);
	if (strcmp(method, "registered") == 0)
		return cmd_registered(w);
	if (strcmp(method, "revoked") == 0)
		return cmd_revoked(c);
	if (strcmp(method, "active_queues") == 0)
		return cmd_active_queues(w, c);
	if (strcmp(method, "conf") == 0)
		return cmd_conf(w);
	if (strcmp(method, "clock") == 0)
		return json_pack("{s:I}", "clock", (json_int_t)aiq__worker_clock_tick(w));
	if (strcmp(method, "hello") == 0)
		return cmd_hello(w, c, args, none);
	if (strcmp(method, "heartbeat") == 0) {
		aiq__events_heartbeat_now(w);
		*none = true;
		return NULL;
	}
	if (strcmp(method, "revoke") == 0 || strcmp(method, "terminate") == 0)
		return cmd_revoke(w, c, args, strcmp(method, "terminate") == 0, err, errsz);
	if (strcmp(method, "add_consumer") == 0 || strcmp(method, "cancel_consumer") == 0)
		return cmd_queue_change(w, c, method, args, err, errsz);
	if (strcmp(method, "rate_limit") == 0)
		return cmd_rate_limit(w, args, err, errsz);
	if (strcmp(method, "shutdown") == 0) {
		aiq__log(AIQ_LOG_WARNING, "control: got shutdown from remote");
		*shutdown = true;
		return NULL;
	}
	json_t *one = json_array();
	char *r = NULL;
	if (one && json_array_append_new(one, aiq__json_string_lossy(method)) == 0)
		r = aiq__pyrepr_args(one, 200);
	json_decref(one);
	/* kombu: self.handlers[method] raised KeyError */
	size_t n = r ? strlen(r) : 0;
	if (n >= 3 && strcmp(r + n - 2, ",)") == 0)
		snprintf(err, errsz, "KeyError%.*s)", (int)(n - 2), r);
	else
		snprintf(err, errsz, "KeyError('%.200s')", method);
	free(r);
	return NULL;
}

/* ---- destination filtering --------------------------------------------------- */

static bool for_me(const char *node, const json_t *req)
{
	const json_t *dest = json_object_get(req, "destination");
	bool dest_given = (json_is_array(dest) && json_array_size(dest) > 0) ||
	                  (json_is_string(dest) && json_string_length(dest) > 0);
	if (dest_given) {
		if (json_is_string(dest))
			return strstr(json_string_value(dest), node) != NULL; /* Python `in` */
		size_t i;
		json_t *v;
		json_array_foreach(dest, i, v)
		{
			if (json_is_string(v) && strcmp(json_string_value(v), node) == 0)
				return true;
		}
		return false;
	}
	const char *pattern = json_string_value(json_object_get(req, "pattern"));
	const char *matcher = json_string_value(json_object_get(req, "matcher"));
	if (pattern && *pattern && matcher && *matcher) {
		if (strcmp(matcher, "glob") == 0)
			return fnmatch(pattern, node, 0) == 0;
		if (strcmp(matcher, "pcre") == 0) {
			regex_t re;
			if (regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0)
				return false;
			regmatch_t m;
			bool hit = regexec(&re, node, 1, &m, 0) == 0;
			regfree(&re);
			if (!hit)
				return false;
			/* re.match: anchored at the start */
			regex_t anchored;
			char *a = aiq__asprintf("^(%s)", pattern);
			hit = a && regcomp(&anchored, a, REG_EXTENDED | REG_NOSUB) == 0;
			if (hit) {
				hit = regexec(&anchored, node, 0, NULL, 0) == 0;
				regfree(&anchored);
			}
			free(a);
			return hit;
		}
		return false; /* kombu raises MatcherNotInstalled: nothing runs */
	}
	return true;
}

void aiq__control_reply_clear(aiq__control_reply *r)
{
	free(r->body);
	free(r->exchange);
	free(r->routing_key);
	free(r->ticket);
	memset(r, 0, sizeof *r);
}

bool aiq__control_handle(aiq_worker *w, const char *request, aiq__control_reply *reply,
                         bool *shutdown)
{
	memset(reply, 0, sizeof *reply);
	*shutdown = false;
	struct aiq__control *c = w->control;
	json_error_t jerr;
	json_t *req = json_loads(request, 0, &jerr);
	const char *method = json_string_value(json_object_get(req, "method"));
	if (c == NULL || !json_is_object(req) || method == NULL) {
		aiq__log(AIQ_LOG_WARNING, "control: ignoring a request that is not a pidbox "
		                          "request");
		json_decref(req);
		return false;
	}
	if (!for_me(w->hostname, req)) {
		json_decref(req);
		return false;
	}
	const json_t *args = json_object_get(req, "arguments");
	json_t *empty = json_object();
	if (!json_is_object(args))
		args = empty;
	bool none = false;
	char err[400] = "";
	json_t *value = dispatch(w, c, method, args, shutdown, &none, err, sizeof err);
	if (value == NULL && !none && !*shutdown)
		value = json_pack("{s:s}", "error", err[0] ? err : "MemoryError()");
	const json_t *to = json_object_get(req, "reply_to");
	const char *ex = json_string_value(json_object_get(to, "exchange"));
	const char *rk = json_string_value(json_object_get(to, "routing_key"));
	const char *ticket = json_string_value(json_object_get(req, "ticket"));
	if (!*shutdown && ex && rk) {
		json_t *body = json_object();
		if (body &&
		    json_object_set_new(body, w->hostname, value ? value : json_null()) == 0) {
			value = NULL;
			reply->body = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(17));
			reply->exchange = aiq__strdup(ex);
			reply->routing_key = aiq__strdup(rk);
			reply->ticket = ticket ? aiq__strdup(ticket) : NULL;
		}
		json_decref(body);
	}
	json_decref(value);
	json_decref(empty);
	json_decref(req);
	return true;
}

/* ---- the thread ---------------------------------------------------------------- */

static void *control_main(void *arg)
{
	aiq_worker *w = arg;
	struct aiq__control *c = w->control;
	while (!atomic_load(&c->stop)) {
		char *body = NULL;
		int64_t their_clock = 0;
		int rc = aiq__bus_fetch(c->bus, &body, &their_clock, FETCH_MS);
		if (rc != AIQ_OK) {
			if (rc != AIQ_ETIMEDOUT)
				aiq__log(AIQ_LOG_WARNING, "control: %s", aiq_error_last());
			continue;
		}
		aiq__worker_clock_adjust(w, their_clock);
		aiq__control_reply reply;
		bool shutdown = false;
		aiq__control_handle(w, body, &reply, &shutdown);
		free(body);
		if (reply.body && aiq__bus_reply(c->bus, reply.exchange, reply.routing_key,
		                                 reply.body, strlen(reply.body), reply.ticket,
		                                 aiq__worker_clock_tick(w)) != AIQ_OK)
			aiq__log(AIQ_LOG_WARNING, "control: reply not sent: %s", aiq_error_last());
		aiq__control_reply_clear(&reply);
		if (shutdown)
			aiq_worker_stop(w);
	}
	return NULL;
}

int aiq__control_init(aiq_worker *w)
{
	if (w->control)
		return AIQ_OK;
	struct aiq__control *c = calloc(1, sizeof *c);
	if (c == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	pthread_mutex_init(&c->lock, NULL);
	atomic_init(&c->stop, false);
	atomic_init(&c->changes_pending, false);
	w->control = c;
	return AIQ_OK;
}

void aiq__control_start(aiq_worker *w)
{
	if (!aiq__cfg_bool(w->cfg, AIQ_CFG_WORKER_REMOTE_CONTROL))
		return;
	aiq__bus *bus = NULL;
	int rc = aiq__bus_open(&bus, aiq__cfg_str(w->cfg, AIQ_CFG_BROKER_URL), w->cfg);
	if (rc == AIQ_OK)
		rc = aiq__bus_listen(bus, w->hostname);
	if (rc == AIQ_OK)
		rc = aiq__control_init(w);
	if (rc != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "control: no remote control: %s", aiq_error_last());
		aiq__bus_close(bus);
		return;
	}
	struct aiq__control *c = w->control;
	c->bus = bus;
	atomic_store(&c->stop, false);
	if (pthread_create(&c->thread, NULL, control_main, w) != 0) {
		aiq__log(AIQ_LOG_WARNING, "control: cannot start the control thread");
		aiq__bus_close(bus);
		c->bus = NULL;
		return;
	}
	c->running = true;
	aiq__log(AIQ_LOG_INFO, "control: answering remote control as %s", w->hostname);
}

void aiq__control_stop(aiq_worker *w)
{
	struct aiq__control *c = w->control;
	if (c == NULL || !c->running)
		return;
	atomic_store(&c->stop, true);
	pthread_join(c->thread, NULL);
	c->running = false;
	aiq__bus_close(c->bus);
	c->bus = NULL;
}

void aiq__control_free(aiq_worker *w)
{
	struct aiq__control *c = w->control;
	if (c == NULL)
		return;
	aiq__control_stop(w);
	for (size_t i = 0; i < c->nrevoked; i++)
		free(c->revoked[i].id);
	free(c->revoked);
	for (size_t i = 0; i < c->ntotals; i++)
		free(c->totals[i].name);
	free(c->totals);
	while (c->changes) {
		struct queue_change *next = c->changes->next;
		change_free(c->changes);
		c->changes = next;
	}
	for (size_t i = 0; i < c->nbinds; i++)
		bind_clear(&c->binds[i]);
	free(c->binds);
	pthread_mutex_destroy(&c->lock);
	free(c);
	w->control = NULL;
}
