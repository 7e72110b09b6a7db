#!/usr/bin/env bash
# Build with ThreadSanitizer and run the threaded unit suites (worker, client,
# memory), then the server's end-to-end tests (tests/integration/e2e
# test_server.py and test_server_limits.py) against a TSan aiqueue-server.
# Exits non-zero when a test fails or TSan reports anything. No suppressions.
# Usage: scripts/tsan.sh [build-dir]   (default: build-tsan; CC is honoured,
# clang is used when it is installed and CC is unset)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
dir=${1:-build-tsan}
log=${TMPDIR:-/tmp}/aiq-tsan.$$
trap 'rm -rf "$log".*' EXIT
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
ninja -C "$dir" tests/test_worker tests/test_client tests/test_memory examples/aiqueue-server \
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

# The server: the e2e scripts start it themselves; every TSan report goes to
# a file under $log.server (exitcode 66 also fails the test that saw it).
features=$(meson introspect "$dir" --dependencies | /usr/bin/python3 -c '
import json, sys
names = {d["name"] for d in json.load(sys.stdin)}
print(",".join(f for f, d in (("amqp", "librabbitmq"), ("redis", "hiredis"),
                               ("postgres", "libpq")) if d in names))')
mkdir -p "$log.server"
for t in test_server.py test_server_limits.py; do
	args=("$dir/examples/aiqueue-server")
	[ "$t" = test_server.py ] && args+=(examples/lyrics docs)
	echo "== tsan: e2e $t"
	E2E_FEATURES=$features TSAN_OPTIONS="$TSAN_OPTIONS log_path=$log.server/tsan" \
		timeout 600 /usr/bin/python3 "tests/integration/e2e/$t" "${args[@]}" \
		>"$log.server/$t.out" 2>&1 || {
		cat "$log.server/$t.out"
		echo "tsan: e2e $t failed"
		rc=1
	}
done
for f in "$log.server"/tsan.*; do
	[ -e "$f" ] || continue
	cat "$f"
	echo "tsan: ThreadSanitizer reported a problem in aiqueue-server ($f)"
	rc=1
done
[ $rc -eq 0 ] && echo "tsan: worker, client, memory and server suites clean"
exit $rc
