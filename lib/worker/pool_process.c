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
 * Children are not forked by the pool threads but by a fork server, a
 * process forked once at the start of a run, before the pool threads and
 * the run's connections exist. It has one thread, so a fork never copies a
 * lock that another thread held (the parent's own, the allocator's of a
 * sanitizer runtime, a library's without fork handlers): each child starts
 * from a quiet copy of the worker as it was when the run started, with its
 * handlers, analyzers and plugins. The server passes the parent's end of
 * each child's socket back over its control socket (SCM_RIGHTS), reaps the
 * children and reports how each ended (for WorkerLostError's wording). A
 * child touches none of the parent's locks or connections and leaves with
 * _exit().
 */
#include "worker_int.h"

#include <errno.h>
#ifdef __GLIBC__
#include <stdio_ext.h>
#endif
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define FRAME_MAX     (AIQ__MAX_MESSAGE_BYTES * 2u) /* task frame: args + kwargs + names */
#define EXIT_WAIT_MS  2000 /* an idle child told to exit gets this long before SIGKILL */
#define LOST_WAIT_MS  1000 /* a child whose socket closed gets this long to be reaped */
#define CHILD_EXIT_IO 70   /* the child's exit code when its socket fails (EX_SOFTWARE) */

/* ---- frames ---------------------------------------------------------------- */

static int send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		/* MSG_NOSIGNAL: a dead child must not raise SIGPIPE in the parent. */
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int recv_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1; /* end of file or error */
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Send a JSON object as one frame; steals the reference. 0 or -1. */
static int send_frame(int fd, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (text == NULL)
		return -1;
	size_t len = strlen(text);
	int rc = -1;
	if (len <= FRAME_MAX) {
		unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
		                        (unsigned char)(len >> 8), (unsigned char)len};
		rc = send_all(fd, hdr, 4) == 0 && send_all(fd, text, len) == 0 ? 0 : -1;
	}
	free(text);
	return rc;
}

/* Read one frame holding a JSON object. 0, or -1 on end of file, an I/O
 * error or a frame that is not a JSON object of at most FRAME_MAX bytes. */
static int recv_frame(int fd, json_t **out)
{
	*out = NULL;
	unsigned char hdr[4];
	if (recv_all(fd, hdr, 4) != 0)
		return -1;
	size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
	if (len > FRAME_MAX)
		return -1;
	char *buf = malloc(len + 1);
	if (buf == NULL || recv_all(fd, buf, len) != 0) {
		free(buf);
		return -1;
	}
	json_t *v = json_loadb(buf, len, 0, NULL);
	free(buf);
	if (!json_is_object(v)) {
		json_decref(v);
		return -1;
	}
	*out = v;
	return 0;
}

/* Set a string member unless s is NULL; text that is not UTF-8 is kept
 * with '?' for the bad bytes (a message must never fail for it). */
static void set_str(json_t *obj, const char *key, const char *s)
{
	if (s)
		json_object_set_new(obj, key, aiq__json_string_lossy(s));
}

static char *get_str(const json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s ? strdup(s) : NULL;
}

/* ---- the child ------------------------------------------------------------- */

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
	set_str(req, "json", json);
	json_t *ans = NULL;
	if (send_frame(child_fd, req) != 0 || recv_frame(child_fd, &ans) != 0)
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
	aiq__message_clear(&t->msg);
	free(t->queue);
	free(t->args_json);
	free(t->kwargs_json);
	free(t->result_json);
	free(t->exc_type);
	free(t->exc_message);
	free(t->exc_module);
	free(t->traceback);
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
	t->msg.id = get_str(m, "id");
	t->msg.task = get_str(m, "task");
	t->msg.parent_id = get_str(m, "parent_id");
	t->msg.root_id = get_str(m, "root_id");
	t->msg.group = get_str(m, "group");
	json_t *args = json_object_get(m, "args"), *kwargs = json_object_get(m, "kwargs");
	t->msg.args = json_is_array(args) ? json_incref(args) : json_array();
	t->msg.kwargs = json_is_object(kwargs) ? json_incref(kwargs) : json_object();
	t->msg.retries = (int)json_integer_value(json_object_get(m, "retries"));
	t->msg.eta_us = json_integer_value(json_object_get(m, "eta_us"));
	t->msg.expires_us = json_integer_value(json_object_get(m, "expires_us"));
	t->msg.ignore_result = json_is_true(json_object_get(m, "ignore_result"));
	t->max_retries = (int)json_integer_value(json_object_get(m, "max_retries"));
	t->queue = get_str(m, "queue");
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
	set_str(out, "result", t->result_json);
	set_str(out, "exc_type", t->exc_type);
	set_str(out, "exc_message", t->exc_message);
	set_str(out, "exc_module", t->exc_module);
	set_str(out, "traceback", t->traceback);
	json_object_set_new(out, "retry_countdown_ms", json_integer(t->retry_countdown_ms));
	if (t->invalid_report[0] != '\0')
		set_str(out, "invalid_report", t->invalid_report);
	if (send_frame(child_fd, out) != 0)
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

static _Noreturn void child_main(aiq_worker *w, int fd, pid_t parent)
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
	/* Ctrl-C reaches the whole process group: the parent decides (a first
	 * one finishes the running tasks), so children ignore it, as billiard's. */
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGCHLD, &sa, NULL);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	aiq__message_init(&child_task.msg);

	for (;;) {
		json_t *m = NULL;
		if (recv_frame(fd, &m) != 0)
			_exit(0); /* the parent closed its end: done */
		child_run_one(w, m);
		json_decref(m);
	}
}

/* ---- the fork server ------------------------------------------------------ */

/* What the server tells the parent, one SOCK_SEQPACKET message each; a
 * SPAWNED message carries the parent's end of the child's socket. */
enum { SRV_SPAWNED = 1, SRV_EXITED = 2 };
struct srv_msg {
	int32_t kind;
	int32_t pid;    /* SPAWNED: the child, or -1 when the fork failed */
	int32_t status; /* EXITED: as waitpid() gives it; SPAWNED: errno of a failure */
};

static int srv_send(int ctl, const struct srv_msg *m, int fd)
{
	struct iovec iov = {.iov_base = (void *)(uintptr_t)m, .iov_len = sizeof *m};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		memset(&u, 0, sizeof u);
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof u.buf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	for (;;) {
		ssize_t n = sendmsg(ctl, &mh, MSG_NOSIGNAL);
		if (n == (ssize_t)sizeof *m)
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		return -1;
	}
}

/* One server message; *fd receives a passed descriptor (or -1). 0, or -1
 * when the server is gone. */
static int srv_recv(int ctl, struct srv_msg *m, int *fd)
{
	*fd = -1;
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct iovec iov = {.iov_base = m, .iov_len = sizeof *m};
	struct msghdr mh = {.msg_iov = &iov,
	                    .msg_iovlen = 1,
	                    .msg_control = u.buf,
	                    .msg_controllen = sizeof u.buf};
	ssize_t n;
	do
		n = recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); n > 0 && c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fd, CMSG_DATA(c), sizeof *fd);
	if (n != (ssize_t)sizeof *m) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		return -1;
	}
	return 0;
}

/* The server's children, so that it can end them when the parent goes. */
struct srv_children {
	pid_t *pids;
	size_t n, cap;
};

static void srv_spawn(aiq_worker *w, int ctl, struct srv_children *kids)
{
	struct srv_msg m = {.kind = SRV_SPAWNED, .pid = -1};
	int sv[2];
	if (kids->n == kids->cap) {
		size_t cap = kids->cap ? kids->cap * 2 : 16;
		pid_t *np = realloc(kids->pids, cap * sizeof *np);
		if (np == NULL) {
			m.status = ENOMEM;
			srv_send(ctl, &m, -1);
			return;
		}
		kids->pids = np;
		kids->cap = cap;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		m.status = errno;
		srv_send(ctl, &m, -1);
		return;
	}
	pid_t self = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		close(ctl);
		close(sv[0]);
		child_main(w, sv[1], self);
	}
	m.status = pid < 0 ? errno : 0;
	close(sv[1]);
	if (pid > 0) {
		m.pid = pid;
		kids->pids[kids->n++] = pid;
	}
	srv_send(ctl, &m, pid > 0 ? sv[0] : -1);
	close(sv[0]);
}

/* Reap ended children and report them (while the parent listens). */
static void srv_reap(int ctl, struct srv_children *kids, bool report, int flags)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, flags)) > 0) {
		for (size_t i = 0; i < kids->n; i++)
			if (kids->pids[i] == pid)
				kids->pids[i] = kids->pids[--kids->n];
		struct srv_msg m = {.kind = SRV_EXITED, .pid = pid, .status = status};
		if (report)
			srv_send(ctl, &m, -1);
		if (flags == 0)
			break;
	}
}

/* The fork server: single-threaded, it forks a child for each request and
 * reports each child's end. When the parent closes the control socket the
 * children (whose sockets close too) get EXIT_WAIT_MS to exit, then are
 * killed; the server leaves last. */
static _Noreturn void server_main(aiq_worker *w, int ctl)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGINT, &sa, NULL); /* the parent decides what Ctrl-C means */
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGCHLD, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	struct srv_children kids = {0};
	for (;;) {
		srv_reap(ctl, &kids, true, WNOHANG);
		struct pollfd p = {.fd = ctl, .events = POLLIN};
		if (poll(&p, 1, 10) <= 0)
			continue;
		char req;
		ssize_t n = recv(ctl, &req, 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		srv_spawn(w, ctl, &kids);
	}
	int64_t until = aiq__mono_ms() + EXIT_WAIT_MS;
	while (kids.n > 0 && aiq__mono_ms() < until) {
		srv_reap(ctl, &kids, false, WNOHANG);
		usleep(2000);
	}
	for (size_t i = 0; i < kids.n; i++)
		kill(kids.pids[i], SIGKILL);
	while (kids.n > 0 && waitpid(-1, NULL, 0) > 0)
		kids.n--;
	_exit(0);
}

int aiq__proc_server_start(aiq_worker *w)
{
	if (w->server_fd >= 0)
		return AIQ_OK;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
		return aiq__err(AIQ_ERROR, "cannot create the pool's fork server socket: %s",
		                strerror(errno));
	pid_t pid = fork();
	if (pid == 0) {
		close(sv[0]);
		server_main(w, sv[1]);
	}
	int e = errno;
	close(sv[1]);
	if (pid < 0) {
		close(sv[0]);
		return aiq__err(AIQ_ERROR, "cannot fork the pool's fork server: %s", strerror(e));
	}
	w->server_fd = sv[0];
	w->server_pid = pid;
	w->nexits = 0;
	return AIQ_OK;
}

void aiq__proc_server_stop(aiq_worker *w)
{
	if (w->server_fd < 0)
		return;
	close(w->server_fd);
	w->server_fd = -1;
	int64_t until = aiq__mono_ms() + 2 * EXIT_WAIT_MS;
	for (;;) {
		pid_t r = waitpid(w->server_pid, NULL, WNOHANG);
		if (r == w->server_pid || (r < 0 && errno != EINTR))
			break;
		if (aiq__mono_ms() >= until) {
			kill(w->server_pid, SIGKILL);
			waitpid(w->server_pid, NULL, 0);
			break;
		}
		usleep(2000);
	}
	w->server_pid = -1;
	w->nexits = 0;
}

/* Read one server message (server_lock held): an exit is kept for whoever
 * ends that child; a spawn reply is returned. 0, or -1 when it is gone. */
static int server_read(aiq_worker *w, struct srv_msg *m, int *fd)
{
	if (srv_recv(w->server_fd, m, fd) != 0)
		return -1;
	if (m->kind == SRV_EXITED) {
		if (w->nexits == w->cap_exits) {
			size_t cap = w->cap_exits ? w->cap_exits * 2 : 16;
			struct proc_exit *ne = realloc(w->exits, cap * sizeof *ne);
			if (ne == NULL)
				return 0; /* that child's status is lost: reported as unknown */
			w->exits = ne;
			w->cap_exits = cap;
		}
		w->exits[w->nexits++] = (struct proc_exit){m->pid, m->status};
	}
	return 0;
}

/* Ask the server for a child (server_lock held). AIQ_OK; *gone when the
 * server does not answer. */
static int spawn_locked(aiq_worker *w, struct proc_slot *s, bool *gone)
{
	*gone = false;
	char req = 'S';
	if (w->server_fd < 0 || send(w->server_fd, &req, 1, MSG_NOSIGNAL) != 1) {
		*gone = true;
		return aiq__err(AIQ_ERROR, "the pool's fork server is gone");
	}
	for (;;) {
		struct srv_msg m;
		int fd;
		if (server_read(w, &m, &fd) != 0) {
			*gone = true;
			return aiq__err(AIQ_ERROR, "the pool's fork server is gone");
		}
		if (m.kind != SRV_SPAWNED)
			continue;
		if (m.pid <= 0 || fd < 0) {
			if (fd >= 0)
				close(fd);
			return aiq__err(AIQ_ERROR, "cannot fork a pool process: %s",
			                strerror(m.status ? m.status : EIO));
		}
		s->pid = m.pid;
		s->fd = fd;
		s->tasks = 0;
		return AIQ_OK;
	}
}

int aiq__proc_start(aiq_worker *w, struct proc_slot *s)
{
	if (s->pid > 0)
		return AIQ_OK;
	pthread_mutex_lock(&w->server_lock);
	bool gone;
	int rc = spawn_locked(w, s, &gone);
	if (gone) {
		/* Killed from outside (its children died with it). A new one is
		 * forked from this thread while others run: the one fork of a
		 * run not made from a quiet process, and only after such a loss;
		 * what it inherits of the other slots are sockets of dead
		 * children. */
		aiq__log(AIQ_LOG_ERROR, "worker: the pool's fork server is gone; starting another");
		if (w->server_pid > 0)
			kill(w->server_pid, SIGKILL);
		aiq__proc_server_stop(w);
		rc = aiq__proc_server_start(w);
		if (rc == AIQ_OK)
			rc = spawn_locked(w, s, &gone);
	}
	pthread_mutex_unlock(&w->server_lock);
	if (rc == AIQ_OK)
		aiq__log(AIQ_LOG_DEBUG, "worker: pool process %ld started", (long)s->pid);
	return rc;
}

/* How the child ended, as the server reports it; false when no report came
 * within wait_ms (or the server is gone). */
static bool take_exit(aiq_worker *w, pid_t pid, int64_t wait_ms, int *status)
{
	int64_t until = aiq__mono_ms() + wait_ms;
	for (;;) {
		pthread_mutex_lock(&w->server_lock);
		for (size_t i = 0; i < w->nexits; i++) {
			if (w->exits[i].pid == pid) {
				*status = w->exits[i].status;
				w->exits[i] = w->exits[--w->nexits];
				pthread_mutex_unlock(&w->server_lock);
				return true;
			}
		}
		bool gone = w->server_fd < 0;
		if (!gone) {
			struct pollfd p = {.fd = w->server_fd, .events = POLLIN};
			if (poll(&p, 1, 10) > 0) {
				struct srv_msg m;
				int fd;
				gone = server_read(w, &m, &fd) != 0;
				if (fd >= 0)
					close(fd); /* a spawn reply nobody waits for: not possible
					            */
			}
		}
		pthread_mutex_unlock(&w->server_lock);
		if (gone || aiq__mono_ms() >= until)
			return false;
	}
}

/* Close the parent's end of the child's socket and learn how the child
 * ended: it gets `wait_ms` to exit by itself before SIGKILL. Returns its
 * wait status (a SIGKILL when it is unknown). */
static int end_child(aiq_worker *w, struct proc_slot *s, bool kill_it, int64_t wait_ms)
{
	close(s->fd);
	s->fd = -1;
	if (kill_it)
		kill(s->pid, SIGKILL);
	int status = SIGKILL; /* what WIFSIGNALED/WTERMSIG read as "killed" */
	if (!take_exit(w, s->pid, wait_ms, &status)) {
		kill(s->pid, SIGKILL);
		take_exit(w, s->pid, EXIT_WAIT_MS, &status);
	}
	s->pid = -1;
	return status;
}

void aiq__proc_stop(aiq_worker *w, struct proc_slot *s, bool kill_it)
{
	if (s->pid > 0)
		end_child(w, s, kill_it, EXIT_WAIT_MS);
}

/* Resident set of a process in KiB, from /proc; -1 when unknown. */
static int64_t rss_kib(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/statm", (long)pid);
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return -1;
	long long size = 0, resident = -1;
	int n = fscanf(f, "%lld %lld", &size, &resident);
	fclose(f);
	if (n != 2 || resident < 0)
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
	int status = end_child(w, s, killed, LOST_WAIT_MS);
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
	set_str(m, "id", t->msg.id);
	set_str(m, "task", t->msg.task);
	set_str(m, "parent_id", t->msg.parent_id);
	set_str(m, "root_id", t->msg.root_id);
	set_str(m, "group", t->msg.group);
	set_str(m, "queue", t->queue);
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
	t->result_json = get_str(m, "result");
	t->exc_type = get_str(m, "exc_type");
	t->exc_message = get_str(m, "exc_message");
	t->exc_module = get_str(m, "exc_module");
	t->traceback = get_str(m, "traceback");
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
		set_str(ans, "error", aiq_error_last());
	return send_frame(s->fd, ans);
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
		describe_status(how, sizeof how, end_child(w, s, true, LOST_WAIT_MS));
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
	if (send_frame(s->fd, task_frame(t, job)) != 0) {
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
			if (recv_frame(s->fd, &m) != 0) {
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
			end_child(w, s, true, 0);
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
			end_child(w, s, true, 0);
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
		if (w->max_memory_kib > 0) {
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
		end_child(w, s, false, EXIT_WAIT_MS);
		if (aiq__proc_start(w, s) != AIQ_OK)
			aiq__log(AIQ_LOG_ERROR, "worker: %s", aiq_error_last());
	}
}
