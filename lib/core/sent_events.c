/*
 * task-sent events from a client (sent_events.h). Bodies are Celery's
 * (events.c encodes them); the thread publishes one event as a single
 * object on "task.sent", as Celery's producer does, and when several wait
 * it sends up to BATCH_MAX of them as one JSON list on "task.multi", the
 * form Celery's own workers use for task events: receivers dispatch on
 * each event's "type", never on the routing key, so `celery events` and
 * Flower read both (docs/operations.md).
 */
#include "sent_events.h"

#include "broker.h"
#include "config_int.h"
#include "events.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_MAX   10000
#define BATCH_MAX   24   /* Celery's event buffer_limit */
#define RETRY_MS    1000 /* between attempts to open the events connection */
#define FLUSH_MS    1000 /* what free() waits for queued events */
#define COALESCE_MS 1    /* how long a short queue waits for company */

struct sent_item {
	char *body;
	struct sent_item *next;
};

struct aiq__sent_events {
	aiq_config *cfg;
	char *hostname;
	atomic_llong clock;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct sent_item *head, *tail;
	size_t n, sent, dropped;
	bool stop, unsupported;
	int utcoffset; /* taken once: localtime per event would cost more than the rest */
};

static void free_items(struct sent_item *q)
{
	while (q) {
		struct sent_item *nx = q->next;
		free(q->body);
		free(q);
		q = nx;
	}
}

/* One publish of n bodies (1: the object; more: a list on task.multi). */
static int publish(aiq__bus *bus, struct sent_item *items, size_t n, const char *hostname)
{
	if (n == 1)
		return aiq__bus_publish_event(bus, "task.sent", items->body, strlen(items->body),
		                              hostname);
	size_t len = 2;
	for (struct sent_item *it = items; it; it = it->next)
		len += strlen(it->body) + 1;
	char *list = malloc(len + 1);
	if (list == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	size_t at = 0;
	list[at++] = '[';
	for (struct sent_item *it = items; it; it = it->next) {
		size_t k = strlen(it->body);
		memcpy(list + at, it->body, k);
		at += k;
		list[at++] = it->next ? ',' : ']';
	}
	list[at] = '\0';
	int rc = aiq__bus_publish_event(bus, "task.multi", list, at, hostname);
	free(list);
	return rc;
}

/* Take up to BATCH_MAX queued items. Lock held. */
static struct sent_item *take(aiq__sent_events *s, size_t *n)
{
	struct sent_item *first = s->head, *last = NULL;
	*n = 0;
	for (struct sent_item *it = first; it && *n < BATCH_MAX; it = it->next) {
		last = it;
		(*n)++;
	}
	if (last == NULL)
		return NULL;
	s->head = last->next;
	if (s->head == NULL)
		s->tail = NULL;
	last->next = NULL;
	s->n -= *n;
	return first;
}

static void wait_ms(aiq__sent_events *s, int64_t ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&s->cv, &s->lock, &ts);
}

static void *sender_main(void *arg)
{
	aiq__sent_events *s = arg;
	aiq__bus *bus = NULL;
	int64_t flush_until = 0;
	bool open_logged = false;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		if (s->stop && flush_until == 0)
			flush_until = aiq__mono_ms() + FLUSH_MS;
		if (s->stop && (s->head == NULL || aiq__mono_ms() >= flush_until))
			break;
		if (s->head == NULL) {
			pthread_cond_wait(&s->cv, &s->lock);
			continue;
		}
		if (bus == NULL) {
			pthread_mutex_unlock(&s->lock);
			int rc = aiq__bus_open(&bus, aiq__cfg_str(s->cfg, AIQ_CFG_BROKER_URL),
			                       s->cfg);
			if (rc != AIQ_OK && !open_logged)
				aiq__log(rc == AIQ_EUNSUPPORTED ? AIQ_LOG_WARNING : AIQ_LOG_INFO,
				         "client: task-sent events: %s", aiq_error_last());
			open_logged = open_logged || rc != AIQ_OK;
			pthread_mutex_lock(&s->lock);
			if (rc == AIQ_EUNSUPPORTED) {
				s->unsupported = true;
				s->dropped += s->n;
				free_items(s->head);
				s->head = s->tail = NULL;
				s->n = 0;
				break;
			}
			if (rc != AIQ_OK) {
				wait_ms(s, RETRY_MS);
				continue;
			}
		}
		/* Under load, a moment's wait fills a list: one publish then
		 * carries up to BATCH_MAX events instead of one each. */
		if (s->n < BATCH_MAX && !s->stop)
			wait_ms(s, COALESCE_MS);
		size_t n;
		struct sent_item *batch = take(s, &n);
		pthread_mutex_unlock(&s->lock);
		int rc = publish(bus, batch, n, s->hostname);
		if (rc != AIQ_OK)
			aiq__log(AIQ_LOG_DEBUG, "client: %zu task-sent events not sent: %s", n,
			         aiq_error_last());
		free_items(batch);
		pthread_mutex_lock(&s->lock);
		if (rc == AIQ_OK)
			s->sent += n;
		else
			s->dropped += n;
	}
	pthread_mutex_unlock(&s->lock);
	aiq__bus_close(bus);
	return NULL;
}

int aiq__sent_events_new(aiq__sent_events **out, const aiq_config *cfg, const char *hostname)
{
	*out = NULL;
	if (!aiq__cfg_bool(cfg, AIQ_CFG_CLIENT_SEND_SENT_EVENT))
		return AIQ_OK;
	aiq__sent_events *s = calloc(1, sizeof *s);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = aiq_config_copy(&s->cfg, cfg);
	if (rc == AIQ_OK && !(s->hostname = aiq__strdup(hostname)))
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc != AIQ_OK) {
		aiq_config_free(s->cfg);
		free(s);
		return rc;
	}
	s->utcoffset = aiq__event_utcoffset();
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cv, NULL);
	if (pthread_create(&s->thread, NULL, sender_main, s) != 0) {
		pthread_mutex_destroy(&s->lock);
		pthread_cond_destroy(&s->cv);
		aiq_config_free(s->cfg);
		free(s->hostname);
		free(s);
		return aiq__err(AIQ_ENOMEM, "cannot start the task-sent events thread");
	}
	*out = s;
	return AIQ_OK;
}

void aiq__sent_events_free(aiq__sent_events *s)
{
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	free_items(s->head);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cv);
	aiq_config_free(s->cfg);
	free(s->hostname);
	free(s);
}

char *aiq__sent_events_encode(aiq__sent_events *s, const aiq__message *m, const char *queue)
{
	aiq__event_head h = {
	        .hostname = s->hostname,
	        .utcoffset = s->utcoffset,
	        .pid = (long)getpid(),
	        .clock = atomic_fetch_add(&s->clock, 1) + 1,
	        .timestamp = (double)aiq__now_us() / 1e6,
	};
	aiq__event_sent f = {
	        .uuid = m->id,
	        .root_id = m->root_id,
	        .parent_id = m->parent_id,
	        .name = m->task,
	        .args = m->argsrepr,
	        .kwargs = m->kwargsrepr,
	        .retries = m->retries,
	        .eta_us = m->eta_us,
	        .expires_us = m->expires_us,
	        .queue = queue,
	        .exchange = "",
	        .routing_key = queue,
	};
	return aiq__event_encode_sent(&h, &f);
}

void aiq__sent_events_post(aiq__sent_events *s, char *body)
{
	if (body == NULL)
		return;
	struct sent_item *it = calloc(1, sizeof *it);
	pthread_mutex_lock(&s->lock);
	if (it == NULL || s->unsupported || s->stop || s->n >= QUEUE_MAX) {
		s->dropped++;
		pthread_mutex_unlock(&s->lock);
		free(it);
		free(body);
		return;
	}
	it->body = body;
	if (s->tail)
		s->tail->next = it;
	else
		s->head = it;
	s->tail = it;
	s->n++;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->lock);
}

void aiq__sent_events_stats(aiq__sent_events *s, size_t *sent, size_t *dropped)
{
	pthread_mutex_lock(&s->lock);
	*sent = s->sent;
	*dropped = s->dropped;
	pthread_mutex_unlock(&s->lock);
}
