#!/usr/bin/python3
"""Generate a cffi cdef for libaiqueue from its public headers.

The umbrella header <aiqueue/aiqueue.h> is run through the C preprocessor
against empty stand-ins for <stddef.h> and <stdint.h> (cffi knows size_t,
int64_t, ... itself), with attributes stripped: what is left is plain
declarations that ``cffi.FFI().cdef()`` accepts. This is the same approach as
tests/abi/check_cffi.py, packaged for programs that bind the library with
cffi in ABI mode::

    ffi = cffi.FFI()
    ffi.cdef(gen_cdef.generate())
    lib = ffi.dlopen("libaiqueue.so.0")

Headers are looked up in the -I directories given, else in the installed
location that ``pkg-config --cflags-only-I libaiqueue`` reports, else in the
compiler's default include path.

usage: gen_cdef.py [-I DIR]... [--cc COMPILER] [-o FILE]
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

STUB_HEADERS = ("stddef.h", "stdint.h")


def pkg_config_includes() -> List[str]:
    """-I directories of the installed libaiqueue, [] when pkg-config has none."""
    if shutil.which("pkg-config") is None:
        return []
    r = subprocess.run(["pkg-config", "--cflags-only-I", "libaiqueue"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return []
    return [f[2:] for f in shlex.split(r.stdout) if f.startswith("-I")]


def default_includes() -> List[str]:
    """Where the installed headers are: pkg-config's answer, else /usr/include
    and /usr/local/include (the stubs hide the system headers, so the
    compiler's default path cannot be relied on)."""
    return pkg_config_includes() or ["/usr/local/include", "/usr/include"]


def generate(include_dirs: Optional[Sequence[str]] = None,
             cc: Optional[Sequence[str]] = None) -> str:
    """Return the cdef text for <aiqueue/aiqueue.h>.

    Args:
        include_dirs: directories holding ``aiqueue/*.h`` (for a build tree:
            the source ``include`` and the build ``include`` with the
            generated ``version.h``). Default: see :func:`default_includes`.
        cc: the C compiler command (default ``$CC`` or ``cc``).

    Raises:
        RuntimeError: the preprocessor failed (its message is included).
    """
    dirs = list(include_dirs) if include_dirs else default_includes()
    compiler = list(cc) if cc else shlex.split(os.environ.get("CC", "cc"))
    with tempfile.TemporaryDirectory() as stubs:
        for h in STUB_HEADERS:
            open(os.path.join(stubs, h), "w").close()
        cmd = compiler + ["-E", "-P", "-std=c99", "-nostdinc", "-I" + stubs]
        cmd += ["-I" + d for d in dirs]
        cmd += ["-D__attribute__(x)=", "-D__declspec(x)=", "-"]
        r = subprocess.run(cmd, input="#include <aiqueue/aiqueue.h>\n",
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("preprocessing <aiqueue/aiqueue.h> failed:\n" + r.stderr)
    # Keep the output readable: drop blank lines the preprocessor leaves.
    return "\n".join(line for line in r.stdout.splitlines() if line.strip()) + "\n"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-I", dest="include", action="append", default=[],
                   help="directory holding aiqueue/*.h (repeatable)")
    p.add_argument("--cc", help="C compiler command (default $CC or cc)")
    p.add_argument("-o", dest="output", help="write here instead of stdout")
    a = p.parse_args(argv)
    try:
        text = generate(a.include, shlex.split(a.cc) if a.cc else None)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
