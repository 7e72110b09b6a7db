#!/bin/sh
# Start or stop a private redis-server for tests: loopback only, a free
# port, every file in DIR. Never touches a system instance.
#
#   redis.sh start DIR [extra redis-server options]   prints the port, writes DIR/port
#   redis.sh stop DIR                                 stops it (keeps DIR)
#   redis.sh restart DIR                              stop, then start on the same port
#
# The server runs with --appendonly yes, so a restart keeps the data.
set -eu

usage() {
	echo "usage: $0 start|stop|restart DIR [redis-server options]" >&2
	exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2

. "$(dirname "$0")/lib.sh" # free_port

wait_ping() {
	i=0
	while [ $i -lt 100 ]; do
		if [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]; then
			return 0
		fi
		i=$((i + 1))
		sleep 0.05
	done
	echo "redis.sh: redis-server on port $1 did not answer; log:" >&2
	cat "$dir/redis.log" >&2 || true
	return 1
}

start_on() {
	port=$1
	shift
	redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
		--pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' \
		--appendonly yes "$@" >/dev/null
	wait_ping "$port"
	echo "$port" >"$dir/port"
}

stop_it() {
	[ -f "$dir/port" ] || return 0
	port=$(cat "$dir/port")
	pid=$(cat "$dir/redis.pid" 2>/dev/null || true)
	redis-cli -h 127.0.0.1 -p "$port" shutdown >/dev/null 2>&1 || true
	i=0
	while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
		i=$((i + 1))
		sleep 0.05
	done
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -9 "$pid" 2>/dev/null || true
	fi
}

case $cmd in
start)
	mkdir -p "$dir"
	start_on "$(free_port)" "$@"
	cat "$dir/port"
	;;
stop)
	stop_it
	;;
restart)
	port=$(cat "$dir/port")
	stop_it
	start_on "$port" "$@"
	;;
*) usage ;;
esac
