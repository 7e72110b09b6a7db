/**
 * @file events.h
 * @brief Receive Celery events: what `celery events` and Flower read.
 *
 * An event receiver listens to every Celery 5.2 event on the broker of a
 * configuration: the worker-online / worker-heartbeat / worker-offline and
 * task-* events of every worker (Python Celery workers started with -E and
 * libaiqueue workers with worker.send_events alike), and the task-sent
 * events of clients. It binds a queue of its own, as `celery events` does,
 * so receivers never take events from one another. See
 * docs/operations.md ("Receiving events").
 *
 * Events are not durable: what was sent while no receiver listened is
 * gone, as with Celery.
 */
#ifndef AIQUEUE_EVENTS_H
#define AIQUEUE_EVENTS_H

#include <aiqueue/common.h>
#include <aiqueue/config.h>

AIQ_BEGIN_DECLS

/** @brief Opaque event receiver. @since 0.2 */
typedef struct aiq_event_receiver aiq_event_receiver;

/**
 * @brief Called with each event received.
 * @param event_json one event as a JSON object text (borrowed; valid during
 *        the call), as Celery sent it: "type" ("worker-heartbeat",
 *        "task-succeeded", ...), "hostname", "timestamp" and the type's
 *        fields. A list of events on the wire (Celery's "task.multi")
 *        comes one call per event.
 * @param userdata the receiver's userdata.
 * @since 0.2
 */
typedef void (*aiq_celery_event_fn)(const char *event_json, void *userdata);

/**
 * @brief Start receiving the Celery events of @p cfg's broker.url.
 *
 * A thread of the receiver's own, with its own broker connection, calls
 * @p fn for every event, one call at a time, in the order received. When
 * the broker is unreachable (now or later) the thread reconnects every
 * second by itself; events sent meanwhile are not seen.
 *
 * @param[out] out receives the receiver; stop and free it with
 *             aiq_event_receiver_free(). NULL on failure.
 * @param cfg configuration (copied): broker.url and its driver's keys.
 * @param fn called from the receiver's thread for each event.
 * @param userdata passed to @p fn.
 * @param destroy called once on @p userdata when the receiver is freed (may
 *        be NULL). On failure it is called before the return.
 * @return #AIQ_OK, #AIQ_EINVAL (no out, cfg or fn; a bad URL),
 *         #AIQ_EUNSUPPORTED (the broker carries no Celery events: memory://),
 *         #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_event_receiver_new(aiq_event_receiver **out, const aiq_config *cfg,
                                   aiq_celery_event_fn fn, void *userdata, aiq_destroy_fn destroy);

/**
 * @brief Stop the receiver's thread (waiting for a call of fn in progress
 *        to return, at most about a quarter of a second more), then free it.
 *        Do not call from fn. NULL is a no-op.
 * @since 0.2
 */
AIQ_API void aiq_event_receiver_free(aiq_event_receiver *r);

/**
 * @brief Events handed to fn so far.
 * @return the count; 0 for NULL. Thread-safe.
 * @since 0.2
 */
AIQ_API uint64_t aiq_event_receiver_count(const aiq_event_receiver *r);

AIQ_END_DECLS

#endif /* AIQUEUE_EVENTS_H */
