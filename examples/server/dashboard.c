/*
 * The dashboard's data: the tasks sent through this server (and those the
 * embedded worker reports), the dead letters the embedded worker reported,
 * queue depths and a throughput series, gathered into one JSON snapshot
 * that GET /dashboard/state answers and /dashboard/stream pushes (http.c).
 *
 * Two feeds. The poll: every DASH_TICK_MS the ticker (http.c) calls
 * dash_refresh(), which reads the state of each unfinished task from the
 * result store and the depth of the queue and its dead-letter queue from
 * the broker. And, when the broker carries them, Celery events (evrecv.c
 * calls dash_celery_event()): every worker seen through worker-online /
 * heartbeat / offline, Python Celery workers included, and the tasks any
 * worker reports (task-sent / received / started / succeeded / ...). The
 * poll stays the fallback: without events the page shows what it did
 * before. No MHD calls here: the fuzzer links this file.
 */
#include "server.h"

#include "../common/progutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DASH_TASKS    100  /* tasks kept, newest first; older ones drop off */
#define DASH_SERIES   60   /* seconds of throughput */
#define DASH_TEXT_MAX 4096 /* a longer result or error is cut in the snapshot */
#define DASH_PEERS    64   /* workers seen through events */
#define DASH_HOST_MAX 256

struct dash_task {
	char id[160];
	char *name, *args, *kwargs; /* args and kwargs as sent: JSON text or NULL */
	int64_t enqueued_ms, started_ms, done_ms;
	int retries;
	char state[24];
	char *result; /* JSON text: return value, progress meta, worker info */
	char *error;  /* "Type: message" */
	int final;    /* the store holds a final state */
	int dead;     /* the worker dead-lettered it */
	char *reason; /* why */
	int64_t dead_ms;
	int evented;                /* its state came from a Celery event */
	char worker[DASH_HOST_MAX]; /* hostname of the worker that reported it ("" = none) */
};

/* A worker seen through Celery events. Times are this server's clock at
 * receipt (as Flower's local_received), so clock skew does not matter. */
struct dash_peer {
	char hostname[DASH_HOST_MAX];
	char sw_ident[64], sw_ver[64];
	double freq;      /* seconds between heartbeats, as the worker says */
	int64_t beat_ms;  /* last worker-online / heartbeat */
	int64_t event_ms; /* last event of any kind */
	int offline;      /* worker-offline seen since the last beat */
	int64_t active, processed, pid;
	int have_counts; /* active/processed came in a heartbeat */
	uint64_t succeeded, failed, retried, revoked, rejected; /* its task events */
};

struct dashboard {
	pthread_mutex_t lock;
	struct dash_task *tasks[DASH_TASKS]; /* [0] newest */
	size_t ntasks;
	uint64_t finished;            /* tasks seen reaching a final state */
	uint64_t series[DASH_SERIES]; /* finished per second, [last] = this second */
	int64_t series_sec;           /* the UNIX second of series[DASH_SERIES - 1] */
	int64_t worker_seen_ms;       /* last sample of the embedded worker */
	int64_t worker_event_ms;      /* its last event */
	char *queue;                  /* the queue tasks go to */
	json_t *queues;               /* their depths at the last refresh */
	char *snapshot;               /* JSON text */
	size_t snapshot_len;
	uint64_t generation;
	int64_t refreshed_ms; /* monotonic time of the last dash_refresh() */
	struct dash_peer *peers[DASH_PEERS];
	size_t npeers;
};

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void task_free(struct dash_task *t)
{
	if (t == NULL)
		return;
	free(t->name);
	free(t->args);
	free(t->kwargs);
	free(t->result);
	free(t->error);
	free(t->reason);
	free(t);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void replace(char **slot, const char *s)
{
	char *n = dup_or_null(s);
	free(*slot);
	*slot = n;
}

int dash_new(struct server *srv)
{
	struct dashboard *d = calloc(1, sizeof *d);
	if (d == NULL)
		return -1;
	pthread_mutex_init(&d->lock, NULL);
	char *q = NULL;
	if (srv->cfg && aiq_config_get(&q, srv->cfg, "queue") == AIQ_OK) {
		d->queue = strdup(q);
		aiq_free(q);
	}
	if (d->queue == NULL)
		d->queue = strdup("celery");
	d->series_sec = wall_ms() / 1000;
	srv->dash = d;
	return d->queue ? 0 : -1;
}

void dash_free(struct server *srv)
{
	struct dashboard *d = srv->dash;
	if (d == NULL)
		return;
	for (size_t i = 0; i < d->ntasks; i++)
		task_free(d->tasks[i]);
	for (size_t i = 0; i < d->npeers; i++)
		free(d->peers[i]);
	free(d->queue);
	json_decref(d->queues);
	free(d->snapshot);
	pthread_mutex_destroy(&d->lock);
	free(d);
	srv->dash = NULL;
}

/* Under the lock. */
static struct dash_task *find(struct dashboard *d, const char *id)
{
	for (size_t i = 0; id && i < d->ntasks; i++)
		if (strcmp(d->tasks[i]->id, id) == 0)
			return d->tasks[i];
	return NULL;
}

/* Under the lock: a new record in front; the oldest drops off when full. */
static struct dash_task *add(struct dashboard *d, const char *id, const char *name)
{
	if (id == NULL || strlen(id) >= sizeof d->tasks[0]->id)
		return NULL;
	struct dash_task *t = calloc(1, sizeof *t);
	if (t == NULL)
		return NULL;
	snprintf(t->id, sizeof t->id, "%s", id);
	t->name = dup_or_null(name);
	t->enqueued_ms = wall_ms();
	snprintf(t->state, sizeof t->state, "PENDING");
	if (d->ntasks == DASH_TASKS)
		task_free(d->tasks[--d->ntasks]);
	memmove(d->tasks + 1, d->tasks, d->ntasks * sizeof d->tasks[0]);
	d->tasks[0] = t;
	d->ntasks++;
	return t;
}

/* Shift the throughput series to the current second. Under the lock. */
static void advance_series(struct dashboard *d, int64_t sec)
{
	int64_t shift = sec - d->series_sec;
	if (shift <= 0)
		return;
	if (shift >= DASH_SERIES) {
		memset(d->series, 0, sizeof d->series);
	} else {
		memmove(d->series, d->series + shift,
		        (size_t)(DASH_SERIES - shift) * sizeof d->series[0]);
		memset(d->series + DASH_SERIES - shift, 0, (size_t)shift * sizeof d->series[0]);
	}
	d->series_sec = sec;
}

/* Under the lock: count a task that reached a final state. */
static void count_finished(struct dashboard *d, struct dash_task *t)
{
	if (t->final)
		return;
	t->final = 1;
	t->done_ms = wall_ms();
	d->finished++;
	advance_series(d, t->done_ms / 1000);
	d->series[DASH_SERIES - 1]++;
}

void dash_track(struct server *srv, const char *id, const char *name, const char *args,
                const char *kwargs)
{
	struct dashboard *d = srv->dash;
	if (d == NULL)
		return;
	pthread_mutex_lock(&d->lock);
	struct dash_task *t = find(d, id);
	if (t == NULL)
		t = add(d, id, name);
	if (t) {
		replace(&t->args, args ? args : "[]");
		replace(&t->kwargs, kwargs);
	}
	pthread_mutex_unlock(&d->lock);
}

void dash_worker_event(int event, const char *task_id, const char *task_name, const char *detail,
                       void *userdata)
{
	struct server *srv = userdata;
	prog_log_worker_event(event, task_id, task_name, detail, NULL);
	struct dashboard *d = srv->dash;
	if (d == NULL)
		return;
	pthread_mutex_lock(&d->lock);
	d->worker_event_ms = wall_ms();
	struct dash_task *t = find(d, task_id);
	if (t == NULL && task_id)
		t = add(d, task_id, task_name);
	if (t) {
		switch (event) {
		case AIQ_EVENT_STARTED: t->started_ms = wall_ms(); break;
		case AIQ_EVENT_RETRIED: t->retries++; break;
		case AIQ_EVENT_REJECTED:
			t->dead = 1;
			t->dead_ms = wall_ms();
			replace(&t->reason, detail);
			break;
		default: break;
		}
	}
	pthread_mutex_unlock(&d->lock);
}

/* ---- Celery events ------------------------------------------------------ */

/* Under the lock: the record of a worker, made when first seen; when the
 * table is full, the one silent the longest makes room. */
static struct dash_peer *peer_of(struct dashboard *d, const char *host)
{
	if (host == NULL || *host == '\0' || strlen(host) >= DASH_HOST_MAX)
		return NULL;
	for (size_t i = 0; i < d->npeers; i++)
		if (strcmp(d->peers[i]->hostname, host) == 0)
			return d->peers[i];
	size_t slot = d->npeers;
	if (d->npeers == DASH_PEERS) {
		slot = 0;
		for (size_t i = 1; i < d->npeers; i++)
			if (d->peers[i]->event_ms < d->peers[slot]->event_ms)
				slot = i;
		free(d->peers[slot]);
		d->peers[slot] = NULL;
	}
	struct dash_peer *p = calloc(1, sizeof *p);
	if (p == NULL)
		return NULL;
	snprintf(p->hostname, sizeof p->hostname, "%s", host);
	p->freq = 2.0;
	d->peers[slot] = p;
	if (slot == d->npeers)
		d->npeers++;
	return p;
}

static const char *str_field(const json_t *ev, const char *key)
{
	return json_string_value(json_object_get(ev, key));
}

static void copy_field(char *dst, size_t size, const json_t *ev, const char *key)
{
	const char *s = str_field(ev, key);
	if (s)
		snprintf(dst, size, "%s", s);
}

/* Under the lock: a task event (type "task-..."). */
static void task_event(struct dashboard *d, struct dash_peer *p, const char *kind, const json_t *ev,
                       int64_t now)
{
	const char *id = str_field(ev, "uuid");
	if (id == NULL || *id == '\0')
		return;
	/* The worker's own tallies, whatever the task table holds. */
	if (p && strcmp(kind, "succeeded") == 0)
		p->succeeded++;
	else if (p && strcmp(kind, "failed") == 0)
		p->failed++;
	else if (p && strcmp(kind, "retried") == 0)
		p->retried++;
	else if (p && strcmp(kind, "revoked") == 0)
		p->revoked++;
	else if (p && strcmp(kind, "rejected") == 0)
		p->rejected++;
	struct dash_task *t = find(d, id);
	if (t == NULL) {
		/* Only the start of a task's life makes a record: a late
		 * task-succeeded of a task that dropped off stays off. */
		if (strcmp(kind, "sent") != 0 && strcmp(kind, "received") != 0 &&
		    strcmp(kind, "started") != 0)
			return;
		t = add(d, id, str_field(ev, "name"));
		if (t == NULL)
			return;
	}
	if (t->name == NULL && str_field(ev, "name"))
		replace(&t->name, str_field(ev, "name"));
	if (p && strcmp(kind, "sent") != 0)
		snprintf(t->worker, sizeof t->worker, "%s", p->hostname);
	if (t->final)
		return; /* the store (or an earlier event) said final: that stands */
	const char *state = NULL;
	if (strcmp(kind, "received") == 0) {
		state = "RECEIVED";
		json_t *r = json_object_get(ev, "retries");
		if (json_is_integer(r) && json_integer_value(r) > t->retries)
			t->retries = (int)json_integer_value(r);
	} else if (strcmp(kind, "started") == 0) {
		state = "STARTED";
		t->started_ms = now;
	} else if (strcmp(kind, "succeeded") == 0) {
		state = "SUCCESS";
		const char *res = str_field(ev, "result"); /* a Python repr */
		json_t *s = res ? json_string(res) : NULL;
		char *text = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
		json_decref(s);
		if (text && strlen(text) <= DASH_TEXT_MAX) {
			free(t->result);
			t->result = text;
		} else {
			free(text);
		}
	} else if (strcmp(kind, "failed") == 0) {
		state = "FAILURE";
		replace(&t->error, str_field(ev, "exception"));
	} else if (strcmp(kind, "retried") == 0) {
		state = "RETRY";
		replace(&t->error, str_field(ev, "exception"));
	} else if (strcmp(kind, "revoked") == 0) {
		state = "REVOKED";
	}
	/* task-sent (the record stays PENDING) and task-rejected (the
	 * embedded worker's events, or the store, tell the rest) move nothing. */
	if (state == NULL)
		return;
	snprintf(t->state, sizeof t->state, "%s", state);
	t->evented = 1;
	if (strcmp(state, "SUCCESS") == 0 || strcmp(state, "FAILURE") == 0 ||
	    strcmp(state, "REVOKED") == 0) {
		if (t->started_ms == 0 && strcmp(state, "REVOKED") != 0)
			t->started_ms = now;
		count_finished(d, t);
	}
}

void dash_celery_event(struct server *srv, const json_t *ev)
{
	struct dashboard *d = srv->dash;
	const char *type = str_field(ev, "type");
	if (d == NULL || type == NULL)
		return;
	int64_t now = wall_ms();
	pthread_mutex_lock(&d->lock);
	const char *host = str_field(ev, "hostname");
	if (strncmp(type, "worker-", 7) == 0) {
		struct dash_peer *p = peer_of(d, host);
		if (p) {
			p->event_ms = now;
			const char *kind = type + 7;
			if (strcmp(kind, "offline") == 0) {
				p->offline = 1;
			} else if (strcmp(kind, "online") == 0 || strcmp(kind, "heartbeat") == 0) {
				p->offline = 0;
				p->beat_ms = now;
				json_t *f = json_object_get(ev, "freq");
				if (json_is_number(f) && json_number_value(f) > 0 &&
				    json_number_value(f) < 3600)
					p->freq = json_number_value(f);
			}
			json_t *a = json_object_get(ev, "active"),
			       *n = json_object_get(ev, "processed");
			if (json_is_integer(a) && json_is_integer(n)) {
				p->active = json_integer_value(a);
				p->processed = json_integer_value(n);
				p->have_counts = 1;
			}
			json_t *pid = json_object_get(ev, "pid");
			if (json_is_integer(pid))
				p->pid = json_integer_value(pid);
			copy_field(p->sw_ident, sizeof p->sw_ident, ev, "sw_ident");
			copy_field(p->sw_ver, sizeof p->sw_ver, ev, "sw_ver");
		}
	} else if (strncmp(type, "task-", 5) == 0) {
		/* task-sent comes from a client (gen<pid>@host): not a worker. */
		struct dash_peer *p = strcmp(type, "task-sent") == 0 ? NULL : peer_of(d, host);
		if (p)
			p->event_ms = now;
		task_event(d, p, type + 5, ev, now);
	}
	pthread_mutex_unlock(&d->lock);
}

/* The demo task: args [steps, step_ms], PROGRESS {"current", "total"} after
 * each step, SUCCESS {"steps"}; stops early when revoked. */
static void demo_progress(aiq_task *task, void *userdata)
{
	(void)userdata;
	int64_t steps = 5, step_ms = 200;
	if (aiq_task_arg_count(task) > 0 && aiq_task_arg_int(&steps, task, 0) != AIQ_OK)
		steps = -1;
	if (aiq_task_arg_count(task) > 1 && aiq_task_arg_int(&step_ms, task, 1) != AIQ_OK)
		step_ms = -1;
	if (steps < 0 || steps > 10000 || step_ms < 0 || step_ms > 60000) {
		aiq_task_fail(task, "ValueError", "expected args [steps 0-10000, step_ms 0-60000]",
		              "builtins");
		return;
	}
	for (int64_t i = 1; i <= steps; i++) {
		for (int64_t slept = 0; slept < step_ms; slept += 20) {
			if (aiq_task_cancelled(task))
				return; /* revoked: the REVOKED state is stored already */
			usleep(20 * 1000);
		}
		char meta[96];
		snprintf(meta, sizeof meta, "{\"current\":%lld,\"total\":%lld}", (long long)i,
		         (long long)steps);
		if (i < steps)
			aiq_task_progress(task, meta);
	}
	char result[64];
	snprintf(result, sizeof result, "{\"steps\":%lld}", (long long)steps);
	aiq_task_succeed(task, result);
}

int dash_register_demo(aiq_worker *w)
{
	return aiq_worker_register(w, DASH_DEMO_TASK, demo_progress, NULL, NULL);
}

/* ---- the snapshot ------------------------------------------------------- */

struct probe {
	char id[160];
	int state;
	int rc;
	char *result, *error;
};

static json_t *text_or_null(const char *s)
{
	json_t *v = s ? json_string(s) : NULL;
	return v ? v : json_null();
}

static json_t *parsed_or_null(const char *s)
{
	json_t *v = s ? json_loads(s, JSON_DECODE_ANY, NULL) : NULL;
	return v ? v : json_null();
}

/* Under the lock. */
static json_t *task_json(const struct dash_task *t, int64_t now)
{
	json_t *runtime = json_null();
	if (t->started_ms > 0)
		runtime = json_integer((json_int_t)((t->final ? t->done_ms : now) - t->started_ms));
	return json_pack("{s s s o s s s I s o s i s o s o s b s o}", "task_id", t->id, "name",
	                 text_or_null(t->name), "state", t->state, "enqueued_ms",
	                 (json_int_t)t->enqueued_ms, "runtime_ms", runtime ? runtime : json_null(),
	                 "retries", t->retries, "result", parsed_or_null(t->result), "error",
	                 text_or_null(t->error), "final", t->final, "worker",
	                 text_or_null(t->worker[0] ? t->worker : NULL));
}

static json_t *dead_json(const struct dash_task *t)
{
	return json_pack("{s s s o s o s I s b}", "task_id", t->id, "name", text_or_null(t->name),
	                 "reason", text_or_null(t->reason), "dead_ms", (json_int_t)t->dead_ms,
	                 "requeueable", t->name != NULL && t->args != NULL);
}

/* Celery's rule (celery.events.state, HEARTBEAT_EXPIRE_WINDOW 200 %): a
 * worker is alive until freq * 2 seconds after its last heartbeat, so two
 * missed beats make it offline; a worker-offline does at once. */
static const char *peer_status(const struct dash_peer *p, int64_t now)
{
	if (p->offline || p->beat_ms == 0)
		return "offline";
	return now - p->beat_ms <= (int64_t)(p->freq * 2.0 * 1000.0) ? "online" : "offline";
}

static json_t *peer_json(const struct dash_peer *p, int64_t now)
{
	json_t *beat = p->beat_ms ? json_integer((json_int_t)(now - p->beat_ms)) : json_null();
	json_t *active = p->have_counts ? json_integer((json_int_t)p->active) : json_null();
	json_t *processed = p->have_counts ? json_integer((json_int_t)p->processed) : json_null();
	return json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:I, s:o, s:o, s:f, s:I, s:I, s:I, "
	                 "s:I, s:I, s:I}",
	                 "name", p->hostname, "source", "events", "status", peer_status(p, now),
	                 "sw_ident", text_or_null(p->sw_ident[0] ? p->sw_ident : NULL), "sw_ver",
	                 text_or_null(p->sw_ver[0] ? p->sw_ver : NULL), "concurrency", json_null(),
	                 "heartbeat_age_ms", beat ? beat : json_null(), "last_event_age_ms",
	                 (json_int_t)(now - p->event_ms), "running", active ? active : json_null(),
	                 "processed", processed ? processed : json_null(), "freq", p->freq, "pid",
	                 (json_int_t)p->pid, "succeeded", (json_int_t)p->succeeded, "failed",
	                 (json_int_t)p->failed, "retried", (json_int_t)p->retried, "revoked",
	                 (json_int_t)p->revoked, "dead_lettered", (json_int_t)p->rejected);
}

/* Under the lock: the snapshot of what is known now, with @p queues (taken)
 * or, when NULL, the depths of the last refresh. */
static void render(struct server *srv, struct dashboard *d, json_t *queues)
{
	if (queues) {
		json_decref(d->queues);
		d->queues = queues;
	}
	int64_t now = wall_ms();
	advance_series(d, now / 1000);
	json_t *tasks = json_array(), *dead = json_array(), *series = json_array();
	for (size_t i = 0; i < d->ntasks; i++) {
		json_array_append_new(tasks, task_json(d->tasks[i], now));
		if (d->tasks[i]->dead)
			json_array_append_new(dead, dead_json(d->tasks[i]));
	}
	for (size_t i = 0; i < DASH_SERIES; i++)
		json_array_append_new(series, json_integer((json_int_t)d->series[i]));
	json_t *workers = json_array();
	if (srv->worker) {
		const aiq_worker *w = srv->worker;
		json_t *age = d->worker_event_ms
		                      ? json_integer((json_int_t)(now - d->worker_event_ms))
		                      : json_null();
		json_t *beat = d->worker_seen_ms
		                       ? json_integer((json_int_t)(now - d->worker_seen_ms))
		                       : json_null();
		json_array_append_new(
		        workers,
		        json_pack(
		                "{s s s s s s s i s o s o s I s I s I s I s I s I}", "name",
		                "embedded", "source", "embedded", "status",
		                atomic_load(&srv->draining) ? "stopping" : "online", "concurrency",
		                srv->opt.workers, "heartbeat_age_ms", beat ? beat : json_null(),
		                "last_event_age_ms", age ? age : json_null(), "running",
		                (json_int_t)aiq_worker_counter(w, AIQ_COUNTER_RUNNING), "succeeded",
		                (json_int_t)aiq_worker_counter(w, AIQ_COUNTER_SUCCEEDED), "failed",
		                (json_int_t)aiq_worker_counter(w, AIQ_COUNTER_FAILED), "retried",
		                (json_int_t)aiq_worker_counter(w, AIQ_COUNTER_RETRIED), "revoked",
		                (json_int_t)aiq_worker_counter(w, AIQ_COUNTER_REVOKED),
		                "dead_lettered",
		                (json_int_t)aiq_worker_counter(w, AIQ_COUNTER_DEAD)));
	}
	for (size_t i = 0; i < d->npeers; i++)
		json_array_append_new(workers, peer_json(d->peers[i], now));
	json_t *snap = json_pack(
	        "{s I s o s o s o s o s o s I}", "time_ms", (json_int_t)now, "workers", workers,
	        "queues", d->queues ? json_incref(d->queues) : json_array(), "tasks", tasks,
	        "dead_letters", dead, "throughput", series, "finished", (json_int_t)d->finished);
	char *text = snap ? json_dumps(snap, JSON_COMPACT) : NULL;
	json_decref(snap);
	if (text) {
		free(d->snapshot);
		d->snapshot = text;
		d->snapshot_len = strlen(text);
		d->generation++;
	}
}

static json_t *queue_json(aiq_client *c, int *rc, const char *name, const char *kind)
{
	uint64_t n = 0;
	if (*rc == AIQ_OK)
		*rc = aiq_client_queue_depth(&n, c, name);
	json_t *depth = *rc == AIQ_OK ? json_integer((json_int_t)n) : json_null();
	return json_pack("{s s s s s o}", "name", name, "kind", kind, "depth",
	                 depth ? depth : json_null());
}

/* "Type: message" of a FAILURE or RETRY, cut to DASH_TEXT_MAX bytes on a
 * UTF-8 boundary (the JSON would refuse a split sequence); NULL when none. */
static char *error_text(const aiq_result *r)
{
	const char *type = aiq_result_error_type(r), *msg = aiq_result_error_message(r);
	if (type == NULL && msg == NULL)
		return NULL;
	char *text = malloc(DASH_TEXT_MAX);
	if (text == NULL)
		return NULL;
	int n = snprintf(text, DASH_TEXT_MAX, "%s: %s", type ? type : "Error", msg ? msg : "");
	if (n >= DASH_TEXT_MAX) {
		size_t k = DASH_TEXT_MAX - 1;
		while (k > 0 && ((unsigned char)text[k - 1] & 0xC0) == 0x80)
			k--;
		if (k > 0 && (unsigned char)text[k - 1] >= 0xC0)
			k--;
		text[k] = '\0';
	}
	return text;
}

void dash_refresh(struct server *srv)
{
	struct dashboard *d = srv->dash;
	if (d == NULL)
		return;
	/* The ids to look at, copied so that no store call runs under the lock. */
	struct probe probes[DASH_TASKS];
	size_t n = 0;
	char queue[256], dead_queue[300];
	pthread_mutex_lock(&d->lock);
	for (size_t i = 0; i < d->ntasks; i++)
		if (!d->tasks[i]->final) {
			memset(&probes[n], 0, sizeof probes[n]);
			memcpy(probes[n].id, d->tasks[i]->id, sizeof probes[n].id);
			n++;
		}
	snprintf(queue, sizeof queue, "%s", d->queue);
	pthread_mutex_unlock(&d->lock);
	snprintf(dead_queue, sizeof dead_queue, "%s.dead", queue);

	json_t *queues = NULL;
	aiq_client *c = NULL;
	int rc = breaker_is_open(&srv->breaker) ? AIQ_EBROKER : client_pool_get(&c, srv->clients);
	int store_rc = rc;
	for (size_t i = 0; i < n && store_rc == AIQ_OK; i++) {
		aiq_result *r = NULL;
		store_rc = probes[i].rc = aiq_client_get_result(&r, c, probes[i].id);
		if (store_rc != AIQ_OK)
			break;
		probes[i].state = aiq_result_state(r);
		const char *json = aiq_result_json(r);
		if (json && strlen(json) > DASH_TEXT_MAX) {
			/* The snapshot goes to every open page twice a second: the full
			 * value is one GET /tasks/{id} away. */
			char note[96];
			snprintf(note, sizeof note, "\"(%zu bytes: GET /tasks/{id} has it)\"",
			         strlen(json));
			probes[i].result = strdup(note);
		} else {
			probes[i].result = dup_or_null(json);
		}
		probes[i].error = error_text(r);
		aiq_result_free(r);
	}
	int broker_rc = store_rc == AIQ_OK ? rc : store_rc;
	if (rc == AIQ_OK) {
		queues = json_array();
		json_array_append_new(queues, queue_json(c, &broker_rc, queue, "queue"));
		json_array_append_new(queues, queue_json(c, &broker_rc, dead_queue, "dead"));
		client_pool_done(srv->clients, c, broker_rc);
	}

	pthread_mutex_lock(&d->lock);
	d->worker_seen_ms = wall_ms();
	d->refreshed_ms = prog_mono_ms();
	for (size_t i = 0; i < n; i++) {
		struct dash_task *t = find(d, probes[i].id);
		/* The store knows nothing yet of a task the events report on
		 * (or never will: another backend, ignore_result): keep theirs. */
		if (t && t->evented && probes[i].state == AIQ_STATE_PENDING)
			t = NULL;
		if (t && probes[i].rc == AIQ_OK && probes[i].result != NULL) {
			snprintf(t->state, sizeof t->state, "%s", aiq_state_name(probes[i].state));
			replace(&t->result, probes[i].result);
			replace(&t->error, probes[i].error);
			/* Without the worker's events, the start is when a poll first
			 * saw it run; a task that never ran has no runtime. */
			if (t->started_ms == 0 && !aiq_state_is_ready(probes[i].state) &&
			    probes[i].state != AIQ_STATE_PENDING)
				t->started_ms = wall_ms();
			if (aiq_state_is_ready(probes[i].state))
				count_finished(d, t);
		}
		free(probes[i].result);
		free(probes[i].error);
	}
	render(srv, d, queues);
	pthread_mutex_unlock(&d->lock);
}

char *dash_snapshot(struct server *srv, size_t *len, uint64_t *generation)
{
	struct dashboard *d = srv->dash;
	char *copy = NULL;
	if (d == NULL) {
		copy = strdup("{\"workers\":[],\"queues\":[],\"tasks\":[],\"dead_letters\":[],"
		              "\"throughput\":[]}");
		if (generation)
			*generation = 0;
	} else {
		pthread_mutex_lock(&d->lock);
		if (d->snapshot == NULL)
			render(srv, d, NULL);
		copy = d->snapshot ? strndup(d->snapshot, d->snapshot_len) : NULL;
		if (generation)
			*generation = d->generation;
		pthread_mutex_unlock(&d->lock);
	}
	if (copy && len)
		*len = strlen(copy);
	return copy;
}

/* ---- routes ------------------------------------------------------------- */

enum MHD_Result handle_dash_asset(struct request *req)
{
	const char *path = server_routes[req->route].path, *slash = strrchr(path, '/');
	const char *name = req->route == ROUTE_DASHBOARD ? "index.html" : slash + 1;
	for (size_t i = 0; i < dash_assets_count; i++)
		if (strcmp(dash_assets[i].name, name) == 0) {
			char *copy = malloc(dash_assets[i].len + 1);
			if (copy == NULL)
				return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR,
				                   "out of memory");
			memcpy(copy, dash_assets[i].data, dash_assets[i].len);
			copy[dash_assets[i].len] = '\0';
			return reply_text(req, MHD_HTTP_OK, dash_assets[i].type, copy,
			                  dash_assets[i].len);
		}
	return reply_error(req, MHD_HTTP_NOT_FOUND, "Not Found");
}

enum MHD_Result handle_dash_state(struct request *req)
{
	struct dashboard *d = req->srv->dash;
	atomic_store(&req->srv->dash_interest_ms, prog_mono_ms());
	/* Nobody watched (the ticker idles): read the store now, on this job
	 * thread, rather than answer with an old snapshot. */
	if (d) {
		pthread_mutex_lock(&d->lock);
		int stale = prog_mono_ms() - d->refreshed_ms > 2 * DASH_TICK_MS;
		pthread_mutex_unlock(&d->lock);
		if (stale)
			dash_refresh(req->srv);
	}
	size_t len = 0;
	char *text = dash_snapshot(req->srv, &len, NULL);
	if (text == NULL)
		return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	return reply_text(req, MHD_HTTP_OK, "application/json", text, len);
}

enum MHD_Result handle_dead_letters(struct request *req)
{
	struct dashboard *d = req->srv->dash;
	json_t *list = json_array();
	if (d) {
		pthread_mutex_lock(&d->lock);
		for (size_t i = 0; i < d->ntasks; i++)
			if (d->tasks[i]->dead)
				json_array_append_new(list, dead_json(d->tasks[i]));
		pthread_mutex_unlock(&d->lock);
	}
	return reply_json(req, MHD_HTTP_OK, json_pack("{s o}", "dead_letters", list));
}

/* DELETE /dead-letters/{task_id}: forget the record. */
enum MHD_Result handle_dead_letter_delete(struct request *req)
{
	struct dashboard *d = req->srv->dash;
	int found = 0;
	if (d) {
		pthread_mutex_lock(&d->lock);
		struct dash_task *t = find(d, req->task_id);
		if (t && t->dead) {
			t->dead = 0;
			found = 1;
			render(req->srv, d, NULL);
		}
		pthread_mutex_unlock(&d->lock);
	}
	/* DELETE is idempotent: an unknown id is already gone. */
	return reply_json(req, MHD_HTTP_OK,
	                  json_pack("{s s s b}", "task_id", req->task_id, "deleted", found));
}

/* POST /dead-letters/{task_id}/requeue, body {} or {"task": NAME}: send the
 * request this server kept again, as a new task (the old id keeps its
 * FAILURE), under NAME when given. */
enum MHD_Result handle_dead_letter_requeue(struct request *req)
{
	struct server *srv = req->srv;
	struct dashboard *d = srv->dash;
	json_error_t err;
	json_t *body =
	        req->body_len ? json_loadb(req->body, req->body_len, 0, &err) : json_object();
	if (body == NULL)
		return reply_error(req, MHD_HTTP_BAD_REQUEST, "malformed JSON: %s", err.text);
	json_t *task = json_object_get(body, "task");
	const char *key;
	json_t *v;
	int bad = !json_is_object(body);
	json_object_foreach(body, key, v) bad |= strcmp(key, "task") != 0;
	if (bad || (task && (!json_is_string(task) || json_string_length(task) == 0))) {
		json_decref(body);
		return reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT,
		                   "body: expected {} or {\"task\": a non-empty string}");
	}
	char *name = NULL, *args = NULL, *kwargs = NULL;
	int found = 0;
	if (d) {
		pthread_mutex_lock(&d->lock);
		struct dash_task *t = find(d, req->task_id);
		if (t && t->dead) {
			found = 1;
			name = dup_or_null(task ? json_string_value(task) : t->name);
			args = dup_or_null(t->args);
			kwargs = dup_or_null(t->kwargs);
		}
		pthread_mutex_unlock(&d->lock);
	}
	json_decref(body);
	if (!found)
		return reply_error(req, MHD_HTTP_CONFLICT,
		                   "task %s is not a dead letter this server knows of",
		                   req->task_id);
	if (name == NULL || args == NULL) {
		free(name);
		free(args);
		free(kwargs);
		return reply_error(req, MHD_HTTP_CONFLICT,
		                   "this server holds no copy of that task's request (it was "
		                   "not sent through this server, or is too old)");
	}
	aiq_client *c = NULL;
	char *id = NULL;
	int rc = client_pool_get(&c, srv->clients);
	if (rc == AIQ_OK)
		rc = aiq_client_enqueue(&id, c, name, args, kwargs, NULL);
	client_pool_done(srv->clients, c, rc);
	if (rc == AIQ_OK) {
		metrics_enqueued(name, 1);
		dash_track(srv, id, name, args, kwargs);
		pthread_mutex_lock(&d->lock);
		struct dash_task *t = find(d, req->task_id);
		if (t)
			t->dead = 0; /* requeued: off the list */
		render(srv, d, NULL);
		pthread_mutex_unlock(&d->lock);
	}
	free(name);
	free(args);
	free(kwargs);
	if (rc != AIQ_OK) {
		const char *detail = aiq_error_last();
		return reply_error(req, status_for_error(rc), "requeue failed: %s%s%s",
		                   aiq_strerror(rc), *detail ? ": " : "", detail);
	}
	enum MHD_Result res = reply_json(req, MHD_HTTP_ACCEPTED,
	                                 json_pack("{s s s s s s}", "task_id", id, "requeued_from",
	                                           req->task_id, "status", "queued"));
	aiq_free(id);
	return res;
}

enum MHD_Result reply_stream_once(struct request *req)
{
	size_t len = 0;
	char *snap = dash_snapshot(req->srv, &len, NULL);
	const char head[] = "retry: 2000\nevent: snapshot\ndata: ", tail[] = "\n\n";
	char *text = snap ? malloc(sizeof head + len + sizeof tail) : NULL;
	if (text == NULL) {
		free(snap);
		return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	}
	memcpy(text, head, sizeof head - 1);
	memcpy(text + sizeof head - 1, snap, len);
	memcpy(text + sizeof head - 1 + len, tail, sizeof tail);
	free(snap);
	return reply_text(req, MHD_HTTP_OK, "text/event-stream", text, strlen(text));
}
