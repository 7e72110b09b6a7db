/*
 * libFuzzer entry for the decoders that face the network: kombu envelopes,
 * task messages (v2 headers + body, v1 bodies) and result meta JSON. Whatever
 * decodes must also encode and decode again to the same task.
 *
 * Built and run with libFuzzer by scripts/fuzz.sh; replayed over its seeds
 * and regressions by the unit suite (tests/fuzz/meson.build).
 */
#include "message.h"
#include "result_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void roundtrip(const aiq__message *m)
{
	aiq__wire w;
	if (aiq__message_to_wire(&w, m) != AIQ_OK)
		return;
	char *env = NULL;
	size_t env_len = 0;
	if (aiq__envelope_encode(&env, &env_len, &w, "", "celery", NULL) == AIQ_OK) {
		aiq__wire back;
		if (aiq__envelope_decode(&back, NULL, env, env_len) != AIQ_OK)
			abort();
		aiq__message again;
		if (aiq__message_from_wire(&again, &back) != AIQ_OK)
			abort();
		if (strcmp(again.id, m->id) != 0 || strcmp(again.task, m->task) != 0 ||
		    again.retries != m->retries || again.eta_us != m->eta_us ||
		    !json_equal(again.args, m->args) || !json_equal(again.kwargs, m->kwargs))
			abort();
		aiq__message_clear(&again);
		aiq__wire_clear(&back);
		free(env);
	}
	aiq__wire_clear(&w);
}

static void decode_message(const aiq__wire *w)
{
	aiq__message m;
	if (aiq__message_from_wire(&m, w) == AIQ_OK)
		roundtrip(&m);
	aiq__message_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	uint8_t mode = data[0] % 3;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;

	if (mode == 0) {
		/* A Redis list element. */
		aiq__wire w;
		char *tag = NULL;
		if (aiq__envelope_decode(&w, &tag, text, len) == AIQ_OK) {
			decode_message(&w);
			aiq__wire_clear(&w);
			free(tag);
		}
	} else if (mode == 1) {
		/* An AMQP body under Celery's usual headers, then as protocol 1. */
		aiq__wire w = {0};
		w.headers = json_pack("{s:s, s:s, s:i}", "task", "tasks.add", "id", "fuzz-id",
		                      "retries", 0);
		w.body = malloc(len + 1);
		if (w.headers && w.body) {
			memcpy(w.body, data + 1, len);
			w.body[len] = '\0';
			w.body_len = len;
			decode_message(&w);
			json_decref(w.headers);
			w.headers = NULL;
			decode_message(&w);
		}
		aiq__wire_clear(&w);
	} else {
		aiq_result *r = NULL;
		if (aiq__result_from_meta(&r, NULL, text, len) == AIQ_OK) {
			char *meta = NULL;
			if (aiq__result_to_meta(&meta, r) != AIQ_OK)
				abort();
			aiq_result *again = NULL;
			if (aiq__result_from_meta(&again, NULL, meta, strlen(meta)) != AIQ_OK)
				abort();
			aiq_result_free(again);
			free(meta);
		}
		aiq_result_free(r);
	}
	return 0;
}
