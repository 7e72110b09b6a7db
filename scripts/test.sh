#!/usr/bin/env bash
# Every test: install what is missing, build with warnings as errors, run all
# suites, then again under AddressSanitizer + UndefinedBehaviorSanitizer.
# The last line sums up every suite as "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)

scripts/install-deps.sh || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

out=${AIQ_TEST_BUILD_ROOT:-$root/build-test}
mkdir -p "$out"
failed_steps=0
timings=() # "label seconds" per build and step, printed before the sum
timed() { # label, command...: run it and note how long it took
	local label=$1 t0=$SECONDS
	shift
	"$@"
	local rc=$?
	timings+=("$label $((SECONDS - t0)) s")
	return $rc
}

# Suites run once, in the plain build: the clusters, Celery's own tools
# against C workers (events: 2 min under ASan, most of it Celery's start-up;
# the C side of events and control is in the unit suite, which runs twice),
# and the Celery app under `python3 -m aiqueue worker` (celeryapp: a minute
# of Celery start-ups; the C worker's side of the same messages runs under
# ASan in the interop and canvas suites), and the chaos suite (a minute and a
# half of brokers and workers killed and restarted; the reconnect paths it
# drives run under ASan in the amqp, redis and postgres suites' outage tests).
ONCE_SUITES=(cluster events celeryapp chaos)

run_build() { # name, meson options... (test_args: extra meson test arguments)
	local name=$1
	shift
	local dir=$out/$name
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" --werror "$@" >"$out/$name.setup.log" 2>&1 || {
			cat "$out/$name.setup.log"
			echo "[$name] meson setup failed"
			failed_steps=$((failed_steps + 1))
			return
		}
	fi
	if ! ninja -C "$dir" >"$out/$name.build.log" 2>&1; then
		cat "$out/$name.build.log"
		echo "[$name] build failed"
		failed_steps=$((failed_steps + 1))
		return
	fi
	echo "== [$name] meson test"
	meson test -C "$dir" --print-errorlogs --num-processes 2 ${test_args[@]+"${test_args[@]}"} || true
}

test_args=()
timed plain run_build plain --buildtype=debugoptimized
test_args=()
for s in "${ONCE_SUITES[@]}"; do test_args+=(--no-suite "$s"); done
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	timed sanitize run_build sanitize --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false

# Steps outside meson, each counted as one test: static analysis over the
# sources the plain build compiles; ThreadSanitizer over the
# threaded unit suites and the server's suites; valgrind memcheck over the
# unit and Redis suites of the plain build; every libFuzzer target for a
# bounded time; the container image, compose file and manifests (the slow
# suites run once, not again under ASan).
extra_passed=0
run_step() { # label, command...
	local label=$1
	shift
	echo "== $label"
	if timed "${label%% *}" "$@"; then
		extra_passed=$((extra_passed + 1))
	else
		echo "FAILED: $label"
		failed_steps=$((failed_steps + 1))
	fi
}
run_step "scripts/static.sh (clang-tidy and cppcheck over lib/ and examples/)" \
	timeout 900 bash scripts/static.sh "$out/plain"
run_step "scripts/tsan.sh (ThreadSanitizer: worker, client, memory, server)" \
	timeout 900 bash scripts/tsan.sh "$out/tsan"
run_step "scripts/valgrind.sh (memcheck: unit and Redis suites)" \
	timeout 900 bash scripts/valgrind.sh "$out/plain"
run_step "scripts/fuzz.sh (libFuzzer, ${FUZZ_SECONDS:-20} s per target)" \
	timeout 900 bash scripts/fuzz.sh "$out/fuzz"
run_step "scripts/browser_test.sh (the dashboard in headless Chromium)" \
	timeout 300 bash scripts/browser_test.sh "$out/plain"
run_step "scripts/deploy_test.sh (image, compose, manifests)" \
	timeout 1200 bash scripts/deploy_test.sh

# The benchmark script once in quick mode, so it cannot rot. Its figures are
# printed, not judged: timings are not tests on a shared machine.
bench_passed=0
echo "== bench/run.sh --quick (figures not judged)"
if timed bench timeout 600 bash bench/run.sh --quick --build "$out/bench-build"; then
	bench_passed=1
else
	echo "FAILED: bench/run.sh --quick did not complete"
	failed_steps=$((failed_steps + 1))
fi

echo "== time per step: $(IFS=,; echo "${timings[*]}" | sed 's/,/, /g') (total $SECONDS s)"
/usr/bin/python3 - "$out" "$failed_steps" "$((bench_passed + extra_passed))" <<'PY'
import json, os, sys
out, failed_steps, bench_passed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
passed = bench_passed
failed = skipped = 0
for build in ("plain", "sanitize"):
    log = os.path.join(out, build, "meson-logs", "testlog.json")
    if not os.path.exists(log):
        continue
    for line in open(log):
        r = json.loads(line)
        res = r.get("result")
        if res in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif res == "SKIP":
            skipped += 1
        else:
            failed += 1
            print(f"FAILED: [{build}] {r.get('name')} ({res})")
failed += failed_steps
if passed == bench_passed and failed == 0:
    failed = 1
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
PY
