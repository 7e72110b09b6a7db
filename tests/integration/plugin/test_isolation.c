/*
 * The process pool (worker.pool = processes) through the public API, with
 * the deliberately crashing plugin (crash_plugin.c): a segfault, abort() or
 * exit() in a handler or analyzer ends that task FAILURE WorkerLostError
 * (billiard's words) while every other task succeeds; a hard time limit
 * kills the child; max_memory_per_child kills a child that grows past it;
 * max_tasks_per_child recycles children; progress, soft limits and
 * revocation reach the child; stopping waits for, and aborting kills, the
 * children.
 *
 * Environment (meson.build): AIQ_PLUGIN_CRASH, the plugin's path.
 */
#include <aiqueue/aiqueue.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct fixture {
	aiq_config *cfg;
	aiq_worker *w;
	aiq_client *c;
	pthread_t th;
	int run_rc;
	bool running;
	atomic_long run_tid; /* the thread in aiq_worker_run */
};

static const char *plugin_path(void)
{
	const char *v = getenv("AIQ_PLUGIN_CRASH");
	ck_assert_msg(v && *v, "AIQ_PLUGIN_CRASH is not set");
	return v;
}

static void *run_thread(void *arg)
{
	struct fixture *f = arg;
	atomic_store(&f->run_tid, (long)gettid());
	f->run_rc = aiq_worker_run(f->w);
	return NULL;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Wait, allocating nothing, until the run forked its fork server: a fork
 * while another thread is inside malloc() can leave a sanitizer's allocator
 * locked in the copy, and this thread is the only other one here. */
static void wait_fork_server(struct fixture *f)
{
	long tid;
	while ((tid = atomic_load(&f->run_tid)) == 0)
		sleep_ms(1);
	char path[64], buf[32];
	snprintf(path, sizeof path, "/proc/self/task/%ld/children", tid);
	for (int i = 0; i < 10000; i++) {
		int fd = open(path, O_RDONLY);
		ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
		ssize_t n = read(fd, buf, sizeof buf);
		close(fd);
		if (n > 0)
			return;
		sleep_ms(1);
	}
	ck_abort_msg("no fork server after 10 s");
}

/* A process-pool worker on its own memory:// broker and store, with the
 * crash plugin loaded; `extra` is "key=value" pairs (NULL-terminated). */
static void start(struct fixture *f, const char *name, int concurrency, const char *const *extra)
{
	memset(f, 0, sizeof *f);
	char url[128];
	snprintf(url, sizeof url, "memory://iso-%s", name);
	ck_assert_int_eq(aiq_config_new(&f->cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(f->cfg, "broker.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(f->cfg, "result.url", url), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_int(f->cfg, "worker.concurrency", concurrency), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(f->cfg, "worker.pool", "processes"), AIQ_OK);
	for (size_t i = 0; extra && extra[i]; i += 2)
		ck_assert_msg(aiq_config_set(f->cfg, extra[i], extra[i + 1]) == AIQ_OK, "%s: %s",
		              extra[i], aiq_error_last());
	ck_assert_int_eq(aiq_worker_new(&f->w, f->cfg), AIQ_OK);
	int rc = aiq_worker_load_plugin(f->w, plugin_path());
	ck_assert_msg(rc == AIQ_OK, "load: %s", aiq_error_last());
	ck_assert_int_eq(aiq_client_new(&f->c, f->cfg), AIQ_OK);
	ck_assert_int_eq(pthread_create(&f->th, NULL, run_thread, f), 0);
	f->running = true;
	wait_fork_server(f);
}

/* Stop the run (a graceful stop): counters are final afterwards. */
static int stop_run(struct fixture *f)
{
	if (f->running) {
		aiq_worker_stop(f->w);
		pthread_join(f->th, NULL);
		f->running = false;
	}
	return f->run_rc;
}

static int finish(struct fixture *f)
{
	stop_run(f);
	aiq_client_free(f->c);
	aiq_worker_free(f->w);
	aiq_config_free(f->cfg);
	return f->run_rc;
}

static char *enqueue_opts(struct fixture *f, const char *mode, int64_t soft_ms, int64_t hard_ms)
{
	char args[64];
	snprintf(args, sizeof args, "[\"%s\"]", mode);
	aiq_enqueue_opts *o = NULL;
	ck_assert_int_eq(aiq_enqueue_opts_new(&o), AIQ_OK);
	if (soft_ms || hard_ms)
		ck_assert_int_eq(aiq_enqueue_opts_set_time_limits(o, soft_ms, hard_ms), AIQ_OK);
	char *id = NULL;
	int rc = aiq_client_enqueue(&id, f->c, "crash.run", args, NULL, o);
	aiq_enqueue_opts_free(o);
	ck_assert_msg(rc == AIQ_OK, "enqueue: %s", aiq_error_last());
	return id;
}

static char *enqueue(struct fixture *f, const char *mode)
{
	return enqueue_opts(f, mode, 0, 0);
}

static aiq_result *wait_final(struct fixture *f, const char *id)
{
	aiq_result *r = NULL;
	int rc = aiq_client_wait(&r, f->c, id, 30000);
	ck_assert_msg(rc == AIQ_OK, "wait %s: %s", id, aiq_error_last());
	return r;
}

static void assert_success(struct fixture *f, const char *id)
{
	aiq_result *r = wait_final(f, id);
	ck_assert_msg(aiq_result_state(r) == AIQ_STATE_SUCCESS, "%s: %s %s: %s", id,
	              aiq_state_name(aiq_result_state(r)), aiq_result_error_type(r),
	              aiq_result_error_message(r));
	aiq_result_free(r);
}

/* FAILURE WorkerLostError from billiard.exceptions, with billiard's message
 * "Worker exited prematurely: <how> Job: <n>." */
static void assert_lost(struct fixture *f, const char *id, const char *how)
{
	aiq_result *r = wait_final(f, id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "WorkerLostError");
	ck_assert_str_eq(aiq_result_error_module(r), "billiard.exceptions");
	char pattern[160];
	snprintf(pattern, sizeof pattern, "^Worker exited prematurely: %s Job: [0-9]+\\.$", how);
	regex_t re;
	ck_assert_int_eq(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
	const char *msg = aiq_result_error_message(r);
	ck_assert_msg(regexec(&re, msg, 0, NULL, 0) == 0, "'%s' does not match '%s'", msg, pattern);
	regfree(&re);
	aiq_result_free(r);
}

/* After the run: every delivery was acknowledged (a closed consumer hands
 * unacknowledged ones back to the queue), none requeued or dead-lettered. */
static void assert_all_acked(struct fixture *f)
{
	uint64_t ready = 1, dead = 1;
	ck_assert_int_eq(aiq_client_queue_depth(&ready, f->c, NULL), AIQ_OK);
	ck_assert_int_eq(aiq_client_queue_depth(&dead, f->c, "celery.dead"), AIQ_OK);
	ck_assert_uint_eq(ready, 0);
	ck_assert_uint_eq(dead, 0);
}

static long result_long(struct fixture *f, const char *id, const char *key)
{
	aiq_result *r = wait_final(f, id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	char want[64];
	snprintf(want, sizeof want, "\"%s\": ", key);
	const char *at = strstr(aiq_result_json(r), want);
	ck_assert_msg(at != NULL, "no %s in %s", key, aiq_result_json(r));
	long v = strtol(at + strlen(want), NULL, 10);
	aiq_result_free(r);
	return v;
}

/* Wait until the task shows PROGRESS; returns the "pid" its meta holds. */
static long wait_progress(struct fixture *f, const char *id)
{
	for (int i = 0; i < 3000; i++) {
		aiq_result *r = NULL;
		if (aiq_client_get_result(&r, f->c, id) == AIQ_OK &&
		    aiq_result_state(r) == AIQ_STATE_PROGRESS) {
			const char *json = aiq_result_json(r);
			const char *at = json ? strstr(json, "\"pid\": ") : NULL;
			ck_assert_msg(at != NULL, "no pid in progress %s", json ? json : "(null)");
			long pid = strtol(at + 7, NULL, 10);
			aiq_result_free(r);
			return pid;
		}
		aiq_result_free(r);
		sleep_ms(10);
	}
	ck_abort_msg("task %s never showed PROGRESS", id);
	return -1;
}

START_TEST(test_crashes_fail_alone)
{
	struct fixture f;
	start(&f, "crashes", 2, NULL);
	static const char *const modes[] = {"ok",   "segv", "ok",   "abort", "ok",
	                                    "exit", "ok",   "segv", "ok",    "ok"};
	enum { N = sizeof modes / sizeof modes[0] };
	char *ids[N];
	for (int i = 0; i < N; i++)
		ids[i] = enqueue(&f, modes[i]);
	for (int i = 0; i < N; i++) {
		if (strcmp(modes[i], "ok") == 0)
			assert_success(&f, ids[i]);
		else if (strcmp(modes[i], "segv") == 0)
			assert_lost(&f, ids[i], "signal 11 \\(SIGSEGV\\)");
		else if (strcmp(modes[i], "abort") == 0)
			assert_lost(&f, ids[i], "signal 6 \\(SIGABRT\\)");
		else
			assert_lost(&f, ids[i], "exitcode 3");
		aiq_free(ids[i]);
	}
	/* The handlers ran in children, never in this process. */
	char *id = enqueue(&f, "ok");
	long pid = result_long(&f, id, "pid");
	ck_assert_int_ne(pid, (long)getpid());
	aiq_free(id);
	ck_assert_int_eq(stop_run(&f), AIQ_OK);
	assert_all_acked(&f);
	ck_assert_int_eq(aiq_worker_counter(f.w, AIQ_COUNTER_SUCCEEDED), 7);
	ck_assert_int_eq(aiq_worker_counter(f.w, AIQ_COUNTER_FAILED), 4);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

/* exit() from a handler: the exact code, also under a leak checker (the
 * child skips the exit handlers it inherited). */
START_TEST(test_exit_code)
{
	struct fixture f;
	start(&f, "exit", 1, NULL);
	char *id = enqueue(&f, "exit");
	assert_lost(&f, id, "exitcode 3");
	aiq_free(id);
	id = enqueue(&f, "ok");
	assert_success(&f, id);
	aiq_free(id);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_crashing_analyzer)
{
	struct fixture f;
	start(&f, "analyzer", 1, NULL);
	char *bad = NULL, *good = NULL;
	ck_assert_int_eq(aiq_client_enqueue(&bad, f.c, "tasks.analyze_track", "[1, \"segv\"]",
	                                    "{\"analyzer\": \"crash\"}", NULL),
	                 AIQ_OK);
	ck_assert_int_eq(aiq_client_enqueue(&good, f.c, "tasks.analyze_track",
	                                    "[2, \"la la la\\nla la\"]", NULL, NULL),
	                 AIQ_OK);
	assert_lost(&f, bad, "signal 11 \\(SIGSEGV\\)");
	assert_success(&f, good);
	aiq_free(bad);
	aiq_free(good);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_hard_time_limit_kills_child)
{
	struct fixture f;
	start(&f, "hard", 1, NULL);
	char *loop = enqueue_opts(&f, "loop", 0, 300);
	char *ok = enqueue(&f, "ok");
	long child = wait_progress(&f, loop);
	aiq_result *r = wait_final(&f, loop);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "TimeLimitExceeded");
	ck_assert_str_eq(aiq_result_error_module(r), "billiard.exceptions");
	aiq_result_free(r);
	/* The spinning child is gone (killed and reaped), and the next task
	 * ran in its replacement. */
	ck_assert_int_eq(kill((pid_t)child, 0), -1);
	ck_assert_int_eq(errno, ESRCH);
	long pid = result_long(&f, ok, "pid");
	ck_assert_int_ne(pid, child);
	aiq_free(loop);
	aiq_free(ok);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

/* Resident KiB of this process: the children start from it (fork). */
static long own_rss_kib(void)
{
	FILE *fp = fopen("/proc/self/statm", "r");
	ck_assert_ptr_nonnull(fp);
	long size = 0, resident = 0;
	ck_assert_int_eq(fscanf(fp, "%ld %ld", &size, &resident), 2);
	fclose(fp);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

START_TEST(test_memory_cap_kills_child)
{
	char limit[32];
	snprintf(limit, sizeof limit, "%ld", own_rss_kib() + 128 * 1024);
	const char *const extra[] = {"worker.max_memory_per_child", limit, NULL};
	struct fixture f;
	start(&f, "memory", 2, extra);
	char *a = enqueue(&f, "ok"), *leak = enqueue(&f, "leak"), *b = enqueue(&f, "ok");
	assert_lost(&f, leak, "signal 9 \\(SIGKILL\\)");
	assert_success(&f, a);
	assert_success(&f, b);
	aiq_free(a);
	aiq_free(leak);
	aiq_free(b);
	char *c = enqueue(&f, "ok");
	assert_success(&f, c);
	aiq_free(c);
	ck_assert_int_eq(stop_run(&f), AIQ_OK);
	assert_all_acked(&f);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_max_tasks_per_child)
{
	const char *const extra[] = {"worker.max_tasks_per_child", "2", NULL};
	struct fixture f;
	start(&f, "recycle", 1, extra);
	long pids[5];
	for (int i = 0; i < 5; i++) {
		char *id = enqueue(&f, "ok");
		pids[i] = result_long(&f, id, "pid");
		aiq_free(id);
	}
	ck_assert_int_eq(pids[0], pids[1]);
	ck_assert_int_ne(pids[1], pids[2]);
	ck_assert_int_eq(pids[2], pids[3]);
	ck_assert_int_ne(pids[3], pids[4]);
	/* A recycled child exited and was reaped. */
	ck_assert_int_eq(kill((pid_t)pids[0], 0), -1);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

/* Over the cap after a task (here: always, the cap is below any process's
 * size), as Celery's: the task keeps its outcome, the child is replaced. */
START_TEST(test_max_memory_recycles_after_task)
{
	const char *const extra[] = {"worker.max_memory_per_child", "1", NULL};
	struct fixture f;
	start(&f, "memrecycle", 1, extra);
	long pids[3];
	for (int i = 0; i < 3; i++) {
		char *id = enqueue(&f, "sleep"); /* longer than a supervision tick */
		aiq_result *r = wait_final(&f, id);
		ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
		aiq_result_free(r);
		aiq_free(id);
		id = enqueue(&f, "ok");
		pids[i] = result_long(&f, id, "pid");
		aiq_free(id);
	}
	ck_assert_int_ne(pids[0], pids[1]);
	ck_assert_int_ne(pids[1], pids[2]);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_progress_and_revoke_reach_child)
{
	struct fixture f;
	start(&f, "progress", 1, NULL);
	char *id = enqueue(&f, "progress");
	long child = wait_progress(&f, id);
	ck_assert_int_ne(child, (long)getpid());
	ck_assert_int_eq(aiq_client_revoke(f.c, id), AIQ_OK);
	aiq_result *r = wait_final(&f, id);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_REVOKED);
	aiq_result_free(r);
	/* The handler saw the revocation and returned: its child lives on. */
	char *next = enqueue(&f, "ok");
	ck_assert_int_eq(result_long(&f, next, "pid"), child);
	aiq_free(next);
	aiq_free(id);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_soft_limit_reaches_child)
{
	struct fixture f;
	start(&f, "soft", 1, NULL);
	char *id = enqueue_opts(&f, "soft", 200, 0);
	ck_assert_int_eq(result_long(&f, id, "cancelled"), AIQ_ETIMEDOUT);
	aiq_free(id);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_failure_and_retry_cross_the_pipe)
{
	const char *const extra[] = {"task.max_retries", "1", NULL};
	struct fixture f;
	start(&f, "outcomes", 1, extra);
	char *fail = enqueue(&f, "fail"), *retry = enqueue(&f, "retry");
	aiq_result *r = wait_final(&f, fail);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "CrashError");
	ck_assert_str_eq(aiq_result_error_message(r), "on purpose");
	ck_assert_str_eq(aiq_result_error_module(r), "crash");
	ck_assert_str_eq(aiq_result_traceback(r), "Traceback: crash_plugin.c, in run_mode");
	aiq_result_free(r);
	/* One retry ran (in a child too), then the retries were used up. */
	r = wait_final(&f, retry);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_FAILURE);
	ck_assert_str_eq(aiq_result_error_type(r), "MaxRetriesExceededError");
	aiq_result_free(r);
	ck_assert_int_eq(stop_run(&f), AIQ_OK);
	ck_assert_int_eq(aiq_worker_counter(f.w, AIQ_COUNTER_RETRIED), 1);
	aiq_free(fail);
	aiq_free(retry);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_graceful_stop_waits_for_children)
{
	struct fixture f;
	start(&f, "graceful", 2, NULL);
	char *a = enqueue(&f, "sleep"), *b = enqueue(&f, "sleep");
	sleep_ms(150); /* both running */
	aiq_worker_stop(f.w);
	pthread_join(f.th, NULL);
	f.running = false;
	ck_assert_int_eq(f.run_rc, AIQ_OK);
	/* Both finished before the run returned. */
	aiq_result *r = NULL;
	ck_assert_int_eq(aiq_client_get_result(&r, f.c, a), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	ck_assert_int_eq(aiq_client_get_result(&r, f.c, b), AIQ_OK);
	ck_assert_int_eq(aiq_result_state(r), AIQ_STATE_SUCCESS);
	aiq_result_free(r);
	aiq_free(a);
	aiq_free(b);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_abort_kills_children)
{
	struct fixture f;
	start(&f, "abort", 1, NULL);
	char *id = enqueue(&f, "loop"); /* no time limit: only a kill ends it */
	long child = wait_progress(&f, id);
	aiq_worker_stop(f.w);
	aiq_worker_stop(f.w);
	pthread_join(f.th, NULL);
	f.running = false;
	ck_assert_int_eq(f.run_rc, AIQ_ECANCELED);
	aiq_worker_free(f.w); /* joins the pool, which reaped its child */
	f.w = NULL;
	ck_assert_int_eq(kill((pid_t)child, 0), -1);
	ck_assert_int_eq(errno, ESRCH);
	aiq_free(id);
	finish(&f);
}
END_TEST

/* The state letter and parent of a process, from /proc; 0 when it is gone. */
static char proc_state(long pid, long *ppid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	FILE *fp = fopen(path, "r");
	if (fp == NULL)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	const char *end = strrchr(buf, ')');
	char state = 0;
	long parent = 0;
	if (end == NULL || sscanf(end + 1, " %c %ld", &state, &parent) != 2)
		return 0;
	if (ppid)
		*ppid = parent;
	return state;
}

START_TEST(test_fork_server_replaced)
{
	struct fixture f;
	start(&f, "server", 1, NULL);
	char *id = enqueue(&f, "ok");
	long child = result_long(&f, id, "pid"), server = 0;
	aiq_free(id);
	ck_assert_int_ne(proc_state(child, &server), 0);
	ck_assert_int_ne(server, (long)getpid()); /* forked by the fork server */
	ck_assert_int_eq(kill((pid_t)server, SIGKILL), 0);
	/* Its idle child dies with it. */
	for (int i = 0; i < 1000; i++) {
		char st = proc_state(child, NULL);
		if (st == 0 || st == 'Z' || st == 'X')
			break;
		sleep_ms(10);
	}
	char st = proc_state(child, NULL);
	ck_assert_msg(st == 0 || st == 'Z' || st == 'X', "child %ld is still '%c'", child, st);
	/* The next task runs in a child of a new fork server. */
	id = enqueue(&f, "ok");
	long next = result_long(&f, id, "pid"), next_server = 0;
	aiq_free(id);
	ck_assert_int_ne(next, child);
	ck_assert_int_ne(proc_state(next, &next_server), 0);
	ck_assert_int_ne(next_server, server);
	ck_assert_int_eq(finish(&f), AIQ_OK);
}
END_TEST

START_TEST(test_pool_key)
{
	aiq_config *cfg;
	ck_assert_int_eq(aiq_config_new(&cfg), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.pool", "fork"), AIQ_EINVAL);
	ck_assert_msg(strstr(aiq_error_last(), "worker.pool") != NULL, "%s", aiq_error_last());
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.pool", "prefork"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set_str(cfg, "worker.pool", "threads"), AIQ_OK);
	ck_assert_int_eq(aiq_config_set(cfg, "worker.max_memory_per_child", "-1"), AIQ_EINVAL);
	aiq_config_free(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("isolation");
	TCase *tc = tcase_create("processes");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_crashes_fail_alone);
	tcase_add_test(tc, test_exit_code);
	tcase_add_test(tc, test_crashing_analyzer);
	tcase_add_test(tc, test_hard_time_limit_kills_child);
	tcase_add_test(tc, test_memory_cap_kills_child);
	tcase_add_test(tc, test_max_tasks_per_child);
	tcase_add_test(tc, test_max_memory_recycles_after_task);
	tcase_add_test(tc, test_progress_and_revoke_reach_child);
	tcase_add_test(tc, test_soft_limit_reaches_child);
	tcase_add_test(tc, test_failure_and_retry_cross_the_pipe);
	tcase_add_test(tc, test_graceful_stop_waits_for_children);
	tcase_add_test(tc, test_abort_kills_children);
	tcase_add_test(tc, test_fork_server_replaced);
	tcase_add_test(tc, test_pool_key);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
