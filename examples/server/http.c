/*
 * Request plumbing: route matching, header checks (auth, content type, size,
 * framing), body collection, JSON replies, the client pool, the circuit
 * breaker, the broker-call threads and the long-poll watcher.
 */
#include "server.h"

#include "../common/progutil.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

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

int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- circuit breaker ----------------------------------------------------- */

void breaker_init(struct breaker *b, int64_t cooldown_ms)
{
	pthread_mutex_init(&b->lock, NULL);
	b->state = BREAKER_CLOSED;
	b->cooldown_ms = cooldown_ms;
}

static unsigned seconds_left(int64_t until_ms, int64_t now)
{
	int64_t left = until_ms - now;
	return left <= 0 ? 1 : (unsigned)((left + 999) / 1000);
}

int breaker_admit(struct breaker *b, int *probe, unsigned *retry_s)
{
	*probe = 0;
	pthread_mutex_lock(&b->lock);
	int64_t now = prog_mono_ms();
	int ok = 1;
	if (b->state == BREAKER_OPEN && now >= b->open_until_ms) {
		b->state = BREAKER_HALF_OPEN; /* this request finds out */
		*probe = 1;
	} else if (b->state == BREAKER_OPEN) {
		ok = 0;
		*retry_s = seconds_left(b->open_until_ms, now);
	} else if (b->state == BREAKER_HALF_OPEN) {
		ok = 0;
		*retry_s = 1;
	}
	pthread_mutex_unlock(&b->lock);
	return ok;
}

int breaker_allows(struct breaker *b, int probe, unsigned *retry_s)
{
	pthread_mutex_lock(&b->lock);
	int ok = b->state == BREAKER_CLOSED || (probe && b->state == BREAKER_HALF_OPEN);
	if (!ok)
		*retry_s = b->state == BREAKER_OPEN ? seconds_left(b->open_until_ms, prog_mono_ms())
		                                    : 1;
	pthread_mutex_unlock(&b->lock);
	return ok;
}

void breaker_report(struct breaker *b, int rc)
{
	if (b->cooldown_ms <= 0)
		return; /* disabled */
	int failed = rc == AIQ_EBROKER || rc == AIQ_ESTORE;
	if (!failed && rc != AIQ_OK && rc != AIQ_ESTATE)
		return; /* not about the connection */
	pthread_mutex_lock(&b->lock);
	if (failed) {
		if (b->state != BREAKER_OPEN)
			atomic_fetch_add(&b->trips, 1);
		b->state = BREAKER_OPEN;
		b->open_until_ms = prog_mono_ms() + b->cooldown_ms;
	} else {
		b->state = BREAKER_CLOSED;
	}
	pthread_mutex_unlock(&b->lock);
}

void breaker_probe_done(struct breaker *b)
{
	pthread_mutex_lock(&b->lock);
	if (b->state == BREAKER_HALF_OPEN) {
		/* The probe made no broker call (say, a 422): the next request probes. */
		b->state = BREAKER_OPEN;
		b->open_until_ms = prog_mono_ms();
	}
	pthread_mutex_unlock(&b->lock);
}

int breaker_is_open(struct breaker *b)
{
	pthread_mutex_lock(&b->lock);
	int open = b->state != BREAKER_CLOSED;
	pthread_mutex_unlock(&b->lock);
	return open;
}

/* ---- client pool --------------------------------------------------------- */

struct client_pool {
	pthread_mutex_t lock;
	aiq_config *cfg;
	struct breaker *breaker;
	aiq_client **idle;
	size_t nidle, cap;
};

int client_pool_new(struct client_pool **out, const aiq_config *cfg, struct breaker *b)
{
	struct client_pool *p = calloc(1, sizeof *p);
	if (p == NULL)
		return AIQ_ENOMEM;
	int rc = aiq_config_copy(&p->cfg, cfg);
	if (rc != AIQ_OK) {
		free(p);
		return rc;
	}
	p->breaker = b;
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
	int rc = aiq_client_new(out, p->cfg);
	if (rc != AIQ_OK) {
		*out = NULL;
		breaker_report(p->breaker, rc);
	}
	return rc;
}

void client_pool_put(struct client_pool *p, aiq_client *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->nidle == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 8;
		aiq_client **n = realloc(p->idle, cap * sizeof(aiq_client *));
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
	if (c == NULL)
		return; /* connecting failed: already reported */
	breaker_report(p->breaker, rc);
	/* A client whose connection failed is dropped; the next request reconnects. */
	if (rc == AIQ_EBROKER || rc == AIQ_ESTORE)
		aiq_client_free(c);
	else
		client_pool_put(p, c);
}

/* ---- secrets ------------------------------------------------------------- */

static int scheme_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '-' || c == '.';
}

/* One URL of length len, through the library's redactor (the one the
 * worker and the CLI use too). */
static int redact_url(char *out, size_t n, const char *url, size_t len)
{
	char *tmp = strndup(url, len), *safe = NULL;
	int w = tmp && aiq_url_redact(&safe, tmp) == AIQ_OK
	                ? snprintf(out, n, "%s", safe)
	                : snprintf(out, n, "%.*s://***", (int)(strstr(url, "://") - url), url);
	aiq_free(safe);
	free(tmp);
	return w;
}

void scrub_secrets(char *out, size_t n, const char *in)
{
	size_t o = 0;
	if (n == 0)
		return;
	const char *p = in ? in : "";
	while (*p && o + 1 < n) {
		const char *sep = strstr(p, "://");
		if (sep == NULL) {
			snprintf(out + o, n - o, "%s", p);
			return;
		}
		const char *start = sep;
		while (start > p && scheme_char(start[-1]))
			start--;
		const char *end = sep + 3;
		while (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\'' &&
		       *end != '"' && *end != '<' && *end != '>')
			end++;
		int w = snprintf(out + o, n - o, "%.*s", (int)(start - p), p);
		o += w > 0 ? (size_t)w : 0;
		if (o + 1 >= n)
			break;
		w = redact_url(out + o, n - o, start, (size_t)(end - start));
		o += w > 0 ? (size_t)w : 0;
		p = end;
	}
	out[o < n ? o : n - 1] = '\0';
}

/* ---- replies ------------------------------------------------------------- */

static void add_common_headers(struct request *req, struct MHD_Response *resp)
{
	if (atomic_load(&req->srv->draining) || req->close_after)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	if (req->retry_after > 0) {
		char v[16];
		snprintf(v, sizeof v, "%u", req->retry_after);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
	}
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
				size_t used = strlen(allow);
				snprintf(allow + used, sizeof allow - used, "%s%s",
				         used ? ", " : "", names[i].name);
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
	if (req->deferred) {
		/* Off MHD's threads: queued by server_access once resumed. */
		req->pending = resp;
		req->pending_status = status;
		return MHD_YES;
	}
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
	char detail[512], safe[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	/* A detail may quote a library message that names a URL. */
	scrub_secrets(safe, sizeof safe, detail);
	/* json_string rejects invalid UTF-8 (a detail may quote input). */
	json_t *d = json_string(safe);
	if (d == NULL)
		d = json_string("invalid request");
	return reply_json(req, status, json_pack("{so}", "detail", d));
}

enum MHD_Result reply_unavailable(struct request *req, unsigned retry_s)
{
	req->retry_after = retry_s ? retry_s : 1;
	return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE,
	                   "broker or result store unavailable; retry in %u s", req->retry_after);
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

/* The marker server_uri_log returns for a request target with an encoded NUL. */
static char nul_in_target;

void *server_uri_log(void *cls, const char *uri, struct MHD_Connection *conn)
{
	(void)cls;
	(void)conn;
	/* MHD decodes the path into a C string: "%00" would cut it (a task id
	 * "abc%00def" would read as "abc"). Seen here, before decoding. */
	return uri && strstr(uri, "%00") ? &nul_in_target : NULL;
}

/* First call for a request: everything that can be decided from the headers. */
static enum MHD_Result check_headers(struct request *req, int nul)
{
	struct server *srv = req->srv;
	const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
	                                             MHD_HTTP_HEADER_CONTENT_LENGTH);
	const char *te = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
	                                             MHD_HTTP_HEADER_TRANSFER_ENCODING);
	if (cl != NULL && te != NULL) {
		/* RFC 9112 §6.3: a request smuggling vector; refuse and close. */
		req->close_after = 1;
		return reply_error(req, MHD_HTTP_BAD_REQUEST,
		                   "both Content-Length and Transfer-Encoding given");
	}
	if (nul) {
		req->close_after = 1;
		return reply_error(req, MHD_HTTP_BAD_REQUEST,
		                   "the request target contains an encoded NUL (%%00)");
	}
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
	long long n;
	if (cl != NULL && prog_parse_int(&n, cl, 0, INT64_MAX) == 0 &&
	    (unsigned long long)n > srv->opt.max_body)
		return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE,
		                   "request body over the limit of %zu bytes", srv->opt.max_body);
	return MHD_YES;
}

/* How much of a body over the limit is read and dropped so that the client
 * gets its 413 (MHD can only answer once the body is in); past this the
 * connection is closed without an answer. */
static size_t discard_allowance(const struct server *srv)
{
	return srv->opt.max_body * 4 + 1024 * 1024;
}

static void append_body(struct request *req, const char *data, size_t size)
{
	if (req->too_big) {
		req->discarded += size;
		return;
	}
	if (size > req->srv->opt.max_body - req->body_len) {
		req->too_big = 1;
		req->discarded = req->body_len + size;
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

/* Routes whose handlers call the broker or the store. */
static int needs_broker(enum route r)
{
	return r == ROUTE_ANALYZE || r == ROUTE_ANALYZE_BATCH || r == ROUTE_TASKS ||
	       r == ROUTE_TASK || r == ROUTE_READYZ;
}

static struct conn_track *track_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
	        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

static void track_set_deadline(struct server *srv, struct MHD_Connection *conn, int64_t when)
{
	struct conn_track *t = track_of(conn);
	if (t == NULL)
		return;
	pthread_mutex_lock(&srv->conn_lock);
	t->header_deadline_ms = when;
	pthread_mutex_unlock(&srv->conn_lock);
}

static enum MHD_Result submit_job(struct request *req)
{
	struct server *srv = req->srv;
	unsigned retry = 1;
	if (!breaker_admit(&srv->breaker, &req->probe, &retry))
		return reply_unavailable(req, retry);
	pthread_mutex_lock(&srv->job_lock);
	if (srv->job_stop) {
		pthread_mutex_unlock(&srv->job_lock);
		if (req->probe)
			breaker_probe_done(&srv->breaker);
		return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
	}
	req->deferred = 1;
	req->suspended = 1;
	MHD_suspend_connection(req->conn);
	req->job_next = NULL;
	if (srv->job_tail)
		srv->job_tail->job_next = req;
	else
		srv->job_head = req;
	srv->job_tail = req;
	pthread_cond_signal(&srv->job_cond);
	pthread_mutex_unlock(&srv->job_lock);
	return MHD_YES;
}

enum MHD_Result server_access(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
	struct server *srv = cls;
	struct request *req = *con_cls;
	(void)version;
	if (req == NULL || *con_cls == (void *)&nul_in_target) {
		int nul = *con_cls == (void *)&nul_in_target;
		*con_cls = NULL;
		req = calloc(1, sizeof *req);
		if (req == NULL)
			return MHD_NO;
		req->srv = srv;
		req->conn = conn;
		req->start_us = mono_us();
		req->method = parse_method(method);
		req->route = match_route(req, url);
		*con_cls = req;
		track_set_deadline(srv, conn, INT64_MAX); /* the headers are in */
		return check_headers(req, nul);
	}
	if (req->pending) {
		/* Resumed: the reply was built off this thread. */
		struct MHD_Response *resp = req->pending;
		req->pending = NULL;
		req->deferred = 0;
		enum MHD_Result r = MHD_queue_response(conn, req->pending_status, resp);
		MHD_destroy_response(resp);
		return r;
	}
	if (req->suspended)
		return MHD_YES; /* resumed spuriously; a job or the watcher still owns it */
	if (req->deferred)
		return MHD_NO; /* no reply could be built (out of memory): close */
	if (req->responded) {
		/* Rejected from the headers: drop the rest. */
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		append_body(req, upload_data, *upload_data_size);
		*upload_data_size = 0;
		/* MHD answers only once the whole body is in, so a body over the limit is
		 * read and dropped up to an allowance; beyond it the connection closes. */
		if (req->too_big && req->discarded > discard_allowance(srv))
			return MHD_NO;
		return MHD_YES;
	}
	if (req->too_big) {
		req->close_after = 1;
		return reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE,
		                   "request body over the limit of %zu bytes", srv->opt.max_body);
	}
	if (needs_broker(req->route))
		return submit_job(req);
	return route_dispatch(req);
}

void server_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
	struct server *srv = cls;
	struct request *req = *con_cls;
	/* The next request on this connection gets its header deadline; it may
	 * start after the connection idled for up to --idle-timeout. */
	track_set_deadline(srv, conn,
	                   prog_mono_ms() +
	                           (int64_t)(srv->opt.idle_timeout_s + srv->opt.header_timeout_s) *
	                                   1000);
	if (req == NULL || *con_cls == (void *)&nul_in_target) {
		*con_cls = NULL;
		return;
	}
	int status = req->responded ? req->status : 0;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && !req->responded)
		status = 0;
	int64_t us = mono_us() - req->start_us;
	metrics_request(req->route, status, us);
	if (prog_log_level() <= AIQ_LOG_DEBUG)
		prog_log(AIQ_LOG_DEBUG, "request", "route=%s status=%d ms=%.3f",
		         server_routes[req->route].label, status, (double)us / 1000.0);
	if (req->pending)
		MHD_destroy_response(req->pending);
	free(req->body);
	free(req);
	*con_cls = NULL;
}

void server_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe)
{
	struct server *srv = cls;
	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		struct conn_track *t = calloc(1, sizeof *t);
		*socket_context = t;
		if (t == NULL)
			return;
		t->conn = conn;
		t->header_deadline_ms = prog_mono_ms() + (int64_t)srv->opt.header_timeout_s * 1000;
		pthread_mutex_lock(&srv->conn_lock);
		t->next = srv->conns;
		if (srv->conns)
			srv->conns->prev = t;
		srv->conns = t;
		pthread_mutex_unlock(&srv->conn_lock);
		return;
	}
	struct conn_track *t = *socket_context;
	if (t == NULL)
		return;
	/* MHD closes the socket after this returns: under the lock, the watcher
	 * never shuts down a descriptor that was reused. */
	pthread_mutex_lock(&srv->conn_lock);
	if (t->prev)
		t->prev->next = t->next;
	else
		srv->conns = t->next;
	if (t->next)
		t->next->prev = t->prev;
	pthread_mutex_unlock(&srv->conn_lock);
	free(t);
	*socket_context = NULL;
}

/* Close connections whose headers did not arrive in time (slowloris): MHD's
 * own timeout is an idle one, reset by every byte. */
static void reap_slow_headers(struct server *srv, int64_t now)
{
	pthread_mutex_lock(&srv->conn_lock);
	for (struct conn_track *t = srv->conns; t; t = t->next) {
		if (t->header_deadline_ms > now)
			continue;
		const union MHD_ConnectionInfo *ci =
		        MHD_get_connection_info(t->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		if (ci)
			shutdown(ci->connect_fd, SHUT_RDWR); /* MHD sees EOF and closes it */
		t->header_deadline_ms = INT64_MAX;
		atomic_fetch_add(&srv->header_timeouts, 1);
	}
	pthread_mutex_unlock(&srv->conn_lock);
}

/* ---- broker-call threads ------------------------------------------------- */

static void poll_enqueue(struct request *req);

static void resume(struct request *req)
{
	req->suspended = 0;
	MHD_resume_connection(req->conn);
}

static void *job_main(void *arg)
{
	struct server *srv = arg;
	for (;;) {
		pthread_mutex_lock(&srv->job_lock);
		while (srv->job_head == NULL && !srv->job_stop)
			pthread_cond_wait(&srv->job_cond, &srv->job_lock);
		struct request *req = srv->job_head;
		if (req == NULL) {
			pthread_mutex_unlock(&srv->job_lock);
			break;
		}
		srv->job_head = req->job_next;
		if (srv->job_head == NULL)
			srv->job_tail = NULL;
		pthread_mutex_unlock(&srv->job_lock);

		unsigned retry = 1;
		int probe = req->probe;
		/* The breaker may have opened while this waited in the queue. */
		if (!breaker_allows(&srv->breaker, probe, &retry))
			reply_unavailable(req, retry);
		else if (route_dispatch(req) == MHD_NO && req->pending == NULL && !req->poll_wanted)
			reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
		if (probe)
			breaker_probe_done(&srv->breaker);
		/* Last touch: once resumed or handed to the watcher, MHD may free req. */
		if (req->poll_wanted)
			poll_enqueue(req);
		else
			resume(req); /* with no reply only when out of memory: MHD closes it */
	}
	return NULL;
}

/* ---- long-poll watcher --------------------------------------------------- */

#define POLL_FIRST_MS 20
#define POLL_MAX_MS   250
#define REAP_TICK_MS  250

int long_poll_submit(struct request *req)
{
	struct server *srv = req->srv;
	if ((unsigned)atomic_fetch_add(&srv->suspended, 1) >= srv->opt.max_long_polls) {
		atomic_fetch_sub(&srv->suspended, 1);
		atomic_fetch_add(&srv->long_polls_refused, 1);
		return -1;
	}
	req->poll_wanted = 1; /* job_main hands it to the watcher when done with it */
	return 0;
}

/* Give a long poll to the watcher; after this the caller must not touch req. */
static void poll_enqueue(struct request *req)
{
	struct server *srv = req->srv;
	int64_t now = prog_mono_ms();
	req->interval_ms = POLL_FIRST_MS;
	req->next_check_ms = now + POLL_FIRST_MS;
	pthread_mutex_lock(&srv->poll_lock);
	req->poll_next = srv->polls;
	srv->polls = req;
	pthread_cond_signal(&srv->poll_cond);
	pthread_mutex_unlock(&srv->poll_lock);
}

/* Answer a long poll and give its connection back to MHD. */
static void poll_answer(struct server *srv, struct request *req, const aiq_result *r, int rc)
{
	if (r != NULL)
		reply_json(req, MHD_HTTP_OK, task_state_json(r));
	else
		reply_error(req, status_for_error(rc), "cannot read the task: %s: %s",
		            aiq_strerror(rc), aiq_error_last());
	if (req->pending == NULL)
		reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	atomic_fetch_sub(&srv->suspended, 1);
	resume(req);
}

/* Check the due polls with one client; returns those still waiting. */
static struct request *poll_check(struct server *srv, struct request *due, int final)
{
	struct request *again = NULL;
	aiq_client *c = NULL;
	int rc = client_pool_get(&c, srv->clients);
	while (due) {
		struct request *req = due;
		due = req->poll_next;
		int64_t now = prog_mono_ms();
		aiq_result *r = NULL;
		int grc = rc == AIQ_OK ? aiq_client_get_result(&r, c, req->task_id) : rc;
		if (grc != AIQ_OK) {
			rc = grc; /* the store failed: answer the rest with it too */
			aiq_result_free(r);
			poll_answer(srv, req, NULL, grc);
			continue;
		}
		if (final || now >= req->deadline_ms || aiq_state_is_ready(aiq_result_state(r))) {
			poll_answer(srv, req, r, AIQ_OK);
		} else {
			/* Back off from a quick first look to POLL_MAX_MS. */
			req->interval_ms = req->interval_ms * 2 > POLL_MAX_MS
			                           ? POLL_MAX_MS
			                           : req->interval_ms * 2;
			req->next_check_ms = now + req->interval_ms;
			if (req->next_check_ms > req->deadline_ms)
				req->next_check_ms = req->deadline_ms;
			req->poll_next = again;
			again = req;
		}
		aiq_result_free(r);
	}
	client_pool_done(srv->clients, c, rc);
	return again;
}

static void *watcher_main(void *arg)
{
	struct server *srv = arg;
	int64_t next_reap = 0;
	pthread_mutex_lock(&srv->poll_lock);
	for (;;) {
		int64_t now = prog_mono_ms();
		if (now >= next_reap) {
			pthread_mutex_unlock(&srv->poll_lock);
			reap_slow_headers(srv, now);
			pthread_mutex_lock(&srv->poll_lock);
			next_reap = now + REAP_TICK_MS;
		}
		int stop = srv->poll_stop;
		struct request *due = NULL, **pp = &srv->polls;
		int64_t wake = next_reap;
		while (*pp) {
			struct request *req = *pp;
			if (stop || req->next_check_ms <= now) {
				*pp = req->poll_next;
				req->poll_next = due;
				due = req;
			} else {
				if (req->next_check_ms < wake)
					wake = req->next_check_ms;
				pp = &req->poll_next;
			}
		}
		if (due) {
			pthread_mutex_unlock(&srv->poll_lock);
			struct request *again = poll_check(srv, due, stop);
			pthread_mutex_lock(&srv->poll_lock);
			while (again) {
				struct request *req = again;
				again = req->poll_next;
				req->poll_next = srv->polls;
				srv->polls = req;
			}
			continue;
		}
		if (stop)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t ms = wake - now;
		ts.tv_sec += (time_t)(ms / 1000);
		ts.tv_nsec += (long)(ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&srv->poll_cond, &srv->poll_lock, &ts);
	}
	pthread_mutex_unlock(&srv->poll_lock);
	return NULL;
}

int threads_start(struct server *srv)
{
	pthread_mutex_init(&srv->job_lock, NULL);
	pthread_cond_init(&srv->job_cond, NULL);
	pthread_mutex_init(&srv->poll_lock, NULL);
	pthread_cond_init(&srv->poll_cond, NULL);
	srv->jobs = calloc(srv->opt.broker_threads, sizeof *srv->jobs);
	if (srv->jobs == NULL)
		return -1;
	for (unsigned i = 0; i < srv->opt.broker_threads; i++) {
		if (pthread_create(&srv->jobs[i], NULL, job_main, srv) != 0)
			return -1;
		srv->njobs++;
	}
	if (pthread_create(&srv->watcher, NULL, watcher_main, srv) != 0)
		return -1;
	srv->watcher_started = 1;
	return 0;
}

void jobs_stop(struct server *srv)
{
	if (srv->jobs == NULL)
		return;
	/* The threads finish the queue first. */
	pthread_mutex_lock(&srv->job_lock);
	srv->job_stop = 1;
	pthread_cond_broadcast(&srv->job_cond);
	pthread_mutex_unlock(&srv->job_lock);
	for (unsigned i = 0; i < srv->njobs; i++)
		pthread_join(srv->jobs[i], NULL);
	free(srv->jobs);
	srv->jobs = NULL;
}

void watcher_stop(struct server *srv)
{
	if (!srv->watcher_started)
		return;
	/* Pending long polls are answered at once with their current state. */
	pthread_mutex_lock(&srv->poll_lock);
	srv->poll_stop = 1;
	pthread_cond_broadcast(&srv->poll_cond);
	pthread_mutex_unlock(&srv->poll_lock);
	pthread_join(srv->watcher, NULL);
	srv->watcher_started = 0;
}
