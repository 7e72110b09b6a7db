#!/usr/bin/env bash
# Build every libFuzzer target of tests/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined) and run each for a bounded time.
#
#   bash scripts/fuzz.sh [BUILD_DIR]      (default: build-fuzz)
#
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_TARGETS (names to
# run, default all), FUZZ_JOBS (targets run at once, default the number of
# cores), FUZZ_SEED (libFuzzer's -seed, default 1 so that a run of the test
# command is repeatable; 0 draws a new seed each run, as longer campaigns
# should), CC (default clang-14, else clang).
# Crashers, leaks, timeouts and slow inputs are kept under
# tests/fuzz/regressions/<target>/, which the unit suite replays
# (tests/fuzz/meson.build). Prints the executions each target reached and
# a final "fuzz: N targets, M crashes"; exits non-zero on any crash.
set -u
cd "$(dirname "$0")/.." || exit 2
SRC=$PWD
BUILD=${1:-build-fuzz}
case $BUILD in /*) ;; *) BUILD=$SRC/$BUILD ;; esac
SECONDS_EACH=${FUZZ_SECONDS:-20}
SEED=${FUZZ_SEED:-1}
CC=${CC:-$(command -v clang-14 || command -v clang)}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

mkdir -p "$BUILD/bin" "$BUILD/corpus"
LIB=$BUILD/lib-san
# The library's internal archive, instrumented for coverage and sanitizers.
if [ ! -f "$LIB/build.ninja" ]; then
	CC=$CC meson setup "$LIB" "$SRC" --buildtype=debugoptimized \
		-Dc_args="-fsanitize=fuzzer-no-link $SAN" -Dc_link_args="$SAN" \
		>"$BUILD/setup.log" 2>&1 || { cat "$BUILD/setup.log"; echo "fuzz: setup failed"; exit 2; }
fi
ninja -C "$LIB" lib/libaiqueue_internal.a >"$BUILD/ninja.log" 2>&1 ||
	{ cat "$BUILD/ninja.log"; echo "fuzz: library build failed"; exit 2; }

DEFS=$(grep -o -- '-DAIQ_HAVE_[A-Z0-9]*' "$LIB/build.ninja" | sort -u | tr '\n' ' ')
INC="-I$SRC/include -I$LIB/include -I$LIB/lib"
for d in base celery core worker beat brokers/amqp brokers/redis analyzers stores; do
	INC="$INC -I$SRC/lib/$d"
done
LIBS="-ljansson -luuid -lm -ldl -lpthread"
case $DEFS in *AMQP*) LIBS="$LIBS -lrabbitmq" ;; esac
case $DEFS in *REDIS*) LIBS="$LIBS -lhiredis" ;; esac
case $DEFS in *POSTGRES*) LIBS="$LIBS -lpq" ;; esac
case $DEFS in *LLM*) LIBS="$LIBS -lcurl" ;; esac
case $DEFS in *ESPEAK*) LIBS="$LIBS -lespeak-ng" ;; esac
case $DEFS in *UTF8PROC*) LIBS="$LIBS -lutf8proc" ;; esac
case $DEFS in *STEMMER*) LIBS="$LIBS -lstemmer" ;; esac

targets=()
for f in "$SRC"/tests/fuzz/fuzz_*.c; do
	t=$(basename "$f" .c)
	if [ -n "${FUZZ_TARGETS:-}" ] && ! [[ " $FUZZ_TARGETS " == *" $t "* ]]; then
		continue
	fi
	case $t in fuzz_amqp_table) case $DEFS in *AMQP*) ;; *) continue ;; esac ;; esac
	case $t in fuzz_llm) case $DEFS in *LLM*) ;; *) continue ;; esac ;; esac
	if [ "$t" = fuzz_http ] && ! pkg-config --exists libmicrohttpd; then
		echo "$t: skipped (pkg-config finds no libmicrohttpd)"
		continue
	fi
	targets+=("$t")
done

build_one() { # target; leaves $BUILD/bin/<target> or $BUILD/<target>.build.log
	local t=$1 extra=()
	case $t in
	fuzz_http)
		# aiqueue-server's request path; libmicrohttpd only for its header.
		/usr/bin/python3 "$SRC/examples/server/dashboard_assets.py" "$BUILD/dashboard_assets.c" \
			"$SRC"/examples/server/dashboard/{index.html,app.js,app.css}
		extra=("$SRC"/examples/server/{core,routes,metrics,openapi,dashboard}.c
			"$BUILD/dashboard_assets.c" "-I$SRC/examples/server"
			"$SRC/examples/common/progutil.c" $(pkg-config --cflags libmicrohttpd))
		;;
	esac
	rm -f "$BUILD/bin/$t"
	# shellcheck disable=SC2086
	"$CC" -g -O1 -fsanitize=fuzzer $SAN -D_GNU_SOURCE -DAIQ_BUILDING_LIBRARY $DEFS $INC \
		"$SRC/tests/fuzz/$t.c" "${extra[@]}" "$LIB/lib/libaiqueue_internal.a" $LIBS \
		-o "$BUILD/bin/$t" 2>"$BUILD/$t.build.log"
}

JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
# run_jobs FUNCTION TARGET...: FUNCTION for each target, $JOBS at a time.
run_jobs() {
	local fn=$1 running=0 t
	shift
	for t in "$@"; do
		if [ "$running" -ge "$JOBS" ]; then
			wait -n
			running=$((running - 1))
		fi
		"$fn" "$t" &
		running=$((running + 1))
	done
	wait
}

run_jobs build_one "${targets[@]}"
built=()
for t in "${targets[@]}"; do
	if [ -x "$BUILD/bin/$t" ]; then
		built+=("$t")
	else
		cat "$BUILD/$t.build.log"
		echo "$t: BUILD FAILED"
	fi
done

# One target per core at a time (FUZZ_JOBS, default the number of cores);
# each writes its verdict to a file, printed in target order at the end.
fuzz_one() { # target; prints "CRASH" or "ok" lines to $BUILD/$1.verdict
	local t=$1 corpus=$BUILD/corpus/$1 regs=$SRC/tests/fuzz/regressions/$1
	mkdir -p "$corpus" "$regs"
	local dict=()
	case $t in
	fuzz_url) dict=(-dict="$SRC/tests/fuzz/url.dict") ;;
	fuzz_http) dict=(-dict="$SRC/tests/fuzz/http.dict") ;;
	fuzz_iso8601 | fuzz_config | fuzz_lyrics | fuzz_amqp_table) ;;
	*) dict=(-dict="$SRC/tests/fuzz/json.dict") ;;
	esac
	local seeds=()
	[ -d "$SRC/tests/fuzz/corpus/$t" ] && seeds+=("$SRC/tests/fuzz/corpus/$t")
	local log=$BUILD/$t.log before after rc execs
	before=$(find "$regs" -type f | wc -l)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
		"$BUILD/bin/$t" "$corpus" "${seeds[@]}" "${dict[@]}" -max_total_time="$SECONDS_EACH" \
		-seed="$SEED" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -report_slow_units=2 \
		-print_final_stats=1 -artifact_prefix="$regs/" >"$log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	after=$(find "$regs" -type f | wc -l)
	if [ $rc -ne 0 ]; then
		{
			echo "$t: CRASH after ${execs:-?} executions (rc $rc), input kept in tests/fuzz/regressions/$t/"
			grep -m 20 -E 'ERROR|SUMMARY|fuzz property failed|runtime error|Test unit written' "$log"
		} >"$BUILD/$t.verdict"
	else
		echo "$t: ${execs:-?} executions in ${SECONDS_EACH}s, ok$([ "$after" -gt "$before" ] && echo ", $((after - before)) slow input(s) kept")" >"$BUILD/$t.verdict"
	fi
	rmdir "$regs" 2>/dev/null
	return 0
}

for t in "${built[@]}"; do rm -f "$BUILD/$t.verdict"; done
run_jobs fuzz_one "${built[@]}"

crashes=0
failed_builds=$((${#targets[@]} - ${#built[@]}))
for t in "${built[@]}"; do
	if [ -f "$BUILD/$t.verdict" ]; then
		cat "$BUILD/$t.verdict"
		grep -q ': CRASH after' "$BUILD/$t.verdict" && crashes=$((crashes + 1))
	else
		echo "$t: no verdict (the run did not finish)"
		crashes=$((crashes + 1))
	fi
done

echo "fuzz: ${#built[@]} targets, $crashes crashes$([ "$failed_builds" -gt 0 ] && echo ", $failed_builds failed to build")"
[ $crashes -eq 0 ] && [ $failed_builds -eq 0 ]
