/*
 * A libaiqueue client for the interoperability suite:
 *   interop_client TASK ARGS_JSON KWARGS_JSON [COUNTDOWN_MS]
 * enqueues one task (configured from the environment), waits up to 30 s for
 * its result, and prints {"id", "state", "result", "exc_type", "exc_message",
 * "exc_module"} as JSON on stdout.
 *   interop_client --forget ID   deletes the task's stored result;
 *   interop_client --state ID    prints the task's state name.
 */
#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --forget ID / --state ID */
static int by_id(const char *what, const char *id)
{
	aiq_config *cfg = NULL;
	aiq_client *c = NULL;
	aiq_result *r = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_load_env(cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_new(&c, cfg);
	if (rc == AIQ_OK && strcmp(what, "--forget") == 0)
		rc = aiq_client_forget(c, id);
	else if (rc == AIQ_OK && (rc = aiq_client_get_result(&r, c, id)) == AIQ_OK)
		printf("%s\n", aiq_state_name(aiq_result_state(r)));
	if (rc != AIQ_OK)
		fprintf(stderr, "interop_client: %s: %s\n", aiq_strerror(rc), aiq_error_last());
	aiq_result_free(r);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return rc == AIQ_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && (strcmp(argv[1], "--forget") == 0 || strcmp(argv[1], "--state") == 0))
		return by_id(argv[1], argv[2]);
	if (argc < 4) {
		fprintf(stderr, "usage: %s TASK ARGS_JSON KWARGS_JSON [COUNTDOWN_MS]\n", argv[0]);
		return 2;
	}
	aiq_config *cfg = NULL;
	aiq_client *c = NULL;
	aiq_enqueue_opts *o = NULL;
	char *id = NULL;
	aiq_result *r = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_load_env(cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_new(&c, cfg);
	if (rc == AIQ_OK)
		rc = aiq_enqueue_opts_new(&o);
	if (rc == AIQ_OK && argc > 4)
		rc = aiq_enqueue_opts_set_countdown_ms(o, atoll(argv[4]));
	if (rc == AIQ_OK)
		rc = aiq_client_enqueue(&id, c, argv[1], argv[2], argv[3], o);
	if (rc == AIQ_OK)
		rc = aiq_client_wait(&r, c, id, 30000);
	if (rc != AIQ_OK) {
		fprintf(stderr, "interop_client: %s: %s\n", aiq_strerror(rc), aiq_error_last());
		return 1;
	}
	json_t *res = json_loads(aiq_result_json(r), JSON_DECODE_ANY, NULL);
	json_t *out =
	        json_pack("{s:s, s:s, s:o?, s:s?, s:s?, s:s?}", "id", id, "state",
	                  aiq_state_name(aiq_result_state(r)), "result", res, "exc_type",
	                  aiq_result_error_type(r), "exc_message", aiq_result_error_message(r),
	                  "exc_module", aiq_result_error_module(r));
	char *text = json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII);
	printf("%s\n", text);
	free(text);
	json_decref(out);
	aiq_result_free(r);
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return 0;
}
