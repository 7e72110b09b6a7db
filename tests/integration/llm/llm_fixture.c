/*
 * The llm suite's test server: openai_server.py on a free port of
 * 127.0.0.1, started by the test program and stopped by it, with its
 * request log. Shared by test_llm.c and test_embed_http.c.
 *
 * Environment: AIQ_LLM_SERVER (path of openai_server.py), AIQ_PYTHON.
 */
#include "llm_fixture.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t server_pid;
int server_port;
static char tmpdir[256];
static char log_path[300];

void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void server_start(void)
{
	const char *script = getenv("AIQ_LLM_SERVER");
	const char *python = getenv("AIQ_PYTHON");
	if (script == NULL || python == NULL) {
		fprintf(stderr, "AIQ_LLM_SERVER and AIQ_PYTHON must be set\n");
		exit(1);
	}
	snprintf(tmpdir, sizeof tmpdir, "/tmp/aiq-llm-XXXXXX");
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		exit(1);
	}
	char port_file[300];
	snprintf(port_file, sizeof port_file, "%s/port", tmpdir);
	snprintf(log_path, sizeof log_path, "%s/requests.log", tmpdir);
	server_pid = fork();
	if (server_pid == 0) {
		execl(python, python, script, port_file, log_path, API_KEY, (char *)NULL);
		perror("exec python3");
		_exit(127);
	}
	for (int i = 0; i < 200 && server_port == 0; i++) {
		FILE *f = fopen(port_file, "r");
		if (f) {
			if (fscanf(f, "%d", &server_port) != 1)
				server_port = 0;
			fclose(f);
		}
		if (server_port == 0)
			sleep_ms(50);
	}
	if (server_port == 0) {
		fprintf(stderr, "the test server did not start\n");
		kill(server_pid, SIGKILL);
		exit(1);
	}
}

void server_stop(void)
{
	if (server_pid > 0) {
		kill(server_pid, SIGTERM);
		waitpid(server_pid, NULL, 0);
		server_pid = 0;
	}
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
}

/* How many requests the server saw for a model. */
int requests_for(const char *model)
{
	FILE *f = fopen(log_path, "r");
	if (f == NULL)
		return 0;
	char line[256], name[200];
	int n = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "%199s", name) == 1 && strcmp(name, model) == 0)
			n++;
	fclose(f);
	return n;
}
