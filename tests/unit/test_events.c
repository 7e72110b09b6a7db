/*
 * Celery events and remote control of the worker, against what Celery
 * 5.2.6 put on the wire (tests/data/events: events_by_type.json, every
 * event a real worker sent; raw_pidbox_requests.jsonl, every pidbox request
 * the CLI and a worker sent): the events' fields, their order and JSON
 * types; the replies, destination filtering, revocations; and the memory
 * broker, which has no bus.
 */
#include "testutil.h"

#include "broker.h"
#include "config_int.h"
#include "events.h"
#include "sent_events.h"

#include <aiqueue/aiqueue.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static json_t *captured_events(void)
{
	size_t len;
	char *text = aiq_test_read_data("events/events_by_type.json", &len);
	json_t *all = json_loadb(text, len, 0, NULL);
	free(text);
	ck_assert_ptr_nonnull(all);
	return all;
}

/* Same keys in the same order, and each value of the same JSON type
 * (null stands for any type in either: eta, parent_id...). */
static void assert_same_shape(const char *ours_text, const json_t *theirs)
{
	json_t *ours = json_loads(ours_text, 0, NULL);
	ck_assert_ptr_nonnull(ours);
	ck_assert_uint_eq(json_object_size(ours), json_object_size(theirs));
	void *a = json_object_iter(ours);
	void *b = json_object_iter((json_t *)(uintptr_t)theirs);
	while (a && b) {
		ck_assert_str_eq(json_object_iter_key(a), json_object_iter_key(b));
		json_t *va = json_object_iter_value(a), *vb = json_object_iter_value(b);
		if (!json_is_null(va) && !json_is_null(vb)) {
			bool num_a = json_is_number(va), num_b = json_is_number(vb);
			if (json_is_boolean(va) || json_is_boolean(vb))
				ck_assert_msg(json_is_boolean(va) && json_is_boolean(vb),
				              "%s: not both booleans", json_object_iter_key(a));
			else if (num_a && num_b)
				ck_assert_msg(json_is_integer(va) == json_is_integer(vb),
				              "%s: integer vs real", json_object_iter_key(a));
			else
				ck_assert_msg(json_typeof(va) == json_typeof(vb),
				              "%s: type differs", json_object_iter_key(a));
		}
		a = json_object_iter_next(ours, a);
		b = json_object_iter_next((json_t *)(uintptr_t)theirs, b);
	}
	ck_assert_ptr_null(a);
	ck_assert_ptr_null(b);
	json_decref(ours);
}

static const aiq__event_head HEAD = {"cw@test", 0, 42, 7, 1795916791.25};

START_TEST(worker_events_match_celery)
{
	json_t *all = captured_events();
	aiq__event_worker f = {2.0, 1, 9, {0.5, 0.25, 0.125}, "0.2.0", "Linux"};
	const char *types[] = {"worker-online", "worker-heartbeat", "worker-offline"};
	for (size_t i = 0; i < 3; i++) {
		char *ours = aiq__event_encode_worker(&HEAD, types[i], &f);
		ck_assert_ptr_nonnull(ours);
		assert_same_shape(ours, json_array_get(json_object_get(all, types[i]), 0));
		json_t *o = json_loads(ours, 0, NULL);
		ck_assert_str_eq(json_string_value(json_object_get(o, "type")), types[i]);
		ck_assert_str_eq(json_string_value(json_object_get(o, "hostname")), "cw@test");
		ck_assert(json_real_value(json_object_get(o, "freq")) == 2.0);
		ck_assert(json_real_value(json_object_get(o, "timestamp")) == 1795916791.25);
		ck_assert_int_eq(json_integer_value(json_object_get(o, "clock")), 7);
		json_decref(o);
		free(ours);
	}
	json_decref(all);
}
END_TEST

START_TEST(task_events_match_celery)
{
	json_t *all = captured_events();
	aiq__event_task f = {
	        .uuid = "u-1",
	        .name = "tasks.add",
	        .args = "(2, 3)",
	        .kwargs = "{}",
	        .root_id = "u-1",
	        .retries = 1,
	        .eta_us = INT64_C(1795916809219871),
	        .result = "5",
	        .runtime = 0.25,
	        .exception = "AnalysisError('boom')",
	        .traceback = "Traceback ...",
	};
	struct {
		int event;
		const char *type;
	} cases[] = {
	        {AIQ_EVENT_RECEIVED, "task-received"},   {AIQ_EVENT_STARTED, "task-started"},
	        {AIQ_EVENT_SUCCEEDED, "task-succeeded"}, {AIQ_EVENT_FAILED, "task-failed"},
	        {AIQ_EVENT_RETRIED, "task-retried"},     {AIQ_EVENT_REVOKED, "task-revoked"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *ours = aiq__event_encode_task(&HEAD, cases[i].event, &f);
		ck_assert_ptr_nonnull(ours);
		json_t *theirs = json_array_get(json_object_get(all, cases[i].type), 0);
		ck_assert_ptr_nonnull(theirs);
		assert_same_shape(ours, theirs);
		free(ours);
	}
	/* task-revoked: signum only with terminated, an int as Celery's (15 there). */
	char *rv = aiq__event_encode_task(&HEAD, AIQ_EVENT_REVOKED, &f);
	json_t *ro = json_loads(rv, 0, NULL);
	ck_assert(json_is_false(json_object_get(ro, "terminated")));
	ck_assert(json_is_null(json_object_get(ro, "signum")));
	json_decref(ro);
	free(rv);
	aiq__event_task killed = f;
	killed.terminated = true;
	killed.signum = 9;
	rv = aiq__event_encode_task(&HEAD, AIQ_EVENT_REVOKED, &killed);
	ro = json_loads(rv, 0, NULL);
	ck_assert(json_is_true(json_object_get(ro, "terminated")));
	ck_assert_int_eq(json_integer_value(json_object_get(ro, "signum")), 9);
	json_decref(ro);
	free(rv);
	char *r = aiq__event_encode_task(&HEAD, AIQ_EVENT_RECEIVED, &f);
	json_t *o = json_loads(r, 0, NULL);
	ck_assert_str_eq(json_string_value(json_object_get(o, "args")), "(2, 3)");
	ck_assert_str_eq(json_string_value(json_object_get(o, "eta")),
	                 "2026-11-29T01:46:49.219871+00:00");
	ck_assert(json_is_null(json_object_get(o, "expires")));
	json_decref(o);
	free(r);
	ck_assert_str_eq(aiq__event_type_name(AIQ_EVENT_REJECTED), "task-rejected");
	ck_assert_ptr_null(aiq__event_encode_task(&HEAD, 999, &f));
	json_decref(all);
}
END_TEST

START_TEST(task_sent_matches_celery)
{
	json_t *all = captured_events();
	aiq__event_sent f = {
	        .uuid = "e6237a5b-6d9b-477d-ac02-e1df57caec90",
	        .root_id = "e6237a5b-6d9b-477d-ac02-e1df57caec90",
	        .name = "tasks.add",
	        .args = "(2, 3)",
	        .kwargs = "{}",
	        .queue = "aiq_ev",
	        .exchange = "",
	        .routing_key = "aiq_ev",
	};
	char *ours = aiq__event_encode_sent(&HEAD, &f);
	ck_assert_ptr_nonnull(ours);
	json_t *theirs = json_array_get(json_object_get(all, "task-sent"), 0);
	ck_assert_ptr_nonnull(theirs);
	assert_same_shape(ours, theirs);
	json_t *o = json_loads(ours, 0, NULL);
	const char *same[] = {"uuid",  "root_id",  "name",        "args", "kwargs",
	                      "queue", "exchange", "routing_key", "type"};
	for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
		ck_assert_str_eq(json_string_value(json_object_get(o, same[i])),
		                 json_string_value(json_object_get(theirs, same[i])));
	ck_assert(json_is_null(json_object_get(o, "parent_id")));
	ck_assert(json_is_null(json_object_get(o, "eta")));
	json_decref(o);
	free(ours);
	/* With an ETA and an expiry: ISO-8601 with the offset, as Celery's. */
	f.eta_us = INT64_C(1795916809219871);
	f.expires_us = INT64_C(1795916809219871) + 60000000;
	ours = aiq__event_encode_sent(&HEAD, &f);
	o = json_loads(ours, 0, NULL);
	ck_assert_str_eq(json_string_value(json_object_get(o, "eta")),
	                 "2026-11-29T01:46:49.219871+00:00");
	ck_assert_str_eq(json_string_value(json_object_get(o, "expires")),
	                 "2026-11-29T01:47:49.219871+00:00");
	json_decref(o);
	free(ours);
	json_decref(all);
}
END_TEST

START_TEST(result_repr_is_python_repr)
{
	const char *cases[][2] = {
	        {"5", "5"},
	        {"\"second attempt\"", "'second attempt'"},
	        {"{\"track_id\": \"t-1\", \"n\": [1, 2.5]}", "{'track_id': 't-1', 'n': [1, 2.5]}"},
	        {"null", "None"},
	        {"true", "True"},
	        {"[]", "[]"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *r = aiq__event_repr_value(cases[i][0], 1024);
		ck_assert_str_eq(r, cases[i][1]);
		free(r);
	}
}
END_TEST

/* ---- remote control ---------------------------------------------------------- */

static aiq_worker *control_worker(const char *hostname)
{
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.hostname", hostname), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.queues", "aiq_ev"), AIQ_OK);
	aiq_worker *w;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	aiq_config_free(cfg);
	ck_assert_int_eq(aiq__control_init(w), AIQ_OK);
	return w;
}

static void noop(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_succeed(t, "null");
}

/* The reply's value for this node, or NULL when there was no reply. */
static json_t *ask(aiq_worker *w, const char *request, bool *ran)
{
	aiq__control_reply r;
	bool shutdown;
	*ran = aiq__control_handle(w, request, &r, &shutdown);
	ck_assert(!shutdown);
	json_t *value = NULL;
	if (r.body) {
		json_t *body = json_loads(r.body, 0, NULL);
		ck_assert_ptr_nonnull(body);
		ck_assert_uint_eq(json_object_size(body), 1);
		value = json_incref(json_object_get(body, w->hostname));
		json_decref(body);
	}
	aiq__control_reply_clear(&r);
	return value;
}

static char *request(const char *method, const char *args, const char *dest)
{
	return aiq__asprintf("{\"method\": \"%s\", \"arguments\": %s, \"destination\": %s, "
	                     "\"pattern\": null, \"matcher\": null, \"ticket\": \"t-1\", "
	                     "\"reply_to\": {\"exchange\": \"reply.celery.pidbox\", "
	                     "\"routing_key\": \"oid\"}}",
	                     method, args, dest);
}

START_TEST(captured_requests_are_answered)
{
	aiq_worker *w = control_worker("aiqw1@vm");
	ck_assert_int_eq(aiq_worker_register(w, "tasks.add", noop, NULL, NULL), AIQ_OK);
	size_t len;
	char *text = aiq_test_read_data("events/raw_pidbox_requests.jsonl", &len);
	size_t answered = 0, casts = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		json_t *cap = json_loads(line, 0, NULL);
		ck_assert_ptr_nonnull(cap);
		const char *body = json_string_value(json_object_get(cap, "body"));
		json_t *req = json_loads(body, 0, NULL);
		const char *method = json_string_value(json_object_get(req, "method"));
		json_t *dest = json_object_get(req, "destination");
		bool wants_reply = json_object_get(req, "reply_to") != NULL;

		aiq__control_reply r;
		bool shutdown, ran = aiq__control_handle(w, body, &r, &shutdown);
		bool mine = !json_is_array(dest) || json_array_size(dest) == 0;
		ck_assert_msg(ran == mine, "%s ran=%d", method, ran);
		if (!mine || !wants_reply || strcmp(method, "hello") == 0) {
			/* Not for us, a cast, or our own hello (None). */
			if (strcmp(method, "hello") != 0)
				ck_assert_ptr_null(r.body);
			casts++;
		} else {
			ck_assert_ptr_nonnull(r.body);
			ck_assert_str_eq(r.exchange, "reply.celery.pidbox");
			ck_assert_str_eq(r.routing_key,
			                 json_string_value(json_object_get(
			                         json_object_get(req, "reply_to"), "routing_key")));
			ck_assert_str_eq(r.ticket,
			                 json_string_value(json_object_get(req, "ticket")));
			json_t *reply = json_loads(r.body, 0, NULL);
			json_t *v = json_object_get(reply, "aiqw1@vm");
			ck_assert_ptr_nonnull(v);
			ck_assert_msg(json_object_get(v, "error") == NULL, "%s: %s", method,
			              r.body);
			if (strcmp(method, "ping") == 0)
				ck_assert_str_eq(json_string_value(json_object_get(v, "ok")),
				                 "pong");
			if (strcmp(method, "registered") == 0) {
				ck_assert(json_is_array(v));
				bool found = false;
				for (size_t i = 0; i < json_array_size(v); i++)
					found = found ||
					        strcmp(json_string_value(json_array_get(v, i)),
					               "tasks.add") == 0;
				ck_assert(found);
			}
			if (strcmp(method, "stats") == 0) {
				/* every key Celery's stats has (and its rusage keys) */
				size_t slen;
				char *st = aiq_test_read_data("events/cli_inspect_stats_json.txt",
				                              &slen);
				json_t *croot = json_loads(st, 0, NULL);
				json_t *cs = json_object_get(croot, "aiqw1@vm");
				free(st);
				ck_assert_ptr_nonnull(cs);
				const char *k;
				json_t *cv;
				json_object_foreach(cs, k, cv)
				{
					ck_assert_msg(json_object_get(v, k) != NULL,
					              "stats lacks %s", k);
				}
				json_object_foreach(json_object_get(cs, "rusage"), k, cv)
				{
					ck_assert_msg(
					        json_object_get(json_object_get(v, "rusage"), k),
					        "rusage lacks %s", k);
				}
				json_decref(croot);
				/* G10: stats.clock is a string, clock.clock an int */
				ck_assert(json_is_string(json_object_get(v, "clock")));
				ck_assert(json_is_object(json_object_get(v, "total")));
				ck_assert(json_is_object(json_object_get(v, "rusage")));
				ck_assert(json_is_integer(json_object_get(v, "prefetch_count")));
			}
			if (strcmp(method, "clock") == 0)
				ck_assert(json_is_integer(json_object_get(v, "clock")));
			if (strcmp(method, "active") == 0 || strcmp(method, "revoked") == 0)
				ck_assert(json_is_array(v));
			json_decref(reply);
			answered++;
		}
		aiq__control_reply_clear(&r);
		json_decref(req);
		json_decref(cap);
	}
	free(text);
	ck_assert_uint_gt(answered, 20);
	ck_assert_uint_gt(casts, 5);

	/* Every id revoked there, as a string (API cast) or a list (CLI). */
	bool ran;
	char *rq = request("revoked", "{}", "null");
	json_t *ids = ask(w, rq, &ran);
	free(rq);
	const char *want[] = {
	        "7d6a6102-73ff-4d12-8756-b8b4595039c7", "c7461d72-6a3d-4b43-812e-9ffc75ebcf68",
	        "aaaaaaaa-0000-0000-0000-000000000001", "aaaaaaaa-0000-0000-0000-000000000003"};
	for (size_t k = 0; k < 4; k++) {
		bool found = false;
		for (size_t i = 0; i < json_array_size(ids); i++)
			found = found ||
			        strcmp(json_string_value(json_array_get(ids, i)), want[k]) == 0;
		ck_assert_msg(found, "%s not revoked", want[k]);
	}
	json_decref(ids);
	aiq_worker_free(w);
}
END_TEST

START_TEST(destination_filtering_as_kombu)
{
	aiq_worker *w = control_worker("aiqw1@vm");
	struct {
		const char *dest, *pattern, *matcher;
		bool runs;
	} cases[] = {
	        {"null", NULL, NULL, true},
	        {"[]", NULL, NULL, true},
	        {"[\"aiqw1@vm\"]", NULL, NULL, true},
	        {"[\"other@vm\", \"aiqw1@vm\"]", NULL, NULL, true},
	        {"[\"other@vm\"]", NULL, NULL, false},
	        {"[\"aiqw1@vm2\"]", NULL, NULL, false},
	        /* a string: Python's `in` is a substring test */
	        {"\"x,aiqw1@vm,y\"", NULL, NULL, true},
	        {"\"aiqw1\"", NULL, NULL, false},
	        {"null", "aiqw*@vm", "glob", true},
	        {"null", "celery@*", "glob", false},
	        {"null", "aiq.[0-9]@", "pcre", true},
	        {"null", "vm", "pcre", false}, /* re.match is anchored */
	        {"null", "aiqw1@vm", "nosuch", false},
	        /* a destination wins over a pattern */
	        {"[\"other@vm\"]", "*", "glob", false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *rq = aiq__asprintf(
		        "{\"method\": \"ping\", \"arguments\": {}, \"destination\": "
		        "%s, \"pattern\": %s%s%s, \"matcher\": %s%s%s}",
		        cases[i].dest, cases[i].pattern ? "\"" : "",
		        cases[i].pattern ? cases[i].pattern : "null", cases[i].pattern ? "\"" : "",
		        cases[i].matcher ? "\"" : "", cases[i].matcher ? cases[i].matcher : "null",
		        cases[i].matcher ? "\"" : "");
		aiq__control_reply r;
		bool shutdown;
		bool ran = aiq__control_handle(w, rq, &r, &shutdown);
		ck_assert_msg(ran == cases[i].runs, "case %zu: %s", i, rq);
		ck_assert_ptr_null(r.body); /* no reply_to: a cast */
		aiq__control_reply_clear(&r);
		free(rq);
	}
	aiq_worker_free(w);
}
END_TEST

START_TEST(errors_revoke_hello_shutdown)
{
	aiq_worker *w = control_worker("aiqw1@vm");
	bool ran;
	char *rq = request("no_such_method", "{}", "null");
	json_t *v = ask(w, rq, &ran);
	free(rq);
	ck_assert_str_eq(json_string_value(json_object_get(v, "error")),
	                 "KeyError('no_such_method')");
	json_decref(v);

	/* add_consumer / cancel_consumer: Celery 5.2's replies, given at once
	 * (the consumer thread does the change); bad arguments as kombu answers
	 * a handler's exception. */
	struct {
		const char *method, *args, *key, *text;
	} qcases[] = {
	        {"add_consumer", "{\"queue\": \"q2\"}", "ok", "add consumer q2"},
	        {"add_consumer",
	         "{\"queue\": \"q2\", \"exchange\": null, \"exchange_type\": \"direct\", "
	         "\"routing_key\": null, \"durable\": true}",
	         "ok", "add consumer q2"},
	        {"cancel_consumer", "{\"queue\": \"q9\"}", "ok", "no longer consuming from q9"},
	        {"add_consumer", "{}", "error",
	         "TypeError(\"add_consumer() missing 1 required positional argument: 'queue'\")"},
	        {"cancel_consumer", "{}", "error",
	         "TypeError(\"cancel_consumer() missing 1 required positional argument: "
	         "'queue'\")"},
	        {"add_consumer", "{\"queue\": 5}", "error",
	         "TypeError('queue must be a non-empty string')"},
	        {"add_consumer", "{\"queue\": \"q3\", \"exchange\": 7}", "error",
	         "TypeError('exchange must be a string or None')"},
	        {"add_consumer", "{\"queue\": \"q3\", \"exchange_type\": \"nosuch\"}", "error",
	         "ValueError(\"unknown exchange type 'nosuch' (direct, topic, fanout or "
	         "headers)\")"},
	};
	for (size_t i = 0; i < sizeof qcases / sizeof qcases[0]; i++) {
		rq = request(qcases[i].method, qcases[i].args, "null");
		v = ask(w, rq, &ran);
		free(rq);
		ck_assert_msg(json_is_string(json_object_get(v, qcases[i].key)), "case %zu", i);
		ck_assert_str_eq(json_string_value(json_object_get(v, qcases[i].key)),
		                 qcases[i].text);
		json_decref(v);
	}
	/* Not applied yet (no consumer ran): the queues are still the config's. */
	rq = request("active_queues", "{}", "null");
	v = ask(w, rq, &ran);
	free(rq);
	ck_assert_uint_eq(json_array_size(v), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(v, 0), "name")),
	                 "aiq_ev");
	json_decref(v);

	rq = request("revoke", "{\"task_id\": 42}", "null");
	v = ask(w, rq, &ran);
	free(rq);
	ck_assert_ptr_nonnull(json_object_get(v, "error"));
	json_decref(v);

	rq = request("revoke", "{\"task_id\": [\"a-1\", \"a-2\"]}", "null");
	v = ask(w, rq, &ran);
	free(rq);
	ck_assert_str_eq(json_string_value(json_object_get(v, "ok")),
	                 "tasks a-1, a-2 flagged as revoked");
	json_decref(v);

	rq = request("revoke",
	             "{\"task_id\": \"a-3\", \"terminate\": true, \"signal\": \"SIGTERM\"}",
	             "null");
	v = ask(w, rq, &ran);
	free(rq);
	ck_assert_str_eq(json_string_value(json_object_get(v, "ok")), "terminate: tasks unknown");
	json_decref(v);

	/* A peer's hello: its revoked ids are taken, ours are returned. */
	rq = request(
	        "hello",
	        "{\"from_node\": \"py@vm\", \"revoked\": {\"p-1\": [5.5, \"p-1\"], \"p-2\": 7.25}}",
	        "null");
	v = ask(w, rq, &ran);
	free(rq);
	json_t *rv = json_object_get(v, "revoked");
	ck_assert(json_is_object(rv));
	ck_assert_ptr_nonnull(json_object_get(rv, "a-1"));
	/* Celery's shape: id -> [float time, id] (LimitedSet.update needs a float) */
	ck_assert(json_is_real(json_array_get(json_object_get(rv, "a-1"), 0)));
	ck_assert_str_eq(json_string_value(json_array_get(json_object_get(rv, "a-1"), 1)), "a-1");
	ck_assert_ptr_nonnull(json_object_get(rv, "a-3"));
	/* their times are their monotonic clock: the ids must not expire here */
	ck_assert_ptr_nonnull(json_object_get(rv, "p-1"));
	ck_assert_ptr_nonnull(json_object_get(rv, "p-2"));
	ck_assert(json_is_integer(json_object_get(v, "clock")));
	json_decref(v);

	/* Our own hello is answered with None. */
	rq = request("hello", "{\"from_node\": \"aiqw1@vm\", \"revoked\": {}}", "null");
	aiq__control_reply r;
	bool shutdown;
	ck_assert(aiq__control_handle(w, rq, &r, &shutdown));
	free(rq);
	ck_assert_str_eq(r.body, "{\"aiqw1@vm\":null}");
	aiq__control_reply_clear(&r);

	/* shutdown answers nothing, as Celery's (it raises WorkerShutdown). */
	rq = request("shutdown", "{}", "[\"aiqw1@vm\"]");
	ck_assert(aiq__control_handle(w, rq, &r, &shutdown));
	free(rq);
	ck_assert(shutdown);
	ck_assert_ptr_null(r.body);
	aiq__control_reply_clear(&r);

	/* Not JSON, not a request: ignored, never a crash. */
	ck_assert(!aiq__control_handle(w, "{not json", &r, &shutdown));
	ck_assert(!aiq__control_handle(w, "[1, 2]", &r, &shutdown));
	ck_assert(!aiq__control_handle(w, "{\"method\": 5}", &r, &shutdown));
	aiq_worker_free(w);
}
END_TEST

/* ---- terminate in the process pool ---------------------------------------- */

struct term_run {
	aiq_worker *w;
	atomic_long tid;
	int rc;
};

static void *term_run_main(void *arg)
{
	struct term_run *r = arg;
	atomic_store(&r->tid, (long)gettid());
	r->rc = aiq_worker_run(r->w);
	return NULL;
}

/* Reports PROGRESS, then sleeps through every request to stop. */
static void stubborn(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_progress(t, "{\"step\": 1}");
	for (int i = 0; i < 300; i++) {
		struct timespec ts = {0, 100 * 1000000L};
		nanosleep(&ts, NULL);
	}
	aiq_task_succeed(t, "\"not killed\"");
}

static int wait_state(aiq_client *c, const char *id, int want, int ms)
{
	int st = AIQ_STATE_PENDING;
	for (int i = 0; i < ms / 10; i++) {
		aiq_result *r = NULL;
		if (aiq_client_get_result(&r, c, id) == AIQ_OK)
			st = aiq_result_state(r);
		aiq_result_free(r);
		if (st == want)
			break;
		struct timespec ts = {0, 10 * 1000000L};
		nanosleep(&ts, NULL);
	}
	return st;
}

START_TEST(terminate_kills_the_pool_process)
{
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://evterm"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://evterm"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.hostname", "aiqw1@vm"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.pool", "processes"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 1), AIQ_OK);
	struct term_run run = {0};
	ck_assert_int_eq(aiq_worker_new(&run.w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq__control_init(run.w), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(run.w, "tasks.stubborn", stubborn, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(run.w, "tasks.add", noop, NULL, NULL), AIQ_OK);
	aiq_client *c;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, term_run_main, &run), 0);
	/* Nothing else allocates here until the run has forked its fork server
	 * (a fork while another thread is in malloc can copy a locked allocator). */
	long tid;
	while ((tid = atomic_load(&run.tid)) == 0)
		usleep(1000);
	char path[64], buf[32];
	snprintf(path, sizeof path, "/proc/self/task/%ld/children", tid);
	ssize_t n = 0;
	for (int i = 0; i < 10000 && n <= 0; i++) {
		int fd = open(path, O_RDONLY);
		ck_assert_int_ge(fd, 0);
		n = read(fd, buf, sizeof buf);
		close(fd);
		if (n <= 0)
			usleep(1000);
	}
	ck_assert_int_gt(n, 0);

	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "tasks.stubborn", "[]", NULL, NULL), AIQ_OK);
	ck_assert_int_eq(wait_state(c, id, AIQ_STATE_PROGRESS, 20000), AIQ_STATE_PROGRESS);

	char *args = aiq__asprintf("{\"task_id\": \"%s\", \"terminate\": true, "
	                           "\"signal\": \"SIGTERM\"}",
	                           id);
	char *rq = request("revoke", args, "null");
	bool ran;
	int64_t asked = aiq__mono_ms();
	json_t *v = ask(run.w, rq, &ran);
	char *want = aiq__asprintf("terminate: %s", id);
	ck_assert_str_eq(json_string_value(json_object_get(v, "ok")), want);
	json_decref(v);
	/* REVOKED at once, long before the handler's 30 s were up. */
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, c, id, 10000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	aiq_result_free(r);
	/* The pool got a new process: the next task runs. */
	char *next = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&next, c, "tasks.add", "[]", NULL, NULL), AIQ_OK);
	ck_assert_int_eq(aiq_client_wait(&r, c, next, 10000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	ck_assert_int_lt(aiq__mono_ms() - asked, 15000);

	aiq_worker_stop(run.w);
	pthread_join(th, NULL);
	ck_assert_int_eq(run.rc, AIQ_OK);
	/* The delivery was acknowledged, not handed back. */
	uint64_t ready = 1;
	ck_assert_int_eq(aiq_client_queue_depth(&ready, c, NULL), AIQ_OK);
	ck_assert_uint_eq(ready, 0);
	aiq_free(next);
	aiq_free(id);
	free(want);
	free(rq);
	free(args);
	aiq_client_free(c);
	aiq_worker_free(run.w);
	aiq_config_free(cfg);
}
END_TEST

/* add_consumer / cancel_consumer on a running worker (memory://): a task
 * on a queue not consumed waits; add_consumer takes it; active_queues lists
 * the queue with its binding; after cancel_consumer a new task there stays
 * queued, and the queues consumed from the start still work. */
static json_t *queue_names(aiq_worker *w)
{
	bool ran;
	char *rq = request("active_queues", "{}", "null");
	json_t *v = ask(w, rq, &ran);
	free(rq);
	json_t *names = json_array();
	size_t i;
	json_t *q;
	json_array_foreach(v, i, q) json_array_append(names, json_object_get(q, "name"));
	json_decref(v);
	return names;
}

static bool has_name(const json_t *names, const char *q)
{
	size_t i;
	json_t *v;
	json_array_foreach(names, i, v) if (strcmp(json_string_value(v), q) == 0) return true;
	return false;
}

/* Wait until active_queues does (or does not) list q. */
static bool wait_queue(aiq_worker *w, const char *q, bool listed)
{
	for (int i = 0; i < 500; i++) {
		json_t *names = queue_names(w);
		bool has = has_name(names, q);
		json_decref(names);
		if (has == listed)
			return true;
		usleep(10000);
	}
	return false;
}

static char *enqueue_to(aiq_client *c, const char *queue)
{
	aiq_enqueue_opts *o;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, queue), AIQ_OK);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "tasks.add", "[]", NULL, o), AIQ_OK);
	aiq_enqueue_opts_free(o);
	return id;
}

START_TEST(add_and_cancel_consumer_while_running)
{
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://evqueues"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://evqueues"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.hostname", "aiqw1@vm"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.queues", "q1"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 1), AIQ_OK);
	struct term_run run = {0};
	ck_assert_int_eq(aiq_worker_new(&run.w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq__control_init(run.w), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(run.w, "tasks.add", noop, NULL, NULL), AIQ_OK);
	aiq_client *c;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, term_run_main, &run), 0);

	char *first = enqueue_to(c, "q2");
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_wait(&r, c, first, 300), AIQ_ETIMEDOUT);
	aiq_result_free(r); /* the latest state seen, PENDING */
	r = NULL;
	uint64_t depth = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, "q2"), AIQ_OK);
	ck_assert_uint_eq(depth, 1);

	bool ran;
	char *rq = request("add_consumer",
	                   "{\"queue\": \"q2\", \"exchange\": \"ex2\", \"exchange_type\": "
	                   "\"topic\", \"routing_key\": \"k.#\"}",
	                   "null");
	json_t *v = ask(run.w, rq, &ran);
	free(rq);
	ck_assert_str_eq(json_string_value(json_object_get(v, "ok")), "add consumer q2");
	json_decref(v);
	ck_assert_int_eq(aiq_client_wait(&r, c, first, 10000), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	ck_assert(wait_queue(run.w, "q2", true));
	rq = request("active_queues", "{}", "null");
	v = ask(run.w, rq, &ran);
	free(rq);
	ck_assert_uint_eq(json_array_size(v), 2);
	json_t *q2 = json_array_get(v, 1);
	ck_assert_str_eq(json_string_value(json_object_get(q2, "name")), "q2");
	ck_assert_str_eq(
	        json_string_value(json_object_get(json_object_get(q2, "exchange"), "name")), "ex2");
	ck_assert_str_eq(
	        json_string_value(json_object_get(json_object_get(q2, "exchange"), "type")),
	        "topic");
	ck_assert_str_eq(json_string_value(json_object_get(q2, "routing_key")), "k.#");
	json_decref(v);

	/* Twice: still consumed once. */
	rq = request("add_consumer", "{\"queue\": \"q2\"}", "null");
	v = ask(run.w, rq, &ran);
	free(rq);
	ck_assert_str_eq(json_string_value(json_object_get(v, "ok")), "add consumer q2");
	json_decref(v);

	rq = request("cancel_consumer", "{\"queue\": \"q2\"}", "null");
	v = ask(run.w, rq, &ran);
	free(rq);
	ck_assert_str_eq(json_string_value(json_object_get(v, "ok")),
	                 "no longer consuming from q2");
	json_decref(v);
	ck_assert(wait_queue(run.w, "q2", false));
	json_t *names = queue_names(run.w);
	ck_assert_uint_eq(json_array_size(names), 1);
	ck_assert(has_name(names, "q1"));
	json_decref(names);

	char *late = enqueue_to(c, "q2");
	ck_assert_int_eq(aiq_client_wait(&r, c, late, 300), AIQ_ETIMEDOUT);
	aiq_result_free(r);
	r = NULL;
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, "q2"), AIQ_OK);
	ck_assert_uint_eq(depth, 1);
	/* q1 is still served; cancelling every queue leaves the worker idle,
	 * not failed. */
	char *on_q1 = enqueue_to(c, "q1");
	ck_assert_int_eq(aiq_client_wait(&r, c, on_q1, 10000), AIQ_OK);
	aiq_result_free(r);
	rq = request("cancel_consumer", "{\"queue\": \"q1\"}", "null");
	v = ask(run.w, rq, &ran);
	free(rq);
	json_decref(v);
	ck_assert(wait_queue(run.w, "q1", false));
	usleep(200000);
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, "q2"), AIQ_OK);
	ck_assert_uint_eq(depth, 1);

	aiq_worker_stop(run.w);
	pthread_join(th, NULL);
	ck_assert_int_eq(run.rc, AIQ_OK);
	aiq_free(first);
	aiq_free(late);
	aiq_free(on_q1);
	aiq_client_free(c);
	aiq_worker_free(run.w);
	aiq_config_free(cfg);
}
END_TEST

static int destroyed;
static void count_destroy(void *ud)
{
	(void)ud;
	destroyed++;
}

static void no_event(const char *json, void *ud)
{
	(void)json;
	(void)ud;
	ck_abort_msg("no event expected");
}

/* The memory broker carries no events: a receiver is refused at once (its
 * userdata destroyed), and a client asked for task-sent events still
 * enqueues, dropping the events (counted) without waiting on anything. */
START_TEST(receiver_and_task_sent_on_the_memory_broker)
{
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://sent"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://sent"), AIQ_OK);
	aiq_event_receiver *r = (aiq_event_receiver *)1;
	destroyed = 0;
	ck_assert_int_eq(aiq_event_receiver_new(&r, cfg, no_event, NULL, count_destroy),
	                 AIQ_EUNSUPPORTED);
	ck_assert_ptr_null(r);
	ck_assert_int_eq(destroyed, 1);
	ck_assert_int_eq(aiq_event_receiver_new(&r, cfg, NULL, NULL, count_destroy), AIQ_EINVAL);
	ck_assert_int_eq(destroyed, 2);
	ck_assert_int_eq(aiq_event_receiver_new(NULL, cfg, no_event, NULL, NULL), AIQ_EINVAL);
	aiq_event_receiver_free(NULL);
	ck_assert_uint_eq(aiq_event_receiver_count(NULL), 0);

	/* Off by default: no sender at all. */
	aiq__sent_events *s = (aiq__sent_events *)1;
	ck_assert_int_eq(aiq__sent_events_new(&s, cfg, "gen1@h"), AIQ_OK);
	ck_assert_ptr_null(s);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "client.send_sent_event", true), AIQ_OK);
	ck_assert_int_eq(aiq__sent_events_new(&s, cfg, "gen1@h"), AIQ_OK);
	ck_assert_ptr_nonnull(s);
	aiq__message m;
	aiq__message_init(&m);
	m.id = (char *)"id-1";
	m.task = (char *)"tasks.add";
	m.root_id = m.id;
	char *body = aiq__sent_events_encode(s, &m, "q");
	ck_assert_ptr_nonnull(body);
	json_t *o = json_loads(body, 0, NULL);
	ck_assert_str_eq(json_string_value(json_object_get(o, "hostname")), "gen1@h");
	ck_assert_str_eq(json_string_value(json_object_get(o, "routing_key")), "q");
	ck_assert_int_eq(json_integer_value(json_object_get(o, "clock")), 1);
	json_decref(o);
	aiq__sent_events_post(s, body);
	size_t sent = 1, dropped = 0;
	for (int i = 0; i < 200 && dropped == 0; i++) {
		aiq__sent_events_stats(s, &sent, &dropped);
		struct timespec ts = {0, 10 * 1000000L};
		nanosleep(&ts, NULL);
	}
	ck_assert_uint_eq(sent, 0);
	ck_assert_uint_eq(dropped, 1);
	aiq__sent_events_post(s, aiq__sent_events_encode(s, &m, "q")); /* dropped at once */
	aiq__sent_events_stats(s, &sent, &dropped);
	ck_assert_uint_eq(dropped, 2);
	aiq__sent_events_free(s);

	/* Through a client: enqueues succeed as without events. */
	aiq_client *c;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&id, c, "tasks.add", "[1, 2]", NULL, NULL), AIQ_OK);
	aiq_free(id);
	const char *args[2] = {"[1]", "[2]"};
	char *ids[2] = {NULL, NULL};
	ck_assert_int_eq(aiq_client_enqueue_batch(ids, NULL, c, "tasks.add", args, NULL, 2, NULL),
	                 AIQ_OK);
	aiq_free(ids[0]);
	aiq_free(ids[1]);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(memory_broker_has_no_bus)
{
	aiq__bus *bus = (aiq__bus *)1;
	ck_assert_int_eq(aiq__bus_open(&bus, "memory://ev", NULL), AIQ_EUNSUPPORTED);
	ck_assert_ptr_null(bus);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "memory"));

	/* A worker with events and control on the memory broker still runs
	 * its tasks; it only logs that it sends no events. */
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", "memory://ev"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://ev"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "worker.send_events", true), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "worker.remote_control", true), AIQ_OK);
	aiq_worker *w;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	aiq__events_start(w);
	aiq__control_start(w);
	ck_assert_ptr_null(w->events);
	ck_assert_ptr_null(w->control);
	aiq__events_task(w, AIQ_EVENT_STARTED, NULL, "id", "name", NULL, NULL); /* no-op */
	aiq_worker_free(w);
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("events");
	TCase *tc = tcase_create("events");
	tcase_add_test(tc, worker_events_match_celery);
	tcase_add_test(tc, task_events_match_celery);
	tcase_add_test(tc, task_sent_matches_celery);
	tcase_add_test(tc, result_repr_is_python_repr);
	tcase_add_test(tc, captured_requests_are_answered);
	tcase_add_test(tc, destination_filtering_as_kombu);
	tcase_add_test(tc, terminate_kills_the_pool_process);
	tcase_add_test(tc, errors_revoke_hello_shutdown);
	tcase_add_test(tc, add_and_cancel_consumer_while_running);
	tcase_add_test(tc, memory_broker_has_no_bus);
	tcase_add_test(tc, receiver_and_task_sent_on_the_memory_broker);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
