/*
 * The built-in analysis task: args (track_id, text), kwargs analyzer and
 * options. It runs the named analyzer and wraps the JSON the analyzer
 * reports as {"track_id", "analyzer", "analysis"}; after a success it
 * stores the text's embedding when embeddings are on (embed_sink.h). It reads the task only
 * through the public accessors, as any handler does; the analyzer gets its
 * text and options as arguments (analyzer.h).
 */
#include "embed_sink.h"
#include "worker_int.h"

#include <stdlib.h>
#include <string.h>

struct wrap_ctx {
	json_t *track;
	const char *analyzer;
	bool succeeded; /* the analyzer's success was stored (wrapped) */
};

static char *wrap_analysis(const json_t *analysis, void *ctx)
{
	struct wrap_ctx *c = ctx;
	json_t *wrapped = json_pack("{s:O, s:s, s:O}", "track_id", c->track, "analyzer",
	                            c->analyzer, "analysis", analysis);
	char *out = wrapped ? aiq__json_dumps_py(wrapped) : NULL;
	json_decref(wrapped);
	c->succeeded = out != NULL;
	return out;
}

static void fail_value(aiq_task *t, const char *msg)
{
	aiq_task_fail(t, "ValueError", msg, "builtins");
}

/* track_id as the JSON value the wrapped result repeats, or NULL. */
static json_t *track_of(const aiq_task *t)
{
	const char *s;
	size_t len;
	int64_t n;
	if (aiq_task_arg_str(&s, &len, t, 0) == AIQ_OK)
		return json_stringn(s, len);
	if (aiq_task_arg_int(&n, t, 0) == AIQ_OK)
		return json_integer((json_int_t)n);
	return NULL;
}

/* The options kwarg as a JSON object's text (absent or null: "{}"), or
 * NULL with *why naming the problem. */
static char *options_of(const aiq_task *t, const char **why)
{
	char *options = NULL;
	int rc = aiq_task_kwarg_json(&options, t, "options");
	if (rc == AIQ_ENOTFOUND || (rc == AIQ_OK && strcmp(options, "null") == 0)) {
		aiq_free(options);
		options = aiq__strdup("{}");
	} else if (rc == AIQ_OK && options[0] != '{') {
		aiq_free(options);
		*why = "options must be an object";
		return NULL;
	}
	if (options == NULL)
		*why = "out of memory";
	return options;
}

void aiq__analyze_task(aiq_task *t, void *userdata)
{
	aiq_worker *w = userdata;
	const char *text, *name;
	size_t len;
	if (aiq_task_arg_count(t) != 2) {
		aiq_task_fail(t, "TypeError",
		              "analyze_track() takes 2 positional arguments: "
		              "(track_id, text)",
		              "builtins");
		return;
	}
	if (aiq_task_arg_str(&text, &len, t, 1) != AIQ_OK) {
		fail_value(t, "text must be a string");
		return;
	}
	size_t text_len = len; /* len is reused for the analyzer's name */
	json_t *track = track_of(t);
	if (track == NULL) {
		fail_value(t, "track_id must be a string or an integer");
		return;
	}
	int rc = aiq_task_kwarg_str(&name, &len, t, "analyzer");
	const char *why = rc != AIQ_OK && rc != AIQ_ENOTFOUND ? "analyzer must be a string" : NULL;
	char *options = why ? NULL : options_of(t, &why);
	if (options == NULL) {
		if (strcmp(why, "out of memory") == 0)
			aiq_task_fail(t, "MemoryError", why, "builtins");
		else
			fail_value(t, why);
		json_decref(track);
		return;
	}
	if (rc == AIQ_ENOTFOUND)
		name = aiq__worker_default_analyzer(w);

	aiq_analyzer_fn fn;
	void *ud;
	if (aiq__worker_find_analyzer(w, name, &fn, &ud) != AIQ_OK) {
		char msg[200];
		snprintf(msg, sizeof msg, "unknown analyzer '%.100s'", name);
		aiq_task_fail(t, "UnknownAnalyzer", msg, "aiqueue");
	} else {
		struct wrap_ctx ctx = {track, name, false};
		aiq__task_wrap_result(t, wrap_analysis, &ctx);
		fn(t, text, options, ud);
		aiq__task_wrap_result(t, NULL, NULL);
		if (ctx.succeeded)
			aiq__embed_sink_store(w->embed, track, text, text_len);
	}
	aiq_free(options);
	json_decref(track);
}
