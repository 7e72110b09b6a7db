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
};

extern const struct route_info server_routes[ROUTE_COUNT];

struct server_options {
	char *listen_host;
	unsigned port;
	unsigned threads;
	unsigned wait_threads;
	int workers; /* embedded workers (pool threads); 0 = none */
	size_t max_body;
	size_t max_batch;
	double max_wait_s;
	unsigned idle_timeout_s;
	const char *api_token;
	int log_level;
};

/* A client pool: aiq_client is not thread-safe, so each request borrows one. */
struct client_pool;
int client_pool_new(struct client_pool **out, const aiq_config *cfg);
void client_pool_free(struct client_pool *p);
/* Borrow a client (connecting a new one when none is idle); returns an AIQ_E*
 * code, with the detail in aiq_error_last(). */
int client_pool_get(aiq_client **out, struct client_pool *p);
void client_pool_put(struct client_pool *p, aiq_client *c);
/* Return a client after a call that gave @p rc: kept unless its connection failed. */
void client_pool_done(struct client_pool *p, aiq_client *c, int rc);

struct server {
	struct server_options opt;
	aiq_config *cfg;
	char *task_name; /* analyze.task_name */
	struct client_pool *clients;
	struct MHD_Daemon *daemon;
	aiq_worker *worker; /* embedded mode, else NULL */
	atomic_int draining;

	/* Long-poll waiters: suspended connections wait on these threads. */
	pthread_mutex_t wait_lock;
	pthread_cond_t wait_cond;
	struct request *wait_head, *wait_tail;
	int wait_stop;
	pthread_t *waiters;
	unsigned nwaiters;
	atomic_int suspended; /* connections suspended right now */
};

/* One HTTP request (MHD's per-request context). */
struct request {
	struct server *srv;
	struct MHD_Connection *conn;
	enum route route;
	int method;
	int64_t start_ms;
	int status; /* the status sent, for metrics */
	int responded;
	char *body;
	size_t body_len, body_cap;
	int too_big;
	char task_id[160];

	/* long-poll */
	int64_t deadline_ms;
	int waiting; /* suspended, waiting for a waiter thread */
	int wait_done;
	json_t *wait_reply;
	int wait_status;
	struct request *wait_next;
};

/* http.c */
enum MHD_Result server_access(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls);
void server_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe);
enum MHD_Result reply_json(struct request *req, unsigned status, json_t *body);
enum MHD_Result reply_text(struct request *req, unsigned status, const char *content_type,
                           char *text, size_t len);
enum MHD_Result reply_error(struct request *req, unsigned status, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
int waiters_start(struct server *srv);
void waiters_stop(struct server *srv);
void waiters_submit(struct request *req);

/* routes.c */
enum MHD_Result route_dispatch(struct request *req);
json_t *task_state_json(const aiq_result *r);
unsigned status_for_error(int rc);

/* metrics.c */
void metrics_init(void);
void metrics_request(enum route route, int status, int64_t elapsed_ms);
void metrics_enqueued(const char *task_name, int count);
char *metrics_render(size_t *len, const struct server *srv);
void metrics_free(void);

/* openapi.c */
json_t *openapi_document(void);

#endif /* AIQ_SERVER_H */
