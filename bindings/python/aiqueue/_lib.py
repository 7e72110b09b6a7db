"""Loading libaiqueue through ctypes and declaring its functions.

The shared library is found, in order, from the ``AIQUEUE_LIBRARY``
environment variable (a path), then where ``meson install`` put it next to
this package (recorded in the generated ``_install.py``), then by its soname ``libaiqueue.so.0`` through
the dynamic loader's usual search path, then through
:func:`ctypes.util.find_library`.

Every prototype below mirrors a declaration in ``include/aiqueue/*.h``.
Functions are called through :class:`ctypes.CDLL`, so the GIL is released for
the duration of every call into the library: a blocking call such as
``aiq_worker_run`` or ``aiq_client_wait`` does not stop other Python threads.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import threading
from ctypes import (CFUNCTYPE, POINTER, c_char_p, c_double, c_int, c_int64,
                    c_size_t, c_uint64, c_void_p)
from typing import Any, Dict, List, Optional

SONAME = "libaiqueue.so.0"
"""The soname this package is written against (ABI generation 0)."""


def _installed_library() -> Optional[str]:
    """The library installed with this package by ``meson install``, if any."""
    try:
        from ._install import LIBRARY  # generated at install time
    except ImportError:
        return None
    return LIBRARY if os.path.exists(LIBRARY) else None


def _load() -> ctypes.CDLL:
    path = os.environ.get("AIQUEUE_LIBRARY") or _installed_library()
    if path:
        return ctypes.CDLL(path)
    try:
        return ctypes.CDLL(SONAME)
    except OSError:
        found = ctypes.util.find_library("aiqueue")
        if found is None:
            raise OSError(
                "libaiqueue not found: install it, or set AIQUEUE_LIBRARY "
                "to the path of libaiqueue.so.0") from None
        return ctypes.CDLL(found)


lib = _load()

# Opaque handles travel as void pointers.
aiq_config_p = c_void_p
aiq_client_p = c_void_p
aiq_opts_p = c_void_p
aiq_worker_p = c_void_p
aiq_task_p = c_void_p
aiq_result_p = c_void_p
aiq_signature_p = c_void_p
aiq_similar_p = c_void_p
aiq_similar_list_p = c_void_p

# Callback types (userdata is always the last argument).
DESTROY_FN = CFUNCTYPE(None, c_void_p)
TASK_FN = CFUNCTYPE(None, c_void_p, c_void_p)
ANALYZER_FN = CFUNCTYPE(None, c_void_p, c_char_p, c_char_p, c_void_p)
EVENT_FN = CFUNCTYPE(None, c_int, c_char_p, c_char_p, c_char_p, c_void_p)
COMPLETION_FN = CFUNCTYPE(None, c_char_p, c_void_p, c_void_p)
LOG_FN = CFUNCTYPE(None, c_int, c_char_p, c_void_p)
CELERY_EVENT_FN = CFUNCTYPE(None, c_char_p, c_void_p)


BOUND: List[str] = []
"""Names of every function declared below (tests compare them with the headers)."""


def _fn(name: str, restype: Any, *argtypes: Any) -> None:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    BOUND.append(name)


_P = POINTER
# common.h, errors.h, version.h, log.h
_fn("aiq_free", None, c_void_p)
_fn("aiq_strerror", c_char_p, c_int)
_fn("aiq_error_last", c_char_p)
_fn("aiq_error_clear", None)
_fn("aiq_version_string", c_char_p)
_fn("aiq_version_number", c_int)
_fn("aiq_log_set_handler", None, LOG_FN, c_void_p, DESTROY_FN)
_fn("aiq_log_set_level", None, c_int)
_fn("aiq_log_level_from_name", c_int, c_char_p)
_fn("aiq_url_redact", c_int, _P(c_void_p), c_char_p)
_fn("aiq_url_check_broker", c_int, c_char_p)
_fn("aiq_url_check_store", c_int, c_char_p)
_fn("aiq_time_parse_iso8601", c_int, _P(c_int64), c_char_p)
# config.h
_fn("aiq_config_new", c_int, _P(aiq_config_p))
_fn("aiq_config_free", None, aiq_config_p)
_fn("aiq_config_copy", c_int, _P(aiq_config_p), aiq_config_p)
_fn("aiq_config_set", c_int, aiq_config_p, c_char_p, c_char_p)
_fn("aiq_config_set_str", c_int, aiq_config_p, c_char_p, c_char_p)
_fn("aiq_config_set_int", c_int, aiq_config_p, c_char_p, c_int64)
_fn("aiq_config_set_bool", c_int, aiq_config_p, c_char_p, c_int)
_fn("aiq_config_get", c_int, _P(c_void_p), aiq_config_p, c_char_p)
_fn("aiq_config_get_int", c_int, _P(c_int64), aiq_config_p, c_char_p)
_fn("aiq_config_load_env", c_int, aiq_config_p)
# result.h
_fn("aiq_state_name", c_char_p, c_int)
_fn("aiq_state_from_name", c_int, c_char_p)
_fn("aiq_state_is_ready", c_int, c_int)
_fn("aiq_result_free", None, aiq_result_p)
_fn("aiq_result_state", c_int, aiq_result_p)
for _name in ("task_id", "json", "error_type", "error_message", "error_module",
              "traceback", "date_done", "meta_json"):
    _fn("aiq_result_" + _name, c_char_p, aiq_result_p)
# task.h
for _name in ("id", "name", "args_json", "kwargs_json", "queue"):
    _fn("aiq_task_" + _name, c_char_p, aiq_task_p)
_fn("aiq_task_retries", c_int, aiq_task_p)
_fn("aiq_task_eta_ms", c_int64, aiq_task_p)
_fn("aiq_task_cancelled", c_int, aiq_task_p)
_fn("aiq_task_succeed", c_int, aiq_task_p, c_char_p)
_fn("aiq_task_fail", c_int, aiq_task_p, c_char_p, c_char_p, c_char_p)
_fn("aiq_task_set_traceback", c_int, aiq_task_p, c_char_p)
_fn("aiq_task_retry", c_int, aiq_task_p, c_int64, c_char_p)
_fn("aiq_task_progress", c_int, aiq_task_p, c_char_p)
# Typed arguments (the Python layer reads args/kwargs JSON itself; these are
# bound so that every exported function is reachable and checked for drift).
_fn("aiq_task_arg_count", c_int64, aiq_task_p)
for _kind, _sel in (("arg", c_int64), ("kwarg", c_char_p)):
    _fn(f"aiq_task_{_kind}_str", c_int, _P(c_char_p), _P(c_size_t), aiq_task_p, _sel)
    _fn(f"aiq_task_{_kind}_int", c_int, _P(c_int64), aiq_task_p, _sel)
    _fn(f"aiq_task_{_kind}_double", c_int, _P(c_double), aiq_task_p, _sel)
    _fn(f"aiq_task_{_kind}_bool", c_int, _P(c_int), aiq_task_p, _sel)
    _fn(f"aiq_task_{_kind}_json", c_int, _P(c_void_p), aiq_task_p, _sel)
# client.h
_fn("aiq_enqueue_opts_new", c_int, _P(aiq_opts_p))
_fn("aiq_enqueue_opts_free", None, aiq_opts_p)
_fn("aiq_enqueue_opts_set_task_id", c_int, aiq_opts_p, c_char_p)
_fn("aiq_enqueue_opts_set_queue", c_int, aiq_opts_p, c_char_p)
_fn("aiq_enqueue_opts_set_countdown_ms", c_int, aiq_opts_p, c_int64)
_fn("aiq_enqueue_opts_set_eta_ms", c_int, aiq_opts_p, c_int64)
_fn("aiq_enqueue_opts_set_expires_ms", c_int, aiq_opts_p, c_int64)
_fn("aiq_enqueue_opts_set_priority", c_int, aiq_opts_p, c_int)
_fn("aiq_enqueue_opts_set_max_retries", c_int, aiq_opts_p, c_int)
_fn("aiq_enqueue_opts_set_time_limits", c_int, aiq_opts_p, c_int64, c_int64)
_fn("aiq_enqueue_opts_set_ignore_result", c_int, aiq_opts_p, c_int)
_fn("aiq_enqueue_opts_set_unique", c_int, aiq_opts_p, c_char_p, c_int64, c_int)
_fn("aiq_client_new", c_int, _P(aiq_client_p), aiq_config_p)
_fn("aiq_client_free", None, aiq_client_p)
_fn("aiq_client_enqueue", c_int, _P(c_void_p), aiq_client_p, c_char_p, c_char_p,
    c_char_p, aiq_opts_p)
_fn("aiq_client_enqueue_unique", c_int, _P(c_void_p), _P(c_int), aiq_client_p, c_char_p,
    c_char_p, c_char_p, aiq_opts_p)
_fn("aiq_client_enqueue_batch", c_int, _P(c_void_p), _P(c_int), aiq_client_p, c_char_p,
    _P(c_char_p), _P(c_char_p), c_size_t, aiq_opts_p)
_fn("aiq_client_get_result", c_int, _P(aiq_result_p), aiq_client_p, c_char_p)
_fn("aiq_client_wait", c_int, _P(aiq_result_p), aiq_client_p, c_char_p, c_int64)
_fn("aiq_client_revoke", c_int, aiq_client_p, c_char_p)
_fn("aiq_client_forget", c_int, aiq_client_p, c_char_p)
_fn("aiq_client_on_complete", c_int, aiq_client_p, COMPLETION_FN, c_void_p,
    DESTROY_FN)
_fn("aiq_client_ping", c_int, aiq_client_p)
_fn("aiq_client_queue_depth", c_int, _P(c_uint64), aiq_client_p, c_char_p)
_fn("aiq_client_purge", c_int, _P(c_uint64), aiq_client_p, c_char_p)
# events.h
_fn("aiq_event_receiver_new", c_int, _P(c_void_p), aiq_config_p, CELERY_EVENT_FN, c_void_p,
    DESTROY_FN)
_fn("aiq_event_receiver_free", None, c_void_p)
_fn("aiq_event_receiver_count", c_uint64, c_void_p)
# canvas.h
_fn("aiq_signature_new", c_int, _P(aiq_signature_p), c_char_p)
_fn("aiq_signature_free", None, aiq_signature_p)
_fn("aiq_signature_set_args_json", c_int, aiq_signature_p, c_char_p)
_fn("aiq_signature_set_kwargs_json", c_int, aiq_signature_p, c_char_p)
_fn("aiq_signature_set_immutable", c_int, aiq_signature_p, c_int)
_fn("aiq_signature_set_queue", c_int, aiq_signature_p, c_char_p)
_fn("aiq_signature_set_task_id", c_int, aiq_signature_p, c_char_p)
_fn("aiq_signature_set_countdown_ms", c_int, aiq_signature_p, c_int64)
_fn("aiq_signature_add_link", c_int, aiq_signature_p, aiq_signature_p)
_fn("aiq_signature_add_link_error", c_int, aiq_signature_p, aiq_signature_p)
_fn("aiq_signature_to_json", c_int, _P(c_void_p), aiq_signature_p)
_fn("aiq_client_send_signature", c_int, _P(c_void_p), aiq_client_p, aiq_signature_p)
_fn("aiq_client_send_chain", c_int, _P(c_void_p), aiq_client_p, _P(aiq_signature_p), c_size_t)
_fn("aiq_client_send_group", c_int, _P(c_void_p), _P(c_void_p), aiq_client_p,
    _P(aiq_signature_p), c_size_t)
_fn("aiq_client_send_chord", c_int, _P(c_void_p), _P(c_void_p), aiq_client_p,
    _P(aiq_signature_p), c_size_t, aiq_signature_p)
_fn("aiq_client_save_group", c_int, aiq_client_p, c_char_p, _P(c_char_p), c_size_t)
_fn("aiq_client_restore_group", c_int, _P(c_void_p), aiq_client_p, c_char_p)
# beat.h (the periodic scheduler)
aiq_beat_p = c_void_p
_fn("aiq_beat_new", c_int, _P(aiq_beat_p), aiq_config_p)
_fn("aiq_beat_free", None, aiq_beat_p)
_fn("aiq_beat_load_file", c_int, aiq_beat_p, c_char_p)
_fn("aiq_beat_add_interval", c_int, aiq_beat_p, c_char_p, c_char_p, c_char_p, c_char_p, c_double,
    c_char_p)
_fn("aiq_beat_add_cron", c_int, aiq_beat_p, c_char_p, c_char_p, c_char_p, c_char_p, c_char_p,
    c_char_p)
_fn("aiq_beat_add_relative", c_int, aiq_beat_p, c_char_p, c_char_p, c_char_p, c_char_p,
    c_double, c_char_p)
_fn("aiq_beat_add_solar", c_int, aiq_beat_p, c_char_p, c_char_p, c_char_p, c_char_p, c_char_p,
    c_double, c_double, c_char_p)
_fn("aiq_beat_entry_count", c_size_t, aiq_beat_p)
_fn("aiq_beat_run", c_int, aiq_beat_p)
_fn("aiq_beat_stop", None, aiq_beat_p)
_fn("aiq_beat_sent_count", c_uint64, aiq_beat_p)

# similar.h
_fn("aiq_similar_open", c_int, _P(aiq_similar_p), aiq_config_p)
_fn("aiq_similar_free", None, aiq_similar_p)
_fn("aiq_similar_backend", c_char_p, aiq_similar_p)
_fn("aiq_similar_put", c_int, aiq_similar_p, c_char_p, c_char_p, _P(c_double), c_size_t)
_fn("aiq_similar_put_text", c_int, aiq_similar_p, c_char_p, c_char_p)
_fn("aiq_similar_to_track", c_int, _P(aiq_similar_list_p), aiq_similar_p, c_char_p, c_int)
_fn("aiq_similar_to_text", c_int, _P(aiq_similar_list_p), aiq_similar_p, c_char_p, c_int)
_fn("aiq_similar_list_free", None, aiq_similar_list_p)
_fn("aiq_similar_list_count", c_size_t, aiq_similar_list_p)
_fn("aiq_similar_list_track_id", c_char_p, aiq_similar_list_p, c_size_t)
_fn("aiq_similar_list_score", c_double, aiq_similar_list_p, c_size_t)
_fn("aiq_similar_list_json", c_int, _P(c_void_p), aiq_similar_list_p)
# worker.h, analyzer.h
_fn("aiq_worker_new", c_int, _P(aiq_worker_p), aiq_config_p)
_fn("aiq_worker_free", None, aiq_worker_p)
_fn("aiq_worker_register", c_int, aiq_worker_p, c_char_p, TASK_FN, c_void_p,
    DESTROY_FN)
_fn("aiq_worker_on_event", c_int, aiq_worker_p, EVENT_FN, c_void_p, DESTROY_FN)
_fn("aiq_worker_run", c_int, aiq_worker_p)
_fn("aiq_worker_stop", None, aiq_worker_p)
_fn("aiq_worker_error", c_char_p, aiq_worker_p)
_fn("aiq_worker_counter", c_int64, aiq_worker_p, c_int)
_fn("aiq_worker_add_analyzer", c_int, aiq_worker_p, c_char_p, ANALYZER_FN,
    c_void_p, DESTROY_FN)
_fn("aiq_lyrics_analyze", c_int, _P(c_void_p), c_char_p, c_char_p)
_fn("aiq_worker_load_plugin", c_int, aiq_worker_p, c_char_p)

del _name, _P


def enc(text: Optional[str]) -> Optional[bytes]:
    """UTF-8 encode an optional string for a ``const char *`` argument."""
    return None if text is None else text.encode("utf-8")


def dec(raw: Optional[bytes]) -> Optional[str]:
    """Decode a borrowed ``const char *`` (None stays None)."""
    return None if raw is None else raw.decode("utf-8", "replace")


def take_string(ptr: c_void_p) -> str:
    """Copy a library-allocated string into Python and release it with aiq_free()."""
    if not ptr.value:
        return ""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8", "replace")
    finally:
        lib.aiq_free(ptr)


def version() -> str:
    """Version string of the loaded library, e.g. ``"0.1.0"``."""
    return dec(lib.aiq_version_string()) or ""


# --- userdata registry ---------------------------------------------------
#
# The library holds a ``void *userdata`` for every callback registration and
# calls a destructor on it exactly once when it no longer needs it. Python
# objects cannot be handed to C as raw pointers safely, so userdata is a small
# integer token that keys this registry; the registry keeps the Python
# callable (and anything it needs) alive until the destructor pops it. The
# C-callable trampolines themselves are module-level CFUNCTYPE objects that
# live as long as the module, so no per-registration thunk can be collected
# while the library may still call it.

_registry: Dict[int, Any] = {}
_registry_lock = threading.Lock()
_tokens = itertools.count(1)


def hold(obj: Any) -> int:
    """Keep ``obj`` alive and return the token to pass as userdata."""
    with _registry_lock:
        token = next(_tokens)
        _registry[token] = obj
    return token


def lookup(userdata: Optional[int]) -> Any:
    """Object held under a userdata token (None when already released)."""
    return _registry.get(userdata or 0)


def held_count() -> int:
    """How many callback objects the library currently holds (for tests)."""
    return len(_registry)


def _release(userdata: Optional[int]) -> None:
    # Called by the library, exactly once per registration, on whichever
    # thread frees the owning handle. Must never raise into C.
    try:
        with _registry_lock:
            _registry.pop(userdata or 0, None)
    except BaseException:  # pragma: no cover - defensive
        pass


release_cb = DESTROY_FN(_release)
"""The destructor given with every registration; lives as long as the module."""
