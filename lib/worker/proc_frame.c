/*
 * Frames of the process pool: a 4-byte big-endian length, then a JSON
 * object, over a Unix stream socket (proc_int.h).
 */
#include "proc_int.h"
#include "json_load.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		/* MSG_NOSIGNAL: a dead child must not raise SIGPIPE in the parent. */
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int recv_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1; /* end of file or error */
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Send a JSON object as one frame; steals the reference. 0 or -1. */
int aiq__frame_send(int fd, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (text == NULL)
		return -1;
	size_t len = strlen(text);
	int rc = -1;
	if (len <= FRAME_MAX) {
		unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
		                        (unsigned char)(len >> 8), (unsigned char)len};
		rc = send_all(fd, hdr, 4) == 0 && send_all(fd, text, len) == 0 ? 0 : -1;
	}
	free(text);
	return rc;
}

/* Read one frame holding a JSON object. 0, or -1 on end of file, an I/O
 * error or a frame that is not a JSON object of at most FRAME_MAX bytes. */
int aiq__frame_recv(int fd, json_t **out)
{
	*out = NULL;
	unsigned char hdr[4];
	if (recv_all(fd, hdr, 4) != 0)
		return -1;
	size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
	if (len > FRAME_MAX)
		return -1;
	char *buf = malloc(len + 1);
	if (buf == NULL || recv_all(fd, buf, len) != 0) {
		free(buf);
		return -1;
	}
	json_t *v = aiq__json_loadb(buf, len, 0, NULL);
	free(buf);
	if (!json_is_object(v)) {
		json_decref(v);
		return -1;
	}
	*out = v;
	return 0;
}

/* Set a string member unless s is NULL; text that is not UTF-8 is kept
 * with '?' for the bad bytes (a message must never fail for it). */
void aiq__frame_set_str(json_t *obj, const char *key, const char *s)
{
	if (s)
		json_object_set_new(obj, key, aiq__json_string_lossy(s));
}

char *aiq__frame_get_str(const json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s ? strdup(s) : NULL;
}
