"""Chords on the PostgreSQL result store, joined by libaiqueue workers.

A private redis-server is the broker, a private PostgreSQL cluster the
result store (scripts/services/*.sh); three libaiqueue worker processes
(tests/integration/interop/interop_worker.c) consume queue "c" and the
canvas suite's C client (canvas_client.c) sends the chords. The parts'
returns are joined in aiq_chords / aiq_chord_parts under a row lock.
"""
import base64
import json
import os
import subprocess
import tempfile
import time

import pytest

from test_canvas import CLIENT, c_client, log, start_service, stop_service

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PG_SH = os.path.join(ROOT, "scripts", "services", "postgres.sh")
WORKER = os.environ["CANVAS_WORKER"]
NWORKERS = 3
# The first is the name test_canvas.c_client prints on failure.
LOGS = ["c_worker.log"] + [f"c_worker{i}.log" for i in range(1, NWORKERS)]


def psql(env, sql):
    out = subprocess.run(["bash", PG_SH, "psql", env["pg_dir"], "-tA", "-c", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def env():
    rtmp = tempfile.mkdtemp(prefix="aiq-chordpg-redis-")
    ptmp = tempfile.mkdtemp(prefix="aiq-chordpg-pg-")
    port = start_service("redis", rtmp)
    start_service("postgres", ptmp)
    with open(os.path.join(ptmp, "url")) as f:
        pg_url = f.read().strip()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    c_env = dict(base, AIQUEUE_BROKER_URL=f"redis://127.0.0.1:{port}/0",
                 AIQUEUE_RESULT_URL=pg_url)
    logdir = tempfile.mkdtemp(prefix="aiq-chordpg-logs-")
    logs, workers = [], []
    for i in range(NWORKERS):
        f = open(os.path.join(logdir, LOGS[i]), "w")
        logs.append(f)
        workers.append(subprocess.Popen(
            [WORKER], env=dict(c_env, AIQUEUE_WORKER_QUEUES="c", AIQUEUE_WORKER_CONCURRENCY="4",
                               AIQUEUE_LOG_LEVEL="info"),
            stdout=f, stderr=subprocess.STDOUT))
    try:
        import redis
        yield {"c_env": c_env, "logdir": logdir, "pg_dir": ptmp,
               "redis": redis.Redis(host="127.0.0.1", port=port, db=0)}
    finally:
        for w in workers:
            w.terminate()
        rcs = [w.wait(timeout=30) for w in workers]
        for f in logs:
            f.close()
        stop_service("redis", rtmp)
        stop_service("postgres", ptmp)
        assert rcs == [0] * NWORKERS, [log({"logdir": logdir}, name)[-2000:] for name in LOGS]


def bodies_sent(env, queue, seconds):
    """The messages on a queue no worker consumes, once `seconds` passed
    without a new one (the Redis broker keeps them as kombu JSON)."""
    r, seen, quiet_since = env["redis"], -1, time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n = r.llen(queue)
        if n != seen:
            seen, quiet_since = n, time.monotonic()
        elif n > 0 and time.monotonic() - quiet_since > seconds:
            break
        time.sleep(0.05)
    return [json.loads(base64.b64decode(json.loads(m)["body"])) for m in r.lrange(queue, 0, -1)]


def test_200_part_chord_on_three_workers(env):
    n = 200
    got = c_client(env, "chord", "c|tasks.c_echo|[\"tail\"]",
                   *[f"c|tasks.add|[{i}, {i}]" for i in range(n)])
    assert got["states"] == ["SUCCESS"], got
    assert got["results"] == [{"args": [[2 * i for i in range(n)], "tail"], "kwargs": {},
                               "retries": 0}]
    # The chord's rows are gone once the body was sent.
    assert psql(env, "SELECT count(*) FROM aiq_chords") == "0"
    assert psql(env, "SELECT count(*) FROM aiq_chord_parts") == "0"


def test_body_sent_exactly_once(env):
    """The body on a queue no worker consumes: exactly one message, with
    every part's result in header order."""
    n = 200
    client = subprocess.Popen([CLIENT, "chord", "sink|tasks.c_echo|[\"tail\"]",
                               *[f"c|tasks.add|[{i}, 1]" for i in range(n)]],
                              env=env["c_env"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        bodies = bodies_sent(env, "sink", 1.5)
    finally:
        client.kill()
        client.wait()
    assert len(bodies) == 1
    args = bodies[0][0]
    assert args == [[i + 1 for i in range(n)], "tail"]
    # Every part ran, spread over the workers.
    assert psql(env, "SELECT count(*) FROM aiq_chords") == "0"
    assert int(psql(env, "SELECT count(DISTINCT worker) FROM aiq_tasks "
                         "WHERE worker IS NOT NULL")) >= 2


def test_failing_part_gives_chord_error(env):
    specs = [f"c|tasks.add|[{i}, {i}]" for i in range(10)] + ["c|tasks.c_fail|[]"]
    got = c_client(env, "chord", "c|tasks.c_echo|[\"tail\"]", *specs)
    assert got["states"] == ["FAILURE"], got
    body = got["ids"][0]
    row = psql(env, f"SELECT error->>'exc_type', error->>'exc_message' FROM aiq_tasks "
                    f"WHERE id = '{body}'")
    exc_type, msg = row.split("|", 1)
    assert exc_type == "ChordError"
    assert msg.startswith("Dependency ") and "AnalysisError('model exploded')" in msg, msg
    assert psql(env, "SELECT count(*) FROM aiq_chords") == "0"
