#!/usr/bin/python3
"""Every exported function is documented in docs/*.md.

Reads the global symbols of every node of the linker map (lib/aiqueue.map)
and fails listing those that no docs/*.md names as a whole word.

usage: check_docs.py MAP DOCS_DIR
"""
import glob
import os
import re
import sys


def map_symbols(path):
    text = re.sub(r'#[^\n]*', '', open(path, encoding='utf-8').read())
    syms = []
    for block in re.findall(r'global:(.*?)(?:local:|\})', text, re.S):
        syms += re.findall(r'\b(aiq_[A-Za-z0-9_]+)\s*;', block)
    return sorted(set(syms))


def main(map_path, docs_dir):
    syms = map_symbols(map_path)
    if not syms:
        print('no symbols read from ' + map_path)
        return 1
    text = ''
    for md in sorted(glob.glob(os.path.join(docs_dir, '*.md'))):
        text += open(md, encoding='utf-8').read() + '\n'
    missing = [s for s in syms if not re.search(r'(?<![A-Za-z0-9_])%s(?![A-Za-z0-9_])' % s, text)]
    if missing:
        print('%d of %d exported functions are mentioned in no docs/*.md '
              '(add them to docs/api.md):' % (len(missing), len(syms)))
        for s in missing:
            print('  ' + s)
        return 1
    print('all %d exported functions are documented in docs/*.md' % len(syms))
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
