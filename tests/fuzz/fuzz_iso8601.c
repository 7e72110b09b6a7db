/*
 * The ISO-8601 parser (aiq_time_parse_iso8601 and the internal one behind
 * it). Properties: both agree; a parsed time formats (with and without the
 * offset) and parses back to the same microsecond.
 */
#include "fuzz_common.h"
#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_cstr(data, size);
	if (text == NULL)
		return 0;
	int64_t us = 0, pub = 0;
	int rc = aiq__iso8601_parse(text, &us);
	int rc_pub = aiq_time_parse_iso8601(&pub, text);
	FUZZ_CHECK((rc == AIQ_OK) == (rc_pub == AIQ_OK));
	if (rc == AIQ_OK) {
		FUZZ_CHECK(pub == us);
		char buf[AIQ__ISO_BUFSZ];
		for (int off = 0; off < 2; off++) {
			aiq__iso8601_format(buf, us, off);
			int64_t back = 0;
			FUZZ_CHECK(aiq__iso8601_parse(buf, &back) == AIQ_OK);
			FUZZ_CHECK(back == us);
		}
	}
	free(text);
	return 0;
}
