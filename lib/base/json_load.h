/*
 * A fast path in front of jansson's parser for the library's hot paths
 * (task arguments, message bodies, Redis envelopes).
 */
#ifndef AIQ_JSON_LOAD_H
#define AIQ_JSON_LOAD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

/*
 * True when none of the 8 bytes at s is '"', '\\' or a control character
 * and, with `ascii`, none is non-ASCII either: a run a JSON string holds as
 * it is (with `ascii`, one that needs no UTF-8 check). Exact: each test
 * finds its lowest matching byte, and borrows only reach the bytes above it.
 */
static inline bool aiq__json_plain8(const void *s, bool ascii)
{
	const uint64_t ones = UINT64_C(0x0101010101010101), high = UINT64_C(0x8080808080808080);
	uint64_t x;
	memcpy(&x, s, sizeof x);
	uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
	uint64_t t = ((q - ones) & ~q) | ((b - ones) & ~b) | ((x - ones * 0x20) & ~x);
	if (ascii)
		t |= x;
	return (t & high) == 0;
}

#endif /* AIQ_JSON_LOAD_H */
