"""Exceptions raised by the aiqueue package.

Every failed library call raises a subclass of :class:`AiqError` chosen by
its status code (``AIQ_E*`` in ``include/aiqueue/errors.h``). ``code`` holds
the status code (the truth); the message is the library's thread-local
detail (advice for a human), e.g. ``unknown configuration key 'broker.ulr'``.

Where a builtin exception means the same thing, the class derives from it
too, so ``except TimeoutError`` or ``except ValueError`` work as expected.

Task outcomes seen by a client are not library failures, but they are
reported the same way: :class:`TaskFailed` when a task ended FAILURE and
:class:`TaskRevoked` when it ended REVOKED.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

from . import _lib

OK = 0
ERROR = -1
EINVAL = -2
ENOMEM = -3
ENOTFOUND = -4
ETIMEDOUT = -5
EPROTO = -6
EBROKER = -7
ESTORE = -8
EUNSUPPORTED = -9
ESTATE = -10
ECANCELED = -11
EEXIST = -12
ETOOBIG = -13
EJSON = -14
EIO = -15
EABI = -16
ELIMIT = -17


class AiqError(Exception):
    """Base of every exception this package raises.

    Attributes:
        code: the library status code (negative ``AIQ_E*``), or None for
            errors that do not come from a status code.
        detail: the library's message for the failed call.
    """

    code: Optional[int] = ERROR

    def __init__(self, message: str = "", *, code: Optional[int] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.detail = message


class InvalidArgument(AiqError, ValueError):
    """``AIQ_EINVAL``: a bad value, a NULL handle or the wrong JSON shape."""
    code = EINVAL


class OutOfMemory(AiqError, MemoryError):
    """``AIQ_ENOMEM``."""
    code = ENOMEM


class NotFound(AiqError, LookupError):
    """``AIQ_ENOTFOUND``: unknown configuration key, task, analyzer or queue."""
    code = ENOTFOUND


class Timeout(AiqError, TimeoutError):
    """``AIQ_ETIMEDOUT``: a wait ran out of time.

    Raised by :meth:`aiqueue.AsyncResult.get` and ``wait_async``; the latest
    non-final state seen is in ``state``.
    """
    code = ETIMEDOUT
    state: Optional[str] = None


class ProtocolError(AiqError):
    """``AIQ_EPROTO``: a malformed task message."""
    code = EPROTO


class BrokerError(AiqError, ConnectionError):
    """``AIQ_EBROKER``: the broker failed or is unreachable."""
    code = EBROKER


class StoreError(AiqError, ConnectionError):
    """``AIQ_ESTORE``: the result store failed or is unreachable."""
    code = ESTORE


class Unsupported(AiqError):
    """``AIQ_EUNSUPPORTED``: URL scheme or feature not built into the library."""
    code = EUNSUPPORTED


class StateError(AiqError):
    """``AIQ_ESTATE``: the call is not valid in the handle's current state."""
    code = ESTATE


class Cancelled(AiqError):
    """``AIQ_ECANCELED``: the operation was cancelled (worker aborted, task revoked)."""
    code = ECANCELED


class AlreadyExists(AiqError):
    """``AIQ_EEXIST``: the name is already registered."""
    code = EEXIST


class TooBig(AiqError, ValueError):
    """``AIQ_ETOOBIG``: message or value over the configured size limit."""
    code = ETOOBIG


class JSONError(InvalidArgument):
    """``AIQ_EJSON``: text is not valid JSON."""
    code = EJSON


class IOFailure(AiqError):
    """``AIQ_EIO``: an operating-system level I/O failure."""
    code = EIO


class ABIError(AiqError):
    """``AIQ_EABI``: a plugin built for an incompatible ABI."""
    code = EABI


class LimitReached(AiqError):
    """``AIQ_ELIMIT``: a limit was reached (e.g. max retries used up)."""
    code = ELIMIT


class TaskFailed(AiqError):
    """A task ended FAILURE.

    Attributes:
        task_id: the task.
        exc_type: the exception type name the worker stored (for a Python
            handler, the class name of the exception it raised).
        exc_module: the module of that type (Celery ``exc_module``).
        exc_message: the message stored with it.
        traceback: the stored traceback text, if any.
    """
    code = None

    def __init__(self, task_id: str, exc_type: str, exc_message: str,
                 exc_module: Optional[str] = None,
                 traceback: Optional[str] = None) -> None:
        super().__init__("%s: %s" % (exc_type, exc_message))
        self.task_id = task_id
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.exc_module = exc_module
        self.traceback = traceback


class TaskRevoked(AiqError):
    """A task ended REVOKED (revoked, or expired before it ran)."""
    code = None

    def __init__(self, task_id: str, message: str = "") -> None:
        super().__init__(message or "task %s was revoked" % task_id)
        self.task_id = task_id


class BatchError(AiqError):
    """Some tasks of :meth:`aiqueue.Client.enqueue_many` were not accepted.

    ``code`` and the message are those of the first failed task (in list
    order); the message also says how many failed. The tasks that were
    accepted are queued and will run: nothing is rolled back.

    Attributes:
        results: one entry per task, in order: an
            :class:`aiqueue.AsyncResult` for an accepted task, None for a
            failed one.
        statuses: one library status code per task (0 for accepted).
        errors: one entry per task: None, or the exception for its code
            (e.g. :class:`JSONError`, :class:`BrokerError`). A BrokerError
            for a task means it may or may not have been queued.
    """

    def __init__(self, message: str, *, code: int, results: list,
                 statuses: list) -> None:
        super().__init__(message, code=code)
        self.results = results
        self.statuses = statuses
        self.errors = [None if st == OK else error_for(st) for st in statuses]

    @property
    def accepted(self) -> list:
        """The AsyncResults of the tasks that were accepted."""
        return [r for r in self.results if r is not None]


class Retry(Exception):
    """Raised by :meth:`aiqueue.Task.retry` to end the handler.

    The retry has already been recorded with the library when this is
    raised; the worker's trampoline recognises it and reports nothing else.
    Handlers should let it propagate (like Celery's ``self.retry()``).

    Attributes:
        exhausted: True when the task had used up its retries, so the task
            ends FAILURE ``MaxRetriesExceededError`` instead of running again.
    """

    def __init__(self, message: str = "", exhausted: bool = False) -> None:
        super().__init__(message)
        self.exhausted = exhausted


_BY_CODE: Dict[int, Type[AiqError]] = {
    cls.code: cls for cls in (
        InvalidArgument, OutOfMemory, NotFound, Timeout, ProtocolError,
        BrokerError, StoreError, Unsupported, StateError, Cancelled,
        AlreadyExists, TooBig, JSONError, IOFailure, ABIError, LimitReached)
    if cls.code is not None
}


def error_for(code: int, detail: Optional[str] = None) -> AiqError:
    """Build the exception for a status code.

    Args:
        code: a negative ``AIQ_E*`` status.
        detail: the message; by default :func:`aiq_strerror` of the code.
    """
    if not detail:
        detail = _lib.dec(_lib.lib.aiq_strerror(code)) or "unknown error"
    cls = _BY_CODE.get(code, AiqError)
    return cls(detail, code=code)


def check(rc: int) -> int:
    """Raise the exception for ``rc`` when it is negative, else return it.

    Must be called right after the failed call, on the same thread: the
    detail is the library's thread-local last error.
    """
    if rc >= 0:
        return rc
    detail = _lib.dec(_lib.lib.aiq_error_last())
    raise error_for(rc, detail)


__all__ = [
    "OK", "ERROR", "EINVAL", "ENOMEM", "ENOTFOUND", "ETIMEDOUT", "EPROTO", "EBROKER",
    "ESTORE", "EUNSUPPORTED", "ESTATE", "ECANCELED", "EEXIST", "ETOOBIG", "EJSON", "EIO",
    "EABI", "ELIMIT",
    "AiqError", "InvalidArgument", "OutOfMemory", "NotFound", "Timeout", "ProtocolError",
    "BrokerError", "StoreError", "Unsupported", "StateError", "Cancelled", "AlreadyExists",
    "TooBig", "JSONError", "IOFailure", "ABIError", "LimitReached", "TaskFailed",
    "TaskRevoked", "BatchError", "Retry", "error_for", "check",
]
