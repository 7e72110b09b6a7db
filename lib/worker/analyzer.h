/*
 * The worker's side of the built-in analyzers (lib/analyzers/), the way
 * broker.h is the brokers': all an analyzer may include from the core.
 *
 * An analyzer is an aiq_analyzer_fn like a plugin's: it receives its text
 * and options (a JSON object) as arguments and returns its JSON through
 * aiq_task_succeed(), or an error through aiq_task_fail() or a retry
 * through aiq_task_retry(), never reading the task's internals; the
 * analysis task (analyze_task.c) wraps that JSON as
 * {"track_id", "analyzer", "analysis"}. Each built-in analyzer exports one
 * aiq__analyzer_def, listed in registry.c's table (optional ones under
 * their AIQ_HAVE_* macro) as drivers are in the broker registry.
 */
#ifndef AIQ_ANALYZER_H
#define AIQ_ANALYZER_H

#include "internal.h"

#include <aiqueue/analyzer.h>

typedef struct aiq__analyzer_def {
	const char *name; /* in messages: the analyzer's first name */
	/* Register the analyzer's names on `w` with aiq__worker_add_builtin_analyzer(),
	 * configured by `cfg` (its keys: <owner>_keys.def). */
	int (*add)(aiq_worker *w, const aiq_config *cfg);
} aiq__analyzer_def;

/* Register a built-in analyzer: a later aiq_worker_add_analyzer() of the
 * same name replaces it. On failure destroy(userdata) runs. */
int aiq__worker_add_builtin_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn,
                                     void *userdata, aiq_destroy_fn destroy);
/* For the plugin loader: keep a loaded plugin until aiq_worker_free(),
 * which calls close_fn(handle) after every destructor ran. AIQ_ESTATE
 * while running. */
int aiq__worker_keep_plugin(aiq_worker *w, void *handle, void (*close_fn)(void *handle));

#endif /* AIQ_ANALYZER_H */
