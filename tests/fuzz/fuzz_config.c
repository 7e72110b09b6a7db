/*
 * Configuration text: aiq_config_set over every key with fuzzed values. The
 * first byte picks the key, the rest is the value. Properties: a refused
 * value leaves the old one; an accepted one reads back as text that is
 * accepted again and reads back the same.
 */
#include "config_int.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	size_t nkeys = aiq__config_key_count();
	const char *key = aiq__config_key_name(data[0] % nkeys);
	char *value = fuzz_cstr(data + 1, size - 1);
	aiq_config *cfg = NULL;
	if (value == NULL || aiq_config_new(&cfg) != AIQ_OK) {
		free(value);
		return 0;
	}
	char *before = NULL;
	FUZZ_CHECK(aiq_config_get(&before, cfg, key) == AIQ_OK);
	int rc = aiq_config_set(cfg, key, value);
	char *after = NULL;
	FUZZ_CHECK(aiq_config_get(&after, cfg, key) == AIQ_OK);
	if (rc != AIQ_OK) {
		FUZZ_CHECK(strcmp(before, after) == 0);
	} else {
		FUZZ_CHECK(aiq_config_set(cfg, key, after) == AIQ_OK);
		char *again = NULL;
		FUZZ_CHECK(aiq_config_get(&again, cfg, key) == AIQ_OK);
		FUZZ_CHECK(strcmp(again, after) == 0);
		free(again);
	}
	free(before);
	free(after);
	aiq_config_free(cfg);
	free(value);
	return 0;
}
