"""Shared fixtures: every test gets its own named memory:// broker and store,
so tests never see each other's tasks."""
from __future__ import annotations

import os
import sys
import uuid
from typing import Any, Callable, Dict, Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the package, when PYTHONPATH is unset

import aiqueue  # noqa: E402


@pytest.fixture
def options() -> Dict[str, Any]:
    """Options naming a private in-process broker and store."""
    name = "memory://py-" + uuid.uuid4().hex
    return {"broker.url": name, "result.url": name, "worker.concurrency": 4}


@pytest.fixture
def worker(options: Dict[str, Any]) -> Iterator[aiqueue.Worker]:
    """A worker on the private broker; the test registers handlers, then starts it."""
    w = aiqueue.Worker(options)
    yield w
    w.close()


@pytest.fixture
def client(options: Dict[str, Any]) -> Iterator[aiqueue.Client]:
    with aiqueue.Client(options) as c:
        yield c


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """Poll ``predicate`` until it returns something truthy (or fail)."""
    import time

    def wait(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.01)
        pytest.fail("timed out waiting for %s" % what)

    return wait
