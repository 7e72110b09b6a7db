/*
 * aiq__wire lifetime helpers.
 */
#include "message.h"

#include <stdlib.h>
#include <string.h>

void aiq__wire_clear(aiq__wire *w)
{
	if (w == NULL)
		return;
	json_decref(w->headers);
	json_decref(w->properties);
	free(w->content_type);
	free(w->content_encoding);
	free(w->body);
	aiq__message_free(w->local);
	memset(w, 0, sizeof *w);
}

int aiq__wire_copy(aiq__wire *dst, const aiq__wire *src)
{
	memset(dst, 0, sizeof *dst);
	if (src->headers && !(dst->headers = json_deep_copy(src->headers)))
		goto oom;
	if (src->properties && !(dst->properties = json_deep_copy(src->properties)))
		goto oom;
	if (src->content_type && !(dst->content_type = strdup(src->content_type)))
		goto oom;
	if (src->content_encoding && !(dst->content_encoding = strdup(src->content_encoding)))
		goto oom;
	if (src->body_len > 0 || src->body) {
		dst->body = malloc(src->body_len + 1);
		if (!dst->body)
			goto oom;
		if (src->body_len)
			memcpy(dst->body, src->body, src->body_len);
		dst->body[src->body_len] = '\0';
		dst->body_len = src->body_len;
	}
	return AIQ_OK;
oom:
	aiq__wire_clear(dst);
	return aiq__err(AIQ_ENOMEM, "out of memory copying a message");
}

json_t *aiq__json_string_lossy(const char *text)
{
	if (text == NULL)
		text = "";
	if (aiq__utf8_valid(text, strlen(text)))
		return json_string(text);
	char *copy = strdup(text);
	if (copy == NULL)
		return NULL;
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	json_t *s = json_string(copy);
	free(copy);
	return s;
}

const char *aiq__json_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "array";
	case JSON_STRING: return "string";
	case JSON_INTEGER: return "integer";
	case JSON_REAL: return "real";
	case JSON_TRUE:
	case JSON_FALSE: return "boolean";
	case JSON_NULL: return "null";
	}
	return "unknown";
}
