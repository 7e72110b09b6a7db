/*
 * kombu's Redis-transport envelope: one JSON object per queued message,
 * carrying the body in base64 next to the headers and properties, plus the
 * strict base64 codec it needs.
 */
#include "message.h"
#include "json_load.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An envelope holds a base64 body (4/3 of the body limit) plus headers and
 * properties, which get a generous allowance of their own. */
#define ENVELOPE_MAX_BYTES ((size_t)AIQ__MAX_MESSAGE_BYTES / 3 * 4 + 4u * 1024u * 1024u)

static const char b64_alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *aiq__base64_encode(const unsigned char *data, size_t len, size_t *out_len)
{
	if (data == NULL && len > 0)
		return NULL;
	if (len > (SIZE_MAX - 1) / 4 * 3 - 3)
		return NULL;
	size_t n = (len + 2) / 3 * 4;
	char *out = malloc(n + 1);
	if (out == NULL)
		return NULL;
	char *o = out;
	size_t i = 0;
	for (; i + 3 <= len; i += 3, o += 4) {
		/* Four characters built apart and stored at once: stores through a
		 * char pointer would otherwise make the compiler reread the input. */
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
		char q[4] = {b64_alphabet[v >> 18], b64_alphabet[(v >> 12) & 63],
		             b64_alphabet[(v >> 6) & 63], b64_alphabet[v & 63]};
		memcpy(o, q, 4);
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)data[i] << 16;
		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 63];
		*o++ = '=';
		*o++ = '=';
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 63];
		*o++ = b64_alphabet[(v >> 6) & 63];
		*o++ = '=';
	}
	*o = '\0';
	if (out_len)
		*out_len = n;
	return out;
}

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int aiq__base64_decode(unsigned char **out, size_t *out_len, const char *text, size_t len)
{
	*out = NULL;
	*out_len = 0;
	if (text == NULL && len > 0)
		return aiq__err(AIQ_EINVAL, "no base64 text given");
	if (len % 4 != 0)
		return aiq__err(AIQ_EPROTO, "base64 text length %zu is not a multiple of 4", len);
	const unsigned char *s = (const unsigned char *)text;
	size_t pad = 0;
	if (len > 0 && s[len - 1] == '=')
		pad = len > 1 && s[len - 2] == '=' ? 2 : 1;
	unsigned char *buf = malloc(len / 4 * 3 + 1);
	if (buf == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory decoding base64");
	size_t o = 0;
	for (size_t i = 0; i < len; i += 4) {
		bool last = i + 4 == len;
		int v[4];
		for (size_t k = 0; k < 4; k++) {
			if (last && k >= 4 - pad) {
				v[k] = 0;
				continue;
			}
			v[k] = b64_value(s[i + k]);
			if (v[k] < 0) {
				free(buf);
				return aiq__err(AIQ_EPROTO,
				                "invalid base64 character 0x%02x at offset %zu",
				                s[i + k], i + k);
			}
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
		             (uint32_t)v[3];
		/* Unused bits next to the padding must be zero, or two texts would
		 * decode to the same bytes. */
		if (last && ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))) {
			free(buf);
			return aiq__err(AIQ_EPROTO, "non-canonical base64 padding");
		}
		buf[o++] = (unsigned char)(w >> 16);
		if (!last || pad < 2)
			buf[o++] = (unsigned char)(w >> 8);
		if (!last || pad < 1)
			buf[o++] = (unsigned char)w;
	}
	buf[o] = '\0';
	*out = buf;
	*out_len = o;
	return AIQ_OK;
}

/* Properties the envelope itself supplies; copies in w->properties are
 * replaced rather than duplicated. */
static bool envelope_owned_property(const char *key)
{
	return strcmp(key, "delivery_info") == 0 || strcmp(key, "body_encoding") == 0 ||
	       strcmp(key, "delivery_tag") == 0;
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
	return v == NULL ? -1 : json_object_set_new(obj, key, v);
}

int aiq__envelope_encode(char **out, size_t *out_len, const aiq__wire *w, const char *exchange,
                         const char *routing_key, const char *delivery_tag)
{
	*out = NULL;
	if (out_len)
		*out_len = 0;
	if (w == NULL || routing_key == NULL)
		return aiq__err(AIQ_EINVAL, "envelope needs a message and a routing key");
	if (w->body == NULL && w->body_len > 0)
		return aiq__err(AIQ_EINVAL, "message body is NULL");
	if (w->headers && !json_is_object(w->headers))
		return aiq__err(AIQ_EINVAL, "message headers must be a JSON object");
	if (w->properties && !json_is_object(w->properties))
		return aiq__err(AIQ_EINVAL, "message properties must be a JSON object");
	if (!aiq__utf8_valid(routing_key, strlen(routing_key)) ||
	    (exchange && !aiq__utf8_valid(exchange, strlen(exchange))) ||
	    (delivery_tag && !aiq__utf8_valid(delivery_tag, strlen(delivery_tag))))
		return aiq__err(AIQ_EINVAL, "exchange, routing key and delivery tag must be UTF-8");
	/* json_string() refuses them; that is the message's fault, not memory's. */
	if ((w->content_type && !aiq__utf8_valid(w->content_type, strlen(w->content_type))) ||
	    (w->content_encoding &&
	     !aiq__utf8_valid(w->content_encoding, strlen(w->content_encoding))))
		return aiq__err(AIQ_EINVAL, "content type and encoding must be UTF-8");
	if (w->body_len > AIQ__MAX_MESSAGE_BYTES)
		return aiq__err(AIQ_ETOOBIG, "message body of %zu bytes exceeds the %u byte limit",
		                w->body_len, AIQ__MAX_MESSAGE_BYTES);

	char tag[37];
	if (delivery_tag == NULL) {
		aiq__uuid4(tag);
		delivery_tag = tag;
	}
	size_t b64_len;
	char *b64 = aiq__base64_encode(w->body, w->body_len, &b64_len);
	json_t *env = json_object();
	json_t *props = json_object();
	char *text = NULL;
	int rc = AIQ_ENOMEM;
	if (b64 == NULL || env == NULL || props == NULL)
		goto fail;

	/* Base64 is ASCII: no UTF-8 check over the whole body. */
	if (set_new(env, "body", json_stringn_nocheck(b64, b64_len)) ||
	    set_new(env, "content-encoding",
	            json_string(w->content_encoding ? w->content_encoding : "utf-8")) ||
	    set_new(env, "content-type",
	            json_string(w->content_type ? w->content_type : "application/json")) ||
	    set_new(env, "headers", w->headers ? json_deep_copy(w->headers) : json_object()))
		goto fail;

	/* kombu's order: the message's own properties, with delivery_info
	 * placed just before priority (or after the last of them), then
	 * body_encoding and delivery_tag. */
	json_t *info = json_pack("{s:s, s:s}", "exchange", exchange ? exchange : "", "routing_key",
	                         routing_key);
	if (info == NULL)
		goto fail;
	bool oom = false;
	if (w->properties) {
		const char *key;
		json_t *val;
		json_object_foreach(w->properties, key, val)
		{
			if (envelope_owned_property(key))
				continue;
			if (strcmp(key, "priority") == 0 &&
			    json_object_set(props, "delivery_info", info))
				oom = true;
			if (oom || set_new(props, key, json_deep_copy(val))) {
				oom = true;
				break;
			}
		}
	}
	if (!oom && json_object_get(props, "delivery_info") == NULL &&
	    json_object_set(props, "delivery_info", info))
		oom = true;
	json_decref(info);
	if (oom || set_new(props, "body_encoding", json_string("base64")) ||
	    set_new(props, "delivery_tag", json_string(delivery_tag)))
		goto fail;
	if (json_object_set_new(env, "properties", props)) {
		props = NULL;
		goto fail;
	}
	props = NULL;

	text = aiq__json_dumps_py(env);
	if (text == NULL)
		goto fail;
	size_t n = strlen(text);
	if (n > ENVELOPE_MAX_BYTES) {
		rc = aiq__err(AIQ_ETOOBIG, "envelope of %zu bytes exceeds the %zu byte limit", n,
		              (size_t)ENVELOPE_MAX_BYTES);
		free(text);
		text = NULL;
		goto done;
	}
	*out = text;
	if (out_len)
		*out_len = n;
	rc = AIQ_OK;
	goto done;
fail:
	rc = aiq__err(AIQ_ENOMEM, "out of memory building an envelope");
done:
	free(b64);
	json_decref(props);
	json_decref(env);
	return rc;
}

static int copy_string_field(char **dst, const json_t *env, const char *key)
{
	const json_t *v = json_object_get(env, key);
	if (v == NULL || json_is_null(v))
		return AIQ_OK;
	if (!json_is_string(v))
		return aiq__err(AIQ_EPROTO, "envelope '%s' must be a string, got %s", key,
		                aiq__json_type_name(v));
	if (strlen(json_string_value(v)) != json_string_length(v))
		return aiq__err(AIQ_EPROTO, "envelope '%s' contains a NUL character", key);
	*dst = aiq__strdup(json_string_value(v));
	return *dst ? AIQ_OK : aiq__err(AIQ_ENOMEM, "out of memory decoding an envelope");
}

int aiq__envelope_decode(aiq__wire *out, char **delivery_tag, const char *text, size_t len)
{
	memset(out, 0, sizeof *out);
	if (delivery_tag)
		*delivery_tag = NULL;
	if (text == NULL || len == 0)
		return aiq__err(AIQ_EPROTO, "envelope is empty");
	if (len > ENVELOPE_MAX_BYTES)
		return aiq__err(AIQ_EPROTO, "envelope of %zu bytes exceeds the %zu byte limit", len,
		                (size_t)ENVELOPE_MAX_BYTES);

	json_error_t jerr;
	json_t *env = aiq__json_loadb(text, len, JSON_ALLOW_NUL, &jerr);
	if (env == NULL)
		return aiq__err(AIQ_EPROTO, "envelope is not valid JSON: %s (line %d, column %d)",
		                jerr.text, jerr.line, jerr.column);
	int rc;
	char *tag = NULL;
	if (!json_is_object(env)) {
		rc = aiq__err(AIQ_EPROTO, "envelope must be a JSON object, got %s",
		              aiq__json_type_name(env));
		goto fail;
	}

	const json_t *body = json_object_get(env, "body");
	if (body == NULL) {
		rc = aiq__err(AIQ_EPROTO, "envelope has no 'body'");
		goto fail;
	}
	if (!json_is_string(body)) {
		rc = aiq__err(AIQ_EPROTO, "envelope 'body' must be a string, got %s",
		              aiq__json_type_name(body));
		goto fail;
	}

	json_t *headers = json_object_get(env, "headers");
	if (headers != NULL && !json_is_null(headers) && !json_is_object(headers)) {
		rc = aiq__err(AIQ_EPROTO, "envelope 'headers' must be an object, got %s",
		              aiq__json_type_name(headers));
		goto fail;
	}
	json_t *props = json_object_get(env, "properties");
	if (props != NULL && !json_is_null(props) && !json_is_object(props)) {
		rc = aiq__err(AIQ_EPROTO, "envelope 'properties' must be an object, got %s",
		              aiq__json_type_name(props));
		goto fail;
	}

	bool base64 = false;
	const json_t *enc = json_is_object(props) ? json_object_get(props, "body_encoding") : NULL;
	if (enc != NULL && !json_is_null(enc)) {
		if (!json_is_string(enc)) {
			rc = aiq__err(AIQ_EPROTO,
			              "envelope property 'body_encoding' must be a string, got %s",
			              aiq__json_type_name(enc));
			goto fail;
		}
		if (strcasecmp(json_string_value(enc), "base64") != 0) {
			rc = aiq__err(AIQ_EPROTO, "envelope body encoding '%.64s' is not supported",
			              json_string_value(enc));
			goto fail;
		}
		base64 = true;
	}
	const json_t *jtag = json_is_object(props) ? json_object_get(props, "delivery_tag") : NULL;
	if (jtag != NULL && !json_is_null(jtag)) {
		if (!json_is_string(jtag)) {
			rc = aiq__err(AIQ_EPROTO,
			              "envelope property 'delivery_tag' must be a string, got %s",
			              aiq__json_type_name(jtag));
			goto fail;
		}
		if (delivery_tag && !(tag = aiq__strdup(json_string_value(jtag)))) {
			rc = aiq__err(AIQ_ENOMEM, "out of memory decoding an envelope");
			goto fail;
		}
	}

	if ((rc = copy_string_field(&out->content_type, env, "content-type")) ||
	    (rc = copy_string_field(&out->content_encoding, env, "content-encoding")))
		goto fail;

	if (base64) {
		rc = aiq__base64_decode(&out->body, &out->body_len, json_string_value(body),
		                        json_string_length(body));
		if (rc != AIQ_OK) {
			if (rc == AIQ_EPROTO)
				rc = aiq__err(AIQ_EPROTO, "envelope body is not valid base64: %s",
				              aiq_error_last());
			goto fail;
		}
	} else {
		size_t n = json_string_length(body);
		out->body = malloc(n + 1);
		if (out->body == NULL) {
			rc = aiq__err(AIQ_ENOMEM, "out of memory decoding an envelope");
			goto fail;
		}
		memcpy(out->body, json_string_value(body), n);
		out->body[n] = '\0';
		out->body_len = n;
	}

	if (json_is_object(headers))
		out->headers = json_incref(headers);
	out->properties = json_is_object(props) ? json_incref(props) : json_object();
	if (out->properties == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory decoding an envelope");
		goto fail;
	}
	/* The body is raw from here on. */
	json_object_del(out->properties, "body_encoding");
	json_decref(env);
	if (delivery_tag)
		*delivery_tag = tag;
	return AIQ_OK;
fail:
	free(tag);
	json_decref(env);
	aiq__wire_clear(out);
	return rc;
}
