/*
 * The process-wide log handler: the one piece of documented global state
 * besides the memory drivers' registries.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <strings.h>

/* Readers hold the lock only while calling the handler, so replacing it can
 * wait for calls in progress before destroying the old userdata. */
static pthread_rwlock_t handler_lock = PTHREAD_RWLOCK_INITIALIZER;
static aiq_log_fn handler_fn;
static void *handler_ud;
static aiq_destroy_fn handler_destroy;
static atomic_int min_level = AIQ_LOG_WARNING;

AIQ_API void aiq_log_set_handler(aiq_log_fn fn, void *userdata, aiq_destroy_fn destroy)
{
	pthread_rwlock_wrlock(&handler_lock);
	void *old_ud = handler_ud;
	aiq_destroy_fn old_destroy = handler_destroy;
	handler_fn = fn;
	handler_ud = fn ? userdata : NULL;
	handler_destroy = fn ? destroy : NULL;
	pthread_rwlock_unlock(&handler_lock);
	if (old_destroy)
		old_destroy(old_ud);
	if (fn == NULL && destroy)
		destroy(userdata);
}

AIQ_API void aiq_log_set_level(int level)
{
	atomic_store(&min_level, level);
}

AIQ_API int aiq_log_level_from_name(const char *name)
{
	static const struct {
		const char *name;
		int level;
	} names[] = {{"debug", AIQ_LOG_DEBUG},
	             {"info", AIQ_LOG_INFO},
	             {"warning", AIQ_LOG_WARNING},
	             {"warn", AIQ_LOG_WARNING},
	             {"error", AIQ_LOG_ERROR}};
	for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
		if (strcasecmp(name, names[i].name) == 0)
			return names[i].level;
	return aiq__err(AIQ_EINVAL, "unknown log level '%.32s' (debug, info, warning, error)",
	                name ? name : "(null)");
}

bool aiq__log_enabled(int level)
{
	return level >= atomic_load(&min_level);
}

void aiq__log(int level, const char *fmt, ...)
{
	if (!aiq__log_enabled(level))
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	pthread_rwlock_rdlock(&handler_lock);
	if (handler_fn) {
		handler_fn(level, msg, handler_ud);
		pthread_rwlock_unlock(&handler_lock);
		return;
	}
	pthread_rwlock_unlock(&handler_lock);
	const char *tag = level >= AIQ_LOG_ERROR     ? "error"
	                  : level >= AIQ_LOG_WARNING ? "warning"
	                  : level >= AIQ_LOG_INFO    ? "info"
	                                             : "debug";
	fprintf(stderr, "libaiqueue: %s: %s\n", tag, msg);
}
