/*
 * Celery events from a worker (worker.send_events, aiqueue-worker -E), as
 * Celery 5.2 sends them: worker-online, worker-heartbeat every 2 s,
 * worker-offline, and task-received / started / succeeded / failed /
 * retried / revoked / rejected, each a single JSON object on the routing
 * key "<group>.<kind>" ("task.succeeded"). Receivers dispatch on "type" and
 * read the fields Celery writes, in Celery's key order (events.h).
 *
 * The emitting threads (consumer, pool) only encode and queue; the events
 * thread publishes the queue and the heartbeats on its own bus connection,
 * so neither a busy pool nor a blocked consumer can delay a heartbeat, and
 * a slow broker never delays a task. The queue is bounded: when the broker
 * is away, events beyond EVENT_QUEUE_MAX are dropped and counted (events
 * are not durable in Celery either).
 */
#include "events.h"

#include "config_int.h"

#include <aiqueue/version.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define HEARTBEAT_MS    2000
#define EVENT_QUEUE_MAX 10000
#define REPR_MAX        1024 /* Celery's resultrepr_maxsize */

struct queued_event {
	char *routing_key;
	char *body;
	struct queued_event *next;
};

struct aiq__events {
	aiq__bus *bus;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct queued_event *head, *tail;
	size_t n;
	size_t dropped;
	bool stop, beat_now;
	bool running; /* the thread runs: enqueue() takes events */
	char sw_sys[65];
};

/* ---- encoding ------------------------------------------------------------- */

const char *aiq__event_type_name(int event)
{
	switch (event) {
	case AIQ_EVENT_RECEIVED: return "task-received";
	case AIQ_EVENT_STARTED: return "task-started";
	case AIQ_EVENT_SUCCEEDED: return "task-succeeded";
	case AIQ_EVENT_FAILED: return "task-failed";
	case AIQ_EVENT_RETRIED: return "task-retried";
	case AIQ_EVENT_REVOKED: return "task-revoked";
	case AIQ_EVENT_REJECTED: return "task-rejected";
	default: return NULL;
	}
}

int aiq__event_utcoffset(void)
{
	time_t now = time(NULL);
	struct tm tm;
	if (localtime_r(&now, &tm) == NULL)
		return 0;
	/* Python's time.timezone // 3600: seconds west, floor division. */
	long west = -tm.tm_gmtoff;
	return (int)(west >= 0 ? west / 3600 : -((-west + 3599) / 3600));
}

static json_t *str_or_null(const char *s)
{
	return s ? aiq__json_string_lossy(s) : json_null();
}

static json_t *iso_or_null(int64_t us)
{
	if (us == 0)
		return json_null();
	char buf[AIQ__ISO_BUFSZ];
	aiq__iso8601_format(buf, us, true);
	return json_string(buf);
}

static json_t *head_object(const aiq__event_head *h)
{
	json_t *o = json_object();
	if (o == NULL)
		return NULL;
	if (json_object_set_new(o, "hostname", aiq__json_string_lossy(h->hostname)) ||
	    json_object_set_new(o, "utcoffset", json_integer(h->utcoffset)) ||
	    json_object_set_new(o, "pid", json_integer(h->pid)) ||
	    json_object_set_new(o, "clock", json_integer(h->clock))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static char *finish(json_t *o, const aiq__event_head *h, const char *type, bool failed)
{
	char *text = NULL;
	if (!failed && json_object_set_new(o, "timestamp", json_real(h->timestamp)) == 0 &&
	    json_object_set_new(o, "type", json_string(type)) == 0)
		text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
	json_decref(o);
	return text;
}

char *aiq__event_encode_worker(const aiq__event_head *h, const char *type,
                               const aiq__event_worker *f)
{
	json_t *o = head_object(h);
	if (o == NULL)
		return NULL;
	json_t *load = json_array();
	for (int i = 0; load && i < 3; i++)
		json_array_append_new(load, json_real(round(f->loadavg[i] * 100.0) / 100.0));
	bool bad = load == NULL || json_object_set_new(o, "freq", json_real(f->freq)) ||
	           json_object_set_new(o, "active", json_integer(f->active)) ||
	           json_object_set_new(o, "processed", json_integer(f->processed)) ||
	           json_object_set_new(o, "loadavg", load) ||
	           json_object_set_new(o, "sw_ident", json_string("libaiqueue")) ||
	           json_object_set_new(o, "sw_ver", aiq__json_string_lossy(f->sw_ver)) ||
	           json_object_set_new(o, "sw_sys", aiq__json_string_lossy(f->sw_sys));
	return finish(o, h, type, bad);
}

char *aiq__event_encode_task(const aiq__event_head *h, int event, const aiq__event_task *f)
{
	const char *type = aiq__event_type_name(event);
	if (type == NULL)
		return NULL;
	json_t *o = head_object(h);
	if (o == NULL)
		return NULL;
	bool bad = json_object_set_new(o, "uuid", str_or_null(f->uuid)) != 0;
	switch (event) {
	case AIQ_EVENT_RECEIVED:
		bad = bad || json_object_set_new(o, "name", str_or_null(f->name)) ||
		      json_object_set_new(o, "args", str_or_null(f->args ? f->args : "()")) ||
		      json_object_set_new(o, "kwargs", str_or_null(f->kwargs ? f->kwargs : "{}")) ||
		      json_object_set_new(o, "root_id", str_or_null(f->root_id)) ||
		      json_object_set_new(o, "parent_id", str_or_null(f->parent_id)) ||
		      json_object_set_new(o, "retries", json_integer(f->retries)) ||
		      json_object_set_new(o, "eta", iso_or_null(f->eta_us)) ||
		      json_object_set_new(o, "expires", iso_or_null(f->expires_us));
		break;
	case AIQ_EVENT_SUCCEEDED:
		bad = bad ||
		      json_object_set_new(o, "result",
		                          str_or_null(f->result ? f->result : "None")) ||
		      json_object_set_new(o, "runtime", json_real(f->runtime));
		break;
	case AIQ_EVENT_FAILED:
	case AIQ_EVENT_RETRIED:
		bad = bad || json_object_set_new(o, "exception", str_or_null(f->exception)) ||
		      json_object_set_new(o, "traceback",
		                          str_or_null(f->traceback ? f->traceback : ""));
		break;
	case AIQ_EVENT_REVOKED:
		bad = bad || json_object_set_new(o, "terminated", json_boolean(f->terminated)) ||
		      json_object_set_new(o, "signum",
		                          f->terminated ? json_integer(f->signum) : json_null()) ||
		      json_object_set_new(o, "expired", json_boolean(f->expired));
		break;
	case AIQ_EVENT_REJECTED:
		bad = bad || json_object_set_new(o, "requeue", json_boolean(f->requeue));
		break;
	default: break;
	}
	return finish(o, h, type, bad);
}

char *aiq__event_encode_sent(const aiq__event_head *h, const aiq__event_sent *f)
{
	json_t *o = head_object(h);
	if (o == NULL)
		return NULL;
	bool bad =
	        json_object_set_new(o, "uuid", str_or_null(f->uuid)) ||
	        json_object_set_new(o, "root_id", str_or_null(f->root_id)) ||
	        json_object_set_new(o, "parent_id", str_or_null(f->parent_id)) ||
	        json_object_set_new(o, "name", str_or_null(f->name)) ||
	        json_object_set_new(o, "args", str_or_null(f->args ? f->args : "()")) ||
	        json_object_set_new(o, "kwargs", str_or_null(f->kwargs ? f->kwargs : "{}")) ||
	        json_object_set_new(o, "retries", json_integer(f->retries)) ||
	        json_object_set_new(o, "eta", iso_or_null(f->eta_us)) ||
	        json_object_set_new(o, "expires", iso_or_null(f->expires_us)) ||
	        json_object_set_new(o, "queue", str_or_null(f->queue)) ||
	        json_object_set_new(o, "exchange", str_or_null(f->exchange ? f->exchange : "")) ||
	        json_object_set_new(o, "routing_key", str_or_null(f->routing_key));
	return finish(o, h, "task-sent", bad);
}

/* repr(v) as the inside of repr((v,)): "(X,)" -> "X". */
char *aiq__event_repr_value(const char *json_text, size_t max)
{
	json_t *v = json_loads(json_text ? json_text : "null", JSON_DECODE_ANY, NULL);
	json_t *one = v ? json_pack("[o]", v) : NULL;
	if (one == NULL)
		return aiq__strdup(json_text ? json_text : "None");
	char *tuple = aiq__pyrepr_args(one, max + 3);
	json_decref(one);
	if (tuple == NULL)
		return NULL;
	size_t n = strlen(tuple);
	if (n >= 3 && tuple[0] == '(' && strcmp(tuple + n - 2, ",)") == 0) {
		memmove(tuple, tuple + 1, n - 3);
		tuple[n - 3] = '\0';
	} else if (n >= 1 && tuple[0] == '(') {
		memmove(tuple, tuple + 1, n);
	}
	return tuple;
}

/* "ExcType('message')", the repr Celery sends. */
static char *exception_repr(const char *type, const char *message)
{
	json_t *one = json_array();
	if (one)
		json_array_append_new(one, aiq__json_string_lossy(message ? message : ""));
	char *tuple = one ? aiq__pyrepr_args(one, REPR_MAX) : NULL;
	json_decref(one);
	if (tuple == NULL)
		return NULL;
	size_t n = strlen(tuple);
	if (n >= 3 && strcmp(tuple + n - 2, ",)") == 0)
		tuple[n - 2] = '\0'; /* "('message'" */
	char *s = aiq__asprintf("%s%s)", type && *type ? type : "Exception", tuple);
	free(tuple);
	return s;
}

/* ---- the Lamport clock and counters ---------------------------------------- */

int64_t aiq__worker_clock_tick(aiq_worker *w)
{
	return atomic_fetch_add(&w->lamport, 1) + 1;
}

int64_t aiq__worker_clock_adjust(aiq_worker *w, int64_t theirs)
{
	long long cur = atomic_load(&w->lamport);
	for (;;) {
		long long next = (theirs > cur ? theirs : cur) + 1;
		if (atomic_compare_exchange_weak(&w->lamport, &cur, next))
			return next;
	}
}

long aiq__worker_processed(aiq_worker *w)
{
	return (long)(atomic_load(&w->counters[CNT_SUCCEEDED]) +
	              atomic_load(&w->counters[CNT_FAILED]) +
	              atomic_load(&w->counters[CNT_RETRIED]) +
	              atomic_load(&w->counters[CNT_REVOKED]));
}

static aiq__event_head make_head(aiq_worker *w)
{
	aiq__event_head h = {
	        .hostname = w->hostname,
	        .utcoffset = aiq__event_utcoffset(),
	        .pid = (long)getpid(),
	        .clock = aiq__worker_clock_tick(w),
	        .timestamp = (double)aiq__now_us() / 1e6,
	};
	return h;
}

/* ---- the queue ------------------------------------------------------------- */

static void routing_key_of(char *out, size_t size, const char *type)
{
	snprintf(out, size, "%s", type);
	for (char *p = out; *p; p++)
		if (*p == '-')
			*p = '.';
}

static void enqueue(struct aiq__events *ev, const char *type, char *body)
{
	if (body == NULL)
		return;
	char rk[64];
	routing_key_of(rk, sizeof rk, type);
	struct queued_event *q = calloc(1, sizeof *q);
	if (q == NULL || !(q->routing_key = aiq__strdup(rk))) {
		free(q);
		free(body);
		return;
	}
	q->body = body;
	pthread_mutex_lock(&ev->lock);
	if (!ev->running || ev->n >= EVENT_QUEUE_MAX) {
		ev->dropped++;
		pthread_mutex_unlock(&ev->lock);
		free(q->routing_key);
		free(q);
		free(body);
		return;
	}
	if (ev->tail)
		ev->tail->next = q;
	else
		ev->head = q;
	ev->tail = q;
	ev->n++;
	pthread_cond_signal(&ev->cv);
	pthread_mutex_unlock(&ev->lock);
}

static char *worker_event(aiq_worker *w, const char *type)
{
	struct aiq__events *ev = w->events;
	aiq__event_worker f = {
	        .freq = HEARTBEAT_MS / 1000.0,
	        .active = (long)atomic_load(&w->counters[CNT_RUNNING]),
	        .processed = aiq__worker_processed(w),
	        .sw_ver = aiq_version_string(),
	        .sw_sys = ev->sw_sys,
	};
	if (getloadavg(f.loadavg, 3) != 3)
		f.loadavg[0] = f.loadavg[1] = f.loadavg[2] = 0;
	aiq__event_head h = make_head(w);
	return aiq__event_encode_worker(&h, type, &f);
}

void aiq__events_task(aiq_worker *w, int event, const aiq_task *t, const char *id, const char *name,
                      const char *exc_type, const char *detail)
{
	struct aiq__events *ev = w->events;
	if (ev == NULL || aiq__event_type_name(event) == NULL)
		return;
	aiq__event_task f = {.uuid = id, .name = name};
	char *args = NULL, *kwargs = NULL, *result = NULL, *exc = NULL;
	const aiq__message *m = t ? &t->msg : NULL;
	switch (event) {
	case AIQ_EVENT_RECEIVED:
		if (m) {
			f.args = m->argsrepr ? m->argsrepr
			                     : (args = aiq__pyrepr_args(m->args, REPR_MAX));
			f.kwargs = m->kwargsrepr
			                   ? m->kwargsrepr
			                   : (kwargs = aiq__pyrepr_kwargs(m->kwargs, REPR_MAX));
			f.root_id = m->root_id;
			f.parent_id = m->parent_id;
			f.retries = m->retries;
			f.eta_us = m->eta_us;
			f.expires_us = m->expires_us;
		}
		break;
	case AIQ_EVENT_SUCCEEDED:
		f.result = result = aiq__event_repr_value(t ? t->result_json : NULL, REPR_MAX);
		if (t && t->started_mono)
			f.runtime = (double)(aiq__mono_ms() - t->started_mono) / 1000.0;
		break;
	case AIQ_EVENT_FAILED:
	case AIQ_EVENT_RETRIED:
		f.exception = exc =
		        exception_repr(exc_type ? exc_type : (t ? t->exc_type : NULL), detail);
		f.traceback = t ? t->traceback : NULL;
		break;
	case AIQ_EVENT_REVOKED:
		f.expired = detail && strcmp(detail, "expired") == 0;
		f.terminated = detail && strcmp(detail, "terminated") == 0;
		f.signum = SIGKILL; /* what the process pool sends (pool_process.c) */
		break;
	default: break;
	}
	aiq__event_head h = make_head(w);
	enqueue(ev, aiq__event_type_name(event), aiq__event_encode_task(&h, event, &f));
	free(args);
	free(kwargs);
	free(result);
	free(exc);
}

void aiq__events_heartbeat_now(aiq_worker *w)
{
	struct aiq__events *ev = w->events;
	if (ev == NULL)
		return;
	pthread_mutex_lock(&ev->lock);
	ev->beat_now = true;
	pthread_cond_signal(&ev->cv);
	pthread_mutex_unlock(&ev->lock);
}

/* ---- the thread ------------------------------------------------------------ */

static int send_one(aiq_worker *w, const char *rk, const char *body)
{
	struct aiq__events *ev = w->events;
	int rc = aiq__bus_publish_event(ev->bus, rk, body, strlen(body), w->hostname);
	if (rc != AIQ_OK)
		aiq__log(AIQ_LOG_DEBUG, "events: %s not sent: %s", rk, aiq_error_last());
	return rc;
}

static void send_worker_event(aiq_worker *w, const char *type)
{
	char *body = worker_event(w, type);
	if (body == NULL)
		return;
	char rk[64];
	routing_key_of(rk, sizeof rk, type);
	/* The heartbeat age (AIQ_COUNTER_LAST_HEARTBEAT_MS) counts from the
	 * last beat the broker took: a worker whose events connection is down
	 * ages, as Flower sees it. */
	if (send_one(w, rk, body) == AIQ_OK && strcmp(type, "worker-offline") != 0)
		atomic_store(&w->counters[CNT_LAST_BEAT_MS], aiq__now_ms());
	free(body);
}

/* Publish everything queued. Lock held on entry and exit. */
static void drain(aiq_worker *w)
{
	struct aiq__events *ev = w->events;
	while (ev->head) {
		struct queued_event *q = ev->head;
		ev->head = q->next;
		if (ev->head == NULL)
			ev->tail = NULL;
		ev->n--;
		pthread_mutex_unlock(&ev->lock);
		send_one(w, q->routing_key, q->body);
		free(q->routing_key);
		free(q->body);
		free(q);
		pthread_mutex_lock(&ev->lock);
	}
	if (ev->dropped && ev->running) {
		aiq__log(AIQ_LOG_WARNING, "events: %zu events dropped (the queue was full)",
		         ev->dropped);
		ev->dropped = 0;
	}
}

static void *events_main(void *arg)
{
	aiq_worker *w = arg;
	struct aiq__events *ev = w->events;
	int64_t next_beat = aiq__mono_ms() + HEARTBEAT_MS;
	pthread_mutex_lock(&ev->lock);
	for (;;) {
		drain(w);
		if (ev->stop)
			break;
		int64_t now = aiq__mono_ms();
		if (now >= next_beat || ev->beat_now) {
			bool due = now >= next_beat;
			ev->beat_now = false;
			pthread_mutex_unlock(&ev->lock);
			send_worker_event(w, "worker-heartbeat");
			pthread_mutex_lock(&ev->lock);
			/* Fixed rate, not fixed delay: a slow publish never stretches
			 * the period past freq, and a beat on request (the
			 * `heartbeat` command) does not move the schedule. */
			if (due) {
				next_beat += HEARTBEAT_MS;
				if (next_beat <= now)
					next_beat = now + HEARTBEAT_MS;
			}
			continue;
		}
		if (ev->head == NULL) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			int64_t ms = next_beat - now;
			ts.tv_sec += (time_t)(ms / 1000);
			ts.tv_nsec += (long)(ms % 1000) * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&ev->cv, &ev->lock, &ts);
		}
	}
	pthread_mutex_unlock(&ev->lock);
	send_worker_event(w, "worker-offline");
	return NULL;
}

void aiq__events_start(aiq_worker *w)
{
	if (!aiq__cfg_bool(w->cfg, AIQ_CFG_WORKER_SEND_EVENTS))
		return;
	const char *url = aiq__cfg_str(w->cfg, AIQ_CFG_BROKER_URL);
	aiq__bus *bus = NULL;
	int rc = aiq__bus_open(&bus, url, w->cfg);
	if (rc != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "events: not sending Celery events: %s",
		         aiq_error_last());
		return;
	}
	struct aiq__events *ev = w->events;
	if (ev == NULL) {
		/* Kept until aiq_worker_free(): after an abort, handlers still
		 * running may emit (their events are then dropped). */
		if (!(ev = calloc(1, sizeof *ev))) {
			aiq__bus_close(bus);
			return;
		}
		pthread_mutex_init(&ev->lock, NULL);
		pthread_cond_init(&ev->cv, NULL);
		struct utsname u;
		snprintf(ev->sw_sys, sizeof ev->sw_sys, "%s", uname(&u) == 0 ? u.sysname : "Linux");
		w->events = ev;
	}
	ev->bus = bus;
	ev->stop = false;
	send_worker_event(w, "worker-online");
	pthread_mutex_lock(&ev->lock);
	ev->running = true;
	pthread_mutex_unlock(&ev->lock);
	if (pthread_create(&ev->thread, NULL, events_main, w) != 0) {
		aiq__log(AIQ_LOG_WARNING, "events: cannot start the events thread");
		pthread_mutex_lock(&ev->lock);
		ev->running = false;
		pthread_mutex_unlock(&ev->lock);
		aiq__bus_close(bus);
		ev->bus = NULL;
		return;
	}
	aiq__log(AIQ_LOG_INFO, "events: sending Celery events as %s", w->hostname);
}

static void free_queue(struct aiq__events *ev)
{
	struct queued_event *q = ev->head;
	while (q) {
		struct queued_event *nx = q->next;
		free(q->routing_key);
		free(q->body);
		free(q);
		q = nx;
	}
	ev->head = ev->tail = NULL;
	ev->n = 0;
}

void aiq__events_stop(aiq_worker *w)
{
	struct aiq__events *ev = w->events;
	if (ev == NULL || ev->bus == NULL)
		return;
	pthread_mutex_lock(&ev->lock);
	ev->stop = true;
	pthread_cond_signal(&ev->cv);
	pthread_mutex_unlock(&ev->lock);
	pthread_join(ev->thread, NULL);
	pthread_mutex_lock(&ev->lock);
	ev->running = false;
	free_queue(ev);
	pthread_mutex_unlock(&ev->lock);
	aiq__bus_close(ev->bus);
	ev->bus = NULL;
}

void aiq__events_free(aiq_worker *w)
{
	struct aiq__events *ev = w->events;
	if (ev == NULL)
		return;
	aiq__events_stop(w);
	free_queue(ev);
	pthread_mutex_destroy(&ev->lock);
	pthread_cond_destroy(&ev->cv);
	free(ev);
	w->events = NULL;
}
