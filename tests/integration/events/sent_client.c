/*
 * A libaiqueue client for the events suite (task-sent events):
 *   sent_client TASK N BATCH
 * enqueues N tasks TASK([i, 1]) (configured from the environment), one by
 * one when BATCH is 1, else with aiq_client_enqueue_batch() BATCH at a
 * time, frees the client (which publishes the queued events) and prints
 * {"ids": [...], "enqueue_s": seconds spent in the enqueue calls}.
 */
#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s TASK N BATCH\n", argv[0]);
		return 2;
	}
	size_t n = (size_t)atol(argv[2]), batch = (size_t)atol(argv[3]);
	if (n == 0 || batch == 0 || batch > 1000)
		return 2;
	aiq_config *cfg = NULL;
	aiq_client *c = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_load_env(cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_new(&c, cfg);
	json_t *ids = json_array();
	char *args[1000];
	char *out[1000];
	double spent = 0;
	for (size_t at = 0; rc == AIQ_OK && at < n; at += batch) {
		size_t k = n - at < batch ? n - at : batch;
		for (size_t i = 0; i < k; i++) {
			char buf[64];
			snprintf(buf, sizeof buf, "[%zu, 1]", at + i);
			args[i] = strdup(buf);
		}
		double t0 = now_s();
		if (batch == 1)
			rc = aiq_client_enqueue(&out[0], c, argv[1], args[0], NULL, NULL);
		else
			rc = aiq_client_enqueue_batch(out, NULL, c, argv[1],
			                              (const char *const *)args, NULL, k, NULL);
		spent += now_s() - t0;
		for (size_t i = 0; i < k; i++) {
			if (rc == AIQ_OK)
				json_array_append_new(ids, json_string(out[i]));
			if (rc == AIQ_OK)
				aiq_free(out[i]);
			free(args[i]);
		}
	}
	if (rc != AIQ_OK) {
		fprintf(stderr, "sent_client: %s: %s\n", aiq_strerror(rc), aiq_error_last());
		return 1;
	}
	aiq_client_free(c);
	aiq_config_free(cfg);
	json_t *res = json_pack("{s:o, s:f}", "ids", ids, "enqueue_s", spent);
	char *text = json_dumps(res, JSON_COMPACT);
	printf("%s\n", text);
	free(text);
	json_decref(res);
	return 0;
}
