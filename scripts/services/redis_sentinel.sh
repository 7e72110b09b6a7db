#!/bin/sh
# A private Sentinel-managed Redis for tests: a master, one replica and three
# Sentinels, loopback only, free ports, every file in DIR. Never touches a
# system instance; stops only the processes it started (by their pids).
#
#   redis_sentinel.sh start DIR [NAME]   master "NAME" (default aiqmaster); writes
#                                        DIR/env (AIQ_SENTINEL_* variables) and
#                                        prints the sentinel:// URL list
#   redis_sentinel.sh stop DIR           stops every process (keeps DIR)
#   redis_sentinel.sh master DIR         prints the current master's port
#   redis_sentinel.sh kill-master DIR    kill -9 of the current master's process
#   redis_sentinel.sh wait-failover DIR OLD_PORT [SECONDS]
#                                        waits until the sentinels name another
#                                        master and it answers ROLE as a master
#   redis_sentinel.sh rejoin DIR PORT    restarts a killed node as a replica of
#                                        the current master, waits for the link
#
# Data nodes: appendonly yes, repl-diskless-sync-delay 0 (the default 5 s
# leaves a fresh replica unsynced and promotable). Sentinels:
# down-after-milliseconds 1000, failover-timeout 3000, quorum 2.
set -eu

. "$(dirname "$0")/lib.sh" # usage_exit, free_port, wait_ping, stop_pid

usage() {
	usage_exit "start|stop|master|kill-master|wait-failover|rejoin DIR [args]"
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2

cli() {
	redis-cli -h 127.0.0.1 -p "$@" 2>/dev/null
}

# PING PORT until it answers (10 s at most), or say where the logs are.
answers() { # PORT
	wait_ping "$1" 200 && return 0
	echo "redis_sentinel.sh: port $1 did not answer; logs in $dir" >&2
	tail -n 20 "$dir"/*.log >&2 || true
	return 1
}

# data_node NAME PORT [redis-server options]
data_node() {
	node=$1
	port=$2
	shift 2
	mkdir -p "$dir/$node"
	cat >"$dir/$node/redis.conf" <<EOF
port $port
bind 127.0.0.1
dir $dir/$node
daemonize yes
pidfile $dir/$node.pid
logfile $dir/$node.log
save ""
appendonly yes
repl-diskless-sync-delay 0
EOF
	redis-server "$dir/$node/redis.conf" "$@" >/dev/null
	answers "$port"
}

sentinel_node() {
	i=$1
	port=$2
	cat >"$dir/sentinel$i.conf" <<EOF
port $port
bind 127.0.0.1
dir $dir
daemonize yes
pidfile $dir/sentinel$i.pid
logfile $dir/sentinel$i.log
sentinel monitor $name 127.0.0.1 $mport 2
sentinel down-after-milliseconds $name 1000
sentinel failover-timeout $name 3000
sentinel parallel-syncs $name 1
EOF
	redis-server "$dir/sentinel$i.conf" --sentinel >/dev/null
	answers "$port"
}

load_env() {
	[ -f "$dir/env" ] || {
		echo "redis_sentinel.sh: no test bed in $dir" >&2
		exit 1
	}
	. "$dir/env"
}

current_master() {
	for sp in $AIQ_SENTINEL_PORTS; do
		p=$(cli "$sp" sentinel get-master-addr-by-name "$AIQ_SENTINEL_MASTER" | sed -n 2p)
		if [ -n "$p" ]; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

pid_of_port() {
	for f in "$dir"/node*.pid; do
		[ -f "$f" ] || continue
		n=$(basename "$f" .pid)
		if [ "$(sed -n 's/^port //p' "$dir/$n/redis.conf")" = "$1" ]; then
			cat "$f"
			return 0
		fi
	done
	return 1
}

case $cmd in
start)
	name=${1:-aiqmaster}
	mkdir -p "$dir"
	mport=$(free_port)
	rport=$(free_port)
	while [ "$rport" = "$mport" ]; do rport=$(free_port); done
	data_node node1 "$mport"
	data_node node2 "$rport" --replicaof 127.0.0.1 "$mport"
	sports=""
	for i in 1 2 3; do
		sp=$(free_port)
		sentinel_node "$i" "$sp"
		sports="$sports $sp"
	done
	sports=${sports# }
	url=""
	for sp in $sports; do
		url="$url;sentinel://127.0.0.1:$sp"
	done
	url=${url#;}
	cat >"$dir/env" <<EOF
AIQ_SENTINEL_MASTER='$name'
AIQ_SENTINEL_PORTS='$sports'
AIQ_SENTINEL_DATA_PORTS='$mport $rport'
AIQ_SENTINEL_URL='$url'
EOF
	# Ready when the replica is in sync and every sentinel sees it.
	i=0
	while [ $i -lt 200 ]; do
		ok=1
		cli "$rport" info replication | grep -q 'master_link_status:up' || ok=0
		for sp in $sports; do
			n=$(cli "$sp" sentinel replicas "$name" | grep -c "^127.0.0.1:$rport\$" || true)
			[ "$n" -ge 1 ] || ok=0
		done
		[ $ok = 1 ] && break
		i=$((i + 1))
		sleep 0.1
	done
	[ $ok = 1 ] || {
		echo "redis_sentinel.sh: the test bed did not settle; logs in $dir" >&2
		exit 1
	}
	echo "$url"
	;;
stop)
	for f in "$dir"/sentinel*.pid "$dir"/node*.pid; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		kill "$pid" 2>/dev/null || true
	done
	for f in "$dir"/sentinel*.pid "$dir"/node*.pid; do
		[ -f "$f" ] || continue
		stop_pid "$(cat "$f")" 50
	done
	;;
master)
	load_env
	current_master
	;;
kill-master)
	load_env
	p=$(current_master)
	pid=$(pid_of_port "$p")
	kill -9 "$pid"
	echo "$p"
	;;
wait-failover)
	load_env
	old=$1
	limit=${2:-30}
	i=0
	while [ $i -lt $((limit * 10)) ]; do
		p=$(current_master || true)
		if [ -n "$p" ] && [ "$p" != "$old" ] &&
			[ "$(cli "$p" role | head -n 1)" = "master" ]; then
			echo "$p"
			exit 0
		fi
		i=$((i + 1))
		sleep 0.1
	done
	echo "redis_sentinel.sh: no failover from port $old within $limit s" >&2
	exit 1
	;;
rejoin)
	load_env
	port=$1
	m=$(current_master)
	for f in "$dir"/node*.pid; do
		n=$(basename "$f" .pid)
		if [ "$(sed -n 's/^port //p' "$dir/$n/redis.conf")" = "$port" ]; then
			redis-server "$dir/$n/redis.conf" --replicaof 127.0.0.1 "$m" >/dev/null
			answers "$port"
			i=0
			until cli "$port" info replication | grep -q 'master_link_status:up'; do
				i=$((i + 1))
				[ $i -lt 200 ] || exit 1
				sleep 0.1
			done
			exit 0
		fi
	done
	exit 1
	;;
*) usage ;;
esac
