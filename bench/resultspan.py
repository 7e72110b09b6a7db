"""Wait until a Redis result database holds N SUCCESS results, then print the
drain rate from their date_done stamps (the same field for libaiqueue and
Celery workers): rate = (N - 1) / (last date_done - first date_done), plus the
wall time from this script's start.

  resultspan.py REDIS_URL N TIMEOUT_S [PIDFILE_FOR_RSS...]
Polls DBSIZE every 0.25 s (cheap) and scans the values only once the count
is reached, so the poll hardly loads the server.
"""
import datetime
import json
import sys
import time

import redis

url, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
r = redis.Redis.from_url(url)
t0 = time.monotonic()
deadline = t0 + timeout


def stamps():
    out = []
    keys = [k for k in r.scan_iter(match="celery-task-meta-*", count=5000)]
    for i in range(0, len(keys), 5000):
        for v in r.mget(keys[i:i + 5000]):
            if not v:
                continue
            m = json.loads(v)
            if m.get("status") == "SUCCESS":
                d = datetime.datetime.fromisoformat(m["date_done"].replace("Z", ""))
                out.append(d.replace(tzinfo=datetime.timezone.utc).timestamp())
    return out


done = []
while time.monotonic() < deadline:
    if r.dbsize() >= n:
        done = stamps()
        if len(done) >= n:
            break
    time.sleep(0.25)
wall = time.monotonic() - t0
if len(done) < n:
    print(f"timeout {len(done)}/{n}")
    sys.exit(1)
span = max(done) - min(done)
print(f"rate {(len(done) - 1) / span:.1f}\nspan {span:.3f}\nwall {wall:.3f}")
