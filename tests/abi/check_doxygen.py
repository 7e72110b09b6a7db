#!/usr/bin/python3
"""Build the API reference with Doxygen and fail on any warning.

Runs doxygen on the configured docs Doxyfile into a temporary directory
(so the test does not race the build's own copy), prints every warning and
fails when there is one: an undocumented declaration, a parameter missing
from its comment, a link that does not resolve. Then checks that every
link docs/api.md makes into the reference (html/<page>.html) names a page
Doxygen generated, so the map cannot point at pages that are gone.

usage: check_doxygen.py DOXYGEN DOXYFILE DOCS_DIR
       check_doxygen.py --skip REASON      (exit 77: reported as skipped)
"""
import os
import re
import subprocess
import sys
import tempfile


def main(doxygen, doxyfile, docs_dir):
    conf = open(doxyfile, encoding='utf-8').read()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, 'warnings.log')
        conf += '\nOUTPUT_DIRECTORY = %s\nWARN_LOGFILE = %s\n' % (tmp, log)
        r = subprocess.run([doxygen, '-'], input=conf, capture_output=True, text=True,
                           cwd=tmp)
        warnings = open(log, encoding='utf-8').read().strip() if os.path.exists(log) else ''
        noise = (r.stdout + r.stderr).strip()
        if warnings or r.returncode != 0:
            print(warnings or noise)
            print('doxygen: %d, warnings above: document every public declaration'
                  % r.returncode)
            return 1
        pages = set(os.listdir(os.path.join(tmp, 'html')))
        api = open(os.path.join(docs_dir, 'api.md'), encoding='utf-8').read()
        links = re.findall(r'\]\((?:[^)]*/)?html/([A-Za-z0-9_]+\.html)(?:#[^)]*)?\)', api)
        if not links:
            print('docs/api.md links to no page of the reference (html/<page>.html)')
            return 1
        broken = sorted(set(l for l in links if l not in pages))
        if broken:
            print('docs/api.md links to pages Doxygen does not generate: ' + ', '.join(broken))
            return 1
        headers = sorted(p for p in pages if p.endswith('_8h.html'))
        unlinked = [h for h in headers if h not in links]
        if unlinked:
            print('docs/api.md does not link these header pages: ' + ', '.join(unlinked))
            return 1
    print('reference built without warnings; docs/api.md links %d pages, all present'
          % len(set(links)))
    return 0


if __name__ == '__main__':
    if len(sys.argv) >= 2 and sys.argv[1] == '--skip':
        print(' '.join(sys.argv[2:]))
        sys.exit(77)
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
