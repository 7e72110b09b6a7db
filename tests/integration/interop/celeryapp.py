"""The Celery side of the interoperability suite: a plain Celery 5 app.

Broker and result backend come from INTEROP_BROKER / INTEROP_BACKEND.
"""
import os

from celery import Celery


def make_app(broker, backend):
    """A Celery app on this broker and result backend (the test client makes
    one per broker; the worker process uses the module-level one)."""
    a = Celery("interop", broker=broker, backend=backend)
    a.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        broker_connection_retry=True,
        result_expires=3600,
    )
    return a


app = make_app(os.environ.get("INTEROP_BROKER", "memory://"),
               os.environ.get("INTEROP_BACKEND", "cache+memory://"))


class AnalysisError(Exception):
    pass


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="tasks.py_fail")
def py_fail(message):
    raise AnalysisError(message)
