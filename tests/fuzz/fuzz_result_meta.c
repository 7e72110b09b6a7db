/*
 * Result meta JSON as Celery's backends store it (states, results,
 * exception dicts, tracebacks, children). Property: decode -> encode ->
 * decode -> encode gives the same meta text both times.
 */
#include "fuzz_common.h"
#include "result_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	aiq_result *r = NULL;
	if (aiq__result_from_meta(&r, size ? NULL : "fuzz-id", (const char *)data, size) ==
	    AIQ_OK) {
		char *meta = NULL;
		FUZZ_CHECK(aiq__result_to_meta(&meta, r) == AIQ_OK);
		aiq_result *again = NULL;
		FUZZ_CHECK(aiq__result_from_meta(&again, NULL, meta, strlen(meta)) == AIQ_OK);
		char *meta2 = NULL;
		FUZZ_CHECK(aiq__result_to_meta(&meta2, again) == AIQ_OK);
		FUZZ_CHECK(strcmp(meta, meta2) == 0);
		free(meta2);
		aiq_result_free(again);
		free(meta);
	}
	aiq_result_free(r);
	return 0;
}
