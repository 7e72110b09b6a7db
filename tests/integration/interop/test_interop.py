"""Interoperability with real Celery 5.2 (Debian's python3-celery).

Both directions, on every broker this build has (INTEROP_BROKERS), with
Celery's Redis result backend:

* a libaiqueue client enqueues, a Celery prefork worker (queue "py") runs
  the task, the libaiqueue client reads Celery's stored result;
* a Celery client sends, a libaiqueue worker (queue "c") runs the task and
  stores the result in Celery's format, the Celery client's .get() reads it.

Private redis-server / rabbitmq-server instances are started on free
loopback ports by the project's scripts/services scripts.
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
CLIENT = os.environ["INTEROP_CLIENT"]
WORKER = os.environ["INTEROP_WORKER"]
BROKERS = [b for b in os.environ.get("INTEROP_BROKERS", "").split(",") if b]

if not BROKERS:
    raise SystemExit("INTEROP_BROKERS is empty: no broker driver to test")


def start_service(kind, tmp):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), "start", tmp], check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(tmp, "port")) as f:
        return int(f.read().strip())


def stop_service(kind, tmp):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), "stop", tmp],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def redis_port():
    tmp = tempfile.mkdtemp(prefix="aiq-interop-redis-")
    port = start_service("redis", tmp)
    yield port
    stop_service("redis", tmp)


@pytest.fixture(scope="module", params=BROKERS)
def env(request, redis_port):
    """Broker URLs for both sides, and the running workers."""
    kind = request.param
    backend = f"redis://127.0.0.1:{redis_port}/1"
    tmp = None
    if kind == "redis":
        py_broker = ours = f"redis://127.0.0.1:{redis_port}/0"
    else:
        tmp = tempfile.mkdtemp(prefix="aiq-interop-amqp-")
        port = start_service("rabbitmq", tmp)
        # One URL for both sides: Celery's own spelling of vhost "/".
        py_broker = ours = f"amqp://guest:guest@127.0.0.1:{port}//"

    base = dict(os.environ)
    for k in list(base):
        if k.startswith(("AIQUEUE_", "CELERY_")):
            del base[k]
    py_env = dict(base, INTEROP_BROKER=py_broker, INTEROP_BACKEND=backend,
                  PYTHONPATH=HERE, PYTHONDONTWRITEBYTECODE="1")
    c_env = dict(base, AIQUEUE_BROKER_URL=ours, AIQUEUE_RESULT_URL=backend)

    logdir = tempfile.mkdtemp(prefix="aiq-interop-logs-")
    celery_log = open(os.path.join(logdir, "celery.log"), "w")
    celery = subprocess.Popen(
        ["/usr/bin/python3", "-m", "celery", "-A", "celeryapp", "worker", "-P", "prefork",
         "-c", "2", "-Q", "py,shared", "--without-mingle", "--without-gossip", "--without-heartbeat",
         "-l", "info"],
        cwd=HERE, env=py_env, stdout=celery_log, stderr=subprocess.STDOUT)
    c_log = open(os.path.join(logdir, "c_worker.log"), "w")
    c_worker = subprocess.Popen([WORKER], env=dict(c_env, AIQUEUE_WORKER_QUEUES="c,shared",
                                                   AIQUEUE_WORKER_CONCURRENCY="2"),
                                stdout=c_log, stderr=subprocess.STDOUT)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import celeryapp  # noqa: E402

    # A fresh app per broker: a Celery app caches its broker connections.
    app = celeryapp.make_app(py_broker, backend)
    try:
        yield {"kind": kind, "c_env": dict(c_env, AIQUEUE_QUEUE="py"), "app": app,
               "logdir": logdir}
    finally:
        app.close()
        c_worker.terminate()
        celery.terminate()
        c_rc = c_worker.wait(timeout=30)
        celery.wait(timeout=30)
        celery_log.close()
        c_log.close()
        if tmp:
            stop_service("rabbitmq", tmp)
        # The C worker must shut down cleanly on SIGTERM.
        assert c_rc == 0, open(os.path.join(logdir, "c_worker.log")).read()


def c_call(env, task, args, kwargs=None, countdown=None):
    cmd = [CLIENT, task, json.dumps(args), json.dumps(kwargs or {})]
    if countdown is not None:
        cmd.append(str(countdown))
    out = subprocess.run(cmd, env=env["c_env"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + open(os.path.join(env["logdir"], "celery.log")).read()
    return json.loads(out.stdout)


def c_by_id(env, what, task_id):
    out = subprocess.run([CLIENT, what, task_id], env=env["c_env"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def send(env, task, args=None, kwargs=None, **opts):
    return env["app"].send_task(task, args=args or [], kwargs=kwargs or {}, queue="c", **opts)


# ---- libaiqueue producer -> Celery worker ----------------------------------

def test_c_producer_celery_worker(env):
    r = c_call(env, "tasks.add", [2, 40])
    assert r["state"] == "SUCCESS" and r["result"] == 42


def test_c_producer_unicode_arguments(env):
    args = ["Привет, мир", "ёжик", "\U0001F3B5 beat"]
    r = c_call(env, "tasks.echo", args, {"k": "ё"})
    assert r["state"] == "SUCCESS"
    assert r["result"] == {"args": args, "kwargs": {"k": "ё"}}


def test_c_producer_celery_failure(env):
    r = c_call(env, "tasks.py_fail", ["track 13: model exploded"])
    assert r["state"] == "FAILURE"
    assert r["exc_type"] == "AnalysisError"
    assert r["exc_message"] == "track 13: model exploded"
    assert r["exc_module"] == "celeryapp"


def test_c_producer_countdown_honoured_by_celery(env):
    t0 = time.monotonic()
    r = c_call(env, "tasks.add", [1, 1], countdown=1500)
    assert r["state"] == "SUCCESS" and r["result"] == 2
    assert time.monotonic() - t0 >= 1.4


def test_celery_forget_seen_by_c_client(env):
    r = c_call(env, "tasks.add", [1, 1])
    assert r["state"] == "SUCCESS" and c_by_id(env, "--state", r["id"]) == "SUCCESS"
    env["app"].AsyncResult(r["id"]).forget()
    assert c_by_id(env, "--state", r["id"]) == "PENDING"


# ---- Celery producer -> libaiqueue worker ----------------------------------

def test_celery_producer_c_worker(env):
    assert send(env, "tasks.c_add", [2, 40]).get(timeout=30) == 42


def test_c_forget_seen_by_celery(env):
    r = send(env, "tasks.c_add", [20, 22])
    assert r.get(timeout=30) == 42
    backend = env["app"].backend
    key = backend.get_key_for_task(r.id)
    assert backend.client.exists(key) == 1
    c_by_id(env, "--forget", r.id)
    assert backend.client.exists(key) == 0
    # cache=False: Celery keeps final states it has read in a local cache.
    assert backend.get_task_meta(r.id, cache=False)["status"] == "PENDING"
    c_by_id(env, "--forget", r.id)  # nothing stored: still fine


def test_celery_arguments_arrive_intact(env):
    args = [1, 2.5, "Привет", None, True, {"nested": [1, 2]}]
    got = send(env, "tasks.c_echo", args, {"k": "ё"}).get(timeout=30)
    assert got == {"args": args, "kwargs": {"k": "ё"}, "retries": 0}


def test_celery_sees_c_failure_as_exception(env):
    with pytest.raises(Exception) as e:
        send(env, "tasks.c_fail").get(timeout=30)
    assert type(e.value).__name__ == "AnalysisError"
    assert "model exploded" in str(e.value)


def test_celery_unknown_task_is_not_registered(env):
    from celery.exceptions import NotRegistered
    with pytest.raises(NotRegistered):
        send(env, "tasks.does_not_exist").get(timeout=30)


def test_celery_runs_builtin_analysis(env):
    text = "I walk the night\nI hold the light\nI walk the night\n"
    got = send(env, "tasks.analyze_track", [7, text], {"analyzer": "lyrics"}).get(timeout=30)
    assert got["track_id"] == 7 and got["analyzer"] == "lyrics"
    assert got["analysis"]["line_count"] == 3


def test_celery_countdown_honoured_by_c_worker(env):
    t0 = time.monotonic()
    assert send(env, "tasks.c_add", [3, 4], countdown=2).get(timeout=30) == 7
    assert time.monotonic() - t0 >= 1.9


def test_celery_sees_c_progress_meta(env):
    r = send(env, "tasks.c_progress")
    deadline = time.monotonic() + 10
    while r.state != "PROGRESS" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.state == "PROGRESS"
    assert r.info == {"step": 1, "of": 2}
    assert r.get(timeout=30) == "done"


def test_celery_sees_c_retry_then_success(env):
    r = send(env, "tasks.c_retry_once")
    assert r.get(timeout=30) == "second attempt"


def test_celery_expired_task_is_revoked(env):
    from celery.exceptions import TaskRevokedError
    r = send(env, "tasks.c_add", [1, 2], countdown=3, expires=1)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=30)


# ---- both kinds of worker on one queue --------------------------------------

def test_celery_and_c_worker_share_a_queue(env):
    """200 tasks.add on a queue both workers consume: every result right, and
    both kinds of worker took part."""
    results = [env["app"].send_task("tasks.add", args=[i, i], queue="shared")
               for i in range(200)]
    assert [r.get(timeout=60) for r in results] == [2 * i for i in range(200)]
    ids = {r.id for r in results}
    with open(os.path.join(env["logdir"], "celery.log")) as f:
        log = f.read()
    by_celery = {i for i in ids if i in log}
    assert 0 < len(by_celery) < 200, f"celery ran {len(by_celery)} of 200"
