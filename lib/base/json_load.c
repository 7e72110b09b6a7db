/*
 * The fast path of aiq__json_loadb (json_load.h). jansson reads a document
 * one byte at a time through a stream with a UTF-8 check per byte and saves
 * each into a growing buffer before copying it again: a 64 KiB argument
 * costs more there than everything else a publish does. This parser reads
 * the same grammar straight from the buffer and builds the same jansson
 * values. Whenever it meets something it does not handle, or anything
 * jansson would refuse, it gives up (NULL from the parse functions, with no
 * value leaked) and the whole text goes to json_loadb, so that failures and
 * their messages are jansson's.
 */
#include "json_load.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Below jansson's own limit (JSON_PARSER_MAX_DEPTH, 2048): deeper documents
 * are rare and go to jansson, which knows its limit. */
#define FAST_MAX_DEPTH 256

typedef struct {
	const unsigned char *p, *end;
	bool allow_nul;
	char *scratch; /* decoded strings that held escapes */
	size_t scap;
} parser;

static void skip_ws(parser *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
		j->p++;
}

/* The length of the valid UTF-8 sequence at s (first byte >= 0x80), by the
 * rules jansson applies (no overlong forms, no surrogates, at most
 * U+10FFFF); 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, const unsigned char *end)
{
	unsigned char c = s[0];
	size_t n;
	uint32_t cp;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1fu;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3;
		cp = c & 0x0fu;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07u;
	} else {
		return 0;
	}
	if ((size_t)(end - s) < n)
		return 0;
	for (size_t k = 1; k < n; k++) {
		if ((s[k] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[k] & 0x3fu);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

static bool scratch_put(parser *j, size_t *len, const void *s, size_t n)
{
	if (n == 0)
		return true; /* (the buffer may not exist yet) */
	if (n > j->scap - *len) {
		size_t cap = j->scap ? j->scap : 256;
		while (cap - *len < n) {
			if (cap > SIZE_MAX / 2)
				return false;
			cap *= 2;
		}
		char *p = realloc(j->scratch, cap);
		if (p == NULL)
			return false;
		j->scratch = p;
		j->scap = cap;
	}
	memcpy(j->scratch + *len, s, n);
	*len += n;
	return true;
}

static int hex4(const unsigned char *s)
{
	int v = 0;
	for (int k = 0; k < 4; k++) {
		unsigned char c = s[k];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/* One escape after the backslash at j->p, appended to the scratch buffer. */
static bool put_escape(parser *j, size_t *len)
{
	if (j->end - j->p < 2)
		return false;
	unsigned char e = j->p[1];
	const char *one = NULL;
	switch (e) {
	case '"': one = "\""; break;
	case '\\': one = "\\"; break;
	case '/': one = "/"; break;
	case 'b': one = "\b"; break;
	case 'f': one = "\f"; break;
	case 'n': one = "\n"; break;
	case 'r': one = "\r"; break;
	case 't': one = "\t"; break;
	case 'u': break;
	default: return false;
	}
	if (one) {
		j->p += 2;
		return scratch_put(j, len, one, 1);
	}
	if (j->end - j->p < 6)
		return false;
	int32_t cp = hex4(j->p + 2);
	if (cp < 0)
		return false;
	j->p += 6;
	if (cp >= 0xdc00 && cp <= 0xdfff)
		return false; /* a lone low surrogate */
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u')
			return false;
		int32_t lo = hex4(j->p + 2);
		if (lo < 0xdc00 || lo > 0xdfff)
			return false;
		j->p += 6;
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
	}
	if (cp == 0 && !j->allow_nul)
		return false;
	unsigned char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (unsigned char)(0xc0 | (cp >> 6));
		u[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (unsigned char)(0xe0 | (cp >> 12));
		u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (unsigned char)(0xf0 | (cp >> 18));
		u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	return scratch_put(j, len, u, n);
}

/* The string whose opening quote is at j->p: *s and *n point to its bytes
 * (in the input when it held no escape, else in the scratch buffer). */
static bool scan_string(parser *j, const char **s, size_t *n)
{
	const unsigned char *start = ++j->p;
	bool escaped = false;
	size_t len = 0;
	for (;;) {
		while (j->end - j->p >= 8 && aiq__json_plain8(j->p, true))
			j->p += 8;
		if (j->p >= j->end)
			return false;
		unsigned char c = *j->p;
		if (c == '"') {
			if (escaped && !scratch_put(j, &len, start, (size_t)(j->p - start)))
				return false;
			break;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			escaped = true;
			if (!scratch_put(j, &len, start, (size_t)(j->p - start)) ||
			    !put_escape(j, &len))
				return false;
			start = j->p;
			continue;
		}
		size_t k = 1;
		if (c >= 0x80 && (k = utf8_seq(j->p, j->end)) == 0)
			return false;
		j->p += k;
	}
	if (escaped) {
		*s = j->scratch;
		*n = len;
	} else {
		*s = (const char *)start;
		*n = (size_t)(j->p - start);
	}
	j->p++; /* the closing quote */
	return true;
}

static json_t *parse_value(parser *j, int depth);

/* After '[' or '{' (at j->p) or after a member: 1 when the container
 * closes with `close` here (consumed), 0 when a member follows (a ',' was
 * consumed, or this is the first member), -1 when the text is not that. */
static int next_member(parser *j, unsigned char close, bool first)
{
	skip_ws(j);
	if (j->p >= j->end)
		return -1;
	if (*j->p == close) {
		j->p++;
		return 1;
	}
	if (!first) {
		if (*j->p != ',')
			return -1;
		j->p++;
		skip_ws(j);
	}
	return 0;
}

static json_t *parse_array(parser *j, int depth)
{
	json_t *a = json_array();
	if (a == NULL)
		return NULL;
	j->p++;
	int more;
	for (bool first = true; (more = next_member(j, ']', first)) == 0; first = false) {
		json_t *v = parse_value(j, depth + 1);
		if (v == NULL || json_array_append_new(a, v) != 0) {
			more = -1;
			break;
		}
	}
	if (more < 0) {
		json_decref(a);
		return NULL;
	}
	return a;
}

/* One "key": value member into o; false when the text is not that. */
static bool parse_member(parser *j, json_t *o, int depth)
{
	const char *ks;
	size_t kn;
	if (j->p >= j->end || *j->p != '"' || !scan_string(j, &ks, &kn))
		return false;
	/* The key may live in the scratch buffer, which the value reuses;
	 * jansson refuses keys with a NUL byte. */
	if (memchr(ks, '\0', kn) != NULL)
		return false;
	char small[128];
	char *key = kn < sizeof small ? small : malloc(kn + 1);
	if (key == NULL)
		return false;
	memcpy(key, ks, kn);
	key[kn] = '\0';
	skip_ws(j);
	json_t *v = NULL;
	if (j->p < j->end && *j->p == ':') {
		j->p++;
		skip_ws(j);
		v = parse_value(j, depth + 1);
	}
	int rc = v ? json_object_set_new_nocheck(o, key, v) : -1;
	if (key != small)
		free(key);
	return rc == 0;
}

static json_t *parse_object(parser *j, int depth)
{
	json_t *o = json_object();
	if (o == NULL)
		return NULL;
	j->p++;
	int more;
	for (bool first = true; (more = next_member(j, '}', first)) == 0; first = false) {
		if (!parse_member(j, o, depth)) {
			more = -1;
			break;
		}
	}
	if (more < 0) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* Integers only, and of up to 18 digits (they cannot overflow); reals and
 * longer ones are left to jansson. */
static json_t *parse_number(parser *j)
{
	const unsigned char *p = j->p;
	bool neg = false;
	if (*p == '-') {
		neg = true;
		p++;
	}
	if (p >= j->end || *p < '0' || *p > '9')
		return NULL;
	const unsigned char *digits = p;
	int64_t v = 0;
	if (*p == '0') {
		p++;
	} else {
		while (p < j->end && *p >= '0' && *p <= '9') {
			if (p - digits >= 18)
				return NULL;
			v = v * 10 + (*p - '0');
			p++;
		}
	}
	if (p < j->end && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9')))
		return NULL;
	j->p = p;
	return json_integer(neg ? -v : v);
}

static bool literal(parser *j, const char *word, size_t n)
{
	if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
		return false;
	j->p += n;
	return true;
}

static json_t *parse_value(parser *j, int depth)
{
	if (depth > FAST_MAX_DEPTH || j->p >= j->end)
		return NULL;
	switch (*j->p) {
	case '{': return parse_object(j, depth);
	case '[': return parse_array(j, depth);
	case '"': {
		const char *s;
		size_t n;
		if (!scan_string(j, &s, &n))
			return NULL;
		return json_stringn_nocheck(s, n);
	}
	case 't': return literal(j, "true", 4) ? json_true() : NULL;
	case 'f': return literal(j, "false", 5) ? json_false() : NULL;
	case 'n': return literal(j, "null", 4) ? json_null() : NULL;
	default: return parse_number(j);
	}
}

json_t *aiq__json_fast(const char *text, size_t len, size_t flags)
{
	if (text == NULL || (flags & ~(size_t)(JSON_DECODE_ANY | JSON_ALLOW_NUL)) != 0)
		return NULL;
	parser j = {(const unsigned char *)text, (const unsigned char *)text + len,
	            (flags & JSON_ALLOW_NUL) != 0, NULL, 0};
	skip_ws(&j);
	json_t *v = NULL;
	if (j.p < j.end && ((flags & JSON_DECODE_ANY) || *j.p == '{' || *j.p == '['))
		v = parse_value(&j, 0);
	free(j.scratch);
	if (v == NULL)
		return NULL;
	skip_ws(&j);
	if (j.p != j.end) {
		json_decref(v);
		return NULL;
	}
	return v;
}

json_t *aiq__json_loadb(const char *text, size_t len, size_t flags, json_error_t *err)
{
	json_t *v = aiq__json_fast(text, len, flags);
	if (v == NULL)
		return json_loadb(text, len, flags, err);
	if (err != NULL) {
		err->text[0] = '\0';
		err->line = err->column = -1;
		err->position = 0;
	}
	return v;
}
