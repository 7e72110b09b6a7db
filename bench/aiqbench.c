/*
 * aiqbench: libaiqueue's side of the benchmarks (bench/run.sh drives it).
 * Built only on the public API.
 *
 *   aiqbench enqueue   BROKER RESULT QUEUE N PAYLOAD
 *       one producer, N x tasks.add [i, i(, pad)], each confirmed by the broker
 *       (aiq_client_enqueue returns after the confirm / the LPUSH reply).
 *       Prints "rate <tasks/s>".
 *   aiqbench fill      BROKER QUEUE N THREADS
 *       pre-enqueue N x tasks.add [i, i] from THREADS producers (one client
 *       each), for the drain scenarios (Celery's worker drains the same
 *       messages).
 *   aiqbench worker    BROKER RESULT QUEUE CONCURRENCY TRACK_STARTED
 *       a worker with no-op handlers (tasks.add, tasks.noop, tasks.lat);
 *       prints "ready" and runs until SIGTERM/SIGINT.
 *   aiqbench drain-mem N CONCURRENCY TRACK_STARTED PAYLOAD
 *       memory:// broker and store in this process: enqueue N, then time a
 *       worker draining them. Prints "rate <tasks/s>", "hwm_kib <VmHWM>" and
 *       "uss_kib <private memory>" (Private_Clean + Private_Dirty of
 *       /proc/self/smaps_rollup, taken at the end of the drain).
 *   aiqbench enqueue-par BROKER RESULT QUEUE N THREADS PAYLOAD [shared]
 *       THREADS producers at once, N tasks in all, each confirmed: one
 *       client each, or with "shared" one aiq_client shared by all the
 *       threads (the client groups concurrent enqueues into one publish
 *       batch / one confirm wait). Prints "rate <tasks/s>".
 *   aiqbench mix       BROKER RESULT QUEUE N CONCURRENCY TASK_MS
 *       the LLM-like mix: N x tasks.sleep [TASK_MS] (each handler waits
 *       TASK_MS, as a call to a model server would), a worker of
 *       CONCURRENCY threads in this process. Prints "rate <tasks/s>" and
 *       "busy <percent>": rate x TASK_MS / CONCURRENCY, 100 when every pool
 *       thread is waiting on a task all the time.
 *   aiqbench latency   BROKER RESULT QUEUE RATE N CONCURRENCY
 *       paced producer of tasks.lat [t0_us] at RATE tasks/s; enqueue->start
 *       from the handler's result, enqueue->result from the completion
 *       callback. With a memory:// broker the worker runs in this process,
 *       otherwise an external `aiqbench worker` must consume QUEUE.
 *       Prints "start_p50 .. result_p999" in microseconds.
 *   aiqbench chord     BROKER RESULT QUEUE N
 *       one chord of N x tasks.add [i, i] with the body tasks.noop, sent
 *       with aiq_client_send_chord; an external `aiqbench worker` consumes
 *       QUEUE. Times send -> the body's SUCCESS. Prints "secs", "send_secs"
 *       and "rate <parts/s>".
 */
#define _GNU_SOURCE
#include <aiqueue/aiqueue.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long vm_hwm_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmHWM: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* Unique set size: the memory only this process holds. */
static long uss_kib(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long sum = 0, v;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "Private_Clean: %ld", &v) == 1 ||
		    sscanf(line, "Private_Dirty: %ld", &v) == 1)
			sum += v;
	fclose(f);
	return sum;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "aiqbench: %s: %s (%s)\n", what, aiq_strerror(rc), aiq_error_last());
	exit(1);
}

static aiq_config *make_cfg(const char *broker, const char *result, const char *queue)
{
	aiq_config *cfg;
	int rc;
	if ((rc = aiq_config_new(&cfg)) != AIQ_OK)
		die("config", rc);
	if ((rc = aiq_config_set_str(cfg, "broker.url", broker)) != AIQ_OK ||
	    (rc = aiq_config_set_str(cfg, "result.url", result)) != AIQ_OK ||
	    (rc = aiq_config_set_str(cfg, "queue", queue)) != AIQ_OK)
		die("config", rc);
	return cfg;
}

/* args of tasks.add: [i, i] or [i, i, "xxx…"] with a PAYLOAD-byte pad. */
static void add_args(char *buf, size_t cap, long i, const char *pad)
{
	if (pad[0])
		snprintf(buf, cap, "[%ld, %ld, \"%s\"]", i, i, pad);
	else
		snprintf(buf, cap, "[%ld, %ld]", i, i);
}

static char *make_pad(long payload)
{
	char *pad = malloc((size_t)payload + 1);
	memset(pad, 'x', (size_t)payload);
	pad[payload] = 0;
	return pad;
}

/* AIQ_BENCH_BATCH=K: aiq_client_enqueue_batch() with K tasks per call. */
static void enqueue_batched(aiq_client *c, long n, long k, const char *pad,
                            const aiq_enqueue_opts *o)
{
	size_t cap = strlen(pad) + 64;
	char **args = calloc((size_t)k, sizeof *args);
	for (long j = 0; j < k; j++)
		args[j] = malloc(cap);
	for (long i = 0; i < n; i += k) {
		long m = n - i < k ? n - i : k;
		for (long j = 0; j < m; j++)
			add_args(args[j], cap, i + j, pad);
		int rc = aiq_client_enqueue_batch(NULL, NULL, c, "tasks.add",
		                                  (const char *const *)args, NULL, (size_t)m, o);
		if (rc != AIQ_OK)
			die("enqueue batch", rc);
	}
	for (long j = 0; j < k; j++)
		free(args[j]);
	free(args);
}

static int enqueue_n(aiq_client *c, long n, const char *pad, const aiq_enqueue_opts *o)
{
	const char *batch = getenv("AIQ_BENCH_BATCH");
	if (batch && atol(batch) > 1) {
		enqueue_batched(c, n, atol(batch), pad, o);
		return 0;
	}
	size_t cap = strlen(pad) + 64;
	char *args = malloc(cap);
	for (long i = 0; i < n; i++) {
		add_args(args, cap, i, pad);
		int rc = aiq_client_enqueue(NULL, c, "tasks.add", args, NULL, o);
		if (rc != AIQ_OK)
			die("enqueue", rc);
	}
	free(args);
	return 0;
}

static int cmd_enqueue(char **av)
{
	const char *broker = av[0], *result = av[1], *queue = av[2];
	long n = atol(av[3]);
	char *pad = make_pad(atol(av[4]));
	aiq_config *cfg = make_cfg(broker, result, queue);
	aiq_client *c;
	aiq_enqueue_opts *warm;
	char wq[256];
	int rc;
	if ((rc = aiq_client_new(&c, cfg)) != AIQ_OK)
		die("client", rc);
	/* Warm-up on a side queue (connections, declarations, caches), then purge it. */
	snprintf(wq, sizeof wq, "%s.warm", queue);
	aiq_enqueue_opts_new(&warm);
	aiq_enqueue_opts_set_queue(warm, wq);
	enqueue_n(c, n / 10 < 200 ? n / 10 + 1 : 200, pad, warm);
	aiq_client_purge(NULL, c, wq);
	double t0 = now_s();
	enqueue_n(c, n, pad, NULL);
	double dt = now_s() - t0;
	printf("rate %.1f\nsecs %.3f\n", (double)n / dt, dt);
	aiq_enqueue_opts_free(warm);
	aiq_client_free(c);
	aiq_config_free(cfg);
	free(pad);
	return 0;
}

struct fill {
	const char *broker, *queue;
	long from, to;
};

static void *fill_thread(void *arg)
{
	struct fill *f = arg;
	aiq_config *cfg = make_cfg(f->broker, "memory://", f->queue);
	aiq_client *c;
	char args[64];
	int rc;
	if ((rc = aiq_client_new(&c, cfg)) != AIQ_OK)
		die("client", rc);
	for (long i = f->from; i < f->to; i++) {
		snprintf(args, sizeof args, "[%ld, %ld]", i, i);
		if ((rc = aiq_client_enqueue(NULL, c, "tasks.add", args, NULL, NULL)) != AIQ_OK)
			die("enqueue", rc);
	}
	aiq_client_free(c);
	aiq_config_free(cfg);
	return NULL;
}

static int cmd_fill(char **av)
{
	long n = atol(av[2]);
	int t = atoi(av[3]);
	pthread_t th[64];
	struct fill f[64];
	if (t < 1 || t > 64)
		t = 1;
	for (int i = 0; i < t; i++) {
		f[i] = (struct fill){av[0], av[1], n * i / t, n * (i + 1) / t};
		pthread_create(&th[i], NULL, fill_thread, &f[i]);
	}
	for (int i = 0; i < t; i++)
		pthread_join(th[i], NULL);
	return 0;
}

/* ---- handlers ------------------------------------------------------------ */

static void h_noop(aiq_task *t, void *ud)
{
	(void)ud;
	aiq_task_succeed(t, "null");
}

static void h_sleep(aiq_task *t, void *ud)
{
	(void)ud;
	long ms = 0;
	sscanf(aiq_task_args_json(t), "[%ld", &ms);
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
	aiq_task_succeed(t, "null");
}

static void h_lat(aiq_task *t, void *ud)
{
	(void)ud;
	long long t0 = 0;
	char out[96];
	sscanf(aiq_task_args_json(t), "[%lld", &t0);
	snprintf(out, sizeof out, "{\"t0\": %lld, \"start\": %lld}", t0, (long long)wall_us());
	aiq_task_succeed(t, out);
}

static aiq_worker *new_worker(const char *broker, const char *result, const char *queue, int conc,
                              int track)
{
	aiq_config *cfg = make_cfg(broker, result, queue);
	aiq_worker *w;
	int rc;
	aiq_config_set_int(cfg, "worker.concurrency", conc);
	aiq_config_set_bool(cfg, "result.track_started", track);
	/* AIQ_BENCH_PREFETCH_MULTIPLIER=K: worker.prefetch_multiplier (for
	 * bench/e2e.sh comparisons; the library's default otherwise). */
	const char *mult = getenv("AIQ_BENCH_PREFETCH_MULTIPLIER");
	if (mult && *mult)
		aiq_config_set_int(cfg, "worker.prefetch_multiplier", atoi(mult));
	if ((rc = aiq_worker_new(&w, cfg)) != AIQ_OK)
		die("worker", rc);
	aiq_worker_register(w, "tasks.add", h_noop, NULL, NULL);
	aiq_worker_register(w, "tasks.noop", h_noop, NULL, NULL);
	aiq_worker_register(w, "tasks.lat", h_lat, NULL, NULL);
	aiq_worker_register(w, "tasks.sleep", h_sleep, NULL, NULL);
	aiq_config_free(cfg);
	return w;
}

static void *run_worker(void *w)
{
	int rc = aiq_worker_run(w);
	if (rc != AIQ_OK && rc != AIQ_ECANCELED)
		fprintf(stderr, "aiqbench: worker: %s: %s\n", aiq_strerror(rc),
		        aiq_worker_error(w));
	return NULL;
}

static aiq_worker *g_worker;

static void on_signal(int sig)
{
	(void)sig;
	aiq_worker_stop(g_worker);
}

static int cmd_worker(char **av)
{
	g_worker = new_worker(av[0], av[1], av[2], atoi(av[3]), atoi(av[4]));
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("ready\n");
	fflush(stdout);
	run_worker(g_worker);
	aiq_worker_free(g_worker);
	return 0;
}

static int cmd_drain_mem(char **av)
{
	long n = atol(av[0]);
	int conc = atoi(av[1]), track = atoi(av[2]);
	char *pad = make_pad(atol(av[3]));
	aiq_config *cfg = make_cfg("memory://bench", "memory://bench", "bench");
	aiq_client *c;
	int rc;
	if ((rc = aiq_client_new(&c, cfg)) != AIQ_OK)
		die("client", rc);
	aiq_worker *w = new_worker("memory://bench", "memory://bench", "bench", conc, track);
	/* Warm-up: a small batch through the same worker first. */
	long warm = n / 10 < 500 ? n / 10 + 1 : 500;
	enqueue_n(c, warm, pad, NULL);
	pthread_t th;
	pthread_create(&th, NULL, run_worker, w);
	while (aiq_worker_counter(w, 0) < warm)
		usleep(500);
	/* Then stop it, pre-enqueue N and time the drain alone. */
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	enqueue_n(c, n, pad, NULL);
	double t0 = now_s();
	pthread_create(&th, NULL, run_worker, w);
	while (aiq_worker_counter(w, 0) < warm + n)
		usleep(200);
	double dt = now_s() - t0;
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	printf("rate %.1f\nsecs %.3f\nhwm_kib %ld\nuss_kib %ld\n", (double)n / dt, dt, vm_hwm_kib(),
	       uss_kib());
	aiq_worker_free(w);
	aiq_client_free(c);
	aiq_config_free(cfg);
	free(pad);
	return 0;
}

struct par {
	const char *broker, *result, *queue, *pad;
	long n;
	pthread_barrier_t *go;
	aiq_client *shared; /* NULL: the thread makes its own client */
};

static void *par_thread(void *arg)
{
	struct par *p = arg;
	if (p->shared) {
		pthread_barrier_wait(p->go);
		enqueue_n(p->shared, p->n, p->pad, NULL);
		return NULL;
	}
	aiq_config *cfg = make_cfg(p->broker, p->result, p->queue);
	aiq_client *c;
	int rc;
	if ((rc = aiq_client_new(&c, cfg)) != AIQ_OK)
		die("client", rc);
	enqueue_n(c, 2, p->pad, NULL); /* connected and declared before the clock */
	pthread_barrier_wait(p->go);
	enqueue_n(c, p->n, p->pad, NULL);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return NULL;
}

static int cmd_enqueue_par(char **av)
{
	long n = atol(av[3]);
	int t = atoi(av[4]);
	char *pad = make_pad(atol(av[5]));
	pthread_t th[64];
	struct par p[64];
	pthread_barrier_t go;
	aiq_config *cfg = NULL;
	aiq_client *shared = NULL;
	int rc;
	if (t < 1 || t > 64)
		t = 1;
	if (av[6] && !strcmp(av[6], "shared")) {
		cfg = make_cfg(av[0], av[1], av[2]);
		if ((rc = aiq_client_new(&shared, cfg)) != AIQ_OK)
			die("client", rc);
		enqueue_n(shared, 2, pad, NULL); /* connected and declared before the clock */
	}
	pthread_barrier_init(&go, NULL, (unsigned)t + 1);
	for (int i = 0; i < t; i++) {
		p[i] = (struct par){av[0], av[1], av[2], pad, n * (i + 1) / t - n * i / t,
		                    &go,   shared};
		pthread_create(&th[i], NULL, par_thread, &p[i]);
	}
	pthread_barrier_wait(&go);
	double t0 = now_s();
	for (int i = 0; i < t; i++)
		pthread_join(th[i], NULL);
	double dt = now_s() - t0;
	printf("rate %.1f\nsecs %.3f\n", (double)n / dt, dt);
	pthread_barrier_destroy(&go);
	aiq_client_free(shared);
	aiq_config_free(cfg);
	free(pad);
	return 0;
}

static int cmd_mix(char **av)
{
	const char *broker = av[0], *result = av[1], *queue = av[2];
	long n = atol(av[3]), ms = atol(av[5]);
	int conc = atoi(av[4]);
	aiq_config *cfg = make_cfg(broker, result, queue);
	aiq_client *c;
	int rc;
	if ((rc = aiq_client_new(&c, cfg)) != AIQ_OK)
		die("client", rc);
	aiq_worker *w = new_worker(broker, result, queue, conc, 0);
	char args[32];
	snprintf(args, sizeof args, "[%ld]", ms);
	for (long i = 0; i < n; i++)
		if ((rc = aiq_client_enqueue(NULL, c, "tasks.sleep", args, NULL, NULL)) != AIQ_OK)
			die("enqueue", rc);
	pthread_t th;
	double t0 = now_s();
	pthread_create(&th, NULL, run_worker, w);
	while (aiq_worker_counter(w, 0) < n)
		usleep(1000);
	double dt = now_s() - t0;
	aiq_worker_stop(w);
	pthread_join(th, NULL);
	double rate = (double)n / dt;
	printf("rate %.1f\nsecs %.3f\nbusy %.1f\n", rate, dt,
	       100.0 * rate * (double)ms / 1000.0 / conc);
	aiq_worker_free(w);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return 0;
}

/* ---- latency ------------------------------------------------------------- */

struct lat {
	int64_t *start_us, *result_us;
	atomic_long nstart, nresult;
	long cap;
};

static void on_complete(const char *id, const aiq_result *r, void *ud)
{
	struct lat *L = ud;
	int64_t t = wall_us();
	long long t0 = 0, st = 0;
	(void)id;
	const char *j = aiq_result_json(r);
	if (!j || sscanf(j, "{\"t0\": %lld, \"start\": %lld}", &t0, &st) != 2)
		return;
	long k = atomic_fetch_add(&L->nresult, 1);
	if (k < L->cap) {
		L->start_us[k] = st - t0;
		L->result_us[k] = t - t0;
	}
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

static int64_t pct(int64_t *v, long n, double p)
{
	long i = (long)(p * (double)(n - 1) + 0.5);
	return n ? v[i] : -1;
}

static int cmd_latency(char **av)
{
	const char *broker = av[0], *result = av[1], *queue = av[2];
	double rate = atof(av[3]);
	long n = atol(av[4]);
	int conc = atoi(av[5]);
	aiq_config *cfg = make_cfg(broker, result, queue);
	aiq_client *c;
	struct lat L = {0};
	pthread_t th;
	aiq_worker *w = NULL;
	int rc;
	L.cap = n;
	L.start_us = calloc((size_t)n, sizeof(int64_t));
	L.result_us = calloc((size_t)n, sizeof(int64_t));
	if ((rc = aiq_client_new(&c, cfg)) != AIQ_OK)
		die("client", rc);
	if ((rc = aiq_client_on_complete(c, on_complete, &L, NULL)) != AIQ_OK)
		die("on_complete", rc);
	if (strncmp(broker, "memory://", 9) == 0) {
		w = new_worker(broker, result, queue, conc, 1);
		pthread_create(&th, NULL, run_worker, w);
	}
	usleep(300000);
	/* Warm-up: 5% of the tasks (at least 20) at the same rate, not recorded. */
	long warm = n / 20 < 20 ? 20 : n / 20;
	double t0 = now_s();
	char args[64];
	for (long i = 0; i < warm + n; i++) {
		double due = t0 + (double)i / rate;
		double d = due - now_s();
		if (d > 0)
			usleep((useconds_t)(d * 1e6));
		if (i == warm) {
			/* wait for the warm-up tasks, then reset the counters */
			double until = now_s() + 10;
			while (atomic_load(&L.nresult) < warm && now_s() < until)
				usleep(1000);
			atomic_store(&L.nresult, 0);
			t0 = now_s() - (double)i / rate;
		}
		snprintf(args, sizeof args, "[%lld]", (long long)wall_us());
		if ((rc = aiq_client_enqueue(NULL, c, "tasks.lat", args, NULL, NULL)) != AIQ_OK)
			die("enqueue", rc);
	}
	double achieved = (double)n / (now_s() - t0);
	double until = now_s() + 30;
	while (atomic_load(&L.nresult) < n && now_s() < until)
		usleep(2000);
	long got = atomic_load(&L.nresult);
	if (got > n)
		got = n;
	qsort(L.start_us, (size_t)got, sizeof(int64_t), cmp64);
	qsort(L.result_us, (size_t)got, sizeof(int64_t), cmp64);
	printf("offered %.1f\nreceived %ld\n", achieved, got);
	printf("start_p50 %lld\nstart_p99 %lld\nstart_p999 %lld\n",
	       (long long)pct(L.start_us, got, .5), (long long)pct(L.start_us, got, .99),
	       (long long)pct(L.start_us, got, .999));
	printf("result_p50 %lld\nresult_p99 %lld\nresult_p999 %lld\n",
	       (long long)pct(L.result_us, got, .5), (long long)pct(L.result_us, got, .99),
	       (long long)pct(L.result_us, got, .999));
	if (w) {
		aiq_worker_stop(w);
		pthread_join(th, NULL);
		aiq_worker_free(w);
	}
	aiq_client_free(c);
	aiq_config_free(cfg);
	return 0;
}

static int cmd_chord(char **a)
{
	const char *broker = a[0], *result = a[1], *queue = a[2];
	long n = atol(a[3]);
	if (n < 1)
		n = 1;
	aiq_config *cfg = make_cfg(broker, result, queue);
	aiq_client *c = NULL;
	int rc = aiq_client_new(&c, cfg);
	if (rc != AIQ_OK)
		die("client", rc);
	aiq_signature **parts = calloc((size_t)n, sizeof *parts);
	aiq_signature *body = NULL;
	if (parts == NULL)
		die("memory", AIQ_ENOMEM);
	for (long i = 0; i < n; i++) {
		char args[64];
		add_args(args, sizeof args, i, "");
		if ((rc = aiq_signature_new(&parts[i], "tasks.add")) != AIQ_OK ||
		    (rc = aiq_signature_set_args_json(parts[i], args)) != AIQ_OK)
			die("signature", rc);
	}
	if ((rc = aiq_signature_new(&body, "tasks.noop")) != AIQ_OK)
		die("signature", rc);
	char *body_id = NULL;
	double t0 = now_s();
	rc = aiq_client_send_chord(&body_id, NULL, c, (const aiq_signature *const *)parts,
	                           (size_t)n, body);
	if (rc != AIQ_OK)
		die("send_chord", rc);
	double t_sent = now_s();
	aiq_result *r = NULL;
	rc = aiq_client_wait(&r, c, body_id, 300000);
	double t1 = now_s();
	if (rc != AIQ_OK)
		die("wait", rc);
	if (aiq_result_state(r) != AIQ_STATE_SUCCESS) {
		fprintf(stderr, "aiqbench: chord body ended %s\n",
		        aiq_state_name(aiq_result_state(r)));
		return 1;
	}
	printf("secs %.3f\nsend_secs %.3f\nrate %.1f\n", t1 - t0, t_sent - t0,
	       (double)n / (t1 - t0));
	aiq_result_free(r);
	aiq_free(body_id);
	aiq_signature_free(body);
	for (long i = 0; i < n; i++)
		aiq_signature_free(parts[i]);
	free(parts);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return 0;
}

int main(int argc, char **argv)
{
	aiq_log_set_level(aiq_log_level_from_name("warning"));
	if (argc >= 7 && !strcmp(argv[1], "enqueue"))
		return cmd_enqueue(argv + 2);
	if (argc >= 6 && !strcmp(argv[1], "fill"))
		return cmd_fill(argv + 2);
	if (argc >= 7 && !strcmp(argv[1], "worker"))
		return cmd_worker(argv + 2);
	if (argc >= 6 && !strcmp(argv[1], "drain-mem"))
		return cmd_drain_mem(argv + 2);
	if (argc >= 8 && !strcmp(argv[1], "enqueue-par"))
		return cmd_enqueue_par(argv + 2);
	if (argc >= 8 && !strcmp(argv[1], "mix"))
		return cmd_mix(argv + 2);
	if (argc >= 8 && !strcmp(argv[1], "latency"))
		return cmd_latency(argv + 2);
	if (argc >= 6 && !strcmp(argv[1], "chord"))
		return cmd_chord(argv + 2);
	fprintf(stderr, "usage: see the comment at the top of bench/aiqbench.c\n");
	return 2;
}
