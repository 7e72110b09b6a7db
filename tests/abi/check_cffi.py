#!/usr/bin/python3
"""Check that the public API is usable from Python cffi.

aiqueue.h is preprocessed against empty stand-ins for <stddef.h> and
<stdint.h> (cffi knows size_t, int64_t, ... itself) with attributes
stripped, and the result must be accepted by FFI().cdef(). The library is
then opened with ffi.dlopen(); aiq_version_string() must equal the project
version and match aiq_version_number(), and aiq_strerror(AIQ_EINVAL) must be a
non-empty string.

usage: check_cffi.py LIBAIQUEUE.so VERSION SRC_INC BUILD_INC C-COMPILER...
"""
import os
import subprocess
import sys
import tempfile

try:
    import cffi
except ImportError:
    print('python3-cffi is not installed: skipped')
    sys.exit(77)


def preprocess(compiler, src_inc, build_inc):
    with tempfile.TemporaryDirectory() as stubs:
        for h in ('stddef.h', 'stdint.h'):
            open(os.path.join(stubs, h), 'w').close()
        cmd = compiler + ['-E', '-P', '-std=c99', '-nostdinc', '-I' + stubs,
                          '-I' + src_inc, '-I' + build_inc,
                          '-D__attribute__(x)=', '-D__declspec(x)=', '-']
        r = subprocess.run(cmd, input='#include <aiqueue/aiqueue.h>\n',
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit('preprocessing aiqueue.h failed:\n' + r.stderr)
        return r.stdout


def main(lib_path, version, src_inc, build_inc, compiler):
    ffi = cffi.FFI()
    cdef = preprocess(compiler, src_inc, build_inc)
    try:
        ffi.cdef(cdef)
    except cffi.CDefError as e:
        numbered = ''.join('%4d  %s\n' % (i, l) for i, l in
                           enumerate(cdef.splitlines(), 1))
        print('cffi cannot parse the preprocessed aiqueue.h:\n%s\n%s' % (e, numbered))
        return 1
    lib = ffi.dlopen(os.path.abspath(lib_path))
    def text(p):  # a returned const char *, or '' for NULL
        return ffi.string(p).decode() if p != ffi.NULL else ''
    try:
        got = text(lib.aiq_version_string())
        number = lib.aiq_version_number()
        msg = text(lib.aiq_strerror(lib.AIQ_EINVAL))
    except AttributeError as e:  # cffi's message names the missing symbol
        print('symbol missing from %s: %s' % (lib_path, e))
        return 1
    major, minor, patch = (int(x) for x in version.split('.')[:3])
    print('aiq_version_string() = %r, aiq_version_number() = %#x, '
          'aiq_strerror(%d) = %r' % (got, number, lib.AIQ_EINVAL, msg))
    errors = []
    if got != version:
        errors.append('aiq_version_string() is %r, expected %r' % (got, version))
    if number != (major << 16) | (minor << 8) | patch:
        errors.append('aiq_version_number() is %#x, expected %s' % (number, version))
    if lib.AIQ_EINVAL != -2 or not msg:
        errors.append('aiq_strerror(-2) is empty or AIQ_EINVAL != -2')
    print('\n'.join(errors) or 'ok')
    return 1 if errors else 0


if __name__ == '__main__':
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
