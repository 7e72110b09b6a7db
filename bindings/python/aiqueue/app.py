"""Celery's shapes over libaiqueue: ``App``, ``@app.task``, ``.delay()``.

A module written for Celery::

    app = Celery("proj", broker="redis://...", backend="redis://...")

    @app.task
    def add(x, y):
        return x + y

    add.delay(2, 3).get(timeout=10)

runs on this package with ``from aiqueue import App as Celery``; its tasks
are served by ``python3 -m aiqueue worker -A proj`` (or by ``celery -A proj
worker``: the messages and results are Celery's own).

Times are seconds, as in Celery; the library underneath counts
milliseconds, and this module converts at the boundary.
"""
from __future__ import annotations

import builtins
import datetime
import functools
import logging
import random
import sys
import threading
from typing import (Any, Callable, Dict, Iterable, List, Mapping, NoReturn, Optional,
                    Sequence, Tuple, Type, Union)

from .client import FAILURE, REVOKED, Client, Result
from .client import AsyncResult as _ClientResult
from .config import Config
from .errors import Cancelled, Retry, StateError, TaskFailed, TaskRevoked, Unsupported
from .worker import Task as _CTask
from .worker import Worker, gen_task_name

log = logging.getLogger("aiqueue.app")

# Celery's defaults for the task attributes of the same names.
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY = 180.0
DEFAULT_RETRY_BACKOFF_MAX = 600.0

# Celery setting names (app.conf) that have a library key, with the factor
# that turns Celery's unit (seconds) into the key's.
_CONF_KEYS: Dict[str, Tuple[str, Optional[int]]] = {
    "broker_url": ("broker.url", None),
    "result_backend": ("result.url", None),
    "task_default_queue": ("queue", None),
    "result_expires": ("result.expires_s", 1),
    "task_track_started": ("result.track_started", None),
    "task_soft_time_limit": ("task.soft_time_limit_ms", 1000),
    "task_time_limit": ("task.time_limit_ms", 1000),
    "worker_concurrency": ("worker.concurrency", None),
    "worker_prefetch_multiplier": ("worker.prefetch_multiplier", None),
}


class MaxRetriesExceededError(Exception):
    """A task asked to retry once more than its ``max_retries`` allow
    (Celery's ``celery.exceptions.MaxRetriesExceededError``)."""


class SoftTimeLimitExceeded(Exception):
    """Raised by :meth:`BoundTask.check_soft_time_limit` once the soft
    time limit passed (Celery raises it asynchronously; here the handler
    polls)."""


# --- rebuilding exceptions ------------------------------------------------

_fallbacks: Dict[Tuple[str, str], Type[TaskFailed]] = {}
_fallback_lock = threading.Lock()


def _fallback_class(type_name: str, module: Optional[str]) -> Type[TaskFailed]:
    """A TaskFailed subclass named after a type that cannot be rebuilt."""
    key = (type_name, module or "")
    with _fallback_lock:
        cls = _fallbacks.get(key)
        if cls is None:
            safe = type_name if type_name.isidentifier() else "RemoteError"
            cls = type(safe, (TaskFailed,), {
                "__doc__": "Stand-in for the remote exception type %s.%s, which "
                           "is not importable here." % (module or "?", type_name),
                "__module__": "aiqueue.remote"})
            _fallbacks[key] = cls
        return cls


def rebuild_exception(result: Result) -> BaseException:
    """The exception a FAILURE (or REVOKED) result stands for.

    A builtin type (``exc_module`` "builtins" or none) is rebuilt by name, as
    is a type whose module is already imported in this process (Celery
    imports it; this package never imports a module because a result names
    it). Anything else becomes a :class:`~aiqueue.errors.TaskFailed`
    subclass carrying the remote type's name (``type(e).__name__``), with
    ``exc_type``, ``exc_module``, ``exc_message`` and ``traceback`` set.
    The rebuilt exception also has ``task_id`` and ``traceback`` attributes.
    """
    if result.state == REVOKED:
        return TaskRevoked(result.task_id, result.error_message or "")
    name = result.error_type or "Exception"
    module = result.error_module or "builtins"
    message = result.error_message or ""
    cls: Any = None
    if module in ("builtins", "exceptions"):
        cls = getattr(builtins, name, None)
    elif module in sys.modules:
        cls = getattr(sys.modules[module], name, None)
    elif module == "celery.exceptions" and name == "MaxRetriesExceededError":
        cls = MaxRetriesExceededError
    exc: Optional[BaseException] = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(message)
        except Exception:
            exc = None
    if exc is None:
        exc = _fallback_class(name, module)(result.task_id, name, message, module,
                                            result.traceback)
    try:
        exc.task_id = result.task_id  # type: ignore[attr-defined]
        exc.traceback = result.traceback  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return exc


def _parse_date(text: Optional[str]) -> Optional[datetime.datetime]:
    if not text:
        return None
    try:
        d = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=datetime.timezone.utc)


class AsyncResult(_ClientResult):
    """Celery's ``AsyncResult`` for tasks sent through an :class:`App`.

    The same handle as :class:`aiqueue.client.AsyncResult`, except that a
    FAILURE raises (or, as ``.result``, is) the original exception type
    where it can be rebuilt (see :func:`rebuild_exception`) instead of
    :class:`~aiqueue.errors.TaskFailed`. ``await result`` works.
    """

    def __init__(self, task_id: str, client: Client, app: Optional["App"] = None) -> None:
        super().__init__(task_id, client)
        self.app = app

    @staticmethod
    def _outcome(r: Result, propagate: bool) -> Any:
        if r.state in (FAILURE, REVOKED):
            exc = rebuild_exception(r)
            if propagate:
                raise exc
            return exc
        return r.value

    @property
    def result(self) -> Any:
        """The return value once SUCCESS, the rebuilt exception once
        FAILURE/REVOKED, the meta of a progress state, else None."""
        return self._outcome(self.fetch(), propagate=False)

    info = result

    @property
    def traceback(self) -> Optional[str]:
        """The stored traceback text of a failed task, else None."""
        return self.fetch().traceback

    @property
    def date_done(self) -> Optional[datetime.datetime]:
        """When the task finished (an aware UTC datetime), else None."""
        return _parse_date(self.fetch().date_done)

    def get(self, timeout: Optional[float] = None, propagate: bool = True,
            interval: float = 0.5, **_ignored: Any) -> Any:
        """Wait for the task and return its value; FAILURE raises the
        original exception type (``propagate=False`` returns it instead).
        ``interval`` is accepted for Celery's signature: the wait is woken
        by the store, not by polling.

        Raises:
            aiqueue.errors.Timeout (a ``TimeoutError``): not done in time.
        """
        return self._outcome(self.client.wait(self.id, timeout), propagate)

    async def wait_async(self, timeout: Optional[float] = None,
                         propagate: bool = True) -> Any:
        """:meth:`get` without blocking the event loop (``await result``)."""
        value = await super().wait_async(timeout, propagate=False)
        if isinstance(value, (TaskFailed, TaskRevoked)):
            return self._outcome(self.client.get_result(self.id), propagate)
        return value

    def revoke(self, terminate: bool = False, signal: Optional[str] = None) -> None:
        """Revoke the task. A queued task is skipped; a running one has its
        cancellation flag raised (``self.is_aborted()`` in the handler
        becomes true). ``terminate`` is accepted for Celery's signature:
        threads cannot be killed, so a running handler stops when it next
        checks the flag, or at its hard time limit.

        A task that already finished keeps its final state and the call
        does nothing, as Celery's ``revoke`` of a finished task does
        (:meth:`aiqueue.Client.revoke` raises :class:`StateError` then)."""
        try:
            self.client.revoke(self.id)
        except StateError:
            pass

    def forget(self) -> None:
        """Celery's forget: delete the stored result, so the state reads
        PENDING again (see :meth:`aiqueue.Client.forget`). The task itself
        is not revoked."""
        self.client.forget(self.id)


# --- the task object ------------------------------------------------------

class Request:
    """``self.request`` of a bound task (Celery's ``Context``), read-only."""

    __slots__ = ("id", "retries", "eta", "task", "args", "kwargs", "delivery_info",
                 "hostname", "is_eager")

    def __init__(self, t: _CTask) -> None:
        self.id = t.id
        self.retries = t.retries
        eta_ms = t.eta_ms
        self.eta: Optional[str] = (datetime.datetime.fromtimestamp(
            eta_ms / 1000.0, datetime.timezone.utc).isoformat() if eta_ms > 0 else None)
        self.task = t.name
        self.args = list(t.args)
        self.kwargs = dict(t.kwargs)
        self.delivery_info = {"routing_key": t.queue}
        self.hostname: Optional[str] = None
        self.is_eager = False


class BoundTask:
    """The ``self`` a ``bind=True`` handler receives, for one run.

    Has ``request`` (``id``, ``retries``, ``eta``, ``args``, ``kwargs``),
    :meth:`retry`, :meth:`update_state`, ``name``, ``max_retries``, ``app``,
    and the sending methods of the task (``self.delay``...).
    """

    def __init__(self, task: "TaskType", t: _CTask) -> None:
        self._task = task
        self._t = t
        self.request = Request(t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def retry(self, args: Optional[Sequence[Any]] = None,
              kwargs: Optional[Mapping[str, Any]] = None,
              exc: Optional[BaseException] = None, throw: bool = True,
              eta: Optional[datetime.datetime] = None,
              countdown: Optional[float] = None,
              max_retries: Optional[int] = None, **options: Any) -> NoReturn:
        """Run the task again later and end this run (Celery's ``retry``).

        Args:
            exc: the reason; stored with RETRY, and raised as the task's
                FAILURE once the retries are used up (else
                :class:`MaxRetriesExceededError`).
            countdown: seconds before the next run (default the task's
                ``default_retry_delay``, 180 as in Celery).
            eta: run at this time instead (overrides ``countdown``).
            max_retries: overrides the task's ``max_retries`` for this call
                (None in the task means retry for ever).

        Raises:
            aiqueue.errors.Retry: always when the task will run again; let it
                propagate. When the retries are used up, ``exc`` (or
                MaxRetriesExceededError) is raised instead.
        """
        if args is not None or kwargs is not None:
            raise Unsupported("retry() with new args/kwargs is not supported: the "
                              "library retries the message as it was sent")
        limit = self._task.max_retries if max_retries is None else max_retries
        if limit is not None and self.request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                "Can't retry %s[%s] args:%s kwargs:%s" % (
                    self._task.name, self.request.id, self.request.args, self.request.kwargs))
        if eta is not None:
            if eta.tzinfo is None:
                eta = eta.replace(tzinfo=datetime.timezone.utc)
            countdown = max(0.0, (eta - datetime.datetime.now(datetime.timezone.utc))
                            .total_seconds())
        if countdown is None:
            countdown = self._task.default_retry_delay
        reason = None if exc is None else "%s: %s" % (type(exc).__name__, exc)
        try:
            self._t.retry(countdown, reason)
        except Retry as r:
            if r.exhausted:  # the library's own limit (task.max_retries) ran out
                if exc is not None:
                    raise exc from None
                raise MaxRetriesExceededError(str(r)) from None
            raise

    def update_state(self, task_id: Optional[str] = None, state: Optional[str] = None,
                     meta: Optional[Mapping[str, Any]] = None) -> None:
        """Store a progress state with ``meta`` now (Celery's ``update_state``).

        The library's stores keep the Celery state set; a custom state name
        (``state="DOWNLOADING"``) is stored as PROGRESS with the same meta,
        which aiqueue and Celery clients read as ``.info``.

        Raises:
            aiqueue.errors.Unsupported: ``task_id`` names another task.
            aiqueue.errors.Cancelled: the task was revoked or is finished.
        """
        if task_id is not None and task_id != self.request.id:
            raise Unsupported("update_state() can only update the running task")
        self._t.progress(dict(meta or {}))

    def is_aborted(self) -> bool:
        """True once the task was revoked, its soft time limit passed or the
        worker aborts: return soon."""
        return self._t.cancelled

    def check_soft_time_limit(self) -> None:
        """Raise :class:`SoftTimeLimitExceeded` once the soft limit passed."""
        from .errors import ETIMEDOUT
        if self._t.cancel_reason == ETIMEDOUT:
            raise SoftTimeLimitExceeded("soft time limit exceeded")


_TASK_OPTIONS = frozenset((
    "name", "bind", "max_retries", "default_retry_delay", "autoretry_for", "retry_kwargs",
    "retry_backoff", "retry_backoff_max", "retry_jitter", "soft_time_limit",
    "time_limit", "ignore_result", "queue", "serializer", "acks_late", "typing", "shared",
    "track_started", "base", "rate_limit"))


class TaskType:
    """What ``@app.task`` returns: callable as the plain function, with
    ``.delay()``, ``.apply_async()``, ``.name``, ``.s()``-free (no canvas).

    Attributes mirror Celery's task attributes of the same names.
    """

    def __init__(self, app: "App", fn: Callable[..., Any], **options: Any) -> None:
        unknown = set(options) - _TASK_OPTIONS
        if unknown:
            raise TypeError("unknown task option(s): %s" % ", ".join(sorted(unknown)))
        if options.get("rate_limit"):
            raise Unsupported("rate_limit is not supported by this library")
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        self.app = app
        self.run = fn
        self.name: str = options.get("name") or gen_task_name(
            fn.__name__, fn.__module__, app.main)
        self.bind = bool(options.get("bind", False))
        self.max_retries: Optional[int] = options.get("max_retries", DEFAULT_MAX_RETRIES)
        self.default_retry_delay = float(options.get("default_retry_delay",
                                                     DEFAULT_RETRY_DELAY))
        auto = options.get("autoretry_for", ())
        self.autoretry_for: Tuple[Type[BaseException], ...] = tuple(auto)
        self.retry_kwargs: Dict[str, Any] = dict(options.get("retry_kwargs") or {})
        self.retry_backoff: Union[bool, float] = options.get("retry_backoff", False)
        self.retry_backoff_max = float(options.get("retry_backoff_max",
                                                   DEFAULT_RETRY_BACKOFF_MAX))
        self.retry_jitter = bool(options.get("retry_jitter", True))
        self.soft_time_limit: Optional[float] = options.get("soft_time_limit")
        self.time_limit: Optional[float] = options.get("time_limit")
        self.ignore_result = bool(options.get("ignore_result", False))
        self.queue: Optional[str] = options.get("queue")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here and now, as Celery does for ``add(2, 3)``."""
        if self.bind:
            raise TypeError("%s is bound (bind=True): call it through .delay() or "
                            ".apply_async(); self only exists in a worker" % self.name)
        return self.run(*args, **kwargs)

    def __repr__(self) -> str:
        return "<@task: %s of %s>" % (self.name, self.app.main or "__main__")

    # -- sending ----------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Any:
        """A signature of this task (Celery ``.s()``), for links, chains,
        groups and chords (:mod:`aiqueue.canvas`)."""
        from .canvas import Signature
        return Signature(self.name, args, kwargs, queue=self.queue, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Any:
        """An immutable signature (Celery ``.si()``): it gets no parent result."""
        from .canvas import Signature
        return Signature(self.name, args, kwargs, immutable=True, queue=self.queue,
                         app=self.app)

    signature = s

    def apply_async(self, args: Optional[Sequence[Any]] = None,
                    kwargs: Optional[Mapping[str, Any]] = None, *,
                    countdown: Optional[float] = None,
                    eta: Optional[datetime.datetime] = None,
                    expires: Union[float, datetime.datetime, None] = None,
                    priority: Optional[int] = None, queue: Optional[str] = None,
                    task_id: Optional[str] = None,
                    soft_time_limit: Optional[float] = None,
                    time_limit: Optional[float] = None,
                    ignore_result: Optional[bool] = None,
                    **options: Any) -> AsyncResult:
        """Send the task (Celery's ``apply_async``); times in seconds.

        ``expires`` is seconds from now or a datetime. The task's own
        ``queue``, time limits and ``ignore_result`` apply unless given here.
        Other Celery options (``serializer``, ``routing_key``...) are
        refused with TypeError rather than silently ignored.
        """
        if options:
            raise TypeError("unsupported apply_async option(s): %s"
                            % ", ".join(sorted(options)))
        return self.app.send_task(
            self.name, args, kwargs, countdown=countdown, eta=eta, expires=expires,
            priority=priority, queue=queue or self.queue, task_id=task_id,
            soft_time_limit=(self.soft_time_limit if soft_time_limit is None
                             else soft_time_limit),
            time_limit=self.time_limit if time_limit is None else time_limit,
            ignore_result=self.ignore_result if ignore_result is None else ignore_result)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 (Celery's name)
        """A result handle for ``task_id``."""
        return self.app.AsyncResult(task_id)

    # -- running in a worker ----------------------------------------------

    def _backoff(self, retries: int) -> float:
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(self.retry_backoff_max, factor * (2 ** retries))
        if self.retry_jitter:
            countdown = random.randrange(int(countdown) + 1)
        return max(0.0, countdown)

    def _handle(self, t: _CTask) -> Any:
        """The library handler: call the function with the message's arguments."""
        bound = BoundTask(self, t)
        args = t.args
        kwargs = t.kwargs
        try:
            if self.bind:
                return self.run(bound, *args, **kwargs)
            return self.run(*args, **kwargs)
        except (Retry, Cancelled):
            # A retry already recorded, or a revoked task: never retried again.
            raise
        except self.autoretry_for as e:  # type: ignore[misc]
            rkw = dict(self.retry_kwargs)
            if self.retry_backoff and "countdown" not in rkw:
                rkw["countdown"] = self._backoff(bound.request.retries)
            bound.retry(exc=e, **rkw)


class App:
    """Celery's ``Celery`` application object, on libaiqueue.

    Args:
        main: the application name (used for task names of functions in the
            ``__main__`` module, as Celery does).
        broker: broker URL; default from ``AIQUEUE_BROKER_URL`` or
            ``CELERY_BROKER_URL``, else ``memory://``.
        backend: result store URL; default from ``AIQUEUE_RESULT_URL`` or
            ``CELERY_RESULT_BACKEND``, else ``memory://``.
        config: more library options by key (``{"worker.concurrency": 4}``),
            applied after the environment and before ``broker``/``backend``.

    ``app.conf`` takes Celery setting names (``app.conf.update(...)``);
    those with a library equivalent (see docs/configuration.md) are applied
    when the client or a worker is made; the others are kept and ignored.
    """

    def __init__(self, main: Optional[str] = None, *, broker: Optional[str] = None,
                 backend: Optional[str] = None,
                 config: Optional[Mapping[str, Any]] = None, **_celery_kwargs: Any) -> None:
        self.main = main
        self.conf: Dict[str, Any] = {}
        self._options: Dict[str, Any] = dict(config or {})
        if broker is not None:
            self._options["broker.url"] = broker
        if backend is not None:
            self._options["result.url"] = backend
        self._tasks: Dict[str, TaskType] = {}
        self._client: Optional[Client] = None
        self._lock = threading.Lock()

    # -- configuration ----------------------------------------------------

    def config(self, extra: Optional[Mapping[str, Any]] = None) -> Config:
        """A fresh :class:`Config`: environment, then ``app.conf``, then the
        constructor's options, then ``extra``. The caller closes it."""
        cfg = Config(env=True)
        try:
            for key, value in self.conf.items():
                mapped = _CONF_KEYS.get(key)
                if mapped is None or value is None:
                    continue
                name, factor = mapped
                if factor is not None and not isinstance(value, bool):
                    value = int(round(float(value) * factor))
                cfg.set(name, value)
            cfg.update(self._options)
            if extra:
                cfg.update(extra)
        except BaseException:
            cfg.close()
            raise
        return cfg

    @property
    def client(self) -> Client:
        """The app's producer connection, made on first use (thread-safe)."""
        with self._lock:
            if self._client is None:
                cfg = self.config()
                try:
                    self._client = Client(cfg)
                finally:
                    cfg.close()
            return self._client

    def close(self) -> None:
        """Close the app's client (it is made again when needed)."""
        with self._lock:
            c, self._client = self._client, None
        if c is not None:
            c.close()

    # -- tasks ------------------------------------------------------------

    def task(self, *args: Any, **options: Any) -> Any:
        """``@app.task`` or ``@app.task(name=..., bind=True, ...)``.

        Bare, the task is named ``module.function`` (Celery's rule). Options
        as in Celery: ``name``, ``bind``, ``max_retries`` (None = for ever),
        ``default_retry_delay``, ``autoretry_for``, ``retry_kwargs``,
        ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``,
        ``soft_time_limit``, ``time_limit``, ``ignore_result``, ``queue``
        (times in seconds).
        """
        if len(args) == 1 and callable(args[0]) and not options:
            return self._register(TaskType(self, args[0]))
        if args:
            raise TypeError("@app.task takes keyword options only, e.g. "
                            "@app.task(name=\"tasks.add\")")

        def deco(fn: Callable[..., Any]) -> TaskType:
            if not callable(fn):
                raise TypeError("@app.task must decorate a callable, not %s"
                                % type(fn).__name__)
            return self._register(TaskType(self, fn, **options))
        return deco

    def _register(self, task: TaskType) -> TaskType:
        self._tasks[task.name] = task
        return task

    @property
    def tasks(self) -> Dict[str, TaskType]:
        """Registered tasks by name."""
        return dict(self._tasks)

    def send_task(self, name: str, args: Optional[Sequence[Any]] = None,
                  kwargs: Optional[Mapping[str, Any]] = None, *,
                  countdown: Optional[float] = None,
                  eta: Optional[datetime.datetime] = None,
                  expires: Union[float, datetime.datetime, None] = None,
                  priority: Optional[int] = None, queue: Optional[str] = None,
                  task_id: Optional[str] = None,
                  soft_time_limit: Optional[float] = None,
                  time_limit: Optional[float] = None,
                  ignore_result: bool = False) -> AsyncResult:
        """Send a task by name (Celery's ``send_task``); times in seconds."""
        if isinstance(expires, datetime.datetime):
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=datetime.timezone.utc)
            expires = max(0.0, (expires - datetime.datetime.now(datetime.timezone.utc))
                          .total_seconds())
        client = self.client
        r = client.enqueue(name, tuple(args or ()), dict(kwargs or {}), task_id=task_id,
                           queue=queue, countdown=countdown, eta=eta, expires=expires,
                           priority=priority, soft_time_limit=soft_time_limit,
                           time_limit=time_limit, ignore_result=ignore_result)
        return AsyncResult(r.id, client, self)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 (Celery's name)
        """A result handle for any task id."""
        return AsyncResult(task_id, self.client, self)

    # -- workers ----------------------------------------------------------

    def Worker(self, concurrency: Optional[int] = None,  # noqa: N802 (Celery's name)
               queues: Union[str, Iterable[str], None] = None,
               config: Optional[Mapping[str, Any]] = None) -> Worker:
        """A :class:`Worker` serving every task of the app.

        Args:
            concurrency: pool threads (``-c``); None keeps the configuration's.
            queues: names to consume (``-Q``), a list or comma-separated.
            config: more library options for the worker.
        """
        extra: Dict[str, Any] = dict(config or {})
        if concurrency is not None:
            extra["worker.concurrency"] = concurrency
        if queues is not None:
            extra["worker.queues"] = queues if isinstance(queues, str) else ",".join(queues)
        # Retry limits are the tasks' own (max_retries, checked before the
        # library is asked); the library's default must not cut them short.
        extra.setdefault("task.max_retries", 1000000)
        cfg = self.config(extra)
        try:
            worker = Worker(cfg, main=self.main)
        finally:
            cfg.close()
        try:
            for name, task in self._tasks.items():
                worker.register(name, task._handle)
        except BaseException:
            worker.close()
            raise
        return worker

    def worker_main(self, argv: Optional[List[str]] = None) -> None:
        """Run ``python3 -m aiqueue worker`` with ``argv`` over this app."""
        from .__main__ import main
        main(["worker"] + list(argv or []), app=self)

    def __repr__(self) -> str:
        return "<aiqueue.App %s>" % (self.main or "__main__")


Celery = App
"""Celery's class name, so ``from aiqueue import Celery`` reads as before."""

__all__ = ["App", "Celery", "TaskType", "BoundTask", "Request", "AsyncResult",
           "MaxRetriesExceededError", "SoftTimeLimitExceeded", "rebuild_exception"]
