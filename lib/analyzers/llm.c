/*
 * The `llm` analyzer: one chat-completions request to an OpenAI-compatible
 * server (Ollama's /v1, vLLM, llama.cpp's server, hosted APIs) per task,
 * asking for a JSON object about the lyrics.
 *
 * Every registered name (`llm` and each preset from llm.presets) owns an
 * immutable copy of its settings as userdata, so pool threads read them
 * without locks. Each pool thread keeps one curl easy handle in
 * thread-local storage and reuses it (keep-alive); the handle is cleaned up
 * when the thread exits. curl_global_init() runs once, the first time a
 * worker is created; no global curl state is touched after that.
 *
 * Outcomes: a JSON object -> success; 429/5xx/408 -> retry honouring
 * Retry-After; connection errors and timeouts -> retry with backoff; other
 * 4xx and unusable answers -> a typed failure that says what to fix.
 *
 * The HTTP exchange itself (aiq__llm_post) and the endpoint and key
 * resolution (aiq__llm_endpoint) are shared with the embeddings client
 * (embed.c) through llm_int.h.
 */
#include "analyzer.h"
#include "config_int.h"
#include "llm_int.h"
#include "url.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXC_MODULE        "aiqueue"
#define EXCERPT_BYTES     160
#define PLACEHOLDER       "{{lyrics}}"
#define CHAT_PATH         "/chat/completions"
#define MAX_URL_BYTES     2048
#define ERRMSG_BYTES      1024
#define TEMPERATURE_LIMIT 2.0

static const char default_system_prompt[] =
        "You are a music analyst. You read song lyrics and answer with one JSON object only, "
        "no prose and no code fences. Use these keys: \"language\" (ISO 639-1 code), "
        "\"themes\" (array of short strings), \"mood\" (one word), \"sentiment\" (number "
        "from -1 to 1), \"summary\" (one sentence), \"explicit\" (boolean).";

static const char default_prompt_template[] = "Analyze these lyrics:\n\n" PLACEHOLDER;

struct llm_settings {
	char *name; /* analyzer name, for messages */
	char *base_url;
	char *safe_base_url; /* base_url with its credentials hidden, for messages */
	char *model;
	char *api_key; /* never logged, never put in a message */
	char *system_prompt;
	char *prompt_template;
	bool has_temperature;
	double temperature;
	int64_t max_tokens;
	int64_t timeout_ms;
	int64_t connect_timeout_ms;
	int64_t max_response_bytes;
	int64_t retry_after_max_ms;
	bool json_mode;
};

/* ---- process-wide start-up (once) ----------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;
static pthread_key_t handle_key;
static bool handle_key_ok;

static void handle_destroy(void *handle)
{
	curl_easy_cleanup(handle);
}

static void curl_start(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	handle_key_ok = pthread_key_create(&handle_key, handle_destroy) == 0;
}

/* This thread's easy handle, created on first use, reset for a new request
 * (curl_easy_reset keeps live connections and caches). */
static CURL *thread_handle(void)
{
	CURL *curl = pthread_getspecific(handle_key);
	if (curl) {
		curl_easy_reset(curl);
		return curl;
	}
	curl = curl_easy_init();
	if (curl && pthread_setspecific(handle_key, curl) != 0) {
		curl_easy_cleanup(curl);
		curl = NULL;
	}
	return curl;
}

/* ---- settings ----------------------------------------------------------- */

static void settings_free(void *p)
{
	struct llm_settings *s = p;
	if (s == NULL)
		return;
	free(s->name);
	free(s->base_url);
	free(s->safe_base_url);
	free(s->model);
	if (s->api_key) { /* NULL once handed out by aiq__llm_endpoint */
		memset(s->api_key, 0, strlen(s->api_key));
		free(s->api_key);
	}
	free(s->system_prompt);
	free(s->prompt_template);
	free(s);
}

static int replace_str(char **slot, const char *value, size_t len)
{
	char *copy = aiq__strndup(value, len);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	free(*slot);
	*slot = copy;
	return AIQ_OK;
}

/* Locale-independent decimal parsing: jansson's number grammar. */
static int parse_temperature(struct llm_settings *s, const char *text, size_t len,
                             const char *where)
{
	if (len == 0) {
		s->has_temperature = false;
		return AIQ_OK;
	}
	json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
	bool ok = json_is_number(v);
	double t = ok ? json_number_value(v) : 0;
	json_decref(v);
	if (!ok || t < 0 || t > TEMPERATURE_LIMIT)
		return aiq__err(AIQ_EINVAL,
		                "%s: temperature must be a number from 0 to 2, got '%.*s'", where,
		                (int)(len > 32 ? 32 : len), text);
	s->has_temperature = true;
	s->temperature = t;
	return AIQ_OK;
}

static int parse_int_field(int64_t *out, const char *text, size_t len, int64_t lo, int64_t hi,
                           const char *what, const char *where)
{
	char buf[32];
	if (len == 0 || len >= sizeof buf)
		goto bad;
	memcpy(buf, text, len);
	buf[len] = '\0';
	char *end;
	long long v = strtoll(buf, &end, 10);
	if (*end != '\0' || v < lo || v > hi)
		goto bad;
	*out = v;
	return AIQ_OK;
bad:
	return aiq__err(AIQ_EINVAL, "%s: %s must be an integer from %lld to %lld", where, what,
	                (long long)lo, (long long)hi);
}

static int check_base_url(struct llm_settings *s, const char *where)
{
	const char *u = s->base_url;
	free(s->safe_base_url);
	if ((s->safe_base_url = aiq__url_redact(u)) == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
		return aiq__err(AIQ_EINVAL,
		                "%s: base URL must start with http:// or https://, got '%.100s'",
		                where, s->safe_base_url);
	if (strlen(u) + sizeof CHAT_PATH > MAX_URL_BYTES)
		return aiq__err(AIQ_EINVAL, "%s: base URL is too long", where);
	if (*s->model == '\0')
		return aiq__err(AIQ_EINVAL,
		                "%s: no model: set llm.model (e.g. qwen2.5:7b-instruct)", where);
	return AIQ_OK;
}

const char *aiq__llm_api_key_from_env(void)
{
	const char *k = getenv("AIQUEUE_LLM_API_KEY");
	if (k == NULL || *k == '\0')
		k = getenv("OPENAI_API_KEY");
	return k ? k : "";
}

/* The `llm` settings straight from the configuration. */
static int settings_from_config(struct llm_settings **out, const aiq_config *cfg)
{
	struct llm_settings *s = calloc(1, sizeof *s);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	const char *key = aiq__cfg_str(cfg, AIQ_CFG_LLM_API_KEY);
	const char *sys = aiq__cfg_str(cfg, AIQ_CFG_LLM_SYSTEM_PROMPT);
	const char *tpl = aiq__cfg_str(cfg, AIQ_CFG_LLM_PROMPT_TEMPLATE);
	s->name = aiq__strdup("llm");
	s->base_url = aiq__strdup(aiq__cfg_str(cfg, AIQ_CFG_LLM_BASE_URL));
	s->model = aiq__strdup(aiq__cfg_str(cfg, AIQ_CFG_LLM_MODEL));
	s->api_key = aiq__strdup(*key ? key : aiq__llm_api_key_from_env());
	s->system_prompt = aiq__strdup(*sys ? sys : default_system_prompt);
	s->prompt_template = aiq__strdup(*tpl ? tpl : default_prompt_template);
	if (!s->name || !s->base_url || !s->model || !s->api_key || !s->system_prompt ||
	    !s->prompt_template) {
		settings_free(s);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	/* A trailing slash would give "//chat/completions", which some servers refuse. */
	size_t n = strlen(s->base_url);
	while (n > 0 && s->base_url[n - 1] == '/')
		s->base_url[--n] = '\0';
	s->max_tokens = aiq__cfg_int(cfg, AIQ_CFG_LLM_MAX_TOKENS);
	s->timeout_ms = aiq__cfg_int(cfg, AIQ_CFG_LLM_TIMEOUT_MS);
	s->connect_timeout_ms = aiq__cfg_int(cfg, AIQ_CFG_LLM_CONNECT_TIMEOUT_MS);
	s->max_response_bytes = aiq__cfg_int(cfg, AIQ_CFG_LLM_MAX_RESPONSE_BYTES);
	s->retry_after_max_ms = aiq__cfg_int(cfg, AIQ_CFG_LLM_RETRY_AFTER_MAX_MS);
	s->json_mode = aiq__cfg_bool(cfg, AIQ_CFG_LLM_JSON_MODE);
	const char *temp = aiq__cfg_str(cfg, AIQ_CFG_LLM_TEMPERATURE);
	int rc = parse_temperature(s, temp, strlen(temp),
	                           aiq__config_key_name(AIQ_CFG_LLM_TEMPERATURE));
	if (rc == AIQ_OK)
		rc = check_base_url(s, "llm");
	if (rc != AIQ_OK) {
		settings_free(s);
		return rc;
	}
	*out = s;
	return AIQ_OK;
}

static int settings_copy(struct llm_settings **out, const struct llm_settings *src,
                         const char *name, size_t name_len)
{
	struct llm_settings *s = calloc(1, sizeof *s);
	if (s == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	*s = *src;
	s->name = aiq__strndup(name, name_len);
	s->base_url = aiq__strdup(src->base_url);
	s->safe_base_url = aiq__url_redact(src->base_url);
	s->model = aiq__strdup(src->model);
	s->api_key = aiq__strdup(src->api_key);
	s->system_prompt = aiq__strdup(src->system_prompt);
	s->prompt_template = aiq__strdup(src->prompt_template);
	if (!s->name || !s->base_url || !s->safe_base_url || !s->model || !s->api_key ||
	    !s->system_prompt || !s->prompt_template) {
		settings_free(s);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	*out = s;
	return AIQ_OK;
}

/* One "field:value" of a preset. Values may contain ':' (URLs, Ollama tags). */
static int preset_field(struct llm_settings *s, const char *f, size_t len, const char *where)
{
	const char *colon = memchr(f, ':', len);
	if (colon == NULL)
		return aiq__err(AIQ_EINVAL, "%s: expected field:value, got '%.*s'", where,
		                (int)(len > 60 ? 60 : len), f);
	size_t klen = (size_t)(colon - f);
	const char *v = colon + 1;
	size_t vlen = len - klen - 1;
#define IS(k) (klen == sizeof(k) - 1 && memcmp(f, k, klen) == 0)
	if (IS("model"))
		return replace_str(&s->model, v, vlen);
	if (IS("base_url")) {
		int rc = replace_str(&s->base_url, v, vlen);
		size_t n = strlen(s->base_url);
		while (rc == AIQ_OK && n > 0 && s->base_url[n - 1] == '/')
			s->base_url[--n] = '\0';
		return rc;
	}
	if (IS("api_key_env")) {
		char name[128];
		if (vlen == 0 || vlen >= sizeof name)
			return aiq__err(AIQ_EINVAL, "%s: api_key_env needs a variable name", where);
		memcpy(name, v, vlen);
		name[vlen] = '\0';
		const char *key = getenv(name);
		return replace_str(&s->api_key, key ? key : "", key ? strlen(key) : 0);
	}
	if (IS("temperature"))
		return parse_temperature(s, v, vlen, where);
	if (IS("max_tokens"))
		return parse_int_field(&s->max_tokens, v, vlen, 1, 1000000, "max_tokens", where);
	if (IS("timeout_ms"))
		return parse_int_field(&s->timeout_ms, v, vlen, 100, INT64_C(86400000),
		                       "timeout_ms", where);
	if (IS("json_mode")) {
		int64_t b = 0;
		int rc = parse_int_field(&b, v, vlen, 0, 1, "json_mode (0 or 1)", where);
		s->json_mode = b != 0;
		return rc;
	}
#undef IS
	return aiq__err(AIQ_EINVAL,
	                "%s: unknown field '%.*s' (known: model, base_url, api_key_env, "
	                "temperature, max_tokens, timeout_ms, json_mode)",
	                where, (int)(klen > 40 ? 40 : klen), f);
}

/* ---- the request ---------------------------------------------------------- */

struct buffer {
	char *data;
	size_t len, cap, limit;
	bool over_limit;
};

struct transfer {
	aiq_task *task;
	struct buffer body;
};

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct buffer *b = userdata;
	size_t n = size * nmemb;
	if (b->len + n > b->limit) {
		b->over_limit = true;
		return 0; /* CURLE_WRITE_ERROR ends the transfer */
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 16384;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *d = realloc(b->data, cap);
		if (d == NULL)
			return 0;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
	struct transfer *x = userdata;
	/* non-zero aborts the transfer */
	return x->task != NULL && aiq_task_cancelled(x->task) != 0;
}

/* Copy at most `max` bytes of `s` into `out`, cut on a UTF-8 boundary, with
 * control characters shown as spaces, non-ASCII bytes as '?' when the text is
 * not valid UTF-8, and "…" when cut. */
static void excerpt(char *out, size_t size, const char *s, size_t len, size_t max)
{
	if (size == 0)
		return;
	bool cut = len > max;
	size_t n = cut ? max : len;
	while (cut && n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
		n--; /* do not split a UTF-8 sequence */
	if (n + 4 > size)
		n = size > 4 ? size - 4 : 0;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		out[o++] = (char)(c < 0x20 || c == 0x7F ? ' ' : c);
	}
	/* The excerpt goes into a task's exc_message, which must be UTF-8. */
	if (!aiq__utf8_valid(out, o))
		for (size_t i = 0; i < o; i++)
			if ((unsigned char)out[i] >= 0x80)
				out[i] = '?';
	if (cut && o + 3 < size) {
		memcpy(out + o, "\xE2\x80\xA6", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* Never let the key reach a stored message, even when a server echoes it. */
void aiq__llm_scrub_key(char *msg, const char *key)
{
	size_t klen = strlen(key);
	if (klen < 4)
		return;
	for (char *p = strstr(msg, key); p; p = strstr(p, key)) {
		memset(p, '*', klen);
		p += klen;
	}
}

static void fail_with(aiq_task *t, const struct llm_settings *s, const char *type, const char *fmt,
                      ...) AIQ__PRINTF(4, 5);
static void fail_with(aiq_task *t, const struct llm_settings *s, const char *type, const char *fmt,
                      ...)
{
	char msg[ERRMSG_BYTES];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	aiq__llm_scrub_key(msg, s->api_key);
	aiq__log(AIQ_LOG_WARNING, "analyzer %s, task %s: %s: %s", s->name, aiq_task_id(t), type,
	         msg);
	aiq_task_fail(t, type, msg, EXC_MODULE);
}

static void retry_with(aiq_task *t, const struct llm_settings *s, int64_t countdown_ms,
                       const char *fmt, ...) AIQ__PRINTF(4, 5);
static void retry_with(aiq_task *t, const struct llm_settings *s, int64_t countdown_ms,
                       const char *fmt, ...)
{
	char msg[ERRMSG_BYTES];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	aiq__llm_scrub_key(msg, s->api_key);
	aiq__log(AIQ_LOG_INFO, "analyzer %s, task %s: retrying: %s", s->name, aiq_task_id(t), msg);
	aiq_task_retry(t, countdown_ms, msg);
}

/* Retry-After as delta-seconds or an HTTP date; -1 when absent or unusable
 * (the worker's backoff applies then). */
static int64_t retry_after_ms(CURL *curl, int64_t max_ms)
{
	struct curl_header *h = NULL;
	if (curl_easy_header(curl, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
		return -1;
	const char *v = h->value;
	while (*v == ' ')
		v++;
	int64_t ms = -1;
	if (*v >= '0' && *v <= '9') {
		char *end;
		long long secs = strtoll(v, &end, 10);
		while (*end == ' ')
			end++;
		if (*end == '\0' && secs >= 0 && secs < INT64_C(1) << 40)
			ms = (int64_t)secs * 1000;
	} else {
		time_t when = curl_getdate(v, NULL);
		if (when != (time_t)-1) {
			int64_t delta = (int64_t)when * 1000 - aiq__now_ms();
			ms = delta > 0 ? delta : 0;
		}
	}
	if (ms > max_ms)
		ms = max_ms;
	return ms;
}

bool aiq__llm_status_transient(long status)
{
	return status == 429 || status == 408 || status >= 500;
}

int aiq__llm_start(void)
{
	pthread_once(&curl_once, curl_start);
	if (curl_init_rc != CURLE_OK || !handle_key_ok)
		return aiq__err(AIQ_ERROR, "libcurl could not be initialised: %s",
		                curl_easy_strerror(curl_init_rc));
	return AIQ_OK;
}

void aiq__llm_reply_clear(struct aiq__llm_reply *r)
{
	free(r->body);
	memset(r, 0, sizeof *r);
}

int aiq__llm_post(struct aiq__llm_reply *out, const struct aiq__llm_request *req)
{
	memset(out, 0, sizeof *out);
	out->retry_after_ms = -1;
	int rc = aiq__llm_start();
	if (rc != AIQ_OK)
		return rc;
	const char *key = req->api_key ? req->api_key : "";
	char *auth = *key ? aiq__asprintf("Authorization: Bearer %s", key) : NULL;
	CURL *curl = thread_handle();
	struct curl_slist *headers = NULL;
	bool oom = (*key && !auth) || !curl;
	const char *lines[] = {"Content-Type: application/json", "Accept: application/json",
	                       "Expect:" /* no 100-continue round trip */, auth};
	for (size_t i = 0; !oom && i < sizeof lines / sizeof lines[0] && lines[i]; i++) {
		struct curl_slist *h = curl_slist_append(headers, lines[i]);
		oom = h == NULL;
		headers = h ? h : headers;
	}
	struct transfer x = {.task = req->task, .body = {.limit = (size_t)req->max_response_bytes}};
	if (oom) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory preparing the request");
		goto out;
	}
	char errbuf[CURL_ERROR_SIZE] = "";
	curl_easy_setopt(curl, CURLOPT_URL, req->url);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for DNS timeouts */
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req->body);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(req->body));
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "libaiqueue/" AIQ_VERSION_STRING);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long)req->connect_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max_response_bytes);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &x.body);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &x);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);

	int64_t start = aiq__mono_ms();
	CURLcode crc = curl_easy_perform(curl);
	out->latency_ms = aiq__mono_ms() - start;
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out->status);
	out->curl_rc = (int)crc;
	out->over_limit = x.body.over_limit || crc == CURLE_FILESIZE_EXCEEDED;
	snprintf(out->curl_error, sizeof out->curl_error, "%s",
	         *errbuf ? errbuf : curl_easy_strerror(crc));
	if (crc == CURLE_OK)
		out->retry_after_ms = retry_after_ms(curl, req->retry_after_max_ms);
	out->body = x.body.data;
	out->len = x.body.len;
	x.body.data = NULL;
	/* The easy handle outlives this call: drop pointers into our locals. */
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, (char *)NULL);
out:
	curl_slist_free_all(headers);
	if (auth) {
		memset(auth, 0, strlen(auth));
		free(auth);
	}
	free(x.body.data);
	return rc;
}

/* The server's own error text: {"error": {"message": …}} (OpenAI, vLLM,
 * llama.cpp), {"error": "…"} (Ollama), {"detail": …}, or the raw body. */
void aiq__llm_server_message(char *out, size_t size, const char *body, size_t len)
{
	json_t *root = len ? json_loadb(body, len, 0, NULL) : NULL;
	json_t *err = json_object_get(root, "error");
	const char *m = json_string_value(json_object_get(err, "message"));
	if (m == NULL)
		m = json_string_value(err);
	if (m == NULL)
		m = json_string_value(json_object_get(root, "detail"));
	if (m)
		excerpt(out, size, m, strlen(m), EXCERPT_BYTES);
	else if (len)
		excerpt(out, size, body, len, EXCERPT_BYTES);
	else
		snprintf(out, size, "(empty body)");
	json_decref(root);
}

static void handle_http_error(aiq_task *t, const struct llm_settings *s,
                              const struct aiq__llm_reply *r, const char *model)
{
	char detail[EXCERPT_BYTES + 8];
	long status = r->status;
	aiq__llm_server_message(detail, sizeof detail, r->body, r->len);
	if (aiq__llm_status_transient(status)) {
		retry_with(t, s, r->retry_after_ms, "HTTP %ld from %s: %s", status,
		           s->safe_base_url, detail);
		return;
	}
	if (status == 401 || status == 403) {
		fail_with(
		        t, s, "LLMAuthError",
		        "HTTP %ld from %s: the server refused the credentials; set a valid key in "
		        "llm.api_key or AIQUEUE_LLM_API_KEY (server said: %s)",
		        status, s->safe_base_url, detail);
		return;
	}
	if (status == 404) {
		fail_with(
		        t, s, "LLMNotFound",
		        "HTTP 404 from %s%s: model '%s' is unknown there or the URL is wrong; "
		        "check "
		        "llm.model (for Ollama: ollama pull %s) and that llm.base_url ends in /v1 "
		        "(server said: %s)",
		        s->safe_base_url, CHAT_PATH, model, model, detail);
		return;
	}
	if (status >= 400) {
		fail_with(t, s, "LLMRequestError",
		          "HTTP %ld from %s: the server rejected the request; check llm.model, "
		          "llm.max_tokens, llm.temperature and llm.json_mode (server said: %s)",
		          status, s->safe_base_url, detail);
		return;
	}
	fail_with(t, s, "LLMProtocolError", "unexpected HTTP %ld from %s: %s", status,
	          s->safe_base_url, detail);
}

static void handle_curl_error(aiq_task *t, const struct llm_settings *s,
                              const struct aiq__llm_reply *r)
{
	CURLcode rc = (CURLcode)r->curl_rc;
	const char *what = r->curl_error;
	if (rc == CURLE_ABORTED_BY_CALLBACK) {
		int why = aiq_task_cancelled(t);
		if (why == AIQ_ETIMEDOUT)
			aiq_task_fail(t, "SoftTimeLimitExceeded",
			              "soft time limit exceeded while waiting for the model",
			              "celery.exceptions");
		else
			aiq_task_fail(t, "TaskCancelled", "cancelled while waiting for the model",
			              EXC_MODULE);
		return;
	}
	if (r->over_limit) {
		fail_with(t, s, "LLMResponseTooLarge",
		          "the answer from %s is larger than llm.max_response_bytes (%lld bytes)",
		          s->safe_base_url, (long long)s->max_response_bytes);
		return;
	}
	switch (rc) {
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
	case CURLE_NOT_BUILT_IN:
		fail_with(t, s, "LLMConfigError", "cannot use llm.base_url '%s': %s",
		          s->safe_base_url, what);
		return;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
		fail_with(t, s, "LLMConfigError", "TLS verification of %s failed: %s",
		          s->safe_base_url, what);
		return;
	case CURLE_OUT_OF_MEMORY:
		aiq_task_fail(t, "MemoryError", "out of memory talking to the model", "builtins");
		return;
	case CURLE_OPERATION_TIMEDOUT:
		retry_with(t, s, -1, "no answer from %s within %lld ms (llm.timeout_ms): %s",
		           s->safe_base_url, (long long)s->timeout_ms, what);
		return;
	default:
		/* Refused or dropped connections, resets, DNS hiccups: transient. */
		retry_with(t, s, -1, "cannot reach %s: %s", s->safe_base_url, what);
		return;
	}
}

/* Strip white space and a Markdown code fence some models add even when
 * asked for bare JSON. */
static void unfence(const char **p, size_t *len)
{
	const char *s = *p, *e = *p + *len;
	while (s < e && strchr(" \t\r\n", *s))
		s++;
	while (e > s && strchr(" \t\r\n", e[-1]))
		e--;
	if (e - s >= 6 && memcmp(s, "```", 3) == 0 && memcmp(e - 3, "```", 3) == 0) {
		const char *nl = memchr(s, '\n', (size_t)(e - s));
		if (nl && nl < e - 3) {
			s = nl + 1;
			e -= 3;
			while (e > s && strchr(" \t\r\n", e[-1]))
				e--;
		}
	}
	*p = s;
	*len = (size_t)(e - s);
}

static json_t *usage_of(json_t *resp)
{
	json_t *u = json_object_get(resp, "usage");
	json_t *out = json_object();
	static const char *const names[] = {"prompt_tokens", "completion_tokens", "total_tokens"};
	for (size_t i = 0; out && i < 3; i++) {
		json_t *v = json_object_get(u, names[i]);
		json_object_set_new(out, names[i],
		                    json_is_integer(v) ? json_integer(json_integer_value(v))
		                                       : json_null());
	}
	return out;
}

int aiq__llm_parse_answer(char **out, const char **err_type, char *err, size_t errsize,
                          const char *body, size_t len, const char *model, int64_t latency_ms,
                          bool json_mode, const char *where)
{
	char ex[EXCERPT_BYTES + 8];
	json_error_t jerr;
	*out = NULL;
	*err_type = NULL;
	json_t *resp = json_loadb(body ? body : "", len, 0, &jerr);
	json_t *choice = json_array_get(json_object_get(resp, "choices"), 0);
	json_t *content = json_object_get(json_object_get(choice, "message"), "content");
	if (!json_is_string(content)) {
		excerpt(ex, sizeof ex, body ? body : "", len, EXCERPT_BYTES);
		*err_type = "LLMProtocolError";
		snprintf(err, errsize,
		         "the answer from %s is not a chat completion "
		         "(no choices[0].message.content): %s",
		         where, ex);
		json_decref(resp);
		return AIQ_EPROTO;
	}
	const char *finish = json_string_value(json_object_get(choice, "finish_reason"));
	const char *text = json_string_value(content);
	size_t tlen = json_string_length(content);
	unfence(&text, &tlen);
	json_t *analysis = json_loadb(text, tlen, JSON_DECODE_ANY, &jerr);
	if (!json_is_object(analysis)) {
		excerpt(ex, sizeof ex, text, tlen, EXCERPT_BYTES);
		bool cut = finish && strcmp(finish, "length") == 0;
		*err_type = "LLMInvalidOutput";
		snprintf(err, errsize, "model '%s' answered %s, not a JSON object%s: \"%s\"", model,
		         analysis == NULL          ? "text that is not JSON"
		         : json_is_array(analysis) ? "a JSON array"
		                                   : "a JSON scalar",
		         cut         ? " (the answer was cut at llm.max_tokens: raise it)"
		         : json_mode ? ""
		                     : " (turn llm.json_mode on if the server supports it)",
		         ex);
		json_decref(analysis);
		json_decref(resp);
		return AIQ_EPROTO;
	}
	const char *answered = json_string_value(json_object_get(resp, "model"));
	json_t *res = json_object();
	json_object_set_new(res, "model", json_string(answered && *answered ? answered : model));
	json_object_set_new(res, "analysis", analysis);
	json_object_set_new(res, "usage", usage_of(resp));
	json_object_set_new(res, "latency_ms", json_integer(latency_ms));
	if (finish)
		json_object_set_new(res, "finish_reason", json_string(finish));
	*out = json_dumps(res, JSON_COMPACT);
	json_decref(res);
	json_decref(resp);
	if (*out == NULL) {
		*err_type = "MemoryError";
		snprintf(err, errsize, "out of memory");
		return AIQ_ENOMEM;
	}
	return AIQ_OK;
}

static void handle_success(aiq_task *t, const struct llm_settings *s,
                           const struct aiq__llm_reply *r, const char *model)
{
	char msg[ERRMSG_BYTES];
	const char *type = NULL;
	char *dumped = NULL;
	int rc = aiq__llm_parse_answer(&dumped, &type, msg, sizeof msg, r->body, r->len, model,
	                               r->latency_ms, s->json_mode, s->safe_base_url);
	if (rc == AIQ_OK)
		aiq_task_succeed(t, dumped);
	else if (rc == AIQ_ENOMEM)
		aiq_task_fail(t, "MemoryError", "out of memory", "builtins");
	else
		fail_with(t, s, type, "%s", msg);
	free(dumped);
}

/* The prompt: the template with every {{lyrics}} replaced by the text, or
 * the text appended after a blank line when the template has none. */
static char *fill_template(const char *tpl, const char *text)
{
	size_t tl = strlen(text), pl = sizeof PLACEHOLDER - 1, count = 0;
	for (const char *p = strstr(tpl, PLACEHOLDER); p; p = strstr(p + pl, PLACEHOLDER))
		count++;
	if (count == 0)
		return aiq__asprintf("%s\n\n%s", tpl, text);
	size_t n = strlen(tpl) - count * pl + count * tl + 1;
	char *out = malloc(n), *o = out;
	if (out == NULL)
		return NULL;
	const char *p = tpl;
	for (const char *q = strstr(p, PLACEHOLDER); q; q = strstr(p, PLACEHOLDER)) {
		memcpy(o, p, (size_t)(q - p));
		o += q - p;
		memcpy(o, text, tl);
		o += tl;
		p = q + pl;
	}
	memcpy(o, p, strlen(p) + 1); /* the tail and its NUL: n counted both */
	return out;
}

/* Per-task options a producer may set: model, temperature, max_tokens.
 * The endpoint and the key stay under the worker's control. */
static int apply_options(struct llm_settings *s, const char *params_json, char *err, size_t errsize)
{
	json_t *p = json_loads(params_json ? params_json : "{}", 0, NULL);
	int rc = 0;
	json_t *model = json_object_get(p, "model");
	json_t *temp = json_object_get(p, "temperature");
	json_t *max = json_object_get(p, "max_tokens");
	if (model && (!json_is_string(model) || json_string_length(model) == 0)) {
		snprintf(err, errsize, "options.model must be a non-empty string");
		rc = -1;
	} else if (temp && (!json_is_number(temp) || json_number_value(temp) < 0 ||
	                    json_number_value(temp) > TEMPERATURE_LIMIT)) {
		snprintf(err, errsize, "options.temperature must be a number from 0 to 2");
		rc = -1;
	} else if (max && (!json_is_integer(max) || json_integer_value(max) < 1 ||
	                   json_integer_value(max) > 1000000)) {
		snprintf(err, errsize, "options.max_tokens must be an integer from 1 to 1000000");
		rc = -1;
	} else {
		if (model && replace_str(&s->model, json_string_value(model),
		                         json_string_length(model)) != AIQ_OK) {
			snprintf(err, errsize, "out of memory");
			rc = -1;
		}
		if (temp) {
			s->has_temperature = true;
			s->temperature = json_number_value(temp);
		}
		if (max)
			s->max_tokens = json_integer_value(max);
	}
	json_decref(p);
	return rc;
}

static char *request_body(const struct llm_settings *s, const char *prompt)
{
	json_t *req =
	        json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:I, s:b}", "model", s->model,
	                  "messages", "role", "system", "content", s->system_prompt, "role", "user",
	                  "content", prompt, "max_tokens", (json_int_t)s->max_tokens, "stream", 0);
	if (req == NULL)
		return NULL;
	if (s->has_temperature)
		json_object_set_new(req, "temperature", json_real(s->temperature));
	if (s->json_mode)
		json_object_set_new(req, "response_format",
		                    json_pack("{s:s}", "type", "json_object"));
	char *body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	return body;
}

static void llm_analyze(aiq_task *t, const char *text, const char *params_json, void *userdata)
{
	const struct llm_settings *base = userdata;
	struct llm_settings *s = NULL;
	char err[256];
	if (settings_copy(&s, base, base->name, strlen(base->name)) != AIQ_OK) {
		aiq_task_fail(t, "MemoryError", "out of memory", "builtins");
		return;
	}
	if (apply_options(s, params_json, err, sizeof err) != 0) {
		aiq_task_fail(t, "ValueError", err, "builtins");
		settings_free(s);
		return;
	}
	char *prompt = fill_template(s->prompt_template, text);
	char *body = prompt ? request_body(s, prompt) : NULL;
	char *url = aiq__asprintf("%s%s", s->base_url, CHAT_PATH);
	struct aiq__llm_reply r = {.body = NULL};
	if (!prompt || !body || !url) {
		aiq_task_fail(t, "MemoryError", "out of memory preparing the model request",
		              "builtins");
		goto out;
	}
	struct aiq__llm_request req = {
	        .url = url,
	        .api_key = s->api_key,
	        .body = body,
	        .timeout_ms = s->timeout_ms,
	        .connect_timeout_ms = s->connect_timeout_ms,
	        .max_response_bytes = s->max_response_bytes,
	        .retry_after_max_ms = s->retry_after_max_ms,
	        .task = t,
	};
	aiq__log(AIQ_LOG_DEBUG, "analyzer %s, task %s: POST %s%s model=%s (%zu bytes)", s->name,
	         aiq_task_id(t), s->safe_base_url, CHAT_PATH, s->model, strlen(body));
	if (aiq__llm_post(&r, &req) != AIQ_OK)
		aiq_task_fail(t, "MemoryError", "out of memory preparing the model request",
		              "builtins");
	else if (r.curl_rc != CURLE_OK)
		handle_curl_error(t, s, &r);
	else if (r.status < 200 || r.status > 299)
		handle_http_error(t, s, &r, s->model);
	else
		handle_success(t, s, &r, s->model);
out:
	aiq__llm_reply_clear(&r);
	free(url);
	free(body);
	free(prompt);
	settings_free(s);
}

/* ---- registration ------------------------------------------------------- */

static int register_one(aiq_worker *w, struct llm_settings *s)
{
	return aiq__worker_add_builtin_analyzer(w, s->name, llm_analyze, s, settings_free);
}

/* llm.presets: "name=field:value,field:value;name2=…". Each preset starts
 * from the `llm` settings and overrides the fields it names. */
static int register_presets(aiq_worker *w, const struct llm_settings *base, const char *spec)
{
	const char *pos = spec;
	struct aiq__preset p;
	int got;
	while ((got = aiq__preset_next(&pos, &p, aiq__config_key_name(AIQ_CFG_LLM_PRESETS))) == 1) {
		char where[96];
		snprintf(where, sizeof where, "llm.presets '%.*s'",
		         (int)(p.nlen > 60 ? 60 : p.nlen), p.name);
		struct llm_settings *s = NULL;
		int rc = settings_copy(&s, base, p.name, p.nlen);
		const char *fpos = NULL, *f;
		size_t flen;
		while (rc == AIQ_OK && aiq__preset_field_next(&p, &fpos, &f, &flen))
			rc = preset_field(s, f, flen, where);
		if (rc == AIQ_OK)
			rc = check_base_url(s, where);
		if (rc != AIQ_OK) {
			settings_free(s);
			return rc;
		}
		rc = register_one(w, s); /* frees s on failure */
		if (rc != AIQ_OK)
			return rc;
	}
	return got;
}

static int llm_add(aiq_worker *w, const aiq_config *cfg)
{
	int rc = aiq__llm_start();
	if (rc != AIQ_OK)
		return rc;
	struct llm_settings *s = NULL;
	rc = settings_from_config(&s, cfg);
	if (rc != AIQ_OK)
		return rc;
	rc = register_presets(w, s, aiq__cfg_str(cfg, AIQ_CFG_LLM_PRESETS));
	if (rc != AIQ_OK) {
		settings_free(s);
		return rc;
	}
	return register_one(w, s);
}

int aiq__llm_endpoint(char **base_url, char **api_key, const aiq_config *cfg, const char *preset)
{
	*base_url = *api_key = NULL;
	struct llm_settings *s = NULL;
	int rc = settings_from_config(&s, cfg);
	if (rc != AIQ_OK)
		return rc;
	if (preset && *preset) {
		const char *pos = aiq__cfg_str(cfg, AIQ_CFG_LLM_PRESETS), *fpos = NULL, *f;
		struct aiq__preset p;
		size_t flen;
		int got;
		while ((got = aiq__preset_next(&pos, &p,
		                               aiq__config_key_name(AIQ_CFG_LLM_PRESETS))) == 1)
			if (p.nlen == strlen(preset) && memcmp(p.name, preset, p.nlen) == 0)
				break;
		if (got != 1) {
			settings_free(s);
			return got < 0 ? got
			               : aiq__err(AIQ_EINVAL,
			                          "no preset named '%.60s' in llm.presets", preset);
		}
		char where[96];
		snprintf(where, sizeof where, "llm.presets '%.60s'", preset);
		while (rc == AIQ_OK && aiq__preset_field_next(&p, &fpos, &f, &flen))
			rc = preset_field(s, f, flen, where);
		if (rc == AIQ_OK)
			rc = check_base_url(s, where);
	}
	if (rc == AIQ_OK) {
		*base_url = s->base_url;
		*api_key = s->api_key;
		s->base_url = s->api_key = NULL;
	}
	settings_free(s);
	return rc;
}

/* `llm` and the llm.presets names */
const aiq__analyzer_def aiq__llm_analyzer = {"llm", llm_add};
