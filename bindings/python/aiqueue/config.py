"""String-keyed configuration shared by clients and workers, and the
library's URL and time helpers."""
from __future__ import annotations

import ctypes
import datetime
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from . import _lib
from ._lib import lib
from .errors import InvalidArgument, check

ConfigLike = Union["Config", Mapping[str, Any], None]


class Config:
    """Options by name (``broker.url``, ``queue``, ``worker.concurrency``, ...).

    Keys are listed in docs/configuration.md. Values are typed by Python
    type: ``bool`` uses ``aiq_config_set_bool``, ``int`` ``aiq_config_set_int``,
    and text (or anything else, through ``str()``) ``aiq_config_set``, which
    parses it by the key's type, so ``cfg["worker.concurrency"] = "4"`` works. An unknown key raises
    :class:`~aiqueue.errors.NotFound` naming the key; a value of the wrong
    type raises :class:`~aiqueue.errors.InvalidArgument`.

    A configuration is copied by every handle made from it, so it may be
    changed or closed afterwards. One ``Config`` is used by one thread at a
    time.

    Example::

        with Config({"broker.url": "memory://demo", "worker.concurrency": 2}) as cfg:
            cfg["queue"] = "lyrics"
    """

    def __init__(self, options: Optional[Mapping[str, Any]] = None, *,
                 env: bool = False) -> None:
        """Create a configuration with every key at its default.

        Args:
            options: keys to set, in order.
            env: load ``AIQUEUE_*`` / ``CELERY_*`` variables first (see
                :meth:`load_env`); ``options`` then override them.
        """
        handle = ctypes.c_void_p()
        check(lib.aiq_config_new(ctypes.byref(handle)))
        self._h: Optional[int] = handle.value
        if env:
            self.load_env()
        if options:
            self.update(options)

    @classmethod
    def coerce(cls, value: ConfigLike) -> "Config":
        """A Config from a Config (returned as is), a mapping, or None (defaults)."""
        if isinstance(value, Config):
            return value
        return cls(value)

    @property
    def handle(self) -> int:
        """The ``aiq_config *``; raises InvalidArgument once closed."""
        if not self._h:
            raise InvalidArgument("configuration is closed")
        return self._h

    def set(self, key: str, value: Any) -> None:
        """Set one key; see the class docs for how the type is chosen."""
        k = _lib.enc(key)
        if isinstance(value, bool):
            rc = lib.aiq_config_set_bool(self.handle, k, int(value))
        elif isinstance(value, int):
            rc = lib.aiq_config_set_int(self.handle, k, value)
        else:
            rc = lib.aiq_config_set(self.handle, k, _lib.enc(str(value)))
        check(rc)

    def update(self, options: Union[Mapping[str, Any], Iterable[Tuple[str, Any]]]) -> None:
        """Set several keys."""
        items = options.items() if isinstance(options, Mapping) else options
        for key, value in items:
            self.set(key, value)

    def get(self, key: str) -> str:
        """Any key in its text form."""
        out = ctypes.c_void_p()
        check(lib.aiq_config_get(ctypes.byref(out), self.handle, _lib.enc(key)))
        return _lib.take_string(out)

    def get_int(self, key: str) -> int:
        """An integer or boolean key as an int."""
        out = ctypes.c_int64()
        check(lib.aiq_config_get_int(ctypes.byref(out), self.handle, _lib.enc(key)))
        return out.value

    def load_env(self) -> None:
        """Read options from the environment (``a.b_c`` from ``AIQUEUE_A_B_C``,
        and the ``CELERY_*`` variables of the Celery settings that have an
        equivalent key, listed in docs/configuration.md; ``AIQUEUE_*`` wins).
        All or nothing: on an error no variable is loaded."""
        check(lib.aiq_config_load_env(self.handle))

    def copy(self) -> "Config":
        """A deep copy."""
        out = ctypes.c_void_p()
        check(lib.aiq_config_copy(ctypes.byref(out), self.handle))
        new = Config.__new__(Config)
        new._h = out.value
        return new

    __setitem__ = set
    __getitem__ = get

    def close(self) -> None:
        """Free the configuration (idempotent)."""
        h, self._h = self._h, None
        if h:
            lib.aiq_config_free(h)

    def __enter__(self) -> "Config":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        if not self._h:
            return "<aiqueue.Config closed>"
        # URLs may carry passwords: never show them.
        return "<aiqueue.Config queue=%r>" % self.get("queue")


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values masked (each URL of a
    ``;``-separated list): use it wherever a URL is shown to a person."""
    out = ctypes.c_void_p()
    check(lib.aiq_url_redact(ctypes.byref(out), _lib.enc(url)))
    return _lib.take_string(out)


def check_broker_url(url: str) -> None:
    """Check, without connecting, that this build can open a broker URL.

    Raises:
        Unsupported: unknown scheme, a result-store scheme, or a driver this
            build lacks (the message names the package that provides it).
        InvalidArgument: no scheme.
    """
    check(lib.aiq_url_check_broker(_lib.enc(url)))


def check_store_url(url: str) -> None:
    """As :func:`check_broker_url`, for a result store URL."""
    check(lib.aiq_url_check_store(_lib.enc(url)))


def parse_iso8601(text: str) -> datetime.datetime:
    """Parse an ISO-8601 time as the library does (no offset means UTC) into
    an aware UTC datetime.

    Raises:
        InvalidArgument: not such a time.
    """
    us = ctypes.c_int64()
    check(lib.aiq_time_parse_iso8601(ctypes.byref(us), _lib.enc(text)))
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return epoch + datetime.timedelta(microseconds=us.value)


__all__ = ["Config", "ConfigLike", "redact_url", "check_broker_url", "check_store_url",
           "parse_iso8601"]
