"""The Celery-shaped layer: App, @app.task, .delay(), bound tasks, results."""
from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, Iterator

import pytest

import aiqueue
from aiqueue import App


class AppError(Exception):
    """A custom exception type: rebuilt by a client that has imported it."""


@pytest.fixture
def app(options: Dict[str, Any]) -> Iterator[App]:
    a = App("proj", broker=options["broker.url"], backend=options["result.url"])
    yield a
    a.close()


def test_bare_task_is_named_like_celery_and_callable(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == __name__ + ".add"
    assert add(2, 3) == 5
    assert add.__name__ == "add" and add.__doc__ is None
    assert app.tasks[add.name] is add


def test_main_module_tasks_use_the_app_name() -> None:
    assert aiqueue.gen_task_name("add", "__main__", "proj") == "proj.add"
    assert aiqueue.gen_task_name("add", "__main__", None) == "__main__.add"


def test_task_options_and_unknown_option(app: App) -> None:
    @app.task(name="t.opts", max_retries=7, queue="q1", soft_time_limit=2,
              time_limit=3, ignore_result=True)
    def f() -> None:
        pass

    assert (f.name, f.max_retries, f.queue, f.soft_time_limit) == ("t.opts", 7, "q1", 2)
    with pytest.raises(TypeError, match="colour"):
        app.task(colour="red")(lambda: None)
    with pytest.raises(TypeError, match="keyword"):
        app.task("t.positional")


def test_delay_runs_with_own_arguments(app: App) -> None:
    @app.task
    def add(x: int, y: int, z: int = 0) -> int:
        return x + y + z

    with app.Worker(concurrency=2).start_background():
        assert add.delay(2, 3).get(timeout=5) == 5
        r = add.apply_async((1, 2), {"z": 10}, countdown=0.05, task_id="fixed-" + uuid.uuid4().hex)
        assert r.id.startswith("fixed-")
        assert r.get(timeout=5) == 13
        assert r.successful() and r.ready() and not r.failed() and r.state == "SUCCESS"
        done = r.date_done
        assert isinstance(done, datetime.datetime) and done.tzinfo is not None
        assert abs((datetime.datetime.now(datetime.timezone.utc) - done).total_seconds()) < 60
        assert app.AsyncResult(r.id).result == 13


def test_bound_task_sees_request_and_retries(app: App) -> None:
    @app.task(bind=True, max_retries=5)
    def flaky(self: Any, n: int) -> Dict[str, Any]:
        if self.request.retries < n:
            raise self.retry(exc=ValueError("again"), countdown=0.01)
        return {"retries": self.request.retries, "id": self.request.id,
                "args": self.request.args, "eta": self.request.eta}

    with pytest.raises(TypeError, match="bound"):
        flaky(1)
    with app.Worker(concurrency=2).start_background():
        r = flaky.delay(2)
        out = r.get(timeout=10)
        assert out["retries"] == 2 and out["id"] == r.id and out["args"] == [2]
        assert out["eta"] is not None  # a retried task carries its ETA


def test_retry_exhausted_raises_original_exception(app: App) -> None:
    @app.task(bind=True, max_retries=1)
    def always(self: Any) -> None:
        raise self.retry(exc=KeyError("gone"), countdown=0.01)

    @app.task(bind=True, max_retries=0)
    def no_exc(self: Any) -> None:
        raise self.retry(countdown=0.01)

    with app.Worker(concurrency=2).start_background():
        with pytest.raises(KeyError):
            always.delay().get(timeout=10)
        with pytest.raises(aiqueue.MaxRetriesExceededError):
            no_exc.delay().get(timeout=10)


def test_autoretry_with_backoff(app: App) -> None:
    calls = []

    @app.task(autoretry_for=(ZeroDivisionError,), retry_backoff=0.01, retry_jitter=False,
              retry_backoff_max=0.05, max_retries=2)
    def div(x: int) -> float:
        calls.append(x)
        return 1 / x

    assert div._backoff(0) == 0.01 and div._backoff(10) == 0.05
    with app.Worker(concurrency=2).start_background():
        r = div.delay(0)
        with pytest.raises(ZeroDivisionError, match="division by zero"):
            r.get(timeout=10)
    assert len(calls) == 3  # the first run and two retries


def test_failure_types_are_rebuilt(app: App) -> None:
    @app.task
    def builtin() -> None:
        raise KeyError("k")

    @app.task
    def custom() -> None:
        raise AppError("mine")

    with app.Worker(concurrency=2).start_background():
        r = builtin.delay()
        with pytest.raises(KeyError) as e:
            r.get(timeout=5)
        assert e.value.args == ("k",)
        assert r.failed() and r.state == "FAILURE"
        assert "KeyError" in (r.traceback or "")
        assert isinstance(r.result, KeyError)
        assert isinstance(r.get(timeout=5, propagate=False), KeyError)
        with pytest.raises(AppError, match="mine"):
            custom.delay().get(timeout=5)


def test_unimportable_type_gets_a_typed_fallback() -> None:
    res = aiqueue.Result("t1", "FAILURE", None, "WeirdError", "odd", "no.such.module",
                         "tb", None, "{}")
    exc = aiqueue.rebuild_exception(res)
    assert type(exc).__name__ == "WeirdError"
    assert isinstance(exc, aiqueue.TaskFailed)
    assert (exc.exc_type, exc.exc_module, exc.exc_message) == ("WeirdError", "no.such.module",
                                                               "odd")
    assert type(aiqueue.rebuild_exception(res)) is type(exc)  # one class per type


def test_update_state_custom_state_meta(app: App) -> None:
    import threading
    go = threading.Event()

    @app.task(bind=True)
    def slow(self: Any) -> str:
        self.update_state(state="DOWNLOADING", meta={"done": 3})
        go.wait(5)
        return "ok"

    with app.Worker(concurrency=2).start_background():
        r = slow.delay()
        deadline = time.monotonic() + 5
        while r.info != {"done": 3} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.info == {"done": 3} and not r.ready()
        go.set()
        assert r.get(timeout=5) == "ok"


def test_revoke(app: App) -> None:
    @app.task
    def later() -> int:
        return 1

    r = later.apply_async(countdown=30)
    r.revoke(terminate=True)
    assert r.state == "REVOKED"
    with pytest.raises(aiqueue.TaskRevoked):
        r.get(timeout=1)


def test_revoke_of_a_finished_task_changes_nothing(app: App) -> None:
    @app.task
    def one() -> int:
        return 1

    with app.Worker(concurrency=1).start_background():
        r = one.delay()
        assert r.get(timeout=5) == 1
    r.revoke()  # Celery: revoking a finished task is not an error
    assert r.state == "SUCCESS" and r.get(timeout=1) == 1
    with pytest.raises(aiqueue.StateError, match="already finished as SUCCESS"):
        app.client.revoke(r.id)


def test_forget_deletes_the_result(app: App) -> None:
    @app.task
    def one() -> int:
        return 1

    with app.Worker(concurrency=1).start_background():
        r = one.delay()
        assert r.get(timeout=5) == 1
    assert r.state == "SUCCESS"
    r.forget()
    assert r.state == "PENDING" and r.result is None and not r.ready()
    assert app.AsyncResult(r.id).state == "PENDING"
    r.forget()  # nothing stored: not an error
    app.AsyncResult("never-" + uuid.uuid4().hex).forget()
    with pytest.raises(aiqueue.InvalidArgument):
        app.AsyncResult("bad\nid").forget()


def test_await_result(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def bad() -> None:
        raise ValueError("no")

    async def main() -> Any:
        ok = await add.delay(4, 5)
        with pytest.raises(ValueError):
            await bad.delay()
        return ok

    with app.Worker(concurrency=2).start_background():
        assert asyncio.run(main()) == 9


def test_env_fallback_celery_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "memory://env-" + uuid.uuid4().hex
    monkeypatch.setenv("CELERY_BROKER_URL", name)
    monkeypatch.delenv("AIQUEUE_BROKER_URL", raising=False)
    app = App("envapp")
    cfg = app.config()
    try:
        assert cfg["broker.url"] == name
    finally:
        cfg.close()
    app.conf.update(result_expires=120, task_default_queue="qq")
    cfg = app.config()
    try:
        assert cfg.get_int("result.expires_s") == 120 and cfg["queue"] == "qq"
    finally:
        cfg.close()


def test_cli_worker_runs_module_tasks(tmp_path: Any) -> None:
    url = "redis://127.0.0.1:1/0"  # never reached: the test checks start-up errors
    (tmp_path / "cliapp.py").write_text(
        "from aiqueue import App\napp = App('cliapp', broker=%r)\n"
        "@app.task\ndef add(x, y):\n    return x + y\n" % url)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(aiqueue.__file__)), str(tmp_path)]))
    bad = subprocess.run([sys.executable, "-m", "aiqueue", "worker", "-A", "nosuchmod"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "cannot import 'nosuchmod'" in bad.stderr
    (tmp_path / "noapp.py").write_text("x = 1\n")
    none = subprocess.run([sys.executable, "-m", "aiqueue", "worker", "-A", "noapp"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode != 0 and "no single aiqueue.App" in none.stderr


def test_cli_worker_serves_and_stops_on_sigterm(tmp_path: Any) -> None:
    import signal
    # memory:// is per process, so the worker and the client share it only
    # inside one process: run both through app.worker_main in a child.
    (tmp_path / "memapp.py").write_text(
        "import sys, threading\nfrom aiqueue import App\n"
        "app = App('memapp', broker='memory://cli', backend='memory://cli')\n"
        "@app.task\ndef add(x, y):\n    return x + y\n"
        "if __name__ == '__main__':\n"
        "    def client():\n"
        "        print(add.delay(2, 3).get(timeout=10), flush=True)\n"
        "    threading.Timer(0.5, client).start()\n"
        "    app.worker_main(['-c', '2', '-l', 'info'])\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(aiqueue.__file__)))
    p = subprocess.Popen([sys.executable, "memapp.py"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "5"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_autoretry_does_not_retry_a_revoked_task(app: App) -> None:
    import threading
    started = threading.Event()
    runs = []

    @app.task(bind=True, autoretry_for=(Exception,), max_retries=3,
              default_retry_delay=0.01)
    def long(self: Any) -> str:
        runs.append(self.request.retries)
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.update_state(meta={"tick": 1})  # raises Cancelled once revoked
            time.sleep(0.01)
        return "not revoked"

    w = app.Worker(concurrency=2)
    with w.start_background():
        r = long.delay()
        assert started.wait(5)
        r.revoke()
        with pytest.raises(aiqueue.TaskRevoked):
            r.get(timeout=10)
        time.sleep(0.3)  # a wrongly scheduled retry would run by now
        assert r.state == "REVOKED"
        counters = w.counters()
    assert runs == [0]
    assert counters["retried"] == 0, counters  # no retry scheduled for a revoked task
