/*
 * The RabbitMQ driver's links: URL and settings, connect and login with
 * failover, the one frame reader, channel recovery, reconnects, heartbeats.
 */
#include "amqp_int.h"
#include "config_int.h"
#include "url.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define AUTH_GRACE_MS  15000 /* a node that just started may refuse logins briefly */

/* ---- small helpers ------------------------------------------------------ */

amqp_bytes_t aiq__amqp_bytes(const char *s)
{
	return amqp_cstring_bytes(s ? s : "");
}

char *aiq__amqp_dup_bytes(amqp_bytes_t b)
{
	return aiq__strndup(b.bytes ? (const char *)b.bytes : "", b.len);
}

void aiq__amqp_free_strv(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void aiq__amqp_settings_clear(settings *s)
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
void aiq__amqp_reply_text(char *buf, size_t size, amqp_rpc_reply_t r)
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

uint16_t aiq__amqp_close_code(amqp_rpc_reply_t r)
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
		/* kombu's pyamqp transport connects "localhost" as 127.0.0.1. Not
		 * over TLS: librabbitmq-c checks the certificate against the host
		 * it connects to, and a certificate names "localhost", rarely
		 * the address. */
		const char *host = u.host && *u.host ? u.host : "localhost";
		if (!ep->ssl && strcmp(host, "localhost") == 0)
			host = "127.0.0.1";
		ep->host = aiq__strdup(host);
		ep->user = aiq__strdup(u.user ? u.user : "guest");
		ep->pass = aiq__strdup(u.password ? u.password : "guest");
		ep->vhost = aiq__strdup(u.path && *u.path ? u.path : "/");
		if (!ep->host || !ep->user || !ep->pass || !ep->vhost)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	aiq__url_clear(&u);
	return rc;
}

int aiq__amqp_settings_init(settings *s, const char *url, const aiq_config *cfg)
{
	s->heartbeat_s = (int)aiq__cfg_int(cfg, AIQ_CFG_AMQP_HEARTBEAT_S);
	s->connect_timeout_ms = aiq__cfg_int(cfg, AIQ_CFG_AMQP_CONNECT_TIMEOUT_MS);
	s->confirm_timeout_ms = aiq__cfg_int(cfg, AIQ_CFG_AMQP_CONFIRM_TIMEOUT_MS);
	s->max_priority = (int)aiq__cfg_int(cfg, AIQ_CFG_AMQP_QUEUE_MAX_PRIORITY);
	s->ssl_verify = aiq__cfg_bool(cfg, AIQ_CFG_AMQP_SSL_VERIFY);
	s->queue_type = aiq__strdup(aiq__cfg_str(cfg, AIQ_CFG_AMQP_QUEUE_TYPE));
	s->delivery_limit = (int)aiq__cfg_int(cfg, AIQ_CFG_AMQP_DELIVERY_LIMIT);
	s->republish_ms = aiq__cfg_int(cfg, AIQ_CFG_AMQP_REPUBLISH_MS);
	s->ssl_cacert = aiq__strdup(aiq__cfg_str(cfg, AIQ_CFG_AMQP_SSL_CACERT));
	s->ssl_cert = aiq__strdup(aiq__cfg_str(cfg, AIQ_CFG_AMQP_SSL_CERT));
	s->ssl_key = aiq__strdup(aiq__cfg_str(cfg, AIQ_CFG_AMQP_SSL_KEY));
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
	if (strcmp(s->queue_type, "quorum") != 0 && s->delivery_limit > 0)
		return aiq__err(AIQ_EINVAL, "amqp.delivery_limit needs amqp.queue_type=quorum "
		                            "(classic queues count no deliveries)");
	/* Several URLs separated by ';' (failover). */
	const char *p = url;
	while (*p) {
		size_t n = aiq__url_segment_len(p);
		if (n > 0) {
			char *one = aiq__strndup(p, n);
			endpoint *eps = realloc(s->eps, (s->neps + 1) * sizeof *eps);
			if (eps != NULL)
				s->eps = eps; /* the old block is gone once realloc succeeds */
			if (one == NULL || eps == NULL) {
				free(one);
				return aiq__err(AIQ_ENOMEM, "out of memory");
			}
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

void aiq__amqp_link_drop(conn_link *l, bool polite)
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
	aiq__amqp_free_strv(l->declared, l->ndeclared);
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

static bool tls_status(int st)
{
	return st <= AMQP_STATUS_SSL_ERROR && st > _AMQP_STATUS_SSL_NEXT_VALUE;
}

/* A failed TLS handshake, said so that an operator sees which setting to
 * look at. A certificate that does not verify is a configuration error:
 * *auth is set so that the caller stops instead of retrying for ever. A
 * handshake that failed otherwise (the peer closed, a timeout) may pass on
 * the next try. */
static void tls_failure(char *why, size_t whysz, const settings *s, const endpoint *ep, int st,
                        bool *auth)
{
	const char *ca = *s->ssl_cacert ? s->ssl_cacert : "the system's default CAs";
	if (st == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED) {
		snprintf(why, whysz,
		         "TLS: the server's certificate does not name host '%.100s' (connect by a "
		         "name the certificate has, or set ssl_cert_reqs=CERT_NONE to skip "
		         "verification)",
		         ep->host);
		*auth = true;
	} else if (st == AMQP_STATUS_SSL_PEER_VERIFY_FAILED ||
	           (st == AMQP_STATUS_SSL_CONNECTION_FAILED && s->ssl_verify)) {
		/* With verification on, OpenSSL fails the handshake itself on an
		 * untrusted certificate or a name mismatch. */
		snprintf(why, whysz,
		         "TLS handshake with %.100s:%d failed: the server's certificate is not "
		         "trusted by ssl_ca_certs (%.150s) or does not name host '%.100s' (%s)",
		         ep->host, ep->port, ca, ep->host, amqp_error_string2(st));
		*auth = true;
	} else {
		snprintf(why, whysz, "TLS handshake with %.100s:%d failed: %s", ep->host, ep->port,
		         amqp_error_string2(st));
	}
}

/* Connect to one endpoint. On failure fills `why`; *auth is set when the
 * server refused the credentials or the vhost, or its TLS certificate. */
static int connect_one(amqp_broker *b, conn_link *l, const endpoint *ep, char *why, size_t whysz,
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
	if (st != AMQP_STATUS_OK && ep->ssl && tls_status(st)) {
		tls_failure(why, whysz, s, ep, st, auth);
		amqp_destroy_connection(conn);
		return AIQ_EBROKER;
	}
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
		aiq__amqp_reply_text(t, sizeof t, r);
		uint16_t code = aiq__amqp_close_code(r);
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
		aiq__amqp_reply_text(t, sizeof t, r);
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
int aiq__amqp_link_connect(amqp_broker *b, conn_link *l, bool *auth)
{
	char why[MAX_ERRTEXT * 2] = "", last[1024] = "";
	size_t used = 0;
	int rc = AIQ_EBROKER;
	*auth = false;
	aiq__amqp_link_drop(l, false);
	if (b->set.neps == 0)
		return aiq__err(AIQ_EINVAL, "no RabbitMQ endpoint to connect to");
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
void aiq__amqp_channel_recover(conn_link *l, amqp_channel_t ch, amqp_rpc_reply_t r)
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
	aiq__amqp_link_drop(l, false);
}

/* Run after an RPC call: AIQ_OK, or AIQ_EBROKER with `what` and the reason. */
int aiq__amqp_rpc_check(conn_link *l, amqp_channel_t ch, const char *what)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(l->conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return AIQ_OK;
	char t[MAX_ERRTEXT];
	aiq__amqp_reply_text(t, sizeof t, r);
	int rc = aiq__err(AIQ_EBROKER, "%s failed: %s", what, t);
	aiq__amqp_channel_recover(l, ch, r);
	return rc;
}

int aiq__amqp_ensure_scratch(conn_link *l)
{
	if (l->scratch_open)
		return AIQ_OK;
	amqp_channel_open(l->conn, CH_SCRATCH);
	int rc = aiq__amqp_rpc_check(l, CH_SCRATCH, "opening a channel");
	if (rc == AIQ_OK)
		l->scratch_open = true;
	return rc;
}
/* ---- the frame reader ----------------------------------------------------- */

/* Every frame this driver reads outside an RPC comes through here: confirms,
 * returns and closes on the control link, deliveries and closes on the
 * consumer link. librabbitmq-c answers heartbeats itself. */
enum aiq__amqp_read aiq__amqp_read_frame(conn_link *l, amqp_frame_t *f, int64_t timeout_ms,
                                         char *why, size_t whysz)
{
	if (!l->up) {
		snprintf(why, whysz, "not connected");
		return AIQ__AMQP_READ_LOST;
	}
	if (timeout_ms < 0)
		timeout_ms = 0;
	struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
	int st = amqp_simple_wait_frame_noblock(l->conn, f, &tv);
	if (st == AMQP_STATUS_TIMEOUT)
		return AIQ__AMQP_READ_TIMEOUT;
	if (st != AMQP_STATUS_OK) {
		snprintf(why, whysz, "connection to RabbitMQ lost (%s)", amqp_error_string2(st));
		return AIQ__AMQP_READ_LOST;
	}
	if (f->frame_type == AMQP_FRAME_METHOD &&
	    (f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
	     f->payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)) {
		amqp_method_number_t id = f->payload.method.id;
		/* Both method structs share this layout. */
		const amqp_channel_close_t *c = f->payload.method.decoded;
		snprintf(why, whysz, "RabbitMQ closed the %s: %u %.*s",
		         id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection", c->reply_code,
		         (int)(c->reply_text.len > 200 ? 200 : c->reply_text.len),
		         (const char *)c->reply_text.bytes);
		ack_close(l->conn, f->channel, id);
		return AIQ__AMQP_READ_LOST;
	}
	return AIQ__AMQP_READ_FRAME;
}

/* ---- control link: connect on demand ------------------------------------ */

/* Make sure the control link is usable: read what the server sent since the
 * last call (a close, a heartbeat timeout), then reconnect if needed. */
int aiq__amqp_ctl_ready(amqp_broker *b)
{
	conn_link *l = &b->ctl;
	while (l->up) {
		amqp_frame_t f;
		char why[MAX_ERRTEXT];
		enum aiq__amqp_read r = aiq__amqp_read_frame(l, &f, 0, why, sizeof why);
		if (r == AIQ__AMQP_READ_TIMEOUT)
			break;
		if (r == AIQ__AMQP_READ_LOST) {
			aiq__log(AIQ_LOG_INFO, "amqp: control connection: %s; reconnecting", why);
			aiq__amqp_link_drop(l, false);
		}
		/* Anything else (a late confirm after a timeout) is stale. */
	}
	if (l->up)
		return AIQ_OK;
	bool auth;
	return aiq__amqp_link_connect(b, l, &auth);
}

/* ---- consumer link: reconnect with backoff ------------------------------- */

void aiq__amqp_cons_lost(amqp_broker *b, const char *why)
{
	conn_link *l = &b->cons;
	if (l->up || l->conn) {
		aiq__log(
		        AIQ_LOG_WARNING,
		        "amqp: consumer connection lost (%s); unacknowledged deliveries go back to "
		        "the queue; reconnecting",
		        why);
	}
	aiq__amqp_link_drop(l, false);
	l->retry_at = aiq__mono_ms(); /* first attempt at once */
	l->backoff_ms = 0;
	l->outage_logged = false;
}

/* Connect the consumer link and start(). Hard errors (refused credentials
 * for long enough, bad TLS files, a declaration conflict) set *hard. */
static int cons_connect(amqp_broker *b, int (*start)(amqp_broker *b), bool *hard)
{
	conn_link *l = &b->cons;
	*hard = false;
	bool auth = false;
	int rc = aiq__amqp_link_connect(b, l, &auth);
	if (rc == AIQ_OK) {
		rc = start(b);
		if (rc != AIQ_OK) {
			aiq__amqp_link_drop(l, false);
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

int aiq__amqp_cons_ensure(amqp_broker *b, int (*start)(amqp_broker *b))
{
	conn_link *l = &b->cons;
	if (l->up)
		return AIQ_OK;
	if (aiq__mono_ms() < l->retry_at)
		return aiq__err(AIQ_ETIMEDOUT, "reconnecting to RabbitMQ");
	bool hard;
	int rc = cons_connect(b, start, &hard);
	if (rc != AIQ_OK) {
		if (hard)
			return rc;
		if (!l->outage_logged) {
			aiq__log(AIQ_LOG_WARNING, "amqp: %s; retrying", aiq_error_last());
			l->outage_logged = true;
		}
		l->backoff_ms = l->backoff_ms ? l->backoff_ms * 2 : BACKOFF_MIN_MS;
		if (l->backoff_ms > BACKOFF_MAX_MS)
			l->backoff_ms = BACKOFF_MAX_MS;
		l->retry_at = aiq__mono_ms() + l->backoff_ms;
		return aiq__err(AIQ_ETIMEDOUT, "reconnecting to RabbitMQ");
	}
	aiq__log(AIQ_LOG_WARNING, "amqp: consumer reconnected; consuming again");
	b->base.reconnects++;
	l->outage_logged = false;
	return AIQ_OK;
}

/* While the worker is at its prefetch bound it does not fetch, and nothing
 * else is sent while long tasks run: send the heartbeats RabbitMQ expects
 * ourselves (server heartbeats are read, and checked, by the next fetch). */
void aiq__amqp_keepalive(aiq__broker *base)
{
	amqp_broker *b = (amqp_broker *)base;
	conn_link *l = &b->cons;
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
		aiq__amqp_cons_lost(b, "sending a heartbeat failed");
}
