/*
 * task-sent events from a client (client.send_sent_event, Celery's
 * task_send_sent_event): what `celery events` and Flower show for a task
 * between its enqueue and a worker's task-received.
 *
 * The enqueuing thread only encodes the event (aiq__sent_events_encode)
 * and, once the broker took the task, hands it over (post); a thread of
 * the sender's own publishes on the broker's events transport (broker.h,
 * aiq__bus), so a slow or absent events connection never delays an
 * enqueue. Off (the default), a client has no sender and enqueue pays one
 * NULL check.
 */
#ifndef AIQ_SENT_EVENTS_H
#define AIQ_SENT_EVENTS_H

#include "internal.h"
#include "message.h"

typedef struct aiq__sent_events aiq__sent_events;

/* *out = NULL (and AIQ_OK) when cfg does not ask for task-sent events.
 * `hostname` is the client's node name ("gen<pid>@<host>", as Celery's
 * producer). The events connection is opened by the sender's thread, and
 * reopened after a loss; a broker without one (memory://) logs one line. */
int aiq__sent_events_new(aiq__sent_events **out, const aiq_config *cfg, const char *hostname);
/* Publish what is queued (for at most a second), then stop. NULL: no-op. */
void aiq__sent_events_free(aiq__sent_events *s);
/* The JSON body of the task-sent event for message m published to
 * `queue` (default exchange, routing key = queue). NULL when out of memory. */
char *aiq__sent_events_encode(aiq__sent_events *s, const aiq__message *m, const char *queue);
/* Queue an encoded event (ownership moves; NULL is ignored). Beyond the
 * queue's bound events are dropped and counted, as Celery's are lost when
 * no one listens. */
void aiq__sent_events_post(aiq__sent_events *s, char *body);
/* Events published and dropped so far (tests). */
void aiq__sent_events_stats(aiq__sent_events *s, size_t *sent, size_t *dropped);

#endif /* AIQ_SENT_EVENTS_H */
