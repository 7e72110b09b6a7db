/*
 * The example plugin's plain task, textstats.word_count, which reads its
 * arguments with the typed accessors: through the public API only, on a
 * memory:// worker. argv[1] is the plugin's path.
 */
#include <aiqueue/aiqueue.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static int failures;

static void expect(int ok, const char *what, const char *detail)
{
	if (!ok) {
		fprintf(stderr, "FAIL: %s (%s)\n", what, detail ? detail : "");
		failures++;
	}
}

static void *run(void *w)
{
	aiq_worker_run(w);
	return NULL;
}

/* Enqueue, wait, and compare state and result or error message. */
static void call(aiq_client *c, const char *args, const char *kwargs, int state, const char *needle)
{
	char *id = NULL;
	aiq_result *r = NULL;
	int rc = aiq_client_enqueue(&id, c, "textstats.word_count", args, kwargs, NULL);
	expect(rc == AIQ_OK, "enqueue", aiq_error_last());
	if (rc == AIQ_OK)
		rc = aiq_client_wait(&r, c, id, 10000);
	expect(rc == AIQ_OK, "wait", aiq_error_last());
	if (rc == AIQ_OK) {
		const char *got = state == AIQ_STATE_SUCCESS ? aiq_result_json(r)
		                                             : aiq_result_error_message(r);
		printf("%s %s -> %s %s\n", args, kwargs ? kwargs : "",
		       aiq_state_name(aiq_result_state(r)), got ? got : "(null)");
		expect(aiq_result_state(r) == state, "state", aiq_result_error_message(r));
		expect(got && strstr(got, needle) != NULL, needle, got);
	}
	aiq_result_free(r);
	aiq_free(id);
}

int main(int argc, char **argv)
{
	aiq_config *cfg = NULL;
	aiq_worker *w = NULL;
	aiq_client *c = NULL;
	pthread_t th;
	if (argc != 2) {
		fprintf(stderr, "usage: test_plugin_task PLUGIN.so\n");
		return 2;
	}
	if (aiq_config_new(&cfg) || aiq_config_set_str(cfg, "broker.url", "memory://pt") ||
	    aiq_config_set_str(cfg, "result.url", "memory://pt") || aiq_worker_new(&w, cfg) ||
	    aiq_worker_load_plugin(w, argv[1]) || aiq_client_new(&c, cfg)) {
		fprintf(stderr, "setup: %s\n", aiq_error_last());
		return 1;
	}
	pthread_create(&th, NULL, run, w);
	call(c, "[\"Paper boats on the river\"]", NULL, AIQ_STATE_SUCCESS, "\"words\": 5");
	call(c, "[\"Paper boats on the river\"]", "{\"min_word_length\": 4}", AIQ_STATE_SUCCESS,
	     "\"words\": 3");
	call(c, "[\"\\u0440\\u0435\\u043a\\u0430 a\"]", "{\"min_word_length\": 2}",
	     AIQ_STATE_SUCCESS, "\"words\": 1");
	call(c, "[42]", NULL, AIQ_STATE_FAILURE,
	     "positional argument 0 is an integer, not a string");
	call(c, "[]", NULL, AIQ_STATE_FAILURE, "no positional argument 0 (it has 0)");
	call(c, "[\"x\"]", "{\"min_word_length\": \"4\"}", AIQ_STATE_FAILURE,
	     "keyword argument 'min_word_length' is a string, not an integer");
	call(c, "[\"x\"]", "{\"min_word_length\": 4.5}", AIQ_STATE_FAILURE,
	     "is a real number, not an integer");
	call(c, "[\"x\", \"y\"]", NULL, AIQ_STATE_FAILURE, "takes 1 positional argument");
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	aiq_client_free(c);
	aiq_worker_free(w);
	aiq_config_free(cfg);
	printf("%s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
