"""The headers drive cffi in ABI mode: generate the cdef with gen_cdef.py,
dlopen the library, and run an enqueue/consume round trip with a cffi
callback as the task handler."""
from __future__ import annotations

import json
import os
import sys
import threading
import uuid

import pytest

cffi = pytest.importorskip("cffi")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import gen_cdef  # noqa: E402


def _include_dirs() -> list:
    """AIQUEUE_INCLUDE_DIRS (set by the meson test), else the source tree's
    include/ plus the build tree's include/ next to AIQUEUE_LIBRARY."""
    env = os.environ.get("AIQUEUE_INCLUDE_DIRS")
    if env:
        return env.split(os.pathsep)
    src = os.path.join(HERE, "..", "..", "..", "include")
    dirs = [src]
    lib = os.environ.get("AIQUEUE_LIBRARY")
    if lib:
        dirs.append(os.path.join(os.path.dirname(os.path.dirname(lib)), "include"))
    return dirs


@pytest.fixture(scope="module")
def ffi_lib():
    ffi = cffi.FFI()
    ffi.cdef(gen_cdef.generate(_include_dirs()))
    lib = ffi.dlopen(os.environ.get("AIQUEUE_LIBRARY", "libaiqueue.so.0"))
    return ffi, lib


def _ok(ffi, lib, rc: int) -> None:
    assert rc == lib.AIQ_OK, ffi.string(lib.aiq_error_last()).decode()


def test_cdef_covers_the_api(ffi_lib) -> None:
    ffi, lib = ffi_lib
    assert lib.AIQ_ETIMEDOUT == -5 and lib.AIQ_STATE_SUCCESS == 5
    assert ffi.string(lib.aiq_version_string()).decode().count(".") == 2
    for name in ("aiq_client_enqueue", "aiq_worker_register", "aiq_task_succeed",
                 "aiq_result_meta_json", "aiq_worker_add_analyzer", "aiq_log_set_handler"):
        assert getattr(lib, name)


def test_round_trip_with_cffi_handler(ffi_lib) -> None:
    ffi, lib = ffi_lib
    url = ("memory://cffi-" + uuid.uuid4().hex).encode()
    destroyed = []

    @ffi.callback("void(aiq_task *, void *)")
    def add(task, userdata):
        args = json.loads(ffi.string(lib.aiq_task_args_json(task)))
        lib.aiq_task_succeed(task, json.dumps(sum(args)).encode())

    @ffi.callback("void(void *)")
    def destroy(userdata):
        destroyed.append(ffi.cast("intptr_t", userdata))

    cfg_p = ffi.new("aiq_config **")
    _ok(ffi, lib, lib.aiq_config_new(cfg_p))
    cfg = cfg_p[0]
    for key in (b"broker.url", b"result.url"):
        _ok(ffi, lib, lib.aiq_config_set_str(cfg, key, url))
    _ok(ffi, lib, lib.aiq_config_set_int(cfg, b"worker.concurrency", 2))
    assert lib.aiq_config_set_int(cfg, b"worker.concurency", 2) == lib.AIQ_ENOTFOUND

    w_p = ffi.new("aiq_worker **")
    _ok(ffi, lib, lib.aiq_worker_new(w_p, cfg))
    worker = w_p[0]
    _ok(ffi, lib, lib.aiq_worker_register(worker, b"tasks.add", add,
                                          ffi.cast("void *", 7), destroy))
    run_rc = []
    t = threading.Thread(target=lambda: run_rc.append(lib.aiq_worker_run(worker)))
    t.start()

    c_p = ffi.new("aiq_client **")
    _ok(ffi, lib, lib.aiq_client_new(c_p, cfg))
    client = c_p[0]
    lib.aiq_config_free(cfg)
    try:
        id_p = ffi.new("char **")
        _ok(ffi, lib, lib.aiq_client_enqueue(id_p, client, b"tasks.add", b"[2, 3, 4]",
                                             ffi.NULL, ffi.NULL))
        task_id = id_p[0]
        r_p = ffi.new("aiq_result **")
        _ok(ffi, lib, lib.aiq_client_wait(r_p, client, task_id, 10000))
        r = r_p[0]
        assert lib.aiq_result_state(r) == lib.AIQ_STATE_SUCCESS
        assert ffi.string(lib.aiq_state_name(lib.aiq_result_state(r))) == b"SUCCESS"
        assert json.loads(ffi.string(lib.aiq_result_json(r))) == 9
        assert ffi.string(lib.aiq_result_task_id(r)) == ffi.string(task_id)
        meta = json.loads(ffi.string(lib.aiq_result_meta_json(r)))
        assert meta["status"] == "SUCCESS" and meta["result"] == 9
        lib.aiq_result_free(r)
        lib.aiq_free(task_id)
    finally:
        lib.aiq_worker_stop(worker)
        t.join(10)
        lib.aiq_client_free(client)
    assert not t.is_alive() and run_rc == [lib.AIQ_OK]
    assert lib.aiq_worker_counter(worker, 0) == 1
    assert destroyed == []
    lib.aiq_worker_free(worker)
    assert destroyed == [7]  # the destructor ran exactly once, on free
