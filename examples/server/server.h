/*
 * aiqueue-server internals shared between its files. Public API only.
 */
#ifndef AIQ_SERVER_H
#define AIQ_SERVER_H

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Routes, also the "route" label of the metrics. */
enum route {
	ROUTE_ANALYZE = 0,
	ROUTE_ANALYZE_BATCH,
	ROUTE_TASKS,
	ROUTE_TASK,
	ROUTE_HEALTHZ,
	ROUTE_READYZ,
	ROUTE_METRICS,
	ROUTE_OPENAPI,
	ROUTE_DASHBOARD, /* the page and its assets: public, no data */
	ROUTE_DASHBOARD_JS,
	ROUTE_DASHBOARD_CSS,
	ROUTE_DASHBOARD_STATE,
	ROUTE_DASHBOARD_STREAM,
	ROUTE_DEAD_LETTERS,
	ROUTE_DEAD_LETTER,
	ROUTE_DEAD_LETTER_REQUEUE,
	ROUTE_TRACK_SIMILAR,
	ROUTE_OTHER, /* no route matched */
	ROUTE_COUNT
};

/* Methods a route may allow (bit set). */
enum {
	M_GET = 1,
	M_POST = 2,
	M_DELETE = 4,
	M_HEAD = 8,
};

struct route_info {
	const char *path;  /* as in the OpenAPI document */
	const char *label; /* metrics label */
	int methods;
	int public_route; /* no bearer token needed */
	int page;         /* a dashboard page: Content-Security-Policy */
};

extern const struct route_info server_routes[ROUTE_COUNT];

struct server_options {
	char *listen_host;
	unsigned port;
	unsigned threads;
	unsigned broker_threads; /* threads making broker and store calls */
	int workers;             /* embedded workers (pool threads); 0 = none */
	size_t max_body;
	size_t max_batch;
	double max_wait_s;
	unsigned idle_timeout_s;
	unsigned header_timeout_s; /* absolute: first byte to end of headers */
	unsigned max_connections;
	unsigned max_connections_per_ip;
	unsigned max_long_polls;
	double breaker_cooldown_s;
	const char *api_token;
	int log_level;
};

/* Circuit breaker over the broker and store: after a connection failure,
 * requests that need them answer 503 at once for the cool-down, then one
 * request probes (half-open) and its outcome closes or re-opens it. */
enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN };
struct breaker {
	pthread_mutex_t lock;
	enum breaker_state state;
	int64_t open_until_ms;
	int64_t cooldown_ms;
	atomic_uint_fast64_t trips;
};
void breaker_init(struct breaker *b, int64_t cooldown_ms);
/* May a request call the broker now? Sets *probe when it is the half-open
 * probe and *retry_s to the seconds left when refused. */
int breaker_admit(struct breaker *b, int *probe, unsigned *retry_s);
/* Still allowed when a queued job starts (the breaker may have opened since). */
int breaker_allows(struct breaker *b, int probe, unsigned *retry_s);
/* Outcome of a broker or store call (or of connecting). */
void breaker_report(struct breaker *b, int rc);
/* The probe ended without any broker call: let the next request probe. */
void breaker_probe_done(struct breaker *b);
int breaker_is_open(struct breaker *b);

/* A client pool: aiq_client is not thread-safe, so each request borrows one. */
struct client_pool;
int client_pool_new(struct client_pool **out, const aiq_config *cfg, struct breaker *b);
void client_pool_free(struct client_pool *p);
/* Borrow a client (connecting a new one when none is idle); returns an AIQ_E*
 * code, with the detail in aiq_error_last(). */
int client_pool_get(aiq_client **out, struct client_pool *p);
void client_pool_put(struct client_pool *p, aiq_client *c);
/* Return a client after a call that gave @p rc: kept unless its connection
 * failed; the outcome also feeds the circuit breaker. */
void client_pool_done(struct client_pool *p, aiq_client *c, int rc);

/* One TCP connection, for the absolute header deadline. */
struct conn_track {
	struct conn_track *prev, *next;
	struct MHD_Connection *conn;
	int64_t header_deadline_ms; /* INT64_MAX: in a request, or already cut */
};

struct request;
struct sse_client;
struct dashboard;

struct server {
	struct server_options opt;
	aiq_config *cfg;
	char *task_name;                /* analyze.task_name */
	char *broker_url, *backend_url; /* as configured, to scrub from messages */
	struct client_pool *clients;
	struct breaker breaker;
	struct MHD_Daemon *daemon;
	aiq_worker *worker; /* embedded mode, else NULL */
	/* GET /tracks/{id}/similar: opened on first use (routes.c), NULL until then. */
	_Atomic(aiq_similar *) similar;
	atomic_int draining;
	struct dashboard *dash; /* dashboard.c; NULL: no dashboard data */
	/* http.c: start a Server-Sent Events stream (NULL without a transport). */
	enum MHD_Result (*stream_start)(struct request *req);

	/* The dashboard ticker (http.c) and the streams it wakes. */
	pthread_mutex_t sse_lock;
	pthread_cond_t sse_cond;
	struct sse_client *sse_clients;
	int sse_stop;
	int sse_started;
	atomic_int_fast64_t dash_interest_ms; /* last GET /dashboard/state (monotonic) */
	pthread_t sse_thread;

	/* Broker calls run on these threads, never on MHD's (a slow broker must
	 * not hold up /healthz): the connection is suspended meanwhile. */
	pthread_mutex_t job_lock;
	pthread_cond_t job_cond;
	struct request *job_head, *job_tail;
	int job_stop;
	pthread_t *jobs;
	unsigned njobs;

	/* One watcher thread answers every long poll and enforces the header
	 * deadline. */
	pthread_mutex_t poll_lock;
	pthread_cond_t poll_cond;
	struct request *polls; /* pending long polls (list via poll_next) */
	int poll_stop;
	int watcher_started;
	pthread_t watcher;
	atomic_int suspended; /* long polls waiting right now */

	pthread_mutex_t conn_lock;
	struct conn_track *conns;
	atomic_uint_fast64_t header_timeouts;
	atomic_uint_fast64_t long_polls_refused;
};

enum req_kind { REQ_HEADER, REQ_QUERY };

/* One HTTP request (MHD's per-request context, or server_handle()'s). */
struct request {
	struct server *srv;
	struct MHD_Connection *conn; /* NULL without a transport */
	/* The transport: a header or query value by name (NULL when absent),
	 * and the sending of a reply (NULL: keep it in reply_* below). */
	const char *(*lookup)(struct request *req, enum req_kind kind, const char *key);
	const void *lookup_ctx;
	enum MHD_Result (*emit)(struct request *req, unsigned status, const char *content_type,
	                        char *text, size_t len);
	char *reply_body;
	size_t reply_len;
	const char *reply_type;
	enum route route;
	int method;
	int64_t start_us;
	int status; /* the status sent, for metrics */
	int responded;
	char *body;
	size_t body_len, body_cap;
	size_t discarded; /* body bytes dropped after the limit */
	int too_big;
	int close_after;      /* reply with Connection: close */
	unsigned retry_after; /* seconds; 0 = no Retry-After header */
	char task_id[160];

	/* Work off MHD's threads: the reply is built there and queued on resume. */
	int deferred; /* on a job or watcher thread: reply_* stores the response */
	int suspended;
	int probe;       /* the circuit breaker's half-open probe */
	int poll_wanted; /* a long poll with its slot reserved, for the watcher */
	struct MHD_Response *pending;
	unsigned pending_status;
	struct request *job_next;

	/* long-poll */
	int64_t deadline_ms;
	int64_t next_check_ms;
	int64_t interval_ms;
	struct request *poll_next;
};

/* core.c: one request without a transport. Headers and query are name,
 * value pairs (header names compare case-insensitively); path is decoded and
 * without the query, nul_in_target says the raw target held "%00". */
struct http_input {
	const char *method;
	const char *path;
	int nul_in_target;
	const char *const *headers;
	size_t nheaders;
	const char *const *query;
	size_t nquery;
	const char *body;
	size_t body_len;
};
struct http_output {
	unsigned status; /* 0 when no reply could be built (out of memory) */
	char *body;      /* malloc'd, the caller frees it */
	size_t len;
	const char *content_type; /* static */
	int close;                /* the transport would close the connection */
};
/* Run a request through the header checks, the body limit and its route, as
 * server_access() does minus the transport (no threads: the handler runs on
 * the calling thread; a long poll is answered at once). 0 when a reply was
 * built, -1 when not. */
int server_handle(struct http_output *out, struct server *srv, const struct http_input *in);
const char *req_header(struct request *req, const char *name);
const char *req_query(struct request *req, const char *name);
int parse_method(const char *m);
enum route match_route(struct request *req, const char *url);
/* First call for a request: everything that can be decided from the headers. */
enum MHD_Result check_headers(struct request *req, int nul);
void append_body(struct request *req, const char *data, size_t size);
/* Routes whose handlers call the broker or the store. */
int needs_broker(enum route r);

/* http.c */
enum MHD_Result server_access(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls);
void server_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe);
void server_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe);
void *server_uri_log(void *cls, const char *uri, struct MHD_Connection *conn);
enum MHD_Result reply_json(struct request *req, unsigned status, json_t *body);
enum MHD_Result reply_text(struct request *req, unsigned status, const char *content_type,
                           char *text, size_t len);
enum MHD_Result reply_error(struct request *req, unsigned status, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* 503 with Retry-After while the broker is known down. */
enum MHD_Result reply_unavailable(struct request *req, unsigned retry_s);
int threads_start(struct server *srv);
void jobs_stop(struct server *srv);
void watcher_stop(struct server *srv);

/* Hand a suspended long poll to the watcher (from a job thread); -1 when
 * --max-long-polls are already waiting. */
int long_poll_submit(struct request *req);
int64_t mono_us(void);
/* Copy @p in to @p out with every URL's secrets hidden (aiq_url_redact). */
void scrub_secrets(char *out, size_t n, const char *in);

/* routes.c */
enum MHD_Result route_dispatch(struct request *req);
json_t *task_state_json(const aiq_result *r);
unsigned status_for_error(int rc);
/* Close the similarity handle, if one was opened (at shutdown). */
void similar_close(struct server *srv);

/* metrics.c */
void metrics_init(void);
void metrics_request(enum route route, int status, int64_t elapsed_us);
void metrics_enqueued(const char *task_name, int count);
char *metrics_render(size_t *len, struct server *srv);
void metrics_free(void);

/* dashboard.c: what the dashboard shows (no MHD calls: the fuzzer links it). */
#define DASH_DEMO_TASK "aiqueue.demo.progress"
#define DASH_TICK_MS   500
struct dash_asset {
	const char *name, *type;
	const unsigned char *data;
	size_t len;
};
extern const struct dash_asset dash_assets[]; /* dashboard_assets.c, generated */
extern const size_t dash_assets_count;
int dash_new(struct server *srv);
void dash_free(struct server *srv);
/* A task sent through this server (args and kwargs as JSON text, copied). */
void dash_track(struct server *srv, const char *id, const char *name, const char *args,
                const char *kwargs);
/* The embedded worker's event callback (userdata: the server); logs it too. */
void dash_worker_event(int event, const char *task_id, const char *task_name, const char *detail,
                       void *userdata);
int dash_register_demo(aiq_worker *w);
/* Read the store and broker and render a new snapshot (the ticker's job). */
void dash_refresh(struct server *srv);
/* One Celery event (a JSON object with "type"), from evrecv.c's thread. */
void dash_celery_event(struct server *srv, const json_t *ev);
/* evrecv.c: receive Celery events for the dashboard when the broker carries
 * them (not memory://); 0 when started or not applicable. */
int evrecv_start(struct server *srv);
void evrecv_stop(void);
/* A copy of the latest snapshot (JSON text, free()) and its generation. */
char *dash_snapshot(struct server *srv, size_t *len, uint64_t *generation);
enum MHD_Result handle_dash_asset(struct request *req);
enum MHD_Result handle_dash_state(struct request *req);
enum MHD_Result handle_dead_letters(struct request *req);
enum MHD_Result handle_dead_letter_delete(struct request *req);
enum MHD_Result handle_dead_letter_requeue(struct request *req);
/* The stream without a transport, or for a client that did not ask for
 * text/event-stream: one event with the snapshot, then the end. */
enum MHD_Result reply_stream_once(struct request *req);

/* http.c: the ticker thread that refreshes the snapshot and wakes streams. */
int dash_ticker_start(struct server *srv);
void dash_ticker_stop(struct server *srv);
enum MHD_Result sse_stream_start(struct request *req);

/* openapi.c */
json_t *openapi_document(void);

#endif /* AIQ_SERVER_H */
