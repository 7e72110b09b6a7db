/*
 * aiqueue-worker --metrics-port: Prometheus metrics of this worker, in the
 * text exposition format 0.0.4, served by libmicrohttpd on its own thread
 * at /metrics. Everything comes from the worker's event callback (worker
 * threads) and aiq_worker_counter(); a mutex guards the tables.
 *
 *   aiqueue_build_info{version}                          gauge 1
 *   aiqueue_worker_start_time_seconds                    gauge
 *   aiqueue_worker_tasks_received_total{task}            counter
 *   aiqueue_worker_tasks_total{task,state}               counter: SUCCESS, FAILURE,
 *                                                        RETRY, REVOKED, REJECTED
 *   aiqueue_worker_task_runtime_seconds{task}            histogram: started -> final
 *   aiqueue_worker_task_queue_wait_seconds{task}         histogram: received -> started
 *   aiqueue_worker_tasks_running                         gauge
 *   aiqueue_worker_tasks_prefetched                      gauge: received, not started
 *   aiqueue_worker_dead_letters_total                    counter
 *   aiqueue_worker_broker_reconnects_total               counter: consuming connection
 *   aiqueue_worker_heartbeat_age_seconds                 gauge: since the last heartbeat
 *                                                        event sent (-E only)
 *   aiqueue_worker_queue_depth{queue}                    gauge: ready messages of each
 *                                                        consumed queue, read at scrape
 *                                                        time through a client of its own
 * Buckets reach 10 minutes: LLM analyses take seconds to minutes.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_NAMES   512 /* task names tracked; more are counted under "other" */
#define MAX_PENDING 65536

static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                 2.5,   5,    10,    30,   60,  120,  300, 600};
#define NBUCKET (sizeof buckets / sizeof buckets[0])

enum { ST_SUCCESS, ST_FAILURE, ST_RETRY, ST_REVOKED, ST_REJECTED, ST_N };
static const char *const state_names[ST_N] = {"SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"};

struct histogram {
	uint64_t bucket[NBUCKET]; /* non-cumulative; summed when written */
	uint64_t count;
	double sum;
};

struct task_metrics {
	char *name;
	uint64_t received;
	uint64_t states[ST_N];
	struct histogram runtime, wait;
};

/* A task between received and final, for the two durations. */
struct pending {
	char *id;
	char *name;
	double received, started; /* monotonic seconds; started 0 = not yet */
	struct pending *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct task_metrics tasks[MAX_NAMES + 1]; /* last: "other" */
static size_t ntasks;
static struct pending *pending;
static size_t npending;
static struct MHD_Daemon *daemon_;
static aiq_worker *worker;
static double start_time;
/* Queue depths: the HTTP thread alone uses these. */
static aiq_config *client_cfg;
static aiq_client *client;
static char **queues;
static size_t nqueues;

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void observe(struct histogram *h, double v)
{
	if (v < 0)
		v = 0;
	for (size_t i = 0; i < NBUCKET; i++) {
		if (v <= buckets[i]) {
			h->bucket[i]++;
			break;
		}
	}
	h->count++;
	h->sum += v;
}

/* Lock held. */
static struct task_metrics *task_of(const char *name)
{
	if (name == NULL)
		name = "";
	for (size_t i = 0; i < ntasks; i++)
		if (strcmp(tasks[i].name, name) == 0)
			return &tasks[i];
	if (ntasks < MAX_NAMES) {
		char *copy = strdup(name);
		if (copy) {
			tasks[ntasks].name = copy;
			return &tasks[ntasks++];
		}
	}
	if (tasks[MAX_NAMES].name == NULL)
		tasks[MAX_NAMES].name = strdup("other");
	return &tasks[MAX_NAMES];
}

/* Lock held. Unlinks and returns the pending entry of `id`, or NULL. */
static struct pending *take_pending(const char *id)
{
	for (struct pending **p = &pending; *p; p = &(*p)->next) {
		if (strcmp((*p)->id, id) == 0) {
			struct pending *e = *p;
			*p = e->next;
			npending--;
			return e;
		}
	}
	return NULL;
}

static void free_pending(struct pending *e)
{
	if (e) {
		free(e->id);
		free(e->name);
		free(e);
	}
}

void worker_metrics_event(int event, const char *task_id, const char *task_name)
{
	if (daemon_ == NULL || task_id == NULL)
		return;
	double now = mono_s();
	pthread_mutex_lock(&lock);
	struct task_metrics *t = task_of(task_name);
	struct pending *e = NULL;
	int state = -1;
	switch (event) {
	case AIQ_EVENT_RECEIVED:
		t->received++;
		free_pending(take_pending(task_id)); /* a redelivery starts over */
		if (npending < MAX_PENDING && (e = calloc(1, sizeof *e)) &&
		    (e->id = strdup(task_id))) {
			e->received = now;
			e->next = pending;
			pending = e;
			npending++;
		} else if (e) {
			free(e);
		}
		break;
	case AIQ_EVENT_STARTED:
		for (e = pending; e; e = e->next) {
			if (strcmp(e->id, task_id) == 0) {
				e->started = now;
				observe(&t->wait, now - e->received);
				break;
			}
		}
		break;
	case AIQ_EVENT_SUCCEEDED: state = ST_SUCCESS; break;
	case AIQ_EVENT_FAILED: state = ST_FAILURE; break;
	case AIQ_EVENT_RETRIED: state = ST_RETRY; break;
	case AIQ_EVENT_REVOKED: state = ST_REVOKED; break;
	case AIQ_EVENT_REJECTED: state = ST_REJECTED; break;
	default: break;
	}
	if (state >= 0) {
		t->states[state]++;
		e = take_pending(task_id);
		if (e && e->started > 0)
			observe(&t->runtime, now - e->started);
		free_pending(e);
	}
	pthread_mutex_unlock(&lock);
}

/* ---- the text format ---------------------------------------------------------- */

struct buf {
	char *p;
	size_t len, cap;
	int oom;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
	if (b->oom)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = 1;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap + (size_t)n + 1) * 2;
		char *p = realloc(b->p, cap);
		if (p == NULL) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

/* A label value: backslash, double quote and newline escaped. */
static void put_label(struct buf *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\')
			put(b, "\\\\");
		else if (*v == '"')
			put(b, "\\\"");
		else if (*v == '\n')
			put(b, "\\n");
		else
			put(b, "%c", *v);
	}
}

static void put_histogram(struct buf *b, const char *metric, const char *task,
                          const struct histogram *h)
{
	uint64_t cum = 0;
	for (size_t i = 0; i < NBUCKET; i++) {
		cum += h->bucket[i];
		put(b, "%s_bucket{task=\"", metric);
		put_label(b, task);
		put(b, "\",le=\"%g\"} %llu\n", buckets[i], (unsigned long long)cum);
	}
	put(b, "%s_bucket{task=\"", metric);
	put_label(b, task);
	put(b, "\",le=\"+Inf\"} %llu\n", (unsigned long long)h->count);
	put(b, "%s_sum{task=\"", metric);
	put_label(b, task);
	put(b, "\"} %.6f\n", h->sum);
	put(b, "%s_count{task=\"", metric);
	put_label(b, task);
	put(b, "\"} %llu\n", (unsigned long long)h->count);
}

char *worker_metrics_text(void)
{
	struct buf b = {malloc(4096), 0, 4096, 0};
	if (b.p == NULL)
		return NULL;
	put(&b, "# HELP aiqueue_build_info The libaiqueue version of this worker.\n"
	        "# TYPE aiqueue_build_info gauge\n"
	        "aiqueue_build_info{version=\"");
	put_label(&b, aiq_version_string());
	put(&b, "\"} 1\n");
	put(&b,
	    "# HELP aiqueue_worker_start_time_seconds When this worker started (UNIX time).\n"
	    "# TYPE aiqueue_worker_start_time_seconds gauge\n"
	    "aiqueue_worker_start_time_seconds %.3f\n",
	    start_time);
	pthread_mutex_lock(&lock);
	size_t n = ntasks + (tasks[MAX_NAMES].name ? 1 : 0);
	put(&b, "# HELP aiqueue_worker_tasks_received_total Task messages received, by task name.\n"
	        "# TYPE aiqueue_worker_tasks_received_total counter\n");
	for (size_t k = 0; k < n; k++) {
		const struct task_metrics *t = &tasks[k < ntasks ? k : MAX_NAMES];
		put(&b, "aiqueue_worker_tasks_received_total{task=\"");
		put_label(&b, t->name);
		put(&b, "\"} %llu\n", (unsigned long long)t->received);
	}
	put(&b, "# HELP aiqueue_worker_tasks_total Tasks that reached a state, by task name and "
	        "state.\n"
	        "# TYPE aiqueue_worker_tasks_total counter\n");
	for (size_t k = 0; k < n; k++) {
		const struct task_metrics *t = &tasks[k < ntasks ? k : MAX_NAMES];
		for (int s = 0; s < ST_N; s++) {
			put(&b, "aiqueue_worker_tasks_total{task=\"");
			put_label(&b, t->name);
			put(&b, "\",state=\"%s\"} %llu\n", state_names[s],
			    (unsigned long long)t->states[s]);
		}
	}
	put(&b, "# HELP aiqueue_worker_task_runtime_seconds Time from a task's start to its "
	        "outcome.\n"
	        "# TYPE aiqueue_worker_task_runtime_seconds histogram\n");
	for (size_t k = 0; k < n; k++) {
		const struct task_metrics *t = &tasks[k < ntasks ? k : MAX_NAMES];
		put_histogram(&b, "aiqueue_worker_task_runtime_seconds", t->name, &t->runtime);
	}
	put(&b, "# HELP aiqueue_worker_task_queue_wait_seconds Time from a task's receipt by this "
	        "worker to its start.\n"
	        "# TYPE aiqueue_worker_task_queue_wait_seconds histogram\n");
	for (size_t k = 0; k < n; k++) {
		const struct task_metrics *t = &tasks[k < ntasks ? k : MAX_NAMES];
		put_histogram(&b, "aiqueue_worker_task_queue_wait_seconds", t->name, &t->wait);
	}
	size_t prefetched = 0;
	for (const struct pending *e = pending; e; e = e->next)
		prefetched += e->started == 0;
	pthread_mutex_unlock(&lock);
	put(&b,
	    "# HELP aiqueue_worker_tasks_running Task handlers running now.\n"
	    "# TYPE aiqueue_worker_tasks_running gauge\n"
	    "aiqueue_worker_tasks_running %lld\n"
	    "# HELP aiqueue_worker_tasks_prefetched Tasks received and not started yet.\n"
	    "# TYPE aiqueue_worker_tasks_prefetched gauge\n"
	    "aiqueue_worker_tasks_prefetched %zu\n"
	    "# HELP aiqueue_worker_dead_letters_total Messages this worker dead-lettered.\n"
	    "# TYPE aiqueue_worker_dead_letters_total counter\n"
	    "aiqueue_worker_dead_letters_total %lld\n",
	    (long long)aiq_worker_counter(worker, AIQ_COUNTER_RUNNING), prefetched,
	    (long long)aiq_worker_counter(worker, AIQ_COUNTER_DEAD));
	int64_t reconnects = aiq_worker_counter(worker, AIQ_COUNTER_BROKER_RECONNECTS);
	put(&b,
	    "# HELP aiqueue_worker_broker_reconnects_total Times the consuming broker connection "
	    "was lost and made again.\n"
	    "# TYPE aiqueue_worker_broker_reconnects_total counter\n"
	    "aiqueue_worker_broker_reconnects_total %lld\n",
	    (long long)(reconnects > 0 ? reconnects : 0));
	/* Only once a heartbeat went out (-E): no sample is "unknown", not 0. */
	int64_t beat_ms = aiq_worker_counter(worker, AIQ_COUNTER_LAST_HEARTBEAT_MS);
	if (beat_ms > 0) {
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		double age = (double)now.tv_sec + (double)now.tv_nsec / 1e9 - (double)beat_ms / 1e3;
		put(&b,
		    "# HELP aiqueue_worker_heartbeat_age_seconds Seconds since the broker took "
		    "this "
		    "worker's last Celery heartbeat event.\n"
		    "# TYPE aiqueue_worker_heartbeat_age_seconds gauge\n"
		    "aiqueue_worker_heartbeat_age_seconds %.3f\n",
		    age > 0 ? age : 0.0);
	}
	if (nqueues) {
		put(&b,
		    "# HELP aiqueue_worker_queue_depth Messages ready in each queue this worker "
		    "consumes.\n"
		    "# TYPE aiqueue_worker_queue_depth gauge\n");
		if (client == NULL && aiq_client_new(&client, client_cfg) != AIQ_OK)
			client = NULL; /* the broker is away: no samples this time */
		for (size_t i = 0; client && i < nqueues; i++) {
			uint64_t depth;
			if (aiq_client_queue_depth(&depth, client, queues[i]) != AIQ_OK)
				continue;
			put(&b, "aiqueue_worker_queue_depth{queue=\"");
			put_label(&b, queues[i]);
			put(&b, "\"} %llu\n", (unsigned long long)depth);
		}
	}
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

/* "a, b,c" -> {"a", "b", "c"} */
static void split_queues(const char *list)
{
	const char *p = list;
	while (p && *p) {
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
		char **v = realloc(queues, (nqueues + 1) * sizeof *v);
		if (v == NULL)
			return;
		queues = v;
		if ((queues[nqueues] = strndup(start, (size_t)(end - start))))
			nqueues++;
	}
}

/* ---- the HTTP side ------------------------------------------------------------- */

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
	(void)cls;
	(void)version;
	(void)upload;
	(void)state;
	*upload_size = 0; /* a body (none is expected) is read and dropped */
	unsigned status = MHD_HTTP_OK;
	char *text = NULL;
	const char *type = "text/plain; version=0.0.4; charset=utf-8";
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
		text = strdup("only GET\n");
	} else if (strcmp(url, "/metrics") != 0) {
		status = MHD_HTTP_NOT_FOUND;
		text = strdup("metrics are at /metrics\n");
	} else if ((text = worker_metrics_text()) == NULL) {
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		text = strdup("out of memory\n");
	}
	if (text == NULL)
		return MHD_NO;
	struct MHD_Response *r =
	        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	enum MHD_Result ok = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ok;
}

int worker_metrics_start(aiq_worker *w, const aiq_config *cfg, const char *host, unsigned port)
{
	worker = w;
	char *list = NULL;
	if (aiq_config_copy(&client_cfg, cfg) == AIQ_OK &&
	    aiq_config_get(&list, cfg, "worker.queues") == AIQ_OK) {
		if (*list == '\0') {
			aiq_free(list);
			list = NULL;
			aiq_config_get(&list, cfg, "queue");
		}
		split_queues(list);
	}
	aiq_free(list);
	start_time = (double)time(NULL);
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		return -1;
	daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL,
	                           answer, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
	                           MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
	return daemon_ ? 0 : -1;
}

void worker_metrics_stop(void)
{
	if (daemon_)
		MHD_stop_daemon(daemon_);
	daemon_ = NULL;
	pthread_mutex_lock(&lock);
	while (pending) {
		struct pending *e = pending;
		pending = e->next;
		free_pending(e);
	}
	npending = 0;
	for (size_t i = 0; i <= MAX_NAMES; i++) {
		free(tasks[i].name);
		memset(&tasks[i], 0, sizeof tasks[i]);
	}
	ntasks = 0;
	pthread_mutex_unlock(&lock);
	aiq_client_free(client);
	client = NULL;
	aiq_config_free(client_cfg);
	client_cfg = NULL;
	for (size_t i = 0; i < nqueues; i++)
		free(queues[i]);
	free(queues);
	queues = NULL;
	nqueues = 0;
}
