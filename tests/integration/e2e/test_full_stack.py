"""The whole stack over real HTTP: 1,000 POST /analyze through aiqueue-server
to the broker, two aiqueue-worker processes (one stopped with SIGTERM in the
middle of the run), results in Redis, every analysis archived in PostgreSQL.

Modes: RabbitMQ broker, Redis broker, and the embedded default (server with
in-process workers on memory://, archiving to PostgreSQL). Private servers
are started by scripts/services on free loopback ports and always stopped.

    test_full_stack.py SERVER_EXE WORKER_EXE MODES
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e_util import Server, env  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVICES = os.path.join(ROOT, "scripts", "services")
SERVER_EXE = os.environ["E2E_SERVER"]
WORKER_EXE = os.environ["E2E_WORKER"]
MODES = [m for m in os.environ.get("E2E_MODES", "").split(",") if m]
N = 1000
LYRICS = "I walk the night\nI hold the light\nwe sing along\nthe whole night long\n"


def service(kind, cmd, d):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), cmd, d], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read(d, name):
    with open(os.path.join(d, name)) as f:
        return f.read().strip()


@pytest.fixture(params=MODES)
def stack(request):
    mode = request.param
    base = tempfile.mkdtemp(prefix="aiq-e2e-")
    os.chmod(base, 0o755)  # the postgres user must reach its data dir
    started = []

    def start(kind):
        d = os.path.join(base, kind + str(len(started)))
        os.mkdir(d)
        service(kind, "start", d)
        started.append((kind, d))
        return d

    procs = []
    try:
        pg = start("postgres")
        archive = read(pg, "url")
        results = "memory://e2e"
        if mode != "memory":
            results = "redis://127.0.0.1:%s/1" % read(start("redis"), "port")
        if mode == "amqp":
            broker = "amqp://guest:guest@127.0.0.1:%s//" % read(start("rabbitmq"), "port")
        elif mode == "redis":
            broker = "redis://127.0.0.1:%s/0" % read(start("redis"), "port")
        else:
            broker = "memory://e2e"
        server_args = ["--broker", broker, "--backend", results, "--log-level", "warning"]
        if mode == "memory":
            server_args += ["--workers", "2"]
        server = Server(SERVER_EXE, *server_args,
                        extra_env={"AIQUEUE_ARCHIVE_URL": archive})
        procs.append(server.proc)
        workers = []
        if mode != "memory":
            for i in range(2):
                log = open(os.path.join(base, "worker%d.log" % i), "w")
                w = subprocess.Popen(
                    [WORKER_EXE, "--broker", broker, "--backend", results, "--archive",
                     archive, "--concurrency", "2", "--loglevel", "warning"],
                    stdout=log, stderr=subprocess.STDOUT, env=env())
                procs.append(w)
                workers.append(w)
        yield {"mode": mode, "server": server, "workers": workers, "pg": pg, "base": base}
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for kind, d in reversed(started):
            subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), "stop", d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def post_many(port, start, count, ids, errors):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(start, start + count):
        body = json.dumps({"track_id": i, "text": LYRICS})
        conn.request("POST", "/analyze", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 202:
            errors.append((i, resp.status, data))
            continue
        ids[i] = json.loads(data)["task_id"]
    conn.close()


def test_thousand_analyses_through_the_stack(stack):
    server = stack["server"]
    ids, errors = [None] * N, []
    threads = [threading.Thread(target=post_many, args=(server.port, k * N // 4, N // 4, ids,
                                                        errors)) for k in range(4)]
    for t in threads:
        t.start()

    if stack["workers"]:
        # SIGTERM one worker while tasks flow: it finishes what it holds and
        # exits 0; the other one does the rest.
        time.sleep(0.3)
        stopped = stack["workers"][0]
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=60) == 0, \
            open(os.path.join(stack["base"], "worker0.log")).read()
    for t in threads:
        t.join()
    assert not errors, errors[:5]

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for i, task_id in enumerate(ids):
        conn.request("GET", "/tasks/%s?wait=30" % task_id)
        resp = conn.getresponse()
        task = json.loads(resp.read())
        assert resp.status == 200 and task["state"] == "SUCCESS", (i, task)
        assert task["result"]["track_id"] == i
        assert task["result"]["analysis"]["line_count"] == 4

    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    m = re.search(r'^aiqueue_tasks_enqueued_total\{task="tasks.analyze_track"\} (\d+)',
                  metrics, re.M)
    assert m and int(m.group(1)) == N, metrics[:2000]

    # Every analysis is archived (a redelivered task updates its row).
    deadline = time.monotonic() + 30
    count = -1
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["bash", os.path.join(SERVICES, "postgres.sh"), "psql", stack["pg"], "-Atc",
             "select count(*), count(distinct track_id) from aiq_analyses"],
            capture_output=True, text=True, check=True)
        count, distinct = (int(x) for x in out.stdout.strip().split("|"))
        if count == N:
            break
        time.sleep(0.5)
    assert (count, distinct) == (N, N)
