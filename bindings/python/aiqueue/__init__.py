"""Python bindings for libaiqueue, a Celery-compatible task queue in C.

Pure Python over ctypes: no compile step. The library is loaded from
``AIQUEUE_LIBRARY`` (a path) or by its soname ``libaiqueue.so.0``.

    from aiqueue import Client, Worker

    worker = Worker({"broker.url": "memory://"})

    @worker.task("tasks.add")
    def add(task):
        a, b = task.args
        return a + b

    with worker.start_background(), Client({"broker.url": "memory://"}) as client:
        print(client.enqueue("tasks.add", (2, 3)).get(timeout=5))   # 5

See docs/python.md for threads and the GIL, asyncio, and services that mix
C and Python producers and workers.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
from typing import Optional, Union

from . import errors
from ._lib import lib, version
from ._lib import DESTROY_FN as _DESTROY_FN
from ._lib import LOG_FN as _LOG_FN
from .client import (FAILURE, PENDING, PROGRESS, READY_STATES, RECEIVED, RETRY,
                     REVOKED, STARTED, STATE_NUMBERS, SUCCESS, AsyncResult, Client, Result)
from .config import Config, check_broker_url, check_store_url, parse_iso8601, redact_url
from .errors import (AiqError, AlreadyExists, BatchError, BrokerError, Cancelled, InvalidArgument,
                     JSONError, NotFound, ProtocolError, Retry, StateError, StoreError,
                     TaskFailed, TaskRevoked, Timeout, TooBig, Unsupported)
from .worker import COUNTERS, Event, Task, Worker, analyze_lyrics, gen_task_name
from .app import (App, BoundTask, Celery, MaxRetriesExceededError, Request,
                  SoftTimeLimitExceeded, TaskType, rebuild_exception)
from .app import AsyncResult as AppResult

__version__ = "0.1.0"

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
"""``AIQ_LOG_*`` values by name (a test checks them against log.h)."""
_LEVELS = {10: logging.DEBUG, 20: logging.INFO, 30: logging.WARNING, 40: logging.ERROR}
_lib_log = logging.getLogger("aiqueue.lib")


def _log_entry(level: int, message: Optional[bytes], userdata: Optional[int]) -> None:
    try:
        _lib_log.log(_LEVELS.get(level, logging.WARNING),
                     (message or b"").decode("utf-8", "replace"))
    except BaseException:
        pass


_LOG_ENTRY = _LOG_FN(_log_entry)


def log_to_python(level: Union[int, str] = "warning") -> None:
    """Route the library's diagnostics to the ``aiqueue.lib`` logger.

    The library has one process-wide log handler: call this once at start-up,
    before creating handles. Messages below ``level`` ("debug", "info",
    "warning", "error", or an ``AIQ_LOG_*`` number) are dropped in C. The
    handler runs on library threads. It is removed again at interpreter exit.
    """
    if isinstance(level, str):
        code = lib.aiq_log_level_from_name(level.encode())
        if code < 0:
            raise InvalidArgument("unknown log level %r" % level)
        level = code
    lib.aiq_log_set_level(level)
    no_destroy = ctypes.cast(None, _DESTROY_FN)  # a NULL function pointer
    lib.aiq_log_set_handler(_LOG_ENTRY, None, no_destroy)
    atexit.register(lib.aiq_log_set_handler, ctypes.cast(None, _LOG_FN), None, no_destroy)


__all__ = [
    "App", "Celery", "TaskType", "BoundTask", "Request", "AppResult",
    "MaxRetriesExceededError", "SoftTimeLimitExceeded", "rebuild_exception", "gen_task_name",
    "Config", "check_broker_url", "check_store_url", "parse_iso8601", "redact_url",
    "LOG_LEVELS", "COUNTERS", "STATE_NUMBERS", "Client", "AsyncResult", "Result", "Worker", "Task", "Event",
    "analyze_lyrics", "log_to_python", "version", "errors",
    "AiqError", "AlreadyExists", "BatchError", "BrokerError", "Cancelled", "InvalidArgument",
    "JSONError", "NotFound", "ProtocolError", "Retry", "StateError", "StoreError",
    "TaskFailed", "TaskRevoked", "Timeout", "TooBig", "Unsupported",
    "PENDING", "RECEIVED", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE",
    "REVOKED", "READY_STATES",
]
