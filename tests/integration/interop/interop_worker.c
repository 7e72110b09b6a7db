/*
 * A libaiqueue worker for the interoperability suite: configured from the
 * environment (AIQUEUE_* / CELERY_*), it serves C tasks to Celery clients
 * until SIGTERM.
 */
#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static aiq_worker *worker;

static void on_signal(int sig)
{
	(void)sig;
	aiq_worker_stop(worker);
}

static void c_add(aiq_task *t, void *ud)
{
	(void)ud;
	json_t *args = json_loads(aiq_task_args_json(t), 0, NULL);
	json_int_t sum = 0;
	size_t i;
	json_t *v;
	json_array_foreach(args, i, v)
	{
		if (!json_is_integer(v)) {
			json_decref(args);
			aiq_task_fail(t, "TypeError", "c_add takes integers", "builtins");
			return;
		}
		sum += json_integer_value(v);
	}
	json_decref(args);
	char buf[32];
	snprintf(buf, sizeof buf, "%lld", (long long)sum);
	aiq_task_succeed(t, buf);
}

static void c_fail(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_fail(t, "AnalysisError", "model exploded", "tasks");
}

/* Returns its arguments, so a test can check what arrived. */
static void c_echo(aiq_task *t, void *ud)
{
	(void)ud;
	char *out = NULL;
	json_t *v = json_pack(
	        "{s:o?, s:o?, s:i}", "args", json_loads(aiq_task_args_json(t), 0, NULL), "kwargs",
	        json_loads(aiq_task_kwargs_json(t), 0, NULL), "retries", aiq_task_retries(t));
	if (v)
		out = json_dumps(v, JSON_COMPACT);
	json_decref(v);
	aiq_task_succeed(t, out);
	free(out);
}

/* args [sleep_ms, value]: sleeps, then returns value (the chaos suite). */
static void c_sleep(aiq_task *t, void *ud)
{
	(void)ud;
	json_t *args = json_loads(aiq_task_args_json(t), 0, NULL);
	json_int_t ms = json_integer_value(json_array_get(args, 0));
	char *value = json_dumps(json_array_get(args, 1), JSON_ENCODE_ANY);
	json_decref(args);
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
	aiq_task_succeed(t, value);
	free(value);
}

/* Reports PROGRESS, holds it for a moment, then succeeds. */
static void c_progress(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_progress(t, "{\"step\": 1, \"of\": 2}");
	struct timespec ts = {1, 500000000L};
	nanosleep(&ts, NULL);
	aiq_task_succeed(t, "\"done\"");
}

static void c_retry_once(aiq_task *t, void *ud)
{
	(void)ud;
	if (aiq_task_retries(t) == 0)
		aiq_task_retry(t, 100, "first attempt always retries");
	else
		aiq_task_succeed(t, "\"second attempt\"");
}

int main(void)
{
	aiq_config *cfg = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_load_env(cfg);
	if (rc == AIQ_OK)
		rc = aiq_worker_new(&worker, cfg);
	if (rc == AIQ_OK)
		rc = aiq_worker_register(worker, "tasks.c_add", c_add, NULL, NULL);
	if (rc == AIQ_OK)
		rc = aiq_worker_register(worker, "tasks.c_fail", c_fail, NULL, NULL);
	if (rc == AIQ_OK)
		rc = aiq_worker_register(worker, "tasks.c_echo", c_echo, NULL, NULL);
	if (rc == AIQ_OK)
		rc = aiq_worker_register(worker, "tasks.c_retry_once", c_retry_once, NULL, NULL);
	if (rc == AIQ_OK)
		rc = aiq_worker_register(worker, "tasks.c_sleep", c_sleep, NULL, NULL);
	if (rc == AIQ_OK)
		rc = aiq_worker_register(worker, "tasks.c_progress", c_progress, NULL, NULL);
	/* The same name as the Celery app's task: both kinds of worker can
	 * share one queue. */
	if (rc == AIQ_OK)
		rc = aiq_worker_register(worker, "tasks.add", c_add, NULL, NULL);
	if (rc != AIQ_OK) {
		fprintf(stderr, "interop_worker: %s: %s\n", aiq_strerror(rc), aiq_error_last());
		return 3;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	fprintf(stderr, "interop_worker: running\n");
	rc = aiq_worker_run(worker);
	if (rc != AIQ_OK)
		fprintf(stderr, "interop_worker: %s: %s\n", aiq_strerror(rc),
		        aiq_worker_error(worker));
	aiq_worker_free(worker);
	aiq_config_free(cfg);
	return rc == AIQ_OK ? 0 : 1;
}
