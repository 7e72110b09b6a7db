"""``python3 -m aiqueue worker -A module``: run a worker over an app's tasks.

The shape of ``celery -A module worker``::

    python3 -m aiqueue -A proj worker -c 4 -Q default,lyrics -l info
    python3 -m aiqueue worker -A proj.celery:app --loglevel=info

``-A`` names a module (imported with the current directory first on
``sys.path``, as Celery does) and optionally the attribute holding the app
(``module:attr``); without one, the module's ``app`` or ``celery``
attribute, else its only :class:`aiqueue.App`. SIGTERM or a first Ctrl-C
stops gracefully (running tasks finish), a second Ctrl-C aborts. Exit
status 0 after a clean stop, 1 when the worker failed, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import Any, List, Optional, Sequence

from .app import App
from .errors import AiqError

_LEVELS = ("debug", "info", "warning", "error", "critical", "fatal")


def find_app(spec: str) -> App:
    """The App named by ``-A`` (``module`` or ``module:attribute``).

    Raises:
        SystemExit: 2, with a message, when it cannot be found.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit("aiqueue: cannot import %r: %s" % (module_name, e)) from None
    candidates: List[Any]
    if attr:
        candidates = [getattr(module, attr, None)]
    else:
        candidates = [getattr(module, n, None) for n in ("app", "celery")]
        candidates = [c for c in candidates if c is not None] or [
            v for v in vars(module).values() if isinstance(v, App)]
    apps = [c for c in candidates if isinstance(c, App)]
    if len(apps) != 1 or (attr and not apps):
        what = "%s:%s" % (module_name, attr) if attr else module_name
        found = type(candidates[0]).__module__ + "." + type(candidates[0]).__name__ \
            if candidates and candidates[0] is not None else "nothing"
        raise SystemExit("aiqueue: %s holds no single aiqueue.App (found %s); name it as "
                         "-A module:attribute" % (what, found))
    return apps[0]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m aiqueue",
                                description="Run a libaiqueue worker over an app's tasks.")
    p.add_argument("-A", "--app", dest="top_app", help="module[:attribute] holding the App")
    sub = p.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="consume queues and run the app's tasks")
    w.add_argument("-A", "--app", help="module[:attribute] holding the App")
    w.add_argument("-c", "--concurrency", type=int,
                   help="pool threads (default: worker.concurrency, 0 = CPUs)")
    w.add_argument("-Q", "--queues", help="comma-separated queues to consume")
    w.add_argument("-l", "--loglevel", default="warning", type=str.lower,
                   choices=_LEVELS, help="log level (default warning)")
    w.add_argument("-n", "--hostname", help="worker name stored in STARTED meta")
    # Accepted for command lines written for celery; they have no meaning
    # for a thread pool or are the library's behaviour already.
    for flag in ("--without-mingle", "--without-gossip", "--without-heartbeat"):
        w.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    w.add_argument("-P", "--pool", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None, app: Optional[App] = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command != "worker":
        _parser().print_usage(sys.stderr)
        return 2
    if args.pool not in (None, "threads", "solo", "prefork"):
        raise SystemExit("aiqueue: -P %s: the pool is always threads" % args.pool)
    spec = args.app or args.top_app
    if app is None:
        if not spec:
            raise SystemExit("aiqueue: -A module is required")
        app = find_app(spec)
    level = "error" if args.loglevel in ("critical", "fatal") else args.loglevel
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    from . import log_to_python
    log_to_python(level)
    config = {"worker.hostname": args.hostname} if args.hostname else None
    try:
        worker = app.Worker(concurrency=args.concurrency, queues=args.queues, config=config)
    except AiqError as e:
        print("aiqueue: %s" % e, file=sys.stderr)
        return 1
    log = logging.getLogger("aiqueue.worker")
    log.info("%s: %d task(s): %s", app, len(app.tasks), ", ".join(sorted(app.tasks)))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    try:
        worker.run()
    except AiqError as e:
        print("aiqueue: worker failed: %s" % e, file=sys.stderr)
        return 1
    finally:
        worker.close()
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
