/*
 * The lyrics analyzer over arbitrary bytes (its UTF-8 tokenizer, lexicons
 * and statistics), with optional params: input "params\x01text" gives both.
 * Property: any text either gives a JSON object or a clear error, never a
 * crash; the answer is valid UTF-8 JSON.
 */
#include "fuzz_common.h"
#include "internal.h"

#include <aiqueue/analyzer.h>
#include <jansson.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *all = fuzz_cstr(data, size);
	if (all == NULL)
		return 0;
	const char *params = NULL, *text = all;
	char *sep = memchr(all, '\x01', size);
	if (sep) {
		*sep = '\0';
		params = all;
		text = sep + 1;
	}
	char *out = NULL;
	if (aiq_lyrics_analyze(&out, text, params) == AIQ_OK) {
		FUZZ_CHECK(out != NULL);
		FUZZ_CHECK(aiq__utf8_valid(out, strlen(out)));
		json_t *v = json_loads(out, 0, NULL);
		FUZZ_CHECK(json_is_object(v));
		json_decref(v);
	}
	free(out);
	free(all);
	return 0;
}
