#!/usr/bin/env bash
# A private RabbitMQ cluster of N nodes (default 3) for failover tests: own
# node names (aiq<i>c<port>@localhost), AMQP and distribution ports, mnesia,
# logs, one Erlang cookie (one HOME for every node and for rabbitmqctl), and
# a private epmd on its own port (ERL_EPMD_PORT), all inside DIR and on
# 127.0.0.1. Never touches a system node or the system epmd. Start it once
# per suite; restart single nodes in tests.
#
#   rabbitmq_cluster.sh start DIR [N]  boot N nodes in parallel, join nodes
#       2..N to node 1; writes DIR/urls (every node's
#       amqp://guest:guest@127.0.0.1:PORT/%2f, ';'-separated: the driver's
#       failover form) and DIR/n<i>/port. Returns once all nodes run apps.
#   rabbitmq_cluster.sh stop DIR          stop every node and the epmd
#   rabbitmq_cluster.sh kill DIR I        kill -9 node I's Erlang VM (a crash)
#   rabbitmq_cluster.sh restart DIR I     start node I again (same dirs); it
#                                         rejoins the cluster by itself
#   rabbitmq_cluster.sh pause DIR I       SIGSTOP node I's Erlang VM: to the
#                                         others it is cut off (a partition);
#                                         they declare it down after
#                                         net_ticktime
#   rabbitmq_cluster.sh resume DIR I      SIGCONT it, wait until it runs its
#                                         apps again, restart its rabbit app
#                                         if a partition stays recorded, and
#                                         return once every node sees all N
#                                         nodes running and no partition
#   rabbitmq_cluster.sh leader DIR QUEUE  print the index of QUEUE's leader
#   rabbitmq_cluster.sh ctl DIR I ARGS…   rabbitmqctl against node I
#
# Nodes run with net_ticktime = 4 (a silent node is declared down after
# 4-5 s instead of 60-75 s) and cluster_partition_handling = pause_minority
# (a node that finds itself in a minority stops serving until it sees a
# majority again), as docs/scaling.md recommends.
set -euo pipefail

RMQ_BIN=${RMQ_BIN:-/usr/lib/rabbitmq/bin}
EPMD=${EPMD:-$(command -v epmd || ls /usr/lib/erlang/erts-*/bin/epmd | tail -n 1)}

. "$(dirname "$0")/lib.sh" # die, free_port, stop_pid

base_env() { # DIR
	export HOME=$1/home
	ERL_EPMD_PORT=$(cat "$1/epmd_port")
	export ERL_EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
}

node_env() { # DIR I
	local d=$1/n$2
	[ -f "$d/port" ] || die "$d/port missing: was the cluster started with 'start'?"
	base_env "$1"
	PORT=$(cat "$d/port")
	NODE=$(cat "$d/node")
	export RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
		RABBITMQ_NODE_PORT=$PORT RABBITMQ_DIST_PORT=$(cat "$d/dist_port") \
		RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log \
		RABBITMQ_PID_FILE=$d/pid RABBITMQ_CONFIG_FILE=$d/rabbitmq \
		RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins \
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() { # DIR I ARGS...
	local dir=$1 i=$2
	shift 2
	(node_env "$dir" "$i" && "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@")
}

boot() { # DIR I: start the VM (returns at once)
	(
		node_env "$1" "$2"
		rm -f "$1/n$2/pid"
		setsid "$RMQ_BIN/rabbitmq-server" >>"$1/n$2/out.log" 2>&1 </dev/null &
	)
}

wait_node() { # DIR I
	local dir=$1 i=$2 deadline=$((SECONDS + 90))
	until ctl "$dir" "$i" -q await_startup --timeout 60 >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || {
			tail -n 30 "$dir/n$i/out.log" >&2 || true
			die "node $i did not start within 90 s"
		}
		sleep 0.3
	done
}

beam_pid() { # DIR I: the Erlang VM's pid (the pid file names it)
	local f=$1/n$2/pid
	[ -s "$f" ] && cat "$f"
}

stop_node() { # DIR I
	local dir=$1 i=$2 pid
	pid=$(beam_pid "$dir" "$i" || true)
	ctl "$dir" "$i" -q stop >/dev/null 2>&1 || true
	stop_pid "$pid" 100
	rm -f "$dir/n$i/pid"
}

# Every node lists all nodes as running and no partition (within SECONDS).
healed() { # DIR SECONDS
	local dir=$1 deadline=$((SECONDS + $2)) n k
	n=$(cat "$dir/nodes")
	for k in $(seq 1 "$n"); do
		until (node_env "$dir" "$k" && timeout 10 "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q \
			cluster_status --formatter json 2>/dev/null) |
			/usr/bin/python3 -c 'import json, sys
s = json.load(sys.stdin)
sys.exit(0 if len(s.get("running_nodes", [])) == int(sys.argv[1])
         and not s.get("partitions") else 1)' "$n"; do
			[ $SECONDS -lt $deadline ] || return 1
			sleep 0.5
		done
	done
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: rabbitmq_cluster.sh start|stop|kill|restart|pause|resume|leader|ctl DIR [...]"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case $cmd in
start)
	n=${3:-3}
	mkdir -p "$dir/home"
	# One cookie for all nodes and rabbitmqctl, mode 400 before any start.
	if [ ! -f "$dir/home/.erlang.cookie" ]; then
		head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"
		chmod 400 "$dir/home/.erlang.cookie"
	fi
	free_port >"$dir/epmd_port"
	echo "$n" >"$dir/nodes"
	# A private epmd, so the system one never sees these nodes.
	setsid "$EPMD" -port "$(cat "$dir/epmd_port")" -address 127.0.0.1 \
		>"$dir/epmd.log" 2>&1 </dev/null &
	echo $! >"$dir/epmd.pid"
	urls=""
	for i in $(seq 1 "$n"); do
		d=$dir/n$i
		mkdir -p "$d"
		port=$(free_port)
		dist=$(free_port)
		while [ "$dist" = "$port" ]; do dist=$(free_port); done
		echo "$port" >"$d/port"
		echo "$dist" >"$d/dist_port"
		echo "aiq${i}c$port@localhost" >"$d/node"
		{
			printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$port"
			printf 'loopback_users = none\nlog.console = false\nlog.file.level = info\n'
			printf 'net_ticktime = 4\ncluster_partition_handling = pause_minority\n'
		} >"$d/rabbitmq.conf"
		echo '[].' >"$d/enabled_plugins"
		urls="$urls${urls:+;}amqp://guest:guest@127.0.0.1:$port/%2f"
	done
	echo "$urls" >"$dir/urls"
	for i in $(seq 1 "$n"); do boot "$dir" "$i"; done
	for i in $(seq 1 "$n"); do wait_node "$dir" "$i"; done
	first=$(cat "$dir/n1/node")
	for i in $(seq 2 "$n"); do
		ctl "$dir" "$i" -q stop_app >/dev/null
		ctl "$dir" "$i" -q join_cluster "$first" >/dev/null
		ctl "$dir" "$i" -q start_app >/dev/null
	done
	for i in $(seq 1 "$n"); do wait_node "$dir" "$i"; done
	;;
stop)
	if [ -f "$dir/nodes" ]; then
		for i in $(seq 1 "$(cat "$dir/nodes")"); do stop_node "$dir" "$i" & done
		wait
	fi
	if [ -f "$dir/epmd.pid" ]; then
		kill "$(cat "$dir/epmd.pid")" 2>/dev/null || true
		rm -f "$dir/epmd.pid"
	fi
	;;
kill)
	i=${3:?node index}
	pid=$(beam_pid "$dir" "$i") || die "node $i has no pid file (not running?)"
	kill -9 "$pid"
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	rm -f "$dir/n$i/pid"
	;;
restart)
	i=${3:?node index}
	stop_node "$dir" "$i"
	boot "$dir" "$i"
	wait_node "$dir" "$i"
	;;
pause)
	i=${3:?node index}
	pid=$(beam_pid "$dir" "$i") || die "node $i has no pid file (not running?)"
	kill -STOP "$pid"
	;;
resume)
	i=${3:?node index}
	pid=$(beam_pid "$dir" "$i") || die "node $i has no pid file (not running?)"
	kill -CONT "$pid"
	wait_node "$dir" "$i"
	# A node frozen past net_ticktime sees the others again as soon as it
	# runs, so pause_minority never pauses it, and both sides keep the
	# partition recorded. Heal as an operator does: restart the rabbit
	# app on the node that was cut off (it resyncs from the majority).
	healed "$dir" 5 || {
		ctl "$dir" "$i" -q stop_app >/dev/null
		ctl "$dir" "$i" -q start_app >/dev/null
		wait_node "$dir" "$i"
	}
	healed "$dir" 90 || die "the cluster did not heal within 90 s"
	;;
leader)
	q=${3:?queue}
	n=$(cat "$dir/nodes")
	for i in $(seq 1 "$n"); do
		[ -n "$(beam_pid "$dir" "$i" || true)" ] || continue
		out=$(ctl "$dir" "$i" -q list_queues name leader --formatter json 2>/dev/null) || continue
		node=$(printf '%s' "$out" | /usr/bin/python3 -c 'import json, sys
q = sys.argv[1]
for row in json.load(sys.stdin):
    if row.get("name") == q:
        print(row.get("leader", ""))' "$q")
		[ -n "$node" ] || die "queue '$q' not found"
		for k in $(seq 1 "$n"); do
			if [ "$(cat "$dir/n$k/node")" = "$node" ]; then
				echo "$k"
				exit 0
			fi
		done
		die "leader '$node' is not a node of this cluster"
	done
	die "no running node answered"
	;;
ctl)
	i=${3:?node index}
	shift 3
	ctl "$dir" "$i" "$@"
	;;
*) die "unknown command '$cmd'" ;;
esac
