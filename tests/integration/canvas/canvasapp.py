"""The Celery side of the canvas suite: a plain Celery 5.2 app whose tasks
share names with the C worker's (tasks.add) or live only here (tasks.py_*).

Broker and result backend come from CANVAS_BROKER / CANVAS_BACKEND.
"""
import os

from celery import Celery


def make_app(broker, backend):
    a = Celery("canvas", broker=broker, backend=backend)
    a.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        broker_connection_retry=True,
        result_expires=3600,
    )
    return a


app = make_app(os.environ.get("CANVAS_BROKER", "memory://"),
               os.environ.get("CANVAS_BACKEND", "cache+memory://"))


class AnalysisError(Exception):
    pass


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.py_add")
def py_add(x, y):
    return x + y


@app.task(name="tasks.py_echo")
def py_echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="tasks.py_fail")
def py_fail(*args):
    raise AnalysisError("python part failed")


@app.task(name="tasks.py_tsum")
def py_tsum(values, tag):
    """A chord body: counts its runs in Redis under `tag`, so a test can
    check that it ran once."""
    app.backend.client.incr("canvas-body-runs:" + tag)
    return sum(values)


@app.task(name="tasks.py_record")
def py_record(task_id):
    """A task-style errback (one argument): Celery sends it as a task."""
    return {"got": task_id}
