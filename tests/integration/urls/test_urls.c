/*
 * URL forms from kombu's and Celery's documentation against private servers
 * (run.sh), and secrets planted in URLs that must never reach an error
 * string, a stored result or a log line.
 *
 * Each form is checked from the outside: a client built from the URL
 * enqueues into a fresh queue, and the message is then looked for with
 * hiredis (right port, right database) or rabbitmqctl (right vhost); a task
 * result planted with hiredis in the URL's database must be readable
 * through the URL.
 */
#include <aiqueue/aiqueue.h>
#include <arpa/inet.h>
#include <check.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SECRET "S3CRET-planted-7f3a"

/* ---- helpers -------------------------------------------------------------- */

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v != NULL && *v, "%s is not set (run through run.sh)", name);
	return v;
}

static int env_int(const char *name)
{
	return atoi(env(name));
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* A loopback port nothing listens on. */
static int dead_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	socklen_t len = sizeof a;
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

/* Expand a URL template: {port}, {pw} and {sock} are replaced. */
static void expand(char *out, size_t n, const char *tpl, int port, const char *pw, const char *sock)
{
	char num[16];
	snprintf(num, sizeof num, "%d", port);
	size_t j = 0;
	for (const char *p = tpl; *p && j + 1 < n;) {
		const char *v = NULL;
		size_t skip = 0;
		if (strncmp(p, "{port}", 6) == 0)
			v = num, skip = 6;
		else if (strncmp(p, "{pw}", 4) == 0)
			v = pw, skip = 4;
		else if (strncmp(p, "{sock}", 6) == 0)
			v = sock, skip = 6;
		if (v) {
			size_t l = strlen(v);
			ck_assert_uint_lt(j + l, n);
			memcpy(out + j, v, l);
			j += l;
			p += skip;
		} else {
			out[j++] = *p++;
		}
	}
	out[j] = '\0';
}

static void qname(char *buf, size_t n, int i)
{
	static int serial;
	snprintf(buf, n, "aiqt.urls.%ld.%d.%d", (long)getpid(), i, serial++);
}

static aiq_config *config(const char *broker, const char *result)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", broker), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", result), AIQ_OK);
	return cfg;
}

/* Enqueue one task into `queue` through a client built from the URLs. */
static void enqueue_via(const char *broker, const char *result, const char *queue)
{
	aiq_config *cfg = config(broker, result);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client on %s / %s: %s", broker, result, aiq_error_last());
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_queue(o, queue), AIQ_OK);
	rc = aiq_client_enqueue(NULL, c, "tasks.urls", "[1]", NULL, o);
	ck_assert_msg(rc == AIQ_OK, "enqueue via %s: %s", broker, aiq_error_last());
	aiq_enqueue_opts_free(o);
	aiq_client_free(c);
	aiq_config_free(cfg);
}

/* A hiredis connection to one of the private servers, authenticated, on db. */
static redisContext *raw_redis(int port, const char *user, const char *pw, int db)
{
	redisContext *c = redisConnect("127.0.0.1", port);
	ck_assert_msg(c && !c->err, "redisConnect %d", port);
	redisReply *r;
	if (pw) {
		r = user ? redisCommand(c, "AUTH %s %s", user, pw) : redisCommand(c, "AUTH %s", pw);
		ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "AUTH on %d", port);
		freeReplyObject(r);
	}
	r = redisCommand(c, "SELECT %d", db);
	ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "SELECT %d", db);
	freeReplyObject(r);
	return c;
}

static long long redis_llen(int port, const char *pw, int db, const char *key)
{
	redisContext *c = raw_redis(port, NULL, pw, db);
	redisReply *r = redisCommand(c, "LLEN %s", key);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
	long long n = r->integer;
	freeReplyObject(r);
	redisFree(c);
	return n;
}

/* Store a SUCCESS result the way Celery does, in db; return its id. */
static void plant_result(char id[64], int port, const char *pw, int db)
{
	static int serial;
	snprintf(id, 64, "urls-%ld-%d", (long)getpid(), serial++);
	char meta[512];
	snprintf(meta, sizeof meta,
	         "{\"status\": \"SUCCESS\", \"result\": 42, \"traceback\": null, \"children\": "
	         "[], \"date_done\": \"2026-12-01T08:00:00.000000+00:00\", \"task_id\": \"%s\"}",
	         id);
	redisContext *c = raw_redis(port, NULL, pw, db);
	redisReply *r = redisCommand(c, "SET celery-task-meta-%s %s", id, meta);
	ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "SET");
	freeReplyObject(r);
	redisFree(c);
}

/* The planted result must come back through a client on `url`. */
static void read_result_via(const char *url, const char *id)
{
	aiq_config *cfg = config("memory://urls", url);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client on result %s: %s", url, aiq_error_last());
	aiq_result *r = NULL;
	rc = aiq_client_get_result(&r, c, id);
	ck_assert_msg(rc == AIQ_OK, "get_result via %s: %s", url, aiq_error_last());
	ck_assert_msg(aiq_result_state(r) == AIQ_STATE_SUCCESS, "via %s: state %s", url,
	              aiq_state_name(aiq_result_state(r)));
	ck_assert_str_eq(aiq_result_json(r), "42");
	aiq_result_free(r);
	aiq_client_free(c);
	aiq_config_free(cfg);
}

/* ---- Redis forms ---------------------------------------------------------- */

struct redis_form {
	const char *fmt; /* a template for expand() */
	int port_kind;   /* 0 = open server, 1 = server with passwords */
	int db;          /* where the data must land */
};

START_TEST(test_redis_forms)
{
	static const struct redis_form forms[] = {
	        /* kombu/Celery docs: redis://localhost:6379/0 and friends */
	        {"redis://127.0.0.1:{port}/0", 0, 0},
	        {"redis://127.0.0.1:{port}", 0, 0},
	        {"redis://127.0.0.1:{port}/", 0, 0},
	        {"redis://127.0.0.1:{port}/3", 0, 3},
	        {"REDIS://127.0.0.1:{port}/4", 0, 4},
	        {"redis://[::1]:{port}/5", 0, 5},
	        {"redis://127.0.0.1:{port}/?db=6", 0, 6},
	        /* redis://:password@hostname:port/db_number */
	        {"redis://:{pw}@127.0.0.1:{port}/1", 1, 1},
	        /* a bare userinfo is the password (as redis-py and kombu read it) */
	        {"redis://{pw}@127.0.0.1:{port}/2", 1, 2},
	        /* redis://username:password@hostname:port/db (Redis 6 ACL) */
	        {"redis://app:{pw}@127.0.0.1:{port}/7", 1, 7},
	        /* the same password unencoded (it holds '#', '?', '@', '/') */
	        {"redis://app:{pw}@127.0.0.1:{port}/8", 1, 8},
	        /* redis+socket:///path/to/redis.sock and ?virtual_host=N */
	        {"redis+socket://{sock}", 0, 0},
	        {"redis+socket://{sock}?virtual_host=9", 0, 9},
	        /* unix:///path?db=N (redis-py's spelling) */
	        {"unix://{sock}?db=10", 0, 10},
	};
	int open_port = env_int("AIQ_TEST_REDIS_OPEN_PORT");
	int auth_port = env_int("AIQ_TEST_REDIS_AUTH_PORT");
	const char *sock = env("AIQ_TEST_REDIS_SOCKET");
	const char *pw = env("AIQ_TEST_REDIS_PW");
	const char *app_pw = env("AIQ_TEST_REDIS_APP_PW");
	for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
		const struct redis_form *f = &forms[i];
		char url[512];
		if (f->port_kind == 0) {
			expand(url, sizeof url, f->fmt, open_port, NULL, sock);
		} else {
			/* the ACL user's password percent-encoded (db 7), then not */
			const char *secret = strstr(f->fmt, "app:") ? app_pw : pw;
			char enc[128] = "";
			if (strstr(f->fmt, "/7")) {
				size_t j = 0;
				for (const char *p = secret; *p && j + 4 < sizeof enc; p++) {
					if (strchr("#?@/:%", *p))
						j += (size_t)snprintf(enc + j, 4, "%%%02X",
						                      (unsigned char)*p);
					else
						enc[j++] = *p;
				}
				enc[j] = '\0';
				secret = enc;
			}
			expand(url, sizeof url, f->fmt, auth_port, secret, NULL);
		}
		int port = f->port_kind ? auth_port : open_port;
		const char *raw_pw = f->port_kind ? pw : NULL;
		char q[128];
		qname(q, sizeof q, (int)i);
		enqueue_via(url, url, q);
		ck_assert_msg(redis_llen(port, raw_pw, f->db, q) == 1, "%s: not in db %d", url,
		              f->db);
		if (f->db != 0)
			ck_assert_msg(redis_llen(port, raw_pw, 0, q) == 0, "%s: also in db 0", url);
		char id[64];
		plant_result(id, port, raw_pw, f->db);
		read_result_via(url, id);
	}
}
END_TEST

START_TEST(test_rediss_is_unsupported)
{
	char url[256];
	snprintf(url, sizeof url, "rediss://:%s@127.0.0.1:%d/0", SECRET,
	         env_int("AIQ_TEST_REDIS_AUTH_PORT"));
	aiq_config *cfg = config(url, "memory://");
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "TLS"));
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "tunnel"));
	ck_assert_ptr_null(strstr(aiq_error_last(), SECRET));
	aiq_config_free(cfg);
	cfg = config("memory://", url);
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "TLS"));
	aiq_config_free(cfg);
}
END_TEST

/* ---- AMQP forms ----------------------------------------------------------- */

/* Messages ready in `queue` of `vhost`, read with rabbitmqctl (-1: none). */
static long rabbit_depth(const char *vhost, const char *queue)
{
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "'%s' ctl '%s' -q list_queues -p '%s' name messages",
	         env("AIQ_TEST_RABBITMQ_SH"), env("AIQ_TEST_RABBITMQ_DIR"), vhost);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	char line[512];
	long n = -1;
	while (fgets(line, sizeof line, p)) {
		char name[300];
		long m;
		if (sscanf(line, "%299s %ld", name, &m) == 2 && strcmp(name, queue) == 0)
			n = m;
	}
	pclose(p);
	return n;
}

struct amqp_form {
	const char *fmt; /* a template for expand(); {pw} = the odd password */
	const char *vhost;
};

START_TEST(test_amqp_forms)
{
	static const struct amqp_form forms[] = {
	        /* Celery's default and kombu's canonical spelling of vhost "/" */
	        {"amqp://guest:guest@127.0.0.1:{port}//", "/"},
	        {"amqp://127.0.0.1:{port}//", "/"},
	        {"amqp://127.0.0.1:{port}", "/"},
	        {"amqp://127.0.0.1:{port}/", "/"},
	        {"amqp://localhost:{port}//", "/"},
	        {"amqp://guest:guest@127.0.0.1:{port}/%2f", "/"},
	        {"amqp://guest:guest@127.0.0.1:{port}/%2F", "/"},
	        {"AMQP://guest:guest@127.0.0.1:{port}//", "/"},
	        /* Celery docs: pyamqp://guest@localhost// */
	        {"pyamqp://guest@127.0.0.1:{port}//", "/"},
	        {"librabbitmq://guest:guest@127.0.0.1:{port}//", "/"},
	        /* amqp://myuser:mypassword@localhost:5672/myvhost */
	        {"amqp://myuser:mypassword@127.0.0.1:{port}/myvhost", "myvhost"},
	        {"amqp://guest:guest@127.0.0.1:{port}/v%2fx", "v/x"},
	        /* kombu's query options */
	        {"amqp://guest:guest@127.0.0.1:{port}//?heartbeat=10&connect_timeout=3", "/"},
	        {"amqp://guest:guest@127.0.0.1:{port}//?heartbeat=0&insist=1&login_method=AMQPLAIN",
	         "/"},
	        /* a user and a password full of delimiters, encoded, then not */
	        {"amqp://us%40er:{pw}@127.0.0.1:{port}//", "/"},
	        {"amqp://us%40er:{pw}@127.0.0.1:{port}//", "/"},
	};
	int port = env_int("AIQ_TEST_AMQP_PORT");
	const char *odd = env("AIQ_TEST_AMQP_ODD_PW");
	char enc[128];
	size_t j = 0;
	for (const char *p = odd; *p && j + 4 < sizeof enc; p++) {
		if (strchr("#?@/:%", *p))
			j += (size_t)snprintf(enc + j, 4, "%%%02X", (unsigned char)*p);
		else
			enc[j++] = *p;
	}
	enc[j] = '\0';
	char queues[sizeof forms / sizeof forms[0]][128];
	size_t nforms = sizeof forms / sizeof forms[0];
	for (size_t i = 0; i < nforms; i++) {
		char url[512];
		expand(url, sizeof url, forms[i].fmt, port, i + 1 == nforms ? odd : enc, NULL);
		qname(queues[i], sizeof queues[i], (int)i);
		enqueue_via(url, "memory://urls", queues[i]);
	}
	/* A failover list whose first node is down. */
	char list[512], fq[128];
	snprintf(list, sizeof list, "amqp://guest:guest@127.0.0.1:%d//;amqp://127.0.0.1:%d//",
	         dead_port(), port);
	qname(fq, sizeof fq, 99);
	enqueue_via(list, "memory://urls", fq);
	for (size_t i = 0; i < nforms; i++) {
		ck_assert_msg(rabbit_depth(forms[i].vhost, queues[i]) == 1,
		              "form %s: queue %s not in vhost %s", forms[i].fmt, queues[i],
		              forms[i].vhost);
		if (strcmp(forms[i].vhost, "/") != 0)
			ck_assert_int_eq(rabbit_depth("/", queues[i]), -1);
	}
	ck_assert_int_eq(rabbit_depth("/", fq), 1);
}
END_TEST

/* ---- secrets -------------------------------------------------------------- */

/* Every log line, collected. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[1 << 16];
static size_t log_len;

static void on_log(int level, const char *message, void *ud)
{
	(void)level;
	(void)ud;
	pthread_mutex_lock(&log_lock);
	size_t n = strlen(message);
	if (log_len + n + 2 < sizeof log_text) {
		memcpy(log_text + log_len, message, n);
		log_len += n;
		log_text[log_len++] = '\n';
		log_text[log_len] = '\0';
	}
	pthread_mutex_unlock(&log_lock);
}

static void capture_logs(void)
{
	log_len = 0;
	log_text[0] = '\0';
	aiq_log_set_level(AIQ_LOG_DEBUG);
	aiq_log_set_handler(on_log, NULL, NULL);
}

static void assert_no_secret(const char *what, const char *text, const char *secret)
{
	ck_assert_msg(text == NULL || strstr(text, secret) == NULL, "%s leaks the secret: %s", what,
	              text);
}

static void assert_logs_clean(const char *secret)
{
	pthread_mutex_lock(&log_lock);
	ck_assert_msg(strstr(log_text, secret) == NULL, "a log line leaks the secret:\n%s",
	              log_text);
	pthread_mutex_unlock(&log_lock);
}

static void *run_worker(void *arg);

/* A worker on cfg: its creation error, or, when it starts, the error it
 * stops with (a refused password) or the log lines of its reconnect
 * attempts (a dead port) within a second. */
static void worker_probe(const char *url, const aiq_config *cfg)
{
	aiq_worker *w = NULL;
	if (aiq_worker_new(&w, cfg) != AIQ_OK) {
		assert_no_secret(url, aiq_error_last(), SECRET);
		return;
	}
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run_worker, w), 0);
	for (int i = 0; i < 10 && *aiq_worker_error(w) == '\0'; i++)
		sleep_ms(100);
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	assert_no_secret(url, aiq_worker_error(w), SECRET);
	aiq_worker_free(w);
}

/* Broker and result URLs with a planted password, at a dead port and at
 * live servers that refuse it: every error the client and worker give. */
START_TEST(test_secrets_in_errors)
{
	capture_logs();
	int dead = dead_port();
	int rport = env_int("AIQ_TEST_REDIS_AUTH_PORT");
	int aport = env_int("AIQ_TEST_AMQP_PORT");
	const char *fmts[] = {
	        "redis://:" SECRET "@127.0.0.1:{port}/0",
	        "redis://" SECRET "@127.0.0.1:{port}/0",
	        "redis://app:pa#" SECRET "@127.0.0.1:{port}/0",
	        "redis://app:pa?" SECRET "@127.0.0.1:{port}/0",
	        "redis://127.0.0.1:{port}/0?password=" SECRET,
	        "amqp://guest:" SECRET "@127.0.0.1:{port}//",
	        "amqp://guest:pa#" SECRET "@127.0.0.1:{port}//",
	        "librabbitmq://guest:" SECRET "@127.0.0.1:{port}//",
	};
	for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
		bool amqp = strncmp(fmts[i], "redis", 5) != 0;
		int ports[2] = {dead, amqp ? aport : rport};
		for (int k = 0; k < 2; k++) {
			char url[256];
			expand(url, sizeof url, fmts[i], ports[k], NULL, NULL);
			/* as the broker */
			aiq_config *cfg = config(url, "memory://");
			aiq_client *c = NULL;
			ck_assert_int_ne(aiq_client_new(&c, cfg), AIQ_OK);
			assert_no_secret(url, aiq_error_last(), SECRET);
			worker_probe(url, cfg);
			aiq_config_free(cfg);
			if (amqp)
				continue;
			/* as the result store */
			cfg = config("memory://", url);
			ck_assert_int_ne(aiq_client_new(&c, cfg), AIQ_OK);
			assert_no_secret(url, aiq_error_last(), SECRET);
			worker_probe(url, cfg);
			aiq_config_free(cfg);
		}
	}
	/* Refused outright, before any connection. */
	static const char *const bad[] = {
	        "redis://:" SECRET "@127.0.0.1:99999/0",
	        "redis://:" SECRET "@127.0.0.1:1/zero",
	        "redis://:" SECRET "@127.0.0.1:1/0?bogus=1",
	        "rediss://" SECRET "@127.0.0.1:1/0",
	        "amqp://u:" SECRET "@127.0.0.1:1//?bogus=1",
	        "amqp://u:" SECRET "@[::1//",
	        "sentinel://:" SECRET "@127.0.0.1:26379;sentinel://:" SECRET "@h2:26379",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		aiq_config *cfg = config(bad[i], "memory://");
		aiq_client *c = NULL;
		ck_assert_int_ne(aiq_client_new(&c, cfg), AIQ_OK);
		assert_no_secret(bad[i], aiq_error_last(), SECRET);
		aiq_config_free(cfg);
	}
	assert_logs_clean(SECRET);
	aiq_log_set_handler(NULL, NULL, NULL);
}
END_TEST

static void *run_worker(void *arg)
{
	aiq_worker_run(arg);
	return NULL;
}

/* On the password server: change the default user's password, and drop
 * every other client when asked. */
static void set_requirepass(const char *old, const char *pw, bool kill_clients)
{
	redisContext *c = raw_redis(env_int("AIQ_TEST_REDIS_AUTH_PORT"), NULL, old, 0);
	redisReply *r = redisCommand(c, "CONFIG SET requirepass %s", pw);
	ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "CONFIG SET: %s", r ? r->str : "?");
	freeReplyObject(r);
	if (kill_clients) {
		r = redisCommand(c, "CLIENT KILL TYPE normal SKIPME yes");
		ck_assert_msg(r && r->type == REDIS_REPLY_INTEGER, "CLIENT KILL");
		freeReplyObject(r);
	}
	redisFree(c);
}

/* A worker whose broker password is changed under it: the reconnect is
 * refused, the worker stops, and its error and the logs hide the password
 * that is in its URL. */
START_TEST(test_secret_in_worker_error)
{
	capture_logs();
	const char *pw = env("AIQ_TEST_REDIS_PW");
	char url[256];
	snprintf(url, sizeof url, "redis://:%s@127.0.0.1:%d/11", pw,
	         env_int("AIQ_TEST_REDIS_AUTH_PORT"));
	aiq_config *cfg = config(url, url);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.reconnect_max_ms", 200), AIQ_OK);
	aiq_worker *w = NULL;
	int rc = aiq_worker_new(&w, cfg);
	ck_assert_msg(rc == AIQ_OK, "worker: %s", aiq_error_last());
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run_worker, w), 0);
	sleep_ms(500);
	set_requirepass(pw, "other-password", true);
	/* The worker gives up on a refused password. */
	int waited = 0;
	while (aiq_worker_error(w) == NULL || *aiq_worker_error(w) == '\0') {
		ck_assert_msg(waited < 20000, "the worker did not report the refused password");
		sleep_ms(100);
		waited += 100;
	}
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	assert_no_secret("aiq_worker_error", aiq_worker_error(w), pw);
	ck_assert_ptr_nonnull(strstr(aiq_worker_error(w), "***"));
	aiq_worker_free(w);
	set_requirepass("other-password", pw, false);
	assert_logs_clean(pw);
	aiq_log_set_handler(NULL, NULL, NULL);
	aiq_config_free(cfg);
}
END_TEST

#ifdef AIQ_HAVE_LLM
static void on_event(int event, const char *id, const char *name, const char *detail, void *ud)
{
	(void)id;
	(void)name;
	(void)ud;
	if (detail && *detail)
		on_log(event, detail, NULL); /* events join the log text */
}

/* One tasks.analyze_track run by the llm analyzer on `base_url` (one retry
 * allowed); returns the final result. */
static aiq_result *llm_run(aiq_config *cfg, const char *base_url)
{
	ck_assert_int_eq(aiq_config_set_str(cfg, "llm.base_url", base_url), AIQ_OK);
	aiq_worker *w = NULL;
	int rc = aiq_worker_new(&w, cfg);
	ck_assert_msg(rc == AIQ_OK, "worker: %s", aiq_error_last());
	ck_assert_int_eq(aiq_worker_on_event(w, on_event, NULL, NULL), AIQ_OK);
	aiq_client *c = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run_worker, w), 0);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	ck_assert_int_eq(aiq_enqueue_opts_set_max_retries(o, 1), AIQ_OK);
	char *id = NULL;
	rc = aiq_client_enqueue(&id, c, "tasks.analyze_track",
	                        "[\"t1\", \"la la la\\nthe rain on the window\"]",
	                        "{\"analyzer\": \"llm\"}", o);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	aiq_result *r = NULL;
	rc = aiq_client_wait(&r, c, id, 30000);
	ck_assert_msg(rc == AIQ_OK, "wait: %s", aiq_error_last());
	aiq_free(id);
	aiq_enqueue_opts_free(o);
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	assert_no_secret("aiq_worker_error", aiq_worker_error(w), SECRET);
	aiq_worker_free(w);
	aiq_client_free(c);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	assert_no_secret("exc_message", aiq_result_error_message(r), SECRET);
	assert_no_secret("result meta", aiq_result_meta_json(r), SECRET);
	return r;
}

/* The llm analyzer with credentials in llm.base_url: the retry details,
 * the final exc_message and the logs hide them. */
START_TEST(test_secret_in_llm_base_url)
{
	capture_logs();
	aiq_config *cfg = config("memory://llm-secret", "memory://llm-secret");
	ck_assert_int_eq(aiq_config_set_str(cfg, "llm.model", "m"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "task.retry_backoff_ms", 10), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_bool(cfg, "task.retry_jitter", 0), AIQ_OK);
	/* A dead port: retried ("cannot reach <url>"), then out of retries. */
	char base[256];
	snprintf(base, sizeof base, "http://user:%s@127.0.0.1:%d/v1", SECRET, dead_port());
	aiq_result_free(llm_run(cfg, base));
	pthread_mutex_lock(&log_lock);
	ck_assert_msg(strstr(log_text, "cannot reach http://user:***@127.0.0.1:") != NULL,
	              "no redacted URL in the retry:\n%s", log_text);
	pthread_mutex_unlock(&log_lock);
	/* A URL curl refuses: LLMConfigError naming the (redacted) URL. */
	snprintf(base, sizeof base, "http://user:%s@127.0.0.1:99999/v1", SECRET);
	aiq_result *r = llm_run(cfg, base);
	ck_assert_msg(strstr(aiq_result_error_message(r), "http://user:***@127.0.0.1:99999/v1"),
	              "exc %s: %s", aiq_result_error_type(r), aiq_result_error_message(r));
	aiq_result_free(r);
	/* A base URL the configuration refuses when it is set. */
	snprintf(base, sizeof base, "ftp://user:%s@127.0.0.1/v1", SECRET);
	ck_assert_int_eq(aiq_config_set_str(cfg, "llm.base_url", base), AIQ_EINVAL);
	assert_no_secret("aiq_config_set_str", aiq_error_last(), SECRET);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "llm.base_url"));
	aiq_config_free(cfg);
	assert_logs_clean(SECRET);
	aiq_log_set_handler(NULL, NULL, NULL);
}
END_TEST
#endif

int main(void)
{
	Suite *s = suite_create("urls");
	TCase *forms = tcase_create("forms");
	tcase_set_timeout(forms, 300);
	tcase_add_test(forms, test_redis_forms);
	tcase_add_test(forms, test_rediss_is_unsupported);
	tcase_add_test(forms, test_amqp_forms);
	suite_add_tcase(s, forms);
	TCase *secrets = tcase_create("secrets");
	tcase_set_timeout(secrets, 120);
	tcase_add_test(secrets, test_secrets_in_errors);
	tcase_add_test(secrets, test_secret_in_worker_error);
#ifdef AIQ_HAVE_LLM
	tcase_add_test(secrets, test_secret_in_llm_base_url);
#endif
	suite_add_tcase(s, secrets);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
