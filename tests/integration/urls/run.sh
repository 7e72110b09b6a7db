#!/bin/sh
# Run the URL test program against private servers, always stopped after:
#   - an open redis-server (no password) with a Unix socket, also on ::1;
#   - a redis-server whose default user needs AIQ_TEST_REDIS_PW and with an
#     ACL user "app" (password AIQ_TEST_REDIS_APP_PW);
#   - a RabbitMQ node with vhosts "/", "myvhost" and "v/x", the users guest,
#     myuser/mypassword and "us@er" with a password full of URL delimiters.
#   run.sh REDIS_SH RABBITMQ_SH TEST_PROGRAM [args...]
set -eu
redis_sh=$1
rabbitmq_sh=$2
shift 2
dir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-urls-test.XXXXXX")
export AIQ_TEST_REDIS_PW='S3CRET-redis-default'
export AIQ_TEST_REDIS_APP_PW='app#pw?x@y/z'
export AIQ_TEST_AMQP_ODD_PW='p@ss:w/rd#?%'
cleanup() {
	if [ -f "$dir/auth/port" ]; then
		redis-cli -h 127.0.0.1 -p "$(cat "$dir/auth/port")" -a "$AIQ_TEST_REDIS_PW" \
			--no-auth-warning config set requirepass '' >/dev/null 2>&1 || true
	fi
	"$redis_sh" stop "$dir/open" || true
	"$redis_sh" stop "$dir/auth" || true
	"$rabbitmq_sh" stop "$dir/rmq" >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$dir/open" "$dir/auth"
"$redis_sh" start "$dir/open" --bind 127.0.0.1 -::1 --unixsocket "$dir/open/redis.sock" \
	--unixsocketperm 700 >/dev/null
"$redis_sh" start "$dir/auth" >/dev/null
auth_port=$(cat "$dir/auth/port")
redis-cli -h 127.0.0.1 -p "$auth_port" acl setuser app on ">$AIQ_TEST_REDIS_APP_PW" '~*' '&*' \
	'+@all' >/dev/null
redis-cli -h 127.0.0.1 -p "$auth_port" config set requirepass "$AIQ_TEST_REDIS_PW" >/dev/null

"$rabbitmq_sh" start "$dir/rmq"
ctl() { "$rabbitmq_sh" ctl "$dir/rmq" -q "$@" >/dev/null; }
ctl add_vhost myvhost
ctl add_vhost v/x
ctl add_user myuser mypassword
ctl set_permissions -p myvhost myuser '.*' '.*' '.*'
ctl set_permissions -p v/x guest '.*' '.*' '.*'
ctl add_user us@er "$AIQ_TEST_AMQP_ODD_PW"
ctl set_permissions -p / us@er '.*' '.*' '.*'

export AIQ_TEST_REDIS_OPEN_PORT="$(cat "$dir/open/port")"
export AIQ_TEST_REDIS_SOCKET="$dir/open/redis.sock"
export AIQ_TEST_REDIS_AUTH_PORT="$auth_port"
export AIQ_TEST_AMQP_PORT="$(cat "$dir/rmq/port")"
export AIQ_TEST_RABBITMQ_SH="$rabbitmq_sh"
export AIQ_TEST_RABBITMQ_DIR="$dir/rmq"
status=0
"$@" || status=$?
exit $status
