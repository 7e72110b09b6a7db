"""Client.enqueue_many: one call, one wait for the broker, per-task outcomes."""
from __future__ import annotations

from typing import Any, Dict

import pytest

import aiqueue
from aiqueue import Task


def test_enqueue_many_runs_every_task(worker: aiqueue.Worker,
                                      client: aiqueue.Client) -> None:
    worker.register("tasks.add", lambda task: task.args[0] + task.args[1]
                    + task.kwargs.get("extra", 0))
    worker.start()
    args = [(i, 1) for i in range(50)]
    kwargs = [{"extra": 100} if i % 2 else None for i in range(50)]
    results = client.enqueue_many("tasks.add", args, kwargs)
    assert len(results) == 50
    assert len({r.id for r in results}) == 50
    for i, r in enumerate(results):
        assert r.get(timeout=10) == i + 1 + (100 if i % 2 else 0)


def test_enqueue_many_edges(client: aiqueue.Client) -> None:
    assert client.enqueue_many("tasks.x", []) == []
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue_many("tasks.x", [(), ()], [{}])
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue_many("tasks.x", [(), ()], task_id="one-id")
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue_many("tasks.x", [()], contdown=3)
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue_many("tasks.x", [(object(),)])
    [one] = client.enqueue_many("tasks.x", [()], task_id="one-id", queue="other")
    assert one.id == "one-id"
    assert client.queue_depth("other") == 1


def test_enqueue_many_reports_each_failure(options: Dict[str, Any]) -> None:
    # One task is over message.max_bytes: it alone fails, the others are queued.
    with aiqueue.Client(dict(options, **{"message.max_bytes": 2048})) as client:
        args = [("small",), ("x" * 4096,), ("small too",)]
        with pytest.raises(aiqueue.BatchError) as info:
            client.enqueue_many("tasks.echo", args)
        err = info.value
        assert err.code == aiqueue.errors.ETOOBIG
        assert "1 of 3" in str(err)
        assert err.statuses == [0, aiqueue.errors.ETOOBIG, 0]
        assert err.results[1] is None
        assert isinstance(err.errors[1], aiqueue.TooBig)
        assert err.errors[0] is None and err.errors[2] is None
        assert [r.id for r in err.accepted] == [err.results[0].id, err.results[2].id]
        assert client.queue_depth() == 2

        # An invalid task name fails every task.
        with pytest.raises(aiqueue.BatchError) as info:
            client.enqueue_many("bad\nname", [(), ()])
        assert info.value.statuses == [aiqueue.errors.EINVAL] * 2
        assert info.value.accepted == []
