"""The same Celery app file (capp.py) under ``celery -A capp worker`` and
``python3 -m aiqueue worker -A capp``, called by Celery and aiqueue clients.

For every broker this build has (CELERYAPP_BROKERS), against private
redis-server / rabbitmq-server instances (scripts/services), both workers
run; each client kind calls each worker with the same calls: add, retry
then succeed, failure with a custom and a builtin exception type, and a
custom progress state. The outcomes of all four pairs must equal those of
Celery calling Celery.
"""
import os
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVICES = os.path.join(ROOT, "scripts", "services")
BINDINGS = os.path.join(ROOT, "bindings", "python")
BROKERS = [b for b in os.environ.get("CELERYAPP_BROKERS", "").split(",") if b]
if not BROKERS:
    raise SystemExit("CELERYAPP_BROKERS is empty: no broker driver to test")

for p in (HERE, BINDINGS):
    if p not in sys.path:
        sys.path.insert(0, p)
import capp  # noqa: E402

QUEUES = {"celery": "capp_celery", "aiqueue": "capp_aiqueue"}
# Celery keeps a custom state name; the library's stores keep Celery's state
# set and store a custom state as PROGRESS (docs/python.md).
PROGRESS_STATES = {"DOWNLOADING", "PROGRESS"}


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
    tmp = tempfile.mkdtemp(prefix="aiq-capp-redis-")
    port = start_service("redis", tmp)
    yield port
    stop_service("redis", tmp)


def wait_ready(proc, log_path, needle, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with open(log_path) as f:
            if needle in f.read():
                return
        time.sleep(0.2)
    with open(log_path) as f:
        pytest.fail("worker did not start (rc %s):\n%s" % (proc.poll(), f.read()))


@pytest.fixture(scope="module", params=BROKERS)
def env(request, redis_port):
    kind = request.param
    backend = "redis://127.0.0.1:%d/1" % redis_port
    tmp = None
    if kind == "redis":
        broker = "redis://127.0.0.1:%d/0" % redis_port
    else:
        tmp = tempfile.mkdtemp(prefix="aiq-capp-amqp-")
        broker = "amqp://guest:guest@127.0.0.1:%d//" % start_service("rabbitmq", tmp)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    base.update(CAPP_BROKER=broker, CAPP_BACKEND=backend, PYTHONDONTWRITEBYTECODE="1",
                PYTHONPATH=os.pathsep.join([HERE, BINDINGS]))
    if "AIQUEUE_LIBRARY" in os.environ:
        base["AIQUEUE_LIBRARY"] = os.environ["AIQUEUE_LIBRARY"]
    logdir = tempfile.mkdtemp(prefix="aiq-capp-logs-")
    cmds = {
        "celery": ["/usr/bin/python3", "-m", "celery", "-A", "capp", "worker", "-P", "prefork",
                   "-c", "2", "-Q", QUEUES["celery"], "--without-mingle", "--without-gossip",
                   "--without-heartbeat", "-l", "info"],
        "aiqueue": ["/usr/bin/python3", "-m", "aiqueue", "worker", "-A", "capp", "-c", "2",
                    "-Q", QUEUES["aiqueue"], "-l", "info"],
    }
    ready = {"celery": "ready.", "aiqueue": "task(s):"}
    procs, logs = {}, {}
    try:
        for impl, cmd in cmds.items():
            logs[impl] = os.path.join(logdir, impl + ".log")
            with open(logs[impl], "w") as out:
                procs[impl] = subprocess.Popen(cmd, cwd=HERE, env=dict(base, CAPP_IMPL=impl),
                                               stdout=out, stderr=subprocess.STDOUT)
        for impl in cmds:
            wait_ready(procs[impl], logs[impl], ready[impl])
        apps = {impl: capp.build(capp.implementation(impl), broker, backend) for impl in cmds}
        yield {"apps": apps, "logs": logs}
        for a in apps.values():
            a.close()
        # Celery's result handles unsubscribe when collected: before Redis stops.
        import gc
        gc.collect()
    finally:
        rcs = {}
        for impl, p in procs.items():
            p.terminate()
            try:
                rcs[impl] = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                rcs[impl] = p.wait()
        if tmp:
            stop_service("rabbitmq", tmp)
    # The aiqueue worker stops cleanly on SIGTERM, as Celery's does.
    with open(logs["aiqueue"]) as f:
        assert rcs.get("aiqueue") == 0, f.read()


def outcome(r, timeout=30):
    """What a client sees of a finished task: value, or exception type and args."""
    value = r.get(timeout=timeout, propagate=False)
    if isinstance(value, BaseException):
        return {"state": r.state, "exc": type(value).__name__, "args": list(value.args),
                "traceback": bool(r.traceback)}
    return {"state": r.state, "value": value}


def run_calls(app, queue):
    t = app.capp
    got = {}
    got["add"] = outcome(t.add.apply_async((2, 40), queue=queue))
    got["retry"] = outcome(t.flaky.apply_async((2,), queue=queue))
    got["fail"] = outcome(t.fail.apply_async(("model exploded",), queue=queue))
    got["fail_builtin"] = outcome(t.fail_builtin.apply_async(("bad value",), queue=queue))
    r = t.progress.apply_async((1.5,), queue=queue)
    deadline = time.monotonic() + 20
    state, info = None, None
    while time.monotonic() < deadline:
        # Two reads (as with Celery): the task may move on between them, and
        # STARTED carries a meta of its own, so wait until both agree.
        state, info = r.state, r.info
        if state in PROGRESS_STATES and isinstance(info, dict) and "step" in info:
            break
        time.sleep(0.05)
    assert state in PROGRESS_STATES, (state, info)
    got["progress"] = {"info": info, "final": outcome(r)}
    return got


def test_task_names_are_celerys(env):
    for app in env["apps"].values():
        assert app.capp.add.name == "capp.add"
        assert app.capp.add(2, 3) == 5  # callable as the plain function


@pytest.mark.parametrize("worker", ["celery", "aiqueue"])
@pytest.mark.parametrize("client", ["celery", "aiqueue"])
def test_same_results(env, worker, client):
    if "reference" not in env:  # Celery calling Celery, once per broker
        env["reference"] = run_calls(env["apps"]["celery"], QUEUES["celery"])
    reference = env["reference"]
    got = run_calls(env["apps"][client], QUEUES[worker])
    try:
        assert got == reference
    except AssertionError:
        for impl, path in env["logs"].items():
            with open(path) as f:
                print("---- %s worker log ----\n%s" % (impl, f.read()[-4000:]))
        raise
    assert reference["add"] == {"state": "SUCCESS", "value": 42}
    assert reference["retry"] == {"state": "SUCCESS", "value": {"retries": 2}}
    assert reference["fail"] == {"state": "FAILURE", "exc": "CappError",
                                 "args": ["model exploded"], "traceback": True}
    assert reference["fail_builtin"]["exc"] == "ValueError"
    assert reference["progress"] == {"info": {"step": 1, "of": 2},
                                     "final": {"state": "SUCCESS", "value": "done"}}
