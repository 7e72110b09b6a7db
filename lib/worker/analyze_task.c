/*
 * The built-in analysis task: args (track_id, text), kwargs analyzer and
 * options. It runs the named analyzer and wraps its JSON as
 * {"track_id", "analyzer", "analysis"}.
 */
#include "worker_int.h"

#include <stdlib.h>
#include <string.h>

static void fail_value(aiq_task *t, const char *msg)
{
	aiq_task_fail(t, "ValueError", msg, "builtins");
}

void aiq__analyze_task(aiq_task *t, void *userdata)
{
	aiq_worker *w = userdata;
	json_t *args = t->msg.args, *kwargs = t->msg.kwargs;
	json_t *track = json_array_get(args, 0);
	json_t *text = json_array_get(args, 1);
	if (json_array_size(args) != 2 || track == NULL || text == NULL) {
		aiq_task_fail(t, "TypeError",
		              "analyze_track() takes 2 positional arguments: "
		              "(track_id, text)",
		              "builtins");
		return;
	}
	if (!json_is_string(text)) {
		fail_value(t, "text must be a string");
		return;
	}
	if (!json_is_string(track) && !json_is_integer(track)) {
		fail_value(t, "track_id must be a string or an integer");
		return;
	}
	const char *name = json_string_value(json_object_get(kwargs, "analyzer"));
	json_t *options = json_object_get(kwargs, "options");
	if (json_object_get(kwargs, "analyzer") && name == NULL) {
		fail_value(t, "analyzer must be a string");
		return;
	}
	if (options && !json_is_object(options) && !json_is_null(options)) {
		fail_value(t, "options must be an object");
		return;
	}
	if (name == NULL)
		name = aiq__worker_default_analyzer(w);

	aiq_analyzer_fn fn;
	void *ud;
	if (aiq__worker_find_analyzer(w, name, &fn, &ud) != AIQ_OK) {
		char msg[200];
		snprintf(msg, sizeof msg, "unknown analyzer '%.100s'", name);
		aiq_task_fail(t, "UnknownAnalyzer", msg, "aiqueue");
		return;
	}
	char *params = json_is_object(options) ? json_dumps(options, JSON_COMPACT) : strdup("{}");
	if (params == NULL) {
		aiq_task_fail(t, "MemoryError", "out of memory", "builtins");
		return;
	}
	fn(t, json_string_value(text), params, ud);
	free(params);

	if (t->outcome != OUTCOME_SUCCESS)
		return; /* failure, retry or nothing: reported as is */
	json_t *analysis = json_loads(t->result_json, JSON_DECODE_ANY, NULL);
	json_t *wrapped = json_pack("{s:O, s:s, s:o}", "track_id", track, "analyzer", name,
	                            "analysis", analysis ? analysis : json_null());
	char *out = wrapped ? aiq__json_dumps_py(wrapped) : NULL;
	json_decref(wrapped);
	if (out == NULL) {
		t->outcome = OUTCOME_NONE;
		free(t->result_json);
		t->result_json = NULL;
		aiq_task_fail(t, "MemoryError", "out of memory wrapping the analysis", "builtins");
		return;
	}
	free(t->result_json);
	t->result_json = out;
}

static void lyrics_analyzer(aiq_task *t, const char *text, const char *params_json, void *ud)
{
	(void)ud;
	char *out = NULL;
	int rc = aiq_lyrics_analyze(&out, text, params_json);
	if (rc == AIQ_OK) {
		aiq_task_succeed(t, out);
		aiq_free(out);
		return;
	}
	aiq_task_fail(t, rc == AIQ_ENOMEM ? "MemoryError" : "ValueError", aiq_error_last(),
	              "builtins");
}

int aiq__lyrics_register(aiq_worker *w, const aiq_config *cfg)
{
	(void)cfg;
	return aiq__worker_add_builtin_analyzer(w, "lyrics", lyrics_analyzer, NULL, NULL);
}
