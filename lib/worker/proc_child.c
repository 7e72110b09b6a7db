/*
 * A pool child process (worker.pool = processes): it reads a task frame,
 * builds the task as a handler sees it, runs the handler and sends back the
 * outcome; progress goes to the parent, which stores it and answers.
 * Cancellation (soft time limit, revocation) arrives as a signal, SIGUSR1
 * for the soft limit (as billiard's) and SIGUSR2 for a revocation, queued
 * with the task's job number (sigqueue) so that it cancels that task only.
 * A child touches none of the parent's locks or connections and leaves with
 * _exit().
 */
#include "proc_int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <stdio_ext.h>
#endif
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* The task a child runs. Static because the cancellation signal handler
 * writes its flag; only ever used in a child process. */
static aiq_task child_task;
static int child_fd = -1;
/* The job number of the task running (as an int, as signals carry it), and
 * the last cancellation received: (job << 2) | 1 (soft limit) or 2. */
static atomic_int child_job = -1;
static atomic_llong child_pending = -1;

#define PENDING(job, reason) ((long long)(unsigned)(job) << 2 | (reason))

/* A cancellation names its job (sigqueue), so one the parent sent just as
 * the last task ended never cancels the next. The handler may run before
 * the child knows the job it names; child_run_one() then finds it pending. */
static void on_cancel_signal(int sig, siginfo_t *info, void *ctx)
{
	(void)ctx;
	if (info->si_code != SI_QUEUE)
		return;
	int job = info->si_value.sival_int;
	atomic_store(&child_pending, PENDING(job, sig == SIGUSR1 ? 1 : 2));
	if (job == atomic_load(&child_job))
		atomic_store(&child_task.cancel, sig == SIGUSR1 ? AIQ_ETIMEDOUT : AIQ_ECANCELED);
}

/* aiq_task_progress() in a child: the parent stores the state and answers. */
static int child_forward_state(aiq_task *t, int state, const char *json)
{
	(void)t;
	json_t *req = json_object();
	if (req == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	json_object_set_new(req, "state", json_integer(state));
	aiq__frame_set_str(req, "json", json);
	json_t *ans = NULL;
	if (aiq__frame_send(child_fd, req) != 0 || aiq__frame_recv(child_fd, &ans) != 0)
		_exit(CHILD_EXIT_IO); /* the parent is gone or broke the protocol */
	int rc = (int)json_integer_value(json_object_get(ans, "rc"));
	const char *why = json_string_value(json_object_get(ans, "error"));
	if (rc != AIQ_OK)
		rc = aiq__err(rc, "%s", why ? why : "storing the state failed");
	json_decref(ans);
	return rc;
}

static void child_reset_task(aiq_task *t)
{
	aiq__task_release(t);
	memset(t, 0, sizeof *t);
}

/* Build the task from its frame, run the handler, send the outcome. */
static void child_run_one(aiq_worker *w, json_t *m)
{
	aiq_task *t = &child_task;
	child_reset_task(t); /* also clears a cancellation meant for the last task */
	int job = (int)json_integer_value(json_object_get(m, "job"));
	atomic_store(&child_job, job);
	long long pending = atomic_load(&child_pending);
	if (pending == PENDING(job, 1) || pending == PENDING(job, 2))
		atomic_store(&t->cancel, (pending & 3) == 1 ? AIQ_ETIMEDOUT : AIQ_ECANCELED);
	t->w = w;
	aiq__message_init(&t->msg);
	t->msg.id = aiq__frame_get_str(m, "id");
	t->msg.task = aiq__frame_get_str(m, "task");
	t->msg.parent_id = aiq__frame_get_str(m, "parent_id");
	t->msg.root_id = aiq__frame_get_str(m, "root_id");
	t->msg.group = aiq__frame_get_str(m, "group");
	json_t *args = json_object_get(m, "args"), *kwargs = json_object_get(m, "kwargs");
	t->msg.args = json_is_array(args) ? json_incref(args) : json_array();
	t->msg.kwargs = json_is_object(kwargs) ? json_incref(kwargs) : json_object();
	t->msg.retries = (int)json_integer_value(json_object_get(m, "retries"));
	t->msg.eta_us = json_integer_value(json_object_get(m, "eta_us"));
	t->msg.expires_us = json_integer_value(json_object_get(m, "expires_us"));
	t->msg.ignore_result = json_is_true(json_object_get(m, "ignore_result"));
	t->max_retries = (int)json_integer_value(json_object_get(m, "max_retries"));
	t->queue = aiq__frame_get_str(m, "queue");
	t->retry_countdown_ms = -1;
	t->forward_state = child_forward_state;
	t->args_json = json_dumps(t->msg.args, JSON_COMPACT);
	t->kwargs_json = json_dumps(t->msg.kwargs, JSON_COMPACT);
	t->handler = t->msg.task ? aiq__registry_find_handler(w, t->msg.task) : NULL;

	if (!t->msg.id || !t->msg.task || !t->args_json || !t->kwargs_json)
		aiq_task_fail(t, "MemoryError", "out of memory in the pool process", "builtins");
	else if (t->handler == NULL)
		aiq_task_fail(t, "NotRegistered", t->msg.task, "celery.exceptions");
	else
		t->handler->fn(t, t->handler->userdata);

	json_t *out = json_object();
	if (out == NULL)
		_exit(CHILD_EXIT_IO);
	json_object_set_new(out, "outcome", json_integer(t->outcome));
	aiq__frame_set_str(out, "result", t->result_json);
	aiq__frame_set_str(out, "exc_type", t->exc_type);
	aiq__frame_set_str(out, "exc_message", t->exc_message);
	aiq__frame_set_str(out, "exc_module", t->exc_module);
	aiq__frame_set_str(out, "traceback", t->traceback);
	json_object_set_new(out, "retry_countdown_ms", json_integer(t->retry_countdown_ms));
	if (t->invalid_report[0] != '\0')
		aiq__frame_set_str(out, "invalid_report", t->invalid_report);
	if (aiq__frame_send(child_fd, out) != 0)
		_exit(CHILD_EXIT_IO);
}

#ifdef __GLIBC__
/* exit() from a handler in a child: the exit handlers and stdio buffers it
 * inherited belong to the parent (running them would repeat the parent's
 * cleanup, or its unwritten output; a leak checker would report everything
 * the parent's other threads hold), so after the handlers the child itself
 * registered, it leaves with the same status. */
static void child_on_exit(int status, void *arg)
{
	(void)arg;
	fflush(stdout);
	_exit(status);
}
#endif

_Noreturn void aiq__proc_child_main(aiq_worker *w, int fd, pid_t parent)
{
	child_fd = fd;
#ifdef __GLIBC__
	__fpurge(stdout); /* the parent's unwritten output is the parent's to write */
	on_exit(child_on_exit, NULL);
#endif
#ifdef __linux__
	/* When the fork server goes (the parent went), so does the child. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
	if (getppid() != parent)
		_exit(0);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_sigaction = on_cancel_signal;
	sa.sa_flags = SA_RESTART | SA_SIGINFO;
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	/* Ctrl-C reaches the whole process group, and a service manager may
	 * send SIGTERM to every process of the service: the parent decides (a
	 * first one finishes the running tasks, then ends the children), so
	 * children ignore both. The parent ends them by closing their socket,
	 * or with SIGKILL. */
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGCHLD, &sa, NULL);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	aiq__message_init(&child_task.msg);

	for (;;) {
		json_t *m = NULL;
		if (aiq__frame_recv(fd, &m) != 0)
			_exit(0); /* the parent closed its end: done */
		child_run_one(w, m);
		json_decref(m);
	}
}
