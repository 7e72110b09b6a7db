/*
 * aiq_config_load_env(): the project's AIQUEUE_* variables, and the CELERY_*
 * variables of the Celery settings that have an equivalent key, converted
 * from Celery's units (float seconds, a prefetch multiplier, a Python dict
 * for broker_transport_options). Every value goes through the public
 * setters, so it is checked exactly as aiq_config_set() checks it.
 */
#include "config_int.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* "worker.prefetch" -> "AIQUEUE_WORKER_PREFETCH" */
static void env_name(char *buf, size_t size, const char *key)
{
	size_t n = (size_t)snprintf(buf, size, "AIQUEUE_");
	for (const char *p = key; *p && n + 1 < size; p++)
		buf[n++] = (char)(*p == '.' ? '_' : toupper((unsigned char)*p));
	buf[n] = '\0';
}

/* True when the project's own variable for `key` is set: it wins over
 * every Celery variable that maps to the same key. */
static bool own_var_set(const char *key)
{
	char name[128];
	env_name(name, sizeof name, key);
	const char *v = getenv(name);
	return v != NULL && *v != '\0';
}

/* Seconds as Python's float() writes them ("300", "2.5", "1e3", " 7 ")
 * scaled by 10^scale and rounded up, so that a short positive time never
 * becomes 0 (which means "none" or "forever"). Exact: no binary floating
 * point, no locale. -1 when the text is not such a number. */
static int parse_seconds(const char *text, int scale, int64_t *out)
{
	const char *p = text;
	while (isspace((unsigned char)*p))
		p++;
	bool neg = *p == '-';
	if (*p == '-' || *p == '+')
		p++;
	int64_t digits = 0;
	int ndigits = 0, frac = 0, exp = 0;
	bool any = false, dropped = false, seen_dot = false;
	for (;; p++) {
		if (*p == '.' && !seen_dot) {
			seen_dot = true;
			continue;
		}
		if (!isdigit((unsigned char)*p))
			break;
		any = true;
		if (ndigits == 0 && *p == '0') {
			if (seen_dot)
				frac++;
			continue;
		}
		if (ndigits < 18) {
			digits = digits * 10 + (*p - '0');
			ndigits++;
			if (seen_dot)
				frac++;
		} else if (seen_dot) {
			dropped |= *p != '0';
		} else {
			return -1; /* more than 18 integer digits: far out of any range */
		}
	}
	if (!any)
		return -1;
	if (*p == 'e' || *p == 'E') {
		p++;
		bool eneg = *p == '-';
		if (*p == '-' || *p == '+')
			p++;
		if (!isdigit((unsigned char)*p))
			return -1;
		for (; isdigit((unsigned char)*p); p++)
			if ((exp = exp * 10 + (*p - '0')) > 400)
				return -1;
		if (eneg)
			exp = -exp;
	}
	while (isspace((unsigned char)*p))
		p++;
	if (*p != '\0')
		return -1;
	int shift = exp + scale - frac;
	int64_t v = digits;
	if (shift >= 0) {
		for (int i = 0; i < shift && v != 0; i++) {
			if (v > INT64_MAX / 10)
				return -1;
			v *= 10;
		}
	} else {
		bool rest = dropped;
		for (int i = 0; i < -shift && v != 0; i++) {
			rest |= v % 10 != 0;
			v /= 10;
		}
		if (rest)
			v++;
	}
	*out = neg ? -v : v;
	return 0;
}

/* How a Celery value becomes ours. */
enum conv {
	CV_TEXT,            /* the same text */
	CV_S,               /* float seconds -> whole seconds, rounded up */
	CV_MS,              /* float seconds -> milliseconds, rounded up */
	CV_PREFETCH,        /* worker_prefetch_multiplier (0 = no limit) */
	CV_DISABLE_PREFETCH /* worker_disable_prefetch: true = multiplier 1 */
};

struct celery_map {
	const char *name; /* Celery's variable, or the transport option's name */
	int key;          /* our key: an AIQ_CFG_* identifier */
	enum conv conv;
};

/* Celery settings with an equivalent key, read from the variables a Celery
 * deployment sets (Celery's own names, upper case, CELERY_ prefix).
 * Later rows win over earlier ones. */
static const struct celery_map celery_vars[] = {
        {"CELERY_BROKER_URL", AIQ_CFG_BROKER_URL, CV_TEXT},
        {"CELERY_RESULT_BACKEND", AIQ_CFG_RESULT_URL, CV_TEXT},
        {"CELERY_TASK_DEFAULT_QUEUE", AIQ_CFG_QUEUE, CV_TEXT},
        {"CELERY_TASK_DEFAULT_QUEUE_TYPE", AIQ_CFG_AMQP_QUEUE_TYPE, CV_TEXT},
        {"CELERY_TASK_QUEUE_MAX_PRIORITY", AIQ_CFG_AMQP_QUEUE_MAX_PRIORITY, CV_TEXT},
        {"CELERY_TASK_SOFT_TIME_LIMIT", AIQ_CFG_TASK_SOFT_TIME_LIMIT_MS, CV_MS},
        {"CELERY_TASK_TIME_LIMIT", AIQ_CFG_TASK_TIME_LIMIT_MS, CV_MS},
        {"CELERY_TASK_TRACK_STARTED", AIQ_CFG_RESULT_TRACK_STARTED, CV_TEXT},
        {"CELERY_RESULT_EXPIRES", AIQ_CFG_RESULT_EXPIRES_S, CV_S},
        {"CELERY_WORKER_CONCURRENCY", AIQ_CFG_WORKER_CONCURRENCY, CV_TEXT},
        {"CELERY_WORKER_MAX_TASKS_PER_CHILD", AIQ_CFG_WORKER_MAX_TASKS_PER_CHILD, CV_TEXT},
        {"CELERY_WORKER_MAX_MEMORY_PER_CHILD", AIQ_CFG_WORKER_MAX_MEMORY_PER_CHILD, CV_TEXT},
        {"CELERY_WORKER_PREFETCH_MULTIPLIER", AIQ_CFG_WORKER_PREFETCH_MULTIPLIER, CV_PREFETCH},
        {"CELERY_WORKER_DISABLE_PREFETCH", AIQ_CFG_WORKER_PREFETCH_MULTIPLIER, CV_DISABLE_PREFETCH},
        {"CELERY_BROKER_HEARTBEAT", AIQ_CFG_AMQP_HEARTBEAT_S, CV_S},
        {"CELERY_BROKER_CONNECTION_TIMEOUT", AIQ_CFG_AMQP_CONNECT_TIMEOUT_MS, CV_MS},
        {"CELERY_REDIS_SOCKET_TIMEOUT", AIQ_CFG_REDIS_SOCKET_TIMEOUT_MS, CV_MS},
        {"CELERY_REDIS_SOCKET_CONNECT_TIMEOUT", AIQ_CFG_REDIS_CONNECT_TIMEOUT_MS, CV_MS},
};

/* broker_transport_options entries with an equivalent key (kombu's names);
 * every other option is for a kombu feature this library does not have.
 * They are applied after the variables above: in kombu too they override
 * the connection's own settings. */
static const struct celery_map transport_options[] = {
        {"visibility_timeout", AIQ_CFG_REDIS_VISIBILITY_TIMEOUT_S, CV_S},
        {"socket_timeout", AIQ_CFG_REDIS_SOCKET_TIMEOUT_MS, CV_MS},
        {"socket_connect_timeout", AIQ_CFG_REDIS_CONNECT_TIMEOUT_MS, CV_MS},
        {"polling_interval", AIQ_CFG_REDIS_POLL_MS, CV_MS},  /* kombu's BRPOP timeout */
        {"master_name", AIQ_CFG_REDIS_MASTER_NAME, CV_TEXT}, /* sentinel:// */
        /* py-amqp's Connection() arguments, which kombu lets these override */
        {"connect_timeout", AIQ_CFG_AMQP_CONNECT_TIMEOUT_MS, CV_MS},
        {"heartbeat", AIQ_CFG_AMQP_HEARTBEAT_S, CV_S},
};

/* CELERY_WORKER_DISABLE_PREFETCH=true: Celery lets it win over the multiplier. */
static bool disable_prefetch(void)
{
	const char *v = getenv("CELERY_WORKER_DISABLE_PREFETCH");
	int b = 0;
	return v != NULL && aiq__config_parse_bool(v, &b) == 0 && b;
}

static const char *key_of(const struct celery_map *m)
{
	return aiq__config_key_name((size_t)m->key);
}

static int apply_celery(aiq_config *cfg, const struct celery_map *m, const char *text)
{
	const char *key = key_of(m);
	int64_t n;
	switch (m->conv) {
	case CV_TEXT: {
		/* Python's int() and strtobool() take surrounding blanks. */
		char buf[64];
		size_t len = strlen(text);
		if (aiq_config_get_int(&n, cfg, key) == AIQ_OK && len < sizeof buf) {
			while (len > 0 && isspace((unsigned char)text[len - 1]))
				len--;
			while (len > 0 && isspace((unsigned char)*text)) {
				text++;
				len--;
			}
			memcpy(buf, text, len);
			buf[len] = '\0';
			text = buf;
		}
		return aiq_config_set(cfg, key, text);
	}
	case CV_S:
	case CV_MS:
		if (parse_seconds(text, m->conv == CV_MS ? 3 : 0, &n) != 0)
			return aiq__err(AIQ_EINVAL,
			                "expects seconds (a number such as 300 or 2.5) for '%s', "
			                "got '%.64s'",
			                key, aiq__config_shown(text));
		return aiq_config_set_int(cfg, key, n);
	case CV_PREFETCH:
		if (parse_seconds(text, 0, &n) != 0 || strpbrk(text, ".eE") != NULL)
			return aiq__err(AIQ_EINVAL, "expects an integer multiplier, got '%.64s'",
			                aiq__config_shown(text));
		/* Celery's 0 means no limit: the largest worker.prefetch, unless
		 * AIQUEUE_WORKER_PREFETCH says otherwise or prefetch is disabled. */
		if (n == 0)
			return own_var_set(aiq__config_key_name(AIQ_CFG_WORKER_PREFETCH)) ||
			                       disable_prefetch()
			               ? AIQ_OK
			               : aiq_config_set_int(
			                         cfg, aiq__config_key_name(AIQ_CFG_WORKER_PREFETCH),
			                         aiq__cfg_int_max(AIQ_CFG_WORKER_PREFETCH));
		return aiq_config_set_int(cfg, key, n);
	case CV_DISABLE_PREFETCH: {
		int b;
		if (aiq__config_parse_bool(text, &b) != 0)
			return aiq__err(AIQ_EINVAL, "expects a boolean (true/false), got '%.64s'",
			                aiq__config_shown(text));
		return b ? aiq_config_set_int(cfg, key, 1) : AIQ_OK;
	}
	}
	return aiq__err(AIQ_ERROR, "corrupt Celery table");
}

/* A Python dict literal as Celery's settings hold it ("{'visibility_timeout':
 * 3600, 'x': True}") rewritten as JSON; plain JSON passes unchanged.
 * NULL with *bad = the offending byte (or SIZE_MAX: out of memory). */
static char *py_dict_to_json(const char *in, size_t *bad)
{
	size_t len = strlen(in), o = 0, i = 0;
	char *out = malloc(3 * len + 16); /* "." -> "0.0" is the largest growth */
	if (out == NULL) {
		*bad = SIZE_MAX;
		return NULL;
	}
	while (i < len) {
		unsigned char c = (unsigned char)in[i];
		if (c == '\'' || c == '"') {
			out[o++] = '"';
			for (i++; i < len && in[i] != (char)c;) {
				if (in[i] == '\\') {
					char e = in[i + 1];
					if (e == '\'') {
						out[o++] = '\'';
						i += 2;
					} else if (e == 'x' && isxdigit((unsigned char)in[i + 2]) &&
					           isxdigit((unsigned char)in[i + 3])) {
						memcpy(out + o, "\\u00", 4);
						o += 4;
						out[o++] = in[i + 2];
						out[o++] = in[i + 3];
						i += 4;
					} else if (e != '\0' && strchr("\"\\/bfnrtu", e)) {
						out[o++] = '\\';
						out[o++] = e;
						i += 2;
					} else {
						goto fail;
					}
				} else if (in[i] == '"') {
					out[o++] = '\\';
					out[o++] = in[i++];
				} else {
					out[o++] = in[i++];
				}
			}
			if (i >= len)
				goto fail;
			out[o++] = '"';
			i++;
		} else if (isalpha(c) || c == '_') {
			size_t s = i;
			while (i < len &&
			       (isalnum((unsigned char)in[i]) || in[i] == '_' || in[i] == '.'))
				i++;
			/* broker_use_ssl's ssl.CERT_* constants, as their names */
			if (i - s > 9 && memcmp(in + s, "ssl.CERT_", 9) == 0) {
				out[o++] = '"';
				memcpy(out + o, in + s + 4, i - s - 4);
				o += i - s - 4;
				out[o++] = '"';
				continue;
			}
			static const char *const words[][2] = {
			        {"True", "true"},   {"true", "true"}, {"False", "false"},
			        {"false", "false"}, {"None", "null"}, {"null", "null"},
			};
			const char *w = NULL;
			for (size_t j = 0; j < sizeof words / sizeof words[0]; j++)
				if (strlen(words[j][0]) == i - s &&
				    memcmp(in + s, words[j][0], i - s) == 0)
					w = words[j][1];
			if (w == NULL) {
				i = s;
				goto fail;
			}
			memcpy(out + o, w, strlen(w));
			o += strlen(w);
		} else if (isdigit(c) || c == '.' || c == '-' || c == '+') {
			if (c == '-')
				out[o++] = in[i++];
			else if (c == '+')
				i++;
			if (in[i] == '.')
				out[o++] = '0';
			while (isdigit((unsigned char)in[i]))
				out[o++] = in[i++];
			if (in[i] == '.') {
				out[o++] = in[i++];
				if (!isdigit((unsigned char)in[i]))
					out[o++] = '0';
				while (isdigit((unsigned char)in[i]))
					out[o++] = in[i++];
			}
			if (in[i] == 'e' || in[i] == 'E') {
				out[o++] = in[i++];
				if (in[i] == '-' || in[i] == '+')
					out[o++] = in[i++];
				while (isdigit((unsigned char)in[i]))
					out[o++] = in[i++];
			}
		} else if (c == '}' || c == ']' || c == ')') {
			/* Python allows a trailing comma; JSON does not. */
			size_t j = o;
			while (j > 0 && isspace((unsigned char)out[j - 1]))
				j--;
			if (j > 0 && out[j - 1] == ',')
				out[j - 1] = ' ';
			out[o++] = (char)(c == ')' ? ']' : c);
			i++;
		} else if (c == '(') {
			out[o++] = '[';
			i++;
		} else if (strchr("{[:, \t\r\n", c)) {
			out[o++] = in[i++];
		} else {
			goto fail;
		}
	}
	out[o] = '\0';
	return out;
fail:
	*bad = i;
	free(out);
	return NULL;
}

/* A Python dict literal or JSON object; `example` goes in the messages. */
static int parse_dict(json_t **out, const char *text, const char *example)
{
	size_t bad = 0;
	char *js = py_dict_to_json(text, &bad);
	if (js == NULL)
		return bad == SIZE_MAX ? aiq__err(AIQ_ENOMEM, "out of memory")
		                       : aiq__err(AIQ_EINVAL,
		                                  "expects a dict such as %s; byte %zu is not part "
		                                  "of a literal",
		                                  example, bad);
	json_error_t err;
	*out = json_loads(js, JSON_REJECT_DUPLICATES, &err);
	free(js);
	if (!json_is_object(*out)) {
		int rc = aiq__err(AIQ_EINVAL, "expects a dict such as %s: %s (column %d)", example,
		                  *out ? "not a dict" : err.text, *out ? 0 : err.column);
		json_decref(*out);
		*out = NULL;
		return rc;
	}
	return AIQ_OK;
}

static int apply_transport_options(aiq_config *cfg, const char *text)
{
	json_t *opts = NULL;
	int rc = parse_dict(&opts, text, "{'visibility_timeout': 3600}");
	if (rc != AIQ_OK)
		return rc;
	for (size_t i = 0;
	     rc == AIQ_OK && i < sizeof transport_options / sizeof transport_options[0]; i++) {
		const struct celery_map *m = &transport_options[i];
		json_t *v = json_object_get(opts, m->name);
		if (v == NULL || json_is_null(v) || own_var_set(key_of(m)))
			continue;
		if (m->conv == CV_TEXT) {
			rc = json_is_string(v)
			             ? aiq_config_set(cfg, key_of(m), json_string_value(v))
			             : aiq__err(AIQ_EINVAL, "%s must be a string", m->name);
			continue;
		}
		if (!json_is_number(v)) {
			rc = aiq__err(AIQ_EINVAL, "%s must be a number of seconds", m->name);
			break;
		}
		char *num = json_dumps(v, JSON_ENCODE_ANY);
		if (num == NULL) {
			rc = aiq__err(AIQ_ENOMEM, "out of memory");
			break;
		}
		rc = apply_celery(cfg, m, num);
		free(num);
		if (rc != AIQ_OK) {
			char detail[256];
			snprintf(detail, sizeof detail, "%s", aiq_error_last());
			rc = aiq__err(rc, "%s: %s", m->name, detail);
		}
	}
	/* Celery's sentinel_kwargs: the sentinels' own password. */
	json_t *spw = json_object_get(json_object_get(opts, "sentinel_kwargs"), "password");
	const char *spw_key = aiq__config_key_name(AIQ_CFG_REDIS_SENTINEL_PASSWORD);
	if (rc == AIQ_OK && json_is_string(spw) && !own_var_set(spw_key))
		rc = aiq_config_set(cfg, spw_key, json_string_value(spw));
	json_decref(opts);
	return rc;
}

/* broker_use_ssl: true, or the dict of ssl.wrap_socket() arguments. The
 * files and the verification have keys; TLS itself is the URL's scheme
 * here, so *tls tells the caller to check that the URL asks for it. */
static int apply_use_ssl(aiq_config *cfg, const char *text, bool *tls)
{
	int b;
	if (aiq__config_parse_bool(text, &b) == 0) {
		*tls = b;
		return AIQ_OK;
	}
	json_t *opts = NULL;
	int rc = parse_dict(&opts, text, "{'ca_certs': '/etc/ssl/ca.pem', 'cert_reqs': 2} or true");
	if (rc != AIQ_OK)
		return rc;
	*tls = true;
	static const struct {
		const char *option;
		enum aiq__cfg_str key;
	} files[] = {
	        {"ca_certs", AIQ_CFG_AMQP_SSL_CACERT},
	        {"certfile", AIQ_CFG_AMQP_SSL_CERT},
	        {"keyfile", AIQ_CFG_AMQP_SSL_KEY},
	};
	for (size_t i = 0; rc == AIQ_OK && i < sizeof files / sizeof files[0]; i++) {
		const char *key = aiq__config_key_name(files[i].key);
		json_t *v = json_object_get(opts, files[i].option);
		if (v == NULL || json_is_null(v) || own_var_set(key))
			continue;
		rc = json_is_string(v) ? aiq_config_set_str(cfg, key, json_string_value(v))
		                       : aiq__err(AIQ_EINVAL, "%s must be a path", files[i].option);
	}
	/* cert_reqs: ssl.CERT_NONE (0) turns verification off; CERT_OPTIONAL (1)
	 * and CERT_REQUIRED (2) verify (a server always sends its certificate). */
	json_t *reqs = json_object_get(opts, "cert_reqs");
	if (rc == AIQ_OK && reqs != NULL && !json_is_null(reqs) &&
	    !own_var_set(aiq__config_key_name(AIQ_CFG_AMQP_SSL_VERIFY))) {
		const char *name = json_string_value(reqs);
		json_int_t n = json_is_integer(reqs) ? json_integer_value(reqs) : -1;
		if (name != NULL)
			n = !strcasecmp(name, "CERT_NONE") || !strcasecmp(name, "none") ? 0
			    : !strcasecmp(name, "CERT_OPTIONAL") || !strcasecmp(name, "optional")
			            ? 1
			    : !strcasecmp(name, "CERT_REQUIRED") || !strcasecmp(name, "required")
			            ? 2
			            : -1;
		rc = n >= 0 && n <= 2
		             ? aiq_config_set_bool(
		                       cfg, aiq__config_key_name(AIQ_CFG_AMQP_SSL_VERIFY), n != 0)
		             : aiq__err(AIQ_EINVAL,
		                        "cert_reqs must be ssl.CERT_NONE, CERT_OPTIONAL or "
		                        "CERT_REQUIRED (0, 1 or 2)");
	}
	json_decref(opts);
	return rc;
}

/* Every URL of the (failover) list uses a TLS scheme. */
static bool urls_use_tls(const char *list)
{
	for (const char *p = list; *p;) {
		while (*p == ';' || *p == ' ')
			p++;
		if (*p == '\0')
			break;
		if (strncasecmp(p, "amqps://", 8) != 0 && strncasecmp(p, "rediss://", 9) != 0)
			return false;
		p += strcspn(p, ";");
	}
	return true;
}

/* Name the variable in the error aiq_config_set() (or a conversion) left. */
static int env_error(int rc, const char *var)
{
	char detail[256];
	snprintf(detail, sizeof detail, "%s", aiq_error_last());
	return aiq__err(rc, "environment variable %s: %s", var, detail);
}

static const char *env_value(const char *var)
{
	const char *v = getenv(var);
	return v != NULL && *v != '\0' ? v : NULL;
}

/* Everything is applied to a scratch copy first, so a bad variable leaves
 * `cfg` as it was. */
AIQ_API int aiq_config_load_env(aiq_config *cfg)
{
	if (cfg == NULL)
		return aiq__err(AIQ_EINVAL, "cfg must not be NULL");
	aiq_config *next = NULL;
	int rc = aiq_config_copy(&next, cfg);
	if (rc != AIQ_OK)
		return rc;
	for (size_t i = 0; rc == AIQ_OK && i < sizeof celery_vars / sizeof celery_vars[0]; i++) {
		const char *val = env_value(celery_vars[i].name);
		if (val == NULL || own_var_set(key_of(&celery_vars[i])))
			continue;
		rc = apply_celery(next, &celery_vars[i], val);
		if (rc != AIQ_OK)
			rc = env_error(rc, celery_vars[i].name);
	}
	const char *opts = env_value("CELERY_BROKER_TRANSPORT_OPTIONS");
	if (rc == AIQ_OK && opts != NULL) {
		rc = apply_transport_options(next, opts);
		if (rc != AIQ_OK)
			rc = env_error(rc, "CELERY_BROKER_TRANSPORT_OPTIONS");
	}
	bool tls = false;
	const char *ssl = env_value("CELERY_BROKER_USE_SSL");
	if (rc == AIQ_OK && ssl != NULL) {
		rc = apply_use_ssl(next, ssl, &tls);
		if (rc != AIQ_OK)
			rc = env_error(rc, "CELERY_BROKER_USE_SSL");
	}
	for (size_t i = 0; rc == AIQ_OK && i < aiq__config_key_count(); i++) {
		const char *key = aiq__config_key_name(i);
		char var[128];
		env_name(var, sizeof var, key);
		const char *val = env_value(var);
		if (val == NULL)
			continue;
		rc = aiq_config_set(next, key, val);
		if (rc != AIQ_OK)
			rc = env_error(rc, var);
	}
	/* Celery turns TLS on for an amqp:// URL; here the URL says it. Going
	 * on without TLS would send the password in clear, so refuse. */
	if (rc == AIQ_OK && tls && !urls_use_tls(aiq__cfg_str(next, AIQ_CFG_BROKER_URL)))
		rc = aiq__err(AIQ_EINVAL,
		              "environment variable CELERY_BROKER_USE_SSL: TLS is chosen by the "
		              "broker URL here: write amqps://…:5671/… (or rediss://) in "
		              "CELERY_BROKER_URL or AIQUEUE_BROKER_URL");
	if (rc == AIQ_OK)
		aiq__config_swap(cfg, next);
	aiq_config_free(next);
	return rc;
}
