/*
 * Private to the RabbitMQ driver: the handle, its two links, and the few
 * functions its files share. The files, by job:
 *  - amqp.c          the ops table, open/close, inspection (depth, purge, ping)
 *  - amqp_link.c     URL and settings, connect/login with failover,
 *                    the one frame reader, channel recovery, reconnect
 *                    with backoff, heartbeats
 *  - amqp_topology.c declarations exactly as Celery makes them
 *  - amqp_publish.c  properties, the one confirm tracker (a single publish
 *                    is a batch of one), publish, publish_batch
 *  - amqp_consume.c  basic.consume, deliveries (single and batched fetch),
 *                    ack (single and batched), reject, dead letters, stale
 *                    deliveries across reconnects
 *  - amqp_table.c    JSON <-> AMQP field tables
 * amqp.c's header comment maps the driver's behaviour.
 */
#ifndef AIQ_AMQP_INT_H
#define AIQ_AMQP_INT_H

#include "amqp_table.h"
#include "broker.h"

#include <amqp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CH_MAIN         1 /* consuming, or confirmed publishing */
#define CH_SCRATCH      2 /* passive declares, purge (control link only) */
#define MAX_ERRTEXT     256
#define DELAY_MIN_SHIFT 7  /* 128 ms: shorter delays go straight to the queue */
#define DELAY_MAX_SHIFT 30 /* ~12.4 days per hop */

extern const aiq__broker_ops aiq__amqp_broker_ops;

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
	char *queue_type;     /* "" or "classic" = no argument */
	int delivery_limit;   /* quorum x-delivery-limit, then to <q>.dead; 0 = none */
	int64_t republish_ms; /* how long unconfirmed/refused messages are republished */
	char *ssl_cacert, *ssl_cert, *ssl_key;
	bool ssl_verify;
} settings;

/* One connection, used only by the thread using the handle. */
typedef struct conn_link {
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
} conn_link;

/* One delivery handed to the worker and not yet settled. */
enum settle { SETTLE_NONE, SETTLE_ACK, SETTLE_DROP };

typedef struct track {
	uint64_t seq; /* aiq__delivery.tag */
	uint64_t gen, amqp_tag;
	char *id; /* task id, NULL for messages without one */
	int64_t retries;
	uint64_t shadow_gen, shadow_tag; /* redelivery held back (0 = none) */
	enum settle settled;             /* decided while no redelivery was held */
	int64_t settled_at;
	bool in_batch; /* ack_batch: already taken */
	struct track *next;
} track;

/* A consumed queue: consume() named it, or add_queue() added it with a
 * binding of its own (NULL fields: exchange and routing key = the name,
 * type direct, as consume() declares). */
typedef struct consumed_queue {
	char *name;
	char *exchange, *exchange_type, *routing_key;
	char tag[32]; /* its consumer tag on the consumer link ("" = not consuming) */
} consumed_queue;

typedef struct amqp_broker {
	aiq__broker base;
	settings set;
	conn_link ctl, cons;
	bool consuming;
	consumed_queue *queues;
	size_t nqueues;
	uint64_t next_ctag; /* consumer tags "aiq.<n>": never reused on a channel */
	unsigned prefetch;
	track *tracks;
	uint64_t next_seq;
	atomic_bool wake;
	int64_t keepalive_at; /* monotonic ms of the last heartbeat sent by keepalive() */
	/* basic.ack frames ack_batch() sent, and how many had multiple=true
	 * (diagnostics; the amqp suite checks them) */
	uint64_t batch_acks, batch_acks_multiple;
} amqp_broker;

/* ---- small helpers (amqp_link.c) ---- */

amqp_bytes_t aiq__amqp_bytes(const char *s);
char *aiq__amqp_dup_bytes(amqp_bytes_t b);
void aiq__amqp_free_strv(char **v, size_t n);
/* Text of an rpc reply, for messages. Never contains credentials. */
void aiq__amqp_reply_text(char *buf, size_t size, amqp_rpc_reply_t r);
uint16_t aiq__amqp_close_code(amqp_rpc_reply_t r);

/* ---- settings and links (amqp_link.c) ---- */

int aiq__amqp_settings_init(settings *s, const char *url, const aiq_config *cfg);
void aiq__amqp_settings_clear(settings *s);
void aiq__amqp_link_drop(conn_link *l, bool polite);
/* Try every endpoint once, starting after the last one used; *auth is set
 * when a server refused the credentials or the vhost. */
int aiq__amqp_link_connect(amqp_broker *b, conn_link *l, bool *auth);
/* After an RPC call on `ch`: AIQ_OK, or AIQ_EBROKER with `what` and the
 * reason (the channel is reopened, or the link dropped). */
int aiq__amqp_rpc_check(conn_link *l, amqp_channel_t ch, const char *what);
void aiq__amqp_channel_recover(conn_link *l, amqp_channel_t ch, amqp_rpc_reply_t r);
int aiq__amqp_ensure_scratch(conn_link *l);

/* The one frame reader. */
enum aiq__amqp_read {
	AIQ__AMQP_READ_FRAME,   /* *f holds a frame */
	AIQ__AMQP_READ_TIMEOUT, /* nothing within timeout_ms (0: nothing ready now) */
	AIQ__AMQP_READ_LOST,    /* the connection failed, or the server closed the
	                           channel or connection (answered): why[] says
	                           which; the caller drops the conn_link */
};
enum aiq__amqp_read aiq__amqp_read_frame(conn_link *l, amqp_frame_t *f, int64_t timeout_ms,
                                         char *why, size_t whysz);

/* The control link, connected on demand after reading what the server sent
 * since the last call (a close, a late confirm). */
int aiq__amqp_ctl_ready(amqp_broker *b);
/* The consumer link is gone: log, drop, reconnect at once on the next fetch. */
void aiq__amqp_cons_lost(amqp_broker *b, const char *why);
/* Reconnect the consumer link when it is down and its backoff allows:
 * AIQ_OK when it is up (consuming again), AIQ_ETIMEDOUT while it is still
 * retrying, or a hard error (credentials refused for long, a declaration
 * conflict). start() declares and consumes on the fresh link. */
int aiq__amqp_cons_ensure(amqp_broker *b, int (*start)(amqp_broker *b));
void aiq__amqp_keepalive(aiq__broker *base);

/* ---- topology (amqp_topology.c) ---- */

/* "<q>.dead": where dead_letter() puts a delivery from <q>. */
#define DEAD_SUFFIX ".dead"
/* Whether q names a dead-letter queue (ends in DEAD_SUFFIX). */
bool aiq__amqp_is_dead_queue(const char *q);
/* Exchange, queue and binding for a work queue, as Celery declares them;
 * for a dead-letter queue never with x-max-priority (see amqp_topology.c). */
int aiq__amqp_declare_work_queue(amqp_broker *b, conn_link *l, const char *q);
/* The same with add_consumer's binding: exchange `exchange` of `type`
 * (durable), the queue, bound with `routing_key`. Declared every time (no
 * cache): a binding differs from the default one. */
int aiq__amqp_declare_bound_queue(amqp_broker *b, conn_link *l, const char *q, const char *exchange,
                                  const char *type, const char *routing_key);
/* A plain durable queue with optional arguments (dead letters, delays). */
int aiq__amqp_declare_plain_queue(conn_link *l, const char *q, amqp_table_t args);
char *aiq__amqp_delay_queue_name(const char *q, int shift);
int aiq__amqp_declare_delay_queue(conn_link *l, const char *q, int shift, const char *name);
/* The delay bucket for a remaining delay (>= 2^DELAY_MIN_SHIFT ms). */
int aiq__amqp_delay_shift(int64_t delay_ms);

/* ---- publishing (amqp_publish.c) ---- */

int aiq__amqp_props_from_wire(amqp_basic_properties_t *p, const aiq__wire *msg, amqp_pool_t *pool,
                              bool keep_expiration);
int aiq__amqp_publish(aiq__broker *base, const char *queue, const aiq__wire *msg,
                      int64_t not_before_ms);
int aiq__amqp_publish_batch(aiq__broker *base, const char *queue, const aiq__wire *const *msgs,
                            size_t n, const int64_t *not_before_ms, int *status);
/* Publish one message with these exact properties to the dead-letter queue
 * `q` (declared if needed, as aiq__amqp_declare_work_queue declares it) and
 * wait for its confirm. */
int aiq__amqp_publish_plain(amqp_broker *b, const char *q, const amqp_basic_properties_t *props,
                            const aiq__wire *msg);

/* ---- consuming (amqp_consume.c) ---- */

int aiq__amqp_consume(aiq__broker *base, const char *const *queues, size_t nqueues,
                      unsigned prefetch);
int aiq__amqp_fetch(aiq__broker *base, aiq__delivery **out, int64_t timeout_ms);
int aiq__amqp_fetch_batch(aiq__broker *base, aiq__delivery **out, size_t max, size_t *n,
                          int64_t timeout_ms);
int aiq__amqp_ack(aiq__broker *base, aiq__delivery *d);
int aiq__amqp_ack_batch(aiq__broker *base, aiq__delivery *const *ds, size_t n);
int aiq__amqp_reject(aiq__broker *base, aiq__delivery *d, bool requeue);
int aiq__amqp_dead_letter(aiq__broker *base, aiq__delivery *d, const char *reason);
void aiq__amqp_tracks_free(amqp_broker *b);
int aiq__amqp_add_queue(aiq__broker *base, const char *queue, const aiq__queue_binding *bind);
int aiq__amqp_cancel_queue(aiq__broker *base, const char *queue);
void aiq__amqp_queues_free(amqp_broker *b);

/* ---- events and remote control (amqp_events.c) ---- */

int aiq__amqp_bus_open(aiq__bus **out, const char *url, const aiq_config *cfg);

#endif /* AIQ_AMQP_INT_H */
