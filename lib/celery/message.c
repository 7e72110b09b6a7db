/*
 * The task model and Celery's task protocol: protocol v2 headers, properties
 * and body on encode; v2 and the older v1 (everything in a dict body) on
 * decode. Decoding is strict about types and says exactly what was wrong,
 * because a worker has to tell a poison message apart from a real task.
 */
#include "message.h"
#include "json_load.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Celery's argsrepr_maxsize and kwargsrepr_maxsize. */
#define REPR_MAX 1024

/* Headers with a place of their own in the v2 table, in Celery's order. */
static const char *const v2_header_order[] = {
        "lang",     "task",        "id",      "shadow",        "eta",     "expires",
        "group",    "group_index", "retries", "timelimit",     "root_id", "parent_id",
        "argsrepr", "kwargsrepr",  "origin",  "ignore_result",
};
#define MAX_RETRIES_HEADER "x-aiq-max-retries"

static bool is_fixed_header(const char *key)
{
	for (size_t i = 0; i < sizeof v2_header_order / sizeof v2_header_order[0]; i++)
		if (strcmp(key, v2_header_order[i]) == 0)
			return true;
	return strcmp(key, MAX_RETRIES_HEADER) == 0;
}

void aiq__message_init(aiq__message *m)
{
	memset(m, 0, sizeof *m);
	m->protocol = 2;
	m->max_retries = -1;
	m->delivery_mode = 2;
}

void aiq__message_clear(aiq__message *m)
{
	if (m == NULL)
		return;
	free(m->id);
	free(m->task);
	free(m->lang);
	free(m->shadow);
	free(m->root_id);
	free(m->parent_id);
	free(m->group);
	free(m->origin);
	free(m->argsrepr);
	free(m->kwargsrepr);
	json_decref(m->args);
	json_decref(m->kwargs);
	json_decref(m->embed);
	json_decref(m->extra_headers);
	free(m->correlation_id);
	free(m->reply_to);
	aiq__message_init(m);
}

static json_t *default_embed(void)
{
	return json_pack("{s:n, s:n, s:n, s:n}", "callbacks", "errbacks", "chain", "chord");
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */

static json_t *string_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *time_or_null(int64_t us)
{
	if (us == 0)
		return json_null();
	char buf[AIQ__ISO_BUFSZ];
	aiq__iso8601_format(buf, us, true);
	return json_string(buf);
}

/* Seconds as Python would have them: 30 stays an int, 2.5 a float. */
static json_t *seconds_or_null(double s)
{
	if (s <= 0)
		return json_null();
	if (s == floor(s) && s < 9007199254740992.0)
		return json_integer((json_int_t)s);
	return json_real(s);
}

/* Celery's origin: "gen<pid>@<hostname>". */
static char *default_origin(void)
{
	char host[256];
	if (gethostname(host, sizeof host) != 0)
		strcpy(host, "localhost");
	host[sizeof host - 1] = '\0';
	return aiq__asprintf("gen%ld@%s", (long)getpid(), host);
}

static int validate_for_wire(const aiq__message *m)
{
	if (m == NULL || m->id == NULL || m->id[0] == '\0')
		return aiq__err(AIQ_EINVAL, "a task message needs an id");
	if (m->task == NULL || m->task[0] == '\0')
		return aiq__err(AIQ_EINVAL, "a task message needs a task name");
	if (m->args && !json_is_array(m->args))
		return aiq__err(AIQ_EINVAL, "task args must be a JSON array, got %s",
		                aiq__json_type_name(m->args));
	if (m->kwargs && !json_is_object(m->kwargs))
		return aiq__err(AIQ_EINVAL, "task kwargs must be a JSON object, got %s",
		                aiq__json_type_name(m->kwargs));
	if (m->embed && !json_is_object(m->embed))
		return aiq__err(AIQ_EINVAL, "task embed must be a JSON object, got %s",
		                aiq__json_type_name(m->embed));
	if (m->extra_headers && !json_is_object(m->extra_headers))
		return aiq__err(AIQ_EINVAL, "extra headers must be a JSON object, got %s",
		                aiq__json_type_name(m->extra_headers));
	/* json_string() refuses text that is not UTF-8: say so, rather than
	 * fail later as if memory ran out. */
	const struct {
		const char *name, *value;
	} texts[] = {
	        {"id", m->id},
	        {"task", m->task},
	        {"lang", m->lang},
	        {"shadow", m->shadow},
	        {"root_id", m->root_id},
	        {"parent_id", m->parent_id},
	        {"group", m->group},
	        {"origin", m->origin},
	        {"argsrepr", m->argsrepr},
	        {"kwargsrepr", m->kwargsrepr},
	        {"correlation_id", m->correlation_id},
	        {"reply_to", m->reply_to},
	};
	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
		if (texts[i].value && !aiq__utf8_valid(texts[i].value, strlen(texts[i].value)))
			return aiq__err(AIQ_EINVAL, "task message field '%s' is not valid UTF-8",
			                texts[i].name);
	if (m->retries < 0)
		return aiq__err(AIQ_EINVAL, "retries must not be negative (%d)", m->retries);
	if (m->priority < 0 || m->priority > 255)
		return aiq__err(AIQ_EINVAL, "priority must be 0..255, got %d", m->priority);
	if (m->delivery_mode < 0 || m->delivery_mode > 2)
		return aiq__err(AIQ_EINVAL, "delivery mode must be 1 or 2, got %d",
		                m->delivery_mode);
	if (m->eta_us < 0 || m->expires_us < 0)
		return aiq__err(AIQ_EINVAL, "eta and expires must not be before 1970");
	if (!isfinite(m->time_limit) || !isfinite(m->soft_time_limit) || m->time_limit < 0 ||
	    m->soft_time_limit < 0)
		return aiq__err(AIQ_EINVAL, "time limits must be finite and not negative");
	return AIQ_OK;
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
	return v == NULL ? -1 : json_object_set_new(obj, key, v);
}

static json_t *build_headers(const aiq__message *m, const json_t *args, const json_t *kwargs)
{
	json_t *h = json_object();
	char *argsrepr = NULL, *kwargsrepr = NULL, *origin = NULL;
	if (h == NULL)
		return NULL;
	if (!m->argsrepr && !(argsrepr = aiq__pyrepr_args(args, REPR_MAX)))
		goto fail;
	if (!m->kwargsrepr && !(kwargsrepr = aiq__pyrepr_kwargs(kwargs, REPR_MAX)))
		goto fail;
	if (!m->origin && !(origin = default_origin()))
		goto fail;
	json_t *group_index =
	        m->extra_headers ? json_object_get(m->extra_headers, "group_index") : NULL;
	json_t *timelimit = json_array();
	if (timelimit == NULL || json_array_append_new(timelimit, seconds_or_null(m->time_limit)) ||
	    json_array_append_new(timelimit, seconds_or_null(m->soft_time_limit))) {
		json_decref(timelimit);
		goto fail;
	}
	if (set_new(h, "lang", json_string(m->lang ? m->lang : "c")) ||
	    set_new(h, "task", json_string(m->task)) || set_new(h, "id", json_string(m->id)) ||
	    set_new(h, "shadow", string_or_null(m->shadow)) ||
	    set_new(h, "eta", time_or_null(m->eta_us)) ||
	    set_new(h, "expires", time_or_null(m->expires_us)) ||
	    set_new(h, "group", string_or_null(m->group)) ||
	    set_new(h, "group_index", group_index ? json_deep_copy(group_index) : json_null()) ||
	    set_new(h, "retries", json_integer(m->retries)) || set_new(h, "timelimit", timelimit) ||
	    set_new(h, "root_id", json_string(m->root_id ? m->root_id : m->id)) ||
	    set_new(h, "parent_id", string_or_null(m->parent_id)) ||
	    set_new(h, "argsrepr", json_string(m->argsrepr ? m->argsrepr : argsrepr)) ||
	    set_new(h, "kwargsrepr", json_string(m->kwargsrepr ? m->kwargsrepr : kwargsrepr)) ||
	    set_new(h, "origin", json_string(m->origin ? m->origin : origin)) ||
	    set_new(h, "ignore_result", json_boolean(m->ignore_result)))
		goto fail;
	if (m->max_retries >= 0 && set_new(h, MAX_RETRIES_HEADER, json_integer(m->max_retries)))
		goto fail;
	if (m->extra_headers) {
		const char *key;
		json_t *val;
		json_object_foreach(m->extra_headers, key, val)
		{
			if (is_fixed_header(key))
				continue;
			if (set_new(h, key, json_deep_copy(val)))
				goto fail;
		}
	}
	free(argsrepr);
	free(kwargsrepr);
	free(origin);
	return h;
fail:
	free(argsrepr);
	free(kwargsrepr);
	free(origin);
	json_decref(h);
	return NULL;
}

static json_t *build_properties(const aiq__message *m)
{
	json_t *p = json_object();
	if (p == NULL)
		return NULL;
	if (set_new(p, "correlation_id",
	            json_string(m->correlation_id ? m->correlation_id : m->id)) ||
	    (m->reply_to && set_new(p, "reply_to", json_string(m->reply_to))) ||
	    set_new(p, "delivery_mode", json_integer(m->delivery_mode ? m->delivery_mode : 2)))
		goto fail;
	if (m->expires_us) {
		/* RabbitMQ's per-message TTL: milliseconds from now, as text. */
		int64_t ms = (m->expires_us - aiq__now_us()) / 1000;
		char buf[32];
		snprintf(buf, sizeof buf, "%lld", (long long)(ms > 0 ? ms : 0));
		if (set_new(p, "expiration", json_string(buf)))
			goto fail;
	}
	if (set_new(p, "priority", json_integer(m->priority)))
		goto fail;
	return p;
fail:
	json_decref(p);
	return NULL;
}

int aiq__message_to_wire(aiq__wire *out, const aiq__message *m)
{
	memset(out, 0, sizeof *out);
	int rc = validate_for_wire(m);
	if (rc != AIQ_OK)
		return rc;

	json_t *args = m->args ? json_incref(m->args) : json_array();
	json_t *kwargs = m->kwargs ? json_incref(m->kwargs) : json_object();
	json_t *embed = m->embed ? json_incref(m->embed) : default_embed();
	json_t *body = json_array();
	char *text = NULL;
	if (!args || !kwargs || !embed || !body || json_array_append(body, args) ||
	    json_array_append(body, kwargs) || json_array_append(body, embed))
		goto oom;
	text = aiq__json_dumps_py(body);
	if (text == NULL)
		goto oom;
	size_t len = strlen(text);
	if (len > AIQ__MAX_MESSAGE_BYTES) {
		rc = aiq__err(AIQ_ETOOBIG, "message body of %zu bytes exceeds the %u byte limit",
		              len, AIQ__MAX_MESSAGE_BYTES);
		goto fail;
	}
	out->body = (unsigned char *)text;
	out->body_len = len;
	text = NULL;
	if (!(out->headers = build_headers(m, args, kwargs)) ||
	    !(out->properties = build_properties(m)) ||
	    !(out->content_type = aiq__strdup("application/json")) ||
	    !(out->content_encoding = aiq__strdup("utf-8")))
		goto oom;
	json_decref(args);
	json_decref(kwargs);
	json_decref(embed);
	json_decref(body);
	return AIQ_OK;
oom:
	rc = aiq__err(AIQ_ENOMEM, "out of memory encoding a task message");
fail:
	free(text);
	json_decref(args);
	json_decref(kwargs);
	json_decref(embed);
	json_decref(body);
	aiq__wire_clear(out);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */

/* `where` names the container in messages: "header" or "body field". */
static int take_string(char **dst, const json_t *v, const char *where, const char *key,
                       bool required)
{
	if (v == NULL && required)
		return aiq__err(AIQ_EPROTO, "%s '%s' is missing", where, key);
	if (v == NULL || (json_is_null(v) && !required))
		return AIQ_OK;
	if (!json_is_string(v))
		return aiq__err(AIQ_EPROTO, "%s '%s' must be a string, got %s", where, key,
		                aiq__json_type_name(v));
	const char *s = json_string_value(v);
	if (strlen(s) != json_string_length(v))
		return aiq__err(AIQ_EPROTO, "%s '%s' contains a NUL character", where, key);
	if (required && s[0] == '\0')
		return aiq__err(AIQ_EPROTO, "%s '%s' is empty", where, key);
	char *copy = aiq__strdup(s);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
	free(*dst);
	*dst = copy;
	return AIQ_OK;
}

/* The id and the task name end up in keys, log lines and metrics labels:
 * one over the bound is refused, and dropped so it is not quoted further. */
static int bound_name(char **s, const char *where, const char *key)
{
	size_t n = *s ? strlen(*s) : 0;
	if (n <= AIQ__MAX_RECEIVED_NAME)
		return AIQ_OK;
	free(*s);
	*s = NULL;
	return aiq__err(AIQ_EPROTO, "%s '%s' is %zu bytes, over the limit of %d", where, key, n,
	                AIQ__MAX_RECEIVED_NAME);
}

static int take_int(int *dst, const json_t *v, const char *where, const char *key, int lo, int hi,
                    int dflt)
{
	if (v == NULL) {
		*dst = dflt;
		return AIQ_OK;
	}
	if (!json_is_integer(v))
		return aiq__err(AIQ_EPROTO, "%s '%s' must be an integer, got %s", where, key,
		                aiq__json_type_name(v));
	json_int_t i = json_integer_value(v);
	if (i < lo || i > hi)
		return aiq__err(AIQ_EPROTO,
		                "%s '%s' must be between %d and %d, got %" JSON_INTEGER_FORMAT,
		                where, key, lo, hi, i);
	*dst = (int)i;
	return AIQ_OK;
}

static int take_bool(bool *dst, const json_t *v, const char *where, const char *key)
{
	if (v == NULL || json_is_null(v))
		return AIQ_OK;
	if (!json_is_boolean(v))
		return aiq__err(AIQ_EPROTO, "%s '%s' must be a boolean, got %s", where, key,
		                aiq__json_type_name(v));
	*dst = json_is_true(v);
	return AIQ_OK;
}

static int take_time(int64_t *dst, const json_t *v, const char *where, const char *key)
{
	if (v == NULL || json_is_null(v))
		return AIQ_OK;
	if (!json_is_string(v))
		return aiq__err(AIQ_EPROTO, "%s '%s' must be an ISO-8601 string or null, got %s",
		                where, key, aiq__json_type_name(v));
	int64_t us;
	if (strlen(json_string_value(v)) != json_string_length(v) ||
	    aiq__iso8601_parse(json_string_value(v), &us) != AIQ_OK)
		return aiq__err(AIQ_EPROTO, "%s '%s' is not an ISO-8601 date-time: '%.64s'", where,
		                key, json_string_value(v));
	/* 0 means "none" in the model; a time at or before the epoch is simply
	 * long past, which 1 µs expresses as well. */
	*dst = us > 0 ? us : 1;
	return AIQ_OK;
}

static int take_seconds(double *dst, const json_t *v, const char *where, const char *key,
                        const char *which)
{
	if (json_is_null(v))
		return AIQ_OK;
	if (!json_is_number(v))
		return aiq__err(AIQ_EPROTO, "%s '%s' %s limit must be a number or null, got %s",
		                where, key, which, aiq__json_type_name(v));
	double s = json_number_value(v);
	if (!(s >= 0) || !isfinite(s))
		return aiq__err(AIQ_EPROTO, "%s '%s' %s limit must not be negative", where, key,
		                which);
	*dst = s;
	return AIQ_OK;
}

static int take_timelimit(aiq__message *m, const json_t *v, const char *where)
{
	if (v == NULL || json_is_null(v))
		return AIQ_OK;
	if (!json_is_array(v) || json_array_size(v) != 2)
		return aiq__err(
		        AIQ_EPROTO, "%s 'timelimit' must be an array [hard, soft], got %s%s", where,
		        aiq__json_type_name(v), json_is_array(v) ? " of the wrong length" : "");
	int rc = take_seconds(&m->time_limit, json_array_get(v, 0), where, "timelimit", "hard");
	if (rc == AIQ_OK)
		rc = take_seconds(&m->soft_time_limit, json_array_get(v, 1), where, "timelimit",
		                  "soft");
	return rc;
}

static int keep_extra(aiq__message *m, const char *key, const json_t *v)
{
	if (m->extra_headers == NULL && !(m->extra_headers = json_object()))
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
	if (set_new(m->extra_headers, key, json_deep_copy(v)))
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
	return AIQ_OK;
}

static int decode_v2_header(aiq__message *m, const char *key, const json_t *v)
{
	static const char H[] = "header";
	if (strcmp(key, "task") == 0 || strcmp(key, "id") == 0)
		return AIQ_OK; /* read first, before anything else */
	if (strcmp(key, "lang") == 0)
		return take_string(&m->lang, v, H, key, false);
	if (strcmp(key, "shadow") == 0)
		return take_string(&m->shadow, v, H, key, false);
	if (strcmp(key, "eta") == 0)
		return take_time(&m->eta_us, v, H, key);
	if (strcmp(key, "expires") == 0)
		return take_time(&m->expires_us, v, H, key);
	if (strcmp(key, "group") == 0)
		return take_string(&m->group, v, H, key, false);
	if (strcmp(key, "group_index") == 0) {
		if (json_is_null(v))
			return AIQ_OK;
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			return aiq__err(
			        AIQ_EPROTO,
			        "header 'group_index' must be a non-negative integer or null, "
			        "got %s",
			        aiq__json_type_name(v));
		return keep_extra(m, key, v);
	}
	if (strcmp(key, "retries") == 0)
		return take_int(&m->retries, v, H, key, 0, INT32_MAX, 0);
	if (strcmp(key, "timelimit") == 0)
		return take_timelimit(m, v, H);
	if (strcmp(key, "root_id") == 0)
		return take_string(&m->root_id, v, H, key, false);
	if (strcmp(key, "parent_id") == 0)
		return take_string(&m->parent_id, v, H, key, false);
	if (strcmp(key, "argsrepr") == 0)
		return take_string(&m->argsrepr, v, H, key, false);
	if (strcmp(key, "kwargsrepr") == 0)
		return take_string(&m->kwargsrepr, v, H, key, false);
	if (strcmp(key, "origin") == 0)
		return take_string(&m->origin, v, H, key, false);
	if (strcmp(key, "ignore_result") == 0)
		return take_bool(&m->ignore_result, v, H, key);
	if (strcmp(key, MAX_RETRIES_HEADER) == 0)
		return json_is_null(v) ? AIQ_OK
		                       : take_int(&m->max_retries, v, H, key, 0, INT32_MAX, -1);
	return keep_extra(m, key, v);
}

static int decode_properties(aiq__message *m, const json_t *props)
{
	static const char P[] = "property";
	if (props == NULL)
		return AIQ_OK;
	if (!json_is_object(props))
		return aiq__err(AIQ_EPROTO, "message properties must be an object, got %s",
		                aiq__json_type_name(props));
	const json_t *v;
	int rc;
	if ((rc = take_string(&m->correlation_id, json_object_get(props, "correlation_id"), P,
	                      "correlation_id", false)) ||
	    (rc = take_string(&m->reply_to, json_object_get(props, "reply_to"), P, "reply_to",
	                      false)))
		return rc;
	v = json_object_get(props, "delivery_mode");
	if (v && !json_is_null(v) &&
	    (rc = take_int(&m->delivery_mode, v, P, "delivery_mode", 1, 2, 2)))
		return rc;
	v = json_object_get(props, "priority");
	if (v && !json_is_null(v) && (rc = take_int(&m->priority, v, P, "priority", 0, 255, 0)))
		return rc;
	return AIQ_OK;
}

static int check_content(const aiq__wire *in)
{
	const char *ct = in->content_type;
	if (ct != NULL && strcasecmp(ct, "application/json") != 0 &&
	    strncasecmp(ct, "application/json;", 17) != 0)
		return aiq__err(AIQ_EPROTO,
		                "content type '%.64s' not accepted (only application/json)", ct);
	const char *ce = in->content_encoding;
	if (ce != NULL && ce[0] != '\0' && strcasecmp(ce, "utf-8") != 0 &&
	    strcasecmp(ce, "utf8") != 0)
		return aiq__err(AIQ_EPROTO, "content encoding '%.64s' not supported (only utf-8)",
		                ce);
	return AIQ_OK;
}

static int parse_body(json_t **out, const aiq__wire *in)
{
	*out = NULL;
	if (in->body == NULL || in->body_len == 0)
		return aiq__err(AIQ_EPROTO, "message body is empty");
	if (in->body_len > AIQ__MAX_MESSAGE_BYTES)
		return aiq__err(AIQ_EPROTO, "message body of %zu bytes exceeds the %u byte limit",
		                in->body_len, AIQ__MAX_MESSAGE_BYTES);
	if (!aiq__utf8_valid((const char *)in->body, in->body_len))
		return aiq__err(AIQ_EPROTO, "message body is not valid UTF-8");
	json_error_t jerr;
	*out = aiq__json_loadb((const char *)in->body, in->body_len, JSON_ALLOW_NUL, &jerr);
	if (*out == NULL)
		return aiq__err(AIQ_EPROTO,
		                "message body is not valid JSON: %s (line %d, column %d)",
		                jerr.text, jerr.line, jerr.column);
	return AIQ_OK;
}

static int take_embed(aiq__message *m, const json_t *embed)
{
	if (embed == NULL || json_is_null(embed) ||
	    (json_is_object(embed) && json_object_size(embed) == 0)) {
		m->embed = default_embed();
	} else if (!json_is_object(embed)) {
		return aiq__err(AIQ_EPROTO, "body embed must be a JSON object, got %s",
		                aiq__json_type_name(embed));
	} else {
		m->embed = json_deep_copy(embed);
	}
	return m->embed ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
}

static int decode_v2_body(aiq__message *m, const json_t *body)
{
	if (!json_is_array(body))
		return aiq__err(AIQ_EPROTO,
		                "body must be a JSON array [args, kwargs, embed], got %s",
		                aiq__json_type_name(body));
	size_t n = json_array_size(body);
	if (n != 2 && n != 3)
		return aiq__err(AIQ_EPROTO,
		                "body must be a JSON array [args, kwargs, embed], got %zu elements",
		                n);
	const json_t *args = json_array_get(body, 0);
	const json_t *kwargs = json_array_get(body, 1);
	if (!json_is_array(args))
		return aiq__err(AIQ_EPROTO, "body args must be a JSON array, got %s",
		                aiq__json_type_name(args));
	if (!json_is_object(kwargs))
		return aiq__err(AIQ_EPROTO, "body kwargs must be a JSON object, got %s",
		                aiq__json_type_name(kwargs));
	if (!(m->args = json_deep_copy(args)) || !(m->kwargs = json_deep_copy(kwargs)))
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
	return take_embed(m, n == 3 ? json_array_get(body, 2) : NULL);
}

/* Everything but the body: headers, content type, properties. */
static int decode_v2_meta(aiq__message *m, const aiq__wire *in)
{
	const json_t *h = in->headers;
	int rc;
	if ((rc = take_string(&m->id, json_object_get(h, "id"), "header", "id", true)) ||
	    (rc = bound_name(&m->id, "header", "id")) ||
	    (rc = take_string(&m->task, json_object_get(h, "task"), "header", "task", true)) ||
	    (rc = bound_name(&m->task, "header", "task")) || (rc = check_content(in)))
		return rc;
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)(uintptr_t)h, key, v)
	{
		if ((rc = decode_v2_header(m, key, v)))
			return rc;
	}
	return decode_properties(m, in->properties);
}

static int decode_v2(aiq__message *m, const aiq__wire *in)
{
	int rc = decode_v2_meta(m, in);
	if (rc != AIQ_OK)
		return rc;
	json_t *body;
	if ((rc = parse_body(&body, in)))
		return rc;
	rc = decode_v2_body(m, body);
	json_decref(body);
	return rc;
}

/* Protocol v1: {"task", "id", "args", "kwargs", "retries", "eta", "expires",
 * "timelimit", "taskset", "callbacks", "errbacks", "chord", "utc"}. */
static int decode_v1_body(aiq__message *m, const json_t *body)
{
	static const char B[] = "body field";
	int rc;
	if ((rc = take_string(&m->id, json_object_get(body, "id"), B, "id", true)) ||
	    (rc = bound_name(&m->id, B, "id")) ||
	    (rc = take_string(&m->task, json_object_get(body, "task"), B, "task", true)) ||
	    (rc = bound_name(&m->task, B, "task")))
		return rc;
	const json_t *args = json_object_get(body, "args");
	const json_t *kwargs = json_object_get(body, "kwargs");
	if (args && !json_is_null(args) && !json_is_array(args))
		return aiq__err(AIQ_EPROTO, "body field 'args' must be a JSON array, got %s",
		                aiq__json_type_name(args));
	if (kwargs && !json_is_null(kwargs) && !json_is_object(kwargs))
		return aiq__err(AIQ_EPROTO, "body field 'kwargs' must be a JSON object, got %s",
		                aiq__json_type_name(kwargs));
	m->args = json_is_array(args) ? json_deep_copy(args) : json_array();
	m->kwargs = json_is_object(kwargs) ? json_deep_copy(kwargs) : json_object();
	if (!m->args || !m->kwargs)
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
	const json_t *retries = json_object_get(body, "retries");
	if ((retries && !json_is_null(retries) &&
	     (rc = take_int(&m->retries, retries, B, "retries", 0, INT32_MAX, 0))) ||
	    (rc = take_time(&m->eta_us, json_object_get(body, "eta"), B, "eta")) ||
	    (rc = take_time(&m->expires_us, json_object_get(body, "expires"), B, "expires")) ||
	    (rc = take_timelimit(m, json_object_get(body, "timelimit"), B)) ||
	    (rc = take_string(&m->group, json_object_get(body, "taskset"), B, "taskset", false)))
		return rc;

	if (!(m->embed = default_embed()))
		return aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
	static const char *const linked[] = {"callbacks", "errbacks", "chord"};
	for (size_t i = 0; i < sizeof linked / sizeof linked[0]; i++) {
		const json_t *v = json_object_get(body, linked[i]);
		if (v == NULL || json_is_null(v))
			continue;
		if (i < 2 && !json_is_array(v))
			return aiq__err(AIQ_EPROTO, "body field '%s' must be a JSON array, got %s",
			                linked[i], aiq__json_type_name(v));
		if (set_new(m->embed, linked[i], json_deep_copy(v)))
			return aiq__err(AIQ_ENOMEM, "out of memory decoding a task message");
	}
	return AIQ_OK;
}

static int decode_v1(aiq__message *m, const aiq__wire *in)
{
	int rc;
	json_t *body;
	if ((rc = check_content(in)) || (rc = parse_body(&body, in)))
		return rc;
	if (!json_is_object(body)) {
		rc = aiq__err(AIQ_EPROTO,
		              "header 'task' is missing and the body is not a protocol 1 task "
		              "(a JSON object), got %s",
		              aiq__json_type_name(body));
		json_decref(body);
		return rc;
	}
	m->protocol = 1;
	rc = decode_v1_body(m, body);
	json_decref(body);
	if (rc != AIQ_OK)
		return rc;
	/* Whatever headers a v1 message carries are kept as they came. */
	if (in->headers) {
		const char *key;
		json_t *v;
		json_object_foreach((json_t *)(uintptr_t)in->headers, key, v)
		{
			if ((rc = keep_extra(m, key, v)))
				return rc;
		}
	}
	return decode_properties(m, in->properties);
}

int aiq__message_from_wire(aiq__message *out, const aiq__wire *in)
{
	aiq__message_init(out);
	if (in == NULL)
		return aiq__err(AIQ_EINVAL, "no message given");
	int rc;
	if (in->headers != NULL && !json_is_object(in->headers))
		rc = aiq__err(AIQ_EPROTO, "message headers must be an object, got %s",
		              aiq__json_type_name(in->headers));
	else if (in->headers != NULL && json_object_get(in->headers, "task") != NULL)
		rc = decode_v2(out, in);
	else
		rc = decode_v1(out, in);
	if (rc != AIQ_OK) {
		/* Keep what identifies the task, so the failure can be reported
		 * against the right id. */
		char *id = out->id, *task = out->task;
		out->id = out->task = NULL;
		aiq__message_clear(out);
		out->id = id;
		out->task = task;
	}
	return rc;
}

void aiq__message_free(aiq__message *m)
{
	if (m == NULL)
		return;
	aiq__message_clear(m);
	free(m);
}

int aiq__message_local(aiq__message **out, const aiq__wire *in, aiq__message *src)
{
	*out = NULL;
	if (in == NULL || src == NULL || !json_is_object(in->headers) ||
	    json_object_get(in->headers, "task") == NULL)
		return aiq__err(AIQ_EINVAL, "a local handoff needs a protocol v2 message");
	aiq__message *m = malloc(sizeof *m);
	if (m == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory handing a message over");
	aiq__message_init(m);
	int rc = decode_v2_meta(m, in);
	if (rc == AIQ_OK) {
		/* The body is [args, kwargs, embed] of these very values: moving
		 * them gives what parsing it would. */
		m->args = src->args ? src->args : json_array();
		m->kwargs = src->kwargs ? src->kwargs : json_object();
		src->args = src->kwargs = NULL;
		if (m->args == NULL || m->kwargs == NULL)
			rc = aiq__err(AIQ_ENOMEM, "out of memory handing a message over");
		else
			rc = take_embed(m, src->embed);
	}
	if (rc != AIQ_OK) {
		aiq__message_free(m);
		return rc;
	}
	*out = m;
	return AIQ_OK;
}
