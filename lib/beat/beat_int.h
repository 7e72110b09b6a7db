/*
 * The periodic scheduler's private parts: time zones read from TZif files
 * (tz.c), 5-field cron expressions (cron.c) and the schedule's entries
 * (schedule.c). The runtime with its Redis lease is beat.c.
 *
 * Times are UNIX seconds (int64_t) unless a name says _ms. A zone's offset
 * is seconds east of UTC (local = UTC + offset).
 */
#ifndef AIQ_BEAT_INT_H
#define AIQ_BEAT_INT_H

#include "internal.h"

#include <jansson.h>

/* ---- time zones (tz.c) ---------------------------------------------------- */

typedef struct aiq__tz aiq__tz;

/* Load the IANA zone `name` ("Europe/Berlin", "UTC") from TZDIR or
 * /usr/share/zoneinfo: its TZif transitions (v2+ 64-bit section, or v1)
 * and its POSIX TZ footer for times after the last transition. "UTC" and
 * "" work without any file. Thread-safe (no setenv/tzset). AIQ_EINVAL
 * (bad name, unreadable or malformed file) naming the zone. */
int aiq__tz_load(aiq__tz **out, const char *name);
void aiq__tz_free(aiq__tz *tz);
const char *aiq__tz_name(const aiq__tz *tz);
/* The UTC offset in effect at UNIX time t. */
int32_t aiq__tz_offset(const aiq__tz *tz, int64_t t);

/* Civil calendar helpers (proleptic Gregorian). */
int64_t aiq__days_from_civil(int64_t y, int m, int d);
void aiq__civil_from_days(int64_t days, int64_t *y, int *m, int *d);

/* ---- cron (cron.c) --------------------------------------------------------- */

typedef struct aiq__cron {
	uint64_t minute; /* bit n: minute n (0-59) */
	uint32_t hour;   /* bit n: hour n (0-23) */
	uint32_t dom;    /* bit n: day of month n (1-31) */
	uint16_t month;  /* bit n: month n (1-12) */
	uint8_t dow;     /* bit n: day of week n (0 = Sunday - 6) */
	bool dom_any;    /* day_of_month was "*" (unrestricted) */
	bool dow_any;    /* day_of_week was "*" */
} aiq__cron;

/* Parse the five fields (minute hour day-of-month month day-of-week), each
 * a list of *, N, N-M, with optional /STEP, names (jan-dec, sun-sat).
 * AIQ_EINVAL with a message naming the field and the bad part. */
int aiq__cron_parse_fields(aiq__cron *out, const char *minute, const char *hour, const char *dom,
                           const char *month, const char *dow);
/* "m h dom mon dow" in one string. */
int aiq__cron_parse(aiq__cron *out, const char *expr);
/* Does the local wall-clock minute (y-m-d h:mi) match? */
bool aiq__cron_matches(const aiq__cron *c, int64_t y, int m, int d, int h, int mi);
/* The first fire time strictly after UNIX time t, with the wall clock of
 * zone tz (NULL = UTC). DST rule: a wall-clock time that does not exist
 * (spring forward) fires once at the first instant after the gap; a
 * wall-clock time that occurs twice (autumn) fires once, at its first
 * occurrence. Returns INT64_MAX when no time matches within 8 years. */
int64_t aiq__cron_next(const aiq__cron *c, const aiq__tz *tz, int64_t t);
/* The UTC second wall-clock second w names in tz: its first occurrence, or,
 * when the clock skipped it (spring forward), the first instant after the
 * gap. Used by crontab and relative entries alike. */
int64_t aiq__tz_wall_to_utc(const aiq__tz *tz, int64_t w);

/* ---- the schedule (schedule.c) --------------------------------------------- */

/* ---- solar events (solar.c) ----------------------------------------------- */

/* Celery's solar events, in the order of a day. */
enum aiq__solar_event {
	AIQ__SOLAR_DAWN_ASTRONOMICAL,
	AIQ__SOLAR_DAWN_NAUTICAL,
	AIQ__SOLAR_DAWN_CIVIL,
	AIQ__SOLAR_SUNRISE,
	AIQ__SOLAR_NOON,
	AIQ__SOLAR_SUNSET,
	AIQ__SOLAR_DUSK_CIVIL,
	AIQ__SOLAR_DUSK_NAUTICAL,
	AIQ__SOLAR_DUSK_ASTRONOMICAL,
};

/* The event named `name` ("sunrise"), or -1. */
int aiq__solar_event_of(const char *name);
const char *aiq__solar_event_name(int event);
/* "dawn_astronomical, ..., dusk_astronomical" for messages. */
const char *aiq__solar_event_list(void);
/* The first time (whole UNIX seconds) strictly after t at which `event`
 * happens at latitude lat (degrees north, -90..90) and longitude lon
 * (degrees east, -180..180). Days on which it does not happen (polar day
 * or night) are skipped; INT64_MAX when it does not happen within a year. */
int64_t aiq__solar_next(int event, double lat, double lon, int64_t t);

/* ---- the schedule (schedule.c) --------------------------------------------- */

/* INTERVAL: slots are multiples of interval_ms since the epoch.
 * RELATIVE: Celery's schedule(relative=True): slots on the wall clock of
 * the zone, aligned to the interval's resolution (day, hour, minute,
 * second), step_ms apart, counted from 1970-01-01 00:00 local.
 * SOLAR: Celery's solar(event, lat, lon). */
enum aiq__beat_kind { AIQ__BEAT_INTERVAL, AIQ__BEAT_CRON, AIQ__BEAT_RELATIVE, AIQ__BEAT_SOLAR };

typedef struct aiq__solar {
	int event; /* enum aiq__solar_event */
	double lat, lon;
} aiq__solar;

/* An entry as given: the strings are borrowed (aiq__schedule_add copies). */
typedef struct aiq__beat_spec {
	const char *name;
	const char *task;
	const char *args_json;   /* JSON array text, NULL = [] */
	const char *kwargs_json; /* JSON object text, NULL = {} */
	const char *queue;       /* NULL = the configuration's */
	int64_t expires_ms;      /* 0 = none */
	int priority;            /* -1 = none */
	enum aiq__beat_kind kind;
	int64_t interval_ms; /* AIQ__BEAT_INTERVAL, AIQ__BEAT_RELATIVE */
	aiq__cron cron;      /* AIQ__BEAT_CRON */
	aiq__solar solar;    /* AIQ__BEAT_SOLAR */
} aiq__beat_spec;

typedef struct aiq__beat_entry {
	char *name;
	char *task;
	char *args_json;    /* JSON array text */
	char *kwargs_json;  /* JSON object text */
	char *queue;        /* NULL = the configuration's */
	int64_t expires_ms; /* 0 = none */
	int priority;       /* -1 = none */
	enum aiq__beat_kind kind;
	int64_t interval_ms; /* AIQ__BEAT_INTERVAL, AIQ__BEAT_RELATIVE */
	int64_t step_ms;     /* AIQ__BEAT_RELATIVE: the slots' step (below) */
	aiq__cron cron;      /* AIQ__BEAT_CRON */
	aiq__solar solar;    /* AIQ__BEAT_SOLAR */
	/* runtime (beat.c) */
	int64_t next_ms; /* the next slot not yet dispatched; 0 = not planned */
} aiq__beat_entry;

typedef struct aiq__schedule {
	aiq__beat_entry *v;
	size_t n, cap;
} aiq__schedule;

void aiq__schedule_clear(aiq__schedule *s);
/* Add an entry (inputs copied; JSON texts checked, NULL = [] / {}).
 * AIQ_EINVAL names the entry and the field; a name used twice too. */
int aiq__schedule_add(aiq__schedule *s, const aiq__beat_spec *e);
/* Celery's entry "options" object (queue, expires in seconds, priority)
 * into e; e->queue is borrowed from o. NULL or null = none. */
int aiq__entry_options(aiq__beat_spec *e, json_t *o, const char *name);
/* Read Celery's beat_schedule shape from a JSON object; *tz_name gets the
 * top-level "timezone" (borrowed from root) or NULL. All or nothing. */
int aiq__schedule_load_json(aiq__schedule *s, json_t *root, const char **tz_name);
int aiq__schedule_load_file(aiq__schedule *s, const char *path, char **tz_name);
/* Celery's delta_resolution: the step of a relative interval, the
 * interval rounded down to whole days when it is at least a day, else to
 * whole hours, minutes or seconds (90 min -> 1 h, as Celery steps from one
 * run to the next). 0 below one second. */
int64_t aiq__relative_step_ms(int64_t interval_ms);
/* The first slot of `e` strictly after t_ms (UNIX ms). Every kind is a
 * function of the time alone, so every instance agrees on the slots:
 * interval slots are multiples of the interval since the UNIX epoch; cron
 * slots are whole minutes; relative slots are the wall-clock multiples of
 * the step since 1970-01-01 00:00 in zone tz, with the DST rule of cron
 * (a wall time that does not exist fires at the first instant after the
 * gap, one that occurs twice at its first occurrence); solar slots are
 * whole seconds. INT64_MAX = never. */
int64_t aiq__entry_next_ms(const aiq__beat_entry *e, const aiq__tz *tz, int64_t t_ms);

/* ---- the lease and state in PostgreSQL (beat_pg.c) ----------------------------- */

/* The same operations as the Redis scripts of beat.c, on the tables
 * aiq_beat_lease, aiq_beat_sent and aiq_beat_last (created on first use).
 * Connects at the first call and reconnects after a drop; errors are
 * AIQ_ESTORE (AIQ_EUNSUPPORTED without PostgreSQL in the build). */
typedef struct aiq__beat_pg aiq__beat_pg;
int aiq__beat_pg_open(aiq__beat_pg **out, const char *url, const char *name);
void aiq__beat_pg_free(aiq__beat_pg *p);
/* *token = the lease's token when `id` holds it now (taken or renewed), else 0. */
int aiq__beat_pg_lease(aiq__beat_pg *p, int64_t *token, const char *id, int64_t lease_ms);
/* *out = -1 the lease is not (id, token), 0 the slot was claimed already, 1 claimed. */
int aiq__beat_pg_claim(aiq__beat_pg *p, int *out, const char *id, int64_t token, const char *entry,
                       int64_t slot);
/* Record a sent slot; now and then drop claims older than keep_ms. */
int aiq__beat_pg_done(aiq__beat_pg *p, const char *entry, int64_t slot, int64_t keep_ms);
/* Drop a claim held by holder ("id token") whose send failed. */
int aiq__beat_pg_undo(aiq__beat_pg *p, const char *entry, int64_t slot, const char *holder);
int aiq__beat_pg_release(aiq__beat_pg *p, const char *id, int64_t token);
/* *slot = the newest slot sent of entry, 0 = none. */
int aiq__beat_pg_last(aiq__beat_pg *p, int64_t *slot, const char *entry);

#endif /* AIQ_BEAT_INT_H */
