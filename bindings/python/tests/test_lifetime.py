"""Callbacks stay alive while the library holds them, and no longer."""
from __future__ import annotations

import gc
import weakref

import aiqueue
from aiqueue import _lib


class Handler:
    def __call__(self, *args: object) -> str:
        return "handled"


def test_destructor_releases_handlers(options: dict) -> None:
    before = _lib.held_count()
    w = aiqueue.Worker(options)
    handler = Handler()
    analyzer = Handler()
    events = Handler()
    refs = [weakref.ref(handler), weakref.ref(analyzer), weakref.ref(events)]
    w.register("tasks.h", handler)
    w.add_analyzer("custom", analyzer)
    w.on_event(events)
    del handler, analyzer, events
    gc.collect()
    # Only the library (through the registry) holds them now, and it must.
    assert all(r() is not None for r in refs)
    assert _lib.held_count() == before + 3

    w.start()
    with aiqueue.Client(options) as c:
        assert c.enqueue("tasks.h").get(timeout=5) == "handled"
    w.close()  # aiq_worker_free runs each destructor once
    gc.collect()
    assert all(r() is None for r in refs)
    assert _lib.held_count() == before


def test_replaced_event_callback_is_released(options: dict) -> None:
    with aiqueue.Worker(options) as w:
        first = Handler()
        ref = weakref.ref(first)
        w.on_event(first)
        del first
        w.on_event(Handler())  # replacing runs the old destructor
        gc.collect()
        assert ref() is None


def test_failed_registration_releases_at_once(options: dict) -> None:
    before = _lib.held_count()
    with aiqueue.Worker(options) as w:
        w.register("tasks.dup", Handler())
        dup = Handler()
        ref = weakref.ref(dup)
        try:
            w.register("tasks.dup", dup)
        except aiqueue.AlreadyExists:
            pass
        del dup
        gc.collect()
        assert ref() is None
        assert _lib.held_count() == before + 1
    assert _lib.held_count() == before


def test_client_completion_notifier_released(options: dict) -> None:
    before = _lib.held_count()
    c = aiqueue.Client(options)
    assert _lib.held_count() == before + 1
    c.close()
    assert _lib.held_count() == before


def test_unreferenced_objects_are_freed(options: dict) -> None:
    w = aiqueue.Worker(options)
    c = aiqueue.Client(options)
    refs = [weakref.ref(w), weakref.ref(c)]
    del w, c
    gc.collect()
    assert all(r() is None for r in refs)
