/*
 * Broker and store URLs (lib/base/url.c) and the redactor. The text is read
 * as the library reads a list: segment by segment (aiq__url_segment_len),
 * each parsed with aiq__url_parse. Properties: the password parsed from a
 * segment shows fewer times in aiq__url_redact() of the whole text, and of
 * the segment, and in the parsed URL's `redacted`, than in the text itself
 * (so the password's own place is always hidden; the same characters may
 * still show where they are written elsewhere, as a host or a user name).
 * Checked when the text has no '%' (a percent-encoded password is not
 * spelled in the text) and the password has no '*' (the mask). Redacting
 * twice changes nothing more; a segment never runs past the text.
 */
#include "fuzz_common.h"
#include "url.h"

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0, len = strlen(needle);
	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
		n++;
	return len ? n : 0;
}

static void check_hidden(const char *text, const char *shown, const char *secret)
{
	if (shown == NULL || secret == NULL || strchr(secret, '*') || strchr(text, '%'))
		return;
	FUZZ_CHECK(count(shown, secret) < count(text, secret));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_cstr(data, size);
	if (text == NULL)
		return 0;
	char *red = aiq__url_redact(text);
	if (red) {
		char *twice = aiq__url_redact(red);
		FUZZ_CHECK(twice != NULL && strcmp(twice, red) == 0);
		free(twice);
	}
	const char *p = text;
	while (*p) {
		size_t n = aiq__url_segment_len(p);
		FUZZ_CHECK(n <= strlen(p));
		char *seg = fuzz_cstr((const uint8_t *)p, n);
		if (seg == NULL)
			break;
		aiq__url u;
		memset(&u, 0, sizeof u);
		if (aiq__url_parse(&u, seg) == AIQ_OK) {
			char *seg_red = aiq__url_redact(seg);
			check_hidden(text, red, u.password);
			check_hidden(seg, seg_red, u.password);
			check_hidden(seg, u.redacted, u.password);
			FUZZ_CHECK(u.port >= 0 && u.port <= 65535);
			free(seg_red);
		}
		aiq__url_clear(&u);
		free(seg);
		p += n;
		if (*p == ';')
			p++;
		else if (n == 0)
			break;
	}
	free(red);
	free(text);
	return 0;
}
