/*
 * The scheduler's time model (lib/beat): TZif zones against the C library,
 * cron parsing and its messages, next fire times across month ends, leap
 * years and the DST transitions of Europe/Berlin and America/New_York, a
 * brute-force reference over many expressions and times, the schedule
 * file's errors, and relative intervals against Celery's.
 */
#include "testutil.h"

#include "beat_int.h"

#include <pthread.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t utc(int64_t y, int m, int d, int h, int mi)
{
	return aiq__days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60;
}

static aiq__tz *zone(const char *name)
{
	aiq__tz *tz = NULL;
	ck_assert_int_eq(aiq__tz_load(&tz, name), AIQ_OK);
	return tz;
}

static aiq__cron cron(const char *expr)
{
	aiq__cron c;
	ck_assert_msg(aiq__cron_parse(&c, expr) == AIQ_OK, "%s: %s", expr, aiq_error_last());
	return c;
}

static uint64_t rnd_state = 88172645463325252u;
static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

/* The zones agree with glibc's localtime_r (this test is one thread, so
 * setting TZ here is safe) from 1900 to 2100: the 64-bit table and, past
 * its last transition, the POSIX footer. */
START_TEST(tz_matches_libc)
{
	const char *names[] = {"Europe/Berlin", "America/New_York",  "Australia/Sydney",
	                       "Asia/Kolkata",  "America/Sao_Paulo", "UTC"};
	for (size_t z = 0; z < sizeof names / sizeof *names; z++) {
		aiq__tz *tz = zone(names[z]);
		setenv("TZ", names[z], 1);
		tzset();
		for (int i = 0; i < 1500; i++) {
			int64_t t = utc(1900, 1, 1, 0, 0) +
			            (int64_t)(rnd() % (uint64_t)(200 * 365.25 * 86400));
			time_t tt = (time_t)t;
			struct tm tm;
			ck_assert_ptr_nonnull(localtime_r(&tt, &tm));
			ck_assert_msg(aiq__tz_offset(tz, t) == tm.tm_gmtoff,
			              "%s at %lld: %d, libc %ld", names[z], (long long)t,
			              aiq__tz_offset(tz, t), tm.tm_gmtoff);
		}
		aiq__tz_free(tz);
	}
	unsetenv("TZ");
}
END_TEST

START_TEST(tz_errors)
{
	aiq__tz *tz = (aiq__tz *)1;
	ck_assert_int_eq(aiq__tz_load(&tz, "Mars/Olympus"), AIQ_EINVAL);
	ck_assert_ptr_null(tz);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "Mars/Olympus"));
	ck_assert_int_eq(aiq__tz_load(&tz, "../etc/passwd"), AIQ_EINVAL);
	ck_assert_int_eq(aiq__tz_load(&tz, "/etc/passwd"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "IANA"));
	tz = zone("");
	ck_assert_str_eq(aiq__tz_name(tz), "UTC");
	ck_assert_int_eq(aiq__tz_offset(tz, 1700000000), 0);
	aiq__tz_free(tz);
	/* A file that is not TZif. */
	char dir[] = "/tmp/aiq-tzXXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(dir));
	char path[64];
	snprintf(path, sizeof path, "%s/Bad", dir);
	FILE *f = fopen(path, "w");
	fputs("TZif2 but not really", f);
	fclose(f);
	setenv("TZDIR", dir, 1);
	ck_assert_int_eq(aiq__tz_load(&tz, "Bad"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "not a valid TZif"));
	unsetenv("TZDIR");
	remove(path);
	rmdir(dir);
}
END_TEST

static void parse_fails(const char *expr, const char *const *words)
{
	aiq__cron c;
	ck_assert_msg(aiq__cron_parse(&c, expr) == AIQ_EINVAL, "'%s' parsed", expr);
	for (; *words; words++)
		ck_assert_msg(strstr(aiq_error_last(), *words), "'%s': message '%s' lacks '%s'",
		              expr, aiq_error_last(), *words);
}

START_TEST(parse_errors)
{
	parse_fails("61 * * * *", (const char *[]){"minute", "61", "0-59", NULL});
	parse_fails("* 24 * * *", (const char *[]){"hour", "24", "0-23", NULL});
	parse_fails("* * 0 * *", (const char *[]){"day_of_month", "1-31", NULL});
	parse_fails("* * * 13 *", (const char *[]){"month_of_year", "13", NULL});
	parse_fails("* * * * 8", (const char *[]){"day_of_week", "8", NULL});
	parse_fails("* * * * * *", (const char *[]){"6 fields", "need 5", NULL});
	parse_fails("* * * *", (const char *[]){"4 fields", NULL});
	parse_fails("*/0 * * * *", (const char *[]){"step 0", NULL});
	parse_fails("*/ * * * *", (const char *[]){"step needs a number", NULL});
	parse_fails("5-x * * * *", (const char *[]){"range end 'x'", NULL});
	parse_fails("x * * * *", (const char *[]){"'x'", "not a number", NULL});
	parse_fails("1, * * * *", (const char *[]){"ends with ','", NULL});
	parse_fails("1;2 * * * *", (const char *[]){"unexpected ';'", NULL});
	parse_fails("* * * foo *", (const char *[]){"month_of_year", "or a name", NULL});
	parse_fails("0 0 30 2 *", (const char *[]){"never occurs", NULL});
	parse_fails("0 0 31 4,6,9,11 *", (const char *[]){"never occurs", NULL});
	/* A weekday restriction does not make a Feb 30 occur (both must match). */
	parse_fails("0 0 30 2 mon", (const char *[]){"never occurs", NULL});
	aiq__cron c;
	ck_assert_int_eq(aiq__cron_parse_fields(&c, "0", "", "*", "*", "*"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "hour: empty"));
	/* Feb 29 and both-restricted days are fine. */
	ck_assert_int_eq(aiq__cron_parse(&c, "0 0 29 2 *"), AIQ_OK);
	ck_assert_int_eq(aiq__cron_parse(&c, "0 0 13 * fri"), AIQ_OK);
	ck_assert_int_eq(aiq__cron_parse(&c, "0 0 29 2 mon"), AIQ_OK); /* some leap years */
}
END_TEST

START_TEST(parse_forms)
{
	aiq__cron c = cron("*/15 9-17/4 1,15 jan,JUL mon-fri");
	ck_assert_uint_eq(c.minute, (1ull << 0) | (1ull << 15) | (1ull << 30) | (1ull << 45));
	ck_assert_uint_eq(c.hour, (1u << 9) | (1u << 13) | (1u << 17));
	ck_assert_uint_eq(c.dom, (1u << 1) | (1u << 15));
	ck_assert_uint_eq(c.month, (1u << 1) | (1u << 7));
	ck_assert_uint_eq(c.dow, 0x3eu);
	c = cron("5/20 * * * 7");
	ck_assert_uint_eq(c.minute, (1ull << 5) | (1ull << 25) | (1ull << 45));
	ck_assert_uint_eq(c.dow, 1u); /* 7 is Sunday */
	c = cron("* * * * 5-7");
	ck_assert_uint_eq(c.dow, 0x61u);
	/* Ranges that wrap, as Celery's crontab reads them. */
	c = cron("50-10/5 22-2 * nov-feb fri-mon");
	ck_assert_uint_eq(c.minute,
	                  (1ull << 50) | (1ull << 55) | (1ull << 0) | (1ull << 5) | (1ull << 10));
	ck_assert_uint_eq(c.hour, (1u << 22) | (1u << 23) | 1u | (1u << 1) | (1u << 2));
	ck_assert_uint_eq(c.month, (1u << 11) | (1u << 12) | (1u << 1) | (1u << 2));
	ck_assert_uint_eq(c.dow, (1u << 5) | (1u << 6) | 1u | (1u << 1));
	c = cron("* * * * 7-2");
	ck_assert_uint_eq(c.dow, 0x07u);
	ck_assert(c.dom_any && !c.dow_any);
}
END_TEST

static void expect_seq(const char *expr, const char *zname, int64_t from, const int64_t *want,
                       size_t n)
{
	aiq__cron c = cron(expr);
	aiq__tz *tz = zone(zname);
	int64_t t = from;
	for (size_t i = 0; i < n; i++) {
		int64_t got = aiq__cron_next(&c, tz, t);
		ck_assert_msg(got == want[i], "'%s' %s after %lld: %lld, want %lld (step %zu)",
		              expr, zname, (long long)t, (long long)got, (long long)want[i], i);
		t = got;
	}
	aiq__tz_free(tz);
}

START_TEST(month_ends_and_leap_years)
{
	expect_seq("0 0 31 * *", "UTC", utc(2026, 1, 30, 0, 0),
	           (int64_t[]){utc(2026, 1, 31, 0, 0), utc(2026, 3, 31, 0, 0),
	                       utc(2026, 5, 31, 0, 0), utc(2026, 7, 31, 0, 0)},
	           4);
	expect_seq("0 12 29 2 *", "UTC", utc(2026, 1, 1, 0, 0),
	           (int64_t[]){utc(2028, 2, 29, 12, 0), utc(2032, 2, 29, 12, 0)}, 2);
	/* 2100 is not a leap year, 2000 was. */
	expect_seq("0 0 29 2 *", "UTC", utc(2096, 3, 1, 0, 0), (int64_t[]){utc(2104, 2, 29, 0, 0)},
	           1);
	expect_seq("59 23 28-31 2 *", "UTC", utc(1999, 12, 31, 0, 0),
	           (int64_t[]){utc(2000, 2, 28, 23, 59), utc(2000, 2, 29, 23, 59),
	                       utc(2001, 2, 28, 23, 59)},
	           3);
	/* Year end, and an exact fire time is not returned again. */
	expect_seq("0 0 1 1 *", "UTC", utc(2026, 12, 31, 23, 59),
	           (int64_t[]){utc(2027, 1, 1, 0, 0), utc(2028, 1, 1, 0, 0)}, 2);
	/* Both days restricted: both must match, as in Celery's crontab (the
	 * Fridays the 13th of 2026; Vixie cron would also fire on Jan 2, 9,
	 * 13, 16...). */
	expect_seq("0 0 13 * fri", "UTC", utc(2026, 1, 1, 0, 0),
	           (int64_t[]){utc(2026, 2, 13, 0, 0), utc(2026, 3, 13, 0, 0),
	                       utc(2026, 11, 13, 0, 0)},
	           3);
}
END_TEST

START_TEST(dst_berlin)
{
	/* 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC): 02:30 does not exist
	 * and fires once at 03:00 CEST. */
	expect_seq("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0),
	           (int64_t[]){utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)}, 2);
	expect_seq("*/15 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0),
	           (int64_t[]){utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 0)}, 2);
	/* 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC): 02:30 occurs twice and
	 * fires at its first occurrence only. */
	expect_seq("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12, 0),
	           (int64_t[]){utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)}, 2);
	/* Hourly across the autumn change: 02:00 CEST, then 03:00 CET. */
	expect_seq("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 30),
	           (int64_t[]){utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 2, 0),
	                       utc(2026, 10, 25, 3, 0)},
	           3);
	/* Ordinary local times keep their wall clock on both sides. */
	expect_seq("0 9 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0),
	           (int64_t[]){utc(2026, 3, 29, 7, 0), utc(2026, 3, 30, 7, 0)}, 2);
}
END_TEST

START_TEST(dst_new_york)
{
	/* 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC). */
	expect_seq("0 2 * * *", "America/New_York", utc(2026, 3, 7, 12, 0),
	           (int64_t[]){utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 0)}, 2);
	/* 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC): 01:00-01:59 twice. */
	expect_seq("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 4, 45),
	           (int64_t[]){utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 30),
	                       utc(2026, 11, 1, 7, 0), utc(2026, 11, 1, 7, 30)},
	           4);
	expect_seq("0 12 * * *", "America/New_York", utc(2026, 10, 31, 0, 0),
	           (int64_t[]){utc(2026, 10, 31, 16, 0), utc(2026, 11, 1, 17, 0)}, 2);
	/* From inside the repeated hour's second pass. */
	expect_seq("15 1 * * *", "America/New_York", utc(2026, 11, 1, 6, 5),
	           (int64_t[]){utc(2026, 11, 2, 6, 15)}, 1);
	/* Past 2037, only the POSIX footer knows the rules. */
	expect_seq("0 2 * * *", "America/New_York", utc(2050, 3, 12, 12, 0),
	           (int64_t[]){utc(2050, 3, 13, 7, 0), utc(2050, 3, 14, 6, 0)}, 2);
}
END_TEST

/* Does UNIX time u (a whole minute) fire for c in tz, by brute force? It
 * does when its wall time matches and this is that wall time's first
 * occurrence, or when u ends a gap in which a skipped minute matches. */
static bool fires_at(const aiq__cron *c, const aiq__tz *tz, int64_t u)
{
	int32_t off = aiq__tz_offset(tz, u), prev = aiq__tz_offset(tz, u - 1);
	int64_t w = u + off;
	int64_t first = w - aiq__tz_offset(tz, u - 86400); /* an earlier occurrence of w? */
	bool again = first < u && first + aiq__tz_offset(tz, first) == w;
	int64_t days = w / 86400 - (w % 86400 < 0), y;
	int m, d;
	aiq__civil_from_days(days, &y, &m, &d);
	if (!again && aiq__cron_matches(c, y, m, d, (int)(w - days * 86400) / 3600,
	                                (int)(w - days * 86400) % 3600 / 60))
		return true;
	if (off > prev) /* u ends a gap: the skipped minutes [u + prev, u + off) */
		for (int64_t s = u + prev; s < w; s += 60) {
			int64_t sd = s / 86400 - (s % 86400 < 0);
			aiq__civil_from_days(sd, &y, &m, &d);
			if (aiq__cron_matches(c, y, m, d, (int)(s - sd * 86400) / 3600,
			                      (int)(s - sd * 86400) % 3600 / 60))
				return true;
		}
	return false;
}

/* A time up to 8 hours before one of the zone's transitions in year y
 * (any time of the year in a zone without any). */
static int64_t before_transition(const aiq__tz *tz, int64_t y)
{
	int64_t jan1 = utc(y, 1, 1, 0, 0), d0 = (int64_t)(rnd() % 365);
	for (int64_t k = 0; k < 365; k++) {
		int64_t lo = jan1 + (d0 + k) % 365 * 86400, hi = lo + 86400;
		if (aiq__tz_offset(tz, lo) == aiq__tz_offset(tz, hi))
			continue;
		while (hi - lo > 1) {
			int64_t mid = lo + (hi - lo) / 2;
			if (aiq__tz_offset(tz, mid) == aiq__tz_offset(tz, lo))
				lo = mid;
			else
				hi = mid;
		}
		return hi - (int64_t)(rnd() % (8 * 3600));
	}
	return jan1 + d0 * 86400;
}

START_TEST(property_against_brute_force)
{
	const char *exprs[] = {"*/7 * * * *",     "0 */5 * * *",    "30 2 * * *",
	                       "15,45 1-3 * * 0", "0 0 1,15 * mon", "*/20 2 * 3,10,11 sun",
	                       "59 23 * * *",     "0 1-3 * * *",    "10 0 29 2 *"};
	const char *zones[] = {"UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"};
	/* Times near the transitions and anywhere in 1990-2060. */
	for (size_t z = 0; z < sizeof zones / sizeof *zones; z++) {
		aiq__tz *tz = zone(zones[z]);
		for (size_t e = 0; e < sizeof exprs / sizeof *exprs; e++) {
			aiq__cron c = cron(exprs[e]);
			for (int i = 0; i < 6; i++) {
				int64_t t;
				if (i % 2)
					t = utc(1990, 1, 1, 0, 0) +
					    (int64_t)(rnd() % (70ull * 365 * 86400));
				else /* up to 8 hours before a transition of a random year */
					t = before_transition(tz, 1995 + (int64_t)(rnd() % 60));
				int64_t n = aiq__cron_next(&c, tz, t);
				ck_assert(n > t);
				ck_assert_int_eq(n % 60 == 0 || aiq__tz_offset(tz, n) !=
				                                        aiq__tz_offset(tz, n - 1),
				                 1);
				ck_assert_msg(fires_at(&c, tz, n),
				              "'%s' %s after %lld: %lld does not fire", exprs[e],
				              zones[z], (long long)t, (long long)n);
				/* Nothing fires in between (checked for 10 hours). */
				int64_t stop = n < t + 10 * 3600 ? n : t + 10 * 3600;
				for (int64_t u = (t / 60 + 1) * 60; u < stop; u += 60)
					ck_assert_msg(!fires_at(&c, tz, u),
					              "'%s' %s after %lld: %lld fires before %lld",
					              exprs[e], zones[z], (long long)t,
					              (long long)u, (long long)n);
			}
		}
		aiq__tz_free(tz);
	}
}
END_TEST

static const char *load_fails(const char *text)
{
	json_error_t je;
	json_t *root = json_loads(text, 0, &je);
	ck_assert_msg(root != NULL, "bad test JSON: %s", je.text);
	aiq__schedule s = {0};
	const char *tzn;
	ck_assert_int_eq(aiq__schedule_load_json(&s, root, &tzn), AIQ_EINVAL);
	ck_assert_uint_eq(s.n, 0);
	aiq__schedule_clear(&s);
	json_decref(root);
	return aiq_error_last();
}

START_TEST(schedule_file)
{
	json_t *root = json_loads(
	        "{\"timezone\": \"Europe/Berlin\","
	        " \"add-every-30\": {\"task\": \"tasks.add\", \"schedule\": 30.0, \"args\": [16, "
	        "16]},"
	        " \"report\": {\"task\": \"tasks.report\", \"schedule\": {\"crontab\": "
	        "{\"minute\": "
	        "\"*/5\", \"hour\": 7, \"day_of_week\": \"mon-fri\"}}, \"kwargs\": {\"x\": 1},"
	        " \"options\": {\"queue\": \"reports\", \"expires\": 60, \"priority\": 5}}}",
	        0, NULL);
	aiq__schedule s = {0};
	const char *tzn = NULL;
	ck_assert_int_eq(aiq__schedule_load_json(&s, root, &tzn), AIQ_OK);
	ck_assert_str_eq(tzn, "Europe/Berlin");
	ck_assert_uint_eq(s.n, 2);
	ck_assert_int_eq(s.v[0].kind, AIQ__BEAT_INTERVAL);
	ck_assert_int_eq(s.v[0].interval_ms, 30000);
	ck_assert_str_eq(s.v[0].args_json, "[16,16]");
	ck_assert_str_eq(s.v[0].kwargs_json, "{}");
	ck_assert_int_eq(s.v[1].kind, AIQ__BEAT_CRON);
	ck_assert_uint_eq(s.v[1].cron.hour, 1u << 7);
	ck_assert_str_eq(s.v[1].queue, "reports");
	ck_assert_int_eq(s.v[1].expires_ms, 60000);
	ck_assert_int_eq(s.v[1].priority, 5);
	/* Interval slots are multiples of the interval since the epoch. */
	ck_assert_int_eq(aiq__entry_next_ms(&s.v[0], NULL, 1700000000123), 1700000010000);
	ck_assert_int_eq(aiq__entry_next_ms(&s.v[0], NULL, 1700000010000), 1700000040000);
	/* A second file with a name already used changes nothing. */
	ck_assert_int_eq(aiq__schedule_load_json(&s, root, &tzn), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "defined twice"));
	ck_assert_uint_eq(s.n, 2);
	json_decref(root);
	aiq__schedule_clear(&s);

	ck_assert_ptr_nonnull(
	        strstr(load_fails("{\"e\": {\"schedule\": 5}}"), "'e': task: missing"));
	ck_assert_ptr_nonnull(
	        strstr(load_fails("{\"e\": {\"task\": \"t\"}}"), "'e': schedule: missing"));
	ck_assert_ptr_nonnull(strstr(
	        load_fails("{\"ok\": {\"task\": \"t\", \"schedule\": 1}, \"e\": {\"task\": \"t\", "
	                   "\"schedule\": -1}}"),
	        "'e': schedule: an interval"));
	ck_assert_ptr_nonnull(
	        strstr(load_fails("{\"e\": {\"task\": \"t\", \"schedule\": {\"crontab\": "
	                          "{\"minute\": \"99\"}}}}"),
	               "'e': schedule: crontab minute '99': 99 is out of range 0-59"));
	ck_assert_ptr_nonnull(
	        strstr(load_fails("{\"e\": {\"task\": \"t\", \"schedule\": {\"crontab\": "
	                          "{\"minutes\": \"9\"}}}}"),
	               "schedule.crontab.minutes: unknown field"));
	ck_assert_ptr_nonnull(strstr(
	        load_fails("{\"e\": {\"task\": \"t\", \"schedule\": 1, \"args\": {\"a\": 1}}}"),
	        "'e': args: not a JSON array"));
	ck_assert_ptr_nonnull(strstr(
	        load_fails("{\"e\": {\"task\": \"t\", \"schedule\": 1, \"options\": {\"exchange\": "
	                   "\"x\"}}}"),
	        "'e': options.exchange: not supported"));
	ck_assert_ptr_nonnull(strstr(load_fails("{\"e\": {\"task\": \"t\", \"schedule\": 1, "
	                                        "\"sched\": 1}}"),
	                             "'e': sched: unknown field"));
	ck_assert_ptr_nonnull(
	        strstr(load_fails("{\"e\": {\"task\": \"t\", \"schedule\": \"often\"}}"),
	               "'e': schedule: seconds"));
	ck_assert_ptr_nonnull(strstr(load_fails("[1]"), "not a JSON object"));
}
END_TEST

/* Generated by tests/unit/relative_ref.py: from each slot, Celery 5.2.6's
 * next run of schedule(timedelta(ms / 1000), relative=True) in the zone,
 * when the last run was at that slot. Columns: zone, interval ms, slots
 * (UNIX s; 0 ends a row). */
static const struct relref {
	const char *zone;
	int64_t interval_ms;
	int64_t slots[8];
} relrefs[] = {
        {"UTC", 3600000, {1774742400, 1774746000, 1774749600, 1774753200, 1774756800}},
        {"UTC", 5400000, {1774742400, 1774746000, 1774749600, 1774753200}},
        {"UTC", 150000, {1774742400, 1774742520, 1774742640, 1774742760}},
        {"UTC", 2500, {1774742400, 1774742402, 1774742404, 1774742406}},
        {"Europe/Berlin", 3600000, {1774742400, 1774746000, 1774749600, 1774753200, 1774756800}},
        {"Europe/Berlin",
         1800000,
         {1774742400, 1774744200, 1774746000, 1774747800, 1774749600, 1774751400}},
        {"Europe/Berlin", 3600000, {1792886400, 1792893600, 1792897200, 1792900800, 1792904400}},
        {"Europe/Berlin", 7200000, {1774738800, 1774746000}},
        {"Europe/Berlin", 420000, {1774745040, 1774745460, 1774745880}},
        {"Europe/Berlin",
         420000,
         {1792888800, 1792889220, 1792889640, 1792893660, 1792894080, 1792894500, 1792894920,
          1792895340}},
        {"Europe/Berlin", 86400000, {1774652400, 1774738800, 1774821600, 1774908000}},
        {"Europe/Berlin", 172800000, {1792792800, 1792969200, 1793142000}},
        {"America/New_York", 7200000, {1793505600, 1793516400, 1793523600, 1793530800, 1793538000}},
        {"America/New_York", 3600000, {1772946000, 1772949600, 1772953200, 1772956800, 1772960400}},
        {"Asia/Kolkata", 3600000, {1780273800, 1780277400, 1780281000}},
};

static aiq__beat_entry relative_entry(int64_t interval_ms)
{
	aiq__beat_entry e = {.kind = AIQ__BEAT_RELATIVE,
	                     .interval_ms = interval_ms,
	                     .step_ms = aiq__relative_step_ms(interval_ms)};
	return e;
}

START_TEST(relative_steps)
{
	/* Celery's delta_resolution, rounding down to the resolution. */
	static const int64_t cases[][2] = {
	        {999, 0},
	        {1000, 1000},
	        {2500, 2000},
	        {59999, 59000},
	        {60000, 60000},
	        {150000, 120000},
	        {3599000, 3540000},
	        {3600000, 3600000},
	        {5400000, 3600000},
	        {86399000, 82800000},
	        {86400000, 86400000},
	        {129600000, 86400000},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		ck_assert_msg(aiq__relative_step_ms(cases[i][0]) == cases[i][1], "%lld -> %lld",
		              (long long)cases[i][0],
		              (long long)aiq__relative_step_ms(cases[i][0]));
}
END_TEST

/* The slots agree with Celery's next run from each of them, across the
 * DST changes of Berlin and New York and in a half-hour zone; every
 * instant between two slots leads to the same next slot, whatever time an
 * instance asks at. */
START_TEST(relative_against_celery)
{
	for (size_t i = 0; i < sizeof relrefs / sizeof *relrefs; i++) {
		const struct relref *r = &relrefs[i];
		aiq__tz *tz = zone(r->zone);
		aiq__beat_entry e = relative_entry(r->interval_ms);
		int64_t first = r->slots[0] * 1000;
		ck_assert_msg(aiq__entry_next_ms(&e, tz, first - 1) == first,
		              "%s %lld: %lld is not a slot (next from just before: %lld)", r->zone,
		              (long long)r->interval_ms, (long long)first,
		              (long long)aiq__entry_next_ms(&e, tz, first - 1));
		for (int k = 0; k + 1 < 8 && r->slots[k + 1]; k++) {
			int64_t a = r->slots[k] * 1000, b = r->slots[k + 1] * 1000;
			for (int64_t t = a; t < b; t += (b - a) / 7 + 1)
				ck_assert_msg(aiq__entry_next_ms(&e, tz, t) == b,
				              "%s %lld from %lld: %lld, Celery %lld", r->zone,
				              (long long)r->interval_ms, (long long)t,
				              (long long)aiq__entry_next_ms(&e, tz, t),
				              (long long)b);
			ck_assert_int_eq(aiq__entry_next_ms(&e, tz, b - 1), b);
		}
		aiq__tz_free(tz);
	}
}
END_TEST

/* A day of hourly relative slots in Berlin: 24, 23 on the spring day and
 * 24 (not 25) on the autumn day, like an hourly crontab; daily ones fire
 * at every local midnight. */
START_TEST(relative_dst_days)
{
	aiq__tz *tz = zone("Europe/Berlin");
	aiq__beat_entry hourly = relative_entry(3600000), daily = relative_entry(86400000);
	static const struct {
		int m, d, want;
	} days[] = {{3, 28, 24}, {3, 29, 23}, {10, 25, 24}, {10, 26, 24}};
	for (size_t i = 0; i < sizeof days / sizeof *days; i++) {
		/* local midnight to local midnight */
		int64_t from = utc(2026, days[i].m, days[i].d, 0, 0);
		from -= aiq__tz_offset(tz, from);
		int64_t to = aiq__entry_next_ms(&daily, tz, from * 1000) / 1000;
		ck_assert_int_eq(aiq__entry_next_ms(&daily, tz, from * 1000 - 1), from * 1000);
		int n = 0;
		for (int64_t t = from * 1000 - 1;
		     (t = aiq__entry_next_ms(&hourly, tz, t)) < to * 1000;)
			n++;
		ck_assert_msg(n == days[i].want, "2026-%02d-%02d: %d hourly slots", days[i].m,
		              days[i].d, n);
	}
	/* 7 min: the wall times 02:05-02:54 of the spring day do not exist and
	 * fire once, at 03:00 CEST (01:00 UTC); then the grid goes on at 03:01
	 * CEST. */
	aiq__beat_entry seven = relative_entry(420000);
	int64_t t = utc(2026, 3, 29, 0, 58) * 1000;
	ck_assert_int_eq(aiq__entry_next_ms(&seven, tz, t), utc(2026, 3, 29, 1, 0) * 1000);
	t = utc(2026, 3, 29, 1, 0) * 1000;
	ck_assert_int_eq(aiq__entry_next_ms(&seven, tz, t), utc(2026, 3, 29, 1, 1) * 1000);
	/* A 1 s relative entry fires every second, on the second, and through
	 * the repeated hour of autumn (03:00 CET after 02:59:59 CEST). */
	aiq__beat_entry sec = relative_entry(1000);
	ck_assert_int_eq(aiq__entry_next_ms(&sec, tz, 1700000000123), 1700000001000);
	ck_assert_int_eq(aiq__entry_next_ms(&sec, tz, 1700000001000), 1700000002000);
	t = utc(2026, 10, 25, 0, 59) * 1000 + 59000; /* 02:59:59 CEST */
	ck_assert_int_eq(aiq__entry_next_ms(&sec, tz, t), utc(2026, 10, 25, 2, 0) * 1000);
	aiq__tz_free(tz);
}
END_TEST

START_TEST(relative_file)
{
	json_t *root =
	        json_loads("{\"timezone\": \"Europe/Berlin\","
	                   " \"hourly\": {\"task\": \"t\", \"schedule\": 5400, \"relative\": "
	                   "true},"
	                   " \"plain\": {\"task\": \"t\", \"schedule\": 5400, \"relative\": "
	                   "false}}",
	                   0, NULL);
	aiq__schedule s = {0};
	const char *tzn = NULL;
	ck_assert_int_eq(aiq__schedule_load_json(&s, root, &tzn), AIQ_OK);
	ck_assert_uint_eq(s.n, 2);
	ck_assert_int_eq(s.v[0].kind, AIQ__BEAT_RELATIVE);
	ck_assert_int_eq(s.v[0].interval_ms, 5400000);
	ck_assert_int_eq(s.v[0].step_ms, 3600000);
	ck_assert_int_eq(s.v[1].kind, AIQ__BEAT_INTERVAL);
	json_decref(root);
	aiq__schedule_clear(&s);
	ck_assert_ptr_nonnull(strstr(
	        load_fails("{\"e\": {\"task\": \"t\", \"schedule\": 0.5, \"relative\": true}}"),
	        "'e': schedule: a relative interval is 1 s to 10 years"));
	ck_assert_ptr_nonnull(
	        strstr(load_fails("{\"e\": {\"task\": \"t\", \"schedule\": 5, \"relative\": 1}}"),
	               "'e': relative: true or false"));
	ck_assert_ptr_nonnull(strstr(load_fails("{\"e\": {\"task\": \"t\", \"relative\": true, "
	                                        "\"schedule\": {\"crontab\": \"* * * * *\"}}}"),
	                             "'e': relative: applies to an interval in seconds only"));

	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "broker.url", "memory://relative_unit"), AIQ_OK);
	aiq_beat *b = NULL;
	ck_assert_int_eq(aiq_beat_new(&b, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_beat_add_relative(b, "r", "t", NULL, NULL, 0.9, NULL), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "'r': schedule: a relative interval"));
	ck_assert_int_eq(aiq_beat_add_relative(b, "r", "t", NULL, NULL, 3600, NULL), AIQ_OK);
	ck_assert_uint_eq(aiq_beat_entry_count(b), 1);
	aiq_beat_free(b);
	aiq_config_free(cfg);
}
END_TEST

static void *run_beat(void *b)
{
	ck_assert_int_eq(aiq_beat_run(b), AIQ_OK);
	return NULL;
}

/* One instance without Redis: every slot once, into the broker; the
 * calls' checks; a stop before the run. */
START_TEST(beat_in_process)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "broker.url", "memory://beat_unit"), AIQ_OK);
	aiq_beat *b = NULL;
	ck_assert_int_eq(aiq_beat_new(&b, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_beat_run(b), AIQ_EINVAL); /* no entries */
	ck_assert_int_eq(aiq_beat_add_interval(b, "fast", "tasks.add", "[1, 2]", NULL, 0.05, NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_beat_add_interval(b, "fast", "tasks.add", NULL, NULL, 1, NULL),
	                 AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "'fast': defined twice"));
	ck_assert_int_eq(aiq_beat_add_cron(b, "c", "tasks.t", NULL, NULL, "* * * * * *", NULL),
	                 AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "beat entry 'c': schedule: crontab"));
	ck_assert_int_eq(aiq_beat_add_cron(b, "c", "tasks.t", "{}", NULL, "* * * * *", NULL),
	                 AIQ_EINVAL);
	ck_assert_int_eq(aiq_beat_add_cron(b, "c", "tasks.t", NULL, NULL, "* * * * *",
	                                   "{\"queue\": \"other\", \"x\": 1}"),
	                 AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "options.x: not supported"));
	ck_assert_int_eq(aiq_beat_add_cron(b, "c", "tasks.t", NULL, NULL, "* * * * *",
	                                   "{\"queue\": \"other\", \"expires\": 30}"),
	                 AIQ_OK);
	ck_assert_uint_eq(aiq_beat_entry_count(b), 2);
	ck_assert_int_eq(aiq_beat_load_file(b, "/nonexistent/beat.json"), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "/nonexistent/beat.json"));
	ck_assert_uint_eq(aiq_beat_entry_count(b), 2);

	aiq_beat_stop(b); /* before the run: it returns at once */
	ck_assert_int_eq(aiq_beat_run(b), AIQ_OK);
	ck_assert_uint_eq(aiq_beat_sent_count(b), 0);

	aiq_client *c = NULL; /* holds the memory broker open */
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	pthread_t th;
	pthread_create(&th, NULL, run_beat, b);
	struct timespec ts = {0, 620 * 1000000L};
	nanosleep(&ts, NULL);
	ck_assert_int_eq(aiq_beat_add_interval(b, "late", "tasks.add", NULL, NULL, 1, NULL),
	                 AIQ_ESTATE);
	aiq_beat_stop(b);
	pthread_join(th, NULL);
	uint64_t sent = aiq_beat_sent_count(b), depth = 0, other = 0;
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, NULL), AIQ_OK);
	ck_assert_int_eq(aiq_client_queue_depth(&other, c, "other"), AIQ_OK);
	ck_assert_uint_eq(depth + other, sent);
	ck_assert_uint_le(other, 1);  /* the crontab entry, if a minute began */
	ck_assert_uint_ge(depth, 10); /* 0.62 s of 50 ms slots, on a busy machine */
	ck_assert_uint_le(depth, 15);
	aiq_client_free(c);
	aiq_beat_free(b);

	/* A bad timezone, and a bad file named by beat.schedule. */
	ck_assert_int_eq(aiq_config_set(cfg, "beat.timezone", "Nowhere/City"), AIQ_OK);
	b = (aiq_beat *)1;
	ck_assert_int_eq(aiq_beat_new(&b, cfg), AIQ_EINVAL);
	ck_assert_ptr_null(b);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "Nowhere/City"));
	aiq_config_free(cfg);
}
END_TEST

static Suite *cron_suite(void)
{
	Suite *s = suite_create("cron");
	struct {
		const char *name;
		const TTest *tests[4];
	} cases[] = {
	        {"zones", {tz_matches_libc, tz_errors}},
	        {"cron", {parse_errors, parse_forms, month_ends_and_leap_years, dst_berlin}},
	        {"dst", {dst_new_york, property_against_brute_force}},
	        {"schedule", {schedule_file, beat_in_process}},
	        {"relative",
	         {relative_steps, relative_against_celery, relative_dst_days, relative_file}},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_set_timeout(tc, 120);
		for (size_t j = 0; j < 4 && cases[i].tests[j]; j++)
			tcase_add_test(tc, cases[i].tests[j]);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	return aiq_test_run(cron_suite());
}
