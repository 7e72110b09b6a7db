/*
 * aiqueue-beat: the periodic scheduler (Celery beat's counterpart).
 *
 *   aiqueue-beat --schedule FILE [--broker URL] [--coord URL] [-c CONFIG] ...
 *
 * Sends the schedule's tasks at their times. Several instances may run
 * against one Redis: one leads and sends, the others wait to take over.
 * SIGTERM or SIGINT stops cleanly (a leader hands its lease over). See
 * docs/programs.md for flags and exit codes.
 */
#include "../common/progutil.h"

#include <aiqueue/aiqueue.h>
#include <ctype.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };
enum { OPT_BACKEND = 1000, OPT_COORD, OPT_TZ, OPT_LEASE, OPT_CATCHUP, OPT_NAME };

static aiq_beat *g_beat;

static void on_signal(int sig)
{
	(void)sig;
	static const char msg[] = "aiqueue-beat: stopping\n";
	ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
	(void)w;
	aiq_beat_stop(g_beat); /* async-signal-safe */
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: aiqueue-beat [options]\n"
	        "\n"
	        "Send periodic tasks on a schedule (Celery's beat_schedule shape in JSON).\n"
	        "Several instances may run against one Redis: exactly one sends each slot.\n"
	        "\n"
	        "  -s, --schedule FILE     the schedule (JSON) [AIQUEUE_BEAT_SCHEDULE]\n"
	        "  -b, --broker URL        broker (default memory://) [AIQUEUE_BROKER_URL,\n"
	        "                          CELERY_BROKER_URL]\n"
	        "      --backend URL       result store (default memory://) [AIQUEUE_RESULT_URL]\n"
	        "      --coord URL         Redis or postgresql:// for the lease and state\n"
	        "                          (default: the result store's or the broker's Redis)\n"
	        "                          [AIQUEUE_BEAT_URL]\n"
	        "      --timezone ZONE     wall clock of crontab entries (default UTC)\n"
	        "                          [AIQUEUE_BEAT_TIMEZONE]\n"
	        "      --lease SECONDS     leader lease (default 5s) [AIQUEUE_BEAT_LEASE_MS]\n"
	        "      --catchup SECONDS   send missed slots at most this old (default 300)\n"
	        "                          [AIQUEUE_BEAT_CATCHUP_S]\n"
	        "      --name NAME         schedule name: instances with one name share a\n"
	        "                          leader (default 'default') [AIQUEUE_BEAT_NAME]\n"
	        "  -c, --config FILE       configuration keys, one 'key = value' a line\n"
	        "                          (# comments); flags given after it win\n"
	        "  -l, --loglevel LEVEL    debug, info, warning, error (default info)\n"
	        "      --check             load the schedule, print its entries, and exit\n"
	        "      --help, --version\n"
	        "\n"
	        "SECONDS: " PROG_DURATION_HINT ".\n"
	        "Other configuration keys come from AIQUEUE_<KEY> (docs/configuration.md).\n"
	        "Signals: SIGTERM or Ctrl-C stops; a leader hands its lease over at once.\n"
	        "Exit codes: 0 clean stop, 1 runtime error, 2 usage error (a bad schedule\n"
	        "file, configuration or URL).\n");
}

#define usage_error(...) prog_usage_error("aiqueue-beat", __VA_ARGS__)

/* "key = value" lines; blank lines and '#' comments skipped. */
static int load_config_file(aiq_config *cfg, const char *path)
{
	char *text = prog_read_file(path, NULL, 1 << 20);
	if (text == NULL)
		return usage_error("cannot read the configuration file %s", path);
	int line = 0, rc = 0;
	for (char *l = text, *next; l && rc == 0; l = next) {
		/* By hand, not strtok: blank lines count for the line numbers. */
		if ((next = strchr(l, '\n')) != NULL)
			*next++ = '\0';
		line++;
		while (isspace((unsigned char)*l))
			l++;
		if (*l == '\0' || *l == '#')
			continue;
		char *eq = strchr(l, '=');
		if (eq == NULL) {
			rc = usage_error("%s:%d: expected 'key = value'", path, line);
			break;
		}
		char *k_end = eq;
		while (k_end > l && isspace((unsigned char)k_end[-1]))
			k_end--;
		*k_end = '\0';
		char *v = eq + 1;
		while (isspace((unsigned char)*v))
			v++;
		size_t n = strlen(v);
		while (n > 0 && isspace((unsigned char)v[n - 1]))
			v[--n] = '\0';
		if (aiq_config_set(cfg, l, v) != AIQ_OK)
			rc = usage_error("%s:%d: %s", path, line, aiq_error_last());
	}
	free(text);
	return rc;
}

static int set_seconds(aiq_config *cfg, const char *flag, const char *key, const char *text,
                       double scale)
{
	double secs;
	char buf[32];
	if (prog_parse_duration(&secs, text, 31 * 86400.0) != 0)
		return usage_error("--%s expects " PROG_DURATION_HINT, flag);
	snprintf(buf, sizeof buf, "%lld", (long long)(secs * scale + 0.5));
	if (aiq_config_set(cfg, key, buf) != AIQ_OK)
		return usage_error("invalid value for --%s: %s", flag, aiq_error_last());
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	        {"schedule", required_argument, NULL, 's'},
	        {"broker", required_argument, NULL, 'b'},
	        {"backend", required_argument, NULL, OPT_BACKEND},
	        {"result-backend", required_argument, NULL, OPT_BACKEND},
	        {"coord", required_argument, NULL, OPT_COORD},
	        {"timezone", required_argument, NULL, OPT_TZ},
	        {"lease", required_argument, NULL, OPT_LEASE},
	        {"catchup", required_argument, NULL, OPT_CATCHUP},
	        {"name", required_argument, NULL, OPT_NAME},
	        {"config", required_argument, NULL, 'c'},
	        {"loglevel", required_argument, NULL, 'l'},
	        {"log-level", required_argument, NULL, 'l'},
	        {"check", no_argument, NULL, 'k'},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, 'V'},
	        {NULL, 0, NULL, 0},
	};
	aiq_config *cfg = NULL;
	if (aiq_config_new(&cfg) != AIQ_OK)
		return EXIT_RUNTIME;
	int rc = EXIT_USAGE, level = AIQ_LOG_INFO, c;
	bool check = false;
	if (aiq_config_load_env(cfg) != AIQ_OK) {
		usage_error("bad environment: %s", aiq_error_last());
		goto out;
	}
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":s:b:c:l:", longopts, NULL)) != -1) {
		const char *key = NULL;
		switch (c) {
		case 's': key = "beat.schedule"; break;
		case 'b': key = "broker.url"; break;
		case OPT_BACKEND: key = "result.url"; break;
		case OPT_COORD: key = "beat.url"; break;
		case OPT_TZ: key = "beat.timezone"; break;
		case OPT_NAME: key = "beat.name"; break;
		case OPT_LEASE:
			if (set_seconds(cfg, "lease", "beat.lease_ms", optarg, 1000) != 0)
				goto out;
			break;
		case OPT_CATCHUP:
			if (set_seconds(cfg, "catchup", "beat.catchup_s", optarg, 1) != 0)
				goto out;
			break;
		case 'c':
			if (load_config_file(cfg, optarg) != 0)
				goto out;
			break;
		case 'l':
			if ((level = aiq_log_level_from_name(optarg)) < 0) {
				usage_error("unknown log level '%s'", optarg);
				goto out;
			}
			break;
		case 'k': check = true; break;
		case 'h':
			usage(stdout);
			rc = 0;
			goto out;
		case 'V':
			printf("aiqueue-beat %s\n", aiq_version_string());
			rc = 0;
			goto out;
		default: prog_option_error("aiqueue-beat", c, argv[optind - 1]); goto out;
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
	prog_log_init("aiqueue-beat", level);
	aiq_log_set_level(level);
	aiq_log_set_handler(prog_log_library, NULL, NULL);

	if (prog_check_urls(cfg) != 0)
		goto out;
	{
		char *url = NULL;
		aiq_config_get(&url, cfg, "broker.url");
		int memory = url && strncmp(url, "memory:", 7) == 0;
		aiq_free(url);
		if (memory && !check) /* no worker shares this process (aiqueue-worker -B does) */
			prog_log(AIQ_LOG_WARNING, "startup",
			         "broker.url is memory://: the tasks stay in this process and no "
			         "worker sees them; give --broker");
	}
	int r = aiq_beat_new(&g_beat, cfg);
	if (r != AIQ_OK) {
		prog_log(AIQ_LOG_ERROR, "startup", "%s: %s", aiq_strerror(r), aiq_error_last());
		rc = r == AIQ_EINVAL || r == AIQ_EUNSUPPORTED ? EXIT_USAGE : EXIT_RUNTIME;
		goto out;
	}
	if (aiq_beat_entry_count(g_beat) == 0) {
		usage_error("no entries: give a schedule with --schedule FILE");
		goto out;
	}
	if (check) {
		printf("%zu entries: the schedule is valid\n", aiq_beat_entry_count(g_beat));
		rc = 0;
		goto out;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	prog_log(AIQ_LOG_INFO, "beat.ready", "%zu entries", aiq_beat_entry_count(g_beat));
	r = aiq_beat_run(g_beat);
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	if (r == AIQ_OK) {
		prog_log(AIQ_LOG_INFO, "beat.stopped", "clean stop, %llu task(s) sent",
		         (unsigned long long)aiq_beat_sent_count(g_beat));
		rc = 0;
	} else {
		prog_log(AIQ_LOG_ERROR, "beat.stopped", "%s: %s", aiq_strerror(r),
		         aiq_error_last());
		rc = r == AIQ_EUNSUPPORTED ? EXIT_USAGE : EXIT_RUNTIME;
	}
out:
	aiq_beat_free(g_beat);
	g_beat = NULL;
	aiq_config_free(cfg);
	return rc;
}
