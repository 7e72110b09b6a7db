#!/usr/bin/env bash
# Build with ThreadSanitizer and run the threaded unit suites (worker, client,
# memory). Exits non-zero when a suite fails or TSan reports anything.
# Usage: scripts/tsan.sh [build-dir]   (default: build-tsan; CC is honoured,
# clang is used when it is installed and CC is unset)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
dir=${1:-build-tsan}
log=${TMPDIR:-/tmp}/aiq-tsan.$$
trap 'rm -f "$log".*' EXIT
if [ -z "${CC:-}" ] && command -v clang >/dev/null 2>&1; then
	export CC=clang
fi
if [ ! -f "$dir/build.ninja" ]; then
	meson setup "$dir" --werror -Db_sanitize=thread --buildtype=debug -Db_lundef=false \
		-Dintegration=false >"$log.setup" 2>&1 || {
		cat "$log.setup"
		echo "tsan: meson setup failed"
		exit 1
	}
fi
# Only what the suites need: the rest of the tree is not built for TSan.
ninja -C "$dir" tests/test_worker tests/test_client tests/test_memory \
	>"$log.build" 2>&1 || {
	cat "$log.build"
	echo "tsan: build failed"
	exit 1
}
# halt_on_error makes a report fail its test; the log keeps the report.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
rc=0
meson test -C "$dir" --no-rebuild --suite unit worker client memory --print-errorlogs \
	--timeout-multiplier 4 || rc=1
if grep -q "WARNING: ThreadSanitizer" "$dir/meson-logs/testlog.txt" 2>/dev/null; then
	echo "tsan: ThreadSanitizer reported a problem (see $dir/meson-logs/testlog.txt)"
	rc=1
fi
[ $rc -eq 0 ] && echo "tsan: worker, client and memory suites clean"
exit $rc
