"""One small Celery app that runs unchanged on real Celery 5.2 and on aiqueue.

CAPP_IMPL picks the implementation of the module-level ``app`` (the one
``celery -A capp worker`` and ``python3 -m aiqueue worker -A capp`` serve):
"celery" (default) imports ``celery.Celery``, "aiqueue" ``aiqueue.App``.
Broker and backend come from CAPP_BROKER / CAPP_BACKEND. :func:`build` also
lets one process hold an app of each kind (the test's clients).
"""
import os
import time


class CappError(Exception):
    """Raised by the ``fail`` task; importable, so clients rebuild it."""


def implementation(name):
    if name == "aiqueue":
        from aiqueue import App
        return App
    from celery import Celery
    return Celery


def build(celery_class, broker, backend):
    """The app, with its tasks reachable as attributes of ``app.capp``."""
    app = celery_class("capp", broker=broker, backend=backend)
    if hasattr(app.conf, "update"):
        app.conf.update(task_serializer="json", result_serializer="json",
                        accept_content=["json"], worker_hijack_root_logger=False,
                        broker_connection_retry=True)

    @app.task
    def add(x, y):
        return x + y

    @app.task(bind=True, max_retries=3)
    def flaky(self, succeed_after):
        if self.request.retries < succeed_after:
            raise self.retry(exc=CappError("not yet"), countdown=0.1)
        return {"retries": self.request.retries}

    @app.task
    def fail(message):
        raise CappError(message)

    @app.task
    def fail_builtin(message):
        raise ValueError(message)

    @app.task(bind=True)
    def progress(self, seconds):
        self.update_state(state="DOWNLOADING", meta={"step": 1, "of": 2})
        time.sleep(seconds)
        return "done"

    class Tasks:
        pass
    tasks = Tasks()
    for t in (add, flaky, fail, fail_builtin, progress):
        setattr(tasks, t.__name__, t)
    app.capp = tasks
    return app


app = build(implementation(os.environ.get("CAPP_IMPL", "celery")),
            os.environ.get("CAPP_BROKER", "memory://"),
            os.environ.get("CAPP_BACKEND", "cache+memory://"))
