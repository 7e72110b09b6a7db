/*
 * Celery canvas: signatures to messages (checked against the embeds a real
 * Celery 5.2 client wrote, tests/data/celery_amqp_messages.json), and a
 * worker on memory:// applying links, errbacks and chains after a task's
 * final state.
 */
#include "testutil.h"

#include "broker.h"
#include "canvas_int.h"
#include "chord_contract.h"
#include "config_int.h"
#include "store.h"
#include "message.h"

#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- test vectors ---------------------------------------------------------- */

static json_t *vectors;

static void load_vectors(void)
{
	size_t len;
	char *text = aiq_test_read_data("celery_amqp_messages.json", &len);
	json_error_t jerr;
	vectors = json_loadb(text, len, 0, &jerr);
	ck_assert_msg(vectors != NULL, "test vectors: %s", jerr.text);
	free(text);
}

static void free_vectors(void)
{
	json_decref(vectors);
	vectors = NULL;
}

/* The decoded message of a captured Celery producer message. */
static void decode_producer(aiq__message *m, const char *name)
{
	const json_t *list = json_object_get(vectors, "producer");
	size_t i;
	const json_t *v;
	json_array_foreach(list, i, v)
	{
		if (strcmp(json_string_value(json_object_get(v, "name")), name) != 0)
			continue;
		aiq__wire w = {0};
		w.headers = json_deep_copy(json_object_get(v, "headers"));
		w.properties = json_deep_copy(json_object_get(v, "properties"));
		w.content_type = strdup("application/json");
		w.content_encoding = strdup("utf-8");
		const json_t *body = json_object_get(v, "body");
		w.body_len = json_string_length(body);
		w.body = (unsigned char *)strdup(json_string_value(body));
		ck_assert_int_eq(aiq__message_from_wire(m, &w), AIQ_OK);
		aiq__wire_clear(&w);
		return;
	}
	ck_abort_msg("no producer vector %s", name);
}

static void assert_json(const json_t *v, const char *expected)
{
	char *text = aiq__json_dumps_py(v);
	ck_assert_ptr_nonnull(text);
	ck_assert_str_eq(text, expected);
	free(text);
}

static json_t *parse(const char *text)
{
	json_error_t e;
	json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
	ck_assert_msg(v != NULL, "%s: %s", text, e.text);
	return v;
}

/* ---- signatures to messages ------------------------------------------------ */

/* The next step of a chain Celery started: the last element of embed.chain,
 * with the result prepended, its frozen task id, the rest of the chain. */
START_TEST(test_chain_next_step_from_celery)
{
	aiq__message parent;
	decode_producer(&parent, "chain");
	const json_t *chain = json_object_get(parent.embed, "chain");
	ck_assert_uint_eq(json_array_size(chain), 2);
	json_t *rest = json_copy((json_t *)(uintptr_t)chain);
	ck_assert_int_eq(json_array_remove(rest, 1), 0);
	json_t *result = json_integer(3); /* 1 + 2 */
	aiq__sig_send s;
	ck_assert_int_eq(aiq__signature_build(&s, json_array_get(chain, 1), result, parent.id,
	                                      parent.root_id, rest, NULL),
	                 AIQ_OK);
	ck_assert_str_eq(s.msg.task, "tasks.add");
	ck_assert_str_eq(s.msg.id, "164d832a-24f1-412b-9bfa-04c88f16329c");
	ck_assert_str_eq(s.msg.parent_id, parent.id);
	ck_assert_str_eq(s.msg.root_id, parent.root_id);
	ck_assert_str_eq(s.msg.reply_to, "4cc204dd-9308-3623-ae80-fb3a45f2593e");
	assert_json(s.msg.args, "[3, 3]");
	assert_json(s.msg.kwargs, "{}");
	ck_assert_ptr_null(s.queue);
	ck_assert_int_eq(s.not_before_ms, 0);
	/* The remaining step, unchanged, for the next worker to pop. */
	const json_t *next = json_object_get(s.msg.embed, "chain");
	ck_assert_uint_eq(json_array_size(next), 1);
	ck_assert_str_eq(json_string_value(json_object_get(
	                         json_object_get(json_array_get(next, 0), "options"), "task_id")),
	                 "fcaf3634-d006-4f6f-ac25-575d1600e379");
	ck_assert(json_is_null(json_object_get(s.msg.embed, "callbacks")));

	/* It encodes as a protocol v2 message and decodes back the same. */
	aiq__wire w;
	ck_assert_int_eq(aiq__message_to_wire(&w, &s.msg), AIQ_OK);
	aiq__message back;
	ck_assert_int_eq(aiq__message_from_wire(&back, &w), AIQ_OK);
	ck_assert_str_eq(back.id, s.msg.id);
	ck_assert_str_eq(back.parent_id, parent.id);
	ck_assert(json_equal(back.embed, s.msg.embed));
	ck_assert_str_eq(back.argsrepr, "(3, 3)");
	aiq__message_clear(&back);
	aiq__wire_clear(&w);
	aiq__sig_send_clear(&s);
	json_decref(result);
	json_decref(rest);
	aiq__message_clear(&parent);
}
END_TEST

/* link / link_error as Celery wrote them: the mutable callback gets the
 * result first, the immutable errback only its own args. */
START_TEST(test_links_from_celery)
{
	aiq__message parent;
	decode_producer(&parent, "kwargs_header_links");
	const json_t *cb = json_array_get(json_object_get(parent.embed, "callbacks"), 0);
	const json_t *eb = json_array_get(json_object_get(parent.embed, "errbacks"), 0);
	json_t *result = parse("{\"score\": 0.5}");
	aiq__sig_send s;
	ck_assert_int_eq(
	        aiq__signature_build(&s, cb, result, parent.id, parent.root_id, NULL, NULL),
	        AIQ_OK);
	assert_json(s.msg.args, "[{\"score\": 0.5}, 1]");
	ck_assert_str_eq(s.msg.parent_id, parent.id);
	ck_assert_str_ne(s.msg.id, parent.id);
	ck_assert_uint_eq(strlen(s.msg.id), 36);
	aiq__sig_send_clear(&s);

	json_t *id = json_string(parent.id);
	ck_assert_int_eq(aiq__signature_build(&s, eb, id, parent.id, parent.root_id, NULL, NULL),
	                 AIQ_OK);
	ck_assert_str_eq(s.msg.task, "tasks.noop");
	assert_json(s.msg.args, "[]");
	aiq__sig_send_clear(&s);
	json_decref(id);
	json_decref(result);
	aiq__message_clear(&parent);
}
END_TEST

START_TEST(test_options)
{
	json_t *sig = parse("{\"task\": \"t.x\", \"args\": [1], \"kwargs\": {\"k\": 2},"
	                    " \"options\": {\"queue\": \"q1\", \"routing_key\": \"rk\","
	                    " \"countdown\": 30, \"priority\": 7, \"expires\": 60,"
	                    " \"group_id\": \"g\", \"group_index\": 3, \"shadow\": \"sh\","
	                    " \"link\": {\"task\": \"t.cb\"},"
	                    " \"link_error\": [{\"task\": \"t.eb\", \"immutable\": true}],"
	                    " \"root_id\": \"r0\", \"parent_id\": \"p0\"},"
	                    " \"subtask_type\": null, \"immutable\": false}");
	aiq__sig_send s;
	int64_t before = aiq__now_ms();
	ck_assert_int_eq(aiq__signature_build(&s, sig, NULL, NULL, NULL, NULL, "gen1@h"), AIQ_OK);
	ck_assert_str_eq(s.queue, "q1");
	ck_assert_int_ge(s.not_before_ms, before + 30000);
	ck_assert_int_le(s.not_before_ms, aiq__now_ms() + 30000);
	ck_assert_int_eq(s.msg.eta_us / 1000, s.not_before_ms);
	ck_assert_int_gt(s.msg.expires_us, s.msg.eta_us);
	ck_assert_int_eq(s.msg.priority, 7);
	ck_assert_str_eq(s.msg.group, "g");
	ck_assert_str_eq(s.msg.shadow, "sh");
	ck_assert_str_eq(s.msg.origin, "gen1@h");
	ck_assert_str_eq(s.msg.root_id, "r0"); /* no caller's root: the options' */
	ck_assert_str_eq(s.msg.parent_id, "p0");
	ck_assert_int_eq(json_integer_value(json_object_get(s.msg.extra_headers, "group_index")),
	                 3);
	assert_json(s.msg.args, "[1]");
	ck_assert_str_eq(
	        json_string_value(json_object_get(
	                json_array_get(json_object_get(s.msg.embed, "callbacks"), 0), "task")),
	        "t.cb");
	ck_assert_uint_eq(json_array_size(json_object_get(s.msg.embed, "errbacks")), 1);
	aiq__sig_send_clear(&s);

	/* routing_key alone names the queue; an eta wins over a countdown; the
	 * caller's parent and root override the options'. */
	json_object_del(json_object_get(sig, "options"), "queue");
	json_object_set_new(json_object_get(sig, "options"), "eta",
	                    json_string("2030-01-02T03:04:05.5+00:00"));
	ck_assert_int_eq(aiq__signature_build(&s, sig, NULL, "p1", "r1", NULL, NULL), AIQ_OK);
	ck_assert_str_eq(s.queue, "rk");
	ck_assert_int_eq(s.msg.eta_us, 1893553445500000LL);
	ck_assert_str_eq(s.msg.root_id, "r1");
	ck_assert_str_eq(s.msg.parent_id, "p1");
	aiq__sig_send_clear(&s);
	json_decref(sig);

	/* A bare signature: fresh id, its own root, no parent. */
	sig = aiq__signature_object("t.bare");
	ck_assert_int_eq(aiq__signature_build(&s, sig, NULL, NULL, NULL, NULL, NULL), AIQ_OK);
	ck_assert_str_eq(s.msg.root_id, s.msg.id);
	ck_assert_ptr_null(s.msg.parent_id);
	assert_json(s.msg.embed,
	            "{\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}");
	aiq__sig_send_clear(&s);
	json_decref(sig);
}
END_TEST

START_TEST(test_rejects)
{
	static const char *const bad[] = {
	        "[]",
	        "{\"args\": []}",
	        "{\"task\": \"\"}",
	        "{\"task\": \"a\\nb\"}",
	        "{\"task\": \"t\", \"args\": {}}",
	        "{\"task\": \"t\", \"kwargs\": []}",
	        "{\"task\": \"t\", \"options\": 3}",
	        "{\"task\": \"t\", \"subtask_type\": \"chain\"}",
	        "{\"task\": \"t\", \"immutable\": 1}",
	        "{\"task\": \"t\", \"options\": {\"queue\": 5}}",
	        "{\"task\": \"t\", \"options\": {\"countdown\": -1}}",
	        "{\"task\": \"t\", \"options\": {\"eta\": \"tomorrow\"}}",
	        "{\"task\": \"t\", \"options\": {\"priority\": 256}}",
	        "{\"task\": \"t\", \"options\": {\"link\": [{\"task\": 1}]}}",
	        "{\"task\": \"t\", \"options\": {\"group_index\": -2}}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		json_t *sig = parse(bad[i]);
		aiq__sig_send s;
		int rc = aiq__signature_build(&s, sig, NULL, NULL, NULL, NULL, NULL);
		ck_assert_msg(rc == AIQ_EINVAL, "%s: %d", bad[i], rc);
		ck_assert_ptr_null(s.msg.id);
		ck_assert_str_ne(aiq_error_last(), "");
		json_decref(sig);
	}
}
END_TEST

/* ---- the public API --------------------------------------------------------- */

START_TEST(test_signature_api)
{
	aiq_signature *s = NULL, *cb = NULL;
	ck_assert_int_eq(aiq_signature_new(&s, "tasks.add"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_args_json(s, "[3]"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_queue(s, "c"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_immutable(s, 1), AIQ_OK);
	char *text = NULL;
	ck_assert_int_eq(aiq_signature_to_json(&text, s), AIQ_OK);
	/* Celery's own Signature.__json__() shape and order. */
	ck_assert_str_eq(text, "{\"task\": \"tasks.add\", \"args\": [3], \"kwargs\": {}, "
	                       "\"options\": {\"queue\": \"c\"}, \"subtask_type\": null, "
	                       "\"immutable\": true}");
	aiq_free(text);

	ck_assert_int_eq(aiq_signature_new(&cb, "tasks.cb"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_task_id(cb, "cb-id"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_countdown_ms(cb, 1500), AIQ_OK);
	ck_assert_int_eq(aiq_signature_add_link(s, cb), AIQ_OK);
	ck_assert_int_eq(aiq_signature_add_link_error(s, cb), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_task_id(cb, "changed"), AIQ_OK); /* copied before */
	ck_assert_int_eq(aiq_signature_to_json(&text, s), AIQ_OK);
	json_t *v = parse(text);
	aiq_free(text);
	const json_t *o = json_object_get(v, "options");
	const json_t *link = json_array_get(json_object_get(o, "link"), 0);
	ck_assert_str_eq(
	        json_string_value(json_object_get(json_object_get(link, "options"), "task_id")),
	        "cb-id");
	ck_assert(json_real_value(json_object_get(json_object_get(link, "options"), "countdown")) ==
	          1.5);
	ck_assert_uint_eq(json_array_size(json_object_get(o, "link_error")), 1);
	ck_assert_int_eq(aiq__signature_check(aiq__signature_json(s)), AIQ_OK);
	json_decref(v);

	/* Bad input: a clear error, nothing changed. */
	ck_assert_int_eq(aiq_signature_set_args_json(s, "{}"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_set_args_json(s, "[1"), AIQ_EJSON);
	ck_assert_int_eq(aiq_signature_set_kwargs_json(s, "[]"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_set_queue(s, ""), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_set_task_id(s, "a\nb"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_set_countdown_ms(s, -1), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_add_link(s, s), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_add_link(s, NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_set_queue(NULL, "q"), AIQ_EINVAL);
	aiq_signature *bad = (aiq_signature *)1;
	ck_assert_int_eq(aiq_signature_new(&bad, ""), AIQ_EINVAL);
	ck_assert_ptr_null(bad);
	ck_assert_int_eq(aiq_signature_new(NULL, "t"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_signature_to_json(&text, s), AIQ_OK);
	ck_assert_ptr_nonnull(strstr(text, "\"args\": [3]"));
	aiq_free(text);
	aiq_signature_free(cb);
	aiq_signature_free(s);
	aiq_signature_free(NULL);
}
END_TEST

/* ---- the worker applies them ---------------------------------------------- */

struct fixture {
	aiq_config *cfg;
	aiq_client *client;
	aiq_worker *worker;
	aiq__broker *raw;
	pthread_t thread;
};

static void add_handler(aiq_task *t, void *ud)
{
	(void)ud;
	json_t *args = json_loads(aiq_task_args_json(t), 0, NULL);
	json_int_t sum = 0;
	size_t i;
	json_t *v;
	json_array_foreach(args, i, v) sum += json_integer_value(v);
	json_decref(args);
	char buf[64];
	snprintf(buf, sizeof buf, "%lld", (long long)sum);
	aiq_task_succeed(t, buf);
}

static void echo_handler(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_succeed(t, aiq_task_args_json(t));
}

static void fail_handler(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_fail(t, "AnalysisError", "model exploded", "tasks");
}

/* A chord body: counts its runs and succeeds with its arguments. */
static atomic_int collect_runs;

static void collect_handler(aiq_task *t, void *ud)
{
	(void)ud;
	atomic_fetch_add(&collect_runs, 1);
	aiq_task_succeed(t, aiq_task_args_json(t));
}

/* Ignores cancellation: runs past any hard time limit, then reports. */
static void hang_handler(aiq_task *t, void *ud)
{
	(void)ud;
	usleep(1500 * 1000);
	aiq_task_succeed(t, "\"late\"");
}

static void *run_thread(void *arg)
{
	struct fixture *fx = arg;
	ck_assert_int_eq(aiq_worker_run(fx->worker), AIQ_OK);
	return NULL;
}

static void fx_init(struct fixture *fx, const char *name)
{
	memset(fx, 0, sizeof *fx);
	char url[128];
	snprintf(url, sizeof url, "memory://%s", name);
	ck_assert_int_eq(aiq_config_new(&fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "broker.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "result.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(fx->cfg, "worker.queues", "celery,other"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(fx->cfg, "worker.concurrency", 2), AIQ_OK);
	ck_assert_int_eq(aiq_client_new(&fx->client, fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&fx->worker, fx->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tasks.add", add_handler, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tasks.echo", echo_handler, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tasks.fail", fail_handler, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(fx->worker, "tasks.hang", hang_handler, NULL, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(
	        aiq_worker_register(fx->worker, "tasks.collect", collect_handler, NULL, NULL),
	        AIQ_OK);
	ck_assert_int_eq(aiq__broker_open(&fx->raw, url, fx->cfg), AIQ_OK);
	ck_assert_int_eq(pthread_create(&fx->thread, NULL, run_thread, fx), 0);
}

static void fx_done(struct fixture *fx)
{
	aiq_worker_stop(fx->worker);
	pthread_join(fx->thread, NULL);
	aiq__broker_close(fx->raw);
	aiq_worker_free(fx->worker);
	aiq_client_free(fx->client);
	aiq_config_free(fx->cfg);
}

/* Publish a task whose embed is given, as a Celery client would; with a
 * hard time limit in seconds when time_limit > 0. */
static void send_raw_limited(struct fixture *fx, const char *id, const char *task, const char *args,
                             const char *embed, double time_limit)
{
	aiq__message m;
	aiq__message_init(&m);
	m.time_limit = time_limit;
	m.id = strdup(id);
	m.task = strdup(task);
	m.args = parse(args);
	m.kwargs = json_object();
	m.embed = parse(embed);
	aiq__wire w;
	ck_assert_int_eq(aiq__message_to_wire(&w, &m), AIQ_OK);
	ck_assert_int_eq(aiq__broker_publish(fx->raw, "celery", &w, 0), AIQ_OK);
	aiq__wire_clear(&w);
	aiq__message_clear(&m);
}

static void send_raw(struct fixture *fx, const char *id, const char *task, const char *args,
                     const char *embed)
{
	send_raw_limited(fx, id, task, args, embed, 0);
}

static aiq_result *wait_for(struct fixture *fx, const char *id)
{
	aiq_result *r = NULL;
	int rc = aiq_client_wait(&r, fx->client, id, 10000);
	ck_assert_msg(rc == AIQ_OK, "wait %s: %s (%s)", id, aiq_strerror(rc), aiq_error_last());
	return r;
}

static void assert_meta(const aiq_result *r, const char *key, const char *value)
{
	json_t *meta = parse(aiq_result_meta_json(r));
	const json_t *v = json_object_get(meta, key);
	ck_assert_msg(json_is_string(v) && strcmp(json_string_value(v), value) == 0,
	              "%s: %s is not %s", aiq_result_meta_json(r), key, value);
	json_decref(meta);
}

START_TEST(test_worker_link)
{
	struct fixture fx;
	fx_init(&fx, "canvas_link");
	send_raw(&fx, "p-1", "tasks.add", "[2, 3]",
	         "{\"callbacks\": [{\"task\": \"tasks.add\", \"args\": [10], \"kwargs\": {},"
	         " \"options\": {\"task_id\": \"cb-1\", \"queue\": \"other\"},"
	         " \"subtask_type\": null, \"immutable\": false},"
	         " {\"task\": \"tasks.echo\", \"args\": [\"x\"], \"kwargs\": {},"
	         " \"options\": {\"task_id\": \"cb-2\"}, \"subtask_type\": null,"
	         " \"immutable\": true}], \"errbacks\": null, \"chain\": null, \"chord\": null}");
	aiq_result *r = wait_for(&fx, "p-1");
	ck_assert_str_eq(aiq_result_json(r), "5");
	aiq_result_free(r);
	r = wait_for(&fx, "cb-1");
	ck_assert_str_eq(aiq_result_json(r), "15");
	assert_meta(r, "parent_id", "p-1");
	aiq_result_free(r);
	r = wait_for(&fx, "cb-2");
	ck_assert_str_eq(aiq_result_json(r), "[\"x\"]"); /* immutable: no result prepended */
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

/* chain(add(1, 2), add(3), add(4)) as Celery encodes it: the reversed rest. */
START_TEST(test_worker_chain)
{
	struct fixture fx;
	fx_init(&fx, "canvas_chain");
	send_raw(&fx, "c-1", "tasks.add", "[1, 2]",
	         "{\"callbacks\": null, \"errbacks\": null, \"chord\": null, \"chain\": ["
	         "{\"task\": \"tasks.add\", \"args\": [4], \"kwargs\": {},"
	         " \"options\": {\"task_id\": \"c-3\"}, \"subtask_type\": null, \"immutable\": "
	         "false},"
	         "{\"task\": \"tasks.add\", \"args\": [3], \"kwargs\": {},"
	         " \"options\": {\"task_id\": \"c-2\"}, \"subtask_type\": null,"
	         " \"immutable\": false}]}");
	aiq_result *r = wait_for(&fx, "c-3");
	ck_assert_str_eq(aiq_result_json(r), "10");
	assert_meta(r, "parent_id", "c-2");
	aiq_result_free(r);
	r = wait_for(&fx, "c-2");
	ck_assert_str_eq(aiq_result_json(r), "6");
	assert_meta(r, "parent_id", "c-1");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

START_TEST(test_worker_errback)
{
	struct fixture fx;
	fx_init(&fx, "canvas_errback");
	send_raw(&fx, "f-1", "tasks.fail", "[]",
	         "{\"callbacks\": [{\"task\": \"tasks.echo\", \"options\": {\"task_id\": \"no\"}}],"
	         " \"errbacks\": [{\"task\": \"tasks.echo\", \"args\": [\"then\"],"
	         " \"options\": {\"task_id\": \"eb-1\"}}], \"chain\": ["
	         "{\"task\": \"tasks.echo\", \"options\": {\"task_id\": \"no2\"}}], \"chord\": "
	         "null}");
	aiq_result *r = wait_for(&fx, "f-1");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	aiq_result_free(r);
	r = wait_for(&fx, "eb-1");
	ck_assert_str_eq(aiq_result_json(r), "[\"f-1\",\"then\"]");
	assert_meta(r, "parent_id", "f-1");
	aiq_result_free(r);
	/* Neither the callback nor the chain ran. */
	r = NULL;
	ck_assert_int_eq(aiq_client_get_result(&r, fx.client, "no"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	ck_assert_int_eq(aiq_client_get_result(&r, fx.client, "no2"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_PENDING);
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

/* Regression: a task stopped at its hard time limit in the thread pool
 * ended FAILURE without sending its errbacks (and without returning to its
 * chord). Celery's hard limit sends them, with the failed id. */
START_TEST(test_worker_errback_on_hard_limit)
{
	struct fixture fx;
	fx_init(&fx, "canvas_hard");
	send_raw_limited(&fx, "h-1", "tasks.hang", "[]",
	                 "{\"callbacks\": null, \"errbacks\": [{\"task\": \"tasks.echo\", "
	                 "\"args\": [\"timeout\"], \"options\": {\"task_id\": \"eb-h\"}}], "
	                 "\"chain\": null, \"chord\": null}",
	                 0.2);
	aiq_result *r = wait_for(&fx, "h-1");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "TimeLimitExceeded");
	aiq_result_free(r);
	r = wait_for(&fx, "eb-h");
	ck_assert_str_eq(aiq_result_json(r), "[\"h-1\",\"timeout\"]");
	assert_meta(r, "parent_id", "h-1");
	aiq_result_free(r);
	/* The abandoned handler returns later; its report is dropped and the
	 * task it held is freed by one side only (ASan and valgrind see). */
	usleep(1600 * 1000);
	ck_assert_int_eq(aiq_client_get_result(&r, fx.client, "h-1"), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

/* A link that cannot be sent (a signature this library refuses) costs the
 * parent nothing: its result is stored, the worker says why. */
START_TEST(test_worker_unsendable_link_keeps_result)
{
	struct fixture fx;
	fx_init(&fx, "canvas_unsendable");
	send_raw(&fx, "u-1", "tasks.add", "[20, 22]",
	         "{\"callbacks\": [{\"task\": \"tasks.add\", \"kwargs\": [1]},"
	         " {\"task\": \"tasks.add\", \"args\": [1], \"options\": {\"task_id\": \"u-2\"}}],"
	         " \"errbacks\": null, \"chain\": null, \"chord\": null}");
	aiq_result *r = wait_for(&fx, "u-1");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "42");
	aiq_result_free(r);
	r = wait_for(&fx, "u-2"); /* the other link still went */
	ck_assert_str_eq(aiq_result_json(r), "43");
	aiq_result_free(r);
	ck_assert_ptr_nonnull(strstr(aiq_worker_error(fx.worker), "u-1"));
	fx_done(&fx);
}
END_TEST

static aiq_signature *sig(const char *task, const char *args)
{
	aiq_signature *s = NULL;
	ck_assert_int_eq(aiq_signature_new(&s, task), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_args_json(s, args), AIQ_OK);
	return s;
}

START_TEST(test_client_send_chain)
{
	struct fixture fx;
	fx_init(&fx, "canvas_send_chain");
	aiq_signature *steps[4] = {sig("tasks.add", "[1, 2]"), sig("tasks.add", "[3]"),
	                           sig("tasks.add", "[100]"), sig("tasks.add", "[4]")};
	ck_assert_int_eq(aiq_signature_set_immutable(steps[2], 1), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_task_id(steps[3], "last"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_queue(steps[1], "other"), AIQ_OK);
	char *ids[4];
	ck_assert_int_eq(
	        aiq_client_send_chain(ids, fx.client, (const aiq_signature *const *)steps, 4),
	        AIQ_OK);
	ck_assert_str_eq(ids[3], "last");
	static const char *const want[] = {"3", "6", "100", "104"};
	for (int i = 0; i < 4; i++) {
		aiq_result *r = wait_for(&fx, ids[i]);
		ck_assert_str_eq(aiq_result_json(r), want[i]);
		if (i > 0)
			assert_meta(r, "parent_id", ids[i - 1]);
		aiq_result_free(r);
	}
	for (int i = 0; i < 4; i++) {
		aiq_free(ids[i]);
		aiq_signature_free(steps[i]);
	}
	/* Bad calls send nothing. */
	ck_assert_int_eq(aiq_client_send_chain(ids, fx.client, NULL, 1), AIQ_EINVAL);
	const aiq_signature *none[1] = {NULL};
	ck_assert_int_eq(aiq_client_send_chain(ids, fx.client, none, 1), AIQ_EINVAL);
	ck_assert_ptr_null(ids[0]);
	fx_done(&fx);
}
END_TEST

START_TEST(test_client_send_group_and_link)
{
	struct fixture fx;
	fx_init(&fx, "canvas_send_group");
	aiq_signature *members[5];
	for (int i = 0; i < 5; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d, %d]", i, i);
		members[i] = sig("tasks.add", args);
	}
	char *gid = NULL, *ids[5];
	ck_assert_int_eq(aiq_client_send_group(&gid, ids, fx.client,
	                                       (const aiq_signature *const *)members, 5),
	                 AIQ_OK);
	ck_assert_uint_eq(strlen(gid), 36);
	for (int i = 0; i < 5; i++) {
		aiq_result *r = wait_for(&fx, ids[i]);
		char want[16];
		snprintf(want, sizeof want, "%d", 2 * i);
		ck_assert_str_eq(aiq_result_json(r), want);
		aiq_result_free(r);
		aiq_free(ids[i]);
		aiq_signature_free(members[i]);
	}
	aiq_free(gid);

	/* A signature with a link and an errback, sent alone. */
	aiq_signature *parent = sig("tasks.add", "[2, 3]");
	aiq_signature *cb = sig("tasks.add", "[10]");
	aiq_signature *eb = sig("tasks.echo", "[]");
	ck_assert_int_eq(aiq_signature_set_task_id(cb, "link-cb"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_set_task_id(eb, "link-eb"), AIQ_OK);
	ck_assert_int_eq(aiq_signature_add_link(parent, cb), AIQ_OK);
	ck_assert_int_eq(aiq_signature_add_link_error(parent, eb), AIQ_OK);
	char *id = NULL;
	ck_assert_int_eq(aiq_client_send_signature(&id, fx.client, parent), AIQ_OK);
	aiq_result *r = wait_for(&fx, "link-cb");
	ck_assert_str_eq(aiq_result_json(r), "15");
	assert_meta(r, "parent_id", id);
	aiq_result_free(r);
	aiq_free(id);

	aiq_signature *failing = sig("tasks.fail", "[]");
	ck_assert_int_eq(aiq_signature_add_link_error(failing, eb), AIQ_OK);
	ck_assert_int_eq(aiq_client_send_signature(&id, fx.client, failing), AIQ_OK);
	r = wait_for(&fx, "link-eb");
	char want[64];
	snprintf(want, sizeof want, "[\"%s\"]", id);
	ck_assert_str_eq(aiq_result_json(r), want);
	aiq_result_free(r);
	aiq_free(id);
	aiq_signature_free(failing);

	/* A chord without a body is refused and nothing is sent. */
	uint64_t before = 0, after = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&before, fx.client, NULL), AIQ_OK);
	const aiq_signature *header[1] = {cb};
	char *body_id = NULL, *part_ids[1];
	ck_assert_int_eq(aiq_client_send_chord(&body_id, part_ids, fx.client, header, 1, NULL),
	                 AIQ_EINVAL);
	ck_assert_ptr_null(body_id);
	ck_assert_ptr_null(part_ids[0]);
	ck_assert_int_eq(aiq_client_queue_depth(&after, fx.client, NULL), AIQ_OK);
	ck_assert_uint_eq(after, before);
	aiq_signature_free(parent);
	aiq_signature_free(cb);
	aiq_signature_free(eb);
	fx_done(&fx);
}
END_TEST

/* ---- nested canvas: chain, group and chord inside a link or chain step ------
 * Vectors: tests/data/celery_nested_canvas.json, what Celery 5.2.6 wrote
 * ("client": the first task's message; "worker": what a Celery worker sent
 * once that task, tasks.c_add(1, 2) = 3, succeeded). */

static json_t *nested;

static void load_nested(void)
{
	size_t len;
	char *text = aiq_test_read_data("celery_nested_canvas.json", &len);
	json_error_t jerr;
	nested = json_loadb(text, len, 0, &jerr);
	ck_assert_msg(nested != NULL, "nested vectors: %s", jerr.text);
	free(text);
}

static void free_nested(void)
{
	json_decref(nested);
	nested = NULL;
}

/* The embed of the first message Celery sent for canvas `name`. */
static const json_t *client_embed(const char *name)
{
	const json_t *v = json_object_get(json_object_get(nested, "client"), name);
	ck_assert_msg(v != NULL, "no client vector %s", name);
	return json_array_get(json_object_get(v, "body"), 2);
}

/* The messages a Celery worker sent for canvas `name`, by group_index. */
static const json_t *worker_sent(const char *name, size_t i)
{
	const json_t *v = json_object_get(json_object_get(nested, "worker"), name);
	const json_t *m = json_array_get(json_object_get(v, "sent"), i);
	ck_assert_msg(m != NULL, "no worker vector %s[%zu]", name, i);
	return m;
}

static const json_t *chain_next(const json_t *embed)
{
	const json_t *chain = json_object_get(embed, "chain");
	ck_assert_uint_ge(json_array_size(chain), 1);
	return json_array_get(chain, json_array_size(chain) - 1);
}

static const char *opt(const json_t *sig, const char *key)
{
	return json_string_value(json_object_get(json_object_get(sig, "options"), key));
}

static json_int_t group_index_of(const aiq__sig_send *s)
{
	const json_t *v =
	        s->msg.extra_headers ? json_object_get(s->msg.extra_headers, "group_index") : NULL;
	ck_assert_msg(json_is_integer(v), "no group_index header");
	return json_integer_value(v);
}

/* a.s() | group(b.s(), c.s()): the group popped from the chain sends each
 * member with the result first, the group's frozen id and the members' own
 * ids and indexes, the (empty) rest of the chain, and no chord. */
START_TEST(test_nested_group_from_celery)
{
	const json_t *g = chain_next(client_embed("chain_task_then_group"));
	const json_t *members = json_object_get(json_object_get(g, "kwargs"), "tasks");
	aiq__sig_kind kind;
	ck_assert_int_eq(aiq__canvas_check(&kind, g), AIQ_OK);
	ck_assert_int_eq(kind, AIQ__SIG_GROUP);
	json_t *result = json_integer(3), *rest = json_array();
	aiq__canvas_plan p;
	ck_assert_int_eq(aiq__canvas_plan_build(&p, g, result, "p-1", "r-1", rest, NULL), AIQ_OK);
	ck_assert_uint_eq(p.n, 2);
	ck_assert_ptr_null(p.chord_sizes); /* a group has no join */
	for (size_t i = 0; i < 2; i++) {
		const aiq__sig_send *s = &p.sends[i];
		const json_t *m = json_array_get(members, i);
		const json_t *celery = worker_sent("worker_applies_group", i);
		ck_assert_str_eq(s->msg.id, opt(m, "task_id"));
		ck_assert_str_eq(s->msg.group, opt(g, "task_id"));
		ck_assert_int_eq(group_index_of(s), (json_int_t)i);
		ck_assert_str_eq(s->msg.parent_id, "p-1");
		ck_assert_str_eq(s->msg.root_id, "r-1");
		ck_assert_str_eq(s->queue, opt(m, "queue"));
		/* What Celery's worker sent: args, group_index, embed. */
		ck_assert(json_equal(s->msg.args,
		                     json_array_get(json_object_get(celery, "body"), 0)));
		ck_assert_int_eq(group_index_of(s),
		                 json_integer_value(json_object_get(
		                         json_object_get(celery, "headers"), "group_index")));
		assert_json(s->msg.embed, "{\"callbacks\": null, \"errbacks\": null, \"chain\": "
		                          "[], \"chord\": null}");
	}
	aiq__canvas_plan_clear(&p);
	json_decref(result);
	json_decref(rest);
}
END_TEST

/* a.s() | chord([b.s(), c.s()], d.s()): the header's size first, under the
 * header's frozen id; each part carries the body (with the parent, root,
 * rest of the chain and its frozen id) in embed.chord. */
START_TEST(test_nested_chord_from_celery)
{
	const json_t *c = chain_next(client_embed("chain_task_then_chord"));
	const json_t *kwargs = json_object_get(c, "kwargs");
	const json_t *header = json_object_get(kwargs, "header");
	const json_t *body = json_object_get(kwargs, "body");
	json_t *result = json_integer(3), *rest = json_array();
	aiq__canvas_plan p;
	ck_assert_int_eq(aiq__canvas_plan_build(&p, c, result, "p-1", "r-1", rest, NULL), AIQ_OK);
	ck_assert_uint_eq(p.n, 2);
	const char *gid = opt(header, "task_id");
	ck_assert_uint_eq(json_object_size(p.chord_sizes), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(p.chord_sizes, gid)), 2);
	const json_t *celery_body =
	        json_array_get(json_object_get(worker_sent("worker_applies_chord", 0), "body"), 2);
	celery_body = json_object_get(celery_body, "chord");
	for (size_t i = 0; i < 2; i++) {
		const aiq__sig_send *s = &p.sends[i];
		const json_t *celery = worker_sent("worker_applies_chord", i);
		ck_assert_str_eq(s->msg.group, gid);
		ck_assert_int_eq(group_index_of(s), (json_int_t)i);
		ck_assert(json_equal(s->msg.args,
		                     json_array_get(json_object_get(celery, "body"), 0)));
		const json_t *ch = json_object_get(s->msg.embed, "chord");
		ck_assert_str_eq(json_string_value(json_object_get(ch, "task")),
		                 json_string_value(json_object_get(body, "task")));
		ck_assert_str_eq(opt(ch, "task_id"), opt(body, "task_id"));
		ck_assert_str_eq(opt(ch, "parent_id"), "p-1");
		ck_assert_str_eq(opt(ch, "root_id"), "r-1");
		ck_assert(json_equal(
		        json_object_get(json_object_get(ch, "options"), "chain"),
		        json_object_get(json_object_get(celery_body, "options"), "chain")));
		ck_assert(json_equal(json_object_get(ch, "args"),
		                     json_object_get(celery_body, "args")));
		/* The header's own chain is not passed to its parts (Celery #3771). */
		ck_assert(json_is_null(json_object_get(s->msg.embed, "chain")));
	}
	aiq__canvas_plan_clear(&p);
	json_decref(result);
	json_decref(rest);
}
END_TEST

/* link=chain(b.s(), c.s()): the first step gets the result, the rest goes
 * into its embed.chain; link=chain(b, group(..), d) was made a chord by
 * Celery's client and goes into the chain as such. */
START_TEST(test_nested_link_chain_from_celery)
{
	const json_t *link =
	        json_array_get(json_object_get(client_embed("link_chain"), "callbacks"), 0);
	json_t *result = json_integer(3);
	aiq__canvas_plan p;
	ck_assert_int_eq(aiq__canvas_plan_build(&p, link, result, "p-1", "r-1", NULL, NULL),
	                 AIQ_OK);
	ck_assert_uint_eq(p.n, 1);
	const json_t *celery = worker_sent("worker_applies_link_chain", 0);
	const json_t *celery_embed = json_array_get(json_object_get(celery, "body"), 2);
	ck_assert(json_equal(p.sends[0].msg.args,
	                     json_array_get(json_object_get(celery, "body"), 0)));
	const json_t *chain = json_object_get(p.sends[0].msg.embed, "chain");
	ck_assert_uint_eq(json_array_size(chain), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(chain, 0), "task")),
	                 "tasks.py_add");
	ck_assert(json_equal(
	        json_object_get(json_array_get(chain, 0), "args"),
	        json_object_get(json_array_get(json_object_get(celery_embed, "chain"), 0),
	                        "args")));
	ck_assert_ptr_null(p.chord_sizes);
	aiq__canvas_plan_clear(&p);

	link = json_array_get(json_object_get(client_embed("link_chain_with_group"), "callbacks"),
	                      0);
	ck_assert_int_eq(aiq__canvas_plan_build(&p, link, result, "p-1", "r-1", NULL, NULL),
	                 AIQ_OK);
	ck_assert_uint_eq(p.n, 1);
	assert_json(p.sends[0].msg.args, "[3, 3]");
	chain = json_object_get(p.sends[0].msg.embed, "chain");
	ck_assert_uint_eq(json_array_size(chain), 1);
	json_t *next = json_deep_copy(json_array_get(chain, 0));
	ck_assert_str_eq(json_string_value(json_object_get(next, "subtask_type")), "chord");
	aiq__canvas_plan_clear(&p);

	/* That chord (a list header, no frozen ids) applied in turn. */
	json_t *six = json_integer(6);
	json_t *rest = json_array();
	ck_assert_int_eq(aiq__canvas_plan_build(&p, next, six, "p-2", "r-1", rest, NULL), AIQ_OK);
	ck_assert_uint_eq(p.n, 2);
	assert_json(p.sends[0].msg.args, "[6, 1]");
	assert_json(p.sends[1].msg.args, "[6, 2]");
	ck_assert_str_eq(p.sends[0].msg.group, p.sends[1].msg.group);
	ck_assert_int_eq(json_integer_value(json_object_get(p.chord_sizes, p.sends[0].msg.group)),
	                 2);
	const json_t *b0 = json_object_get(p.sends[0].msg.embed, "chord");
	const json_t *b1 = json_object_get(p.sends[1].msg.embed, "chord");
	ck_assert_uint_eq(strlen(opt(b0, "task_id")), 36); /* frozen here, the same in both */
	ck_assert_str_eq(opt(b0, "task_id"), opt(b1, "task_id"));
	aiq__canvas_plan_clear(&p);
	json_decref(rest);
	json_decref(next);
	json_decref(six);
	json_decref(result);
}
END_TEST

/* A chain spelled with a group in the middle (as a raw _chain keeps it)
 * becomes chord(group, next step), nested chains are spliced, nested
 * groups unrolled, immutable members get nothing prepended. */
START_TEST(test_nested_chain_shapes)
{
	json_t *sig =
	        parse("{\"task\": \"celery.chain\", \"subtask_type\": \"chain\", \"args\": [],"
	              " \"options\": {}, \"immutable\": false, \"kwargs\": {\"tasks\": ["
	              "  {\"task\": \"celery.chain\", \"subtask_type\": \"chain\", \"kwargs\": "
	              "{\"tasks\": ["
	              "    {\"task\": \"celery.group\", \"subtask_type\": \"group\", \"kwargs\": "
	              "{\"tasks\": ["
	              "      {\"task\": \"t.a\", \"args\": [1]},"
	              "      {\"task\": \"celery.group\", \"subtask_type\": \"group\", \"kwargs\": "
	              "{\"tasks\": ["
	              "        {\"task\": \"t.b\", \"args\": [2], \"immutable\": true}]}}]}}]}},"
	              "  {\"task\": \"t.body\", \"options\": {\"task_id\": \"body-1\"}},"
	              "  {\"task\": \"t.last\"}]}}");
	json_t *result = parse("\"r\"");
	aiq__canvas_plan p;
	ck_assert_int_eq(aiq__canvas_plan_build(&p, sig, result, "p", NULL, NULL, NULL), AIQ_OK);
	ck_assert_uint_eq(p.n, 2);
	ck_assert_str_eq(p.sends[0].msg.task, "t.a");
	assert_json(p.sends[0].msg.args, "[\"r\", 1]");
	ck_assert_str_eq(p.sends[1].msg.task, "t.b");
	assert_json(p.sends[1].msg.args, "[2]");
	ck_assert_int_eq(group_index_of(&p.sends[1]), 1);
	const json_t *body = json_object_get(p.sends[0].msg.embed, "chord");
	ck_assert_str_eq(opt(body, "task_id"), "body-1");
	/* The step after the body rides in the body's chain. */
	const json_t *after = json_object_get(json_object_get(body, "options"), "chain");
	ck_assert_uint_eq(json_array_size(after), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(after, 0), "task")),
	                 "t.last");
	ck_assert_int_eq(json_integer_value(json_object_get(p.chord_sizes, p.sends[0].msg.group)),
	                 2);
	aiq__canvas_plan_clear(&p);

	/* An empty header: the body runs at once with []. */
	json_t *empty =
	        parse("{\"task\": \"celery.chord\", \"subtask_type\": \"chord\", \"kwargs\":"
	              " {\"header\": [], \"body\": {\"task\": \"t.sum\"}}}");
	ck_assert_int_eq(aiq__canvas_plan_build(&p, empty, result, "p", NULL, NULL, NULL), AIQ_OK);
	ck_assert_uint_eq(p.n, 1);
	ck_assert_str_eq(p.sends[0].msg.task, "t.sum");
	assert_json(p.sends[0].msg.args, "[[]]");
	ck_assert_ptr_null(p.chord_sizes);
	aiq__canvas_plan_clear(&p);
	json_decref(empty);
	json_decref(result);
	json_decref(sig);
}
END_TEST

/* A chain nested `levels` deep around one task. */
static json_t *deep_chain(int levels)
{
	json_t *sig = json_pack("{s:s, s:[i]}", "task", "t.leaf", "args", 1);
	for (int i = 0; i < levels; i++)
		sig = json_pack("{s:s, s:s, s:{s:[o]}}", "task", "celery.chain", "subtask_type",
		                "chain", "kwargs", "tasks", sig);
	ck_assert_ptr_nonnull(sig);
	return sig;
}

START_TEST(test_nested_rejects)
{
	static const char *const bad[] = {
	        /* unknown kinds (xmap, chunks) and malformed members */
	        "{\"task\": \"celery.xmap\", \"subtask_type\": \"xmap\", \"kwargs\": {}}",
	        "{\"task\": \"celery.chain\", \"subtask_type\": \"chain\", \"kwargs\": {}}",
	        "{\"task\": \"celery.group\", \"subtask_type\": \"group\","
	        " \"kwargs\": {\"tasks\": [{\"task\": 5}]}}",
	        "{\"task\": \"celery.chord\", \"subtask_type\": \"chord\","
	        " \"kwargs\": {\"header\": [{\"task\": \"t.a\"}]}}",
	        "{\"task\": \"celery.chord\", \"subtask_type\": \"chord\","
	        " \"kwargs\": {\"header\": {\"task\": \"t.a\"}, \"body\": {\"task\": \"t.b\"}}}",
	        "{\"task\": \"celery.group\", \"subtask_type\": 7, \"kwargs\": {\"tasks\": []}}",
	        /* args of their own */
	        "{\"task\": \"celery.group\", \"subtask_type\": \"group\", \"args\": [1],"
	        " \"kwargs\": {\"tasks\": [{\"task\": \"t.a\"}]}}",
	        /* a chord inside a chord's header */
	        "{\"task\": \"celery.chord\", \"subtask_type\": \"chord\", \"kwargs\": "
	        "{\"header\": ["
	        " {\"task\": \"celery.chord\", \"subtask_type\": \"chord\", \"kwargs\":"
	        " {\"header\": [{\"task\": \"t.a\"}], \"body\": {\"task\": \"t.b\"}}}],"
	        " \"body\": {\"task\": \"t.c\"}}}",
	        /* a group ending a chain that is a group member */
	        "{\"task\": \"celery.group\", \"subtask_type\": \"group\", \"kwargs\": {\"tasks\": "
	        "["
	        " {\"task\": \"celery.chain\", \"subtask_type\": \"chain\", \"kwargs\": "
	        "{\"tasks\": ["
	        " {\"task\": \"t.a\"}, {\"task\": \"celery.group\", \"subtask_type\": \"group\","
	        " \"kwargs\": {\"tasks\": [{\"task\": \"t.b\"}]}}]}}]}}",
	};
	json_t *result = json_integer(1);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		json_t *sig = parse(bad[i]);
		aiq__canvas_plan p;
		int rc = aiq__canvas_plan_build(&p, sig, result, "p", NULL, NULL, NULL);
		ck_assert_msg(rc == AIQ_EINVAL, "%s: %d", bad[i], rc);
		ck_assert_uint_eq(p.n, 0);
		ck_assert_ptr_null(p.sends);
		ck_assert_str_ne(aiq_error_last(), "");
		json_decref(sig);
	}
	/* The depth limit: at the limit it is applied, one past it refused. */
	aiq__canvas_plan p;
	json_t *sig = deep_chain(AIQ__CANVAS_MAX_DEPTH);
	ck_assert_int_eq(aiq__canvas_plan_build(&p, sig, result, "p", NULL, NULL, NULL), AIQ_OK);
	ck_assert_uint_eq(p.n, 1);
	assert_json(p.sends[0].msg.args, "[1, 1]");
	aiq__canvas_plan_clear(&p);
	json_decref(sig);
	sig = deep_chain(AIQ__CANVAS_MAX_DEPTH + 1);
	ck_assert_int_eq(aiq__canvas_plan_build(&p, sig, result, "p", NULL, NULL, NULL),
	                 AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "deeper than"));
	json_decref(sig);
	/* A plain signature's links may be nested ones now. */
	sig = parse(
	        "{\"task\": \"t.a\", \"options\": {\"link\": [{\"task\": \"celery.group\","
	        " \"subtask_type\": \"group\", \"kwargs\": {\"tasks\": [{\"task\": \"t.b\"}]}}]}}");
	ck_assert_int_eq(aiq__canvas_plan_build(&p, sig, NULL, NULL, NULL, NULL, NULL), AIQ_OK);
	ck_assert_str_eq(
	        json_string_value(json_object_get(
	                json_array_get(json_object_get(p.sends[0].msg.embed, "callbacks"), 0),
	                "subtask_type")),
	        "group");
	aiq__canvas_plan_clear(&p);
	json_decref(sig);
	json_decref(result);
}
END_TEST

/* Celery's vectors on the memory:// worker: task names and queues made
 * this test's own (tasks.add on queue "other"). */
static void localize(json_t *v)
{
	if (json_is_array(v)) {
		for (size_t i = 0; i < json_array_size(v); i++)
			localize(json_array_get(v, i));
		return;
	}
	if (!json_is_object(v))
		return;
	const char *key;
	json_t *val;
	json_object_foreach(v, key, val)
	{
		if (strcmp(key, "queue") == 0)
			json_object_set_new(v, key, json_string("other"));
		else if (strcmp(key, "task") == 0 && json_is_string(val) &&
		         strncmp(json_string_value(val), "tasks.", 6) == 0)
			json_object_set_new(
			        v, key,
			        json_string(strcmp(json_string_value(val), "tasks.py_tsum")
			                            ? "tasks.add"
			                            : "tasks.echo"));
		else
			localize(val);
	}
}

static void send_vector(struct fixture *fx, const char *name, const char *id)
{
	json_t *embed = json_deep_copy(client_embed(name));
	localize(embed);
	char *text = json_dumps(embed, JSON_COMPACT);
	send_raw(fx, id, "tasks.add", "[1, 2]", text);
	free(text);
	json_decref(embed);
}

START_TEST(test_nested_worker_group)
{
	struct fixture fx;
	fx_init(&fx, "canvas_nested_group");
	send_vector(&fx, "chain_task_then_group", "ng-1");
	const json_t *g = chain_next(client_embed("chain_task_then_group"));
	const json_t *members = json_object_get(json_object_get(g, "kwargs"), "tasks");
	aiq_result *r = wait_for(&fx, "ng-1");
	ck_assert_str_eq(aiq_result_json(r), "3");
	aiq_result_free(r);
	static const char *const want[] = {"13", "23"};
	for (size_t i = 0; i < 2; i++) {
		r = wait_for(&fx, opt(json_array_get(members, i), "task_id"));
		ck_assert_str_eq(aiq_result_json(r), want[i]);
		assert_meta(r, "parent_id", "ng-1");
		aiq_result_free(r);
	}
	fx_done(&fx);
}
END_TEST

START_TEST(test_nested_worker_link_chain)
{
	struct fixture fx;
	fx_init(&fx, "canvas_nested_link");
	/* link=chain(add(3), add(4)) with ids given to the steps. */
	send_raw(&fx, "nl-1", "tasks.add", "[1, 2]",
	         "{\"callbacks\": [{\"task\": \"celery.chain\", \"subtask_type\": \"chain\","
	         " \"args\": [], \"options\": {}, \"immutable\": false, \"kwargs\": {\"tasks\": ["
	         " {\"task\": \"tasks.add\", \"args\": [3], \"options\": {\"task_id\": \"nl-2\"}},"
	         " {\"task\": \"tasks.add\", \"args\": [4], \"options\": {\"task_id\": \"nl-3\","
	         " \"queue\": \"other\"}}]}}],"
	         " \"errbacks\": null, \"chain\": null, \"chord\": null}");
	aiq_result *r = wait_for(&fx, "nl-3");
	ck_assert_str_eq(aiq_result_json(r), "10");
	assert_meta(r, "parent_id", "nl-2");
	aiq_result_free(r);
	r = wait_for(&fx, "nl-2");
	ck_assert_str_eq(aiq_result_json(r), "6");
	assert_meta(r, "parent_id", "nl-1");
	aiq_result_free(r);
	fx_done(&fx);
}
END_TEST

/* A nested signature this library refuses (too deep, or a chord on a store
 * that cannot join) costs the parent nothing: its result is stored, nothing
 * of the signature is sent, the worker says why. */
START_TEST(test_nested_worker_refused_keeps_result)
{
	struct fixture fx;
	fx_init(&fx, "canvas_nested_refused");
	json_t *deep = deep_chain(AIQ__CANVAS_MAX_DEPTH + 1);
	json_t *embed = json_pack("{s:[o], s:n, s:n, s:n}", "callbacks", deep, "errbacks", "chain",
	                          "chord");
	char *text = json_dumps(embed, JSON_COMPACT);
	send_raw(&fx, "nr-1", "tasks.add", "[20, 22]", text);
	free(text);
	json_decref(embed);
	aiq_result *r = wait_for(&fx, "nr-1");
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	ck_assert_str_eq(aiq_result_json(r), "42");
	aiq_result_free(r);
	ck_assert_ptr_nonnull(strstr(aiq_worker_error(fx.worker), "nr-1"));
	ck_assert_ptr_nonnull(strstr(aiq_worker_error(fx.worker), "deeper than"));
	fx_done(&fx);
}
END_TEST

/* a | chord([b, c], d) from Celery's vector: with a store that joins
 * chords the body runs once with both results; with one that cannot the
 * chord is refused whole (no part sent) and the parent keeps its result. */
START_TEST(test_nested_worker_chord)
{
	struct fixture fx;
	fx_init(&fx, "canvas_nested_chord");
	aiq__store *store = NULL;
	ck_assert_int_eq(aiq__store_open(&store, "memory://canvas_nested_chord", fx.cfg), AIQ_OK);
	int joins = aiq__store_chord_set_size(store, "probe", 1);
	aiq__store_close(store);
	const json_t *c = chain_next(client_embed("chain_task_then_chord"));
	const json_t *kwargs = json_object_get(c, "kwargs");
	const char *body_id = opt(json_object_get(kwargs, "body"), "task_id");
	const json_t *members = json_object_get(
	        json_object_get(json_object_get(kwargs, "header"), "kwargs"), "tasks");
	send_vector(&fx, "chain_task_then_chord", "nc-1");
	aiq_result *r = wait_for(&fx, "nc-1");
	ck_assert_str_eq(aiq_result_json(r), "3");
	aiq_result_free(r);
	if (joins == AIQ_OK) {
		r = wait_for(&fx, body_id);
		json_t *got = parse(aiq_result_json(r)), *want = parse("[[13, 23], \"t\"]");
		ck_assert_msg(json_equal(got, want), "body got %s", aiq_result_json(r));
		json_decref(got);
		json_decref(want);
		aiq_result_free(r);
	} else {
		ck_assert_int_eq(joins, AIQ_EUNSUPPORTED);
		ck_assert_ptr_nonnull(strstr(aiq_worker_error(fx.worker), "none of its parts"));
		aiq_result *none = NULL;
		ck_assert_int_ne(aiq_client_wait(&none, fx.client,
		                                 opt(json_array_get(members, 0), "task_id"), 300),
		                 AIQ_OK);
		aiq_result_free(none);
	}
	fx_done(&fx);
}
END_TEST

/* ---- chords on memory:// ---------------------------------------------------- */

/* Regression: memory:// could not join chords (AIQ_EUNSUPPORTED at send). */
START_TEST(test_client_send_chord)
{
	struct fixture fx;
	fx_init(&fx, "canvas_chord");
	atomic_store(&collect_runs, 0);
	enum { N = 20 };
	aiq_signature *header[N];
	for (int i = 0; i < N; i++) {
		char args[32];
		snprintf(args, sizeof args, "[%d, %d]", i, i);
		header[i] = sig("tasks.add", args);
	}
	aiq_signature *body = sig("tasks.collect", "[\"tail\"]");
	char *body_id = NULL, *ids[N];
	int rc = aiq_client_send_chord(&body_id, ids, fx.client,
	                               (const aiq_signature *const *)header, N, body);
	ck_assert_msg(rc == AIQ_OK, "send_chord: %s", aiq_error_last());
	aiq_result *r = wait_for(&fx, body_id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	/* The parts' results in header order, before the body's own arguments. */
	char want[256] = "[[";
	for (int i = 0; i < N; i++)
		snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", i ? ", " : "",
		         2 * i);
	strcat(want, "], \"tail\"]");
	json_t *got = parse(aiq_result_json(r)), *exp = parse(want);
	ck_assert_msg(json_equal(got, exp), "body got %s", aiq_result_json(r));
	json_decref(got);
	json_decref(exp);
	aiq_result_free(r);
	usleep(200 * 1000); /* a second run of the body would have happened by now */
	ck_assert_int_eq(atomic_load(&collect_runs), 1);
	for (int i = 0; i < N; i++) {
		aiq_free(ids[i]);
		aiq_signature_free(header[i]);
	}
	aiq_free(body_id);

	/* A failing part: the body ends ChordError naming it, and never runs. */
	aiq_signature *parts[3] = {sig("tasks.add", "[1]"), sig("tasks.fail", "[]"),
	                           sig("tasks.add", "[2]")};
	rc = aiq_client_send_chord(&body_id, ids, fx.client, (const aiq_signature *const *)parts, 3,
	                           body);
	ck_assert_msg(rc == AIQ_OK, "send_chord: %s", aiq_error_last());
	r = wait_for(&fx, body_id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "ChordError");
	char why[256];
	snprintf(why, sizeof why, "Dependency %s raised AnalysisError('model exploded')", ids[1]);
	ck_assert_str_eq(aiq_result_error_message(r), why);
	aiq_result_free(r);
	ck_assert_int_eq(atomic_load(&collect_runs), 1);
	for (int i = 0; i < 3; i++) {
		aiq_free(ids[i]);
		aiq_signature_free(parts[i]);
	}
	aiq_free(body_id);
	aiq_signature_free(body);
	fx_done(&fx);
}
END_TEST

static aiq__store *open_mem(const char *url, int64_t expires_s)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "result.expires_s", expires_s), AIQ_OK);
	aiq__store *s = NULL;
	ck_assert_int_eq(aiq__store_open(&s, url, cfg), AIQ_OK);
	aiq_config_free(cfg);
	return s;
}

START_TEST(test_memory_chord_contract)
{
	aiq__store *s = open_mem("memory://chord_contract", 0);
	chord_contract(s, "mem-chord");
	aiq__store_close(s);
}
END_TEST

START_TEST(test_memory_chord_concurrent)
{
	enum { THREADS = 8, EACH = 50 };
	aiq__store *h[THREADS];
	for (int i = 0; i < THREADS; i++)
		h[i] = open_mem("memory://chord_concurrent", 0);
	for (int round = 0; round < 5; round++) {
		char gid[32];
		snprintf(gid, sizeof gid, "mem-conc-%d", round);
		chord_concurrent(h, THREADS, EACH, gid);
	}
	for (int i = 0; i < THREADS; i++)
		aiq__store_close(h[i]);
}
END_TEST

/* A chord expires as a record does, from its last write. */
START_TEST(test_memory_chord_expiry)
{
	aiq__store *s = open_mem("memory://chord_expiry", 1);
	ck_assert_int_eq(aiq__store_chord_set_size(s, "mem-exp", 2), AIQ_OK);
	chord_return_pending(s, "mem-exp", 0, "e0", 0);
	usleep(1100 * 1000);
	chord_return_pending(s, "mem-exp", 1, "e1", 1);
	aiq__store_close(s);
}
END_TEST

/* A driver without the chord operations says so, by name, at send time. */
START_TEST(test_chord_unsupported_driver)
{
	static const aiq__store_ops none = {.name = "plain"};
	aiq__store plain = {&none};
	char *ready = (char *)"x";
	ck_assert_int_eq(aiq__store_chord_set_size(&plain, "g", 2), AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "plain result store cannot join chords"));
	ck_assert_int_eq(
	        aiq__store_chord_part_return(&plain, "g", 0, "[1, \"t\", \"SUCCESS\", 1]", &ready),
	        AIQ_EUNSUPPORTED);
	ck_assert_ptr_null(ready);
	ck_assert_int_eq(aiq__store_chord_done(&plain, "g"), AIQ_EUNSUPPORTED);
}
END_TEST

static Suite *canvas_suite(void)
{
	Suite *s = suite_create("canvas");
	TCase *tc = tcase_create("signature");
	tcase_add_checked_fixture(tc, load_vectors, free_vectors);
	tcase_add_test(tc, test_chain_next_step_from_celery);
	tcase_add_test(tc, test_links_from_celery);
	tcase_add_test(tc, test_options);
	tcase_add_test(tc, test_rejects);
	tcase_add_test(tc, test_signature_api);
	suite_add_tcase(s, tc);

	tc = tcase_create("worker");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_worker_link);
	tcase_add_test(tc, test_worker_chain);
	tcase_add_test(tc, test_worker_errback);
	tcase_add_test(tc, test_worker_errback_on_hard_limit);
	tcase_add_test(tc, test_worker_unsendable_link_keeps_result);
	tcase_add_test(tc, test_client_send_chain);
	tcase_add_test(tc, test_client_send_group_and_link);
	tcase_add_test(tc, test_client_send_chord);
	suite_add_tcase(s, tc);

	tc = tcase_create("chord");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_memory_chord_contract);
	tcase_add_test(tc, test_memory_chord_concurrent);
	tcase_add_test(tc, test_memory_chord_expiry);
	tcase_add_test(tc, test_chord_unsupported_driver);
	suite_add_tcase(s, tc);

	tc = tcase_create("nested");
	tcase_set_timeout(tc, 60);
	tcase_add_checked_fixture(tc, load_nested, free_nested);
	tcase_add_test(tc, test_nested_group_from_celery);
	tcase_add_test(tc, test_nested_chord_from_celery);
	tcase_add_test(tc, test_nested_link_chain_from_celery);
	tcase_add_test(tc, test_nested_chain_shapes);
	tcase_add_test(tc, test_nested_rejects);
	tcase_add_test(tc, test_nested_worker_group);
	tcase_add_test(tc, test_nested_worker_link_chain);
	tcase_add_test(tc, test_nested_worker_refused_keeps_result);
	tcase_add_test(tc, test_nested_worker_chord);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return aiq_test_run(canvas_suite());
}
