/*
 * Shared plumbing of the Redis broker and result store: URLs, connections,
 * commands, Lua scripts, and hiredis errors turned into AIQ_E* codes.
 */
#include "redis_common.h"
#include "redis_lua.h"

#include "url.h"
#include "config_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PORT          6379
#define DEFAULT_SENTINEL_PORT 26379 /* kombu's SentinelTransport.default_port */

const aiq__redis_script aiq__redis_scripts[AIQ__LUA_N] = AIQ__LUA_SCRIPTS;

/* A database number, as kombu's _prepare_virtual_host reads it: "" and "/"
 * are 0, one leading '/' is dropped. */
static int parse_db(const char *s, int *db)
{
	if (*s == '/')
		s++;
	if (*s == '\0') {
		*db = 0;
		return AIQ_OK;
	}
	long v = 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > 1000000)
			return -1;
		v = v * 10 + (*s - '0');
	}
	*db = (int)v;
	return AIQ_OK;
}

/* Seconds (redis-py takes floats) as milliseconds above 0. */
static bool seconds_ms(const char *v, int *ms)
{
	char *end;
	double d = strtod(v, &end);
	if (*v == '\0' || *end != '\0' || !(d > 0 && d <= 86400))
		return false;
	*ms = (int)(d * 1000.0 + 0.5);
	if (*ms == 0)
		*ms = 1;
	return true;
}

static int tls_unsupported(const aiq__redis_target *t)
{
	return aiq__err(AIQ_EUNSUPPORTED,
	                "Redis URL '%.200s' asks for TLS, which this library's hiredis (built "
	                "without SSL) cannot speak; connect through a TLS tunnel (stunnel, "
	                "spiped, or an ssh/haproxy forward) listening on a local plain port and "
	                "use redis:// to that port",
	                t->redacted);
}

/* Query options: what Celery's Redis transport and result backend take from
 * a URL and this driver has; anything else is refused, as kombu does. */
static int url_options(aiq__redis_target *t, const aiq__url *u, bool sentinel)
{
	for (size_t i = 0; i < u->nparams; i++) {
		const char *k = u->params[i].key, *v = u->params[i].value;
		if (sentinel && strcmp(k, "master_name") == 0) {
			free(t->master_name);
			if ((t->master_name = aiq__strdup(v)) == NULL)
				return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
		} else if (strcmp(k, "db") == 0 || strcmp(k, "virtual_host") == 0) {
			if (parse_db(v, &t->db) != AIQ_OK)
				return aiq__err(AIQ_EINVAL,
				                "Redis URL '%.200s': %s must be a database number, "
				                "got '%.40s'",
				                t->redacted, k, v);
		} else if (strcmp(k, "password") == 0) {
			free(t->password);
			if ((t->password = aiq__strdup(v)) == NULL)
				return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
		} else if (strcmp(k, "socket_timeout") == 0 ||
		           strcmp(k, "socket_connect_timeout") == 0) {
			int *dst = strcmp(k, "socket_timeout") == 0 ? &t->socket_timeout_ms
			                                            : &t->connect_timeout_ms;
			if (!seconds_ms(v, dst))
				return aiq__err(
				        AIQ_EINVAL,
				        "Redis URL '%.200s': %s must be a number of seconds "
				        "above 0, got '%.40s'",
				        t->redacted, k, v);
		} else if (strncmp(k, "ssl", 3) == 0) {
			return tls_unsupported(t);
		} else {
			return aiq__err(AIQ_EINVAL,
			                "Redis URL '%.200s': unknown option '%.40s' (this driver "
			                "takes db, virtual_host, password, socket_timeout, "
			                "socket_connect_timeout%s)",
			                t->redacted, k, sentinel ? ", master_name" : "");
		}
	}
	return AIQ_OK;
}

/* The tail every URL reader shares: with `master`, the URL names the
 * master's credentials ("redis://SECRET@host": userinfo without ':' is a
 * password, as the Redis clients Celery uses read it) and, with `db_path`,
 * its database as the path; then the query options. Does nothing after a
 * failure (rc); always clears u. */
static int url_tail(aiq__redis_target *t, aiq__url *u, int rc, bool master, bool db_path,
                    bool sentinel)
{
	if (rc == AIQ_OK && master) {
		if (u->bare_user) {
			t->password = u->user;
		} else {
			t->user = u->user;
			t->password = u->password;
		}
		u->user = u->password = NULL;
		if (db_path && u->path && parse_db(u->path, &t->db) != AIQ_OK)
			rc = aiq__err(AIQ_EINVAL,
			              "bad database number in Redis URL '%.200s' (expected /N)",
			              t->redacted);
	}
	if (rc == AIQ_OK)
		rc = url_options(t, u, sentinel);
	aiq__url_clear(u);
	return rc;
}

/* One URL of a Sentinel list: a sentinel's address; the first one also
 * carries the master's user, password and db (kombu and Celery read them
 * from there). */
static int sentinel_one(aiq__redis_target *t, const char *seg, size_t i)
{
	aiq__url u;
	int rc = aiq__url_parse(&u, seg);
	if (rc == AIQ_OK && strcmp(u.scheme, "sentinel") != 0)
		rc = aiq__err(AIQ_EINVAL,
		              "Redis URL '%.200s': every URL of a Sentinel list must be "
		              "sentinel://host:port (URL %zu is %s://)",
		              t->redacted, i + 1, u.scheme);
	if (rc == AIQ_OK) {
		aiq__redis_sentinel *s = &t->sentinels[i];
		if ((s->host = aiq__strdup(u.host ? u.host : "127.0.0.1")) == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
		s->port = u.port ? u.port : DEFAULT_SENTINEL_PORT;
	}
	return url_tail(t, &u, rc, i == 0, true, true);
}

static int watch_new(aiq__redis_target *t);
static void watch_free(aiq__redis_target *t);

/* "sentinel://h1:26379;sentinel://h2:26379" and a master name. */
static int sentinel_parse(aiq__redis_target *t, const char *list, const aiq_config *cfg)
{
	if ((t->redacted = aiq__url_redact(list)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
	size_t n = 0;
	for (const char *p = list; *p;) {
		size_t len = aiq__url_segment_len(p);
		n++;
		p += len;
		if (*p == ';')
			p++;
	}
	if (n == 0 || n > 64)
		return aiq__err(AIQ_EINVAL, "Redis URL '%.200s': give 1 to 64 sentinels",
		                t->redacted);
	if ((t->sentinels = calloc(n, sizeof *t->sentinels)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
	t->nsentinels = n;
	size_t i = 0;
	for (const char *p = list; *p; i++) {
		size_t len = aiq__url_segment_len(p);
		char *seg = aiq__strndup(p, len);
		if (seg == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
		int rc = sentinel_one(t, seg, i);
		memset(seg, 0, len);
		free(seg);
		if (rc != AIQ_OK)
			return rc;
		p += len;
		if (*p == ';')
			p++;
	}
	if (t->master_name == NULL || t->master_name[0] == '\0') {
		free(t->master_name);
		const char *name = aiq__cfg_str(cfg, AIQ_CFG_REDIS_MASTER_NAME);
		if (name == NULL || name[0] == '\0')
			return aiq__err(AIQ_EINVAL,
			                "Redis URL '%.200s' names sentinels but no master: set "
			                "redis.master_name (kombu's master_name transport "
			                "option) or add ?master_name=NAME",
			                t->redacted);
		if ((t->master_name = aiq__strdup(name)) == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
	}
	const char *spw = aiq__cfg_str(cfg, AIQ_CFG_REDIS_SENTINEL_PASSWORD);
	if (spw && spw[0] && (t->sentinel_password = aiq__strdup(spw)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
	return watch_new(t);
}

/* Settings of every target, checked once the URL's own options are in. */
static int target_limits(aiq__redis_target *t, const aiq_config *cfg)
{
	t->sentinel_wait_ms = (int)aiq__cfg_int(cfg, AIQ_CFG_REDIS_SENTINEL_WAIT_MS);
	t->min_replicas = (int)aiq__cfg_int(cfg, AIQ_CFG_REDIS_MIN_REPLICAS);
	t->wait_timeout_ms = (int)aiq__cfg_int(cfg, AIQ_CFG_REDIS_WAIT_TIMEOUT_MS);
	/* A socket timeout at or below WAIT's would abandon a WAIT that is
	 * still allowed to succeed, and the write would be sent again. */
	if (t->min_replicas > 0 && t->socket_timeout_ms <= t->wait_timeout_ms)
		return aiq__err(AIQ_EINVAL,
		                "Redis URL '%.200s': with redis.min_replicas %d the socket "
		                "timeout (%d ms) must exceed redis.wait_timeout_ms (%d ms)",
		                t->redacted, t->min_replicas, t->socket_timeout_ms,
		                t->wait_timeout_ms);
	return AIQ_OK;
}

static int target_parse(aiq__redis_target *t, const char *url, const aiq_config *cfg);

int aiq__redis_target_parse(aiq__redis_target *t, const char *url, const aiq_config *cfg)
{
	memset(t, 0, sizeof *t);
	t->connect_timeout_ms = (int)aiq__cfg_int(cfg, AIQ_CFG_REDIS_CONNECT_TIMEOUT_MS);
	t->socket_timeout_ms = (int)aiq__cfg_int(cfg, AIQ_CFG_REDIS_SOCKET_TIMEOUT_MS);
	if (url == NULL)
		return aiq__err(AIQ_EINVAL, "no Redis URL given");
	size_t slen = aiq__url_scheme_len(url);
	int rc = slen == 8 && strncasecmp(url, "sentinel", 8) == 0 ? sentinel_parse(t, url, cfg)
	                                                           : target_parse(t, url, cfg);
	if (rc == AIQ_OK)
		rc = target_limits(t, cfg);
	if (rc != AIQ_OK)
		watch_free(t); /* not every caller clears a target that failed */
	return rc;
}

static int target_parse(aiq__redis_target *t, const char *url, const aiq_config *cfg)
{
	(void)cfg;
	aiq__url u;
	int rc = aiq__url_parse(&u, url);
	t->redacted = u.redacted;
	u.redacted = NULL;
	if (rc != AIQ_OK) {
		aiq__url_clear(&u);
		return rc;
	}
	bool unix_socket = strcmp(u.scheme, "unix") == 0 || strcmp(u.scheme, "redis+socket") == 0;
	if (strcmp(u.scheme, "rediss") == 0)
		rc = tls_unsupported(t);
	else if (!unix_socket && strcmp(u.scheme, "redis") != 0)
		rc = aiq__err(AIQ_EINVAL,
		              "not a redis://, unix:// or redis+socket:// URL: '%.200s'",
		              t->redacted);
	else if (unix_socket && (u.host || u.port || u.path == NULL || *u.path == '\0'))
		rc = aiq__err(AIQ_EINVAL,
		              "Redis URL '%.200s' needs an absolute socket path after "
		              "'://' (e.g. %s:///run/redis/redis.sock)",
		              t->redacted, u.scheme);
	else if (unix_socket ? (t->path = aiq__asprintf("/%s", u.path)) == NULL
	                     : (t->host = aiq__strdup(u.host ? u.host : "127.0.0.1")) == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
	if (!unix_socket)
		t->port = u.port ? u.port : DEFAULT_PORT;
	return url_tail(t, &u, rc, true, !unix_socket, false);
}

void aiq__redis_target_clear(aiq__redis_target *t)
{
	if (t == NULL)
		return;
	watch_free(t); /* first: its thread reads the target */
	free(t->host);
	free(t->path);
	free(t->user);
	if (t->password)
		memset(t->password, 0, strlen(t->password));
	free(t->password);
	free(t->redacted);
	for (size_t i = 0; t->sentinels && i < t->nsentinels; i++)
		free(t->sentinels[i].host);
	free(t->sentinels);
	free(t->master_name);
	if (t->sentinel_password)
		memset(t->sentinel_password, 0, strlen(t->sentinel_password));
	free(t->sentinel_password);
	memset(t, 0, sizeof *t);
}

static struct timeval ms_timeval(int ms)
{
	struct timeval tv;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	return tv;
}

/* ---- +switch-master ---------------------------------------------------------- */

/* What the watcher thread of a Sentinel target shares with its connections
 * (mu guards everything below it). Made by the parse, started by the first
 * connect, stopped by aiq__redis_target_clear. */
struct aiq__redis_watch {
	pid_t pid;   /* the process it belongs to: a forked child leaves it alone */
	int wake[2]; /* a pipe: written to stop the thread */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool started, stop;
	pthread_t thread;
	const aiq__redis_target *target; /* the thread's, set when it starts */
	uint64_t switches;               /* announcements for our master so far */
};

static int watch_new(aiq__redis_target *t)
{
	aiq__redis_watch *w = calloc(1, sizeof *w);
	if (w == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory parsing a Redis URL");
	if (pipe(w->wake) != 0) {
		free(w);
		return aiq__err(AIQ_EIO, "pipe: %s", strerror(errno));
	}
	for (int i = 0; i < 2; i++)
		(void)fcntl(w->wake[i], F_SETFD, FD_CLOEXEC);
	w->pid = getpid();
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	t->watch = w;
	return AIQ_OK;
}

/* The target's watcher, when this process may use it. */
static aiq__redis_watch *watch_of(const aiq__redis_target *t)
{
	return t->watch && t->watch->pid == getpid() ? t->watch : NULL;
}

#define WATCH_PING_MS 5000

/* Whether the watcher is asked to stop. */
static bool atomic_stop(aiq__redis_watch *w)
{
	pthread_mutex_lock(&w->mu);
	bool stop = w->stop;
	pthread_mutex_unlock(&w->mu);
	return stop;
}

/* Wait up to ms (-1: no limit) for fd (-1: none) to be readable: true when
 * it is, false on a timeout or when the watcher is asked to stop. */
static bool watch_poll(aiq__redis_watch *w, int fd, int ms)
{
	struct pollfd p[2] = {{w->wake[0], POLLIN, 0}, {fd, POLLIN, 0}};
	int n = poll(p, fd >= 0 ? 2 : 1, ms);
	if (n <= 0 || p[0].revents)
		return false;
	return p[1].revents != 0;
}

/* A pub/sub message "<name> <old-ip> <old-port> <new-ip> <new-port>". */
static void watch_message(aiq__redis_watch *w, const aiq__redis_target *t, const redisReply *r)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
	    r->element[0]->type != REDIS_REPLY_STRING ||
	    strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
		return;
	char name[256], host[256], port_s[16], *end = NULL;
	if (sscanf(r->element[2]->str, "%255s %*s %*s %255s %15s", name, host, port_s) != 3 ||
	    strcmp(name, t->master_name) != 0)
		return;
	long port = strtol(port_s, &end, 10);
	if (*end != '\0' || port <= 0 || port > 65535)
		return;
	pthread_mutex_lock(&w->mu);
	w->switches++;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	aiq__log(AIQ_LOG_INFO, "redis: Sentinel announced master '%s' at %s:%ld (+switch-master)",
	         t->master_name, host, port);
}

/* Subscribe on one sentinel and read its announcements until the
 * connection fails or the watcher stops. */
static void watch_one(aiq__redis_watch *w, const aiq__redis_target *t, const aiq__redis_sentinel *s)
{
	int ms = t->connect_timeout_ms < 1000 ? t->connect_timeout_ms : 1000;
	redisContext *c = redisConnectWithTimeout(s->host, s->port, ms_timeval(ms));
	if (c == NULL || c->err)
		goto out;
	redisSetTimeout(c, ms_timeval(ms));
	redisReply *r = NULL;
	if (t->sentinel_password) {
		r = redisCommand(c, "AUTH %s", t->sentinel_password);
		bool ok = r && r->type != REDIS_REPLY_ERROR;
		freeReplyObject(r);
		if (!ok)
			goto out;
	}
	r = redisCommand(c, "SUBSCRIBE +switch-master");
	bool ok = r && r->type == REDIS_REPLY_ARRAY;
	freeReplyObject(r);
	if (!ok)
		goto out;
	/* A sentinel that stops answering (hung, cut off) is left after a PING
	 * unanswered for WATCH_PING_MS. */
	bool pinged = false;
	for (;;) {
		void *reply = NULL;
		while (redisGetReplyFromReader(c, &reply) == REDIS_OK && reply) {
			pinged = false;
			watch_message(w, t, reply);
			freeReplyObject(reply);
			reply = NULL;
		}
		if (c->err)
			break;
		int done = 0;
		if (watch_poll(w, c->fd, WATCH_PING_MS)) {
			if (redisBufferRead(c) != REDIS_OK)
				break;
			continue;
		}
		if (atomic_stop(w) || pinged || redisAppendCommand(c, "PING") != REDIS_OK)
			break;
		while (!done)
			if (redisBufferWrite(c, &done) != REDIS_OK)
				break;
		pinged = true;
	}
out:
	if (c)
		redisFree(c);
}

static void *watch_main(void *arg)
{
	aiq__redis_watch *w = arg;
	const aiq__redis_target *t = w->target;
	for (size_t i = 0;; i = (i + 1) % t->nsentinels) {
		watch_one(w, t, &t->sentinels[i]);
		/* That sentinel is gone (or refused): the next one, after a pause
		 * that keeps a dead list from spinning. */
		(void)watch_poll(w, -1, 200);
		if (atomic_stop(w))
			break;
	}
	return NULL;
}

/* Start the watcher once; without it, connects work as before. */
static void watch_start(const aiq__redis_target *t)
{
	aiq__redis_watch *w = watch_of(t);
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	if (!w->started && !w->stop) {
		w->target = t;
		w->started = pthread_create(&w->thread, NULL, watch_main, w) == 0;
		if (!w->started)
			w->stop = true; /* do not try again for every connect */
	}
	pthread_mutex_unlock(&w->mu);
}

static uint64_t watch_switches(const aiq__redis_target *t)
{
	aiq__redis_watch *w = watch_of(t);
	if (w == NULL)
		return 0;
	pthread_mutex_lock(&w->mu);
	uint64_t n = w->switches;
	pthread_mutex_unlock(&w->mu);
	return n;
}

/* Sleep ms, or less when an announcement comes after `seen`. */
static void watch_wait(const aiq__redis_target *t, uint64_t seen, int64_t ms)
{
	aiq__redis_watch *w = watch_of(t);
	if (w == NULL) {
		struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
		return;
	}
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&w->mu);
	while (w->switches == seen && pthread_cond_timedwait(&w->cv, &w->mu, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&w->mu);
}

static void watch_free(aiq__redis_target *t)
{
	aiq__redis_watch *w = t->watch;
	if (w == NULL)
		return;
	t->watch = NULL;
	if (w->pid == getpid()) {
		pthread_mutex_lock(&w->mu);
		w->stop = true;
		bool started = w->started;
		pthread_mutex_unlock(&w->mu);
		if (started) {
			ssize_t n = write(w->wake[1], "x", 1);
			(void)n;
			pthread_join(w->thread, NULL);
		}
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv);
	}
	close(w->wake[0]);
	close(w->wake[1]);
	free(w);
}

const char *aiq__redis_errstr(const redisContext *c)
{
	if (c == NULL)
		return "no connection";
	if (c->err == 0)
		return "no error";
	return c->errstr[0] ? c->errstr : "connection error";
}

bool aiq__redis_is_error(const redisReply *r, const char *prefix)
{
	return r && r->type == REDIS_REPLY_ERROR && r->str &&
	       strncmp(r->str, prefix, strlen(prefix)) == 0;
}

int aiq__redis_command(redisReply **out, redisContext *c, int code, int argc, const char **argv,
                       const size_t *lens)
{
	*out = NULL;
	if (c == NULL || c->err)
		return aiq__err(code, "Redis connection is down: %s", aiq__redis_errstr(c));
	redisReply *r = redisCommandArgv(c, argc, argv, lens);
	if (r == NULL)
		return aiq__err(code, "Redis %s failed: %s", argv[0], aiq__redis_errstr(c));
	*out = r;
	return AIQ_OK;
}

/* Connect to one data node (host:port or path), AUTH, SELECT and PING. */
static int connect_at(redisContext **out, const aiq__redis_target *t, const char *host, int port,
                      const char *path, int code, bool *hard)
{
	*out = NULL;
	if (hard)
		*hard = false;
	struct timeval ctv = ms_timeval(t->connect_timeout_ms);
	redisContext *c = path ? redisConnectUnixWithTimeout(path, ctv)
	                       : redisConnectWithTimeout(host, port, ctv);
	if (c == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory connecting to Redis");
	if (c->err) {
		int rc = t->nsentinels ? aiq__err(code, "cannot connect to Redis at %.200s:%d: %s",
		                                  host, port, aiq__redis_errstr(c))
		                       : aiq__err(code, "cannot connect to Redis at %.200s: %s",
		                                  t->redacted, aiq__redis_errstr(c));
		redisFree(c);
		return rc;
	}
	redisSetTimeout(c, ms_timeval(t->socket_timeout_ms));
	if (!path)
		redisEnableKeepAlive(c);
	redisReply *r = NULL;
	int rc = AIQ_OK;
	if (t->password) {
		const char *argv[3] = {"AUTH", t->user ? t->user : t->password, t->password};
		rc = aiq__redis_command(&r, c, code, t->user ? 3 : 2, argv, NULL);
		if (rc == AIQ_OK && r != NULL && r->type == REDIS_REPLY_ERROR) {
			rc = aiq__err(code, "Redis at %.200s refused the password: %s", t->redacted,
			              r->str);
			if (hard)
				*hard = true;
		}
		freeReplyObject(r);
		r = NULL;
	}
	if (rc == AIQ_OK && t->db != 0) {
		char db[16];
		snprintf(db, sizeof db, "%d", t->db);
		const char *argv[2] = {"SELECT", db};
		rc = aiq__redis_command(&r, c, code, 2, argv, NULL);
		if (rc == AIQ_OK && r != NULL && r->type == REDIS_REPLY_ERROR) {
			rc = aiq__err(code, "Redis at %.200s: SELECT %d failed: %s", t->redacted,
			              t->db, r->str);
			if (hard)
				*hard = true;
		}
		freeReplyObject(r);
		r = NULL;
	}
	if (rc == AIQ_OK) {
		/* Detect a server that demands a password we did not give. */
		const char *argv[1] = {"PING"};
		rc = aiq__redis_command(&r, c, code, 1, argv, NULL);
		if (rc == AIQ_OK && r != NULL && r->type == REDIS_REPLY_ERROR) {
			rc = aiq__err(code, "Redis at %.200s: %s", t->redacted, r->str);
			if (hard)
				*hard = aiq__redis_is_error(r, "NOAUTH") ||
				        aiq__redis_is_error(r, "WRONGPASS");
		}
		freeReplyObject(r);
	}
	if (rc != AIQ_OK) {
		redisFree(c);
		return rc;
	}
	*out = c;
	return AIQ_OK;
}

/* Outcome of asking the sentinels once. */
enum ask {
	ASK_OK,       /* connected to the confirmed master */
	ASK_NONE,     /* no sentinel answered */
	ASK_UNKNOWN,  /* every sentinel that answered knows no such master */
	ASK_UNUSABLE, /* a master was named but is unreachable or not a master */
	ASK_HARD      /* the master refused our password or database */
};

/* Append "host:port (why)" to a list of failures. */
static void note(char *buf, size_t size, const char *host, int port, const char *why)
{
	size_t used = strlen(buf);
	if (used + 1 >= size)
		return;
	snprintf(buf + used, size - used, "%s%s:%d (%s)", used ? ", " : "", host, port, why);
}

/* One sentinel: SENTINEL get-master-addr-by-name. 1 with host/port when it
 * names the master, 0 when it knows no such master, -1 when unreachable or
 * it answered an error (why says which). */
static int ask_sentinel(const aiq__redis_target *t, const aiq__redis_sentinel *s, char *host,
                        size_t hostlen, int *port, char *why, size_t whylen)
{
	int ms = t->connect_timeout_ms < 1000 ? t->connect_timeout_ms : 1000;
	redisContext *c = redisConnectWithTimeout(s->host, s->port, ms_timeval(ms));
	if (c == NULL) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	int ret = -1;
	redisReply *r = NULL;
	if (c->err) {
		snprintf(why, whylen, "%s", aiq__redis_errstr(c));
		goto out;
	}
	redisSetTimeout(c, ms_timeval(ms));
	if (t->sentinel_password) {
		r = redisCommand(c, "AUTH %s", t->sentinel_password);
		if (r == NULL || r->type == REDIS_REPLY_ERROR) {
			snprintf(why, whylen, "AUTH: %.200s", r ? r->str : aiq__redis_errstr(c));
			goto out;
		}
		freeReplyObject(r);
	}
	r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", t->master_name);
	if (r == NULL) {
		snprintf(why, whylen, "%s", aiq__redis_errstr(c));
	} else if (r->type == REDIS_REPLY_NIL) {
		snprintf(why, whylen, "knows no master named '%.100s'", t->master_name);
		ret = 0;
	} else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	           r->element[0]->type == REDIS_REPLY_STRING &&
	           r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len < hostlen) {
		char *end;
		long p = strtol(r->element[1]->str, &end, 10);
		if (*end != '\0' || p < 1 || p > 65535) {
			snprintf(why, whylen, "named a bad port '%.20s'", r->element[1]->str);
		} else {
			memcpy(host, r->element[0]->str, r->element[0]->len + 1);
			*port = (int)p;
			ret = 1;
		}
	} else {
		snprintf(why, whylen, "%.200s",
		         r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
	}
out:
	freeReplyObject(r);
	redisFree(c);
	return ret;
}

/* ROLE's first element is "master". */
static bool is_master(redisContext *c, char *why, size_t whylen)
{
	redisReply *r = redisCommand(c, "ROLE");
	bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
	          r->element[0]->type == REDIS_REPLY_STRING &&
	          strcmp(r->element[0]->str, "master") == 0;
	if (!ok)
		snprintf(why, whylen, "%s",
		         r == NULL                      ? aiq__redis_errstr(c)
		         : r->type == REDIS_REPLY_ERROR ? r->str
		         : r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
		                         r->element[0]->type == REDIS_REPLY_STRING
		                 ? "not the master (ROLE says it is a replica)"
		                 : "unexpected ROLE reply");
	freeReplyObject(r);
	return ok;
}

/* Ask every sentinel in turn until one names a master that ROLE confirms. */
static enum ask ask_round(redisContext **out, const aiq__redis_target *t, int code, char *fails,
                          size_t failslen, char *named, size_t namedlen)
{
	bool answered = false, named_one = false;
	fails[0] = '\0';
	for (size_t i = 0; i < t->nsentinels; i++) {
		const aiq__redis_sentinel *s = &t->sentinels[i];
		char host[256], why[600] = "";
		int port = 0;
		int a = ask_sentinel(t, s, host, sizeof host, &port, why, sizeof why);
		if (a <= 0) {
			answered |= a == 0;
			note(fails, failslen, s->host, s->port, why);
			continue;
		}
		answered = named_one = true;
		snprintf(named, namedlen, "%s:%d", host, port);
		bool hard = false;
		redisContext *c = NULL;
		if (connect_at(&c, t, host, port, NULL, code, &hard) != AIQ_OK) {
			snprintf(why, sizeof why, "master %.255s:%d: %.200s", host, port,
			         aiq_error_last());
			note(fails, failslen, s->host, s->port, why);
			if (hard)
				return ASK_HARD;
			continue;
		}
		char rwhy[200];
		if (!is_master(c, rwhy, sizeof rwhy)) {
			redisFree(c);
			snprintf(why, sizeof why, "master %.255s:%d: %.199s", host, port, rwhy);
			note(fails, failslen, s->host, s->port, why);
			continue;
		}
		*out = c;
		return ASK_OK;
	}
	return named_one ? ASK_UNUSABLE : answered ? ASK_UNKNOWN : ASK_NONE;
}

static int sentinel_connect(redisContext **out, const aiq__redis_target *t, int code, bool *hard)
{
	char fails[1024], named[300] = "";
	int64_t start = aiq__mono_ms(), nap = 100;
	watch_start(t);
	for (int round = 0;; round++) {
		uint64_t seen = watch_switches(t);
		enum ask a = ask_round(out, t, code, fails, sizeof fails, named, sizeof named);
		int64_t waited = aiq__mono_ms() - start;
		switch (a) {
		case ASK_OK:
			if (round > 0)
				aiq__log(AIQ_LOG_INFO,
				         "redis: Sentinel master '%s' is at %s (found after %lld "
				         "ms)",
				         t->master_name, named, (long long)waited);
			return AIQ_OK;
		case ASK_HARD:
			if (hard)
				*hard = true;
			return aiq__err(code, "Redis Sentinel master '%.100s': %s", t->master_name,
			                fails);
		case ASK_NONE:
			return aiq__err(code,
			                "no Redis Sentinel reachable for master '%.100s' (%.200s): "
			                "%s",
			                t->master_name, t->redacted, fails);
		case ASK_UNKNOWN:
			if (hard)
				*hard = true;
			return aiq__err(code,
			                "no Redis Sentinel knows a master named '%.100s' (check "
			                "redis.master_name or ?master_name=): %s",
			                t->master_name, fails);
		case ASK_UNUSABLE: break;
		}
		if (waited + nap > t->sentinel_wait_ms)
			return aiq__err(code,
			                "Redis Sentinel master '%.100s' not usable after %lld ms "
			                "(a failover may be under way): %s",
			                t->master_name, (long long)waited, fails);
		if (round == 0)
			aiq__log(AIQ_LOG_WARNING,
			         "redis: Sentinel master '%s' not usable (%s); asking again for up "
			         "to %d ms",
			         t->master_name, fails, t->sentinel_wait_ms);
		watch_wait(t, seen, nap); /* cut short by +switch-master */
		nap = nap * 2 > 1000 ? 1000 : nap * 2;
	}
}

int aiq__redis_connect(redisContext **out, const aiq__redis_target *t, int code, bool *hard)
{
	*out = NULL;
	if (hard)
		*hard = false;
	if (t->nsentinels > 0)
		return sentinel_connect(out, t, code, hard);
	return connect_at(out, t, t->host, t->port, t->path, code, hard);
}

bool aiq__redis_demoted(const aiq__redis_target *t, const redisReply *r)
{
	return t->nsentinels > 0 && r && r->type == REDIS_REPLY_ERROR && r->str &&
	       (strncmp(r->str, "READONLY", 8) == 0 || strstr(r->str, " READONLY ") != NULL ||
	        strstr(r->str, "-READONLY") != NULL);
}

int aiq__redis_wait_replicas(redisContext *c, const aiq__redis_target *t, int code)
{
	if (t->min_replicas <= 0)
		return AIQ_OK;
	char n[16], ms[16];
	snprintf(n, sizeof n, "%d", t->min_replicas);
	snprintf(ms, sizeof ms, "%d", t->wait_timeout_ms);
	const char *argv[] = {"WAIT", n, ms};
	redisReply *r = NULL;
	int rc = aiq__redis_command(&r, c, code, 3, argv, NULL);
	if (rc != AIQ_OK)
		return aiq__err(code,
		                "writes not confirmed by redis.min_replicas = %d replica(s): %s",
		                t->min_replicas, aiq_error_last());
	if (r->type != REDIS_REPLY_INTEGER)
		rc = aiq__err(code, "Redis WAIT failed: %.300s",
		              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
	else if (r->integer < t->min_replicas)
		rc = aiq__err(
		        code,
		        "only %lld of the %d replica(s) redis.min_replicas asks for confirmed "
		        "the write within %d ms (redis.wait_timeout_ms); it may be lost if "
		        "the master fails",
		        (long long)r->integer, t->min_replicas, t->wait_timeout_ms);
	freeReplyObject(r);
	return rc;
}

_Static_assert(AIQ__LUA_N <= AIQ__REDIS_MAX_SCRIPTS, "raise AIQ__REDIS_MAX_SCRIPTS");

void aiq__redis_conn_init(aiq__redis_conn *k, const aiq__redis_target *t, int code)
{
	memset(k, 0, sizeof *k);
	k->target = t;
	k->code = code;
}

void aiq__redis_conn_drop(aiq__redis_conn *k)
{
	if (k->c)
		redisFree(k->c);
	k->c = NULL;
	memset(k->sha, 0, sizeof k->sha);
}

bool aiq__redis_conn_broken(const aiq__redis_conn *k)
{
	return k->c == NULL || k->c->err != 0 || watch_switches(k->target) != k->switches;
}

const char *aiq__redis_conn_why(const aiq__redis_conn *k)
{
	if (k->c && k->c->err == 0 && watch_switches(k->target) != k->switches)
		return "the sentinels announced a new master";
	return aiq__redis_errstr(k->c);
}

int aiq__redis_conn_open(aiq__redis_conn *k, bool *hard)
{
	aiq__redis_conn_drop(k);
	/* Counted before asking: an announcement during the connect makes the
	 * connection look broken once more, never stale and trusted. */
	uint64_t switches = watch_switches(k->target);
	int rc = aiq__redis_connect(&k->c, k->target, k->code, hard);
	if (rc == AIQ_OK) {
		k->generation++;
		k->switches = switches;
	}
	return rc;
}

/* Drop a connection whose server turned replica, so the next use asks the
 * sentinels again. */
static void demoted(aiq__redis_conn *k, const char *why)
{
	aiq__log(AIQ_LOG_WARNING,
	         "redis: the server of Sentinel master '%s' is no longer the master (%.200s); "
	         "finding the master again",
	         k->target->master_name, why);
	aiq__redis_conn_drop(k);
}

int aiq__redis_conn_command(redisReply **out, aiq__redis_conn *k, int argc, const char **argv,
                            const size_t *lens)
{
	*out = NULL;
	int rc = k->code;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (aiq__redis_conn_broken(k) && (rc = aiq__redis_conn_open(k, NULL)) != AIQ_OK)
			return rc;
		rc = aiq__redis_command(out, k->c, k->code, argc, argv, lens);
		if (rc == AIQ_OK && attempt == 0 && aiq__redis_demoted(k->target, *out)) {
			/* The master became a replica: the command did not run. */
			demoted(k, (*out)->str);
			freeReplyObject(*out);
			*out = NULL;
			continue;
		}
		if (rc == AIQ_OK || !aiq__redis_conn_broken(k))
			return rc;
	}
	return rc;
}

int aiq__redis_conn_load(aiq__redis_conn *k, int id)
{
	if (k->sha[id][0] != '\0')
		return AIQ_OK;
	const aiq__redis_script *script = &aiq__redis_scripts[id];
	const char *argv[3] = {"SCRIPT", "LOAD", script->text};
	redisReply *r = NULL;
	int rc = aiq__redis_command(&r, k->c, k->code, 3, argv, NULL);
	if (rc != AIQ_OK)
		return rc;
	if (r->type != REDIS_REPLY_STRING || r->len != 40) {
		rc = aiq__err(k->code, "Redis could not load the %s script: %s", script->name,
		              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		freeReplyObject(r);
		return rc;
	}
	memcpy(k->sha[id], r->str, 40);
	k->sha[id][40] = '\0';
	freeReplyObject(r);
	return AIQ_OK;
}

/* EVALSHA's argv: the command, digest and key count, then the arguments. */
static int evalsha_argv(const char ***argv, size_t **argl, aiq__redis_conn *k, int id, char nk[16],
                        int nkeys, int nargs, const char **args, const size_t *lens)
{
	int argc = 3 + nargs;
	*argv = NULL;
	*argl = NULL;
	if (nargs < 0)
		return aiq__err(AIQ_EINVAL, "negative Redis script argument count");
	*argv = malloc((size_t)argc * sizeof **argv);
	*argl = malloc((size_t)argc * sizeof **argl);
	if (*argv == NULL || *argl == NULL) {
		free(*argv);
		free(*argl);
		*argv = NULL;
		*argl = NULL;
		return aiq__err(AIQ_ENOMEM, "out of memory running a Redis script");
	}
	snprintf(nk, 16, "%d", nkeys);
	(*argv)[0] = "EVALSHA";
	(*argv)[1] = k->sha[id];
	(*argv)[2] = nk;
	(*argl)[0] = 7;
	(*argl)[1] = 40;
	(*argl)[2] = strlen(nk);
	for (int i = 0; i < nargs; i++) {
		(*argv)[3 + i] = args[i];
		(*argl)[3 + i] = lens ? lens[i] : strlen(args[i]);
	}
	return argc;
}

int aiq__redis_conn_append_eval(aiq__redis_conn *k, int id, int nkeys, int nargs, const char **args,
                                const size_t *lens)
{
	const char **argv;
	size_t *argl;
	char nk[16];
	int argc = evalsha_argv(&argv, &argl, k, id, nk, nkeys, nargs, args, lens);
	if (argc < 0)
		return argc;
	int st = redisAppendCommandArgv(k->c, argc, argv, argl);
	free(argv);
	free(argl);
	return st == REDIS_OK ? AIQ_OK
	                      : aiq__err(AIQ_ENOMEM, "out of memory queueing a Redis script");
}

int aiq__redis_conn_eval_here(redisReply **out, aiq__redis_conn *k, int id, int nkeys, int nargs,
                              const char **args, const size_t *lens)
{
	*out = NULL;
	const aiq__redis_script *script = &aiq__redis_scripts[id];
	if (aiq__redis_conn_broken(k))
		return aiq__err(k->code, "Redis connection is down: %s", aiq__redis_errstr(k->c));
	redisReply *r = NULL;
	int rc = AIQ_OK;
	for (int attempt = 0; attempt < 2; attempt++) {
		if ((rc = aiq__redis_conn_load(k, id)) != AIQ_OK)
			return rc;
		const char **argv;
		size_t *argl;
		char nk[16];
		int argc = evalsha_argv(&argv, &argl, k, id, nk, nkeys, nargs, args, lens);
		if (argc < 0)
			return argc;
		rc = aiq__redis_command(&r, k->c, k->code, argc, argv, argl);
		free(argv);
		free(argl);
		if (rc != AIQ_OK)
			return rc;
		if (!aiq__redis_is_error(r, "NOSCRIPT"))
			break;
		/* The server lost its script cache (restart, SCRIPT FLUSH): the
		 * call did not run; load the script again and retry once. */
		freeReplyObject(r);
		r = NULL;
		k->sha[id][0] = '\0';
	}
	if (r == NULL)
		return aiq__err(k->code, "Redis keeps forgetting the %s script (NOSCRIPT)",
		                script->name);
	if (r->type == REDIS_REPLY_ERROR) {
		rc = aiq__err(k->code, "Redis %s script failed: %.300s", script->name, r->str);
		if (aiq__redis_demoted(k->target, r))
			demoted(k, r->str); /* broken now: aiq__redis_conn_eval retries */
		freeReplyObject(r);
		return rc;
	}
	*out = r;
	return AIQ_OK;
}

int aiq__redis_conn_eval(redisReply **out, aiq__redis_conn *k, int id, int nkeys, int nargs,
                         const char **args, const size_t *lens)
{
	*out = NULL;
	int rc = k->code;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (aiq__redis_conn_broken(k) && (rc = aiq__redis_conn_open(k, NULL)) != AIQ_OK)
			return rc;
		rc = aiq__redis_conn_eval_here(out, k, id, nkeys, nargs, args, lens);
		if (rc == AIQ_OK || !aiq__redis_conn_broken(k))
			return rc;
	}
	return rc;
}
