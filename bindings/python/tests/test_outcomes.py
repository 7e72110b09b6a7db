"""Failures, retries, progress and revocation."""
from __future__ import annotations

import threading
import time

import pytest

import aiqueue
from aiqueue import Task


class LyricsUnavailable(Exception):
    pass


def test_exception_becomes_failure_with_class_name(worker: aiqueue.Worker,
                                                   client: aiqueue.Client) -> None:
    @worker.task("tasks.boom")
    def boom(task: Task) -> None:
        raise LyricsUnavailable("track %s has no lyrics" % task.args[0])

    worker.register("tasks.div", lambda task: 1 / 0)
    worker.start()
    r = client.enqueue("tasks.boom", ("t-42",))
    with pytest.raises(aiqueue.TaskFailed) as e:
        r.get(timeout=5)
    assert e.value.exc_type == "LyricsUnavailable"
    assert e.value.exc_module == __name__
    assert e.value.exc_message == "track t-42 has no lyrics"
    assert r.state == aiqueue.FAILURE and r.failed()
    # propagate=False returns the exception, as Celery's .result does.
    assert isinstance(r.get(timeout=1, propagate=False), aiqueue.TaskFailed)
    assert isinstance(r.result, aiqueue.TaskFailed)
    res = r.wait(1)
    assert (res.error_type, res.error_module) == ("LyricsUnavailable", __name__)
    # The Python traceback is stored with the failure, as Celery stores it.
    assert res.traceback.startswith("Traceback (most recent call last):")
    assert "in boom" in res.traceback and "LyricsUnavailable" in res.traceback

    with pytest.raises(aiqueue.TaskFailed) as e:
        client.enqueue("tasks.div").get(timeout=5)
    assert (e.value.exc_type, e.value.exc_module) == ("ZeroDivisionError", "builtins")


def test_base_exceptions_never_reach_c(worker: aiqueue.Worker,
                                       client: aiqueue.Client) -> None:
    def exits(task: Task) -> None:
        raise SystemExit(3)

    def interrupts(task: Task) -> None:
        raise KeyboardInterrupt()

    worker.register("tasks.exit", exits)
    worker.register("tasks.interrupt", interrupts)
    worker.start()
    for name, exc_type in (("tasks.exit", "SystemExit"),
                           ("tasks.interrupt", "KeyboardInterrupt")):
        with pytest.raises(aiqueue.TaskFailed) as e:
            client.enqueue(name).get(timeout=5)
        assert e.value.exc_type == exc_type
    assert worker.running


def test_unserializable_return_fails(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    worker.register("tasks.obj", lambda task: object())
    worker.register("tasks.nan", lambda task: float("nan"))
    worker.start()
    with pytest.raises(aiqueue.TaskFailed) as e:
        client.enqueue("tasks.obj").get(timeout=5)
    assert e.value.exc_type == "TypeError"
    with pytest.raises(aiqueue.TaskFailed) as e:
        client.enqueue("tasks.nan").get(timeout=5)
    assert e.value.exc_type == "ValueError"


def test_retry_with_countdown(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    runs = []

    @worker.task("tasks.flaky")
    def flaky(task: Task) -> int:
        runs.append((task.retries, time.monotonic()))
        if task.retries < 2:
            task.retry(countdown=0.3, reason="model rate-limited")
        return task.retries

    worker.start()
    r = client.enqueue("tasks.flaky")
    assert r.get(timeout=10) == 2
    assert [n for n, _ in runs] == [0, 1, 2]
    gaps = [b - a for (_, a), (_, b) in zip(runs, runs[1:])]
    assert all(g >= 0.25 for g in gaps), gaps
    assert worker.counters()["retried"] == 2


def test_retry_state_is_visible(worker: aiqueue.Worker, client: aiqueue.Client,
                                wait_for) -> None:
    @worker.task("tasks.later")
    def later(task: Task) -> str:
        if task.retries == 0:
            task.retry(countdown=1.0, reason="not yet")
        return "now"

    worker.start()
    r = client.enqueue("tasks.later")
    res = wait_for(lambda: (lambda x: x if x.state == aiqueue.RETRY else None)(r.fetch()),
                   what="RETRY")
    assert res.error_message == "not yet"
    assert r.get(timeout=5) == "now"


def test_retries_exhausted(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    exhausted = []

    @worker.task("tasks.never")
    def never(task: Task) -> None:
        try:
            task.retry(countdown=0)
        except aiqueue.Retry as e:
            exhausted.append(e.exhausted)
            raise

    worker.start()
    with pytest.raises(aiqueue.TaskFailed) as e:
        client.enqueue("tasks.never", max_retries=1).get(timeout=10)
    assert e.value.exc_type == "MaxRetriesExceededError"
    assert exhausted == [False, True]


def test_progress_visible_from_client(worker: aiqueue.Worker, client: aiqueue.Client,
                                      wait_for) -> None:
    release = threading.Event()

    @worker.task("tasks.long")
    def long(task: Task) -> str:
        task.progress({"done": 3, "total": 10})
        release.wait(10)
        return "finished"

    worker.start()
    r = client.enqueue("tasks.long")
    try:
        wait_for(lambda: r.state == aiqueue.PROGRESS, what="PROGRESS")
        assert r.info == {"done": 3, "total": 10}
        assert not r.ready()
    finally:
        release.set()
    assert r.get(timeout=5) == "finished"


def test_progress_rejects_bad_meta(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    @worker.task("tasks.badmeta")
    def badmeta(task: Task) -> str:
        with pytest.raises(TypeError):
            task.progress({"x": object()})
        return "ok"

    worker.start()
    assert client.enqueue("tasks.badmeta").get(timeout=5) == "ok"


def test_revoke_running_task(worker: aiqueue.Worker, client: aiqueue.Client,
                             wait_for) -> None:
    started = threading.Event()
    saw_cancel = []

    @worker.task("tasks.spin")
    def spin(task: Task) -> str:
        started.set()
        deadline = time.monotonic() + 10
        while not task.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        saw_cancel.append(task.cancel_reason)
        return "stopped"

    worker.start()
    r = client.enqueue("tasks.spin")
    assert started.wait(5)
    r.revoke()
    with pytest.raises(aiqueue.TaskRevoked):
        r.get(timeout=5)
    assert r.state == aiqueue.REVOKED
    wait_for(lambda: saw_cancel, what="the handler to see the cancellation")
    assert saw_cancel == [aiqueue.errors.ECANCELED]


def test_revoke_before_run(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    ran = []
    worker.register("tasks.never_runs", lambda task: ran.append(1))
    worker.start()
    r = client.enqueue("tasks.never_runs", countdown=0.5)
    r.revoke()
    with pytest.raises(aiqueue.TaskRevoked):
        r.get(timeout=5)
    time.sleep(0.8)
    assert ran == []


def test_wait_timeout_raises(client: aiqueue.Client) -> None:
    # No worker: the task stays PENDING.
    r = client.enqueue("tasks.add", (1, 2))
    t0 = time.monotonic()
    with pytest.raises(aiqueue.Timeout) as e:
        r.get(timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 3
    assert e.value.state == aiqueue.PENDING
    assert isinstance(e.value, TimeoutError)
    assert e.value.code == aiqueue.errors.ETIMEDOUT
    assert r.state == aiqueue.PENDING and not r.ready()


def test_progress_after_revoke_raises_cancelled_quietly(
        worker: aiqueue.Worker, client: aiqueue.Client, wait_for, caplog) -> None:
    started = threading.Event()
    revoked = threading.Event()
    raised = []

    @worker.task("tasks.report")
    def report(task: Task) -> str:
        started.set()
        revoked.wait(10)
        try:
            task.progress({"step": 2})
        except BaseException as e:
            raised.append(e)
            raise
        return "not reached"

    caplog.set_level("DEBUG", logger="aiqueue")
    worker.start()
    r = client.enqueue("tasks.report")
    assert started.wait(5)
    r.revoke()
    revoked.set()
    wait_for(lambda: raised, what="progress() to raise")
    assert isinstance(raised[0], aiqueue.Cancelled), repr(raised[0])
    assert raised[0].code == aiqueue.errors.ECANCELED
    with pytest.raises(aiqueue.TaskRevoked):
        r.get(timeout=5)
    wait_for(lambda: worker.counters()["running"] == 0, what="the handler to end")
    assert r.state == aiqueue.REVOKED
    # Logged as an ordinary end, without a traceback or an error.
    records = [rec for rec in caplog.records if rec.name.startswith("aiqueue")]
    assert not [rec for rec in records if rec.levelno >= 30], records
    assert not [rec for rec in records if rec.exc_info], records
    assert any("stopped" in rec.getMessage() for rec in records)


def test_progress_after_own_retry_is_a_state_error(worker: aiqueue.Worker,
                                                   client: aiqueue.Client) -> None:
    seen = []

    @worker.task("tasks.retry_then_progress")
    def handler(task: Task) -> None:
        if task.retries:
            return None
        try:
            task.retry(countdown=0)
        except aiqueue.Retry:
            pass
        try:
            task.progress({"x": 1})
        except aiqueue.AiqError as e:
            seen.append(type(e))
        raise aiqueue.Retry("already recorded")

    worker.start()
    client.enqueue("tasks.retry_then_progress", max_retries=1).get(timeout=10)
    assert seen == [aiqueue.StateError]
