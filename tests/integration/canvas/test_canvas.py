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
    # Each worker sends the next step before it stores its own result (as
    # Celery does): wait for every step rather than read it once.
    assert [env["app"].AsyncResult(i).get(timeout=30) for i in ids] == [15, 10, 6, 3]
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


# ---- workflows started by the libaiqueue client -------------------------------

def c_client(env, *argv):
    out = subprocess.run([CLIENT, *argv], env=env["c_env"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr + log(env, "c_worker.log")[-3000:]
    return json.loads(out.stdout)


def test_c_chain_finished_by_celery_workers(env):
    got = c_client(env, "chain", "py|tasks.py_add|[1, 2]", "py|tasks.py_add|[3]",
                   "py|tasks.py_add|[4]")
    assert got["states"] == ["SUCCESS"] * 3
    assert got["results"] == [3, 6, 10]
    ids = got["ids"]
    r = env["app"].AsyncResult(ids[2])
    assert r.get(timeout=30) == 10
    assert meta(env, ids[1])["parent_id"] == ids[0]
    assert meta(env, ids[2])["parent_id"] == ids[1]


def test_c_mixed_chain(env):
    """Started by C; py -> c -> py -> c, an immutable step in the middle."""
    got = c_client(env, "chain", "py|tasks.py_add|[1, 2]", "c|tasks.c_add|[3]",
                   "py|tasks.py_add|[100, 1]|immutable", "c|tasks.c_add|[4]")
    assert got["results"] == [3, 6, 101, 105]
    py_log = log(env, "celery.log")
    assert got["ids"][0] in py_log and got["ids"][2] in py_log
    assert got["ids"][1] not in py_log and got["ids"][3] not in py_log


def test_c_link_and_link_error(env):
    ok = c_client(env, "link", "py|tasks.py_add|[1, 2]", "c|tasks.c_echo|[7]",
                  "c|tasks.c_echo|[]")
    assert ok["results"] == [3]
    # Celery's worker sent the callback to the C worker, result first.
    deadline = time.monotonic() + 30
    child = None
    while child is None and time.monotonic() < deadline:
        for k in env["app"].backend.client.scan_iter("celery-task-meta-*"):
            m = json.loads(env["app"].backend.client.get(k))
            if m.get("parent_id") == ok["ids"][0]:
                child = m
        time.sleep(0.1)
    assert child and child["result"] == {"args": [3, 7], "kwargs": {}, "retries": 0}
    bad = c_client(env, "link", "py|tasks.py_fail|[]", "py|tasks.py_echo|[]",
                   "py|tasks.py_record|[]")
    assert bad["states"] == ["FAILURE"]
    # Celery's worker sent the errback (one argument: task style) with the
    # failed id.
    deadline = time.monotonic() + 30
    found = None
    while found is None and time.monotonic() < deadline:
        for k in env["app"].backend.client.scan_iter("celery-task-meta-*"):
            m = json.loads(env["app"].backend.client.get(k))
            if m.get("parent_id") == bad["ids"][0]:
                found = m
        time.sleep(0.1)
    assert found and found["result"] == {"got": bad["ids"][0]}


def test_c_group(env):
    specs = [f"{'c' if i % 2 else 'py'}|tasks.add|[{i}, {i}]" for i in range(10)]
    got = c_client(env, "group", *specs)
    assert got["results"] == [2 * i for i in range(10)]
    gid = got["group_id"]
    for i, tid in enumerate(got["ids"]):
        m = meta(env, tid)
        assert m["status"] == "SUCCESS"
    # Celery's worker sees the group header on the members it ran.
    assert env["app"].AsyncResult(got["ids"][0]).get(timeout=10) == 0
    assert gid and len(set(got["ids"])) == 10


# ---- chords: parts on both kinds of worker, joined in Redis as Celery 5.2 does --

def body_runs(env, tag):
    v = env["app"].backend.client.get("canvas-body-runs:" + tag)
    return int(v or 0)


def test_celery_chord_parts_on_both_workers(env):
    from celery import chord
    header = [c_sig(env, "tasks.c_add", i, i) if i % 2 else py_sig(env, "tasks.add", i, i)
              for i in range(20)]
    r = chord(header)(py_sig(env, "tasks.py_tsum", "celery-chord"))
    assert r.get(timeout=60) == sum(2 * i for i in range(20))
    time.sleep(1)  # a second run of the body would have counted by now
    assert body_runs(env, "celery-chord") == 1
    py_log = log(env, "celery.log")
    # The chord's keys are gone once the body was sent.
    gid = r.parent.id
    assert env["app"].backend.client.exists(f"celery-taskset-meta-{gid}.j") == 0


def test_c_chord_parts_on_both_workers(env):
    specs = [f"{'c' if i % 2 else 'py'}|tasks.add|[{i}, {i}]" for i in range(20)]
    got = c_client(env, "chord", "py|tasks.py_tsum|[\"c-chord\"]", *specs)
    assert got["states"] == ["SUCCESS"] and got["results"] == [sum(2 * i for i in range(20))]
    time.sleep(1)
    assert body_runs(env, "c-chord") == 1
    # A body on the C worker gets the list of results in header order.
    got = c_client(env, "chord", "c|tasks.c_echo|[\"tail\"]",
                   *[f"{'c' if i % 2 else 'py'}|tasks.add|[{i}, 1]" for i in range(6)])
    assert got["results"] == [{"args": [[1, 2, 3, 4, 5, 6], "tail"], "kwargs": {},
                               "retries": 0}]


def test_chord_part_failure_gives_chord_error(env):
    from celery import chord
    from celery.exceptions import ChordError
    # Every part on the C worker: the C worker that runs the last part
    # stores the body's ChordError, which Celery reads as its own.
    header = [c_sig(env, "tasks.c_add", i, i) for i in range(3)] + [c_sig(env, "tasks.c_fail")]
    r = chord(header)(py_sig(env, "tasks.py_tsum", "failing-all-c"))
    deadline = time.monotonic() + 60
    while meta(env, r.id)["status"] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.1)
    m = meta(env, r.id)
    assert m["status"] == "FAILURE" and isinstance(m["result"], ChordError), m
    assert "AnalysisError" in str(m["result"]) and "model exploded" in str(m["result"])
    assert body_runs(env, "failing-all-c") == 0
    for failing in ("c", "py"):
        header = [py_sig(env, "tasks.add", i, i) for i in range(4)]
        header.append(c_sig(env, "tasks.c_fail") if failing == "c"
                      else py_sig(env, "tasks.py_fail"))
        header += [c_sig(env, "tasks.c_add", i, i) for i in range(4)]
        r = chord(header)(py_sig(env, "tasks.py_tsum", "failing-" + failing))
        # r.get() re-raises the failed header part's own error first (its
        # parent); the body itself ends ChordError, whoever ran the last part.
        deadline = time.monotonic() + 60
        while meta(env, r.id)["status"] == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.1)
        m = meta(env, r.id)
        assert m["status"] == "FAILURE", m
        assert isinstance(m["result"], ChordError), m
        assert "Dependency" in str(m["result"]) and "raised" in str(m["result"])
        assert body_runs(env, "failing-" + failing) == 0


def wait_final(env, task_id, seconds=30):
    deadline = time.monotonic() + seconds
    while meta(env, task_id)["status"] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.1)
    return meta(env, task_id)


def test_chord_part_expired_gives_chord_error(env):
    # Regression: a part that expired before it ran ended REVOKED without
    # returning to its chord, whose body then waited forever. As Celery's
    # worker does, the part returns REVOKED and the body ends ChordError.
    import datetime
    from celery import chord
    from celery.exceptions import ChordError
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    header = [c_sig(env, "tasks.c_add", i, i) for i in range(3)]
    header.append(c_sig(env, "tasks.c_add", 1, 1, expires=past))
    r = chord(header)(py_sig(env, "tasks.py_tsum", "expired-part"))
    m = wait_final(env, r.id)
    assert m["status"] == "FAILURE" and isinstance(m["result"], ChordError), m
    assert "TaskRevokedError" in str(m["result"]) and "expired" in str(m["result"]), m
    assert body_runs(env, "expired-part") == 0


def test_group_result_saved_and_restored_both_ways(env):
    from celery import group
    from celery.result import GroupResult
    specs = [f"{'c' if i % 2 else 'py'}|tasks.add|[{i}, 2]" for i in range(4)]
    got = c_client(env, "saved-group", *specs)
    restored = GroupResult.restore(got["group_id"], app=env["app"])
    assert [r.id for r in restored.results] == got["ids"]
    assert restored.get(timeout=30) == [2, 3, 4, 5]
    # Saved by Celery, restored by C.
    g = group(c_sig(env, "tasks.c_add", i, 1) for i in range(3)).apply_async()
    g.save()
    out = subprocess.run([CLIENT, "restore", g.id], env=env["c_env"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [r.id for r in g.results]
    assert g.get(timeout=30) == [1, 2, 3]
    out = subprocess.run([CLIENT, "restore", "no-such-group"], env=env["c_env"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no result saved" in out.stderr


# ---- the Python binding's canvas (aiqueue.canvas) with real Celery workers -----

def test_python_binding_canvas(env):
    from celery.result import GroupResult
    penv = dict(env["c_env"], PYTHONPATH=os.environ["CANVAS_BINDINGS"],
                PYTHONDONTWRITEBYTECODE="1")
    if os.environ.get("CANVAS_PRELOAD"):
        penv["LD_PRELOAD"] = os.environ["CANVAS_PRELOAD"]
        penv["ASAN_OPTIONS"] = "detect_leaks=0"
    out = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "binding_canvas.py"),
                          str(env["port"])], env=penv, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["chain"] == 10
    assert got["chord"] == sum(2 * i for i in range(20))
    time.sleep(1)
    assert body_runs(env, "py-binding") == 1
    assert got["group"] == [1, 2, 3, 4]
    assert got["restored_ids"] == got["group_ids"]
    restored = GroupResult.restore(got["group_id"], app=env["app"])
    assert [x.id for x in restored.results] == got["group_ids"]


# ---- nested canvas: a group or chord as a chain step or inside a link ----------
# The C worker applies them (canvas_apply.c); Celery's worker finishes them.

def wait_state(env, task_id, timeout=60):
    deadline = time.monotonic() + timeout
    while meta(env, task_id)["status"] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.1)
    return meta(env, task_id)


def test_chain_into_group_applied_by_c_worker(env):
    """c_add | group(py_add, c_add): the C worker sends the group's members
    with its result first, the group's id and each member's index."""
    from celery import group
    r = (c_sig(env, "tasks.c_add", 1, 2)
         | group(py_sig(env, "tasks.py_add", 10), c_sig(env, "tasks.c_add", 20))).apply_async()
    assert r.get(timeout=60) == [13, 23]
    first = r.parent.id
    for i, child in enumerate(r.results):
        m = meta(env, child.id)
        assert m["status"] == "SUCCESS" and m["parent_id"] == first
    # The Python member saw the group header as Celery's worker would.
    assert r.results[0].get(timeout=10) == 13


def test_chain_into_chord_applied_by_c_worker(env):
    """c_add | chord([py_add, c_add], py_tsum): the C worker sets the chord
    size in Redis and sends the parts with the body attached; the body runs
    once with both results, in header order."""
    from celery import chord
    tag = "nested-chord"
    r = (c_sig(env, "tasks.c_add", 1, 2)
         | chord([py_sig(env, "tasks.py_add", 10), c_sig(env, "tasks.c_add", 20)],
                 py_sig(env, "tasks.py_tsum", tag))).apply_async()
    assert r.get(timeout=60) == 36
    time.sleep(1)  # a second run of the body would have counted by now
    assert body_runs(env, tag) == 1
    # chain(c, group(..), body): Celery's client makes the group a chord.
    from celery import chain, group
    tag = "nested-chain-group"
    r = chain(c_sig(env, "tasks.c_add", 2, 3),
              group(c_sig(env, "tasks.c_add", 1), py_sig(env, "tasks.py_add", 2)),
              py_sig(env, "tasks.py_tsum", tag)).apply_async()
    assert r.get(timeout=60) == 13
    time.sleep(1)
    assert body_runs(env, tag) == 1


def test_link_chain_applied_by_c_worker(env):
    """link=chain(c_add, py_add) and link=chain(c_add, group(..), py_tsum):
    the C worker applies the chain (and, later, the chord it holds)."""
    from celery import chain, group
    import uuid
    ids = [str(uuid.uuid4()) for _ in range(2)]
    parent = c_sig(env, "tasks.c_add", 1, 2).apply_async(
        link=chain(c_sig(env, "tasks.c_add", 3, task_id=ids[0]),
                   py_sig(env, "tasks.py_add", 4, task_id=ids[1])))
    assert parent.get(timeout=30) == 3
    assert wait_state(env, ids[1])["result"] == 10
    assert meta(env, ids[1])["parent_id"] == ids[0]
    assert meta(env, ids[0])["parent_id"] == parent.id
    tag = "nested-link-chord"
    parent = c_sig(env, "tasks.c_add", 1, 2).apply_async(
        link=chain(c_sig(env, "tasks.c_add", 3),
                   group(c_sig(env, "tasks.c_add", 1), py_sig(env, "tasks.py_add", 2)),
                   py_sig(env, "tasks.py_tsum", tag)))
    assert parent.get(timeout=30) == 3
    deadline = time.monotonic() + 60
    while body_runs(env, tag) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    assert body_runs(env, tag) == 1


def test_unsupported_nested_keeps_parent_result(env):
    """A nested signature the C worker refuses (a chord inside a chord's
    header) costs the parent nothing: its result is stored, no part of the
    link is sent, and the worker logs the signature and why."""
    from celery import chord
    tag = "nested-refused"
    inner = chord([c_sig(env, "tasks.c_add", 1, 1)], py_sig(env, "tasks.py_add", 1))
    parent = c_sig(env, "tasks.c_add", 20, 22).apply_async(
        link=chord([inner], py_sig(env, "tasks.py_tsum", tag)))
    assert parent.get(timeout=30) == 42
    want = "a chord inside a chord's header is not supported"
    deadline = time.monotonic() + 10
    while want not in log(env, "c_worker.log") and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log(env, "c_worker.log")
    assert want in text and parent.id in text and "tasks.py_tsum" in text
    assert body_runs(env, tag) == 0
