/*
 * textstats: an analyzer plugin for libaiqueue.
 *
 * Registers the analyzer "textstats", which counts lines, stanzas, words and
 * characters in lyrics, measures how much of the text repeats (lines that
 * occur more than once, as choruses do) and reports the longest line.
 * Built against the public API only; load it with
 *   aiq_worker_load_plugin(worker, "/path/to/aiq-textstats.so")
 * or `aiqueue-worker --plugin /path/to/aiq-textstats.so`, then enqueue
 * tasks.analyze_track with analyzer="textstats".
 *
 * Parameters: {"min_word_length": N} counts only words of at least N
 * characters (default 1).
 *
 * It also registers a plain task, textstats.word_count(text,
 * min_word_length=1), which reads its arguments with the typed accessors
 * (aiq_task_arg_str(), aiq_task_kwarg_int()): no JSON library needed.
 */
#define AIQ_PLUGIN
#include <aiqueue/aiqueue.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tiny reader for {"min_word_length": N}; a real plugin would use a JSON library. */
static int min_word_length(const char *params_json)
{
	const char *p = params_json ? strstr(params_json, "\"min_word_length\"") : NULL;
	if (p == NULL)
		return 1;
	p = strchr(p + 17, ':');
	long n = p ? strtol(p + 1, NULL, 10) : 1;
	return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* Bytes 0x80-0xBF continue a UTF-8 sequence: they are not characters. */
static int is_continuation(unsigned char c)
{
	return (c & 0xC0) == 0x80;
}

/* A word character: ASCII letters and digits, apostrophes, and every
 * non-ASCII byte (letters of other scripts). */
static int is_word_byte(unsigned char c)
{
	return isalnum(c) || c == '\'' || c >= 0x80;
}

/* Words of at least min_len characters. */
static size_t count_words(const char *text, int min_len)
{
	size_t words = 0;
	for (const char *p = text; *p;) {
		if (!is_word_byte((unsigned char)*p)) {
			p++;
			continue;
		}
		int len = 0;
		for (; *p && is_word_byte((unsigned char)*p); p++)
			len += !is_continuation((unsigned char)*p);
		if (len >= min_len)
			words++;
	}
	return words;
}

struct line {
	const char *start;
	size_t len;
};

static int line_eq(const struct line *a, const struct line *b)
{
	return a->len == b->len && memcmp(a->start, b->start, a->len) == 0;
}

static void textstats(aiq_task *task, const char *text, const char *params_json, void *userdata)
{
	(void)userdata;
	int min_len = min_word_length(params_json);
	size_t n = strlen(text);
	struct line *lines = malloc((n + 1) * sizeof *lines);
	if (lines == NULL) {
		aiq_task_fail(task, "MemoryError", "out of memory", "builtins");
		return;
	}
	size_t nlines = 0, stanzas = 0, words = 0, chars = 0, longest = 0;
	int in_stanza = 0;
	for (const char *p = text; *p || p == text;) {
		const char *e = strchr(p, '\n');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len > 0) {
			size_t line_chars = 0;
			for (size_t i = 0; i < len; i++)
				line_chars += !is_continuation((unsigned char)p[i]);
			lines[nlines].start = p;
			lines[nlines++].len = len;
			if (line_chars > longest)
				longest = line_chars;
			if (!in_stanza)
				stanzas++;
			in_stanza = 1;
		} else {
			in_stanza = 0;
		}
		if (e == NULL)
			break;
		p = e + 1;
	}
	for (const char *p = text; *p; p++)
		chars += !is_continuation((unsigned char)*p);
	words = count_words(text, min_len);
	/* Lines that occur more than once (choruses, hooks), counted per occurrence. */
	size_t repeated = 0;
	for (size_t i = 0; i < nlines; i++) {
		for (size_t j = 0; j < nlines; j++) {
			if (i != j && line_eq(&lines[i], &lines[j])) {
				repeated++;
				break;
			}
		}
	}
	free(lines);
	/* Integer arithmetic: printf's %f would follow the host's locale. */
	size_t permille = nlines ? repeated * 1000 / nlines : 0;
	char out[512];
	snprintf(out, sizeof out,
	         "{\"lines\": %zu, \"stanzas\": %zu, \"words\": %zu, \"characters\": %zu, "
	         "\"longest_line\": %zu, \"repeated_lines\": %zu, \"repetition\": %zu.%03zu, "
	         "\"min_word_length\": %d}",
	         nlines, stanzas, words, chars, longest, repeated, permille / 1000, permille % 1000,
	         min_len);
	aiq_task_succeed(task, out);
}

/* textstats.word_count(text, min_word_length=1) -> {"words": N, "min_word_length": M} */
static void word_count(aiq_task *task, void *userdata)
{
	const char *text = NULL;
	int64_t min_len = 0;
	(void)userdata;
	/* A missing or mistyped argument fails the task with the library's
	 * message, e.g. "task ...: positional argument 0 is an integer, not a
	 * string". A missing keyword takes the default. */
	int rc = aiq_task_arg_str(&text, NULL, task, 0);
	if (rc == AIQ_OK) {
		rc = aiq_task_kwarg_int(&min_len, task, "min_word_length");
		if (rc == AIQ_ENOTFOUND) { /* a failed call leaves 0: set the default after */
			min_len = 1;
			rc = AIQ_OK;
		}
	}
	if (rc == AIQ_OK && aiq_task_arg_count(task) != 1) {
		aiq_task_fail(task, "TypeError", "word_count() takes 1 positional argument (text)",
		              "builtins");
		return;
	}
	if (rc != AIQ_OK) {
		aiq_task_fail(task, "TypeError", aiq_error_last(), "builtins");
		return;
	}
	if (min_len < 1 || min_len > 64) {
		aiq_task_fail(task, "ValueError", "min_word_length must be 1 to 64", "builtins");
		return;
	}
	char out[128];
	snprintf(out, sizeof out, "{\"words\": %zu, \"min_word_length\": %d}",
	         count_words(text, (int)min_len), (int)min_len);
	aiq_task_succeed(task, out);
}

AIQ_PLUGIN_EXPORT int aiq_plugin_abi_version(void)
{
	return AIQ_PLUGIN_ABI_VERSION;
}

AIQ_PLUGIN_EXPORT int aiq_plugin_register(aiq_worker *w)
{
	int rc = aiq_worker_add_analyzer(w, "textstats", textstats, NULL, NULL);
	if (rc == AIQ_OK)
		rc = aiq_worker_register(w, "textstats.word_count", word_count, NULL, NULL);
	return rc;
}
