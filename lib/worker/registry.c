/*
 * What a worker can run: task handlers, analyzers (the built-in ones from a
 * table, like the broker registry) and the plugins that registered some.
 */
#include "worker_int.h"

#include "analyzer.h"

#include "config_int.h"

#include <stdlib.h>
#include <string.h>

const struct handler *aiq__registry_find_handler(const aiq_worker *w, const char *name)
{
	for (size_t i = 0; i < w->nhandlers; i++)
		if (strcmp(w->handlers[i].name, name) == 0)
			return &w->handlers[i];
	return NULL;
}

static int add_handler(aiq_worker *w, const char *name, aiq_task_fn fn, void *ud,
                       aiq_destroy_fn destroy)
{
	struct handler *h = realloc(w->handlers, (w->nhandlers + 1) * sizeof *h);
	if (h == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->handlers = h;
	char *copy = strdup(name);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->handlers[w->nhandlers++] = (struct handler){copy, fn, ud, destroy};
	return AIQ_OK; /* cppcheck-suppress memleak ; copy is owned by the entry */
}

static int add_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn, void *ud,
                        aiq_destroy_fn destroy)
{
	struct analyzer *a = realloc(w->analyzers, (w->nanalyzers + 1) * sizeof *a);
	if (a == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->analyzers = a;
	char *copy = strdup(name);
	if (copy == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->analyzers[w->nanalyzers++] = (struct analyzer){copy, fn, ud, destroy, false};
	return AIQ_OK; /* cppcheck-suppress memleak ; copy is owned by the entry */
}

AIQ_API int aiq_worker_register(aiq_worker *w, const char *task_name, aiq_task_fn fn,
                                void *userdata, aiq_destroy_fn destroy)
{
	int rc;
	if (w == NULL || task_name == NULL || *task_name == '\0' || fn == NULL)
		rc = aiq__err(AIQ_EINVAL, "worker, task name and handler are required");
	else if (atomic_load(&w->running_flag))
		rc = aiq__err(AIQ_ESTATE, "cannot register '%s' while the worker runs", task_name);
	else if (aiq__registry_find_handler(w, task_name))
		rc = aiq__err(AIQ_EEXIST, "task '%s' is already registered", task_name);
	else
		rc = add_handler(w, task_name, fn, userdata, destroy);
	if (rc != AIQ_OK && destroy)
		destroy(userdata);
	return rc;
}

AIQ_API int aiq_worker_add_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn,
                                    void *userdata, aiq_destroy_fn destroy)
{
	int rc = AIQ_OK;
	if (w == NULL || name == NULL || *name == '\0' || fn == NULL)
		rc = aiq__err(AIQ_EINVAL, "worker, analyzer name and function are required");
	else if (atomic_load(&w->running_flag))
		rc = aiq__err(AIQ_ESTATE, "cannot add analyzer '%s' while the worker runs", name);
	if (rc != AIQ_OK)
		goto out;
	for (size_t i = 0; i < w->nanalyzers; i++) {
		struct analyzer *a = &w->analyzers[i];
		if (strcmp(a->name, name) != 0)
			continue;
		if (!a->builtin) {
			rc = aiq__err(AIQ_EEXIST, "analyzer '%s' is already registered", name);
			goto out;
		}
		/* A user analyzer replaces the built-in of the same name. */
		if (a->destroy)
			a->destroy(a->userdata);
		a->fn = fn;
		a->userdata = userdata;
		a->destroy = destroy;
		a->builtin = false;
		return AIQ_OK;
	}
	rc = add_analyzer(w, name, fn, userdata, destroy);
out:
	if (rc != AIQ_OK && destroy)
		destroy(userdata);
	return rc;
}

int aiq__worker_add_builtin_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn,
                                     void *userdata, aiq_destroy_fn destroy)
{
	int rc = AIQ_OK;
	for (size_t i = 0; i < w->nanalyzers; i++)
		if (strcmp(w->analyzers[i].name, name) == 0)
			rc = aiq__err(AIQ_EEXIST, "analyzer '%s' is already registered", name);
	if (rc == AIQ_OK)
		rc = add_analyzer(w, name, fn, userdata, destroy);
	if (rc == AIQ_OK)
		w->analyzers[w->nanalyzers - 1].builtin = true;
	else if (destroy)
		destroy(userdata);
	return rc;
}

int aiq__worker_keep_plugin(aiq_worker *w, void *handle, void (*close_fn)(void *handle))
{
	if (atomic_load(&w->running_flag))
		return aiq__err(AIQ_ESTATE, "cannot load a plugin while the worker runs");
	struct plugin_handle *p = realloc(w->plugins, (w->nplugins + 1) * sizeof *p);
	if (p == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	w->plugins = p;
	w->plugins[w->nplugins++] = (struct plugin_handle){handle, close_fn};
	return AIQ_OK;
}

const char *aiq__worker_default_analyzer(const aiq_worker *w)
{
	return aiq__cfg_str(w->cfg, AIQ_CFG_ANALYZE_DEFAULT_ANALYZER);
}

int aiq__worker_find_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn *fn, void **ud)
{
	for (size_t i = 0; i < w->nanalyzers; i++) {
		if (strcmp(w->analyzers[i].name, name) == 0) {
			*fn = w->analyzers[i].fn;
			*ud = w->analyzers[i].userdata;
			return AIQ_OK;
		}
	}
	return aiq__err(AIQ_ENOTFOUND, "unknown analyzer '%.100s'", name);
}

AIQ_API int aiq_worker_on_event(aiq_worker *w, aiq_event_fn fn, void *userdata,
                                aiq_destroy_fn destroy)
{
	if (w == NULL || fn == NULL || atomic_load(&w->running_flag)) {
		if (destroy)
			destroy(userdata);
		return w == NULL || fn == NULL
		               ? aiq__err(AIQ_EINVAL, "worker and callback are required")
		               : aiq__err(AIQ_ESTATE,
		                          "cannot set the event callback while running");
	}
	if (w->event_destroy)
		w->event_destroy(w->event_ud);
	w->event_fn = fn;
	w->event_ud = userdata;
	w->event_destroy = destroy;
	return AIQ_OK;
}

/* Built-in analyzers: each entry registers one or more names. Optional ones
 * compile out, as drivers do in the broker and store registries. */
extern const aiq__analyzer_def aiq__lyrics_analyzer;
#ifdef AIQ_HAVE_LLM
extern const aiq__analyzer_def aiq__llm_analyzer;
#endif

static const aiq__analyzer_def *const builtin_analyzers[] = {
        &aiq__lyrics_analyzer,
#ifdef AIQ_HAVE_LLM
        &aiq__llm_analyzer,
#endif
};

int aiq__registry_add_builtins(aiq_worker *w, const aiq_config *cfg)
{
	int rc = add_handler(w, aiq__cfg_str(cfg, AIQ_CFG_ANALYZE_TASK_NAME), aiq__analyze_task, w,
	                     NULL);
	for (size_t i = 0;
	     rc == AIQ_OK && i < sizeof builtin_analyzers / sizeof builtin_analyzers[0]; i++) {
		rc = builtin_analyzers[i]->add(w, cfg);
		if (rc != AIQ_OK)
			rc = aiq__err(rc, "built-in analyzer '%s': %s", builtin_analyzers[i]->name,
			              aiq_error_last());
	}
	return rc;
}

void aiq__registry_free(aiq_worker *w)
{
	for (size_t i = 0; i < w->nhandlers; i++) {
		if (w->handlers[i].destroy)
			w->handlers[i].destroy(w->handlers[i].userdata);
		free(w->handlers[i].name);
	}
	free(w->handlers);
	w->handlers = NULL;
	w->nhandlers = 0;
	for (size_t i = 0; i < w->nanalyzers; i++) {
		if (w->analyzers[i].destroy)
			w->analyzers[i].destroy(w->analyzers[i].userdata);
		free(w->analyzers[i].name);
	}
	free(w->analyzers);
	w->analyzers = NULL;
	w->nanalyzers = 0;
	if (w->event_destroy)
		w->event_destroy(w->event_ud);
	w->event_destroy = NULL;
	/* Last: the destructors above may live in these plugins. */
	for (size_t i = w->nplugins; i > 0; i--)
		w->plugins[i - 1].close(w->plugins[i - 1].handle);
	free(w->plugins);
	w->plugins = NULL;
	w->nplugins = 0;
}
