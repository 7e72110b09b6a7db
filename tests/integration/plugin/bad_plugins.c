/*
 * Broken plugins for the loader tests, one per -DBAD_* macro:
 *   BAD_NO_SYMBOLS   exports neither entry point
 *   BAD_NO_REGISTER  exports aiq_plugin_abi_version only
 *   BAD_NEWER_ABI    reports an ABI newer than the library's
 *   BAD_REGISTER     registration fails (an invalid analyzer name)
 */
#define AIQ_PLUGIN
#include <aiqueue/aiqueue.h>

#if defined(BAD_NO_SYMBOLS)
AIQ_PLUGIN_EXPORT int not_a_plugin(void);
AIQ_PLUGIN_EXPORT int not_a_plugin(void)
{
	return 42;
}
#else
AIQ_PLUGIN_EXPORT int aiq_plugin_abi_version(void)
{
#if defined(BAD_NEWER_ABI)
	return AIQ_PLUGIN_ABI_VERSION + 1;
#else
	return AIQ_PLUGIN_ABI_VERSION;
#endif
}

#if !defined(BAD_NO_REGISTER)
static void nothing(aiq_task *task, const char *text, const char *params_json, void *userdata)
{
	(void)text, (void)params_json, (void)userdata;
	aiq_task_succeed(task, "{}");
}

AIQ_PLUGIN_EXPORT int aiq_plugin_register(aiq_worker *w)
{
#if defined(BAD_REGISTER)
	return aiq_worker_add_analyzer(w, "", nothing, NULL, NULL);
#else
	return aiq_worker_add_analyzer(w, "nothing", nothing, NULL, NULL);
#endif
}
#endif
#endif
