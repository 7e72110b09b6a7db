#!/usr/bin/python3
"""Configuration keys are declared once, by their owners, and read by identifier.

Reads every key declaration list (lib/**/*.def: AIQ_KEY_STR/INT/BOOL lines)
and fails when:
  - a list is not included by lib/base/config_keys_all.def (its keys would
    silently not exist);
  - a key is declared twice;
  - any C file under lib/ names a dotted key as a string literal
    ("redis.poll_ms"), comments aside (the one dotless key, "queue", is also
    an everyday JSON field name, so the reader check below covers it): the library reads keys through their AIQ_CFG_*
    identifiers (lib/base/config_keys.h), so a typo fails to compile and no
    default is written a second time beside a read;
  - any C file under lib/ still calls the string-keyed readers
    aiq_config_get*() or the retired aiq__config_str()/aiq__config_int().

usage: check_config_keys.py LIB_DIR
"""
import glob
import os
import re
import sys

DECL = re.compile(r'^\s*AIQ_KEY_(?:STR|INT|BOOL)\(\s*(\w+)\s*,\s*"([^"]+)"', re.M)
COMMENT = re.compile(r'/\*.*?\*/|//[^\n]*', re.S)
READERS = re.compile(r'\b(aiq_config_get(?:_int)?|aiq__config_str|aiq__config_int)\s*\(')


def strip_comments(text):
    # Keep string literals intact: only drop comments outside them.
    out, i = [], 0
    for m in re.finditer(r'"(?:\\.|[^"\\\n])*"|' + COMMENT.pattern, text, re.S):
        out.append(text[i:m.start()])
        out.append(m.group(0) if m.group(0).startswith('"') else ' ')
        i = m.end()
    out.append(text[i:])
    return ''.join(out)


def main(lib):
    errors = []
    lists = sorted(glob.glob(os.path.join(lib, '**', '*.def'), recursive=True))
    all_def = os.path.join(lib, 'base', 'config_keys_all.def')
    included = set(re.findall(r'#include\s+"([^"]+)"', open(all_def, encoding='utf-8').read()))
    keys = {}
    for path in lists:
        text = open(path, encoding='utf-8').read()
        found = DECL.findall(text)
        if not found:
            continue
        if os.path.basename(path) not in included:
            errors.append('%s declares keys but lib/base/config_keys_all.def does not include it'
                          % path)
        for ident, name in found:
            if name in keys:
                errors.append('key %s declared twice (%s and %s)' % (name, keys[name], path))
            keys[name] = path
    if len(keys) < 40:
        errors.append('only %d keys declared under %s' % (len(keys), lib))
    for path in sorted(glob.glob(os.path.join(lib, '**', '*.[ch]'), recursive=True)):
        rel = os.path.relpath(path, lib)
        code = strip_comments(open(path, encoding='utf-8').read())
        for lit in re.findall(r'"((?:\\.|[^"\\\n])*)"', code):
            if lit in keys and '.' in lit:  # "queue" is also a JSON field name
                errors.append('%s names the key "%s" as a string: read it as its AIQ_CFG_* '
                              'identifier' % (rel, lit))
        for fn in READERS.findall(code):
            if rel.startswith('base' + os.sep + 'config'):
                continue  # the configuration itself (and its environment reader)
            errors.append('%s calls %s(): the library reads keys with aiq__cfg_*()'
                          % (rel, fn))
    for e in errors:
        print(e)
    if errors:
        return 1
    print('%d keys in %d lists; no key is read by name in %s' %
          (len(keys), len(included), lib))
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
