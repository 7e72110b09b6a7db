#!/usr/bin/python3
"""Compile and run the C snippet under README.md's "A taste of the API".

The snippet is taken from README.md itself (the first ```c block after that
heading), compiled as strict C11 with warnings as errors against the public
headers and the shared library only, and run on the embedded memory://
broker with no AIQUEUE_*/CELERY_* variables set. It must print
"SUCCESS -> 5" and exit 0, so the README stays true.

usage: check_readme.py README.md SRC_INC BUILD_INC LIBDIR SANITIZE COMPILER...
"""
import os
import re
import subprocess
import sys
import tempfile


def extract(readme):
    text = open(readme, encoding='utf-8').read()
    head = text.find('## A taste of the API\n')
    if head < 0:
        sys.exit('README.md has no "## A taste of the API" section')
    m = re.compile(r'^```c\n(.*?)^```$', re.S | re.M).search(text, head)
    if m is None:
        sys.exit('no ```c block after "## A taste of the API"')
    return m.group(1)


def main(readme, src_inc, build_inc, libdir, sanitize, cc):
    code = extract(readme)
    flags = ['-std=c11', '-Wall', '-Wextra', '-pedantic', '-Werror', '-Wstrict-prototypes',
             '-D_POSIX_C_SOURCE=200809L']
    if sanitize and sanitize != 'none':
        flags.append('-fsanitize=' + sanitize)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('AIQUEUE_', 'CELERY_'))}
    env['LD_LIBRARY_PATH'] = libdir + os.pathsep + env.get('LD_LIBRARY_PATH', '')
    env.setdefault('ASAN_OPTIONS', 'detect_leaks=1')
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'taste.c')
        exe = os.path.join(tmp, 'taste')
        with open(src, 'w', encoding='utf-8') as f:
            f.write(code)
        cmd = cc + flags + ['-I' + src_inc, '-I' + build_inc, src, '-o', exe,
                            '-L' + libdir, '-laiqueue', '-pthread']
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print('$ ' + ' '.join(cmd) + '\n' + r.stdout + r.stderr)
            print('the README snippet does not compile')
            return 1
        try:
            r = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=60)
        except subprocess.TimeoutExpired:
            print('the README snippet did not finish within 60 s')
            return 1
    print('stdout: %r\nstderr: %r\nexit: %d' % (r.stdout, r.stderr, r.returncode))
    if r.returncode != 0 or r.stdout != 'SUCCESS -> 5\n':
        print('the README snippet must print "SUCCESS -> 5" and exit 0')
        return 1
    return 0


if __name__ == '__main__':
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
                  sys.argv[6:]))
