/*
 * The process-wide log handler: the one piece of documented global state
 * besides the memory drivers' registries.
 */
#include "internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <strings.h>

struct log_target {
	aiq_log_fn fn;
	void *userdata;
};

static _Atomic(struct log_target *) target;
static struct log_target targets[2];
static atomic_int target_slot;
static atomic_int min_level = AIQ_LOG_WARNING;

AIQ_API void aiq_log_set_handler(aiq_log_fn fn, void *userdata)
{
	if (fn == NULL) {
		atomic_store(&target, NULL);
		return;
	}
	/* Two slots so a reader never sees a half-written pair; handlers are
	 * set once at start-up, as documented. */
	int slot = atomic_fetch_xor(&target_slot, 1);
	targets[slot].fn = fn;
	targets[slot].userdata = userdata;
	atomic_store(&target, &targets[slot]);
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
	struct log_target *t = atomic_load(&target);
	if (t) {
		t->fn(level, msg, t->userdata);
		return;
	}
	const char *tag = level >= AIQ_LOG_ERROR     ? "error"
	                  : level >= AIQ_LOG_WARNING ? "warning"
	                  : level >= AIQ_LOG_INFO    ? "info"
	                                             : "debug";
	fprintf(stderr, "libaiqueue: %s: %s\n", tag, msg);
}
