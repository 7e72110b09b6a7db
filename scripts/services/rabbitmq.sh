#!/usr/bin/env bash
# A private RabbitMQ node for tests: its own node name, ports, mnesia, logs
# and Erlang cookie, all inside DIR. Never touches a system node.
#
#   rabbitmq.sh start DIR [extra rabbitmq.conf lines...]
#       start a node on free loopback ports; writes DIR/port (AMQP port) and
#       DIR/url (amqp://guest:guest@127.0.0.1:PORT//, kombu's spelling of
#       vhost "/"); returns once the node
#       accepts logins.
#   rabbitmq.sh stop DIR       stop it (same dirs kept)
#   rabbitmq.sh restart DIR    stop and start again with the same dirs and
#                              ports (durable queues and persistent messages
#                              survive)
#   rabbitmq.sh ctl DIR ARGS…  run rabbitmqctl against the node
#
# The channel tick (which also enforces consumer_timeout) is 1 s on these
# nodes instead of 60 s; RMQ_CHANNEL_TICK_MS overrides it.
set -euo pipefail

RMQ_BIN=${RMQ_BIN:-/usr/lib/rabbitmq/bin}

. "$(dirname "$0")/lib.sh" # die, free_port, stop_pid

node_env() { # DIR
	local dir=$1
	[ -f "$dir/port" ] || die "$dir/port missing: was the node started with 'start'?"
	PORT=$(cat "$dir/port")
	DIST=$(cat "$dir/dist_port")
	export HOME=$dir
	export RABBITMQ_NODENAME=aiq$PORT@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
		RABBITMQ_NODE_PORT=$PORT RABBITMQ_DIST_PORT=$DIST ERL_EPMD_ADDRESS=127.0.0.1 \
		RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
		RABBITMQ_PID_FILE=$dir/pid RABBITMQ_CONFIG_FILE=$dir/rabbitmq \
		RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
		RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
}

ctl() {
	"$RMQ_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
}

# Readiness: await_startup exits at once while the node is not registered
# with epmd, so retry; then check that a login really works.
wait_ready() { # DIR
	local dir=$1 deadline=$((SECONDS + 60))
	while :; do
		if ctl -q await_startup --timeout 30 >/dev/null 2>&1; then
			break
		fi
		if [ -f "$dir/pid" ] && ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
			tail -n 30 "$dir/out.log" >&2 || true
			die "node exited during startup (see $dir/out.log)"
		fi
		[ $SECONDS -lt $deadline ] || {
			tail -n 30 "$dir/out.log" >&2 || true
			die "node did not start within 60 s"
		}
		sleep 0.3
	done
	# An open port is not readiness: a login fails for a moment after it
	# opens. Try a real AMQP login until it succeeds.
	while :; do
		if /usr/bin/python3 - "$PORT" <<'EOF' >/dev/null 2>&1; then
import socket, struct, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=3)
s.sendall(b"AMQP\x00\x00\x09\x01")
def frame():
    h = b""
    while len(h) < 7:
        c = s.recv(7 - len(h))
        if not c:
            raise SystemExit(1)
        h += c
    t, ch, size = struct.unpack(">BHI", h)
    p = b""
    while len(p) < size + 1:
        c = s.recv(size + 1 - len(p))
        if not c:
            raise SystemExit(1)
        p += c
    return t, p[:-1]
def send(cls, meth, args):
    p = struct.pack(">HH", cls, meth) + args
    s.sendall(struct.pack(">BHI", 1, 0, len(p)) + p + b"\xce")
def sstr(x):
    return bytes([len(x)]) + x
def lstr(x):
    return struct.pack(">I", len(x)) + x
t, p = frame()  # connection.start
assert p[:4] == b"\x00\x0a\x00\x0a"
send(10, 11, struct.pack(">I", 0) + sstr(b"PLAIN") + lstr(b"\x00guest\x00guest") + sstr(b"en_US"))
t, p = frame()  # connection.tune (or close on a failed login)
if p[:4] != b"\x00\x0a\x00\x1e":
    raise SystemExit(1)
send(10, 31, struct.pack(">HIH", 2047, 131072, 0))
send(10, 40, sstr(b"/") + sstr(b"") + b"\x00")
t, p = frame()
if p[:4] != b"\x00\x0a\x00\x29":  # connection.open-ok
    raise SystemExit(1)
EOF
			return 0
		fi
		[ $SECONDS -lt $deadline ] || die "node does not accept logins after 60 s"
		sleep 0.2
	done
}

start_node() { # DIR
	local dir=$1
	node_env "$dir"
	setsid "$RMQ_BIN/rabbitmq-server" >>"$dir/out.log" 2>&1 </dev/null &
	wait_ready "$dir"
}

stop_node() { # DIR
	local dir=$1
	node_env "$dir"
	ctl -q stop >/dev/null 2>&1 || true
	# `stop` waits for the node; make sure the process is really gone.
	if [ -f "$dir/pid" ]; then
		stop_pid "$(cat "$dir/pid")" 100
		rm -f "$dir/pid"
	fi
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: rabbitmq.sh start|stop|restart|ctl DIR [...]"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case $cmd in
start)
	shift 2
	port=$(free_port)
	dist=$(free_port)
	while [ "$dist" = "$port" ]; do dist=$(free_port); done
	echo "$port" >"$dir/port"
	echo "$dist" >"$dir/dist_port"
	{
		printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$port"
		printf 'loopback_users = none\n'
		printf 'log.console = false\nlog.file.level = info\n'
		for line in "$@"; do printf '%s\n' "$line"; done
	} >"$dir/rabbitmq.conf"
	echo '[].' >"$dir/enabled_plugins"
	# The channel checks consumer_timeout on its tick (60 s by default);
	# a test node ticks every second so a short timeout fires promptly.
	printf '[{rabbit, [{channel_tick_interval, %s}]}].\n' "${RMQ_CHANNEL_TICK_MS:-1000}" \
		>"$dir/advanced.config"
	printf 'amqp://guest:guest@127.0.0.1:%s//\n' "$port" >"$dir/url"
	start_node "$dir"
	;;
stop) stop_node "$dir" ;;
restart)
	stop_node "$dir"
	start_node "$dir"
	;;
ctl)
	shift 2
	node_env "$dir"
	ctl "$@"
	;;
*) die "unknown command '$cmd'" ;;
esac
