/*
 * Shared by the fuzz targets: each defines LLVMFuzzerTestOneInput and is
 * linked either with libFuzzer (scripts/fuzz.sh) or with replay.c (the
 * fuzz-replay tests in tests/fuzz/meson.build, which feed it the seed
 * corpora and the regression inputs).
 */
#ifndef AIQ_FUZZ_COMMON_H
#define AIQ_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property failed: say which, then abort so libFuzzer keeps the input. */
#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__,     \
			        __LINE__);                                                         \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* A NUL-terminated copy of the input (NUL bytes inside stay, so C-string
 * parsers see the text up to the first one). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (s) {
		if (size)
			memcpy(s, data, size);
		s[size] = '\0';
	}
	return s;
}

#endif /* AIQ_FUZZ_COMMON_H */
