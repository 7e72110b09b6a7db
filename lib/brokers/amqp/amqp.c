/*
 * The RabbitMQ broker driver (librabbitmq-c): "amqp://", "amqps://", and kombu's
 * aliases "pyamqp://" and "librabbitmq://".
 * docs/rabbitmq.md is the user-facing description; this comment is the map.
 *
 * Links. A handle owns up to two connections ("links"), each single-threaded
 * and used only by the thread using the handle:
 *  - the control link: publishing (channel 1 in confirm mode), declarations,
 *    and queue.declare(passive)/purge/ping on channel 2, where a 404 only
 *    costs that scratch channel;
 *  - the consumer link, opened by consume(): declarations, basic.qos
 *    (per consumer), basic.consume, acks, all on channel 1.
 * Keeping publishes off the consuming connection means a confirm wait never
 * has to sort deliveries out of the frame stream.
 *
 * Topology, exactly as Celery 5.2 declares it: exchange "<q>" direct durable,
 * queue "<q>" durable (arguments only when amqp.queue_max_priority or
 * amqp.queue_type ask for them), queue.bind "<q>" to "<q>" with key "<q>".
 * Messages go to the default exchange with routing key "<q>", persistent.
 *
 * Confirms: publish() returns AIQ_OK only after basic.ack for that message.
 * It is published mandatory, so a message no queue took comes back as
 * basic.return (reported as AIQ_EBROKER even though an ack follows); a nack,
 * a channel or connection close, or no answer within amqp.confirm_timeout_ms
 * is AIQ_EBROKER too, and the link is dropped so the next call starts clean.
 *
 * Delays: publish(not_before_ms) parks the message in "<q>.delay.<2^k>", a
 * durable queue whose x-message-ttl is 2^k ms and which dead-letters into the
 * default exchange with routing key "<q>". k is the largest with 2^k <= the
 * remaining delay, so the message comes back EARLY by less than half the
 * delay, never late; every message in one delay queue has the same TTL, so
 * none waits behind another (no head-of-line blocking). The worker sees the
 * message's ETA still ahead and parks it again (a smaller bucket each hop,
 * log2(delay) hops at most) until it is within its ETA horizon. Broker-added
 * dead-lettering headers (x-death, x-first-death-*, x-last-death-*) are
 * removed when a message is received, so they never accumulate.
 *
 * Reconnects. Any connection or channel error drops the link. fetch() keeps
 * returning AIQ_ETIMEDOUT while it reconnects with capped exponential backoff
 * (100 ms doubling to 5 s), redeclares and resumes consuming; it fails hard
 * only for refused credentials or a vhost that stays refused for 15 s.
 * publish() reconnects at most once per call.
 *
 * Stale deliveries. Each delivery records the link generation it came from.
 * After a reconnect (including RabbitMQ closing the channel with
 * PRECONDITION_FAILED because a delivery stayed unacked past its
 * consumer_timeout) the old deliveries are stale: the broker has requeued
 * them. The worker may still be running them, so:
 *  - a redelivery (redelivered flag set) with the same task id and retries
 *    as a stale delivery this handle still tracks is held back, not handed
 *    to the worker: the task never runs twice in parallel in this process;
 *  - ack/reject/dead_letter of the stale delivery is applied to the held
 *    redelivery instead (or, if it has not arrived yet, remembered for up to
 *    10 minutes and applied when it does), and returns AIQ_OK with a warning.
 * So a task that outlives consumer_timeout runs once and its outcome is
 * stored once, as long as the redelivery comes back to this consumer. Another
 * process consuming the same queue may receive it and run it in parallel;
 * RabbitMQ 3.10 has no per-queue or per-consumer timeout, so the remedy there
 * is a consumer_timeout above the longest task.
 *
 * wakeup() only sets a flag that makes the next fetch() return at once; a
 * fetch() already blocked waits out its (short) timeout.
 */
#include "amqp_table.h"
#include "broker.h"
#include "config_int.h"
#include "url.h"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#define CH_MAIN         1 /* consuming, or confirmed publishing */
#define CH_SCRATCH      2 /* passive declares, purge (control link only) */
#define BACKOFF_MIN_MS  100
#define BACKOFF_MAX_MS  5000
#define AUTH_GRACE_MS   15000 /* a node that just started may refuse logins briefly */
#define SETTLED_KEEP_MS (10 * 60 * 1000)
#define DELAY_MIN_SHIFT 7  /* 128 ms: shorter delays go straight to the queue */
#define DELAY_MAX_SHIFT 30 /* ~12.4 days per hop */
#define MAX_ERRTEXT     256

extern const aiq__broker_ops aiq__amqp_broker_ops;

/* ---- endpoints ---------------------------------------------------------- */

typedef struct endpoint {
	bool ssl;
	char *host, *user, *pass, *vhost;
	int port;
	char *safe; /* redacted URL for messages */
} endpoint;

typedef struct settings {
	endpoint *eps;
	size_t neps;
	int heartbeat_s;
	int64_t connect_timeout_ms;
	int64_t confirm_timeout_ms;
	int max_priority;
	char *queue_type; /* "" or "classic" = no argument */
	char *ssl_cacert, *ssl_cert, *ssl_key;
	bool ssl_verify;
} settings;

/* ---- links -------------------------------------------------------------- */

typedef struct link {
	amqp_connection_state_t conn;
	bool up;
	bool scratch_open;
	uint64_t gen;     /* bumped on every (re)connect */
	uint64_t pub_seq; /* last publish sequence number on CH_MAIN (confirm mode) */
	bool confirm;     /* CH_MAIN is in confirm mode */
	char **declared;  /* queues declared on this connection */
	size_t ndeclared;
	size_t next_ep;   /* round-robin start for the next connect */
	int64_t retry_at; /* monotonic ms of the next reconnect attempt */
	int64_t backoff_ms;
	int64_t auth_fail_since; /* monotonic ms, 0 = none */
	bool outage_logged;
} link;

/* One delivery handed to the worker and not yet settled. */
enum settle { SETTLE_NONE, SETTLE_ACK, SETTLE_DROP };

typedef struct track {
	uint64_t seq; /* aiq__delivery.tag */
	uint64_t gen, amqp_tag;
	char *id; /* task id, NULL for messages without one */
	json_int_t retries;
	uint64_t shadow_gen, shadow_tag; /* redelivery held back (0 = none) */
	enum settle settled;             /* decided while no redelivery was held */
	int64_t settled_at;
	struct track *next;
} track;

typedef struct amqp_broker {
	aiq__broker base;
	settings set;
	link ctl, cons;
	bool consuming;
	char **queues;
	size_t nqueues;
	unsigned prefetch;
	track *tracks;
	uint64_t next_seq;
	atomic_bool wake;
	bool sent;            /* the last publish_confirmed() got its message onto the wire */
	int64_t keepalive_at; /* monotonic ms of the last heartbeat sent by keepalive() */
} amqp_broker;

/* ---- small helpers ------------------------------------------------------ */

static amqp_bytes_t bytes_of(const char *s)
{
	return amqp_cstring_bytes(s ? s : "");
}

static char *dup_bytes(amqp_bytes_t b)
{
	return aiq__strndup(b.bytes ? (const char *)b.bytes : "", b.len);
}

static void free_strv(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void settings_clear(settings *s)
{
	for (size_t i = 0; i < s->neps; i++) {
		free(s->eps[i].host);
		free(s->eps[i].user);
		free(s->eps[i].pass);
		free(s->eps[i].vhost);
		free(s->eps[i].safe);
	}
	free(s->eps);
	free(s->queue_type);
	free(s->ssl_cacert);
	free(s->ssl_cert);
	free(s->ssl_key);
	memset(s, 0, sizeof *s);
}

/* Text of an rpc reply, for messages. Never contains credentials. */
static void reply_text(char *buf, size_t size, amqp_rpc_reply_t r)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL: snprintf(buf, size, "ok"); break;
	case AMQP_RESPONSE_NONE: snprintf(buf, size, "no reply from the server"); break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(buf, size, "%s", amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD ||
		    r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			/* Both method structs share this layout. */
			const amqp_channel_close_t *c = r.reply.decoded;
			snprintf(buf, size, "server closed the %s: %u %.*s",
			         r.reply.id == AMQP_CONNECTION_CLOSE_METHOD ? "connection"
			                                                    : "channel",
			         c->reply_code,
			         (int)(c->reply_text.len > 200 ? 200 : c->reply_text.len),
			         (const char *)c->reply_text.bytes);
		} else {
			snprintf(buf, size, "unexpected server method 0x%08x", r.reply.id);
		}
		break;
	}
}

static uint16_t close_code(amqp_rpc_reply_t r)
{
	if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
	    (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD || r.reply.id == AMQP_CHANNEL_CLOSE_METHOD))
		return ((const amqp_channel_close_t *)r.reply.decoded)->reply_code;
	return 0;
}

/* ---- URL and settings --------------------------------------------------- */

/* True when v is one of the NULL-terminated words (ASCII case ignored). */
static bool one_of(const char *v, const char *const *words)
{
	for (; *words; words++)
		if (strcasecmp(v, *words) == 0)
			return true;
	return false;
}

static const char *const truthy[] = {"1", "true", "yes", "on", NULL};
static const char *const falsy[] = {"0", "false", "no", "off", NULL};
static const char *const verify_on[] = {"CERT_REQUIRED", "required", "CERT_OPTIONAL", "optional",
                                        NULL};
static const char *const verify_off[] = {"CERT_NONE", "none", NULL};
static const char *const login_methods[] = {"PLAIN", "AMQPLAIN", NULL};

/* A number of seconds (kombu takes floats) in [0, max], as milliseconds. */
static bool seconds_ms(const char *v, double max, int64_t *ms)
{
	char *end;
	double d = strtod(v, &end);
	if (*v == '\0' || *end != '\0' || !(d >= 0 && d <= max))
		return false;
	*ms = (int64_t)(d * 1000.0 + 0.5);
	return true;
}

static int bad_option(const endpoint *ep, const char *key, const char *val, const char *want)
{
	return aiq__err(AIQ_EINVAL, "AMQP URL '%.200s': %s must be %s, got '%.40s'", ep->safe, key,
	                want, val);
}

/* Query options of one AMQP URL: the Connection keywords kombu takes from a
 * URL that map to something this driver has. kombu refuses any other
 * keyword (TypeError), and so does this. */
static int url_options(endpoint *ep, const aiq__url *u, settings *s)
{
	for (size_t i = 0; i < u->nparams; i++) {
		const char *k = u->params[i].key, *v = u->params[i].value;
		int64_t ms;
		if (strcmp(k, "heartbeat") == 0) {
			if (!seconds_ms(v, 65535, &ms))
				return bad_option(ep, k, v, "a number of seconds from 0 to 65535");
			/* librabbitmq-c takes whole seconds; a fraction rounds up. */
			s->heartbeat_s = (int)((ms + 999) / 1000);
		} else if (strcmp(k, "connect_timeout") == 0) {
			if (!seconds_ms(v, 86400, &ms) || ms <= 0)
				return bad_option(ep, k, v, "a number of seconds above 0");
			s->connect_timeout_ms = ms;
		} else if (strcmp(k, "connection_timeout") == 0) {
			/* This library's spelling before kombu's, in milliseconds. */
			char *end;
			long long v2 = strtoll(v, &end, 10);
			if (*end != '\0' || v2 <= 0)
				return bad_option(ep, k, v, "a number of milliseconds above 0");
			s->connect_timeout_ms = v2;
		} else if (strcmp(k, "ssl") == 0) {
			if (one_of(v, truthy))
				ep->ssl = true;
			else if (!one_of(v, falsy))
				return bad_option(ep, k, v, "true or false");
		} else if (strcmp(k, "ssl_ca_certs") == 0 || strcmp(k, "ssl_certfile") == 0 ||
		           strcmp(k, "ssl_keyfile") == 0) {
			char **dst = strcmp(k, "ssl_ca_certs") == 0   ? &s->ssl_cacert
			             : strcmp(k, "ssl_certfile") == 0 ? &s->ssl_cert
			                                              : &s->ssl_key;
			char *copy = aiq__strdup(v);
			if (copy == NULL)
				return aiq__err(AIQ_ENOMEM, "out of memory");
			free(*dst);
			*dst = copy;
			ep->ssl = true; /* kombu: any ssl_* option turns TLS on */
		} else if (strcmp(k, "ssl_cert_reqs") == 0) {
			if (one_of(v, verify_on))
				s->ssl_verify = true;
			else if (one_of(v, verify_off))
				s->ssl_verify = false;
			else
				return bad_option(ep, k, v, "CERT_REQUIRED or CERT_NONE");
			ep->ssl = true;
		} else if (strcmp(k, "login_method") == 0) {
			/* Both send the same user name and password; librabbitmq-c
			 * speaks PLAIN. */
			if (!one_of(v, login_methods))
				return aiq__err(AIQ_EUNSUPPORTED,
				                "AMQP URL '%.200s': login_method '%.40s' is not "
				                "supported (PLAIN and AMQPLAIN are)",
				                ep->safe, v);
		} else if (strcmp(k, "insist") == 0) {
			/* AMQP 0-8's connection.open insist bit: RabbitMQ ignores it. */
		} else {
			return aiq__err(
			        AIQ_EINVAL,
			        "AMQP URL '%.200s': unknown option '%.40s' (kombu refuses it "
			        "too; this driver takes heartbeat, connect_timeout, ssl, "
			        "ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs, "
			        "login_method, insist)",
			        ep->safe, k);
		}
	}
	return AIQ_OK;
}

/* One endpoint, with kombu's rules (lib/url.h): amqp://host//, amqp://host
 * and amqp://host/ are vhost "/", %2f decodes, user and password default to
 * guest, the port to 5672 (5671 with TLS). */
static int parse_one_url(endpoint *ep, const char *text, settings *s)
{
	aiq__url u;
	int rc = aiq__url_parse(&u, text);
	ep->safe = u.redacted;
	u.redacted = NULL;
	if (rc == AIQ_OK && ep->safe == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK)
		ep->ssl = strcmp(u.scheme, "amqps") == 0;
	if (rc == AIQ_OK)
		rc = url_options(ep, &u, s);
	if (rc == AIQ_OK) {
		ep->port = u.port ? u.port : ep->ssl ? 5671 : 5672;
		/* kombu's pyamqp transport connects "localhost" as 127.0.0.1 */
		ep->host = aiq__strdup(u.host && strcmp(u.host, "localhost") != 0 ? u.host
		                                                                  : "127.0.0.1");
		ep->user = aiq__strdup(u.user ? u.user : "guest");
		ep->pass = aiq__strdup(u.password ? u.password : "guest");
		ep->vhost = aiq__strdup(u.path && *u.path ? u.path : "/");
		if (!ep->host || !ep->user || !ep->pass || !ep->vhost)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	aiq__url_clear(&u);
	return rc;
}

static int settings_init(settings *s, const char *url, const aiq_config *cfg)
{
	s->heartbeat_s = cfg ? (int)aiq__config_int(cfg, "amqp.heartbeat_s") : 60;
	s->connect_timeout_ms = cfg ? aiq__config_int(cfg, "amqp.connect_timeout_ms") : 5000;
	s->confirm_timeout_ms = cfg ? aiq__config_int(cfg, "amqp.confirm_timeout_ms") : 10000;
	s->max_priority = cfg ? (int)aiq__config_int(cfg, "amqp.queue_max_priority") : 0;
	s->ssl_verify = cfg ? aiq__config_int(cfg, "amqp.ssl_verify") != 0 : true;
	s->queue_type = aiq__strdup(cfg ? aiq__config_str(cfg, "amqp.queue_type") : "");
	s->ssl_cacert = aiq__strdup(cfg ? aiq__config_str(cfg, "amqp.ssl_cacert") : "");
	s->ssl_cert = aiq__strdup(cfg ? aiq__config_str(cfg, "amqp.ssl_cert") : "");
	s->ssl_key = aiq__strdup(cfg ? aiq__config_str(cfg, "amqp.ssl_key") : "");
	if (!s->queue_type || !s->ssl_cacert || !s->ssl_cert || !s->ssl_key)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	if (*s->queue_type && strcmp(s->queue_type, "classic") != 0 &&
	    strcmp(s->queue_type, "quorum") != 0)
		return aiq__err(AIQ_EINVAL,
		                "amqp.queue_type must be 'classic' or 'quorum', got '%.40s'",
		                s->queue_type);
	if (strcmp(s->queue_type, "quorum") == 0 && s->max_priority > 0)
		return aiq__err(AIQ_EINVAL,
		                "amqp.queue_max_priority cannot be used with quorum queues");
	/* Several URLs separated by ';' (failover). */
	const char *p = url;
	while (*p) {
		size_t n = aiq__url_segment_len(p);
		if (n > 0) {
			char *one = aiq__strndup(p, n);
			endpoint *eps = realloc(s->eps, (s->neps + 1) * sizeof *eps);
			if (one == NULL || eps == NULL) {
				free(one);
				return aiq__err(AIQ_ENOMEM, "out of memory");
			}
			s->eps = eps;
			memset(&s->eps[s->neps], 0, sizeof s->eps[0]);
			s->neps++;
			int rc = parse_one_url(&s->eps[s->neps - 1], one, s);
			free(one);
			if (rc != AIQ_OK)
				return rc;
		}
		p += n;
		if (*p == ';')
			p++;
	}
	if (s->neps == 0)
		return aiq__err(AIQ_EINVAL, "empty AMQP broker URL");
	return AIQ_OK;
}

/* ---- link lifecycle ----------------------------------------------------- */

static void link_drop(link *l, bool polite)
{
	if (l->conn) {
		if (polite && l->up)
			amqp_connection_close(l->conn, AMQP_REPLY_SUCCESS);
		amqp_destroy_connection(l->conn);
	}
	l->conn = NULL;
	l->up = false;
	l->scratch_open = false;
	l->confirm = false;
	l->pub_seq = 0;
	free_strv(l->declared, l->ndeclared);
	l->declared = NULL;
	l->ndeclared = 0;
}

/* Answer a server-initiated close so the connection winds down cleanly. */
static void ack_close(amqp_connection_state_t conn, amqp_channel_t ch, amqp_method_number_t id)
{
	if (id == AMQP_CHANNEL_CLOSE_METHOD) {
		amqp_channel_close_ok_t ok = {0};
		amqp_send_method(conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
	} else if (id == AMQP_CONNECTION_CLOSE_METHOD) {
		amqp_connection_close_ok_t ok = {0};
		amqp_send_method(conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
	}
}

/* Connect to one endpoint. On failure fills `why`; *auth is set when the
 * server refused the credentials or the vhost. */
static int connect_one(amqp_broker *b, link *l, const endpoint *ep, char *why, size_t whysz,
                       bool *auth)
{
	const settings *s = &b->set;
	amqp_connection_state_t conn = amqp_new_connection();
	if (conn == NULL) {
		snprintf(why, whysz, "out of memory");
		return AIQ_ENOMEM;
	}
	amqp_socket_t *sock;
	if (ep->ssl) {
		sock = amqp_ssl_socket_new(conn);
		if (sock) {
			amqp_ssl_socket_set_verify_peer(sock, s->ssl_verify);
			amqp_ssl_socket_set_verify_hostname(sock, s->ssl_verify);
			if (*s->ssl_cacert && amqp_ssl_socket_set_cacert(sock, s->ssl_cacert)) {
				snprintf(why, whysz, "cannot load CA certificate '%.150s'",
				         s->ssl_cacert);
				amqp_destroy_connection(conn);
				*auth = true; /* a configuration error: do not retry forever */
				return AIQ_EINVAL;
			}
			if (*s->ssl_cert &&
			    amqp_ssl_socket_set_key(sock, s->ssl_cert,
			                            *s->ssl_key ? s->ssl_key : s->ssl_cert)) {
				snprintf(why, whysz, "cannot load client certificate/key '%.150s'",
				         s->ssl_cert);
				amqp_destroy_connection(conn);
				*auth = true;
				return AIQ_EINVAL;
			}
		}
	} else {
		sock = amqp_tcp_socket_new(conn);
	}
	if (sock == NULL) {
		snprintf(why, whysz, "cannot create a socket");
		amqp_destroy_connection(conn);
		return AIQ_EBROKER;
	}
	struct timeval tv = {(time_t)(s->connect_timeout_ms / 1000),
	                     (suseconds_t)(s->connect_timeout_ms % 1000) * 1000};
	int st = amqp_socket_open_noblock(sock, ep->host, ep->port, &tv);
	if (st != AMQP_STATUS_OK) {
		snprintf(why, whysz, "cannot connect: %s", amqp_error_string2(st));
		amqp_destroy_connection(conn);
		return AIQ_EBROKER;
	}
	amqp_set_handshake_timeout(conn, &tv);
	amqp_set_rpc_timeout(conn, &tv);
	amqp_rpc_reply_t r =
	        amqp_login(conn, ep->vhost, AMQP_DEFAULT_MAX_CHANNELS, AMQP_DEFAULT_FRAME_SIZE,
	                   s->heartbeat_s, AMQP_SASL_METHOD_PLAIN, ep->user, ep->pass);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		char t[MAX_ERRTEXT];
		reply_text(t, sizeof t, r);
		uint16_t code = close_code(r);
		/* 403 ACCESS_REFUSED (credentials), 530 NOT_ALLOWED (vhost). A
		 * server that drops the socket during login also means refused
		 * credentials on RabbitMQ without authentication_failure_close. */
		*auth = code == AMQP_ACCESS_REFUSED || code == AMQP_NOT_ALLOWED;
		snprintf(why, whysz, "login as '%.60s' on vhost '%.60s' failed: %s", ep->user,
		         ep->vhost, t);
		if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION)
			ack_close(conn, 0, r.reply.id);
		amqp_destroy_connection(conn);
		return AIQ_EBROKER;
	}
	amqp_channel_open(conn, CH_MAIN);
	r = amqp_get_rpc_reply(conn);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		char t[MAX_ERRTEXT];
		reply_text(t, sizeof t, r);
		snprintf(why, whysz, "opening a channel failed: %s", t);
		amqp_destroy_connection(conn);
		return AIQ_EBROKER;
	}
	l->conn = conn;
	l->up = true;
	l->gen++;
	l->pub_seq = 0;
	l->confirm = false;
	return AIQ_OK;
}

/* Try every endpoint once, starting after the last one used. */
static int link_connect(amqp_broker *b, link *l, bool *auth)
{
	char why[MAX_ERRTEXT * 2] = "", last[1024] = "";
	size_t used = 0;
	int rc = AIQ_EBROKER;
	*auth = false;
	link_drop(l, false);
	for (size_t i = 0; i < b->set.neps; i++) {
		size_t k = (l->next_ep + i) % b->set.neps;
		const endpoint *ep = &b->set.eps[k];
		bool a = false;
		rc = connect_one(b, l, ep, why, sizeof why, &a);
		if (rc == AIQ_OK) {
			l->next_ep = (k + 1) % b->set.neps; /* round-robin on the next reconnect */
			return AIQ_OK;
		}
		*auth = *auth || a;
		if (used < sizeof last) {
			int n = snprintf(last + used, sizeof last - used, "%s%.200s: %s",
			                 used ? "; " : "", ep->safe, why);
			used += n > 0 ? (size_t)n : 0;
		}
	}
	l->next_ep = (l->next_ep + 1) % b->set.neps;
	return aiq__err(rc == AIQ_ENOMEM ? AIQ_ENOMEM : AIQ_EBROKER,
	                "cannot connect to RabbitMQ: %s", last);
}

/* A channel-level error on `ch`: answer the close, reopen the channel. If
 * that fails too, the whole link goes. */
static void channel_recover(link *l, amqp_channel_t ch, amqp_rpc_reply_t r)
{
	if (!l->up)
		return;
	if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
	    r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
		ack_close(l->conn, ch, r.reply.id);
		if (ch == CH_SCRATCH) {
			l->scratch_open = false;
			return;
		}
		/* The main channel: reopen and lose the confirm mode. Declarations
		 * made on it still stand (they are broker state). */
		amqp_channel_open(l->conn, ch);
		if (amqp_get_rpc_reply(l->conn).reply_type == AMQP_RESPONSE_NORMAL) {
			l->confirm = false;
			l->pub_seq = 0;
			return;
		}
	} else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
		ack_close(l->conn, 0, r.reply.id);
	}
	link_drop(l, false);
}

/* Run after an RPC call: AIQ_OK, or AIQ_EBROKER with `what` and the reason. */
static int rpc_check(link *l, amqp_channel_t ch, const char *what)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(l->conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return AIQ_OK;
	char t[MAX_ERRTEXT];
	reply_text(t, sizeof t, r);
	int rc = aiq__err(AIQ_EBROKER, "%s failed: %s", what, t);
	channel_recover(l, ch, r);
	return rc;
}

static int ensure_scratch(link *l)
{
	if (l->scratch_open)
		return AIQ_OK;
	amqp_channel_open(l->conn, CH_SCRATCH);
	int rc = rpc_check(l, CH_SCRATCH, "opening a channel");
	if (rc == AIQ_OK)
		l->scratch_open = true;
	return rc;
}

/* ---- topology ----------------------------------------------------------- */

static bool is_declared(const link *l, const char *q)
{
	for (size_t i = 0; i < l->ndeclared; i++)
		if (strcmp(l->declared[i], q) == 0)
			return true;
	return false;
}

static void mark_declared(link *l, const char *q)
{
	char **v = realloc(l->declared, (l->ndeclared + 1) * sizeof *v);
	if (v == NULL)
		return; /* only a cache: it will be declared again next time */
	l->declared = v;
	if ((v[l->ndeclared] = aiq__strdup(q)))
		l->ndeclared++;
}

/* Exchange, queue and binding for a work queue, as Celery declares them. */
static int declare_work_queue(amqp_broker *b, link *l, const char *q)
{
	if (is_declared(l, q))
		return AIQ_OK;
	amqp_table_entry_t args[2];
	int nargs = 0;
	if (b->set.max_priority > 0) {
		args[nargs].key = amqp_cstring_bytes("x-max-priority");
		args[nargs].value.kind = AMQP_FIELD_KIND_I32; /* py-amqp writes 'I' */
		args[nargs].value.value.i32 = b->set.max_priority;
		nargs++;
	}
	if (strcmp(b->set.queue_type, "quorum") == 0) {
		args[nargs].key = amqp_cstring_bytes("x-queue-type");
		args[nargs].value.kind = AMQP_FIELD_KIND_UTF8;
		args[nargs].value.value.bytes = amqp_cstring_bytes("quorum");
		nargs++;
	}
	amqp_table_t qargs = {nargs, nargs ? args : NULL};
	char what[600];
	snprintf(what, sizeof what, "declaring exchange '%.300s'", q);
	amqp_exchange_declare(l->conn, CH_MAIN, bytes_of(q), amqp_cstring_bytes("direct"), 0, 1, 0,
	                      0, amqp_empty_table);
	int rc = rpc_check(l, CH_MAIN, what);
	if (rc == AIQ_OK) {
		snprintf(
		        what, sizeof what,
		        "declaring queue '%.300s' (an existing queue must have the same arguments: "
		        "check amqp.queue_max_priority and amqp.queue_type)",
		        q);
		amqp_queue_declare(l->conn, CH_MAIN, bytes_of(q), 0, 1, 0, 0, qargs);
		rc = rpc_check(l, CH_MAIN, what);
	}
	if (rc == AIQ_OK) {
		snprintf(what, sizeof what, "binding queue '%.300s'", q);
		amqp_queue_bind(l->conn, CH_MAIN, bytes_of(q), bytes_of(q), bytes_of(q),
		                amqp_empty_table);
		rc = rpc_check(l, CH_MAIN, what);
	}
	if (rc == AIQ_OK)
		mark_declared(l, q);
	return rc;
}

/* A plain durable queue with optional arguments (dead letters, delays). */
static int declare_plain_queue(link *l, const char *q, amqp_table_t args)
{
	if (is_declared(l, q))
		return AIQ_OK;
	char what[400];
	snprintf(what, sizeof what, "declaring queue '%.300s'", q);
	amqp_queue_declare(l->conn, CH_MAIN, bytes_of(q), 0, 1, 0, 0, args);
	int rc = rpc_check(l, CH_MAIN, what);
	if (rc == AIQ_OK)
		mark_declared(l, q);
	return rc;
}

static char *delay_queue_name(const char *q, int shift)
{
	return aiq__asprintf("%s.delay.%lld", q, (long long)1 << shift);
}

static int declare_delay_queue(link *l, const char *q, int shift, const char *name)
{
	amqp_table_entry_t args[3];
	args[0].key = amqp_cstring_bytes("x-message-ttl");
	args[0].value.kind = AMQP_FIELD_KIND_I32;
	args[0].value.value.i32 = (int32_t)((int64_t)1 << shift);
	args[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
	args[1].value.kind = AMQP_FIELD_KIND_UTF8;
	args[1].value.value.bytes = amqp_cstring_bytes("");
	args[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
	args[2].value.kind = AMQP_FIELD_KIND_UTF8;
	args[2].value.value.bytes = bytes_of(q);
	amqp_table_t t = {3, args};
	return declare_plain_queue(l, name, t);
}

/* ---- control link: connect on demand ------------------------------------ */

/* Make sure the control link is usable: drain what the server sent since the
 * last call (a close, a heartbeat timeout), then reconnect if needed. */
static int ctl_ready(amqp_broker *b)
{
	link *l = &b->ctl;
	while (l->up) {
		amqp_frame_t f;
		struct timeval zero = {0, 0};
		int st = amqp_simple_wait_frame_noblock(l->conn, &f, &zero);
		if (st == AMQP_STATUS_TIMEOUT)
			break;
		if (st != AMQP_STATUS_OK) {
			aiq__log(AIQ_LOG_INFO, "amqp: control connection lost (%s); reconnecting",
			         amqp_error_string2(st));
			link_drop(l, false);
			break;
		}
		if (f.frame_type == AMQP_FRAME_METHOD &&
		    (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
		     f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD)) {
			ack_close(l->conn, f.channel, f.payload.method.id);
			aiq__log(AIQ_LOG_INFO, "amqp: server closed the control connection; "
			                       "reconnecting");
			link_drop(l, false);
		}
		/* Anything else (a late confirm after a timeout) is stale. */
	}
	if (l->up)
		return AIQ_OK;
	bool auth;
	return link_connect(b, l, &auth);
}

/* ---- publishing ----------------------------------------------------------- */

static int props_from_wire(amqp_basic_properties_t *p, const aiq__wire *msg, amqp_pool_t *pool,
                           bool keep_expiration)
{
	memset(p, 0, sizeof *p);
	p->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
	            AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
	            AMQP_BASIC_PRIORITY_FLAG;
	p->content_type = bytes_of(msg->content_type ? msg->content_type : "application/json");
	p->content_encoding = bytes_of(msg->content_encoding ? msg->content_encoding : "utf-8");
	p->delivery_mode = AMQP_DELIVERY_PERSISTENT;
	p->priority = 0;
	int rc = aiq__amqp_table_from_json(&p->headers, msg->headers, pool);
	if (rc != AIQ_OK)
		return rc;
	const json_t *props = msg->properties;
	if (props == NULL)
		return AIQ_OK;
	const json_t *v;
	if ((v = json_object_get(props, "correlation_id")) && json_is_string(v)) {
		p->_flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
		p->correlation_id = bytes_of(json_string_value(v));
	}
	if ((v = json_object_get(props, "reply_to")) && json_is_string(v)) {
		p->_flags |= AMQP_BASIC_REPLY_TO_FLAG;
		p->reply_to = bytes_of(json_string_value(v));
	}
	if ((v = json_object_get(props, "priority")) && json_is_integer(v)) {
		json_int_t pr = json_integer_value(v);
		p->priority = (uint8_t)(pr < 0 ? 0 : pr > 255 ? 255 : pr);
	}
	if ((v = json_object_get(props, "delivery_mode")) && json_is_integer(v) &&
	    json_integer_value(v) == 1)
		p->delivery_mode = AMQP_DELIVERY_NONPERSISTENT;
	if (keep_expiration && (v = json_object_get(props, "expiration")) && json_is_string(v)) {
		p->_flags |= AMQP_BASIC_EXPIRATION_FLAG;
		p->expiration = bytes_of(json_string_value(v));
	}
	return AIQ_OK;
}

/* Wait for the confirm of publish `seq` on the control link. */
static int wait_confirm(amqp_broker *b, uint64_t seq, const char *queue)
{
	link *l = &b->ctl;
	int64_t deadline = aiq__mono_ms() + b->set.confirm_timeout_ms;
	bool returned = false;
	char why[MAX_ERRTEXT] = "";
	for (;;) {
		int64_t left = deadline - aiq__mono_ms();
		if (left <= 0) {
			link_drop(l, false); /* its state is unknown now */
			return aiq__err(
			        AIQ_EBROKER,
			        "no publisher confirm from RabbitMQ for a message to '%.200s' "
			        "within %lld ms; it may or may not have been queued",
			        queue, (long long)b->set.confirm_timeout_ms);
		}
		struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
		amqp_frame_t f;
		int st = amqp_simple_wait_frame_noblock(l->conn, &f, &tv);
		if (st == AMQP_STATUS_TIMEOUT)
			continue;
		if (st != AMQP_STATUS_OK) {
			link_drop(l, false);
			return aiq__err(
			        AIQ_EBROKER,
			        "connection to RabbitMQ lost before the message to '%.200s' was "
			        "confirmed (%s); it may or may not have been queued",
			        queue, amqp_error_string2(st));
		}
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		amqp_method_number_t id = f.payload.method.id;
		if (id == AMQP_BASIC_ACK_METHOD || id == AMQP_BASIC_NACK_METHOD) {
			uint64_t tag;
			bool multiple;
			if (id == AMQP_BASIC_ACK_METHOD) {
				const amqp_basic_ack_t *a = f.payload.method.decoded;
				tag = a->delivery_tag;
				multiple = a->multiple;
			} else {
				const amqp_basic_nack_t *n = f.payload.method.decoded;
				tag = n->delivery_tag;
				multiple = n->multiple;
			}
			if (tag == seq || (multiple && tag >= seq)) {
				if (id == AMQP_BASIC_NACK_METHOD)
					return aiq__err(AIQ_EBROKER,
					                "RabbitMQ refused the message to '%.200s' "
					                "(basic.nack)",
					                queue);
				if (returned)
					return aiq__err(AIQ_EBROKER,
					                "RabbitMQ could not route the message to "
					                "'%.200s': %s",
					                queue, why);
				return AIQ_OK;
			}
			continue; /* an older publish's confirm */
		}
		if (id == AMQP_BASIC_RETURN_METHOD) {
			const amqp_basic_return_t *r = f.payload.method.decoded;
			snprintf(why, sizeof why, "%u %.*s", r->reply_code,
			         (int)(r->reply_text.len > 200 ? 200 : r->reply_text.len),
			         (const char *)r->reply_text.bytes);
			returned = true;
			amqp_message_t m;
			amqp_rpc_reply_t rr = amqp_read_message(l->conn, f.channel, &m, 0);
			if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
				link_drop(l, false);
				return aiq__err(
				        AIQ_EBROKER,
				        "RabbitMQ returned the message to '%.200s' (%s) and the "
				        "connection failed",
				        queue, why);
			}
			amqp_destroy_message(&m);
			continue;
		}
		if (id == AMQP_CHANNEL_CLOSE_METHOD || id == AMQP_CONNECTION_CLOSE_METHOD) {
			const amqp_channel_close_t *c = f.payload.method.decoded;
			int rc = aiq__err(
			        AIQ_EBROKER,
			        "RabbitMQ closed the %s while publishing to '%.200s': %u %.*s",
			        id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection", queue,
			        c->reply_code,
			        (int)(c->reply_text.len > 200 ? 200 : c->reply_text.len),
			        (const char *)c->reply_text.bytes);
			ack_close(l->conn, f.channel, id);
			link_drop(l, false);
			return rc;
		}
	}
}

/* Publish on the control link to the default exchange, routing key `rk`,
 * and wait for the broker's confirm. */
static int publish_confirmed(amqp_broker *b, const char *rk, const char *queue_for_msgs,
                             const amqp_basic_properties_t *props, const aiq__wire *msg)
{
	link *l = &b->ctl;
	if (!l->confirm) {
		amqp_confirm_select(l->conn, CH_MAIN);
		int rc = rpc_check(l, CH_MAIN, "enabling publisher confirms");
		if (rc != AIQ_OK)
			return rc;
		l->confirm = true;
		l->pub_seq = 0;
	}
	amqp_bytes_t body = {msg->body_len, msg->body};
	b->sent = false;
	int st = amqp_basic_publish(l->conn, CH_MAIN, amqp_empty_bytes, bytes_of(rk), 1, 0, props,
	                            body);
	if (st != AMQP_STATUS_OK) {
		link_drop(l, false);
		return aiq__err(AIQ_EBROKER, "publishing to '%.200s' failed: %s", queue_for_msgs,
		                amqp_error_string2(st));
	}
	b->sent = true;
	uint64_t seq = ++l->pub_seq;
	return wait_confirm(b, seq, queue_for_msgs);
}

static int delay_shift(int64_t delay_ms)
{
	int k = DELAY_MIN_SHIFT;
	while (k < DELAY_MAX_SHIFT && ((int64_t)1 << (k + 1)) <= delay_ms)
		k++;
	return k;
}

static int publish_once(amqp_broker *b, const char *queue, const aiq__wire *msg,
                        int64_t not_before_ms)
{
	int rc = ctl_ready(b);
	if (rc != AIQ_OK)
		return rc;
	link *l = &b->ctl;
	rc = declare_work_queue(b, l, queue);
	if (rc != AIQ_OK)
		return rc;
	int64_t delay = not_before_ms > 0 ? not_before_ms - aiq__now_ms() : 0;
	char *rk = NULL;
	if (delay >= ((int64_t)1 << DELAY_MIN_SHIFT)) {
		int shift = delay_shift(delay);
		rk = delay_queue_name(queue, shift);
		if (rk == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		rc = declare_delay_queue(l, queue, shift, rk);
		if (rc != AIQ_OK) {
			free(rk);
			return rc;
		}
	}
	amqp_pool_t pool;
	init_amqp_pool(&pool, 4096);
	amqp_basic_properties_t props;
	/* In a delay queue a per-message TTL would cut the delay short; the
	 * expires header still stops the task once it arrives. */
	rc = props_from_wire(&props, msg, &pool, rk == NULL);
	if (rc == AIQ_OK)
		rc = publish_confirmed(b, rk ? rk : queue, queue, &props, msg);
	empty_amqp_pool(&pool);
	free(rk);
	return rc;
}

static int amqp_publish(aiq__broker *base, const char *queue, const aiq__wire *msg,
                        int64_t not_before_ms)
{
	amqp_broker *b = (amqp_broker *)base;
	if (queue == NULL || *queue == '\0' || msg == NULL)
		return aiq__err(AIQ_EINVAL, "publish needs a queue name and a message");
	if (strlen(queue) > 200)
		return aiq__err(AIQ_EINVAL, "queue name longer than 200 bytes");
	/* A link that died while idle is only noticed here; a message that was
	 * never sent can safely go out once more on a fresh connection. */
	bool was_up = b->ctl.up;
	b->sent = false;
	int rc = publish_once(b, queue, msg, not_before_ms);
	if (rc == AIQ_EBROKER && was_up && !b->ctl.up && !b->sent) {
		/* The message never left: retry once on a fresh connection. */
		rc = publish_once(b, queue, msg, not_before_ms);
	}
	return rc;
}

/* ---- batch publishing ----------------------------------------------------- */

/* One batch on the control link. The k-th message sent is msgs[sent[k]]
 * and has publish sequence number first_seq + k; done[] and returned[] are
 * indexed by k. */
typedef struct batch {
	amqp_broker *b;
	const char *queue;
	const aiq__wire *const *msgs;
	int *status;
	size_t *sent;
	bool *done;                 /* confirm (or failure) seen */
	bool *returned;             /* basic.return seen: fails even though an ack follows */
	size_t n, nsent, ndone, lo; /* lo: no undone message below it */
	uint64_t first_seq;
	size_t nacked, nnacked, nreturned, nlost, nunsent;
	char why[MAX_ERRTEXT * 2]; /* first failure */
} batch;

static void batch_settle(batch *t, size_t k, int rc)
{
	if (t->done[k])
		return;
	t->done[k] = true;
	t->ndone++;
	t->status[t->sent[k]] = rc;
	while (t->lo < t->nsent && t->done[t->lo])
		t->lo++;
}

static void batch_note(batch *t, const char *fmt, ...) AIQ__PRINTF(2, 3);

/* Remember the first failure's reason. */
static void batch_note(batch *t, const char *fmt, ...)
{
	if (t->why[0] != '\0')
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->why, sizeof t->why, fmt, ap);
	va_end(ap);
}

/* Every sent message without a confirm fails: its fate is unknown. */
static void batch_lose(batch *t, const char *why)
{
	batch_note(t, "%s; unconfirmed messages may or may not have been queued", why);
	for (size_t k = t->lo; k < t->nsent; k++) {
		if (!t->done[k]) {
			t->nlost++;
			batch_settle(t, k, AIQ_EBROKER);
		}
	}
}

/* A confirm for sequence number `tag`, alone or with all before it. */
static void batch_confirm(batch *t, uint64_t tag, bool multiple, bool ack)
{
	if (t->nsent == 0 || tag < t->first_seq)
		return; /* before this batch: stale */
	uint64_t top = tag - t->first_seq;
	if (top >= t->nsent)
		top = t->nsent - 1; /* not ours: cannot happen on a fresh sequence */
	size_t from = multiple ? t->lo : (size_t)top;
	for (size_t k = from; k <= (size_t)top; k++) {
		if (t->done[k])
			continue;
		if (!ack) {
			t->nnacked++;
			batch_note(t, "%s", "RabbitMQ refused a message (basic.nack)");
			batch_settle(t, k, AIQ_EBROKER);
		} else if (t->returned[k]) {
			batch_settle(t, k, AIQ_EBROKER);
		} else {
			t->nacked++;
			batch_settle(t, k, AIQ_OK);
		}
	}
}

/* basic.return carries no sequence number: find the message by its
 * correlation id (the task id) among those not yet confirmed. When that is
 * ambiguous, every unconfirmed message counts as returned: a refusal may be
 * over-reported, never an acceptance. */
static void batch_returned(batch *t, const amqp_message_t *m)
{
	const amqp_basic_properties_t *p = &m->properties;
	size_t match = SIZE_MAX, nmatch = 0;
	if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) {
		for (size_t k = t->lo; k < t->nsent; k++) {
			if (t->done[k] || t->returned[k])
				continue;
			const json_t *props = t->msgs[t->sent[k]]->properties;
			const char *cid = json_string_value(
			        props ? json_object_get(props, "correlation_id") : NULL);
			if (cid && strlen(cid) == p->correlation_id.len &&
			    memcmp(cid, p->correlation_id.bytes, p->correlation_id.len) == 0) {
				match = k;
				nmatch++;
			}
		}
	}
	if (nmatch == 1) {
		t->returned[match] = true;
		t->nreturned++;
		return;
	}
	for (size_t k = t->lo; k < t->nsent; k++) {
		if (!t->done[k] && !t->returned[k]) {
			t->returned[k] = true;
			t->nreturned++;
		}
	}
}

/* Handle one frame on the control link while a batch waits. Returns false
 * when the link is gone (every unconfirmed message has failed). */
static bool batch_frame(batch *t, const amqp_frame_t *f)
{
	link *l = &t->b->ctl;
	if (f->frame_type != AMQP_FRAME_METHOD)
		return true;
	amqp_method_number_t id = f->payload.method.id;
	if (id == AMQP_BASIC_ACK_METHOD) {
		const amqp_basic_ack_t *a = f->payload.method.decoded;
		batch_confirm(t, a->delivery_tag, a->multiple, true);
	} else if (id == AMQP_BASIC_NACK_METHOD) {
		const amqp_basic_nack_t *a = f->payload.method.decoded;
		batch_confirm(t, a->delivery_tag, a->multiple, false);
	} else if (id == AMQP_BASIC_RETURN_METHOD) {
		const amqp_basic_return_t *r = f->payload.method.decoded;
		char why[MAX_ERRTEXT];
		snprintf(why, sizeof why, "%u %.*s", r->reply_code,
		         (int)(r->reply_text.len > 200 ? 200 : r->reply_text.len),
		         (const char *)r->reply_text.bytes);
		batch_note(t, "RabbitMQ could not route a message: %.200s", why);
		amqp_message_t m;
		amqp_rpc_reply_t rr = amqp_read_message(l->conn, f->channel, &m, 0);
		if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
			link_drop(l, false);
			batch_lose(t, "the connection failed while reading a returned message");
			return false;
		}
		batch_returned(t, &m);
		amqp_destroy_message(&m);
	} else if (id == AMQP_CHANNEL_CLOSE_METHOD || id == AMQP_CONNECTION_CLOSE_METHOD) {
		const amqp_channel_close_t *c = f->payload.method.decoded;
		char why[MAX_ERRTEXT];
		snprintf(why, sizeof why, "RabbitMQ closed the %s: %u %.*s",
		         id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection", c->reply_code,
		         (int)(c->reply_text.len > 200 ? 200 : c->reply_text.len),
		         (const char *)c->reply_text.bytes);
		ack_close(l->conn, f->channel, id);
		link_drop(l, false);
		batch_lose(t, why);
		return false;
	}
	return true;
}

/* Read what the server already sent, without waiting (keeps confirms and
 * returns flowing while a long batch is written). */
static bool batch_drain(batch *t)
{
	link *l = &t->b->ctl;
	while (l->up) {
		amqp_frame_t f;
		struct timeval zero = {0, 0};
		int st = amqp_simple_wait_frame_noblock(l->conn, &f, &zero);
		if (st == AMQP_STATUS_TIMEOUT)
			return true;
		if (st != AMQP_STATUS_OK) {
			link_drop(l, false);
			char why[MAX_ERRTEXT];
			snprintf(why, sizeof why, "connection to RabbitMQ lost (%s)",
			         amqp_error_string2(st));
			batch_lose(t, why);
			return false;
		}
		if (!batch_frame(t, &f))
			return false;
	}
	return false;
}

/* Wait until every sent message is confirmed; the confirm timeout runs from
 * the last progress, so a long batch is not cut short while confirms flow. */
static void batch_wait(batch *t)
{
	link *l = &t->b->ctl;
	int64_t timeout = t->b->set.confirm_timeout_ms;
	int64_t deadline = aiq__mono_ms() + timeout;
	while (t->ndone < t->nsent && l->up) {
		int64_t left = deadline - aiq__mono_ms();
		if (left <= 0) {
			link_drop(l, false); /* its state is unknown now */
			char why[MAX_ERRTEXT];
			snprintf(why, sizeof why,
			         "no publisher confirm from RabbitMQ within %lld ms",
			         (long long)timeout);
			batch_lose(t, why);
			return;
		}
		struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
		amqp_frame_t f;
		int st = amqp_simple_wait_frame_noblock(l->conn, &f, &tv);
		if (st == AMQP_STATUS_TIMEOUT)
			continue;
		if (st != AMQP_STATUS_OK) {
			link_drop(l, false);
			char why[MAX_ERRTEXT];
			snprintf(why, sizeof why, "connection to RabbitMQ lost (%s)",
			         amqp_error_string2(st));
			batch_lose(t, why);
			return;
		}
		size_t before = t->ndone;
		if (!batch_frame(t, &f))
			return;
		if (t->ndone > before)
			deadline = aiq__mono_ms() + timeout;
	}
	if (t->ndone < t->nsent)
		batch_lose(t, "connection to RabbitMQ lost");
}

#define BATCH_DRAIN_EVERY 64

/* One attempt: declare, publish every message, wait for the confirms.
 * Messages not sent get AIQ_EBROKER. */
static int batch_once(batch *t, const int64_t *not_before_ms)
{
	amqp_broker *b = t->b;
	link *l = &b->ctl;
	int rc = ctl_ready(b);
	if (rc == AIQ_OK)
		rc = declare_work_queue(b, l, t->queue);
	/* Routing keys: the queue, or a delay queue declared before publishing
	 * starts, so no declaration's reply has to be sorted out of confirms. */
	char **rks = calloc(t->n, sizeof *rks);
	if (rc == AIQ_OK && rks == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	int64_t now = aiq__now_ms();
	for (size_t k = 0; rc == AIQ_OK && k < t->n; k++) {
		int64_t delay = not_before_ms && not_before_ms[k] > 0 ? not_before_ms[k] - now : 0;
		if (delay < ((int64_t)1 << DELAY_MIN_SHIFT))
			continue;
		int shift = delay_shift(delay);
		if ((rks[k] = delay_queue_name(t->queue, shift)) == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		else
			rc = declare_delay_queue(l, t->queue, shift, rks[k]);
	}
	if (rc == AIQ_OK && !l->confirm) {
		amqp_confirm_select(l->conn, CH_MAIN);
		rc = rpc_check(l, CH_MAIN, "enabling publisher confirms");
		if (rc == AIQ_OK) {
			l->confirm = true;
			l->pub_seq = 0;
		}
	}
	if (rc != AIQ_OK) {
		for (size_t k = 0; k < t->n; k++)
			t->status[k] = rc;
		batch_note(t, "%s", aiq_error_last());
		goto out;
	}

	t->first_seq = l->pub_seq + 1;
	amqp_pool_t pool;
	init_amqp_pool(&pool, 4096);
	size_t k = 0;
	for (; k < t->n; k++) {
		amqp_basic_properties_t props;
		const aiq__wire *msg = t->msgs[k];
		/* In a delay queue a per-message TTL would cut the delay short. */
		int prc = props_from_wire(&props, msg, &pool, rks[k] == NULL);
		if (prc != AIQ_OK) {
			/* Not sent; sequence numbers follow what was sent. */
			t->status[k] = prc;
			batch_note(t, "%s", aiq_error_last());
			recycle_amqp_pool(&pool);
			continue;
		}
		amqp_bytes_t body = {msg->body_len, msg->body};
		int st = amqp_basic_publish(l->conn, CH_MAIN, amqp_empty_bytes,
		                            bytes_of(rks[k] ? rks[k] : t->queue), 1, 0, &props,
		                            body);
		recycle_amqp_pool(&pool);
		t->sent[t->nsent++] = k;
		if (st != AMQP_STATUS_OK) {
			/* Partly written, perhaps: its fate is unknown, like the
			 * unconfirmed ones before it. */
			link_drop(l, false);
			char why[MAX_ERRTEXT];
			snprintf(why, sizeof why, "publishing failed: %s", amqp_error_string2(st));
			batch_lose(t, why);
			k++;
			break;
		}
		b->sent = true;
		l->pub_seq++;
		if (t->nsent % BATCH_DRAIN_EVERY == 0 && !batch_drain(t)) {
			k++;
			break;
		}
	}
	for (; k < t->n; k++) { /* never sent: the link went down */
		t->status[k] = AIQ_EBROKER;
		t->nunsent++;
	}
	empty_amqp_pool(&pool);
	if (l->up)
		batch_wait(t);
	rc = AIQ_OK;
	for (size_t i = 0; i < t->n && rc == AIQ_OK; i++)
		rc = t->status[i];
out:
	for (size_t i = 0; rks && i < t->n; i++)
		free(rks[i]);
	free(rks);
	return rc;
}

static int amqp_publish_batch(aiq__broker *base, const char *queue, const aiq__wire *const *msgs,
                              size_t n, const int64_t *not_before_ms, int *status)
{
	amqp_broker *b = (amqp_broker *)base;
	for (size_t k = 0; k < n; k++)
		status[k] = AIQ_EBROKER;
	if (queue == NULL || *queue == '\0' || msgs == NULL)
		return aiq__err(AIQ_EINVAL, "publish needs a queue name and messages");
	if (strlen(queue) > 200)
		return aiq__err(AIQ_EINVAL, "queue name longer than 200 bytes");
	if (n == 0)
		return AIQ_OK;
	batch t = {.b = b, .queue = queue, .msgs = msgs, .status = status, .n = n};
	t.sent = calloc(n, sizeof *t.sent);
	t.done = calloc(n, sizeof *t.done);
	t.returned = calloc(n, sizeof *t.returned);
	int rc;
	if (t.sent == NULL || t.done == NULL || t.returned == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory publishing a batch");
		for (size_t k = 0; k < n; k++)
			status[k] = rc;
		goto out;
	}
	/* As publish(): a link that died while idle is only noticed here, and a
	 * batch of which nothing left can safely go out once more. */
	bool was_up = b->ctl.up;
	b->sent = false;
	rc = batch_once(&t, not_before_ms);
	if (rc == AIQ_EBROKER && was_up && !b->ctl.up && !b->sent) {
		memset(t.done, 0, n * sizeof *t.done);
		memset(t.returned, 0, n * sizeof *t.returned);
		t.nsent = t.ndone = t.lo = 0;
		t.nacked = t.nnacked = t.nreturned = t.nlost = t.nunsent = 0;
		t.why[0] = '\0';
		rc = batch_once(&t, not_before_ms);
	}
	if (rc != AIQ_OK) {
		size_t failed = 0;
		for (size_t k = 0; k < n; k++)
			failed += status[k] != AIQ_OK;
		rc = aiq__err(rc,
		              "%zu of %zu messages to '%.200s' not accepted (%zu refused, %zu "
		              "returned, %zu unconfirmed, %zu not sent): %s",
		              failed, n, queue, t.nnacked, t.nreturned, t.nlost, t.nunsent,
		              t.why[0] ? t.why : "unknown failure");
	}
out:
	free(t.sent);
	free(t.done);
	free(t.returned);
	return rc;
}

/* ---- consuming ------------------------------------------------------------ */

static int start_consuming(amqp_broker *b)
{
	link *l = &b->cons;
	for (size_t i = 0; i < b->nqueues; i++) {
		int rc = declare_work_queue(b, l, b->queues[i]);
		if (rc != AIQ_OK)
			return rc;
	}
	/* Per consumer (global=false): what quorum queues support. */
	amqp_basic_qos(l->conn, CH_MAIN, 0, (uint16_t)(b->prefetch > 65535 ? 65535 : b->prefetch),
	               0);
	int rc = rpc_check(l, CH_MAIN, "setting the prefetch (basic.qos)");
	for (size_t i = 0; rc == AIQ_OK && i < b->nqueues; i++) {
		char what[300];
		snprintf(what, sizeof what, "consuming queue '%.200s'", b->queues[i]);
		amqp_basic_consume(l->conn, CH_MAIN, bytes_of(b->queues[i]), amqp_empty_bytes, 0, 0,
		                   0, amqp_empty_table);
		rc = rpc_check(l, CH_MAIN, what);
	}
	return rc;
}

/* Connect the consumer link, declare and consume. Hard errors (refused
 * credentials for long enough, bad TLS files) come back as AIQ_EBROKER with
 * *hard set; anything else schedules another attempt. */
static int cons_connect(amqp_broker *b, bool *hard)
{
	link *l = &b->cons;
	*hard = false;
	bool auth = false;
	int rc = link_connect(b, l, &auth);
	if (rc == AIQ_OK) {
		rc = start_consuming(b);
		if (rc != AIQ_OK) {
			link_drop(l, false);
			/* A declaration conflict or a missing permission does not fix
			 * itself: report it. */
			*hard = strstr(aiq_error_last(), "PRECONDITION_FAILED") != NULL ||
			        strstr(aiq_error_last(), "ACCESS_REFUSED") != NULL;
			return rc;
		}
		l->auth_fail_since = 0;
		l->backoff_ms = 0;
		return AIQ_OK;
	}
	if (auth) {
		int64_t now = aiq__mono_ms();
		if (l->auth_fail_since == 0)
			l->auth_fail_since = now;
		*hard = now - l->auth_fail_since >= AUTH_GRACE_MS;
	} else {
		l->auth_fail_since = 0;
	}
	return rc;
}

static int amqp_consume(aiq__broker *base, const char *const *queues, size_t nqueues,
                        unsigned prefetch)
{
	amqp_broker *b = (amqp_broker *)base;
	if (queues == NULL || nqueues == 0)
		return aiq__err(AIQ_EINVAL, "consume needs at least one queue");
	if (b->consuming)
		return aiq__err(AIQ_ESTATE, "this broker handle is already consuming");
	b->queues = calloc(nqueues, sizeof *b->queues);
	if (b->queues == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	for (size_t i = 0; i < nqueues; i++) {
		if (queues[i] == NULL || *queues[i] == '\0' || strlen(queues[i]) > 200)
			return aiq__err(AIQ_EINVAL, "invalid queue name");
		if (!(b->queues[i] = aiq__strdup(queues[i])))
			return aiq__err(AIQ_ENOMEM, "out of memory");
		b->nqueues = i + 1;
	}
	b->prefetch = prefetch ? prefetch : 65535;
	/* The first connection must work: a wrong URL or password is reported
	 * now, not retried forever in fetch(). */
	bool auth = false;
	int rc = link_connect(b, &b->cons, &auth);
	if (rc == AIQ_OK) {
		rc = start_consuming(b);
		if (rc != AIQ_OK)
			link_drop(&b->cons, false);
	}
	if (rc != AIQ_OK)
		return rc;
	b->consuming = true;
	return AIQ_OK;
}

static track *track_find(amqp_broker *b, uint64_t seq, track ***prevp)
{
	track **pp = &b->tracks;
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->seq == seq) {
			if (prevp)
				*prevp = pp;
			return *pp;
		}
	}
	return NULL;
}

static void track_unlink(track **pp)
{
	track *t = *pp;
	*pp = t->next;
	free(t->id);
	free(t);
}

/* Forget settled stale deliveries whose redelivery never came back to us
 * (another consumer took it, or it was purged). */
static void tracks_gc(amqp_broker *b)
{
	int64_t now = aiq__mono_ms();
	track **pp = &b->tracks;
	while (*pp) {
		if ((*pp)->settled != SETTLE_NONE && now - (*pp)->settled_at > SETTLED_KEEP_MS)
			track_unlink(pp);
		else
			pp = &(*pp)->next;
	}
}

static void cons_lost(amqp_broker *b, const char *why)
{
	link *l = &b->cons;
	if (l->up || l->conn) {
		aiq__log(
		        AIQ_LOG_WARNING,
		        "amqp: consumer connection lost (%s); unacknowledged deliveries go back to "
		        "the queue; reconnecting",
		        why);
	}
	link_drop(l, false);
	l->retry_at = aiq__mono_ms(); /* first attempt at once */
	l->backoff_ms = 0;
	l->outage_logged = false;
}

/* Headers the broker adds when it dead-letters (our delay queues). */
static void strip_death_headers(json_t *h)
{
	if (!json_is_object(h))
		return;
	static const char *const names[] = {
	        "x-death",
	        "x-first-death-exchange",
	        "x-first-death-queue",
	        "x-first-death-reason",
	        "x-last-death-exchange",
	        "x-last-death-queue",
	        "x-last-death-reason",
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		json_object_del(h, names[i]);
}

/* The properties of an undecodable delivery exactly as received, so its dead
 * letter carries the original bytes (a JSON form would have to alter them). */
typedef struct raw_props {
	amqp_pool_t pool;
	amqp_basic_properties_t p;
} raw_props;

static void raw_props_free(void *data)
{
	raw_props *r = data;
	if (r == NULL)
		return;
	empty_amqp_pool(&r->pool);
	free(r);
}

static bool pool_dup(amqp_bytes_t *dst, amqp_bytes_t src, amqp_pool_t *pool)
{
	*dst = amqp_empty_bytes;
	if (src.len == 0)
		return true;
	amqp_pool_alloc_bytes(pool, src.len, dst);
	if (dst->bytes == NULL)
		return false;
	memcpy(dst->bytes, src.bytes, src.len);
	return true;
}

static raw_props *raw_props_clone(const amqp_basic_properties_t *src)
{
	raw_props *r = calloc(1, sizeof *r);
	if (r == NULL)
		return NULL;
	init_amqp_pool(&r->pool, 4096);
	r->p = *src;
	bool ok = true;
#define DUP(flag, field)                                                                           \
	if (ok && (src->_flags & flag))                                                            \
		ok = pool_dup(&r->p.field, src->field, &r->pool);
	DUP(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type)
	DUP(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding)
	DUP(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id)
	DUP(AMQP_BASIC_REPLY_TO_FLAG, reply_to)
	DUP(AMQP_BASIC_EXPIRATION_FLAG, expiration)
	DUP(AMQP_BASIC_MESSAGE_ID_FLAG, message_id)
	DUP(AMQP_BASIC_TYPE_FLAG, type)
	DUP(AMQP_BASIC_USER_ID_FLAG, user_id)
	DUP(AMQP_BASIC_APP_ID_FLAG, app_id)
	DUP(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id)
#undef DUP
	r->p.headers = amqp_empty_table;
	if (ok && (src->_flags & AMQP_BASIC_HEADERS_FLAG))
		ok = amqp_table_clone(&src->headers, &r->p.headers, &r->pool) == AMQP_STATUS_OK;
	if (!ok) {
		raw_props_free(r);
		return NULL;
	}
	return r;
}

/* Set pr[key] to a string property. Bytes JSON cannot hold (not UTF-8, or
 * a NUL) are replaced by '?', and `first` (when still empty) says which
 * property it was. AIQ_ENOMEM only. */
static int property_to_json(json_t *pr, const char *key, amqp_bytes_t b, char *first,
                            size_t firstsz)
{
	char *s = malloc(b.len + 1);
	if (s == NULL)
		return AIQ_ENOMEM;
	if (b.len)
		memcpy(s, b.bytes, b.len);
	s[b.len] = '\0';
	bool clean = strlen(s) == b.len && aiq__utf8_valid(s, b.len);
	if (!clean) {
		if (first[0] == '\0')
			snprintf(first, firstsz,
			         "AMQP property '%s' is not valid UTF-8 text (%zu bytes)", key,
			         b.len);
		for (size_t i = 0; i < b.len; i++)
			if (s[i] == '\0')
				s[i] = '?';
	}
	json_t *v = clean ? json_string(s) : aiq__json_string_lossy(s);
	free(s);
	return v != NULL && json_object_set_new(pr, key, v) == 0 ? AIQ_OK : AIQ_ENOMEM;
}

/* Decode a delivery into *w. Anything the message itself gets wrong (header
 * table or a string property that JSON cannot hold) is not an error: *why
 * receives the reason, the field is kept in a lossy form, and the worker
 * dead-letters the delivery. Only AIQ_ENOMEM is returned as an error. */
static int wire_from_message(aiq__wire *w, const amqp_message_t *m, char **why)
{
	memset(w, 0, sizeof *w);
	*why = NULL;
	const amqp_basic_properties_t *p = &m->properties;
	int rc = AIQ_OK;
	char first[400] = "";
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		if (aiq__amqp_table_to_json(&w->headers, &p->headers) != AIQ_OK) {
			snprintf(first, sizeof first, "%s", aiq_error_last());
			w->headers = json_object();
		}
	} else {
		w->headers = json_object();
	}
	strip_death_headers(w->headers);
	w->properties = json_object();
	if (w->headers == NULL || w->properties == NULL)
		rc = AIQ_ENOMEM;
	json_t *pr = w->properties;
	/* A property with bytes JSON cannot hold (not UTF-8, or NUL) is kept
	 * in a lossy form and marks the delivery undecodable. */
#define PSTR(flag, field, key)                                                                     \
	if (rc == AIQ_OK && (p->_flags & flag))                                                    \
		rc = property_to_json(pr, key, p->field, first, sizeof first);
	PSTR(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id, "correlation_id")
	PSTR(AMQP_BASIC_REPLY_TO_FLAG, reply_to, "reply_to")
	PSTR(AMQP_BASIC_EXPIRATION_FLAG, expiration, "expiration")
	PSTR(AMQP_BASIC_MESSAGE_ID_FLAG, message_id, "message_id")
	PSTR(AMQP_BASIC_TYPE_FLAG, type, "type")
	PSTR(AMQP_BASIC_USER_ID_FLAG, user_id, "user_id")
	PSTR(AMQP_BASIC_APP_ID_FLAG, app_id, "app_id")
#undef PSTR
	if (rc == AIQ_OK)
		json_object_set_new(pr, "delivery_mode",
		                    json_integer((p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
		                                         ? p->delivery_mode
		                                         : 1));
	if (rc == AIQ_OK)
		json_object_set_new(
		        pr, "priority",
		        json_integer((p->_flags & AMQP_BASIC_PRIORITY_FLAG) ? p->priority : 0));
	if (rc == AIQ_OK && (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG))
		json_object_set_new(pr, "timestamp", json_integer((json_int_t)p->timestamp));
	if (rc == AIQ_OK && (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) &&
	    !(w->content_type = dup_bytes(p->content_type)))
		rc = AIQ_ENOMEM;
	if (rc == AIQ_OK && (p->_flags & AMQP_BASIC_CONTENT_ENCODING_FLAG) &&
	    !(w->content_encoding = dup_bytes(p->content_encoding)))
		rc = AIQ_ENOMEM;
	/* A NUL would cut "application/json\0..." to a type it is not. */
	if (rc == AIQ_OK && first[0] == '\0' &&
	    ((w->content_type && strlen(w->content_type) != p->content_type.len) ||
	     (w->content_encoding && strlen(w->content_encoding) != p->content_encoding.len)))
		snprintf(first, sizeof first, "AMQP property '%s' contains a NUL byte",
		         w->content_type && strlen(w->content_type) != p->content_type.len
		                 ? "content_type"
		                 : "content_encoding");
	if (rc == AIQ_OK) {
		w->body_len = m->body.len;
		w->body = malloc(m->body.len ? m->body.len : 1);
		if (w->body == NULL)
			rc = AIQ_ENOMEM;
		else if (m->body.len)
			memcpy(w->body, m->body.bytes, m->body.len);
	}
	if (rc == AIQ_OK && first[0] != '\0' && (*why = aiq__strdup(first)) == NULL)
		rc = AIQ_ENOMEM;
	if (rc != AIQ_OK) {
		aiq__wire_clear(w);
		return aiq__err(AIQ_ENOMEM, "out of memory receiving a message");
	}
	return AIQ_OK;
}

static const char *header_id(const aiq__wire *w, json_int_t *retries)
{
	*retries = 0;
	const json_t *id = json_object_get(w->headers, "id");
	const json_t *r = json_object_get(w->headers, "retries");
	if (json_is_integer(r))
		*retries = json_integer_value(r);
	return json_is_string(id) ? json_string_value(id) : NULL;
}

/* A redelivery of a stale delivery we still track: hold it back or settle it.
 * Returns true when the delivery was absorbed. */
static bool absorb_redelivery(amqp_broker *b, const amqp_envelope_t *env, const aiq__wire *w)
{
	if (!env->redelivered)
		return false;
	json_int_t retries;
	const char *id = header_id(w, &retries);
	if (id == NULL)
		return false;
	link *l = &b->cons;
	for (track **pp = &b->tracks; *pp; pp = &(*pp)->next) {
		track *t = *pp;
		if (t->gen == l->gen || t->shadow_gen == l->gen || t->id == NULL ||
		    t->retries != retries || strcmp(t->id, id) != 0)
			continue;
		if (t->settled == SETTLE_ACK || t->settled == SETTLE_DROP) {
			bool ack = t->settled == SETTLE_ACK;
			aiq__log(AIQ_LOG_WARNING,
			         "amqp: task %s came back after it had finished here; %s the "
			         "redelivery",
			         id, ack ? "acknowledging" : "rejecting");
			if (ack)
				amqp_basic_ack(l->conn, CH_MAIN, env->delivery_tag, 0);
			else
				amqp_basic_reject(l->conn, CH_MAIN, env->delivery_tag, 0);
			track_unlink(pp);
			return true;
		}
		aiq__log(AIQ_LOG_WARNING,
		         "amqp: task %s was redelivered while it still runs here (consumer_timeout "
		         "or a reconnect); holding the redelivery until it finishes",
		         id);
		t->shadow_gen = l->gen;
		t->shadow_tag = env->delivery_tag;
		return true;
	}
	return false;
}

/* Read the frame that interrupted amqp_consume_message and act on it. */
static void handle_other_frame(amqp_broker *b)
{
	link *l = &b->cons;
	amqp_frame_t f;
	struct timeval zero = {0, 0};
	int st = amqp_simple_wait_frame_noblock(l->conn, &f, &zero);
	if (st == AMQP_STATUS_TIMEOUT)
		return;
	if (st != AMQP_STATUS_OK) {
		cons_lost(b, amqp_error_string2(st));
		return;
	}
	if (f.frame_type != AMQP_FRAME_METHOD)
		return;
	amqp_method_number_t id = f.payload.method.id;
	if (id == AMQP_CHANNEL_CLOSE_METHOD || id == AMQP_CONNECTION_CLOSE_METHOD) {
		const amqp_channel_close_t *c = f.payload.method.decoded;
		char why[MAX_ERRTEXT];
		snprintf(why, sizeof why, "server closed the %s: %u %.*s",
		         id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection", c->reply_code,
		         (int)(c->reply_text.len > 200 ? 200 : c->reply_text.len),
		         (const char *)c->reply_text.bytes);
		ack_close(l->conn, f.channel, id);
		cons_lost(b, why);
	} else if (id == AMQP_BASIC_CANCEL_METHOD) {
		/* The queue was deleted: redeclare and consume again. */
		cons_lost(b, "the server cancelled the consumer");
	}
}

/* While the worker is at its prefetch bound it does not fetch, and nothing
 * else is sent while long tasks run: send the heartbeats RabbitMQ expects
 * ourselves (server heartbeats are read, and checked, by the next fetch). */
static void amqp_keepalive(aiq__broker *base)
{
	amqp_broker *b = (amqp_broker *)base;
	link *l = &b->cons;
	if (!b->consuming || !l->up || b->set.heartbeat_s <= 0)
		return;
	int64_t now = aiq__mono_ms();
	if (now - b->keepalive_at < (int64_t)b->set.heartbeat_s * 1000 / 3)
		return;
	b->keepalive_at = now;
	amqp_frame_t f;
	memset(&f, 0, sizeof f);
	f.frame_type = AMQP_FRAME_HEARTBEAT;
	f.channel = 0;
	if (amqp_send_frame(l->conn, &f) != AMQP_STATUS_OK)
		cons_lost(b, "sending a heartbeat failed");
}

static int amqp_fetch(aiq__broker *base, aiq__delivery **out, int64_t timeout_ms)
{
	amqp_broker *b = (amqp_broker *)base;
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	if (!b->consuming)
		return aiq__err(AIQ_ESTATE, "fetch before consume");
	if (atomic_exchange(&b->wake, false))
		return AIQ_ETIMEDOUT;
	link *l = &b->cons;
	int64_t deadline = aiq__mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	tracks_gc(b);
	for (;;) {
		int64_t now = aiq__mono_ms();
		if (!l->up) {
			if (now < l->retry_at) {
				return aiq__err(AIQ_ETIMEDOUT, "reconnecting to RabbitMQ");
			}
			bool hard;
			int rc = cons_connect(b, &hard);
			if (rc != AIQ_OK) {
				if (hard)
					return rc;
				if (!l->outage_logged) {
					aiq__log(AIQ_LOG_WARNING, "amqp: %s; retrying",
					         aiq_error_last());
					l->outage_logged = true;
				}
				l->backoff_ms = l->backoff_ms ? l->backoff_ms * 2 : BACKOFF_MIN_MS;
				if (l->backoff_ms > BACKOFF_MAX_MS)
					l->backoff_ms = BACKOFF_MAX_MS;
				l->retry_at = aiq__mono_ms() + l->backoff_ms;
				return aiq__err(AIQ_ETIMEDOUT, "reconnecting to RabbitMQ");
			}
			aiq__log(AIQ_LOG_WARNING, "amqp: consumer reconnected; consuming again");
			l->outage_logged = false;
		}
		int64_t left = deadline - aiq__mono_ms();
		if (left < 0)
			left = 0;
		struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
		amqp_envelope_t env;
		amqp_maybe_release_buffers(l->conn);
		amqp_rpc_reply_t r = amqp_consume_message(l->conn, &env, &tv, 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
			    r.library_error == AMQP_STATUS_TIMEOUT)
				return aiq__err(AIQ_ETIMEDOUT, "no message");
			if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
			    r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
				handle_other_frame(b);
			} else {
				char t[MAX_ERRTEXT];
				reply_text(t, sizeof t, r);
				if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION)
					ack_close(l->conn, 0, r.reply.id);
				cons_lost(b, t);
			}
			if (aiq__mono_ms() >= deadline)
				return aiq__err(AIQ_ETIMEDOUT, "no message");
			continue;
		}
		aiq__delivery *d = calloc(1, sizeof *d);
		track *t = calloc(1, sizeof *t);
		int rc = d && t ? wire_from_message(&d->wire, &env.message, &d->undecodable)
		                : AIQ_ENOMEM;
		if (rc == AIQ_OK && d->undecodable) {
			aiq__log(AIQ_LOG_WARNING, "amqp: undecodable delivery on '%.*s': %s",
			         (int)env.routing_key.len, (const char *)env.routing_key.bytes,
			         d->undecodable);
			d->driver_data = raw_props_clone(&env.message.properties);
			d->driver_free = raw_props_free;
			if (d->driver_data == NULL)
				rc = AIQ_ENOMEM;
		}
		if (rc == AIQ_OK && absorb_redelivery(b, &env, &d->wire)) {
			amqp_destroy_envelope(&env);
			aiq__delivery_free(d);
			free(t);
			if (aiq__mono_ms() >= deadline)
				return aiq__err(AIQ_ETIMEDOUT, "no message");
			continue;
		}
		if (rc == AIQ_OK) {
			char *q = dup_bytes(env.routing_key);
			d->queue = q;
			json_int_t retries;
			const char *id = header_id(&d->wire, &retries);
			t->id = id ? aiq__strdup(id) : NULL;
			if (!q || (id && !t->id))
				rc = AIQ_ENOMEM;
			t->retries = retries;
		}
		if (rc != AIQ_OK) {
			/* Out of memory: give it back rather than lose it, and let the
			 * worker try again later (not an error of the connection). */
			amqp_basic_reject(l->conn, CH_MAIN, env.delivery_tag, 1);
			amqp_destroy_envelope(&env);
			aiq__delivery_free(d);
			if (t)
				free(t->id);
			free(t);
			aiq__log(AIQ_LOG_WARNING, "amqp: out of memory receiving a message; it "
			                          "went back to the queue");
			return aiq__err(AIQ_ETIMEDOUT, "out of memory receiving a message");
		}
		/* Deliveries of the default exchange carry the queue as routing key;
		 * a message that came back from a delay queue or another exchange
		 * may not: use the consumer's queue then. */
		if (b->nqueues == 1 || strcmp(d->queue, "") == 0) {
			bool known = false;
			for (size_t i = 0; i < b->nqueues; i++)
				known = known || strcmp(b->queues[i], d->queue) == 0;
			if (!known) {
				char *q = aiq__strdup(b->queues[0]);
				if (q) {
					free(d->queue);
					d->queue = q;
				}
			}
		}
		d->redelivered = env.redelivered != 0;
		t->seq = ++b->next_seq;
		t->gen = l->gen;
		t->amqp_tag = env.delivery_tag;
		t->next = b->tracks;
		b->tracks = t;
		d->tag = t->seq;
		amqp_destroy_envelope(&env);
		*out = d;
		return AIQ_OK;
	}
}

static void amqp_wakeup(aiq__broker *base)
{
	atomic_store(&((amqp_broker *)base)->wake, true);
}

/* Settle a tracked delivery: ack (requeue ignored) or reject. */
static int settle(amqp_broker *b, aiq__delivery *d, bool ack, bool requeue)
{
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "no delivery");
	track **pp = NULL;
	track *t = track_find(b, d->tag, &pp);
	if (t == NULL)
		return aiq__err(AIQ_EINVAL, "unknown or already settled delivery");
	link *l = &b->cons;
	const char *verb = ack ? "ack" : requeue ? "requeue" : "reject";
	if (l->up && t->gen == l->gen) {
		int st = ack ? amqp_basic_ack(l->conn, CH_MAIN, t->amqp_tag, 0)
		             : amqp_basic_reject(l->conn, CH_MAIN, t->amqp_tag, requeue);
		if (st == AMQP_STATUS_OK) {
			track_unlink(pp);
			return AIQ_OK;
		}
		cons_lost(b, amqp_error_string2(st));
		/* fall through: the delivery is stale now */
	}
	if (t->shadow_gen != 0 && l->up && t->shadow_gen == l->gen) {
		aiq__log(AIQ_LOG_WARNING,
		         "amqp: %s of task %s applies to its held redelivery (the original "
		         "delivery was on a closed channel)",
		         verb, t->id ? t->id : "?");
		if (ack)
			amqp_basic_ack(l->conn, CH_MAIN, t->shadow_tag, 0);
		else
			amqp_basic_reject(l->conn, CH_MAIN, t->shadow_tag, requeue);
		track_unlink(pp);
		return AIQ_OK;
	}
	if (!ack && requeue) {
		/* The broker requeued it already. */
		track_unlink(pp);
		return AIQ_OK;
	}
	aiq__log(AIQ_LOG_WARNING,
	         "amqp: %s of task %s came after its channel closed; RabbitMQ requeued it, and "
	         "its redelivery to this consumer will be %s",
	         verb, t->id ? t->id : "?", ack ? "acknowledged" : "rejected");
	if (t->id == NULL) {
		track_unlink(pp); /* cannot be matched: it will run again */
		return AIQ_OK;
	}
	t->settled = ack ? SETTLE_ACK : SETTLE_DROP;
	t->settled_at = aiq__mono_ms();
	t->shadow_gen = 0;
	return AIQ_OK;
}

static int amqp_ack(aiq__broker *base, aiq__delivery *d)
{
	return settle((amqp_broker *)base, d, true, false);
}

static int amqp_reject(aiq__broker *base, aiq__delivery *d, bool requeue)
{
	return settle((amqp_broker *)base, d, false, requeue);
}

/* Properties for the dead letter of an undecodable delivery: the received
 * ones, byte for byte, plus header x-aiq-dead-reason; without the
 * per-message TTL, which would expire the dead letter, and without user_id,
 * which RabbitMQ refuses unless it names the publishing connection's user. */
static int raw_dead_props(amqp_basic_properties_t *out, const raw_props *raw, const char *reason,
                          amqp_pool_t *pool)
{
	*out = raw->p;
	out->_flags &= (amqp_flags_t) ~(AMQP_BASIC_EXPIRATION_FLAG | AMQP_BASIC_USER_ID_FLAG);
	out->_flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	out->delivery_mode = AMQP_DELIVERY_PERSISTENT;
	json_t *why = aiq__json_string_lossy(reason);
	const char *text = why ? json_string_value(why) : NULL;
	const amqp_table_t *h = &raw->p.headers;
	int n = (raw->p._flags & AMQP_BASIC_HEADERS_FLAG) ? h->num_entries : 0;
	amqp_table_entry_t *e = amqp_pool_alloc(pool, (size_t)(n + 1) * sizeof *e);
	amqp_bytes_t val = amqp_empty_bytes;
	if (e == NULL || text == NULL || !pool_dup(&val, amqp_cstring_bytes(text), pool)) {
		json_decref(why);
		return aiq__err(AIQ_ENOMEM, "out of memory dead-lettering a message");
	}
	json_decref(why);
	int k = 0;
	for (int i = 0; i < n; i++)
		if (!(h->entries[i].key.len == 17 &&
		      memcmp(h->entries[i].key.bytes, "x-aiq-dead-reason", 17) == 0))
			e[k++] = h->entries[i];
	e[k].key = amqp_cstring_bytes("x-aiq-dead-reason");
	e[k].value.kind = AMQP_FIELD_KIND_UTF8;
	e[k].value.value.bytes = val;
	out->headers.num_entries = k + 1;
	out->headers.entries = e;
	return AIQ_OK;
}

static int amqp_dead_letter(aiq__broker *base, aiq__delivery *d, const char *reason)
{
	amqp_broker *b = (amqp_broker *)base;
	if (d == NULL)
		return aiq__err(AIQ_EINVAL, "no delivery");
	char *dq = aiq__asprintf("%s.dead", d->queue ? d->queue : "celery");
	if (dq == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	aiq__wire copy;
	int rc = aiq__wire_copy(&copy, &d->wire);
	if (rc == AIQ_OK) {
		if (copy.headers == NULL)
			copy.headers = json_object();
		json_t *why = aiq__json_string_lossy(reason);
		if (copy.headers == NULL || why == NULL ||
		    json_object_set_new(copy.headers, "x-aiq-dead-reason", why) != 0)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	for (int attempt = 0; rc == AIQ_OK && attempt < 2; attempt++) {
		rc = ctl_ready(b);
		if (rc == AIQ_OK)
			rc = declare_plain_queue(&b->ctl, dq, amqp_empty_table);
		if (rc == AIQ_OK) {
			amqp_pool_t pool;
			init_amqp_pool(&pool, 4096);
			amqp_basic_properties_t props;
			if (d->driver_free == raw_props_free && d->driver_data)
				rc = raw_dead_props(&props, d->driver_data, reason, &pool);
			else
				rc = props_from_wire(&props, &copy, &pool, false);
			if (rc == AIQ_OK)
				rc = publish_confirmed(b, dq, dq, &props, &copy);
			empty_amqp_pool(&pool);
		}
		if (rc != AIQ_EBROKER)
			break;
		/* One more try on a fresh connection: a duplicate dead letter is
		 * better than none. */
		if (attempt == 0)
			rc = AIQ_OK;
	}
	aiq__wire_clear(&copy);
	free(dq);
	if (rc != AIQ_OK)
		return rc;
	return settle(b, d, true, false);
}

/* ---- inspection ------------------------------------------------------------ */

/* queue.declare(passive) on the scratch channel: *exists false for 404. */
static int passive_count(amqp_broker *b, const char *q, bool *exists, uint64_t *count)
{
	link *l = &b->ctl;
	*exists = false;
	*count = 0;
	int rc = ensure_scratch(l);
	if (rc != AIQ_OK)
		return rc;
	amqp_queue_declare_ok_t *ok =
	        amqp_queue_declare(l->conn, CH_SCRATCH, bytes_of(q), 1, 0, 0, 0, amqp_empty_table);
	amqp_rpc_reply_t r = amqp_get_rpc_reply(l->conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL && ok) {
		*exists = true;
		*count = ok->message_count;
		return AIQ_OK;
	}
	if (close_code(r) == AMQP_NOT_FOUND && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
		channel_recover(l, CH_SCRATCH, r);
		return AIQ_OK;
	}
	char t[MAX_ERRTEXT];
	reply_text(t, sizeof t, r);
	rc = aiq__err(AIQ_EBROKER, "inspecting queue '%.200s' failed: %s", q, t);
	channel_recover(l, CH_SCRATCH, r);
	return rc;
}

static int amqp_depth(aiq__broker *base, const char *queue, uint64_t *count)
{
	amqp_broker *b = (amqp_broker *)base;
	if (queue == NULL || count == NULL)
		return aiq__err(AIQ_EINVAL, "queue and count are required");
	int rc = ctl_ready(b);
	if (rc != AIQ_OK)
		return rc;
	bool exists;
	return passive_count(b, queue, &exists, count);
}

static int purge_one(amqp_broker *b, const char *q, uint64_t *removed)
{
	bool exists;
	uint64_t n;
	int rc = passive_count(b, q, &exists, &n);
	if (rc != AIQ_OK || !exists)
		return rc;
	link *l = &b->ctl;
	amqp_queue_purge_ok_t *ok = amqp_queue_purge(l->conn, CH_SCRATCH, bytes_of(q));
	char what[300];
	snprintf(what, sizeof what, "purging queue '%.200s'", q);
	rc = rpc_check(l, CH_SCRATCH, what);
	if (rc == AIQ_OK && ok)
		*removed += ok->message_count;
	return rc;
}

static int amqp_purge(aiq__broker *base, const char *queue, uint64_t *removed)
{
	amqp_broker *b = (amqp_broker *)base;
	if (queue == NULL)
		return aiq__err(AIQ_EINVAL, "no queue");
	uint64_t total = 0;
	int rc = ctl_ready(b);
	if (rc == AIQ_OK)
		rc = purge_one(b, queue, &total);
	/* Delayed messages are waiting in the queue too. */
	for (int k = DELAY_MIN_SHIFT; rc == AIQ_OK && k <= DELAY_MAX_SHIFT; k++) {
		char *dq = delay_queue_name(queue, k);
		if (dq == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		rc = purge_one(b, dq, &total);
		free(dq);
	}
	if (removed)
		*removed = total;
	return rc;
}

static int amqp_ping(aiq__broker *base)
{
	amqp_broker *b = (amqp_broker *)base;
	int rc = ctl_ready(b);
	if (rc != AIQ_OK)
		return rc;
	rc = ensure_scratch(&b->ctl);
	if (rc != AIQ_OK)
		return rc;
	amqp_exchange_declare(b->ctl.conn, CH_SCRATCH, amqp_cstring_bytes("amq.direct"),
	                      amqp_cstring_bytes("direct"), 1, 0, 0, 0, amqp_empty_table);
	return rpc_check(&b->ctl, CH_SCRATCH, "ping (exchange.declare passive)");
}

/* ---- open / close ----------------------------------------------------------- */

static void amqp_close(aiq__broker *base)
{
	amqp_broker *b = (amqp_broker *)base;
	if (b == NULL)
		return;
	link_drop(&b->cons, true);
	link_drop(&b->ctl, true);
	while (b->tracks)
		track_unlink(&b->tracks);
	free_strv(b->queues, b->nqueues);
	settings_clear(&b->set);
	free(b);
}

static int amqp_open(aiq__broker **out, const char *url, const aiq_config *cfg)
{
	amqp_broker *b = calloc(1, sizeof *b);
	if (b == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	b->base.ops = &aiq__amqp_broker_ops;
	atomic_init(&b->wake, false);
	int rc = settings_init(&b->set, url, cfg);
	if (rc != AIQ_OK) {
		amqp_close(&b->base);
		return rc;
	}
	/* Connect now so a wrong address or password shows up at open. */
	rc = ctl_ready(b);
	if (rc != AIQ_OK) {
		amqp_close(&b->base);
		return rc;
	}
	*out = &b->base;
	return AIQ_OK;
}

static const char *const amqp_schemes[] = {"amqp", "amqps", "pyamqp", "librabbitmq", NULL};

const aiq__broker_ops aiq__amqp_broker_ops = {
        .name = "amqp",
        .schemes = amqp_schemes,
        .caps = AIQ__BROKER_CAP_DELAY | AIQ__BROKER_CAP_PRIORITY | AIQ__BROKER_CAP_DEAD_LETTER,
        .open = amqp_open,
        .close = amqp_close,
        .publish = amqp_publish,
        .publish_batch = amqp_publish_batch,
        .consume = amqp_consume,
        .fetch = amqp_fetch,
        .wakeup = amqp_wakeup,
        .ack = amqp_ack,
        .reject = amqp_reject,
        .dead_letter = amqp_dead_letter,
        .purge = amqp_purge,
        .depth = amqp_depth,
        .ping = amqp_ping,
        .keepalive = amqp_keepalive,
};
