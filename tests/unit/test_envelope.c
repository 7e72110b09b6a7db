/*
 * kombu's Redis envelope and base64, checked against the envelopes a Celery
 * 5.2 client left in Redis (tests/data/celery_redis_envelopes.json).
 */
#include "testutil.h"

#include "message.h"

#include <stdlib.h>
#include <string.h>

static json_t *envelopes;

static void load_vectors(void)
{
	size_t len;
	char *text = aiq_test_read_data("celery_redis_envelopes.json", &len);
	json_error_t jerr;
	envelopes = json_loadb(text, len, 0, &jerr);
	ck_assert_msg(envelopes != NULL, "test vectors: %s", jerr.text);
	free(text);
}

static void free_vectors(void)
{
	json_decref(envelopes);
	envelopes = NULL;
}

static const char *envelope_text(const char *name)
{
	size_t i;
	json_t *v;
	json_array_foreach(envelopes, i, v)
	{
		if (strcmp(json_string_value(json_object_get(v, "name")), name) == 0)
			return json_string_value(json_object_get(v, "envelope"));
	}
	ck_abort_msg("no envelope named %s", name);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* base64                                                                   */

START_TEST(test_base64_rfc4648)
{
	static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
	static const char *const coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
	                                    "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
	for (size_t i = 0; i < 7; i++) {
		size_t n;
		char *e = aiq__base64_encode((const unsigned char *)plain[i], strlen(plain[i]), &n);
		ck_assert_str_eq(e, coded[i]);
		ck_assert_uint_eq(n, strlen(coded[i]));
		free(e);
		unsigned char *d;
		ck_assert_int_eq(aiq__base64_decode(&d, &n, coded[i], strlen(coded[i])), AIQ_OK);
		ck_assert_uint_eq(n, strlen(plain[i]));
		ck_assert_int_eq(memcmp(d, plain[i], n), 0);
		ck_assert_int_eq(d[n], '\0');
		free(d);
	}
}
END_TEST

START_TEST(test_base64_binary_roundtrip)
{
	unsigned char all[256 * 3 + 2];
	for (size_t i = 0; i < sizeof all; i++)
		all[i] = (unsigned char)(i * 7 + 3);
	for (size_t len = 0; len <= sizeof all; len += 1 + len / 7) {
		size_t n;
		char *e = aiq__base64_encode(all, len, &n);
		ck_assert_ptr_nonnull(e);
		ck_assert_uint_eq(n, (len + 2) / 3 * 4);
		unsigned char *d;
		size_t dn;
		ck_assert_int_eq(aiq__base64_decode(&d, &dn, e, n), AIQ_OK);
		ck_assert_uint_eq(dn, len);
		ck_assert_int_eq(memcmp(d, all, len), 0);
		free(d);
		free(e);
	}
}
END_TEST

START_TEST(test_base64_rejects)
{
	static const struct {
		const char *text;
		const char *needle;
	} cases[] = {
	        {"Zg=", "not a multiple of 4"},
	        {"Zm9vY", "not a multiple of 4"},
	        {"Zg=a", "invalid base64 character 0x3d at offset 2"},
	        {"Z===", "invalid base64 character 0x3d at offset 1"},
	        {"=Zg=", "invalid base64 character 0x3d at offset 0"},
	        {"Zg==Zg==", "invalid base64 character 0x3d at offset 2"},
	        {"Zh==", "non-canonical base64 padding"},
	        {"Zm9=", "non-canonical base64 padding"},
	        {"Zm9v\n", "not a multiple of 4"},
	        {"Zm 9", "invalid base64 character 0x20 at offset 2"},
	        {"Zm-_", "invalid base64 character 0x2d at offset 2"},
	        {"Zm9v\xc3\xa9==", "invalid base64 character 0xc3 at offset 4"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		unsigned char *d = (unsigned char *)"x";
		size_t n = 99;
		ck_assert_int_eq(aiq__base64_decode(&d, &n, cases[i].text, strlen(cases[i].text)),
		                 AIQ_EPROTO);
		ck_assert_msg(strstr(aiq_error_last(), cases[i].needle) != NULL, "'%s': %s",
		              cases[i].text, aiq_error_last());
		ck_assert_ptr_null(d);
		ck_assert_uint_eq(n, 0);
	}
	/* Embedded NUL. */
	unsigned char *d;
	size_t n;
	ck_assert_int_eq(aiq__base64_decode(&d, &n, "Zm\0v", 4), AIQ_EPROTO);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Captured envelopes                                                       */

START_TEST(test_decode_captured)
{
	aiq__wire w;
	char *tag = NULL;
	const char *text = envelope_text("delay");
	ck_assert_int_eq(aiq__envelope_decode(&w, &tag, text, strlen(text)), AIQ_OK);
	ck_assert_str_eq(tag, "6e165b86-c506-46f9-97bd-803c8b6c6b38");
	ck_assert_str_eq(w.content_type, "application/json");
	ck_assert_str_eq(w.content_encoding, "utf-8");
	ck_assert_str_eq(
	        (const char *)w.body,
	        "[[42, \"I love this rap verse\"], {}, {\"callbacks\": null, \"errbacks\": "
	        "null, \"chain\": null, \"chord\": null}]");
	ck_assert_uint_eq(w.body_len, 104);
	ck_assert_str_eq(json_string_value(json_object_get(w.headers, "id")),
	                 "86e0d372-f06d-457c-a0f3-fc9f2aa2832f");
	const json_t *info = json_object_get(w.properties, "delivery_info");
	ck_assert_str_eq(json_string_value(json_object_get(info, "exchange")), "");
	ck_assert_str_eq(json_string_value(json_object_get(info, "routing_key")), "celery");
	ck_assert_ptr_null(json_object_get(w.properties, "body_encoding"));

	/* Through the message decoder: the same task as over AMQP. */
	aiq__message m;
	ck_assert_int_eq(aiq__message_from_wire(&m, &w), AIQ_OK);
	ck_assert_str_eq(m.id, "86e0d372-f06d-457c-a0f3-fc9f2aa2832f");
	ck_assert_str_eq(m.task, "tasks.analyze_track");
	ck_assert_str_eq(m.origin, "gen10129@vm");
	ck_assert_str_eq(m.reply_to, "8904eed8-f1d2-3e25-9274-b72d58e00bff");
	ck_assert_int_eq(json_integer_value(json_array_get(m.args, 0)), 42);
	ck_assert_int_eq(m.priority, 0);
	aiq__message_clear(&m);
	aiq__wire_clear(&w);
	free(tag);

	text = envelope_text("countdown_expires_priority");
	ck_assert_int_eq(aiq__envelope_decode(&w, NULL, text, strlen(text)), AIQ_OK);
	ck_assert_int_eq(aiq__message_from_wire(&m, &w), AIQ_OK);
	ck_assert_str_eq(m.id, "3f3a513f-33a9-4eb0-92a5-23726a70434e");
	ck_assert_int_eq(m.eta_us, INT64_C(1795915296877571));
	ck_assert_int_eq(m.expires_us, INT64_C(1795915386877571));
	ck_assert_int_eq(m.priority, 5);
	ck_assert_str_eq(json_string_value(json_object_get(w.properties, "expiration")), "120000");
	aiq__message_clear(&m);
	aiq__wire_clear(&w);

	text = envelope_text("priority_9");
	ck_assert_int_eq(aiq__envelope_decode(&w, NULL, text, strlen(text)), AIQ_OK);
	ck_assert_int_eq(aiq__message_from_wire(&m, &w), AIQ_OK);
	ck_assert_str_eq(m.task, "tasks.add");
	ck_assert_int_eq(m.priority, 9);
	aiq__message_clear(&m);
	aiq__wire_clear(&w);
}
END_TEST

START_TEST(test_envelope_roundtrip_exact)
{
	/* decode + encode gives back kombu's bytes, key order included. */
	size_t i;
	json_t *v;
	json_array_foreach(envelopes, i, v)
	{
		const char *text = json_string_value(json_object_get(v, "envelope"));
		aiq__wire w;
		char *tag;
		ck_assert_int_eq(aiq__envelope_decode(&w, &tag, text, strlen(text)), AIQ_OK);
		char *out;
		size_t out_len;
		ck_assert_int_eq(aiq__envelope_encode(&out, &out_len, &w, "", "celery", tag),
		                 AIQ_OK);
		ck_assert_str_eq(out, text);
		ck_assert_uint_eq(out_len, strlen(text));
		free(out);
		free(tag);
		aiq__wire_clear(&w);
	}
}
END_TEST

START_TEST(test_message_to_envelope_exact)
{
	/* A decoded Celery message, re-encoded by this codec and wrapped, is
	 * what the Celery client pushed (no expiration: that one is relative
	 * to the time of sending). */
	static const char *const names[] = {"delay", "priority_0", "priority_9"};
	for (size_t i = 0; i < 3; i++) {
		const char *text = envelope_text(names[i]);
		aiq__wire w, again;
		aiq__message m;
		char *tag;
		ck_assert_int_eq(aiq__envelope_decode(&w, &tag, text, strlen(text)), AIQ_OK);
		ck_assert_int_eq(aiq__message_from_wire(&m, &w), AIQ_OK);
		ck_assert_int_eq(aiq__message_to_wire(&again, &m), AIQ_OK);
		char *out;
		ck_assert_int_eq(aiq__envelope_encode(&out, NULL, &again, "", "celery", tag),
		                 AIQ_OK);
		ck_assert_str_eq(out, text);
		free(out);
		free(tag);
		aiq__message_clear(&m);
		aiq__wire_clear(&w);
		aiq__wire_clear(&again);
	}
}
END_TEST

START_TEST(test_envelope_own_roundtrip)
{
	aiq__message m;
	aiq__message_init(&m);
	m.id = strdup("00000000-0000-4000-8000-000000000000");
	m.task = strdup("lyrics.analyze");
	m.args = json_pack("[s]", "caf\xc3\xa9");
	m.expires_us = aiq__now_us() + 60000000;
	m.priority = 3;
	aiq__wire w;
	ck_assert_int_eq(aiq__message_to_wire(&w, &m), AIQ_OK);
	char *text;
	size_t len;
	ck_assert_int_eq(aiq__envelope_encode(&text, &len, &w, NULL, "analysis", NULL), AIQ_OK);
	ck_assert_uint_eq(len, strlen(text));

	/* Key order as kombu writes it. */
	json_t *env = json_loads(text, 0, NULL);
	ck_assert_ptr_nonnull(env);
	static const char *const top[] = {"body", "content-encoding", "content-type", "headers",
	                                  "properties"};
	static const char *const props[] = {"correlation_id", "delivery_mode", "expiration",
	                                    "delivery_info",  "priority",      "body_encoding",
	                                    "delivery_tag"};
	const char *key;
	json_t *val;
	size_t k = 0;
	json_object_foreach(env, key, val)
	{
		ck_assert_str_eq(key, top[k++]);
	}
	ck_assert_uint_eq(k, 5);
	k = 0;
	json_object_foreach(json_object_get(env, "properties"), key, val)
	{
		ck_assert_str_eq(key, props[k++]);
	}
	ck_assert_uint_eq(k, 7);
	const char *tag_in_env = json_string_value(
	        json_object_get(json_object_get(env, "properties"), "delivery_tag"));
	ck_assert_uint_eq(strlen(tag_in_env), 36);
	ck_assert_str_eq(
	        json_string_value(json_object_get(
	                json_object_get(json_object_get(env, "properties"), "delivery_info"),
	                "routing_key")),
	        "analysis");

	aiq__wire back;
	char *tag;
	ck_assert_int_eq(aiq__envelope_decode(&back, &tag, text, len), AIQ_OK);
	ck_assert_str_eq(tag, tag_in_env);
	ck_assert_uint_eq(back.body_len, w.body_len);
	ck_assert_int_eq(memcmp(back.body, w.body, w.body_len), 0);
	ck_assert(json_equal(back.headers, w.headers));
	aiq__message d;
	ck_assert_int_eq(aiq__message_from_wire(&d, &back), AIQ_OK);
	ck_assert_str_eq(json_string_value(json_array_get(d.args, 0)), "caf\xc3\xa9");
	ck_assert_int_eq(d.priority, 3);
	ck_assert_int_eq(d.expires_us, m.expires_us);
	aiq__message_clear(&d);
	aiq__wire_clear(&back);
	free(tag);
	json_decref(env);
	free(text);

	/* Binary bodies survive; headers may be absent (protocol 1). */
	unsigned char bin[] = {0, 1, 2, 0xff, 0xfe, '"', '\\', 0};
	aiq__wire raw = {0};
	raw.body = bin;
	raw.body_len = sizeof bin;
	ck_assert_int_eq(aiq__envelope_encode(&text, NULL, &raw, "", "celery", "tag-1"), AIQ_OK);
	ck_assert_ptr_nonnull(strstr(text, "\"headers\": {}"));
	ck_assert_ptr_nonnull(strstr(text, "\"content-type\": \"application/json\""));
	ck_assert_int_eq(aiq__envelope_decode(&back, &tag, text, strlen(text)), AIQ_OK);
	ck_assert_uint_eq(back.body_len, sizeof bin);
	ck_assert_int_eq(memcmp(back.body, bin, sizeof bin), 0);
	ck_assert_str_eq(tag, "tag-1");
	free(tag);
	free(text);
	aiq__wire_clear(&back);

	aiq__message_clear(&m);
	aiq__wire_clear(&w);
}
END_TEST

START_TEST(test_envelope_raw_body)
{
	/* Without body_encoding the body is the text itself. */
	const char *text = "{\"body\": \"[[1], {}, {}]\", \"headers\": {\"task\": \"t\", \"id\": "
	                   "\"i\"}, \"properties\": {}}";
	aiq__wire w;
	char *tag = (char *)"x";
	ck_assert_int_eq(aiq__envelope_decode(&w, &tag, text, strlen(text)), AIQ_OK);
	ck_assert_ptr_null(tag);
	ck_assert_str_eq((const char *)w.body, "[[1], {}, {}]");
	ck_assert_ptr_null(w.content_type);
	aiq__message m;
	ck_assert_int_eq(aiq__message_from_wire(&m, &w), AIQ_OK);
	ck_assert_str_eq(m.id, "i");
	aiq__message_clear(&m);
	aiq__wire_clear(&w);

	/* No properties and no headers at all. */
	const char *bare = "{\"body\": \"{}\"}";
	ck_assert_int_eq(aiq__envelope_decode(&w, NULL, bare, strlen(bare)), AIQ_OK);
	ck_assert_ptr_null(w.headers);
	ck_assert(json_is_object(w.properties));
	aiq__wire_clear(&w);
}
END_TEST

START_TEST(test_envelope_rejects)
{
	static const struct {
		const char *text;
		size_t len; /* 0: strlen */
		const char *needle;
	} cases[] = {
	        {"", 0, "envelope is empty"},
	        {"not json", 0, "envelope is not valid JSON"},
	        {"[]", 0, "envelope must be a JSON object, got array"},
	        {"{}", 0, "envelope has no 'body'"},
	        {"{\"body\": 5}", 0, "envelope 'body' must be a string, got integer"},
	        {"{\"body\": null}", 0, "envelope 'body' must be a string, got null"},
	        {"{\"body\": \"@@@@\", \"properties\": {\"body_encoding\": \"base64\"}}", 0,
	         "envelope body is not valid base64: invalid base64 character 0x40 at offset 0"},
	        {"{\"body\": \"Zg=\", \"properties\": {\"body_encoding\": \"base64\"}}", 0,
	         "envelope body is not valid base64"},
	        {"{\"body\": \"x\", \"properties\": {\"body_encoding\": \"gzip\"}}", 0,
	         "envelope body encoding 'gzip' is not supported"},
	        {"{\"body\": \"x\", \"properties\": {\"body_encoding\": 1}}", 0,
	         "envelope property 'body_encoding' must be a string, got integer"},
	        {"{\"body\": \"x\", \"properties\": {\"delivery_tag\": 5}}", 0,
	         "envelope property 'delivery_tag' must be a string, got integer"},
	        {"{\"body\": \"x\", \"headers\": []}", 0,
	         "envelope 'headers' must be an object, got array"},
	        {"{\"body\": \"x\", \"properties\": \"p\"}", 0,
	         "envelope 'properties' must be an object, got string"},
	        {"{\"body\": \"x\", \"content-type\": 5}", 0,
	         "envelope 'content-type' must be a string, got integer"},
	        {"{\"body\": \"x\", \"content-encoding\": \"a\\u0000b\"}", 0,
	         "envelope 'content-encoding' contains a NUL character"},
	        {"\xff\xfe{}", 0, "envelope is not valid JSON"},
	        {"{\"body\": \"x\"}\0", 14, "envelope is not valid JSON"},
	        {"{\"body\": \"x\"", 0, "envelope is not valid JSON"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		aiq__wire w;
		char *tag = (char *)"x";
		size_t len = cases[i].len ? cases[i].len : strlen(cases[i].text);
		ck_assert_msg(aiq__envelope_decode(&w, &tag, cases[i].text, len) == AIQ_EPROTO,
		              "case %zu accepted", i);
		ck_assert_msg(strstr(aiq_error_last(), cases[i].needle) != NULL,
		              "case %zu: '%s' lacks '%s'", i, aiq_error_last(), cases[i].needle);
		ck_assert_ptr_null(tag);
		ck_assert_ptr_null(w.body);
		ck_assert_ptr_null(w.headers);
		ck_assert_ptr_null(w.properties);
	}
	aiq__wire w;
	ck_assert_int_eq(aiq__envelope_decode(&w, NULL, NULL, 10), AIQ_EPROTO);

	/* Every prefix of a real envelope is rejected, none crashes. */
	const char *text = envelope_text("countdown_expires_priority");
	size_t n = strlen(text);
	for (size_t cut = 0; cut < n; cut++) {
		ck_assert_int_eq(aiq__envelope_decode(&w, NULL, text, cut), AIQ_EPROTO);
	}

	/* Encoding needs a routing key and JSON objects. */
	aiq__wire ok = {0};
	char *out;
	ck_assert_int_eq(aiq__envelope_encode(&out, NULL, &ok, "", NULL, NULL), AIQ_EINVAL);
	ok.headers = json_array();
	ck_assert_int_eq(aiq__envelope_encode(&out, NULL, &ok, "", "celery", NULL), AIQ_EINVAL);
	ck_assert_ptr_null(out);
	aiq__wire_clear(&ok);

	/* Regression: a content type that is not UTF-8 was reported as out of memory. */
	ok.content_type = strdup("application/\xff");
	ck_assert_int_eq(aiq__envelope_encode(&out, NULL, &ok, "", "celery", NULL), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "UTF-8"));
	ck_assert_ptr_null(out);
	aiq__wire_clear(&ok);
	ok.content_encoding = strdup("utf-\xc3");
	ck_assert_int_eq(aiq__envelope_encode(&out, NULL, &ok, "", "celery", NULL), AIQ_EINVAL);
	aiq__wire_clear(&ok);
}
END_TEST

START_TEST(test_envelope_property_order)
{
	/* Unknown properties keep their place; stale delivery_info and tag
	 * are replaced, not duplicated. */
	aiq__wire w = {0};
	w.body = (unsigned char *)strdup("[]");
	w.body_len = 2;
	w.headers = json_object();
	w.properties = json_pack("{s:s, s:{s:s}, s:s, s:i, s:s}", "correlation_id", "c",
	                         "delivery_info", "exchange", "old", "app_id", "me", "priority", 1,
	                         "delivery_tag", "old-tag");
	char *out;
	ck_assert_int_eq(aiq__envelope_encode(&out, NULL, &w, "ex", "rk", "new-tag"), AIQ_OK);
	ck_assert_str_eq(out, "{\"body\": \"W10=\", \"content-encoding\": \"utf-8\", "
	                      "\"content-type\": \"application/json\", \"headers\": {}, "
	                      "\"properties\": {\"correlation_id\": \"c\", \"app_id\": \"me\", "
	                      "\"delivery_info\": {\"exchange\": \"ex\", \"routing_key\": \"rk\"}, "
	                      "\"priority\": 1, \"body_encoding\": \"base64\", "
	                      "\"delivery_tag\": \"new-tag\"}}");
	free(out);
	/* Without a priority, delivery_info goes last before the envelope's own. */
	json_object_del(w.properties, "priority");
	ck_assert_int_eq(aiq__envelope_encode(&out, NULL, &w, NULL, "rk", "t"), AIQ_OK);
	ck_assert_ptr_nonnull(strstr(out,
	                             "\"app_id\": \"me\", \"delivery_info\": {\"exchange\": \"\", "
	                             "\"routing_key\": \"rk\"}, \"body_encoding\": \"base64\""));
	free(out);
	aiq__wire_clear(&w);
}
END_TEST

static Suite *envelope_suite(void)
{
	Suite *s = suite_create("envelope");
	TCase *tc = tcase_create("base64");
	tcase_add_test(tc, test_base64_rfc4648);
	tcase_add_test(tc, test_base64_binary_roundtrip);
	tcase_add_test(tc, test_base64_rejects);
	suite_add_tcase(s, tc);

	tc = tcase_create("envelope");
	tcase_add_checked_fixture(tc, load_vectors, free_vectors);
	tcase_add_test(tc, test_decode_captured);
	tcase_add_test(tc, test_envelope_roundtrip_exact);
	tcase_add_test(tc, test_message_to_envelope_exact);
	tcase_add_test(tc, test_envelope_own_roundtrip);
	tcase_add_test(tc, test_envelope_raw_body);
	tcase_add_test(tc, test_envelope_rejects);
	tcase_add_test(tc, test_envelope_property_order);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return aiq_test_run(envelope_suite());
}
