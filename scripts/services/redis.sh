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

. "$(dirname "$0")/lib.sh" # usage_exit, free_port, wait_ping, stop_pid

usage() {
	usage_exit "start|stop|restart DIR [redis-server options]"
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2

start_on() {
	port=$1
	shift
	redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
		--pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' \
		--appendonly yes "$@" >/dev/null
	wait_ping "$port" 100 || {
		echo "redis.sh: redis-server on port $port did not answer; log:" >&2
		cat "$dir/redis.log" >&2 || true
		return 1
	}
	echo "$port" >"$dir/port"
}

stop_it() {
	[ -f "$dir/port" ] || return 0
	port=$(cat "$dir/port")
	pid=$(cat "$dir/redis.pid" 2>/dev/null || true)
	redis-cli -h 127.0.0.1 -p "$port" shutdown >/dev/null 2>&1 || true
	stop_pid "$pid" 50
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
