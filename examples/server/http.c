/*
 * Request plumbing: route matching, header checks (auth, content type, size),
 * body collection, JSON replies, the client pool and the long-poll waiters.
 */
#include "server.h"

#include "../common/progutil.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const struct route_info server_routes[ROUTE_COUNT] = {
        [ROUTE_ANALYZE] = {"/analyze", "/analyze", M_POST, 0},
        [ROUTE_ANALYZE_BATCH] = {"/analyze/batch", "/analyze/batch", M_POST, 0},
        [ROUTE_TASKS] = {"/tasks", "/tasks", M_POST, 0},
        [ROUTE_TASK] = {"/tasks/{task_id}", "/tasks/{task_id}", M_GET | M_HEAD | M_DELETE, 0},
        [ROUTE_HEALTHZ] = {"/healthz", "/healthz", M_GET | M_HEAD, 1},
        [ROUTE_READYZ] = {"/readyz", "/readyz", M_GET | M_HEAD, 1},
        [ROUTE_METRICS] = {"/metrics", "/metrics", M_GET | M_HEAD, 1},
        [ROUTE_OPENAPI] = {"/openapi.json", "/openapi.json", M_GET | M_HEAD, 1},
        [ROUTE_OTHER] = {NULL, "other", 0, 1},
};

/* ---- client pool --------------------------------------------------------- */

struct client_pool {
	pthread_mutex_t lock;
	aiq_config *cfg;
	aiq_client **idle;
	size_t nidle, cap;
};

int client_pool_new(struct client_pool **out, const aiq_config *cfg)
{
	struct client_pool *p = calloc(1, sizeof *p);
	if (p == NULL)
		return AIQ_ENOMEM;
	int rc = aiq_config_copy(&p->cfg, cfg);
	if (rc != AIQ_OK) {
		free(p);
		return rc;
	}
	pthread_mutex_init(&p->lock, NULL);
	*out = p;
	return AIQ_OK;
}

void client_pool_free(struct client_pool *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->nidle; i++)
		aiq_client_free(p->idle[i]);
	free(p->idle);
	aiq_config_free(p->cfg);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

int client_pool_get(aiq_client **out, struct client_pool *p)
{
	pthread_mutex_lock(&p->lock);
	if (p->nidle > 0) {
		*out = p->idle[--p->nidle];
		pthread_mutex_unlock(&p->lock);
		return AIQ_OK;
	}
	/* Connecting happens outside the lock: a slow broker must not hold up
	 * requests that could reuse an idle client. The config is only read. */
	pthread_mutex_unlock(&p->lock);
	return aiq_client_new(out, p->cfg);
}

void client_pool_put(struct client_pool *p, aiq_client *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->nidle == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 8;
		aiq_client **n = realloc(p->idle, cap * sizeof *n);
		if (n == NULL) {
			pthread_mutex_unlock(&p->lock);
			aiq_client_free(c);
			return;
		}
		p->idle = n;
		p->cap = cap;
	}
	p->idle[p->nidle++] = c;
	pthread_mutex_unlock(&p->lock);
}

void client_pool_done(struct client_pool *p, aiq_client *c, int rc)
{
	/* A client whose connection failed is dropped; the next request reconnects. */
	if (rc == AIQ_EBROKER || rc == AIQ_ESTORE)
		aiq_client_free(c);
	else
		client_pool_put(p, c);
}

/* ---- replies ------------------------------------------------------------- */

static void add_common_headers(struct request *req, struct MHD_Response *resp)
{
	if (atomic_load(&req->srv->draining))
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	if (req->status == MHD_HTTP_METHOD_NOT_ALLOWED) {
		char allow[64] = "";
		int m = server_routes[req->route].methods;
		static const struct {
			int bit;
			const char *name;
		} names[] = {
		        {M_GET, "GET"}, {M_HEAD, "HEAD"}, {M_POST, "POST"}, {M_DELETE, "DELETE"}};
		for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
			if (m & names[i].bit) {
				if (allow[0])
					strcat(allow, ", ");
				strcat(allow, names[i].name);
			}
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
	}
	if (req->status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
}

enum MHD_Result reply_text(struct request *req, unsigned status, const char *content_type,
                           char *text, size_t len)
{
	/* MHD takes ownership of the buffer and free()s it. */
	struct MHD_Response *resp =
	        MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (resp == NULL) {
		free(text);
		return MHD_NO;
	}
	req->status = (int)status;
	req->responded = 1;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	add_common_headers(req, resp);
	enum MHD_Result r = MHD_queue_response(req->conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

enum MHD_Result reply_json(struct request *req, unsigned status, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (text == NULL) {
		const char oom[] = "{\"detail\":\"out of memory\"}";
		text = strdup(oom);
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		if (text == NULL)
			return MHD_NO;
	}
	return reply_text(req, status, "application/json", text, strlen(text));
}

enum MHD_Result reply_error(struct request *req, unsigned status, const char *fmt, ...)
{
	char detail[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	/* json_string rejects invalid UTF-8 (a detail may quote input). */
	json_t *d = json_string(detail);
	if (d == NULL)
		d = json_string("invalid request");
	return reply_json(req, status, json_pack("{so}", "detail", d));
}

/* ---- header checks ------------------------------------------------------- */

static int parse_method(const char *m)
{
	if (strcmp(m, "GET") == 0)
		return M_GET;
	if (strcmp(m, "POST") == 0)
		return M_POST;
	if (strcmp(m, "DELETE") == 0)
		return M_DELETE;
	if (strcmp(m, "HEAD") == 0)
		return M_HEAD;
	return 0;
}

/* Match @p url (path only: MHD strips the query) to a route. */
static enum route match_route(struct request *req, const char *url)
{
	for (int r = 0; r < ROUTE_OTHER; r++)
		if (r != ROUTE_TASK && strcmp(url, server_routes[r].path) == 0)
			return (enum route)r;
	const char prefix[] = "/tasks/";
	if (strncmp(url, prefix, sizeof prefix - 1) == 0) {
		const char *id = url + sizeof prefix - 1;
		size_t n = strlen(id);
		if (n > 0 && n < sizeof req->task_id && strchr(id, '/') == NULL) {
			memcpy(req->task_id, id, n + 1);
			return ROUTE_TASK;
		}
	}
	return ROUTE_OTHER;
}

/* Compare without leaking where the first difference is. */
static int token_equal(const char *given, size_t glen, const char *want)
{
	size_t wlen = strlen(want);
	unsigned char diff = (unsigned char)(glen != wlen);
	for (size_t i = 0; i < wlen; i++) {
		unsigned char g = i < glen ? (unsigned char)given[i] : 0;
		diff |= (unsigned char)(g ^ (unsigned char)want[i]);
	}
	return diff == 0;
}

static int authorized(struct request *req)
{
	const char *token = req->srv->opt.api_token;
	if (token == NULL || *token == '\0' || server_routes[req->route].public_route)
		return 1;
	const char *h = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
	                                            MHD_HTTP_HEADER_AUTHORIZATION);
	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return 0;
	h += 7;
	while (*h == ' ')
		h++;
	return token_equal(h, strlen(h), token);
}

static int json_content_type(struct request *req)
{
	const char *ct = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
	                                             MHD_HTTP_HEADER_CONTENT_TYPE);
	if (ct == NULL)
		return 0;
	while (*ct == ' ')
		ct++;
	const char want[] = "application/json";
	if (strncasecmp(ct, want, sizeof want - 1) != 0)
		return 0;
	char next = ct[sizeof want - 1];
	return next == '\0' || next == ';' || next == ' ';
}

/* First call for a request: everything that can be decided from the headers. */
static enum MHD_Result check_headers(struct request *req)
{
	struct server *srv = req->srv;
	if (req->route == ROUTE_OTHER)
		return reply_error(req, MHD_HTTP_NOT_FOUND, "Not Found");
	if (!(server_routes[req->route].methods & req->method)) {
		req->status = MHD_HTTP_METHOD_NOT_ALLOWED; /* add_common_headers adds Allow */
		return reply_error(req, MHD_HTTP_METHOD_NOT_ALLOWED, "Method Not Allowed");
	}
	if (!authorized(req))
		return reply_error(req, MHD_HTTP_UNAUTHORIZED, "missing or invalid bearer token");
	if (req->method != M_POST)
		return MHD_YES;
	if (!json_content_type(req))
		return reply_error(req, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
		                   "Content-Type must be application/json");
	const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
	                                             MHD_HTTP_HEADER_CONTENT_LENGTH);
	long long n;
	if (cl != NULL && prog_parse_int(&n, cl, 0, INT64_MAX) == 0 &&
	    (unsigned long long)n > srv->opt.max_body)
		return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE,
		                   "request body over the limit of %zu bytes", srv->opt.max_body);
	return MHD_YES;
}

static void append_body(struct request *req, const char *data, size_t size)
{
	if (req->too_big)
		return;
	if (size > req->srv->opt.max_body - req->body_len) {
		req->too_big = 1;
		free(req->body);
		req->body = NULL;
		req->body_len = req->body_cap = 0;
		return;
	}
	if (req->body_len + size + 1 > req->body_cap) {
		size_t cap = req->body_cap ? req->body_cap : 1024;
		while (cap < req->body_len + size + 1)
			cap *= 2;
		char *b = realloc(req->body, cap);
		if (b == NULL) {
			req->too_big = 1;
			return;
		}
		req->body = b;
		req->body_cap = cap;
	}
	memcpy(req->body + req->body_len, data, size);
	req->body_len += size;
	req->body[req->body_len] = '\0';
}

enum MHD_Result server_access(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
	struct server *srv = cls;
	struct request *req = *con_cls;
	(void)version;
	if (req == NULL) {
		req = calloc(1, sizeof *req);
		if (req == NULL)
			return MHD_NO;
		req->srv = srv;
		req->conn = conn;
		req->start_ms = prog_mono_ms();
		req->method = parse_method(method);
		req->route = match_route(req, url);
		*con_cls = req;
		return check_headers(req);
	}
	if (req->responded) {
		/* Rejected from the headers (or after the limit): drop the rest. */
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		append_body(req, upload_data, *upload_data_size);
		*upload_data_size = 0;
		if (req->too_big)
			return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE,
			                   "request body over the limit of %zu bytes",
			                   srv->opt.max_body);
		return MHD_YES;
	}
	if (req->wait_done) {
		json_t *reply = req->wait_reply;
		req->wait_reply = NULL;
		return reply_json(req, (unsigned)req->wait_status, reply);
	}
	if (req->waiting)
		return MHD_YES; /* resumed spuriously; the waiter still owns it */
	return route_dispatch(req);
}

void server_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
	struct request *req = *con_cls;
	(void)cls;
	(void)conn;
	if (req == NULL)
		return;
	int status = req->responded ? req->status : 0;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && !req->responded)
		status = 0;
	metrics_request(req->route, status, prog_mono_ms() - req->start_ms);
	if (prog_log_level() <= AIQ_LOG_DEBUG)
		prog_log(AIQ_LOG_DEBUG, "request", "route=%s status=%d ms=%lld",
		         server_routes[req->route].label, status,
		         (long long)(prog_mono_ms() - req->start_ms));
	json_decref(req->wait_reply);
	free(req->body);
	free(req);
	*con_cls = NULL;
}

/* ---- long-poll waiters --------------------------------------------------- */

/* Answer one long poll and resume its connection. */
static void wait_job(struct server *srv, struct request *req, int64_t left)
{
	aiq_client *c = NULL;
	aiq_result *r = NULL;
	int rc = client_pool_get(&c, srv->clients);
	if (rc == AIQ_OK)
		rc = left > 0 ? aiq_client_wait(&r, c, req->task_id, left)
		              : aiq_client_get_result(&r, c, req->task_id);
	if (r != NULL && (rc == AIQ_OK || rc == AIQ_ETIMEDOUT)) {
		req->wait_status = MHD_HTTP_OK;
		req->wait_reply = task_state_json(r);
	} else {
		req->wait_status = (int)status_for_error(rc);
		req->wait_reply = json_pack("{ss}", "detail", aiq_error_last());
	}
	aiq_result_free(r);
	client_pool_done(srv->clients, c, rc);
	req->wait_done = 1;
	req->waiting = 0;
	atomic_fetch_sub(&srv->suspended, 1);
	MHD_resume_connection(req->conn);
}

static void *waiter_main(void *arg)
{
	struct server *srv = arg;
	for (;;) {
		pthread_mutex_lock(&srv->wait_lock);
		while (srv->wait_head == NULL && !srv->wait_stop)
			pthread_cond_wait(&srv->wait_cond, &srv->wait_lock);
		struct request *req = srv->wait_head;
		if (req == NULL) {
			pthread_mutex_unlock(&srv->wait_lock);
			break;
		}
		srv->wait_head = req->wait_next;
		if (srv->wait_head == NULL)
			srv->wait_tail = NULL;
		/* While stopping, answer queued waits with the current state at once. */
		int64_t left = srv->wait_stop ? 0 : req->deadline_ms - prog_mono_ms();
		pthread_mutex_unlock(&srv->wait_lock);
		wait_job(srv, req, left);
	}
	return NULL;
}

int waiters_start(struct server *srv)
{
	pthread_mutex_init(&srv->wait_lock, NULL);
	pthread_cond_init(&srv->wait_cond, NULL);
	srv->waiters = calloc(srv->opt.wait_threads, sizeof *srv->waiters);
	if (srv->waiters == NULL)
		return -1;
	for (unsigned i = 0; i < srv->opt.wait_threads; i++) {
		if (pthread_create(&srv->waiters[i], NULL, waiter_main, srv) != 0)
			return -1;
		srv->nwaiters++;
	}
	return 0;
}

void waiters_stop(struct server *srv)
{
	if (srv->waiters == NULL)
		return;
	pthread_mutex_lock(&srv->wait_lock);
	srv->wait_stop = 1;
	pthread_cond_broadcast(&srv->wait_cond);
	pthread_mutex_unlock(&srv->wait_lock);
	for (unsigned i = 0; i < srv->nwaiters; i++)
		pthread_join(srv->waiters[i], NULL);
	free(srv->waiters);
	srv->waiters = NULL;
	pthread_cond_destroy(&srv->wait_cond);
	pthread_mutex_destroy(&srv->wait_lock);
}

void waiters_submit(struct request *req)
{
	struct server *srv = req->srv;
	req->waiting = 1;
	req->wait_next = NULL;
	atomic_fetch_add(&srv->suspended, 1);
	MHD_suspend_connection(req->conn);
	pthread_mutex_lock(&srv->wait_lock);
	if (srv->wait_stop) {
		/* The waiters are gone (shutting down): answer with the state now. */
		pthread_mutex_unlock(&srv->wait_lock);
		wait_job(srv, req, 0);
		return;
	}
	if (srv->wait_tail)
		srv->wait_tail->wait_next = req;
	else
		srv->wait_head = req;
	srv->wait_tail = req;
	pthread_cond_signal(&srv->wait_cond);
	pthread_mutex_unlock(&srv->wait_lock);
}
