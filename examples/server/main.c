/*
 * aiqueue-server: the HTTP API over libmicrohttpd.
 *
 *   aiqueue-server [--listen HOST:PORT] [--broker URL] [--backend URL] [--workers N] ...
 *
 * Requests are parsed on MHD's threads (one epoll thread, or a pool with
 * --threads); those that call the broker or the store are suspended and run on
 * --broker-threads, each borrowing an aiq_client from a pool (aiq_client is not
 * thread-safe), so /healthz never waits on a broker. Long polls
 * (GET /tasks/{id}?wait=S) stay suspended and one watcher thread answers them
 * all. With --workers N one embedded
 * aiq_worker with N pool threads runs in the same process: on the default
 * memory:// broker and store, that is the whole job in one process.
 * See docs/server.md.
 */
#include "server.h"

#include "../common/progutil.h"

#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum { EXIT_USAGE = 2, EXIT_CONNECT = 3 };

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: aiqueue-server [options]\n"
	        "\n"
	        "HTTP API for libaiqueue: POST /analyze, /analyze/batch, /tasks; GET/DELETE\n"
	        "/tasks/{id}; /healthz, /readyz, /metrics, /openapi.json.\n"
	        "\n"
	        "  --listen HOST:PORT   address to listen on (default 127.0.0.1:8000; port 0 "
	        "picks\n"
	        "                       a free port, printed on stdout) [AIQUEUE_LISTEN]\n"
	        "  -b, --broker URL     broker URL (default memory://) [AIQUEUE_BROKER_URL,\n"
	        "                       CELERY_BROKER_URL]\n"
	        "  --backend URL        result store URL (default memory://) [AIQUEUE_RESULT_URL,\n"
	        "                       CELERY_RESULT_BACKEND]; --result-backend also works\n"
	        "  --queue NAME         queue to send to (default celery) [AIQUEUE_QUEUE]\n"
	        "  --threads N          HTTP threads (default: number of CPUs)\n"
	        "  --broker-threads N   threads making broker and store calls (default 16;\n"
	        "                       --wait-threads is an old name)\n"
	        "  -c, --concurrency N  also run an embedded worker with N pool threads, as\n"
	        "                       aiqueue-worker -c N (default 0: none; --workers is the\n"
	        "                       old name)\n"
	        "  --api-token TOKEN    require 'Authorization: Bearer TOKEN' on task routes\n"
	        "                       [AIQUEUE_API_TOKEN; prefer the variable: argv is visible]\n"
	        "  --max-body BYTES     largest request body (default 1048576)\n"
	        "  --max-batch N        most items in POST /analyze/batch (default 1000)\n"
	        "  --max-wait SECONDS   cap on ?wait= (default 30)\n"
	        "  --idle-timeout SECONDS  close idle keep-alive connections (default 30)\n"
	        "  --header-timeout SECONDS  close a connection whose request headers are not\n"
	        "                       all in within this time (default 10)\n"
	        "  --max-connections N  open connections in all (default 1000)\n"
	        "  --max-connections-per-ip N  open connections from one address (default 200)\n"
	        "  --max-long-polls N   ?wait= polls waiting at once; more get 503 (default 500)\n"
	        "  --breaker-cooldown SECONDS  after a broker or store failure, answer 503 at\n"
	        "                       once for this long, then probe (default 5; 0 = off)\n"
	        "  -l, --log-level LEVEL  debug, info, warning or error (default info;\n"
	        "                       --loglevel also works)\n"
	        "  --help, --version\n"
	        "\n"
	        "SECONDS: a number of seconds (2.5), or with a unit: 500ms, 30s, 2m, 1h.\n"
	        "The HTTP API takes seconds too (?wait=, countdown, expires); the C library\n"
	        "and the AIQUEUE_*_MS variables take milliseconds.\n"
	        "Every other configuration key is read from AIQUEUE_<KEY> "
	        "(docs/configuration.md).\n"
	        "Exit codes: 0 clean stop, 1 runtime error, 2 usage error, 3 cannot listen,\n"
	        "4 a broker or backend URL that can never work (scheme unknown or not built "
	        "in).\n");
}

#define usage_error(...) prog_usage_error("aiqueue-server", __VA_ARGS__)

static int set_key(aiq_config *cfg, const char *key, const char *value)
{
	int rc = aiq_config_set(cfg, key, value);
	if (rc != AIQ_OK) {
		char detail[1024];
		scrub_secrets(detail, sizeof detail, aiq_error_last());
		return usage_error("invalid value for %s: %s", key, detail);
	}
	return 0;
}

static int parse_listen(struct server_options *o, const char *text)
{
	const char *colon = strrchr(text, ':');
	if (colon == NULL)
		return -1;
	long long port;
	if (prog_parse_int(&port, colon + 1, 0, 65535) != 0)
		return -1;
	size_t hl = (size_t)(colon - text);
	if (hl >= 2 && text[0] == '[' && text[hl - 1] == ']') {
		text++;
		hl -= 2;
	}
	free(o->listen_host);
	o->listen_host = hl ? strndup(text, hl) : strdup("0.0.0.0");
	o->port = (unsigned)port;
	return o->listen_host ? 0 : -1;
}

/* libmicrohttpd's messages: fmt is its printf format (checked as one). */
static __attribute__((format(printf, 2, 0))) void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512], safe[768];
	(void)cls;
	vsnprintf(msg, sizeof msg, fmt, ap);
	scrub_secrets(safe, sizeof safe, msg);
	prog_log(AIQ_LOG_WARNING, "http", "%s", safe);
}

/* The library's diagnostics, with any URL's secrets hidden. */
static void library_log(int level, const char *message, void *userdata)
{
	char safe[2048];
	scrub_secrets(safe, sizeof safe, message);
	prog_log_library(level, safe, userdata);
}

/* A URL that can never work is a start-up error (exit EXIT_USAGE, as for
 * aiqueue-worker and the CLI; the library's check names the missing feature
 * and its Debian package); a broker or store that is down is waited for. */
static int startup_probe(struct server *srv)
{
	char detail[1024];
	int rc = aiq_url_check_broker(srv->broker_url);
	if (rc == AIQ_OK)
		rc = aiq_url_check_store(srv->backend_url);
	if (rc == AIQ_OK) {
		aiq_client *probe = NULL;
		rc = client_pool_get(&probe, srv->clients);
		if (rc == AIQ_OK) {
			client_pool_put(srv->clients, probe);
			return 0;
		}
		if (rc != AIQ_EUNSUPPORTED && rc != AIQ_EINVAL) {
			/* The breaker is open now: requests get 503 until a probe succeeds. */
			scrub_secrets(detail, sizeof detail, aiq_error_last());
			prog_log(AIQ_LOG_WARNING, "startup", "broker or store unreachable: %s: %s",
			         aiq_strerror(rc), detail);
			return 0;
		}
	}
	scrub_secrets(detail, sizeof detail, aiq_error_last());
	prog_log(AIQ_LOG_ERROR, "startup", "%s: %s", aiq_strerror(rc), detail);
	fprintf(stderr, "aiqueue-server: cannot start: %s\n", detail);
	return EXIT_USAGE;
}

/* Room for --max-connections descriptors (plus the process's own). */
static void fit_fd_limit(struct server_options *o)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	rlim_t want = (rlim_t)o->max_connections + 128;
	if (rl.rlim_cur < want) {
		rl.rlim_cur =
		        rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < want) {
		unsigned fit = rl.rlim_cur > 256 ? (unsigned)(rl.rlim_cur - 128) : 128;
		prog_log(AIQ_LOG_WARNING, "startup",
		         "open-file limit %llu: --max-connections lowered from %u to %u",
		         (unsigned long long)rl.rlim_cur, o->max_connections, fit);
		o->max_connections = fit;
	}
}

static void *worker_main(void *arg)
{
	aiq_worker *w = arg;
	int rc = aiq_worker_run(w);
	if (rc != AIQ_OK) {
		char detail[1024];
		scrub_secrets(detail, sizeof detail, aiq_worker_error(w));
		prog_log(AIQ_LOG_ERROR, "worker.stopped", "%s: %s", aiq_strerror(rc), detail);
	}
	return NULL;
}

enum {
	OPT_LISTEN = 256,
	OPT_BROKER,
	OPT_BACKEND,
	OPT_QUEUE,
	OPT_THREADS,
	OPT_WAIT_THREADS,
	OPT_WORKERS,
	OPT_TOKEN,
	OPT_MAX_BODY,
	OPT_MAX_BATCH,
	OPT_MAX_WAIT,
	OPT_IDLE,
	OPT_HEADER_TIMEOUT,
	OPT_MAX_CONN,
	OPT_MAX_CONN_IP,
	OPT_MAX_POLLS,
	OPT_BREAKER,
	OPT_LOG_LEVEL,
	OPT_HELP,
	OPT_VERSION
};

static int parse_args(struct server *srv, int argc, char **argv)
{
	static const struct option longopts[] = {
	        {"listen", required_argument, NULL, OPT_LISTEN},
	        {"broker", required_argument, NULL, OPT_BROKER},
	        {"backend", required_argument, NULL, OPT_BACKEND},
	        {"result-backend", required_argument, NULL, OPT_BACKEND},
	        {"queue", required_argument, NULL, OPT_QUEUE},
	        {"threads", required_argument, NULL, OPT_THREADS},
	        {"broker-threads", required_argument, NULL, OPT_WAIT_THREADS},
	        {"wait-threads", required_argument, NULL, OPT_WAIT_THREADS},
	        {"concurrency", required_argument, NULL, OPT_WORKERS},
	        {"workers", required_argument, NULL, OPT_WORKERS},
	        {"api-token", required_argument, NULL, OPT_TOKEN},
	        {"max-body", required_argument, NULL, OPT_MAX_BODY},
	        {"max-batch", required_argument, NULL, OPT_MAX_BATCH},
	        {"max-wait", required_argument, NULL, OPT_MAX_WAIT},
	        {"idle-timeout", required_argument, NULL, OPT_IDLE},
	        {"header-timeout", required_argument, NULL, OPT_HEADER_TIMEOUT},
	        {"max-connections", required_argument, NULL, OPT_MAX_CONN},
	        {"max-connections-per-ip", required_argument, NULL, OPT_MAX_CONN_IP},
	        {"max-long-polls", required_argument, NULL, OPT_MAX_POLLS},
	        {"breaker-cooldown", required_argument, NULL, OPT_BREAKER},
	        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
	        {"loglevel", required_argument, NULL, OPT_LOG_LEVEL},
	        {"help", no_argument, NULL, OPT_HELP},
	        {"version", no_argument, NULL, OPT_VERSION},
	        {NULL, 0, NULL, 0},
	};
	struct server_options *o = &srv->opt;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	o->threads = cpus > 0 ? (unsigned)cpus : 2;
	o->broker_threads = 16;
	o->header_timeout_s = 10;
	o->max_connections = 1000;
	o->max_connections_per_ip = 200;
	o->max_long_polls = 500;
	o->breaker_cooldown_s = 5;
	o->max_body = 1024 * 1024;
	o->max_batch = 1000;
	o->max_wait_s = 30;
	o->idle_timeout_s = 30;
	o->log_level = AIQ_LOG_INFO;
	o->api_token = getenv("AIQUEUE_API_TOKEN");
	const char *listen = getenv("AIQUEUE_LISTEN");
	if (parse_listen(o, listen && *listen ? listen : "127.0.0.1:8000") != 0)
		return usage_error("invalid AIQUEUE_LISTEN '%s' (expected HOST:PORT)", listen);

	int c, rc;
	long long n;
	double d;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":b:c:l:", longopts, NULL)) != -1) {
		/* The short options are aiqueue-worker's, for the same things. */
		c = c == 'b' ? OPT_BROKER : c == 'c' ? OPT_WORKERS : c == 'l' ? OPT_LOG_LEVEL : c;
		const char *arg = optarg;
		switch (c) {
		case OPT_LISTEN:
			if (parse_listen(o, arg) != 0)
				return usage_error("invalid --listen '%s' (expected HOST:PORT)",
				                   arg);
			break;
		case OPT_BROKER:
			if ((rc = set_key(srv->cfg, "broker.url", arg)))
				return rc;
			break;
		case OPT_BACKEND:
			if ((rc = set_key(srv->cfg, "result.url", arg)))
				return rc;
			break;
		case OPT_QUEUE:
			if ((rc = set_key(srv->cfg, "queue", arg)))
				return rc;
			break;
		case OPT_THREADS:
		case OPT_WAIT_THREADS:
			if (prog_parse_int(&n, arg, 1, 1024) != 0)
				return usage_error("--%s expects a number 1-1024",
				                   c == OPT_THREADS ? "threads" : "broker-threads");
			*(c == OPT_THREADS ? &o->threads : &o->broker_threads) = (unsigned)n;
			break;
		case OPT_WORKERS:
			if (prog_parse_int(&n, arg, 0, 1024) != 0)
				return usage_error(
				        "--concurrency (--workers) expects a number 0-1024");
			o->workers = (int)n;
			break;
		case OPT_TOKEN: o->api_token = arg; break;
		case OPT_MAX_BODY:
			if (prog_parse_int(&n, arg, 64, INT64_C(1) << 30) != 0)
				return usage_error("--max-body expects bytes, 64 to 1 GiB");
			o->max_body = (size_t)n;
			break;
		case OPT_MAX_BATCH:
			if (prog_parse_int(&n, arg, 1, 1000000) != 0)
				return usage_error("--max-batch expects a number 1-1000000");
			o->max_batch = (size_t)n;
			break;
		case OPT_MAX_WAIT:
			if (prog_parse_duration(&d, arg, 3600) != 0)
				return usage_error("--max-wait expects " PROG_DURATION_HINT
				                   "; 0 to 3600 s");
			o->max_wait_s = d;
			break;
		case OPT_IDLE:
			if (prog_parse_duration(&d, arg, 86400) != 0 || d < 1 || d != floor(d))
				return usage_error(
				        "--idle-timeout expects whole " PROG_DURATION_HINT
				        "; 1 to 86400 s");
			o->idle_timeout_s = (unsigned)d;
			break;
		case OPT_HEADER_TIMEOUT:
			if (prog_parse_duration(&d, arg, 3600) != 0 || d < 1 || d != floor(d))
				return usage_error(
				        "--header-timeout expects whole " PROG_DURATION_HINT
				        "; 1 to 3600 s");
			o->header_timeout_s = (unsigned)d;
			break;
		case OPT_MAX_CONN:
		case OPT_MAX_CONN_IP:
		case OPT_MAX_POLLS:
			if (prog_parse_int(&n, arg, 1, 1000000) != 0)
				return usage_error("--%s expects a number 1-1000000",
				                   c == OPT_MAX_CONN      ? "max-connections"
				                   : c == OPT_MAX_CONN_IP ? "max-connections-per-ip"
				                                          : "max-long-polls");
			*(c == OPT_MAX_CONN      ? &o->max_connections
			  : c == OPT_MAX_CONN_IP ? &o->max_connections_per_ip
			                         : &o->max_long_polls) = (unsigned)n;
			break;
		case OPT_BREAKER:
			if (prog_parse_duration(&d, arg, 3600) != 0)
				return usage_error("--breaker-cooldown expects " PROG_DURATION_HINT
				                   "; 0 to 3600 s");
			o->breaker_cooldown_s = d;
			break;
		case OPT_LOG_LEVEL:
			if ((o->log_level = aiq_log_level_from_name(arg)) < 0)
				return usage_error("unknown log level '%s'", arg);
			break;
		case OPT_HELP: usage(stdout); exit(0);
		case OPT_VERSION: printf("aiqueue-server %s\n", aiq_version_string()); exit(0);
		default: return prog_option_error("aiqueue-server", c, argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	return 0;
}

static struct MHD_Daemon *start_daemon(struct server *srv)
{
	struct addrinfo hints, *ai = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	char port[16];
	snprintf(port, sizeof port, "%u", srv->opt.port);
	int gai = getaddrinfo(srv->opt.listen_host, port, &hints, &ai);
	if (gai != 0) {
		prog_log(AIQ_LOG_ERROR, "listen", "cannot resolve %s: %s", srv->opt.listen_host,
		         gai_strerror(gai));
		return NULL;
	}
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
	                 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	struct MHD_Daemon *d = MHD_start_daemon(
	        flags, (uint16_t)srv->opt.port, NULL, NULL, server_access, srv,
	        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
	        MHD_OPTION_THREAD_POOL_SIZE,
	        (unsigned int)(srv->opt.threads > 1 ? srv->opt.threads : 0),
	        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)srv->opt.idle_timeout_s,
	        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
	        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)srv->opt.max_connections,
	        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)srv->opt.max_connections_per_ip,
	        MHD_OPTION_URI_LOG_CALLBACK, server_uri_log, srv, MHD_OPTION_NOTIFY_CONNECTION,
	        server_connection, srv, MHD_OPTION_NOTIFY_COMPLETED, server_completed, srv,
	        MHD_OPTION_END);
	freeaddrinfo(ai);
	return d;
}

int main(int argc, char **argv)
{
	static struct server srv; /* zeroed; lives until exit */
	int rc = aiq_config_new(&srv.cfg);
	if (rc != AIQ_OK) {
		fprintf(stderr, "aiqueue-server: %s\n", aiq_strerror(rc));
		return 1;
	}
	if (aiq_config_load_env(srv.cfg) != AIQ_OK) {
		char detail[1024];
		scrub_secrets(detail, sizeof detail, aiq_error_last());
		rc = usage_error("bad environment: %s", detail);
		aiq_config_free(srv.cfg);
		return rc;
	}
	if ((rc = parse_args(&srv, argc, argv)) != 0) {
		aiq_config_free(srv.cfg);
		free(srv.opt.listen_host);
		return rc;
	}
	prog_log_init("aiqueue-server", srv.opt.log_level);
	aiq_log_set_level(srv.opt.log_level);
	aiq_log_set_handler(library_log, NULL, NULL);
	fit_fd_limit(&srv.opt);

	breaker_init(&srv.breaker, (int64_t)(srv.opt.breaker_cooldown_s * 1000.0));
	if (aiq_config_get(&srv.task_name, srv.cfg, "analyze.task_name") != AIQ_OK ||
	    aiq_config_get(&srv.broker_url, srv.cfg, "broker.url") != AIQ_OK ||
	    aiq_config_get(&srv.backend_url, srv.cfg, "result.url") != AIQ_OK ||
	    client_pool_new(&srv.clients, srv.cfg, &srv.breaker) != AIQ_OK || dash_new(&srv) != 0) {
		prog_log(AIQ_LOG_ERROR, "startup", "out of memory");
		return 1;
	}

	/* Signals are taken by sigwait() in main; every thread inherits the mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	char rb[512], rs[512];
	scrub_secrets(rb, sizeof rb, srv.broker_url); /* aiq_url_redact and more */
	scrub_secrets(rs, sizeof rs, srv.backend_url);

	/* Before the embedded worker: a URL that can never work stops here. A
	 * broker that is down at start is waited for (readyz says 503) so an
	 * orchestrator can keep the server while the broker comes up. */
	if ((rc = startup_probe(&srv)) != 0) {
		client_pool_free(srv.clients);
		aiq_free(srv.task_name);
		aiq_free(srv.broker_url);
		aiq_free(srv.backend_url);
		aiq_config_free(srv.cfg);
		free(srv.opt.listen_host);
		aiq_log_set_handler(NULL, NULL, NULL);
		return rc;
	}

	pthread_t worker_thread;
	bool worker_running = false;
	if (srv.opt.workers > 0) {
		aiq_config *wcfg = NULL;
		rc = aiq_config_copy(&wcfg, srv.cfg);
		if (rc == AIQ_OK)
			rc = aiq_config_set_int(wcfg, "worker.concurrency", srv.opt.workers);
		if (rc == AIQ_OK)
			rc = aiq_worker_new(&srv.worker, wcfg);
		aiq_config_free(wcfg);
		if (rc == AIQ_OK)
			rc = aiq_worker_on_event(srv.worker, dash_worker_event, &srv, NULL);
		if (rc == AIQ_OK)
			rc = dash_register_demo(srv.worker);
		if (rc != AIQ_OK || pthread_create(&worker_thread, NULL, worker_main, srv.worker)) {
			char detail[1024];
			scrub_secrets(detail, sizeof detail, aiq_error_last());
			prog_log(AIQ_LOG_ERROR, "startup", "cannot start the embedded worker: %s",
			         detail);
			return 1;
		}
		worker_running = true;
	}

	int exit_code = 0;
	evrecv_start(&srv); /* the dashboard's Celery events; the poll without them */
	if (threads_start(&srv) != 0 || dash_ticker_start(&srv) != 0 ||
	    (srv.daemon = start_daemon(&srv)) == NULL) {
		prog_log(AIQ_LOG_ERROR, "listen", "cannot listen on %s:%u", srv.opt.listen_host,
		         srv.opt.port);
		exit_code = EXIT_CONNECT;
	} else {
		const union MHD_DaemonInfo *info =
		        MHD_get_daemon_info(srv.daemon, MHD_DAEMON_INFO_BIND_PORT);
		unsigned port = info ? info->port : srv.opt.port;
		int v6 = strchr(srv.opt.listen_host, ':') != NULL;
		printf("listening on http://%s%s%s:%u\n", v6 ? "[" : "", srv.opt.listen_host,
		       v6 ? "]" : "", port);
		fflush(stdout);
		prog_log(AIQ_LOG_INFO, "startup",
		         "version=%s listen=%s:%u broker=%s backend=%s threads=%u "
		         "broker_threads=%u workers=%d max_connections=%u per_ip=%u auth=%s",
		         aiq_version_string(), srv.opt.listen_host, port, rb, rs, srv.opt.threads,
		         srv.opt.broker_threads, srv.opt.workers, srv.opt.max_connections,
		         srv.opt.max_connections_per_ip,
		         srv.opt.api_token && *srv.opt.api_token ? "on" : "off");
		int sig = 0;
		sigwait(&sigs, &sig);
		prog_log(AIQ_LOG_INFO, "shutdown",
		         "signal %d: draining (a second signal exits now)", sig);
		/* A second signal takes its default action on this thread: exit now. */
		pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
	}

	/* Stop accepting, let requests finish and answer long polls, then stop workers. */
	atomic_store(&srv.draining, 1);
	if (srv.daemon)
		MHD_quiesce_daemon(srv.daemon);
	jobs_stop(&srv);
	watcher_stop(&srv);
	dash_ticker_stop(&srv); /* the dashboard's streams end */
	if (srv.daemon) {
		for (int i = 0; i < 200; i++) {
			const union MHD_DaemonInfo *info = MHD_get_daemon_info(
			        srv.daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
			if (info == NULL || info->num_connections == 0)
				break;
			usleep(10 * 1000);
		}
		MHD_stop_daemon(srv.daemon);
	}
	if (srv.worker) {
		aiq_worker_stop(srv.worker);
		if (worker_running)
			pthread_join(worker_thread, NULL);
		aiq_worker_free(srv.worker);
	}
	evrecv_stop();
	client_pool_free(srv.clients);
	similar_close(&srv);
	dash_free(&srv);
	metrics_free();
	aiq_free(srv.task_name);
	aiq_free(srv.broker_url);
	aiq_free(srv.backend_url);
	aiq_config_free(srv.cfg);
	free(srv.opt.listen_host);
	prog_log(AIQ_LOG_INFO, "shutdown", "stopped");
	aiq_log_set_handler(NULL, NULL, NULL);
	return exit_code;
}
