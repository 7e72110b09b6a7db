/*
 * What a request means, apart from how it travels: the route table, header
 * checks (auth, content type, size, framing), body collection, replies as
 * status + content type + body, the client pool and the circuit breaker.
 * Nothing here calls libmicrohttpd (its header gives the status codes):
 * http.c plugs a request into MHD through req->lookup and req->emit, and
 * server_handle() runs one whole request without it (the fuzz target).
 */
#include "server.h"

#include "../common/progutil.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

const struct route_info server_routes[ROUTE_COUNT] = {
        /* path, metrics label, methods, public, page */
        [ROUTE_ANALYZE] = {"/analyze", "/analyze", M_POST, 0, 0},
        [ROUTE_ANALYZE_BATCH] = {"/analyze/batch", "/analyze/batch", M_POST, 0, 0},
        [ROUTE_TASKS] = {"/tasks", "/tasks", M_POST, 0, 0},
        [ROUTE_TASK] = {"/tasks/{task_id}", "/tasks/{task_id}", M_GET | M_HEAD | M_DELETE, 0, 0},
        [ROUTE_HEALTHZ] = {"/healthz", "/healthz", M_GET | M_HEAD, 1, 0},
        [ROUTE_READYZ] = {"/readyz", "/readyz", M_GET | M_HEAD, 1, 0},
        [ROUTE_METRICS] = {"/metrics", "/metrics", M_GET | M_HEAD, 1, 0},
        [ROUTE_OPENAPI] = {"/openapi.json", "/openapi.json", M_GET | M_HEAD, 1, 0},
        [ROUTE_DASHBOARD] = {"/dashboard", "/dashboard", M_GET | M_HEAD, 1, 1},
        [ROUTE_DASHBOARD_JS] = {"/dashboard/app.js", "/dashboard/app.js", M_GET | M_HEAD, 1, 1},
        [ROUTE_DASHBOARD_CSS] = {"/dashboard/app.css", "/dashboard/app.css", M_GET | M_HEAD, 1, 1},
        [ROUTE_DASHBOARD_STATE] = {"/dashboard/state", "/dashboard/state", M_GET, 0, 0},
        [ROUTE_DASHBOARD_STREAM] = {"/dashboard/stream", "/dashboard/stream", M_GET, 0, 0},
        [ROUTE_DEAD_LETTERS] = {"/dead-letters", "/dead-letters", M_GET, 0, 0},
        [ROUTE_DEAD_LETTER] = {"/dead-letters/{task_id}", "/dead-letters/{task_id}", M_DELETE, 0,
                               0},
        [ROUTE_DEAD_LETTER_REQUEUE] = {"/dead-letters/{task_id}/requeue",
                                       "/dead-letters/{task_id}/requeue", M_POST, 0, 0},
        [ROUTE_TRACK_SIMILAR] = {"/tracks/{track_id}/similar", "/tracks/{track_id}/similar", M_GET,
                                 0, 0},
        [ROUTE_OTHER] = {NULL, "other", 0, 1, 0},
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

/* ---- requests -------------------------------------------------------------- */

const char *req_header(struct request *req, const char *name)
{
	return req->lookup ? req->lookup(req, REQ_HEADER, name) : NULL;
}

const char *req_query(struct request *req, const char *name)
{
	return req->lookup ? req->lookup(req, REQ_QUERY, name) : NULL;
}

/* ---- replies --------------------------------------------------------------- */

enum MHD_Result reply_text(struct request *req, unsigned status, const char *content_type,
                           char *text, size_t len)
{
	if (req->emit)
		return req->emit(req, status, content_type, text, len);
	/* No transport: keep the reply for server_handle(). */
	req->status = (int)status;
	req->responded = 1;
	free(req->reply_body);
	req->reply_body = text;
	req->reply_len = len;
	req->reply_type = content_type;
	return MHD_YES;
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

int parse_method(const char *m)
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
enum route match_route(struct request *req, const char *url)
{
	for (int r = 0; r < ROUTE_OTHER; r++)
		if (strchr(server_routes[r].path, '{') == NULL &&
		    strcmp(url, server_routes[r].path) == 0)
			return (enum route)r;
	/* The routes with a {task_id}: a prefix, the id, then a suffix. */
	static const struct {
		const char *prefix, *suffix;
		enum route route;
	} with_id[] = {
	        {"/tasks/", "", ROUTE_TASK},
	        {"/dead-letters/", "", ROUTE_DEAD_LETTER},
	        {"/dead-letters/", "/requeue", ROUTE_DEAD_LETTER_REQUEUE},
	        {"/tracks/", "/similar", ROUTE_TRACK_SIMILAR},
	};
	for (size_t i = 0; i < sizeof with_id / sizeof with_id[0]; i++) {
		size_t pl = strlen(with_id[i].prefix), sl = strlen(with_id[i].suffix);
		if (strncmp(url, with_id[i].prefix, pl) != 0)
			continue;
		const char *id = url + pl;
		size_t n = strlen(id);
		if (n <= sl || strcmp(id + n - sl, with_id[i].suffix) != 0)
			continue;
		n -= sl;
		if (n < sizeof req->task_id && memchr(id, '/', n) == NULL) {
			memcpy(req->task_id, id, n);
			req->task_id[n] = '\0';
			return with_id[i].route;
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
	const char *h = req_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
	/* A browser's EventSource cannot set headers: the stream also takes the
	 * token from ?access_token= (never logged: no log line shows a target). */
	const char *q =
	        req->route == ROUTE_DASHBOARD_STREAM ? req_query(req, "access_token") : NULL;
	if (h == NULL && q != NULL)
		return token_equal(q, strlen(q), token);
	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return 0;
	h += 7;
	while (*h == ' ')
		h++;
	return token_equal(h, strlen(h), token);
}

static int json_content_type(struct request *req)
{
	const char *ct = req_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
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
enum MHD_Result check_headers(struct request *req, int nul)
{
	struct server *srv = req->srv;
	const char *cl = req_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
	const char *te = req_header(req, MHD_HTTP_HEADER_TRANSFER_ENCODING);
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

void append_body(struct request *req, const char *data, size_t size)
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
int needs_broker(enum route r)
{
	return r == ROUTE_ANALYZE || r == ROUTE_ANALYZE_BATCH || r == ROUTE_TASKS ||
	       r == ROUTE_TASK || r == ROUTE_READYZ || r == ROUTE_DEAD_LETTER_REQUEUE ||
	       r == ROUTE_DASHBOARD_STATE || r == ROUTE_TRACK_SIMILAR;
}

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

/* ---- one request without a transport ---------------------------------------- */

static const char *input_lookup(struct request *req, enum req_kind kind, const char *key)
{
	const struct http_input *in = req->lookup_ctx;
	const char *const *kv = kind == REQ_HEADER ? in->headers : in->query;
	size_t n = kind == REQ_HEADER ? in->nheaders : in->nquery;
	for (size_t i = 0; i < n; i++)
		if (kind == REQ_HEADER ? strcasecmp(kv[2 * i], key) == 0
		                       : strcmp(kv[2 * i], key) == 0)
			return kv[2 * i + 1];
	return NULL;
}

/* A long poll with no watcher to hand it to: answered at once with the
 * task's state, as the watcher does at the deadline. */
static void answer_poll_now(struct request *req)
{
	struct server *srv = req->srv;
	req->poll_wanted = 0;
	atomic_fetch_sub(&srv->suspended, 1);
	aiq_client *c = NULL;
	aiq_result *r = NULL;
	int rc = client_pool_get(&c, srv->clients);
	if (rc == AIQ_OK)
		rc = aiq_client_get_result(&r, c, req->task_id);
	client_pool_done(srv->clients, c, rc);
	if (rc == AIQ_OK)
		reply_json(req, MHD_HTTP_OK, task_state_json(r));
	else
		reply_error(req, status_for_error(rc), "cannot read the task: %s: %s",
		            aiq_strerror(rc), aiq_error_last());
	aiq_result_free(r);
}

int server_handle(struct http_output *out, struct server *srv, const struct http_input *in)
{
	memset(out, 0, sizeof *out);
	struct request *req = calloc(1, sizeof *req);
	if (req == NULL)
		return -1;
	req->srv = srv;
	req->lookup = input_lookup;
	req->lookup_ctx = in;
	req->start_us = mono_us();
	req->method = parse_method(in->method ? in->method : "");
	req->route = match_route(req, in->path ? in->path : "");
	enum MHD_Result r = check_headers(req, in->nul_in_target);
	if (r == MHD_YES && !req->responded) {
		/* The body in pieces, as a transport hands it over. */
		size_t piece = 4096;
		for (size_t off = 0; off < in->body_len; off += piece)
			append_body(req, in->body + off,
			            in->body_len - off < piece ? in->body_len - off : piece);
		if (req->too_big) {
			req->close_after = 1;
			r = reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE,
			                "request body over the limit of %zu bytes",
			                srv->opt.max_body);
		} else {
			r = route_dispatch(req);
		}
		if (req->poll_wanted && !req->responded)
			answer_poll_now(req);
	}
	int status = req->responded ? req->status : 0;
	metrics_request(req->route, status, mono_us() - req->start_us);
	out->status = (unsigned)status;
	out->body = req->reply_body;
	out->len = req->reply_len;
	out->content_type = req->reply_type;
	out->close = req->close_after;
	free(req->body);
	free(req);
	return r == MHD_YES && status != 0 ? 0 : -1;
}
