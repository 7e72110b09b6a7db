/*
 * The HTTP transport (libmicrohttpd): requests in, responses with their
 * headers out, connection tracking (the header deadline), the broker-call
 * threads and the long-poll watcher. What a request means is core.c's.
 */
#include "server.h"

#include "../common/progutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

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
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	if (server_routes[req->route].page) {
		/* Same origin only, no inline script or style, no framing. */
		MHD_add_response_header(resp, "Content-Security-Policy",
		                        "default-src 'none'; script-src 'self'; style-src 'self'; "
		                        "connect-src 'self'; img-src 'self'; base-uri 'none'; "
		                        "form-action 'none'; frame-ancestors 'none'");
		MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
		MHD_add_response_header(resp, "Cache-Control", "no-store");
	}
}

/* The transport half of reply_text(): an MHD response with the common
 * headers, queued now or, off MHD's threads, when the connection resumes. */
static enum MHD_Result mhd_emit(struct request *req, unsigned status, const char *content_type,
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

static const char *mhd_lookup(struct request *req, enum req_kind kind, const char *key)
{
	return MHD_lookup_connection_value(
	        req->conn, kind == REQ_HEADER ? MHD_HEADER_KIND : MHD_GET_ARGUMENT_KIND, key);
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

/* How much of a body over the limit is read and dropped so that the client
 * gets its 413 (MHD can only answer once the body is in); past this the
 * connection is closed without an answer. */
static size_t discard_allowance(const struct server *srv)
{
	return srv->opt.max_body * 4 + 1024 * 1024;
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
		req->emit = mhd_emit;
		req->lookup = mhd_lookup;
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

/* ---- dashboard: Server-Sent Events --------------------------------------- */

/* One open /dashboard/stream. MHD pulls the body from sse_read(); when there
 * is nothing new the connection suspends itself and the ticker resumes it
 * after the next snapshot. */
struct sse_client {
	struct server *srv;
	struct MHD_Connection *conn;
	struct sse_client *prev, *next;
	uint64_t sent_generation;
	char *buf;
	size_t len, off;
	int suspended;
};

static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max)
{
	struct sse_client *c = cls;
	struct server *srv = c->srv;
	(void)pos;
	if (c->off == c->len) {
		free(c->buf);
		c->buf = NULL;
		c->len = c->off = 0;
		pthread_mutex_lock(&srv->sse_lock);
		int stop = srv->sse_stop || atomic_load(&srv->draining);
		pthread_mutex_unlock(&srv->sse_lock);
		if (stop)
			return MHD_CONTENT_READER_END_OF_STREAM;
		uint64_t gen = 0;
		size_t n = 0;
		char *snap = dash_snapshot(srv, &n, &gen);
		if (snap == NULL)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (gen == c->sent_generation) {
			free(snap);
			/* Nothing new: wait off MHD's loop for the ticker (returning 0
			 * without suspending would spin). A wake-up that comes before
			 * the suspension only costs one tick. */
			pthread_mutex_lock(&srv->sse_lock);
			c->suspended = 1;
			pthread_mutex_unlock(&srv->sse_lock);
			MHD_suspend_connection(c->conn);
			return 0;
		}
		const char *head = c->sent_generation == 0 ? "retry: 2000\nevent: snapshot\ndata: "
		                                           : "event: snapshot\ndata: ";
		size_t hl = strlen(head);
		c->buf = malloc(hl + n + 2);
		if (c->buf == NULL) {
			free(snap);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		memcpy(c->buf, head, hl);
		memcpy(c->buf + hl, snap, n);
		memcpy(c->buf + hl + n, "\n\n", 2);
		c->len = hl + n + 2;
		c->sent_generation = gen;
		free(snap);
	}
	size_t k = c->len - c->off < max ? c->len - c->off : max;
	memcpy(out, c->buf + c->off, k);
	c->off += k;
	return (ssize_t)k;
}

static void sse_free(void *cls)
{
	struct sse_client *c = cls;
	struct server *srv = c->srv;
	pthread_mutex_lock(&srv->sse_lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->sse_clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	pthread_mutex_unlock(&srv->sse_lock);
	free(c->buf);
	free(c);
}

enum MHD_Result sse_stream_start(struct request *req)
{
	struct server *srv = req->srv;
	struct sse_client *c = calloc(1, sizeof *c);
	if (c == NULL)
		return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	c->srv = srv;
	c->conn = req->conn;
	pthread_mutex_lock(&srv->sse_lock);
	if (srv->sse_stop || !srv->sse_started) {
		pthread_mutex_unlock(&srv->sse_lock);
		free(c);
		req->retry_after = 1;
		return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "no stream: shutting down");
	}
	c->next = srv->sse_clients;
	if (c->next)
		c->next->prev = c;
	srv->sse_clients = c;
	pthread_cond_signal(&srv->sse_cond); /* someone watches: refresh now */
	pthread_mutex_unlock(&srv->sse_lock);
	struct MHD_Response *resp =
	        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, c, sse_free);
	if (resp == NULL) {
		sse_free(c);
		return MHD_NO;
	}
	req->status = MHD_HTTP_OK;
	req->responded = 1;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	add_common_headers(req, resp);
	enum MHD_Result r = MHD_queue_response(req->conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return r;
}

/* Resume the suspended streams (or all at stop). Under sse_lock, the flags
 * are cleared and the connections collected; the resumes happen outside it
 * (MHD takes its own locks, and calls sse_free() under them). A suspended
 * connection is never freed, so the pointers stay valid. */
static void sse_wake(struct server *srv)
{
	struct MHD_Connection *wake[256];
	for (;;) {
		size_t n = 0;
		pthread_mutex_lock(&srv->sse_lock);
		for (struct sse_client *c = srv->sse_clients; c && n < 256; c = c->next)
			if (c->suspended) {
				c->suspended = 0;
				wake[n++] = c->conn;
			}
		pthread_mutex_unlock(&srv->sse_lock);
		for (size_t i = 0; i < n; i++)
			MHD_resume_connection(wake[i]);
		if (n < 256)
			break;
	}
}

static void *ticker_main(void *arg)
{
	struct server *srv = arg;
	pthread_mutex_lock(&srv->sse_lock);
	while (!srv->sse_stop) {
		/* The store and broker are only read while someone watches. */
		int watched = srv->sse_clients != NULL ||
		              atomic_load(&srv->dash_interest_ms) + 10000 > prog_mono_ms();
		pthread_mutex_unlock(&srv->sse_lock);
		if (watched) {
			dash_refresh(srv);
			sse_wake(srv);
		}
		pthread_mutex_lock(&srv->sse_lock);
		if (srv->sse_stop)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += DASH_TICK_MS * 1000000L;
		while (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&srv->sse_cond, &srv->sse_lock, &ts);
	}
	pthread_mutex_unlock(&srv->sse_lock);
	return NULL;
}

int dash_ticker_start(struct server *srv)
{
	pthread_mutex_init(&srv->sse_lock, NULL);
	pthread_cond_init(&srv->sse_cond, NULL);
	srv->stream_start = sse_stream_start;
	if (pthread_create(&srv->sse_thread, NULL, ticker_main, srv) != 0)
		return -1;
	srv->sse_started = 1;
	return 0;
}

void dash_ticker_stop(struct server *srv)
{
	if (!srv->sse_started)
		return;
	pthread_mutex_lock(&srv->sse_lock);
	srv->sse_stop = 1;
	pthread_cond_broadcast(&srv->sse_cond);
	pthread_mutex_unlock(&srv->sse_lock);
	pthread_join(srv->sse_thread, NULL);
	/* Every stream ends now (sse_read sees sse_stop): none may stay
	 * suspended when the daemon stops. */
	sse_wake(srv);
	srv->sse_started = 0;
}
