/*
 * aiqueue-demo: the whole job in one process on the embedded default.
 *
 * Starts in-process workers on memory://, enqueues one analysis task per
 * lyrics file (the built-in tasks.analyze_track with the lyrics analyzer),
 * waits for each result without polling, and prints a summary and the JSON.
 * Uses the public API only.
 *
 *   aiqueue-demo [--workers N] [--json] FILE...
 */
#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *run_worker(void *w)
{
	int rc = aiq_worker_run(w);
	if (rc != AIQ_OK)
		fprintf(stderr, "worker: %s: %s\n", aiq_strerror(rc), aiq_worker_error(w));
	return NULL;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	size_t n;
	while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len - 1 == 0) {
			char *nb = realloc(buf, cap *= 2);
			if (nb == NULL) {
				free(buf);
				buf = NULL;
			}
			buf = nb;
		}
	}
	fclose(f);
	if (buf)
		buf[len] = '\0';
	return buf;
}

static const char *base_name(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? slash + 1 : path;
}

static void print_summary(const char *file, const char *json, int as_json)
{
	if (as_json) {
		printf("%s\n", json);
		return;
	}
	json_t *v = json_loads(json, 0, NULL);
	json_t *a = json_object_get(v, "analysis");
	printf("== %s\n", file);
	printf("   language %s, %lld lines, %lld words (%lld unique, diversity %.2f)\n",
	       json_string_value(json_object_get(a, "language")),
	       (long long)json_integer_value(json_object_get(a, "line_count")),
	       (long long)json_integer_value(json_object_get(a, "word_count")),
	       (long long)json_integer_value(json_object_get(a, "unique_word_count")),
	       json_number_value(json_object_get(a, "lexical_diversity")));
	json_t *sent = json_object_get(a, "sentiment");
	printf("   rhyme density %.2f, sentiment %s (%.2f)\n",
	       json_number_value(json_object_get(json_object_get(a, "rhyme"), "rhyme_density")),
	       json_string_value(json_object_get(sent, "label")),
	       json_number_value(json_object_get(sent, "score")));
	json_t *rh = json_object_get(a, "rhyme");
	printf("   rhymes by %s: %lld perfect, %lld slant, %lld multis, %lld internal\n",
	       json_string_value(json_object_get(a, "phonetics")),
	       (long long)json_integer_value(json_object_get(rh, "perfect_pairs")),
	       (long long)json_integer_value(json_object_get(rh, "slant_pairs")),
	       (long long)json_integer_value(json_object_get(rh, "multis")),
	       (long long)json_integer_value(json_object_get(rh, "internal_rhymes")));
	json_t *top = json_object_get(a, "top_words");
	printf("   top words:");
	size_t i;
	json_t *w;
	json_array_foreach(top, i, w)
	{
		if (i == 5)
			break;
		printf(" %s(%lld)", json_string_value(json_object_get(w, "word")),
		       (long long)json_integer_value(json_object_get(w, "count")));
	}
	printf("\n");
	json_decref(v);
}

int main(int argc, char **argv)
{
	int workers = 2, as_json = 0, first = 1;
	while (first < argc && strncmp(argv[first], "--", 2) == 0) {
		if (strcmp(argv[first], "--workers") == 0 && first + 1 < argc) {
			char *end;
			long n = strtol(argv[first + 1], &end, 10);
			workers = *end == '\0' && n >= 1 && n <= 256 ? (int)n : 0; /* 0: usage */
			first += 2;
		} else if (strcmp(argv[first], "--json") == 0) {
			as_json = 1;
			first++;
		} else {
			break;
		}
	}
	if (first >= argc || workers < 1) {
		fprintf(stderr, "usage: %s [--workers N] [--json] FILE...\n", argv[0]);
		return 2;
	}

	aiq_config *cfg = NULL;
	aiq_client *client = NULL;
	aiq_worker *worker = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_set_int(cfg, "worker.concurrency", workers);
	if (rc == AIQ_OK)
		rc = aiq_worker_new(&worker, cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_new(&client, cfg);
	if (rc != AIQ_OK) {
		fprintf(stderr, "setup failed: %s: %s\n", aiq_strerror(rc), aiq_error_last());
		return 1;
	}
	printf("libaiqueue %s: %d in-process workers on memory://\n", aiq_version_string(),
	       workers);
	pthread_t thread;
	pthread_create(&thread, NULL, run_worker, worker);

	int nfiles = argc - first, failures = 0;
	char **ids = calloc((size_t)nfiles, sizeof *ids);
	for (int i = 0; i < nfiles && ids; i++) {
		char *text = read_file(argv[first + i]);
		if (text == NULL) {
			fprintf(stderr, "cannot read %s\n", argv[first + i]);
			failures++;
			continue;
		}
		json_t *args = json_pack("[ss]", base_name(argv[first + i]), text);
		char *args_json = args ? json_dumps(args, JSON_COMPACT) : NULL;
		rc = aiq_client_enqueue(&ids[i], client, "tasks.analyze_track", args_json,
		                        "{\"analyzer\": \"lyrics\"}", NULL);
		if (rc != AIQ_OK) {
			fprintf(stderr, "enqueue %s: %s\n", argv[first + i], aiq_error_last());
			failures++;
		}
		free(args_json);
		json_decref(args);
		free(text);
	}
	printf("enqueued %d tasks\n", nfiles - failures);

	for (int i = 0; i < nfiles && ids; i++) {
		if (ids[i] == NULL)
			continue;
		aiq_result *r = NULL;
		rc = aiq_client_wait(&r, client, ids[i], 30000);
		if (rc == AIQ_OK && aiq_result_state(r) == AIQ_STATE_SUCCESS) {
			print_summary(base_name(argv[first + i]), aiq_result_json(r), as_json);
		} else {
			fprintf(stderr, "%s: %s %s\n", argv[first + i],
			        rc == AIQ_OK ? aiq_state_name(aiq_result_state(r))
			                     : aiq_strerror(rc),
			        r && aiq_result_error_message(r) ? aiq_result_error_message(r)
			                                         : "");
			failures++;
		}
		aiq_result_free(r);
		aiq_free(ids[i]);
	}
	free(ids);

	aiq_worker_stop(worker);
	pthread_join(thread, NULL);
	aiq_worker_free(worker);
	aiq_client_free(client);
	aiq_config_free(cfg);
	return failures ? 1 : 0;
}
