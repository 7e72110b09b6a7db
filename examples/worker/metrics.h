/*
 * aiqueue-worker --metrics-port: Prometheus metrics (metrics.c).
 */
#ifndef AIQ_WORKER_METRICS_H
#define AIQ_WORKER_METRICS_H

#include <aiqueue/aiqueue.h>

/* Serve /metrics on host:port from a thread of its own; the queue depths
 * of the queues cfg names come through a client of its own. -1 when the
 * address is not an IPv4 address or cannot be bound. */
int worker_metrics_start(aiq_worker *w, const aiq_config *cfg, const char *host, unsigned port);
void worker_metrics_stop(void);
/* Feed one worker event (any worker thread). */
void worker_metrics_event(int event, const char *task_id, const char *task_name);
/* The exposition text (malloc'd), NULL when out of memory. */
char *worker_metrics_text(void);

#endif
