"""A plain Celery app for the beat suite: runs what aiqueue-beat sends."""
import os

from celery import Celery

app = Celery("beatsuite", broker=os.environ.get("BEAT_BROKER", "memory://"),
             backend=os.environ.get("BEAT_BACKEND", "cache+memory://"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_hijack_root_logger=False, result_expires=3600)


@app.task(name="tasks.add")
def add(x, y):
    return x + y
