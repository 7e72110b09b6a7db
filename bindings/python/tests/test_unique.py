"""Unique jobs from Python: the existing task's handle says so."""
from __future__ import annotations

import threading

import pytest

import aiqueue


def test_second_enqueue_returns_existing(client: aiqueue.Client) -> None:
    a = client.enqueue("t.u", [1], {"x": 1}, unique=True, unique_ttl=60)
    b = client.enqueue("t.u", [1], {"x": 1}, unique=True, unique_ttl=60)
    c = client.enqueue("t.u", [2], unique=True, unique_ttl=60)
    assert not a.existing and b.existing and not c.existing
    assert a.id == b.id != c.id
    d = client.enqueue("t.u", [1], {"x": 1})  # not unique: always sent
    assert not d.existing and d.id != a.id
    assert client.queue_depth() == 3


def test_explicit_key_and_racing_threads(client: aiqueue.Client) -> None:
    got = []
    start = threading.Event()

    def go() -> None:
        start.wait()
        got.append(client.enqueue("t.u", [], unique="daily-7", unique_scope="running"))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    assert len({r.id for r in got}) == 1
    assert sum(not r.existing for r in got) == 1


def test_bad_unique_options(client: aiqueue.Client) -> None:
    with pytest.raises(ValueError):
        client.enqueue("t.u", unique=True, unique_scope="forever")
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue("t.u", unique="a\nb")
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue("t.u", unique=True, unique_ttl=0)
