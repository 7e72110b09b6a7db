/*
 * Unique jobs against a real redis-server (suite 'flow'): eight producer
 * processes racing on one key get one task and its id; the key in Redis
 * holds the task id with the TTL; a worker releases it at its scope's end.
 */
#include "../redis/fixture.h"

#include <aiqueue/aiqueue.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static aiq_config *config(void)
{
	aiq_config *cfg = NULL;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "broker.url", rt_url()), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "result.url", rt_url()), AIQ_OK);
	return cfg;
}

static int enqueue(char **id, aiq_client *c, const char *name, const char *key, int scope,
                   int64_t ttl)
{
	aiq_enqueue_opts *o = NULL;
	aiq_enqueue_opts_new(&o);
	aiq_enqueue_opts_set_unique(o, key, ttl, scope);
	int existing = -1;
	int rc = aiq_client_enqueue_unique(id, &existing, c, name, "[1]", "{\"k\": 2}", o);
	aiq_enqueue_opts_free(o);
	return rc == AIQ_OK ? existing : -1;
}

START_TEST(eight_processes_race)
{
	rt_flush();
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	int64_t start = unix_ms() + 400;
	pid_t kids[8];
	for (int i = 0; i < 8; i++) {
		kids[i] = fork();
		ck_assert_int_ge(kids[i], 0);
		if (kids[i] == 0) {
			close(fds[0]);
			aiq_config *cfg = config();
			aiq_client *c = NULL;
			if (aiq_client_new(&c, cfg) != AIQ_OK)
				_exit(2);
			while (unix_ms() < start)
				;
			char *id = NULL;
			int ex = enqueue(&id, c, "flow.once", NULL, AIQ_UNIQUE_QUEUED, 60000);
			char line[128];
			int n = snprintf(line, sizeof line, "%d %s\n", ex, id ? id : "-");
			if (write(fds[1], line, (size_t)n) != n)
				_exit(3);
			_exit(0);
		}
	}
	close(fds[1]);
	for (int i = 0; i < 8; i++) {
		int st = 0;
		ck_assert_int_eq(waitpid(kids[i], &st, 0), kids[i]);
		ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	FILE *in = fdopen(fds[0], "r");
	char ids[8][64];
	int fresh = 0, got = 0, ex;
	while (got < 8 && fscanf(in, "%d %63s", &ex, ids[got]) == 2) {
		ck_assert_int_ge(ex, 0);
		fresh += ex == 0;
		got++;
	}
	fclose(in);
	ck_assert_int_eq(got, 8);
	ck_assert_int_eq(fresh, 1);
	for (int i = 1; i < 8; i++)
		ck_assert_str_eq(ids[i], ids[0]);
	/* One message queued; the key holds its id, with the TTL. */
	redisReply *r = rt_cmd("LLEN celery");
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);
	r = rt_cmd("KEYS aiq:unique:flow.once:*");
	ck_assert_int_eq(r->elements, 1);
	redisReply *v = rt_cmd("GET %s", r->element[0]->str);
	ck_assert_str_eq(v->str, ids[0]);
	freeReplyObject(v);
	v = rt_cmd("PTTL %s", r->element[0]->str);
	ck_assert(v->integer > 55000 && v->integer <= 60000);
	freeReplyObject(v);
	freeReplyObject(r);
}
END_TEST

static atomic_int gate;

static void slow(aiq_task *t, void *ud)
{
	(void)ud;
	while (!atomic_load(&gate)) {
		struct timespec ts = {0, 5000000};
		nanosleep(&ts, NULL);
	}
	aiq_task_succeed(t, "1");
}

static void *run(void *w)
{
	aiq_worker_run(w);
	return NULL;
}

static int state_of(aiq_client *c, const char *id)
{
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_get_result(&r, c, id), AIQ_OK);
	int s = aiq_result_state(r);
	aiq_result_free(r);
	return s;
}

START_TEST(scopes_released_by_worker)
{
	rt_flush();
	atomic_store(&gate, 0);
	aiq_config *cfg = config();
	aiq_client *c = NULL;
	aiq_worker *w = NULL;
	ck_assert_int_eq(aiq_client_new(&c, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_new(&w, cfg), AIQ_OK);
	ck_assert_int_eq(aiq_worker_register(w, "flow.slow", slow, NULL, NULL), AIQ_OK);
	char *q = NULL, *rn = NULL, *x = NULL;
	ck_assert_int_eq(enqueue(&q, c, "flow.slow", "q", AIQ_UNIQUE_QUEUED, 60000), 0);
	ck_assert_int_eq(enqueue(&rn, c, "flow.slow", "r", AIQ_UNIQUE_RUNNING, 60000), 0);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, run, w), 0);
	for (int i = 0; i < 500 && (state_of(c, q) != AIQ_STATE_STARTED ||
	                            state_of(c, rn) != AIQ_STATE_STARTED);
	     i++)
		rt_sleep_ms(10);
	ck_assert_int_eq(state_of(c, rn), AIQ_STATE_STARTED);
	/* Both run: `queued` is released, `running` is not. */
	redisReply *r = rt_cmd("EXISTS aiq:unique:q");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	ck_assert_int_eq(enqueue(&x, c, "flow.slow", "r", AIQ_UNIQUE_RUNNING, 60000), 1);
	ck_assert_str_eq(x, rn);
	aiq_free(x);
	atomic_store(&gate, 1);
	for (int i = 0; i < 500 && state_of(c, rn) != AIQ_STATE_SUCCESS; i++)
		rt_sleep_ms(10);
	rt_sleep_ms(50);
	r = rt_cmd("EXISTS aiq:unique:r");
	ck_assert_int_eq(r->integer, 0);
	freeReplyObject(r);
	/* A TTL ends any scope. */
	ck_assert_int_eq(enqueue(&x, c, "flow.nobody", "t", AIQ_UNIQUE_RUNNING, 300), 0);
	aiq_free(x);
	ck_assert_int_eq(enqueue(&x, c, "flow.nobody", "t", AIQ_UNIQUE_RUNNING, 300), 1);
	aiq_free(x);
	rt_sleep_ms(400);
	ck_assert_int_eq(enqueue(&x, c, "flow.nobody", "t", AIQ_UNIQUE_RUNNING, 300), 0);
	aiq_free(x);
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	aiq_free(q);
	aiq_free(rn);
	aiq_worker_free(w);
	aiq_client_free(c);
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("flow_unique");
	TCase *tc = tcase_create("redis");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, eight_processes_race);
	tcase_add_test(tc, scopes_released_by_worker);
	suite_add_tcase(s, tc);
	return rt_run(s);
}
