/*
 * The Python-repr writers (argsrepr/kwargsrepr) and the json.dumps-style
 * writer over arbitrary JSON. The first byte picks the truncation limit.
 * Properties: a limited repr is at most `max` bytes and valid UTF-8 (a cut
 * never splits a sequence); the json.dumps-style text parses back to an
 * equal value.
 */
#include "fuzz_common.h"
#include "message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	size_t max = data[0] < 8 ? 0 : (size_t)data[0];
	json_t *v = json_loadb((const char *)data + 1, size - 1, JSON_DECODE_ANY | JSON_ALLOW_NUL,
	                       NULL);
	if (v == NULL)
		return 0;
	char *a = aiq__pyrepr_args(v, max);
	char *k = aiq__pyrepr_kwargs(v, max);
	const char *outs[2] = {a, k};
	for (int i = 0; i < 2; i++) {
		if (outs[i] == NULL)
			continue;
		size_t n = strlen(outs[i]);
		FUZZ_CHECK(max == 0 || n <= max);
		FUZZ_CHECK(aiq__utf8_valid(outs[i], n));
	}
	free(a);
	free(k);
	char *d = aiq__json_dumps_py(v);
	if (d) {
		json_t *back = json_loads(d, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		FUZZ_CHECK(back != NULL);
		FUZZ_CHECK(json_equal(back, v));
		json_decref(back);
		free(d);
	}
	json_decref(v);
	return 0;
}
