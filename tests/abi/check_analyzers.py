#!/usr/bin/python3
"""The analyzers and the core stay apart.

Fails when:
  - a file of lib/analyzers/ includes a private header of the core
    (lib/core, lib/celery, lib/worker) other than analyzer.h, the one
    interface an analyzer gets (worker_int.h would show it the task's
    internals);
  - a file of lib/core or lib/worker includes a header of lib/analyzers/,
    or names an analyzer's own functions (aiq_lyrics_*, aiq__llm_*,
    aiq__lyrics_*) other than the aiq__<name>_analyzer entries that
    registry.c's table lists (as broker.c lists the drivers' ops);
  - lib/worker/analyze_task.c reads a field of struct aiq_task: it uses
    the public accessors as any handler does.

usage: check_analyzers.py LIB_DIR
"""
import glob
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
COMMENT = re.compile(r'/\*.*?\*/|//[^\n]*', re.S)
ANALYZER_SYMBOL = re.compile(r'\b(aiq_lyrics_\w+|aiq__llm_\w+|aiq__lyrics_\w+)\b')


def code_of(path):
    return COMMENT.sub(' ', open(path, encoding='utf-8').read())


def headers_in(lib, *dirs):
    found = set()
    for d in dirs:
        found |= {os.path.basename(p) for p in glob.glob(os.path.join(lib, d, '**', '*.h'),
                                                          recursive=True)}
    return found


def main(lib):
    errors = []
    core_headers = headers_in(lib, 'core', 'celery', 'worker') - {'analyzer.h'}
    analyzer_headers = headers_in(lib, 'analyzers')
    for path in sorted(glob.glob(os.path.join(lib, 'analyzers', '*.[ch]'))):
        for inc in INCLUDE.findall(code_of(path)):
            if inc in core_headers:
                errors.append('%s includes %s: an analyzer includes only analyzer.h from '
                              'the core' % (os.path.relpath(path, lib), inc))
    core_files = sorted(glob.glob(os.path.join(lib, 'core', '*.[ch]')) +
                        glob.glob(os.path.join(lib, 'worker', '*.[ch]')))
    for path in core_files:
        rel = os.path.relpath(path, lib)
        code = code_of(path)
        for inc in INCLUDE.findall(code):
            if inc in analyzer_headers:
                errors.append('%s includes the analyzer header %s' % (rel, inc))
        for sym in sorted(set(ANALYZER_SYMBOL.findall(code))):
            if not re.fullmatch(r'aiq__\w+_analyzer', sym):
                errors.append('%s names %s: the core reaches analyzers only through '
                              'their aiq__analyzer_def' % (rel, sym))
    worker_int = code_of(os.path.join(lib, 'worker', 'worker_int.h'))
    body = re.search(r'struct aiq_task \{(.*?)\n\};', worker_int, re.S)
    if body is None:
        errors.append('struct aiq_task not found in worker/worker_int.h')
    else:
        fields = set(re.findall(r'(\w+)\s*(?:\[[^\]]*\])?;', body.group(1)))
        task_code = code_of(os.path.join(lib, 'worker', 'analyze_task.c'))
        for f in sorted(fields):
            if re.search(r'->\s*%s\b' % f, task_code):
                errors.append('worker/analyze_task.c reads struct aiq_task\'s field %s' % f)
    for e in errors:
        print(e)
    if errors:
        return 1
    print('analyzers include only analyzer.h from the core; the core names no analyzer '
          'internals; the analysis task reads no task field')
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
