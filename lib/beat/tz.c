/*
 * IANA time zones without the C library's global TZ state (setenv("TZ") and
 * tzset() are not thread-safe): the zone's TZif file (tzfile(5), RFC 8536)
 * is read once into a table of transitions, and its POSIX TZ footer gives
 * the rule for times after the last transition.
 */
#include "beat_int.h"

#include "config_int.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TZ_MAX_FILE (1 << 20)

/* A POSIX TZ rule's date: Jn (1-365, no Feb 29), n (0-365) or Mm.w.d. */
struct tz_date {
	char kind; /* 'J', 'N' or 'M' */
	int a, b, c;
	int32_t time; /* seconds after local midnight (may be negative or > 24 h) */
};

struct tz_rule {
	bool valid;
	int32_t std_off, dst_off; /* seconds east */
	bool has_dst;
	struct tz_date start, end;
};

struct aiq__tz {
	char *name;
	size_t n;          /* transitions */
	int64_t *when;     /* n transition times */
	int32_t *off_at;   /* offset from when[i] on */
	int32_t first_off; /* before the first transition */
	struct tz_rule rule;
};

int64_t aiq__days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

void aiq__civil_from_days(int64_t days, int64_t *y, int *m, int *d)
{
	int64_t z = days + 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int month_days(int64_t y, int m)
{
	static const int n[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	return m == 2 && is_leap(y) ? 29 : n[m - 1];
}

/* ---- the POSIX TZ footer ---------------------------------------------------- */

static bool parse_name(const char **p)
{
	const char *s = *p;
	if (*s == '<') {
		const char *e = strchr(s, '>');
		if (e == NULL || e == s + 1)
			return false;
		*p = e + 1;
		return true;
	}
	while (isalpha((unsigned char)*s))
		s++;
	if (s - *p < 3)
		return false;
	*p = s;
	return true;
}

/* [+-]hh[:mm[:ss]] as seconds. */
static bool parse_hms(const char **p, int32_t *out, int max_h)
{
	const char *s = *p;
	int sign = 1;
	if (*s == '+' || *s == '-')
		sign = *s++ == '-' ? -1 : 1;
	if (!isdigit((unsigned char)*s))
		return false;
	long v[3] = {0, 0, 0};
	for (int i = 0; i < 3; i++) {
		if (i > 0) {
			if (*s != ':')
				break;
			s++;
		}
		if (!isdigit((unsigned char)*s))
			return false;
		char *end;
		v[i] = strtol(s, &end, 10);
		s = end;
	}
	if (v[0] > max_h || v[1] > 59 || v[2] > 59)
		return false;
	*out = (int32_t)(sign * (v[0] * 3600 + v[1] * 60 + v[2]));
	*p = s;
	return true;
}

static bool parse_date(const char **p, struct tz_date *d)
{
	const char *s = *p;
	char *end;
	d->time = 7200;
	if (*s == 'M') {
		d->kind = 'M';
		d->a = (int)strtol(s + 1, &end, 10);
		if (*end != '.')
			return false;
		d->b = (int)strtol(end + 1, &end, 10);
		if (*end != '.')
			return false;
		d->c = (int)strtol(end + 1, &end, 10);
		if (d->a < 1 || d->a > 12 || d->b < 1 || d->b > 5 || d->c < 0 || d->c > 6)
			return false;
	} else if (*s == 'J') {
		d->kind = 'J';
		d->a = (int)strtol(s + 1, &end, 10);
		if (d->a < 1 || d->a > 365)
			return false;
	} else if (isdigit((unsigned char)*s)) {
		d->kind = 'N';
		d->a = (int)strtol(s, &end, 10);
		if (d->a > 365)
			return false;
	} else {
		return false;
	}
	s = end;
	if (*s == '/') {
		s++;
		if (!parse_hms(&s, &d->time, 167))
			return false;
	}
	*p = s;
	return true;
}

/* "CET-1CEST,M3.5.0,M10.5.0/3": POSIX offsets count west, ours east. */
static bool parse_rule(const char *s, struct tz_rule *r)
{
	memset(r, 0, sizeof *r);
	int32_t off;
	if (!parse_name(&s) || !parse_hms(&s, &off, 24))
		return false;
	r->std_off = -off;
	if (*s == '\0') {
		r->valid = true;
		return true;
	}
	if (!parse_name(&s))
		return false;
	r->has_dst = true;
	r->dst_off = r->std_off + 3600;
	if (*s != ',' && *s != '\0') {
		if (!parse_hms(&s, &off, 24))
			return false;
		r->dst_off = -off;
	}
	if (*s == '\0') { /* no rule: the US rules of POSIX's default */
		r->start = (struct tz_date){'M', 3, 2, 0, 7200};
		r->end = (struct tz_date){'M', 11, 1, 0, 7200};
	} else {
		s++;
		if (!parse_date(&s, &r->start) || *s++ != ',' || !parse_date(&s, &r->end) || *s)
			return false;
	}
	r->valid = true;
	return true;
}

/* Local midnight of the rule date in year y as days since the epoch. */
static int64_t rule_day(const struct tz_date *d, int64_t y)
{
	int64_t jan1 = aiq__days_from_civil(y, 1, 1);
	if (d->kind == 'J') /* Feb 29 is never counted */
		return jan1 + d->a - 1 + (is_leap(y) && d->a > 59);
	if (d->kind == 'N')
		return jan1 + d->a;
	int64_t first = aiq__days_from_civil(y, d->a, 1);
	int wday = (int)(((first % 7) + 11) % 7); /* 1970-01-01 was a Thursday (4) */
	int64_t day = first + ((d->c - wday + 7) % 7) + 7 * (d->b - 1);
	while (day >= first + month_days(y, d->a))
		day -= 7;
	return day;
}

static int32_t rule_offset(const struct tz_rule *r, int64_t t)
{
	if (!r->has_dst)
		return r->std_off;
	int64_t y;
	int m, d;
	aiq__civil_from_days((t + r->std_off) / 86400 - ((t + r->std_off) % 86400 < 0), &y, &m, &d);
	/* The start is given in standard time, the end in daylight time. */
	int64_t start = rule_day(&r->start, y) * 86400 + r->start.time - r->std_off;
	int64_t end = rule_day(&r->end, y) * 86400 + r->end.time - r->dst_off;
	bool dst = start < end ? (t >= start && t < end) : !(t >= end && t < start);
	return dst ? r->dst_off : r->std_off;
}

int32_t aiq__tz_offset(const aiq__tz *tz, int64_t t)
{
	if (tz == NULL)
		return 0;
	if (tz->n == 0 || t >= tz->when[tz->n - 1]) {
		if (tz->rule.valid)
			return rule_offset(&tz->rule, t);
		return tz->n ? tz->off_at[tz->n - 1] : tz->first_off;
	}
	if (t < tz->when[0])
		return tz->first_off;
	size_t lo = 0, hi = tz->n - 1; /* when[lo] <= t < when[hi] */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (tz->when[mid] <= t)
			lo = mid;
		else
			hi = mid;
	}
	return tz->off_at[lo];
}

/* ---- the TZif file ------------------------------------------------------------ */

static int64_t be(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	if (n == 4)
		return (int32_t)(uint32_t)v;
	return (int64_t)v;
}

struct tzif_counts {
	int64_t isut, isstd, leap, time, type, chr;
};

static bool read_counts(const unsigned char *p, size_t len, struct tzif_counts *c)
{
	if (len < 44 || memcmp(p, "TZif", 4) != 0)
		return false;
	c->isut = be(p + 20, 4), c->isstd = be(p + 24, 4), c->leap = be(p + 28, 4);
	c->time = be(p + 32, 4), c->type = be(p + 36, 4), c->chr = be(p + 40, 4);
	return c->isut >= 0 && c->isstd >= 0 && c->leap >= 0 && c->time >= 0 && c->type >= 1 &&
	       c->type <= 256 && c->chr >= 0 && c->time < 100000;
}

static int parse_tzif(aiq__tz *tz, const unsigned char *buf, size_t len)
{
	struct tzif_counts c;
	if (!read_counts(buf, len, &c))
		return -1;
	int tsize = 4;
	const unsigned char *p = buf + 44;
	size_t v1 = (size_t)(c.time * 5 + c.type * 6 + c.chr + c.leap * 8 + c.isstd + c.isut);
	if (buf[4] >= '2') { /* skip to the 64-bit section */
		if (44 + v1 > len || !read_counts(buf + 44 + v1, len - 44 - v1, &c))
			return -1;
		p = buf + 44 + v1 + 44;
		tsize = 8;
	}
	size_t need = (size_t)(c.time * (tsize + 1) + c.type * 6 + c.chr + c.leap * (tsize + 4) +
	                       c.isstd + c.isut);
	if ((size_t)(p - buf) + need > len)
		return -1;
	const unsigned char *idx = p + c.time * tsize;
	const unsigned char *types = idx + c.time;
	tz->n = (size_t)c.time;
	tz->when = calloc(tz->n + 1, sizeof *tz->when);
	tz->off_at = calloc(tz->n + 1, sizeof *tz->off_at);
	if (tz->when == NULL || tz->off_at == NULL)
		return -2;
	for (size_t i = 0; i < tz->n; i++) {
		tz->when[i] = be(p + i * (size_t)tsize, tsize);
		if (idx[i] >= c.type || (i > 0 && tz->when[i] <= tz->when[i - 1]))
			return -1;
		tz->off_at[i] = (int32_t)be(types + idx[i] * 6, 4);
	}
	tz->first_off = (int32_t)be(types, 4); /* RFC 8536: type 0 before the first */
	if (tsize == 8) {
		const char *f = (const char *)p + need;
		const char *end = (const char *)buf + len;
		if (f < end && *f == '\n') {
			const char *nl = memchr(f + 1, '\n', (size_t)(end - f - 1));
			if (nl && nl > f + 1) {
				char rule[128];
				size_t n = (size_t)(nl - f - 1);
				if (n >= sizeof rule || (memcpy(rule, f + 1, n), rule[n] = '\0',
				                         !parse_rule(rule, &tz->rule)))
					return -1;
			}
		}
	}
	return 0;
}

static bool name_ok(const char *name)
{
	if (name[0] == '/' || name[0] == '\0' || strlen(name) > 200)
		return false;
	for (const char *s = name; *s; s++)
		if (!(isalnum((unsigned char)*s) || strchr("/_+-", *s)))
			return false;
	return strstr(name, "..") == NULL && strstr(name, "//") == NULL;
}

void aiq__tz_free(aiq__tz *tz)
{
	if (tz == NULL)
		return;
	free(tz->name);
	free(tz->when);
	free(tz->off_at);
	free(tz);
}

const char *aiq__tz_name(const aiq__tz *tz)
{
	return tz ? tz->name : "UTC";
}

int aiq__tz_load(aiq__tz **out, const char *name)
{
	*out = NULL;
	if (name == NULL || *name == '\0')
		name = "UTC";
	aiq__tz *tz = calloc(1, sizeof *tz);
	if (tz == NULL || (tz->name = aiq__strdup(name)) == NULL) {
		aiq__tz_free(tz);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (!name_ok(name)) {
		aiq__tz_free(tz);
		return aiq__err(AIQ_EINVAL,
		                "timezone '%.64s': not an IANA zone name (like Europe/Berlin)",
		                aiq__config_shown(name));
	}
	const char *dir = getenv("TZDIR");
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", name);
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		int e = errno;
		if (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0) {
			*out = tz; /* no transitions, offset 0 */
			return AIQ_OK;
		}
		aiq__tz_free(tz);
		return aiq__err(AIQ_EINVAL, "timezone '%s': %s (no such zone in %s)", name,
		                strerror(e), dir && *dir ? "TZDIR" : "/usr/share/zoneinfo");
	}
	unsigned char *buf = malloc(TZ_MAX_FILE);
	size_t len = buf ? fread(buf, 1, TZ_MAX_FILE, f) : 0;
	fclose(f);
	int rc = buf ? parse_tzif(tz, buf, len) : -2;
	free(buf);
	if (rc != 0) {
		aiq__tz_free(tz);
		if (rc == -2)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		return aiq__err(AIQ_EINVAL, "timezone '%s': %s is not a valid TZif file", name,
		                path);
	}
	*out = tz;
	return AIQ_OK;
}
