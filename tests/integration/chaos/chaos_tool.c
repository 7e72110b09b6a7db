/*
 * Producer and checker for the chaos suite, on the public API, configured
 * from the environment (AIQUEUE_BROKER_URL, AIQUEUE_RESULT_URL, ...):
 *
 *   chaos_tool enqueue N     enqueue tasks.c_sleep [SLEEP_MS, i] for i < N
 *                            and print one task id per line
 *   chaos_tool check FILE T  wait up to T ms for every id in FILE (line i =
 *                            task i) and check each ended SUCCESS with result i;
 *                            prints "ok N" or the first problems, exit 1
 */
#include <aiqueue/aiqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int enqueue(aiq_client *c, long n, long sleep_ms)
{
	for (long i = 0; i < n; i++) {
		char args[64], *id = NULL;
		snprintf(args, sizeof args, "[%ld, %ld]", sleep_ms, i);
		int rc = aiq_client_enqueue(&id, c, "tasks.c_sleep", args, NULL, NULL);
		if (rc != AIQ_OK) {
			fprintf(stderr, "enqueue %ld: %s\n", i, aiq_error_last());
			return 1;
		}
		printf("%s\n", id);
		aiq_free(id);
	}
	return 0;
}

static int check(aiq_client *c, const char *path, int64_t timeout_ms)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		perror(path);
		return 1;
	}
	char line[256];
	long i = 0, bad = 0;
	int64_t deadline = now_ms() + timeout_ms;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = '\0';
		int64_t left = deadline - now_ms();
		aiq_result *r = NULL;
		int rc = aiq_client_wait(&r, c, line, left > 0 ? left : 0);
		char want[32];
		snprintf(want, sizeof want, "%ld", i);
		if (rc != AIQ_OK || aiq_result_state(r) != AIQ_STATE_SUCCESS ||
		    strcmp(aiq_result_json(r), want) != 0) {
			if (bad++ < 10)
				printf("task %ld %s: %s %s\n", i, line,
				       r ? aiq_state_name(aiq_result_state(r)) : aiq_strerror(rc),
				       r ? aiq_result_json(r) : "");
		}
		aiq_result_free(r);
		i++;
	}
	fclose(f);
	if (bad) {
		printf("%ld of %ld tasks not done\n", bad, i);
		return 1;
	}
	printf("ok %ld\n", i);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: chaos_tool enqueue N [SLEEP_MS] | check FILE TIMEOUT_MS\n");
		return 2;
	}
	aiq_config *cfg = NULL;
	aiq_client *c = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_load_env(cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_new(&c, cfg);
	if (rc != AIQ_OK) {
		fprintf(stderr, "chaos_tool: %s\n", aiq_error_last());
		return 3;
	}
	int status;
	if (strcmp(argv[1], "enqueue") == 0)
		status = enqueue(c, atol(argv[2]), argc > 3 ? atol(argv[3]) : 5);
	else if (strcmp(argv[1], "check") == 0 && argc > 3)
		status = check(c, argv[2], atol(argv[3]));
	else
		status = 2;
	aiq_client_free(c);
	aiq_config_free(cfg);
	return status;
}
