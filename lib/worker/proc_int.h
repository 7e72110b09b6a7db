/*
 * Private interface of the process pool's parts (worker.pool = processes):
 *
 *   proc_frame.c   length-prefixed JSON frames over a socket
 *   proc_child.c   a child process: runs handlers for its pool thread
 *   proc_server.c  the fork server that forks children and reports their end
 *   pool_process.c a pool thread's side: send a task, watch it, take its outcome
 */
#ifndef AIQ_PROC_INT_H
#define AIQ_PROC_INT_H

#include "worker_int.h"

#define FRAME_MAX     ((size_t)AIQ__MAX_MESSAGE_BYTES * 2) /* task frame: args + kwargs + names */
#define EXIT_WAIT_MS  2000 /* an idle child told to exit gets this long before SIGKILL */
#define LOST_WAIT_MS  1000 /* a child whose socket closed gets this long to be reaped */
#define CHILD_EXIT_IO 70   /* the child's exit code when its socket fails (EX_SOFTWARE) */

/* Send a JSON object as one frame (4-byte big-endian length, then the
 * text); steals the reference. 0 or -1. Never raises SIGPIPE. */
int aiq__frame_send(int fd, json_t *obj);
/* Read one frame holding a JSON object. 0, or -1 on end of file, an I/O
 * error or a frame that is not a JSON object of at most FRAME_MAX bytes. */
int aiq__frame_recv(int fd, json_t **out);
/* Set a string member unless s is NULL (bytes that are not UTF-8 become '?'). */
void aiq__frame_set_str(json_t *obj, const char *key, const char *s);
/* A copy of a string member, or NULL. */
char *aiq__frame_get_str(const json_t *obj, const char *key);

/* A child's life: read tasks from fd, run them, answer; never returns.
 * `parent` is the fork server's pid. */
_Noreturn void aiq__proc_child_main(aiq_worker *w, int fd, pid_t parent);

/* Close the parent's end of the slot's socket and learn how its child
 * ended: it gets wait_ms to exit by itself (or is killed at once with
 * kill_it) before SIGKILL. Returns its wait status (SIGKILL when unknown). */
int aiq__proc_end_child(aiq_worker *w, struct proc_slot *s, bool kill_it, int64_t wait_ms);

#endif /* AIQ_PROC_INT_H */
