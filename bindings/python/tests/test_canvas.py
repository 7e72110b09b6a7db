"""aiqueue.canvas: Celery-style signatures, links, chain, group and chord
over the C library, run by a worker on memory:// (whose result store joins
chords in the process)."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List

import pytest

import aiqueue
from aiqueue import App
from aiqueue.canvas import GroupResult, Signature, chain, chord, group, signature


@pytest.fixture
def app(options: Dict[str, Any]) -> Iterator[App]:
    a = App("proj", broker=options["broker.url"], backend=options["result.url"])
    yield a
    a.close()


def test_signature_is_celerys_json(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    s = add.s(1).set(queue="q", task_id="t-1")
    s.link(add.si(5, 5))
    assert s.to_dict() == {
        "task": add.name, "args": [1], "kwargs": {}, "immutable": False,
        "subtask_type": None,
        "options": {"queue": "q", "task_id": "t-1",
                    "link": [{"task": add.name, "args": [5, 5], "kwargs": {}, "options": {},
                              "subtask_type": None, "immutable": True}]}}
    assert signature("x.y", (1,), {"k": 2}).to_dict()["kwargs"] == {"k": 2}
    with pytest.raises(aiqueue.InvalidArgument):
        Signature("").to_dict()
    with pytest.raises(ValueError):
        Signature("x").apply_async()  # no app, no client


def test_chain_group_and_links(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def echo(*args: Any) -> List[Any]:
        return list(args)

    @app.task
    def boom() -> None:
        raise RuntimeError("boom")

    with app.Worker(concurrency=4).start_background():
        r = chain(add.s(1, 2), add.s(3), add.si(100, 0), add.s(4)).apply_async()
        assert r.get(timeout=10) == 104
        assert [p.get(timeout=10) for p in r.parents] == [3, 6, 100]
        assert (add.s(1, 1) | add.s(1)).apply_async().get(timeout=10) == 3

        g = group(add.s(i, i) for i in range(8)).apply_async()
        assert isinstance(g, GroupResult) and len(g) == 8 and len(g.id) == 36
        assert g.get(timeout=10) == [2 * i for i in range(8)]
        with pytest.raises(aiqueue.Unsupported, match="cannot save group"):
            g.save()  # memory:// keeps no group results (Redis does)

        s = add.s(2, 3)
        cb = s.link(echo.s("cb").set(task_id="cb-" + g.id))
        assert s.apply_async().get(timeout=10) == 5
        assert app.AsyncResult(cb.task_id).get(timeout=10) == [5, "cb"]

        f = boom.s()
        eb = f.link_error(echo.s().set(task_id="eb-" + g.id))
        failed = f.apply_async()
        with pytest.raises(Exception):
            failed.get(timeout=10)
        assert app.AsyncResult(eb.task_id).get(timeout=10) == [failed.id]

        assert add.s(1).delay(9).get(timeout=10) == 10  # partial args go first


def test_chord_on_memory(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def total(values: List[int]) -> int:
        return sum(values)

    with app.Worker(concurrency=4).start_background():
        r = chord([add.s(i, i) for i in range(10)])(total.s())
        assert r.get(timeout=10) == 90
