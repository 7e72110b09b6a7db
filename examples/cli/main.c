/*
 * aiqueue: enqueue tasks and look at queues from a shell.
 *
 *   aiqueue [--broker URL] [--backend URL] [--json] COMMAND [ARGS]
 *
 * Commands: enqueue, status, wait, revoke, purge, inspect. See
 * `aiqueue --help`, `aiqueue COMMAND --help` and docs/programs.md.
 * memory:// lives inside one process, so what the CLI sent there would
 * never reach a worker: it refuses it and asks for a real broker and store.
 */
#include "../common/progutil.h"

#include <aiqueue/aiqueue.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3, EXIT_TIMEOUT = 4 };

struct cli {
	aiq_config *cfg;
	int json;
	const char *file;
	int lyrics;
	double timeout_s;
	aiq_enqueue_opts *opts;
	int have_opts;
	const char *queue;
};

static const char *const command_help[][2] = {
        {"enqueue",
         "usage: aiqueue enqueue TASK [ARGS_JSON] [KWARGS_JSON] [options]\n"
         "       aiqueue enqueue --file FILE|-       (one {\"task\",\"args\",\"kwargs\"} per "
         "line)\n"
         "       aiqueue enqueue --lyrics FILE...    (one tasks.analyze_track per file)\n"
         "\n"
         "  --countdown SECONDS   run no earlier than this from now (2.5, 500ms, 30s, 2m)\n"
         "  --eta TIME            run no earlier than TIME (ISO-8601 with Z or an offset such\n"
         "                        as +02:00, naive = UTC; or UNIX seconds)\n"
         "  --expires SECONDS     revoke if not started within this time (600, 10m, 1h)\n"
         "  --priority N          0-255\n"
         "  --queue NAME          send to this queue\n"
         "  --max-retries N       retries allowed for this task\n"
         "  --task-id ID          use this id instead of a fresh UUID\n"
         "Prints the task id (one per line for a batch; a progress bar on a terminal).\n"},
        {"status", "usage: aiqueue status TASK_ID\nPrints the state, result and error.\n"},
        {"wait", "usage: aiqueue wait TASK_ID [--timeout SECONDS]\n"
                 "SECONDS: 2.5, or with a unit: 500ms, 30s, 2m, 1h.\n"
                 "Blocks until the task is done (default: forever). Exit 0 on SUCCESS, 1 on\n"
                 "FAILURE or REVOKED, 4 on timeout.\n"},
        {"revoke", "usage: aiqueue revoke TASK_ID\nThe task ends REVOKED; a running one is "
                   "asked to stop.\n"},
        {"purge", "usage: aiqueue purge [QUEUE]\nRemoves every ready message from the queue "
                  "(default: the configured queue).\n"},
        {"inspect", "usage: aiqueue inspect [QUEUE]\nPrints the ready messages in the queue and "
                    "in its dead-letter queue QUEUE.dead.\n"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: aiqueue [--broker URL] [--backend URL] [--json] COMMAND [ARGS]\n"
	           "\n"
	           "Commands:\n"
	           "  enqueue TASK [ARGS_JSON] [KWARGS_JSON]   send one task (or a batch: --file, "
	           "--lyrics)\n"
	           "  status TASK_ID                           show a task's state\n"
	           "  wait TASK_ID [--timeout S]               wait for a task to finish\n"
	           "  revoke TASK_ID                           revoke a task\n"
	           "  purge [QUEUE]                            empty a queue\n"
	           "  inspect [QUEUE]                          queue and dead-letter depth\n"
	           "\n"
	           "Options for every command:\n"
	           "  -b, --broker URL  [AIQUEUE_BROKER_URL, CELERY_BROKER_URL] (default "
	           "memory://)\n"
	           "  --backend URL   [AIQUEUE_RESULT_URL, CELERY_RESULT_BACKEND] (default "
	           "memory://);\n"
	           "                  --result-backend also works\n"
	           "  --queue NAME    queue to send to, purge or inspect [AIQUEUE_QUEUE]\n"
	           "                  (default celery)\n"
	           "  --json          machine-readable output, one JSON object per line\n"
	           "  --help          this text; 'aiqueue COMMAND --help' for a command\n"
	           "\n"
	           "memory:// lives inside one process: no worker and no other aiqueue command\n"
	           "can see it, so every command needs a real broker (enqueue, purge, inspect)\n"
	           "or result store (status, wait, revoke).\n"
	           "\n"
	           "Durations (--timeout, --countdown, --expires) are seconds, as in Celery and\n"
	           "the HTTP API, or take a unit: 500ms, 30s, 2m, 1h. The C library takes\n"
	           "milliseconds.\n"
	           "\n"
	           "Exit codes: 0 ok, 1 failed (or the task failed), 2 usage error (also a URL\n"
	           "scheme this build cannot open, or memory://), 3 could not connect, 4 timed "
	           "out.\n");
}

#define usage_error(...) prog_usage_error("aiqueue", __VA_ARGS__)

static int fail(int rc, const char *what)
{
	fprintf(stderr, "aiqueue: %s: %s%s%s\n", what, aiq_strerror(rc),
	        *aiq_error_last() ? ": " : "", aiq_error_last());
	return rc == AIQ_EBROKER || rc == AIQ_ESTORE || rc == AIQ_EUNSUPPORTED ? EXIT_CONNECT
	                                                                       : EXIT_FAIL;
}

enum { NEED_BROKER = 1, NEED_STORE = 2 };

static int is_memory_url(const char *url)
{
	return url && strncasecmp(url, "memory:", 7) == 0;
}

/*
 * Refuse what can never work before connecting: a URL scheme this build
 * cannot open (the message names the feature and its package), and
 * memory://, which lives and dies with this one process, so a worker would
 * never see what is enqueued and no task would ever be found.
 */
static int check_urls(struct cli *cli, int need)
{
	char *broker = NULL, *store = NULL;
	aiq_config_get(&broker, cli->cfg, "broker.url");
	aiq_config_get(&store, cli->cfg, "result.url");
	int rc = 0;
	if (broker == NULL || store == NULL) {
		rc = fail(AIQ_ENOMEM, "configuration");
	} else if (aiq_url_check_broker(broker) != AIQ_OK || aiq_url_check_store(store) != AIQ_OK) {
		fprintf(stderr, "aiqueue: %s\n", aiq_error_last());
		rc = EXIT_USAGE;
	} else if ((need & NEED_BROKER) && is_memory_url(broker)) {
		fprintf(stderr,
		        "aiqueue: the broker is memory://, which lives inside this one process: "
		        "no worker or other process would ever see the task. Name a real broker "
		        "with --broker URL or AIQUEUE_BROKER_URL (e.g. redis://localhost:6379/0 or "
		        "amqp://guest:guest@localhost:5672//).\n");
		rc = EXIT_USAGE;
	} else if ((need & NEED_STORE) && is_memory_url(store)) {
		fprintf(stderr,
		        "aiqueue: the result store is memory://, which lives inside this one "
		        "process: no worker's result can be found there. Name a real store with "
		        "--backend URL or AIQUEUE_RESULT_URL (e.g. redis://localhost:6379/1).\n");
		rc = EXIT_USAGE;
	}
	aiq_free(broker);
	aiq_free(store);
	return rc;
}

static int connect_client(aiq_client **c, struct cli *cli, int need)
{
	int rc = check_urls(cli, need);
	if (rc)
		return rc;
	rc = aiq_client_new(c, cli->cfg);
	return rc == AIQ_OK ? 0 : fail(rc, "cannot connect");
}

static void print_json(json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT);
	if (s)
		printf("%s\n", s);
	free(s);
	json_decref(v);
}

static json_t *result_json(const aiq_result *r)
{
	json_t *res = json_loads(aiq_result_json(r), JSON_DECODE_ANY, NULL);
	json_t *err = json_null();
	if (aiq_result_error_type(r) || aiq_result_error_message(r))
		err = json_pack("{s s? s s? s s?}", "type", aiq_result_error_type(r), "message",
		                aiq_result_error_message(r), "module", aiq_result_error_module(r));
	const char *dd = aiq_result_date_done(r);
	return json_pack("{s s s s s o s o s o}", "task_id", aiq_result_task_id(r), "state",
	                 aiq_state_name(aiq_result_state(r)), "result", res ? res : json_null(),
	                 "error", err ? err : json_null(), "date_done",
	                 dd ? json_string(dd) : json_null());
}

static void print_result(struct cli *cli, const aiq_result *r)
{
	if (cli->json) {
		print_json(result_json(r));
		return;
	}
	printf("%s %s\n", aiq_result_task_id(r), aiq_state_name(aiq_result_state(r)));
	if (aiq_result_error_type(r) || aiq_result_error_message(r))
		printf("error: %s: %s\n", aiq_result_error_type(r) ? aiq_result_error_type(r) : "",
		       aiq_result_error_message(r) ? aiq_result_error_message(r) : "");
	else if (strcmp(aiq_result_json(r), "null") != 0)
		printf("%s\n", aiq_result_json(r));
}

/* ---- enqueue ------------------------------------------------------------ */

static void progress(size_t done, size_t total, int failed)
{
	if (!isatty(STDERR_FILENO))
		return;
	int width = 40, fill = total ? (int)(done * (size_t)width / total) : width;
	fprintf(stderr, "\r[%.*s%*s] %zu/%zu%s", fill, "########################################",
	        width - fill, "", done, total, failed ? " (with errors)" : "");
	if (done == total)
		fputc('\n', stderr);
	fflush(stderr);
}

static int enqueue_one(struct cli *cli, aiq_client *c, const char *task, const char *args,
                       const char *kwargs, const char *label)
{
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, c, task, args, kwargs, cli->opts);
	if (rc != AIQ_OK) {
		fprintf(stderr, "aiqueue: %s: %s: %s\n", label, aiq_strerror(rc), aiq_error_last());
		return rc;
	}
	if (cli->json)
		print_json(
		        json_pack("{s s s s s s}", "task_id", id, "task", task, "source", label));
	else
		printf("%s\n", id);
	aiq_free(id);
	return AIQ_OK;
}

static int cmd_enqueue(struct cli *cli, int argc, char **argv)
{
	if (cli->file == NULL && !cli->lyrics && (argc < 1 || argc > 3))
		return usage_error("enqueue needs TASK [ARGS_JSON] [KWARGS_JSON]");
	if (cli->file && (argc > 0 || cli->lyrics))
		return usage_error("--file takes no other arguments");
	if (cli->lyrics && argc < 1)
		return usage_error("--lyrics needs at least one file");
	if (!cli->file && !cli->lyrics) {
		/* Check the JSON here so a typo is a usage error, not a broker error. */
		for (int i = 1; i < argc; i++) {
			json_error_t e;
			json_t *v = json_loads(argv[i], 0, &e);
			int ok = v && (i == 1 ? json_is_array(v) : json_is_object(v));
			json_decref(v);
			if (!ok)
				return usage_error("%s must be a JSON %s",
				                   i == 1 ? "ARGS_JSON" : "KWARGS_JSON",
				                   i == 1 ? "array" : "object");
		}
	}
	aiq_client *c = NULL;
	int rc = connect_client(&c, cli, NEED_BROKER);
	if (rc)
		return rc;
	size_t total = 0, done = 0;
	int failed = 0, last = AIQ_OK;
	if (cli->lyrics) {
		char *task = NULL;
		aiq_config_get(&task, cli->cfg, "analyze.task_name");
		total = (size_t)argc;
		for (int i = 0; i < argc; i++) {
			char *text = prog_read_file(argv[i], NULL, 1 << 20);
			const char *slash = strrchr(argv[i], '/');
			json_t *args =
			        text ? json_pack("[ss]", slash ? slash + 1 : argv[i], text) : NULL;
			char *a = args ? json_dumps(args, JSON_COMPACT) : NULL;
			if (a == NULL) {
				fprintf(stderr,
				        "aiqueue: %s: cannot read it as UTF-8 text under 1 MiB\n",
				        argv[i]);
				failed++;
			} else if ((last = enqueue_one(cli, c, task, a, NULL, argv[i])) != AIQ_OK) {
				failed++;
			}
			free(a);
			json_decref(args);
			free(text);
			progress(++done, total, failed);
		}
		aiq_free(task);
	} else if (cli->file) {
		FILE *f = strcmp(cli->file, "-") == 0 ? stdin : fopen(cli->file, "r");
		if (f == NULL) {
			aiq_client_free(c);
			fprintf(stderr, "aiqueue: cannot open %s\n", cli->file);
			return EXIT_FAIL;
		}
		/* Count lines first when the input is a file, for the progress bar. */
		if (f != stdin && isatty(STDERR_FILENO)) {
			int ch;
			while ((ch = fgetc(f)) != EOF)
				total += ch == '\n';
			rewind(f);
		}
		char *line = NULL;
		size_t cap = 0;
		ssize_t len;
		size_t lineno = 0;
		while ((len = getline(&line, &cap, f)) >= 0) {
			lineno++;
			char label[64];
			snprintf(label, sizeof label, "line %zu", lineno);
			json_error_t e;
			json_t *v = json_loads(line, 0, &e);
			if (v == NULL && strspn(line, " \t\r\n") == (size_t)len)
				continue; /* blank line */
			json_t *task = json_object_get(v, "task");
			json_t *args = json_object_get(v, "args"),
			       *kwargs = json_object_get(v, "kwargs");
			if (v == NULL) {
				/* Say where the JSON breaks, as jansson found it. */
				fprintf(stderr, "aiqueue: %s, column %d: invalid JSON: %s\n", label,
				        e.column, e.text);
				failed++;
			} else if (!json_is_string(task) || (args && !json_is_array(args)) ||
			           (kwargs && !json_is_object(kwargs))) {
				fprintf(stderr,
				        "aiqueue: %s: expected {\"task\": str, \"args\": [...], "
				        "\"kwargs\": {...}}\n",
				        label);
				failed++;
			} else {
				char *a = args ? json_dumps(args, JSON_COMPACT) : NULL;
				char *k = kwargs ? json_dumps(kwargs, JSON_COMPACT) : NULL;
				if ((last = enqueue_one(cli, c, json_string_value(task), a, k,
				                        label)) != AIQ_OK)
					failed++;
				free(a);
				free(k);
			}
			json_decref(v);
			done++;
			if (total)
				progress(done, total, failed);
		}
		free(line);
		if (f != stdin)
			fclose(f);
	} else {
		last = enqueue_one(cli, c, argv[0], argc > 1 ? argv[1] : NULL,
		                   argc > 2 ? argv[2] : NULL, argv[0]);
		failed = last != AIQ_OK;
	}
	aiq_client_free(c);
	if (failed && (last == AIQ_EBROKER || last == AIQ_EUNSUPPORTED))
		return EXIT_CONNECT;
	return failed ? EXIT_FAIL : 0;
}

/* ---- the rest ----------------------------------------------------------- */

static int cmd_status_wait(struct cli *cli, int argc, char **argv, int wait)
{
	if (argc != 1)
		return usage_error("%s needs exactly one TASK_ID", wait ? "wait" : "status");
	aiq_client *c = NULL;
	int rc = connect_client(&c, cli, NEED_STORE);
	if (rc)
		return rc;
	aiq_result *r = NULL;
	int64_t ms = cli->timeout_s < 0 ? -1 : (int64_t)llround(cli->timeout_s * 1000);
	rc = wait ? aiq_client_wait(&r, c, argv[0], ms) : aiq_client_get_result(&r, c, argv[0]);
	int exit_code = 0;
	if (r)
		print_result(cli, r);
	if (rc == AIQ_ETIMEDOUT) {
		fprintf(stderr, "aiqueue: timed out waiting for %s\n", argv[0]);
		exit_code = EXIT_TIMEOUT;
	} else if (rc != AIQ_OK) {
		exit_code = fail(rc, wait ? "wait" : "status");
	} else if (wait && aiq_result_state(r) != AIQ_STATE_SUCCESS) {
		exit_code = EXIT_FAIL;
	}
	aiq_result_free(r);
	aiq_client_free(c);
	return exit_code;
}

static int cmd_revoke(struct cli *cli, int argc, char **argv)
{
	if (argc != 1)
		return usage_error("revoke needs exactly one TASK_ID");
	aiq_client *c = NULL;
	int rc = connect_client(&c, cli, NEED_STORE);
	if (rc)
		return rc;
	rc = aiq_client_revoke(c, argv[0]);
	aiq_client_free(c);
	if (rc != AIQ_OK)
		return fail(rc, "revoke");
	if (cli->json)
		print_json(json_pack("{ssss}", "task_id", argv[0], "state", "REVOKED"));
	else
		printf("%s REVOKED\n", argv[0]);
	return 0;
}

static int cmd_queue(struct cli *cli, int argc, char **argv, int purge)
{
	if (argc > 1)
		return usage_error("%s takes at most one QUEUE", purge ? "purge" : "inspect");
	char *queue = NULL;
	if (argc == 1)
		queue = strdup(argv[0]);
	else
		aiq_config_get(&queue, cli->cfg, "queue");
	if (queue == NULL)
		return EXIT_FAIL;
	aiq_client *c = NULL;
	int rc = connect_client(&c, cli, NEED_BROKER);
	if (rc) {
		free(queue);
		return rc;
	}
	uint64_t n = 0, dead = 0;
	char dead_name[512];
	snprintf(dead_name, sizeof dead_name, "%s.dead", queue);
	if (purge) {
		rc = aiq_client_purge(&n, c, queue);
		if (rc == AIQ_OK && cli->json)
			print_json(json_pack("{sssI}", "queue", queue, "removed", (json_int_t)n));
		else if (rc == AIQ_OK)
			printf("purged %llu message%s from %s\n", (unsigned long long)n,
			       n == 1 ? "" : "s", queue);
	} else {
		rc = aiq_client_queue_depth(&n, c, queue);
		if (rc == AIQ_OK)
			rc = aiq_client_queue_depth(&dead, c, dead_name);
		if (rc == AIQ_OK && cli->json)
			print_json(json_pack("{sssIsssI}", "queue", queue, "ready", (json_int_t)n,
			                     "dead_letter_queue", dead_name, "dead",
			                     (json_int_t)dead));
		else if (rc == AIQ_OK)
			printf("%-30s %llu ready\n%-30s %llu dead\n", queue, (unsigned long long)n,
			       dead_name, (unsigned long long)dead);
	}
	aiq_client_free(c);
	free(queue);
	return rc == AIQ_OK ? 0 : fail(rc, purge ? "purge" : "inspect");
}

/* UNIX seconds, or an ISO-8601 time with any UTC offset (the library's parser). */
static int parse_eta(aiq_enqueue_opts *o, const char *text)
{
	double secs;
	if (prog_parse_seconds(&secs, text, 1e11) == 0)
		return aiq_enqueue_opts_set_eta_ms(o, (int64_t)llround(secs * 1000));
	int64_t us = 0;
	if (aiq_time_parse_iso8601(&us, text) != AIQ_OK || us < 0)
		return -1;
	return aiq_enqueue_opts_set_eta_ms(o, us / 1000);
}

enum {
	O_BROKER = 256,
	O_BACKEND,
	O_JSON,
	O_FILE,
	O_LYRICS,
	O_TIMEOUT,
	O_COUNTDOWN,
	O_ETA,
	O_EXPIRES,
	O_PRIORITY,
	O_QUEUE,
	O_MAX_RETRIES,
	O_TASK_ID,
	O_HELP,
	O_VERSION
};

/* What a valid value of each option looks like, for the usage error. */
static const char *option_hint(int opt)
{
	switch (opt) {
	case O_TIMEOUT:
	case O_COUNTDOWN: return "expected " PROG_DURATION_HINT;
	case O_EXPIRES: return "expected more than 0 " PROG_DURATION_HINT;
	case O_ETA:
		return "expected an ISO-8601 time such as 2030-01-02T03:04:05Z or "
		       "2030-01-02T05:04:05+02:00, or UNIX seconds";
	case O_PRIORITY: return "expected an integer 0-255";
	case O_MAX_RETRIES: return "expected an integer >= 0";
	case O_TASK_ID: return "expected 1-155 printable characters";
	case O_QUEUE: return "expected 1-255 printable characters";
	default: return aiq_error_last();
	}
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	        {"broker", required_argument, NULL, O_BROKER},
	        {"backend", required_argument, NULL, O_BACKEND},
	        {"result-backend", required_argument, NULL, O_BACKEND},
	        {"json", no_argument, NULL, O_JSON},
	        {"file", required_argument, NULL, O_FILE},
	        {"lyrics", no_argument, NULL, O_LYRICS},
	        {"timeout", required_argument, NULL, O_TIMEOUT},
	        {"countdown", required_argument, NULL, O_COUNTDOWN},
	        {"eta", required_argument, NULL, O_ETA},
	        {"expires", required_argument, NULL, O_EXPIRES},
	        {"priority", required_argument, NULL, O_PRIORITY},
	        {"queue", required_argument, NULL, O_QUEUE},
	        {"max-retries", required_argument, NULL, O_MAX_RETRIES},
	        {"task-id", required_argument, NULL, O_TASK_ID},
	        {"help", no_argument, NULL, O_HELP},
	        {"version", no_argument, NULL, O_VERSION},
	        {NULL, 0, NULL, 0},
	};
	struct cli cli = {.timeout_s = -1};
	int rc = EXIT_USAGE, help = 0;
	if (aiq_config_new(&cli.cfg) != AIQ_OK || aiq_enqueue_opts_new(&cli.opts) != AIQ_OK)
		return EXIT_FAIL;
	aiq_log_set_handler(prog_log_library, NULL, NULL);
	prog_log_init("aiqueue", AIQ_LOG_WARNING);
	if (aiq_config_load_env(cli.cfg) != AIQ_OK) {
		rc = usage_error("bad environment: %s", aiq_error_last());
		goto out;
	}
	int c;
	long long n;
	double d;
	const char *enqueue_only = NULL;
	opterr = 0;
	int li;
	while ((li = -1, c = getopt_long(argc, argv, ":b:", longopts, &li)) != -1) {
		int bad = 0;
		if (c == 'b') /* -b is --broker, as for aiqueue-worker and celery */
			c = O_BROKER, li = 0;
		switch (c) {
		case O_BROKER: bad = aiq_config_set(cli.cfg, "broker.url", optarg); break;
		case O_BACKEND: bad = aiq_config_set(cli.cfg, "result.url", optarg); break;
		case O_JSON: cli.json = 1; break;
		case O_FILE:
			cli.file = optarg;
			enqueue_only = "--file";
			break;
		case O_LYRICS:
			cli.lyrics = 1;
			enqueue_only = "--lyrics";
			break;
		case O_TIMEOUT: bad = prog_parse_duration(&cli.timeout_s, optarg, 1e9); break;
		case O_COUNTDOWN:
			bad = prog_parse_duration(&d, optarg, 1e9) ||
			      aiq_enqueue_opts_set_countdown_ms(cli.opts,
			                                        (int64_t)llround(d * 1000));
			enqueue_only = "--countdown";
			break;
		case O_ETA:
			bad = parse_eta(cli.opts, optarg);
			enqueue_only = "--eta";
			break;
		case O_EXPIRES:
			bad = prog_parse_duration(&d, optarg, 1e9) || d <= 0 ||
			      aiq_enqueue_opts_set_expires_ms(cli.opts, (int64_t)llround(d * 1000));
			enqueue_only = "--expires";
			break;
		case O_PRIORITY:
			bad = prog_parse_int(&n, optarg, 0, 255) ||
			      aiq_enqueue_opts_set_priority(cli.opts, (int)n);
			enqueue_only = "--priority";
			break;
		case O_QUEUE:
			bad = aiq_enqueue_opts_set_queue(cli.opts, optarg) ||
			      aiq_config_set(cli.cfg, "queue", optarg);
			break;
		case O_MAX_RETRIES:
			bad = prog_parse_int(&n, optarg, 0, 1000000) ||
			      aiq_enqueue_opts_set_max_retries(cli.opts, (int)n);
			enqueue_only = "--max-retries";
			break;
		case O_TASK_ID:
			bad = aiq_enqueue_opts_set_task_id(cli.opts, optarg);
			enqueue_only = "--task-id";
			break;
		case O_HELP: help = 1; break;
		case O_VERSION:
			printf("aiqueue %s\n", aiq_version_string());
			rc = 0;
			goto out;
		default: rc = prog_option_error("aiqueue", c, argv[optind - 1]); goto out;
		}
		if (bad) {
			rc = usage_error("invalid value '%s' for --%s%s%s", optarg,
			                 li >= 0 ? longopts[li].name : "?", li >= 0 ? ": " : "",
			                 li >= 0 ? option_hint(longopts[li].val) : "");
			goto out;
		}
	}
	const char *cmd = optind < argc ? argv[optind] : NULL;
	if (help) {
		for (size_t i = 0; cmd && i < sizeof command_help / sizeof command_help[0]; i++)
			if (strcmp(cmd, command_help[i][0]) == 0) {
				fputs(command_help[i][1], stdout);
				rc = 0;
				goto out;
			}
		usage(stdout);
		rc = cmd ? usage_error("unknown command '%s'", cmd) : 0;
		goto out;
	}
	if (cmd == NULL) {
		usage(stderr);
		goto out;
	}
	int cargc = argc - optind - 1;
	char **cargv = argv + optind + 1;
	if (enqueue_only && strcmp(cmd, "enqueue") != 0) {
		rc = usage_error("%s applies to enqueue only", enqueue_only);
		goto out;
	}
	if (cli.timeout_s >= 0 && strcmp(cmd, "wait") != 0) {
		rc = usage_error("--timeout applies to wait only");
		goto out;
	}
	if (strcmp(cmd, "enqueue") == 0)
		rc = cmd_enqueue(&cli, cargc, cargv);
	else if (strcmp(cmd, "status") == 0)
		rc = cmd_status_wait(&cli, cargc, cargv, 0);
	else if (strcmp(cmd, "wait") == 0)
		rc = cmd_status_wait(&cli, cargc, cargv, 1);
	else if (strcmp(cmd, "revoke") == 0)
		rc = cmd_revoke(&cli, cargc, cargv);
	else if (strcmp(cmd, "purge") == 0)
		rc = cmd_queue(&cli, cargc, cargv, 1);
	else if (strcmp(cmd, "inspect") == 0)
		rc = cmd_queue(&cli, cargc, cargv, 0);
	else
		rc = usage_error("unknown command '%s'", cmd);
out:
	aiq_enqueue_opts_free(cli.opts);
	aiq_config_free(cli.cfg);
	return rc;
}
