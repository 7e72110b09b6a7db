#!/usr/bin/python3
"""Check that headers, linker map and shared library agree on the API.

* every `AIQ_API` declaration in the public headers (SRC_INC/aiqueue/*.h,
  with version.h taken from the build dir, where meson generates it) must
  be listed in a `global:` section of lib/aiqueue.map, and vice versa;
* no symbol may be listed twice in the map;
* every declared symbol must be exported by libaiqueue.so (nm -D), i.e.
  actually implemented.

usage: check_map.py NM LIBAIQUEUE.so MAP SRC_INC BUILD_INC
"""
import glob
import os
import re
import subprocess
import sys

COMMENTS = re.compile(r'/\*.*?\*/|//[^\n]*', re.S)
DIRECTIVES = re.compile(r'^[ \t]*#(?:[^\n]*\\\n)*[^\n]*', re.M)


def header_symbols(src_inc, build_inc):
    """Map each AIQ_API symbol to the header declaring it."""
    paths = sorted(glob.glob(os.path.join(src_inc, 'aiqueue', '*.h')))
    paths.append(os.path.join(build_inc, 'aiqueue', 'version.h'))
    decls = {}
    for path in paths:
        with open(path, encoding='utf-8') as f:
            text = DIRECTIVES.sub('', COMMENTS.sub(' ', f.read()))
        for m in re.finditer(r'\bAIQ_API\b([^;{]*)', text):
            decl = m.group(1)
            # A function: the identifier before the first '('; otherwise
            # (an exported variable) the last identifier.
            name = re.search(r'(\w+)\s*\(', decl) or re.search(r'(\w+)\W*$', decl)
            decls[name.group(1)] = os.path.basename(path)
    return decls


def map_symbols(path):
    """Names listed in the global: sections of a version script."""
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'#[^\n]*', '', COMMENTS.sub(' ', f.read()))
    names = []
    for block in re.findall(r'\bglobal\s*:(.*?)(?=\blocal\s*:|\})', text, re.S):
        names += [n.strip() for n in block.split(';') if n.strip()]
    return names


def exported(nm, lib):
    out = subprocess.run([nm, '-D', '--defined-only', lib], check=True,
                         capture_output=True, text=True).stdout
    return {l.split()[-1].split('@')[0] for l in out.splitlines() if l.strip()}


def main(nm, lib, map_path, src_inc, build_inc):
    decls = header_symbols(src_inc, build_inc)
    listed = map_symbols(map_path)
    dynsym = exported(nm, lib)
    problems = []
    for n in sorted({n for n in listed if listed.count(n) > 1}):
        problems.append('listed more than once in the map: %s' % n)
    for n in sorted(set(decls) - set(listed)):
        problems.append('declared in %s but missing from the map: %s' % (decls[n], n))
    for n in sorted(set(listed) - set(decls)):
        problems.append('in the map but declared in no public header: %s' % n)
    for n in sorted(set(decls) - dynsym):
        problems.append('declared in %s but not exported by %s (not implemented?): %s'
                        % (decls[n], os.path.basename(lib), n))
    for p in problems:
        print(p)
    print('%d declared, %d in the map, %d exported by the library; %d problems'
          % (len(decls), len(set(listed)), len(dynsym & set(decls)), len(problems)))
    return 1 if problems else 0


if __name__ == '__main__':
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
