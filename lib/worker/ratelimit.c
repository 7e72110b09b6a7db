/*
 * Rate limits shared by every worker: the rules of worker.rate_limits,
 * their token buckets (in Redis or PostgreSQL through coord.h, or in this worker's
 * memory) and the remote control that replaces a rule (ratelimit.h).
 */
#include "ratelimit.h"

#include "config_int.h"
#include "coord.h"

#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RULES       256
#define KEY_PREFIX      "aiq:ratelimit:"
#define CONC_KEY_PREFIX "aiq:concurrency:"
#define MAX_CONCURRENCY 100000

enum key_kind { KEY_NONE, KEY_KWARG, KEY_HEADER, KEY_ARG };

struct rule {
	char *pattern;
	double rate; /* tokens per second */
	double burst;
	double cost;
	enum key_kind key_kind;
	char *key_name;   /* kwarg or header name */
	size_t key_arg;   /* positional index */
	char *charge;     /* dotted path in the stored result, or NULL */
	long concurrency; /* at most this many running per key; 0: no limit */
};

/* A bucket in this worker's memory, when no shared store keeps them. */
struct local_bucket {
	char *key;
	double tokens;
	int64_t ts_us; /* monotonic */
};

/* Running tasks per concurrency key, when no shared store keeps the leases. */
struct local_slots {
	char *key;
	long running;
};

struct aiq__ratelimit {
	pthread_mutex_t lock; /* rules, local buckets and local slots */
	struct rule *rules;
	size_t nrules;
	aiq__coord *coord; /* NULL: local buckets and slots */
	struct local_bucket *local;
	size_t nlocal;
	struct local_slots *slots;
	size_t nslots;
};

static void rule_clear(struct rule *r)
{
	free(r->pattern);
	free(r->key_name);
	free(r->charge);
	memset(r, 0, sizeof *r);
}

static bool parse_number(double *out, const char *s, size_t len)
{
	char buf[64];
	if (len == 0 || len >= sizeof buf)
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	char *end = NULL;
	errno = 0;
	double v = strtod(buf, &end);
	if (errno || end != buf + len || !isfinite(v) || v <= 0)
		return false;
	*out = v;
	return true;
}

int aiq__rate_parse(double *per_s, const char *text, size_t len)
{
	*per_s = 0;
	const char *slash = memchr(text, '/', len);
	size_t nlen = slash ? (size_t)(slash - text) : len;
	double n;
	if (!parse_number(&n, text, nlen))
		return aiq__err(AIQ_EINVAL,
		                "rate '%.*s': expected a positive number of tasks, then /s, /m or "
		                "/h (Celery's rate_limit: 10/s, 100/m, 5/h; a plain number is per "
		                "second)",
		                (int)(len > 60 ? 60 : len), text);
	double per = 1;
	if (slash) {
		size_t ulen = len - nlen - 1;
		int u = ulen == 1 ? (unsigned char)slash[1] : 0;
		if (u == 's')
			per = 1;
		else if (u == 'm')
			per = 60;
		else if (u == 'h')
			per = 3600;
		else
			return aiq__err(AIQ_EINVAL, "rate '%.*s': unknown unit '%.*s' (s, m or h)",
			                (int)(len > 60 ? 60 : len), text,
			                (int)(ulen > 20 ? 20 : ulen), slash + 1);
	}
	*per_s = n / per;
	return AIQ_OK;
}

static char *dup_len(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

/* One option `name=value` of a rule. */
static int rule_option(struct rule *r, const char *o, size_t len, int idx)
{
	const char *eq = memchr(o, '=', len);
	if (eq == NULL)
		return aiq__err(AIQ_EINVAL,
		                "worker.rate_limits rule %d: option '%.*s' is not name=value", idx,
		                (int)(len > 60 ? 60 : len), o);
	size_t nlen = (size_t)(eq - o), vlen = len - nlen - 1;
	const char *v = eq + 1;
#define IS(s) (nlen == sizeof(s) - 1 && memcmp(o, s, nlen) == 0)
	if (IS("burst") || IS("cost")) {
		double x;
		if (!parse_number(&x, v, vlen))
			return aiq__err(
			        AIQ_EINVAL,
			        "worker.rate_limits rule %d: %.*s must be a positive number", idx,
			        (int)nlen, o);
		*(IS("burst") ? &r->burst : &r->cost) = x;
		return AIQ_OK;
	}
	if (IS("concurrency")) {
		char buf[16];
		char *endp = NULL;
		long n = -1;
		if (vlen > 0 && vlen < sizeof buf && strspn(v, "0123456789") >= vlen) {
			memcpy(buf, v, vlen);
			buf[vlen] = '\0';
			n = strtol(buf, &endp, 10);
		}
		if (n < 1 || n > MAX_CONCURRENCY)
			return aiq__err(
			        AIQ_EINVAL,
			        "worker.rate_limits rule %d: concurrency must be an integer "
			        "from 1 to %d, got '%.*s'",
			        idx, MAX_CONCURRENCY, (int)(vlen > 20 ? 20 : vlen), v);
		r->concurrency = n;
		return AIQ_OK;
	}
	if (IS("charge")) {
		if (vlen == 0)
			return aiq__err(AIQ_EINVAL,
			                "worker.rate_limits rule %d: charge needs a path", idx);
		free(r->charge);
		return (r->charge = dup_len(v, vlen)) ? AIQ_OK
		                                      : aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (IS("key")) {
		const char *colon = memchr(v, ':', vlen);
		size_t klen = colon ? (size_t)(colon - v) : 0, alen = colon ? vlen - klen - 1 : 0;
		const char *a = colon ? colon + 1 : "";
		if (colon && klen == 5 && memcmp(v, "kwarg", 5) == 0 && alen > 0)
			r->key_kind = KEY_KWARG;
		else if (colon && klen == 6 && memcmp(v, "header", 6) == 0 && alen > 0)
			r->key_kind = KEY_HEADER;
		else if (colon && klen == 3 && memcmp(v, "arg", 3) == 0 && alen > 0 && alen < 6 &&
		         strspn(a, "0123456789") >= alen) {
			r->key_kind = KEY_ARG;
			r->key_arg = (size_t)strtoul(a, NULL, 10);
			return AIQ_OK;
		} else
			return aiq__err(
			        AIQ_EINVAL,
			        "worker.rate_limits rule %d: key must be kwarg:NAME, header:NAME "
			        "or arg:N, got '%.*s'",
			        idx, (int)(vlen > 60 ? 60 : vlen), v);
		free(r->key_name);
		return (r->key_name = dup_len(a, alen)) ? AIQ_OK
		                                        : aiq__err(AIQ_ENOMEM, "out of memory");
	}
#undef IS
	return aiq__err(AIQ_EINVAL,
	                "worker.rate_limits rule %d: unknown option '%.*s' (key, burst, cost, "
	                "charge, concurrency)",
	                idx, (int)(nlen > 40 ? 40 : nlen), o);
}

/* PATTERN=RATE[,option...] or PATTERN=option[,option...] (no rate: the
 * rule limits concurrency only) */
static int parse_rule(struct rule *r, const char *s, size_t len, int idx)
{
	memset(r, 0, sizeof *r);
	r->burst = 1;
	r->cost = 1;
	const char *eq = memchr(s, '=', len);
	if (eq == NULL || eq == s)
		return aiq__err(AIQ_EINVAL, "worker.rate_limits rule %d '%.*s': expected TASK=RATE",
		                idx, (int)(len > 60 ? 60 : len), s);
	if ((r->pattern = dup_len(s, (size_t)(eq - s))) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	const char *p = eq + 1, *end = s + len;
	const char *comma = memchr(p, ',', (size_t)(end - p));
	const char *rend = comma ? comma : end;
	int rc = AIQ_OK;
	if (memchr(p, '=', (size_t)(rend - p)) == NULL) {
		rc = aiq__rate_parse(&r->rate, p, (size_t)(rend - p));
		if (rc != AIQ_OK)
			return aiq__err(rc, "worker.rate_limits rule %d (%s): %s", idx, r->pattern,
			                aiq_error_last());
	} else {
		comma = p - 1; /* the first item is an option */
	}
	while (comma && rc == AIQ_OK) {
		p = comma + 1;
		comma = memchr(p, ',', (size_t)(end - p));
		rc = rule_option(r, p, (size_t)((comma ? comma : end) - p), idx);
	}
	if (rc == AIQ_OK && r->rate == 0 && r->concurrency == 0)
		rc = aiq__err(AIQ_EINVAL,
		              "worker.rate_limits rule %d (%s): give a rate, a concurrency or both",
		              idx, r->pattern);
	return rc;
}

static int parse_rules(struct rule **out, size_t *n, const char *spec)
{
	*out = NULL;
	*n = 0;
	struct rule *rules = NULL;
	size_t count = 0;
	int rc = AIQ_OK;
	const char *p = spec;
	while (rc == AIQ_OK && *p) {
		const char *semi = strchr(p, ';');
		size_t len = semi ? (size_t)(semi - p) : strlen(p);
		while (len > 0 && (*p == ' ' || *p == '\t'))
			p++, len--;
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len > 0) {
			struct rule *grown = count < MAX_RULES
			                             ? realloc(rules, (count + 1) * sizeof *rules)
			                             : NULL;
			if (grown == NULL) {
				rc = count < MAX_RULES
				             ? aiq__err(AIQ_ENOMEM, "out of memory")
				             : aiq__err(AIQ_EINVAL,
				                        "worker.rate_limits: over %d rules",
				                        MAX_RULES);
				break;
			}
			rules = grown;
			rc = parse_rule(&rules[count], p, len, (int)count + 1);
			count++;
		}
		p = semi ? semi + 1 : p + len;
	}
	if (rc != AIQ_OK) {
		for (size_t i = 0; i < count; i++)
			rule_clear(&rules[i]);
		free(rules);
		return rc;
	}
	*out = rules;
	*n = count;
	return AIQ_OK;
}

int aiq__ratelimit_new(aiq__ratelimit **out, const aiq_config *cfg)
{
	*out = NULL;
	aiq__ratelimit *r = calloc(1, sizeof *r);
	if (r == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	pthread_mutex_init(&r->lock, NULL);
	int rc = parse_rules(&r->rules, &r->nrules, aiq__cfg_str(cfg, AIQ_CFG_WORKER_RATE_LIMITS));
	if (rc == AIQ_OK)
		rc = aiq__coord_open(&r->coord, AIQ_CFG_WORKER_RATE_LIMIT_URL, cfg, AIQ_ESTORE,
		                     AIQ__COORD_ANY);
	if (rc != AIQ_OK) {
		aiq__ratelimit_free(r);
		return rc;
	}
	*out = r;
	return AIQ_OK;
}

void aiq__ratelimit_free(aiq__ratelimit *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->nrules; i++)
		rule_clear(&r->rules[i]);
	free(r->rules);
	for (size_t i = 0; i < r->nlocal; i++)
		free(r->local[i].key);
	free(r->local);
	for (size_t i = 0; i < r->nslots; i++)
		free(r->slots[i].key);
	free(r->slots);
	aiq__coord_free(r->coord);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* The task's key value as text (malloc), "" when the task has none. */
static char *key_value(const struct rule *rl, const aiq__message *m)
{
	const json_t *v = NULL;
	if (rl->key_kind == KEY_KWARG)
		v = json_object_get(m->kwargs, rl->key_name);
	else if (rl->key_kind == KEY_HEADER)
		v = json_object_get(m->extra_headers, rl->key_name);
	else if (rl->key_kind == KEY_ARG)
		v = json_array_get(m->args, rl->key_arg);
	if (v == NULL)
		return aiq__strdup("");
	if (json_is_string(v))
		return aiq__strdup(json_string_value(v));
	return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
}

/* What a task's rule says, copied out under the lock. */
struct found {
	char *bucket; /* the bucket's key */
	double rate, burst, cost;
	char *charge;
	long concurrency;
};

/* PREFIX PATTERN[#KEY VALUE] */
static char *rule_key(const char *prefix, const struct rule *rl, const aiq__message *m)
{
	char *kv = rl->key_kind == KEY_NONE ? NULL : key_value(rl, m);
	size_t n = strlen(prefix) + strlen(rl->pattern) + (kv ? strlen(kv) + 1 : 0) + 1;
	char *key = malloc(n);
	if (key)
		snprintf(key, n, "%s%s%s%s", prefix, rl->pattern, kv ? "#" : "", kv ? kv : "");
	free(kv);
	return key;
}

static bool find(struct found *f, aiq__ratelimit *r, const aiq__message *m, bool want_charge)
{
	memset(f, 0, sizeof *f);
	bool hit = false;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrules && !hit; i++) {
		const struct rule *rl = &r->rules[i];
		if (fnmatch(rl->pattern, m->task ? m->task : "", 0) != 0)
			continue;
		hit = true;
		if ((want_charge && rl->charge == NULL) || rl->rate == 0)
			break; /* no bucket */
		f->bucket = rule_key(KEY_PREFIX, rl, m);
		f->rate = rl->rate;
		f->burst = rl->burst;
		f->cost = rl->cost;
		if (want_charge)
			f->charge = aiq__strdup(rl->charge);
	}
	pthread_mutex_unlock(&r->lock);
	return f->bucket != NULL;
}

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The bucket algorithm of ratelimit.lua, in memory. */
static int local_take(aiq__ratelimit *r, int64_t *wait_us, const struct found *f, double cost)
{
	pthread_mutex_lock(&r->lock);
	struct local_bucket *b = NULL;
	for (size_t i = 0; i < r->nlocal && !b; i++)
		if (strcmp(r->local[i].key, f->bucket) == 0)
			b = &r->local[i];
	int64_t now = mono_us();
	if (b == NULL) {
		struct local_bucket *grown = realloc(r->local, (r->nlocal + 1) * sizeof *grown);
		char *key = aiq__strdup(f->bucket);
		if (grown == NULL || key == NULL) {
			if (grown)
				r->local = grown;
			free(key);
			pthread_mutex_unlock(&r->lock);
			return aiq__err(AIQ_ENOMEM, "out of memory");
		}
		r->local = grown;
		b = &r->local[r->nlocal++];
		*b = (struct local_bucket){.key = key, .tokens = f->burst, .ts_us = now};
	}
	if (now > b->ts_us) {
		b->tokens += (double)(now - b->ts_us) * f->rate / 1e6;
		b->ts_us = now;
	}
	if (b->tokens > f->burst)
		b->tokens = f->burst;
	b->tokens -= cost;
	*wait_us = b->tokens < 0 ? (int64_t)ceil(-b->tokens * 1e6 / f->rate) : 0;
	pthread_mutex_unlock(&r->lock);
	return AIQ_OK;
}

static int take(aiq__ratelimit *r, int64_t *wait_us, const struct found *f, double cost)
{
	if (r->coord == NULL)
		return local_take(r, wait_us, f, cost);
	double left;
	return aiq__coord_bucket(r->coord, wait_us, &left, f->bucket, f->rate, f->burst, cost,
	                         true);
}

int aiq__ratelimit_reserve(int64_t *wait_ms, aiq__ratelimit *r, const aiq__message *m)
{
	*wait_ms = 0;
	struct found f;
	if (r == NULL || !find(&f, r, m, false))
		return AIQ_OK;
	int64_t wait_us = 0;
	int rc = take(r, &wait_us, &f, f.cost);
	free(f.bucket);
	*wait_ms = (wait_us + 999) / 1000;
	return rc;
}

bool aiq__ratelimit_redeem(aiq__message *m, int64_t now)
{
	json_t *v = json_object_get(m->extra_headers, AIQ__RATE_SLOT_HEADER);
	if (v == NULL)
		return false;
	bool mine = json_is_integer(v) && now <= json_integer_value(v) + AIQ__RATE_SLOT_GRACE_MS;
	json_object_del(m->extra_headers, AIQ__RATE_SLOT_HEADER);
	return mine;
}

int aiq__ratelimit_mark(json_t *headers, aiq__message *m, int64_t turn)
{
	if (headers == NULL) {
		if (m->extra_headers == NULL && (m->extra_headers = json_object()) == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		headers = m->extra_headers;
	}
	if (json_object_set_new(headers, AIQ__RATE_SLOT_HEADER, json_integer((json_int_t)turn)))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

/* The integer at a dotted path of the result, or -1. */
static int64_t at_path(const char *result_json, const char *path)
{
	json_t *root = json_loads(result_json ? result_json : "null", JSON_DECODE_ANY, NULL);
	const json_t *v = root;
	const char *p = path;
	while (v && *p) {
		const char *dot = strchr(p, '.');
		size_t n = dot ? (size_t)(dot - p) : strlen(p);
		char name[256];
		if (n >= sizeof name) {
			v = NULL;
			break;
		}
		memcpy(name, p, n);
		name[n] = '\0';
		v = json_object_get(v, name);
		p = dot ? dot + 1 : p + n;
	}
	int64_t out = json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
	json_decref(root);
	return out;
}

void aiq__ratelimit_charge(aiq__ratelimit *r, const aiq__message *m, const char *result_json)
{
	struct found f;
	if (r == NULL || !find(&f, r, m, true))
		return;
	int64_t used = f.charge ? at_path(result_json, f.charge) : -1;
	if ((double)used > f.cost) {
		int64_t wait_us;
		if (take(r, &wait_us, &f, (double)used - f.cost) != AIQ_OK)
			aiq__log(AIQ_LOG_WARNING,
			         "rate limit: charging task %s's %lld tokens failed: %s",
			         m->id ? m->id : "?", (long long)used, aiq_error_last());
	}
	free(f.bucket);
	free(f.charge);
}

int aiq__ratelimit_set(aiq__ratelimit *r, const char *task_name, const char *rate)
{
	if (r == NULL || task_name == NULL || *task_name == '\0')
		return aiq__err(AIQ_EINVAL, "no task name");
	bool off = rate == NULL || *rate == '\0' || strcmp(rate, "0") == 0;
	struct rule nr = {0};
	if (!off) {
		nr.burst = 1;
		nr.cost = 1;
		int rc = aiq__rate_parse(&nr.rate, rate, strlen(rate));
		if (rc != AIQ_OK)
			return rc;
		if ((nr.pattern = aiq__strdup(task_name)) == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	pthread_mutex_lock(&r->lock);
	size_t i = 0;
	while (i < r->nrules && strcmp(r->rules[i].pattern, task_name) != 0)
		i++;
	int rc = AIQ_OK;
	if (i < r->nrules) {
		/* Keep the rule's options (key, burst, cost, charge): only its rate changes. */
		if (off && r->rules[i].concurrency > 0) {
			r->rules[i].rate = 0; /* its concurrency limit stays */
		} else if (off) {
			rule_clear(&r->rules[i]);
			memmove(&r->rules[i], &r->rules[i + 1],
			        (r->nrules - i - 1) * sizeof *r->rules);
			r->nrules--;
		} else {
			r->rules[i].rate = nr.rate;
		}
		rule_clear(&nr);
	} else if (!off) {
		struct rule *grown = r->nrules < MAX_RULES
		                             ? realloc(r->rules, (r->nrules + 1) * sizeof *grown)
		                             : NULL;
		if (grown == NULL) {
			rule_clear(&nr);
			rc = aiq__err(AIQ_ENOMEM, "cannot add a rate limit rule");
		} else {
			/* First: the exact name wins over the configured globs. */
			r->rules = grown;
			memmove(&r->rules[1], &r->rules[0], r->nrules * sizeof *r->rules);
			r->rules[0] = nr;
			r->nrules++;
		}
	}
	pthread_mutex_unlock(&r->lock);
	return rc;
}

/* ---- concurrency: at most N running at once per key ------------------- */

/*
 * Shared (coord.h), a slot is a lease under the rule's key held by one
 * acquisition: "<task id>/<random>", so that a task running twice at once
 * (a retry republished while the first run finishes, a redelivery after a
 * lost connection) holds two slots, and giving one back never frees the
 * other's. In the process, a count per key.
 */
static struct local_slots *local_slots_find(aiq__ratelimit *r, const char *key, bool add)
{
	for (size_t i = 0; i < r->nslots; i++)
		if (strcmp(r->slots[i].key, key) == 0)
			return &r->slots[i];
	if (!add)
		return NULL;
	struct local_slots *grown = realloc(r->slots, (r->nslots + 1) * sizeof *grown);
	char *k = aiq__strdup(key);
	if (grown)
		r->slots = grown;
	if (grown == NULL || k == NULL) {
		free(k);
		return NULL;
	}
	r->slots[r->nslots] = (struct local_slots){.key = k};
	return &r->slots[r->nslots++];
}

int aiq__ratelimit_acquire(aiq__ratelimit_slot **slot, bool *full, aiq__ratelimit *r,
                           const aiq__message *m)
{
	*slot = NULL;
	*full = false;
	if (r == NULL)
		return AIQ_OK;
	long limit = 0;
	char *key = NULL;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrules; i++) {
		const struct rule *rl = &r->rules[i];
		if (fnmatch(rl->pattern, m->task ? m->task : "", 0) != 0)
			continue;
		if (rl->concurrency > 0) {
			limit = rl->concurrency;
			key = rule_key(CONC_KEY_PREFIX, rl, m);
		}
		break; /* the first rule that matches applies */
	}
	pthread_mutex_unlock(&r->lock);
	if (limit == 0)
		return AIQ_OK;
	aiq__ratelimit_slot *sl = calloc(1, sizeof *sl);
	char *member = NULL;
	if (key && sl) {
		char nonce[37];
		aiq__uuid4(nonce);
		size_t len = strlen(m->id ? m->id : "") + 1 + 12 + 1;
		if ((member = malloc(len)) != NULL)
			snprintf(member, len, "%s/%.12s", m->id ? m->id : "", nonce + 24);
	}
	if (key == NULL || sl == NULL || member == NULL) {
		free(key);
		free(sl);
		free(member);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	int rc = AIQ_OK;
	bool got = false;
	if (r->coord) {
		rc = aiq__coord_lease_take(r->coord, &got, key, member, limit,
		                           AIQ__CONCURRENCY_LEASE_MS);
	} else {
		pthread_mutex_lock(&r->lock);
		struct local_slots *ls = local_slots_find(r, key, true);
		if (ls == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		else if ((got = ls->running < limit))
			ls->running++;
		pthread_mutex_unlock(&r->lock);
	}
	if (rc != AIQ_OK || !got) {
		free(key);
		free(member);
		free(sl);
		*full = rc == AIQ_OK;
		return rc;
	}
	sl->key = key;
	sl->member = member;
	*slot = sl;
	return AIQ_OK;
}

void aiq__ratelimit_release(aiq__ratelimit *r, aiq__ratelimit_slot *slot)
{
	if (slot == NULL)
		return;
	if (r && r->coord) {
		if (aiq__coord_lease_drop(r->coord, slot->key, slot->member) != AIQ_OK)
			aiq__log(AIQ_LOG_WARNING,
			         "concurrency: giving back slot %s of %s failed (%s); its lease "
			         "ends "
			         "within %d s",
			         slot->member, slot->key, aiq_error_last(),
			         AIQ__CONCURRENCY_LEASE_MS / 1000);
	} else if (r) {
		pthread_mutex_lock(&r->lock);
		struct local_slots *ls = local_slots_find(r, slot->key, false);
		if (ls && ls->running > 0)
			ls->running--;
		pthread_mutex_unlock(&r->lock);
	}
	aiq__ratelimit_slot_free(slot);
}

void aiq__ratelimit_slot_free(aiq__ratelimit_slot *slot)
{
	if (slot == NULL)
		return;
	free(slot->key);
	free(slot->member);
	free(slot);
}

int aiq__ratelimit_slot_copy(aiq__ratelimit_slot **out, const aiq__ratelimit_slot *slot)
{
	*out = NULL;
	aiq__ratelimit_slot *c = calloc(1, sizeof *c);
	if (c == NULL || !(c->key = aiq__strdup(slot->key)) ||
	    !(c->member = aiq__strdup(slot->member))) {
		aiq__ratelimit_slot_free(c);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	*out = c;
	return AIQ_OK;
}

void aiq__ratelimit_renew(aiq__ratelimit *r, const aiq__ratelimit_slot *slot)
{
	if (r == NULL || slot == NULL || r->coord == NULL)
		return;
	if (aiq__coord_lease_renew(r->coord, slot->key, slot->member, AIQ__CONCURRENCY_LEASE_MS) !=
	    AIQ_OK)
		aiq__log(AIQ_LOG_WARNING, "concurrency: renewing slot %s of %s failed: %s",
		         slot->member, slot->key, aiq_error_last());
}
