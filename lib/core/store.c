/*
 * Result-store registry: maps a URL scheme to a driver table.
 */
#include "store.h"

#include "url.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifdef AIQ_HAVE_REDIS
extern const aiq__store_ops aiq__redis_store_ops;
#endif
#ifdef AIQ_HAVE_POSTGRES
extern const aiq__store_ops aiq__postgres_store_ops;
#endif

/* Stores built into this library; optional ones compile out. */
static const aiq__store_ops *const store_drivers[] = {
        &aiq__memory_store_ops,
#ifdef AIQ_HAVE_REDIS
        &aiq__redis_store_ops,
#endif
#ifdef AIQ_HAVE_POSTGRES
        &aiq__postgres_store_ops,
#endif
};

int aiq__store_lookup(const aiq__store_ops **out, const char *url)
{
	if (out == NULL || url == NULL)
		return aiq__err(AIQ_EINVAL, "no result store URL given");
	*out = NULL;
	size_t len = aiq__url_scheme_len(url);
	if (len == 0) {
		char *safe = aiq__url_redact(url);
		int rc = aiq__err(
		        AIQ_EINVAL,
		        "result store URL '%.200s' has no scheme (expected e.g. memory://, "
		        "redis://, postgresql://)",
		        safe ? safe : "?");
		free(safe);
		return rc;
	}
	for (size_t i = 0; i < sizeof store_drivers / sizeof store_drivers[0]; i++) {
		if (aiq__url_scheme_in(store_drivers[i]->schemes, url, len)) {
			*out = store_drivers[i];
			return AIQ_OK;
		}
	}
	return aiq__err(AIQ_EUNSUPPORTED,
	                "result store URL scheme '%.*s' is unknown or not built into this library",
	                (int)(len > 64 ? 64 : len), url);
}

int aiq__store_open(aiq__store **out, const char *url, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "no output pointer for the result store");
	*out = NULL;
	const aiq__store_ops *ops;
	int rc = aiq__store_lookup(&ops, url);
	if (rc != AIQ_OK)
		return rc;
	return ops->open(out, url, cfg);
}

void aiq__store_close(aiq__store *s)
{
	if (s == NULL)
		return;
	s->ops->close(s);
}

/* ---- front functions ----------------------------------------------------- */

const char *aiq__store_name(const aiq__store *s)
{
	return s ? s->ops->name : "";
}

unsigned aiq__store_caps(const aiq__store *s)
{
	return s ? s->ops->caps : 0;
}

static bool known_state(int state)
{
	return state >= AIQ_STATE_PENDING && state <= AIQ_STATE_REVOKED;
}

static int check_result(const aiq_result *r)
{
	if (r == NULL)
		return aiq__err(AIQ_EINVAL, "no result to store");
	if (r->task_id == NULL || r->task_id[0] == '\0')
		return aiq__err(AIQ_EINVAL, "a result to store needs a task id");
	if (!known_state(r->state))
		return aiq__err(AIQ_EINVAL, "state %d of task %.155s cannot be stored", r->state,
		                r->task_id);
	return AIQ_OK;
}

int aiq__store_put(aiq__store *s, const aiq_result *r)
{
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "put: no store");
	int rc = check_result(r);
	return rc == AIQ_OK ? s->ops->put(s, r) : rc;
}

/* A driver's answer for `task_id`: a result of a known state for that id. */
static int check_answer(aiq__store *s, aiq_result **out, const char *task_id, int rc)
{
	if (rc != AIQ_OK && rc != AIQ_ETIMEDOUT) {
		aiq_result_free(*out); /* a partial answer is not handed out */
		*out = NULL;
		return rc;
	}
	const aiq_result *r = *out;
	if (r == NULL && rc == AIQ_ETIMEDOUT)
		return rc;
	if (r == NULL || !known_state(r->state) || r->task_id == NULL ||
	    strcmp(r->task_id, task_id) != 0) {
		aiq_result_free(*out);
		*out = NULL;
		return aiq__err(AIQ_ESTORE, "the %s store gave no valid answer for task %.155s",
		                s->ops->name, task_id);
	}
	return rc;
}

int aiq__store_get(aiq__store *s, aiq_result **out, const char *task_id)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "get: out is NULL");
	*out = NULL;
	if (s == NULL || task_id == NULL || *task_id == '\0')
		return aiq__err(AIQ_EINVAL, "get: no store or no task id");
	return check_answer(s, out, task_id, s->ops->get(s, out, task_id));
}

int aiq__store_get_batch(aiq__store *s, aiq_result **out, const char *const *task_ids, size_t n,
                         int *status)
{
	if (s == NULL || ((out == NULL || task_ids == NULL || status == NULL) && n > 0))
		return aiq__err(AIQ_EINVAL, "get_batch: no store, output, ids or status array");
	for (size_t i = 0; i < n; i++)
		out[i] = NULL;
	if (n == 0)
		return AIQ_OK;
	/* Valid ids go to the driver in one call, in their order. */
	const char *stack_sel[64];
	aiq_result *stack_res[64];
	int stack_st[64];
	size_t stack_idx[64];
	const char **sel = stack_sel;
	aiq_result **res = stack_res;
	int *st = stack_st;
	size_t *idx = stack_idx;
	if (n > 64) {
		sel = malloc(n * sizeof *sel);
		res = malloc(n * sizeof *res);
		st = malloc(n * sizeof *st);
		idx = malloc(n * sizeof *idx);
		if (!sel || !res || !st || !idx) {
			free(sel);
			free(res);
			free(st);
			free(idx);
			for (size_t i = 0; i < n; i++)
				status[i] = AIQ_ENOMEM;
			return aiq__err(AIQ_ENOMEM, "out of memory");
		}
	}
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (task_ids[i] == NULL || task_ids[i][0] == '\0') {
			status[i] = aiq__err(AIQ_EINVAL, "get_batch: entry %zu has no task id", i);
			continue;
		}
		sel[m] = task_ids[i];
		res[m] = NULL;
		idx[m++] = i;
	}
	int rc = AIQ_OK;
	if (m > 0 && s->ops->get_batch) {
		rc = s->ops->get_batch(s, res, sel, m, st);
		for (size_t k = 0; k < m; k++) {
			if (rc != AIQ_OK) {
				aiq_result_free(res[k]);
				res[k] = NULL;
				st[k] = rc;
			}
		}
	} else {
		for (size_t k = 0; k < m; k++)
			st[k] = s->ops->get(s, &res[k], sel[k]);
	}
	for (size_t k = 0; k < m; k++) {
		size_t i = idx[k];
		status[i] = check_answer(s, &res[k], sel[k], st[k]);
		out[i] = res[k];
	}
	if (sel != stack_sel) {
		free(sel);
		free(res);
		free(st);
		free(idx);
	}
	return rc;
}

int aiq__store_wait(aiq__store *s, aiq_result **out, const char *task_id, int64_t timeout_ms)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "wait: out is NULL");
	*out = NULL;
	if (s == NULL || task_id == NULL || *task_id == '\0')
		return aiq__err(AIQ_EINVAL, "wait: no store or no task id");
	return check_answer(s, out, task_id, s->ops->wait(s, out, task_id, timeout_ms));
}

int aiq__store_subscribe(aiq__store *s, aiq__store_notify_fn fn, void *userdata)
{
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "subscribe: no store");
	if (!(s->ops->caps & AIQ__STORE_CAP_NOTIFY) || s->ops->subscribe == NULL) {
		if (fn == NULL)
			return AIQ_OK;
		return aiq__err(AIQ_EUNSUPPORTED, "the %s result store cannot notify completions",
		                s->ops->name);
	}
	return s->ops->subscribe(s, fn, userdata);
}

int aiq__store_ping(aiq__store *s)
{
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "ping: no store");
	return s->ops->ping ? s->ops->ping(s) : AIQ_OK;
}

int aiq__store_forget(aiq__store *s, const char *task_id)
{
	if (s == NULL || task_id == NULL || *task_id == '\0')
		return aiq__err(AIQ_EINVAL, "forget: no store or no task id");
	if (s->ops->forget == NULL)
		return aiq__err(AIQ_EUNSUPPORTED, "the %s result store cannot forget results",
		                s->ops->name);
	return s->ops->forget(s, task_id);
}

static int chord_check(const aiq__store *s, const char *group_id, bool has_op)
{
	if (s == NULL || group_id == NULL || *group_id == '\0')
		return aiq__err(AIQ_EINVAL, "chord: no store or no group id");
	if (!has_op)
		return aiq__err(AIQ_EUNSUPPORTED,
		                "the %s result store cannot join chords (Redis, PostgreSQL and "
		                "memory can; docs/workflows.md)",
		                s->ops->name);
	return AIQ_OK;
}

int aiq__store_chord_set_size(aiq__store *s, const char *group_id, int64_t size)
{
	int rc = chord_check(s, group_id, s && s->ops->chord_set_size);
	return rc == AIQ_OK ? s->ops->chord_set_size(s, group_id, size) : rc;
}

int aiq__store_chord_part_return(aiq__store *s, const char *group_id, int64_t group_index,
                                 const char *entry, char **ready)
{
	*ready = NULL;
	int rc = chord_check(s, group_id, s && s->ops->chord_part_return);
	char *id = NULL;
	if (rc == AIQ_OK)
		rc = aiq__store_chord_entry_id(&id, entry);
	free(id);
	return rc == AIQ_OK ? s->ops->chord_part_return(s, group_id, group_index, entry, ready)
	                    : rc;
}

int aiq__store_chord_entry_id(char **task_id, const char *entry)
{
	*task_id = NULL;
	if (entry == NULL)
		return aiq__err(AIQ_EINVAL, "chord: no entry");
	json_t *e = json_loads(entry, JSON_DECODE_ANY, NULL);
	const char *id = json_string_value(json_array_get(e, 1));
	int rc = AIQ_OK;
	if (id == NULL || *id == '\0' || json_array_size(e) != 4)
		rc = aiq__err(AIQ_EINVAL,
		              "chord: a part's entry is not [1, task_id, state, result]");
	else if (!(*task_id = strdup(id)))
		rc = aiq__err(AIQ_ENOMEM, "out of memory joining a chord");
	json_decref(e);
	return rc;
}

int aiq__store_chord_done(aiq__store *s, const char *group_id)
{
	int rc = chord_check(s, group_id, s && s->ops->chord_done);
	return rc == AIQ_OK ? s->ops->chord_done(s, group_id) : rc;
}

static int group_check(const aiq__store *s, const char *group_id, bool has_op)
{
	if (s == NULL || group_id == NULL || *group_id == '\0')
		return aiq__err(AIQ_EINVAL, "group: no store or no group id");
	if (!has_op)
		return aiq__err(AIQ_EUNSUPPORTED, "the %s result store cannot save group results",
		                s->ops->name);
	return AIQ_OK;
}

int aiq__store_put_group(aiq__store *s, const char *group_id, const char *meta)
{
	int rc = group_check(s, group_id, s && s->ops->put_group);
	if (rc == AIQ_OK && meta == NULL)
		rc = aiq__err(AIQ_EINVAL, "group: no meta");
	return rc == AIQ_OK ? s->ops->put_group(s, group_id, meta) : rc;
}

int aiq__store_get_group(aiq__store *s, const char *group_id, char **meta)
{
	*meta = NULL;
	int rc = group_check(s, group_id, s && s->ops->get_group);
	return rc == AIQ_OK ? s->ops->get_group(s, group_id, meta) : rc;
}

/* ---- coordination state ------------------------------------------------ */

/* True when the driver keeps coordination state (all six ops). */
static bool can_coordinate(const aiq__store *s)
{
	return s && s->ops->bucket && s->ops->claim && s->ops->release && s->ops->lease_take &&
	       s->ops->lease_renew && s->ops->lease_drop;
}

static int coord_check(const aiq__store *s, const char *key, const char *value)
{
	if (s == NULL || key == NULL || *key == '\0' || (value && *value == '\0'))
		return aiq__err(AIQ_EINVAL, "coordination: no store, key or value");
	if (!can_coordinate(s))
		return aiq__err(AIQ_EUNSUPPORTED,
		                "the %s result store keeps no rate limits, unique keys or "
		                "concurrency slots",
		                s->ops->name);
	return AIQ_OK;
}

int aiq__store_bucket(aiq__store *s, int64_t *wait_us, double *tokens, const char *key, double rate,
                      double burst, double cost, bool take)
{
	*wait_us = 0;
	*tokens = 0;
	int rc = coord_check(s, key, NULL);
	if (rc == AIQ_OK && !(rate > 0 && burst > 0 && cost >= 0))
		rc = aiq__err(AIQ_EINVAL, "rate limit bucket '%.200s': rate %g, burst %g, cost %g",
		              key, rate, burst, cost);
	return rc == AIQ_OK ? s->ops->bucket(s, wait_us, tokens, key, rate, burst, cost, take) : rc;
}

int aiq__store_claim(aiq__store *s, char **holder, const char *key, const char *value,
                     int64_t ttl_ms)
{
	*holder = NULL;
	int rc = coord_check(s, key, value ? value : "");
	if (rc == AIQ_OK && ttl_ms < 1)
		rc = aiq__err(AIQ_EINVAL, "claim '%.200s': a TTL of %lld ms", key,
		              (long long)ttl_ms);
	return rc == AIQ_OK ? s->ops->claim(s, holder, key, value, ttl_ms) : rc;
}

int aiq__store_release(aiq__store *s, const char *key, const char *value)
{
	int rc = coord_check(s, key, value ? value : "");
	return rc == AIQ_OK ? s->ops->release(s, key, value) : rc;
}

int aiq__store_lease_take(aiq__store *s, bool *got, const char *key, const char *member, long limit,
                          int64_t lease_ms)
{
	*got = false;
	int rc = coord_check(s, key, member ? member : "");
	if (rc == AIQ_OK && (limit < 1 || lease_ms < 1))
		rc = aiq__err(AIQ_EINVAL, "lease '%.200s': a limit of %ld, a lease of %lld ms", key,
		              limit, (long long)lease_ms);
	return rc == AIQ_OK ? s->ops->lease_take(s, got, key, member, limit, lease_ms) : rc;
}

int aiq__store_lease_renew(aiq__store *s, const char *key, const char *member, int64_t lease_ms)
{
	int rc = coord_check(s, key, member ? member : "");
	if (rc == AIQ_OK && lease_ms < 1)
		rc = aiq__err(AIQ_EINVAL, "lease '%.200s': a lease of %lld ms", key,
		              (long long)lease_ms);
	return rc == AIQ_OK ? s->ops->lease_renew(s, key, member, lease_ms) : rc;
}

int aiq__store_lease_drop(aiq__store *s, const char *key, const char *member)
{
	int rc = coord_check(s, key, member ? member : "");
	return rc == AIQ_OK ? s->ops->lease_drop(s, key, member) : rc;
}

/* True when an earlier entry of the batch made rs[i]'s task final. */
static bool final_earlier(const aiq_result *const *rs, const int *status, size_t i)
{
	for (size_t j = 0; j < i; j++)
		if (status[j] == AIQ_OK && aiq_state_is_ready(rs[j]->state) &&
		    strcmp(rs[j]->task_id, rs[i]->task_id) == 0)
			return true;
	return false;
}

int aiq__store_put_batch(aiq__store *s, const aiq_result *const *rs, size_t n, int *status)
{
	if (s == NULL || ((rs == NULL || status == NULL) && n > 0))
		return aiq__err(AIQ_EINVAL, "put_batch: no store, results or status array");
	if (n == 0)
		return AIQ_OK;
	/* Entries that fail the checks are answered here; the rest go to the
	 * driver in one call, in their order. */
	const aiq_result *stack_sel[64];
	int stack_st[64];
	size_t stack_idx[64];
	const aiq_result **sel = stack_sel;
	int *st = stack_st;
	size_t *idx = stack_idx;
	if (n > 64) {
		sel = malloc(n * sizeof *sel);
		st = malloc(n * sizeof *st);
		idx = malloc(n * sizeof *idx);
		if (!sel || !st || !idx) {
			free(sel);
			free(st);
			free(idx);
			return aiq__err(AIQ_ENOMEM, "out of memory");
		}
	}
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		status[i] = check_result(rs[i]);
		if (status[i] != AIQ_OK)
			continue;
		if (final_earlier(rs, status, i)) {
			status[i] = AIQ_ESTATE;
			continue;
		}
		sel[m] = rs[i];
		idx[m++] = i;
	}
	int rc = AIQ_OK;
	if (m > 0 && s->ops->put_batch) {
		rc = s->ops->put_batch(s, sel, m, st);
		for (size_t k = 0; k < m; k++)
			status[idx[k]] = rc == AIQ_OK ? st[k] : rc;
	} else {
		for (size_t k = 0; k < m; k++)
			status[idx[k]] = s->ops->put(s, sel[k]);
	}
	if (sel != stack_sel) {
		free(sel);
		free(st);
		free(idx);
	}
	return rc;
}
