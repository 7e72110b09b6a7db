/*
 * AMQP field tables as the amqp driver reads headers: librabbitmq's decoder
 * (amqp_decode_table, what a basic.deliver's content header goes through)
 * over the raw bytes, then our table -> JSON conversion. Properties: a
 * decoded table converts unless it holds invalid UTF-8 or is nested too
 * deeply; what converts encodes back to a table that converts to equal JSON.
 */
#include "amqp_table.h"
#include "fuzz_common.h"

/* Exported by librabbitmq, declared only in its private header. */
int amqp_decode_table(amqp_bytes_t encoded, amqp_pool_t *pool, amqp_table_t *output,
                      size_t *offset);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A copy of exactly `size` bytes, so ASan sees any read past them. */
	void *copy = malloc(size ? size : 1);
	if (copy == NULL)
		return 0;
	if (size)
		memcpy(copy, data, size);
	amqp_pool_t pool;
	init_amqp_pool(&pool, 4096);
	amqp_bytes_t raw = {size, copy};
	amqp_table_t t;
	size_t off = 0;
	if (amqp_decode_table(raw, &pool, &t, &off) == AMQP_STATUS_OK) {
		json_t *j = NULL;
		if (aiq__amqp_table_to_json(&j, &t) == AIQ_OK) {
			FUZZ_CHECK(json_is_object(j));
			amqp_table_t back;
			if (aiq__amqp_table_from_json(&back, j, &pool) == AIQ_OK) {
				json_t *j2 = NULL;
				FUZZ_CHECK(aiq__amqp_table_to_json(&j2, &back) == AIQ_OK);
				FUZZ_CHECK(json_equal(j, j2));
				json_decref(j2);
			}
			json_decref(j);
		}
	}
	empty_amqp_pool(&pool);
	free(copy);
	return 0;
}
