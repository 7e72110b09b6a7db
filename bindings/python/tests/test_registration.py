"""Registering handlers: names given, names generated the way Celery does,
and bad names refused at once rather than registering nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from typing import Any, Dict

import pytest

import aiqueue
from aiqueue import Task


def test_bare_decorator_registers_module_function(worker: aiqueue.Worker,
                                                  client: aiqueue.Client) -> None:
    @worker.task
    def add(task: Task) -> int:
        a, b = task.args
        return a + b

    # The decorator hands back the function itself, not a wrapper.
    assert callable(add) and add.__name__ == "add"
    worker.start()
    assert client.enqueue(__name__ + ".add", (2, 3)).get(timeout=5) == 5


def test_empty_call_registers_module_function(worker: aiqueue.Worker,
                                              client: aiqueue.Client) -> None:
    @worker.task()
    def mul(task: Task) -> int:
        a, b = task.args
        return a * b

    worker.start()
    assert client.enqueue(__name__ + ".mul", (4, 5)).get(timeout=5) == 20


def test_generated_name_is_taken(worker: aiqueue.Worker) -> None:
    @worker.task
    def twice(task: Task) -> None:
        pass

    # The name is really registered: registering it again is refused.
    with pytest.raises(aiqueue.AlreadyExists):
        worker.register(__name__ + ".twice", lambda task: None)


def test_generated_names_follow_celery(worker: aiqueue.Worker) -> None:
    mod = types.ModuleType("proj.tasks")
    sys.modules["proj.tasks"] = mod
    try:
        assert worker.gen_task_name("add", "proj.tasks") == "proj.tasks.add"
    finally:
        del sys.modules["proj.tasks"]
    # A module not imported keeps its given name, as in Celery.
    assert worker.gen_task_name("add", "not.imported") == "not.imported.add"
    assert worker.gen_task_name("add", "__main__") == "__main__.add"
    assert worker.gen_task_name("add", None) == "__main__.add"


def test_generated_names_match_celery_itself(options: Dict[str, Any]) -> None:
    import celery
    app = celery.Celery("proj")
    bare = celery.Celery()
    with aiqueue.Worker(options, main="proj") as w, aiqueue.Worker(options) as w2:
        for module in ("__main__", __name__, "os.path", "never.imported", ""):
            assert w.gen_task_name("add", module) == app.gen_task_name("add", module)
            assert w2.gen_task_name("add", module) == bare.gen_task_name("add", module)


def test_main_script_named_after_main(tmp_path: Any) -> None:
    # A handler in the script run as the main program: __main__.<name>, or
    # <main>.<name> when the worker has an application name.
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import uuid
        import aiqueue
        url = "memory://main-" + uuid.uuid4().hex
        opts = {"broker.url": url, "result.url": url}
        for main, expect in ((None, "__main__.hello"), ("proj", "proj.hello")):
            with aiqueue.Worker(opts, main=main) as w, aiqueue.Client(opts) as c:
                @w.task
                def hello(task):
                    return "hi"
                with w.start_background():
                    assert c.enqueue(expect).get(timeout=5) == "hi", expect
        print("named ok")
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(aiqueue.__file__)), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "named ok" in r.stdout


@pytest.mark.parametrize("bad", [42, b"tasks.add", ["tasks.add"], 1.5])
def test_task_with_non_string_name_raises(worker: aiqueue.Worker, bad: Any) -> None:
    with pytest.raises(TypeError, match="str"):
        worker.task(bad)
    with pytest.raises(TypeError, match="str"):
        worker.register(bad, lambda task: None)


def test_task_decorating_non_callable_raises(worker: aiqueue.Worker) -> None:
    with pytest.raises(TypeError, match="callable"):
        worker.task("tasks.x")(42)
    with pytest.raises(TypeError, match="callable"):
        worker.register("tasks.x", "not a function")


def test_worker_main_must_be_a_string(options: Dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        aiqueue.Worker(options, main=1)  # type: ignore[arg-type]


def test_bare_analyzer_decorator_raises(worker: aiqueue.Worker) -> None:
    with pytest.raises(TypeError, match="analyzer"):
        @worker.analyzer  # type: ignore[arg-type]
        def wordcount(task: Task, text: str, params: dict) -> dict:
            return {}
    with pytest.raises(TypeError):
        worker.add_analyzer(7, lambda task, text, params: {})  # type: ignore[arg-type]
