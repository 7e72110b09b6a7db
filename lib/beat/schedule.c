/*
 * The scheduler's entries and the schedule file: Celery's beat_schedule
 * shape in JSON, read all or nothing, each error naming the entry and the
 * field.
 */
#include "beat_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INTERVAL_MS (INT64_C(10) * 366 * 86400 * 1000)

static void entry_clear(aiq__beat_entry *e)
{
	free(e->name);
	free(e->task);
	free(e->args_json);
	free(e->kwargs_json);
	free(e->queue);
}

void aiq__schedule_clear(aiq__schedule *s)
{
	for (size_t i = 0; i < s->n; i++)
		entry_clear(&s->v[i]);
	free(s->v);
	memset(s, 0, sizeof *s);
}

static bool name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 200 || !aiq__utf8_valid(s, n))
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

/* JSON text `text` (NULL = `dflt`) as compact text of type `want`. */
static char *json_text(const char *text, const char *dflt, json_type want)
{
	if (text == NULL)
		return aiq__strdup(dflt);
	json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
	char *out = v && json_typeof(v) == want ? json_dumps(v, JSON_COMPACT) : NULL;
	json_decref(v);
	return out;
}

int aiq__schedule_add(aiq__schedule *s, const aiq__beat_spec *e)
{
	if (e->name == NULL || !name_ok(e->name))
		return aiq__err(AIQ_EINVAL, "beat entry: a name is 1-200 bytes of UTF-8 text");
	if (e->task == NULL || !name_ok(e->task))
		return aiq__err(AIQ_EINVAL, "beat entry '%s': task: a task name is required",
		                e->name);
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->v[i].name, e->name) == 0)
			return aiq__err(AIQ_EINVAL, "beat entry '%s': defined twice", e->name);
	if (e->kind == AIQ__BEAT_INTERVAL &&
	    (e->interval_ms < 1 || e->interval_ms > MAX_INTERVAL_MS))
		return aiq__err(AIQ_EINVAL,
		                "beat entry '%s': schedule: an interval is 0.001 s to 10 years",
		                e->name);
	if (e->kind == AIQ__BEAT_RELATIVE &&
	    (e->interval_ms < 1000 || e->interval_ms > MAX_INTERVAL_MS))
		return aiq__err(AIQ_EINVAL,
		                "beat entry '%s': schedule: a relative interval is 1 s to 10 years",
		                e->name);
	if (e->kind == AIQ__BEAT_SOLAR) {
		if (e->solar.event < 0 || e->solar.event > AIQ__SOLAR_DUSK_ASTRONOMICAL)
			return aiq__err(AIQ_EINVAL,
			                "beat entry '%s': schedule.solar.event: unknown", e->name);
		if (!(e->solar.lat >= -90 && e->solar.lat <= 90))
			return aiq__err(
			        AIQ_EINVAL,
			        "beat entry '%s': schedule.solar.lat: a latitude is -90 to 90",
			        e->name);
		if (!(e->solar.lon >= -180 && e->solar.lon <= 180))
			return aiq__err(
			        AIQ_EINVAL,
			        "beat entry '%s': schedule.solar.lon: a longitude is -180 to 180",
			        e->name);
	}
	if (e->queue && !name_ok(e->queue))
		return aiq__err(AIQ_EINVAL, "beat entry '%s': options.queue: not a queue name",
		                e->name);
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 8;
		aiq__beat_entry *v = realloc(s->v, cap * sizeof *v);
		if (v == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory");
		s->v = v, s->cap = cap;
	}
	aiq__beat_entry c = {.expires_ms = e->expires_ms,
	                     .priority = e->priority,
	                     .kind = e->kind,
	                     .interval_ms = e->interval_ms,
	                     .cron = e->cron,
	                     .solar = e->solar};
	if (e->kind == AIQ__BEAT_RELATIVE)
		c.step_ms = aiq__relative_step_ms(e->interval_ms);
	c.name = aiq__strdup(e->name);
	c.task = aiq__strdup(e->task);
	c.queue = e->queue ? aiq__strdup(e->queue) : NULL;
	c.args_json = json_text(e->args_json, "[]", JSON_ARRAY);
	c.kwargs_json = json_text(e->kwargs_json, "{}", JSON_OBJECT);
	if (c.args_json == NULL || c.kwargs_json == NULL) {
		bool args = c.args_json == NULL;
		entry_clear(&c);
		return aiq__err(AIQ_EINVAL, "beat entry '%s': %s: not a JSON %s", e->name,
		                args ? "args" : "kwargs", args ? "array" : "object");
	}
	if (!c.name || !c.task || (e->queue && !c.queue)) {
		entry_clear(&c);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	s->v[s->n++] = c;
	return AIQ_OK;
}

/* Celery's "options": queue, expires (seconds), priority. */
int aiq__entry_options(aiq__beat_spec *e, json_t *o, const char *name)
{
	if (o == NULL || json_is_null(o))
		return AIQ_OK;
	if (!json_is_object(o))
		return aiq__err(AIQ_EINVAL, "beat entry '%s': options: not a JSON object", name);
	const char *k;
	json_t *v;
	json_object_foreach(o, k, v)
	{
		if (strcmp(k, "queue") == 0) {
			if (!json_is_string(v))
				return aiq__err(AIQ_EINVAL,
				                "beat entry '%s': options.queue: not a string",
				                name);
			e->queue = json_string_value(v);
		} else if (strcmp(k, "expires") == 0) {
			if (!json_is_number(v) || json_number_value(v) <= 0 ||
			    json_number_value(v) > 10.0 * 366 * 86400)
				return aiq__err(AIQ_EINVAL,
				                "beat entry '%s': options.expires: seconds, a "
				                "positive number",
				                name);
			e->expires_ms = (int64_t)ceil(json_number_value(v) * 1000);
		} else if (strcmp(k, "priority") == 0) {
			if (!json_is_integer(v) || json_integer_value(v) < 0 ||
			    json_integer_value(v) > 255)
				return aiq__err(AIQ_EINVAL,
				                "beat entry '%s': options.priority: 0-255", name);
			e->priority = (int)json_integer_value(v);
		} else {
			return aiq__err(
			        AIQ_EINVAL,
			        "beat entry '%s': options.%.64s: not supported (queue, expires, "
			        "priority)",
			        name, k);
		}
	}
	return AIQ_OK;
}

static int crontab_of(aiq__beat_spec *e, json_t *ct, const char *name)
{
	int rc;
	if (json_is_string(ct)) {
		rc = aiq__cron_parse(&e->cron, json_string_value(ct));
	} else if (json_is_object(ct)) {
		static const char *const keys[] = {"minute", "hour", "day_of_month",
		                                   "month_of_year", "day_of_week"};
		const char *f[5] = {0};
		const char *k;
		json_t *v;
		json_object_foreach(ct, k, v)
		{
			int i = 0;
			while (i < 5 && strcmp(k, keys[i]) != 0)
				i++;
			if (i == 5)
				return aiq__err(
				        AIQ_EINVAL,
				        "beat entry '%s': schedule.crontab.%.64s: unknown field "
				        "(minute, hour, day_of_month, month_of_year, day_of_week)",
				        name, k);
			char num[32];
			if (json_is_integer(v)) { /* crontab(minute=5) */
				snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
				v = json_string(num);
				json_object_set_new(ct, k, v);
			}
			if (!json_is_string(v))
				return aiq__err(
				        AIQ_EINVAL,
				        "beat entry '%s': schedule.crontab.%s: not a string", name,
				        k);
			f[i] = json_string_value(v);
		}
		rc = aiq__cron_parse_fields(&e->cron, f[0], f[1], f[2], f[3], f[4]);
	} else {
		return aiq__err(
		        AIQ_EINVAL,
		        "beat entry '%s': schedule.crontab: an object of fields or a string", name);
	}
	if (rc != AIQ_OK) {
		char *msg = aiq__strdup(aiq_error_last());
		rc = aiq__err(rc, "beat entry '%s': schedule: %s", name, msg ? msg : "");
		free(msg);
		return rc;
	}
	e->kind = AIQ__BEAT_CRON;
	return AIQ_OK;
}

/* {"event": "sunset", "lat": 52.5, "lon": 13.4}: Celery's solar(). */
static int solar_of(aiq__beat_spec *e, json_t *so, const char *name)
{
	if (!json_is_object(so))
		return aiq__err(AIQ_EINVAL,
		                "beat entry '%s': schedule.solar: an object {\"event\", \"lat\", "
		                "\"lon\"}",
		                name);
	bool have[3] = {false, false, false};
	const char *k;
	json_t *v;
	json_object_foreach(so, k, v)
	{
		if (strcmp(k, "event") == 0) {
			if (!json_is_string(v) ||
			    (e->solar.event = aiq__solar_event_of(json_string_value(v))) < 0)
				return aiq__err(
				        AIQ_EINVAL,
				        "beat entry '%s': schedule.solar.event: '%.64s' is not "
				        "one of %s",
				        name, json_is_string(v) ? json_string_value(v) : "?",
				        aiq__solar_event_list());
			have[0] = true;
		} else if (strcmp(k, "lat") == 0 || strcmp(k, "lon") == 0) {
			bool lat = k[1] == 'a';
			double lim = lat ? 90 : 180, x = json_number_value(v);
			if (!json_is_number(v) || !(x >= -lim && x <= lim))
				return aiq__err(
				        AIQ_EINVAL,
				        "beat entry '%s': schedule.solar.%s: degrees, a number "
				        "from %g to %g",
				        name, k, -lim, lim);
			*(lat ? &e->solar.lat : &e->solar.lon) = x;
			have[lat ? 1 : 2] = true;
		} else {
			return aiq__err(
			        AIQ_EINVAL,
			        "beat entry '%s': schedule.solar.%.64s: unknown field (event, "
			        "lat, lon)",
			        name, k);
		}
	}
	static const char *const need[] = {"event", "lat", "lon"};
	for (int i = 0; i < 3; i++)
		if (!have[i])
			return aiq__err(AIQ_EINVAL, "beat entry '%s': schedule.solar.%s: missing",
			                name, need[i]);
	e->kind = AIQ__BEAT_SOLAR;
	return AIQ_OK;
}

static int entry_of(aiq__schedule *s, const char *name, json_t *o)
{
	aiq__beat_spec e = {.name = name, .priority = -1};
	if (!json_is_object(o))
		return aiq__err(AIQ_EINVAL, "beat entry '%s': not a JSON object", name);
	const char *k;
	json_t *v;
	bool have_schedule = false, relative = false;
	char *args = NULL, *kwargs = NULL;
	int rc = AIQ_OK;
	json_object_foreach(o, k, v)
	{
		if (strcmp(k, "task") == 0) {
			if (!json_is_string(v) || !name_ok(json_string_value(v)))
				rc = aiq__err(AIQ_EINVAL, "beat entry '%s': task: not a task name",
				              name);
			else
				e.task = json_string_value(v);
		} else if (strcmp(k, "schedule") == 0) {
			have_schedule = true;
			if (json_is_number(v)) {
				double sec = json_number_value(v);
				if (!(sec >= 0.001 && sec <= MAX_INTERVAL_MS / 1000.0))
					rc = aiq__err(AIQ_EINVAL,
					              "beat entry '%s': schedule: an interval is "
					              "0.001 s to 10 years",
					              name);
				e.kind = AIQ__BEAT_INTERVAL;
				e.interval_ms = (int64_t)llround(sec * 1000);
			} else if (json_is_object(v) && json_object_get(v, "crontab") &&
			           json_object_size(v) == 1) {
				rc = crontab_of(&e, json_object_get(v, "crontab"), name);
			} else if (json_is_object(v) && json_object_get(v, "solar") &&
			           json_object_size(v) == 1) {
				rc = solar_of(&e, json_object_get(v, "solar"), name);
			} else {
				rc = aiq__err(AIQ_EINVAL,
				              "beat entry '%s': schedule: seconds (a number), "
				              "{\"crontab\": {...}} or {\"solar\": {...}}",
				              name);
			}
		} else if (strcmp(k, "args") == 0) {
			if (!json_is_array(v))
				rc = aiq__err(AIQ_EINVAL, "beat entry '%s': args: not a JSON array",
				              name);
			else if ((args = json_dumps(v, JSON_COMPACT)) == NULL)
				rc = aiq__err(AIQ_ENOMEM, "out of memory");
		} else if (strcmp(k, "kwargs") == 0) {
			if (!json_is_object(v))
				rc = aiq__err(AIQ_EINVAL,
				              "beat entry '%s': kwargs: not a JSON object", name);
			else if ((kwargs = json_dumps(v, JSON_COMPACT)) == NULL)
				rc = aiq__err(AIQ_ENOMEM, "out of memory");
		} else if (strcmp(k, "options") == 0) {
			rc = aiq__entry_options(&e, v, name);
		} else if (strcmp(k, "relative") == 0) {
			if (!json_is_boolean(v))
				rc = aiq__err(AIQ_EINVAL,
				              "beat entry '%s': relative: true or false", name);
			relative = json_is_true(v);
		} else {
			rc = aiq__err(AIQ_EINVAL,
			              "beat entry '%s': %.64s: unknown field (task, schedule, "
			              "relative, args, kwargs, options)",
			              name, k);
		}
		if (rc != AIQ_OK)
			break;
	}
	if (rc == AIQ_OK && e.task == NULL)
		rc = aiq__err(AIQ_EINVAL, "beat entry '%s': task: missing", name);
	if (rc == AIQ_OK && !have_schedule)
		rc = aiq__err(AIQ_EINVAL, "beat entry '%s': schedule: missing", name);
	if (rc == AIQ_OK && relative) { /* Celery's schedule(timedelta, relative=True) */
		if (e.kind != AIQ__BEAT_INTERVAL)
			rc = aiq__err(AIQ_EINVAL,
			              "beat entry '%s': relative: applies to an interval in "
			              "seconds only",
			              name);
		e.kind = AIQ__BEAT_RELATIVE;
	}
	if (rc == AIQ_OK) {
		e.args_json = args;
		e.kwargs_json = kwargs;
		rc = aiq__schedule_add(s, &e);
	}
	free(args);
	free(kwargs);
	return rc;
}

int aiq__schedule_load_json(aiq__schedule *s, json_t *root, const char **tz_name)
{
	*tz_name = NULL;
	if (!json_is_object(root))
		return aiq__err(AIQ_EINVAL, "schedule: not a JSON object of entries");
	size_t n0 = s->n; /* all or nothing: a bad entry removes those added before it */
	const char *k;
	json_t *v;
	int rc = AIQ_OK;
	json_object_foreach(root, k, v)
	{
		if (strcmp(k, "timezone") == 0) {
			if (!json_is_string(v)) {
				rc = aiq__err(AIQ_EINVAL, "schedule: timezone: not a string");
				break;
			}
			*tz_name = json_string_value(v);
			continue;
		}
		if ((rc = entry_of(s, k, v)) != AIQ_OK)
			break;
	}
	if (rc != AIQ_OK) {
		while (s->n > n0)
			entry_clear(&s->v[--s->n]);
		*tz_name = NULL;
	}
	return rc;
}

int aiq__schedule_load_file(aiq__schedule *s, const char *path, char **tz_name)
{
	*tz_name = NULL;
	json_error_t jerr;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL)
		return aiq__err(AIQ_EINVAL, "schedule file %s: line %d: %s", path, jerr.line,
		                jerr.text);
	const char *tz = NULL;
	int rc = aiq__schedule_load_json(s, root, &tz);
	if (rc != AIQ_OK) {
		char *msg = aiq__strdup(aiq_error_last());
		rc = aiq__err(rc, "schedule file %s: %s", path, msg ? msg : "");
		free(msg);
	} else if (tz && (*tz_name = aiq__strdup(tz)) == NULL) {
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	json_decref(root);
	return rc;
}

int64_t aiq__relative_step_ms(int64_t interval_ms)
{
	static const int64_t res[] = {86400000, 3600000, 60000, 1000};
	for (size_t i = 0; i < sizeof res / sizeof *res; i++)
		if (interval_ms >= res[i])
			return interval_ms / res[i] * res[i];
	return 0;
}

static int64_t floor_div(int64_t a, int64_t b)
{
	return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* The first relative slot strictly after UNIX second t: the wall-clock
 * multiples of the step, from the one at or before t's wall time on. */
static int64_t relative_next(const aiq__beat_entry *e, const aiq__tz *tz, int64_t t)
{
	int64_t step = e->step_ms / 1000;
	int64_t w = floor_div(t + aiq__tz_offset(tz, t), step) * step;
	for (int i = 0; i < 200000; i++, w += step) { /* a repeated hour: 3600 at 1 s */
		int64_t u = aiq__tz_wall_to_utc(tz, w);
		if (u > t)
			return u;
	}
	return INT64_MAX;
}

int64_t aiq__entry_next_ms(const aiq__beat_entry *e, const aiq__tz *tz, int64_t t_ms)
{
	if (e->kind == AIQ__BEAT_INTERVAL) {
		int64_t q = t_ms / e->interval_ms - (t_ms < 0 && t_ms % e->interval_ms);
		return (q + 1) * e->interval_ms;
	}
	int64_t t = floor_div(t_ms, 1000), n;
	if (e->kind == AIQ__BEAT_RELATIVE)
		n = relative_next(e, tz, t);
	else if (e->kind == AIQ__BEAT_SOLAR)
		n = aiq__solar_next(e->solar.event, e->solar.lat, e->solar.lon, t);
	else
		n = aiq__cron_next(&e->cron, tz, t);
	return n == INT64_MAX ? INT64_MAX : n * 1000;
}
