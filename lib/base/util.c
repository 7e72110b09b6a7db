/*
 * Small helpers: allocation, clocks, ids, random numbers, ISO-8601, UTF-8.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uuid/uuid.h>

AIQ_API void aiq_free(void *ptr)
{
	free(ptr);
}

char *aiq__strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

char *aiq__strndup(const char *s, size_t n)
{
	return s ? strndup(s, n) : NULL;
}

char *aiq__asprintf(const char *fmt, ...)
{
	va_list ap;
	char *out = NULL;
	va_start(ap, fmt);
	int n = vasprintf(&out, fmt, ap);
	va_end(ap);
	return n < 0 ? NULL : out;
}

static int64_t clock_us(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t aiq__now_us(void)
{
	return clock_us(CLOCK_REALTIME);
}

int64_t aiq__now_ms(void)
{
	return clock_us(CLOCK_REALTIME) / 1000;
}

int64_t aiq__mono_ms(void)
{
	return clock_us(CLOCK_MONOTONIC) / 1000;
}

struct timespec aiq__timespec_ms(int64_t ms)
{
	struct timespec ts;
	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000L;
	return ts;
}

void aiq__uuid4(char out[37])
{
	uuid_t u;
	uuid_generate_random(u);
	uuid_unparse_lower(u, out);
}

/* xorshift64* seeded per thread from the clock and the thread's address:
 * only used for retry jitter, where quality needs are modest. */
static _Thread_local uint64_t rng_state;

uint64_t aiq__rand_range(uint64_t bound)
{
	if (rng_state == 0) {
		rng_state = (uint64_t)clock_us(CLOCK_MONOTONIC) ^
		            ((uint64_t)(uintptr_t)&rng_state << 17) ^ 0x9e3779b97f4a7c15ULL;
		if (rng_state == 0)
			rng_state = 1;
	}
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	uint64_t r = rng_state * 0x2545f4914f6cdd1dULL;
	if (bound == UINT64_MAX)
		return r;
	return r % (bound + 1);
}

void aiq__iso8601_format(char buf[AIQ__ISO_BUFSZ], int64_t unix_us, bool with_offset)
{
	time_t secs = (time_t)(unix_us / 1000000);
	int64_t frac = unix_us % 1000000;
	if (frac < 0) {
		frac += 1000000;
		secs -= 1;
	}
	struct tm tm;
	gmtime_r(&secs, &tm);
	snprintf(buf, AIQ__ISO_BUFSZ, "%04d-%02d-%02dT%02d:%02d:%02d.%06lld%s", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long long)frac,
	         with_offset ? "+00:00" : "");
}

static int parse_digits(const char **p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		char c = (*p)[i];
		if (c < '0' || c > '9')
			return -1;
		v = v * 10 + (c - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static bool leap_year(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* The one ISO-8601 reader: "YYYY-MM-DD[T ]hh:mm[:ss[.f{1,9}]][Z|±hh[[:]mm]]".
 * A fraction beyond microseconds is truncated; a naive time is UTC; the
 * instant, once in UTC, lies in the years 0000 to 9999. */
static bool iso8601_read(const char *text, int64_t *unix_us)
{
	const char *p = text;
	int y, mo, d, h, mi, s = 0;
	if (parse_digits(&p, 4, &y) || *p++ != '-' || parse_digits(&p, 2, &mo) || *p++ != '-' ||
	    parse_digits(&p, 2, &d) || (*p != 'T' && *p != 't' && *p != ' '))
		return false;
	p++;
	if (parse_digits(&p, 2, &h) || *p++ != ':' || parse_digits(&p, 2, &mi))
		return false;
	if (*p == ':') {
		p++;
		if (parse_digits(&p, 2, &s))
			return false;
	}
	static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap_year(y) ? 1 : 0) ||
	    h > 23 || mi > 59 || s > 60)
		return false;
	int64_t us = 0;
	if (*p == '.' || *p == ',') {
		p++;
		int digits = 0;
		for (; *p >= '0' && *p <= '9'; p++, digits++)
			if (digits < 6)
				us = us * 10 + (*p - '0');
		if (digits == 0 || digits > 9)
			return false;
		for (int i = digits; i < 6; i++)
			us *= 10;
	}
	int64_t offset_s = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p == '-' ? -1 : 1;
		int oh, om = 0;
		p++;
		if (parse_digits(&p, 2, &oh))
			return false;
		if (*p == ':') {
			p++;
			if (parse_digits(&p, 2, &om))
				return false;
		} else if (*p != '\0' && parse_digits(&p, 2, &om)) {
			return false;
		}
		if (oh > 23 || om > 59)
			return false;
		offset_s = sign * (oh * 3600 + om * 60);
	}
	if (*p != '\0')
		return false;
	int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset_s;
	/* The instant in UTC must itself be writable as YYYY: an offset or a
	 * leap second can carry 0000-01-01 or 9999-12-31 out of the range. */
	if (secs < days_from_civil(0, 1, 1) * 86400 || secs >= days_from_civil(10000, 1, 1) * 86400)
		return false;
	*unix_us = secs * 1000000 + us;
	return true;
}

int aiq__iso8601_parse(const char *text, int64_t *unix_us)
{
	if (text == NULL || unix_us == NULL)
		return aiq__err(AIQ_EINVAL, "no time given");
	if (!iso8601_read(text, unix_us))
		return aiq__err(AIQ_EPROTO, "not an ISO-8601 date-time: '%.64s'", text);
	return AIQ_OK;
}

AIQ_API int aiq_time_parse_iso8601(int64_t *out_unix_us, const char *text)
{
	if (out_unix_us == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_time_parse_iso8601: out is NULL");
	*out_unix_us = 0;
	if (text == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_time_parse_iso8601: text is NULL");
	int64_t us;
	if (!iso8601_read(text, &us))
		return aiq__err(AIQ_EINVAL,
		                "'%.64s' is not an ISO-8601 date-time (expected e.g. "
		                "2030-01-02T03:04:05Z or 2030-01-02T03:04:05.25+02:00)",
		                text);
	*out_unix_us = us;
	return AIQ_OK;
}

bool aiq__list_next(const char **p, const char **name, size_t *len)
{
	const char *s = *p;
	for (;;) {
		while (*s == ',' || *s == ' ')
			s++;
		if (*s == '\0') {
			*p = s;
			return false;
		}
		const char *start = s;
		while (*s && *s != ',')
			s++;
		const char *end = s;
		while (end > start && end[-1] == ' ')
			end--;
		if (end > start) {
			*p = s;
			*name = start;
			*len = (size_t)(end - start);
			return true;
		}
	}
}

bool aiq__utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t n;
		uint32_t cp;
		if ((c & 0xe0) == 0xc0) {
			n = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n >= len - i)
			return false; /* truncated sequence */
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
		    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}
