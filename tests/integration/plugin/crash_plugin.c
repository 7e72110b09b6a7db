/*
 * A deliberately misbehaving plugin for the process pool tests. It registers
 * the task "crash.run(mode)" and the analyzer "crash" (the lyrics text is
 * the mode), which do what the mode says:
 *   ok        succeed with {"pid": <the process running the handler>}
 *   segv      write through an invalid pointer (SIGSEGV)
 *   abort     abort() (SIGABRT)
 *   exit      exit(3) from inside the handler
 *   loop      report {"pid"} as progress, then spin forever, never checking
 *             for cancellation (only a hard time limit or a kill ends it)
 *   leak      allocate and touch memory without end (up to 2 GiB, then spin)
 *   progress  report {"step": 1, "pid"} as progress, then wait (up to 20 s)
 *             until asked to stop; succeed with {"cancelled": reason}
 *   soft      wait (up to 20 s) until asked to stop; succeed with
 *             {"cancelled": reason}
 *   sleep     sleep 400 ms, then succeed with {"slept": true}
 *   fail      fail with CrashError("on purpose") from module "crash" and a
 *             traceback
 *   retry     ask for a retry in 0 ms ("again")
 */
#define AIQ_PLUGIN
#include <aiqueue/aiqueue.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void wait_cancelled(aiq_task *task)
{
	for (int i = 0; i < 2000 && aiq_task_cancelled(task) == 0; i++)
		sleep_ms(10);
	char out[64];
	snprintf(out, sizeof out, "{\"cancelled\": %d}", aiq_task_cancelled(task));
	aiq_task_succeed(task, out);
}

static void run_mode(aiq_task *task, const char *mode)
{
	char out[128];
	if (strcmp(mode, "ok") == 0) {
		snprintf(out, sizeof out, "{\"pid\": %ld}", (long)getpid());
		aiq_task_succeed(task, out);
	} else if (strcmp(mode, "segv") == 0) {
		/* Not NULL (the sanitizers would name it first): an unmapped page. */
		volatile uintptr_t bad = 16;
		*(volatile int *)bad = 1;
	} else if (strcmp(mode, "abort") == 0) {
		abort();
	} else if (strcmp(mode, "exit") == 0) {
		exit(3);
	} else if (strcmp(mode, "loop") == 0) {
		snprintf(out, sizeof out, "{\"pid\": %ld}", (long)getpid());
		aiq_task_progress(task, out);
		for (volatile unsigned long n = 0;; n++)
			;
	} else if (strcmp(mode, "leak") == 0) {
		size_t total = 0;
		while (total < (size_t)2 << 30) {
			char *p = malloc(4u << 20);
			if (p == NULL)
				break;
			memset(p, 0x5a, 4u << 20);
			total += 4u << 20;
			sleep_ms(1);
		}
		for (;;)
			sleep_ms(100);
	} else if (strcmp(mode, "progress") == 0) {
		snprintf(out, sizeof out, "{\"step\": 1, \"pid\": %ld}", (long)getpid());
		if (aiq_task_progress(task, out) != AIQ_OK) {
			aiq_task_fail(task, "ProgressError", aiq_error_last(), "crash");
			return;
		}
		wait_cancelled(task);
	} else if (strcmp(mode, "soft") == 0) {
		wait_cancelled(task);
	} else if (strcmp(mode, "sleep") == 0) {
		sleep_ms(400);
		aiq_task_succeed(task, "{\"slept\": true}");
	} else if (strcmp(mode, "fail") == 0) {
		aiq_task_set_traceback(task, "Traceback: crash_plugin.c, in run_mode");
		aiq_task_fail(task, "CrashError", "on purpose", "crash");
	} else if (strcmp(mode, "retry") == 0) {
		aiq_task_retry(task, 0, "again");
	} else {
		aiq_task_fail(task, "ValueError", mode, "builtins");
	}
}

static void crash_task(aiq_task *task, void *userdata)
{
	(void)userdata;
	const char *mode = NULL;
	if (aiq_task_arg_str(&mode, NULL, task, 0) != AIQ_OK) {
		aiq_task_fail(task, "TypeError", aiq_error_last(), "builtins");
		return;
	}
	run_mode(task, mode);
}

static void crash_analyzer(aiq_task *task, const char *text, const char *params_json,
                           void *userdata)
{
	(void)params_json, (void)userdata;
	run_mode(task, text);
}

AIQ_PLUGIN_EXPORT int aiq_plugin_abi_version(void)
{
	return AIQ_PLUGIN_ABI_VERSION;
}

AIQ_PLUGIN_EXPORT int aiq_plugin_register(aiq_worker *w)
{
	int rc = aiq_worker_register(w, "crash.run", crash_task, NULL, NULL);
	if (rc == AIQ_OK)
		rc = aiq_worker_add_analyzer(w, "crash", crash_analyzer, NULL, NULL);
	return rc;
}
