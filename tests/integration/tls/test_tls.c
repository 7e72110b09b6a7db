/*
 * AMQP over TLS against a private RabbitMQ TLS listener (run.sh makes the CA
 * and the server certificate): a task round trip over amqps:// with the CA
 * given as kombu's ssl_ca_certs, and the failures an operator meets first —
 * a CA that did not sign the server's certificate, a host name the
 * certificate does not name, a CA file that does not exist — each refused
 * at once with an error that says what is wrong, and no password in it. ssl_cert_reqs=CERT_NONE
 * turns verification off, as in kombu.
 */
#include <aiqueue/aiqueue.h>
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v != NULL && *v, "%s is not set (run through run.sh)", name);
	return v;
}

/* amqps://guest:guest@HOST:PORT//?OPTIONS */
static void amqps_url(char *buf, size_t n, const char *host, const char *options)
{
	snprintf(buf, n, "amqps://guest:guest@%s:%s//%s%s", host, env("AIQ_TEST_AMQPS_PORT"),
	         options && *options ? "?" : "", options ? options : "");
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static aiq_config *config_for(const char *broker_url, const char *queue)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", broker_url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", "memory://tls"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "queue", queue), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(cfg, "worker.concurrency", 2), AIQ_OK);
	return cfg;
}

static void add_task(aiq_task *t, void *ud)
{
	(void)ud;
	json_t *a = json_loads(aiq_task_args_json(t), 0, NULL);
	char out[64];
	snprintf(out, sizeof out, "%lld",
	         json_integer_value(json_array_get(a, 0)) +
	                 json_integer_value(json_array_get(a, 1)));
	json_decref(a);
	aiq_task_succeed(t, out);
}

struct run {
	aiq_worker *w;
	int rc;
};

static void *run_worker(void *arg)
{
	struct run *r = arg;
	r->rc = aiq_worker_run(r->w);
	return NULL;
}

/* Enqueue over TLS, run the task in a worker connected over TLS, read the
 * result back. */
static void round_trip(const char *broker_url)
{
	char queue[96];
	snprintf(queue, sizeof queue, "aiqt.tls.%ld.%lld", (long)getpid(), (long long)mono_ms());
	aiq_config *cfg = config_for(broker_url, queue);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client over TLS: %d %s", rc, aiq_error_last());
	struct run run = {0};
	ck_assert_int_eq(aiq_worker_new(&run.w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(run.w, "tests.add", add_task, NULL, NULL), AIQ_OK);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run_worker, &run), 0);
	for (int i = 0; i < 5; i++) {
		char args[32], want[32];
		snprintf(args, sizeof args, "[%d, 40]", i);
		snprintf(want, sizeof want, "%d", 40 + i);
		char *id = NULL;
		rc = aiq_client_enqueue(&id, c, "tests.add", args, NULL, NULL);
		ck_assert_msg(rc == AIQ_OK, "enqueue over TLS: %d %s", rc, aiq_error_last());
		aiq_result *r = NULL;
		rc = aiq_client_wait(&r, c, id, 30000);
		ck_assert_msg(rc == AIQ_OK, "wait: %d %s (worker: %s)", rc, aiq_error_last(),
		              aiq_worker_error(run.w));
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		ck_assert_str_eq(aiq_result_json(r), want);
		aiq_result_free(r);
		aiq_free(id);
	}
	uint64_t depth = 99;
	ck_assert_int_eq(aiq_client_queue_depth(&depth, c, queue), AIQ_OK);
	ck_assert_int_eq(depth, 0);
	aiq_worker_stop(run.w);
	pthread_join(th, NULL);
	ck_assert_msg(run.rc == AIQ_OK, "worker over TLS: %d %s", run.rc, aiq_worker_error(run.w));
	aiq_worker_free(run.w);
	aiq_client_free(c);
	aiq_config_free(cfg);
}

/* A client and a worker on `broker_url` both fail at start (no retrying for
 * ever) with `want_rc` and a message holding every one of `needles`. */
static void refused(const char *broker_url, int want_rc, const char *const *needles)
{
	aiq_config *cfg = config_for(broker_url, "aiqt.tls.refused");
	aiq_client *c = NULL;
	int64_t t0 = mono_ms();
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == want_rc, "client on %s: %d (%s), expected %d", broker_url, rc,
	              aiq_error_last(), want_rc);
	ck_assert_ptr_null(c);
	const char *msg = aiq_error_last();
	for (const char *const *n = needles; *n; n++)
		ck_assert_msg(strstr(msg, *n) != NULL, "'%s' not in the client's error: %s", *n,
		              msg);
	ck_assert_msg(strstr(msg, "guest:guest") == NULL, "password in the error: %s", msg);

	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "tests.add", add_task, NULL, NULL), AIQ_OK);
	rc = aiq_worker_run(w);
	ck_assert_msg(rc == want_rc, "worker on %s: %d (%s), expected %d", broker_url, rc,
	              aiq_worker_error(w), want_rc);
	for (const char *const *n = needles; *n; n++)
		ck_assert_msg(strstr(aiq_worker_error(w), *n) != NULL,
		              "'%s' not in the worker's: %s", *n, aiq_worker_error(w));
	aiq_worker_free(w);
	aiq_config_free(cfg);
	int64_t took = mono_ms() - t0;
	ck_assert_msg(took < 45000, "refusing took %lld ms: it must not retry for ever",
	              (long long)took);
}

START_TEST(round_trip_with_ca)
{
	char opts[1024], u[1200];
	snprintf(opts, sizeof opts, "ssl_ca_certs=%s&ssl_cert_reqs=CERT_REQUIRED",
	         env("AIQ_TEST_TLS_CA"));
	amqps_url(u, sizeof u, "localhost", opts);
	round_trip(u);
}
END_TEST

/* The CA can also come from the configuration instead of the URL. */
START_TEST(round_trip_ca_from_config)
{
	char u[1200];
	amqps_url(u, sizeof u, "localhost", NULL);
	char queue[96];
	snprintf(queue, sizeof queue, "aiqt.tlscfg.%ld.%lld", (long)getpid(), (long long)mono_ms());
	aiq_config *cfg = config_for(u, queue);
	ck_assert_int_eq(aiq_config_set_str(cfg, "amqp.ssl_cacert", env("AIQ_TEST_TLS_CA")),
	                 AIQ_OK);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	ck_assert_msg(rc == AIQ_OK, "client with amqp.ssl_cacert: %d %s", rc, aiq_error_last());
	ck_assert_int_eq(aiq_client_ping(c), AIQ_OK);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

START_TEST(wrong_ca_is_refused)
{
	char opts[1024], u[1200];
	snprintf(opts, sizeof opts, "ssl_ca_certs=%s", env("AIQ_TEST_TLS_WRONG_CA"));
	amqps_url(u, sizeof u, "localhost", opts);
	static const char *const needles[] = {"TLS", "certificate", "ssl_ca_certs", NULL};
	refused(u, AIQ_EBROKER, needles);
}
END_TEST

/* The certificate names localhost only: the right CA but the address
 * 127.0.0.1 (the same listener) fails the host name check. */
START_TEST(host_not_in_certificate_is_refused)
{
	char opts[1024], u[1200];
	snprintf(opts, sizeof opts, "ssl_ca_certs=%s", env("AIQ_TEST_TLS_CA"));
	amqps_url(u, sizeof u, "127.0.0.1", opts);
	static const char *const needles[] = {"TLS", "127.0.0.1", NULL};
	refused(u, AIQ_EBROKER, needles);
}
END_TEST

START_TEST(missing_ca_file_is_refused)
{
	char u[1200];
	amqps_url(u, sizeof u, "localhost", "ssl_ca_certs=/nonexistent/aiq-ca.pem");
	static const char *const needles[] = {"CA certificate", "/nonexistent/aiq-ca.pem", NULL};
	refused(u, AIQ_EBROKER, needles);
}
END_TEST

START_TEST(cert_none_skips_verification)
{
	char opts[1024], u[1200];
	snprintf(opts, sizeof opts, "ssl_ca_certs=%s&ssl_cert_reqs=CERT_NONE",
	         env("AIQ_TEST_TLS_WRONG_CA"));
	amqps_url(u, sizeof u, "localhost", opts);
	round_trip(u);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("tls");
	TCase *tc = tcase_create("amqps");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, round_trip_with_ca);
	tcase_add_test(tc, round_trip_ca_from_config);
	tcase_add_test(tc, wrong_ca_is_refused);
	tcase_add_test(tc, host_not_in_certificate_is_refused);
	tcase_add_test(tc, missing_ca_file_is_refused);
	tcase_add_test(tc, cert_none_skips_verification);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
