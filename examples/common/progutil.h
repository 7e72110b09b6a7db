/*
 * Helpers shared by the aiqueue programs (server, worker, beat, CLI): structured
 * log lines, URL redaction, number parsing, file reading. Public API only.
 */
#ifndef AIQ_PROGUTIL_H
#define AIQ_PROGUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Log levels match enum aiq_log_level. */
void prog_log_init(const char *program, int level);
int prog_log_level(void);
/*
 * One line on stderr: "<UTC timestamp> <LEVEL> <program> <event> <detail>".
 * Thread-safe (one write per line).
 */
void prog_log(int level, const char *event, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* A command-line mistake: "<program>: <message>" and "Try '<program>
 * --help'." on stderr; returns the usage exit status, 2. */
int prog_usage_error(const char *program, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
/* What getopt_long (with an option string starting with ':') returned as
 * c for the option `opt` (argv[optind - 1]): ':' a value missing, anything
 * else an unknown option. prog_usage_error(); returns 2. */
int prog_option_error(const char *program, int c, const char *opt);
/* broker.url, result.url and archive.url, when set, checked with
 * aiq_url_check_broker() / aiq_url_check_store(): a scheme this build
 * cannot open is logged ("startup") and gives -1, else 0. */
struct aiq_config;
int prog_check_urls(const struct aiq_config *cfg);
/* aiq_log_fn that routes the library's diagnostics through prog_log(). */
void prog_log_library(int level, const char *message, void *userdata);

/*
 * Copy @p url to @p out with its secrets replaced by "***" (aiq_url_redact():
 * passwords with or without a user, password= query values). Always
 * NUL-terminates.
 */
void prog_redact_url(char *out, size_t n, const char *url);

/* Parse a whole decimal integer in [min, max]. Returns 0 or -1. */
int prog_parse_int(long long *out, const char *text, long long min, long long max);
/* Parse a non-negative decimal number of seconds (e.g. "2.5"). Returns 0 or -1. */
int prog_parse_seconds(double *out, const char *text, double max);
/*
 * Parse a duration into seconds, at most @p max: a plain number is seconds
 * ("2.5"), or a number with a unit as a user would write it: "500ms",
 * "30s", "2m", "1h" (no space). Returns 0 or -1.
 */
int prog_parse_duration(double *out, const char *text, double max);
/* What the programs' --help and errors say about durations. */
#define PROG_DURATION_HINT "seconds, or with a unit: 500ms, 30s, 2m, 1h"

/* Read a whole stream or file into a NUL-terminated buffer (free()). NULL on error. */
char *prog_read_stream(FILE *f, size_t *len_out, size_t max_len);
char *prog_read_file(const char *path, size_t *len_out, size_t max_len);

/* Milliseconds on the monotonic clock, and UNIX time in milliseconds. */
int64_t prog_mono_ms(void);
int64_t prog_unix_ms(void);

/* aiq_event_fn writing one structured line per worker event:
 * "<ts> <LEVEL> <program> task.<event> <task_id> <task_name> <detail>". */
void prog_log_worker_event(int event, const char *task_id, const char *task_name,
                           const char *detail, void *userdata);
#endif /* AIQ_PROGUTIL_H */
