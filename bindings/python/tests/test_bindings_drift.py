"""The ctypes declarations in aiqueue._lib cannot drift from the headers.

The public headers are preprocessed (gen_cdef.py) and parsed by cffi's C
parser; every function they declare must be bound in aiqueue._lib with the
same argument and return types (compared by kind and size: a ``const char
*`` is ``c_char_p``, any other data pointer a pointer, callbacks by their own
signature), and every enumerator the Python package mirrors (status codes,
states, events, counters, log levels) must have the header's value.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Dict, List

import pytest

cffi = pytest.importorskip("cffi")
from cffi import model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import gen_cdef  # noqa: E402

import aiqueue  # noqa: E402
from aiqueue import _lib, client, errors, worker  # noqa: E402

from test_cffi_abi import _include_dirs  # noqa: E402

# C primitive name -> the ctypes type that must declare it.
_PRIMITIVES = {
    "int": ctypes.c_int, "unsigned int": ctypes.c_uint, "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t, "double": ctypes.c_double,
    "_Bool": ctypes.c_bool, "long": ctypes.c_long,
}


@pytest.fixture(scope="module")
def parsed() -> Any:
    ffi = cffi.FFI()
    ffi.cdef(gen_cdef.generate(_include_dirs()))
    return ffi


def _functions(ffi: Any) -> Dict[str, Any]:
    decls = ffi._parser._declarations
    return {k.split(" ", 1)[1]: v[0] for k, v in decls.items() if k.startswith("function ")}


def _constants(ffi: Any) -> Dict[str, int]:
    return dict(ffi._parser._int_constants)


def _c_kind(t: Any) -> Any:
    """A comparable description of a C type from cffi's model."""
    if isinstance(t, model.VoidType):
        return "void"
    if isinstance(t, (model.EnumType,)):
        return ("prim", ctypes.sizeof(ctypes.c_int), True)
    if isinstance(t, model.PrimitiveType):
        ct = _PRIMITIVES.get(t.name)
        assert ct is not None, "no ctypes mapping for C type %s" % t.name
        return ("prim", ctypes.sizeof(ct), ct(-1).value == -1 if ct is not ctypes.c_double
                else "float")
    if isinstance(t, model.FunctionPtrType):
        return ("fn", _c_kind(t.result), tuple(_c_kind(a) for a in t.args))
    if isinstance(t, model.PointerType):
        to = t.totype
        if isinstance(to, model.PrimitiveType) and to.name == "char":
            return "str"
        return "ptr"
    raise AssertionError("unexpected C type %r" % t)


def _py_kind(t: Any) -> Any:
    """The same description of a ctypes declaration."""
    if t is None:
        return "void"
    if t is ctypes.c_char_p:
        return "str"
    if t is ctypes.c_void_p or (isinstance(t, type) and issubclass(t, ctypes._Pointer)):
        return "ptr"
    if isinstance(t, type) and issubclass(t, ctypes._CFuncPtr):
        return ("fn", _py_kind(t._restype_), tuple(_py_kind(a) for a in t._argtypes_))
    if t is ctypes.c_double:
        return ("prim", ctypes.sizeof(t), "float")
    if isinstance(t, type) and issubclass(t, ctypes._SimpleCData):
        return ("prim", ctypes.sizeof(t), t(-1).value == -1)
    raise AssertionError("unexpected ctypes type %r" % t)


def test_every_header_function_is_bound_with_its_types(parsed: Any) -> None:
    funcs = _functions(parsed)
    assert len(funcs) > 70, "the headers declare suspiciously few functions"
    problems: List[str] = []
    for name, ftype in sorted(funcs.items()):
        f = getattr(_lib.lib, name, None)
        if f is None:
            problems.append("%s: not exported by the library" % name)
            continue
        if f.argtypes is None:
            problems.append("%s: declared in the headers, not bound in aiqueue._lib" % name)
            continue
        want = [_c_kind(a) for a in ftype.args]
        got = [_py_kind(a) for a in f.argtypes]
        if want != got:
            problems.append("%s: arguments %s in C, %s in ctypes" % (name, want, got))
        # ctypes declares a returned `char *` that the caller frees as
        # c_void_p, to keep the pointer for aiq_free(): both are "pointers".
        rw, rg = _c_kind(ftype.result), _py_kind(f.restype)
        if rw != rg and not (rw == "str" and rg == "ptr"):
            problems.append("%s: returns %s in C, %s in ctypes" % (name, rw, rg))
    assert not problems, "\n".join(problems)


def test_no_binding_for_a_function_the_headers_lack(parsed: Any) -> None:
    funcs = set(_functions(parsed))
    bound = set(_lib.BOUND)
    assert bound - funcs == set(), "bound in aiqueue._lib but not in the headers"
    assert funcs - bound == set(), "in the headers but not bound"


def test_status_codes_match_the_header(parsed: Any) -> None:
    consts = _constants(parsed)
    codes = {k: v for k, v in consts.items() if k == "AIQ_OK" or k == "AIQ_ERROR"
             or (k.startswith("AIQ_E") and not k.startswith("AIQ_EVENT_"))}
    assert len(codes) >= 18
    for cname, value in codes.items():
        pyname = cname[len("AIQ_"):]
        assert getattr(errors, pyname, None) == value, (cname, value)
        if value < 0 and cname != "AIQ_ERROR":
            assert errors.error_for(value).code == value, "no exception class for %s" % cname


def test_states_match_the_header(parsed: Any) -> None:
    consts = _constants(parsed)
    states = {k[len("AIQ_STATE_"):]: v for k, v in consts.items() if k.startswith("AIQ_STATE_")}
    assert len(states) == 8
    for name, value in states.items():
        assert getattr(client, name) == name
        assert client.STATE_NUMBERS[name] == value
        assert _lib.dec(_lib.lib.aiq_state_name(value)) == name
    assert set(client.STATE_NUMBERS) == set(states)
    assert client.READY_STATES == {n for n, v in states.items()
                                   if _lib.lib.aiq_state_is_ready(v)}


def test_events_counters_and_log_levels_match_the_header(parsed: Any) -> None:
    consts = _constants(parsed)
    events = {k[len("AIQ_EVENT_"):]: v for k, v in consts.items() if k.startswith("AIQ_EVENT_")}
    assert {e.name: e.value for e in worker.Event} == events
    counters = {k[len("AIQ_COUNTER_"):]: v for k, v in consts.items()
                if k.startswith("AIQ_COUNTER_")}
    assert {n.upper().replace("DEAD_LETTERED", "DEAD"): i
            for n, i in worker.COUNTERS.items()} == counters
    levels = {v for k, v in consts.items() if k.startswith("AIQ_LOG_")}
    assert set(aiqueue.LOG_LEVELS.values()) == levels


def test_public_names_and_typing_marker() -> None:
    for name in aiqueue.__all__:
        assert hasattr(aiqueue, name), name
    assert os.path.exists(os.path.join(os.path.dirname(aiqueue.__file__), "py.typed"))
    for mod in (aiqueue.app, client, worker, errors, aiqueue.config):
        assert mod.__all__, mod.__name__
        for name in mod.__all__:
            assert hasattr(mod, name), (mod.__name__, name)


def test_helpers_over_the_newer_functions(worker: Any) -> None:
    assert "s3cret" not in aiqueue.redact_url("redis://:s3cret@127.0.0.1:6379/0")
    aiqueue.check_broker_url("memory://")
    aiqueue.check_store_url("memory://")
    with pytest.raises(aiqueue.Unsupported):
        aiqueue.check_broker_url("nosuch://x")
    import datetime
    t = aiqueue.parse_iso8601("2030-01-02T03:04:05.5+02:00")
    assert t == datetime.datetime(2030, 1, 2, 1, 4, 5, 500000, tzinfo=datetime.timezone.utc)
    with pytest.raises(aiqueue.InvalidArgument):
        aiqueue.parse_iso8601("2023-02-29T00:00:00")
    with pytest.raises(aiqueue.NotFound):
        worker.load_plugin("/nonexistent/libnothing.so")
    with pytest.raises(TypeError):
        worker.load_plugin(None)  # type: ignore[arg-type]


def _unannotated(obj: Any, where: str) -> List[str]:
    import inspect
    missing: List[str] = []
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return missing
    for p in sig.parameters.values():
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty:
            missing.append("%s(%s)" % (where, p.name))
    if sig.return_annotation is inspect.Signature.empty and not where.endswith("__init__"):
        missing.append("%s -> ?" % where)
    return missing


def test_public_api_has_type_hints() -> None:
    import inspect
    missing: List[str] = []
    for name in aiqueue.__all__:
        obj = getattr(aiqueue, name)
        if inspect.isfunction(obj):
            missing += _unannotated(obj, name)
        elif inspect.isclass(obj) and obj.__module__.startswith("aiqueue"):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                if inspect.isfunction(member):
                    missing += _unannotated(member, "%s.%s" % (name, attr))
    assert not missing, "public callables without type hints: %s" % ", ".join(missing)
