"""Celery 5.2 (Debian's python3-celery) and a libaiqueue worker on one
Sentinel-managed Redis: the Celery client uses kombu's Sentinel transport
(broker_url 'sentinel://...;sentinel://...' with
broker_transport_options={'master_name': ...}) and Celery's sentinel result
backend; the C worker (tests/integration/interop/interop_worker.c) gets the
same list and redis.master_name. A task sent by Celery runs in C and Celery's
.get() reads the result, before and after a kill -9 of the master.

Run by run.sh, which started the test bed (AIQ_TEST_SENTINEL_*).
"""
import os
import subprocess
import sys
import tempfile
import time

import pytest

URL = os.environ["AIQ_TEST_SENTINEL_URL"]
MASTER = os.environ["AIQ_TEST_SENTINEL_MASTER"]
BED = os.environ["AIQ_TEST_SENTINEL_SH"]
DIR = os.environ["AIQ_TEST_SENTINEL_DIR"]
WORKER = os.environ["INTEROP_WORKER"]


def bed(*args):
    out = subprocess.run([BED, args[0], DIR, *args[1:]], check=True, capture_output=True,
                         text=True, timeout=60)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def app():
    from celery import Celery

    a = Celery("sentinel_interop", broker=URL, backend=URL)
    a.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_transport_options={"master_name": MASTER},
        result_backend_transport_options={"master_name": MASTER},
        broker_connection_retry=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    env.update(AIQUEUE_BROKER_URL=URL, AIQUEUE_RESULT_URL=URL,
               AIQUEUE_REDIS_MASTER_NAME=MASTER, AIQUEUE_WORKER_QUEUES="c",
               AIQUEUE_WORKER_CONCURRENCY="2", AIQUEUE_REDIS_RECONNECT_MAX_MS="500")
    log = tempfile.NamedTemporaryFile("w+", prefix="aiq-sentinel-c-worker-", suffix=".log")
    worker = subprocess.Popen([WORKER], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield a
    finally:
        a.close()
        worker.terminate()
        rc = worker.wait(timeout=30)
        log.seek(0)
        text = log.read()
        log.close()
        # Shown by pytest when a test of this module failed.
        print("---- C worker log ----\n" + text)
        assert rc == 0, text


def test_celery_client_c_worker(app):
    r = app.send_task("tasks.c_add", args=[2, 40], queue="c")
    assert r.get(timeout=30) == 42


def test_after_failover(app):
    old = bed("kill-master")
    new = bed("wait-failover", old, "30")
    assert new != old
    # kombu's Sentinel pool finds the new master too; both sides resume.
    for attempt in range(30):
        try:
            r = app.send_task("tasks.c_add", args=[40, 2], queue="c")
            break
        except Exception:  # noqa: BLE001 - kombu's connection errors vary
            if attempt == 29:
                raise
            time.sleep(0.5)
    # Celery 5.2's result consumer, reconnecting its pub/sub connection after
    # the failover, reads the keys (MGET) and then subscribes: a result stored
    # between the two is never seen by r.get(). So wait on the key itself
    # (what the C worker stored on the new master), then let Celery read it.
    deadline = time.monotonic() + 60
    while True:
        try:
            if app.backend.get_task_meta(r.id, cache=False)["status"] == "SUCCESS":
                break
        except app.backend.connection_errors:
            pass  # the client's own connection is still finding the new master
        assert time.monotonic() < deadline, "no result 60 s after the failover"
        time.sleep(0.1)
    assert r.get(timeout=10) == 42
    bed("rejoin", old)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
