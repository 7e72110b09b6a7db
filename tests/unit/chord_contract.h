/*
 * The chord join contract of the result stores that count parts themselves
 * (memory://, PostgreSQL; docs/workflows.md), checked against a store handle
 * by tests/unit/test_canvas.c and tests/integration/postgres/test_postgres.c
 * alike. Header-only: each test program includes it once.
 *
 *   chord_contract(s, gid)  one chord's sequence: dedupe, order, retry, done
 *   chord_concurrent(...)   threads on their own handles return parts at
 *                           once; exactly one sees the chord complete
 */
#ifndef AIQ_CHORD_CONTRACT_H
#define AIQ_CHORD_CONTRACT_H

#include "store.h"

#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One part's entry as the worker writes it: [1, task_id, state, result]. */
static void chord_entry(char *buf, size_t n, const char *task_id, long long value)
{
	snprintf(buf, n, "[1, \"%s\", \"SUCCESS\", %lld]", task_id, value);
}

/* Return one part; *ready as the store gave it (caller frees). */
static int chord_return(aiq__store *s, const char *gid, int64_t index, const char *task_id,
                        long long value, char **ready)
{
	char entry[256];
	chord_entry(entry, sizeof entry, task_id, value);
	return aiq__store_chord_part_return(s, gid, index, entry, ready);
}

/* Return a part and check that the chord is not complete yet. */
static void chord_return_pending(aiq__store *s, const char *gid, int64_t index, const char *task_id,
                                 long long value)
{
	char *ready = NULL;
	int rc = chord_return(s, gid, index, task_id, value, &ready);
	ck_assert_msg(rc == AIQ_OK, "part %s: %s", task_id, aiq_error_last());
	ck_assert_msg(ready == NULL, "part %s completed the chord early: %s", task_id, ready);
}

/* The task ids of a ready list, joined by ',' (caller frees). */
static char *chord_ready_ids(const char *ready)
{
	json_t *list = json_loads(ready, 0, NULL);
	ck_assert_msg(json_is_array(list), "not a JSON list: %.300s", ready);
	size_t len = 1;
	for (size_t i = 0; i < json_array_size(list); i++)
		len += strlen(json_string_value(json_array_get(json_array_get(list, i), 1))) + 1;
	char *out = calloc(1, len);
	for (size_t i = 0; i < json_array_size(list); i++) {
		if (i > 0)
			strcat(out, ",");
		strcat(out, json_string_value(json_array_get(json_array_get(list, i), 1)));
	}
	json_decref(list);
	return out;
}

static void chord_contract(aiq__store *s, const char *gid)
{
	char *ready = NULL;
	/* A part of a chord whose size was never set: not joined here. */
	chord_return_pending(s, gid, 0, "early", 1);

	ck_assert_int_eq(aiq__store_chord_set_size(s, gid, 4), AIQ_OK);
	chord_return_pending(s, gid, 2, "p2", 20);
	chord_return_pending(s, gid, 0, "p0", 0);
	/* Returned twice (a redelivery): counted once, by task id and by index. */
	chord_return_pending(s, gid, 0, "p0", 0);
	chord_return_pending(s, gid, 0, "p0-again", 0);
	chord_return_pending(s, gid, 2, "p2", 20);
	/* No group_index: sorts after every indexed part. */
	chord_return_pending(s, gid, -1, "px", 99);
	chord_return_pending(s, gid, -1, "px", 99);
	/* The fourth distinct part completes it, with the parts in header order. */
	ck_assert_int_eq(chord_return(s, gid, 1, "p1", 10, &ready), AIQ_OK);
	ck_assert_msg(ready != NULL, "the last part did not complete the chord");
	char *ids = chord_ready_ids(ready);
	ck_assert_str_eq(ids, "p0,p1,p2,px");
	free(ids);
	json_t *list = json_loads(ready, 0, NULL);
	ck_assert_int_eq(json_integer_value(json_array_get(json_array_get(list, 1), 3)), 10);
	ck_assert_str_eq(json_string_value(json_array_get(json_array_get(list, 0), 2)), "SUCCESS");
	json_decref(list);
	free(ready);
	ready = NULL;
	/* The completing part's own repeat (a retry after a lost answer, a
	 * redelivery after a crash before the body was sent) is told again;
	 * any other part is not. */
	ck_assert_int_eq(chord_return(s, gid, 1, "p1", 10, &ready), AIQ_OK);
	ck_assert_ptr_nonnull(ready);
	free(ready);
	chord_return_pending(s, gid, 2, "p2", 20);
	chord_return_pending(s, gid, 3, "p3-late", 30);
	/* After chord_done the chord is gone: a late part is ignored. */
	ck_assert_int_eq(aiq__store_chord_done(s, gid), AIQ_OK);
	chord_return_pending(s, gid, 1, "p1", 10);
	ck_assert_int_eq(aiq__store_chord_done(s, gid), AIQ_OK);

	/* Bad input is refused and loses nothing. */
	ck_assert_int_eq(aiq__store_chord_part_return(s, gid, 0, "not json", &ready), AIQ_EINVAL);
	ck_assert_int_eq(aiq__store_chord_part_return(s, gid, 0, "[1, \"x\"]", &ready), AIQ_EINVAL);
	ck_assert_int_eq(aiq__store_chord_part_return(s, gid, 0, NULL, &ready), AIQ_EINVAL);
	ck_assert_int_eq(
	        aiq__store_chord_part_return(s, "", 0, "[1, \"x\", \"SUCCESS\", 1]", &ready),
	        AIQ_EINVAL);
	ck_assert_ptr_null(ready);

	/* A chord of one part completes at once. */
	char one[128];
	snprintf(one, sizeof one, "%s-one", gid);
	ck_assert_int_eq(aiq__store_chord_set_size(s, one, 1), AIQ_OK);
	ck_assert_int_eq(chord_return(s, one, 0, "only", 5, &ready), AIQ_OK);
	ck_assert_ptr_nonnull(ready);
	free(ready);
	ck_assert_int_eq(aiq__store_chord_done(s, one), AIQ_OK);
}

struct chord_worker {
	aiq__store *s;
	const char *gid;
	int first, count; /* the group_index range this thread returns */
	atomic_int *ready_seen;
	char *ready;
	int calls, dup_fired;
	int rc;
	char err[256];
};

static void *chord_worker_main(void *arg)
{
	struct chord_worker *w = arg;
	for (int k = 0; k < w->count && w->rc == AIQ_OK; k++) {
		int index = w->first + k;
		char tid[96];
		snprintf(tid, sizeof tid, "%s-part-%05d", w->gid, index);
		/* Every third part is returned twice, as a redelivery would: the
		 * repeat completes nothing, unless it repeats the completing part
		 * (then it is told again, as the contract says). */
		bool completed = false;
		for (int rep = 0; rep < (index % 3 == 0 ? 2 : 1) && w->rc == AIQ_OK; rep++) {
			char *ready = NULL;
			w->rc = chord_return(w->s, w->gid, index, tid, index, &ready);
			w->calls++;
			if (w->rc != AIQ_OK)
				snprintf(w->err, sizeof w->err, "%s", aiq_error_last());
			if (ready && rep == 0) {
				completed = true;
				atomic_fetch_add(w->ready_seen, 1);
				free(w->ready);
				w->ready = ready;
			} else if (ready) {
				if (!completed)
					w->dup_fired++;
				free(ready);
			}
		}
	}
	return NULL;
}

/* n threads, thread i on handles[i], each returning `each` parts of one
 * chord of n * each parts at once. Exactly one thread is told the chord is
 * complete, and its list holds every part once, in group_index order.
 * Returns the part returns (calls) per second. */
static double chord_concurrent(aiq__store *const *handles, int n, int each, const char *gid)
{
	ck_assert_int_eq(aiq__store_chord_set_size(handles[0], gid, (int64_t)n * each), AIQ_OK);
	atomic_int ready_seen = 0;
	struct chord_worker *w = calloc((size_t)n, sizeof *w);
	pthread_t *th = calloc((size_t)n, sizeof *th);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++) {
		/* Interleaved ranges would be as good; contiguous ones make the
		 * last part returned anyone's. */
		w[i] = (struct chord_worker){.s = handles[i],
		                             .gid = gid,
		                             .first = i * each,
		                             .count = each,
		                             .ready_seen = &ready_seen};
		ck_assert_int_eq(pthread_create(&th[i], NULL, chord_worker_main, &w[i]), 0);
	}
	for (int i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	const char *ready = NULL;
	long calls = 0;
	for (int i = 0; i < n; i++) {
		ck_assert_msg(w[i].rc == AIQ_OK, "thread %d: %s", i, w[i].err);
		ck_assert_int_eq(w[i].dup_fired, 0);
		calls += w[i].calls;
		if (w[i].ready)
			ready = w[i].ready;
	}
	ck_assert_int_eq(atomic_load(&ready_seen), 1);
	json_t *list = json_loads(ready, 0, NULL);
	ck_assert_int_eq(json_array_size(list), (size_t)n * each);
	for (size_t i = 0; i < json_array_size(list); i++)
		ck_assert_int_eq(json_integer_value(json_array_get(json_array_get(list, i), 3)),
		                 (json_int_t)i);
	json_decref(list);
	ck_assert_int_eq(aiq__store_chord_done(handles[0], gid), AIQ_OK);
	for (int i = 0; i < n; i++)
		free(w[i].ready);
	free(w);
	free(th);
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	return secs > 0 ? (double)calls / secs : 0;
}

#endif /* AIQ_CHORD_CONTRACT_H */
