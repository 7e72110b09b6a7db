#include "contract.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ct_driver drivers[] = {
        {
                .name = "memory",
                .broker_caps = AIQ__BROKER_CAP_DELAY | AIQ__BROKER_CAP_PRIORITY |
                               AIQ__BROKER_CAP_DEAD_LETTER,
                .store_caps = AIQ__STORE_CAP_NOTIFY,
                .batch_all_ready = true,
                .native_batches = true,
                .native_get_batch = true,
                .delay_slack_ms = 500,
        },
        {
                .name = "redis",
                /* kombu's priority order (step 0 first) is not "higher
                 * first", so no CAP_PRIORITY; delays are our own zset. */
                .broker_caps = AIQ__BROKER_CAP_DELAY | AIQ__BROKER_CAP_DELAY_OURS_ONLY |
                               AIQ__BROKER_CAP_DEAD_LETTER,
                .store_caps = AIQ__STORE_CAP_NOTIFY,
                .native_get_batch = true,
                .delay_slack_ms = 2000,
        },
        {
                .name = "amqp",
                .broker_caps = AIQ__BROKER_CAP_DELAY | AIQ__BROKER_CAP_PRIORITY |
                               AIQ__BROKER_CAP_DEAD_LETTER,
                /* delay queues use the largest power-of-two TTL not above
                 * the delay (docs in lib/brokers/amqp/amqp.c) */
                .delay_slack_ms = 5000,
                .delay_early_by_half = true,
        },
        {
                .name = "postgres",
                .store_caps = AIQ__STORE_CAP_NOTIFY,
                .native_get_batch = true,
        },
};

const ct_driver *ct_driver_get(void)
{
	static ct_driver d;
	static char memory_url[64];
	if (d.name != NULL)
		return &d;
	const char *name = ts_env("AIQ_CONTRACT_DRIVER");
	for (size_t i = 0; i < sizeof drivers / sizeof drivers[0]; i++) {
		if (strcmp(drivers[i].name, name) != 0)
			continue;
		d = drivers[i];
		if (strcmp(name, "memory") == 0)
			d.url = ts_unique(memory_url, sizeof memory_url, "memory://contract");
		else if (strcmp(name, "redis") == 0)
			d.url = ts_redis_url();
		else if (strcmp(name, "amqp") == 0)
			d.url = ts_amqp_url();
		else
			d.url = ts_pg_url();
		return &d;
	}
	fprintf(stderr, "AIQ_CONTRACT_DRIVER '%s' names no known driver\n", name);
	exit(EXIT_FAILURE);
}

aiq_config *ct_config(void)
{
	const ct_driver *d = ct_driver_get();
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	if (strcmp(d->name, "redis") == 0) {
		ck_assert_int_eq(aiq_config_set_int(cfg, "redis.poll_ms", 10), AIQ_OK);
		ck_assert_int_eq(aiq_config_set_int(cfg, "redis.visibility_timeout_s", 3600),
		                 AIQ_OK);
	}
	return cfg;
}

int ct_publish(aiq__broker *b, const char *queue, const aiq__wire *w, int64_t not_before_ms)
{
	return b->ops->publish(b, queue, w, not_before_ms);
}

int ct_consume(aiq__broker *b, const char *const *queues, size_t n, unsigned prefetch)
{
	return b->ops->consume(b, queues, n, prefetch);
}

int ct_fetch(aiq__broker *b, aiq__delivery **out, int64_t timeout_ms)
{
	return b->ops->fetch(b, out, timeout_ms);
}

int ct_ack(aiq__broker *b, aiq__delivery *d)
{
	return b->ops->ack(b, d);
}

int ct_reject(aiq__broker *b, aiq__delivery *d, bool requeue)
{
	return b->ops->reject(b, d, requeue);
}

int ct_dead_letter(aiq__broker *b, aiq__delivery *d, const char *reason)
{
	return b->ops->dead_letter(b, d, reason);
}

int ct_purge(aiq__broker *b, const char *queue, uint64_t *removed)
{
	return b->ops->purge(b, queue, removed);
}

int ct_depth(aiq__broker *b, const char *queue, uint64_t *count)
{
	return b->ops->depth(b, queue, count);
}

void ct_wakeup(aiq__broker *b)
{
	b->ops->wakeup(b);
}

unsigned ct_broker_caps(const aiq__broker *b)
{
	return b->ops->caps;
}

const char *ct_broker_name(const aiq__broker *b)
{
	return b->ops->name;
}

bool ct_broker_has_native_batches(const aiq__broker *b)
{
	return b->ops->fetch_batch != NULL && b->ops->ack_batch != NULL;
}

int ct_put(aiq__store *s, const aiq_result *r)
{
	return s->ops->put(s, r);
}

int ct_get(aiq__store *s, aiq_result **out, const char *id)
{
	return s->ops->get(s, out, id);
}

int ct_wait(aiq__store *s, aiq_result **out, const char *id, int64_t timeout_ms)
{
	return s->ops->wait(s, out, id, timeout_ms);
}

unsigned ct_store_caps(const aiq__store *s)
{
	return s->ops->caps;
}

const char *ct_store_name(const aiq__store *s)
{
	return s->ops->name;
}

bool ct_store_has_native_batches(const aiq__store *s)
{
	return s->ops->put_batch != NULL;
}

bool ct_store_has_native_get_batch(const aiq__store *s)
{
	return s->ops->get_batch != NULL;
}
