/*
 * Route handlers: validate the JSON body, call the client, shape the reply.
 */
#include "server.h"

#include "../common/progutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

unsigned status_for_error(int rc)
{
	switch (rc) {
	case AIQ_EBROKER:
	case AIQ_ESTORE:
	case AIQ_EUNSUPPORTED: return MHD_HTTP_SERVICE_UNAVAILABLE;
	case AIQ_EINVAL:
	case AIQ_EJSON: return MHD_HTTP_UNPROCESSABLE_CONTENT;
	case AIQ_ETOOBIG: return MHD_HTTP_CONTENT_TOO_LARGE;
	case AIQ_ETIMEDOUT: return MHD_HTTP_GATEWAY_TIMEOUT;
	default: return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

static enum MHD_Result reply_aiq_error(struct request *req, int rc, const char *what)
{
	const char *detail = aiq_error_last();
	return reply_error(req, status_for_error(rc), "%s: %s%s%s", what, aiq_strerror(rc),
	                   *detail ? ": " : "", detail);
}

/* Parse the body as a JSON object; on failure the reply is queued and NULL returned. */
static json_t *parse_body(struct request *req, enum MHD_Result *res)
{
	json_error_t err;
	json_t *v = json_loadb(req->body ? req->body : "", req->body_len, JSON_DECODE_ANY, &err);
	if (v == NULL) {
		*res = reply_error(req, MHD_HTTP_BAD_REQUEST,
		                   "malformed JSON: %s (line %d, column %d)", err.text, err.line,
		                   err.column);
		return NULL;
	}
	if (!json_is_object(v)) {
		json_decref(v);
		*res = reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT,
		                   "body: expected a JSON object");
		return NULL;
	}
	return v;
}

/* Field validation: on error writes "field: problem" into err and returns -1. */
struct verr {
	char text[256];
};

static int fail(struct verr *e, const char *prefix, const char *field, const char *problem)
{
	snprintf(e->text, sizeof e->text, "%s%s: %s", prefix, field, problem);
	return -1;
}

static int check_unknown(struct verr *e, const char *prefix, json_t *obj, const char *const *known)
{
	const char *key;
	json_t *v;
	json_object_foreach(obj, key, v)
	{
		int ok = 0;
		for (size_t i = 0; known[i]; i++)
			ok |= strcmp(key, known[i]) == 0;
		if (!ok)
			return fail(e, prefix, key, "unknown field");
	}
	return 0;
}

/* One analysis item: builds args and kwargs JSON text. */
static int analyze_item(struct verr *e, const char *prefix, json_t *item, char **args,
                        char **kwargs)
{
	static const char *const known[] = {"track_id", "text", "analyzer", "options", NULL};
	if (!json_is_object(item))
		return fail(e, prefix, "", "expected an object");
	if (check_unknown(e, prefix, item, known))
		return -1;
	json_t *track = json_object_get(item, "track_id");
	json_t *text = json_object_get(item, "text");
	json_t *analyzer = json_object_get(item, "analyzer");
	json_t *options = json_object_get(item, "options");
	if (track == NULL)
		return fail(e, prefix, "track_id", "field required");
	if (!json_is_string(track) && !json_is_integer(track))
		return fail(e, prefix, "track_id", "expected a string or an integer");
	if (json_is_string(track) && json_string_length(track) == 0)
		return fail(e, prefix, "track_id", "must not be empty");
	if (text == NULL)
		return fail(e, prefix, "text", "field required");
	if (!json_is_string(text))
		return fail(e, prefix, "text", "expected a string");
	if (analyzer && !json_is_null(analyzer) &&
	    (!json_is_string(analyzer) || json_string_length(analyzer) == 0))
		return fail(e, prefix, "analyzer", "expected a non-empty string");
	if (options && !json_is_null(options) && !json_is_object(options))
		return fail(e, prefix, "options", "expected an object");
	json_t *a = json_pack("[OO]", track, text);
	json_t *k = json_object();
	if (k && json_is_string(analyzer))
		json_object_set(k, "analyzer", analyzer);
	if (k && json_is_object(options))
		json_object_set(k, "options", options);
	*args = a ? json_dumps(a, JSON_COMPACT) : NULL;
	*kwargs = k ? json_dumps(k, JSON_COMPACT) : NULL;
	json_decref(a);
	json_decref(k);
	if (*args == NULL || *kwargs == NULL) {
		free(*args);
		free(*kwargs);
		*args = *kwargs = NULL;
		return fail(e, prefix, "", "out of memory");
	}
	return 0;
}

static enum MHD_Result handle_analyze(struct request *req)
{
	enum MHD_Result res;
	json_t *body = parse_body(req, &res);
	if (body == NULL)
		return res;
	struct verr e;
	char *args = NULL, *kwargs = NULL;
	if (analyze_item(&e, "", body, &args, &kwargs) != 0) {
		json_decref(body);
		return reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT, "%s", e.text);
	}
	json_decref(body);
	aiq_client *c = NULL;
	char *id = NULL;
	int rc = client_pool_get(&c, req->srv->clients);
	if (rc == AIQ_OK)
		rc = aiq_client_enqueue(&id, c, req->srv->task_name, args, kwargs, NULL);
	client_pool_done(req->srv->clients, c, rc);
	if (rc == AIQ_OK)
		dash_track(req->srv, id, req->srv->task_name, args, kwargs);
	free(args);
	free(kwargs);
	if (rc != AIQ_OK)
		return reply_aiq_error(req, rc, "enqueue failed");
	metrics_enqueued(req->srv->task_name, 1);
	res = reply_json(req, MHD_HTTP_ACCEPTED,
	                 json_pack("{ssss}", "task_id", id, "status", "queued"));
	aiq_free(id);
	return res;
}

static enum MHD_Result handle_analyze_batch(struct request *req)
{
	enum MHD_Result res;
	json_t *body = parse_body(req, &res);
	if (body == NULL)
		return res;
	static const char *const known[] = {"items", NULL};
	struct verr e;
	json_t *items = json_object_get(body, "items");
	if (check_unknown(&e, "", body, known) != 0) {
		json_decref(body);
		return reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT, "%s", e.text);
	}
	const char *problem = items == NULL                 ? "field required"
	                      : !json_is_array(items)       ? "expected an array"
	                      : json_array_size(items) == 0 ? "must not be empty"
	                      : json_array_size(items) > req->srv->opt.max_batch ? "too many items"
	                                                                         : NULL;
	if (problem) {
		json_decref(body);
		return reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT, "items: %s%s", problem,
		                   strcmp(problem, "too many items") == 0 ? " (see --max-batch)"
		                                                          : "");
	}
	size_t n = json_array_size(items);
	char **args = calloc(n, sizeof *args), **kwargs = calloc(n, sizeof *kwargs);
	int bad = args == NULL || kwargs == NULL;
	if (bad)
		snprintf(e.text, sizeof e.text, "out of memory");
	for (size_t i = 0; i < n && !bad; i++) {
		char prefix[32];
		snprintf(prefix, sizeof prefix, "items[%zu].", i);
		bad = analyze_item(&e, prefix, json_array_get(items, i), &args[i], &kwargs[i]) != 0;
	}
	json_decref(body);
	json_t *ids = json_array();
	int rc = AIQ_OK;
	if (!bad) {
		aiq_client *c = NULL;
		rc = client_pool_get(&c, req->srv->clients);
		for (size_t i = 0; i < n && rc == AIQ_OK; i++) {
			char *id = NULL;
			rc = aiq_client_enqueue(&id, c, req->srv->task_name, args[i], kwargs[i],
			                        NULL);
			if (rc == AIQ_OK) {
				json_array_append_new(ids, json_string(id));
				dash_track(req->srv, id, req->srv->task_name, args[i], kwargs[i]);
			}
			aiq_free(id);
		}
		client_pool_done(req->srv->clients, c, rc);
		metrics_enqueued(req->srv->task_name, (int)json_array_size(ids));
	}
	for (size_t i = 0; args && kwargs && i < n; i++) {
		free(args[i]);
		free(kwargs[i]);
	}
	free(args);
	free(kwargs);
	if (bad) {
		json_decref(ids);
		return reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT, "%s", e.text);
	}
	if (rc != AIQ_OK) {
		/* Say which tasks did go out, so a client can retry the rest. */
		const char *detail = aiq_error_last();
		char msg[512], safe[768];
		snprintf(msg, sizeof msg, "enqueue failed after %zu of %zu items: %s%s%s",
		         json_array_size(ids), n, aiq_strerror(rc), *detail ? ": " : "", detail);
		scrub_secrets(safe, sizeof safe, msg);
		json_t *d = json_string(safe);
		return reply_json(req, status_for_error(rc),
		                  json_pack("{s o? s o}", "detail",
		                            d ? d : json_string("enqueue failed"), "task_ids",
		                            ids));
	}
	return reply_json(req, MHD_HTTP_ACCEPTED,
	                  json_pack("{s o s I s s}", "task_ids", ids, "count", (json_int_t)n,
	                            "status", "queued"));
}

/* ISO-8601 with any UTC offset (the library's parser) to UNIX ms. */
static int parse_iso8601_ms(int64_t *out, const char *s)
{
	int64_t us = 0;
	if (aiq_time_parse_iso8601(&us, s) != AIQ_OK || us < 0)
		return -1;
	*out = us / 1000;
	return 0;
}

static int seconds_field(struct verr *e, json_t *v, const char *name, double max, int64_t *ms)
{
	if (!json_is_number(v))
		return fail(e, "options.", name, "expected a number of seconds");
	double s = json_number_value(v);
	if (!isfinite(s) || s < 0 || s > max)
		return fail(e, "options.", name, "out of range");
	*ms = (int64_t)llround(s * 1000.0);
	return 0;
}

/* Unique jobs: "unique" true (key derived) or a key, "unique_ttl" seconds
 * (default 3600), "unique_scope" queued | running | until_success. */
static int unique_opts(struct verr *e, json_t *o, aiq_enqueue_opts *opts, double max_s)
{
	json_t *u = json_object_get(o, "unique");
	if (u == NULL || json_is_null(u) || json_is_false(u))
		return 0;
	if (!json_is_true(u) && !json_is_string(u))
		return fail(e, "options.", "unique", "expected true or a key");
	int64_t ttl = 3600 * 1000;
	json_t *v = json_object_get(o, "unique_ttl");
	if (v && !json_is_null(v) && seconds_field(e, v, "unique_ttl", max_s, &ttl))
		return -1;
	const char *sc = json_string_value(json_object_get(o, "unique_scope"));
	int scope = sc == NULL || strcmp(sc, "queued") == 0 ? AIQ_UNIQUE_QUEUED
	            : strcmp(sc, "running") == 0            ? AIQ_UNIQUE_RUNNING
	            : strcmp(sc, "until_success") == 0      ? AIQ_UNIQUE_UNTIL_SUCCESS
	                                                    : 0;
	if (scope == 0 || (json_object_get(o, "unique_scope") && sc == NULL))
		return fail(e, "options.", "unique_scope",
		            "expected queued, running or until_success");
	if (aiq_enqueue_opts_set_unique(opts, json_is_string(u) ? json_string_value(u) : NULL, ttl,
	                                scope) != AIQ_OK)
		return fail(e, "options.", json_is_string(u) ? "unique" : "unique_ttl",
		            json_is_string(u) ? "expected a key of 1-200 printable characters"
		                              : "expected 0.001 s to 30 days");
	return 0;
}

static int build_opts(struct verr *e, json_t *o, aiq_enqueue_opts *opts)
{
	static const char *const known[] = {
	        "countdown",  "eta",         "expires",    "priority",
	        "queue",      "max_retries", "task_id",    "soft_time_limit",
	        "time_limit", "unique",      "unique_ttl", "unique_scope",
	        NULL};
	const double year = 366.0 * 86400;
	if (!json_is_object(o))
		return fail(e, "", "options", "expected an object");
	if (check_unknown(e, "options.", o, known))
		return -1;
	json_t *v;
	int64_t ms, soft = 0, hard = 0;
	if ((v = json_object_get(o, "countdown")) && !json_is_null(v)) {
		if (seconds_field(e, v, "countdown", year, &ms))
			return -1;
		aiq_enqueue_opts_set_countdown_ms(opts, ms);
	}
	if ((v = json_object_get(o, "eta")) && !json_is_null(v)) {
		if (json_is_string(v)) {
			if (parse_iso8601_ms(&ms, json_string_value(v)) != 0)
				return fail(e, "options.", "eta",
				            "expected an ISO-8601 time (Z or an offset such as "
				            "+02:00)");
		} else if (json_is_number(v) && json_number_value(v) >= 0 &&
		           json_number_value(v) < 1e11) {
			ms = (int64_t)llround(json_number_value(v) * 1000.0);
		} else {
			return fail(e, "options.", "eta",
			            "expected an ISO-8601 time or UNIX seconds");
		}
		aiq_enqueue_opts_set_eta_ms(opts, ms);
	}
	if ((v = json_object_get(o, "expires")) && !json_is_null(v)) {
		if (seconds_field(e, v, "expires", year, &ms))
			return -1;
		if (ms <= 0)
			return fail(e, "options.", "expires", "must be positive");
		aiq_enqueue_opts_set_expires_ms(opts, ms);
	}
	if ((v = json_object_get(o, "priority")) && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 255)
			return fail(e, "options.", "priority", "expected an integer 0-255");
		aiq_enqueue_opts_set_priority(opts, (int)json_integer_value(v));
	}
	if ((v = json_object_get(o, "queue")) && !json_is_null(v)) {
		if (!json_is_string(v) || aiq_enqueue_opts_set_queue(opts, json_string_value(v)))
			return fail(e, "options.", "queue", "expected a valid queue name");
	}
	if ((v = json_object_get(o, "max_retries")) && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > 1000000)
			return fail(e, "options.", "max_retries",
			            "expected a non-negative integer");
		aiq_enqueue_opts_set_max_retries(opts, (int)json_integer_value(v));
	}
	if ((v = json_object_get(o, "task_id")) && !json_is_null(v)) {
		if (!json_is_string(v) || aiq_enqueue_opts_set_task_id(opts, json_string_value(v)))
			return fail(e, "options.", "task_id",
			            "expected a string of 1-155 printable characters");
	}
	if ((v = json_object_get(o, "soft_time_limit")) && !json_is_null(v) &&
	    seconds_field(e, v, "soft_time_limit", year, &soft))
		return -1;
	if ((v = json_object_get(o, "time_limit")) && !json_is_null(v) &&
	    seconds_field(e, v, "time_limit", year, &hard))
		return -1;
	if ((soft || hard) && aiq_enqueue_opts_set_time_limits(opts, soft, hard) != AIQ_OK)
		return fail(e, "options.", "soft_time_limit", "must not exceed time_limit");
	return unique_opts(e, o, opts, year);
}

static enum MHD_Result handle_tasks(struct request *req)
{
	enum MHD_Result res;
	json_t *body = parse_body(req, &res);
	if (body == NULL)
		return res;
	static const char *const known[] = {"task", "args", "kwargs", "options", NULL};
	struct verr e;
	e.text[0] = '\0';
	json_t *task = json_object_get(body, "task");
	json_t *args = json_object_get(body, "args");
	json_t *kwargs = json_object_get(body, "kwargs");
	json_t *options = json_object_get(body, "options");
	aiq_enqueue_opts *opts = NULL;
	int bad = check_unknown(&e, "", body, known);
	if (!bad && task == NULL)
		bad = fail(&e, "", "task", "field required");
	if (!bad && (!json_is_string(task) || json_string_length(task) == 0))
		bad = fail(&e, "", "task", "expected a non-empty string");
	if (!bad && args && !json_is_null(args) && !json_is_array(args))
		bad = fail(&e, "", "args", "expected an array");
	if (!bad && kwargs && !json_is_null(kwargs) && !json_is_object(kwargs))
		bad = fail(&e, "", "kwargs", "expected an object");
	if (!bad && aiq_enqueue_opts_new(&opts) != AIQ_OK)
		bad = fail(&e, "", "", "out of memory");
	if (!bad && options && !json_is_null(options))
		bad = build_opts(&e, options, opts);
	if (bad) {
		aiq_enqueue_opts_free(opts);
		json_decref(body);
		return reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT, "%s", e.text);
	}
	char *args_text = json_is_array(args) ? json_dumps(args, JSON_COMPACT) : NULL;
	char *kwargs_text = json_is_object(kwargs) ? json_dumps(kwargs, JSON_COMPACT) : NULL;
	char *name = strdup(json_string_value(task));
	json_decref(body);
	aiq_client *c = NULL;
	char *id = NULL;
	int existing = 0;
	int rc = name ? client_pool_get(&c, req->srv->clients) : AIQ_ENOMEM;
	if (rc == AIQ_OK)
		rc = aiq_client_enqueue_unique(&id, &existing, c, name, args_text, kwargs_text,
		                               opts);
	client_pool_done(req->srv->clients, c, rc);
	if (rc == AIQ_OK)
		dash_track(req->srv, id, name, args_text, kwargs_text);
	free(args_text);
	free(kwargs_text);
	aiq_enqueue_opts_free(opts);
	if (rc != AIQ_OK) {
		free(name);
		return reply_aiq_error(req, rc, "enqueue failed");
	}
	if (!existing)
		metrics_enqueued(name, 1);
	free(name);
	res = reply_json(
	        req, MHD_HTTP_ACCEPTED,
	        json_pack("{sssssb}", "task_id", id, "status", "queued", "existing", existing));
	aiq_free(id);
	return res;
}

json_t *task_state_json(const aiq_result *r)
{
	int state = aiq_result_state(r);
	json_t *result = json_loads(aiq_result_json(r), JSON_DECODE_ANY, NULL);
	json_t *error = json_null();
	if (aiq_result_error_type(r) || aiq_result_error_message(r))
		error = json_pack("{s s? s s? s s?}", "type", aiq_result_error_type(r), "message",
		                  aiq_result_error_message(r), "module",
		                  aiq_result_error_module(r));
	const char *date_done = aiq_result_date_done(r);
	return json_pack("{s s s s s b s o s o s o? s o}", "task_id", aiq_result_task_id(r),
	                 "state", aiq_state_name(state), "ready", aiq_state_is_ready(state),
	                 "result", result ? result : json_null(), "error",
	                 error ? error : json_null(), "traceback",
	                 aiq_result_traceback(r) ? json_string(aiq_result_traceback(r)) : NULL,
	                 "date_done", date_done ? json_string(date_done) : json_null());
}

static enum MHD_Result handle_revoke(struct request *req, aiq_client *c)
{
	struct server *srv = req->srv;
	int rc = aiq_client_revoke(c, req->task_id);
	if (rc == AIQ_ESTATE) {
		/* Already final: the task keeps its state, and the reply says which. */
		char detail[768];
		scrub_secrets(detail, sizeof detail, aiq_error_last());
		aiq_result *r = NULL;
		int grc = aiq_client_get_result(&r, c, req->task_id);
		client_pool_done(srv->clients, c, grc);
		const char *state = grc == AIQ_OK ? aiq_state_name(aiq_result_state(r)) : NULL;
		json_t *body = json_pack("{s s s s s s?}", "detail", detail, "task_id",
		                         req->task_id, "state", state);
		aiq_result_free(r);
		return reply_json(req, MHD_HTTP_CONFLICT, body);
	}
	client_pool_done(srv->clients, c, rc);
	if (rc != AIQ_OK)
		return reply_aiq_error(req, rc, "revoke failed");
	return reply_json(req, MHD_HTTP_OK,
	                  json_pack("{ssss}", "task_id", req->task_id, "state", "REVOKED"));
}

static enum MHD_Result handle_task(struct request *req)
{
	struct server *srv = req->srv;
	double wait_s = 0;
	const char *w = req_query(req, "wait");
	if (req->method != M_DELETE && w != NULL && prog_parse_duration(&wait_s, w, 1e9) != 0)
		return reply_error(req, MHD_HTTP_UNPROCESSABLE_CONTENT,
		                   "wait: expected " PROG_DURATION_HINT);
	if (wait_s > srv->opt.max_wait_s)
		wait_s = srv->opt.max_wait_s;
	aiq_client *c = NULL;
	int rc = client_pool_get(&c, srv->clients);
	if (rc != AIQ_OK)
		return reply_aiq_error(req, rc, "result store unavailable");
	if (req->method == M_DELETE)
		return handle_revoke(req, c);
	aiq_result *r = NULL;
	rc = aiq_client_get_result(&r, c, req->task_id);
	client_pool_done(srv->clients, c, rc);
	if (rc != AIQ_OK)
		return reply_aiq_error(req, rc, "cannot read the task");
	if (wait_s > 0 && !aiq_state_is_ready(aiq_result_state(r)) &&
	    !atomic_load(&srv->draining)) {
		aiq_result_free(r);
		/* Hand the suspended connection to the watcher: no thread waits for it. */
		req->deadline_ms = prog_mono_ms() + (int64_t)(wait_s * 1000.0);
		if (long_poll_submit(req) == 0)
			return MHD_YES;
		req->retry_after = 1;
		return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE,
		                   "too many long polls waiting (--max-long-polls %u); retry "
		                   "without ?wait= or later",
		                   srv->opt.max_long_polls);
	}
	json_t *reply = task_state_json(r);
	aiq_result_free(r);
	return reply_json(req, MHD_HTTP_OK, reply);
}

static enum MHD_Result handle_readyz(struct request *req)
{
	aiq_client *c = NULL;
	int rc = client_pool_get(&c, req->srv->clients);
	if (rc == AIQ_OK)
		rc = aiq_client_ping(c);
	client_pool_done(req->srv->clients, c, rc);
	if (rc != AIQ_OK) {
		/* The detail (hosts, URLs) goes to the log, not to whoever asks. */
		prog_log(AIQ_LOG_WARNING, "readyz", "not ready: %s", aiq_strerror(rc));
		return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE,
		                   "not ready: broker or result store unavailable");
	}
	if (atomic_load(&req->srv->draining))
		return reply_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
	return reply_json(req, MHD_HTTP_OK, json_pack("{ss}", "status", "ready"));
}

/* ---- GET /tracks/{track_id}/similar -------------------------------------- */

void similar_close(struct server *srv)
{
	aiq_similar_free(atomic_exchange(&srv->similar, NULL));
}

/* The shared handle, opened by the first request that needs it (a race
 * opens two and keeps one). */
static int similar_handle(aiq_similar **out, struct server *srv)
{
	*out = atomic_load(&srv->similar);
	if (*out)
		return AIQ_OK;
	aiq_similar *s = NULL;
	int rc = aiq_similar_open(&s, srv->cfg);
	if (rc != AIQ_OK)
		return rc;
	aiq_similar *expected = NULL;
	if (!atomic_compare_exchange_strong(&srv->similar, &expected, s)) {
		aiq_similar_free(s);
		s = expected;
	}
	*out = s;
	return AIQ_OK;
}

static enum MHD_Result handle_track_similar(struct request *req)
{
	const char *ktext = req_query(req, "k");
	long k = 10;
	if (ktext) {
		char *end = NULL;
		k = strtol(ktext, &end, 10);
		if (*ktext < '0' || *ktext > '9' || *end != '\0' || k < 1 || k > AIQ_SIMILAR_MAX_K)
			return reply_error(req, MHD_HTTP_BAD_REQUEST,
			                   "k: expected an integer from 1 to %d",
			                   AIQ_SIMILAR_MAX_K);
	}
	aiq_similar *s = NULL;
	int rc = similar_handle(&s, req->srv);
	if (rc == AIQ_EUNSUPPORTED)
		return reply_error(req, MHD_HTTP_NOT_IMPLEMENTED,
		                   "similarity search needs a PostgreSQL result store "
		                   "(--backend postgresql://… or AIQUEUE_ARCHIVE_URL)");
	if (rc != AIQ_OK)
		return reply_aiq_error(req, rc, "embeddings unavailable");
	aiq_similar_list *l = NULL;
	rc = aiq_similar_to_track(&l, s, req->task_id, (int)k);
	if (rc == AIQ_ENOTFOUND)
		return reply_error(req, MHD_HTTP_NOT_FOUND,
		                   "unknown track: no embedding is stored for it");
	if (rc == AIQ_EINVAL)
		return reply_error(req, MHD_HTTP_BAD_REQUEST, "track_id: %s", aiq_error_last());
	if (rc != AIQ_OK)
		return reply_aiq_error(req, rc, "similarity search failed");
	char *text = NULL;
	rc = aiq_similar_list_json(&text, l);
	aiq_similar_list_free(l);
	json_t *list = rc == AIQ_OK ? json_loads(text, 0, NULL) : NULL;
	aiq_free(text);
	if (list == NULL)
		return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	return reply_json(req, MHD_HTTP_OK,
	                  json_pack("{s:s, s:i, s:s, s:o}", "track_id", req->task_id, "k", (int)k,
	                            "backend", aiq_similar_backend(s), "similar", list));
}

enum MHD_Result route_dispatch(struct request *req)
{
	switch (req->route) {
	case ROUTE_ANALYZE: return handle_analyze(req);
	case ROUTE_ANALYZE_BATCH: return handle_analyze_batch(req);
	case ROUTE_TASKS: return handle_tasks(req);
	case ROUTE_TASK: return handle_task(req);
	case ROUTE_HEALTHZ: return reply_json(req, MHD_HTTP_OK, json_pack("{ss}", "status", "ok"));
	case ROUTE_READYZ: return handle_readyz(req);
	case ROUTE_METRICS: {
		size_t len = 0;
		char *text = metrics_render(&len, req->srv);
		if (text == NULL)
			return reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
		return reply_text(req, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
		                  text, len);
	}
	case ROUTE_OPENAPI: return reply_json(req, MHD_HTTP_OK, openapi_document());
	case ROUTE_DASHBOARD:
	case ROUTE_DASHBOARD_JS:
	case ROUTE_DASHBOARD_CSS: return handle_dash_asset(req);
	case ROUTE_DASHBOARD_STATE: return handle_dash_state(req);
	case ROUTE_DASHBOARD_STREAM: {
		const char *accept = req_header(req, MHD_HTTP_HEADER_ACCEPT);
		if (req->srv->stream_start && accept && strstr(accept, "text/event-stream"))
			return req->srv->stream_start(req);
		return reply_stream_once(req);
	}
	case ROUTE_DEAD_LETTERS: return handle_dead_letters(req);
	case ROUTE_DEAD_LETTER: return handle_dead_letter_delete(req);
	case ROUTE_DEAD_LETTER_REQUEUE: return handle_dead_letter_requeue(req);
	case ROUTE_TRACK_SIMILAR: return handle_track_similar(req);
	default: return reply_error(req, MHD_HTTP_NOT_FOUND, "Not Found");
	}
}
