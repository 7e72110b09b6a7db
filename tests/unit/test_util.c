/*
 * Internal helpers: ISO-8601, UTF-8 validation, UUIDs, jitter range.
 */
#include "testutil.h"

#include "internal.h"
#include "json_load.h"

#include <string.h>

START_TEST(test_iso_roundtrip)
{
	int64_t us = 0;
	/* Captured from a Celery producer: eta with offset and microseconds. */
	ck_assert_int_eq(aiq__iso8601_parse("2026-11-29T01:20:20.706806+00:00", &us), AIQ_OK);
	ck_assert_int_eq(us, INT64_C(1795915220706806));
	char buf[AIQ__ISO_BUFSZ];
	aiq__iso8601_format(buf, us, true);
	ck_assert_str_eq(buf, "2026-11-29T01:20:20.706806+00:00");
	aiq__iso8601_format(buf, us, false);
	ck_assert_str_eq(buf, "2026-11-29T01:20:20.706806");

	/* Naive means UTC; offsets are applied; Z; short fractions. */
	int64_t naive = 0, z = 0, plus = 0, frac = 0;
	ck_assert_int_eq(aiq__iso8601_parse("2026-11-29T01:20:20.706806", &naive), AIQ_OK);
	ck_assert_int_eq(naive, us);
	ck_assert_int_eq(aiq__iso8601_parse("2026-11-29T01:20:20Z", &z), AIQ_OK);
	ck_assert_int_eq(z, INT64_C(1795915220000000));
	ck_assert_int_eq(aiq__iso8601_parse("2026-11-29T04:20:20+03:00", &plus), AIQ_OK);
	ck_assert_int_eq(plus, z);
	ck_assert_int_eq(aiq__iso8601_parse("2026-11-29T01:20:20.5", &frac), AIQ_OK);
	ck_assert_int_eq(frac, z + 500000);
	ck_assert_int_eq(aiq__iso8601_parse("1970-01-01T00:00:00", &z), AIQ_OK);
	ck_assert_int_eq(z, 0);
	ck_assert_int_eq(aiq__iso8601_parse("2024-02-29T00:00:00", &z), AIQ_OK);
	ck_assert_int_eq(z, INT64_C(1709164800000000));
	/* The ends of the range still parse and format back. */
	static const char *ends[] = {"0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"};
	for (size_t i = 0; i < 2; i++) {
		ck_assert_int_eq(aiq__iso8601_parse(ends[i], &z), AIQ_OK);
		char out[AIQ__ISO_BUFSZ];
		aiq__iso8601_format(out, z, true);
		int64_t back = 0;
		ck_assert_int_eq(aiq__iso8601_parse(out, &back), AIQ_OK);
		ck_assert_int_eq(back, z);
	}
}
END_TEST

START_TEST(test_iso_rejects)
{
	static const char *bad[] = {
	        "",
	        "2026",
	        "2026-13-01T00:00:00",
	        "2026-11-31T00:00:00",
	        "2026-11-29T25:00:00",
	        "2026-11-29 01:20:20 junk",
	        "2026-11-29T01:20:20.",
	        "2026-11-29T01:20:20+0",
	        "not a date",
	        "2026-11-29T01:20:20+99:00",
	        /* valid fields whose instant in UTC leaves the years 0000-9999 */
	        "0000-01-01T00:00:00+00:01",
	        "9999-12-31T23:59:60Z",
	        "9999-12-31T23:30:00-01:00",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int64_t us = 0;
		ck_assert_msg(aiq__iso8601_parse(bad[i], &us) == AIQ_EPROTO, "accepted '%s'",
		              bad[i]);
	}
	int64_t us;
	ck_assert_int_eq(aiq__iso8601_parse(NULL, &us), AIQ_EINVAL);
}
END_TEST

/* The public parser: one reader for the library, the CLI and the server. */
START_TEST(test_time_parse_fractions)
{
	/* 2030-01-02T03:04:05Z */
	const int64_t base = INT64_C(1893553445000000);
	static const struct {
		const char *text;
		int64_t frac_us;
	} cases[] = {
	        {"2030-01-02T03:04:05.1Z", 100000},
	        {"2030-01-02T03:04:05.12Z", 120000},
	        {"2030-01-02T03:04:05.123Z", 123000},
	        {"2030-01-02T03:04:05.1234Z", 123400},
	        {"2030-01-02T03:04:05.12345Z", 123450},
	        {"2030-01-02T03:04:05.123456Z", 123456},
	        {"2030-01-02T03:04:05.1234567Z", 123456}, /* truncated, not rounded */
	        {"2030-01-02T03:04:05.12345678Z", 123456},
	        {"2030-01-02T03:04:05.123456789Z", 123456},
	        {"2030-01-02T03:04:05,5Z", 500000},
	        {"2030-01-02T03:04:05.999999999", 999999},
	        {"2030-01-02T03:04:05", 0},
	        {"2030-01-02t03:04:05z", 0},
	        {"2030-01-02 03:04:05", 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int64_t us = -1;
		ck_assert_msg(aiq_time_parse_iso8601(&us, cases[i].text) == AIQ_OK,
		              "refused '%s': %s", cases[i].text, aiq_error_last());
		ck_assert_msg(us == base + cases[i].frac_us, "'%s' -> %lld", cases[i].text,
		              (long long)us);
	}
	/* Minutes only: seconds are zero. */
	int64_t us = 0;
	ck_assert_int_eq(aiq_time_parse_iso8601(&us, "2030-01-02T03:04Z"), AIQ_OK);
	ck_assert_int_eq(us, base - 5000000);
}
END_TEST

START_TEST(test_time_parse_offsets)
{
	const int64_t base = INT64_C(1893553445000000); /* 2030-01-02T03:04:05Z */
	static const struct {
		const char *text;
		int64_t offset_s; /* local minus UTC */
	} cases[] = {
	        {"2030-01-02T03:04:05Z", 0},           {"2030-01-02T03:04:05+00:00", 0},
	        {"2030-01-02T03:04:05-00:00", 0},      {"2030-01-02T05:04:05+02:00", 7200},
	        {"2030-01-02T05:04:05+0200", 7200},    {"2030-01-02T05:04:05+02", 7200},
	        {"2030-01-02T08:34:05+05:30", 19800},  {"2030-01-02T08:34:05+0530", 19800},
	        {"2030-01-01T23:04:05-04:00", -14400}, {"2030-01-01T23:04:05-0400", -14400},
	        {"2030-01-01T21:49:05-05:15", -18900}, {"2030-01-03T02:03:05+22:59", 82740},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int64_t us = -1;
		ck_assert_msg(aiq_time_parse_iso8601(&us, cases[i].text) == AIQ_OK,
		              "refused '%s': %s", cases[i].text, aiq_error_last());
		ck_assert_msg(us == base, "'%s' -> %lld, want %lld", cases[i].text, (long long)us,
		              (long long)base);
	}
	/* The fraction and the offset together, as the server and CLI get them. */
	int64_t us = 0;
	ck_assert_int_eq(aiq_time_parse_iso8601(&us, "2030-01-02T05:04:05.25+02:00"), AIQ_OK);
	ck_assert_int_eq(us, base + 250000);
	/* The internal reader (wire messages) is the same parser. */
	int64_t internal = 0;
	ck_assert_int_eq(aiq__iso8601_parse("2030-01-02T05:04:05.25+0200", &internal), AIQ_OK);
	ck_assert_int_eq(internal, us);
}
END_TEST

START_TEST(test_time_parse_rejects)
{
	static const char *bad[] = {
	        "",
	        "2030",
	        "2030-01-02",
	        "2030-01-02T",
	        "2030-01-02T03",
	        "2030-01-02T03:04:05.",
	        "2030-01-02T03:04:05.1234567890Z", /* 10 fraction digits */
	        "2030-01-02T03:04:05.Z",
	        "2030-01-02T03:04:05+2",
	        "2030-01-02T03:04:05+02:",
	        "2030-01-02T03:04:05+02:0",
	        "2030-01-02T03:04:05+020",
	        "2030-01-02T03:04:05+02:00:00",
	        "2030-01-02T03:04:05+24:00",
	        "2030-01-02T03:04:05+02:60",
	        "2030-01-02T03:04:05ZZ",
	        "2030-01-02T03:04:05 UTC",
	        "2030-01-02T24:00:00",
	        "2030-01-02T03:60:00",
	        "2030-00-02T03:04:05",
	        "2030-01-32T03:04:05",
	        "2023-02-29T00:00:00", /* not a leap year */
	        "2100-02-29T00:00:00",
	        "2030-1-2T03:04:05",
	        "2030/01/02T03:04:05",
	        " 2030-01-02T03:04:05",
	        "abc",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int64_t us = 12345;
		ck_assert_msg(aiq_time_parse_iso8601(&us, bad[i]) == AIQ_EINVAL, "accepted '%s'",
		              bad[i]);
		ck_assert_msg(us == 0, "'%s' left the output at %lld", bad[i], (long long)us);
		ck_assert_msg(strstr(aiq_error_last(), "ISO-8601") != NULL, "message '%s'",
		              aiq_error_last());
	}
	int64_t us = 12345;
	ck_assert_int_eq(aiq_time_parse_iso8601(&us, NULL), AIQ_EINVAL);
	ck_assert_int_eq(us, 0);
	ck_assert_int_eq(aiq_time_parse_iso8601(NULL, "2030-01-02T03:04:05Z"), AIQ_EINVAL);
	/* Leap days that exist are accepted. */
	ck_assert_int_eq(aiq_time_parse_iso8601(&us, "2000-02-29T00:00:00Z"), AIQ_OK);
	ck_assert_int_eq(us, INT64_C(951782400000000));
}
END_TEST

/* A scheme this build cannot open is told apart from a service that is down,
 * without connecting; the message names the feature and the Debian package. */
static void expect_unsupported(int rc, const char *url, const char *want1, const char *want2)
{
	ck_assert_msg(rc == AIQ_EUNSUPPORTED, "%s: rc %d", url, rc);
	ck_assert_msg(strstr(aiq_error_last(), want1) != NULL, "%s: '%s' lacks '%s'", url,
	              aiq_error_last(), want1);
	ck_assert_msg(strstr(aiq_error_last(), want2) != NULL, "%s: '%s' lacks '%s'", url,
	              aiq_error_last(), want2);
}

START_TEST(test_url_check)
{
	ck_assert_int_eq(aiq_url_check_broker("memory://"), AIQ_OK);
	ck_assert_int_eq(aiq_url_check_broker("memory://named"), AIQ_OK);
	ck_assert_int_eq(aiq_url_check_store("memory://"), AIQ_OK);
	ck_assert_int_eq(aiq_url_check_broker(NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_url_check_store(NULL), AIQ_EINVAL);
	ck_assert_int_eq(aiq_url_check_broker("localhost:6379"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_url_check_store("no scheme"), AIQ_EINVAL);
	expect_unsupported(aiq_url_check_broker("sqs://queue"), "sqs://", "'sqs'", "unknown");
	expect_unsupported(aiq_url_check_store("cassandra://h"), "cassandra://", "'cassandra'",
	                   "unknown");
	expect_unsupported(aiq_url_check_broker("postgresql://h/db"), "postgresql:// as broker",
	                   "'postgresql'", "not a broker");
	expect_unsupported(aiq_url_check_store("amqp://h//"), "amqp:// as store", "'amqp'",
	                   "not a result store");
	/* Secrets never appear: only the scheme is quoted. */
	expect_unsupported(aiq_url_check_broker("sqs://user:s3cret@h"), "sqs with password", "sqs",
	                   "unknown");
	ck_assert_ptr_null(strstr(aiq_error_last(), "s3cret"));
#ifdef AIQ_HAVE_AMQP
	ck_assert_int_eq(aiq_url_check_broker("amqp://guest:guest@127.0.0.1:1//"), AIQ_OK);
	ck_assert_int_eq(aiq_url_check_broker("AMQP://h"), AIQ_OK);
#else
	expect_unsupported(aiq_url_check_broker("amqp://h//"), "amqp://", "librabbitmq-dev",
	                   "'amqp' feature");
#endif
#ifdef AIQ_HAVE_REDIS
	ck_assert_int_eq(aiq_url_check_broker("redis://127.0.0.1:1/0"), AIQ_OK);
	ck_assert_int_eq(aiq_url_check_store("redis://127.0.0.1:1/1"), AIQ_OK);
#else
	expect_unsupported(aiq_url_check_broker("redis://h/0"), "redis://", "libhiredis-dev",
	                   "'redis' feature");
	expect_unsupported(aiq_url_check_store("redis://h/1"), "redis://", "libhiredis-dev",
	                   "'redis' feature");
#endif
#ifdef AIQ_HAVE_POSTGRES
	ck_assert_int_eq(aiq_url_check_store("postgresql://u:p@127.0.0.1:1/db"), AIQ_OK);
#else
	expect_unsupported(aiq_url_check_store("postgresql://h/db"), "postgresql://", "libpq-dev",
	                   "'postgres' feature");
#endif
}
END_TEST

START_TEST(test_utf8)
{
	ck_assert(aiq__utf8_valid("plain", 5));
	ck_assert(aiq__utf8_valid("\xd0\xbb\xd1\x8e\xd0\xb1\xd0\xbe\xd0\xb2\xd1\x8c", 12));
	ck_assert(aiq__utf8_valid("\xf0\x9f\x8e\xb5", 4)); /* emoji */
	ck_assert(!aiq__utf8_valid("\xd0", 1));            /* truncated */
	ck_assert(!aiq__utf8_valid("\xf0\x9f\x8e", 3));    /* truncated */
	ck_assert(!aiq__utf8_valid("\xc0\xaf", 2));        /* overlong */
	ck_assert(!aiq__utf8_valid("\xed\xa0\x80", 3));    /* surrogate */
	ck_assert(!aiq__utf8_valid("\xff", 1));
	ck_assert(!aiq__utf8_valid("a\x80", 2));
}
END_TEST

/* The comma-list reader behind worker.queues. */
START_TEST(test_list_next)
{
	static const struct {
		const char *text;
		const char *joined; /* names seen, '|'-separated */
	} cases[] = {
	        {"", ""},
	        {" , ,, ", ""},
	        {"a", "a"},
	        {"a,b", "a|b"},
	        {" a , b b ,,c, ", "a|b b|c"},
	        {",celery", "celery"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char seen[64] = "";
		const char *name;
		size_t len;
		for (const char *p = cases[i].text; aiq__list_next(&p, &name, &len);) {
			ck_assert_uint_gt(len, 0);
			if (seen[0])
				strcat(seen, "|");
			strncat(seen, name, len);
		}
		ck_assert_msg(strcmp(seen, cases[i].joined) == 0, "'%s' gave '%s'", cases[i].text,
		              seen);
	}
}
END_TEST

START_TEST(test_uuid_and_rand)
{
	char a[37], b[37];
	aiq__uuid4(a);
	aiq__uuid4(b);
	ck_assert_int_eq(strlen(a), 36);
	ck_assert_str_ne(a, b);
	ck_assert_int_eq(a[14], '4'); /* version nibble */
	ck_assert_int_eq(a[8], '-');
	for (int i = 0; i < 10000; i++)
		ck_assert_uint_le(aiq__rand_range(10), 10);
	ck_assert_uint_eq(aiq__rand_range(0), 0);
}
END_TEST

/* The fast JSON path takes the documents the library reads most (bodies,
 * envelopes, arguments with long strings, escapes, non-ASCII) and gives the
 * values jansson gives; it leaves reals, long integers and everything jansson
 * refuses to jansson, whose messages callers then see. */
static void check_same(const char *text, size_t len, size_t flags, bool want_fast)
{
	json_error_t e1, e2;
	json_t *fast = aiq__json_fast(text, len, flags);
	json_t *ours = aiq__json_loadb(text, len, flags, &e1);
	json_t *theirs = json_loadb(text, len, flags, &e2);
	ck_assert_msg((fast != NULL) == want_fast, "fast path %s: %.60s", fast ? "took" : "left",
	              text);
	ck_assert_msg((ours == NULL) == (theirs == NULL), "%.60s", text);
	if (theirs == NULL) {
		ck_assert_str_eq(e1.text, e2.text);
	} else {
		ck_assert(json_equal(ours, theirs));
		char *a = json_dumps(ours, JSON_ENCODE_ANY | JSON_COMPACT);
		char *b = json_dumps(theirs, JSON_ENCODE_ANY | JSON_COMPACT);
		ck_assert_str_eq(a, b);
		free(a);
		free(b);
	}
	if (fast != NULL)
		ck_assert(theirs != NULL && json_equal(fast, theirs));
	json_decref(fast);
	json_decref(ours);
	json_decref(theirs);
}

START_TEST(test_json_fast)
{
	static const char *taken[] = {
	        "[[\"x\"], {\"a\": 1}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null}]",
	        "{\"body\": \"W1sxLCAyXSwge30sIHt9XQ==\", \"headers\": {\"retries\": 0, "
	        "\"timelimit\": "
	        "[null, null], \"eta\": null}, \"properties\": {\"delivery_mode\": 2}}",
	        "[\"caf\\u00e9 \\ud83c\\udfb5 \\n\\t\\\"q\\\" \\/ \\\\ \\b\\f\\r\"]",
	        "[\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8e\xb5\"]",
	        "{\"a\":1,\"a\":2,\"b\":[],\"c\":{}}",
	        "  [1 , -2 ,\n 0, -0, 123456789012345678, -123456789012345678 ]\r\n",
	        "[true, false, null, [[[]]], {\"k\": {\"k\": {}}}]",
	};
	for (size_t i = 0; i < sizeof taken / sizeof taken[0]; i++)
		check_same(taken[i], strlen(taken[i]), JSON_ALLOW_NUL, true);
	check_same("\"top\"", 5, JSON_DECODE_ANY, true);
	check_same("42", 2, JSON_DECODE_ANY, true);
	check_same("[\"a\\u0000b\"]", 12, JSON_ALLOW_NUL, true);

	static const char *left[] = {
	        "[1.5]",
	        "[1e3]",
	        "[1234567890123456789]",
	        "[1,]",
	        "[01]",
	        "truex",
	        "[truex]",
	        "[\"\\ud83c\"]",
	        "[\"\\udfb5\"]",
	        "[\"\\x\"]",
	        "[\"\\u12g4\"]",
	        "{\"\\u0000\": 1}",
	        "[\"tab\there\"]",
	        "[\"\xc0\xaf\"]",
	        "[\"\xed\xa0\x80\"]",
	        "[\"\xf4\x90\x80\x80\"]",
	        "[\"cut\xe2\x82\"]",
	        "[1] x",
	        "[",
	        "{\"a\" 1}",
	        "{\"a\":1,",
	        "[1,",
	        "{1: 2}",
	        "",
	        "   ",
	        "[\"open",
	};
	for (size_t i = 0; i < sizeof left / sizeof left[0]; i++)
		check_same(left[i], strlen(left[i]), JSON_ALLOW_NUL, false);
	check_same("[\"a\\u0000b\"]", 12, 0, false); /* NUL only with JSON_ALLOW_NUL */
	check_same("\"top\"", 5, 0, false);          /* a scalar only with JSON_DECODE_ANY */
	check_same("[1]", 3, JSON_REJECT_DUPLICATES, false); /* other flags: jansson's */
	check_same("[1, 2]\0", 7, 0, false);                 /* a NUL byte after the value */

	/* Long strings: plain, with escapes and non-ASCII at every offset of
	 * the 8-byte scan, nested deep. */
	size_t n = 70000;
	char *big = malloc(n + 64);
	ck_assert_ptr_nonnull(big);
	for (size_t off = 0; off < 24; off++) {
		size_t k = 0;
		big[k++] = '[';
		big[k++] = '"';
		for (size_t i = 0; i < n - 32; i++)
			big[k++] = (char)('a' + (i % 26));
		memcpy(big + 2 + off, "\\n\xc3\xa9\\u00e9\\\"", 12);
		big[k++] = '"';
		big[k++] = ']';
		check_same(big, k, 0, true);
	}
	free(big);
	char deep[600];
	memset(deep, '[', 250);
	memset(deep + 250, ']', 250);
	check_same(deep, 500, 0, true);
	memset(deep, '[', 300);
	memset(deep + 300, ']', 300);
	check_same(deep, 600, 0, false); /* deeper than the fast path goes: jansson's */
}
END_TEST

int main(void)
{
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_iso_roundtrip);
	tcase_add_test(tc, test_iso_rejects);
	tcase_add_test(tc, test_time_parse_fractions);
	tcase_add_test(tc, test_time_parse_offsets);
	tcase_add_test(tc, test_time_parse_rejects);
	tcase_add_test(tc, test_url_check);
	tcase_add_test(tc, test_utf8);
	tcase_add_test(tc, test_list_next);
	tcase_add_test(tc, test_json_fast);
	tcase_add_test(tc, test_uuid_and_rand);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
