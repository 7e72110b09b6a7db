/*
 * The kombu Redis envelope (a list element). Property: what decodes encodes
 * and decodes again to the same headers, properties' delivery tag, content
 * type and encoding (when given) and body bytes.
 */
#include "fuzz_common.h"
#include "message.h"

static int same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	aiq__wire w = {0};
	char *tag = NULL;
	if (aiq__envelope_decode(&w, &tag, (const char *)data, size) == AIQ_OK) {
		char *env = NULL;
		size_t env_len = 0;
		if (aiq__envelope_encode(&env, &env_len, &w, "", "celery", tag) == AIQ_OK) {
			aiq__wire back = {0};
			char *tag2 = NULL;
			FUZZ_CHECK(aiq__envelope_decode(&back, &tag2, env, env_len) == AIQ_OK);
			FUZZ_CHECK(back.body_len == w.body_len);
			FUZZ_CHECK(w.body_len == 0 || memcmp(back.body, w.body, w.body_len) == 0);
			/* An absent content type or encoding is written as the
			 * default; a given one must survive. */
			FUZZ_CHECK(w.content_type == NULL ||
			           same_str(back.content_type, w.content_type));
			FUZZ_CHECK(w.content_encoding == NULL ||
			           same_str(back.content_encoding, w.content_encoding));
			/* No headers are written as {}, as kombu does. */
			FUZZ_CHECK(w.headers ? json_equal(back.headers, w.headers)
			                     : back.headers == NULL ||
			                               json_object_size(back.headers) == 0);
			FUZZ_CHECK(tag == NULL || same_str(tag2, tag)); /* none: a new one */
			free(tag2);
			aiq__wire_clear(&back);
			free(env);
		}
	}
	free(tag);
	aiq__wire_clear(&w);
	return 0;
}
