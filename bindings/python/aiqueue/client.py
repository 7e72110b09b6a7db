"""Producer side: enqueue tasks, read, wait for, revoke and forget results."""
from __future__ import annotations

import asyncio
import ctypes
import datetime
import json
import logging
import threading
from dataclasses import dataclass
from typing import (Any, Callable, Dict, Generator, List, Mapping, Optional,
                    Sequence, Union)

from . import _lib
from ._lib import lib
from .config import Config, ConfigLike
from .errors import (ETIMEDOUT, BatchError, InvalidArgument, StateError,
                     TaskFailed, TaskRevoked, Timeout, Unsupported, check, error_for)

log = logging.getLogger("aiqueue")

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
PROGRESS = "PROGRESS"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
READY_STATES = frozenset((SUCCESS, FAILURE, REVOKED))
STATE_NUMBERS = {PENDING: 0, RECEIVED: 1, STARTED: 2, PROGRESS: 3, RETRY: 4, SUCCESS: 5,
                 FAILURE: 6, REVOKED: 7}
"""``enum aiq_state`` values by name (a test checks them against result.h)."""

# Keyword options of Client.enqueue, also accepted by enqueue_many.
_ENQUEUE_OPTIONS = frozenset((
    "task_id", "queue", "countdown", "eta", "expires", "priority", "max_retries",
    "soft_time_limit", "time_limit", "ignore_result"))

# A detached wait (see AsyncResult.wait_async) blocks in slices this long so
# that a cancelled coroutine frees its executor thread soon after.
_WAIT_SLICE_MS = 500


def _json_or_none(text: Optional[str]) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Result:
    """A snapshot of a task's stored outcome (a copy of an ``aiq_result``).

    Attributes:
        task_id: the task.
        state: Celery state name ("PENDING", "STARTED", "SUCCESS", ...).
        value: the decoded result JSON: the return value for SUCCESS, the
            progress meta for PROGRESS, the worker description for STARTED.
        error_type: exception type name for FAILURE/RETRY, else None.
        error_message: message for FAILURE/RETRY, else None.
        error_module: module of the exception type, else None.
        traceback: stored traceback text, else None.
        date_done: completion time (naive UTC ISO-8601) once done.
        meta_json: the whole record as Celery's result meta JSON.
    """

    task_id: str
    state: str
    value: Any
    error_type: Optional[str]
    error_message: Optional[str]
    error_module: Optional[str]
    traceback: Optional[str]
    date_done: Optional[str]
    meta_json: str

    @classmethod
    def from_handle(cls, r: int) -> "Result":
        """Copy a borrowed ``const aiq_result *``."""
        d = _lib.dec
        return cls(
            task_id=d(lib.aiq_result_task_id(r)) or "",
            state=d(lib.aiq_state_name(lib.aiq_result_state(r))) or "UNKNOWN",
            value=_json_or_none(d(lib.aiq_result_json(r))),
            error_type=d(lib.aiq_result_error_type(r)),
            error_message=d(lib.aiq_result_error_message(r)),
            error_module=d(lib.aiq_result_error_module(r)),
            traceback=d(lib.aiq_result_traceback(r)),
            date_done=d(lib.aiq_result_date_done(r)),
            meta_json=d(lib.aiq_result_meta_json(r)) or "",
        )

    @classmethod
    def take(cls, handle: ctypes.c_void_p) -> "Result":
        """Copy an owned ``aiq_result *`` and free it."""
        try:
            return cls.from_handle(handle.value or 0)
        finally:
            lib.aiq_result_free(handle)

    def ready(self) -> bool:
        """True for SUCCESS, FAILURE and REVOKED."""
        return self.state in READY_STATES

    def outcome(self, propagate: bool = True) -> Any:
        """The return value; with ``propagate``, raise for FAILURE/REVOKED.

        FAILURE raises :class:`~aiqueue.errors.TaskFailed`, REVOKED raises
        :class:`~aiqueue.errors.TaskRevoked`. Without ``propagate`` the
        exception is returned instead of raised.
        """
        exc: Optional[Exception] = None
        if self.state == FAILURE:
            exc = TaskFailed(self.task_id, self.error_type or "Exception",
                             self.error_message or "", self.error_module,
                             self.traceback)
        elif self.state == REVOKED:
            exc = TaskRevoked(self.task_id, self.error_message or "")
        if exc is None:
            return self.value
        if propagate:
            raise exc
        return exc


class _Notifier:
    """What the library holds as userdata for a client's completion callback.

    It is separate from the :class:`Client` so that the registry does not
    keep the client itself alive.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tracked: set = set()
        self.waiters: Dict[str, List[Callable[[Result], None]]] = {}
        self.listeners: List[Callable[[Result], None]] = []

    def dispatch(self, result: Result) -> None:
        with self.lock:
            self.tracked.discard(result.task_id)
            waiters = self.waiters.pop(result.task_id, [])
            listeners = list(self.listeners)
        for fn in waiters + listeners:
            try:
                fn(result)
            except Exception:
                log.exception("aiqueue completion callback failed")


def _on_complete(task_id: Optional[bytes], result: Optional[int],
                 userdata: Optional[int]) -> None:
    # Runs on the thread that stored the result (a worker pool thread for
    # memory://). It must be quick, must not call into the client, and must
    # never let an exception reach C.
    try:
        notifier = _lib.lookup(userdata)
        if notifier is not None and result:
            notifier.dispatch(Result.from_handle(result))
    except BaseException:
        log.exception("aiqueue completion trampoline failed")


_ON_COMPLETE = _lib.COMPLETION_FN(_on_complete)


def _ms(seconds: Optional[float], what: str) -> Optional[int]:
    if seconds is None:
        return None
    if isinstance(seconds, datetime.timedelta):
        seconds = seconds.total_seconds()
    if seconds < 0:
        raise InvalidArgument("%s must not be negative" % what)
    return int(round(seconds * 1000))


class Client:
    """A producer: one broker connection and one result-store connection.

    Calls on one client are serialized with a lock, so a client may be shared
    between threads, but a blocking :meth:`AsyncResult.get` holds it while it
    waits: give busy threads their own clients (they are cheap).

    Example::

        with Client({"broker.url": "memory://"}) as client:
            r = client.enqueue("tasks.add", (2, 3))
            print(r.get(timeout=5))

    Args:
        config: a :class:`Config`, a mapping of options, or None for defaults
            (``memory://``).
        notify: subscribe to completions (``aiq_client_on_complete``) so that
            ``wait_async`` on tasks enqueued through this client is woken by
            the store instead of occupying an executor thread. Silently off
            when the store cannot notify.
    """

    def __init__(self, config: ConfigLike = None, *, notify: bool = True) -> None:
        cfg = Config.coerce(config)
        # Kept for detached waits, which open short-lived clients of their own.
        self._config = cfg.copy()
        if cfg is not config:
            cfg.close()
        handle = ctypes.c_void_p()
        check(lib.aiq_client_new(ctypes.byref(handle), self._config.handle))
        self._h: Optional[int] = handle.value
        self._lock = threading.RLock()
        self._notifier: Optional[_Notifier] = None
        if notify:
            notifier = _Notifier()
            rc = lib.aiq_client_on_complete(self._h, _ON_COMPLETE,
                                            _lib.hold(notifier), _lib.release_cb)
            if rc == 0:
                self._notifier = notifier
            elif rc != Unsupported.code:
                self.close()
                check(rc)

    # -- handle -----------------------------------------------------------

    @property
    def handle(self) -> int:
        """The ``aiq_client *``; raises StateError once closed."""
        if not self._h:
            raise StateError("client is closed")
        return self._h

    @property
    def config(self) -> Config:
        """The client's own copy of its configuration (do not close it)."""
        return self._config

    def close(self) -> None:
        """Close the connections and free the client (idempotent).

        The completion callback's userdata is released by the library here.
        """
        with self._lock:
            h, self._h = self._h, None
        if h:
            lib.aiq_client_free(h)
        self._config.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # -- producing --------------------------------------------------------

    def enqueue(self, name: str, args: Sequence[Any] = (),
                kwargs: Optional[Mapping[str, Any]] = None, *,
                task_id: Optional[str] = None, queue: Optional[str] = None,
                countdown: Optional[float] = None,
                eta: Optional[datetime.datetime] = None,
                expires: Optional[float] = None,
                priority: Optional[int] = None,
                max_retries: Optional[int] = None,
                soft_time_limit: Optional[float] = None,
                time_limit: Optional[float] = None,
                ignore_result: bool = False,
                unique: Union[bool, str, None] = None,
                unique_ttl: float = 3600.0,
                unique_scope: str = "queued") -> "AsyncResult":
        """Enqueue one task (Celery protocol v2) and return its handle.

        Times are in seconds, as in Celery. ``args`` and ``kwargs`` must be
        JSON-serializable.

        Args:
            name: registered task name, e.g. "tasks.analyze_track".
            args: positional arguments.
            kwargs: keyword arguments.
            task_id: use this id instead of a fresh UUID.
            queue: send to this queue instead of the configured ``queue``.
            countdown: run no earlier than this many seconds from now.
            eta: run no earlier than this time (an aware datetime, or a naive
                one taken as UTC); overrides ``countdown``.
            expires: seconds after which a worker stores REVOKED instead.
            priority: 0-255.
            max_retries: overrides ``task.max_retries`` for this task.
            soft_time_limit: seconds; raises the task's cancellation flag.
            time_limit: seconds; ends the task FAILURE ``TimeLimitExceeded``.
            ignore_result: ask the worker not to store a result.
            unique: make it a unique job (docs/workflows.md): True derives
                the key from the name, args and kwargs; a string is the key.
                While the key is held nothing is sent and the handle is the
                existing task's, with ``existing`` True.
            unique_ttl: seconds the key may be held at most.
            unique_scope: "queued", "running" or "until_success".

        Raises:
            InvalidArgument, JSONError, TooBig, BrokerError, StoreError.
        """
        args_json = json.dumps(list(args))
        kwargs_json = json.dumps(dict(kwargs or {}))
        opts = ctypes.c_void_p()
        check(lib.aiq_enqueue_opts_new(ctypes.byref(opts)))
        try:
            self._fill_opts(opts, task_id, queue, countdown, eta, expires, priority,
                            max_retries, soft_time_limit, time_limit, ignore_result)
            if unique:
                scopes = {"queued": 1, "running": 2, "until_success": 3}
                if unique_scope not in scopes:
                    raise ValueError("unique_scope must be queued, running or until_success")
                check(lib.aiq_enqueue_opts_set_unique(
                    opts, None if unique is True else _lib.enc(str(unique)),
                    _ms(unique_ttl, "unique_ttl"), scopes[unique_scope]))
            out = ctypes.c_void_p()
            existing = ctypes.c_int(0)
            with self._lock:
                if self._notifier is not None and task_id is not None:
                    # A fixed id: track it before the task can possibly finish.
                    with self._notifier.lock:
                        self._notifier.tracked.add(task_id)
                rc = lib.aiq_client_enqueue_unique(ctypes.byref(out), ctypes.byref(existing),
                                                   self.handle, _lib.enc(name),
                                                   _lib.enc(args_json), _lib.enc(kwargs_json),
                                                   opts)
                check(rc)
            new_id = _lib.take_string(out)
        finally:
            lib.aiq_enqueue_opts_free(opts)
        if self._notifier is not None and task_id is None:
            with self._notifier.lock:
                self._notifier.tracked.add(new_id)
        handle = AsyncResult(new_id, self)
        handle.existing = bool(existing.value)
        return handle

    send_task = enqueue  # the Celery spelling

    def enqueue_many(self, name: str, args_list: Sequence[Sequence[Any]],
                     kwargs_list: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
                     **options: Any) -> List["AsyncResult"]:
        """Enqueue many tasks of one name with one wait for the broker.

        Every task is published, then the call waits once until the broker
        accepted (confirmed) or refused each one; much faster than calling
        :meth:`enqueue` in a loop on brokers with publisher confirms.

        Args:
            name: registered task name.
            args_list: one args sequence per task.
            kwargs_list: None, or one kwargs mapping (or None) per task, as
                long as ``args_list``.
            **options: as for :meth:`enqueue`, applied to every task;
                ``task_id`` is refused for more than one task.

        Returns:
            One :class:`AsyncResult` per task, in order, when every task was
            accepted.

        Raises:
            BatchError: when any task was not accepted (also when the library
                refused the whole call, e.g. an invalid task name: then every
                status is that code). Its ``results`` hold the AsyncResults of
                the accepted tasks (None for the others); ``statuses`` and
                ``errors`` say why each failed one did. Accepted tasks stay
                queued.
            InvalidArgument: lists of different lengths, a task id given for
                several tasks, an unknown or bad option, or values that are
                not JSON-serializable (nothing is sent).
        """
        n = len(args_list)
        if kwargs_list is not None and len(kwargs_list) != n:
            raise InvalidArgument("kwargs_list has %d entries for %d tasks"
                                  % (len(kwargs_list), n))
        if n == 0:
            return []
        try:
            args_c = (ctypes.c_char_p * n)(
                *[_lib.enc(json.dumps(list(a))) for a in args_list])
            kwargs_c = (ctypes.c_char_p * n)(
                *[_lib.enc(json.dumps(dict(k or {})))
                  for k in (kwargs_list if kwargs_list is not None else [None] * n)])
        except (TypeError, ValueError) as e:
            raise InvalidArgument("task arguments are not JSON-serializable: %s" % e)
        unknown = set(options) - _ENQUEUE_OPTIONS
        if unknown:
            raise InvalidArgument("unknown enqueue option(s): %s" % ", ".join(sorted(unknown)))
        task_id = options.get("task_id")
        if task_id is not None and n > 1:
            raise InvalidArgument("task_id cannot be given for %d tasks" % n)
        ids_c = (ctypes.c_void_p * n)()
        status_c = (ctypes.c_int * n)()
        opts = ctypes.c_void_p()
        check(lib.aiq_enqueue_opts_new(ctypes.byref(opts)))
        try:
            self._fill_opts(opts, task_id, options.get("queue"), options.get("countdown"),
                            options.get("eta"), options.get("expires"),
                            options.get("priority"), options.get("max_retries"),
                            options.get("soft_time_limit"), options.get("time_limit"),
                            bool(options.get("ignore_result", False)))
            with self._lock:
                if self._notifier is not None and task_id is not None:
                    with self._notifier.lock:
                        self._notifier.tracked.add(task_id)
                rc = lib.aiq_client_enqueue_batch(ids_c, status_c, self.handle,
                                                  _lib.enc(name), args_c, kwargs_c, n, opts)
                detail = _lib.dec(lib.aiq_error_last()) if rc < 0 else None
        finally:
            lib.aiq_enqueue_opts_free(opts)
        results: List[Optional[AsyncResult]] = []
        for i in range(n):
            new_id = _lib.take_string(ctypes.c_void_p(ids_c[i])) if ids_c[i] else None
            results.append(AsyncResult(new_id, self) if new_id else None)
        if self._notifier is not None:
            with self._notifier.lock:
                self._notifier.tracked.update(r.id for r in results if r is not None)
        statuses = list(status_c)
        if rc < 0:
            raise BatchError(detail or "some tasks were not accepted", code=rc,
                             results=results, statuses=statuses)
        return [r for r in results if r is not None]

    async def enqueue_async(self, name: str, args: Sequence[Any] = (),
                            kwargs: Optional[Mapping[str, Any]] = None,
                            **options: Any) -> "AsyncResult":
        """:meth:`enqueue` on the default executor (for brokers whose publish
        confirm takes a network round trip)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: self.enqueue(name, args, kwargs, **options))

    @staticmethod
    def _fill_opts(o: ctypes.c_void_p, task_id: Optional[str], queue: Optional[str],
                   countdown: Optional[float], eta: Optional[datetime.datetime],
                   expires: Optional[float], priority: Optional[int],
                   max_retries: Optional[int], soft: Optional[float],
                   hard: Optional[float], ignore_result: bool) -> None:
        if task_id is not None:
            check(lib.aiq_enqueue_opts_set_task_id(o, _lib.enc(task_id)))
        if queue is not None:
            check(lib.aiq_enqueue_opts_set_queue(o, _lib.enc(queue)))
        if countdown is not None:
            check(lib.aiq_enqueue_opts_set_countdown_ms(o, _ms(countdown, "countdown")))
        if eta is not None:
            if eta.tzinfo is None:
                eta = eta.replace(tzinfo=datetime.timezone.utc)
            check(lib.aiq_enqueue_opts_set_eta_ms(o, int(eta.timestamp() * 1000)))
        if expires is not None:
            check(lib.aiq_enqueue_opts_set_expires_ms(o, _ms(expires, "expires")))
        if priority is not None:
            check(lib.aiq_enqueue_opts_set_priority(o, priority))
        if max_retries is not None:
            check(lib.aiq_enqueue_opts_set_max_retries(o, max_retries))
        if soft is not None or hard is not None:
            check(lib.aiq_enqueue_opts_set_time_limits(
                o, _ms(soft, "soft_time_limit") or 0, _ms(hard, "time_limit") or 0))
        if ignore_result:
            check(lib.aiq_enqueue_opts_set_ignore_result(o, 1))

    # -- results ----------------------------------------------------------

    def result(self, task_id: str) -> "AsyncResult":
        """A handle on any task by id (Celery's ``AsyncResult(id)``)."""
        return AsyncResult(task_id, self)

    def get_result(self, task_id: str) -> Result:
        """The current stored state of a task, without waiting."""
        out = ctypes.c_void_p()
        with self._lock:
            check(lib.aiq_client_get_result(ctypes.byref(out), self.handle,
                                            _lib.enc(task_id)))
        return Result.take(out)

    def wait(self, task_id: str, timeout: Optional[float] = None) -> Result:
        """Block until the task is done; see :meth:`AsyncResult.get`.

        Raises:
            Timeout: with ``state`` set to the latest non-final state.
        """
        timeout_ms = -1 if timeout is None else _ms(timeout, "timeout")
        out = ctypes.c_void_p()
        with self._lock:
            rc = lib.aiq_client_wait(ctypes.byref(out), self.handle,
                                     _lib.enc(task_id), timeout_ms)
            detail = _lib.dec(lib.aiq_error_last()) if rc < 0 else None
        return _finish_wait(rc, out, detail)

    def revoke(self, task_id: str) -> None:
        """Revoke a task: it ends REVOKED (skipped, or its cancellation flag raised)."""
        with self._lock:
            check(lib.aiq_client_revoke(self.handle, _lib.enc(task_id)))

    def forget(self, task_id: str) -> None:
        """Delete a task's stored result, as Celery's ``AsyncResult.forget()``:
        afterwards its state reads PENDING. Nothing stored is not an error.
        The task itself is not revoked; a worker still running it stores
        its outcome anew.

        Raises:
            Unsupported: the result store cannot delete results.
            StoreError: the store failed.
        """
        with self._lock:
            check(lib.aiq_client_forget(self.handle, _lib.enc(task_id)))

    def on_complete(self, fn: Callable[[Result], None]) -> None:
        """Call ``fn(result)`` when a task enqueued through this client finishes.

        ``fn`` runs on a library thread (for memory:// the worker thread that
        stored the result) with the GIL held: keep it quick and do not call
        this client from it. To hand the result to an event loop, use
        ``loop.call_soon_threadsafe``.

        Raises:
            Unsupported: the client was made with ``notify=False`` or the
                store cannot notify.
        """
        if self._notifier is None:
            raise Unsupported("completion notifications are off for this client")
        with self._notifier.lock:
            self._notifier.listeners.append(fn)

    # -- operations -------------------------------------------------------

    def ping(self) -> None:
        """Check that the broker and the store answer (raises BrokerError/StoreError)."""
        with self._lock:
            check(lib.aiq_client_ping(self.handle))

    def queue_depth(self, queue: Optional[str] = None) -> int:
        """Ready messages in ``queue`` (default: the configured one)."""
        n = ctypes.c_uint64()
        with self._lock:
            check(lib.aiq_client_queue_depth(ctypes.byref(n), self.handle, _lib.enc(queue)))
        return n.value

    def purge(self, queue: Optional[str] = None) -> int:
        """Remove every ready message from ``queue``; returns how many."""
        n = ctypes.c_uint64()
        with self._lock:
            check(lib.aiq_client_purge(ctypes.byref(n), self.handle, _lib.enc(queue)))
        return n.value

    # -- asyncio support --------------------------------------------------

    def _notified_future(self, task_id: str,
                         loop: asyncio.AbstractEventLoop) -> Optional["asyncio.Future[Result]"]:
        """A future resolved by the completion callback, or None when this
        client cannot be told about ``task_id``."""
        notifier = self._notifier
        if notifier is None:
            return None
        fut: "asyncio.Future[Result]" = loop.create_future()

        def deliver(result: Result) -> None:
            def settle() -> None:
                if not fut.done():
                    fut.set_result(result)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop is closed: nobody is waiting
                pass

        with notifier.lock:
            if task_id not in notifier.tracked:
                return None
            notifier.waiters.setdefault(task_id, []).append(deliver)
        return fut

    def _forget_waiters(self, task_id: str) -> None:
        if self._notifier is not None:
            with self._notifier.lock:
                self._notifier.waiters.pop(task_id, None)

    def _wait_detached(self, task_id: str, timeout: Optional[float],
                       cancelled: threading.Event) -> Result:
        """Wait on a short-lived client of its own, so that the shared client
        stays free; gives up early once ``cancelled`` is set."""
        handle = ctypes.c_void_p()
        check(lib.aiq_client_new(ctypes.byref(handle), self._config.handle))
        try:
            deadline = None if timeout is None else _ms(timeout, "timeout")
            waited = 0
            while True:
                step = _WAIT_SLICE_MS if deadline is None else min(_WAIT_SLICE_MS,
                                                                     deadline - waited)
                out = ctypes.c_void_p()
                rc = lib.aiq_client_wait(ctypes.byref(out), handle, _lib.enc(task_id),
                                         max(step, 0))
                detail = _lib.dec(lib.aiq_error_last()) if rc < 0 else None
                waited += step
                if rc != ETIMEDOUT or cancelled.is_set() or (
                        deadline is not None and waited >= deadline):
                    return _finish_wait(rc, out, detail)
                lib.aiq_result_free(out)
        finally:
            lib.aiq_client_free(handle)


def _finish_wait(rc: int, out: ctypes.c_void_p, detail: Optional[str]) -> Result:
    """Turn an aiq_client_wait status and result into a Result or an exception."""
    if rc == 0:
        return Result.take(out)
    state = None
    if out.value:
        state = Result.take(out).state
    err = error_for(rc, detail)
    if isinstance(err, Timeout):
        err.state = state
    raise err


class AsyncResult:
    """A handle on one task's result, as returned by :meth:`Client.enqueue`.

    It reads the store through the client that made it, so the client must
    stay open while it is used. ``await async_result`` is the same as
    ``await async_result.wait_async()``.
    """

    def __init__(self, task_id: str, client: Client) -> None:
        self.id = task_id
        self.client = client
        #: True when :meth:`Client.enqueue` with ``unique`` found the key
        #: held and returned that existing task instead of sending one.
        self.existing = False

    def __repr__(self) -> str:
        return "<AsyncResult %s>" % self.id

    def fetch(self) -> Result:
        """The current stored :class:`Result` (no waiting)."""
        return self.client.get_result(self.id)

    @property
    def state(self) -> str:
        """Current Celery state name ("PENDING", "PROGRESS", "SUCCESS", ...)."""
        return self.fetch().state

    status = state

    @property
    def result(self) -> Any:
        """As in Celery: the return value once SUCCESS, the exception
        (TaskFailed/TaskRevoked) once FAILURE/REVOKED, the progress meta while
        PROGRESS, else whatever the store holds (usually None)."""
        return self.fetch().outcome(propagate=False)

    info = result

    def ready(self) -> bool:
        """True once the task is SUCCESS, FAILURE or REVOKED."""
        return self.fetch().ready()

    def successful(self) -> bool:
        """True once the task is SUCCESS."""
        return self.state == SUCCESS

    def failed(self) -> bool:
        """True once the task is FAILURE."""
        return self.state == FAILURE

    def revoke(self) -> None:
        """Revoke the task (see :meth:`Client.revoke`)."""
        self.client.revoke(self.id)

    def forget(self) -> None:
        """Delete the task's stored result (see :meth:`Client.forget`)."""
        self.client.forget(self.id)

    def get(self, timeout: Optional[float] = None, propagate: bool = True) -> Any:
        """Wait for the task and return its value.

        Args:
            timeout: seconds to wait; None waits forever.
            propagate: raise TaskFailed / TaskRevoked for FAILURE / REVOKED
                (otherwise the exception is returned).

        Raises:
            Timeout: the task was not done in time (``Timeout.state`` is the
                latest state seen). The task itself goes on.
        """
        return self.client.wait(self.id, timeout).outcome(propagate)

    def wait(self, timeout: Optional[float] = None) -> Result:
        """Wait for the task and return its final :class:`Result` (no raising
        for FAILURE/REVOKED; raises Timeout)."""
        return self.client.wait(self.id, timeout)

    async def wait_async(self, timeout: Optional[float] = None,
                         propagate: bool = True) -> Any:
        """Like :meth:`get`, without blocking the event loop.

        For a task enqueued through a client with notifications on (the
        default, for stores that can notify), the store's completion callback
        wakes the loop through ``call_soon_threadsafe``: no thread is
        occupied while waiting. Otherwise the wait runs on the loop's default
        executor, on a short-lived client of its own, and stops soon after the
        coroutine is cancelled.

        Raises:
            Timeout: as :meth:`get`.
        """
        loop = asyncio.get_running_loop()
        fut = self.client._notified_future(self.id, loop)
        if fut is None:
            cancelled = threading.Event()
            try:
                result = await loop.run_in_executor(
                    None, self.client._wait_detached, self.id, timeout, cancelled)
            finally:
                cancelled.set()
            return result.outcome(propagate)
        try:
            # The task may have finished before the waiter was registered.
            now = await loop.run_in_executor(None, self.client.get_result, self.id)
            if now.ready():
                return now.outcome(propagate)
            try:
                result = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                err = Timeout("task %s not done after %ss" % (self.id, timeout))
                err.state = (await loop.run_in_executor(
                    None, self.client.get_result, self.id)).state
                raise err from None
            return result.outcome(propagate)
        finally:
            if not fut.done():
                self.client._forget_waiters(self.id)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.wait_async().__await__()


__all__ = ["Client", "AsyncResult", "Result", "PENDING", "RECEIVED", "STARTED", "PROGRESS",
           "RETRY", "SUCCESS", "FAILURE", "REVOKED", "READY_STATES", "STATE_NUMBERS"]
