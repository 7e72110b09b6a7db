"""No task is lost when a worker is killed with SIGKILL or the broker
restarts in the middle of 2,000 tasks, nor when the worker is killed while
a fetched batch is partly stored and none of it acknowledged.

On every network broker this build has (CHAOS_BROKERS), with results in a
private redis-server. The worker is the interop suite's libaiqueue worker
(tasks.c_sleep [ms, i] -> i), the producer and checker is chaos_tool.
"""
import os
import signal
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVICES = os.path.join(ROOT, "scripts", "services")
TOOL = os.environ["CHAOS_TOOL"]
WORKER = os.environ["CHAOS_WORKER"]
BROKERS = [b for b in os.environ.get("CHAOS_BROKERS", "").split(",") if b]
N = 2000

if not BROKERS:
    raise SystemExit("CHAOS_BROKERS is empty: no broker driver to test")


def service(kind, cmd, tmp):
    subprocess.run(["bash", os.path.join(SERVICES, kind + ".sh"), cmd, tmp], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def port_of(tmp):
    with open(os.path.join(tmp, "port")) as f:
        return int(f.read().strip())


@pytest.fixture(params=BROKERS)
def env(request):
    kind = request.param
    made = []
    try:
        results = tempfile.mkdtemp(prefix="aiq-chaos-results-")
        service("redis", "start", results)
        made.append(("redis", results))
        if kind == "redis":
            broker_dir = tempfile.mkdtemp(prefix="aiq-chaos-broker-")
            service("redis", "start", broker_dir)
            made.append(("redis", broker_dir))
            broker = f"redis://127.0.0.1:{port_of(broker_dir)}/0"
        else:
            broker_dir = tempfile.mkdtemp(prefix="aiq-chaos-broker-")
            service("rabbitmq", "start", broker_dir)
            made.append(("rabbitmq", broker_dir))
            broker = f"amqp://guest:guest@127.0.0.1:{port_of(broker_dir)}//"
        e = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
        e.update(AIQUEUE_BROKER_URL=broker,
                 AIQUEUE_RESULT_URL=f"redis://127.0.0.1:{port_of(results)}/0",
                 AIQUEUE_QUEUE="chaos", AIQUEUE_WORKER_QUEUES="chaos",
                 AIQUEUE_WORKER_CONCURRENCY="4",
                 # a killed worker's Redis deliveries come back after this
                 AIQUEUE_REDIS_VISIBILITY_TIMEOUT_S="3")
        yield {"kind": kind, "env": e, "broker_dir": broker_dir,
               "results_port": port_of(results),
               "broker_kind": "redis" if kind == "redis" else "rabbitmq"}
    finally:
        for k, d in reversed(made):
            subprocess.run(["bash", os.path.join(SERVICES, k + ".sh"), "stop", d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_worker(env, log):
    return subprocess.Popen([WORKER], env=env["env"], stdout=log, stderr=subprocess.STDOUT)


def enqueue(env, path):
    with open(path, "w") as out:
        subprocess.run([TOOL, "enqueue", str(N), "5"], env=env["env"], stdout=out, check=True,
                       timeout=300)


def check(env, path, log_path):
    r = subprocess.run([TOOL, "check", path, "120000"], env=env["env"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr + open(log_path).read()[-3000:]
    assert r.stdout.strip() == f"ok {N}"


def test_kill9_worker_mid_run(env, tmp_path):
    ids = str(tmp_path / "ids")
    log_path = str(tmp_path / "worker.log")
    with open(log_path, "w") as log:
        enqueue(env, ids)
        first = start_worker(env, log)
        time.sleep(1.5)  # about a third done; four running, more prefetched
        assert first.poll() is None, "the worker died by itself"
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_worker(env, log)
        try:
            check(env, ids, log_path)
        finally:
            second.terminate()
            assert second.wait(timeout=30) == 0


def stored(env):
    """How many results the results server holds."""
    r = subprocess.run(["redis-cli", "-p", str(env["results_port"]), "dbsize"],
                       capture_output=True, text=True, check=True, timeout=30)
    return int(r.stdout.strip())


def broker_pid(env):
    name = "redis.pid" if env["broker_kind"] == "redis" else "pid"
    with open(os.path.join(env["broker_dir"], name)) as f:
        return int(f.read().strip())


def test_kill9_mid_batch(env, tmp_path):
    """The worker holds a fetched batch (prefetch 64); the broker is frozen
    (SIGSTOP), so nothing more is fetched or acknowledged while the pool
    keeps storing the batch's results in the (separate) results server;
    then SIGKILL. Every delivery of that batch is unacknowledged: those
    whose results were stored come back and must not end in a second or
    different result, the others must still run. Every task ends with
    exactly its own result."""
    ids = str(tmp_path / "ids")
    log_path = str(tmp_path / "worker.log")
    env["env"]["AIQUEUE_WORKER_PREFETCH"] = "64"
    with open(log_path, "w") as log:
        enqueue(env, ids)
        first = start_worker(env, log)
        deadline = time.monotonic() + 60
        while stored(env) < 200:  # running at full speed, batches in flight
            assert first.poll() is None, "the worker died by itself"
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.05)
        pid = broker_pid(env)
        os.kill(pid, signal.SIGSTOP)
        try:
            before = stored(env)
            time.sleep(1.0)  # the prefetched batch runs; its results are stored
            after = stored(env)
            assert first.poll() is None, "the worker died by itself"
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert before < after < N, (before, after)
        second = start_worker(env, log)
        try:
            check(env, ids, log_path)
            assert stored(env) == N  # one result per task, nothing else
        finally:
            second.terminate()
            assert second.wait(timeout=30) == 0


def test_broker_restart_mid_run(env, tmp_path):
    ids = str(tmp_path / "ids")
    log_path = str(tmp_path / "worker.log")
    with open(log_path, "w") as log:
        enqueue(env, ids)
        worker = start_worker(env, log)
        try:
            time.sleep(1.5)
            service(env["broker_kind"], "restart", env["broker_dir"])
            check(env, ids, log_path)
            assert worker.poll() is None, "the worker did not survive the restart"
        finally:
            worker.terminate()
            assert worker.wait(timeout=30) == 0
