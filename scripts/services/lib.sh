# Shared by the service scripts beside it (sourced, POSIX sh: redis.sh and
# redis_sentinel.sh run under /bin/sh). Names of its own variables start
# with "_lib" so they never clash with the scripts'.

# Print "SCRIPT: message" on stderr and exit 1.
die() {
	echo "${0##*/}: $*" >&2
	exit 1
}

# Print "usage: SCRIPT ARGS" on stderr and exit 2.
usage_exit() { # ARGS
	echo "usage: $0 $*" >&2
	exit 2
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Wait until the Redis server (or Sentinel) on 127.0.0.1:PORT answers PING,
# TRIES times 50 ms at most; status 1 if it never does.
wait_ping() { # PORT TRIES
	_lib_i=0
	while [ "$_lib_i" -lt "$2" ]; do
		if [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]; then
			return 0
		fi
		_lib_i=$((_lib_i + 1))
		sleep 0.05
	done
	return 1
}

# Wait up to TENTHS tenths of a second for process PID (may be empty) to
# exit after it was asked to stop, then kill -9 it if it still runs.
stop_pid() { # PID TENTHS
	[ -n "$1" ] || return 0
	_lib_i=0
	while kill -0 "$1" 2>/dev/null && [ "$_lib_i" -lt "$2" ]; do
		_lib_i=$((_lib_i + 1))
		sleep 0.1
	done
	if kill -0 "$1" 2>/dev/null; then
		kill -9 "$1" 2>/dev/null || true
	fi
}

# Run a PostgreSQL server binary as the cluster's owner: initdb refuses to
# run as root, so as root the clusters belong to the "postgres" user.
as_owner() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# The newest installed PostgreSQL server binaries (PG_BIN overrides).
pg_bin() {
	echo "${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
}
