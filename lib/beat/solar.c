/*
 * Celery's solar schedule: the next sunrise, sunset, dawn, dusk or solar
 * noon at a latitude and longitude, without an ephemeris library.
 *
 * The Sun's position is NOAA's (the "General Solar Position" and sunrise /
 * sunset spreadsheets, after Meeus, Astronomical Algorithms ch. 25): the
 * declination and the equation of time as functions of the Julian century.
 * An event of one day is found by iterating the hour-angle formula five
 * times, each time with the Sun's position at the previous estimate.
 *
 * The horizons are Celery's (celery/schedules.py, class solar, which asks
 * PyEphem with pressure 0, i.e. no refraction model): sunrise and sunset
 * put the Sun's upper limb at -0:34 (so its centre at -0:34 minus the
 * apparent semi-diameter, about -0.83 degrees); the dawns and dusks put
 * its centre at -6, -12 and -18 degrees; solar noon is the transit.
 *
 * Accuracy: within about a minute of PyEphem between latitudes -65 and 65
 * for the years 1900-2100 (the unit tests hold twelve PyEphem references
 * to 2 minutes); closer to the poles, where the Sun crosses the horizon at
 * a grazing angle, a small error in the declination moves the time by
 * several minutes, and on the first and last day of a polar day or night
 * an event that lasts a few minutes may be found or missed where PyEphem
 * decides the other way.
 */
#include "beat_int.h"

#include <math.h>
#include <string.h>

#define PI     3.14159265358979323846
#define ROUNDS 5 /* of the hour-angle formula: seconds after the fourth */

static const struct {
	const char *name;
	double horizon_deg; /* the centre's altitude; NAN = upper limb at -0:34 */
	int dir;            /* -1 rising, 0 transit, +1 setting */
} events[] = {
        [AIQ__SOLAR_DAWN_ASTRONOMICAL] = {"dawn_astronomical", -18, -1},
        [AIQ__SOLAR_DAWN_NAUTICAL] = {"dawn_nautical", -12, -1},
        [AIQ__SOLAR_DAWN_CIVIL] = {"dawn_civil", -6, -1},
        [AIQ__SOLAR_SUNRISE] = {"sunrise", NAN, -1},
        [AIQ__SOLAR_NOON] = {"solar_noon", 0, 0},
        [AIQ__SOLAR_SUNSET] = {"sunset", NAN, +1},
        [AIQ__SOLAR_DUSK_CIVIL] = {"dusk_civil", -6, +1},
        [AIQ__SOLAR_DUSK_NAUTICAL] = {"dusk_nautical", -12, +1},
        [AIQ__SOLAR_DUSK_ASTRONOMICAL] = {"dusk_astronomical", -18, +1},
};

#define N_EVENTS ((int)(sizeof events / sizeof *events))

int aiq__solar_event_of(const char *name)
{
	for (int i = 0; name && i < N_EVENTS; i++)
		if (strcmp(events[i].name, name) == 0)
			return i;
	return -1;
}

const char *aiq__solar_event_name(int event)
{
	return event >= 0 && event < N_EVENTS ? events[event].name : "?";
}

const char *aiq__solar_event_list(void)
{
	return "dawn_astronomical, dawn_nautical, dawn_civil, sunrise, solar_noon, sunset, "
	       "dusk_civil, dusk_nautical, dusk_astronomical";
}

static double rad(double d)
{
	return d * (PI / 180);
}

static double deg(double r)
{
	return r * (180 / PI);
}

typedef struct sunpos {
	double decl; /* declination, radians */
	double eot;  /* equation of time, minutes (apparent - mean solar time) */
	double sd;   /* apparent semi-diameter, degrees */
} sunpos;

/* NOAA's Sun at UNIX time t (seconds, UT; the 1-minute difference of UT
 * and TT moves the Sun by 0.0008 degrees and is ignored). */
static sunpos sun_at(double t)
{
	double T = (t / 86400.0 + 2440587.5 - 2451545.0) / 36525.0;
	double L0 = fmod(280.46646 + T * (36000.76983 + T * 0.0003032), 360.0);
	double M = 357.52911 + T * (35999.05029 - 0.0001537 * T);
	double e = 0.016708634 - T * (0.000042037 + 0.0000001267 * T);
	double Mr = rad(M);
	double C = sin(Mr) * (1.914602 - T * (0.004817 + 0.000014 * T)) +
	           sin(2 * Mr) * (0.019993 - 0.000101 * T) + sin(3 * Mr) * 0.000289;
	double true_long = L0 + C;
	double true_anom = rad(M + C);
	double R = 1.000001018 * (1 - e * e) / (1 + e * cos(true_anom));
	double omega = rad(125.04 - 1934.136 * T);
	double app_long = rad(true_long - 0.00569 - 0.00478 * sin(omega));
	double eps0 = 23 + (26 + (21.448 - T * (46.815 + T * (0.00059 - T * 0.001813))) / 60) / 60;
	double eps = rad(eps0 + 0.00256 * cos(omega));
	double y = tan(eps / 2) * tan(eps / 2);
	double L0r = rad(L0);
	sunpos p;
	p.decl = asin(sin(eps) * sin(app_long));
	p.eot = 4 * deg(y * sin(2 * L0r) - 2 * e * sin(Mr) + 4 * e * y * sin(Mr) * cos(2 * L0r) -
	                0.5 * y * y * sin(4 * L0r) - 1.25 * e * e * sin(2 * Mr));
	p.sd = 0.266563 / R; /* 959.63" at 1 AU */
	return p;
}

/* The event of the local mean solar day that starts at UNIX time m (mean
 * midnight at the longitude), or NAN when the Sun does not reach the
 * horizon that day. */
static double event_of_day(int event, double lat, double m)
{
	double phi = rad(lat);
	double t = m + 43200;
	for (int i = 0; i < ROUNDS; i++) {
		sunpos p = sun_at(t);
		double noon = m + 43200 - p.eot * 60;
		if (events[event].dir == 0) {
			t = noon;
			continue;
		}
		double h0 = isnan(events[event].horizon_deg) ? -(34.0 / 60) - p.sd
		                                             : events[event].horizon_deg;
		double den = cos(phi) * cos(p.decl);
		if (fabs(den) < 1e-12)
			return NAN; /* at a pole the hour angle means nothing */
		double cos_h = (sin(rad(h0)) - sin(phi) * sin(p.decl)) / den;
		if (cos_h < -1 || cos_h > 1) {
			/* Polar day or night for this horizon, unless the Sun's
			 * position at the event's own time (not at noon) says
			 * otherwise: decide at the last round. */
			if (i == ROUNDS - 1)
				return NAN;
			cos_h = cos_h < -1 ? -1 : 1;
		}
		double h = deg(acos(cos_h));
		t = noon + events[event].dir * h * 240; /* 240 s per degree */
	}
	return t;
}

int64_t aiq__solar_next(int event, double lat, double lon, int64_t t)
{
	if (event < 0 || event >= N_EVENTS)
		return INT64_MAX;
	/* Local mean solar days: a rising falls in the morning of its day, a
	 * setting in the afternoon, so the days' events come in order. Start
	 * a day early (the longitude's offset and the equation of time may put
	 * an event of the day before after t) and give up after a year and a
	 * few days: that event does not happen here (the poles themselves). */
	double off = lon * 240;
	int64_t d0 = (int64_t)floor(((double)t + off) / 86400.0) - 1;
	for (int64_t d = d0; d < d0 + 370; d++) {
		double v = event_of_day(event, lat, (double)d * 86400 - off);
		if (isnan(v))
			continue;
		int64_t s = (int64_t)floor(v); /* whole seconds: every instance agrees */
		if (s > t)
			return s;
	}
	return INT64_MAX;
}
