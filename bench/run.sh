#!/usr/bin/env bash
# libaiqueue benchmarks, side by side with Celery 5.2 and the raw brokers, in
# one run on this machine. Prints one table (see docs/performance.md).
#
#   bench/run.sh [--quick] [--n N] [--concurrency 1,2,4] [--payload BYTES]
#                [--brokers memory,redis,amqp] [--build DIR]
#
# Private redis-server / rabbitmq-server instances are started on free
# loopback ports (scripts/services/) and always stopped on exit.
# --quick: every row kind on all three brokers, N=2000, c=2 (a few minutes);
# full: N=20000, c=1,2,4,8. docs/performance.md describes each row.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PY=/usr/bin/python3
QUICK=0
N=""
CONC=""
PAYLOAD=0
BROKERS=""
BUILD=$ROOT/build-bench

while [ $# -gt 0 ]; do
	case $1 in
	--quick) QUICK=1 ;;
	--n) N=$2; shift ;;
	--concurrency) CONC=$2; shift ;;
	--payload) PAYLOAD=$2; shift ;;
	--brokers) BROKERS=$2; shift ;;
	--build) BUILD=$2; shift ;;
	-h | --help) sed -n 2,11p "$0"; exit 0 ;;
	*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
if [ $QUICK = 1 ]; then
	# Every row kind at least once, on small N and at c=2 (CI runs this).
	N=${N:-2000}; CONC=${CONC:-2}; BROKERS=${BROKERS:-memory,redis,amqp}
else
	N=${N:-20000}; CONC=${CONC:-1,2,4,8}; BROKERS=${BROKERS:-memory,redis,amqp}
fi
has() { case ",$BROKERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
min() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }
# Celery is ~10-30x slower: smaller N keeps its runs to a few seconds.
NC=$(min "$N" $([ $QUICK = 1 ] && echo 500 || echo 3000))
# Persistent confirmed publishes are bound by RabbitMQ's disk sync (~1 ms).
NA=$(min "$N" $([ $QUICK = 1 ] && echo 500 || echo 5000))
NAC=$(min "$NA" $([ $QUICK = 1 ] && echo 200 || echo 1000))

# Payload pads for the payload rows (the main rows use --payload).
PAYLOADS=(0 1024 65536)
# The batched raw loops ("the limit"): tasks per Redis script, AMQP batch
# and prefetch.
LIMIT_BATCH=100
LIMIT_AMQP_BATCH=64
LIMIT_AMQP_PREFETCH=256

# ---- set-up --------------------------------------------------------------
need=""
command -v wrk >/dev/null || need="$need wrk"
command -v redis-server >/dev/null || need="$need redis-server"
command -v redis-benchmark >/dev/null || need="$need redis-tools"
$PY -c 'import celery' 2>/dev/null || need="$need python3-celery"
$PY -c 'import redis' 2>/dev/null || need="$need python3-redis"
$PY -c 'import fastapi, uvicorn' 2>/dev/null || need="$need python3-fastapi python3-uvicorn"
if has amqp && ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then need="$need rabbitmq-server"; fi
if [ -n "$need" ]; then
	echo "run.sh: installing$need" >&2
	apt-get install -y $need >/dev/null
fi
if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" "$ROOT" --buildtype=release -Db_ndebug=true -Dtests=false \
		-Dintegration=false >/dev/null
fi
ninja -C "$BUILD" >/dev/null

OUT=$(mktemp -d /tmp/aiq-bench.XXXXXX)
CFLAGS="-O2 -std=c11 -Wall -Wextra"
cc $CFLAGS -I"$ROOT/include" -I"$BUILD/include" "$BENCH/aiqbench.c" -o "$OUT/aiqbench" \
	-L"$BUILD/lib" -laiqueue -lpthread -Wl,-rpath,"$BUILD/lib"
cc $CFLAGS "$BENCH/rawbench.c" -o "$OUT/rawbench" -lrabbitmq -lhiredis -lpthread
AIQ=$OUT/aiqbench
RAW=$OUT/rawbench
SERVER=$BUILD/examples/aiqueue-server

PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do
		for c in $(pgrep -P "$p" 2>/dev/null); do kill "$c" 2>/dev/null; done
		kill "$p" 2>/dev/null
	done
	[ -f "$OUT/redis/port" ] && bash "$ROOT/scripts/services/redis.sh" stop "$OUT/redis"
	[ -f "$OUT/rmq/port" ] && bash "$ROOT/scripts/services/rabbitmq.sh" stop "$OUT/rmq" \
		>/dev/null 2>&1
	[ -n "${KEEP:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

T_START=$SECONDS
log() { printf '[%3ds] %s\n' $((SECONDS - T_START)) "$*" >&2; }
val() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }

# results: scenario|broker|variant|ours|celery|raw|unit|note
RES=$OUT/results
: >"$RES"
row() { printf '%s|%s|%s|%s|%s|%s|%s|%s\n' "$@" >>"$RES"; }

export PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$BENCH
for k in $(env | awk -F= '/^(AIQUEUE_|CELERY_)/ { print $1 }'); do unset "$k"; done

if has redis || has amqp; then
	log "starting redis-server"
	bash "$ROOT/scripts/services/redis.sh" start "$OUT/redis" >/dev/null
	RP=$(cat "$OUT/redis/port")
	RB=redis://127.0.0.1:$RP/0
	RR=redis://127.0.0.1:$RP/1
fi
if has amqp; then
	log "starting rabbitmq-server"
	bash "$ROOT/scripts/services/rabbitmq.sh" start "$OUT/rmq" >/dev/null
	AP=$(cat "$OUT/rmq/port")
	AB=$(cat "$OUT/rmq/url")
	ABC="amqp://guest:guest@127.0.0.1:$AP//"
fi
rflush() { redis-cli -p "$RP" flushall >/dev/null; }
apurge() { bash "$ROOT/scripts/services/rabbitmq.sh" ctl "$OUT/rmq" -q purge_queue "$1" \
	>/dev/null 2>&1 || true; }

uss_kib() { # sum of private memory (USS) over PID and its children
	local s=0 p v
	for p in "$1" $(pgrep -P "$1"); do
		v=$(awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' \
			"/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
		s=$((s + ${v:-0}))
	done
	echo $s
}
hwm_kib() { # sum of VmHWM over PID and its children
	local s=0 p v
	for p in "$1" $(pgrep -P "$1"); do
		v=$(awk '/^VmHWM/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
		s=$((s + ${v:-0}))
	done
	echo $s
}
start_ours() { # BROKER QUEUE CONC TRACK -> $WPID
	"$AIQ" worker "$1" "$RR" "$2" "$3" "$4" >"$OUT/ours-worker.log" 2>&1 &
	WPID=$!
	PIDS+=("$WPID")
}
start_celery() { # CELERY_BROKER QUEUE CONC -> $WPID
	BENCH_BROKER=$1 BENCH_BACKEND=$RR $PY -m celery -A celeryapp worker -P prefork -c "$3" \
		--without-mingle --without-gossip --without-heartbeat -Q "$2" -l warning \
		>"$OUT/celery-worker.log" 2>&1 &
	WPID=$!
	PIDS+=("$WPID")
}
stop_worker() {
	kill "$WPID" 2>/dev/null || true
	wait "$WPID" 2>/dev/null || true
}

# ---- 1. enqueue throughput ------------------------------------------------
if has memory; then
	log "enqueue memory://"
	"$AIQ" enqueue memory:// memory:// e1 "$N" "$PAYLOAD" >"$OUT/o"
	row "enqueue" "memory" "per task" "$(val "$OUT/o" rate)" "" "" "tasks/s" \
		"in-process; no baseline"
fi
if has redis; then
	log "enqueue redis://"
	rflush
	"$AIQ" enqueue "$RB" "$RR" e1 "$N" "$PAYLOAD" >"$OUT/o"
	ours=$(val "$OUT/o" rate)
	rflush
	BENCH_BROKER=$RB BENCH_BACKEND=$RR $PY "$BENCH/celery_client.py" enqueue e1 "$NC" "$PAYLOAD" \
		>"$OUT/c"
	rflush
	"$AIQ" enqueue "$RB" "$RR" sample 1 "$PAYLOAD" >/dev/null
	"$RAW" redis-publish 127.0.0.1 "$RP" sample rawq "$N" >"$OUT/r" 2>"$OUT/r.err"
	size=$(awk '/sample element/ { print $4 }' "$OUT/r.err")
	rb=$(redis-benchmark -p "$RP" -c 1 -n "$N" -d "$size" -t lpush --csv 2>/dev/null |
		awk -F'"' '/LPUSH/ { print $4 }')
	cp "$OUT/r" "$OUT/r.redis"
	row "enqueue" "redis" "per task (LPUSH reply)" "$ours" "$(val "$OUT/c" rate)" \
		"$(val "$OUT/r" rate)" "tasks/s" "raw: hiredis LPUSH of the same ${size}-byte element; redis-benchmark -c1 LPUSH -d $size: $rb/s"
fi
if has amqp; then
	log "enqueue amqp://"
	"$AIQ" enqueue "$AB" "$RR" e1 "$NA" "$PAYLOAD" >"$OUT/o"
	ours=$(val "$OUT/o" rate)
	BENCH_BROKER=$ABC BENCH_BACKEND=$RR $PY "$BENCH/celery_client.py" enqueue e1c "$NAC" \
		"$PAYLOAD" >"$OUT/c"
	"$AIQ" enqueue "$AB" "$RR" sample 1 "$PAYLOAD" >/dev/null
	"$RAW" amqp-publish 127.0.0.1 "$AP" sample rawq "$NA" >"$OUT/r" 2>"$OUT/r.err"
	size=$(awk '/sample body/ { print $4 }' "$OUT/r.err")
	cp "$OUT/r" "$OUT/r.amqp"
	row "enqueue" "amqp" "per task (persistent, confirmed)" "$ours" "$(val "$OUT/c" rate)" \
		"$(val "$OUT/r" rate)" "tasks/s" "raw: librabbitmq-c, same ${size}-byte body + headers, confirm each"
	for q in e1 e1c e1.warm e1c.warm rawq; do apurge "$q"; done
fi
# Batched: aiq_client_enqueue_batch, 500 tasks per call (one wait for the
# confirms / one pipeline). The raw baselines above confirm each message.
if has redis; then
	log "enqueue redis:// batched"
	AIQ_BENCH_BATCH=500 "$AIQ" enqueue "$RB" "$RR" eb "$N" "$PAYLOAD" >"$OUT/ob"
	row "enqueue" "redis" "batched, 500 per call" "$(val "$OUT/ob" rate)" "" \
		"$(val "$OUT/r.redis" rate)" "tasks/s" "pipelined LPUSH, every reply read; raw = per-task LPUSH"
fi
if has amqp; then
	log "enqueue amqp:// batched"
	AIQ_BENCH_BATCH=500 "$AIQ" enqueue "$AB" "$RR" eb "$N" "$PAYLOAD" >"$OUT/ob"
	row "enqueue" "amqp" "batched, 500 per call (persistent, confirmed)" "$(val "$OUT/ob" rate)" \
		"" "$(val "$OUT/r.amqp" rate)" "tasks/s" "one wait for confirms per batch; raw = confirm each"
	apurge eb
fi

# ---- 2. end-to-end throughput ----------------------------------------------
IFS=, read -r -a CONCS <<<"$CONC"
e2e_broker() { # KIND OURS_URL CELERY_URL N NC
	local kind=$1 ob=$2 cb=$3 n=$4 nc=$5 c ours ours_tr="" hw_o hw_c tr note
	for c in "${CONCS[@]}"; do
		log "end-to-end $kind concurrency $c"
		# ours: pre-enqueued N, worker process, rate from the date_done stamps
		for tr in 0 1; do
			[ $tr = 1 ] && [ "$c" != 2 ] && continue
			rflush
			"$AIQ" fill "$ob" d "$n" 8
			start_ours "$ob" d "$c" "$tr"
			$PY "$BENCH/resultspan.py" "$RR" "$n" 300 >"$OUT/o"
			hw_o=$(hwm_kib "$WPID")
			us_o=$(uss_kib "$WPID")
			stop_worker
			if [ $tr = 1 ]; then
				ours_tr=$(val "$OUT/o" rate)
			else
				ours=$(val "$OUT/o" rate)
			fi
		done
		# Celery prefork on the same messages (our client produces Celery v2)
		rflush
		"$AIQ" fill "$ob" dc "$nc" 8
		start_celery "$cb" dc "$c"
		$PY "$BENCH/resultspan.py" "$RR" "$nc" 300 >"$OUT/c"
		hw_c=$(hwm_kib "$WPID")
		us_c=$(uss_kib "$WPID")
		stop_worker
		# raw ceiling: consume + result SET + ack, same message, C connections
		rflush
		if [ "$kind" = redis ]; then
			"$AIQ" enqueue "$RB" "$RR" sample 1 "$PAYLOAD" >/dev/null
			"$RAW" redis-publish 127.0.0.1 "$RP" sample rawq "$n" >/dev/null 2>&1
			"$RAW" redis-consume 127.0.0.1 "$RP" rawq "$n" "$c" 1 >"$OUT/r"
			"$RAW" redis-publish 127.0.0.1 "$RP" sample rawq "$n" >/dev/null 2>&1
			"$RAW" redis-consume 127.0.0.1 "$RP" rawq "$n" "$c" 0 >"$OUT/r0"
			note="raw: RPOPLPUSH + SET result + LREM, $c conn; without the SET: $(val "$OUT/r0" rate)/s"
			"$RAW" redis-publish 127.0.0.1 "$RP" sample rawq "$n" >/dev/null 2>&1
			"$RAW" redis-consume-batch 127.0.0.1 "$RP" rawq "$n" "$c" "$LIMIT_BATCH" >"$OUT/rl"
			lnote="the limit: one script pops up to $LIMIT_BATCH into unacked, pipelined SET + PUBLISH per result, one ack script per batch; $c conn"
		else
			"$AIQ" enqueue "$AB" "$RR" sample 1 "$PAYLOAD" >/dev/null
			"$RAW" amqp-publish 127.0.0.1 "$AP" sample rawq "$n" 0 >/dev/null 2>&1
			"$RAW" amqp-consume 127.0.0.1 "$AP" rawq "$n" "$c" $((4 * c)) "$RP" >"$OUT/r"
			"$AIQ" enqueue "$AB" "$RR" sample 1 "$PAYLOAD" >/dev/null
			"$RAW" amqp-publish 127.0.0.1 "$AP" sample rawq "$n" 0 >/dev/null 2>&1
			"$RAW" amqp-consume 127.0.0.1 "$AP" rawq "$n" "$c" $((4 * c)) 0 >"$OUT/r0"
			note="raw: consume + SET result + ack, $c conn, prefetch $((4 * c)); without the SET: $(val "$OUT/r0" rate)/s"
			"$AIQ" enqueue "$AB" "$RR" sample 1 "$PAYLOAD" >/dev/null
			"$RAW" amqp-publish 127.0.0.1 "$AP" sample rawq "$n" 0 >/dev/null 2>&1
			"$RAW" amqp-consume-batch 127.0.0.1 "$AP" rawq "$n" "$c" "$LIMIT_AMQP_PREFETCH" "$RP" \
				"$LIMIT_AMQP_BATCH" >"$OUT/rl"
			lnote="the limit: qos $LIMIT_AMQP_PREFETCH, up to $LIMIT_AMQP_BATCH deliveries per batch, pipelined result SETs, one multiple-ack after their replies; $c conn"
		fi
		row "end-to-end" "$kind" "c=$c" "$ours" "$(val "$OUT/c" rate)" "$(val "$OUT/r" rate)" \
			"tasks/s" "$note"
		row "end-to-end" "$kind" "c=$c vs the limit (batched raw)" "$ours" "" "$(val "$OUT/rl" rate)" \
			"tasks/s" "$lnote"
		[ "$c" = 2 ] && row "end-to-end" "$kind" "c=$c, track_started=true" "$ours_tr" "" \
			"$(val "$OUT/r" rate)" "tasks/s" "STARTED stored before each task"
		row "memory" "$kind" "peak RSS under load, c=$c" "$((hw_o / 1024))" "$((hw_c / 1024))" "" \
			"MiB" "VmHWM; Celery: main + children"
		row "memory" "$kind" "private (USS) after load, c=$c" "$((us_o / 1024))" "$((us_c / 1024))" "" \
			"MiB" "Private_Clean + Private_Dirty of /proc/PID/smaps_rollup; Celery: main + children"
	done
}
if has memory; then
	for c in "${CONCS[@]}"; do
		log "end-to-end memory:// concurrency $c"
		"$AIQ" drain-mem "$N" "$c" 0 "$PAYLOAD" >"$OUT/o"
		row "end-to-end" "memory" "c=$c" "$(val "$OUT/o" rate)" "" "" "tasks/s" \
			"in-process broker + store; no baseline"
		row "memory" "memory" "peak RSS / USS, drain of $N, c=$c" \
			"$(($(val "$OUT/o" hwm_kib) / 1024)) / $(($(val "$OUT/o" uss_kib) / 1024))" "" "" "MiB" \
			"whole process, all $N tasks queued in it at once"
		if [ "$c" = 2 ]; then
			"$AIQ" drain-mem "$N" "$c" 1 "$PAYLOAD" >"$OUT/o"
			row "end-to-end" "memory" "c=$c, track_started=true" "$(val "$OUT/o" rate)" "" "" \
				"tasks/s" ""
		fi
	done
fi
has redis && e2e_broker redis "$RB" "$RB" "$N" "$NC"
has amqp && e2e_broker amqp "$AB" "$ABC" "$NA" "$NAC"

# ---- 4. idle memory ---------------------------------------------------------
if has redis; then
	log "idle memory"
	rflush
	start_ours "$RB" idle 2 1
	sleep 2
	hw_o=$(hwm_kib "$WPID")
	us_o=$(uss_kib "$WPID")
	stop_worker
	start_celery "$RB" idle 2
	sleep 4
	hw_c=$(hwm_kib "$WPID")
	us_c=$(uss_kib "$WPID")
	stop_worker
	row "memory" "redis" "peak RSS idle, c=2" "$((hw_o / 1024))" "$((hw_c / 1024))" "" "MiB" \
		"VmHWM after 2 s (Celery 4 s) idle"
	row "memory" "redis" "private (USS) idle, c=2" "$((us_o / 1024))" "$((us_c / 1024))" "" "MiB" \
		"Private_Clean + Private_Dirty; Celery: main + prefork children"
fi

# ---- 6. payload sizes ---------------------------------------------------------
for pl in "${PAYLOADS[@]}"; do
	# 64 KiB tasks: a quarter as many, so each run moves about the same bytes
	np=$([ "$pl" -ge 65536 ] && echo $((N / 4)) || echo "$N")
	ncp=$(min "$np" "$NC")
	if has memory; then
		log "payload $pl B memory://"
		"$AIQ" drain-mem "$np" 2 0 "$pl" >"$OUT/o"
		row "payload" "memory" "end-to-end c=2, pad $pl B" "$(val "$OUT/o" rate)" "" "" "tasks/s" \
			"N=$np"
	fi
	if has redis; then
		log "payload $pl B redis://"
		rflush
		"$AIQ" enqueue "$RB" "$RR" pe "$np" "$pl" >"$OUT/o"
		rflush
		BENCH_BROKER=$RB BENCH_BACKEND=$RR $PY "$BENCH/celery_client.py" enqueue pe "$ncp" "$pl" \
			>"$OUT/c"
		row "payload" "redis" "enqueue, pad $pl B" "$(val "$OUT/o" rate)" "$(val "$OUT/c" rate)" "" \
			"tasks/s" "one producer, each LPUSH reply read; N=$np (Celery $ncp)"
	fi
	if has amqp; then
		log "payload $pl B amqp://"
		npa=$(min "$np" "$NA")
		"$AIQ" enqueue "$AB" "$RR" pe "$npa" "$pl" >"$OUT/o"
		BENCH_BROKER=$ABC BENCH_BACKEND=$RR $PY "$BENCH/celery_client.py" enqueue pec \
			"$(min "$npa" "$NAC")" "$pl" >"$OUT/c"
		row "payload" "amqp" "enqueue, pad $pl B (persistent, confirmed)" "$(val "$OUT/o" rate)" \
			"$(val "$OUT/c" rate)" "" "tasks/s" "N=$npa (Celery $(min "$npa" "$NAC"))"
		for q in pe pec pe.warm pec.warm; do apurge "$q"; done
	fi
done

# ---- 7. producers: Python through the ctypes package; 32 at once -------------
py_row() { # KIND OURS_URL CELERY_URL N NC
	log "Python producer $1"
	rflush
	AIQUEUE_LIBRARY=$BUILD/lib/libaiqueue.so PYTHONPATH=$ROOT/bindings/python:$BENCH \
		$PY "$BENCH/py_producer.py" "$2" "$RR" pp "$4" "$PAYLOAD" >"$OUT/o"
	rflush
	BENCH_BROKER=$3 BENCH_BACKEND=$RR $PY "$BENCH/celery_client.py" enqueue ppc "$5" "$PAYLOAD" \
		>"$OUT/c"
	row "enqueue" "$1" "Python: aiqueue (ctypes) .enqueue vs Celery .delay()" "$(val "$OUT/o" rate)" \
		"$(val "$OUT/c" rate)" "" "tasks/s" "one Python thread, each call waits for the broker"
}
par_row() { # KIND URL N
	log "32 producers $1"
	rflush
	"$AIQ" enqueue-par "$2" "$RR" par "$3" 1 "$PAYLOAD" >"$OUT/p1"
	rflush
	"$AIQ" enqueue-par "$2" "$RR" par "$3" 32 "$PAYLOAD" >"$OUT/p32"
	rflush
	"$AIQ" enqueue-par "$2" "$RR" par "$3" 32 "$PAYLOAD" shared >"$OUT/p32s"
	local one many shared
	one=$(val "$OUT/p1" rate)
	many=$(val "$OUT/p32" rate)
	shared=$(val "$OUT/p32s" rate)
	row "enqueue" "$1" "32 concurrent producers (one client each)" "$many" "" "" "tasks/s" \
		"one producer: ${one}/s, so 32 give $(awk -v a="$many" -v b="$one" 'BEGIN { printf "%.1f", a / b }')x"
	row "enqueue" "$1" "32 concurrent producers (one shared client)" "$shared" "" "" "tasks/s" \
		"one producer: ${one}/s, so 32 on one client give $(awk -v a="$shared" -v b="$one" 'BEGIN { printf "%.1f", a / b }')x (concurrent enqueues grouped into one publish batch)"
}
has redis && py_row redis "$RB" "$RB" "$N" "$NC"
has amqp && py_row amqp "$AB" "$ABC" "$NA" "$NAC" && apurge pp && apurge ppc
has redis && par_row redis "$RB" "$N"
has amqp && par_row amqp "$AB" "$NA" && apurge par

# ---- 8. LLM-like mix: every task waits 50 ms ---------------------------------
mix_row() { # KIND URL CONC
	local n=$(($3 * $([ $QUICK = 1 ] && echo 20 || echo 60)))
	log "LLM-like mix $1 c=$3"
	"$AIQ" mix "$2" "$([ "$1" = memory ] && echo memory:// || echo "$RR")" mix "$n" "$3" 50 \
		>"$OUT/o"
	row "llm-like mix" "$1" "c=$3, each task waits 50 ms" "$(val "$OUT/o" rate)" "" \
		"$(awk -v c="$3" 'BEGIN { print c * 20 }')" "tasks/s" \
		"pool busy $(val "$OUT/o" busy)% of $3 threads; raw = c / 50 ms, every thread always waiting on a task; N=$n"
}
if has memory; then
	for c in 8 32; do mix_row memory memory://mix "$c"; done
fi
has redis && rflush && mix_row redis "$RB" 8
has amqp && mix_row amqp "$AB" 8 && apurge mix

# ---- 3. latency -----------------------------------------------------------
if [ $QUICK = 0 ]; then
	LN=$(min "$N" 3000)
	lat_rows() { # KIND VARIANT OURSFILE CELERYFILE
		local m
		for m in start result; do
			row "latency" "$1" "$2 enqueue->$m p50/p99/p99.9" \
				"$(val "$3" ${m}_p50)/$(val "$3" ${m}_p99)/$(val "$3" ${m}_p999)" \
				"$( [ -n "$4" ] && echo "$(val "$4" ${m}_p50)/$(val "$4" ${m}_p99)/$(val "$4" ${m}_p999)")" \
				"" "us" "offered: ours $(val "$3" offered)/s$( [ -n "$4" ] && echo ", Celery $(val "$4" offered)/s")"
		done
	}
	if has memory; then
		log "latency memory://"
		"$AIQ" latency memory:// memory:// lat 500 "$LN" 2 >"$OUT/o"
		lat_rows memory "500/s c=2" "$OUT/o" ""
	fi
	lat_broker() { # KIND OURS_URL CELERY_URL RATE N
		log "latency $1"
		rflush
		start_ours "$2" lat 2 1
		sleep 1
		"$AIQ" latency "$2" "$RR" lat "$4" "$5" 2 >"$OUT/o"
		stop_worker
		rflush
		start_celery "$3" lat 2
		sleep 4
		BENCH_BROKER=$3 BENCH_BACKEND=$RR $PY "$BENCH/celery_client.py" latency lat "$4" "$5" \
			>"$OUT/c"
		stop_worker
		lat_rows "$1" "$4/s c=2" "$OUT/o" "$OUT/c"
	}
	has redis && lat_broker redis "$RB" "$RB" 500 "$LN"
	# Celery's confirmed publish on RabbitMQ tops out near 250/s here.
	has amqp && lat_broker amqp "$AB" "$ABC" 100 $(min "$N" 1000)
fi

# ---- 9. a 1,000-part chord (Redis broker and result store) ----------------------
# Both join on the Redis result store the same way (Celery 5.2's native join:
# a counter per chord, the last part sends the body), with a c=2 worker.
if has redis; then
	log "chord of 1000 parts redis://"
	rflush
	start_ours "$RB" ch 2 0
	sleep 1
	"$AIQ" chord "$RB" "$RR" ch 1000 >"$OUT/o"
	stop_worker
	rflush
	start_celery "$RB" ch 2
	sleep 4
	BENCH_BROKER=$RB BENCH_BACKEND=$RR $PY "$BENCH/celery_client.py" chord ch 1000 >"$OUT/c"
	stop_worker
	row "chord" "redis" "1,000 parts, c=2, send -> body done" "$(val "$OUT/o" rate)" \
		"$(val "$OUT/c" rate)" "" "parts/s" \
		"whole chord: ours $(val "$OUT/o" secs) s, Celery $(val "$OUT/c" secs) s"
fi

# ---- 5. HTTP ----------------------------------------------------------------
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DUR=$([ $QUICK = 1 ] && echo 3 || echo 8)
wrk_run() { # URL -> $OUT/w
	wrk -t2 -c32 -d1s -s "$BENCH/post_analyze.lua" "$1" >/dev/null 2>&1 || true # warm-up
	wrk -t2 -c32 -d${DUR}s --latency -s "$BENCH/post_analyze.lua" "$1" >"$OUT/w" 2>&1
}
wrk_fig() { # -> "req/s p50 p99"
	awk '/Requests\/sec/ { r = $2 } /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
	     /Non-2xx/ { bad = $NF } END { printf "%s %s %s %s\n", r, p50, p99, bad + 0 }' "$OUT/w"
}
start_server() { # extra args... -> $SPID, $SURL
	"$SERVER" --listen 127.0.0.1:0 --workers 2 --log-level warning "$@" >"$OUT/server.out" \
		2>"$OUT/server.err" &
	SPID=$!
	PIDS+=("$SPID")
	for _ in $(seq 1 100); do
		SURL=$(awk '/listening on/ { print $3 }' "$OUT/server.out")
		[ -n "$SURL" ] && return 0
		sleep 0.05
	done
	echo "aiqueue-server did not start" >&2
	cat "$OUT/server.err" >&2
	return 1
}
http_row() { # BROKER VARIANT OURS(r p50 p99 bad) CELERY(...)
	set -- "$1" "$2" $3 $4
	row "http" "$1" "$2 req/s" "$3" "${7:-}" "" "req/s" "wrk -t2 -c32 ${DUR}s; non-2xx ours $6 Celery ${10:-}"
	row "http" "$1" "$2 latency p50 / p99" "$4 / $5" "${8:+$8 / $9}" "" "" ""
}
if [ -x "$SERVER" ]; then
	if has memory; then
		log "HTTP memory:// (embedded)"
		start_server
		wrk_run "$SURL"
		ours=$(wrk_fig)
		kill "$SPID"; wait "$SPID" 2>/dev/null || true
		http_row memory "aiqueue-server --workers 2 (embedded)" "$ours" ""
	fi
	if has redis; then
		log "HTTP redis://"
		rflush
		start_server --broker "$RB" --backend "$RR"
		wrk_run "$SURL"
		ours=$(wrk_fig)
		kill "$SPID"; wait "$SPID" 2>/dev/null || true
		rflush
		FP=$(free_port)
		(cd "$BENCH" && BENCH_BROKER=$RB BENCH_BACKEND=$RR exec $PY -m uvicorn fastapi_app:app \
			--host 127.0.0.1 --port "$FP" --workers 2 --log-level warning) \
			>"$OUT/uvicorn.log" 2>&1 &
		UPID=$!
		PIDS+=("$UPID")
		for _ in $(seq 1 100); do
			curl -s -o /dev/null "http://127.0.0.1:$FP/docs" && break
			sleep 0.1
		done
		wrk_run "http://127.0.0.1:$FP"
		celery=$(wrk_fig)
		kill "$UPID"; wait "$UPID" 2>/dev/null || true
		http_row redis "POST /analyze" "$ours" "$celery"
	fi
	if has amqp; then
		log "HTTP amqp://"
		rflush
		start_server --broker "$AB" --backend "$RR"
		wrk_run "$SURL"
		ours=$(wrk_fig)
		kill "$SPID"; wait "$SPID" 2>/dev/null || true
		FP=$(free_port)
		# celeryapp.py turns confirm_publish on for amqp:// brokers.
		(cd "$BENCH" && BENCH_BROKER=$ABC BENCH_BACKEND=$RR exec $PY -m uvicorn fastapi_app:app \
			--host 127.0.0.1 --port "$FP" --workers 2 --log-level warning) \
			>"$OUT/uvicorn.log" 2>&1 &
		UPID=$!
		PIDS+=("$UPID")
		for _ in $(seq 1 100); do
			curl -s -o /dev/null "http://127.0.0.1:$FP/docs" && break
			sleep 0.1
		done
		wrk_run "http://127.0.0.1:$FP"
		celery=$(wrk_fig)
		kill "$UPID"; wait "$UPID" 2>/dev/null || true
		http_row amqp "POST /analyze (persistent, confirmed)" "$ours" "$celery"
	fi
fi

# ---- table -------------------------------------------------------------------
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "libaiqueue benchmarks  $(date -u +%Y-%m-%dT%H:%MZ)  ($([ $QUICK = 1 ] && echo quick || echo full) run, $((SECONDS - T_START)) s)"
echo "machine: nproc $(nproc), $cpu, kernel $(uname -r)"
echo "versions: libaiqueue $(git -C "$ROOT" describe --always --dirty 2>/dev/null), $(redis-server --version | awk '{ print $3 }'), RabbitMQ $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null), librabbitmq $(pkg-config --modversion librabbitmq), hiredis $(pkg-config --modversion hiredis), Celery $($PY -c 'import celery; print(celery.__version__)'), kombu $($PY -c 'import kombu; print(kombu.__version__)'), FastAPI $($PY -c 'import fastapi; print(fastapi.__version__)'), uvicorn $($PY -c 'import uvicorn; print(uvicorn.__version__)'), $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }')"
echo "N=$N (Celery $NC; amqp $NA, Celery on amqp $NAC), payload pad $PAYLOAD B, concurrency $CONC, brokers $BROKERS"
echo
$PY - "$RES" <<'EOF'
import sys

rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1]) if l.strip()]


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


head = ["scenario", "broker", "variant", "ours", "Celery", "raw", "unit", "ours/Celery", "ours/raw",
        "note"]
out = []
for sc, br, var, ours, cel, raw, unit, note in rows:
    o, c, r = num(ours), num(cel), num(raw)
    fmt = lambda v, s: (f"{v:,.0f}" if v is not None else s)
    oc = f"{o / c:.1f}x" if o is not None and c else ""
    orr = f"{100 * o / r:.0f}%" if o is not None and r else ""
    if sc == "memory" and o is not None and c:
        oc = f"1/{c / o:.1f}"
    out.append([sc, br, var, fmt(o, ours), fmt(c, cel), fmt(r, raw), unit, oc, orr, note])
w = [max(len(h), *(len(r[i]) for r in out)) if out else len(h) for i, h in enumerate(head)]
print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(head)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in out:
    print("| " + " | ".join(v.ljust(w[i]) for i, v in enumerate(r)) + " |")
EOF
