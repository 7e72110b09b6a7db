#!/usr/bin/python3
"""Check the dynamic symbol table of libaiqueue.so.

Every exported (defined) symbol must start with the public prefix `aiq_`,
must not use the private prefix `aiq__`, and must be bound to a version node
of lib/aiqueue.map (an unversioned export means the version script was not
applied). The version node symbols themselves (e.g. AIQUEUE_0.1) are skipped.

usage: check_exports.py NM LIBAIQUEUE.so
"""
import re
import subprocess
import sys

NODE = re.compile(r'^AIQUEUE_[0-9.]+$')


def main(nm, lib):
    out = subprocess.run([nm, '-D', '--defined-only', lib], check=True,
                         capture_output=True, text=True).stdout
    bad, unversioned, count = [], [], 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        kind, sym = fields[-2], fields[-1]
        name, _, version = sym.partition('@')
        if kind == 'A' and NODE.match(name):
            continue
        count += 1
        if not name.startswith('aiq_') or name.startswith('aiq__'):
            bad.append('%s %s' % (kind, sym))
        elif not version:
            unversioned.append(name)
    for s in bad:
        print('exported symbol outside the public aiq_ namespace: ' + s)
    for s in unversioned:
        print('exported symbol without a version node (map not applied?): ' + s)
    print('%d exported symbols checked, %d bad, %d unversioned'
          % (count, len(bad), len(unversioned)))
    return 1 if bad or unversioned else 0


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
