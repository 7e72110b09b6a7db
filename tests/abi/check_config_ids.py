#!/usr/bin/python3
"""A misspelt configuration key, or a key read as the wrong type, does not compile.

Compiles three small translation units against lib/base/config_int.h with
the project's warning flags (warnings are errors): a correct read of every
type must compile; a read of a misspelt identifier and a read of a string
key through the integer reader must each fail, with the compiler naming
the problem.

usage: check_config_ids.py LIB_DIR SRC_INC BUILD_INC COMPILER...
"""
import os
import subprocess
import sys
import tempfile

PRELUDE = '#include "config_int.h"\nint64_t probe(const aiq_config *cfg);\n'
CASES = [
    ('correct reads', True, None,
     'int64_t probe(const aiq_config *cfg) {\n'
     '  return aiq__cfg_int(cfg, AIQ_CFG_REDIS_SOCKET_TIMEOUT_MS) +\n'
     '         (int64_t)aiq__cfg_bool(cfg, AIQ_CFG_AMQP_SSL_VERIFY) +\n'
     '         (int64_t)*aiq__cfg_str(cfg, AIQ_CFG_LLM_MODEL);\n}\n'),
    ('misspelt key', False, 'AIQ_CFG_REDIS_SOCKET_TIMEOUT_M',
     'int64_t probe(const aiq_config *cfg) {\n'
     '  return aiq__cfg_int(cfg, AIQ_CFG_REDIS_SOCKET_TIMEOUT_M);\n}\n'),
    ('string key read as an integer', False, 'enum',
     'int64_t probe(const aiq_config *cfg) {\n'
     '  return aiq__cfg_int(cfg, AIQ_CFG_LLM_MODEL);\n}\n'),
    ('boolean key read as an integer', False, 'enum',
     'int64_t probe(const aiq_config *cfg) {\n'
     '  return aiq__cfg_int(cfg, AIQ_CFG_AMQP_SSL_VERIFY);\n}\n'),
]


def main(lib, src_inc, build_inc, compiler):
    incs = ['-I' + src_inc, '-I' + build_inc]
    for d in ('base', 'celery', 'core', 'worker', 'beat', 'brokers/amqp', 'brokers/redis', 'analyzers',
              'stores'):
        incs.append('-I' + os.path.join(lib, d))
    flags = ['-std=c11', '-Wall', '-Wextra', '-Wpedantic', '-Werror', '-D_GNU_SOURCE',
             '-DAIQ_BUILDING_LIBRARY', '-fsyntax-only']
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (what, should_compile, needle, body) in enumerate(CASES):
            tu = os.path.join(tmp, 'probe%d.c' % i)
            with open(tu, 'w') as f:
                f.write(PRELUDE + body)
            r = subprocess.run(compiler + flags + incs + [tu], capture_output=True, text=True)
            out = r.stdout + r.stderr
            ok = (r.returncode == 0) == should_compile and (needle is None or needle in out)
            print('%-32s %s' % (what, 'ok' if ok else 'WRONG'))
            if not ok:
                bad += 1
                print('  expected it to %s; compiler said:\n%s'
                      % ('compile' if should_compile else 'fail naming ' + repr(needle), out))
    return 1 if bad else 0


if __name__ == '__main__':
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
