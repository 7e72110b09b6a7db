/*
 * Status codes and the thread-local error detail.
 */
#define AIQ__ERRORS_C /* defines aiq__err: no analyzer shortcut here */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#define AIQ__ERRBUF 512

static _Thread_local char last_error[AIQ__ERRBUF];

AIQ_API const char *aiq_strerror(int code)
{
	switch (code) {
	case AIQ_OK: return "success";
	case AIQ_ERROR: return "unspecified error";
	case AIQ_EINVAL: return "invalid argument";
	case AIQ_ENOMEM: return "out of memory";
	case AIQ_ENOTFOUND: return "not found";
	case AIQ_ETIMEDOUT: return "timed out";
	case AIQ_EPROTO: return "malformed task message";
	case AIQ_EBROKER: return "broker error";
	case AIQ_ESTORE: return "result store error";
	case AIQ_EUNSUPPORTED: return "not supported by this build";
	case AIQ_ESTATE: return "invalid state for this call";
	case AIQ_ECANCELED: return "cancelled";
	case AIQ_EEXIST: return "already exists";
	case AIQ_ETOOBIG: return "too big";
	case AIQ_EJSON: return "invalid JSON";
	case AIQ_EIO: return "I/O error";
	case AIQ_EABI: return "incompatible ABI version";
	case AIQ_ELIMIT: return "limit reached";
	default: return "unknown error";
	}
}

AIQ_API const char *aiq_error_last(void)
{
	return last_error;
}

AIQ_API void aiq_error_clear(void)
{
	last_error[0] = '\0';
}

int aiq__verr(int code, const char *fmt, va_list ap)
{
	if (fmt == NULL) {
		snprintf(last_error, sizeof last_error, "%s", aiq_strerror(code));
		return code;
	}
	/* Format into a scratch buffer first: an argument may point into last_error. */
	char tmp[AIQ__ERRBUF];
	vsnprintf(tmp, sizeof tmp, fmt, ap);
	memcpy(last_error, tmp, sizeof tmp);
	return code;
}

int aiq__err(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	aiq__verr(code, fmt, ap);
	va_end(ap);
	return code;
}
