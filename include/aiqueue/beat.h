/**
 * @file beat.h
 * @brief Periodic tasks: a scheduler that sends ordinary task messages on a
 *        schedule, like Celery beat, and may run as several instances.
 *
 * Entries are intervals (multiples of the interval since the UNIX epoch) or
 * 5-field crontab expressions on the wall clock of `beat.timezone` (an IANA
 * zone). With a Redis for coordination (`beat.url`, else the result store's
 * or the broker's Redis; or a PostgreSQL `beat.url`), any number of
 * schedulers may run: one holds a
 * leader lease and sends, and each slot of each entry is sent at most once
 * even while the lease changes hands; missed slots no older than
 * `beat.catchup_s` are sent after a failover or downtime. Without Redis one
 * instance keeps its state in the process. docs/workflows.md, "Periodic
 * tasks", states the guarantees, the DST rule and the catch-up policy.
 *
 * Set up (load, add) before aiq_beat_run(); aiq_beat_stop() is safe from
 * any thread and from a signal handler.
 */
#ifndef AIQUEUE_BEAT_H
#define AIQUEUE_BEAT_H

#include <aiqueue/common.h>
#include <aiqueue/config.h>

AIQ_BEGIN_DECLS

/** @brief Opaque scheduler handle. @since 0.2 */
typedef struct aiq_beat aiq_beat;

/**
 * @brief Create a scheduler (connects nothing until aiq_beat_run()).
 *
 * Reads the `beat.*` keys; when `beat.schedule` names a file it is loaded
 * as by aiq_beat_load_file().
 *
 * @param[out] out receives the scheduler (free with aiq_beat_free()); NULL
 *             on failure.
 * @param cfg configuration (copied); NULL for the defaults.
 * @return #AIQ_OK, #AIQ_EINVAL (an unknown `beat.timezone`, a bad schedule
 *         file, a `beat.url` that is neither Redis nor PostgreSQL),
 *         #AIQ_EUNSUPPORTED (a `beat.url` this build has no driver for),
 *         #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_beat_new(aiq_beat **out, const aiq_config *cfg);

/**
 * @brief Free a scheduler. Must not be called while aiq_beat_run() runs.
 *        NULL is a no-op.
 * @since 0.2
 */
AIQ_API void aiq_beat_free(aiq_beat *b);

/**
 * @brief Add the entries of a schedule file: JSON in Celery's
 *        `beat_schedule` shape, `{"name": {"task": …, "schedule": seconds |
 *        {"crontab": {…}}, "args": […], "kwargs": {…}, "options": {…}}}`,
 *        with an optional top-level `"timezone"`.
 *
 * All or nothing: on an error no entry of the file is added, and the
 * message names the file, the entry and the field.
 *
 * @param b scheduler (not running).
 * @param path file name.
 * @return #AIQ_OK, #AIQ_EINVAL (unreadable, not JSON, a bad entry, a name
 *         already used, an unknown timezone), #AIQ_ESTATE (running),
 *         #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_beat_load_file(aiq_beat *b, const char *path);

/**
 * @brief Add an entry sent every @p interval_s seconds.
 *
 * @param b scheduler (not running).
 * @param name entry name, unique within the scheduler (copied).
 * @param task task name (copied).
 * @param args_json JSON array of positional arguments, or NULL for `[]`.
 * @param kwargs_json JSON object of keyword arguments, or NULL for `{}`.
 * @param interval_s seconds, 0.001 to 10 years; slots are multiples of it
 *        since the UNIX epoch.
 * @param options_json Celery's entry options as a JSON object (`queue`,
 *        `expires` in seconds, `priority`), or NULL.
 * @return #AIQ_OK, #AIQ_EINVAL (message names the entry and the field),
 *         #AIQ_ESTATE (running), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_beat_add_interval(aiq_beat *b, const char *name, const char *task,
                                  const char *args_json, const char *kwargs_json, double interval_s,
                                  const char *options_json);

/**
 * @brief Add an entry sent at the times of a crontab expression.
 *
 * @param b scheduler (not running).
 * @param name entry name, unique within the scheduler (copied).
 * @param task task name (copied).
 * @param args_json JSON array of positional arguments, or NULL for `[]`.
 * @param kwargs_json JSON object of keyword arguments, or NULL for `{}`.
 * @param cron_expr "minute hour day_of_month month_of_year day_of_week",
 *        each a list of `*`, `N`, `N-M`, with an optional `/STEP`, and the
 *        names jan–dec, sun–sat.
 * @param options_json as for aiq_beat_add_interval().
 * @return #AIQ_OK, #AIQ_EINVAL (message names the entry and the field),
 *         #AIQ_ESTATE (running), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_beat_add_cron(aiq_beat *b, const char *name, const char *task,
                              const char *args_json, const char *kwargs_json, const char *cron_expr,
                              const char *options_json);

/**
 * @brief Add an entry like Celery's `schedule(interval, relative=True)`:
 *        its run times are rounded down to the interval's resolution.
 *
 * The step is the interval rounded down to whole days when it is at least
 * a day, else to whole hours, minutes or seconds (Celery's
 * delta_resolution: 90 minutes steps by one hour, as Celery does from one
 * run to the next). The slots are the multiples of the step on the wall
 * clock of the scheduler's zone counted from 1970-01-01 00:00 local, so
 * every instance computes the same ones: 3600 fires at every full hour,
 * 86400 at every local midnight, 300 at :00, :05, …. DST as for crontab
 * entries: a wall time that does not exist (spring forward) fires at the
 * first instant after the gap, one that occurs twice fires once, at its
 * first occurrence.
 *
 * @param b scheduler (not running).
 * @param name entry name, unique within the scheduler (copied).
 * @param task task name (copied).
 * @param args_json JSON array of positional arguments, or NULL for `[]`.
 * @param kwargs_json JSON object of keyword arguments, or NULL for `{}`.
 * @param interval_s seconds, 1 to 10 years.
 * @param options_json as for aiq_beat_add_interval().
 * @return #AIQ_OK, #AIQ_EINVAL (message names the entry and the field),
 *         #AIQ_ESTATE (running), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_beat_add_relative(aiq_beat *b, const char *name, const char *task,
                                  const char *args_json, const char *kwargs_json, double interval_s,
                                  const char *options_json);

/**
 * @brief Add an entry sent at a solar event, like Celery's
 *        `solar(event, lat, lon)`.
 *
 * The times come from NOAA's solar position algorithm, within about a
 * minute of PyEphem (which Celery uses) between latitudes -65 and 65; they
 * are whole seconds. Sunrise and sunset put the Sun's upper limb at -0:34
 * degrees, the dawns and dusks its centre at -6 (civil), -12 (nautical)
 * and -18 (astronomical) degrees, solar noon is the transit, all without
 * refraction, as Celery asks PyEphem. Days on which the event does not
 * happen (polar day or night) are skipped; an event that does not happen
 * within a year (at a pole) never fires.
 *
 * @param b scheduler (not running).
 * @param name entry name, unique within the scheduler (copied).
 * @param task task name (copied).
 * @param args_json JSON array of positional arguments, or NULL for `[]`.
 * @param kwargs_json JSON object of keyword arguments, or NULL for `{}`.
 * @param event one of `dawn_astronomical`, `dawn_nautical`, `dawn_civil`,
 *        `sunrise`, `solar_noon`, `sunset`, `dusk_civil`, `dusk_nautical`,
 *        `dusk_astronomical`.
 * @param lat latitude in degrees north, -90 to 90.
 * @param lon longitude in degrees east, -180 to 180.
 * @param options_json as for aiq_beat_add_interval().
 * @return #AIQ_OK, #AIQ_EINVAL (an unknown event, a latitude or longitude
 *         out of range; the message names the entry and the field),
 *         #AIQ_ESTATE (running), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_beat_add_solar(aiq_beat *b, const char *name, const char *task,
                               const char *args_json, const char *kwargs_json, const char *event,
                               double lat, double lon, const char *options_json);

/**
 * @brief Number of entries. @since 0.2
 */
AIQ_API size_t aiq_beat_entry_count(const aiq_beat *b);

/**
 * @brief Run the scheduler on the calling thread until aiq_beat_stop().
 *
 * Broker and Redis failures are logged and retried; they do not end the
 * run.
 *
 * @param b scheduler.
 * @return #AIQ_OK after a stop, #AIQ_ESTATE (already running),
 *         #AIQ_EINVAL (no entries), or the error of creating the client
 *         (a broker URL this build lacks).
 * @since 0.2
 */
AIQ_API int aiq_beat_run(aiq_beat *b);

/**
 * @brief Ask aiq_beat_run() to return. Async-signal-safe and thread-safe;
 *        a stop before the run makes the run return at once. A leader
 *        gives up its lease, so another instance takes over at once.
 * @since 0.2
 */
AIQ_API void aiq_beat_stop(aiq_beat *b);

/**
 * @brief Number of task messages this scheduler has sent. Thread-safe.
 * @since 0.2
 */
AIQ_API uint64_t aiq_beat_sent_count(const aiq_beat *b);

AIQ_END_DECLS

#endif /* AIQUEUE_BEAT_H */
