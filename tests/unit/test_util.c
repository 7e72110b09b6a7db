/*
 * Internal helpers: ISO-8601, UTF-8 validation, UUIDs, jitter range.
 */
#include "testutil.h"

#include "internal.h"

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

int main(void)
{
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_iso_roundtrip);
	tcase_add_test(tc, test_iso_rejects);
	tcase_add_test(tc, test_utf8);
	tcase_add_test(tc, test_uuid_and_rand);
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
