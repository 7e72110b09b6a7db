"""Celery producer side of the benchmarks.

  celery_client.py enqueue QUEUE N PAYLOAD     N x tasks.add.delay(i, i[, pad]) -> "rate R"
  celery_client.py chord QUEUE N               chord(N x tasks.add.s(i, i))(tasks.noop.s()), timed
                                               send -> the body's result
  celery_client.py latency QUEUE RATE N        paced tasks.lat(t0_us); then reads the results:
                                               enqueue->start from the task's return value,
                                               enqueue->result from date_done
"""
import datetime
import sys
import time

import redis
from celeryapp import app, add, lat, noop


def enqueue(queue, n, payload):
    pad = ("x" * payload,) if payload else ()
    opts = {"queue": queue}
    warm = min(200, n // 10 + 1)
    for i in range(warm):
        add.apply_async((i, i) + pad, queue=queue + ".warm")
    t0 = time.monotonic()
    for i in range(n):
        add.apply_async((i, i) + pad, **opts)
    dt = time.monotonic() - t0
    print(f"rate {n / dt:.1f}\nsecs {dt:.3f}")


def chord_run(queue, n):
    from celery import chord
    header = [add.s(i, i).set(queue=queue) for i in range(n)]
    t0 = time.monotonic()
    r = chord(header)(noop.s().set(queue=queue))
    t_sent = time.monotonic()
    r.get(timeout=300)
    dt = time.monotonic() - t0
    print(f"secs {dt:.3f}\nsend_secs {t_sent - t0:.3f}\nrate {n / dt:.1f}")


def pct(v, p):
    return v[int(p * (len(v) - 1) + 0.5)] if v else -1


def latency(queue, rate, n):
    warm = max(20, n // 20)
    ids = []
    t0 = time.monotonic()
    for i in range(warm + n):
        due = t0 + i / rate
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        r = lat.apply_async((int(time.time() * 1e6),), queue=queue)
        if i >= warm:
            ids.append(r.id)
        if i == warm:
            t0 = time.monotonic() - i / rate
    achieved = n / (time.monotonic() - t0)
    backend = redis.Redis.from_url(app.conf.result_backend)
    deadline = time.monotonic() + 60
    starts, results = [], []
    pending = list(ids)
    import json
    while pending and time.monotonic() < deadline:
        vals = backend.mget([f"celery-task-meta-{i}" for i in pending])
        left = []
        for tid, v in zip(pending, vals):
            m = json.loads(v) if v else None
            if not m or m["status"] != "SUCCESS":
                left.append(tid)
                continue
            done = datetime.datetime.fromisoformat(m["date_done"].replace("Z", ""))
            done_us = int(done.replace(tzinfo=datetime.timezone.utc).timestamp() * 1e6)
            starts.append(m["result"]["start"] - m["result"]["t0"])
            results.append(done_us - m["result"]["t0"])
        pending = left
        if pending:
            time.sleep(0.2)
    starts.sort()
    results.sort()
    print(f"offered {achieved:.1f}\nreceived {len(results)}")
    for name, v in (("start", starts), ("result", results)):
        print(f"{name}_p50 {pct(v, .5)}\n{name}_p99 {pct(v, .99)}\n{name}_p999 {pct(v, .999)}")


if __name__ == "__main__":
    if sys.argv[1] == "enqueue":
        enqueue(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "latency":
        latency(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "chord":
        chord_run(sys.argv[2], int(sys.argv[3]))
    app.close()
