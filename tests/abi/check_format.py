#!/usr/bin/python3
"""Every C source and header of the project is formatted with the
project's .clang-format: fails naming each file clang-format would change.

usage: check_format.py CLANG_FORMAT SOURCE_ROOT
"""
import os
import subprocess
import sys

DIRS = ("include", "lib", "examples", "tests", "bench", "pkgconfig")


def sources(root):
    for d in DIRS:
        for base, dirs, files in os.walk(os.path.join(root, d)):
            dirs[:] = sorted(x for x in dirs if not x.startswith("build"))
            for f in sorted(files):
                if f.endswith((".c", ".h")):
                    yield os.path.join(base, f)


def main():
    clang_format, root = sys.argv[1], sys.argv[2]
    paths = list(sources(root))
    if not paths:
        print("no C sources found under", root)
        return 1
    bad = []
    for i in range(0, len(paths), 50):
        chunk = paths[i:i + 50]
        p = subprocess.run([clang_format, "--dry-run", "--Werror", *chunk],
                           cwd=root, capture_output=True, text=True)
        if p.returncode != 0:
            for line in p.stderr.splitlines():
                if "warning:" in line or "error:" in line:
                    bad.append(line.split(":", 1)[0])
    bad = sorted(set(bad))
    for path in bad:
        print("not clang-formatted:", os.path.relpath(path, root))
    print(f"{len(paths)} files checked, {len(bad)} not formatted")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
