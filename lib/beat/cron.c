/*
 * 5-field cron expressions (minute hour day-of-month month day-of-week) and
 * their next fire time on a zone's wall clock (beat_int.h states the DST
 * rule). A range whose end is below its start wraps around, as in Celery's
 * crontab ("fri-mon", "22-2"). A day must match the day of month, the month
 * and the day of week, as in Celery's crontab (Vixie cron fires on either
 * day field when both are restricted; Celery, and so this, on both).
 */
#include "beat_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct field {
	const char *what;
	int lo, hi;
	const char *const *names; /* names[i] is value lo + i, or NULL */
};

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                          "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const dow_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static const struct field fields[5] = {
        {"minute", 0, 59, NULL},          {"hour", 0, 23, NULL},
        {"day_of_month", 1, 31, NULL},    {"month_of_year", 1, 12, month_names},
        {"day_of_week", 0, 7, dow_names}, /* 7 is Sunday too */
};

/* A number or a name at *p; -1 when neither. */
static int read_value(const char **p, const struct field *f)
{
	const char *s = *p;
	if (isdigit((unsigned char)*s)) {
		long v = 0;
		while (isdigit((unsigned char)*s) && v < 100000)
			v = v * 10 + (*s++ - '0');
		*p = s;
		return (int)v;
	}
	if (f->names && isalpha((unsigned char)s[0]) && isalpha((unsigned char)s[1]) &&
	    isalpha((unsigned char)s[2]) && !isalpha((unsigned char)s[3])) {
		int n = f->lo == 1 ? 12 : 7;
		for (int i = 0; i < n; i++)
			if (strncasecmp(s, f->names[i], 3) == 0) {
				*p = s + 3;
				return f->lo + i;
			}
	}
	return -1;
}

#define BAD(...) aiq__err(AIQ_EINVAL, __VA_ARGS__)

static int parse_field(uint64_t *bits, bool *any, const struct field *f, const char *text)
{
	*bits = 0;
	const char *s = text;
	while (*s == ' ' || *s == '\t')
		s++;
	*any = *s == '*';
	if (*s == '\0')
		return BAD("crontab %s: empty (use \"*\" for every value)", f->what);
	for (;;) {
		const char *item = s;
		int lo, hi, step = 1;
		bool range = false;
		if (*s == '*') {
			lo = f->lo, hi = f->hi, s++, range = true;
			if (f->hi == 7)
				hi = 6;
		} else {
			if ((lo = read_value(&s, f)) < 0)
				return BAD("crontab %s '%.64s': '%.16s' is not a number%s", f->what,
				           text, item, f->names ? " or a name" : "");
			hi = lo;
			if (*s == '-') {
				s++;
				const char *h = s;
				if ((hi = read_value(&s, f)) < 0)
					return BAD("crontab %s '%.64s': range end '%.16s' is not a "
					           "number",
					           f->what, text, h);
				range = true;
			}
			if (lo < f->lo || lo > f->hi || hi < f->lo || hi > f->hi)
				return BAD("crontab %s '%.64s': %d is out of range %d-%d", f->what,
				           text, lo < f->lo || lo > f->hi ? lo : hi, f->lo, f->hi);
		}
		if (*s == '/') {
			s++;
			if (!isdigit((unsigned char)*s))
				return BAD("crontab %s '%.64s': a step needs a number after '/'",
				           f->what, text);
			step = read_value(&s, f);
			if (step < 1 || step > f->hi)
				return BAD("crontab %s '%.64s': step %d is out of range 1-%d",
				           f->what, text, step, f->hi);
			if (!range) /* "5/15" = from 5 to the end */
				hi = f->hi == 7 ? 6 : f->hi;
		}
		if (f->hi == 7 && lo == 7 && hi < 7)
			lo = 0; /* "7-2" is Sunday to Tuesday */
		if (lo <= hi) {
			for (int v = lo; v <= hi; v += step)
				*bits |= UINT64_C(1) << (f->hi == 7 && v == 7 ? 0 : v);
		} else { /* a range that wraps, as Celery reads it: "fri-mon", "22-2" */
			int top = f->hi == 7 ? 6 : f->hi, k = 0;
			for (int v = lo; v <= top; v++, k++)
				if (k % step == 0)
					*bits |= UINT64_C(1) << v;
			for (int v = f->lo; v <= hi; v++, k++)
				if (k % step == 0)
					*bits |= UINT64_C(1) << v;
		}
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0')
			return AIQ_OK;
		if (*s != ',')
			return BAD(
			        "crontab %s '%.64s': unexpected '%c' (a field is a list of N, N-M, "
			        "*, each with an optional /STEP)",
			        f->what, text, *s);
		s++;
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0')
			return BAD("crontab %s '%.64s': a list ends with ','", f->what, text);
	}
}

int aiq__cron_parse_fields(aiq__cron *out, const char *minute, const char *hour, const char *dom,
                           const char *month, const char *dow)
{
	memset(out, 0, sizeof *out);
	const char *text[5] = {minute, hour, dom, month, dow};
	uint64_t bits[5];
	bool any[5];
	for (int i = 0; i < 5; i++) {
		int rc = parse_field(&bits[i], &any[i], &fields[i], text[i] ? text[i] : "*");
		if (rc != AIQ_OK)
			return rc;
	}
	out->minute = bits[0];
	out->hour = (uint32_t)bits[1];
	out->dom = (uint32_t)bits[2];
	out->month = (uint16_t)bits[3];
	out->dow = (uint8_t)bits[4];
	out->dom_any = any[2];
	out->dow_any = any[4];
	if (!out->dom_any) { /* must a listed day of month ever occur? */
		static const int longest[13] = {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
		bool ever = false;
		for (int m = 1; m <= 12 && !ever; m++)
			if (out->month >> m & 1)
				ever = (out->dom & ((UINT32_C(2) << longest[m]) - 2)) != 0;
		if (!ever)
			return BAD("crontab day_of_month '%.64s' never occurs in month_of_year "
			           "'%.64s'",
			           text[2], text[3] ? text[3] : "*");
	}
	return AIQ_OK;
}

int aiq__cron_parse(aiq__cron *out, const char *expr)
{
	char buf[256], *f[6] = {0};
	size_t len = strlen(expr);
	if (len >= sizeof buf)
		return BAD("crontab '%.64s...': too long", expr);
	memcpy(buf, expr, len + 1);
	int n = 0;
	for (char *save = NULL, *tok = strtok_r(buf, " \t", &save); tok;
	     tok = strtok_r(NULL, " \t", &save))
		if (n < 6)
			f[n++] = tok;
		else
			n++;
	if (n != 5)
		return BAD("crontab '%.64s': %d fields, need 5 (minute hour day_of_month "
		           "month_of_year "
		           "day_of_week)",
		           expr, n);
	return aiq__cron_parse_fields(out, f[0], f[1], f[2], f[3], f[4]);
}

static int weekday(int64_t days)
{
	return (int)(((days % 7) + 11) % 7); /* 1970-01-01 was a Thursday */
}

static bool day_matches(const aiq__cron *c, int d, int wd)
{
	return (c->dom >> d & 1) && (c->dow >> wd & 1);
}

bool aiq__cron_matches(const aiq__cron *c, int64_t y, int m, int d, int h, int mi)
{
	return (c->month >> m & 1) && day_matches(c, d, weekday(aiq__days_from_civil(y, m, d))) &&
	       (c->hour >> h & 1) && (c->minute >> mi & 1);
}

static int64_t floor_div(int64_t a, int64_t b)
{
	return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* The first matching wall-clock minute at or after wall time w (seconds,
 * minute-aligned), or INT64_MAX past `limit`. */
static int64_t next_wall(const aiq__cron *c, int64_t w, int64_t limit)
{
	while (w <= limit) {
		int64_t days = floor_div(w, 86400), y;
		int64_t secs = w - days * 86400;
		int m, d;
		aiq__civil_from_days(days, &y, &m, &d);
		int h = (int)(secs / 3600), mi = (int)(secs % 3600 / 60);
		if (!(c->month >> m & 1))
			w = aiq__days_from_civil(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1) *
			    86400;
		else if (!day_matches(c, d, weekday(days)))
			w = (days + 1) * 86400;
		else if (!(c->hour >> h & 1))
			w = days * 86400 + (h + 1) * 3600;
		else if (!(c->minute >> mi & 1))
			w += 60;
		else
			return w;
	}
	return INT64_MAX;
}

int64_t aiq__tz_wall_to_utc(const aiq__tz *tz, int64_t w)
{
	int32_t before = aiq__tz_offset(tz, w - 86400), after = aiq__tz_offset(tz, w + 86400);
	int64_t u1 = w - before, u2 = w - after;
	bool ok1 = u1 + aiq__tz_offset(tz, u1) == w, ok2 = u2 + aiq__tz_offset(tz, u2) == w;
	if (ok1 && ok2)
		return u1 < u2 ? u1 : u2;
	if (ok1 || ok2)
		return ok1 ? u1 : u2;
	/* A gap: the first instant whose wall time is past w. */
	int64_t lo = u2 < u1 ? u2 : u1, hi = u2 < u1 ? u1 : u2;
	while (hi - lo > 1) {
		int64_t mid = lo + (hi - lo) / 2;
		if (mid + aiq__tz_offset(tz, mid) > w)
			hi = mid;
		else
			lo = mid;
	}
	return hi;
}

int64_t aiq__cron_next(const aiq__cron *c, const aiq__tz *tz, int64_t t)
{
	int64_t w = floor_div(t + aiq__tz_offset(tz, t), 60) * 60 + 60;
	int64_t limit = w + INT64_C(8) * 366 * 86400;
	for (;;) {
		w = next_wall(c, w, limit);
		if (w == INT64_MAX)
			return INT64_MAX;
		int64_t u = aiq__tz_wall_to_utc(tz, w);
		if (u > t)
			return u;
		w += 60; /* a repeated hour's first occurrence already passed */
	}
}
