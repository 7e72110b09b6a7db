/*
 * The Python-repr writers (argsrepr/kwargsrepr) and the json.dumps-style
 * writer over arbitrary JSON. The first byte picks the truncation limit.
 * Properties: a limited repr is at most `max` bytes and valid UTF-8 (a cut
 * never splits a sequence), and it is the unlimited repr cut: the whole of it
 * when that fits, else a prefix of it (less at most 3 bytes of a split
 * sequence) followed by "..."; the json.dumps-style text parses back to an
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
	char *a_all = max ? aiq__pyrepr_args(v, 0) : NULL;
	char *k_all = max ? aiq__pyrepr_kwargs(v, 0) : NULL;
	const char *outs[2] = {a, k}, *whole[2] = {a_all, k_all};
	for (int i = 0; i < 2; i++) {
		if (outs[i] == NULL)
			continue;
		size_t n = strlen(outs[i]);
		FUZZ_CHECK(max == 0 || n <= max);
		FUZZ_CHECK(aiq__utf8_valid(outs[i], n));
		if (whole[i] == NULL)
			continue;
		size_t wn = strlen(whole[i]);
		if (wn <= max) {
			FUZZ_CHECK(strcmp(outs[i], whole[i]) == 0);
		} else {
			FUZZ_CHECK(n >= 3 && n + 3 >= max && strcmp(outs[i] + n - 3, "...") == 0);
			FUZZ_CHECK(memcmp(outs[i], whole[i], n - 3) == 0);
		}
	}
	free(a);
	free(k);
	free(a_all);
	free(k_all);
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
