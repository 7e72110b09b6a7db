"""The Celery side of the benchmarks: the same tasks as bench/aiqbench.c.

Broker and result backend come from BENCH_BROKER / BENCH_BACKEND. On RabbitMQ,
publisher confirms are on, so .delay() returns after the broker confirmed, as
aiq_client_enqueue does.
"""
import os
import time

from celery import Celery

broker = os.environ.get("BENCH_BROKER", "memory://")
app = Celery("bench", broker=broker, backend=os.environ.get("BENCH_BACKEND"))
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    result_expires=86400,
    broker_transport_options={"confirm_publish": True} if broker.startswith("amqp") else {},
)


@app.task(name="tasks.add")
def add(x, y, *pad):
    return None


@app.task(name="tasks.noop")
def noop(*args, **kwargs):
    return None


@app.task(name="tasks.lat")
def lat(t0):
    return {"t0": t0, "start": int(time.time() * 1e6)}


@app.task(name="tasks.analyze_track")
def analyze_track(track_id, text, analyzer="lyrics", options=None):
    return {"track_id": track_id, "analyzer": analyzer, "lines": text.count("\n") + 1}
