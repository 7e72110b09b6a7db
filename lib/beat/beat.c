/*
 * The periodic scheduler (include/aiqueue/beat.h). With Redis, instances
 * share three things under "aiq:beat:<beat.name>:":
 *   leader   "<instance> <token>", SET NX PX by the one that sends, renewed
 *            every third of beat.lease_ms; the token comes from INCR fence;
 *   sent:<entry>:<slot>   claimed (SET NX PX) by the script that also
 *            checks the caller still holds the lease with the current token,
 *            so a slot is sent at most once even by two would-be leaders;
 *   last     a hash entry -> the newest slot sent, read by a new leader to
 *            send the slots missed while nobody led (beat.catchup_s).
 * beat.url may also name PostgreSQL: the same design on tables (beat_pg.c).
 * Without either the state lives in the process and one instance must run.
 */
#include "beat_int.h"

#include "config_int.h"
#include "coord.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Leader or renewal: the token when the caller holds the lease, else 0.
 * KEYS: leader, fence. ARGV: instance id, lease ms. */
static const char acquire_lua[] =
        "local v = redis.call('GET', KEYS[1])\n"
        "if v then\n"
        "  local id, tok = string.match(v, '^(.*) (%d+)$')\n"
        "  if id == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return tonumber(tok) end\n"
        "  return 0\n"
        "end\n"
        "local tok = redis.call('INCR', KEYS[2])\n"
        "redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. tok, 'PX', ARGV[2])\n"
        "return tok\n";

/* The fenced claim of one slot: -1 = the lease is not ours (or the token
 * is stale), 0 = the slot was sent already, 1 = send it.
 * KEYS: leader, fence, sent key. ARGV: instance id, token, ttl ms. */
static const char claim_lua[] =
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] .. ' ' .. ARGV[2] then return -1 end\n"
        "if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end\n"
        "if not redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. ARGV[2], 'NX', 'PX', ARGV[3]) then\n"
        "  return 0\n"
        "end\n"
        "return 1\n";

/* After a send: keep the newest slot. KEYS: last. ARGV: entry, slot. */
static const char done_lua[] =
        "local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')\n"
        "if tonumber(ARGV[2]) > old then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end\n"
        "return 1\n";

/* Undo a claim whose send failed, or give up the lease: delete KEYS[1]
 * when it holds ARGV[1]. */
static const char undo_lua[] =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
        "return 0\n";

struct aiq_beat {
	aiq_config *cfg;
	aiq__schedule sched;
	aiq__tz *tz;
	aiq__coord *coord; /* Redis; NULL with pg, or for one instance with state in the process */
	aiq__beat_pg *pg;  /* PostgreSQL instead of Redis */
	aiq_client *client;
	char id[160];
	char *k_leader, *k_fence, *k_last, *k_sent;
	int64_t lease_ms, catchup_ms;
	int64_t token;           /* the lease's token while leading, else 0 */
	int64_t lease_until;     /* monotonic ms: stop sending after this without a renewal */
	int64_t next_lease_step; /* monotonic ms */
	int wake[2];             /* aiq_beat_stop() writes a byte */
	atomic_bool stop;
	atomic_bool running;
	_Atomic uint64_t sent;
};

static int set_tz(aiq_beat *b, const char *name)
{
	aiq__tz *tz = NULL;
	int rc = aiq__tz_load(&tz, name);
	if (rc != AIQ_OK)
		return rc;
	aiq__tz_free(b->tz);
	b->tz = tz;
	return AIQ_OK;
}

void aiq_beat_free(aiq_beat *b)
{
	if (b == NULL)
		return;
	aiq__schedule_clear(&b->sched);
	aiq__tz_free(b->tz);
	aiq__coord_free(b->coord);
	aiq__beat_pg_free(b->pg);
	aiq_config_free(b->cfg);
	free(b->k_leader);
	free(b->k_fence);
	free(b->k_last);
	free(b->k_sent);
	if (b->wake[0] >= 0)
		close(b->wake[0]);
	if (b->wake[1] >= 0)
		close(b->wake[1]);
	free(b);
}

int aiq_beat_new(aiq_beat **out, const aiq_config *cfg)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_beat_new: out is NULL");
	*out = NULL;
	aiq_beat *b = calloc(1, sizeof *b);
	if (b == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	b->wake[0] = b->wake[1] = -1;
	int rc = cfg ? aiq_config_copy(&b->cfg, cfg) : aiq_config_new(&b->cfg);
	if (rc != AIQ_OK) {
		aiq_beat_free(b);
		return rc;
	}
	const char *name = aiq__cfg_str(b->cfg, AIQ_CFG_BEAT_NAME);
	b->lease_ms = aiq__cfg_int(b->cfg, AIQ_CFG_BEAT_LEASE_MS);
	b->catchup_ms = aiq__cfg_int(b->cfg, AIQ_CFG_BEAT_CATCHUP_S) * 1000;
	b->k_leader = aiq__asprintf("aiq:beat:%s:leader", name);
	b->k_fence = aiq__asprintf("aiq:beat:%s:fence", name);
	b->k_last = aiq__asprintf("aiq:beat:%s:last", name);
	b->k_sent = aiq__asprintf("aiq:beat:%s:sent:", name);
	char host[64] = "localhost", rnd[37];
	gethostname(host, sizeof host - 1);
	aiq__uuid4(rnd);
	snprintf(b->id, sizeof b->id, "%s:%ld:%.8s", host, (long)getpid(), rnd);
	if (!b->k_leader || !b->k_fence || !b->k_last || !b->k_sent) {
		aiq_beat_free(b);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (pipe(b->wake) != 0) {
		b->wake[0] = b->wake[1] = -1;
		aiq_beat_free(b);
		return aiq__err(AIQ_EIO, "pipe: %s", strerror(errno));
	}
	for (int i = 0; i < 2; i++)
		fcntl(b->wake[i], F_SETFL, fcntl(b->wake[i], F_GETFL) | O_NONBLOCK);
	/* beat.url; else a Redis among the result store's and the broker's
	 * URLs; else a PostgreSQL result store. */
	const char *url = aiq__cfg_str(b->cfg, AIQ_CFG_BEAT_URL);
	const char *result = aiq__cfg_str(b->cfg, AIQ_CFG_RESULT_URL);
	if ((rc = set_tz(b, aiq__cfg_str(b->cfg, AIQ_CFG_BEAT_TIMEZONE))) == AIQ_OK)
		rc = aiq__coord_is_postgres(url)
		             ? aiq__beat_pg_open(&b->pg, url, name)
		             : aiq__coord_open(&b->coord, AIQ_CFG_BEAT_URL, b->cfg, AIQ_ESTORE,
		                               AIQ__COORD_REDIS_ONLY);
	if (rc == AIQ_OK && b->coord == NULL && b->pg == NULL && !*url &&
	    aiq__coord_is_postgres(result))
		rc = aiq__beat_pg_open(&b->pg, result, name);
	if (rc != AIQ_OK) {
		aiq_beat_free(b);
		return rc;
	}
	const char *file = aiq__cfg_str(b->cfg, AIQ_CFG_BEAT_SCHEDULE);
	if (*file && (rc = aiq_beat_load_file(b, file)) != AIQ_OK) {
		aiq_beat_free(b);
		return rc;
	}
	*out = b;
	return AIQ_OK;
}

static int not_running(aiq_beat *b, const char *what)
{
	if (b == NULL)
		return aiq__err(AIQ_EINVAL, "%s: the scheduler is NULL", what);
	if (atomic_load(&b->running))
		return aiq__err(AIQ_ESTATE, "%s: the scheduler is running", what);
	return AIQ_OK;
}

int aiq_beat_load_file(aiq_beat *b, const char *path)
{
	int rc = not_running(b, "aiq_beat_load_file");
	if (rc != AIQ_OK)
		return rc;
	if (path == NULL)
		return aiq__err(AIQ_EINVAL, "aiq_beat_load_file: path is NULL");
	size_t n0 = b->sched.n;
	char *tz = NULL;
	if ((rc = aiq__schedule_load_file(&b->sched, path, &tz)) != AIQ_OK)
		return rc;
	if (tz && (rc = set_tz(b, tz)) != AIQ_OK) {
		char *msg = aiq__strdup(aiq_error_last());
		rc = aiq__err(rc, "schedule file %s: %s", path, msg ? msg : "");
		free(msg);
		while (b->sched.n > n0) { /* all or nothing */
			aiq__beat_entry *e = &b->sched.v[--b->sched.n];
			free(e->name), free(e->task), free(e->args_json), free(e->kwargs_json),
			        free(e->queue);
		}
	}
	free(tz);
	return rc;
}

static int add_entry(aiq_beat *b, aiq__beat_spec *e, const char *options_json, const char *what)
{
	int rc = not_running(b, what);
	if (rc != AIQ_OK)
		return rc;
	json_t *o = NULL;
	if (options_json) {
		json_error_t je;
		if ((o = json_loads(options_json, 0, &je)) == NULL)
			return aiq__err(AIQ_EINVAL, "beat entry '%.200s': options: %s",
			                e->name ? e->name : "", je.text);
	}
	rc = aiq__entry_options(e, o, e->name ? e->name : "");
	if (rc == AIQ_OK)
		rc = aiq__schedule_add(&b->sched, e);
	json_decref(o);
	return rc;
}

/* An entry given through the API, before its schedule. */
static aiq__beat_spec api_spec(const char *name, const char *task, const char *args_json,
                               const char *kwargs_json, enum aiq__beat_kind kind)
{
	return (aiq__beat_spec){.name = name,
	                        .task = task,
	                        .args_json = args_json,
	                        .kwargs_json = kwargs_json,
	                        .priority = -1,
	                        .kind = kind};
}

int aiq_beat_add_interval(aiq_beat *b, const char *name, const char *task, const char *args_json,
                          const char *kwargs_json, double interval_s, const char *options_json)
{
	aiq__beat_spec e = api_spec(name, task, args_json, kwargs_json, AIQ__BEAT_INTERVAL);
	if (!(interval_s >= 0.001 && interval_s <= 10.0 * 366 * 86400))
		return aiq__err(AIQ_EINVAL,
		                "beat entry '%.200s': schedule: an interval is 0.001 s to 10 years",
		                name ? name : "");
	e.interval_ms = (int64_t)(interval_s * 1000 + 0.5);
	return add_entry(b, &e, options_json, "aiq_beat_add_interval");
}

int aiq_beat_add_cron(aiq_beat *b, const char *name, const char *task, const char *args_json,
                      const char *kwargs_json, const char *cron_expr, const char *options_json)
{
	aiq__beat_spec e = api_spec(name, task, args_json, kwargs_json, AIQ__BEAT_CRON);
	if (cron_expr == NULL)
		return aiq__err(AIQ_EINVAL, "beat entry '%.200s': schedule: no crontab",
		                name ? name : "");
	int rc = aiq__cron_parse(&e.cron, cron_expr);
	if (rc != AIQ_OK) {
		char *msg = aiq__strdup(aiq_error_last());
		rc = aiq__err(rc, "beat entry '%.200s': schedule: %s", name ? name : "",
		              msg ? msg : "");
		free(msg);
		return rc;
	}
	return add_entry(b, &e, options_json, "aiq_beat_add_cron");
}

int aiq_beat_add_relative(aiq_beat *b, const char *name, const char *task, const char *args_json,
                          const char *kwargs_json, double interval_s, const char *options_json)
{
	aiq__beat_spec e = api_spec(name, task, args_json, kwargs_json, AIQ__BEAT_RELATIVE);
	if (!(interval_s >= 1 && interval_s <= 10.0 * 366 * 86400))
		return aiq__err(AIQ_EINVAL,
		                "beat entry '%.200s': schedule: a relative interval is 1 s to 10 "
		                "years",
		                name ? name : "");
	e.interval_ms = (int64_t)(interval_s * 1000 + 0.5);
	return add_entry(b, &e, options_json, "aiq_beat_add_relative");
}

int aiq_beat_add_solar(aiq_beat *b, const char *name, const char *task, const char *args_json,
                       const char *kwargs_json, const char *event, double lat, double lon,
                       const char *options_json)
{
	aiq__beat_spec e = {.name = name,
	                    .task = task,
	                    .args_json = args_json,
	                    .kwargs_json = kwargs_json,
	                    .priority = -1,
	                    .kind = AIQ__BEAT_SOLAR,
	                    .solar = {.event = aiq__solar_event_of(event), .lat = lat, .lon = lon}};
	if (e.solar.event < 0)
		return aiq__err(
		        AIQ_EINVAL,
		        "beat entry '%.200s': schedule.solar.event: '%.64s' is not one of %s",
		        name ? name : "", event ? event : "(null)", aiq__solar_event_list());
	return add_entry(b, &e, options_json, "aiq_beat_add_solar");
}

size_t aiq_beat_entry_count(const aiq_beat *b)
{
	return b ? b->sched.n : 0;
}

uint64_t aiq_beat_sent_count(const aiq_beat *b)
{
	return b ? atomic_load(&b->sent) : 0;
}

void aiq_beat_stop(aiq_beat *b)
{
	if (b == NULL)
		return;
	atomic_store(&b->stop, true);
	char c = 1;
	ssize_t n = write(b->wake[1], &c, 1); /* full pipe: a wake-up is pending anyway */
	(void)n;
}

/* ---- the run ---------------------------------------------------------------- */

static int redis_int(aiq_beat *b, int64_t *out, int argc, const char **argv)
{
	char *s = NULL;
	int rc = aiq__coord_command(b->coord, &s, out, argc, argv);
	free(s);
	return rc;
}

/* A task id of its own for each slot of each entry: a resend of one slot
 * (a retried publish) carries the same id. */
static void slot_task_id(char out[37], const aiq_beat *b, const aiq__beat_entry *e, int64_t slot)
{
	uint64_t h[2] = {UINT64_C(14695981039346656037), UINT64_C(1099511628211) * 31};
	char buf[64];
	snprintf(buf, sizeof buf, ":%lld", (long long)slot);
	const char *parts[] = {b->k_sent, e->name, buf};
	for (int k = 0; k < 2; k++)
		for (size_t p = 0; p < 3; p++)
			for (const unsigned char *s = (const unsigned char *)parts[p]; *s; s++)
				h[k] = (h[k] ^ (*s + (uint64_t)k * 131)) * UINT64_C(1099511628211);
	h[0] = (h[0] & ~UINT64_C(0xf000)) | UINT64_C(0x5000);       /* version 5 */
	h[1] = (h[1] & ~(UINT64_C(3) << 62)) | (UINT64_C(2) << 62); /* variant */
	snprintf(out, 37, "%08x-%04x-%04x-%04x-%012llx", (unsigned)(h[0] >> 32),
	         (unsigned)(h[0] >> 16 & 0xffff), (unsigned)(h[0] & 0xffff), (unsigned)(h[1] >> 48),
	         (unsigned long long)(h[1] & UINT64_C(0xffffffffffff)));
}

static int publish(aiq_beat *b, const aiq__beat_entry *e, int64_t slot)
{
	aiq_enqueue_opts *o = NULL;
	char id[37];
	slot_task_id(id, b, e, slot);
	int rc = aiq_enqueue_opts_new(&o);
	if (rc == AIQ_OK)
		rc = aiq_enqueue_opts_set_task_id(o, id);
	if (rc == AIQ_OK && e->queue)
		rc = aiq_enqueue_opts_set_queue(o, e->queue);
	if (rc == AIQ_OK && e->expires_ms > 0)
		rc = aiq_enqueue_opts_set_expires_ms(o, e->expires_ms);
	if (rc == AIQ_OK && e->priority >= 0)
		rc = aiq_enqueue_opts_set_priority(o, e->priority);
	if (rc == AIQ_OK)
		rc = aiq_client_enqueue(NULL, b->client, e->task, e->args_json, e->kwargs_json, o);
	aiq_enqueue_opts_free(o);
	if (rc == AIQ_OK) {
		atomic_fetch_add(&b->sent, 1);
		aiq__log(AIQ_LOG_INFO, "beat: sent '%s' (%s) slot %lld as %s", e->name, e->task,
		         (long long)slot, id);
	} else {
		aiq__log(AIQ_LOG_WARNING, "beat: sending '%s' slot %lld failed, retrying: %s",
		         e->name, (long long)slot, aiq_error_last());
	}
	return rc;
}

/* 1 sent (or sent already by someone), 0 failed (retry later), -1 the lease
 * is lost. */
static int dispatch(aiq_beat *b, aiq__beat_entry *e, int64_t slot)
{
	if (b->coord == NULL && b->pg == NULL)
		return publish(b, e, slot) == AIQ_OK ? 1 : 0;
	char *key = aiq__asprintf("%s%s:%lld", b->k_sent, e->name, (long long)slot);
	char tok[32], ttl[32], holder[200], slot_s[32];
	snprintf(tok, sizeof tok, "%lld", (long long)b->token);
	snprintf(ttl, sizeof ttl, "%lld",
	         (long long)b->catchup_ms + 2 * (long long)b->lease_ms + 60000);
	snprintf(holder, sizeof holder, "%s %s", b->id, tok);
	snprintf(slot_s, sizeof slot_s, "%lld", (long long)slot);
	if (key == NULL)
		return 0;
	const char *claim[] = {"EVAL", claim_lua, "3", b->k_leader, b->k_fence,
	                       key,    b->id,     tok, ttl};
	int64_t r = 0;
	int claimed = 0, rc;
	if (b->pg) {
		rc = aiq__beat_pg_claim(b->pg, &claimed, b->id, b->token, e->name, slot);
		r = claimed;
	} else {
		rc = redis_int(b, &r, 9, claim);
	}
	int out = 0;
	if (rc != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "beat: claiming '%s' slot %lld: %s", e->name,
		         (long long)slot, aiq_error_last());
	} else if (r < 0) {
		out = -1;
	} else if (r == 0) {
		aiq__log(AIQ_LOG_INFO, "beat: '%s' slot %lld was sent already", e->name,
		         (long long)slot);
		out = 1;
	} else if (publish(b, e, slot) == AIQ_OK) {
		const char *done[] = {"EVAL", done_lua, "1", b->k_last, e->name, slot_s};
		if ((b->pg ? aiq__beat_pg_done(b->pg, e->name, slot,
		                               b->catchup_ms + 2 * b->lease_ms + 60000)
		           : redis_int(b, &r, 6, done)) != AIQ_OK)
			aiq__log(AIQ_LOG_WARNING, "beat: recording '%s' slot %lld: %s", e->name,
			         (long long)slot, aiq_error_last());
		out = 1;
	} else {
		const char *undo[] = {"EVAL", undo_lua, "1", key, holder};
		if (b->pg)
			aiq__beat_pg_undo(b->pg, e->name, slot, holder);
		else
			redis_int(b, &r, 5, undo);
	}
	free(key);
	return out;
}

/* Plan every entry from its last slot sent (Redis) or from now. */
static void plan(aiq_beat *b, int64_t now)
{
	for (size_t i = 0; i < b->sched.n; i++) {
		aiq__beat_entry *e = &b->sched.v[i];
		int64_t last = 0;
		if (b->pg) {
			aiq__beat_pg_last(b->pg, &last, e->name);
		} else if (b->coord) {
			char *s = NULL;
			int64_t n = 0;
			const char *argv[] = {"HGET", b->k_last, e->name};
			if (aiq__coord_command(b->coord, &s, &n, 3, argv) == AIQ_OK && s)
				last = strtoll(s, NULL, 10);
			free(s);
		}
		e->next_ms = aiq__entry_next_ms(e, b->tz, last > 0 ? last : now);
	}
}

/* Send the due slots of every entry; false when the lease was lost. */
static bool run_due(aiq_beat *b, int64_t now)
{
	for (size_t i = 0; i < b->sched.n; i++) {
		aiq__beat_entry *e = &b->sched.v[i];
		uint64_t skipped = 0;
		int64_t first_skipped = 0;
		if (e->kind == AIQ__BEAT_INTERVAL && now - e->next_ms > b->catchup_ms) {
			/* A long downtime: skip the old slots in one step. */
			int64_t n = (now - b->catchup_ms - e->next_ms) / e->interval_ms;
			skipped = (uint64_t)n;
			first_skipped = e->next_ms;
			e->next_ms += n * e->interval_ms;
		} else if (e->kind == AIQ__BEAT_RELATIVE && now - e->next_ms > b->catchup_ms) {
			/* The same for a relative entry, whose slots are wall-clock
			 * times: the count is the real time over the step. */
			int64_t from = now - b->catchup_ms - 1;
			skipped = (uint64_t)((from - e->next_ms) / e->step_ms) + 1;
			first_skipped = e->next_ms;
			e->next_ms = aiq__entry_next_ms(e, b->tz, from);
		}
		while (e->next_ms <= now && !atomic_load(&b->stop)) {
			if (now - e->next_ms > b->catchup_ms) {
				if (skipped++ == 0 && first_skipped == 0)
					first_skipped = e->next_ms;
				e->next_ms = aiq__entry_next_ms(e, b->tz, e->next_ms);
				continue;
			}
			int r = dispatch(b, e, e->next_ms);
			if (r < 0)
				return false;
			if (r == 0)
				break; /* the broker failed: this slot again at the next tick */
			e->next_ms = aiq__entry_next_ms(e, b->tz, e->next_ms);
		}
		if (skipped)
			aiq__log(
			        AIQ_LOG_WARNING,
			        "beat: '%s': skipped %llu missed slot(s) from %lld, older than the "
			        "catch-up window (%lld s)",
			        e->name, (unsigned long long)skipped, (long long)first_skipped,
			        (long long)(b->catchup_ms / 1000));
	}
	return true;
}

/* Take or renew the lease: true while this instance leads. */
static bool lease_step(aiq_beat *b, int64_t now, int64_t mono)
{
	char ttl[32];
	snprintf(ttl, sizeof ttl, "%lld", (long long)b->lease_ms);
	const char *argv[] = {"EVAL", acquire_lua, "2", b->k_leader, b->k_fence, b->id, ttl};
	int64_t tok = 0;
	if ((b->pg ? aiq__beat_pg_lease(b->pg, &tok, b->id, b->lease_ms)
	           : redis_int(b, &tok, 7, argv)) != AIQ_OK) {
		aiq__log(AIQ_LOG_WARNING, "beat: lease: %s", aiq_error_last());
		return b->token != 0 && mono < b->lease_until;
	}
	if (tok <= 0) {
		if (b->token)
			aiq__log(AIQ_LOG_WARNING, "beat: %s lost the leader lease", b->id);
		b->token = 0;
		return false;
	}
	/* Lease time counts from before the call: the server's TTL began later. */
	b->lease_until = mono + b->lease_ms;
	if (tok != b->token) {
		b->token = tok;
		plan(b, now);
		aiq__log(AIQ_LOG_INFO, "beat: %s is the leader (token %lld)", b->id,
		         (long long)tok);
	}
	return true;
}

int aiq_beat_run(aiq_beat *b)
{
	int rc = not_running(b, "aiq_beat_run");
	if (rc != AIQ_OK)
		return rc;
	if (b->sched.n == 0)
		return aiq__err(AIQ_EINVAL, "aiq_beat_run: the schedule has no entries");
	bool f = false;
	if (!atomic_compare_exchange_strong(&b->running, &f, true))
		return aiq__err(AIQ_ESTATE, "aiq_beat_run: the scheduler is running");
	if ((rc = aiq_client_new(&b->client, b->cfg)) != AIQ_OK) {
		atomic_store(&b->running, false);
		return rc;
	}
	aiq__log(AIQ_LOG_INFO, "beat: %zu entr%s, timezone %s, %s", b->sched.n,
	         b->sched.n == 1 ? "y" : "ies", aiq__tz_name(b->tz),
	         b->coord ? "lease and state in Redis (several instances may run)"
	         : b->pg  ? "lease and state in PostgreSQL (several instances may run)"
	                 : "no Redis or PostgreSQL: one instance only, state kept in this process");
	bool leading = false, shared = b->coord || b->pg;
	if (!shared) {
		plan(b, aiq__now_ms());
		leading = true;
	}
	b->next_lease_step = 0;
	while (!atomic_load(&b->stop)) {
		int64_t now = aiq__now_ms(), mono = aiq__mono_ms();
		if (shared && mono >= b->next_lease_step) {
			leading = lease_step(b, now, mono);
			b->next_lease_step = mono + b->lease_ms / 3;
		}
		if (shared && leading && mono >= b->lease_until)
			leading = false; /* no renewal in time: someone else may lead */
		if (leading && !run_due(b, now)) {
			aiq__log(AIQ_LOG_WARNING, "beat: %s lost the leader lease", b->id);
			leading = false;
			b->token = 0;
		}
		int64_t wake = shared ? b->next_lease_step - mono : 1000;
		if (leading)
			for (size_t i = 0; i < b->sched.n; i++)
				if (b->sched.v[i].next_ms - now < wake)
					wake = b->sched.v[i].next_ms - now;
		if (wake < 5)
			wake = 5;
		if (wake > 1000)
			wake = 1000;
		struct pollfd p = {.fd = b->wake[0], .events = POLLIN};
		poll(&p, 1, (int)wake);
	}
	char buf[16];
	while (read(b->wake[0], buf, sizeof buf) > 0) {
	}
	if (shared && b->token) { /* hand over at once */
		char tok[200];
		snprintf(tok, sizeof tok, "%s %lld", b->id, (long long)b->token);
		const char *argv[] = {"EVAL", undo_lua, "1", b->k_leader, tok};
		int64_t r;
		if (b->pg)
			aiq__beat_pg_release(b->pg, b->id, b->token);
		else
			redis_int(b, &r, 5, argv);
		b->token = 0;
	}
	aiq_client_free(b->client);
	b->client = NULL;
	atomic_store(&b->stop, false);
	atomic_store(&b->running, false);
	return AIQ_OK;
}
