#!/usr/bin/env bash
# A private PostgreSQL cluster for tests: its own data directory, socket
# directory, log and loopback port, all inside DIR. Never touches a system
# cluster.
#
#   postgres.sh start DIR [PASSWORD]
#       initdb DIR/data (superuser "aiq", UTF-8) and start it on a free
#       loopback port; writes DIR/port and DIR/url
#       (postgresql://aiq@127.0.0.1:PORT/postgres). With PASSWORD the cluster
#       asks for it (scram-sha-256) and DIR/url carries it; without, local
#       connections are trusted. Returns once the server accepts queries.
#   postgres.sh stop DIR       stop it (fast shutdown; the data is kept)
#   postgres.sh restart DIR    stop and start again on the same port
#   postgres.sh psql DIR ARGS… run psql against the cluster
#
# initdb refuses to run as root: as root the cluster runs as the "postgres"
# user, which then owns DIR/data.
set -euo pipefail

. "$(dirname "$0")/lib.sh" # die, free_port, as_owner, pg_bin

PG_BIN=$(pg_bin)

[ -x "$PG_BIN/initdb" ] || die "PostgreSQL server binaries not found (set PG_BIN)"

pg_ctl() {
	as_owner "$PG_BIN/pg_ctl" "$@"
}

start_server() { # DIR
	local dir=$1 port
	port=$(cat "$dir/port")
	pg_ctl -D "$dir/data" -l "$dir/log" -w -t 60 start \
		-o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1" >/dev/null ||
		{
			tail -n 30 "$dir/log" >&2 || true
			die "server did not start (see $dir/log)"
		}
	# pg_ctl -w returns once the server accepts connections; check a query.
	local _
	for _ in $(seq 1 100); do
		if PGPASSWORD=$(cat "$dir/password" 2>/dev/null || true) \
			"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U aiq -d postgres \
			-c 'select 1' >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	die "server does not answer queries (see $dir/log)"
}

stop_server() { # DIR
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] || return 0
	pg_ctl -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
	if [ -f "$dir/data/postmaster.pid" ]; then
		local pid
		pid=$(head -n 1 "$dir/data/postmaster.pid")
		kill -9 "$pid" 2>/dev/null || true
		rm -f "$dir/data/postmaster.pid"
	fi
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: postgres.sh start|stop|restart|psql DIR [...]"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case $cmd in
start)
	password=${3:-}
	[ ! -e "$dir/data" ] || die "$dir/data exists: use restart, or a fresh DIR"
	mkdir -p "$dir/sock"
	if [ "$(id -u)" = 0 ]; then
		chown postgres "$dir" "$dir/sock"
	fi
	auth=(-A trust)
	if [ -n "$password" ]; then
		printf '%s\n' "$password" >"$dir/password"
		chmod 600 "$dir/password"
		[ "$(id -u)" != 0 ] || chown postgres "$dir/password"
		auth=(-A scram-sha-256 --pwfile="$dir/password")
	fi
	as_owner "$PG_BIN/initdb" -D "$dir/data" -U aiq -E UTF8 --locale=C --no-sync "${auth[@]}" \
		>"$dir/initdb.log" 2>&1 || {
		cat "$dir/initdb.log" >&2
		die "initdb failed"
	}
	port=$(free_port)
	echo "$port" >"$dir/port"
	if [ -n "$password" ]; then
		enc=$(/usr/bin/python3 -c 'import sys, urllib.parse
print(urllib.parse.quote(sys.argv[1], safe=""))' "$password")
		printf 'postgresql://aiq:%s@127.0.0.1:%s/postgres\n' "$enc" "$port" >"$dir/url"
	else
		printf 'postgresql://aiq@127.0.0.1:%s/postgres\n' "$port" >"$dir/url"
	fi
	start_server "$dir"
	;;
stop) stop_server "$dir" ;;
restart)
	stop_server "$dir"
	start_server "$dir"
	;;
psql)
	shift 2
	PGPASSWORD=$(cat "$dir/password" 2>/dev/null || true) \
		"$PG_BIN/psql" -X -h 127.0.0.1 -p "$(cat "$dir/port")" -U aiq -d postgres "$@"
	;;
*) die "unknown command '$cmd'" ;;
esac
