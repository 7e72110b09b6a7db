"""A libaiqueue worker seen by Celery 5.2's own tools (Debian's python3-celery).

For every network broker this build has (EVENTS_BROKERS), against private
redis-server / rabbitmq-server instances (scripts/services), a C worker
(c@evtest, -E and remote control) and a Python Celery worker (py@evtest, -E)
run in one cluster. Celery's EventReceiver and `celery events --dump` must see
the C worker's worker-online / heartbeat / offline and task events; `celery
inspect ping/stats/active/registered/revoked/active_queues`, `celery status`
and `celery control revoke` must get both workers' answers.

The Redis broker is database 6: pub/sub ignores SELECT, so the channels carry
the number ("/6.celeryev/...", "/6.celery.pidbox"); a wrong prefix shows as
silence here.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVICES = os.path.join(ROOT, "scripts", "services")
INTEROP = os.path.join(ROOT, "tests", "integration", "interop")  # the Celery app
WORKER = os.environ["EVENTS_WORKER"]
SENT_CLIENT = os.environ["EVENTS_SENT_CLIENT"]  # enqueues with client.send_sent_event
PROGRAM = os.environ.get("EVENTS_PROGRAM")  # aiqueue-worker, when the programs are built
SERVER = os.environ.get("EVENTS_SERVER")  # aiqueue-server, when built (libmicrohttpd)
BROKERS = [b for b in os.environ.get("EVENTS_BROKERS", "").split(",") if b]
if not BROKERS:
    raise SystemExit("EVENTS_BROKERS is empty: no broker driver to test")
C_NODE = "c@evtest"
PY_NODE = "py@evtest"
PYTHON = "/usr/bin/python3"

if INTEROP not in sys.path:
    sys.path.insert(0, INTEROP)
import celeryapp  # noqa: E402


def start_service(kind, tmp):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), "start", tmp], check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(tmp, "port")) as f:
        return int(f.read().strip())


def stop_service(kind, tmp):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), "stop", tmp],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Collector(threading.Thread):
    """Every event Celery's EventReceiver decodes, as Flower's State gets them."""

    def __init__(self, app):
        super().__init__(daemon=True)
        self.app = app
        self.events = []
        self.lock = threading.Lock()
        self.receiver = None
        self.ready = threading.Event()

    def on_event(self, ev):
        with self.lock:
            self.events.append(ev)

    def run(self):
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self.on_event})
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self):
        if self.receiver:
            self.receiver.should_stop = True
        self.join(timeout=10)

    def of(self, type_, hostname=C_NODE, uuid=None):
        with self.lock:
            return [e for e in self.events if e.get("type") == type_
                    and (hostname is None or e.get("hostname") == hostname)
                    and (uuid is None or e.get("uuid") == uuid)]

    def wait_for(self, type_, hostname=C_NODE, uuid=None, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.of(type_, hostname, uuid)
            if got:
                return got
            time.sleep(0.05)
        with self.lock:
            seen = [(e.get("type"), e.get("hostname")) for e in self.events][-20:]
        raise AssertionError(f"no {type_} from {hostname} (uuid {uuid}); last seen: {seen}")


@pytest.fixture(scope="module")
def redis_port():
    tmp = tempfile.mkdtemp(prefix="aiq-events-redis-")
    port = start_service("redis", tmp)
    yield port
    stop_service("redis", tmp)


def wait_ping(broker, nodes, timeout=40):
    deadline = time.monotonic() + timeout
    out = None
    while time.monotonic() < deadline:
        out = subprocess.run([PYTHON, "-m", "celery", "-b", broker, "inspect", "ping", "-j",
                              "-t", "1"], capture_output=True, text=True, timeout=30)
        try:
            got = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
        except ValueError:
            got = {}
        if all(n in got for n in nodes):
            return
        time.sleep(0.5)
    raise AssertionError(f"workers {nodes} never answered ping: {out.stdout} {out.stderr}")


@pytest.fixture(scope="module", params=BROKERS)
def env(request, redis_port):
    kind = request.param
    backend = f"redis://127.0.0.1:{redis_port}/5"
    tmp = None
    if kind == "redis":
        broker = f"redis://127.0.0.1:{redis_port}/6"
    else:
        tmp = tempfile.mkdtemp(prefix="aiq-events-amqp-")
        port = start_service("rabbitmq", tmp)
        broker = f"amqp://guest:guest@127.0.0.1:{port}//"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    logdir = tempfile.mkdtemp(prefix="aiq-events-logs-")
    app = celeryapp.make_app(broker, backend)
    collector = Collector(app)
    collector.start()
    assert collector.ready.wait(20)
    time.sleep(0.5)  # the receiver's queue is bound before anyone speaks

    py_log = open(os.path.join(logdir, "celery.log"), "w")
    py = subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "celeryapp", "worker", "-P", "threads", "-c", "2",
         "-Q", "py", "-n", PY_NODE, "-E", "--without-mingle", "--without-gossip", "-l", "info"],
        cwd=INTEROP, env=dict(base, INTEROP_BROKER=broker, INTEROP_BACKEND=backend,
                              PYTHONPATH=INTEROP, PYTHONDONTWRITEBYTECODE="1"),
        stdout=py_log, stderr=subprocess.STDOUT)
    c_log_path = os.path.join(logdir, "c_worker.log")
    c_log = open(c_log_path, "w")
    c_env = dict(base, AIQUEUE_BROKER_URL=broker, AIQUEUE_RESULT_URL=backend,
                 AIQUEUE_WORKER_QUEUES="c", AIQUEUE_WORKER_CONCURRENCY="2",
                 AIQUEUE_WORKER_HOSTNAME=C_NODE, AIQUEUE_WORKER_SEND_EVENTS="true",
                 AIQUEUE_WORKER_REMOTE_CONTROL="true")
    c = subprocess.Popen([WORKER], env=c_env, stdout=c_log, stderr=subprocess.STDOUT)
    state = {"kind": kind, "broker": broker, "app": app, "events": collector, "c": c,
             "c_log": c_log_path, "logdir": logdir}
    try:
        wait_ping(broker, [C_NODE, PY_NODE])
        yield state
    finally:
        if c.poll() is None:
            c.terminate()
        py.terminate()
        c_rc = c.wait(timeout=30)
        py.wait(timeout=30)
        collector.stop()
        app.close()
        py_log.close()
        c_log.close()
        if tmp:
            stop_service("rabbitmq", tmp)
        assert c_rc == 0, open(c_log_path).read()


def celery(env, *args, timeout=60):
    out = subprocess.run([PYTHON, "-m", "celery", "-b", env["broker"], *args],
                         capture_output=True, text=True, timeout=timeout, cwd=INTEROP)
    return out


def celery_json(env, *args):
    out = celery(env, *args, "-j")
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def send(env, task, args=None, **opts):
    return env["app"].send_task(task, args=args or [], kwargs={}, queue="c", **opts)


# ---- events -------------------------------------------------------------------

def test_worker_online_and_heartbeats(env):
    ev = env["events"]
    online = ev.wait_for("worker-online")[0]
    for k in ("hostname", "timestamp", "clock", "pid", "utcoffset", "freq", "active",
              "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "local_received"):
        assert k in online, k
    assert online["freq"] == 2.0 and online["sw_ident"] == "libaiqueue"
    assert isinstance(online["loadavg"], list) and len(online["loadavg"]) == 3
    ev.wait_for("worker-heartbeat")
    # The Python worker is in the same stream.
    ev.wait_for("worker-heartbeat", hostname=PY_NODE)


def test_task_events_of_a_c_task(env):
    ev = env["events"]
    r = send(env, "tasks.c_add", [2, 40])
    assert r.get(timeout=30) == 42
    rec = ev.wait_for("task-received", uuid=r.id)[0]
    assert rec["name"] == "tasks.c_add"
    assert rec["args"] == "[2, 40]" and rec["kwargs"] == "{}"  # Celery's argsrepr
    assert rec["retries"] == 0 and rec["eta"] is None and rec["root_id"] == r.id
    ev.wait_for("task-started", uuid=r.id)
    ok = ev.wait_for("task-succeeded", uuid=r.id)[0]
    assert ok["result"] == "42" and isinstance(ok["runtime"], float)

    f = send(env, "tasks.c_fail")
    with pytest.raises(Exception):
        f.get(timeout=30)
    failed = ev.wait_for("task-failed", uuid=f.id)[0]
    assert failed["exception"] == "AnalysisError('model exploded')"
    assert "traceback" in failed

    rt = send(env, "tasks.c_retry_once")
    assert rt.get(timeout=30) == "second attempt"
    ev.wait_for("task-retried", uuid=rt.id)
    again = [e for e in ev.wait_for("task-received", uuid=rt.id) if e["retries"] == 1]
    deadline = time.monotonic() + 10
    while not again and time.monotonic() < deadline:
        time.sleep(0.1)
        again = [e for e in ev.of("task-received", uuid=rt.id) if e["retries"] == 1]
    assert again and again[0]["parent_id"] == rt.id


def test_heartbeats_keep_coming_while_the_pool_is_busy(env):
    """Both pool threads sleep for 5 s: the worker must not look dead."""
    ev = env["events"]
    busy = [send(env, "tasks.c_sleep", [5000, i]) for i in range(2)]
    time.sleep(0.5)
    start = time.time()
    time.sleep(5)
    beats = [e["local_received"] for e in ev.of("worker-heartbeat") if e["local_received"] >= start - 2.5]
    assert len(beats) >= 3, beats
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert max(gaps) < 3.0, gaps  # Flower's cutoff is freq * 2 = 4 s
    active = [e for e in ev.of("worker-heartbeat") if e["local_received"] >= start]
    assert any(e["active"] == 2 for e in active), [e["active"] for e in active]
    for r in busy:
        assert r.get(timeout=30) in (0, 1)


def test_celery_events_dump_shows_the_c_worker(env):
    dump = subprocess.Popen([PYTHON, "-m", "celery", "-b", env["broker"], "events", "--dump"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=INTEROP)
    try:
        time.sleep(2.0)
        r = send(env, "tasks.c_add", [1, 2])
        assert r.get(timeout=30) == 3
        time.sleep(3.0)
    finally:
        dump.terminate()
        out, _ = dump.communicate(timeout=20)
    assert f"{C_NODE} [" in out and "heartbeat: active=" in out, out
    assert "sw_ident=libaiqueue" in out, out
    assert f"task received: tasks.c_add({r.id}) args=[1, 2] kwargs={{}}" in out, out
    assert f"task succeeded: tasks.c_add({r.id})" in out and "result=3" in out, out
    assert "Traceback" not in out, out


def test_wire_form_is_celerys(env):
    """A C worker's heartbeat on the wire next to a Celery worker's, as
    captured from Celery 5.2.6 (tests/data/events/wire_heartbeat.json)."""
    import base64
    from urllib.parse import urlparse
    ref = json.load(open(os.path.join(ROOT, "tests", "data", "events", "wire_heartbeat.json")))
    u = urlparse(env["broker"])
    deadline = time.monotonic() + 15
    if env["kind"] == "amqp":
        import amqp
        conn = amqp.Connection(host=f"{u.hostname}:{u.port}", userid="guest", password="guest",
                               virtual_host="/")
        conn.connect()
        ch = conn.channel()
        # Celery's own declaration: a mismatch with ours would be 406 here.
        ch.exchange_declare("celeryev", "topic", durable=True, auto_delete=False)
        q, _, _ = ch.queue_declare("", exclusive=True)
        ch.queue_bind(q, "celeryev", "worker.heartbeat")
        got = None
        while got is None and time.monotonic() < deadline:
            m = ch.basic_get(q, no_ack=True)
            if m is None:
                time.sleep(0.1)
            elif m.properties.get("application_headers", {}).get("hostname") == C_NODE:
                got = m
        conn.close()
        assert got is not None
        want = dict(ref["amqp"]["properties"])
        want["application_headers"] = {"hostname": C_NODE}
        assert got.properties == want, got.properties
        assert got.delivery_info["exchange"] == "celeryev"
        assert got.delivery_info["routing_key"] == "worker.heartbeat"
        body = json.loads(got.body)
    else:
        import redis
        r = redis.Redis(host=u.hostname, port=u.port)
        ps = r.pubsub()
        channel = ref["redis"]["args"][0]  # "/6.celeryev/worker.heartbeat"
        assert channel.startswith(f"/{u.path.strip('/')}.")
        ps.psubscribe(channel)
        env_ = None
        while env_ is None and time.monotonic() < deadline:
            m = ps.get_message(timeout=0.5)
            if m and m["type"] == "pmessage":
                e = json.loads(m["data"])
                if e["headers"].get("hostname") == C_NODE:
                    env_ = e
        ps.close()
        assert env_ is not None
        want = ref["redis"]["envelope"]
        assert list(env_) == list(want)
        assert list(env_["properties"]) == list(want["properties"])
        for k in ("content-encoding", "content-type"):
            assert env_[k] == want[k]
        for k in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
            assert env_["properties"][k] == want["properties"][k], k
        body = json.loads(base64.b64decode(env_["body"]))
    celery_body = json.loads(ref["amqp"]["body"])
    assert list(body) == list(celery_body)
    assert body["type"] == "worker-heartbeat" and body["hostname"] == C_NODE


def sent_client(env, n, batch, on=True):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    c_env = dict(base, AIQUEUE_BROKER_URL=env["broker"],
                 AIQUEUE_RESULT_URL=env["app"].conf.result_backend, AIQUEUE_QUEUE="c",
                 AIQUEUE_CLIENT_SEND_SENT_EVENT="true" if on else "false")
    out = subprocess.run([SENT_CLIENT, "tasks.c_add", str(n), str(batch)], env=c_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_task_sent_from_a_c_client(env):
    """client.send_sent_event: a C client's task-sent, as Celery's producer sends it."""
    import socket
    ev = env["events"]
    got = sent_client(env, 1, 1)
    tid = got["ids"][0]
    sent = ev.wait_for("task-sent", hostname=None, uuid=tid)[0]
    assert sent["hostname"].startswith("gen") and sent["hostname"].endswith("@" + socket.gethostname())
    ref = json.load(open(os.path.join(ROOT, "tests", "data", "events", "events_by_type.json")))
    celery_sent = ref["task-sent"][0]
    # Celery's fields in Celery's order (the receiver adds local_received).
    assert [k for k in sent if k != "local_received"] == list(celery_sent), list(sent)
    assert sent["name"] == "tasks.c_add" and sent["args"] == "(0, 1)" and sent["kwargs"] == "{}"
    assert sent["root_id"] == tid and sent["parent_id"] is None
    assert sent["retries"] == 0 and sent["eta"] is None and sent["expires"] is None
    assert sent["queue"] == "c" and sent["exchange"] == "" and sent["routing_key"] == "c"
    assert isinstance(sent["pid"], int) and isinstance(sent["timestamp"], float)
    # The task still runs as usual, and the worker's events follow.
    ev.wait_for("task-succeeded", uuid=tid)


def test_task_sent_in_a_burst_and_in_batches(env):
    """Many enqueues, single and batched: every one has its task-sent, none twice."""
    ev = env["events"]
    ids = sent_client(env, 200, 1)["ids"] + sent_client(env, 200, 50)["ids"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen = {e["uuid"] for e in ev.of("task-sent", hostname=None)}
        if set(ids) <= seen:
            break
        time.sleep(0.2)
    missing = set(ids) - {e["uuid"] for e in ev.of("task-sent", hostname=None)}
    assert not missing, f"{len(missing)} of {len(ids)} task-sent events missing"
    counts = {}
    for e in ev.of("task-sent", hostname=None):
        counts[e["uuid"]] = counts.get(e["uuid"], 0) + 1
    assert all(counts[i] == 1 for i in ids)
    for i in ids[-3:]:
        ev.wait_for("task-succeeded", uuid=i, timeout=60)


def test_no_task_sent_when_off(env):
    ev = env["events"]
    ids = sent_client(env, 5, 1, on=False)["ids"]
    for i in ids:
        ev.wait_for("task-succeeded", uuid=i)
    assert not [e for e in ev.of("task-sent", hostname=None) if e["uuid"] in ids]


def test_celery_events_dump_shows_task_sent(env):
    dump = subprocess.Popen([PYTHON, "-m", "celery", "-b", env["broker"], "events", "--dump"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=INTEROP)
    try:
        time.sleep(2.0)
        tid = sent_client(env, 1, 1)["ids"][0]
        env["events"].wait_for("task-succeeded", uuid=tid)
        time.sleep(1.0)
    finally:
        dump.terminate()
        out, _ = dump.communicate(timeout=20)
    assert f"task sent: tasks.c_add({tid}) args=(0, 1) kwargs={{}}" in out, out
    assert "Traceback" not in out, out


def _dashboard_lists_every_worker_seen_through_events(env):
    """aiqueue-server's dashboard, fed by Celery events: the C worker and
    Python Celery workers, their heartbeat ages, a killed worker turning
    offline after two missed heartbeats (freq * 2), tasks other workers ran."""
    import select
    import signal
    import urllib.request
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    backend = env["app"].conf.result_backend
    srv = subprocess.Popen([SERVER, "--listen", "127.0.0.1:0", "-b", env["broker"],
                            "--backend", backend, "--queue", "dash"],
                           env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        if select.select([srv.stdout], [], [], 0.1)[0]:
            ch = os.read(srv.stdout.fileno(), 1)
            if not ch:
                break
            line += ch
    assert line.startswith(b"listening on http://"), (line, srv.poll())
    url = "http://127.0.0.1:%d/dashboard/state" % int(line.strip().rsplit(b":", 1)[1])

    def state():
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def wait(pred, what, timeout=20):
        end = time.monotonic() + timeout
        s = None
        while time.monotonic() < end:
            s = state()
            got = pred(s)
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"{what}: {json.dumps(s)[:3000]}")

    def worker(s, name):
        return next((w for w in s["workers"] if w["name"] == name), None)

    py2_node = "py2@evtest"
    py2 = subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "celeryapp", "worker", "-P", "threads", "-c", "1",
         "-Q", "py2", "-n", py2_node, "-E", "--without-mingle", "--without-gossip",
         "-l", "warning"],
        cwd=INTEROP, env=dict(base, INTEROP_BROKER=env["broker"], INTEROP_BACKEND=backend,
                              PYTHONPATH=INTEROP, PYTHONDONTWRITEBYTECODE="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Every worker of the cluster, C and Python, online, from their heartbeats.
        s = wait(lambda s: all(worker(s, n) and worker(s, n)["status"] == "online"
                               for n in (C_NODE, PY_NODE, py2_node)) and s, "all online", 40)
        c, py = worker(s, C_NODE), worker(s, PY_NODE)
        assert c["source"] == py["source"] == "events"
        assert c["sw_ident"] == "libaiqueue" and py["sw_ident"] == "py-celery"
        for w in (c, py):
            assert w["freq"] == 2.0 and 0 <= w["heartbeat_age_ms"] < 4000, w
            assert isinstance(w["running"], int) and isinstance(w["processed"], int)
        # Tasks other workers ran reach the tasks table, with their outcome.
        rc = send(env, "tasks.c_add", [20, 22])
        rp = env["app"].send_task("tasks.add", args=[1, 2], queue="py")
        assert rc.get(timeout=30) == 42 and rp.get(timeout=30) == 3

        def task(s, tid):
            return next((t for t in s["tasks"] if t["task_id"] == tid), None)
        s = wait(lambda s: (task(s, rc.id) or {}).get("state") == "SUCCESS" and
                 (task(s, rp.id) or {}).get("state") == "SUCCESS" and s, "tasks succeeded")
        tc, tp = task(s, rc.id), task(s, rp.id)
        # The result is the event's repr ("42") or the store's value (42),
        # whichever came first.
        assert tc["name"] == "tasks.c_add" and tc["worker"] == C_NODE and str(tc["result"]) == "42"
        assert tp["name"] == "tasks.add" and tp["worker"] == PY_NODE and str(tp["result"]) == "3"
        assert tc["final"] and tp["final"]
        # Each worker's own tally, from its task-succeeded events.
        wait(lambda s: worker(s, C_NODE)["succeeded"] >= 1 and
             worker(s, PY_NODE)["succeeded"] >= 1, "succeeded tallies")
        # The SSE stream carries the same workers.
        sport = int(line.strip().rsplit(b":", 1)[1])
        sock = socket_stream(sport)
        assert C_NODE.encode() in sock and py2_node.encode() in sock, sock[:2000]
        # Killed: no worker-offline; two missed heartbeats (4 s) make it offline.
        py2.send_signal(signal.SIGKILL)
        py2.wait(timeout=10)
        killed = time.monotonic()
        w = wait(lambda s: (worker(s, py2_node) or {}).get("status") == "offline"
                 and worker(s, py2_node), "py2 offline", 15)
        waited = time.monotonic() - killed
        assert 1.5 < waited < 8, waited  # 2 * freq after its last beat (at most 2 s old)
        assert w["heartbeat_age_ms"] >= 4000
        # The others stay online meanwhile.
        s = state()
        assert worker(s, C_NODE)["status"] == "online" and worker(s, PY_NODE)["status"] == "online"
    finally:
        if py2.poll() is None:
            py2.kill()
            py2.wait(timeout=10)
        srv.terminate()
        _, err = srv.communicate(timeout=30)
    assert srv.returncode == 0, err


def socket_stream(port, seconds=2.0):
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    s.sendall(b"GET /dashboard/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    data = b""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and b"event: snapshot" not in data.split(b"\r\n\r\n", 1)[-1]:
            s.settimeout(max(0.05, end - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        # the first snapshot in full
        while time.monotonic() < end and not data.rstrip(b"\r\n").endswith(b"}"):
            s.settimeout(max(0.05, end - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    return data


if SERVER:
    test_dashboard_lists_every_worker_seen_through_events = \
        _dashboard_lists_every_worker_seen_through_events


# ---- remote control -------------------------------------------------------------

def test_status_and_ping_from_both_workers(env):
    out = celery(env, "status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"->  {C_NODE}: OK" in out.stdout and f"->  {PY_NODE}: OK" in out.stdout, out.stdout
    assert "2 nodes online." in out.stdout, out.stdout
    got = celery_json(env, "inspect", "ping")
    assert got[C_NODE] == {"ok": "pong"} and got[PY_NODE] == {"ok": "pong"}
    # Destination filtering: only the named node answers.
    got = celery_json(env, "inspect", "ping", "-d", C_NODE)
    assert list(got) == [C_NODE]
    got = celery_json(env, "inspect", "ping", "-d", PY_NODE)
    assert list(got) == [PY_NODE]


def test_inspect_stats_registered_active_queues(env):
    stats = celery_json(env, "inspect", "stats")
    assert set(stats) == {C_NODE, PY_NODE}
    s = stats[C_NODE]
    assert isinstance(s["clock"], str) and int(s["clock"]) > 0
    assert s["pool"]["max-concurrency"] == 2 and s["prefetch_count"] >= 2
    assert s["total"].get("tasks.c_add", 0) >= 1 and "utime" in s["rusage"]
    assert "total" in stats[PY_NODE]  # Celery's own, beside ours

    reg = celery_json(env, "inspect", "registered")
    assert "tasks.c_add" in reg[C_NODE] and reg[C_NODE] == sorted(reg[C_NODE])
    assert "tasks.add" in reg[PY_NODE]

    aq = celery_json(env, "inspect", "active_queues")
    assert [q["name"] for q in aq[C_NODE]] == ["c"]
    assert aq[C_NODE][0]["exchange"]["type"] == "direct"
    assert [q["name"] for q in aq[PY_NODE]] == ["py"]
    text = celery(env, "inspect", "active_queues", "-d", C_NODE)
    assert "'name': 'c'" in text.stdout and "1 node online." in text.stdout, text.stdout

    clock = celery_json(env, "inspect", "clock", "-d", C_NODE)
    assert isinstance(clock[C_NODE]["clock"], int)


def test_inspect_active_lists_a_running_c_task(env):
    r = send(env, "tasks.c_sleep", [8000, 7])
    deadline = time.monotonic() + 10
    mine = []
    while time.monotonic() < deadline and not mine:
        act = celery_json(env, "inspect", "active")
        mine = [t for t in act.get(C_NODE, []) if t["id"] == r.id]
        assert PY_NODE in act
        time.sleep(0.2)
    assert mine, act
    t = mine[0]
    text = celery(env, "inspect", "active", "-d", C_NODE)
    assert f"'id': '{r.id}', 'name': 'tasks.c_sleep'" in text.stdout, text.stdout
    assert t["name"] == "tasks.c_sleep" and t["args"] == [8000, 7]
    assert t["hostname"] == C_NODE and isinstance(t["time_start"], float)
    assert t["delivery_info"]["routing_key"] == "c"
    assert r.get(timeout=30) == 7
    idle = celery(env, "inspect", "active", "-d", C_NODE)
    assert "- empty -" in idle.stdout, idle.stdout


def test_control_revoke_is_honoured_and_listed(env):
    import uuid
    ev = env["events"]
    tid = str(uuid.uuid4())
    out = celery(env, "control", "revoke", tid, "-j")
    assert out.returncode == 0, out.stdout + out.stderr
    replies = json.loads(out.stdout.strip().splitlines()[-1])
    merged = {k: v for d in replies for k, v in d.items()}
    assert merged[C_NODE] == {"ok": f"tasks {tid} flagged as revoked"}
    assert merged[PY_NODE] == {"ok": f"tasks {tid} flagged as revoked"}
    revoked = celery_json(env, "inspect", "revoked")
    assert tid in revoked[C_NODE] and tid in revoked[PY_NODE]

    # A task sent with that id afterwards is not run by the C worker.
    r = send(env, "tasks.c_add", [1, 1], task_id=tid)
    ev.wait_for("task-revoked", uuid=tid)
    deadline = time.monotonic() + 10
    while r.state != "REVOKED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.state == "REVOKED"
    assert not ev.of("task-succeeded", uuid=tid)

    # The API form: a string id, a cast (no reply).
    tid2 = str(uuid.uuid4())
    env["app"].control.revoke(tid2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if tid2 in celery_json(env, "inspect", "revoked", "-d", C_NODE)[C_NODE]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the string-form revoke was not recorded")


def test_a_starting_celery_worker_learns_our_revocations(env):
    """Mingle: a Celery worker starting with mingle sends `hello`; the C
    worker answers with its revoked ids, in the shape Celery takes."""
    import uuid
    tid = str(uuid.uuid4())
    env["app"].control.revoke(tid, destination=[C_NODE])  # only the C worker knows it
    deadline = time.monotonic() + 10
    while tid not in celery_json(env, "inspect", "revoked", "-d", C_NODE)[C_NODE]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    log = open(os.path.join(env["logdir"], "celery_mingle.log"), "w")
    py2 = subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "celeryapp", "worker", "-P", "threads", "-c", "1",
         "-Q", "py2", "-n", "py2@evtest", "--without-gossip", "-l", "info"],
        cwd=INTEROP, env=dict(base, INTEROP_BROKER=env["broker"],
                              INTEROP_BACKEND=env["app"].conf.result_backend,
                              PYTHONPATH=INTEROP, PYTHONDONTWRITEBYTECODE="1"),
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ping(env["broker"], ["py2@evtest"])
        got = celery_json(env, "inspect", "revoked", "-d", "py2@evtest")
        assert tid in got["py2@evtest"], open(os.path.join(env["logdir"], "celery_mingle.log")).read()
    finally:
        py2.terminate()
        py2.wait(timeout=30)
        log.close()


def test_control_revoke_terminate_of_a_running_c_task(env):
    ev = env["events"]
    r = send(env, "tasks.c_sleep", [3000, 1])
    ev.wait_for("task-started", uuid=r.id)
    out = celery(env, "control", "terminate", "SIGTERM", r.id, "-j")
    assert out.returncode == 0, out.stdout + out.stderr
    merged = {k: v for d in json.loads(out.stdout.strip().splitlines()[-1]) for k, v in d.items()}
    assert merged[C_NODE]["ok"].startswith(f"terminate: {r.id}"), merged
    assert merged[PY_NODE] == {"ok": "terminate: tasks unknown"}
    revoked = ev.wait_for("task-revoked", uuid=r.id)[0]
    assert revoked["expired"] is False
    assert r.state == "REVOKED"
    assert not ev.of("task-succeeded", uuid=r.id)


def test_add_and_cancel_consumer(env):
    """celery control add_consumer / cancel_consumer change what the C worker
    consumes while it runs; a task sent while the queue is not consumed waits
    in the broker, none is lost."""
    ctl = env["app"].control
    first = env["app"].send_task("tasks.c_add", args=[2, 3], kwargs={}, queue="c2")
    time.sleep(1.5)
    assert not first.ready()  # nobody consumes c2 yet
    assert ctl.add_consumer("c2", destination=[C_NODE], reply=True, timeout=5) == \
        [{C_NODE: {"ok": "add consumer c2"}}]
    assert first.get(timeout=20) == 5
    aq = celery_json(env, "inspect", "active_queues", "-d", C_NODE)
    assert sorted(q["name"] for q in aq[C_NODE]) == ["c", "c2"]
    # Twice is fine, as Celery answers it.
    again = ctl.add_consumer("c2", destination=[C_NODE], reply=True, timeout=5)
    assert list(again[0][C_NODE]) == ["ok"], again

    assert ctl.cancel_consumer("c2", destination=[C_NODE], reply=True, timeout=5) == \
        [{C_NODE: {"ok": "no longer consuming from c2"}}]
    aq = celery_json(env, "inspect", "active_queues", "-d", C_NODE)
    assert [q["name"] for q in aq[C_NODE]] == ["c"]
    second = env["app"].send_task("tasks.c_add", args=[4, 5], kwargs={}, queue="c2")
    time.sleep(2)
    assert not second.ready()  # c2 is not consumed any more
    # Consumed again: the waiting task runs, nothing was lost.
    ctl.add_consumer("c2", destination=[C_NODE], reply=True, timeout=5)
    assert second.get(timeout=20) == 9
    ctl.cancel_consumer("c2", destination=[C_NODE], reply=True, timeout=5)
    assert env["c"].poll() is None


def test_unknown_method_is_an_error_reply(env):
    replies = env["app"].control.broadcast("no_such_command", reply=True, timeout=2,
                                           destination=[C_NODE])
    assert replies == [{C_NODE: {"error": "KeyError('no_such_command')"}}]


def _aiqueue_worker_flags(env):
    """aiqueue-worker -E --remote-control: seen by status and by the event stream."""
    ev = env["events"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    p = subprocess.Popen([PROGRAM, "-b", env["broker"], "--backend", env["app"].conf.result_backend,
                          "-Q", "prog", "-c", "1", "-n", "prog@evtest", "-E", "--remote-control"],
                         env=base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ping(env["broker"], ["prog@evtest", C_NODE, PY_NODE])
        ev.wait_for("worker-online", hostname="prog@evtest")
        ev.wait_for("worker-heartbeat", hostname="prog@evtest")
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    ev.wait_for("worker-offline", hostname="prog@evtest")


if PROGRAM:
    test_aiqueue_worker_flags = _aiqueue_worker_flags


def test_shutdown_stops_the_c_worker_with_worker_offline(env):
    ev = env["events"]
    env["app"].control.shutdown(destination=[C_NODE])
    assert env["c"].wait(timeout=30) == 0, open(env["c_log"]).read()
    off = ev.wait_for("worker-offline")[0]
    assert off["processed"] >= 5
    # The Python worker is still there.
    got = celery_json(env, "inspect", "ping")
    assert list(got) == [PY_NODE]
