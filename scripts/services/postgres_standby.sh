#!/usr/bin/env bash
# A private PostgreSQL primary with one streaming standby, for failover
# tests: two clusters inside DIR (DIR/primary, DIR/standby), each on its own
# free loopback port (scripts/services/postgres.sh starts them). Never
# touches a system cluster.
#
#   postgres_standby.sh start DIR     initdb + start the primary, then
#       pg_basebackup -R (asynchronous streaming standby) and start it;
#       writes DIR/url: the libpq multi-host URL
#       postgresql://aiq@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write
#       (connections go to whichever of the two accepts writes).
#   postgres_standby.sh start DIR sync  the same, and the primary then
#       replicates synchronously (synchronous_standby_names = '*', set on
#       the primary only: a commit returns once the standby has it, and the
#       promoted standby does not wait for a standby of its own)
#   postgres_standby.sh stop-primary DIR   stop the primary (fast shutdown)
#   postgres_standby.sh kill-primary DIR   kill -9 of the primary's postmaster
#       and of every server process it started (a crash: nothing is flushed
#       or sent to the standby any more)
#   postgres_standby.sh promote DIR        promote the standby (pg_ctl promote -w)
#   postgres_standby.sh stop DIR           stop both
#   postgres_standby.sh psql DIR primary|standby ARGS…
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PG_SH=$here/postgres.sh

. "$here/lib.sh" # die, free_port, as_owner, pg_bin

PG_BIN=$(pg_bin)

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: postgres_standby.sh start|stop|stop-primary|kill-primary|promote|psql DIR [...]"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case $cmd in
start)
	# The server user must reach both clusters' directories.
	[ "$(id -u)" != 0 ] || chown postgres "$dir"
	"$PG_SH" start "$dir/primary" >/dev/null
	p1=$(cat "$dir/primary/port")
	mkdir -p "$dir/standby/sock"
	[ "$(id -u)" != 0 ] || chown postgres "$dir/standby" "$dir/standby/sock"
	# The default pg_hba.conf of initdb -A trust lets 127.0.0.1 replicate.
	as_owner "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$p1" -U aiq -D "$dir/standby/data" \
		-R -X stream -c fast >"$dir/standby/basebackup.log" 2>&1 || {
		cat "$dir/standby/basebackup.log" >&2
		die "pg_basebackup failed"
	}
	free_port >"$dir/standby/port"
	p2=$(cat "$dir/standby/port")
	printf 'postgresql://aiq@127.0.0.1:%s/postgres\n' "$p2" >"$dir/standby/url"
	"$PG_SH" restart "$dir/standby" >/dev/null
	printf 'postgresql://aiq@127.0.0.1:%s,127.0.0.1:%s/postgres?target_session_attrs=read-write\n' \
		"$p1" "$p2" >"$dir/url"
	if [ "${3:-}" = sync ]; then
		"$PG_SH" psql "$dir/primary" -q -v ON_ERROR_STOP=1 \
			-c "ALTER SYSTEM SET synchronous_standby_names = '*'" \
			-c 'SELECT pg_reload_conf()' >/dev/null
		# Synchronous once the standby streams as such.
		for _ in $(seq 1 100); do
			s=$("$PG_SH" psql "$dir/primary" -Atq \
				-c "SELECT sync_state FROM pg_stat_replication" 2>/dev/null || true)
			[ "$s" != sync ] || break
			sleep 0.1
		done
		[ "$s" = sync ] || die "the standby does not replicate synchronously"
	fi
	;;
stop-primary) "$PG_SH" stop "$dir/primary" ;;
kill-primary)
	pid=$(head -n 1 "$dir/primary/data/postmaster.pid" 2>/dev/null) || die "the primary is not running"
	# The postmaster and its children (left alone, they would go on
	# serving their connections for a moment), all at once.
	kids=$(ps -o pid= --ppid "$pid" || true)
	# shellcheck disable=SC2086
	kill -9 "$pid" $kids 2>/dev/null || true
	# Gone, or a zombie nobody reaps yet (its sockets are closed).
	for _ in $(seq 1 50); do
		st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
		[ -n "$st" ] && [ "$st" != Z ] || break
		sleep 0.1
	done
	rm -f "$dir/primary/data/postmaster.pid"
	;;
promote)
	as_owner "$PG_BIN/pg_ctl" -D "$dir/standby/data" -w -t 60 promote >/dev/null
	;;
stop)
	[ ! -d "$dir/standby/data" ] || "$PG_SH" stop "$dir/standby"
	[ ! -d "$dir/primary/data" ] || "$PG_SH" stop "$dir/primary"
	;;
psql)
	which=${3:?primary or standby}
	shift 3
	"$PG_SH" psql "$dir/$which" "$@"
	;;
*) die "unknown command '$cmd'" ;;
esac
