/*
 * Signatures (Celery canvas) to task messages: what Celery's
 * Signature.apply_async() builds, for the worker's links and chains and for
 * the client's workflow calls. See canvas_int.h for the JSON shapes.
 */
#include "canvas_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAME 255 /* AMQP shortstr: task names and ids */

void aiq__sig_send_clear(aiq__sig_send *s)
{
	if (s == NULL)
		return;
	aiq__message_clear(&s->msg);
	free(s->queue);
	s->queue = NULL;
	s->not_before_ms = 0;
}

static bool printable(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max || !aiq__utf8_valid(s, n))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

static bool absent(const json_t *v)
{
	return v == NULL || json_is_null(v);
}

int aiq__signature_check(const json_t *sig)
{
	if (!json_is_object(sig))
		return aiq__err(AIQ_EINVAL, "a signature must be a JSON object, got %s",
		                aiq__json_type_name(sig));
	const json_t *task = json_object_get(sig, "task");
	if (!json_is_string(task) || !printable(json_string_value(task), MAX_NAME))
		return aiq__err(AIQ_EINVAL,
		                "a signature needs \"task\": 1-%d bytes of printable UTF-8",
		                MAX_NAME);
	const char *name = json_string_value(task);
	const json_t *args = json_object_get(sig, "args");
	const json_t *kwargs = json_object_get(sig, "kwargs");
	const json_t *options = json_object_get(sig, "options");
	const json_t *type = json_object_get(sig, "subtask_type");
	const json_t *immutable = json_object_get(sig, "immutable");
	if (!absent(args) && !json_is_array(args))
		return aiq__err(AIQ_EINVAL, "signature %s: \"args\" must be an array, got %s", name,
		                aiq__json_type_name(args));
	if (!absent(kwargs) && !json_is_object(kwargs))
		return aiq__err(AIQ_EINVAL, "signature %s: \"kwargs\" must be an object, got %s",
		                name, aiq__json_type_name(kwargs));
	if (!absent(options) && !json_is_object(options))
		return aiq__err(AIQ_EINVAL, "signature %s: \"options\" must be an object, got %s",
		                name, aiq__json_type_name(options));
	if (!absent(type))
		return aiq__err(AIQ_EINVAL,
		                "signature %s: subtask_type %s is not supported here (only "
		                "plain task signatures are applied)",
		                name, json_is_string(type) ? json_string_value(type) : "?");
	if (!absent(immutable) && !json_is_boolean(immutable))
		return aiq__err(AIQ_EINVAL, "signature %s: \"immutable\" must be a boolean, got %s",
		                name, aiq__json_type_name(immutable));
	return AIQ_OK;
}

json_t *aiq__signature_object(const char *task)
{
	return json_pack("{s:s, s:[], s:{}, s:{}, s:n, s:b}", "task", task, "args", "kwargs",
	                 "options", "subtask_type", "immutable", 0);
}

/* A string option, copied into *dst (NULL when absent). */
static int opt_string(char **dst, const json_t *options, const char *key, const char *name)
{
	const json_t *v = json_object_get(options, key);
	if (absent(v))
		return AIQ_OK;
	if (!json_is_string(v) || !printable(json_string_value(v), MAX_NAME))
		return aiq__err(AIQ_EINVAL, "signature %s: option %s must be a printable string",
		                name, key);
	free(*dst);
	*dst = strdup(json_string_value(v));
	return *dst ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
}

/* A number of seconds; *set false when absent. */
static int opt_seconds(double *out, bool *set, const json_t *options, const char *key,
                       const char *name)
{
	const json_t *v = json_object_get(options, key);
	*set = false;
	if (absent(v))
		return AIQ_OK;
	if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) < 0)
		return aiq__err(AIQ_EINVAL,
		                "signature %s: option %s must be a non-negative number of seconds",
		                name, key);
	*out = json_number_value(v);
	*set = true;
	return AIQ_OK;
}

/* eta / expires: an ISO-8601 string, or (expires only) seconds from now. */
static int opt_time(int64_t *unix_us, const json_t *options, const char *key, const char *name,
                    bool seconds_ok)
{
	const json_t *v = json_object_get(options, key);
	if (absent(v))
		return AIQ_OK;
	if (json_is_string(v)) {
		if (aiq__iso8601_parse(json_string_value(v), unix_us) != AIQ_OK)
			return aiq__err(AIQ_EINVAL,
			                "signature %s: option %s is not an ISO-8601 time: %s", name,
			                key, json_string_value(v));
		return AIQ_OK;
	}
	double s = 0;
	bool set = false;
	if (seconds_ok && opt_seconds(&s, &set, options, key, name) == AIQ_OK && set) {
		*unix_us = aiq__now_us() + (int64_t)(s * 1e6);
		return AIQ_OK;
	}
	return aiq__err(AIQ_EINVAL, "signature %s: option %s must be %s", name, key,
	                seconds_ok ? "a number of seconds or an ISO-8601 time"
	                           : "an ISO-8601 time");
}

/* options.link / link_error: one signature or a list of them, as a list. */
static int opt_links(json_t **out, const json_t *options, const char *key, const char *name)
{
	const json_t *v = json_object_get(options, key);
	*out = NULL;
	if (absent(v))
		return AIQ_OK;
	json_t *list = json_is_array(v) ? json_deep_copy(v) : json_pack("[O]", v);
	if (list == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	size_t i;
	json_t *s;
	json_array_foreach(list, i, s)
	{
		if (aiq__canvas_check(NULL, s) != AIQ_OK) {
			int rc = aiq__err(AIQ_EINVAL, "signature %s: option %s[%zu]: %s", name, key,
			                  i, aiq_error_last());
			json_decref(list);
			return rc;
		}
	}
	*out = list;
	return AIQ_OK;
}

static int build_embed(aiq__message *m, const json_t *options, const json_t *chain,
                       const char *name)
{
	json_t *callbacks = NULL, *errbacks = NULL;
	int rc = opt_links(&callbacks, options, "link", name);
	if (rc == AIQ_OK)
		rc = opt_links(&errbacks, options, "link_error", name);
	const json_t *own_chain = json_object_get(options, "chain");
	const json_t *ch = chain ? chain : (json_is_array(own_chain) ? own_chain : NULL);
	const json_t *chord = json_object_get(options, "chord");
	if (rc == AIQ_OK && !absent(chord) && !json_is_object(chord))
		rc = aiq__err(AIQ_EINVAL, "signature %s: option chord must be a signature", name);
	if (rc == AIQ_OK) {
		m->embed = json_pack("{s:o?, s:o?, s:o?, s:o?}", "callbacks", callbacks, "errbacks",
		                     errbacks, "chain", ch ? json_deep_copy(ch) : NULL, "chord",
		                     absent(chord) ? NULL : json_deep_copy(chord));
		callbacks = errbacks = NULL; /* the pack took them, or freed them */
		if (m->embed == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	json_decref(callbacks);
	json_decref(errbacks);
	return rc;
}

static int build_args(aiq__message *m, const json_t *sig, const json_t *prepend)
{
	const json_t *args = json_object_get(sig, "args");
	const json_t *kwargs = json_object_get(sig, "kwargs");
	bool immutable = json_is_true(json_object_get(sig, "immutable"));
	m->args = json_array();
	m->kwargs = absent(kwargs) ? json_object() : json_deep_copy(kwargs);
	if (m->args == NULL || m->kwargs == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	/* Signature._merge: partial args go after the ones applied. */
	if (prepend && !immutable && json_array_append_new(m->args, json_deep_copy(prepend)))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	if (!absent(args) && json_array_extend(m->args, (json_t *)(uintptr_t)args))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

static int build_times(aiq__sig_send *out, const json_t *options, const char *name)
{
	aiq__message *m = &out->msg;
	double countdown = 0;
	bool has_countdown = false;
	int rc = opt_seconds(&countdown, &has_countdown, options, "countdown", name);
	if (rc == AIQ_OK && has_countdown)
		m->eta_us = aiq__now_us() + (int64_t)(countdown * 1e6);
	/* An eta wins over a countdown, as in Task.apply_async. */
	if (rc == AIQ_OK)
		rc = opt_time(&m->eta_us, options, "eta", name, false);
	if (rc == AIQ_OK)
		rc = opt_time(&m->expires_us, options, "expires", name, true);
	bool set = false;
	if (rc == AIQ_OK)
		rc = opt_seconds(&m->time_limit, &set, options, "time_limit", name);
	if (rc == AIQ_OK)
		rc = opt_seconds(&m->soft_time_limit, &set, options, "soft_time_limit", name);
	if (rc == AIQ_OK && m->eta_us > aiq__now_us())
		out->not_before_ms = m->eta_us / 1000;
	return rc;
}

static int build_options(aiq__sig_send *out, const json_t *options, const char *name)
{
	aiq__message *m = &out->msg;
	int rc = opt_string(&out->queue, options, "routing_key", name);
	if (rc == AIQ_OK)
		rc = opt_string(&out->queue, options, "queue", name); /* queue wins */
	if (rc == AIQ_OK)
		rc = opt_string(&m->group, options, "group_id", name);
	if (rc == AIQ_OK)
		rc = opt_string(&m->reply_to, options, "reply_to", name);
	if (rc == AIQ_OK)
		rc = opt_string(&m->shadow, options, "shadow", name);
	if (rc != AIQ_OK)
		return rc;
	const json_t *prio = json_object_get(options, "priority");
	if (!absent(prio)) {
		if (!json_is_integer(prio) || json_integer_value(prio) < 0 ||
		    json_integer_value(prio) > 255)
			return aiq__err(AIQ_EINVAL, "signature %s: option priority must be 0..255",
			                name);
		m->priority = (int)json_integer_value(prio);
	}
	const json_t *ignore = json_object_get(options, "ignore_result");
	if (!absent(ignore))
		m->ignore_result = json_is_true(ignore);
	const json_t *index = json_object_get(options, "group_index");
	if (!absent(index)) {
		if (!json_is_integer(index) || json_integer_value(index) < 0)
			return aiq__err(AIQ_EINVAL,
			                "signature %s: option group_index must be a non-negative "
			                "integer",
			                name);
		m->extra_headers = json_pack("{s:O}", "group_index", index);
		if (m->extra_headers == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	return build_times(out, options, name);
}

static int dup_or(char **dst, const char *a, const json_t *options, const char *key,
                  const char *fallback)
{
	const json_t *v = json_object_get(options, key);
	const char *s = a ? a : (json_is_string(v) ? json_string_value(v) : fallback);
	if (s == NULL)
		return AIQ_OK;
	*dst = strdup(s);
	return *dst ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
}

int aiq__signature_build(aiq__sig_send *out, const json_t *sig, const json_t *prepend,
                         const char *parent_id, const char *root_id, const json_t *chain,
                         const char *origin)
{
	memset(out, 0, sizeof *out);
	aiq__message_init(&out->msg);
	int rc = aiq__signature_check(sig);
	if (rc != AIQ_OK)
		return rc;
	const char *name = json_string_value(json_object_get(sig, "task"));
	const json_t *options = json_object_get(sig, "options");
	json_t *none = NULL;
	if (absent(options) && !(options = none = json_object()))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	aiq__message *m = &out->msg;
	char fresh[37];
	aiq__uuid4(fresh);
	if (!(m->task = strdup(name)))
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK)
		rc = opt_string(&m->id, options, "task_id", name);
	if (rc == AIQ_OK && m->id == NULL && !(m->id = strdup(fresh)))
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	/* apply_async(parent_id=, root_id=) override what the options say. */
	if (rc == AIQ_OK)
		rc = dup_or(&m->root_id, root_id, options, "root_id", m->id);
	if (rc == AIQ_OK)
		rc = dup_or(&m->parent_id, parent_id, options, "parent_id", NULL);
	if (rc == AIQ_OK && origin)
		rc = dup_or(&m->origin, origin, options, "", NULL);
	if (rc == AIQ_OK)
		rc = build_args(m, sig, prepend);
	if (rc == AIQ_OK)
		rc = build_options(out, options, name);
	if (rc == AIQ_OK)
		rc = build_embed(m, options, chain, name);
	json_decref(none);
	if (rc != AIQ_OK)
		aiq__sig_send_clear(out);
	return rc;
}

/* ---- nested canvas (canvas_int.h) ------------------------------------------ */

void aiq__canvas_plan_clear(aiq__canvas_plan *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n; i++)
		aiq__sig_send_clear(&p->sends[i]);
	free(p->sends);
	json_decref(p->chord_sizes);
	memset(p, 0, sizeof *p);
}

static const char *type_name(const json_t *v)
{
	return v ? aiq__json_type_name(v) : "nothing";
}

static const char *sig_name(const json_t *sig)
{
	const char *name = json_string_value(json_object_get(sig, "task"));
	return name ? name : "?";
}

static int kind_of(aiq__sig_kind *kind, const json_t *sig)
{
	const json_t *type = json_object_get(sig, "subtask_type");
	const char *t = json_string_value(type);
	if (absent(type))
		*kind = AIQ__SIG_TASK;
	else if (t && strcmp(t, "chain") == 0)
		*kind = AIQ__SIG_CHAIN;
	else if (t && strcmp(t, "group") == 0)
		*kind = AIQ__SIG_GROUP;
	else if (t && strcmp(t, "chord") == 0)
		*kind = AIQ__SIG_CHORD;
	else
		return aiq__err(AIQ_EINVAL,
		                "signature %s: subtask_type %s is not supported (chain, group "
		                "and chord are)",
		                sig_name(sig), t ? t : type_name(type));
	return AIQ_OK;
}

static int check_at(aiq__sig_kind *kind, const json_t *sig, int depth);

static int check_list(const json_t *list, const char *what, const char *key, const char *name,
                      int depth)
{
	if (!json_is_array(list))
		return aiq__err(AIQ_EINVAL, "%s %s: kwargs.%s must be a list of signatures, got %s",
		                what, name, key, type_name(list));
	for (size_t i = 0; i < json_array_size(list); i++) {
		aiq__sig_kind k;
		if (check_at(&k, json_array_get(list, i), depth + 1) != AIQ_OK)
			return depth > 0 ? AIQ_EINVAL
			                 : aiq__err(AIQ_EINVAL, "%s %s, member %zu: %s", what, name,
			                            i, aiq_error_last());
	}
	return AIQ_OK;
}

/* The members of a group or a chord's header (a list or a group). */
static const json_t *header_tasks(const json_t *header)
{
	return json_is_object(header) ? json_object_get(json_object_get(header, "kwargs"), "tasks")
	                              : header;
}

static int check_at(aiq__sig_kind *kind, const json_t *sig, int depth)
{
	if (depth > AIQ__CANVAS_MAX_DEPTH)
		return aiq__err(AIQ_EINVAL, "canvas nested deeper than %d levels: refused",
		                AIQ__CANVAS_MAX_DEPTH);
	if (!json_is_object(sig))
		return aiq__err(AIQ_EINVAL, "a signature must be a JSON object, got %s",
		                type_name(sig));
	int rc = kind_of(kind, sig);
	if (rc != AIQ_OK || *kind == AIQ__SIG_TASK)
		return rc == AIQ_OK ? aiq__signature_check(sig) : rc;
	/* The envelope of a chain/group/chord is a signature too. */
	json_t *plain = json_copy((json_t *)(uintptr_t)sig);
	if (plain == NULL || json_object_del(plain, "subtask_type") != 0) {
		json_decref(plain);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	rc = aiq__signature_check(plain);
	json_decref(plain);
	if (rc != AIQ_OK)
		return rc;
	const char *name = sig_name(sig);
	const json_t *kwargs = json_object_get(sig, "kwargs");
	if (*kind == AIQ__SIG_CHAIN)
		return check_list(json_object_get(kwargs, "tasks"), "chain", "tasks", name, depth);
	if (*kind == AIQ__SIG_GROUP)
		return check_list(json_object_get(kwargs, "tasks"), "group", "tasks", name, depth);
	const json_t *header = json_object_get(kwargs, "header");
	if (json_is_object(header)) {
		aiq__sig_kind k = AIQ__SIG_TASK;
		if (check_at(&k, header, depth + 1) != AIQ_OK)
			return aiq__err(AIQ_EINVAL, "chord %s: its header: %s", name,
			                aiq_error_last());
		if (k != AIQ__SIG_GROUP)
			return aiq__err(AIQ_EINVAL,
			                "chord %s: its header must be a group or a list", name);
	} else if ((rc = check_list(header, "chord", "header", name, depth)) != AIQ_OK) {
		return rc;
	}
	aiq__sig_kind k;
	if (check_at(&k, json_object_get(kwargs, "body"), depth + 1) != AIQ_OK)
		return depth > 0 ? AIQ_EINVAL
		                 : aiq__err(AIQ_EINVAL, "chord %s: its body: %s", name,
		                            aiq_error_last());
	return AIQ_OK;
}

int aiq__canvas_check(aiq__sig_kind *kind, const json_t *sig)
{
	aiq__sig_kind k;
	return check_at(kind ? kind : &k, sig, 0);
}

/* What a group member or a chord part carries to its (last) task. */
struct member_ctx {
	const char *group_id;
	json_int_t group_index;
	const json_t *chord; /* the body, or NULL */
};

struct plan_args {
	aiq__canvas_plan *plan;
	const char *parent;
	const char *root;
	const char *origin;
};

static int plan_at(struct plan_args *a, const json_t *sig, const json_t *prepend,
                   const json_t *chain, const struct member_ctx *ctx, int depth);

/* options.group_id/group_index/chord of a task as freeze() sets them. */
static int set_member_options(json_t *sig, const struct member_ctx *ctx)
{
	aiq__sig_kind kind;
	if (kind_of(&kind, sig) != AIQ_OK || kind != AIQ__SIG_TASK)
		return aiq__err(AIQ_EINVAL,
		                "a chain or chord ending in a group or chord inside a group or "
		                "chord is not supported (%s)",
		                sig_name(sig));
	json_t *o = json_object_get(sig, "options");
	if (!json_is_object(o)) {
		o = json_object();
		if (o == NULL || json_object_set_new(sig, "options", o) != 0)
			return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (json_object_set_new(o, "group_id", json_string(ctx->group_id)) != 0 ||
	    json_object_set_new(o, "group_index", json_integer(ctx->group_index)) != 0 ||
	    (ctx->chord && json_object_set_new(o, "chord", json_deep_copy(ctx->chord)) != 0))
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

static int plan_task(struct plan_args *a, const json_t *sig, const json_t *prepend,
                     const json_t *chain, const struct member_ctx *ctx)
{
	aiq__canvas_plan *p = a->plan;
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 4;
		aiq__sig_send *grown = realloc(p->sends, cap * sizeof *grown);
		if (grown == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		p->sends = grown;
		p->cap = cap;
	}
	json_t *copy = ctx ? json_deep_copy(sig) : NULL;
	if (ctx && copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = copy ? set_member_options(copy, ctx) : AIQ_OK;
	if (rc == AIQ_OK)
		rc = aiq__signature_build(&p->sends[p->n], copy ? copy : sig, prepend, a->parent,
		                          a->root, chain, a->origin);
	if (rc == AIQ_OK)
		p->n++;
	json_decref(copy);
	return rc;
}

static bool is_kind(const json_t *sig, aiq__sig_kind want)
{
	aiq__sig_kind k;
	return kind_of(&k, sig) == AIQ_OK && k == want;
}

static bool has_own_args(const json_t *sig)
{
	return json_array_size(json_object_get(sig, "args")) > 0;
}

/* Append `list`'s members to `out`, splicing in those of kind `splice`. */
static int unroll(json_t *out, const json_t *list, aiq__sig_kind splice, int depth)
{
	if (depth > AIQ__CANVAS_MAX_DEPTH)
		return aiq__err(AIQ_EINVAL, "canvas nested deeper than %d levels: refused",
		                AIQ__CANVAS_MAX_DEPTH);
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *m = json_array_get(list, i);
		int rc = AIQ_OK;
		if (is_kind(m, splice))
			rc = unroll(out, json_object_get(json_object_get(m, "kwargs"), "tasks"),
			            splice, depth + 1);
		else if (json_array_append(out, m) != 0)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		if (rc != AIQ_OK)
			return rc;
	}
	return AIQ_OK;
}

/* chord(group, body) as _chain.prepare_steps builds it. */
static json_t *chord_of(const json_t *group, const json_t *body)
{
	return json_pack("{s:s, s:[], s:{s:O, s:O, s:{}}, s:{}, s:s, s:b}", "task", "celery.chord",
	                 "args", "kwargs", "header", group, "body", body, "kwargs", "options",
	                 "subtask_type", "chord", "immutable", 0);
}

static int plan_chain(struct plan_args *a, const json_t *sig, const json_t *prepend,
                      const json_t *chain, const struct member_ctx *ctx, int depth)
{
	json_t *steps = json_array();
	int rc = steps ? unroll(steps, json_object_get(json_object_get(sig, "kwargs"), "tasks"),
	                        AIQ__SIG_CHAIN, depth)
	               : aiq__err(AIQ_ENOMEM, "out of memory");
	/* group | step -> chord(group, step), from the end as Celery does. */
	for (size_t i = json_array_size(steps); rc == AIQ_OK && i-- > 1;) {
		if (!is_kind(json_array_get(steps, i - 1), AIQ__SIG_GROUP))
			continue;
		json_t *c = chord_of(json_array_get(steps, i - 1), json_array_get(steps, i));
		if (c == NULL || json_array_set_new(steps, i - 1, c) != 0 ||
		    json_array_remove(steps, i) != 0)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	size_t n = json_array_size(steps);
	json_t *next = NULL;
	if (rc == AIQ_OK && n > 0) {
		/* embed.chain: the caller's rest first, then ours reversed. */
		next = chain ? json_deep_copy(chain) : json_array();
		for (size_t i = n; next && i-- > 1;)
			if (json_array_append_new(next, json_deep_copy(json_array_get(steps, i))))
				rc = aiq__err(AIQ_ENOMEM, "out of memory");
		if (next == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		/* A member's group/chord goes to the chain's last task. */
		if (rc == AIQ_OK && ctx && n > 1)
			rc = set_member_options(json_array_get(next, json_array_size(chain)), ctx);
	}
	if (rc == AIQ_OK && n > 0) {
		bool immutable = json_is_true(json_object_get(sig, "immutable"));
		rc = plan_at(a, json_array_get(steps, 0), immutable ? NULL : prepend, next,
		             n == 1 ? ctx : NULL, depth + 1);
	}
	json_decref(next);
	json_decref(steps);
	return rc;
}

static json_int_t member_index(const json_t *member, size_t i)
{
	const json_t *v = json_object_get(json_object_get(member, "options"), "group_index");
	return json_is_integer(v) && json_integer_value(v) >= 0 ? json_integer_value(v)
	                                                        : (json_int_t)i;
}

/* The group id Celery froze into options.task_id, else a fresh one. */
static void group_id_of(char gid[37], const json_t *sig)
{
	const json_t *v = json_object_get(json_object_get(sig, "options"), "task_id");
	const char *s = json_string_value(v);
	if (s && printable(s, 36))
		snprintf(gid, 37, "%s", s);
	else
		aiq__uuid4(gid);
}

static int plan_members(struct plan_args *a, const json_t *members, const char *gid,
                        const json_t *prepend, const json_t *chain, const json_t *chord, int depth)
{
	for (size_t i = 0; i < json_array_size(members); i++) {
		const json_t *m = json_array_get(members, i);
		struct member_ctx mctx = {gid, member_index(m, i), chord};
		int rc = plan_at(a, m, prepend, chain, &mctx, depth + 1);
		if (rc != AIQ_OK)
			return rc;
	}
	return AIQ_OK;
}

static int plan_group(struct plan_args *a, const json_t *sig, const json_t *prepend,
                      const json_t *chain, const struct member_ctx *ctx, int depth)
{
	if (ctx)
		return aiq__err(AIQ_EINVAL,
		                "group %s: a group ending a chain inside a group or chord is not "
		                "supported",
		                sig_name(sig));
	json_t *members = json_array();
	int rc = members ? unroll(members, json_object_get(json_object_get(sig, "kwargs"), "tasks"),
	                          AIQ__SIG_GROUP, depth)
	                 : aiq__err(AIQ_ENOMEM, "out of memory");
	char gid[37];
	group_id_of(gid, sig);
	if (rc == AIQ_OK)
		rc = plan_members(a, members, gid, prepend, chain, NULL, depth);
	json_decref(members);
	return rc;
}

/* chord._descend: how many part returns complete a header member. */
static int64_t descend(const json_t *sig, int depth)
{
	aiq__sig_kind k;
	if (depth > AIQ__CANVAS_MAX_DEPTH || kind_of(&k, sig) != AIQ_OK)
		return 0;
	const json_t *kwargs = json_object_get(sig, "kwargs");
	const json_t *tasks = json_object_get(kwargs, "tasks");
	int64_t n = 0;
	switch (k) {
	case AIQ__SIG_TASK: return 1;
	case AIQ__SIG_GROUP:
		for (size_t i = 0; i < json_array_size(tasks); i++)
			n += descend(json_array_get(tasks, i), depth + 1);
		return n;
	case AIQ__SIG_CHAIN:
		for (size_t i = json_array_size(tasks); n == 0 && i-- > 0;)
			n = descend(json_array_get(tasks, i), depth + 1);
		return n;
	case AIQ__SIG_CHORD: return descend(json_object_get(kwargs, "body"), depth + 1);
	}
	return 0;
}

static int set_opt(json_t *o, const char *key, json_t *v)
{
	if (v == NULL || json_object_set_new(o, key, v) != 0)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

/* chord.run: the body as its header's parts will carry it. */
static int chord_body(json_t **out, const json_t *sig, const struct plan_args *a,
                      const json_t *chain, const struct member_ctx *ctx)
{
	json_t *body = json_deep_copy(json_object_get(json_object_get(sig, "kwargs"), "body"));
	json_t *o = body ? json_object_get(body, "options") : NULL;
	if (body && !json_is_object(o) && json_object_set_new(body, "options", o = json_object()))
		o = NULL;
	int rc = o ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK && a->parent)
		rc = set_opt(o, "parent_id", json_string(a->parent));
	if (rc == AIQ_OK && a->root)
		rc = set_opt(o, "root_id", json_string(a->root));
	if (rc == AIQ_OK && chain)
		rc = set_opt(o, "chain", json_deep_copy(chain));
	if (rc == AIQ_OK && !json_is_string(json_object_get(o, "task_id"))) {
		const json_t *own = json_object_get(json_object_get(sig, "options"), "task_id");
		char fresh[37];
		aiq__uuid4(fresh);
		rc = set_opt(o, "task_id",
		             json_string(json_is_string(own) ? json_string_value(own) : fresh));
	}
	if (rc == AIQ_OK && ctx)
		rc = set_member_options(body, ctx);
	if (rc != AIQ_OK) {
		json_decref(body);
		body = NULL;
	}
	*out = body;
	return rc;
}

static int plan_chord(struct plan_args *a, const json_t *sig, const json_t *prepend,
                      const json_t *chain, const struct member_ctx *ctx, int depth)
{
	if (ctx && ctx->chord)
		return aiq__err(AIQ_EINVAL,
		                "chord %s: a chord inside a chord's header is not "
		                "supported",
		                sig_name(sig));
	const json_t *header = json_object_get(json_object_get(sig, "kwargs"), "header");
	if (json_is_object(header) && has_own_args(header))
		return aiq__err(AIQ_EINVAL,
		                "chord %s: a header group with args of its own is not "
		                "supported",
		                sig_name(sig));
	json_t *body = NULL;
	int rc = chord_body(&body, sig, a, chain, ctx);
	json_t *members = rc == AIQ_OK ? json_array() : NULL;
	if (rc == AIQ_OK && members == NULL)
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	if (rc == AIQ_OK)
		rc = unroll(members, header_tasks(header), AIQ__SIG_GROUP, depth);
	bool immutable = json_is_true(json_object_get(sig, "immutable"));
	const json_t *args = immutable ? NULL : prepend;
	int64_t size = 0;
	for (size_t i = 0; rc == AIQ_OK && i < json_array_size(members); i++)
		size += descend(json_array_get(members, i), depth + 1);
	if (rc == AIQ_OK && size == 0) {
		/* Nothing will complete the header: the body runs now with []. */
		json_t *none = json_array();
		rc = none ? plan_at(a, body, none, NULL, NULL, depth + 1)
		          : aiq__err(AIQ_ENOMEM, "out of memory");
		json_decref(none);
	} else if (rc == AIQ_OK) {
		char gid[37];
		group_id_of(gid, json_is_object(header) ? header : NULL);
		if (a->plan->chord_sizes == NULL && !(a->plan->chord_sizes = json_object()))
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
		if (rc == AIQ_OK)
			rc = set_opt(a->plan->chord_sizes, gid, json_integer((json_int_t)size));
		if (rc == AIQ_OK)
			rc = plan_members(a, members, gid, args, NULL, body, depth);
	}
	json_decref(members);
	json_decref(body);
	return rc;
}

static int plan_at(struct plan_args *a, const json_t *sig, const json_t *prepend,
                   const json_t *chain, const struct member_ctx *ctx, int depth)
{
	aiq__sig_kind kind;
	int rc = check_at(&kind, sig, depth);
	if (rc != AIQ_OK)
		return rc;
	if (kind != AIQ__SIG_TASK && has_own_args(sig))
		return aiq__err(AIQ_EINVAL, "%s %s: args of its own are not supported",
		                json_string_value(json_object_get(sig, "subtask_type")),
		                sig_name(sig));
	switch (kind) {
	case AIQ__SIG_CHAIN: return plan_chain(a, sig, prepend, chain, ctx, depth);
	case AIQ__SIG_GROUP: return plan_group(a, sig, prepend, chain, ctx, depth);
	case AIQ__SIG_CHORD: return plan_chord(a, sig, prepend, chain, ctx, depth);
	case AIQ__SIG_TASK: break;
	}
	return plan_task(a, sig, prepend, chain, ctx);
}

int aiq__canvas_plan_build(aiq__canvas_plan *out, const json_t *sig, const json_t *prepend,
                           const char *parent_id, const char *root_id, const json_t *chain,
                           const char *origin)
{
	memset(out, 0, sizeof *out);
	struct plan_args a = {out, parent_id, root_id, origin};
	int rc = plan_at(&a, sig, prepend, chain, NULL, 0);
	if (rc != AIQ_OK)
		aiq__canvas_plan_clear(out);
	return rc;
}

/* ---- public signatures (include/aiqueue/canvas.h) -------------------------- */

#define MAX_TASK_ID 155 /* Celery's task id column */

struct aiq_signature {
	json_t *obj; /* the signature object, always valid for aiq__signature_check */
};

const json_t *aiq__signature_json(const aiq_signature *s)
{
	return s ? s->obj : NULL;
}

AIQ_API int aiq_signature_new(aiq_signature **out, const char *task_name)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	if (task_name == NULL || !printable(task_name, MAX_NAME))
		return aiq__err(AIQ_EINVAL, "task name must be 1-%d bytes of printable UTF-8",
		                MAX_NAME);
	aiq_signature *s = calloc(1, sizeof *s);
	if (s == NULL || !(s->obj = aiq__signature_object(task_name))) {
		free(s);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	*out = s;
	return AIQ_OK;
}

AIQ_API void aiq_signature_free(aiq_signature *s)
{
	if (s == NULL)
		return;
	json_decref(s->obj);
	free(s);
}

static int set_json(aiq_signature *s, const char *key, const char *text, bool want_array)
{
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "signature is NULL");
	json_t *v = NULL;
	if (text == NULL) {
		v = want_array ? json_array() : json_object();
	} else {
		json_error_t e;
		v = json_loads(text, JSON_DECODE_ANY, &e);
		if (v == NULL)
			return aiq__err(AIQ_EJSON, "%s: %s (line %d, column %d)", key, e.text,
			                e.line, e.column);
		if (want_array ? !json_is_array(v) : !json_is_object(v)) {
			json_decref(v);
			return aiq__err(AIQ_EINVAL, "%s must be a JSON %s", key,
			                want_array ? "array" : "object");
		}
	}
	if (v == NULL || json_object_set_new(s->obj, key, v) != 0)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

AIQ_API int aiq_signature_set_args_json(aiq_signature *s, const char *args_json)
{
	return set_json(s, "args", args_json, true);
}

AIQ_API int aiq_signature_set_kwargs_json(aiq_signature *s, const char *kwargs_json)
{
	return set_json(s, "kwargs", kwargs_json, false);
}

AIQ_API int aiq_signature_set_immutable(aiq_signature *s, int immutable)
{
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "signature is NULL");
	if (json_object_set_new(s->obj, "immutable", json_boolean(immutable)) != 0)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

static json_t *options_of(aiq_signature *s)
{
	json_t *o = json_object_get(s->obj, "options");
	if (!json_is_object(o)) {
		o = json_object();
		if (o == NULL || json_object_set_new(s->obj, "options", o) != 0)
			return NULL;
	}
	return o;
}

/* Set (or, with v NULL, remove) an option; v is stolen. */
static int set_option(aiq_signature *s, const char *key, json_t *v)
{
	json_t *o = options_of(s);
	if (o == NULL) {
		json_decref(v);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (v == NULL) {
		json_object_del(o, key);
		return AIQ_OK;
	}
	if (json_object_set_new(o, key, v) != 0)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

static int set_name_option(aiq_signature *s, const char *key, const char *value, size_t max)
{
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "signature is NULL");
	if (value == NULL)
		return set_option(s, key, NULL);
	if (!printable(value, max))
		return aiq__err(AIQ_EINVAL, "%s must be 1-%zu bytes of printable UTF-8", key, max);
	json_t *v = json_string(value);
	return v ? set_option(s, key, v) : aiq__err(AIQ_ENOMEM, "out of memory");
}

AIQ_API int aiq_signature_set_queue(aiq_signature *s, const char *queue)
{
	return set_name_option(s, "queue", queue, MAX_NAME);
}

AIQ_API int aiq_signature_set_task_id(aiq_signature *s, const char *task_id)
{
	return set_name_option(s, "task_id", task_id, MAX_TASK_ID);
}

AIQ_API int aiq_signature_set_countdown_ms(aiq_signature *s, int64_t countdown_ms)
{
	if (s == NULL || countdown_ms < 0)
		return aiq__err(AIQ_EINVAL, "a signature and a countdown >= 0 are required");
	if (countdown_ms == 0)
		return set_option(s, "countdown", NULL);
	json_t *v = json_real((double)countdown_ms / 1000.0);
	return v ? set_option(s, "countdown", v) : aiq__err(AIQ_ENOMEM, "out of memory");
}

static int add_link(aiq_signature *s, const char *key, const aiq_signature *other)
{
	if (s == NULL || other == NULL || s == other)
		return aiq__err(AIQ_EINVAL, "two different signatures are required");
	json_t *o = options_of(s);
	if (o == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	json_t *list = json_object_get(o, key);
	if (!json_is_array(list)) {
		/* One signature set by hand becomes the first of the list. */
		json_t *old = list;
		list = json_is_object(old) ? json_pack("[O]", old) : json_array();
		if (list == NULL || json_object_set_new(o, key, list) != 0)
			return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (json_array_append_new(list, json_deep_copy(other->obj)) != 0)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	return AIQ_OK;
}

AIQ_API int aiq_signature_add_link(aiq_signature *s, const aiq_signature *callback)
{
	return add_link(s, "link", callback);
}

AIQ_API int aiq_signature_add_link_error(aiq_signature *s, const aiq_signature *errback)
{
	return add_link(s, "link_error", errback);
}

AIQ_API int aiq_signature_to_json(char **out, const aiq_signature *s)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "out is NULL");
	*out = NULL;
	if (s == NULL)
		return aiq__err(AIQ_EINVAL, "signature is NULL");
	*out = aiq__json_dumps_py(s->obj);
	return *out ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory");
}
