"""Celery's canvas over libaiqueue (include/aiqueue/canvas.h): signatures,
links, ``chain``, ``group`` and ``chord``, sent as Celery 5.2 protocol v2
messages so that Celery workers and libaiqueue workers carry them on.

    from aiqueue.canvas import chain, chord, group
    chain(add.s(1, 2), add.s(3), add.si(10, 0)).apply_async().get(timeout=10)
    chord([add.s(i, i) for i in range(10)], tsum.s()).apply_async().get(timeout=10)

See docs/workflows.md for what workers do with them.
"""
from __future__ import annotations

import ctypes
import json
from typing import Any, List, Mapping, Optional, Sequence

from . import _lib
from ._lib import lib
from .errors import check


class Signature:
    """A task call to be sent later (Celery ``Signature``)."""

    def __init__(self, task: str, args: Sequence[Any] = (),
                 kwargs: Optional[Mapping[str, Any]] = None, *, immutable: bool = False,
                 queue: Optional[str] = None, task_id: Optional[str] = None,
                 countdown: Optional[float] = None, app: Any = None) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable
        self.queue = queue
        self.task_id = task_id
        self.countdown = countdown
        self.app = app
        self.links: List["Signature"] = []
        self.errbacks: List["Signature"] = []

    def __repr__(self) -> str:
        return "%s(%s)" % (self.task, ", ".join([repr(a) for a in self.args] +
                                                 ["%s=%r" % kv for kv in self.kwargs.items()]))

    def set(self, *, queue: Optional[str] = None, task_id: Optional[str] = None,
            countdown: Optional[float] = None, immutable: Optional[bool] = None) -> "Signature":
        """Set options (Celery ``.set()``); returns the signature itself."""
        if queue is not None:
            self.queue = queue
        if task_id is not None:
            self.task_id = task_id
        if countdown is not None:
            self.countdown = countdown
        if immutable is not None:
            self.immutable = immutable
        return self

    def link(self, callback: "Signature") -> "Signature":
        """Send ``callback`` with this task's result when it succeeds."""
        self.links.append(callback)
        return callback

    def link_error(self, errback: "Signature") -> "Signature":
        """Send ``errback`` with this task's id when it fails."""
        self.errbacks.append(errback)
        return errback

    def __or__(self, other: Any) -> "chain":
        if isinstance(other, chain):
            return chain(self, *other.tasks)
        return chain(self, other)

    # -- the C signature ----------------------------------------------------

    def _build(self) -> ctypes.c_void_p:
        """A new aiq_signature for this one (the caller frees it)."""
        h = ctypes.c_void_p()
        check(lib.aiq_signature_new(ctypes.byref(h), _lib.enc(self.task)))
        try:
            check(lib.aiq_signature_set_args_json(h, _lib.enc(json.dumps(list(self.args)))))
            check(lib.aiq_signature_set_kwargs_json(h, _lib.enc(json.dumps(self.kwargs))))
            check(lib.aiq_signature_set_immutable(h, 1 if self.immutable else 0))
            if self.queue is not None:
                check(lib.aiq_signature_set_queue(h, _lib.enc(self.queue)))
            if self.task_id is not None:
                check(lib.aiq_signature_set_task_id(h, _lib.enc(self.task_id)))
            if self.countdown:
                check(lib.aiq_signature_set_countdown_ms(h, int(self.countdown * 1000)))
            for other, add in ((self.links, lib.aiq_signature_add_link),
                               (self.errbacks, lib.aiq_signature_add_link_error)):
                for s in other:
                    sub = s._build()
                    try:
                        check(add(h, sub))
                    finally:
                        lib.aiq_signature_free(sub)
        except BaseException:
            lib.aiq_signature_free(h)
            raise
        return h

    def to_dict(self) -> Any:
        """The signature as Celery writes it (``Signature.__json__()``)."""
        h = self._build()
        try:
            out = ctypes.c_void_p()
            check(lib.aiq_signature_to_json(ctypes.byref(out), h))
            return json.loads(_lib.take_string(out))
        finally:
            lib.aiq_signature_free(h)

    # -- sending ------------------------------------------------------------

    def apply_async(self, args: Sequence[Any] = (), kwargs: Optional[Mapping[str, Any]] = None,
                    client: Any = None) -> Any:
        """Send it (partial ``args`` go first unless immutable) and return its result."""
        sig = self._merged(args, kwargs)
        cl, wrap = _sender(client, self.app)
        h = sig._build()
        try:
            out = ctypes.c_void_p()
            check(lib.aiq_client_send_signature(ctypes.byref(out), cl.handle, h))
        finally:
            lib.aiq_signature_free(h)
        return wrap(_lib.take_string(out))

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def _merged(self, args: Sequence[Any], kwargs: Optional[Mapping[str, Any]]) -> "Signature":
        if self.immutable or (not args and not kwargs):
            return self
        s = Signature(self.task, tuple(args) + self.args, dict(self.kwargs, **(kwargs or {})),
                      queue=self.queue, task_id=self.task_id, countdown=self.countdown,
                      app=self.app)
        s.links, s.errbacks = list(self.links), list(self.errbacks)
        return s


def signature(task: str, args: Sequence[Any] = (), kwargs: Optional[Mapping[str, Any]] = None,
              **options: Any) -> Signature:
    """Celery's ``signature(name, args, kwargs, **options)``."""
    return Signature(task, args, kwargs, **options)


def _sender(client: Any, app: Any) -> Any:
    """(Client, id -> result handle) for an explicit client, or the app's."""
    if client is None and app is None:
        raise ValueError("no client: pass client=, or make signatures with a task's .s()")
    if client is None:
        return app.client, app.AsyncResult
    from .client import AsyncResult
    return client, lambda tid: AsyncResult(tid, client)


def _array(sigs: Sequence[Signature]) -> Any:
    handles = (ctypes.c_void_p * len(sigs))()
    try:
        for i, s in enumerate(sigs):
            handles[i] = s._build()
    except BaseException:
        _free(handles)
        raise
    return handles


def _free(handles: Any) -> None:
    for h in handles:
        if h:
            lib.aiq_signature_free(h)


def _take_ids(ids: Any) -> List[str]:
    return [_lib.take_string(ctypes.c_void_p(v)) for v in ids]


def _app_of(sigs: Sequence[Signature]) -> Any:
    return next((s.app for s in sigs if s.app is not None), None)


class chain:  # noqa: N801 (Celery's name)
    """Run the tasks one after the other, each given the result of the one before."""

    def __init__(self, *tasks: Signature) -> None:
        if len(tasks) == 1 and isinstance(tasks[0], (list, tuple)):
            tasks = tuple(tasks[0])
        self.tasks = list(tasks)

    def __or__(self, other: Any) -> "chain":
        return chain(*self.tasks, *(other.tasks if isinstance(other, chain) else [other]))

    def apply_async(self, client: Any = None) -> Any:
        """Send the chain; returns the last task's result (``.parents`` the others)."""
        n = len(self.tasks)
        if n == 0:
            raise ValueError("an empty chain")
        cl, wrap = _sender(client, _app_of(self.tasks))
        handles = _array(self.tasks)
        ids = (ctypes.c_void_p * n)()
        try:
            check(lib.aiq_client_send_chain(ids, cl.handle, handles, n))
        finally:
            _free(handles)
        results = [wrap(i) for i in _take_ids(ids)]
        last = results[-1]
        last.parents = results[:-1]
        return last

    delay = apply_async


class GroupResult:
    """The results of a group's members (Celery ``GroupResult``)."""

    def __init__(self, group_id: str, results: List[Any], client: Any = None) -> None:
        self.id = group_id
        self.results = results
        self.client = client

    def save(self) -> "GroupResult":
        """Save it as Celery's ``GroupResult.save()`` does (Redis store)."""
        ids = (ctypes.c_char_p * max(1, len(self.results)))(
            *[_lib.enc(r.id) for r in self.results])
        check(lib.aiq_client_save_group(self.client.handle, _lib.enc(self.id), ids,
                                        len(self.results)))
        return self

    @classmethod
    def restore(cls, group_id: str, app: Any = None, client: Any = None) -> "GroupResult":
        """A group saved by Celery or by :meth:`save` (Celery ``GroupResult.restore``)."""
        cl, wrap = _sender(client, app)
        out = ctypes.c_void_p()
        check(lib.aiq_client_restore_group(ctypes.byref(out), cl.handle, _lib.enc(group_id)))
        ids = json.loads(_lib.take_string(out))
        return cls(group_id, [wrap(i) for i in ids], cl)

    def __len__(self) -> int:
        return len(self.results)

    def get(self, timeout: Optional[float] = None) -> List[Any]:
        """Every member's value, in order (each waits up to ``timeout``)."""
        return [r.get(timeout=timeout) for r in self.results]

    join = get

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)


class group:  # noqa: N801 (Celery's name)
    """Run the tasks in parallel."""

    def __init__(self, *tasks: Signature) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Signature):
            tasks = tuple(tasks[0])
        self.tasks = list(tasks)

    def apply_async(self, client: Any = None) -> GroupResult:
        n = len(self.tasks)
        if n == 0:
            raise ValueError("an empty group")
        cl, wrap = _sender(client, _app_of(self.tasks))
        handles = _array(self.tasks)
        gid = ctypes.c_void_p()
        ids = (ctypes.c_void_p * n)()
        try:
            rc = lib.aiq_client_send_group(ctypes.byref(gid), ids, cl.handle, handles, n)
            sent = _take_ids(ids)
            check(rc)
        finally:
            _free(handles)
        return GroupResult(_lib.take_string(gid), [wrap(i) for i in sent], cl)

    delay = apply_async


class chord:  # noqa: N801 (Celery's name)
    """Run the header in parallel, then the body once with the list of results."""

    def __init__(self, header: Sequence[Signature], body: Optional[Signature] = None) -> None:
        self.header = list(header)
        self.body = body

    def __call__(self, body: Signature, client: Any = None) -> Any:
        self.body = body
        return self.apply_async(client=client)

    def apply_async(self, client: Any = None) -> Any:
        """Send the chord; returns the body's result (Redis result store only)."""
        n = len(self.header)
        if n == 0 or self.body is None:
            raise ValueError("a chord needs a header and a body")
        cl, wrap = _sender(client, _app_of(self.header + [self.body]))
        handles = _array(self.header)
        body = self.body._build()
        body_id = ctypes.c_void_p()
        ids = (ctypes.c_void_p * n)()
        try:
            rc = lib.aiq_client_send_chord(ctypes.byref(body_id), ids, cl.handle, handles, n,
                                           body)
            parts = _take_ids(ids)
            check(rc)
        finally:
            _free(handles)
            lib.aiq_signature_free(body)
        result = wrap(_lib.take_string(body_id))
        result.parents = [wrap(i) for i in parts]
        return result
