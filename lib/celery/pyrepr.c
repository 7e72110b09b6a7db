/*
 * Python-flavoured text for JSON values: repr() as Celery writes argsrepr and
 * kwargsrepr, and json.dumps() with Python's default separators. Both follow
 * CPython's float repr (shortest round-trip digits) so that bodies produced
 * here read the same as those a Python client sends.
 */
#include "json_load.h"
#include "message.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* jansson's parser stops at 2048 levels; values built in code could go deeper,
 * so the writers refuse rather than recurse without bound. */
#define PY_MAX_DEPTH 2048

/* Keys may hold "\u0000" (jansson 2.14 keeps their length); older jansson
 * cuts keys at the first NUL anyway. */
#ifdef json_object_keylen_foreach
#define OBJECT_FOREACH(obj, key, klen, item) json_object_keylen_foreach(obj, key, klen, item)
#else
#define OBJECT_FOREACH(obj, key, klen, item)                                                       \
	json_object_foreach(obj, key, item) if (((klen) = strlen(key)), 0)                         \
	{                                                                                          \
	}                                                                                          \
	else
#endif

/* limit: once more than this many bytes are written (0 = no limit) the
 * buffer is full and further writes are dropped: a repr that is cut to the
 * argsrepr limit afterwards need not be written whole. */
typedef struct pybuf {
	char *p;
	size_t len, cap, limit;
	bool failed, full;
} pybuf;

static void buf_reserve(pybuf *b, size_t extra)
{
	if (b->failed || b->full)
		return;
	if (b->len + extra + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + extra + 1) {
		if (cap > SIZE_MAX / 2) {
			b->failed = true;
			return;
		}
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (p == NULL) {
		b->failed = true;
		return;
	}
	b->p = p;
	b->cap = cap;
}

static void buf_add(pybuf *b, const char *s, size_t n)
{
	if (b->full)
		return;
	if (b->limit && n > b->limit + 1 - b->len)
		n = b->limit + 1 - b->len; /* the rest would be cut anyway */
	buf_reserve(b, n);
	if (b->failed)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	b->full = b->limit && b->len > b->limit;
}

static void buf_puts(pybuf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_putc(pybuf *b, char c)
{
	buf_add(b, &c, 1);
}

static char *buf_finish(pybuf *b)
{
	if (b->failed) {
		free(b->p);
		return NULL;
	}
	if (b->p == NULL)
		return aiq__strdup("");
	return b->p;
}

/* CPython's float.__repr__: the shortest digit string that reads back as the
 * same double, in positional notation for exponents -4..15 and scientific
 * ("1e+16", "1.5e-07") outside it; integral values keep a ".0". */
static void format_py_float(pybuf *b, double v)
{
	char tmp[64];
	int prec;
	for (prec = 1; prec <= 17; prec++) {
		snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
		if (strtod(tmp, NULL) == v)
			break;
	}
	if (prec > 17) {
		prec = 17;
		snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
	}
	/* tmp is "[-]d[.ddd]e[+-]XX": split into sign, digits and exponent. */
	const char *p = tmp;
	bool neg = false;
	if (*p == '-') {
		neg = true;
		p++;
	}
	char digits[32];
	size_t nd = 0;
	while (*p && *p != 'e') {
		if (*p >= '0' && *p <= '9' && nd < sizeof digits - 1)
			digits[nd++] = *p;
		p++;
	}
	digits[nd] = '\0';
	int exp10 = *p == 'e' ? (int)strtol(p + 1, NULL, 10) : 0;
	while (nd > 1 && digits[nd - 1] == '0')
		digits[--nd] = '\0';

	if (neg)
		buf_putc(b, '-');
	if (exp10 < -4 || exp10 >= 16) {
		buf_putc(b, digits[0]);
		if (nd > 1) {
			buf_putc(b, '.');
			buf_add(b, digits + 1, nd - 1);
		}
		snprintf(tmp, sizeof tmp, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
		buf_puts(b, tmp);
	} else if (exp10 < 0) {
		buf_puts(b, "0.");
		for (int i = -1; i > exp10; i--)
			buf_putc(b, '0');
		buf_add(b, digits, nd);
	} else {
		size_t whole = (size_t)exp10 + 1;
		if (nd <= whole) {
			buf_add(b, digits, nd);
			for (size_t i = nd; i < whole; i++)
				buf_putc(b, '0');
			buf_puts(b, ".0");
		} else {
			buf_add(b, digits, whole);
			buf_putc(b, '.');
			buf_add(b, digits + whole, nd - whole);
		}
	}
}

static void format_int(pybuf *b, json_int_t v)
{
	char tmp[32];
	snprintf(tmp, sizeof tmp, "%" JSON_INTEGER_FORMAT, v);
	buf_puts(b, tmp);
}

/* ------------------------------------------------------------------------ */
/* json.dumps(v) with ensure_ascii=False                                    */

static void dumps_string(pybuf *b, const char *s, size_t n)
{
	buf_reserve(b, n + 2); /* the whole string when nothing needs escaping */
	buf_putc(b, '"');
	size_t run = 0, i = 0;
	while (i < n) {
		while (n - i >= 8 && aiq__json_plain8(s + i, false))
			i += 8;
		if (i >= n)
			break;
		unsigned char c = (unsigned char)s[i];
		const char *esc = NULL;
		char hex[8];
		switch (c) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		case '\b': esc = "\\b"; break;
		case '\f': esc = "\\f"; break;
		default:
			if (c < 0x20) {
				snprintf(hex, sizeof hex, "\\u%04x", c);
				esc = hex;
			}
		}
		i++;
		if (esc == NULL)
			continue;
		buf_add(b, s + run, i - 1 - run);
		buf_puts(b, esc);
		run = i;
	}
	buf_add(b, s + run, n - run);
	buf_putc(b, '"');
}

static void dumps_value(pybuf *b, const json_t *v, int depth)
{
	if (depth > PY_MAX_DEPTH) {
		b->failed = true;
		return;
	}
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		size_t klen;
		json_t *item;
		bool first = true;
		buf_putc(b, '{');
		OBJECT_FOREACH((json_t *)(uintptr_t)v, key, klen, item)
		{
			if (!first)
				buf_puts(b, ", ");
			first = false;
			dumps_string(b, key, klen);
			buf_puts(b, ": ");
			dumps_value(b, item, depth + 1);
		}
		buf_putc(b, '}');
		break;
	}
	case JSON_ARRAY:
		buf_putc(b, '[');
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				buf_puts(b, ", ");
			dumps_value(b, json_array_get(v, i), depth + 1);
		}
		buf_putc(b, ']');
		break;
	case JSON_STRING: dumps_string(b, json_string_value(v), json_string_length(v)); break;
	case JSON_INTEGER: format_int(b, json_integer_value(v)); break;
	case JSON_REAL: format_py_float(b, json_real_value(v)); break;
	case JSON_TRUE: buf_puts(b, "true"); break;
	case JSON_FALSE: buf_puts(b, "false"); break;
	case JSON_NULL: buf_puts(b, "null"); break;
	}
}

char *aiq__json_dumps_py(const json_t *v)
{
	if (v == NULL)
		return NULL;
	pybuf b = {0};
	dumps_value(&b, v, 0);
	return buf_finish(&b);
}

/* ------------------------------------------------------------------------ */
/* repr()                                                                   */

/* Decode one UTF-8 sequence of valid input; returns its length. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : 4;
	if (len > n || (c >= 0x80 && c < 0xc0) || c >= 0xf8) {
		*cp = c; /* stray byte: shown as \xNN */
		return 1;
	}
	uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1fu) : len == 3 ? (c & 0x0fu) : (c & 0x07u);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			*cp = c;
			return 1;
		}
		v = (v << 6) | (s[i] & 0x3fu);
	}
	*cp = v;
	return len;
}

/* An approximation of str.isprintable() for the characters likely to turn up
 * in task arguments: controls, separators other than ' ', format characters,
 * surrogates, private use and noncharacters are escaped as Python does. */
static bool py_printable(uint32_t cp)
{
	if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad)
		return false;
	if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) ||
	    (cp >= 0x205f && cp <= 0x206f) || cp == 0x3000 || cp == 0xfeff ||
	    (cp >= 0xfff9 && cp <= 0xfffb))
		return false;
	if ((cp >= 0xd800 && cp <= 0xf8ff) || (cp >= 0xfdd0 && cp <= 0xfdef) ||
	    (cp & 0xfffe) == 0xfffe || cp >= 0xe0000)
		return false;
	return true;
}

static void repr_string(pybuf *b, const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	bool has_single = memchr(s, '\'', n) != NULL;
	bool has_double = memchr(s, '"', n) != NULL;
	char quote = has_single && !has_double ? '"' : '\'';
	buf_putc(b, quote);
	size_t i = 0;
	while (i < n && !b->full) {
		/* A run of printable ASCII other than the quote and '\\' is copied
		 * as it is, in one piece. */
		size_t run = i, stop = n;
		if (b->limit && n - i > b->limit + 1 - b->len)
			stop = i + (b->limit + 1 - b->len); /* buf_add cuts there */
		while (run < stop && s[run] >= 0x20 && s[run] < 0x7f &&
		       s[run] != (unsigned char)quote && s[run] != '\\')
			run++;
		if (run > i) {
			buf_add(b, (const char *)s + i, run - i);
			i = run;
			continue;
		}
		uint32_t cp;
		size_t len = utf8_next(s + i, n - i, &cp);
		char tmp[16];
		if (cp == (uint32_t)quote || cp == '\\') {
			tmp[0] = '\\';
			tmp[1] = (char)cp;
			buf_add(b, tmp, 2);
		} else if (cp == '\n') {
			buf_puts(b, "\\n");
		} else if (cp == '\r') {
			buf_puts(b, "\\r");
		} else if (cp == '\t') {
			buf_puts(b, "\\t");
		} else if (len == 1 && cp >= 0x80) {
			snprintf(tmp, sizeof tmp, "\\x%02x", (unsigned)cp); /* invalid byte */
			buf_puts(b, tmp);
		} else if (!py_printable(cp)) {
			if (cp < 0x100)
				snprintf(tmp, sizeof tmp, "\\x%02x", (unsigned)cp);
			else if (cp < 0x10000)
				snprintf(tmp, sizeof tmp, "\\u%04x", (unsigned)cp);
			else
				snprintf(tmp, sizeof tmp, "\\U%08x", (unsigned)cp);
			buf_puts(b, tmp);
		} else {
			buf_add(b, (const char *)s + i, len);
		}
		i += len;
	}
	buf_putc(b, quote);
}

static void repr_value(pybuf *b, const json_t *v, int depth)
{
	if (b->full)
		return;
	if (depth > PY_MAX_DEPTH) {
		b->failed = true;
		return;
	}
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		size_t klen;
		json_t *item;
		bool first = true;
		buf_putc(b, '{');
		OBJECT_FOREACH((json_t *)(uintptr_t)v, key, klen, item)
		{
			if (b->full)
				break;
			if (!first)
				buf_puts(b, ", ");
			first = false;
			repr_string(b, key, klen);
			buf_puts(b, ": ");
			repr_value(b, item, depth + 1);
		}
		buf_putc(b, '}');
		break;
	}
	case JSON_ARRAY:
		buf_putc(b, '[');
		for (size_t i = 0; i < json_array_size(v) && !b->full; i++) {
			if (i)
				buf_puts(b, ", ");
			repr_value(b, json_array_get(v, i), depth + 1);
		}
		buf_putc(b, ']');
		break;
	case JSON_STRING: repr_string(b, json_string_value(v), json_string_length(v)); break;
	case JSON_INTEGER: format_int(b, json_integer_value(v)); break;
	case JSON_REAL: format_py_float(b, json_real_value(v)); break;
	case JSON_TRUE: buf_puts(b, "True"); break;
	case JSON_FALSE: buf_puts(b, "False"); break;
	case JSON_NULL: buf_puts(b, "None"); break;
	}
}

/* Cut to at most `max` bytes, ending in "..." and never inside a UTF-8
 * sequence. max == 0 means no limit. */
static char *truncate_repr(char *s, size_t max)
{
	if (s == NULL || max == 0)
		return s;
	size_t n = strlen(s);
	if (n <= max)
		return s;
	if (max < 3) {
		s[0] = '\0';
		return s;
	}
	size_t keep = max - 3;
	while (keep > 0 && ((unsigned char)s[keep] & 0xc0) == 0x80)
		keep--;
	memcpy(s + keep, "...", 4);
	return s;
}

char *aiq__pyrepr_args(const json_t *args, size_t max)
{
	pybuf b = {.limit = max};
	buf_putc(&b, '(');
	if (json_is_array(args)) {
		size_t n = json_array_size(args);
		for (size_t i = 0; i < n && !b.full; i++) {
			if (i)
				buf_puts(&b, ", ");
			repr_value(&b, json_array_get(args, i), 1);
		}
		if (n == 1)
			buf_putc(&b, ',');
	}
	buf_putc(&b, ')');
	return truncate_repr(buf_finish(&b), max);
}

char *aiq__pyrepr_kwargs(const json_t *kwargs, size_t max)
{
	pybuf b = {.limit = max};
	if (json_is_object(kwargs))
		repr_value(&b, kwargs, 0);
	else
		buf_puts(&b, "{}");
	return truncate_repr(buf_finish(&b), max);
}
