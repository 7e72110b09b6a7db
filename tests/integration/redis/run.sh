#!/bin/sh
# Run one test program against a private redis-server: started in a temp dir
# on a free loopback port, always stopped afterwards.
#   run.sh REDIS_SH TEST_PROGRAM [args...]
# The program finds the server in AIQ_TEST_REDIS_URL, and can restart it
# with "$AIQ_TEST_REDIS_SH restart $AIQ_TEST_REDIS_DIR".
set -eu
redis_sh=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-redis-test.XXXXXX")
cleanup() {
	"$redis_sh" stop "$dir" || true
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
port=$("$redis_sh" start "$dir")
export AIQ_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
export AIQ_TEST_REDIS_PORT="$port"
export AIQ_TEST_REDIS_DIR="$dir"
export AIQ_TEST_REDIS_SH="$redis_sh"
status=0
"$@" || status=$?
exit $status
