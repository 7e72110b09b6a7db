/*
 * Broker and store URLs (lib/base/url.c) and the redactor. Properties:
 * neither aiq__url_redact() nor the parsed URL's `redacted` text contains
 * the password parsed from the same URL (when that password is not also
 * written elsewhere in the URL, or made only of the mask's '*'); redacting
 * twice changes nothing more; the first segment of a list is never longer
 * than the text.
 */
#include "fuzz_common.h"
#include "url.h"

static void check_hidden(const char *text, const char *shown, const char *secret, const char *user)
{
	if (shown == NULL || secret == NULL || strlen(secret) < 2 || strstr("***", secret))
		return;
	/* A user name may be shown ("amqp://guest:***@h"); so may a password
	 * written inside it. */
	if (user && strstr(user, secret))
		return;
	/* Written somewhere outside the userinfo too (host, path, query):
	 * then it may show there. */
	const char *at = strrchr(text, '@');
	if (at == NULL || strstr(at + 1, secret))
		return;
	/* Or spelled by the shown "scheme://user" prefix. */
	const char *sep = strstr(text, "://");
	if (sep) {
		size_t n = (size_t)(sep - text) + 3, ulen = user ? strlen(user) : 0;
		char *prefix = malloc(n + ulen + 1);
		if (prefix == NULL)
			return;
		memcpy(prefix, text, n);
		memcpy(prefix + n, user ? user : "", ulen + 1);
		bool spelled = strstr(prefix, secret) != NULL;
		free(prefix);
		if (spelled)
			return;
	}
	FUZZ_CHECK(strstr(shown, secret) == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_cstr(data, size);
	if (text == NULL)
		return 0;
	FUZZ_CHECK(aiq__url_segment_len(text) <= strlen(text));
	char *red = aiq__url_redact(text);
	if (red) {
		char *twice = aiq__url_redact(red);
		FUZZ_CHECK(twice != NULL && strcmp(twice, red) == 0);
		free(twice);
	}
	aiq__url u;
	memset(&u, 0, sizeof u);
	if (aiq__url_parse(&u, text) == AIQ_OK) {
		check_hidden(text, red, u.password, u.user);
		check_hidden(text, u.redacted, u.password, u.user);
		FUZZ_CHECK(u.port >= 0 && u.port <= 65535);
	}
	aiq__url_clear(&u);
	free(red);
	free(text);
	return 0;
}
