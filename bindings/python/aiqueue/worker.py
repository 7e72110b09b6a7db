"""Consumer side: Python task handlers and analyzers run by a libaiqueue worker.

Threads and the GIL
-------------------
The library runs handlers on its own pool threads (``worker.concurrency`` of
them). ctypes callbacks take the GIL when the library calls them, so a Python
handler runs like code on any other Python thread: handlers interleave at
bytecode boundaries, and run truly in parallel only while they are inside
calls that release the GIL (I/O, ``time.sleep``, numpy, calls back into the
library). ``aiq_worker_run`` blocks the thread that calls it, but ctypes
releases the GIL for the duration of the call, so the rest of the program
keeps running.

A Python exception never crosses into C: the trampolines catch everything
and report it as the task's FAILURE.
"""
from __future__ import annotations

import atexit
import ctypes
import enum
import json
import logging
import sys
import threading
import traceback
import weakref
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, TypeVar

from . import _lib
from ._lib import lib
from .config import Config, ConfigLike
from .errors import (ECANCELED, ELIMIT, ESTATE, AiqError, Cancelled, Retry,
                     StateError, check, error_for)

log = logging.getLogger("aiqueue.worker")

F = TypeVar("F", bound=Callable[..., Any])
TaskHandler = Callable[["Task"], Any]
AnalyzerFn = Callable[["Task", str, Dict[str, Any]], Any]
EventHandler = Callable[["Event", Optional[str], Optional[str], Optional[str]], None]


COUNTERS: Dict[str, int] = {"succeeded": 0, "failed": 1, "retried": 2, "revoked": 3,
                             "dead_lettered": 4, "running": 5, "broker_reconnects": 6,
                             "last_heartbeat_ms": 7}
"""``AIQ_COUNTER_*`` values by the name :meth:`Worker.counters` uses."""


class Event(enum.IntEnum):
    """Worker events (``enum aiq_event``), the equivalent of Celery's task signals."""
    RECEIVED = 1
    STARTED = 2
    SUCCEEDED = 3
    FAILED = 4
    RETRIED = 5
    REVOKED = 6
    REJECTED = 7


class Task:
    """A task as its handler sees it (wraps the borrowed ``aiq_task *``).

    Valid only during the handler call and only on the thread running it
    (except :attr:`cancelled`). A handler reports its outcome by returning a
    JSON-serializable value (SUCCESS), raising an exception (FAILURE, typed
    with the exception's class name and module), or calling :meth:`retry`.
    """

    __slots__ = ("_h", "_args", "_kwargs", "_retried")

    def __init__(self, handle: int) -> None:
        self._h: Optional[int] = handle
        self._args: Optional[List[Any]] = None
        self._kwargs: Optional[Dict[str, Any]] = None
        self._retried = False

    @property
    def handle(self) -> int:
        """The borrowed ``aiq_task *``; raises StateError after the handler returned."""
        if not self._h:
            raise StateError("the task is only valid while its handler runs")
        return self._h

    @property
    def id(self) -> str:
        """Task id (UUID text)."""
        return _lib.dec(lib.aiq_task_id(self.handle)) or ""

    @property
    def name(self) -> str:
        """Registered task name."""
        return _lib.dec(lib.aiq_task_name(self.handle)) or ""

    @property
    def queue(self) -> str:
        """Queue the task came from."""
        return _lib.dec(lib.aiq_task_queue(self.handle)) or ""

    @property
    def args(self) -> List[Any]:
        """Positional arguments, decoded from JSON."""
        if self._args is None:
            self._args = json.loads(_lib.dec(lib.aiq_task_args_json(self.handle)) or "[]")
        return self._args

    @property
    def kwargs(self) -> Dict[str, Any]:
        """Keyword arguments, decoded from JSON."""
        if self._kwargs is None:
            self._kwargs = json.loads(
                _lib.dec(lib.aiq_task_kwargs_json(self.handle)) or "{}")
        return self._kwargs

    @property
    def retries(self) -> int:
        """How many times the task was retried before this run (0 on the first)."""
        return lib.aiq_task_retries(self.handle)

    @property
    def eta_ms(self) -> int:
        """ETA as UNIX milliseconds, 0 when none."""
        return lib.aiq_task_eta_ms(self.handle)

    @property
    def cancelled(self) -> bool:
        """True once the handler is asked to stop (soft time limit, revoked,
        worker aborted): poll it between steps and return soon after."""
        return self.cancel_reason != 0

    @property
    def cancel_reason(self) -> int:
        """0, or ``errors.ETIMEDOUT`` (soft time limit) / ``errors.ECANCELED``."""
        h = self._h
        return lib.aiq_task_cancelled(h) if h else ECANCELED

    def progress(self, meta: Mapping[str, Any]) -> None:
        """Store a PROGRESS state with ``meta`` (a JSON-serializable mapping) now.

        Raises:
            Cancelled: the task's state is final already (it was revoked, or
                another delivery of it finished): stop working on it. Let it
                propagate; the worker ends the run quietly (no FAILURE, no
                traceback in the log).
            TypeError / ValueError: ``meta`` is not JSON-serializable.
            InvalidArgument, StoreError.
        """
        h = self.handle
        rc = lib.aiq_task_progress(h, _lib.enc(json.dumps(dict(meta))))
        # While the handler runs, no outcome is reported yet (retry() ends the
        # run), so AIQ_ESTATE here means the store holds a final state and
        # refuses PROGRESS over it: a revocation, seen before (or without)
        # the worker's revocation check raising the cancel flag.
        if rc == ESTATE and not self._retried:
            detail = _lib.dec(lib.aiq_error_last()) or ""
            raise Cancelled("task %s was revoked or is already finished%s"
                            % (self.id, ": " + detail if detail else ""))
        check(rc)

    def retry(self, countdown: Optional[float] = None,
              reason: Optional[str] = None) -> NoReturn:
        """Run the task again later, and end this run by raising :class:`Retry`.

        Args:
            countdown: seconds before the next run; None uses the configured
                exponential backoff with full jitter.
            reason: message stored with the RETRY state.

        Raises:
            Retry: always; let it propagate. When the task's retries are used
                up, ``Retry.exhausted`` is True and the task ends FAILURE
                ``MaxRetriesExceededError``.
        """
        ms = -1 if countdown is None else int(round(countdown * 1000))
        rc = lib.aiq_task_retry(self.handle, ms, _lib.enc(reason))
        self._retried = rc >= 0 or rc == ELIMIT
        if rc == ELIMIT:
            raise Retry(reason or "max retries exceeded", exhausted=True)
        check(rc)
        raise Retry(reason or "retry requested")

    def __repr__(self) -> str:
        if not self._h:
            return "<aiqueue.Task (finished)>"
        return "<aiqueue.Task %s %s>" % (self.name, self.id)


# --- trampolines ---------------------------------------------------------
#
# One module-level C entry point per callback kind; userdata is a registry
# token naming the Python callable (see _lib.hold). The library calls them on
# its own threads; ctypes takes the GIL for each call.

def _report_exception(task_p: int, exc: BaseException) -> None:
    cls = type(exc)
    log.error("task %s raised %s: %s",
              _lib.dec(lib.aiq_task_id(task_p)), cls.__name__, exc, exc_info=exc)
    tb = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    lib.aiq_task_set_traceback(task_p, _lib.enc(tb))
    lib.aiq_task_fail(task_p, _lib.enc(cls.__name__), _lib.enc(_exc_message(exc)),
                      _lib.enc(cls.__module__))


def _exc_message(exc: BaseException) -> str:
    # The one argument of the usual exception, not str(): str(KeyError("k"))
    # is "'k'", which a client would rebuild as KeyError("'k'").
    args = getattr(exc, "args", ())
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return str(exc)


def _report_value(task_p: int, value: Any) -> None:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        _report_exception(task_p, type(e)("result is not JSON-serializable: %s" % e))
        return
    rc = lib.aiq_task_succeed(task_p, _lib.enc(text))
    if rc < 0:
        _report_exception(task_p, error_for(rc, _lib.dec(lib.aiq_error_last())))


def _invoke(task_p: int, userdata: Optional[int],
            call: Callable[[Any, Task], Any]) -> None:
    task = Task(task_p)
    try:
        fn = _lib.lookup(userdata)
        if fn is None:
            raise StateError("the handler was released")
        _report_value(task_p, call(fn, task))
    except Retry:
        pass  # already recorded by Task.retry
    except Cancelled as e:
        # The handler stopped because the task was revoked (or the worker
        # aborts): an expected end, not an error. The worker does not store
        # this outcome over REVOKED, and an aborted task goes back to the
        # broker; the FAILURE below only covers a handler that raised
        # Cancelled on its own.
        log.info("task %s stopped: %s", _lib.dec(lib.aiq_task_id(task_p)), e)
        lib.aiq_task_fail(task_p, _lib.enc(type(e).__name__), _lib.enc(str(e)),
                          _lib.enc(type(e).__module__))
    except BaseException as e:  # nothing may propagate into C
        try:
            _report_exception(task_p, e)
        except BaseException:
            lib.aiq_task_fail(task_p, b"Exception", b"handler failed", None)
    finally:
        task._h = None


def _task_entry(task_p: Optional[int], userdata: Optional[int]) -> None:
    try:
        _invoke(task_p or 0, userdata, lambda fn, task: fn(task))
    except BaseException:  # pragma: no cover - last line of defence
        pass


def _analyzer_entry(task_p: Optional[int], text: Optional[bytes],
                    params_json: Optional[bytes], userdata: Optional[int]) -> None:
    try:
        def call(fn: Any, task: Task) -> Any:
            params = json.loads(_lib.dec(params_json) or "{}")
            return fn(task, _lib.dec(text) or "", params)
        _invoke(task_p or 0, userdata, call)
    except BaseException:  # pragma: no cover - last line of defence
        pass


def _event_entry(event: int, task_id: Optional[bytes], task_name: Optional[bytes],
                 detail: Optional[bytes], userdata: Optional[int]) -> None:
    try:
        fn = _lib.lookup(userdata)
        if fn is not None:
            try:
                kind: Any = Event(event)
            except ValueError:
                kind = event
            fn(kind, _lib.dec(task_id), _lib.dec(task_name), _lib.dec(detail))
    except BaseException:
        try:
            log.exception("aiqueue event callback failed")
        except BaseException:
            pass


_TASK_ENTRY = _lib.TASK_FN(_task_entry)
_ANALYZER_ENTRY = _lib.ANALYZER_FN(_analyzer_entry)
_EVENT_ENTRY = _lib.EVENT_FN(_event_entry)

# Workers still running at interpreter exit are stopped and joined before the
# interpreter goes away, so no library thread calls into a dead interpreter.
_live: "weakref.WeakSet[Worker]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for w in list(_live):
        try:
            w.close()
        except Exception:
            pass


def gen_task_name(name: str, module: Optional[str], main: Optional[str] = None) -> str:
    """Celery's automatic task name (``celery.utils.imports.gen_task_name``).

    The function's module and name joined by a dot (``tasks.add`` for
    ``add`` in ``tasks.py``); a function in the script run as the main
    program is named ``main.add`` when an application name ``main`` is
    given, else ``__main__.add``.
    """
    module = module or "__main__"
    mod = sys.modules.get(module)
    if mod is not None:
        module = mod.__name__
    if module == "__main__" and main:
        return main + "." + name
    return ".".join(p for p in (module, name) if p)


class Worker:
    """A worker: consumes the configured queues and runs registered handlers.

    Example::

        worker = Worker({"broker.url": "memory://", "worker.concurrency": 4})

        @worker.task("tasks.add")
        def add(task):
            a, b = task.args
            return a + b

        with worker.start_background():
            ...  # enqueue from a Client
        # leaving the block stops the worker, waits for it and frees it

    The built-in task ``tasks.analyze_track`` and the ``lyrics`` analyzer
    are registered already. Registration must happen before the worker runs.
    """

    def __init__(self, config: ConfigLike = None, *, main: Optional[str] = None) -> None:
        """Create a worker from ``config`` (a :class:`Config`, a mapping or None).

        Args:
            main: the application name used for handlers defined in the
                script run as ``__main__`` when :meth:`task` names them
                (Celery's ``Celery(main)``); None keeps ``__main__``.
        """
        if main is not None and not isinstance(main, str):
            raise TypeError("main must be a str, not %s" % type(main).__name__)
        self.main = main
        cfg = Config.coerce(config)
        try:
            handle = ctypes.c_void_p()
            check(lib.aiq_worker_new(ctypes.byref(handle), cfg.handle))
        finally:
            if cfg is not config:
                cfg.close()
        self._h: Optional[int] = handle.value
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[AiqError] = None
        self._lock = threading.Lock()
        _live.add(self)

    @property
    def handle(self) -> int:
        """The ``aiq_worker *``; raises StateError once closed."""
        if not self._h:
            raise StateError("worker is closed")
        return self._h

    # -- registration -----------------------------------------------------

    def register(self, name: str, fn: TaskHandler) -> None:
        """Register ``fn(task)`` for the task name ``name``.

        The library keeps ``fn`` alive until the worker is freed (then its
        destructor releases it). ``fn`` runs on pool threads, several at once.

        Raises:
            TypeError: ``name`` is not a str or ``fn`` is not callable.
            AlreadyExists, StateError (worker running), InvalidArgument.
        """
        if not isinstance(name, str):
            raise TypeError("task name must be a str, not %s" % type(name).__name__)
        if not callable(fn):
            raise TypeError("task handler must be callable, not %s" % type(fn).__name__)
        check(lib.aiq_worker_register(self.handle, _lib.enc(name), _TASK_ENTRY,
                                      _lib.hold(fn), _lib.release_cb))

    def gen_task_name(self, name: str, module: Optional[str]) -> str:
        """The name :meth:`task` gives a handler registered without one.

        Celery's rule (``celery.utils.imports.gen_task_name``): the
        function's module and name joined by a dot, e.g. ``tasks.add`` for
        ``add`` in ``tasks.py``; a function in the script run as the main
        program is named after :attr:`main` when it is set
        (``Worker(cfg, main="proj")`` gives ``proj.add``), else
        ``__main__.add``, as Celery does without an app name.
        """
        return gen_task_name(name, module, self.main)

    def task(self, name: Any = None) -> Any:
        """Decorator form of :meth:`register`.

        ``@worker.task("tasks.add")`` registers under that name;
        ``@worker.task`` and ``@worker.task()`` register under the name
        Celery would give the function (``module.function``, see
        :meth:`gen_task_name`), so a Celery producer calling the same
        function by its automatic name reaches it.

        Raises:
            TypeError: ``name`` is neither a str, None nor the function.
        """
        if callable(name) and not isinstance(name, str):
            fn = name
            self.register(self.gen_task_name(fn.__name__, fn.__module__), fn)
            return fn
        if name is not None and not isinstance(name, str):
            raise TypeError("task name must be a str, not %s" % type(name).__name__)

        def deco(fn: F) -> F:
            if not callable(fn):
                raise TypeError("@task must decorate a callable, not %s"
                                % type(fn).__name__)
            self.register(name if name is not None
                          else self.gen_task_name(fn.__name__, fn.__module__), fn)
            return fn
        return deco

    def add_analyzer(self, name: str, fn: AnalyzerFn) -> None:
        """Register ``fn(task, text, params) -> dict`` as the analyzer ``name``.

        The built-in task ``tasks.analyze_track`` runs it when its
        ``analyzer`` keyword names it; the returned value is stored under
        ``analysis``. A name such as "lyrics" replaces the built-in one.
        """
        if not isinstance(name, str):
            raise TypeError("analyzer name must be a str, not %s" % type(name).__name__)
        if not callable(fn):
            raise TypeError("analyzer must be callable, not %s" % type(fn).__name__)
        check(lib.aiq_worker_add_analyzer(self.handle, _lib.enc(name), _ANALYZER_ENTRY,
                                          _lib.hold(fn), _lib.release_cb))

    def analyzer(self, name: str) -> Callable[[F], F]:
        """Decorator form of :meth:`add_analyzer`: ``@worker.analyzer("wordcount")``.

        Raises:
            TypeError: ``name`` is not a str (a bare ``@worker.analyzer``).
        """
        if not isinstance(name, str):
            raise TypeError("analyzer name must be a str, not %s (write "
                            "@worker.analyzer(\"name\"))" % type(name).__name__)

        def deco(fn: F) -> F:
            self.add_analyzer(name, fn)
            return fn
        return deco

    def on_event(self, fn: EventHandler) -> EventHandler:
        """Call ``fn(event, task_id, task_name, detail)`` for worker events.

        Runs on worker threads (the consumer thread for RECEIVED/REJECTED,
        pool threads otherwise); keep it quick. One callback per worker;
        registering again replaces it. Usable as a decorator.
        """
        check(lib.aiq_worker_on_event(self.handle, _EVENT_ENTRY, _lib.hold(fn),
                                      _lib.release_cb))
        return fn

    # -- running ----------------------------------------------------------

    def _run_blocking(self) -> None:
        h = self.handle
        rc = lib.aiq_worker_run(h)  # blocks; the GIL is released meanwhile
        if rc < 0 and rc != ECANCELED:
            detail = _lib.dec(lib.aiq_worker_error(h)) or _lib.dec(lib.aiq_error_last())
            self._result = error_for(rc, detail)

    def start(self) -> threading.Thread:
        """Run the worker on a background (daemon) thread and return it.

        Raises:
            StateError: already running.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise StateError("worker is already running")
            self._result = None
            self._thread = threading.Thread(target=self._run_blocking,
                                            name="aiqueue-worker", daemon=True)
            self._thread.start()
            return self._thread

    def start_background(self) -> "Worker":
        """:meth:`start`, returning the worker for ``with worker.start_background():``."""
        self.start()
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the background run to end.

        Returns:
            True when it ended (or never started), False on timeout.

        Raises:
            BrokerError / StoreError: the run failed (detail from
                ``aiq_worker_error``).
        """
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                return False
        err, self._result = self._result, None
        if err is not None:
            raise err
        return True

    def run(self) -> None:
        """Process tasks until :meth:`stop` (or Ctrl-C) — blocks.

        On the main thread the library loop runs on a helper thread while
        this one waits, so Python's signal handling keeps working: the first
        KeyboardInterrupt stops gracefully (in-flight tasks finish), a second
        one aborts (they are handed back to the broker).
        """
        if threading.current_thread() is not threading.main_thread():
            self._run_blocking()
            self.join()
            return
        self.start()
        stops = 0
        while True:
            try:
                if self.join(0.2):
                    return
            except KeyboardInterrupt:
                stops += 1
                self.stop(abort=stops > 1)

    def stop(self, abort: bool = False) -> None:
        """Ask the worker to stop: gracefully, or with ``abort`` at once
        (in-flight tasks go back to the broker unacknowledged). Thread-safe;
        calling it before the worker runs makes the next run return at once."""
        h = self.handle
        lib.aiq_worker_stop(h)
        if abort:
            lib.aiq_worker_stop(h)

    @property
    def running(self) -> bool:
        """True while a background run is in progress."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> str:
        """Detail of the last error on the worker's own threads ("" when none)."""
        return _lib.dec(lib.aiq_worker_error(self.handle)) or ""

    def counters(self) -> Dict[str, int]:
        """Counters since the worker started (names: :data:`COUNTERS`)."""
        return {n: lib.aiq_worker_counter(self.handle, i) for n, i in COUNTERS.items()}

    def load_plugin(self, path: str) -> None:
        """Load an analyzer plugin (a shared object with ``aiq_plugin_register``),
        before the worker runs.

        Raises:
            NotFound: no such file, or an entry point is missing.
            ABIError: built for another plugin ABI.
            InvalidArgument: not a loadable shared object. StateError: running.
        """
        if not isinstance(path, str):
            raise TypeError("plugin path must be a str, not %s" % type(path).__name__)
        check(lib.aiq_worker_load_plugin(self.handle, _lib.enc(path)))

    def close(self) -> None:
        """Stop a background run, wait for it, and free the worker (idempotent).

        Freeing waits for handler threads still running, then the library
        calls every registration's destructor, which releases the Python
        callables.
        """
        h = self._h
        if not h:
            return
        if self.running:
            lib.aiq_worker_stop(h)
            t = self._thread
            if t is not None:
                t.join()
        self._h = None
        self._thread = None
        _live.discard(self)
        lib.aiq_worker_free(h)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def analyze_lyrics(text: str, params: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Run the built-in lyrics analyzer directly, without a queue."""
    out = ctypes.c_void_p()
    check(lib.aiq_lyrics_analyze(ctypes.byref(out), _lib.enc(text),
                                 _lib.enc(json.dumps(dict(params)) if params else None)))
    result: Dict[str, Any] = json.loads(_lib.take_string(out))
    return result


__all__ = ["Worker", "Task", "Event", "COUNTERS", "analyze_lyrics", "gen_task_name"]
