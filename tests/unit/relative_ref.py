"""Reference times for tests/unit/test_cron.c (relative_against_celery):
Celery's schedule(timedelta(seconds=I), relative=True).

From a slot s (given as UNIX seconds, a time libaiqueue's relative entry
fires at), Celery's next run when the last one was at s is
s + remaining_estimate(s), computed here in the app's time zone. Run with
Debian's python3-celery:
    /usr/bin/python3 tests/unit/relative_ref.py
and paste the lines into the table. Not run by the test suites.
"""
import datetime as dt
from zoneinfo import ZoneInfo

from celery import Celery
from celery.schedules import schedule

cases = [
    # zone, interval (s), first slot (UTC), steps
    ("UTC", 3600, "2026-03-29T00:00:00", 4),
    ("UTC", 5400, "2026-03-29T00:00:00", 3),          # 90 min: steps by the hour
    ("UTC", 150, "2026-03-29T00:00:00", 3),           # 2.5 min: steps by 2 min
    ("UTC", 2.5, "2026-03-29T00:00:00", 3),           # 2.5 s: steps by 2 s
    ("Europe/Berlin", 3600, "2026-03-29T00:00:00", 4),  # spring forward at 01:00 UTC
    ("Europe/Berlin", 1800, "2026-03-29T00:00:00", 5),
    ("Europe/Berlin", 3600, "2026-10-25T00:00:00", 4),  # fall back at 01:00 UTC
    # 02:00 does not exist: read as 03:00 CEST. (Celery then counts on from
    # 03:00, at odd hours; libaiqueue's slots stay at even local hours, the
    # same on every instance, so only this step is compared.)
    ("Europe/Berlin", 7200, "2026-03-28T23:00:00", 1),
    # 7 min up to the gap (from 00:58 UTC Celery reads 02:05 as 03:05 CEST;
    # libaiqueue fires at 03:00 CEST, the end of the gap, as its crontab
    # entries do, then at 03:01 CEST, on the wall-clock grid: a hand-written
    # assertion in the test).
    ("Europe/Berlin", 420, "2026-03-29T00:44:00", 2),
    ("Europe/Berlin", 420, "2026-10-25T00:40:00", 7),  # and the repeated hour
    ("Europe/Berlin", 86400, "2026-03-27T23:00:00", 3),  # local midnights
    ("Europe/Berlin", 86400 * 2, "2026-10-23T22:00:00", 2),
    ("America/New_York", 7200, "2026-11-01T04:00:00", 4),  # fall back at 06:00 UTC
    ("America/New_York", 3600, "2026-03-08T05:00:00", 4),  # spring forward at 07:00 UTC
    ("Asia/Kolkata", 3600, "2026-06-01T00:30:00", 2),   # +05:30: full local hours
]
for zone, interval, first, steps in cases:
    app = Celery(set_as_current=False)
    app.conf.timezone = zone
    tz = ZoneInfo(zone)
    sch = schedule(dt.timedelta(seconds=interval), relative=True, app=app)
    s = dt.datetime.fromisoformat(first).replace(tzinfo=dt.timezone.utc)
    out = [int(s.timestamp())]
    for _ in range(steps):
        last = s.astimezone(tz)
        sch.nowfun = lambda last=last: last
        s = (last + sch.remaining_estimate(last)).astimezone(dt.timezone.utc)
        out.append(int(s.timestamp()))
    print('\t{"%s", %d, {%s}},' % (zone, int(interval * 1000), ", ".join(map(str, out))))
