/*
 * The LLM analyzer's reader of a chat completion body (what an
 * OpenAI-compatible server answered with HTTP 200). Properties: an answer is
 * a JSON object holding the model and an "analysis" object; a refusal names
 * its error type and has a non-empty, valid UTF-8 message (it ends up in a
 * task result and in logs).
 */
#include "fuzz_common.h"
#include "llm_int.h"

#include <jansson.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[1024];
	const char *type = NULL;
	char *out = NULL;
	int rc = aiq__llm_parse_answer(&out, &type, err, sizeof err, (const char *)data, size,
	                               "fuzz-model", 12, size % 2 == 0, "http://127.0.0.1:1/v1");
	if (rc == AIQ_OK) {
		json_t *v = json_loads(out, 0, NULL);
		FUZZ_CHECK(json_is_object(v));
		FUZZ_CHECK(json_is_object(json_object_get(v, "analysis")));
		FUZZ_CHECK(json_is_string(json_object_get(v, "model")));
		json_decref(v);
	} else {
		FUZZ_CHECK(type != NULL && err[0] != '\0');
		FUZZ_CHECK(aiq__utf8_valid(err, strlen(err)));
	}
	free(out);
	return 0;
}
