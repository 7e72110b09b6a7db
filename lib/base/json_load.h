/*
 * A fast path in front of jansson's parser for the library's hot paths
 * (task arguments, message bodies, Redis envelopes).
 */
#ifndef AIQ_JSON_LOAD_H
#define AIQ_JSON_LOAD_H

#include <jansson.h>
#include <stddef.h>

/*
 * json_loadb() with the same result: the same values, the same failures and
 * error texts. Plain documents (objects, arrays, strings, integers of up to
 * 18 digits, true/false/null) are parsed here, long strings without escapes
 * eight bytes at a time; anything else (reals, errors, very deep nesting,
 * flags other than JSON_DECODE_ANY and JSON_ALLOW_NUL) is handed to
 * json_loadb, which stays the authority on what is refused and why
 * (fuzz_json checks that both agree).
 */
json_t *aiq__json_loadb(const char *text, size_t len, size_t flags, json_error_t *err);

/* The fast path alone: the value, or NULL when it leaves the text to
 * jansson (for the tests that check which texts it takes). */
json_t *aiq__json_fast(const char *text, size_t len, size_t flags);

#endif /* AIQ_JSON_LOAD_H */
