/*
 * The driver a contract suite runs against, chosen by the environment
 * variable AIQ_CONTRACT_DRIVER ("memory", "redis", "amqp", "postgres"), with
 * the capability set each driver must declare: a case gated by a capability
 * is skipped only where the table says the driver lacks it, so a driver that
 * loses a bit fails the caps case instead of silently running fewer cases.
 *
 * The contract programs reach drivers through the front functions of
 * lib/core (aiq__broker_*, aiq__store_*); the ct_* calls below stand in for
 * the front functions the core does not have yet, so only this pair of
 * files changes when it gains them.
 */
#ifndef AIQ_CONTRACT_H
#define AIQ_CONTRACT_H

#include "support.h"

#include "broker.h"
#include "store.h"

typedef struct ct_driver {
	const char *name;      /* the driver table's name */
	const char *url;       /* of the private server (or memory://...) */
	unsigned broker_caps;  /* exactly the AIQ__BROKER_CAP_* it must declare */
	unsigned store_caps;   /* exactly the AIQ__STORE_CAP_* it must declare */
	bool batch_all_ready;  /* fetch_batch() returns every ready delivery in one call */
	bool native_batches;   /* the driver must have its own fetch_batch/ack_batch/put_batch */
	bool native_get_batch; /* the store must have its own get_batch */
	int delay_slack_ms;    /* how late a delayed message may become visible */
	/* Known divergences from broker.h, named here so that the cases check
	 * the weaker property for that driver only (and so that fixing the
	 * driver means flipping the flag): */
	bool requeue_not_redelivered; /* a requeued delivery comes back with redelivered false */
	bool close_reverses_unacked;  /* close() returns unacked deliveries newest first */
	/* Documented driver behaviours the cases allow for: */
	bool delay_early_by_half;     /* a delayed message may come back early by less than half
	                                 its delay (the consumer re-checks its ETA) */
	bool wakeup_not_interrupting; /* wakeup() only makes the next fetch() return at once */
} ct_driver;

/* The driver under test; exits the program when the variable is unset or
 * names no known driver (safe to call from main, outside any case). */
const ct_driver *ct_driver_get(void);
/* A fresh configuration with the driver's test settings (fast polls).
 * Caller frees. */
aiq_config *ct_config(void);

/* Broker calls without a front function yet. */
int ct_publish(aiq__broker *b, const char *queue, const aiq__wire *w, int64_t not_before_ms);
int ct_consume(aiq__broker *b, const char *const *queues, size_t n, unsigned prefetch);
int ct_fetch(aiq__broker *b, aiq__delivery **out, int64_t timeout_ms);
int ct_ack(aiq__broker *b, aiq__delivery *d);
int ct_reject(aiq__broker *b, aiq__delivery *d, bool requeue);
int ct_dead_letter(aiq__broker *b, aiq__delivery *d, const char *reason);
int ct_purge(aiq__broker *b, const char *queue, uint64_t *removed);
int ct_depth(aiq__broker *b, const char *queue, uint64_t *count);
void ct_wakeup(aiq__broker *b);
unsigned ct_broker_caps(const aiq__broker *b);
const char *ct_broker_name(const aiq__broker *b);
bool ct_broker_has_native_batches(const aiq__broker *b);

/* Store calls without a front function yet. */
int ct_put(aiq__store *s, const aiq_result *r);
int ct_get(aiq__store *s, aiq_result **out, const char *id);
int ct_wait(aiq__store *s, aiq_result **out, const char *id, int64_t timeout_ms);
unsigned ct_store_caps(const aiq__store *s);
const char *ct_store_name(const aiq__store *s);
bool ct_store_has_native_batches(const aiq__store *s);
bool ct_store_has_native_get_batch(const aiq__store *s);

#endif
