#!/usr/bin/python3
"""Check that every public header compiles on its own.

For each header (SRC_INC/aiqueue/*.h plus the generated BUILD_INC/aiqueue/
version.h) a translation unit that includes only that header (twice, to
exercise the include guard) is compiled with the given compiler and flags.
Every failing header is reported with the compiler's output.

usage: check_headers.py c|c++ SRC_INC BUILD_INC COMPILER... -- FLAGS...
With no compiler (no C++ toolchain), exits 77 so meson marks it skipped.
"""
import glob
import os
import subprocess
import sys
import tempfile


def main(lang, src_inc, build_inc, rest):
    sep = rest.index('--')
    compiler, flags = rest[:sep], rest[sep + 1:]
    if not compiler:
        print('no %s compiler: skipped' % lang)
        return 77
    names = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(src_inc, 'aiqueue', '*.h')))
    names = sorted(set(names) | {'version.h'})
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            tu = os.path.join(tmp, 'only_%s.%s' % (name[:-2], 'cpp' if lang == 'c++' else 'c'))
            with open(tu, 'w') as f:
                f.write('#include <aiqueue/%s>\n#include <aiqueue/%s>\n'
                        'typedef int aiq_header_check_nonempty;\n' % (name, name))
            cmd = compiler + flags + ['-I' + src_inc, '-I' + build_inc, '-fsyntax-only', tu]
            r = subprocess.run(cmd, capture_output=True, text=True)
            print('%-12s %s' % (name, 'ok' if r.returncode == 0 else 'FAILED'))
            if r.returncode != 0:
                failed.append(name)
                print('  $ ' + ' '.join(cmd) + '\n' + r.stdout + r.stderr)
    if failed:
        print('headers that do not compile alone as %s %s: %s'
              % (lang, ' '.join(flags), ', '.join(failed)))
    return 1 if failed else 0


if __name__ == '__main__':
    if len(sys.argv) < 5 or '--' not in sys.argv:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
