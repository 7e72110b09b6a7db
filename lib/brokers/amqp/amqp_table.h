/*
 * JSON <-> AMQP 0-9-1 field tables, with the exact type tags Celery's
 * py-amqp writes (reference: celery-wire.md §2.2). Private to the amqp
 * driver.
 */
#ifndef AIQ_AMQP_TABLE_H
#define AIQ_AMQP_TABLE_H

#include "internal.h"

#include <amqp.h>
#include <jansson.h>

/* Encode a JSON object as a field table allocated from `pool`: string -> 'S',
 * null -> 'V', integer -> 'I' (int32) or 'l' (beyond int32), true/false ->
 * 't', real -> 'd', array -> 'A', object -> 'F'. Keys longer than 255 bytes
 * are rejected (AIQ_EINVAL), as are nesting levels beyond 64. NULL `obj`
 * gives an empty table. */
int aiq__amqp_table_from_json(amqp_table_t *out, const json_t *obj, amqp_pool_t *pool);

/* Decode a field table into a new JSON object. Accepts every tag librabbitmq
 * reads: S, x (string if UTF-8, else null), V, t, b, B, s, u, I, i, l, L, f,
 * d, D (as a real), T (timestamp -> integer seconds), A, F. */
int aiq__amqp_table_to_json(json_t **out, const amqp_table_t *table);

#endif /* AIQ_AMQP_TABLE_H */
