/*
 * Plugin loader: dlopen a shared object, check the ABI generation it was
 * built for, let it register analyzers and tasks through the public API,
 * and keep it loaded until the worker is freed.
 */
#include "analyzer.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define ABI_SYMBOL      "aiq_plugin_abi_version"
#define REGISTER_SYMBOL "aiq_plugin_register"

static void close_handle(void *handle)
{
	dlclose(handle);
}

/* dlsym returns an object pointer; ISO C has no conversion to a function
 * pointer, so copy the bits (what POSIX guarantees to work). */
static int find_entry(void **out, void *handle, const char *path, const char *symbol)
{
	dlerror();
	void *p = dlsym(handle, symbol);
	const char *why = dlerror();
	if (p == NULL || why != NULL)
		return aiq__err(AIQ_ENOTFOUND,
		                "plugin '%.200s' does not export '%s' (is it an aiqueue plugin? "
		                "see docs/plugins.md)",
		                path, symbol);
	*out = p;
	return AIQ_OK;
}

AIQ_API int aiq_worker_load_plugin(aiq_worker *w, const char *path)
{
	if (w == NULL || path == NULL || *path == '\0')
		return aiq__err(AIQ_EINVAL, "worker and plugin path are required");
	struct stat st;
	if (strchr(path, '/') && stat(path, &st) != 0)
		return aiq__err(errno == ENOENT || errno == ENOTDIR ? AIQ_ENOTFOUND : AIQ_EIO,
		                "cannot load plugin '%.200s': %s", path, strerror(errno));

	dlerror();
	void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		const char *why = dlerror();
		/* A bare name that the loader did not find is "not found" too. */
		int code = strchr(path, '/') ? AIQ_EINVAL : AIQ_ENOTFOUND;
		return aiq__err(code, "cannot load plugin '%.200s': %s", path,
		                why ? why : "unknown loader error");
	}

	void *abi_sym = NULL, *reg_sym = NULL;
	int rc = find_entry(&abi_sym, handle, path, ABI_SYMBOL);
	if (rc == AIQ_OK)
		rc = find_entry(&reg_sym, handle, path, REGISTER_SYMBOL);
	if (rc != AIQ_OK) {
		dlclose(handle);
		return rc;
	}
	aiq_plugin_abi_version_fn abi_fn;
	aiq_plugin_register_fn register_fn;
	memcpy(&abi_fn, &abi_sym, sizeof abi_fn);
	memcpy(&register_fn, &reg_sym, sizeof register_fn);

	int abi = abi_fn();
	if (abi < 1 || abi > AIQ_PLUGIN_ABI_VERSION) {
		dlclose(handle);
		return aiq__err(
		        AIQ_EABI,
		        "plugin '%.200s' was built for plugin ABI %d, but this libaiqueue "
		        "(%s) supports ABI 1 to %d: %s",
		        path, abi, aiq_version_string(), AIQ_PLUGIN_ABI_VERSION,
		        abi > AIQ_PLUGIN_ABI_VERSION
		                ? "upgrade libaiqueue or rebuild the plugin against this one"
		                : "the plugin reports an invalid version");
	}

	/* From here on the plugin's code may hold registrations: keep it loaded
	 * until the worker is freed, whatever happens. */
	rc = aiq__worker_keep_plugin(w, handle, close_handle);
	if (rc != AIQ_OK) {
		dlclose(handle);
		return rc;
	}
	aiq_error_clear(); /* whatever the plugin leaves here explains its failure */
	rc = register_fn(w);
	if (rc != AIQ_OK) {
		int code = rc < 0 ? rc : AIQ_ERROR;
		char detail[512];
		snprintf(detail, sizeof detail, "%s", aiq_error_last());
		return aiq__err(code, "plugin '%.200s' failed to register (%s)%s%s", path,
		                aiq_strerror(code), *detail ? ": " : "", detail);
	}
	aiq__log(AIQ_LOG_INFO, "loaded plugin '%s' (ABI %d)", path, abi);
	return AIQ_OK;
}
