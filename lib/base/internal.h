/*
 * Private helpers shared by the library's source files. Never installed.
 */
#ifndef AIQ_INTERNAL_H
#define AIQ_INTERNAL_H

#include <aiqueue/aiqueue.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#if defined(__GNUC__)
#define AIQ__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define AIQ__PRINTF(f, a)
#endif

/* Record `code` with a formatted detail in the calling thread's error slot
 * and return `code`, so call sites read `return aiq__err(AIQ_EINVAL, ...)`. */
int aiq__err(int code, const char *fmt, ...) AIQ__PRINTF(2, 3);
int aiq__verr(int code, const char *fmt, va_list ap) AIQ__PRINTF(2, 0);
#if defined(__clang_analyzer__) && !defined(AIQ__ERRORS_C)
/* The analyzer cannot see into errors.c; tell it what the contract above
 * says (the result is `code`, always a negative AIQ_E*), or it follows
 * impossible "the error returned 0" paths and reports them. */
static inline int aiq__err_code(int code)
{
	if (code >= 0)
		__builtin_unreachable();
	return code;
}
#define aiq__err(code, ...)      ((void)aiq__err((code), __VA_ARGS__), aiq__err_code(code))
#define aiq__verr(code, fmt, ap) ((void)aiq__verr((code), (fmt), (ap)), aiq__err_code(code))
#endif

/* Log through the process-wide handler (log.c). */
void aiq__log(int level, const char *fmt, ...) AIQ__PRINTF(2, 3);
bool aiq__log_enabled(int level);

/* Allocation helpers: NULL on failure, never abort. */
char *aiq__strdup(const char *s);
char *aiq__strndup(const char *s, size_t n);
char *aiq__asprintf(const char *fmt, ...) AIQ__PRINTF(1, 2);

/* Clocks. */
int64_t aiq__now_ms(void);  /* UNIX time, milliseconds (CLOCK_REALTIME) */
int64_t aiq__now_us(void);  /* UNIX time, microseconds */
int64_t aiq__mono_ms(void); /* monotonic milliseconds, for timeouts */

/* A millisecond count as a struct timespec (for pthread_cond_timedwait on a
 * CLOCK_MONOTONIC condition variable, which takes an absolute time). */
struct timespec aiq__timespec_ms(int64_t ms);

/* Fill `out` (37 bytes) with a random lowercase hyphenated UUID4. */
void aiq__uuid4(char out[37]);

/* Uniform random integer in [0, bound] from a thread-local generator. */
uint64_t aiq__rand_range(uint64_t bound);

/* ISO-8601 times as Celery writes them. */
#define AIQ__ISO_BUFSZ 96
/* "2026-11-29T01:20:20.706806+00:00" (with_offset) or naive
 * "2026-11-29T01:20:16.189084" (without), from UNIX microseconds. */
void aiq__iso8601_format(char buf[AIQ__ISO_BUFSZ], int64_t unix_us, bool with_offset);
/* Parse ISO-8601 date-time with optional fraction and offset ("Z", "+hh:mm",
 * "-hhmm"); a naive time is UTC. AIQ_OK or AIQ_EPROTO. */
int aiq__iso8601_parse(const char *text, int64_t *unix_us);

/* True when `s` is valid UTF-8 of length `len`. */
/* The next name of a comma-separated list ("a, b,c"): spaces around names and
 * empty items are skipped. Returns false at the end of the list. */
bool aiq__list_next(const char **p, const char **name, size_t *len);
bool aiq__utf8_valid(const char *s, size_t len);

/* Thread-safe message slot used for errors raised on a handle's own threads. */
typedef struct aiq__errslot aiq__errslot;

#endif /* AIQ_INTERNAL_H */
