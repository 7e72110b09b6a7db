/*
 * The process pool (worker.pool = processes): each pool thread owns one
 * forked child process that runs the handlers of the tasks the thread
 * claims, one at a time and many in a row. The parent keeps every broker
 * and store connection and all outcome handling; the child only runs the
 * handler. A child that dies (a segfault, abort() or exit() in a handler,
 * analyzer or plugin) ends its task FAILURE WorkerLostError, as billiard
 * reports it, and is replaced; a hard time limit kills the child instead of
 * abandoning a thread.
 *
 * Protocol, over a Unix stream socket pair: frames of a 4-byte big-endian
 * length and a JSON object.
 *   parent -> child  {"id", "task", "args", "kwargs", "retries", ...}  a task
 *                    {"rc", "error"}            the answer to a state report
 *   child -> parent  {"state", "json"}          a state to store (progress)
 *                    {"outcome", "result", "exc_type", ...}  the outcome
 * Cancellation (soft time limit, revocation) is a signal, SIGUSR1 for the
 * soft limit (as billiard's) and SIGUSR2 for a revocation, queued with the
 * task's job number (sigqueue) so that it cancels that task only.
 *
 * Children are forked by a fork server (proc_server.c) started with the
 * run, from a process with one thread; what a child does is proc_child.c,
 * the frames proc_frame.c (proc_int.h).
 */
#include "proc_int.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Resident set of a process in KiB, from /proc; -1 when unknown. */
static int64_t rss_kib(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/statm", (long)pid);
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return -1;
	char line[128];
	bool ok = fgets(line, sizeof line, f) != NULL;
	fclose(f);
	if (!ok)
		return -1;
	/* "size resident shared ...", in pages */
	char *end = NULL;
	errno = 0;
	(void)strtoll(line, &end, 10);
	if (errno != 0 || end == line || *end != ' ')
		return -1;
	const char *field = end;
	long long resident = strtoll(field, &end, 10);
	if (errno != 0 || end == field || resident < 0)
		return -1;
	long page = sysconf(_SC_PAGESIZE);
	return resident * (page > 0 ? page : 4096) / 1024;
}

/* billiard's human_status(): "signal 11 (SIGSEGV)" or "exitcode 3". */
static void describe_status(char *buf, size_t size, int status)
{
	static const struct {
		int sig;
		const char *name;
	} names[] = {{SIGSEGV, "SIGSEGV"}, {SIGABRT, "SIGABRT"}, {SIGKILL, "SIGKILL"},
	             {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGILL, "SIGILL"},
	             {SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"},   {SIGHUP, "SIGHUP"},
	             {SIGPIPE, "SIGPIPE"}, {SIGQUIT, "SIGQUIT"}, {SIGUSR1, "SIGUSR1"},
	             {SIGUSR2, "SIGUSR2"}, {SIGALRM, "SIGALRM"}, {SIGTRAP, "SIGTRAP"},
	             {SIGSYS, "SIGSYS"},   {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}};
	if (WIFSIGNALED(status)) {
		int sig = WTERMSIG(status);
		for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
			if (names[i].sig == sig) {
				snprintf(buf, size, "signal %d (%s)", sig, names[i].name);
				return;
			}
		}
		snprintf(buf, size, "signal %d", sig);
		return;
	}
	snprintf(buf, size, "exitcode %d", WIFEXITED(status) ? WEXITSTATUS(status) : 0);
}

/* Record a failure as the outcome, replacing whatever the child reported. */
static void set_failure(aiq_task *t, const char *type, const char *message, const char *module)
{
	free(t->result_json);
	free(t->exc_type);
	free(t->exc_message);
	free(t->exc_module);
	t->result_json = NULL;
	t->exc_type = strdup(type);
	t->exc_message = strdup(message);
	t->exc_module = strdup(module);
	t->outcome = OUTCOME_FAILURE;
	if (!t->exc_type || !t->exc_message || !t->exc_module) {
		t->outcome = OUTCOME_NONE;
		snprintf(t->invalid_report, sizeof t->invalid_report, "%s: %s", type, message);
	}
}

/* The child died (or broke the protocol) while running the task: reap it,
 * record WorkerLostError as billiard words it, and start a replacement. */
static void child_lost(aiq_worker *w, struct proc_slot *s, aiq_task *t, long long job, bool killed)
{
	pid_t pid = s->pid;
	int status = aiq__proc_end_child(w, s, killed, LOST_WAIT_MS);
	char how[64], msg[160];
	describe_status(how, sizeof how, status);
	snprintf(msg, sizeof msg, "Worker exited prematurely: %s Job: %lld.", how, job);
	aiq__log(AIQ_LOG_ERROR,
	         "worker: pool process %ld running task %s (%s) exited prematurely: %s", (long)pid,
	         t->msg.id, t->msg.task, how);
	set_failure(t, "WorkerLostError", msg, "billiard.exceptions");
	if (aiq__proc_start(w, s) != AIQ_OK)
		aiq__log(AIQ_LOG_ERROR, "worker: %s (retried with the next task)",
		         aiq_error_last());
}

static json_t *task_frame(const aiq_task *t, long long job)
{
	json_t *m = json_object();
	if (m == NULL)
		return NULL;
	json_object_set_new(m, "job", json_integer((int)job));
	aiq__frame_set_str(m, "id", t->msg.id);
	aiq__frame_set_str(m, "task", t->msg.task);
	aiq__frame_set_str(m, "parent_id", t->msg.parent_id);
	aiq__frame_set_str(m, "root_id", t->msg.root_id);
	aiq__frame_set_str(m, "group", t->msg.group);
	aiq__frame_set_str(m, "queue", t->queue);
	json_object_set(m, "args", t->msg.args);
	json_object_set(m, "kwargs", t->msg.kwargs);
	json_object_set_new(m, "retries", json_integer(t->msg.retries));
	json_object_set_new(m, "max_retries", json_integer(t->max_retries));
	json_object_set_new(m, "eta_us", json_integer(t->msg.eta_us));
	json_object_set_new(m, "expires_us", json_integer(t->msg.expires_us));
	json_object_set_new(m, "ignore_result", json_boolean(t->msg.ignore_result));
	return m;
}

/* The child's outcome frame into t. */
static void take_outcome(aiq_task *t, const json_t *m)
{
	json_int_t o = json_integer_value(json_object_get(m, "outcome"));
	t->outcome = o == OUTCOME_SUCCESS || o == OUTCOME_FAILURE || o == OUTCOME_RETRY
	                     ? (enum task_outcome)o
	                     : OUTCOME_NONE;
	t->result_json = aiq__frame_get_str(m, "result");
	t->exc_type = aiq__frame_get_str(m, "exc_type");
	t->exc_message = aiq__frame_get_str(m, "exc_message");
	t->exc_module = aiq__frame_get_str(m, "exc_module");
	t->traceback = aiq__frame_get_str(m, "traceback");
	json_t *cd = json_object_get(m, "retry_countdown_ms");
	t->retry_countdown_ms = json_is_integer(cd) ? json_integer_value(cd) : -1;
	const char *inv = json_string_value(json_object_get(m, "invalid_report"));
	if (inv)
		snprintf(t->invalid_report, sizeof t->invalid_report, "%s", inv);
	if ((t->outcome == OUTCOME_FAILURE || t->outcome == OUTCOME_RETRY) && !t->exc_type)
		set_failure(t, "MemoryError", "out of memory taking the outcome", "builtins");
}

/* A state the child's handler reported: store it, answer with the code. */
static int answer_state(aiq_worker *w, struct proc_slot *s, aiq_task *t, const json_t *m)
{
	int state = (int)json_integer_value(json_object_get(m, "state"));
	const char *json = json_string_value(json_object_get(m, "json"));
	int rc = state == AIQ_STATE_PROGRESS && json
	                 ? aiq__worker_store_state(w, t, state, json, NULL, NULL, NULL)
	                 : aiq__err(AIQ_EINVAL, "a pool process reported state %d", state);
	json_t *ans = json_object();
	if (ans == NULL)
		return -1;
	json_object_set_new(ans, "rc", json_integer(rc));
	if (rc != AIQ_OK)
		aiq__frame_set_str(ans, "error", aiq_error_last());
	return aiq__frame_send(s->fd, ans);
}

void aiq__proc_run(aiq_worker *w, struct proc_slot *s, aiq_task *t)
{
	if (aiq__proc_start(w, s) != AIQ_OK) {
		char msg[300];
		snprintf(msg, sizeof msg, "no pool process to run the task: %s", aiq_error_last());
		set_failure(t, "WorkerLostError", msg, "billiard.exceptions");
		return;
	}
	/* A child that died while idle (killed from outside) is replaced
	 * before it is given the task, which then has not started. */
	struct pollfd idle = {.fd = s->fd, .events = POLLIN};
	if (poll(&idle, 1, 0) > 0) {
		pid_t pid = s->pid;
		char how[64];
		describe_status(how, sizeof how, aiq__proc_end_child(w, s, true, LOST_WAIT_MS));
		aiq__log(AIQ_LOG_WARNING, "worker: idle pool process %ld exited: %s; replacing it",
		         (long)pid, how);
		if (aiq__proc_start(w, s) != AIQ_OK) {
			char msg[300];
			snprintf(msg, sizeof msg, "no pool process to run the task: %s",
			         aiq_error_last());
			set_failure(t, "WorkerLostError", msg, "billiard.exceptions");
			return;
		}
	}
	long long job = atomic_fetch_add(&w->jobs, 1); /* from 0, as billiard counts */
	/* Killed during a task only when it grows past the cap in that task: a
	 * child already over it (a cap below what a fresh copy of the worker
	 * takes) is only replaced after each task. */
	bool watch_memory = w->max_memory_kib > 0 && rss_kib(s->pid) <= w->max_memory_kib;
	if (aiq__frame_send(s->fd, task_frame(t, job)) != 0) {
		child_lost(w, s, t, job, false);
		return;
	}
	int signalled = 0; /* the cancellation reason the child was told */
	for (;;) {
		struct pollfd p = {.fd = s->fd, .events = POLLIN};
		int n = poll(&p, 1, TICK_MS);
		if (n < 0 && errno != EINTR) {
			child_lost(w, s, t, job, true);
			return;
		}
		if (n > 0) {
			json_t *m = NULL;
			if (aiq__frame_recv(s->fd, &m) != 0) {
				child_lost(w, s, t, job, false);
				return;
			}
			if (json_object_get(m, "outcome")) {
				take_outcome(t, m);
				json_decref(m);
				break;
			}
			int rc = answer_state(w, s, t, m);
			json_decref(m);
			if (rc != 0) {
				child_lost(w, s, t, job, true);
				return;
			}
		}

		pthread_mutex_lock(&w->lock);
		bool abandoned = t->abandoned;
		pthread_mutex_unlock(&w->lock);
		if (abandoned) {
			/* The worker aborted and handed the delivery back: the task
			 * runs again elsewhere, so this run ends now. */
			aiq__proc_end_child(w, s, true, 0);
			return;
		}
		if (atomic_load(&t->terminate)) {
			/* Revoked with terminate, REVOKED stored: the task ends here. */
			pid_t pid = s->pid;
			aiq__proc_end_child(w, s, true, LOST_WAIT_MS);
			aiq__log(AIQ_LOG_WARNING,
			         "worker: task %s (%s) revoked with terminate: pool process %ld "
			         "killed",
			         t->msg.id, t->msg.task, (long)pid);
			pthread_mutex_lock(&w->lock);
			t->revoked = true;
			t->terminated = true;
			pthread_mutex_unlock(&w->lock);
			if (aiq__proc_start(w, s) != AIQ_OK)
				aiq__log(AIQ_LOG_ERROR, "worker: %s (retried with the next task)",
				         aiq_error_last());
			return;
		}
		int cancel = atomic_load(&t->cancel);
		if (cancel != signalled) {
			union sigval v = {.sival_int = (int)job};
			sigqueue(s->pid, cancel == AIQ_ETIMEDOUT ? SIGUSR1 : SIGUSR2, v);
			signalled = cancel;
		}
		int64_t now = aiq__mono_ms();
		if (t->hard_deadline && now >= t->hard_deadline) {
			pid_t pid = s->pid;
			aiq__proc_end_child(w, s, true, 0);
			char msg[128];
			snprintf(msg, sizeof msg, "TimeLimitExceeded(%.3f)",
			         (double)(t->hard_deadline - t->started_mono) / 1000.0);
			aiq__log(
			        AIQ_LOG_ERROR,
			        "worker: task %s (%s) passed its hard time limit: pool process %ld "
			        "killed",
			        t->msg.id, t->msg.task, (long)pid);
			set_failure(t, "TimeLimitExceeded", msg, "billiard.exceptions");
			if (aiq__proc_start(w, s) != AIQ_OK)
				aiq__log(AIQ_LOG_ERROR, "worker: %s", aiq_error_last());
			return;
		}
		if (watch_memory) {
			int64_t kib = rss_kib(s->pid);
			if (kib > w->max_memory_kib) {
				aiq__log(AIQ_LOG_ERROR,
				         "worker: pool process %ld uses %lld KiB, over "
				         "worker.max_memory_per_child (%lld KiB): killed",
				         (long)s->pid, (long long)kib,
				         (long long)w->max_memory_kib);
				child_lost(w, s, t, job, true);
				return;
			}
		}
	}

	/* Recycling, as Celery's: the task is done, its child is replaced. */
	s->tasks++;
	int64_t kib = w->max_memory_kib > 0 ? rss_kib(s->pid) : -1;
	bool by_count = w->max_tasks_per_child > 0 && s->tasks >= w->max_tasks_per_child;
	if (by_count || kib > w->max_memory_kib) {
		aiq__log(AIQ_LOG_INFO, "worker: replacing pool process %ld after %lld task(s)%s",
		         (long)s->pid, (long long)s->tasks,
		         by_count ? "" : " (worker.max_memory_per_child)");
		aiq__proc_end_child(w, s, false, EXIT_WAIT_MS);
		if (aiq__proc_start(w, s) != AIQ_OK)
			aiq__log(AIQ_LOG_ERROR, "worker: %s", aiq_error_last());
	}
}
