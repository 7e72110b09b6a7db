/*
 * URLs as kombu reads them (lib/base/url.c), the Redis and AMQP drivers' use of
 * them, and the redactor.
 */
#include "testutil.h"

#include "broker.h"
#include "internal.h"
#include "store.h"
#include "url.h"
#ifdef AIQ_HAVE_REDIS
#include "redis_common.h"
#endif

#include <stdlib.h>
#include <string.h>

#define SECRET "S3CRETpw"

static void parse_ok(aiq__url *u, const char *url)
{
	int rc = aiq__url_parse(u, url);
	ck_assert_msg(rc == AIQ_OK, "parse(%s) = %d: %s", url, rc, aiq_error_last());
}

/* Parse must fail with `code` and a message holding `want`. */
static void parse_fails(const char *url, const char *want)
{
	aiq__url u;
	int rc = aiq__url_parse(&u, url);
	ck_assert_msg(rc == AIQ_EINVAL, "parse(%s) = %d, want AIQ_EINVAL", url, rc);
	ck_assert_msg(strstr(aiq_error_last(), want) != NULL, "parse(%s): '%s' lacks '%s'", url,
	              aiq_error_last(), want);
	aiq__url_clear(&u);
}

static void str_is(const char *got, const char *want)
{
	if (want == NULL)
		ck_assert_ptr_null(got);
	else {
		ck_assert_ptr_nonnull(got);
		ck_assert_str_eq(got, want);
	}
}

START_TEST(test_kombu_amqp_forms)
{
	aiq__url u;
	parse_ok(&u, "amqp://guest:guest@broker.example:5672//");
	str_is(u.scheme, "amqp");
	str_is(u.user, "guest");
	str_is(u.password, "guest");
	str_is(u.host, "broker.example");
	ck_assert_int_eq(u.port, 5672);
	str_is(u.path, "/"); /* kombu: vhost "/" */
	ck_assert(!u.bare_user);
	aiq__url_clear(&u);

	parse_ok(&u, "amqp://host//");
	str_is(u.user, NULL);
	str_is(u.password, NULL);
	str_is(u.host, "host");
	ck_assert_int_eq(u.port, 0);
	str_is(u.path, "/");
	aiq__url_clear(&u);

	parse_ok(&u, "amqp://host");
	str_is(u.path, NULL);
	aiq__url_clear(&u);
	parse_ok(&u, "amqp://host/");
	str_is(u.path, "");
	aiq__url_clear(&u);
	parse_ok(&u, "AMQPS://host:");
	str_is(u.scheme, "amqps");
	ck_assert_int_eq(u.port, 0);
	aiq__url_clear(&u);

	/* Percent-decoding in user, password and vhost. */
	parse_ok(&u, "amqp://us%40er:p%2Fw%3Ad@host/%2f");
	str_is(u.user, "us@er");
	str_is(u.password, "p/w:d");
	str_is(u.path, "/");
	aiq__url_clear(&u);
	parse_ok(&u, "amqp://u:a+b%zz@host/v%2Fx");
	str_is(u.password, "a+b%zz"); /* '+' stays outside the query; bad escapes stay */
	str_is(u.path, "v/x");
	aiq__url_clear(&u);
	parse_ok(&u, "amqp:///");
	str_is(u.host, NULL);
	str_is(u.path, "");
	aiq__url_clear(&u);
}
END_TEST

START_TEST(test_query)
{
	aiq__url u;
	parse_ok(&u, "amqp://h//?heartbeat=10&connect_timeout=2.5&empty=&bare&x=1&x=2&sp=a+b%26c");
	str_is(aiq__url_query(&u, "heartbeat"), "10");
	str_is(aiq__url_query(&u, "connect_timeout"), "2.5");
	str_is(aiq__url_query(&u, "empty"), NULL); /* parse_qsl drops blank values */
	str_is(aiq__url_query(&u, "bare"), NULL);
	str_is(aiq__url_query(&u, "x"), "2"); /* the last one wins */
	str_is(aiq__url_query(&u, "sp"), "a b&c");
	str_is(u.path, "/");
	aiq__url_clear(&u);
	parse_ok(&u, "redis://h/3?db=4#frag");
	str_is(u.path, "3");
	str_is(aiq__url_query(&u, "db"), "4");
	aiq__url_clear(&u);
}
END_TEST

START_TEST(test_ipv6_and_ports)
{
	aiq__url u;
	parse_ok(&u, "amqp://u:p@[::1]:5673//");
	str_is(u.host, "::1");
	ck_assert_int_eq(u.port, 5673);
	aiq__url_clear(&u);
	parse_ok(&u, "redis://[fe80::1%25eth0]/2");
	str_is(u.host, "fe80::1%eth0");
	ck_assert_int_eq(u.port, 0);
	str_is(u.path, "2");
	aiq__url_clear(&u);
	parse_ok(&u, "redis://h:65535");
	ck_assert_int_eq(u.port, 65535);
	aiq__url_clear(&u);

	parse_fails("amqp://h:0//", "bad port '0'");
	parse_fails("amqp://h:65536//", "bad port '65536'");
	parse_fails("amqp://h:99999999999999999999//", "expected a number from 1 to 65535");
	parse_fails("amqp://h:-1//", "bad port '-1'");
	parse_fails("amqp://h:56x//", "bad port '56x'");
	parse_fails("redis://[::1:6379", "unbalanced '['");
	parse_fails("redis://::1]:6379", "brackets");
	parse_fails("redis://::1:6379/0", "several ':'");
	parse_fails("redis://[::1]x:6379", "after ']'");
	parse_fails("redis://[]:6379", "empty IPv6");
	parse_fails("redis://[::1]:0", "bad port");
}
END_TEST

START_TEST(test_errors)
{
	parse_fails("host:5672", "has no scheme");
	parse_fails("://host", "has no scheme");
	parse_fails("amqp://u:p%00w@host//", "NUL");
	parse_fails("amqp://host/v%00", "NUL");
	parse_fails("amqp://host//?a=%00", "NUL");
	/* Messages never show the password, even of a URL that fails. */
	parse_fails("amqp://u:" SECRET "@host:0//", "amqp://u:***@host:0//");
	ck_assert_ptr_null(strstr(aiq_error_last(), SECRET));
	aiq__url u;
	ck_assert_int_eq(aiq__url_parse(&u, NULL), AIQ_EINVAL);
	aiq__url_clear(&u);
	aiq__url_clear(NULL);
}
END_TEST

/* Passwords with unencoded '#', '?', '/', '@' and ':': userinfo ends at the
 * last '@'. */
START_TEST(test_awkward_passwords)
{
	static const struct {
		const char *url, *user, *password, *host, *path;
	} cases[] = {
	        {"redis://user:pa#ss@host/1", "user", "pa#ss", "host", "1"},
	        {"redis://user:pa?ss@host/1", "user", "pa?ss", "host", "1"},
	        {"redis://user:p/a@s:s@host:7/1", "user", "p/a@s:s", "host", "1"},
	        {"redis://:a#b?c/d@host", NULL, "a#b?c/d", "host", NULL},
	        {"amqp://u:p;w@host//", "u", "p;w", "host", "/"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		aiq__url u;
		parse_ok(&u, cases[i].url);
		str_is(u.user, cases[i].user);
		str_is(u.password, cases[i].password);
		str_is(u.host, cases[i].host);
		str_is(u.path, cases[i].path);
		aiq__url_clear(&u);
	}
	aiq__url u;
	parse_ok(&u, "redis://" SECRET "@host");
	ck_assert(u.bare_user);
	str_is(u.user, SECRET);
	str_is(u.password, NULL);
	aiq__url_clear(&u);
}
END_TEST

START_TEST(test_schemes)
{
	static const char *const names[] = {"redis", "redis+socket", NULL};
	ck_assert_uint_eq(aiq__url_scheme_len("redis+socket:///x"), 12);
	ck_assert_uint_eq(aiq__url_scheme_len("a1.-+://"), 5);
	ck_assert_uint_eq(aiq__url_scheme_len("1a://x"), 0);
	ck_assert_uint_eq(aiq__url_scheme_len("a b://x"), 0);
	ck_assert_uint_eq(aiq__url_scheme_len("://x"), 0);
	ck_assert_uint_eq(aiq__url_scheme_len("redis:/x"), 0);
	ck_assert_uint_eq(aiq__url_scheme_len(NULL), 0);
	ck_assert(aiq__url_scheme_in(names, "REDIS+Socket:///x", 12));
	ck_assert(aiq__url_scheme_in(names, "Redis://x", 5));
	ck_assert(!aiq__url_scheme_in(names, "rediss://x", 6));
}
END_TEST

START_TEST(test_segments)
{
	ck_assert_uint_eq(aiq__url_segment_len("amqp://a//;amqp://b//"), 10);
	ck_assert_uint_eq(aiq__url_segment_len("amqp://u:p;w@a//"), 16);
	ck_assert_uint_eq(aiq__url_segment_len("sentinel://a;sentinel://b"), 12);
	ck_assert_uint_eq(aiq__url_segment_len(""), 0);
	ck_assert_uint_eq(aiq__url_segment_len("a;b"), 3);
}
END_TEST

static void check_redact(const char *in, const char *want)
{
	char *got = aiq__url_redact(in);
	ck_assert_ptr_nonnull(got);
	ck_assert_msg(strcmp(got, want) == 0, "redact(%s) = %s, want %s", in, got, want);
	ck_assert_msg(strstr(got, SECRET) == NULL, "redact(%s) leaks: %s", in, got);
	free(got);
}

START_TEST(test_redact_planted_secrets)
{
	check_redact("redis://" SECRET "@host:6379/0", "redis://***@host:6379/0");
	check_redact("redis://user:pa#" SECRET "@host/1", "redis://user:***@host/1");
	check_redact("redis://user:pa?" SECRET "@host/1", "redis://user:***@host/1");
	check_redact("redis://user:" SECRET "/x@y@host/1", "redis://user:***@host/1");
	check_redact("redis://:" SECRET "@h/0?password=" SECRET "&db=2",
	             "redis://:***@h/0?password=***&db=2");
	check_redact("unix://:" SECRET "@/run/r.sock?db=1", "unix://:***@/run/r.sock?db=1");
	check_redact("rediss://" SECRET "@h", "rediss://***@h");
	check_redact("amqp://u:" SECRET "%40x@h//", "amqp://u:***@h//");
	check_redact("sentinel://:" SECRET "@h1:26379;sentinel://:" SECRET "@h2:26379",
	             "sentinel://:***@h1:26379;sentinel://:***@h2:26379");
	check_redact("amqp://u:" SECRET "@h1//;amqp://u:" SECRET "@h2//",
	             "amqp://u:***@h1//;amqp://u:***@h2//");
	check_redact("redis://:pw;" SECRET "@h", "redis://:***@h");
	check_redact("https://api.example/v1?api_key=" SECRET,
	             "https://api.example/v1?api_key=***");
	check_redact("https://" SECRET "@api.example/v1", "https://***@api.example/v1");
	check_redact("https://u:" SECRET "@api.example/v1#x", "https://u:***@api.example/v1#x");
	check_redact("postgresql://u@h/db?PASSWORD=" SECRET, "postgresql://u@h/db?PASSWORD=***");
	check_redact("http://h/?token=" SECRET "#f", "http://h/?token=***#f");
	/* Shown as they are: nothing secret in them. */
	check_redact("amqp://user@host/vhost", "amqp://user@host/vhost");
	check_redact("amqp://guest:@host//", "amqp://guest:***@host//");
	check_redact("redis://127.0.0.1:6379/0?db=1", "redis://127.0.0.1:6379/0?db=1");
	check_redact("memory://", "memory://");
	check_redact("just text; no url", "just text; no url");
	check_redact("", "");
	ck_assert_ptr_null(aiq__url_redact(NULL));
}
END_TEST

START_TEST(test_public_redact)
{
	char *out = (char *)"poison";
	ck_assert_int_eq(aiq_url_redact(&out, NULL), AIQ_EINVAL);
	ck_assert_ptr_null(out);
	ck_assert_int_eq(aiq_url_redact(NULL, "redis://x"), AIQ_EINVAL);
	ck_assert_int_eq(aiq_url_redact(&out, "redis://:" SECRET "@h"), AIQ_OK);
	ck_assert_str_eq(out, "redis://:***@h");
	aiq_free(out);
}
END_TEST

#ifdef AIQ_HAVE_REDIS
static void target_ok(aiq__redis_target *t, const char *url)
{
	int rc = aiq__redis_target_parse(t, url, NULL);
	ck_assert_msg(rc == AIQ_OK, "target(%s) = %d: %s", url, rc, aiq_error_last());
}

static void target_fails(const char *url, int code, const char *want)
{
	aiq__redis_target t;
	int rc = aiq__redis_target_parse(&t, url, NULL);
	ck_assert_msg(rc == code, "target(%s) = %d, want %d", url, rc, code);
	ck_assert_msg(strstr(aiq_error_last(), want) != NULL, "target(%s): '%s' lacks '%s'", url,
	              aiq_error_last(), want);
	ck_assert_msg(strstr(aiq_error_last(), SECRET) == NULL, "target(%s) leaks: %s", url,
	              aiq_error_last());
	aiq__redis_target_clear(&t);
}

START_TEST(test_redis_targets)
{
	aiq__redis_target t;
	target_ok(&t, "redis://user:pw@host:6380/3");
	str_is(t.host, "host");
	ck_assert_int_eq(t.port, 6380);
	str_is(t.user, "user");
	str_is(t.password, "pw");
	ck_assert_int_eq(t.db, 3);
	str_is(t.path, NULL);
	aiq__redis_target_clear(&t);

	target_ok(&t, "redis://:pw@host");
	str_is(t.user, NULL);
	str_is(t.password, "pw");
	ck_assert_int_eq(t.port, 6379);
	ck_assert_int_eq(t.db, 0);
	aiq__redis_target_clear(&t);

	target_ok(&t, "redis://" SECRET "@host/");
	str_is(t.user, NULL);
	str_is(t.password, SECRET); /* a bare userinfo is the password */
	ck_assert_int_eq(t.db, 0);
	ck_assert_ptr_null(strstr(t.redacted, SECRET));
	aiq__redis_target_clear(&t);

	target_ok(&t, "redis://");
	str_is(t.host, "127.0.0.1");
	ck_assert_int_eq(t.port, 6379);
	aiq__redis_target_clear(&t);

	target_ok(&t, "redis://[::1]:7000//5?socket_timeout=1.5&socket_connect_timeout=0.25");
	str_is(t.host, "::1");
	ck_assert_int_eq(t.port, 7000);
	ck_assert_int_eq(t.db, 5);
	ck_assert_int_eq(t.socket_timeout_ms, 1500);
	ck_assert_int_eq(t.connect_timeout_ms, 250);
	aiq__redis_target_clear(&t);

	target_ok(&t, "redis+socket:///run/redis/r%20s.sock?virtual_host=3");
	str_is(t.path, "/run/redis/r s.sock");
	str_is(t.host, NULL);
	ck_assert_int_eq(t.db, 3);
	aiq__redis_target_clear(&t);

	target_ok(&t, "unix://:p%40w@/tmp/r.sock?db=4&password=qpw");
	str_is(t.path, "/tmp/r.sock");
	str_is(t.password, "qpw"); /* the query overrides, as in Celery */
	ck_assert_int_eq(t.db, 4);
	aiq__redis_target_clear(&t);

	target_ok(&t, "redis://u:pa#ss@h/2");
	str_is(t.password, "pa#ss");
	ck_assert_int_eq(t.db, 2);
	aiq__redis_target_clear(&t);

	target_fails("rediss://:" SECRET "@h:6380/0", AIQ_EUNSUPPORTED, "TLS");
	target_fails("rediss://h", AIQ_EUNSUPPORTED, "tunnel");
	target_fails("redis://h/0?ssl_cert_reqs=required", AIQ_EUNSUPPORTED, "TLS");
	target_fails("redis://:" SECRET "@h/0?bogus=1", AIQ_EINVAL, "unknown option 'bogus'");
	target_fails("redis://:" SECRET "@h/x", AIQ_EINVAL, "bad database number");
	target_fails("redis://h/?db=x", AIQ_EINVAL, "db must be a database number");
	target_fails("redis://h/?socket_timeout=0", AIQ_EINVAL, "socket_timeout");
	target_fails("unix://tmp/r.sock", AIQ_EINVAL, "absolute socket path");
	target_fails("redis+socket://", AIQ_EINVAL, "absolute socket path");
	target_fails("redis://:" SECRET "@h:70000", AIQ_EINVAL, "bad port '70000'");
	target_fails("amqp://h", AIQ_EINVAL, "not a redis://");
}
END_TEST

/* kombu's and Celery's Sentinel lists: the first URL carries the master's
 * credentials and db, the master name comes from ?master_name= or the key. */
START_TEST(test_sentinel_targets)
{
	aiq__redis_target t;
	target_ok(&t, "sentinel://:" SECRET "@h1:26380/2;sentinel://h2?master_name=m");
	ck_assert_uint_eq(t.nsentinels, 2);
	str_is(t.sentinels[0].host, "h1");
	ck_assert_int_eq(t.sentinels[0].port, 26380);
	str_is(t.sentinels[1].host, "h2");
	ck_assert_int_eq(t.sentinels[1].port, 26379);
	str_is(t.host, NULL);
	str_is(t.password, SECRET);
	ck_assert_int_eq(t.db, 2);
	str_is(t.master_name, "m");
	str_is(t.sentinel_password, NULL);
	ck_assert_int_eq(t.min_replicas, 0);
	ck_assert_ptr_null(strstr(t.redacted, SECRET));
	aiq__redis_target_clear(&t);

	/* a ';' inside a password stays in it */
	target_ok(&t, "sentinel://u:a;b@h1;sentinel://h2;sentinel://h3:1?master_name=m&db=4");
	ck_assert_uint_eq(t.nsentinels, 3);
	str_is(t.user, "u");
	str_is(t.password, "a;b");
	ck_assert_int_eq(t.db, 4);
	ck_assert_int_eq(t.sentinels[2].port, 1);
	aiq__redis_target_clear(&t);

	/* the keys: master name, the sentinels' password, durability */
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "redis.master_name", "fromkey"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "redis.sentinel_password", "spw"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.min_replicas", 1), AIQ_OK);
	ck_assert_int_eq(aiq__redis_target_parse(&t, "sentinel://h1", cfg), AIQ_OK);
	str_is(t.master_name, "fromkey");
	str_is(t.sentinel_password, "spw");
	ck_assert_int_eq(t.min_replicas, 1);
	ck_assert_int_eq(t.wait_timeout_ms, 1000);
	aiq__redis_target_clear(&t);
	ck_assert_int_eq(aiq__redis_target_parse(&t, "sentinel://h1?master_name=url", cfg), AIQ_OK);
	str_is(t.master_name, "url");
	aiq__redis_target_clear(&t);
	/* WAIT must end before the socket timeout */
	ck_assert_int_eq(aiq_config_set_int(cfg, "redis.wait_timeout_ms", 5000), AIQ_OK);
	ck_assert_int_eq(aiq__redis_target_parse(&t, "redis://h", cfg), AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "must exceed redis.wait_timeout_ms"));
	aiq__redis_target_clear(&t);
	aiq_config_free(cfg);

	target_fails("sentinel://:" SECRET "@h1;sentinel://h2", AIQ_EINVAL, "redis.master_name");
	target_fails("sentinel://h1?master_name=m;redis://:" SECRET "@h2", AIQ_EINVAL,
	             "must be sentinel://");
	target_fails("sentinel://:" SECRET "@h1?master_name=m&bogus=1", AIQ_EINVAL,
	             "unknown option 'bogus'");
	target_fails("sentinel://:" SECRET "@h1:99999?master_name=m", AIQ_EINVAL, "bad port");
	target_fails("sentinel://:" SECRET "@h1/x?master_name=m", AIQ_EINVAL,
	             "bad database number");
	/* redis:// takes no master_name */
	target_fails("redis://h?master_name=m", AIQ_EINVAL, "unknown option 'master_name'");
}
END_TEST

/* READONLY (also inside a script's error) means a Sentinel master was
 * demoted: the connection is dropped and the master found again. A plain
 * redis:// target pointing at a replica keeps the error as it is. */
START_TEST(test_sentinel_demoted)
{
	aiq__redis_target sentinel, plain;
	target_ok(&sentinel, "sentinel://h1?master_name=m");
	target_ok(&plain, "redis://h1");
	char ro[] = "READONLY You can't write against a read only replica.";
	char ro_script[] = "READONLY You can't write against a read only replica. script: "
	                   "64ac20e8, on @user_script:1.";
	char other[] = "ERR unknown command";
	redisReply r = {.type = REDIS_REPLY_ERROR, .str = ro, .len = sizeof ro - 1};
	ck_assert(aiq__redis_demoted(&sentinel, &r));
	ck_assert(!aiq__redis_demoted(&plain, &r));
	r.str = ro_script;
	r.len = sizeof ro_script - 1;
	ck_assert(aiq__redis_demoted(&sentinel, &r));
	r.str = other;
	r.len = sizeof other - 1;
	ck_assert(!aiq__redis_demoted(&sentinel, &r));
	r.type = REDIS_REPLY_STATUS;
	r.str = ro;
	ck_assert(!aiq__redis_demoted(&sentinel, &r));
	ck_assert(!aiq__redis_demoted(&sentinel, NULL));
	aiq__redis_target_clear(&sentinel);
	aiq__redis_target_clear(&plain);
}
END_TEST

/* The scheme tables route these to the Redis drivers, which answer for
 * themselves rather than "unknown scheme". */
START_TEST(test_redis_schemes_registered)
{
	const aiq__broker_ops *bops;
	const aiq__store_ops *sops;
	static const char *const urls[] = {"rediss://h", "redis+socket:///x", "unix:///x",
	                                   "redis://h", "sentinel://h"};
	for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
		ck_assert_int_eq(aiq__broker_lookup(&bops, urls[i]), AIQ_OK);
		ck_assert_int_eq(aiq__store_lookup(&sops, urls[i]), AIQ_OK);
	}
	aiq__broker *b = NULL;
	ck_assert_int_eq(aiq__broker_open(&b, "rediss://:" SECRET "@127.0.0.1:1/0", NULL),
	                 AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "TLS"));
	ck_assert_ptr_null(strstr(aiq_error_last(), SECRET));
	aiq__store *s = NULL;
	ck_assert_int_eq(aiq__store_open(&s, "rediss://:" SECRET "@127.0.0.1:1/0", NULL),
	                 AIQ_EUNSUPPORTED);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "TLS"));
}
END_TEST
#endif

#ifdef AIQ_HAVE_AMQP
static void amqp_open_fails(const char *url, int code, const char *want)
{
	aiq__broker *b = NULL;
	int rc = aiq__broker_open(&b, url, NULL);
	ck_assert_msg(rc == code, "open(%s) = %d (%s), want %d", url, rc, aiq_error_last(), code);
	ck_assert_ptr_null(b);
	ck_assert_msg(strstr(aiq_error_last(), want) != NULL, "open(%s): '%s' lacks '%s'", url,
	              aiq_error_last(), want);
	ck_assert_msg(strstr(aiq_error_last(), SECRET) == NULL, "open(%s) leaks: %s", url,
	              aiq_error_last());
}

/* Nothing listens on port 1: a URL the driver accepts fails to connect
 * (AIQ_EBROKER); one it refuses fails before, with AIQ_EINVAL. */
START_TEST(test_amqp_urls)
{
	amqp_open_fails("amqp://guest:" SECRET "@127.0.0.1:1//", AIQ_EBROKER, "127.0.0.1");
	amqp_open_fails("pyamqp://127.0.0.1:1//", AIQ_EBROKER, "127.0.0.1");
	amqp_open_fails("librabbitmq://u:" SECRET "@127.0.0.1:1/v%2fx", AIQ_EBROKER, "127.0.0.1");
	amqp_open_fails("amqp://127.0.0.1:1//?heartbeat=5&connect_timeout=0.5&insist=1",
	                AIQ_EBROKER, "127.0.0.1");
	amqp_open_fails("amqp://:" SECRET "@127.0.0.1:1//?bogus=1", AIQ_EINVAL,
	                "unknown option 'bogus'");
	amqp_open_fails("amqp://127.0.0.1:1//?heartbeat=fast", AIQ_EINVAL, "heartbeat");
	amqp_open_fails("amqp://127.0.0.1:1//?connect_timeout=0", AIQ_EINVAL, "connect_timeout");
	amqp_open_fails("amqp://127.0.0.1:1//?ssl=maybe", AIQ_EINVAL, "true or false");
	amqp_open_fails("amqp://127.0.0.1:1//?login_method=EXTERNAL", AIQ_EUNSUPPORTED,
	                "login_method");
	amqp_open_fails("amqp://u:" SECRET "@h:0//", AIQ_EINVAL, "bad port '0'");
	amqp_open_fails("amqp://u:" SECRET "@[::1//", AIQ_EINVAL, "unbalanced '['");
	amqp_open_fails("amqp://127.0.0.1:1//;amqp://u:" SECRET "@h:x//", AIQ_EINVAL,
	                "bad port 'x'");
}
END_TEST
#endif

int main(void)
{
	Suite *s = suite_create("url");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_kombu_amqp_forms);
	tcase_add_test(tc, test_query);
	tcase_add_test(tc, test_ipv6_and_ports);
	tcase_add_test(tc, test_errors);
	tcase_add_test(tc, test_awkward_passwords);
	tcase_add_test(tc, test_schemes);
	tcase_add_test(tc, test_segments);
	tcase_add_test(tc, test_redact_planted_secrets);
	tcase_add_test(tc, test_public_redact);
#ifdef AIQ_HAVE_REDIS
	tcase_add_test(tc, test_redis_targets);
	tcase_add_test(tc, test_sentinel_targets);
	tcase_add_test(tc, test_sentinel_demoted);
	tcase_add_test(tc, test_redis_schemes_registered);
#endif
#ifdef AIQ_HAVE_AMQP
	tcase_add_test(tc, test_amqp_urls);
#endif
	suite_add_tcase(s, tc);
	return aiq_test_run(s);
}
