/*
 * Client internals visible to the unit tests.
 */
#ifndef AIQ_CLIENT_INT_H
#define AIQ_CLIENT_INT_H

#include "internal.h"

/* Single enqueues published so far, and the groups (publish calls) that
 * carried them: concurrent enqueues share one publish_batch. */
void aiq__client_publish_stats(aiq_client *c, size_t *published, size_t *groups);

/* Tests: each group's leader sleeps this long before it publishes, so
 * that enqueues overlap even where threads run one at a time (valgrind). */
void aiq__client_test_publish_delay(aiq_client *c, unsigned us);

#endif /* AIQ_CLIENT_INT_H */
