#include "progutil.h"

#include <aiqueue/aiqueue.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *log_program = "aiqueue";
static int log_level = AIQ_LOG_INFO;

void prog_log_init(const char *program, int level)
{
	log_program = program;
	log_level = level;
}

int prog_log_level(void)
{
	return log_level;
}

static const char *level_name(int level)
{
	if (level >= AIQ_LOG_ERROR)
		return "ERROR";
	if (level >= AIQ_LOG_WARNING)
		return "WARNING";
	if (level >= AIQ_LOG_INFO)
		return "INFO";
	return "DEBUG";
}

void prog_log(int level, const char *event, const char *fmt, ...)
{
	if (level < log_level)
		return;
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	char line[2048];
	int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s %s ",
	                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
	                 tm.tm_sec, ts.tv_nsec / 1000000, level_name(level), log_program, event);
	if (n < 0 || (size_t)n >= sizeof line)
		return;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	/* One event is one line, whatever the detail holds. */
	for (size_t i = (size_t)n; i < len; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void prog_log_library(int level, const char *message, void *userdata)
{
	(void)userdata;
	prog_log(level, "library", "%s", message);
}

void prog_redact_url(char *out, size_t n, const char *url)
{
	if (n == 0)
		return;
	/* The library's redactor, so that every program hides the same secrets. */
	char *safe = NULL;
	if (aiq_url_redact(&safe, url ? url : "") == AIQ_OK)
		snprintf(out, n, "%s", safe);
	else
		snprintf(out, n, "***");
	aiq_free(safe);
}

int prog_parse_int(long long *out, const char *text, long long min, long long max)
{
	if (text == NULL || *text == '\0')
		return -1;
	char *end;
	errno = 0;
	long long v = strtoll(text, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int prog_parse_seconds(double *out, const char *text, double max)
{
	if (text == NULL || *text == '\0')
		return -1;
	char *end;
	errno = 0;
	double v = strtod(text, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0 || v > max)
		return -1;
	*out = v;
	return 0;
}

int prog_parse_duration(double *out, const char *text, double max)
{
	static const struct {
		const char *suffix;
		double seconds;
	} units[] = {{"ms", 0.001}, {"s", 1}, {"m", 60}, {"h", 3600}};
	if (text == NULL || *text == '\0')
		return -1;
	char *end;
	errno = 0;
	double v = strtod(text, &end);
	if (end == text || errno != 0 || !isfinite(v) || v < 0)
		return -1;
	if (*end != '\0') {
		size_t i = 0;
		while (i < sizeof units / sizeof units[0] && strcmp(end, units[i].suffix) != 0)
			i++;
		if (i == sizeof units / sizeof units[0])
			return -1;
		v *= units[i].seconds;
	}
	/* strtod also reads "inf", "nan" and hex: only plain decimals here. */
	for (const char *p = text; p < end; p++)
		if (!(*p >= '0' && *p <= '9') && *p != '.')
			return -1;
	if (v > max)
		return -1;
	*out = v;
	return 0;
}

char *prog_read_stream(FILE *f, size_t *len_out, size_t max_len)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	if (buf == NULL)
		return NULL;
	for (;;) {
		if (cap - len < 2) {
			char *nb = cap > max_len ? NULL : realloc(buf, cap * 2);
			if (nb == NULL) {
				free(buf);
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		size_t got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0)
			break;
	}
	if (ferror(f) || len > max_len) {
		free(buf);
		return NULL;
	}
	buf[len] = '\0';
	if (len_out)
		*len_out = len;
	return buf;
}

char *prog_read_file(const char *path, size_t *len_out, size_t max_len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	char *buf = prog_read_stream(f, len_out, max_len);
	fclose(f);
	return buf;
}

int64_t prog_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t prog_unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void prog_log_worker_event(int event, const char *task_id, const char *task_name,
                           const char *detail, void *userdata)
{
	static const char *const names[] = {"",
	                                    "task.received",
	                                    "task.started",
	                                    "task.succeeded",
	                                    "task.failed",
	                                    "task.retried",
	                                    "task.revoked",
	                                    "task.rejected"};
	(void)userdata;
	const char *name = event >= 1 && event <= 7 ? names[event] : "task.event";
	int level = AIQ_LOG_INFO;
	if (event == AIQ_EVENT_STARTED)
		level = AIQ_LOG_DEBUG;
	else if (event == AIQ_EVENT_FAILED || event == AIQ_EVENT_REJECTED)
		level = AIQ_LOG_WARNING;
	prog_log(level, name, "%s %s%s%s", task_id ? task_id : "-", task_name ? task_name : "-",
	         detail ? " " : "", detail ? detail : "");
}

int prog_usage_error(const char *program, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", program);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '%s --help'.\n", program);
	return 2;
}

int prog_option_error(const char *program, int c, const char *opt)
{
	if (c == ':')
		return prog_usage_error(program, "option '%s' needs a value", opt);
	return prog_usage_error(program, "unknown option '%s'", opt);
}

/*
 * A URL whose scheme this build cannot open can never work: say which
 * feature and package it needs and exit now. A service that is merely down
 * is the run's business (it may be waited for).
 */
int prog_check_urls(const aiq_config *cfg)
{
	static const struct {
		const char *key;
		int store;
	} urls[] = {{"broker.url", 0}, {"result.url", 1}, {"archive.url", 1}};
	for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
		char *url = NULL;
		aiq_config_get(&url, cfg, urls[i].key);
		int rc = AIQ_OK;
		if (url && *url)
			rc = urls[i].store ? aiq_url_check_store(url) : aiq_url_check_broker(url);
		aiq_free(url);
		if (rc != AIQ_OK) {
			prog_log(AIQ_LOG_ERROR, "startup", "%s: %s", urls[i].key, aiq_error_last());
			return -1;
		}
	}
	return 0;
}
