/*
 * The process pool's fork server: a process forked once at the start of a
 * run, before the pool threads and the run's connections exist. It has one
 * thread, so a fork never copies a lock another thread held (the parent's
 * own, a sanitizer runtime's allocator, a library's without fork handlers):
 * each child starts from a quiet copy of the worker as it was when the run
 * started. It forks a child per request, passes the parent's end of the
 * child's socket back over its control socket (SCM_RIGHTS), reaps the
 * children and reports how each ended (for WorkerLostError's wording).
 */
#include "proc_int.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

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
		aiq__proc_child_main(w, sv[1], self);
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
static void srv_reap(int ctl, struct srv_children *kids, bool report)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (size_t i = 0; i < kids->n; i++) {
			if (kids->pids[i] == pid) {
				kids->pids[i] = kids->pids[--kids->n];
				break;
			}
		}
		struct srv_msg m = {.kind = SRV_EXITED, .pid = pid, .status = status};
		if (report)
			srv_send(ctl, &m, -1);
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
	sigaction(SIGINT, &sa, NULL); /* the parent decides, as for the children */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGCHLD, &sa, NULL);
	struct srv_children kids = {0};
	for (;;) {
		srv_reap(ctl, &kids, true);
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
		srv_reap(ctl, &kids, false);
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
	int64_t until = aiq__mono_ms() + 2 * (int64_t)EXIT_WAIT_MS;
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
int aiq__proc_end_child(aiq_worker *w, struct proc_slot *s, bool kill_it, int64_t wait_ms)
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
		aiq__proc_end_child(w, s, kill_it, EXIT_WAIT_MS);
}
