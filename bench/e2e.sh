#!/usr/bin/env bash
# The end-to-end rows of bench/run.sh only, for quick before/after checks of
# the data path: Redis no-op drain (ours), the batched raw limit at the same
# connection count, and the memory:// drain.
#
#   bench/e2e.sh [--n N] [--concurrency 1,2] [--build DIR] [--no-memory] [--celery] [--amqp]
#
# --amqp adds the RabbitMQ drain (N capped at 5000, as in bench/run.sh) and
# its batched raw limit, results in the same Redis.
# --celery adds Celery's prefork worker on the same messages (3000 tasks),
# as in bench/run.sh, for the ours/Celery ratio of the same run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
N=20000
CONC=1,2,4,8
BUILD=$ROOT/build-bench
MEM=1
CELERY=0
AMQP=0
while [ $# -gt 0 ]; do
	case $1 in
	--n) N=$2; shift ;;
	--concurrency) CONC=$2; shift ;;
	--build) BUILD=$2; shift ;;
	--no-memory) MEM=0 ;;
	--celery) CELERY=1 ;;
	--amqp) AMQP=1 ;;
	*) echo "e2e.sh: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" "$ROOT" --buildtype=release -Db_ndebug=true -Dtests=false \
		-Dintegration=false >/dev/null
fi
ninja -C "$BUILD" >/dev/null
OUT=$(mktemp -d /tmp/aiq-e2e.XXXXXX)
cc -O2 -std=c11 -I"$ROOT/include" -I"$BUILD/include" "$ROOT/bench/aiqbench.c" -o "$OUT/aiqbench" \
	-L"$BUILD/lib" -laiqueue -lpthread -Wl,-rpath,"$BUILD/lib"
cc -O2 -std=c11 "$ROOT/bench/rawbench.c" -o "$OUT/rawbench" -lrabbitmq -lhiredis -lpthread
AIQ=$OUT/aiqbench
RAW=$OUT/rawbench
WPID=""
cleanup() {
	set +e
	[ -n "$WPID" ] && kill "$WPID" 2>/dev/null
	[ -f "$OUT/redis/port" ] && bash "$ROOT/scripts/services/redis.sh" stop "$OUT/redis"
	[ -f "$OUT/rmq/port" ] && bash "$ROOT/scripts/services/rabbitmq.sh" stop "$OUT/rmq" \
		>/dev/null 2>&1
	[ -n "${KEEP:-}" ] && cp "$OUT/cs" /tmp/aiq-e2e-cs.txt; rm -rf "$OUT"
}
trap cleanup EXIT
for k in $(env | awk -F= '/^(AIQUEUE_|CELERY_)/ { print $1 }'); do unset "$k"; done
bash "$ROOT/scripts/services/redis.sh" start "$OUT/redis" >/dev/null
RP=$(cat "$OUT/redis/port")
RB=redis://127.0.0.1:$RP/0
RR=redis://127.0.0.1:$RP/1
val() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }
rflush() { redis-cli -p "$RP" flushall >/dev/null; }
IFS=, read -r -a CONCS <<<"$CONC"
# cmds/task counts the commands scripts run too; evals/task the scripts;
# cpu-us/task is the worker's CPU time, redis-us/task the server's.
printf '%-10s %4s %10s %10s %6s %10s %10s %12s %14s\n' broker c ours limit ratio cmds/task \
	evals/task cpu-us/task redis-us/task
for c in "${CONCS[@]}"; do
	rflush
	"$AIQ" fill "$RB" d "$N" 8
	redis-cli -p "$RP" config resetstat >/dev/null
	rcpu0=$(redis-cli -p "$RP" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { print s }')
	"$AIQ" worker "$RB" "$RR" d "$c" 0 >"$OUT/w.log" 2>&1 &
	WPID=$!
	PYTHONPATH=$ROOT/bench $PY "$ROOT/bench/resultspan.py" "$RR" "$N" 300 >"$OUT/o"
	# Worker CPU time per task, and Redis commands per task (round trips
	# are at most that; scripts count once), over the whole drain.
	cpu=$(awk '{ print $14 + $15 }' "/proc/$WPID/stat")
	kill "$WPID"; wait "$WPID" 2>/dev/null || true; WPID=""
	rcpu1=$(redis-cli -p "$RP" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { print s }')
	rcput=$(awk -v a="$rcpu0" -v b="$rcpu1" -v n="$N" 'BEGIN { printf "%.1f", 1e6 * (b - a) / n }')
	redis-cli -p "$RP" info commandstats | tr -d '\r' >"$OUT/cs"
	calls=$(awk -F'[=,:]' '/^cmdstat_/ && $1 !~ /info|dbsize|scan|mget|config/ { s += $3 } END { print s }' "$OUT/cs")
	cpt=$(awk -v a="$calls" -v n="$N" 'BEGIN { printf "%.2f", a / n }')
	evals=$(awk -F'[=,:]' '/^cmdstat_(evalsha|eval)/ { s += $3 } END { print s + 0 }' "$OUT/cs")
	ept=$(awk -v a="$evals" -v n="$N" 'BEGIN { printf "%.2f", a / n }')
	cput=$(awk -v a="$cpu" -v n="$N" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", 1e6 * a / hz / n }')
	rflush
	"$AIQ" enqueue "$RB" "$RR" sample 1 0 >/dev/null
	"$RAW" redis-publish 127.0.0.1 "$RP" sample rawq "$N" >/dev/null 2>&1
	"$RAW" redis-consume-batch 127.0.0.1 "$RP" rawq "$N" "$c" 100 >"$OUT/rl"
	o=$(val "$OUT/o" rate); l=$(val "$OUT/rl" rate)
	if [ $CELERY = 1 ]; then
		rflush
		nc=$((N < 3000 ? N : 3000))
		"$AIQ" fill "$RB" dc "$nc" 8
		(cd "$ROOT/bench" && BENCH_BROKER=$RB BENCH_BACKEND=$RR PYTHONDONTWRITEBYTECODE=1 \
			exec $PY -m celery -A celeryapp worker -P prefork -c "$c" --without-mingle \
			--without-gossip --without-heartbeat -Q dc -l warning) >"$OUT/cw.log" 2>&1 &
		WPID=$!
		PYTHONPATH=$ROOT/bench $PY "$ROOT/bench/resultspan.py" "$RR" "$nc" 300 >"$OUT/c"
		kill "$WPID"; wait "$WPID" 2>/dev/null || true; WPID=""
		cr=$(val "$OUT/c" rate)
		printf '%-10s %4s %10s %10s %5.1fx\n' celery "$c" "$cr" "" \
			"$(awk -v a="$o" -v b="$cr" 'BEGIN { print a / b }')"
	fi
	printf '%-10s %4s %10s %10s %5.0f%% %10s %10s %12s %14s\n' redis "$c" "$o" "$l" \
		"$(awk -v a="$o" -v b="$l" 'BEGIN { print 100 * a / b }')" "$cpt" "$ept" "$cput" "$rcput"
done
if [ $AMQP = 1 ]; then
	bash "$ROOT/scripts/services/rabbitmq.sh" start "$OUT/rmq" >/dev/null
	AP=$(cat "$OUT/rmq/port")
	AB=$(cat "$OUT/rmq/url")
	NA=$((N < 5000 ? N : 5000))
	apurge() { bash "$ROOT/scripts/services/rabbitmq.sh" ctl "$OUT/rmq" -q purge_queue "$1" \
		>/dev/null 2>&1 || true; }
	for c in "${CONCS[@]}"; do
		rflush
		"$AIQ" fill "$AB" d "$NA" 8
		"$AIQ" worker "$AB" "$RR" d "$c" 0 >"$OUT/w.log" 2>&1 &
		WPID=$!
		PYTHONPATH=$ROOT/bench $PY "$ROOT/bench/resultspan.py" "$RR" "$NA" 300 >"$OUT/o"
		cpu=$(awk '{ print $14 + $15 }' "/proc/$WPID/stat")
		kill "$WPID"; wait "$WPID" 2>/dev/null || true; WPID=""
		cput=$(awk -v a="$cpu" -v n="$NA" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", 1e6 * a / hz / n }')
		rflush
		"$AIQ" enqueue "$AB" "$RR" sample 1 0 >/dev/null
		"$RAW" amqp-publish 127.0.0.1 "$AP" sample rawq "$NA" 0 >/dev/null 2>&1
		"$RAW" amqp-consume-batch 127.0.0.1 "$AP" rawq "$NA" "$c" 256 "$RP" 64 >"$OUT/rl"
		apurge rawq; apurge sample
		o=$(val "$OUT/o" rate); l=$(val "$OUT/rl" rate)
		printf '%-10s %4s %10s %10s %5.0f%% %10s %10s %12s\n' amqp "$c" "$o" "$l" \
			"$(awk -v a="$o" -v b="$l" 'BEGIN { print 100 * a / b }')" "" "" "$cput"
	done
fi
if [ $MEM = 1 ]; then
	for c in "${CONCS[@]}"; do
		"$AIQ" drain-mem "$N" "$c" 0 0 >"$OUT/o"
		printf '%-10s %4s %10s\n' memory "$c" "$(val "$OUT/o" rate)"
	done
fi
