/*
 * Celery events (events.c) and remote control (control.c) of a worker:
 * what `celery events`, `celery inspect`, `celery status`, `celery control`
 * and Flower see of it (docs/operations.md). Private to the worker.
 *
 * Each runs on a thread of its own with its own bus connection
 * (broker.h, aiq__bus), so a busy pool or a slow consumer never delays a
 * heartbeat or a reply.
 */
#ifndef AIQ_WORKER_EVENTS_H
#define AIQ_WORKER_EVENTS_H

#include "worker_int.h"

/* ---- encoding (pure; the unit suite checks it against Celery captures) ---- */

/* What one event says beyond the fields every event has. Strings may be
 * NULL (then JSON null, or the field is left out where Celery leaves it
 * out). */
typedef struct aiq__event_task {
	const char *uuid, *name;
	const char *args, *kwargs; /* Python repr strings */
	const char *root_id, *parent_id;
	int retries;
	int64_t eta_us, expires_us; /* 0 = null */
	const char *result;         /* repr string (task-succeeded) */
	double runtime;             /* seconds (task-succeeded) */
	const char *exception;      /* repr string (task-failed, task-retried) */
	const char *traceback;
	bool terminated, expired; /* task-revoked */
	int signum;               /* task-revoked with terminated: the signal sent */
	bool requeue;             /* task-rejected */
} aiq__event_task;

typedef struct aiq__event_worker {
	double freq; /* seconds between heartbeats */
	long active; /* tasks running now */
	long processed;
	double loadavg[3];
	const char *sw_ver, *sw_sys;
} aiq__event_worker;

/* The common fields as Celery orders them: hostname, utcoffset, pid, clock,
 * <the type's fields>, timestamp (float seconds), type. */
typedef struct aiq__event_head {
	const char *hostname;
	int utcoffset; /* Celery's utcoffset(): hours WEST of UTC */
	long pid;
	int64_t clock;
	double timestamp;
} aiq__event_head;

/* JSON of a worker event ("worker-online", "worker-heartbeat",
 * "worker-offline") or a task event (AIQ_EVENT_* -> "task-received", ...).
 * NULL when out of memory. *routing_key gets the AMQP routing key ("-" -> "."). */
char *aiq__event_encode_worker(const aiq__event_head *h, const char *type,
                               const aiq__event_worker *f);
char *aiq__event_encode_task(const aiq__event_head *h, int event, const aiq__event_task *f);
/* What a client's task-sent says (Celery's task_send_sent_event). */
typedef struct aiq__event_sent {
	const char *uuid, *root_id, *parent_id, *name;
	const char *args, *kwargs; /* Python repr strings */
	int retries;
	int64_t eta_us, expires_us; /* 0 = null */
	const char *queue, *exchange, *routing_key;
} aiq__event_sent;

/* JSON of "task-sent" in Celery's key order: hostname, utcoffset, pid,
 * clock, uuid, root_id, parent_id, name, args, kwargs, retries, eta,
 * expires, queue, exchange, routing_key, timestamp, type. NULL when out of
 * memory. */
char *aiq__event_encode_sent(const aiq__event_head *h, const aiq__event_sent *f);
/* "task-received" for AIQ_EVENT_RECEIVED, ...; NULL for an unknown event. */
const char *aiq__event_type_name(int event);
/* Python repr of one JSON value (a result), at most `max` bytes. */
char *aiq__event_repr_value(const char *json_text, size_t max);
/* Celery's utcoffset() for the local zone now. */
int aiq__event_utcoffset(void);

/* ---- the events thread (events.c) ---- */

/* With worker.send_events: open the bus, send worker-online, start the
 * heartbeat thread. A broker without a bus logs one line and sends
 * nothing. Never fails the run: without events the worker still works. */
void aiq__events_start(aiq_worker *w);
/* Send what is queued, then worker-offline; join the thread. */
void aiq__events_stop(aiq_worker *w);
/* aiq_worker_free(): stop, and release what start() kept. */
void aiq__events_free(aiq_worker *w);
/* A task event (id and name of the task; t when the task is at hand). */
void aiq__events_task(aiq_worker *w, int event, const aiq_task *t, const char *id, const char *name,
                      const char *exc_type, const char *detail);
/* Send a worker-heartbeat now (the `heartbeat` control command). */
void aiq__events_heartbeat_now(aiq_worker *w);
/* The Lamport clock: the next value, and max(ours, theirs) + 1. */
int64_t aiq__worker_clock_tick(aiq_worker *w);
int64_t aiq__worker_clock_adjust(aiq_worker *w, int64_t theirs);
/* Tasks finished so far (heartbeat "processed"). */
long aiq__worker_processed(aiq_worker *w);

/* ---- remote control (control.c) ---- */

/* With worker.remote_control: listen on celery.pidbox from a thread. A
 * broker without a bus logs one line and the worker runs without it. */
void aiq__control_start(aiq_worker *w);
void aiq__control_stop(aiq_worker *w);
/* aiq_worker_free(): stop, and release the revoked set and totals. */
void aiq__control_free(aiq_worker *w);
/* The control state without the thread (the unit suite drives
 * aiq__control_handle directly). */
int aiq__control_init(aiq_worker *w);
/* Count a task event for `stats` (total per task name). */
void aiq__control_note(aiq_worker *w, int event, const char *name);

/* What to send back for one request; body NULL: nothing. */
typedef struct aiq__control_reply {
	char *body; /* {"<nodename>": value} */
	char *exchange, *routing_key;
	char *ticket; /* NULL when the request had none */
} aiq__control_reply;

/* Run one request (JSON text) if it is for this node. Returns whether it
 * ran; *shutdown is set by `shutdown`. The reply is filled only when the
 * request named reply_to. */
bool aiq__control_handle(aiq_worker *w, const char *request, aiq__control_reply *reply,
                         bool *shutdown);
void aiq__control_reply_clear(aiq__control_reply *r);

#endif /* AIQ_WORKER_EVENTS_H */
