"""aiqueue-worker --metrics-port: Prometheus metrics of a C worker.

A private redis-server (scripts/services) carries the tasks; a Celery client
sends successes, a failure and an unregistered task. The /metrics text must
hold the counts by task and state, consistent histograms, the gauges, pass
`promtool check metrics`, and be scraped by a real Prometheus server (Debian's
`prometheus`, on loopback) whose HTTP query API returns the same values.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVICES = os.path.join(ROOT, "scripts", "services")
INTEROP = os.path.join(ROOT, "tests", "integration", "interop")
PROGRAM = os.environ["METRICS_PROGRAM"]
PROMTOOL = os.environ["METRICS_PROMTOOL"]
PROMETHEUS = os.environ["METRICS_PROMETHEUS"]
AMQP = os.environ.get("METRICS_AMQP") == "1"  # the build has the AMQP driver

if INTEROP not in sys.path:
    sys.path.insert(0, INTEROP)
import celeryapp  # noqa: E402

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def parse(text):
    """{(name, frozenset(labels)): value} of every sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


@pytest.fixture(scope="module")
def worker():
    tmp = tempfile.mkdtemp(prefix="aiq-metrics-redis-")
    subprocess.run(["bash", os.path.join(SERVICES, "redis.sh"), "start", tmp], check=True,
                   stdout=subprocess.DEVNULL)
    port = int(open(os.path.join(tmp, "port")).read())
    broker, backend = f"redis://127.0.0.1:{port}/3", f"redis://127.0.0.1:{port}/4"
    mport = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    log = open(os.path.join(tmp, "worker.log"), "w")
    p = subprocess.Popen([PROGRAM, "-b", broker, "--backend", backend, "-Q", "mq", "-c", "2",
                          "-n", "metrics@test", "--metrics-port", str(mport),
                          "--metrics-host", "127.0.0.1", "-E"],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{mport}/metrics"
    deadline = time.monotonic() + 20
    while True:
        try:
            get(url)
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline and p.poll() is None, open(log.name).read()
            time.sleep(0.1)
    app = celeryapp.make_app(broker, backend)
    try:
        yield {"url": url, "port": mport, "app": app, "tmp": tmp, "log": log.name}
    finally:
        app.close()
        p.terminate()
        rc = p.wait(timeout=30)
        log.close()
        subprocess.run(["bash", os.path.join(SERVICES, "redis.sh"), "stop", tmp],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert rc == 0, open(log.name).read()


@pytest.fixture(scope="module")
def loaded(worker):
    app = worker["app"]
    ok = [app.send_task("tasks.analyze_track", args=[f"t-{i}", "la la love\nyou"], queue="mq")
          for i in range(3)]
    for r in ok:
        assert r.get(timeout=30)["track_id"].startswith("t-")
    bad = app.send_task("tasks.analyze_track", args=[], queue="mq")
    with pytest.raises(Exception):
        bad.get(timeout=30)
    app.send_task("tasks.not_here", args=[], queue="mq")
    deadline = time.monotonic() + 20
    while True:
        m = parse(get(worker["url"])[2])
        if m.get(("aiqueue_worker_dead_letters_total", frozenset()), 0) >= 1:
            return worker
        assert time.monotonic() < deadline
        time.sleep(0.1)


def value(m, name, **labels):
    return m[(name, frozenset(labels.items()))]


def test_counts_histograms_gauges(loaded):
    status, ctype, text = get(loaded["url"])
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    m = parse(text)
    task = "tasks.analyze_track"
    assert value(m, "aiqueue_worker_tasks_total", task=task, state="SUCCESS") == 3
    assert value(m, "aiqueue_worker_tasks_total", task=task, state="FAILURE") == 1
    assert value(m, "aiqueue_worker_tasks_total", task=task, state="RETRY") == 0
    assert value(m, "aiqueue_worker_tasks_received_total", task=task) == 4
    assert value(m, "aiqueue_worker_tasks_total", task="tasks.not_here", state="REJECTED") == 1
    assert value(m, "aiqueue_worker_dead_letters_total") == 1
    for h in ("aiqueue_worker_task_runtime_seconds", "aiqueue_worker_task_queue_wait_seconds"):
        buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in m.items()
                          if k[0] == h + "_bucket" and dict(k[1])["task"] == task))
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), counts  # cumulative
        assert buckets[-1][0] == float("inf") and buckets[-1][1] == 4
        assert value(m, h + "_count", task=task) == 4
        assert 0 <= value(m, h + "_sum", task=task) < 60
    assert value(m, "aiqueue_worker_tasks_running") == 0
    assert value(m, "aiqueue_worker_tasks_prefetched") == 0
    assert value(m, "aiqueue_worker_queue_depth", queue="mq") == 0
    assert value(m, "aiqueue_worker_broker_reconnects_total") == 0
    # -E: a heartbeat every 2 s, so never much older than that.
    assert 0 <= value(m, "aiqueue_worker_heartbeat_age_seconds") < 3.5
    info = [(dict(k[1]), v) for k, v in m.items() if k[0] == "aiqueue_build_info"]
    assert len(info) == 1 and info[0][1] == 1 and re.match(r"\d+\.\d+", info[0][0]["version"])
    assert abs(value(m, "aiqueue_worker_start_time_seconds") - time.time()) < 600


def test_queue_depth_counts_ready_messages(worker):
    """One sample per consumed queue, read from the broker at scrape time."""
    m = parse(get(worker["url"])[2])
    depths = {dict(k[1])["queue"]: v for k, v in m.items() if k[0] == "aiqueue_worker_queue_depth"}
    assert depths == {"mq": 0}


def test_promtool_accepts_the_text(loaded):
    text = get(loaded["url"])[2]
    out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_other_paths_and_methods(loaded):
    with pytest.raises(urllib.error.HTTPError) as e:
        get(loaded["url"].replace("/metrics", "/nope"))
    assert e.value.code == 404
    req = urllib.request.Request(loaded["url"], data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


def test_a_real_prometheus_scrapes_it(loaded):
    tmp = tempfile.mkdtemp(prefix="aiq-prometheus-")
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: aiqueue-worker\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{loaded['port']}']\n")
    pport = free_port()
    log = open(os.path.join(tmp, "prometheus.log"), "w")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}",
                             f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
                             f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        q = urllib.parse.quote('aiqueue_worker_tasks_total{task="tasks.analyze_track",'
                               'state="SUCCESS"}')
        url = f"http://127.0.0.1:{pport}/api/v1/query?query={q}"
        deadline = time.monotonic() + 60
        result = None
        while time.monotonic() < deadline:
            try:
                body = json.loads(get(url)[2])
                result = body["data"]["result"]
                if result:
                    break
            except (urllib.error.URLError, ConnectionError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert result, open(log.name).read()
        assert float(result[0]["value"][1]) == 3
        assert result[0]["metric"]["job"] == "aiqueue-worker"
        up = json.loads(get(f"http://127.0.0.1:{pport}/api/v1/query?query=up")[2])
        assert float(up["data"]["result"][0]["value"][1]) == 1
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        log.close()


def wait_metric(url, name, pred, timeout):
    deadline = time.monotonic() + timeout
    m = {}
    while time.monotonic() < deadline:
        try:
            m = parse(get(url)[2])
        except (urllib.error.URLError, ConnectionError):
            m = {}
        if pred(m.get((name, frozenset()))):
            return m
        time.sleep(0.2)
    raise AssertionError(f"{name}: {m.get((name, frozenset()))}")


def test_heartbeat_age_keeps_resetting(worker):
    """The age is of the last beat sent: it grows and falls back every ~2 s."""
    ages = []
    for _ in range(25):
        ages.append(value(parse(get(worker["url"])[2]), "aiqueue_worker_heartbeat_age_seconds"))
        time.sleep(0.2)
    assert max(ages) < 3.5 and min(ages) < 1.0, ages
    assert any(b < a for a, b in zip(ages, ages[1:])), ages  # it was reset at least once


def test_reconnects_counted_when_redis_restarts(worker):
    """Last in the module: restarts the module's redis-server under the worker."""
    name = "aiqueue_worker_broker_reconnects_total"
    before = value(parse(get(worker["url"])[2]), name)
    subprocess.run(["bash", os.path.join(SERVICES, "redis.sh"), "restart", worker["tmp"]],
                   check=True, stdout=subprocess.DEVNULL)
    m = wait_metric(worker["url"], name, lambda v: v is not None and v >= before + 1, 30)
    # The worker consumes again: a task sent now runs.
    r = worker["app"].send_task("tasks.analyze_track", args=["t-r", "la"], queue="mq")
    assert r.get(timeout=30)["track_id"] == "t-r"
    # While the broker was away the heartbeats stopped; they are back now.
    wait_metric(worker["url"], "aiqueue_worker_heartbeat_age_seconds",
                lambda v: v is not None and v < 3.5, 15)
    text = get(worker["url"])[2]
    out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert value(m, name) == before + 1, open(worker["log"]).read()[-3000:]


def _reconnects_counted_when_rabbitmq_restarts():
    tmp = tempfile.mkdtemp(prefix="aiq-metrics-amqp-")
    subprocess.run(["bash", os.path.join(SERVICES, "rabbitmq.sh"), "start", tmp], check=True,
                   stdout=subprocess.DEVNULL)
    broker = open(os.path.join(tmp, "url")).read().strip()
    mport = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    log = open(os.path.join(tmp, "worker.log"), "w")
    p = subprocess.Popen([PROGRAM, "-b", broker, "--backend", "memory://", "-Q", "mq", "-c", "1",
                          "-n", "metrics-amqp@test", "--metrics-port", str(mport),
                          "--metrics-host", "127.0.0.1", "-E"],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{mport}/metrics"
    name = "aiqueue_worker_broker_reconnects_total"
    try:
        wait_metric(url, name, lambda v: v == 0, 20)
        subprocess.run(["bash", os.path.join(SERVICES, "rabbitmq.sh"), "restart", tmp],
                       check=True, stdout=subprocess.DEVNULL)
        m = wait_metric(url, name, lambda v: v is not None and v >= 1, 60)
        assert value(m, name) == 1, open(log.name).read()[-3000:]
        wait_metric(url, "aiqueue_worker_heartbeat_age_seconds",
                    lambda v: v is not None and v < 3.5, 30)
    finally:
        p.terminate()
        rc = p.wait(timeout=30)
        log.close()
        subprocess.run(["bash", os.path.join(SERVICES, "rabbitmq.sh"), "stop", tmp],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert rc == 0, open(log.name).read()


if AMQP:  # the build has the AMQP driver
    test_reconnects_counted_when_rabbitmq_restarts = _reconnects_counted_when_rabbitmq_restarts
