/*
 * The private broker driver interface. One file per driver exports one const
 * aiq__broker_ops table; broker.c maps URL schemes to tables. Only drivers
 * include client libraries (librabbitmq-c, hiredis); library errors become
 * AIQ_E* codes with a message (aiq__err) at this boundary and nowhere else.
 *
 * Threading: a broker handle is used by one thread at a time, except
 * wakeup(), which any thread may call.
 */
#ifndef AIQ_BROKER_H
#define AIQ_BROKER_H

#include "internal.h"
#include "message.h"
#include "url.h" /* aiq__url_redact: every driver redacts the URLs it prints */

typedef struct aiq__broker_ops aiq__broker_ops;
typedef struct aiq__bus aiq__bus;

/* How add_queue() binds a queue, as Celery's add_consumer does (exchange
 * durable, queue durable, bound with the routing key). NULL or "" fields
 * take the defaults: exchange and routing key = the queue's name, type
 * "direct" (aiq__exchange_type_known() lists the types). */
typedef struct aiq__queue_binding {
	const char *exchange;
	const char *exchange_type;
	const char *routing_key;
} aiq__queue_binding;

/* Drivers embed this as their first member. */
typedef struct aiq__broker {
	const aiq__broker_ops *ops;
	/* Times the consuming connection was lost and made again (not the
	 * first connect), counted by the driver on the thread that fetches:
	 * aiq__broker_reconnects(). */
	uint64_t reconnects;
} aiq__broker;

/* One received message. The driver fills it; aiq__delivery_free() releases it
 * (after ack/reject/dead_letter, or when the broker is closed). */
typedef struct aiq__delivery {
	aiq__wire wire;
	char *queue;       /* queue it came from */
	bool redelivered;  /* the broker delivered it before */
	uint64_t tag;      /* driver-specific delivery tag */
	char *undecodable; /* why the driver could not decode it (NULL: it could); the
	                      worker dead-letters such a delivery with this reason */
	/* The decoded message, owned by the delivery, when a process-local
	 * broker handed over the model its publisher built (aiq__wire.local)
	 * to a handle that asked for it (accept_decoded); `wire` is then empty
	 * and the consumer takes this instead of decoding.
	 * NULL otherwise: decode `wire`. */
	aiq__message *message;
	void *driver_data; /* driver-specific, released with driver_free */
	void (*driver_free)(void *driver_data);
} aiq__delivery;

void aiq__delivery_free(aiq__delivery *d);

enum {
	/* publish() honours not_before_ms durably inside the broker */
	AIQ__BROKER_CAP_DELAY = 1u << 0,
	/* higher priority messages are delivered first */
	AIQ__BROKER_CAP_PRIORITY = 1u << 1,
	/* dead_letter() is implemented */
	AIQ__BROKER_CAP_DEAD_LETTER = 1u << 2,
	/* delayed messages become visible only through this library's own
	 * consumers (not the broker itself), so a producer that may feed Celery
	 * workers must not park fresh tasks this way: it sends them at once with
	 * their ETA header, as Celery does */
	AIQ__BROKER_CAP_DELAY_OURS_ONLY = 1u << 3,
};

struct aiq__broker_ops {
	const char *name;           /* "memory", "amqp", "redis" */
	const char *const *schemes; /* NULL-terminated URL schemes, e.g. {"memory", NULL} */
	unsigned caps;

	int (*open)(aiq__broker **out, const char *url, const aiq_config *cfg);
	/* Unacknowledged deliveries go back to their queues. */
	void (*close)(aiq__broker *b);

	/* Publish to `queue`, creating it if needed. With not_before_ms > 0 the
	 * broker holds the message until that UNIX time (CAP_DELAY). Returns once
	 * the broker accepted it. */
	int (*publish)(aiq__broker *b, const char *queue, const aiq__wire *msg,
	               int64_t not_before_ms);

	/* Optional (NULL: the client calls publish() once per message). Publish
	 * n messages to `queue` as publish() would, then wait once for the
	 * broker to accept all of them. not_before_ms has one entry per message,
	 * as for publish(). status[i] receives AIQ_OK only when message i was
	 * accepted (confirmed, for brokers with confirms), else that message's
	 * own code: a message whose fate is unknown (the connection was lost
	 * before its confirm or reply) is AIQ_EBROKER, never AIQ_OK. Every entry
	 * is written. Returns AIQ_OK when all were accepted, else the code of
	 * the first failed message with aiq_error_last() saying how many failed
	 * and why. */
	int (*publish_batch)(aiq__broker *b, const char *queue, const aiq__wire *const *msgs,
	                     size_t n, const int64_t *not_before_ms, int *status);

	/* Start consuming these queues with at most `prefetch` unacked deliveries. */
	int (*consume)(aiq__broker *b, const char *const *queues, size_t nqueues,
	               unsigned prefetch);
	/* Next delivery, waiting up to timeout_ms (0 = don't wait). AIQ_ETIMEDOUT
	 * when none arrived, also when woken early by wakeup(). */
	int (*fetch)(aiq__broker *b, aiq__delivery **out, int64_t timeout_ms);
	/* Optional (NULL: the front calls fetch() instead). Up to `max`
	 * deliveries in one round trip where the broker allows it: waits up to
	 * timeout_ms for the first, then takes only what is ready at once.
	 * *n receives how many were written to out[0..*n-1]; AIQ_ETIMEDOUT
	 * with *n == 0 when none arrived (also when woken by wakeup()). A
	 * delivery that cannot be decoded still comes back, with `undecodable`
	 * set, so the caller can dead-letter it. On an error after some
	 * deliveries were taken, those are returned with AIQ_OK and the error
	 * is reported by the next call. */
	int (*fetch_batch)(aiq__broker *b, aiq__delivery **out, size_t max, size_t *n,
	                   int64_t timeout_ms);
	/* Make a blocked fetch() return soon. Thread-safe. */
	void (*wakeup)(aiq__broker *b);

	int (*ack)(aiq__broker *b, aiq__delivery *d);
	/* Optional (NULL: the front calls ack() for each). Acknowledge n
	 * deliveries, each of which already has its outcome stored, in as few
	 * round trips as the broker allows (AMQP `multiple`, one Redis script).
	 * An error means some may still be unacknowledged: the broker delivers
	 * those again, which is safe since their outcomes are stored. */
	int (*ack_batch)(aiq__broker *b, aiq__delivery *const *ds, size_t n);
	int (*reject)(aiq__broker *b, aiq__delivery *d, bool requeue);
	/* Copy the message to "<queue>.dead" with the reason (header
	 * "x-aiq-dead-reason"), then acknowledge the original. */
	int (*dead_letter)(aiq__broker *b, aiq__delivery *d, const char *reason);

	/* Remove ready messages; *removed gets how many. */
	int (*purge)(aiq__broker *b, const char *queue, uint64_t *removed);
	/* Number of ready messages. */
	int (*depth)(aiq__broker *b, const char *queue, uint64_t *count);
	/* A cheap round trip to the server; NULL when there is nothing to check. */
	int (*ping)(aiq__broker *b);
	/* Called by the consuming thread on every tick in which it does not
	 * call fetch() (at the prefetch bound, or while draining), so the
	 * connection stays alive without taking deliveries (AMQP heartbeats).
	 * NULL when there is nothing to do. */
	void (*keepalive)(aiq__broker *b);
	/* Optional (NULL: the driver ignores aiq__wire.local and deliveries
	 * always carry their wire). Set only by a process-local broker, whose
	 * publish() takes a wire's decoded model (aiq__wire.local) and hands it
	 * with the first delivery of that message to a handle that called this
	 * (aiq__delivery.message, instead of the wire). Handles that never call
	 * it always get the wire. */
	void (*accept_decoded)(aiq__broker *b);

	/* Optional (NULL: the queues are those consume() named, for good).
	 * After consume(), consume `queue` too, declared and bound as `bind`
	 * says (a driver may refuse a binding it cannot honour with
	 * AIQ_EUNSUPPORTED). AIQ_OK, changing nothing, when the handle
	 * consumes it already. Called by the thread using the handle. */
	int (*add_queue)(aiq__broker *b, const char *queue, const aiq__queue_binding *bind);
	/* Optional, given with add_queue. Stop consuming `queue`: deliveries
	 * fetch() returned stay valid (ack, reject, dead_letter); messages the
	 * server sent that fetch() did not return yet go back to the queue.
	 * AIQ_OK, changing nothing, when it is not consumed. A handle left with
	 * no queue stays consuming: fetch() only waits. */
	int (*cancel_queue)(aiq__broker *b, const char *queue);

	/* Optional (NULL: the broker carries no Celery events or remote
	 * control). Open a bus handle with its own connection(s): see
	 * aiq__bus_ops below. */
	int (*bus_open)(aiq__bus **out, const char *url, const aiq_config *cfg);
};

/* ---- the bus: Celery events and remote control (pidbox) ------------------
 * What Celery 5.2 puts on the wire beside the task queues, spoken the way
 * kombu does on each transport (docs/operations.md):
 *  - events: JSON bodies on the "celeryev" topic exchange (AMQP) or the
 *    pub/sub channel "/<db>.celeryev/<routing key>" (Redis);
 *  - control requests on the "celery.pidbox" fanout (AMQP: the queue
 *    "<node>.celery.pidbox"; Redis: PSUBSCRIBE "/<db>.celery.pidbox");
 *  - replies to the exchange and routing key a request names (Redis: LPUSH
 *    to the lists bound in "_kombu.binding.<exchange>").
 * A bus handle is used by one thread at a time. Every body is a JSON text
 * sent with content_type application/json and content_encoding utf-8. */
struct aiq__bus {
	const struct aiq__bus_ops *ops;
};

typedef struct aiq__bus_ops {
	void (*close)(aiq__bus *bus);
	/* One event (object or list) with this routing key ("worker.heartbeat",
	 * "task.succeeded"); header hostname = `hostname`. Not confirmed: an
	 * event nobody listens to is lost, as in Celery. */
	int (*publish_event)(aiq__bus *bus, const char *routing_key, const char *body, size_t len,
	                     const char *hostname);
	/* Start receiving control requests for node `nodename`. */
	int (*listen)(aiq__bus *bus, const char *nodename);
	/* Instead of listen(): receive every Celery event, as `celery events`
	 * does (AMQP: a queue "celeryev.<uuid>" bound with "#", auto-delete,
	 * x-expires 60 s, x-message-ttl 5 s; Redis: PSUBSCRIBE
	 * the pattern "/<db>.celeryev/" followed by a star). fetch() then returns event bodies: a
	 * JSON object or a list of them. */
	int (*listen_events)(aiq__bus *bus);
	/* The next request body (malloc'd, NUL-terminated) and the request's
	 * "clock" header (0 when absent); AIQ_ETIMEDOUT when none arrived
	 * within timeout_ms. Reconnects (and listens again) by itself. */
	int (*fetch)(aiq__bus *bus, char **body, int64_t *clock, int64_t timeout_ms);
	/* A reply to `exchange` / `routing_key` with headers {"ticket", "clock"}
	 * (no ticket header when ticket is NULL). */
	int (*reply)(aiq__bus *bus, const char *exchange, const char *routing_key, const char *body,
	             size_t len, const char *ticket, int64_t clock);
} aiq__bus_ops;

/* AIQ_EUNSUPPORTED when the URL's driver has no bus (the memory broker). */
int aiq__bus_open(aiq__bus **out, const char *url, const aiq_config *cfg);
/* NULL is a no-op. */
void aiq__bus_close(aiq__bus *bus);
int aiq__bus_publish_event(aiq__bus *bus, const char *routing_key, const char *body, size_t len,
                           const char *hostname);
int aiq__bus_listen(aiq__bus *bus, const char *nodename);
int aiq__bus_listen_events(aiq__bus *bus);
int aiq__bus_fetch(aiq__bus *bus, char **body, int64_t *clock, int64_t timeout_ms);
int aiq__bus_reply(aiq__bus *bus, const char *exchange, const char *routing_key, const char *body,
                   size_t len, const char *ticket, int64_t clock);

/* Driver table for a URL's scheme: AIQ_OK, AIQ_EINVAL (no scheme) or
 * AIQ_EUNSUPPORTED (scheme unknown or compiled out). */
int aiq__broker_lookup(const aiq__broker_ops **out, const char *url);
int aiq__broker_open(aiq__broker **out, const char *url, const aiq_config *cfg);
void aiq__broker_close(aiq__broker *b);
/* The driver's count of consuming-connection reconnects (0 for NULL).
 * Read it on the thread that fetches. */
uint64_t aiq__broker_reconnects(const aiq__broker *b);

/* Front functions: the core reaches drivers only through these (nothing
 * else touches ->ops). They validate arguments once (AIQ_EINVAL with a
 * message), check capability bits, and fall back to the single-message
 * operations when a driver has no batched one; the operations' semantics
 * are those of the table above. */
const char *aiq__broker_name(const aiq__broker *b);
/* The driver's AIQ__BROKER_CAP_* bits (0 for NULL). */
unsigned aiq__broker_caps(const aiq__broker *b);
/* True when the broker holds delayed messages durably for every consumer:
 * CAP_DELAY without CAP_DELAY_OURS_ONLY (a producer may park tasks). */
bool aiq__broker_delays_for_all(const aiq__broker *b);
/* not_before_ms > 0 needs CAP_DELAY (AIQ_EUNSUPPORTED otherwise). */
int aiq__broker_publish(aiq__broker *b, const char *queue, const aiq__wire *msg,
                        int64_t not_before_ms);
/* not_before_ms may be NULL (all 0). status[] gets every entry written. */
int aiq__broker_publish_batch(aiq__broker *b, const char *queue, const aiq__wire *const *msgs,
                              size_t n, const int64_t *not_before_ms, int *status);
int aiq__broker_consume(aiq__broker *b, const char *const *queues, size_t nqueues,
                        unsigned prefetch);
int aiq__broker_fetch(aiq__broker *b, aiq__delivery **out, int64_t timeout_ms);
int aiq__broker_fetch_batch(aiq__broker *b, aiq__delivery **out, size_t max, size_t *n,
                            int64_t timeout_ms);
/* Thread-safe; NULL is a no-op. */
void aiq__broker_wakeup(aiq__broker *b);
int aiq__broker_ack(aiq__broker *b, aiq__delivery *d);
int aiq__broker_ack_batch(aiq__broker *b, aiq__delivery *const *ds, size_t n);
int aiq__broker_reject(aiq__broker *b, aiq__delivery *d, bool requeue);
/* AIQ_EUNSUPPORTED without CAP_DEAD_LETTER (the delivery is untouched). */
int aiq__broker_dead_letter(aiq__broker *b, aiq__delivery *d, const char *reason);
int aiq__broker_purge(aiq__broker *b, const char *queue, uint64_t *removed);
int aiq__broker_depth(aiq__broker *b, const char *queue, uint64_t *count);
/* AIQ_OK when the driver has nothing to check. */
int aiq__broker_ping(aiq__broker *b);
/* No-op when the driver has nothing to do. */
void aiq__broker_keepalive(aiq__broker *b);
/* No-op for NULL and for drivers without the operation. */
void aiq__broker_accept_decoded(aiq__broker *b);
/* True when publish() hands a wire's decoded model (aiq__wire.local) on to
 * its consumer, so a producer should attach one. */
bool aiq__broker_takes_decoded(const aiq__broker *b);

/* AIQ_EUNSUPPORTED naming the driver when it has no add_queue; AIQ_EINVAL
 * for no queue name or an exchange type aiq__exchange_type_known() does
 * not know. bind may be NULL (all defaults). */
int aiq__broker_add_queue(aiq__broker *b, const char *queue, const aiq__queue_binding *bind);
/* AIQ_EUNSUPPORTED naming the driver when it has no cancel_queue. */
int aiq__broker_cancel_queue(aiq__broker *b, const char *queue);
/* True for the AMQP exchange types Celery declares: direct, topic, fanout,
 * headers. */
bool aiq__exchange_type_known(const char *type);

extern const aiq__broker_ops aiq__memory_broker_ops;

#endif /* AIQ_BROKER_H */
