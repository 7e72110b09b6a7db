"""Celery canvas across Python Celery 5.2 and libaiqueue workers.

A private redis-server (scripts/services/redis.sh) is broker and result
backend; a Celery prefork worker consumes queue "py", a libaiqueue worker
(tests/integration/interop/interop_worker.c) consumes queue "c". Workflows
started by Celery are finished by C workers, workflows started by the C
client are finished by Celery workers, and mixed ones hop between both.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVICES = os.path.join(ROOT, "scripts", "services")
WORKER = os.environ["CANVAS_WORKER"]
CLIENT = os.environ.get("CANVAS_CLIENT")


def start_service(kind, tmp):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), "start", tmp], check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(tmp, "port")) as f:
        return int(f.read().strip())


def stop_service(kind, tmp):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), "stop", tmp],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def env():
    tmp = tempfile.mkdtemp(prefix="aiq-canvas-redis-")
    port = start_service("redis", tmp)
    broker = f"redis://127.0.0.1:{port}/0"
    backend = f"redis://127.0.0.1:{port}/1"
    base = dict(os.environ)
    for k in list(base):
        if k.startswith(("AIQUEUE_", "CELERY_")):
            del base[k]
    py_env = dict(base, CANVAS_BROKER=broker, CANVAS_BACKEND=backend, PYTHONPATH=HERE,
                  PYTHONDONTWRITEBYTECODE="1")
    c_env = dict(base, AIQUEUE_BROKER_URL=broker, AIQUEUE_RESULT_URL=backend)
    logdir = tempfile.mkdtemp(prefix="aiq-canvas-logs-")
    celery_log = open(os.path.join(logdir, "celery.log"), "w")
    celery = subprocess.Popen(
        ["/usr/bin/python3", "-m", "celery", "-A", "canvasapp", "worker", "-P", "prefork",
         "-c", "2", "-Q", "py", "--without-mingle", "--without-gossip", "--without-heartbeat",
         "-l", "info"],
        cwd=HERE, env=py_env, stdout=celery_log, stderr=subprocess.STDOUT)
    c_log = open(os.path.join(logdir, "c_worker.log"), "w")
    c_worker = subprocess.Popen([WORKER], env=dict(c_env, AIQUEUE_WORKER_QUEUES="c",
                                                   AIQUEUE_WORKER_CONCURRENCY="4",
                                                   AIQUEUE_LOG_LEVEL="info"),
                                stdout=c_log, stderr=subprocess.STDOUT)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import canvasapp  # noqa: E402

    app = canvasapp.make_app(broker, backend)
    try:
        yield {"app": app, "c_env": c_env, "logdir": logdir, "port": port}
    finally:
        app.close()
        c_worker.terminate()
        celery.terminate()
        c_rc = c_worker.wait(timeout=30)
        celery.wait(timeout=30)
        celery_log.close()
        c_log.close()
        stop_service("redis", tmp)
        assert c_rc == 0, open(os.path.join(logdir, "c_worker.log")).read()


def log(env, name):
    with open(os.path.join(env["logdir"], name)) as f:
        return f.read()


def c_sig(env, name, *args, **opts):
    return env["app"].signature(name, args=args, queue="c", **opts)


def py_sig(env, name, *args, **opts):
    return env["app"].signature(name, args=args, queue="py", **opts)


def meta(env, task_id):
    return env["app"].backend.get_task_meta(task_id, cache=False)


# ---- workflows started by Celery -----------------------------------------------

def test_celery_chain_finished_by_c_workers(env):
    from celery import chain
    r = chain(c_sig(env, "tasks.c_add", 1, 2), c_sig(env, "tasks.c_add", 3),
              c_sig(env, "tasks.c_add", 4)).apply_async()
    assert r.get(timeout=30) == 10
    assert r.parent.get(timeout=30) == 6
    assert r.parent.parent.get(timeout=30) == 3
    # Celery's own parent and root links, as a Celery worker writes them.
    first = r.parent.parent.id
    assert meta(env, r.id)["parent_id"] == r.parent.id
    assert meta(env, r.parent.id)["parent_id"] == first


def test_mixed_chain_hops_between_workers(env):
    """c -> py -> c -> py: each kind of worker pops the chain the other left."""
    from celery import chain
    r = chain(c_sig(env, "tasks.c_add", 1, 2), py_sig(env, "tasks.py_add", 3),
              c_sig(env, "tasks.c_add", 4), py_sig(env, "tasks.py_add", 5)).apply_async()
    assert r.get(timeout=30) == 15
    ids = [r.id, r.parent.id, r.parent.parent.id, r.parent.parent.parent.id]
    assert [meta(env, i)["result"] for i in ids] == [15, 10, 6, 3]
    py_log = log(env, "celery.log")
    assert ids[0] in py_log and ids[2] in py_log  # the py_add steps ran on Celery
    assert ids[1] not in py_log and ids[3] not in py_log


def test_c_link_applied_for_celery_client(env):
    cb = py_sig(env, "tasks.py_add", 10)
    cb_id = cb.freeze().id
    parent = env["app"].send_task("tasks.c_add", args=[2, 3], queue="c", link=cb)
    assert parent.get(timeout=30) == 5
    got = env["app"].AsyncResult(cb_id).get(timeout=30)
    assert got == 15
    assert meta(env, cb_id)["parent_id"] == parent.id


def test_c_link_error_sends_task_id(env):
    eb = py_sig(env, "tasks.py_echo")
    eb_id = eb.freeze().id
    parent = env["app"].send_task("tasks.c_fail", queue="c", link_error=eb)
    with pytest.raises(Exception):
        parent.get(timeout=30)
    got = env["app"].AsyncResult(eb_id).get(timeout=30)
    assert got == {"args": [parent.id], "kwargs": {}}
    assert meta(env, eb_id)["parent_id"] == parent.id


def test_celery_errback_runs_on_c_worker(env):
    """Celery sends an errback it does not have as a task with the id: the C
    worker runs it."""
    eb = c_sig(env, "tasks.c_echo")
    eb_id = eb.freeze().id
    parent = env["app"].send_task("tasks.py_fail", queue="py", link_error=eb)
    with pytest.raises(Exception):
        parent.get(timeout=30)
    got = env["app"].AsyncResult(eb_id).get(timeout=30)
    assert got == {"args": [parent.id], "kwargs": {}, "retries": 0}


def test_chain_failure_stops_and_calls_errback(env):
    from celery import chain
    eb = py_sig(env, "tasks.py_echo")
    eb_id = eb.freeze().id
    tail = c_sig(env, "tasks.c_add", 1)
    tail_id = tail.freeze().id
    r = chain(c_sig(env, "tasks.c_add", 1, 2), c_sig(env, "tasks.c_fail"),
              tail).apply_async(link_error=eb)
    with pytest.raises(Exception):
        r.get(timeout=30)
    got = env["app"].AsyncResult(eb_id).get(timeout=30)
    assert got["kwargs"] == {} and len(got["args"]) == 1
    assert meta(env, got["args"][0])["status"] == "FAILURE"
    time.sleep(0.5)
    assert meta(env, tail_id)["status"] == "PENDING"
