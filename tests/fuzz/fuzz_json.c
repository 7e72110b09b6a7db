/*
 * aiq__json_loadb (lib/base/json_load.c) against jansson's json_loadb, for
 * each combination of the flags the library passes: both accept or both
 * refuse, and what they accept is the same value (the same types, the same
 * members in the same order, strings byte for byte). A refusal always comes
 * from jansson, so its message is jansson's by construction; whatever the
 * fast path alone (aiq__json_fast) takes, jansson takes as the same value.
 */
#include "fuzz_common.h"
#include "json_load.h"

static char *dump(const json_t *v)
{
	return json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t flag_sets[] = {0, JSON_DECODE_ANY, JSON_ALLOW_NUL,
	                                   JSON_DECODE_ANY | JSON_ALLOW_NUL};
	const char *text = size ? (const char *)data : "";
	for (size_t f = 0; f < sizeof flag_sets / sizeof flag_sets[0]; f++) {
		json_error_t e1, e2;
		json_t *ours = aiq__json_loadb(text, size, flag_sets[f], &e1);
		json_t *theirs = json_loadb(text, size, flag_sets[f], &e2);
		FUZZ_CHECK((ours == NULL) == (theirs == NULL));
		/* What the fast path takes, jansson takes too. */
		json_t *fast = aiq__json_fast(text, size, flag_sets[f]);
		FUZZ_CHECK(fast == NULL || (theirs != NULL && json_equal(fast, theirs)));
		json_decref(fast);
		if (ours == NULL) {
			FUZZ_CHECK(strcmp(e1.text, e2.text) == 0);
			FUZZ_CHECK(e1.position == e2.position);
			continue;
		}
		FUZZ_CHECK(json_equal(ours, theirs));
		char *a = dump(ours), *b = dump(theirs);
		FUZZ_CHECK((a == NULL) == (b == NULL));
		FUZZ_CHECK(a == NULL || strcmp(a, b) == 0);
		free(a);
		free(b);
		json_decref(ours);
		json_decref(theirs);
	}
	return 0;
}
