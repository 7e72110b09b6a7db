/*
 * The dashboard's Celery events: an aiq_event_receiver on the server's
 * broker hands every event it gets (from Python Celery workers started with
 * -E, libaiqueue workers with worker.send_events, clients with
 * client.send_sent_event) to dash_celery_event(). On a broker that carries
 * no events (memory://) nothing starts and the dashboard lives on its poll
 * alone (dashboard.c). AIQUEUE_SERVER_EVENTS=0 turns the receiver off.
 */
#include "server.h"

#include "../common/progutil.h"

#include <stdlib.h>
#include <string.h>

static aiq_event_receiver *receiver;

static void on_event(const char *text, void *userdata)
{
	struct server *srv = userdata;
	json_t *ev = json_loads(text, 0, NULL);
	if (json_is_object(ev))
		dash_celery_event(srv, ev);
	json_decref(ev);
}

int evrecv_start(struct server *srv)
{
	const char *off = getenv("AIQUEUE_SERVER_EVENTS");
	if (srv->dash == NULL || (off && strcmp(off, "0") == 0))
		return 0;
	int rc = aiq_event_receiver_new(&receiver, srv->cfg, on_event, srv, NULL);
	if (rc == AIQ_EUNSUPPORTED) {
		prog_log(AIQ_LOG_INFO, "dashboard",
		         "no Celery events on this broker: the dashboard polls");
		return 0;
	}
	if (rc != AIQ_OK) {
		prog_log(AIQ_LOG_WARNING, "dashboard", "cannot receive Celery events: %s",
		         aiq_strerror(rc));
		return -1;
	}
	prog_log(AIQ_LOG_INFO, "dashboard", "receiving Celery events");
	return 0;
}

void evrecv_stop(void)
{
	aiq_event_receiver_free(receiver);
	receiver = NULL;
}
