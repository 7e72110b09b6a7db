/*
 * aiqueue-server's request path without libmicrohttpd: the input is an
 * HTTP/1.1 request as text —
 *
 *     METHOD TARGET\n
 *     Name: value\n          (headers, up to 64)
 *     \n
 *     body
 *
 * TARGET is split into the path (percent-decoded, cut at a decoded NUL, as
 * MHD hands it over) and the query (name=value pairs, decoded with '+' as a
 * space). server_handle() runs it through the header checks, the body limit
 * and the route, against the memory broker and store, with a bearer token
 * set and small limits so that every refusal is reachable. Properties: a
 * reply is always built, with a status the server can send and a content
 * type, and every JSON reply parses; an error reply has a "detail".
 * FUZZ_HTTP_TRACE=1 in the environment prints each request's status and
 * the start of its body.
 */
#include "fuzz_common.h"

#include "../../examples/common/progutil.h"
#include "../../examples/server/server.h"

#include <jansson.h>

#define FUZZ_TOKEN "fuzz-token"
#define MAX_PAIRS  64

static struct server srv;

static void setup(void)
{
	prog_log_init("fuzz_http", AIQ_LOG_ERROR + 1); /* no log lines */
	aiq_log_set_level(AIQ_LOG_ERROR + 1);
	aiq_config *cfg = NULL;
	if (aiq_config_new(&cfg) != AIQ_OK ||
	    aiq_config_set_str(cfg, "broker.url", "memory://fuzz-http") != AIQ_OK ||
	    aiq_config_set_str(cfg, "result.url", "memory://fuzz-http") != AIQ_OK ||
	    aiq_config_get(&srv.task_name, cfg, "analyze.task_name") != AIQ_OK)
		abort();
	srv.cfg = cfg;
	srv.broker_url = strdup("memory://fuzz-http");
	srv.backend_url = strdup("memory://fuzz-http");
	srv.opt.max_body = 4096;
	srv.opt.max_batch = 8;
	srv.opt.max_wait_s = 0.01;
	srv.opt.max_long_polls = 1;
	srv.opt.api_token = FUZZ_TOKEN;
	breaker_init(&srv.breaker, 0); /* no cool-down: each input stands alone */
	if (dash_new(&srv) != 0)       /* the dashboard's records, as in the server */
		abort();
	metrics_init();
}

static int hexval(char c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
	                              : -1;
}

/* Percent-decode s[0..n) into a fresh string; '+' is a space when
 * plus is set. Stops at a decoded NUL, as a C string would. */
static char *decode(const char *s, size_t n, int plus)
{
	char *out = malloc(n + 1);
	size_t o = 0;
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
			c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		} else if (plus && c == '+') {
			c = ' ';
		}
		if (c == '\0')
			break;
		out[o++] = c;
	}
	out[o] = '\0';
	return out;
}

static const char *line_end(const char *p, const char *end)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	return nl ? nl : end;
}

/* strndup that drops a trailing CR (a CRLF line). */
static char *dup_line(const char *p, const char *e)
{
	if (e > p && e[-1] == '\r')
		e--;
	return strndup(p, (size_t)(e - p));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	if (!ready) {
		setup();
		ready = 1;
	}
	const char *p = (const char *)data, *end = p + size;
	char *owned[4 * MAX_PAIRS + 8];
	size_t nowned = 0;
	const char *headers[2 * MAX_PAIRS], *query[2 * MAX_PAIRS];
	struct http_input in = {0};
	in.headers = headers;
	in.query = query;

	/* Request line. */
	const char *e = line_end(p, end);
	const char *sp = memchr(p, ' ', (size_t)(e - p));
	const char *target = sp ? sp + 1 : e;
	char *method = strndup(p, (size_t)((sp ? sp : e) - p));
	owned[nowned++] = method;
	in.method = method;
	const char *te = e > target && e[-1] == '\r' ? e - 1 : e;
	const char *sp2 = memchr(target, ' ', (size_t)(te - target)); /* " HTTP/1.1" */
	if (sp2)
		te = sp2;
	const char *q = memchr(target, '?', (size_t)(te - target));
	const char *pe = q ? q : te;
	/* server_uri_log looks for "%00" in the raw target, query included. */
	for (const char *s = target; s + 2 < te; s++)
		if (s[0] == '%' && s[1] == '0' && s[2] == '0')
			in.nul_in_target = 1;
	char *path = decode(target, (size_t)(pe - target), 0);
	owned[nowned++] = path;
	in.path = path;
	for (const char *a = q ? q + 1 : te; a < te && in.nquery < MAX_PAIRS;) {
		const char *amp = memchr(a, '&', (size_t)(te - a));
		const char *ae = amp ? amp : te;
		const char *eq = memchr(a, '=', (size_t)(ae - a));
		char *k = decode(a, (size_t)((eq ? eq : ae) - a), 1);
		char *v = decode(eq ? eq + 1 : ae, (size_t)(ae - (eq ? eq + 1 : ae)), 1);
		owned[nowned++] = k;
		owned[nowned++] = v;
		query[2 * in.nquery] = k ? k : "";
		query[2 * in.nquery + 1] = v ? v : "";
		in.nquery++;
		a = amp ? amp + 1 : te;
	}
	p = e < end ? e + 1 : end;

	/* Headers, up to an empty line. */
	while (p < end) {
		e = line_end(p, end);
		if (e == p || (e == p + 1 && *p == '\r')) {
			p = e < end ? e + 1 : end;
			break;
		}
		const char *colon = memchr(p, ':', (size_t)(e - p));
		if (colon && in.nheaders < MAX_PAIRS) {
			char *k = strndup(p, (size_t)(colon - p));
			const char *v = colon + 1;
			while (v < e && *v == ' ')
				v++;
			char *val = dup_line(v, e);
			owned[nowned++] = k;
			owned[nowned++] = val;
			headers[2 * in.nheaders] = k ? k : "";
			headers[2 * in.nheaders + 1] = val ? val : "";
			in.nheaders++;
		}
		p = e < end ? e + 1 : end;
	}
	in.body = p;
	in.body_len = (size_t)(end - p);

	FUZZ_CHECK(client_pool_new(&srv.clients, srv.cfg, &srv.breaker) == AIQ_OK);
	struct http_output out;
	int rc = server_handle(&out, &srv, &in);
	client_pool_free(srv.clients);
	srv.clients = NULL;

	static int trace = -1;
	if (trace < 0)
		trace = getenv("FUZZ_HTTP_TRACE") != NULL;
	if (trace)
		fprintf(stderr, "%s %s -> %u %.*s\n", in.method ? in.method : "?",
		        in.path ? in.path : "?", out.status, (int)(out.len > 200 ? 200 : out.len),
		        out.body ? out.body : "");
	FUZZ_CHECK(rc == 0);
	FUZZ_CHECK(out.status >= 200 && out.status <= 599);
	FUZZ_CHECK(out.content_type != NULL);
	FUZZ_CHECK(out.body != NULL || out.len == 0);
	if (strcmp(out.content_type, "application/json") == 0) {
		json_error_t err;
		json_t *v = json_loadb(out.body, out.len, JSON_DECODE_ANY, &err);
		if (v == NULL)
			fprintf(stderr, "reply %u is not JSON (%s): %.*s\n", out.status, err.text,
			        (int)out.len, out.body);
		FUZZ_CHECK(v != NULL);
		if (out.status >= 400)
			FUZZ_CHECK(json_is_object(v) && json_object_get(v, "detail") != NULL);
		json_decref(v);
	}
	free(out.body);
	for (size_t i = 0; i < nowned; i++)
		free(owned[i]);
	return 0;
}
