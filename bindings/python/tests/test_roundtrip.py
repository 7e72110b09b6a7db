"""Enqueue/consume round trips through Python handlers on memory://."""
from __future__ import annotations

import threading
import time

import pytest

import aiqueue
from aiqueue import Event, Task


def test_version_matches_package() -> None:
    assert aiqueue.version() == aiqueue.__version__


def test_add_round_trip(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    seen = {}

    @worker.task("tasks.add")
    def add(task: Task) -> int:
        seen.update(id=task.id, name=task.name, retries=task.retries,
                    kwargs=task.kwargs, queue=task.queue)
        a, b = task.args
        return a + b + task.kwargs.get("extra", 0)

    worker.start()
    r = client.enqueue("tasks.add", (2, 3), {"extra": 10})
    assert r.get(timeout=5) == 15
    assert r.state == aiqueue.SUCCESS
    assert r.ready() and r.successful() and not r.failed()
    assert r.result == 15
    assert seen == {"id": r.id, "name": "tasks.add", "retries": 0,
                    "kwargs": {"extra": 10}, "queue": "celery"}


def test_structured_values_survive_json(worker: aiqueue.Worker,
                                        client: aiqueue.Client) -> None:
    worker.register("tasks.echo", lambda task: {"args": task.args, "kw": task.kwargs})
    worker.start()
    payload = ([1, "два", {"x": [True, None, 2.5]}], {"k": "v"})
    r = client.enqueue("tasks.echo", *payload, task_id="fixed-id-1")
    assert r.id == "fixed-id-1"
    assert r.get(timeout=5) == {"args": payload[0], "kw": payload[1]}


def test_handlers_run_on_library_threads_while_main_waits(
        worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    # The main thread blocks inside aiq_client_wait; if ctypes kept the GIL,
    # the Python handler could never run and get() would time out.
    main = threading.get_ident()
    ran_on = []

    @worker.task("tasks.where")
    def where(task: Task) -> str:
        ran_on.append(threading.get_ident())
        time.sleep(0.1)
        return "done"

    worker.start()
    assert client.enqueue("tasks.where").get(timeout=5) == "done"
    assert ran_on and ran_on[0] != main
    assert ran_on[0] != worker._thread.ident  # a pool thread, not the consumer


def test_blocking_run_in_a_python_thread_leaves_main_free(
        options: dict, client: aiqueue.Client) -> None:
    w = aiqueue.Worker(options)
    w.register("tasks.noop", lambda task: None)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        # The main thread keeps executing Python while run() blocks in C.
        counter = 0
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            counter += 1
        assert counter > 1000
        assert client.enqueue("tasks.noop").get(timeout=5) is None
    finally:
        w.stop()
        t.join(5)
        assert not t.is_alive()
        w.close()


def test_many_tasks_concurrently(worker: aiqueue.Worker, client: aiqueue.Client,
                                 wait_for) -> None:
    worker.register("tasks.square", lambda task: task.args[0] ** 2)
    worker.start()
    results = [client.enqueue("tasks.square", (i,)) for i in range(200)]
    assert [r.get(timeout=10) for r in results] == [i * i for i in range(200)]
    # The counter moves just after the result is stored, so it may lag a little.
    wait_for(lambda: worker.counters()["succeeded"] == 200, what="200 successes")


def test_events(worker: aiqueue.Worker, client: aiqueue.Client, wait_for) -> None:
    events = []
    lock = threading.Lock()

    @worker.on_event
    def record(event, task_id, task_name, detail):
        with lock:
            events.append((event, task_id, task_name))

    worker.register("tasks.ok", lambda task: 1)
    worker.start()
    r = client.enqueue("tasks.ok")
    r.get(timeout=5)
    wait_for(lambda: any(e[0] == Event.SUCCEEDED for e in events), what="SUCCEEDED")
    kinds = [e[0] for e in events if e[1] == r.id]
    assert Event.RECEIVED in kinds and Event.STARTED in kinds
    assert all(e[2] == "tasks.ok" for e in events if e[1] == r.id)


def test_completion_listener(worker: aiqueue.Worker, client: aiqueue.Client,
                             wait_for) -> None:
    done = []
    client.on_complete(done.append)
    worker.register("tasks.ok", lambda task: "yes")
    worker.start()
    r = client.enqueue("tasks.ok")
    wait_for(lambda: done, what="completion callback")
    assert done[0].task_id == r.id and done[0].value == "yes"


def test_unknown_task_is_not_registered(worker: aiqueue.Worker,
                                        client: aiqueue.Client) -> None:
    worker.start()
    with pytest.raises(aiqueue.TaskFailed) as e:
        client.enqueue("tasks.nobody").get(timeout=5)
    assert e.value.exc_type == "NotRegistered"


def test_register_twice(worker: aiqueue.Worker) -> None:
    worker.register("tasks.one", lambda task: 1)
    with pytest.raises(aiqueue.AlreadyExists):
        worker.register("tasks.one", lambda task: 2)


def test_task_is_unusable_after_handler(worker: aiqueue.Worker,
                                        client: aiqueue.Client) -> None:
    kept = []
    worker.register("tasks.keep", lambda task: kept.append(task))
    worker.start()
    client.enqueue("tasks.keep").get(timeout=5)
    with pytest.raises(aiqueue.StateError):
        kept[0].id
