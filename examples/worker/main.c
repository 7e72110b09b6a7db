/*
 * aiqueue-worker: the worker daemon.
 *
 *   aiqueue-worker [--broker URL] [--backend URL] [--queues A,B] [--concurrency N] ...
 *
 * Consumes the queues, runs the built-in analysis task (and whatever plugins
 * register), logs one line per task event. SIGTERM or a first SIGINT stops
 * gracefully (in-flight tasks finish); a second SIGINT aborts (unfinished
 * tasks go back to the broker). See docs/programs.md for flags and exit codes.
 */
#include "../common/progutil.h"
#ifdef AIQ_WORKER_METRICS
#include "metrics.h"
#endif

#include <aiqueue/aiqueue.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };
/* Long options without a short letter. */
enum { OPT_PLUGIN = 1000, OPT_MAX_TASKS, OPT_MAX_MEMORY, OPT_BACKEND, OPT_SCHEDULE };

static aiq_worker *g_worker;
static aiq_beat *g_beat; /* -B: the periodic scheduler on a thread of its own */

static void *beat_thread(void *b)
{
	if (aiq_beat_run(b) != AIQ_OK)
		prog_log(AIQ_LOG_ERROR, "beat.stopped", "%s", aiq_error_last());
	return NULL;
}

/* The log line of every task event, and the metrics when they are served. */
static void on_worker_event(int event, const char *task_id, const char *task_name,
                            const char *detail, void *userdata)
{
	prog_log_worker_event(event, task_id, task_name, detail, userdata);
#ifdef AIQ_WORKER_METRICS
	worker_metrics_event(event, task_id, task_name);
#endif
}
static volatile sig_atomic_t g_stops;

static void on_signal(int sig)
{
	/* SIGTERM asks once (a second SIGTERM does not abort); every SIGINT counts. */
	if (sig == SIGTERM && g_stops > 0)
		return;
	g_stops++;
	static const char graceful[] = "aiqueue-worker: stopping: finishing in-flight tasks "
	                               "(press Ctrl-C again to abort)\n";
	static const char abort_msg[] = "aiqueue-worker: aborting: unfinished tasks go back to "
	                                "the broker\n";
	ssize_t w = g_stops == 1 ? write(STDERR_FILENO, graceful, sizeof graceful - 1)
	                         : write(STDERR_FILENO, abort_msg, sizeof abort_msg - 1);
	(void)w;
	aiq_worker_stop(g_worker); /* async-signal-safe */
	aiq_beat_stop(g_beat);     /* async-signal-safe, NULL is a no-op */
}

static void on_late_signal(int sig)
{
	(void)sig;
	_exit(EXIT_RUNTIME);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: aiqueue-worker [options]\n"
	        "\n"
	        "Consume task queues and run tasks (the built-in tasks.analyze_track with the\n"
	        "lyrics analyzer, plus what plugins register).\n"
	        "\n"
	        "  -b, --broker URL        broker (default memory://) [AIQUEUE_BROKER_URL,\n"
	        "                          CELERY_BROKER_URL]\n"
	        "      --backend URL       result store (default memory://) [AIQUEUE_RESULT_URL,\n"
	        "                          CELERY_RESULT_BACKEND]; --result-backend also works\n"
	        "      --archive URL       also write every final state here, e.g. a\n"
	        "                          postgresql:// archive [AIQUEUE_ARCHIVE_URL]\n"
	        "  -Q, --queues A,B        queues to consume (default: the 'queue' key, celery)\n"
	        "                          [AIQUEUE_WORKER_QUEUES]; --queue also works\n"
	        "  -c, --concurrency N     pool threads or processes (default: number of CPUs)\n"
	        "                          [AIQUEUE_WORKER_CONCURRENCY]; aiqueue-server takes\n"
	        "                          the same flag for its embedded worker\n"
	        "  -P, --pool KIND         threads (default) or processes: handlers run in\n"
	        "                          forked child processes, so a crashing plugin fails\n"
	        "                          only its task (WorkerLostError) [AIQUEUE_WORKER_POOL]\n"
	        "      --max-tasks-per-child N   processes: replace a child after N tasks\n"
	        "      --max-memory-per-child KIB  processes: replace a child past this resident\n"
	        "                          size (KiB), and kill one that grows past it in a task\n"
	        "      --time-limit SECONDS  hard time limit of tasks that set none (default\n"
	        "                          none) [AIQUEUE_TASK_TIME_LIMIT_MS, milliseconds]\n"
	        "      --soft-time-limit SECONDS  soft limit: the task is asked to stop\n"
	        "                          [AIQUEUE_TASK_SOFT_TIME_LIMIT_MS, milliseconds]\n"
	        "      --prefetch N        max unacknowledged deliveries (default 4 x "
	        "concurrency)\n"
	        "                          [AIQUEUE_WORKER_PREFETCH]\n"
	        "  -n, --hostname NAME     worker name (default aiq<pid>@<host>)\n"
	        "                          [AIQUEUE_WORKER_HOSTNAME]\n"
	        "      --metrics-port PORT serve Prometheus metrics at http://HOST:PORT/metrics\n"
	        "                          (default: none) [AIQUEUE_WORKER_METRICS_PORT]\n"
	        "      --metrics-host HOST the address for --metrics-port (default 0.0.0.0)\n"
	        "  -E, --task-events       send Celery events (celery events, Flower)\n"
	        "                          [AIQUEUE_WORKER_SEND_EVENTS]\n"
	        "      --remote-control    answer celery inspect/status/control\n"
	        "                          [AIQUEUE_WORKER_REMOTE_CONTROL]\n"
	        "      --plugin PATH       load an analyzer plugin (.so); repeatable\n"
	        "  -B, --beat              also run the periodic scheduler (aiqueue-beat) with\n"
	        "                          --schedule FILE [AIQUEUE_BEAT_SCHEDULE]\n"
	        "  -l, --loglevel LEVEL    debug, info, warning, error (default info);\n"
	        "                          --log-level is the same flag\n"
	        "      --help, --version\n"
	        "\n"
	        "SECONDS: seconds as in Celery (2.5), or with a unit: 500ms, 30s, 2m, 1h.\n"
	        "The AIQUEUE_*_MS variables and the C API take milliseconds.\n"
	        "Other configuration keys come from AIQUEUE_<KEY> (docs/configuration.md).\n"
	        "Signals: SIGTERM or Ctrl-C finishes in-flight tasks and exits; Ctrl-C twice "
	        "aborts.\n"
	        "Exit codes: 0 clean stop, 1 runtime error or aborted, 2 usage error (also a\n"
	        "URL scheme this build cannot open), 3 could not connect to the broker or\n"
	        "result store.\n");
}

#define usage_error(...) prog_usage_error("aiqueue-worker", __VA_ARGS__)

static char *get_key(const aiq_config *cfg, const char *key)
{
	char *v = NULL;
	aiq_config_get(&v, cfg, key);
	return v;
}

/* A URL fit to print: the library's redactor, or nothing at all. */
static char *redacted(const char *url)
{
	char *out = NULL;
	if (url == NULL || aiq_url_redact(&out, url) != AIQ_OK) {
		aiq_free(out);
		out = NULL;
		aiq_url_redact(&out, "(unprintable)");
	}
	return out;
}

static void banner(const aiq_config *cfg, const char **plugins, int nplugins)
{
	char *broker = get_key(cfg, "broker.url"), *store = get_key(cfg, "result.url");
	char *archive = get_key(cfg, "archive.url");
	char *queues = get_key(cfg, "worker.queues"), *queue = get_key(cfg, "queue");
	char *host = get_key(cfg, "worker.hostname"), *task = get_key(cfg, "analyze.task_name");
	char *analyzer = get_key(cfg, "analyze.default_analyzer");
	int64_t conc = 0, prefetch = 0;
	char *pool = get_key(cfg, "worker.pool");
	bool processes = pool && strcmp(pool, "threads") != 0;
	aiq_free(pool);
	aiq_config_get_int(&conc, cfg, "worker.concurrency");
	aiq_config_get_int(&prefetch, cfg, "worker.prefetch");
	if (conc == 0) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);
		conc = cpus > 0 ? cpus : 1;
	}
	/* Milliseconds, as the keys hold them: --time-limit 2.5 shows 2500 ms. */
	int64_t soft_ms = 0, hard_ms = 0;
	aiq_config_get_int(&soft_ms, cfg, "task.soft_time_limit_ms");
	aiq_config_get_int(&hard_ms, cfg, "task.time_limit_ms");
	char limits[96] = "none";
	if (soft_ms || hard_ms)
		snprintf(limits, sizeof limits, "soft %lld ms, hard %lld ms", (long long)soft_ms,
		         (long long)hard_ms);
	char *rb = redacted(broker), *rs = redacted(store);
	char *ra = archive && *archive ? redacted(archive) : NULL;
	char hn[256];
	if (host == NULL || *host == '\0') {
		char h[200] = "localhost";
		gethostname(h, sizeof h - 1);
		snprintf(hn, sizeof hn, "aiq%ld@%s", (long)getpid(), h);
	} else {
		snprintf(hn, sizeof hn, "%s", host);
	}
	printf(" -------------- %s v%s\n"
	       "--- ***** -----\n"
	       "-- ******* ---- [config]\n"
	       "- *** --- * --- .> broker:      %s\n"
	       "- ** ---------- .> store:       %s%s%s\n"
	       "- ** ---------- .> concurrency: %lld (%s), prefetch %lld\n"
	       "- *** --- * --- .> queues:      %s\n"
	       "- ** ---------- .> time limits: %s\n"
	       "-- ******* ----\n"
	       "--- ***** -----\n"
	       "\n[tasks]\n  . %s\n\n[analyzers]\n  . lyrics%s\n",
	       hn, aiq_version_string(), rb, rs, ra ? " + " : "", ra ? ra : "", (long long)conc,
	       processes ? "processes" : "threads", (long long)(prefetch ? prefetch : 4 * conc),
	       queues && *queues ? queues : (queue ? queue : "celery"), limits, task ? task : "?",
	       analyzer && strcmp(analyzer, "lyrics") != 0 ? "" : " (default)");
	if (analyzer && strcmp(analyzer, "lyrics") != 0)
		printf("  . %s (default)\n", analyzer);
	for (int i = 0; i < nplugins; i++)
		printf("  . plugin %s\n", plugins[i]);
	printf("\n");
	fflush(stdout);
	aiq_free(rb);
	aiq_free(rs);
	aiq_free(ra);
	aiq_free(broker);
	aiq_free(store);
	aiq_free(archive);
	aiq_free(queues);
	aiq_free(queue);
	aiq_free(host);
	aiq_free(task);
	aiq_free(analyzer);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	        {"broker", required_argument, NULL, 'b'},
	        {"backend", required_argument, NULL, OPT_BACKEND},
	        {"result-backend", required_argument, NULL, OPT_BACKEND},
	        {"beat", no_argument, NULL, 'B'},
	        {"schedule", required_argument, NULL, OPT_SCHEDULE},
	        {"archive", required_argument, NULL, 'A'},
	        {"queues", required_argument, NULL, 'Q'},
	        {"queue", required_argument, NULL, 'Q'},
	        {"concurrency", required_argument, NULL, 'c'},
	        {"prefetch", required_argument, NULL, 'p'},
	        {"time-limit", required_argument, NULL, 'T'},
	        {"soft-time-limit", required_argument, NULL, 'S'},
	        {"hostname", required_argument, NULL, 'n'},
	        {"pool", required_argument, NULL, 'P'},
	        {"max-tasks-per-child", required_argument, NULL, OPT_MAX_TASKS},
	        {"max-memory-per-child", required_argument, NULL, OPT_MAX_MEMORY},
	        {"task-events", no_argument, NULL, 'E'},
	        {"remote-control", no_argument, NULL, 'R'},
	        {"metrics-port", required_argument, NULL, 'M'},
	        {"metrics-host", required_argument, NULL, 'H'},
	        {"plugin", required_argument, NULL, OPT_PLUGIN},
	        {"loglevel", required_argument, NULL, 'l'},
	        {"log-level", required_argument, NULL, 'l'},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, 'V'},
	        {NULL, 0, NULL, 0},
	};
	aiq_config *cfg = NULL;
	if (aiq_config_new(&cfg) != AIQ_OK)
		return EXIT_RUNTIME;
	int rc = EXIT_USAGE;
	const char **plugins = calloc((size_t)argc + 1, sizeof *plugins);
	int nplugins = 0, level = AIQ_LOG_INFO, beat = 0;
	pthread_t beat_th = 0;
	unsigned metrics_port = 0;
	const char *metrics_host = "0.0.0.0";
	if (plugins == NULL)
		goto out;
	if (aiq_config_load_env(cfg) != AIQ_OK) {
		usage_error("bad environment: %s", aiq_error_last());
		goto out;
	}
	int c;
	long long n;
	double secs;
	char ms_text[32];
	const char *env_port = getenv("AIQUEUE_WORKER_METRICS_PORT");
	if (env_port && *env_port) {
		if (prog_parse_int(&n, env_port, 1, 65535) != 0) {
			usage_error("AIQUEUE_WORKER_METRICS_PORT expects a port number (1-65535)");
			goto out;
		}
		metrics_port = (unsigned)n;
	}
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":b:Q:c:n:l:P:EB", longopts, NULL)) != -1) {
		const char *key = NULL;
		switch (c) {
		case 'b': key = "broker.url"; break;
		case OPT_BACKEND: key = "result.url"; break;
		case 'B': beat = 1; break;
		case OPT_SCHEDULE: key = "beat.schedule"; break;
		case 'A': key = "archive.url"; break;
		case 'Q': key = "worker.queues"; break;
		case 'n': key = "worker.hostname"; break;
		case 'E': key = "worker.send_events", optarg = (char *)"true"; break;
		case 'R': key = "worker.remote_control", optarg = (char *)"true"; break;
		case 'c':
		case 'p':
			if (prog_parse_int(&n, optarg, c == 'c' ? 1 : 0, 1000000) != 0) {
				usage_error("--%s expects a %s number",
				            c == 'c' ? "concurrency" : "prefetch",
				            c == 'c' ? "positive" : "non-negative");
				goto out;
			}
			key = c == 'c' ? "worker.concurrency" : "worker.prefetch";
			break;
		case 'T':
		case 'S':
			/* Seconds on the command line, as Celery's; milliseconds in the key. */
			if (prog_parse_duration(&secs, optarg, 7 * 24 * 3600.0) != 0) {
				usage_error("--%s expects " PROG_DURATION_HINT " (at most 7 days)",
				            c == 'T' ? "time-limit" : "soft-time-limit");
				goto out;
			}
			snprintf(ms_text, sizeof ms_text, "%lld", (long long)llround(secs * 1000));
			key = c == 'T' ? "task.time_limit_ms" : "task.soft_time_limit_ms";
			optarg = ms_text;
			break;
		case 'P': key = "worker.pool"; break;
		case OPT_MAX_TASKS: key = "worker.max_tasks_per_child"; break;
		case OPT_MAX_MEMORY: key = "worker.max_memory_per_child"; break;
		case OPT_PLUGIN: plugins[nplugins++] = optarg; break;
		case 'M':
			if (prog_parse_int(&n, optarg, 1, 65535) != 0) {
				usage_error("--metrics-port expects a port number (1-65535)");
				goto out;
			}
			metrics_port = (unsigned)n;
			break;
		case 'H': metrics_host = optarg; break;
		case 'l':
			if ((level = aiq_log_level_from_name(optarg)) < 0) {
				usage_error("unknown log level '%s'", optarg);
				goto out;
			}
			break;
		case 'h':
			usage(stdout);
			rc = 0;
			goto out;
		case 'V':
			printf("aiqueue-worker %s\n", aiq_version_string());
			rc = 0;
			goto out;
		default: prog_option_error("aiqueue-worker", c, argv[optind - 1]); goto out;
		}
		if (key && aiq_config_set(cfg, key, optarg) != AIQ_OK) {
			usage_error("invalid value for %s: %s", key, aiq_error_last());
			goto out;
		}
	}
	if (optind < argc) {
		usage_error("unexpected argument '%s'", argv[optind]);
		goto out;
	}

	prog_log_init("aiqueue-worker", level);
	aiq_log_set_level(level);
	aiq_log_set_handler(prog_log_library, NULL, NULL);

	if (prog_check_urls(cfg) != 0) {
		rc = EXIT_USAGE;
		goto out;
	}
	rc = aiq_worker_new(&g_worker, cfg);
	if (rc != AIQ_OK) {
		prog_log(AIQ_LOG_ERROR, "startup", "%s: %s", aiq_strerror(rc), aiq_error_last());
		rc = rc == AIQ_EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
		goto out;
	}
	aiq_worker_on_event(g_worker, on_worker_event, NULL, NULL);
	if (beat &&
	    ((rc = aiq_beat_new(&g_beat, cfg)) != AIQ_OK || !aiq_beat_entry_count(g_beat))) {
		prog_log(AIQ_LOG_ERROR, "startup", "beat: %s",
		         rc ? aiq_error_last() : "-B needs --schedule FILE");
		rc = EXIT_USAGE;
		goto out;
	}
	if (metrics_port) {
#ifdef AIQ_WORKER_METRICS
		if (worker_metrics_start(g_worker, cfg, metrics_host, metrics_port) != 0) {
			prog_log(AIQ_LOG_ERROR, "metrics", "cannot serve metrics on %s:%u",
			         metrics_host, metrics_port);
			rc = EXIT_RUNTIME;
			goto out;
		}
		prog_log(AIQ_LOG_INFO, "metrics", "serving http://%s:%u/metrics", metrics_host,
		         metrics_port);
#else
		usage_error("--metrics-port: this build has no libmicrohttpd");
		goto out;
#endif
	}
	for (int i = 0; i < nplugins; i++) {
#ifdef AIQ_HAVE_LOAD_PLUGIN
		rc = aiq_worker_load_plugin(g_worker, plugins[i]);
#else
		rc = AIQ_EUNSUPPORTED;
#endif
		if (rc != AIQ_OK) {
			prog_log(AIQ_LOG_ERROR, "plugin", "%s: %s: %s", plugins[i],
			         aiq_strerror(rc), aiq_error_last());
			rc = EXIT_RUNTIME;
			goto out;
		}
		prog_log(AIQ_LOG_INFO, "plugin", "loaded %s", plugins[i]);
	}
	/* Handlers go in before the banner: a stop that arrives early is kept, and
	 * aiq_worker_run() then returns at once. */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	banner(cfg, plugins, nplugins);

	{
		char *url = get_key(cfg, "broker.url");
		char *safe = redacted(url);
		prog_log(AIQ_LOG_INFO, "worker.ready", "consuming from %s", safe ? safe : "?");
		aiq_free(safe);
		aiq_free(url);
	}
	if (g_beat && pthread_create(&beat_th, NULL, beat_thread, g_beat) != 0) {
		prog_log(AIQ_LOG_ERROR, "beat", "cannot start the scheduler's thread");
		aiq_beat_free(g_beat);
		g_beat = NULL;
	}
	int run = aiq_worker_run(g_worker);
	if (g_beat) {
		aiq_beat_stop(g_beat);
		pthread_join(beat_th, NULL);
	}
	switch (run) {
	case AIQ_OK:
		prog_log(AIQ_LOG_INFO, "worker.stopped", "clean stop");
		rc = 0;
		break;
	case AIQ_ECANCELED:
		prog_log(AIQ_LOG_WARNING, "worker.stopped",
		         "aborted: unfinished tasks returned to the broker");
		rc = EXIT_RUNTIME;
		break;
	case AIQ_EBROKER:
	case AIQ_ESTORE:
	case AIQ_EUNSUPPORTED:
		prog_log(AIQ_LOG_ERROR, "worker.stopped", "could not connect: %s: %s",
		         aiq_strerror(run), aiq_worker_error(g_worker));
		rc = EXIT_CONNECT;
		break;
	default:
		prog_log(AIQ_LOG_ERROR, "worker.stopped", "%s: %s", aiq_strerror(run),
		         aiq_worker_error(g_worker));
		rc = EXIT_RUNTIME;
	}
	/* No handler may touch the worker once it is freed: from here a late
	 * SIGTERM is ignored and a late Ctrl-C exits at once. */
	signal(SIGTERM, SIG_IGN);
	sa.sa_handler = on_late_signal;
	sigaction(SIGINT, &sa, NULL);
out:
#ifdef AIQ_WORKER_METRICS
	worker_metrics_stop();
#endif
	aiq_worker_free(g_worker);
	g_worker = NULL;
	aiq_beat_free(g_beat);
	g_beat = NULL;
	aiq_config_free(cfg);
	free(plugins);
	return rc;
}
