/*
 * The out-parameter rule, checked through the public headers and the shared
 * library only: a fallible call that fails sets its `*out` to NULL (or to the
 * documented empty value, 0 for numbers) instead of leaving what the caller
 * had there. Each call below gets a bad argument on a poisoned `*out`.
 *
 * Every violation is printed with the function's name; the exit status is
 * the number of violations (0 = all hold).
 */
#include <aiqueue/aiqueue.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define POISON     ((void *)(uintptr_t)0x1)
#define POISON_INT 0x5eed

static int failures;
static int checks;

static void expect_null(const char *call, int rc, const void *out)
{
	checks++;
	if (rc == AIQ_OK) {
		printf("FAIL %s: returned AIQ_OK on a bad argument\n", call);
		failures++;
	} else if (out != NULL) {
		printf("FAIL %s: returned %s but left *out at %p (want NULL)\n", call,
		       aiq_strerror(rc), out);
		failures++;
	} else {
		printf("ok   %s -> %s, *out NULL\n", call, aiq_strerror(rc));
	}
}

static void expect_zero(const char *call, int rc, long long out)
{
	checks++;
	if (rc == AIQ_OK) {
		printf("FAIL %s: returned AIQ_OK on a bad argument\n", call);
		failures++;
	} else if (out != 0) {
		printf("FAIL %s: returned %s but left *out at %lld (want 0)\n", call,
		       aiq_strerror(rc), out);
		failures++;
	} else {
		printf("ok   %s -> %s, *out 0\n", call, aiq_strerror(rc));
	}
}

static void expect_rc(const char *call, int rc)
{
	checks++;
	if (rc == AIQ_OK) {
		printf("FAIL %s: returned AIQ_OK on a NULL out\n", call);
		failures++;
	} else {
		printf("ok   %s -> %s\n", call, aiq_strerror(rc));
	}
}

int main(void)
{
	aiq_config *cfg = NULL;
	aiq_client *client = NULL;
	int rc;
	if (aiq_config_new(&cfg) != AIQ_OK ||
	    aiq_config_set_str(cfg, "broker.url", "memory://out-null") != AIQ_OK ||
	    aiq_config_set_str(cfg, "result.url", "memory://out-null") != AIQ_OK ||
	    aiq_client_new(&client, cfg) != AIQ_OK) {
		printf("setup failed: %s\n", aiq_error_last());
		return 100;
	}

	/* Constructors whose only bad argument is a NULL out: no crash, an error. */
	expect_rc("aiq_config_new(NULL)", aiq_config_new(NULL));
	expect_rc("aiq_enqueue_opts_new(NULL)", aiq_enqueue_opts_new(NULL));

	/* config.h */
	{
		aiq_config *o = POISON;
		rc = aiq_config_copy(&o, NULL);
		expect_null("aiq_config_copy(src NULL)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_config_get(&o, cfg, "no.such.key");
		expect_null("aiq_config_get(unknown key)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_config_get(&o, NULL, "queue");
		expect_null("aiq_config_get(cfg NULL)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_config_get(&o, cfg, NULL);
		expect_null("aiq_config_get(key NULL)", rc, o);
	}
	int64_t i64 = POISON_INT;
	rc = aiq_config_get_int(&i64, cfg, "no.such.key");
	expect_zero("aiq_config_get_int(unknown key)", rc, (long long)i64);
	i64 = POISON_INT;
	rc = aiq_config_get_int(&i64, cfg, "queue");
	expect_zero("aiq_config_get_int(string key)", rc, (long long)i64);
	i64 = POISON_INT;
	rc = aiq_config_get_int(&i64, NULL, "worker.concurrency");
	expect_zero("aiq_config_get_int(cfg NULL)", rc, (long long)i64);

	/* worker.h */
	{
		aiq_worker *o = POISON;
		rc = aiq_worker_new(&o, NULL);
		expect_null("aiq_worker_new(cfg NULL)", rc, o);
	}

	/* client.h */
	{
		aiq_client *o = POISON;
		rc = aiq_client_new(&o, NULL);
		expect_null("aiq_client_new(cfg NULL)", rc, o);
	}
	{
		aiq_config *bad = NULL;
		if (aiq_config_copy(&bad, cfg) == AIQ_OK &&
		    aiq_config_set_str(bad, "broker.url", "no-such-scheme://host") == AIQ_OK) {
			{
				aiq_client *o = POISON;
				rc = aiq_client_new(&o, bad);
				expect_null("aiq_client_new(unknown broker scheme)", rc, o);
			}
		}
		aiq_config_free(bad);
	}
	{
		char *o = POISON;
		rc = aiq_client_enqueue(&o, NULL, "tasks.add", NULL, NULL, NULL);
		expect_null("aiq_client_enqueue(client NULL)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_client_enqueue(&o, client, "", NULL, NULL, NULL);
		expect_null("aiq_client_enqueue(empty task name)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_client_enqueue(&o, client, "tasks.add", "[1,", NULL, NULL);
		expect_null("aiq_client_enqueue(invalid args JSON)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_client_enqueue(&o, client, "tasks.add", NULL, "[]", NULL);
		expect_null("aiq_client_enqueue(kwargs not an object)", rc, o);
	}
	{
		char *ids[2] = {POISON, POISON};
		int status[2] = {AIQ_OK, AIQ_OK};
		rc = aiq_client_enqueue_batch(ids, status, NULL, "tasks.add", NULL, NULL, 2, NULL);
		rc = rc;
		expect_null("aiq_client_enqueue_batch(client NULL) ids[0]", rc, ids[0]);
		rc = rc;
		expect_null("aiq_client_enqueue_batch(client NULL) ids[1]", rc, ids[1]);
		const char *args[2] = {"[1]", "not json"};
		ids[0] = ids[1] = POISON;
		rc = aiq_client_enqueue_batch(ids, status, client, "tasks.add", args, NULL, 2,
		                              NULL);
		rc = rc;
		expect_null("aiq_client_enqueue_batch(one bad args) ids[1]", rc, ids[1]);
		aiq_free(ids[0] == POISON ? NULL : ids[0]);
	}
	{
		aiq_result *o = POISON;
		rc = aiq_client_get_result(&o, NULL, "x");
		expect_null("aiq_client_get_result(client NULL)", rc, o);
	}
	{
		aiq_result *o = POISON;
		rc = aiq_client_get_result(&o, client, "");
		expect_null("aiq_client_get_result(empty id)", rc, o);
	}
	{
		aiq_result *o = POISON;
		rc = aiq_client_wait(&o, NULL, "x", 0);
		expect_null("aiq_client_wait(client NULL)", rc, o);
	}
	{
		aiq_result *o = POISON;
		rc = aiq_client_wait(&o, client, NULL, 0);
		expect_null("aiq_client_wait(id NULL)", rc, o);
	}
	uint64_t u64 = POISON_INT;
	rc = aiq_client_queue_depth(&u64, NULL, NULL);
	expect_zero("aiq_client_queue_depth(client NULL)", rc, (long long)u64);
	u64 = POISON_INT;
	rc = aiq_client_queue_depth(&u64, client, "bad\x01name");
	expect_zero("aiq_client_queue_depth(bad queue name)", rc, (long long)u64);
	u64 = POISON_INT;
	rc = aiq_client_purge(&u64, NULL, NULL);
	expect_zero("aiq_client_purge(client NULL)", rc, (long long)u64);
	u64 = POISON_INT;
	rc = aiq_client_purge(&u64, client, "bad\x01name");
	expect_zero("aiq_client_purge(bad queue name)", rc, (long long)u64);

	/* common.h */
	{
		char *o = POISON;
		rc = aiq_url_redact(&o, NULL);
		expect_null("aiq_url_redact(url NULL)", rc, o);
	}
	i64 = POISON_INT;
	rc = aiq_time_parse_iso8601(&i64, "2030-02-30T00:00:00Z");
	expect_zero("aiq_time_parse_iso8601(not a time)", rc, (long long)i64);
	i64 = POISON_INT;
	rc = aiq_time_parse_iso8601(&i64, NULL);
	expect_zero("aiq_time_parse_iso8601(text NULL)", rc, (long long)i64);

	/* task.h: the typed argument accessors (task NULL; wrong types, missing
	 * arguments and indexes out of range on a real task: tests/unit/test_task_args.c) */
	{
		const char *o = POISON;
		size_t len = POISON_INT;
		rc = aiq_task_arg_str(&o, &len, NULL, 0);
		expect_null("aiq_task_arg_str(task NULL)", rc, o);
		expect_zero("aiq_task_arg_str(task NULL) len", rc, (long long)len);
		o = POISON;
		len = POISON_INT;
		rc = aiq_task_kwarg_str(&o, &len, NULL, "k");
		expect_null("aiq_task_kwarg_str(task NULL)", rc, o);
		expect_zero("aiq_task_kwarg_str(task NULL) len", rc, (long long)len);
	}
	{
		char *o = POISON;
		rc = aiq_task_arg_json(&o, NULL, 0);
		expect_null("aiq_task_arg_json(task NULL)", rc, o);
		o = POISON;
		rc = aiq_task_kwarg_json(&o, NULL, "k");
		expect_null("aiq_task_kwarg_json(task NULL)", rc, o);
	}
	{
		int b = POISON_INT;
		double d = POISON_INT;
		i64 = POISON_INT;
		rc = aiq_task_arg_int(&i64, NULL, 0);
		expect_zero("aiq_task_arg_int(task NULL)", rc, (long long)i64);
		i64 = POISON_INT;
		rc = aiq_task_kwarg_int(&i64, NULL, "k");
		expect_zero("aiq_task_kwarg_int(task NULL)", rc, (long long)i64);
		rc = aiq_task_arg_double(&d, NULL, 0);
		expect_zero("aiq_task_arg_double(task NULL)", rc, (long long)d);
		d = POISON_INT;
		rc = aiq_task_kwarg_double(&d, NULL, "k");
		expect_zero("aiq_task_kwarg_double(task NULL)", rc, (long long)d);
		rc = aiq_task_arg_bool(&b, NULL, 0);
		expect_zero("aiq_task_arg_bool(task NULL)", rc, b);
		b = POISON_INT;
		rc = aiq_task_kwarg_bool(&b, NULL, "k");
		expect_zero("aiq_task_kwarg_bool(task NULL)", rc, b);
	}

	/* analyzer.h */
	{
		char *o = POISON;
		rc = aiq_lyrics_analyze(&o, NULL, NULL);
		expect_null("aiq_lyrics_analyze(text NULL)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_lyrics_analyze(&o, "\xff\xfe", NULL);
		expect_null("aiq_lyrics_analyze(invalid UTF-8)", rc, o);
	}
	{
		char *o = POISON;
		rc = aiq_lyrics_analyze(&o, "la la", "{");
		expect_null("aiq_lyrics_analyze(invalid params)", rc, o);
	}

	aiq_client_free(client);
	aiq_config_free(cfg);
	printf("%d of %d checks failed\n", failures, checks);
	return failures > 99 ? 99 : failures;
}
