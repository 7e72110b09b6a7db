/*
 * Prometheus metrics: requests by route and status, request latency
 * histogram by route, tasks enqueued by task name, and the embedded worker's
 * counters. Counters are atomics; the task-name table takes a mutex.
 */
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int statuses[] = {0, 200, 202, 400, 401, 404, 405, 409, 413, 415, 422, 500, 503, 504};
#define NSTATUS (sizeof statuses / sizeof statuses[0])
static const double buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
#define NBUCKET        (sizeof buckets / sizeof buckets[0])
#define MAX_TASK_NAMES 256

static atomic_uint_fast64_t requests[ROUTE_COUNT][NSTATUS + 1]; /* last = other status */
static atomic_uint_fast64_t latency_bucket[ROUTE_COUNT][NBUCKET];
static atomic_uint_fast64_t latency_count[ROUTE_COUNT];
static atomic_uint_fast64_t latency_sum_us[ROUTE_COUNT];

static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char *name;
	uint64_t count;
} names[MAX_TASK_NAMES];
static size_t nnames;
static uint64_t other_names;

void metrics_init(void)
{
}

void metrics_request(enum route route, int status, int64_t elapsed_us)
{
	if (elapsed_us < 0)
		elapsed_us = 0;
	size_t s = NSTATUS;
	for (size_t i = 0; i < NSTATUS; i++)
		if (statuses[i] == status)
			s = i;
	atomic_fetch_add(&requests[route][s], 1);
	double secs = (double)elapsed_us / 1e6; /* microseconds, shown in seconds */
	for (size_t b = 0; b < NBUCKET; b++)
		if (secs <= buckets[b])
			atomic_fetch_add(&latency_bucket[route][b], 1);
	atomic_fetch_add(&latency_count[route], 1);
	atomic_fetch_add(&latency_sum_us[route], (uint_fast64_t)elapsed_us);
}

void metrics_enqueued(const char *task_name, int count)
{
	if (count <= 0)
		return;
	pthread_mutex_lock(&names_lock);
	size_t i;
	for (i = 0; i < nnames; i++)
		if (strcmp(names[i].name, task_name) == 0)
			break;
	if (i == nnames && nnames < MAX_TASK_NAMES && (names[i].name = strdup(task_name)))
		nnames++;
	if (i < nnames)
		names[i].count += (uint64_t)count;
	else
		other_names += (uint64_t)count; /* bounded label set: the rest is "other" */
	pthread_mutex_unlock(&names_lock);
}

void metrics_free(void)
{
	pthread_mutex_lock(&names_lock);
	for (size_t i = 0; i < nnames; i++)
		free(names[i].name);
	nnames = 0;
	pthread_mutex_unlock(&names_lock);
}

struct buf {
	char *p;
	size_t len, cap;
	int oom;
};

__attribute__((format(printf, 2, 3))) static void put(struct buf *b, const char *fmt, ...)
{
	while (!b->oom) {
		va_list ap;
		va_start(ap, fmt);
		size_t room = b->cap - b->len;
		int n = b->p ? vsnprintf(b->p + b->len, room, fmt, ap) : -1;
		va_end(ap);
		if (n >= 0 && (size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? b->cap * 2 : 8192;
		if (n >= 0 && cap < b->len + (size_t)n + 1)
			cap = b->len + (size_t)n + 1;
		char *np = realloc(b->p, cap);
		if (np == NULL) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
}

/* Prometheus label value escaping: backslash, double quote, newline. */
static void put_label(struct buf *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			put(b, "\\%c", *v);
		else if (*v == '\n')
			put(b, "\\n");
		else
			put(b, "%c", *v);
	}
}

char *metrics_render(size_t *len, struct server *srv)
{
	struct buf b = {0};
	put(&b, "# HELP aiqueue_http_requests_total HTTP requests by route and status.\n"
	        "# TYPE aiqueue_http_requests_total counter\n");
	for (int r = 0; r < ROUTE_COUNT; r++)
		for (size_t s = 0; s <= NSTATUS; s++) {
			uint64_t v = atomic_load(&requests[r][s]);
			if (v == 0)
				continue;
			char code[16];
			if (s == NSTATUS)
				snprintf(code, sizeof code, "other");
			else
				snprintf(code, sizeof code, "%d", statuses[s]);
			put(&b, "aiqueue_http_requests_total{route=\"%s\",status=\"%s\"} %llu\n",
			    server_routes[r].label, code, (unsigned long long)v);
		}
	put(&b, "# HELP aiqueue_http_request_duration_seconds HTTP request latency by route.\n"
	        "# TYPE aiqueue_http_request_duration_seconds histogram\n");
	for (int r = 0; r < ROUTE_COUNT; r++) {
		uint64_t count = atomic_load(&latency_count[r]);
		if (count == 0)
			continue;
		const char *l = server_routes[r].label;
		for (size_t i = 0; i < NBUCKET; i++)
			put(&b,
			    "aiqueue_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} "
			    "%llu\n",
			    l, buckets[i], (unsigned long long)atomic_load(&latency_bucket[r][i]));
		put(&b,
		    "aiqueue_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
		    l, (unsigned long long)count);
		put(&b, "aiqueue_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", l,
		    (double)atomic_load(&latency_sum_us[r]) / 1e6);
		put(&b, "aiqueue_http_request_duration_seconds_count{route=\"%s\"} %llu\n", l,
		    (unsigned long long)count);
	}
	put(&b, "# HELP aiqueue_tasks_enqueued_total Tasks enqueued through this server by task "
	        "name.\n"
	        "# TYPE aiqueue_tasks_enqueued_total counter\n");
	pthread_mutex_lock(&names_lock);
	for (size_t i = 0; i < nnames; i++) {
		put(&b, "aiqueue_tasks_enqueued_total{task=\"");
		put_label(&b, names[i].name);
		put(&b, "\"} %llu\n", (unsigned long long)names[i].count);
	}
	if (other_names)
		put(&b, "aiqueue_tasks_enqueued_total{task=\"other\"} %llu\n",
		    (unsigned long long)other_names);
	pthread_mutex_unlock(&names_lock);
	put(&b,
	    "# HELP aiqueue_http_long_polls Long-poll requests waiting right now.\n"
	    "# TYPE aiqueue_http_long_polls gauge\n"
	    "aiqueue_http_long_polls %d\n",
	    atomic_load(&srv->suspended));
	put(&b,
	    "# HELP aiqueue_http_long_polls_refused_total Long polls answered 503 over "
	    "--max-long-polls.\n"
	    "# TYPE aiqueue_http_long_polls_refused_total counter\n"
	    "aiqueue_http_long_polls_refused_total %llu\n"
	    "# HELP aiqueue_http_header_timeouts_total Connections closed for not sending their "
	    "headers within --header-timeout.\n"
	    "# TYPE aiqueue_http_header_timeouts_total counter\n"
	    "aiqueue_http_header_timeouts_total %llu\n"
	    "# HELP aiqueue_broker_circuit_open 1 while broker and store calls fail fast.\n"
	    "# TYPE aiqueue_broker_circuit_open gauge\n"
	    "aiqueue_broker_circuit_open %d\n"
	    "# HELP aiqueue_broker_circuit_trips_total Times the circuit breaker opened.\n"
	    "# TYPE aiqueue_broker_circuit_trips_total counter\n"
	    "aiqueue_broker_circuit_trips_total %llu\n",
	    (unsigned long long)atomic_load(&srv->long_polls_refused),
	    (unsigned long long)atomic_load(&srv->header_timeouts), breaker_is_open(&srv->breaker),
	    (unsigned long long)atomic_load(&srv->breaker.trips));
	if (srv->worker) {
		static const struct {
			const char *name, *help;
		} wc[] = {
		        {"aiqueue_worker_tasks_succeeded_total", "Tasks that succeeded."},
		        {"aiqueue_worker_tasks_failed_total", "Tasks that failed."},
		        {"aiqueue_worker_tasks_retried_total", "Tasks rescheduled for a retry."},
		        {"aiqueue_worker_tasks_revoked_total", "Tasks revoked or expired."},
		        {"aiqueue_worker_tasks_dead_lettered_total", "Messages dead-lettered."},
		        {"aiqueue_worker_tasks_running", "Tasks running right now."},
		};
		for (int i = 0; i < 6; i++)
			put(&b, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", wc[i].name, wc[i].help,
			    wc[i].name, i == 5 ? "gauge" : "counter", wc[i].name,
			    (long long)aiq_worker_counter(srv->worker, i));
	}
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}
