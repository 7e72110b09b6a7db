/*
 * A downstream program built against an installed libaiqueue with nothing
 * but `pkg-config --cflags --libs libaiqueue`. It enqueues three tasks on
 * memory://, consumes them with a worker in the same process, and checks the
 * stored results. No threads of its own: the handler stops the worker after
 * the last task, so aiq_worker_run() returns once they are all done.
 */
#include <aiqueue/aiqueue.h>

#include <stdio.h>
#include <string.h>

#define NTASKS 3

struct counter {
	aiq_worker *worker;
	int seen;
};

/* Sums a JSON array of small non-negative integers ("[2, 3]"), enough for
 * this test without a JSON library. */
static void add(aiq_task *t, void *userdata)
{
	struct counter *c = userdata;
	const char *p = aiq_task_args_json(t);
	long sum = 0, n = 0;
	for (; *p; p++) {
		if (*p >= '0' && *p <= '9') {
			n = n * 10 + (*p - '0');
		} else {
			sum += n;
			n = 0;
		}
	}
	char out[32];
	snprintf(out, sizeof out, "%ld", sum + n);
	aiq_task_succeed(t, out);
	/* The first stop is graceful: tasks already taken still finish. */
	if (++c->seen == NTASKS)
		aiq_worker_stop(c->worker);
}

static int fail(const char *what, int rc)
{
	fprintf(stderr, "consumer: %s: %s (%s)\n", what, aiq_strerror(rc), aiq_error_last());
	return 1;
}

int main(void)
{
	static const char *const args[NTASKS] = {"[2, 3]", "[10, 20, 30]", "[7]"};
	static const char *const want[NTASKS] = {"5", "60", "7"};
	char *ids[NTASKS] = {NULL};
	aiq_config *cfg = NULL;
	aiq_client *client = NULL;
	aiq_worker *worker = NULL;
	struct counter counter = {NULL, 0};
	int rc, status = 1;

	printf("libaiqueue %s (headers %s)\n", aiq_version_string(), AIQ_VERSION_STRING);
	if ((rc = aiq_config_new(&cfg)) != AIQ_OK)
		return fail("config", rc);
	if ((rc = aiq_config_set_str(cfg, "broker.url", "memory://consumer")) != AIQ_OK ||
	    (rc = aiq_config_set_str(cfg, "result.url", "memory://consumer")) != AIQ_OK ||
	    (rc = aiq_config_set_int(cfg, "worker.concurrency", 2)) != AIQ_OK) {
		fail("config", rc);
		goto out;
	}
	if ((rc = aiq_client_new(&client, cfg)) != AIQ_OK) {
		fail("client", rc);
		goto out;
	}
	for (int i = 0; i < NTASKS; i++) {
		rc = aiq_client_enqueue(&ids[i], client, "tasks.add", args[i], NULL, NULL);
		if (rc != AIQ_OK) {
			fail("enqueue", rc);
			goto out;
		}
	}

	if ((rc = aiq_worker_new(&worker, cfg)) != AIQ_OK) {
		fail("worker", rc);
		goto out;
	}
	counter.worker = worker;
	if ((rc = aiq_worker_register(worker, "tasks.add", add, &counter, NULL)) != AIQ_OK) {
		fail("register", rc);
		goto out;
	}
	if ((rc = aiq_worker_run(worker)) != AIQ_OK) {
		fprintf(stderr, "consumer: run: %s (%s)\n", aiq_strerror(rc),
		        aiq_worker_error(worker));
		goto out;
	}

	status = 0;
	for (int i = 0; i < NTASKS; i++) {
		aiq_result *r = NULL;
		rc = aiq_client_wait(&r, client, ids[i], 5000);
		const char *got = r ? aiq_result_json(r) : "(none)";
		int ok = rc == AIQ_OK && aiq_result_state(r) == AIQ_STATE_SUCCESS &&
		         strcmp(got, want[i]) == 0;
		printf("%s %s -> %s %s\n", ok ? "ok" : "FAIL", args[i],
		       r ? aiq_state_name(aiq_result_state(r)) : aiq_strerror(rc), got);
		if (!ok)
			status = 1;
		aiq_result_free(r);
	}
	if (status == 0)
		printf("consumed %d tasks through memory://\n", counter.seen);
out:
	for (int i = 0; i < NTASKS; i++)
		aiq_free(ids[i]);
	aiq_worker_free(worker);
	aiq_client_free(client);
	aiq_config_free(cfg);
	return status;
}
