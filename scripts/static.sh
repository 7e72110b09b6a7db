#!/usr/bin/env bash
# Static analysis of lib/ and examples/: clang-tidy (checks in .clang-tidy)
# and cppcheck, over the compile commands of a configured meson build.
#   scripts/static.sh BUILDDIR
# BUILDDIR must have been built once (clang-tidy reads generated headers
# such as version.h). Exits non-zero on any finding of either tool.
# STATIC_JOBS (default 2) sets how many clang-tidy processes run at once.
set -uo pipefail

if [ $# -ne 1 ] || [ ! -f "$1/compile_commands.json" ]; then
	echo "usage: $0 BUILDDIR (a meson build directory with compile_commands.json)" >&2
	exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
jobs=${STATIC_JOBS:-2}
py=/usr/bin/python3
[ -x "$py" ] || py=python3
tidy=$(command -v clang-tidy-14 || command -v clang-tidy || true)
if [ -z "$tidy" ] || ! command -v cppcheck >/dev/null; then
	echo "static.sh: clang-tidy and cppcheck are required (scripts/install-deps.sh)" >&2
	exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One entry per source file of lib/ and examples/ (a file compiled into
# several programs is analysed once); tests and generated sources are not.
"$py" - "$root" "$build/compile_commands.json" "$work/compile_commands.json" \
	"$work/files" <<'EOF'
import json, os, sys
root, src, dst, listing = sys.argv[1:]
seen, keep = set(), []
for e in json.load(open(src)):
    path = os.path.normpath(os.path.join(e["directory"], e["file"]))
    rel = os.path.relpath(path, root)
    if rel.split(os.sep)[0] in ("lib", "examples") and path not in seen:
        seen.add(path)
        keep.append(e)
json.dump(keep, open(dst, "w"))
open(listing, "w").write("".join(os.path.relpath(os.path.normpath(os.path.join(
    e["directory"], e["file"])), root) + "\n" for e in keep))
EOF
nfiles=$(wc -l <"$work/files")

status=0

start=$(date +%s)
# --quiet drops the "N warnings generated" chatter (those are suppressed
# ones in system headers); WarningsAsErrors in .clang-tidy makes every
# finding fail its file, and xargs returns non-zero if any file failed.
(cd "$root" && xargs -P "$jobs" -n 2 "$tidy" -p "$work" --quiet <"$work/files") \
	>"$work/tidy.out" 2>"$work/tidy.err"
tidy_rc=$?
tidy_s=$(($(date +%s) - start))
grep -E '(warning|error):' "$work/tidy.out" | sort -u >"$work/tidy.findings"
if [ $tidy_rc -ne 0 ] || [ -s "$work/tidy.findings" ]; then
	cat "$work/tidy.out"
	grep -v -E '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$' "$work/tidy.err" |
		grep -v -E '^(Suppressed|Use -header-filter|Error while processing)' >&2 || true
	echo "static.sh: clang-tidy: $(wc -l <"$work/tidy.findings") finding(s) in $nfiles files (${tidy_s}s)" >&2
	status=1
else
	echo "static.sh: clang-tidy clean over $nfiles files (${tidy_s}s)"
fi

start=$(date +%s)
# Suppressions that name a file are for files other work edits often, where a
# line comment would move; each is a reviewed false positive:
#  outcome.c autoVariables: put_grouped() queues a stack entry that is
#    unlinked before the call returns (the group-commit idiom, as in client.c).
#  outcome.c uninitvar: acks[] is read only below nacks, which counts writes.
cppcheck --project="$work/compile_commands.json" -j "$jobs" \
	--enable=warning,performance,portability --inline-suppr --quiet \
	--error-exitcode=1 --template='{file}:{line}: {severity} [{id}] {message}' \
	--suppress='autoVariables:*lib/worker/outcome.c' \
	--suppress='uninitvar:*lib/worker/outcome.c' \
	>"$work/cppcheck.out" 2>&1
cpp_rc=$?
cpp_s=$(($(date +%s) - start))
grep -v '^Checking ' "$work/cppcheck.out" >"$work/cppcheck.findings" || true
if [ $cpp_rc -ne 0 ] || [ -s "$work/cppcheck.findings" ]; then
	cat "$work/cppcheck.findings"
	echo "static.sh: cppcheck: findings (${cpp_s}s)" >&2
	status=1
else
	echo "static.sh: cppcheck clean over $nfiles files (${cpp_s}s)"
fi
exit $status
