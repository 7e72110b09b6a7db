/*
 * aiq_event_receiver (events.h): the broker's bus in listen_events mode
 * (broker.h) read by a thread of its own; each event object, or each
 * member of a list of them, goes to the callback as compact JSON text.
 */
#include "broker.h"
#include "config_int.h"

#include <aiqueue/events.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FETCH_MS 250  /* how soon free() is noticed */
#define RETRY_MS 1000 /* between connection attempts */

struct aiq_event_receiver {
	aiq_config *cfg;
	aiq_celery_event_fn fn;
	void *userdata;
	aiq_destroy_fn destroy;
	pthread_t thread;
	atomic_bool stop;
	atomic_ullong count;
};

static void deliver(aiq_event_receiver *r, json_t *ev)
{
	if (!json_is_object(ev) || !json_is_string(json_object_get(ev, "type")))
		return; /* Celery's receiver needs "type" too */
	char *text = json_dumps(ev, JSON_COMPACT | JSON_REAL_PRECISION(17));
	if (text == NULL)
		return;
	atomic_fetch_add(&r->count, 1);
	r->fn(text, r->userdata);
	free(text);
}

static void pause_ms(aiq_event_receiver *r, int64_t ms)
{
	for (int64_t slept = 0; slept < ms && !atomic_load(&r->stop); slept += 50) {
		struct timespec ts = aiq__timespec_ms(50);
		nanosleep(&ts, NULL);
	}
}

static void *receiver_main(void *arg)
{
	aiq_event_receiver *r = arg;
	aiq__bus *bus = NULL;
	bool logged = false;
	while (!atomic_load(&r->stop)) {
		if (bus == NULL) {
			int rc = aiq__bus_open(&bus, aiq__cfg_str(r->cfg, AIQ_CFG_BROKER_URL),
			                       r->cfg);
			if (rc == AIQ_OK)
				rc = aiq__bus_listen_events(bus);
			if (rc != AIQ_OK) {
				if (!logged)
					aiq__log(AIQ_LOG_WARNING, "events receiver: %s; retrying",
					         aiq_error_last());
				logged = true;
				aiq__bus_close(bus);
				bus = NULL;
				pause_ms(r, RETRY_MS);
				continue;
			}
			if (logged)
				aiq__log(AIQ_LOG_INFO, "events receiver: connected");
			logged = false;
		}
		char *body = NULL;
		int64_t clock = 0;
		int rc = aiq__bus_fetch(bus, &body, &clock, FETCH_MS);
		if (rc != AIQ_OK) {
			if (rc != AIQ_ETIMEDOUT)
				aiq__log(AIQ_LOG_DEBUG, "events receiver: %s", aiq_error_last());
			continue; /* the bus reconnects by itself */
		}
		json_t *v = json_loads(body, JSON_DECODE_ANY, NULL);
		free(body);
		if (json_is_array(v)) {
			for (size_t i = 0; i < json_array_size(v); i++)
				deliver(r, json_array_get(v, i));
		} else {
			deliver(r, v);
		}
		json_decref(v);
	}
	aiq__bus_close(bus);
	return NULL;
}

AIQ_API int aiq_event_receiver_new(aiq_event_receiver **out, const aiq_config *cfg,
                                   aiq_celery_event_fn fn, void *userdata, aiq_destroy_fn destroy)
{
	int rc = AIQ_OK;
	if (out)
		*out = NULL;
	if (out == NULL || cfg == NULL || fn == NULL)
		rc = aiq__err(AIQ_EINVAL, "an out pointer, a configuration and a callback are "
		                          "required");
	const aiq__broker_ops *ops = NULL;
	if (rc == AIQ_OK)
		rc = aiq__broker_lookup(&ops, aiq__cfg_str(cfg, AIQ_CFG_BROKER_URL));
	if (rc == AIQ_OK && ops->bus_open == NULL)
		rc = aiq__err(AIQ_EUNSUPPORTED, "the %s broker carries no Celery events",
		              ops->name);
	aiq_event_receiver *r = rc == AIQ_OK ? calloc(1, sizeof *r) : NULL;
	if (rc == AIQ_OK && r == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK)
		rc = aiq_config_copy(&r->cfg, cfg);
	if (rc == AIQ_OK) {
		r->fn = fn;
		r->userdata = userdata;
		r->destroy = destroy;
		if (pthread_create(&r->thread, NULL, receiver_main, r) != 0)
			rc = aiq__err(AIQ_ENOMEM, "cannot start the events receiver's thread");
	}
	if (rc != AIQ_OK) {
		if (r)
			aiq_config_free(r->cfg);
		free(r);
		if (destroy)
			destroy(userdata);
		return rc;
	}
	*out = r;
	return AIQ_OK;
}

AIQ_API void aiq_event_receiver_free(aiq_event_receiver *r)
{
	if (r == NULL)
		return;
	atomic_store(&r->stop, true);
	pthread_join(r->thread, NULL);
	if (r->destroy)
		r->destroy(r->userdata);
	aiq_config_free(r->cfg);
	free(r);
}

AIQ_API uint64_t aiq_event_receiver_count(const aiq_event_receiver *r)
{
	return r ? atomic_load(&((aiq_event_receiver *)(uintptr_t)r)->count) : 0;
}
